//! The one error type of the library.
//!
//! Every failure is a variant that says what was wrong and where: format errors carry the byte offset
//! at which the reader found the problem, model errors name the layer (index and name) and, for bad
//! statistics, the feature index.

use std::path::PathBuf;

/// Result alias used throughout bnfold.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in bnfold.
///
/// `#[non_exhaustive]`: new kinds of failure (an import format, a new layer type) may be added
/// in a minor version; match the variants you handle and keep a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or mapping a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The bytes are not a valid bnfold weight file.
    #[error("invalid weight file at byte {offset}: {kind}")]
    Format {
        /// Byte offset (from the start of the file) where the problem was found.
        offset: u64,
        /// What was wrong.
        kind: FormatError,
    },
    /// The file parsed, but a layer of the network it describes is not valid.
    #[error("layer {index} ({kind_name} '{name}'): {kind}")]
    Layer {
        /// Position of the layer in the network, from 0.
        index: usize,
        /// The layer's name in the file.
        name: String,
        /// "Dense", "BatchNorm" or "Activation".
        kind_name: &'static str,
        /// What was wrong (boxed: it is rare, and keeps `Result`s small).
        kind: Box<LayerError>,
    },
    /// Input handed to a plan or session does not match the network.
    #[error("input: {0}")]
    Input(#[from] InputError),
    /// The writer was asked to produce something the format cannot hold.
    #[error("writer: {0}")]
    Writer(#[from] WriterError),
}

/// Why the [`crate::format::Writer`] refused to write something.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WriterError {
    /// A name is longer than the format allows.
    #[error("{what} '{start}...' is {len} bytes, the limit is {limit}")]
    NameTooLong {
        /// `tensor name` or `layer name`.
        what: &'static str,
        /// Its first characters.
        start: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        limit: u64,
    },
    /// A tensor's rank is outside `1..=MAX_RANK`.
    #[error("tensor '{tensor}': rank {rank} is outside 1..={max}", max = crate::format::limits::MAX_RANK)]
    Rank {
        /// Tensor name.
        tensor: String,
        /// The rank given.
        rank: usize,
    },
    /// A tensor dimension is zero or above the width limit.
    #[error("tensor '{tensor}': dimension {dim} is outside 1..={max}", max = crate::format::limits::MAX_WIDTH)]
    Dimension {
        /// Tensor name.
        tensor: String,
        /// The dimension.
        dim: usize,
    },
    /// The bytes given do not hold the shape in the dtype.
    #[error("tensor '{tensor}': {bytes} bytes given for shape {shape:?} of {}", dtype.name())]
    ByteCount {
        /// Tensor name.
        tensor: String,
        /// Bytes given.
        bytes: usize,
        /// The shape.
        shape: Vec<usize>,
        /// The dtype.
        dtype: crate::format::DType,
    },
    /// Two tensors with one name.
    #[error("tensor '{0}' added twice")]
    DuplicateTensor(String),
    /// A tensor name or metadata key is empty.
    #[error("{0} is empty")]
    EmptyName(&'static str),
    /// More tensors, layers or metadata entries than the format allows.
    #[error("too many {what} (the limit is {limit})")]
    TooMany {
        /// `tensors`, `layers` or `metadata entries`.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// A layer width does not fit the format's 32-bit field.
    #[error("layer '{layer}': width {width} does not fit 32 bits")]
    WidthTooLarge {
        /// Layer name.
        layer: String,
        /// The width.
        width: usize,
    },
    /// The table section exceeds its limit.
    #[error("table section of {len} bytes exceeds the {max}-byte limit", max = crate::format::limits::MAX_TABLE_LEN)]
    TableTooLarge {
        /// Its length.
        len: usize,
    },
    /// A section's size overflows.
    #[error("{0} too large")]
    TooLarge(&'static str),
}

/// What is wrong with the bytes of a weight file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than the fixed 64-byte header.
    #[error("file is {len} bytes, shorter than the 64-byte header")]
    FileTooSmall {
        /// The file's length.
        len: u64,
    },
    /// The first eight bytes are not the bnfold magic.
    #[error("bad magic number: this is not a bnfold weight file")]
    BadMagic,
    /// The file's major version is one this reader does not know.
    #[error(
        "format version {major}.{minor} is not supported by this reader (it reads major version {supported}); upgrade bnfold"
    )]
    UnsupportedVersion {
        /// Major version in the file.
        major: u16,
        /// Minor version in the file.
        minor: u16,
        /// Major version this reader implements.
        supported: u16,
    },
    /// A byte that no table entry or tensor covers (the padding before the data section, a gap
    /// between tensors) is not zero.
    #[error("padding byte is {value:#04x}, must be 0 ({where_})")]
    NonZeroPadding {
        /// Which padding: before the data section, or between tensors.
        where_: &'static str,
        /// The byte.
        value: u8,
    },
    /// A name that must not be empty is empty.
    #[error("{what} is empty")]
    EmptyName {
        /// `tensor name` or `metadata key`.
        what: &'static str,
    },
    /// A reserved field or flag is not zero.
    #[error("reserved field `{field}` is {value:#x}, must be 0")]
    Reserved {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The table section is larger than the format allows.
    #[error("table section of {len} bytes exceeds the limit of {limit} bytes")]
    TableTooLarge {
        /// Declared length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// `data_offset` is not where the format puts it.
    #[error("data_offset is {found}, expected {expected} (table end rounded up to 64)")]
    BadDataOffset {
        /// Value in the header.
        found: u64,
        /// Value the table length implies.
        expected: u64,
    },
    /// Header sizes do not add up to the file's real length.
    #[error("header declares a file of {declared} bytes but the file has {actual}")]
    LengthMismatch {
        /// `data_offset + data_len` (saturating).
        declared: u64,
        /// Real length.
        actual: u64,
    },
    /// The stored CRC-32 does not match the bytes.
    #[error(
        "checksum mismatch: stored CRC-32 {stored:#010x}, computed {computed:#010x} (file is corrupt)"
    )]
    ChecksumMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// The table ends in the middle of a field.
    #[error("table section ends inside {what}")]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// The table section has bytes left after the last layer.
    #[error("{count} unused bytes after the layer table")]
    TrailingBytes {
        /// How many.
        count: u64,
    },
    /// A count exceeds its documented limit.
    #[error("{what} count {count} exceeds the limit of {limit}")]
    TooMany {
        /// What is counted.
        what: &'static str,
        /// The declared count.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// A string is longer than its documented limit.
    #[error("{what} of {len} bytes exceeds the limit of {limit}")]
    StringTooLong {
        /// Which string.
        what: &'static str,
        /// Its declared length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A string is not valid UTF-8.
    #[error("{what} is not valid UTF-8")]
    BadUtf8 {
        /// Which string.
        what: &'static str,
    },
    /// Unknown dtype code.
    #[error("tensor '{tensor}': unknown dtype code {code}")]
    UnknownDtype {
        /// Tensor name.
        tensor: String,
        /// The code.
        code: u8,
    },
    /// Rank outside 1..=MAX_RANK.
    #[error("tensor '{tensor}': rank {rank} is outside 1..={max}")]
    BadRank {
        /// Tensor name.
        tensor: String,
        /// Declared rank.
        rank: u8,
        /// Limit.
        max: u8,
    },
    /// A dimension is zero or larger than the width limit.
    #[error("tensor '{tensor}': dimension {dim} is {value}, must be in 1..={max}")]
    BadDimension {
        /// Tensor name.
        tensor: String,
        /// Which dimension.
        dim: usize,
        /// Its value.
        value: u64,
        /// Limit.
        max: u64,
    },
    /// `byte_len` does not equal the product of the shape times the dtype size.
    #[error("tensor '{tensor}': byte_len is {declared}, but its shape and dtype need {expected}")]
    TensorSizeMismatch {
        /// Tensor name.
        tensor: String,
        /// Bytes the shape needs (saturated at u64::MAX on overflow).
        expected: u64,
        /// Declared byte length.
        declared: u64,
    },
    /// The tensor's bytes are not inside the data section.
    #[error(
        "tensor '{tensor}': bytes {offset}..{offset}+{len} lie outside the {data_len}-byte data section"
    )]
    TensorOutOfBounds {
        /// Tensor name.
        tensor: String,
        /// Offset in the data section.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Length of the data section.
        data_len: u64,
    },
    /// The tensor's offset is not a multiple of 64.
    #[error("tensor '{tensor}': offset {offset} is not a multiple of 64")]
    TensorMisaligned {
        /// Tensor name.
        tensor: String,
        /// Offset in the data section.
        offset: u64,
    },
    /// Two tensors share bytes.
    #[error("tensors '{first}' and '{second}' overlap in the data section")]
    TensorOverlap {
        /// One tensor.
        first: String,
        /// The other.
        second: String,
    },
    /// Two tensors have the same name.
    #[error("tensor name '{tensor}' appears twice")]
    DuplicateTensor {
        /// The name.
        tensor: String,
    },
    /// Unknown layer kind code: a corrupt file, or one from a newer version of the format.
    #[error(
        "layer {index}: unknown layer kind code {code} (this reader knows format 1.0 to 1.{known}; the file says 1.{minor}: it may be from a newer version of bnfold, upgrade to read it)",
        known = crate::format::VERSION_MINOR
    )]
    UnknownLayerKind {
        /// Layer index.
        index: usize,
        /// The code.
        code: u8,
        /// The file's minor version.
        minor: u16,
    },
    /// A layer kind that the file's own minor version does not define (kind 4 in a file stamped 1.0).
    #[error(
        "layer {index}: layer kind {code} ({kind}) needs format version 1.{needs_minor}, but the file says 1.{minor}"
    )]
    KindNeedsNewerMinor {
        /// Layer index.
        index: usize,
        /// The code.
        code: u8,
        /// The kind's name.
        kind: &'static str,
        /// Minor version that introduced the kind.
        needs_minor: u16,
        /// The file's minor version.
        minor: u16,
    },
    /// Unknown activation code.
    #[error("layer {index}: unknown activation code {code}")]
    UnknownActivation {
        /// Layer index.
        index: usize,
        /// The code.
        code: u8,
    },
    /// A layer refers to a tensor index that does not exist.
    #[error(
        "layer {index}: {field} refers to tensor {tensor_index}, but there are {count} tensors"
    )]
    BadTensorIndex {
        /// Layer index.
        index: usize,
        /// Which field.
        field: &'static str,
        /// The index.
        tensor_index: u32,
        /// Number of tensors.
        count: usize,
    },
    /// A tensor is referred to by more than one layer field (each tensor serves exactly one role).
    #[error(
        "layer {index}: {field} refers to tensor '{tensor}', which layer {first_layer} already uses (a tensor may serve only one role)"
    )]
    TensorReused {
        /// Layer index of the second use.
        index: usize,
        /// The field of the second use.
        field: &'static str,
        /// Tensor name.
        tensor: String,
        /// Layer that used it first.
        first_layer: usize,
    },
    /// A tensor's dtype is unsupported on this host (e.g. zero-copy views on big-endian).
    #[error("tensor '{tensor}': {reason}")]
    View {
        /// Tensor name.
        tensor: String,
        /// Why the view could not be made.
        reason: &'static str,
    },
}

