//! `bnfold run`: inference on a batch read from `.npy` or CSV.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use bnfold::Options;
use bnfold_cli::io::{Matrix, ReadOptions, read_matrix_with, write_csv, write_npy};
use clap::Args;

use crate::CliResult;

/// Arguments of `bnfold run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// A bnfold weight file (.bnw).
    file: PathBuf,
    /// Input rows: .npy (f32/f64, [batch, features]) or CSV (one row per line); - reads standard
    /// input.
    #[arg(long, short)]
    input: PathBuf,
    /// Write outputs to this .npy file (- for standard output) instead of CSV on stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Run the unfolded path (dense, BN with EMA statistics, activation) instead of the folded one.
    #[arg(long)]
    unfolded: bool,
    /// The CSV input starts with a header line.
    #[arg(long)]
    header: bool,
    /// Print the index of the largest output of each row (the predicted class) instead of the
    /// outputs; `nan` for a row whose outputs hold a NaN (it has no class).
    #[arg(long, conflicts_with = "output")]
    argmax: bool,
    /// Precision of the packed dense weights: f32, f16 or bf16 (independent of the file's storage).
    #[arg(long, default_value = "f32", value_parser = crate::convert::parse_dtype)]
    weights: bnfold::DType,
    /// Run inputs that are NaN or infinite (by default each is an error naming its row and
    /// column). NaN propagates to its row's outputs.
    #[arg(long)]
    allow_non_finite: bool,
}

/// Load, compile, run and print.
pub fn run(a: &RunArgs) -> CliResult {
    let model = crate::load_model(&a.file)?;
    let x = read_matrix_with(
        &a.input,
        &ReadOptions {
            header: a.header,
            expected_cols: Some(model.input_features()),
            allow_non_finite: a.allow_non_finite,
        },
    )?;
    let opts = if a.unfolded {
        Options::unfolded()
    } else {
        Options::folded()
    }
    .with_weights(a.weights);
    let plan = model.compile(&opts)?;
    drop(model);
    let mut session = plan.session();
    let y = session.run(&x.data, x.rows)?;
    if a.argmax {
        let mut stdout = std::io::stdout().lock();
        for row in y.chunks_exact(plan.output_features()) {
            // A row with a NaN has no predicted class: print `nan`, never an index.
            match bnfold::argmax(row) {
                Some(best) => writeln!(stdout, "{best}")?,
                None => writeln!(stdout, "nan")?,
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = Matrix {
        rows: x.rows,
        cols: plan.output_features(),
        data: y.to_vec(),
    };
    match &a.output {
        Some(path) => write_npy(path, &out)?,
        None => write_csv(&mut std::io::stdout().lock(), &out)?,
    }
    Ok(ExitCode::SUCCESS)
}
