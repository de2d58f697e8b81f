//! The checks a Converse request passes before anything is reserved, and the
//! input-token estimate its reservation uses.

use std::collections::{BTreeSet, HashMap};

use prost::Message as _;
use prost_types::Struct;
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::content_block::Block;
use tenantmeter_proto::v1::reasoning_content_block::Content as Reasoning;
use tenantmeter_proto::v1::tool_result_content_block::Block as ResultBlock;

use super::FieldViolation;
use super::document::{non_finite_in_struct, non_finite_in_value, struct_json_len, value_json_len};
use super::to_sdk::RESERVED_METADATA_KEYS;

/// The fields ConverseRequest and ConverseStreamRequest share, borrowed, so
/// one validation and one conversion serve both.
#[derive(Debug, Clone, Copy)]
pub struct ConverseParts<'a> {
    /// The tenant's model alias.
    pub model_alias: &'a str,
    /// The conversation.
    pub messages: &'a [pb::ConverseMessage],
    /// System prompt.
    pub system: &'a [pb::SystemContentBlock],
    /// Inference parameters.
    pub inference_config: Option<&'a pb::InferenceConfiguration>,
    /// Tools.
    pub tool_config: Option<&'a pb::ToolConfiguration>,
    /// Model-specific request fields.
    pub additional_model_request_fields: Option<&'a Struct>,
    /// JSON pointers of model-specific response fields.
    pub additional_model_response_field_paths: &'a [String],
    /// The caller's requestMetadata entries.
    pub request_metadata: &'a HashMap<String, String>,
    /// The caller's application; empty for the tenant's primary one.
    pub application_id: &'a str,
}

impl<'a> From<&'a pb::ConverseRequest> for ConverseParts<'a> {
    fn from(request: &'a pb::ConverseRequest) -> Self {
        Self {
            model_alias: &request.model_alias,
            messages: &request.messages,
            system: &request.system,
            inference_config: request.inference_config.as_ref(),
            tool_config: request.tool_config.as_ref(),
            additional_model_request_fields: request.additional_model_request_fields.as_ref(),
            additional_model_response_field_paths: &request.additional_model_response_field_paths,
            request_metadata: &request.request_metadata,
            application_id: &request.application_id,
        }
    }
}

impl<'a> From<&'a pb::ConverseStreamRequest> for ConverseParts<'a> {
    fn from(request: &'a pb::ConverseStreamRequest) -> Self {
        Self {
            model_alias: &request.model_alias,
            messages: &request.messages,
            system: &request.system,
            inference_config: request.inference_config.as_ref(),
            tool_config: request.tool_config.as_ref(),
            additional_model_request_fields: request.additional_model_request_fields.as_ref(),
            additional_model_response_field_paths: &request.additional_model_response_field_paths,
            request_metadata: &request.request_metadata,
            application_id: &request.application_id,
        }
    }
}

/// Size limits of a request; exceeding one is a
/// [`super::ViolationKind::TooLarge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most messages in `messages`.
    pub max_messages: usize,
    /// Most bytes of the request's content (the protobuf encoding of its
    /// messages, system prompt, tools, model fields and metadata). The gRPC
    /// server's maximum message size should not be below it, or the transport
    /// refuses first with a less helpful error.
    pub max_request_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_messages: 1_000,
            // tonic's default maximum decoded message size.
            max_request_bytes: 4 << 20,
        }
    }
}

/// Stop sequences Bedrock accepts at most.
const MAX_STOP_SEQUENCES: usize = 4;
/// Response field paths Bedrock accepts at most.
const MAX_RESPONSE_FIELD_PATHS: usize = 10;
/// Bedrock's requestMetadata takes 16 pairs; the gateway sets two itself.
const MAX_CALLER_METADATA: usize = 16 - RESERVED_METADATA_KEYS.len();
/// Longest requestMetadata key or value, and response field path.
const MAX_METADATA_LEN: usize = 256;
/// Longest tool name Bedrock accepts.
const MAX_TOOL_NAME_LEN: usize = 64;
/// Most violations reported: enough to fix a request, bounded for a hostile one.
const MAX_VIOLATIONS: usize = 64;

