//! Amazon Bedrock as the gateway sees it: the SDK clients (pointed at the
//! emulator or at AWS), and what a Bedrock failure means for the tenant.

use std::sync::{Arc, Mutex, PoisonError};

use aws_config::BehaviorVersion;
use aws_sdk_bedrockruntime::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_bedrockruntime::config::{
    ConfigBag, Credentials, Intercept, Region, RuntimeComponents, timeout::TimeoutConfig,
};
use aws_sdk_bedrockruntime::error::{BoxError, ProvideErrorMetadata, SdkError};
use tenantmeter_proto::v1::TokenUsage;

use crate::config::{BedrockMode, BedrockSection};

/// Loads the AWS configuration the gateway's Bedrock clients share: the
/// emulator with static test credentials, or AWS with the standard
/// credential chain. Both are real SDK clients; only the endpoint differs.
pub async fn sdk_config(section: &BedrockSection, region: &str) -> aws_config::SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(section.connect_timeout)
        .operation_timeout(section.call_timeout)
        .build();
    // One attempt: the gateway is a transparent proxy. Its callers own the
    // retry policy (the error codes and RetryInfo tell them when), and
    // retrying here as well would multiply the load Bedrock is shedding.
    let retry = aws_config::retry::RetryConfig::standard().with_max_attempts(1);
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .timeout_config(timeouts)
        .retry_config(retry);
    match section.mode {
        BedrockMode::Emulator => {
            loader
                .endpoint_url(section.endpoint_url.clone())
                .credentials_provider(Credentials::new(
                    "tenantmeter-emulator",
                    "tenantmeter-emulator",
                    None,
                    None,
                    "tenantmeter-emulator",
                ))
                .load()
                .await
        }
        BedrockMode::Aws => loader.load().await,
    }
}

/// The Bedrock runtime client of the gateway's serving region.
pub async fn runtime_client(section: &BedrockSection) -> aws_sdk_bedrockruntime::Client {
    aws_sdk_bedrockruntime::Client::new(&sdk_config(section, &section.region).await)
}

/// What went wrong upstream, in the terms the gateway answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// ThrottlingException.
    Throttled,
    /// ServiceQuotaExceededException.
    QuotaExceeded,
    /// ValidationException.
    Validation,
    /// AccessDeniedException.
    AccessDenied,
    /// ResourceNotFoundException.
    NotFound,
    /// ModelTimeoutException, or the call passed its deadline.
    Timeout,
    /// ServiceUnavailableException, InternalServerException, or Bedrock could
    /// not be reached at all.
    Unavailable,
    /// ModelNotReadyException.
    ModelNotReady,
    /// ModelErrorException, ModelStreamErrorException, or an answer the SDK
    /// could not read.
    ModelError,
}

/// A failed Bedrock call: its kind and Bedrock's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct UpstreamError {
    /// What it means for the tenant.
    pub kind: UpstreamKind,
    /// Bedrock's error type (`ThrottlingException`), or what failed locally.
    pub code: String,
    /// Bedrock's message, kept for the tenant.
    pub message: String,
}

