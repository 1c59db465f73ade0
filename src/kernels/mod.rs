//! Matrix kernels: `Y = epilogue(X W^T + b)` over row-major f32, and elementwise passes.
//!
//! The dense kernel owns its weights, packed once (when the plan is compiled) into the panel layout
//! of the micro-kernel of the best instruction set this CPU has (AVX-512F, AVX2+FMA, or the
//! portable `wide` path; see [`Isa`] and [`KernelChoice`]). The bias and the elementwise epilogue
//! (every activation but softmax, affine, BN) are applied to each tile in registers before it is
//! stored; the transcendental functions are vector code (`vmath.rs`) written once over the same
//! vector trait as the micro-kernel.
//!
//! Layout: `gemm.rs` holds the packed weights, the one micro-kernel body (generic over the
//! `simd` vector trait) and the drivers; `arch/` holds one file per instruction set (its vector
//! type, its `#[target_feature]` entry point, its tile shapes, its detection) and the dispatch
//! from [`Isa`]; `isa.rs` the choice of path; `vmath.rs` the vector math (exp, tanh, sigmoid,
//! erf, GELU, softmax); `activation.rs` the public elementwise entry points.
//!
//! Large layers use the current rayon pool: run inference inside `pool.install(|| ...)` to use a
//! pool of your own. Small layers (below [`PARALLEL_MIN_MACS`]) never touch a pool.

pub mod activation;
mod arch;
pub mod cache;
mod elem;
mod gemm;
mod gemv;
mod isa;
pub mod probe;
mod simd;
mod vmath;

use rayon::prelude::*;
use wide::f32x8;

use crate::format::{Activation, DType};
pub use cache::{Blocking, CACHES_ENV, CacheSource, Caches};
use elem::WeightElem;
use gemm::{Family, OutPtr, Packed};
use half::{bf16, f16};
pub use isa::{Isa, KERNEL_ENV, KernelChoice};

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
    /// Apply to `v`, the outputs for features `col0 .. col0 + v.len()` of one row (activations
    /// on the path [`KernelChoice::Auto`] resolves to).
    #[inline]
    pub fn apply(&self, v: &mut [f32], col0: usize) {
        self.apply_with(KernelChoice::Auto.resolve(), v, col0);
    }

    /// [`EpilogueOp::apply`] with the activations on `isa`, which must be supported (a resolved
    /// path).
    #[inline]
    fn apply_with(&self, isa: Isa, v: &mut [f32], col0: usize) {
        match self {
            EpilogueOp::Act(a) => activation::apply_resolved(isa, *a, v),
            EpilogueOp::Affine { scale, shift } => {
                let n = v.len();
                let (s, t) = (&scale[col0..col0 + n], &shift[col0..col0 + n]);
                // In f64: the product of two f32 is exact there, so `s * x + t` is rounded once
                // (to f64, then to f32) and never overflows in between. `wide`'s `mul_add` is a
                // separate multiply and add on a build without FMA, where `s * x` can overflow
                // although `s * x + t` (the folded form of a BN whose shift cancels it) is finite:
                // the structured fuzz target found exactly that (-inf for -2.6e38).
                for ((x, &s), &t) in v.iter_mut().zip(s).zip(t) {
                    *x = (f64::from(s) * f64::from(*x) + f64::from(t)) as f32;
                }
            }
            EpilogueOp::BatchNorm {
                gamma,
                beta,
                mean,
                denom,
            } => {
                let r = col0..col0 + v.len();
                let (g, m) = (&gamma[r.clone()], &mean[r.clone()]);
                let (d, b) = (&denom[r.clone()], &beta[r]);
                // gamma * (x - mean) / denom + beta, as trained frameworks compute it (unfused).
                let mut i = 0;
                for (((x, g), m), (d, b)) in v
                    .chunks_exact_mut(8)
                    .zip(g.chunks_exact(8))
                    .zip(m.chunks_exact(8))
                    .zip(d.chunks_exact(8).zip(b.chunks_exact(8)))
                {
                    let y = x8(g) * (x8(x) - x8(m)) / x8(d) + x8(b);
                    x.copy_from_slice(&y.to_array());
                    i += 8;
                }
                for j in i..v.len() {
                    v[j] = g[j] * (v[j] - m[j]) / d[j] + b[j];
                }
            }
        }
    }
}

/// Eight values of a slice of at least eight as a vector.
#[inline(always)]
fn x8(s: &[f32]) -> f32x8 {
    let mut a = [0.0f32; 8];
    a.copy_from_slice(&s[..8]);
    f32x8::from(a)
}

