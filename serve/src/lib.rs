//! `bnfold serve`: a model server over the bnfold library, the way production model servers do
//! it: TensorFlow Serving's REST conventions, inference on a dedicated pool of worker threads with
//! dynamic batching, Prometheus metrics, reload without downtime on SIGHUP, graceful shutdown on
//! SIGTERM and Ctrl-C. `docs/SERVING.md` has the API, the design and the measured figures.
//!
//! ```no_run
//! use bnfold_serve::{Config, ModelSpec};
//! let models = vec![ModelSpec::parse("digits=models/digits.bnw")?];
//! let mut config = Config::new(models, "127.0.0.1:8501".parse()?);
//! config.signals = true; // SIGHUP reloads, SIGTERM and Ctrl-C stop
//! let server = bnfold_serve::start(config)?;
//! println!("listening on {}", server.local_addr());
//! server.wait()?; // until a signal stops it and the requests in flight are answered
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The HTTP layer (hyper on tokio) parses requests and writes answers; it never runs a model.
//! Inference runs on `Config::workers` plain threads, each with its own
//! [`bnfold::OwnedSession`] per model (see [`batch`] for the batching rules).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

pub mod batch;
pub mod config;
pub mod http;
pub mod json;
pub mod metrics;
pub mod models;
pub mod npy;

pub use config::{Config, ModelSpec};
pub use models::{ReloadResult, ServedModel};

/// Lock a mutex, whatever a panicking holder left: every structure behind one stays valid between
/// statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why the server could not start or did not stop cleanly.
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(s: String) -> Error {
        Error(s)
    }
}

/// The request limits the handlers apply.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_body_bytes: usize,
    pub max_rows: usize,
    pub request_timeout: Duration,
}

/// Everything the handlers share.
#[derive(Debug)]
pub(crate) struct App {
    pub models: Vec<ServedModel>,
    pub scheduler: Arc<batch::Scheduler>,
    pub metrics: Arc<metrics::Metrics>,
    pub limits: Limits,
    reloading: Mutex<()>,
    log: bool,
}

impl App {
    fn log(&self, message: &str) {
        if self.log {
            log(message);
        }
    }

    fn metrics_page(&self) -> String {
        let versions = self.models.iter().map(|m| m.current().version);
        self.metrics
            .render(&batch::gauges(&self.scheduler, versions))
    }

    /// Reload every model (one reload at a time); the result per model.
    fn reload_all(&self) -> Vec<(String, ReloadResult)> {
        let _one_at_a_time = lock(&self.reloading);
        self.models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let r = m.reload();
                self.metrics.reload(i, r.ok);
                match &r.error {
                    None => {
                        let cur = m.current();
                        self.log(&format!(
                            "reloaded {} from {}: version {}, checksum {}",
                            m.name,
                            m.path.display(),
                            r.serving_version,
                            cur.info.checksum
                        ));
                    }
                    Some(e) => self.log(&format!(
                        "reload of {} failed, still serving version {}: {e}",
                        m.name, r.serving_version
                    )),
                }
                (m.name.clone(), r)
            })
            .collect()
    }
}

/// A log line on stderr, control characters escaped (messages can hold names from files).
fn log(message: &str) {
    let text: String = message
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    eprintln!("bnfold serve: {text}");
}

/// A running server.
#[derive(Debug)]
pub struct Handle {
    addr: SocketAddr,
    app: Arc<App>,
    stop: watch::Sender<bool>,
    main: Option<std::thread::JoinHandle<Result<(), Error>>>,
}

