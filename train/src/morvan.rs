//! The tutorial's experiment (`docs/BATCHNORM.md`, "The tutorial's experiment"): fit `y = x^2 - 5 + noise` with a deep, badly
//! initialised network, with and without Batch Normalization, from the same seed.

use std::io::Write;
use std::path::Path;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::net::normal;
use super::{
    Ema, Init, Loss, Network, Optimizer, OptimizerKind, Result, Spec, Targets, io_err, num,
};
use bnfold::format::{Activation, Writer};

/// The experiment's settings. [`Config::default`] is the tutorial's.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Data points, `x = linspace(-7, 10, samples)`, shuffled.
    pub samples: usize,
    /// Standard deviation of the Gaussian noise added to the target.
    pub noise_std: f64,
    /// Hidden layers.
    pub layers: usize,
    /// Units per hidden layer.
    pub units: usize,
    /// Hidden activation (`relu` in the lesson's code, `tanh` in the annotated discussion).
    pub activation: Activation,
    /// EMA decay of the BN statistics.
    pub decay: f64,
    /// BN epsilon.
    pub eps: f64,
    /// SGD learning rate.
    pub lr: f32,
    /// Rows per batch; batch `i` is rows `i * batch ..` of the shuffled data, wrapping around.
    pub batch: usize,
    /// Training steps.
    pub steps: usize,
    /// Record the full-data loss before training, after the first step, every this many steps
    /// and after the last.
    pub record_every: usize,
    /// Seed of the data and of the initial weights (the same for both networks).
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            samples: 2500,
            noise_std: 8.0,
            layers: 7,
            units: 30,
            activation: Activation::Relu,
            decay: 0.5,
            eps: 0.001,
            lr: 0.001,
            batch: 10,
            steps: 250,
            record_every: 5,
            seed: 1,
        }
    }
}

impl Config {
    /// The network spec, with or without BN (input BN included).
    pub fn spec(&self, batch_norm: bool) -> Spec {
        Spec {
            inputs: 1,
            hidden: vec![self.units; self.layers],
            outputs: 1,
            activation: self.activation,
            input_batch_norm: batch_norm,
            batch_norm,
            eps: self.eps,
            ema: Ema::new(self.decay),
            // The lesson's deliberately bad initialisation: N(0, 1) weights, biases 0.1.
            init: Init::Normal {
                std: 1.0,
                bias: 0.1,
            },
            loss: Loss::Mse,
        }
    }
}

/// The data set: `x` shuffled, `y = x^2 - 5 + N(0, noise_std^2)`.
pub fn data(cfg: &Config) -> (Vec<f32>, Vec<f32>) {
    // Its own stream, so the data do not depend on how many numbers the initialisation draws.
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xDA7A_DA7A_DA7A_DA7A);
    let n = cfg.samples;
    let mut x: Vec<f64> = (0..n)
        .map(|i| -7.0 + 17.0 * i as f64 / (n.max(2) - 1) as f64)
        .collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        x.swap(i, j);
    }
    let y = x
        .iter()
        .map(|&v| (v * v - 5.0 + cfg.noise_std * normal(&mut rng)) as f32)
        .collect();
    (x.into_iter().map(|v| v as f32).collect(), y)
}

/// One row of the loss history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    /// Training steps done when the loss was measured.
    pub step: usize,
    /// Full-data loss (inference mode, EMA statistics) of the network with BN.
    pub with_bn: f64,
    /// Full-data loss of the network without BN.
    pub without_bn: f64,
}

/// What the experiment produced.
#[derive(Debug)]
pub struct Outcome {
    /// The loss history of both networks.
    pub history: Vec<Record>,
    /// The network with BN, trained.
    pub with_bn: Network,
    /// The network without BN, trained.
    pub without_bn: Network,
}

impl Outcome {
    /// The first recorded step at which the network without BN had a non-finite loss (it
    /// diverged), if any.
    pub fn without_bn_diverged_at(&self) -> Option<usize> {
        self.history
            .iter()
            .find(|r| !r.without_bn.is_finite())
            .map(|r| r.step)
    }

