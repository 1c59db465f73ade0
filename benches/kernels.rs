//! Kernel benchmarks, all reported as throughput in elements per second where one element is
//! one floating-point operation (so criterion's "Gelem/s" reads as GFLOP/s), except the memory
//! probe, which reports bytes per second.
//!
//! Groups (filter with `cargo bench --bench kernels -- GROUP`):
//! - `peak`: independent FMA chains per ISA on one and two threads: the machine's measured peak
//!   (`bnfold::kernels::probe::fma_once`, the probe `bnfold probe` reports);
//! - `membw`: single-core read bandwidth over a buffer much larger than L3
//!   (`bnfold::kernels::probe::read_once`);
//! - `sgemm`: square products with prepacked weights, every supported ISA, 1 and 2 threads, and
//!   the `matrixmultiply` crate (single thread) on the same shapes;
//! - `mlp`: dense-layer shapes (30x30, 784x1024, 1024x1024, 4096x4096) at batch 1..1024, best ISA.
//! - `activation`: tanh, sigmoid, both GELUs, exp and softmax over slices (elements per second),
//!   the scalar forms (`apply_scalar`, one libm call per element) against the vector code on
//!   every supported ISA, at 4096 elements (L1-resident) and on short slices (7 and 30);
//!   softmax over rows of 30 values.
//!
//! - `half`: half-precision packed weights (issue 12): the 4096x4096 layer and the `big` network
//!   (4096 -> 4 x (Dense 4096, BN, ReLU) -> Dense 4096, 336 MB of f32 weights) with f32, f16 and
//!   bf16 panels, best ISA, 1 and 2 threads; throughput in bytes of packed weights streamed per
//!   second, to set beside `membw` (run both: `cargo bench --bench kernels -- 'membw|half'`).
//!
//! - `paired` (not a criterion group; `BNFOLD_BENCH_PAIRED=1`): SGEMM as a fraction of the
//!   peak measured right before it, 1 and 2 threads (see [`paired`]).
//! - `half_interleaved` (not a criterion group; `BNFOLD_BENCH_HALF=1`): the `big` network with
//!   f32, f16 and bf16 weights in rotation, batches 1 to 64, 1 and 2 threads, with the read
//!   bandwidth measured in each round (see [`half_interleaved`]).
//!
//! Environment: `BNFOLD_BENCH_SIZES=128,256` restricts the square sizes (default
//! 128,256,512,1024,2048); `BNFOLD_BENCH_QUICK=1` drops the 2048 square and the 4096x4096 layer
//! above batch 64, for a short run on a shared machine.

use std::hint::black_box;
use std::time::Duration;

use bnfold::Activation;
use bnfold::kernels::activation as act;
use bnfold::kernels::{DenseKernel, Isa, KernelChoice, probe};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group};

fn quick() -> bool {
    std::env::var("BNFOLD_BENCH_QUICK").is_ok_and(|v| v == "1")
}

fn square_sizes() -> Vec<usize> {
    match std::env::var("BNFOLD_BENCH_SIZES") {
        Ok(s) => s.split(',').filter_map(|v| v.trim().parse().ok()).collect(),
        Err(_) if quick() => vec![128, 256, 512, 1024],
        Err(_) => vec![128, 256, 512, 1024, 2048],
    }
}

