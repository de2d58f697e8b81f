//! InvokeModel's model-native JSON: the output-token limit and an input-token
//! estimate for the reservation, and the usage Bedrock appends to the last
//! chunk of a response stream.

use serde_json::{Map, Value};
use tenantmeter_proto::v1 as pb;

use super::FieldViolation;
use super::validate::{BYTES_PER_TOKEN, IMAGE_TOKENS};

/// Where each model family keeps its output-token limit, as a path of object
/// keys from the top of the body.
const MAX_OUTPUT_TOKEN_PATHS: [&[&str]; 7] = [
    // Anthropic Messages, Mistral, Cohere Command R, DeepSeek, OpenAI-compatible.
    &["max_tokens"],
    // Meta Llama.
    &["max_gen_len"],
    // Amazon Titan Text.
    &["textGenerationConfig", "maxTokenCount"],
    // Amazon Nova (Converse-like body, and its older snake_case spelling).
    &["inferenceConfig", "maxTokens"],
    &["inferenceConfig", "max_new_tokens"],
    // AI21 Jurassic.
    &["maxTokens"],
    // OpenAI-compatible models' newer spelling.
    &["max_completion_tokens"],
];

fn parse_body(body: &[u8]) -> Result<Map<String, Value>, FieldViolation> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(FieldViolation::invalid("body", "must be a JSON object")),
        // serde_json's message names the line and column of the error.
        Err(error) => Err(FieldViolation::invalid(
            "body",
            format!("is not valid JSON: {error}"),
        )),
    }
}

/// The most output tokens an InvokeModel body lets the model generate, read
/// from the model family's own field (Anthropic, Mistral and Cohere
/// `max_tokens`, Llama `max_gen_len`, Titan `textGenerationConfig.maxTokenCount`,
/// Nova `inferenceConfig.maxTokens` or `max_new_tokens`, AI21 `maxTokens`,
/// `max_completion_tokens`). When several are present the largest counts: the
/// reservation must cover whichever one the model reads. `Ok(None)` when the
/// body has none (the model's default applies; the caller reserves its
/// configured default).
///
/// Errors name the field: `body` for a body that is not a JSON object (with
/// serde_json's line and column), `body.<path>` for a limit that is not a
/// positive integer.
pub fn invoke_max_output_tokens(body: &[u8]) -> Result<Option<i64>, FieldViolation> {
    let object = parse_body(body)?;
    let mut largest: Option<i64> = None;
    for path in MAX_OUTPUT_TOKEN_PATHS {
        let Some(value) = lookup(&object, path) else {
            continue;
        };
        let tokens = value.as_i64().filter(|&tokens| tokens > 0).ok_or_else(|| {
            FieldViolation::invalid(
                format!("body.{}", path.join(".")),
                format!("must be a positive integer, not {value}"),
            )
        })?;
        largest = Some(largest.map_or(tokens, |l| l.max(tokens)));
    }
    Ok(largest)
}

fn lookup<'a>(object: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut current = object;
    for key in parents {
        current = current.get(*key)?.as_object()?;
    }
    // An explicit null is the same as leaving the field out.
    current.get(*last).filter(|value| !value.is_null())
}

/// Keys whose string values hold base64 media (Anthropic `source.data` with
/// `type: base64`, Nova `source.bytes`, Llama and Titan image fields): counted
/// as [`IMAGE_TOKENS`] each rather than as text.
const MEDIA_KEYS: [&str; 5] = ["bytes", "image", "images", "inputImage", "inputImages"];

