//! `google.protobuf.Struct`/`Value` <-> `aws_smithy_types::Document`: the JSON
//! values of tool schemas, tool inputs, tool results and model-specific fields.
//!
//! Numbers: protobuf has only doubles; Bedrock's JSON keeps integers apart
//! (the SDK writes `Number::Float(100.0)` as `100.0`, which a model parameter
//! like Anthropic's `top_k` may refuse). So a double with no fractional part
//! within +-2^53 (where doubles are exact) becomes an integer, and any other
//! double stays a float. The way back turns integers into doubles, exact up
//! to 2^53 (beyond, protobuf itself cannot hold them).

use std::collections::{BTreeMap, HashMap};

use aws_smithy_types::{Document, Number};
use prost_types::value::Kind;
use prost_types::{ListValue, NullValue, Struct, Value};

/// Largest magnitude below which every integer is an exact double: 2^53.
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

/// A `Struct` as a JSON object document.
#[must_use]
pub fn struct_to_document(value: &Struct) -> Document {
    Document::Object(
        value
            .fields
            .iter()
            .map(|(key, value)| (key.clone(), value_to_document(value)))
            .collect::<HashMap<_, _>>(),
    )
}

/// A `Value` as a document; an unset kind is JSON `null`.
#[must_use]
pub fn value_to_document(value: &Value) -> Document {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Document::Null,
        Some(Kind::NumberValue(number)) => number_to_document(*number),
        Some(Kind::StringValue(text)) => Document::String(text.clone()),
        Some(Kind::BoolValue(flag)) => Document::Bool(*flag),
        Some(Kind::StructValue(object)) => struct_to_document(object),
        Some(Kind::ListValue(list)) => {
            Document::Array(list.values.iter().map(value_to_document).collect())
        }
    }
}

fn number_to_document(number: f64) -> Document {
    // `fract` of an infinity or NaN is NaN, so those stay floats (and are
    // refused by validation before they get here).
    if number.fract() == 0.0 && number.abs() <= EXACT_INTEGER_LIMIT {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "integral and within +-2^53: the cast is exact"
        )]
        let integer = number as i64;
        match u64::try_from(integer) {
            Ok(positive) => Document::Number(Number::PosInt(positive)),
            Err(_) => Document::Number(Number::NegInt(integer)),
        }
    } else {
        Document::Number(Number::Float(number))
    }
}

/// A document as a `Value`.
#[must_use]
pub fn document_to_value(document: &Document) -> Value {
    let kind = match document {
        Document::Null => Kind::NullValue(NullValue::NullValue as i32),
        Document::Bool(flag) => Kind::BoolValue(*flag),
        Document::String(text) => Kind::StringValue(text.clone()),
        Document::Number(number) => Kind::NumberValue(number_to_f64(*number)),
        Document::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(document_to_value).collect(),
        }),
        Document::Object(fields) => Kind::StructValue(object_to_struct(fields)),
    };
    Value { kind: Some(kind) }
}

/// An object document as a `Struct`; `None` for any other document (a
/// `Struct` is always an object).
#[must_use]
pub fn document_to_struct(document: &Document) -> Option<Struct> {
    match document {
        Document::Object(fields) => Some(object_to_struct(fields)),
        Document::Null
        | Document::Bool(_)
        | Document::String(_)
        | Document::Number(_)
        | Document::Array(_) => None,
    }
}

fn object_to_struct(fields: &HashMap<String, Document>) -> Struct {
    Struct {
        fields: fields
            .iter()
            .map(|(key, value)| (key.clone(), document_to_value(value)))
            .collect::<BTreeMap<_, _>>(),
    }
}

#[allow(
    clippy::cast_precision_loss,
    reason = "protobuf numbers are doubles; integers beyond 2^53 cannot be held exactly"
)]
fn number_to_f64(number: Number) -> f64 {
    match number {
        Number::PosInt(n) => n as f64,
        Number::NegInt(n) => n as f64,
        Number::Float(n) => n,
    }
}

/// The path of the first number in `value` that JSON cannot carry (NaN or an
/// infinity), `prefix` naming `value` itself; for validation.
pub(crate) fn non_finite_in_struct(value: &Struct, prefix: &str) -> Option<String> {
    value
        .fields
        .iter()
        .find_map(|(key, item)| non_finite_in_value(item, &format!("{prefix}.{key}")))
}

pub(crate) fn non_finite_in_value(value: &Value, path: &str) -> Option<String> {
    match &value.kind {
        Some(Kind::NumberValue(number)) if !number.is_finite() => Some(path.to_owned()),
        Some(Kind::StructValue(object)) => non_finite_in_struct(object, path),
        Some(Kind::ListValue(list)) => list
            .values
            .iter()
            .enumerate()
            .find_map(|(i, item)| non_finite_in_value(item, &format!("{path}[{i}]"))),
        None
        | Some(
            Kind::NumberValue(_) | Kind::NullValue(_) | Kind::StringValue(_) | Kind::BoolValue(_),
        ) => None,
    }
}

/// The compact JSON text of a `Struct` (object keys sorted), for token
/// estimates.
pub(crate) fn struct_json_len(value: &Struct) -> usize {
    serde_json::to_string(&struct_to_json(value)).map_or(0, |text| text.len())
}

/// The compact JSON length of a `Value`.
pub(crate) fn value_json_len(value: &Value) -> usize {
    serde_json::to_string(&value_to_json(value)).map_or(0, |text| text.len())
}

fn struct_to_json(value: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        value
            .fields
            .iter()
            .map(|(key, item)| (key.clone(), value_to_json(item)))
            .collect(),
    )
}

fn value_to_json(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        // A non-finite number has no JSON form: counted as null.
        Some(Kind::NumberValue(number)) => serde_json::Number::from_f64(*number)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(text)) => serde_json::Value::String(text.clone()),
        Some(Kind::BoolValue(flag)) => serde_json::Value::Bool(*flag),
        Some(Kind::StructValue(object)) => struct_to_json(object),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(value_to_json).collect())
        }
    }
}
