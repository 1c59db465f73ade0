//! The running processor's data caches, and the GEMM blocking derived from them.
//!
//! The blocked driver (`gemm.rs`) keeps three working sets in three cache levels: a packed
//! micro-panel of inputs (`NR` rows by `KC` depths) in L1, a block of packed weights (`MC`
//! features by `KC` depths) in L2, and a packed block of inputs (`NC` rows by `KC` depths) in the
//! core's share of L3. The sizes follow the analytical model of BLIS (Low, Igual, Smith and
//! Quintana-Orti, *Analytical Modeling Is Enough for High-Performance BLIS*, ACM TOMS 43(2),
//! 2016: each block takes a fixed fraction of its level, so the block that streams past it does
//! not evict it); the fractions are in [`Blocking::derive`] and `docs/PERFORMANCE.md` gives the
//! measurements behind them. The same caches bound the unpacked driver: weight matrices that fit
//! L2, and inputs up to a quarter of L3, stay unpacked at any batch; its panel groups fill a
//! quarter of L2.
//!
//! Sizes come from CPUID (deterministic cache parameters: leaf 4 on Intel, leaf `0x8000_001D` on
//! AMD, legacy AMD leaves `0x8000_0005/6` otherwise), read once per process. Where CPUID gives
//! nothing usable (another architecture, a hypervisor hiding the leaves), [`Caches::FALLBACK`]
//! is used. `BNFOLD_CACHES=l1d,l2,l3` (bytes, or with a `K`/`M` suffix: `32K,512K,8M`) replaces
//! the detected sizes, for benchmarks that compare blockings on one machine. Blocking changes the
//! order in which depth blocks are summed, so it is decided once, when a layer is packed, and
//! never from the thread count or the batch.

use std::sync::OnceLock;

/// Sizes of the data caches one core sees, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Caches {
    /// Level-1 data cache of one core.
    pub l1d: usize,
    /// Level-2 cache of one core (unified).
    pub l2: usize,
    /// The whole last-level cache (the L2 where there is no L3).
    pub l3: usize,
    /// This core's share of it: its size divided by the logical processors sharing it (as CPUID
    /// reports them), at least one L2.
    pub l3_share: usize,
    /// Where the sizes came from.
    pub source: CacheSource,
}

/// Where [`Caches`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSource {
    /// The processor's CPUID leaves.
    Cpuid,
    /// The `BNFOLD_CACHES` environment variable.
    Environment,
    /// [`Caches::FALLBACK`]: nothing else was available.
    Fallback,
}

/// The environment variable that replaces the detected cache sizes: `l1d,l2,l3` in bytes, each
/// optionally suffixed `K` or `M` (binary units); `l3` is the whole last-level cache, shared by
/// the logical processors CPUID reports (or taken whole where CPUID reports nothing).
pub const CACHES_ENV: &str = "BNFOLD_CACHES";

impl Caches {
    /// Sizes assumed where nothing is detected: a 32 KiB L1d, 512 KiB L2, an 8 MiB L3 and a
    /// 2 MiB share of it, about the smallest of the x86-64 server cores of the last decade (so
    /// blocks fit everywhere).
    pub const FALLBACK: Caches = Caches {
        l1d: 32 << 10,
        l2: 512 << 10,
        l3: 8 << 20,
        l3_share: 2 << 20,
        source: CacheSource::Fallback,
    };

    /// Tiny caches, for tests that must cross every block boundary with small shapes.
    pub(crate) const TINY: Caches = Caches {
        l1d: 1 << 10,
        l2: 8 << 10,
        l3: 16 << 10,
        l3_share: 16 << 10,
        source: CacheSource::Fallback,
    };

    /// The caches of the running processor (detected once per process).
    pub fn detect() -> Caches {
        static CACHES: OnceLock<Caches> = OnceLock::new();
        *CACHES.get_or_init(|| {
            if let Some(c) = std::env::var(CACHES_ENV).ok().and_then(|v| parse_env(&v)) {
                return c;
            }
            from_cpuid().unwrap_or(Caches::FALLBACK)
        })
    }
}

/// Parse a size: digits with an optional `K`/`M` suffix (binary).
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, mul) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1usize << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(mul)
}

