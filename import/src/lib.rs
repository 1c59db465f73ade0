//! bnfold-import: convert PyTorch and Keras models (ONNX, safetensors) into bnfold weight files.
//!
//! ```no_run
//! use bnfold_import::{ConvertOptions, convert};
//! let report = convert(
//!     "model.onnx".as_ref(),
//!     "model.bnw".as_ref(),
//!     &ConvertOptions::default(),
//! )?;
//! println!("{} layers", report.network.layers.len());
//! # Ok::<(), bnfold_import::ImportError>(())
//! ```
//!
//! The importer keeps what the source says: a `BatchNormalization` node becomes a BatchNorm layer
//! with its gamma, beta, moving statistics and eps (so `bnfold verify` compares folded against
//! unfolded), a per-feature `Mul`/`Add` (tf2onnx's form of a Keras BN) an Affine layer, and tensors
//! keep their stored dtype bit for bit unless [`ConvertOptions::dtype`] asks for another. What it
//! cannot represent exactly it refuses, listing every node it cannot convert. Nothing is written
//! unless the whole conversion succeeded and the result loads as a valid bnfold model.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod network;
pub mod onnx;
pub mod state_dict;

use std::io::Write;
use std::path::Path;

use bnfold::format::DType;

pub use error::{ImportError, Result, UnsupportedNode};
pub use network::{Layer, LayerSpec, Network, Tensor};

/// Largest ONNX file read: protobuf messages cannot exceed 2 GiB (larger models keep their
/// tensors in external data, which has no such limit).
pub const MAX_ONNX_BYTES: u64 = 2 << 30;

/// What to convert and how.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// The architecture of a safetensors state_dict (see [`state_dict`]); must be `None` for ONNX.
    pub arch: Option<String>,
    /// Store every tensor in this dtype; `None` keeps each tensor's source dtype (an f16 model
    /// stays f16).
    pub dtype: Option<DType>,
}

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// An ONNX model (protobuf).
    Onnx,
    /// A safetensors file.
    Safetensors,
}

/// Which format `bytes` (from a file named `path`) are in: `.safetensors` by name, or by the
/// safetensors layout (a little-endian u64 header length, then a JSON object); anything else is
/// read as ONNX.
pub fn detect_format(path: &Path, bytes: &[u8]) -> SourceFormat {
    let by_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let by_content = bytes.len() >= 9
        && bytes[8] == b'{'
        && u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) <= (bytes.len() - 8) as u64;
    if by_name || by_content {
        SourceFormat::Safetensors
    } else {
        SourceFormat::Onnx
    }
}

/// Convert an ONNX model held in memory. `dir` is the directory external data is resolved in
/// (`None`: a model with external data is an error); `source_name` is recorded in the metadata.
pub fn import_onnx_bytes(bytes: &[u8], dir: Option<&Path>, source_name: &str) -> Result<Network> {
    onnx::import(bytes, onnx::tensor::ExternalBase { dir }, source_name)
}

/// Convert a safetensors state_dict held in memory, with its `--arch` string.
pub fn import_safetensors_bytes(bytes: &[u8], arch: &str, source_name: &str) -> Result<Network> {
    state_dict::import(bytes, arch, source_name)
}

/// Read and convert `input` (without writing anything).
pub fn import_file(input: &Path, opts: &ConvertOptions) -> Result<Network> {
    let io = |source| ImportError::Io {
        path: input.to_owned(),
        source,
    };
    let file = std::fs::File::open(input).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    // The whole file, as big as it is: the allocation is the file's own size.
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_ONNX_BYTES) as usize);
    std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io)?;
    let name = input
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut net = match detect_format(input, &bytes) {
        SourceFormat::Safetensors => {
            let arch = opts.arch.as_deref().ok_or(ImportError::ArchUsage(
                "a safetensors state_dict holds tensors only: give its architecture with --arch (e.g. --arch linear,bn,relu,linear)",
            ))?;
            import_safetensors_bytes(&bytes, arch, &name)?
        }
        SourceFormat::Onnx => {
            if opts.arch.is_some() {
                return Err(ImportError::ArchUsage(
                    "--arch is for safetensors input; an ONNX model carries its own graph",
                ));
            }
            if bytes.len() as u64 > MAX_ONNX_BYTES {
                return Err(ImportError::FileTooLarge {
                    path: input.to_owned(),
                    what: "an ONNX model (protobuf's limit; keep large tensors in external data)",
                    len: bytes.len() as u64,
                    limit: MAX_ONNX_BYTES,
                });
            }
            let dir = match input.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            import_onnx_bytes(&bytes, Some(dir), &name)?
        }
    };
    if let Some(dtype) = opts.dtype {
        net.cast(dtype);
        net.metadata
            .push(("converted_dtype".into(), dtype.name().to_owned()));
    }
    Ok(net)
}

/// The result of [`convert`].
#[derive(Debug)]
pub struct Converted {
    /// The network as written.
    pub network: Network,
    /// Size of the written file.
    pub bytes: usize,
}

/// Convert `input` and write the weight file `output` (atomically: a temporary file in the same
/// directory, renamed into place only when everything succeeded).
pub fn convert(input: &Path, output: &Path, opts: &ConvertOptions) -> Result<Converted> {
    let network = import_file(input, opts)?;
    let bytes = network.to_bytes()?;
    write_atomically(output, &bytes)?;
    Ok(Converted {
        network,
        bytes: bytes.len(),
    })
}

/// Write `bytes` to `path` through a temporary file in the same directory and a rename, so that
/// `path` is either untouched or complete (the temporary file is removed on any error).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| ImportError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".bnfold-convert-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Record the BN convention in the metadata: eps per BatchNorm layer (and `bn_eps` when they
/// share one), how BN arrived (`bn_form`), and PyTorch's unbiased running variance.
pub(crate) fn add_bn_metadata(net: &mut Network, pytorch: bool) {
    let eps: Vec<(String, f64)> = net
        .layers
        .iter()
        .filter_map(|l| match l.spec {
            LayerSpec::BatchNorm { eps, .. } => Some((l.name.clone(), eps)),
            _ => None,
        })
        .collect();
    let has_affine = net
        .layers
        .iter()
        .any(|l| matches!(l.spec, LayerSpec::Affine { .. }));
    let mut form = Vec::new();
    if !eps.is_empty() {
        form.push("batchnorm");
        if eps.iter().all(|(_, e)| *e == eps[0].1) {
            net.metadata
                .push(("bn_eps".into(), format!("{:e}", eps[0].1)));
        }
        let per: Vec<String> = eps.iter().map(|(n, e)| format!("{n}={e:e}")).collect();
        net.metadata
            .push(("bn_eps_per_layer".into(), per.join(",")));
        if pytorch {
            net.metadata.push(("bn_variance".into(), "unbiased".into()));
        }
    }
    if has_affine {
        form.push("affine");
    }
    if !form.is_empty() {
        net.metadata.push(("bn_form".into(), form.join(",")));
    }
}
