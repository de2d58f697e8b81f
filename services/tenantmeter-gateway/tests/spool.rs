#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The settlement spool against real files: durability across reopen, crash
//! recovery (torn and corrupt records), replay order and its failure modes,
//! dead letters, concurrent appends.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tenantmeter_gateway::spool::{
    DeliverError, Delivered, RECORD_HEADER_LEN, REJECTED_FILE, ReplayReport, SEGMENT_HEADER_LEN,
    Spool, SpoolError, SpoolOptions,
};
use tenantmeter_proto::v1::{SettleOutcome, SettleRequest, SettleResponse, TokenUsage, UsageEvent};
use tenantmeter_runtime::shutdown::Shutdown;

/// A settlement whose encoded size does not depend on `n` (ids are zero-padded),
/// so record offsets in a segment are computable.
fn settlement(n: u32) -> SettleRequest {
    SettleRequest {
        reservation_id: format!("res-{n:06}"),
        event: Some(UsageEvent {
            event_id: format!("evt-{n:06}"),
            tenant_id: "acme".to_owned(),
            model_id: "anthropic.claude-3-5-sonnet-20240620-v1:0".to_owned(),
            usage: Some(TokenUsage {
                input_tokens: 100,
                output_tokens: 20,
                cache_read_input_tokens: 0,
                cache_write_input_tokens: 0,
            }),
            ..UsageEvent::default()
        }),
    }
}

fn event_id(request: &SettleRequest) -> String {
    request.event.as_ref().unwrap().event_id.clone()
}

fn ids(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| format!("evt-{n:06}")).collect()
}

fn record_len() -> u64 {
    use prost::Message as _;
    RECORD_HEADER_LEN + u64::try_from(settlement(0).encoded_len()).unwrap()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("spool-") && name.ends_with(".log")
        })
        .collect();
    paths.sort();
    paths
}

/// Replays everything, acknowledging each entry, and returns the event ids in
/// delivery order.
async fn drain(spool: &Spool) -> (Vec<String>, ReplayReport) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let report = spool
        .replay(|request| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(event_id(&request));
                Ok::<_, DeliverError>(Delivered::Recorded)
            }
        })
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    (seen, report)
}

async fn append_range(spool: &Spool, range: std::ops::Range<u32>) {
    for n in range {
        spool.append(&settlement(n)).await.unwrap();
    }
}

#[tokio::test]
async fn appended_entries_survive_reopen_and_replay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.pending(), 0);
    append_range(&spool, 0..100).await;
    assert_eq!(spool.pending(), 100);
    assert_eq!(spool.stats().appended, 100);
    drop(spool);

    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.pending(), 100);
    let (seen, report) = drain(&spool).await;
    assert_eq!(seen, ids(0..100));
    assert_eq!(report.delivered, 100);
    assert_eq!(report.remaining, 0);
    assert_eq!(report.interrupted, None);
    assert_eq!(spool.pending(), 0);
    drop(spool);

    // Acknowledged entries are gone for good.
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.pending(), 0);
    let (seen, _) = drain(&spool).await;
    assert!(seen.is_empty());
}

#[tokio::test]
async fn a_torn_last_record_is_truncated_and_the_rest_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    append_range(&spool, 0..10).await;
    drop(spool);

    // A crash in the middle of writing the last record.
    let segment = segments(dir.path()).pop().unwrap();
    let len = fs::metadata(&segment).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 7)
        .unwrap();

    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.pending(), 9);
    assert_eq!(
        fs::metadata(&segment).unwrap().len(),
        SEGMENT_HEADER_LEN + 9 * record_len(),
        "the torn record is cut off"
    );
    // Appends go on after the intact records.
    spool.append(&settlement(10)).await.unwrap();
    let (seen, _) = drain(&spool).await;
    let mut expected = ids(0..9);
    expected.push("evt-000010".to_owned());
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn garbage_after_the_last_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    append_range(&spool, 0..3).await;
    drop(spool);

    // Half of a record header: only the magic made it to disk.
    let segment = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&segment).unwrap();
    bytes.extend_from_slice(b"TMR1\x10");
    fs::write(&segment, &bytes).unwrap();

    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.pending(), 3);
    let (seen, _) = drain(&spool).await;
    assert_eq!(seen, ids(0..3));
}

