//! The ONNX protobuf messages the importer reads, as hand-written `prost` structs.
//!
//! Only the messages and fields that converting a dense network needs are declared; prost skips
//! every other field without allocating (it checks each length against the bytes left and moves
//! on). Leaving out `AttributeProto.g`/`graphs` (subgraphs of `If`/`Loop`), `TypeProto`'s recursive
//! variants, sparse tensors, training info and functions also means nothing here recurses: a
//! node with subgraphs decodes as a node of an unsupported op type, and is refused as such.
//!
//! Each field's tag is checked against `import/proto/onnx.proto` (a copy of the ONNX 1.23.2
//! `onnx/onnx.proto`, proto2) by the test `tags_match_onnx_proto` below, which encodes every
//! declared field and compares the tag it writes with the one the `.proto` file gives that field's
//! name. To regenerate or extend: add the field here with the tag from `onnx.proto` and a line in
//! that test; if ONNX ever renumbered a field, the test fails against the new `onnx.proto` copy.
//!
//! Proto2 `optional` scalars are declared without presence (a missing field reads as 0 or empty),
//! which is how ONNX defines their defaults; where presence matters the importer uses
//! `AttributeProto.type` instead.

/// `onnx.ModelProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// IR version of the file format.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// Operator sets the graph uses.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Tool that wrote the file (`pytorch`, `tf2onnx`, ...).
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// Its version.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// The graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

/// `onnx.OperatorSetIdProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// Domain; empty or `ai.onnx` for the default operator set.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Version of the operator set.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `onnx.GraphProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// Nodes, in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Graph name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Inputs (older IR versions also list the initializers here).
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `onnx.NodeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// Input value names (an empty name is an omitted optional input).
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output value names.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Node name (may be empty).
    #[prost(string, tag = "3")]
    pub name: String,
    /// Operator.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Operator domain; empty or `ai.onnx` for the default one.
    #[prost(string, tag = "7")]
    pub domain: String,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

/// `onnx.AttributeProto` (without graphs, sparse tensors and type protos).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// Attribute name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `AttributeType`: 1 float, 2 int, 3 string, 4 tensor, 6 floats, 7 ints, ...
    #[prost(int32, tag = "20")]
    pub r#type: i32,
    /// Float value.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// Integer value.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// String value (bytes; UTF-8 by convention).
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    /// Tensor value (boxed: keeps the struct small for files of many attributes).
    #[prost(message, optional, boxed, tag = "5")]
    pub t: Option<Box<TensorProto>>,
    /// Float list.
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    /// Integer list.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

/// `AttributeProto.AttributeType` codes the importer reads.
pub mod attribute_type {
    /// `FLOAT`.
    pub const FLOAT: i32 = 1;
    /// `INT`.
    pub const INT: i32 = 2;
    /// `STRING`.
    pub const STRING: i32 = 3;
    /// `TENSOR`.
    pub const TENSOR: i32 = 4;
    /// `FLOATS`.
    pub const FLOATS: i32 = 6;
    /// `INTS`.
    pub const INTS: i32 = 7;
}

/// `onnx.ValueInfoProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// Value name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `onnx.TypeProto`, with only the `tensor_type` member of its `oneof` (the others are skipped).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// A tensor type.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TypeProtoTensor>,
}

/// `onnx.TypeProto.Tensor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProtoTensor {
    /// `TensorProto.DataType` of the elements.
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// Shape, if known.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `onnx.TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// Dimensions, outermost first.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `onnx.TensorShapeProto.Dimension`: a known size or a symbolic name (its `oneof`, flattened).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    /// Known size.
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    /// Symbolic size (`batch`, `unk__6`).
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// `onnx.TensorProto` (without segments, strings and uint64 data).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// Shape.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// `TensorProto.DataType`.
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Typed storage of FLOAT (and COMPLEX64).
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    /// Typed storage of INT32, INT16, INT8, UINT16, UINT8, BOOL, FLOAT16 and BFLOAT16 (one element
    /// per int32, the 16 bits of a half-precision value in the low half).
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    /// Typed storage of INT64.
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    /// Name (initializers: the value name).
    #[prost(string, tag = "8")]
    pub name: String,
    /// Little-endian packed elements, an alternative to the typed fields.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// Typed storage of DOUBLE (and COMPLEX128).
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    /// `location`, `offset`, `length`, `checksum` of data stored in another file.
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// 0 `DEFAULT` (in this message), 1 `EXTERNAL` (see `external_data`).
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

