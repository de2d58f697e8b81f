//! Runtime calls whose `modelId` is an application inference profile ARN, and the emulator's
//! record of them, as the gateway's metering tests will read it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failed unwrap is a failed test

mod support;

use std::collections::BTreeMap;

use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamError;
use aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError;
use aws_sdk_bedrockruntime::operation::invoke_model_with_response_stream::InvokeModelWithResponseStreamError;
use aws_sdk_bedrockruntime::primitives::Blob;
use support::{
    MODEL, REGION, anthropic_body, control_client, control_client_in, create_profile,
    foundation_model_arn, invocations_over_http, runtime_client, runtime_client_in, start,
    system_profile_arn, user,
};
use tenantmeter_emulator::{
    DEFAULT_REPLY_PREFIX, EmulatorConfig, Invocation, Operation, Usage, tokens_for_bytes,
};

const UNKNOWN_PROFILE_ARN: &str =
    "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6";

#[tokio::test]
async fn converse_through_a_profile_arn_runs_on_its_source_model_and_is_recorded() {
    let emulator = start(EmulatorConfig::default()).await;
    let control = control_client(emulator.addr).await;
    let runtime = runtime_client(emulator.addr).await;
    let arn = create_profile(
        &control,
        "tenant-acme-haiku",
        &system_profile_arn(REGION, &format!("us.{MODEL}")),
    )
    .await;

    let prompt = "What is the capital of France?";
    let direct = runtime
        .converse()
        .model_id(MODEL)
        .messages(user(prompt))
        .send()
        .await
        .unwrap();
    let through_profile = runtime
        .converse()
        .model_id(&arn)
        .messages(user(prompt))
        .request_metadata("tenant", "acme")
        .request_metadata("alias", "haiku")
        .send()
        .await
        .unwrap();
    assert_eq!(through_profile.usage(), direct.usage());
    assert_eq!(through_profile.output(), direct.output());

    let input = tokens_for_bytes(prompt.len());
    let output = tokens_for_bytes(DEFAULT_REPLY_PREFIX.len() + prompt.len());
    let usage = Usage {
        input_tokens: input,
        output_tokens: output,
        total_tokens: input + output,
        cache_read_input_tokens: 0,
        cache_write_input_tokens: 0,
    };
    let recorded = invocations_over_http(emulator.addr).await;
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert_eq!(recorded[0].model_id, MODEL);
    assert_eq!(recorded[0].request_metadata, None);
    let last = &recorded[1];
    assert_eq!(
        last,
        &Invocation {
            request_id: last.request_id.clone(),
            operation: Operation::Converse,
            region: REGION.to_owned(),
            model_id: arn.clone(),
            resolved_model_id: Some(MODEL.to_owned()),
            request_metadata: Some(BTreeMap::from([
                ("alias".to_owned(), "haiku".to_owned()),
                ("tenant".to_owned(), "acme".to_owned()),
            ])),
            usage: Some(usage),
            error: None,
        }
    );
    assert!(last.request_id.starts_with("emu-"), "{last:?}");
    // The Rust handle reads the same record.
    assert_eq!(emulator.emulator.invocations(), recorded);
}

#[tokio::test]
async fn every_runtime_operation_resolves_a_profile_arn() {
    let emulator = start(EmulatorConfig::default()).await;
    let control = control_client(emulator.addr).await;
    let runtime = runtime_client(emulator.addr).await;
    let arn = create_profile(&control, "acme", &foundation_model_arn(REGION, MODEL)).await;

    let mut stream = runtime
        .converse_stream()
        .model_id(&arn)
        .messages(user("hi"))
        .send()
        .await
        .unwrap();
    while stream.stream.recv().await.unwrap().is_some() {}
    let out = runtime
        .invoke_model()
        .model_id(&arn)
        .body(Blob::new(anthropic_body("", "hi", 10)))
        .send()
        .await
        .unwrap();
    // InvokeModel echoes the model id it saw: the ARN arrives percent-decoded.
    let answer: serde_json::Value = serde_json::from_slice(out.body().as_ref()).unwrap();
    assert_eq!(answer["model"], arn.as_str());
    let mut stream = runtime
        .invoke_model_with_response_stream()
        .model_id(&arn)
        .body(Blob::new(anthropic_body("", "hi", 10)))
        .send()
        .await
        .unwrap();
    while stream.body.recv().await.unwrap().is_some() {}

    let recorded: Vec<_> = emulator
        .emulator
        .invocations()
        .into_iter()
        .map(|i| (i.operation, i.model_id, i.resolved_model_id, i.error))
        .collect();
    let expected = |operation| (operation, arn.clone(), Some(MODEL.to_owned()), None);
    assert_eq!(
        recorded,
        [
            expected(Operation::ConverseStream),
            expected(Operation::InvokeModel),
            expected(Operation::InvokeModelWithResponseStream),
        ]
    );
}

