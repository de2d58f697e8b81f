//! What a backtest found: each subject's level timeline, built from the
//! alerts `Evaluate` returned, and how it is printed (text or JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use tenantmeter_proto::v1 as pb;

/// A subject's level as the report shows it. `Unspecified` stands for a proto
/// level the report does not know (never expected from the service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// Not evaluated / unknown.
    Unspecified,
    /// Nothing notable.
    Green,
    /// Worth watching.
    Yellow,
    /// Needs attention.
    Orange,
    /// Acting.
    Red,
}

impl Level {
    /// The four graded levels, lowest first (the summary's columns).
    pub(crate) const GRADED: [Self; 4] = [Self::Green, Self::Yellow, Self::Orange, Self::Red];

    /// From the wire's enum value.
    pub(crate) fn from_proto(value: i32) -> Self {
        match pb::Level::try_from(value) {
            Ok(pb::Level::Green) => Self::Green,
            Ok(pb::Level::Yellow) => Self::Yellow,
            Ok(pb::Level::Orange) => Self::Orange,
            Ok(pb::Level::Red) => Self::Red,
            Ok(pb::Level::Unspecified) | Err(_) => Self::Unspecified,
        }
    }

    /// Lower-case name.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Green => "green",
            Self::Yellow => "yellow",
            Self::Orange => "orange",
            Self::Red => "red",
        }
    }

    /// Column of the time-at-level table; `None` for unspecified.
    const fn column(self) -> Option<usize> {
        match self {
            Self::Unspecified => None,
            Self::Green => Some(0),
            Self::Yellow => Some(1),
            Self::Orange => Some(2),
            Self::Red => Some(3),
        }
    }
}

/// Whom a timeline is about. Ordered as the report lists them: the fleet
/// first, then tenants by id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Subject {
    /// All tenants together.
    Fleet,
    /// One tenant.
    Tenant(String),
}

impl Subject {
    /// From an alert's subject; `None` when it names neither.
    pub(crate) fn from_proto(subject: Option<&pb::TenantOrFleet>) -> Option<Self> {
        match subject?.subject.as_ref()? {
            pb::tenant_or_fleet::Subject::TenantId(id) => Some(Self::Tenant(id.clone())),
            pb::tenant_or_fleet::Subject::Fleet(_) => Some(Self::Fleet),
        }
    }

    fn label(&self) -> String {
        match self {
            Self::Fleet => "fleet".to_owned(),
            Self::Tenant(id) => format!("tenant {id}"),
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Fleet => "fleet",
            Self::Tenant(id) => id,
        }
    }
}

/// One reason carried by a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reason {
    /// `REASON_CODE_*` name.
    pub(crate) code: String,
    /// The level the reason alone calls for.
    pub(crate) level: Level,
    /// The service's explanation with its figures.
    pub(crate) message: String,
}

/// One level change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transition {
    /// When the evaluation that found it ran (simulated).
    pub(crate) time: SystemTime,
    /// Level before.
    pub(crate) from: Level,
    /// Level after.
    pub(crate) to: Level,
    /// Reasons for `to`, highest level first.
    pub(crate) reasons: Vec<Reason>,
}

/// One subject's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Timeline {
    /// First evaluation of the subject (the timeline starts green there).
    pub(crate) first_evaluated: SystemTime,
    /// Level now.
    pub(crate) level: Level,
    /// Since when.
    level_since: SystemTime,
    /// Time spent at green, yellow, orange, red (closed by [`Tracker::finish`]).
    pub(crate) time_at: [Duration; 4],
    /// Every transition, in order.
    pub(crate) transitions: Vec<Transition>,
}

impl Timeline {
    fn new(at: SystemTime) -> Self {
        Self {
            first_evaluated: at,
            level: Level::Green,
            level_since: at,
            time_at: [Duration::ZERO; 4],
            transitions: Vec::new(),
        }
    }

    fn close_segment(&mut self, until: SystemTime) {
        let spent = until.duration_since(self.level_since).unwrap_or_default();
        if let Some(column) = self.level.column() {
            self.time_at[column] += spent;
        }
        self.level_since = self.level_since.max(until);
    }
}