/// `TensorProto.DataType` codes the importer names.
pub mod data_type {
    /// `FLOAT` (f32).
    pub const FLOAT: i32 = 1;
    /// `INT32`.
    pub const INT32: i32 = 6;
    /// `INT64`.
    pub const INT64: i32 = 7;
    /// `FLOAT16`.
    pub const FLOAT16: i32 = 10;
    /// `DOUBLE`.
    pub const DOUBLE: i32 = 11;
    /// `BFLOAT16`.
    pub const BFLOAT16: i32 = 16;

    /// The name `onnx.proto` gives a code, for messages.
    pub fn name(code: i32) -> String {
        let known = [
            "UNDEFINED",
            "FLOAT",
            "UINT8",
            "INT8",
            "UINT16",
            "INT16",
            "INT32",
            "INT64",
            "STRING",
            "BOOL",
            "FLOAT16",
            "DOUBLE",
            "UINT32",
            "UINT64",
            "COMPLEX64",
            "COMPLEX128",
            "BFLOAT16",
        ];
        usize::try_from(code)
            .ok()
            .and_then(|c| known.get(c))
            .map_or_else(|| format!("data type {code}"), |s| (*s).to_owned())
    }
}

/// `TensorProto.DataLocation.EXTERNAL`.
pub const DATA_LOCATION_EXTERNAL: i32 = 1;

