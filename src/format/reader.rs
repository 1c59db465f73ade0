//! Parsing of the fixed header and the table section.
//!
//! The reader never trusts a size: each count is checked against its limit and against the bytes that
//! are left before anything is allocated for it, and every offset is computed with checked arithmetic.

use std::collections::HashMap;

use super::{
    AFFINE_MINOR, ALIGN, Activation, CHECKSUM_RANGE, DType, HEADER_LEN, LayerKind, LayerRecord,
    MAGIC, NO_TENSOR, VERSION_MAJOR, align_up, checksum_with, limits,
};
use crate::error::{Error, FormatError, Result};

/// The fixed 64-byte header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Major format version.
    pub version_major: u16,
    /// Minor format version.
    pub version_minor: u16,
    /// Length of the table section that starts at byte 64.
    pub table_len: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Length of the data section.
    pub data_len: u64,
    /// Stored CRC-32.
    pub checksum: u32,
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Unique name.
    pub name: String,
    /// Storage type.
    pub dtype: DType,
    /// Shape, outermost dimension first.
    pub shape: Vec<usize>,
    /// Absolute byte offset of the first element in the file.
    pub file_offset: usize,
    /// Length in bytes (`product(shape) * dtype.size()`).
    pub byte_len: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.byte_len / self.dtype.size()
    }

    /// True if the tensor has no elements (never the case for a parsed tensor).
    pub fn is_empty(&self) -> bool {
        self.byte_len == 0
    }
}

/// Everything in a weight file except the tensor bytes themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The fixed header.
    pub header: Header,
    /// Key/value metadata, in file order.
    pub metadata: Vec<(String, String)>,
    /// Tensor table.
    pub tensors: Vec<TensorInfo>,
    /// Width of the network's input rows.
    pub input_features: usize,
    /// Layers, in execution order. Tensor indices are checked to be in range.
    pub layers: Vec<LayerRecord>,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parse and check a whole weight file held in memory.
///
/// With `verify_checksum` false the CRC is not computed (the fuzzers use this to reach deeper code);
/// every structural check still runs.
pub fn parse(bytes: &[u8], verify_checksum: bool) -> Result<Parsed> {
    parse_with(bytes, verify_checksum, &mut |_| {})
}