/// What is wrong with one layer of an otherwise well-formed file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// The layer's input width does not match the width flowing into it.
    #[error("expects {expected} input features, but {found} flow into it")]
    WidthMismatch {
        /// Width the layer declares.
        expected: usize,
        /// Width produced by the layers before it.
        found: usize,
    },
    /// A width is zero or above the limit.
    #[error("{what} is {value}, must be in 1..={max}")]
    BadWidth {
        /// Which width.
        what: &'static str,
        /// Its value.
        value: u64,
        /// Limit.
        max: u64,
    },
    /// A tensor has the wrong shape for its role.
    #[error("{role} tensor '{tensor}' has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// Role ("weight", "bias", "gamma", ...).
        role: &'static str,
        /// Tensor name.
        tensor: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A parameter value is NaN or infinite.
    #[error("{role} tensor '{tensor}' has non-finite value {value} at index {position}")]
    NonFinite {
        /// Role.
        role: &'static str,
        /// Tensor name.
        tensor: String,
        /// Flat element index (the feature index for BN vectors).
        position: usize,
        /// The value.
        value: f64,
    },
    /// A moving variance is negative.
    #[error("moving_variance of feature {feature} is negative ({value})")]
    NegativeVariance {
        /// Feature index.
        feature: usize,
        /// The value.
        value: f64,
    },
    /// `var + eps <= 0`, so the normaliser would divide by zero or take a square root of a negative.
    #[error("feature {feature}: moving_variance + eps = {sum} is not positive")]
    NonPositiveDenominator {
        /// Feature index.
        feature: usize,
        /// `var + eps`.
        sum: f64,
    },
    /// eps is NaN, infinite or negative.
    #[error("eps is {0}, must be finite and >= 0")]
    BadEps(f64),
    /// Leaky ReLU slope is not finite, or a parameter is set on an activation that takes none.
    #[error("activation parameter {0} is not valid here")]
    BadActivationParam(f32),
    /// Softmax must be the final layer.
    #[error("softmax is only allowed as the last layer")]
    SoftmaxNotLast,
    /// A folded weight is beyond the range of the weight type the plan was asked for (f16:
    /// 65504).
    #[error(
        "folded weight of output feature {feature} is outside the range of {dtype}; compile with f32 or bf16 weights"
    )]
    WeightOutOfRange {
        /// Output feature.
        feature: usize,
        /// The weight type asked for.
        dtype: &'static str,
    },
    /// Folding produced a non-finite value (overflow of f32 after folding).
    #[error("folding overflows f32 at output feature {feature}")]
    FoldOverflow {
        /// Output feature.
        feature: usize,
    },
}

