//! Conversions between the contract's messages and the domain's types. Every
//! value a caller sends is validated here, and every refusal names the field.

use std::collections::BTreeMap;

use tenantmeter_domain::ids::{ModelId, PlanId, TenantId};
use tenantmeter_domain::money::{AttoUsd, PricePerToken};
use tenantmeter_domain::pricebook::{
    ModelPrice, Offering, PriceBook, PriceKey, PriceScope, TokenPrices,
};
use tenantmeter_domain::quote::{Quote, QuoteLine};
use tenantmeter_domain::ratecard::{Plan, PlanLimits, Tier, TierMode, TierRate};
use tenantmeter_domain::usage::{TokenKind, TokenUsage};
use tenantmeter_proto::v1 as pb;

use crate::error::PricingError;

fn invalid(field: impl Into<String>, reason: impl ToString) -> PricingError {
    PricingError::InvalidArgument {
        field: field.into(),
        reason: reason.to_string(),
    }
}

/// Token counts from the contract; negative counts are refused by field name.
pub fn usage_from_proto(
    usage: Option<&pb::TokenUsage>,
    field: &str,
) -> Result<TokenUsage, PricingError> {
    let Some(usage) = usage else {
        return Ok(TokenUsage::default());
    };
    let mut out = TokenUsage::default();
    for (kind, value) in TokenKind::ALL.into_iter().zip([
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_input_tokens,
        usage.cache_write_input_tokens,
    ]) {
        let count = u64::try_from(value).map_err(|_| {
            invalid(
                format!("{field}.{}", kind.field_name()),
                format!("must not be negative (got {value})"),
            )
        })?;
        out.set(kind, count);
    }
    Ok(out)
}

fn offering_from_proto(value: i32, field: &str) -> Result<Offering, PricingError> {
    match pb::Offering::try_from(value) {
        Ok(pb::Offering::Unspecified | pb::Offering::OnDemand) => Ok(Offering::OnDemand),
        Ok(pb::Offering::Batch) => Ok(Offering::Batch),
        Err(_) => Err(invalid(field, format!("unknown offering {value}"))),
    }
}

fn scope_from_proto(value: i32, field: &str) -> Result<PriceScope, PricingError> {
    match pb::PriceScope::try_from(value) {
        Ok(pb::PriceScope::Unspecified | pb::PriceScope::Regional) => Ok(PriceScope::Regional),
        Ok(pb::PriceScope::Global) => Ok(PriceScope::Global),
        Err(_) => Err(invalid(field, format!("unknown scope {value}"))),
    }
}

fn offering_to_proto(offering: Offering) -> pb::Offering {
    match offering {
        Offering::OnDemand => pb::Offering::OnDemand,
        Offering::Batch => pb::Offering::Batch,
    }
}

fn scope_to_proto(scope: PriceScope) -> pb::PriceScope {
    match scope {
        PriceScope::Regional => pb::PriceScope::Regional,
        PriceScope::Global => pb::PriceScope::Global,
    }
}

/// Parses a model id field.
pub fn model_id(text: &str, field: &str) -> Result<ModelId, PricingError> {
    ModelId::parse(text).map_err(|e| invalid(field, e))
}

/// Parses a tenant id field.
pub fn tenant_id(text: &str, field: &str) -> Result<TenantId, PricingError> {
    TenantId::parse(text).map_err(|e| invalid(field, e))
}

/// Parses a plan id field.
pub fn plan_id(text: &str, field: &str) -> Result<PlanId, PricingError> {
    PlanId::parse(text).map_err(|e| invalid(field, e))
}

/// A quote line from the contract.
pub fn quote_line_from_proto(line: &pb::QuoteLine, field: &str) -> Result<QuoteLine, PricingError> {
    Ok(QuoteLine {
        model_id: model_id(&line.model_id, &format!("{field}.model_id"))?,
        usage: usage_from_proto(line.usage.as_ref(), &format!("{field}.usage"))?,
        region: (!line.region.is_empty()).then(|| line.region.clone()),
        offering: offering_from_proto(line.offering, &format!("{field}.offering"))?,
        scope: scope_from_proto(line.scope, &format!("{field}.scope"))?,
    })
}

