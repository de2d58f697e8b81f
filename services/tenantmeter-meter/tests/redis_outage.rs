//! The meter through gRPC when its Redis restarts, goes down, crashes or
//! freezes (issue 3, "When Redis is slow or down" and "Redis restart
//! mid-run"): figures stay exact, Reserve answers fast with the configured
//! fail mode, writes report UNAVAILABLE rather than pretend, retries are safe,
//! and the meter reconnects on its own.
//!
//! Every test runs its own stack on one redis-server with AOF on
//! (`appendfsync everysec`), and waits by polling, never by a fixed sleep,
//! except where Redis's own fsync clock is what is waited for.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failed unwrap is a failed test
#![allow(clippy::print_stderr)] // timings are printed for `--nocapture` runs

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{
    Backend, MICRO, SONNET, Stack, Totals, event, expected_totals, now_ms, record, timed, totals,
};
use tenantmeter_meter::MeterConfig;
use tenantmeter_meter::config::FailMode;
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_testkit::poll_until_ok;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

type Meter = MeterServiceClient<Channel>;

const TENANTS: [&str; 2] = ["acme", "globex"];

/// Reserve must answer well within this when Redis is down (its own deadline
/// is 50 ms; the rest is margin for a debug build on a loaded machine).
const RESERVE_BOUND: Duration = Duration::from_secs(1);

/// How long the meter gets to reconnect once Redis is back.
const RECONNECT: Duration = Duration::from_secs(20);

/// `n` events per tenant, `prefix`-named, at `at_ms` give or take a few
/// seconds, alternating models, each with different token counts.
fn batch(prefix: &str, at_ms: i64, n: i64) -> Vec<pb::UsageEvent> {
    TENANTS
        .iter()
        .flat_map(|tenant| {
            (0..n).map(move |i| {
                let model = if i % 2 == 0 { SONNET } else { MICRO };
                event(
                    &format!("{prefix}-{tenant}-{i}"),
                    tenant,
                    model,
                    at_ms - i * 37,
                    1_000 + i * 7,
                    100 + i * 3,
                )
            })
        })
        .collect()
}

fn request(events: &[pb::UsageEvent]) -> pb::RecordUsageRequest {
    pb::RecordUsageRequest {
        events: events.to_vec(),
    }
}

/// Every tenant's figures, from a meter that must answer.
async fn all_totals(meter: &mut Meter) -> BTreeMap<&'static str, Totals> {
    let mut all = BTreeMap::new();
    for tenant in TENANTS {
        let (figures, _) = timed("GetUsage", totals(meter, tenant)).await;
        all.insert(tenant, figures.unwrap());
    }
    all
}

/// What `events` add up to for each tenant: requests and tokens summed here,
/// the provider cost as pricing quotes those totals (the meter must match it
/// exactly, whatever the order and batching of the events).
async fn expected(stack: &Stack, events: &[&[pb::UsageEvent]]) -> BTreeMap<&'static str, Totals> {
    let mut pricing = stack.pricing().await;
    let mut all = BTreeMap::new();
    for tenant in TENANTS {
        let totals = expected_totals(
            &mut pricing,
            tenant,
            events.iter().flat_map(|batch| batch.iter()),
        )
        .await;
        all.insert(tenant, totals);
    }
    all
}

fn reserve_request() -> pb::ReserveRequest {
    pb::ReserveRequest {
        tenant_id: "acme".into(),
        model_id: MICRO.into(),
        estimated_input_tokens: 100,
        max_output_tokens: 50,
        ..Default::default()
    }
}

/// One Reserve, timed; panics unless the meter answers OK.
async fn reserve(meter: &mut Meter) -> (pb::reserve_response::Outcome, Duration) {
    let (reply, took) = timed("Reserve", meter.reserve(reserve_request())).await;
    (reply.unwrap().into_inner().outcome.unwrap(), took)
}

/// Polls Reserve until it admits with a real reservation (Redis checked and
/// reserved), and returns that admission.
async fn until_really_admitted(meter: &Meter) -> pb::Admission {
    poll_until_ok(RECONNECT, || {
        let mut meter = meter.clone();
        async move {
            match meter
                .reserve(reserve_request())
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .outcome
            {
                Some(pb::reserve_response::Outcome::Admission(a))
                    if !a.fail_open && !a.reservation_id.is_empty() =>
                {
                    Ok(a)
                }
                other => Err(format!("not a checked admission yet: {other:?}")),
            }
        }
    })
    .await
    .unwrap()
}