/// Builds every subject's timeline while the replay runs.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    timelines: BTreeMap<Subject, Timeline>,
}

impl Tracker {
    /// Notes that `subject` was evaluated at `at` (its timeline starts at the
    /// first such call, at green: a first evaluation raises no alert).
    pub(crate) fn evaluated(&mut self, subject: Subject, at: SystemTime) {
        self.timelines
            .entry(subject)
            .or_insert_with(|| Timeline::new(at));
    }

    /// Records one alert returned by `Evaluate`. An alert whose subject or time
    /// is missing is skipped and reported as `false`.
    pub(crate) fn alert(&mut self, alert: &pb::Alert) -> bool {
        let Some(subject) = Subject::from_proto(alert.subject.as_ref()) else {
            return false;
        };
        let Some(time) = alert
            .raised_at
            .as_ref()
            .and_then(tenantmeter_runtime::clock::from_timestamp)
        else {
            return false;
        };
        let timeline = self
            .timelines
            .entry(subject)
            .or_insert_with(|| Timeline::new(time));
        timeline.close_segment(time);
        let to = Level::from_proto(alert.to_level);
        timeline.transitions.push(Transition {
            time,
            from: Level::from_proto(alert.from_level),
            to,
            reasons: alert
                .reasons
                .iter()
                .map(|r| Reason {
                    code: pb::ReasonCode::try_from(r.code)
                        .map_or_else(|_| r.code.to_string(), |c| c.as_str_name().to_owned()),
                    level: Level::from_proto(r.level),
                    message: r.message.clone(),
                })
                .collect(),
        });
        timeline.level = to;
        true
    }

    /// The level the tracker holds for `subject`, if it was seen.
    pub(crate) fn level_of(&self, subject: &Subject) -> Option<Level> {
        self.timelines.get(subject).map(|t| t.level)
    }

    /// Closes every timeline at `end` and returns them, fleet first.
    pub(crate) fn finish(mut self, end: SystemTime) -> BTreeMap<Subject, Timeline> {
        for timeline in self.timelines.values_mut() {
            timeline.close_segment(end);
        }
        self.timelines
    }
}

/// Everything the report says.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// The usage file as given.
    pub(crate) input: String,
    /// The policy file, or `None` for the config's levels.
    pub(crate) policy: Option<String>,
    /// Where simulated time began: the first line's time floored to the step.
    pub(crate) start: SystemTime,
    /// Last evaluation.
    pub(crate) end: SystemTime,
    /// Simulated time between evaluations.
    pub(crate) step: Duration,
    /// Number of `Evaluate` calls.
    pub(crate) evaluations: u64,
    /// Usage events the meter accepted.
    pub(crate) accepted: u64,
    /// Usage events the meter had already counted (same event id).
    pub(crate) duplicates: u64,
    /// Budget lines applied.
    pub(crate) budgets: u64,
    /// Lines that were out of time order in the file (sorted before replay).
    pub(crate) out_of_order: usize,
    /// Each subject's timeline, fleet first, then tenants by id.
    pub(crate) timelines: BTreeMap<Subject, Timeline>,
}

impl Report {
    /// Alerts that would have fired: every transition.
    pub(crate) fn alerts(&self) -> usize {
        self.timelines.values().map(|t| t.transitions.len()).sum()
    }

    /// Alerts that raised a level.
    fn raising(&self) -> usize {
        self.timelines
            .values()
            .flat_map(|t| &t.transitions)
            .filter(|t| t.to > t.from)
            .count()
    }

