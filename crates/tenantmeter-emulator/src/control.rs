//! The control-plane routes of the `bedrock` service for application inference profiles, in the
//! restJson1 shapes aws-sdk-bedrock sends and reads.

use std::sync::Arc;

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::faults::{Fault, HANG_MARKER, ServiceError, insert_request_id};
use crate::profiles::{NewProfile, Profile, Tag};
use crate::requests::parse_json;
use crate::server::Shared;

/// `ListInferenceProfiles`' page size when `maxResults` is absent, and its largest allowed value.
const MAX_RESULTS: usize = 1000;

type Answer = Result<(StatusCode, Value), ServiceError>;

fn respond(request_id: &str, answer: Answer) -> Response {
    match answer {
        Ok((status, body)) => {
            let mut headers = HeaderMap::new();
            insert_request_id(&mut headers, request_id);
            (status, headers, Json(body)).into_response()
        }
        Err(error) => {
            tracing::debug!("requestId" = %request_id, "errorType" = %error.error_type(), error = %error.message(), "control-plane call failed");
            error.into_response(request_id)
        }
    }
}

fn optional_string(request: &Value, field: &str) -> Result<Option<String>, ServiceError> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ServiceError::validation(format!(
            "{field}: must be a string"
        ))),
    }
}

fn required_string(request: &Value, field: &str) -> Result<String, ServiceError> {
    optional_string(request, field)?
        .ok_or_else(|| ServiceError::validation(format!("{field}: is required")))
}

fn tags_field(request: &Value) -> Result<Vec<Tag>, ServiceError> {
    let Some(tags) = request.get("tags").filter(|t| !t.is_null()) else {
        return Ok(Vec::new());
    };
    let invalid = || ServiceError::validation("tags: must be a list of {key, value} strings");
    tags.as_array()
        .ok_or_else(invalid)?
        .iter()
        .map(|tag| {
            match (
                tag.get("key").and_then(Value::as_str),
                tag.get("value").and_then(Value::as_str),
            ) {
                (Some(key), Some(value)) => Ok(Tag {
                    key: key.to_owned(),
                    value: value.to_owned(),
                }),
                _ => Err(invalid()),
            }
        })
        .collect()
}

fn tags_json(tags: &[Tag]) -> Value {
    Value::Array(
        tags.iter()
            .map(|t| json!({ "key": t.key, "value": t.value }))
            .collect(),
    )
}

/// A profile as `GetInferenceProfile` and the list summaries show it (tags are separate).
fn profile_json(profile: &Profile) -> Value {
    let mut body = Map::new();
    body.insert("inferenceProfileName".into(), json!(profile.name));
    if let Some(description) = &profile.description {
        body.insert("description".into(), json!(description));
    }
    if let Ok(created) = DateTime::from(profile.created_at).fmt(Format::DateTime) {
        // Profiles never change after creation (tags are not part of them).
        body.insert("createdAt".into(), json!(created));
        body.insert("updatedAt".into(), json!(created));
    }
    body.insert("inferenceProfileArn".into(), json!(profile.arn));
    body.insert("models".into(), json!([{ "modelArn": profile.model_arn }]));
    body.insert("inferenceProfileId".into(), json!(profile.id));
    body.insert("status".into(), json!("ACTIVE"));
    body.insert("type".into(), json!("APPLICATION"));
    Value::Object(body)
}

/// `POST /inference-profiles` (CreateInferenceProfile).
pub(crate) async fn create_inference_profile(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = shared.request_id();
    let region = shared.region_of(&headers);
    let answer = async {
        let request = parse_json(&body)?;
        let name = required_string(&request, "inferenceProfileName")?;
        let description = optional_string(&request, "description")?;
        let marked = || {
            [Some(name.as_str()), description.as_deref()]
                .into_iter()
                .flatten()
        };
        if marked().any(|text| text.contains(HANG_MARKER)) {
            return Err(shared.hang().await);
        }
        if let Some(fault) = marked().find_map(Fault::find_in) {
            return Err(ServiceError::injected(fault, "CreateInferenceProfile"));
        }
        let copy_from = request
            .get("modelSource")
            .and_then(|source| source.get("copyFrom"))
            .and_then(Value::as_str)
            .ok_or_else(|| ServiceError::validation("modelSource.copyFrom: is required"))?;
        let new = NewProfile {
            region: region.clone(),
            name,
            description,
            client_request_token: optional_string(&request, "clientRequestToken")?,
            copy_from: copy_from.to_owned(),
            tags: tags_field(&request)?,
        };
        let profile = shared.profiles.create(new, shared.config.clock.now())?;
        tracing::info!(
            "inferenceProfileArn" = %profile.arn,
            "inferenceProfileName" = %profile.name,
            "modelId" = %profile.model_id,
            "requestId" = %request_id,
            "inference profile ready"
        );
        Ok((
            StatusCode::CREATED,
            json!({ "inferenceProfileArn": profile.arn, "status": "ACTIVE" }),
        ))
    };
    respond(&request_id, answer.await)
}

