//! One module per instruction set: its vector type (an implementation of
//! [`Simd`](super::simd::Simd)), its `#[target_feature]` micro-tile entry point, its tile shapes
//! ([`Family`]) and its runtime detection. The micro-kernel body and the drivers (`gemm.rs`) are
//! written once, generic over the vector type.
//!
//! Adding an instruction set (NEON, say) is a new file here (`aarch64/neon.rs`, shaped like
//! `x86_64/avx2.rs`), a variant of [`Isa`] with its name, and one line in each of [`family`] and
//! [`is_supported`].

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

pub(crate) mod portable;

use super::gemm::Family;
use super::isa::Isa;

/// The tile family of `isa`, which must be supported by this CPU (callers resolve it first).
pub(crate) fn family(isa: Isa) -> &'static Family {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => &x86_64::avx512::FAMILY,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => &x86_64::avx2::FAMILY,
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx512 | Isa::Avx2 => &portable::FAMILY,
        Isa::Portable => &portable::FAMILY,
    }
}

/// Whether this CPU can run `isa` (runtime detection; the portable path always can).
pub(crate) fn is_supported(isa: Isa) -> bool {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86_64::avx512::is_supported(),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86_64::avx2::is_supported(),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx512 | Isa::Avx2 => false,
        Isa::Portable => true,
    }
}
