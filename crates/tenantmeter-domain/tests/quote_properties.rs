//! Property tests of the tier arithmetic and of quotes: monotone graduated
//! charges, split invariance for every tier mode, breakdowns that add up, and
//! exact results for known tables.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use proptest::prelude::*;
use tenantmeter_domain::ids::{ModelId, PlanId, TenantId};
use tenantmeter_domain::money::{ATTOS_PER_USD, AttoUsd, PricePerToken};
use tenantmeter_domain::pricebook::{
    ModelPrice, Offering, PriceBook, PriceKey, PriceScope, TokenPrices,
};
use tenantmeter_domain::quote::{QuoteLine, Subject, quote};
use tenantmeter_domain::ratecard::{Plan, PlanLimits, Tier, TierMode, TierRate};
use tenantmeter_domain::usage::TokenUsage;

const SONNET: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const MICRO: &str = "amazon.nova-micro-v1:0";

fn price(text: &str) -> Option<PricePerToken> {
    Some(PricePerToken::parse_per_million(text).unwrap())
}

fn model_price(model: &str, prices: TokenPrices) -> ModelPrice {
    ModelPrice {
        key: PriceKey {
            model_id: ModelId::parse(model).unwrap(),
            region: "us-east-1".into(),
            offering: Offering::OnDemand,
            scope: PriceScope::Regional,
        },
        display_name: model.into(),
        prices,
    }
}

fn book(plan: Plan) -> PriceBook {
    let prices = [
        model_price(
            SONNET,
            TokenPrices {
                input: price("3.00"),
                output: price("15.00"),
                cache_read: price("0.30"),
                cache_write: price("3.75"),
            },
        ),
        model_price(
            MICRO,
            TokenPrices {
                input: price("0.035"),
                output: price("0.14"),
                cache_read: price("0.00875"),
                cache_write: None,
            },
        ),
    ];
    PriceBook {
        version: 7,
        updated_at: UNIX_EPOCH,
        prices_as_of: "2026-11-01".into(),
        prices_source: "test".into(),
        default_region: "us-east-1".into(),
        default_plan: plan.id.clone(),
        prices: prices.into_iter().map(|p| (p.key.clone(), p)).collect(),
        plans: BTreeMap::from([(plan.id.clone(), plan)]),
        assignments: BTreeMap::new(),
    }
}

fn usd(text: &str) -> AttoUsd {
    AttoUsd::parse_usd(text).unwrap()
}

fn plan(mode: TierMode, tiers: Vec<Tier>, adjustment_bps: i32) -> Plan {
    Plan {
        id: PlanId::parse("test").unwrap(),
        display_name: "Test".into(),
        mode,
        tiers,
        adjustment_bps,
        overrides: BTreeMap::new(),
        limits: PlanLimits::default(),
        expected_charge_nanos_per_hour: 0,
    }
}

fn line(model: &str, usage: TokenUsage) -> QuoteLine {
    QuoteLine {
        model_id: ModelId::parse(model).unwrap(),
        usage,
        region: None,
        offering: Offering::OnDemand,
        scope: PriceScope::Regional,
    }
}

/// A random valid plan: 1..4 tiers with increasing bounds (in cents, to cross
/// them often with small usage), multiplier or package rates, any adjustment.
fn arb_plan() -> impl Strategy<Value = Plan> {
    let rate = prop_oneof![
        (0i128..3_000_000).prop_map(TierRate::Multiplier),
        (1i128..500, 0i128..500).prop_map(|(size, price)| TierRate::Package {
            size: AttoUsd(size * ATTOS_PER_USD / 100),
            price: AttoUsd(price * ATTOS_PER_USD / 100),
        }),
    ];
    (
        prop::collection::vec((1i128..2_000, rate), 1..5),
        prop_oneof![Just(TierMode::Graduated), Just(TierMode::Volume)],
        -10_000i32..5_000,
    )
        .prop_map(|(raw, mode, adjustment)| {
            let last = raw.len() - 1;
            let mut bound = 0i128;
            let tiers = raw
                .into_iter()
                .enumerate()
                .map(|(index, (step, rate))| {
                    bound += step;
                    Tier {
                        up_to: (index < last).then_some(AttoUsd(bound * ATTOS_PER_USD / 100)),
                        rate,
                    }
                })
                .collect();
            plan(mode, tiers, adjustment)
        })
}

