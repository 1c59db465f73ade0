//! The portable path: `wide::f32x8`, whose instructions are fixed when bnfold is compiled (SSE2 on
//! a default x86-64 build, NEON on aarch64, scalar elsewhere). Runs on every target; the fallback
//! when no runtime-detected path is supported.

use crate::activation::Activation;
use crate::kernels::elem::WeightElem;
use crate::kernels::gemm::{Family, TileArgs, micro};
use crate::kernels::gemv::RowArgs;
use crate::kernels::isa::Isa;
use crate::kernels::simd::{Simd, partial_to_array};
use crate::kernels::vmath;

/// The portable vector: `wide::f32x8`, whose instructions are chosen at compile time.
#[derive(Clone, Copy)]
pub(crate) struct Portable(wide::f32x8);

impl Simd for Portable {
    const LANES: usize = 8;
    const REGISTERS: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable(wide::f32x8::ZERO)
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Portable(wide::f32x8::splat(x))
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> Self {
        // SAFETY: trait contract.
        Portable(wide::f32x8::splat(unsafe { *p }))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: trait contract (valid for eight reads; `read_unaligned` has no alignment need).
        Portable(wide::f32x8::from(unsafe {
            (p as *const [f32; 8]).read_unaligned()
        }))
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> Self {
        // SAFETY: trait contract.
        Portable(wide::f32x8::from(unsafe { partial_to_array::<8>(p, n) }))
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> Self {
        // SAFETY: trait contract (eight u16 at `p`; `read_unaligned` has no alignment need).
        let h: [half::f16; 8] = bytemuck::cast(unsafe { (p as *const [u16; 8]).read_unaligned() });
        let mut out = [0.0f32; 8];
        // Through `half` (F16C when the CPU has it, else its exact software conversion).
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(&h[..], &mut out);
        Portable(wide::f32x8::from(out))
    }
    #[inline(always)]
    unsafe fn load_bf16_pair(p: *const u16) -> (Self, Self) {
        // SAFETY: trait contract (sixteen u16 at `p`).
        let h = unsafe { (p as *const [u16; 16]).read_unaligned() };
        // Lane `l`'s pair is u16 `2l + 1` (first depth) and `2l` (second), whatever the byte order.
        let widen = |i: usize| f32::from_bits(u32::from(h[i]) << 16);
        let first: [f32; 8] = std::array::from_fn(|l| widen(2 * l + 1));
        let second: [f32; 8] = std::array::from_fn(|l| widen(2 * l));
        (
            Portable(wide::f32x8::from(first)),
            Portable(wide::f32x8::from(second)),
        )
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: trait contract.
        unsafe { (p as *mut [f32; 8]).write_unaligned(self.0.to_array()) }
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize) {
        let a = self.0.to_array();
        // SAFETY: trait contract: `p` valid for `n < 8` writes.
        unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), p, n) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        Portable(a.0.mul_add(b.0, c.0))
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        Portable(a.0 + b.0)
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        Portable(a.0 - b.0)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        Portable(a.0 * b.0)
    }
    #[inline(always)]
    unsafe fn div(a: Self, b: Self) -> Self {
        Portable(a.0 / b.0)
    }
    #[inline(always)]
    unsafe fn where_negative_mul(self, slope: Self) -> Self {
        let neg = self.0.simd_lt(wide::f32x8::ZERO);
        Portable(neg.bitselect(self.0 * slope.0, self.0))
    }
    #[inline(always)]
    unsafe fn relu(self) -> Self {
        let neg = self.0.simd_lt(wide::f32x8::ZERO);
        Portable(neg.bitselect(wide::f32x8::ZERO, self.0))
    }
    /// All bits set in the lanes where the comparison holds (`wide`'s mask form).
    type Mask = wide::f32x8;
    #[inline(always)]
    unsafe fn lt(a: Self, b: Self) -> wide::f32x8 {
        a.0.simd_lt(b.0)
    }
    #[inline(always)]
    unsafe fn select(m: wide::f32x8, t: Self, f: Self) -> Self {
        Portable(m.bitselect(t.0, f.0))
    }
    #[inline(always)]
    unsafe fn max(a: Self, b: Self) -> Self {
        // Written as the compare and select of the trait's rule (`wide::max` treats NaN otherwise).
        Portable(b.0.simd_lt(a.0).bitselect(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn min(a: Self, b: Self) -> Self {
        Portable(a.0.simd_lt(b.0).bitselect(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        Portable(self.0.abs())
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        Portable(self.0.round())
    }
    #[inline(always)]
    unsafe fn pow2i(n: Self) -> Self {
        let e = n.0.fast_round_int() + wide::i32x8::splat(127);
        Portable(bytemuck::cast::<wide::i32x8, wide::f32x8>(e << 23))
    }
    #[inline(always)]
    unsafe fn act_tile(a: Activation, v: &mut [Self]) {
        // SAFETY: the portable vector runs on any CPU.
        unsafe { act_tile(a, v) }
    }
}

/// Portable tiles.
///
/// # Safety
/// As [`micro`] (any CPU).
unsafe fn tile<W: WeightElem, const MV: usize, const NR: usize, const P: bool>(
    t: &TileArgs<'_, W>,
) {
    // SAFETY: forwarded contract.
    unsafe { micro::<Portable, W, MV, NR, P>(t) }
}

/// Portable row kernel for narrow layers.
///
/// # Safety
/// As [`RowFn`](crate::kernels::gemv::RowFn); the CPU supports the ISA.
unsafe fn rows(t: &RowArgs<'_>) {
    // SAFETY: forwarded contract.
    unsafe { crate::kernels::gemv::rows::<Portable>(t) }
}

/// The micro-kernel epilogue's activation of a whole tile ([`Simd::act_tile`]), out of line.
///
/// # Safety
/// As [`act`].
#[inline(never)]
unsafe fn act_tile(a: Activation, v: &mut [Portable]) {
    // SAFETY: forwarded contract.
    unsafe { vmath::act_vecs::<Portable>(a, v) }
}
/// Elementwise activation entry point ([`vmath::apply_slice`] on `wide` vectors).
///
/// # Safety
/// None beyond the slice (any CPU); `unsafe` for the common entry-point type.
unsafe fn act(a: Activation, v: &mut [f32]) {
    // SAFETY: the portable vector runs on any CPU.
    unsafe { vmath::apply_slice::<Portable>(a, v) }
}

/// Softmax entry point ([`vmath::softmax_rows`] on `wide` vectors).
///
/// # Safety
/// As [`act`].
unsafe fn softmax(v: &mut [f32], width: usize) {
    // SAFETY: the portable vector runs on any CPU.
    unsafe { vmath::softmax_rows::<Portable>(v, width) }
}

/// `e^x` entry point ([`vmath::exp_slice`]).
///
/// # Safety
/// As [`act`].
unsafe fn exp(v: &mut [f32]) {
    // SAFETY: forwarded contract.
    unsafe { vmath::exp_slice::<Portable>(v) }
}

/// The portable tile shapes.
pub(crate) static FAMILY: Family =
    crate::kernels::gemm::family8!(Isa::Portable, tile, act, softmax, exp, rows);
