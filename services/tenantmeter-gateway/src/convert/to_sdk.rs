//! The contract's request types -> the SDK's, for `client.converse()` and
//! `client.converse_stream()`.

use std::collections::HashMap;

use aws_sdk_bedrockruntime::operation::converse::builders::ConverseFluentBuilder;
use aws_sdk_bedrockruntime::operation::converse_stream::builders::ConverseStreamFluentBuilder;
use aws_sdk_bedrockruntime::types as sdk;
use aws_smithy_types::{Blob, Document};
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::content_block::Block;
use tenantmeter_proto::v1::reasoning_content_block::Content as Reasoning;
use tenantmeter_proto::v1::tool_result_content_block::Block as ResultBlock;

use super::ConvertError;
use super::document::{struct_to_document, value_to_document};
use super::validate::ConverseParts;

/// requestMetadata keys the gateway sets itself; a caller's are refused.
pub const RESERVED_METADATA_KEYS: [&str; 2] = ["tenant_id", "application_id"];

/// Everything of a Converse request but the model id, in the SDK's types.
#[derive(Debug, Clone)]
pub struct SdkConverseInput {
    /// `messages`.
    pub messages: Vec<sdk::Message>,
    /// `system`; `None` when empty.
    pub system: Option<Vec<sdk::SystemContentBlock>>,
    /// `inferenceConfig`.
    pub inference_config: Option<sdk::InferenceConfiguration>,
    /// `toolConfig`.
    pub tool_config: Option<sdk::ToolConfiguration>,
    /// `additionalModelRequestFields`.
    pub additional_model_request_fields: Option<Document>,
    /// `additionalModelResponseFieldPaths`; `None` when empty.
    pub additional_model_response_field_paths: Option<Vec<String>>,
    /// `requestMetadata`: the caller's entries and the gateway's own.
    pub request_metadata: HashMap<String, String>,
}

impl SdkConverseInput {
    /// Sets every field on a `client.converse()` builder (the model id is the
    /// caller's to set: the tenant's inference profile ARN).
    #[must_use]
    pub fn apply_to_converse(self, builder: ConverseFluentBuilder) -> ConverseFluentBuilder {
        builder
            .set_messages(Some(self.messages))
            .set_system(self.system)
            .set_inference_config(self.inference_config)
            .set_tool_config(self.tool_config)
            .set_additional_model_request_fields(self.additional_model_request_fields)
            .set_additional_model_response_field_paths(self.additional_model_response_field_paths)
            .set_request_metadata(Some(self.request_metadata))
    }

    /// As [`SdkConverseInput::apply_to_converse`], for `client.converse_stream()`.
    #[must_use]
    pub fn apply_to_converse_stream(
        self,
        builder: ConverseStreamFluentBuilder,
    ) -> ConverseStreamFluentBuilder {
        builder
            .set_messages(Some(self.messages))
            .set_system(self.system)
            .set_inference_config(self.inference_config)
            .set_tool_config(self.tool_config)
            .set_additional_model_request_fields(self.additional_model_request_fields)
            .set_additional_model_response_field_paths(self.additional_model_response_field_paths)
            .set_request_metadata(Some(self.request_metadata))
    }
}

/// Converts a (validated) request. `tenant_id` and `application_id` are the
/// gateway's: they go into requestMetadata, for Bedrock's invocation logs.
pub fn sdk_converse_input(
    parts: &ConverseParts<'_>,
    tenant_id: &str,
    application_id: &str,
) -> Result<SdkConverseInput, ConvertError> {
    Ok(SdkConverseInput {
        messages: sdk_messages(parts.messages)?,
        system: if parts.system.is_empty() {
            None
        } else {
            Some(sdk_system(parts.system)?)
        },
        inference_config: parts.inference_config.map(sdk_inference_config),
        tool_config: parts.tool_config.map(sdk_tool_config).transpose()?,
        additional_model_request_fields: parts
            .additional_model_request_fields
            .map(struct_to_document),
        additional_model_response_field_paths: if parts
            .additional_model_response_field_paths
            .is_empty()
        {
            None
        } else {
            Some(parts.additional_model_response_field_paths.to_vec())
        },
        request_metadata: request_metadata(parts, tenant_id, application_id),
    })
}

