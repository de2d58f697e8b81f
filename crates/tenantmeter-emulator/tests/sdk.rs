//! The emulator driven by the real `aws-sdk-bedrockruntime` client, as the gateway will drive it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failed unwrap is a failed test

mod support;

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::error::ProvideErrorMetadata;
use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamError;
use aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    CachePointBlock, CachePointType, ConversationRole, ConverseStreamOutput,
    InferenceConfiguration, StopReason, SystemContentBlock, TokenUsage,
    error::ConverseStreamOutputError,
};
use support::{MODEL, ResponseHeaders, anthropic_body, raw_request, runtime_client, start, user};
use tenantmeter_emulator::{
    DEFAULT_REPLY_PREFIX, EmulatorConfig, Fault, MID_STREAM_MARKER, tokens_for_bytes,
};

/// A system-defined (cross-region) profile id: it runs on [`MODEL`].
const SYSTEM_PROFILE: &str = "us.anthropic.claude-3-haiku-20240307-v1:0";

fn cache_point() -> CachePointBlock {
    CachePointBlock::builder()
        .r#type(CachePointType::Default)
        .build()
        .unwrap()
}

#[tokio::test]
async fn converse_returns_deterministic_text_usage_and_stop_reason() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = runtime_client(emulator.addr).await;
    let system = "Be brief.";
    let prompt = "What is the capital of France?";
    let out = client
        .converse()
        .model_id(MODEL)
        .system(SystemContentBlock::Text(system.to_owned()))
        .messages(user(prompt))
        .send()
        .await
        .unwrap();

    let reply = format!("{DEFAULT_REPLY_PREFIX}{prompt}");
    let message = out.output().unwrap().as_message().unwrap();
    assert_eq!(message.role(), &ConversationRole::Assistant);
    assert_eq!(message.content()[0].as_text().unwrap(), &reply);
    assert_eq!(out.stop_reason(), &StopReason::EndTurn);

    let usage = out.usage().unwrap();
    let input = i32::try_from(tokens_for_bytes(system.len() + prompt.len())).unwrap();
    let output = i32::try_from(tokens_for_bytes(reply.len())).unwrap();
    assert_eq!(usage.input_tokens(), input);
    assert_eq!(usage.output_tokens(), output);
    assert_eq!(usage.total_tokens(), input + output);
    assert_eq!(usage.cache_read_input_tokens(), Some(0));
    assert_eq!(usage.cache_write_input_tokens(), Some(0));
    assert_eq!(out.metrics().unwrap().latency_ms(), 0);
}

#[tokio::test]
async fn max_tokens_cuts_the_reply_and_caps_output_tokens() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = runtime_client(emulator.addr).await;
    let out = client
        .converse()
        .model_id(MODEL)
        .messages(user(&"x".repeat(100)))
        .inference_config(InferenceConfiguration::builder().max_tokens(3).build())
        .send()
        .await
        .unwrap();
    let message = out.output().unwrap().as_message().unwrap();
    assert_eq!(message.content()[0].as_text().unwrap().len(), 12);
    assert_eq!(out.stop_reason(), &StopReason::MaxTokens);
    assert_eq!(out.usage().unwrap().output_tokens(), 3);
}

#[tokio::test]
async fn cache_point_writes_first_then_reads() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = runtime_client(emulator.addr).await;
    let system = "A long, stable system prompt worth caching.";
    let call = || {
        client
            .converse()
            .model_id(MODEL)
            .system(SystemContentBlock::Text(system.to_owned()))
            .system(SystemContentBlock::CachePoint(cache_point()))
            .messages(user("question"))
            .send()
    };
    let cached = i32::try_from(tokens_for_bytes(system.len())).unwrap();
    let uncached = i32::try_from(tokens_for_bytes("question".len())).unwrap();

    let first = call().await.unwrap();
    let usage = first.usage().unwrap();
    assert_eq!(usage.cache_write_input_tokens(), Some(cached));
    assert_eq!(usage.cache_read_input_tokens(), Some(0));
    assert_eq!(usage.input_tokens(), uncached);
    assert_eq!(
        usage.total_tokens(),
        uncached + cached + usage.output_tokens()
    );

    let second = call().await.unwrap();
    let usage = second.usage().unwrap();
    assert_eq!(usage.cache_write_input_tokens(), Some(0));
    assert_eq!(usage.cache_read_input_tokens(), Some(cached));
    assert_eq!(usage.input_tokens(), uncached);
}

