//! The network being trained: an optional input BN, Dense -> [BN] -> activation blocks, and an
//! output dense layer; its forward passes (training and inference), its backward pass, and export.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::bn::{self, BatchMoments, BatchNorm, Ema};
use super::optim::{Optimizer, Param};
use super::{Result, TrainError};
use bnfold::format::{Activation, DType, Writer};
use bnfold::kernels::{activation, matmul_nt};

/// How the dense layers' weights and biases start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Weights from N(0, std^2), biases all equal to `bias` (the tutorial's bad initialisation is
    /// `std = 1, bias = 0.1`).
    Normal {
        /// Standard deviation of the weights.
        std: f32,
        /// Value of every bias.
        bias: f32,
    },
    /// He: weights from N(0, 2 / fan_in), biases 0.
    He,
}

/// The training loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Mean over the batch of the sum over outputs of `(prediction - target)^2` (the tutorial's).
    Mse,
    /// Mean over the batch of `-log softmax(scores)[label]`. The exported network ends with a
    /// softmax layer, so it outputs class probabilities.
    SoftmaxCrossEntropy,
}

impl Loss {
    /// Name for metadata.
    pub fn name(self) -> &'static str {
        match self {
            Loss::Mse => "mse",
            Loss::SoftmaxCrossEntropy => "softmax_cross_entropy",
        }
    }
}

/// Training targets for a batch.
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a> {
    /// `[batch, outputs]` values, for [`Loss::Mse`].
    Values(&'a [f32]),
    /// One class index per row, for [`Loss::SoftmaxCrossEntropy`].
    Classes(&'a [u8]),
}

/// The shape and training settings of a network.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Input features.
    pub inputs: usize,
    /// Widths of the hidden blocks, in order.
    pub hidden: Vec<usize>,
    /// Output features.
    pub outputs: usize,
    /// Activation of every hidden block (any elementwise one bnfold supports; not softmax).
    pub activation: Activation,
    /// Normalise the input with a BN layer of its own (folded forward into the first dense layer).
    pub input_batch_norm: bool,
    /// Put a BN between each hidden dense layer and its activation.
    pub batch_norm: bool,
    /// BN epsilon.
    pub eps: f64,
    /// How BN keeps its moving statistics.
    pub ema: Ema,
    /// Weight initialisation.
    pub init: Init,
    /// Training loss.
    pub loss: Loss,
}

impl Spec {
    fn check(&self) -> Result<()> {
        let bad = |msg: String| Err(TrainError::Spec(msg));
        if self.inputs == 0 || self.outputs == 0 || self.hidden.contains(&0) {
            return bad("every layer needs at least one feature".into());
        }
        if self.activation == Activation::Softmax {
            return bad("softmax is not an elementwise activation; use it only through the softmax_cross_entropy loss".into());
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad(format!(
                "BN eps must be a positive number, got {}",
                self.eps
            ));
        }
        if !(0.0..1.0).contains(&self.ema.decay) {
            return bad(format!(
                "EMA decay must be in [0, 1), got {}",
                self.ema.decay
            ));
        }
        Ok(())
    }
}

/// One hidden block or the output layer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Dense {
    pub(crate) inputs: usize,
    pub(crate) outputs: usize,
    /// `[outputs, inputs]` row-major, as the weight file stores it.
    pub(crate) weight: Param,
    pub(crate) bias: Param,
}

/// What the forward pass keeps for the backward pass, one entry per dense layer.
#[derive(Debug, Default)]
struct LayerCache {
    /// The dense layer's input.
    input: Vec<f32>,
    /// The standardised values of this block's BN (empty without BN).
    xhat: Vec<f32>,
    /// This block's BN moments.
    moments: BatchMoments,
    /// The activation's input and output (hidden blocks only).
    pre_act: Vec<f32>,
    post_act: Vec<f32>,
}

/// A network in training: parameters, BN state and the scratch of the last forward pass.
#[derive(Debug)]
pub struct Network {
    spec: Spec,
    input_bn: Option<BatchNorm>,
    /// Hidden blocks then the output layer.
    dense: Vec<Dense>,
    /// One per hidden block when `spec.batch_norm`.
    bns: Vec<BatchNorm>,
    steps: u64,
    // Scratch of the last training forward pass.
    input_xhat: Vec<f32>,
    input_moments: BatchMoments,
    caches: Vec<LayerCache>,
    output: Vec<f32>,
}

