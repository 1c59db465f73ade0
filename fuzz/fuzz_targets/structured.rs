//! Structure-aware: build a valid-looking network with bnfold's writer, check the untouched file,
//! then mutate header and table fields, optionally re-seal the checksum, and load again. This gets
//! the fuzzer past the magic and CRC checks straight into the table parser and validation.
#![no_main]

use arbitrary::Arbitrary;
use bnfold::format::{
    self, Activation, AffineTensors, BatchNormTensors, DType, HEADER_LEN, TensorId, Writer,
};
use bnfold::{Error, FormatError, Model};
use libfuzzer_sys::fuzz_target;

/// Most layers a generated network gets (more only slows each execution down).
const MAX_LAYERS: usize = 12;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Dt {
    F32,
    F16,
    BF16,
}

impl Dt {
    fn dtype(self) -> DType {
        match self {
            Dt::F32 => DType::F32,
            Dt::F16 => DType::F16,
            Dt::BF16 => DType::BF16,
        }
    }
}

/// How a tensor is filled.
#[derive(Arbitrary, Debug)]
enum Values {
    /// Moderate values in [-1, 1] (plus `offset` for variances, keeping them positive).
    Normal,
    Zeros,
    /// Near the top of f16/f32 range.
    Huge,
    /// Denormals.
    Tiny,
    /// Given values, cycled (may be NaN, infinite, negative).
    Raw(Vec<f32>),
}

impl Values {
    fn fill(&self, n: usize, offset: f32) -> Vec<f32> {
        (0..n)
            .map(|i| match self {
                Values::Normal => ((i * 7919 % 101) as f32 / 50.0 - 1.0) + offset,
                Values::Zeros => 0.0,
                Values::Huge => {
                    6.0e4 * if i % 2 == 0 { 1.0 } else { -1.0 } + 3.0e38 * (i % 3 == 2) as u8 as f32
                }
                Values::Tiny => f32::from_bits(1 + i as u32),
                Values::Raw(v) if v.is_empty() => offset,
                Values::Raw(v) => v[i % v.len()],
            })
            .collect()
    }
}

#[derive(Arbitrary, Debug)]
enum Eps {
    Keras,
    Torch,
    Zero,
    Bits(u64),
}

