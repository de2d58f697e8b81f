#!/usr/bin/env python3
"""Writes examples/backtest/usage.jsonl: two days of recorded usage for
`tenantmeter backtest` (format: docs/backtest.md). Deterministic: run it again
and the file is the same.

Three tenants on the default "starter" plan (x1.50 on rated value, expected
$0.25/h of tenant charge), one 5-minute aggregate per tenant every 5 minutes
(at :02:30, :07:30, ... so each evaluation's 5-minute rate window holds exactly
one), Monday 2026-11-02 and Tuesday 2026-11-03 (UTC):

- acme     flat: $0.20/h of charge around the clock (Claude 3.5 Sonnet).
- globex   daily peak: $0.10/h at night rising smoothly to $0.50/h at 13:00
           (Claude 3.5 Haiku); the second day repeats the first.
- initech  flat $0.20/h, then a runaway on Tuesday 14:00-15:00 at 15x, with a
           daily budget of $8 that the runaway all but uses up.

Budget lines: a soft monthly budget for acme, a daily one for initech, a
monthly provider-cost budget for the fleet.
"""

import json
import math
import os

SONNET = "anthropic.claude-3-5-sonnet-20240620-v1:0"  # $3 in, $15 out per 1M
HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"  # $0.80 in, $4 out per 1M
MULTIPLIER = 1.5  # the starter plan's first tier
DAY_MINUTES = 24 * 60


def tokens(charge_per_hour, model):
    """Input and output tokens (5:1) whose 5-minute cost at list price makes
    `charge_per_hour` of tenant charge on the starter plan."""
    cost = charge_per_hour / MULTIPLIER / 12  # one 5-minute slice
    per_input = 6e-6 if model == SONNET else 1.6e-6  # 1 input + 1/5 output token
    inp = round(cost / per_input)
    return inp, round(inp / 5)


def stamp(minute, second=0):
    day, rest = divmod(minute, DAY_MINUTES)
    return "2026-11-%02dT%02d:%02d:%02dZ" % (2 + day, rest // 60, rest % 60, second)


def globex_rate(minute):
    hour = (minute % DAY_MINUTES) / 60
    bump = math.sin(math.pi * (hour - 6) / 14) if 6 <= hour <= 20 else 0.0
    return 0.10 + 0.40 * bump * bump


def initech_rate(minute):
    return 3.00 if DAY_MINUTES + 14 * 60 <= minute < DAY_MINUTES + 15 * 60 else 0.20


def main():
    lines = [
        {"type": "budget", "time": stamp(0), "tenant_id": "acme", "period": "month",
         "basis": "tenant_charge", "amount_usd": "300.00", "enforcement": "soft"},
        {"type": "budget", "time": stamp(0), "tenant_id": "initech", "period": "day",
         "basis": "tenant_charge", "amount_usd": "8.00", "enforcement": "soft"},
        {"type": "budget", "time": stamp(0), "fleet": True, "period": "month",
         "basis": "provider_cost", "amount_usd": "1000.00"},
    ]
    for minute in range(2, 2 * DAY_MINUTES, 5):
        for tenant, model, rate in (
            ("acme", SONNET, 0.20),
            ("globex", HAIKU, globex_rate(minute)),
            ("initech", SONNET, initech_rate(minute)),
        ):
            inp, out = tokens(rate, model)
            lines.append({"time": stamp(minute, 30), "tenant_id": tenant, "model_id": model,
                          "input_tokens": inp, "output_tokens": out})
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "usage.jsonl")
    with open(path, "w") as out:
        for line in lines:
            out.write(json.dumps(line, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
