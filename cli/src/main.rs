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

mod bench;
mod convert;
mod inspect;
mod train;
mod verify;

use bnfold::kernels::{Isa, KernelChoice};
use bnfold::{Model, Options};
use bnfold_cli::io::{Matrix, read_matrix, write_csv, write_npy};
use clap::{Parser, Subcommand};

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
        #[arg(long, default_value_t = bnfold::verify::DEFAULT_TOLERANCE)]
        tolerance: f64,
        /// Kernel path of both plans (an unsupported one falls back to auto's).
        #[arg(long, default_value = "auto", value_parser = kernel_names())]
        kernel: String,
    },
    /// Convert a PyTorch or Keras model (ONNX, or a safetensors state_dict with --arch) to a
    /// weight file.
    Convert {
        /// The model: .onnx (external data beside it), or .safetensors.
        input: PathBuf,
        /// The weight file to write (.bnw); written only if the whole conversion succeeds.
        #[arg(long, short)]
        output: PathBuf,
        /// Architecture of a safetensors state_dict, the nn.Sequential's modules in order:
        /// e.g. linear,bn,relu,linear,bn:0.001,tanh,linear (see docs/IMPORT.md).
        #[arg(long)]
        arch: Option<String>,
        /// Store every tensor as f32, f16 or bf16 (default: as in the source).
        #[arg(long, value_parser = convert::parse_dtype)]
        dtype: Option<bnfold::DType>,
    },
    /// Measure latency (p50, p99) and throughput, folded and unfolded.
    Bench(bench::BenchArgs),
    /// Train a network with Batch Normalization and write it as a weight file.
    Train {
        #[command(subcommand)]
        what: train::TrainCommand,
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
        Command::Inspect { file, json } => inspect::run(&file, json),
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
            kernel,
        } => verify::run(&verify::VerifyArgs {
            file,
            input,
            header,
            batch: batch as usize,
            seed,
            scale,
            tolerance,
            kernel: kernel_choice(&kernel),
        }),
        Command::Convert {
            input,
            output,
            arch,
            dtype,
        } => convert::run(&input, &output, arch.as_deref(), dtype),
        Command::Bench(args) => bench::run(&args),
        Command::Train { what } => train::run(&what).map(|()| ExitCode::SUCCESS),
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

/// The values `--kernel` accepts: `auto` and every path's name, from [`Isa::ALL`].
fn kernel_names() -> clap::builder::PossibleValuesParser {
    let names: Vec<&'static str> = std::iter::once("auto")
        .chain(Isa::ALL.iter().map(|i| i.name()))
        .collect();
    clap::builder::PossibleValuesParser::new(names)
}

/// The kernel choice for a `--kernel` value (already checked by [`kernel_names`]).
fn kernel_choice(name: &str) -> KernelChoice {
    Isa::from_name(name).map_or(KernelChoice::Auto, KernelChoice::Force)
}

/// The rows of `m` (read from `path`) must have the model's input width.
fn check_width(m: &Matrix, model: &Model, path: &Path) -> Result<(), String> {
    if m.cols != model.input_features() {
        return Err(format!(
            "{}: rows have {} values, the model takes {} input features",
            path.display(),
            m.cols,
            model.input_features()
        ));
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
    match output {
        Some(path) => write_npy(path, &out)?,
        None => write_csv(&mut std::io::stdout().lock(), &out)?,
    }
    Ok(ExitCode::SUCCESS)
}
