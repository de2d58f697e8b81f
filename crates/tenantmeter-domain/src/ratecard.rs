//! Rate cards: what the product charges its tenants.
//!
//! A plan prices a billing period in three steps:
//! 1. **Rated value**: the period's usage priced per token kind at list price, or
//!    at the plan's own price for models it overrides ([`Plan::overrides`]).
//! 2. **Tiers** turn the period's cumulative rated value `v` into a charge `G(v)`:
//!    graduated (each tier prices the slab of `v` inside it) or volume (the tier
//!    `v` falls in prices all of `v`). A tier's rate is a multiplier on rated
//!    value or a price per started package of rated value.
//! 3. **Adjustment**: a markup or discount in basis points on `G(v)`.
//!
//! All of it is exact: `G(v)` is kept in 1e-28 USD (atto-USD × ppm × bps) and only
//! rounded, half to even, to nano-USD by [`Plan::cumulative_tier_charges`].

use std::collections::BTreeMap;

use crate::decimal::{self, DecimalError};
use crate::ids::{ModelId, PlanId};
use crate::money::{AttoUsd, round_half_even};
use crate::pricebook::TokenPrices;

/// Parts per million: the unit of a tier multiplier ("1.25" = 1_250_000).
pub const PPM: i128 = 1_000_000;
/// Basis points in one whole.
pub const BPS: i128 = 10_000;
/// 1e-28 USD units (the exact charge unit) in one nano-USD.
const CHARGE_UNITS_PER_NANO: i128 = 10_000_000_000_000_000_000;

/// How tiers turn the period's rated value into a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierMode {
    /// Each tier prices the slab of rated value inside it.
    Graduated,
    /// The tier containing the whole rated value prices all of it.
    Volume,
}

/// What rated value inside a tier costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierRate {
    /// Charge per unit of rated value, in parts per million (1_000_000 = at value).
    Multiplier(i128),
    /// Every started package of `size` rated value costs `price`.
    Package {
        /// Rated value per package; positive.
        size: AttoUsd,
        /// Price of one package.
        price: AttoUsd,
    },
}

impl TierRate {
    /// Parses a multiplier written as a decimal string, at most 6 decimals.
    pub fn parse_multiplier(text: &str) -> Result<Self, DecimalError> {
        decimal::parse_scaled(text, 6).map(Self::Multiplier)
    }

    /// The charge of `amount` rated value at this rate, in 1e-24 USD.
    fn price(self, amount: AttoUsd) -> Option<i128> {
        match self {
            Self::Multiplier(ppm) => amount.0.checked_mul(ppm),
            Self::Package { size, price } => {
                // Ceiling division of a non-negative amount by a positive size.
                let packages = amount.0.checked_add(size.0 - 1)? / size.0;
                packages.checked_mul(price.0)?.checked_mul(PPM)
            }
        }
    }
}

/// One tier: rated value up to `up_to` (inclusive; `None` = unbounded) at `rate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Upper bound of the tier's range of period rated value.
    pub up_to: Option<AttoUsd>,
    /// Price of rated value in the tier.
    pub rate: TierRate,
}

/// Default limits a plan's tenants are held to. Zero means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanLimits {
    /// Requests per rolling minute.
    pub requests_per_minute: u64,
    /// Tokens of every kind per rolling minute.
    pub tokens_per_minute: u64,
    /// Hard cap on a period's tenant charge, nano-USD.
    pub period_budget_nanos: i64,
}

