//! Machine probes: the FMA peak and the read bandwidth this machine gives right now, on a chosen
//! number of threads, so that a benchmark can set its figures beside them (fractions of peak and
//! of bandwidth) measured in the same run, under the same load.
//!
//! - FMA peak: [`FMA_CHAINS`] independent accumulators, each a chain of `a * x + b` on the
//!   instruction set's vectors (enough chains to cover the FMA latency times the number of FMA
//!   pipes: 4 cycles x 2 pipes on current x86 cores), so that the throughput of the FMA units,
//!   not their latency, bounds the loop. Counted as two floating-point operations per lane per
//!   FMA. On the portable path (`wide`, instructions fixed at compile time) an FMA may be a
//!   multiply and an add; it is counted the same.
//! - Read bandwidth: a buffer summed with [`READ_STREAMS`] concurrent read streams (one per
//!   eighth of the buffer, as the batch-1 kernel reads eight weight panels side by side), one
//!   vector load per stream per step. With several threads, each thread reads its own contiguous
//!   part of one buffer (as the dense kernel splits a layer's weights between threads), and the
//!   figure is the whole buffer over the wall time of the slowest.
//!
//! Each duration-based probe runs rounds of work on every thread at once (a rayon pool of its own
//! of `threads` threads, [`rayon::ThreadPool::broadcast`]), timed from the calling thread, until
//! the duration has passed (and at least three rounds), and reports the best round: a peak is a
//! maximum, and noise (a neighbour's process, a frequency dip) only ever slows a round down.
//!
//! A 2-thread peak about twice the 1-thread peak means two real cores; about equal means the two
//! threads share one core (SMT siblings) or a neighbour is busy on the other.
//!
//! - Kernel rate: the dense kernel itself ([`DenseKernel::forward`]) on a layer that lives in
//!   the caches ([`KERNEL_PROBE`]: 256 KiB of packed weights, 64 KiB of inputs), on a pool of
//!   `threads` (`bnfold probe` reports one thread: on two, rayon's hand-off and the second
//!   vCPU's comings and goings make the figure vary more than the machine's state does). Its
//!   ratio to the FMA peak is what the kernels can reach on this machine right now: a neighbour
//!   that slows code which loads as it multiplies (shared caches or load ports) leaves the
//!   register-only FMA probe at its peak but shows here (on the AVX2 machine of
//!   `docs/PERFORMANCE.md`, a 1024 x 1024 layer at batch 256 ran at 94% of the FMA peak in a
//!   quiet window and at 55-62% for twenty minutes while the FMA probe stayed at its peak).

use std::hint::black_box;
use std::time::{Duration, Instant};

use super::DenseKernel;
use super::gemm::Family;
use super::isa::{Isa, KernelChoice};
use super::simd::{Simd, lanes};

/// Independent FMA chains of the peak probe.
pub const FMA_CHAINS: usize = 12;

/// Steps of each chain in one [`fma_once`] run.
pub const FMA_STEPS: usize = 100_000;

/// Concurrent read streams of the bandwidth probe.
pub const READ_STREAMS: usize = 8;

/// Rounds every duration-based probe runs at least (after one calibration round).
const MIN_ROUNDS: usize = 3;

/// The layer of the kernel-rate probe: `(inputs, outputs, batch)`. 256 x 256 f32 weights (256
/// KiB packed, within the L2 of every x86-64 server core of the last decade) at batch 64 (64 KiB
/// of inputs): compute-bound, on the unpacked driver, split by features on two threads.
pub const KERNEL_PROBE: (usize, usize, usize) = (256, 256, 64);

/// The path `isa` runs on here: itself if supported, else the best supported one (as
/// [`KernelChoice::Force`]). Every dispatch below goes through it.
fn resolve(isa: Isa) -> Isa {
    KernelChoice::Force(isa).resolve()
}

/// One FMA-chain run.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
unsafe fn fma_chains<V: Simd>(seed: f32) -> f32 {
    // SAFETY: here and below, the S-2 methods' contract is the caller's: the CPU supports `V`.
    let (a, b) = unsafe { (V::splat(0.999_999), V::splat(1e-7)) };
    // SAFETY: as above.
    let mut acc = [unsafe { V::splat(seed) }; FMA_CHAINS];
    for _ in 0..FMA_STEPS {
        for c in acc.iter_mut() {
            // SAFETY: as above.
            *c = unsafe { V::fma(*c, a, b) };
        }
    }
    // SAFETY: as above.
    let mut s = unsafe { V::zero() };
    for c in acc {
        // SAFETY: as above.
        s = unsafe { V::add(s, c) };
    }
    // SAFETY: as above.
    unsafe { sum_lanes(s) }
}