/// Flips one byte at `offset` of the (only) segment.
fn flip(dir: &Path, offset: u64) {
    let segment = segments(dir).pop().unwrap();
    let mut bytes = fs::read(&segment).unwrap();
    let at = usize::try_from(offset).unwrap();
    bytes[at] ^= 0x5A;
    fs::write(&segment, &bytes).unwrap();
}

#[tokio::test]
async fn a_flipped_byte_costs_exactly_the_record_it_hit() {
    let record = record_len();
    // Where in record 4 the byte flips: the payload, the CRC, the length field,
    // the magic.
    for within in [RECORD_HEADER_LEN + 5, 9, 5, 0] {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        append_range(&spool, 0..10).await;
        drop(spool);

        flip(dir.path(), SEGMENT_HEADER_LEN + 4 * record + within);

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.pending(), 9, "flip at byte {within} of a record");
        let (seen, _) = drain(&spool).await;
        let expected: Vec<String> = ids(0..10)
            .into_iter()
            .filter(|id| id != "evt-000004")
            .collect();
        assert_eq!(seen, expected, "flip at byte {within} of a record");
    }
}

#[tokio::test]
async fn a_flipped_byte_in_the_last_record_drops_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    append_range(&spool, 0..5).await;
    drop(spool);

    flip(dir.path(), SEGMENT_HEADER_LEN + 4 * record_len() + 20);

    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.pending(), 4);
    spool.append(&settlement(5)).await.unwrap();
    let (seen, _) = drain(&spool).await;
    assert_eq!(
        seen,
        [
            "evt-000000",
            "evt-000001",
            "evt-000002",
            "evt-000003",
            "evt-000005"
        ]
    );
}

#[tokio::test]
async fn retryable_stops_the_pass_and_the_next_pass_resumes_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    append_range(&spool, 0..10).await;

    // The meter takes three entries, then goes away.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let report = spool
        .replay(|request| {
            let seen = Arc::clone(&seen);
            async move {
                let mut seen = seen.lock().unwrap();
                if seen.len() == 3 {
                    return Err(DeliverError::Retryable("meter unreachable".to_owned()));
                }
                seen.push(event_id(&request));
                Ok(Delivered::Recorded)
            }
        })
        .await
        .unwrap();
    assert_eq!(report.delivered, 3);
    assert_eq!(report.interrupted.as_deref(), Some("meter unreachable"));
    assert_eq!(report.remaining, 7);
    assert_eq!(spool.pending(), 7);
    assert_eq!(*seen.lock().unwrap(), ids(0..3));
    drop(spool);

    // After a restart the next pass starts exactly at the entry that failed.
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.pending(), 7);
    let (rest, report) = drain(&spool).await;
    assert_eq!(rest, ids(3..10));
    assert_eq!(report.remaining, 0);
}

