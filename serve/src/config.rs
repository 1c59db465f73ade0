//! The server's settings (the `bnfold serve` flags) and the `NAME=PATH` model specs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One model to serve: the name in the URL and the weight file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The name in `/v1/models/{name}`: 1 to 64 characters of `A-Z a-z 0-9 _ . -`, so that it
    /// needs no escaping in a URL, a log line or a Prometheus label.
    pub name: String,
    /// The weight file (read again on every reload).
    pub path: PathBuf,
}

impl ModelSpec {
    /// Parse `NAME=PATH`.
    pub fn parse(s: &str) -> Result<ModelSpec, String> {
        let (name, path) = s
            .split_once('=')
            .ok_or_else(|| format!("'{}' is not NAME=PATH", s.escape_debug()))?;
        check_name(name)?;
        if path.is_empty() {
            return Err(format!("model '{name}' has an empty path"));
        }
        Ok(ModelSpec {
            name: name.to_owned(),
            path: PathBuf::from(path),
        })
    }
}

/// The longest model name accepted.
pub const MAX_NAME: usize = 64;

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "model name '{}' must be 1 to {MAX_NAME} characters of A-Z, a-z, 0-9, '_', '.', '-'",
            name.escape_debug()
        ))
    }
}

/// Everything the server needs to start. [`Config::new`] gives the defaults of `bnfold serve`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The models, each with a distinct name.
    pub models: Vec<ModelSpec>,
    /// Where to listen (port 0: any free port; [`crate::Handle::local_addr`] says which).
    pub addr: SocketAddr,
    /// Inference worker threads, each with its own session per model (default: one per core).
    pub workers: usize,
    /// Threads of the async runtime that parses HTTP (default: 2, or 1 on one core).
    pub http_threads: usize,
    /// Gather requests into batches (`false`: each request runs alone, at once).
    pub batching: bool,
    /// How long the first request of a batch waits for others (default 1 ms).
    pub batch_timeout: Duration,
    /// The most rows in one batch (default 64). A request with more rows runs alone.
    pub max_batch: usize,
    /// The largest request body (default 16 MiB); a longer one gets 413.
    pub max_body_bytes: usize,
    /// The most rows in one request (default 4096); more get 413.
    pub max_rows: usize,
    /// The most rows waiting per model (default 65536); a request that would pass it gets 503.
    pub max_queue_rows: usize,
    /// How long a client may take to send a request's headers or its body (default 30 s): a
    /// connection that trickles is closed (headers) or answered 408 (body).
    pub request_timeout: Duration,
    /// How long a graceful shutdown waits for requests in flight (default 30 s).
    pub shutdown_timeout: Duration,
    /// Reload on SIGHUP and shut down on SIGTERM and SIGINT (the binary: `true`; tests that run
    /// servers in their own process: `false`, and they call [`crate::Handle::reload`] and
    /// [`crate::Handle::shutdown`]).
    pub signals: bool,
    /// Write log lines (start, reloads, shutdown) to stderr.
    pub log: bool,
}

impl Config {
    /// The defaults of `bnfold serve` for these models and address.
    pub fn new(models: Vec<ModelSpec>, addr: SocketAddr) -> Config {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Config {
            models,
            addr,
            workers: cores,
            http_threads: cores.clamp(1, 2),
            batching: true,
            batch_timeout: Duration::from_micros(1000),
            max_batch: 64,
            max_body_bytes: 16 << 20,
            max_rows: 4096,
            max_queue_rows: 65536,
            request_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            signals: false,
            log: true,
        }
    }

    /// Check the settings: a setting of zero, or two models of one name, is an error.
    pub fn validate(&self) -> Result<(), String> {
        if self.models.is_empty() {
            return Err("no model to serve (--model NAME=PATH)".into());
        }
        for (i, m) in self.models.iter().enumerate() {
            check_name(&m.name)?;
            if self.models[..i].iter().any(|o| o.name == m.name) {
                return Err(format!("two models are named '{}'", m.name));
            }
        }
        for (what, v) in [
            ("workers", self.workers),
            ("http threads", self.http_threads),
            ("max batch", self.max_batch),
            ("max body bytes", self.max_body_bytes),
            ("max rows", self.max_rows),
            ("max queue rows", self.max_queue_rows),
        ] {
            if v == 0 {
                return Err(format!("{what} must be at least 1"));
            }
        }
        if self.max_rows > self.max_queue_rows {
            return Err("max rows must not be above max queue rows".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_names() {
        let m = ModelSpec::parse("digits=models/digits.bnw").unwrap();
        assert_eq!(m.name, "digits");
        assert_eq!(m.path, PathBuf::from("models/digits.bnw"));
        assert!(ModelSpec::parse("a=b=c").is_ok());
        for bad in ["digits", "=x", "a b=x", "a:predict=x", "a/b=x", "a=", "é=x"] {
            assert!(ModelSpec::parse(bad).is_err(), "{bad}");
        }
        let addr = "127.0.0.1:0".parse().unwrap();
        let mut c = Config::new(vec![m.clone(), m], addr);
        assert!(c.validate().unwrap_err().contains("two models"));
        c.models.pop();
        assert!(c.validate().is_ok());
        c.max_batch = 0;
        assert!(c.validate().is_err());
    }
}
