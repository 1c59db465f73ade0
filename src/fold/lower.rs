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
//!    the unfolded one is. (A dense fold whose weights or bias would overflow f32 is a load error,
//!    `LayerError::FoldOverflow`, naming the layer and feature.)
//!
//! # Folds that could overflow the accumulation
//!
//! Folded weights and a folded bias that each fit f32 can still overflow in the sum: a BN scale
//! `s` multiplies every partial sum of the dense layer and puts `s * mean` in the bias, so
//! `s * z` and `s * mean` can overflow where the unfolded `s * (z - mean)` does not (`z` and
//! `mean` cancel), and products `s * w_i * x_i` can overflow where `sum_i w_i x_i` cancels. So
//! rules 2 and 3 apply only to a dense layer whose folded accumulation provably cannot overflow
//! for the inputs the plan can give it:
//!
//! - bounds are propagated through the folded plan as it is lowered, from `|x| <=`
//!   [`INPUT_BOUND`] on the model input: `B_i` bounds `|x_i|` at the layer's input, every step
//!   before it included (each bound capped at `f32::MAX`: a finite f32 is no larger);
//! - the layer folds if, for every output `o`, `rho(n) * (sum_i |W'[o, i]| B_i + |b'[o]|) <=
//!   f32::MAX`, with `W'`, `b'` the folded weights (rounded to the packed type) and bias, `n`
//!   inputs, and `rho(n) = exp((n + 2) 2^-23) >= (1 + 2^-24)^(n + 2)`: every product and partial
//!   sum the kernel computes, fused or not, in any order, is then at most `f32::MAX`;
//! - otherwise the BN run before it (if it would fold forward), the dense layer and the BN run
//!   after it are lowered exactly as in unfolded mode, each BN in its own subtract-then-scale form,
//!   which the plan fuses into the dense layer's epilogue (the same operations in the same order
//!   as the unfolded path's separate pass). The layer stays one step.
//!
//! Guarantee: for model inputs within [`INPUT_BOUND`], a dense layer with a folded BN never
//! produces a non-finite value from finite inputs (by induction over the steps, every finite
//! value the plan computes is within its bound). The first non-finite value of a folded plan
//! therefore comes from a step that computes the unfolded path's own formula (a dense layer without
//! BN, a BN kept in its own form, an activation), or an affine op of rule 4 (one rounding of the
//! same map), on inputs equal to the unfolded path's up to rounding: the folded output is finite
//! wherever the unfolded one is, except within rounding of `f32::MAX`, or where such a step
//! magnifies a rounding-level difference past `f32::MAX` (a BN whose `gamma / denom` exceeds about
//! `f32::MAX / ulp(z)`), as it would between two instruction-set paths of the unfolded plan.
//! `docs/BATCHNORM.md` ("Folding that could overflow") has the argument.
//!
//! Unfolded mode folds nothing: each layer is its own step, BN computed exactly as frameworks do
//! at inference, `gamma * (x - mean) / sqrt(var + eps) + beta` in f32, and an affine layer as its
//! own per-feature `scale * x + shift` step in f32.

use super::{Affine, FoldedDense, fold_dense_rows};
use crate::activation::Activation;
use crate::error::{LayerError, Result};
use crate::format::{CHECKSUM_CHUNK, DType};
use crate::kernels::EpilogueOp;
use crate::model::{DenseView, LayerView, Model};
use crate::plan::{Mode, Options};

/// What one lowered step computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Lowered {
    /// A dense layer, with any BN folded into it (folded mode) or as stored (unfolded mode).
    Dense(FoldedDense),
    /// A per-feature or elementwise op on the current width: an activation (never softmax), an
    /// affine map of an unfoldable BN (folded mode) or a BN with its statistics (unfolded mode,
    /// and the BN layers folded mode keeps in their own form).
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

/// What the lowering fills a dense layer's rows into, one output at a time and in order: a
/// [`FoldedDense`] for [`lower`], the packed kernel itself for the plan's compile (so that the f32
/// copy of a whole layer never exists there).
pub(crate) trait RowSink {
    /// Append the next output's weights (already rounded to the plan's weight type) and bias.
    fn push_row(&mut self, weights: &[f32], bias: f32);

