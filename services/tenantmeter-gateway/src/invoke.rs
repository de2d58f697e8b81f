//! InvokeModel and InvokeModelWithResponseStream: model-native bodies,
//! passed through unchanged; usage from Bedrock's headers (unary) or the
//! stream's final `amazon-bedrock-invocationMetrics` (streamed).

use std::sync::Arc;

use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::ResponseStream;
use tenantmeter_proto::v1::invoke_model_with_response_stream_response::Event;
use tenantmeter_proto::v1::{
    InvokeModelRequest, InvokeModelResponse, InvokeModelStreamMetadata,
    InvokeModelWithResponseStreamRequest, InvokeModelWithResponseStreamResponse, Level, TokenUsage,
};
use tokio::sync::mpsc;
use tonic::Status;

use crate::api::{Content, GatewayApi, GatewayStream, record_content, record_usage};
use crate::call::Admitted;
use crate::converse::{estimated_tokens, failure_status};
use crate::convert;
use crate::error::{CallError, ErrorContext, Violation};
use crate::registry::model::TenantRecord;
use crate::upstream::{CaptureInvokeHeaders, UpstreamError};

const JSON: &str = "application/json";

fn or_json(value: &str) -> &str {
    if value.is_empty() { JSON } else { value }
}

impl GatewayApi {
    async fn admit_invoke(
        &self,
        tenant: Arc<TenantRecord>,
        alias: &str,
        application_id: &str,
        body: &[u8],
    ) -> Result<Admitted, Status> {
        let context = ErrorContext {
            tenant_id: Some(&tenant.tenant_id),
            level: Level::Unspecified,
        };
        let limit = self.settings.limits.max_request_bytes;
        if u64::try_from(body.len()).unwrap_or(u64::MAX) > limit {
            return Err(CallError::PayloadTooLarge(Violation::too_large(
                "body",
                format!("{} bytes; at most {limit}", body.len()),
            ))
            .to_status(context));
        }
        let max_output = convert::invoke_max_output_tokens(body)
            .map_err(|v| CallError::from(vec![v]).to_status(context))?
            .unwrap_or(self.settings.default_max_output_tokens);
        tracing::Span::current().record("gen_ai.request.max_tokens", max_output);
        record_content(
            self.settings.log_content,
            Content::Prompt,
            &String::from_utf8_lossy(body),
        );
        self.admit(
            tenant,
            application_id,
            alias,
            convert::invoke_estimate_input_tokens(body),
            max_output,
        )
        .await
    }

    /// InvokeModel.
    pub(crate) async fn invoke_call(
        &self,
        tenant: Arc<TenantRecord>,
        request: InvokeModelRequest,
    ) -> Result<InvokeModelResponse, Status> {
        let admitted = self
            .admit_invoke(
                tenant,
                &request.model_alias,
                &request.application_id,
                &request.body,
            )
            .await?;
        let capture = CaptureInvokeHeaders::default();
        let call = self
            .bedrock
            .invoke_model()
            .model_id(&admitted.route.profile_arn)
            .body(Blob::new(request.body))
            .content_type(or_json(&request.content_type))
            .accept(or_json(&request.accept))
            .customize()
            .interceptor(capture.clone());
        let this = self.clone();
        self.run_unary(async move {
            let output = match call.send().await {
                Ok(output) => output,
                Err(error) => return Err(this.upstream_failed(&admitted, &error).await),
            };
            let headers = capture.take().unwrap_or_default();
            let (usage, estimated) = if headers.has_usage {
                (headers.usage, false)
            } else {
                // Bedrock sent no counts: the reservation's input estimate,
                // and the body's length for the output.
                (
                    TokenUsage {
                        input_tokens: admitted.estimated_input_tokens,
                        output_tokens: estimated_tokens(output.body().as_ref().len()),
                        ..TokenUsage::default()
                    },
                    true,
                )
            };
            let metering = this
                .path
                .settle(&admitted, usage, estimated, headers.latency_ms)
                .await;
            record_usage(&tracing::Span::current(), &usage, &metering);
            record_content(
                this.settings.log_content,
                Content::Completion,
                &String::from_utf8_lossy(output.body().as_ref()),
            );
            Ok(InvokeModelResponse {
                content_type: output.content_type().to_owned(),
                body: output.body.into_inner(),
                usage: Some(usage),
                latency_ms: headers.latency_ms,
                metering: Some(metering),
            })
        })
        .await
    }

