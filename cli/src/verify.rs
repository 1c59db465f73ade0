//! `bnfold verify`: prints the report of [`bnfold::verify()`].

use std::path::PathBuf;
use std::process::ExitCode;

use bnfold::verify::{ErrorStats, VerifyOptions};
use bnfold::{KernelChoice, Model};

use crate::CliResult;
use bnfold_cli::io::read_matrix;

/// What `bnfold verify` was asked.
pub struct VerifyArgs {
    pub file: PathBuf,
    pub input: Option<PathBuf>,
    pub header: bool,
    pub batch: usize,
    pub seed: u64,
    pub scale: f32,
    pub tolerance: f64,
    pub kernel: KernelChoice,
}

/// Verify and print; exit status 1 when a layer is over the tolerance.
pub fn run(a: &VerifyArgs) -> CliResult {
    if !(a.tolerance.is_finite() && a.tolerance > 0.0) {
        return Err(format!("--tolerance must be a positive number, got {}", a.tolerance).into());
    }
    if !(a.scale.is_finite() && a.scale > 0.0) {
        return Err(format!("--scale must be a positive number, got {}", a.scale).into());
    }
    let model = Model::load(&a.file)?;
    let (rows, x) = match &a.input {
        Some(path) => {
            let m = read_matrix(path, a.header)?;
            crate::check_width(&m, &model, path)?;
            (m.rows, m.data)
        }
        None => (
            a.batch,
            bnfold::synth::input(a.batch, model.input_features(), a.scale, a.seed),
        ),
    };
    let options = VerifyOptions::default()
        .with_tolerance(a.tolerance)
        .with_kernel(a.kernel);
    let r = bnfold::verify(&model, &x, rows, &options)?;

    outln!(
        "{} rows ({}), tolerance {:e} on max abs error / max |reference| per layer",
        r.rows,
        match &a.input {
            Some(p) => p.display().to_string(),
            None => format!(
                "seeded random, seed {}, uniform in [-{}, {})",
                a.seed, a.scale, a.scale
            ),
        },
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
