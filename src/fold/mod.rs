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
//! per-feature affine op, and keeps a dense layer and its BN neighbours unfolded when the folded
//! accumulation could overflow f32 for model inputs within [`INPUT_BOUND`]; the plan
//! (`crate::plan`) packs what it produces for the kernels.

use crate::error::LayerError;
use crate::format::DType;
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
/// Folded values that fit can still overflow when summed; [`lower`] checks that before it uses
/// the result.
pub fn fold_dense(
    dense: &DenseView,
    pre: Option<&Affine>,
    post: Option<&Affine>,
) -> Result<FoldedDense, LayerError> {
    fold_dense_to(dense, pre, post, DType::F32)
}

/// [`fold_dense`] with the folded weights rounded once, from f64, to `weights` (f32, f16 or bf16;
/// returned as the f32 values of the rounded numbers, which f32 holds exactly). The bias stays f32.
///
/// Fails with [`LayerError::WeightOutOfRange`] naming the output feature when a folded weight is
/// beyond the target type's range (f16: 65504), and with [`LayerError::FoldOverflow`] when a
/// folded value overflows f32.
pub fn fold_dense_to(
    dense: &DenseView,
    pre: Option<&Affine>,
    post: Option<&Affine>,
    weights: DType,
) -> Result<FoldedDense, LayerError> {
    let mut folded = FoldedDense::empty(dense.inputs, dense.outputs);
    fold_dense_rows(dense, pre, post, weights, &mut |_, rows, biases| {
        folded.push_rows(rows, biases);
    })?;
    Ok(folded)
}

impl FoldedDense {
    /// No rows yet, room for `outputs` rows of `inputs` weights.
    pub(crate) fn empty(inputs: usize, outputs: usize) -> FoldedDense {
        FoldedDense {
            inputs,
            outputs,
            weight: Vec::with_capacity(inputs.saturating_mul(outputs)),
            bias: Vec::with_capacity(outputs),
        }
    }

    /// Append the next output's weights and bias.
    pub(crate) fn push_row(&mut self, row: &[f32], bias: f32) {
        self.push_rows(row, &[bias]);
    }

    /// Append the next outputs' weights (`[biases.len(), inputs]` row-major) and biases.
    pub(crate) fn push_rows(&mut self, rows: &[f32], biases: &[f32]) {
        debug_assert_eq!(rows.len(), biases.len() * self.inputs, "rows' length");
        self.weight.extend_from_slice(rows);
        self.bias.extend_from_slice(biases);
    }
}

/// [`fold_dense_to`] a block of output rows at a time: hands each block of folded rows (their
/// weights, rounded to `weights`, `[rows, inputs]` row-major, and their biases, exactly as
/// [`fold_dense_to`] stores them) to `each_block` with the index of its first row, in order, and
/// keeps none of them. A caller can pack each block as it comes (the plan's compile does), so that
/// the f32 copy of a whole layer never exists, and bound its sums while it is in cache (`lower`
/// does).
///
/// A block is about 2 MiB of f32 weights and a multiple of 16 rows (whole panels of every kernel
/// path) but the last; a block of [`crate::kernels::PARALLEL_MIN_MACS`] weights or more has its
/// rows folded in parallel on the current rayon pool (smaller ones, so every layer of a small
/// model, never ask rayon anything, as at inference). Each row is computed by the same code whatever thread runs it, so
/// the values do not depend on the pool. On an error (the first failing row of the block is the
/// one named), the blocks before have been handed out.
pub(crate) fn fold_dense_rows(
    dense: &DenseView,
    pre: Option<&Affine>,
    post: Option<&Affine>,
    weights: DType,
    each_block: &mut BlockSink<'_>,
) -> Result<(), LayerError> {
    use rayon::prelude::*;
    let inputs = dense.inputs;
    let block = FOLD_BLOCK_BYTES
        .div_ceil(inputs.max(1) * 4)
        .next_multiple_of(16)
        .min(dense.outputs);
    let min_rows = (crate::kernels::COMPILE_TASK_WEIGHTS / inputs.max(1)).max(1);
    let mut w = vec![0f32; block * inputs];
    let mut b = vec![0f32; block];
    let mut first = 0;
    while first < dense.outputs {
        let n = block.min(dense.outputs - first);
        let (w, b) = (&mut w[..n * inputs], &mut b[..n]);
        let fold = |i: usize, row: &mut [f64], out: &mut [f32], bias: &mut f32| {
            fold_row(dense, pre, post, weights, first + i, row, out).map(|v| *bias = v)
        };
        // The lowest failing row's error, whatever the pool did.
        let failed = if n * inputs < crate::kernels::PARALLEL_MIN_MACS {
            let mut row = vec![0f64; inputs];
            (0..n).find_map(|i| {
                let out = &mut w[i * inputs..(i + 1) * inputs];
                fold(i, &mut row, out, &mut b[i]).err().map(|e| (i, e))
            })
        } else {
            b.par_iter_mut()
                .zip(w.par_chunks_mut(inputs))
                .enumerate()
                .with_min_len(min_rows)
                .map_init(
                    || vec![0f64; inputs],
                    |row, (i, (bias, out))| fold(i, row, out, bias).err().map(|e| (i, e)),
                )
                .flatten()
                .min_by_key(|&(i, _)| i)
        };
        if let Some((_, e)) = failed {
            return Err(e);
        }
        each_block(first, w, b);
        first += n;
    }
    Ok(())
}

