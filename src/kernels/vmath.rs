//! Vector math, written once over the [`Simd`] trait and instantiated per instruction set inside
//! its `#[target_feature]` entry points: `exp`, `tanh`, `sigmoid`, the normal CDF `phi` (the erf
//! of GELU) and both GELUs, and the slice and softmax loops built on them.
//!
//! Every function is `#[inline(always)]` so that it is compiled with the features of the entry
//! point it is inlined into (a micro-kernel tile or an elementwise pass), and every function has
//! the safety contract of the [`Simd`] methods it calls: *the CPU supports `V`*.
//!
//! Accuracy (measured against [`Activation::eval_f64`] over every f32 input of the useful range,
//! `tests/vmath.rs`, and the exhaustive sweep `examples/vmath_sweep.rs`) is stated in
//! `docs/PERFORMANCE.md`, section "Activation accuracy". Special values: NaN propagates through
//! every function; `exp(-inf) = 0`, `exp(+inf) = +inf`, `tanh(+-inf) = +-1`, `sigmoid(-inf) = 0`,
//! `sigmoid(+inf) = 1`, `gelu(+inf) = +inf`, `gelu(-inf) = -0` (the limit); results that
//! underflow are subnormal or zero, correctly scaled (no flush to zero).
//!
//! Constants: `exp` is Cephes' single-precision `expf` (S. L. Moshier, `expf.c`). The `tanh`
//! rational function and the normal CDF's two polynomials were fitted for bnfold against `mpmath`
//! at 30-40 digits (minimax in relative error: Loeb's iteration for the rational, Lawson's for the
//! polynomials, whose coefficients were rounded to f32 one at a time from the highest degree with
//! the rest refitted): see `TANH_P`, `PHI_A`, `PHI_G`.

use super::simd::{Simd, lanes};
use crate::activation::Activation;

