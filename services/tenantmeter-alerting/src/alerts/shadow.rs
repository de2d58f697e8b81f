//! Shadow mode: levels evaluated, alerts raised and notified, policies sent to
//! the meter with `shadow` set — computed and recorded, not enforced. A global
//! setting (tenants without an override, and the fleet) and per-tenant
//! overrides.
//!
//! | key | type | content |
//! |---|---|---|
//! | `{al}:shadow` | hash | `!global` -> `1`/`0`; tenant id -> `1`/`0` (an override) |
//!
//! `!` is not a tenant id character, so the global field never collides with
//! a tenant. No `!global` field means shadow mode is off globally.

use tenantmeter_domain::ids::TenantId;
use tenantmeter_proto::v1 as pb;

use super::{AlertError, AlertStore, bounded};

/// Hash of the shadow mode configuration.
pub const SHADOW_KEY: &str = "{al}:shadow";

const GLOBAL_FIELD: &str = "!global";

/// Sets or removes one field and replies the whole configuration, so a
/// SetShadowMode response shows the configuration its change produced.
/// KEYS: shadow. ARGV: field, value ('' removes). Replies HGETALL.
pub(super) const SHADOW_SET_V1: &str = r"-- tenantmeter alerting shadow set v1
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return redis.call('HGETALL', KEYS[1])
";

/// A validated SetShadowModeRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowChange {
    /// Shadow mode on or off for tenants without an override and the fleet.
    Global(bool),
    /// One tenant's override: `Some(on)`, or `None` to inherit the global
    /// setting.
    Tenant {
        /// The tenant.
        tenant: TenantId,
        /// Its override; `None` removes it.
        shadow: Option<bool>,
    },
}

impl ShadowChange {
    /// Validates a SetShadowModeRequest.
    ///
    /// # Errors
    /// [`AlertError::Invalid`] naming `scope` (unset), `global` (false: the
    /// contract wants true when set), `tenant_id` (malformed) or `setting`
    /// (unspecified, unknown, or INHERIT for the global scope).
    pub fn from_request(request: &pb::SetShadowModeRequest) -> Result<Self, AlertError> {
        use pb::set_shadow_mode_request::Scope;
        let setting = match pb::ShadowSetting::try_from(request.setting) {
            Ok(pb::ShadowSetting::On) => Some(true),
            Ok(pb::ShadowSetting::Off) => Some(false),
            Ok(pb::ShadowSetting::Inherit) => None,
            Ok(pb::ShadowSetting::Unspecified) => {
                return Err(AlertError::invalid(
                    "setting",
                    "is required: SHADOW_SETTING_ON, _OFF or (tenant only) _INHERIT",
                ));
            }
            Err(_) => {
                return Err(AlertError::invalid(
                    "setting",
                    format!("unknown shadow setting {}", request.setting),
                ));
            }
        };
        match &request.scope {
            None => Err(AlertError::invalid(
                "scope",
                "is required: set global or tenant_id",
            )),
            Some(Scope::Global(false)) => {
                Err(AlertError::invalid("global", "must be true when set"))
            }
            Some(Scope::Global(true)) => setting.map(Self::Global).ok_or_else(|| {
                AlertError::invalid(
                    "setting",
                    "SHADOW_SETTING_INHERIT applies to a tenant only; the global setting is ON or OFF",
                )
            }),
            Some(Scope::TenantId(id)) => {
                let tenant = TenantId::parse(id.as_str())
                    .map_err(|e| AlertError::invalid("tenant_id", e.to_string()))?;
                Ok(Self::Tenant {
                    tenant,
                    shadow: setting,
                })
            }
        }
    }
}

/// Whether `tenant` is in shadow mode under `config`: its override, else the
/// global setting. (The fleet follows `config.global_shadow`.)
#[must_use]
pub fn is_shadow(config: &pb::ShadowModeConfig, tenant: &TenantId) -> bool {
    config
        .overrides
        .iter()
        .find(|o| o.tenant_id == tenant.as_str())
        .map_or(config.global_shadow, |o| o.shadow)
}

