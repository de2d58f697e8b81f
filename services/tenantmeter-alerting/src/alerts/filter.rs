//! Which alerts a ListAlerts page or a WatchAlerts stream shows.

use tenantmeter_domain::levels::Level;
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::clock::from_timestamp;

use super::{AlertError, subject_at};
use crate::budgets::{Subject, timestamp_to_ms};

/// Filters of ListAlerts and WatchAlerts. The default shows everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertFilter {
    /// Only alerts about these subjects; empty means every tenant and the fleet.
    pub subjects: Vec<Subject>,
    /// Only alerts whose from or to level is at least this; `None` means all.
    pub min_level: Option<Level>,
    /// Only alerts raised at or after this instant (Unix ms).
    pub start_ms: Option<i64>,
    /// Only alerts raised before this instant (Unix ms).
    pub end_ms: Option<i64>,
    /// Only alerts not acknowledged yet.
    pub unacknowledged_only: bool,
}

impl AlertFilter {
    /// The filters of a ListAlertsRequest (paging is left to the store);
    /// errors name `subjects[i]`, `min_level`, `start_time` or `end_time`.
    ///
    /// # Errors
    /// A malformed subject, an unknown level, a malformed timestamp.
    pub fn from_list_request(request: &pb::ListAlertsRequest) -> Result<Self, AlertError> {
        Ok(Self {
            subjects: subjects_at(&request.subjects)?,
            min_level: min_level_from_proto(request.min_level, "min_level")?,
            start_ms: time_at(request.start_time.as_ref(), "start_time")?,
            end_ms: time_at(request.end_time.as_ref(), "end_time")?,
            unacknowledged_only: request.unacknowledged_only,
        })
    }

    /// The filters of a WatchAlertsRequest (`after_alert_id` is the
    /// watcher's); errors name `subjects[i]` or `min_level`.
    ///
    /// # Errors
    /// A malformed subject or an unknown level.
    pub fn from_watch_request(request: &pb::WatchAlertsRequest) -> Result<Self, AlertError> {
        Ok(Self {
            subjects: subjects_at(&request.subjects)?,
            min_level: min_level_from_proto(request.min_level, "min_level")?,
            ..Self::default()
        })
    }

    /// Whether `alert` passes every filter.
    #[must_use]
    pub fn matches(&self, alert: &pb::Alert) -> bool {
        if !self.subjects.is_empty() {
            match subject_at(alert.subject.as_ref(), "subject") {
                Ok(subject) if self.subjects.contains(&subject) => {}
                Ok(_) | Err(_) => return false,
            }
        }
        if alert_level_rank(alert) < self.min_level_rank() {
            return false;
        }
        let raised_at_ms = alert.raised_at.as_ref().map_or(0, timestamp_to_ms);
        if self.start_ms.is_some_and(|start| raised_at_ms < start)
            || self.end_ms.is_some_and(|end| raised_at_ms >= end)
        {
            return false;
        }
        !(self.unacknowledged_only && alert.acknowledged)
    }

    /// The contract's number of `min_level`, 0 (unspecified) for none: every
    /// alert's rank is at least 0, so 0 lets everything through.
    pub(crate) fn min_level_rank(&self) -> i32 {
        self.min_level.map_or(0, level_rank)
    }
}

/// The contract's number of a level; the contract numbers levels in their
/// order (green 1 .. red 4), so comparing numbers compares levels.
#[must_use]
pub(crate) fn level_rank(level: Level) -> i32 {
    let level = match level {
        Level::Green => pb::Level::Green,
        Level::Yellow => pb::Level::Yellow,
        Level::Orange => pb::Level::Orange,
        Level::Red => pb::Level::Red,
    };
    i32::from(level)
}

/// The higher of an alert's from and to levels: the level filter's "from or
/// to level is at least min_level" is "this is at least min_level".
pub(crate) fn alert_level_rank(alert: &pb::Alert) -> i32 {
    alert.from_level.max(alert.to_level)
}

/// A level of the contract at `field`; unspecified is `None`.
pub(crate) fn min_level_from_proto(value: i32, field: &str) -> Result<Option<Level>, AlertError> {
    match pb::Level::try_from(value) {
        Ok(pb::Level::Unspecified) => Ok(None),
        Ok(pb::Level::Green) => Ok(Some(Level::Green)),
        Ok(pb::Level::Yellow) => Ok(Some(Level::Yellow)),
        Ok(pb::Level::Orange) => Ok(Some(Level::Orange)),
        Ok(pb::Level::Red) => Ok(Some(Level::Red)),
        Err(_) => Err(AlertError::invalid(field, format!("unknown level {value}"))),
    }
}

fn subjects_at(subjects: &[pb::TenantOrFleet]) -> Result<Vec<Subject>, AlertError> {
    subjects
        .iter()
        .enumerate()
        .map(|(i, subject)| subject_at(Some(subject), &format!("subjects[{i}]")))
        .collect()
}

/// A time bound in Unix ms, rounded up: alert instants are whole ms, so "at
/// or after" and "before" an instant between two ms both mean "at or after",
/// "before" the next whole ms.
fn time_at(time: Option<&prost_types::Timestamp>, field: &str) -> Result<Option<i64>, AlertError> {
    time.map(|t| {
        from_timestamp(t)
            .map(|_| {
                let partial = t.nanos % 1_000_000 != 0;
                timestamp_to_ms(t).saturating_add(i64::from(partial))
            })
            .ok_or_else(|| AlertError::invalid(field, "is not a valid timestamp"))
    })
    .transpose()
}
