//! Turning a contract `UsageEvent` into what the store counts: validated ids,
//! an accepted event time, and its provider cost and rated value priced from
//! the cached price book (no pricing RPC per event).

use tenantmeter_domain::ids::{ModelId, TenantId};
use tenantmeter_domain::money::{AttoUsd, round_half_even};
use tenantmeter_domain::pricebook::{Offering, PriceBook, PriceScope};
use tenantmeter_domain::quote::{QuoteError, QuoteLine, price_line};
use tenantmeter_domain::window::{EventTimeError, check_event_time};
use tenantmeter_pricing::convert;
use tenantmeter_pricing::error::PricingError;
use tenantmeter_proto::v1 as pb;

use crate::store::StoredEvent;

/// Atto-USD in one pico-USD: the unit the store sums money in.
pub const ATTOS_PER_PICO: i128 = 1_000_000;

/// Most tags an event may carry, and longest tag key or value.
const MAX_TAGS: usize = 16;
const MAX_TAG_BYTES: usize = 128;

/// Why an event is not counted, in the contract's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The contract's reason.
    pub reason: pb::UsageRejectReason,
    /// The field at fault, for invalid fields.
    pub field: String,
    /// Human detail.
    pub message: String,
}

impl Rejection {
    fn invalid(field: &str, message: impl ToString) -> Self {
        Self {
            reason: pb::UsageRejectReason::InvalidField,
            field: field.to_owned(),
            message: format!("{field}: {}", message.to_string()),
        }
    }
}

/// A validated, priced event.
#[derive(Debug, Clone)]
pub struct PricedEvent {
    /// Its tenant.
    pub tenant: TenantId,
    /// What the store counts.
    pub stored: StoredEvent,
    /// Exact provider cost.
    pub cost: AttoUsd,
    /// Exact rated value under the tenant's plan.
    pub rated: AttoUsd,
}

/// Event ids: `[A-Za-z0-9._:-]{1,128}`.
pub fn validate_event_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!("must be 1 to 128 characters (got {})", id.len()));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        Some(bad) => Err(format!(
            "has {bad:?}; allowed: letters, digits, '.', '_', ':' and '-'"
        )),
        None => Ok(()),
    }
}

/// Milliseconds since the epoch of a timestamp.
pub fn timestamp_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos.clamp(0, 999_999_999) / 1_000_000))
}

/// A timestamp of milliseconds since the epoch.
pub fn ms_timestamp(ms: i64) -> prost_types::Timestamp {
    let nanos = ms.rem_euclid(1000) * 1_000_000;
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(nanos).unwrap_or(0),
    }
}

/// Picos of an exact amount, half to even.
pub fn picos(amount: AttoUsd) -> i128 {
    round_half_even(amount.0, ATTOS_PER_PICO)
}

/// Limits that decide whether an event time is accepted.
#[derive(Debug, Clone, Copy)]
pub struct Acceptance {
    /// The meter's clock now, ms.
    pub now_ms: i64,
    /// Allowed lateness, ms.
    pub lateness_ms: i64,
    /// Allowed skew, ms.
    pub skew_ms: i64,
}

/// Validates and prices one event.
pub fn price_event(
    event: &pb::UsageEvent,
    book: &PriceBook,
    acceptance: Acceptance,
) -> Result<PricedEvent, Rejection> {
    validate_event_id(&event.event_id).map_err(|e| Rejection::invalid("event_id", e))?;
    let tenant =
        TenantId::parse(event.tenant_id.clone()).map_err(|e| Rejection::invalid("tenant_id", e))?;
    let model =
        ModelId::parse(event.model_id.clone()).map_err(|e| Rejection::invalid("model_id", e))?;
    let usage =
        convert::usage_from_proto(event.usage.as_ref(), "usage").map_err(|error| match error {
            PricingError::InvalidArgument { field, reason } => Rejection::invalid(&field, reason),
            other @ (PricingError::NotFound { .. }
            | PricingError::Store(_)
            | PricingError::Contended) => Rejection::invalid("usage", other),
        })?;
    if event.latency_ms < 0 {
        return Err(Rejection::invalid("latency_ms", "must not be negative"));
    }
    if event.tags.len() > MAX_TAGS {
        return Err(Rejection::invalid(
            "tags",
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    if let Some((key, _)) = event
        .tags
        .iter()
        .find(|(k, v)| k.len() > MAX_TAG_BYTES || v.len() > MAX_TAG_BYTES)
    {
        return Err(Rejection::invalid(
            "tags",
            format!("tag {key:?}: keys and values are at most {MAX_TAG_BYTES} bytes"),
        ));
    }
    let Some(time) = event.event_time.as_ref() else {
        return Err(Rejection::invalid("event_time", "is required"));
    };
    let time_ms = timestamp_ms(time);
    check_event_time(
        time_ms,
        acceptance.now_ms,
        acceptance.lateness_ms,
        acceptance.skew_ms,
    )
    .map_err(|error| Rejection {
        reason: match error {
            EventTimeError::TooLate { .. } => pb::UsageRejectReason::TooLate,
            EventTimeError::InFuture { .. } => pb::UsageRejectReason::InFuture,
        },
        field: "event_time".to_owned(),
        message: error.to_string(),
    })?;
    let offering = match pb::Offering::try_from(event.offering) {
        Ok(pb::Offering::Batch) => Offering::Batch,
        Ok(pb::Offering::OnDemand | pb::Offering::Unspecified) => Offering::OnDemand,
        Err(_) => {
            return Err(Rejection::invalid(
                "offering",
                format!("unknown value {}", event.offering),
            ));
        }
    };
    let scope = match pb::PriceScope::try_from(event.scope) {
        Ok(pb::PriceScope::Global) => PriceScope::Global,
        Ok(pb::PriceScope::Regional | pb::PriceScope::Unspecified) => PriceScope::Regional,
        Err(_) => {
            return Err(Rejection::invalid(
                "scope",
                format!("unknown value {}", event.scope),
            ));
        }
    };
    let Some((plan, _)) = book.plan_of(&tenant) else {
        return Err(Rejection {
            reason: pb::UsageRejectReason::ModelNotPriced,
            field: "tenant_id".to_owned(),
            message: format!("the price book has no plan for tenant {tenant}"),
        });
    };
    let line = QuoteLine {
        model_id: model.clone(),
        usage,
        region: (!event.region.is_empty()).then(|| event.region.clone()),
        offering,
        scope,
    };
    let (_, cost, rated) = price_line(book, plan, &line, "event").map_err(|error| match error {
        QuoteError::Overflow { .. } => {
            Rejection::invalid("usage", "token counts too large to price")
        }
        QuoteError::UnknownModel { .. }
        | QuoteError::UnknownPlan(_)
        | QuoteError::UnpricedTokenKind { .. } => Rejection {
            reason: pb::UsageRejectReason::ModelNotPriced,
            field: "model_id".to_owned(),
            message: error.to_string().replacen("event.", "", 1),
        },
    })?;
    Ok(PricedEvent {
        stored: StoredEvent {
            id: event.event_id.clone(),
            model: model.to_string(),
            time_ms,
            usage,
            cost_pico: picos(cost),
            rated_pico: picos(rated),
        },
        tenant,
        cost,
        rated,
    })
}
