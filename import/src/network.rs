//! The converted network before it is written: layers holding their tensors in their source
//! dtype, bit for bit, until `--dtype` asks for another.

use bnfold::format::{AffineTensors, BatchNormTensors, DType, Writer};
use bnfold::{Activation, Model};
use half::{bf16, f16};

use crate::error::Result;

/// A tensor in one of the format's dtypes: shape and little-endian element bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Storage type.
    pub dtype: DType,
    /// Shape, outermost first.
    pub dims: Vec<usize>,
    /// `product(dims) * dtype.size()` little-endian bytes.
    pub data: Vec<u8>,
}

impl Tensor {
    /// An f32 tensor from values.
    pub fn from_f32(dims: Vec<usize>, values: &[f32]) -> Tensor {
        Tensor {
            dtype: DType::F32,
            dims,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// True if there are no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Element `i`, widened to f32 (exact for every dtype).
    pub fn get(&self, i: usize) -> f32 {
        let b = &self.data;
        match self.dtype {
            DType::F32 => f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]),
            DType::F16 => f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
            DType::BF16 => bf16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
        }
    }

    /// All elements widened to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }

    /// The same values in `dtype` (rounded to nearest even when narrowing; exact when widening).
    pub fn cast(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype {
            return self.clone();
        }
        let v = self.to_f32();
        let data = match dtype {
            DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::F16 => v
                .iter()
                .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                .collect(),
            DType::BF16 => v
                .iter()
                .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                .collect(),
        };
        Tensor {
            dtype,
            dims: self.dims.clone(),
            data,
        }
    }

    /// Values computed from this tensor's (in f64, rounded once): stored in this tensor's dtype
    /// when every result is exactly representable there, else in f32.
    pub fn map(&self, dims: Vec<usize>, f: impl Fn(f64) -> f64) -> Tensor {
        let v: Vec<f32> = self.to_f32().iter().map(|&x| f(x as f64) as f32).collect();
        let t = Tensor::from_f32(dims, &v);
        let narrow = t.cast(self.dtype);
        if narrow.to_f32() == v { narrow } else { t }
    }

    /// The transpose of a 2-D tensor, bytes moved unchanged.
    pub fn transpose2(&self) -> Tensor {
        let (r, c) = (self.dims[0], self.dims[1]);
        let s = self.dtype.size();
        let mut data = vec![0u8; self.data.len()];
        for i in 0..r {
            for j in 0..c {
                let from = (i * c + j) * s;
                let to = (j * r + i) * s;
                data[to..to + s].copy_from_slice(&self.data[from..from + s]);
            }
        }
        Tensor {
            dtype: self.dtype,
            dims: vec![c, r],
            data,
        }
    }

    /// The same bytes with another shape of the same element count.
    pub fn reshaped(mut self, dims: Vec<usize>) -> Tensor {
        debug_assert_eq!(dims.iter().product::<usize>(), self.len());
        self.dims = dims;
        self
    }

    /// All elements equal `v` (bit-level: -0.0 is not 0.0).
    pub fn all_equal(&self, v: f32) -> bool {
        (0..self.len()).all(|i| self.get(i).to_bits() == v.to_bits())
    }
}

/// What a converted layer is.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerSpec {
    /// `y = W x + b`, `W` stored `[outputs, inputs]`.
    Dense {
        /// `[outputs, inputs]`.
        weight: Tensor,
        /// `[outputs]`.
        bias: Option<Tensor>,
    },
    /// Inference-mode batch normalisation with its statistics and eps.
    BatchNorm {
        /// eps as the framework used it.
        eps: f64,
        /// Scale (absent: 1).
        gamma: Option<Tensor>,
        /// Shift (absent: 0).
        beta: Option<Tensor>,
        /// Moving mean.
        mean: Tensor,
        /// Moving variance.
        var: Tensor,
    },
    /// Per-feature `scale * x + shift` (format 1.1).
    Affine {
        /// Scale (absent: 1).
        scale: Option<Tensor>,
        /// Shift (absent: 0).
        shift: Option<Tensor>,
    },
    /// An activation.
    Act(Activation),
}

