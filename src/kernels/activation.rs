//! Activation functions in f32, elementwise over slices, and the row-wise softmax.

use wide::f32x8;

use crate::format::Activation;

/// sqrt(2 / pi), for the tanh form of GELU.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// Apply an elementwise activation in place. Softmax is row-wise and is not handled here
/// (see [`softmax_rows`]); passing it is a bug in the caller and leaves the values unchanged.
pub fn apply(act: Activation, v: &mut [f32]) {
    match act {
        Activation::Identity | Activation::Softmax => {}
        // `x < 0` rather than `max`, so that NaN propagates (as in PyTorch); a select rather than
        // `x * 0`, which is NaN at -inf.
        Activation::Relu => lanes(
            v,
            |x| x.simd_lt(f32x8::ZERO).bitselect(f32x8::ZERO, x),
            |x| if x < 0.0 { 0.0 } else { x },
        ),
        Activation::LeakyRelu { alpha } => {
            let a = f32x8::splat(alpha);
            lanes(
                v,
                |x| x.simd_lt(f32x8::ZERO).bitselect(x * a, x),
                |x| if x < 0.0 { x * alpha } else { x },
            )
        }
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

/// `v[i] = f(v[i])` eight lanes at a time, `g` on the tail.
#[inline(always)]
fn lanes(v: &mut [f32], f: impl Fn(f32x8) -> f32x8, g: impl Fn(f32) -> f32) {
    let mut chunks = v.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut a = [0.0f32; 8];
        a.copy_from_slice(c);
        c.copy_from_slice(&f(f32x8::from(a)).to_array());
    }
    for x in chunks.into_remainder() {
        *x = g(*x);
    }
}

/// Softmax over each row of `width` values, in place, with the row maximum subtracted first so
/// that `exp` cannot overflow. A NaN in a row makes the whole row NaN (through the sum).
pub fn softmax_rows(v: &mut [f32], width: usize) {
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
