//! A protocol-faithful Amazon Bedrock Runtime emulator.
//!
//! The gateway always talks to Bedrock through the real `aws-sdk-bedrockruntime`; locally and in
//! tests that client is pointed (`endpoint_url`) at this emulator, which speaks the same restJson1
//! wire protocol over plain HTTP/1.1. Everything it answers is deterministic: the same request
//! gives the same reply text and the same token counts, so tests can assert exact money.
//!
//! # Routes
//!
//! | route | operation |
//! | --- | --- |
//! | `POST /model/{modelId}/converse` | `Converse` (JSON request and response) |
//! | `POST /model/{modelId}/converse-stream` | `ConverseStream` (AWS event-stream frames) |
//! | `POST /model/{modelId}/invoke` | `InvokeModel` (model-native JSON body) |
//!
//! `{modelId}` is one URL path segment, percent-decoded: the SDK encodes `:` and `/` of an
//! application inference profile ARN (`arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc`),
//! and the emulator decodes it back. Any model id is accepted in this increment. Every response
//! carries an `x-amzn-RequestId` header (`emu-<n>`, a per-server counter).
//! The inference-profile control-plane calls and `InvokeModelWithResponseStream` come later.
//!
//! `ConverseStream` answers `content-type: application/vnd.amazon.eventstream` with the frames
//! `messageStart`, one `contentBlockDelta` per [`STREAM_CHUNK_BYTES`] bytes of the reply,
//! `contentBlockStop`, `messageStop` and `metadata` (`{"usage":{..},"metrics":{..}}`, the same
//! counts as `Converse` for the same request). This increment writes all frames at once: no time
//! to first token or token rate yet.
//!
//! # Token rule
//!
//! `tokens(n bytes) = ceil(n / 4)`, counted on UTF-8 bytes.
//!
//! **Converse.** The *input text* is the concatenation, in order, of every `text` block of
//! `system`, then of every `text` block of every message in `messages` (any role). Other block
//! kinds (images, documents, tool use/results, guardrail content) count 0 bytes in this increment.
//!
//! * Cache: if any `system` or message content list holds a `cachePoint` block, the *cache prefix*
//!   is the input text before the **last** `cachePoint`. When the prefix is non-empty it counts
//!   `tokens(prefix)` as `cacheWriteInputTokens` the first time this server sees that
//!   (model id, prefix) pair, and as `cacheReadInputTokens` on every later request. The server
//!   remembers at most [`EmulatorConfig::cache_capacity`] prefixes; when full it forgets them all.
//! * `inputTokens = tokens(input text bytes - prefix bytes)` (the uncached part).
//! * Reply: [`EmulatorConfig::reply_prefix`] followed by the *last user text* (the concatenated
//!   `text` blocks of the last message whose role is `user`). With `inferenceConfig.maxTokens = m`
//!   the reply is cut to at most `4 * m` bytes (on a character boundary); `stopReason` is
//!   `max_tokens` when it was cut, `end_turn` otherwise.
//! * `outputTokens = min(tokens(reply bytes), maxTokens)`.
//! * `totalTokens = inputTokens + outputTokens + cacheReadInputTokens + cacheWriteInputTokens`.
//! * `metrics.latencyMs` is the configured [`EmulatorConfig::latency`] in milliseconds.
//!
//! **InvokeModel** accepts the Anthropic Messages body (`system` as a string or a list of
//! `{"text": ..}` blocks; `messages[].content` as a string or a list of `{"type":"text","text":..}`
//! blocks; `max_tokens`) and, as a fallback, a body with a top-level `prompt` or `inputText`
//! string (taken as one user message). Input text, reply, and counts follow the Converse rule,
//! without cache (cache tokens are 0 for InvokeModel in this increment). The answer is an
//! Anthropic Messages response (`content[0].text`, `stop_reason`, `usage.input_tokens`,
//! `usage.output_tokens`) with `content-type: application/json` and the headers
//! `X-Amzn-Bedrock-Input-Token-Count`, `X-Amzn-Bedrock-Output-Token-Count` and
//! `X-Amzn-Bedrock-Invocation-Latency`.
//!
//! # Fault injection
//!
//! A marker anywhere in the last user text makes the request fail the way Bedrock does: the HTTP
//! status, an `x-amzn-errortype` header naming the error, and a JSON body `{"message": ...}`.
//!
//! | marker | status | `x-amzn-errortype` |
//! | --- | --- | --- |
//! | `[[fault:throttling]]` | 429 | `ThrottlingException` |
//! | `[[fault:validation]]` | 400 | `ValidationException` |
//! | `[[fault:access-denied]]` | 403 | `AccessDeniedException` |
//! | `[[fault:not-found]]` | 404 | `ResourceNotFoundException` |
//! | `[[fault:model-timeout]]` | 408 | `ModelTimeoutException` |
//! | `[[fault:service-unavailable]]` | 503 | `ServiceUnavailableException` |
//! | `[[fault:internal]]` | 500 | `InternalServerException` |
//!
//! `ConverseStream` also takes [`MID_STREAM_MARKER`] (`[[fault:mid-stream-throttling]]`): the
//! stream sends `messageStart` and the first delta, then a `throttlingException` exception frame,
//! and no `metadata`.
//!
//! Malformed requests get a real `ValidationException` too: a body that is not JSON, an empty
//! `messages` list, or `maxTokens` < 1.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_types::event_stream::{
    Header as EventHeader, HeaderValue as EventHeaderValue, Message as EventMessage,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Deterministic behaviour knobs of the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Delay added before every answer (faults included); reported as `metrics.latencyMs`.
    pub latency: Duration,
    /// Text put before the echoed last user text in every reply.
    pub reply_prefix: String,
    /// How many cache prefixes the server remembers before forgetting them all.
    pub cache_capacity: usize,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            reply_prefix: DEFAULT_REPLY_PREFIX.to_owned(),
            cache_capacity: 10_000,
        }
    }
}

