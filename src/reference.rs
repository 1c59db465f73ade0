//! The plain f64 forward pass that tests trust.
//!
//! Written for obviousness, not speed: it reads the stored tensors directly from the model (no
//! folding, no packing, no kernels) and follows the layer definitions literally, in f64.

use crate::error::{InputError, Result};
use crate::format::Activation;
use crate::model::{LayerView, Model};

/// The activation of one layer for every row, `[batch, width]` row-major, in f64.
pub type LayerOutput = Vec<f64>;

/// Check that `input` holds `batch` rows of the model's input width.
fn check_input(model: &Model, len: usize, batch: usize) -> Result<()> {
    if batch == 0 {
        return Err(InputError::EmptyBatch.into());
    }
    if Some(len) != batch.checked_mul(model.input_features()) {
        return Err(InputError::Length {
            len,
            batch,
            features: model.input_features(),
            expected: batch.saturating_mul(model.input_features()),
        }
        .into());
    }
    Ok(())
}

/// Layer `index` of `model` applied to `x`, the `[batch, width]` output of the layer before it
/// (or the network's input), in f64. Layer by layer, so that a caller can compare each layer and
/// drop it (as [`crate::verify()`] does) instead of keeping every layer's output.
///
/// Panics if `index` is out of range; `x.len()` must be a multiple of `batch`.
pub fn forward_layer(model: &Model, index: usize, x: Vec<f64>, batch: usize) -> Result<Vec<f64>> {
    let width = x.len() / batch.max(1);
    Ok(match model.layer_view(index)? {
        LayerView::Dense(d) => {
            let mut y = vec![0.0; batch * d.outputs];
            for r in 0..batch {
                for o in 0..d.outputs {
                    let mut acc = d.bias_f64(o);
                    for i in 0..d.inputs {
                        acc += x[r * d.inputs + i] * d.weight.get_f64(o * d.inputs + i);
                    }
                    y[r * d.outputs + o] = acc;
                }
            }
            y
        }
        LayerView::BatchNorm(bn) => {
            let mut y = x;
            for (n, v) in y.iter_mut().enumerate() {
                let j = n % bn.features;
                let denom = (bn.moving_variance.get_f64(j) + bn.eps).sqrt();
                *v = bn.gamma_f64(j) * (*v - bn.moving_mean.get_f64(j)) / denom + bn.beta_f64(j);
            }
            y
        }
        LayerView::Affine(af) => {
            let mut y = x;
            for (n, v) in y.iter_mut().enumerate() {
                let j = n % af.features;
                *v = af.scale_f64(j) * *v + af.shift_f64(j);
            }
            y
        }
        LayerView::Activation(Activation::Softmax) => {
            let mut y = x;
            for row in y.chunks_exact_mut(width) {
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
                row.iter_mut().for_each(|v| *v = (*v - m).exp() / s);
            }
            y
        }
        LayerView::Activation(a) => {
            let mut y = x;
            y.iter_mut().for_each(|v| *v = a.eval_f64(*v));
            y
        }
    })
}

/// Run `batch` rows through `model` in f64 and return every layer's output (entry `i` is the output
/// of layer `i`). `input` is `[batch, input_features]` row-major.
pub fn forward_all(model: &Model, input: &[f64], batch: usize) -> Result<Vec<LayerOutput>> {
    check_input(model, input.len(), batch)?;
    let mut x = input.to_vec();
    let mut outputs = Vec::with_capacity(model.layers().len());
    for index in 0..model.layers().len() {
        x = forward_layer(model, index, x, batch)?;
        outputs.push(x.clone());
    }
    Ok(outputs)
}

/// The network's output for `batch` rows, in f64.
pub fn forward(model: &Model, input: &[f64], batch: usize) -> Result<Vec<f64>> {
    check_input(model, input.len(), batch)?;
    let mut x = input.to_vec();
    for index in 0..model.layers().len() {
        x = forward_layer(model, index, x, batch)?;
    }
    Ok(x)
}

/// An elementwise activation in f64: [`Activation::eval_f64`], the one definition.
pub fn activation(a: Activation, x: f64) -> f64 {
    a.eval_f64(x)
}