/// The input-token estimate of an InvokeModel body: `ceil(S / 4) + 1600 x M`,
/// where `S` is the UTF-8 bytes of every string value in the JSON (keys,
/// numbers and punctuation excluded) and `M` the number of base64 media
/// strings (under `bytes`, `image(s)`, `inputImage(s)`, or `data` next to
/// `"type": "base64"`), for the reasons given at
/// [`super::estimate_input_tokens`]. Model-native bodies differ, so every
/// string counts: role names and the like make it a little high, never lower
/// than the prompt text alone (which is what the emulator counts). A body that
/// is not JSON (the caller has rejected it by then) counts `ceil(bytes / 4)`.
#[must_use]
pub fn invoke_estimate_input_tokens(body: &[u8]) -> i64 {
    let mut counter = StringCounter::default();
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => counter.value(&value, None),
        Err(_) => counter.text_bytes = u64::try_from(body.len()).unwrap_or(u64::MAX),
    }
    let tokens = counter
        .text_bytes
        .div_ceil(BYTES_PER_TOKEN)
        .saturating_add(counter.media.saturating_mul(IMAGE_TOKENS));
    i64::try_from(tokens).unwrap_or(i64::MAX)
}

#[derive(Default)]
struct StringCounter {
    text_bytes: u64,
    media: u64,
}

impl StringCounter {
    fn value(&mut self, value: &Value, key: Option<&str>) {
        match value {
            Value::String(text) => {
                if key.is_some_and(|k| MEDIA_KEYS.contains(&k)) {
                    self.media = self.media.saturating_add(1);
                } else {
                    self.text_bytes = self
                        .text_bytes
                        .saturating_add(u64::try_from(text.len()).unwrap_or(u64::MAX));
                }
            }
            Value::Array(items) => {
                for item in items {
                    // Items of a media list (`images: [b64, ...]`) are media.
                    self.value(item, key);
                }
            }
            Value::Object(object) => {
                let base64_source = object.get("type").and_then(Value::as_str) == Some("base64");
                for (child_key, child) in object {
                    if base64_source && child_key == "data" && child.is_string() {
                        self.media = self.media.saturating_add(1);
                    } else {
                        self.value(child, Some(child_key));
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

/// Usage and latency of an InvokeModelWithResponseStream call, from the
/// `amazon-bedrock-invocationMetrics` object of its last chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InvokeStreamMetrics {
    /// `inputTokenCount`, `outputTokenCount`, `cacheReadInputTokenCount` and
    /// `cacheWriteInputTokenCount` (0 when absent), with the convention of
    /// [`super::usage_to_proto`]: `input_tokens` excludes the cache's.
    pub usage: pb::TokenUsage,
    /// `invocationLatency`, milliseconds.
    pub latency_ms: i64,
    /// `firstByteLatency`, milliseconds.
    pub first_byte_latency_ms: i64,
}

impl InvokeStreamMetrics {
    /// The stream's metadata message.
    #[must_use]
    pub fn to_proto(&self) -> pb::InvokeModelStreamMetadata {
        pb::InvokeModelStreamMetadata {
            usage: Some(self.usage),
            latency_ms: self.latency_ms,
            first_byte_latency_ms: self.first_byte_latency_ms,
        }
    }
}

/// The invocation metrics of a response-stream chunk (the decoded JSON of a
/// PayloadPart), if it carries them: Bedrock adds them to the last chunk only.
/// `None` for any other chunk, and for one that is not a JSON object. A count
/// that is missing or not an integer reads as 0.
#[must_use]
pub fn invoke_stream_metrics(chunk_bytes: &[u8]) -> Option<InvokeStreamMetrics> {
    let chunk: Value = serde_json::from_slice(chunk_bytes).ok()?;
    let metrics = chunk.get("amazon-bedrock-invocationMetrics")?.as_object()?;
    let count = |key: &str| metrics.get(key).and_then(Value::as_i64).unwrap_or(0);
    Some(InvokeStreamMetrics {
        usage: pb::TokenUsage {
            input_tokens: count("inputTokenCount"),
            output_tokens: count("outputTokenCount"),
            cache_read_input_tokens: count("cacheReadInputTokenCount"),
            cache_write_input_tokens: count("cacheWriteInputTokenCount"),
        },
        latency_ms: count("invocationLatency"),
        first_byte_latency_ms: count("firstByteLatency"),
    })
}
