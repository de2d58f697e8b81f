//! The active-tenant index as `ListTenantUsage` pages through it.
//!
//! A listing reads an index shard whole (its members are ordered by last
//! activity, not by id, so a page cannot be read alone), sorted by id. Read
//! anew for every page, a 100,000-tenant listing in pages of 1,000 read
//! each index shard a dozen times. A listing's first page (no page token)
//! reads the shards afresh and keeps what it read; its later pages reuse it
//! when it is recent, so a listing is a snapshot of the index as its first
//! page found it. A tenant that turns active during a listing appears in the
//! next one, as it would had it turned active a moment later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a snapshot may serve later pages of a listing. Longer than a
/// scheduled evaluation pass over a large fleet, short enough that a listing
/// resumed much later reads the index again.
const REUSE_FOR: Duration = Duration::from_secs(30);

/// One index shard as read, ids sorted.
#[derive(Debug)]
struct Snapshot {
    /// Start of the activity window it was read for, ms.
    since_ms: i64,
    read_at: Instant,
    members: Arc<Vec<String>>,
}

/// The last snapshot of each index shard.
#[derive(Debug, Default)]
pub struct IndexSnapshots {
    shards: Mutex<HashMap<u32, Snapshot>>,
}

impl IndexSnapshots {
    /// The snapshot of `shard` read for a window starting within
    /// [`REUSE_FOR`] of `since_ms`, read less than [`REUSE_FOR`] ago.
    pub fn recent(&self, shard: u32, since_ms: i64) -> Option<Arc<Vec<String>>> {
        let shards = self
            .shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let snapshot = shards.get(&shard)?;
        let tolerance = i64::try_from(REUSE_FOR.as_millis()).unwrap_or(i64::MAX);
        let fresh = snapshot.read_at.elapsed() < REUSE_FOR
            && (snapshot.since_ms - since_ms).abs() <= tolerance;
        fresh.then(|| Arc::clone(&snapshot.members))
    }

    /// Keeps what a first page read.
    pub fn keep(&self, shard: u32, since_ms: i64, members: Arc<Vec<String>>) {
        let mut shards = self
            .shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shards.insert(
            shard,
            Snapshot {
                since_ms,
                read_at: Instant::now(),
                members,
            },
        );
    }
}

/// Where a page resumes in a sorted member list: after `after`, or at the
/// start.
pub fn resume_at(members: &[String], after: Option<&str>) -> usize {
    after.map_or(0, |after| {
        members.partition_point(|member| member.as_str() <= after)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_page_resumes_after_the_last_member_listed_even_if_it_left_the_index() {
        let members: Vec<String> = ["a", "c", "e"].map(str::to_owned).to_vec();
        assert_eq!(resume_at(&members, None), 0);
        assert_eq!(resume_at(&members, Some("a")), 1);
        assert_eq!(resume_at(&members, Some("b")), 1);
        assert_eq!(resume_at(&members, Some("e")), 3);
    }

    #[test]
    fn a_snapshot_serves_a_nearby_window_only() {
        let snapshots = IndexSnapshots::default();
        assert!(snapshots.recent(3, 1_000_000).is_none());
        snapshots.keep(3, 1_000_000, Arc::new(vec!["a".to_owned()]));
        assert_eq!(snapshots.recent(3, 1_005_000).unwrap().len(), 1);
        assert!(snapshots.recent(4, 1_000_000).is_none());
        // A listing far in simulated time (a backtest step) reads again.
        assert!(snapshots.recent(3, 1_000_000 + 3_600_000).is_none());
    }
}
