//! The SDK's answers -> the contract's: Converse output, ConverseStream
//! events, token usage; and the SDK's request types back (for round trips,
//! logs and the emulator's tests).
//!
//! The SDK's enums are `#[non_exhaustive]` and grow as Bedrock does: every
//! match names each variant known today and ends in one `_` arm for what a
//! newer Bedrock may send, which maps to "unspecified" or is dropped. Each
//! such arm says why dropping is right there.

use aws_sdk_bedrockruntime::operation::converse::ConverseOutput;
use aws_sdk_bedrockruntime::types as sdk;
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::content_block::Block;
use tenantmeter_proto::v1::converse_stream_response::Event;
use tenantmeter_proto::v1::reasoning_content_block::Content as Reasoning;
use tenantmeter_proto::v1::tool_result_content_block::Block as ResultBlock;

use super::document::{document_to_struct, document_to_value};

/// Bedrock's token usage in the contract's terms.
///
/// Convention: Bedrock's `inputTokens` counts only the prompt tokens that were
/// neither read from nor written to the prompt cache; `cacheReadInputTokens`
/// and `cacheWriteInputTokens` come on top, and `totalTokens` is the sum of
/// all four kinds (AWS's prompt-caching documentation, and the emulator, which
/// reports `inputTokens = tokens(uncached part)` and `totalTokens = input +
/// output + cache read + cache write`). That is exactly the meaning of the
/// contract's `TokenUsage.input_tokens`, so every count maps one to one, with
/// no subtraction: subtracting the cache counts again would under-charge every
/// cached call. Absent cache counts are 0. `totalTokens` is not carried (it is
/// the sum of the four).
#[must_use]
pub fn usage_to_proto(usage: &sdk::TokenUsage) -> pb::TokenUsage {
    pb::TokenUsage {
        input_tokens: i64::from(usage.input_tokens),
        output_tokens: i64::from(usage.output_tokens),
        cache_read_input_tokens: i64::from(usage.cache_read_input_tokens.unwrap_or(0)),
        cache_write_input_tokens: i64::from(usage.cache_write_input_tokens.unwrap_or(0)),
    }
}

/// Bedrock's stop reason. `malformed_model_output` and `malformed_tool_use`,
/// and any reason a newer Bedrock adds, have no value in the contract and are
/// reported as `STOP_REASON_UNSPECIFIED`, as the contract documents.
#[must_use]
pub fn proto_stop_reason(reason: &sdk::StopReason) -> pb::StopReason {
    match reason {
        sdk::StopReason::EndTurn => pb::StopReason::EndTurn,
        sdk::StopReason::ToolUse => pb::StopReason::ToolUse,
        sdk::StopReason::MaxTokens => pb::StopReason::MaxTokens,
        sdk::StopReason::StopSequence => pb::StopReason::StopSequence,
        sdk::StopReason::GuardrailIntervened => pb::StopReason::GuardrailIntervened,
        sdk::StopReason::ContentFiltered => pb::StopReason::ContentFiltered,
        sdk::StopReason::ModelContextWindowExceeded => pb::StopReason::ModelContextWindowExceeded,
        sdk::StopReason::MalformedModelOutput | sdk::StopReason::MalformedToolUse => {
            pb::StopReason::Unspecified
        }
        // A reason this SDK does not know, or a variant a newer SDK adds
        // (non-exhaustive). The contract says: unspecified.
        #[allow(
            deprecated,
            reason = "Unknown is named so that the wildcard covers only future variants"
        )]
        sdk::StopReason::Unknown(_) | _ => pb::StopReason::Unspecified,
    }
}

fn proto_role(role: &sdk::ConversationRole) -> pb::ConversationRole {
    match role {
        sdk::ConversationRole::User => pb::ConversationRole::User,
        sdk::ConversationRole::Assistant => pb::ConversationRole::Assistant,
        // Converse never returns a system message; the contract has no
        // system role (the system prompt is its own field).
        sdk::ConversationRole::System => pb::ConversationRole::Unspecified,
        // A role a newer Bedrock adds (non-exhaustive).
        #[allow(
            deprecated,
            reason = "Unknown is named so that the wildcard covers only future variants"
        )]
        sdk::ConversationRole::Unknown(_) | _ => pb::ConversationRole::Unspecified,
    }
}

