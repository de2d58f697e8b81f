//! `GatewayService`: the tenant-facing RPCs. Each handler authenticates,
//! validates and reserves in the request's task, then hands the Bedrock call
//! and its settlement to a tracked task of its own, so a client that goes
//! away mid-call never leaves usage unsettled or a reservation open.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tenantmeter_proto::v1::gateway_service_server::GatewayService;
use tenantmeter_proto::v1::{
    ConverseRequest, ConverseResponse, ConverseStreamRequest, ConverseStreamResponse,
    InvokeModelRequest, InvokeModelResponse, InvokeModelWithResponseStreamRequest,
    InvokeModelWithResponseStreamResponse, Level,
};
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use tracing::field::Empty;

use std::future::Future;

use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::call::{Admitted, CallPath};
use crate::convert::Limits;
use crate::error::{CallError, ErrorContext};
use crate::registry::model::TenantRecord;
use crate::upstream::UpstreamError;

/// A server stream of the gateway.
pub type GatewayStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What the operations need.
#[derive(Debug, Clone)]
pub struct GatewayApi {
    pub(crate) path: CallPath,
    pub(crate) bedrock: aws_sdk_bedrockruntime::Client,
    pub(crate) tasks: TaskTracker,
    pub(crate) settings: Arc<CallSettings>,
}

/// Per-call settings from the config.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Request size limits.
    pub limits: Limits,
    /// Output tokens reserved when a call sets no maximum.
    pub default_max_output_tokens: i64,
    /// Put prompts and completions in spans and logs.
    pub log_content: bool,
}

impl GatewayApi {
    /// The service over `path`, calling Bedrock with `bedrock`; call tasks
    /// are tracked by `tasks` (shutdown waits for their settlements).
    pub fn new(
        path: CallPath,
        bedrock: aws_sdk_bedrockruntime::Client,
        tasks: TaskTracker,
        settings: CallSettings,
    ) -> Self {
        Self {
            path,
            bedrock,
            tasks,
            settings: Arc::new(settings),
        }
    }

    /// Authenticates the caller of `request`.
    pub(crate) async fn tenant<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Arc<TenantRecord>, Status> {
        self.path
            .authenticate(request.metadata())
            .await
            .map_err(|e| e.to_status(ErrorContext::default()))
    }

    /// Reserves the call of `tenant` to `alias`, recording the outcome on the
    /// current span.
    pub(crate) async fn admit(
        &self,
        tenant: Arc<TenantRecord>,
        application_id: &str,
        alias: &str,
        estimated_input_tokens: i64,
        max_output_tokens: i64,
    ) -> Result<Admitted, Status> {
        let context = ErrorContext {
            tenant_id: Some(&tenant.tenant_id),
            level: Level::Unspecified,
        };
        let application =
            CallPath::application(&tenant, application_id).map_err(|e| e.to_status(context))?;
        let route = self
            .path
            .route(&tenant, alias)
            .map_err(|e| e.to_status(context))?;
        let span = tracing::Span::current();
        span.record("gen_ai.request.model", route.model_id.as_str());
        let tenant_id = tenant.tenant_id.clone();
        match self
            .path
            .admit(
                tenant,
                application,
                route,
                estimated_input_tokens,
                max_output_tokens,
            )
            .await
        {
            Ok(admitted) => {
                span.record(
                    "tenantmeter.level",
                    admitted.reservation.level.as_str_name(),
                );
                span.record(
                    "tenantmeter.inference_profile_arn",
                    admitted.route.profile_arn.as_str(),
                );
                span.record("gen_ai.request.model", admitted.route.model_id.as_str());
                Ok(admitted)
            }
            Err((error, level)) => {
                if let CallError::Throttled { reason, .. } = &error {
                    span.record("tenantmeter.deny_reason", reason.as_str_name());
                }
                Err(error.to_status(ErrorContext {
                    tenant_id: Some(&tenant_id),
                    level,
                }))
            }
        }
    }
}

/// Messages buffered between Bedrock and a slow client; past this the
/// gateway reads Bedrock no faster than the client reads the gateway.
const STREAM_BUFFER: usize = 64;

