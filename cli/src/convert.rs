//! `bnfold convert`: a PyTorch or Keras model (ONNX, or a safetensors state_dict with `--arch`)
//! to a bnfold weight file, through [`bnfold_import::convert`].

use std::path::Path;
use std::process::ExitCode;

use bnfold::DType;
use bnfold_import::{ConvertOptions, LayerSpec};

use crate::CliResult;

/// The `--dtype` (and `--weights`) values: [`DType`]'s own parser.
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    s.parse::<DType>().map_err(|e| e.to_string())
}

/// Convert and print what was written.
pub fn run(input: &Path, output: &Path, arch: Option<&str>, dtype: Option<DType>) -> CliResult {
    let opts = ConvertOptions {
        arch: arch.map(str::to_owned),
        dtype,
    };
    let mut done = bnfold_import::convert(input, output, &opts)?;
    let net = &mut done.network;
    let count = |kind: &str| {
        net.layers
            .iter()
            .filter(|l| l.spec.kind_name() == kind)
            .count()
    };
    let kinds: Vec<String> = ["Dense", "BatchNorm", "Affine", "Activation"]
        .iter()
        .map(|k| (k, count(k)))
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    let acts: Vec<String> = net
        .layers
        .iter()
        .filter_map(|l| match l.spec {
            LayerSpec::Act(a) => Some(a.to_string()),
            _ => None,
        })
        .collect();
    let dtypes: Vec<&str> = net.dtypes().iter().map(|d| d.name()).collect();
    let source = net
        .metadata_value("source_producer")
        .or(net.metadata_value("source_framework"))
        .unwrap_or("unknown producer")
        .to_owned();
    outln!(
        "{} -> {}: {} bytes, {} layers ({}), input {} features, tensors {}",
        input.display(),
        output.display(),
        done.bytes,
        done.network.layers.len(),
        kinds.join(", "),
        done.network.input_features,
        if dtypes.is_empty() {
            "-".to_owned()
        } else {
            dtypes.join("+")
        },
    );
    if !acts.is_empty() {
        outln!("activations: {}", acts.join(", "));
    }
    if let Some(eps) = done.network.metadata_value("bn_eps_per_layer") {
        outln!("BatchNorm eps: {eps}");
    }
    outln!("source: {source}");
    outln!(
        "check it: bnfold verify {}   (folded and unfolded against the f64 reference)",
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}
