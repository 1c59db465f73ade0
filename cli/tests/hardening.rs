//! Hostile inputs and arguments, tried as a new user or an attacker would (issue 11): every one
//! ends in one line on stderr and a non-zero exit, never a panic, an abort or an allocation the
//! input did not pay for.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bnfold::format::Writer;
use bnfold::synth::{Layer as L, Stats};
use bnfold::{Activation, DType};

fn bnfold() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bnfold"));
    c.env("RUST_BACKTRACE", "1").env_remove("BNFOLD_KERNEL");
    c
}

fn run(args: &[&str]) -> Output {
    bnfold().args(args).output().expect("bnfold starts")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Non-zero exit, exactly one line on stderr, no panic, and `needle` in it.
fn one_line_failure(o: &Output, needle: &str) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure: {err}");
    assert_ne!(o.status.code(), Some(101), "panicked: {err}");
    assert!(o.status.code().is_some(), "killed by a signal: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "stderr lacks '{needle}': {err}");
    err
}

struct Dir {
    _t: tempfile::TempDir,
    path: PathBuf,
    model: PathBuf,
}

fn dir() -> Dir {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().to_owned();
    let model = path.join("net.bnw");
    let bytes = bnfold::synth::network(
        3,
        &[L::Dense(4), L::Bn, L::Act(Activation::Relu), L::Dense(2)],
        9,
        DType::F32,
        Stats::default(),
    )
    .unwrap();
    std::fs::write(&model, bytes).unwrap();
    Dir { _t: t, path, model }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn non_finite_inputs_are_refused_by_default_and_named_by_row_and_column() {
    let d = dir();
    let csv = d.path.join("x.csv");
    // 1e39 overflows f32 on parsing: refused like an infinity, not silently run as one.
    for (text, cell) in [
        ("1,2,3\n4,nan,6\n", "row 2, column 2"),
        ("1,2,3\n4,5,inf\n", "row 2, column 3"),
        ("1e39,2,3\n", "row 1, column 1"),
    ] {
        std::fs::write(&csv, text).unwrap();
        let o = run(&["run", s(&d.model), "-i", s(&csv)]);
        one_line_failure(&o, cell);
        assert!(stderr(&o).contains("--allow-non-finite"));
    }
    // An explicit flag lets them through; a NaN row then has no class.
    std::fs::write(&csv, "1,2,3\nnan,nan,nan\n").unwrap();
    let o = run(&[
        "run",
        s(&d.model),
        "-i",
        s(&csv),
        "--allow-non-finite",
        "--argmax",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].parse::<usize>().is_ok(), "{out}");
    assert_eq!(lines[1], "nan", "an all-NaN row must not print a class");
    // f64 .npy values that overflow f32 are refused too.
    let npy = d.path.join("x.npy");
    let mut bytes = npy_header("<f8", "(1, 3)");
    for v in [1.0f64, 1e300, 2.0] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(&npy, bytes).unwrap();
    one_line_failure(
        &run(&["run", s(&d.model), "-i", s(&npy)]),
        "row 1, column 2",
    );
}

/// A version-1 .npy header for `descr` and `shape`, padded as numpy pads it.
fn npy_header(descr: &str, shape: &str) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b
}

#[test]
fn npy_headers_that_lie_or_sprawl_are_refused_before_allocating() {
    let d = dir();
    let npy = d.path.join("x.npy");
    // A short file whose header claims 4 GiB of data.
    std::fs::write(&npy, npy_header("<f4", "(1073741824, 1)")).unwrap();
    one_line_failure(
        &run(&["run", s(&d.model), "-i", s(&npy)]),
        "shorter than its shape",
    );
    // A version-2 header of 30,000 nested parentheses.
    let body = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': {}1{}, }}\n",
        "(".repeat(30_000),
        ")".repeat(30_000)
    );
    let mut b = b"\x93NUMPY\x02\x00".to_vec();
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend_from_slice(body.as_bytes());
    std::fs::write(&npy, b).unwrap();
    one_line_failure(&run(&["run", s(&d.model), "-i", s(&npy)]), "header of");
}

#[cfg(unix)]
#[test]
fn devices_behind_symlinks_are_not_read() {
    let d = dir();
    let link = d.path.join("zero.csv");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    one_line_failure(
        &run(&["run", s(&d.model), "-i", s(&link)]),
        "not a regular file",
    );
}

#[test]
fn a_single_huge_csv_line_is_refused_before_parsing() {
    let d = dir();
    let csv = d.path.join("wide.csv");
    // 1 MiB on one line, for a model that takes 3 values.
    std::fs::write(&csv, "1,".repeat(1 << 19)).unwrap();
    one_line_failure(&run(&["run", s(&d.model), "-i", s(&csv)]), "line 1 is");
}

