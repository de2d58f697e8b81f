//! The emulator on 127.0.0.1:0 and the real SDK clients pointed at it, as the gateway will use
//! them: fixed region, static credentials, the emulator as endpoint, no retries (so faults
//! surface at once).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)] // test support shared by several test files

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_bedrockruntime::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_bedrockruntime::config::{ConfigBag, Credentials, Intercept, RuntimeComponents};
use aws_sdk_bedrockruntime::types::{ContentBlock, ConversationRole, Message};
use tenantmeter_emulator::{Emulator, EmulatorConfig, Invocation};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

pub const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";
pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";

/// A served emulator; dropping it shuts the server down.
pub struct Running {
    pub addr: SocketAddr,
    pub emulator: Emulator,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Triggers shutdown and waits until the server has drained.
    pub async fn shut_down(mut self) -> std::io::Result<()> {
        drop(self.stop.take());
        self.served.take().unwrap().await.unwrap()
    }
}

pub async fn start(config: EmulatorConfig) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let emulator = Emulator::new(config);
    let served = tokio::spawn(emulator.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        emulator,
        stop: Some(stop),
        served: Some(served),
    }
}

async fn sdk_config(
    addr: SocketAddr,
    region: &str,
    operation_timeout: Option<Duration>,
) -> aws_config::SdkConfig {
    let mut timeouts = TimeoutConfig::builder();
    if let Some(timeout) = operation_timeout {
        timeouts = timeouts.operation_timeout(timeout);
    }
    aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .endpoint_url(format!("http://{addr}"))
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts.build())
        .load()
        .await
}

pub async fn runtime_client(addr: SocketAddr) -> aws_sdk_bedrockruntime::Client {
    runtime_client_in(addr, REGION).await
}

pub async fn runtime_client_in(addr: SocketAddr, region: &str) -> aws_sdk_bedrockruntime::Client {
    aws_sdk_bedrockruntime::Client::new(&sdk_config(addr, region, None).await)
}

/// A runtime client that gives up on any call after `timeout`.
pub async fn impatient_runtime_client(
    addr: SocketAddr,
    timeout: Duration,
) -> aws_sdk_bedrockruntime::Client {
    aws_sdk_bedrockruntime::Client::new(&sdk_config(addr, REGION, Some(timeout)).await)
}

pub async fn control_client(addr: SocketAddr) -> aws_sdk_bedrock::Client {
    control_client_in(addr, REGION).await
}

pub async fn control_client_in(addr: SocketAddr, region: &str) -> aws_sdk_bedrock::Client {
    aws_sdk_bedrock::Client::new(&sdk_config(addr, region, None).await)
}

pub fn foundation_model_arn(region: &str, model: &str) -> String {
    format!("arn:aws:bedrock:{region}::foundation-model/{model}")
}

pub fn system_profile_arn(region: &str, profile_id: &str) -> String {
    format!("arn:aws:bedrock:{region}:{ACCOUNT}:inference-profile/{profile_id}")
}

/// Creates an application profile copying `copy_from`; its ARN.
pub async fn create_profile(
    client: &aws_sdk_bedrock::Client,
    name: &str,
    copy_from: &str,
) -> String {
    client
        .create_inference_profile()
        .inference_profile_name(name)
        .model_source(
            aws_sdk_bedrock::types::InferenceProfileModelSource::CopyFrom(copy_from.to_owned()),
        )
        .send()
        .await
        .unwrap()
        .inference_profile_arn()
        .to_owned()
}

pub fn user(text: &str) -> Message {
    Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text(text.to_owned()))
        .build()
        .unwrap()
}

/// An Anthropic Messages body for InvokeModel.
pub fn anthropic_body(system: &str, text: &str, max_tokens: u32) -> String {
    serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": max_tokens,
        "system": system,
        "messages": [{ "role": "user", "content": [{ "type": "text", "text": text }] }],
    })
    .to_string()
}

/// Keeps the HTTP response headers of the calls it is attached to (the SDK's outputs do not
/// expose InvokeModel's token-count headers).
#[derive(Debug, Clone, Default)]
pub struct ResponseHeaders(Arc<Mutex<Vec<(String, String)>>>);

impl ResponseHeaders {
    pub fn get(&self, name: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.clone())
    }
}

impl Intercept for ResponseHeaders {
    fn name(&self) -> &'static str {
        "ResponseHeaders"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut seen = self.0.lock().unwrap();
        seen.clear();
        for (name, value) in context.response().headers().iter() {
            seen.push((name.to_owned(), value.to_owned()));
        }
        Ok(())
    }
}

/// One HTTP/1.1 request written by hand, for what the SDKs cannot send or show; the whole
/// response as text.
pub async fn raw_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// `GET /_emulator/invocations`, parsed.
pub async fn invocations_over_http(addr: SocketAddr) -> Vec<Invocation> {
    let raw = raw_request(addr, "GET", "/_emulator/invocations", "").await;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap()
}
