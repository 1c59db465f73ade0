//! The bnfold weight-file format, version 1: constants, the reader and the writer.
//!
//! `docs/FORMAT.md` is the specification; this module is its implementation. The reader takes bytes,
//! not files, so it can be fuzzed and embedded; every offset and size it reads is checked with
//! overflow-safe arithmetic against the real length of the input before it is used.

mod reader;
mod writer;

pub(crate) use reader::parse_with;
pub use reader::{Header, Parsed, TensorInfo, parse};
pub use writer::{AffineTensors, BatchNormTensors, TensorId, Writer};

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a string does not name a dtype.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dtype '{0}' (expected f32, f16 or bf16)")]
pub struct ParseDTypeError(String);

impl std::str::FromStr for DType {
    type Err = ParseDTypeError;

    /// `f32`, `f16` or `bf16` (case-insensitive; `float32`, `float16`, `bfloat16` too).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            _ => Err(ParseDTypeError(s.to_owned())),
        }
    }
}

/// Activations are stored by code; the type lives in [`crate::activation`].
pub use crate::activation::Activation;

/// The eight magic bytes every bnfold weight file starts with: `\x89BNW\r\n\x1a\n`.
///
/// Like PNG's, the high first byte catches 7-bit transfers and the CR LF / SUB bytes catch text-mode
/// line-ending conversion.
pub const MAGIC: [u8; 8] = *b"\x89BNW\r\n\x1a\n";
/// Major version this reader and writer implement; a file with a larger major version is rejected.
pub const VERSION_MAJOR: u16 = 1;
/// Highest minor version this reader and writer implement (1.1 added the affine layer, kind 4).
///
/// Readers accept any minor version of their major version; the writer stamps the lowest minor
/// version whose features a file uses (0 unless it has an affine layer), so files that need no
/// 1.1 feature stay readable by 1.0 readers.
pub const VERSION_MINOR: u16 = 1;
/// The minor version that introduced the affine layer (kind 4). A file stamped with a lower minor
/// version that contains one is rejected: no conforming writer of that version could have made it.
pub const AFFINE_MINOR: u16 = 1;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DType {
    /// IEEE 754 binary32.
    #[default]
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
    /// A per-feature affine map `y = scale * x + shift` (format 1.1): a BN whose statistics the
    /// exporter already combined (tf2onnx), or a standalone per-feature `Mul`/`Add`.
    Affine {
        /// Features transformed.
        features: usize,
        /// Optional per-feature scale (absent means 1).
        scale: Option<usize>,
        /// Optional per-feature shift (absent means 0).
        shift: Option<usize>,
    },
}

/// A layer's reference to a tensor, with the role it plays and the shape that role requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorRef {
    /// The role: `weight`, `bias`, `gamma`, `beta`, `moving_mean`, `moving_variance`, `scale` or
    /// `shift`.
    pub role: &'static str,
    /// The layer-table field that holds the reference (`dense weight`, `batchnorm gamma`, ...), as
    /// `docs/FORMAT.md` names it.
    pub field: &'static str,
    /// Index into the tensor table.
    pub tensor: usize,
    dims: [usize; 2],
    rank: usize,
}

impl TensorRef {
    fn vector(role: &'static str, field: &'static str, tensor: usize, n: usize) -> Self {
        TensorRef {
            role,
            field,
            tensor,
            dims: [n, 0],
            rank: 1,
        }
    }

    /// The shape the role requires.
    pub fn shape(&self) -> &[usize] {
        &self.dims[..self.rank]
    }
}