/// The lanes of `v` summed in scalar.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
unsafe fn sum_lanes<V: Simd>(v: V) -> f32 {
    // SAFETY: the CPU supports `V` (caller).
    let all = unsafe { lanes(v) };
    all[..V::LANES].iter().sum()
}

/// The sum of `buf` (in an order of its own), read as [`READ_STREAMS`] streams of whole vectors;
/// the tail that does not fill a vector in every stream is not read.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
unsafe fn read_streams<V: Simd>(buf: &[f32]) -> f32 {
    let part = buf.len() / READ_STREAMS / V::LANES * V::LANES;
    let p = buf.as_ptr();
    // SAFETY: the caller's contract, the CPU supports `V`.
    let mut acc = [unsafe { V::zero() }; READ_STREAMS];
    let mut i = 0;
    while i < part {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: `j * part + i + LANES <= READ_STREAMS * part <= buf.len()` (`i` steps by
            // LANES below `part`, a multiple of LANES), so the LANES values loaded are inside
            // `buf`; the CPU supports `V` (caller).
            *a = unsafe { V::add(*a, V::load(p.add(j * part + i))) };
        }
        i += V::LANES;
    }
    // SAFETY: as above.
    let mut s = unsafe { V::zero() };
    for a in acc {
        // SAFETY: as above.
        s = unsafe { V::add(s, a) };
    }
    // SAFETY: as above.
    unsafe { sum_lanes(s) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::arch::x86_64::{avx2::Avx2, avx512::Avx512};

    /// [`super::fma_chains`] on AVX-512F.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma_avx512(seed: f32) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { super::fma_chains::<Avx512>(seed) }
    }

    /// [`super::fma_chains`] on AVX2 + FMA.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C (the `Avx2` type's features).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn fma_avx2(seed: f32) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { super::fma_chains::<Avx2>(seed) }
    }

    /// [`super::read_streams`] on AVX-512F.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn read_avx512(buf: &[f32]) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { super::read_streams::<Avx512>(buf) }
    }

    /// [`super::read_streams`] on AVX2.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn read_avx2(buf: &[f32]) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { super::read_streams::<Avx2>(buf) }
    }
}

/// One run of the FMA chains of `isa` on the calling thread (an unsupported path runs the best
/// supported one instead, as [`KernelChoice::Force`]): [`fma_once_flops`] floating-point
/// operations. Returns a value that depends on every operation (pass it to
/// [`std::hint::black_box`]). For a benchmark harness that does its own timing; see
/// [`fma_peak_gflops`] for a figure.
pub fn fma_once(isa: Isa) -> f32 {
    use super::arch::portable::Portable;
    let seed = black_box(1.0);
    match resolve(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `resolve` returned AVX-512, so `Isa::is_supported` said the CPU has AVX-512F.
        Isa::Avx512 => unsafe { x86::fma_avx512(seed) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `resolve` returned AVX2, so the CPU has AVX2, FMA and F16C.
        Isa::Avx2 => unsafe { x86::fma_avx2(seed) },
        // SAFETY: the portable vector runs on every CPU (its instructions are fixed at compile
        // time for the target).
        _ => unsafe { fma_chains::<Portable>(seed) },
    }
}

/// Floating-point operations of one [`fma_once`] run of `isa` (of the path it resolves to): two
/// per lane per FMA.
pub fn fma_once_flops(isa: Isa) -> u64 {
    let lanes = Family::of(resolve(isa)).lanes as u64;
    FMA_STEPS as u64 * FMA_CHAINS as u64 * lanes * 2
}

/// Read `buf` once with the vector loads of `isa` (an unsupported path runs the best supported
/// one), [`READ_STREAMS`] streams side by side; returns a value that depends on what was read.
/// Reads [`read_once_bytes`]`(isa, buf.len())` bytes (all of `buf` but a tail of less than
/// `READ_STREAMS` vectors). For a benchmark harness that does its own timing; see
/// [`read_bandwidth_gbs`] for a figure.
pub fn read_once(isa: Isa, buf: &[f32]) -> f32 {
    use super::arch::portable::Portable;
    match resolve(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `resolve` returned AVX-512, so the CPU has AVX-512F.
        Isa::Avx512 => unsafe { x86::read_avx512(buf) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `resolve` returned AVX2, so the CPU has AVX2, FMA and F16C.
        Isa::Avx2 => unsafe { x86::read_avx2(buf) },
        // SAFETY: the portable vector runs on every CPU.
        _ => unsafe { read_streams::<Portable>(buf) },
    }
}

/// Bytes [`read_once`] reads of a buffer of `len` f32 on `isa`.
pub fn read_once_bytes(isa: Isa, len: usize) -> u64 {
    let lanes = Family::of(resolve(isa)).lanes;
    (len / READ_STREAMS / lanes * lanes * READ_STREAMS * 4) as u64
}

/// A pool of `threads` threads (at least one) of the probe's own.
fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("bnfold-probe-{i}"))
        .build()
        .unwrap_or_else(|e| panic!("starting {threads} probe threads: {e}"))
}

