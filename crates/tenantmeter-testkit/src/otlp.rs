//! An in-process OTLP/gRPC trace receiver: the collector end of
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, so a test can read the spans a service
//! exported instead of trusting that "tracing is on".
//!
//! It serves `opentelemetry.proto.collector.trace.v1.TraceService` on a free
//! port of 127.0.0.1 and keeps every span it receives in memory, flattened
//! with the `service.name` of its resource. Tests read them with
//! [`OtlpReceiver::spans`], or wait for what they expect with
//! [`OtlpReceiver::wait_for`]: exporters batch, so spans arrive some time
//! after they end, and a test must poll rather than sleep.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use tenantmeter_testkit::OtlpReceiver;
//!
//! let receiver = OtlpReceiver::start().await?;
//! // Point the exporter at `receiver.endpoint()`, do the work, then:
//! let spans = receiver
//!     .wait_for(Duration::from_secs(30), |spans| {
//!         spans.iter().any(|s| s.name() == "chat sonnet")
//!     })
//!     .await?;
//! # drop(spans);
//! # Ok(())
//! # }
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::wait::poll_until_ok;

/// The OTLP protobuf types, for tests that need more than the helpers on
/// [`CollectedSpan`] (and so need no dependency of their own on them).
pub use opentelemetry_proto::tonic as proto;
/// The value of an attribute.
pub use opentelemetry_proto::tonic::common::v1::any_value::Value as AttributeValue;
/// An event of a span, as received (see [`CollectedEvent`]).
pub use opentelemetry_proto::tonic::trace::v1::span::Event as SpanEvent;
/// Server, client, internal...: `otel.kind` of a `tracing` span.
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// One span as received, with the service that exported it.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedSpan {
    /// `service.name` of the exporting resource; empty when it sent none.
    pub service_name: String,
    /// Name of the instrumentation scope (the tracer).
    pub scope_name: String,
    /// The span itself.
    pub span: Span,
}

impl CollectedSpan {
    /// The span's name (`otel.name` when the `tracing` span set one).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// The trace id in lowercase hex, as written in a `traceparent` header.
    #[must_use]
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span id in lowercase hex.
    #[must_use]
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent's span id in lowercase hex; `None` for a root span.
    #[must_use]
    pub fn parent_span_id(&self) -> Option<String> {
        if self.span.parent_span_id.is_empty() {
            None
        } else {
            Some(hex(&self.span.parent_span_id))
        }
    }

    /// The span's kind; `Unspecified` for a value this version does not know.
    #[must_use]
    pub fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    /// The value of attribute `key`.
    #[must_use]
    pub fn attribute(&self, key: &str) -> Option<&AttributeValue> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    /// The value of string attribute `key`.
    #[must_use]
    pub fn str_attribute(&self, key: &str) -> Option<&str> {
        if let AttributeValue::StringValue(s) = self.attribute(key)? {
            Some(s)
        } else {
            None
        }
    }

    /// The value of integer attribute `key`.
    #[must_use]
    pub fn int_attribute(&self, key: &str) -> Option<i64> {
        if let AttributeValue::IntValue(i) = self.attribute(key)? {
            Some(*i)
        } else {
            None
        }
    }

    /// The span's events (`tracing` events recorded inside it), in the order
    /// they were recorded.
    #[must_use]
    pub fn events(&self) -> Vec<CollectedEvent<'_>> {
        self.span
            .events
            .iter()
            .map(|event| CollectedEvent { event })
            .collect()
    }

    /// The span's events named `name`, in order. A `tracing` event's name is
    /// its message (`tracing::info!(tenant = %t, "level transition")` is an
    /// event `level transition`).
    #[must_use]
    pub fn events_named(&self, name: &str) -> Vec<CollectedEvent<'_>> {
        self.events()
            .into_iter()
            .filter(|event| event.name() == name)
            .collect()
    }

    /// Every piece of text the span carries, each with where it is: its name,
    /// attribute keys and values (nested ones too), its events' names and
    /// attributes, its links' attributes and its status message. What a
    /// "never in spans" check must search.
    #[must_use]
    pub fn texts(&self) -> Vec<(String, String)> {
        let mut texts = vec![("name".to_owned(), self.span.name.clone())];
        collect_attributes("attribute", &self.span.attributes, &mut texts);
        for event in &self.span.events {
            let place = format!("event {:?}", event.name);
            texts.push((place.clone(), event.name.clone()));
            collect_attributes(&place, &event.attributes, &mut texts);
        }
        for link in &self.span.links {
            collect_attributes("link", &link.attributes, &mut texts);
        }
        if let Some(status) = &self.span.status {
            texts.push(("status message".to_owned(), status.message.clone()));
        }
        texts
    }

    /// Where the span carries `needle` (see [`texts`](Self::texts)), if it does.
    #[must_use]
    pub fn mentions(&self, needle: &str) -> Option<String> {
        self.texts()
            .into_iter()
            .find(|(_, text)| text.contains(needle))
            .map(|(place, _)| place)
    }
}

