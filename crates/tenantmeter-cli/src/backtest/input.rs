//! The backtest's input: recorded usage as JSON lines (docs/backtest.md).
//!
//! Every line is parsed and checked before anything starts, so a bad file
//! fails in a moment with the line number and the field, not halfway through a
//! replay. Fields are read from a `serde_json` map by hand rather than derived:
//! serde's own errors name a column, not the field, for a value of the wrong type.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use tenantmeter_domain::ids::{ModelId, TenantId};
use tenantmeter_domain::money::{ATTOS_PER_NANO, AttoUsd};
use tenantmeter_proto::v1 as pb;

/// Why the usage file cannot be replayed: which line, which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InputError {
    /// The file could not be read.
    #[error("{file}: cannot read: {reason}")]
    Unreadable {
        /// The file as given.
        file: String,
        /// The I/O error.
        reason: String,
    },
    /// A line is malformed.
    #[error("{file}:{line}: {}{reason}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Line {
        /// The file as given.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The offending field; `None` when the line as a whole is wrong.
        field: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// The file holds no usage event.
    #[error("{file}: no usage event to replay")]
    Empty {
        /// The file as given.
        file: String,
    },
}

/// One line of the file, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    /// 1-based line number in the file (kept after sorting, for messages).
    pub(crate) line: usize,
    /// When it happens in simulated time.
    pub(crate) time: SystemTime,
    /// What it is.
    pub(crate) kind: RecordKind,
}

/// What a line asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RecordKind {
    /// A usage event, recorded with `MeterService.RecordUsage` (`event_time` set).
    Usage(Box<pb::UsageEvent>),
    /// A budget, set with `AlertingAdminService.SetBudget`.
    Budget(pb::Budget),
}

/// The parsed file: records in time order (ties keep file order).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Input {
    /// Every record, sorted by time, stable.
    pub(crate) records: Vec<Record>,
    /// How many lines were out of time order in the file (they were sorted).
    pub(crate) out_of_order: usize,
}

impl Input {
    /// The earliest record's time.
    pub(crate) fn first_time(&self) -> Option<SystemTime> {
        self.records.first().map(|r| r.time)
    }

    /// The latest record's time.
    pub(crate) fn last_time(&self) -> Option<SystemTime> {
        self.records.last().map(|r| r.time)
    }
}

/// Reads and checks `path`.
pub(crate) fn read(path: &Path) -> Result<Input, InputError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| InputError::Unreadable {
        file: file.clone(),
        reason: error.to_string(),
    })?;
    parse(&file, &text)
}

/// Parses the text of a usage file named `file` (for messages).
pub(crate) fn parse(file: &str, text: &str) -> Result<Input, InputError> {
    let mut records = Vec::new();
    let mut out_of_order = 0;
    let mut latest: Option<SystemTime> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let record = parse_line(line, raw).map_err(|(field, reason)| InputError::Line {
            file: file.to_owned(),
            line,
            field,
            reason,
        })?;
        if latest.is_some_and(|t| record.time < t) {
            out_of_order += 1;
        }
        latest = latest.max(Some(record.time));
        records.push(record);
    }
    if !records
        .iter()
        .any(|r| matches!(r.kind, RecordKind::Usage(_)))
    {
        return Err(InputError::Empty {
            file: file.to_owned(),
        });
    }
    // Stable: lines with the same time keep their order in the file.
    records.sort_by_key(|r| r.time);
    Ok(Input {
        records,
        out_of_order,
    })
}

/// A field error: the field (or `None` for the whole line) and why.
type LineError = (Option<String>, String);

fn field_error(field: &str, reason: impl Into<String>) -> LineError {
    (Some(field.to_owned()), reason.into())
}

const USAGE_FIELDS: &[&str] = &[
    "type",
    "time",
    "tenant_id",
    "model_id",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_write_input_tokens",
    "region",
    "event_id",
];

const BUDGET_FIELDS: &[&str] = &[
    "type",
    "time",
    "tenant_id",
    "fleet",
    "period",
    "basis",
    "amount_usd",
    "enforcement",
];

