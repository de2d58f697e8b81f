//! What a webhook receives: the body, the headers and the signature, and
//! [`verify_signature`], which a receiver (or a test) runs to check them.
//!
//! The body is the proto3 JSON encoding of `WebhookNotification`
//! (lowerCamelCase names, 64-bit integers as strings, enums by name, fields at
//! their default omitted), produced through prost-reflect from the descriptor
//! set the proto crate embeds, so it follows the contract without a
//! hand-written serde mirror of every message.
//!
//! The signature is `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` keyed
//! with the sink's secret. The timestamp is inside the signed bytes so a
//! captured request cannot be replayed later with a fresh timestamp; a
//! receiver should also refuse timestamps too far from its own clock.

use std::sync::LazyLock;
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use sha2::Sha256;
use tenantmeter_proto::v1 as pb;

use super::SinkError;

/// `Content-Type` of every webhook body.
pub const CONTENT_TYPE: &str = "application/json";
/// Header naming the notification: `<alert_id>.<sink_id>`, the same on every
/// attempt, so a receiver can drop duplicates.
pub const NOTIFICATION_ID_HEADER: &str = "X-Tenantmeter-Notification-Id";
/// Header with the Unix seconds of the attempt (signed with the body).
pub const TIMESTAMP_HEADER: &str = "X-Tenantmeter-Timestamp";
/// Header with `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "X-Tenantmeter-Signature";
/// Prefix of the signature header's value.
pub const SIGNATURE_PREFIX: &str = "sha256=";
/// `User-Agent` of every webhook request.
pub const USER_AGENT: &str = concat!("tenantmeter-alerting/", env!("CARGO_PKG_VERSION"));

/// Longest error text kept per delivery and per sink: enough for a status
/// line or a transport error chain, not a receiver's whole error page.
const MAX_ERROR_LEN: usize = 512;

const WEBHOOK_NOTIFICATION: &str = "tenantmeter.v1.WebhookNotification";

type HmacSha256 = Hmac<Sha256>;

/// The `WebhookNotification` descriptor, decoded once per process. An error
/// here is a build bug (the proto crate's descriptor set lacks the message),
/// reported on the first delivery rather than a panic.
static DESCRIPTOR: LazyLock<Result<MessageDescriptor, String>> = LazyLock::new(|| {
    let pool = DescriptorPool::decode(tenantmeter_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("decoding the descriptor set: {e}"))?;
    pool.get_message_by_name(WEBHOOK_NOTIFICATION)
        .ok_or_else(|| format!("{WEBHOOK_NOTIFICATION} is not in the descriptor set"))
});

/// The notification id of `alert_id` to `sink_id`: `<alert_id>.<sink_id>`.
#[must_use]
pub fn notification_id(alert_id: &str, sink_id: &str) -> String {
    format!("{alert_id}.{sink_id}")
}

/// The JSON body of `notification`: its proto3 JSON encoding.
///
/// # Errors
/// [`SinkError::Encoding`] when the descriptor set lacks the message or the
/// message does not round-trip (both build bugs).
pub fn body(notification: &pb::WebhookNotification) -> Result<Vec<u8>, SinkError> {
    let descriptor = DESCRIPTOR
        .as_ref()
        .map_err(|e| SinkError::Encoding(e.clone()))?;
    let dynamic =
        DynamicMessage::decode(descriptor.clone(), notification.encode_to_vec().as_slice())
            .map_err(|e| SinkError::Encoding(format!("decoding as {WEBHOOK_NOTIFICATION}: {e}")))?;
    serde_json::to_vec(&dynamic).map_err(|e| SinkError::Encoding(format!("to JSON: {e}")))
}

/// The signature header's value for `body` sent at `timestamp` (the
/// `X-Tenantmeter-Timestamp` value, Unix seconds as text).
#[must_use]
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    mac(secret, timestamp, body).map_or_else(String::new, |mac| {
        format!(
            "{SIGNATURE_PREFIX}{}",
            hex::encode(mac.finalize().into_bytes())
        )
    })
}

