//! Verification: the folded plan, the unfolded plan and the f64 reference, compared layer by layer.
//!
//! This is what `bnfold verify` prints and what the tests assert, with one error measure
//! ([`ErrorStats`]) and one pass rule ([`VerifyReport::passed`]):
//!
//! - every layer's output of the unfolded path (dense, then BN with the EMA statistics, then the
//!   activation, each its own step) is compared with the f64 reference's output of that layer;
//! - every step of the folded path is compared with the reference's output of the last layer the
//!   step covers (a dense layer and the BN folded into it are one step);
//! - the criterion is the **normwise relative error**, `max |got - want| / max |want|` over the
//!   whole layer output, and the check passes when the worst of them is at most the tolerance.
//!
//! Normwise rather than elementwise, because an output near zero (after a ReLU, or a sum that
//! cancels) carries the absolute rounding error of its terms, which is small against the layer's
//! scale but not against the value itself. The default tolerance, [`DEFAULT_TOLERANCE`] = 1e-4,
//! is about 1700 f32 units in the last place: each folded weight is rounded once (2^-24 relative)
//! and a dot product of `k` terms adds up to `k` roundings, usually far fewer (they partly
//! cancel), so an error above it means a wrong result, not rounding.
//!
//! The comparison streams: it holds one layer's output of each path at a time (two buffers of
//! `batch` rows of the widest layer per plan, and the reference's current layer in f64), never
//! every layer's output.

use crate::error::{InputError, Result};
use crate::format::DType;
use crate::kernels::KernelChoice;
use crate::model::Model;
use crate::plan::{Mode, Options, Plan};
use crate::reference;

/// The default tolerance on the normwise relative error (see the module documentation).
pub const DEFAULT_TOLERANCE: f64 = 1e-4;

/// Absolute differences below this (f32's smallest normal value, 2^-126) are not errors: an f32
/// result cannot represent a reference value there with any relative precision (a deep network of
/// GELUs can drive an f64 reference to 1e-300, which is exactly 0 in f32).
pub const UNDERFLOW: f64 = f32::MIN_POSITIVE as f64;

/// How far one output is from another.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ErrorStats {
    /// Largest `|got - want|`.
    pub max_abs: f64,
    /// Largest `|got - want| / max(|want|, 1e-6)` (elementwise; shown, not used to pass or fail).
    pub max_rel: f64,
    /// `max_abs / max |want|`: the criterion.
    pub normwise: f64,
}

impl ErrorStats {
    /// The errors of `got` against `want` (equal lengths; extra values of the longer are
    /// ignored).
    ///
    /// Two values that are the same IEEE special (both NaN, or the same infinity) agree; any
    /// other NaN or infinite difference counts as an infinite error, so that it always fails.
    pub fn measure<T: Copy + Into<f64>>(got: &[f32], want: &[T]) -> ErrorStats {
        let mut s = ErrorStats::default();
        let mut scale = 0f64;
        for (&g, &w) in got.iter().zip(want) {
            let (g, w) = (f64::from(g), w.into());
            let same_special = (g.is_nan() && w.is_nan()) || (g.is_infinite() && g == w);
            let d = if same_special {
                0.0
            } else {
                let d = (g - w).abs();
                if !d.is_finite() {
                    f64::INFINITY
                } else if d < UNDERFLOW {
                    // Below f32's normal range an f32 result cannot carry relative precision:
                    // a reference value of 1e-300 *is* 0 in f32. Not an error.
                    0.0
                } else {
                    d
                }
            };
            s.max_abs = s.max_abs.max(d);
            // Elementwise relative error, with a floor so that exact zeros (ReLU) do not divide
            // by 0.
            s.max_rel = s.max_rel.max(d / w.abs().max(1e-6));
            if w.is_finite() {
                scale = scale.max(w.abs());
            }
        }
        s.normwise = if s.max_abs == 0.0 {
            0.0
        } else {
            s.max_abs / scale.max(f64::MIN_POSITIVE)
        };
        s
    }
}

