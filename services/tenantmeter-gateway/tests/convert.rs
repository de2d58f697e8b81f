#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Conversions between the gateway contract and aws-sdk-bedrockruntime, and
//! request validation.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_bedrockruntime::operation::converse::ConverseOutput;
use aws_sdk_bedrockruntime::types as sdk;
use aws_smithy_types::{Document, Number};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use tenantmeter_gateway::convert::{
    self, ConverseParts, FieldViolation, Limits, ViolationKind, any_too_large,
};
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::content_block::Block;
use tenantmeter_proto::v1::converse_stream_response::Event;

// ---------------------------------------------------------------------------
// Builders of proto values.

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn boolean(b: bool) -> Value {
    Value {
        kind: Some(Kind::BoolValue(b)),
    }
}

fn null() -> Value {
    Value {
        kind: Some(Kind::NullValue(0)),
    }
}

fn list(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

fn object(fields: Vec<(&str, Value)>) -> Struct {
    Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn struct_value(s: Struct) -> Value {
    Value {
        kind: Some(Kind::StructValue(s)),
    }
}

fn block(block: Block) -> pb::ContentBlock {
    pb::ContentBlock { block: Some(block) }
}

fn text(t: &str) -> pb::ContentBlock {
    block(Block::Text(t.to_owned()))
}

fn message(role: pb::ConversationRole, content: Vec<pb::ContentBlock>) -> pb::ConverseMessage {
    pb::ConverseMessage {
        role: role as i32,
        content,
    }
}

fn image(format: pb::ImageFormat) -> pb::ImageBlock {
    pb::ImageBlock {
        format: format as i32,
        data: vec![0x89, b'P', b'N', b'G', 1, 2, 3],
    }
}

fn document(format: pb::DocumentFormat) -> pb::DocumentBlock {
    pb::DocumentBlock {
        format: format as i32,
        name: "Quarterly report (draft) [v2]".to_owned(),
        data: b"col1,col2\n1,2\n".to_vec(),
    }
}

fn weather_schema() -> Struct {
    object(vec![
        ("type", string("object")),
        (
            "properties",
            struct_value(object(vec![(
                "city",
                struct_value(object(vec![("type", string("string"))])),
            )])),
        ),
        ("required", list(vec![string("city")])),
    ])
}

fn tool_config() -> pb::ToolConfiguration {
    pb::ToolConfiguration {
        tools: vec![
            pb::Tool {
                tool: Some(pb::tool::Tool::ToolSpec(pb::ToolSpecification {
                    name: "get_weather".to_owned(),
                    description: "Current weather of a city".to_owned(),
                    input_schema: Some(weather_schema()),
                })),
            },
            pb::Tool {
                tool: Some(pb::tool::Tool::CachePoint(pb::CachePointBlock {
                    r#type: pb::CachePointType::Default as i32,
                })),
            },
        ],
        tool_choice: Some(pb::ToolChoice {
            choice: Some(pb::tool_choice::Choice::Tool(pb::SpecificToolChoice {
                name: "get_weather".to_owned(),
            })),
        }),
    }
}

/// A valid request using every kind of content.
fn full_request() -> pb::ConverseRequest {
    pb::ConverseRequest {
        model_alias: "sonnet".to_owned(),
        messages: vec![
            message(
                pb::ConversationRole::User,
                vec![
                    text("What is the weather in Paris?"),
                    block(Block::Image(image(pb::ImageFormat::Png))),
                    block(Block::Document(document(pb::DocumentFormat::Csv))),
                    block(Block::CachePoint(pb::CachePointBlock {
                        r#type: pb::CachePointType::Default as i32,
                    })),
                ],
            ),
            message(
                pb::ConversationRole::Assistant,
                vec![
                    block(Block::ReasoningContent(pb::ReasoningContentBlock {
                        content: Some(pb::reasoning_content_block::Content::ReasoningText(
                            pb::ReasoningText {
                                text: "The user wants weather.".to_owned(),
                                signature: "sig-1".to_owned(),
                            },
                        )),
                    })),
                    block(Block::ToolUse(pb::ToolUseBlock {
                        tool_use_id: "tu-1".to_owned(),
                        name: "get_weather".to_owned(),
                        input: Some(object(vec![("city", string("Paris"))])),
                    })),
                ],
            ),
            message(
                pb::ConversationRole::User,
                vec![block(Block::ToolResult(pb::ToolResultBlock {
                    tool_use_id: "tu-1".to_owned(),
                    content: vec![
                        pb::ToolResultContentBlock {
                            block: Some(pb::tool_result_content_block::Block::Json(struct_value(
                                object(vec![("celsius", number(21.0))]),
                            ))),
                        },
                        pb::ToolResultContentBlock {
                            block: Some(pb::tool_result_content_block::Block::Text(
                                "sunny".to_owned(),
                            )),
                        },
                    ],
                    status: pb::ToolResultStatus::Success as i32,
                }))],
            ),
        ],
        system: vec![
            pb::SystemContentBlock {
                block: Some(pb::system_content_block::Block::Text(
                    "You are terse.".to_owned(),
                )),
            },
            pb::SystemContentBlock {
                block: Some(pb::system_content_block::Block::CachePoint(
                    pb::CachePointBlock {
                        r#type: pb::CachePointType::Default as i32,
                    },
                )),
            },
        ],
        inference_config: Some(pb::InferenceConfiguration {
            max_tokens: Some(512),
            temperature: Some(0.7),
            top_p: Some(0.9),
            stop_sequences: vec!["END".to_owned()],
        }),
        tool_config: Some(tool_config()),
        additional_model_request_fields: Some(object(vec![("top_k", number(250.0))])),
        additional_model_response_field_paths: vec!["/stop_sequence".to_owned()],
        request_metadata: HashMap::from([("trace".to_owned(), "abc-123".to_owned())]),
        application_id: "chat".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Round trips.

fn round_trip(original: &pb::ContentBlock) -> pb::ContentBlock {
    let sdk_block = convert::sdk_content_block(original, "block").unwrap();
    convert::proto_content_block(&sdk_block).unwrap()
}

#[test]
fn every_content_block_kind_round_trips() {
    let mut blocks = vec![text("hello")];
    for format in [
        pb::ImageFormat::Png,
        pb::ImageFormat::Jpeg,
        pb::ImageFormat::Gif,
        pb::ImageFormat::Webp,
    ] {
        blocks.push(block(Block::Image(image(format))));
    }
    for format in [
        pb::DocumentFormat::Pdf,
        pb::DocumentFormat::Csv,
        pb::DocumentFormat::Doc,
        pb::DocumentFormat::Docx,
        pb::DocumentFormat::Xls,
        pb::DocumentFormat::Xlsx,
        pb::DocumentFormat::Html,
        pb::DocumentFormat::Txt,
        pb::DocumentFormat::Md,
    ] {
        blocks.push(block(Block::Document(document(format))));
    }
    blocks.push(block(Block::ToolUse(pb::ToolUseBlock {
        tool_use_id: "tu-9".to_owned(),
        name: "lookup".to_owned(),
        input: Some(object(vec![
            ("query", string("rust")),
            ("limit", number(10.0)),
            ("ratio", number(0.25)),
            (
                "tags",
                list(vec![string("a"), number(-3.0), null(), boolean(true)]),
            ),
            (
                "nested",
                struct_value(object(vec![("empty", list(vec![]))])),
            ),
        ])),
    })));
    for status in [
        pb::ToolResultStatus::Unspecified,
        pb::ToolResultStatus::Success,
        pb::ToolResultStatus::Error,
    ] {
        blocks.push(block(Block::ToolResult(pb::ToolResultBlock {
            tool_use_id: "tu-9".to_owned(),
            content: vec![
                pb::ToolResultContentBlock {
                    block: Some(pb::tool_result_content_block::Block::Json(list(vec![
                        number(1.0),
                        string("two"),
                    ]))),
                },
                pb::ToolResultContentBlock {
                    block: Some(pb::tool_result_content_block::Block::Text("ok".to_owned())),
                },
                pb::ToolResultContentBlock {
                    block: Some(pb::tool_result_content_block::Block::Image(image(
                        pb::ImageFormat::Jpeg,
                    ))),
                },
                pb::ToolResultContentBlock {
                    block: Some(pb::tool_result_content_block::Block::Document(document(
                        pb::DocumentFormat::Pdf,
                    ))),
                },
            ],
            status: status as i32,
        })));
    }
    blocks.push(block(Block::ReasoningContent(pb::ReasoningContentBlock {
        content: Some(pb::reasoning_content_block::Content::ReasoningText(
            pb::ReasoningText {
                text: "thinking".to_owned(),
                signature: "sig".to_owned(),
            },
        )),
    })));
    blocks.push(block(Block::ReasoningContent(pb::ReasoningContentBlock {
        content: Some(pb::reasoning_content_block::Content::RedactedContent(vec![
            1, 2, 3, 255,
        ])),
    })));
    blocks.push(block(Block::CachePoint(pb::CachePointBlock {
        r#type: pb::CachePointType::Default as i32,
    })));
    for original in &blocks {
        assert_eq!(&round_trip(original), original);
    }
}

#[test]
fn an_unspecified_cache_point_type_is_sent_as_the_default() {
    let unspecified = block(Block::CachePoint(pb::CachePointBlock { r#type: 0 }));
    let back = round_trip(&unspecified);
    assert_eq!(
        back,
        block(Block::CachePoint(pb::CachePointBlock {
            r#type: pb::CachePointType::Default as i32
        }))
    );
}

#[test]
fn messages_system_inference_and_tool_config_round_trip() {
    let request = full_request();
    let messages = convert::sdk_messages(&request.messages).unwrap();
    let back: Vec<pb::ConverseMessage> = messages.iter().map(convert::proto_message).collect();
    assert_eq!(back, request.messages);

    let system = convert::sdk_system(&request.system).unwrap();
    assert_eq!(convert::proto_system(&system), request.system);

    let config = request.inference_config.as_ref().unwrap();
    let sdk_config = convert::sdk_inference_config(config);
    assert_eq!(sdk_config.temperature, Some(0.7_f32));
    assert_eq!(&convert::proto_inference_config(&sdk_config), config);

    let tools = request.tool_config.as_ref().unwrap();
    let sdk_tools = convert::sdk_tool_config(tools).unwrap();
    assert_eq!(&convert::proto_tool_config(&sdk_tools), tools);
    for choice in [
        pb::tool_choice::Choice::Auto(pb::AutoToolChoice {}),
        pb::tool_choice::Choice::Any(pb::AnyToolChoice {}),
    ] {
        let mut tools = tool_config();
        tools.tool_choice = Some(pb::ToolChoice {
            choice: Some(choice),
        });
        let sdk_tools = convert::sdk_tool_config(&tools).unwrap();
        assert_eq!(convert::proto_tool_config(&sdk_tools), tools);
    }
    let mut no_choice = tool_config();
    no_choice.tool_choice = None;
    let sdk_tools = convert::sdk_tool_config(&no_choice).unwrap();
    assert!(sdk_tools.tool_choice.is_none());
    assert_eq!(convert::proto_tool_config(&sdk_tools), no_choice);
}

#[test]
fn the_converse_input_carries_every_field_and_the_gateways_metadata() {
    let request = full_request();
    let parts = ConverseParts::from(&request);
    let input = convert::sdk_converse_input(&parts, "acme", "chat-app").unwrap();
    assert_eq!(input.messages.len(), 3);
    assert_eq!(input.system.as_ref().unwrap().len(), 2);
    assert_eq!(
        input.inference_config.as_ref().unwrap().max_tokens,
        Some(512)
    );
    assert_eq!(input.tool_config.as_ref().unwrap().tools.len(), 2);
    assert_eq!(
        input.additional_model_request_fields,
        Some(Document::Object(HashMap::from([(
            "top_k".to_owned(),
            Document::Number(Number::PosInt(250))
        )])))
    );
    assert_eq!(
        input.additional_model_response_field_paths,
        Some(vec!["/stop_sequence".to_owned()])
    );
    assert_eq!(
        input.request_metadata,
        HashMap::from([
            ("trace".to_owned(), "abc-123".to_owned()),
            ("tenant_id".to_owned(), "acme".to_owned()),
            ("application_id".to_owned(), "chat-app".to_owned()),
        ])
    );

    // Applied to the real client's builder.
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(aws_sdk_bedrockruntime::config::BehaviorVersion::latest())
        .region(aws_sdk_bedrockruntime::config::Region::new("us-east-1"))
        .build();
    let client = aws_sdk_bedrockruntime::Client::from_conf(config);
    let builder = input
        .clone()
        .apply_to_converse(client.converse().model_id("arn:profile"));
    assert_eq!(builder.get_messages().as_ref().unwrap().len(), 3);
    assert_eq!(
        builder.get_request_metadata().as_ref().unwrap()["tenant_id"],
        "acme"
    );
    let stream = input.apply_to_converse_stream(client.converse_stream());
    assert_eq!(stream.get_system().as_ref().unwrap().len(), 2);

    // Empty optional parts are left unset rather than sent empty.
    let minimal = pb::ConverseStreamRequest {
        messages: vec![message(pb::ConversationRole::User, vec![text("hi")])],
        ..pb::ConverseStreamRequest::default()
    };
    let input = convert::sdk_converse_input(&ConverseParts::from(&minimal), "t", "a").unwrap();
    assert!(input.system.is_none());
    assert!(input.inference_config.is_none());
    assert!(input.tool_config.is_none());
    assert!(input.additional_model_response_field_paths.is_none());
}

#[test]
fn a_caller_cannot_override_the_gateways_metadata() {
    let mut request = full_request();
    request
        .request_metadata
        .insert("tenant_id".to_owned(), "someone-else".to_owned());
    let merged = convert::request_metadata(&ConverseParts::from(&request), "acme", "chat");
    assert_eq!(merged["tenant_id"], "acme");
    assert_eq!(merged["application_id"], "chat");
}

// ---------------------------------------------------------------------------
// Struct <-> Document.

#[test]
fn structs_and_documents_convert_both_ways() {
    let original = object(vec![
        ("int", number(42.0)),
        ("negative", number(-7.0)),
        ("zero", number(0.0)),
        ("float", number(2.5)),
        ("huge", number(1e300)),
        ("beyond_exact", number(2f64.powi(60))),
        ("text", string("héllo")),
        ("yes", boolean(true)),
        ("nothing", null()),
        (
            "nested",
            list(vec![
                list(vec![number(1.0), number(1.5)]),
                struct_value(object(vec![("deep", list(vec![null()]))])),
                list(vec![]),
            ]),
        ),
        ("empty", struct_value(Struct::default())),
    ]);
    let document = convert::struct_to_document(&original);
    let Document::Object(fields) = &document else {
        panic!("a Struct is an object: {document:?}");
    };
    assert_eq!(fields["int"], Document::Number(Number::PosInt(42)));
    assert_eq!(fields["negative"], Document::Number(Number::NegInt(-7)));
    assert_eq!(fields["zero"], Document::Number(Number::PosInt(0)));
    assert_eq!(fields["float"], Document::Number(Number::Float(2.5)));
    assert_eq!(fields["huge"], Document::Number(Number::Float(1e300)));
    // Past 2^53 a double is not an exact integer: it stays a float.
    assert_eq!(
        fields["beyond_exact"],
        Document::Number(Number::Float(2f64.powi(60)))
    );
    assert_eq!(fields["nothing"], Document::Null);
    assert_eq!(
        fields["nested"],
        Document::Array(vec![
            Document::Array(vec![
                Document::Number(Number::PosInt(1)),
                Document::Number(Number::Float(1.5)),
            ]),
            Document::Object(HashMap::from([(
                "deep".to_owned(),
                Document::Array(vec![Document::Null])
            )])),
            Document::Array(vec![]),
        ])
    );
    assert_eq!(convert::document_to_struct(&document), Some(original));

    // Values that are not objects.
    assert_eq!(convert::document_to_struct(&Document::Null), None);
    assert_eq!(convert::document_to_struct(&Document::Array(vec![])), None);
    assert_eq!(
        convert::value_to_document(&Value { kind: None }),
        Document::Null
    );
    assert_eq!(
        convert::document_to_value(&Document::Number(Number::NegInt(-3))),
        number(-3.0)
    );
    assert_eq!(
        convert::document_to_value(&Document::Number(Number::PosInt(u64::MAX))),
        number(1.8446744073709552e19)
    );
}

// ---------------------------------------------------------------------------
// Validation.

fn violations(request: &pb::ConverseRequest) -> Vec<FieldViolation> {
    convert::validate(&ConverseParts::from(request), &Limits::default()).unwrap_err()
}

/// The request, changed by `change`, fails validation naming `field`.
fn assert_rejected(change: impl FnOnce(&mut pb::ConverseRequest), field: &str) {
    let mut request = full_request();
    change(&mut request);
    let found = violations(&request);
    assert!(
        found.iter().any(|v| v.field == field),
        "expected a violation on {field}, got {found:#?}"
    );
    assert!(found.iter().all(|v| v.kind == ViolationKind::Invalid));
}

fn content(request: &mut pb::ConverseRequest, i: usize, j: usize) -> &mut pb::ContentBlock {
    &mut request.messages[i].content[j]
}

#[test]
fn a_valid_request_passes() {
    let request = full_request();
    convert::validate(&ConverseParts::from(&request), &Limits::default()).unwrap();
    let stream = pb::ConverseStreamRequest {
        model_alias: "haiku".to_owned(),
        messages: request.messages.clone(),
        tool_config: request.tool_config.clone(),
        ..pb::ConverseStreamRequest::default()
    };
    convert::validate(&ConverseParts::from(&stream), &Limits::default()).unwrap();
}

#[test]
fn every_validation_rule_names_its_field() {
    assert_rejected(|r| r.model_alias.clear(), "model_alias");
    assert_rejected(|r| r.messages.clear(), "messages");
    assert_rejected(
        |r| r.messages[0].role = pb::ConversationRole::Assistant as i32,
        "messages[0].role",
    );
    assert_rejected(|r| r.messages[1].role = 0, "messages[1].role");
    assert_rejected(|r| r.messages[1].role = 9, "messages[1].role");
    assert_rejected(|r| r.messages[0].content.clear(), "messages[0].content");
    assert_rejected(|r| content(r, 0, 1).block = None, "messages[0].content[1]");
    assert_rejected(
        |r| *content(r, 0, 0) = text("   "),
        "messages[0].content[0].text",
    );
    assert_rejected(
        |r| *content(r, 0, 1) = block(Block::Image(image(pb::ImageFormat::Unspecified))),
        "messages[0].content[1].image.format",
    );
    assert_rejected(
        |r| {
            *content(r, 0, 1) = block(Block::Image(pb::ImageBlock {
                format: pb::ImageFormat::Png as i32,
                data: vec![],
            }));
        },
        "messages[0].content[1].image.data",
    );
    assert_rejected(
        |r| {
            *content(r, 0, 2) = block(Block::Document(document(pb::DocumentFormat::Unspecified)));
        },
        "messages[0].content[2].document.format",
    );
    assert_rejected(
        |r| {
            let mut doc = document(pb::DocumentFormat::Pdf);
            doc.name = "bad/name.pdf".to_owned();
            *content(r, 0, 2) = block(Block::Document(doc));
        },
        "messages[0].content[2].document.name",
    );
    assert_rejected(
        |r| {
            let mut doc = document(pb::DocumentFormat::Pdf);
            doc.data.clear();
            *content(r, 0, 2) = block(Block::Document(doc));
        },
        "messages[0].content[2].document.data",
    );
    assert_rejected(
        |r| *content(r, 0, 3) = block(Block::CachePoint(pb::CachePointBlock { r#type: 7 })),
        "messages[0].content[3].cache_point.type",
    );
    assert_rejected(
        |r| {
            if let Some(Block::ToolUse(tool_use)) = &mut content(r, 1, 1).block {
                tool_use.tool_use_id.clear();
            }
        },
        "messages[1].content[1].tool_use.tool_use_id",
    );
    assert_rejected(
        |r| {
            if let Some(Block::ToolUse(tool_use)) = &mut content(r, 1, 1).block {
                tool_use.name.clear();
            }
        },
        "messages[1].content[1].tool_use.name",
    );
    assert_rejected(
        |r| {
            if let Some(Block::ToolUse(tool_use)) = &mut content(r, 1, 1).block {
                tool_use.input = Some(object(vec![("x", number(f64::NAN))]));
            }
        },
        "messages[1].content[1].tool_use.input.x",
    );
    assert_rejected(
        |r| {
            let tool_use = content(r, 1, 1).clone();
            r.messages[0].content.push(tool_use);
        },
        "messages[0].content[4].tool_use",
    );
    assert_rejected(
        |r| {
            content(r, 1, 0).block = Some(Block::ReasoningContent(pb::ReasoningContentBlock {
                content: None,
            }))
        },
        "messages[1].content[0].reasoning_content",
    );
    assert_rejected(
        |r| {
            if let Some(Block::ToolResult(result)) = &mut content(r, 2, 0).block {
                result.content.clear();
            }
        },
        "messages[2].content[0].tool_result.content",
    );
    assert_rejected(
        |r| {
            if let Some(Block::ToolResult(result)) = &mut content(r, 2, 0).block {
                result.content[1].block = None;
            }
        },
        "messages[2].content[0].tool_result.content[1]",
    );
    assert_rejected(
        |r| {
            if let Some(Block::ToolResult(result)) = &mut content(r, 2, 0).block {
                result.tool_use_id.clear();
            }
        },
        "messages[2].content[0].tool_result.tool_use_id",
    );
    assert_rejected(
        |r| {
            if let Some(Block::ToolResult(result)) = &mut content(r, 2, 0).block {
                result.status = 5;
            }
        },
        "messages[2].content[0].tool_result.status",
    );
    assert_rejected(
        |r| {
            if let Some(Block::ToolResult(result)) = &mut content(r, 2, 0).block {
                result.content[0].block =
                    Some(pb::tool_result_content_block::Block::Json(list(vec![
                        number(f64::INFINITY),
                    ])));
            }
        },
        "messages[2].content[0].tool_result.content[0].json[0]",
    );
    assert_rejected(|r| r.system[1].block = None, "system[1]");
    assert_rejected(
        |r| r.system[0].block = Some(pb::system_content_block::Block::Text(String::new())),
        "system[0].text",
    );
    assert_rejected(
        |r| r.inference_config.as_mut().unwrap().max_tokens = Some(0),
        "inference_config.max_tokens",
    );
    assert_rejected(
        |r| r.inference_config.as_mut().unwrap().max_tokens = Some(-5),
        "inference_config.max_tokens",
    );
    assert_rejected(
        |r| r.inference_config.as_mut().unwrap().temperature = Some(1.5),
        "inference_config.temperature",
    );
    assert_rejected(
        |r| r.inference_config.as_mut().unwrap().temperature = Some(f32::NAN),
        "inference_config.temperature",
    );
    assert_rejected(
        |r| r.inference_config.as_mut().unwrap().top_p = Some(-0.1),
        "inference_config.top_p",
    );
    assert_rejected(
        |r| {
            r.inference_config.as_mut().unwrap().stop_sequences =
                vec!["a".into(), "b".into(), "c".into(), "d".into(), "e".into()];
        },
        "inference_config.stop_sequences",
    );
    assert_rejected(
        |r| r.inference_config.as_mut().unwrap().stop_sequences = vec![String::new()],
        "inference_config.stop_sequences[0]",
    );
    assert_rejected(|r| r.tool_config = None, "tool_config");
    assert_rejected(
        |r| r.tool_config.as_mut().unwrap().tools.truncate(0),
        "tool_config.tools",
    );
    assert_rejected(
        |r| r.tool_config.as_mut().unwrap().tools[1].tool = None,
        "tool_config.tools[1]",
    );
    assert_rejected(
        |r| {
            if let Some(pb::tool::Tool::ToolSpec(spec)) =
                &mut r.tool_config.as_mut().unwrap().tools[0].tool
            {
                spec.name = "get weather!".to_owned();
            }
        },
        "tool_config.tools[0].tool_spec.name",
    );
    assert_rejected(
        |r| {
            let config = r.tool_config.as_mut().unwrap();
            let first = config.tools[0].clone();
            config.tools.push(first);
        },
        "tool_config.tools[2].tool_spec.name",
    );
    assert_rejected(
        |r| {
            if let Some(pb::tool::Tool::ToolSpec(spec)) =
                &mut r.tool_config.as_mut().unwrap().tools[0].tool
            {
                spec.input_schema = None;
            }
        },
        "tool_config.tools[0].tool_spec.input_schema",
    );
    assert_rejected(
        |r| r.tool_config.as_mut().unwrap().tool_choice = Some(pb::ToolChoice { choice: None }),
        "tool_config.tool_choice",
    );
    assert_rejected(
        |r| {
            r.tool_config.as_mut().unwrap().tool_choice = Some(pb::ToolChoice {
                choice: Some(pb::tool_choice::Choice::Tool(pb::SpecificToolChoice {
                    name: "no_such_tool".to_owned(),
                })),
            });
        },
        "tool_config.tool_choice.tool.name",
    );
    assert_rejected(
        |r| {
            r.additional_model_request_fields = Some(object(vec![(
                "nested",
                struct_value(object(vec![("t", number(f64::NAN))])),
            )]));
        },
        "additional_model_request_fields.nested.t",
    );
    assert_rejected(
        |r| r.additional_model_response_field_paths = vec!["stop_sequence".to_owned()],
        "additional_model_response_field_paths[0]",
    );
    assert_rejected(
        |r| {
            r.request_metadata
                .insert("tenant_id".to_owned(), "x".to_owned());
        },
        "request_metadata.tenant_id",
    );
    assert_rejected(
        |r| {
            r.request_metadata
                .insert("application_id".to_owned(), "x".to_owned());
        },
        "request_metadata.application_id",
    );
    assert_rejected(
        |r| {
            r.request_metadata
                .insert("bad key!".to_owned(), "x".to_owned());
        },
        "request_metadata.bad key!",
    );
    assert_rejected(
        |r| {
            for n in 0..15 {
                r.request_metadata.insert(format!("k{n}"), "v".to_owned());
            }
        },
        "request_metadata",
    );
}

#[test]
fn all_violations_are_reported_together() {
    let mut request = full_request();
    request.messages[0].role = 0;
    request.inference_config.as_mut().unwrap().max_tokens = Some(0);
    request
        .request_metadata
        .insert("tenant_id".to_owned(), "x".to_owned());
    let fields: Vec<String> = violations(&request).into_iter().map(|v| v.field).collect();
    assert_eq!(
        fields,
        [
            "messages[0].role",
            "inference_config.max_tokens",
            "request_metadata.tenant_id"
        ]
    );
}

#[test]
fn size_limits_are_a_distinct_kind() {
    let request = full_request();
    let parts = ConverseParts::from(&request);

    let few_messages = Limits {
        max_messages: 2,
        ..Limits::default()
    };
    let found = convert::validate(&parts, &few_messages).unwrap_err();
    assert!(any_too_large(&found));
    assert_eq!(found[0].field, "messages");
    assert_eq!(found[0].kind, ViolationKind::TooLarge);

    // The largest part is named: the tool configuration here.
    let small = Limits {
        max_request_bytes: 200,
        ..Limits::default()
    };
    let found = convert::validate(&parts, &small).unwrap_err();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, ViolationKind::TooLarge);
    assert_eq!(found[0].field, "tool_config");
    assert!(found[0].description.contains("limit of 200 bytes"));

    let mut big_image = full_request();
    big_image.messages[0].content[1] = block(Block::Image(pb::ImageBlock {
        format: pb::ImageFormat::Png as i32,
        data: vec![0; 10_000],
    }));
    let limits = Limits {
        max_request_bytes: 5_000,
        ..Limits::default()
    };
    let found = convert::validate(&ConverseParts::from(&big_image), &limits).unwrap_err();
    assert_eq!(found[0].field, "messages[0].content[1]");
    assert!(!any_too_large(&violations(&{
        let mut r = full_request();
        r.messages.clear();
        r
    })));
}

// ---------------------------------------------------------------------------
// Estimates.

#[test]
fn the_input_estimate_follows_its_documented_rule() {
    let text_only = pb::ConverseRequest {
        messages: vec![message(
            pb::ConversationRole::User,
            vec![text("0123456789")], // 10 bytes
        )],
        system: vec![pb::SystemContentBlock {
            block: Some(pb::system_content_block::Block::Text("abc".to_owned())), // 3 bytes
        }],
        ..pb::ConverseRequest::default()
    };
    // ceil(13 / 4)
    assert_eq!(
        convert::estimate_input_tokens(&ConverseParts::from(&text_only)),
        4
    );

    let mut with_media = text_only.clone();
    with_media.messages[0]
        .content
        .push(block(Block::Image(image(pb::ImageFormat::Png))));
    with_media.messages[0]
        .content
        .push(block(Block::CachePoint(pb::CachePointBlock::default())));
    let mut pdf = document(pb::DocumentFormat::Pdf);
    pdf.name = "ab".to_owned(); // 2 bytes of text
    pdf.data = vec![0; 100_000]; // ceil(100000 / 16) = 6250 > 1600
    with_media.messages[0]
        .content
        .push(block(Block::Document(pdf)));
    // ceil(15 / 4) + 1600 (image) + 1 (cache point) + 6250 (pdf)
    assert_eq!(
        convert::estimate_input_tokens(&ConverseParts::from(&with_media)),
        4 + 1600 + 1 + 6250
    );

    // Deterministic, and never below the emulator's count (text of system and
    // messages, ceil(bytes / 4)).
    let request = full_request();
    let parts = ConverseParts::from(&request);
    let estimate = convert::estimate_input_tokens(&parts);
    assert_eq!(estimate, convert::estimate_input_tokens(&parts));
    let emulator_text: usize =
        request
            .system
            .iter()
            .filter_map(|b| match &b.block {
                Some(pb::system_content_block::Block::Text(t)) => Some(t.len()),
                _ => None,
            })
            .chain(request.messages.iter().flat_map(|m| &m.content).filter_map(
                |b| match &b.block {
                    Some(Block::Text(t)) => Some(t.len()),
                    _ => None,
                },
            ))
            .sum();
    assert!(estimate >= i64::try_from(emulator_text.div_ceil(4)).unwrap());
}

// ---------------------------------------------------------------------------
// InvokeModel bodies.

#[test]
fn max_output_tokens_are_read_per_model_family() {
    let cases: [(&str, Option<i64>); 9] = [
        (
            r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":1024,"messages":[]}"#,
            Some(1024),
        ),
        (
            r#"{"inputText":"hi","textGenerationConfig":{"maxTokenCount":512,"temperature":0.5}}"#,
            Some(512),
        ),
        (r#"{"prompt":"hi","max_gen_len":256}"#, Some(256)),
        (
            r#"{"messages":[],"inferenceConfig":{"maxTokens":300}}"#,
            Some(300),
        ),
        (
            r#"{"messages":[],"inferenceConfig":{"max_new_tokens":200}}"#,
            Some(200),
        ),
        (
            r#"{"prompt":"<s>[INST] hi [/INST]","max_tokens":100}"#,
            Some(100),
        ),
        (r#"{"message":"hi","max_tokens":50}"#, Some(50)),
        // Nothing said: the model's default applies.
        (r#"{"prompt":"hi","max_tokens":null}"#, None),
        // Several spellings: the largest.
        (r#"{"max_tokens":10,"max_gen_len":20}"#, Some(20)),
    ];
    for (body, expected) in cases {
        assert_eq!(
            convert::invoke_max_output_tokens(body.as_bytes()).unwrap(),
            expected,
            "{body}"
        );
    }
    assert_eq!(convert::invoke_max_output_tokens(b"{}").unwrap(), None);
}

#[test]
fn bad_bodies_name_the_field_and_position() {
    let error = convert::invoke_max_output_tokens(b"{\"max_tokens\": 10,,}").unwrap_err();
    assert_eq!(error.field, "body");
    assert!(
        error.description.contains("line 1 column 19"),
        "{}",
        error.description
    );
    let error = convert::invoke_max_output_tokens(b"").unwrap_err();
    assert_eq!(error.field, "body");
    let error = convert::invoke_max_output_tokens(b"[1,2]").unwrap_err();
    assert_eq!(error.field, "body");
    assert!(error.description.contains("JSON object"));

    for (body, field) in [
        (r#"{"max_tokens":"100"}"#, "body.max_tokens"),
        (r#"{"max_tokens":0}"#, "body.max_tokens"),
        (r#"{"max_tokens":-1}"#, "body.max_tokens"),
        (r#"{"max_tokens":10.5}"#, "body.max_tokens"),
        (
            r#"{"textGenerationConfig":{"maxTokenCount":true}}"#,
            "body.textGenerationConfig.maxTokenCount",
        ),
        (
            r#"{"inferenceConfig":{"maxTokens":-3}}"#,
            "body.inferenceConfig.maxTokens",
        ),
    ] {
        let error = convert::invoke_max_output_tokens(body.as_bytes()).unwrap_err();
        assert_eq!(error.field, field, "{body}");
        assert_eq!(error.kind, ViolationKind::Invalid);
    }
}

#[test]
fn invoke_input_estimates_count_strings_and_media() {
    // "user" (4) + "hello world!" (12) + "bedrock-2023-05-31" (18) = 34 bytes.
    let body = br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":100,
        "messages":[{"role":"user","content":"hello world!"}]}"#;
    assert_eq!(convert::invoke_estimate_input_tokens(body), 9);
    // An Anthropic base64 image counts as one image, not as its base64 text.
    let image = br#"{"messages":[{"role":"user","content":[
        {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"}},
        {"type":"text","text":"what"}]}]}"#;
    // strings: user(4) image(5) base64(6) image/png(9) text(4) what(4) = 32 -> 8, + 1600
    assert_eq!(convert::invoke_estimate_input_tokens(image), 8 + 1600);
    // Nova's bytes source likewise.
    let nova = br#"{"messages":[{"role":"user","content":[{"image":{"format":"png","source":{"bytes":"AAAA"}}}]}]}"#;
    // strings: user(4) png(3) = 7 -> 2, + 1600
    assert_eq!(convert::invoke_estimate_input_tokens(nova), 2 + 1600);
    // Not JSON: bytes / 4.
    assert_eq!(
        convert::invoke_estimate_input_tokens(b"not json at all!!"),
        5
    );
}

#[test]
fn stream_invocation_metrics_are_read_from_the_last_chunk() {
    let last = br#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{
        "inputTokenCount":12,"outputTokenCount":34,"invocationLatency":567,
        "firstByteLatency":89,"cacheReadInputTokenCount":5,"cacheWriteInputTokenCount":6}}"#;
    let metrics = convert::invoke_stream_metrics(last).unwrap();
    assert_eq!(
        metrics.usage,
        pb::TokenUsage {
            input_tokens: 12,
            output_tokens: 34,
            cache_read_input_tokens: 5,
            cache_write_input_tokens: 6,
        }
    );
    assert_eq!(metrics.latency_ms, 567);
    assert_eq!(metrics.first_byte_latency_ms, 89);
    let metadata = metrics.to_proto();
    assert_eq!(metadata.usage, Some(metrics.usage));
    assert_eq!(metadata.latency_ms, 567);

    // Without cache counts (older models): zero.
    let plain = br#"{"amazon-bedrock-invocationMetrics":{"inputTokenCount":1,"outputTokenCount":2,
        "invocationLatency":3,"firstByteLatency":4}}"#;
    let metrics = convert::invoke_stream_metrics(plain).unwrap();
    assert_eq!(metrics.usage.cache_read_input_tokens, 0);

    assert_eq!(
        convert::invoke_stream_metrics(br#"{"type":"content_block_delta","delta":{"text":"hi"}}"#),
        None
    );
    assert_eq!(convert::invoke_stream_metrics(b"\x00\x01 not json"), None);
}

// ---------------------------------------------------------------------------
// Responses.

fn sdk_usage() -> sdk::TokenUsage {
    sdk::TokenUsage::builder()
        .input_tokens(10)
        .output_tokens(20)
        .total_tokens(10 + 20 + 300 + 40)
        .cache_read_input_tokens(300)
        .cache_write_input_tokens(40)
        .build()
        .unwrap()
}

#[test]
fn usage_keeps_bedrocks_four_kinds_apart() {
    assert_eq!(
        convert::usage_to_proto(&sdk_usage()),
        pb::TokenUsage {
            input_tokens: 10,
            output_tokens: 20,
            cache_read_input_tokens: 300,
            cache_write_input_tokens: 40,
        }
    );
    let no_cache = sdk::TokenUsage::builder()
        .input_tokens(7)
        .output_tokens(8)
        .total_tokens(15)
        .build()
        .unwrap();
    let usage = convert::usage_to_proto(&no_cache);
    assert_eq!(
        (
            usage.cache_read_input_tokens,
            usage.cache_write_input_tokens
        ),
        (0, 0)
    );
}

fn sdk_reply() -> sdk::Message {
    sdk::Message::builder()
        .role(sdk::ConversationRole::Assistant)
        .content(sdk::ContentBlock::ReasoningContent(
            sdk::ReasoningContentBlock::ReasoningText(
                sdk::ReasoningTextBlock::builder()
                    .text("Let me check.")
                    .signature("sig")
                    .build()
                    .unwrap(),
            ),
        ))
        .content(sdk::ContentBlock::Text("Checking the weather.".to_owned()))
        .content(sdk::ContentBlock::ToolUse(
            sdk::ToolUseBlock::builder()
                .tool_use_id("tu-1")
                .name("get_weather")
                .input(Document::Object(HashMap::from([(
                    "city".to_owned(),
                    Document::String("Paris".to_owned()),
                )])))
                .build()
                .unwrap(),
        ))
        .build()
        .unwrap()
}

#[test]
fn a_converse_output_becomes_a_converse_response() {
    let output = ConverseOutput::builder()
        .output(sdk::ConverseOutput::Message(sdk_reply()))
        .stop_reason(sdk::StopReason::ToolUse)
        .usage(sdk_usage())
        .metrics(
            sdk::ConverseMetrics::builder()
                .latency_ms(321)
                .build()
                .unwrap(),
        )
        .additional_model_response_fields(Document::Object(HashMap::from([(
            "stop_sequence".to_owned(),
            Document::Null,
        )])))
        .build()
        .unwrap();
    let response = convert::converse_response(&output);
    let reply = response.output_message.unwrap();
    assert_eq!(reply.role, pb::ConversationRole::Assistant as i32);
    assert_eq!(
        reply.content,
        vec![
            block(Block::ReasoningContent(pb::ReasoningContentBlock {
                content: Some(pb::reasoning_content_block::Content::ReasoningText(
                    pb::ReasoningText {
                        text: "Let me check.".to_owned(),
                        signature: "sig".to_owned(),
                    }
                )),
            })),
            text("Checking the weather."),
            block(Block::ToolUse(pb::ToolUseBlock {
                tool_use_id: "tu-1".to_owned(),
                name: "get_weather".to_owned(),
                input: Some(object(vec![("city", string("Paris"))])),
            })),
        ]
    );
    assert_eq!(response.stop_reason, pb::StopReason::ToolUse as i32);
    assert_eq!(response.usage.unwrap().cache_read_input_tokens, 300);
    assert_eq!(response.metrics.unwrap().latency_ms, 321);
    assert_eq!(
        response.additional_model_response_fields,
        Some(object(vec![("stop_sequence", null())]))
    );
    assert!(response.metering.is_none());
}

#[test]
fn stop_reasons_map_and_unknown_ones_are_unspecified() {
    let cases = [
        ("end_turn", pb::StopReason::EndTurn),
        ("tool_use", pb::StopReason::ToolUse),
        ("max_tokens", pb::StopReason::MaxTokens),
        ("stop_sequence", pb::StopReason::StopSequence),
        ("guardrail_intervened", pb::StopReason::GuardrailIntervened),
        ("content_filtered", pb::StopReason::ContentFiltered),
        (
            "model_context_window_exceeded",
            pb::StopReason::ModelContextWindowExceeded,
        ),
        ("malformed_model_output", pb::StopReason::Unspecified),
        ("malformed_tool_use", pb::StopReason::Unspecified),
        ("a_reason_from_the_future", pb::StopReason::Unspecified),
    ];
    for (wire, expected) in cases {
        assert_eq!(
            convert::proto_stop_reason(&sdk::StopReason::from(wire)),
            expected,
            "{wire}"
        );
    }
    // Through a whole response.
    let output = ConverseOutput::builder()
        .stop_reason(sdk::StopReason::from("a_reason_from_the_future"))
        .build()
        .unwrap();
    let response = convert::converse_response(&output);
    assert_eq!(response.stop_reason, pb::StopReason::Unspecified as i32);
    assert!(response.output_message.is_none());
    assert!(response.usage.is_none());
}

fn event(e: &sdk::ConverseStreamOutput) -> Option<Event> {
    convert::stream_event(e).map(|r| r.event.unwrap())
}

#[test]
fn stream_events_map_one_to_one() {
    let start = sdk::ConverseStreamOutput::MessageStart(
        sdk::MessageStartEvent::builder()
            .role(sdk::ConversationRole::Assistant)
            .build()
            .unwrap(),
    );
    assert_eq!(
        event(&start),
        Some(Event::MessageStart(pb::MessageStartEvent {
            role: pb::ConversationRole::Assistant as i32
        }))
    );

    let tool_start = sdk::ConverseStreamOutput::ContentBlockStart(
        sdk::ContentBlockStartEvent::builder()
            .content_block_index(1)
            .start(sdk::ContentBlockStart::ToolUse(
                sdk::ToolUseBlockStart::builder()
                    .tool_use_id("tu-1")
                    .name("get_weather")
                    .build()
                    .unwrap(),
            ))
            .build()
            .unwrap(),
    );
    assert_eq!(
        event(&tool_start),
        Some(Event::ContentBlockStart(pb::ContentBlockStartEvent {
            content_block_index: 1,
            start: Some(pb::content_block_start_event::Start::ToolUse(
                pb::ToolUseBlockStart {
                    tool_use_id: "tu-1".to_owned(),
                    name: "get_weather".to_owned(),
                }
            )),
        }))
    );

    let delta = |index: i32, delta: sdk::ContentBlockDelta| {
        sdk::ConverseStreamOutput::ContentBlockDelta(
            sdk::ContentBlockDeltaEvent::builder()
                .content_block_index(index)
                .delta(delta)
                .build()
                .unwrap(),
        )
    };
    use pb::content_block_delta_event::Delta;
    use pb::reasoning_content_block_delta::Delta as ReasoningDelta;
    let cases = [
        (
            delta(0, sdk::ContentBlockDelta::Text("Hel".to_owned())),
            Delta::Text("Hel".to_owned()),
            3,
        ),
        (
            delta(
                1,
                sdk::ContentBlockDelta::ToolUse(
                    sdk::ToolUseBlockDelta::builder()
                        .input(r#"{"city":"#)
                        .build()
                        .unwrap(),
                ),
            ),
            Delta::ToolUse(pb::ToolUseBlockDelta {
                input: r#"{"city":"#.to_owned(),
            }),
            8,
        ),
        (
            delta(
                2,
                sdk::ContentBlockDelta::ReasoningContent(sdk::ReasoningContentBlockDelta::Text(
                    "hmm".to_owned(),
                )),
            ),
            Delta::ReasoningContent(pb::ReasoningContentBlockDelta {
                delta: Some(ReasoningDelta::Text("hmm".to_owned())),
            }),
            3,
        ),
        (
            delta(
                2,
                sdk::ContentBlockDelta::ReasoningContent(
                    sdk::ReasoningContentBlockDelta::Signature("sig".to_owned()),
                ),
            ),
            Delta::ReasoningContent(pb::ReasoningContentBlockDelta {
                delta: Some(ReasoningDelta::Signature("sig".to_owned())),
            }),
            0,
        ),
        (
            delta(
                2,
                sdk::ContentBlockDelta::ReasoningContent(
                    sdk::ReasoningContentBlockDelta::RedactedContent(aws_smithy_types::Blob::new(
                        vec![9, 9],
                    )),
                ),
            ),
            Delta::ReasoningContent(pb::ReasoningContentBlockDelta {
                delta: Some(ReasoningDelta::RedactedContent(vec![9, 9])),
            }),
            2,
        ),
    ];
    for (sdk_event, expected, bytes) in cases {
        let Some(Event::ContentBlockDelta(mapped)) = event(&sdk_event) else {
            panic!("not a delta: {sdk_event:?}");
        };
        assert_eq!(mapped.delta, Some(expected));
        assert_eq!(convert::delta_bytes(&sdk_event), bytes);
    }

    let stop = sdk::ConverseStreamOutput::ContentBlockStop(
        sdk::ContentBlockStopEvent::builder()
            .content_block_index(1)
            .build()
            .unwrap(),
    );
    assert_eq!(
        event(&stop),
        Some(Event::ContentBlockStop(pb::ContentBlockStopEvent {
            content_block_index: 1
        }))
    );

    let message_stop = sdk::ConverseStreamOutput::MessageStop(
        sdk::MessageStopEvent::builder()
            .stop_reason(sdk::StopReason::from("brand_new_reason"))
            .additional_model_response_fields(Document::Object(HashMap::from([(
                "n".to_owned(),
                Document::Number(Number::PosInt(3)),
            )])))
            .build()
            .unwrap(),
    );
    assert_eq!(
        event(&message_stop),
        Some(Event::MessageStop(pb::MessageStopEvent {
            stop_reason: pb::StopReason::Unspecified as i32,
            additional_model_response_fields: Some(object(vec![("n", number(3.0))])),
        }))
    );

    let metadata = sdk::ConverseStreamOutput::Metadata(
        sdk::ConverseStreamMetadataEvent::builder()
            .usage(sdk_usage())
            .metrics(
                sdk::ConverseStreamMetrics::builder()
                    .latency_ms(42)
                    .build()
                    .unwrap(),
            )
            .build(),
    );
    assert_eq!(
        event(&metadata),
        Some(Event::Metadata(pb::ConverseStreamMetadataEvent {
            usage: Some(pb::TokenUsage {
                input_tokens: 10,
                output_tokens: 20,
                cache_read_input_tokens: 300,
                cache_write_input_tokens: 40,
            }),
            metrics: Some(pb::ConverseMetrics { latency_ms: 42 }),
        }))
    );
    assert_eq!(convert::delta_bytes(&metadata), 0);
}

#[test]
fn stream_events_without_a_contract_field_are_skipped() {
    let citation = sdk::ConverseStreamOutput::ContentBlockDelta(
        sdk::ContentBlockDeltaEvent::builder()
            .content_block_index(0)
            .delta(sdk::ContentBlockDelta::Citation(
                sdk::CitationsDelta::builder().title("source").build(),
            ))
            .build()
            .unwrap(),
    );
    assert_eq!(event(&citation), None);
    assert_eq!(convert::delta_bytes(&citation), 0);

    let image_start = sdk::ConverseStreamOutput::ContentBlockStart(
        sdk::ContentBlockStartEvent::builder()
            .content_block_index(0)
            .start(sdk::ContentBlockStart::Image(
                sdk::ImageBlockStart::builder()
                    .format(sdk::ImageFormat::Png)
                    .build()
                    .unwrap(),
            ))
            .build()
            .unwrap(),
    );
    assert_eq!(event(&image_start), None);

    let no_delta = sdk::ConverseStreamOutput::ContentBlockDelta(
        sdk::ContentBlockDeltaEvent::builder()
            .content_block_index(0)
            .build()
            .unwrap(),
    );
    assert_eq!(event(&no_delta), None);
}

#[test]
fn reply_blocks_without_a_contract_field_are_dropped_not_failed() {
    let s3_image = sdk::ContentBlock::Image(
        sdk::ImageBlock::builder()
            .format(sdk::ImageFormat::Png)
            .source(sdk::ImageSource::S3Location(
                sdk::S3Location::builder().uri("s3://b/k").build().unwrap(),
            ))
            .build()
            .unwrap(),
    );
    assert_eq!(convert::proto_content_block(&s3_image), None);

    // A reply with citations keeps its text.
    let cited = sdk::ContentBlock::CitationsContent(
        sdk::CitationsContentBlock::builder()
            .content(sdk::CitationGeneratedContent::Text("Paris is ".to_owned()))
            .content(sdk::CitationGeneratedContent::Text("sunny.".to_owned()))
            .build(),
    );
    assert_eq!(
        convert::proto_content_block(&cited),
        Some(text("Paris is sunny."))
    );

    let message = sdk::Message::builder()
        .role(sdk::ConversationRole::Assistant)
        .content(s3_image)
        .content(sdk::ContentBlock::Text("kept".to_owned()))
        .build()
        .unwrap();
    assert_eq!(convert::proto_message(&message).content, vec![text("kept")]);
}