/// The best rate, units per second, of rounds of `work(thread, reps)` run on every thread of
/// `pool` at once, each call doing `reps` repetitions of `units` units ([`best_of_rounds`]).
fn best_rate(
    pool: &rayon::ThreadPool,
    duration: Duration,
    units: f64,
    work: impl Fn(usize, usize) + Sync,
) -> f64 {
    let threads = pool.current_num_threads();
    best_of_rounds(duration, threads as f64 * units, |reps| {
        let t = Instant::now();
        pool.broadcast(|ctx| work(ctx.index(), reps));
        t.elapsed().as_secs_f64()
    })
}

/// The best rate, units per second, of rounds timed by `round(reps)` (seconds for `reps`
/// repetitions of `units` units): the first round (one repetition) warms up and calibrates `reps`
/// so that a round takes about an eighth of `duration`; then rounds run until `duration` has
/// passed, and at least [`MIN_ROUNDS`].
fn best_of_rounds(duration: Duration, units: f64, mut round: impl FnMut(usize) -> f64) -> f64 {
    let first = round(1).max(1e-9);
    let reps = ((duration.as_secs_f64() / 8.0 / first).ceil() as usize).clamp(1, 1 << 20);
    let start = Instant::now();
    let mut best = 0.0f64;
    let mut rounds = 0;
    while rounds < MIN_ROUNDS || start.elapsed() < duration {
        let t = round(reps);
        best = best.max(reps as f64 * units / t.max(1e-9));
        rounds += 1;
    }
    best
}

/// The FMA peak of `isa` (an unsupported path measures the best supported one) on `threads`
/// threads running at once, GFLOP/s: the best round of [`fma_once`] runs on every thread,
/// measured for about `duration` (at least three rounds; a few milliseconds is enough for a
/// rough figure, a few hundred for a steady one).
pub fn fma_peak_gflops(isa: Isa, threads: usize, duration: Duration) -> f64 {
    let isa = resolve(isa);
    let pool = pool(threads);
    let flops = fma_once_flops(isa) as f64;
    best_rate(&pool, duration, flops, |_, reps| {
        for _ in 0..reps {
            black_box(fma_once(isa));
        }
    }) / 1e9
}

/// The read bandwidth on `threads` threads at once, GB/s (1e9 bytes per second): a buffer of
/// about `bytes` bytes (rounded up to whole vectors for every stream of every thread), each thread
/// reading its own contiguous part with [`read_once`] on the vectors of `isa` (an unsupported
/// path uses the best supported one), best round over about `duration` (at least three rounds
/// after one warm-up pass). Make `bytes` several times the last-level cache for the memory's
/// bandwidth (256 MiB is); the buffer is allocated, written (every page faulted in, no zero
/// page) and freed by the call.
pub fn read_bandwidth_gbs(isa: Isa, threads: usize, bytes: usize, duration: Duration) -> f64 {
    let isa = resolve(isa);
    let pool = pool(threads);
    let threads = pool.current_num_threads();
    // Whole vectors for every stream of every thread: 16 lanes covers every path.
    let unit = threads * READ_STREAMS * 16;
    let len = (bytes / 4).max(1).div_ceil(unit) * unit;
    // Non-zero values, written: a zeroed allocation could map every page to the one zero page,
    // which reads from cache.
    let buf = vec![1.0f32; len];
    let part = len / threads;
    let read = read_once_bytes(isa, part) as f64;
    best_rate(&pool, duration, read, |t, reps| {
        let mine = &buf[t * part..(t + 1) * part];
        for _ in 0..reps {
            black_box(read_once(isa, black_box(mine)));
        }
    }) / 1e9
}

