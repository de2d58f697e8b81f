//! The inference-profile control plane driven by the real `aws-sdk-bedrock` client, as the
//! gateway's provisioning will drive it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failed unwrap is a failed test

mod support;

use aws_sdk_bedrock::Client;
use aws_sdk_bedrock::operation::create_inference_profile::CreateInferenceProfileError;
use aws_sdk_bedrock::operation::delete_inference_profile::DeleteInferenceProfileError;
use aws_sdk_bedrock::operation::get_inference_profile::GetInferenceProfileError;
use aws_sdk_bedrock::operation::list_tags_for_resource::ListTagsForResourceError;
use aws_sdk_bedrock::types::{
    InferenceProfileModelSource, InferenceProfileStatus, InferenceProfileType, Tag,
};
use support::{
    ACCOUNT, MODEL, REGION, control_client, control_client_in, create_profile,
    foundation_model_arn, start, system_profile_arn,
};
use tenantmeter_emulator::{EmulatorConfig, Fault};

const PROFILE_ARN_PREFIX: &str =
    "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/";

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build().unwrap()
}

fn tag_pairs(tags: &[Tag]) -> Vec<(&str, &str)> {
    tags.iter().map(|t| (t.key(), t.value())).collect()
}

fn copy_from(arn: &str) -> InferenceProfileModelSource {
    InferenceProfileModelSource::CopyFrom(arn.to_owned())
}

async fn create_error(client: &Client, name: &str, source: &str) -> CreateInferenceProfileError {
    client
        .create_inference_profile()
        .inference_profile_name(name)
        .model_source(copy_from(source))
        .send()
        .await
        .unwrap_err()
        .into_service_error()
}

