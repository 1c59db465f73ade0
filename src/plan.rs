//! Compiled execution plans and the per-caller sessions that run them.
//!
//! A [`Plan`] is immutable, owns its (folded, packed) weights and is `Send + Sync`: compile it once,
//! share it through an `Arc`, and give each serving thread its own [`Session`], which holds the
//! scratch buffers so that a call allocates nothing.

use crate::error::{InputError, Result};
use crate::fold::{Affine, fold_dense};
use crate::format::Activation;
use crate::kernels::{self, DenseKernel, EpilogueOp, KernelChoice};
use crate::model::{LayerView, Model};

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
}

impl Options {
    /// Options for the folded path.
    pub fn folded() -> Self {
        Options {
            mode: Mode::Folded,
            ..Options::default()
        }
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
}

/// A compiled network: immutable, `Send + Sync`, shareable across threads.
#[derive(Debug)]
pub struct Plan {
    mode: Mode,
    input_features: usize,
    output_features: usize,
    max_width: usize,
    steps: Vec<Step>,
}

/// Per-caller scratch for running a [`Plan`]. Create one per thread with [`Plan::session`].
#[derive(Debug)]
pub struct Session<'p> {
    plan: &'p Plan,
    a: Vec<f32>,
    b: Vec<f32>,
}

/// A token of the layer sequence while grouping for the folded plan.
enum Token {
    Dense(usize),
    /// A run of consecutive BN layers composed into one affine map; the last layer's index.
    Bn(Affine, usize),
    Act(Activation, usize),
}

impl Model {
    /// Compile the model into an execution plan: fold (or not, by `options.mode`) and pack weights.
    ///
    /// The plan owns its weights; the model (and its file mapping) can be dropped afterwards.
    pub fn compile(&self, options: &Options) -> Result<Plan> {
        let steps = match options.mode {
            Mode::Folded => self.folded_steps(options.kernel)?,
            Mode::Unfolded => self.unfolded_steps(options.kernel)?,
        };
        let max_width = steps
            .iter()
            .map(|s| s.width)
            .chain([self.input_features()])
            .max()
            .unwrap_or(1);
        Ok(Plan {
            mode: options.mode,
            input_features: self.input_features(),
            output_features: self.output_features(),
            max_width,
            steps,
        })
    }

    fn unfolded_steps(&self, choice: KernelChoice) -> Result<Vec<Step>> {
        let mut steps = Vec::with_capacity(self.layers().len());
        let mut width = self.input_features();
        for index in 0..self.layers().len() {
            let op = match self.layer_view(index)? {
                LayerView::Dense(d) => {
                    let bias = match d.bias {
                        Some(b) => b.to_f32_vec(),
                        None => vec![0.0; d.outputs],
                    };
                    width = d.outputs;
                    Op::Dense {
                        kernel: DenseKernel::with_choice(
                            d.inputs,
                            d.outputs,
                            &d.weight.to_f32_vec(),
                            &bias,
                            choice,
                        ),
                        epilogue: Vec::new(),
                    }
                }
                LayerView::BatchNorm(bn) => {
                    let n = bn.features;
                    // Exactly as frameworks compute it: stored values widened to f32, eps added
                    // in f32, the square root taken once per feature.
                    let denom = bn
                        .moving_variance
                        .to_f32_vec()
                        .iter()
                        .map(|&v| (v + bn.eps as f32).sqrt())
                        .collect();
                    Op::Elementwise(vec![EpilogueOp::BatchNorm {
                        gamma: bn.gamma.map_or_else(|| vec![1.0; n], |g| g.to_f32_vec()),
                        beta: bn.beta.map_or_else(|| vec![0.0; n], |b| b.to_f32_vec()),
                        mean: bn.moving_mean.to_f32_vec(),
                        denom,
                    }])
                }
                LayerView::Activation(Activation::Softmax) => Op::Softmax,
                LayerView::Activation(a) => Op::Elementwise(vec![EpilogueOp::Act(a)]),
            };
            steps.push(Step {
                op,
                width,
                last_layer: index,
            });
        }
        Ok(steps)
    }

    fn folded_steps(&self, choice: KernelChoice) -> Result<Vec<Step>> {
        // 1. Tokens, with runs of consecutive BN layers composed into one affine map.
        let mut tokens: Vec<Token> = Vec::with_capacity(self.layers().len());
        for index in 0..self.layers().len() {
            match self.layer_view(index)? {
                LayerView::Dense(_) => tokens.push(Token::Dense(index)),
                LayerView::BatchNorm(bn) => {
                    let a = Affine::of_batch_norm(&bn);
                    if let Some(Token::Bn(prev, last)) = tokens.last_mut() {
                        *prev = prev.then(&a);
                        *last = index;
                    } else {
                        tokens.push(Token::Bn(a, index));
                    }
                }
                LayerView::Activation(a) => tokens.push(Token::Act(a, index)),
            }
        }

        // 2. Emit steps. A BN right after a dense layer folds backward into it; a BN right before
        //    a dense layer (and not right after one) folds forward into it; any other BN becomes
        //    an affine op in the epilogue of the step before it.
        let mut steps: Vec<Step> = Vec::new();
        let mut width = self.input_features();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                Token::Dense(index) => {
                    let pre = match i.checked_sub(1).map(|p| &tokens[p]) {
                        Some(Token::Bn(a, _))
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
                        Some(Token::Bn(a, last)) => (Some(a), *last),
                        _ => (None, *index),
                    };
                    let LayerView::Dense(dense) = self.layer_view(*index)? else {
                        unreachable!("Token::Dense is only made for dense layers");
                    };
                    let f = fold_dense(&dense, pre, post).map_err(|e| self.layer_err(*index, e))?;
                    width = f.outputs;
                    steps.push(Step {
                        op: Op::Dense {
                            kernel: DenseKernel::with_choice(
                                f.inputs, f.outputs, &f.weight, &f.bias, choice,
                            ),
                            epilogue: Vec::new(),
                        },
                        width,
                        last_layer: last,
                    });
                    i += if post.is_some() { 2 } else { 1 };
                }
                Token::Bn(a, last) => {
                    let folds_forward = matches!(tokens.get(i + 1), Some(Token::Dense(_)));
                    if !folds_forward {
                        let (scale, shift) = a.to_f32();
                        push_elementwise(
                            &mut steps,
                            EpilogueOp::Affine { scale, shift },
                            width,
                            *last,
                        );
                    }
                    i += 1;
                }
                Token::Act(Activation::Softmax, index) => {
                    steps.push(Step {
                        op: Op::Softmax,
                        width,
                        last_layer: *index,
                    });
                    i += 1;
                }
                Token::Act(a, index) => {
                    push_elementwise(&mut steps, EpilogueOp::Act(*a), width, *index);
                    i += 1;
                }
            }
        }
        Ok(steps)
    }
}

