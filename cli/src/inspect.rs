//! `bnfold inspect`: what a weight file holds.
//!
//! Every name from the file is printed through [`bnfold_cli::text::name`] (control characters
//! escaped, length capped). A file whose checksum fails is still shown, with the mismatch, and the
//! command then exits with status 1: the file must not be trusted, but a person repairing it needs to
//! see what it holds.

use std::path::Path;
use std::process::ExitCode;

use bnfold::{FormatError, Model};
use bnfold_cli::text::name;

use crate::CliResult;

/// Print the layers, tensors, metadata and checksum of `file`, as text or JSON.
pub fn run(file: &Path, json: bool) -> CliResult {
    let (model, mismatch) = match Model::load(file) {
        Ok(m) => (m, None),
        Err(e) => match e.format_kind() {
            Some(&FormatError::ChecksumMismatch { stored, computed }) => {
                let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
                let m = Model::from_bytes_unchecked_crc(&bytes)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                (m, Some((stored, computed)))
            }
            _ => return Err(crate::load_model(file).err().unwrap_or_else(|| e.into())),
        },
    };
    let h = model.header();
    let tensors = model.tensors();
    let layer_desc =
        |kind: &bnfold::format::LayerKind| (kind.shape_text(), name(&kind.detail(tensors)));
    let code = if mismatch.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
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
        // In stored order, repeated keys kept (a JSON object would sort them and keep the last).
        let metadata: Vec<_> = model
            .metadata()
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
            .collect();
        let checksum = match mismatch {
            None => {
                serde_json::json!({"algorithm": "crc32", "value": format!("{:08x}", h.checksum), "status": "ok"})
            }
            Some((stored, computed)) => serde_json::json!({
                "algorithm": "crc32", "value": format!("{stored:08x}"),
                "computed": format!("{computed:08x}"), "status": "mismatch"
            }),
        };
        let doc = serde_json::json!({
            "file": file.display().to_string(),
            "version": format!("{}.{}", h.version_major, h.version_minor),
            "checksum": checksum,
            "input_features": model.input_features(),
            "output_features": model.output_features(),
            "layers": layers,
            "tensors": tensors,
            "metadata": metadata,
        });
        outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(code);
    }
    outln!("file      {}", name(&file.display().to_string()));
    outln!("format    bnfold v{}.{}", h.version_major, h.version_minor);
    match mismatch {
        None => outln!("checksum  crc32 {:08x} (verified)", h.checksum),
        Some((stored, computed)) => outln!(
            "checksum  crc32 {stored:08x} MISMATCH: the contents give {computed:08x}; the file is corrupt"
        ),
    }
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
            name(&l.name),
            shape
        );
    }
    outln!("\ntensors (offsets are absolute, from the start of the file)");
    for t in tensors {
        outln!(
            "  {:<28} {:<5} {:<14} {:>10} bytes at {}",
            name(&t.name),
            t.dtype.name(),
            format!("{:?}", t.shape),
            t.byte_len,
            t.file_offset
        );
    }
    if !model.metadata().is_empty() {
        outln!("\nmetadata");
        for (k, v) in model.metadata() {
            outln!("  {} = {}", name(k), name(v));
        }
    }
    Ok(code)
}