/// `GET /inference-profiles/{inferenceProfileIdentifier}` (GetInferenceProfile).
pub(crate) async fn get_inference_profile(
    State(shared): State<Arc<Shared>>,
    Path(identifier): Path<String>,
    headers: HeaderMap,
) -> Response {
    let request_id = shared.request_id();
    let region = shared.region_of(&headers);
    let answer = shared
        .profiles
        .get(&region, &identifier)
        .map(|profile| (StatusCode::OK, profile_json(&profile)));
    respond(&request_id, answer)
}

/// `GET /inference-profiles?maxResults=&nextToken=&type=` (ListInferenceProfiles).
pub(crate) async fn list_inference_profiles(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let request_id = shared.request_id();
    let region = shared.region_of(&headers);
    let answer = (|| {
        let (mut max_results, mut next_token, mut application) = (MAX_RESULTS, None, false);
        for (key, value) in query_pairs(uri.query().unwrap_or_default()) {
            match key.as_str() {
                "maxResults" => {
                    max_results = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_RESULTS).contains(n))
                        .ok_or_else(|| {
                            ServiceError::validation(format!(
                                "maxResults: {value} is not between 1 and {MAX_RESULTS}"
                            ))
                        })?;
                }
                "nextToken" => next_token = Some(value),
                "type" => {
                    application = match value.as_str() {
                        "APPLICATION" => true,
                        "SYSTEM_DEFINED" => false,
                        _ => {
                            return Err(ServiceError::validation(format!(
                                "type: {value} is not APPLICATION or SYSTEM_DEFINED"
                            )));
                        }
                    };
                }
                _ => {}
            }
        }
        // Bedrock lists system-defined profiles unless asked for application ones; the
        // emulator keeps no catalog of system-defined profiles, so that list is empty.
        if !application {
            return Ok((StatusCode::OK, json!({ "inferenceProfileSummaries": [] })));
        }
        let page = shared
            .profiles
            .list(&region, max_results, next_token.as_deref())?;
        let mut body = Map::new();
        body.insert(
            "inferenceProfileSummaries".into(),
            Value::Array(page.profiles.iter().map(profile_json).collect()),
        );
        if let Some(token) = page.next_token {
            body.insert("nextToken".into(), json!(token));
        }
        Ok((StatusCode::OK, Value::Object(body)))
    })();
    respond(&request_id, answer)
}

/// `DELETE /inference-profiles/{inferenceProfileIdentifier}` (DeleteInferenceProfile).
pub(crate) async fn delete_inference_profile(
    State(shared): State<Arc<Shared>>,
    Path(identifier): Path<String>,
    headers: HeaderMap,
) -> Response {
    let request_id = shared.request_id();
    let region = shared.region_of(&headers);
    let answer = shared
        .profiles
        .delete(&region, &identifier)
        .map(|()| (StatusCode::OK, json!({})));
    if answer.is_ok() {
        tracing::info!("inferenceProfileIdentifier" = %identifier, "requestId" = %request_id, "inference profile deleted");
    }
    respond(&request_id, answer)
}

/// `POST /listTagsForResource` (ListTagsForResource).
pub(crate) async fn list_tags_for_resource(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = shared.request_id();
    let region = shared.region_of(&headers);
    let answer = parse_json(&body).and_then(|request| {
        let arn = required_string(&request, "resourceARN")?;
        let tags = shared.profiles.tags(&region, &arn)?;
        Ok((StatusCode::OK, json!({ "tags": tags_json(&tags) })))
    });
    respond(&request_id, answer)
}

/// `POST /tagResource` (TagResource).
pub(crate) async fn tag_resource(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = shared.request_id();
    let region = shared.region_of(&headers);
    let answer = parse_json(&body).and_then(|request| {
        let arn = required_string(&request, "resourceARN")?;
        if request.get("tags").is_none_or(Value::is_null) {
            return Err(ServiceError::validation("tags: is required"));
        }
        shared.profiles.tag(&region, &arn, tags_field(&request)?)?;
        Ok((StatusCode::OK, json!({})))
    });
    respond(&request_id, answer)
}

/// `POST /untagResource` (UntagResource).
pub(crate) async fn untag_resource(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = shared.request_id();
    let region = shared.region_of(&headers);
    let answer = parse_json(&body).and_then(|request| {
        let arn = required_string(&request, "resourceARN")?;
        let keys = request
            .get("tagKeys")
            .and_then(Value::as_array)
            .and_then(|keys| {
                keys.iter()
                    .map(|k| k.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| ServiceError::validation("tagKeys: must be a list of strings"))?;
        shared.profiles.untag(&region, &arn, &keys)?;
        Ok((StatusCode::OK, json!({})))
    });
    respond(&request_id, answer)
}

/// `a=1&b=x%20y` as decoded pairs.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let mut decoded = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        let escaped = (byte == b'%')
            .then(|| tail.get(..2))
            .flatten()
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(value) => {
                decoded.push(value);
                rest = tail.get(2..).unwrap_or_default();
            }
            None => {
                decoded.push(byte);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            query_pairs("maxResults=2&nextToken=a%2Fb%3D&type=APPLICATION&flag"),
            [
                ("maxResults".to_owned(), "2".to_owned()),
                ("nextToken".to_owned(), "a/b=".to_owned()),
                ("type".to_owned(), "APPLICATION".to_owned()),
                ("flag".to_owned(), String::new()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%+1"), "%+1");
    }
}