/// Fuse an elementwise op into the previous step when it has an epilogue, else start a new step.
fn push_elementwise(steps: &mut Vec<Step>, op: EpilogueOp, width: usize, last_layer: usize) {
    if let Some(step) = steps.last_mut() {
        match &mut step.op {
            Op::Dense { epilogue, .. } | Op::Elementwise(epilogue) => {
                epilogue.push(op);
                step.last_layer = last_layer;
                return;
            }
            Op::Softmax => {}
        }
    }
    steps.push(Step {
        op: Op::Elementwise(vec![op]),
        width,
        last_layer,
    });
}

impl Plan {
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

    /// Bytes of weights the plan holds.
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
            a: Vec::new(),
            b: Vec::new(),
        }
    }

    /// A session whose buffers already hold `max_batch` rows, so no call up to that batch
    /// allocates.
    pub fn session_with_capacity(&self, max_batch: usize) -> Session<'_> {
        let mut s = self.session();
        s.reserve(max_batch);
        s
    }

    /// Run and return the output of every step, tagged with the index of the last model layer it
    /// covers (for `bnfold verify`; allocates).
    pub fn run_traced(&self, input: &[f32], batch: usize) -> Result<Vec<(usize, Vec<f32>)>> {
        self.check_input(input, batch)?;
        let mut out: Vec<(usize, Vec<f32>)> = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            // Each step reads the previous step's output in place (the input for the first).
            let src = out.last().map_or(input, |(_, y)| y.as_slice());
            let mut next = vec![0.0; batch * step.width];
            step.run(src, &mut next, batch, src.len() / batch);
            out.push((step.last_layer, next));
        }
        Ok(out)
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

impl Step {
    /// Compute this step from `src` (`[batch, width_in]`) into `dst` (`[batch, self.width]`).
    fn run(&self, src: &[f32], dst: &mut [f32], batch: usize, width_in: usize) {
        match &self.op {
            Op::Dense { kernel, epilogue } => kernel.forward(src, batch, dst, epilogue),
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
            Op::Elementwise(ops) => kernels::elementwise(ops, v, self.width),
            Op::Softmax => kernels::activation::softmax_rows(v, self.width),
        }
        true
    }
}

impl<'p> Session<'p> {
    /// The plan this session runs.
    pub fn plan(&self) -> &'p Plan {
        self.plan
    }

    fn reserve(&mut self, batch: usize) {
        let need = batch.saturating_mul(self.plan.max_width);
        if self.a.len() < need {
            self.a.resize(need, 0.0);
            self.b.resize(need, 0.0);
        }
    }

    /// Run `batch` rows of `input` (`[batch, input_features]` row-major) and return the outputs,
    /// `[batch, output_features]` row-major, borrowed from the session's buffers.
    ///
    /// Allocates only when `batch` is larger than any batch this session has run before.
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<&[f32]> {
        self.plan.check_input(input, batch)?;
        self.reserve(batch);
        let mut width = self.plan.input_features;
        // `cur_in_a` says which buffer holds the current activations; the input slice is read
        // directly by the first step, never copied.
        let mut cur_in_a: Option<bool> = None;
        for step in &self.plan.steps {
            // Elementwise steps (the unfolded path's BN and activation passes, an unfoldable BN)
            // run in place on the buffer that holds the activations: one pass over memory, as a
            // framework's separate BN kernel makes, not a copy and then a pass.
            if let Some(in_a) = cur_in_a {
                let buf = if in_a { &mut self.a } else { &mut self.b };
                if step.apply_in_place(&mut buf[..batch * width]) {
                    continue;
                }
            }
            let (src, dst): (&[f32], &mut [f32]) = match cur_in_a {
                None => (input, &mut self.a[..]),
                Some(true) => (&self.a[..], &mut self.b[..]),
                Some(false) => (&self.b[..], &mut self.a[..]),
            };
            let src = &src[..batch * width];
            let dst = &mut dst[..batch * step.width];
            step.run(src, dst, batch, width);
            width = step.width;
            cur_in_a = Some(!cur_in_a.unwrap_or(false));
        }
        let n = batch * self.plan.output_features;
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

    /// Like [`Session::run`], but copies the outputs into `output`.
    pub fn run_into(&mut self, input: &[f32], batch: usize, output: &mut [f32]) -> Result<()> {
        let expected = batch.saturating_mul(self.plan.output_features);
        if output.len() != expected {
            return Err(InputError::OutputLength {
                len: output.len(),
                expected,
            }
            .into());
        }
        let y = self.run(input, batch)?;
        output.copy_from_slice(y);
        Ok(())
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
    }
}
