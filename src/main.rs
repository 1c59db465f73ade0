//! The `bnfold` command line: a thin layer of argument parsing and printing over the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `println!` that returns write errors to the caller (`?`) instead of panicking, so that
/// `bnfold inspect FILE | head` ends quietly when `head` closes the pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

mod cli;

use bnfold::format::LayerKind;
use bnfold::io::{Matrix, read_matrix, write_csv, write_npy};
use bnfold::{Model, Options};
use clap::{Parser, Subcommand};
use rand::{RngExt, SeedableRng};

#[derive(Parser)]
#[command(
    name = "bnfold",
    version,
    about = "Inference for dense networks with Batch Normalization folded in at load time"
)]
struct Cli {
    /// Worker threads for large layers (default: one per core).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a weight file holds: layers, tensors, metadata, checksum status.
    Inspect {
        /// A bnfold weight file (.bnw).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run inference on a batch read from .npy or CSV.
    Run {
        /// A bnfold weight file (.bnw).
        file: PathBuf,
        /// Input rows: .npy (f32/f64, [batch, features]) or CSV (one row per line).
        #[arg(long, short)]
        input: PathBuf,
        /// Write outputs to this .npy file instead of CSV on stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Run the unfolded path (dense, BN with EMA statistics, activation) instead of the folded one.
        #[arg(long)]
        unfolded: bool,
        /// The CSV input starts with a header line.
        #[arg(long)]
        header: bool,
        /// Print the index of the largest output of each row (the predicted class) instead of the
        /// outputs.
        #[arg(long, conflicts_with = "output")]
        argmax: bool,
    },
    /// Compare folded, unfolded and an f64 reference, layer by layer.
    Verify {
        /// A bnfold weight file (.bnw).
        file: PathBuf,
        /// Input rows (.npy or CSV); default: a seeded random batch.
        #[arg(long, short)]
        input: Option<PathBuf>,
        /// The CSV input starts with a header line.
        #[arg(long)]
        header: bool,
        /// Rows in the random batch.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        batch: u32,
        /// Seed of the random batch.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Random inputs are uniform in [-scale, scale).
        #[arg(long, default_value_t = 1.0)]
        scale: f32,
        /// Largest accepted error, relative to the largest reference magnitude of the same layer.
        ///
        /// The default, 1e-4, is about 1700 f32 units in the last place: each folded weight is rounded
        /// once (2^-24 relative) and a dot product of k terms adds up to k roundings, usually far
        /// fewer, so errors above it mean a wrong result, not rounding.
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
    },
    /// Measure latency (p50, p99) and throughput, folded and unfolded.
    Bench(cli::bench::BenchArgs),
    /// Train a network with Batch Normalization and write it as a weight file.
    Train {
        #[command(subcommand)]
        what: cli::train::TrainCommand,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with success; usage errors print one message.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Some(n) = cli.threads
        && let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n as usize)
            .build_global()
    {
        eprintln!("bnfold: cannot start {n} threads: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Inspect { file, json } => inspect(&file, json),
        Command::Run {
            file,
            input,
            output,
            unfolded,
            header,
            argmax,
        } => run(&file, &input, output.as_deref(), unfolded, header, argmax),
        Command::Verify {
            file,
            input,
            header,
            batch,
            seed,
            scale,
            tolerance,
        } => verify(
            &file,
            input.as_deref(),
            header,
            batch as usize,
            seed,
            scale,
            tolerance,
        ),
        Command::Bench(args) => cli::bench::run(&args),
        Command::Train { what } => cli::train::run(&what).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        // The reader of our output went away (`| head`): nothing left to say to anyone.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bnfold: {e}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

fn inspect(file: &Path, json: bool) -> CliResult {
    let model = Model::load(file)?;
    let h = model.header();
    let tensors = model.tensors();
    let layer_desc = |kind: &LayerKind| -> (String, String) {
        let t = |i: usize| tensors[i].name.clone();
        let opt = |i: Option<usize>| i.map_or("-".to_owned(), t);
        match kind {
            LayerKind::Dense {
                inputs,
                outputs,
                weight,
                bias,
            } => (
                format!("{inputs} -> {outputs}"),
                format!("weight={} bias={}", t(*weight), opt(*bias)),
            ),
            LayerKind::BatchNorm {
                features,
                eps,
                gamma,
                beta,
                moving_mean,
                moving_variance,
            } => (
                format!("{features}"),
                format!(
                    "eps={eps:e} gamma={} beta={} mean={} var={}",
                    opt(*gamma),
                    opt(*beta),
                    t(*moving_mean),
                    t(*moving_variance)
                ),
            ),
            LayerKind::Activation(a) => match a {
                bnfold::Activation::LeakyRelu { alpha } => {
                    (String::new(), format!("leaky_relu alpha={alpha}"))
                }
                a => (String::new(), a.name().to_owned()),
            },
        }
    };
    if json {
        let layers: Vec<_> = model
            .layers()
            .iter()
            .map(|l| {
                let (shape, detail) = layer_desc(&l.kind);
                serde_json::json!({"name": l.name, "kind": l.kind.kind_name(), "shape": shape, "detail": detail})
            })
            .collect();
        let tensors: Vec<_> = tensors
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "dtype": t.dtype, "shape": t.shape, "offset": t.file_offset, "bytes": t.byte_len}))
            .collect();
        let metadata: serde_json::Map<String, serde_json::Value> = model
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
            .collect();
        let doc = serde_json::json!({
            "file": file.display().to_string(),
            "version": format!("{}.{}", h.version_major, h.version_minor),
            "checksum": {"algorithm": "crc32", "value": format!("{:08x}", h.checksum), "status": "ok"},
            "input_features": model.input_features(),
            "output_features": model.output_features(),
            "layers": layers,
            "tensors": tensors,
            "metadata": metadata,
        });
        outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("file      {}", file.display());
    outln!("format    bnfold v{}.{}", h.version_major, h.version_minor);
    outln!("checksum  crc32 {:08x} (verified)", h.checksum);
    outln!(
        "network   {} -> {} features, {} layers, {} tensors",
        model.input_features(),
        model.output_features(),
        model.layers().len(),
        tensors.len()
    );
    outln!("\nlayers");
    for (i, l) in model.layers().iter().enumerate() {
        let (shape, detail) = layer_desc(&l.kind);
        outln!(
            "  {i:>3}  {:<10} {:<20} {:<12} {detail}",
            l.kind.kind_name(),
            l.name,
            shape
        );
    }
    outln!("\ntensors");
    for t in tensors {
        outln!(
            "  {:<28} {:<5} {:<14} {:>10} bytes at {}",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape),
            t.byte_len,
            t.file_offset
        );
    }
    if !model.metadata().is_empty() {
        outln!("\nmetadata");
        for (k, v) in model.metadata() {
            outln!("  {k} = {v}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check_width(m: &Matrix, model: &Model, path: &Path) -> Result<(), bnfold::Error> {
    if m.cols != model.input_features() {
        return Err(bnfold::InputError::Other(format!(
            "{}: rows have {} values, the model takes {} input features",
            path.display(),
            m.cols,
            model.input_features()
        ))
        .into());
    }
    Ok(())
}

fn run(
    file: &Path,
    input: &Path,
    output: Option<&Path>,
    unfolded: bool,
    header: bool,
    argmax: bool,
) -> CliResult {
    let model = Model::load(file)?;
    let x = read_matrix(input, header)?;
    check_width(&x, &model, input)?;
    let opts = if unfolded {
        Options::unfolded()
    } else {
        Options::folded()
    };
    let plan = model.compile(&opts)?;
    drop(model);
    let mut session = plan.session();
    let y = session.run(&x.data, x.rows)?;
    if argmax {
        let mut stdout = std::io::stdout().lock();
        for row in y.chunks_exact(plan.output_features()) {
            // total_cmp orders NaN above everything, so a NaN row reports where its NaN is.
            let best = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            writeln!(stdout, "{best}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = Matrix {
        rows: x.rows,
        cols: plan.output_features(),
        data: y.to_vec(),
    };
    match output {
        Some(path) => write_npy(path, &out)?,
        None => write_csv(&mut std::io::stdout().lock(), &out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Max abs error, max elementwise rel error, and max abs error relative to the largest reference
/// magnitude (the criterion), of `got` against `want`.
fn errors(got: &[f32], want: &[f64]) -> (f64, f64, f64) {
    let mut max_abs = 0f64;
    let mut max_rel = 0f64;
    let mut scale = 0f64;
    for (&g, &w) in got.iter().zip(want) {
        let d = (g as f64 - w).abs();
        let d = if d.is_nan() { f64::INFINITY } else { d };
        max_abs = max_abs.max(d);
        // Elementwise relative error, with a floor so that exact zeros (ReLU) do not divide by 0.
        max_rel = max_rel.max(d / w.abs().max(1e-6));
        scale = scale.max(w.abs());
    }
    (max_abs, max_rel, max_abs / scale.max(f64::MIN_POSITIVE))
}

#[allow(clippy::too_many_arguments)]
fn verify(
    file: &Path,
    input: Option<&Path>,
    header: bool,
    batch: usize,
    seed: u64,
    scale: f32,
    tolerance: f64,
) -> CliResult {
    if !(tolerance.is_finite() && tolerance > 0.0) {
        return Err(format!("--tolerance must be a positive number, got {tolerance}").into());
    }
    if !(scale.is_finite() && scale > 0.0) {
        return Err(format!("--scale must be a positive number, got {scale}").into());
    }
    let model = Model::load(file)?;
    let x = match input {
        Some(path) => {
            let m = read_matrix(path, header)?;
            check_width(&m, &model, path)?;
            m
        }
        None => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let n = batch * model.input_features();
            Matrix {
                rows: batch,
                cols: model.input_features(),
                data: (0..n).map(|_| rng.random_range(-scale..scale)).collect(),
            }
        }
    };
    let folded = model
        .compile(&Options::folded())?
        .run_traced(&x.data, x.rows)?;
    let unfolded = model
        .compile(&Options::unfolded())?
        .run_traced(&x.data, x.rows)?;
    let x64: Vec<f64> = x.data.iter().map(|&v| v as f64).collect();
    let reference = bnfold::reference::forward_all(&model, &x64, x.rows)?;

    outln!(
        "{} rows ({}), tolerance {tolerance:e} on max abs error / max |reference| per layer",
        x.rows,
        match input {
            Some(p) => p.display().to_string(),
            None => format!("seeded random, seed {seed}, uniform in [-{scale}, {scale})"),
        }
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
    let mut worst = 0f64;
    let mut folded_iter = folded.iter().peekable();
    for (i, layer) in model.layers().iter().enumerate() {
        let want = &reference[i];
        let u = errors(&unfolded[i].1, want);
        worst = worst.max(u.2);
        let f = match folded_iter.peek() {
            Some((last, y)) if *last == i => {
                let e = errors(y, want);
                folded_iter.next();
                worst = worst.max(e.2);
                Some(e)
            }
            _ => None,
        };
        let fmt3 = |e: Option<(f64, f64, f64)>| match e {
            Some((a, r, n)) => format!("{a:>11.3e} {r:>11.3e} {n:>11.3e}"),
            None => format!("{:>11} {:>11} {:>11}", "(folded)", "", ""),
        };
        outln!(
            "{i:>5}  {:<10} {:<18} {}   {}",
            layer.kind.kind_name(),
            layer.name,
            fmt3(f),
            fmt3(Some(u))
        );
    }
    if let (Some((_, fy)), Some((_, uy)), Some(r)) =
        (folded.last(), unfolded.last(), reference.last())
    {
        let f = errors(fy, r);
        let u = errors(uy, r);
        let fu = errors(fy, &uy.iter().map(|&v| v as f64).collect::<Vec<_>>());
        outln!("\noverall (network output):");
        outln!(
            "  folded   vs f64 reference: max abs {:.3e}, max rel {:.3e}, normwise {:.3e}",
            f.0,
            f.1,
            f.2
        );
        outln!(
            "  unfolded vs f64 reference: max abs {:.3e}, max rel {:.3e}, normwise {:.3e}",
            u.0,
            u.1,
            u.2
        );
        outln!(
            "  folded   vs unfolded     : max abs {:.3e}, max rel {:.3e}, normwise {:.3e}",
            fu.0,
            fu.1,
            fu.2
        );
    }
    if worst <= tolerance {
        outln!("PASS: worst normwise error {worst:.3e} <= tolerance {tolerance:e}");
        Ok(ExitCode::SUCCESS)
    } else {
        outln!("FAIL: worst normwise error {worst:.3e} > tolerance {tolerance:e}");
        Ok(ExitCode::FAILURE)
    }
}