impl LayerKind {
    /// Display name of the kind.
    pub fn kind_name(&self) -> &'static str {
        match self {
            LayerKind::Dense { .. } => "Dense",
            LayerKind::BatchNorm { .. } => "BatchNorm",
            LayerKind::Activation(_) => "Activation",
            LayerKind::Affine { .. } => "Affine",
        }
    }

    /// The lowest format minor version that defines this kind of layer (1 for an affine layer,
    /// 0 for the others). The writer stamps the largest of these over a file's layers.
    pub fn min_minor_version(&self) -> u16 {
        match self {
            LayerKind::Affine { .. } => AFFINE_MINOR,
            _ => 0,
        }
    }

    /// The tensors this layer refers to, in table order, each with its role and required shape.
    /// Absent optional tensors (a dense layer without bias, a BN without gamma) are left out.
    pub fn tensor_refs(&self) -> Vec<TensorRef> {
        match *self {
            LayerKind::Dense {
                inputs,
                outputs,
                weight,
                bias,
            } => {
                let mut v = vec![TensorRef {
                    role: "weight",
                    field: "dense weight",
                    tensor: weight,
                    dims: [outputs, inputs],
                    rank: 2,
                }];
                v.extend(bias.map(|t| TensorRef::vector("bias", "dense bias", t, outputs)));
                v
            }
            LayerKind::BatchNorm {
                features: n,
                gamma,
                beta,
                moving_mean,
                moving_variance,
                ..
            } => [
                gamma.map(|t| TensorRef::vector("gamma", "batchnorm gamma", t, n)),
                beta.map(|t| TensorRef::vector("beta", "batchnorm beta", t, n)),
                Some(TensorRef::vector(
                    "moving_mean",
                    "batchnorm moving_mean",
                    moving_mean,
                    n,
                )),
                Some(TensorRef::vector(
                    "moving_variance",
                    "batchnorm moving_variance",
                    moving_variance,
                    n,
                )),
            ]
            .into_iter()
            .flatten()
            .collect(),
            LayerKind::Activation(_) => Vec::new(),
            LayerKind::Affine {
                features: n,
                scale,
                shift,
            } => [
                scale.map(|t| TensorRef::vector("scale", "affine scale", t, n)),
                shift.map(|t| TensorRef::vector("shift", "affine shift", t, n)),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }
    }

    /// The layer's shape for people: `784 -> 64` for a dense layer, `64` for a BN or an affine
    /// layer, empty for an activation.
    pub fn shape_text(&self) -> String {
        match self {
            LayerKind::Dense {
                inputs, outputs, ..
            } => format!("{inputs} -> {outputs}"),
            LayerKind::BatchNorm { features, .. } | LayerKind::Affine { features, .. } => {
                features.to_string()
            }
            LayerKind::Activation(_) => String::new(),
        }
    }

    /// The layer's parameters for people, with tensor names looked up in `tensors`:
    /// `eps=1e-3 gamma=bn.weight beta=- ...`, `scale=... shift=-` for an affine layer, or the
    /// activation (`leaky_relu:0.2`). A reference outside `tensors` prints as `#index`.
    pub fn detail(&self, tensors: &[TensorInfo]) -> String {
        let name = |t: usize| tensors.get(t).map_or(format!("#{t}"), |i| i.name.clone());
        let mut parts = Vec::new();
        match self {
            LayerKind::Activation(a) => return a.to_string(),
            LayerKind::BatchNorm { eps, .. } => parts.push(format!("eps={eps:e}")),
            LayerKind::Dense { .. } | LayerKind::Affine { .. } => {}
        }
        let refs = self.tensor_refs();
        let roles: &[&str] = match self {
            LayerKind::Dense { .. } => &["weight", "bias"],
            LayerKind::Affine { .. } => &["scale", "shift"],
            _ => &["gamma", "beta", "moving_mean", "moving_variance"],
        };
        for role in roles {
            let value = refs
                .iter()
                .find(|r| r.role == *role)
                .map_or("-".to_owned(), |r| name(r.tensor));
            let short = role.strip_prefix("moving_").map_or(*role, |r| match r {
                "variance" => "var",
                r => r,
            });
            parts.push(format!("{short}={value}"));
        }
        parts.join(" ")
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
    checksum_with(bytes, &mut |_| {})
}

/// Bytes hashed between two calls of [`checksum_with`]'s `hashed`.
pub(crate) const CHECKSUM_CHUNK: usize = 1 << 20;

/// [`checksum`], calling `hashed(range)` after each range of at most [`CHECKSUM_CHUNK`] bytes past
/// the checksum field has been hashed (in order; together they cover `CHECKSUM_RANGE.end..`), so
/// that a caller reading a mapped file can let the OS drop the pages it will not need again soon.
/// `bytes` must hold at least the fixed header.
pub(crate) fn checksum_with(bytes: &[u8], hashed: &mut dyn FnMut(std::ops::Range<usize>)) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..CHECKSUM_RANGE.start]);
    h.update(&[0u8; 4]);
    let mut at = CHECKSUM_RANGE.end;
    for chunk in bytes[CHECKSUM_RANGE.end..].chunks(CHECKSUM_CHUNK) {
        h.update(chunk);
        hashed(at..at + chunk.len());
        at += chunk.len();
    }
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
    n.checked_add(ALIGN as u64 - 1)
        .map(|v| v & !(ALIGN as u64 - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunked checksum is the checksum, and its chunks cover the bytes after the checksum
    /// field exactly once, in order, each at most a chunk long.
    #[test]
    fn chunked_checksum_covers_the_file_in_order() {
        for len in [
            HEADER_LEN,
            HEADER_LEN + 1,
            CHECKSUM_CHUNK,
            2 * CHECKSUM_CHUNK + 77,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut seen = Vec::new();
            let crc = checksum_with(&bytes, &mut |r| seen.push(r));
            let mut whole = crc32fast::Hasher::new();
            whole.update(&bytes[..CHECKSUM_RANGE.start]);
            whole.update(&[0; 4]);
            whole.update(&bytes[CHECKSUM_RANGE.end..]);
            assert_eq!(crc, whole.finalize(), "len {len}");
            assert_eq!(crc, checksum(&bytes));
            let mut at = CHECKSUM_RANGE.end;
            for r in &seen {
                assert_eq!(r.start, at, "len {len}: {seen:?}");
                assert!(!r.is_empty() && r.len() <= CHECKSUM_CHUNK);
                at = r.end;
            }
            assert_eq!(at, len, "len {len}: {seen:?}");
        }
    }
}