/// [`parse`], calling `hashed` after each chunk of the checksum pass (see
/// [`checksum_with`](super::checksum_with)); the structural checks after it read only the header
/// and the table.
pub(crate) fn parse_with(
    bytes: &[u8],
    verify_checksum: bool,
    hashed: &mut dyn FnMut(std::ops::Range<usize>),
) -> Result<Parsed> {
    let header = parse_header(bytes, verify_checksum, hashed)?;
    // parse_header proved 64 + table_len <= data_offset <= file length, so this slice is in bounds.
    let table_end = HEADER_LEN + header.table_len as usize;
    let mut cur = Cursor {
        buf: &bytes[HEADER_LEN..table_end],
        pos: 0,
    };
    let data_offset = header.data_offset;
    let data_len = header.data_len;

    // Metadata.
    let n_meta = cur.count("metadata", limits::MAX_METADATA, 8)?;
    let mut metadata = Vec::with_capacity(n_meta);
    for _ in 0..n_meta {
        let at = cur.offset();
        let key = cur.string("metadata key", limits::MAX_KEY_LEN)?;
        if key.is_empty() {
            return Err(Error::format(
                at,
                FormatError::EmptyName {
                    what: "metadata key",
                },
            ));
        }
        let value = cur.string("metadata value", limits::MAX_VALUE_LEN)?;
        metadata.push((key, value));
    }

    // Tensors: name, dtype, rank, dims, offset, byte_len; at least 4+1+1+8+8+8 = 30 bytes each.
    let n_tensors = cur.count("tensor", limits::MAX_TENSORS, 30)?;
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut names: HashMap<String, usize> = HashMap::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let entry_at = cur.offset();
        let name = cur.string("tensor name", limits::MAX_NAME_LEN)?;
        if name.is_empty() {
            return Err(Error::format(
                entry_at,
                FormatError::EmptyName {
                    what: "tensor name",
                },
            ));
        }
        let at = cur.offset();
        let code = cur.u8("tensor dtype")?;
        let dtype = DType::from_code(code).ok_or_else(|| {
            Error::format(
                at,
                FormatError::UnknownDtype {
                    tensor: name.clone(),
                    code,
                },
            )
        })?;
        let at = cur.offset();
        let rank = cur.u8("tensor rank")?;
        if rank == 0 || rank > limits::MAX_RANK {
            return Err(Error::format(
                at,
                FormatError::BadRank {
                    tensor: name,
                    rank,
                    max: limits::MAX_RANK,
                },
            ));
        }
        let mut shape = Vec::with_capacity(rank as usize);
        let mut elems: Option<u64> = Some(1);
        for dim in 0..rank as usize {
            let at = cur.offset();
            let d = cur.u64("tensor dimension")?;
            if d == 0 || d > limits::MAX_WIDTH {
                return Err(Error::format(
                    at,
                    FormatError::BadDimension {
                        tensor: name,
                        dim,
                        value: d,
                        max: limits::MAX_WIDTH,
                    },
                ));
            }
            elems = elems.and_then(|e| e.checked_mul(d));
            shape.push(d as usize);
        }
        let off_at = cur.offset();
        let offset = cur.u64("tensor offset")?;
        let len_at = cur.offset();
        let byte_len = cur.u64("tensor byte_len")?;
        let expected = elems.and_then(|e| e.checked_mul(dtype.size() as u64));
        if expected != Some(byte_len) {
            return Err(Error::format(
                len_at,
                FormatError::TensorSizeMismatch {
                    tensor: name,
                    expected: expected.unwrap_or(u64::MAX),
                    declared: byte_len,
                },
            ));
        }
        if offset % ALIGN as u64 != 0 {
            return Err(Error::format(
                off_at,
                FormatError::TensorMisaligned {
                    tensor: name,
                    offset,
                },
            ));
        }
        match offset.checked_add(byte_len) {
            Some(end) if end <= data_len => {}
            _ => {
                return Err(Error::format(
                    off_at,
                    FormatError::TensorOutOfBounds {
                        tensor: name,
                        offset,
                        len: byte_len,
                        data_len,
                    },
                ));
            }
        }
        if names.insert(name.clone(), tensors.len()).is_some() {
            return Err(Error::format(
                entry_at,
                FormatError::DuplicateTensor { tensor: name },
            ));
        }
        // In bounds of the data section, which parse_header proved lies inside the file, so the
        // absolute offset and length fit in usize.
        tensors.push(TensorInfo {
            name,
            dtype,
            shape,
            file_offset: (data_offset + offset) as usize,
            byte_len: byte_len as usize,
        });
    }
    check_overlap(&tensors)?;
    check_padding(bytes, &header, &tensors)?;

    // Layers.
    let at = cur.offset();
    let input_features = cur.u32("input_features")? as u64;
    if input_features == 0 || input_features > limits::MAX_WIDTH {
        return Err(Error::format(
            at,
            FormatError::BadDimension {
                tensor: "<network input>".into(),
                dim: 0,
                value: input_features,
                max: limits::MAX_WIDTH,
            },
        ));
    }
    // Smallest layer: name length (4) + kind (1) + activation code (1) + parameter (4) = 10 bytes.
    let n_layers = cur.count("layer", limits::MAX_LAYERS, 10)?;
    let mut layers = Vec::with_capacity(n_layers);
    // Which layer (if any) already uses each tensor: a tensor serves one role in one layer, so that
    // compiling a model never needs more memory than its file holds (a shared tensor would be
    // converted and packed once per use: 4096 layers over one 1 MiB tensor would need 4 GiB).
    let mut used_by: Vec<Option<usize>> = vec![None; tensors.len()];
    for index in 0..n_layers {
        let layer_at = cur.offset();
        let name = cur.string("layer name", limits::MAX_NAME_LEN)?;
        let at = cur.offset();
        let code = cur.u8("layer kind")?;
        let tensor = |cur: &mut Cursor, field: &'static str| -> Result<usize> {
            let at = cur.offset();
            let t = cur.u32(field)?;
            if (t as usize) < tensors.len() {
                Ok(t as usize)
            } else {
                Err(Error::format(
                    at,
                    FormatError::BadTensorIndex {
                        index,
                        field,
                        tensor_index: t,
                        count: tensors.len(),
                    },
                ))
            }
        };
        let opt_tensor = |cur: &mut Cursor, field: &'static str| -> Result<Option<usize>> {
            let at = cur.offset();
            let t = cur.u32(field)?;
            if t == NO_TENSOR {
                Ok(None)
            } else if (t as usize) < tensors.len() {
                Ok(Some(t as usize))
            } else {
                Err(Error::format(
                    at,
                    FormatError::BadTensorIndex {
                        index,
                        field,
                        tensor_index: t,
                        count: tensors.len(),
                    },
                ))
            }
        };
        let kind = match code {
            1 => {
                let inputs = cur.u32("dense inputs")? as usize;
                let outputs = cur.u32("dense outputs")? as usize;
                let weight = tensor(&mut cur, "dense weight")?;
                let bias = opt_tensor(&mut cur, "dense bias")?;
                LayerKind::Dense {
                    inputs,
                    outputs,
                    weight,
                    bias,
                }
            }
            2 => {
                let features = cur.u32("batchnorm features")? as usize;
                let eps = cur.f64("batchnorm eps")?;
                let gamma = opt_tensor(&mut cur, "batchnorm gamma")?;
                let beta = opt_tensor(&mut cur, "batchnorm beta")?;
                let moving_mean = tensor(&mut cur, "batchnorm moving_mean")?;
                let moving_variance = tensor(&mut cur, "batchnorm moving_variance")?;
                LayerKind::BatchNorm {
                    features,
                    eps,
                    gamma,
                    beta,
                    moving_mean,
                    moving_variance,
                }
            }
            3 => {
                let at = cur.offset();
                let act = cur.u8("activation code")?;
                let param_at = cur.offset();
                let param = cur.f32("activation parameter")?;
                // Only leaky_relu takes a parameter; the others must store +0.0 so that a
                // future version can give them one without old readers silently ignoring it.
                if act != 2 && param.to_bits() != 0 {
                    return Err(Error::format(
                        param_at,
                        FormatError::Reserved {
                            field: "activation parameter",
                            value: param.to_bits() as u64,
                        },
                    ));
                }
                let a = Activation::from_code(act, param).ok_or_else(|| {
                    Error::format(at, FormatError::UnknownActivation { index, code: act })
                })?;
                LayerKind::Activation(a)
            }
            4 => {
                // Kind 4 exists from 1.1 on: a file stamped 1.0 cannot contain it (and a 1.0
                // reader rejects it as an unknown kind, whatever the stamp).
                if header.version_minor < AFFINE_MINOR {
                    return Err(Error::format(
                        at,
                        FormatError::KindNeedsNewerMinor {
                            index,
                            code,
                            kind: "affine",
                            needs_minor: AFFINE_MINOR,
                            minor: header.version_minor,
                        },
                    ));
                }
                let features = cur.u32("affine features")? as usize;
                let scale = opt_tensor(&mut cur, "affine scale")?;
                let shift = opt_tensor(&mut cur, "affine shift")?;
                LayerKind::Affine {
                    features,
                    scale,
                    shift,
                }
            }
            _ => {
                return Err(Error::format(
                    at,
                    FormatError::UnknownLayerKind {
                        index,
                        code,
                        minor: header.version_minor,
                    },
                ));
            }
        };
        for r in kind.tensor_refs() {
            let (field, t) = (r.field, r.tensor);
            if let Some(first_layer) = used_by[t].replace(index) {
                return Err(Error::format(
                    layer_at,
                    FormatError::TensorReused {
                        index,
                        field,
                        tensor: tensors[t].name.clone(),
                        first_layer,
                    },
                ));
            }
        }
        layers.push(LayerRecord { name, kind });
    }
    if cur.pos != cur.buf.len() {
        return Err(Error::format(
            cur.offset(),
            FormatError::TrailingBytes {
                count: (cur.buf.len() - cur.pos) as u64,
            },
        ));
    }
    Ok(Parsed {
        header,
        metadata,
        tensors,
        input_features: input_features as usize,
        layers,
    })
}

