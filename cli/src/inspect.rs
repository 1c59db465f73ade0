//! `bnfold inspect`: what a weight file holds.

use std::path::Path;
use std::process::ExitCode;

use bnfold::Model;

use crate::CliResult;

/// Print the layers, tensors, metadata and checksum of `file`, as text or JSON.
pub fn run(file: &Path, json: bool) -> CliResult {
    let model = Model::load(file)?;
    let h = model.header();
    let tensors = model.tensors();
    let layer_desc = |kind: &bnfold::format::LayerKind| (kind.shape_text(), kind.detail(tensors));
    if json {
        let layers: Vec<_> = model
            .layers()
            .iter()
            .map(|l| {
                let (shape, detail) = layer_desc(&l.kind);
                serde_json::json!({"name": l.name, "kind": l.kind.kind_name(), "shape": shape, "detail": detail})
            })
            .collect();
        let tensors: Vec<_> = tensors
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape, "offset": t.file_offset, "bytes": t.byte_len}))
            .collect();
        let metadata: serde_json::Map<String, serde_json::Value> = model
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
            .collect();
        let doc = serde_json::json!({
            "file": file.display().to_string(),
            "version": format!("{}.{}", h.version_major, h.version_minor),
            "checksum": {"algorithm": "crc32", "value": format!("{:08x}", h.checksum), "status": "ok"},
            "input_features": model.input_features(),
            "output_features": model.output_features(),
            "layers": layers,
            "tensors": tensors,
            "metadata": metadata,
        });
        outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("file      {}", file.display());
    outln!("format    bnfold v{}.{}", h.version_major, h.version_minor);
    outln!("checksum  crc32 {:08x} (verified)", h.checksum);
    outln!(
        "network   {} -> {} features, {} layers, {} tensors",
        model.input_features(),
        model.output_features(),
        model.layers().len(),
        tensors.len()
    );
    outln!("\nlayers");
    for (i, l) in model.layers().iter().enumerate() {
        let (shape, detail) = layer_desc(&l.kind);
        outln!(
            "  {i:>3}  {:<10} {:<20} {:<12} {detail}",
            l.kind.kind_name(),
            l.name,
            shape
        );
    }
    outln!("\ntensors");
    for t in tensors {
        outln!(
            "  {:<28} {:<5} {:<14} {:>10} bytes at {}",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape),
            t.byte_len,
            t.file_offset
        );
    }
    if !model.metadata().is_empty() {
        outln!("\nmetadata");
        for (k, v) in model.metadata() {
            outln!("  {k} = {v}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
