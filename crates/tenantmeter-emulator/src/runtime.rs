//! The Bedrock Runtime routes: Converse, ConverseStream, InvokeModel and
//! InvokeModelWithResponseStream, with `modelId` resolved through the emulator's profiles.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::anthropic;
use crate::completion::{Completion, Prompt, complete};
use crate::faults::{Fault, HANG_MARKER, MID_STREAM_MARKER, ServiceError, insert_request_id};
use crate::invocations::{Invocation, Operation, Usage};
use crate::models::ModelRef;
use crate::requests::{InferenceRequest, converse_request, invoke_request, parse_json};
use crate::server::Shared;
use crate::stream::{EventStream, Pacing, millis, paced_chunks};

/// The exception a `[[fault:mid-stream-throttling]]` stream ends with.
const MID_STREAM_EXCEPTION: (&str, &str) = ("throttlingException", "ThrottlingException");

/// One runtime call being answered: what its invocation record needs.
#[derive(Debug)]
struct Call {
    operation: Operation,
    request_id: String,
    region: String,
    model_id: String,
    resolved_model_id: Option<String>,
    request_metadata: Option<BTreeMap<String, String>>,
    /// When the request was accepted: streams pace their events from here.
    started: Instant,
}

impl Call {
    fn record(&self, shared: &Shared, usage: Option<Usage>, error: Option<&str>) {
        shared.invocations.record(Invocation {
            request_id: self.request_id.clone(),
            operation: self.operation,
            region: self.region.clone(),
            model_id: self.model_id.clone(),
            resolved_model_id: self.resolved_model_id.clone(),
            request_metadata: self.request_metadata.clone(),
            usage,
            error: error.map(str::to_owned),
        });
    }

    fn fail(&self, shared: &Shared, error: ServiceError) -> Response {
        tracing::debug!("requestId" = %self.request_id, error = %error.message(), "runtime call failed");
        self.record(shared, None, Some(error.error_type()));
        error.into_response(&self.request_id)
    }

    fn completion(&self, shared: &Shared, prompt: &Prompt) -> Completion {
        let model = self.resolved_model_id.as_deref().unwrap_or(&self.model_id);
        complete(prompt, &shared.config.reply_prefix, &shared.cache, model)
    }

    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        insert_request_id(&mut headers, &self.request_id);
        headers
    }
}

/// The foundation model `model_id` runs on. Application profiles must be ones this emulator
/// created; model ids and system profiles are taken as given, since the emulator answers any
/// model.
fn resolve(shared: &Shared, model_id: &str) -> Result<String, ServiceError> {
    match ModelRef::parse(model_id) {
        ModelRef::Foundation { model_id, .. } | ModelRef::SystemProfile { model_id, .. } => {
            Ok(model_id.to_owned())
        }
        ModelRef::ApplicationProfile { arn } => {
            shared.profiles.model_behind(arn).ok_or_else(|| {
                ServiceError::not_found(format!("The inference profile {arn} does not exist"))
            })
        }
        ModelRef::OtherArn => Err(ServiceError::validation(format!(
            "The provided model identifier is invalid: {model_id}"
        ))),
    }
}

/// What every runtime route does first: a request id, the unary latency, the model, the body,
/// then the prompt's hang and fault markers. `Err` is the (recorded) error response.
async fn accept(
    shared: &Shared,
    operation: Operation,
    headers: &HeaderMap,
    model_id: String,
    body: &[u8],
    parse: fn(&Value) -> Result<InferenceRequest, ServiceError>,
) -> Result<(Call, Prompt), Response> {
    let mut call = Call {
        operation,
        request_id: shared.request_id(),
        region: shared.region_of(headers),
        model_id,
        resolved_model_id: None,
        request_metadata: None,
        started: Instant::now(),
    };
    if matches!(operation, Operation::Converse | Operation::InvokeModel) {
        tokio::time::sleep(shared.config.latency).await;
    }
    match resolve(shared, &call.model_id) {
        Ok(model) => call.resolved_model_id = Some(model),
        Err(error) => return Err(call.fail(shared, error)),
    }
    let request = match parse_json(body).and_then(|value| parse(&value)) {
        Ok(request) => request,
        Err(error) => return Err(call.fail(shared, error)),
    };
    call.request_metadata = request.request_metadata;
    let prompt = request.prompt;
    if prompt.last_user_text.contains(HANG_MARKER) {
        // Recorded now, not when the wait ends: a test whose client timed out reads it at once.
        call.record(shared, None, Some("Hang"));
        let error = shared.hang().await;
        return Err(error.into_response(&call.request_id));
    }
    if let Some(fault) = Fault::find_in(&prompt.last_user_text) {
        let subject = format!("model {}", call.model_id);
        return Err(call.fail(shared, ServiceError::injected(fault, &subject)));
    }
    Ok((call, prompt))
}

fn pacing(shared: &Shared) -> Pacing {
    Pacing {
        time_to_first_token: shared.config.time_to_first_token,
        tokens_per_second: shared.config.tokens_per_second,
    }
}

fn converse_usage(done: &Completion) -> Value {
    json!({
        "inputTokens": done.input_tokens,
        "outputTokens": done.output_tokens,
        "totalTokens": done.total(),
        "cacheReadInputTokens": done.cache_read,
        "cacheWriteInputTokens": done.cache_write,
    })
}

