//! The bnfold weight-file format, version 1: constants, the reader and the writer.
//!
//! `docs/FORMAT.md` is the specification; this module is its implementation. The reader takes bytes,
//! not files, so it can be fuzzed and embedded; every offset and size it reads is checked with
//! overflow-safe arithmetic against the real length of the input before it is used.

mod reader;
mod writer;

pub use reader::{Header, Parsed, TensorInfo, parse};
pub use writer::{BatchNormTensors, TensorId, Writer};

/// The eight magic bytes every bnfold weight file starts with: `\x89BNW\r\n\x1a\n`.
///
/// Like PNG's, the high first byte catches 7-bit transfers and the CR LF / SUB bytes catch text-mode
/// line-ending conversion.
pub const MAGIC: [u8; 8] = *b"\x89BNW\r\n\x1a\n";
/// Major version this reader and writer implement; a file with a larger major version is rejected.
pub const VERSION_MAJOR: u16 = 1;
/// Minor version the writer stamps. Readers accept any minor version of their major version.
pub const VERSION_MINOR: u16 = 0;
/// Size of the fixed header at the start of the file.
pub const HEADER_LEN: usize = 64;
/// Tensor data (and the data section) are aligned to this many bytes.
pub const ALIGN: usize = 64;
/// Byte range of the CRC-32 field in the fixed header.
pub const CHECKSUM_RANGE: std::ops::Range<usize> = 40..44;
/// Sentinel tensor index meaning "no tensor" (for optional bias, gamma, beta).
pub const NO_TENSOR: u32 = u32::MAX;

/// Limits the reader enforces; see `docs/FORMAT.md`, section "Limits".
pub mod limits {
    /// Largest table section, in bytes.
    pub const MAX_TABLE_LEN: u64 = 64 << 20;
    /// Most metadata entries.
    pub const MAX_METADATA: u64 = 4096;
    /// Longest metadata key, in bytes.
    pub const MAX_KEY_LEN: u64 = 256;
    /// Longest metadata value, in bytes.
    pub const MAX_VALUE_LEN: u64 = 1 << 16;
    /// Most tensors.
    pub const MAX_TENSORS: u64 = 1 << 16;
    /// Longest tensor or layer name, in bytes.
    pub const MAX_NAME_LEN: u64 = 1024;
    /// Highest tensor rank.
    pub const MAX_RANK: u8 = 4;
    /// Most layers.
    pub const MAX_LAYERS: u64 = 4096;
    /// Largest width of any layer and largest tensor dimension.
    pub const MAX_WIDTH: u64 = 1 << 24;
}

/// Storage type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16.
    F16,
    /// bfloat16 (the top half of a binary32).
    BF16,
}

impl DType {
    /// The code stored in the file.
    pub fn code(self) -> u8 {
        match self {
            DType::F32 => 1,
            DType::F16 => 2,
            DType::BF16 => 3,
        }
    }

    /// The dtype for a code, if known.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(DType::F32),
            2 => Some(DType::F16),
            3 => Some(DType::BF16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Lower-case name, as in the spec.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

/// An activation function, as stored in an activation layer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Activation {
    /// `x`.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x >= 0`, `alpha * x` otherwise.
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
    /// Hyperbolic tangent.
    Tanh,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `x * Phi(x)` with the exact normal CDF, `0.5 * x * (1 + erf(x / sqrt 2))` (PyTorch's default).
    GeluErf,
    /// The tanh approximation `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    GeluTanh,
    /// Softmax over the features of each row; only allowed as the last layer.
    Softmax,
}

impl Activation {
    /// The code stored in the file.
    pub fn code(self) -> u8 {
        match self {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::LeakyRelu { .. } => 2,
            Activation::Tanh => 3,
            Activation::Sigmoid => 4,
            Activation::GeluErf => 5,
            Activation::GeluTanh => 6,
            Activation::Softmax => 7,
        }
    }

    /// The parameter stored beside the code (the leaky slope, 0 for the others).
    pub fn param(self) -> f32 {
        match self {
            Activation::LeakyRelu { alpha } => alpha,
            _ => 0.0,
        }
    }

    /// Decode a code and its parameter; `None` for an unknown code.
    pub fn from_code(code: u8, param: f32) -> Option<Self> {
        Some(match code {
            0 => Activation::Identity,
            1 => Activation::Relu,
            2 => Activation::LeakyRelu { alpha: param },
            3 => Activation::Tanh,
            4 => Activation::Sigmoid,
            5 => Activation::GeluErf,
            6 => Activation::GeluTanh,
            7 => Activation::Softmax,
            _ => return None,
        })
    }

    /// Name as used by the CLI and the spec.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::GeluErf => "gelu_erf",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Softmax => "softmax",
        }
    }
}

/// One layer as described in the file. Tensor fields are indices into the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    /// `y = x W^T + b` with `W` stored `[outputs, inputs]` row-major.
    Dense {
        /// Input features.
        inputs: usize,
        /// Output features.
        outputs: usize,
        /// Weight tensor, shape `[outputs, inputs]`.
        weight: usize,
        /// Optional bias tensor, shape `[outputs]`.
        bias: Option<usize>,
    },
    /// Batch normalisation at inference: `gamma * (x - mean) / sqrt(var + eps) + beta`.
    BatchNorm {
        /// Features normalised.
        features: usize,
        /// Epsilon added to the variance, exactly as the training framework used it.
        eps: f64,
        /// Optional scale (absent means 1, Keras `scale=False`).
        gamma: Option<usize>,
        /// Optional shift (absent means 0, Keras `center=False`).
        beta: Option<usize>,
        /// EMA of the batch means.
        moving_mean: usize,
        /// EMA of the batch variances.
        moving_variance: usize,
    },
    /// An elementwise (or, for softmax, row-wise) activation.
    Activation(Activation),
}

impl LayerKind {
    /// Display name of the kind.
    pub fn kind_name(&self) -> &'static str {
        match self {
            LayerKind::Dense { .. } => "Dense",
            LayerKind::BatchNorm { .. } => "BatchNorm",
            LayerKind::Activation(_) => "Activation",
        }
    }
}

/// A named layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRecord {
    /// Name given by the producer (e.g. a PyTorch module path).
    pub name: String,
    /// What the layer is.
    pub kind: LayerKind,
}

/// CRC-32 (IEEE 802.3, the polynomial zlib uses) of a whole file, with the checksum field read as zero.
///
/// `bytes` must be at least [`HEADER_LEN`] long.
pub fn checksum(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..CHECKSUM_RANGE.start]);
    h.update(&[0u8; 4]);
    h.update(&bytes[CHECKSUM_RANGE.end..]);
    h.finalize()
}

/// Recompute and store the checksum of a file in place (for tools and tests that patch files).
///
/// Does nothing to buffers shorter than the fixed header.
pub fn fix_checksum(bytes: &mut [u8]) {
    if bytes.len() < HEADER_LEN {
        return;
    }
    let crc = checksum(bytes);
    bytes[CHECKSUM_RANGE].copy_from_slice(&crc.to_le_bytes());
}

/// Round `n` up to a multiple of [`ALIGN`], or `None` on overflow.
pub fn align_up(n: u64) -> Option<u64> {
    n.checked_add(ALIGN as u64 - 1).map(|v| v & !(ALIGN as u64 - 1))
}