/// `log2(e)`.
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` in two parts (Cephes): `LN2_HI` has 9 significant bits, so `n * LN2_HI` is exact for
/// every `|n| <= 2^15`; `LN2_HI + LN2_LO` is `ln 2` to about 2^-35.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -0.000_212_194_44;
/// Cephes `expf` polynomial: `exp(r) = 1 + r + r^2 P(r)` on `|r| <= ln(2) / 2` (lowest degree
/// first, as every table here).
const EXP_P: [f32; 6] = [
    0.5,
    0.166_666_66,
    0.041_665_796,
    0.008_333_452,
    0.001_398_199_9,
    0.000_198_756_91,
];
/// Inputs of `exp` are clamped to this range before scaling: `exp(-104)` is below half the
/// smallest subnormal (so it rounds to 0) and `exp(89)` is above `f32::MAX` (so it overflows to
/// `+inf` in the final product, not in an intermediate).
const EXP_LO: f32 = -104.0;
const EXP_HI: f32 = 89.0;

/// `tanh(x) = x P(x^2) / Q(x^2)` on `|x| <= TANH_CLAMP`: a rational minimax fit (degree 4 over
/// degree 4 in `x^2`, relative error 0.35 ulp in f64 and 0.72 ulp with the coefficients rounded to
/// f32; fitted for bnfold by Loeb's iteration against `mpmath`). Thirteen operations and one
/// division, against about fifty for the `exp` form `1 - 2/(e^{2x} + 1)`.
const TANH_P: [f32; 5] = [
    1.0,
    0.133_797_03,
    0.003_494_017_3,
    2.058_318_8e-5,
    1.331_864_9e-8,
];
const TANH_Q: [f32; 5] = [
    1.0,
    0.467_130_18,
    0.025_871_009,
    0.000_328_306_43,
    7.761_849_5e-7,
];
/// The end of the fitted range (`x^2` is clamped to its square): `tanh(x)` rounds to 1 in f32 from
/// 9.0109 on (`1 - tanh(x) < 2^-25`), and the rational function evaluated in f32 is at least 1
/// here on every path (with and without FMA), so the clamped result is exactly 1 from here on.
const TANH_CLAMP: f32 = 9.02;

/// `Phi(x) = 1/2 + x A(x^2)` for `|x| < PHI_SMALL`: minimax, relative error of `A` 0.58 ulp
/// after rounding the coefficients to f32 (lowest degree first).
const PHI_SMALL: f32 = 1.0;
const PHI_A: [f32; 6] = [
    0.398_942_3,
    -0.066_490_36,
    0.009_973_323,
    -0.001_186_329_9,
    0.000_113_486_33,
    -7.654_19e-6,
];
/// `Phi(-t) = exp(-t^2/2) G(v) / (t + 3)` for `t` in `[1, 15]`, `v = (11 t - 39) / (7 (t + 3))`
/// (the map of `s = (t - 3)/(t + 3)` onto `[-1, 1]`): minimax, relative error of `G` 0.21 ulp
/// after rounding the coefficients to f32.
const PHI_V: (f32, f32) = (1.571_428_5, -5.571_429);
const PHI_G: [f32; 9] = [
    0.688_208_9,
    -0.275_335_04,
    0.074_114_79,
    -0.009_975_013,
    -0.000_864_695_3,
    0.000_492_451_25,
    1.374_565_6e-5,
    -2.358_102_4e-5,
    -7.333_153e-7,
];
/// Inputs of the GELUs are clamped to `[-GELU_CLAMP, GELU_CLAMP]` inside (the result at -15 is
/// below half the smallest subnormal, at 15 `Phi` is 1 in f32), so that `-inf` gives `-0`.
const GELU_CLAMP: f32 = 15.0;
/// `2 sqrt(2/pi)` and `2 sqrt(2/pi) 0.044715`: GELU-tanh is `x sigmoid(x (A + B x^2))`.
const GELU_TANH_A: f32 = 1.595_769_2;
const GELU_TANH_B: f32 = 0.071_354_814;

/// `c[0] + x (c[1] + x (...))`.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
unsafe fn horner<V: Simd, const N: usize>(x: V, c: &[f32; N]) -> V {
    // SAFETY: the function contract.
    unsafe {
        let mut y = V::splat(c[N - 1]);
        for &k in c[..N - 1].iter().rev() {
            y = V::fma(y, x, V::splat(k));
        }
        y
    }
}

/// `x` clamped to `[lo, hi]`; a NaN `x` passes through (`max(lo, x)` and `min(hi, x)` return
/// their second operand where either is NaN, the trait's rule), and so does a zero's sign.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
unsafe fn clamp<V: Simd>(x: V, lo: f32, hi: f32) -> V {
    // SAFETY: the function contract.
    unsafe { V::min(V::splat(hi), V::max(V::splat(lo), x)) }
}

/// `exp(hi + lo)`, where `lo` is a small correction to `hi` (the rounding error of computing
/// it; zero when `hi` is exact). Full range: subnormal results are scaled in two steps, so they
/// are rounded once; large arguments clamp before any scaling, so only the last product
/// overflows.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
pub(crate) unsafe fn exp_hilo<V: Simd>(hi: V, lo: V) -> V {
    // SAFETY: the function contract.
    unsafe {
        let x = clamp(hi, EXP_LO, EXP_HI);
        // n in [-150, 128]; r = x - n ln 2 in [-ln2/2, ln2/2] (plus `lo`).
        let n = V::round(V::mul(x, V::splat(LOG2E)));
        let r = V::fma(n, V::splat(-LN2_HI), x);
        let r = V::fma(n, V::splat(-LN2_LO), r);
        let r = V::add(r, lo);
        let r2 = V::mul(r, r);
        let p = V::fma(horner(r, &EXP_P), r2, V::add(r, V::splat(1.0)));
        // 2^n as 2^n1 2^n2 with n1, n2 in [-75, 64]: both normal, so p 2^n1 is exact and the
        // single rounding (into the subnormal range, or to +inf) is the last product.
        let n1 = V::round(V::mul(n, V::splat(0.5)));
        let n2 = V::sub(n, n1);
        V::mul(V::mul(p, V::pow2i(n1)), V::pow2i(n2))
    }
}

/// `e^x`, full range (see [`exp_hilo`]).
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
pub(crate) unsafe fn exp<V: Simd>(x: V) -> V {
    // SAFETY: the function contract.
    unsafe { exp_hilo(x, V::zero()) }
}

/// `tanh(x)`: the rational function on `[-9.02, 9.02]` (odd, so `tanh(-0) = -0`, and exactly `x`
/// for tiny `x`), clamped to `[-1, 1]`; `+-1` exactly from `|x| = 9.02` on.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
pub(crate) unsafe fn tanh<V: Simd>(x: V) -> V {
    // SAFETY: the function contract.
    unsafe {
        // Only `x^2` is clamped (one operation where clamping `x` took two): beyond the clamp
        // `x P(c^2) / Q(c^2)` grows with `|x|` from `tanh(c)`'s rational value, at least 1, so the
        // result clamps to +-1 below (an infinite `x` gives +-inf there, a huge one +-inf or a
        // large finite value: both clamp). `min(hi, y)` passes a NaN `y` through, and so does
        // every step after.
        let y = V::min(V::splat(TANH_CLAMP * TANH_CLAMP), V::mul(x, x));
        let t = V::div(V::mul(x, horner(y, &TANH_P)), horner(y, &TANH_Q));
        // Rounded in f32, the rational function strays up to two ulps above 1 from |x| = 8 on;
        // clamping the result keeps |tanh| <= 1 and makes the end of the range +-1 exactly. Two
        // operations where comparing |x| with the end and selecting +-1 took five (a fifth of
        // the function's cost).
        clamp(t, -1.0, 1.0)
    }
}

/// `1 / (1 + e^-x)`, as `e / (1 + e)` for `x < 0` and `1 / (1 + e)` otherwise with
/// `e = e^-|x|` in `(0, 1]`: no overflow, and relative accuracy down to the subnormal results.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
pub(crate) unsafe fn sigmoid<V: Simd>(x: V) -> V {
    // SAFETY: the function contract.
    unsafe {
        let one = V::splat(1.0);
        let e = exp(V::sub(V::zero(), x.abs()));
        let num = V::select(V::lt(x, V::zero()), e, one);
        V::div(num, V::add(one, e))
    }
}

/// The standard normal CDF `Phi(x) = (1 + erf(x / sqrt 2)) / 2`, for `x` already clamped to
/// `[-15, 15]` (or NaN). `|x| < 1`: `1/2 + x A(x^2)`. Otherwise, with `t = |x|`, the upper tail
/// `Q = Phi(-t) = e^{-t^2/2} G(v) / (t + 3)` (the `erfc` split: the exponential factor carries the
/// fast decay, `G` is smooth), and `Phi(x)` is `Q` for `x < 0`, `1 - Q` for `x > 0`. The exponent
/// `-x^2/2` is passed to `exp` as an exact head and a small tail, so the rounding of `x^2` (a
/// relative error of `x^2 2^-24` in the result) does not reach the tail's relative accuracy.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
unsafe fn phi<V: Simd>(x: V) -> V {
    // SAFETY: the function contract.
    unsafe {
        let one = V::splat(1.0);
        let t = x.abs();
        let y = V::mul(x, x);
        let near = V::fma(x, horner(y, &PHI_A), V::splat(0.5));
        // x^2 = xh^2 + xl (x + xh) with xh the top 12 bits of x (Veltkamp's split, exact in
        // round-to-nearest, with or without FMA): xh^2 is exact, the rest is a small correction.
        let c = V::mul(x, V::splat(4097.0));
        let xh = V::sub(c, V::sub(c, x));
        let xl = V::sub(x, xh);
        let half = V::splat(-0.5);
        let e = exp_hilo(
            V::mul(V::mul(xh, xh), half),
            V::mul(V::mul(xl, V::add(x, xh)), half),
        );
        let r = V::div(one, V::add(t, V::splat(3.0)));
        let v = V::mul(V::fma(t, V::splat(PHI_V.0), V::splat(PHI_V.1)), r);
        let q = V::mul(V::mul(e, horner(v, &PHI_G)), r);
        let tail = V::select(V::lt(x, V::zero()), q, V::sub(one, q));
        V::select(V::lt(t, V::splat(PHI_SMALL)), near, tail)
    }
}

/// GELU, erf form: `x Phi(x)`.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
pub(crate) unsafe fn gelu_erf<V: Simd>(x: V) -> V {
    // SAFETY: the function contract.
    unsafe {
        // `xm` keeps +inf (times Phi = 1) and NaN; -inf becomes -15, whose product is -0.
        let xm = V::max(V::splat(-GELU_CLAMP), x);
        let xc = V::min(V::splat(GELU_CLAMP), xm);
        V::mul(xm, phi(xc))
    }
}

/// GELU, tanh form: `0.5 x (1 + tanh(u))` computed as `x sigmoid(2u)` (the same function, without
/// the cancellation of `1 + tanh(u)` for negative `x`), `2u = x (A + B x^2)`.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
pub(crate) unsafe fn gelu_tanh<V: Simd>(x: V) -> V {
    // SAFETY: the function contract.
    unsafe {
        let xm = V::max(V::splat(-GELU_CLAMP), x);
        let xc = V::min(V::splat(GELU_CLAMP), xm);
        let z = V::mul(xc, xc);
        let u2 = V::mul(xc, V::fma(z, V::splat(GELU_TANH_B), V::splat(GELU_TANH_A)));
        V::mul(xm, sigmoid(u2))
    }
}

/// An elementwise activation on each vector of `v` (the match outside the loop).
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
pub(crate) unsafe fn act_vecs<V: Simd>(a: Activation, v: &mut [V]) {
    /// `f` on every vector.
    ///
    /// # Safety
    /// The CPU supports `V`.
    #[inline(always)]
    unsafe fn each<V: Simd, F: VecOp<V>>(v: &mut [V], f: F) {
        for x in v.iter_mut() {
            // SAFETY: the function contract.
            *x = unsafe { f.call(*x) };
        }
    }
    // SAFETY: the function contract.
    unsafe {
        match a {
            Activation::Identity | Activation::Softmax => {}
            Activation::Relu => each(v, Relu),
            Activation::LeakyRelu { alpha } => each(v, Leaky(alpha)),
            Activation::Tanh => each(v, Tanh),
            Activation::Sigmoid => each(v, Sigmoid),
            Activation::GeluErf => each(v, GeluErf),
            Activation::GeluTanh => each(v, GeluTanh),
        }
    }
}

/// A function of one vector, as a type: the loops below are generic over it rather than over a
/// closure, because a closure is a function of its own that does not get the `#[target_feature]`
/// of the entry point it is written in (its intrinsics would then be calls, not instructions).
pub(crate) trait VecOp<V: Simd>: Copy {
    /// The function.
    ///
    /// # Safety
    /// The CPU supports `V`.
    unsafe fn call(self, x: V) -> V;
}

