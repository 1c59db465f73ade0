//! Compiled execution plans and the per-caller sessions that run them.
//!
//! A [`Plan`] is immutable, owns its (folded, packed) weights and is `Send + Sync`: compile it once,
//! share it through an `Arc`, and give each serving thread its own [`Session`], which holds the
//! scratch buffers so that a call allocates nothing.

use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{InputError, Result};
use crate::fold::{self, RowSink, lower_with};
use crate::format::DType;
use crate::kernels::{self, Caches, DenseBuilder, DenseKernel, EpilogueOp, KernelChoice};
use crate::model::Model;

/// Which computation a plan performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// BN folded into the dense layers at compile time (the production path).
    #[default]
    Folded,
    /// Dense, then BN with the stored EMA statistics, then the activation, one layer at a time,
    /// exactly as the network was trained to infer. For verification and benchmarks.
    Unfolded,
}

/// Options for [`Model::compile`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Options {
    /// Folded (default) or unfolded.
    pub mode: Mode,
    /// Which instruction-set path the dense kernels use (default: detected, or `BNFOLD_KERNEL`).
    pub kernel: KernelChoice,
    /// Precision of the packed dense weights, whatever the file stores (default f32). Folding
    /// runs in f64 and rounds once to this type; a folded weight beyond f16's range is a load
    /// error.
    pub weights: DType,
}

impl Options {
    /// Options for the folded path.
    pub fn folded() -> Self {
        Options {
            mode: Mode::Folded,
            ..Options::default()
        }
    }

    /// These options with the dense weights packed as `weights` (f32, f16 or bf16).
    pub fn with_weights(mut self, weights: DType) -> Self {
        self.weights = weights;
        self
    }

    /// These options with the computation `mode`.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// These options with the dense kernels' path chosen by `kernel`.
    pub fn with_kernel(mut self, kernel: KernelChoice) -> Self {
        self.kernel = kernel;
        self
    }

    /// Options for the unfolded path.
    pub fn unfolded() -> Self {
        Options {
            mode: Mode::Unfolded,
            ..Options::default()
        }
    }
}

/// One step of a plan.
#[derive(Debug)]
enum Op {
    /// A dense layer with its epilogue fused.
    Dense {
        kernel: DenseKernel,
        epilogue: Vec<EpilogueOp>,
    },
    /// Elementwise ops with no dense layer to fuse into.
    Elementwise(Vec<EpilogueOp>),
    /// Row-wise softmax.
    Softmax,
}

#[derive(Debug)]
struct Step {
    op: Op,
    /// Width of this step's output rows.
    width: usize,
    /// Index of the last model layer whose output this step produces.
    last_layer: usize,
    /// The plan's instruction-set path, resolved at compile time (`Force` of a supported path),
    /// for the elementwise and softmax steps (dense kernels hold their own).
    kernel: KernelChoice,
}

/// Parts per pool thread when a plan splits a call by rows ([`Plan::rows_per_part`]).
const PARTS_PER_THREAD: usize = 4;
/// The fewest rows in such a part (each part pays every step's fixed costs once).
const MIN_PART_ROWS: usize = 32;

/// A compiled network: immutable, `Send + Sync`, shareable across threads.
#[derive(Debug)]
pub struct Plan {
    mode: Mode,
    input_features: usize,
    output_features: usize,
    max_width: usize,
    steps: Vec<Step>,
    /// Multiply-adds of the dense steps per row.
    macs_per_row: usize,
    /// Whether a large batch runs as parts of its rows, one per thread, each through every step
    /// (see [`Plan::rows_per_part`]).
    split_rows: bool,
}

/// The two activation buffers a run ping-pongs between, grown to the largest batch seen.
#[derive(Debug, Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
}

/// Per-caller scratch for running a [`Plan`], borrowing the plan. Create one per thread with
/// [`Plan::session`]. For a session that must live in a `'static` place (a spawned task, a
/// `thread_local!`, a struct beside the plan), see [`OwnedSession`].
#[derive(Debug)]
pub struct Session<'p> {
    plan: &'p Plan,
    scratch: Scratch,
}

