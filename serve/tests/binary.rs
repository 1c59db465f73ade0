//! The real `bnfold serve` process: its answers equal `bnfold run`'s on the same rows, SIGHUP
//! reloads, SIGTERM answers the request in flight and exits 0.
//!
//! The `bnfold` binary belongs to the `bnfold-cli` package, so Cargo does not build it for this
//! package's tests alone: it is found beside this test's directory (`target/<profile>/bnfold`),
//! where `cargo test` at the workspace root (what CI runs) builds it, since `bnfold-cli` has
//! integration tests. `cargo test -p bnfold-serve` alone skips this test, saying so, unless a
//! build left the binary there.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

fn bnfold_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/binary-<hash> -> target/<profile>/bnfold
    let path = exe.parent()?.parent()?.join("bnfold");
    path.is_file().then_some(path)
}

/// Kills the child if the test fails before it exits.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) with the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[test]
fn bnfold_serve_answers_as_bnfold_run_reloads_on_sighup_and_exits_0_on_sigterm() {
    let Some(bin) = bnfold_binary() else {
        eprintln!(
            "SKIPPED: no bnfold binary beside the test binaries; run `cargo test` at the \
             workspace root (or `cargo build -p bnfold-cli` first)"
        );
        return;
    };
    let sample = root().join("models/digits_sample.csv");
    let run = Command::new(&bin)
        .arg("run")
        .arg(digits())
        .arg("--input")
        .arg(&sample)
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    let want: Vec<f32> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .flat_map(|l| l.split(',').map(|v| v.parse::<f32>().unwrap()))
        .collect();
    assert_eq!(want.len(), 80);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("digits.bnw");
    std::fs::copy(digits(), &path).unwrap();
    let child = Command::new(&bin)
        .arg("serve")
        .arg("--model")
        .arg(format!("digits={}", path.display()))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--batch-timeout-us",
            "300000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaper(child);
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |what: &str| -> String {
        let t = Instant::now();
        loop {
            let left = Duration::from_secs(20).saturating_sub(t.elapsed());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line with '{what}' within 20 s"));
            if line.contains(what) {
                return line;
            }
        }
    };
    let listening = wait_line("listening on http://");
    let addr: std::net::SocketAddr = listening
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();

    let (x, n) = sample_rows();
    let rt = runtime();
    let c = client();
    let got = rt
        .block_on(predict(&c, addr, "digits", &x, n))
        .unwrap()
        .predictions();
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "bnfold serve and bnfold run differ"
    );

    signal(&child.0, libc::SIGHUP);
    wait_line("reloaded digits");
    let status = rt.block_on(get(&c, addr, "/v1/models/digits")).json();
    assert_eq!(status["model_version_status"][0]["version"], "2");
    assert_eq!(status["last_reload"]["ok"], true);

    // A request waits in the 300 ms batch window when SIGTERM comes: it is answered, then the
    // process exits 0.
    let in_flight = {
        let (c, x) = (c.clone(), x.clone());
        rt.spawn(async move { predict(&c, addr, "digits", &x, n).await })
    };
    let t = Instant::now();
    while rt.block_on(async {
        let page = get(&c, addr, "/metrics").await;
        metric(
            &String::from_utf8_lossy(&page.body),
            "bnfold_queue_depth{model=\"digits\"}",
        )
    }) != Some(1.0)
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the request never queued"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(&child.0, libc::SIGTERM);
    let r = rt.block_on(in_flight).unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, Some(2));
    assert_eq!(r.predictions(), want);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(std::net::TcpStream::connect(addr).is_err());
}