/// The tolerance [`verify`] applies when none is given, for plans whose dense weights are packed
/// as `weights`, on a network of `dense_layers` dense layers.
///
/// - f32: [`DEFAULT_TOLERANCE`] (1e-4), see the module documentation.
/// - f16 and bf16: each packed weight carries a relative rounding error of up to the type's unit
///   roundoff `u` (2^-11 for f16, 2^-8 for bf16), so a dot product is off by up to `u` times
///   `sum |w x|`, which is a small multiple of the output's scale in trained and synthetic networks
///   alike (4 covers the shipped models and the test networks with margin), and the errors of
///   successive layers add up: `4 u` per dense layer, and never below 1e-4.
pub fn default_tolerance(weights: DType, dense_layers: usize) -> f64 {
    let u = match weights {
        DType::F32 => return DEFAULT_TOLERANCE,
        DType::F16 => 2f64.powi(-11),
        DType::BF16 => 2f64.powi(-8),
    };
    (4.0 * u * dense_layers.max(1) as f64).max(DEFAULT_TOLERANCE)
}

/// Settings of [`verify`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// Largest accepted normwise relative error of any layer (default: [`default_tolerance`] of
    /// the weight type and the model, 1e-4 for f32 weights).
    pub tolerance: Option<f64>,
    /// The kernel path both plans use.
    pub kernel: KernelChoice,
    /// Precision of both plans' packed dense weights (default f32).
    pub weights: DType,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            tolerance: None,
            kernel: KernelChoice::Auto,
            weights: DType::F32,
        }
    }
}

impl VerifyOptions {
    /// These options with another tolerance.
    pub fn with_tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = Some(tolerance);
        self
    }

    /// These options with both plans' dense weights packed as `weights`.
    pub fn with_weights(mut self, weights: DType) -> Self {
        self.weights = weights;
        self
    }

    /// These options with another kernel path.
    pub fn with_kernel(mut self, kernel: KernelChoice) -> Self {
        self.kernel = kernel;
        self
    }
}

/// One layer's comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    /// Position in the network.
    pub index: usize,
    /// The layer's name in the file.
    pub name: String,
    /// `Dense`, `BatchNorm` or `Activation`.
    pub kind_name: &'static str,
    /// The folded path against the reference, when a folded step ends at this layer (`None` for
    /// a layer folded into the step after it, such as a BN folded into the next dense layer, or a
    /// dense layer whose BN follows).
    pub folded: Option<ErrorStats>,
    /// The unfolded path against the reference.
    pub unfolded: ErrorStats,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    /// Rows compared.
    pub rows: usize,
    /// The tolerance applied.
    pub tolerance: f64,
    /// Per layer, in network order.
    pub layers: Vec<LayerReport>,
    /// The network's output: folded against the reference.
    pub folded_vs_reference: ErrorStats,
    /// The network's output: unfolded against the reference.
    pub unfolded_vs_reference: ErrorStats,
    /// The network's output: folded against unfolded.
    pub folded_vs_unfolded: ErrorStats,
    /// The largest normwise error of any layer, folded or unfolded.
    pub worst: f64,
}

impl VerifyReport {
    /// Whether every layer of both paths is within the tolerance.
    pub fn passed(&self) -> bool {
        self.worst <= self.tolerance
    }
}

/// The bytes [`verify`] holds per input row, at most: the input (f32), the reference's current
/// and next layer (f64), and two buffers per plan (f32) of the widest layer. A caller with a
/// memory budget divides it by this to choose a batch (as `bnfold verify` does).
pub fn bytes_per_row(model: &Model) -> u64 {
    let widest = model.max_width() as u64;
    let input = model.input_features() as u64;
    (4 * input).saturating_add(widest.saturating_mul(2 * 8 + 2 * 2 * 4))
}

