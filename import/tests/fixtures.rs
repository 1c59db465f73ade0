//! Every fixture of `tests/fixtures/manifest.json` (real PyTorch / Keras exports, see
//! `import/tools/README.md`) converts, and bnfold's folded and unfolded outputs match the
//! framework's own outputs (`NAME.framework.npy`) on the fixture's inputs.
//!
//! Tolerances, on the normwise relative error `max |bnfold - framework| / max |framework|` (the
//! measure `bnfold verify` uses, see `bnfold::verify`):
//!
//! - **f32 models: 2e-6.** Both sides compute in f32 (unit roundoff u = 2^-24 = 6e-8); they differ
//!   only in rounding: bnfold folds BN in f64 and rounds each weight once, sums dot products in
//!   another order, fuses multiply-adds, and computes exp/erf/tanh with its own approximations
//!   (within a few ulps). These networks have at most 4 dense layers of at most 24 inputs, so the
//!   difference is a few u per layer: measured 6e-8 to 5.4e-7 (9 u), folded and unfolded (run with
//!   `--nocapture` for the table). 2e-6 is ~34 u: room for other CPUs' kernel paths, and still
//!   three orders of magnitude below a real conversion mistake (a dropped bias, a wrong eps, a
//!   transposed weight or a missing affine change outputs by 1e-3 of their scale or far more).
//! - **f16 compute (`torch_f16`, a `model.half()` export): 2e-3.** PyTorch computes that model in
//!   f16 (every product, sum and activation rounded to 11 significant bits, u = 2^-11 = 4.9e-4),
//!   while bnfold computes in f32 from the same f16 weights; the difference is the framework's own
//!   f16 rounding, a fraction of an f16 u to a few u over 3 layers: measured 3.2e-4, so 2e-3
//!   (4 f16 u). The fixture generator checked the framework against ONNX Runtime (also computing
//!   in f16) to 2e-2 absolute for the same reason.
//! - `torch_f16_cast` keeps its weights in f16 but computes in f32 on both sides (its framework
//!   output is the f32 model with f16-rounded weights): the f32 tolerance applies (measured 1.3e-7).

use std::path::{Path, PathBuf};

use bnfold::{Model, Options, VerifyOptions, verify};
use bnfold_import::{ConvertOptions, LayerSpec, import_file};
use serde_json::Value;

const F32_TOL: f64 = 2e-6;
const F16_COMPUTE_TOL: f64 = 2e-3;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A float32 `[rows, cols]` .npy as (rows, cols, values).
fn npy(name: &str) -> (usize, usize, Vec<f32>) {
    let bytes = std::fs::read(dir().join(name)).unwrap();
    let arr = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = arr.shape().to_vec();
    let data: Vec<f32> = arr.into_vec().unwrap();
    assert_eq!(shape.len(), 2, "{name}");
    (shape[0] as usize, shape[1] as usize, data)
}

fn normwise(got: &[f32], want: &[f32]) -> f64 {
    bnfold::verify::ErrorStats::measure(got, want).normwise
}