/// A session that owns a reference-counted plan: the same scratch and the same `run` as
/// [`Session`], with no lifetime, so that a server can keep it in a `'static` place.
///
/// ```no_run
/// use std::cell::RefCell;
/// use std::sync::{Arc, OnceLock};
/// static PLAN: OnceLock<Arc<bnfold::Plan>> = OnceLock::new();
/// thread_local! {
///     // One session per worker thread, made on first use, reused for every call after.
///     static SESSION: RefCell<Option<bnfold::OwnedSession>> = const { RefCell::new(None) };
/// }
/// fn infer(x: &[f32], batch: usize) -> bnfold::Result<Vec<f32>> {
///     SESSION.with_borrow_mut(|s| {
///         let s = s.get_or_insert_with(|| PLAN.get().expect("plan loaded at start-up").owned_session());
///         Ok(s.run(x, batch)?.to_vec())
///     })
/// }
/// ```
#[derive(Debug)]
pub struct OwnedSession {
    plan: Arc<Plan>,
    scratch: Scratch,
}

impl Plan {
    /// Compile `model`: lower it for `options.mode` (see [`crate::fold::lower`]) and pack each
    /// dense layer's weights for the kernel path `options.kernel` resolves to, stored as
    /// `options.weights` (f32, f16 or bf16 panels, widened in registers). Each dense layer is
    /// packed a block of rows at a time as it is folded ([`DenseKernel::builder`]): no f32 copy
    /// of a whole layer is made, and the file's pages of the rows already packed are let go as
    /// the layer is read, so compiling a large network holds little more than the plan. Blocks of
    /// large layers (2 MiB of f32 weights, at least [`crate::kernels::PARALLEL_MIN_MACS`]
    /// weights) are folded and packed on the current rayon pool; the packed bytes do not depend
    /// on the pool. A model whose layers are all smaller never asks rayon anything.
    ///
    /// [`Model::compile`] is the usual way to call this.
    pub fn compile(model: &Model, options: &Options) -> Result<Plan> {
        let mut steps: Vec<Step> = Vec::new();
        let mut width = model.input_features();
        // Folded plans fuse each elementwise op into the step before it (a dense layer's epilogue,
        // applied while the tile is hot); the unfolded path keeps every layer its own pass, as a
        // framework runs it.
        let fuse = options.mode == Mode::Folded;
        let kernel = KernelChoice::Force(options.kernel.resolve());
        let mut begin = |inputs, outputs| {
            DenseKernel::builder(inputs, outputs, options.kernel, options.weights)
        };
        lower_with(model, options, &mut begin, &mut |s: fold::Step<
            DenseBuilder,
        >| {
            match s.op {
                fold::Op::Dense(d) => {
                    let dense = d.finish();
                    width = dense.outputs();
                    steps.push(Step {
                        op: Op::Dense {
                            kernel: dense,
                            epilogue: Vec::new(),
                        },
                        width,
                        last_layer: s.last_layer,
                        kernel,
                    });
                }
                fold::Op::Elementwise(op) => {
                    if let Some(Step {
                        op: Op::Dense { epilogue, .. } | Op::Elementwise(epilogue),
                        last_layer,
                        ..
                    }) = steps.last_mut().filter(|_| fuse)
                    {
                        epilogue.push(op);
                        *last_layer = s.last_layer;
                    } else {
                        steps.push(Step {
                            op: Op::Elementwise(vec![op]),
                            width,
                            last_layer: s.last_layer,
                            kernel,
                        });
                    }
                }
                fold::Op::Softmax => steps.push(Step {
                    op: Op::Softmax,
                    width,
                    last_layer: s.last_layer,
                    kernel,
                }),
            }
            Ok(())
        })?;
        let max_width = steps
            .iter()
            .map(|s| s.width)
            .chain([model.input_features()])
            .max()
            .unwrap_or(1);
        let mut plan = Plan {
            mode: options.mode,
            input_features: model.input_features(),
            output_features: model.output_features(),
            max_width,
            steps,
            macs_per_row: 0,
            split_rows: false,
        };
        plan.macs_per_row = plan
            .dense_kernels()
            .map(|k| k.macs(1))
            .fold(0, usize::saturating_add);
        plan.split_rows = plan.weight_bytes() <= Caches::detect().l2 / 2;
        Ok(plan)
    }

