//! Batch normalisation as it is trained: batch moments, the exact backward pass, and the
//! exponential moving averages (EMA) that inference uses.
//!
//! The arithmetic is written once, over [`Real`] (f32 for training, f64 for the tests that check
//! the backward pass against finite differences), and accumulates in f64 either way.

/// A floating-point element type the BN arithmetic can read and write.
pub trait Real: Copy + std::fmt::Debug {
    /// Widen to f64.
    fn to_f64(self) -> f64;
    /// Round from f64.
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// Moments of one batch, per feature, and what the backward pass needs of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchMoments {
    /// Batch mean of each feature.
    pub mean: Vec<f64>,
    /// Biased batch variance (divided by the batch size, as `tf.nn.moments` computes it).
    pub var: Vec<f64>,
    /// `1 / sqrt(var + eps)`.
    pub inv_std: Vec<f64>,
}

/// BN in training mode on `x` (`[batch, features]` row-major): normalise each feature with the
/// batch's own mean and biased variance, then scale by `gamma` and shift by `beta`.
///
/// Writes the output to `y` and the standardised values `(x - mean) / sqrt(var + eps)` to `xhat`
/// (kept for the backward pass), and returns the batch moments.
///
/// Panics if the slice lengths disagree with `batch` and `gamma.len()` (callers own all buffers).
pub fn forward_train<T: Real>(
    x: &[T],
    batch: usize,
    gamma: &[T],
    beta: &[T],
    eps: f64,
    y: &mut [T],
    xhat: &mut [T],
) -> BatchMoments {
    let f = gamma.len();
    assert!(batch > 0, "empty batch");
    assert_eq!(x.len(), batch * f, "x length");
    assert_eq!(beta.len(), f, "beta length");
    assert_eq!(y.len(), x.len(), "y length");
    assert_eq!(xhat.len(), x.len(), "xhat length");
    let n = batch as f64;
    let mut mean = vec![0f64; f];
    for row in x.chunks_exact(f) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v.to_f64();
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    // Two passes (mean first, then squared deviations): no cancellation as in E[x^2] - E[x]^2.
    let mut var = vec![0f64; f];
    for row in x.chunks_exact(f) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            let d = v.to_f64() - m;
            *s += d * d;
        }
    }
    var.iter_mut().for_each(|s| *s /= n);
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    for ((xr, yr), hr) in x
        .chunks_exact(f)
        .zip(y.chunks_exact_mut(f))
        .zip(xhat.chunks_exact_mut(f))
    {
        for j in 0..f {
            let h = (xr[j].to_f64() - mean[j]) * inv_std[j];
            hr[j] = T::from_f64(h);
            yr[j] = T::from_f64(gamma[j].to_f64() * h + beta[j].to_f64());
        }
    }
    BatchMoments { mean, var, inv_std }
}

/// The exact gradient of BN in training mode, the batch moments included.
///
/// With `s = sum_b dy`, `t = sum_b dy * xhat` per feature:
/// `dbeta = s`, `dgamma = t`, `dx = gamma * inv_std / N * (N dy - s - xhat t)`.
/// `dx` is written in place of nothing else; `dgamma` and `dbeta` are overwritten.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    dy: &[T],
    xhat: &[T],
    batch: usize,
    gamma: &[T],
    inv_std: &[f64],
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    let f = gamma.len();
    assert_eq!(dy.len(), batch * f, "dy length");
    assert_eq!(xhat.len(), dy.len(), "xhat length");
    assert_eq!(dx.len(), dy.len(), "dx length");
    assert_eq!(inv_std.len(), f, "inv_std length");
    assert_eq!(dgamma.len(), f, "dgamma length");
    assert_eq!(dbeta.len(), f, "dbeta length");
    let n = batch as f64;
    let mut s = vec![0f64; f];
    let mut t = vec![0f64; f];
    for (dr, hr) in dy.chunks_exact(f).zip(xhat.chunks_exact(f)) {
        for j in 0..f {
            let d = dr[j].to_f64();
            s[j] += d;
            t[j] += d * hr[j].to_f64();
        }
    }
    for ((dr, hr), xr) in dy
        .chunks_exact(f)
        .zip(xhat.chunks_exact(f))
        .zip(dx.chunks_exact_mut(f))
    {
        for j in 0..f {
            let k = gamma[j].to_f64() * inv_std[j] / n;
            xr[j] = T::from_f64(k * (n * dr[j].to_f64() - s[j] - hr[j].to_f64() * t[j]));
        }
    }
    for j in 0..f {
        dgamma[j] = T::from_f64(t[j]);
        dbeta[j] = T::from_f64(s[j]);
    }
}

use super::optim::Param;

/// How the moving averages of the batch moments are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ema {
    /// `shadow = decay * shadow + (1 - decay) * batch_value`.
    pub decay: f64,
    /// TF's `num_updates` schedule: the update numbered `n` (from 0) uses
    /// `min(decay, (1 + n) / (10 + n))`, so early batches are not drowned by the initial zeros.
    pub num_updates: bool,
}

impl Ema {
    /// A constant decay (TF's `ExponentialMovingAverage(decay)` without `num_updates`).
    pub fn new(decay: f64) -> Self {
        Ema {
            decay,
            num_updates: false,
        }
    }