impl Handle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reload every model now, as SIGHUP does, and return each one's result (blocks while the
    /// files are loaded, verified and compiled; requests go on being answered meanwhile).
    pub fn reload(&self) -> Vec<(String, ReloadResult)> {
        self.app.reload_all()
    }

    /// The models served.
    pub fn models(&self) -> &[ServedModel] {
        &self.app.models
    }

    /// Stop as SIGTERM does: stop accepting connections, answer the requests in flight, stop
    /// the workers; returns when all of that is done.
    pub fn shutdown(mut self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        self.join()
    }

    /// Wait until the server stops (after SIGTERM or Ctrl-C, with [`Config::signals`]).
    pub fn wait(mut self) -> Result<(), Error> {
        self.join()
    }

    fn join(&mut self) -> Result<(), Error> {
        match self.main.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(Error("the server's main thread panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let _ = self.join();
    }
}

/// The signals the server answers, when [`Config::signals`] is set.
struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

/// Load, verify and compile every model, bind the address, start the workers and the HTTP
/// runtime; returns once the server is accepting connections.
pub fn start(config: Config) -> Result<Handle, Error> {
    config.validate()?;
    let mut models = Vec::with_capacity(config.models.len());
    for spec in &config.models {
        let m = ServedModel::load(&spec.name, &spec.path)?;
        if config.log {
            let cur = m.current();
            log(&format!(
                "loaded {} from {}: {} -> {}, {} layers in {} steps, {} kernels, checksum {}",
                m.name,
                m.path.display(),
                cur.info.input_features,
                cur.info.output_features,
                cur.info.layers.len(),
                cur.info.steps,
                cur.info.kernel,
                cur.info.checksum
            ));
        }
        models.push(m);
    }
    let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    let n = models.len();
    let metrics = Arc::new(metrics::Metrics::new(names));
    let scheduler = Arc::new(batch::Scheduler::new(
        n,
        batch::Policy {
            batching: config.batching,
            window: config.batch_timeout,
            max_batch: config.max_batch,
            max_queue_rows: config.max_queue_rows,
        },
    ));
    let app = Arc::new(App {
        models,
        scheduler: Arc::clone(&scheduler),
        metrics: Arc::clone(&metrics),
        limits: Limits {
            max_body_bytes: config.max_body_bytes,
            max_rows: config.max_rows,
            request_timeout: config.request_timeout,
        },
        reloading: Mutex::new(()),
        log: config.log,
    });

    let listener = std::net::TcpListener::bind(config.addr)
        .map_err(|e| Error(format!("cannot listen on {}: {e}", config.addr)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error(format!("cannot listen on {}: {e}", config.addr)))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error(format!("{addr}: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.http_threads)
        .thread_name("bnfold-http")
        .enable_all()
        .build()
        .map_err(|e| Error(format!("cannot start the HTTP runtime: {e}")))?;
    let listener = {
        let _in_runtime = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(|e| Error(format!("{addr}: {e}")))?
    };
    let signals = if config.signals {
        use tokio::signal::unix::{SignalKind, signal};
        let _in_runtime = runtime.enter();
        let s = |kind| signal(kind).map_err(|e| Error(format!("cannot handle signals: {e}")));
        Some(Signals {
            hangup: s(SignalKind::hangup())?,
            terminate: s(SignalKind::terminate())?,
            interrupt: s(SignalKind::interrupt())?,
        })
    } else {
        None
    };
    let workers = batch::spawn_workers(config.workers, n, &scheduler, &metrics)
        .map_err(|e| Error(format!("cannot start the workers: {e}")))?;

    let (stop, stopped) = watch::channel(false);
    let main_app = Arc::clone(&app);
    let shutdown_timeout = config.shutdown_timeout;
    let main = std::thread::Builder::new()
        .name("bnfold-serve".into())
        .spawn(move || {
            runtime.block_on(serve(
                listener,
                Arc::clone(&main_app),
                stopped,
                signals,
                shutdown_timeout,
            ));
            // Every connection is closed: no handler is left to queue a request. The workers run
            // what is queued, then stop.
            main_app.scheduler.close();
            let mut panicked = false;
            for w in workers {
                panicked |= w.join().is_err();
            }
            runtime.shutdown_timeout(Duration::from_secs(1));
            main_app.log("stopped");
            if panicked {
                return Err(Error("a worker thread panicked".into()));
            }
            Ok(())
        })
        .map_err(|e| Error(format!("cannot start the server thread: {e}")))?;
    app.log(&format!(
        "listening on http://{addr} ({} workers, batching {})",
        config.workers,
        if config.batching {
            format!(
                "up to {} rows within {} us",
                config.max_batch,
                config.batch_timeout.as_micros()
            )
        } else {
            "off".into()
        }
    ));
    Ok(Handle {
        addr,
        app,
        stop,
        main: Some(main),
    })
}

/// What a signal asks for.
enum Asked {
    Reload,
    Stop,
}

/// The next signal, or never without signals.
async fn next_signal(signals: &mut Option<Signals>) -> Asked {
    match signals {
        Some(s) => tokio::select! {
            _ = s.hangup.recv() => Asked::Reload,
            _ = s.terminate.recv() => Asked::Stop,
            _ = s.interrupt.recv() => Asked::Stop,
        },
        None => std::future::pending().await,
    }
}

/// Accept connections until told to stop, then shut down gracefully: stop accepting, let each
/// connection finish the request it is in (idle keep-alive connections are closed), for at most
/// `shutdown_timeout`.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    mut stopped: watch::Receiver<bool>,
    mut signals: Option<Signals>,
    shutdown_timeout: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(app.limits.request_timeout)
        .keep_alive(true);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Answers are small and written whole: do not let Nagle hold them back.
                    let _ = stream.set_nodelay(true);
                    let app = Arc::clone(&app);
                    let service = hyper::service::service_fn(move |req| {
                        http::handle(Arc::clone(&app), req)
                    });
                    let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        // A connection's errors (a client that went away, a malformed request
                        // line, a header timeout) end that connection only.
                        let _ = conn.await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors, or the like: wait a little, go on.
                    app.log(&format!("accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped.changed() => break,
            asked = next_signal(&mut signals) => match asked {
                Asked::Reload => {
                    let app = Arc::clone(&app);
                    app.log("SIGHUP: reloading every model");
                    tokio::task::spawn_blocking(move || app.reload_all());
                }
                Asked::Stop => {
                    app.log("stop signal: no new connections; answering the requests in flight");
                    break;
                }
            },
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(shutdown_timeout) => {
            app.log(&format!(
                "requests still in flight after {} s: closing their connections",
                shutdown_timeout.as_secs_f64()
            ));
        }
    }
}
