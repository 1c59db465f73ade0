//! `bnfold verify`: prints the report of [`bnfold::verify()`].

use std::path::PathBuf;
use std::process::ExitCode;

use bnfold::verify::{ErrorStats, VerifyOptions};
use bnfold_cli::io::{ReadOptions, read_matrix_with};
use clap::Args;

use crate::CliResult;

/// Arguments of `bnfold verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// A bnfold weight file (.bnw).
    file: PathBuf,
    /// Input rows (.npy or CSV, - for standard input); default: a seeded random batch.
    #[arg(long, short)]
    input: Option<PathBuf>,
    /// The CSV input starts with a header line.
    #[arg(long)]
    header: bool,
    /// Rows in the random batch (default: 64, or fewer if 64 rows of the model's widest layer do
    /// not fit the memory budget).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch: Option<u32>,
    /// Seed of the random batch.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Random inputs are uniform in [-scale, scale) (a positive finite f32).
    #[arg(long, default_value_t = 1.0, value_parser = positive_f32)]
    scale: f32,
    /// Largest accepted error, relative to the largest reference magnitude of the same layer.
    ///
    /// The default with f32 weights, 1e-4, is about 1700 f32 units in the last place: each folded
    /// weight is rounded once (2^-24 relative) and a dot product of k terms adds up to k roundings,
    /// usually far fewer, so errors above it mean a wrong result, not rounding. With f16 or bf16
    /// weights the default grows with their rounding: 4 unit roundoffs per dense layer
    /// (bnfold::verify::default_tolerance).
    #[arg(long, value_parser = positive_f64)]
    tolerance: Option<f64>,
    /// Precision of the packed dense weights of both plans: f32, f16 or bf16.
    #[arg(long, default_value = "f32", value_parser = crate::convert::parse_dtype)]
    weights: bnfold::DType,
    /// Kernel path of both plans (an unsupported one falls back to auto's).
    #[arg(long, default_value = "auto", value_parser = crate::kernel_names())]
    kernel: String,
    /// Memory budget of the comparison, in MiB: the batch must fit it (see --batch).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    max_memory_mib: u64,
    /// Let NaN and infinite input values through (by default an error naming row and column).
    #[arg(long)]
    allow_non_finite: bool,
}

/// A positive finite f32 argument.
pub fn positive_f32(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive finite number")),
    }
}

/// A positive finite f64 argument.
pub fn positive_f64(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive finite number")),
    }
}

/// Verify and print; exit status 1 when a layer is over the tolerance.
pub fn run(a: &VerifyArgs) -> CliResult {
    let model = crate::load_model(&a.file)?;
    let budget = a.max_memory_mib.saturating_mul(1 << 20);
    let per_row = bnfold::verify::bytes_per_row(&model);
    let fits = usize::try_from(budget / per_row.max(1)).unwrap_or(usize::MAX);
    let (rows, x) = match &a.input {
        Some(path) => {
            let m = read_matrix_with(
                path,
                &ReadOptions {
                    header: a.header,
                    expected_cols: Some(model.input_features()),
                    allow_non_finite: a.allow_non_finite,
                },
            )?;
            if m.rows > fits {
                return Err(format!(
                    "{}: {} rows need {} MiB to verify, over the {} MiB budget (--max-memory-mib); verify fewer rows",
                    path.display(),
                    m.rows,
                    (m.rows as u64).saturating_mul(per_row) >> 20,
                    a.max_memory_mib
                )
                .into());
            }
            (m.rows, m.data)
        }
        None => {
            let batch = match a.batch {
                Some(b) if b as usize > fits => {
                    return Err(format!(
                        "--batch {b} needs {} MiB to verify this model ({per_row} bytes a row), over the {} MiB budget (--max-memory-mib); at most {fits} rows fit",
                        (u64::from(b)).saturating_mul(per_row) >> 20,
                        a.max_memory_mib
                    )
                    .into());
                }
                Some(b) => b as usize,
                None if fits == 0 => {
                    return Err(format!(
                        "one row of this model needs {} MiB to verify, over the {} MiB budget (--max-memory-mib)",
                        per_row >> 20,
                        a.max_memory_mib
                    )
                    .into());
                }
                None => fits.min(64),
            };
            (
                batch,
                bnfold::synth::input(batch, model.input_features(), a.scale, a.seed),
            )
        }
    };
    let mut options = VerifyOptions::default()
        .with_kernel(crate::kernel_choice(&a.kernel))
        .with_weights(a.weights);
    if let Some(t) = a.tolerance {
        options = options.with_tolerance(t);
    }
    let r = bnfold::verify(&model, &x, rows, &options)?;

    outln!(
        "{} rows ({}), {} weights, tolerance {:e} on max abs error / max |reference| per layer",
        r.rows,
        match &a.input {
            Some(p) => p.display().to_string(),
            None => format!(
                "seeded random, seed {}, uniform in [-{}, {})",
                a.seed, a.scale, a.scale
            ),
        },
        a.weights,
        r.tolerance
    );
    outln!(
        "{:>5}  {:<10} {:<18} {:>11} {:>11} {:>11}   {:>11} {:>11} {:>11}",
        "layer",
        "kind",
        "name",
        "fold abs",
        "fold rel",
        "fold norm",
        "unfold abs",
        "unfold rel",
        "unfold norm"
    );
    let fmt3 = |e: Option<ErrorStats>| match e {
        Some(e) => format!(
            "{:>11.3e} {:>11.3e} {:>11.3e}",
            e.max_abs, e.max_rel, e.normwise
        ),
        None => format!("{:>11} {:>11} {:>11}", "(folded)", "", ""),
    };
    for l in &r.layers {
        outln!(
            "{:>5}  {:<10} {:<18} {}   {}",
            l.index,
            l.kind_name,
            l.name,
            fmt3(l.folded),
            fmt3(Some(l.unfolded))
        );
    }
    if !r.layers.is_empty() {
        outln!("\noverall (network output):");
        for (what, e) in [
            ("folded   vs f64 reference", r.folded_vs_reference),
            ("unfolded vs f64 reference", r.unfolded_vs_reference),
            ("folded   vs unfolded     ", r.folded_vs_unfolded),
        ] {
            outln!(
                "  {what}: max abs {:.3e}, max rel {:.3e}, normwise {:.3e}",
                e.max_abs,
                e.max_rel,
                e.normwise
            );
        }
    }
    if r.passed() {
        outln!(
            "PASS: worst normwise error {:.3e} <= tolerance {:e}",
            r.worst,
            r.tolerance
        );
        Ok(ExitCode::SUCCESS)
    } else {
        outln!(
            "FAIL: worst normwise error {:.3e} > tolerance {:e}",
            r.worst,
            r.tolerance
        );
        Ok(ExitCode::FAILURE)
    }
}
