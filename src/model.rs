//! The network as data: a verified weight file, its layers and zero-copy views of its tensors.

use std::path::Path;

use half::{bf16, f16};

use crate::error::{Error, FormatError, LayerError, Result};
use crate::format::{self, Activation, DType, LayerKind, LayerRecord, Parsed, TensorInfo, limits};
use crate::plan::{Options, Plan};

/// How [`Model::load_with`] gets the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadMode {
    /// Memory-map the file (the default). Zero-copy, but see the caveat on [`Model::load`].
    #[default]
    Mmap,
    /// Read the whole file into memory, so later changes to the file cannot affect the model.
    Read,
}

/// Owned file bytes are kept in `u64` words, so that every tensor (at a 64-byte file offset) is
/// aligned for its dtype (at most 4 bytes) and the zero-copy views never fail on alignment.
enum Storage {
    Mmap(memmap2::Mmap),
    Owned { words: Vec<u64>, len: usize },
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned { words, len } => &bytemuck::cast_slice::<u64, u8>(words)[..*len],
        }
    }

    /// Drop this process's resident pages of the mapped file over `range` (byte offsets into the
    /// file, inside it), once the loader is done with those bytes for now: invisible to every
    /// reader (the pages of a shared file mapping come back from the page cache on the next
    /// access, with the same contents), it only lowers the resident set. A no-op for owned bytes
    /// and on non-Unix hosts; a refusal by the OS leaves the pages resident.
    fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        if let Storage::Mmap(m) = self {
            // SAFETY: S-5 in docs/SAFETY.md. The range is inside the mapping (callers pass ranges
            // of the file the reader proved in bounds; memmap2 also refuses an offset or length
            // past the mapping, and rounds the start down to its page), and for this read-only
            // MAP_SHARED file mapping MADV_DONTNEED only drops page-table entries: any later
            // read, including one racing with this call on another thread, faults the same
            // page-cache pages back in, so no borrowed byte changes (under S-1's invariant: the
            // file is not modified while the model is alive).
            let advised = unsafe {
                m.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    range.start,
                    range.len(),
                )
            };
            // Only a hint: if the OS refuses, the pages simply stay resident.
            let _ = advised;
        }
        #[cfg(not(unix))]
        let _ = range;
    }

    fn copy_of(bytes: &[u8]) -> Storage {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Storage::Owned {
            words,
            len: bytes.len(),
        }
    }
}

/// A loaded, verified and validated network.
///
/// Loading checks the whole file (checksum, structure, every offset and size), that the layer widths
/// chain, that every tensor has the shape its role needs, and that every parameter is finite and
/// every BN's `moving_variance + eps` is positive. A `Model` that exists is a network that can be
/// compiled.
pub struct Model {
    storage: Storage,
    parsed: Parsed,
    output_features: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("input_features", &self.parsed.input_features)
            .field("output_features", &self.output_features)
            .field("layers", &self.parsed.layers.len())
            .field("tensors", &self.parsed.tensors.len())
            .finish()
    }
}

/// A typed, zero-copy view of one tensor's elements.
#[derive(Debug, Clone, Copy)]
pub enum TensorData<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// bf16 elements.
    BF16(&'a [bf16]),
}