/// Compile `model` folded and unfolded and compare both with the f64 reference on `batch` rows of
/// `input` (`[batch, input_features]` row-major), layer by layer.
///
/// Errors: the model does not compile (see [`Model::compile`]), the input has the wrong length,
/// or the tolerance is not a positive number.
pub fn verify(
    model: &Model,
    input: &[f32],
    batch: usize,
    options: &VerifyOptions,
) -> Result<VerifyReport> {
    let dense_layers = model
        .layers()
        .iter()
        .filter(|l| matches!(l.kind, crate::format::LayerKind::Dense { .. }))
        .count();
    let tolerance = options
        .tolerance
        .unwrap_or_else(|| default_tolerance(options.weights, dense_layers));
    if !(tolerance.is_finite() && tolerance > 0.0) {
        return Err(InputError::Tolerance(tolerance).into());
    }
    let compile = |mode| {
        Plan::compile(
            model,
            &Options::default()
                .with_mode(mode)
                .with_kernel(options.kernel)
                .with_weights(options.weights),
        )
    };
    let folded_plan = compile(Mode::Folded)?;
    let unfolded_plan = compile(Mode::Unfolded)?;
    let mut folded = folded_plan.trace(input, batch)?;
    let mut unfolded = unfolded_plan.trace(input, batch)?;

    let mut x: Vec<f64> = Vec::new();
    x.try_reserve_exact(input.len())
        .map_err(|_| InputError::OutOfMemory {
            what: "f64 reference input",
            batch,
            bytes: input.len().saturating_mul(8),
        })?;
    x.extend(input.iter().map(|&v| f64::from(v)));
    let n = model.layers().len();
    let mut layers = Vec::with_capacity(n);
    let mut worst = 0f64;
    let mut overall = (
        ErrorStats::default(),
        ErrorStats::default(),
        ErrorStats::default(),
    );
    for (index, layer) in model.layers().iter().enumerate() {
        x = reference::forward_layer(model, index, x, batch)?;
        let (u_layer, u) = unfolded
            .step()
            .expect("the unfolded plan has one step per layer");
        debug_assert_eq!(u_layer, index);
        let u_err = ErrorStats::measure(u, &x);
        worst = worst.max(u_err.normwise);
        let mut f_err = None;
        if folded.next_layer() == Some(index)
            && let Some((_, f)) = folded.step()
        {
            let e = ErrorStats::measure(f, &x);
            worst = worst.max(e.normwise);
            f_err = Some(e);
            if index + 1 == n {
                overall = (e, u_err, ErrorStats::measure(f, u));
            }
        }
        layers.push(LayerReport {
            index,
            name: layer.name.clone(),
            kind_name: layer.kind.kind_name(),
            folded: f_err,
            unfolded: u_err,
        });
    }
    Ok(VerifyReport {
        rows: batch,
        tolerance,
        layers,
        folded_vs_reference: overall.0,
        unfolded_vs_reference: overall.1,
        folded_vs_unfolded: overall.2,
        worst,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_stats_are_normwise_and_specials_agree_only_with_themselves() {
        let e = ErrorStats::measure(&[1.0f32, 0.0, -2.0], &[1.0f64, 1e-3, -4.0]);
        assert_eq!(e.max_abs, 2.0);
        assert_eq!(e.normwise, 0.5);
        let same = ErrorStats::measure(&[f32::NAN, f32::INFINITY], &[f64::NAN, f64::INFINITY]);
        assert_eq!(same.normwise, 0.0);
        let nan = ErrorStats::measure(&[f32::NAN, 1.0], &[0.0f64, 1.0]);
        assert_eq!(nan.normwise, f64::INFINITY);
        let inf = ErrorStats::measure(&[f32::INFINITY], &[f64::NEG_INFINITY]);
        assert_eq!(inf.normwise, f64::INFINITY);
        // An f64 reference below f32's normal range against an f32 zero: not an error.
        let tiny = ErrorStats::measure(&[0.0f32, 0.0], &[1e-300f64, -3e-39]);
        assert_eq!(tiny.normwise, 0.0);
        // But the same difference on a layer of normal scale is counted.
        let big = ErrorStats::measure(&[0.0f32, 1.0], &[1e-30f64, 1.0]);
        assert_eq!(big.max_abs, 1e-30);
    }

    #[test]
    fn a_synthetic_network_passes_and_a_zero_tolerance_is_refused() {
        use crate::synth::{Layer, Stats, network};
        use crate::{Activation, DType};
        let bytes = network(
            6,
            &[
                Layer::Bn,
                Layer::Dense(9),
                Layer::Bn,
                Layer::Act(Activation::Tanh),
                Layer::Dense(3),
            ],
            5,
            DType::F32,
            Stats::default(),
        )
        .unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        let x = crate::synth::input(4, 6, 1.0, 9);
        let r = verify(&model, &x, 4, &VerifyOptions::default()).unwrap();
        assert!(r.passed(), "{r:?}");
        assert_eq!(r.layers.len(), 5);
        // The input BN folds forward and the hidden BN backward into the first dense layer, whose
        // epilogue also applies the tanh: its one step ends at layer 3.
        let ends: Vec<bool> = r.layers.iter().map(|l| l.folded.is_some()).collect();
        assert_eq!(ends, [false, false, false, true, true]);
        let bad = VerifyOptions::default().with_tolerance(0.0);
        assert!(verify(&model, &x, 4, &bad).is_err());
    }
}
