//! The plain f64 forward pass that tests trust.
//!
//! Written for obviousness, not speed: it reads the stored tensors directly from the model (no
//! folding, no packing, no kernels) and follows the layer definitions literally, in f64.

use crate::error::{InputError, Result};
use crate::format::{Activation, LayerKind};
use crate::model::Model;

/// The activation of one layer for every row, `[batch, width]` row-major, in f64.
pub type LayerOutput = Vec<f64>;

/// Run `batch` rows through `model` in f64 and return every layer's output (entry `i` is the output
/// of layer `i`). `input` is `[batch, input_features]` row-major.
pub fn forward_all(model: &Model, input: &[f64], batch: usize) -> Result<Vec<LayerOutput>> {
    if batch == 0 {
        return Err(InputError::EmptyBatch.into());
    }
    if Some(input.len()) != batch.checked_mul(model.input_features()) {
        return Err(InputError::Length {
            len: input.len(),
            batch,
            features: model.input_features(),
            expected: batch.saturating_mul(model.input_features()),
        }
        .into());
    }
    let mut x = input.to_vec();
    let mut width = model.input_features();
    let mut outputs = Vec::with_capacity(model.layers().len());
    for layer in model.layers() {
        x = match layer.kind {
            LayerKind::Dense {
                inputs,
                outputs: n_out,
                weight,
                bias,
            } => {
                let w = model.tensor_data(weight)?;
                let b = bias.map(|t| model.tensor_data(t)).transpose()?;
                let mut y = vec![0.0; batch * n_out];
                for r in 0..batch {
                    for o in 0..n_out {
                        let mut acc = b.map_or(0.0, |b| b.get_f64(o));
                        for i in 0..inputs {
                            acc += x[r * inputs + i] * w.get_f64(o * inputs + i);
                        }
                        y[r * n_out + o] = acc;
                    }
                }
                width = n_out;
                y
            }
            LayerKind::BatchNorm {
                features,
                eps,
                gamma,
                beta,
                moving_mean,
                moving_variance,
            } => {
                let g = gamma.map(|t| model.tensor_data(t)).transpose()?;
                let be = beta.map(|t| model.tensor_data(t)).transpose()?;
                let mean = model.tensor_data(moving_mean)?;
                let var = model.tensor_data(moving_variance)?;
                let mut y = x;
                for (n, v) in y.iter_mut().enumerate() {
                    let j = n % features;
                    let gj = g.map_or(1.0, |g| g.get_f64(j));
                    let bj = be.map_or(0.0, |b| b.get_f64(j));
                    *v = gj * (*v - mean.get_f64(j)) / (var.get_f64(j) + eps).sqrt() + bj;
                }
                y
            }
            LayerKind::Activation(a) => {
                let mut y = x;
                if a == Activation::Softmax {
                    for row in y.chunks_exact_mut(width) {
                        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
                        row.iter_mut().for_each(|v| *v = (*v - m).exp() / s);
                    }
                } else {
                    y.iter_mut().for_each(|v| *v = activation(a, *v));
                }
                y
            }
        };
        outputs.push(x.clone());
    }
    Ok(outputs)
}

/// The network's output for `batch` rows, in f64.
pub fn forward(model: &Model, input: &[f64], batch: usize) -> Result<Vec<f64>> {
    let mut all = forward_all(model, input, batch)?;
    Ok(all.pop().unwrap_or_else(|| input.to_vec()))
}

/// An elementwise activation in f64 (softmax is row-wise and handled by the caller).
pub fn activation(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Identity | Activation::Softmax => x,
        // Written so that NaN propagates, as in PyTorch (`f64::max` would turn it into 0).
        Activation::Relu => {
            if x < 0.0 { 0.0 } else { x }
        }
        Activation::LeakyRelu { alpha } => {
            if x < 0.0 {
                alpha as f64 * x
            } else {
                x
            }
        }
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::GeluErf => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
    }
}