#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn invalid(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.0.len() < MAX_VIOLATIONS {
            self.0.push(FieldViolation::invalid(field, description));
        }
    }

    fn too_large(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.0.len() < MAX_VIOLATIONS {
            self.0.push(FieldViolation::too_large(field, description));
        }
    }
}

/// Checks a Converse request; every problem found is reported, each naming
/// its field (at most 64). Whether the alias and the application exist is the
/// registry's to say, not this function's. Size limits come first and are
/// [`ViolationKind::TooLarge`]; everything else is [`ViolationKind::Invalid`].
pub fn validate(parts: &ConverseParts<'_>, limits: &Limits) -> Result<(), Vec<FieldViolation>> {
    let mut violations = Violations::default();
    check_size(parts, limits, &mut violations);
    if parts.model_alias.is_empty() {
        violations.invalid("model_alias", "must name one of the tenant's model aliases");
    }
    check_messages(parts, &mut violations);
    for (i, block) in parts.system.iter().enumerate() {
        let path = format!("system[{i}]");
        match &block.block {
            None => violations.invalid(&path, "must set text or cache_point"),
            Some(pb::system_content_block::Block::Text(text)) => {
                if text.trim().is_empty() {
                    violations.invalid(format!("{path}.text"), "must not be blank");
                }
            }
            Some(pb::system_content_block::Block::CachePoint(point)) => {
                check_cache_point(point, &format!("{path}.cache_point"), &mut violations);
            }
        }
    }
    if let Some(config) = parts.inference_config {
        check_inference_config(config, &mut violations);
    }
    if let Some(config) = parts.tool_config {
        check_tool_config(config, &mut violations);
    } else if uses_tools(parts.messages) {
        violations.invalid(
            "tool_config",
            "must be set when messages hold tool_use or tool_result blocks",
        );
    }
    if let Some(fields) = parts.additional_model_request_fields
        && let Some(path) = non_finite_in_struct(fields, "additional_model_request_fields")
    {
        violations.invalid(
            path,
            "must be a finite number (JSON has no NaN or Infinity)",
        );
    }
    check_response_field_paths(parts.additional_model_response_field_paths, &mut violations);
    check_request_metadata(parts.request_metadata, &mut violations);
    if violations.0.is_empty() {
        Ok(())
    } else {
        Err(violations.0)
    }
}

fn check_size(parts: &ConverseParts<'_>, limits: &Limits, violations: &mut Violations) {
    if parts.messages.len() > limits.max_messages {
        violations.too_large(
            "messages",
            format!(
                "has {} messages, more than the limit of {}",
                parts.messages.len(),
                limits.max_messages
            ),
        );
    }
    // Every part with its size; the largest is named when the sum is too big,
    // since that is what the caller can shrink.
    let mut sized: Vec<(String, usize)> = Vec::new();
    for (i, message) in parts.messages.iter().enumerate() {
        for (j, block) in message.content.iter().enumerate() {
            sized.push((format!("messages[{i}].content[{j}]"), block.encoded_len()));
        }
    }
    for (i, block) in parts.system.iter().enumerate() {
        sized.push((format!("system[{i}]"), block.encoded_len()));
    }
    if let Some(config) = parts.tool_config {
        sized.push(("tool_config".to_owned(), config.encoded_len()));
    }
    if let Some(fields) = parts.additional_model_request_fields {
        sized.push((
            "additional_model_request_fields".to_owned(),
            fields.encoded_len(),
        ));
    }
    let metadata: usize = parts
        .request_metadata
        .iter()
        .map(|(k, v)| k.len().saturating_add(v.len()))
        .sum();
    sized.push(("request_metadata".to_owned(), metadata));
    let total = sized.iter().fold(0_u64, |sum, (_, size)| {
        sum.saturating_add(u64::try_from(*size).unwrap_or(u64::MAX))
    });
    if total > limits.max_request_bytes
        // The first of the largest parts (`max_by_key` would name the last).
        && let Some((field, size)) = sized
            .iter()
            .reduce(|best, part| if part.1 > best.1 { part } else { best })
    {
        violations.too_large(
            field.clone(),
            format!(
                "the request's content is {total} bytes, more than the limit of {} bytes; \
                 this is its largest part ({size} bytes)",
                limits.max_request_bytes
            ),
        );
    }
}