    /// The decay used by update number `n` (counted from 0).
    pub fn decay_at(&self, n: u64) -> f64 {
        if self.num_updates {
            let n = n as f64;
            self.decay.min((1.0 + n) / (10.0 + n))
        } else {
            self.decay
        }
    }
}

/// One BN layer's trainable parameters and its moving statistics.
///
/// The shadows start at zero, as TF1's `ExponentialMovingAverage` starts the shadow of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    /// Scale, starts at 1 (trainable).
    pub gamma: Param,
    /// Shift, starts at 0 (trainable).
    pub beta: Param,
    /// EMA of the batch means (the shadow), kept in f64 and rounded once at export.
    pub moving_mean: Vec<f64>,
    /// EMA of the biased batch variances.
    pub moving_var: Vec<f64>,
    /// Added to the variance inside the square root.
    pub eps: f64,
    /// The EMA settings.
    pub ema: Ema,
    /// How many EMA updates have been applied (one per training step).
    pub updates: u64,
}

impl BatchNorm {
    /// A fresh layer over `features` features.
    pub fn new(features: usize, eps: f64, ema: Ema) -> Self {
        BatchNorm {
            gamma: Param::new(vec![1.0; features]),
            beta: Param::new(vec![0.0; features]),
            moving_mean: vec![0.0; features],
            moving_var: vec![0.0; features],
            eps,
            ema,
            updates: 0,
        }
    }

    /// BN in training mode over `[batch, features]` values `x`: normalises with the batch's own
    /// moments ([`forward_train`]) and returns the output, the normalised `xhat` the backward pass
    /// needs, and the moments for the EMA update. Does not touch the moving statistics.
    pub fn forward_batch(&self, x: &[f32], batch: usize) -> (Vec<f32>, Vec<f32>, BatchMoments) {
        let mut y = vec![0.0; x.len()];
        let mut xhat = vec![0.0; x.len()];
        let moments = forward_train(
            x,
            batch,
            &self.gamma.value,
            &self.beta.value,
            self.eps,
            &mut y,
            &mut xhat,
        );
        (y, xhat, moments)
    }

    /// Features normalised.
    pub fn features(&self) -> usize {
        self.gamma.value.len()
    }

    /// Fold one batch's moments into the moving averages: one update, with the decay the schedule
    /// gives for the number of updates made so far.
    pub fn update_ema(&mut self, m: &BatchMoments) {
        let d = self.ema.decay_at(self.updates);
        for (s, v) in self.moving_mean.iter_mut().zip(&m.mean) {
            *s = d * *s + (1.0 - d) * v;
        }
        for (s, v) in self.moving_var.iter_mut().zip(&m.var) {
            *s = d * *s + (1.0 - d) * v;
        }
        self.updates += 1;
    }

    /// The moving statistics rounded to f32, as they are exported: `(mean, variance)`.
    pub fn stats_f32(&self) -> (Vec<f32>, Vec<f32>) {
        (
            self.moving_mean.iter().map(|&v| v as f32).collect(),
            self.moving_var.iter().map(|&v| v as f32).collect(),
        )
    }

    /// BN in inference mode with the moving statistics, in place on `[rows, features]` values.
    ///
    /// Computes `gamma * (x - mean) / sqrt(var + eps) + beta` in f32 from the f32-rounded
    /// statistics, the same expression as the engine's unfolded path, so that the trainer's
    /// evaluation and the exported file agree.
    pub fn forward_infer(&self, v: &mut [f32]) {
        let (mean, var) = self.stats_f32();
        let denom: Vec<f32> = var
            .iter()
            .map(|&v| ((v as f64 + self.eps).sqrt()) as f32)
            .collect();
        let f = self.features();
        for row in v.chunks_exact_mut(f) {
            for j in 0..f {
                row[j] = self.gamma.value[j] * (row[j] - mean[j]) / denom[j] + self.beta.value[j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_constant_decay_matches_formula() {
        let mut bn = BatchNorm::new(1, 1e-3, Ema::new(0.5));
        let m = |v: f64| BatchMoments {
            mean: vec![v],
            var: vec![2.0 * v],
            inv_std: vec![1.0],
        };
        bn.update_ema(&m(4.0));
        // 0.5 * 0 + 0.5 * 4 = 2; variance 0.5 * 0 + 0.5 * 8 = 4.
        assert_eq!(bn.moving_mean, vec![2.0]);
        assert_eq!(bn.moving_var, vec![4.0]);
        bn.update_ema(&m(2.0));
        // 0.5 * 2 + 0.5 * 2 = 2; 0.5 * 4 + 0.5 * 4 = 4.
        assert_eq!(bn.moving_mean, vec![2.0]);
        assert_eq!(bn.updates, 2);
    }

    #[test]
    fn num_updates_schedule_caps_the_decay_early() {
        let ema = Ema {
            decay: 0.99,
            num_updates: true,
        };
        assert_eq!(ema.decay_at(0), 0.1);
        assert_eq!(ema.decay_at(10), 11.0 / 20.0);
        // (1 + n) / (10 + n) reaches 0.99 at n = 890.
        assert_eq!(ema.decay_at(1000), 0.99);
        assert_eq!(Ema::new(0.99).decay_at(0), 0.99);
    }
}