    /// The last recorded losses: `(with BN, without BN)`.
    pub fn final_losses(&self) -> (f64, f64) {
        self.history
            .last()
            .map_or((f64::NAN, f64::NAN), |r| (r.with_bn, r.without_bn))
    }
}

/// Train both networks in lockstep on the same batches. `progress` is called with the number of
/// steps done after each step.
pub fn run(cfg: &Config, progress: &mut dyn FnMut(u64)) -> Result<Outcome> {
    if cfg.batch == 0 || cfg.samples < cfg.batch || cfg.record_every == 0 {
        return Err(super::TrainError::Spec(
            "need batch >= 1, samples >= batch and record_every >= 1".into(),
        ));
    }
    let (x, y) = data(cfg);
    let mut nets = [
        Network::new(cfg.spec(true), cfg.seed)?,
        Network::new(cfg.spec(false), cfg.seed)?,
    ];
    let mut opts = [
        Optimizer::new(OptimizerKind::Sgd { lr: cfg.lr }),
        Optimizer::new(OptimizerKind::Sgd { lr: cfg.lr }),
    ];
    let n = cfg.samples;
    let full = |nets: &[Network; 2], step: usize| -> Result<Record> {
        Ok(Record {
            step,
            with_bn: nets[0].eval_loss(&x, n, Targets::Values(&y))?,
            without_bn: nets[1].eval_loss(&x, n, Targets::Values(&y))?,
        })
    };
    let mut history = vec![full(&nets, 0)?];
    let mut bx = vec![0f32; cfg.batch];
    let mut by = vec![0f32; cfg.batch];
    for step in 0..cfg.steps {
        for r in 0..cfg.batch {
            let i = (step * cfg.batch + r) % n;
            bx[r] = x[i];
            by[r] = y[i];
        }
        for (net, opt) in nets.iter_mut().zip(&mut opts) {
            net.train_step(&bx, cfg.batch, Targets::Values(&by), opt)?;
        }
        let done = step + 1;
        if done == 1 || done % cfg.record_every == 0 || done == cfg.steps {
            history.push(full(&nets, done)?);
        }
        progress(done as u64);
    }
    let [with_bn, without_bn] = nets;
    Ok(Outcome {
        history,
        with_bn,
        without_bn,
    })
}

/// Write the loss history as CSV: `step,loss_with_bn,loss_without_bn`.
pub fn write_history(path: &Path, history: &[Record]) -> Result<()> {
    let mut out = String::from("step,loss_with_bn,loss_without_bn\n");
    for r in history {
        out.push_str(&format!("{},{},{}\n", r.step, r.with_bn, r.without_bn));
    }
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(out.as_bytes()).map_err(io_err(path))
}

/// The BN network as a weight file, with the experiment's settings and results as metadata.
pub fn writer(cfg: &Config, outcome: &Outcome) -> Result<Writer> {
    let (with_bn, without_bn) = outcome.final_losses();
    let meta = [
        (
            "experiment",
            "morvan: y = x^2 - 5 + N(0, 8^2), x in [-7, 10]".to_owned(),
        ),
        ("seed", cfg.seed.to_string()),
        ("optimizer", OptimizerKind::Sgd { lr: cfg.lr }.describe()),
        ("batch_size", cfg.batch.to_string()),
        ("init", "weights N(0, 1), biases 0.1".to_owned()),
        ("final_loss", num(with_bn)),
        ("final_loss_without_bn", num(without_bn)),
        (
            "final_loss_ratio_without_over_with_bn",
            num(without_bn / with_bn),
        ),
        (
            "loss_measure",
            "MSE over all samples, inference mode (EMA statistics)".to_owned(),
        ),
    ];
    let mut meta: Vec<(String, String)> =
        meta.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    if let Some(step) = outcome.without_bn_diverged_at() {
        meta.push(("without_bn_diverged_at_step".into(), step.to_string()));
    }
    outcome.with_bn.to_writer(&meta)
}
