//! Money: exact integers, one rounding rule.
//!
//! - Inside the domain every amount is an [`AttoUsd`]: an `i128` count of 1e-18 USD.
//!   A price of at most 12 decimals in USD per 1,000,000 tokens is a whole number of
//!   atto-USD per token, so `tokens × price` is exact.
//! - Amounts leave the domain as nano-USD (`i64`, the contract's `*_nanos_usd`),
//!   rounded **half to even** by [`round_half_even`], and only ever as the
//!   difference of two rounded cumulative figures (see [`crate::quote`]). Rounding
//!   each piece separately would make the sum of per-event charges drift from the
//!   charge of the summed usage; rounding cumulative figures cannot.

use crate::decimal::{self, DecimalError};

/// Atto-USD in one nano-USD.
pub const ATTOS_PER_NANO: i128 = 1_000_000_000;
/// Atto-USD in one USD.
pub const ATTOS_PER_USD: i128 = 1_000_000_000_000_000_000;
/// Digits after the point a USD amount may have (one atto-USD).
pub const USD_SCALE: u32 = 18;
/// Digits after the point a price in USD per 1M tokens may have: one
/// atto-USD per token.
pub const PRICE_SCALE: u32 = 12;

/// An exact amount of money in atto-USD (1e-18 USD).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttoUsd(pub i128);

impl AttoUsd {
    /// Zero dollars.
    pub const ZERO: Self = Self(0);

    /// Parses a USD amount written as a decimal string, e.g. `"1000"` or `"0.5"`.
    pub fn parse_usd(text: &str) -> Result<Self, DecimalError> {
        decimal::parse_scaled(text, USD_SCALE).map(Self)
    }

    /// Adds, or `None` on overflow.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Self)
    }

    /// Rounds to nano-USD, half to even; `None` if it does not fit an `i64`.
    pub fn to_nanos(self) -> Option<i64> {
        i64::try_from(round_half_even(self.0, ATTOS_PER_NANO)).ok()
    }

    /// The amount as a USD decimal string with at least two decimals.
    pub fn to_usd_string(self) -> String {
        decimal::format_scaled(self.0, USD_SCALE, 2)
    }
}

/// A price per token in atto-USD, parsed from USD per 1,000,000 tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PricePerToken(pub i128);

impl PricePerToken {
    /// Parses USD per 1M tokens (`"3.00"`, `"0.035"`), at most 12 decimals.
    pub fn parse_per_million(text: &str) -> Result<Self, DecimalError> {
        // 1e-12 USD per 1M tokens is 1e-18 USD per token: the scaled integer *is*
        // the atto-USD price of one token.
        decimal::parse_scaled(text, PRICE_SCALE).map(Self)
    }

    /// The price as USD per 1M tokens, at least two decimals.
    pub fn to_per_million_string(self) -> String {
        decimal::format_scaled(self.0, PRICE_SCALE, 2)
    }

    /// Cost of `tokens` tokens; `None` on overflow (beyond ~1e20 USD).
    pub fn cost(self, tokens: u64) -> Option<AttoUsd> {
        self.0.checked_mul(i128::from(tokens)).map(AttoUsd)
    }
}

/// `numerator / denominator` rounded to the nearest integer, ties to even.
///
/// `denominator` must be positive; callers pass constants.
pub fn round_half_even(numerator: i128, denominator: i128) -> i128 {
    debug_assert!(denominator > 0);
    let quotient = numerator.div_euclid(denominator);
    let remainder = numerator.rem_euclid(denominator);
    // remainder is in [0, denominator): compare 2r with d without overflow.
    let half_diff = remainder - (denominator - remainder);
    match half_diff.signum() {
        -1 => quotient,
        1 => quotient + 1,
        _ => quotient + quotient.rem_euclid(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_both_signs() {
        assert_eq!(round_half_even(15, 10), 2);
        assert_eq!(round_half_even(25, 10), 2);
        assert_eq!(round_half_even(26, 10), 3);
        assert_eq!(round_half_even(24, 10), 2);
        assert_eq!(round_half_even(-15, 10), -2);
        assert_eq!(round_half_even(-25, 10), -2);
        assert_eq!(round_half_even(-26, 10), -3);
        assert_eq!(round_half_even(0, 10), 0);
    }

    #[test]
    fn sonnet_list_price_of_a_million_tokens_is_three_dollars() {
        let price = PricePerToken::parse_per_million("3.00").unwrap();
        let cost = price.cost(1_000_000).unwrap();
        assert_eq!(cost, AttoUsd(3 * ATTOS_PER_USD));
        assert_eq!(cost.to_nanos(), Some(3_000_000_000));
    }

    #[test]
    fn sub_nano_prices_are_exact() {
        // Nova Micro cache read: $0.00875 per 1M tokens = 8.75 nano-USD per token.
        let price = PricePerToken::parse_per_million("0.00875").unwrap();
        assert_eq!(price.cost(1).unwrap(), AttoUsd(8_750_000_000));
        assert_eq!(price.to_per_million_string(), "0.00875");
    }
}