/// The reply prefix of [`EmulatorConfig::default`].
pub const DEFAULT_REPLY_PREFIX: &str = "emulated: ";

/// A fault that a marker in the last user text injects, with Bedrock's status and error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `[[fault:throttling]]`: 429 `ThrottlingException`.
    Throttling,
    /// `[[fault:validation]]`: 400 `ValidationException`.
    Validation,
    /// `[[fault:access-denied]]`: 403 `AccessDeniedException`.
    AccessDenied,
    /// `[[fault:not-found]]`: 404 `ResourceNotFoundException`.
    NotFound,
    /// `[[fault:model-timeout]]`: 408 `ModelTimeoutException`.
    ModelTimeout,
    /// `[[fault:service-unavailable]]`: 503 `ServiceUnavailableException`.
    ServiceUnavailable,
    /// `[[fault:internal]]`: 500 `InternalServerException`.
    Internal,
}

impl Fault {
    /// Every fault, in the order of the crate docs' table.
    pub const ALL: [Fault; 7] = [
        Fault::Throttling,
        Fault::Validation,
        Fault::AccessDenied,
        Fault::NotFound,
        Fault::ModelTimeout,
        Fault::ServiceUnavailable,
        Fault::Internal,
    ];

    /// The marker that injects this fault, e.g. `[[fault:throttling]]`.
    #[must_use]
    pub fn marker(self) -> &'static str {
        match self {
            Fault::Throttling => "[[fault:throttling]]",
            Fault::Validation => "[[fault:validation]]",
            Fault::AccessDenied => "[[fault:access-denied]]",
            Fault::NotFound => "[[fault:not-found]]",
            Fault::ModelTimeout => "[[fault:model-timeout]]",
            Fault::ServiceUnavailable => "[[fault:service-unavailable]]",
            Fault::Internal => "[[fault:internal]]",
        }
    }

    /// Bedrock's HTTP status for this error.
    #[must_use]
    pub fn status(self) -> StatusCode {
        match self {
            Fault::Throttling => StatusCode::TOO_MANY_REQUESTS,
            Fault::Validation => StatusCode::BAD_REQUEST,
            Fault::AccessDenied => StatusCode::FORBIDDEN,
            Fault::NotFound => StatusCode::NOT_FOUND,
            Fault::ModelTimeout => StatusCode::REQUEST_TIMEOUT,
            Fault::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Fault::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Bedrock's error type, sent in `x-amzn-errortype`.
    #[must_use]
    pub fn error_type(self) -> &'static str {
        match self {
            Fault::Throttling => "ThrottlingException",
            Fault::Validation => "ValidationException",
            Fault::AccessDenied => "AccessDeniedException",
            Fault::NotFound => "ResourceNotFoundException",
            Fault::ModelTimeout => "ModelTimeoutException",
            Fault::ServiceUnavailable => "ServiceUnavailableException",
            Fault::Internal => "InternalServerException",
        }
    }

    /// The first fault whose marker occurs in `text`, in the order of [`Fault::ALL`].
    #[must_use]
    pub fn find_in(text: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| text.contains(f.marker()))
    }
}