fn seeded(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap_or_else(|e| panic!("thread pool: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Peak probe: `bnfold::kernels::probe::fma_once`, independent FMA chains on the ISA's vectors
// (enough chains to cover the FMA latency times the number of FMA pipes), so that the throughput,
// not the latency, bounds the loop. The same probe is `bnfold probe`'s.

fn bench_peak(c: &mut Criterion) {
    let two = pool(2);
    let mut g = c.benchmark_group("peak");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for isa in Isa::supported() {
        g.throughput(Throughput::Elements(probe::fma_once_flops(isa)));
        g.bench_function(format!("{isa}/1t"), |bch| bch.iter(|| probe::fma_once(isa)));
        // Both threads run the probe at once: the machine's two-thread peak, which bounds what
        // two threads of any kernel can reach (on an SMT pair it is no more than one core's).
        g.throughput(Throughput::Elements(2 * probe::fma_once_flops(isa)));
        g.bench_function(format!("{isa}/2t"), |bch| {
            bch.iter(|| two.broadcast(|_| probe::fma_once(isa)))
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Memory bandwidth: `bnfold::kernels::probe::read_once`, a buffer summed with eight concurrent
// read streams (one per eighth of the buffer, as the batch-1 kernel reads eight weight panels side
// by side), the best ISA's vector loads. Sizes: 64 MiB, the f32 weights of a 4096x4096 layer (the
// batch-1 target compares against this), and 256 MiB (8x the L3).

fn bench_membw(c: &mut Criterion) {
    let isa = Isa::best();
    let mut g = c.benchmark_group("membw");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for mib in [64usize, 256] {
        let buf = seeded(mib << 18, 3);
        g.throughput(Throughput::Bytes(probe::read_once_bytes(isa, buf.len())));
        g.bench_function(
            BenchmarkId::new("read_1thread", format!("{mib}MiB")),
            |bch| bch.iter(|| probe::read_once(isa, black_box(&buf))),
        );
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Square SGEMM: C[m, n] = X[m, k] W[n, k]^T with W prepacked (as a loaded model's is).

fn bench_sgemm(c: &mut Criterion) {
    let pools = [(1, pool(1)), (2, pool(2))];
    let mut g = c.benchmark_group("sgemm");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    for s in square_sizes() {
        let x = seeded(s * s, 1);
        let w = seeded(s * s, 2);
        let bias = vec![0.0; s];
        let mut y = vec![0.0; s * s];
        g.throughput(Throughput::Elements((2 * s * s * s) as u64));
        for isa in Isa::supported() {
            let kern = DenseKernel::with_choice(s, s, &w, &bias, KernelChoice::Force(isa));
            for (t, p) in &pools {
                g.bench_function(BenchmarkId::new(format!("{isa}/{t}t"), s), |bch| {
                    bch.iter(|| p.install(|| kern.forward(black_box(&x), s, &mut y, &[])))
                });
            }
        }
        g.bench_function(BenchmarkId::new("matrixmultiply/1t", s), |bch| {
            bch.iter(|| {
                // SAFETY: `x` is `[s, s]` row-major (strides s, 1); `w` read as its transpose
                // (strides 1, s); `y` is `[s, s]` row-major; all three are s*s long.
                unsafe {
                    matrixmultiply::sgemm(
                        s,
                        s,
                        s,
                        1.0,
                        black_box(x.as_ptr()),
                        s as isize,
                        1,
                        w.as_ptr(),
                        1,
                        s as isize,
                        0.0,
                        y.as_mut_ptr(),
                        s as isize,
                        1,
                    )
                }
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Dense-layer shapes at serving batch sizes, best ISA, 1 and 2 threads.

fn bench_mlp(c: &mut Criterion) {
    let pools = [(1, pool(1)), (2, pool(2))];
    let mut g = c.benchmark_group("mlp");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    for &(k, n) in &[(30, 30), (784, 1024), (1024, 1024), (4096, 4096)] {
        let w = seeded(n * k, 4);
        let bias = seeded(n, 5);
        let kern = DenseKernel::with_choice(k, n, &w, &bias, KernelChoice::Auto);
        for batch in [1usize, 8, 64, 256, 1024] {
            if quick() && k == 4096 && batch > 64 {
                continue;
            }
            let x = seeded(batch * k, 6);
            let mut y = vec![0.0; batch * n];
            g.throughput(Throughput::Elements((2 * batch * k * n) as u64));
            if batch * k * n < bnfold::kernels::PARALLEL_MIN_MACS {
                // Never touches a pool: measure the plain call, as a server would make it.
                g.bench_function(
                    BenchmarkId::new(format!("{k}x{n}/{}/1t", kern.isa()), batch),
                    |bch| bch.iter(|| kern.forward(black_box(&x), batch, &mut y, &[])),
                );
                continue;
            }
            for (t, p) in &pools {
                g.bench_function(
                    BenchmarkId::new(format!("{k}x{n}/{}/{t}t", kern.isa()), batch),
                    |bch| {
                        bch.iter(|| p.install(|| kern.forward(black_box(&x), batch, &mut y, &[])))
                    },
                );
            }
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Activations over slices: scalar forms against the vector code per ISA. Each iteration gets a
// fresh copy of the inputs (not timed), so the values stay in [-5, 5] and never drift towards
// the saturated or special-value regions.

fn bench_activation(c: &mut Criterion) {
    let mut g = c.benchmark_group("activation");
    g.measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    let funcs: [(&str, Option<Activation>); 6] = [
        ("tanh", Some(Activation::Tanh)),
        ("sigmoid", Some(Activation::Sigmoid)),
        ("gelu_erf", Some(Activation::GeluErf)),
        ("gelu_tanh", Some(Activation::GeluTanh)),
        ("exp", None),
        ("softmax", Some(Activation::Softmax)),
    ];
    for len in [4096usize, 30, 7] {
        let src: Vec<f32> = seeded(len, 8).iter().map(|v| v * 10.0).collect();
        g.throughput(Throughput::Elements(len as u64));
        for (name, a) in funcs {
            // Softmax rows of 30 (of 7 at length 7); at 4096 the last 16 values are no row.
            let width = len.min(30);
            let run_scalar = |v: &mut Vec<f32>| match a {
                Some(Activation::Softmax) => act::softmax_rows_scalar(v, width),
                Some(a) => act::apply_scalar(a, v),
                None => v.iter_mut().for_each(|x| *x = x.exp()),
            };
            g.bench_function(BenchmarkId::new(format!("{name}/scalar"), len), |b| {
                b.iter_batched_ref(|| src.clone(), run_scalar, BatchSize::SmallInput)
            });
            for isa in Isa::supported() {
                let ch = KernelChoice::Force(isa);
                let run = |v: &mut Vec<f32>| match a {
                    Some(Activation::Softmax) => act::softmax_rows_with(ch, v, width),
                    Some(a) => act::apply_with(ch, a, v),
                    None => act::exp_with(ch, v),
                };
                g.bench_function(BenchmarkId::new(format!("{name}/{isa}"), len), |b| {
                    b.iter_batched_ref(|| src.clone(), run, BatchSize::SmallInput)
                });
            }
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Half-precision weights: the same products with f32, f16 and bf16 panels.

const WEIGHT_TYPES: [bnfold::DType; 3] =
    [bnfold::DType::F32, bnfold::DType::F16, bnfold::DType::BF16];

/// The network: 4096 -> 4 x (Dense 4096, BN, ReLU) -> Dense 4096, seeded.
fn big_network() -> bnfold::Model {
    let bytes = bnfold::synth::mlp(4096, false, &[4096; 4], Activation::Relu, 4096, 7)
        .unwrap_or_else(|e| panic!("writing the network: {e}"));
    bnfold::Model::from_bytes(&bytes).unwrap_or_else(|e| panic!("loading the network: {e}"))
}

fn bench_half(c: &mut Criterion) {
    let pools = [(1, pool(1)), (2, pool(2))];
    let mut g = c.benchmark_group("half");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    // One 4096x4096 layer.
    let (k, n) = (4096usize, 4096usize);
    let w = seeded(n * k, 4);
    let bias = seeded(n, 5);
    let batches: &[usize] = if quick() {
        &[1, 8, 64]
    } else {
        &[1, 8, 16, 32, 64]
    };
    for dtype in WEIGHT_TYPES {
        let kern = DenseKernel::with_weights(k, n, &w, &bias, KernelChoice::Auto, dtype);
        g.throughput(Throughput::Bytes(kern.weight_bytes() as u64));
        for &batch in batches {
            let x = seeded(batch * k, 6);
            let mut y = vec![0.0; batch * n];
            for (t, p) in &pools {
                g.bench_function(
                    BenchmarkId::new(format!("{k}x{n}/{dtype}/{}/{t}t", kern.isa()), batch),
                    |bch| {
                        bch.iter(|| p.install(|| kern.forward(black_box(&x), batch, &mut y, &[])))
                    },
                );
            }
        }
    }
    // The whole network, batch 1 and 8.
    let model = big_network();
    for dtype in WEIGHT_TYPES {
        let plan = model
            .compile(&bnfold::Options::folded().with_weights(dtype))
            .unwrap_or_else(|e| panic!("{dtype}: {e}"));
        g.throughput(Throughput::Bytes(plan.weight_bytes() as u64));
        for batch in [1usize, 8] {
            let x = seeded(batch * 4096, 6);
            for (t, p) in &pools {
                let mut session = plan.session_with_capacity(batch);
                g.bench_function(
                    BenchmarkId::new(format!("big/{dtype}/{}/{t}t", plan.kernel_isa()), batch),
                    |bch| {
                        bch.iter(|| {
                            p.install(|| {
                                black_box(session.run(black_box(&x), batch).map(|y| y[0]).ok())
                            })
                        })
                    },
                );
            }
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_peak,
    bench_membw,
    bench_sgemm,
    bench_mlp,
    bench_activation,
    bench_half
);

/// Best of `n` timings of `f`, seconds.
fn best_of(n: usize, mut f: impl FnMut()) -> f64 {
    (0..n)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Fractions of peak measured in pairs: the clock of a shared virtual machine drifts by 20% and
/// more between criterion groups, so each SGEMM timing is taken right after a peak timing of the
/// same ISA, and the ratio of the two (best of 3 each, 5 rounds, median ratio) is printed.
/// Run with `BNFOLD_BENCH_PAIRED=1`.
fn paired() {
    let (one, two) = (pool(1), pool(2));
    let sizes: Vec<usize> = square_sizes().into_iter().filter(|&s| s >= 512).collect();
    println!(
        "paired: isa size | 1t GFLOP/s, fraction of 1t peak | 2t GFLOP/s, 2t/1t, fraction of 2t peak"
    );
    for isa in Isa::supported() {
        for &s in &sizes {
            let x = seeded(s * s, 1);
            let w = seeded(s * s, 2);
            let kern = DenseKernel::with_choice(s, s, &w, &vec![0.0; s], KernelChoice::Force(isa));
            let mut y = vec![0.0; s * s];
            let flops = 2.0 * (s * s * s) as f64;
            let pf = probe::fma_once_flops(isa) as f64;
            let mut rows = Vec::new();
            for _ in 0..5 {
                let p1 = pf
                    / best_of(3, || {
                        black_box(probe::fma_once(isa));
                    });
                let g1 = flops / best_of(3, || one.install(|| kern.forward(&x, s, &mut y, &[])));
                let p2 = 2.0 * pf
                    / best_of(3, || {
                        black_box(two.broadcast(|_| probe::fma_once(isa)));
                    });
                let g2 = flops / best_of(3, || two.install(|| kern.forward(&x, s, &mut y, &[])));
                rows.push((g1 / p1, g1, g2, g2 / g1, g2 / p2));
            }
            rows.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (f1, g1, g2, sc, f2) = rows[rows.len() / 2];
            println!(
                "paired: {isa} {s} | {:.1}, {:.0}% | {:.1}, {:.2}x, {:.0}%",
                g1 / 1e9,
                f1 * 100.0,
                g2 / 1e9,
                sc,
                f2 * 100.0
            );
        }
    }
}

/// The median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The 1-minute load average, from `/proc/loadavg` (NaN where there is none).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Half-precision weights against f32 on a shared machine: the `big` network compiled three times
/// (f32, f16, bf16 weights), then `ROUNDS` rounds, each measuring the single-core read bandwidth
/// (256 MiB, 8 streams, best of 3) and then, for every batch and thread count, the three plans in
/// rotating order (median of `CALLS` calls each). Prints per batch and thread count the median
/// over rounds of each plan's time, the speed-ups over f32, and the weight bytes per second each
/// plan streams beside the median measured bandwidth. Run with `BNFOLD_BENCH_HALF=1`
/// (`BNFOLD_BENCH_HALF_BATCHES=1,8` to pick batches).
fn half_interleaved() {
    const ROUNDS: usize = 5;
    const CALLS: usize = 5;
    let batches: Vec<usize> = match std::env::var("BNFOLD_BENCH_HALF_BATCHES") {
        Ok(s) => s.split(',').filter_map(|v| v.trim().parse().ok()).collect(),
        Err(_) => vec![1, 2, 4, 8, 16, 32, 64],
    };
    let model = big_network();
    let plans: Vec<bnfold::Plan> = WEIGHT_TYPES
        .iter()
        .map(|&d| {
            model
                .compile(&bnfold::Options::folded().with_weights(d))
                .unwrap_or_else(|e| panic!("{d}: {e}"))
        })
        .collect();
    drop(model);
    let pools = [(1usize, pool(1)), (2, pool(2))];
    let x = seeded(batches.iter().max().copied().unwrap_or(1) * 4096, 6);
    let buf = seeded(256 << 18, 3);
    let load0 = load_average();
    // times[batch][threads][dtype] over rounds, seconds.
    let mut times = vec![vec![vec![Vec::new(); 3]; pools.len()]; batches.len()];
    let mut bw = Vec::new();
    for round in 0..ROUNDS {
        let t = best_of(3, || {
            black_box(probe::read_once(Isa::best(), black_box(&buf)));
        });
        bw.push(probe::read_once_bytes(Isa::best(), buf.len()) as f64 / t);
        for (bi, &batch) in batches.iter().enumerate() {
            for (ti, (_, p)) in pools.iter().enumerate() {
                for j in 0..3 {
                    let d = (round + j) % 3;
                    let mut s = plans[d].session_with_capacity(batch);
                    let xs = &x[..batch * 4096];
                    p.install(|| {
                        black_box(s.run(xs, batch).map(|y| y[0]).ok());
                        let mut v: Vec<f64> = (0..CALLS)
                            .map(|_| {
                                let t = std::time::Instant::now();
                                black_box(s.run(black_box(xs), batch).map(|y| y[0]).ok());
                                t.elapsed().as_secs_f64()
                            })
                            .collect();
                        times[bi][ti][d].push(median(&mut v));
                    });
                }
            }
        }
    }
    let load1 = load_average();
    let membw = median(&mut bw);
    println!(
        "half: big network, {} path, {ROUNDS} rounds x {CALLS} calls, load average {load0:.2} -> {load1:.2}; \
         read bandwidth (256 MiB, 1 thread) median {:.1} GB/s",
        plans[0].kernel_isa(),
        membw / 1e9
    );
    println!(
        "half: weight bytes: f32 {:.1} MB, f16 {:.1} MB, bf16 {:.1} MB",
        plans[0].weight_bytes() as f64 / 1e6,
        plans[1].weight_bytes() as f64 / 1e6,
        plans[2].weight_bytes() as f64 / 1e6
    );
    println!(
        "half: batch threads | f32 ms  f16 ms  bf16 ms | f16 x  bf16 x | GB/s streamed f32 f16 bf16"
    );
    for (bi, &batch) in batches.iter().enumerate() {
        for (ti, (t, _)) in pools.iter().enumerate() {
            let m: Vec<f64> = (0..3).map(|d| median(&mut times[bi][ti][d])).collect();
            let gbs = |d: usize| plans[d].weight_bytes() as f64 / m[d] / 1e9;
            println!(
                "half: {batch:>5} {t:>7} | {:>6.2} {:>7.2} {:>7.2} | {:>5.2} {:>6.2} | {:>5.1} {:>5.1} {:>5.1}",
                m[0] * 1e3,
                m[1] * 1e3,
                m[2] * 1e3,
                m[0] / m[1],
                m[0] / m[2],
                gbs(0),
                gbs(1),
                gbs(2)
            );
        }
    }
}

fn main() {
    if std::env::var("BNFOLD_BENCH_HALF").is_ok_and(|v| v == "1") {
        half_interleaved();
    }
    benches();
    if std::env::var("BNFOLD_BENCH_PAIRED").is_ok_and(|v| v == "1") {
        paired();
    }
    Criterion::default().configure_from_args().final_summary();
}