/// Floating-point operations of one call of the kernel-rate probe's layer: `2 * inputs *
/// outputs * batch` ([`KERNEL_PROBE`]).
pub fn kernel_probe_flops() -> u64 {
    let (k, n, batch) = KERNEL_PROBE;
    2 * (k * n * batch) as u64
}

/// The rate of the dense kernel of `isa` (an unsupported path runs the best supported one) on
/// [`KERNEL_PROBE`]'s layer, GFLOP/s, on a pool of `threads` threads (the kernel splits the layer
/// between them as it does in a plan): the best round over about `duration` (at least three
/// rounds after one calibration round), as the other probes.
pub fn kernel_gflops(isa: Isa, threads: usize, duration: Duration) -> f64 {
    let isa = resolve(isa);
    let (k, n, batch) = KERNEL_PROBE;
    // Small exact values (multiples of 1/64 in [-1/8, 1/8]): no overflow, no subnormals.
    let value = |i: usize| ((i % 17) as f32 - 8.0) / 64.0;
    let w: Vec<f32> = (0..k * n).map(value).collect();
    let x: Vec<f32> = (0..batch * k).map(|i| value(i / 3)).collect();
    let kern = DenseKernel::with_choice(k, n, &w, &vec![0.0; n], KernelChoice::Force(isa));
    let mut y = vec![0.0f32; batch * n];
    let pool = pool(threads);
    best_of_rounds(duration, kernel_probe_flops() as f64, |reps| {
        let t = Instant::now();
        pool.install(|| {
            for _ in 0..reps {
                kern.forward(black_box(&x), batch, &mut y, &[]);
            }
        });
        black_box(&y);
        t.elapsed().as_secs_f64()
    }) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every supported path, and each one forced (an unsupported one falls back).
    fn paths() -> Vec<Isa> {
        Isa::ALL.to_vec()
    }

    #[test]
    fn one_fma_run_is_deterministic_and_counted_by_lanes() {
        for isa in paths() {
            let a = fma_once(isa);
            assert!(a.is_finite() && a > 0.0, "{isa}: {a}");
            assert_eq!(a.to_bits(), fma_once(isa).to_bits(), "{isa}");
            let lanes = Family::of(resolve(isa)).lanes as u64;
            assert_eq!(fma_once_flops(isa), 2 * lanes * 12 * 100_000);
        }
    }

    #[test]
    fn one_read_sums_what_it_reads() {
        for isa in paths() {
            // 1000 values: the tail past whole vectors of every stream is not read.
            let buf = vec![0.5f32; 1000];
            let lanes = Family::of(resolve(isa)).lanes;
            let read = 1000 / READ_STREAMS / lanes * lanes * READ_STREAMS;
            assert_eq!(read_once_bytes(isa, buf.len()), 4 * read as u64);
            assert_eq!(read_once(isa, &buf), 0.5 * read as f32, "{isa}");
            assert_eq!(read_once(isa, &[]), 0.0);
            assert_eq!(read_once(isa, &[1.0; 7]), 0.0);
        }
    }

    #[test]
    fn peak_is_finite_positive_and_plausible() {
        let short = Duration::from_millis(5);
        for isa in Isa::supported() {
            for threads in [1, 2] {
                let g = fma_peak_gflops(isa, threads, short);
                // From a loaded single core of an old or emulated machine to a whole server socket.
                assert!(
                    g.is_finite() && (0.05..100_000.0).contains(&g),
                    "{isa} {threads}t: {g}"
                );
            }
        }
    }

    #[test]
    fn kernel_rate_is_finite_positive_and_plausible() {
        assert_eq!(kernel_probe_flops(), 2 * 256 * 256 * 64);
        let short = Duration::from_millis(5);
        for isa in Isa::supported() {
            for threads in [1, 2] {
                let g = kernel_gflops(isa, threads, short);
                assert!(
                    g.is_finite() && (0.01..100_000.0).contains(&g),
                    "{isa} {threads}t: {g}"
                );
            }
        }
    }

    #[test]
    fn bandwidth_is_finite_positive_and_plausible() {
        let short = Duration::from_millis(5);
        for threads in [1, 2] {
            // 8 MiB: quick; whatever level of the hierarchy holds it.
            let g = read_bandwidth_gbs(Isa::best(), threads, 8 << 20, short);
            assert!(
                g.is_finite() && (0.05..100_000.0).contains(&g),
                "{threads}t: {g}"
            );
        }
        // A size smaller than one vector per stream per thread is rounded up, not refused.
        let g = read_bandwidth_gbs(Isa::Portable, 2, 1, short);
        assert!(g.is_finite() && g > 0.0, "{g}");
    }
}
