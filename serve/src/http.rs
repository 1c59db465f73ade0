//! The REST API: routing, request bodies in, answers out. Every refusal is a 4xx (or a 5xx for
//! the server's own trouble) with a JSON body `{"error": "..."}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use serde::ser::{SerializeMap, SerializeSeq};
use tokio::sync::oneshot;

use crate::App;
use crate::batch::{Answer, Job, Refused};
use crate::{json, npy};

/// Response bodies are always whole.
pub type Body = Full<Bytes>;

/// Bodies longer than this are parsed on the blocking pool, not on the runtime's threads.
const PARSE_INLINE_BYTES: usize = 256 << 10;

/// The `Content-Type` of `.npy` bodies.
pub const NPY: &str = "application/x-npy";

/// The header that says which version of the model answered.
pub const VERSION_HEADER: &str = "x-bnfold-model-version";
/// The header that says how many rows the request's batch had (its own included).
pub const BATCH_HEADER: &str = "x-bnfold-batch-rows";

fn error(code: StatusCode, message: impl AsRef<str>) -> Response<Body> {
    let body = serde_json::to_vec(&serde_json::json!({ "error": message.as_ref() }))
        .unwrap_or_else(|_| b"{\"error\": \"\"}".to_vec());
    respond(code, "application/json", body)
}

fn respond(code: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Bodies of requests that are answered without reading them (a wrong path or method) are read
/// and dropped up to this length, so that the connection can go on; past it, it is closed...
const DRAIN_BYTES: usize = 64 << 10;
/// ... and for at most this long.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Close the connection after this answer.
fn close(r: &mut Response<Body>) {
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
}

fn json(code: StatusCode, value: &serde_json::Value) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(code, "application/json", body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A name from a client, for an error message: control characters escaped, at most 64 characters.
fn echo(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_debug).collect();
    if s.chars().nth(64).is_some() {
        out.push_str("...");
    }
    out
}

/// The service: one call per request.
pub(crate) async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    // The body, until a handler reads it.
    let mut body = Some(body);
    let path = parts.uri.path();
    let mut response = if path == "/metrics" {
        if parts.method == Method::GET {
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                app.metrics_page().into_bytes(),
            )
        } else {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "use GET for /metrics");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            r
        }
    } else if let Some(rest) = path.strip_prefix("/v1/models/") {
        let (model, response) = models(&app, rest, &parts, &mut body).await;
        app.metrics.request(model, response.status().as_u16());
        if let Some(m) = model
            && rest.ends_with(":predict")
        {
            app.metrics.latency(m, start.elapsed());
        }
        response
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!(
                "no such path '{}': use POST /v1/models/NAME:predict, GET /v1/models/NAME or GET /metrics",
                echo(path)
            ),
        )
    };
    // A body nobody read must be read before the connection can carry the next request; a long
    // or slow one is not worth it: the connection is closed after this answer instead, and the
    // header says so, so that clients do not send another request on it.
    if let Some(body) = body {
        let drain = Limited::new(body, DRAIN_BYTES.min(app.limits.max_body_bytes)).collect();
        // The answer waits for this: a second at most.
        let patience = DRAIN_TIME.min(app.limits.request_timeout);
        let drained = tokio::time::timeout(patience, drain).await;
        if !matches!(drained, Ok(Ok(_))) {
            close(&mut response);
        }
    }
    Ok(response)
}

/// `/v1/models/{name}` and `/v1/models/{name}:predict`; returns the model's index when the name
/// is served, for the metrics.
async fn models(
    app: &App,
    rest: &str,
    parts: &Parts,
    body: &mut Option<Incoming>,
) -> (Option<usize>, Response<Body>) {
    let (name, verb) = match rest.rsplit_once(':') {
        Some((name, verb)) => (name, Some(verb)),
        None => (rest, None),
    };
    let name = name.strip_suffix("/metadata").unwrap_or(name);
    let Some(m) = app.models.iter().position(|s| s.name == name) else {
        let served: Vec<&str> = app.models.iter().map(|s| s.name.as_str()).collect();
        return (
            None,
            error(
                StatusCode::NOT_FOUND,
                format!(
                    "model '{}' is not served here (served: {})",
                    echo(name),
                    served.join(", ")
                ),
            ),
        );
    };
    let response = match (verb, parts.method.clone()) {
        (None, Method::GET) => json(StatusCode::OK, &app.models[m].status_json()),
        (Some("predict"), Method::POST) => match body.take() {
            Some(b) => predict(app, m, parts, b).await,
            None => error(StatusCode::INTERNAL_SERVER_ERROR, "the body was taken"),
        },
        (Some("predict"), _) => {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "use POST for :predict");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            r
        }
        (Some(verb), _) => error(
            StatusCode::NOT_FOUND,
            format!(
                "unknown method ':{}' (this server answers :predict)",
                echo(verb)
            ),
        ),
        (None, _) => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET for a model's status, POST to NAME:predict for predictions",
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            r
        }
    };
    (Some(m), response)
}

