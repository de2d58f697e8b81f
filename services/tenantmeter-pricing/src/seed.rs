//! The shipped price files: `deploy/pricebook.toml` (Bedrock list prices) and
//! `deploy/plans.toml` (rate cards). They seed the price book in Redis; see
//! `docs/pricebook.md` for the formats.
//!
//! A malformed file stops the service at start-up with one message naming the
//! file, the entry and the field, so a typo in a price never reaches a quote.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use tenantmeter_domain::decimal::DecimalError;
use tenantmeter_domain::ids::{ModelId, PlanId};
use tenantmeter_domain::money::{AttoUsd, PricePerToken};
use tenantmeter_domain::pricebook::{ModelPrice, Offering, PriceKey, PriceScope, TokenPrices};
use tenantmeter_domain::ratecard::{Plan, PlanLimits, Tier, TierMode, TierRate};
use tenantmeter_domain::usage::TokenKind;

/// A price or plans file that cannot be used, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SeedFileError {
    /// Path of the file.
    pub file: String,
    /// Entry, e.g. `models[3] (amazon.nova-micro-v1:0)`; empty for file-level errors.
    pub entry: String,
    /// Field inside the entry; empty when the whole entry is wrong.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for SeedFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if !self.entry.is_empty() {
            write!(f, ": {}", self.entry)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// The contents of a price file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceFile {
    /// Date the prices were checked.
    pub as_of: String,
    /// Where they come from.
    pub source: String,
    /// Region of quote lines that name none.
    pub default_region: String,
    /// One entry per (model, region, offering, scope).
    pub prices: Vec<ModelPrice>,
}

/// The contents of a plans file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlansFile {
    /// Plan of tenants without an assignment; one of `plans`.
    pub default_plan: PlanId,
    /// Rate cards.
    pub plans: Vec<Plan>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPriceFile {
    as_of: String,
    source: String,
    default_region: String,
    models: Vec<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    model_id: String,
    display_name: String,
    regions: Vec<String>,
    offering: String,
    scope: String,
    input: Option<String>,
    output: Option<String>,
    cache_read: Option<String>,
    cache_write: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlansFile {
    default_plan: String,
    plans: Vec<RawPlan>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    plan_id: String,
    display_name: String,
    tier_mode: String,
    #[serde(default)]
    adjustment_bps: i32,
    #[serde(default)]
    expected_charge_usd_per_hour: Option<String>,
    #[serde(default)]
    limits: RawLimits,
    tiers: Vec<RawTier>,
    #[serde(default)]
    overrides: Vec<RawOverride>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    requests_per_minute: u64,
    #[serde(default)]
    tokens_per_minute: u64,
    #[serde(default)]
    period_budget_usd: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    up_to_usd: Option<String>,
    multiplier: Option<String>,
    package_size_usd: Option<String>,
    package_price_usd: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    model_id: String,
    input: Option<String>,
    output: Option<String>,
    cache_read: Option<String>,
    cache_write: Option<String>,
}

struct Locator<'a> {
    file: &'a str,
    entry: String,
}

impl Locator<'_> {
    fn err(&self, field: &str, reason: impl ToString) -> SeedFileError {
        SeedFileError {
            file: self.file.to_owned(),
            entry: self.entry.clone(),
            field: field.to_owned(),
            reason: reason.to_string(),
        }
    }
}

fn read(path: &Path) -> Result<String, SeedFileError> {
    std::fs::read_to_string(path).map_err(|e| SeedFileError {
        file: path.display().to_string(),
        entry: String::new(),
        field: String::new(),
        reason: format!("cannot read: {e}"),
    })
}

fn parse_toml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, SeedFileError> {
    toml::from_str(text).map_err(|e| SeedFileError {
        file: file.to_owned(),
        entry: String::new(),
        field: String::new(),
        // toml's message names the line, the key and what was expected.
        reason: e.to_string().trim().replace('\n', " "),
    })
}

fn usd(loc: &Locator<'_>, field: &str, text: &str) -> Result<AttoUsd, SeedFileError> {
    AttoUsd::parse_usd(text).map_err(|e: DecimalError| loc.err(field, e))
}

fn token_prices(
    loc: &Locator<'_>,
    raw: [(&str, &Option<String>); 4],
) -> Result<TokenPrices, SeedFileError> {
    let mut prices = TokenPrices::default();
    for (kind, (field, text)) in TokenKind::ALL.into_iter().zip(raw) {
        if let Some(text) = text {
            let price = PricePerToken::parse_per_million(text).map_err(|e| loc.err(field, e))?;
            prices.set(kind, Some(price));
        }
    }
    Ok(prices)
}