/// One op per activation and for `exp`; `Scale` multiplies by a vector.
#[derive(Clone, Copy)]
struct Tanh;
#[derive(Clone, Copy)]
struct Sigmoid;
#[derive(Clone, Copy)]
struct GeluErf;
#[derive(Clone, Copy)]
struct GeluTanh;
#[derive(Clone, Copy)]
struct Relu;
#[derive(Clone, Copy)]
struct Leaky(f32);
#[derive(Clone, Copy)]
struct Exp;
#[derive(Clone, Copy)]
struct Scale<V>(V);

/// Implements `VecOp` for an op type as a call of the expression.
macro_rules! vec_op {
    ($t:ty, |$s:ident, $x:ident| $e:expr) => {
        impl<V: Simd> VecOp<V> for $t {
            #[inline(always)]
            unsafe fn call(self, $x: V) -> V {
                let $s = self;
                // SAFETY: the trait contract (the CPU supports `V`).
                unsafe { $e }
            }
        }
    };
}
vec_op!(Tanh, |_s, x| tanh(x));
vec_op!(Sigmoid, |_s, x| sigmoid(x));
vec_op!(GeluErf, |_s, x| gelu_erf(x));
vec_op!(GeluTanh, |_s, x| gelu_tanh(x));
vec_op!(Relu, |_s, x| x.relu());
vec_op!(Leaky, |s, x| x.where_negative_mul(V::splat(s.0)));
vec_op!(Exp, |_s, x| exp(x));