/// What is wrong with input given to a plan.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The slice length is not `batch * features`.
    #[error("got {len} values, expected batch {batch} x {features} features = {expected}")]
    Length {
        /// Slice length.
        len: usize,
        /// Batch size given.
        batch: usize,
        /// Features the network takes.
        features: usize,
        /// `batch * features`.
        expected: usize,
    },
    /// The row width does not match the network's input.
    #[error("rows have {found} features, the network takes {expected}")]
    Features {
        /// Network input width.
        expected: usize,
        /// Width given.
        found: usize,
    },
    /// Batch of zero rows.
    #[error("batch size must be at least 1")]
    EmptyBatch,
    /// The output slice has the wrong length.
    #[error("output buffer has {len} values, expected {expected}")]
    OutputLength {
        /// Slice length.
        len: usize,
        /// Needed length.
        expected: usize,
    },
    /// The buffers for this batch cannot be allocated (or their size overflows).
    #[error("{what} for batch {batch} needs {bytes} bytes, which cannot be allocated")]
    OutOfMemory {
        /// What was being allocated.
        what: &'static str,
        /// The batch asked for.
        batch: usize,
        /// The bytes needed (`usize::MAX` when the size overflows).
        bytes: usize,
    },
    /// A verification tolerance that is not a positive number.
    #[error("tolerance must be a positive number, got {0}")]
    Tolerance(f64),
}

impl Error {
    pub(crate) fn format(offset: u64, kind: FormatError) -> Self {
        Error::Format { offset, kind }
    }

    /// The format error kind, if this is a format error (handy in tests and tools).
    pub fn format_kind(&self) -> Option<&FormatError> {
        match self {
            Error::Format { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// The layer error kind, if this is a layer error.
    pub fn layer_kind(&self) -> Option<&LayerError> {
        match self {
            Error::Layer { kind, .. } => Some(&**kind),
            _ => None,
        }
    }
}
