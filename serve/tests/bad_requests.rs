//! A bounded, seeded generator of bad requests: each gets the 4xx it deserves with an
//! `{"error": ...}` body, good requests sent among them are answered correctly, and the server
//! (its workers included) is whole at the end. Malformed HTTP on raw connections too.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bnfold::synth::Rng;
use common::*;

const MAX_ROWS: usize = 16;
const MAX_BODY: usize = 64 << 10;

/// What a bad request must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Code(u16),
    /// A random mutation that may leave the request valid: a 200 or a 4xx, never a 5xx.
    OkOr4xx,
}

#[derive(Debug)]
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    expect: Expect,
}

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[(rng.next_u64() % items.len() as u64) as usize]
}

fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

fn row_text(rng: &mut Rng, width: usize) -> Vec<String> {
    (0..width)
        .map(|_| format!("{}", (rng.unit() * 16.0).floor()))
        .collect()
}

fn json_body(rows: &[Vec<String>]) -> Vec<u8> {
    let rows: Vec<String> = rows.iter().map(|r| format!("[{}]", r.join(","))).collect();
    format!("{{\"instances\": [{}]}}", rows.join(",")).into_bytes()
}

fn npy_body(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    b.extend_from_slice(dict.as_bytes());
    b.extend_from_slice(data);
    b
}

fn npy_dict(descr: &str, fortran: &str, shape: &str) -> String {
    format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}\n")
}

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| ((i % 17) as f32).to_le_bytes())
        .collect()
}

const PREDICT: &str = "/v1/models/digits:predict";

