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

    /// [`WeightElem::from_f32`] of each of `src`, into `dst` (same length).
    #[inline]
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, &v)| *d = Self::from_f32(v));
    }

    /// The value as f32 (exact for all three types).
    #[cfg(test)]
    fn to_f32(self) -> f32;

    /// Whether a panel holds its depths in pairs: the `2 * lanes` values of depths `kk` and
    /// `kk + 1` (`kk` even) as `lanes` 32-bit words, feature `l`'s word holding depth `kk` in its
    /// high half and `kk + 1` in its low half. Else depth `kk` is `lanes` consecutive values.
    const PAIRED: bool;

    /// Where the weight of depth `kk`, lane `l` goes in a panel of `lanes` lanes.
    #[inline(always)]
    fn index(kk: usize, l: usize, lanes: usize) -> usize {
        if Self::PAIRED {
            (kk & !1) * lanes + 2 * l + usize::from(kk.is_multiple_of(2))
        } else {
            kk * lanes + l
        }
    }

    /// The `V::LANES` weights of depth `kk` (`ODD`: of depth `kk + 1`) of a panel, widened to
    /// f32; `p` points at depth `kk`, which is even.
    ///
    /// # Safety
    /// The CPU supports `V`'s instruction set (the [`Simd`] contract); `p` is valid for
    /// `2 * V::LANES` reads of `Self` (any alignment) when `ODD` or `PAIRED`, else for `V::LANES`.
    unsafe fn load<V: Simd, const ODD: bool>(p: *const Self) -> V;

    /// The weights of depths `kk` and `kk + 1` (`kk` even) at `p`: `load::<V, false>` and
    /// `load::<V, true>`, from one load where the layout pairs depths.
    ///
    /// # Safety
    /// As [`WeightElem::load`] with `ODD`.
    #[inline(always)]
    unsafe fn load_pair<V: Simd>(p: *const Self) -> (V, V) {
        // SAFETY: forwarded contract.
        unsafe { (Self::load::<V, false>(p), Self::load::<V, true>(p)) }
    }

    /// How far ahead of the depth it reads, in bytes, a tile of `rows` batch rows asks for each
    /// panel's lines ([`WeightElem::prefetch`], once per cache line of each panel stream); 0 for
    /// none. `packed`: the blocked driver's tile, whose weights come from the L2-resident block.
    ///
    /// Half-precision panels are read at half the bytes per FMA of f32 ones, so at batch 1 the
    /// hardware prefetcher alone does not keep enough lines in flight to reach the memory
    /// bandwidth f32 panels reach; a software prefetch 1 KiB ahead of each stream closes most of
    /// that gap (measured on the AVX2 machine of docs/PERFORMANCE.md, "Half-precision weights").
    /// f32 panels: see the `f32` implementation.
    fn prefetch_ahead(rows: usize, packed: bool) -> usize;

    /// Hint the CPU to bring the cache line holding `p` into its caches.
    ///
    /// Safe for any `p`, even one outside every allocation (compute it with `wrapping_add`): a
    /// prefetch is a hint that never faults and changes nothing the program can read.
    #[inline(always)]
    fn prefetch(p: *const Self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: PREFETCHT0 (SSE, part of every x86-64 CPU) only hints the cache hierarchy: it
        // does not fault on any address, mapped or not, and it reads nothing into a register, so
        // no value of the program depends on `p`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = p;
    }

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
    const PAIRED: bool = false;
    /// 1 KiB ahead in the unpacked driver's tiles of 4 rows and more, none elsewhere. Measured on
    /// the AVX2 machine of docs/PERFORMANCE.md ("Prefetching f32 panels"): at batch 4 and 8 a tile
    /// spends enough FMAs on each line that the hardware prefetcher alone leaves the memory
    /// idle between lines (a 4096-wide network at batch 8: 10% faster with the prefetch); at
    /// batch 1 and 2, where the panels stream at the memory's pace, the prefetch instructions
    /// only cost (batch 2: 7% slower), and the blocked driver's L2-resident blocks do not need
    /// them (0-4% slower).
    #[inline(always)]
    fn prefetch_ahead(rows: usize, packed: bool) -> usize {
        if !packed && rows >= 4 { 1024 } else { 0 }
    }
    #[inline(always)]
    unsafe fn load<V: Simd, const ODD: bool>(p: *const f32) -> V {
        // SAFETY: forwarded contract (`LANES` f32 at depth `kk` or `kk + 1`).
        unsafe { V::load(p.add(usize::from(ODD) * V::LANES)) }
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
    /// Through `half`'s slice conversion: F16C eight values at a time where the CPU has it (the
    /// same rounding as `f16::from_f32`, which takes the same instruction one value at a time).
    fn from_f32_slice(src: &[f32], dst: &mut [f16]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
    #[cfg(test)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    const PAIRED: bool = false;
    #[inline(always)]
    fn prefetch_ahead(_rows: usize, _packed: bool) -> usize {
        1024
    }
    #[inline(always)]
    unsafe fn load<V: Simd, const ODD: bool>(p: *const f16) -> V {
        // SAFETY: forwarded contract; `f16` is a `u16` bit pattern (`repr(transparent)`), so the
        // depth's `LANES` values are `LANES` readable u16.
        unsafe { V::load_f16(p.add(usize::from(ODD) * V::LANES).cast::<u16>()) }
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
    /// `bf16::from_f32`'s rounding without its branch, so that the loop vectorises: to nearest,
    /// ties to even, for every number (a carry past the largest finite value gives the infinity);
    /// NaN stays a quiet NaN.
    fn from_f32_slice(src: &[f32], dst: &mut [bf16]) {
        dst.iter_mut().zip(src).for_each(|(d, &v)| {
            let x = v.to_bits();
            let rounded = (x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16) as u16;
            let nan = ((x >> 16) as u16) | 0x40;
            *d = bf16::from_bits(if v.is_nan() { nan } else { rounded });
        });
    }
    #[cfg(test)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    /// Paired: one 32-bit word per feature holds two depths, so widening is one `and` (the high
    /// half, depth `kk`) or one shift (the low half, `kk + 1`) per vector, with no
    /// zero-extension (measured on the AVX2 machine of docs/PERFORMANCE.md: 0.66 ns per vector of
    /// 8 weights with the FMA, against 1.23 ns for a zero-extend and shift, 1.20 ns for F16C).
    const PAIRED: bool = true;
    #[inline(always)]
    fn prefetch_ahead(_rows: usize, _packed: bool) -> usize {
        1024
    }
    #[inline(always)]
    unsafe fn load<V: Simd, const ODD: bool>(p: *const bf16) -> V {
        // SAFETY: as for `f16`: the pair's `2 * LANES` u16 at `p`. (The half not asked for is
        // computed and dropped: one `and` or shift, removed by the optimiser.)
        let (first, second) = unsafe { V::load_bf16_pair(p.cast::<u16>()) };
        if ODD { second } else { first }
    }
    #[inline(always)]
    unsafe fn load_pair<V: Simd>(p: *const bf16) -> (V, V) {
        // SAFETY: as in `load`.
        unsafe { V::load_bf16_pair(p.cast::<u16>()) }
    }
    fn tiles(fam: &Family) -> &Tiles<bf16> {
        &fam.bf16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `from_f32_slice` (F16C eight lanes at a time for f16, branch-free for bf16) gives the bits of
    /// `from_f32` value by value: zeros, infinities, NaNs (quiet, signalling, negative), both
    /// sides of each type's largest finite value and of its tie to infinity, ties to even at
    /// ordinary magnitudes, subnormals, and random bit patterns.
    #[test]
    fn slice_conversions_give_the_bits_of_one_value_conversions() {
        let mut vals: Vec<f32> = vec![
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xff80_0001),
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            65504.0,
            65520.0,
            f32::from_bits(65520f32.to_bits() - 1),
            bf16::MAX.to_f32(),
            f32::from_bits(bf16::MAX.to_f32().to_bits() + 0x8000),
            f32::from_bits(bf16::MAX.to_f32().to_bits() + 0x7fff),
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            2f32.powi(-25),
            2f32.powi(-24) * 1.5,
        ];
        let mut rng = crate::synth::Rng::new(17);
        vals.extend((0..10_000).map(|_| f32::from_bits(rng.next_u64() as u32)));
        vals.extend(vals.clone().iter().map(|v| -v));
        check::<f32>(&vals);
        check::<f16>(&vals);
        check::<bf16>(&vals);
    }

    fn check<W: WeightElem>(vals: &[f32]) {
        let mut sliced = vec![W::zeroed(); vals.len()];
        W::from_f32_slice(vals, &mut sliced);
        for (&v, s) in vals.iter().zip(&sliced) {
            let one = W::from_f32(v);
            assert_eq!(
                bytemuck::bytes_of(s),
                bytemuck::bytes_of(&one),
                "{} of {v:e} ({:#x})",
                std::any::type_name::<W>(),
                v.to_bits()
            );
        }
    }
}
