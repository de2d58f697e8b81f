//! `GatewayAdminService` over gRPC, behind the admin interceptor: tenants, keys,
//! paging, plan assignment through pricing, and provisioning of application
//! inference profiles through the real aws-sdk-bedrock against the emulator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod admin_support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use admin_support::{
    ACCOUNT, AdminStack, HAIKU, SONNET, SONNET_4, SONNET_45, START_MS, admin, bad_field,
    provision_config,
};
use aws_sdk_bedrock::types::{InferenceProfileModelSource, Tag};
use prost::Message as _;
use tenantmeter_domain::ids::TenantId;
use tenantmeter_gateway::provision::{ProvisionConfig, profile_name};
use tenantmeter_gateway::registry::AuthError;
use tenantmeter_gateway::registry::model::ProfileState;
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::gateway_admin_service_client::GatewayAdminServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

type Client = GatewayAdminServiceClient<Channel>;

fn tenant_request(tenant: &str) -> pb::CreateTenantRequest {
    pb::CreateTenantRequest {
        tenant_id: tenant.to_owned(),
        display_name: format!("{tenant} Inc"),
        application_ids: vec!["chat".to_owned(), "batch".to_owned()],
        cost_center: "cc-7".to_owned(),
        profile_tags: HashMap::from([("team".to_owned(), "ml".to_owned())]),
        plan_id: String::new(),
    }
}

async fn create(client: &mut Client, tenant: &str) -> pb::CreateTenantResponse {
    client
        .create_tenant(admin(tenant_request(tenant)))
        .await
        .unwrap()
        .into_inner()
}

async fn get(client: &mut Client, tenant: &str) -> pb::Tenant {
    client
        .get_tenant(admin(pb::GetTenantRequest {
            tenant_id: tenant.to_owned(),
        }))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap()
}

fn alias(name: &str, source: &str) -> pb::ModelAliasSpec {
    pb::ModelAliasSpec {
        alias: name.to_owned(),
        source_model_id: source.to_owned(),
        existing_inference_profile_arn: String::new(),
    }
}

fn provision_request(
    tenant: &str,
    aliases: Vec<pb::ModelAliasSpec>,
    regions: &[&str],
) -> pb::ProvisionProfilesRequest {
    pb::ProvisionProfilesRequest {
        tenant_id: tenant.to_owned(),
        aliases,
        regions: regions.iter().map(|r| (*r).to_owned()).collect(),
    }
}

async fn provision(
    client: &mut Client,
    tenant: &str,
    aliases: Vec<pb::ModelAliasSpec>,
    regions: &[&str],
) -> pb::ProvisionProfilesResponse {
    client
        .provision_profiles(admin(provision_request(tenant, aliases, regions)))
        .await
        .unwrap()
        .into_inner()
}

fn outcomes(
    response: &pb::ProvisionProfilesResponse,
) -> Vec<(String, String, pb::ProvisionOutcome)> {
    response
        .results
        .iter()
        .map(|r| (r.alias.clone(), r.region.clone(), r.outcome()))
        .collect()
}

fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap(),
    }
}

fn model_alias<'a>(tenant: &'a pb::Tenant, alias: &str) -> &'a pb::ModelAlias {
    tenant
        .model_aliases
        .iter()
        .find(|a| a.alias == alias)
        .unwrap_or_else(|| panic!("no alias {alias} in {tenant:?}"))
}