#[tokio::test]
async fn rejected_entries_go_to_the_dead_letter_file_and_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    append_range(&spool, 0..5).await;

    let report = spool
        .replay(|request| async move {
            if event_id(&request) == "evt-000002" {
                Err(DeliverError::Rejected(
                    "INVALID_ARGUMENT: event time is older than the allowed lateness".to_owned(),
                ))
            } else {
                Ok(Delivered::Recorded)
            }
        })
        .await
        .unwrap();
    assert_eq!(report.delivered, 4);
    assert_eq!(report.rejected, 1);
    assert_eq!(report.remaining, 0);
    assert_eq!(report.interrupted, None);

    let log = fs::read_to_string(dir.path().join(REJECTED_FILE)).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1);
    let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(line["event_id"], "evt-000002");
    assert_eq!(line["tenant_id"], "acme");
    assert_eq!(line["reservation_id"], "res-000002");
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("allowed lateness")
    );
    // The entry itself is kept, replayable by hand.
    let hex = line["settle_request_hex"].as_str().unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let decoded = <SettleRequest as prost::Message>::decode(bytes.as_slice()).unwrap();
    assert_eq!(decoded, settlement(2));

    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.pending(), 0);
    let (seen, _) = drain(&spool).await;
    assert!(seen.is_empty(), "a rejected entry is not delivered again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_all_present_exactly_once() {
    const TASKS: u32 = 32;
    const EACH: u32 = 40;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                spool.append(&settlement(task * 1000 + i)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = u64::from(TASKS * EACH);
    assert_eq!(spool.pending(), total);
    let stats = spool.stats();
    assert_eq!(stats.appended, total);
    assert!(stats.group_commits <= total);
    drop(spool);

    let spool = Spool::open(dir.path()).unwrap();
    let (seen, _) = drain(&spool).await;
    assert_eq!(u64::try_from(seen.len()).unwrap(), total);
    let mut count: HashMap<&str, u32> = HashMap::new();
    for id in &seen {
        *count.entry(id.as_str()).or_default() += 1;
    }
    assert!(count.values().all(|&c| c == 1), "every entry exactly once");
    // Each task's own appends keep their order.
    for task in 0..TASKS {
        let mine: Vec<&String> = seen
            .iter()
            .filter(|id| id[4..].parse::<u32>().unwrap() / 1000 == task)
            .collect();
        let expected = ids(task * 1000..task * 1000 + EACH);
        assert_eq!(mine, expected.iter().collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn an_interrupted_replay_redelivers_at_most_the_unacknowledged_batch() {
    let dir = tempfile::tempdir().unwrap();
    let options = SpoolOptions {
        commit_every: 4,
        ..SpoolOptions::default()
    };
    let spool = Spool::open_with(dir.path(), options.clone()).unwrap();
    append_range(&spool, 0..20).await;

    // The meter acknowledges 10 entries, then the 11th delivery hangs and the
    // pass is dropped (a crash, or shutdown): positions 4 and 8 were committed.
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let pass = spool.replay(|request| {
        let delivered = Arc::clone(&delivered);
        async move {
            if delivered.lock().unwrap().len() == 10 {
                std::future::pending::<()>().await;
            }
            delivered.lock().unwrap().push(event_id(&request));
            Ok::<_, DeliverError>(Delivered::Recorded)
        }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(200), pass)
            .await
            .is_err()
    );
    assert_eq!(*delivered.lock().unwrap(), ids(0..10));
    drop(spool);

    let spool = Spool::open_with(dir.path(), options).unwrap();
    let (again, _) = drain(&spool).await;
    // Entries 8 and 9 were acknowledged but not committed: delivered twice
    // (the meter dedupes them); nothing before them, nothing lost after.
    assert_eq!(again, ids(8..20));
    let redelivered = again
        .iter()
        .filter(|id| delivered.lock().unwrap().contains(id))
        .count();
    assert!(redelivered < 4, "at most commit_every - 1 re-deliveries");
}

#[tokio::test]
async fn segments_rotate_and_replayed_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let options = SpoolOptions {
        segment_bytes: 1024,
        commit_every: 7,
        ..SpoolOptions::default()
    };
    let spool = Spool::open_with(dir.path(), options.clone()).unwrap();
    append_range(&spool, 0..60).await;
    let before = segments(dir.path()).len();
    assert!(
        before > 3,
        "60 entries of ~{} bytes fill several 1 KiB segments",
        record_len()
    );
    drop(spool);

    let spool = Spool::open_with(dir.path(), options.clone()).unwrap();
    assert_eq!(spool.pending(), 60);
    let (seen, _) = drain(&spool).await;
    assert_eq!(seen, ids(0..60));
    assert_eq!(
        segments(dir.path()).len(),
        1,
        "only the open segment is left"
    );

    // More entries after a full replay, across another restart.
    append_range(&spool, 60..70).await;
    drop(spool);
    let spool = Spool::open_with(dir.path(), options).unwrap();
    assert_eq!(spool.pending(), 10);
    let (seen, _) = drain(&spool).await;
    assert_eq!(seen, ids(60..70));
}

#[tokio::test]
async fn a_corrupt_position_file_replays_from_the_oldest_entry() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    append_range(&spool, 0..6).await;
    let spool_ref = &spool;
    let mut n = 0;
    let report = spool_ref
        .replay(|_| {
            n += 1;
            let result = if n <= 3 {
                Ok(Delivered::Recorded)
            } else {
                Err(DeliverError::Retryable("down".to_owned()))
            };
            async move { result }
        })
        .await
        .unwrap();
    assert_eq!(report.delivered, 3);
    drop(spool);

    fs::write(dir.path().join("committed"), b"garbage").unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    // Duplicates rather than losses: the meter dedupes the first three.
    assert_eq!(spool.pending(), 6);
    let (seen, _) = drain(&spool).await;
    assert_eq!(seen, ids(0..6));
}

#[tokio::test]
async fn pending_can_be_watched() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut pending = spool.watch_pending();
    assert_eq!(*pending.borrow_and_update(), 0);
    spool.append(&settlement(1)).await.unwrap();
    assert!(pending.has_changed().unwrap());
    assert_eq!(*pending.borrow_and_update(), 1);
    drain(&spool).await;
    assert_eq!(*pending.borrow_and_update(), 0);
}

#[tokio::test]
async fn a_spool_directory_is_opened_by_one_spool_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    assert!(matches!(
        Spool::open(dir.path()),
        Err(SpoolError::Locked(_))
    ));
    drop(spool);
    Spool::open(dir.path()).unwrap();
}