fn proto_image_format(format: &sdk::ImageFormat) -> pb::ImageFormat {
    match format {
        sdk::ImageFormat::Png => pb::ImageFormat::Png,
        sdk::ImageFormat::Jpeg => pb::ImageFormat::Jpeg,
        sdk::ImageFormat::Gif => pb::ImageFormat::Gif,
        sdk::ImageFormat::Webp => pb::ImageFormat::Webp,
        // A format the contract cannot name yet (non-exhaustive).
        #[allow(
            deprecated,
            reason = "Unknown is named so that the wildcard covers only future variants"
        )]
        sdk::ImageFormat::Unknown(_) | _ => pb::ImageFormat::Unspecified,
    }
}

fn proto_document_format(format: &sdk::DocumentFormat) -> pb::DocumentFormat {
    match format {
        sdk::DocumentFormat::Pdf => pb::DocumentFormat::Pdf,
        sdk::DocumentFormat::Csv => pb::DocumentFormat::Csv,
        sdk::DocumentFormat::Doc => pb::DocumentFormat::Doc,
        sdk::DocumentFormat::Docx => pb::DocumentFormat::Docx,
        sdk::DocumentFormat::Xls => pb::DocumentFormat::Xls,
        sdk::DocumentFormat::Xlsx => pb::DocumentFormat::Xlsx,
        sdk::DocumentFormat::Html => pb::DocumentFormat::Html,
        sdk::DocumentFormat::Txt => pb::DocumentFormat::Txt,
        sdk::DocumentFormat::Md => pb::DocumentFormat::Md,
        // A format the contract cannot name yet (non-exhaustive).
        #[allow(
            deprecated,
            reason = "Unknown is named so that the wildcard covers only future variants"
        )]
        sdk::DocumentFormat::Unknown(_) | _ => pb::DocumentFormat::Unspecified,
    }
}

fn proto_cache_point(point: &sdk::CachePointBlock) -> pb::CachePointBlock {
    let kind = match point.r#type() {
        sdk::CachePointType::Default => pb::CachePointType::Default,
        // A kind a newer Bedrock adds (non-exhaustive); unspecified is "the
        // default" in the contract, the closest there is.
        #[allow(
            deprecated,
            reason = "Unknown is named so that the wildcard covers only future variants"
        )]
        sdk::CachePointType::Unknown(_) | _ => pb::CachePointType::Unspecified,
    };
    pb::CachePointBlock {
        r#type: kind as i32,
    }
}

fn proto_image(image: &sdk::ImageBlock) -> Option<pb::ImageBlock> {
    match image.source.as_ref()? {
        sdk::ImageSource::Bytes(bytes) => Some(pb::ImageBlock {
            format: proto_image_format(&image.format) as i32,
            data: bytes.as_ref().to_vec(),
        }),
        // The contract carries images as bytes only; an S3 reference (or a
        // newer kind of source) has no field, so the block is dropped.
        sdk::ImageSource::S3Location(_) | sdk::ImageSource::Unknown { .. } | _ => None,
    }
}

fn proto_document(document: &sdk::DocumentBlock) -> Option<pb::DocumentBlock> {
    let data = match document.source.as_ref()? {
        sdk::DocumentSource::Bytes(bytes) => bytes.as_ref().to_vec(),
        sdk::DocumentSource::Text(text) => text.clone().into_bytes(),
        // Structured content, S3 references and newer sources have no field
        // in the contract (bytes only): dropped.
        sdk::DocumentSource::Content(_)
        | sdk::DocumentSource::S3Location(_)
        | sdk::DocumentSource::Unknown { .. }
        | _ => return None,
    };
    Some(pb::DocumentBlock {
        format: proto_document_format(&document.format) as i32,
        name: document.name.clone(),
        data,
    })
}

