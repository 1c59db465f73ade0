//! The portable path: `wide::f32x8`, whose instructions are fixed when bnfold is compiled (SSE2 on
//! a default x86-64 build, NEON on aarch64, scalar elsewhere). Runs on every target; the fallback
//! when no runtime-detected path is supported.

use crate::kernels::gemm::{Family, TileArgs, micro};
use crate::kernels::gemv::RowArgs;
use crate::kernels::simd::{Simd, partial_to_array};

/// The portable vector: `wide::f32x8`, whose instructions are chosen at compile time.
#[derive(Clone, Copy)]
pub(crate) struct Portable(wide::f32x8);

impl Simd for Portable {
    const LANES: usize = 8;
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
}

/// Portable tiles.
///
/// # Safety
/// As [`micro`] (any CPU).
unsafe fn tile<const MV: usize, const NR: usize, const P: bool>(t: &TileArgs<'_>) {
    // SAFETY: forwarded contract.
    unsafe { micro::<Portable, MV, NR, P>(t) }
}

/// Portable row kernel for narrow layers.
///
/// # Safety
/// As [`RowFn`](crate::kernels::gemv::RowFn); the CPU supports the ISA.
unsafe fn rows(t: &RowArgs<'_>) {
    // SAFETY: forwarded contract.
    unsafe { crate::kernels::gemv::rows::<Portable>(t) }
}

/// The portable tile shapes.
pub(crate) static FAMILY: Family = crate::kernels::gemm::family8!(tile, rows);