fn uses_tools(messages: &[pb::ConverseMessage]) -> bool {
    messages
        .iter()
        .flat_map(|m| &m.content)
        .any(|block| matches!(block.block, Some(Block::ToolUse(_) | Block::ToolResult(_))))
}

fn check_messages(parts: &ConverseParts<'_>, violations: &mut Violations) {
    if parts.messages.is_empty() {
        violations.invalid("messages", "must have at least one message");
        return;
    }
    for (i, message) in parts.messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let role = pb::ConversationRole::try_from(message.role);
        match role {
            Ok(pb::ConversationRole::User | pb::ConversationRole::Assistant) => {}
            Ok(pb::ConversationRole::Unspecified) => violations.invalid(
                format!("{path}.role"),
                "must be set (CONVERSATION_ROLE_USER or CONVERSATION_ROLE_ASSISTANT)",
            ),
            Err(_) => violations.invalid(
                format!("{path}.role"),
                format!("unknown role {}", message.role),
            ),
        }
        if i == 0 && role.is_ok_and(|r| r == pb::ConversationRole::Assistant) {
            violations.invalid(
                format!("{path}.role"),
                "the first message must be the user's",
            );
        }
        if message.content.is_empty() {
            violations.invalid(format!("{path}.content"), "must have at least one block");
        }
        for (j, block) in message.content.iter().enumerate() {
            check_content_block(
                block,
                &format!("{path}.content[{j}]"),
                role.ok(),
                violations,
            );
        }
    }
}

fn check_content_block(
    block: &pb::ContentBlock,
    path: &str,
    role: Option<pb::ConversationRole>,
    violations: &mut Violations,
) {
    let from_user = role == Some(pb::ConversationRole::User);
    let from_assistant = role == Some(pb::ConversationRole::Assistant);
    match &block.block {
        None => violations.invalid(
            path,
            "must set one of text, image, document, tool_use, tool_result, reasoning_content, cache_point",
        ),
        Some(Block::Text(text)) => {
            if text.trim().is_empty() {
                violations.invalid(format!("{path}.text"), "must not be blank");
            }
        }
        Some(Block::Image(image)) => check_image(image, &format!("{path}.image"), violations),
        Some(Block::Document(document)) => {
            check_document(document, &format!("{path}.document"), violations);
        }
        Some(Block::ToolUse(tool_use)) => {
            let path = format!("{path}.tool_use");
            if from_user {
                violations.invalid(&path, "tool_use blocks belong in assistant messages");
            }
            if tool_use.tool_use_id.is_empty() {
                violations.invalid(format!("{path}.tool_use_id"), "must not be empty");
            }
            if tool_use.name.is_empty() {
                violations.invalid(format!("{path}.name"), "must not be empty");
            }
            if let Some(input) = &tool_use.input
                && let Some(bad) = non_finite_in_struct(input, &format!("{path}.input"))
            {
                violations.invalid(bad, "must be a finite number (JSON has no NaN or Infinity)");
            }
        }
        Some(Block::ToolResult(result)) => {
            let path = format!("{path}.tool_result");
            if from_assistant {
                violations.invalid(&path, "tool_result blocks belong in user messages");
            }
            check_tool_result(result, &path, violations);
        }
        Some(Block::ReasoningContent(reasoning)) => {
            let path = format!("{path}.reasoning_content");
            if from_user {
                violations.invalid(&path, "reasoning_content blocks belong in assistant messages");
            }
            match &reasoning.content {
                None => violations.invalid(&path, "must set reasoning_text or redacted_content"),
                Some(Reasoning::ReasoningText(_) | Reasoning::RedactedContent(_)) => {}
            }
        }
        Some(Block::CachePoint(point)) => {
            check_cache_point(point, &format!("{path}.cache_point"), violations);
        }
    }
}

