//! The gateway end to end: tenant calls through the real stack (registry in
//! Redis, pricing, meter, the Bedrock emulator through the real SDK), with
//! the money checked at the meter to the nano-USD.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::StreamExt as _;
use support::{HAIKU, SONNET, Stack, bearer, converse, converse_stream, user};
use tenantmeter_emulator::Fault;
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::converse_stream_response::Event;
use tenantmeter_runtime::clock::{Clock as _, SystemClock, to_timestamp};
use tenantmeter_runtime::error::error_reason;
use tenantmeter_testkit::poll_until_ok;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

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

/// A request with a cached system prompt: the first call writes the cache,
/// the next ones read it.
fn cached_request(alias: &str, prefix: &str, text: &str) -> pb::ConverseRequest {
    let mut request = converse(alias, text);
    request.system = vec![
        pb::SystemContentBlock {
            block: Some(pb::system_content_block::Block::Text(format!(
                "{prefix}: you are a careful assistant who answers briefly and precisely."
            ))),
        },
        pb::SystemContentBlock {
            block: Some(pb::system_content_block::Block::CachePoint(
                pb::CachePointBlock::default(),
            )),
        },
    ];
    request
}

struct Streamed {
    text: String,
    usage: Option<pb::TokenUsage>,
    metering: Option<pb::CallMetering>,
    error: Option<tonic::Status>,
}

async fn stream_call(stack: &Stack, key: &str, request: pb::ConverseStreamRequest) -> Streamed {
    let mut client = stack.gateway().await;
    let mut stream = client
        .converse_stream(bearer(key, request))
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Streamed {
        text: String::new(),
        usage: None,
        metering: None,
        error: None,
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(message) => match message.event.unwrap() {
                Event::ContentBlockDelta(delta) => {
                    if let Some(pb::content_block_delta_event::Delta::Text(t)) = delta.delta {
                        streamed.text.push_str(&t);
                    }
                }
                Event::Metadata(metadata) => streamed.usage = metadata.usage,
                Event::Metering(metering) => streamed.metering = Some(metering),
                Event::MessageStart(_)
                | Event::ContentBlockStart(_)
                | Event::ContentBlockStop(_)
                | Event::MessageStop(_) => {}
            },
            Err(status) => {
                streamed.error = Some(status);
                break;
            }
        }
    }
    streamed
}

#[tokio::test]
async fn streamed_and_unary_calls_cost_exactly_the_same_cache_tokens_included() {
    let stack = Stack::start().await;
    let unary_key = stack.tenant("unary", &[("sonnet", SONNET)]).await;
    let stream_key = stack.tenant("streamed", &[("sonnet", SONNET)]).await;
    let mut client = stack.gateway().await;

    let mut unary_usage = Vec::new();
    let mut unary_text = Vec::new();
    for question in ["What is 2+2?", "And 3+3?"] {
        let response = client
            .converse(bearer(
                &unary_key,
                cached_request("sonnet", "tenant-u", question),
            ))
            .await
            .unwrap()
            .into_inner();
        let metering = response.metering.clone().unwrap();
        assert_eq!(metering.settlement(), pb::SettlementStatus::Settled);
        assert!(metering.provider_cost_nanos_usd > 0);
        assert!(!metering.usage_estimated);
        unary_text.push(text_of(response.output_message.as_ref().unwrap()));
        unary_usage.push(response.usage.unwrap());
    }
    // The second call read what the first wrote.
    assert!(unary_usage[0].cache_write_input_tokens > 0);
    assert_eq!(unary_usage[0].cache_read_input_tokens, 0);
    assert_eq!(
        unary_usage[1].cache_read_input_tokens,
        unary_usage[0].cache_write_input_tokens
    );

    let mut streamed_usage = Vec::new();
    for (i, question) in ["What is 2+2?", "And 3+3?"].into_iter().enumerate() {
        // Same length prefix, different text: its own cache entry, same tokens.
        let request = cached_request("sonnet", "tenant-s", question);
        let streamed = stream_call(&stack, &stream_key, converse_stream(&request)).await;
        assert!(streamed.error.is_none(), "{:?}", streamed.error);
        assert_eq!(
            streamed.text, unary_text[i],
            "same reply streamed and unary"
        );
        let metering = streamed.metering.unwrap();
        assert_eq!(metering.settlement(), pb::SettlementStatus::Settled);
        assert!(!metering.usage_estimated);
        streamed_usage.push(streamed.usage.unwrap());
    }
    assert_eq!(streamed_usage, unary_usage);

    let unary = stack.month("unary").await;
    let streamed = stack.month("streamed").await;
    assert_eq!(unary.requests, 2);
    assert_eq!(unary, streamed, "the meter counts both ways the same");
    let tokens = unary.tokens.unwrap();
    let sum = |f: fn(&pb::TokenUsage) -> i64| unary_usage.iter().map(f).sum::<i64>();
    assert_eq!(tokens.input_tokens, sum(|u| u.input_tokens));
    assert_eq!(tokens.output_tokens, sum(|u| u.output_tokens));
    assert_eq!(
        tokens.cache_read_input_tokens,
        sum(|u| u.cache_read_input_tokens)
    );
    assert_eq!(
        tokens.cache_write_input_tokens,
        sum(|u| u.cache_write_input_tokens)
    );

    // And the emulator saw every call made with the tenant's profile ARN and
    // the tenant in requestMetadata.
    let invocations = stack.emulator.invocations();
    assert_eq!(invocations.len(), 4);
    for invocation in &invocations {
        assert!(
            invocation
                .model_id
                .contains(":application-inference-profile/"),
            "called with {}",
            invocation.model_id
        );
        assert_eq!(invocation.resolved_model_id.as_deref(), Some(SONNET));
        let metadata = invocation.request_metadata.as_ref().unwrap();
        let tenant = metadata.get("tenant_id").unwrap();
        assert!(tenant == "unary" || tenant == "streamed");
        assert_eq!(metadata.get("application_id").unwrap(), "app");
    }
    assert_eq!(
        stack.usage("unary").await.in_flight.unwrap().reservations,
        0
    );
    stack.stop().await;
}

