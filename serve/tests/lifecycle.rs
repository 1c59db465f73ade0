//! Reload without downtime and graceful shutdown, on 127.0.0.1.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Poll the metrics page until `series` has `value` (at most 10 s).
async fn wait_for_metric(c: &HttpClient, addr: std::net::SocketAddr, series: &str, value: f64) {
    let t = Instant::now();
    loop {
        let page = get(c, addr, "/metrics").await;
        if metric(&String::from_utf8_lossy(&page.body), series) == Some(value) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{series} never {value}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn reloads_swap_a_good_file_in_and_keep_serving_through_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.bnw");
    let digits_bytes = std::fs::read(digits()).unwrap();
    std::fs::write(&path, &digits_bytes).unwrap();
    // A different network of the same input width, for the last reload.
    let next = bnfold::synth::mlp(64, true, &[32], bnfold::Activation::Relu, 10, 5).unwrap();
    let next_path = dir.path().join("next.bnw");
    std::fs::write(&next_path, &next).unwrap();

    let server = serve(&[("m", path.clone())], |_| {});
    let addr = server.local_addr();
    let (x, n) = sample_rows();
    let old_out = library(&digits(), &x, n);
    let new_out = library(&next_path, &x, n);
    assert!(normwise(&old_out, &new_out) > 0.1);

    // A client keeps sending while every reload below happens: each answer must be a 200 with
    // the outputs of the version it names.
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (stop, x, old_out, new_out) = (
            Arc::clone(&stop),
            x.clone(),
            old_out.clone(),
            new_out.clone(),
        );
        rt.spawn(async move {
            let c = client();
            let mut answers = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = predict(&c, addr, "m", &x, n).await.unwrap();
                let v = r.version.unwrap();
                let got = r.predictions();
                let want = if v <= 2 { &old_out } else { &new_out };
                assert!(normwise(&got, want) < 1e-5, "version {v}");
                answers += 1;
            }
            answers
        })
    };
    let c = client();
    let status = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async { get(&c, addr, "/v1/models/m").await.json() })
    };

    // The same file again: a new version.
    let r = server.reload();
    assert!(r[0].1.ok, "{:?}", r[0].1);
    assert_eq!(r[0].1.serving_version, 2);

    // Three bad files: each refused, version 2 still serving, the reason in the status.
    let mut corrupt = digits_bytes.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x40;
    let narrow = bnfold::synth::mlp(32, true, &[16], bnfold::Activation::Relu, 10, 1).unwrap();
    for (bytes, reason) in [
        (&corrupt[..], "checksum"),
        (&digits_bytes[..digits_bytes.len() / 2], ""),
        (&narrow[..], "input width changed from 64 to 32"),
    ] {
        std::fs::write(&path, bytes).unwrap();
        let r = &server.reload()[0].1;
        assert!(!r.ok);
        assert_eq!(r.serving_version, 2);
        let e = r.error.as_deref().unwrap();
        assert!(e.contains(reason), "{e}");
        let s = status(&rt);
        assert_eq!(s["model_version_status"][0]["version"], "2");
        assert_eq!(s["last_reload"]["ok"], false);
        assert_eq!(s["last_reload"]["error"], e);
        let got = rt
            .block_on(predict(&c, addr, "m", &x, n))
            .unwrap()
            .predictions();
        assert!(normwise(&got, &old_out) < 1e-5);
    }

    // A good new network: version 3, its outputs.
    std::fs::write(&path, &next).unwrap();
    let r = &server.reload()[0].1;
    assert!(r.ok && r.serving_version == 3, "{r:?}");
    let s = status(&rt);
    assert_eq!(s["model_version_status"][0]["version"], "3");
    assert_eq!(s["last_reload"]["ok"], true);
    let reply = rt.block_on(predict(&c, addr, "m", &x, n)).unwrap();
    assert_eq!(reply.version, Some(3));
    assert!(normwise(&reply.predictions(), &new_out) < 1e-5);

    stop.store(true, Ordering::Relaxed);
    let answers = rt.block_on(background).unwrap();
    assert!(answers > 0);
    let page = rt.block_on(async { get(&c, addr, "/metrics").await });
    let page = String::from_utf8_lossy(&page.body);
    assert_eq!(
        metric(&page, "bnfold_reloads_total{model=\"m\",result=\"ok\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&page, "bnfold_reloads_total{model=\"m\",result=\"failed\"}"),
        Some(3.0)
    );
    assert_eq!(
        metric(&page, "bnfold_model_version{model=\"m\"}"),
        Some(3.0)
    );
    server.shutdown().unwrap();
}

#[test]
fn a_request_accepted_before_a_reload_is_answered_by_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.bnw");
    std::fs::copy(digits(), &path).unwrap();
    // A long batch window keeps the request queued while the reload happens.
    let server = serve(&[("m", path.clone())], |c| {
        c.batch_timeout = Duration::from_millis(400);
    });
    let addr = server.local_addr();
    let next = bnfold::synth::mlp(64, false, &[16], bnfold::Activation::Relu, 10, 9).unwrap();
    let (x, n) = sample_rows();
    let old_out = library(&digits(), &x, n);
    let rt = runtime();
    let c = client();
    let queued = {
        let (c, x) = (c.clone(), x.clone());
        rt.spawn(async move { predict(&c, addr, "m", &x, n).await })
    };
    rt.block_on(wait_for_metric(
        &c,
        addr,
        "bnfold_queue_depth{model=\"m\"}",
        1.0,
    ));
    std::fs::write(&path, next).unwrap();
    assert!(server.reload()[0].1.ok);
    let r = rt.block_on(queued).unwrap().unwrap();
    assert_eq!(r.version, Some(1));
    assert_eq!(r.predictions(), old_out);
    // The next request runs on the new version.
    let r = rt.block_on(predict(&c, addr, "m", &x, n)).unwrap();
    assert_eq!(r.version, Some(2));
    server.shutdown().unwrap();
}

#[test]
fn shutdown_answers_the_requests_in_flight_then_refuses_connections() {
    let server = serve(&[("digits", digits())], |c| {
        c.batch_timeout = Duration::from_millis(300);
    });
    let addr = server.local_addr();
    let (x, n) = sample_rows();
    let want = library(&digits(), &x, n);
    let rt = runtime();
    let c = client();
    // An idle keep-alive connection must not hold the shutdown up.
    let idle = client();
    rt.block_on(get(&idle, addr, "/v1/models/digits"));
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let (c, x) = (c.clone(), x.clone());
            rt.spawn(async move { predict(&c, addr, "digits", &x, n).await })
        })
        .collect();
    rt.block_on(wait_for_metric(
        &c,
        addr,
        "bnfold_queue_depth{model=\"digits\"}",
        4.0,
    ));
    let t = Instant::now();
    let stopping = std::thread::spawn(move || server.shutdown());
    for r in in_flight {
        let r = rt.block_on(r).unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert!(normwise(&r.predictions(), &want) < 1e-5);
    }
    stopping.join().unwrap().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(std::net::TcpStream::connect(addr).is_err());
}