impl UpstreamError {
    /// Classifies an error by Bedrock's error type, as every operation of
    /// both SDKs reports it.
    pub fn from_code(code: &str, message: &str) -> Self {
        // Stream exceptions are union members named in lower camel case
        // (`throttlingException`); the same error either way.
        let mut normalized = code.to_owned();
        if let Some(first) = normalized.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        let kind = match normalized.as_str() {
            "ThrottlingException" => UpstreamKind::Throttled,
            "ServiceQuotaExceededException" => UpstreamKind::QuotaExceeded,
            "ValidationException" => UpstreamKind::Validation,
            "AccessDeniedException" => UpstreamKind::AccessDenied,
            "ResourceNotFoundException" => UpstreamKind::NotFound,
            "ModelTimeoutException" => UpstreamKind::Timeout,
            "ModelNotReadyException" => UpstreamKind::ModelNotReady,
            "ServiceUnavailableException" | "InternalServerException" => UpstreamKind::Unavailable,
            // ModelErrorException, ModelStreamErrorException, and any error type
            // a newer Bedrock adds: the model failed on this request.
            _ => UpstreamKind::ModelError,
        };
        Self {
            kind,
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }

    /// Classifies any SDK error: a modeled Bedrock error by its type; a
    /// timeout or a connection failure by what happened locally.
    pub fn from_sdk<E, R>(error: &SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        match error {
            SdkError::ServiceError(service) => {
                let inner = service.err();
                // Exceptions inside an event stream carry no error metadata;
                // their type is the variant, which Display names first.
                let shown = inner.to_string();
                let code = inner
                    .code()
                    .map(str::to_owned)
                    .or_else(|| {
                        shown
                            .split(':')
                            .next()
                            .filter(|name| name.ends_with("Exception"))
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| "UnknownError".to_owned());
                Self::from_code(&code, inner.message().unwrap_or("Bedrock gave no message"))
            }
            SdkError::TimeoutError(_) => Self {
                kind: UpstreamKind::Timeout,
                code: "Timeout".to_owned(),
                message: "Bedrock did not answer within the gateway's call timeout".to_owned(),
            },
            SdkError::DispatchFailure(failure) => Self {
                kind: if failure.is_timeout() {
                    UpstreamKind::Timeout
                } else {
                    UpstreamKind::Unavailable
                },
                code: "DispatchFailure".to_owned(),
                message: format!("cannot reach Bedrock: {}", source_chain(error)),
            },
            SdkError::ResponseError(_) => Self {
                kind: UpstreamKind::Unavailable,
                code: "ResponseError".to_owned(),
                message: format!("unreadable answer from Bedrock: {}", source_chain(error)),
            },
            // ConstructionFailure (a request the SDK could not build) and any
            // variant a newer SDK adds (SdkError is non_exhaustive): nothing
            // was sent, so it is our request.
            SdkError::ConstructionFailure(_) | _ => Self {
                kind: UpstreamKind::Validation,
                code: "ConstructionFailure".to_owned(),
                message: format!("cannot build the Bedrock request: {}", source_chain(error)),
            },
        }
    }
}

/// The error and its sources, joined: SDK errors put the useful part last.
pub fn source_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Token counts and latency Bedrock puts in InvokeModel's response headers
/// (the SDK's output type does not expose them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvokeHeaders {
    /// The four token counts.
    pub usage: TokenUsage,
    /// `X-Amzn-Bedrock-Invocation-Latency`, milliseconds.
    pub latency_ms: i64,
    /// Whether Bedrock sent the token counts at all.
    pub has_usage: bool,
}

/// An interceptor that copies InvokeModel's token-count headers out of the
/// raw response, for one call.
#[derive(Debug, Clone, Default)]
pub struct CaptureInvokeHeaders {
    captured: Arc<Mutex<Option<InvokeHeaders>>>,
}

impl CaptureInvokeHeaders {
    /// What the response carried; `None` before a response arrived.
    pub fn take(&self) -> Option<InvokeHeaders> {
        self.captured
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl Intercept for CaptureInvokeHeaders {
    fn name(&self) -> &'static str {
        "CaptureInvokeHeaders"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let headers = context.response().headers();
        let count = |name: &str| -> Option<i64> { headers.get(name)?.trim().parse().ok() };
        let input = count("x-amzn-bedrock-input-token-count");
        let output = count("x-amzn-bedrock-output-token-count");
        let captured = InvokeHeaders {
            has_usage: input.is_some() || output.is_some(),
            usage: TokenUsage {
                input_tokens: input.unwrap_or(0),
                output_tokens: output.unwrap_or(0),
                cache_read_input_tokens: count("x-amzn-bedrock-cache-read-input-token-count")
                    .unwrap_or(0),
                cache_write_input_tokens: count("x-amzn-bedrock-cache-write-input-token-count")
                    .unwrap_or(0),
            },
            latency_ms: count("x-amzn-bedrock-invocation-latency").unwrap_or(0),
        };
        *self.captured.lock().unwrap_or_else(PoisonError::into_inner) = Some(captured);
        Ok(())
    }
}
