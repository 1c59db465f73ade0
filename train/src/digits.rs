//! The handwritten-digits classifier: scikit-learn's copy of the UCI digits (`data/digits/`),
//! raw pixels (0..16) in, 10 class probabilities out; the input BN does the normalising.

use std::io::Read;
use std::path::Path;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{
    Ema, Init, Loss, Network, Optimizer, OptimizerKind, Result, Spec, Targets, TrainError, io_err,
    num,
};
use bnfold::format::{Activation, Writer};

/// Pixels per image (8 x 8).
pub const PIXELS: usize = 64;
/// Classes (the digits 0 to 9).
pub const CLASSES: usize = 10;
/// The data file, relative to the repository root.
pub const DEFAULT_DATA: &str = "data/digits/digits.csv.gz";

/// Images and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Digits {
    /// `[rows, 64]` raw pixel values, 0..16.
    pub pixels: Vec<f32>,
    /// One label 0..9 per row.
    pub labels: Vec<u8>,
}

impl Digits {
    /// Number of images.
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    fn select(&self, keep: impl Fn(usize) -> bool) -> Digits {
        let mut out = Digits {
            pixels: Vec::new(),
            labels: Vec::new(),
        };
        for i in (0..self.rows()).filter(|&i| keep(i)) {
            out.pixels
                .extend_from_slice(&self.pixels[i * PIXELS..(i + 1) * PIXELS]);
            out.labels.push(self.labels[i]);
        }
        out
    }
}

/// Parse the data: gzip-compressed CSV, 65 integers per line (64 pixels, then the label).
pub fn parse(gz: &[u8]) -> Result<Digits> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .map_err(|e| TrainError::Data(format!("digits: not a gzip-compressed text file: {e}")))?;
    let mut d = Digits {
        pixels: Vec::new(),
        labels: Vec::new(),
    };
    for (line_no, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |what: String| TrainError::Data(format!("digits line {}: {what}", line_no + 1));
        let values: Vec<u8> = line
            .split(',')
            .map(|v| v.trim().parse::<u8>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad(format!("not an integer 0..255: {e}")))?;
        if values.len() != PIXELS + 1 {
            return Err(bad(format!(
                "{} values, expected {}",
                values.len(),
                PIXELS + 1
            )));
        }
        if let Some(p) = values[..PIXELS].iter().find(|&&p| p > 16) {
            return Err(bad(format!("pixel value {p} outside 0..16")));
        }
        let label = values[PIXELS];
        if label as usize >= CLASSES {
            return Err(bad(format!("label {label} outside 0..9")));
        }
        d.pixels.extend(values[..PIXELS].iter().map(|&p| p as f32));
        d.labels.push(label);
    }
    if d.rows() == 0 {
        return Err(TrainError::Data("digits: no rows".into()));
    }
    Ok(d)
}

/// Read and parse the data file.
pub fn load(path: &Path) -> Result<Digits> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    parse(&bytes)
}

/// The deterministic, stratified split: a row is a test row when it is the `k`-th row of its class
/// in file order (from 0) and `k % 5 == 0`, a training row otherwise. So every class gives a fifth
/// of its rows (rounded up) to the test set, and no random numbers are involved. Returns
/// `(train, test)`.
pub fn split(d: &Digits) -> (Digits, Digits) {
    let mut seen = [0usize; CLASSES];
    let is_test: Vec<bool> = d
        .labels
        .iter()
        .map(|&l| {
            let k = seen[l as usize];
            seen[l as usize] += 1;
            k % 5 == 0
        })
        .collect();
    (d.select(|i| !is_test[i]), d.select(|i| is_test[i]))
}

/// The predicted class of each row: [`bnfold::argmax`] (the first largest; `None` for a row with
/// a NaN).
pub fn argmax_rows(scores: &[f32], width: usize) -> Vec<Option<usize>> {
    scores.chunks_exact(width).map(bnfold::argmax).collect()
}

/// Fraction of rows whose largest score is at the label (a row with no prediction is wrong).
pub fn accuracy(scores: &[f32], labels: &[u8]) -> f64 {
    let hits = argmax_rows(scores, CLASSES)
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p == Some(usize::from(**l)))
        .count();
    hits as f64 / labels.len().max(1) as f64
}

/// Training settings. [`Config::default`] made `models/digits.bnw`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Hidden widths (each a Dense -> BN -> activation block).
    pub hidden: Vec<usize>,
    /// Hidden activation.
    pub activation: Activation,
    /// Passes over the training set.
    pub epochs: usize,
    /// Rows per batch (the last, short batch of an epoch is dropped).
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f32,
    /// EMA decay (with TF's `num_updates` schedule).
    pub decay: f64,
    /// BN epsilon.
    pub eps: f64,
    /// Seed of the initial weights and the batch order.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hidden: vec![128, 64],
            activation: Activation::Relu,
            epochs: 30,
            batch: 32,
            lr: 1e-3,
            decay: 0.99,
            eps: 1e-3,
            seed: 0,
        }
    }
}