impl Eps {
    fn value(&self) -> f64 {
        match self {
            Eps::Keras => 1e-3,
            Eps::Torch => 1e-5,
            Eps::Zero => 0.0,
            Eps::Bits(b) => f64::from_bits(*b),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Spec {
    Dense {
        outputs: u8,
        dtype: Dt,
        bias: bool,
        values: Values,
        /// Nonzero (mod 8) declares a wrong input width.
        width_skew: i8,
    },
    BatchNorm {
        dtype: Dt,
        eps: Eps,
        gamma: bool,
        beta: bool,
        mean: Values,
        var: Values,
        width_skew: i8,
    },
    Act {
        code: u8,
        alpha: f32,
    },
    /// An affine layer (format 1.1), scale and shift each optional.
    Affine {
        dtype: Dt,
        scale: Option<Values>,
        shift: Option<Values>,
        width_skew: i8,
    },
    /// A dense layer whose weight is a tensor added earlier (weights shared between layers).
    Reuse {
        tensor: u8,
        outputs: u8,
    },
}

/// Values that are likely to hit an edge of some check.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Interesting {
    Zero,
    One,
    U32Max,
    U64Max,
    Width,
    WidthPlusOne,
    Align,
    Small(u8),
    Any(u64),
}

impl Interesting {
    fn value(self) -> u64 {
        match self {
            Interesting::Zero => 0,
            Interesting::One => 1,
            Interesting::U32Max => u32::MAX as u64,
            Interesting::U64Max => u64::MAX,
            Interesting::Width => format::limits::MAX_WIDTH,
            Interesting::WidthPlusOne => format::limits::MAX_WIDTH + 1,
            Interesting::Align => format::ALIGN as u64,
            Interesting::Small(v) => v as u64,
            Interesting::Any(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum HeaderField {
    Version,
    Flags,
    TableLen,
    DataOffset,
    DataLen,
    Checksum,
    Reserved(u8),
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    Header {
        field: HeaderField,
        value: Interesting,
    },
    TableU32 {
        at: u16,
        value: Interesting,
    },
    TableU64 {
        at: u16,
        value: Interesting,
    },
    TableByte {
        at: u16,
        value: u8,
    },
    DataByte {
        at: u16,
        value: u8,
    },
    Truncate {
        keep: u16,
    },
    Extend {
        by: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    input_features: u8,
    metadata: Vec<(String, String)>,
    layers: Vec<Spec>,
    mutations: Vec<Mutation>,
    reseal_checksum: bool,
}

fn put(bytes: &mut [u8], at: usize, src: &[u8]) {
    if let Some(dst) = bytes.get_mut(at..at + src.len()) {
        dst.copy_from_slice(src);
    }
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    let table_len = bytes.len().saturating_sub(HEADER_LEN).max(1);
    match *m {
        Mutation::Header { field, value } => {
            let v = value.value();
            match field {
                HeaderField::Version => put(bytes, 8, &(v as u16).to_le_bytes()),
                HeaderField::Flags => put(bytes, 12, &(v as u32).to_le_bytes()),
                HeaderField::TableLen => put(bytes, 16, &v.to_le_bytes()),
                HeaderField::DataOffset => put(bytes, 24, &v.to_le_bytes()),
                HeaderField::DataLen => put(bytes, 32, &v.to_le_bytes()),
                HeaderField::Checksum => put(bytes, 40, &(v as u32).to_le_bytes()),
                HeaderField::Reserved(i) => {
                    put(bytes, 44 + 4 * (i as usize % 5), &(v as u32).to_le_bytes())
                }
            }
        }
        Mutation::TableU32 { at, value } => put(
            bytes,
            HEADER_LEN + at as usize % table_len,
            &(value.value() as u32).to_le_bytes(),
        ),
        Mutation::TableU64 { at, value } => put(
            bytes,
            HEADER_LEN + at as usize % table_len,
            &value.value().to_le_bytes(),
        ),
        Mutation::TableByte { at, value } => {
            put(bytes, HEADER_LEN + at as usize % table_len, &[value])
        }
        Mutation::DataByte { at, value } => {
            let n = bytes.len();
            if n > 0 {
                bytes[n - 1 - at as usize % n] = value;
            }
        }
        Mutation::Truncate { keep } => bytes.truncate(keep as usize),
        Mutation::Extend { by } => bytes.resize(bytes.len() + by as usize, 0),
    }
}

/// Write the network the input describes; `None` when the writer refuses it (that is fine).
fn build(input: &Input) -> Option<Vec<u8>> {
    let n_in = 1 + input.input_features as usize % 16;
    let mut w = Writer::new(n_in);
    for (k, v) in input.metadata.iter().take(4) {
        w.metadata(k.clone(), v.clone());
    }
    let mut width = n_in;
    let mut added: Vec<TensorId> = Vec::new();
    let skewed = |width: usize, skew: i8| {
        if skew % 8 == 0 {
            width
        } else {
            (width as i64 + skew as i64).clamp(1, 64) as usize
        }
    };
    for (i, spec) in input.layers.iter().take(MAX_LAYERS).enumerate() {
        let name = format!("l{i}");
        match spec {
            Spec::Dense {
                outputs,
                dtype,
                bias,
                values,
                width_skew,
            } => {
                let out = 1 + *outputs as usize % 16;
                let inp = skewed(width, *width_skew);
                let dt = dtype.dtype();
                let wt = w
                    .tensor(
                        &format!("{name}.weight"),
                        dt,
                        &[out, inp],
                        &values.fill(out * inp, 0.0),
                    )
                    .ok()?;
                added.push(wt);
                let b = if *bias {
                    let b = w
                        .tensor(&format!("{name}.bias"), dt, &[out], &values.fill(out, 0.1))
                        .ok()?;
                    added.push(b);
                    Some(b)
                } else {
                    None
                };
                w.dense(&name, inp, out, wt, b).ok()?;
                width = out;
            }
            Spec::BatchNorm {
                dtype,
                eps,
                gamma,
                beta,
                mean,
                var,
                width_skew,
            } => {
                let n = skewed(width, *width_skew);
                let dt = dtype.dtype();
                let mut t = |suffix: &str, v: Vec<f32>| -> Option<TensorId> {
                    let id = w.tensor(&format!("{name}.{suffix}"), dt, &[n], &v).ok()?;
                    added.push(id);
                    Some(id)
                };
                let g = if *gamma {
                    Some(t("gamma", Values::Normal.fill(n, 1.0))?)
                } else {
                    None
                };
                let b = if *beta {
                    Some(t("beta", Values::Normal.fill(n, 0.0))?)
                } else {
                    None
                };
                let m = t("moving_mean", mean.fill(n, 0.0))?;
                let v = t("moving_variance", var.fill(n, 1.5))?;
                let tensors = BatchNormTensors {
                    gamma: g,
                    beta: b,
                    moving_mean: m,
                    moving_variance: v,
                };
                w.batch_norm(&name, n, eps.value(), tensors).ok()?;
            }
            Spec::Affine {
                dtype,
                scale,
                shift,
                width_skew,
            } => {
                let n = skewed(width, *width_skew);
                let dt = dtype.dtype();
                let mut t = |suffix: &str, v: Option<&Values>| -> Option<Option<TensorId>> {
                    let Some(v) = v else { return Some(None) };
                    let id = w
                        .tensor(&format!("{name}.{suffix}"), dt, &[n], &v.fill(n, 0.0))
                        .ok()?;
                    added.push(id);
                    Some(Some(id))
                };
                let scale = t("scale", scale.as_ref())?;
                let shift = t("shift", shift.as_ref())?;
                w.affine(&name, n, AffineTensors { scale, shift }).ok()?;
            }
            Spec::Act { code, alpha } => {
                let a = Activation::from_code(code % Activation::ALL.len() as u8, *alpha)?;
                w.activation(&name, a).ok()?;
            }
            Spec::Reuse { tensor, outputs } => {
                // Nothing to reuse yet: skip this layer rather than the whole input.
                let Some(&id) = added.get(*tensor as usize % added.len().max(1)) else {
                    continue;
                };
                let out = 1 + *outputs as usize % 16;
                w.dense(&name, width, out, id, None).ok()?;
                width = out;
            }
        }
    }
    w.to_bytes().ok()
}

fuzz_target!(|input: Input| {
    let Some(mut bytes) = build(&input) else {
        return;
    };

    // What the writer writes is a well-formed file: it may describe an invalid network (a layer
    // error), and the writer lets a tensor be used twice (the reader refuses that), but nothing else.
    let reused = |e: &Error| matches!(e.format_kind(), Some(FormatError::TensorReused { .. }));
    match format::parse(&bytes, true) {
        Err(e) if !reused(&e) => panic!("writer output does not parse: {e}"),
        _ => {}
    }
    match Model::from_bytes(&bytes) {
        Ok(model) => bnfold_fuzz::exercise(&model),
        Err(Error::Layer { .. }) => {}
        Err(e) if reused(&e) => {}
        Err(e) => panic!("writer output fails with an unexpected error: {e}"),
    }

    if input.mutations.is_empty() {
        return;
    }
    for m in input.mutations.iter().take(8) {
        mutate(&mut bytes, m);
    }
    if input.reseal_checksum {
        format::fix_checksum(&mut bytes);
    }
    if let Some(model) = bnfold_fuzz::load_both(&bytes) {
        bnfold_fuzz::exercise(&model);
    }
});
