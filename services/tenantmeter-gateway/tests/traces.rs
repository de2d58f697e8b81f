//! One trace per tenant call, collected for real: the test process installs the
//! OpenTelemetry exporter (`telemetry::init` with an injected environment naming an
//! in-process OTLP receiver), runs the whole stack in-process, makes a Converse and a
//! ConverseStream call each under a `traceparent` of its own, and reads back what was
//! exported. It shows that the caller's trace context crosses every hop (caller ->
//! gateway -> meter), that the call span follows the OpenTelemetry GenAI conventions,
//! and that neither the prompt nor the completion is in any span.
//!
//! Pricing is not on a call's path: the meter prices from the price book it follows
//! (a long-lived WatchPriceBook stream of its own), so no pricing span belongs to a
//! call's trace and none is asserted.
//!
//! One test in this binary, because `telemetry::init` installs the process-wide
//! subscriber and tracer provider, and the guard's shutdown ends the export for good.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt as _;
use support::{SONNET, Stack, bearer, converse, converse_stream};
use tenantmeter_emulator::EmulatorConfig;
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::converse_stream_response::Event;
use tenantmeter_runtime::config::{EnvMap, TelemetryConfig};
use tenantmeter_runtime::telemetry;
use tenantmeter_testkit::otlp::SpanKind;
use tenantmeter_testkit::{CollectedSpan, OtlpReceiver};
use tonic::Request;
use tonic::metadata::MetadataValue;

const GATEWAY: &str = "tenantmeter.v1.GatewayService";
const METER: &str = "tenantmeter.v1.MeterService";
const TENANT: &str = "traced";
const ALIAS: &str = "sonnet";

/// The batch exporter sends every 5 s by default (OTEL_BSP_SCHEDULE_DELAY, which the
/// SDK reads from the process environment we must not touch): spans of a call arrive
/// within one or two of those periods, and a loaded machine gets the rest.
const SPANS_TIMEOUT: Duration = Duration::from_secs(45);

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0_u8; bytes];
    getrandom::fill(&mut buffer).unwrap();
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

/// The test playing an instrumented caller: the trace and span its requests name as
/// their parent.
struct Caller {
    trace_id: String,
    span_id: String,
}

impl Caller {
    fn new() -> Self {
        Self {
            trace_id: random_hex(16),
            span_id: random_hex(8),
        }
    }

    /// `request` with a W3C `traceparent` naming this caller, sampled.
    fn traced<T>(&self, mut request: Request<T>) -> Request<T> {
        let traceparent = format!("00-{}-{}-01", self.trace_id, self.span_id);
        request
            .metadata_mut()
            .insert("traceparent", MetadataValue::try_from(traceparent).unwrap());
        request
    }
}

fn is_rpc(span: &CollectedSpan, kind: SpanKind, service: &str, method: &str) -> bool {
    span.kind() == kind
        && span.str_attribute("rpc.service") == Some(service)
        && span.str_attribute("rpc.method") == Some(method)
}

fn in_trace<'a>(spans: &'a [CollectedSpan], trace_id: &str) -> Vec<&'a CollectedSpan> {
    spans.iter().filter(|s| s.trace_id() == trace_id).collect()
}

/// The one span of `trace` that `matches`; fails naming the trace's spans otherwise.
fn one<'a>(
    trace: &[&'a CollectedSpan],
    what: &str,
    matches: impl Fn(&CollectedSpan) -> bool,
) -> &'a CollectedSpan {
    let found: Vec<&CollectedSpan> = trace.iter().copied().filter(|s| matches(s)).collect();
    let names: Vec<&str> = trace.iter().map(|s| s.name()).collect();
    assert_eq!(found.len(), 1, "exactly one {what} in the trace: {names:?}");
    found[0]
}

fn is_call_span(span: &CollectedSpan) -> bool {
    span.str_attribute("gen_ai.operation.name").is_some()
}

/// Whether every span this test asserts on for a call under `caller` has arrived.
fn call_exported(spans: &[CollectedSpan], caller: &Caller, method: &str) -> bool {
    let trace = in_trace(spans, &caller.trace_id);
    let has = |kind, service, method| trace.iter().any(|s| is_rpc(s, kind, service, method));
    trace.iter().any(|s| is_call_span(s))
        && has(SpanKind::Server, GATEWAY, method)
        && [SpanKind::Client, SpanKind::Server]
            .into_iter()
            .all(|kind| has(kind, METER, "Reserve") && has(kind, METER, "Settle"))
}

/// What a call returned, to compare its span with.
struct Answer {
    text: String,
    usage: pb::TokenUsage,
    metering: pb::CallMetering,
}

