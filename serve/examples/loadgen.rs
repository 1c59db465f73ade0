//! A bounded load generator for `bnfold serve`, with a real HTTP client (hyper's pooled
//! HTTP/1.1 client on tokio), on loopback only.
//!
//! For each batching mode (`--modes 1000,0,off`: windows in microseconds, or off) it starts the `bnfold serve` binary on 127.0.0.1 (any
//! free port), then for each model and each concurrency runs that many closed-loop clients for a
//! fixed time, each sending one-row `{"instances": [[...]]}` requests and timing each answer; then
//! stops the server with SIGTERM. The server's own metrics give the mean rows per batch and the
//! mean time a request spent in the server (from its handler's start to its answer). Before the servers, it times the library called directly
//! (`OwnedSession::run`, one row, and a batch of `--max-batch` rows) in the same process, for the
//! HTTP layer's overhead. Everything is bounded in time (`--seconds` per point) and count.
//!
//! ```sh
//! cargo build --release -p bnfold-cli -p bnfold-serve --example loadgen
//! target/release/examples/loadgen --bnfold target/release/bnfold \
//!     --model digits=models/digits.bnw --model mlp784=/tmp/mlp784.bnw --synth-mlp784 /tmp/mlp784.bnw \
//!     --concurrency 1,8,64,256 --seconds 5
//! ```
//!
//! It prints Markdown tables (the ones in `docs/SERVING.md`), and exits non-zero if any request
//! failed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Args {
    bnfold: PathBuf,
    models: Vec<(String, PathBuf)>,
    synth_mlp784: Option<PathBuf>,
    concurrency: Vec<usize>,
    seconds: f64,
    warmup: f64,
    workers: Option<usize>,
    max_batch: usize,
    client_threads: usize,
    /// Batching windows in microseconds (`None`: batching off).
    modes: Vec<Option<u64>>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        bnfold: PathBuf::from("target/release/bnfold"),
        models: Vec::new(),
        synth_mlp784: None,
        concurrency: vec![1, 8, 64, 256],
        seconds: 5.0,
        warmup: 1.0,
        workers: None,
        max_batch: 64,
        client_threads: 2,
        modes: vec![Some(1000), None],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--bnfold" => a.bnfold = value()?.into(),
            "--model" => {
                let v = value()?;
                let (n, p) = v.split_once('=').ok_or("--model NAME=PATH")?;
                a.models.push((n.into(), p.into()));
            }
            "--synth-mlp784" => a.synth_mlp784 = Some(value()?.into()),
            "--concurrency" => {
                a.concurrency = value()?
                    .split(',')
                    .map(|c| c.parse().map_err(|e| format!("--concurrency: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("{e}"))?,
            "--warmup" => a.warmup = value()?.parse().map_err(|e| format!("{e}"))?,
            "--workers" => a.workers = Some(value()?.parse().map_err(|e| format!("{e}"))?),
            "--max-batch" => a.max_batch = value()?.parse().map_err(|e| format!("{e}"))?,
            "--client-threads" => {
                a.client_threads = value()?.parse().map_err(|e| format!("{e}"))?
            }
            "--modes" => {
                a.modes = value()?
                    .split(',')
                    .map(|m| match m {
                        "off" => Ok(None),
                        us => us
                            .parse()
                            .map(Some)
                            .map_err(|_| format!("--modes: '{us}' is not off or microseconds")),
                    })
                    .collect::<Result<_, _>>()?
            }
            f => return Err(format!("unknown flag {f}")),
        }
    }
    if a.models.is_empty() {
        return Err("no --model NAME=PATH".into());
    }
    if !(a.seconds > 0.0 && a.seconds <= 60.0) {
        return Err("--seconds must be in (0, 60]".into());
    }
    if a.concurrency.iter().any(|&c| c == 0 || c > 1024) {
        return Err("--concurrency values must be 1..=1024".into());
    }
    Ok(a)
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

/// The library, called directly: one session per thread, for `seconds`.
fn direct(path: &std::path::Path, batch: usize, threads: usize, seconds: f64) -> (f64, f64, f64) {
    let model = bnfold::Model::load(path).expect("model loads");
    let plan = Arc::new(model.compile(&bnfold::Options::folded()).expect("compiles"));
    let x = Arc::new(bnfold::synth::input(batch, plan.input_features(), 1.0, 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (plan, x) = (Arc::clone(&plan), Arc::clone(&x));
            std::thread::spawn(move || {
                let mut s = plan.owned_session_with_capacity(batch);
                let mut lat = Vec::new();
                let end = Instant::now() + Duration::from_secs_f64(seconds);
                while Instant::now() < end && lat.len() < 50_000_000 {
                    let t = Instant::now();
                    std::hint::black_box(s.run(&x, batch).expect("runs"));
                    lat.push(t.elapsed().as_secs_f64());
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<f64> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    let calls = all.len() as f64;
    all.sort_by(f64::total_cmp);
    (
        calls * batch as f64 / seconds,
        pct(&all, 50.0),
        pct(&all, 99.0),
    )
}

/// A `bnfold serve` process; SIGTERM on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(a: &Args, window_us: Option<u64>) -> Result<Server, String> {
        let mut cmd = Command::new(&a.bnfold);
        cmd.arg("serve").args(["--addr", "127.0.0.1:0"]);
        for (n, p) in &a.models {
            cmd.arg("--model").arg(format!("{n}={}", p.display()));
        }
        if let Some(w) = a.workers {
            cmd.args(["--workers", &w.to_string()]);
        }
        cmd.args(["--max-batch", &a.max_batch.to_string()]);
        match window_us {
            Some(us) => cmd.args(["--batch-timeout-us", &us.to_string()]),
            None => cmd.arg("--no-batching"),
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", a.bnfold.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    eprintln!("  {l}");
                    if let Some(rest) = l.split("http://").nth(1) {
                        let a = rest.split_whitespace().next().unwrap_or("");
                        break a.parse().map_err(|e| format!("{a}: {e}"))?;
                    }
                }
                _ => return Err("the server stopped before listening".into()),
            }
        };
        // Keep reading its log so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Ok(Server { child, addr })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

async fn get(c: &HttpClient, url: String) -> Result<Bytes, String> {
    let req = hyper::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = c.request(req).await.map_err(|e| e.to_string())?;
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes())
}

/// From the server's metrics for `model`: the sums and counts of its batch-size histogram and
/// of its request-duration histogram (arrival at the handler to the answer).
async fn server_totals(c: &HttpClient, addr: SocketAddr, model: &str) -> [f64; 4] {
    let page = get(c, format!("http://{addr}/metrics"))
        .await
        .unwrap_or_default();
    let page = String::from_utf8_lossy(&page);
    let find = |series: String| {
        page.lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    [
        find(format!("bnfold_batch_rows_sum{{model=\"{model}\"}}")),
        find(format!("bnfold_batch_rows_count{{model=\"{model}\"}}")),
        find(format!(
            "bnfold_request_duration_seconds_sum{{model=\"{model}\"}}"
        )),
        find(format!(
            "bnfold_request_duration_seconds_count{{model=\"{model}\"}}"
        )),
    ]
}

struct Point {
    failed: usize,
    rps: f64,
    p50: f64,
    p99: f64,
    mean_batch: f64,
    server_mean: f64,
}

/// `clients` closed-loop clients for `seconds` (after `warmup`), one row per request.
async fn run_point(
    addr: SocketAddr,
    model: &str,
    width: usize,
    clients: usize,
    warmup: f64,
    seconds: f64,
) -> Point {
    let c: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(clients)
        .build_http();
    let url: hyper::Uri = format!("http://{addr}/v1/models/{model}:predict")
        .parse()
        .expect("uri");
    // 64 distinct seeded rows, encoded once.
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..64)
            .map(|i| {
                let x = bnfold::synth::input(1, width, 1.0, i);
                Bytes::from(serde_json::to_vec(&serde_json::json!({ "instances": [x] })).unwrap())
            })
            .collect(),
    );
    let start = Instant::now() + Duration::from_secs_f64(warmup);
    let end = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|k| {
            let (c, url, bodies) = (c.clone(), url.clone(), Arc::clone(&bodies));
            tokio::spawn(async move {
                let (mut lat, mut failed) = (Vec::new(), 0usize);
                let mut i = k;
                while Instant::now() < end && lat.len() < 10_000_000 {
                    let req = hyper::Request::post(url.clone())
                        .header("content-type", "application/json")
                        .body(Full::new(bodies[i % bodies.len()].clone()))
                        .expect("request");
                    i += 1;
                    let t = Instant::now();
                    let ok = match c.request(req).await {
                        Ok(resp) => {
                            let status = resp.status();
                            resp.into_body().collect().await.is_ok() && status.is_success()
                        }
                        Err(_) => false,
                    };
                    // Only answers that start and end inside the measured window count.
                    if t >= start && Instant::now() <= end {
                        if ok {
                            lat.push(t.elapsed().as_secs_f64());
                        } else {
                            failed += 1;
                        }
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    tokio::time::sleep_until(tokio::time::Instant::from_std(start)).await;
    let before = server_totals(&c, addr, model).await;
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await.expect("client task");
        all.extend(l);
        failed += f;
    }
    let after = server_totals(&c, addr, model).await;
    all.sort_by(f64::total_cmp);
    let delta = |i: usize, j: usize| {
        let n = after[j] - before[j];
        if n > 0.0 {
            (after[i] - before[i]) / n
        } else {
            f64::NAN
        }
    };
    Point {
        failed,
        rps: all.len() as f64 / seconds,
        p50: pct(&all, 50.0),
        p99: pct(&all, 99.0),
        mean_batch: delta(0, 1),
        server_mean: delta(2, 3),
    }
}

fn main() -> Result<(), String> {
    let a = parse_args()?;
    if let Some(path) = &a.synth_mlp784
        && !path.exists()
    {
        let bytes = bnfold::synth::mlp(784, false, &[1024; 3], bnfold::Activation::Relu, 10, 42)
            .map_err(|e| e.to_string())?;
        std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let widths: Vec<usize> = a
        .models
        .iter()
        .map(|(_, p)| {
            bnfold::Model::load(p)
                .map(|m| m.input_features())
                .map_err(|e| format!("{}: {e}", p.display()))
        })
        .collect::<Result<_, _>>()?;

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("## The library called directly (no server running)\n");
    println!("| model | rows per call | threads | rows/s | p50 per call | p99 per call |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, path) in &a.models {
        for (batch, t) in [
            (1, 1),
            (1, threads),
            (a.max_batch, 1),
            (a.max_batch, threads),
        ] {
            let (rows_s, p50, p99) = direct(path, batch, t, a.seconds.min(3.0));
            println!(
                "| {name} | {batch} | {t} | {rows_s:.0} | {:.1} us | {:.1} us |",
                p50 * 1e6,
                p99 * 1e6
            );
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.client_threads)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut failed = 0;
    for &mode in &a.modes {
        let title = match mode {
            Some(us) => format!("on (window {us} us, max {} rows)", a.max_batch),
            None => "off".into(),
        };
        println!("\n## Through HTTP, batching {title}\n");
        eprintln!("starting bnfold serve (batching {title})");
        let server = Server::start(&a, mode)?;
        println!(
            "| model | clients | requests/s | p50 | p99 | failed | mean rows per batch | server-side mean |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        let mut adjacent = Vec::new();
        for ((name, path), &width) in a.models.iter().zip(&widths) {
            // The library again, right before this model's sweep (the server idle): the machine
            // is shared, and its speed drifts over a run.
            let one = direct(path, 1, 1, 1.0);
            let many = direct(path, a.max_batch, 1, 1.0);
            adjacent.push((name, one, many));
            for &clients in &a.concurrency {
                let p = rt.block_on(run_point(
                    server.addr,
                    name,
                    width,
                    clients,
                    a.warmup,
                    a.seconds,
                ));
                println!(
                    "| {name} | {clients} | {:.0} | {:.3} ms | {:.3} ms | {} | {:.1} | {:.3} ms |",
                    p.rps,
                    p.p50 * 1e3,
                    p.p99 * 1e3,
                    p.failed,
                    p.mean_batch,
                    p.server_mean * 1e3
                );
                failed += p.failed;
            }
        }
        drop(server);
        println!(
            "\nThe library just before each model's sweep, one thread: 1 row per call, and {} rows.\n",
            a.max_batch
        );
        println!(
            "| model | 1 row: p50 | 1 row: rows/s | {} rows: rows/s |",
            a.max_batch
        );
        println!("|---|---:|---:|---:|");
        for (name, one, many) in adjacent {
            println!(
                "| {name} | {:.1} us | {:.0} | {:.0} |",
                one.1 * 1e6,
                one.0,
                many.0
            );
        }
    }
    if failed > 0 {
        return Err(format!("{failed} requests failed"));
    }
    Ok(())
}