impl Config {
    /// The network spec: input BN on the raw pixels, the hidden BN blocks, 10 outputs.
    pub fn spec(&self) -> Spec {
        Spec {
            inputs: PIXELS,
            hidden: self.hidden.clone(),
            outputs: CLASSES,
            activation: self.activation,
            input_batch_norm: true,
            batch_norm: true,
            eps: self.eps,
            ema: Ema {
                decay: self.decay,
                num_updates: true,
            },
            init: Init::He,
            loss: Loss::SoftmaxCrossEntropy,
        }
    }

    /// Steps the run takes.
    pub fn steps(&self, train_rows: usize) -> usize {
        self.epochs * (train_rows / self.batch.max(1))
    }
}

/// What training produced.
#[derive(Debug)]
pub struct Outcome {
    /// The trained network.
    pub network: Network,
    /// Mean training-batch loss of the last epoch.
    pub last_epoch_loss: f64,
    /// Cross-entropy on the training set (inference mode).
    pub train_loss: f64,
    /// Cross-entropy on the test set (inference mode).
    pub test_loss: f64,
    /// Training-set accuracy (inference mode).
    pub train_accuracy: f64,
    /// Test-set accuracy (inference mode).
    pub test_accuracy: f64,
    /// Rows trained on.
    pub train_rows: usize,
    /// Rows tested on.
    pub test_rows: usize,
}

/// Train on `train`, evaluate on both sets. `progress` gets the number of steps done.
pub fn train(
    cfg: &Config,
    train: &Digits,
    test: &Digits,
    progress: &mut dyn FnMut(u64),
) -> Result<Outcome> {
    if cfg.batch == 0 || train.rows() < cfg.batch || test.rows() == 0 {
        return Err(TrainError::Spec(format!(
            "batch {} with {} training and {} test rows",
            cfg.batch,
            train.rows(),
            test.rows()
        )));
    }
    let mut net = Network::new(cfg.spec(), cfg.seed)?;
    let mut opt = Optimizer::new(OptimizerKind::adam(cfg.lr));
    // The batch order has its own stream, so it does not depend on how the weights were drawn.
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xBA7C_BA7C_BA7C_BA7C);
    let n = train.rows();
    let mut order: Vec<usize> = (0..n).collect();
    let mut bx = vec![0f32; cfg.batch * PIXELS];
    let mut by = vec![0u8; cfg.batch];
    let mut done = 0u64;
    let mut last_epoch_loss = f64::NAN;
    for _ in 0..cfg.epochs {
        for i in (1..n).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        let mut sum = 0f64;
        let batches = n / cfg.batch;
        for b in 0..batches {
            for (r, &i) in order[b * cfg.batch..(b + 1) * cfg.batch].iter().enumerate() {
                bx[r * PIXELS..(r + 1) * PIXELS]
                    .copy_from_slice(&train.pixels[i * PIXELS..(i + 1) * PIXELS]);
                by[r] = train.labels[i];
            }
            sum += net.train_step(&bx, cfg.batch, Targets::Classes(&by), &mut opt)?;
            done += 1;
            progress(done);
        }
        last_epoch_loss = sum / batches as f64;
    }
    let train_scores = net.predict(&train.pixels, train.rows())?;
    let test_scores = net.predict(&test.pixels, test.rows())?;
    Ok(Outcome {
        train_loss: net
            .loss(&train_scores, train.rows(), Targets::Classes(&train.labels))?
            .0,
        test_loss: net
            .loss(&test_scores, test.rows(), Targets::Classes(&test.labels))?
            .0,
        train_accuracy: accuracy(&train_scores, &train.labels),
        test_accuracy: accuracy(&test_scores, &test.labels),
        last_epoch_loss,
        train_rows: train.rows(),
        test_rows: test.rows(),
        network: net,
    })
}

/// The trained network as a weight file, with the settings and results as metadata.
pub fn writer(cfg: &Config, o: &Outcome) -> Result<Writer> {
    let meta = [
        (
            "dataset",
            "scikit-learn digits 1.9.1 (UCI optdigits test set), data/digits/digits.csv.gz"
                .to_owned(),
        ),
        (
            "split",
            format!(
                "stratified: the k-th row of each class (file order, from 0) is a test row when k % 5 == 0; {} train, {} test rows",
                o.train_rows, o.test_rows
            ),
        ),
        (
            "input",
            "64 raw pixel values 0..16, row-major 8x8".to_owned(),
        ),
        (
            "output",
            "10 class probabilities (softmax), digits 0..9".to_owned(),
        ),
        ("seed", cfg.seed.to_string()),
        ("optimizer", OptimizerKind::adam(cfg.lr).describe()),
        ("batch_size", cfg.batch.to_string()),
        ("epochs", cfg.epochs.to_string()),
        ("init", "He normal, biases 0".to_owned()),
        ("final_batch_loss", num(o.last_epoch_loss)),
        ("final_train_loss", num(o.train_loss)),
        ("final_test_loss", num(o.test_loss)),
        ("train_accuracy", num(o.train_accuracy)),
        ("test_accuracy", num(o.test_accuracy)),
    ];
    let meta: Vec<(String, String)> = meta.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    o.network.to_writer(&meta)
}
