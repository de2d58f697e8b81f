//! Converse and ConverseStream through the tenant's inference profile.

use std::sync::Arc;

use aws_sdk_bedrockruntime::types::ConverseStreamOutput as SdkEvent;
use tenantmeter_proto::v1::converse_stream_response::Event;
use tenantmeter_proto::v1::{
    CallMetering, ConverseRequest, ConverseResponse, ConverseStreamRequest, ConverseStreamResponse,
    TokenUsage,
};
use tokio::sync::mpsc;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::api::{
    Content, GatewayApi, GatewayStream, conversation_text, record_content, record_usage,
};
use crate::call::Admitted;
use crate::convert::{self, ConverseParts, SdkConverseInput};
use crate::error::{CallError, ErrorContext};
use crate::registry::model::TenantRecord;
use crate::upstream::UpstreamError;

/// Trailer naming the usage event a failed stream settled.
pub(crate) const USAGE_EVENT_TRAILER: &str = "tenantmeter-usage-event-id";

/// Tokens of `bytes` of generated text, by the emulator's and the
/// reservation's rule (`ceil(bytes / 4)`): the estimate of a stream cut
/// before Bedrock reported its usage.
pub(crate) fn estimated_tokens(bytes: usize) -> i64 {
    i64::try_from(bytes.div_ceil(4)).unwrap_or(i64::MAX)
}

/// A failure of the call, with its usage event named in the trailers.
pub(crate) fn failure_status(error: &CallError, admitted: &Admitted) -> Status {
    let mut status = error.to_status(admitted.context());
    if let Ok(value) = MetadataValue::try_from(admitted.event_id.as_str()) {
        status.metadata_mut().insert(USAGE_EVENT_TRAILER, value);
    }
    status
}

impl GatewayApi {
    /// The SDK's request. Validation already refused what the SDK cannot
    /// express, so a failure here is the gateway's bug: the reservation is
    /// released and the call answered INTERNAL naming the field.
    async fn sdk_input(
        &self,
        parts: &ConverseParts<'_>,
        admitted: &Admitted,
    ) -> Result<SdkConverseInput, Status> {
        match convert::sdk_converse_input(
            parts,
            &admitted.tenant.tenant_id,
            &admitted.application_id,
        ) {
            Ok(input) => Ok(input),
            Err(e) => {
                tracing::error!(error = %e, "a validated request could not be converted");
                self.path.release(admitted).await;
                Err(Status::internal(format!("cannot convert the request: {e}")))
            }
        }
    }

    /// Validates, reserves and admits a Converse-shaped call.
    async fn admit_converse(
        &self,
        tenant: Arc<TenantRecord>,
        parts: &ConverseParts<'_>,
    ) -> Result<Admitted, Status> {
        let context = ErrorContext {
            tenant_id: Some(&tenant.tenant_id),
            level: tenantmeter_proto::v1::Level::Unspecified,
        };
        convert::validate(parts, &self.settings.limits)
            .map_err(|e| CallError::from(e).to_status(context))?;
        let max_output = parts
            .inference_config
            .and_then(|c| c.max_tokens)
            .map_or(self.settings.default_max_output_tokens, i64::from);
        tracing::Span::current().record("gen_ai.request.max_tokens", max_output);
        record_content(
            self.settings.log_content,
            Content::Prompt,
            &conversation_text(parts.system, parts.messages),
        );
        self.admit(
            tenant,
            parts.application_id,
            parts.model_alias,
            convert::estimate_input_tokens(parts),
            max_output,
        )
        .await
    }

    /// Converse: one Bedrock call, settled before the answer is returned.
    pub(crate) async fn converse_call(
        &self,
        tenant: Arc<TenantRecord>,
        request: ConverseRequest,
    ) -> Result<ConverseResponse, Status> {
        let parts = ConverseParts::from(&request);
        let admitted = self.admit_converse(tenant, &parts).await?;
        let input = self.sdk_input(&parts, &admitted).await?;
        let call = input.apply_to_converse(
            self.bedrock
                .converse()
                .model_id(&admitted.route.profile_arn),
        );
        let this = self.clone();
        self.run_unary(async move {
            let output = match call.send().await {
                Ok(output) => output,
                Err(error) => return Err(this.upstream_failed(&admitted, &error).await),
            };
            let usage = output
                .usage()
                .map(convert::usage_to_proto)
                .unwrap_or_default();
            let latency_ms = output.metrics().map_or(0, |m| m.latency_ms());
            let metering = this.path.settle(&admitted, usage, false, latency_ms).await;
            let span = tracing::Span::current();
            record_usage(&span, &usage, &metering);
            let mut response = convert::converse_response(&output);
            if let Some(message) = &response.output_message {
                record_content(
                    this.settings.log_content,
                    Content::Completion,
                    &conversation_text(&[], std::slice::from_ref(message)),
                );
            }
            span.record(
                "gen_ai.response.finish_reasons",
                response.stop_reason().as_str_name(),
            );
            response.metering = Some(metering);
            Ok(response)
        })
        .await
    }

