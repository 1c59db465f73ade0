//! The `bnfold probe` subcommand: what this machine gives right now, for setting benchmark figures
//! beside it (fractions of the FMA peak and of the read bandwidth, measured in the same run).
//!
//! The measurements are `bnfold::kernels::probe`'s; this file adds what only a command line needs:
//! the CPU's name, the load average, and printing.

use std::process::ExitCode;
use std::time::Duration;

use bnfold::DType;
use bnfold::kernels::{Blocking, CacheSource, Caches, Isa, KernelChoice, blocking_for, probe};
use clap::Args;

use crate::CliResult;

/// Arguments of `bnfold probe`.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Measuring time of each of the five probes (FMA peak and read bandwidth on 1 and 2 threads,
    /// the kernel's rate on 1), milliseconds (1..=60000).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    time_ms: u64,
    /// Size of the buffer the bandwidth probe reads, MiB (1..=65536); several times the last-level
    /// cache measures the memory.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    read_mib: u64,
}

/// What `bnfold probe` reports (its JSON form, field for field).
#[derive(Debug, serde::Serialize)]
struct Report {
    /// `model name` from /proc/cpuinfo, where there is one.
    cpu_model: Option<String>,
    /// Threads this process may run at once (affinity and cgroup limits included).
    logical_cpus: usize,
    /// The kernel path `auto` chooses (`BNFOLD_KERNEL` included): the one probed.
    kernel: &'static str,
    /// Every path this CPU supports, best first.
    supported_kernels: Vec<&'static str>,
    /// The detected caches (bytes) and where the sizes came from.
    caches: CachesReport,
    /// The GEMM blocking derived from them for f32 and for 16-bit weights on `kernel`.
    blocking: BlockingReport,
    /// Measuring time of each probe, milliseconds.
    time_ms: u64,
    /// Bytes the bandwidth probe reads per pass.
    read_bytes: u64,
    /// FMA peak on one thread, GFLOP/s.
    fma_gflops_1t: f64,
    /// FMA peak on two threads at once, GFLOP/s.
    fma_gflops_2t: f64,
    /// `fma_gflops_2t / fma_gflops_1t`: about 2 for two real cores, about 1 for one shared core
    /// (or a busy neighbour).
    fma_2t_over_1t: f64,
    /// Read bandwidth on one thread, GB/s.
    read_gbs_1t: f64,
    /// Read bandwidth on two threads at once, GB/s.
    read_gbs_2t: f64,
    /// `read_gbs_2t / read_gbs_1t`.
    read_2t_over_1t: f64,
    /// The dense kernel on an in-cache layer (`probe::KERNEL_PROBE`) on one thread, GFLOP/s.
    kernel_gflops_1t: f64,
    /// `kernel_gflops_1t / fma_gflops_1t`: what the kernels reach of the FMA peak here, now
    /// (well below 0.9 on an AVX2 or AVX-512 path says the machine is disturbed).
    kernel_over_fma_1t: f64,
    /// The 1, 5 and 15-minute load averages from /proc/loadavg before the probes, where there is
    /// one.
    loadavg: Option<[f64; 3]>,
    /// Seconds since the Unix epoch when the probes started.
    unix_time: u64,
}

/// [`Caches`] as reported.
#[derive(Debug, serde::Serialize)]
struct CachesReport {
    l1d: usize,
    l2: usize,
    l3: usize,
    /// This core's share of L3.
    l3_share: usize,
    /// `cpuid`, `environment` (BNFOLD_CACHES) or `fallback`.
    source: &'static str,
}

/// One [`Blocking`] as reported.
#[derive(Debug, serde::Serialize)]
struct BlockSizes {
    kc: usize,
    mc: usize,
    nc: usize,
    unpacked_max_weights: usize,
    unpacked_max_inputs: usize,
}

/// The blocking for each weight size.
#[derive(Debug, serde::Serialize)]
struct BlockingReport {
    f32: BlockSizes,
    f16_bf16: BlockSizes,
}

fn block_sizes(b: &Blocking) -> BlockSizes {
    BlockSizes {
        kc: b.kc,
        mc: b.mc,
        nc: b.nc,
        unpacked_max_weights: b.unpacked_max_weights,
        unpacked_max_inputs: b.unpacked_max_inputs,
    }
}

/// `model name` of the first processor in /proc/cpuinfo (escaped for the terminal).
fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| bnfold_cli::text::name(v.trim()))
}

