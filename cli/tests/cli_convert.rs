//! `bnfold convert`, then `bnfold verify` and `bnfold run` on the result, on the importer's
//! real-framework fixtures (`import/tests/fixtures`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../import/tests/fixtures")
}

fn bnfold(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bnfold"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("failed to start bnfold")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A float32 `[rows, cols]` .npy.
fn npy(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let arr = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = arr.shape().to_vec();
    (shape, arr.into_vec().unwrap())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn convert_then_verify_then_run_matches_the_framework() {
    let dir = tempfile::tempdir().unwrap();
    for (name, model, arch) in [
        ("torch_input_bn", "torch_input_bn.onnx", None),
        ("keras_tf2onnx", "keras_tf2onnx.onnx", None),
        ("torch_dynamo", "torch_dynamo.onnx", None),
        (
            "torch_state_dict",
            "torch_state_dict.safetensors",
            Some("linear,bn,relu,linear,bn:0.001,tanh,linear"),
        ),
    ] {
        let out = dir.path().join(format!("{name}.bnw"));
        let input = fixtures().join(model);
        let mut args = vec!["convert", s(&input), "-o", s(&out)];
        if let Some(a) = arch {
            args.extend(["--arch", a]);
        }
        let o = bnfold(&args);
        assert!(o.status.success(), "{name}: {}", text(&o.stderr));
        let said = text(&o.stdout);
        assert!(said.contains("bnfold verify"), "{said}");
        let x = fixtures().join(format!("{name}.input.npy"));
        let o = bnfold(&["verify", s(&out), "--input", s(&x)]);
        assert!(o.status.success(), "{name}: {}", text(&o.stdout));
        assert!(text(&o.stdout).contains("PASS"), "{}", text(&o.stdout));
        for unfolded in [false, true] {
            let y = dir.path().join(format!("{name}.{unfolded}.npy"));
            let mut args = vec!["run", s(&out), "--input", s(&x), "--output", s(&y)];
            if unfolded {
                args.push("--unfolded");
            }
            let o = bnfold(&args);
            assert!(o.status.success(), "{name}: {}", text(&o.stderr));
            let (shape, got) = npy(&y);
            let (want_shape, want) = npy(&fixtures().join(format!("{name}.framework.npy")));
            assert_eq!(shape, want_shape, "{name}");
            // The f32 tolerance of import/tests/fixtures.rs, which explains it.
            let e = bnfold::verify::ErrorStats::measure(&got, &want).normwise;
            assert!(e <= 2e-6, "{name} unfolded={unfolded}: normwise {e:e}");
        }
    }
}

#[test]
fn convert_keeps_f16_unless_told_and_inspect_shows_version_1_1() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixtures().join("torch_f16_cast.onnx");
    let out = dir.path().join("f16.bnw");
    let o = bnfold(&["convert", s(&input), "-o", s(&out)]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("tensors f16"),
        "{}",
        text(&o.stdout)
    );
    let out32 = dir.path().join("f32.bnw");
    let o = bnfold(&["convert", s(&input), "-o", s(&out32), "--dtype", "f32"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("tensors f32"),
        "{}",
        text(&o.stdout)
    );
    // A Keras model gets affine layers: a 1.1 file.
    let out = dir.path().join("k.bnw");
    let input = fixtures().join("keras_export.onnx");
    assert!(
        bnfold(&["convert", s(&input), "-o", s(&out)])
            .status
            .success()
    );
    let o = bnfold(&["inspect", s(&out)]);
    let said = text(&o.stdout);
    assert!(
        said.contains("bnfold v1.1") && said.contains("Affine"),
        "{said}"
    );
}

#[test]
fn refusals_and_bad_arguments_fail_cleanly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.bnw");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![s(&fixtures().join("refuse_conv.onnx")).into()],
            "'/conv/Conv' (Conv)",
        ),
        (
            vec![s(&fixtures().join("refuse_two_inputs.onnx")).into()],
            "a second input",
        ),
        (
            vec![s(&fixtures().join("torch_state_dict.safetensors")).into()],
            "--arch",
        ),
        (
            vec![
                s(&fixtures().join("torch_state_dict.safetensors")).into(),
                "--arch".into(),
                "linear,bn,relu,linear".into(),
            ],
            "4.running_mean",
        ),
        (
            vec![
                s(&fixtures().join("torch_input_bn.onnx")).into(),
                "--arch".into(),
                "linear".into(),
            ],
            "--arch is for safetensors",
        ),
        (
            vec![s(&dir.path().join("missing.onnx")).into()],
            "missing.onnx",
        ),
    ];
    for (input, needle) in cases {
        let mut args = vec!["convert".to_owned()];
        args.extend(input);
        args.extend(["-o".into(), s(&out).into()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = bnfold(&refs);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.starts_with("bnfold: "), "{err}");
        assert!(
            err.contains(needle),
            "{args:?}: stderr lacks '{needle}': {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{args:?} left {}", out.display());
        // Nothing half-written either: no temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
    let o = bnfold(&[
        "convert",
        s(&fixtures().join("torch_input_bn.onnx")),
        "-o",
        s(&out),
        "--dtype",
        "f64",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}