/// `l1d,l2,l3` as [`CACHES_ENV`] describes; `None` if malformed or a size is zero or absurd
/// (each at most 1 GiB).
fn parse_env(v: &str) -> Option<Caches> {
    let sizes: Vec<usize> = v.split(',').map(parse_size).collect::<Option<_>>()?;
    let [l1d, l2, l3] = sizes[..] else {
        return None;
    };
    if [l1d, l2, l3].iter().any(|&s| s == 0 || s > 1 << 30) {
        return None;
    }
    Some(Caches {
        l1d,
        l2,
        l3: l3.max(l2),
        l3_share: l3.max(l2),
        source: CacheSource::Environment,
    })
}

/// One cache described by a deterministic-cache-parameters leaf (Intel leaf 4, AMD
/// `0x8000_001D`; same layout): level, whether it holds data, size in bytes and how many logical
/// processors share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CacheLeaf {
    level: u32,
    data: bool,
    size: usize,
    sharing: usize,
}

/// Decode one subleaf (`eax`, `ebx`, `ecx`); `None` at the end of the list (type 0).
fn decode_leaf(eax: u32, ebx: u32, ecx: u32) -> Option<CacheLeaf> {
    let kind = eax & 0x1f;
    if kind == 0 {
        return None;
    }
    let ways = ((ebx >> 22) & 0x3ff) as usize + 1;
    let partitions = ((ebx >> 12) & 0x3ff) as usize + 1;
    let line = (ebx & 0xfff) as usize + 1;
    let sets = ecx as usize + 1;
    Some(CacheLeaf {
        level: (eax >> 5) & 7,
        // 1: data, 3: unified (2 is instruction).
        data: kind == 1 || kind == 3,
        size: ways * partitions * line * sets,
        sharing: ((eax >> 14) & 0xfff) as usize + 1,
    })
}

/// Combine the decoded leaves into per-core sizes; `None` unless L1d and L2 are both present.
fn from_leaves(leaves: &[CacheLeaf]) -> Option<Caches> {
    let size_of = |level: u32| {
        leaves
            .iter()
            .find(|c| c.data && c.level == level)
            .map(|c| (c.size, c.sharing))
    };
    let (l1d, _) = size_of(1)?;
    let (l2, _) = size_of(2)?;
    let (l3, sharing) = size_of(3).unwrap_or((l2, 1));
    (l1d > 0 && l2 > 0).then_some(Caches {
        l1d,
        l2,
        l3: l3.max(l2),
        l3_share: (l3 / sharing.max(1)).max(l2),
        source: CacheSource::Cpuid,
    })
}

#[cfg(target_arch = "x86_64")]
fn from_cpuid() -> Option<Caches> {
    use std::arch::x86_64::{__cpuid_count, CpuidResult};
    let cpuid = |leaf: u32, sub: u32| -> CpuidResult {
        // SAFETY: CPUID exists on every x86-64 processor and only reads identification
        // registers; the leaves asked for are checked against the maximum leaf first (an
        // out-of-range leaf returns unspecified data, never faults). The intrinsic is a safe
        // function from Rust 1.95 on; the block keeps the crate building on its minimum
        // supported Rust (see docs/SAFETY.md, S-9).
        #[allow(unused_unsafe)]
        unsafe {
            __cpuid_count(leaf, sub)
        }
    };
    let max_basic = cpuid(0, 0).eax;
    let max_ext = cpuid(0x8000_0000, 0).eax;
    let list = |leaf: u32| -> Vec<CacheLeaf> {
        // At most 16 subleaves: real processors list 4 or 5.
        (0..16)
            .map_while(|i| {
                let r = cpuid(leaf, i);
                decode_leaf(r.eax, r.ebx, r.ecx)
            })
            .collect()
    };
    // AMD's topology extensions (CPUID 0x8000_0001 ECX bit 22) give the leaf-4 layout at
    // 0x8000_001D; Intel uses leaf 4 itself.
    let topoext = max_ext >= 0x8000_001D && cpuid(0x8000_0001, 0).ecx & (1 << 22) != 0;
    if topoext && let Some(c) = from_leaves(&list(0x8000_001D)) {
        return Some(c);
    }
    if max_basic >= 4
        && let Some(c) = from_leaves(&list(4))
    {
        return Some(c);
    }
    // Legacy AMD: L1d KiB in 0x8000_0005 ECX[31:24], L2 KiB in 0x8000_0006 ECX[31:16], L3 in
    // 512 KiB units in EDX[31:18] (whole cache; the sharing is not given, so take it whole).
    if max_ext >= 0x8000_0006 {
        let l1d = ((cpuid(0x8000_0005, 0).ecx >> 24) as usize) << 10;
        let l2_info = cpuid(0x8000_0006, 0);
        let l2 = ((l2_info.ecx >> 16) as usize) << 10;
        let l3 = ((l2_info.edx >> 18) as usize) * (512 << 10);
        if l1d > 0 && l2 > 0 {
            return Some(Caches {
                l1d,
                l2,
                l3: l3.max(l2),
                l3_share: l3.max(l2),
                source: CacheSource::Cpuid,
            });
        }
    }
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn from_cpuid() -> Option<Caches> {
    None
}

/// Block sizes of the GEMM drivers for one tile shape and weight type (made by
/// [`Blocking::derive`] only, which keeps `kc` even, as bf16's depth-paired panels need).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Blocking {
    /// Depth of one block: the packed input micro-panel (`NR x KC` f32) fills a quarter of L1d.
    pub kc: usize,
    /// Output features per block: the packed weight block (`MC x KC` weights) fills half of L2.
    pub mc: usize,
    /// Input rows per block: the packed input block (`NC x KC` f32) fills a quarter of the L3
    /// share, at most [`Blocking::NC_MAX`] rows.
    pub nc: usize,
    /// Weights (elements) up to which a layer runs unpacked at any batch: as many as fill L2,
    /// so that the unpacked driver's panel groups (a quarter of L2 each) read the inputs at most
    /// four times (see `unpacked_path` in `gemm.rs` for the measurements).
    pub unpacked_max_weights: usize,
    /// Inputs (f32) up to which a product runs unpacked at any width: a quarter of the L3.
    pub unpacked_max_inputs: usize,
    /// Bytes of weights per panel group of the unpacked driver: a quarter of L2.
    pub group_bytes: usize,
}

