//! Builders for seeded random networks, shared by the integration tests.
#![allow(dead_code)]

use bnfold::format::Writer;
use bnfold::{Activation, DType};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One layer of a test network.
#[derive(Debug, Clone, Copy)]
pub enum L {
    /// Dense with this many outputs, with a bias.
    Dense(usize),
    /// Dense without a bias.
    DenseNoBias(usize),
    /// BatchNorm with gamma and beta.
    Bn,
    /// BatchNorm without gamma and beta (Keras `scale=False, center=False`).
    BnBare,
    /// An activation.
    Act(Activation),
}

/// How the BN statistics are drawn.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// eps of every BN layer.
    pub eps: f64,
    /// Variances are drawn log-uniformly in `[var_lo, var_hi]`.
    pub var_lo: f32,
    /// Upper end of the variance range.
    pub var_hi: f32,
    /// Means are uniform in `[-mean_abs, mean_abs]`.
    pub mean_abs: f32,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            eps: 1e-3,
            var_lo: 0.05,
            var_hi: 4.0,
            mean_abs: 2.0,
        }
    }
}

/// Uniform values in `[lo, hi)`.
pub fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// Write a seeded random network with non-trivial weights, biases, gamma, beta, mean and variance.
///
/// Values are rounded to `dtype` by the writer; the tests compare against the f64 reference, which
/// reads the stored (rounded) values, so the dtype does not change what "correct" means.
pub fn network(input: usize, layers: &[L], seed: u64, dtype: DType, stats: Stats) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = Writer::new(input);
    w.metadata("producer", "bnfold tests");
    w.metadata("seed", seed.to_string());
    let mut width = input;
    for (i, layer) in layers.iter().enumerate() {
        let name = format!("l{i}");
        match *layer {
            L::Dense(out) | L::DenseNoBias(out) => {
                // Scaled like a trained layer (He-style), so activations keep an O(1) scale.
                let s = (2.0 / width as f32).sqrt();
                let weight = uniform(&mut rng, out * width, -s, s);
                let bias = uniform(&mut rng, out, -0.5, 0.5);
                let bias = matches!(layer, L::Dense(_)).then_some(&bias[..]);
                w.add_dense(&name, dtype, out, width, &weight, bias)
                    .unwrap();
                width = out;
            }
            L::Bn | L::BnBare => {
                let gamma = uniform(&mut rng, width, 0.5, 1.5);
                let beta = uniform(&mut rng, width, -0.5, 0.5);
                let mean = uniform(&mut rng, width, -stats.mean_abs, stats.mean_abs);
                let (lo, hi) = (stats.var_lo.ln(), stats.var_hi.ln());
                let var: Vec<f32> = uniform(&mut rng, width, lo, hi.max(lo + 1e-6))
                    .into_iter()
                    .map(f32::exp)
                    .collect();
                let full = matches!(layer, L::Bn);
                w.add_batch_norm(
                    &name,
                    dtype,
                    stats.eps,
                    full.then_some(&gamma[..]),
                    full.then_some(&beta[..]),
                    &mean,
                    &var,
                )
                .unwrap();
            }
            L::Act(a) => {
                w.activation(&name, a).unwrap();
            }
        }
    }
    w.to_bytes().unwrap()
}

/// A seeded random input batch.
pub fn input(batch: usize, features: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    uniform(&mut rng, batch * features, -2.0, 2.0)
}

/// Largest `|got - want|` divided by the largest `|want|` (normwise relative error).
///
/// Normwise rather than elementwise, because an output near zero (a ReLU's, or a sum that cancels)
/// carries the absolute rounding error of its terms, which is small against the layer's scale but
/// not against the value itself.
pub fn normwise_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            let d = (g as f64 - w).abs();
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max)
        / scale
}
