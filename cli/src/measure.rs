//! Latency and throughput measurement of a model, folded and unfolded, for `bnfold bench`.
//!
//! Each measured call is one `Session::run` of a whole batch, timed on its own, so that the
//! percentiles describe what a serving thread sees. The plan runs inside a rayon pool of the
//! requested size (`pool.install`), which is also how a server runs inference on a pool of its own.

use std::time::{Duration, Instant};

use bnfold::kernels::KernelChoice;
use bnfold::{Mode, Model, Options};

/// What can stop a measurement.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Compiling or running the model failed.
    #[error(transparent)]
    Model(#[from] bnfold::Error),
    /// A thread pool of the requested size could not be started.
    #[error("cannot start a pool of {threads} threads: {source}")]
    Threads {
        /// Requested size.
        threads: usize,
        /// Why rayon refused.
        source: rayon::ThreadPoolBuildError,
    },
    /// A setting is out of range (the message says which).
    #[error("bad setting: {0}")]
    Config(String),
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Config {
    /// Rows per call.
    pub batches: Vec<usize>,
    /// Sizes of the rayon pool the plan runs in.
    pub threads: Vec<usize>,
    /// Modes to compare.
    pub modes: Vec<Mode>,
    /// Kernel path.
    pub kernel: KernelChoice,
    /// Precision of the packed dense weights.
    pub weights: bnfold::DType,
    /// Measure each configuration for at least this long (after warm-up) ...
    pub min_time: Duration,
    /// ... and at least this many calls ...
    pub min_iters: usize,
    /// ... but never more than this many calls.
    pub max_iters: usize,
    /// Seed of the random inputs.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            batches: vec![1, 8, 64],
            threads: vec![1],
            modes: vec![Mode::Folded, Mode::Unfolded],
            kernel: KernelChoice::Auto,
            weights: bnfold::DType::F32,
            min_time: Duration::from_millis(300),
            min_iters: 10,
            max_iters: 100_000,
            seed: 1,
        }
    }
}

/// One configuration's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measurement {
    /// `folded` or `unfolded`.
    pub mode: &'static str,
    /// Kernel path (`avx512`, `avx2`, `portable`).
    pub kernel: &'static str,
    /// Precision of the packed dense weights (`f32`, `f16`, `bf16`).
    pub weights: &'static str,
    /// Rows per call.
    pub batch: usize,
    /// Pool size.
    pub threads: usize,
    /// Calls timed.
    pub iters: usize,
    /// Median latency of one call, microseconds.
    pub p50_us: f64,
    /// 99th-percentile latency of one call, microseconds.
    pub p99_us: f64,
    /// Mean latency, microseconds.
    pub mean_us: f64,
    /// Rows per second at the median latency.
    pub rows_per_s: f64,
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Folded => "folded",
        Mode::Unfolded => "unfolded",
    }
}

/// The `p`-th percentile (0..=100) of sorted values, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Measure `model` in every configuration of `cfg`, in the order modes, threads, batches.
pub fn measure(model: &Model, cfg: &Config) -> Result<Vec<Measurement>, BenchError> {
    if cfg.batches.contains(&0) || cfg.threads.contains(&0) {
        return Err(BenchError::Config(
            "batch sizes and thread counts must be at least 1".into(),
        ));
    }
    if cfg.max_iters < cfg.min_iters.max(1) {
        return Err(BenchError::Config(
            "max iterations below the minimum".into(),
        ));
    }
    let mut out = Vec::new();
    for &mode in &cfg.modes {
        let opts = Options::default()
            .with_mode(mode)
            .with_kernel(cfg.kernel)
            .with_weights(cfg.weights);
        let plan = model.compile(&opts)?;
        for &threads in &cfg.threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|source| BenchError::Threads { threads, source })?;
            for &batch in &cfg.batches {
                let x = bnfold::synth::input(batch, plan.input_features(), 1.0, cfg.seed);
                let mut session = plan.session_with_capacity(batch);
                let times = pool.install(|| -> Result<Vec<f64>, bnfold::Error> {
                    // Warm-up: caches, page faults of the scratch, the pool's threads.
                    let warm = Instant::now();
                    while warm.elapsed() < cfg.min_time / 10 {
                        session.run(&x, batch)?;
                    }
                    let mut times = Vec::new();
                    let start = Instant::now();
                    while times.len() < cfg.max_iters
                        && (times.len() < cfg.min_iters || start.elapsed() < cfg.min_time)
                    {
                        let t = Instant::now();
                        std::hint::black_box(session.run(std::hint::black_box(&x), batch)?);
                        times.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    Ok(times)
                })?;
                let mut sorted = times.clone();
                sorted.sort_by(f64::total_cmp);
                let p50 = percentile(&sorted, 50.0);
                out.push(Measurement {
                    mode: mode_name(mode),
                    kernel: plan.kernel_isa().name(),
                    weights: cfg.weights.name(),
                    batch,
                    threads,
                    iters: times.len(),
                    p50_us: p50,
                    p99_us: percentile(&sorted, 99.0),
                    mean_us: times.iter().sum::<f64>() / times.len() as f64,
                    rows_per_s: batch as f64 / (p50 * 1e-6),
                });
            }
        }
    }
    Ok(out)
}