impl GatewayApi {
    /// A Bedrock call that failed before producing anything: its reservation
    /// is released (Bedrock bills nothing for a failed call) and Bedrock's
    /// error answered.
    pub(crate) async fn upstream_failed<E, R>(
        &self,
        admitted: &Admitted,
        error: &SdkError<E, R>,
    ) -> Status
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        self.path.release(admitted).await;
        let error = CallError::Upstream(UpstreamError::from_sdk(error));
        tracing::Span::current().record("error.type", error.reason().as_str_name());
        error.to_status(admitted.context())
    }

    /// Runs a unary call's Bedrock request and settlement (`work`) in a
    /// tracked task of its own: if the client goes away, the call still
    /// finishes and its usage is still settled.
    pub(crate) async fn run_unary<T, Work>(&self, work: Work) -> Result<T, Status>
    where
        Work: Future<Output = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        self.tasks
            .spawn(work.instrument(tracing::Span::current()))
            .await
            .map_err(|e| Status::internal(format!("the call's task failed: {e}")))?
    }

    /// Starts a streamed call in a tracked task of its own: `send` opens
    /// Bedrock's stream (a failure releases the reservation and is the call's
    /// answer), then `pump` forwards it to the client and settles. Returns
    /// the client's stream once Bedrock answered.
    pub(crate) async fn run_stream<T, O, E, R, Send, Pump, Pumped>(
        &self,
        admitted: Admitted,
        span: tracing::Span,
        send: Send,
        pump: Pump,
    ) -> Result<GatewayStream<T>, Status>
    where
        T: std::marker::Send + 'static,
        O: std::marker::Send + 'static,
        E: ProvideErrorMetadata + std::error::Error + std::marker::Send + Sync + 'static,
        R: std::fmt::Debug + std::marker::Send + Sync + 'static,
        Send: Future<Output = Result<O, SdkError<E, R>>> + std::marker::Send + 'static,
        Pump: FnOnce(GatewayApi, Admitted, O, mpsc::Sender<Result<T, Status>>) -> Pumped
            + std::marker::Send
            + 'static,
        Pumped: Future<Output = ()> + std::marker::Send,
    {
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let (started, start) = oneshot::channel();
        let this = self.clone();
        self.tasks.spawn(
            async move {
                match send.await {
                    Ok(output) => {
                        let _ = started.send(Ok(()));
                        pump(this, admitted, output, sender).await;
                    }
                    Err(error) => {
                        let status = this.upstream_failed(&admitted, &error).await;
                        let _ = started.send(Err(status));
                    }
                }
            }
            .instrument(span),
        );
        match start.await {
            Ok(Ok(())) => Ok(Box::pin(ReceiverStream::new(receiver))),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::internal(
                "the call's task ended before Bedrock answered",
            )),
        }
    }
}

/// The span of one tenant call, named and attributed per the OpenTelemetry
/// GenAI conventions (`{operation} {model}`). Prompts and completions are
/// never recorded on it.
pub(crate) fn call_span(operation: &'static str, tenant_id: &str, alias: &str) -> tracing::Span {
    tracing::info_span!(
        "gen_ai",
        otel.name = format!("{operation} {alias}"),
        otel.kind = "client",
        gen_ai.system = "aws.bedrock",
        gen_ai.provider.name = "aws.bedrock",
        gen_ai.operation.name = operation,
        gen_ai.request.model = Empty,
        gen_ai.request.max_tokens = Empty,
        gen_ai.response.finish_reasons = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.usage.cache_read_input_tokens = Empty,
        gen_ai.usage.cache_write_input_tokens = Empty,
        tenantmeter.tenant_id = tenant_id,
        tenantmeter.model_alias = alias,
        tenantmeter.level = Empty,
        tenantmeter.deny_reason = Empty,
        tenantmeter.inference_profile_arn = Empty,
        tenantmeter.usage_event_id = Empty,
        tenantmeter.settlement = Empty,
        tenantmeter.usage_estimated = Empty,
        error.type = Empty,
    )
}

/// With `gateway.log_content` on, the prompt's and the reply's text as
/// events of the call's span (the GenAI conventions' `gen_ai.content.*`
/// events). Off by default: they are the tenants' data.
pub(crate) fn record_content(enabled: bool, kind: Content, text: &str) {
    if !enabled {
        return;
    }
    match kind {
        Content::Prompt => tracing::info!(gen_ai.prompt = text, "gen_ai.content.prompt"),
        Content::Completion => {
            tracing::info!(gen_ai.completion = text, "gen_ai.content.completion");
        }
    }
}

