//! Matching an ONNX graph to bnfold layers.
//!
//! 1. Every node whose inputs are all constant is folded into a constant (`Constant`, `Cast`,
//!    `Transpose`, `Identity`); a constant node of any other op is refused.
//! 2. From the one graph input, the chain of non-constant nodes is walked: at each step the nodes
//!    that consume the current value are matched against the supported patterns, which may span
//!    several nodes (`MatMul` + `Add`, `Mul` + `Add`, the GELU subgraphs).
//! 3. A node that does not match is recorded with the reason and the walk goes on past it where it
//!    can, so that one error lists every unsupported node; the walk must end at the one graph
//!    output, and every non-constant node must have been matched.

use std::collections::{HashMap, HashSet};

use bnfold::Activation;
use bnfold::format::DType;
use prost::Message;

use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, ValueInfoProto, attribute_type, data_type,
};
use super::tensor::{Const, ExternalBase, decode};
use crate::error::{ImportError, NodeList, Result, UnsupportedNode};
use crate::network::{Layer, LayerSpec, Network, Tensor};

/// Most nodes an elementwise subgraph (a GELU) may have; the tanh form has nine.
const MAX_REGION: usize = 24;

/// Decode an ONNX model and convert its graph. `base` resolves external data; `source_name`
/// goes into the metadata.
pub fn import(bytes: &[u8], base: ExternalBase, source_name: &str) -> Result<Network> {
    let model = ModelProto::decode(bytes)?;
    let graph = model.graph.as_ref().ok_or(ImportError::NoGraph)?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version);
    // The checker requires it (IR version 3 on), and the meaning of several ops' defaults
    // (Softmax's axis) depends on it: no guessing.
    let Some(opset) = opset else {
        return Err(ImportError::Graph(
            "the model imports no version of the default operator set (opset_import)".into(),
        ));
    };
    let mut g = Graph::new(graph, opset, base)?;
    let (input_features, layers, input_dtype) = g.walk()?;

    let mut metadata: Vec<(String, String)> = vec![
        (
            "producer".into(),
            format!(
                "bnfold convert (bnfold-import {})",
                env!("CARGO_PKG_VERSION")
            ),
        ),
        ("source_file".into(), source_name.to_owned()),
        ("source_format".into(), "onnx".into()),
    ];
    let producer = format!("{} {}", model.producer_name, model.producer_version);
    let producer = producer.trim();
    if !producer.is_empty() {
        metadata.push(("source_producer".into(), producer.to_owned()));
    }
    let framework = match model.producer_name.as_str() {
        "pytorch" => Some("pytorch"),
        // tf2onnx (and Keras 3's `model.export(format="onnx")`, which uses it) converts a
        // TensorFlow graph; whether it came from Keras is not recorded in the file.
        "tf2onnx" => Some("tensorflow"),
        "keras2onnx" => Some("keras"),
        _ => None,
    };
    if let Some(f) = framework {
        metadata.push(("source_framework".into(), f.into()));
    }
    metadata.push(("onnx_opset".into(), opset.to_string()));
    metadata.push(("onnx_ir_version".into(), model.ir_version.to_string()));
    if input_dtype != data_type::FLOAT {
        metadata.push(("source_input_dtype".into(), data_type::name(input_dtype)));
    }
    let mut net = Network {
        input_features,
        layers,
        metadata,
    };
    crate::add_bn_metadata(&mut net, framework == Some("pytorch"));
    Ok(net)
}

/// One element of the non-constant chain: what the current value is.
struct Cursor {
    /// Name of the current value.
    value: String,
    /// Its width (features), if known.
    width: Option<usize>,
    /// Whether it is known to be 2-D `[batch, features]`.
    rank2: bool,
}

struct Graph<'g> {
    nodes: &'g [NodeProto],
    opset: i64,
    consts: HashMap<&'g str, Const>,
    /// Value name -> the nodes that read it.
    consumers: HashMap<&'g str, Vec<usize>>,
    /// Value name -> the node that writes it.
    producer: HashMap<&'g str, usize>,
    /// Nodes matched (or folded, or already reported).
    done: Vec<bool>,
    unsupported: Vec<UnsupportedNode>,
    inputs: Vec<&'g ValueInfoProto>,
    outputs: &'g [ValueInfoProto],
    /// Names of the layers so far, to keep them unique.
    names: HashSet<String>,
}

/// A node's display name: its name, else its first output, else its op type and position.
fn node_name(n: &NodeProto, i: usize) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else if let Some(o) = n.output.first().filter(|o| !o.is_empty()) {
        o.clone()
    } else {
        format!("{}#{i}", n.op_type)
    }
}

fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

/// An integer attribute, or `default`; an attribute of the wrong type is an error.
fn attr_i(n: &NodeProto, name: &str, default: i64) -> Result<i64, String> {
    match attr(n, name) {
        None => Ok(default),
        Some(a) if a.r#type == attribute_type::INT || a.r#type == 0 => Ok(a.i),
        Some(_) => Err(format!("attribute '{name}' is not an integer")),
    }
}

/// A float attribute, or `default`.
fn attr_f(n: &NodeProto, name: &str, default: f32) -> Result<f32, String> {
    match attr(n, name) {
        None => Ok(default),
        Some(a) if a.r#type == attribute_type::FLOAT || a.r#type == 0 => Ok(a.f),
        Some(_) => Err(format!("attribute '{name}' is not a float")),
    }
}

