//! Seeded synthetic networks and inputs, for tests, benchmarks and `bnfold verify`/`bench` when no
//! real data is at hand.
//!
//! One generator ([`Rng`]) and one network builder ([`network`]) serve every caller, so that "a
//! seeded random network" means the same thing in the tests, the criterion benchmarks, the fuzz
//! seeds and the command line. The networks have non-trivial weights, biases, gamma, beta, means
//! and variances on purpose: a folding bug that only shows when the bias is non-zero (a classic,
//! see `docs/BATCHNORM.md`) cannot hide behind zeros.

use crate::activation::Activation;
use crate::error::Result;
use crate::format::{DType, Writer};

/// A small, fast, seeded generator (xorshift64*, Vigna 2016): good enough for test data and
/// benchmark inputs, reproducible on every platform, and no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value; the state is mixed so that nearby seeds differ).
    pub fn new(seed: u64) -> Rng {
        // SplitMix64's finaliser: a zero state would stay zero, so force a non-zero one.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, 1)`, with 24 random bits (every value exactly representable in f32).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[lo, hi)` (up to the rounding of `lo + (hi - lo) * u`).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// `n` values uniform in `[lo, hi)`.
    pub fn uniform_vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// A seeded input batch, `[batch, features]` row-major, uniform in `[-scale, scale)`.
pub fn input(batch: usize, features: usize, scale: f32, seed: u64) -> Vec<f32> {
    Rng::new(seed ^ 0x5eed).uniform_vec(batch.saturating_mul(features), -scale, scale)
}

/// One layer of a synthetic network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Layer {
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
    /// An affine layer (format 1.1) with scale in `[-1.5, 1.5)` and shift in `[-0.5, 0.5)`, each
    /// present if its flag says so: `Affine(scale, shift)`.
    Affine(bool, bool),
}

/// How the BN statistics of a synthetic network are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
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

/// Write a seeded network of `layers` on `input` features as a weight file, with every tensor
/// stored as `dtype`.
///
/// Dense weights are uniform in `±sqrt(2 / fan_in)` (He-style, so that activations keep an O(1)
/// scale through depth), biases in `[-0.5, 0.5)`, gamma in `[0.5, 1.5)`, beta in `[-0.5, 0.5)`,
/// means and variances as `stats` says. Values are rounded to `dtype` by the writer; callers that
/// compare against [`crate::reference`] compare against the stored (rounded) values, so the dtype
/// does not change what "correct" means.
pub fn network(
    input: usize,
    layers: &[Layer],
    seed: u64,
    dtype: DType,
    stats: Stats,
) -> Result<Vec<u8>> {
    let mut rng = Rng::new(seed);
    let mut w = Writer::new(input);
    w.metadata("producer", "bnfold synth");
    w.metadata("seed", seed.to_string());
    let mut width = input;
    for (i, layer) in layers.iter().enumerate() {
        let name = format!("l{i}");
        match *layer {
            Layer::Dense(out) | Layer::DenseNoBias(out) => {
                let s = (2.0 / width.max(1) as f32).sqrt();
                let weight = rng.uniform_vec(out.saturating_mul(width), -s, s);
                let bias = rng.uniform_vec(out, -0.5, 0.5);
                let bias = matches!(layer, Layer::Dense(_)).then_some(&bias[..]);
                w.add_dense(&name, dtype, out, width, &weight, bias)?;
                width = out;
            }
            Layer::Bn | Layer::BnBare => {
                let gamma = rng.uniform_vec(width, 0.5, 1.5);
                let beta = rng.uniform_vec(width, -0.5, 0.5);
                let mean = rng.uniform_vec(width, -stats.mean_abs, stats.mean_abs);
                let (lo, hi) = (stats.var_lo.ln(), stats.var_hi.ln());
                let var: Vec<f32> = rng
                    .uniform_vec(width, lo, hi.max(lo + 1e-6))
                    .into_iter()
                    .map(f32::exp)
                    .collect();
                let full = matches!(layer, Layer::Bn);
                w.add_batch_norm(
                    &name,
                    dtype,
                    stats.eps,
                    full.then_some(&gamma[..]),
                    full.then_some(&beta[..]),
                    &mean,
                    &var,
                )?;
            }
            Layer::Act(a) => {
                w.activation(&name, a)?;
            }
            Layer::Affine(has_scale, has_shift) => {
                let scale = rng.uniform_vec(width, -1.5, 1.5);
                let shift = rng.uniform_vec(width, -0.5, 0.5);
                w.add_affine(
                    &name,
                    dtype,
                    width,
                    has_scale.then_some(&scale[..]),
                    has_shift.then_some(&shift[..]),
                )?;
            }
        }
    }
    w.to_bytes()
}

/// The MLP shape the benchmarks and `bnfold bench` measure: optionally a BN on the input, then for
/// each hidden width Dense -> BN -> `activation`, then a dense output layer; f32 storage.
pub fn mlp(
    input: usize,
    input_bn: bool,
    hidden: &[usize],
    activation: Activation,
    output: usize,
    seed: u64,
) -> Result<Vec<u8>> {
    let mut layers = Vec::with_capacity(hidden.len() * 3 + 2);
    if input_bn {
        layers.push(Layer::Bn);
    }
    for &h in hidden {
        layers.extend([Layer::Dense(h), Layer::Bn, Layer::Act(activation)]);
    }
    layers.push(Layer::Dense(output));
    network(
        input,
        &layers,
        seed,
        DType::F32,
        Stats {
            var_lo: 0.25,
            ..Stats::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_seeded_and_uniform_in_range() {
        let a = Rng::new(7).uniform_vec(1000, -2.0, 3.0);
        assert_eq!(a, Rng::new(7).uniform_vec(1000, -2.0, 3.0));
        assert_ne!(a, Rng::new(8).uniform_vec(1000, -2.0, 3.0));
        assert!(a.iter().all(|v| (-2.0..3.0).contains(v)));
        // 1000 draws: the mean of U(-2, 3) is 0.5 with standard error 1.44 / sqrt(1000) = 0.046;
        // 0.2 is over four standard errors.
        let mean = a.iter().sum::<f32>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.2, "mean {mean}");
    }

    #[test]
    fn mlp_has_the_asked_shape() {
        let bytes = mlp(5, true, &[7, 3], Activation::Tanh, 2, 1).unwrap();
        let m = crate::Model::from_bytes(&bytes).unwrap();
        assert_eq!((m.input_features(), m.output_features()), (5, 2));
        // input BN + 2 x (dense, BN, act) + output dense
        assert_eq!(m.layers().len(), 1 + 2 * 3 + 1);
    }
}