pub(crate) async fn converse(
    State(shared): State<Arc<Shared>>,
    Path(model_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let accepted = accept(
        &shared,
        Operation::Converse,
        &headers,
        model_id,
        &body,
        converse_request,
    );
    let (call, prompt) = match accepted.await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let done = call.completion(&shared, &prompt);
    call.record(&shared, Some(Usage::from(&done)), None);
    let body = json!({
        "output": { "message": { "role": "assistant", "content": [ { "text": done.reply } ] } },
        "stopReason": done.stop_reason,
        "usage": converse_usage(&done),
        "metrics": { "latencyMs": millis(shared.config.latency) },
    });
    (StatusCode::OK, call.headers(), Json(body)).into_response()
}

pub(crate) async fn converse_stream(
    State(shared): State<Arc<Shared>>,
    Path(model_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let accepted = accept(
        &shared,
        Operation::ConverseStream,
        &headers,
        model_id,
        &body,
        converse_request,
    );
    let (call, prompt) = match accepted.await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let done = call.completion(&shared, &prompt);
    let pacing = pacing(&shared);
    let (deltas, end) = paced_chunks(&done.reply, &pacing);
    let cut = prompt.last_user_text.contains(MID_STREAM_MARKER);
    let delta = |text: &str| json!({ "contentBlockIndex": 0, "delta": { "text": text } });

    let mut stream = EventStream::default();
    stream.event(
        pacing.at(0),
        "messageStart",
        &json!({ "role": "assistant" }),
    );
    if cut {
        if let Some((at, text)) = deltas.first() {
            stream.event(*at, "contentBlockDelta", &delta(text));
        }
        let at = deltas.get(1).map_or(end, |(at, _)| *at);
        let (exception_type, error_type) = MID_STREAM_EXCEPTION;
        stream.exception(
            at,
            exception_type,
            "ThrottlingException injected mid-stream by the emulator",
        );
        call.record(&shared, None, Some(error_type));
    } else {
        for (at, text) in &deltas {
            stream.event(*at, "contentBlockDelta", &delta(text));
        }
        stream.event(end, "contentBlockStop", &json!({ "contentBlockIndex": 0 }));
        stream.event(
            end,
            "messageStop",
            &json!({ "stopReason": done.stop_reason }),
        );
        stream.event(
            end,
            "metadata",
            &json!({
                "usage": converse_usage(&done),
                "metrics": { "latencyMs": millis(end) },
            }),
        );
        call.record(&shared, Some(Usage::from(&done)), None);
    }
    stream.into_response(call.started, call.headers())
}

fn count_header(headers: &mut HeaderMap, name: &'static str, value: u64) {
    headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
}

pub(crate) async fn invoke_model(
    State(shared): State<Arc<Shared>>,
    Path(model_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let accepted = accept(
        &shared,
        Operation::InvokeModel,
        &headers,
        model_id,
        &body,
        invoke_request,
    );
    let (call, prompt) = match accepted.await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let done = call.completion(&shared, &prompt);
    call.record(&shared, Some(Usage::from(&done)), None);
    let body = anthropic::message(&format!("msg_{}", call.request_id), &call.model_id, &done);
    let mut headers = call.headers();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    count_header(
        &mut headers,
        "x-amzn-bedrock-input-token-count",
        done.input_tokens,
    );
    count_header(
        &mut headers,
        "x-amzn-bedrock-output-token-count",
        done.output_tokens,
    );
    count_header(
        &mut headers,
        "x-amzn-bedrock-cache-read-input-token-count",
        done.cache_read,
    );
    count_header(
        &mut headers,
        "x-amzn-bedrock-cache-write-input-token-count",
        done.cache_write,
    );
    count_header(
        &mut headers,
        "x-amzn-bedrock-invocation-latency",
        millis(shared.config.latency),
    );
    (StatusCode::OK, headers, body.to_string()).into_response()
}

pub(crate) async fn invoke_model_with_response_stream(
    State(shared): State<Arc<Shared>>,
    Path(model_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let accepted = accept(
        &shared,
        Operation::InvokeModelWithResponseStream,
        &headers,
        model_id,
        &body,
        invoke_request,
    );
    let (call, prompt) = match accepted.await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let done = call.completion(&shared, &prompt);
    let pacing = pacing(&shared);
    let (deltas, end) = paced_chunks(&done.reply, &pacing);
    let cut = prompt.last_user_text.contains(MID_STREAM_MARKER);
    let first = pacing.at(0);
    let message_id = format!("msg_{}", call.request_id);

    let mut stream = EventStream::default();
    stream.chunk(
        first,
        &anthropic::message_start(&message_id, &call.model_id, &done),
    );
    stream.chunk(first, &anthropic::content_block_start());
    if cut {
        if let Some((at, text)) = deltas.first() {
            stream.chunk(*at, &anthropic::text_delta(text));
        }
        let at = deltas.get(1).map_or(end, |(at, _)| *at);
        let (exception_type, error_type) = MID_STREAM_EXCEPTION;
        stream.exception(
            at,
            exception_type,
            "ThrottlingException injected mid-stream by the emulator",
        );
        call.record(&shared, None, Some(error_type));
    } else {
        for (at, text) in &deltas {
            stream.chunk(*at, &anthropic::text_delta(text));
        }
        stream.chunk(end, &anthropic::content_block_stop());
        stream.chunk(end, &anthropic::message_delta(&done));
        stream.chunk(
            end,
            &anthropic::message_stop(&done, millis(end), millis(first)),
        );
        call.record(&shared, Some(Usage::from(&done)), None);
    }
    let mut headers = call.headers();
    headers.insert(
        HeaderName::from_static("x-amzn-bedrock-content-type"),
        HeaderValue::from_static("application/json"),
    );
    stream.into_response(call.started, headers)
}