/// Loads a price file.
pub fn load_price_file(path: &Path) -> Result<PriceFile, SeedFileError> {
    parse_price_file(&path.display().to_string(), &read(path)?)
}

/// Parses the text of a price file; `file` names it in errors.
pub fn parse_price_file(file: &str, text: &str) -> Result<PriceFile, SeedFileError> {
    let raw: RawPriceFile = parse_toml(file, text)?;
    let top = Locator {
        file,
        entry: String::new(),
    };
    if raw.default_region.trim().is_empty() {
        return Err(top.err("default_region", "must name a region"));
    }
    let mut prices: BTreeMap<PriceKey, ModelPrice> = BTreeMap::new();
    for (index, model) in raw.models.into_iter().enumerate() {
        let loc = Locator {
            file,
            entry: format!("models[{index}] ({})", model.model_id),
        };
        let model_id =
            ModelId::parse(model.model_id.clone()).map_err(|e| loc.err("model_id", e))?;
        let offering = Offering::parse(&model.offering).ok_or_else(|| {
            loc.err(
                "offering",
                format!("{:?} is not \"on_demand\" or \"batch\"", model.offering),
            )
        })?;
        let scope = PriceScope::parse(&model.scope).ok_or_else(|| {
            loc.err(
                "scope",
                format!("{:?} is not \"regional\" or \"global\"", model.scope),
            )
        })?;
        let token_prices = token_prices(
            &loc,
            [
                ("input", &model.input),
                ("output", &model.output),
                ("cache_read", &model.cache_read),
                ("cache_write", &model.cache_write),
            ],
        )?;
        if token_prices.input.is_none() {
            return Err(loc.err("input", "every model needs an input price"));
        }
        if model.regions.is_empty() {
            return Err(loc.err("regions", "list at least one region"));
        }
        for region in model.regions {
            if region.trim().is_empty() {
                return Err(loc.err("regions", "a region is empty"));
            }
            let key = PriceKey {
                model_id: model_id.clone(),
                region,
                offering,
                scope,
            };
            if prices.contains_key(&key) {
                return Err(loc.err("", format!("a second price for {key}")));
            }
            prices.insert(
                key.clone(),
                ModelPrice {
                    key,
                    display_name: model.display_name.clone(),
                    prices: token_prices,
                },
            );
        }
    }
    Ok(PriceFile {
        as_of: raw.as_of,
        source: raw.source,
        default_region: raw.default_region,
        prices: prices.into_values().collect(),
    })
}

/// Loads a plans file.
pub fn load_plans_file(path: &Path) -> Result<PlansFile, SeedFileError> {
    parse_plans_file(&path.display().to_string(), &read(path)?)
}

/// Parses the text of a plans file; `file` names it in errors.
pub fn parse_plans_file(file: &str, text: &str) -> Result<PlansFile, SeedFileError> {
    let raw: RawPlansFile = parse_toml(file, text)?;
    let top = Locator {
        file,
        entry: String::new(),
    };
    let default_plan = PlanId::parse(raw.default_plan).map_err(|e| top.err("default_plan", e))?;
    let mut plans: Vec<Plan> = Vec::new();
    for (index, raw_plan) in raw.plans.into_iter().enumerate() {
        let loc = Locator {
            file,
            entry: format!("plans[{index}] ({})", raw_plan.plan_id),
        };
        let plan = plan_from_raw(&loc, raw_plan)?;
        if plans.iter().any(|p| p.id == plan.id) {
            return Err(loc.err("plan_id", "a second plan with this id"));
        }
        plans.push(plan);
    }
    if !plans.iter().any(|p| p.id == default_plan) {
        return Err(top.err(
            "default_plan",
            format!(
                "plan {default_plan:?} is not defined in this file",
                default_plan = default_plan.as_str()
            ),
        ));
    }
    Ok(PlansFile {
        default_plan,
        plans,
    })
}

