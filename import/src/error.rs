//! The importer's error type: one variant per class of failure, each naming what was wrong and
//! where (the node, the tensor, the `--arch` item, the file).

use std::fmt;
use std::path::PathBuf;

/// Result alias of the importer.
pub type Result<T, E = ImportError> = std::result::Result<T, E>;

/// A node (or graph input / output) the importer cannot convert, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedNode {
    /// The node's name (its first output's name when the node has none), or the value's name for a
    /// graph input or output.
    pub name: String,
    /// The op type (`Conv`, `Reshape`, ...), or `graph input` / `graph output`.
    pub op_type: String,
    /// What about it is outside the supported set.
    pub reason: String,
}

impl fmt::Display for UnsupportedNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' ({}): {}", self.name, self.op_type, self.reason)
    }
}

/// The nodes of a refused graph, printed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeList(pub Vec<UnsupportedNode>);

impl fmt::Display for NodeList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.0 {
            write!(f, "\n  - {n}")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong converting a model.
///
/// `#[non_exhaustive]`: new input formats may add variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The input file is larger than the importer reads.
    #[error("{}: {len} bytes is more than the {limit}-byte limit for {what}", path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// What the file is (`an ONNX model`, ...).
        what: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The bytes are not a valid ONNX protobuf (truncated, corrupt, or not ONNX at all).
    #[error("not a valid ONNX model (truncated or corrupt protobuf): {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The ONNX model has no graph.
    #[error("the ONNX model has no graph")]
    NoGraph,
    /// An ONNX tensor (initializer or constant) whose data does not match its declared type and
    /// shape, or whose type the importer does not read.
    #[error("ONNX tensor '{tensor}': {reason}")]
    Tensor {
        /// Tensor (value) name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// An external-data side file that does not exist.
    #[error(
        "ONNX tensor '{tensor}': its external data file {} does not exist (it must sit beside the model)",
        path.display()
    )]
    ExternalDataMissing {
        /// Tensor name.
        tensor: String,
        /// The path the model points at.
        path: PathBuf,
    },
    /// An external-data location that is absolute or resolves outside the model's directory.
    #[error(
        "ONNX tensor '{tensor}': external data location '{location}' {reason}; it must be a relative path inside the model's directory"
    )]
    ExternalDataOutside {
        /// Tensor name.
        tensor: String,
        /// The `location` as written in the model.
        location: String,
        /// `is absolute`, `resolves to ... outside ...`.
        reason: String,
    },
    /// External data whose offset and length do not lie inside the side file, or whose length
    /// does not match the tensor.
    #[error("ONNX tensor '{tensor}': external data in {}: {reason}", path.display())]
    ExternalDataRange {
        /// Tensor name.
        tensor: String,
        /// The side file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// A malformed external-data entry (missing location, non-numeric offset, ...), or external
    /// data in a model given as bytes with no directory to resolve it in.
    #[error("ONNX tensor '{tensor}': external data: {reason}")]
    ExternalData {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The graph has nodes (or inputs, outputs) outside the supported set; every one is listed.
    #[error(
        "cannot convert this graph: {} node(s) outside what bnfold supports (dense layers, BatchNormalization, per-feature Mul/Add, Relu, LeakyRelu, Tanh, Sigmoid, Gelu, Softmax on the last axis, in one chain from one input to one output):{nodes}",
        nodes.0.len()
    )]
    Unsupported {
        /// Every node that is not supported.
        nodes: NodeList,
    },
    /// The graph is not well-formed (a value used but never defined, no input, ...).
    #[error("malformed ONNX graph: {0}")]
    Graph(String),
    /// The safetensors file is invalid (the `safetensors` crate's checks of its header and
    /// offsets).
    #[error("not a valid safetensors file: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// A safetensors tensor of a dtype the importer does not read.
    #[error("safetensors tensor '{tensor}': {reason}")]
    SafetensorsTensor {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// safetensors input without `--arch`, or `--arch` with an ONNX input.
    #[error("{0}")]
    ArchUsage(&'static str),
    /// A `--arch` string that does not parse.
    #[error("--arch: item {index} '{item}': {reason}")]
    ArchSyntax {
        /// Position in the list, from 0 (the `nn.Sequential` index).
        index: usize,
        /// The item as written.
        item: String,
        /// What is wrong.
        reason: String,
    },
    /// `--arch` and the tensors disagree.
    #[error("--arch item {index} '{item}' (tensors '{index}.*'): {reason}")]
    ArchMismatch {
        /// Position in the list (the `nn.Sequential` index).
        index: usize,
        /// The item.
        item: String,
        /// What does not match, naming the tensor.
        reason: String,
    },
    /// Tensors of the state_dict that no `--arch` item uses (all of them, sorted).
    #[error(
        "safetensors tensor(s) {} belong to no layer of --arch (its {items} items cover indices 0..{items}: a module missing from --arch, or another naming?)",
        tensors.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
    )]
    UnusedTensor {
        /// Tensor names.
        tensors: Vec<String>,
        /// How many items `--arch` has.
        items: usize,
    },
    /// The input is neither ONNX nor safetensors.
    #[error("{}: {reason}", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The converted network does not form a valid bnfold model, or the writer refused it.
    #[error("the converted network is not a valid bnfold model: {0}")]
    Bnfold(#[from] bnfold::Error),
}

impl ImportError {
    pub(crate) fn tensor(tensor: &str, reason: impl Into<String>) -> Self {
        ImportError::Tensor {
            tensor: tensor.to_owned(),
            reason: reason.into(),
        }
    }

    /// The unsupported nodes, if this is a refusal.
    pub fn unsupported_nodes(&self) -> Option<&[UnsupportedNode]> {
        match self {
            ImportError::Unsupported { nodes } => Some(&nodes.0),
            _ => None,
        }
    }
}
