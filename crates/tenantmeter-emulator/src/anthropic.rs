//! The Anthropic Messages JSON that InvokeModel answers with, whole or as streaming events.

use serde_json::{Value, json};

use crate::completion::Completion;

/// The `InvokeModel` response body.
pub(crate) fn message(id: &str, model: &str, done: &Completion) -> Value {
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [ { "type": "text", "text": done.reply } ],
        "stop_reason": done.stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": done.input_tokens,
            "output_tokens": done.output_tokens,
            "cache_creation_input_tokens": done.cache_write,
            "cache_read_input_tokens": done.cache_read,
        },
    })
}

/// `message_start`. Like Anthropic it counts the input in full but only the first output token:
/// the output count is final in `message_delta`.
pub(crate) fn message_start(id: &str, model: &str, done: &Completion) -> Value {
    json!({
        "type": "message_start",
        "message": {
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {
                "input_tokens": done.input_tokens,
                "output_tokens": done.output_tokens.min(1),
                "cache_creation_input_tokens": done.cache_write,
                "cache_read_input_tokens": done.cache_read,
            },
        },
    })
}

pub(crate) fn content_block_start() -> Value {
    json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } })
}

pub(crate) fn text_delta(text: &str) -> Value {
    json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": text } })
}

pub(crate) fn content_block_stop() -> Value {
    json!({ "type": "content_block_stop", "index": 0 })
}

pub(crate) fn message_delta(done: &Completion) -> Value {
    json!({
        "type": "message_delta",
        "delta": { "stop_reason": done.stop_reason, "stop_sequence": null },
        "usage": { "output_tokens": done.output_tokens },
    })
}

/// `message_stop`, carrying the metrics Bedrock adds to the last chunk of a stream.
pub(crate) fn message_stop(done: &Completion, invocation_ms: u64, first_byte_ms: u64) -> Value {
    json!({
        "type": "message_stop",
        "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": done.input_tokens,
            "outputTokenCount": done.output_tokens,
            "invocationLatency": invocation_ms,
            "firstByteLatency": first_byte_ms,
            "cacheReadInputTokenCount": done.cache_read,
            "cacheWriteInputTokenCount": done.cache_write,
        },
    })
}