    /// Append the next `biases.len()` outputs: their weights `[biases.len(), inputs]` row-major
    /// and their biases. By default, [`RowSink::push_row`] for each.
    fn push_rows(&mut self, weights: &[f32], biases: &[f32]) {
        let k = weights.len().checked_div(biases.len()).unwrap_or(0);
        for (i, &b) in biases.iter().enumerate() {
            self.push_row(&weights[i * k..(i + 1) * k], b);
        }
    }
}

impl RowSink for FoldedDense {
    fn push_row(&mut self, weights: &[f32], bias: f32) {
        FoldedDense::push_row(self, weights, bias);
    }
    fn push_rows(&mut self, weights: &[f32], biases: &[f32]) {
        FoldedDense::push_rows(self, weights, biases);
    }
}

/// [`Lowered`] with its dense layer as a `D` (a [`RowSink`] the lowering has filled).
pub(crate) enum Op<D> {
    /// A dense layer: every row pushed.
    Dense(D),
    /// As [`Lowered::Elementwise`].
    Elementwise(EpilogueOp),
    /// Row-wise softmax.
    Softmax,
}

/// [`LoweredStep`] with its dense layer as a `D`.
pub(crate) struct Step<D> {
    /// What the step computes.
    pub(crate) op: Op<D>,
    /// Index of the last model layer it covers.
    pub(crate) last_layer: usize,
}

/// The model-input bound of the fold-overflow rule (module docs, "Folds that could overflow the
/// accumulation"): a dense layer folds its BN neighbours only if its folded accumulation cannot
/// overflow f32 for any model input with every `|x| <= INPUT_BOUND`, propagated through the plan.
///
/// 2^24, the last of f32's run of exact integers: far above normalised inputs and raw 8-, 16- or
/// 24-bit features, and it costs ordinary models nothing: every shipped model, importer fixture
/// and synthetic test network folds completely, the shipped models with 25 orders of magnitude
/// to spare. Larger inputs still run and fold as before; the proof just does not cover them.
pub const INPUT_BOUND: f32 = 16_777_216.0;

/// Slack of every elementwise bound: covers its few roundings of 2^-24 and the vector
/// activations' errors of a few ulps, with room to spare.
const ELEMENTWISE_SLACK: f64 = 1.0 + 1.0 / 1024.0;

/// Upper bounds on `|value|` of each feature of the folded plan's current activations, for model
/// inputs within [`INPUT_BOUND`], while they are finite; each capped at `f32::MAX`, since a finite
/// f32 is no larger (and a non-finite value is some earlier step's doing, not this rule's).
struct Bounds(Vec<f64>);

impl Bounds {
    /// The bound of a dense layer's output when its inputs are within `input`, from the output's
    /// row of weights `W[o, ..]` and its bias `b[o]`: `rho(n)` times the row's absolute mass,
    /// `sum_i |W[o, i]| B_i + |b[o]|`, uncapped. Every product and partial sum of the f32
    /// accumulation (fused or not, in any order) is at most this: each of the at most `n + 2`
    /// roundings (products, sums, the bias) grows it by at most `1 + 2^-24`, and
    /// `rho(n) = exp((n + 2) 2^-23)` covers that and the f64 evaluation of the mass. A dense
    /// step's bounds are these, one per output, taken as its rows are made.
    fn dense_row(row: &[f32], bias: f32, input: &[f64]) -> f64 {
        let rho = ((row.len() as f64 + 2.0) * f64::powi(2.0, -23)).exp();
        rho * (abs_dot(row, input) + f64::from(bias).abs())
    }

    /// [`Bounds::dense_row`] of each row of `rows` (`[biases.len(), input.len()]` row-major),
    /// appended to `out` in order; on the current rayon pool from
    /// [`crate::kernels::PARALLEL_MIN_MACS`] weights (below, rayon is not asked anything).
    fn dense_rows(rows: &[f32], biases: &[f32], input: &[f64], out: &mut Vec<f64>) {
        use rayon::prelude::*;
        if input.is_empty() {
            out.extend(biases.iter().map(|&b| Bounds::dense_row(&[], b, input)));
            return;
        }
        if rows.len() < crate::kernels::PARALLEL_MIN_MACS {
            let each = rows.chunks(input.len()).zip(biases);
            out.extend(each.map(|(row, &b)| Bounds::dense_row(row, b, input)));
            return;
        }
        // In order: an indexed iterator extends a Vec in its own order.
        out.par_extend(
            rows.par_chunks(input.len())
                .zip(biases)
                .with_min_len((crate::kernels::COMPILE_TASK_WEIGHTS / input.len()).max(1))
                .map(|(row, &b)| Bounds::dense_row(row, b, input)),
        );
    }

