//! `bnfold bench`: figures for every configuration asked for, JSON for machines, and the
//! `BNFOLD_KERNEL` override reaching the kernels of a separate process.

use std::process::Command;

fn model_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let bytes = bnfold::synth::mlp(5, true, &[30, 30], bnfold::Activation::Relu, 3, 7).unwrap();
    let path = dir.path().join("net.bnw");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn bnfold() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bnfold"))
}

/// Run `bnfold bench ARGS FILE` (a table, no `--json`), assert it succeeded, and return its output.
fn table_of(args: &[&str], file: &std::path::Path) -> String {
    let out = bnfold().arg("bench").args(args).arg(file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run `cmd` (a `bnfold bench ... --json` command), assert it succeeded, and parse its output.
fn json_of(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_json_has_one_record_per_mode_and_batch() {
    let dir = tempfile::tempdir().unwrap();
    let file = model_file(&dir);
    let v = json_of(
        bnfold()
            .args(["bench", "--batch", "1,4", "--time-ms", "1", "--json"])
            .arg(&file),
    );
    let records = v.as_array().unwrap();
    assert_eq!(records.len(), 4);
    let mut seen = Vec::new();
    for r in records {
        let p50 = r["p50_us"].as_f64().unwrap();
        let p99 = r["p99_us"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= p99, "{r}");
        assert!(r["rows_per_s"].as_f64().unwrap() > 0.0);
        seen.push((
            r["mode"].as_str().unwrap().to_owned(),
            r["batch"].as_u64().unwrap(),
        ));
    }
    seen.sort();
    let want: Vec<(String, u64)> = [
        ("folded", 1),
        ("folded", 4),
        ("unfolded", 1),
        ("unfolded", 4),
    ]
    .iter()
    .map(|(m, b)| (m.to_string(), *b))
    .collect();
    assert_eq!(seen, want);
}

#[test]
fn kernel_environment_variable_forces_the_portable_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = model_file(&dir);
    let v = json_of(
        bnfold()
            .env("BNFOLD_KERNEL", "portable")
            .args([
                "bench",
                "--folded-only",
                "--batch",
                "2",
                "--time-ms",
                "1",
                "--json",
            ])
            .arg(&file),
    );
    assert_eq!(v[0]["kernel"], "portable");
    assert_eq!(v[0]["mode"], "folded");
}

#[test]
fn bench_table_and_bad_kernel_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = model_file(&dir);
    let text = table_of(&["--batch", "1", "--time-ms", "1"], &file);
    assert!(
        text.contains("p50 us") && text.contains("unfolded"),
        "{text}"
    );

    let out = bnfold()
        .args(["bench", "--kernel", "sse9"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    // The accepted names come from the code (`Isa::ALL`), not a hand-written list.
    assert!(err.contains("invalid value 'sse9'"), "{err}");
    for isa in bnfold::Isa::ALL {
        assert!(err.contains(isa.name()), "{isa} missing from: {err}");
    }
}

/// `bench --load`: one record per round, the phases adding up to the total, the file's size, the
/// plan's packed bytes (halved by f16 weights), and on Linux a peak resident set above the start;
/// a table without `--json`; `--rounds` needs `--load`, and `--load` takes no batch sizes.
#[test]
fn bench_load_measures_each_round_from_path_to_plan() {
    let dir = tempfile::tempdir().unwrap();
    let file = model_file(&dir);
    let size = std::fs::metadata(&file).unwrap().len();
    let mut packed = Vec::new();
    for weights in ["f32", "f16"] {
        let v = json_of(
            bnfold()
                .args([
                    "bench",
                    "--load",
                    "--rounds",
                    "2",
                    "--weights",
                    weights,
                    "--json",
                ])
                .arg(&file),
        );
        let rounds = v.as_array().unwrap();
        assert_eq!(rounds.len(), 2);
        for (i, r) in rounds.iter().enumerate() {
            assert_eq!(r["round"].as_u64(), Some(i as u64));
            assert_eq!(r["file_bytes"].as_u64(), Some(size));
            assert_eq!(r["weights"], weights);
            let (load, compile, total) = (
                r["load_ms"].as_f64().unwrap(),
                r["compile_ms"].as_f64().unwrap(),
                r["total_ms"].as_f64().unwrap(),
            );
            assert!(load > 0.0 && compile > 0.0, "{r}");
            assert!((total - (load + compile)).abs() <= 1e-9 * total, "{r}");
            if cfg!(target_os = "linux") {
                let base = r["base_rss_bytes"].as_u64().unwrap();
                let peak = r["peak_rss_bytes"].as_u64().unwrap();
                assert!(base > 0 && peak >= base, "{r}");
            }
        }
        packed.push(rounds[0]["plan_weight_bytes"].as_u64().unwrap());
    }
    // f16 panels hold half the bytes of f32 ones; the biases stay f32 in both (so: more than half).
    assert!(
        packed[1] < packed[0] && 2 * packed[1] > packed[0],
        "{packed:?}"
    );

    let text = table_of(&["--load", "--rounds", "1"], &file);
    assert!(
        text.contains("compile ms") && text.contains("from path to plan"),
        "{text}"
    );

    for bad in [&["--rounds", "2"][..], &["--load", "--batch", "8"]] {
        let out = bnfold().arg("bench").args(bad).arg(&file).output().unwrap();
        assert!(!out.status.success(), "{bad:?} was accepted");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.contains("cannot be used with") || err.contains("required"),
            "{err}"
        );
    }
}