/// Asserts the trace of one call: its shape (caller -> gateway server span -> call
/// span -> meter client spans -> meter server spans, all one tree rooted at the
/// caller's span) and the call span's GenAI attributes.
fn assert_call_trace(spans: &[CollectedSpan], caller: &Caller, method: &str, answer: &Answer) {
    let trace = in_trace(spans, &caller.trace_id);

    let server = one(&trace, "gateway server span", |s| {
        is_rpc(s, SpanKind::Server, GATEWAY, method)
    });
    assert_eq!(server.name(), format!("{GATEWAY}/{method}"));
    assert_eq!(
        server.parent_span_id().as_deref(),
        Some(caller.span_id.as_str()),
        "the gateway continues the caller's trace under the caller's span"
    );
    assert_eq!(server.str_attribute("rpc.system"), Some("grpc"));
    assert_eq!(server.int_attribute("rpc.grpc.status_code"), Some(0));

    let call = one(&trace, "call span", is_call_span);
    assert_eq!(call.name(), format!("chat {ALIAS}"));
    assert_eq!(call.kind(), SpanKind::Client);
    assert_eq!(
        call.parent_span_id(),
        Some(server.span_id()),
        "the call span is a child of the gateway's server span"
    );
    assert_eq!(call.str_attribute("gen_ai.system"), Some("aws.bedrock"));
    assert_eq!(call.str_attribute("gen_ai.operation.name"), Some("chat"));
    assert_eq!(call.str_attribute("gen_ai.request.model"), Some(SONNET));
    assert_eq!(call.int_attribute("gen_ai.request.max_tokens"), Some(256));
    assert_eq!(
        call.int_attribute("gen_ai.usage.input_tokens"),
        Some(answer.usage.input_tokens)
    );
    assert_eq!(
        call.int_attribute("gen_ai.usage.output_tokens"),
        Some(answer.usage.output_tokens)
    );
    assert!(answer.usage.input_tokens > 0 && answer.usage.output_tokens > 0);
    assert_eq!(call.str_attribute("tenantmeter.tenant_id"), Some(TENANT));
    assert_eq!(call.str_attribute("tenantmeter.model_alias"), Some(ALIAS));
    // The level the meter reported for the tenant: with no alerting policy published
    // in this stack that is LEVEL_UNSPECIFIED, but the attribute is always there.
    assert_eq!(
        call.str_attribute("tenantmeter.level"),
        Some(answer.metering.level().as_str_name())
    );
    assert_eq!(
        call.str_attribute("tenantmeter.usage_event_id"),
        Some(answer.metering.usage_event_id.as_str()),
        "the span is this call's"
    );
    assert_eq!(
        call.str_attribute("tenantmeter.settlement"),
        Some(pb::SettlementStatus::Settled.as_str_name())
    );
    assert!(call.attribute("error.type").is_none());

    for method in ["Reserve", "Settle"] {
        let client = one(
            &trace,
            &format!("gateway -> meter {method} client span"),
            |s| is_rpc(s, SpanKind::Client, METER, method),
        );
        assert_eq!(
            client.parent_span_id(),
            Some(call.span_id()),
            "the meter {method} call is made under the call span"
        );
        let meter = one(&trace, &format!("meter {method} server span"), |s| {
            is_rpc(s, SpanKind::Server, METER, method)
        });
        assert_eq!(
            meter.parent_span_id(),
            Some(client.span_id()),
            "the meter's {method} continues the gateway's client span"
        );
        assert_eq!(meter.int_attribute("rpc.grpc.status_code"), Some(0));
    }

    // One tree: every span of the trace hangs, through spans of the trace, off the
    // caller's span; nothing the call did started a trace of its own elsewhere.
    let ids: HashSet<String> = trace.iter().map(|s| s.span_id()).collect();
    for span in &trace {
        let parent = span.parent_span_id().unwrap_or_default();
        assert!(
            parent == caller.span_id || ids.contains(&parent),
            "{} ({}) has a parent {parent:?} outside the call's trace",
            span.name(),
            span.span_id()
        );
    }
}