fn proto_tool_result(result: &sdk::ToolResultBlock) -> pb::ToolResultBlock {
    let content = result
        .content
        .iter()
        .filter_map(|item| {
            let block = match item {
                sdk::ToolResultContentBlock::Json(value) => {
                    ResultBlock::Json(document_to_value(value))
                }
                sdk::ToolResultContentBlock::Text(text) => ResultBlock::Text(text.clone()),
                sdk::ToolResultContentBlock::Image(image) => {
                    ResultBlock::Image(proto_image(image)?)
                }
                sdk::ToolResultContentBlock::Document(document) => {
                    ResultBlock::Document(proto_document(document)?)
                }
                // Videos, search results and newer kinds have no field in the
                // contract's ToolResultContentBlock: dropped.
                sdk::ToolResultContentBlock::SearchResult(_)
                | sdk::ToolResultContentBlock::Video(_)
                | sdk::ToolResultContentBlock::Unknown { .. }
                | _ => return None,
            };
            Some(pb::ToolResultContentBlock { block: Some(block) })
        })
        .collect();
    let status = match result.status.as_ref() {
        None => pb::ToolResultStatus::Unspecified,
        Some(sdk::ToolResultStatus::Success) => pb::ToolResultStatus::Success,
        Some(sdk::ToolResultStatus::Error) => pb::ToolResultStatus::Error,
        // A status a newer Bedrock adds (non-exhaustive).
        #[allow(
            deprecated,
            reason = "Unknown is named so that the wildcard covers only future variants"
        )]
        Some(sdk::ToolResultStatus::Unknown(_) | _) => pb::ToolResultStatus::Unspecified,
    };
    pb::ToolResultBlock {
        tool_use_id: result.tool_use_id.clone(),
        content,
        status: status as i32,
    }
}

/// One content block in the contract's terms; `None` for a kind the contract
/// has no field for (each case below says which and why).
#[must_use]
pub fn proto_content_block(block: &sdk::ContentBlock) -> Option<pb::ContentBlock> {
    let block = match block {
        sdk::ContentBlock::Text(text) => Block::Text(text.clone()),
        sdk::ContentBlock::Image(image) => Block::Image(proto_image(image)?),
        sdk::ContentBlock::Document(document) => Block::Document(proto_document(document)?),
        sdk::ContentBlock::ToolUse(tool_use) => Block::ToolUse(pb::ToolUseBlock {
            tool_use_id: tool_use.tool_use_id.clone(),
            name: tool_use.name.clone(),
            // Tool inputs are JSON objects; anything else has no Struct form.
            input: document_to_struct(&tool_use.input),
        }),
        sdk::ContentBlock::ToolResult(result) => Block::ToolResult(proto_tool_result(result)),
        sdk::ContentBlock::ReasoningContent(reasoning) => {
            Block::ReasoningContent(pb::ReasoningContentBlock {
                content: Some(match reasoning {
                    sdk::ReasoningContentBlock::ReasoningText(text) => {
                        Reasoning::ReasoningText(pb::ReasoningText {
                            text: text.text.clone(),
                            signature: text.signature.clone().unwrap_or_default(),
                        })
                    }
                    sdk::ReasoningContentBlock::RedactedContent(bytes) => {
                        Reasoning::RedactedContent(bytes.as_ref().to_vec())
                    }
                    // A newer kind of reasoning (non-exhaustive): the contract
                    // has no field for it.
                    sdk::ReasoningContentBlock::Unknown { .. } | _ => return None,
                }),
            })
        }
        sdk::ContentBlock::CachePoint(point) => Block::CachePoint(proto_cache_point(point)),
        // The model's reply with citations: its generated text is the reply,
        // so it is kept as text (the citations themselves have no field).
        sdk::ContentBlock::CitationsContent(citations) => {
            let text: String = citations
                .content()
                .iter()
                .filter_map(|part| part.as_text().ok().map(String::as_str))
                .collect();
            if text.is_empty() {
                return None;
            }
            Block::Text(text)
        }
        // Audio, video, guardrail content, search results, tool additions and
        // removals are input-only kinds the contract cannot send, so a reply
        // does not hold them; they and newer kinds are dropped.
        sdk::ContentBlock::Audio(_)
        | sdk::ContentBlock::Video(_)
        | sdk::ContentBlock::GuardContent(_)
        | sdk::ContentBlock::SearchResult(_)
        | sdk::ContentBlock::ToolAddition(_)
        | sdk::ContentBlock::ToolRemoval(_)
        | sdk::ContentBlock::Unknown { .. }
        | _ => return None,
    };
    Some(pb::ContentBlock { block: Some(block) })
}

