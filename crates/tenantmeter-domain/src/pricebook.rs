//! The price book: Bedrock list prices, plans and tenant assignments, versioned
//! as one unit so a cache can say exactly which prices it holds.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use crate::ids::{ModelId, PlanId, TenantId};
use crate::money::PricePerToken;
use crate::ratecard::Plan;
use crate::usage::TokenKind;

/// How a model was bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Offering {
    /// On-demand inference.
    OnDemand,
    /// Batch inference.
    Batch,
}

impl Offering {
    /// The name used in files, keys and messages: `on_demand` or `batch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnDemand => "on_demand",
            Self::Batch => "batch",
        }
    }

    /// Parses [`Offering::as_str`]'s names.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::OnDemand, Self::Batch]
            .into_iter()
            .find(|offering| offering.as_str() == text)
    }
}

/// Routing scope of an inference, when it changes the price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PriceScope {
    /// In-region, or a geographic cross-region profile.
    Regional,
    /// A global cross-region profile.
    Global,
}

impl PriceScope {
    /// The name used in files, keys and messages: `regional` or `global`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Regional => "regional",
            Self::Global => "global",
        }
    }

    /// Parses [`PriceScope::as_str`]'s names.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Regional, Self::Global]
            .into_iter()
            .find(|scope| scope.as_str() == text)
    }
}

/// Prices of the four token kinds; `None` where the model does not offer the
/// kind (or, in a plan override, where the list price is kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenPrices {
    /// Plain input.
    pub input: Option<PricePerToken>,
    /// Output.
    pub output: Option<PricePerToken>,
    /// Cache read.
    pub cache_read: Option<PricePerToken>,
    /// Cache write.
    pub cache_write: Option<PricePerToken>,
}

impl TokenPrices {
    /// The price of one kind.
    pub fn get(&self, kind: TokenKind) -> Option<PricePerToken> {
        match kind {
            TokenKind::Input => self.input,
            TokenKind::Output => self.output,
            TokenKind::CacheRead => self.cache_read,
            TokenKind::CacheWrite => self.cache_write,
        }
    }

    /// Sets the price of one kind.
    pub fn set(&mut self, kind: TokenKind, price: Option<PricePerToken>) {
        match kind {
            TokenKind::Input => self.input = price,
            TokenKind::Output => self.output = price,
            TokenKind::CacheRead => self.cache_read = price,
            TokenKind::CacheWrite => self.cache_write = price,
        }
    }

    /// `self` where set, `fallback` elsewhere.
    pub fn or(&self, fallback: &Self) -> Self {
        Self {
            input: self.input.or(fallback.input),
            output: self.output.or(fallback.output),
            cache_read: self.cache_read.or(fallback.cache_read),
            cache_write: self.cache_write.or(fallback.cache_write),
        }
    }
}

/// What a list price is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PriceKey {
    /// Bedrock model id.
    pub model_id: ModelId,
    /// AWS region.
    pub region: String,
    /// On-demand or batch.
    pub offering: Offering,
    /// Regional or global.
    pub scope: PriceScope,
}

impl fmt::Display for PriceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in {} ({}, {})",
            self.model_id,
            self.region,
            self.offering.as_str(),
            self.scope.as_str()
        )
    }
}

/// One list price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrice {
    /// What the price applies to.
    pub key: PriceKey,
    /// Human name of the model.
    pub display_name: String,
    /// Per-token prices.
    pub prices: TokenPrices,
}

/// The whole price book at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceBook {
    /// Increases by one with every committed change.
    pub version: u64,
    /// When this version was committed.
    pub updated_at: SystemTime,
    /// Date the list prices were checked, e.g. "2026-11-01".
    pub prices_as_of: String,
    /// Where the list prices come from.
    pub prices_source: String,
    /// Region used when a quote line names none.
    pub default_region: String,
    /// Plan of tenants without an assignment.
    pub default_plan: PlanId,
    /// List prices.
    pub prices: BTreeMap<PriceKey, ModelPrice>,
    /// Plans.
    pub plans: BTreeMap<PlanId, Plan>,
    /// Tenant assignments.
    pub assignments: BTreeMap<TenantId, PlanId>,
}

/// A change to the price book; applying one makes a new version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriceBookChange {
    /// Insert or replace list prices.
    UpsertPrices(Vec<ModelPrice>),
    /// Insert or replace one plan.
    UpsertPlan(Plan),
    /// Set (`Some`) or remove (`None`) tenants' plan assignments.
    AssignPlans(Vec<(TenantId, Option<PlanId>)>),
}

/// Why a change cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// An assignment names a plan the book does not have.
    #[error("assignments[{index}].plan_id: plan {plan:?} does not exist")]
    UnknownPlan {
        /// Position in the request.
        index: usize,
        /// The missing plan.
        plan: PlanId,
    },
    /// A plan violates a tier invariant.
    #[error("plan.{0}")]
    InvalidPlan(#[from] crate::ratecard::PlanError),
}

impl PriceBook {
    /// The plan that applies to `tenant`, and whether it is the default.
    pub fn plan_of(&self, tenant: &TenantId) -> Option<(&Plan, bool)> {
        match self.assignments.get(tenant) {
            Some(plan_id) => self.plans.get(plan_id).map(|plan| (plan, false)),
            None => self.plans.get(&self.default_plan).map(|plan| (plan, true)),
        }
    }

    /// Checks that `change` can be applied, without applying it.
    pub fn check(&self, change: &PriceBookChange) -> Result<(), ChangeError> {
        match change {
            PriceBookChange::UpsertPrices(_) => Ok(()),
            PriceBookChange::UpsertPlan(plan) => Ok(plan.validate()?),
            PriceBookChange::AssignPlans(assignments) => {
                for (index, (_, plan)) in assignments.iter().enumerate() {
                    if let Some(plan) = plan
                        && !self.plans.contains_key(plan)
                    {
                        return Err(ChangeError::UnknownPlan {
                            index,
                            plan: plan.clone(),
                        });
                    }
                }
                Ok(())
            }
        }
    }

    /// Applies `change` as version `version`, committed at `at`.
    pub fn apply(
        &mut self,
        change: PriceBookChange,
        version: u64,
        at: SystemTime,
    ) -> Result<(), ChangeError> {
        self.check(&change)?;
        match change {
            PriceBookChange::UpsertPrices(prices) => {
                for price in prices {
                    self.prices.insert(price.key.clone(), price);
                }
            }
            PriceBookChange::UpsertPlan(plan) => {
                self.plans.insert(plan.id.clone(), plan);
            }
            PriceBookChange::AssignPlans(assignments) => {
                for (tenant, plan) in assignments {
                    match plan {
                        Some(plan) => self.assignments.insert(tenant, plan),
                        None => self.assignments.remove(&tenant),
                    };
                }
            }
        }
        self.version = version;
        self.updated_at = at;
        Ok(())
    }
}