fn arb_usage() -> impl Strategy<Value = TokenUsage> {
    (0u64..200_000, 0u64..50_000, 0u64..100_000, 0u64..20_000).prop_map(
        |(input, output, cache_read, cache_write)| TokenUsage {
            input,
            output,
            cache_read,
            cache_write,
        },
    )
}

fn arb_line() -> impl Strategy<Value = QuoteLine> {
    prop_oneof![
        arb_usage().prop_map(|u| line(SONNET, u)),
        arb_usage().prop_map(|u| line(
            MICRO,
            TokenUsage {
                cache_write: 0,
                ..u
            }
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Graduated charges never fall as the period's rated value grows.
    #[test]
    fn graduated_charge_is_monotone(mut plan in arb_plan(), a in 0i128..50_000, b in 0i128..50_000) {
        plan.mode = TierMode::Graduated;
        let (low, high) = (a.min(b), a.max(b));
        let at = |cents: i128| plan.period_charge_nanos(AttoUsd(cents * ATTOS_PER_USD / 100)).unwrap();
        prop_assert!(at(low) <= at(high));
    }

    /// Quoting a period event by event, each on top of the events before it,
    /// adds up to exactly the quote of the whole period at once.
    #[test]
    fn any_split_of_a_period_costs_the_same(plan in arb_plan(), events in prop::collection::vec(arb_line(), 1..12)) {
        let book = book(plan);
        let whole = quote(&book, &Subject::DefaultPlan, &events, &[]).unwrap();
        let (mut cost, mut charge, mut rated) = (0i64, 0i64, 0i64);
        for (index, event) in events.iter().enumerate() {
            let one = quote(&book, &Subject::DefaultPlan, std::slice::from_ref(event), &events[..index]).unwrap();
            cost += one.provider_cost_nanos;
            charge += one.tenant_charge_nanos;
            rated += one.rated_value_nanos;
        }
        prop_assert_eq!(cost, whole.provider_cost_nanos);
        prop_assert_eq!(charge, whole.tenant_charge_nanos);
        prop_assert_eq!(rated, whole.rated_value_nanos);
        prop_assert_eq!(whole.period_total_charge_nanos, whole.tenant_charge_nanos);
    }

    /// Lines and tiers of a quote add up to its totals exactly.
    #[test]
    fn breakdowns_add_up(plan in arb_plan(), before in prop::collection::vec(arb_line(), 0..4), lines in prop::collection::vec(arb_line(), 1..6)) {
        let book = book(plan);
        let q = quote(&book, &Subject::DefaultPlan, &lines, &before).unwrap();
        prop_assert_eq!(q.lines.iter().map(|l| l.provider_cost_nanos).sum::<i64>(), q.provider_cost_nanos);
        prop_assert_eq!(q.lines.iter().map(|l| l.rated_value_nanos).sum::<i64>(), q.rated_value_nanos);
        prop_assert_eq!(q.tiers.iter().map(|t| t.charge_nanos).sum::<i64>(), q.tenant_charge_nanos);
        prop_assert_eq!(q.tiers.iter().map(|t| t.rated_value_nanos).sum::<i64>(), q.rated_value_nanos);
        prop_assert_eq!(q.period_total_charge_nanos - q.period_to_date_charge_nanos, q.tenant_charge_nanos);
    }
}

fn at_list_price() -> Plan {
    plan(
        TierMode::Graduated,
        vec![Tier {
            up_to: None,
            rate: TierRate::Multiplier(1_000_000),
        }],
        0,
    )
}

#[test]
fn a_million_in_and_out_on_sonnet_costs_eighteen_dollars() {
    let book = book(at_list_price());
    let usage = TokenUsage {
        input: 1_000_000,
        output: 1_000_000,
        ..TokenUsage::default()
    };
    let q = quote(&book, &Subject::DefaultPlan, &[line(SONNET, usage)], &[]).unwrap();
    assert_eq!(q.provider_cost_nanos, 18_000_000_000);
    assert_eq!(q.tenant_charge_nanos, 18_000_000_000);
    assert_eq!(q.price_book_version, 7);
}

#[test]
fn sub_nano_events_add_up_instead_of_rounding_away() {
    // One Nova Micro cache-read token costs 8.75 nano-USD: alone it rounds to
    // 9, but a thousand of them, quoted one at a time, must cost 8750, not 9000.
    let book = book(at_list_price());
    let one = line(
        MICRO,
        TokenUsage {
            cache_read: 1,
            ..TokenUsage::default()
        },
    );
    let mut history = Vec::new();
    let mut total = 0;
    for _ in 0..1000 {
        total += quote(
            &book,
            &Subject::DefaultPlan,
            std::slice::from_ref(&one),
            &history,
        )
        .unwrap()
        .provider_cost_nanos;
        history.push(one.clone());
    }
    assert_eq!(total, 8750);
}

#[test]
fn graduated_table_with_markup_is_exact() {
    // $1000 at 1.3x, the next $9000 at 1.2x, the rest at 1.1x; then 5% off.
    let plan = plan(
        TierMode::Graduated,
        vec![
            Tier {
                up_to: Some(usd("1000")),
                rate: TierRate::parse_multiplier("1.3").unwrap(),
            },
            Tier {
                up_to: Some(usd("10000")),
                rate: TierRate::parse_multiplier("1.2").unwrap(),
            },
            Tier {
                up_to: None,
                rate: TierRate::parse_multiplier("1.1").unwrap(),
            },
        ],
        -500,
    );
    let book = book(plan);
    // 1B Sonnet output tokens = $15,000 of rated value on top of $0 so far:
    // (1000*1.3 + 9000*1.2 + 5000*1.1) * 0.95 = (1300 + 10800 + 5500) * 0.95 = 16720
    let usage = TokenUsage {
        output: 1_000_000_000,
        ..TokenUsage::default()
    };
    let q = quote(&book, &Subject::DefaultPlan, &[line(SONNET, usage)], &[]).unwrap();
    assert_eq!(q.provider_cost_nanos, 15_000_000_000_000);
    assert_eq!(q.tenant_charge_nanos, 16_720_000_000_000);
    let per_tier: Vec<(usize, i64)> = q.tiers.iter().map(|t| (t.index, t.charge_nanos)).collect();
    assert_eq!(
        per_tier,
        vec![
            (0, 1_235_000_000_000),
            (1, 10_260_000_000_000),
            (2, 5_225_000_000_000)
        ]
    );
}

#[test]
fn plan_overrides_change_the_rated_value_not_the_provider_cost() {
    let mut plan = at_list_price();
    plan.overrides.insert(
        ModelId::parse(SONNET).unwrap(),
        TokenPrices {
            output: price("20"),
            ..TokenPrices::default()
        },
    );
    let book = book(plan);
    let usage = TokenUsage {
        input: 1_000_000,
        output: 1_000_000,
        ..TokenUsage::default()
    };
    let q = quote(&book, &Subject::DefaultPlan, &[line(SONNET, usage)], &[]).unwrap();
    assert_eq!(q.provider_cost_nanos, 18_000_000_000);
    // Input keeps its list price (3), output is the plan's own (20).
    assert_eq!(q.tenant_charge_nanos, 23_000_000_000);
}

#[test]
fn errors_name_the_field() {
    let book = book(at_list_price());
    let err = quote(
        &book,
        &Subject::DefaultPlan,
        &[line("meta.unknown-v1:0", TokenUsage::default())],
        &[],
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("lines[0].model_id: no list price for meta.unknown-v1:0 in us-east-1"),
        "{err}"
    );

    let err = quote(
        &book,
        &Subject::DefaultPlan,
        &[line(
            MICRO,
            TokenUsage {
                cache_write: 5,
                ..TokenUsage::default()
            },
        )],
        &[],
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("lines[0].usage.cache_write_input_tokens:"),
        "{err}"
    );

    let err = quote(
        &book,
        &Subject::Plan(PlanId::parse("gold").unwrap()),
        &[],
        &[],
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "plan PlanId(\"gold\") does not exist");

    // A tenant without an assignment is priced on the default plan.
    let q = quote(
        &book,
        &Subject::Tenant(TenantId::parse("acme").unwrap()),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(q.plan_id.as_str(), "test");
}