fn token_prices_from_proto(
    prices: Option<&pb::TokenPrices>,
    field: &str,
) -> Result<TokenPrices, PricingError> {
    let mut out = TokenPrices::default();
    let Some(prices) = prices else {
        return Ok(out);
    };
    for (kind, (name, text)) in TokenKind::ALL.into_iter().zip([
        (
            "input_usd_per_million_tokens",
            &prices.input_usd_per_million_tokens,
        ),
        (
            "output_usd_per_million_tokens",
            &prices.output_usd_per_million_tokens,
        ),
        (
            "cache_read_usd_per_million_tokens",
            &prices.cache_read_usd_per_million_tokens,
        ),
        (
            "cache_write_usd_per_million_tokens",
            &prices.cache_write_usd_per_million_tokens,
        ),
    ]) {
        if text.is_empty() {
            continue;
        }
        let price = PricePerToken::parse_per_million(text)
            .map_err(|e| invalid(format!("{field}.{name}"), e))?;
        out.set(kind, Some(price));
    }
    Ok(out)
}

fn token_prices_to_proto(prices: &TokenPrices) -> pb::TokenPrices {
    let text = |kind| {
        prices
            .get(kind)
            .map(PricePerToken::to_per_million_string)
            .unwrap_or_default()
    };
    pb::TokenPrices {
        input_usd_per_million_tokens: text(TokenKind::Input),
        output_usd_per_million_tokens: text(TokenKind::Output),
        cache_read_usd_per_million_tokens: text(TokenKind::CacheRead),
        cache_write_usd_per_million_tokens: text(TokenKind::CacheWrite),
    }
}

/// A list price from the contract.
pub fn model_price_from_proto(
    price: &pb::ModelPrice,
    field: &str,
) -> Result<ModelPrice, PricingError> {
    if price.region.trim().is_empty() {
        return Err(invalid(format!("{field}.region"), "must name a region"));
    }
    let prices = token_prices_from_proto(price.prices.as_ref(), &format!("{field}.prices"))?;
    if prices.input.is_none() {
        return Err(invalid(
            format!("{field}.prices.input_usd_per_million_tokens"),
            "every model needs an input price",
        ));
    }
    Ok(ModelPrice {
        key: PriceKey {
            model_id: model_id(&price.model_id, &format!("{field}.model_id"))?,
            region: price.region.clone(),
            offering: offering_from_proto(price.offering, &format!("{field}.offering"))?,
            scope: scope_from_proto(price.scope, &format!("{field}.scope"))?,
        },
        display_name: price.display_name.clone(),
        prices,
    })
}

/// List prices from the contract; `field` names the list.
pub fn model_prices_from_proto(
    prices: &[pb::ModelPrice],
    field: &str,
) -> Result<Vec<ModelPrice>, PricingError> {
    prices
        .iter()
        .enumerate()
        .map(|(index, price)| model_price_from_proto(price, &format!("{field}[{index}]")))
        .collect()
}

/// Plan assignments from the contract: an empty plan id removes the tenant's
/// assignment. `field` names the list.
pub fn assignments_from_proto(
    assignments: &[pb::TenantPlanAssignment],
    field: &str,
) -> Result<Vec<(TenantId, Option<PlanId>)>, PricingError> {
    assignments
        .iter()
        .enumerate()
        .map(|(index, assignment)| {
            let tenant = tenant_id(
                &assignment.tenant_id,
                &format!("{field}[{index}].tenant_id"),
            )?;
            let plan = (!assignment.plan_id.is_empty())
                .then(|| plan_id(&assignment.plan_id, &format!("{field}[{index}].plan_id")))
                .transpose()?;
            Ok((tenant, plan))
        })
        .collect()
}

/// A list price in the contract's form.
pub fn model_price_to_proto(price: &ModelPrice) -> pb::ModelPrice {
    pb::ModelPrice {
        model_id: price.key.model_id.to_string(),
        display_name: price.display_name.clone(),
        region: price.key.region.clone(),
        offering: offering_to_proto(price.key.offering).into(),
        scope: scope_to_proto(price.key.scope).into(),
        prices: Some(token_prices_to_proto(&price.prices)),
    }
}

fn usd_field(text: &str, field: &str) -> Result<AttoUsd, PricingError> {
    AttoUsd::parse_usd(text).map_err(|e| invalid(field, e))
}

