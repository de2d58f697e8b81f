//! Budgets: what a tenant, or the fleet, may spend in a calendar day or month,
//! in tenant charge or provider cost, soft or hard (see `docs/alerting.md`,
//! "Budgets").
//!
//! - [`Budget`] is the validated domain type; [`Budget::from_proto`] and
//!   [`Budget::to_proto`] convert from and to the contract's `Budget`, and every
//!   refusal names the request field it is about (`budget.amount_nanos_usd`).
//! - [`BudgetStore`] keeps them in Redis (one server or a cluster).
//! - [`BudgetError`] is the one error of both; `tonic::Status::from` turns it
//!   into the status a gRPC handler returns.

mod store;

use std::time::Duration;

use tenantmeter_domain::ids::TenantId;
use tenantmeter_domain::levels::{BudgetFigures, CostBasis};
use tenantmeter_domain::window::CalendarPeriod;
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::error::{invalid_argument, not_found, unavailable};

pub use store::{
    BUDGETS_KEY, BudgetStore, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, ORDER_KEY, TAG, subject_period_key,
};

/// How long a client told UNAVAILABLE should wait before retrying: Redis
/// outages we ride out (a failover, a restart) last seconds.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Whom a budget concerns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// All tenants together. Declared first so the derived order puts the
    /// fleet before every tenant, as ListBudgets does.
    Fleet,
    /// One tenant.
    Tenant(TenantId),
}

/// What reaching a budget does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Enforcement {
    /// Grades the level and raises alerts; nothing is denied for it. The
    /// contract's default (BUDGET_ENFORCEMENT_UNSPECIFIED means soft).
    #[default]
    Soft,
    /// As soft, and a hard cap in the tenant's policy. Tenants only.
    Hard,
}

/// A budget of a tenant or of the fleet for one calendar period. Keyed by
/// (subject, period): a subject has at most one budget per period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The tenant or the fleet.
    pub subject: Subject,
    /// Day or month.
    pub period: CalendarPeriod,
    /// Which cost it counts.
    pub basis: CostBasis,
    /// The budget in nano-USD; > 0.
    pub amount_nanos_usd: i64,
    /// Soft or hard; hard only for a tenant.
    pub enforcement: Enforcement,
    /// When it was last set, Unix ms (set by [`BudgetStore::set`]; 0 before).
    pub updated_at_ms: i64,
}

/// Failures of budgets: a bad request, a missing budget, Redis.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// A request field is invalid; `field` is its path in the request
    /// (`budget.subject.tenant_id`, `page_size`).
    #[error("{field}: {reason}")]
    Invalid {
        /// Request field path.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No budget of that subject and period.
    #[error("budget {0:?} not found")]
    NotFound(String),
    /// Redis answered with an error or dropped the connection.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the store's timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Stored data that this code did not write (or a newer layout).
    #[error("stored budget data is corrupt: {0}")]
    Corrupt(String),
}

impl BudgetError {
    /// An [`BudgetError::Invalid`] about `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The request field an `Invalid` error names.
    #[must_use]
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            Self::NotFound(_) | Self::Redis(_) | Self::Timeout(_) | Self::Corrupt(_) => None,
        }
    }
}

impl From<BudgetError> for tonic::Status {
    fn from(error: BudgetError) -> Self {
        // Exhaustive on purpose: a new variant must decide its status here.
        match error {
            BudgetError::Invalid { field, reason } => invalid_argument(&field, reason),
            BudgetError::NotFound(name) => not_found("budget", &name),
            BudgetError::Redis(error) => {
                tracing::warn!(%error, "budget store redis error");
                unavailable("redis", RETRY_AFTER)
            }
            BudgetError::Timeout(after) => {
                tracing::warn!(?after, "budget store redis timeout");
                unavailable("redis", RETRY_AFTER)
            }
            corrupt @ BudgetError::Corrupt(_) => {
                tracing::error!(error = %corrupt, "budget store data");
                // Not the caller's fault and not worth retrying: INTERNAL.
                Self::internal(corrupt.to_string())
            }
        }
    }
}

