//! Streams through the real `aws-sdk-bedrockruntime`: InvokeModelWithResponseStream's Anthropic
//! events and metrics, pacing, and faults before and during a stream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failed unwrap is a failed test

mod support;

use std::time::Duration;

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::error::ResponseStreamError;
use aws_sdk_bedrockruntime::types::{ConverseStreamOutput, ResponseStream};
use serde_json::Value;
use support::{MODEL, ResponseHeaders, anthropic_body, runtime_client, start, user};
use tenantmeter_emulator::{EmulatorConfig, Fault, MID_STREAM_MARKER, tokens_for_bytes};
use tokio::time::Instant;

/// The decoded Anthropic events of an InvokeModelWithResponseStream.
async fn invoke_stream_events(client: &Client, body: &str) -> Vec<Value> {
    let mut out = client
        .invoke_model_with_response_stream()
        .model_id(MODEL)
        .content_type("application/json")
        .body(Blob::new(body.to_owned()))
        .send()
        .await
        .unwrap();
    assert_eq!(out.content_type(), "application/json");
    let mut events = Vec::new();
    while let Some(event) = out.body.recv().await.unwrap() {
        let ResponseStream::Chunk(part) = event else {
            panic!("not a chunk: {event:?}");
        };
        events.push(serde_json::from_slice(part.bytes().unwrap().as_ref()).unwrap());
    }
    events
}