/// A string attribute, or `default`.
fn attr_s(n: &NodeProto, name: &str, default: &str) -> Result<String, String> {
    match attr(n, name) {
        None => Ok(default.to_owned()),
        Some(a) if a.r#type == attribute_type::STRING || a.r#type == 0 => {
            String::from_utf8(a.s.clone()).map_err(|_| format!("attribute '{name}' is not UTF-8"))
        }
        Some(_) => Err(format!("attribute '{name}' is not a string")),
    }
}

fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// `eps` as stored in the file: ONNX keeps it as an f32 attribute (PyTorch's 1e-5 arrives as
/// 9.99999974738e-06); the f64 with the f32's shortest decimal form (1e-5) is what the framework
/// was given, and it rounds back to the same f32, which the unfolded path adds in f32.
fn eps_from_f32(eps: f32) -> f64 {
    eps.to_string().parse().unwrap_or(eps as f64)
}

impl<'g> Graph<'g> {
    fn new(graph: &'g GraphProto, opset: i64, base: ExternalBase) -> Result<Self> {
        let mut consts: HashMap<&'g str, Const> = HashMap::new();
        for t in &graph.initializer {
            if t.name.is_empty() {
                return Err(ImportError::Graph("an initializer has no name".into()));
            }
            consts.insert(t.name.as_str(), decode(t, base)?);
        }
        let inputs = graph
            .input
            .iter()
            .filter(|i| !consts.contains_key(i.name.as_str()))
            .collect();
        let mut consumers: HashMap<&'g str, Vec<usize>> = HashMap::new();
        let mut producer: HashMap<&'g str, usize> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for x in n.input.iter().filter(|x| !x.is_empty()) {
                let v = consumers.entry(x.as_str()).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                if producer.insert(o.as_str(), i).is_some() || consts.contains_key(o.as_str()) {
                    return Err(ImportError::Graph(format!(
                        "value '{o}' is written twice (node '{}')",
                        node_name(n, i)
                    )));
                }
            }
        }
        let mut g = Graph {
            nodes: &graph.node,
            opset,
            consts,
            consumers,
            producer,
            done: vec![false; graph.node.len()],
            unsupported: Vec::new(),
            inputs,
            outputs: &graph.output,
            names: HashSet::new(),
        };
        g.fold_constants()?;
        Ok(g)
    }

    fn refuse(&mut self, i: usize, reason: impl Into<String>) {
        let n = &self.nodes[i];
        self.unsupported.push(UnsupportedNode {
            name: node_name(n, i),
            op_type: if is_default_domain(&n.domain) {
                n.op_type.clone()
            } else {
                format!("{}:{}", n.domain, n.op_type)
            },
            reason: reason.into(),
        });
        self.done[i] = true;
    }

    /// Step 1: fold every node whose inputs are all constant.
    fn fold_constants(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            let ins: Vec<&str> = n
                .input
                .iter()
                .filter(|x| !x.is_empty())
                .map(String::as_str)
                .collect();
            if !ins.iter().all(|x| self.consts.contains_key(x)) {
                continue;
            }
            self.done[i] = true;
            if !is_default_domain(&n.domain) {
                self.refuse(i, "custom-domain op");
                continue;
            }
            match self.fold(n, &ins) {
                Ok(c) => {
                    if let Some(o) = n.output.first().filter(|o| !o.is_empty()) {
                        self.consts.insert(o.as_str(), c);
                    }
                }
                Err(reason) => self.refuse(i, reason),
            }
        }
        Ok(())
    }

    /// The constant a node of constant inputs computes.
    fn fold(&self, n: &NodeProto, ins: &[&str]) -> Result<Const, String> {
        let input = |k: usize| -> Result<&Const, String> {
            ins.get(k)
                .and_then(|x| self.consts.get(x))
                .ok_or_else(|| format!("input {k} missing"))
        };
        match n.op_type.as_str() {
            "Constant" => {
                let a = n
                    .attribute
                    .first()
                    .filter(|_| n.attribute.len() == 1)
                    .ok_or("a Constant needs exactly one attribute")?;
                match a.name.as_str() {
                    "value" => {
                        let t = a.t.as_ref().ok_or("'value' holds no tensor")?;
                        // A Constant's tensor never has external data worth trusting without a
                        // directory; it is decoded like an initializer without one.
                        decode(t, ExternalBase { dir: None }).map_err(|e| e.to_string())
                    }
                    "value_float" => Ok(Const::Float(Tensor::from_f32(vec![], &[a.f]))),
                    "value_floats" => Ok(Const::Float(Tensor::from_f32(
                        vec![a.floats.len()],
                        &a.floats,
                    ))),
                    "value_int" => Ok(Const::Int {
                        dims: vec![],
                        values: vec![a.i],
                    }),
                    "value_ints" => Ok(Const::Int {
                        dims: vec![a.ints.len()],
                        values: a.ints.clone(),
                    }),
                    other => Err(format!("Constant with '{other}' is not supported")),
                }
            }
            "Identity" => input(0).cloned(),
            "Cast" => {
                let to = attr_i(n, "to", 0)? as i32;
                match (input(0)?, to) {
                    // Widening keeps the values exactly: keep the stored bits and dtype, so an
                    // f16 initializer widened by a Cast stays f16 in the file.
                    (Const::Float(t), data_type::FLOAT | data_type::DOUBLE) => {
                        Ok(Const::Float(t.clone()))
                    }
                    (Const::Float(t), data_type::FLOAT16) => Ok(Const::Float(t.cast(DType::F16))),
                    (Const::Float(t), data_type::BFLOAT16) => Ok(Const::Float(t.cast(DType::BF16))),
                    (Const::Int { dims, values }, data_type::FLOAT | data_type::DOUBLE) => {
                        let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
                        Ok(Const::Float(Tensor::from_f32(dims.clone(), &v)))
                    }
                    (Const::Int { .. }, data_type::INT64 | data_type::INT32) => input(0).cloned(),
                    (c, to) => Err(format!(
                        "Cast of a constant of shape {:?} to {} is not supported",
                        c.dims(),
                        data_type::name(to)
                    )),
                }
            }
            "Transpose" => match input(0)? {
                Const::Float(t) if t.dims.len() == 2 => {
                    let perm = attr(n, "perm").map(|a| a.ints.clone());
                    match perm.as_deref() {
                        None | Some([1, 0]) => Ok(Const::Float(t.transpose2())),
                        Some([0, 1]) => Ok(Const::Float(t.clone())),
                        Some(p) => Err(format!("Transpose perm {p:?} of a 2-D constant")),
                    }
                }
                Const::Float(t) if t.dims.len() <= 1 => Ok(Const::Float(t.clone())),
                c => Err(format!(
                    "Transpose of a constant of shape {:?} is not supported",
                    c.dims()
                )),
            },
            op => Err(format!(
                "op on constants that bnfold does not fold ({op}); export with constant folding on"
            )),
        }
    }

    /// The nodes not yet matched that read `value`.
    fn open_consumers(&self, value: &str) -> Vec<usize> {
        self.consumers
            .get(value)
            .map(|v| v.iter().copied().filter(|&i| !self.done[i]).collect())
            .unwrap_or_default()
    }

    fn is_graph_output(&self, value: &str) -> bool {
        self.outputs.iter().any(|o| o.name == value)
    }

    /// A unique layer name based on `base`.
    fn layer_name(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "layer" } else { base };
        let mut name = base.to_owned();
        let mut k = 1;
        while !self.names.insert(name.clone()) {
            k += 1;
            name = format!("{base}#{k}");
        }
        name
    }

    /// Step 2 and 3: walk the chain; returns the input width, the layers and the input's
    /// element type.
    fn walk(&mut self) -> Result<(usize, Vec<Layer>, i32)> {
        let Some(first) = self.inputs.first().copied() else {
            return Err(ImportError::Graph(
                "the graph has no input (every input is an initializer)".into(),
            ));
        };
        for extra in self.inputs.iter().skip(1) {
            self.unsupported.push(UnsupportedNode {
                name: extra.name.clone(),
                op_type: "graph input".into(),
                reason: "a second input: bnfold networks take one input".into(),
            });
        }
        for extra in self.outputs.iter().skip(1) {
            self.unsupported.push(UnsupportedNode {
                name: extra.name.clone(),
                op_type: "graph output".into(),
                reason: "a second output: bnfold networks give one output".into(),
            });
        }
        let tensor_type = first.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        let elem = tensor_type.map_or(data_type::FLOAT, |t| t.elem_type);
        if ![
            data_type::FLOAT,
            data_type::FLOAT16,
            data_type::BFLOAT16,
            data_type::DOUBLE,
        ]
        .contains(&elem)
        {
            self.unsupported.push(UnsupportedNode {
                name: first.name.clone(),
                op_type: "graph input".into(),
                reason: format!("element type {} is not a float type", data_type::name(elem)),
            });
        }
        let mut cur = Cursor {
            value: first.name.clone(),
            width: None,
            rank2: true,
        };
        if let Some(shape) = tensor_type.and_then(|t| t.shape.as_ref()) {
            if shape.dim.len() == 2 {
                cur.width = shape.dim[1]
                    .dim_value
                    .and_then(|d| usize::try_from(d).ok())
                    .filter(|&d| d > 0);
            } else {
                cur.rank2 = false;
                self.unsupported.push(UnsupportedNode {
                    name: first.name.clone(),
                    op_type: "graph input".into(),
                    reason: format!(
                        "rank {}: bnfold networks take [batch, features]",
                        shape.dim.len()
                    ),
                });
            }
        }
        let input_width = std::cell::Cell::new(cur.width);
        let mut layers: Vec<(Layer, usize)> = Vec::new();
        loop {
            let consumers = self.open_consumers(&cur.value);
            if consumers.is_empty() {
                break;
            }
            let i = consumers[0];
            let n = &self.nodes[i];
            let uses = n.input.iter().filter(|x| **x == cur.value).count();
            if consumers.len() > 1 || uses > 1 {
                // Several readers of one value: only an elementwise subgraph that comes back to one
                // value (a GELU) is supported.
                match self.elementwise_region(&cur.value) {
                    Some((region, act, out)) => {
                        for &r in &region {
                            self.done[r] = true;
                        }
                        let last = *region.last().expect("a region has nodes");
                        let name = region_name(self.nodes, &region, act);
                        let name = self.layer_name(&name);
                        layers.push((
                            Layer {
                                name,
                                spec: LayerSpec::Act(act),
                            },
                            last,
                        ));
                        cur.value = out;
                        continue;
                    }
                    None => {
                        for c in consumers {
                            self.refuse(
                                c,
                                format!(
                                    "reads '{}', which several nodes read: a branch (only the GELU subgraphs may branch)",
                                    cur.value
                                ),
                            );
                        }
                        break;
                    }
                }
            }
            // One reader: the value must be its only non-constant input.
            let others: Vec<&String> = n
                .input
                .iter()
                .filter(|x| {
                    !x.is_empty() && **x != cur.value && !self.consts.contains_key(x.as_str())
                })
                .collect();
            if !others.is_empty() {
                let reason = format!(
                    "combines the input path with another non-constant value '{}'",
                    others[0]
                );
                self.refuse(i, reason);
                self.advance(&mut cur, i);
                continue;
            }
            if !is_default_domain(&n.domain) {
                self.refuse(i, "custom-domain op");
                self.advance(&mut cur, i);
                continue;
            }
            match self.match_node(i, &mut cur) {
                Ok(found) => {
                    for (spec, last) in found {
                        // Named after the node that starts the pattern (the MatMul of MatMul +
                        // Add, the Mul of tf2onnx's BN Mul + Add).
                        let name = self.layer_name(&node_name(&self.nodes[i], i));
                        if input_width.get().is_none() && layers.is_empty() {
                            input_width.set(input_width_of(&spec));
                        }
                        layers.push((Layer { name, spec }, last));
                    }
                }
                Err(reason) => {
                    self.refuse(i, reason);
                    self.advance(&mut cur, i);
                    // After an unsupported node the shape of the value is unknown.
                    cur.width = None;
                    cur.rank2 = false;
                }
            }
        }
        // The chain must end at the graph's output.
        let output = self.outputs.first().map(|o| o.name.clone());
        match &output {
            None => return Err(ImportError::Graph("the graph has no output".into())),
            Some(o) if *o != cur.value => {
                let producer = self.producer.get(o.as_str()).copied();
                match producer.filter(|&p| !self.done[p]) {
                    Some(_) => {}
                    None if self.unsupported.is_empty() => {
                        return Err(ImportError::Graph(format!(
                            "the graph output '{o}' is not computed from the input along one chain (the chain ends at '{}')",
                            cur.value
                        )));
                    }
                    None => {}
                }
            }
            Some(_) => {}
        }
        for i in 0..self.nodes.len() {
            if !self.done[i] {
                self.refuse(
                    i,
                    "not on the single chain from the input to the output (a branch, a second input, or after an unsupported node)",
                );
            }
        }
        // Softmax only at the end.
        let n_layers = layers.len();
        for (k, (l, node)) in layers.iter().enumerate() {
            if l.spec == LayerSpec::Act(Activation::Softmax) && k + 1 != n_layers {
                let n = &self.nodes[*node];
                self.unsupported.push(UnsupportedNode {
                    name: node_name(n, *node),
                    op_type: n.op_type.clone(),
                    reason: "Softmax is only supported as the last op".into(),
                });
            }
        }
        if !self.unsupported.is_empty() {
            return Err(ImportError::Unsupported {
                nodes: NodeList(std::mem::take(&mut self.unsupported)),
            });
        }
        let width = input_width.get().ok_or_else(|| {
            ImportError::Graph(
                "the input width is not known: the graph input has no fixed last dimension and no layer with parameters tells it".into(),
            )
        })?;
        let _ = self.is_graph_output("");
        Ok((width, layers.into_iter().map(|(l, _)| l).collect(), elem))
    }

    /// Move the cursor past node `i` (to its first output).
    fn advance(&self, cur: &mut Cursor, i: usize) {
        cur.value = self.nodes[i].output.first().cloned().unwrap_or_default();
    }

    /// The constant input `k` of node `i`.
    fn const_input(&self, n: &NodeProto, k: usize) -> Option<&Const> {
        n.input
            .get(k)
            .filter(|x| !x.is_empty())
            .and_then(|x| self.consts.get(x.as_str()))
    }

    /// A float constant input `k`, or why not.
    fn float_input(&self, n: &NodeProto, k: usize, role: &str) -> Result<&Tensor, String> {
        let name = n.input.get(k).map_or("", String::as_str);
        match self.const_input(n, k) {
            Some(Const::Float(t)) => Ok(t),
            Some(Const::Int { .. }) => Err(format!("{role} ('{name}') is an integer constant")),
            Some(Const::Other { data_type: d, .. }) => Err(format!(
                "{role} ('{name}') has element type {}",
                data_type::name(*d)
            )),
            None if name.is_empty() => Err(format!("{role} is missing")),
            None => Err(format!("{role} ('{name}') is not a constant")),
        }
    }

    /// The single unmatched reader of node `i`'s first output, if it has exactly one and the
    /// output is not the graph's output.
    fn sole_next(&self, i: usize) -> Option<usize> {
        let out = self.nodes[i].output.first()?;
        if self.is_graph_output(out) {
            return None;
        }
        match self.open_consumers(out).as_slice() {
            [j] if is_default_domain(&self.nodes[*j].domain) => Some(*j),
            _ => None,
        }
    }

    /// Match the node `i` (which reads `cur.value` once) and the nodes it absorbs; returns the
    /// layers (with the last node each covers) and moves the cursor, or the reason for refusal.
    fn match_node(
        &mut self,
        i: usize,
        cur: &mut Cursor,
    ) -> Result<Vec<(LayerSpec, usize)>, String> {
        let n = &self.nodes[i];
        let pos = n
            .input
            .iter()
            .position(|x| *x == cur.value)
            .expect("node reads the value");
        let mut last = i;
        let mut layers = Vec::new();
        let act = |a: Activation| Ok(Some(LayerSpec::Act(a)));
        let spec: Result<Option<LayerSpec>, String> = match n.op_type.as_str() {
            "Identity" => Ok(None),
            "Dropout" => {
                if let Some(mask) = n.output.get(1).filter(|m| !m.is_empty())
                    && !self.open_consumers(mask).is_empty()
                {
                    Err("its mask output is used".into())
                } else if self
                    .const_input(n, 2)
                    .and_then(Const::scalar)
                    .unwrap_or(0.0)
                    != 0.0
                {
                    Err("training_mode is true".into())
                } else {
                    Ok(None)
                }
            }
            "Cast" => {
                let to = attr_i(n, "to", 0)? as i32;
                if [
                    data_type::FLOAT,
                    data_type::FLOAT16,
                    data_type::BFLOAT16,
                    data_type::DOUBLE,
                ]
                .contains(&to)
                {
                    // bnfold computes in f32 whatever the source computed in.
                    Ok(None)
                } else {
                    Err(format!("Cast to {}", data_type::name(to)))
                }
            }
            "Flatten" => {
                let axis = attr_i(n, "axis", 1)?;
                if !cur.rank2 {
                    Err("Flatten of a value that is not known to be 2-D".into())
                } else if axis == 1 || axis == -1 {
                    Ok(None)
                } else {
                    Err(format!("Flatten with axis {axis} changes a 2-D value"))
                }
            }
            "Reshape" => match (self.const_input(n, 1), cur.rank2, cur.width) {
                (Some(Const::Int { values, .. }), true, Some(w)) if matches!(values.as_slice(), [-1 | 0, x] if *x == w as i64 || *x == -1) => {
                    Ok(None)
                }
                (Some(Const::Int { values, .. }), true, None)
                    if matches!(values.as_slice(), [0, -1]) =>
                {
                    Ok(None)
                }
                (Some(Const::Int { values, .. }), ..) => Err(format!(
                    "Reshape to {values:?} is not a no-op on a [batch, {}] value",
                    cur.width.map_or("?".into(), |w| w.to_string())
                )),
                _ => Err("Reshape to a shape that is not a constant".into()),
            },
            "Relu" => act(Activation::Relu),
            "Tanh" => act(Activation::Tanh),
            "Sigmoid" => act(Activation::Sigmoid),
            "LeakyRelu" => {
                let alpha = attr_f(n, "alpha", 0.01)?;
                if alpha.is_finite() {
                    act(Activation::LeakyRelu { alpha })
                } else {
                    Err(format!("alpha {alpha} is not finite"))
                }
            }
            "Gelu" => match attr_s(n, "approximate", "none")?.as_str() {
                "none" => act(Activation::GeluErf),
                "tanh" => act(Activation::GeluTanh),
                other => Err(format!("approximate '{other}'")),
            },
            "Softmax" => {
                let default = if self.opset >= 13 { -1 } else { 1 };
                let axis = attr_i(n, "axis", default)?;
                if cur.rank2 && (axis == -1 || axis == 1) {
                    act(Activation::Softmax)
                } else {
                    Err(format!(
                        "Softmax over axis {axis}, not the last axis of a 2-D value"
                    ))
                }
            }
            "Gemm" => self.gemm(n, pos, cur).map(Some),
            "MatMul" => {
                let mut dense = self.matmul(n, pos, cur)?;
                // MatMul + Add of a per-feature constant: the dense layer's bias.
                if let Some(j) = self.sole_next(i)
                    && self.nodes[j].op_type == "Add"
                    && let LayerSpec::Dense { weight, bias } = &mut dense
                    && let Some(b) = self.other_const(&self.nodes[j], &self.nodes[i].output[0])
                    && let Ok(b) = per_feature(b, Some(weight.dims[0]))
                {
                    *bias = Some(b);
                    self.done[j] = true;
                    last = j;
                }
                Ok(Some(dense))
            }
            "BatchNormalization" => self.batch_norm(n, pos, cur).map(Some),
            "Mul" | "Div" | "Add" | "Sub" => {
                let (spec, end) = self.affine_run(i, cur)?;
                last = end;
                Ok(Some(spec))
            }
            op => Err(format!("op {op} is not supported")),
        };
        let spec = spec?;
        self.done[i] = true;
        if let Some(spec) = spec {
            // A dense layer's output is [batch, outputs] whatever came before it; the other
            // layers keep the shape they are given.
            if let LayerSpec::Dense { weight, .. } = &spec {
                cur.width = Some(weight.dims[0]);
                cur.rank2 = true;
            }
            layers.push((spec, last));
        }
        cur.value = self.nodes[last].output.first().cloned().unwrap_or_default();
        Ok(layers)
    }

    /// The constant operand of a binary node whose other operand is `value`.
    fn other_const(&self, n: &NodeProto, value: &str) -> Option<&Const> {
        if n.input.len() != 2 {
            return None;
        }
        let k = match (n.input[0] == value, n.input[1] == value) {
            (true, false) => 1,
            (false, true) => 0,
            _ => return None,
        };
        self.const_input(n, k)
    }

    fn check_width(cur: &Cursor, found: usize, what: &str) -> Result<(), String> {
        match cur.width {
            Some(w) if w != found => Err(format!(
                "{what} takes {found} features, but {w} flow into it"
            )),
            _ => Ok(()),
        }
    }

    fn gemm(&self, n: &NodeProto, pos: usize, cur: &Cursor) -> Result<LayerSpec, String> {
        if pos != 0 {
            return Err("the data is Gemm's B operand, not A".into());
        }
        if attr_i(n, "transA", 0)? != 0 {
            return Err("transA = 1".into());
        }
        let trans_b = attr_i(n, "transB", 0)?;
        let alpha = attr_f(n, "alpha", 1.0)?;
        let beta = attr_f(n, "beta", 1.0)?;
        let b = self.float_input(n, 1, "B")?;
        if b.dims.len() != 2 || b.is_empty() {
            return Err(format!("B has shape {:?}, not a 2-D matrix", b.dims));
        }
        // The file stores [outputs, inputs]: B as is with transB = 1, transposed with transB = 0.
        let mut weight = match trans_b {
            1 => b.clone(),
            0 => b.transpose2(),
            t => return Err(format!("transB = {t}")),
        };
        if alpha != 1.0 {
            weight = weight.map(weight.dims.clone(), |w| alpha as f64 * w);
        }
        Self::check_width(cur, weight.dims[1], "Gemm")?;
        let out = weight.dims[0];
        let bias = match self.const_input(n, 2) {
            None if n.input.get(2).is_some_and(|x| !x.is_empty()) => {
                return Err("C is not a constant".into());
            }
            None => None,
            Some(_) if beta == 0.0 => None,
            Some(c) => {
                let c = per_feature(c, Some(out)).map_err(|e| format!("C {e}"))?;
                Some(if beta == 1.0 {
                    c
                } else {
                    c.map(vec![out], |v| beta as f64 * v)
                })
            }
        };
        Ok(LayerSpec::Dense { weight, bias })
    }

    fn matmul(&self, n: &NodeProto, pos: usize, cur: &Cursor) -> Result<LayerSpec, String> {
        if pos != 0 {
            return Err(
                "the constant is MatMul's left operand (x W^T layouts are not MatMul(W, x))".into(),
            );
        }
        let b = self.float_input(n, 1, "the weight")?;
        if b.dims.len() != 2 || b.is_empty() {
            return Err(format!(
                "the weight has shape {:?}, not a 2-D [in, out] matrix",
                b.dims
            ));
        }
        // MatMul(x, B) with B [in, out]: the file's [out, in] is its transpose.
        let weight = b.transpose2();
        Self::check_width(cur, weight.dims[1], "MatMul")?;
        Ok(LayerSpec::Dense { weight, bias: None })
    }

    fn batch_norm(&self, n: &NodeProto, pos: usize, cur: &Cursor) -> Result<LayerSpec, String> {
        if pos != 0 {
            return Err("the data is not BatchNormalization's X".into());
        }
        if attr_i(n, "training_mode", 0)? != 0 {
            return Err("training_mode = 1 (export the model in eval mode)".into());
        }
        if n.output
            .iter()
            .skip(1)
            .any(|o| !o.is_empty() && !self.open_consumers(o).is_empty())
        {
            return Err("its running-statistics outputs are used (training form)".into());
        }
        if !cur.rank2 {
            return Err("BatchNormalization of a value that is not known to be 2-D".into());
        }
        let eps = attr_f(n, "epsilon", 1e-5)?;
        let vec = |k: usize, role: &str| -> Result<Tensor, String> {
            let t = self.float_input(n, k, role)?;
            let f = t.len();
            if t.dims.len() != 1 || f == 0 {
                return Err(format!("{role} has shape {:?}, not [features]", t.dims));
            }
            Ok(t.clone())
        };
        let gamma = vec(1, "scale")?;
        let beta = vec(2, "B")?;
        let mean = vec(3, "mean")?;
        let var = vec(4, "var")?;
        let f = mean.len();
        if [gamma.len(), beta.len(), var.len()].iter().any(|&l| l != f) {
            return Err(format!(
                "scale, B, mean and var have {}, {}, {} and {} features",
                gamma.len(),
                beta.len(),
                f,
                var.len()
            ));
        }
        Self::check_width(cur, f, "BatchNormalization")?;
        // PyTorch's affine=False BN exports constant ones and zeros: store them as absent (the
        // format's "gamma absent means 1, beta absent means 0"), which is exactly the same map.
        Ok(LayerSpec::BatchNorm {
            eps: eps_from_f32(eps),
            gamma: (!gamma.all_equal(1.0)).then_some(gamma),
            beta: (!beta.all_equal(0.0)).then_some(beta),
            mean,
            var,
        })
    }

    /// A run of `Mul`/`Div` by and `Add`/`Sub` of per-feature (or scalar) constants starting at
    /// node `i`, composed into one affine layer. tf2onnx's BN is `Mul` then `Add`, which keeps both
    /// exported tensors bit for bit; longer runs are composed in f64. Returns the layer and the
    /// run's last node.
    fn affine_run(&mut self, i: usize, cur: &mut Cursor) -> Result<(LayerSpec, usize), String> {
        let mut scale: Option<Tensor> = None;
        let mut shift: Option<Tensor> = None;
        let mut j = i;
        let mut value = cur.value.clone();
        loop {
            let n = &self.nodes[j];
            let pos = n.input.iter().position(|x| *x == value);
            let c = self
                .other_const(n, &value)
                .ok_or("one operand must be the data and the other a constant")?;
            let t = per_feature(c, cur.width)?;
            let w = t.len();
            cur.width = Some(w);
            let ones = || Tensor::from_f32(vec![w], &vec![1.0; w]);
            match (n.op_type.as_str(), pos) {
                ("Mul", _) | ("Div", Some(0)) => {
                    let s = if n.op_type == "Div" {
                        t.map(vec![w], |v| 1.0 / v)
                    } else {
                        t
                    };
                    shift = shift.map(|b| combine(&b, &s, |b, s| b * s));
                    scale = Some(match scale {
                        None => s,
                        Some(a) => combine(&a, &s, |a, s| a * s),
                    });
                }
                ("Add", _) | ("Sub", Some(0)) => {
                    let b = if n.op_type == "Sub" {
                        t.map(vec![w], |v| -v)
                    } else {
                        t
                    };
                    shift = Some(match shift {
                        None => b,
                        Some(a) => combine(&a, &b, |a, b| a + b),
                    });
                }
                ("Sub", _) => {
                    // c - x = -1 * x + c.
                    let s = scale.unwrap_or_else(ones);
                    scale = Some(s.map(vec![w], |v| -v));
                    shift = Some(match shift {
                        None => t,
                        Some(a) => combine(&a, &t, |a, c| c - a),
                    });
                }
                (op, _) => {
                    return Err(format!("{op} with the constant as its first operand"));
                }
            }
            self.done[j] = true;
            value = n.output.first().cloned().unwrap_or_default();
            match self.sole_next(j) {
                Some(k)
                    if matches!(
                        self.nodes[k].op_type.as_str(),
                        "Mul" | "Div" | "Add" | "Sub"
                    ) && self
                        .other_const(&self.nodes[k], &value)
                        .is_some_and(|c| per_feature(c, cur.width).is_ok())
                        && (self.nodes[k].op_type != "Div"
                            || self.nodes[k].input.first() == Some(&value)) =>
                {
                    j = k;
                }
                _ => break,
            }
        }
        Ok((LayerSpec::Affine { scale, shift }, j))
    }

    /// The elementwise subgraph starting at `value` that reads it several times and comes back to
    /// one value, if it computes a GELU: its nodes in order, the activation and its output value.
    ///
    /// The region grows one node at a time (in graph order) by nodes that read only its values and
    /// scalar constants; whenever all of its paths meet in one value, that value is tested.
    fn elementwise_region(&self, value: &str) -> Option<(Vec<usize>, Activation, String)> {
        let mut region: Vec<usize> = Vec::new();
        let mut values: HashSet<&str> = HashSet::from([value]);
        for _ in 0..MAX_REGION {
            // The values of the region read from outside it (or that are graph outputs).
            let open: Vec<&str> = values
                .iter()
                .copied()
                .filter(|v| {
                    self.is_graph_output(v)
                        || self.open_consumers(v).iter().any(|c| !region.contains(c))
                })
                .collect();
            // Converged on one value: done if it is a GELU; else (the torch form converges at
            // `x * (1 + erf(x / sqrt 2))` before the final `* 0.5`) keep growing.
            if let [out] = open.as_slice()
                && *out != value
                && let Some(act) = identify_gelu(self, &region, value, out)
            {
                return Some((region, act, (*out).to_owned()));
            }
            // Grow by the first node (in graph order) that reads only region values and scalar
            // constants.
            let next = (0..self.nodes.len()).find(|&j| {
                let n = &self.nodes[j];
                !self.done[j]
                    && !region.contains(&j)
                    && is_default_domain(&n.domain)
                    && matches!(
                        n.op_type.as_str(),
                        "Mul" | "Add" | "Sub" | "Div" | "Erf" | "Tanh" | "Pow" | "Sqrt" | "Neg"
                    )
                    && n.output.len() == 1
                    && n.input.iter().any(|x| values.contains(x.as_str()))
                    && n.input.iter().all(|x| {
                        values.contains(x.as_str())
                            || self
                                .consts
                                .get(x.as_str())
                                .and_then(Const::scalar)
                                .is_some()
                    })
            })?;
            region.push(next);
            values.insert(self.nodes[next].output[0].as_str());
        }
        None
    }
}