impl<V: Simd> VecOp<V> for Scale<V> {
    #[inline(always)]
    unsafe fn call(self, x: V) -> V {
        // SAFETY: the trait contract.
        unsafe { V::mul(x, self.0) }
    }
}

/// `v[i] = f(v[i])`, whole vectors then one partial vector for the tail (so every element gets
/// the same function, whatever its position).
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
unsafe fn map<V: Simd, F: VecOp<V>>(v: &mut [f32], f: F) {
    let (l, n, p) = (V::LANES, v.len(), v.as_mut_ptr());
    let mut i = 0;
    // SAFETY: `i + l <= n` for the whole vectors, `n - i < l` values for the tail: all inside `v`.
    unsafe {
        // Four independent vectors per step: one function is a chain of ~30 dependent operations,
        // longer than the out-of-order window can overlap from consecutive iterations alone.
        while i + 4 * l <= n {
            let y0 = f.call(V::load(p.add(i)));
            let y1 = f.call(V::load(p.add(i + l)));
            let y2 = f.call(V::load(p.add(i + 2 * l)));
            let y3 = f.call(V::load(p.add(i + 3 * l)));
            y0.store(p.add(i));
            y1.store(p.add(i + l));
            y2.store(p.add(i + 2 * l));
            y3.store(p.add(i + 3 * l));
            i += 4 * l;
        }
        while i + l <= n {
            f.call(V::load(p.add(i))).store(p.add(i));
            i += l;
        }
        if i < n {
            f.call(V::load_partial(p.add(i), n - i))
                .store_partial(p.add(i), n - i);
        }
    }
}

