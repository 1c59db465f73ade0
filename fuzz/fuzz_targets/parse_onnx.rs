//! Raw bytes into the ONNX importer (protobuf decoding, tensor decoding, external data, graph
//! matching); whatever converts is written as a weight file, loaded and run.
//!
//! External data resolves in `fuzz/external/`, which holds the side file of the
//! `torch_dynamo.onnx` seed, so mutated offsets, lengths and locations reach the checks of
//! `read_external` (a location that escapes the directory must be refused, never read).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("external");
    match bnfold_import::import_onnx_bytes(data, Some(&dir), "fuzz.onnx") {
        Ok(net) => {
            // The network's bytes load as a valid model (to_bytes checks), or the model checks
            // refuse it (a NaN weight, a negative variance): both are fine; a panic is not.
            if let Ok(bytes) = net.to_bytes() {
                let model = bnfold::Model::from_bytes(&bytes).expect("to_bytes checked it loads");
                bnfold_fuzz::exercise(&model);
            }
        }
        Err(e) => {
            // Every error has a message (formatting must not panic either).
            let _ = e.to_string();
        }
    }
});