/// `ceil(bytes / 4)`: the emulator's token count for `bytes` UTF-8 bytes.
#[must_use]
pub fn tokens_for_bytes(bytes: usize) -> u64 {
    u64::try_from(bytes.div_ceil(4)).unwrap_or(u64::MAX)
}

/// The emulator's routes, for embedding in another server; [`serve`] runs them on a listener.
pub fn router(config: EmulatorConfig) -> Router {
    let state = Arc::new(Emulator {
        config,
        cache: Mutex::new(HashSet::new()),
        requests: AtomicU64::new(0),
    });
    Router::new()
        .route("/model/{model_id}/converse", post(converse))
        .route("/model/{model_id}/converse-stream", post(converse_stream))
        .route("/model/{model_id}/invoke", post(invoke))
        .with_state(state)
}

/// Serves the emulator on `listener` until `shutdown` completes, then drains open connections.
///
/// # Errors
/// An I/O error from the listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: EmulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(config))
        .with_graceful_shutdown(shutdown)
        .await
}

#[derive(Debug)]
struct Emulator {
    config: EmulatorConfig,
    cache: Mutex<HashSet<[u8; 32]>>,
    requests: AtomicU64,
}

impl Emulator {
    fn request_id(&self) -> String {
        format!("emu-{}", self.requests.fetch_add(1, Ordering::Relaxed))
    }

    /// Records the prefix; true when it had been seen before (a cache read).
    fn cache_seen(&self, model_id: &str, prefix: &str) -> bool {
        let mut hasher = Sha256::new();
        hasher.update(model_id.as_bytes());
        hasher.update([0]);
        hasher.update(prefix.as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        let mut cache = match self.cache.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if cache.contains(&key) {
            return true;
        }
        if cache.len() >= self.config.cache_capacity {
            cache.clear();
        }
        cache.insert(key);
        false
    }

    fn latency_ms(&self) -> u64 {
        u64::try_from(self.config.latency.as_millis()).unwrap_or(u64::MAX)
    }
}

/// An error answered in Bedrock's shape.
#[derive(Debug)]
struct BedrockError {
    fault: Fault,
    message: String,
}

impl BedrockError {
    fn validation(message: impl Into<String>) -> Self {
        Self {
            fault: Fault::Validation,
            message: message.into(),
        }
    }

    fn into_response(self, request_id: &str) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-amzn-errortype"),
            HeaderValue::from_static(self.fault.error_type()),
        );
        insert_request_id(&mut headers, request_id);
        let body = json!({ "message": self.message });
        (self.fault.status(), headers, axum::Json(body)).into_response()
    }
}

fn insert_request_id(headers: &mut HeaderMap, request_id: &str) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static("x-amzn-requestid"), value);
    }
}

/// What the token rule needs from a request, whatever its wire shape.
#[derive(Debug, Default)]
struct Prompt {
    /// All input text, in order.
    text: String,
    /// Byte length of the text before the last cache point, if there was one.
    cache_prefix_len: Option<usize>,
    /// The concatenated text of the last user message.
    last_user_text: String,
    max_tokens: Option<u64>,
}

#[derive(Debug)]
struct Completion {
    reply: String,
    stop_reason: &'static str,
    input_tokens: u64,
    output_tokens: u64,
    cache_read: u64,
    cache_write: u64,
}

impl Completion {
    fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read + self.cache_write
    }
}

