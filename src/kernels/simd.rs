//! One vector type per instruction set, behind one trait, so that the micro-kernel and the
//! epilogue are written once (in `gemm.rs`) and instantiated per ISA.
//!
//! The x86 implementations call `std::arch` intrinsics from `#[inline(always)]` methods that have
//! no `#[target_feature]` of their own: they are only ever inlined into a function that has the
//! feature enabled (the `#[target_feature]` entry points in `gemm.rs`), and are only called after
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
    /// Lanes with `x < 0` replaced by 0; others (and NaN) unchanged (ReLU). A compare-and-select
    /// rather than `max`, so that NaN propagates, and not `x * 0`, which is NaN at `-inf`.
    unsafe fn relu(self) -> Self;
}

/// Copy `n < L` values through a stack buffer (the portable partial load).
#[inline(always)]
unsafe fn partial_to_array<const L: usize>(p: *const f32, n: usize) -> [f32; L] {
    let mut buf = [0.0f32; L];
    // SAFETY: the caller guarantees `p` valid for `n` reads; `n < L` fits `buf`.
    unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n.min(L)) };
    buf
}

// Every method below is a thin wrapper over one or two intrinsics; the intrinsics need the ISA,
// which is exactly the trait's safety contract, so the bodies are not wrapped one by one.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_op_in_unsafe_fn)]
pub(crate) mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// AVX-512F: sixteen lanes, 32 registers.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(__m512);

    /// AVX2 with FMA: eight lanes, 16 registers.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(__m256);

    // SAFETY (all methods of both impls): the trait contract — the CPU has the ISA and the
    // pointers are valid for the stated number of lanes. Unaligned loads/stores are used
    // throughout, so no alignment requirement.
    impl Simd for Avx512 {
        const LANES: usize = 16;
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
            let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, _mm512_setzero_ps());
            Avx512(_mm512_mask_mov_ps(self.0, neg, _mm512_setzero_ps()))
        }
    }

    impl Simd for Avx2 {
        const LANES: usize = 8;
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
            // SAFETY: trait contract; the portable helper reads only `n` values.
            let buf = unsafe { super::partial_to_array::<8>(p, n) };
            // SAFETY: `buf` holds eight f32.
            Avx2(unsafe { _mm256_loadu_ps(buf.as_ptr()) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: trait contract.
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn store_partial(self, p: *mut f32, n: usize) {
            let mut buf = [0.0f32; 8];
            // SAFETY: `buf` holds eight f32; then only `n` values are copied to `p`.
            unsafe {
                _mm256_storeu_ps(buf.as_mut_ptr(), self.0);
                std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n);
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
            let zero = _mm256_setzero_ps();
            let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, zero);
            Avx2(_mm256_blendv_ps(self.0, zero, neg))
        }
    }
}

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
