//! Writing weight files.
//!
//! The writer checks what the format needs (names, counts and shapes within the limits, data that
//! matches its shape); whether the layers form a valid network is checked when the file is loaded,
//! so tests can write networks that are well-formed files but invalid models.

use std::path::Path;

use half::{bf16, f16};

use super::{
    AFFINE_MINOR, ALIGN, Activation, DType, HEADER_LEN, MAGIC, NO_TENSOR, VERSION_MAJOR, align_up,
    fix_checksum, limits,
};
use crate::error::{Error, Result, WriterError};

/// Handle to a tensor added to a [`Writer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorId(u32);

/// Tensors of a batch-normalisation layer.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormTensors {
    /// Scale, or `None` for Keras' `scale=False`.
    pub gamma: Option<TensorId>,
    /// Shift, or `None` for Keras' `center=False`.
    pub beta: Option<TensorId>,
    /// EMA of the batch means.
    pub moving_mean: TensorId,
    /// EMA of the batch variances.
    pub moving_variance: TensorId,
}

/// Tensors of an affine layer (format 1.1); either may be absent.
#[derive(Debug, Clone, Copy, Default)]
pub struct AffineTensors {
    /// Per-feature scale, or `None` for 1.
    pub scale: Option<TensorId>,
    /// Per-feature shift, or `None` for 0.
    pub shift: Option<TensorId>,
}

enum WLayer {
    Dense {
        inputs: u32,
        outputs: u32,
        weight: u32,
        bias: u32,
    },
    BatchNorm {
        features: u32,
        eps: f64,
        gamma: u32,
        beta: u32,
        mean: u32,
        var: u32,
    },
    Activation(Activation),
    Affine {
        features: u32,
        scale: u32,
        shift: u32,
    },
}

struct WTensor {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    bytes: Vec<u8>,
}

/// Builds a weight file in memory.
///
/// ```
/// use bnfold::format::{Writer, DType, Activation};
/// let mut w = Writer::new(2);
/// w.metadata("producer", "doc example");
/// w.add_dense("fc", DType::F32, 3, 2, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], Some(&[0.1, 0.2, 0.3]))?;
/// w.add_batch_norm("bn", DType::F32, 1e-3, Some(&[1.0; 3]), Some(&[0.0; 3]), &[0.5; 3], &[2.0; 3])?;
/// w.activation("relu", Activation::Relu)?;
/// let bytes = w.to_bytes()?;
/// let model = bnfold::Model::from_bytes(&bytes)?;
/// assert_eq!(model.output_features(), 3);
/// # Ok::<(), bnfold::Error>(())
/// ```
pub struct Writer {
    input_features: u32,
    metadata: Vec<(String, String)>,
    tensors: Vec<WTensor>,
    layers: Vec<(String, WLayer)>,
}

fn check_len(what: &'static str, s: &str, limit: u64) -> Result<()> {
    if s.len() as u64 > limit {
        return Err(WriterError::NameTooLong {
            what,
            start: s[..s.floor_char_boundary(32)].to_owned(),
            len: s.len(),
            limit,
        }
        .into());
    }
    Ok(())
}

fn encode(dtype: DType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    match dtype {
        DType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        DType::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
    }
    out
}

impl Writer {
    /// A writer for a network whose input rows have `input_features` values.
    pub fn new(input_features: usize) -> Self {
        Writer {
            input_features: input_features.min(u32::MAX as usize) as u32,
            metadata: Vec::new(),
            tensors: Vec::new(),
            layers: Vec::new(),
        }
    }

    /// Add a metadata entry (keys may repeat; readers keep file order).
    pub fn metadata(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Add a tensor from f32 values, stored as `dtype` (rounded to nearest, ties to even).
    pub fn tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        values: &[f32],
    ) -> Result<TensorId> {
        let bytes = encode(dtype, values);
        self.tensor_bytes(name, dtype, shape, bytes)
    }