/// Normal deviates by the Box-Muller transform (written here so that the stream of numbers is
/// fixed by this code and the seed, not by a distribution crate's version).
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // 1 - u is in (0, 1], so the log is finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; src.len()];
    for (r, row) in src.chunks_exact(cols).enumerate() {
        for (c, v) in row.iter().enumerate() {
            out[c * rows + r] = *v;
        }
    }
    out
}

/// `y = x W^T + b` for `batch` rows, through bnfold's GEMM.
fn dense_forward(d: &Dense, x: &[f32], batch: usize) -> Vec<f32> {
    let mut y = vec![0.0; batch * d.outputs];
    matmul_nt(x, &d.weight.value, batch, d.outputs, d.inputs, &mut y);
    for row in y.chunks_exact_mut(d.outputs) {
        for (v, b) in row.iter_mut().zip(&d.bias.value) {
            *v += b;
        }
    }
    y
}

/// Derivative of an elementwise activation at pre-activation `u` with output `a`.
fn act_grad(act: Activation, u: f32, a: f32) -> f32 {
    match act {
        Activation::Identity | Activation::Softmax => 1.0,
        Activation::Relu => {
            if u > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::LeakyRelu { alpha } => {
            if u > 0.0 {
                1.0
            } else {
                alpha
            }
        }
        Activation::Tanh => 1.0 - a * a,
        Activation::Sigmoid => a * (1.0 - a),
        Activation::GeluErf => {
            let u = u as f64;
            let cdf = 0.5 * (1.0 + libm::erf(u / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * u * u).exp() / (2.0 * std::f64::consts::PI).sqrt();
            (cdf + u * pdf) as f32
        }
        Activation::GeluTanh => {
            let u = u as f64;
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let t = (c * (u + 0.044715 * u * u * u)).tanh();
            (0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * u * u)) as f32
        }
    }
}

impl Network {
    /// A network initialised from `seed` (the only source of randomness).
    pub fn new(spec: Spec, seed: u64) -> Result<Self> {
        spec.check()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut widths = vec![spec.inputs];
        widths.extend(&spec.hidden);
        widths.push(spec.outputs);
        let dense: Vec<Dense> = widths
            .windows(2)
            .map(|w| {
                let (inputs, outputs) = (w[0], w[1]);
                let (std, bias) = match spec.init {
                    Init::Normal { std, bias } => (std as f64, bias),
                    Init::He => ((2.0 / inputs as f64).sqrt(), 0.0),
                };
                let weight = (0..inputs * outputs)
                    .map(|_| (normal(&mut rng) * std) as f32)
                    .collect();
                Dense {
                    inputs,
                    outputs,
                    weight: Param::new(weight),
                    bias: Param::new(vec![bias; outputs]),
                }
            })
            .collect();
        let bns: Vec<BatchNorm> = if spec.batch_norm {
            spec.hidden
                .iter()
                .map(|&h| BatchNorm::new(h, spec.eps, spec.ema))
                .collect()
        } else {
            Vec::new()
        };
        let input_bn = spec
            .input_batch_norm
            .then(|| BatchNorm::new(spec.inputs, spec.eps, spec.ema));
        Ok(Network {
            caches: (0..dense.len()).map(|_| LayerCache::default()).collect(),
            spec,
            input_bn,
            dense,
            bns,
            steps: 0,
            input_xhat: Vec::new(),
            input_moments: BatchMoments::default(),
            output: Vec::new(),
        })
    }

    /// The network's spec.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Training steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The input BN layer, if any.
    pub fn input_batch_norm(&self) -> Option<&BatchNorm> {
        self.input_bn.as_ref()
    }

    /// The BN layers of the hidden blocks, in order.
    pub fn batch_norms(&self) -> &[BatchNorm] {
        &self.bns
    }

    /// Mutable access to every BN layer, input BN first (for tests and hand-built networks).
    pub fn batch_norms_mut(&mut self) -> impl Iterator<Item = &mut BatchNorm> {
        self.input_bn.iter_mut().chain(self.bns.iter_mut())
    }

    /// Weights (`[outputs, inputs]`) and biases of dense layer `i` (hidden blocks, then output).
    pub fn dense(&self, i: usize) -> Option<(&[f32], &[f32])> {
        self.dense
            .get(i)
            .map(|d| (&d.weight.value[..], &d.bias.value[..]))
    }

    /// Replace the weights and biases of dense layer `i` (for tests and hand-built networks).
    pub fn set_dense(&mut self, i: usize, weight: &[f32], bias: &[f32]) -> Result<()> {
        let d = self
            .dense
            .get_mut(i)
            .ok_or_else(|| TrainError::Spec(format!("no dense layer {i}")))?;
        if weight.len() != d.weight.value.len() || bias.len() != d.bias.value.len() {
            return Err(TrainError::Spec(format!(
                "dense layer {i}: wrong parameter sizes"
            )));
        }
        d.weight.value.copy_from_slice(weight);
        d.bias.value.copy_from_slice(bias);
        Ok(())
    }

    fn check_batch(&self, x: &[f32], batch: usize) -> Result<()> {
        if batch == 0 || x.len() != batch * self.spec.inputs {
            return Err(TrainError::Data(format!(
                "{} input values for a batch of {batch} rows of {} features",
                x.len(),
                self.spec.inputs
            )));
        }
        Ok(())
    }

    /// Forward pass in training mode: every BN normalises with the batch's own moments. Keeps what
    /// the backward pass needs and returns the network outputs (scores before any softmax).
    ///
    /// Does not touch the moving statistics; [`Network::train_step`] updates them once per step.
    pub fn forward_train(&mut self, x: &[f32], batch: usize) -> Result<&[f32]> {
        self.check_batch(x, batch)?;
        let mut h = x.to_vec();
        if let Some(ibn) = &self.input_bn {
            let (y, xhat, moments) = ibn.forward_batch(&h, batch);
            (self.input_xhat, self.input_moments) = (xhat, moments);
            h = y;
        }
        let last = self.dense.len() - 1;
        for (i, d) in self.dense.iter().enumerate() {
            let mut z = dense_forward(d, &h, batch);
            let cache = &mut self.caches[i];
            cache.input = std::mem::take(&mut h);
            if i == last {
                h = z;
                break;
            }
            if let Some(hbn) = self.bns.get(i) {
                let (y, xhat, moments) = hbn.forward_batch(&z, batch);
                (cache.xhat, cache.moments) = (xhat, moments);
                z = y;
            }
            let mut a = z.clone();
            activation::apply(self.spec.activation, &mut a);
            cache.pre_act = z;
            cache.post_act = a.clone();
            h = a;
        }
        self.output = h;
        Ok(&self.output)
    }

    /// Forward pass in inference mode: every BN uses its moving statistics (the EMA), never the
    /// batch. Returns the network outputs (scores before any softmax). Changes nothing.
    pub fn predict(&self, x: &[f32], batch: usize) -> Result<Vec<f32>> {
        self.check_batch(x, batch)?;
        let mut h = x.to_vec();
        if let Some(bn) = &self.input_bn {
            bn.forward_infer(&mut h);
        }
        let last = self.dense.len() - 1;
        for (i, d) in self.dense.iter().enumerate() {
            h = dense_forward(d, &h, batch);
            if i == last {
                break;
            }
            if let Some(bn) = self.bns.get(i) {
                bn.forward_infer(&mut h);
            }
            activation::apply(self.spec.activation, &mut h);
        }
        Ok(h)
    }

    /// The loss of `scores` (`[batch, outputs]`) against `targets`, and its gradient.
    pub fn loss(
        &self,
        scores: &[f32],
        batch: usize,
        targets: Targets<'_>,
    ) -> Result<(f64, Vec<f32>)> {
        let o = self.spec.outputs;
        let mut grad = vec![0.0f32; scores.len()];
        let n = batch as f64;
        match (self.spec.loss, targets) {
            (Loss::Mse, Targets::Values(t)) if t.len() == scores.len() => {
                let mut sum = 0f64;
                for ((g, &p), &y) in grad.iter_mut().zip(scores).zip(t) {
                    let d = p as f64 - y as f64;
                    sum += d * d;
                    *g = (2.0 * d / n) as f32;
                }
                Ok((sum / n, grad))
            }
            (Loss::SoftmaxCrossEntropy, Targets::Classes(c)) if c.len() == batch => {
                let mut sum = 0f64;
                for ((row, g), &label) in
                    scores.chunks_exact(o).zip(grad.chunks_exact_mut(o)).zip(c)
                {
                    let label = label as usize;
                    if label >= o {
                        return Err(TrainError::Data(format!("class {label} with {o} outputs")));
                    }
                    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                    let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
                    sum += z.ln() - (row[label] as f64 - max);
                    for (j, (gj, &v)) in g.iter_mut().zip(row).enumerate() {
                        let p = (v as f64 - max).exp() / z;
                        *gj = ((p - if j == label { 1.0 } else { 0.0 }) / n) as f32;
                    }
                }
                Ok((sum / n, grad))
            }
            _ => Err(TrainError::Data(format!(
                "targets do not fit a {} loss over a batch of {batch} rows of {o} outputs",
                self.spec.loss.name()
            ))),
        }
    }

    /// Backward pass from `dout`, the gradient of the loss with respect to the outputs of the last
    /// [`Network::forward_train`]. Fills every parameter's gradient.
    pub fn backward(&mut self, dout: &[f32], batch: usize) {
        let mut dh = dout.to_vec();
        let last = self.dense.len() - 1;
        for i in (0..=last).rev() {
            let cache = &self.caches[i];
            if i != last {
                // Through the activation, then the BN.
                let act = self.spec.activation;
                for ((g, &u), &a) in dh.iter_mut().zip(&cache.pre_act).zip(&cache.post_act) {
                    *g *= act_grad(act, u, a);
                }
                if let Some(hbn) = self.bns.get_mut(i) {
                    let mut dz = vec![0.0; dh.len()];
                    bn::backward(
                        &dh,
                        &cache.xhat,
                        batch,
                        &hbn.gamma.value,
                        &cache.moments.inv_std,
                        &mut dz,
                        &mut hbn.gamma.grad,
                        &mut hbn.beta.grad,
                    );
                    dh = dz;
                }
            }
            let d = &mut self.dense[i];
            let (k, n) = (d.inputs, d.outputs);
            // dW [n, k] = dZ^T [n, batch] . X [batch, k]  =  matmul_nt(dZ^T, X^T).
            let dz_t = transpose(&dh, batch, n);
            let x_t = transpose(&cache.input, batch, k);
            matmul_nt(&dz_t, &x_t, n, k, batch, &mut d.weight.grad);
            for (j, g) in d.bias.grad.iter_mut().enumerate() {
                *g = dh.chunks_exact(n).map(|r| r[j]).sum();
            }
            // dX [batch, k] = dZ [batch, n] . W [n, k]  =  matmul_nt(dZ, W^T).
            if i > 0 || self.input_bn.is_some() {
                let w_t = transpose(&d.weight.value, n, k);
                let mut dx = vec![0.0; batch * k];
                matmul_nt(&dh, &w_t, batch, k, n, &mut dx);
                dh = dx;
            }
        }
        if let Some(ibn) = &mut self.input_bn {
            // Only gamma's and beta's gradients are needed: the input is data.
            let mut dx = vec![0.0; dh.len()];
            bn::backward(
                &dh,
                &self.input_xhat,
                batch,
                &ibn.gamma.value,
                &self.input_moments.inv_std,
                &mut dx,
                &mut ibn.gamma.grad,
                &mut ibn.beta.grad,
            );
        }
    }

    /// Every trainable parameter, in a fixed order.
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut out: Vec<&mut Param> = Vec::new();
        if let Some(ibn) = &mut self.input_bn {
            out.push(&mut ibn.gamma);
            out.push(&mut ibn.beta);
        }
        for d in &mut self.dense {
            out.push(&mut d.weight);
            out.push(&mut d.bias);
        }
        for bn in &mut self.bns {
            out.push(&mut bn.gamma);
            out.push(&mut bn.beta);
        }
        out
    }

    /// One training step on a batch: forward in training mode (batch moments), one EMA update of
    /// every BN layer, backward, one optimiser update. Returns the batch loss before the update.
    pub fn train_step(
        &mut self,
        x: &[f32],
        batch: usize,
        targets: Targets<'_>,
        opt: &mut Optimizer,
    ) -> Result<f64> {
        self.forward_train(x, batch)?;
        let (loss, dout) = self.loss(&self.output, batch, targets)?;
        // The single EMA update of this step, with the moments the forward pass just used.
        if let Some(bn) = &mut self.input_bn {
            bn.update_ema(&self.input_moments);
        }
        for (bn, c) in self.bns.iter_mut().zip(&self.caches) {
            bn.update_ema(&c.moments);
        }
        self.backward(&dout, batch);
        opt.step(&mut self.params_mut());
        self.steps += 1;
        Ok(loss)
    }

    /// Loss of the network in inference mode (EMA statistics) on a whole data set, in chunks.
    pub fn eval_loss(&self, x: &[f32], rows: usize, targets: Targets<'_>) -> Result<f64> {
        const CHUNK: usize = 4096;
        if rows == 0 {
            return Err(TrainError::Data("no rows to evaluate".into()));
        }
        let (fi, fo) = (self.spec.inputs, self.spec.outputs);
        let mut total = 0f64;
        let mut start = 0;
        while start < rows {
            let n = CHUNK.min(rows - start);
            let scores = self.predict(&x[start * fi..(start + n) * fi], n)?;
            let t = match targets {
                Targets::Values(v) => Targets::Values(&v[start * fo..(start + n) * fo]),
                Targets::Classes(c) => Targets::Classes(&c[start..start + n]),
            };
            total += self.loss(&scores, n, t)?.0 * n as f64;
            start += n;
        }
        Ok(total / rows as f64)
    }

    /// The network as a bnfold weight file (f32), with the moving statistics as BN statistics and,
    /// for the cross-entropy loss, a final softmax. `metadata` is added after the trainer's own
    /// entries (producer, loss, activation, eps, decay, steps, variance convention).
    pub fn to_writer(&self, metadata: &[(String, String)]) -> Result<Writer> {
        let mut w = Writer::new(self.spec.inputs);
        w.metadata(
            "producer",
            format!("bnfold-train {}", env!("CARGO_PKG_VERSION")),
        );
        w.metadata("loss", self.spec.loss.name());
        w.metadata("activation", self.spec.activation.name());
        w.metadata("bn_eps", format!("{:e}", self.spec.eps));
        w.metadata("ema_decay", format!("{}", self.spec.ema.decay));
        w.metadata("ema_num_updates", format!("{}", self.spec.ema.num_updates));
        w.metadata("bn_variance", "biased");
        w.metadata("steps", self.steps.to_string());
        for (k, v) in metadata {
            w.metadata(k.clone(), v.clone());
        }
        if let Some(bn) = &self.input_bn {
            let (mean, var) = bn.stats_f32();
            w.add_batch_norm(
                "input_bn",
                DType::F32,
                bn.eps,
                Some(&bn.gamma.value),
                Some(&bn.beta.value),
                &mean,
                &var,
            )?;
        }
        let last = self.dense.len() - 1;
        for (i, d) in self.dense.iter().enumerate() {
            let name = if i == last {
                "output".to_owned()
            } else {
                format!("dense{}", i + 1)
            };
            w.add_dense(
                &name,
                DType::F32,
                d.outputs,
                d.inputs,
                &d.weight.value,
                Some(&d.bias.value),
            )?;
            if i == last {
                break;
            }
            if let Some(bn) = self.bns.get(i) {
                let (mean, var) = bn.stats_f32();
                w.add_batch_norm(
                    &format!("bn{}", i + 1),
                    DType::F32,
                    bn.eps,
                    Some(&bn.gamma.value),
                    Some(&bn.beta.value),
                    &mean,
                    &var,
                )?;
            }
            w.activation(&format!("act{}", i + 1), self.spec.activation)?;
        }
        if self.spec.loss == Loss::SoftmaxCrossEntropy {
            w.activation("softmax", Activation::Softmax)?;
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(loss: Loss, activation: Activation) -> Spec {
        spec_bn(loss, activation, true)
    }

    fn spec_bn(loss: Loss, activation: Activation, bn: bool) -> Spec {
        Spec {
            inputs: 3,
            hidden: vec![5, 4],
            outputs: if loss == Loss::Mse { 2 } else { 3 },
            activation,
            input_batch_norm: bn,
            batch_norm: bn,
            eps: 1e-3,
            ema: Ema::new(0.9),
            init: Init::Normal {
                std: 0.7,
                bias: 0.1,
            },
            loss,
        }
    }

    /// The training-mode loss of the current parameters (no EMA update, no parameter change).
    fn loss_of(net: &mut Network, x: &[f32], batch: usize, t: Targets<'_>) -> f64 {
        let scores = net.forward_train(x, batch).expect("valid batch").to_vec();
        net.loss(&scores, batch, t).expect("valid targets").0
    }

    /// Whole-network backward pass (dense, BN with batch moments, activation, input BN, loss)
    /// against central differences of the f32 training loss. f32 limits the agreement: with step
    /// h = 1e-2 the rounding noise of the loss (about 1e-7 relative) divided by 2h is ~1e-5 of the
    /// loss, and the truncation error is O(h^2); 2e-2 of the largest gradient leaves room for
    /// both while a wrong transpose, sign or missing term gives errors of order 1.
    fn check_gradients(loss: Loss, activation: Activation) {
        check_gradients_bn(loss, activation, true);
    }

    fn check_gradients_bn(loss: Loss, activation: Activation, bn: bool) {
        let batch = 6;
        let mut net = Network::new(spec_bn(loss, activation, bn), 7).expect("valid spec");
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x: Vec<f32> = (0..batch * 3)
            .map(|_| (normal(&mut rng) * 2.0 + 1.0) as f32)
            .collect();
        let values: Vec<f32> = (0..batch * 2).map(|_| normal(&mut rng) as f32).collect();
        let classes: Vec<u8> = (0..batch as u8).map(|i| i % 3).collect();
        let t = match loss {
            Loss::Mse => Targets::Values(&values),
            Loss::SoftmaxCrossEntropy => Targets::Classes(&classes),
        };
        // Non-trivial gamma and beta, so their gradients matter.
        for (i, p) in net.params_mut().into_iter().enumerate() {
            p.value
                .iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v += 0.05 * ((i + j) % 5) as f32);
        }
        let scores = net.forward_train(&x, batch).expect("valid batch").to_vec();
        let (_, dout) = net.loss(&scores, batch, t).expect("valid targets");
        net.backward(&dout, batch);
        let analytic: Vec<Vec<f32>> = net.params_mut().iter().map(|p| p.grad.clone()).collect();
        let scale = analytic.iter().flatten().fold(0f32, |m, g| m.max(g.abs()));
        let h = 1e-2f32;
        for (pi, grads) in analytic.iter().enumerate() {
            for (j, &g) in grads.iter().enumerate() {
                let mut at = |delta: f32| {
                    net.params_mut()[pi].value[j] += delta;
                    let l = loss_of(&mut net, &x, batch, t);
                    net.params_mut()[pi].value[j] -= delta;
                    l
                };
                let numeric = ((at(h) - at(-h)) / (2.0 * h as f64)) as f32;
                assert!(
                    (numeric - g).abs() <= 2e-2 * scale,
                    "{loss:?}/{activation:?}: param {pi}[{j}]: analytic {g}, numeric {numeric} (scale {scale})"
                );
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences_mse_tanh() {
        check_gradients(Loss::Mse, Activation::Tanh);
    }

    #[test]
    fn backward_matches_finite_differences_cross_entropy_gelu() {
        check_gradients(Loss::SoftmaxCrossEntropy, Activation::GeluErf);
    }

    #[test]
    fn backward_matches_finite_differences_sigmoid_and_gelu_tanh() {
        check_gradients(Loss::Mse, Activation::Sigmoid);
        check_gradients(Loss::SoftmaxCrossEntropy, Activation::GeluTanh);
    }

    #[test]
    fn backward_matches_finite_differences_without_bn() {
        check_gradients_bn(Loss::Mse, Activation::Tanh, false);
        check_gradients_bn(Loss::SoftmaxCrossEntropy, Activation::GeluErf, false);
    }

    #[test]
    fn softmax_is_rejected_as_a_hidden_activation() {
        let s = spec(Loss::Mse, Activation::Softmax);
        assert!(matches!(Network::new(s, 0), Err(TrainError::Spec(_))));
    }
}