#[tokio::test]
async fn create_returns_the_key_once_and_get_lists_it_without_secret() {
    let stack = AdminStack::start().await;
    let mut client = stack.client().await;
    let created = create(&mut client, "acme").await;
    let key = created.api_key.clone();
    assert!(key.starts_with("tmk_"), "{key}");
    let tenant = created.tenant.unwrap();
    assert_eq!(tenant.tenant_id, "acme");
    assert_eq!(tenant.display_name, "acme Inc");
    assert_eq!(tenant.application_ids, ["chat", "batch"]);
    assert_eq!(tenant.cost_center, "cc-7");
    assert_eq!(
        tenant.profile_tags,
        HashMap::from([("team".to_owned(), "ml".to_owned())])
    );
    assert_eq!(tenant.state(), pb::TenantState::Active);
    assert_eq!(tenant.plan_id, "");
    assert_eq!(tenant.created_at, Some(ts(START_MS)));
    assert_eq!(tenant.updated_at, Some(ts(START_MS)));
    assert_eq!(
        tenant.api_keys,
        [pb::ApiKey {
            key_id: key[4..20].to_owned(),
            created_at: Some(ts(START_MS)),
            expires_at: None,
        }]
    );
    assert!(tenant.model_aliases.is_empty());

    // The key works, and GetTenant never shows it again.
    assert_eq!(
        stack.registry.authenticate(&key).await.unwrap().tenant_id,
        "acme"
    );
    let fetched = get(&mut client, "acme").await;
    assert_eq!(fetched, tenant);
    let encoded = pb::GetTenantResponse {
        tenant: Some(fetched),
    }
    .encode_to_vec();
    let secret = key.rsplit('_').next().unwrap();
    assert!(
        !encoded
            .windows(secret.len())
            .any(|w| w == secret.as_bytes())
    );

    // ALREADY_EXISTS on a taken id.
    let taken = client
        .create_tenant(admin(tenant_request("acme")))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    assert_eq!(taken.message(), "tenant \"acme\" already exists");

    // NOT_FOUND names the tenant.
    let missing = client
        .get_tenant(admin(pb::GetTenantRequest {
            tenant_id: "nobody".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let info = missing.get_details_resource_info().unwrap();
    assert_eq!(
        (info.resource_type.as_str(), info.resource_name.as_str()),
        ("tenant", "nobody")
    );

    // Without the admin token: the interceptor refuses.
    let anonymous = client
        .get_tenant(tonic::Request::new(pb::GetTenantRequest {
            tenant_id: "acme".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn invalid_requests_name_the_field() {
    let stack = AdminStack::start().await;
    let mut client = stack.client().await;
    let cases: Vec<(pb::CreateTenantRequest, &str)> = vec![
        (
            pb::CreateTenantRequest {
                tenant_id: "a b".into(),
                ..tenant_request("x")
            },
            "tenant_id",
        ),
        (
            pb::CreateTenantRequest {
                tenant_id: String::new(),
                ..tenant_request("x")
            },
            "tenant_id",
        ),
        (
            pb::CreateTenantRequest {
                application_ids: vec![],
                ..tenant_request("x")
            },
            "application_ids",
        ),
        (
            pb::CreateTenantRequest {
                application_ids: vec!["chat".into(), "chat".into()],
                ..tenant_request("x")
            },
            "application_ids[1]",
        ),
        (
            pb::CreateTenantRequest {
                profile_tags: HashMap::from([("TenantID".into(), "other".into())]),
                ..tenant_request("x")
            },
            "profile_tags[\"TenantID\"]",
        ),
        (
            pb::CreateTenantRequest {
                profile_tags: HashMap::from([("team".into(), "a,b".into())]),
                ..tenant_request("x")
            },
            "profile_tags[\"team\"]",
        ),
        (
            pb::CreateTenantRequest {
                plan_id: "no plan".into(),
                ..tenant_request("x")
            },
            "plan_id",
        ),
    ];
    for (request, field) in cases {
        let refused = client.create_tenant(admin(request)).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(bad_field(&refused), field);
    }
    // Nothing was created.
    let listed = client
        .list_tenants(admin(pb::ListTenantsRequest {
            include_disabled: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tenants.is_empty());
}

#[tokio::test]
async fn a_plan_is_assigned_in_pricing_and_an_unknown_plan_creates_nothing() {
    let stack = AdminStack::start().await;
    let mut client = stack.client().await;
    let created = client
        .create_tenant(admin(pb::CreateTenantRequest {
            plan_id: "pro".into(),
            ..tenant_request("acme")
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.tenant.unwrap().plan_id, "pro");
    let plan = stack
        .pricing()
        .await
        .get_tenant_plan(pb::GetTenantPlanRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (plan.plan.unwrap().plan_id.as_str(), plan.is_default),
        ("pro", false)
    );

    let unknown = client
        .create_tenant(admin(pb::CreateTenantRequest {
            plan_id: "platinum".into(),
            ..tenant_request("initech")
        }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let info = unknown.get_details_resource_info().unwrap();
    assert_eq!(
        (info.resource_type.as_str(), info.resource_name.as_str()),
        ("plan", "platinum")
    );
    // Undone: the id is free, and no key of it works.
    let gone = client
        .get_tenant(admin(pb::GetTenantRequest {
            tenant_id: "initech".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let again = create(&mut client, "initech").await;
    assert_eq!(again.tenant.unwrap().plan_id, "");
}

#[tokio::test]
async fn list_tenants_pages_by_id() {
    let stack = AdminStack::start().await;
    let mut client = stack.client().await;
    for tenant in ["delta", "alpha", "echo", "charlie", "bravo"] {
        create(&mut client, tenant).await;
    }
    client
        .disable_tenant(admin(pb::DisableTenantRequest {
            tenant_id: "charlie".into(),
            reason: "x".into(),
        }))
        .await
        .unwrap();
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_tenants(admin(pb::ListTenantsRequest {
                page_size: 2,
                page_token: token.clone(),
                include_disabled: true,
            }))
            .await
            .unwrap()
            .into_inner();
        pages.push(
            page.tenants
                .iter()
                .map(|t| t.tenant_id.clone())
                .collect::<Vec<_>>(),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        pages,
        [
            vec!["alpha", "bravo"],
            vec!["charlie", "delta"],
            vec!["echo"]
        ]
    );
    assert_eq!(token, "v1/delta");

    let active = client
        .list_tenants(admin(pb::ListTenantsRequest {
            page_size: 0,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = active
        .tenants
        .iter()
        .map(|t| t.tenant_id.as_str())
        .collect();
    assert_eq!(ids, ["alpha", "bravo", "delta", "echo"]);
    assert_eq!(active.next_page_token, "");

    for (request, field) in [
        (
            pb::ListTenantsRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListTenantsRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListTenantsRequest {
                page_token: "delta".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListTenantsRequest {
                page_token: "v1/a b".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        let refused = client.list_tenants(admin(request)).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(bad_field(&refused), field);
    }
}

#[tokio::test]
async fn rotate_disable_and_enable() {
    let stack = AdminStack::start().await;
    let mut client = stack.client().await;
    let first = create(&mut client, "acme").await.api_key;
    stack.clock.advance(Duration::from_secs(10));

    // Default overlap: 24 hours.
    let rotated = client
        .rotate_key(admin(pb::RotateKeyRequest {
            tenant_id: "acme".into(),
            overlap: None,
        }))
        .await
        .unwrap()
        .into_inner();
    let second = rotated.api_key;
    let keys = rotated.tenant.unwrap().api_keys;
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].key_id, second[4..20]);
    assert_eq!(keys[0].expires_at, None);
    assert_eq!(keys[1].key_id, first[4..20]);
    assert_eq!(keys[1].expires_at, Some(ts(START_MS + 10_000 + 86_400_000)));
    assert!(stack.registry.authenticate(&first).await.is_ok());
    assert!(stack.registry.authenticate(&second).await.is_ok());

    // Overlap 0: at once (a leaked key).
    let third = client
        .rotate_key(admin(pb::RotateKeyRequest {
            tenant_id: "acme".into(),
            overlap: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    for stopped in [&first, &second] {
        assert_eq!(
            stack.registry.authenticate(stopped).await.unwrap_err(),
            AuthError::InvalidKey
        );
    }
    assert!(stack.registry.authenticate(&third).await.is_ok());

    let negative = client
        .rotate_key(admin(pb::RotateKeyRequest {
            tenant_id: "acme".into(),
            overlap: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (negative.code(), bad_field(&negative).as_str()),
        (Code::InvalidArgument, "overlap")
    );
    let unknown = client
        .rotate_key(admin(pb::RotateKeyRequest {
            tenant_id: "nobody".into(),
            overlap: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let disabled = client
        .disable_tenant(admin(pb::DisableTenantRequest {
            tenant_id: "acme".into(),
            reason: "unpaid".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(
        (disabled.state(), disabled.disabled_reason.as_str()),
        (pb::TenantState::Disabled, "unpaid")
    );
    assert_eq!(
        stack.registry.authenticate(&third).await.unwrap_err(),
        AuthError::Disabled {
            tenant_id: "acme".into(),
            reason: "unpaid".into()
        }
    );
    let enabled = client
        .enable_tenant(admin(pb::EnableTenantRequest {
            tenant_id: "acme".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(
        (enabled.state(), enabled.disabled_reason.as_str()),
        (pb::TenantState::Active, "")
    );
    assert!(stack.registry.authenticate(&third).await.is_ok());
}

#[tokio::test]
async fn provisioning_creates_tagged_profiles_and_a_rerun_reuses_them() {
    let stack = AdminStack::start().await;
    let mut client = stack.client().await;
    create(&mut client, "acme").await;
    let us_sonnet = format!("us.{SONNET}");
    let first = provision(
        &mut client,
        "acme",
        vec![alias("haiku", HAIKU), alias("sonnet", &us_sonnet)],
        &["us-east-1", "us-west-2"],
    )
    .await;
    assert_eq!(
        outcomes(&first),
        [
            (
                "haiku".into(),
                "us-east-1".into(),
                pb::ProvisionOutcome::Created
            ),
            (
                "haiku".into(),
                "us-west-2".into(),
                pb::ProvisionOutcome::Created
            ),
            (
                "sonnet".into(),
                "us-east-1".into(),
                pb::ProvisionOutcome::Created
            ),
            (
                "sonnet".into(),
                "us-west-2".into(),
                pb::ProvisionOutcome::Created
            ),
        ]
    );
    for result in &first.results {
        let prefix = format!(
            "arn:aws:bedrock:{}:{ACCOUNT}:application-inference-profile/",
            result.region
        );
        assert!(
            result.inference_profile_arn.starts_with(&prefix),
            "{result:?}"
        );
        assert_eq!(result.message, "");
        // Tagged for AWS's bill: the four standard tags and the tenant's own.
        assert_eq!(
            stack
                .bedrock
                .tags(&result.region, &result.inference_profile_arn)
                .await,
            BTreeMap::from([
                ("TenantID".to_owned(), "acme".to_owned()),
                ("ApplicationID".to_owned(), "chat".to_owned()),
                ("CostCenter".to_owned(), "cc-7".to_owned()),
                ("Environment".to_owned(), "test".to_owned()),
                ("team".to_owned(), "ml".to_owned()),
            ])
        );
    }
    // Named per tenant x alias; copying the foundation model (the `us.` system
    // profile resolves to it).
    for region in ["us-east-1", "us-west-2"] {
        let mut names: Vec<String> = stack
            .bedrock
            .profiles(region)
            .await
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        names.sort();
        let mut expected = vec![
            profile_name("acme", "haiku"),
            profile_name("acme", "sonnet"),
        ];
        expected.sort();
        assert_eq!(names, expected);
    }
    let haiku_arn = &first.results[0].inference_profile_arn;
    let got = stack
        .bedrock
        .client("us-east-1")
        .await
        .get_inference_profile()
        .inference_profile_identifier(haiku_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.models()[0].model_arn(),
        Some(format!("arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}").as_str())
    );

    // Recorded: GetTenant shows the aliases, and the call path's record has the ARNs.
    let tenant = get(&mut client, "acme").await;
    assert_eq!(first.tenant.as_ref(), Some(&tenant));
    let sonnet = model_alias(&tenant, "sonnet");
    assert_eq!(
        (
            sonnet.source_model_id.as_str(),
            sonnet.model_id.as_str(),
            sonnet.scope()
        ),
        (us_sonnet.as_str(), SONNET, pb::PriceScope::Regional)
    );
    assert_eq!(sonnet.profiles.len(), 2);
    assert!(
        sonnet
            .profiles
            .iter()
            .all(|p| p.status() == pb::ProfileStatus::Active)
    );
    let record = stack
        .registry
        .fetch_tenant(&TenantId::parse("acme").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.aliases["haiku"].profiles["us-east-1"].arn,
        *haiku_arn
    );
    assert_eq!(
        record.aliases["haiku"].profiles["us-east-1"].state,
        ProfileState::Active
    );

    // Again: REUSED, the same ARNs, no new profile in Bedrock.
    let second = provision(
        &mut client,
        "acme",
        vec![alias("haiku", HAIKU), alias("sonnet", &us_sonnet)],
        &["us-east-1", "us-west-2"],
    )
    .await;
    assert!(
        second
            .results
            .iter()
            .all(|r| r.outcome() == pb::ProvisionOutcome::Reused)
    );
    let arns = |r: &pb::ProvisionProfilesResponse| {
        r.results
            .iter()
            .map(|r| r.inference_profile_arn.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(arns(&second), arns(&first));
    for region in ["us-east-1", "us-west-2"] {
        assert_eq!(stack.bedrock.profiles(region).await.len(), 2);
    }
    // Nothing changed, so nothing was written.
    assert_eq!(
        stack
            .registry
            .fetch_tenant(&TenantId::parse("acme").unwrap())
            .await
            .unwrap()
            .unwrap()
            .revision,
        record.revision
    );

    // No regions in the request: the configured ones (us-east-1).
    let default = provision(
        &mut client,
        "acme",
        vec![alias("micro", "amazon.nova-micro-v1:0")],
        &[],
    )
    .await;
    assert_eq!(
        outcomes(&default),
        [(
            "micro".into(),
            "us-east-1".into(),
            pb::ProvisionOutcome::Created
        )]
    );
}

#[tokio::test]
async fn global_sources_are_priced_by_their_scope() {
    let stack = AdminStack::start().await;
    let mut client = stack.client().await;
    create(&mut client, "acme").await;
    let response = provision(
        &mut client,
        "acme",
        vec![
            alias("s45g", &format!("global.{SONNET_45}")),
            alias("s45us", &format!("us.{SONNET_45}")),
            // Priced the same however routed: only a regional price exists.
            alias("s4g", &format!("global.{SONNET_4}")),
        ],
        &["us-east-1"],
    )
    .await;
    assert!(
        response
            .results
            .iter()
            .all(|r| r.outcome() == pb::ProvisionOutcome::Created)
    );
    let tenant = response.tenant.unwrap();
    let scope = |a: &str| {
        let a = model_alias(&tenant, a);
        (a.model_id.clone(), a.scope())
    };
    assert_eq!(
        scope("s45g"),
        (SONNET_45.to_owned(), pb::PriceScope::Global)
    );
    assert_eq!(
        scope("s45us"),
        (SONNET_45.to_owned(), pb::PriceScope::Regional)
    );
    assert_eq!(
        scope("s4g"),
        (SONNET_4.to_owned(), pb::PriceScope::Regional)
    );
}

#[tokio::test]
async fn a_profile_left_by_an_earlier_run_is_found_by_name_and_reused() {
    let stack = AdminStack::start().await;
    let mut client = stack.client().await;
    create(&mut client, "acme").await;
    let bedrock = stack.bedrock.client("us-east-1").await;
    let make = |name: String, tenant: &'static str| {
        let bedrock = bedrock.clone();
        async move {
            bedrock
                .create_inference_profile()
                .inference_profile_name(name)
                .model_source(InferenceProfileModelSource::CopyFrom(format!(
                    "arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}"
                )))
                .tags(
                    Tag::builder()
                        .key("TenantID")
                        .value(tenant)
                        .build()
                        .unwrap(),
                )
                .send()
                .await
                .unwrap()
                .inference_profile_arn()
                .to_owned()
        }
    };
    // As if an earlier run created it and failed before recording it.
    let left = make(profile_name("acme", "haiku"), "acme").await;
    // The same name, but another tenant's: never taken over.
    make(profile_name("acme", "other"), "globex").await;

    let response = provision(
        &mut client,
        "acme",
        vec![alias("haiku", HAIKU), alias("other", HAIKU)],
        &["us-east-1"],
    )
    .await;
    assert_eq!(
        outcomes(&response),
        [
            (
                "haiku".into(),
                "us-east-1".into(),
                pb::ProvisionOutcome::Reused
            ),
            (
                "other".into(),
                "us-east-1".into(),
                pb::ProvisionOutcome::Failed
            ),
        ]
    );
    assert_eq!(response.results[0].inference_profile_arn, left);
    assert!(
        response.results[1]
            .message
            .contains("is tagged TenantID=globex, not this tenant"),
        "{:?}",
        response.results[1]
    );
    assert_eq!(response.results[1].inference_profile_arn, "");
    assert_eq!(stack.bedrock.profiles("us-east-1").await.len(), 2);
    let tenant = response.tenant.unwrap();
    assert_eq!(
        model_alias(&tenant, "haiku").profiles[0].inference_profile_arn,
        left
    );
    let other = &model_alias(&tenant, "other").profiles[0];
    assert_eq!(
        (other.status(), other.inference_profile_arn.as_str()),
        (pb::ProfileStatus::Failed, "")
    );
}

#[tokio::test]
async fn bedrock_failures_are_per_result_and_a_rerun_finishes() {
    let stack = AdminStack::start().await;
    let mut client = stack.client().await;
    create(&mut client, "acme").await;
    provision(
        &mut client,
        "acme",
        vec![alias("haiku", HAIKU)],
        &["us-east-1"],
    )
    .await;

    // A gateway whose profile descriptions carry the emulator's fault marker:
    // every CreateInferenceProfile it sends is throttled.
    let faulty = stack
        .serve(ProvisionConfig {
            description: "[[fault:throttling]] {tenant} {alias}".to_owned(),
            ..provision_config()
        })
        .await;
    let mut faulty = stack.client_at(faulty).await;
    let response = provision(
        &mut faulty,
        "acme",
        vec![alias("haiku", HAIKU), alias("sonnet", SONNET)],
        &["us-east-1"],
    )
    .await;
    assert_eq!(
        outcomes(&response),
        [
            (
                "haiku".into(),
                "us-east-1".into(),
                pb::ProvisionOutcome::Reused
            ),
            (
                "sonnet".into(),
                "us-east-1".into(),
                pb::ProvisionOutcome::Failed
            ),
        ]
    );
    assert_eq!(
        response.results[1].message,
        "ThrottlingException: ThrottlingException injected by the emulator for CreateInferenceProfile"
    );
    let sonnet = model_alias(response.tenant.as_ref().unwrap(), "sonnet");
    assert_eq!(sonnet.profiles[0].status(), pb::ProfileStatus::Failed);
    let record = stack
        .registry
        .fetch_tenant(&TenantId::parse("acme").unwrap())
        .await
        .unwrap()
        .unwrap();
    let failed = &record.aliases["sonnet"].profiles["us-east-1"];
    assert_eq!(
        (failed.state, failed.message.as_str()),
        (ProfileState::Failed, response.results[1].message.as_str())
    );

    // Run again through a healthy gateway: finished.
    let again = provision(
        &mut client,
        "acme",
        vec![alias("haiku", HAIKU), alias("sonnet", SONNET)],
        &["us-east-1"],
    )
    .await;
    assert_eq!(
        outcomes(&again),
        [
            (
                "haiku".into(),
                "us-east-1".into(),
                pb::ProvisionOutcome::Reused
            ),
            (
                "sonnet".into(),
                "us-east-1".into(),
                pb::ProvisionOutcome::Created
            ),
        ]
    );
    let sonnet = model_alias(again.tenant.as_ref().unwrap(), "sonnet");
    assert_eq!(sonnet.profiles[0].status(), pb::ProfileStatus::Active);
    assert_eq!(stack.bedrock.profiles("us-east-1").await.len(), 2);
}

#[tokio::test]
async fn an_alias_bound_to_another_source_is_refused_until_removed() {
    let stack = AdminStack::start().await;
    let mut client = stack.client().await;
    create(&mut client, "acme").await;
    provision(
        &mut client,
        "acme",
        vec![alias("chat", HAIKU)],
        &["us-east-1"],
    )
    .await;

    let refused = client
        .provision_profiles(admin(provision_request(
            "acme",
            vec![alias("chat", SONNET)],
            &["us-east-1"],
        )))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        refused.get_details_error_info().unwrap().reason,
        "ALIAS_BOUND_TO_OTHER_SOURCE"
    );
    assert!(refused.message().contains(HAIKU), "{}", refused.message());
    assert_eq!(stack.bedrock.profiles("us-east-1").await.len(), 1);

    client
        .remove_model_aliases(admin(pb::RemoveModelAliasesRequest {
            tenant_id: "acme".into(),
            aliases: vec!["chat".into()],
            delete_profiles: true,
        }))
        .await
        .unwrap();
    let rebound = provision(
        &mut client,
        "acme",
        vec![alias("chat", SONNET)],
        &["us-east-1"],
    )
    .await;
    assert_eq!(rebound.results[0].outcome(), pb::ProvisionOutcome::Created);
    assert_eq!(
        model_alias(rebound.tenant.as_ref().unwrap(), "chat").model_id,
        SONNET
    );
    assert_eq!(stack.bedrock.profiles("us-east-1").await.len(), 1);
}

#[tokio::test]
async fn unpriced_models_and_bad_requests_create_nothing() {
    let stack = AdminStack::start().await;
    let mut client = stack.client().await;
    create(&mut client, "acme").await;

    let unpriced = client
        .provision_profiles(admin(provision_request(
            "acme",
            vec![alias("x", "acme.unknown-model-v1:0")],
            &["us-east-1"],
        )))
        .await
        .unwrap_err();
    assert_eq!(unpriced.code(), Code::NotFound);
    let info = unpriced.get_details_resource_info().unwrap();
    assert_eq!(info.resource_type, "model price");
    assert_eq!(
        info.resource_name,
        "acme.unknown-model-v1:0 in us-east-1 (on_demand, regional)"
    );
    // Priced in us-east-1 but not in eu-west-1.
    let region = client
        .provision_profiles(admin(provision_request(
            "acme",
            vec![alias("haiku", HAIKU)],
            &["us-east-1", "eu-west-1"],
        )))
        .await
        .unwrap_err();
    assert_eq!(region.code(), Code::NotFound);
    assert_eq!(
        region.get_details_resource_info().unwrap().resource_name,
        format!("{HAIKU} in eu-west-1 (on_demand, regional)")
    );

    let unknown_tenant = client
        .provision_profiles(admin(provision_request(
            "nobody",
            vec![alias("haiku", HAIKU)],
            &[],
        )))
        .await
        .unwrap_err();
    assert_eq!(unknown_tenant.code(), Code::NotFound);

    for (request, field) in [
        (provision_request("acme", vec![], &[]), "aliases"),
        (
            provision_request("acme", vec![alias("a b", HAIKU)], &[]),
            "aliases[0].alias",
        ),
        (
            provision_request("acme", vec![alias("h", HAIKU), alias("h", HAIKU)], &[]),
            "aliases[1].alias",
        ),
        (
            provision_request("acme", vec![alias("h", "")], &[]),
            "aliases[0].source_model_id",
        ),
        (
            provision_request("acme", vec![alias("h", "bad model")], &[]),
            "aliases[0].source_model_id",
        ),
        (
            provision_request("acme", vec![alias("h", HAIKU)], &["ap-south-1"]),
            "regions[0]",
        ),
        (
            provision_request("acme", vec![alias("h", HAIKU)], &["us-east-1", "us-east-1"]),
            "regions[1]",
        ),
        (
            provision_request("a b", vec![alias("h", HAIKU)], &[]),
            "tenant_id",
        ),
    ] {
        let refused = client.provision_profiles(admin(request)).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(bad_field(&refused), field);
    }
    for region in admin_support::REGIONS {
        assert!(stack.bedrock.profiles(region).await.is_empty());
    }
    assert!(get(&mut client, "acme").await.model_aliases.is_empty());
}

#[tokio::test]
async fn an_existing_profile_is_checked_and_recorded() {
    let stack = AdminStack::start().await;
    let mut client = stack.client().await;
    create(&mut client, "acme").await;
    let managed = stack
        .bedrock
        .client("us-east-1")
        .await
        .create_inference_profile()
        .inference_profile_name("managed-elsewhere")
        .model_source(InferenceProfileModelSource::CopyFrom(format!(
            "arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}"
        )))
        .send()
        .await
        .unwrap()
        .inference_profile_arn()
        .to_owned();
    let existing = |name: &str, source: &str, arn: &str| pb::ModelAliasSpec {
        existing_inference_profile_arn: arn.to_owned(),
        ..alias(name, source)
    };

    // It must copy the alias's model.
    let wrong = client
        .provision_profiles(admin(provision_request(
            "acme",
            vec![existing("s", SONNET, &managed)],
            &["us-east-1"],
        )))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument);
    assert_eq!(
        bad_field(&wrong),
        "aliases[0].existing_inference_profile_arn"
    );
    assert!(
        wrong
            .message()
            .contains(&format!("copies {HAIKU}, not {SONNET}")),
        "{}",
        wrong.message()
    );
    // It needs exactly one region.
    let regions = client
        .provision_profiles(admin(provision_request(
            "acme",
            vec![existing("h", HAIKU, &managed)],
            &[],
        )))
        .await
        .unwrap_err();
    assert_eq!(bad_field(&regions), "regions");

    let recorded = provision(
        &mut client,
        "acme",
        vec![existing("h", HAIKU, &managed)],
        &["us-east-1"],
    )
    .await;
    assert_eq!(
        outcomes(&recorded),
        [(
            "h".into(),
            "us-east-1".into(),
            pb::ProvisionOutcome::Recorded
        )]
    );
    assert_eq!(recorded.results[0].inference_profile_arn, managed);
    assert_eq!(
        model_alias(recorded.tenant.as_ref().unwrap(), "h").profiles[0].inference_profile_arn,
        managed
    );
    // Recorded once: the same request again reuses it.
    let again = provision(
        &mut client,
        "acme",
        vec![existing("h", HAIKU, &managed)],
        &["us-east-1"],
    )
    .await;
    assert_eq!(again.results[0].outcome(), pb::ProvisionOutcome::Reused);

    // A profile Bedrock does not know: a per-result failure with Bedrock's message.
    let missing =
        format!("arn:aws:bedrock:us-east-1:{ACCOUNT}:application-inference-profile/zzzzzzzzzzzz");
    let failed = provision(
        &mut client,
        "acme",
        vec![existing("m", HAIKU, &missing)],
        &["us-east-1"],
    )
    .await;
    assert_eq!(failed.results[0].outcome(), pb::ProvisionOutcome::Failed);
    assert!(
        failed.results[0]
            .message
            .starts_with("ResourceNotFoundException: "),
        "{:?}",
        failed.results[0]
    );
    assert_eq!(stack.bedrock.profiles("us-east-1").await.len(), 1);
}

#[tokio::test]
async fn removing_aliases_can_delete_their_profiles() {
    let stack = AdminStack::start().await;
    let mut client = stack.client().await;
    create(&mut client, "acme").await;
    let provisioned = provision(
        &mut client,
        "acme",
        vec![alias("haiku", HAIKU), alias("sonnet", SONNET)],
        &["us-east-1", "us-west-2"],
    )
    .await;
    let removed = client
        .remove_model_aliases(admin(pb::RemoveModelAliasesRequest {
            tenant_id: "acme".into(),
            aliases: vec!["haiku".into(), "unknown".into()],
            delete_profiles: true,
        }))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    let left: Vec<&str> = removed
        .model_aliases
        .iter()
        .map(|a| a.alias.as_str())
        .collect();
    assert_eq!(left, ["sonnet"]);
    for result in &provisioned.results {
        let found = stack
            .bedrock
            .client(&result.region)
            .await
            .get_inference_profile()
            .inference_profile_identifier(&result.inference_profile_arn)
            .send()
            .await;
        assert_eq!(found.is_ok(), result.alias == "sonnet", "{result:?}");
    }
    // Without delete_profiles the profiles stay in Bedrock.
    client
        .remove_model_aliases(admin(pb::RemoveModelAliasesRequest {
            tenant_id: "acme".into(),
            aliases: vec!["sonnet".into()],
            delete_profiles: false,
        }))
        .await
        .unwrap();
    assert!(get(&mut client, "acme").await.model_aliases.is_empty());
    assert_eq!(stack.bedrock.profiles("us-east-1").await.len(), 1);
    assert_eq!(stack.bedrock.profiles("us-west-2").await.len(), 1);
}

#[tokio::test]
async fn redis_down_is_unavailable() {
    let mut stack = AdminStack::start().await;
    let mut client = stack.client().await;
    create(&mut client, "acme").await;
    stack.redis.kill().await.unwrap();
    for refused in [
        client
            .get_tenant(admin(pb::GetTenantRequest {
                tenant_id: "acme".into(),
            }))
            .await
            .unwrap_err(),
        client
            .create_tenant(admin(tenant_request("globex")))
            .await
            .unwrap_err(),
        client
            .list_tenants(admin(pb::ListTenantsRequest::default()))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert_eq!(refused.message(), "redis is unavailable; retry after 1s");
    }
}