/// A plan from the contract, validated.
pub fn plan_from_proto(plan: &pb::Plan, field: &str) -> Result<Plan, PricingError> {
    let at = |name: &str| format!("{field}.{name}");
    let mode = match pb::TierMode::try_from(plan.tier_mode) {
        Ok(pb::TierMode::Graduated) => TierMode::Graduated,
        Ok(pb::TierMode::Volume) => TierMode::Volume,
        Ok(pb::TierMode::Unspecified) | Err(_) => {
            return Err(invalid(
                at("tier_mode"),
                "must be TIER_MODE_GRADUATED or TIER_MODE_VOLUME",
            ));
        }
    };
    let mut tiers = Vec::with_capacity(plan.tiers.len());
    for (index, tier) in plan.tiers.iter().enumerate() {
        let tier_field = |name: &str| at(&format!("tiers[{index}].{name}"));
        let up_to = (!tier.up_to_usd.is_empty())
            .then(|| usd_field(&tier.up_to_usd, &tier_field("up_to_usd")))
            .transpose()?;
        let rate = match &tier.rate {
            Some(pb::tier::Rate::Multiplier(text)) => TierRate::parse_multiplier(text)
                .map_err(|e| invalid(tier_field("multiplier"), e))?,
            Some(pb::tier::Rate::Package(package)) => TierRate::Package {
                size: usd_field(&package.size_usd, &tier_field("package.size_usd"))?,
                price: usd_field(&package.price_usd, &tier_field("package.price_usd"))?,
            },
            None => return Err(invalid(tier_field("rate"), "set multiplier or package")),
        };
        tiers.push(Tier { up_to, rate });
    }
    let mut overrides = BTreeMap::new();
    for (index, o) in plan.model_overrides.iter().enumerate() {
        let base = at(&format!("model_overrides[{index}]"));
        overrides.insert(
            model_id(&o.model_id, &format!("{base}.model_id"))?,
            token_prices_from_proto(o.prices.as_ref(), &format!("{base}.prices"))?,
        );
    }
    let limits = plan.limits.unwrap_or_default();
    let non_negative = |value: i64, name: &str| {
        u64::try_from(value)
            .map_err(|_| invalid(at(name), format!("must not be negative (got {value})")))
    };
    let domain = Plan {
        id: plan_id(&plan.plan_id, &at("plan_id"))?,
        display_name: plan.display_name.clone(),
        mode,
        tiers,
        adjustment_bps: plan.adjustment_bps,
        overrides,
        limits: PlanLimits {
            requests_per_minute: non_negative(
                limits.requests_per_minute,
                "limits.requests_per_minute",
            )?,
            tokens_per_minute: non_negative(limits.tokens_per_minute, "limits.tokens_per_minute")?,
            period_budget_nanos: limits.period_budget_nanos_usd,
        },
        expected_charge_nanos_per_hour: plan.expected_charge_nanos_usd_per_hour,
    };
    domain
        .validate()
        .map_err(|e| invalid(at(&e.field), e.reason))?;
    Ok(domain)
}

/// A plan in the contract's form.
pub fn plan_to_proto(plan: &Plan) -> pb::Plan {
    pb::Plan {
        plan_id: plan.id.to_string(),
        display_name: plan.display_name.clone(),
        tier_mode: match plan.mode {
            TierMode::Graduated => pb::TierMode::Graduated,
            TierMode::Volume => pb::TierMode::Volume,
        }
        .into(),
        tiers: plan
            .tiers
            .iter()
            .map(|tier| pb::Tier {
                up_to_usd: tier.up_to.map(AttoUsd::to_usd_string).unwrap_or_default(),
                rate: Some(match tier.rate {
                    TierRate::Multiplier(ppm) => pb::tier::Rate::Multiplier(
                        tenantmeter_domain::decimal::format_scaled(ppm, 6, 2),
                    ),
                    TierRate::Package { size, price } => pb::tier::Rate::Package(pb::PackageRate {
                        size_usd: size.to_usd_string(),
                        price_usd: price.to_usd_string(),
                    }),
                }),
            })
            .collect(),
        adjustment_bps: plan.adjustment_bps,
        model_overrides: plan
            .overrides
            .iter()
            .map(|(model, prices)| pb::ModelRateOverride {
                model_id: model.to_string(),
                prices: Some(token_prices_to_proto(prices)),
            })
            .collect(),
        period: pb::BillingPeriod::Monthly.into(),
        limits: Some(pb::PlanLimits {
            requests_per_minute: i64::try_from(plan.limits.requests_per_minute).unwrap_or(i64::MAX),
            tokens_per_minute: i64::try_from(plan.limits.tokens_per_minute).unwrap_or(i64::MAX),
            period_budget_nanos_usd: plan.limits.period_budget_nanos,
        }),
        expected_charge_nanos_usd_per_hour: plan.expected_charge_nanos_per_hour,
    }
}

