//! x86-64 AVX2 with FMA: the vector type, its micro-tile entry point and its tile shapes.
//!
//! Eight f32 lanes and 16 registers (the same shapes as the portable path, `family8!`).

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
    // F16C (the f16 weight loads) is on every AVX2 CPU; checked anyway.
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// The lane mask of the first `n < 8` lanes (all bits set in each enabled lane), read from a
/// sliding window over eight ones and eight zeros.
///
/// # Safety
/// The CPU has AVX2 (the `Simd` contract); `n <= 8`.
#[inline(always)]
unsafe fn mask(n: usize) -> __m256i {
    static WINDOW: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
    debug_assert!(n <= 8);
    // SAFETY: `8 - n` in `0..=8`, so the eight values read are inside the 16-value window.
    unsafe { _mm256_loadu_si256(WINDOW.as_ptr().add(8 - n.min(8)).cast()) }
}

/// AVX2 with FMA: eight lanes, 16 registers.
#[derive(Clone, Copy)]
pub(crate) struct Avx2(__m256);

// SAFETY (all methods): the trait contract: the CPU has AVX2 and FMA and the pointers are valid for
// the stated number of lanes. Unaligned loads/stores are used throughout.
impl Simd for Avx2 {
    const LANES: usize = 8;
    const REGISTERS: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Avx2(_mm256_setzero_ps())
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Avx2(_mm256_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> Self {
        // SAFETY: trait contract.
        Avx2(unsafe { _mm256_broadcast_ss(&*p) })
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: trait contract.
        Avx2(unsafe { _mm256_loadu_ps(p) })
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> Self {
        // SAFETY: `mask(n)` enables the first `n < 8` lanes; VMASKMOVPS neither reads nor faults
        // on the others, and the first `n` are valid (trait contract).
        Avx2(unsafe { _mm256_maskload_ps(p, mask(n)) })
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> Self {
        // SAFETY: trait contract (eight u16 at `p`); VCVTPH2PS needs F16C, which every entry
        // point of this file enables and `is_supported` checks.
        let mut h = unsafe { _mm_loadu_si128(p.cast()) };
        // Keep the load a separate instruction: LLVM folds it into VCVTPH2PS's memory form,
        // which on the AVX2 machine of docs/PERFORMANCE.md converts 16% slower than a load and
        // the register form (1.21 vs 1.01 ns per vector of 8 with its FMA, from L1). The empty
        // asm only makes `h` opaque to the optimiser.
        // SAFETY: the template is a comment: no instruction runs, no memory or flag is touched,
        // and `h` comes back unchanged.
        unsafe {
            std::arch::asm!(
                "/* {h} */",
                h = inout(xmm_reg) h,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        Avx2(_mm256_cvtph_ps(h))
    }
    #[inline(always)]
    unsafe fn load_bf16_pair(p: *const u16) -> (Self, Self) {
        // SAFETY: trait contract (sixteen u16 at `p`).
        let v = unsafe { _mm256_loadu_si256(p.cast()) };
        let hi = _mm256_and_si256(v, _mm256_set1_epi32(0xffff_0000_u32 as i32));
        let lo = _mm256_slli_epi32::<16>(v);
        (Avx2(_mm256_castsi256_ps(hi)), Avx2(_mm256_castsi256_ps(lo)))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: trait contract.
        unsafe { _mm256_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize) {
        // Plain stores of 4, 2 and 1 lanes (by the bits of `n`) rather than VMASKMOVPS, whose
        // store form is microcoded on AMD Zen (several cycles each, and a later load of the same
        // bytes cannot be forwarded from it).
        // SAFETY: only the first `n < 8` lanes at `p` are written (trait contract: they are
        // valid), each by an unaligned store of its own lanes.
        unsafe {
            let mut lo = _mm256_castps256_ps128(self.0);
            let mut p = p;
            if n & 4 != 0 {
                _mm_storeu_ps(p, lo);
                lo = _mm256_extractf128_ps::<1>(self.0);
                p = p.add(4);
            }
            if n & 2 != 0 {
                _mm_store_sd(p.cast(), _mm_castps_pd(lo));
                lo = _mm_movehl_ps(lo, lo);
                p = p.add(2);
            }
            if n & 1 != 0 {
                _mm_store_ss(p, lo);
            }
        }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        Avx2(_mm256_fmadd_ps(a.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        Avx2(_mm256_add_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        Avx2(_mm256_sub_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        Avx2(_mm256_mul_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn div(a: Self, b: Self) -> Self {
        Avx2(_mm256_div_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn where_negative_mul(self, slope: Self) -> Self {
        let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, _mm256_setzero_ps());
        Avx2(_mm256_blendv_ps(
            self.0,
            _mm256_mul_ps(self.0, slope.0),
            neg,
        ))
    }
    #[inline(always)]
    unsafe fn relu(self) -> Self {
        // VMAXPS(0, x) is `0 > x ? 0 : x`: the second operand (x) where either is NaN and where
        // both are zeros, so NaN and -0 pass unchanged, as the trait asks. One instruction where
        // a compare and a blend became three (LLVM widens the blend's mask with VPCMPGTD).
        Avx2(_mm256_max_ps(_mm256_setzero_ps(), self.0))
    }
    type Mask = __m256;
    #[inline(always)]
    unsafe fn lt(a: Self, b: Self) -> __m256 {
        _mm256_cmp_ps::<_CMP_LT_OQ>(a.0, b.0)
    }
    #[inline(always)]
    unsafe fn select(m: __m256, t: Self, f: Self) -> Self {
        Avx2(_mm256_blendv_ps(f.0, t.0, m))
    }
    #[inline(always)]
    unsafe fn max(a: Self, b: Self) -> Self {
        // VMAXPS returns the second operand when either is NaN: the trait's rule.
        Avx2(_mm256_max_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn min(a: Self, b: Self) -> Self {
        Avx2(_mm256_min_ps(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        Avx2(_mm256_andnot_ps(_mm256_set1_ps(-0.0), self.0))
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        Avx2(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(self.0))
    }
    #[inline(always)]
    unsafe fn pow2i(n: Self) -> Self {
        let e = _mm256_add_epi32(_mm256_cvtps_epi32(n.0), _mm256_set1_epi32(127));
        Avx2(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(e)))
    }
    #[inline(always)]
    unsafe fn act_tile(a: Activation, v: &mut [Self]) {
        act_tile(a, v)
    }
}

/// AVX2 + FMA tiles.
///
/// # Safety
/// As [`micro`]; the CPU has AVX2 and FMA (checked by `Isa::is_supported` before the family is
/// used).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<W: WeightElem, const MV: usize, const NR: usize, const P: bool>(
    t: &TileArgs<'_, W>,
) {
    // SAFETY: forwarded contract.
    unsafe { micro::<Avx2, W, MV, NR, P>(t) }
}

/// AVX2 + FMA row kernel for narrow layers.
///
/// # Safety
/// As [`RowFn`](crate::kernels::gemv::RowFn); the CPU supports the ISA.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows(t: &RowArgs<'_>) {
    // SAFETY: forwarded contract.
    unsafe { crate::kernels::gemv::rows::<Avx2>(t) }
}

/// The micro-kernel epilogue's activation of a whole tile ([`Simd::act_tile`]), out of line.
///
/// # Safety
/// As [`act`].
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
unsafe fn act_tile(a: Activation, v: &mut [Avx2]) {
    // SAFETY: forwarded contract.
    unsafe { vmath::act_vecs::<Avx2>(a, v) }
}
/// Elementwise activation entry point ([`vmath::apply_slice`] on this ISA's vectors).
///
/// # Safety
/// The CPU has the features enabled below (checked by `Isa::is_supported` before the family is
/// used).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn act(a: Activation, v: &mut [f32]) {
    // SAFETY: forwarded contract.
    unsafe { vmath::apply_slice::<Avx2>(a, v) }
}

/// Softmax entry point ([`vmath::softmax_rows`] on this ISA's vectors).
///
/// # Safety
/// As [`act`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax(v: &mut [f32], width: usize) {
    // SAFETY: forwarded contract.
    unsafe { vmath::softmax_rows::<Avx2>(v, width) }
}

/// `e^x` entry point ([`vmath::exp_slice`]).
///
/// # Safety
/// As [`act`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp(v: &mut [f32]) {
    // SAFETY: forwarded contract.
    unsafe { vmath::exp_slice::<Avx2>(v) }
}

/// The AVX2 tile shapes.
pub(crate) static FAMILY: Family =
    crate::kernels::gemm::family8!(Isa::Avx2, tile, act, softmax, exp, rows);