fn complete(emulator: &Emulator, model_id: &str, prompt: &Prompt) -> Completion {
    let (cache_read, cache_write, uncached_bytes) = match prompt.cache_prefix_len {
        Some(len) if len > 0 => {
            let prefix = prompt.text.get(..len).unwrap_or_default();
            let cached = tokens_for_bytes(len);
            let rest = prompt.text.len().saturating_sub(len);
            if emulator.cache_seen(model_id, prefix) {
                (cached, 0, rest)
            } else {
                (0, cached, rest)
            }
        }
        Some(_) | None => (0, 0, prompt.text.len()),
    };
    let mut reply = format!("{}{}", emulator.config.reply_prefix, prompt.last_user_text);
    let mut stop_reason = "end_turn";
    let mut output_tokens = tokens_for_bytes(reply.len());
    if let Some(max) = prompt.max_tokens {
        let limit = usize::try_from(max.saturating_mul(4)).unwrap_or(usize::MAX);
        if reply.len() > limit {
            let mut cut = limit;
            while !reply.is_char_boundary(cut) {
                cut -= 1;
            }
            reply.truncate(cut);
            stop_reason = "max_tokens";
        }
        output_tokens = output_tokens.min(max);
    }
    Completion {
        reply,
        stop_reason,
        input_tokens: tokens_for_bytes(uncached_bytes),
        output_tokens,
        cache_read,
        cache_write,
    }
}

fn parse_json(body: &[u8]) -> Result<Value, BedrockError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BedrockError::validation(format!("Malformed input request: {e}")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(BedrockError::validation(
            "Malformed input request: expected a JSON object",
        ))
    }
}

fn max_tokens(value: Option<&Value>, field: &str) -> Result<Option<u64>, BedrockError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            Some(_) | None => Err(BedrockError::validation(format!(
                "{field}: must be an integer >= 1"
            ))),
        },
    }
}

/// Converse: `system` and `messages[].content` are lists of content blocks.
fn converse_prompt(request: &Value) -> Result<Prompt, BedrockError> {
    let mut prompt = Prompt::default();
    let add_blocks = |blocks: &[Value], prompt: &mut Prompt| -> String {
        let mut own = String::new();
        for block in blocks {
            if let Some(text) = block.get("text").and_then(Value::as_str) {
                prompt.text.push_str(text);
                own.push_str(text);
            } else if block.get("cachePoint").is_some() {
                prompt.cache_prefix_len = Some(prompt.text.len());
            }
        }
        own
    };
    if let Some(system) = request.get("system") {
        let blocks = system
            .as_array()
            .ok_or_else(|| BedrockError::validation("system: must be a list of content blocks"))?;
        add_blocks(blocks, &mut prompt);
    }
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            BedrockError::validation("messages: must be a non-empty list of messages")
        })?;
    for message in messages {
        let blocks = message
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                BedrockError::validation("messages.content: must be a list of content blocks")
            })?;
        let own = add_blocks(blocks, &mut prompt);
        if message.get("role").and_then(Value::as_str) == Some("user") {
            prompt.last_user_text = own;
        }
    }
    prompt.max_tokens = max_tokens(
        request
            .get("inferenceConfig")
            .and_then(|c| c.get("maxTokens")),
        "inferenceConfig.maxTokens",
    )?;
    Ok(prompt)
}

/// InvokeModel: the Anthropic Messages body, or a top-level `prompt` / `inputText` string.
fn invoke_prompt(request: &Value) -> Result<Prompt, BedrockError> {
    let mut prompt = Prompt::default();
    let text_of = |content: &Value| -> String {
        match content {
            Value::String(s) => s.clone(),
            Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect(),
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::Object(_) => String::new(),
        }
    };
    if let Some(system) = request.get("system") {
        prompt.text.push_str(&text_of(system));
    }
    if let Some(messages) = request.get("messages") {
        let messages = messages
            .as_array()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| BedrockError::validation("messages: must be a non-empty list"))?;
        for message in messages {
            let own = message.get("content").map(&text_of).unwrap_or_default();
            prompt.text.push_str(&own);
            if message.get("role").and_then(Value::as_str) == Some("user") {
                prompt.last_user_text = own;
            }
        }
    } else if let Some(text) = ["prompt", "inputText"]
        .iter()
        .find_map(|k| request.get(*k).and_then(Value::as_str))
    {
        prompt.text.push_str(text);
        prompt.last_user_text = text.to_owned();
    } else {
        return Err(BedrockError::validation(
            "Malformed input request: expected messages, prompt or inputText",
        ));
    }
    prompt.max_tokens = max_tokens(request.get("max_tokens"), "max_tokens")?;
    Ok(prompt)
}