/// Apply a list of epilogue ops, in order, to a segment of a row.
#[inline]
pub fn apply_epilogue(ops: &[EpilogueOp], v: &mut [f32], col0: usize) {
    apply_epilogue_with(KernelChoice::Auto.resolve(), ops, v, col0);
}

/// [`apply_epilogue`] on `isa`, a resolved (supported) path.
#[inline]
fn apply_epilogue_with(isa: Isa, ops: &[EpilogueOp], v: &mut [f32], col0: usize) {
    for op in ops {
        op.apply_with(isa, v, col0);
    }
}

/// The blocking a layer packed for `isa` with weights stored as `weights` gets on `caches`: the
/// ISA's blocked tile shape (`NR` rows by `MV * LANES` features) and the weight size, through
/// [`Blocking::derive`]. `isa` must be supported (resolve a [`KernelChoice`] first).
pub fn blocking_for(isa: Isa, weights: DType, caches: &Caches) -> Blocking {
    let fam = Family::of(isa);
    let (nr, mv, ..) = fam.f32.big;
    Blocking::derive(caches, nr, mv * fam.lanes, weights.size())
}

/// Below this many multiply-adds a dense layer (or a plan's whole call, see [`crate::Plan`]) runs
/// on the calling thread, without asking rayon anything: handing work to the pool costs a few
/// microseconds, more than a small layer takes.
pub const PARALLEL_MIN_MACS: usize = 1 << 19;

/// Weights per task, at least, where compiling a plan splits a block of rows over the pool
/// (folding, bounding and packing a large layer): a block of [`PARALLEL_MIN_MACS`] weights
/// goes out in at most eight tasks.
pub(crate) const COMPILE_TASK_WEIGHTS: usize = 1 << 16;