/// The caller's requestMetadata with the gateway's `tenant_id` and
/// `application_id` (the resolved application, never empty in practice); a
/// caller's entry under those keys never survives ([`super::validate`]
/// refuses it before this).
#[must_use]
pub fn request_metadata(
    parts: &ConverseParts<'_>,
    tenant_id: &str,
    application_id: &str,
) -> HashMap<String, String> {
    let mut merged: HashMap<String, String> = parts
        .request_metadata
        .iter()
        .filter(|(key, _)| !RESERVED_METADATA_KEYS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    merged.insert("tenant_id".to_owned(), tenant_id.to_owned());
    merged.insert("application_id".to_owned(), application_id.to_owned());
    merged
}

/// The conversation in the SDK's types.
pub fn sdk_messages(messages: &[pb::ConverseMessage]) -> Result<Vec<sdk::Message>, ConvertError> {
    messages
        .iter()
        .enumerate()
        .map(|(i, message)| {
            let path = format!("messages[{i}]");
            let role = match pb::ConversationRole::try_from(message.role) {
                Ok(pb::ConversationRole::User) => sdk::ConversationRole::User,
                Ok(pb::ConversationRole::Assistant) => sdk::ConversationRole::Assistant,
                Ok(pb::ConversationRole::Unspecified) | Err(_) => {
                    return Err(ConvertError::new(format!("{path}.role"), "no role"));
                }
            };
            let content = message
                .content
                .iter()
                .enumerate()
                .map(|(j, block)| sdk_content_block(block, &format!("{path}.content[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            sdk::Message::builder()
                .role(role)
                .set_content(Some(content))
                .build()
                .map_err(|e| ConvertError::build(&path, &e))
        })
        .collect()
}

/// One content block in the SDK's types; `path` names it in errors.
pub fn sdk_content_block(
    block: &pb::ContentBlock,
    path: &str,
) -> Result<sdk::ContentBlock, ConvertError> {
    Ok(match &block.block {
        None => return Err(ConvertError::new(path, "no block set")),
        Some(Block::Text(text)) => sdk::ContentBlock::Text(text.clone()),
        Some(Block::Image(image)) => {
            sdk::ContentBlock::Image(sdk_image(image, &format!("{path}.image"))?)
        }
        Some(Block::Document(document)) => {
            sdk::ContentBlock::Document(sdk_document(document, &format!("{path}.document"))?)
        }
        Some(Block::ToolUse(tool_use)) => sdk::ContentBlock::ToolUse(
            sdk::ToolUseBlock::builder()
                .tool_use_id(&tool_use.tool_use_id)
                .name(&tool_use.name)
                // Bedrock requires an input object; a tool without
                // arguments has an empty one.
                .input(
                    tool_use
                        .input
                        .as_ref()
                        .map_or_else(|| Document::Object(HashMap::new()), struct_to_document),
                )
                .build()
                .map_err(|e| ConvertError::build(&format!("{path}.tool_use"), &e))?,
        ),
        Some(Block::ToolResult(result)) => {
            sdk::ContentBlock::ToolResult(sdk_tool_result(result, &format!("{path}.tool_result"))?)
        }
        Some(Block::ReasoningContent(reasoning)) => {
            let path = format!("{path}.reasoning_content");
            sdk::ContentBlock::ReasoningContent(match &reasoning.content {
                None => return Err(ConvertError::new(path, "no reasoning set")),
                Some(Reasoning::ReasoningText(text)) => sdk::ReasoningContentBlock::ReasoningText(
                    sdk::ReasoningTextBlock::builder()
                        .text(&text.text)
                        .set_signature(non_empty(&text.signature))
                        .build()
                        .map_err(|e| ConvertError::build(&path, &e))?,
                ),
                Some(Reasoning::RedactedContent(bytes)) => {
                    sdk::ReasoningContentBlock::RedactedContent(Blob::new(bytes.clone()))
                }
            })
        }
        Some(Block::CachePoint(point)) => {
            sdk::ContentBlock::CachePoint(sdk_cache_point(point, &format!("{path}.cache_point"))?)
        }
    })
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn sdk_image(image: &pb::ImageBlock, path: &str) -> Result<sdk::ImageBlock, ConvertError> {
    let format = match pb::ImageFormat::try_from(image.format) {
        Ok(pb::ImageFormat::Png) => sdk::ImageFormat::Png,
        Ok(pb::ImageFormat::Jpeg) => sdk::ImageFormat::Jpeg,
        Ok(pb::ImageFormat::Gif) => sdk::ImageFormat::Gif,
        Ok(pb::ImageFormat::Webp) => sdk::ImageFormat::Webp,
        Ok(pb::ImageFormat::Unspecified) | Err(_) => {
            return Err(ConvertError::new(
                format!("{path}.format"),
                "no image format",
            ));
        }
    };
    sdk::ImageBlock::builder()
        .format(format)
        .source(sdk::ImageSource::Bytes(Blob::new(image.data.clone())))
        .build()
        .map_err(|e| ConvertError::build(path, &e))
}

fn sdk_document(
    document: &pb::DocumentBlock,
    path: &str,
) -> Result<sdk::DocumentBlock, ConvertError> {
    let format = match pb::DocumentFormat::try_from(document.format) {
        Ok(pb::DocumentFormat::Pdf) => sdk::DocumentFormat::Pdf,
        Ok(pb::DocumentFormat::Csv) => sdk::DocumentFormat::Csv,
        Ok(pb::DocumentFormat::Doc) => sdk::DocumentFormat::Doc,
        Ok(pb::DocumentFormat::Docx) => sdk::DocumentFormat::Docx,
        Ok(pb::DocumentFormat::Xls) => sdk::DocumentFormat::Xls,
        Ok(pb::DocumentFormat::Xlsx) => sdk::DocumentFormat::Xlsx,
        Ok(pb::DocumentFormat::Html) => sdk::DocumentFormat::Html,
        Ok(pb::DocumentFormat::Txt) => sdk::DocumentFormat::Txt,
        Ok(pb::DocumentFormat::Md) => sdk::DocumentFormat::Md,
        Ok(pb::DocumentFormat::Unspecified) | Err(_) => {
            return Err(ConvertError::new(
                format!("{path}.format"),
                "no document format",
            ));
        }
    };
    sdk::DocumentBlock::builder()
        .format(format)
        .name(&document.name)
        .source(sdk::DocumentSource::Bytes(Blob::new(document.data.clone())))
        .build()
        .map_err(|e| ConvertError::build(path, &e))
}

fn sdk_tool_result(
    result: &pb::ToolResultBlock,
    path: &str,
) -> Result<sdk::ToolResultBlock, ConvertError> {
    let content = result
        .content
        .iter()
        .enumerate()
        .map(|(k, item)| {
            let path = format!("{path}.content[{k}]");
            Ok(match &item.block {
                None => return Err(ConvertError::new(path, "no block set")),
                Some(ResultBlock::Json(value)) => {
                    sdk::ToolResultContentBlock::Json(value_to_document(value))
                }
                Some(ResultBlock::Text(text)) => sdk::ToolResultContentBlock::Text(text.clone()),
                Some(ResultBlock::Image(image)) => {
                    sdk::ToolResultContentBlock::Image(sdk_image(image, &format!("{path}.image"))?)
                }
                Some(ResultBlock::Document(document)) => sdk::ToolResultContentBlock::Document(
                    sdk_document(document, &format!("{path}.document"))?,
                ),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let status = match pb::ToolResultStatus::try_from(result.status) {
        // Unset means success; Bedrock's default too, so nothing is sent.
        Ok(pb::ToolResultStatus::Unspecified) => None,
        Ok(pb::ToolResultStatus::Success) => Some(sdk::ToolResultStatus::Success),
        Ok(pb::ToolResultStatus::Error) => Some(sdk::ToolResultStatus::Error),
        Err(_) => {
            return Err(ConvertError::new(
                format!("{path}.status"),
                "unknown status",
            ));
        }
    };
    sdk::ToolResultBlock::builder()
        .tool_use_id(&result.tool_use_id)
        .set_content(Some(content))
        .set_status(status)
        .build()
        .map_err(|e| ConvertError::build(path, &e))
}

fn sdk_cache_point(
    point: &pb::CachePointBlock,
    path: &str,
) -> Result<sdk::CachePointBlock, ConvertError> {
    match pb::CachePointType::try_from(point.r#type) {
        // Unset means the default, the only kind there is.
        Ok(pb::CachePointType::Unspecified | pb::CachePointType::Default) => {
            sdk::CachePointBlock::builder()
                .r#type(sdk::CachePointType::Default)
                .build()
                .map_err(|e| ConvertError::build(path, &e))
        }
        Err(_) => Err(ConvertError::new(
            format!("{path}.type"),
            "unknown cache point type",
        )),
    }
}

/// The system prompt in the SDK's types.
pub fn sdk_system(
    system: &[pb::SystemContentBlock],
) -> Result<Vec<sdk::SystemContentBlock>, ConvertError> {
    system
        .iter()
        .enumerate()
        .map(|(i, block)| {
            let path = format!("system[{i}]");
            match &block.block {
                None => Err(ConvertError::new(path, "no block set")),
                Some(pb::system_content_block::Block::Text(text)) => {
                    Ok(sdk::SystemContentBlock::Text(text.clone()))
                }
                Some(pb::system_content_block::Block::CachePoint(point)) => {
                    Ok(sdk::SystemContentBlock::CachePoint(sdk_cache_point(
                        point,
                        &format!("{path}.cache_point"),
                    )?))
                }
            }
        })
        .collect()
}

/// Inference parameters in the SDK's types (f32 both sides: nothing converts).
#[must_use]
pub fn sdk_inference_config(config: &pb::InferenceConfiguration) -> sdk::InferenceConfiguration {
    sdk::InferenceConfiguration::builder()
        .set_max_tokens(config.max_tokens)
        .set_temperature(config.temperature)
        .set_top_p(config.top_p)
        .set_stop_sequences(if config.stop_sequences.is_empty() {
            None
        } else {
            Some(config.stop_sequences.clone())
        })
        .build()
}

/// Tools in the SDK's types.
pub fn sdk_tool_config(
    config: &pb::ToolConfiguration,
) -> Result<sdk::ToolConfiguration, ConvertError> {
    let tools =
        config
            .tools
            .iter()
            .enumerate()
            .map(|(i, tool)| {
                let path = format!("tool_config.tools[{i}]");
                match &tool.tool {
                    None => Err(ConvertError::new(path, "no tool set")),
                    Some(pb::tool::Tool::CachePoint(point)) => Ok(sdk::Tool::CachePoint(
                        sdk_cache_point(point, &format!("{path}.cache_point"))?,
                    )),
                    Some(pb::tool::Tool::ToolSpec(spec)) => Ok(sdk::Tool::ToolSpec(
                        sdk::ToolSpecification::builder()
                            .name(&spec.name)
                            .set_description(non_empty(&spec.description))
                            .set_input_schema(spec.input_schema.as_ref().map(|schema| {
                                sdk::ToolInputSchema::Json(struct_to_document(schema))
                            }))
                            .build()
                            .map_err(|e| ConvertError::build(&format!("{path}.tool_spec"), &e))?,
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
    let tool_choice = match config.tool_choice.as_ref().map(|c| &c.choice) {
        None => None,
        Some(None) => {
            return Err(ConvertError::new(
                "tool_config.tool_choice",
                "no choice set",
            ));
        }
        Some(Some(pb::tool_choice::Choice::Auto(_))) => Some(sdk::ToolChoice::Auto(
            sdk::AutoToolChoice::builder().build(),
        )),
        Some(Some(pb::tool_choice::Choice::Any(_))) => {
            Some(sdk::ToolChoice::Any(sdk::AnyToolChoice::builder().build()))
        }
        Some(Some(pb::tool_choice::Choice::Tool(specific))) => Some(sdk::ToolChoice::Tool(
            sdk::SpecificToolChoice::builder()
                .name(&specific.name)
                .build()
                .map_err(|e| ConvertError::build("tool_config.tool_choice.tool", &e))?,
        )),
    };
    sdk::ToolConfiguration::builder()
        .set_tools(Some(tools))
        .set_tool_choice(tool_choice)
        .build()
        .map_err(|e| ConvertError::build("tool_config", &e))
}