#[tokio::test]
async fn every_bedrock_fault_maps_to_its_code_and_leaves_no_reservation() {
    let stack = Stack::start().await;
    let key = stack.tenant("faulty", &[("sonnet", SONNET)]).await;
    let mut client = stack.gateway().await;
    let cases = [
        (
            Fault::Throttling,
            Code::ResourceExhausted,
            "GATEWAY_ERROR_REASON_UPSTREAM_THROTTLED",
        ),
        (
            Fault::Validation,
            Code::InvalidArgument,
            "GATEWAY_ERROR_REASON_UPSTREAM_VALIDATION",
        ),
        (
            Fault::AccessDenied,
            Code::PermissionDenied,
            "GATEWAY_ERROR_REASON_UPSTREAM_ACCESS_DENIED",
        ),
        (
            Fault::NotFound,
            Code::NotFound,
            "GATEWAY_ERROR_REASON_UPSTREAM_NOT_FOUND",
        ),
        (
            Fault::ModelTimeout,
            Code::DeadlineExceeded,
            "GATEWAY_ERROR_REASON_UPSTREAM_TIMEOUT",
        ),
        (
            Fault::ServiceUnavailable,
            Code::Unavailable,
            "GATEWAY_ERROR_REASON_UPSTREAM_UNAVAILABLE",
        ),
        (
            Fault::Internal,
            Code::Unavailable,
            "GATEWAY_ERROR_REASON_UPSTREAM_UNAVAILABLE",
        ),
    ];
    for (fault, code, reason) in cases {
        let prompt = format!("please {}", fault.marker());
        let status = client
            .converse(bearer(&key, converse("sonnet", &prompt)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{fault:?}: {status:?}");
        assert_eq!(error_reason(&status).as_deref(), Some(reason), "{fault:?}");
        assert!(
            status.message().starts_with("Bedrock "),
            "{}",
            status.message()
        );

        // The same through ConverseStream: the error comes before any message.
        let streamed = client
            .converse_stream(bearer(&key, converse_stream(&converse("sonnet", &prompt))))
            .await;
        let status = match streamed {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.next().await {
                        Some(Err(status)) => break status,
                        Some(Ok(_)) => {}
                        None => panic!("{fault:?}: stream ended without the error"),
                    }
                }
            }
        };
        assert_eq!(status.code(), code, "stream {fault:?}: {status:?}");

        // InvokeModel too.
        let body = serde_json::json!({
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": prompt}],
        });
        let status = client
            .invoke_model(bearer(
                &key,
                pb::InvokeModelRequest {
                    model_alias: "sonnet".into(),
                    body: serde_json::to_vec(&body).unwrap(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "invoke {fault:?}: {status:?}");

        let usage = stack.usage("faulty").await;
        assert_eq!(
            usage.in_flight.unwrap().reservations,
            0,
            "{fault:?} left a reservation"
        );
    }
    // Nothing was counted: every call failed before Bedrock served it.
    assert_eq!(stack.month("faulty").await.requests, 0);
    stack.stop().await;
}

#[tokio::test]
async fn a_stream_cut_by_bedrock_settles_what_was_consumed_as_estimated() {
    let stack = Stack::start().await;
    let key = stack.tenant("cut", &[("sonnet", SONNET)]).await;
    let request = converse(
        "sonnet",
        &format!(
            "tell me a long story {}",
            tenantmeter_emulator::MID_STREAM_MARKER
        ),
    );
    let streamed = stream_call(&stack, &key, converse_stream(&request)).await;
    let status = streamed.error.expect("the stream fails mid-way");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        error_reason(&status).as_deref(),
        Some("GATEWAY_ERROR_REASON_UPSTREAM_THROTTLED")
    );
    assert!(!streamed.text.is_empty(), "some text came before the cut");
    let event_id = status
        .metadata()
        .get("tenantmeter-usage-event-id")
        .expect("the trailer names the settled event")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(event_id.starts_with("gw:"));
    let month = stack.month("cut").await;
    assert_eq!(month.requests, 1);
    let tokens = month.tokens.unwrap();
    assert!(
        tokens.input_tokens > 0 && tokens.output_tokens > 0,
        "{tokens:?}"
    );
    assert_eq!(stack.usage("cut").await.in_flight.unwrap().reservations, 0);
    stack.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_before_any_reservation() {
    let stack = Stack::start_with(Default::default(), |config| {
        config.max_request_bytes = 10_000;
    })
    .await;
    let key = stack.tenant("careful", &[("sonnet", SONNET)]).await;
    let mut client = stack.gateway().await;

    let mut empty = converse("sonnet", "hi");
    empty.messages.clear();
    let status = client.converse(bearer(&key, empty)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("messages"),
        "{}",
        status.message()
    );
    assert_eq!(
        error_reason(&status).as_deref(),
        Some("GATEWAY_ERROR_REASON_INVALID_REQUEST")
    );

    let status = client
        .converse(bearer(&key, converse("opus", "hi")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("opus"));

    let status = client
        .converse(bearer(&key, converse("sonnet", &"x".repeat(20_000))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        error_reason(&status).as_deref(),
        Some("GATEWAY_ERROR_REASON_PAYLOAD_TOO_LARGE")
    );

    let mut reserved = converse("sonnet", "hi");
    reserved
        .request_metadata
        .insert("tenant_id".into(), "someone-else".into());
    let status = client.converse(bearer(&key, reserved)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("request_metadata"),
        "{}",
        status.message()
    );

    let status = client
        .invoke_model(bearer(
            &key,
            pb::InvokeModelRequest {
                model_alias: "sonnet".into(),
                body: b"{\"max_tokens\": 10, ".to_vec(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("body"), "{}", status.message());

    let mut wrong_app = converse("sonnet", "hi");
    wrong_app.application_id = "not-mine".into();
    let status = client.converse(bearer(&key, wrong_app)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("application_id"));

    // None of it reached the meter or Bedrock.
    let usage = stack.usage("careful").await;
    assert_eq!(usage.in_flight.unwrap().reservations, 0);
    assert_eq!(stack.month("careful").await.requests, 0);
    assert!(stack.emulator.invocations().is_empty());
    stack.stop().await;
}

#[tokio::test]
async fn a_tenant_reaches_only_its_own_aliases_and_usage() {
    let stack = Stack::start().await;
    let alice = stack.tenant("alice", &[("sonnet", SONNET)]).await;
    let bob = stack.tenant("bob", &[("haiku", HAIKU)]).await;
    let mut client = stack.gateway().await;

    // Bob's alias does not exist for Alice, whatever Bob calls it.
    let status = client
        .converse(bearer(&alice, converse("haiku", "hi")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // A call is always the key's tenant's, on its own profile.
    let response = client
        .converse(bearer(&bob, converse("haiku", "hello")))
        .await
        .unwrap()
        .into_inner();
    let metering = response.metering.unwrap();
    assert_eq!(metering.tenant_id, "bob");
    assert!(
        metering
            .inference_profile_arn
            .contains("application-inference-profile/")
    );
    assert_eq!(stack.month("bob").await.requests, 1);
    assert_eq!(stack.month("alice").await.requests, 0);
    let invocation = stack.emulator.invocations().pop().unwrap();
    assert_eq!(invocation.model_id, metering.inference_profile_arn);

    // No key, a made-up key, a key with a flipped character: UNAUTHENTICATED.
    let status = client
        .converse(tonic::Request::new(converse("sonnet", "hi")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    for key in ["tmk_nope_nope".to_owned(), {
        let mut forged = alice.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'a' { 'b' } else { 'a' });
        forged
    }] {
        let status = client
            .converse(bearer(&key, converse("sonnet", "hi")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{key}");
        assert_eq!(
            error_reason(&status).as_deref(),
            Some("GATEWAY_ERROR_REASON_INVALID_KEY")
        );
    }

    // A disabled tenant is refused with the reason.
    let mut admin = stack.admin().await;
    admin
        .disable_tenant(bearer(
            support::ADMIN_TOKEN,
            pb::DisableTenantRequest {
                tenant_id: "alice".into(),
                reason: "unpaid invoice".into(),
            },
        ))
        .await
        .unwrap();
    let refused = poll_until_ok(Duration::from_secs(10), || {
        let mut client = client.clone();
        let alice = alice.clone();
        async move {
            match client
                .converse(bearer(&alice, converse("sonnet", "hi")))
                .await
            {
                Err(status) if status.code() == Code::PermissionDenied => Ok(status),
                other => Err(format!("not refused yet: {other:?}")),
            }
        }
    })
    .await
    .unwrap();
    assert!(
        refused.message().contains("unpaid invoice"),
        "{}",
        refused.message()
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_meter_denial_is_resource_exhausted_with_reason_level_and_retry_after() {
    let stack = Stack::start().await;
    let key = stack.tenant("busy", &[("sonnet", SONNET)]).await;
    let now = SystemClock.now();
    let applied = stack
        .meter()
        .await
        .apply_policies(pb::ApplyPoliciesRequest {
            policies: vec![pb::TenantPolicy {
                tenant_id: "busy".into(),
                source_level: pb::Level::Red as i32,
                requests_per_minute: 1,
                decided_at: Some(to_timestamp(now)),
                expires_at: Some(to_timestamp(now + Duration::from_secs(600))),
                reason: "level RED: runaway spend".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.results[0].status(), pb::PolicyResultStatus::Applied);
    let mut client = stack.gateway().await;
    let first = client
        .converse(bearer(&key, converse("sonnet", "one")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.metering.unwrap().level(), pb::Level::Red);
    let status = client
        .converse(bearer(&key, converse("sonnet", "two")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        error_reason(&status).as_deref(),
        Some("GATEWAY_ERROR_REASON_TENANT_THROTTLED")
    );
    let metadata = status.metadata();
    let retry_ms: u64 = metadata
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_ms > 0 && retry_ms <= 60_000, "{retry_ms}");
    assert_eq!(metadata.get("tenantmeter-level").unwrap(), "LEVEL_RED");
    assert_eq!(
        metadata.get("tenantmeter-deny-reason").unwrap(),
        "DENY_REASON_REQUEST_RATE_LIMIT"
    );
    // Only the admitted call reached Bedrock.
    assert_eq!(stack.emulator.invocations().len(), 1);
    stack.stop().await;
}

async fn settlements_health(stack: &Stack) -> i32 {
    HealthClient::new(support::channel(stack.gateway_addr).await)
        .check(HealthCheckRequest {
            service: tenantmeter_gateway::SETTLEMENTS_HEALTH.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test]
async fn settlements_the_meter_cannot_take_are_spooled_and_replayed_exactly_once() {
    let mut stack = Stack::start().await;
    let key = stack.tenant("steady", &[("sonnet", SONNET)]).await;
    let mut client = stack.gateway().await;
    let mut expected = pb::TokenUsage::default();
    let add = |total: &mut pb::TokenUsage, usage: &pb::TokenUsage| {
        total.input_tokens += usage.input_tokens;
        total.output_tokens += usage.output_tokens;
        total.cache_read_input_tokens += usage.cache_read_input_tokens;
        total.cache_write_input_tokens += usage.cache_write_input_tokens;
    };
    for i in 0..3 {
        let response = client
            .converse(bearer(&key, converse("sonnet", &format!("before {i}"))))
            .await
            .unwrap()
            .into_inner();
        add(&mut expected, response.usage.as_ref().unwrap());
    }

    // The meter goes away: calls are admitted (fail open) and their usage spooled.
    stack.stop_meter().await;
    for i in 0..5 {
        let request = converse("sonnet", &format!("during the outage {i}"));
        let response = if i % 2 == 0 {
            client
                .converse(bearer(&key, request))
                .await
                .unwrap()
                .into_inner()
        } else {
            let streamed = stream_call(&stack, &key, converse_stream(&request)).await;
            assert!(streamed.error.is_none(), "{:?}", streamed.error);
            assert_eq!(
                streamed.metering.as_ref().unwrap().settlement(),
                pb::SettlementStatus::Spooled
            );
            pb::ConverseResponse {
                usage: streamed.usage,
                metering: streamed.metering,
                ..Default::default()
            }
        };
        let metering = response.metering.unwrap();
        assert_eq!(metering.settlement(), pb::SettlementStatus::Spooled);
        assert_eq!(metering.provider_cost_nanos_usd, 0);
        add(&mut expected, response.usage.as_ref().unwrap());
    }

    // Ops see it without reading the spool directory.
    assert_eq!(
        settlements_health(&stack).await,
        ServingStatus::NotServing as i32
    );

    // Back: the spool drains, and the totals are exact.
    stack.start_meter().await;
    let settled = poll_until_ok(Duration::from_secs(30), || async {
        let month = stack.month("steady").await;
        if month.requests == 8 {
            Ok(month)
        } else {
            Err(format!("{} of 8 calls counted", month.requests))
        }
    })
    .await
    .expect("every spooled settlement replayed");
    assert_eq!(settled.tokens.unwrap(), expected);
    poll_until_ok(Duration::from_secs(10), || async {
        let status = settlements_health(&stack).await;
        if status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            Err(format!("settlements health {status}"))
        }
    })
    .await
    .unwrap();
    // A later call settles directly again.
    let response = client
        .converse(bearer(&key, converse("sonnet", "after")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.metering.unwrap().settlement(),
        pb::SettlementStatus::Settled
    );
    assert_eq!(stack.month("steady").await.requests, 9);
    stack.stop().await;
}

#[tokio::test]
async fn invoke_model_meters_the_token_headers_and_streams_the_same() {
    let stack = Stack::start().await;
    let key = stack.tenant("raw", &[("sonnet", SONNET)]).await;
    let mut client = stack.gateway().await;
    let body = serde_json::to_vec(&serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "Summarise the plot of Hamlet in one line."}],
    }))
    .unwrap();
    let unary = client
        .invoke_model(bearer(
            &key,
            pb::InvokeModelRequest {
                model_alias: "sonnet".into(),
                body: body.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let usage = unary.usage.unwrap();
    assert!(usage.input_tokens > 0 && usage.output_tokens > 0);
    let reply: serde_json::Value = serde_json::from_slice(&unary.body).unwrap();
    assert_eq!(reply["type"], "message");
    assert!(!unary.metering.as_ref().unwrap().usage_estimated);

    let mut stream = client
        .invoke_model_with_response_stream(bearer(
            &key,
            pb::InvokeModelWithResponseStreamRequest {
                model_alias: "sonnet".into(),
                body,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut chunks = 0;
    let mut streamed_usage = None;
    let mut metering = None;
    while let Some(message) = stream.next().await {
        match message.unwrap().event.unwrap() {
            pb::invoke_model_with_response_stream_response::Event::Chunk(_) => chunks += 1,
            pb::invoke_model_with_response_stream_response::Event::Metadata(m) => {
                streamed_usage = m.usage;
            }
            pb::invoke_model_with_response_stream_response::Event::Metering(m) => {
                metering = Some(m);
            }
        }
    }
    assert!(chunks > 2);
    assert_eq!(streamed_usage.unwrap(), usage);
    assert_eq!(
        metering.unwrap().provider_cost_nanos_usd,
        unary.metering.unwrap().provider_cost_nanos_usd
    );
    let month = stack.month("raw").await;
    assert_eq!(month.requests, 2);
    assert_eq!(month.tokens.unwrap().output_tokens, 2 * usage.output_tokens);
    let _ = user("unused");
    stack.stop().await;
}

#[tokio::test]
async fn a_bedrock_call_past_the_timeout_is_deadline_exceeded_and_released() {
    let stack = Stack::start_with(Default::default(), |config| {
        config.bedrock.call_timeout = Duration::from_secs(1);
    })
    .await;
    let key = stack.tenant("patient", &[("sonnet", SONNET)]).await;
    let mut client = stack.gateway().await;
    let prompt = format!("wait for it {}", tenantmeter_emulator::HANG_MARKER);
    let status = client
        .converse(bearer(&key, converse("sonnet", &prompt)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        error_reason(&status).as_deref(),
        Some("GATEWAY_ERROR_REASON_UPSTREAM_TIMEOUT")
    );
    assert_eq!(
        stack.usage("patient").await.in_flight.unwrap().reservations,
        0
    );
    assert_eq!(stack.month("patient").await.requests, 0);
    stack.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_a_stream_still_has_its_consumed_usage_settled() {
    // A slow stream, so the client can leave in the middle of it.
    let emulator = tenantmeter_emulator::EmulatorConfig {
        tokens_per_second: 20,
        ..Default::default()
    };
    let stack = Stack::start_with(emulator, |_| {}).await;
    let key = stack.tenant("leaver", &[("sonnet", SONNET)]).await;
    let mut client = stack.gateway().await;
    let request = converse("sonnet", &"tell me everything about the sea. ".repeat(20));
    let mut stream = client
        .converse_stream(bearer(&key, converse_stream(&request)))
        .await
        .unwrap()
        .into_inner();
    // Read until the first text arrives, then hang up.
    loop {
        let message = stream.next().await.unwrap().unwrap();
        if matches!(message.event, Some(Event::ContentBlockDelta(_))) {
            break;
        }
    }
    drop(stream);
    drop(client);

    let month = poll_until_ok(Duration::from_secs(30), || async {
        let month = stack.month("leaver").await;
        if month.requests == 1 {
            Ok(month)
        } else {
            Err("the cut stream is not settled yet")
        }
    })
    .await
    .unwrap();
    let tokens = month.tokens.unwrap();
    assert!(tokens.input_tokens > 0, "{tokens:?}");
    assert!(tokens.output_tokens > 0, "{tokens:?}");
    // Less than the whole reply: only what was generated before the client left.
    let whole = stack
        .emulator
        .invocations()
        .pop()
        .and_then(|i| i.usage)
        .map(|u| u.output_tokens);
    if let Some(whole) = whole {
        assert!(tokens.output_tokens <= i64::try_from(whole).unwrap());
    }
    assert_eq!(
        stack.usage("leaver").await.in_flight.unwrap().reservations,
        0
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_policy_downgrade_serves_the_cheaper_alias_through_its_own_profile() {
    let stack = Stack::start().await;
    let key = stack
        .tenant("thrifty", &[("sonnet", SONNET), ("haiku", HAIKU)])
        .await;
    let now = SystemClock.now();
    stack
        .meter()
        .await
        .apply_policies(pb::ApplyPoliciesRequest {
            policies: vec![pb::TenantPolicy {
                tenant_id: "thrifty".into(),
                source_level: pb::Level::Orange as i32,
                model_downgrades: [(SONNET.to_owned(), HAIKU.to_owned())].into(),
                decided_at: Some(to_timestamp(now)),
                expires_at: Some(to_timestamp(now + Duration::from_secs(600))),
                reason: "level ORANGE: sustained spend".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let response = stack
        .gateway()
        .await
        .converse(bearer(&key, converse("sonnet", "hello")))
        .await
        .unwrap()
        .into_inner();
    let metering = response.metering.unwrap();
    assert_eq!(metering.model_alias, "sonnet");
    assert_eq!(metering.served_model_alias, "haiku");
    assert_eq!(metering.model_id, HAIKU);
    assert_eq!(metering.level(), pb::Level::Orange);
    let invocation = stack.emulator.invocations().pop().unwrap();
    assert_eq!(invocation.model_id, metering.inference_profile_arn);
    assert_eq!(invocation.resolved_model_id.as_deref(), Some(HAIKU));
    stack.stop().await;
}