/// Check the fixed header against the real length of `bytes`, and the checksum if asked.
pub(crate) fn parse_header(
    bytes: &[u8],
    verify_checksum: bool,
    hashed: &mut dyn FnMut(std::ops::Range<usize>),
) -> Result<Header> {
    let actual = bytes.len() as u64;
    if bytes.len() < HEADER_LEN {
        // Say "bad magic" rather than "too small" when even the bytes we have are wrong, so a random
        // short file is named for what it is.
        let n = bytes.len().min(MAGIC.len());
        if bytes[..n] != MAGIC[..n] {
            return Err(Error::format(0, FormatError::BadMagic));
        }
        return Err(Error::format(
            actual,
            FormatError::FileTooSmall { len: actual },
        ));
    }
    if bytes[..8] != MAGIC {
        return Err(Error::format(0, FormatError::BadMagic));
    }
    let version_major = le_u16(bytes, 8);
    let version_minor = le_u16(bytes, 10);
    if version_major != VERSION_MAJOR {
        return Err(Error::format(
            8,
            FormatError::UnsupportedVersion {
                major: version_major,
                minor: version_minor,
                supported: VERSION_MAJOR,
            },
        ));
    }
    let flags = le_u32(bytes, 12);
    if flags != 0 {
        return Err(Error::format(
            12,
            FormatError::Reserved {
                field: "flags",
                value: flags as u64,
            },
        ));
    }
    for at in (44..64).step_by(4) {
        let v = le_u32(bytes, at);
        if v != 0 {
            return Err(Error::format(
                at as u64,
                FormatError::Reserved {
                    field: "reserved",
                    value: v as u64,
                },
            ));
        }
    }
    let table_len = le_u64(bytes, 16);
    if table_len > limits::MAX_TABLE_LEN {
        return Err(Error::format(
            16,
            FormatError::TableTooLarge {
                len: table_len,
                limit: limits::MAX_TABLE_LEN,
            },
        ));
    }
    // Cannot overflow: table_len <= 64 MiB.
    let expected = align_up(HEADER_LEN as u64 + table_len).unwrap_or(u64::MAX);
    let data_offset = le_u64(bytes, 24);
    if data_offset != expected {
        return Err(Error::format(
            24,
            FormatError::BadDataOffset {
                found: data_offset,
                expected,
            },
        ));
    }
    let data_len = le_u64(bytes, 32);
    let declared = data_offset.saturating_add(data_len);
    if declared != actual {
        return Err(Error::format(
            32,
            FormatError::LengthMismatch { declared, actual },
        ));
    }
    let stored = le_u32(bytes, CHECKSUM_RANGE.start);
    if verify_checksum {
        let computed = checksum_with(bytes, hashed);
        if computed != stored {
            return Err(Error::format(
                CHECKSUM_RANGE.start as u64,
                FormatError::ChecksumMismatch { stored, computed },
            ));
        }
    }
    Ok(Header {
        version_major,
        version_minor,
        table_len,
        data_offset,
        data_len,
        checksum: stored,
    })
}

