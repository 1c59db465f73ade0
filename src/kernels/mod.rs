//! Matrix kernels: `Y = epilogue(X W^T + b)` over row-major f32, and elementwise passes.
//!
//! The dense kernel owns its weights (packed once, when the plan is compiled) and applies the bias
//! and the epilogue to each block of outputs while it is still hot in cache.

pub mod activation;

use rayon::prelude::*;
use wide::f32x8;

use crate::format::Activation;

/// One elementwise step applied after the matrix product.
#[derive(Debug, Clone, PartialEq)]
pub enum EpilogueOp {
    /// An elementwise activation (never softmax).
    Act(Activation),
    /// Per-feature `scale * x + shift` (a BN that could not be folded into a dense layer).
    Affine {
        /// Per-feature scale.
        scale: Vec<f32>,
        /// Per-feature shift.
        shift: Vec<f32>,
    },
    /// BN exactly as trained: `gamma * (x - mean) / denom + beta`, `denom = sqrt(var + eps)`
    /// computed once in f32 (the unfolded path).
    BatchNorm {
        /// Scale (ones when the layer has none).
        gamma: Vec<f32>,
        /// Shift (zeros when the layer has none).
        beta: Vec<f32>,
        /// Moving mean.
        mean: Vec<f32>,
        /// `sqrt(moving_variance + eps)` in f32.
        denom: Vec<f32>,
    },
}

impl EpilogueOp {
    /// Apply to `v`, the outputs for features `col0 .. col0 + v.len()` of one row.
    #[inline]
    pub fn apply(&self, v: &mut [f32], col0: usize) {
        match self {
            EpilogueOp::Act(a) => activation::apply(*a, v),
            EpilogueOp::Affine { scale, shift } => {
                let n = v.len();
                for ((x, s), t) in v.iter_mut().zip(&scale[col0..col0 + n]).zip(&shift[col0..col0 + n]) {
                    *x = s.mul_add(*x, *t);
                }
            }
            EpilogueOp::BatchNorm {
                gamma,
                beta,
                mean,
                denom,
            } => {
                let r = col0..col0 + v.len();
                for (j, x) in v.iter_mut().enumerate() {
                    let f = r.start + j;
                    *x = gamma[f] * (*x - mean[f]) / denom[f] + beta[f];
                }
            }
        }
    }
}

/// Apply a list of epilogue ops, in order, to a segment of a row.
#[inline]
pub fn apply_epilogue(ops: &[EpilogueOp], v: &mut [f32], col0: usize) {
    for op in ops {
        op.apply(v, col0);
    }
}

/// Below this many multiply-adds a dense layer runs on the calling thread: handing work to the
/// rayon pool costs a few microseconds, more than a small layer takes.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// Output features per parallel task when the batch is too small to split by rows.
const COL_CHUNK: usize = 64;

/// A dense layer's weights and bias, ready for the kernel.
#[derive(Debug, Clone)]
pub struct DenseKernel {
    inputs: usize,
    outputs: usize,
    /// `[outputs, inputs]` row-major.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl DenseKernel {
    /// Take weights `[outputs, inputs]` row-major and a bias of `outputs` values.
    ///
    /// Panics if the lengths disagree (callers build them from a validated model).
    pub fn new(inputs: usize, outputs: usize, weight: Vec<f32>, bias: Vec<f32>) -> Self {
        assert_eq!(weight.len(), inputs * outputs, "weight length");
        assert_eq!(bias.len(), outputs, "bias length");
        DenseKernel {
            inputs,
            outputs,
            weight,
            bias,
        }
    }

    /// Input features.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Output features.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Bytes of weights and bias held.
    pub fn weight_bytes(&self) -> usize {
        (self.weight.len() + self.bias.len()) * 4
    }