    /// Whether the dense layer with these output bounds ([`Bounds::dense_row`]) cannot overflow.
    fn fits(rows: &[f64]) -> bool {
        rows.iter().all(|&b| b <= f64::from(f32::MAX))
    }

    /// Replace the bounds by `rows`, capped at `f32::MAX`.
    fn set(&mut self, rows: Vec<f64>) {
        self.0 = rows;
        self.cap();
    }

    fn cap(&mut self) {
        let max = f64::from(f32::MAX);
        // NaN cannot occur (finite weights, statistics and bounds); if it did, `max` is the
        // bound a finite f32 has anyway.
        self.0.iter_mut().for_each(|b| *b = b.min(max));
    }

    /// Update the bounds for `op` (not a dense layer: see [`Bounds::emit_dense`]), then hand it
    /// to `emit` as a step covering up to `last_layer`.
    fn emit<D>(
        &mut self,
        emit: &mut dyn FnMut(Step<D>) -> Result<()>,
        op: Op<D>,
        last_layer: usize,
    ) -> Result<()> {
        self.update(&op);
        emit(Step { op, last_layer })
    }

    /// Take a dense step's output bounds `rows` (one per output, [`Bounds::dense_row`]), then
    /// hand the step to `emit`.
    fn emit_dense<D>(
        &mut self,
        emit: &mut dyn FnMut(Step<D>) -> Result<()>,
        dense: D,
        rows: Vec<f64>,
        last_layer: usize,
    ) -> Result<()> {
        self.set(rows);
        emit(Step {
            op: Op::Dense(dense),
            last_layer,
        })
    }

    /// The bounds after the folded plan runs `op`.
    fn update<D>(&mut self, op: &Op<D>) {
        let per_feature = |b: &mut Vec<f64>, f: &dyn Fn(usize, f64) -> f64| {
            b.iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v = f(j, *v) * ELEMENTWISE_SLACK);
        };
        match op {
            Op::Dense(_) => unreachable!("dense steps take their rows' bounds (`emit_dense`)"),
            Op::Softmax => self.0.iter_mut().for_each(|b| *b = ELEMENTWISE_SLACK),
            Op::Elementwise(EpilogueOp::Act(a)) => match a {
                // Exact, and no larger than the input.
                Activation::Identity | Activation::Relu => {}
                Activation::LeakyRelu { alpha } => {
                    let k = f64::from(alpha.abs()).max(1.0);
                    per_feature(&mut self.0, &|_, b| k * b);
                }
                Activation::Tanh | Activation::Sigmoid | Activation::Softmax => {
                    self.0.iter_mut().for_each(|b| *b = ELEMENTWISE_SLACK);
                }
                // x * Phi(x): at most |x|, and above -0.17.
                Activation::GeluErf | Activation::GeluTanh => {
                    per_feature(&mut self.0, &|_, b| b + 1.0);
                }
            },
            Op::Elementwise(EpilogueOp::Affine { scale, shift }) => {
                per_feature(&mut self.0, &|j, b| {
                    f64::from(scale[j]).abs() * b + f64::from(shift[j]).abs()
                });
            }
            Op::Elementwise(EpilogueOp::BatchNorm {
                gamma,
                beta,
                mean,
                denom,
            }) => {
                // gamma * (x - mean) / denom + beta; denom > 0 (validated: var + eps > 0 in f32).
                per_feature(&mut self.0, &|j, b| {
                    f64::from(gamma[j]).abs() * (b + f64::from(mean[j]).abs()) / f64::from(denom[j])
                        + f64::from(beta[j]).abs()
                });
            }
        }
        self.cap();
    }
}

/// `sum_i |w_i| x_i` in f64 for bounds `x_i >= 0`, in eight independent sums so that it
/// vectorises. Any summation order is within the rounding slack of [`Bounds::dense_row`].
fn abs_dot(w: &[f32], x: &[f64]) -> f64 {
    debug_assert_eq!(w.len(), x.len(), "a bound per input");
    let mut acc = [0f64; 8];
    let (w8, x8) = (w.chunks_exact(8), x.chunks_exact(8));
    let tail: f64 = w8
        .remainder()
        .iter()
        .zip(x8.remainder())
        .map(|(&w, &x)| f64::from(w).abs() * x)
        .sum();
    for (w, x) in w8.zip(x8) {
        for k in 0..8 {
            acc[k] += f64::from(w[k]).abs() * x[k];
        }
    }
    acc.iter().sum::<f64>() + tail
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
    lower_with(model, options, &mut FoldedDense::empty, &mut |s| {
        let op = match s.op {
            Op::Dense(d) => Lowered::Dense(d),
            Op::Elementwise(op) => Lowered::Elementwise(op),
            Op::Softmax => Lowered::Softmax,
        };
        emit(LoweredStep {
            op,
            last_layer: s.last_layer,
        })
    })
}

