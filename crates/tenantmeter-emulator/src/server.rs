//! The emulator as a server: its shared state, its routes, and how it stops.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::completion::PromptCache;
use crate::config::EmulatorConfig;
use crate::faults::{Fault, ServiceError};
use crate::invocations::{self, Invocation, InvocationLog};
use crate::profiles::ProfileStore;
use crate::{control, runtime};

/// What every route shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: EmulatorConfig,
    pub(crate) cache: PromptCache,
    pub(crate) profiles: ProfileStore,
    pub(crate) invocations: InvocationLog,
    requests: AtomicU64,
    /// Cancelled when the server shuts down, to end `[[fault:hang]]` waits.
    stopping: CancellationToken,
}

impl Shared {
    pub(crate) fn request_id(&self) -> String {
        format!("emu-{}", self.requests.fetch_add(1, Ordering::Relaxed))
    }

    /// The region a call is for: the one its SigV4 credential scope names
    /// (`Credential=AKID/20250101/us-west-2/bedrock/aws4_request`), as an SDK client configured
    /// for that region signs it; else the configured region. One emulator can so serve clients
    /// of several regions, each seeing its own regional profiles.
    pub(crate) fn region_of(&self, headers: &HeaderMap) -> String {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|auth| auth.split_once("Credential="))
            .and_then(|(_, rest)| rest.split([',', ' ']).next())
            .and_then(|credential| credential.split('/').nth(2))
            .filter(|region| !region.is_empty())
            .unwrap_or(&self.config.region)
            .to_owned()
    }

    /// Holds a `[[fault:hang]]` call: until the hang limit (then `ModelTimeoutException`) or
    /// until shutdown (then `ServiceUnavailableException`, so draining does not wait for it).
    pub(crate) async fn hang(&self) -> ServiceError {
        tokio::select! {
            () = tokio::time::sleep(self.config.hang_limit) => {
                ServiceError::injected(Fault::ModelTimeout, "a [[fault:hang]] call that reached the hang limit")
            }
            () = self.stopping.cancelled() => {
                ServiceError::injected(Fault::ServiceUnavailable, "a [[fault:hang]] call ended by shutdown")
            }
        }
    }
}

/// A running emulator's state: cheap to clone, all clones share it. Build one to read the
/// invocation record from Rust; [`crate::router`] and [`crate::serve`] build one internally.
#[derive(Debug, Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
}

impl Emulator {
    /// A fresh emulator: no profiles, empty cache, empty invocation record.
    #[must_use]
    pub fn new(config: EmulatorConfig) -> Self {
        let shared = Shared {
            cache: PromptCache::new(config.cache_capacity),
            profiles: ProfileStore::new(config.account_id.clone(), config.state_file.clone()),
            invocations: InvocationLog::new(config.invocation_capacity),
            requests: AtomicU64::new(0),
            stopping: CancellationToken::new(),
            config,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The routes, over this emulator's state.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/model/{model_id}/converse", post(runtime::converse))
            .route(
                "/model/{model_id}/converse-stream",
                post(runtime::converse_stream),
            )
            .route("/model/{model_id}/invoke", post(runtime::invoke_model))
            .route(
                "/model/{model_id}/invoke-with-response-stream",
                post(runtime::invoke_model_with_response_stream),
            )
            .route(
                "/inference-profiles",
                post(control::create_inference_profile).get(control::list_inference_profiles),
            )
            .route(
                "/inference-profiles/{identifier}",
                get(control::get_inference_profile).delete(control::delete_inference_profile),
            )
            .route(
                "/listTagsForResource",
                post(control::list_tags_for_resource),
            )
            .route("/tagResource", post(control::tag_resource))
            .route("/untagResource", post(control::untag_resource))
            .route("/_emulator/invocations", get(invocations::list))
            .fallback(unknown_operation)
            .with_state(Arc::clone(&self.shared))
    }

    /// Every runtime invocation so far (at most [`EmulatorConfig::invocation_capacity`]),
    /// oldest first.
    #[must_use]
    pub fn invocations(&self) -> Vec<Invocation> {
        self.shared.invocations.snapshot()
    }

    /// Ends every `[[fault:hang]]` wait, now and later; [`Emulator::serve`] calls it on shutdown.
    pub fn shutdown(&self) {
        self.shared.stopping.cancel();
    }

    /// Serves the routes on `listener` until `shutdown` completes, then ends hangs and drains
    /// open connections.
    ///
    /// # Errors
    /// An I/O error from the listener.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        let stopping = self.shared.stopping.clone();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                stopping.cancel();
            })
            .await
    }
}

/// What Bedrock answers a path it does not know.
async fn unknown_operation(State(shared): State<Arc<Shared>>) -> Response {
    let error = ServiceError::new(
        StatusCode::NOT_FOUND,
        "UnknownOperationException",
        "The emulator has no operation at this method and path".to_owned(),
    );
    error.into_response(&shared.request_id())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn region_comes_from_the_sigv4_credential_scope() {
        let emulator = Emulator::new(EmulatorConfig::default());
        let mut headers = HeaderMap::new();
        assert_eq!(emulator.shared.region_of(&headers), "us-east-1");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AKIDTEST/20250101/eu-west-1/bedrock/aws4_request, \
                 SignedHeaders=host, Signature=abc",
            ),
        );
        assert_eq!(emulator.shared.region_of(&headers), "eu-west-1");
    }
}