/// Why a plan was refused; `field` is the contract's path to the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PlanError {
    /// Path of the offending field, e.g. `tiers[1].up_to_usd`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl PlanError {
    /// A plan error at `field`.
    pub fn new(field: impl Into<String>, reason: impl ToString) -> Self {
        Self {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

/// A validated rate card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Plan id.
    pub id: PlanId,
    /// Human name.
    pub display_name: String,
    /// Graduated or volume.
    pub mode: TierMode,
    /// Tiers with strictly increasing bounds; only the last is unbounded.
    pub tiers: Vec<Tier>,
    /// Markup (+) or discount (-) in basis points; at least -10000.
    pub adjustment_bps: i32,
    /// Per-model prices that replace list prices in the rated value; a kind
    /// left `None` keeps its list price.
    pub overrides: BTreeMap<ModelId, TokenPrices>,
    /// Default enforced limits.
    pub limits: PlanLimits,
    /// Expected spend of a new tenant, nano-USD of charge per hour.
    pub expected_charge_nanos_per_hour: i64,
}

impl Plan {
    /// Checks the invariants the charge arithmetic relies on.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.tiers.is_empty() {
            return Err(PlanError::new("tiers", "at least one tier is required"));
        }
        let last = self.tiers.len() - 1;
        let mut previous = AttoUsd::ZERO;
        for (index, tier) in self.tiers.iter().enumerate() {
            match (tier.up_to, index == last) {
                (Some(_), true) => {
                    return Err(PlanError::new(
                        format!("tiers[{index}].up_to_usd"),
                        "the last tier must be unbounded (leave up_to_usd empty)",
                    ));
                }
                (None, false) => {
                    return Err(PlanError::new(
                        format!("tiers[{index}].up_to_usd"),
                        "only the last tier may be unbounded",
                    ));
                }
                (Some(bound), false) if bound <= previous => {
                    return Err(PlanError::new(
                        format!("tiers[{index}].up_to_usd"),
                        format!(
                            "must be greater than the previous bound {}",
                            previous.to_usd_string()
                        ),
                    ));
                }
                (Some(bound), false) => previous = bound,
                (None, true) => {}
            }
            match tier.rate {
                TierRate::Multiplier(ppm) if ppm < 0 => {
                    return Err(PlanError::new(
                        format!("tiers[{index}].multiplier"),
                        "must not be negative",
                    ));
                }
                TierRate::Package { size, .. } if size.0 <= 0 => {
                    return Err(PlanError::new(
                        format!("tiers[{index}].package.size_usd"),
                        "must be greater than zero",
                    ));
                }
                TierRate::Package { price, .. } if price.0 < 0 => {
                    return Err(PlanError::new(
                        format!("tiers[{index}].package.price_usd"),
                        "must not be negative",
                    ));
                }
                TierRate::Multiplier(_) | TierRate::Package { .. } => {}
            }
        }
        if i128::from(self.adjustment_bps) < -BPS {
            return Err(PlanError::new(
                "adjustment_bps",
                "a discount cannot exceed 100% (-10000)",
            ));
        }
        if self.expected_charge_nanos_per_hour < 0 {
            return Err(PlanError::new(
                "expected_charge_nanos_usd_per_hour",
                "must not be negative",
            ));
        }
        if self.limits.period_budget_nanos < 0 {
            return Err(PlanError::new(
                "limits.period_budget_nanos_usd",
                "must not be negative",
            ));
        }
        Ok(())
    }

    /// Lower bound of tier `index` (the previous tier's upper bound).
    fn lower_bound(&self, index: usize) -> AttoUsd {
        index
            .checked_sub(1)
            .and_then(|previous| self.tiers.get(previous))
            .and_then(|tier| tier.up_to)
            .unwrap_or(AttoUsd::ZERO)
    }

    /// The part of a period rated value `value` that lies inside tier `index`.
    pub fn slab(&self, index: usize, value: AttoUsd) -> AttoUsd {
        let low = self.lower_bound(index);
        let above = (value.0 - low.0).max(0);
        match self.tiers.get(index).and_then(|tier| tier.up_to) {
            Some(high) => AttoUsd(above.min(high.0 - low.0)),
            None => AttoUsd(above),
        }
    }

    /// Index of the tier a period rated value falls in (bounds are inclusive).
    pub fn tier_of(&self, value: AttoUsd) -> usize {
        self.tiers
            .iter()
            .position(|tier| tier.up_to.is_none_or(|bound| value <= bound))
            .unwrap_or(self.tiers.len().saturating_sub(1))
    }

    /// Tier `index`'s part of `G(value)` before adjustment, in 1e-24 USD.
    fn tier_price(&self, index: usize, value: AttoUsd) -> Option<i128> {
        let tier = self.tiers.get(index)?;
        match self.mode {
            TierMode::Graduated => tier.rate.price(self.slab(index, value)),
            TierMode::Volume if self.tier_of(value) == index => tier.rate.price(value),
            TierMode::Volume => Some(0),
        }
    }

    /// For a period whose cumulative rated value is `value`: the adjusted charge
    /// of tiers `0..=k`, rounded half to even to nano-USD, for every `k`.
    ///
    /// Element `k` minus element `k-1` is tier `k`'s charge; the last element is
    /// the period's charge. Rounding cumulative sums (not each tier) makes the
    /// tiers' charges add up to the period's charge exactly. `None` on overflow
    /// (a period charge beyond ~1e10 USD).
    pub fn cumulative_tier_charges(&self, value: AttoUsd) -> Option<Vec<i128>> {
        let factor = BPS.checked_add(i128::from(self.adjustment_bps))?;
        let mut running: i128 = 0;
        let mut cumulative = Vec::with_capacity(self.tiers.len());
        for index in 0..self.tiers.len() {
            running = running.checked_add(self.tier_price(index, value)?)?;
            let exact = running.checked_mul(factor)?;
            cumulative.push(round_half_even(exact, CHARGE_UNITS_PER_NANO));
        }
        Some(cumulative)
    }

    /// The rounded charge of a whole period of rated value `value`, nano-USD.
    pub fn period_charge_nanos(&self, value: AttoUsd) -> Option<i128> {
        self.cumulative_tier_charges(value)?.last().copied()
    }

    /// The least period rated value whose charge reaches `charge_nanos`, so a
    /// cap on the tenant charge can be enforced as a cap on rated value (which
    /// each event adds to without knowing the period so far). `None` when no
    /// rated value reaches it (zero rates) or the search overflows.
    ///
    /// Exact for graduated tiers, whose charge never decreases; under volume
    /// tiers a charge can be reached, lost at a cheaper tier and reached again,
    /// and this returns the first crossing.
    pub fn rated_value_reaching(&self, charge_nanos: i128) -> Option<AttoUsd> {
        let target = charge_nanos;
        if target <= 0 {
            return Some(AttoUsd::ZERO);
        }
        let reaches = |v: i128| {
            self.period_charge_nanos(AttoUsd(v))
                .is_some_and(|charge| charge >= target)
        };
        // Find an upper bound by doubling from one nano-USD, then bisect.
        let mut high: i128 = crate::money::ATTOS_PER_NANO;
        while !reaches(high) {
            high = high.checked_mul(2)?;
            if high > i128::MAX / 1_000_000_000_000 {
                return None;
            }
        }
        let mut low: i128 = 0;
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if reaches(mid) {
                high = mid;
            } else {
                low = mid;
            }
        }
        Some(AttoUsd(high))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::ATTOS_PER_USD;

    fn usd(n: i128) -> AttoUsd {
        AttoUsd(n * ATTOS_PER_USD)
    }

    fn plan(mode: TierMode, tiers: Vec<Tier>, adjustment_bps: i32) -> Plan {
        Plan {
            id: PlanId::parse("p").unwrap(),
            display_name: String::new(),
            mode,
            tiers,
            adjustment_bps,
            overrides: BTreeMap::new(),
            limits: PlanLimits::default(),
            expected_charge_nanos_per_hour: 0,
        }
    }

    fn three_tiers(mode: TierMode) -> Plan {
        plan(
            mode,
            vec![
                Tier {
                    up_to: Some(usd(100)),
                    rate: TierRate::Multiplier(1_500_000),
                },
                Tier {
                    up_to: Some(usd(1000)),
                    rate: TierRate::Multiplier(1_200_000),
                },
                Tier {
                    up_to: None,
                    rate: TierRate::Multiplier(1_000_000),
                },
            ],
            0,
        )
    }

    const NANOS: i128 = 1_000_000_000;

    #[test]
    fn graduated_known_table() {
        let p = three_tiers(TierMode::Graduated);
        // $2000 of rated value: 100*1.5 + 900*1.2 + 1000*1.0 = 150 + 1080 + 1000
        assert_eq!(
            p.cumulative_tier_charges(usd(2000)),
            Some(vec![150 * NANOS, 1230 * NANOS, 2230 * NANOS])
        );
    }

    #[test]
    fn volume_known_table_and_its_cliff() {
        let p = three_tiers(TierMode::Volume);
        assert_eq!(p.period_charge_nanos(usd(100)), Some(150 * NANOS));
        // One atto past the bound reprices everything at 1.2.
        let past = AttoUsd(usd(100).0 + 1);
        assert_eq!(p.tier_of(past), 1);
        assert_eq!(p.period_charge_nanos(past), Some(120 * NANOS));
        assert_eq!(p.period_charge_nanos(usd(2000)), Some(2000 * NANOS));
    }

    #[test]
    fn packages_are_charged_per_started_package() {
        let p = plan(
            TierMode::Graduated,
            vec![Tier {
                up_to: None,
                rate: TierRate::Package {
                    size: usd(10),
                    price: usd(9),
                },
            }],
            0,
        );
        assert_eq!(p.period_charge_nanos(usd(0)), Some(0));
        assert_eq!(p.period_charge_nanos(AttoUsd(1)), Some(9 * NANOS));
        assert_eq!(p.period_charge_nanos(usd(10)), Some(9 * NANOS));
        assert_eq!(p.period_charge_nanos(usd(25)), Some(27 * NANOS));
    }

    #[test]
    fn adjustment_applies_after_tiers() {
        let mut p = three_tiers(TierMode::Graduated);
        p.adjustment_bps = -1000;
        assert_eq!(p.period_charge_nanos(usd(100)), Some(135 * NANOS));
    }

    #[test]
    fn the_rated_value_reaching_a_charge_is_the_least_one() {
        let p = three_tiers(TierMode::Graduated);
        for target in [150 * NANOS, 1230 * NANOS + 1, 7] {
            let v = p.rated_value_reaching(target).unwrap();
            assert!(p.period_charge_nanos(v).unwrap() >= target);
            assert!(p.period_charge_nanos(AttoUsd(v.0 - 1)).unwrap() < target);
        }
        // $150 of charge is about $100 of rated value at 1.5x (less by the
        // half nano-USD that rounding gives away).
        let v = p.rated_value_reaching(150 * NANOS).unwrap();
        assert!(usd(100).0 - v.0 < crate::money::ATTOS_PER_NANO);
        let free = plan(
            TierMode::Graduated,
            vec![Tier {
                up_to: None,
                rate: TierRate::Multiplier(0),
            }],
            0,
        );
        assert_eq!(free.rated_value_reaching(1), None);
    }

    #[test]
    fn validation_names_the_field() {
        let mut p = three_tiers(TierMode::Graduated);
        p.tiers[1].up_to = Some(usd(50));
        assert_eq!(p.validate().unwrap_err().field, "tiers[1].up_to_usd");
        let mut p = three_tiers(TierMode::Graduated);
        p.tiers[2].up_to = Some(usd(5000));
        assert_eq!(p.validate().unwrap_err().field, "tiers[2].up_to_usd");
        let mut p = three_tiers(TierMode::Graduated);
        p.adjustment_bps = -10001;
        assert_eq!(p.validate().unwrap_err().field, "adjustment_bps");
        assert!(three_tiers(TierMode::Volume).validate().is_ok());
    }
}