/// [`lower`], with each dense layer's rows pushed, one output at a time, into a `D` that
/// `begin(inputs, outputs)` makes: the same values in the same order as the [`FoldedDense`] that
/// [`lower`] hands out, without that copy (the plan's compile packs each row as it comes). A `D`
/// the fold-overflow rule discards (module docs) is dropped before the layer is lowered again
/// unfolded into a new one.
///
/// The mapped pages of a dense layer's weights are released (`Model::release_dense_rows`) about a
/// megabyte of rows at a time as they are read, so compiling a large layer holds little of the
/// file resident.
pub(crate) fn lower_with<D: RowSink>(
    model: &Model,
    options: &Options,
    begin: &mut dyn FnMut(usize, usize) -> D,
    emit: &mut dyn FnMut(Step<D>) -> Result<()>,
) -> Result<()> {
    match options.mode {
        Mode::Folded => lower_folded(model, options.weights, begin, emit),
        Mode::Unfolded => lower_unfolded(model, options.weights, begin, emit),
    }
}

fn lower_unfolded<D: RowSink>(
    model: &Model,
    weights: DType,
    begin: &mut dyn FnMut(usize, usize) -> D,
    emit: &mut dyn FnMut(Step<D>) -> Result<()>,
) -> Result<()> {
    for index in 0..model.layers().len() {
        emit(Step {
            op: unfolded_op(model, index, weights, begin)?,
            last_layer: index,
        })?;
    }
    Ok(())
}

/// Lets a dense layer's mapped weight rows go, about [`CHECKSUM_CHUNK`] bytes (1 MiB, counted in
/// f32) at a time, once the lowering has read them (`docs/SAFETY.md` S-5).
struct RowPages<'m> {
    model: &'m Model,
    index: usize,
    /// Rows per release.
    chunk: usize,
    /// Rows released so far.
    released: usize,
}

impl<'m> RowPages<'m> {
    fn new(model: &'m Model, index: usize, dense: &DenseView) -> Self {
        RowPages {
            model,
            index,
            chunk: (CHECKSUM_CHUNK / dense.inputs.saturating_mul(4).max(1)).max(1),
            released: 0,
        }
    }

    /// Row `o` has been read (rows are read in order).
    fn read(&mut self, o: usize) {
        if o + 1 - self.released >= self.chunk {
            self.model
                .release_dense_rows(self.index, self.released..o + 1);
            self.released = o + 1;
        }
    }
}

/// Layer `index` as the unfolded path computes it, dense weights rounded to `weights`.
fn unfolded_op<D: RowSink>(
    model: &Model,
    index: usize,
    weights: DType,
    begin: &mut dyn FnMut(usize, usize) -> D,
) -> Result<Op<D>> {
    Ok(match model.layer_view(index)? {
        LayerView::Dense(d) => Op::Dense(unfolded_dense(model, index, &d, weights, begin, None)?.0),
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
            Op::Elementwise(EpilogueOp::BatchNorm {
                gamma: bn.gamma.map_or_else(|| vec![1.0; n], |g| g.to_f32_vec()),
                beta: bn.beta.map_or_else(|| vec![0.0; n], |b| b.to_f32_vec()),
                mean: bn.moving_mean.to_f32_vec(),
                denom,
            })
        }
        LayerView::Affine(af) => {
            let n = af.features;
            Op::Elementwise(EpilogueOp::Affine {
                scale: af.scale.map_or_else(|| vec![1.0; n], |s| s.to_f32_vec()),
                shift: af.shift.map_or_else(|| vec![0.0; n], |t| t.to_f32_vec()),
            })
        }
        LayerView::Activation(Activation::Softmax) => Op::Softmax,
        LayerView::Activation(a) => Op::Elementwise(EpilogueOp::Act(a)),
    })
}