    /// `y = epilogue(x W^T + b)` for `batch` rows; `x` is `[batch, inputs]`, `y` is
    /// `[batch, outputs]`, both row-major. Uses the current rayon pool for large layers.
    pub fn forward(&self, x: &[f32], batch: usize, y: &mut [f32], epilogue: &[EpilogueOp]) {
        let (k, n) = (self.inputs, self.outputs);
        assert_eq!(x.len(), batch * k, "x length");
        assert_eq!(y.len(), batch * n, "y length");
        let flops = batch * k * n;
        if flops < PARALLEL_MIN_FLOPS {
            for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
                self.row(xr, yr, 0, epilogue);
            }
        } else if batch >= rayon::current_num_threads() * 2 {
            x.par_chunks_exact(k)
                .zip(y.par_chunks_exact_mut(n))
                .for_each(|(xr, yr)| self.row(xr, yr, 0, epilogue));
        } else {
            for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
                yr.par_chunks_mut(COL_CHUNK)
                    .enumerate()
                    .for_each(|(c, ys)| self.row(xr, ys, c * COL_CHUNK, epilogue));
            }
        }
    }

    /// Outputs `col0 .. col0 + y.len()` of one row.
    fn row(&self, x: &[f32], y: &mut [f32], col0: usize, epilogue: &[EpilogueOp]) {
        let k = self.inputs;
        for (j, out) in y.iter_mut().enumerate() {
            let o = col0 + j;
            *out = dot(x, &self.weight[o * k..(o + 1) * k]) + self.bias[o];
        }
        apply_epilogue(epilogue, y, col0);
    }
}

/// Dot product with eight-lane SIMD accumulators.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc0 = f32x8::ZERO;
    let mut acc1 = f32x8::ZERO;
    let (a16, at) = a.split_at(a.len() / 16 * 16);
    let (b16, bt) = b.split_at(a16.len());
    for (ca, cb) in a16.chunks_exact(16).zip(b16.chunks_exact(16)) {
        let a0 = f32x8::from(<[f32; 8]>::try_from(&ca[..8]).unwrap_or_default());
        let a1 = f32x8::from(<[f32; 8]>::try_from(&ca[8..]).unwrap_or_default());
        let b0 = f32x8::from(<[f32; 8]>::try_from(&cb[..8]).unwrap_or_default());
        let b1 = f32x8::from(<[f32; 8]>::try_from(&cb[8..]).unwrap_or_default());
        acc0 = a0.mul_add(b0, acc0);
        acc1 = a1.mul_add(b1, acc1);
    }
    let mut s = (acc0 + acc1).reduce_add();
    for (x, w) in at.iter().zip(bt) {
        s = x.mul_add(*w, s);
    }
    s
}

/// Apply elementwise ops to a `[batch, width]` buffer in place.
pub fn elementwise(ops: &[EpilogueOp], v: &mut [f32], width: usize) {
    for row in v.chunks_exact_mut(width) {
        apply_epilogue(ops, row, 0);
    }
}

/// `c = a b^T` for row-major `a` (`[m, k]`), `b` (`[n, k]`) and `c` (`[m, n]`): the product the
/// dense layers compute, without bias or epilogue and without keeping packed weights (the trainer
/// uses it, with operands that change every step).
pub fn matmul_nt(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, c: &mut [f32]) {
    assert_eq!(a.len(), m * k, "a length");
    assert_eq!(b.len(), n * k, "b length");
    assert_eq!(c.len(), m * n, "c length");
    let body = |(ar, cr): (&[f32], &mut [f32])| {
        for (o, out) in cr.iter_mut().enumerate() {
            *out = dot(ar, &b[o * k..(o + 1) * k]);
        }
    };
    if m * n * k < PARALLEL_MIN_FLOPS {
        a.chunks_exact(k).zip(c.chunks_exact_mut(n)).for_each(body);
    } else {
        a.par_chunks_exact(k)
            .zip(c.par_chunks_exact_mut(n))
            .for_each(body);
    }
}
