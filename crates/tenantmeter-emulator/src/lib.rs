//! A protocol-faithful Amazon Bedrock emulator.
//!
//! The gateway always talks to Bedrock through the real `aws-sdk-bedrockruntime` and
//! `aws-sdk-bedrock`; locally and in tests those clients are pointed (`endpoint_url`) at this
//! emulator, which speaks the same restJson1 wire protocol over plain HTTP/1.1. Everything it
//! answers is deterministic: the same request gives the same reply text and the same token
//! counts, so tests can assert exact money.
//!
//! The routes, the token and cache rules, the fault markers, the pacing knobs and the
//! invocation record are documented in `docs/emulator.md`. In short:
//!
//! | route | operation |
//! | --- | --- |
//! | `POST /model/{modelId}/converse` | `Converse` |
//! | `POST /model/{modelId}/converse-stream` | `ConverseStream` (event stream) |
//! | `POST /model/{modelId}/invoke` | `InvokeModel` (Anthropic Messages body) |
//! | `POST /model/{modelId}/invoke-with-response-stream` | `InvokeModelWithResponseStream` |
//! | `POST /inference-profiles` | `CreateInferenceProfile` |
//! | `GET /inference-profiles` | `ListInferenceProfiles` |
//! | `GET /inference-profiles/{id or ARN}` | `GetInferenceProfile` |
//! | `DELETE /inference-profiles/{id or ARN}` | `DeleteInferenceProfile` |
//! | `POST /listTagsForResource`, `/tagResource`, `/untagResource` | tagging |
//! | `GET /_emulator/invocations` | the emulator's record of runtime calls (not Bedrock) |
//!
//! * Tokens: `ceil(UTF-8 bytes / 4)` ([`tokens_for_bytes`]); text before a `cachePoint` is a
//!   cache write the first time, a cache read after.
//! * Faults: a marker in the last user text ([`Fault::marker`], [`MID_STREAM_MARKER`],
//!   [`HANG_MARKER`]), or in a new profile's name or description, fails the call as Bedrock
//!   does.
//! * `modelId` may be an application profile ARN this emulator created (it resolves to the
//!   profile's source model), a system profile id or ARN, or a model id or ARN.

mod anthropic;
mod completion;
mod config;
mod control;
mod faults;
mod invocations;
mod models;
mod profiles;
mod requests;
mod runtime;
mod server;
mod stream;

use std::future::Future;

pub use completion::tokens_for_bytes;
pub use config::{
    DEFAULT_ACCOUNT_ID, DEFAULT_HANG_LIMIT, DEFAULT_REGION, DEFAULT_REPLY_PREFIX, EmulatorConfig,
};
pub use faults::{Fault, HANG_MARKER, MID_STREAM_MARKER};
pub use invocations::{Invocation, Operation, Usage};
pub use server::Emulator;
pub use stream::STREAM_CHUNK_BYTES;

/// The emulator's routes over a fresh [`Emulator`], for embedding in another server; use
/// [`Emulator::router`] to keep a handle on its state.
pub fn router(config: EmulatorConfig) -> axum::Router {
    Emulator::new(config).router()
}

/// Serves a fresh [`Emulator`] on `listener` until `shutdown` completes, then ends
/// `[[fault:hang]]` waits and drains open connections.
///
/// # Errors
/// An I/O error from the listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: EmulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    Emulator::new(config).serve(listener, shutdown).await
}