/// One load of a weight file, from its path to a ready plan, beside the floor: reading the file's
/// bytes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadMeasurement {
    /// Round, from 0. Round 0 may find the file outside the page cache; later rounds read it from
    /// memory.
    pub round: usize,
    /// Size of the file.
    pub file_bytes: u64,
    /// Reading the whole file through a 1 MiB buffer, milliseconds: the floor under any load.
    pub read_ms: f64,
    /// `Model::load`: map, checksum, validate, milliseconds.
    pub load_ms: f64,
    /// `Model::compile` of the folded plan: fold in f64, round, pack, milliseconds.
    pub compile_ms: f64,
    /// `load_ms + compile_ms`: path to a ready plan.
    pub total_ms: f64,
    /// Kernel path of the plan.
    pub kernel: &'static str,
    /// Precision of the packed dense weights.
    pub weights: &'static str,
    /// Bytes the plan's packed dense weights hold (`Plan::weight_bytes`).
    pub plan_weight_bytes: usize,
    /// Resident set of this process before its first load (the binary, its libraries and heap),
    /// bytes; `None` where the OS does not say (Linux's `/proc/self/status` only).
    pub base_rss_bytes: Option<u64>,
    /// Peak resident set of this process so far (Linux's `VmHWM`), bytes. After round 0 it is
    /// the peak of one load (each round drops its model and plan before the next, so later
    /// rounds do not raise it unless memory is not returned).
    pub peak_rss_bytes: Option<u64>,
}

/// A `kB` field (`VmRSS`, `VmHWM`) of `/proc/self/status`, in bytes; `None` elsewhere than Linux
/// or if the field is missing.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim_start_matches(':')
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// Load `path` and compile its folded plan `rounds` times, each after reading the file's bytes
/// once (the floor), with the kernel path and weight precision given.
pub fn measure_load(
    path: &std::path::Path,
    kernel: KernelChoice,
    weights: bnfold::DType,
    rounds: usize,
) -> Result<Vec<LoadMeasurement>, BenchError> {
    use std::io::Read;
    let base_rss_bytes = proc_status_bytes("VmRSS");
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let io = |source| bnfold::Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let t = Instant::now();
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut file_bytes = 0u64;
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => file_bytes += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e).into()),
            }
        }
        let read_ms = t.elapsed().as_secs_f64() * 1e3;
        drop(file);

        let t = Instant::now();
        let model = Model::load(path)?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let plan = model.compile(&Options::folded().with_kernel(kernel).with_weights(weights))?;
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        out.push(LoadMeasurement {
            round,
            file_bytes,
            read_ms,
            load_ms,
            compile_ms,
            total_ms: load_ms + compile_ms,
            kernel: plan.kernel_isa().name(),
            weights: weights.name(),
            plan_weight_bytes: plan.weight_bytes(),
            base_rss_bytes,
            peak_rss_bytes: proc_status_bytes("VmHWM"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn measures_every_configuration_of_a_synthetic_network() {
        let bytes = bnfold::synth::mlp(4, true, &[30, 30], bnfold::Activation::Relu, 2, 3).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        assert_eq!(model.input_features(), 4);
        let cfg = Config {
            batches: vec![1, 3],
            threads: vec![1, 2],
            min_time: Duration::from_millis(1),
            min_iters: 3,
            max_iters: 5,
            ..Config::default()
        };
        let m = measure(&model, &cfg).unwrap();
        assert_eq!(m.len(), 2 * 2 * 2);
        for r in &m {
            assert!((3..=5).contains(&r.iters), "{r:?}");
            assert!(r.p50_us > 0.0 && r.p50_us <= r.p99_us, "{r:?}");
        }
        let bad = Config {
            batches: vec![0],
            ..Config::default()
        };
        assert!(matches!(measure(&model, &bad), Err(BenchError::Config(_))));
    }
}