/// How many threads work of `macs` multiply-adds is split across: 1 below [`PARALLEL_MIN_MACS`]
/// (decided before asking rayon anything, so that small work never starts or touches a pool),
/// else the current rayon pool's thread count.
pub fn threads_for(macs: usize) -> usize {
    if macs < PARALLEL_MIN_MACS {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// A dense layer's weights and bias, packed for the kernel of one instruction set.
///
/// The weights are stored as f32, f16 or bf16 ([`DenseKernel::with_weights`]) and widened to f32
/// in registers as the micro-kernel loads them; the bias, the accumulation and the epilogue are
/// f32 whatever the weight type.
///
/// Memory: the packed form holds at most twice the weights (in their stored type) and the f32
/// bias, plus 128 bytes per panel of `LANES` output features (each panel rounded to a cache line,
/// and a one-line gap between panels) and 64 bytes of alignment: layers with fewer outputs than
/// half a vector keep their row layout (`gemv.rs`, exactly the f32 size: narrow layers stay f32
/// whatever weight type was asked for, holding the same, already rounded, values; they are at most
/// `LANES / 2 - 1` rows of `k`, a few KiB to a few MiB, where widening would save little), every
/// other layer fills its panels at least half. [`DenseKernel::weight_bytes`] counts what is held.
#[derive(Debug, Clone)]
pub struct DenseKernel {
    inputs: usize,
    outputs: usize,
    isa: Isa,
    weights: Weights,
    /// Block sizes for this ISA's tile and weight type on this machine's caches (fixed at pack
    /// time: they set the order of the depth sums).
    blocking: Blocking,
}

/// The layouts of a dense layer's weights.
#[derive(Debug, Clone)]
enum Weights {
    /// Output features along the vector lanes (`gemm.rs`), f32.
    F32(Packed<f32>),
    /// Panels of f16, widened in registers.
    F16(Packed<f16>),
    /// Panels of bf16, widened in registers.
    Bf16(Packed<bf16>),
    /// Narrow layers: the stored `[n, k]` rows (`gemv.rs`), f32.
    Rows(gemv::Rows),
}

impl DenseKernel {
    /// Take weights `[outputs, inputs]` row-major and a bias of `outputs` values, and pack them
    /// for the path chosen by [`KernelChoice::Auto`].
    ///
    /// Panics if the lengths disagree (callers build them from a validated model).
    pub fn new(inputs: usize, outputs: usize, weight: Vec<f32>, bias: Vec<f32>) -> Self {
        Self::with_choice(inputs, outputs, &weight, &bias, KernelChoice::Auto)
    }

    /// Like [`DenseKernel::new`], with the path chosen by `choice` and borrowed inputs (f32
    /// weights).
    ///
    /// Panics if the lengths disagree.
    pub fn with_choice(
        inputs: usize,
        outputs: usize,
        weight: &[f32],
        bias: &[f32],
        choice: KernelChoice,
    ) -> Self {
        Self::with_weights(inputs, outputs, weight, bias, choice, DType::F32)
    }

    /// Like [`DenseKernel::with_choice`], with the weights stored as `weights` (f32, f16 or
    /// bf16). Each weight is converted to that type rounding to nearest, ties to even (exact for
    /// weights already representable in it, as a plan's folded weights are: `Plan::compile` rounds
    /// them once, from f64); an f32 beyond f16's range becomes an infinity. Narrow layers keep f32
    /// rows (see the type's memory notes).
    ///
    /// Panics if the lengths disagree.
    pub fn with_weights(
        inputs: usize,
        outputs: usize,
        weight: &[f32],
        bias: &[f32],
        choice: KernelChoice,
        weights: DType,
    ) -> Self {
        assert_eq!(
            Some(weight.len()),
            inputs.checked_mul(outputs),
            "weight length"
        );
        assert_eq!(bias.len(), outputs, "bias length");
        let mut builder = Self::builder(inputs, outputs, choice, weights);
        for (o, &b) in bias.iter().enumerate() {
            builder.push_row(&weight[o * inputs..(o + 1) * inputs], b);
        }
        builder.finish()
    }

    /// An empty kernel of `outputs` features over `inputs`, for the path chosen by `choice` with
    /// the weights stored as `weights`, to be filled one output feature at a time
    /// ([`DenseBuilder::push_row`]): the same kernel as [`DenseKernel::with_weights`] given all the
    /// rows at once, without the `[outputs, inputs]` f32 copy of the whole layer. The storage of
    /// the packed weights is allocated here.
    pub fn builder(
        inputs: usize,
        outputs: usize,
        choice: KernelChoice,
        weights: DType,
    ) -> DenseBuilder {
        let isa = choice.resolve();
        let lanes = Family::of(isa).lanes;
        let blocking = blocking_for(isa, weights, &Caches::detect());
        let fill = if gemv::narrow(outputs, lanes) {
            Weights::Rows(gemv::Rows::empty(outputs, inputs))
        } else {
            match weights {
                DType::F32 => Weights::F32(Packed::zeroed(outputs, inputs, lanes)),
                DType::F16 => Weights::F16(Packed::zeroed(outputs, inputs, lanes)),
                DType::BF16 => Weights::Bf16(Packed::zeroed(outputs, inputs, lanes)),
            }
        };
        DenseBuilder {
            kernel: DenseKernel {
                inputs,
                outputs,
                isa,
                weights: fill,
                blocking,
            },
            rows: 0,
        }
    }

    /// Whether `other` runs on the same path with the same blocking and holds the same packed
    /// bytes (weights, padding and bias): then both compute the same bits. For tests of packing
    /// routes.
    #[doc(hidden)]
    pub fn same_packing(&self, other: &DenseKernel) -> bool {
        fn layout(k: &DenseKernel) -> (DType, (&[u8], &[u8])) {
            match &k.weights {
                Weights::F32(p) => (DType::F32, p.layout_bytes()),
                Weights::F16(p) => (DType::F16, p.layout_bytes()),
                Weights::Bf16(p) => (DType::BF16, p.layout_bytes()),
                Weights::Rows(r) => (
                    DType::F32,
                    (
                        bytemuck::cast_slice(&r.w[..]),
                        bytemuck::cast_slice(&r.bias[..]),
                    ),
                ),
            }
        }
        let rows = |k: &DenseKernel| matches!(k.weights, Weights::Rows(_));
        (self.inputs, self.outputs, self.isa, self.blocking)
            == (other.inputs, other.outputs, other.isa, other.blocking)
            && rows(self) == rows(other)
            && layout(self) == layout(other)
    }

    /// Input features.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Output features.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// The instruction-set path this kernel runs.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The type the weights are stored in: the one asked for, except f32 for narrow layers (row
    /// layout).
    pub fn weight_type(&self) -> DType {
        match &self.weights {
            Weights::F32(_) | Weights::Rows(_) => DType::F32,
            Weights::F16(_) => DType::F16,
            Weights::Bf16(_) => DType::BF16,
        }
    }

    /// The block sizes its blocked driver uses (derived from the caches when it was packed).
    pub fn blocking(&self) -> &Blocking {
        &self.blocking
    }

    /// This kernel with the blocking of a machine with tiny caches (1 KiB L1d, 8 KiB L2, 16 KiB
    /// L3: depth blocks of 16, a few panels per block, 24 rows per input block), so that tests
    /// reach every block boundary of the blocked driver with small shapes.
    #[doc(hidden)]
    pub fn with_tiny_blocking(mut self) -> Self {
        self.blocking = blocking_for(self.isa, self.weight_type(), &Caches::TINY);
        self
    }

    /// Bytes of (packed, padded) weights and bias held.
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            Weights::F32(p) => p.bytes(),
            Weights::F16(p) => p.bytes(),
            Weights::Bf16(p) => p.bytes(),
            Weights::Rows(r) => r.bytes(),
        }
    }

    /// `y = epilogue(x W^T + b)` for `batch` rows; `x` is `[batch, inputs]`, `y` is
    /// `[batch, outputs]`, both row-major, any alignment. Layers of at least
    /// [`PARALLEL_MIN_MACS`] multiply-adds use the current rayon pool.
    ///
    /// Panics if the lengths disagree, or if a per-feature vector of `epilogue` is shorter than
    /// `outputs`.
    pub fn forward(&self, x: &[f32], batch: usize, y: &mut [f32], epilogue: &[EpilogueOp]) {
        let unpacked = gemm::unpacked_path(&self.blocking, batch, self.inputs, self.outputs);
        let threads = threads_for(self.macs(batch));
        self.forward_impl(x, batch, y, epilogue, unpacked, threads);
    }

    /// [`DenseKernel::forward`] of `batch` rows that are a part of a batch of `whole` rows, on
    /// the calling thread alone: the driver is the one the whole batch takes, so each row's sums
    /// (and so its bits) are those of a call on the whole batch. A plan that splits its rows
    /// across threads runs each part's layers with this.
    ///
    /// Panics as [`DenseKernel::forward`] does.
    pub(crate) fn forward_part(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        epilogue: &[EpilogueOp],
        whole: usize,
    ) {
        let unpacked = gemm::unpacked_path(&self.blocking, whole, self.inputs, self.outputs);
        self.forward_impl(x, batch, y, epilogue, unpacked, 1);
    }

    /// Multiply-adds of a call on `batch` rows (saturating).
    pub fn macs(&self, batch: usize) -> usize {
        batch
            .saturating_mul(self.inputs)
            .saturating_mul(self.outputs)
    }

    /// [`DenseKernel::forward`] through the chosen driver (`blocked`: packed `X` and depth
    /// blocks; else unpacked rows), whatever the shape, with the same parallel split. For tests
    /// that must reach both drivers with shapes of every size.
    #[doc(hidden)]
    pub fn forward_with_driver(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        epilogue: &[EpilogueOp],
        blocked: bool,
    ) {
        let threads = threads_for(self.macs(batch));
        self.forward_impl(x, batch, y, epilogue, !blocked, threads);
    }

    /// The product through the driver `unpacked` selects, split across `threads` (1: on the
    /// calling thread).
    fn forward_impl(
        &self,
        x: &[f32],
        batch: usize,
        y: &mut [f32],
        epilogue: &[EpilogueOp],
        unpacked: bool,
        threads: usize,
    ) {
        let (k, n) = (self.inputs, self.outputs);
        assert_eq!(Some(x.len()), batch.checked_mul(k), "x length");
        assert_eq!(Some(y.len()), batch.checked_mul(n), "y length");
        check_epilogue(epilogue, n);
        if batch == 0 || n == 0 {
            return;
        }
        let fam = Family::of(self.isa);
        let run = Run {
            x,
            batch,
            epilogue,
            unpacked,
            threads,
        };
        match &self.weights {
            Weights::F32(p) => self.forward_panels(fam, p, &run, y),
            Weights::F16(p) => self.forward_panels(fam, p, &run, y),
            Weights::Bf16(p) => self.forward_panels(fam, p, &run, y),
            Weights::Rows(r) => self.forward_rows(fam, r, &run, y),
        }
    }

    /// The panel layout (weights stored as `W`), lengths checked by the caller: tiles over
    /// rectangles of the output, split across the pool when the layer is large.
    fn forward_panels<W: WeightElem>(
        &self,
        fam: &Family,
        packed: &Packed<W>,
        run: &Run<'_>,
        y: &mut [f32],
    ) {
        let Run {
            x,
            batch,
            epilogue,
            unpacked,
            threads,
        } = *run;
        let k = self.inputs;
        if k == 0 {
            gemm::bias_only(self.isa, packed, batch, y, epilogue);
            return;
        }
        let out = OutPtr(y.as_mut_ptr());
        let panels = packed.panels;
        let whole = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
            // SAFETY: `self.isa` was resolved to a supported path at construction; `x` and `y`
            // have the checked lengths; the rectangle `rows x cols` is inside `y` and, in the
            // parallel cases below, disjoint from every other task's rectangle.
            unsafe {
                gemm::run_block(
                    unpacked,
                    &self.blocking,
                    fam,
                    packed,
                    x,
                    rows,
                    cols,
                    out,
                    epilogue,
                )
            }
        };
        if threads <= 1 {
            whole(0..batch, 0..panels);
            return;
        }
        if panels >= 8 * threads {
            // Split the output features: each thread streams only its share of the weights, once,
            // and (blocked path) packs its own copy of the inputs, which costs `batch * k` against
            // `batch * k * n / threads` multiply-adds. Splitting rows instead would make every
            // thread stream all the weights: measured 2.2x slower than one thread for 4096x4096 at
            // batch 64, where the weights (64 MiB) come from DRAM.
            let step = panels.div_ceil(threads).div_ceil(8) * 8;
            (0..panels.div_ceil(step)).into_par_iter().for_each(|t| {
                whole(0..batch, t * step..((t + 1) * step).min(panels));
            });
        } else {
            // Narrow layers (fewer than 8 panels per thread) with a large batch: split the rows;
            // the weights are small and shared through the cache.
            let step = batch.div_ceil(threads).div_ceil(8) * 8;
            (0..batch.div_ceil(step)).into_par_iter().for_each(|t| {
                whole(t * step..((t + 1) * step).min(batch), 0..panels);
            });
        }
    }

    /// The row layout: rows of the batch split across the pool when the layer is large, each
    /// task writing its own rows, then the epilogue on the rows it wrote.
    fn forward_rows(&self, fam: &gemm::Family, w: &gemv::Rows, run: &Run<'_>, y: &mut [f32]) {
        let Run {
            x,
            batch,
            epilogue,
            threads,
            ..
        } = *run;
        let n = self.outputs;
        let rows_into = |rows: std::ops::Range<usize>, y: &mut [f32]| {
            let t = gemv::RowArgs {
                w,
                x: x.as_ptr(),
                y: y.as_mut_ptr(),
                rows: rows.clone(),
            };
            // SAFETY: `self.isa` was resolved to a supported path at construction; `x` holds
            // `batch * k` values (checked by the caller) and the rows are below `batch`; `y` is
            // exactly rows `rows` of the output, borrowed mutably by this task alone.
            unsafe { (fam.rows)(&t) };
            gemv::epilogue(y, n, epilogue);
        };
        if threads <= 1 || batch < 2 {
            rows_into(0..batch, y);
            return;
        }
        let step = batch.div_ceil(threads);
        y.par_chunks_mut(step * n)
            .enumerate()
            .for_each(|(t, chunk)| rows_into(t * step..(t * step + chunk.len() / n), chunk));
    }
}