    /// Add a tensor from its little-endian bytes, kept bit for bit (importers use this for f16/bf16).
    pub fn tensor_bytes(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        bytes: Vec<u8>,
    ) -> Result<TensorId> {
        check_len("tensor name", name, limits::MAX_NAME_LEN)?;
        if name.is_empty() {
            return Err(WriterError::EmptyName("tensor name").into());
        }
        if shape.is_empty() || shape.len() > limits::MAX_RANK as usize {
            return Err(WriterError::Rank {
                tensor: name.to_owned(),
                rank: shape.len(),
            }
            .into());
        }
        if let Some(d) = shape
            .iter()
            .find(|&&d| d == 0 || d as u64 > limits::MAX_WIDTH)
        {
            return Err(WriterError::Dimension {
                tensor: name.to_owned(),
                dim: *d,
            }
            .into());
        }
        let elems = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|e| e.checked_mul(dtype.size()));
        if elems != Some(bytes.len()) {
            return Err(WriterError::ByteCount {
                tensor: name.to_owned(),
                bytes: bytes.len(),
                shape: shape.to_vec(),
                dtype,
            }
            .into());
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(WriterError::DuplicateTensor(name.to_owned()).into());
        }
        if self.tensors.len() as u64 >= limits::MAX_TENSORS {
            return Err(WriterError::TooMany {
                what: "tensors",
                limit: limits::MAX_TENSORS,
            }
            .into());
        }
        self.tensors.push(WTensor {
            name: name.to_owned(),
            dtype,
            shape: shape.iter().map(|&d| d as u64).collect(),
            bytes,
        });
        Ok(TensorId((self.tensors.len() - 1) as u32))
    }

    fn push_layer(&mut self, name: &str, layer: WLayer) -> Result<&mut Self> {
        check_len("layer name", name, limits::MAX_NAME_LEN)?;
        if self.layers.len() as u64 >= limits::MAX_LAYERS {
            return Err(WriterError::TooMany {
                what: "layers",
                limit: limits::MAX_LAYERS,
            }
            .into());
        }
        self.layers.push((name.to_owned(), layer));
        Ok(self)
    }

    /// Add a dense layer over existing tensors: weight `[outputs, inputs]`, bias `[outputs]`.
    pub fn dense(
        &mut self,
        name: &str,
        inputs: usize,
        outputs: usize,
        weight: TensorId,
        bias: Option<TensorId>,
    ) -> Result<&mut Self> {
        let to_u32 = |v: usize| {
            u32::try_from(v).map_err(|_| WriterError::WidthTooLarge {
                layer: name.to_owned(),
                width: v,
            })
        };
        let layer = WLayer::Dense {
            inputs: to_u32(inputs)?,
            outputs: to_u32(outputs)?,
            weight: weight.0,
            bias: bias.map_or(NO_TENSOR, |t| t.0),
        };
        self.push_layer(name, layer)
    }

    /// Add a batch-normalisation layer over existing tensors.
    pub fn batch_norm(
        &mut self,
        name: &str,
        features: usize,
        eps: f64,
        t: BatchNormTensors,
    ) -> Result<&mut Self> {
        let features = u32::try_from(features).map_err(|_| WriterError::WidthTooLarge {
            layer: name.to_owned(),
            width: features,
        })?;
        let layer = WLayer::BatchNorm {
            features,
            eps,
            gamma: t.gamma.map_or(NO_TENSOR, |t| t.0),
            beta: t.beta.map_or(NO_TENSOR, |t| t.0),
            mean: t.moving_mean.0,
            var: t.moving_variance.0,
        };
        self.push_layer(name, layer)
    }

    /// Add an activation layer.
    pub fn activation(&mut self, name: &str, act: Activation) -> Result<&mut Self> {
        self.push_layer(name, WLayer::Activation(act))
    }

    /// Add a per-feature affine layer `y = scale * x + shift` over existing tensors (format 1.1: a
    /// file with one is stamped version 1.1).
    pub fn affine(&mut self, name: &str, features: usize, t: AffineTensors) -> Result<&mut Self> {
        let features = u32::try_from(features).map_err(|_| WriterError::WidthTooLarge {
            layer: name.to_owned(),
            width: features,
        })?;
        let layer = WLayer::Affine {
            features,
            scale: t.scale.map_or(NO_TENSOR, |t| t.0),
            shift: t.shift.map_or(NO_TENSOR, |t| t.0),
        };
        self.push_layer(name, layer)
    }

    /// Add an affine layer of `features` features and its tensors `NAME.scale` and `NAME.shift`
    /// (each only if given; each must hold `features` values).
    pub fn add_affine(
        &mut self,
        name: &str,
        dtype: DType,
        features: usize,
        scale: Option<&[f32]>,
        shift: Option<&[f32]>,
    ) -> Result<&mut Self> {
        let scale = scale
            .map(|v| self.tensor(&format!("{name}.scale"), dtype, &[features], v))
            .transpose()?;
        let shift = shift
            .map(|v| self.tensor(&format!("{name}.shift"), dtype, &[features], v))
            .transpose()?;
        self.affine(name, features, AffineTensors { scale, shift })
    }

    /// The minor version [`Writer::to_bytes`] stamps: the lowest whose features the file uses
    /// (1 with an affine layer, else 0), so that files without 1.1 features stay readable by 1.0
    /// readers.
    pub fn minor_version(&self) -> u16 {
        self.layers
            .iter()
            .map(|(_, l)| match l {
                WLayer::Affine { .. } => AFFINE_MINOR,
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }

    /// Add a dense layer and its tensors `NAME.weight` (`[outputs, inputs]` row-major) and `NAME.bias`.
    pub fn add_dense(
        &mut self,
        name: &str,
        dtype: DType,
        outputs: usize,
        inputs: usize,
        weight: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<&mut Self> {
        let w = self.tensor(&format!("{name}.weight"), dtype, &[outputs, inputs], weight)?;
        let b = match bias {
            Some(b) => Some(self.tensor(&format!("{name}.bias"), dtype, &[outputs], b)?),
            None => None,
        };
        self.dense(name, inputs, outputs, w, b)
    }

    /// Add a batch-normalisation layer and its tensors `NAME.gamma`, `NAME.beta`,
    /// `NAME.moving_mean` and `NAME.moving_variance`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_batch_norm(
        &mut self,
        name: &str,
        dtype: DType,
        eps: f64,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        moving_mean: &[f32],
        moving_variance: &[f32],
    ) -> Result<&mut Self> {
        let n = moving_mean.len();
        let mut vec = |suffix: &str, v: &[f32]| {
            self.tensor(&format!("{name}.{suffix}"), dtype, &[v.len()], v)
        };
        let gamma = gamma.map(|g| vec("gamma", g)).transpose()?;
        let beta = beta.map(|b| vec("beta", b)).transpose()?;
        let moving_mean = vec("moving_mean", moving_mean)?;
        let moving_variance = vec("moving_variance", moving_variance)?;
        self.batch_norm(
            name,
            n,
            eps,
            BatchNormTensors {
                gamma,
                beta,
                moving_mean,
                moving_variance,
            },
        )
    }

    /// Serialise to bytes, checksum included.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        if self.metadata.iter().any(|(k, _)| k.is_empty()) {
            return Err(WriterError::EmptyName("metadata key").into());
        }
        if self.metadata.len() as u64 > limits::MAX_METADATA {
            return Err(WriterError::TooMany {
                what: "metadata entries",
                limit: limits::MAX_METADATA,
            }
            .into());
        }
        let mut table = Vec::new();
        let put_str = |t: &mut Vec<u8>, s: &str| {
            t.extend_from_slice(&(s.len() as u32).to_le_bytes());
            t.extend_from_slice(s.as_bytes());
        };
        table.extend_from_slice(&(self.metadata.len() as u32).to_le_bytes());
        for (k, v) in &self.metadata {
            check_len("metadata key", k, limits::MAX_KEY_LEN)?;
            check_len("metadata value", v, limits::MAX_VALUE_LEN)?;
            put_str(&mut table, k);
            put_str(&mut table, v);
        }
        table.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_str(&mut table, &t.name);
            table.push(t.dtype.code());
            table.push(t.shape.len() as u8);
            for d in &t.shape {
                table.extend_from_slice(&d.to_le_bytes());
            }
            table.extend_from_slice(&offset.to_le_bytes());
            table.extend_from_slice(&(t.bytes.len() as u64).to_le_bytes());
            offsets.push(offset);
            offset = align_up(offset + t.bytes.len() as u64)
                .ok_or(WriterError::TooLarge("data section"))?;
        }
        table.extend_from_slice(&self.input_features.to_le_bytes());
        table.extend_from_slice(&(self.layers.len() as u32).to_le_bytes());
        for (name, layer) in &self.layers {
            put_str(&mut table, name);
            match *layer {
                WLayer::Dense {
                    inputs,
                    outputs,
                    weight,
                    bias,
                } => {
                    table.push(1);
                    for v in [inputs, outputs, weight, bias] {
                        table.extend_from_slice(&v.to_le_bytes());
                    }
                }
                WLayer::BatchNorm {
                    features,
                    eps,
                    gamma,
                    beta,
                    mean,
                    var,
                } => {
                    table.push(2);
                    table.extend_from_slice(&features.to_le_bytes());
                    table.extend_from_slice(&eps.to_le_bytes());
                    for v in [gamma, beta, mean, var] {
                        table.extend_from_slice(&v.to_le_bytes());
                    }
                }
                WLayer::Activation(a) => {
                    table.push(3);
                    table.push(a.code());
                    table.extend_from_slice(&a.param().to_le_bytes());
                }
                WLayer::Affine {
                    features,
                    scale,
                    shift,
                } => {
                    table.push(4);
                    for v in [features, scale, shift] {
                        table.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        if table.len() as u64 > limits::MAX_TABLE_LEN {
            return Err(WriterError::TableTooLarge { len: table.len() }.into());
        }
        let data_offset = align_up((HEADER_LEN + table.len()) as u64)
            .ok_or(WriterError::TooLarge("table section"))?;
        // The last tensor ends the file; no padding after it.
        let data_len = match (self.tensors.last(), offsets.last()) {
            (Some(t), Some(&o)) => o + t.bytes.len() as u64,
            _ => 0,
        };
        let total = usize::try_from(data_offset + data_len)
            .map_err(|_| WriterError::TooLarge("file (for this platform's address space)"))?;
        let mut out = vec![0u8; total];
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        out[10..12].copy_from_slice(&self.minor_version().to_le_bytes());
        out[16..24].copy_from_slice(&(table.len() as u64).to_le_bytes());
        out[24..32].copy_from_slice(&data_offset.to_le_bytes());
        out[32..40].copy_from_slice(&data_len.to_le_bytes());
        out[HEADER_LEN..HEADER_LEN + table.len()].copy_from_slice(&table);
        for (t, &o) in self.tensors.iter().zip(&offsets) {
            let at = (data_offset + o) as usize;
            out[at..at + t.bytes.len()].copy_from_slice(&t.bytes);
        }
        fix_checksum(&mut out);
        debug_assert_eq!(ALIGN, 64);
        Ok(out)
    }

    /// Serialise and write to `path` (through a temporary file renamed into place, so a reader
    /// never maps a half-written file).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}