    /// InvokeModelWithResponseStream.
    pub(crate) async fn invoke_stream_call(
        &self,
        tenant: Arc<TenantRecord>,
        request: InvokeModelWithResponseStreamRequest,
        span: tracing::Span,
    ) -> Result<GatewayStream<InvokeModelWithResponseStreamResponse>, Status> {
        let admitted = self
            .admit_invoke(
                tenant,
                &request.model_alias,
                &request.application_id,
                &request.body,
            )
            .await?;
        let call = self
            .bedrock
            .invoke_model_with_response_stream()
            .model_id(&admitted.route.profile_arn)
            .body(Blob::new(request.body))
            .content_type(or_json(&request.content_type))
            .accept(or_json(&request.accept));
        self.run_stream(
            admitted,
            span,
            call.send(),
            |this, admitted, output, sender| async move {
                this.pump_invoke(admitted, output.body, sender).await;
            },
        )
        .await
    }

    async fn pump_invoke(
        &self,
        admitted: Admitted,
        mut stream: aws_sdk_bedrockruntime::primitives::event_stream::EventReceiver<
            ResponseStream,
            aws_sdk_bedrockruntime::types::error::ResponseStreamError,
        >,
        sender: mpsc::Sender<Result<InvokeModelWithResponseStreamResponse, Status>>,
    ) {
        let mut metrics = None;
        let mut chunk_bytes = 0_usize;
        let mut failure = None;
        let mut client_gone = false;
        loop {
            let event = tokio::select! {
                () = sender.closed() => { client_gone = true; break; }
                event = stream.recv() => event,
            };
            match event {
                Ok(Some(ResponseStream::Chunk(part))) => {
                    let Some(bytes) = part.bytes else { continue };
                    let bytes = bytes.into_inner();
                    if let Some(found) = convert::invoke_stream_metrics(&bytes) {
                        metrics = Some(found);
                    }
                    chunk_bytes += bytes.len();
                    let message = InvokeModelWithResponseStreamResponse {
                        event: Some(Event::Chunk(bytes)),
                    };
                    if sender.send(Ok(message)).await.is_err() {
                        client_gone = true;
                        break;
                    }
                }
                // Event kinds a newer Bedrock adds carry no payload we forward.
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(error) => {
                    failure = Some(CallError::Upstream(UpstreamError::from_sdk(&error)));
                    break;
                }
            }
        }
        let elapsed_ms = i64::try_from(admitted.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (usage, estimated, latency_ms, first_byte_latency_ms) = match &metrics {
            Some(m) => (m.usage, false, m.latency_ms, m.first_byte_latency_ms),
            None => (
                TokenUsage {
                    input_tokens: admitted.estimated_input_tokens,
                    // The chunks are JSON envelopes around the text: an
                    // over-estimate, on the side of not under-charging.
                    output_tokens: estimated_tokens(chunk_bytes),
                    ..TokenUsage::default()
                },
                true,
                elapsed_ms,
                0,
            ),
        };
        let metering = self
            .path
            .settle(&admitted, usage, estimated, latency_ms)
            .await;
        record_usage(&tracing::Span::current(), &usage, &metering);
        if client_gone {
            tracing::info!(usage_event_id = %admitted.event_id, estimated, "client left a stream; consumed usage settled");
            return;
        }
        if let Some(error) = failure {
            let _ = sender.send(Err(failure_status(&error, &admitted))).await;
            return;
        }
        let metadata = InvokeModelWithResponseStreamResponse {
            event: Some(Event::Metadata(InvokeModelStreamMetadata {
                usage: Some(usage),
                latency_ms,
                first_byte_latency_ms,
            })),
        };
        if sender.send(Ok(metadata)).await.is_ok() {
            let _ = sender
                .send(Ok(InvokeModelWithResponseStreamResponse {
                    event: Some(Event::Metering(metering)),
                }))
                .await;
        }
    }
}
