//! Replays the `parse_onnx` fuzz target's seeds and the regression inputs in `tests/regressions/`
//! through the code the target runs: import (with `fuzz/external/` as the external-data
//! directory), write, load. Every input must end in a typed error or a valid model, never a panic.

use std::path::Path;

use bnfold_import::{ImportError, import_onnx_bytes};

fn replay(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("fuzz/external");
    match import_onnx_bytes(&bytes, Some(&dir), "fuzz.onnx") {
        Ok(net) => match net.to_bytes() {
            Ok(b) => {
                bnfold::Model::from_bytes(&b).unwrap();
            }
            Err(ImportError::Bnfold(_)) => {}
            Err(e) => panic!("{}: {e}", path.display()),
        },
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

#[test]
fn fuzz_seeds_and_regressions_replay_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in [
        root.join("../fuzz/seeds/parse_onnx"),
        root.join("tests/regressions"),
    ] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "onnx") {
                replay(&path);
                n += 1;
            }
        }
    }
    assert!(n >= 17, "{n} inputs replayed");
}

/// The torch_dynamo seed refers to `torch_dynamo.onnx.data`, which the fuzz target finds in
/// `fuzz/external/`: the seed must convert there, so that the fuzzer starts from a model that
/// reaches the external-data reader.
#[test]
fn the_external_data_seed_converts_in_the_fuzz_directory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bytes = std::fs::read(root.join("fuzz/seeds/parse_onnx/torch_dynamo.onnx")).unwrap();
    let net = import_onnx_bytes(&bytes, Some(&root.join("fuzz/external")), "t").unwrap();
    assert_eq!(net.layers.len(), 5);
}
