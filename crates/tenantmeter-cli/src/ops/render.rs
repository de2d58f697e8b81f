//! Formatting shared by the ops commands: exact money (never through a
//! float), percentages of basis points, times, level and enum names, and
//! aligned tables.

use std::time::SystemTime;

use tenantmeter_domain::decimal;
use tenantmeter_proto::v1 as pb;

/// Digits after the point of a nano-USD amount written in USD.
const NANO_SCALE: u32 = 9;

/// Nano-USD as exact USD with at least two decimals and thousands
/// separators: `$1,200.50`, `$0.000045`, `-$3.00`.
pub(crate) fn usd(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let plain = decimal::format_scaled(i128::from(nanos.unsigned_abs()), NANO_SCALE, 2);
    let (whole, fraction) = plain.split_once('.').unwrap_or((plain.as_str(), ""));
    let mut grouped = String::new();
    for (index, digit) in whole.chars().enumerate() {
        if index > 0 && (whole.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if fraction.is_empty() {
        format!("{sign}${grouped}")
    } else {
        format!("{sign}${grouped}.{fraction}")
    }
}

/// Nano-USD as a plain exact decimal (`1200.50`), for JSON.
pub(crate) fn usd_plain(nanos: i64) -> String {
    decimal::format_scaled(i128::from(nanos), NANO_SCALE, 2)
}

/// Parses a USD amount given on the command line into nano-USD, exactly:
/// at most 9 decimals, more than 0. The error says why, for the caller to
/// prefix with the flag.
pub(crate) fn parse_usd(text: &str) -> Result<i64, String> {
    let nanos = decimal::parse_scaled(text, NANO_SCALE).map_err(|error| match error {
        decimal::DecimalError::TooPrecise { .. } => {
            format!("{error} (budgets are whole nano-USD)")
        }
        decimal::DecimalError::Empty
        | decimal::DecimalError::Malformed(_)
        | decimal::DecimalError::TooLarge(_) => error.to_string(),
    })?;
    match i64::try_from(nanos) {
        Ok(0) => Err("must be more than 0".to_owned()),
        Ok(nanos) => Ok(nanos),
        Err(_) => Err(format!(
            "{text:?} is too large (at most {})",
            usd_plain(i64::MAX)
        )),
    }
}

/// Basis points as a percentage with one decimal, truncated: 10450 is
/// `104.5%`.
pub(crate) fn percent_of_bps(bps: i64) -> String {
    let sign = if bps < 0 { "-" } else { "" };
    let magnitude = bps.unsigned_abs();
    format!("{sign}{}.{}%", magnitude / 100, magnitude % 100 / 10)
}

/// `part / whole` as a percentage with one decimal, in integers; `None` when
/// `whole` is not positive.
pub(crate) fn ratio_percent(part: i64, whole: i64) -> Option<String> {
    if whole <= 0 {
        return None;
    }
    let per_mille = i128::from(part) * 1_000 / i128::from(whole);
    let sign = if per_mille < 0 { "-" } else { "" };
    let magnitude = per_mille.unsigned_abs();
    Some(format!("{sign}{}.{}%", magnitude / 10, magnitude % 10))
}

/// A timestamp in RFC 3339 (UTC, whole seconds); `None` when unset or out of
/// range.
pub(crate) fn time(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    let at = SystemTime::try_from(*timestamp?).ok()?;
    Some(humantime::format_rfc3339_seconds(at).to_string())
}

/// [`time`], or `-`.
pub(crate) fn time_or_dash(timestamp: Option<&prost_types::Timestamp>) -> String {
    time(timestamp).unwrap_or_else(|| "-".to_owned())
}

/// A level in lower case (`red`); `-` when never evaluated.
pub(crate) fn level(value: i32) -> &'static str {
    match pb::Level::try_from(value) {
        Ok(pb::Level::Green) => "green",
        Ok(pb::Level::Yellow) => "yellow",
        Ok(pb::Level::Orange) => "orange",
        Ok(pb::Level::Red) => "red",
        Ok(pb::Level::Unspecified) | Err(_) => "-",
    }
}

/// A level by its proto name (`LEVEL_RED`), for JSON.
pub(crate) fn level_name(value: i32) -> &'static str {
    pb::Level::try_from(value).map_or("LEVEL_UNSPECIFIED", |level| level.as_str_name())
}

/// A period as the flags write it (`month`, `day`).
pub(crate) fn period(value: i32) -> &'static str {
    match pb::CalendarPeriod::try_from(value) {
        Ok(pb::CalendarPeriod::Month) => "month",
        Ok(pb::CalendarPeriod::Day) => "day",
        Ok(pb::CalendarPeriod::Unspecified) | Err(_) => "-",
    }
}

/// A period by its proto name, for JSON.
pub(crate) fn period_name(value: i32) -> &'static str {
    pb::CalendarPeriod::try_from(value)
        .map_or("CALENDAR_PERIOD_UNSPECIFIED", |period| period.as_str_name())
}

/// A cost basis as `--basis` writes it (`charge`, `cost`); unspecified is
/// the tenant charge, as the contract says.
pub(crate) fn basis(value: i32) -> &'static str {
    match pb::CostBasis::try_from(value) {
        Ok(pb::CostBasis::ProviderCost) => "cost",
        Ok(pb::CostBasis::TenantCharge | pb::CostBasis::Unspecified) | Err(_) => "charge",
    }
}