#[tokio::test]
async fn invoke_model_returns_body_and_token_headers() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = runtime_client(emulator.addr).await;
    let headers = ResponseHeaders::default();
    let out = client
        .invoke_model()
        .model_id(MODEL)
        .content_type("application/json")
        .accept("application/json")
        .body(Blob::new(anthropic_body("Be brief.", "hi there", 100)))
        .customize()
        .interceptor(headers.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(out.content_type(), "application/json");
    let answer: serde_json::Value = serde_json::from_slice(out.body().as_ref()).unwrap();
    let reply = format!("{DEFAULT_REPLY_PREFIX}hi there");
    let input = tokens_for_bytes("Be brief.hi there".len());
    let output = tokens_for_bytes(reply.len());
    assert_eq!(answer["model"], MODEL);
    assert_eq!(answer["content"][0]["text"], reply.as_str());
    assert_eq!(answer["stop_reason"], "end_turn");
    assert_eq!(answer["usage"]["input_tokens"], input);
    assert_eq!(answer["usage"]["output_tokens"], output);

    let header = |name: &str| headers.get(name).unwrap();
    assert_eq!(
        header("x-amzn-bedrock-input-token-count"),
        input.to_string()
    );
    assert_eq!(
        header("x-amzn-bedrock-output-token-count"),
        output.to_string()
    );
    assert_eq!(header("x-amzn-bedrock-cache-read-input-token-count"), "0");
    assert_eq!(header("x-amzn-bedrock-cache-write-input-token-count"), "0");
    assert_eq!(header("x-amzn-bedrock-invocation-latency"), "0");
}

fn converse_matches(fault: Fault, error: &ConverseError) -> bool {
    match fault {
        Fault::Throttling => matches!(error, ConverseError::ThrottlingException(_)),
        Fault::Validation => matches!(error, ConverseError::ValidationException(_)),
        Fault::AccessDenied => matches!(error, ConverseError::AccessDeniedException(_)),
        Fault::NotFound => matches!(error, ConverseError::ResourceNotFoundException(_)),
        Fault::ModelTimeout => matches!(error, ConverseError::ModelTimeoutException(_)),
        Fault::ServiceUnavailable => {
            matches!(error, ConverseError::ServiceUnavailableException(_))
        }
        Fault::Internal => matches!(error, ConverseError::InternalServerException(_)),
    }
}

fn invoke_matches(fault: Fault, error: &InvokeModelError) -> bool {
    match fault {
        Fault::Throttling => matches!(error, InvokeModelError::ThrottlingException(_)),
        Fault::Validation => matches!(error, InvokeModelError::ValidationException(_)),
        Fault::AccessDenied => matches!(error, InvokeModelError::AccessDeniedException(_)),
        Fault::NotFound => matches!(error, InvokeModelError::ResourceNotFoundException(_)),
        Fault::ModelTimeout => matches!(error, InvokeModelError::ModelTimeoutException(_)),
        Fault::ServiceUnavailable => {
            matches!(error, InvokeModelError::ServiceUnavailableException(_))
        }
        Fault::Internal => matches!(error, InvokeModelError::InternalServerException(_)),
    }
}