/// A message in the contract's terms (blocks without a field dropped).
#[must_use]
pub fn proto_message(message: &sdk::Message) -> pb::ConverseMessage {
    pb::ConverseMessage {
        role: proto_role(&message.role) as i32,
        content: message
            .content
            .iter()
            .filter_map(proto_content_block)
            .collect(),
    }
}

/// Bedrock's Converse answer as a ConverseResponse; `metering` is left unset
/// for the caller, who knows it once the call is settled.
#[must_use]
pub fn converse_response(output: &ConverseOutput) -> pb::ConverseResponse {
    let output_message = match output.output.as_ref() {
        Some(sdk::ConverseOutput::Message(message)) => Some(proto_message(message)),
        // No output, or a newer kind of output (non-exhaustive): there is no
        // message to pass on, but usage and stop reason still are (and are
        // settled).
        Some(sdk::ConverseOutput::Unknown { .. } | _) | None => None,
    };
    pb::ConverseResponse {
        output_message,
        stop_reason: proto_stop_reason(&output.stop_reason) as i32,
        usage: output.usage.as_ref().map(usage_to_proto),
        metrics: output.metrics.as_ref().map(|m| pb::ConverseMetrics {
            latency_ms: m.latency_ms,
        }),
        additional_model_response_fields: output
            .additional_model_response_fields
            .as_ref()
            .and_then(document_to_struct),
        metering: None,
    }
}

/// Bytes of generated content an event carries (text, tool-use input JSON,
/// reasoning text or redacted reasoning): what a stream cut before Bedrock's
/// usage arrived is estimated from, at the reservation's 4 bytes per token.
#[must_use]
pub fn delta_bytes(event: &sdk::ConverseStreamOutput) -> usize {
    let sdk::ConverseStreamOutput::ContentBlockDelta(delta) = event else {
        return 0;
    };
    match delta.delta.as_ref() {
        Some(sdk::ContentBlockDelta::Text(text)) => text.len(),
        Some(sdk::ContentBlockDelta::ToolUse(tool_use)) => tool_use.input.len(),
        Some(sdk::ContentBlockDelta::ReasoningContent(reasoning)) => match reasoning {
            sdk::ReasoningContentBlockDelta::Text(text) => text.len(),
            sdk::ReasoningContentBlockDelta::RedactedContent(bytes) => bytes.as_ref().len(),
            // A signature is not generated content.
            sdk::ReasoningContentBlockDelta::Signature(_) => 0,
            // A newer kind of piece (non-exhaustive): nothing known to count.
            sdk::ReasoningContentBlockDelta::Unknown { .. } | _ => 0,
        },
        // Citation metadata is not generated text; image and tool-result
        // pieces are not the model's output tokens; newer kinds unknown.
        Some(
            sdk::ContentBlockDelta::Citation(_)
            | sdk::ContentBlockDelta::Image(_)
            | sdk::ContentBlockDelta::ToolResult(_)
            | sdk::ContentBlockDelta::Unknown { .. }
            | _,
        )
        | None => 0,
    }
}

