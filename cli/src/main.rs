//! The `bnfold` command line: a thin layer of argument parsing and printing over the library.
#![forbid(unsafe_code)]

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
mod probe;
mod run;
mod serve;
mod train;
mod verify;

use bnfold::Model;
use bnfold::kernels::{Isa, KernelChoice};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bnfold",
    version,
    about = "Inference for dense networks with Batch Normalization folded in at load time"
)]
struct Cli {
    /// Worker threads for large layers (default: one per core; at most 1024).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
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
    Run(run::RunArgs),
    /// Compare folded, unfolded and an f64 reference, layer by layer.
    Verify(verify::VerifyArgs),
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
    /// Measure this machine: FMA peak and read bandwidth on 1 and 2 threads, the kernel's own rate
    /// on 1, the kernel path, the CPU and the load (beside which to read `bench` figures).
    Probe(probe::ProbeArgs),
    /// Serve models over HTTP (TensorFlow Serving's REST API), with dynamic batching and reload on
    /// SIGHUP.
    Serve(serve::ServeArgs),
    /// Train a network with Batch Normalization and write it as a weight file.
    Train {
        #[command(subcommand)]
        what: train::TrainCommand,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout with success.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // A usage error is one line, as every other error (clap's own rendering takes three to
        // five, with a usage block).
        Err(e) => {
            eprintln!("bnfold: {}", usage_error(&e));
            return ExitCode::from(2);
        }
    };
    // The kernel override is refused when it names no path, as `--kernel` is: a typo must not
    // silently run another path than the one asked for.
    if let Ok(v) = std::env::var(bnfold::kernels::KERNEL_ENV)
        && !v.eq_ignore_ascii_case("auto")
        && Isa::from_name(&v).is_none()
    {
        eprintln!(
            "bnfold: {}={} names no kernel path (use auto, {})",
            bnfold::kernels::KERNEL_ENV,
            bnfold_cli::text::name(&v),
            Isa::ALL.map(Isa::name).join(", ")
        );
        return ExitCode::from(2);
    }
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
        Command::Run(args) => run::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Convert {
            input,
            output,
            arch,
            dtype,
        } => convert::run(&input, &output, arch.as_deref(), dtype),
        Command::Bench(args) => bench::run(&args),
        Command::Probe(args) => probe::run(&args),
        Command::Serve(args) => serve::run(&args),
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
            // Names from a weight file reach this message: escape what could forge a line or
            // drive the terminal, and cap its length.
            eprintln!("bnfold: {}", bnfold_cli::text::escape(&e.to_string(), 2000));
            ExitCode::FAILURE
        }
    }
}

/// A clap usage error as one line: its message and the lines that belong to it (the missing
/// arguments, the accepted values), without the usage block, then where to look for help.
fn usage_error(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
        .collect();
    let text = parts.join(" ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    format!("{}; see --help", bnfold_cli::text::escape(text, 500))
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

/// Load a weight file; an error about its contents names the file.
fn load_model(path: &Path) -> Result<Model, Box<dyn std::error::Error>> {
    Model::load(path).map_err(|e| match e {
        // The operating system's errors name the path already.
        bnfold::Error::Io { .. } => e.into(),
        e => format!("{}: {e}", path.display()).into(),
    })
}
