//! x86-64 AVX-512F: the vector type, its micro-tile entry point and its tile shapes.
//!
//! Sixteen f32 lanes and 32 registers. Masked loads and stores make the partial vectors at the end
//! of a row exact without a stack copy.

// Every method below is a thin wrapper over one or two intrinsics; the intrinsics need the ISA,
// which is exactly the `Simd` trait's safety contract, so the bodies are not wrapped one by one.
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::activation::Activation;
use crate::kernels::elem::WeightElem;
use crate::kernels::gemm::{Family, TileArgs, micro};
use crate::kernels::gemv::RowArgs;
use crate::kernels::isa::Isa;
use crate::kernels::simd::Simd;
use crate::kernels::vmath;

/// Whether this CPU can run the path.
pub(crate) fn is_supported() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// AVX-512F: sixteen lanes, 32 registers.
#[derive(Clone, Copy)]
pub(crate) struct Avx512(__m512);

// SAFETY (all methods): the trait contract: the CPU has AVX-512F and the pointers are valid for the
// stated number of lanes. Unaligned loads/stores are used throughout, so no alignment requirement.
impl Simd for Avx512 {
    const LANES: usize = 16;
    const REGISTERS: usize = 32;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Avx512(_mm512_setzero_ps())
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Avx512(_mm512_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> Self {
        // SAFETY: trait contract.
        Avx512(_mm512_set1_ps(unsafe { *p }))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: trait contract.
        Avx512(unsafe { _mm512_loadu_ps(p) })
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> Self {
        let m: __mmask16 = ((1u32 << n) - 1) as __mmask16;
        // SAFETY: masked-off lanes are not accessed (no fault), the rest are valid.
        Avx512(unsafe { _mm512_maskz_loadu_ps(m, p) })
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> Self {
        // SAFETY: trait contract (sixteen u16 at `p`); the 512-bit VCVTPH2PS is AVX-512F.
        Avx512(unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) })
    }
    #[inline(always)]
    unsafe fn load_bf16_pair(p: *const u16) -> (Self, Self) {
        // SAFETY: trait contract (thirty-two u16 at `p`).
        let v = unsafe { _mm512_loadu_si512(p.cast()) };
        let hi = _mm512_and_si512(v, _mm512_set1_epi32(0xffff_0000_u32 as i32));
        let lo = _mm512_slli_epi32::<16>(v);
        (
            Avx512(_mm512_castsi512_ps(hi)),
            Avx512(_mm512_castsi512_ps(lo)),
        )
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: trait contract.
        unsafe { _mm512_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize) {
        let m: __mmask16 = ((1u32 << n) - 1) as __mmask16;
        // SAFETY: masked-off lanes are not written, the rest are valid.
        unsafe { _mm512_mask_storeu_ps(p, m, self.0) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        Avx512(_mm512_fmadd_ps(a.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        Avx512(_mm512_add_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        Avx512(_mm512_sub_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        Avx512(_mm512_mul_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn div(a: Self, b: Self) -> Self {
        Avx512(_mm512_div_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn where_negative_mul(self, slope: Self) -> Self {
        // Ordered less-than is false for NaN, so NaN lanes keep their value.
        let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, _mm512_setzero_ps());
        Avx512(_mm512_mask_mul_ps(self.0, neg, self.0, slope.0))
    }
    #[inline(always)]
    unsafe fn relu(self) -> Self {
        // VMAXPS(0, x) is `0 > x ? 0 : x` (the second operand where either is NaN or both are
        // zeros): NaN and -0 pass unchanged, in one instruction instead of a compare and a move.
        Avx512(_mm512_max_ps(_mm512_setzero_ps(), self.0))
    }
    type Mask = __mmask16;
    #[inline(always)]
    unsafe fn lt(a: Self, b: Self) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a.0, b.0)
    }
    #[inline(always)]
    unsafe fn select(m: __mmask16, t: Self, f: Self) -> Self {
        // Lanes whose mask bit is set take the second vector.
        Avx512(_mm512_mask_blend_ps(m, f.0, t.0))
    }
    #[inline(always)]
    unsafe fn max(a: Self, b: Self) -> Self {
        // VMAXPS returns the second operand when either is NaN: the trait's rule.
        Avx512(_mm512_max_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn min(a: Self, b: Self) -> Self {
        Avx512(_mm512_min_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        Avx512(_mm512_abs_ps(self.0))
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        Avx512(_mm512_roundscale_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(self.0))
    }
    #[inline(always)]
    unsafe fn pow2i(n: Self) -> Self {
        let e = _mm512_add_epi32(_mm512_cvtps_epi32(n.0), _mm512_set1_epi32(127));
        Avx512(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(e)))
    }
    #[inline(always)]
    unsafe fn act_tile(a: Activation, v: &mut [Self]) {
        act_tile(a, v)
    }
}

/// AVX-512 tiles.
///
/// # Safety
/// As [`micro`]; the CPU has AVX-512F (checked by `Isa::is_supported` before the family is used).
#[target_feature(enable = "avx512f")]
unsafe fn tile<W: WeightElem, const MV: usize, const NR: usize, const P: bool>(
    t: &TileArgs<'_, W>,
) {
    // SAFETY: forwarded contract.
    unsafe { micro::<Avx512, W, MV, NR, P>(t) }
}

/// AVX-512 row kernel for narrow layers.
///
/// # Safety
/// As [`RowFn`](crate::kernels::gemv::RowFn); the CPU supports the ISA.
#[target_feature(enable = "avx512f")]
unsafe fn rows(t: &RowArgs<'_>) {
    // SAFETY: forwarded contract.
    unsafe { crate::kernels::gemv::rows::<Avx512>(t) }
}

/// The micro-kernel epilogue's activation of a whole tile ([`Simd::act_tile`]), out of line.
///
/// # Safety
/// As [`act`].
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn act_tile(a: Activation, v: &mut [Avx512]) {
    // SAFETY: forwarded contract.
    unsafe { vmath::act_vecs::<Avx512>(a, v) }
}
/// Elementwise activation entry point ([`vmath::apply_slice`] on this ISA's vectors).
///
/// # Safety
/// The CPU has the features enabled below (checked by `Isa::is_supported` before the family is
/// used).
#[target_feature(enable = "avx512f")]
unsafe fn act(a: Activation, v: &mut [f32]) {
    // SAFETY: forwarded contract.
    unsafe { vmath::apply_slice::<Avx512>(a, v) }
}

/// Softmax entry point ([`vmath::softmax_rows`] on this ISA's vectors).
///
/// # Safety
/// As [`act`].
#[target_feature(enable = "avx512f")]
unsafe fn softmax(v: &mut [f32], width: usize) {
    // SAFETY: forwarded contract.
    unsafe { vmath::softmax_rows::<Avx512>(v, width) }
}

/// `e^x` entry point ([`vmath::exp_slice`]).
///
/// # Safety
/// As [`act`].
#[target_feature(enable = "avx512f")]
unsafe fn exp(v: &mut [f32]) {
    // SAFETY: forwarded contract.
    unsafe { vmath::exp_slice::<Avx512>(v) }
}

/// The AVX-512 tiles for weights of type `$w`.
macro_rules! tiles16 {
    ($w:ty) => {
        crate::kernels::gemm::Tiles::<$w> {
            // rows 1: 8 vectors (memory-bound GEMV, eight independent chains); 2: 6x2;
            // 3-4: 4x4; 5-8: 3x8 (24 accumulators of 32 registers).
            small: [
                (1, 8, tile::<$w, 8, 1, false>, tile::<$w, 1, 1, false>),
                (1, 8, tile::<$w, 8, 1, false>, tile::<$w, 1, 1, false>),
                (2, 6, tile::<$w, 6, 2, false>, tile::<$w, 1, 2, false>),
                (4, 4, tile::<$w, 4, 4, false>, tile::<$w, 1, 4, false>),
                (4, 4, tile::<$w, 4, 4, false>, tile::<$w, 1, 4, false>),
                (8, 3, tile::<$w, 3, 8, false>, tile::<$w, 1, 8, false>),
                (8, 3, tile::<$w, 3, 8, false>, tile::<$w, 1, 8, false>),
                (8, 3, tile::<$w, 3, 8, false>, tile::<$w, 1, 8, false>),
                (8, 3, tile::<$w, 3, 8, false>, tile::<$w, 1, 8, false>),
            ],
            // 4 x 6: 24 accumulators, 4 weight vectors and a broadcast in 29 registers;
            // 10 loads per 24 FMAs.
            big: (6, 4, tile::<$w, 4, 6, true>, tile::<$w, 1, 6, true>),
        }
    };
}

/// The AVX-512 tile shapes.
pub(crate) static FAMILY: Family = Family {
    isa: Isa::Avx512,
    lanes: 16,
    f32: tiles16!(f32),
    f16: tiles16!(half::f16),
    bf16: tiles16!(half::bf16),
    rows,
    act,
    softmax,
    exp,
};
