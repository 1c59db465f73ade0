//! The REST API on 127.0.0.1: answers equal the library's, status and metrics, many concurrent
//! clients each getting their own rows back, batching on and off.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn json_and_npy_answers_equal_the_library_bit_for_bit() {
    let server = serve(&[("digits", digits())], |_| {});
    let addr = server.local_addr();
    let (x, n) = sample_rows();
    let want = library(&digits(), &x, n);
    runtime().block_on(async {
        let c = client();
        // All 8 rows in one request: one batch of exactly these rows, as `Session::run` ran them.
        let r = predict(&c, addr, "digits", &x, n).await.unwrap();
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.version, Some(1));
        let got = r.predictions();
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        // The predicted digits the README gives for these rows.
        let classes: Vec<usize> = got.chunks(10).map(|r| bnfold::argmax(r).unwrap()).collect();
        assert_eq!(classes, [0, 1, 2, 3, 4, 9, 6, 7]);

        // The same rows as float64 .npy: a float32 .npy answer.
        let mut body = b"\x93NUMPY\x01\x00".to_vec();
        let dict = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({n}, 64), }}\n");
        body.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        body.extend_from_slice(dict.as_bytes());
        for v in &x {
            body.extend_from_slice(&f64::from(*v).to_le_bytes());
        }
        let path = "/v1/models/digits:predict";
        let r = send(&c, "POST", addr, path, Some("application/x-npy"), body)
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.content_type.as_str()),
            (200, "application/x-npy")
        );
        let m = bnfold_serve::npy::parse(&r.body, 10, n).unwrap();
        assert_eq!((m.rows, m.cols), (n, 10));
        assert_eq!(m.data, want);

        // The columnar spelling answers under "outputs"; one row alone also matches.
        let body = serde_json::to_vec(&serde_json::json!({"inputs": [&x[..64]]})).unwrap();
        let r = send(&c, "POST", addr, path, None, body).await.unwrap();
        let v = r.json();
        let one: Vec<f32> = v["outputs"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert!(normwise(&one, &want[..10]) < 1e-6);
    });
    server.shutdown().unwrap();
}

#[test]
fn status_and_metrics_describe_the_model() {
    let server = serve(&[("digits", digits())], |_| {});
    let addr = server.local_addr();
    let model = bnfold::Model::load(digits()).unwrap();
    let plan = model.compile(&bnfold::Options::folded()).unwrap();
    runtime().block_on(async {
        let c = client();
        let s = get(&c, addr, "/v1/models/digits").await;
        assert_eq!(s.status, 200);
        let v = s.json();
        assert_eq!(v["model_version_status"][0]["state"], "AVAILABLE");
        assert_eq!(v["model_version_status"][0]["version"], "1");
        let md = &v["metadata"];
        assert_eq!(md["input_features"], 64);
        assert_eq!(md["output_features"], 10);
        assert_eq!(md["folded"], true);
        assert_eq!(md["kernel"], plan.kernel_isa().name());
        assert_eq!(md["steps"], plan.num_steps());
        assert_eq!(md["layers"].as_array().unwrap().len(), model.layers().len());
        assert_eq!(
            md["checksum"],
            format!("0x{:08x}", model.header().checksum).as_str()
        );
        assert!(md["verify_worst_error"].as_f64().unwrap() <= 1e-4);
        assert!(v["last_reload"].is_null());
        assert_eq!(
            get(&c, addr, "/v1/models/digits/metadata").await.status,
            200
        );

        let (x, n) = sample_rows();
        for _ in 0..3 {
            predict(&c, addr, "digits", &x, n)
                .await
                .unwrap()
                .predictions();
        }
        assert_eq!(get(&c, addr, "/v1/models/nope").await.status, 404);
        let page = get(&c, addr, "/metrics").await;
        assert!(page.content_type.starts_with("text/plain"));
        let page = String::from_utf8(page.body.to_vec()).unwrap();
        let m = |s: &str| metric(&page, s).unwrap_or_else(|| panic!("{s} not in\n{page}"));
        assert_eq!(
            m("bnfold_requests_total{model=\"digits\",code=\"200\"}"),
            5.0
        );
        assert_eq!(
            m("bnfold_requests_total{model=\"_unknown\",code=\"404\"}"),
            1.0
        );
        assert_eq!(
            m("bnfold_request_duration_seconds_count{model=\"digits\"}"),
            3.0
        );
        assert_eq!(m("bnfold_batch_rows_sum{model=\"digits\"}"), 24.0);
        assert_eq!(
            m("bnfold_batch_rows_bucket{model=\"digits\",le=\"8\"}"),
            3.0
        );
        assert_eq!(m("bnfold_queue_depth{model=\"digits\"}"), 0.0);
        assert_eq!(m("bnfold_model_version{model=\"digits\"}"), 1.0);
    });
    server.shutdown().unwrap();
}

