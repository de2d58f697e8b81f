//! Silences: a subject's transitions are still evaluated, enforced, stored
//! and streamed, but not sent to sinks until the silence ends.
//!
//! | key | type | content |
//! |---|---|---|
//! | `{al}:silences` | hash | `!fleet` or tenant id -> `{"until_ms","by","comment"}` JSON |
//!
//! A subject has at most one silence (setting one replaces it), so the hash
//! is bounded by the number of subjects ever silenced. An expired silence is
//! ignored on read and replaced or lifted by the next Silence call; reads never
//! write, so there is no expiry sweep to coordinate between replicas.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    AlertError, AlertStore, MAX_BY_LEN, MAX_COMMENT_LEN, bounded, check_text, subject_from_key,
    subject_key,
};
use crate::budgets::Subject;

/// Hash of every silence: subject -> JSON.
pub const SILENCES_KEY: &str = "{al}:silences";
/// Longest silence the contract allows.
pub const MAX_SILENCE: Duration = Duration::from_secs(30 * 24 * 3_600);

/// Until when a SilenceRequest's `duration` silences, from `now_ms`:
/// `Ok(None)` for a zero duration (lift the silence), `Ok(Some(until_ms))`
/// otherwise. A duration with a fraction of a millisecond is rounded up, so a
/// positive duration never lifts.
///
/// # Errors
/// [`AlertError::Invalid`] naming `duration`: unset (0s is how to lift),
/// negative, not normalized, or longer than [`MAX_SILENCE`].
pub fn silence_until(
    duration: Option<&prost_types::Duration>,
    now_ms: i64,
) -> Result<Option<i64>, AlertError> {
    let duration = duration
        .ok_or_else(|| AlertError::invalid("duration", "is required; 0s lifts the silence"))?;
    if duration.seconds < 0 || duration.nanos < 0 {
        return Err(AlertError::invalid(
            "duration",
            format!("must not be negative, got {duration}"),
        ));
    }
    if duration.nanos >= 1_000_000_000 {
        return Err(AlertError::invalid(
            "duration",
            format!("nanos must be below 1e9, got {}", duration.nanos),
        ));
    }
    let max_secs = i64::try_from(MAX_SILENCE.as_secs()).unwrap_or(i64::MAX);
    if duration.seconds > max_secs || (duration.seconds == max_secs && duration.nanos > 0) {
        return Err(AlertError::invalid(
            "duration",
            format!("must be at most 30 days, got {duration}"),
        ));
    }
    if duration.seconds == 0 && duration.nanos == 0 {
        return Ok(None);
    }
    // Both parts are bounded above (30 days, 1e9 ns), so nothing overflows.
    let ms = duration.seconds * 1_000
        + i64::from(duration.nanos).div_euclid(1_000_000)
        + i64::from(duration.nanos % 1_000_000 != 0);
    Ok(Some(now_ms.saturating_add(ms)))
}

/// The JSON of one silence. Its own type so the stored format changes only
/// on purpose.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSilence {
    until_ms: i64,
    by: String,
    comment: String,
}

impl AlertStore {
    /// Silences `subject` until `until_ms` (Unix ms; see [`silence_until`]),
    /// replacing any silence it has, or lifts its silence with `None`.
    ///
    /// # Errors
    /// [`AlertError::Invalid`] naming `silenced_by` or `comment` (too long);
    /// Redis.
    pub async fn set_silence(
        &self,
        subject: &Subject,
        until_ms: Option<i64>,
        by: &str,
        comment: &str,
    ) -> Result<(), AlertError> {
        let key = subject_key(subject);
        let mut conn = self.conn.clone();
        let Some(until_ms) = until_ms else {
            let _removed: i64 = bounded(
                self.timeout,
                redis::cmd("HDEL")
                    .arg(SILENCES_KEY)
                    .arg(key)
                    .query_async(&mut conn),
            )
            .await?;
            return Ok(());
        };
        check_text("silenced_by", by, MAX_BY_LEN)?;
        check_text("comment", comment, MAX_COMMENT_LEN)?;
        let json = serde_json::to_string(&StoredSilence {
            until_ms,
            by: by.to_owned(),
            comment: comment.to_owned(),
        })
        .map_err(|e| AlertError::Corrupt(format!("encoding a silence: {e}")))?;
        let _added: i64 = bounded(
            self.timeout,
            redis::cmd("HSET")
                .arg(SILENCES_KEY)
                .arg(key)
                .arg(json)
                .query_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// Every subject silenced at `now_ms`, with the end of its silence
    /// (expired silences left out). The evaluator reads this once per pass.
    ///
    /// # Errors
    /// Redis, or a corrupt record.
    pub async fn silences(&self, now_ms: i64) -> Result<HashMap<Subject, i64>, AlertError> {
        let mut conn = self.conn.clone();
        let rows: Vec<String> = bounded(
            self.timeout,
            redis::cmd("HGETALL")
                .arg(SILENCES_KEY)
                .query_async(&mut conn),
        )
        .await?;
        let mut silences = HashMap::new();
        for pair in rows.chunks(2) {
            let [key, json] = pair else {
                return Err(AlertError::Corrupt(
                    "HGETALL replied an odd number of strings".to_owned(),
                ));
            };
            let subject = subject_from_key(key)
                .ok_or_else(|| AlertError::Corrupt(format!("silence of {key:?}: not a subject")))?;
            let until_ms = decode(key, json)?.until_ms;
            if until_ms > now_ms {
                silences.insert(subject, until_ms);
            }
        }
        Ok(silences)
    }

    /// Until when `subject` is silenced at `now_ms`; `None` when it is not.
    ///
    /// # Errors
    /// Redis, or a corrupt record.
    pub async fn silenced_until(
        &self,
        subject: &Subject,
        now_ms: i64,
    ) -> Result<Option<i64>, AlertError> {
        let key = subject_key(subject);
        let mut conn = self.conn.clone();
        let json: Option<String> = bounded(
            self.timeout,
            redis::cmd("HGET")
                .arg(SILENCES_KEY)
                .arg(key)
                .query_async(&mut conn),
        )
        .await?;
        Ok(json
            .map(|json| decode(key, &json))
            .transpose()?
            .map(|silence| silence.until_ms)
            .filter(|until_ms| *until_ms > now_ms))
    }
}

fn decode(key: &str, json: &str) -> Result<StoredSilence, AlertError> {
    serde_json::from_str(json).map_err(|e| AlertError::Corrupt(format!("silence of {key:?}: {e}")))
}