/// One call's inputs and its split, as the drivers take them (lengths checked).
#[derive(Clone, Copy)]
struct Run<'a> {
    x: &'a [f32],
    batch: usize,
    epilogue: &'a [EpilogueOp],
    /// The unpacked driver (else the blocked one).
    unpacked: bool,
    /// Threads to split across (1: the calling thread only).
    threads: usize,
}

/// A [`DenseKernel`] being filled one output feature at a time, in order ([`DenseKernel::builder`]).
///
/// Each row goes straight to its place in the packed panels (converted to the stored type as
/// [`DenseKernel::with_weights`] converts it), so a caller that makes the rows one by one (the
/// plan's lowering, folding each row in f64) never holds an f32 copy of the whole layer.
#[derive(Debug)]
pub struct DenseBuilder {
    kernel: DenseKernel,
    /// Rows pushed so far.
    rows: usize,
}

impl DenseBuilder {
    /// Add the next output feature: its `inputs` weights and its bias.
    ///
    /// Panics if `weights` is not `inputs` long, or if every row has been pushed already.
    pub fn push_row(&mut self, weights: &[f32], bias: f32) {
        let (k, o) = (&mut self.kernel, self.rows);
        assert!(o < k.outputs, "all {} rows pushed already", k.outputs);
        assert_eq!(weights.len(), k.inputs, "row length");
        match &mut k.weights {
            Weights::F32(p) => p.set_row(o, weights, bias),
            Weights::F16(p) => p.set_row(o, weights, bias),
            Weights::Bf16(p) => p.set_row(o, weights, bias),
            Weights::Rows(r) => r.push_row(weights, bias),
        }
        self.rows += 1;
    }