/// Clients each send their own seeded rows, many at once; each must get exactly its rows' outputs
/// back. Returns the largest batch any answer reports.
fn concurrent_clients(batching: bool) -> usize {
    const CLIENTS: usize = 48;
    const REQUESTS: usize = 12;
    let server = serve(&[("digits", digits())], |c| {
        c.batching = batching;
        c.batch_timeout = Duration::from_millis(3);
        c.max_batch = 32;
    });
    let addr = server.local_addr();
    let model = bnfold::Model::load(digits()).unwrap();
    let plan = std::sync::Arc::new(model.compile(&bnfold::Options::folded()).unwrap());
    let largest = runtime().block_on(async {
        let c = client();
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|client_id| {
                let c = c.clone();
                let plan = plan.clone();
                tokio::spawn(async move {
                    let mut largest = 0;
                    for r in 0..REQUESTS {
                        // 1 to 3 rows, distinct for every client and request.
                        let rows = 1 + (client_id + r) % 3;
                        let seed = (client_id * 1000 + r) as u64;
                        let x: Vec<f32> = bnfold::synth::input(rows, 64, 8.0, seed)
                            .into_iter()
                            .map(|v| v + 8.0)
                            .collect();
                        let reply = predict(&c, addr, "digits", &x, rows).await.unwrap();
                        let got = reply.predictions();
                        let want = plan.session().run(&x, rows).unwrap().to_vec();
                        // Another request's rows would be off by far more than rounding.
                        assert!(
                            normwise(&got, &want) < 1e-5,
                            "client {client_id} request {r}: {got:?} != {want:?}"
                        );
                        let batch = reply.batch_rows.unwrap();
                        assert!(batch >= rows && batch <= 32);
                        if !batching {
                            assert_eq!(batch, rows);
                        }
                        largest = largest.max(batch);
                    }
                    largest
                })
            })
            .collect();
        let mut largest = 0;
        for t in tasks {
            largest = largest.max(t.await.unwrap());
        }
        largest
    });
    server.shutdown().unwrap();
    largest
}

#[test]
fn concurrent_clients_get_their_own_rows_with_batching() {
    let largest = concurrent_clients(true);
    // 48 clients within a 3 ms window: batches of several requests formed.
    assert!(largest > 3, "the largest batch had {largest} rows");
}

#[test]
fn concurrent_clients_get_their_own_rows_without_batching() {
    concurrent_clients(false);
}

#[test]
fn two_models_are_served_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let wide = dir.path().join("wide.bnw");
    let bytes = bnfold::synth::mlp(20, true, &[16], bnfold::Activation::Relu, 3, 7).unwrap();
    std::fs::write(&wide, bytes).unwrap();
    let server = serve(&[("digits", digits()), ("wide", wide.clone())], |_| {});
    let addr = server.local_addr();
    runtime().block_on(async {
        let c = client();
        let x = bnfold::synth::input(2, 20, 1.0, 3);
        let got = predict(&c, addr, "wide", &x, 2)
            .await
            .unwrap()
            .predictions();
        assert!(normwise(&got, &library(&wide, &x, 2)) < 1e-6);
        let (x, n) = sample_rows();
        let got = predict(&c, addr, "digits", &x, n)
            .await
            .unwrap()
            .predictions();
        assert_eq!(got, library(&digits(), &x, n));
        // Rows of one model's width sent to the other are refused.
        let r = predict(&c, addr, "wide", &x, n).await.unwrap();
        assert_eq!(r.status, 400);
        assert!(r.error().contains("the model takes 20"), "{}", r.error());
    });
    server.shutdown().unwrap();
}