/// Whether `header` (the `X-Tenantmeter-Signature` value) is the signature of
/// `body` sent at `timestamp` (the `X-Tenantmeter-Timestamp` value, as
/// received) under `secret`. Compares in constant time. It does not judge the
/// timestamp's age: a receiver should also refuse one too far from its clock
/// (say five minutes) to bound replays.
#[must_use]
pub fn verify_signature(secret: &[u8], timestamp: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_mac) = header.trim().strip_prefix(SIGNATURE_PREFIX) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_mac) else {
        return false;
    };
    mac(secret, timestamp, body).is_some_and(|mac| mac.verify_slice(&expected).is_ok())
}

/// The MAC of `"<timestamp>.<body>"`. HMAC takes a key of any length (longer
/// ones are hashed first), so `new_from_slice` never fails; the `Option`
/// only spares an `expect`.
fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

/// What one POST came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PostOutcome {
    /// HTTP status the receiver answered; `None` when it could not be reached.
    pub(crate) status: Option<u16>,
    /// Empty when delivered (2xx); else `HTTP 500 Internal Server Error` or
    /// the transport error.
    pub(crate) error: String,
    /// Time until the receiver's answer (or the failure).
    pub(crate) latency: Duration,
}

impl PostOutcome {
    pub(crate) fn delivered(&self) -> bool {
        self.error.is_empty()
    }
}

/// One signed POST of `body` to `url`, bounded by `timeout`. Never an error:
/// every failure becomes the outcome's `error`, which is what the delivery
/// record and TestSink report.
pub(crate) async fn post(
    client: &reqwest::Client,
    url: &str,
    notification_id: &str,
    unix_secs: i64,
    secret: &[u8],
    body: Vec<u8>,
    timeout: Duration,
) -> PostOutcome {
    let timestamp = unix_secs.to_string();
    let signature = signature(secret, &timestamp, &body);
    // A duration, not a timestamp: tokio's monotonic clock is the right one
    // (the injected Clock may be a test's stopped ManualClock).
    let started = tokio::time::Instant::now();
    let sent = client
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
        .header(NOTIFICATION_ID_HEADER, notification_id)
        .header(TIMESTAMP_HEADER, &timestamp)
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await;
    let latency = started.elapsed();
    match sent {
        Ok(response) => {
            let status = response.status();
            let error = if status.is_success() {
                String::new()
            } else {
                truncate(format!("HTTP {status}"))
            };
            PostOutcome {
                status: Some(status.as_u16()),
                error,
                latency,
            }
        }
        Err(error) => PostOutcome {
            status: None,
            error: truncate(describe(error, timeout)),
            latency,
        },
    }
}

/// A transport error with its causes ("error sending request: connection
/// refused"): reqwest's top-level message alone rarely says what happened.
fn describe(error: reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!(
            "no answer within {}",
            humantime_serde::re::humantime::format_duration(timeout)
        );
    }
    // The URL is the sink's, already known to whoever reads the error.
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `text` cut to [`MAX_ERROR_LEN`] bytes on a character boundary.
pub(crate) fn truncate(mut text: String) -> String {
    if text.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let sig = signature(secret, "1767225600", b"{}");
        assert!(sig.starts_with("sha256="));
        assert_eq!(sig.len(), "sha256=".len() + 64);
        assert!(verify_signature(secret, "1767225600", b"{}", &sig));
        assert!(!verify_signature(secret, "1767225601", b"{}", &sig));
        assert!(!verify_signature(
            b"another secret, 32 bytes long!!!",
            "1767225600",
            b"{}",
            &sig
        ));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let long = "é".repeat(400);
        let cut = truncate(long);
        assert!(cut.len() <= MAX_ERROR_LEN);
        assert_eq!(cut.chars().count(), MAX_ERROR_LEN / 2);
    }
}
