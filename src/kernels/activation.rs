//! Activation functions in f32, elementwise over slices, and the row-wise softmax.
//!
//! The functions run as vector code (`vmath.rs`, generic over the vector trait of the
//! micro-kernel) on an instruction-set path: the one [`KernelChoice::Auto`] resolves to for
//! [`apply`] and [`softmax_rows`], a chosen one for [`apply_with`] and [`softmax_rows_with`] (a
//! plan passes its own). Each element gets the same function whatever its position in the slice
//! (the tail is one partial vector, not a scalar loop), so the fused epilogue of a dense layer and
//! a separate pass give the same bits on a given path. Accuracy: `docs/PERFORMANCE.md`, section
//! "Activation accuracy".
//!
//! [`apply_scalar`] and [`softmax_rows_scalar`] are the scalar forms (the standard library's and
//! libm's f32 functions, one element at a time), kept as the baseline of the benchmarks.

use crate::format::Activation;

use super::gemm::Family;
use super::isa::{Isa, KernelChoice};

/// sqrt(2 / pi), for the tanh form of GELU.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// Apply an elementwise activation in place, on the path [`KernelChoice::Auto`] resolves to.
/// Softmax is row-wise and is not handled here (see [`softmax_rows`]); passing it is a bug in the
/// caller and leaves the values unchanged.
pub fn apply(act: Activation, v: &mut [f32]) {
    apply_with(KernelChoice::Auto, act, v);
}

/// [`apply`] on the path `choice` resolves to.
pub fn apply_with(choice: KernelChoice, act: Activation, v: &mut [f32]) {
    apply_resolved(choice.resolve(), act, v);
}

/// [`apply`] on `isa`, which must come from [`KernelChoice::resolve`] (so the CPU supports it).
pub(crate) fn apply_resolved(isa: Isa, act: Activation, v: &mut [f32]) {
    let fam = Family::of(isa);
    debug_assert!(fam.isa.is_supported());
    // SAFETY: `isa` was resolved, so the CPU supports the family's instruction set.
    unsafe { (fam.act)(act, v) }
}

/// Softmax over each row of `width` values, in place, with the row maximum subtracted first so
/// that `exp` cannot overflow, on the path [`KernelChoice::Auto`] resolves to. A NaN in a row
/// makes the whole row NaN (through the sum).
pub fn softmax_rows(v: &mut [f32], width: usize) {
    softmax_rows_with(KernelChoice::Auto, v, width);
}

/// [`softmax_rows`] on the path `choice` resolves to.
pub fn softmax_rows_with(choice: KernelChoice, v: &mut [f32], width: usize) {
    let fam = Family::of(choice.resolve());
    // SAFETY: a resolved path is supported by the CPU.
    unsafe { (fam.softmax)(v, width) }
}

/// `e^x` in place on the path `choice` resolves to: the exponential of [`softmax_rows`], exposed
/// so that its accuracy can be measured (`tests/vmath.rs`).
pub fn exp_with(choice: KernelChoice, v: &mut [f32]) {
    let fam = Family::of(choice.resolve());
    // SAFETY: a resolved path is supported by the CPU.
    unsafe { (fam.exp)(v) }
}

/// The scalar forms, one element at a time through `f32::tanh`, `f32::exp` and `libm::erff`:
/// what [`apply`] ran before the vector code, kept as the benchmarks' baseline.
pub fn apply_scalar(act: Activation, v: &mut [f32]) {
    match act {
        Activation::Identity | Activation::Softmax => {}
        Activation::Relu => v.iter_mut().for_each(|x| {
            if *x < 0.0 {
                *x = 0.0
            }
        }),
        Activation::LeakyRelu { alpha } => v.iter_mut().for_each(|x| {
            if *x < 0.0 {
                *x *= alpha
            }
        }),
        Activation::Tanh => v.iter_mut().for_each(|x| *x = x.tanh()),
        Activation::Sigmoid => v.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp())),
        Activation::GeluErf => v
            .iter_mut()
            .for_each(|x| *x = 0.5 * *x * (1.0 + libm::erff(*x * std::f32::consts::FRAC_1_SQRT_2))),
        Activation::GeluTanh => v.iter_mut().for_each(|x| {
            let u = SQRT_2_OVER_PI * (*x + 0.044_715 * *x * *x * *x);
            *x = 0.5 * *x * (1.0 + u.tanh())
        }),
    }
}

/// The scalar softmax (`f32::exp` per element), the benchmarks' baseline.
pub fn softmax_rows_scalar(v: &mut [f32], width: usize) {
    for row in v.chunks_exact_mut(width) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
}
