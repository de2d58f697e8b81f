//! `[[fault:hang]]`: the emulator holds the call so a client's timeout can be tested, up to the
//! hang limit, and lets go at shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failed unwrap is a failed test

mod support;

use std::time::Duration;

use aws_sdk_bedrockruntime::error::SdkError;
use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use support::{MODEL, impatient_runtime_client, runtime_client, start, user};
use tenantmeter_emulator::{EmulatorConfig, HANG_MARKER, Operation};

/// Long enough that no test here can pass by reaching it.
const NEVER: Duration = Duration::from_secs(600);

#[tokio::test]
async fn a_client_timeout_fires_on_a_hanging_call() {
    let emulator = start(EmulatorConfig {
        hang_limit: NEVER,
        ..EmulatorConfig::default()
    })
    .await;
    let client = impatient_runtime_client(emulator.addr, Duration::from_millis(200)).await;
    let error = client
        .converse()
        .model_id(MODEL)
        .messages(user(&format!("wait {HANG_MARKER}")))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(error, SdkError::TimeoutError(_)), "{error:?}");

    let recorded = emulator.emulator.invocations();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].operation, Operation::Converse);
    assert_eq!(recorded[0].error.as_deref(), Some("Hang"));
    assert_eq!(recorded[0].usage, None);
}

#[tokio::test]
async fn the_hang_limit_answers_model_timeout() {
    let emulator = start(EmulatorConfig {
        hang_limit: Duration::from_millis(50),
        ..EmulatorConfig::default()
    })
    .await;
    let client = runtime_client(emulator.addr).await;
    let error = client
        .converse()
        .model_id(MODEL)
        .messages(user(HANG_MARKER))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(error, ConverseError::ModelTimeoutException(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn shutdown_ends_a_hang_with_service_unavailable() {
    let emulator = start(EmulatorConfig {
        hang_limit: NEVER,
        ..EmulatorConfig::default()
    })
    .await;
    let client = runtime_client(emulator.addr).await;
    let call = tokio::spawn(async move {
        client
            .converse()
            .model_id(MODEL)
            .messages(user(HANG_MARKER))
            .send()
            .await
    });
    // The call is recorded when its wait begins.
    tenantmeter_testkit::wait_until(Duration::from_secs(10), || async {
        !emulator.emulator.invocations().is_empty()
    })
    .await
    .unwrap();

    emulator.shut_down().await.unwrap();
    let error = call.await.unwrap().unwrap_err().into_service_error();
    assert!(
        matches!(error, ConverseError::ServiceUnavailableException(_)),
        "{error:?}"
    );
}