/// Dense layer `index` (`d`) as the unfolded path computes it, its weights as stored, rounded to
/// `weights`, pushed row by row into a new `D`; with `input` (the bounds of its inputs), also the
/// bound of each output ([`Bounds::dense_row`]).
fn unfolded_dense<D: RowSink>(
    model: &Model,
    index: usize,
    d: &DenseView,
    weights: DType,
    begin: &mut dyn FnMut(usize, usize) -> D,
    input: Option<&[f64]>,
) -> Result<(D, Vec<f64>)> {
    let mut dense = begin(d.inputs, d.outputs);
    let mut rows = Vec::with_capacity(if input.is_some() { d.outputs } else { 0 });
    let mut pages = RowPages::new(model, index, d);
    let mut stored = vec![0f64; d.inputs];
    let mut row = vec![0f32; d.inputs];
    for o in 0..d.outputs {
        // The stored weights (exact in f64), rounded to the plan's type as the folded path
        // rounds its rows; f32 keeps them as stored.
        d.weight.read_f64(o * d.inputs, &mut stored);
        super::round_slice(weights, &stored, &mut row);
        if row.iter().any(|w| !w.is_finite()) {
            return Err(model.layer_err(
                index,
                LayerError::WeightOutOfRange {
                    feature: o,
                    dtype: weights.name(),
                },
            ));
        }
        // Exact: the stored bias widened to f64 and back.
        let bias = d.bias_f64(o) as f32;
        if let Some(input) = input {
            rows.push(Bounds::dense_row(&row, bias, input));
        }
        dense.push_row(&row, bias);
        pages.read(o);
    }
    model.release_layer_pages(index);
    Ok((dense, rows))
}

