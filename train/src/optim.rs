//! Optimisers: plain SGD (the tutorial's) and Adam.

/// A trainable tensor and its gradient from the last backward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The values.
    pub value: Vec<f32>,
    /// The gradient of the loss with respect to `value`.
    pub grad: Vec<f32>,
}

impl Param {
    /// A parameter with the given values and a zero gradient.
    pub fn new(value: Vec<f32>) -> Self {
        let grad = vec![0.0; value.len()];
        Param { value, grad }
    }
}

/// Which optimiser, with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    /// `w -= lr * g` (TF's `GradientDescentOptimizer`).
    Sgd {
        /// Learning rate.
        lr: f32,
    },
    /// Adam (Kingma and Ba), with bias correction.
    Adam {
        /// Learning rate.
        lr: f32,
        /// Decay of the first-moment average.
        beta1: f32,
        /// Decay of the second-moment average.
        beta2: f32,
        /// Added to the root of the second moment.
        eps: f32,
    },
}

impl OptimizerKind {
    /// Adam with the usual defaults (0.9, 0.999, 1e-8) and learning rate `lr`.
    pub fn adam(lr: f32) -> Self {
        OptimizerKind::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// A short description for metadata, e.g. `sgd lr=0.001`.
    pub fn describe(&self) -> String {
        match self {
            OptimizerKind::Sgd { lr } => format!("sgd lr={lr}"),
            OptimizerKind::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => format!("adam lr={lr} beta1={beta1} beta2={beta2} eps={eps:e}"),
        }
    }
}

/// An optimiser with its per-parameter state.
#[derive(Debug, Clone)]
pub struct Optimizer {
    kind: OptimizerKind,
    /// Adam's first and second moments, one pair per parameter, created on the first step.
    moments: Vec<(Vec<f32>, Vec<f32>)>,
    steps: u64,
}

impl Optimizer {
    /// A fresh optimiser.
    pub fn new(kind: OptimizerKind) -> Self {
        Optimizer {
            kind,
            moments: Vec::new(),
            steps: 0,
        }
    }

    /// Its settings.
    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// Apply one update to every parameter from its gradient. `params` must come in the same order
    /// at every call (the network's order).
    pub fn step(&mut self, params: &mut [&mut Param]) {
        self.steps += 1;
        match self.kind {
            OptimizerKind::Sgd { lr } => {
                for p in params.iter_mut() {
                    for (w, g) in p.value.iter_mut().zip(&p.grad) {
                        *w -= lr * g;
                    }
                }
            }
            OptimizerKind::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                if self.moments.len() != params.len() {
                    self.moments = params
                        .iter()
                        .map(|p| (vec![0.0; p.value.len()], vec![0.0; p.value.len()]))
                        .collect();
                }
                let t = self.steps as i32;
                let c1 = 1.0 - beta1.powi(t);
                let c2 = 1.0 - beta2.powi(t);
                for (p, (m, v)) in params.iter_mut().zip(&mut self.moments) {
                    for (((w, g), m), v) in p.value.iter_mut().zip(&p.grad).zip(m).zip(v) {
                        *m = beta1 * *m + (1.0 - beta1) * g;
                        *v = beta2 * *v + (1.0 - beta2) * g * g;
                        *w -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_moves_against_the_gradient() {
        let mut p = Param::new(vec![1.0, -2.0]);
        p.grad = vec![10.0, -10.0];
        Optimizer::new(OptimizerKind::Sgd { lr: 0.1 }).step(&mut [&mut p]);
        assert_eq!(p.value, vec![0.0, -1.0]);
    }

    #[test]
    fn adam_first_step_is_lr_times_sign() {
        // With bias correction, m_hat = g and v_hat = g^2 on step 1, so the step is lr * g / |g|
        // (up to eps, 1e-8 against |g| = 4).
        let mut p = Param::new(vec![1.0, 1.0]);
        p.grad = vec![4.0, -4.0];
        Optimizer::new(OptimizerKind::adam(0.01)).step(&mut [&mut p]);
        assert!((p.value[0] - 0.99).abs() < 1e-6, "{:?}", p.value);
        assert!((p.value[1] - 1.01).abs() < 1e-6, "{:?}", p.value);
    }
}