/// Which side of a call [`record_content`] records.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Content {
    /// What the tenant sent.
    Prompt,
    /// What the model answered.
    Completion,
}

/// The text parts of a conversation, for [`record_content`].
pub(crate) fn conversation_text(
    system: &[tenantmeter_proto::v1::SystemContentBlock],
    messages: &[tenantmeter_proto::v1::ConverseMessage],
) -> String {
    use tenantmeter_proto::v1::content_block::Block;
    use tenantmeter_proto::v1::system_content_block::Block as SystemBlock;
    let system = system.iter().filter_map(|b| match &b.block {
        Some(SystemBlock::Text(text)) => Some(text.as_str()),
        Some(SystemBlock::CachePoint(_)) | None => None,
    });
    let messages = messages
        .iter()
        .flat_map(|m| m.content.iter())
        .filter_map(|b| match &b.block {
            Some(Block::Text(text)) => Some(text.as_str()),
            Some(
                Block::Image(_)
                | Block::Document(_)
                | Block::ToolUse(_)
                | Block::ToolResult(_)
                | Block::ReasoningContent(_)
                | Block::CachePoint(_),
            )
            | None => None,
        });
    system.chain(messages).collect::<Vec<_>>().join("\n")
}

/// Records a call's usage and settlement on its span.
pub(crate) fn record_usage(
    span: &tracing::Span,
    usage: &tenantmeter_proto::v1::TokenUsage,
    metering: &tenantmeter_proto::v1::CallMetering,
) {
    span.record("gen_ai.usage.input_tokens", usage.input_tokens);
    span.record("gen_ai.usage.output_tokens", usage.output_tokens);
    span.record(
        "gen_ai.usage.cache_read_input_tokens",
        usage.cache_read_input_tokens,
    );
    span.record(
        "gen_ai.usage.cache_write_input_tokens",
        usage.cache_write_input_tokens,
    );
    span.record(
        "tenantmeter.usage_event_id",
        metering.usage_event_id.as_str(),
    );
    span.record("tenantmeter.usage_estimated", metering.usage_estimated);
    span.record(
        "tenantmeter.settlement",
        tenantmeter_proto::v1::SettlementStatus::try_from(metering.settlement)
            .unwrap_or_default()
            .as_str_name(),
    );
}

#[tonic::async_trait]
impl GatewayService for GatewayApi {
    async fn converse(
        &self,
        request: Request<ConverseRequest>,
    ) -> Result<Response<ConverseResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let span = call_span("chat", &tenant.tenant_id, &request.get_ref().model_alias);
        self.converse_call(tenant, request.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }

    type ConverseStreamStream = GatewayStream<ConverseStreamResponse>;

    async fn converse_stream(
        &self,
        request: Request<ConverseStreamRequest>,
    ) -> Result<Response<Self::ConverseStreamStream>, Status> {
        let tenant = self.tenant(&request).await?;
        let span = call_span("chat", &tenant.tenant_id, &request.get_ref().model_alias);
        self.converse_stream_call(tenant, request.into_inner(), span.clone())
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn invoke_model(
        &self,
        request: Request<InvokeModelRequest>,
    ) -> Result<Response<InvokeModelResponse>, Status> {
        let tenant = self.tenant(&request).await?;
        let span = call_span(
            "invoke_model",
            &tenant.tenant_id,
            &request.get_ref().model_alias,
        );
        self.invoke_call(tenant, request.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }

    type InvokeModelWithResponseStreamStream = GatewayStream<InvokeModelWithResponseStreamResponse>;

    async fn invoke_model_with_response_stream(
        &self,
        request: Request<InvokeModelWithResponseStreamRequest>,
    ) -> Result<Response<Self::InvokeModelWithResponseStreamStream>, Status> {
        let tenant = self.tenant(&request).await?;
        let span = call_span(
            "invoke_model",
            &tenant.tenant_id,
            &request.get_ref().model_alias,
        );
        self.invoke_stream_call(tenant, request.into_inner(), span.clone())
            .instrument(span)
            .await
            .map(Response::new)
    }
}
