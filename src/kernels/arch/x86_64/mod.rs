//! x86-64 instruction sets, one file each.

pub(crate) mod avx2;
pub(crate) mod avx512;