impl TensorData<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::BF16(v) => v.len(),
        }
    }

    /// True if there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` widened to f64 (exact for every dtype). Panics if `i` is out of range.
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            TensorData::F32(v) => v[i] as f64,
            TensorData::F16(v) => v[i].to_f64(),
            TensorData::BF16(v) => v[i].to_f64(),
        }
    }

    /// The index of the first NaN or infinite element, if any. Checks the bits of each dtype
    /// directly (an all-ones exponent), so a whole tensor is one vectorisable pass.
    pub fn first_non_finite(&self) -> Option<usize> {
        match self {
            TensorData::F32(v) => v.iter().position(|x| !x.is_finite()),
            TensorData::F16(v) => v.iter().position(|x| x.to_bits() & 0x7c00 == 0x7c00),
            TensorData::BF16(v) => v.iter().position(|x| x.to_bits() & 0x7f80 == 0x7f80),
        }
    }

    /// Elements `r` (panics if the range is outside the tensor).
    fn slice(&self, r: std::ops::Range<usize>) -> TensorData<'_> {
        match self {
            TensorData::F32(v) => TensorData::F32(&v[r]),
            TensorData::F16(v) => TensorData::F16(&v[r]),
            TensorData::BF16(v) => TensorData::BF16(&v[r]),
        }
    }

    /// Elements `start .. start + out.len()` widened to f64 into `out` (exact for every dtype).
    /// Panics if the range is outside the tensor.
    pub fn read_f64(&self, start: usize, out: &mut [f64]) {
        let r = start..start + out.len();
        match self {
            TensorData::F32(v) => out
                .iter_mut()
                .zip(&v[r])
                .for_each(|(o, x)| *o = f64::from(*x)),
            TensorData::F16(v) => out.iter_mut().zip(&v[r]).for_each(|(o, x)| *o = x.to_f64()),
            TensorData::BF16(v) => out.iter_mut().zip(&v[r]).for_each(|(o, x)| *o = x.to_f64()),
        }
    }

    /// Elements `start .. start + out.len()` widened to f32 into `out` (exact for every dtype).
    /// Panics if the range is outside the tensor.
    pub fn read_f32(&self, start: usize, out: &mut [f32]) {
        let r = start..start + out.len();
        match self {
            TensorData::F32(v) => out.copy_from_slice(&v[r]),
            TensorData::F16(v) => out.iter_mut().zip(&v[r]).for_each(|(o, x)| *o = x.to_f32()),
            TensorData::BF16(v) => out.iter_mut().zip(&v[r]).for_each(|(o, x)| *o = x.to_f32()),
        }
    }

    /// All elements widened to f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        (0..self.len()).map(|i| self.get_f64(i)).collect()
    }

    /// All elements widened to f32 (exact for every dtype).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            TensorData::F32(v) => v.to_vec(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }
}

/// A dense layer with its tensors resolved to views.
#[derive(Debug, Clone, Copy)]
pub struct DenseView<'a> {
    /// Input features.
    pub inputs: usize,
    /// Output features.
    pub outputs: usize,
    /// Weights, `[outputs, inputs]` row-major.
    pub weight: TensorData<'a>,
    /// Bias, `[outputs]`, if the layer has one.
    pub bias: Option<TensorData<'a>>,
}

impl DenseView<'_> {
    /// Bias of output `o` in f64 (0 when the layer has no bias).
    pub fn bias_f64(&self, o: usize) -> f64 {
        self.bias.map_or(0.0, |b| b.get_f64(o))
    }
}

/// A batch-normalisation layer with its tensors resolved to views.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormView<'a> {
    /// Features normalised.
    pub features: usize,
    /// Epsilon, as stored.
    pub eps: f64,
    /// Scale, if present.
    pub gamma: Option<TensorData<'a>>,
    /// Shift, if present.
    pub beta: Option<TensorData<'a>>,
    /// EMA of the batch means.
    pub moving_mean: TensorData<'a>,
    /// EMA of the batch variances.
    pub moving_variance: TensorData<'a>,
}

impl BatchNormView<'_> {
    /// gamma of feature `j` in f64 (1 when absent).
    pub fn gamma_f64(&self, j: usize) -> f64 {
        self.gamma.map_or(1.0, |g| g.get_f64(j))
    }

    /// beta of feature `j` in f64 (0 when absent).
    pub fn beta_f64(&self, j: usize) -> f64 {
        self.beta.map_or(0.0, |b| b.get_f64(j))
    }
}

/// An affine layer (format 1.1) with its tensors resolved.
#[derive(Debug, Clone, Copy)]
pub struct AffineView<'a> {
    /// Features transformed.
    pub features: usize,
    /// Per-feature scale, if present.
    pub scale: Option<TensorData<'a>>,
    /// Per-feature shift, if present.
    pub shift: Option<TensorData<'a>>,
}

impl AffineView<'_> {
    /// scale of feature `j` in f64 (1 when absent).
    pub fn scale_f64(&self, j: usize) -> f64 {
        self.scale.map_or(1.0, |s| s.get_f64(j))
    }

    /// shift of feature `j` in f64 (0 when absent).
    pub fn shift_f64(&self, j: usize) -> f64 {
        self.shift.map_or(0.0, |t| t.get_f64(j))
    }
}