impl AlertStore {
    /// Validates and applies a SetShadowModeRequest; returns the
    /// configuration after it.
    ///
    /// # Errors
    /// See [`ShadowChange::from_request`]; Redis, or a corrupt record.
    pub async fn set_shadow_mode(
        &self,
        request: &pb::SetShadowModeRequest,
    ) -> Result<pb::ShadowModeConfig, AlertError> {
        self.apply_shadow(&ShadowChange::from_request(request)?)
            .await
    }

    /// Applies a validated change; returns the configuration after it.
    ///
    /// # Errors
    /// Redis, or a corrupt record.
    pub async fn apply_shadow(
        &self,
        change: &ShadowChange,
    ) -> Result<pb::ShadowModeConfig, AlertError> {
        match change {
            ShadowChange::Global(on) => self.set_shadow_global(*on).await,
            ShadowChange::Tenant { tenant, shadow } => {
                self.set_shadow_tenant(tenant, *shadow).await
            }
        }
    }

    /// Switches shadow mode for tenants without an override and the fleet;
    /// returns the configuration after it.
    ///
    /// # Errors
    /// Redis, or a corrupt record.
    pub async fn set_shadow_global(&self, on: bool) -> Result<pb::ShadowModeConfig, AlertError> {
        self.set_shadow_field(GLOBAL_FIELD, flag(Some(on))).await
    }

    /// Sets `tenant`'s override (`Some`), or removes it so the global setting
    /// applies (`None`); returns the configuration after it.
    ///
    /// # Errors
    /// Redis, or a corrupt record.
    pub async fn set_shadow_tenant(
        &self,
        tenant: &TenantId,
        shadow: Option<bool>,
    ) -> Result<pb::ShadowModeConfig, AlertError> {
        self.set_shadow_field(tenant.as_str(), flag(shadow)).await
    }

    /// The shadow mode configuration, overrides ordered by tenant id.
    ///
    /// # Errors
    /// Redis, or a corrupt record.
    pub async fn shadow_config(&self) -> Result<pb::ShadowModeConfig, AlertError> {
        let mut conn = self.conn.clone();
        let fields: Vec<String> = bounded(
            self.timeout,
            redis::cmd("HGETALL").arg(SHADOW_KEY).query_async(&mut conn),
        )
        .await?;
        config_from(&fields)
    }

    async fn set_shadow_field(
        &self,
        field: &str,
        value: &str,
    ) -> Result<pb::ShadowModeConfig, AlertError> {
        let mut invocation = self.shadow_set.key(SHADOW_KEY);
        invocation.arg(field).arg(value);
        let mut conn = self.conn.clone();
        let fields: Vec<String> = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        config_from(&fields)
    }
}

const fn flag(shadow: Option<bool>) -> &'static str {
    match shadow {
        Some(true) => "1",
        Some(false) => "0",
        None => "",
    }
}

/// The configuration from HGETALL's flat field/value list.
fn config_from(fields: &[String]) -> Result<pb::ShadowModeConfig, AlertError> {
    let mut config = pb::ShadowModeConfig::default();
    for pair in fields.chunks(2) {
        let [field, value] = pair else {
            return Err(AlertError::Corrupt(
                "HGETALL replied an odd number of strings".to_owned(),
            ));
        };
        let shadow = match value.as_str() {
            "1" => true,
            "0" => false,
            other => {
                return Err(AlertError::Corrupt(format!(
                    "shadow setting of {field:?} is {other:?}, not 1 or 0"
                )));
            }
        };
        if field == GLOBAL_FIELD {
            config.global_shadow = shadow;
        } else if TenantId::parse(field.as_str()).is_ok() {
            config.overrides.push(pb::TenantShadowOverride {
                tenant_id: field.clone(),
                shadow,
            });
        } else {
            return Err(AlertError::Corrupt(format!(
                "shadow setting of {field:?}: not a tenant id"
            )));
        }
    }
    config
        .overrides
        .sort_unstable_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
    Ok(config)
}
