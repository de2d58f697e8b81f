//! The registry's records: what the gateway stores per tenant, and what a
//! tenant call needs from it. Stored as JSON (serde), one record per tenant, so
//! a record is read and written whole and a change is one compare-and-set.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether a tenant's calls are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    /// Calls are served.
    Active,
    /// Calls are refused with PERMISSION_DENIED.
    Disabled,
}

/// Regional or global routing of an alias's source (it decides the list price).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingScope {
    /// A foundation model or a regional (`us.`, `eu.`, `apac.`) system profile.
    Regional,
    /// A `global.` system profile.
    Global,
}

/// One API key of a tenant. The secret is never stored: only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public, loggable part of the key (it is also the key's prefix).
    pub key_id: String,
    /// Lower-case hex SHA-256 of the whole presented key.
    pub sha256_hex: String,
    /// When it was issued, Unix milliseconds.
    pub created_at_ms: i64,
    /// When it stops working, Unix milliseconds; `None` while it is current.
    pub expires_at_ms: Option<i64>,
}

/// Whether a profile can serve calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileState {
    /// Created, found or recorded: calls use it.
    Active,
    /// The last attempt to create it failed.
    Failed,
}

/// A tenant's application inference profile for one alias in one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRecord {
    /// The profile's ARN: the modelId Bedrock is called with. Empty when failed.
    pub arn: String,
    /// Active or failed.
    pub state: ProfileState,
    /// Bedrock's message of the last failure; empty otherwise.
    pub message: String,
}

/// A tenant's model alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    /// What the profiles copy: a foundation model id or a system profile id.
    pub source_model_id: String,
    /// The foundation model id that prices the calls.
    pub model_id: String,
    /// Regional or global routing of the source.
    pub scope: RoutingScope,
    /// One profile per region, by region.
    pub profiles: BTreeMap<String, ProfileRecord>,
}

/// Everything the gateway knows about one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// Tenant id, `[A-Za-z0-9._-]{1,64}`.
    pub tenant_id: String,
    /// Human name.
    pub display_name: String,
    /// Applications, at least one; the first is the primary one.
    pub application_ids: Vec<String>,
    /// CostCenter tag of its profiles.
    pub cost_center: String,
    /// Extra tags of its profiles.
    pub profile_tags: BTreeMap<String, String>,
    /// Active or disabled.
    pub state: TenantState,
    /// Why it was disabled; empty when active.
    pub disabled_reason: String,
    /// Plan assigned in pricing; empty for the default plan.
    pub plan_id: String,
    /// Its keys, current first.
    pub keys: Vec<KeyRecord>,
    /// Its aliases, by alias.
    pub aliases: BTreeMap<String, AliasRecord>,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Last change, Unix milliseconds.
    pub updated_at_ms: i64,
    /// Bumped by every change; the compare-and-set token of updates.
    pub revision: u64,
}

impl TenantRecord {
    /// The application a call is attributed to: `requested`, or the primary
    /// application when empty; `None` when the tenant has no such application.
    pub fn application<'a>(&'a self, requested: &'a str) -> Option<&'a str> {
        if requested.is_empty() {
            self.application_ids.first().map(String::as_str)
        } else {
            self.application_ids
                .iter()
                .find(|id| id.as_str() == requested)
                .map(String::as_str)
        }
    }
}