    /// The report for people.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "backtest of {} from {} to {}: {} evaluations every {}, levels from {}",
            self.input,
            rfc3339(self.start),
            rfc3339(self.end),
            self.evaluations,
            humantime::format_duration(self.step),
            self.policy
                .as_deref()
                .unwrap_or("the config (alerting.levels)"),
        );
        let _ = writeln!(
            out,
            "{} usage events counted ({} duplicates), {} budgets set{}",
            self.accepted,
            self.duplicates,
            self.budgets,
            if self.out_of_order > 0 {
                format!(
                    "; {} lines were out of time order and were sorted",
                    self.out_of_order
                )
            } else {
                String::new()
            }
        );
        for (subject, timeline) in &self.timelines {
            let _ = writeln!(out, "\n{}", subject.label());
            let _ = writeln!(
                out,
                "  {}  first evaluated, green",
                rfc3339(timeline.first_evaluated)
            );
            for transition in &timeline.transitions {
                let reason = transition
                    .reasons
                    .first()
                    .map_or("", |r| r.message.as_str());
                let line = format!(
                    "  {}  {} -> {}  {reason}",
                    rfc3339(transition.time),
                    transition.from.as_str(),
                    transition.to.as_str(),
                );
                let _ = writeln!(out, "{}", line.trim_end());
            }
        }
        out.push('\n');
        let mut rows = vec![vec![
            "subject".to_owned(),
            "green".to_owned(),
            "yellow".to_owned(),
            "orange".to_owned(),
            "red".to_owned(),
            "alerts".to_owned(),
        ]];
        for (subject, timeline) in &self.timelines {
            let mut row = vec![subject.name().to_owned()];
            row.extend(timeline.time_at.iter().map(|d| span(*d)));
            row.push(timeline.transitions.len().to_string());
            rows.push(row);
        }
        let columns = rows.first().map_or(0, Vec::len);
        let widths: Vec<usize> = (0..columns)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for row in &rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c == 0 {
                    let _ = write!(line, "{cell:<width$}", width = widths[c]);
                } else {
                    let _ = write!(line, "  {cell:>width$}", width = widths[c]);
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let alerts = self.alerts();
        let raising = self.raising();
        let _ = writeln!(
            out,
            "\nalerts that would have fired: {alerts} ({raising} raising a level, {} lowering it)",
            alerts - raising
        );
        out
    }

    /// The same data as one JSON object.
    pub(crate) fn json(&self) -> serde_json::Value {
        let subjects: Vec<serde_json::Value> = self
            .timelines
            .iter()
            .map(|(subject, timeline)| {
                let (kind, tenant) = match subject {
                    Subject::Fleet => ("fleet", serde_json::Value::Null),
                    Subject::Tenant(id) => ("tenant", serde_json::Value::from(id.as_str())),
                };
                let mut seconds = serde_json::Map::new();
                for level in Level::GRADED {
                    if let Some(column) = level.column() {
                        seconds.insert(
                            level.as_str().to_owned(),
                            serde_json::Value::from(timeline.time_at[column].as_secs()),
                        );
                    }
                }
                serde_json::json!({
                    "subject": kind,
                    "tenant_id": tenant,
                    "first_evaluated": rfc3339(timeline.first_evaluated),
                    "final_level": timeline.level.as_str(),
                    "seconds_at_level": seconds,
                    "alerts": timeline.transitions.len(),
                    "transitions": timeline.transitions.iter().map(|t| serde_json::json!({
                        "time": rfc3339(t.time),
                        "from": t.from.as_str(),
                        "to": t.to.as_str(),
                        "reasons": t.reasons.iter().map(|r| serde_json::json!({
                            "code": r.code,
                            "level": r.level.as_str(),
                            "message": r.message,
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "input": self.input,
            "policy": self.policy,
            "start": rfc3339(self.start),
            "end": rfc3339(self.end),
            "step_seconds": self.step.as_secs(),
            "evaluations": self.evaluations,
            "events_accepted": self.accepted,
            "events_duplicate": self.duplicates,
            "budgets_set": self.budgets,
            "lines_out_of_order": self.out_of_order,
            "subjects": subjects,
            "alerts": self.alerts(),
            "alerts_raising": self.raising(),
        })
    }
}

/// RFC 3339 in UTC, to the second (to the millisecond when there are any).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let whole = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .is_ok_and(|d| d.subsec_millis() == 0);
    if whole {
        humantime::format_rfc3339_seconds(time).to_string()
    } else {
        humantime::format_rfc3339_millis(time).to_string()
    }
}

/// A duration as `1d 4h 5m` (seconds only when there are some); `-` for none.
fn span(duration: Duration) -> String {
    let total = duration.as_secs();
    if total == 0 {
        return "-".to_owned();
    }
    let parts = [
        (total / 86_400, "d"),
        (total % 86_400 / 3_600, "h"),
        (total % 3_600 / 60, "m"),
        (total % 60, "s"),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    text.join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

    use super::*;

    fn at(minute: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_793_577_600 + minute * 60)
    }

    fn alert(
        subject: pb::tenant_or_fleet::Subject,
        minute: u64,
        from: pb::Level,
        to: pb::Level,
    ) -> pb::Alert {
        pb::Alert {
            subject: Some(pb::TenantOrFleet {
                subject: Some(subject),
            }),
            from_level: from.into(),
            to_level: to.into(),
            raised_at: Some(prost_types::Timestamp::from(at(minute))),
            reasons: vec![pb::LevelReason {
                code: pb::ReasonCode::Runaway.into(),
                level: to.into(),
                message: format!("went {}", to.as_str_name()),
                ..pb::LevelReason::default()
            }],
            ..pb::Alert::default()
        }
    }

    #[test]
    fn timelines_count_time_at_each_level_and_list_the_fleet_first() {
        let mut tracker = Tracker::default();
        let tenant = pb::tenant_or_fleet::Subject::TenantId("zeta".to_owned());
        tracker.evaluated(Subject::Tenant("zeta".to_owned()), at(1));
        tracker.evaluated(Subject::Tenant("alpha".to_owned()), at(1));
        tracker.evaluated(Subject::Fleet, at(1));
        assert!(tracker.alert(&alert(tenant.clone(), 11, pb::Level::Green, pb::Level::Red)));
        assert!(tracker.alert(&alert(tenant, 41, pb::Level::Red, pb::Level::Orange)));
        assert!(!tracker.alert(&pb::Alert::default()));
        assert_eq!(
            tracker.level_of(&Subject::Tenant("zeta".to_owned())),
            Some(Level::Orange)
        );
        let timelines = tracker.finish(at(61));
        let order: Vec<&Subject> = timelines.keys().collect();
        assert_eq!(
            order,
            [
                &Subject::Fleet,
                &Subject::Tenant("alpha".to_owned()),
                &Subject::Tenant("zeta".to_owned())
            ]
        );
        let zeta = &timelines[&Subject::Tenant("zeta".to_owned())];
        let minutes = |d: Duration| d.as_secs() / 60;
        assert_eq!(zeta.time_at.map(minutes), [10, 0, 20, 30]);
        assert_eq!(
            timelines[&Subject::Fleet].time_at.map(minutes),
            [60, 0, 0, 0]
        );

        let report = Report {
            input: "u.jsonl".to_owned(),
            policy: None,
            start: at(0),
            end: at(61),
            step: Duration::from_secs(60),
            evaluations: 61,
            accepted: 10,
            duplicates: 0,
            budgets: 0,
            out_of_order: 0,
            timelines,
        };
        let text = report.text();
        assert!(text.contains("tenant zeta\n"), "{text}");
        assert!(text.contains("green -> red  went LEVEL_RED"), "{text}");
        let zeta_row: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with("zeta "))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(zeta_row, ["zeta", "10m", "-", "20m", "30m", "2"], "{text}");
        assert!(
            text.contains("alerts that would have fired: 2 (1 raising a level, 1 lowering it)"),
            "{text}"
        );
        let json = report.json();
        assert_eq!(json["alerts"], 2);
        assert_eq!(json["subjects"][0]["subject"], "fleet");
        assert_eq!(json["subjects"][2]["tenant_id"], "zeta");
        assert_eq!(json["subjects"][2]["final_level"], "orange");
        assert_eq!(json["subjects"][2]["seconds_at_level"]["red"], 1800);
        assert_eq!(
            json["subjects"][2]["transitions"][0]["reasons"][0]["code"],
            "REASON_CODE_RUNAWAY"
        );
    }

    #[test]
    fn spans_are_compact() {
        assert_eq!(span(Duration::ZERO), "-");
        assert_eq!(span(Duration::from_secs(90_061)), "1d 1h 1m 1s");
        assert_eq!(span(Duration::from_secs(7_200)), "2h");
    }
}