    /// Rows per part when a call on `batch` rows runs as parts of its rows, each part through
    /// every step on one thread of the current rayon pool; `None` to run step by step (each
    /// large dense layer then splits itself across the pool).
    ///
    /// Plans whose weights fit in half of one core's L2 split their rows once per call when the
    /// call's multiply-adds reach [`kernels::PARALLEL_MIN_MACS`]: their layers are narrow, so
    /// each would otherwise split (by rows) on its own, a fork and join per layer for work of a
    /// few tens of microseconds, and every core holds all the weights anyway. Larger plans keep
    /// the per-layer split, where each thread streams its share of a layer's weights. Parts are
    /// multiples of 8 rows, a few per thread (rayon balances them); each part's dense layers take
    /// the driver of the whole batch, so the outputs are bit for bit those of the undivided call.
    /// Public (hidden) for the tests that check the split is taken.
    #[doc(hidden)]
    pub fn rows_per_part(&self, batch: usize) -> Option<usize> {
        if !self.split_rows || batch < 16 {
            return None;
        }
        let threads = kernels::threads_for(self.macs_per_row.saturating_mul(batch));
        if threads <= 1 {
            return None;
        }
        // PARTS_PER_THREAD parts per thread (of at least MIN_PART_ROWS rows), not one: a worker
        // that wakes late (tens of microseconds on a virtual machine) still finds parts to take,
        // where with one part each the caller would run both halves itself.
        let parts = threads.saturating_mul(PARTS_PER_THREAD);
        let rows = batch.div_ceil(parts).max(MIN_PART_ROWS).div_ceil(8) * 8;
        (rows < batch).then_some(rows)
    }

    /// The dense kernels of the plan's steps, in order (for tests that compare packings).
    #[doc(hidden)]
    pub fn dense_kernels(&self) -> impl Iterator<Item = &DenseKernel> {
        self.steps.iter().filter_map(|s| match &s.op {
            Op::Dense { kernel, .. } => Some(kernel),
            _ => None,
        })
    }

    /// Folded or unfolded.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Width of input rows.
    pub fn input_features(&self) -> usize {
        self.input_features
    }

    /// Width of output rows.
    pub fn output_features(&self) -> usize {
        self.output_features
    }

    /// The widest row any step produces (or the input): a session holds two buffers of `batch`
    /// rows of this width.
    pub fn max_width(&self) -> usize {
        self.max_width
    }

    /// Number of kernel steps (dense layers with fused epilogues, standalone elementwise passes,
    /// softmax). Folding makes this smaller than the number of layers.
    pub fn num_steps(&self) -> usize {
        self.steps.len()
    }

    /// The instruction-set path of the plan's dense kernels (the portable one if it has none).
    pub fn kernel_isa(&self) -> kernels::Isa {
        self.steps
            .iter()
            .find_map(|s| match &s.op {
                Op::Dense { kernel, .. } => Some(kernel.isa()),
                _ => None,
            })
            .unwrap_or(kernels::Isa::Portable)
    }

