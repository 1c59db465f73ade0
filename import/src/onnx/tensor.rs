//! ONNX tensors (initializers and `Constant` values) as importer constants: raw_data, typed
//! fields or external data, every length checked against the shape before anything is allocated
//! in proportion to it.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use bnfold::format::DType;

use super::proto::{DATA_LOCATION_EXTERNAL, TensorProto, data_type};
use crate::error::{ImportError, Result};
use crate::network::Tensor;

/// A constant value of the graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Const {
    /// Floating point (f32, f16, bf16 kept as stored; f64 rounded to f32).
    Float(Tensor),
    /// Integers (INT64 or INT32), e.g. a `Reshape` shape or `Unsqueeze` axes.
    Int {
        /// Shape.
        dims: Vec<usize>,
        /// Values.
        values: Vec<i64>,
    },
    /// Any other element type (kept only so that the node using it can name it in a refusal).
    Other {
        /// Shape.
        dims: Vec<usize>,
        /// `TensorProto.DataType`.
        data_type: i32,
    },
}

impl Const {
    /// Shape.
    pub fn dims(&self) -> &[usize] {
        match self {
            Const::Float(t) => &t.dims,
            Const::Int { dims, .. } | Const::Other { dims, .. } => dims,
        }
    }

    /// The element count (product of dims).
    pub fn len(&self) -> usize {
        self.dims().iter().product()
    }

    /// True if the constant has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The single value of a one-element float or integer constant.
    pub fn scalar(&self) -> Option<f64> {
        match self {
            Const::Float(t) if t.len() == 1 => Some(t.get(0) as f64),
            Const::Int { values, .. } if values.len() == 1 => Some(values[0] as f64),
            _ => None,
        }
    }
}

/// Where external data is resolved: the directory of the model file.
#[derive(Debug, Clone, Copy)]
pub struct ExternalBase<'a> {
    /// The model's directory, or `None` for a model given as bytes (external data is then an error).
    pub dir: Option<&'a Path>,
}

/// Largest element count of one tensor the importer decodes (2^31: far above any dense layer the
/// format can hold, which is bounded by 2^24 x 2^24 but by memory long before).
const MAX_ELEMENTS: u64 = 1 << 31;

/// Element count of `dims`: every dimension non-negative, the product without overflow and within
/// [`MAX_ELEMENTS`].
fn element_count(name: &str, dims: &[i64]) -> Result<(Vec<usize>, usize)> {
    let mut n: u64 = 1;
    let mut out = Vec::with_capacity(dims.len().min(8));
    if dims.len() > 8 {
        return Err(ImportError::tensor(
            name,
            format!("rank {} (at most 8 is read)", dims.len()),
        ));
    }
    for &d in dims {
        let d = u64::try_from(d)
            .map_err(|_| ImportError::tensor(name, format!("negative dimension {d}")))?;
        n = n
            .checked_mul(d)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| {
                ImportError::tensor(
                    name,
                    format!("shape {dims:?} has more than {MAX_ELEMENTS} elements"),
                )
            })?;
        out.push(d as usize);
    }
    Ok((out, n as usize))
}