impl Subject {
    /// Parses the contract's `TenantOrFleet` found at request field `field`
    /// (e.g. `budget.subject`); errors name `<field>`, `<field>.tenant_id` or
    /// `<field>.fleet`.
    ///
    /// # Errors
    /// Unset, a malformed tenant id, or `fleet: false`.
    pub fn from_proto(
        subject: Option<&pb::TenantOrFleet>,
        field: &str,
    ) -> Result<Self, BudgetError> {
        use pb::tenant_or_fleet::Subject as S;
        match subject.and_then(|s| s.subject.as_ref()) {
            None => Err(BudgetError::invalid(
                field,
                "is required: set tenant_id or fleet",
            )),
            Some(S::TenantId(id)) => TenantId::parse(id.as_str())
                .map(Self::Tenant)
                .map_err(|e| BudgetError::invalid(format!("{field}.tenant_id"), e.to_string())),
            Some(S::Fleet(true)) => Ok(Self::Fleet),
            Some(S::Fleet(false)) => Err(BudgetError::invalid(
                format!("{field}.fleet"),
                "must be true when set",
            )),
        }
    }

    /// The contract's `TenantOrFleet`.
    #[must_use]
    pub fn to_proto(&self) -> pb::TenantOrFleet {
        use pb::tenant_or_fleet::Subject as S;
        pb::TenantOrFleet {
            subject: Some(match self {
                Self::Fleet => S::Fleet(true),
                Self::Tenant(id) => S::TenantId(id.as_str().to_owned()),
            }),
        }
    }

    /// The tenant, if it is one.
    #[must_use]
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Self::Fleet => None,
            Self::Tenant(id) => Some(id),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fleet => f.write_str("fleet"),
            Self::Tenant(id) => write!(f, "tenant {id}"),
        }
    }
}

/// The contract's `CalendarPeriod` at request field `field`.
///
/// # Errors
/// Unspecified or unknown: a budget needs a period.
pub fn period_from_proto(value: i32, field: &str) -> Result<CalendarPeriod, BudgetError> {
    match pb::CalendarPeriod::try_from(value) {
        Ok(pb::CalendarPeriod::Day) => Ok(CalendarPeriod::Day),
        Ok(pb::CalendarPeriod::Month) => Ok(CalendarPeriod::Month),
        Ok(pb::CalendarPeriod::Unspecified) => Err(BudgetError::invalid(
            field,
            "is required: CALENDAR_PERIOD_DAY or CALENDAR_PERIOD_MONTH",
        )),
        Err(_) => Err(BudgetError::invalid(
            field,
            format!("unknown calendar period {value}"),
        )),
    }
}

/// The contract's `CalendarPeriod` of `period`.
#[must_use]
pub fn period_to_proto(period: CalendarPeriod) -> pb::CalendarPeriod {
    match period {
        CalendarPeriod::Day => pb::CalendarPeriod::Day,
        CalendarPeriod::Month => pb::CalendarPeriod::Month,
    }
}

/// The contract's `CostBasis` at `field`. Unspecified is tenant charge, as
/// common.proto says (`COST_BASIS_UNSPECIFIED`: treated as tenant charge).
///
/// # Errors
/// An unknown enum value.
pub fn basis_from_proto(value: i32, field: &str) -> Result<CostBasis, BudgetError> {
    match pb::CostBasis::try_from(value) {
        Ok(pb::CostBasis::TenantCharge | pb::CostBasis::Unspecified) => Ok(CostBasis::TenantCharge),
        Ok(pb::CostBasis::ProviderCost) => Ok(CostBasis::ProviderCost),
        Err(_) => Err(BudgetError::invalid(
            field,
            format!("unknown cost basis {value}"),
        )),
    }
}

/// The contract's `CostBasis` of `basis`.
#[must_use]
pub fn basis_to_proto(basis: CostBasis) -> pb::CostBasis {
    match basis {
        CostBasis::TenantCharge => pb::CostBasis::TenantCharge,
        CostBasis::ProviderCost => pb::CostBasis::ProviderCost,
    }
}