    /// Bytes of weights the plan holds: the dense layers' packed weights in their stored type
    /// ([`Options::weights`]; narrow layers, fewer outputs than half a vector, stay f32) and their
    /// f32 biases, padding included.
    pub fn weight_bytes(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match &s.op {
                Op::Dense { kernel, .. } => kernel.weight_bytes(),
                _ => 0,
            })
            .sum()
    }

    /// A new session (scratch buffers) for this plan. Buffers grow on the first call with a larger
    /// batch than any before; use [`Plan::session_with_capacity`] to allocate them up front.
    pub fn session(&self) -> Session<'_> {
        Session {
            plan: self,
            scratch: Scratch::default(),
        }
    }

    /// A session whose buffers already hold `max_batch` rows, so no call up to that batch
    /// allocates. If they cannot be allocated, the session starts empty and the first call
    /// reports the error ([`InputError::OutOfMemory`]).
    pub fn session_with_capacity(&self, max_batch: usize) -> Session<'_> {
        let mut s = self.session();
        // A failure here is reported by `run`, which tries again for the batch it is given.
        let _ = s.scratch.reserve(self, max_batch);
        s
    }

    /// A session that keeps this plan alive through the `Arc` (see [`OwnedSession`]).
    pub fn owned_session(self: &Arc<Self>) -> OwnedSession {
        OwnedSession {
            plan: Arc::clone(self),
            scratch: Scratch::default(),
        }
    }

    /// Like [`Plan::owned_session`], with buffers for `max_batch` rows allocated up front.
    pub fn owned_session_with_capacity(self: &Arc<Self>, max_batch: usize) -> OwnedSession {
        let mut s = self.owned_session();
        // As in `session_with_capacity`: `run` reports a failure.
        let _ = s.scratch.reserve(self, max_batch);
        s
    }

    /// Run step by step, handing out each step's output (for layer-by-layer comparison, as
    /// [`crate::verify()`] does). Holds two buffers of `batch` rows of the widest layer, like a
    /// session; allocates them once.
    pub fn trace<'a>(&'a self, input: &'a [f32], batch: usize) -> Result<Trace<'a>> {
        self.check_input(input, batch)?;
        let mut scratch = Scratch::default();
        scratch.reserve(self, batch)?;
        Ok(Trace {
            plan: self,
            input,
            batch,
            next: 0,
            width: self.input_features,
            cur_in_a: None,
            scratch,
        })
    }

    fn check_input(&self, input: &[f32], batch: usize) -> Result<()> {
        if batch == 0 {
            return Err(InputError::EmptyBatch.into());
        }
        let expected = batch.checked_mul(self.input_features);
        if expected != Some(input.len()) {
            return Err(InputError::Length {
                len: input.len(),
                batch,
                features: self.input_features,
                expected: expected.unwrap_or(usize::MAX),
            }
            .into());
        }
        Ok(())
    }
}

impl RowSink for DenseBuilder {
    fn push_row(&mut self, weights: &[f32], bias: f32) {
        DenseBuilder::push_row(self, weights, bias);
    }
    fn push_rows(&mut self, weights: &[f32], biases: &[f32]) {
        DenseBuilder::push_rows(self, weights, biases);
    }
}

impl Step {
    /// Compute this step from `src` (`[batch, width_in]`) into `dst` (`[batch, self.width]`).
    /// `whole`: these rows are a part of a call on `whole` rows, run on this thread alone (see
    /// [`Plan::rows_per_part`]).
    fn run(
        &self,
        src: &[f32],
        dst: &mut [f32],
        batch: usize,
        width_in: usize,
        whole: Option<usize>,
    ) {
        match &self.op {
            Op::Dense { kernel, epilogue } => match whole {
                Some(whole) => kernel.forward_part(src, batch, dst, epilogue, whole),
                None => kernel.forward(src, batch, dst, epilogue),
            },
            Op::Elementwise(_) | Op::Softmax => {
                debug_assert_eq!(width_in, self.width);
                dst.copy_from_slice(src);
                self.apply_in_place(dst);
            }
        }
    }

    /// An elementwise or softmax step on `[batch, self.width]` values in place; `false` (and
    /// nothing done) for a dense step, which needs a separate output.
    fn apply_in_place(&self, v: &mut [f32]) -> bool {
        match &self.op {
            Op::Dense { .. } => return false,
            Op::Elementwise(ops) => kernels::elementwise_with(self.kernel, ops, v, self.width),
            Op::Softmax => kernels::activation::softmax_rows_with(self.kernel, v, self.width),
        }
        true
    }
}

