//! W3C trace context across gRPC hops, as tower middleware.
//!
//! - [`server_layer`] wraps a server: for each request it opens a span named after the gRPC
//!   method (`rpc.system=grpc`, `rpc.service`, `rpc.method`, `otel.kind=server`), makes the
//!   caller's `traceparent`/`tracestate` its parent, and records `rpc.grpc.status_code` when
//!   the status is known (response headers for trailers-only responses, else the trailers).
//! - [`ClientTraceLayer`] wraps a client channel: for each call it opens a client span under
//!   the current span and injects that span's context into the outgoing headers.
//!   [`crate::client::connect`] applies it for you.
//!
//! The W3C propagator is used directly rather than through the global one, so propagation
//! does not depend on telemetry having been initialised first. Spans exist only for the
//! `tracing` subscriber; without the OpenTelemetry layer (see [`crate::telemetry`]) there is
//! no span context to propagate and headers pass through untouched.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::Code;
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Services whose calls are plumbing (probes, grpcurl discovery): their spans are at DEBUG
/// level so a Kubernetes probe every few seconds does not flood the trace backend.
const INFRASTRUCTURE_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Status codes that mark a *server* span as failed (OpenTelemetry gRPC semantic
/// conventions): the others (NOT_FOUND, INVALID_ARGUMENT...) are the caller's problem.
const SERVER_ERROR_CODES: &[Code] = &[
    Code::Unknown,
    Code::DeadlineExceeded,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
];

/// The server-side layer: extract the caller's context, one span per RPC.
#[must_use]
pub fn server_layer() -> ServerTraceLayer {
    ServerTraceLayer { _private: () }
}

/// See [`server_layer`].
#[derive(Debug, Clone, Copy)]
pub struct ServerTraceLayer {
    _private: (),
}

impl<S> Layer<S> for ServerTraceLayer {
    type Service = ServerTraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTraceService { inner }
    }
}

/// The service made by [`ServerTraceLayer`].
#[derive(Debug, Clone)]
pub struct ServerTraceService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ServerTraceService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = TracedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let span = rpc_span(Side::Server, request.uri().path());
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        if parent.span().span_context().is_valid() {
            // Fails only without the OpenTelemetry layer, where there is nothing to link.
            let _ = span.set_parent(parent);
        }
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        TracedFuture::new(future, span, Side::Server)
    }
}

/// The client-side layer: one client span per call, its context injected into the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTraceLayer {
    _private: (),
}

impl ClientTraceLayer {
    /// The layer.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTraceService { inner }
    }
}

/// The service made by [`ClientTraceLayer`]; wraps a channel and is itself a channel for
/// generated clients (`FooServiceClient::new(traced)`).
#[derive(Debug, Clone)]
pub struct ClientTraceService<S> {
    inner: S,
}

impl<S> ClientTraceService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ClientTraceService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = TracedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let span = rpc_span(Side::Client, request.uri().path());
        let context = span.context();
        TraceContextPropagator::new()
            .inject_context(&context, &mut HeaderInjector(request.headers_mut()));
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        TracedFuture::new(future, span, Side::Client)
    }
}

/// Which end of the call a span describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// `/tenantmeter.v1.PricingService/Quote` -> (`tenantmeter.v1.PricingService`, `Quote`).
fn split_path(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').unwrap_or((path, ""))
}

fn rpc_span(side: Side, path: &str) -> Span {
    let (service, method) = split_path(path);
    let name = format!("{service}/{method}");
    let debug = INFRASTRUCTURE_SERVICES.contains(&service);
    // `tracing` needs the level and span name as constants, hence four spellings of one span.
    macro_rules! span {
        ($level:expr, $name:literal, $kind:literal) => {
            tracing::span!(
                $level,
                $name,
                otel.name = name.as_str(),
                otel.kind = $kind,
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = method,
                rpc.grpc.status_code = Empty,
                otel.status_code = Empty,
            )
        };
    }
    match (side, debug) {
        (Side::Server, false) => span!(tracing::Level::INFO, "grpc.server", "server"),
        (Side::Server, true) => span!(tracing::Level::DEBUG, "grpc.server", "server"),
        (Side::Client, false) => span!(tracing::Level::INFO, "grpc.client", "client"),
        (Side::Client, true) => span!(tracing::Level::DEBUG, "grpc.client", "client"),
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn record_status(span: &Span, side: Side, code: i32) {
    span.record("rpc.grpc.status_code", code);
    let failed = match side {
        Side::Client => code != 0,
        Side::Server => SERVER_ERROR_CODES.contains(&Code::from_i32(code)),
    };
    if failed {
        span.record("otel.status_code", "ERROR");
    }
}

pin_project_lite::pin_project! {
    /// Response future of the traced services: polls the inner call inside the RPC span, so
    /// handler spans are its children, then wraps the body to see the final status.
    #[derive(Debug)]
    pub struct TracedFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        side: Side,
    }
}

impl<F> TracedFuture<F> {
    fn new(inner: F, span: Span, side: Side) -> Self {
        Self { inner, span, side }
    }
}

impl<F, B, E> Future for TracedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<TracedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        match ready!(this.inner.poll(cx)) {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                // Trailers-only responses (most errors) carry the status in the headers.
                let status = grpc_status(&parts.headers);
                if let Some(code) = status {
                    record_status(this.span, *this.side, code);
                }
                let body = TracedBody {
                    inner: body,
                    span: this.span.clone(),
                    side: *this.side,
                    status_recorded: status.is_some(),
                };
                Poll::Ready(Ok(http::Response::from_parts(parts, body)))
            }
            Err(error) => {
                // The call failed below gRPC (connection refused, reset): no status exists.
                this.span.record("otel.status_code", "ERROR");
                Poll::Ready(Err(error))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps the RPC span open until the body is done (streams too) and
    /// records the status from the trailers.
    #[derive(Debug)]
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        span: Span,
        side: Side,
        status_recorded: bool,
    }
}

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !*this.status_recorded {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                        record_status(this.span, *this.side, code);
                        *this.status_recorded = true;
                    }
                }
                Some(Err(_)) => {
                    this.span.record("otel.status_code", "ERROR");
                    *this.status_recorded = true;
                }
                None => {}
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator only emits valid lowercase names and visible-ASCII values; anything
        // else is dropped rather than sent malformed.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_grpc_paths() {
        assert_eq!(
            split_path("/tenantmeter.v1.PricingService/Quote"),
            ("tenantmeter.v1.PricingService", "Quote")
        );
        assert_eq!(split_path("/"), ("", ""));
        assert_eq!(split_path("odd"), ("odd", ""));
    }

    #[test]
    fn server_error_codes_follow_semantic_conventions() {
        assert!(SERVER_ERROR_CODES.contains(&Code::from_i32(13)));
        assert!(!SERVER_ERROR_CODES.contains(&Code::from_i32(5)));
    }
}