/// The three load averages of /proc/loadavg.
fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// What the 2-thread / 1-thread FMA ratio says about the two threads.
fn cores_verdict(ratio: f64) -> &'static str {
    if ratio >= 1.7 {
        "two real cores"
    } else if ratio <= 1.3 {
        "one shared core, or a busy neighbour"
    } else {
        "partly shared: SMT siblings or a neighbour's load"
    }
}

/// `bnfold probe`: measure and print.
pub fn run(args: &ProbeArgs) -> CliResult {
    let time = Duration::from_millis(args.time_ms);
    let bytes = usize::try_from(args.read_mib << 20).unwrap_or(usize::MAX);
    let isa = KernelChoice::Auto.resolve();
    let caches = Caches::detect();
    let loadavg = loadavg();
    let unix_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let fma1 = probe::fma_peak_gflops(isa, 1, time);
    let fma2 = probe::fma_peak_gflops(isa, 2, time);
    let read1 = probe::read_bandwidth_gbs(isa, 1, bytes, time);
    let read2 = probe::read_bandwidth_gbs(isa, 2, bytes, time);
    let kern1 = probe::kernel_gflops(isa, 1, time);
    let r = Report {
        cpu_model: cpu_model(),
        logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: isa.name(),
        supported_kernels: Isa::supported().into_iter().map(Isa::name).collect(),
        caches: CachesReport {
            l1d: caches.l1d,
            l2: caches.l2,
            l3: caches.l3,
            l3_share: caches.l3_share,
            source: match caches.source {
                CacheSource::Cpuid => "cpuid",
                CacheSource::Environment => "environment",
                _ => "fallback",
            },
        },
        blocking: BlockingReport {
            f32: block_sizes(&blocking_for(isa, DType::F32, &caches)),
            f16_bf16: block_sizes(&blocking_for(isa, DType::F16, &caches)),
        },
        time_ms: args.time_ms,
        read_bytes: bytes as u64,
        fma_gflops_1t: fma1,
        fma_gflops_2t: fma2,
        fma_2t_over_1t: fma2 / fma1,
        read_gbs_1t: read1,
        read_gbs_2t: read2,
        read_2t_over_1t: read2 / read1,
        kernel_gflops_1t: kern1,
        kernel_over_fma_1t: kern1 / fma1,
        loadavg,
        unix_time,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "cpu          {}",
        r.cpu_model.as_deref().unwrap_or("unknown")
    );
    outln!("logical cpus {}", r.logical_cpus);
    outln!(
        "kernel path  {} (supported: {})",
        r.kernel,
        r.supported_kernels.join(", ")
    );
    let kib = |b: usize| b >> 10;
    outln!(
        "caches       L1d {} KiB, L2 {} KiB, L3 {} KiB ({} KiB per core) [{}]",
        kib(r.caches.l1d),
        kib(r.caches.l2),
        kib(r.caches.l3),
        kib(r.caches.l3_share),
        r.caches.source
    );
    for (label, b) in [("f32", &r.blocking.f32), ("f16/bf16", &r.blocking.f16_bf16)] {
        outln!(
            "blocking     {label}: kc {}, mc {}, nc {}; unpacked up to {} weights or {} inputs",
            b.kc,
            b.mc,
            b.nc,
            b.unpacked_max_weights,
            b.unpacked_max_inputs
        );
    }
    outln!(
        "fma peak     {:.1} GFLOP/s on 1 thread, {:.1} on 2; 2t/1t {:.2}: {}",
        fma1,
        fma2,
        r.fma_2t_over_1t,
        cores_verdict(r.fma_2t_over_1t)
    );
    outln!(
        "read         {:.1} GB/s on 1 thread, {:.1} on 2; 2t/1t {:.2} ({} MiB buffer)",
        read1,
        read2,
        r.read_2t_over_1t,
        args.read_mib
    );
    let (k, n, batch) = probe::KERNEL_PROBE;
    outln!(
        "kernel       {:.1} GFLOP/s on 1 thread, {:.0}% of the FMA peak ({k} x {n} layer at batch {batch}, in cache)",
        kern1,
        100.0 * r.kernel_over_fma_1t
    );
    match loadavg {
        Some([a, b, c]) => outln!("load average {a:.2} {b:.2} {c:.2} (before the probes)"),
        None => outln!("load average unknown"),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_thresholds() {
        assert_eq!(cores_verdict(1.95), "two real cores");
        assert_eq!(cores_verdict(1.02), "one shared core, or a busy neighbour");
        assert!(cores_verdict(1.5).starts_with("partly"));
    }
}