fn parse_line(line: usize, raw: &str) -> Result<Record, LineError> {
    let value: Value =
        serde_json::from_str(raw).map_err(|error| (None, format!("not valid JSON: {error}")))?;
    let Value::Object(map) = value else {
        return Err((None, "must be a JSON object".to_owned()));
    };
    let kind = match map.get("type") {
        None => "usage",
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(field_error("type", "must be \"usage\" or \"budget\"")),
    };
    match kind {
        "usage" => {
            known_fields(&map, USAGE_FIELDS)?;
            let (time, event) = usage_event(line, &map)?;
            Ok(Record {
                line,
                time,
                kind: RecordKind::Usage(Box::new(event)),
            })
        }
        "budget" => {
            known_fields(&map, BUDGET_FIELDS)?;
            let time = time_field(&map)?;
            Ok(Record {
                line,
                time,
                kind: RecordKind::Budget(budget(&map)?),
            })
        }
        other => Err(field_error(
            "type",
            format!("{other:?} is neither \"usage\" nor \"budget\""),
        )),
    }
}

fn known_fields(map: &Map<String, Value>, known: &[&str]) -> Result<(), LineError> {
    match map.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(field_error(
            key,
            format!("unknown field (expected one of: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn string_field<'a>(
    map: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, LineError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.as_str())),
        Some(other) => Err(field_error(
            field,
            format!("must be a string, found {}", kind_of(other)),
        )),
    }
}

fn required_string<'a>(map: &'a Map<String, Value>, field: &str) -> Result<&'a str, LineError> {
    string_field(map, field)?.ok_or_else(|| field_error(field, "is required"))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn time_field(map: &Map<String, Value>) -> Result<SystemTime, LineError> {
    let text = required_string(map, "time")?;
    parse_time(text).map_err(|reason| field_error("time", reason))
}

/// Parses RFC 3339 in UTC: `2026-11-02T10:00:00Z` (fractions of a second allowed;
/// `+00:00` is taken as `Z`).
pub(crate) fn parse_time(text: &str) -> Result<SystemTime, String> {
    let utc = match text.strip_suffix("+00:00") {
        Some(rest) => format!("{rest}Z"),
        None => text.to_owned(),
    };
    humantime::parse_rfc3339(&utc).map_err(|error| {
        format!("{text:?} is not an RFC 3339 UTC time such as \"2026-11-02T10:00:00Z\" ({error})")
    })
}

fn tokens(map: &Map<String, Value>, field: &str) -> Result<i64, LineError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(number)) => match number.as_i64() {
            Some(n) if n >= 0 => Ok(n),
            Some(_) => Err(field_error(field, "must not be negative")),
            None => Err(field_error(
                field,
                format!("{number} is not a whole number of tokens"),
            )),
        },
        Some(other) => Err(field_error(
            field,
            format!("must be a whole number, found {}", kind_of(other)),
        )),
    }
}

/// `[A-Za-z0-9._:-]{1,128}`, as the meter requires of an event id.
fn check_event_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1 to 128 characters".to_owned());
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        Some(found) => Err(format!(
            "has {found:?}; allowed: letters, digits, '.', '_', ':' and '-'"
        )),
        None => Ok(()),
    }
}

fn usage_event(
    line: usize,
    map: &Map<String, Value>,
) -> Result<(SystemTime, pb::UsageEvent), LineError> {
    let time = time_field(map)?;
    let tenant = required_string(map, "tenant_id")?;
    TenantId::parse(tenant).map_err(|e| field_error("tenant_id", e.to_string()))?;
    let model = required_string(map, "model_id")?;
    ModelId::parse(model).map_err(|e| field_error("model_id", e.to_string()))?;
    let usage = pb::TokenUsage {
        input_tokens: tokens(map, "input_tokens")?,
        output_tokens: tokens(map, "output_tokens")?,
        cache_read_input_tokens: tokens(map, "cache_read_input_tokens")?,
        cache_write_input_tokens: tokens(map, "cache_write_input_tokens")?,
    };
    let event_id = match string_field(map, "event_id")? {
        Some(id) => {
            check_event_id(id).map_err(|reason| field_error("event_id", reason))?;
            id.to_owned()
        }
        // Deterministic: the same file gives the same ids, so a replay dedupes.
        None => format!("backtest-line-{line}"),
    };
    let region = string_field(map, "region")?.unwrap_or_default().to_owned();
    Ok((
        time,
        pb::UsageEvent {
            event_id,
            tenant_id: tenant.to_owned(),
            model_id: model.to_owned(),
            region,
            usage: Some(usage),
            event_time: Some(prost_types::Timestamp::from(time)),
            ..pb::UsageEvent::default()
        },
    ))
}