/// Polls GetUsage of every tenant until the meter answers (its first
/// successful Redis calls after an outage).
async fn until_answering(meter: &Meter) -> BTreeMap<&'static str, Totals> {
    poll_until_ok(RECONNECT, || {
        let mut meter = meter.clone();
        async move {
            let mut all = BTreeMap::new();
            for tenant in TENANTS {
                all.insert(
                    tenant,
                    totals(&mut meter, tenant)
                        .await
                        .map_err(|e| format!("{tenant}: {e}"))?,
                );
            }
            Ok::<_, String>(all)
        }
    })
    .await
    .unwrap()
}

fn assert_unavailable<T: std::fmt::Debug>(
    what: &str,
    reply: Result<T, tonic::Status>,
    took: Duration,
    bound: Duration,
) {
    let status = reply.expect_err(&format!("{what} must fail while Redis is down"));
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    assert!(
        took < bound,
        "{what} took {took:?} to answer UNAVAILABLE (bound {bound:?})"
    );
    eprintln!("{what}: UNAVAILABLE in {took:?}");
}

#[tokio::test]
async fn a_restart_mid_run_keeps_exact_figures() {
    let mut stack = Stack::start(Backend::single().await).await;
    let mut meter = stack.meter().await;
    let first = batch("first", now_ms() - 5_000, 40);
    let reply = record(&mut meter, &first).await;
    assert_eq!((reply.accepted, reply.duplicates), (80, 0));
    let before = all_totals(&mut meter).await;
    assert_eq!(before, expected(&stack, &[&first]).await);

    // A graceful restart (SHUTDOWN flushes the AOF): the data survives and
    // the meter's connection drops under it.
    let restart = Instant::now();
    stack.meter_redis().restart().await.unwrap();
    let restarted = restart.elapsed();
    let after = until_answering(&meter).await;
    eprintln!(
        "redis restarted in {restarted:?}; the meter answered again {:?} after the restart began",
        restart.elapsed()
    );
    assert_eq!(after, before, "the restart lost or changed figures");

    let second = batch("second", now_ms(), 40);
    let reply = record(&mut meter, &second).await;
    assert_eq!((reply.accepted, reply.duplicates), (80, 0), "{reply:?}");
    assert!(
        reply
            .results
            .iter()
            .all(|r| r.status == i32::from(pb::UsageEventStatus::Accepted))
    );
    let replay = record(&mut meter, &first).await;
    assert_eq!(
        (replay.accepted, replay.duplicates),
        (0, 80),
        "the dedupe marks of the first batch must survive the restart"
    );
    assert_eq!(
        all_totals(&mut meter).await,
        expected(&stack, &[&first, &second]).await
    );
    stack.stop().await;
}