fn plan_from_raw(loc: &Locator<'_>, raw: RawPlan) -> Result<Plan, SeedFileError> {
    let id = PlanId::parse(raw.plan_id).map_err(|e| loc.err("plan_id", e))?;
    let mode = match raw.tier_mode.as_str() {
        "graduated" => TierMode::Graduated,
        "volume" => TierMode::Volume,
        other => {
            return Err(loc.err(
                "tier_mode",
                format!("{other:?} is not \"graduated\" or \"volume\""),
            ));
        }
    };
    let mut tiers = Vec::with_capacity(raw.tiers.len());
    for (index, tier) in raw.tiers.into_iter().enumerate() {
        let at = |name: &str| format!("tiers[{index}].{name}");
        let up_to = tier
            .up_to_usd
            .as_deref()
            .map(|text| usd(loc, &at("up_to_usd"), text))
            .transpose()?;
        let rate = match (
            tier.multiplier,
            tier.package_size_usd,
            tier.package_price_usd,
        ) {
            (Some(multiplier), None, None) => TierRate::parse_multiplier(&multiplier)
                .map_err(|e| loc.err(&at("multiplier"), e))?,
            (None, Some(size), Some(price)) => TierRate::Package {
                size: usd(loc, &at("package_size_usd"), &size)?,
                price: usd(loc, &at("package_price_usd"), &price)?,
            },
            (None, None, None) | (Some(_), _, _) | (None, _, _) => {
                return Err(loc.err(
                    &format!("tiers[{index}]"),
                    "set either multiplier, or package_size_usd and package_price_usd",
                ));
            }
        };
        tiers.push(Tier { up_to, rate });
    }
    let mut overrides = BTreeMap::new();
    for (index, raw_override) in raw.overrides.into_iter().enumerate() {
        let field = format!("overrides[{index}].model_id");
        let model =
            ModelId::parse(raw_override.model_id.clone()).map_err(|e| loc.err(&field, e))?;
        let o = &raw_override;
        let prices = token_prices(
            &Locator {
                file: loc.file,
                entry: format!("{} overrides[{index}]", loc.entry),
            },
            [
                ("input", &o.input),
                ("output", &o.output),
                ("cache_read", &o.cache_read),
                ("cache_write", &o.cache_write),
            ],
        )?;
        overrides.insert(model, prices);
    }
    let nanos = |field: &str, text: Option<&str>| -> Result<i64, SeedFileError> {
        match text {
            None => Ok(0),
            Some(text) => usd(loc, field, text)?
                .to_nanos()
                .ok_or_else(|| loc.err(field, "too large")),
        }
    };
    let plan = Plan {
        id,
        display_name: raw.display_name,
        mode,
        tiers,
        adjustment_bps: raw.adjustment_bps,
        overrides,
        limits: PlanLimits {
            requests_per_minute: raw.limits.requests_per_minute,
            tokens_per_minute: raw.limits.tokens_per_minute,
            period_budget_nanos: nanos(
                "limits.period_budget_usd",
                raw.limits.period_budget_usd.as_deref(),
            )?,
        },
        expected_charge_nanos_per_hour: nanos(
            "expected_charge_usd_per_hour",
            raw.expected_charge_usd_per_hour.as_deref(),
        )?,
    };
    plan.validate().map_err(|e| loc.err(&e.field, e.reason))?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRICES: &str = r#"
as_of = "2026-09-29"
source = "test"
default_region = "us-east-1"

[[models]]
model_id = "anthropic.claude-3-5-sonnet-20240620-v1:0"
display_name = "Claude 3.5 Sonnet"
regions = ["us-east-1", "us-west-2"]
offering = "on_demand"
scope = "regional"
input = "3.00"
output = "15.00"
"#;

    #[test]
    fn expands_one_entry_per_region() {
        let file = parse_price_file("p.toml", PRICES).unwrap();
        assert_eq!(file.prices.len(), 2);
        assert_eq!(file.prices[0].prices.cache_read, None);
    }

    #[test]
    fn a_bad_price_names_file_entry_and_field() {
        let text = PRICES.replace("\"15.00\"", "\"15,00\"");
        let err = parse_price_file("deploy/pricebook.toml", &text).unwrap_err();
        assert_eq!(
            err.entry,
            "models[0] (anthropic.claude-3-5-sonnet-20240620-v1:0)"
        );
        assert_eq!(err.field, "output");
        assert!(
            err.to_string().starts_with(
                "deploy/pricebook.toml: models[0] (anthropic.claude-3-5-sonnet-20240620-v1:0): output: \"15,00\" is not"
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused() {
        let err = parse_price_file("p.toml", &PRICES.replace("scope =", "scop =")).unwrap_err();
        assert!(err.reason.contains("scop"), "{err}");
        let err = parse_price_file("p.toml", &PRICES.replace("\"3.00\"", "3.0")).unwrap_err();
        assert!(err.reason.contains("input"), "{err}");
    }

    #[test]
    fn the_shipped_files_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let prices = load_price_file(&root.join("pricebook.toml")).unwrap();
        assert!(prices.prices.len() >= 24, "{}", prices.prices.len());
        let plans = load_plans_file(&root.join("plans.toml")).unwrap();
        assert!(plans.plans.iter().any(|p| p.id == plans.default_plan));
    }
}