/// The contract's `BudgetEnforcement` at `field`; unspecified is soft.
///
/// # Errors
/// An unknown enum value.
pub fn enforcement_from_proto(value: i32, field: &str) -> Result<Enforcement, BudgetError> {
    match pb::BudgetEnforcement::try_from(value) {
        Ok(pb::BudgetEnforcement::Soft | pb::BudgetEnforcement::Unspecified) => {
            Ok(Enforcement::Soft)
        }
        Ok(pb::BudgetEnforcement::Hard) => Ok(Enforcement::Hard),
        Err(_) => Err(BudgetError::invalid(
            field,
            format!("unknown budget enforcement {value}"),
        )),
    }
}

/// The contract's `BudgetEnforcement` of `enforcement`.
#[must_use]
pub fn enforcement_to_proto(enforcement: Enforcement) -> pb::BudgetEnforcement {
    match enforcement {
        Enforcement::Soft => pb::BudgetEnforcement::Soft,
        Enforcement::Hard => pb::BudgetEnforcement::Hard,
    }
}

/// Unix ms as a protobuf `Timestamp`.
#[must_use]
pub fn ms_to_timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // rem_euclid(1000) * 1e6 < 1e9 always fits.
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// A protobuf `Timestamp` as Unix ms (sub-millisecond truncated, saturating).
#[must_use]
pub fn timestamp_to_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos.div_euclid(1_000_000)))
}

impl Budget {
    /// Field prefix of a `Budget` inside SetBudgetRequest.
    pub const FIELD: &'static str = "budget";

    /// Checks the rules the contract states; the error names the field as it
    /// sits in SetBudgetRequest (`budget.amount_nanos_usd`).
    ///
    /// # Errors
    /// Amount not > 0; a hard fleet budget (the fleet's answer at red is
    /// proportional caps on its top contributors, never a denial of all).
    pub fn validate(&self) -> Result<(), BudgetError> {
        if self.amount_nanos_usd <= 0 {
            return Err(BudgetError::invalid(
                "budget.amount_nanos_usd",
                format!("must be > 0, got {}", self.amount_nanos_usd),
            ));
        }
        if self.subject == Subject::Fleet && self.enforcement == Enforcement::Hard {
            return Err(BudgetError::invalid(
                "budget.enforcement",
                "a fleet budget cannot be hard: at red the fleet caps its top contributors \
                 in proportion instead",
            ));
        }
        Ok(())
    }

    /// Parses and validates the contract's `Budget` (as in SetBudgetRequest;
    /// errors name `budget.<field>`). `updated_at` is output only: it is kept
    /// when well-formed (so conversions round-trip) and [`BudgetStore::set`]
    /// overwrites it.
    ///
    /// # Errors
    /// Any field the contract's rules refuse; see [`Budget::validate`].
    pub fn from_proto(budget: &pb::Budget) -> Result<Self, BudgetError> {
        let parsed = Self {
            subject: Subject::from_proto(budget.subject.as_ref(), "budget.subject")?,
            period: period_from_proto(budget.period, "budget.period")?,
            basis: basis_from_proto(budget.basis, "budget.basis")?,
            amount_nanos_usd: budget.amount_nanos_usd,
            enforcement: enforcement_from_proto(budget.enforcement, "budget.enforcement")?,
            updated_at_ms: budget.updated_at.as_ref().map_or(0, timestamp_to_ms),
        };
        parsed.validate()?;
        Ok(parsed)
    }

    /// The contract's `Budget`; `updated_at` unset while never stored.
    #[must_use]
    pub fn to_proto(&self) -> pb::Budget {
        pb::Budget {
            subject: Some(self.subject.to_proto()),
            period: period_to_proto(self.period).into(),
            basis: basis_to_proto(self.basis).into(),
            amount_nanos_usd: self.amount_nanos_usd,
            enforcement: enforcement_to_proto(self.enforcement).into(),
            updated_at: (self.updated_at_ms != 0).then(|| ms_to_timestamp(self.updated_at_ms)),
        }
    }

    /// The level engine's view of this budget with the period's spend.
    #[must_use]
    pub const fn figures(&self, actual_nanos: i64, forecast_nanos: i64) -> BudgetFigures {
        BudgetFigures {
            period: self.period,
            basis: self.basis,
            budget_nanos: self.amount_nanos_usd,
            actual_nanos,
            forecast_nanos,
        }
    }
}
