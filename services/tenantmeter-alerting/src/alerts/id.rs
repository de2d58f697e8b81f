//! Alert ids: `<raised_at, Unix ms, 13 digits>-<16 hex digits>`, e.g.
//! `1767225600000-822b33ad87c148a0` (tenant `acme`).
//!
//! - **Deterministic**: the same (instant, subject) always gives the same id,
//!   so an evaluator that flushes a pass twice (it crashed between storing and
//!   recording that it stored) inserts nothing new: insertion is idempotent
//!   per id. A subject has at most one transition per evaluation instant, so
//!   (instant, subject) identifies an alert.
//! - **Ordered**: the fixed-width instant comes first, so byte order (Redis'
//!   ZRANGEBYLEX, Rust's `str` order) is the order alerts were raised; alerts of
//!   the same instant follow their subjects' hashes.
//! - **URL-safe**: digits, `-` and lowercase hex only.
//!
//! The suffix is the first 64 bits of SHA-256 of the subject's key (`!fleet`
//! or the tenant id), not the key itself, so ids have one length and carry no
//! `.` or `_` a notification id might use as a separator. 64 bits, not fewer:
//! two subjects sharing a suffix would share one alert whenever they move at
//! the same instant (and every pass evaluates all tenants at one instant). The
//! chance that any two of a million tenants share a 64-bit suffix is about
//! 3e-8; with 48 bits it would be about 2e-3.

use sha2::{Digest, Sha256};

use super::subject_key;
use crate::budgets::Subject;

/// Largest instant an id can hold (13 digits: the year 2286).
pub const MAX_ID_MS: i64 = 9_999_999_999_999;
/// Length of every alert id.
pub const ALERT_ID_LEN: usize = MS_DIGITS + 1 + HASH_HEX;

const MS_DIGITS: usize = 13;
const HASH_HEX: usize = 16;

/// The id of the alert raised for `subject` at `raised_at_ms` (Unix ms,
/// clamped to `0..=MAX_ID_MS`; the store refuses alerts outside that range,
/// so clamping never merges two stored alerts).
#[must_use]
pub fn alert_id(raised_at_ms: i64, subject: &Subject) -> String {
    format!(
        "{}-{}",
        id_floor_digits(raised_at_ms),
        subject_suffix(subject)
    )
}

/// The part of every id of `subject` after the `-`: what the store's list
/// script compares to filter by subject without reading the alert.
#[must_use]
pub fn subject_suffix(subject: &Subject) -> String {
    let digest = Sha256::digest(subject_key(subject).as_bytes());
    hex::encode(&digest[..HASH_HEX / 2])
}

/// The instant (Unix ms) an id was raised at, or `None` if `id` is not a
/// well-formed alert id.
#[must_use]
pub fn alert_id_ms(id: &str) -> Option<i64> {
    let bytes = id.as_bytes();
    if bytes.len() != ALERT_ID_LEN
        || bytes.get(MS_DIGITS) != Some(&b'-')
        || !bytes[..MS_DIGITS].iter().all(u8::is_ascii_digit)
        || !bytes[MS_DIGITS + 1..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    id[..MS_DIGITS].parse().ok()
}

/// Whether `id` is a well-formed alert id (it may still be unknown).
#[must_use]
pub fn is_alert_id(id: &str) -> bool {
    alert_id_ms(id).is_some()
}

/// A string below every id raised at `ms` and above every id raised before:
/// the digits and the `-`, which sorts below every hex digit. A lex range
/// bound for time filters and retention.
pub(crate) fn id_floor(ms: i64) -> String {
    format!("{}-", id_floor_digits(ms))
}

fn id_floor_digits(ms: i64) -> String {
    format!("{:013}", ms.clamp(0, MAX_ID_MS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenantmeter_domain::ids::TenantId;

    #[test]
    fn ids_parse_back_and_floors_bracket_them() {
        let acme = Subject::Tenant(TenantId::parse("acme").unwrap());
        let id = alert_id(1_767_225_600_000, &acme);
        // Pinned: ids are stored, and a re-flush after an upgrade must find
        // the same id, so the format may never drift.
        assert_eq!(id, "1767225600000-822b33ad87c148a0");
        assert_eq!(id.len(), ALERT_ID_LEN);
        assert!(id.starts_with("1767225600000-"));
        assert_eq!(alert_id_ms(&id), Some(1_767_225_600_000));
        assert_eq!(id, alert_id(1_767_225_600_000, &acme));
        assert_ne!(id, alert_id(1_767_225_600_000, &Subject::Fleet));
        assert!(id_floor(1_767_225_600_000) < id);
        assert!(id < id_floor(1_767_225_600_001));
        assert_eq!(alert_id_ms(&alert_id(-5, &acme)), Some(0));
        for bad in [
            "",
            "1767225600000",
            "1767225600000-3F1C9A0B7D2E4C51",
            "176722560000x-3f1c9a0b7d2e4c51",
            "1767225600000_3f1c9a0b7d2e4c51",
            "1767225600000-3f1c9a0b7d2e4c5",
            "1767225600000-3f1c9a0b7d2e4c5g",
        ] {
            assert_eq!(alert_id_ms(bad), None, "{bad}");
        }
    }
}