fn check_tool_result(result: &pb::ToolResultBlock, path: &str, violations: &mut Violations) {
    if result.tool_use_id.is_empty() {
        violations.invalid(format!("{path}.tool_use_id"), "must not be empty");
    }
    if result.content.is_empty() {
        violations.invalid(format!("{path}.content"), "must have at least one block");
    }
    if pb::ToolResultStatus::try_from(result.status).is_err() {
        violations.invalid(
            format!("{path}.status"),
            format!("unknown status {}", result.status),
        );
    }
    for (k, block) in result.content.iter().enumerate() {
        let path = format!("{path}.content[{k}]");
        match &block.block {
            None => violations.invalid(&path, "must set one of json, text, image, document"),
            Some(ResultBlock::Json(value)) => {
                if let Some(bad) = non_finite_in_value(value, &format!("{path}.json")) {
                    violations
                        .invalid(bad, "must be a finite number (JSON has no NaN or Infinity)");
                }
            }
            Some(ResultBlock::Text(text)) => {
                if text.trim().is_empty() {
                    violations.invalid(format!("{path}.text"), "must not be blank");
                }
            }
            Some(ResultBlock::Image(image)) => {
                check_image(image, &format!("{path}.image"), violations);
            }
            Some(ResultBlock::Document(document)) => {
                check_document(document, &format!("{path}.document"), violations);
            }
        }
    }
}

fn check_image(image: &pb::ImageBlock, path: &str, violations: &mut Violations) {
    match pb::ImageFormat::try_from(image.format) {
        Ok(pb::ImageFormat::Unspecified) => {
            violations.invalid(format!("{path}.format"), "must be set");
        }
        Ok(
            pb::ImageFormat::Png
            | pb::ImageFormat::Jpeg
            | pb::ImageFormat::Gif
            | pb::ImageFormat::Webp,
        ) => {}
        Err(_) => violations.invalid(
            format!("{path}.format"),
            format!("unknown image format {}", image.format),
        ),
    }
    if image.data.is_empty() {
        violations.invalid(format!("{path}.data"), "must not be empty");
    }
}

fn check_document(document: &pb::DocumentBlock, path: &str, violations: &mut Violations) {
    match pb::DocumentFormat::try_from(document.format) {
        Ok(pb::DocumentFormat::Unspecified) => {
            violations.invalid(format!("{path}.format"), "must be set");
        }
        Ok(_) => {}
        Err(_) => violations.invalid(
            format!("{path}.format"),
            format!("unknown document format {}", document.format),
        ),
    }
    if document.name.is_empty() {
        violations.invalid(format!("{path}.name"), "must not be empty");
    } else if !valid_document_name(&document.name) {
        violations.invalid(
            format!("{path}.name"),
            "may hold only letters, digits, single spaces, hyphens, parentheses and square brackets",
        );
    }
    if document.data.is_empty() {
        violations.invalid(format!("{path}.data"), "must not be empty");
    }
}

/// Bedrock's rule for document names (they end up in the prompt).
fn valid_document_name(name: &str) -> bool {
    let allowed = name
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '(' | ')' | '[' | ']'));
    allowed && !name.contains("  ")
}