#[test]
fn standard_input_and_output_are_dash() {
    let d = dir();
    let mut child = bnfold()
        .args(["run", s(&d.model), "-i", "-", "-o", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"1,2,3\n-1,0.5,2\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // A .npy of 2 x 2 f32 on stdout.
    assert!(o.stdout.starts_with(b"\x93NUMPY"), "{:?}", &o.stdout[..8]);
    let npy = d.path.join("y.npy");
    std::fs::write(&npy, &o.stdout).unwrap();
    let m = bnfold_cli::io::read_matrix(&npy, false).unwrap();
    assert_eq!((m.rows, m.cols), (2, 2));
}

#[test]
fn names_from_the_file_cannot_forge_lines_or_drive_the_terminal() {
    let d = dir();
    let evil = "bn\nbnfold: model OK\u{1b}[31m";
    let mut w = Writer::new(2);
    // A NaN moving mean: the load error names the layer and the tensor.
    w.add_batch_norm(
        evil,
        DType::F32,
        1e-3,
        None,
        None,
        &[0.0, f32::NAN],
        &[1.0, 1.0],
    )
    .unwrap();
    let bad = d.path.join("evil.bnw");
    w.write(&bad).unwrap();
    let err = one_line_failure(&run(&["inspect", s(&bad)]), "evil.bnw");
    assert!(!err.contains('\u{1b}'), "{err:?}");
    assert!(err.contains("\\n") && err.contains("\\u{1b}"), "{err}");

    // inspect of a valid file with such names: escaped in every line.
    let mut w = Writer::new(2);
    w.metadata("producer\u{7}", "x\r\ny");
    w.activation(evil, Activation::Tanh).unwrap();
    let ok = d.path.join("names.bnw");
    w.write(&ok).unwrap();
    let o = run(&["inspect", s(&ok)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\r'));
    assert!(
        !out.lines().any(|l| l.starts_with("bnfold: model OK")),
        "{out}"
    );
}

#[test]
fn inspect_shows_a_file_whose_checksum_fails_and_says_so() {
    let d = dir();
    let mut bytes = std::fs::read(&d.model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let bad = d.path.join("flipped.bnw");
    std::fs::write(&bad, &bytes).unwrap();
    let o = run(&["inspect", s(&bad)]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("MISMATCH") && out.contains("layers"), "{out}");
    let o = run(&["inspect", "--json", s(&bad)]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["checksum"]["status"], "mismatch");
    // Running it is still refused.
    one_line_failure(&run(&["run", s(&bad), "-i", s(&d.model)]), "checksum");
}

#[test]
fn numeric_arguments_are_range_checked_in_one_line() {
    let d = dir();
    let m = s(&d.model);
    for (args, needle) in [
        (
            vec!["bench", m, "--batch", "4611686018427387904"],
            "--batch",
        ),
        (vec!["bench", m, "--batch", "100000000000"], "--batch"),
        (vec!["bench", m, "--pool", "0"], "--pool"),
        (vec!["bench", m, "--pool", "100000"], "--pool"),
        (vec!["bench", m, "--time-ms", "0"], "--time-ms"),
        (vec!["verify", m, "--batch", "0"], "--batch"),
        (vec!["verify", m, "--scale", "inf"], "--scale"),
        (vec!["verify", m, "--scale=-2"], "--scale"),
        (vec!["verify", m, "--tolerance", "nan"], "--tolerance"),
        (vec!["--threads", "0", "inspect", m], "--threads"),
        (vec!["--threads", "5000", "inspect", m], "--threads"),
        (vec!["run", m], "--input"),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        one_line_failure(&o, needle);
    }
}

#[test]
fn a_bogus_kernel_override_is_refused_like_a_bogus_flag() {
    let d = dir();
    let o = bnfold()
        .env("BNFOLD_KERNEL", "avx1024")
        .args(["inspect", s(&d.model)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    one_line_failure(&o, "BNFOLD_KERNEL=avx1024");
    let o = bnfold()
        .env("BNFOLD_KERNEL", "portable")
        .args(["inspect", s(&d.model)])
        .output()
        .unwrap();
    assert!(o.status.success());
}

#[test]
fn verify_and_bench_stay_within_their_memory_budget() {
    let d = dir();
    // 2^22 input features: one row of verify needs ~144 MiB (input, reference, four buffers).
    let wide = d.path.join("wide.bnw");
    let mut w = Writer::new(1 << 22);
    w.activation("act", Activation::Relu).unwrap();
    w.write(&wide).unwrap();
    assert!(std::fs::metadata(&wide).unwrap().len() < 1024);
    one_line_failure(
        &run(&["verify", s(&wide), "--max-memory-mib", "64"]),
        "budget",
    );
    one_line_failure(&run(&["verify", s(&wide), "--batch", "1000000"]), "budget");
    one_line_failure(&run(&["bench", s(&wide)]), "budget");
    // With room for a few rows, verify picks a batch that fits and passes.
    let o = run(&["verify", s(&wide), "--max-memory-mib", "400"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("2 rows"), "{out}");
}
