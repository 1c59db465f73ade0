//! The vector trait every instruction set implements (in its own file under `arch/`), so that the
//! micro-kernel and the epilogue are written once (in `gemm.rs`) and instantiated per ISA.
//!
//! The x86 implementations call `std::arch` intrinsics from `#[inline(always)]` methods that have
//! no `#[target_feature]` of their own: they are only ever inlined into a function that has the
//! feature enabled (the `#[target_feature]` entry point in each ISA's file under `arch/`), and are only called after
//! runtime detection said the feature is present. That is the safety contract of every method
//! here: *the caller runs on a CPU with the vector type's features*, plus the pointer contracts
//! stated per method.

/// A SIMD vector of `LANES` f32.
///
/// # Safety
/// Every method is `unsafe`: callers must have checked that the CPU supports the type's
/// instruction set (see [`super::Isa::is_supported`]) and meet the pointer contract of the method.
pub(crate) trait Simd: Copy {
    /// f32 lanes in one vector.
    const LANES: usize;
    /// Vector registers the ISA has (the micro-kernel picks its loop order by it).
    const REGISTERS: usize;
    /// All lanes zero.
    unsafe fn zero() -> Self;
    /// All lanes `x`.
    unsafe fn splat(x: f32) -> Self;
    /// All lanes `*p`. `p` must be valid for one f32 read.
    unsafe fn broadcast(p: *const f32) -> Self;
    /// `LANES` values from `p` (any alignment). `p` must be valid for `LANES` reads.
    unsafe fn load(p: *const f32) -> Self;
    /// The first `n < LANES` values from `p`, zeros above. `p` must be valid for `n` reads.
    unsafe fn load_partial(p: *const f32, n: usize) -> Self;
    /// `LANES` IEEE binary16 values (bit patterns) from `p`, widened to f32 (exactly: every f16
    /// is an f32). `p` must be valid for `LANES` u16 reads (any alignment). The weight loads of
    /// f16 panels (`elem.rs`).
    unsafe fn load_f16(p: *const u16) -> Self;
    /// A pair of bfloat16 depths, widened to f32 exactly: `p` holds `LANES` 32-bit words
    /// (`2 * LANES` u16, any alignment), lane `l`'s word holding the first depth's bf16 in its
    /// high half and the second's in its low half (u16 `2l + 1` and `2l`). One load, then one
    /// `and` (first) and one shift left by 16 (second). `p` must be valid for `2 * LANES` u16
    /// reads.
    unsafe fn load_bf16_pair(p: *const u16) -> (Self, Self);
    /// Store all lanes at `p` (any alignment). `p` must be valid for `LANES` writes.
    unsafe fn store(self, p: *mut f32);
    /// Store the first `n < LANES` lanes at `p`. `p` must be valid for `n` writes.
    unsafe fn store_partial(self, p: *mut f32, n: usize);
    /// `a * b + c` (fused where the ISA has FMA).
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    /// `a + b`.
    unsafe fn add(a: Self, b: Self) -> Self;
    /// `a - b`.
    unsafe fn sub(a: Self, b: Self) -> Self;
    /// `a * b`.
    unsafe fn mul(a: Self, b: Self) -> Self;
    /// `a / b`.
    unsafe fn div(a: Self, b: Self) -> Self;
    /// Lanes with `x < 0` replaced by `x * slope`; others (and NaN) unchanged (leaky ReLU).
    unsafe fn where_negative_mul(self, slope: Self) -> Self;
    /// Lanes with `x < 0` replaced by +0; others (NaN and -0 included) unchanged (ReLU): `0 > x ?
    /// 0 : x`, not a `max` that drops NaN, and not `x * 0`, which is NaN at `-inf`.
    unsafe fn relu(self) -> Self;

    // The primitives of the vector math in `vmath.rs` (exp, tanh, sigmoid, the normal CDF).

    /// A lane mask, the result of a comparison.
    type Mask: Copy;
    /// Lanes where `a < b` (ordered: false where either is NaN).
    unsafe fn lt(a: Self, b: Self) -> Self::Mask;
    /// `t` where `m` is set, else `f`.
    unsafe fn select(m: Self::Mask, t: Self, f: Self) -> Self;
    /// `a > b ? a : b` per lane (the x86 `max` rule): where either is NaN the result is `b`, so
    /// `max(lo, x)` clamps `x` from below and passes a NaN `x` through.
    unsafe fn max(a: Self, b: Self) -> Self;
    /// `a < b ? a : b` per lane: `min(hi, x)` clamps `x` from above and passes a NaN `x` through.
    unsafe fn min(a: Self, b: Self) -> Self;
    /// `|x|` (the sign bit cleared; NaN stays NaN).
    unsafe fn abs(self) -> Self;
    /// The nearest integer (ties to even on the x86 paths, away from zero on the portable one;
    /// callers only need an integer within 1/2 of `x`). NaN stays NaN; `|x|` below 2^23 only.
    unsafe fn round(self) -> Self;
    /// `2^n` for lanes holding integers `n` in `[-126, 127]` (built in the exponent field:
    /// `(n + 127) << 23`). Other values give unspecified (but no undefined) results.
    unsafe fn pow2i(n: Self) -> Self;

    /// An elementwise activation on every vector of `v` (`vmath::act_vecs`), as one call of a
    /// function of the ISA's file that is not inlined: the micro-kernel's epilogue applies
    /// tanh, sigmoid and the GELUs to a whole tile through it.
    unsafe fn act_tile(a: crate::activation::Activation, v: &mut [Self]);
}

/// The lanes of `x` in an array (the first `V::LANES` of 16 meaningful): for horizontal sums and
/// maxima, which every ISA does in scalar after its vector loop.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
pub(crate) unsafe fn lanes<V: Simd>(x: V) -> [f32; 16] {
    let mut buf = [0.0f32; 16];
    debug_assert!(V::LANES <= buf.len());
    // SAFETY: `buf` holds 16 >= LANES values (every ISA has at most 16 lanes); the CPU supports
    // `V` (caller).
    unsafe { x.store(buf.as_mut_ptr()) };
    buf
}

/// Copy `n < L` values through a stack buffer (the portable partial load).
#[inline(always)]
pub(crate) unsafe fn partial_to_array<const L: usize>(p: *const f32, n: usize) -> [f32; L] {
    let mut buf = [0.0f32; L];
    // SAFETY: the caller guarantees `p` valid for `n` reads; `n < L` fits `buf`.
    unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n.min(L)) };
    buf
}