#[tokio::test]
async fn settle_responses_count_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    append_range(&spool, 0..4).await;
    // The meter's own answer can be handed back as is.
    let report = spool
        .replay(|request| async move {
            let duplicate = event_id(&request).as_str() < "evt-000002";
            Ok::<_, DeliverError>(SettleResponse {
                outcome: if duplicate {
                    SettleOutcome::Duplicate as i32
                } else {
                    SettleOutcome::Settled as i32
                },
                ..SettleResponse::default()
            })
        })
        .await
        .unwrap();
    assert_eq!(report.delivered, 4);
    assert_eq!(report.duplicates, 2);
}

#[tokio::test]
async fn the_replayer_backs_off_while_the_meter_is_down_then_drains() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    append_range(&spool, 0..5).await;

    let attempts = Arc::new(Mutex::new(0_u32));
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let shutdown = Shutdown::new();
    let task = {
        let attempts = Arc::clone(&attempts);
        let delivered = Arc::clone(&delivered);
        spool.spawn_replayer(
            move |request| {
                let attempts = Arc::clone(&attempts);
                let delivered = Arc::clone(&delivered);
                async move {
                    let mut attempts = attempts.lock().unwrap();
                    *attempts += 1;
                    // Down for the first two attempts.
                    if *attempts <= 2 {
                        return Err(DeliverError::Retryable("meter down".to_owned()));
                    }
                    delivered.lock().unwrap().push(event_id(&request));
                    Ok(Delivered::Recorded)
                }
            },
            Duration::from_millis(10),
            &shutdown,
        )
    };
    let mut pending = spool.watch_pending();
    tokio::time::timeout(Duration::from_secs(10), pending.wait_for(|&n| n == 0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*delivered.lock().unwrap(), ids(0..5));

    // New entries are picked up without another call.
    append_range(&spool, 5..8).await;
    tokio::time::timeout(Duration::from_secs(10), pending.wait_for(|&n| n == 0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*delivered.lock().unwrap(), ids(0..8));

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(shutdown.wait_for_tasks(Duration::from_secs(1)).await);
}
