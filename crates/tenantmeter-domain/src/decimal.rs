//! Exact parsing of the decimal strings prices and multipliers are written in.
//!
//! Prices are never parsed through a float: "0.035" becomes exactly 35 × 10^(scale-3).

/// Why a decimal string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// Nothing was written.
    #[error("is empty; expected a decimal number such as \"3.75\"")]
    Empty,
    /// Something other than digits and one point.
    #[error(
        "{0:?} is not a plain non-negative decimal number (digits, one optional '.', no sign or exponent)"
    )]
    Malformed(String),
    /// More digits after the point than the unit can hold exactly.
    #[error("{value:?} has {digits} digits after the point; at most {max} are allowed")]
    TooPrecise {
        /// The input.
        value: String,
        /// Fraction digits found.
        digits: usize,
        /// Fraction digits allowed.
        max: u32,
    },
    /// Larger than the unit can hold.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Parses a plain non-negative decimal (`"12"`, `"0.035"`, `"3."` is refused)
/// into an integer number of `10^-scale` units, exactly.
pub fn parse_scaled(text: &str, scale: u32) -> Result<i128, DecimalError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DecimalError::Empty);
    }
    let (whole, fraction) = match trimmed.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (trimmed, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
        return Err(DecimalError::Malformed(text.to_owned()));
    }
    let fraction = fraction.unwrap_or("");
    let digits = fraction.len();
    if digits > scale as usize {
        return Err(DecimalError::TooPrecise {
            value: text.to_owned(),
            digits,
            max: scale,
        });
    }
    let too_large = || DecimalError::TooLarge(text.to_owned());
    let mut value: i128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(b - b'0')))
            .ok_or_else(too_large)?;
    }
    // `digits <= scale` was checked above, so the exponent cannot underflow.
    let padding = scale - u32::try_from(digits).map_err(|_| too_large())?;
    value
        .checked_mul(10i128.checked_pow(padding).ok_or_else(too_large)?)
        .ok_or_else(too_large)
}

/// Writes `value` units of `10^-scale` as a decimal string without trailing zeros
/// beyond `min_fraction` digits ("3.00" for 3 with `min_fraction` 2).
pub fn format_scaled(value: i128, scale: u32, min_fraction: u32) -> String {
    let unit = 10i128.pow(scale);
    let sign = if value < 0 { "-" } else { "" };
    let magnitude = value.unsigned_abs();
    let unit = unit.unsigned_abs();
    let whole = magnitude / unit;
    let mut fraction = format!("{:0width$}", magnitude % unit, width = scale as usize);
    while fraction.len() > min_fraction as usize && fraction.ends_with('0') {
        fraction.pop();
    }
    if fraction.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly() {
        assert_eq!(parse_scaled("3.00", 12), Ok(3_000_000_000_000));
        assert_eq!(parse_scaled("0.035", 12), Ok(35_000_000_000));
        assert_eq!(parse_scaled("15", 6), Ok(15_000_000));
        assert_eq!(parse_scaled("0.000000000001", 12), Ok(1));
    }

    #[test]
    fn refuses_what_is_not_a_plain_decimal() {
        for bad in ["-1", "1e3", "3.", ".5", "1.2.3", "abc", " 1 2", "+1"] {
            assert!(
                matches!(parse_scaled(bad, 12), Err(DecimalError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(parse_scaled("", 12), Err(DecimalError::Empty));
        assert!(matches!(
            parse_scaled("0.0000001", 6),
            Err(DecimalError::TooPrecise {
                digits: 7,
                max: 6,
                ..
            })
        ));
        assert!(matches!(
            parse_scaled(&"9".repeat(40), 12),
            Err(DecimalError::TooLarge(_))
        ));
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_scaled(3_000_000_000_000, 12, 2), "3.00");
        assert_eq!(format_scaled(35_000_000_000, 12, 2), "0.035");
        assert_eq!(format_scaled(-1_500_000, 6, 0), "-1.5");
    }
}