#[tokio::test]
async fn create_get_list_tags_delete_round_trip() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = control_client(emulator.addr).await;
    let source = foundation_model_arn(REGION, MODEL);

    let created = client
        .create_inference_profile()
        .inference_profile_name("tenant-acme-haiku")
        .description("Tenant acme: haiku v1.0")
        .model_source(copy_from(&source))
        .tags(tag("TenantID", "acme"))
        .tags(tag("Environment", "dev"))
        .send()
        .await
        .unwrap();
    let arn = created.inference_profile_arn().to_owned();
    assert_eq!(created.status(), Some(&InferenceProfileStatus::Active));
    let id = arn.strip_prefix(PROFILE_ARN_PREFIX).expect(&arn).to_owned();
    assert_eq!(id.len(), 12, "{arn}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "{arn}"
    );

    // By id and by ARN (the SDK percent-encodes the ARN into one path segment).
    for identifier in [id.as_str(), arn.as_str()] {
        let got = client
            .get_inference_profile()
            .inference_profile_identifier(identifier)
            .send()
            .await
            .unwrap();
        assert_eq!(got.inference_profile_name(), "tenant-acme-haiku");
        assert_eq!(got.description(), Some("Tenant acme: haiku v1.0"));
        assert_eq!(got.inference_profile_arn(), arn);
        assert_eq!(got.inference_profile_id(), id);
        assert_eq!(got.status(), &InferenceProfileStatus::Active);
        assert_eq!(got.r#type(), &InferenceProfileType::Application);
        let models: Vec<_> = got.models().iter().map(|m| m.model_arn()).collect();
        assert_eq!(models, [Some(source.as_str())]);
        assert!(got.created_at().is_some());
        assert_eq!(got.created_at(), got.updated_at());
    }

    let tags = client
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(
        tag_pairs(tags.tags()),
        [("TenantID", "acme"), ("Environment", "dev")]
    );

    let listed = client
        .list_inference_profiles()
        .type_equals(InferenceProfileType::Application)
        .send()
        .await
        .unwrap();
    let arns: Vec<_> = listed
        .inference_profile_summaries()
        .iter()
        .map(|p| p.inference_profile_arn())
        .collect();
    assert_eq!(arns, [arn.as_str()]);
    assert_eq!(listed.next_token(), None);

    client
        .delete_inference_profile()
        .inference_profile_identifier(&arn)
        .send()
        .await
        .unwrap();
    let error = client
        .get_inference_profile()
        .inference_profile_identifier(&id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(
            error,
            GetInferenceProfileError::ResourceNotFoundException(_)
        ),
        "{error:?}"
    );
    let error = client
        .delete_inference_profile()
        .inference_profile_identifier(&id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(
            error,
            DeleteInferenceProfileError::ResourceNotFoundException(_)
        ),
        "{error:?}"
    );
    let error = client
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(
            error,
            ListTagsForResourceError::ResourceNotFoundException(_)
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn list_pages_by_max_results_and_next_token_in_creation_order() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = control_client(emulator.addr).await;
    let source = foundation_model_arn(REGION, MODEL);
    let names = ["p0", "p1", "p2", "p3", "p4"];
    for name in names {
        create_profile(&client, name, &source).await;
    }

    let mut pages = Vec::new();
    let mut next_token = None;
    loop {
        let page = client
            .list_inference_profiles()
            .type_equals(InferenceProfileType::Application)
            .max_results(2)
            .set_next_token(next_token)
            .send()
            .await
            .unwrap();
        let page_names: Vec<String> = page
            .inference_profile_summaries()
            .iter()
            .map(|p| p.inference_profile_name().to_owned())
            .collect();
        pages.push(page_names);
        next_token = page.next_token().map(str::to_owned);
        if next_token.is_none() {
            break;
        }
    }
    assert_eq!(pages, [vec!["p0", "p1"], vec!["p2", "p3"], vec!["p4"]]);

    // Without a type Bedrock lists system-defined profiles, which the emulator has none of.
    let system = client.list_inference_profiles().send().await.unwrap();
    assert!(system.inference_profile_summaries().is_empty());

    // Profiles are regional: a client of another region sees none of them.
    let west = control_client_in(emulator.addr, "us-west-2").await;
    let listed = west
        .list_inference_profiles()
        .type_equals(InferenceProfileType::Application)
        .send()
        .await
        .unwrap();
    assert!(listed.inference_profile_summaries().is_empty());
}

#[tokio::test]
async fn the_same_client_request_token_returns_the_same_profile() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = control_client(emulator.addr).await;
    let source = foundation_model_arn(REGION, MODEL);
    let create = |token: &'static str| {
        client
            .create_inference_profile()
            .inference_profile_name("tenant-acme-haiku")
            .client_request_token(token)
            .model_source(copy_from(&source))
            .send()
    };
    let first = create("token-1").await.unwrap();
    let again = create("token-1").await.unwrap();
    assert_eq!(again.inference_profile_arn(), first.inference_profile_arn());
    assert_eq!(again.status(), Some(&InferenceProfileStatus::Active));

    let listed = client
        .list_inference_profiles()
        .type_equals(InferenceProfileType::Application)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.inference_profile_summaries().len(), 1);

    // A new token is a new request: the name is taken.
    let error = create("token-2").await.unwrap_err().into_service_error();
    assert!(
        matches!(error, CreateInferenceProfileError::ConflictException(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_duplicate_name_is_a_conflict() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = control_client(emulator.addr).await;
    let source = foundation_model_arn(REGION, MODEL);
    create_profile(&client, "tenant-acme-haiku", &source).await;
    // The SDK sends a fresh clientRequestToken each time, so this is a second request.
    let error = create_error(&client, "tenant-acme-haiku", &source).await;
    assert!(
        matches!(error, CreateInferenceProfileError::ConflictException(_)),
        "{error:?}"
    );

    // Names are unique per region only.
    let west = control_client_in(emulator.addr, "us-west-2").await;
    let west_arn = create_profile(
        &west,
        "tenant-acme-haiku",
        &foundation_model_arn("us-west-2", MODEL),
    )
    .await;
    assert!(
        west_arn
            .starts_with("arn:aws:bedrock:us-west-2:123456789012:application-inference-profile/"),
        "{west_arn}"
    );
}

#[tokio::test]
async fn copy_from_must_name_a_foundation_model_or_system_profile_of_the_region() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = control_client(emulator.addr).await;

    let from_system = create_profile(
        &client,
        "from-system-profile",
        &system_profile_arn(REGION, &format!("us.{MODEL}")),
    )
    .await;
    let got = client
        .get_inference_profile()
        .inference_profile_identifier(&from_system)
        .send()
        .await
        .unwrap();
    let models: Vec<_> = got.models().iter().map(|m| m.model_arn()).collect();
    let expected = foundation_model_arn(REGION, MODEL);
    assert_eq!(models, [Some(expected.as_str())]);
    create_profile(
        &client,
        "from-global-profile",
        &system_profile_arn(REGION, &format!("global.{MODEL}")),
    )
    .await;

    let invalid = [
        MODEL.to_owned(),
        format!("us.{MODEL}"),
        foundation_model_arn("eu-west-1", MODEL),
        system_profile_arn("eu-west-1", &format!("eu.{MODEL}")),
        format!("arn:aws:bedrock:{REGION}:999999999999:inference-profile/us.{MODEL}"),
        format!("arn:aws:bedrock:{REGION}:{ACCOUNT}:inference-profile/{MODEL}"),
        from_system.clone(),
        "arn:aws:s3:::bucket".to_owned(),
    ];
    for (i, source) in invalid.iter().enumerate() {
        let error = create_error(&client, &format!("invalid-{i}"), source).await;
        assert!(
            matches!(error, CreateInferenceProfileError::ValidationException(_)),
            "{source}: {error:?}"
        );
    }
}

#[tokio::test]
async fn names_descriptions_and_tags_follow_bedrock_constraints() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = control_client(emulator.addr).await;
    let source = foundation_model_arn(REGION, MODEL);
    for name in ["tenant/acme", "tenant.acme", "-acme", &"a".repeat(65)] {
        let error = create_error(&client, name, &source).await;
        assert!(
            matches!(error, CreateInferenceProfileError::ValidationException(_)),
            "{name}: {error:?}"
        );
    }
    let error = client
        .create_inference_profile()
        .inference_profile_name("acme")
        .description("commas, are not allowed")
        .model_source(copy_from(&source))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(error, CreateInferenceProfileError::ValidationException(_)),
        "{error:?}"
    );
    let error = client
        .create_inference_profile()
        .inference_profile_name("acme")
        .model_source(copy_from(&source))
        .tags(tag("", "empty key"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(error, CreateInferenceProfileError::ValidationException(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn tag_resource_adds_and_replaces_untag_resource_removes() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = control_client(emulator.addr).await;
    let arn = create_profile(&client, "tagged", &foundation_model_arn(REGION, MODEL)).await;
    let tags_now = || async {
        let out = client
            .list_tags_for_resource()
            .resource_arn(&arn)
            .send()
            .await
            .unwrap();
        tag_pairs(out.tags())
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<Vec<_>>()
    };
    assert!(tags_now().await.is_empty());

    client
        .tag_resource()
        .resource_arn(&arn)
        .tags(tag("TenantID", "acme"))
        .tags(tag("CostCenter", "cc-1"))
        .send()
        .await
        .unwrap();
    client
        .tag_resource()
        .resource_arn(&arn)
        .tags(tag("CostCenter", "cc-2"))
        .send()
        .await
        .unwrap();
    let owned = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        tags_now().await,
        owned(&[("TenantID", "acme"), ("CostCenter", "cc-2")])
    );

    client
        .untag_resource()
        .resource_arn(&arn)
        .tag_keys("CostCenter")
        .tag_keys("NotThere")
        .send()
        .await
        .unwrap();
    assert_eq!(tags_now().await, owned(&[("TenantID", "acme")]));

    let unknown = format!("{PROFILE_ARN_PREFIX}zzzzzzzzzzzz");
    let error = client
        .tag_resource()
        .resource_arn(&unknown)
        .tags(tag("k", "v"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_resource_not_found_exception(), "{error:?}");
}

#[tokio::test]
async fn fault_markers_in_name_or_description_fail_the_create() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = control_client(emulator.addr).await;
    let source = foundation_model_arn(REGION, MODEL);

    let error = create_error(
        &client,
        &format!("acme {}", Fault::Throttling.marker()),
        &source,
    )
    .await;
    assert!(
        matches!(error, CreateInferenceProfileError::ThrottlingException(_)),
        "{error:?}"
    );
    type IsExpected = fn(&CreateInferenceProfileError) -> bool;
    let expectations: [(Fault, IsExpected); 4] = [
        (Fault::Validation, |e| e.is_validation_exception()),
        (Fault::AccessDenied, |e| e.is_access_denied_exception()),
        (Fault::NotFound, |e| e.is_resource_not_found_exception()),
        (Fault::Internal, |e| e.is_internal_server_exception()),
    ];
    for (fault, expected) in expectations {
        let error = client
            .create_inference_profile()
            .inference_profile_name("acme")
            .description(format!("fail {}", fault.marker()))
            .model_source(copy_from(&source))
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert!(expected(&error), "{fault:?} -> {error:?}");
    }
    // None of the failed creates left a profile behind.
    create_profile(&client, "acme", &source).await;
}

#[tokio::test]
async fn profiles_outlive_a_restart_with_a_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = || EmulatorConfig {
        state_file: Some(dir.path().join("profiles.json")),
        ..EmulatorConfig::default()
    };
    let first = start(config()).await;
    let client = control_client(first.addr).await;
    let arn = create_profile(
        &client,
        "tenant-acme-haiku",
        &foundation_model_arn(REGION, MODEL),
    )
    .await;
    client
        .tag_resource()
        .resource_arn(&arn)
        .tags(tag("TenantID", "acme"))
        .send()
        .await
        .unwrap();
    first.shut_down().await.unwrap();

    let second = start(config()).await;
    let client = control_client(second.addr).await;
    let got = client
        .get_inference_profile()
        .inference_profile_identifier(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(got.inference_profile_name(), "tenant-acme-haiku");
    let tags = client
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(tag_pairs(tags.tags()), [("TenantID", "acme")]);
    // Calls through it still run on its model.
    let reply = support::runtime_client(second.addr)
        .await
        .converse()
        .model_id(&arn)
        .messages(support::user("still there?"))
        .send()
        .await
        .unwrap();
    assert!(reply.usage().unwrap().output_tokens() > 0);
    assert_eq!(
        second.emulator.invocations()[0]
            .resolved_model_id
            .as_deref(),
        Some(MODEL)
    );
    // A name is still taken after the restart.
    let error = create_error(
        &client,
        "tenant-acme-haiku",
        &foundation_model_arn(REGION, MODEL),
    )
    .await;
    assert!(error.is_conflict_exception(), "{error:?}");
}