    /// Add the next `biases.len()` output features: their weights (`[biases.len(), inputs]`
    /// row-major) and biases. The same bytes as [`DenseBuilder::push_row`] for each; panel
    /// layouts fill whole panels on the current rayon pool when the block starts at a panel and
    /// holds at least [`PARALLEL_MIN_MACS`] weights (smaller blocks never ask rayon anything).
    ///
    /// Panics if `weights` is not `biases.len() * inputs` long, or if that is more rows than are
    /// left.
    pub fn push_rows(&mut self, weights: &[f32], biases: &[f32]) {
        let (k, o, n) = (&mut self.kernel, self.rows, biases.len());
        assert!(
            n <= k.outputs - o,
            "{n} rows pushed with {} left",
            k.outputs - o
        );
        assert_eq!(weights.len(), n * k.inputs, "rows' length");
        match &mut k.weights {
            Weights::F32(p) => p.set_rows(o, weights, biases),
            Weights::F16(p) => p.set_rows(o, weights, biases),
            Weights::Bf16(p) => p.set_rows(o, weights, biases),
            Weights::Rows(r) => {
                for (i, &b) in biases.iter().enumerate() {
                    r.push_row(&weights[i * k.inputs..(i + 1) * k.inputs], b);
                }
            }
        }
        self.rows += n;
    }