#[test]
fn every_fixture_converts_and_matches_the_framework() {
    let m = manifest();
    let positive = m["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["negative"].as_bool() != Some(true))
        .count();
    let mut checked = 0;
    println!(
        "{:<28} {:>5} {:>12} {:>12} {:>12}",
        "fixture", "dtype", "folded", "unfolded", "verify"
    );
    for f in m["fixtures"].as_array().unwrap() {
        if f["negative"].as_bool() == Some(true) {
            continue;
        }
        let name = f["name"].as_str().unwrap();
        let files = &f["files"];
        let model_file = files["model"].as_str().unwrap();
        let opts = ConvertOptions {
            arch: f["arch"].as_str().map(str::to_owned),
            dtype: None,
        };
        let net =
            import_file(&dir().join(model_file), &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let bytes = net.to_bytes().unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        let (rows, cols, x) = npy(files["input"].as_str().unwrap());
        let (_, out_cols, want) = npy(files["framework"].as_str().unwrap());
        assert_eq!(cols, model.input_features(), "{name}");
        assert_eq!(out_cols, model.output_features(), "{name}");
        let f16_compute = name == "torch_f16";
        let tol = if f16_compute {
            F16_COMPUTE_TOL
        } else {
            F32_TOL
        };
        let mut errs = Vec::new();
        for opts in [Options::folded(), Options::unfolded()] {
            let plan = model.compile(&opts).unwrap();
            let y = plan.session().run(&x, rows).unwrap().to_vec();
            let e = normwise(&y, &want);
            assert!(
                e <= tol,
                "{name} ({:?}): normwise error {e:e} > {tol:e}",
                opts.mode
            );
            errs.push(e);
        }
        // The fold-overflow rule (`bnfold::fold::INPUT_BOUND`) keeps no layer of a real export
        // in its own BN form: every BN folds.
        let mut kept = Vec::new();
        bnfold::fold::lower(&model, &Options::folded(), &mut |s| {
            if let bnfold::fold::Lowered::Elementwise(bnfold::kernels::EpilogueOp::BatchNorm {
                ..
            }) = s.op
            {
                kept.push(s.last_layer);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(kept, Vec::<usize>::new(), "{name}: BN layers left unfolded");
        // bnfold's own check: folded and unfolded against the f64 reference, layer by layer.
        let report = verify(&model, &x, rows, &VerifyOptions::default()).unwrap();
        assert!(report.passed(), "{name}: verify worst {:e}", report.worst);
        let dtype = model.tensors().first().map_or("-", |t| t.dtype.name());
        println!(
            "{name:<28} {dtype:>5} {:>12.3e} {:>12.3e} {:>12.3e}",
            errs[0], errs[1], report.worst
        );
        // The metadata records where the file came from.
        assert_eq!(model.metadata_value("source_file"), Some(model_file));
        checked += 1;
    }
    assert_eq!(checked, positive);
    assert!(checked >= 18, "the manifest lost fixtures: {checked}");
}

/// The converted layers are what the manifest says the graph holds: one BatchNorm layer per
/// `BatchNormalization` node with its eps, an affine layer per tf2onnx BN, the dense layers.
#[test]
fn batch_norm_stays_batch_norm_with_its_eps() {
    let m = manifest();
    for f in m["fixtures"].as_array().unwrap() {
        if f["negative"].as_bool() == Some(true) {
            continue;
        }
        let name = f["name"].as_str().unwrap();
        let opts = ConvertOptions {
            arch: f["arch"].as_str().map(str::to_owned),
            dtype: None,
        };
        let net = import_file(&dir().join(f["files"]["model"].as_str().unwrap()), &opts).unwrap();
        let bn_eps: Vec<f64> = net
            .layers
            .iter()
            .filter_map(|l| match l.spec {
                LayerSpec::BatchNorm { eps, .. } => Some(eps),
                _ => None,
            })
            .collect();
        let affines = net
            .layers
            .iter()
            .filter(|l| matches!(l.spec, LayerSpec::Affine { .. }))
            .count();
        let dense = net
            .layers
            .iter()
            .filter(|l| matches!(l.spec, LayerSpec::Dense { .. }))
            .count();
        match f["kind"].as_str().unwrap() {
            "onnx" => {
                let ops: Vec<&str> = f["ops"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o.as_str().unwrap())
                    .collect();
                let want_eps: Vec<f64> = f["batchnorm_nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b["epsilon"].as_f64().unwrap())
                    .collect();
                assert_eq!(bn_eps.len(), want_eps.len(), "{name}");
                for (got, want) in bn_eps.iter().zip(&want_eps) {
                    // The attribute is an f32: the stored eps is its shortest decimal (1e-5).
                    assert_eq!(*got as f32, *want as f32, "{name}");
                }
                let count = |op: &str| ops.iter().filter(|o| **o == op).count();
                assert_eq!(dense, count("Gemm") + count("MatMul"), "{name}");
                if name.starts_with("keras") {
                    // tf2onnx: each Keras BN is one Mul + Add pair, one affine layer.
                    let bn_layers = f["bn"].as_array().unwrap().len();
                    assert_eq!(affines, bn_layers, "{name}");
                    assert_eq!(net.metadata_value("bn_form"), Some("affine"), "{name}");
                } else {
                    assert_eq!(affines, 0, "{name}");
                }
            }
            _ => {
                let want_eps: Vec<f64> = f["bn"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b["eps"].as_f64().unwrap())
                    .collect();
                assert_eq!(bn_eps, want_eps, "{name}");
            }
        }
        if !bn_eps.is_empty() {
            let per = net.metadata_value("bn_eps_per_layer").unwrap();
            assert_eq!(per.split(',').count(), bn_eps.len(), "{name}: {per}");
        }
    }
}

/// An f16 model keeps f16 storage bit for bit unless a dtype is asked for; the metadata records
/// the source.
#[test]
fn dtypes_are_kept_unless_asked_and_metadata_records_the_source() {
    for name in ["torch_f16.onnx", "torch_f16_cast.onnx"] {
        let path = dir().join(name);
        let mut net = import_file(&path, &ConvertOptions::default()).unwrap();
        assert_eq!(net.dtypes(), vec![bnfold::DType::F16], "{name}");
        let mut f32_net = import_file(
            &path,
            &ConvertOptions {
                arch: None,
                dtype: Some(bnfold::DType::F32),
            },
        )
        .unwrap();
        assert_eq!(f32_net.dtypes(), vec![bnfold::DType::F32], "{name}");
        // Widening is exact: the same values.
        let a = Model::from_bytes(&net.to_bytes().unwrap()).unwrap();
        let b = Model::from_bytes(&f32_net.to_bytes().unwrap()).unwrap();
        for i in 0..a.tensors().len() {
            assert_eq!(
                a.tensor_data(i).unwrap().to_f32_vec(),
                b.tensor_data(i).unwrap().to_f32_vec()
            );
        }
        assert_eq!(b.metadata_value("converted_dtype"), Some("f32"));
    }
    let net = import_file(&dir().join("torch_f16.onnx"), &ConvertOptions::default()).unwrap();
    assert_eq!(net.metadata_value("source_input_dtype"), Some("FLOAT16"));
    let net = import_file(
        &dir().join("torch_input_bn.onnx"),
        &ConvertOptions::default(),
    )
    .unwrap();
    for (k, v) in [
        ("source_file", "torch_input_bn.onnx"),
        ("source_format", "onnx"),
        ("source_producer", "pytorch 2.15.0"),
        ("source_framework", "pytorch"),
        ("onnx_opset", "17"),
        ("bn_eps", "1e-5"),
        ("bn_variance", "unbiased"),
        ("bn_form", "batchnorm"),
    ] {
        assert_eq!(net.metadata_value(k), Some(v), "{k}");
    }
    assert_eq!(
        net.metadata_value("bn_eps_per_layer"),
        Some("/0/BatchNormalization=1e-5,/2/BatchNormalization=1e-5,/5/BatchNormalization=1e-5")
    );
    // bf16 storage of an f32 model: a coarser model, still a valid one.
    let mut net = import_file(
        &dir().join("keras_tf2onnx.onnx"),
        &ConvertOptions {
            arch: None,
            dtype: Some(bnfold::DType::BF16),
        },
    )
    .unwrap();
    assert_eq!(net.dtypes(), vec![bnfold::DType::BF16]);
    Model::from_bytes(&net.to_bytes().unwrap()).unwrap();
}
