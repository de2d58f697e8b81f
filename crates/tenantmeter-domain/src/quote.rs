//! Quotes: the provider cost and the tenant charge of some usage.
//!
//! A quote prices `lines` on top of `period_to_date`, the tenant's earlier usage
//! in the same billing period. Every figure is the difference of two rounded
//! cumulative figures: `round(F(before + lines)) - round(F(before))`. Summing the
//! quotes of consecutive events therefore telescopes to `round(F(period))`: the
//! charge of a period is the same however its usage was split into events, to the
//! nano-USD, with graduated, volume and package tiers alike.

use crate::ids::{ModelId, PlanId, TenantId};
use crate::money::{ATTOS_PER_NANO, AttoUsd, round_half_even};
use crate::pricebook::{Offering, PriceBook, PriceKey, PriceScope, TokenPrices};
use crate::ratecard::Plan;
use crate::usage::{TokenKind, TokenUsage};

/// Whose rate card prices the charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The tenant's assigned plan (or the default plan).
    Tenant(TenantId),
    /// A named plan.
    Plan(PlanId),
    /// The default plan.
    DefaultPlan,
}

/// Usage of one model at one price key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteLine {
    /// Bedrock model id.
    pub model_id: ModelId,
    /// Token counts.
    pub usage: TokenUsage,
    /// Region; `None` means the book's default region.
    pub region: Option<String>,
    /// On-demand or batch.
    pub offering: Offering,
    /// Regional or global.
    pub scope: PriceScope,
}

/// The price of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineQuote {
    /// The list price key the line was priced at.
    pub key: PriceKey,
    /// Provider cost, nano-USD.
    pub provider_cost_nanos: i64,
    /// Rated value under the plan, nano-USD.
    pub rated_value_nanos: i64,
}

/// The share of a quote one tier produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierQuote {
    /// Tier position in the plan.
    pub index: usize,
    /// Rated value of the quote inside the tier, nano-USD.
    pub rated_value_nanos: i64,
    /// Charge the tier adds, nano-USD.
    pub charge_nanos: i64,
}

/// A computed quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// Plan that priced the charge.
    pub plan_id: PlanId,
    /// Price book version used.
    pub price_book_version: u64,
    /// Provider cost of the lines, nano-USD.
    pub provider_cost_nanos: i64,
    /// Tenant charge of the lines, nano-USD (negative only under volume tiers).
    pub tenant_charge_nanos: i64,
    /// Rated value of the lines, nano-USD.
    pub rated_value_nanos: i64,
    /// Per line, in input order; sums to the totals exactly.
    pub lines: Vec<LineQuote>,
    /// Tiers the quote touched, in tier order; sums to the charge exactly.
    pub tiers: Vec<TierQuote>,
    /// Charge of `period_to_date` alone, nano-USD.
    pub period_to_date_charge_nanos: i64,
    /// Charge of the period including the lines, nano-USD.
    pub period_total_charge_nanos: i64,
}

/// Why a quote could not be computed. `field` is the contract's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// No list price for the line's model, region, offering and scope.
    #[error("{field}: no list price for {key}")]
    UnknownModel {
        /// Path of the line's model_id.
        field: String,
        /// The key looked up.
        key: PriceKey,
    },
    /// The named plan does not exist.
    #[error("plan {0:?} does not exist")]
    UnknownPlan(PlanId),
    /// Usage of a token kind the model has no price for.
    #[error("{field}: {key} has no price for {kind}", kind = kind.field_name())]
    UnpricedTokenKind {
        /// Path of the token count.
        field: String,
        /// The price key.
        key: PriceKey,
        /// The kind.
        kind: TokenKind,
    },
    /// An amount grew beyond what the contract's integers hold.
    #[error("{field}: the amount is too large to price exactly")]
    Overflow {
        /// Path of the field whose amount overflowed.
        field: String,
    },
}

fn overflow(field: &str) -> QuoteError {
    QuoteError::Overflow {
        field: field.to_owned(),
    }
}

fn to_i64(value: i128, field: &str) -> Result<i64, QuoteError> {
    i64::try_from(value).map_err(|_| overflow(field))
}

fn nanos(value: AttoUsd) -> i128 {
    round_half_even(value.0, ATTOS_PER_NANO)
}

/// The price key, exact list cost and exact rated value (under `plan`) of one
/// line; `field` is the line's path for errors.
pub fn price_line(
    book: &PriceBook,
    plan: &Plan,
    line: &QuoteLine,
    field: &str,
) -> Result<(PriceKey, AttoUsd, AttoUsd), QuoteError> {
    let key = PriceKey {
        model_id: line.model_id.clone(),
        region: line
            .region
            .clone()
            .unwrap_or_else(|| book.default_region.clone()),
        offering: line.offering,
        scope: line.scope,
    };
    let Some(list) = book.prices.get(&key) else {
        return Err(QuoteError::UnknownModel {
            field: format!("{field}.model_id"),
            key,
        });
    };
    let rated_prices: TokenPrices = plan
        .overrides
        .get(&line.model_id)
        .map_or(list.prices, |own| own.or(&list.prices));
    let mut cost = AttoUsd::ZERO;
    let mut rated = AttoUsd::ZERO;
    for kind in TokenKind::ALL {
        let tokens = line.usage.get(kind);
        if tokens == 0 {
            continue;
        }
        let kind_field = format!("{field}.usage.{}", kind.field_name());
        let (Some(list_price), Some(rated_price)) = (list.prices.get(kind), rated_prices.get(kind))
        else {
            return Err(QuoteError::UnpricedTokenKind {
                field: kind_field,
                key,
                kind,
            });
        };
        let add = |total: AttoUsd, price: crate::money::PricePerToken| {
            price.cost(tokens).and_then(|c| total.checked_add(c))
        };
        cost = add(cost, list_price).ok_or_else(|| overflow(&kind_field))?;
        rated = add(rated, rated_price).ok_or_else(|| overflow(&kind_field))?;
    }
    Ok((key, cost, rated))
}

