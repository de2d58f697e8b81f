//! Bedrock's errors: the faults a prompt marker injects, and the one way every error is answered
//! (HTTP status, `x-amzn-errortype`, JSON `{"message": ..}`), which the SDKs map to typed errors.

use axum::Json;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The marker that cuts a stream after its first text delta with a `throttlingException` frame.
pub const MID_STREAM_MARKER: &str = "[[fault:mid-stream-throttling]]";

/// The marker that makes the emulator hold the request without answering, so a client's timeout
/// can be tested; see [`crate::EmulatorConfig::hang_limit`].
pub const HANG_MARKER: &str = "[[fault:hang]]";

/// A fault that a marker in the prompt injects, with Bedrock's status and error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `[[fault:throttling]]`: 429 `ThrottlingException`.
    Throttling,
    /// `[[fault:validation]]`: 400 `ValidationException`.
    Validation,
    /// `[[fault:access-denied]]`: 403 `AccessDeniedException`.
    AccessDenied,
    /// `[[fault:not-found]]`: 404 `ResourceNotFoundException`.
    NotFound,
    /// `[[fault:model-timeout]]`: 408 `ModelTimeoutException`.
    ModelTimeout,
    /// `[[fault:service-unavailable]]`: 503 `ServiceUnavailableException`.
    ServiceUnavailable,
    /// `[[fault:internal]]`: 500 `InternalServerException`.
    Internal,
}

impl Fault {
    /// Every fault, in the order of the docs' table.
    pub const ALL: [Fault; 7] = [
        Fault::Throttling,
        Fault::Validation,
        Fault::AccessDenied,
        Fault::NotFound,
        Fault::ModelTimeout,
        Fault::ServiceUnavailable,
        Fault::Internal,
    ];

    /// The marker that injects this fault, e.g. `[[fault:throttling]]`.
    #[must_use]
    pub fn marker(self) -> &'static str {
        match self {
            Fault::Throttling => "[[fault:throttling]]",
            Fault::Validation => "[[fault:validation]]",
            Fault::AccessDenied => "[[fault:access-denied]]",
            Fault::NotFound => "[[fault:not-found]]",
            Fault::ModelTimeout => "[[fault:model-timeout]]",
            Fault::ServiceUnavailable => "[[fault:service-unavailable]]",
            Fault::Internal => "[[fault:internal]]",
        }
    }

    /// Bedrock's HTTP status for this error.
    #[must_use]
    pub fn status(self) -> StatusCode {
        match self {
            Fault::Throttling => StatusCode::TOO_MANY_REQUESTS,
            Fault::Validation => StatusCode::BAD_REQUEST,
            Fault::AccessDenied => StatusCode::FORBIDDEN,
            Fault::NotFound => StatusCode::NOT_FOUND,
            Fault::ModelTimeout => StatusCode::REQUEST_TIMEOUT,
            Fault::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Fault::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Bedrock's error type, sent in `x-amzn-errortype`.
    #[must_use]
    pub fn error_type(self) -> &'static str {
        match self {
            Fault::Throttling => "ThrottlingException",
            Fault::Validation => "ValidationException",
            Fault::AccessDenied => "AccessDeniedException",
            Fault::NotFound => "ResourceNotFoundException",
            Fault::ModelTimeout => "ModelTimeoutException",
            Fault::ServiceUnavailable => "ServiceUnavailableException",
            Fault::Internal => "InternalServerException",
        }
    }

    /// The first fault whose marker occurs in `text`, in the order of [`Fault::ALL`].
    #[must_use]
    pub fn find_in(text: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| text.contains(f.marker()))
    }
}

/// An error answered in Bedrock's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceError {
    status: StatusCode,
    error_type: &'static str,
    message: String,
}

impl ServiceError {
    pub(crate) fn new(status: StatusCode, error_type: &'static str, message: String) -> Self {
        Self {
            status,
            error_type,
            message,
        }
    }

    pub(crate) fn from_fault(fault: Fault, message: impl Into<String>) -> Self {
        Self::new(fault.status(), fault.error_type(), message.into())
    }

    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::from_fault(Fault::Validation, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::from_fault(Fault::NotFound, message)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "ConflictException", message.into())
    }

    /// The error a marker asked for; `subject` says what it was injected into.
    pub(crate) fn injected(fault: Fault, subject: &str) -> Self {
        Self::from_fault(
            fault,
            format!(
                "{} injected by the emulator for {subject}",
                fault.error_type()
            ),
        )
    }

    pub(crate) fn error_type(&self) -> &'static str {
        self.error_type
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn into_response(self, request_id: &str) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-amzn-errortype"),
            HeaderValue::from_static(self.error_type),
        );
        insert_request_id(&mut headers, request_id);
        let body = json!({ "message": self.message });
        (self.status, headers, Json(body)).into_response()
    }
}

pub(crate) fn insert_request_id(headers: &mut HeaderMap, request_id: &str) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static("x-amzn-requestid"), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_marker_wins_in_table_order() {
        assert_eq!(Fault::find_in("hi"), None);
        assert_eq!(
            Fault::find_in("[[fault:internal]] [[fault:throttling]]"),
            Some(Fault::Throttling)
        );
    }

    #[test]
    fn behaviour_markers_do_not_read_as_error_markers() {
        assert_eq!(Fault::find_in(MID_STREAM_MARKER), None);
        assert_eq!(Fault::find_in(HANG_MARKER), None);
    }
}
