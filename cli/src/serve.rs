//! `bnfold serve`: the model server of the `bnfold-serve` crate, behind the command line.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bnfold_serve::{Config, ModelSpec};
use clap::Args;

use crate::CliResult;

/// Arguments of `bnfold serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A model to serve, as NAME=PATH (repeat for more); NAME is the {name} of the URLs.
    #[arg(long = "model", value_name = "NAME=PATH", required = true, value_parser = ModelSpec::parse)]
    models: Vec<ModelSpec>,
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8501")]
    addr: SocketAddr,
    /// Inference worker threads, each with its own session (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// Threads of the HTTP runtime (default: 2, or 1 on one core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    http_threads: Option<u16>,
    /// How long the first request of a batch waits for more, in microseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    batch_timeout_us: u64,
    /// The most rows in one batch (a request with more runs alone).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_batch: u32,
    /// Run each request alone, as soon as a worker is free.
    #[arg(long)]
    no_batching: bool,
    /// The largest request body, in bytes (413 past it).
    #[arg(long, default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1..=(1 << 32)))]
    max_body_bytes: u64,
    /// The most rows in one request (413 past it).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    max_rows: u32,
    /// The most rows waiting per model (503 past it).
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    max_queue_rows: u32,
    /// Seconds a client may take to send a request's headers or body.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    request_timeout_s: u64,
    /// Seconds a shutdown waits for requests in flight.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    shutdown_timeout_s: u64,
}

/// Serve until SIGTERM or Ctrl-C; SIGHUP reloads every model.
pub fn run(a: &ServeArgs) -> CliResult {
    let mut c = Config::new(a.models.clone(), a.addr);
    if let Some(w) = a.workers {
        c.workers = w.into();
    }
    if let Some(t) = a.http_threads {
        c.http_threads = t.into();
    }
    c.batching = !a.no_batching;
    c.batch_timeout = Duration::from_micros(a.batch_timeout_us);
    c.max_batch = a.max_batch as usize;
    c.max_body_bytes = usize::try_from(a.max_body_bytes)?;
    c.max_rows = a.max_rows as usize;
    c.max_queue_rows = a.max_queue_rows as usize;
    c.request_timeout = Duration::from_secs(a.request_timeout_s);
    c.shutdown_timeout = Duration::from_secs(a.shutdown_timeout_s);
    c.signals = true;
    c.log = true;
    bnfold_serve::start(c)?.wait()?;
    Ok(ExitCode::SUCCESS)
}
