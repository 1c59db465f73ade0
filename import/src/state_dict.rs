//! safetensors input: a PyTorch `state_dict` of an `nn.Sequential`, with the architecture given
//! by `--arch`.
//!
//! `--arch` is a comma list of the Sequential's modules in order, one item per index:
//!
//! | item | module | tensors `K.*` (K = the item's index) |
//! |---|---|---|
//! | `linear` | `nn.Linear` | `K.weight` `[out, in]`, optional `K.bias` `[out]` |
//! | `bn`, `bn:EPS` | `nn.BatchNorm1d` (eps 1e-5 unless given) | `K.running_mean`, `K.running_var`, optional `K.weight` and `K.bias` (absent with `affine=False`); `K.num_batches_tracked` is ignored |
//! | `relu`, `leaky_relu[:ALPHA]`, `tanh`, `sigmoid`, `gelu`, `gelu_tanh`, `softmax` | the activation | none |
//! | `dropout`, `identity`, `flatten` | modules without parameters that do nothing at inference on `[batch, features]` | none |
//!
//! Keys may carry a common prefix before the index (`net.0.weight` for `self.net =
//! nn.Sequential(...)`); it is detected and removed.

use std::collections::BTreeSet;

use bnfold::Activation;
use bnfold::format::DType;
use safetensors::{Dtype, SafeTensors};

use crate::error::{ImportError, Result};
use crate::network::{Layer, LayerSpec, Network, Tensor};

/// One parsed `--arch` item.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchItem {
    /// `linear`.
    Linear,
    /// `bn` / `bn:EPS`.
    BatchNorm {
        /// eps (1e-5, PyTorch's default, unless given).
        eps: f64,
    },
    /// An activation.
    Act(Activation),
    /// `dropout`, `identity`, `flatten`: nothing at inference.
    Skip,
}

/// PyTorch's `BatchNorm1d` default eps.
pub const TORCH_BN_EPS: f64 = 1e-5;

/// Parse a `--arch` string.
pub fn parse_arch(spec: &str) -> Result<Vec<ArchItem>> {
    let items: Vec<&str> = spec.split(',').map(str::trim).collect();
    if spec.trim().is_empty() {
        return Err(ImportError::ArchSyntax {
            index: 0,
            item: String::new(),
            reason: "--arch is empty".into(),
        });
    }
    items
        .iter()
        .enumerate()
        .map(|(index, &item)| {
            let err = |reason: String| ImportError::ArchSyntax {
                index,
                item: item.to_owned(),
                reason,
            };
            let lower = item.to_ascii_lowercase();
            let (name, param) = match lower.split_once(':') {
                Some((n, p)) => (n.trim(), Some(p.trim())),
                None => (lower.as_str(), None),
            };
            match (name, param) {
                ("linear" | "dense", None) => Ok(ArchItem::Linear),
                ("bn" | "batchnorm", None) => Ok(ArchItem::BatchNorm { eps: TORCH_BN_EPS }),
                ("bn" | "batchnorm", Some(p)) => match p.parse::<f64>() {
                    Ok(eps) if eps.is_finite() && eps >= 0.0 => Ok(ArchItem::BatchNorm { eps }),
                    _ => Err(err(format!(
                        "eps '{p}' is not a finite non-negative number"
                    ))),
                },
                ("dropout" | "identity" | "flatten", None) => Ok(ArchItem::Skip),
                ("", _) => Err(err("empty item (two commas in a row?)".into())),
                _ => item.parse::<Activation>().map(ArchItem::Act).map_err(|e| {
                    err(format!(
                        "{e}; or linear, bn[:EPS], dropout, identity, flatten"
                    ))
                }),
            }
        })
        .collect()
}

/// The element dtype of a safetensors tensor as a format dtype.
fn dtype_of(name: &str, d: Dtype) -> Result<DType> {
    match d {
        Dtype::F32 => Ok(DType::F32),
        Dtype::F16 => Ok(DType::F16),
        Dtype::BF16 => Ok(DType::BF16),
        other => Err(ImportError::SafetensorsTensor {
            tensor: name.to_owned(),
            reason: format!("dtype {other:?} (f32, f16, bf16 are read)"),
        }),
    }
}

/// The common prefix (ending in `.`) before the Sequential index, e.g. `net.` in `net.0.weight`.
fn index_prefix(names: &[&str]) -> String {
    let prefix_of = |n: &str| -> Option<String> {
        let parts: Vec<&str> = n.split('.').collect();
        let k = parts
            .iter()
            .position(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))?;
        Some(parts[..k].iter().map(|p| format!("{p}.")).collect())
    };
    let mut prefixes = names.iter().filter_map(|n| prefix_of(n));
    match prefixes.next() {
        Some(p)
            if names
                .iter()
                .all(|n| prefix_of(n).as_deref() == Some(p.as_str())) =>
        {
            p
        }
        _ => String::new(),
    }
}