impl LayerSpec {
    fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        match self {
            LayerSpec::Dense { weight, bias } => std::iter::once(weight).chain(bias).collect(),
            LayerSpec::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                ..
            } => gamma
                .iter_mut()
                .chain(beta.iter_mut())
                .chain([mean, var])
                .collect(),
            LayerSpec::Affine { scale, shift } => {
                scale.iter_mut().chain(shift.iter_mut()).collect()
            }
            LayerSpec::Act(_) => Vec::new(),
        }
    }

    /// Short name of the kind, for reports.
    pub fn kind_name(&self) -> &'static str {
        match self {
            LayerSpec::Dense { .. } => "Dense",
            LayerSpec::BatchNorm { .. } => "BatchNorm",
            LayerSpec::Affine { .. } => "Affine",
            LayerSpec::Act(_) => "Activation",
        }
    }
}

/// A converted layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// Name (from the source node or module).
    pub name: String,
    /// What it computes.
    pub spec: LayerSpec,
}

/// A converted network, ready to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// Width of the input rows.
    pub input_features: usize,
    /// Layers in order.
    pub layers: Vec<Layer>,
    /// Metadata, in order.
    pub metadata: Vec<(String, String)>,
}

impl Network {
    /// Store every tensor as `dtype`.
    pub fn cast(&mut self, dtype: DType) {
        for l in &mut self.layers {
            for t in l.spec.tensors_mut() {
                *t = t.cast(dtype);
            }
        }
    }

    /// The dtypes the tensors are stored in, each once, in order of first use.
    pub fn dtypes(&mut self) -> Vec<DType> {
        let mut out = Vec::new();
        for l in &mut self.layers {
            for t in l.spec.tensors_mut() {
                if !out.contains(&t.dtype) {
                    out.push(t.dtype);
                }
            }
        }
        out
    }

    /// The first metadata value under `key`.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Serialise as a bnfold weight file and check that it loads as a valid model (so that no
    /// invalid file is ever written). Tensors are named `LAYER.weight`, `LAYER.bias`,
    /// `LAYER.gamma`, ... after their layer.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut w = Writer::new(self.input_features);
        for (k, v) in &self.metadata {
            w.metadata(k.clone(), v.clone());
        }
        for l in &self.layers {
            let name = l.name.as_str();
            let add = |w: &mut Writer, role: &str, t: &Tensor| {
                w.tensor_bytes(&format!("{name}.{role}"), t.dtype, &t.dims, t.data.clone())
            };
            match &l.spec {
                LayerSpec::Dense { weight, bias } => {
                    let wt = add(&mut w, "weight", weight)?;
                    let b = bias.as_ref().map(|b| add(&mut w, "bias", b)).transpose()?;
                    w.dense(name, weight.dims[1], weight.dims[0], wt, b)?;
                }
                LayerSpec::BatchNorm {
                    eps,
                    gamma,
                    beta,
                    mean,
                    var,
                } => {
                    let gamma = gamma
                        .as_ref()
                        .map(|t| add(&mut w, "gamma", t))
                        .transpose()?;
                    let beta = beta.as_ref().map(|t| add(&mut w, "beta", t)).transpose()?;
                    let moving_mean = add(&mut w, "moving_mean", mean)?;
                    let moving_variance = add(&mut w, "moving_variance", var)?;
                    let t = BatchNormTensors {
                        gamma,
                        beta,
                        moving_mean,
                        moving_variance,
                    };
                    w.batch_norm(name, mean.len(), *eps, t)?;
                }
                LayerSpec::Affine { scale, shift } => {
                    let features = scale.as_ref().or(shift.as_ref()).map(Tensor::len);
                    let scale = scale
                        .as_ref()
                        .map(|t| add(&mut w, "scale", t))
                        .transpose()?;
                    let shift = shift
                        .as_ref()
                        .map(|t| add(&mut w, "shift", t))
                        .transpose()?;
                    w.affine(name, features.unwrap_or(0), AffineTensors { scale, shift })?;
                }
                LayerSpec::Act(a) => {
                    w.activation(name, *a)?;
                }
            }
        }
        let bytes = w.to_bytes()?;
        Model::from_bytes(&bytes)?;
        Ok(bytes)
    }
}