#[tokio::test]
async fn invoke_stream_chunks_and_metrics_equal_invoke_model_headers() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = runtime_client(emulator.addr).await;
    let body = anthropic_body(
        "Be brief.",
        "Stream a reply over several chunks, é included.",
        100,
    );

    let headers = ResponseHeaders::default();
    let unary = client
        .invoke_model()
        .model_id(MODEL)
        .body(Blob::new(body.clone()))
        .customize()
        .interceptor(headers.clone())
        .send()
        .await
        .unwrap();
    let unary: Value = serde_json::from_slice(unary.body().as_ref()).unwrap();
    let header = |name: &str| -> u64 { headers.get(name).unwrap().parse().unwrap() };
    let input = header("x-amzn-bedrock-input-token-count");
    let output = header("x-amzn-bedrock-output-token-count");
    let latency = header("x-amzn-bedrock-invocation-latency");

    let events = invoke_stream_events(&client, &body).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let deltas = types
        .iter()
        .filter(|t| **t == "content_block_delta")
        .count();
    assert!(deltas >= 3, "{types:?}");
    let mut expected = vec!["message_start", "content_block_start"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(types, expected);

    let text: String = events
        .iter()
        .filter(|e| e["type"] == "content_block_delta")
        .map(|e| {
            assert_eq!(e["delta"]["type"], "text_delta");
            e["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, unary["content"][0]["text"].as_str().unwrap());

    let start_event = &events[0]["message"];
    assert_eq!(start_event["role"], "assistant");
    assert_eq!(start_event["usage"]["input_tokens"], input);
    assert_eq!(start_event["usage"]["output_tokens"], 1);
    let message_delta = &events[events.len() - 2];
    assert_eq!(message_delta["usage"]["output_tokens"], output);
    assert_eq!(message_delta["delta"]["stop_reason"], unary["stop_reason"]);

    let metrics = &events[events.len() - 1]["amazon-bedrock-invocationMetrics"];
    assert_eq!(metrics["inputTokenCount"], input);
    assert_eq!(metrics["outputTokenCount"], output);
    assert_eq!(metrics["invocationLatency"], latency);
    assert_eq!(metrics["firstByteLatency"], 0);
    assert_eq!(metrics["cacheReadInputTokenCount"], 0);
    assert_eq!(metrics["cacheWriteInputTokenCount"], 0);
    assert_eq!(
        input,
        tokens_for_bytes("Be brief.Stream a reply over several chunks, é included.".len())
    );
}

#[tokio::test]
async fn the_first_event_waits_for_time_to_first_token() {
    let ttft = Duration::from_millis(300);
    let emulator = start(EmulatorConfig {
        time_to_first_token: ttft,
        ..EmulatorConfig::default()
    })
    .await;
    let client = runtime_client(emulator.addr).await;

    let sent = Instant::now();
    let mut out = client
        .converse_stream()
        .model_id(MODEL)
        .messages(user("hi"))
        .send()
        .await
        .unwrap();
    let first = out.stream.recv().await.unwrap().unwrap();
    assert!(sent.elapsed() >= ttft, "{:?}", sent.elapsed());
    assert!(
        matches!(first, ConverseStreamOutput::MessageStart(_)),
        "{first:?}"
    );
    let mut latency_ms = None;
    while let Some(event) = out.stream.recv().await.unwrap() {
        if let ConverseStreamOutput::Metadata(metadata) = event {
            latency_ms = Some(metadata.metrics().unwrap().latency_ms());
        }
    }
    // Unpaced after the first token: every event at the time to first token.
    assert_eq!(latency_ms, Some(300));

    let sent = Instant::now();
    let mut out = client
        .invoke_model_with_response_stream()
        .model_id(MODEL)
        .body(Blob::new(anthropic_body("", "hi", 10)))
        .send()
        .await
        .unwrap();
    out.body.recv().await.unwrap().unwrap();
    assert!(sent.elapsed() >= ttft, "{:?}", sent.elapsed());
    let mut last = None;
    while let Some(event) = out.body.recv().await.unwrap() {
        last = Some(event);
    }
    let Some(ResponseStream::Chunk(part)) = last else {
        panic!("{last:?}");
    };
    let stop: Value = serde_json::from_slice(part.bytes().unwrap().as_ref()).unwrap();
    assert_eq!(
        stop["amazon-bedrock-invocationMetrics"]["firstByteLatency"],
        300
    );
}

#[tokio::test]
async fn tokens_per_second_spaces_the_deltas() {
    let emulator = start(EmulatorConfig {
        reply_prefix: String::new(),
        tokens_per_second: 40,
        ..EmulatorConfig::default()
    })
    .await;
    let client = runtime_client(emulator.addr).await;
    // 48 bytes: three 16-byte deltas of 4 tokens each, so the last one goes out 8 tokens, at 40
    // tokens/s 200 ms, after the first. The server's clock starts after the client sent the
    // request, so that is a lower bound from the send.
    let text = "x".repeat(48);
    let sent = Instant::now();
    let mut out = client
        .converse_stream()
        .model_id(MODEL)
        .messages(user(&text))
        .send()
        .await
        .unwrap();
    let mut delta_times = Vec::new();
    let mut latency_ms = None;
    while let Some(event) = out.stream.recv().await.unwrap() {
        if let ConverseStreamOutput::ContentBlockDelta(_) = event {
            delta_times.push(sent.elapsed());
        } else if let ConverseStreamOutput::Metadata(metadata) = event {
            latency_ms = Some(metadata.metrics().unwrap().latency_ms());
        }
    }
    assert_eq!(delta_times.len(), 3);
    assert!(
        delta_times[1] >= Duration::from_millis(100),
        "{delta_times:?}"
    );
    assert!(
        delta_times[2] >= Duration::from_millis(200),
        "{delta_times:?}"
    );
    // 12 tokens at 40 tokens/s.
    assert_eq!(latency_ms, Some(300));
}

#[tokio::test]
async fn invoke_stream_faults_before_and_mid_stream() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = runtime_client(emulator.addr).await;
    for fault in Fault::ALL {
        let error = client
            .invoke_model_with_response_stream()
            .model_id(MODEL)
            .body(Blob::new(anthropic_body("", fault.marker(), 10)))
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        let matched = match fault {
            Fault::Throttling => error.is_throttling_exception(),
            Fault::Validation => error.is_validation_exception(),
            Fault::AccessDenied => error.is_access_denied_exception(),
            Fault::NotFound => error.is_resource_not_found_exception(),
            Fault::ModelTimeout => error.is_model_timeout_exception(),
            Fault::ServiceUnavailable => error.is_service_unavailable_exception(),
            Fault::Internal => error.is_internal_server_exception(),
        };
        assert!(matched, "{fault:?} -> {error:?}");
    }

    let mut out = client
        .invoke_model_with_response_stream()
        .model_id(MODEL)
        .body(Blob::new(anthropic_body(
            "",
            &format!("a long enough text {MID_STREAM_MARKER}"),
            100,
        )))
        .send()
        .await
        .unwrap();
    let mut types = Vec::new();
    let error = loop {
        match out.body.recv().await {
            Ok(Some(ResponseStream::Chunk(part))) => {
                let event: Value = serde_json::from_slice(part.bytes().unwrap().as_ref()).unwrap();
                types.push(event["type"].as_str().unwrap().to_owned());
            }
            Ok(other) => panic!("the stream ended without its exception: {other:?}"),
            Err(error) => break error.into_service_error(),
        }
    };
    assert_eq!(
        types,
        [
            "message_start",
            "content_block_start",
            "content_block_delta"
        ]
    );
    assert!(
        matches!(error, ResponseStreamError::ThrottlingException(_)),
        "{error:?}"
    );
    let recorded = emulator.emulator.invocations();
    let last = recorded.last().unwrap();
    assert_eq!(last.error.as_deref(), Some("ThrottlingException"));
    assert_eq!(last.usage, None);
}