/// Tensors must not share bytes. Sorting by offset makes this O(n log n).
fn check_overlap(tensors: &[TensorInfo]) -> Result<()> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].file_offset);
    for pair in order.windows(2) {
        let (a, b) = (&tensors[pair[0]], &tensors[pair[1]]);
        if a.file_offset + a.byte_len > b.file_offset {
            return Err(Error::format(
                b.file_offset as u64,
                FormatError::TensorOverlap {
                    first: a.name.clone(),
                    second: b.name.clone(),
                },
            ));
        }
    }
    Ok(())
}

/// Every byte outside the table and the tensors must be zero: the padding between the table and
/// the data section, gaps between tensors, and nothing may follow the last tensor but zeros up to
/// `data_len`. (Writers write zeros; requiring them leaves no place for hidden content and keeps
/// the file a function of its tables and tensors.)
fn check_padding(bytes: &[u8], header: &Header, tensors: &[TensorInfo]) -> Result<()> {
    let zero = |range: std::ops::Range<usize>, where_: &'static str| -> Result<()> {
        match bytes[range.clone()].iter().position(|&b| b != 0) {
            Some(i) => Err(Error::format(
                (range.start + i) as u64,
                FormatError::NonZeroPadding {
                    where_,
                    value: bytes[range.start + i],
                },
            )),
            None => Ok(()),
        }
    };
    // parse_header proved these offsets inside the file.
    let table_end = HEADER_LEN + header.table_len as usize;
    let data_start = header.data_offset as usize;
    let data_end = data_start + header.data_len as usize;
    zero(table_end..data_start, "before the data section")?;
    let mut ranges: Vec<(usize, usize)> = tensors
        .iter()
        .map(|t| (t.file_offset, t.file_offset + t.byte_len))
        .collect();
    ranges.sort_unstable();
    let mut at = data_start;
    for (start, end) in ranges {
        zero(at..start.max(at), "between tensors in the data section")?;
        at = at.max(end);
    }
    zero(at..data_end, "after the last tensor")
}

/// A bounds-checked little-endian reader over the table section.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Absolute file offset of the next byte.
    fn offset(&self) -> u64 {
        (HEADER_LEN + self.pos) as u64
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(Error::format(
                self.offset(),
                FormatError::Truncated { what },
            )),
        }
    }

    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(le_u32(self.take(4, what)?, 0))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(le_u64(self.take(8, what)?, 0))
    }
    fn f32(&mut self, what: &'static str) -> Result<f32> {
        Ok(f32::from_bits(self.u32(what)?))
    }
    fn f64(&mut self, what: &'static str) -> Result<f64> {
        Ok(f64::from_bits(self.u64(what)?))
    }

    /// A u32 count, checked against its limit and against the bytes left (each entry needs at least
    /// `min_entry` bytes), so that no allocation exceeds what the file paid for.
    fn count(&mut self, what: &'static str, limit: u64, min_entry: usize) -> Result<usize> {
        let at = self.offset();
        let n = self.u32(what)? as u64;
        if n > limit {
            return Err(Error::format(
                at,
                FormatError::TooMany {
                    what,
                    count: n,
                    limit,
                },
            ));
        }
        let left = (self.buf.len() - self.pos) as u64;
        if n * min_entry as u64 > left {
            return Err(Error::format(
                self.offset(),
                FormatError::Truncated { what },
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &'static str, limit: u64) -> Result<String> {
        let at = self.offset();
        let len = self.u32(what)? as u64;
        if len > limit {
            return Err(Error::format(
                at,
                FormatError::StringTooLong { what, len, limit },
            ));
        }
        let at = self.offset();
        let raw = self.take(len as usize, what)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| Error::format(at, FormatError::BadUtf8 { what }))
    }
}
