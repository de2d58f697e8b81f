//! The record of runtime calls: each is logged at info level and kept (newest last) for tests,
//! which read it with [`crate::Emulator::invocations`] or `GET /_emulator/invocations`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::completion::Completion;
use crate::server::Shared;

/// A runtime operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// `POST /model/{modelId}/converse`.
    Converse,
    /// `POST /model/{modelId}/converse-stream`.
    ConverseStream,
    /// `POST /model/{modelId}/invoke`.
    InvokeModel,
    /// `POST /model/{modelId}/invoke-with-response-stream`.
    InvokeModelWithResponseStream,
}

impl Operation {
    /// The operation's name in the Bedrock API.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Operation::Converse => "Converse",
            Operation::ConverseStream => "ConverseStream",
            Operation::InvokeModel => "InvokeModel",
            Operation::InvokeModelWithResponseStream => "InvokeModelWithResponseStream",
        }
    }
}

/// Token counts a call reported, in Converse's names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// All four counts summed.
    pub total_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_input_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write_input_tokens: u64,
}

impl From<&Completion> for Usage {
    fn from(done: &Completion) -> Self {
        Self {
            input_tokens: done.input_tokens,
            output_tokens: done.output_tokens,
            total_tokens: done.total(),
            cache_read_input_tokens: done.cache_read,
            cache_write_input_tokens: done.cache_write,
        }
    }
}

/// One runtime call as the emulator received and answered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invocation {
    /// The `x-amzn-RequestId` the call was answered with.
    pub request_id: String,
    /// Which runtime operation.
    pub operation: Operation,
    /// The region of the call (its SigV4 credential scope, else the configured region).
    pub region: String,
    /// The `modelId` path segment as received (percent-decoded): a model id, a system profile id
    /// or an inference profile ARN.
    pub model_id: String,
    /// The foundation model the call ran on; `None` when `modelId` did not resolve.
    pub resolved_model_id: Option<String>,
    /// Converse's `requestMetadata`.
    pub request_metadata: Option<BTreeMap<String, String>>,
    /// The token counts the call reported; `None` when it failed before reporting any.
    pub usage: Option<Usage>,
    /// The error the call was answered with (`x-amzn-errortype`, or the exception type of a
    /// stream cut mid-way), or `Hang` for a `[[fault:hang]]` call; `None` on success.
    pub error: Option<String>,
}

/// The newest invocations, at most `capacity`.
#[derive(Debug)]
pub(crate) struct InvocationLog {
    capacity: usize,
    entries: Mutex<VecDeque<Invocation>>,
}

impl InvocationLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn record(&self, invocation: Invocation) {
        let usage = invocation.usage.unwrap_or_default();
        tracing::info!(
            operation = %invocation.operation.name(),
            "modelId" = %invocation.model_id,
            "resolvedModelId" = %invocation.resolved_model_id.as_deref().unwrap_or(""),
            region = %invocation.region,
            "requestId" = %invocation.request_id,
            "inputTokens" = usage.input_tokens,
            "outputTokens" = usage.output_tokens,
            "cacheReadInputTokens" = usage.cache_read_input_tokens,
            "cacheWriteInputTokens" = usage.cache_write_input_tokens,
            error = %invocation.error.as_deref().unwrap_or(""),
            "bedrock invocation"
        );
        if self.capacity == 0 {
            return;
        }
        // Pushes and pops cannot be interrupted half-way, so a poisoned lock is still usable.
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        while entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back(invocation);
    }

    pub(crate) fn snapshot(&self) -> Vec<Invocation> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.iter().cloned().collect()
    }
}

/// `GET /_emulator/invocations`: the emulator's own route, not a Bedrock one.
pub(crate) async fn list(State(shared): State<Arc<Shared>>) -> Json<Vec<Invocation>> {
    Json(shared.invocations.snapshot())
}