impl Scratch {
    /// Grow both buffers to `batch` rows of the plan's widest step. Fallible: a batch whose
    /// buffers cannot be allocated is an error, never an abort.
    fn reserve(&mut self, plan: &Plan, batch: usize) -> Result<()> {
        let oom = |bytes| InputError::OutOfMemory {
            what: "session buffers",
            batch,
            bytes,
        };
        let need = batch
            .checked_mul(plan.max_width)
            .filter(|n| n.checked_mul(8).is_some())
            .ok_or(oom(usize::MAX))?;
        for buf in [&mut self.a, &mut self.b] {
            if buf.len() < need {
                buf.try_reserve_exact(need - buf.len())
                    .map_err(|_| oom(need * 4))?;
                buf.resize(need, 0.0);
            }
        }
        Ok(())
    }

    /// Run `plan` on `batch` rows of `input`; the output borrows these buffers.
    fn run<'s>(&'s mut self, plan: &Plan, input: &[f32], batch: usize) -> Result<&'s [f32]> {
        plan.check_input(input, batch)?;
        self.reserve(plan, batch)?;
        let (mw, n_in, n_out) = (plan.max_width, plan.input_features, plan.output_features);
        let cur_in_a = match plan.rows_per_part(batch) {
            None => run_steps(plan, input, batch, &mut self.a, &mut self.b, None),
            Some(rows) => {
                // Each part owns its rows of both buffers (`rows * mw` values each), so the parts
                // share nothing; every part's result lands in the same buffer (the same steps).
                let (a, b) = (&mut self.a[..batch * mw], &mut self.b[..batch * mw]);
                let in_a = a
                    .par_chunks_mut(rows * mw)
                    .zip(b.par_chunks_mut(rows * mw))
                    .enumerate()
                    .map(|(t, (a, b))| {
                        let (r0, r) = (t * rows, a.len() / mw);
                        let x = &input[r0 * n_in..(r0 + r) * n_in];
                        run_steps(plan, x, r, a, b, Some(batch))
                    })
                    .reduce(|| None, |p, q| p.or(q));
                // Part `t`'s outputs sit at its rows' offset `r0 * mw`; move them down to
                // `r0 * n_out`, in order: a part's target ends at or below the next one's source.
                let buf = if in_a == Some(true) { a } else { b };
                if n_out < mw {
                    for r0 in (rows..batch).step_by(rows) {
                        let r = rows.min(batch - r0);
                        buf.copy_within(r0 * mw..r0 * mw + r * n_out, r0 * n_out);
                    }
                }
                in_a
            }
        };
        let n = batch * n_out;
        Ok(match cur_in_a {
            // A network with no layers is the identity; copy so the result borrows the session.
            None => {
                self.a[..n].copy_from_slice(input);
                &self.a[..n]
            }
            Some(true) => &self.a[..n],
            Some(false) => &self.b[..n],
        })
    }

    fn run_into(
        &mut self,
        plan: &Plan,
        input: &[f32],
        batch: usize,
        output: &mut [f32],
    ) -> Result<()> {
        let expected = batch.saturating_mul(plan.output_features);
        if output.len() != expected {
            return Err(InputError::OutputLength {
                len: output.len(),
                expected,
            }
            .into());
        }
        output.copy_from_slice(self.run(plan, input, batch)?);
        Ok(())
    }
}

/// Run every step of `plan` on `batch` rows of `input`, ping-ponging between `a` and `b` (each at
/// least `batch` rows of the plan's widest step); returns which holds the output (`Some(true)`:
/// `a`), `None` if the plan has no steps. `whole`: see [`Step::run`].
fn run_steps(
    plan: &Plan,
    input: &[f32],
    batch: usize,
    a: &mut [f32],
    b: &mut [f32],
    whole: Option<usize>,
) -> Option<bool> {
    let mut width = plan.input_features;
    // `cur_in_a` says which buffer holds the current activations; the input slice is read
    // directly by the first step, never copied.
    let mut cur_in_a: Option<bool> = None;
    for step in &plan.steps {
        // Elementwise steps (the unfolded path's BN and activation passes, an unfoldable BN)
        // run in place on the buffer that holds the activations: one pass over memory, as a
        // framework's separate BN kernel makes, not a copy and then a pass.
        if let Some(in_a) = cur_in_a {
            let buf = if in_a { &mut *a } else { &mut *b };
            if step.apply_in_place(&mut buf[..batch * width]) {
                continue;
            }
        }
        let (src, dst): (&[f32], &mut [f32]) = match cur_in_a {
            None => (input, &mut *a),
            Some(true) => (&*a, &mut *b),
            Some(false) => (&*b, &mut *a),
        };
        step.run(
            &src[..batch * width],
            &mut dst[..batch * step.width],
            batch,
            width,
            whole,
        );
        width = step.width;
        cur_in_a = Some(!cur_in_a.unwrap_or(false));
    }
    cur_in_a
}