/// One bad request of kind `kind`.
fn case(rng: &mut Rng, kind: usize) -> Case {
    let post = |what, body, expect| Case {
        what,
        method: "POST",
        path: PREDICT.into(),
        content_type: Some("application/json"),
        body,
        expect: Expect::Code(expect),
    };
    let rows = 1 + below(rng, 4);
    let mut good: Vec<Vec<String>> = (0..rows).map(|_| row_text(rng, 64)).collect();
    match kind {
        0 => {
            let name: String = (0..1 + below(rng, 12))
                .map(|_| *pick(rng, &['a', 'Z', '0', '_', '.', '-']))
                .collect();
            let name = format!("{name}{}", pick(rng, &["x", "%0a", "%20", "~"]));
            Case {
                what: "unknown model",
                method: "POST",
                path: format!("/v1/models/{name}:predict"),
                content_type: None,
                body: json_body(&good),
                expect: Expect::Code(404),
            }
        }
        1 => {
            let width = *pick(rng, &[0, 1, 63, 65, 128, 640]);
            let r = below(rng, rows);
            good[r] = row_text(rng, width);
            post("wrong width", json_body(&good), 400)
        }
        2 => {
            let (r, c) = (below(rng, rows), below(rng, 64));
            good[r][c] = pick(
                rng,
                &["\"a\"", "null", "true", "{}", "[1]", "\"1.0\"", "[]"],
            )
            .to_string();
            post("not a number", json_body(&good), 400)
        }
        3 => {
            let (r, c) = (below(rng, rows), below(rng, 64));
            good[r][c] =
                pick(rng, &["1e39", "-1e39", "1e999", "NaN", "Infinity", "-inf"]).to_string();
            post("not finite", json_body(&good), 400)
        }
        4 => {
            let many: Vec<Vec<String>> = (0..MAX_ROWS + 1 + below(rng, 20))
                .map(|_| row_text(rng, 64))
                .collect();
            post("too many rows", json_body(&many), 413)
        }
        5 => {
            let mut body = json_body(&good);
            let pad = MAX_BODY + 1 + below(rng, 30_000) - body.len();
            body.splice(1..1, std::iter::repeat_n(b' ', pad));
            post("body over the limit", body, 413)
        }
        6 => {
            let mut body = json_body(&good);
            if rng.next_u64().is_multiple_of(2) {
                body.truncate(below(rng, body.len()));
            } else {
                let at = below(rng, body.len());
                body.insert(at, *pick(rng, b"#@\x00}]:,"));
            }
            post("malformed JSON", body, 400)
        }
        7 => {
            let body: Vec<u8> = match below(rng, 11) {
                10 => (0..below(rng, 200))
                    .map(|_| rng.next_u64() as u8 | 1)
                    .collect(),
                i => [
                    "",
                    "[]",
                    "{}",
                    "null",
                    "\"x\"",
                    r#"{"instances": []}"#,
                    r#"{"instances": {}}"#,
                    r#"{"instances": [1, 2]}"#,
                    r#"{"instances": "x"}"#,
                    r#"{"instances": [[1]], "inputs": [[1]]}"#,
                ][i]
                    .as_bytes()
                    .to_vec(),
            };
            post("not the rows asked for", body, 400)
        }
        8 => {
            let n = 1 + below(rng, 4);
            let (dict, data, code) = match below(rng, 8) {
                0 => (
                    npy_dict("<i4", "False", &format!("({n}, 64)")),
                    f32_bytes(n * 64),
                    400,
                ),
                1 => (
                    npy_dict(">f4", "False", &format!("({n}, 64)")),
                    f32_bytes(n * 64),
                    400,
                ),
                2 => (
                    npy_dict("<f4", "True", &format!("({n}, 64)")),
                    f32_bytes(n * 64),
                    400,
                ),
                3 => (
                    npy_dict("<f4", "False", &format!("({n}, 63)")),
                    f32_bytes(n * 63),
                    400,
                ),
                4 => (
                    npy_dict("<f4", "False", "(17, 64)"),
                    f32_bytes(17 * 64),
                    413,
                ),
                5 => (
                    npy_dict("<f4", "False", &format!("({n}, 64)")),
                    f32_bytes(n * 64 - 1),
                    400,
                ),
                6 => {
                    let mut d = f32_bytes(n * 64);
                    let at = 4 * below(rng, n * 64);
                    d[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                    (npy_dict("<f4", "False", &format!("({n}, 64)")), d, 400)
                }
                _ => (
                    npy_dict("<f4", "False", "(99999999999, 64)"),
                    f32_bytes(64),
                    413,
                ),
            };
            Case {
                what: "bad .npy",
                method: "POST",
                path: PREDICT.into(),
                content_type: Some("application/x-npy"),
                body: npy_body(&dict, &data),
                expect: Expect::Code(code),
            }
        }
        9 => {
            let n = 1 + below(rng, 4);
            let mut body = npy_body(
                &npy_dict("<f4", "False", &format!("({n}, 64)")),
                &f32_bytes(n * 64),
            );
            // Flip one byte of the magic, version, length or header.
            let at = below(rng, 10 + 60);
            body[at] ^= 1 << below(rng, 8);
            Case {
                what: "flipped .npy header",
                method: "POST",
                path: PREDICT.into(),
                content_type: Some("application/x-npy"),
                body,
                expect: Expect::OkOr4xx,
            }
        }
        10 => {
            let (method, path, code) = *pick(
                rng,
                &[
                    ("GET", PREDICT, 405),
                    ("PUT", "/v1/models/digits", 405),
                    ("DELETE", "/metrics", 405),
                    ("POST", "/v1/models/digits:classify", 404),
                    ("POST", "/v1/models/digits/versions/1:predict", 404),
                    ("POST", "/v1/models/:predict", 404),
                    ("GET", "/nope", 404),
                    ("GET", "/v1/models", 404),
                ],
            );
            Case {
                what: "wrong method or path",
                method,
                path: path.into(),
                content_type: None,
                body: json_body(&good),
                expect: Expect::Code(code),
            }
        }
        _ => Case {
            what: ".npy declared, JSON sent",
            method: "POST",
            path: PREDICT.into(),
            content_type: Some("application/x-npy"),
            body: json_body(&good),
            expect: Expect::Code(400),
        },
    }
}

#[test]
fn bad_requests_get_4xx_with_a_message_and_never_disturb_good_ones() {
    const CASES: usize = 600;
    const KINDS: usize = 12;
    let server = serve(&[("digits", digits())], |c| {
        c.max_rows = MAX_ROWS;
        c.max_body_bytes = MAX_BODY;
        c.batch_timeout = Duration::from_micros(500);
    });
    let addr = server.local_addr();
    let (x, n) = sample_rows();
    let want = library(&digits(), &x, n);
    let mut rng = Rng::new(13);
    let cases: Vec<Case> = (0..CASES).map(|i| case(&mut rng, i % KINDS)).collect();
    let rt = runtime();
    rt.block_on(async {
        let c = client();
        // 8 clients at once, each sending a good request after every 5 bad ones.
        let chunks: Vec<Vec<Case>> = {
            let mut chunks: Vec<Vec<Case>> = (0..8).map(|_| Vec::new()).collect();
            for (i, case) in cases.into_iter().enumerate() {
                chunks[i % 8].push(case);
            }
            chunks
        };
        let tasks: Vec<_> = chunks
            .into_iter()
            .map(|cases| {
                let (c, x, want) = (c.clone(), x.clone(), want.clone());
                tokio::spawn(async move {
                    for (i, case) in cases.iter().enumerate() {
                        let r = send(
                            &c,
                            case.method,
                            addr,
                            &case.path,
                            case.content_type,
                            case.body.clone(),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("{}: {e}", case.what));
                        let ok = match case.expect {
                            Expect::Code(code) => r.status == code,
                            Expect::OkOr4xx => r.status == 200 || (400..500).contains(&r.status),
                        };
                        assert!(
                            ok,
                            "{} ({} {}): got {} {}",
                            case.what,
                            case.method,
                            case.path,
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        );
                        if r.status != 200 {
                            assert!(!r.error().is_empty(), "{}", case.what);
                        }
                        if i % 5 == 4 {
                            let got = predict(&c, addr, "digits", &x, n).await.unwrap();
                            assert!(normwise(&got.predictions(), &want) < 1e-5);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let page = get(&c, addr, "/metrics").await;
        let page = String::from_utf8_lossy(&page.body);
        let count = |code: &str| {
            metric(
                &page,
                &format!("bnfold_requests_total{{model=\"digits\",code=\"{code}\"}}"),
            )
            .unwrap_or(0.0)
        };
        assert!(count("400") > 250.0 && count("413") > 80.0, "{page}");
    });
    // Every worker is still there: a batch per worker at once.
    rt.block_on(async {
        let c = client();
        let all: Vec<_> = (0..8)
            .map(|_| {
                let (c, x) = (c.clone(), x.clone());
                tokio::spawn(async move { predict(&c, addr, "digits", &x, n).await })
            })
            .collect();
        for r in all {
            let got = r.await.unwrap().unwrap().predictions();
            assert!(normwise(&got, &want) < 1e-5);
        }
    });
    server.shutdown().unwrap();
}

/// Write `bytes` on a raw connection and read whatever comes back until the server closes it or
/// 5 s pass.
fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server may answer and close before reading everything: a failed write is fine.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn malformed_http_ends_only_its_own_connection() {
    let server = serve(&[("digits", digits())], |c| {
        c.max_body_bytes = MAX_BODY;
    });
    let addr = server.local_addr();
    let mut rng = Rng::new(29);
    let long_header = format!(
        "GET /metrics HTTP/1.1\r\nX-Long: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let mut payloads: Vec<Vec<u8>> = vec![
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"\r\n\r\n\r\n".to_vec(),
        b"POST /v1/models/digits:predict HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n".to_vec(),
        b"POST /v1/models/digits:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"inst".to_vec(),
        b"POST /v1/models/digits:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"POST /v1/models/digits:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\n".to_vec(),
        b"POST /v1/models/digits:predict HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec(),
        format!(
            "POST /v1/models/digits:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            MAX_BODY + 10,
            " ".repeat(MAX_BODY + 10)
        )
        .into_bytes(),
        long_header.into_bytes(),
    ];
    for _ in 0..20 {
        payloads.push(
            (0..below(&mut rng, 300))
                .map(|_| rng.next_u64() as u8)
                .collect(),
        );
    }
    for p in &payloads {
        let answer = raw(addr, p);
        // Whatever comes back is an HTTP status line or nothing, never a server error.
        let text = String::from_utf8_lossy(&answer);
        assert!(!text.starts_with("HTTP/1.1 5"), "{text}");
    }
    // The chunked body over the limit got its 413 from the handler.
    let chunked = raw(addr, &payloads[7]);
    assert!(String::from_utf8_lossy(&chunked).starts_with("HTTP/1.1 413"));
    let (x, n) = sample_rows();
    let rt = runtime();
    let got = rt
        .block_on(predict(&client(), addr, "digits", &x, n))
        .unwrap()
        .predictions();
    assert_eq!(got, library(&digits(), &x, n));
    server.shutdown().unwrap();
}