fn check_cache_point(point: &pb::CachePointBlock, path: &str, violations: &mut Violations) {
    if pb::CachePointType::try_from(point.r#type).is_err() {
        violations.invalid(
            format!("{path}.type"),
            format!("unknown cache point type {}", point.r#type),
        );
    }
}

fn check_inference_config(config: &pb::InferenceConfiguration, violations: &mut Violations) {
    if let Some(max_tokens) = config.max_tokens
        && max_tokens <= 0
    {
        violations.invalid("inference_config.max_tokens", "must be positive");
    }
    // `contains` is false for NaN too.
    if let Some(temperature) = config.temperature
        && !(0.0..=1.0).contains(&temperature)
    {
        violations.invalid("inference_config.temperature", "must be between 0 and 1");
    }
    if let Some(top_p) = config.top_p
        && !(0.0..=1.0).contains(&top_p)
    {
        violations.invalid("inference_config.top_p", "must be between 0 and 1");
    }
    if config.stop_sequences.len() > MAX_STOP_SEQUENCES {
        violations.invalid(
            "inference_config.stop_sequences",
            format!("must have at most {MAX_STOP_SEQUENCES} sequences"),
        );
    }
    for (k, sequence) in config.stop_sequences.iter().enumerate() {
        if sequence.is_empty() {
            violations.invalid(
                format!("inference_config.stop_sequences[{k}]"),
                "must not be empty",
            );
        }
    }
}

fn check_tool_config(config: &pb::ToolConfiguration, violations: &mut Violations) {
    let mut names = BTreeSet::new();
    for (i, tool) in config.tools.iter().enumerate() {
        let path = format!("tool_config.tools[{i}]");
        match &tool.tool {
            None => violations.invalid(&path, "must set tool_spec or cache_point"),
            Some(pb::tool::Tool::CachePoint(point)) => {
                check_cache_point(point, &format!("{path}.cache_point"), violations);
            }
            Some(pb::tool::Tool::ToolSpec(spec)) => {
                let path = format!("{path}.tool_spec");
                if !valid_tool_name(&spec.name) {
                    violations.invalid(
                        format!("{path}.name"),
                        format!("must be 1 to {MAX_TOOL_NAME_LEN} letters, digits, '_' or '-'"),
                    );
                } else if !names.insert(spec.name.as_str()) {
                    violations.invalid(
                        format!("{path}.name"),
                        format!("duplicate tool name {:?}", spec.name),
                    );
                }
                match &spec.input_schema {
                    None => violations.invalid(
                        format!("{path}.input_schema"),
                        "must be set (a JSON Schema object)",
                    ),
                    Some(schema) => {
                        if let Some(bad) =
                            non_finite_in_struct(schema, &format!("{path}.input_schema"))
                        {
                            violations.invalid(
                                bad,
                                "must be a finite number (JSON has no NaN or Infinity)",
                            );
                        }
                    }
                }
            }
        }
    }
    if !config
        .tools
        .iter()
        .any(|t| matches!(t.tool, Some(pb::tool::Tool::ToolSpec(_))))
    {
        violations.invalid("tool_config.tools", "must have at least one tool_spec");
    }
    if let Some(choice) = &config.tool_choice {
        match &choice.choice {
            None => violations.invalid("tool_config.tool_choice", "must set auto, any or tool"),
            Some(pb::tool_choice::Choice::Tool(specific)) => {
                if specific.name.is_empty() {
                    violations.invalid("tool_config.tool_choice.tool.name", "must not be empty");
                } else if !names.contains(specific.name.as_str()) {
                    violations.invalid(
                        "tool_config.tool_choice.tool.name",
                        format!("names no tool of tool_config.tools: {:?}", specific.name),
                    );
                }
            }
            Some(pb::tool_choice::Choice::Auto(_) | pb::tool_choice::Choice::Any(_)) => {}
        }
    }
}

fn valid_tool_name(name: &str) -> bool {
    (1..=MAX_TOOL_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_response_field_paths(paths: &[String], violations: &mut Violations) {
    if paths.len() > MAX_RESPONSE_FIELD_PATHS {
        violations.invalid(
            "additional_model_response_field_paths",
            format!("must have at most {MAX_RESPONSE_FIELD_PATHS} paths"),
        );
    }
    for (i, path) in paths.iter().enumerate() {
        if !path.starts_with('/') || path.len() > MAX_METADATA_LEN {
            violations.invalid(
                format!("additional_model_response_field_paths[{i}]"),
                format!("must be a JSON pointer (\"/...\") of at most {MAX_METADATA_LEN} bytes"),
            );
        }
    }
}

/// Bedrock's character set for requestMetadata keys and values.
fn valid_metadata_text(text: &str) -> bool {
    text.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || c.is_whitespace()
            || matches!(
                c,
                ':' | '_' | '@' | '$' | '#' | '=' | '/' | '+' | ',' | '-' | '.'
            )
    })
}

fn check_request_metadata(metadata: &HashMap<String, String>, violations: &mut Violations) {
    // Sorted, so the violations come in a stable order.
    let mut keys: Vec<&String> = metadata.keys().collect();
    keys.sort_unstable();
    let mut caller_entries = 0_usize;
    for key in keys {
        let field = format!("request_metadata.{key}");
        if RESERVED_METADATA_KEYS.contains(&key.as_str()) {
            violations.invalid(field, "is reserved: the gateway sets it");
            continue;
        }
        caller_entries = caller_entries.saturating_add(1);
        if key.is_empty() || key.len() > MAX_METADATA_LEN || !valid_metadata_text(key) {
            violations.invalid(
                &field,
                format!(
                    "key must be 1 to {MAX_METADATA_LEN} letters, digits, spaces or :_@$#=/+,-."
                ),
            );
        }
        let value = metadata.get(key).map_or("", String::as_str);
        if value.len() > MAX_METADATA_LEN || !valid_metadata_text(value) {
            violations.invalid(
                &field,
                format!(
                    "value must be at most {MAX_METADATA_LEN} letters, digits, spaces or :_@$#=/+,-."
                ),
            );
        }
    }
    if caller_entries > MAX_CALLER_METADATA {
        violations.invalid(
            "request_metadata",
            format!("must have at most {MAX_CALLER_METADATA} entries"),
        );
    }
}

/// UTF-8 bytes per token of the estimate.
pub const BYTES_PER_TOKEN: u64 = 4;
/// Tokens counted per image.
pub const IMAGE_TOKENS: u64 = 1_600;
/// Fewest tokens counted per binary document (PDF, Word, Excel).
pub const BINARY_DOCUMENT_MIN_TOKENS: u64 = 1_600;
/// Bytes of a binary document per token counted.
pub const BINARY_DOCUMENT_BYTES_PER_TOKEN: u64 = 16;

/// The input-token estimate a Converse call is reserved with (all kinds:
/// uncached, cache read and cache write together). Deterministic, and cheap
/// next to the call.
///
/// The rule: `ceil(T / 4) + P + 1600 x images + sum over binary documents of
/// max(1600, ceil(bytes / 16))`, where
/// - `T` is the UTF-8 bytes of every text the model reads: system text, message
///   text, reasoning text, tool use names and inputs (as compact JSON), tool
///   result text and JSON, text-format documents (txt, md, csv, html) whole,
///   and the tool specifications (name, description, JSON schema);
/// - `P` is the number of cache points: Bedrock (and the emulator) round the
///   cached prefix and the rest up separately, so each split can add a token.
///
/// Why: 4 bytes per token is the usual rate for English with the models'
/// tokenizers, and the same rule as the emulator, whose count (text blocks of
/// `system` and `messages` only) this estimate never goes below. It is not a
/// bound on real Bedrock: code, some languages, and the models' own framing
/// tokens can run higher. An image costs about `width x height / 750` tokens,
/// and models scale images to about 1.15 megapixels first: at most ~1,600. A
/// PDF or Office file's byte size says little about its text (compression,
/// embedded images), so it counts a page's worth at least and one token per 16
/// bytes beyond. The estimate only sizes the reservation; the settlement
/// charges what Bedrock reports.
#[must_use]
pub fn estimate_input_tokens(parts: &ConverseParts<'_>) -> i64 {
    let mut estimate = Estimate::default();
    for block in parts.system {
        match &block.block {
            Some(pb::system_content_block::Block::Text(text)) => estimate.text(text.len()),
            Some(pb::system_content_block::Block::CachePoint(_)) => estimate.cache_point(),
            None => {}
        }
    }
    for block in parts.messages.iter().flat_map(|m| &m.content) {
        match &block.block {
            None => {}
            Some(Block::Text(text)) => estimate.text(text.len()),
            Some(Block::Image(_)) => estimate.image(),
            Some(Block::Document(document)) => estimate.document(document),
            Some(Block::ToolUse(tool_use)) => {
                estimate.text(tool_use.name.len());
                estimate.text(tool_use.input.as_ref().map_or(2, struct_json_len));
            }
            Some(Block::ToolResult(result)) => {
                for item in &result.content {
                    match &item.block {
                        None => {}
                        Some(ResultBlock::Json(value)) => estimate.text(value_json_len(value)),
                        Some(ResultBlock::Text(text)) => estimate.text(text.len()),
                        Some(ResultBlock::Image(_)) => estimate.image(),
                        Some(ResultBlock::Document(document)) => estimate.document(document),
                    }
                }
            }
            Some(Block::ReasoningContent(reasoning)) => match &reasoning.content {
                Some(Reasoning::ReasoningText(reasoning)) => estimate.text(reasoning.text.len()),
                // Opaque to us; what it costs is the provider's secret.
                Some(Reasoning::RedactedContent(_)) | None => {}
            },
            Some(Block::CachePoint(_)) => estimate.cache_point(),
        }
    }
    if let Some(config) = parts.tool_config {
        for tool in &config.tools {
            match &tool.tool {
                Some(pb::tool::Tool::ToolSpec(spec)) => {
                    estimate.text(spec.name.len());
                    estimate.text(spec.description.len());
                    estimate.text(spec.input_schema.as_ref().map_or(0, struct_json_len));
                }
                Some(pb::tool::Tool::CachePoint(_)) => estimate.cache_point(),
                None => {}
            }
        }
    }
    estimate.tokens()
}

#[derive(Default)]
struct Estimate {
    text_bytes: u64,
    fixed_tokens: u64,
}

impl Estimate {
    fn text(&mut self, bytes: usize) {
        self.text_bytes = self
            .text_bytes
            .saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX));
    }

    fn tokens_fixed(&mut self, tokens: u64) {
        self.fixed_tokens = self.fixed_tokens.saturating_add(tokens);
    }

    fn image(&mut self) {
        self.tokens_fixed(IMAGE_TOKENS);
    }

    fn cache_point(&mut self) {
        self.tokens_fixed(1);
    }

    fn document(&mut self, document: &pb::DocumentBlock) {
        let format = pb::DocumentFormat::try_from(document.format);
        match format {
            Ok(
                pb::DocumentFormat::Txt
                | pb::DocumentFormat::Md
                | pb::DocumentFormat::Csv
                | pb::DocumentFormat::Html,
            ) => self.text(document.data.len()),
            Ok(
                pb::DocumentFormat::Pdf
                | pb::DocumentFormat::Doc
                | pb::DocumentFormat::Docx
                | pb::DocumentFormat::Xls
                | pb::DocumentFormat::Xlsx
                | pb::DocumentFormat::Unspecified,
            )
            | Err(_) => {
                let bytes = u64::try_from(document.data.len()).unwrap_or(u64::MAX);
                self.tokens_fixed(
                    bytes
                        .div_ceil(BINARY_DOCUMENT_BYTES_PER_TOKEN)
                        .max(BINARY_DOCUMENT_MIN_TOKENS),
                );
            }
        }
        // The name is part of the prompt too.
        self.text(document.name.len());
    }

    fn tokens(&self) -> i64 {
        let tokens = self
            .text_bytes
            .div_ceil(BYTES_PER_TOKEN)
            .saturating_add(self.fixed_tokens);
        i64::try_from(tokens).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::ViolationKind;

    #[test]
    fn violation_kinds_are_distinct() {
        let messages = vec![
            pb::ConverseMessage {
                role: pb::ConversationRole::User as i32,
                content: vec![pb::ContentBlock {
                    block: Some(Block::Text("x".repeat(100))),
                }],
            };
            3
        ];
        let metadata = HashMap::new();
        let parts = ConverseParts {
            model_alias: "m",
            messages: &messages,
            system: &[],
            inference_config: None,
            tool_config: None,
            additional_model_request_fields: None,
            additional_model_response_field_paths: &[],
            request_metadata: &metadata,
            application_id: "",
        };
        let limits = Limits {
            max_messages: 2,
            max_request_bytes: 50,
        };
        let violations = validate(&parts, &limits).unwrap_err();
        assert!(violations.iter().all(|v| v.kind == ViolationKind::TooLarge));
        assert_eq!(violations[0].field, "messages");
        assert_eq!(violations[1].field, "messages[0].content[0]");
    }
}
