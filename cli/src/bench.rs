//! The `bnfold bench` subcommand: argument parsing and printing over `crate::measure`.

use std::path::PathBuf;
use std::process::ExitCode;

use bnfold::Model;
use clap::Args;

/// Arguments of `bnfold bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A bnfold weight file (.bnw).
    file: PathBuf,
    /// Rows per call, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    batch: Vec<usize>,
    /// Thread-pool sizes to run in, comma-separated.
    #[arg(long = "pool", value_delimiter = ',', default_value = "1")]
    pool: Vec<usize>,
    /// Only the folded path.
    #[arg(long, conflicts_with = "unfolded_only")]
    folded_only: bool,
    /// Only the unfolded path.
    #[arg(long)]
    unfolded_only: bool,
    /// Kernel path (an unsupported one falls back to auto's).
    #[arg(long, default_value = "auto", value_parser = crate::kernel_names())]
    kernel: String,
    /// Minimum measuring time per configuration, milliseconds.
    #[arg(long, default_value_t = 500)]
    time_ms: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `bnfold bench`: measure with `bnfold::bench` and print a table or JSON.
pub fn run(args: &BenchArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let kernel = crate::kernel_choice(&args.kernel);
    let modes = match (args.folded_only, args.unfolded_only) {
        (true, _) => vec![bnfold::Mode::Folded],
        (_, true) => vec![bnfold::Mode::Unfolded],
        _ => vec![bnfold::Mode::Folded, bnfold::Mode::Unfolded],
    };
    let model = Model::load(&args.file)?;
    let cfg = bnfold_cli::measure::Config {
        batches: args.batch.clone(),
        threads: args.pool.clone(),
        modes,
        kernel,
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