/// One ConverseStream event as a ConverseStreamResponse. `None` for what the
/// contract has no message for; the caller skips it and the stream goes on.
#[must_use]
pub fn stream_event(event: &sdk::ConverseStreamOutput) -> Option<pb::ConverseStreamResponse> {
    let event = match event {
        sdk::ConverseStreamOutput::MessageStart(start) => {
            Event::MessageStart(pb::MessageStartEvent {
                role: proto_role(&start.role) as i32,
            })
        }
        sdk::ConverseStreamOutput::ContentBlockStart(start) => {
            let tool_use = match start.start.as_ref()? {
                sdk::ContentBlockStart::ToolUse(tool_use) => pb::ToolUseBlockStart {
                    tool_use_id: tool_use.tool_use_id.clone(),
                    name: tool_use.name.clone(),
                },
                // Image and tool-result starts come only with content kinds
                // the contract cannot carry (their deltas are dropped too);
                // newer kinds likewise.
                sdk::ContentBlockStart::Image(_)
                | sdk::ContentBlockStart::ToolResult(_)
                | sdk::ContentBlockStart::Unknown { .. }
                | _ => return None,
            };
            Event::ContentBlockStart(pb::ContentBlockStartEvent {
                content_block_index: start.content_block_index,
                start: Some(pb::content_block_start_event::Start::ToolUse(tool_use)),
            })
        }
        sdk::ConverseStreamOutput::ContentBlockDelta(delta) => {
            use pb::content_block_delta_event::Delta;
            let piece = match delta.delta.as_ref()? {
                sdk::ContentBlockDelta::Text(text) => Delta::Text(text.clone()),
                sdk::ContentBlockDelta::ToolUse(tool_use) => {
                    Delta::ToolUse(pb::ToolUseBlockDelta {
                        input: tool_use.input.clone(),
                    })
                }
                sdk::ContentBlockDelta::ReasoningContent(reasoning) => {
                    use pb::reasoning_content_block_delta::Delta as ReasoningDelta;
                    let piece = match reasoning {
                        sdk::ReasoningContentBlockDelta::Text(text) => {
                            ReasoningDelta::Text(text.clone())
                        }
                        sdk::ReasoningContentBlockDelta::RedactedContent(bytes) => {
                            ReasoningDelta::RedactedContent(bytes.as_ref().to_vec())
                        }
                        sdk::ReasoningContentBlockDelta::Signature(signature) => {
                            ReasoningDelta::Signature(signature.clone())
                        }
                        // A newer kind of reasoning piece (non-exhaustive).
                        sdk::ReasoningContentBlockDelta::Unknown { .. } | _ => return None,
                    };
                    Delta::ReasoningContent(pb::ReasoningContentBlockDelta { delta: Some(piece) })
                }
                // Citation metadata, image and tool-result pieces have no
                // field in the contract: dropped (the text they go with comes
                // as text deltas).
                sdk::ContentBlockDelta::Citation(_)
                | sdk::ContentBlockDelta::Image(_)
                | sdk::ContentBlockDelta::ToolResult(_)
                | sdk::ContentBlockDelta::Unknown { .. }
                | _ => return None,
            };
            Event::ContentBlockDelta(pb::ContentBlockDeltaEvent {
                content_block_index: delta.content_block_index,
                delta: Some(piece),
            })
        }
        sdk::ConverseStreamOutput::ContentBlockStop(stop) => {
            Event::ContentBlockStop(pb::ContentBlockStopEvent {
                content_block_index: stop.content_block_index,
            })
        }
        sdk::ConverseStreamOutput::MessageStop(stop) => Event::MessageStop(pb::MessageStopEvent {
            stop_reason: proto_stop_reason(&stop.stop_reason) as i32,
            additional_model_response_fields: stop
                .additional_model_response_fields
                .as_ref()
                .and_then(document_to_struct),
        }),
        sdk::ConverseStreamOutput::Metadata(metadata) => {
            Event::Metadata(pb::ConverseStreamMetadataEvent {
                usage: metadata.usage.as_ref().map(usage_to_proto),
                metrics: metadata.metrics.as_ref().map(|m| pb::ConverseMetrics {
                    latency_ms: m.latency_ms,
                }),
            })
        }
        // An event a newer Bedrock sends (non-exhaustive). Skipping it keeps
        // the stream going; the events the contract knows still arrive.
        sdk::ConverseStreamOutput::Unknown { .. } | _ => return None,
    };
    Some(pb::ConverseStreamResponse { event: Some(event) })
}

