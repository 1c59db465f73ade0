//! The element type of packed weight panels: f32, or f16 / bf16 widened to f32 in registers.
//!
//! The micro-kernel (`gemm.rs`) reads its weight vectors through [`WeightElem::load`], so that its
//! one body serves the three types; accumulation, bias and epilogue stay f32. Half-precision panels
//! halve the bytes a product streams, which is what a memory-bound (small-batch) layer waits for.

use half::{bf16, f16};

use super::gemm::{Family, Tiles};
use super::simd::Simd;

/// An element type of packed weights. Implemented for `f32`, `half::f16` and `half::bf16` only.
pub(crate) trait WeightElem:
    bytemuck::Pod + Send + Sync + std::fmt::Debug + 'static
{
    /// `v` in this type, rounded to nearest (ties to even). Exact for the weights a plan packs,
    /// which the lowering already rounded (once, from f64) to this type. f32 beyond f16's range
    /// becomes an infinity (the lowering refuses such weights before they get here).
    fn from_f32(v: f32) -> Self;

    /// The value as f32 (exact for all three types).
    #[cfg(test)]
    fn to_f32(self) -> f32;

    /// `V::LANES` consecutive weights at `p`, widened to f32.
    ///
    /// # Safety
    /// The CPU supports `V`'s instruction set (the [`Simd`] contract); `p` is valid for
    /// `V::LANES` reads of `Self` (any alignment).
    unsafe fn load<V: Simd>(p: *const Self) -> V;

    /// This type's tile entry points in an ISA's table.
    fn tiles(fam: &Family) -> &Tiles<Self>;
}

impl WeightElem for f32 {
    #[inline(always)]
    fn from_f32(v: f32) -> f32 {
        v
    }
    #[cfg(test)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    unsafe fn load<V: Simd>(p: *const f32) -> V {
        // SAFETY: forwarded contract (`LANES` f32 at `p`).
        unsafe { V::load(p) }
    }
    fn tiles(fam: &Family) -> &Tiles<f32> {
        &fam.f32
    }
}

impl WeightElem for f16 {
    #[inline(always)]
    fn from_f32(v: f32) -> f16 {
        f16::from_f32(v)
    }
    #[cfg(test)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    unsafe fn load<V: Simd>(p: *const f16) -> V {
        // SAFETY: forwarded contract; `f16` is a `u16` bit pattern (`repr(transparent)`), so `p`
        // is valid for `LANES` u16 reads.
        unsafe { V::load_f16(p.cast::<u16>()) }
    }
    fn tiles(fam: &Family) -> &Tiles<f16> {
        &fam.f16
    }
}

impl WeightElem for bf16 {
    #[inline(always)]
    fn from_f32(v: f32) -> bf16 {
        bf16::from_f32(v)
    }
    #[cfg(test)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    unsafe fn load<V: Simd>(p: *const bf16) -> V {
        // SAFETY: as for `f16`.
        unsafe { V::load_bf16(p.cast::<u16>()) }
    }
    fn tiles(fam: &Family) -> &Tiles<bf16> {
        &fam.bf16
    }
}
