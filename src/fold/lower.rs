//! Lowering: a model's layers become the steps a plan runs.
//!
//! Folded mode decides where every BN goes (an affine layer, format 1.1, is treated exactly like a
//! BN: below, "BN" means either):
//! 1. runs of consecutive BN layers are composed into one affine map (in f64);
//! 2. a BN right after a dense layer folds *backward* into it (scales its rows, shifts its bias);
//! 3. a BN right before a dense layer, and not right after one, folds *forward* into it (scales
//!    its columns, adds `W t` to its bias): input normalisation, or Keras' Dense -> act -> BN ->
//!    Dense;
//! 4. any other BN (alone, last, between two activations) stays a per-feature affine op, unless
//!    its combined scale or shift overflows f32: then each layer of the run keeps its own form
//!    (`gamma * (x - mean) / sqrt(var + eps) + beta`), so the folded plan stays finite wherever
//!    the unfolded one is. (A dense fold that would overflow f32 is a load error,
//!    `LayerError::FoldOverflow`, naming the layer and feature.)
//!
//! Unfolded mode folds nothing: each layer is its own step, BN computed exactly as frameworks do
//! at inference, `gamma * (x - mean) / sqrt(var + eps) + beta` in f32, and an affine layer as its
//! own per-feature `scale * x + shift` step in f32.

use super::{Affine, FoldedDense, fold_dense_to};
use crate::activation::Activation;
use crate::error::Result;
use crate::format::DType;
use crate::kernels::EpilogueOp;
use crate::model::{LayerView, Model};
use crate::plan::{Mode, Options};

/// What one lowered step computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Lowered {
    /// A dense layer, with any BN folded into it (folded mode) or as stored (unfolded mode).
    Dense(FoldedDense),
    /// A per-feature or elementwise op on the current width: an activation (never softmax), an
    /// affine map of an unfoldable BN (folded mode) or a BN with its statistics (unfolded mode).
    Elementwise(EpilogueOp),
    /// Row-wise softmax.
    Softmax,
}

/// A lowered step and the last model layer whose output it produces (for layer-by-layer
/// comparison: in folded mode one step can cover a dense layer and the BN after it).
#[derive(Debug, Clone, PartialEq)]
pub struct LoweredStep {
    /// What the step computes.
    pub op: Lowered,
    /// Index of the last model layer it covers.
    pub last_layer: usize,
}

/// A token of the layer sequence while grouping for the folded plan.
enum Token {
    Dense(usize),
    /// A run of consecutive BN and affine layers composed into one affine map; the first and the
    /// last layer's index.
    Bn(Affine, usize, usize),
    Act(Activation, usize),
}

/// Lower `model` for `mode`, handing each step to `emit` in order as soon as it is made (so that
/// a caller can pack a dense layer's weights and drop the f32 copy before the next is folded).
///
/// Fails with a layer error when folding would overflow f32 (see [`fold_dense`](super::fold_dense)), or with the
/// error `emit` returns.
pub fn lower(
    model: &Model,
    options: &Options,
    emit: &mut dyn FnMut(LoweredStep) -> Result<()>,
) -> Result<()> {
    match options.mode {
        Mode::Folded => lower_folded(model, options.weights, emit),
        Mode::Unfolded => lower_unfolded(model, options.weights, emit),
    }
}

fn lower_unfolded(
    model: &Model,
    weights: DType,
    emit: &mut dyn FnMut(LoweredStep) -> Result<()>,
) -> Result<()> {
    for index in 0..model.layers().len() {
        emit(LoweredStep {
            op: unfolded_op(model, index, weights)?,
            last_layer: index,
        })?;
    }
    Ok(())
}

/// Layer `index` as the unfolded path computes it, dense weights rounded to `weights`.
fn unfolded_op(model: &Model, index: usize, weights: DType) -> Result<Lowered> {
    Ok(match model.layer_view(index)? {
        LayerView::Dense(d) => {
            let mut weight = d.weight.to_f32_vec();
            if weights != DType::F32 {
                for (i, w) in weight.iter_mut().enumerate() {
                    *w = super::round_to(weights, f64::from(*w));
                    if !w.is_finite() {
                        return Err(model.layer_err(
                            index,
                            crate::error::LayerError::WeightOutOfRange {
                                feature: i / d.inputs.max(1),
                                dtype: weights.name(),
                            },
                        ));
                    }
                }
            }
            let dense = FoldedDense {
                inputs: d.inputs,
                outputs: d.outputs,
                weight,
                bias: match d.bias {
                    Some(b) => b.to_f32_vec(),
                    None => vec![0.0; d.outputs],
                },
            };
            model.release_layer_pages(index);
            Lowered::Dense(dense)
        }
        LayerView::BatchNorm(bn) => {
            let n = bn.features;
            // Exactly as frameworks compute it: stored values widened to f32, eps added in f32,
            // the square root taken once per feature.
            let denom = bn
                .moving_variance
                .to_f32_vec()
                .iter()
                .map(|&v| (v + bn.eps as f32).sqrt())
                .collect();
            Lowered::Elementwise(EpilogueOp::BatchNorm {
                gamma: bn.gamma.map_or_else(|| vec![1.0; n], |g| g.to_f32_vec()),
                beta: bn.beta.map_or_else(|| vec![0.0; n], |b| b.to_f32_vec()),
                mean: bn.moving_mean.to_f32_vec(),
                denom,
            })
        }
        LayerView::Affine(af) => {
            let n = af.features;
            Lowered::Elementwise(EpilogueOp::Affine {
                scale: af.scale.map_or_else(|| vec![1.0; n], |s| s.to_f32_vec()),
                shift: af.shift.map_or_else(|| vec![0.0; n], |t| t.to_f32_vec()),
            })
        }
        LayerView::Activation(Activation::Softmax) => Lowered::Softmax,
        LayerView::Activation(a) => Lowered::Elementwise(EpilogueOp::Act(a)),
    })
}