/// The whole book in the contract's form.
pub fn book_to_proto(book: &PriceBook) -> pb::PriceBook {
    pb::PriceBook {
        version: book.version,
        updated_at: Some(tenantmeter_runtime::clock::to_timestamp(book.updated_at)),
        prices_as_of: book.prices_as_of.clone(),
        prices_source: book.prices_source.clone(),
        default_region: book.default_region.clone(),
        default_plan_id: book.default_plan.to_string(),
        prices: book.prices.values().map(model_price_to_proto).collect(),
        plans: book.plans.values().map(plan_to_proto).collect(),
        assignments: book
            .assignments
            .iter()
            .map(|(tenant, plan)| pb::TenantPlanAssignment {
                tenant_id: tenant.to_string(),
                plan_id: plan.to_string(),
            })
            .collect(),
    }
}

/// A whole book from the contract (a `WatchPriceBook` snapshot), validated
/// like every request: each price, plan and assignment with the converters
/// above, plus the book's own invariants (no duplicate keys, the default plan
/// and every assigned plan exist). Refusals name the field, e.g.
/// `plans[2].tiers[0].multiplier` or `assignments[0].plan_id`.
pub fn book_from_proto(book: &pb::PriceBook) -> Result<PriceBook, PricingError> {
    let updated_at = book
        .updated_at
        .as_ref()
        .ok_or_else(|| invalid("updated_at", "is required"))?;
    let updated_at = tenantmeter_runtime::clock::from_timestamp(updated_at)
        .ok_or_else(|| invalid("updated_at", "is not a valid time"))?;
    let mut prices = BTreeMap::new();
    for (index, price) in model_prices_from_proto(&book.prices, "prices")?
        .into_iter()
        .enumerate()
    {
        let key = price.key.clone();
        if prices.insert(key.clone(), price).is_some() {
            return Err(invalid(
                format!("prices[{index}]"),
                format!("repeats the price of {key}"),
            ));
        }
    }
    let mut plans = BTreeMap::new();
    for (index, plan) in book.plans.iter().enumerate() {
        let plan = plan_from_proto(plan, &format!("plans[{index}]"))?;
        let id = plan.id.clone();
        if plans.insert(id.clone(), plan).is_some() {
            return Err(invalid(
                format!("plans[{index}].plan_id"),
                format!("repeats plan {:?}", id.as_str()),
            ));
        }
    }
    let default_plan = plan_id(&book.default_plan_id, "default_plan_id")?;
    if !plans.contains_key(&default_plan) {
        return Err(invalid(
            "default_plan_id",
            format!("plan {:?} is not in plans", default_plan.as_str()),
        ));
    }
    let mut assignments = BTreeMap::new();
    for (index, (tenant, plan)) in assignments_from_proto(&book.assignments, "assignments")?
        .into_iter()
        .enumerate()
    {
        let field = |name: &str| format!("assignments[{index}].{name}");
        let plan = plan.ok_or_else(|| invalid(field("plan_id"), "must name a plan"))?;
        if !plans.contains_key(&plan) {
            return Err(invalid(
                field("plan_id"),
                format!("plan {:?} is not in plans", plan.as_str()),
            ));
        }
        let name = tenant.to_string();
        if assignments.insert(tenant, plan).is_some() {
            return Err(invalid(
                field("tenant_id"),
                format!("repeats tenant {name:?}"),
            ));
        }
    }
    Ok(PriceBook {
        version: book.version,
        updated_at,
        prices_as_of: book.prices_as_of.clone(),
        prices_source: book.prices_source.clone(),
        default_region: book.default_region.clone(),
        default_plan,
        prices,
        plans,
        assignments,
    })
}

