//! Batch-normalisation folding, in f64, rounded once to f32.
//!
//! An affine layer (format 1.1) is such a map already, stored; it is folded by exactly the same
//! code as a BN (its [`Affine`] comes from [`Affine::of_affine`] instead of
//! [`Affine::of_batch_norm`]).
//!
//! At inference a BN layer is the per-feature affine map `y = s * x + t` with
//! `s = gamma / sqrt(var + eps)` and `t = beta - mean * s`. Weights are stored `[out, in]`
//! row-major, so with `z[o] = sum_i W[o, i] x[i] + b[o]`:
//!
//! - Dense -> BN (backward fold): `W'[o, i] = s[o] W[o, i]`, `b'[o] = s[o] b[o] + t[o]`.
//! - BN -> Dense (forward fold): `W'[o, i] = W[o, i] s[i]`, `b'[o] = b[o] + sum_i W[o, i] t[i]`.
//!
//! Both may apply to one dense layer; everything is computed in f64 from the stored values and
//! rounded to f32 once, so the folded weights carry one rounding error each.
//!
//! [`lower`] decides, for a whole model, which BN folds backward, which forward and which stays a
//! per-feature affine op; the plan (`crate::plan`) packs what it produces for the kernels.

use crate::error::LayerError;
use crate::model::{AffineView, BatchNormView, DenseView};

/// A per-feature affine map `y = scale * x + shift`, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Affine {
    /// Per-feature scale.
    pub scale: Vec<f64>,
    /// Per-feature shift.
    pub shift: Vec<f64>,
}

impl Affine {
    /// The affine map of a BN layer.
    ///
    /// The model has validated the statistics (finite, `var + eps > 0`), so `scale` is finite
    /// unless `gamma / sqrt(var + eps)` overflows f64, which needs `var + eps` below 1e-600 and
    /// cannot happen for values stored as f32 or narrower.
    pub fn of_batch_norm(bn: &BatchNormView) -> Affine {
        let (scale, shift) = (0..bn.features)
            .map(|j| {
                let s = bn.gamma_f64(j) / (bn.moving_variance.get_f64(j) + bn.eps).sqrt();
                (s, bn.beta_f64(j) - bn.moving_mean.get_f64(j) * s)
            })
            .unzip();
        Affine { scale, shift }
    }

    /// The map of an affine layer (format 1.1): its scale and shift as stored, widened to f64
    /// (1 and 0 where absent).
    pub fn of_affine(af: &AffineView) -> Affine {
        let (scale, shift) = (0..af.features)
            .map(|j| (af.scale_f64(j), af.shift_f64(j)))
            .unzip();
        Affine { scale, shift }
    }

    /// `then ∘ self`: apply `self`, then `then`.
    pub fn then(&self, then: &Affine) -> Affine {
        let scale = self
            .scale
            .iter()
            .zip(&then.scale)
            .map(|(a, b)| a * b)
            .collect();
        let shift = self
            .shift
            .iter()
            .zip(&then.scale)
            .zip(&then.shift)
            .map(|((t, s2), t2)| s2 * t + t2)
            .collect();
        Affine { scale, shift }
    }

    /// Round to f32 vectors (scale, shift).
    pub fn to_f32(&self) -> (Vec<f32>, Vec<f32>) {
        (
            self.scale.iter().map(|&v| v as f32).collect(),
            self.shift.iter().map(|&v| v as f32).collect(),
        )
    }
}

/// A dense layer after folding: weights `[outputs, inputs]` row-major and a bias, in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedDense {
    /// Input features.
    pub inputs: usize,
    /// Output features.
    pub outputs: usize,
    /// Weights, `[outputs, inputs]` row-major.
    pub weight: Vec<f32>,
    /// Bias, one per output (a dense layer without bias gets zeros).
    pub bias: Vec<f32>,
}

/// Fold an optional BN before (`pre`, over the inputs) and after (`post`, over the outputs) into a
/// dense layer.
///
/// Fails with [`LayerError::FoldOverflow`] naming the output feature when a folded value overflows
/// f32 (large weights times a huge `1 / sqrt(var + eps)`), rather than running with infinities.
pub fn fold_dense(
    dense: &DenseView,
    pre: Option<&Affine>,
    post: Option<&Affine>,
) -> Result<FoldedDense, LayerError> {
    let (inputs, outputs) = (dense.inputs, dense.outputs);
    let mut weight = Vec::with_capacity(outputs * inputs);
    let mut bias = Vec::with_capacity(outputs);
    let mut row = vec![0f64; inputs];
    for o in 0..outputs {
        let mut acc = dense.bias_f64(o);
        dense.weight.read_f64(o * inputs, &mut row);
        if let Some(pre) = pre {
            for (i, r) in row.iter_mut().enumerate() {
                acc += *r * pre.shift[i];
                *r *= pre.scale[i];
            }
        }
        if let Some(post) = post {
            let s = post.scale[o];
            row.iter_mut().for_each(|r| *r *= s);
            acc = acc * s + post.shift[o];
        }
        let start = weight.len();
        weight.extend(row.iter().map(|&v| v as f32));
        bias.push(acc as f32);
        if !(acc as f32).is_finite() || weight[start..].iter().any(|v| !v.is_finite()) {
            return Err(LayerError::FoldOverflow { feature: o });
        }
    }
    Ok(FoldedDense {
        inputs,
        outputs,
        weight,
        bias,
    })
}

mod lower;

pub use lower::{Lowered, LoweredStep, lower};
