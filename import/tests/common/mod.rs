//! Helpers of the importer's tests: the fixture directory, and a small builder of ONNX models
//! made with the importer's own protobuf structs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bnfold_import::onnx::proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto, attribute_type, data_type,
};
use prost::Message;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn encode(m: &ModelProto) -> Vec<u8> {
    m.encode_to_vec()
}

/// An f32 tensor in raw_data.
pub fn f32_tensor(name: &str, dims: &[i64], vals: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        raw_data: vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A graph of one input `x` of `[batch, width]`, built node by node.
pub struct GraphBuilder {
    pub width: i64,
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
    seed: u32,
}

impl GraphBuilder {
    pub fn new(width: i64) -> Self {
        GraphBuilder {
            width,
            nodes: Vec::new(),
            inits: Vec::new(),
            seed: 1,
        }
    }

    /// Deterministic values in [-1, 1).
    pub fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.seed = self.seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((self.seed >> 8) % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    pub fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: attribute_type::INT,
            i: v,
            ..Default::default()
        }
    }

    pub fn float(name: &str, v: f32) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: attribute_type::FLOAT,
            f: v,
            ..Default::default()
        }
    }

    pub fn float_const(&mut self, name: &str, dims: &[i64], vals: &[f32]) {
        self.inits.push(f32_tensor(name, dims, vals));
    }

    pub fn int_const(&mut self, name: &str, vals: &[i64]) {
        self.inits.push(TensorProto {
            name: name.into(),
            dims: vec![vals.len() as i64],
            data_type: data_type::INT64,
            int64_data: vals.to_vec(),
            ..Default::default()
        });
    }

    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.iter().map(|s| (*s).into()).collect(),
            output: outputs.iter().map(|s| (*s).into()).collect(),
            attribute: attrs,
            ..Default::default()
        });
    }

    pub fn node_in(
        &mut self,
        domain: &str,
        op: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
    ) {
        self.node(op, name, inputs, outputs, vec![]);
        self.nodes.last_mut().unwrap().domain = domain.into();
    }

    /// `Gemm(input, NAME.weight [out, in], NAME.bias [out], transB=1)`.
    pub fn gemm(&mut self, name: &str, input: &str, output: &str, inp: usize, out: usize) {
        let w = self.values(out * inp);
        let b = self.values(out);
        let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
        self.float_const(&wn, &[out as i64, inp as i64], &w);
        self.float_const(&bn, &[out as i64], &b);
        self.node(
            "Gemm",
            name,
            &[input, &wn, &bn],
            &[output],
            vec![Self::int("transB", 1)],
        );
    }

    /// `BatchNormalization` of `f` features with positive variances.
    pub fn batch_norm(
        &mut self,
        name: &str,
        input: &str,
        output: &str,
        f: usize,
        attrs: Vec<AttributeProto>,
    ) {
        let names: Vec<String> = ["scale", "bias", "mean", "var"]
            .iter()
            .map(|s| format!("{name}.{s}"))
            .collect();
        for (k, n) in names.iter().enumerate() {
            let mut v = self.values(f);
            if k == 3 {
                v.iter_mut().for_each(|x| *x = x.abs() + 0.5);
            }
            self.float_const(n, &[f as i64], &v);
        }
        let refs: Vec<&str> = std::iter::once(input)
            .chain(names.iter().map(String::as_str))
            .collect();
        self.node("BatchNormalization", name, &refs, &[output], attrs);
    }

    pub fn model(&self, output: &str) -> ModelProto {
        let value = |name: &str, dims: Vec<Dimension>| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TypeProtoTensor {
                    elem_type: data_type::FLOAT,
                    shape: Some(TensorShapeProto { dim: dims }),
                }),
            }),
        };
        let batch = Dimension {
            dim_value: None,
            dim_param: Some("batch".into()),
        };
        let width = Dimension {
            dim_value: Some(self.width),
            dim_param: None,
        };
        ModelProto {
            ir_version: 8,
            producer_name: "bnfold-import tests".into(),
            producer_version: "0".into(),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                node: self.nodes.clone(),
                name: "test".into(),
                initializer: self.inits.clone(),
                input: vec![value("x", vec![batch.clone(), width])],
                output: vec![value(output, vec![batch])],
            }),
        }
    }

    pub fn build(&self, output: &str) -> Vec<u8> {
        encode(&self.model(output))
    }
}
