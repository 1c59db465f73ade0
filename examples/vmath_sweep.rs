//! The exhaustive accuracy sweep of the vector activations: every f32 in each function's useful
//! range, on every instruction-set path this CPU supports, against the f64 definition
//! (`Activation::eval_f64`; `f64::exp` for exp). Prints, per function and path, the largest error
//! in ulps (see `tests/vmath.rs` for the metric) and where it occurs, by region.
//!
//!     cargo run --release --example vmath_sweep [-- STRIDE [FUNCTION...]]
//!
//! STRIDE (default 1: every f32) steps through the bit patterns; FUNCTION (`exp`, `tanh`,
//! `sigmoid`, `gelu_erf`, `gelu_tanh`) restricts the sweep. One thread per range half; 30 to 80
//! seconds per function and path, about 10 minutes in all, on the 2-vCPU AMD EPYC of
//! `docs/PERFORMANCE.md`. The results are recorded in `docs/PERFORMANCE.md`,
//! section "Activation accuracy"; `tests/vmath.rs` asserts the same bounds on a strided subset.

use bnfold::kernels::activation::{apply_with, exp_with};
use bnfold::kernels::{Isa, KernelChoice};

#[path = "../tests/common/ulps.rs"]
mod ulps;
use ulps::{Func, Worst};

fn main() {
    let stride: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let only: Vec<String> = std::env::args().skip(2).collect();
    for f in Func::ALL {
        if !only.is_empty() && !only.iter().any(|n| n == f.name()) {
            continue;
        }
        for isa in Isa::supported() {
            let t0 = std::time::Instant::now();
            let (lo, hi) = f.range();
            // Negative half and positive half, on two threads.
            let halves = [(-0.0f32, lo), (0.0f32, hi)];
            let results: Vec<Vec<Worst>> = std::thread::scope(|s| {
                let hs: Vec<_> = halves
                    .iter()
                    .map(|&(from, to)| s.spawn(move || sweep(f, isa, from, to, stride)))
                    .collect();
                hs.into_iter().map(|h| h.join().expect("sweep")).collect()
            });
            let mut regions = ulps::regions(f);
            for r in results {
                for (w, acc) in r.into_iter().zip(regions.iter_mut()) {
                    acc.1.merge(&w);
                }
            }
            println!(
                "{:10} {:9} ({:.0} s)",
                f.name(),
                isa.name(),
                t0.elapsed().as_secs_f64()
            );
            for (name, w) in &regions {
                println!("    {name:40} {w}");
            }
        }
    }
}

/// Every `stride`-th f32 from `from` (a signed zero) to `to`, in chunks.
fn sweep(f: Func, isa: Isa, from: f32, to: f32, stride: u32) -> Vec<Worst> {
    let mut regions: Vec<Worst> = ulps::regions(f).into_iter().map(|r| r.1).collect();
    let sign = from.to_bits() & 0x8000_0000;
    let end = to.to_bits() & 0x7fff_ffff;
    let mut bits = 0u32;
    let mut xs = Vec::with_capacity(1 << 16);
    let mut ys = Vec::with_capacity(1 << 16);
    while bits <= end {
        xs.clear();
        while xs.len() < 1 << 16 && bits <= end {
            xs.push(f32::from_bits(sign | bits));
            bits = bits.saturating_add(stride);
            if bits == u32::MAX {
                break;
            }
        }
        ys.clear();
        ys.extend_from_slice(&xs);
        match f.activation() {
            Some(a) => apply_with(KernelChoice::Force(isa), a, &mut ys),
            None => exp_with(KernelChoice::Force(isa), &mut ys),
        }
        for (&x, &y) in xs.iter().zip(&ys) {
            let idx = ulps::region_of(f, x);
            regions[idx].record(x, y, f.reference(x), f.floor(x));
        }
    }
    regions
}