/// The width the first layer with parameters implies for the input.
fn input_width_of(spec: &LayerSpec) -> Option<usize> {
    match spec {
        LayerSpec::Dense { weight, .. } => Some(weight.dims[1]),
        LayerSpec::BatchNorm { mean, .. } => Some(mean.len()),
        LayerSpec::Affine { scale, shift } => scale.as_ref().or(shift.as_ref()).map(Tensor::len),
        LayerSpec::Act(_) => None,
    }
}

/// A name for a GELU subgraph: the common `/k/` prefix of its nodes' names plus `Gelu`, else the
/// last node's name.
fn region_name(nodes: &[NodeProto], region: &[usize], act: Activation) -> String {
    let names: Vec<String> = region.iter().map(|&i| node_name(&nodes[i], i)).collect();
    let first = &names[0];
    let mut prefix_len = first.rfind('/').map_or(0, |p| p + 1);
    for n in &names[1..] {
        while prefix_len > 0 && !n.starts_with(&first[..prefix_len]) {
            prefix_len = first[..prefix_len - 1].rfind('/').map_or(0, |p| p + 1);
        }
    }
    if prefix_len > 0 {
        format!("{}{}", &first[..prefix_len], act.name())
    } else {
        names.last().cloned().unwrap_or_default()
    }
}