/// A computed quote in the contract's form.
pub fn quote_to_proto(quote: &Quote, plan: &Plan) -> pb::QuoteResponse {
    pb::QuoteResponse {
        plan_id: quote.plan_id.to_string(),
        price_book_version: quote.price_book_version,
        provider_cost_nanos_usd: quote.provider_cost_nanos,
        tenant_charge_nanos_usd: quote.tenant_charge_nanos,
        margin_nanos_usd: quote
            .tenant_charge_nanos
            .saturating_sub(quote.provider_cost_nanos),
        rated_value_nanos_usd: quote.rated_value_nanos,
        lines: quote
            .lines
            .iter()
            .map(|line| pb::QuoteLineResult {
                model_id: line.key.model_id.to_string(),
                region: line.key.region.clone(),
                provider_cost_nanos_usd: line.provider_cost_nanos,
                rated_value_nanos_usd: line.rated_value_nanos,
            })
            .collect(),
        tiers: quote
            .tiers
            .iter()
            .map(|tier| pb::TierCharge {
                tier_index: i32::try_from(tier.index).unwrap_or(i32::MAX),
                up_to_usd: plan
                    .tiers
                    .get(tier.index)
                    .and_then(|t| t.up_to)
                    .map(AttoUsd::to_usd_string)
                    .unwrap_or_default(),
                rated_value_nanos_usd: tier.rated_value_nanos,
                charge_nanos_usd: tier.charge_nanos,
            })
            .collect(),
        period_to_date_charge_nanos_usd: quote.period_to_date_charge_nanos,
        period_total_charge_nanos_usd: quote.period_total_charge_nanos,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// The shipped files as a book, with one assignment.
    fn shipped_book() -> PriceBook {
        let seed = crate::load_seed(&crate::PricingConfig::default()).unwrap();
        let mut book = {
            let mut book = seed.apply_to(None);
            book.version = 7;
            book.updated_at = UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
            book
        };
        let plan = book.plans.keys().next().unwrap().clone();
        book.assignments
            .insert(TenantId::parse("acme").unwrap(), plan);
        book
    }

    fn refusal(book: &pb::PriceBook) -> String {
        book_from_proto(book).unwrap_err().to_string()
    }

    #[test]
    fn a_whole_book_survives_the_round_trip() {
        let book = shipped_book();
        assert!(!book.prices.is_empty() && !book.plans.is_empty());
        assert_eq!(book_from_proto(&book_to_proto(&book)).unwrap(), book);
    }

    #[test]
    fn a_bad_book_is_refused_naming_the_field() {
        let good = book_to_proto(&shipped_book());

        let mut no_time = good.clone();
        no_time.updated_at = None;
        assert_eq!(refusal(&no_time), "updated_at: is required");

        let mut bad_price = good.clone();
        bad_price.prices[1]
            .prices
            .as_mut()
            .unwrap()
            .output_usd_per_million_tokens = "cheap".into();
        assert!(
            refusal(&bad_price).starts_with("prices[1].prices.output_usd_per_million_tokens:"),
            "{}",
            refusal(&bad_price)
        );

        let mut repeated = good.clone();
        repeated.prices.push(repeated.prices[0].clone());
        let last = repeated.prices.len() - 1;
        assert!(
            refusal(&repeated).starts_with(&format!("prices[{last}]: repeats the price of")),
            "{}",
            refusal(&repeated)
        );

        let mut bad_plan = good.clone();
        bad_plan.plans[0].tiers.clear();
        assert!(
            refusal(&bad_plan).starts_with("plans[0]."),
            "{}",
            refusal(&bad_plan)
        );

        let mut no_default = good.clone();
        no_default.default_plan_id = "gold".into();
        assert_eq!(
            refusal(&no_default),
            "default_plan_id: plan \"gold\" is not in plans"
        );

        let mut unknown = good.clone();
        unknown.assignments[0].plan_id = "gold".into();
        assert_eq!(
            refusal(&unknown),
            "assignments[0].plan_id: plan \"gold\" is not in plans"
        );

        let mut unassigned = good;
        unassigned.assignments[0].plan_id = String::new();
        assert_eq!(
            refusal(&unassigned),
            "assignments[0].plan_id: must name a plan"
        );
    }
}