    /// Rows pushed so far.
    pub fn rows_pushed(&self) -> usize {
        self.rows
    }

    /// The kernel, once every row has been pushed.
    ///
    /// Panics if some row is missing.
    pub fn finish(self) -> DenseKernel {
        assert_eq!(self.rows, self.kernel.outputs, "rows pushed");
        self.kernel
    }
}

/// Panics if a per-feature vector of `ops` is shorter than `n`.
fn check_epilogue(ops: &[EpilogueOp], n: usize) {
    for op in ops {
        let short = match op {
            EpilogueOp::Act(_) => false,
            EpilogueOp::Affine { scale, shift } => scale.len() < n || shift.len() < n,
            EpilogueOp::BatchNorm {
                gamma,
                beta,
                mean,
                denom,
            } => [gamma, beta, mean, denom].iter().any(|v| v.len() < n),
        };
        assert!(!short, "epilogue vector shorter than the layer's outputs");
    }
}

/// Apply elementwise ops to a `[batch, width]` buffer in place (activations on the path
/// [`KernelChoice::Auto`] resolves to).
pub fn elementwise(ops: &[EpilogueOp], v: &mut [f32], width: usize) {
    elementwise_with(KernelChoice::Auto, ops, v, width);
}

/// [`elementwise`] with the activations on the path `choice` resolves to (a plan passes its own).
pub fn elementwise_with(choice: KernelChoice, ops: &[EpilogueOp], v: &mut [f32], width: usize) {
    let isa = choice.resolve();
    if let [EpilogueOp::Act(a)] = ops {
        // One activation (the unfolded path's activation steps): the whole buffer in one pass.
        let rows = v.len() / width;
        activation::apply_resolved(isa, *a, &mut v[..rows * width]);
        return;
    }
    for row in v.chunks_exact_mut(width) {
        apply_epilogue_with(isa, ops, row, 0);
    }
}

/// `c = a b^T` for row-major `a` (`[m, k]`), `b` (`[n, k]`) and `c` (`[m, n]`): the product the
/// dense layers compute, without bias or epilogue. `b` is packed on every call (the trainer uses
/// it with operands that change every step), then the same blocked GEMM runs.
pub fn matmul_nt(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, c: &mut [f32]) {
    assert_eq!(Some(a.len()), m.checked_mul(k), "a length");
    assert_eq!(Some(b.len()), n.checked_mul(k), "b length");
    assert_eq!(Some(c.len()), m.checked_mul(n), "c length");
    let zeros = vec![0.0f32; n];
    DenseKernel::with_choice(k, n, b, &zeros, KernelChoice::Auto).forward(a, m, c, &[]);
}
