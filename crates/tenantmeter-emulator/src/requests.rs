//! Reading runtime request bodies (Converse's and the Anthropic Messages body of InvokeModel)
//! into a [`Prompt`]; a body Bedrock would refuse is a `ValidationException`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::completion::Prompt;
use crate::faults::ServiceError;

/// A runtime request as the emulator needs it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct InferenceRequest {
    pub(crate) prompt: Prompt,
    /// Converse's `requestMetadata`; InvokeModel has none.
    pub(crate) request_metadata: Option<BTreeMap<String, String>>,
}

pub(crate) fn parse_json(body: &[u8]) -> Result<Value, ServiceError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ServiceError::validation(format!("Malformed input request: {e}")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(ServiceError::validation(
            "Malformed input request: expected a JSON object",
        ))
    }
}

fn max_tokens(value: Option<&Value>, field: &str) -> Result<Option<u64>, ServiceError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            Some(_) | None => Err(ServiceError::validation(format!(
                "{field}: must be an integer >= 1"
            ))),
        },
    }
}

/// Converse and ConverseStream: `system` and `messages[].content` are lists of content blocks.
pub(crate) fn converse_request(request: &Value) -> Result<InferenceRequest, ServiceError> {
    let mut prompt = Prompt::default();
    let add_blocks = |blocks: &[Value], prompt: &mut Prompt| -> String {
        let mut own = String::new();
        for block in blocks {
            if let Some(text) = block.get("text").and_then(Value::as_str) {
                prompt.text.push_str(text);
                own.push_str(text);
            } else if block.get("cachePoint").is_some() {
                prompt.cache_prefix_len = Some(prompt.text.len());
            }
        }
        own
    };
    if let Some(system) = request.get("system") {
        let blocks = system
            .as_array()
            .ok_or_else(|| ServiceError::validation("system: must be a list of content blocks"))?;
        add_blocks(blocks, &mut prompt);
    }
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ServiceError::validation("messages: must be a non-empty list of messages")
        })?;
    for message in messages {
        let blocks = message
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                ServiceError::validation("messages.content: must be a list of content blocks")
            })?;
        let own = add_blocks(blocks, &mut prompt);
        if message.get("role").and_then(Value::as_str) == Some("user") {
            prompt.last_user_text = own;
        }
    }
    prompt.max_tokens = max_tokens(
        request
            .get("inferenceConfig")
            .and_then(|c| c.get("maxTokens")),
        "inferenceConfig.maxTokens",
    )?;
    let request_metadata = match request.get("requestMetadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(entries)) => Some(
            entries
                .iter()
                .map(|(key, value)| match value.as_str() {
                    Some(text) => Ok((key.clone(), text.to_owned())),
                    None => Err(ServiceError::validation(format!(
                        "requestMetadata.{key}: must be a string"
                    ))),
                })
                .collect::<Result<BTreeMap<_, _>, _>>()?,
        ),
        Some(_) => {
            return Err(ServiceError::validation(
                "requestMetadata: must be a map of strings",
            ));
        }
    };
    Ok(InferenceRequest {
        prompt,
        request_metadata,
    })
}

/// InvokeModel and InvokeModelWithResponseStream: the Anthropic Messages body, or a top-level
/// `prompt` / `inputText` string.
pub(crate) fn invoke_request(request: &Value) -> Result<InferenceRequest, ServiceError> {
    let mut prompt = Prompt::default();
    let text_of = |content: &Value| -> String {
        match content {
            Value::String(s) => s.clone(),
            Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect(),
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::Object(_) => String::new(),
        }
    };
    if let Some(system) = request.get("system") {
        prompt.text.push_str(&text_of(system));
    }
    if let Some(messages) = request.get("messages") {
        let messages = messages
            .as_array()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ServiceError::validation("messages: must be a non-empty list"))?;
        for message in messages {
            let own = message.get("content").map(&text_of).unwrap_or_default();
            prompt.text.push_str(&own);
            if message.get("role").and_then(Value::as_str) == Some("user") {
                prompt.last_user_text = own;
            }
        }
    } else if let Some(text) = ["prompt", "inputText"]
        .iter()
        .find_map(|k| request.get(*k).and_then(Value::as_str))
    {
        prompt.text.push_str(text);
        prompt.last_user_text = text.to_owned();
    } else {
        return Err(ServiceError::validation(
            "Malformed input request: expected messages, prompt or inputText",
        ));
    }
    prompt.max_tokens = max_tokens(request.get("max_tokens"), "max_tokens")?;
    Ok(InferenceRequest {
        prompt,
        request_metadata: None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn converse_reads_request_metadata_and_refuses_non_strings() {
        let body = json!({
            "messages": [{ "role": "user", "content": [{ "text": "hi" }] }],
            "requestMetadata": { "tenant": "acme" },
        });
        let request = converse_request(&body).unwrap();
        assert_eq!(
            request.request_metadata,
            Some(BTreeMap::from([("tenant".to_owned(), "acme".to_owned())]))
        );
        let body = json!({
            "messages": [{ "role": "user", "content": [{ "text": "hi" }] }],
            "requestMetadata": { "tenant": 1 },
        });
        assert_eq!(
            converse_request(&body).unwrap_err().error_type(),
            "ValidationException"
        );
    }
}