/// Rows parsed from a body, and how to answer.
enum Parsed {
    Json(json::Rows),
    Npy(npy::Matrix),
}

async fn predict(app: &App, m: usize, parts: &Parts, body: Incoming) -> Response<Body> {
    let limits = &app.limits;
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
    // TensorFlow Serving reads any body as JSON (`curl -d` sends form encoding): so does this
    // server, except a body declared or recognisably (by its magic bytes) `.npy`.
    let declared_npy = content_type.as_deref().is_some_and(|t| t.starts_with(NPY));
    // The body is not read to its end: the connection closes after the answer.
    let too_long = || {
        let mut r = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is longer than the limit of {} bytes",
                limits.max_body_bytes
            ),
        );
        close(&mut r);
        r
    };
    let claimed = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if claimed.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return too_long();
    }
    let collect = Limited::new(body, limits.max_body_bytes).collect();
    let body = match tokio::time::timeout(limits.request_timeout, collect).await {
        Err(_) => {
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s",
                    limits.request_timeout.as_secs_f64()
                ),
            );
            close(&mut r);
            return r;
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_long(),
        Ok(Err(e)) => {
            let mut r = error(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {}", echo(&e.to_string())),
            );
            close(&mut r);
            return r;
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };

    let loaded = app.models[m].current();
    let (width, max_rows) = (loaded.info.input_features, limits.max_rows);
    let big = body.len() > PARSE_INLINE_BYTES;
    let is_npy = declared_npy || npy::is_npy(&body);
    let parse = move || -> Result<Parsed, (StatusCode, String)> {
        let code = |too_many| {
            if too_many {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            }
        };
        if is_npy {
            npy::parse(&body, width, max_rows)
                .map(Parsed::Npy)
                .map_err(|e| (code(e.too_many_rows), e.message))
        } else {
            json::parse(&body, width, max_rows)
                .map(Parsed::Json)
                .map_err(|e| (code(e.too_many_rows), e.message))
        }
    };
    let parsed = if big {
        tokio::task::spawn_blocking(parse)
            .await
            .unwrap_or_else(|_| {
                Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "parsing the body failed".into(),
                ))
            })
    } else {
        parse()
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err((code, message)) => return error(code, message),
    };
    let (key, rows, input) = match parsed {
        Parsed::Json(r) => (Some(r.key), r.rows, r.data),
        Parsed::Npy(a) => (None, a.rows, a.data),
    };

    let (reply, answer) = oneshot::channel();
    let job = Job {
        loaded,
        rows,
        input,
        queued_at: Instant::now(),
        reply,
    };
    if let Err(refused) = app.scheduler.submit(m, job) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            match refused {
                Refused::Overloaded => "the model's queue is full; try again later",
                Refused::ShuttingDown => "the server is shutting down",
            },
        );
    }
    let answer = match answer.await {
        Ok(Ok(a)) => a,
        Ok(Err(message)) => return error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request was dropped (the server is shutting down)",
            );
        }
    };
    let mut r = match key {
        Some(key) => match serde_json::to_vec(&Out {
            key: key.answer(),
            answer: &answer,
        }) {
            Ok(body) => respond(StatusCode::OK, "application/json", body),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        None => respond(
            StatusCode::OK,
            NPY,
            npy::encode(
                answer.output.len() / answer.cols.max(1),
                answer.cols,
                &answer.output,
            ),
        ),
    };
    let h = r.headers_mut();
    h.insert(VERSION_HEADER, HeaderValue::from(answer.version));
    h.insert(BATCH_HEADER, HeaderValue::from(answer.batch_rows));
    r
}

/// `{"predictions": [[...], ...]}`: the rows of an answer under its key (non-finite outputs,
/// which JSON cannot hold, are written as `null`).
struct Out<'a> {
    key: &'static str,
    answer: &'a Answer,
}

struct RowsOut<'a>(&'a Answer);

impl serde::Serialize for Out<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(self.key, &RowsOut(self.answer))?;
        map.end()
    }
}

impl serde::Serialize for RowsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let a = self.0;
        let cols = a.cols.max(1);
        let mut seq = s.serialize_seq(Some(a.output.len() / cols))?;
        for row in a.output.chunks(cols) {
            seq.serialize_element(row)?;
        }
        seq.end()
    }
}