/// One event of a [`CollectedSpan`], borrowed from it.
///
/// `tracing-opentelemetry` names the event after its message and makes each
/// other field an attribute of the same name (`tenant`, `from`...), adding
/// `level` (`INFO`...), `target` and, with locations on, `code.file.path`,
/// `code.module.name` and `code.line.number`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CollectedEvent<'a> {
    /// The event as received.
    pub event: &'a SpanEvent,
}

impl<'a> CollectedEvent<'a> {
    /// The event's name.
    #[must_use]
    pub fn name(&self) -> &'a str {
        &self.event.name
    }

    /// When it was recorded, in nanoseconds since the Unix epoch.
    #[must_use]
    pub fn time_unix_nano(&self) -> u64 {
        self.event.time_unix_nano
    }

    /// The value of attribute `key`.
    #[must_use]
    pub fn attribute(&self, key: &str) -> Option<&'a AttributeValue> {
        self.event
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    /// The value of string attribute `key`.
    #[must_use]
    pub fn str_attribute(&self, key: &str) -> Option<&'a str> {
        if let AttributeValue::StringValue(s) = self.attribute(key)? {
            Some(s)
        } else {
            None
        }
    }

    /// The value of integer attribute `key`.
    #[must_use]
    pub fn int_attribute(&self, key: &str) -> Option<i64> {
        if let AttributeValue::IntValue(i) = self.attribute(key)? {
            Some(*i)
        } else {
            None
        }
    }

    /// The value of boolean attribute `key`.
    #[must_use]
    pub fn bool_attribute(&self, key: &str) -> Option<bool> {
        if let AttributeValue::BoolValue(b) = self.attribute(key)? {
            Some(*b)
        } else {
            None
        }
    }

    /// The attributes' keys, in order.
    #[must_use]
    pub fn attribute_keys(&self) -> Vec<&'a str> {
        self.event
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect()
    }
}

fn collect_attributes(place: &str, attributes: &[KeyValue], out: &mut Vec<(String, String)>) {
    for kv in attributes {
        let here = format!("{place} {}", kv.key);
        out.push((here.clone(), kv.key.clone()));
        if let Some(value) = &kv.value {
            collect_value(&here, value, out);
        }
    }
}

fn collect_value(place: &str, value: &AnyValue, out: &mut Vec<(String, String)>) {
    match &value.value {
        Some(AttributeValue::StringValue(s)) => out.push((place.to_owned(), s.clone())),
        // Bytes may well be text; searched as such so nothing slips through.
        Some(AttributeValue::BytesValue(b)) => {
            out.push((place.to_owned(), String::from_utf8_lossy(b).into_owned()));
        }
        Some(AttributeValue::ArrayValue(array)) => {
            for item in &array.values {
                collect_value(place, item, out);
            }
        }
        Some(AttributeValue::KvlistValue(list)) => collect_attributes(place, &list.values, out),
        Some(
            AttributeValue::BoolValue(_)
            | AttributeValue::IntValue(_)
            | AttributeValue::DoubleValue(_)
            | AttributeValue::StringValueStrindex(_),
        )
        | None => {}
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `service.name` of a resource, if it is a string.
fn service_name(attributes: &[KeyValue]) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| {
            if let AttributeValue::StringValue(s) = kv.value.as_ref()?.value.as_ref()? {
                Some(s.clone())
            } else {
                None
            }
        })
        .unwrap_or_default()
}

