//! Helpers of the server's tests: the shipped model and its rows, a server on an ephemeral
//! loopback port, and a real HTTP client (hyper's).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bnfold_serve::{Config, Handle, ModelSpec};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The repository's root (the core crate's directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shipped digits model.
pub fn digits() -> PathBuf {
    root().join("models/digits.bnw")
}

/// The 8 sample rows shipped beside it, flat, and their count.
pub fn sample_rows() -> (Vec<f32>, usize) {
    let text = std::fs::read_to_string(root().join("models/digits_sample.csv")).unwrap();
    let rows: Vec<Vec<f32>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(|v| v.trim().parse().unwrap()).collect())
        .collect();
    (rows.concat(), rows.len())
}

/// The library's outputs for `x` (`batch` rows), on a plan compiled as the server compiles it.
pub fn library(path: &std::path::Path, x: &[f32], batch: usize) -> Vec<f32> {
    let model = bnfold::Model::load(path).unwrap();
    let plan = model.compile(&bnfold::Options::folded()).unwrap();
    let mut s = plan.session();
    s.run(x, batch).unwrap().to_vec()
}

/// A server for `models` on 127.0.0.1, any free port, quiet, two workers; `tweak` changes the
/// settings.
pub fn serve(models: &[(&str, PathBuf)], tweak: impl FnOnce(&mut Config)) -> Handle {
    let specs = models
        .iter()
        .map(|(n, p)| ModelSpec {
            name: n.to_string(),
            path: p.clone(),
        })
        .collect();
    let mut c = Config::new(specs, "127.0.0.1:0".parse().unwrap());
    c.workers = 2;
    c.http_threads = 2;
    c.log = false;
    c.shutdown_timeout = Duration::from_secs(10);
    tweak(&mut c);
    bnfold_serve::start(c).unwrap()
}

/// A runtime for the client side of a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// hyper's pooled HTTP/1.1 client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub version: Option<u64>,
    pub batch_rows: Option<usize>,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }

    /// The `{"predictions": [[...]]}` rows, flat.
    pub fn predictions(&self) -> Vec<f32> {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        let v = self.json();
        v["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
            })
            .collect()
    }

    /// The message of an `{"error": "..."}` body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {:?}", self.body))
            .to_owned()
    }
}

/// Send one request and read the whole answer (with a 20 s bound).
pub async fn send(
    c: &HttpClient,
    method: &str,
    addr: SocketAddr,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Result<Reply, String> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = content_type {
        req = req.header("content-type", t);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let go = async {
        let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (status, content_type) = (resp.status().as_u16(), header("content-type"));
        let version = header("x-bnfold-model-version").and_then(|v| v.parse().ok());
        let batch_rows = header("x-bnfold-batch-rows").and_then(|v| v.parse().ok());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            content_type: content_type.unwrap_or_default(),
            version,
            batch_rows,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(20), go)
        .await
        .map_err(|_| "no answer within 20 s".to_string())?
}

/// `{"instances": [...]}` for `rows` rows of `x`.
pub fn instances(x: &[f32], rows: usize) -> Vec<u8> {
    let width = x.len() / rows;
    let rows: Vec<&[f32]> = x.chunks(width).collect();
    serde_json::to_vec(&serde_json::json!({ "instances": rows })).unwrap()
}

/// POST `{"instances": ...}` to `model:predict`.
pub async fn predict(
    c: &HttpClient,
    addr: SocketAddr,
    model: &str,
    x: &[f32],
    rows: usize,
) -> Result<Reply, String> {
    send(
        c,
        "POST",
        addr,
        &format!("/v1/models/{model}:predict"),
        Some("application/json"),
        instances(x, rows),
    )
    .await
}

/// GET a path.
pub async fn get(c: &HttpClient, addr: SocketAddr, path: &str) -> Reply {
    send(c, "GET", addr, path, None, Vec::new()).await.unwrap()
}

/// The largest normwise difference between two output batches, for comparisons across batch
/// sizes (where the kernels may round differently).
pub fn normwise(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// The value of a metric line `name{labels} value` on the metrics page.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