/// Prices `lines` after `period_to_date` for `subject` with `book`.
pub fn quote(
    book: &PriceBook,
    subject: &Subject,
    lines: &[QuoteLine],
    period_to_date: &[QuoteLine],
) -> Result<Quote, QuoteError> {
    let plan = match subject {
        Subject::Tenant(tenant) => book.plan_of(tenant).map(|(plan, _)| plan),
        Subject::Plan(plan) => book.plans.get(plan),
        Subject::DefaultPlan => book.plans.get(&book.default_plan),
    }
    .ok_or_else(|| {
        QuoteError::UnknownPlan(match subject {
            Subject::Tenant(tenant) => book
                .assignments
                .get(tenant)
                .cloned()
                .unwrap_or_else(|| book.default_plan.clone()),
            Subject::Plan(plan) => plan.clone(),
            Subject::DefaultPlan => book.default_plan.clone(),
        })
    })?;

    let (mut cost_before, mut rated_before) = (AttoUsd::ZERO, AttoUsd::ZERO);
    for (index, line) in period_to_date.iter().enumerate() {
        let field = format!("period_to_date[{index}]");
        let (_, cost, rated) = price_line(book, plan, line, &field)?;
        cost_before = cost_before
            .checked_add(cost)
            .ok_or_else(|| overflow(&field))?;
        rated_before = rated_before
            .checked_add(rated)
            .ok_or_else(|| overflow(&field))?;
    }

    let (mut cost_after, mut rated_after) = (cost_before, rated_before);
    let mut line_quotes = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        let field = format!("lines[{index}]");
        let (key, cost, rated) = price_line(book, plan, line, &field)?;
        let next_cost = cost_after
            .checked_add(cost)
            .ok_or_else(|| overflow(&field))?;
        let next_rated = rated_after
            .checked_add(rated)
            .ok_or_else(|| overflow(&field))?;
        line_quotes.push(LineQuote {
            key,
            provider_cost_nanos: to_i64(nanos(next_cost) - nanos(cost_after), &field)?,
            rated_value_nanos: to_i64(nanos(next_rated) - nanos(rated_after), &field)?,
        });
        (cost_after, rated_after) = (next_cost, next_rated);
    }

    let charges_before = plan
        .cumulative_tier_charges(rated_before)
        .ok_or_else(|| overflow("period_to_date"))?;
    let charges_after = plan
        .cumulative_tier_charges(rated_after)
        .ok_or_else(|| overflow("lines"))?;
    let own = |cumulative: &[i128], k: usize| {
        cumulative[k] - k.checked_sub(1).map_or(0, |j| cumulative[j])
    };
    // Cumulative rated value up to each tier's bound is min(v, bound).
    let rated_through = |value: AttoUsd, k: usize| {
        nanos(match plan.tiers[k].up_to {
            Some(bound) => value.min(bound),
            None => value,
        })
    };
    let rated_own = |value: AttoUsd, k: usize| {
        rated_through(value, k) - k.checked_sub(1).map_or(0, |j| rated_through(value, j))
    };
    let mut tiers = Vec::new();
    for k in 0..plan.tiers.len() {
        let charge = own(&charges_after, k) - own(&charges_before, k);
        let rated = rated_own(rated_after, k) - rated_own(rated_before, k);
        if charge != 0 || rated != 0 {
            tiers.push(TierQuote {
                index: k,
                rated_value_nanos: to_i64(rated, "lines")?,
                charge_nanos: to_i64(charge, "lines")?,
            });
        }
    }

    let last = |cumulative: &[i128]| cumulative.last().copied().unwrap_or(0);
    let before_total = last(&charges_before);
    let after_total = last(&charges_after);
    Ok(Quote {
        plan_id: plan.id.clone(),
        price_book_version: book.version,
        provider_cost_nanos: to_i64(nanos(cost_after) - nanos(cost_before), "lines")?,
        tenant_charge_nanos: to_i64(after_total - before_total, "lines")?,
        rated_value_nanos: to_i64(nanos(rated_after) - nanos(rated_before), "lines")?,
        lines: line_quotes,
        tiers,
        period_to_date_charge_nanos: to_i64(before_total, "period_to_date")?,
        period_total_charge_nanos: to_i64(after_total, "lines")?,
    })
}