/// What every route does first: a request id, the configured latency, then
/// the body parsed with `parse` and checked for a fault marker. `Err` is the
/// error response to send.
async fn accept(
    emulator: &Emulator,
    model_id: &str,
    body: &[u8],
    parse: fn(&Value) -> Result<Prompt, BedrockError>,
) -> Result<(String, Prompt), Response> {
    let request_id = emulator.request_id();
    tokio::time::sleep(emulator.config.latency).await;
    parse_json(body)
        .and_then(|request| parse(&request))
        .and_then(|prompt| match Fault::find_in(&prompt.last_user_text) {
            Some(fault) => Err(injected(fault, model_id)),
            None => Ok(prompt),
        })
        .map(|prompt| (request_id.clone(), prompt))
        .map_err(|error| error.into_response(&request_id))
}

async fn converse(
    State(emulator): State<Arc<Emulator>>,
    Path(model_id): Path<String>,
    body: Bytes,
) -> Response {
    let (request_id, prompt) = match accept(&emulator, &model_id, &body, converse_prompt).await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let done = complete(&emulator, &model_id, &prompt);
    tracing::debug!(%model_id, %request_id, input = done.input_tokens, output = done.output_tokens, "converse");
    let body = json!({
        "output": { "message": { "role": "assistant", "content": [ { "text": done.reply } ] } },
        "stopReason": done.stop_reason,
        "usage": {
            "inputTokens": done.input_tokens,
            "outputTokens": done.output_tokens,
            "totalTokens": done.total(),
            "cacheReadInputTokens": done.cache_read,
            "cacheWriteInputTokens": done.cache_write,
        },
        "metrics": { "latencyMs": emulator.latency_ms() },
    });
    let mut headers = HeaderMap::new();
    insert_request_id(&mut headers, &request_id);
    (StatusCode::OK, headers, axum::Json(body)).into_response()
}

async fn converse_stream(
    State(emulator): State<Arc<Emulator>>,
    Path(model_id): Path<String>,
    body: Bytes,
) -> Response {
    let (request_id, prompt) = match accept(&emulator, &model_id, &body, converse_prompt).await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let done = complete(&emulator, &model_id, &prompt);
    tracing::debug!(%model_id, %request_id, input = done.input_tokens, output = done.output_tokens, "converse-stream");
    let cut = prompt.last_user_text.contains(MID_STREAM_MARKER);
    let mut frames = Vec::new();
    let mut push = |event: &'static str, payload: Value| {
        let message = EventMessage::new(payload.to_string().into_bytes())
            .add_header(EventHeader::new(":event-type", event_string(event)))
            .add_header(EventHeader::new(
                ":content-type",
                event_string("application/json"),
            ))
            .add_header(EventHeader::new(":message-type", event_string("event")));
        push_frame(&mut frames, &message);
    };
    push("messageStart", json!({ "role": "assistant" }));
    for (i, chunk) in chunks(&done.reply, STREAM_CHUNK_BYTES)
        .into_iter()
        .enumerate()
    {
        push(
            "contentBlockDelta",
            json!({ "contentBlockIndex": 0, "delta": { "text": chunk } }),
        );
        if cut && i == 0 {
            break;
        }
    }
    if cut {
        let message = EventMessage::new(
            json!({ "message": "ThrottlingException injected mid-stream by the emulator" })
                .to_string()
                .into_bytes(),
        )
        .add_header(EventHeader::new(
            ":exception-type",
            event_string("throttlingException"),
        ))
        .add_header(EventHeader::new(
            ":content-type",
            event_string("application/json"),
        ))
        .add_header(EventHeader::new(":message-type", event_string("exception")));
        push_frame(&mut frames, &message);
    } else {
        push("contentBlockStop", json!({ "contentBlockIndex": 0 }));
        push("messageStop", json!({ "stopReason": done.stop_reason }));
        push(
            "metadata",
            json!({
                "usage": {
                    "inputTokens": done.input_tokens,
                    "outputTokens": done.output_tokens,
                    "totalTokens": done.total(),
                    "cacheReadInputTokens": done.cache_read,
                    "cacheWriteInputTokens": done.cache_write,
                },
                "metrics": { "latencyMs": emulator.latency_ms() },
            }),
        );
    }
    let mut headers = HeaderMap::new();
    insert_request_id(&mut headers, &request_id);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    (StatusCode::OK, headers, frames).into_response()
}