/// An elementwise activation over a slice, in place (the body of each ISA's entry point).
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
pub(crate) unsafe fn apply_slice<V: Simd>(a: Activation, v: &mut [f32]) {
    // One loop per function, so the match is outside the loop.
    // SAFETY: the function contract, for every call below.
    unsafe {
        match a {
            Activation::Identity | Activation::Softmax => {}
            Activation::Relu => map::<V, _>(v, Relu),
            Activation::LeakyRelu { alpha } => map::<V, _>(v, Leaky(alpha)),
            Activation::Tanh => map::<V, _>(v, Tanh),
            Activation::Sigmoid => map::<V, _>(v, Sigmoid),
            Activation::GeluErf => map::<V, _>(v, GeluErf),
            Activation::GeluTanh => map::<V, _>(v, GeluTanh),
        }
    }
}

/// `e^x` over a slice, in place (softmax's exponential, exposed for measurement).
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
pub(crate) unsafe fn exp_slice<V: Simd>(v: &mut [f32]) {
    // SAFETY: the function contract.
    unsafe { map::<V, _>(v, Exp) }
}

/// Softmax over each row of `width` values, in place: the row maximum (vector `max`), `exp` of
/// the differences and their sum (vector), then a multiply by the reciprocal of the sum. A NaN
/// in a row makes the whole row NaN (through its `exp` and the sum), as the scalar form does.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
pub(crate) unsafe fn softmax_rows<V: Simd>(v: &mut [f32], width: usize) {
    let l = V::LANES;
    if width == 0 {
        return;
    }
    for row in v.chunks_exact_mut(width) {
        let p = row.as_mut_ptr();
        let whole = width / l * l;
        // SAFETY: whole vectors at `i < whole`, the tail `whole..width`: all inside `row`; the
        // CPU supports `V` (the function contract).
        unsafe {
            let mut m = V::splat(f32::NEG_INFINITY);
            let mut i = 0;
            while i < whole {
                m = V::max(V::load(p.add(i)), m);
                i += l;
            }
            let max = lanes(m)[..l]
                .iter()
                .chain(&row[whole..])
                .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mx = V::splat(max);
            let mut s = V::zero();
            let mut i = 0;
            while i < whole {
                let e = exp(V::sub(V::load(p.add(i)), mx));
                e.store(p.add(i));
                s = V::add(s, e);
                i += l;
            }
            if whole < width {
                let n = width - whole;
                exp(V::sub(V::load_partial(p.add(whole), n), mx)).store_partial(p.add(whole), n);
            }
            let sum: f32 = lanes(s)[..l].iter().sum::<f32>() + row[whole..].iter().sum::<f32>();
            let inv = V::splat(1.0 / sum);
            map::<V, _>(row, Scale(inv));
        }
    }
}