/// A layer with its tensors resolved, as returned by [`Model::layer_view`].
#[derive(Debug, Clone, Copy)]
pub enum LayerView<'a> {
    /// A dense layer.
    Dense(DenseView<'a>),
    /// A batch-normalisation layer.
    BatchNorm(BatchNormView<'a>),
    /// An activation.
    Activation(Activation),
    /// A per-feature affine map.
    Affine(AffineView<'a>),
}

impl Model {
    /// Memory-map `path`, verify and validate it.
    ///
    /// **Mapping caveat:** the model reads its tensors from the mapping. If another process truncates
    /// the file while the model is alive, touching the lost pages raises SIGBUS on Linux (a crash no
    /// Rust code can catch). Compile the model and drop it (a compiled plan owns its weights and no
    /// longer needs the mapping), or use [`LoadMode::Read`] when files can change under you.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Self::load_with(path, LoadMode::Mmap)
    }

    /// Load `path` by mapping it or by reading it into memory.
    pub fn load_with(path: impl AsRef<Path>, mode: LoadMode) -> Result<Model> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // A weight file is a regular file: reading a device or a FIFO (`/dev/zero`) would never
        // end, and mapping one is meaningless.
        if !file.metadata().map_err(io)?.is_file() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let storage = match mode {
            LoadMode::Mmap => {
                // SAFETY: memmap2 requires that the file is not modified while mapped; we cannot
                // enforce that for files we do not own, which is the documented caveat above
                // (truncation gives SIGBUS, never a read of foreign memory). The mapping is
                // read-only and lives exactly as long as the Model.
                let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
                Storage::Mmap(map)
            }
            LoadMode::Read => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io)?;
                Storage::copy_of(&bytes)
            }
        };
        Self::from_storage(storage, true)
    }

    /// Verify and validate a weight file held in memory (the bytes are copied into an aligned buffer).
    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        Self::from_storage(Storage::copy_of(bytes), true)
    }

    /// Like [`Model::from_bytes`] but without computing the checksum. For fuzzing and for tools that
    /// have verified the bytes another way; every structural and numerical check still runs.
    pub fn from_bytes_unchecked_crc(bytes: &[u8]) -> Result<Model> {
        Self::from_storage(Storage::copy_of(bytes), false)
    }

    fn from_storage(storage: Storage, verify_checksum: bool) -> Result<Model> {
        // The checksum pass reads the whole file; a mapped file's pages are let go chunk by chunk
        // as they are hashed, so that loading a large network never holds the whole file
        // resident (validation and compiling fault each tensor's pages back in when they read
        // it, and let them go again).
        let parsed = format::parse_with(storage.bytes(), verify_checksum, &mut |r| {
            storage.release(r)
        })?;
        let mut model = Model {
            storage,
            parsed,
            output_features: 0,
        };
        model.output_features = model.validate()?;
        Ok(model)
    }

    /// Width of the input rows.
    pub fn input_features(&self) -> usize {
        self.parsed.input_features
    }

    /// Width of the output rows.
    pub fn output_features(&self) -> usize {
        self.output_features
    }

    /// The widest row any layer produces, or the input: the row width a plan's buffers hold
    /// (`Plan::max_width` of any plan compiled from this model), known without compiling.
    pub fn max_width(&self) -> usize {
        self.parsed
            .layers
            .iter()
            .filter_map(|l| match l.kind {
                LayerKind::Dense { outputs, .. } => Some(outputs),
                _ => None,
            })
            .chain([self.parsed.input_features])
            .max()
            .unwrap_or(1)
    }

    /// The layers, in execution order.
    pub fn layers(&self) -> &[LayerRecord] {
        &self.parsed.layers
    }

    /// The tensor table.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.parsed.tensors
    }

    /// Metadata entries, in file order.
    pub fn metadata(&self) -> &[(String, String)] {
        &self.parsed.metadata
    }

    /// The first metadata value stored under `key`.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.parsed
            .metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The fixed header (version, sizes, stored checksum).
    pub fn header(&self) -> &format::Header {
        &self.parsed.header
    }

    /// Zero-copy view of tensor `index` (an index into [`Model::tensors`]; panics if out of range,
    /// like slice indexing).
    ///
    /// Errors only where the bytes cannot be viewed in place (a big-endian host); the reader has
    /// already proved the range in bounds and 64-byte aligned relative to a 64-byte aligned buffer.
    pub fn tensor_data(&self, index: usize) -> Result<TensorData<'_>> {
        let info = &self.parsed.tensors[index];
        let view_err = |reason| {
            Error::format(
                info.file_offset as u64,
                FormatError::View {
                    tensor: info.name.clone(),
                    reason,
                },
            )
        };
        if cfg!(target_endian = "big") {
            return Err(view_err(
                "zero-copy views need a little-endian host; use a little-endian machine",
            ));
        }
        let bytes = &self.storage.bytes()[info.file_offset..info.file_offset + info.byte_len];
        let misaligned = |_| view_err("tensor bytes are not aligned for their dtype");
        Ok(match info.dtype {
            DType::F32 => TensorData::F32(bytemuck::try_cast_slice(bytes).map_err(misaligned)?),
            DType::F16 => TensorData::F16(bytemuck::try_cast_slice(bytes).map_err(misaligned)?),
            DType::BF16 => TensorData::BF16(bytemuck::try_cast_slice(bytes).map_err(misaligned)?),
        })
    }

    /// Compile the model into an execution plan: fold BN (or not, by `options.mode`) and pack the
    /// weights for the kernels. See [`Plan::compile`].
    ///
    /// The plan owns its weights; the model (and its file mapping) can be dropped afterwards.
    pub fn compile(&self, options: &Options) -> Result<Plan> {
        Plan::compile(self, options)
    }

    /// Layer `index` with its tensors resolved (panics if `index >= layers().len()`).
    pub fn layer_view(&self, index: usize) -> Result<LayerView<'_>> {
        let opt = |t: Option<usize>| t.map(|t| self.tensor_data(t)).transpose();
        Ok(match self.parsed.layers[index].kind {
            LayerKind::Dense {
                inputs,
                outputs,
                weight,
                bias,
            } => LayerView::Dense(DenseView {
                inputs,
                outputs,
                weight: self.tensor_data(weight)?,
                bias: opt(bias)?,
            }),
            LayerKind::BatchNorm {
                features,
                eps,
                gamma,
                beta,
                moving_mean,
                moving_variance,
            } => LayerView::BatchNorm(BatchNormView {
                features,
                eps,
                gamma: opt(gamma)?,
                beta: opt(beta)?,
                moving_mean: self.tensor_data(moving_mean)?,
                moving_variance: self.tensor_data(moving_variance)?,
            }),
            LayerKind::Activation(a) => LayerView::Activation(a),
            LayerKind::Affine {
                features,
                scale,
                shift,
            } => LayerView::Affine(AffineView {
                features,
                scale: opt(scale)?,
                shift: opt(shift)?,
            }),
        })
    }

    /// Drop this process's resident pages of the mapped file that hold layer `index`'s tensors,
    /// once the plan has its own (folded, packed) copy of them: loading a large network then peaks
    /// near the size of the plan, not the plan plus the file. Invisible to every reader of the
    /// model: the pages of a shared file mapping come back from the page cache on the next access,
    /// with the same contents. A no-op for models read into memory, and on non-Unix hosts.
    pub(crate) fn release_layer_pages(&self, index: usize) {
        for r in self.parsed.layers[index].kind.tensor_refs() {
            let t = &self.parsed.tensors[r.tensor];
            // Inside the file: the reader proved every tensor so.
            self.storage
                .release(t.file_offset..t.file_offset + t.byte_len);
        }
    }

    /// Drop this process's resident pages of the mapped file that hold rows `rows` of dense layer
    /// `index`'s weights, once the lowering has read them (as [`Model::release_layer_pages`], for
    /// part of one tensor: the lowering streams a layer's rows into the plan and lets them go a
    /// chunk at a time). A no-op for other layers, for models read into memory, and on non-Unix
    /// hosts.
    pub(crate) fn release_dense_rows(&self, index: usize, rows: std::ops::Range<usize>) {
        if let LayerKind::Dense { inputs, weight, .. } = self.parsed.layers[index].kind {
            let t = &self.parsed.tensors[weight];
            // Validation checked the shape, `[outputs, inputs]`; capped at the tensor anyway.
            let row = inputs * t.dtype.size();
            let start = rows.start.saturating_mul(row).min(t.byte_len);
            let end = rows.end.saturating_mul(row).min(t.byte_len);
            if start < end {
                // Inside the file: a sub-range of a tensor the reader proved in bounds.
                self.storage
                    .release(t.file_offset + start..t.file_offset + end);
            }
        }
    }

    /// An error about layer `index`, carrying its name and kind.
    pub(crate) fn layer_err(&self, index: usize, kind: LayerError) -> Error {
        let l = &self.parsed.layers[index];
        Error::Layer {
            index,
            name: l.name.clone(),
            kind_name: l.kind.kind_name(),
            kind: Box::new(kind),
        }
    }

    /// Check the tensor's shape for its role and that all its values are finite; returns its data.
    fn checked_tensor(
        &self,
        layer: usize,
        role: &'static str,
        index: usize,
        shape: &[usize],
    ) -> Result<TensorData<'_>> {
        let info = &self.parsed.tensors[index];
        if info.shape != shape {
            return Err(self.layer_err(
                layer,
                LayerError::TensorShape {
                    role,
                    tensor: info.name.clone(),
                    expected: shape.to_vec(),
                    found: info.shape.clone(),
                },
            ));
        }
        let data = self.tensor_data(index)?;
        // Scanned a chunk at a time, each chunk's mapped pages let go once scanned (see
        // `from_storage`): validation holds at most a chunk of a large tensor resident.
        let chunk = (format::CHECKSUM_CHUNK / info.dtype.size()).max(1);
        let found = (0..data.len()).step_by(chunk).find_map(|start| {
            let end = (start + chunk).min(data.len());
            let found = data.slice(start..end).first_non_finite();
            let bytes = info.dtype.size();
            self.storage
                .release(info.file_offset + start * bytes..info.file_offset + end * bytes);
            found.map(|p| start + p)
        });
        if let Some(position) = found {
            return Err(self.layer_err(
                layer,
                LayerError::NonFinite {
                    role,
                    tensor: info.name.clone(),
                    position,
                    value: data.get_f64(position),
                },
            ));
        }
        Ok(data)
    }

    /// Validate the network; returns the output width.
    fn validate(&self) -> Result<usize> {
        let mut width = self.parsed.input_features;
        let n = self.parsed.layers.len();
        let check_width = |index: usize, what: &'static str, value: usize| {
            if value == 0 || value as u64 > limits::MAX_WIDTH {
                Err(self.layer_err(
                    index,
                    LayerError::BadWidth {
                        what,
                        value: value as u64,
                        max: limits::MAX_WIDTH,
                    },
                ))
            } else {
                Ok(())
            }
        };
        for (index, layer) in self.parsed.layers.iter().enumerate() {
            // Every tensor of the layer: the shape its role needs, and finite values (checked
            // after the layer's own widths, so that a width error is reported as such).
            let check_tensors = || -> Result<()> {
                for r in layer.kind.tensor_refs() {
                    self.checked_tensor(index, r.role, r.tensor, r.shape())?;
                }
                Ok(())
            };
            // The layer's width must be the width flowing into it.
            let check_chain = |index: usize, expected: usize, found: usize| {
                if expected == found {
                    Ok(())
                } else {
                    Err(self.layer_err(index, LayerError::WidthMismatch { expected, found }))
                }
            };
            match layer.kind {
                LayerKind::Dense {
                    inputs, outputs, ..
                } => {
                    check_width(index, "inputs", inputs)?;
                    check_width(index, "outputs", outputs)?;
                    check_chain(index, inputs, width)?;
                    check_tensors()?;
                    width = outputs;
                }
                LayerKind::BatchNorm {
                    features,
                    eps,
                    moving_variance,
                    ..
                } => {
                    check_width(index, "features", features)?;
                    check_chain(index, features, width)?;
                    if !eps.is_finite() || eps < 0.0 {
                        return Err(self.layer_err(index, LayerError::BadEps(eps)));
                    }
                    check_tensors()?;
                    let var = self.tensor_data(moving_variance)?;
                    for feature in 0..features {
                        let v = var.get_f64(feature);
                        if v < 0.0 {
                            return Err(self.layer_err(
                                index,
                                LayerError::NegativeVariance { feature, value: v },
                            ));
                        }
                        // Checked in f32 as well as f64: the unfolded path adds eps in f32, where
                        // a denormal variance plus a tiny eps can still round to zero.
                        let sum = v + eps;
                        if sum <= 0.0 || (v as f32 + eps as f32) <= 0.0 {
                            return Err(self.layer_err(
                                index,
                                LayerError::NonPositiveDenominator { feature, sum },
                            ));
                        }
                    }
                }
                LayerKind::Affine { features, .. } => {
                    check_width(index, "features", features)?;
                    check_chain(index, features, width)?;
                    check_tensors()?;
                }
                LayerKind::Activation(a) => {
                    if let Activation::LeakyRelu { alpha } = a
                        && !alpha.is_finite()
                    {
                        return Err(self.layer_err(index, LayerError::BadActivationParam(alpha)));
                    }
                    if a == Activation::Softmax && index + 1 != n {
                        return Err(self.layer_err(index, LayerError::SoftmaxNotLast));
                    }
                }
            }
        }
        Ok(width)
    }
}