fn text_of(message: &pb::ConverseMessage) -> String {
    message
        .content
        .iter()
        .filter_map(|b| match &b.block {
            Some(pb::content_block::Block::Text(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_per_call_across_gateway_and_meter_with_genai_attributes_and_no_content() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let env = EnvMap::from([(telemetry::OTLP_ENDPOINT_VAR.to_owned(), receiver.endpoint())]);
    // Logs at warn keep the test's output readable; spans are exported at INFO
    // whatever the log filter says.
    let config = TelemetryConfig {
        log_filter: "warn".to_owned(),
        ..TelemetryConfig::default()
    };
    let guard = telemetry::init(&config, "tenantmeter-traces-test", &env).unwrap();
    assert!(
        guard.is_exporting(),
        "this test installs the exporter first"
    );

    // Markers no span could contain by chance: the prompt, and the reply's prefix
    // (the emulator answers "<prefix><last user text>").
    let prompt = format!("prompt-secret-{}", random_hex(8));
    let reply_prefix = format!("completion-secret-{}: ", random_hex(8));
    let stack = Stack::start_with(
        EmulatorConfig {
            reply_prefix: reply_prefix.clone(),
            ..EmulatorConfig::default()
        },
        // The default: content logging is off, as it is unless explicitly enabled.
        |config| assert!(!config.log_content),
    )
    .await;
    let key = stack.tenant(TENANT, &[(ALIAS, SONNET)]).await;
    let mut client = stack.gateway().await;

    let unary = Caller::new();
    let response = client
        .converse(unary.traced(bearer(&key, converse(ALIAS, &prompt))))
        .await
        .unwrap()
        .into_inner();
    let unary_answer = Answer {
        text: text_of(response.output_message.as_ref().unwrap()),
        usage: response.usage.unwrap(),
        metering: response.metering.unwrap(),
    };

    let streamed = Caller::new();
    let mut stream = client
        .converse_stream(streamed.traced(bearer(&key, converse_stream(&converse(ALIAS, &prompt)))))
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    let mut usage = None;
    let mut metering = None;
    while let Some(message) = stream.next().await {
        match message.unwrap().event.unwrap() {
            Event::ContentBlockDelta(delta) => {
                if let Some(pb::content_block_delta_event::Delta::Text(t)) = delta.delta {
                    text.push_str(&t);
                }
            }
            Event::Metadata(metadata) => usage = metadata.usage,
            Event::Metering(m) => metering = Some(m),
            Event::MessageStart(_)
            | Event::ContentBlockStart(_)
            | Event::ContentBlockStop(_)
            | Event::MessageStop(_) => {}
        }
    }
    let streamed_answer = Answer {
        text,
        usage: usage.unwrap(),
        metering: metering.unwrap(),
    };
    for answer in [&unary_answer, &streamed_answer] {
        // The markers really went through Bedrock and back, so their absence from
        // the spans below means something.
        assert!(
            answer.text.starts_with(&reply_prefix) && answer.text.contains(&prompt),
            "{}",
            answer.text
        );
        assert_eq!(answer.metering.settlement(), pb::SettlementStatus::Settled);
    }

    // Spans end as the calls finish (some just after the client has its answer) and
    // the batch exporter sends them on its schedule: wait for them rather than flush
    // now, which would drop a span still open at that instant. A timeout is not fatal
    // here: the assertions below then say which span is missing or misplaced.
    let _ = receiver
        .wait_for(SPANS_TIMEOUT, |spans| {
            call_exported(spans, &unary, "Converse")
                && call_exported(spans, &streamed, "ConverseStream")
        })
        .await;
    // Then flush whatever else is queued, so the content check below sees it too.
    guard.shutdown().await;
    let spans = receiver.spans();

    assert_call_trace(&spans, &unary, "Converse", &unary_answer);
    assert_call_trace(&spans, &streamed, "ConverseStream", &streamed_answer);
    assert_ne!(unary.trace_id, streamed.trace_id);

    // One trace per call: the tenant's call spans and the meter's Reserve/Settle
    // server spans exist only in the two callers' traces (none started a new trace).
    let ours = [unary.trace_id.as_str(), streamed.trace_id.as_str()];
    let call_spans: Vec<&CollectedSpan> = spans.iter().filter(|s| is_call_span(s)).collect();
    assert_eq!(call_spans.len(), 2, "one call span per call");
    for method in ["Reserve", "Settle"] {
        let meter: Vec<&CollectedSpan> = spans
            .iter()
            .filter(|s| is_rpc(s, SpanKind::Server, METER, method))
            .collect();
        assert_eq!(meter.len(), 2, "one meter {method} per call");
        for span in call_spans.iter().chain(&meter) {
            assert!(
                ours.contains(&span.trace_id().as_str()),
                "{} is in a trace of its own",
                span.name()
            );
        }
    }

    // Never the content: no attribute or event of any span exported (gateway, meter,
    // pricing, admin calls) holds the prompt or any part of the reply.
    for span in &spans {
        for (secret, what) in [
            (prompt.as_str(), "the prompt"),
            (reply_prefix.trim_end(), "the completion"),
            (unary_answer.text.as_str(), "the completion"),
            (streamed_answer.text.as_str(), "the completion"),
        ] {
            assert_eq!(
                span.mentions(secret),
                None,
                "span {} carries {what}",
                span.name()
            );
        }
    }

    stack.stop().await;
    receiver.stop().await.unwrap();
}
