//! Pure conversions between the gateway's contract (`tenantmeter_proto::v1`)
//! and aws-sdk-bedrockruntime's types, and the checks a request passes before
//! anything is reserved.
//!
//! - [`validate`] and [`estimate_input_tokens`] work on [`ConverseParts`], the
//!   fields ConverseRequest and ConverseStreamRequest share.
//! - `sdk_*` functions build the SDK's request types; [`sdk_converse_input`]
//!   builds them all and applies them to `client.converse()` or
//!   `client.converse_stream()`.
//! - `proto_*` functions, [`converse_response`] and [`stream_event`]
//!   turn the SDK's answers into the contract's. What the contract has no
//!   field for is dropped (each place says why), never turned into an error:
//!   the tenant was served and must get its reply.
//! - [`usage_to_proto`] fixes the token convention (see there).
//! - `invoke_*` read the model-native JSON bodies of InvokeModel.
//!
//! Nothing here does I/O or reads a clock.

mod document;
mod from_sdk;
mod invoke;
mod to_sdk;
mod validate;

pub use document::{document_to_struct, document_to_value, struct_to_document, value_to_document};
pub use from_sdk::{
    converse_response, delta_bytes, proto_content_block, proto_inference_config, proto_message,
    proto_stop_reason, proto_system, proto_tool_config, stream_event, usage_to_proto,
};
pub use invoke::{
    InvokeStreamMetrics, invoke_estimate_input_tokens, invoke_max_output_tokens,
    invoke_stream_metrics,
};
pub use to_sdk::{
    RESERVED_METADATA_KEYS, SdkConverseInput, request_metadata, sdk_content_block,
    sdk_converse_input, sdk_inference_config, sdk_messages, sdk_system, sdk_tool_config,
};
pub use validate::{
    BINARY_DOCUMENT_BYTES_PER_TOKEN, BINARY_DOCUMENT_MIN_TOKENS, BYTES_PER_TOKEN, ConverseParts,
    IMAGE_TOKENS, Limits, estimate_input_tokens, validate,
};

/// What kind of problem a [`FieldViolation`] is; it decides the error reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    /// The field's value is not acceptable (GATEWAY_ERROR_REASON_INVALID_REQUEST).
    Invalid,
    /// The request or this part of it is larger than allowed
    /// (GATEWAY_ERROR_REASON_PAYLOAD_TOO_LARGE).
    TooLarge,
}

/// One problem of a request, for google.rpc.BadRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request, e.g. `messages[0].content[1].image.format`.
    pub field: String,
    /// What is wrong, for the caller.
    pub description: String,
    /// Invalid or too large.
    pub kind: ViolationKind,
}

impl FieldViolation {
    /// An invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
            kind: ViolationKind::Invalid,
        }
    }

    /// A field (or the request) over a size limit.
    pub fn too_large(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
            kind: ViolationKind::TooLarge,
        }
    }
}

/// Whether any of `violations` is a size limit (report PAYLOAD_TOO_LARGE then).
#[must_use]
pub fn any_too_large(violations: &[FieldViolation]) -> bool {
    violations.iter().any(|v| v.kind == ViolationKind::TooLarge)
}

/// A request the SDK's types cannot express. [`validate`] rejects every such
/// request first, so after it this means a gateway bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConvertError {
    /// Path of the field in the request.
    pub field: String,
    /// What could not be converted.
    pub message: String,
}

impl ConvertError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn build(
        field: &str,
        error: &aws_smithy_types::error::operation::BuildError,
    ) -> Self {
        Self::new(field, error.to_string())
    }
}

impl From<ConvertError> for FieldViolation {
    fn from(error: ConvertError) -> Self {
        FieldViolation::invalid(error.field, error.message)
    }
}