/// What [`fold_dense_rows`] hands each block to: the index of its first row, its rows' weights
/// (row-major) and their biases.
pub(crate) type BlockSink<'a> = dyn FnMut(usize, &[f32], &[f32]) + 'a;

/// Bytes of f32 weights per block of [`fold_dense_rows`]: as many weights as
/// [`crate::kernels::PARALLEL_MIN_MACS`], so that a large layer's blocks go to the pool.
const FOLD_BLOCK_BYTES: usize = 4 * crate::kernels::PARALLEL_MIN_MACS;

/// Output row `o` of [`fold_dense_to`]: its weights, rounded to `weights`, into `out` (`row` is
/// scratch of `inputs` values), and its bias as the result.
fn fold_row(
    dense: &DenseView,
    pre: Option<&Affine>,
    post: Option<&Affine>,
    weights: DType,
    o: usize,
    row: &mut [f64],
    out: &mut [f32],
) -> Result<f32, LayerError> {
    let mut acc = dense.bias_f64(o);
    dense.weight.read_f64(o * dense.inputs, row);
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
    round_slice(weights, row, out);
    // Counted rather than searched (`any` stops at the first hit, so it does not vectorise);
    // rows are a few thousand values and an error is rare.
    let overflows = row.iter().filter(|&&v| !(v as f32).is_finite()).count();
    if !(acc as f32).is_finite() || overflows > 0 {
        return Err(LayerError::FoldOverflow { feature: o });
    }
    if out.iter().filter(|v| !v.is_finite()).count() > 0 {
        return Err(LayerError::WeightOutOfRange {
            feature: o,
            dtype: weights.name(),
        });
    }
    Ok(acc as f32)
}

/// `v` rounded to the nearest number of `dtype` (ties to even), as an f32 (which holds every f16
/// and bf16 exactly). Beyond the type's range the result is an infinity.
///
/// Rounded once: f64 is first rounded to f32 *to odd* (truncate, then set the last bit if anything
/// was cut), which keeps 13 more bits than f16 and 16 more than bf16 with the sticky information, so
/// the final round to nearest even is the correct rounding of `v` (the classic round-to-odd
/// argument). Rounding f64 to f32 to nearest and then again to f16 could round twice the wrong
/// way on a tie; truncating the low 32 bits of the f64 (as a bit-level conversion does) drops the
/// sticky bits the tie-break needs.
pub fn round_to(dtype: DType, v: f64) -> f32 {
    match dtype {
        DType::F32 => v as f32,
        DType::F16 => half::f16::from_f32(to_f32_odd(v)).to_f32(),
        DType::BF16 => half::bf16::from_f32(to_f32_odd(v)).to_f32(),
    }
}