/// Evaluate the region as a function of `value` at `x`, in f64.
fn eval_region(g: &Graph, region: &[usize], value: &str, out: &str, x: f64) -> Option<f64> {
    let mut vals: HashMap<&str, f64> = HashMap::from([(value, x)]);
    for &i in region {
        let n = &g.nodes[i];
        let arg = |k: usize| -> Option<f64> {
            let name = n.input.get(k)?.as_str();
            vals.get(name)
                .copied()
                .or_else(|| g.consts.get(name).and_then(Const::scalar))
        };
        let a = arg(0)?;
        let y = match n.op_type.as_str() {
            "Mul" => a * arg(1)?,
            "Add" => a + arg(1)?,
            "Sub" => a - arg(1)?,
            "Div" => a / arg(1)?,
            "Pow" => a.powf(arg(1)?),
            "Erf" => libm::erf(a),
            "Tanh" => a.tanh(),
            "Sqrt" => a.sqrt(),
            "Neg" => -a,
            _ => return None,
        };
        vals.insert(n.output[0].as_str(), y);
    }
    vals.get(out).copied()
}

/// Which GELU the region computes, checked numerically: its value agrees with the definition
/// within 1e-6 (relative to `1 + |x|`) at 241 points in [-6, 6] plus a few far ones. The exported
/// constants are f32 roundings of sqrt(2), sqrt(2/pi) and 0.044715 (relative errors below 1e-7),
/// far inside that bound, while the erf and tanh forms differ by up to 5e-4, far outside it; so
/// the operand order and association the exporter chose do not matter, only what is computed.
fn identify_gelu(g: &Graph, region: &[usize], value: &str, out: &str) -> Option<Activation> {
    let has = |op: &str| region.iter().any(|&i| g.nodes[i].op_type == op);
    let candidate = if has("Erf") {
        Activation::GeluErf
    } else if has("Tanh") {
        Activation::GeluTanh
    } else {
        return None;
    };
    let points = (-120..=120)
        .map(|k| k as f64 / 20.0)
        .chain([-30.0, -10.0, 10.0, 30.0, 0.31, -0.77]);
    for x in points {
        let y = eval_region(g, region, value, out, x)?;
        let want = candidate.eval_f64(x);
        // Written so that a NaN fails.
        let close = (y - want).abs() <= 1e-6 * (1.0 + x.abs());
        if !close {
            return None;
        }
    }
    Some(candidate)
}