    /// ConverseStream: Bedrock's events as they come, then the metering.
    pub(crate) async fn converse_stream_call(
        &self,
        tenant: Arc<TenantRecord>,
        request: ConverseStreamRequest,
        span: tracing::Span,
    ) -> Result<GatewayStream<ConverseStreamResponse>, Status> {
        let parts = ConverseParts::from(&request);
        let admitted = self.admit_converse(tenant, &parts).await?;
        let input = self.sdk_input(&parts, &admitted).await?;
        let call = input.apply_to_converse_stream(
            self.bedrock
                .converse_stream()
                .model_id(&admitted.route.profile_arn),
        );
        self.run_stream(
            admitted,
            span,
            call.send(),
            |this, admitted, output, sender| async move {
                this.pump_converse(admitted, output.stream, sender).await;
            },
        )
        .await
    }

    /// Forwards a ConverseStream's events to the client until it ends, fails
    /// or the client goes away; then settles what was consumed.
    async fn pump_converse(
        &self,
        admitted: Admitted,
        mut stream: aws_sdk_bedrockruntime::primitives::event_stream::EventReceiver<
            SdkEvent,
            aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError,
        >,
        sender: mpsc::Sender<Result<ConverseStreamResponse, Status>>,
    ) {
        let mut reported: Option<TokenUsage> = None;
        let mut latency_ms = 0;
        let mut output_bytes = 0_usize;
        let mut completion = String::new();
        let mut failure = None;
        let mut client_gone = false;
        loop {
            let event = tokio::select! {
                () = sender.closed() => { client_gone = true; break; }
                event = stream.recv() => event,
            };
            match event {
                Ok(Some(event)) => {
                    if let SdkEvent::Metadata(metadata) = &event {
                        reported = metadata.usage().map(convert::usage_to_proto);
                        latency_ms = metadata.metrics().map_or(0, |m| m.latency_ms());
                    }
                    output_bytes += convert::delta_bytes(&event);
                    if self.settings.log_content
                        && let SdkEvent::ContentBlockDelta(delta) = &event
                        && let Some(aws_sdk_bedrockruntime::types::ContentBlockDelta::Text(text)) =
                            delta.delta()
                    {
                        completion.push_str(text);
                    }
                    let Some(message) = convert::stream_event(&event) else {
                        continue;
                    };
                    if sender.send(Ok(message)).await.is_err() {
                        client_gone = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    failure = Some(CallError::Upstream(UpstreamError::from_sdk(&error)));
                    break;
                }
            }
        }
        let (usage, estimated) = match reported {
            Some(usage) => (usage, false),
            None => (
                TokenUsage {
                    input_tokens: admitted.estimated_input_tokens,
                    output_tokens: estimated_tokens(output_bytes),
                    ..TokenUsage::default()
                },
                true,
            ),
        };
        if latency_ms == 0 {
            latency_ms = i64::try_from(admitted.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        }
        let metering = self
            .path
            .settle(&admitted, usage, estimated, latency_ms)
            .await;
        let span = tracing::Span::current();
        record_usage(&span, &usage, &metering);
        if client_gone {
            tracing::info!(
                usage_event_id = %admitted.event_id,
                estimated,
                "client left a stream; consumed usage settled"
            );
            return;
        }
        let last = match failure {
            None => Ok(metering_message(metering)),
            Some(error) => {
                span.record("error.type", error.reason().as_str_name());
                Err(failure_status(&error, &admitted))
            }
        };
        // The client may leave just now; the usage is settled either way.
        let _ = sender.send(last).await;
    }
}

fn metering_message(metering: CallMetering) -> ConverseStreamResponse {
    ConverseStreamResponse {
        event: Some(Event::Metering(metering)),
    }
}