/// The marker that cuts a ConverseStream after its first delta with a `throttlingException`.
pub const MID_STREAM_MARKER: &str = "[[fault:mid-stream-throttling]]";

/// Bytes of reply text per `contentBlockDelta` event (cut on character boundaries).
pub const STREAM_CHUNK_BYTES: usize = 16;

fn event_string(value: &'static str) -> EventHeaderValue {
    EventHeaderValue::String(value.into())
}

fn push_frame(frames: &mut Vec<u8>, message: &EventMessage) {
    if let Err(error) = aws_smithy_eventstream::frame::write_message_to(message, frames) {
        tracing::error!(%error, "cannot encode an event-stream frame");
    }
}

/// Splits `text` into pieces of at most `max` bytes (at least one character each).
fn chunks(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = max.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (piece, tail) = rest.split_at(end);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

async fn invoke(
    State(emulator): State<Arc<Emulator>>,
    Path(model_id): Path<String>,
    body: Bytes,
) -> Response {
    let (request_id, prompt) = match accept(&emulator, &model_id, &body, invoke_prompt).await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let done = complete(&emulator, &model_id, &prompt);
    tracing::debug!(%model_id, %request_id, input = done.input_tokens, output = done.output_tokens, "invoke");
    let body = json!({
        "id": format!("msg_{request_id}"),
        "type": "message",
        "role": "assistant",
        "model": model_id,
        "content": [ { "type": "text", "text": done.reply } ],
        "stop_reason": done.stop_reason,
        "stop_sequence": null,
        "usage": { "input_tokens": done.input_tokens, "output_tokens": done.output_tokens },
    });
    let mut headers = HeaderMap::new();
    insert_request_id(&mut headers, &request_id);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        HeaderName::from_static("x-amzn-bedrock-input-token-count"),
        HeaderValue::from(done.input_tokens),
    );
    headers.insert(
        HeaderName::from_static("x-amzn-bedrock-output-token-count"),
        HeaderValue::from(done.output_tokens),
    );
    headers.insert(
        HeaderName::from_static("x-amzn-bedrock-invocation-latency"),
        HeaderValue::from(emulator.latency_ms()),
    );
    (StatusCode::OK, headers, body.to_string()).into_response()
}

fn injected(fault: Fault, model_id: &str) -> BedrockError {
    BedrockError {
        fault,
        message: format!(
            "{} injected by the emulator for model {model_id}",
            fault.error_type()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rule_is_ceil_bytes_over_four() {
        assert_eq!(tokens_for_bytes(0), 0);
        assert_eq!(tokens_for_bytes(1), 1);
        assert_eq!(tokens_for_bytes(4), 1);
        assert_eq!(tokens_for_bytes(5), 2);
    }

    #[test]
    fn first_marker_wins_in_table_order() {
        assert_eq!(Fault::find_in("hi"), None);
        assert_eq!(
            Fault::find_in("[[fault:internal]] [[fault:throttling]]"),
            Some(Fault::Throttling)
        );
    }

    #[test]
    fn chunks_respect_char_boundaries_and_cover_the_text() {
        let text = "abcé€xyz";
        let pieces = chunks(text, 4);
        assert_eq!(pieces, ["abcé", "€x", "yz"]);
        assert_eq!(pieces.concat(), text);
        assert!(chunks("", 4).is_empty());
    }

    #[test]
    fn reply_is_cut_on_a_char_boundary() {
        let emulator = Emulator {
            config: EmulatorConfig {
                reply_prefix: String::new(),
                ..EmulatorConfig::default()
            },
            cache: Mutex::new(HashSet::new()),
            requests: AtomicU64::new(0),
        };
        let prompt = Prompt {
            text: "ééééé".to_owned(),
            cache_prefix_len: None,
            last_user_text: "ééééé".to_owned(),
            max_tokens: Some(1),
        };
        let done = complete(&emulator, "m", &prompt);
        assert_eq!(done.reply, "éé");
        assert_eq!(done.stop_reason, "max_tokens");
        assert_eq!(done.output_tokens, 1);
        assert_eq!(done.input_tokens, 3);
    }
}