/// Waits until the meter's Redis health reports `want`.
async fn redis_health(stack: &Stack, want: ServingStatus) {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", stack.meter_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    poll_until_ok(Duration::from_secs(10), || {
        let mut health = HealthClient::new(channel.clone());
        async move {
            let status = health
                .check(HealthCheckRequest {
                    service: tenantmeter_meter::REDIS_HEALTH.into(),
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .status;
            if status == want as i32 {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn redis_down_reserve_fails_open_fast_and_writes_report_unavailable() {
    // The defaults: fail open, reserve_timeout 50 ms, redis_timeout 2 s.
    let mut stack = Stack::start(Backend::single().await).await;
    let mut meter = stack.meter().await;
    let held = match reserve(&mut meter).await.0 {
        pb::reserve_response::Outcome::Admission(a) => a,
        other @ pb::reserve_response::Outcome::Denial(_) => panic!("{other:?}"),
    };
    assert!(!held.fail_open && !held.reservation_id.is_empty());
    let events = batch("down", now_ms(), 5);
    let settle = pb::SettleRequest {
        reservation_id: held.reservation_id.clone(),
        event: Some(event("settled-1", "acme", MICRO, now_ms(), 90, 40)),
    };

    stack.meter_redis().shutdown().await.unwrap();

    // Several calls: the first may meet the dropped connection, later ones
    // the meter's reconnect attempts; none may wait for them.
    for _ in 0..5 {
        let (outcome, took) = reserve(&mut meter).await;
        match outcome {
            pb::reserve_response::Outcome::Admission(a) => {
                assert!(a.fail_open, "{a:?}");
                assert!(a.reservation_id.is_empty(), "{a:?}");
                assert_eq!(a.model_id, MICRO);
            }
            other @ pb::reserve_response::Outcome::Denial(_) => {
                panic!("fail-open must admit: {other:?}")
            }
        }
        assert!(took < RESERVE_BOUND, "Reserve took {took:?}");
        eprintln!("Reserve failed open in {took:?}");
    }
    // Health says why: the meter serves, its Redis does not answer.
    redis_health(&stack, ServingStatus::NotServing).await;
    let writes = Duration::from_secs(5); // redis_timeout (2 s) and margin
    let (reply, took) = timed("RecordUsage", meter.record_usage(request(&events))).await;
    assert_unavailable("RecordUsage", reply, took, writes);
    let (reply, took) = timed("Settle", meter.settle(settle.clone())).await;
    assert_unavailable("Settle", reply, took, writes);
    let (reply, took) = timed("GetUsage", totals(&mut meter, "acme")).await;
    assert_unavailable("GetUsage", reply, took, writes);
    let (reply, took) = timed(
        "Release",
        meter.release(pb::ReleaseRequest {
            tenant_id: "acme".into(),
            reservation_id: held.reservation_id.clone(),
        }),
    )
    .await;
    assert_unavailable("Release", reply, took, writes);

    let down = Instant::now();
    stack.meter_redis().start_again().await.unwrap();
    redis_health(&stack, ServingStatus::Serving).await;
    let admitted = until_really_admitted(&meter).await;
    eprintln!(
        "the meter admitted with a real reservation {:?} after redis was started again",
        down.elapsed()
    );
    assert_ne!(admitted.reservation_id, held.reservation_id);

    // UNAVAILABLE meant "not done": the same calls, retried, now take effect
    // once, and the held reservation (kept in the AOF) is settled.
    let reply = record(&mut meter, &events).await;
    assert_eq!((reply.accepted, reply.duplicates), (10, 0));
    let settled = meter.settle(settle.clone()).await.unwrap().into_inner();
    assert_eq!(settled.outcome, i32::from(pb::SettleOutcome::Settled));
    let again = meter.settle(settle.clone()).await.unwrap().into_inner();
    assert_eq!(again.outcome, i32::from(pb::SettleOutcome::Duplicate));
    let settled_event = settle.event.unwrap();
    assert_eq!(
        all_totals(&mut meter).await,
        expected(&stack, &[&events, std::slice::from_ref(&settled_event)]).await
    );
    stack.stop().await;
}

#[tokio::test]
async fn redis_down_reserve_fails_closed_when_so_configured() {
    let config = MeterConfig {
        reserve_fail_mode: FailMode::Closed,
        redis_timeout: Duration::from_millis(500),
        ..MeterConfig::default()
    };
    let mut stack = Stack::start_with(Backend::single().await, config).await;
    let mut meter = stack.meter().await;
    // With Redis up, fail-closed changes nothing.
    match reserve(&mut meter).await.0 {
        pb::reserve_response::Outcome::Admission(a) => {
            assert!(!a.fail_open && !a.reservation_id.is_empty(), "{a:?}");
        }
        other @ pb::reserve_response::Outcome::Denial(_) => panic!("{other:?}"),
    }

    stack.meter_redis().shutdown().await.unwrap();

    for _ in 0..5 {
        let (outcome, took) = reserve(&mut meter).await;
        match outcome {
            pb::reserve_response::Outcome::Denial(d) => {
                assert_eq!(
                    d.reason,
                    i32::from(pb::DenyReason::MeterUnavailable),
                    "{d:?}"
                );
                let retry = d.retry_after.unwrap();
                assert!(retry.seconds > 0 || retry.nanos > 0, "{d:?}");
                assert!(!d.by_policy);
            }
            other @ pb::reserve_response::Outcome::Admission(_) => {
                panic!("fail-closed must deny: {other:?}")
            }
        }
        assert!(took < RESERVE_BOUND, "Reserve took {took:?}");
        eprintln!("Reserve failed closed in {took:?}");
    }
    let writes = Duration::from_secs(3); // redis_timeout (500 ms) and margin
    let events = batch("closed", now_ms(), 3);
    let (reply, took) = timed("RecordUsage", meter.record_usage(request(&events))).await;
    assert_unavailable("RecordUsage", reply, took, writes);
    let (reply, took) = timed(
        "Settle",
        meter.settle(pb::SettleRequest {
            reservation_id: String::new(),
            event: Some(events[0].clone()),
        }),
    )
    .await;
    assert_unavailable("Settle", reply, took, writes);
    let (reply, took) = timed("GetUsage", totals(&mut meter, "acme")).await;
    assert_unavailable("GetUsage", reply, took, writes);

    let down = Instant::now();
    stack.meter_redis().start_again().await.unwrap();
    until_really_admitted(&meter).await;
    eprintln!(
        "the meter admitted with a real reservation {:?} after redis was started again",
        down.elapsed()
    );
    let reply = record(&mut meter, &events).await;
    assert_eq!((reply.accepted, reply.duplicates), (6, 0));
    stack.stop().await;
}

#[tokio::test]
async fn a_killed_redis_keeps_what_was_acknowledged_before_the_fsync_and_counts_nothing_twice() {
    let mut stack = Stack::start(Backend::single().await).await;
    let mut meter = stack.meter().await;
    let durable = batch("durable", now_ms(), 30);
    let reply = record(&mut meter, &durable).await;
    let acknowledged = Instant::now();
    assert_eq!((reply.accepted, reply.duplicates), (60, 0));

    // Not a stand-in for polling the meter: this waits out Redis's own AOF
    // clock. With `appendfsync everysec` a write reaches the file within a
    // second, or within two when an fsync is slow and Redis postpones the
    // write; only after that is an acknowledged event safe from SIGKILL.
    tokio::time::sleep_until(acknowledged + Duration::from_millis(2_000)).await;

    // Acknowledged just before the crash: may be lost, must not be doubled.
    let in_doubt = batch("in-doubt", now_ms(), 10);
    let reply = record(&mut meter, &in_doubt).await;
    assert_eq!((reply.accepted, reply.duplicates), (20, 0));
    eprintln!(
        "killing redis {:?} after the durable batch was acknowledged",
        acknowledged.elapsed()
    );

    stack.meter_redis().kill().await.unwrap();
    // While it is down, Reserve still answers at once (fail open).
    let (outcome, took) = reserve(&mut meter).await;
    assert!(
        matches!(&outcome, pb::reserve_response::Outcome::Admission(a) if a.fail_open),
        "{outcome:?}"
    );
    assert!(took < RESERVE_BOUND, "Reserve took {took:?}");
    let killed = Instant::now();
    stack.meter_redis().start_again().await.unwrap();
    let after = until_answering(&meter).await;
    eprintln!(
        "the meter answered {:?} after redis was started again",
        killed.elapsed()
    );

    // Each tenant's part of a batch is one atomic script call: after the
    // crash it is there entirely or not at all, never in part.
    let only_durable = expected(&stack, &[&durable]).await;
    let with_in_doubt = expected(&stack, &[&durable, &in_doubt]).await;
    for tenant in TENANTS {
        assert!(
            after[tenant] == only_durable[tenant] || after[tenant] == with_in_doubt[tenant],
            "{tenant}: after the crash {:?}; durable alone {:?}; with the last batch {:?}",
            after[tenant],
            only_durable[tenant],
            with_in_doubt[tenant]
        );
    }
    let survived = TENANTS
        .iter()
        .filter(|t| after[*t] == with_in_doubt[*t])
        .count();
    eprintln!("tenants whose last (in-doubt) batch survived the kill: {survived} of 2");

    let replay = record(&mut meter, &durable).await;
    assert_eq!(
        (replay.accepted, replay.duplicates),
        (0, 60),
        "events acknowledged 2 s before the kill must still be known"
    );
    // The producer does not know what the crash kept, so it replays it all.
    let replay = record(&mut meter, &in_doubt).await;
    assert_eq!(replay.accepted + replay.duplicates, 20);
    assert_eq!(all_totals(&mut meter).await, with_in_doubt);
    let everything: Vec<pb::UsageEvent> = durable.iter().chain(&in_doubt).cloned().collect();
    let replay = record(&mut meter, &everything).await;
    assert_eq!((replay.accepted, replay.duplicates), (0, 80));
    assert_eq!(all_totals(&mut meter).await, with_in_doubt);
    stack.stop().await;
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// Against a frozen Redis: Reserve fails open at once, and RecordUsage and
/// Settle answer UNAVAILABLE within `redis_timeout` (plus margin), round
/// after round, whatever the meter's connection is doing meanwhile.
async fn frozen_rounds(
    meter: &mut Meter,
    events: &[pb::UsageEvent],
    rounds: usize,
    bound: Duration,
) {
    for round in 0..rounds {
        let (outcome, took) = reserve(meter).await;
        assert!(
            matches!(&outcome, pb::reserve_response::Outcome::Admission(a) if a.fail_open),
            "{outcome:?}"
        );
        assert!(took < RESERVE_BOUND, "Reserve took {took:?}");
        eprintln!("round {round}: Reserve failed open against a frozen redis in {took:?}");
        let (reply, took) = timed("RecordUsage", meter.record_usage(request(events))).await;
        assert_unavailable(
            &format!("round {round}: RecordUsage (frozen)"),
            reply,
            took,
            bound,
        );
        let settle = pb::SettleRequest {
            reservation_id: String::new(),
            event: Some(events[0].clone()),
        };
        let (reply, took) = timed("Settle", meter.settle(settle)).await;
        assert_unavailable(
            &format!("round {round}: Settle (frozen)"),
            reply,
            took,
            bound,
        );
    }
}

#[tokio::test]
async fn a_frozen_redis_gets_no_call_past_its_deadline_and_nothing_counts_twice() {
    let redis_timeout = Duration::from_secs(1);
    let config = MeterConfig {
        redis_timeout,
        ..MeterConfig::default()
    };
    // The deadline plus margin for a loaded machine; a write that waits for
    // the connection's own timeouts instead (connect, retry, connect, reply)
    // takes twice the deadline or more.
    let bound = redis_timeout + Duration::from_millis(900);
    let mut stack = Stack::start_with(Backend::single().await, config).await;
    let mut meter = stack.meter().await;
    // Counting once first loads the scripts: a call sent to the frozen server
    // is then run when it thaws, after the meter has answered UNAVAILABLE.
    let warm = batch("warm", now_ms(), 2);
    record(&mut meter, &warm).await;

    // SIGSTOP: the port still accepts connections and requests, but nothing
    // answers, as with a Redis stuck in a long command or a swap storm.
    let pid = stack.meter_redis().pid().unwrap();
    let frozen = batch("frozen", now_ms(), 5);
    signal(pid, "STOP");
    frozen_rounds(&mut meter, &frozen, 2, bound).await;
    let (reply, took) = timed("GetUsage", totals(&mut meter, "acme")).await;
    assert_unavailable("GetUsage (frozen)", reply, took, bound);

    // Thawed, Redis runs what it was sent: what was reported UNAVAILABLE may
    // now be counted. Retries must not count it twice.
    signal(pid, "CONT");
    until_really_admitted(&meter).await;
    let reply = record(&mut meter, &frozen).await;
    assert_eq!(reply.accepted + reply.duplicates, 10);

    // Frozen again, this time while the meter has no connection and must
    // make a new one (it is accepted, then never answered).
    stack.meter_redis().shutdown().await.unwrap();
    let refrozen = batch("refrozen", now_ms(), 5);
    let (reply, took) = timed("RecordUsage", meter.record_usage(request(&refrozen))).await;
    assert_unavailable("RecordUsage (down)", reply, took, bound);
    stack.meter_redis().start_again().await.unwrap();
    let pid = stack.meter_redis().pid().unwrap();
    signal(pid, "STOP");
    frozen_rounds(&mut meter, &refrozen, 2, bound).await;
    signal(pid, "CONT");
    until_really_admitted(&meter).await;
    let reply = record(&mut meter, &refrozen).await;
    assert_eq!(reply.accepted + reply.duplicates, 10);

    assert_eq!(
        all_totals(&mut meter).await,
        expected(&stack, &[&warm, &frozen, &refrozen]).await
    );
    stack.stop().await;
}