/// Each value of `src` rounded as [`round_to`] rounds it, into `dst`: the same bits, faster. Used
/// where a plan is compiled, once per weight of the model.
///
/// The f16 and bf16 cases run as straight-line passes the compiler vectorises: round-to-odd to
/// f32 first, by a cut of the f64 significand inside f32's normal range (the values outside it
/// counted), then the round to nearest even, f16's through `half`'s slice conversions (F16C,
/// eight lanes per instruction, where the CPU has it) and bf16's as integer arithmetic; only a
/// slice that holds a value outside f32's normal range (zeros, subnormals, overflow, NaN) takes a
/// second pass that rounds those values by [`round_to`].
///
/// # Panics
///
/// If the two slices' lengths differ.
pub fn round_slice(dtype: DType, src: &[f64], dst: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    assert_eq!(src.len(), dst.len(), "round_slice: lengths differ");
    /// Values per pass through the f16 staging buffer (1 KiB on the stack).
    const CHUNK: usize = 512;
    if dtype == DType::F32 {
        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v as f32);
        return;
    }
    let mut outside = 0usize;
    for (d, &v) in dst.iter_mut().zip(src) {
        let (f, normal) = odd_in_normal_range(v);
        *d = f;
        outside += usize::from(!normal);
    }
    if dtype == DType::F16 {
        let mut staged = [half::f16::ZERO; CHUNK];
        for d in dst.chunks_mut(CHUNK) {
            let h = &mut staged[..d.len()];
            h.convert_from_f32_slice(d);
            h.convert_to_f32_slice(d);
        }
    } else {
        dst.iter_mut().for_each(|d| *d = bf16_nearest(*d));
    }
    if outside > 0 {
        for (d, &v) in dst.iter_mut().zip(src) {
            if !odd_in_normal_range(v).1 {
                *d = round_to(dtype, v);
            }
        }
    }
}

/// `v` rounded to f32 *to odd* when `|v|` is in f32's normal range (`2^-126 <= |v| < 2^128`;
/// second value `true`), else an unspecified f32 and `false`.
///
/// Inside that range round-to-odd is a cut of the f64's significand: the 29 bits below f32's
/// last one are dropped (toward zero: the significand is a magnitude) and their `or` becomes that
/// last bit (`(cut + CUT)` carries into bit 29 exactly when `cut != 0`); the result has 24
/// significant bits and an f32 exponent, so the conversion to f32 is exact. No branch and no
/// 64-bit integer compare, so the loop vectorises on every x86-64.
#[inline(always)]
fn odd_in_normal_range(v: f64) -> (f32, bool) {
    /// Bits of the f64 significand below f32's last bit.
    const CUT: u64 = (1 << 29) - 1;
    let bits = v.to_bits();
    let sticky = ((bits & CUT) + CUT) & (1 << 29);
    let f = f64::from_bits((bits & !CUT) | sticky) as f32;
    let a = v.abs();
    (f, a >= f64::from(f32::MIN_POSITIVE) && a < 2f64.powi(128))
}

/// The finite f32 `f` rounded to the nearest bf16 (ties to even), as an f32; beyond bf16's largest
/// finite value that is an infinity, as in `half::bf16::from_f32`.
#[inline(always)]
fn bf16_nearest(f: f32) -> f32 {
    let x = f.to_bits();
    // Wrapping: no finite f32 carries out of 32 bits (0xff7f_ffff + 0x8000 does not), but the
    // unspecified lanes of `round_slice` may hold a NaN, whose value is replaced afterwards.
    f32::from_bits(x.wrapping_add(0x7fff + ((x >> 16) & 1)) & 0xffff_0000)
}

/// `v` rounded to f32 with round-to-odd: the f32 toward zero, with its last bit set if inexact.
fn to_f32_odd(v: f64) -> f32 {
    if !v.is_finite() {
        return v as f32;
    }
    let mut f = v as f32;
    if f64::from(f).abs() > v.abs() {
        // Rounded away from zero: step one f32 toward zero (same sign, one smaller magnitude).
        f = f32::from_bits(f.to_bits() - 1);
    }
    if f64::from(f) != v {
        f = f32::from_bits(f.to_bits() | 1);
    }
    f
}

mod lower;

pub use lower::{INPUT_BOUND, Lowered, LoweredStep, lower};
pub(crate) use lower::{Op, RowSink, Step, lower_with};