fn budget(map: &Map<String, Value>) -> Result<pb::Budget, LineError> {
    let tenant = string_field(map, "tenant_id")?;
    let fleet = match map.get("fleet") {
        None | Some(Value::Null | Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(other) => {
            return Err(field_error(
                "fleet",
                format!("must be true, found {}", kind_of(other)),
            ));
        }
    };
    let subject = match (tenant, fleet) {
        (Some(_), true) => {
            return Err(field_error(
                "fleet",
                "a budget is for one tenant (tenant_id) or for the fleet (\"fleet\":true), not both",
            ));
        }
        (None, false) => {
            return Err(field_error(
                "tenant_id",
                "is required (or \"fleet\":true for a fleet budget)",
            ));
        }
        (Some(tenant), false) => {
            TenantId::parse(tenant).map_err(|e| field_error("tenant_id", e.to_string()))?;
            pb::tenant_or_fleet::Subject::TenantId(tenant.to_owned())
        }
        (None, true) => pb::tenant_or_fleet::Subject::Fleet(true),
    };
    let period = match required_string(map, "period")? {
        "month" => pb::CalendarPeriod::Month,
        "day" => pb::CalendarPeriod::Day,
        other => {
            return Err(field_error(
                "period",
                format!("{other:?} is neither \"month\" nor \"day\""),
            ));
        }
    };
    let basis = match string_field(map, "basis")? {
        None | Some("tenant_charge") => pb::CostBasis::TenantCharge,
        Some("provider_cost") => pb::CostBasis::ProviderCost,
        Some(other) => {
            return Err(field_error(
                "basis",
                format!("{other:?} is neither \"tenant_charge\" nor \"provider_cost\""),
            ));
        }
    };
    let enforcement = match string_field(map, "enforcement")? {
        None | Some("soft") => pb::BudgetEnforcement::Soft,
        Some("hard") if fleet => {
            return Err(field_error(
                "enforcement",
                "a fleet budget cannot be hard: at red the fleet caps its top contributors instead",
            ));
        }
        Some("hard") => pb::BudgetEnforcement::Hard,
        Some(other) => {
            return Err(field_error(
                "enforcement",
                format!("{other:?} is neither \"soft\" nor \"hard\""),
            ));
        }
    };
    let amount = match map.get("amount_usd") {
        Some(Value::String(text)) => {
            amount_nanos(text).map_err(|r| field_error("amount_usd", r))?
        }
        Some(Value::Number(number)) => {
            return Err(field_error(
                "amount_usd",
                format!("must be a decimal string such as \"{number}\" (money is never a float)"),
            ));
        }
        None | Some(Value::Null) => return Err(field_error("amount_usd", "is required")),
        Some(other) => {
            return Err(field_error(
                "amount_usd",
                format!("must be a decimal string, found {}", kind_of(other)),
            ));
        }
    };
    Ok(pb::Budget {
        subject: Some(pb::TenantOrFleet {
            subject: Some(subject),
        }),
        period: period.into(),
        basis: basis.into(),
        amount_nanos_usd: amount,
        enforcement: enforcement.into(),
        updated_at: None,
    })
}

/// USD as a decimal string to nano-USD: exact (at most 9 decimals), more than 0.
fn amount_nanos(text: &str) -> Result<i64, String> {
    let atto = AttoUsd::parse_usd(text).map_err(|e| e.to_string())?;
    if atto.0 % ATTOS_PER_NANO != 0 {
        return Err(format!(
            "{text:?} has more than 9 decimals: budgets are whole nano-USD"
        ));
    }
    match atto.to_nanos() {
        Some(nanos) if nanos > 0 => Ok(nanos),
        Some(_) => Err("must be more than 0".to_owned()),
        None => Err(format!("{text:?} is too large")),
    }
}

/// `time` floored to a multiple of `step` since the Unix epoch.
pub(crate) fn floor_to(time: SystemTime, step: Duration) -> SystemTime {
    let step_ms = step.as_millis().max(1);
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    let floored = since - since % step_ms;
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(floored).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

    use super::*;

    const SONNET: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

    fn line_error(text: &str) -> (usize, Option<String>, String) {
        match parse("u.jsonl", text).unwrap_err() {
            InputError::Line {
                line,
                field,
                reason,
                ..
            } => (line, field, reason),
            other @ (InputError::Unreadable { .. } | InputError::Empty { .. }) => {
                panic!("not a line error: {other:?}")
            }
        }
    }

    #[test]
    fn usage_lines_become_events_with_derived_ids_sorted_by_time() {
        let text = format!(
            "{{\"time\":\"2026-11-02T10:01:00Z\",\"tenant_id\":\"acme\",\"model_id\":\"{SONNET}\",\"input_tokens\":1200,\"output_tokens\":300}}\n\
             \n\
             {{\"time\":\"2026-11-02T10:00:00Z\",\"tenant_id\":\"acme\",\"model_id\":\"{SONNET}\",\"input_tokens\":1,\"cache_read_input_tokens\":5,\"event_id\":\"e-1\",\"region\":\"eu-west-1\"}}\n"
        );
        let input = parse("u.jsonl", &text).unwrap();
        assert_eq!(input.out_of_order, 1);
        assert_eq!(input.records.len(), 2);
        let RecordKind::Usage(first) = &input.records[0].kind else {
            panic!("not usage")
        };
        assert_eq!(input.records[0].line, 3);
        assert_eq!(first.event_id, "e-1");
        assert_eq!(first.region, "eu-west-1");
        assert_eq!(first.usage.unwrap().cache_read_input_tokens, 5);
        let RecordKind::Usage(second) = &input.records[1].kind else {
            panic!("not usage")
        };
        assert_eq!(second.event_id, "backtest-line-1");
        assert_eq!(second.usage.unwrap().output_tokens, 300);
        assert_eq!(
            second.event_time.unwrap().seconds,
            input.records[1]
                .time
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                .try_into()
                .unwrap_or(0)
        );
    }

    #[test]
    fn budget_lines_are_checked_and_converted() {
        let text = format!(
            "{{\"type\":\"budget\",\"time\":\"2026-11-02T00:00:00Z\",\"fleet\":true,\"period\":\"month\",\"basis\":\"provider_cost\",\"amount_usd\":\"1200.50\"}}\n\
             {{\"time\":\"2026-11-02T10:00:00Z\",\"tenant_id\":\"acme\",\"model_id\":\"{SONNET}\"}}\n"
        );
        let input = parse("u.jsonl", &text).unwrap();
        let RecordKind::Budget(budget) = &input.records[0].kind else {
            panic!("not a budget")
        };
        assert_eq!(budget.amount_nanos_usd, 1_200_500_000_000);
        assert_eq!(budget.period, pb::CalendarPeriod::Month as i32);
        assert_eq!(budget.basis, pb::CostBasis::ProviderCost as i32);
        assert_eq!(budget.enforcement, pb::BudgetEnforcement::Soft as i32);
        assert_eq!(
            budget.subject.clone().unwrap().subject,
            Some(pb::tenant_or_fleet::Subject::Fleet(true))
        );
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let good = format!(
            "{{\"time\":\"2026-11-02T10:00:00Z\",\"tenant_id\":\"acme\",\"model_id\":\"{SONNET}\"}}"
        );
        let cases = [
            ("{\"time\":", None, "not valid JSON"),
            ("[1]", None, "JSON object"),
            (
                "{\"time\":\"yesterday\",\"tenant_id\":\"a\",\"model_id\":\"m\"}",
                Some("time"),
                "RFC 3339",
            ),
            (
                "{\"time\":\"2026-11-02T10:00:00Z\",\"model_id\":\"m\"}",
                Some("tenant_id"),
                "required",
            ),
            (
                "{\"time\":\"2026-11-02T10:00:00Z\",\"tenant_id\":\"a b\",\"model_id\":\"m\"}",
                Some("tenant_id"),
                "' '",
            ),
            (
                "{\"time\":\"2026-11-02T10:00:00Z\",\"tenant_id\":\"a\",\"model_id\":\"m\",\"input_tokens\":-1}",
                Some("input_tokens"),
                "negative",
            ),
            (
                "{\"time\":\"2026-11-02T10:00:00Z\",\"tenant_id\":\"a\",\"model_id\":\"m\",\"output_tokens\":\"3\"}",
                Some("output_tokens"),
                "whole number",
            ),
            (
                "{\"time\":\"2026-11-02T10:00:00Z\",\"tenant_id\":\"a\",\"model_id\":\"m\",\"input_tokens\":1.5}",
                Some("input_tokens"),
                "whole number",
            ),
            (
                "{\"time\":\"2026-11-02T10:00:00Z\",\"tenant_id\":\"a\",\"model_id\":\"m\",\"tokens\":1}",
                Some("tokens"),
                "unknown field",
            ),
            (
                "{\"time\":\"2026-11-02T10:00:00Z\",\"tenant_id\":\"a\",\"model_id\":\"m\",\"event_id\":\"a/b\"}",
                Some("event_id"),
                "'/'",
            ),
            ("{\"type\":\"alert\"}", Some("type"), "neither"),
            (
                "{\"type\":\"budget\",\"time\":\"2026-11-02T10:00:00Z\",\"tenant_id\":\"a\",\"period\":\"week\",\"amount_usd\":\"1\"}",
                Some("period"),
                "\"week\"",
            ),
            (
                "{\"type\":\"budget\",\"time\":\"2026-11-02T10:00:00Z\",\"tenant_id\":\"a\",\"period\":\"day\",\"amount_usd\":12.5}",
                Some("amount_usd"),
                "never a float",
            ),
            (
                "{\"type\":\"budget\",\"time\":\"2026-11-02T10:00:00Z\",\"tenant_id\":\"a\",\"period\":\"day\",\"amount_usd\":\"0\"}",
                Some("amount_usd"),
                "more than 0",
            ),
            (
                "{\"type\":\"budget\",\"time\":\"2026-11-02T10:00:00Z\",\"fleet\":true,\"period\":\"day\",\"amount_usd\":\"5\",\"enforcement\":\"hard\"}",
                Some("enforcement"),
                "fleet",
            ),
            (
                "{\"type\":\"budget\",\"time\":\"2026-11-02T10:00:00Z\",\"period\":\"day\",\"amount_usd\":\"5\"}",
                Some("tenant_id"),
                "fleet",
            ),
        ];
        for (bad, field, reason) in cases {
            let text = format!("{good}\n{bad}\n");
            let (line, got_field, got_reason) = line_error(&text);
            assert_eq!(line, 2, "{bad}");
            assert_eq!(got_field.as_deref(), field, "{bad}: {got_reason}");
            assert!(got_reason.contains(reason), "{bad}: {got_reason}");
        }
    }

    #[test]
    fn the_message_is_one_line_with_file_line_and_field() {
        let error = parse("u.jsonl", "{\"time\":\"2026-11-02T10:00:00Z\",\"tenant_id\":\"a\",\"model_id\":\"m\",\"input_tokens\":-1}").unwrap_err();
        assert_eq!(
            error.to_string(),
            "u.jsonl:1: input_tokens: must not be negative"
        );
        assert!(matches!(
            parse("u.jsonl", "\n\n").unwrap_err(),
            InputError::Empty { .. }
        ));
    }

    #[test]
    fn floor_to_step() {
        let t = parse_time("2026-11-02T10:03:27.5Z").unwrap();
        assert_eq!(
            floor_to(t, Duration::from_secs(60)),
            parse_time("2026-11-02T10:03:00Z").unwrap()
        );
        assert_eq!(
            floor_to(t, Duration::from_secs(300)),
            parse_time("2026-11-02T10:00:00+00:00").unwrap()
        );
    }
}