type Store = Arc<Mutex<Vec<CollectedSpan>>>;

/// Locks the store. A poisoned lock only means a test panicked while reading
/// it; the spans themselves are intact.
fn lock(store: &Store) -> std::sync::MutexGuard<'_, Vec<CollectedSpan>> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone)]
struct Collector {
    store: Store,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .map(|r| service_name(&r.attributes))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                let scope = scope_spans
                    .scope
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                received.extend(scope_spans.spans.into_iter().map(|span| CollectedSpan {
                    service_name: service.clone(),
                    scope_name: scope.clone(),
                    span,
                }));
            }
        }
        lock(&self.store).extend(received);
        // Everything was accepted: no partial success to report.
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC trace collector serving on 127.0.0.1 until dropped or
/// [stopped](Self::stop).
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    store: Store,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl OtlpReceiver {
    /// Starts the receiver on a free port of 127.0.0.1. It is bound (and so
    /// accepts exports) when this returns. Needs a Tokio runtime.
    ///
    /// # Errors
    ///
    /// When 127.0.0.1 cannot be bound.
    pub async fn start() -> anyhow::Result<Self> {
        // Binding port 0 and keeping the listener: the port is ours from the
        // start, with no window in which another process could take it.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding 127.0.0.1:0 for the OTLP receiver")?;
        let addr = listener
            .local_addr()
            .context("reading the OTLP receiver's address")?;
        let store = Store::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            Server::builder()
                .add_service(TraceServiceServer::new(Collector {
                    store: Arc::clone(&store),
                }))
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    // A dropped sender (the receiver dropped) stops it too.
                    let _ = stopped.await;
                }),
        );
        Ok(Self {
            addr,
            store,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// The address it serves on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`: `http://127.0.0.1:<port>`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    #[must_use]
    pub fn spans(&self) -> Vec<CollectedSpan> {
        lock(&self.store).clone()
    }

    /// Forgets the spans received so far.
    pub fn clear(&self) {
        lock(&self.store).clear();
    }

    /// Waits until the spans received so far satisfy `ready`, for at most
    /// `timeout`, polling with the crate's backoff; returns them.
    ///
    /// # Errors
    ///
    /// When `ready` still fails at the deadline; the error says how many
    /// spans had arrived, and their names, to show what was missing.
    pub async fn wait_for<F>(
        &self,
        timeout: Duration,
        mut ready: F,
    ) -> anyhow::Result<Vec<CollectedSpan>>
    where
        F: FnMut(&[CollectedSpan]) -> bool,
    {
        poll_until_ok(timeout, || {
            let spans = self.spans();
            let result = if ready(&spans) {
                Ok(spans)
            } else {
                let names: Vec<&str> = spans.iter().map(CollectedSpan::name).collect();
                Err(format!(
                    "{} spans received, not yet the expected ones: {names:?}",
                    spans.len()
                ))
            };
            async move { result }
        })
        .await
        .context("waiting for spans at the OTLP receiver")
    }

    /// Waits until a span satisfying `matches` has arrived and returns it.
    ///
    /// # Errors
    ///
    /// As [`wait_for`](Self::wait_for).
    pub async fn wait_for_span<F>(
        &self,
        timeout: Duration,
        mut matches: F,
    ) -> anyhow::Result<CollectedSpan>
    where
        F: FnMut(&CollectedSpan) -> bool,
    {
        let spans = self
            .wait_for(timeout, |spans| spans.iter().any(&mut matches))
            .await?;
        spans
            .into_iter()
            .find(matches)
            .context("the span that matched is gone")
    }

    /// Stops serving and waits for the server task.
    ///
    /// # Errors
    ///
    /// When the server failed or its task panicked.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .context("the OTLP receiver's task failed")?
                .context("the OTLP receiver failed")?;
        }
        Ok(())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Not awaited (a destructor cannot); the task ends on the signal, or
        // with the runtime.
        drop(self.server.take());
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, InstrumentationScope};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::Event;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    use super::*;

    fn kv(key: &str, value: AttributeValue) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn request() -> ExportTraceServiceRequest {
        let span = Span {
            trace_id: vec![0xab; 16],
            span_id: vec![0x01; 8],
            parent_span_id: vec![0x02; 8],
            name: "chat sonnet".to_owned(),
            kind: SpanKind::Client as i32,
            attributes: vec![
                kv(
                    "gen_ai.system",
                    AttributeValue::StringValue("aws.bedrock".into()),
                ),
                kv("gen_ai.usage.input_tokens", AttributeValue::IntValue(7)),
                kv(
                    "list",
                    AttributeValue::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(AttributeValue::StringValue("deep secret".into())),
                        }],
                    }),
                ),
            ],
            events: vec![Event {
                name: "settled".to_owned(),
                attributes: vec![kv("note", AttributeValue::StringValue("event text".into()))],
                ..Default::default()
            }],
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv(
                        "service.name",
                        AttributeValue::StringValue("svc".into()),
                    )],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "tenantmeter".to_owned(),
                        ..Default::default()
                    }),
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[tokio::test]
    async fn collects_exported_spans_with_their_service() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let mut client = TraceServiceClient::connect(receiver.endpoint())
            .await
            .unwrap();
        client.export(request()).await.unwrap();

        let span = receiver
            .wait_for_span(Duration::from_secs(5), |s| s.name() == "chat sonnet")
            .await
            .unwrap();
        assert_eq!(span.service_name, "svc");
        assert_eq!(span.scope_name, "tenantmeter");
        assert_eq!(span.trace_id(), "ab".repeat(16));
        assert_eq!(span.span_id(), "01".repeat(8));
        assert_eq!(span.parent_span_id(), Some("02".repeat(8)));
        assert_eq!(span.kind(), SpanKind::Client);
        assert_eq!(span.str_attribute("gen_ai.system"), Some("aws.bedrock"));
        assert_eq!(span.int_attribute("gen_ai.usage.input_tokens"), Some(7));
        assert_eq!(span.int_attribute("gen_ai.system"), None);
        assert_eq!(
            span.mentions("deep secret").as_deref(),
            Some("attribute list")
        );
        assert_eq!(
            span.mentions("event text").as_deref(),
            Some("event \"settled\" note")
        );
        assert_eq!(span.mentions("absent"), None);

        receiver.clear();
        assert!(receiver.spans().is_empty());
        receiver.stop().await.unwrap();
    }

    #[tokio::test]
    async fn reads_the_events_of_a_span() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let mut client = TraceServiceClient::connect(receiver.endpoint())
            .await
            .unwrap();
        let mut request = request();
        let span = &mut request.resource_spans[0].scope_spans[0].spans[0];
        span.events.push(Event {
            name: "level transition".to_owned(),
            time_unix_nano: 42,
            attributes: vec![
                kv("tenant", AttributeValue::StringValue("acme".into())),
                kv("shadow", AttributeValue::BoolValue(false)),
                kv("code.line.number", AttributeValue::IntValue(7)),
            ],
            ..Default::default()
        });
        client.export(request).await.unwrap();

        let span = receiver
            .wait_for_span(Duration::from_secs(5), |s| s.name() == "chat sonnet")
            .await
            .unwrap();
        let names: Vec<&str> = span.events().iter().map(CollectedEvent::name).collect();
        assert_eq!(names, ["settled", "level transition"]);
        let settled = span.events_named("settled");
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].str_attribute("note"), Some("event text"));
        let transitions = span.events_named("level transition");
        assert_eq!(transitions.len(), 1);
        let transition = transitions[0];
        assert_eq!(transition.time_unix_nano(), 42);
        assert_eq!(transition.str_attribute("tenant"), Some("acme"));
        assert_eq!(transition.bool_attribute("shadow"), Some(false));
        assert_eq!(transition.int_attribute("code.line.number"), Some(7));
        assert_eq!(transition.str_attribute("shadow"), None);
        assert_eq!(transition.attribute("absent"), None);
        assert_eq!(
            transition.attribute_keys(),
            ["tenant", "shadow", "code.line.number"]
        );
        assert!(span.events_named("absent").is_empty());
        receiver.stop().await.unwrap();
    }

    #[tokio::test]
    async fn waiting_for_spans_that_never_come_fails_naming_what_arrived() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let error = receiver
            .wait_for(Duration::from_millis(50), |spans| !spans.is_empty())
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("0 spans received"),
            "{error:#}"
        );
    }
}