#[tokio::test]
async fn an_unknown_profile_arn_is_resource_not_found() {
    let emulator = start(EmulatorConfig::default()).await;
    let runtime = runtime_client(emulator.addr).await;

    let error = runtime
        .converse()
        .model_id(UNKNOWN_PROFILE_ARN)
        .messages(user("hi"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(error, ConverseError::ResourceNotFoundException(_)),
        "{error:?}"
    );
    let error = runtime
        .converse_stream()
        .model_id(UNKNOWN_PROFILE_ARN)
        .messages(user("hi"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(error, ConverseStreamError::ResourceNotFoundException(_)),
        "{error:?}"
    );
    let error = runtime
        .invoke_model()
        .model_id(UNKNOWN_PROFILE_ARN)
        .body(Blob::new(anthropic_body("", "hi", 10)))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(error, InvokeModelError::ResourceNotFoundException(_)),
        "{error:?}"
    );
    let error = runtime
        .invoke_model_with_response_stream()
        .model_id(UNKNOWN_PROFILE_ARN)
        .body(Blob::new(anthropic_body("", "hi", 10)))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(
            error,
            InvokeModelWithResponseStreamError::ResourceNotFoundException(_)
        ),
        "{error:?}"
    );

    let recorded = invocations_over_http(emulator.addr).await;
    assert_eq!(recorded.len(), 4);
    for invocation in recorded {
        assert_eq!(invocation.model_id, UNKNOWN_PROFILE_ARN);
        assert_eq!(invocation.resolved_model_id, None);
        assert_eq!(invocation.usage, None);
        assert_eq!(
            invocation.error.as_deref(),
            Some("ResourceNotFoundException")
        );
    }
}

#[tokio::test]
async fn a_deleted_profile_stops_resolving() {
    let emulator = start(EmulatorConfig::default()).await;
    let control = control_client(emulator.addr).await;
    let runtime = runtime_client(emulator.addr).await;
    let arn = create_profile(
        &control,
        "short-lived",
        &foundation_model_arn(REGION, MODEL),
    )
    .await;
    runtime
        .converse()
        .model_id(&arn)
        .messages(user("hi"))
        .send()
        .await
        .unwrap();
    control
        .delete_inference_profile()
        .inference_profile_identifier(&arn)
        .send()
        .await
        .unwrap();
    let error = runtime
        .converse()
        .model_id(&arn)
        .messages(user("hi"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(error, ConverseError::ResourceNotFoundException(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn model_ids_and_system_profiles_resolve_without_a_profile() {
    let emulator = start(EmulatorConfig::default()).await;
    let runtime = runtime_client(emulator.addr).await;
    let identifiers = [
        MODEL.to_owned(),
        format!("us.{MODEL}"),
        format!("global.{MODEL}"),
        foundation_model_arn(REGION, MODEL),
        system_profile_arn(REGION, &format!("eu.{MODEL}")),
    ];
    for identifier in &identifiers {
        runtime
            .converse()
            .model_id(identifier)
            .messages(user("hi"))
            .send()
            .await
            .unwrap();
    }
    let recorded: Vec<_> = emulator
        .emulator
        .invocations()
        .into_iter()
        .map(|i| (i.model_id, i.resolved_model_id))
        .collect();
    let expected: Vec<_> = identifiers
        .iter()
        .map(|id| (id.clone(), Some(MODEL.to_owned())))
        .collect();
    assert_eq!(recorded, expected);
}

#[tokio::test]
async fn clients_of_another_region_get_profiles_of_that_region() {
    let emulator = start(EmulatorConfig::default()).await;
    let west_control = control_client_in(emulator.addr, "us-west-2").await;
    let arn = create_profile(
        &west_control,
        "acme",
        &foundation_model_arn("us-west-2", MODEL),
    )
    .await;
    assert!(
        arn.starts_with("arn:aws:bedrock:us-west-2:123456789012:application-inference-profile/"),
        "{arn}"
    );
    let west_runtime = runtime_client_in(emulator.addr, "us-west-2").await;
    west_runtime
        .converse()
        .model_id(&arn)
        .messages(user("hi"))
        .send()
        .await
        .unwrap();
    let recorded = emulator.emulator.invocations();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].region, "us-west-2");
    assert_eq!(recorded[0].resolved_model_id.as_deref(), Some(MODEL));
}
