//! The command line: each subcommand on a real file, plus bad files and bad arguments.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bnfold::synth::{Layer as L, Stats};
use bnfold::{Activation, DType, Model, Options};

fn network(input: usize, layers: &[L], seed: u64, dtype: DType, stats: Stats) -> Vec<u8> {
    bnfold::synth::network(input, layers, seed, dtype, stats).expect("the writer takes it")
}

/// Repository root, where models/ and data/ live (this crate is `cli/` in it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ has a parent")
        .to_owned()
}

fn bnfold(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bnfold"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("failed to start bnfold")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A user mistake: non-zero exit, exactly one line on stderr, no panic or backtrace.
fn assert_clean_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "stderr should be one line: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert!(err.contains(needle), "stderr lacks '{needle}': {err}");
}

struct Fixture {
    _dir: tempfile::TempDir,
    model: PathBuf,
    csv: PathBuf,
    dir: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("net.bnw");
    let bytes = network(
        4,
        &[
            L::Bn,
            L::Dense(8),
            L::Bn,
            L::Act(Activation::Relu),
            L::Dense(3),
        ],
        5,
        DType::F32,
        Stats::default(),
    );
    std::fs::write(&model, bytes).unwrap();
    let csv = dir.path().join("x.csv");
    std::fs::write(&csv, "0.5, -1, 2, 0.25\n1,2,3,4\n").unwrap();
    Fixture {
        model,
        csv,
        dir: dir.path().to_owned(),
        _dir: dir,
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn inspect_lists_layers_tensors_metadata_and_checksum() {
    let f = fixture();
    let o = bnfold(&["inspect", p(&f.model)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "bnfold v1.0",
        "crc32",
        "(verified)",
        "BatchNorm",
        "l1.weight",
        "4 -> 8",
        "producer = bnfold synth",
    ] {
        assert!(out.contains(needle), "missing '{needle}' in:\n{out}");
    }
    let o = bnfold(&["inspect", "--json", p(&f.model)]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect --json is JSON");
    assert_eq!(v["input_features"], 4);
    assert_eq!(v["output_features"], 3);
    assert_eq!(v["layers"].as_array().unwrap().len(), 5);
    assert_eq!(v["layers"][1]["kind"], "Dense");
    assert_eq!(v["checksum"]["status"], "ok");
    assert_eq!(v["metadata"][0]["key"], "producer");
    assert_eq!(v["metadata"][0]["value"], "bnfold synth");
}

#[test]
fn run_prints_csv_that_matches_the_library() {
    let f = fixture();
    let o = bnfold(&["run", p(&f.model), "--input", p(&f.csv)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<Vec<f32>> = stdout(&o)
        .lines()
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    let plan = Model::load(&f.model)
        .unwrap()
        .compile(&Options::folded())
        .unwrap();
    let want = plan
        .session()
        .run(&[0.5, -1.0, 2.0, 0.25, 1.0, 2.0, 3.0, 4.0], 2)
        .unwrap()
        .to_vec();
    // The CLI prints the shortest representation that round-trips, so the values are exact.
    assert_eq!(got.concat(), want);
    assert_eq!(got.len(), 2);
}

#[test]
fn run_reads_and_writes_npy_and_the_unfolded_path_agrees() {
    let f = fixture();
    let x = bnfold_cli::io::Matrix {
        rows: 3,
        cols: 4,
        data: vec![0.1, 0.2, 0.3, 0.4, -1.0, 0.0, 1.0, 2.0, 5.0, -5.0, 0.5, 0.0],
    };
    let input = f.dir.join("x.npy");
    bnfold_cli::io::write_npy(&input, &x).unwrap();
    let out_f = f.dir.join("yf.npy");
    let out_u = f.dir.join("yu.npy");
    let o = bnfold(&["run", p(&f.model), "-i", p(&input), "-o", p(&out_f)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = bnfold(&[
        "run",
        p(&f.model),
        "-i",
        p(&input),
        "-o",
        p(&out_u),
        "--unfolded",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let yf = bnfold_cli::io::read_matrix(&out_f, false).unwrap();
    let yu = bnfold_cli::io::read_matrix(&out_u, false).unwrap();
    assert_eq!((yf.rows, yf.cols), (3, 3));
    // Folded and unfolded round differently; see tests/fold.rs for why 2e-5 normwise is right.
    let scale = yu.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in yf.data.iter().zip(&yu.data) {
        assert!((a - b).abs() <= 2e-5 * scale, "{a} vs {b}");
    }
}

#[test]
fn verify_passes_on_a_good_model_and_reports_per_layer_errors() {
    let f = fixture();
    let o = bnfold(&["verify", p(&f.model), "--batch", "16", "--seed", "3"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("PASS"), "{out}");
    assert!(out.contains("folded   vs f64 reference"), "{out}");
    // One line per layer, numbered 0..5.
    for i in 0..5 {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(&format!("{i} "))),
            "layer {i}:\n{out}"
        );
    }
    let o = bnfold(&["verify", p(&f.model), "--input", p(&f.csv)]);
    assert!(o.status.success(), "{}", stdout(&o));
}

/// The shipped models pass `verify` with half-precision packed weights, on every supported
/// kernel path (issue 12: the panels hold f16 or bf16 and are widened in registers).
#[test]
fn verify_passes_on_the_shipped_models_with_half_precision_weights() {
    for model in ["models/digits.bnw", "models/morvan.bnw"] {
        let path = root().join(model);
        for weights in ["f16", "bf16"] {
            for isa in bnfold::Isa::supported() {
                let o = bnfold(&[
                    "verify",
                    p(&path),
                    "--weights",
                    weights,
                    "--kernel",
                    isa.name(),
                ]);
                let out = stdout(&o);
                assert!(
                    o.status.success() && out.contains("PASS"),
                    "{model} --weights {weights} --kernel {isa}:\n{out}\n{}",
                    stderr(&o)
                );
            }
        }
    }
}

#[test]
fn verify_fails_when_the_tolerance_is_impossible() {
    let f = fixture();
    // No f32 computation matches an f64 one to 1e-30 relative; verify must say FAIL and exit 1.
    let o = bnfold(&["verify", p(&f.model), "--tolerance", "1e-30"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("FAIL"), "{}", stdout(&o));
}

#[test]
fn bad_files_give_one_clear_line() {
    let f = fixture();
    let bad = f.dir.join("bad.bnw");
    std::fs::write(
        &bad,
        b"definitely not a weight file, but long enough to have a header......",
    )
    .unwrap();
    assert_clean_failure(&bnfold(&["inspect", p(&bad)]), "bad magic");
    let mut bytes = std::fs::read(&f.model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&bad, &bytes).unwrap();
    assert_clean_failure(
        &bnfold(&["run", p(&bad), "-i", p(&f.csv)]),
        "checksum mismatch",
    );
    assert_clean_failure(
        &bnfold(&["verify", p(&f.dir.join("missing.bnw"))]),
        "missing.bnw",
    );
}

#[test]
fn bad_inputs_give_one_clear_line() {
    let f = fixture();
    let wrong = f.dir.join("wrong.csv");
    std::fs::write(&wrong, "1,2,3\n").unwrap();
    assert_clean_failure(
        &bnfold(&["run", p(&f.model), "-i", p(&wrong)]),
        "3 values, the model takes 4",
    );
    std::fs::write(&wrong, "a,b,c,d\n1,2,3,4\n").unwrap();
    assert_clean_failure(&bnfold(&["run", p(&f.model), "-i", p(&wrong)]), "--header");
    let o = bnfold(&["run", p(&f.model), "-i", p(&wrong), "--header"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(&wrong, "1,2,3,4\n1,2\n").unwrap();
    assert_clean_failure(&bnfold(&["run", p(&f.model), "-i", p(&wrong)]), "line 2");
}

#[test]
fn bad_arguments_exit_with_usage_error() {
    let f = fixture();
    let o = bnfold(&["run", p(&f.model)]);
    assert_eq!(o.status.code(), Some(2), "missing --input");
    assert!(stderr(&o).contains("--input"));
    let o = bnfold(&["verify", p(&f.model), "--batch", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let o = bnfold(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert_clean_failure(
        &bnfold(&["verify", p(&f.model), "--tolerance=-1"]),
        "--tolerance",
    );
    let o = bnfold(&["--help"]);
    assert!(o.status.success() && stdout(&o).contains("inspect"));
}

#[test]
fn run_argmax_prints_the_predicted_class_of_each_row() {
    let f = fixture();
    let o = bnfold(&["run", p(&f.model), "-i", p(&f.csv), "--argmax"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = Model::load(&f.model)
        .unwrap()
        .compile(&Options::folded())
        .unwrap();
    let y = plan
        .session()
        .run(&[0.5, -1.0, 2.0, 0.25, 1.0, 2.0, 3.0, 4.0], 2)
        .unwrap()
        .to_vec();
    let want: Vec<String> = y
        .chunks(3)
        .map(|r| {
            let m = r.iter().cloned().fold(f32::MIN, f32::max);
            r.iter().position(|&v| v == m).unwrap().to_string()
        })
        .collect();
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), want);
}

#[test]
fn a_closed_stdout_ends_quietly_instead_of_panicking() {
    // `bnfold inspect FILE | head -1`: the reader is gone before we write. The pipe's read end is
    // closed before bnfold starts, so every write fails with EPIPE, deterministically.
    let f = fixture();
    for args in [
        vec!["inspect", p(&f.model)],
        vec!["verify", p(&f.model)],
        vec!["run", p(&f.model), "-i", p(&f.csv)],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(env!("CARGO_BIN_EXE_bnfold"))
            .args(&args)
            .stdout(writer)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(o.status.success(), "{args:?}: {err}");
    }
}

#[test]
fn train_digits_command_writes_a_loadable_model_and_the_sample() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, sample) = (dir.path().join("d.bnw"), dir.path().join("s.csv"));
    let data = root().join(bnfold_train::digits::DEFAULT_DATA);
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_bnfold"))
        .args(["train", "digits", "--epochs", "1", "--seed", "5", "--quiet"])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .arg("--sample")
        .arg(&sample)
        .status()
        .expect("runs bnfold");
    assert!(status.success());
    let model = Model::load(&out).expect("loads");
    assert_eq!((model.input_features(), model.output_features()), (64, 10));
    assert_eq!(model.metadata_value("seed"), Some("5"));
    let m = bnfold_cli::io::read_matrix(&sample, false).expect("sample");
    assert_eq!((m.rows, m.cols), (8, 64));
}