/// The SDK's system prompt in the contract's terms (guardrail content, which
/// the contract cannot send, dropped).
#[must_use]
pub fn proto_system(system: &[sdk::SystemContentBlock]) -> Vec<pb::SystemContentBlock> {
    system
        .iter()
        .filter_map(|block| {
            let block = match block {
                sdk::SystemContentBlock::Text(text) => {
                    pb::system_content_block::Block::Text(text.clone())
                }
                sdk::SystemContentBlock::CachePoint(point) => {
                    pb::system_content_block::Block::CachePoint(proto_cache_point(point))
                }
                // Guardrail content cannot be sent through the contract; a
                // newer kind of system block (non-exhaustive) has no field.
                sdk::SystemContentBlock::GuardContent(_)
                | sdk::SystemContentBlock::Unknown { .. }
                | _ => return None,
            };
            Some(pb::SystemContentBlock { block: Some(block) })
        })
        .collect()
}

/// The SDK's inference parameters in the contract's terms.
#[must_use]
pub fn proto_inference_config(config: &sdk::InferenceConfiguration) -> pb::InferenceConfiguration {
    pb::InferenceConfiguration {
        max_tokens: config.max_tokens,
        temperature: config.temperature,
        top_p: config.top_p,
        stop_sequences: config.stop_sequences.clone().unwrap_or_default(),
    }
}

/// The SDK's tool configuration in the contract's terms (system tools, which
/// the contract cannot name, dropped).
#[must_use]
pub fn proto_tool_config(config: &sdk::ToolConfiguration) -> pb::ToolConfiguration {
    let tools = config
        .tools
        .iter()
        .filter_map(|tool| {
            let tool = match tool {
                sdk::Tool::ToolSpec(spec) => pb::tool::Tool::ToolSpec(pb::ToolSpecification {
                    name: spec.name.clone(),
                    description: spec.description.clone().unwrap_or_default(),
                    input_schema: match spec.input_schema.as_ref() {
                        Some(sdk::ToolInputSchema::Json(schema)) => document_to_struct(schema),
                        // None, or a newer kind of schema (non-exhaustive).
                        Some(sdk::ToolInputSchema::Unknown { .. } | _) | None => None,
                    },
                }),
                sdk::Tool::CachePoint(point) => {
                    pb::tool::Tool::CachePoint(proto_cache_point(point))
                }
                // System tools cannot be named in the contract; a newer kind
                // of tool entry (non-exhaustive) has no field.
                sdk::Tool::SystemTool(_) | sdk::Tool::Unknown { .. } | _ => return None,
            };
            Some(pb::Tool { tool: Some(tool) })
        })
        .collect();
    let tool_choice = config.tool_choice.as_ref().and_then(|choice| {
        let choice = match choice {
            sdk::ToolChoice::Auto(_) => pb::tool_choice::Choice::Auto(pb::AutoToolChoice {}),
            sdk::ToolChoice::Any(_) => pb::tool_choice::Choice::Any(pb::AnyToolChoice {}),
            sdk::ToolChoice::Tool(specific) => {
                pb::tool_choice::Choice::Tool(pb::SpecificToolChoice {
                    name: specific.name.clone(),
                })
            }
            // A newer kind of choice (non-exhaustive); unset lets the model decide.
            sdk::ToolChoice::Unknown { .. } | _ => return None,
        };
        Some(pb::ToolChoice {
            choice: Some(choice),
        })
    });
    pb::ToolConfiguration { tools, tool_choice }
}