#[tokio::test]
async fn every_fault_marker_maps_to_the_sdk_typed_error() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = runtime_client(emulator.addr).await;
    for fault in Fault::ALL {
        let text = format!("please fail {}", fault.marker());
        let error = client
            .converse()
            .model_id(MODEL)
            .messages(user(&text))
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert!(converse_matches(fault, &error), "{fault:?} -> {error:?}");
        assert!(
            error.message().unwrap().contains(fault.error_type()),
            "{error:?}"
        );

        let body = serde_json::json!({
            "max_tokens": 10,
            "messages": [{ "role": "user", "content": text }],
        });
        let error = client
            .invoke_model()
            .model_id(SYSTEM_PROFILE)
            .body(Blob::new(body.to_string()))
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert!(invoke_matches(fault, &error), "{fault:?} -> {error:?}");
    }
}

#[tokio::test]
async fn malformed_requests_are_validation_errors() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = runtime_client(emulator.addr).await;
    let error = client
        .invoke_model()
        .model_id(MODEL)
        .body(Blob::new("not json"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(error, InvokeModelError::ValidationException(_)),
        "{error:?}"
    );

    let raw = raw_request(
        emulator.addr,
        "POST",
        &format!("/model/{MODEL}/converse"),
        "{}",
    )
    .await;
    let lower = raw.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 400"), "{raw}");
    assert!(
        lower.contains("x-amzn-errortype: validationexception"),
        "{raw}"
    );
    assert!(raw.contains("messages"), "{raw}");
}

/// Text, stop reason and usage reassembled from a ConverseStream.
async fn stream(client: &Client, text: &str) -> (String, StopReason, TokenUsage) {
    let mut out = client
        .converse_stream()
        .model_id(SYSTEM_PROFILE)
        .messages(user(text))
        .send()
        .await
        .unwrap();
    let (mut reply, mut stop, mut usage) = (String::new(), None, None);
    while let Some(event) = out.stream.recv().await.unwrap() {
        if let ConverseStreamOutput::ContentBlockDelta(delta) = &event {
            reply.push_str(delta.delta().unwrap().as_text().unwrap());
        } else if let ConverseStreamOutput::MessageStop(message_stop) = &event {
            stop = Some(message_stop.stop_reason().clone());
        } else if let ConverseStreamOutput::Metadata(metadata) = &event {
            usage = metadata.usage().cloned();
        }
    }
    (reply, stop.unwrap(), usage.unwrap())
}

#[tokio::test]
async fn converse_stream_matches_converse_exactly() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = runtime_client(emulator.addr).await;
    let text = "Stream me a reply that spans several delta events, é included.";
    let unary = client
        .converse()
        .model_id(SYSTEM_PROFILE)
        .messages(user(text))
        .send()
        .await
        .unwrap();
    let (reply, stop, usage) = stream(&client, text).await;
    let message = unary.output().unwrap().as_message().unwrap();
    assert_eq!(&reply, message.content()[0].as_text().unwrap());
    assert_eq!(&stop, unary.stop_reason());
    assert_eq!(&usage, unary.usage().unwrap());
}

#[tokio::test]
async fn converse_stream_faults_before_and_mid_stream() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = runtime_client(emulator.addr).await;
    let error = client
        .converse_stream()
        .model_id(MODEL)
        .messages(user(Fault::ServiceUnavailable.marker()))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(error, ConverseStreamError::ServiceUnavailableException(_)),
        "{error:?}"
    );

    let mut out = client
        .converse_stream()
        .model_id(MODEL)
        .messages(user(&format!("a long enough text {MID_STREAM_MARKER}")))
        .send()
        .await
        .unwrap();
    let mut deltas = 0;
    let error = loop {
        match out.stream.recv().await {
            Ok(Some(ConverseStreamOutput::ContentBlockDelta(_))) => deltas += 1,
            Ok(Some(event)) => assert!(
                matches!(event, ConverseStreamOutput::MessageStart(_)),
                "{event:?}"
            ),
            Ok(None) => panic!("the stream ended without its exception"),
            Err(error) => break error.into_service_error(),
        }
    };
    assert_eq!(deltas, 1);
    assert!(
        matches!(error, ConverseStreamOutputError::ThrottlingException(_)),
        "{error:?}"
    );
}