fn lower_folded(
    model: &Model,
    weights: DType,
    emit: &mut dyn FnMut(LoweredStep) -> Result<()>,
) -> Result<()> {
    // 1. Tokens, with runs of consecutive BN layers composed into one affine map.
    let mut tokens: Vec<Token> = Vec::with_capacity(model.layers().len());
    for index in 0..model.layers().len() {
        match model.layer_view(index)? {
            LayerView::Dense(_) => tokens.push(Token::Dense(index)),
            view @ (LayerView::BatchNorm(_) | LayerView::Affine(_)) => {
                let a = match view {
                    LayerView::BatchNorm(bn) => Affine::of_batch_norm(&bn),
                    LayerView::Affine(af) => Affine::of_affine(&af),
                    _ => unreachable!("matched BatchNorm or Affine above"),
                };
                if let Some(Token::Bn(prev, _, last)) = tokens.last_mut() {
                    *prev = prev.then(&a);
                    *last = index;
                } else {
                    tokens.push(Token::Bn(a, index, index));
                }
            }
            LayerView::Activation(a) => tokens.push(Token::Act(a, index)),
        }
    }

    // 2. Steps: backward folds first (a BN right after a dense layer belongs to it), then
    //    forward folds, then whatever is left stays an affine op.
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Dense(index) => {
                let pre = match i.checked_sub(1).map(|p| &tokens[p]) {
                    Some(Token::Bn(a, _, _))
                        if !matches!(
                            i.checked_sub(2).map(|p| &tokens[p]),
                            Some(Token::Dense(_))
                        ) =>
                    {
                        Some(a)
                    }
                    _ => None,
                };
                let (post, last) = match tokens.get(i + 1) {
                    Some(Token::Bn(a, _, last)) => (Some(a), *last),
                    _ => (None, *index),
                };
                let LayerView::Dense(dense) = model.layer_view(*index)? else {
                    unreachable!("Token::Dense is only made for dense layers");
                };
                let folded = fold_dense_to(&dense, pre, post, weights)
                    .map_err(|e| model.layer_err(*index, e))?;
                // The folded copy is all the plan needs: let the OS drop the mapped weights.
                model.release_layer_pages(*index);
                emit(LoweredStep {
                    op: Lowered::Dense(folded),
                    last_layer: last,
                })?;
                i += if post.is_some() { 2 } else { 1 };
            }
            Token::Bn(a, first, last) => {
                // Folded forward by the dense layer that follows; else an affine op, if its f32
                // form is finite.
                if !matches!(tokens.get(i + 1), Some(Token::Dense(_))) {
                    let (scale, shift) = a.to_f32();
                    if scale.iter().chain(&shift).all(|v| v.is_finite()) {
                        emit(LoweredStep {
                            op: Lowered::Elementwise(EpilogueOp::Affine { scale, shift }),
                            last_layer: *last,
                        })?;
                    } else {
                        // The combined scale or shift does not fit f32 (gamma 3e38 over a
                        // variance of 0.25; a mean of 3e38): `s * x + t` would give infinities
                        // where the layers' own form, `gamma * (x - mean) / denom + beta`,
                        // stays finite. Keep that form, layer by layer: exactly the unfolded
                        // computation, so finite wherever the unfolded path is.
                        for index in *first..=*last {
                            emit(LoweredStep {
                                op: unfolded_op(model, index, weights)?,
                                last_layer: index,
                            })?;
                        }
                    }
                }
                i += 1;
            }
            Token::Act(a, index) => {
                let op = match a {
                    Activation::Softmax => Lowered::Softmax,
                    a => Lowered::Elementwise(EpilogueOp::Act(*a)),
                };
                emit(LoweredStep {
                    op,
                    last_layer: *index,
                })?;
                i += 1;
            }
        }
    }
    Ok(())
}
