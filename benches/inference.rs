//! Folded versus unfolded inference of whole networks, through `Session::run`, with the same GEMM
//! in both modes (so the difference is what folding removes: the separate BN passes).
//!
//! Networks: seeded synthetic ones written with `bnfold::format::Writer` at bench time (never
//! committed) -- `tutorial` (1 -> BN -> 7 x 30 Dense+BN+ReLU -> 1, the shape of the lesson's
//! network), `tutorial_tanh` (the same with tanh, the lesson's activation), `wide` (784 -> 3 x 1024 Dense+BN+ReLU -> 10) and `big` (4096 -> 4 x 4096
//! Dense+BN+ReLU -> 4096) -- plus every `models/*.bnw` in the repository.
//!
//! `BNFOLD_BENCH_PAIRED=1` adds an interleaved folded/unfolded comparison (see [`paired`]).
//!
//! Throughput is in rows per second ("elem/s"). Environment: `BNFOLD_BENCH_QUICK=1` limits `big`
//! to batch 1 and 8; `BNFOLD_BENCH_BIG=1` runs `big` up to batch 1024 (one call is then about a
//! second on one core); `BNFOLD_BENCH_NETS=wide,big` picks networks.

use std::hint::black_box;
use std::time::Duration;

use bnfold::{Model, Options};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};

fn env_is(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

fn wanted(net: &str) -> bool {
    match std::env::var("BNFOLD_BENCH_NETS") {
        Ok(list) => list.split(',').any(|n| n.trim() == net),
        Err(_) => true,
    }
}

fn networks() -> Vec<(String, Model, Vec<usize>)> {
    let all = vec![1, 8, 64, 256, 1024];
    let big_batches = if env_is("BNFOLD_BENCH_BIG") {
        all.clone()
    } else if env_is("BNFOLD_BENCH_QUICK") {
        vec![1, 8]
    } else {
        vec![1, 8, 64]
    };
    use bnfold::Activation::{Relu, Tanh};
    // (name, inputs, BN on the input, hidden widths, activation, outputs, batch sizes)
    type Spec = (
        &'static str,
        usize,
        bool,
        Vec<usize>,
        bnfold::Activation,
        usize,
        Vec<usize>,
    );
    let specs: [Spec; 4] = [
        ("tutorial", 1, true, vec![30; 7], Relu, 1, all.clone()),
        ("tutorial_tanh", 1, true, vec![30; 7], Tanh, 1, all.clone()),
        ("wide", 784, false, vec![1024; 3], Relu, 10, all.clone()),
        ("big", 4096, false, vec![4096; 4], Relu, 4096, big_batches),
    ];
    let mut out = Vec::new();
    for (name, input, input_bn, hidden, act, output, batches) in specs {
        if !wanted(name) {
            continue;
        }
        let bytes = bnfold::synth::mlp(input, input_bn, &hidden, act, output, 42)
            .unwrap_or_else(|e| panic!("writing {name}: {e}"));
        let model = Model::from_bytes(&bytes).unwrap_or_else(|e| panic!("loading {name}: {e}"));
        out.push((name.to_owned(), model, batches));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "bnw"))
            .collect();
        paths.sort();
        for p in paths {
            let name = p
                .file_stem()
                .map_or("model".into(), |s| s.to_string_lossy().into_owned());
            if !wanted(&name) && std::env::var("BNFOLD_BENCH_NETS").is_ok() {
                continue;
            }
            match Model::load(&p) {
                Ok(m) => out.push((name, m, all.clone())),
                Err(e) => eprintln!("skipping {}: {e}", p.display()),
            }
        }
    }
    out
}

fn bench_inference(c: &mut Criterion) {
    // One thread: the global pool has one thread and calls are made directly, as a
    // single-threaded server makes them (no `install` hop). Two threads: a pool of two, entered
    // with `install`, as a server running inference on its own pool does.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global();
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap_or_else(|e| panic!("pool: {e}"));
    for (name, model, batches) in networks() {
        let mut g = c.benchmark_group(format!("inference/{name}"));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(1))
            .warm_up_time(Duration::from_millis(300));
        let plans = [
            ("folded", model.compile(&Options::folded())),
            ("unfolded", model.compile(&Options::unfolded())),
        ];
        for &batch in &batches {
            let x: Vec<f32> = (0..batch * model.input_features())
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            g.throughput(Throughput::Elements(batch as u64));
            for (mode, plan) in &plans {
                let plan = plan
                    .as_ref()
                    .unwrap_or_else(|e| panic!("compile {name}: {e}"));
                let mut session = plan.session_with_capacity(batch);
                g.bench_function(BenchmarkId::new(format!("{mode}/1t"), batch), |b| {
                    b.iter(|| black_box(session.run(black_box(&x), batch).map(|y| y[0])))
                });
                g.bench_function(BenchmarkId::new(format!("{mode}/2t"), batch), |b| {
                    b.iter(|| {
                        two.install(|| black_box(session.run(black_box(&x), batch).map(|y| y[0])))
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench_inference);

/// Folded against unfolded with the two calls interleaved: the clock and the memory bandwidth
/// of this shared machine drift over seconds, which moves two criterion groups measured a second
/// apart by more than folding moves them. Alternating the two modes call by call (at least 21
/// pairs and 0.5 s per shape, one thread), then comparing medians, cancels the drift. Run with
/// `BNFOLD_BENCH_PAIRED=1`; prints one `paired:` line per network and batch.
fn paired() {
    println!("paired: network batch | folded p50 | unfolded p50 | unfolded / folded");
    for (name, model, batches) in networks() {
        let (Ok(f), Ok(u)) = (
            model.compile(&Options::folded()),
            model.compile(&Options::unfolded()),
        ) else {
            continue;
        };
        for &batch in &batches {
            let x: Vec<f32> = (0..batch * model.input_features())
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let (mut sf, mut su) = (
                f.session_with_capacity(batch),
                u.session_with_capacity(batch),
            );
            let (mut tf, mut tu) = (Vec::new(), Vec::new());
            let start = std::time::Instant::now();
            // Warm both, then alternate.
            for _ in 0..3 {
                let _ = black_box(sf.run(&x, batch).map(|y| y[0]));
                let _ = black_box(su.run(&x, batch).map(|y| y[0]));
            }
            while tf.len() < 21 || start.elapsed() < Duration::from_millis(500) {
                for (s, t) in [(&mut sf, &mut tf), (&mut su, &mut tu)] {
                    let t0 = std::time::Instant::now();
                    let _ = black_box(s.run(black_box(&x), batch).map(|y| y[0]));
                    t.push(t0.elapsed().as_secs_f64());
                }
                if tf.len() >= 100_000 {
                    break;
                }
            }
            let med = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (mf, mu) = (med(&mut tf), med(&mut tu));
            println!(
                "paired: {name} {batch} | {:.3} us | {:.3} us | {:.3}",
                mf * 1e6,
                mu * 1e6,
                mu / mf
            );
        }
    }
}

fn main() {
    // One thread for the paired probe and the `1t` groups (see `bench_inference`).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global();
    benches();
    if std::env::var("BNFOLD_BENCH_PAIRED").is_ok_and(|v| v == "1") {
        paired();
    }
    Criterion::default().configure_from_args().final_summary();
}