/// A cost basis by its proto name, for JSON.
pub(crate) fn basis_name(value: i32) -> &'static str {
    pb::CostBasis::try_from(value).map_or("COST_BASIS_UNSPECIFIED", |basis| basis.as_str_name())
}

/// `soft` or `hard`; unspecified is soft, as the contract says.
pub(crate) fn enforcement(value: i32) -> &'static str {
    match pb::BudgetEnforcement::try_from(value) {
        Ok(pb::BudgetEnforcement::Hard) => "hard",
        Ok(pb::BudgetEnforcement::Soft | pb::BudgetEnforcement::Unspecified) | Err(_) => "soft",
    }
}

/// An enforcement by its proto name, for JSON.
pub(crate) fn enforcement_name(value: i32) -> &'static str {
    pb::BudgetEnforcement::try_from(value).map_or("BUDGET_ENFORCEMENT_UNSPECIFIED", |enforcement| {
        enforcement.as_str_name()
    })
}

/// A reason code by its proto name.
pub(crate) fn reason_name(value: i32) -> &'static str {
    pb::ReasonCode::try_from(value).map_or("REASON_CODE_UNSPECIFIED", |code| code.as_str_name())
}

/// A subject as tables show it: the tenant id, or `(fleet)`.
pub(crate) fn subject(subject: Option<&pb::TenantOrFleet>) -> String {
    match subject.and_then(|s| s.subject.as_ref()) {
        Some(pb::tenant_or_fleet::Subject::TenantId(id)) => id.clone(),
        Some(pb::tenant_or_fleet::Subject::Fleet(_)) => "(fleet)".to_owned(),
        None => "-".to_owned(),
    }
}

/// Columns aligned with two spaces between them. The first row is the
/// header; the last column is not padded, so long text (reasons) can run on.
#[derive(Debug)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
    /// Columns aligned to the right (amounts, percentages).
    right: Vec<usize>,
}

impl Table {
    /// A table with this header.
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
            right: Vec::new(),
        }
    }

    /// Aligns these columns (0-based) to the right.
    pub(crate) fn right(mut self, columns: &[usize]) -> Self {
        self.right = columns.to_vec();
        self
    }

    /// Adds a row.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines of text, each ending in a newline.
    pub(crate) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (column, cell) in row.iter().enumerate() {
                widths[column] = widths[column].max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column > 0 {
                    line.push_str("  ");
                }
                let last = column + 1 == row.len();
                let pad = widths[column].saturating_sub(cell.chars().count());
                if self.right.contains(&column) {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if !last {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    #[test]
    fn usd_is_exact_and_grouped() {
        assert_eq!(usd(1_200_500_000_000), "$1,200.50");
        assert_eq!(usd(100_000_000_000), "$100.00");
        assert_eq!(usd(45_000), "$0.000045");
        assert_eq!(usd(1), "$0.000000001");
        assert_eq!(usd(-3_000_000_000), "-$3.00");
        assert_eq!(usd(123_456_789_000_000_000), "$123,456,789.00");
        assert_eq!(usd(i64::MIN), "-$9,223,372,036.854775808");
        assert_eq!(usd_plain(1_200_500_000_000), "1200.50");
    }

    #[test]
    fn amounts_parse_exactly_or_say_why() {
        assert_eq!(parse_usd("1200.50"), Ok(1_200_500_000_000));
        assert_eq!(parse_usd("0.000000001"), Ok(1));
        assert_eq!(parse_usd("1"), Ok(1_000_000_000));
        assert!(parse_usd("1.2.3").unwrap_err().contains("not a plain"));
        assert!(parse_usd("0.0000000001").unwrap_err().contains("at most 9"));
        assert!(parse_usd("-5").unwrap_err().contains("not a plain"));
        assert!(parse_usd("1e3").unwrap_err().contains("not a plain"));
        assert_eq!(parse_usd("0.000"), Err("must be more than 0".to_owned()));
        assert!(parse_usd("").unwrap_err().contains("empty"));
        assert!(parse_usd("9223372037").unwrap_err().contains("too large"));
        assert_eq!(parse_usd("9223372036.854775807"), Ok(i64::MAX));
    }

    #[test]
    fn percentages_use_integers() {
        assert_eq!(percent_of_bps(10_450), "104.5%");
        assert_eq!(percent_of_bps(0), "0.0%");
        assert_eq!(percent_of_bps(-250), "-2.5%");
        assert_eq!(ratio_percent(54, 25), Some("216.0%".to_owned()));
        assert_eq!(ratio_percent(1, 3), Some("33.3%".to_owned()));
        assert_eq!(ratio_percent(1, 0), None);
    }

    #[test]
    fn tables_align() {
        let mut table = Table::new(&["A", "AMOUNT", "NOTE"]).right(&[1]);
        table.row(vec!["long".into(), "$1.00".into(), "x".into()]);
        table.row(vec!["b".into(), "$100.00".into(), String::new()]);
        assert_eq!(
            table.render(),
            "A      AMOUNT  NOTE\nlong    $1.00  x\nb     $100.00\n"
        );
    }
}