/// `f(a[k], b[k])` for two per-feature vectors, in f64, stored as [`Tensor::map`] stores.
fn combine(a: &Tensor, b: &Tensor, f: impl Fn(f64, f64) -> f64) -> Tensor {
    let bv = b.to_f32();
    let av = a.to_f32();
    let v: Vec<f32> = av
        .iter()
        .zip(&bv)
        .map(|(&x, &y)| f(x as f64, y as f64) as f32)
        .collect();
    let t = Tensor::from_f32(a.dims.clone(), &v);
    let narrow = t.cast(a.dtype);
    if narrow.to_f32() == v { narrow } else { t }
}

/// A per-feature vector from a constant broadcast against `[batch, width]`: shape `[w]` or
/// `[1, w]`, or a scalar (`[]`, `[1]`, `[1, 1]`) repeated `width` times.
fn per_feature(c: &Const, width: Option<usize>) -> Result<Tensor, String> {
    let Const::Float(t) = c else {
        return Err("the constant is not a float tensor".into());
    };
    let dims = &t.dims;
    let n = t.len();
    let is_scalar = n == 1 && dims.len() <= 2;
    let per = match dims.as_slice() {
        [w] | [1, w] if *w > 0 => Some(*w),
        _ => None,
    };
    match (per, width) {
        (_, Some(w)) if is_scalar => {
            let data = t.data.repeat(w);
            Ok(Tensor {
                dtype: t.dtype,
                dims: vec![w],
                data,
            })
        }
        (Some(f), Some(w)) if f != w => Err(format!(
            "has {f} values per row, but {w} features flow here"
        )),
        (Some(f), _) => Ok(t.clone().reshaped(vec![f])),
        (None, None) if is_scalar => {
            Err("is a scalar, and the width it applies to is not known".into())
        }
        (None, _) => Err(format!(
            "has shape {dims:?}: not one value per feature (it would broadcast over the batch)"
        )),
    }
}