fn lower_folded<D: RowSink>(
    model: &Model,
    weights: DType,
    begin: &mut dyn FnMut(usize, usize) -> D,
    emit: &mut dyn FnMut(Step<D>) -> Result<()>,
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

    // Bounds on the plan's activations, for the fold-overflow rule (module docs).
    let mut bounds = Bounds(vec![f64::from(INPUT_BOUND); model.input_features()]);

    // 2. Steps: backward folds first (a BN right after a dense layer belongs to it), then
    //    forward folds, then whatever is left stays an affine op.
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Dense(index) => {
                let pre = match i.checked_sub(1).map(|p| &tokens[p]) {
                    Some(Token::Bn(a, first, last))
                        if !matches!(
                            i.checked_sub(2).map(|p| &tokens[p]),
                            Some(Token::Dense(_))
                        ) =>
                    {
                        Some((a, *first..=*last))
                    }
                    _ => None,
                };
                let post = match tokens.get(i + 1) {
                    Some(Token::Bn(a, first, last)) => Some((a, *first..=*last)),
                    _ => None,
                };
                let LayerView::Dense(dense) = model.layer_view(*index)? else {
                    unreachable!("Token::Dense is only made for dense layers");
                };
                // Each block of rows goes to the sink as it is folded, its bounds taken while it
                // is in cache, its mapped weights let go a chunk of rows at a time.
                let mut rows = Vec::with_capacity(dense.outputs);
                let mut folded = begin(dense.inputs, dense.outputs);
                let mut pages = RowPages::new(model, *index, &dense);
                fold_dense_rows(
                    &dense,
                    pre.as_ref().map(|p| p.0),
                    post.as_ref().map(|p| p.0),
                    weights,
                    &mut |first, block, biases| {
                        Bounds::dense_rows(block, biases, &bounds.0, &mut rows);
                        folded.push_rows(block, biases);
                        pages.read(first + biases.len() - 1);
                    },
                )
                .map_err(|e| model.layer_err(*index, e))?;
                if (pre.is_some() || post.is_some()) && !Bounds::fits(&rows) {
                    // The folded accumulation could overflow where the unfolded path's does
                    // not: lower the BN run before (if any), the layer and the BN run after
                    // exactly as the unfolded path does. The BN steps fuse into the dense
                    // layer's epilogue (the same operations in the same order). The folded
                    // rows go first (the weights come back from the page cache).
                    drop(folded);
                    let pre_layers = pre.map(|p| p.1).into_iter().flatten();
                    let post_layers = post.as_ref().map(|p| p.1.clone()).into_iter().flatten();
                    for layer in pre_layers.chain([*index]).chain(post_layers) {
                        if layer == *index {
                            let (d, rows) = unfolded_dense(
                                model,
                                layer,
                                &dense,
                                weights,
                                begin,
                                Some(&bounds.0),
                            )?;
                            bounds.emit_dense(emit, d, rows, layer)?;
                        } else {
                            bounds.emit(emit, unfolded_op(model, layer, weights, begin)?, layer)?;
                        }
                    }
                } else {
                    // The plan has the rows: let the OS drop the rest of the mapped layer.
                    model.release_layer_pages(*index);
                    let last = post.as_ref().map_or(*index, |p| *p.1.end());
                    bounds.emit_dense(emit, folded, rows, last)?;
                }
                i += if post.is_some() { 2 } else { 1 };
            }
            Token::Bn(a, first, last) => {
                // Folded forward by the dense layer that follows; else an affine op, if its f32
                // form is finite.
                if !matches!(tokens.get(i + 1), Some(Token::Dense(_))) {
                    let (scale, shift) = a.to_f32();
                    if scale.iter().chain(&shift).all(|v| v.is_finite()) {
                        bounds.emit(
                            emit,
                            Op::Elementwise(EpilogueOp::Affine { scale, shift }),
                            *last,
                        )?;
                    } else {
                        // The combined scale or shift does not fit f32 (gamma 3e38 over a
                        // variance of 0.25; a mean of 3e38): `s * x + t` would give infinities
                        // where the layers' own form, `gamma * (x - mean) / denom + beta`,
                        // stays finite. Keep that form, layer by layer: exactly the unfolded
                        // computation, so finite wherever the unfolded path is.
                        for index in *first..=*last {
                            // BN and affine layers only: never a dense step.
                            bounds.emit(emit, unfolded_op(model, index, weights, begin)?, index)?;
                        }
                    }
                }
                i += 1;
            }
            Token::Act(a, index) => {
                let op = match a {
                    Activation::Softmax => Op::Softmax,
                    a => Op::Elementwise(EpilogueOp::Act(*a)),
                };
                bounds.emit(emit, op, *index)?;
                i += 1;
            }
        }
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    mod smaps {
        include!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/common/smaps.rs"
        ));
    }
    use smaps::mapped_rss_kib;

    /// Counts rows and, every 64 rows, the file's resident pages.
    struct Watch<'p> {
        path: &'p std::path::Path,
        rows: usize,
        max_kib: u64,
    }

    impl RowSink for Watch<'_> {
        fn push_row(&mut self, _: &[f32], _: f32) {
            self.rows += 1;
            if self.rows.is_multiple_of(64) {
                self.max_kib = self.max_kib.max(mapped_rss_kib(self.path));
            }
        }
    }

    /// While a large dense layer is lowered into a sink, the mapped rows already read are let go
    /// about 1 MiB at a time: the file (16 MiB of weights) is never resident as a whole, whatever
    /// the mode and weight type.
    #[test]
    fn lowering_a_large_layer_lets_its_rows_go_as_it_reads_them() {
        use crate::synth::{Layer, Stats, network};
        let layers = [Layer::Dense(4096), Layer::Bn, Layer::Act(Activation::Relu)];
        let bytes = network(1024, &layers, 3, DType::F32, Stats::default()).unwrap();
        assert!(bytes.len() > 16 << 20);
        let half_file_kib = bytes.len() as u64 / 2 / 1024;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.bnw");
        std::fs::write(&path, &bytes).unwrap();
        let model = Model::load(&path).unwrap();
        // Loading let its chunks go too.
        assert!(mapped_rss_kib(&path) <= half_file_kib);
        for opts in [
            Options::folded(),
            Options::folded().with_weights(DType::BF16),
            Options::unfolded().with_weights(DType::F16),
        ] {
            let mut watches = Vec::new();
            let mut begin = |_, _| Watch {
                path: &path,
                rows: 0,
                max_kib: 0,
            };
            lower_with(&model, &opts, &mut begin, &mut |s| {
                if let Op::Dense(w) = s.op {
                    watches.push((w.rows, w.max_kib));
                }
                Ok(())
            })
            .unwrap();
            let [(rows, max_kib)] = watches[..] else {
                panic!("one dense step: {watches:?}");
            };
            assert_eq!(rows, 4096);
            // A chunk of rows, the pages the kernel maps around each fault (on Linux 6.18, ext4,
            // whole large page-cache folios), the header and the small tensors: 4180 KiB
            // measured. Without the release every row read stays resident (8236 KiB measured
            // at the end of an 8 MiB layer).
            assert!(
                max_kib <= half_file_kib,
                "{max_kib} KiB of the file resident"
            );
        }
    }
}