impl<'p> Session<'p> {
    /// The plan this session runs.
    pub fn plan(&self) -> &'p Plan {
        self.plan
    }

    /// Run `batch` rows of `input` (`[batch, input_features]` row-major) and return the outputs,
    /// `[batch, output_features]` row-major, borrowed from the session's buffers.
    ///
    /// Allocates only when `batch` is larger than any batch this session has run before.
    /// Non-finite inputs are not rejected: NaN and infinities flow through the network as IEEE
    /// arithmetic takes them (a NaN input gives NaN outputs in its row; ReLU passes NaN on).
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<&[f32]> {
        self.scratch.run(self.plan, input, batch)
    }

    /// Like [`Session::run`], but copies the outputs into `output`
    /// (`batch * output_features` values).
    pub fn run_into(&mut self, input: &[f32], batch: usize, output: &mut [f32]) -> Result<()> {
        self.scratch.run_into(self.plan, input, batch, output)
    }
}

impl OwnedSession {
    /// The plan this session runs.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// As [`Session::run`].
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<&[f32]> {
        self.scratch.run(&self.plan, input, batch)
    }

    /// As [`Session::run_into`].
    pub fn run_into(&mut self, input: &[f32], batch: usize, output: &mut [f32]) -> Result<()> {
        self.scratch.run_into(&self.plan, input, batch, output)
    }
}

/// A plan run one step at a time (see [`Plan::trace`]).
#[derive(Debug)]
pub struct Trace<'a> {
    plan: &'a Plan,
    input: &'a [f32],
    batch: usize,
    next: usize,
    width: usize,
    cur_in_a: Option<bool>,
    scratch: Scratch,
}

impl Trace<'_> {
    /// The last model layer whose output the next step produces, or `None` when done.
    pub fn next_layer(&self) -> Option<usize> {
        self.plan.steps.get(self.next).map(|s| s.last_layer)
    }

    /// Run the next step and return the last model layer it covers and its output
    /// (`[batch, width]` row-major), or `None` when every step has run.
    pub fn step(&mut self) -> Option<(usize, &[f32])> {
        let step = self.plan.steps.get(self.next)?;
        self.next += 1;
        let batch = self.batch;
        let Scratch { a, b } = &mut self.scratch;
        // Unlike a session, every step writes the other buffer (no in-place shortcut), so that
        // the previous step's output is never overwritten while it is being read.
        let (src, dst): (&[f32], &mut [f32]) = match self.cur_in_a {
            None => (self.input, &mut a[..]),
            Some(true) => (&a[..], &mut b[..]),
            Some(false) => (&b[..], &mut a[..]),
        };
        step.run(
            &src[..batch * self.width],
            &mut dst[..batch * step.width],
            batch,
            self.width,
            None,
        );
        self.width = step.width;
        let in_a = !self.cur_in_a.unwrap_or(false);
        self.cur_in_a = Some(in_a);
        let out = if in_a {
            &self.scratch.a
        } else {
            &self.scratch.b
        };
        Some((step.last_layer, &out[..batch * step.width]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_and_model_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Plan>();
        assert_send_sync::<Model>();
        fn assert_send<T: Send>() {}
        assert_send::<Session<'static>>();
        assert_send::<OwnedSession>();
        fn assert_static<T: 'static>() {}
        assert_static::<OwnedSession>();
    }
}