/// `onnx.StringStringEntryProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// `field name -> tag` of each `message NAME { ... }` block of `onnx.proto` (nested messages
    /// are keyed `Outer.Inner`). A deliberately small parser: it relies on the file's regular
    /// layout (one field per line); fields inside a `oneof` belong to the enclosing message, enum
    /// values (one word before ` = `) are skipped.
    fn proto_tags() -> std::collections::HashMap<(String, String), u32> {
        let text = include_str!("../../proto/onnx.proto");
        let mut stack: Vec<(String, i32)> = Vec::new();
        let mut depth = 0i32;
        let mut out = std::collections::HashMap::new();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("").trim();
            if let Some(rest) = code.strip_prefix("message ") {
                let name = rest.trim_end_matches('{').trim().to_owned();
                let full = match stack.last() {
                    Some((outer, _)) => format!("{outer}.{name}"),
                    None => name,
                };
                stack.push((full, depth));
            } else if let Some(eq) = code.find(" = ")
                && let Some((_, message_depth)) = stack.last()
                && depth > *message_depth
            {
                let lhs: Vec<&str> = code[..eq].split_whitespace().collect();
                let rhs = code[eq + 3..].trim_end_matches(';');
                let tag = rhs.split_whitespace().next().unwrap_or("");
                if let (Some(field), Ok(tag)) = (lhs.last(), tag.parse::<u32>())
                    && lhs.len() >= 2
                {
                    let message = stack.last().expect("checked above").0.clone();
                    out.insert((message, (*field).to_owned()), tag);
                }
            }
            depth += code.matches('{').count() as i32;
            depth -= code.matches('}').count() as i32;
            while stack.last().is_some_and(|(_, d)| depth <= *d) {
                stack.pop();
            }
        }
        out
    }

    /// The field number of the first key in an encoded message.
    fn first_tag(bytes: &[u8]) -> u32 {
        let mut key = 0u64;
        for (i, b) in bytes.iter().enumerate() {
            key |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        (key >> 3) as u32
    }

    fn enc<M: Message>(m: M) -> u32 {
        first_tag(&m.encode_to_vec())
    }

    #[test]
    fn tags_match_onnx_proto() {
        let tags = proto_tags();
        let s = || "x".to_owned();
        let t = || TensorProto {
            name: s(),
            ..Default::default()
        };
        let cases: Vec<(&str, &str, u32)> = vec![
            (
                "ModelProto",
                "ir_version",
                enc(ModelProto {
                    ir_version: 1,
                    ..Default::default()
                }),
            ),
            (
                "ModelProto",
                "opset_import",
                enc(ModelProto {
                    opset_import: vec![OperatorSetIdProto::default()],
                    ..Default::default()
                }),
            ),
            (
                "ModelProto",
                "producer_name",
                enc(ModelProto {
                    producer_name: s(),
                    ..Default::default()
                }),
            ),
            (
                "ModelProto",
                "producer_version",
                enc(ModelProto {
                    producer_version: s(),
                    ..Default::default()
                }),
            ),
            (
                "ModelProto",
                "graph",
                enc(ModelProto {
                    graph: Some(GraphProto::default()),
                    ..Default::default()
                }),
            ),
            (
                "OperatorSetIdProto",
                "domain",
                enc(OperatorSetIdProto {
                    domain: s(),
                    ..Default::default()
                }),
            ),
            (
                "OperatorSetIdProto",
                "version",
                enc(OperatorSetIdProto {
                    version: 1,
                    ..Default::default()
                }),
            ),
            (
                "GraphProto",
                "node",
                enc(GraphProto {
                    node: vec![NodeProto::default()],
                    ..Default::default()
                }),
            ),
            (
                "GraphProto",
                "name",
                enc(GraphProto {
                    name: s(),
                    ..Default::default()
                }),
            ),
            (
                "GraphProto",
                "initializer",
                enc(GraphProto {
                    initializer: vec![t()],
                    ..Default::default()
                }),
            ),
            (
                "GraphProto",
                "input",
                enc(GraphProto {
                    input: vec![ValueInfoProto::default()],
                    ..Default::default()
                }),
            ),
            (
                "GraphProto",
                "output",
                enc(GraphProto {
                    output: vec![ValueInfoProto::default()],
                    ..Default::default()
                }),
            ),
            (
                "NodeProto",
                "input",
                enc(NodeProto {
                    input: vec![s()],
                    ..Default::default()
                }),
            ),
            (
                "NodeProto",
                "output",
                enc(NodeProto {
                    output: vec![s()],
                    ..Default::default()
                }),
            ),
            (
                "NodeProto",
                "name",
                enc(NodeProto {
                    name: s(),
                    ..Default::default()
                }),
            ),
            (
                "NodeProto",
                "op_type",
                enc(NodeProto {
                    op_type: s(),
                    ..Default::default()
                }),
            ),
            (
                "NodeProto",
                "domain",
                enc(NodeProto {
                    domain: s(),
                    ..Default::default()
                }),
            ),
            (
                "NodeProto",
                "attribute",
                enc(NodeProto {
                    attribute: vec![AttributeProto::default()],
                    ..Default::default()
                }),
            ),
            (
                "AttributeProto",
                "name",
                enc(AttributeProto {
                    name: s(),
                    ..Default::default()
                }),
            ),
            (
                "AttributeProto",
                "type",
                enc(AttributeProto {
                    r#type: 1,
                    ..Default::default()
                }),
            ),
            (
                "AttributeProto",
                "f",
                enc(AttributeProto {
                    f: 1.0,
                    ..Default::default()
                }),
            ),
            (
                "AttributeProto",
                "i",
                enc(AttributeProto {
                    i: 1,
                    ..Default::default()
                }),
            ),
            (
                "AttributeProto",
                "s",
                enc(AttributeProto {
                    s: vec![1],
                    ..Default::default()
                }),
            ),
            (
                "AttributeProto",
                "t",
                enc(AttributeProto {
                    t: Some(Box::new(t())),
                    ..Default::default()
                }),
            ),
            (
                "AttributeProto",
                "floats",
                enc(AttributeProto {
                    floats: vec![1.0],
                    ..Default::default()
                }),
            ),
            (
                "AttributeProto",
                "ints",
                enc(AttributeProto {
                    ints: vec![1],
                    ..Default::default()
                }),
            ),
            (
                "ValueInfoProto",
                "name",
                enc(ValueInfoProto {
                    name: s(),
                    ..Default::default()
                }),
            ),
            (
                "ValueInfoProto",
                "type",
                enc(ValueInfoProto {
                    r#type: Some(TypeProto::default()),
                    ..Default::default()
                }),
            ),
            (
                "TypeProto",
                "tensor_type",
                enc(TypeProto {
                    tensor_type: Some(TypeProtoTensor::default()),
                }),
            ),
            (
                "TypeProto.Tensor",
                "elem_type",
                enc(TypeProtoTensor {
                    elem_type: 1,
                    ..Default::default()
                }),
            ),
            (
                "TypeProto.Tensor",
                "shape",
                enc(TypeProtoTensor {
                    shape: Some(TensorShapeProto::default()),
                    ..Default::default()
                }),
            ),
            (
                "TensorShapeProto",
                "dim",
                enc(TensorShapeProto {
                    dim: vec![Dimension::default()],
                }),
            ),
            (
                "TensorShapeProto.Dimension",
                "dim_value",
                enc(Dimension {
                    dim_value: Some(1),
                    dim_param: None,
                }),
            ),
            (
                "TensorShapeProto.Dimension",
                "dim_param",
                enc(Dimension {
                    dim_value: None,
                    dim_param: Some(s()),
                }),
            ),
            (
                "TensorProto",
                "dims",
                enc(TensorProto {
                    dims: vec![1],
                    ..Default::default()
                }),
            ),
            (
                "TensorProto",
                "data_type",
                enc(TensorProto {
                    data_type: 1,
                    ..Default::default()
                }),
            ),
            (
                "TensorProto",
                "float_data",
                enc(TensorProto {
                    float_data: vec![1.0],
                    ..Default::default()
                }),
            ),
            (
                "TensorProto",
                "int32_data",
                enc(TensorProto {
                    int32_data: vec![1],
                    ..Default::default()
                }),
            ),
            (
                "TensorProto",
                "int64_data",
                enc(TensorProto {
                    int64_data: vec![1],
                    ..Default::default()
                }),
            ),
            ("TensorProto", "name", enc(t())),
            (
                "TensorProto",
                "raw_data",
                enc(TensorProto {
                    raw_data: vec![1],
                    ..Default::default()
                }),
            ),
            (
                "TensorProto",
                "double_data",
                enc(TensorProto {
                    double_data: vec![1.0],
                    ..Default::default()
                }),
            ),
            (
                "TensorProto",
                "external_data",
                enc(TensorProto {
                    external_data: vec![StringStringEntryProto::default()],
                    ..Default::default()
                }),
            ),
            (
                "TensorProto",
                "data_location",
                enc(TensorProto {
                    data_location: 1,
                    ..Default::default()
                }),
            ),
            (
                "StringStringEntryProto",
                "key",
                enc(StringStringEntryProto {
                    key: s(),
                    ..Default::default()
                }),
            ),
            (
                "StringStringEntryProto",
                "value",
                enc(StringStringEntryProto {
                    value: s(),
                    ..Default::default()
                }),
            ),
        ];
        for (message, field, ours) in cases {
            let theirs = tags.get(&(message.to_owned(), field.to_owned()));
            assert_eq!(
                theirs,
                Some(&ours),
                "{message}.{field}: onnx.proto says {theirs:?}, our struct writes tag {ours}"
            );
        }
        // The parser itself found the file's fields (not an empty map that checks nothing).
        assert_eq!(
            tags.get(&("TensorProto".into(), "raw_data".into())),
            Some(&9)
        );
        assert!(tags.len() > 100, "{} fields parsed", tags.len());
    }

    #[test]
    fn enum_codes_match_onnx_proto() {
        let text = include_str!("../../proto/onnx.proto");
        for (name, code) in [
            ("FLOAT", data_type::FLOAT),
            ("INT32", data_type::INT32),
            ("INT64", data_type::INT64),
            ("FLOAT16", data_type::FLOAT16),
            ("DOUBLE", data_type::DOUBLE),
            ("BFLOAT16", data_type::BFLOAT16),
            ("EXTERNAL", DATA_LOCATION_EXTERNAL),
            ("TENSOR", attribute_type::TENSOR),
            ("FLOATS", attribute_type::FLOATS),
            ("INTS", attribute_type::INTS),
            ("STRING", attribute_type::STRING),
            ("INT", attribute_type::INT),
        ] {
            let line = format!("{name} = {code};");
            assert!(
                text.lines().any(|l| l.trim().starts_with(&line)),
                "onnx.proto has no line `{line}`"
            );
        }
        assert_eq!(data_type::name(10), "FLOAT16");
    }
}
