//! The `bnfold bench` subcommand: argument parsing and printing over `crate::measure`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Arguments of `bnfold bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A bnfold weight file (.bnw).
    file: PathBuf,
    /// Rows per call, comma-separated (each 1..=1000000, and within --max-memory-mib).
    #[arg(long, value_delimiter = ',', default_value = "1,8,64",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch: Vec<u32>,
    /// Thread-pool sizes to run in, comma-separated (each 1..=1024).
    #[arg(long = "pool", value_delimiter = ',', default_value = "1",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pool: Vec<u16>,
    /// Only the folded path.
    #[arg(long, conflicts_with = "unfolded_only")]
    folded_only: bool,
    /// Only the unfolded path.
    #[arg(long)]
    unfolded_only: bool,
    /// Kernel path (an unsupported one falls back to auto's).
    #[arg(long, default_value = "auto", value_parser = crate::kernel_names())]
    kernel: String,
    /// Minimum measuring time per configuration, milliseconds (1..=600000).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    time_ms: u64,
    /// Memory budget for one configuration's input and session buffers, in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    max_memory_mib: u64,
    /// Precision of the packed dense weights: f32, f16 or bf16.
    #[arg(long, default_value = "f32", value_parser = crate::convert::parse_dtype)]
    weights: bnfold::DType,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Measure loading instead of inference: from the path to a ready folded plan (map, checksum
    /// and validate; fold and pack), beside the time to read the file's bytes, with the peak
    /// resident memory of the process (Linux).
    #[arg(long, conflicts_with_all = ["batch", "pool", "folded_only", "unfolded_only", "time_ms", "max_memory_mib"])]
    load: bool,
    /// Loads to measure with --load (1..=1000); the peak memory is that of one load.
    #[arg(long, default_value_t = 3, requires = "load",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
}

/// `bnfold bench --load`: print each round and the medians, or JSON.
fn run_load(args: &BenchArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let kernel = crate::kernel_choice(&args.kernel);
    let rounds =
        bnfold_cli::measure::measure_load(&args.file, kernel, args.weights, args.rounds as usize)
            .map_err(|e| format!("{}: {e}", args.file.display()))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&rounds)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mb = |b: Option<u64>| b.map_or("-".to_string(), |b| format!("{:.1}", b as f64 / 1e6));
    outln!(
        "{:>5} {:>10} {:>10} {:>12} {:>10} {:>14}",
        "round",
        "read ms",
        "load ms",
        "compile ms",
        "total ms",
        "peak RSS MB"
    );
    for r in &rounds {
        outln!(
            "{:>5} {:>10.1} {:>10.1} {:>12.1} {:>10.1} {:>14}",
            r.round,
            r.read_ms,
            r.load_ms,
            r.compile_ms,
            r.total_ms,
            mb(r.peak_rss_bytes)
        );
    }
    // The p50 of `bench`'s latencies, over the rounds.
    let median = |f: fn(&bnfold_cli::measure::LoadMeasurement) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        bnfold_cli::measure::percentile(&v, 50.0)
    };
    // `rounds` holds at least one measurement: --rounds is at least 1.
    let first = &rounds[0];
    outln!(
        "{} ({:.1} MB), kernel {}, {} weights ({:.1} MB packed): median {:.1} ms from path to plan, \
         {:.1} ms to read the file; peak resident {} MB ({} MB before loading)",
        args.file.display(),
        first.file_bytes as f64 / 1e6,
        first.kernel,
        first.weights,
        first.plan_weight_bytes as f64 / 1e6,
        median(|r| r.total_ms),
        median(|r| r.read_ms),
        mb(first.peak_rss_bytes),
        mb(first.base_rss_bytes)
    );
    Ok(ExitCode::SUCCESS)
}

/// `bnfold bench`: measure with `bnfold::bench` and print a table or JSON.
pub fn run(args: &BenchArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if args.load {
        return run_load(args);
    }
    let kernel = crate::kernel_choice(&args.kernel);
    let modes = match (args.folded_only, args.unfolded_only) {
        (true, _) => vec![bnfold::Mode::Folded],
        (_, true) => vec![bnfold::Mode::Unfolded],
        _ => vec![bnfold::Mode::Folded, bnfold::Mode::Unfolded],
    };
    let model = crate::load_model(&args.file)?;
    // Each configuration holds its input and a session's two buffers of the widest layer.
    let widest = model.max_width() as u64;
    let per_row = 4 * (model.input_features() as u64 + 2 * widest);
    let budget = args.max_memory_mib.saturating_mul(1 << 20);
    if let Some(&b) = args
        .batch
        .iter()
        .find(|&&b| u64::from(b).saturating_mul(per_row) > budget)
    {
        return Err(format!(
            "--batch {b} needs {} MiB for this model ({per_row} bytes a row), over the {} MiB budget (--max-memory-mib)",
            u64::from(b).saturating_mul(per_row) >> 20,
            args.max_memory_mib
        )
        .into());
    }
    let cfg = bnfold_cli::measure::Config {
        batches: args.batch.iter().map(|&b| b as usize).collect(),
        threads: args.pool.iter().map(|&t| usize::from(t)).collect(),
        modes,
        kernel,
        weights: args.weights,
        min_time: std::time::Duration::from_millis(args.time_ms),
        ..Default::default()
    };
    let results = bnfold_cli::measure::measure(&model, &cfg)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<9} {:<8} {:>6} {:>7} {:>8} {:>11} {:>11} {:>13}",
        "mode",
        "kernel",
        "batch",
        "threads",
        "calls",
        "p50 us",
        "p99 us",
        "rows/s"
    );
    for r in &results {
        outln!(
            "{:<9} {:<8} {:>6} {:>7} {:>8} {:>11.2} {:>11.2} {:>13.0}",
            r.mode,
            r.kernel,
            r.batch,
            r.threads,
            r.iters,
            r.p50_us,
            r.p99_us,
            r.rows_per_s
        );
    }
    Ok(ExitCode::SUCCESS)
}