/// Decode one tensor.
pub fn decode(t: &TensorProto, base: ExternalBase) -> Result<Const> {
    let name = t.name.as_str();
    let (dims, count) = element_count(name, &t.dims)?;
    let elem_size = match t.data_type {
        data_type::FLOAT | data_type::INT32 => 4,
        data_type::FLOAT16 | data_type::BFLOAT16 => 2,
        data_type::DOUBLE | data_type::INT64 => 8,
        other => {
            return Ok(Const::Other {
                dims,
                data_type: other,
            });
        }
    };
    // Bytes of the elements, little-endian, from whichever storage the tensor uses.
    let expected = count * elem_size;
    let raw: Option<Vec<u8>> = if t.data_location == DATA_LOCATION_EXTERNAL {
        Some(read_external(t, base, expected)?)
    } else if !t.raw_data.is_empty() || count == 0 {
        if t.raw_data.len() != expected {
            return Err(ImportError::tensor(
                name,
                format!(
                    "raw_data has {} bytes, its shape {dims:?} of {} needs {expected}",
                    t.raw_data.len(),
                    data_type::name(t.data_type)
                ),
            ));
        }
        Some(t.raw_data.clone())
    } else {
        None
    };
    let typed_len = |field: &str, len: usize| -> Result<()> {
        if len == count {
            Ok(())
        } else {
            Err(ImportError::tensor(
                name,
                format!("{field} has {len} values, its shape {dims:?} needs {count}"),
            ))
        }
    };
    let float = |dtype: DType, data: Vec<u8>| {
        Const::Float(Tensor {
            dtype,
            dims: dims.clone(),
            data,
        })
    };
    Ok(match t.data_type {
        data_type::FLOAT => match raw {
            Some(b) => float(DType::F32, b),
            None => {
                typed_len("float_data", t.float_data.len())?;
                float(
                    DType::F32,
                    t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            }
        },
        data_type::FLOAT16 | data_type::BFLOAT16 => {
            let dtype = if t.data_type == data_type::FLOAT16 {
                DType::F16
            } else {
                DType::BF16
            };
            match raw {
                Some(b) => float(dtype, b),
                None => {
                    // Typed storage: one int32 per element, the 16 bits in its low half.
                    typed_len("int32_data", t.int32_data.len())?;
                    let mut data = Vec::with_capacity(count * 2);
                    for (i, &v) in t.int32_data.iter().enumerate() {
                        let bits = u16::try_from(v).map_err(|_| {
                            ImportError::tensor(
                                name,
                                format!("int32_data[{i}] = {v} is not a 16-bit pattern"),
                            )
                        })?;
                        data.extend_from_slice(&bits.to_le_bytes());
                    }
                    float(dtype, data)
                }
            }
        }
        data_type::DOUBLE => {
            let values: Vec<f64> = match raw {
                Some(b) => b
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
                None => {
                    typed_len("double_data", t.double_data.len())?;
                    t.double_data.clone()
                }
            };
            let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
            Const::Float(Tensor::from_f32(dims, &v))
        }
        data_type::INT64 => {
            let values = match raw {
                Some(b) => b
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
                None => {
                    typed_len("int64_data", t.int64_data.len())?;
                    t.int64_data.clone()
                }
            };
            Const::Int { dims, values }
        }
        data_type::INT32 => {
            let values = match raw {
                Some(b) => b
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                    .collect(),
                None => {
                    typed_len("int32_data", t.int32_data.len())?;
                    t.int32_data.iter().map(|&v| v as i64).collect()
                }
            };
            Const::Int { dims, values }
        }
        _ => unreachable!("other data types returned above"),
    })
}

/// Read the `expected` bytes of an external-data tensor, after checking that its location stays
/// inside the model's directory and that its range lies inside the side file.
fn read_external(t: &TensorProto, base: ExternalBase, expected: usize) -> Result<Vec<u8>> {
    let name = t.name.as_str();
    let bad = |reason: String| ImportError::ExternalData {
        tensor: name.to_owned(),
        reason,
    };
    let mut location: Option<&str> = None;
    let mut offset: u64 = 0;
    let mut length: Option<u64> = None;
    for e in &t.external_data {
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{} '{v}' is not a non-negative integer", e.key)))
        };
        match e.key.as_str() {
            "location" => location = Some(e.value.as_str()),
            "offset" => offset = number(&e.value)?,
            "length" => length = Some(number(&e.value)?),
            // A SHA-1 of the data, optional; bnfold's own checks are the sizes and ranges.
            "checksum" => {}
            k => return Err(bad(format!("unknown key '{k}'"))),
        }
    }
    let location = location
        .filter(|l| !l.is_empty())
        .ok_or_else(|| bad("no 'location' given".into()))?;
    let Some(dir) = base.dir else {
        return Err(bad(format!(
            "the data is in '{location}', but the model was given as bytes, with no directory to find it in"
        )));
    };
    let outside = |reason: String| ImportError::ExternalDataOutside {
        tensor: name.to_owned(),
        location: location.to_owned(),
        reason,
    };
    let rel = Path::new(location);
    if rel.is_absolute()
        || location.starts_with('/')
        || location.starts_with('\\')
        || rel
            .components()
            .any(|c| matches!(c, Component::Prefix(_) | Component::RootDir))
    {
        return Err(outside("is absolute".into()));
    }
    let joined = dir.join(rel);
    let io = |path: &Path, source| ImportError::Io {
        path: path.to_owned(),
        source,
    };
    let real_dir = dir.canonicalize().map_err(|e| io(dir, e))?;
    let real = match joined.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Say "outside" rather than "missing" when the path would leave the directory anyway.
            if rel.components().any(|c| c == Component::ParentDir) {
                return Err(outside(
                    "goes up out of the model's directory ('..')".into(),
                ));
            }
            return Err(ImportError::ExternalDataMissing {
                tensor: name.to_owned(),
                path: joined,
            });
        }
        Err(e) => return Err(io(&joined, e)),
    };
    if !real.starts_with(&real_dir) {
        return Err(outside(format!(
            "resolves to {}, outside {}",
            real.display(),
            real_dir.display()
        )));
    }
    let range = |reason: String| ImportError::ExternalDataRange {
        tensor: name.to_owned(),
        path: joined.clone(),
        reason,
    };
    let mut file = std::fs::File::open(&real).map_err(|e| io(&joined, e))?;
    let meta = file.metadata().map_err(|e| io(&joined, e))?;
    if !meta.is_file() {
        return Err(range("not a regular file".into()));
    }
    let file_len = meta.len();
    if let Some(length) = length
        && length != expected as u64
    {
        return Err(range(format!(
            "length {length} does not match the tensor's {expected} bytes"
        )));
    }
    match offset.checked_add(expected as u64) {
        Some(end) if end <= file_len => {}
        _ => {
            return Err(range(format!(
                "bytes {offset}..{offset}+{expected} lie outside the {file_len}-byte file"
            )));
        }
    }
    // In range of a file that exists: the allocation is paid for by the side file's bytes.
    let mut data = vec![0u8; expected];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut data))
        .map_err(|e| io(&joined, e))?;
    Ok(data)
}