impl Blocking {
    /// Largest `nc`: beyond a few thousand rows a bigger input block saves nothing (the weights
    /// block is reused `nc / NR` times already).
    pub const NC_MAX: usize = 3072;

    /// The blocking for tiles of `nr` rows by `features` output features (`MV * LANES`), weights
    /// of `elem` bytes, on `caches`.
    ///
    /// The fractions reproduce the block sizes measured best on the AVX-512 development machine
    /// (48 KiB L1d, 1 MiB L2, 32 MiB L3: KC 512, MC 256, unpacked up to 2 Mi f32 inputs) and are
    /// checked on the AVX2 one in `docs/PERFORMANCE.md`; the weights bound of the unpacked path
    /// was measured on the AVX2 one (`unpacked_path` in `gemm.rs`). `kc` is a multiple of 16
    /// (depth pairs of bf16 panels, cache lines of the packed inputs), `mc` a multiple of
    /// `features`, `nc` of 24 (every `NR` in use: 6 and 8), each at least one step.
    pub fn derive(caches: &Caches, nr: usize, features: usize, elem: usize) -> Blocking {
        let nr = nr.max(1);
        let features = features.max(1);
        let elem = elem.max(1);
        let kc = (caches.l1d / 4 / (nr * 4)).clamp(16, 2048) / 16 * 16;
        let mc = (caches.l2 / 2 / (kc * elem)).max(features) / features * features;
        let nc = (caches.l3_share / 4 / (kc * 4)).clamp(24, Self::NC_MAX) / 24 * 24;
        Blocking {
            kc,
            mc,
            nc,
            unpacked_max_weights: caches.l2 / elem,
            unpacked_max_inputs: caches.l3 / 4 / 4,
            group_bytes: caches.l2 / 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caches(l1d: usize, l2: usize, l3_share: usize) -> Caches {
        Caches {
            l1d,
            l2,
            l3: l3_share * 16,
            l3_share,
            source: CacheSource::Fallback,
        }
    }

    #[test]
    fn derivation_reproduces_the_tuned_avx512_constants() {
        // Zen 5 (the AVX-512 development machine): 48 KiB L1d, 1 MiB L2, 32 MiB L3 per 8 cores
        // x 2 threads. AVX-512 blocked tile: 6 rows by 4 vectors of 16.
        let b = Blocking::derive(&caches(48 << 10, 1 << 20, 2 << 20), 6, 64, 4);
        assert_eq!((b.kc, b.mc), (512, 256));
        // Inputs: a quarter of the 32 MiB L3 in f32; weights: the 1 MiB L2 in f32.
        assert_eq!(
            (b.unpacked_max_weights, b.unpacked_max_inputs),
            (256 << 10, 2 << 20)
        );
        // 2 MiB / 4 / (512 * 4 bytes) = 256 rows, rounded down to a multiple of 24.
        assert_eq!(b.nc, 240);
    }

    #[test]
    fn derivation_fits_each_level() {
        for &(l1d, l2, l3) in &[
            (32 << 10, 512 << 10, 4 << 20),
            (48 << 10, 2 << 20, 1 << 20),
            (32 << 10, 1 << 20, 1 << 20),
            (16 << 10, 256 << 10, 256 << 10),
        ] {
            for &(nr, features, elem) in &[(6, 16, 4), (6, 16, 2), (6, 64, 4), (6, 64, 2)] {
                let b = Blocking::derive(&caches(l1d, l2, l3), nr, features, elem);
                assert!(b.kc >= 16 && b.kc.is_multiple_of(16), "{b:?}");
                assert!(b.kc * nr * 4 <= l1d / 4, "{b:?}");
                assert!(b.mc >= features && b.mc.is_multiple_of(features), "{b:?}");
                assert!(
                    b.mc * b.kc * elem <= (l2 / 2).max(features * b.kc * elem),
                    "{b:?}"
                );
                assert!(
                    b.nc >= 24 && b.nc.is_multiple_of(24) && b.nc <= Blocking::NC_MAX,
                    "{b:?}"
                );
                assert!(b.nc * b.kc * 4 <= (l3 / 4).max(24 * b.kc * 4), "{b:?}");
            }
        }
    }

    #[test]
    fn leaf_decoding() {
        // Zen 3 L1d as CPUID 0x8000_001D subleaf 0 reports it: type 1, level 1, 2 sharing
        // (EAX[25:14] = 1), 8 ways, 1 partition, 64-byte lines, 64 sets = 32 KiB.
        let eax = 1 | (1 << 5) | (1 << 14);
        let ebx = (7 << 22) | 63;
        let leaf = decode_leaf(eax, ebx, 63).expect("a data cache");
        assert_eq!(
            leaf,
            CacheLeaf {
                level: 1,
                data: true,
                size: 32 << 10,
                sharing: 2
            }
        );
        assert_eq!(decode_leaf(0, ebx, 63), None);
        // Instruction caches are not data caches.
        assert!(!decode_leaf(2 | (1 << 5), ebx, 63).expect("a cache").data);
    }

    #[test]
    fn leaves_combine_into_per_core_sizes() {
        let leaf = |level, size, sharing| CacheLeaf {
            level,
            data: true,
            size,
            sharing,
        };
        let c = from_leaves(&[
            leaf(1, 32 << 10, 2),
            leaf(2, 512 << 10, 2),
            leaf(3, 32 << 20, 16),
        ])
        .expect("L1 and L2 present");
        assert_eq!(
            (c.l1d, c.l2, c.l3, c.l3_share),
            (32 << 10, 512 << 10, 32 << 20, 2 << 20)
        );
        // Without an L3 the share is the L2; without an L2 nothing is derived.
        let c = from_leaves(&[leaf(1, 32 << 10, 1), leaf(2, 1 << 20, 1)]).expect("present");
        assert_eq!(c.l3_share, 1 << 20);
        assert_eq!(from_leaves(&[leaf(1, 32 << 10, 1)]), None);
    }

    #[test]
    fn environment_sizes() {
        let c = parse_env("32K, 512K,8M").expect("well-formed");
        assert_eq!((c.l1d, c.l2, c.l3_share), (32 << 10, 512 << 10, 8 << 20));
        assert_eq!(
            parse_env("32768,524288,8388608").map(|c| c.l2),
            Some(512 << 10)
        );
        for bad in [
            "",
            "32K,512K",
            "32K,512K,8M,1",
            "0,512K,8M",
            "x,1,1",
            "2048M,1,1",
        ] {
            assert_eq!(parse_env(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn detection_gives_plausible_sizes() {
        let c = Caches::detect();
        assert!(c.l1d >= 4 << 10 && c.l1d <= 1 << 20, "{c:?}");
        assert!(c.l2 >= c.l1d, "{c:?}");
        assert!(c.l3_share >= c.l2, "{c:?}");
    }
}
