//! `install_signal_handlers`: the first SIGTERM triggers the shutdown; a second one exits the
//! process at once with code 130 (checked in a child process, since it ends the process).
#![cfg(unix)]
// clippy.toml allows these inside #[test] fns only; helpers and fixtures here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use tenantmeter_runtime::shutdown::{EXIT_FORCED, install_signal_handlers};

const CHILD_VAR: &str = "TENANTMETER_TEST_SIGNAL_CHILD";
const CHILD_TEST: &str = "child_sends_itself_two_sigterms";

fn send_sigterm_to_self() {
    let status = Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn first_sigterm_triggers_shutdown() {
    let shutdown = install_signal_handlers().unwrap();
    assert!(!shutdown.is_triggered());
    send_sigterm_to_self();
    tokio::time::timeout(std::time::Duration::from_secs(20), shutdown.triggered())
        .await
        .expect("SIGTERM did not trigger the shutdown");
}

#[test]
fn second_signal_exits_at_once_with_130() {
    let status = Command::new(std::env::current_exe().unwrap())
        .args([CHILD_TEST, "--exact", "--ignored", "--nocapture"])
        .env(CHILD_VAR, "1")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(EXIT_FORCED));
}

#[test]
#[ignore = "run in a child process by second_signal_exits_at_once_with_130"]
fn child_sends_itself_two_sigterms() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let shutdown = install_signal_handlers().unwrap();
        send_sigterm_to_self();
        // Signals coalesce: wait until the first was handled before sending the second.
        shutdown.triggered().await;
        send_sigterm_to_self();
        tokio::time::sleep(std::time::Duration::from_secs(20)).await;
    });
    panic!("the second SIGTERM did not exit the process");
}