/// Convert a state_dict saved as safetensors, given its architecture.
pub fn import(bytes: &[u8], arch: &str, source_name: &str) -> Result<Network> {
    let items = parse_arch(arch)?;
    let st = SafeTensors::deserialize(bytes)?;
    let mut names: Vec<&str> = st.names().into_iter().collect();
    names.sort_unstable();
    let prefix = index_prefix(&names);
    let mut unused: BTreeSet<&str> = names.iter().copied().collect();
    let mut layers = Vec::new();
    let mut width: Option<usize> = None;
    let mut input_width: Option<usize> = None;
    for (index, item) in items.iter().enumerate() {
        let item_text = arch.split(',').nth(index).unwrap_or("").trim().to_owned();
        let mismatch = |reason: String| ImportError::ArchMismatch {
            index,
            item: item_text.clone(),
            reason,
        };
        let key = |suffix: &str| format!("{prefix}{index}.{suffix}");
        // The tensor `K.suffix`, if present (taking it off the unused list).
        let mut take = |suffix: &str| -> Result<Option<Tensor>> {
            let name = key(suffix);
            let Some(&found) = unused.get(name.as_str()) else {
                return Ok(None);
            };
            unused.remove(found);
            let view = st.tensor(found)?;
            let dtype = dtype_of(found, view.dtype())?;
            Ok(Some(Tensor {
                dtype,
                dims: view.shape().to_vec(),
                data: view.data().to_vec(),
            }))
        };
        let vector = |t: Tensor, role: &str, n: Option<usize>| -> Result<Tensor> {
            match (t.dims.as_slice(), n) {
                ([f], Some(n)) if *f != n => Err(mismatch(format!(
                    "tensor '{}' has {f} values, {n} expected",
                    key(role)
                ))),
                ([f], _) if *f > 0 => Ok(t),
                (d, _) => Err(mismatch(format!(
                    "tensor '{}' has shape {d:?}, not [features]",
                    key(role)
                ))),
            }
        };
        let name = format!("{prefix}{index}");
        match item {
            ArchItem::Linear => {
                let weight = take("weight")?.ok_or_else(|| {
                    mismatch(format!(
                        "no tensor '{}' (a Linear has a weight)",
                        key("weight")
                    ))
                })?;
                let [out, inp] = weight.dims[..] else {
                    return Err(mismatch(format!(
                        "tensor '{}' has shape {:?}, not [out, in]",
                        key("weight"),
                        weight.dims
                    )));
                };
                if out == 0 || inp == 0 {
                    return Err(mismatch(format!(
                        "tensor '{}' has shape {:?}",
                        key("weight"),
                        weight.dims
                    )));
                }
                if let Some(w) = width
                    && w != inp
                {
                    return Err(mismatch(format!(
                        "tensor '{}' has shape [{out}, {inp}]: it takes {inp} features, but {w} flow into it",
                        key("weight")
                    )));
                }
                let bias = take("bias")?
                    .map(|b| vector(b, "bias", Some(out)))
                    .transpose()?;
                input_width = input_width.or(Some(inp));
                width = Some(out);
                layers.push(Layer {
                    name,
                    spec: LayerSpec::Dense { weight, bias },
                });
            }
            ArchItem::BatchNorm { eps } => {
                let mean = take("running_mean")?.ok_or_else(|| {
                    mismatch(format!(
                        "no tensor '{}' (a BatchNorm has running statistics; was it built with track_running_stats=False?)",
                        key("running_mean")
                    ))
                })?;
                let mean = vector(mean, "running_mean", width)?;
                let f = mean.len();
                let var = take("running_var")?
                    .ok_or_else(|| mismatch(format!("no tensor '{}'", key("running_var"))))?;
                let var = vector(var, "running_var", Some(f))?;
                let gamma = take("weight")?
                    .map(|t| vector(t, "weight", Some(f)))
                    .transpose()?;
                let beta = take("bias")?
                    .map(|t| vector(t, "bias", Some(f)))
                    .transpose()?;
                // An int64 step counter; nothing at inference (momentum=None uses it to average).
                let nbt = key("num_batches_tracked");
                unused.remove(nbt.as_str());
                input_width = input_width.or(Some(f));
                width = Some(f);
                layers.push(Layer {
                    name,
                    spec: LayerSpec::BatchNorm {
                        eps: *eps,
                        gamma,
                        beta,
                        mean,
                        var,
                    },
                });
            }
            ArchItem::Act(a) => {
                if *a == Activation::Softmax && index + 1 != items.len() {
                    return Err(mismatch(
                        "softmax is only supported as the last module".into(),
                    ));
                }
                layers.push(Layer {
                    name,
                    spec: LayerSpec::Act(*a),
                });
            }
            ArchItem::Skip => {}
        }
        // A module without parameters must not have tensors.
        if matches!(item, ArchItem::Act(_) | ArchItem::Skip) {
            let p = key("");
            if let Some(t) = unused.iter().find(|n| n.starts_with(&p)) {
                return Err(mismatch(format!(
                    "tensor '{t}' belongs to this index, but '{item_text}' has no parameters"
                )));
            }
        }
    }
    if !unused.is_empty() {
        return Err(ImportError::UnusedTensor {
            tensors: unused.iter().map(|t| (*t).to_owned()).collect(),
            items: items.len(),
        });
    }
    let input_features = input_width.ok_or(ImportError::ArchUsage(
        "--arch has no linear or bn layer: the input width is not known",
    ))?;
    let mut net = Network {
        input_features,
        layers,
        metadata: vec![
            (
                "producer".into(),
                format!(
                    "bnfold convert (bnfold-import {})",
                    env!("CARGO_PKG_VERSION")
                ),
            ),
            ("source_file".into(), source_name.to_owned()),
            ("source_format".into(), "safetensors".into()),
            ("source_framework".into(), "pytorch".into()),
            ("arch".into(), arch.trim().to_owned()),
        ],
    };
    crate::add_bn_metadata(&mut net, true);
    Ok(net)
}
