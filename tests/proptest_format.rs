//! Property tests of the weight-file format: what the writer writes loads back identically, and no
//! single corrupted byte makes the loader panic or accept a file whose checksum it verified.

use bnfold::format::{
    self, Activation, AffineTensors, BatchNormTensors, CHECKSUM_RANGE, DType, HEADER_LEN,
    LayerKind, Writer,
};
use bnfold::{Model, Options};
use half::{bf16, f16};
use proptest::prelude::*;

/// One layer of a generated network, before the writer sees it.
#[derive(Debug, Clone)]
enum GenLayer {
    Dense {
        outputs: usize,
        dtype: DType,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
    BatchNorm {
        dtype: DType,
        eps: f64,
        gamma: Option<Vec<f32>>,
        beta: Option<Vec<f32>>,
        mean: Vec<f32>,
        var: Vec<f32>,
    },
    Act(Activation),
    /// An affine layer (format 1.1).
    Affine {
        dtype: DType,
        scale: Option<Vec<f32>>,
        shift: Option<Vec<f32>>,
    },
}

/// A generated network: input width, layers, metadata. Widths chain, so it is a valid model when
/// the values are finite and the variances positive.
#[derive(Debug, Clone)]
struct GenNet {
    input_features: usize,
    layers: Vec<GenLayer>,
    metadata: Vec<(String, String)>,
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)]
}

/// An activation other than softmax (softmax may only be last; it is added separately).
/// Drawn from `Activation::ALL`, so that a new activation is generated without an edit here.
fn activation() -> impl Strategy<Value = Activation> {
    let elementwise: Vec<Activation> = Activation::ALL
        .into_iter()
        .filter(|a| a.is_elementwise())
        .collect();
    (proptest::sample::select(elementwise), -2.0f32..2.0).prop_map(|(a, alpha)| match a {
        Activation::LeakyRelu { .. } => Activation::LeakyRelu { alpha },
        a => a,
    })
}

/// Values for a tensor of `n` elements. `bits` gives any bit pattern at all (NaN, infinities,
/// denormals), for tests of the file format alone; otherwise moderate finite values (in range for
/// f16 too) plus `offset`.
fn values(n: usize, bits: bool, offset: f32) -> BoxedStrategy<Vec<f32>> {
    if bits {
        prop::collection::vec(any::<u32>().prop_map(f32::from_bits), n).boxed()
    } else {
        prop::collection::vec(-1.0f32..1.0, n)
            .prop_map(move |v| v.into_iter().map(|x| x + offset).collect())
            .boxed()
    }
}

/// A layer taking `width` features; returns it with its output width.
fn layer(width: usize, bits: bool) -> BoxedStrategy<(GenLayer, usize)> {
    let dense =
        (1usize..6, dtype(), any::<bool>()).prop_flat_map(move |(outputs, dtype, has_bias)| {
            (
                values(outputs * width, bits, 0.0),
                values(outputs, bits, 0.0),
            )
                .prop_map(move |(weight, bias)| {
                    let l = GenLayer::Dense {
                        outputs,
                        dtype,
                        weight,
                        bias: has_bias.then_some(bias),
                    };
                    (l, outputs)
                })
        });
    let eps = prop_oneof![Just(1e-3), Just(1e-5), Just(0.0), 1e-8f64..1.0];
    let bn = (dtype(), eps, any::<bool>(), any::<bool>()).prop_flat_map(
        move |(dtype, eps, has_gamma, has_beta)| {
            (
                values(width, bits, 1.0),
                values(width, bits, 0.0),
                values(width, bits, 0.0),
                // Variances in [0.5, 2.5): positive, as a trained network's are.
                values(width, bits, 1.5),
            )
                .prop_map(move |(g, b, mean, var)| {
                    let l = GenLayer::BatchNorm {
                        dtype,
                        eps,
                        gamma: has_gamma.then_some(g),
                        beta: has_beta.then_some(b),
                        mean,
                        var,
                    };
                    (l, width)
                })
        },
    );
    let act = activation().prop_map(move |a| (GenLayer::Act(a), width));
    let affine = (dtype(), any::<bool>(), any::<bool>()).prop_flat_map(
        move |(dtype, has_scale, has_shift)| {
            (values(width, bits, 0.0), values(width, bits, 0.0)).prop_map(move |(s, t)| {
                let l = GenLayer::Affine {
                    dtype,
                    scale: has_scale.then_some(s),
                    shift: has_shift.then_some(t),
                };
                (l, width)
            })
        },
    );
    prop_oneof![dense, bn, act, affine].boxed()
}

/// Up to `depth` more layers after a width of `width`.
fn layers(width: usize, depth: usize, bits: bool) -> BoxedStrategy<Vec<GenLayer>> {
    if depth == 0 {
        return Just(Vec::new()).boxed();
    }
    prop_oneof![
        1 => Just(Vec::new()),
        4 => layer(width, bits).prop_flat_map(move |(l, w)| {
            layers(w, depth - 1, bits).prop_map(move |mut rest| {
                rest.insert(0, l.clone());
                rest
            })
        }),
    ]
    .boxed()
}

fn network(bits: bool) -> impl Strategy<Value = GenNet> {
    let meta = prop::collection::vec(("[a-z_.]{1,12}", "\\PC{0,24}"), 0..4);
    (1usize..6, meta, any::<bool>()).prop_flat_map(move |(input_features, metadata, softmax)| {
        layers(input_features, 5, bits).prop_map(move |mut layers| {
            if softmax {
                layers.push(GenLayer::Act(Activation::Softmax));
            }
            GenNet {
                input_features,
                layers,
                metadata: metadata.clone(),
            }
        })
    })
}

/// A tensor as the file must hold it: name, dtype, shape and exact little-endian bytes.
struct ExpectedTensor {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Encode values the way the spec says (f16/bf16 rounded to nearest even), independently of the
/// writer's own encoder.
fn encode(dtype: DType, v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| match dtype {
            DType::F32 => x.to_le_bytes().to_vec(),
            DType::F16 => f16::from_f32(x).to_bits().to_le_bytes().to_vec(),
            DType::BF16 => bf16::from_f32(x).to_bits().to_le_bytes().to_vec(),
        })
        .collect()
}

/// Write `net` and return the bytes with the tensors and layer kinds the file must contain.
fn write(net: &GenNet) -> (Vec<u8>, Vec<ExpectedTensor>, Vec<(String, LayerKind)>) {
    let mut w = Writer::new(net.input_features);
    for (k, v) in &net.metadata {
        w.metadata(k.clone(), v.clone());
    }
    let mut tensors: Vec<ExpectedTensor> = Vec::new();
    let mut kinds = Vec::new();
    let mut width = net.input_features;
    let mut add = |w: &mut Writer, name: String, dtype: DType, shape: Vec<usize>, v: &[f32]| {
        let id = w
            .tensor(&name, dtype, &shape, v)
            .expect("tensor within limits");
        tensors.push(ExpectedTensor {
            name,
            dtype,
            shape,
            bytes: encode(dtype, v),
        });
        (id, tensors.len() - 1)
    };
    for (i, l) in net.layers.iter().enumerate() {
        let name = format!("layer{i}");
        match l {
            GenLayer::Dense {
                outputs,
                dtype,
                weight,
                bias,
            } => {
                let (wid, wi) = add(
                    &mut w,
                    format!("{name}.weight"),
                    *dtype,
                    vec![*outputs, width],
                    weight,
                );
                let b = bias
                    .as_ref()
                    .map(|b| add(&mut w, format!("{name}.bias"), *dtype, vec![*outputs], b));
                w.dense(&name, width, *outputs, wid, b.map(|b| b.0))
                    .expect("dense");
                kinds.push((
                    name,
                    LayerKind::Dense {
                        inputs: width,
                        outputs: *outputs,
                        weight: wi,
                        bias: b.map(|b| b.1),
                    },
                ));
                width = *outputs;
            }
            GenLayer::BatchNorm {
                dtype,
                eps,
                gamma,
                beta,
                mean,
                var,
            } => {
                let mut vec = |suffix: &str, v: &[f32]| {
                    add(&mut w, format!("{name}.{suffix}"), *dtype, vec![width], v)
                };
                let g = gamma.as_ref().map(|g| vec("gamma", g));
                let b = beta.as_ref().map(|b| vec("beta", b));
                let m = vec("moving_mean", mean);
                let v = vec("moving_variance", var);
                let t = BatchNormTensors {
                    gamma: g.map(|g| g.0),
                    beta: b.map(|b| b.0),
                    moving_mean: m.0,
                    moving_variance: v.0,
                };
                w.batch_norm(&name, width, *eps, t).expect("batch norm");
                kinds.push((
                    name,
                    LayerKind::BatchNorm {
                        features: width,
                        eps: *eps,
                        gamma: g.map(|g| g.1),
                        beta: b.map(|b| b.1),
                        moving_mean: m.1,
                        moving_variance: v.1,
                    },
                ));
            }
            GenLayer::Act(a) => {
                w.activation(&name, *a).expect("activation");
                kinds.push((name, LayerKind::Activation(*a)));
            }
            GenLayer::Affine {
                dtype,
                scale,
                shift,
            } => {
                let mut vec = |suffix: &str, v: &[f32]| {
                    add(&mut w, format!("{name}.{suffix}"), *dtype, vec![width], v)
                };
                let s = scale.as_ref().map(|s| vec("scale", s));
                let t = shift.as_ref().map(|t| vec("shift", t));
                let ids = AffineTensors {
                    scale: s.map(|s| s.0),
                    shift: t.map(|t| t.0),
                };
                w.affine(&name, width, ids).expect("affine");
                kinds.push((
                    name,
                    LayerKind::Affine {
                        features: width,
                        scale: s.map(|s| s.1),
                        shift: t.map(|t| t.1),
                    },
                ));
            }
        }
    }
    (w.to_bytes().expect("within limits"), tensors, kinds)
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(128))]

    /// Any valid network the writer writes loads back as the same network: input width, metadata
    /// in order, layers (names, kinds, widths, eps bit for bit, activation parameters), and every
    /// tensor's name, dtype, shape and bytes, bit for bit.
    #[test]
    fn written_network_loads_back_identically(net in network(false)) {
        let (bytes, tensors, kinds) = write(&net);
        let model = Model::from_bytes(&bytes).expect("a valid network loads");
        prop_assert_eq!(model.input_features(), net.input_features);
        prop_assert_eq!(model.metadata(), &net.metadata[..]);
        // The writer stamps the lowest minor version the layers need: 1.1 only with an affine layer.
        let needs_1_1 = net.layers.iter().any(|l| matches!(l, GenLayer::Affine { .. }));
        prop_assert_eq!(model.header().version_minor, u16::from(needs_1_1));
        prop_assert_eq!(model.layers().len(), kinds.len());
        for (l, (name, kind)) in model.layers().iter().zip(&kinds) {
            prop_assert_eq!(&l.name, name);
            // LayerKind's PartialEq compares eps as f64; check its bits too so -0.0 vs 0.0 counts.
            prop_assert_eq!(&l.kind, kind);
            if let (LayerKind::BatchNorm { eps: a, .. }, LayerKind::BatchNorm { eps: b, .. }) = (&l.kind, kind) {
                prop_assert_eq!(a.to_bits(), b.to_bits());
            }
            if let (LayerKind::Activation(a), LayerKind::Activation(b)) = (&l.kind, kind) {
                prop_assert_eq!(a.param().to_bits(), b.param().to_bits());
            }
        }
        prop_assert_eq!(model.tensors().len(), tensors.len());
        for (i, (info, t)) in model.tensors().iter().zip(&tensors).enumerate() {
            prop_assert_eq!(&info.name, &t.name);
            prop_assert_eq!(info.dtype, t.dtype);
            prop_assert_eq!(&info.shape, &t.shape);
            prop_assert_eq!(&bytes[info.file_offset..info.file_offset + info.byte_len], &t.bytes[..]);
            // The zero-copy view sees the same bits.
            let view = model.tensor_data(i).expect("little-endian host");
            let view_bytes: Vec<u8> = match view {
                bnfold::model::TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                bnfold::model::TensorData::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                bnfold::model::TensorData::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            };
            prop_assert_eq!(view_bytes, t.bytes.clone());
        }
        let widths = model.compile(&Options::unfolded()).expect("compiles").output_features();
        prop_assert_eq!(widths, model.output_features());
    }

    /// The file format itself round-trips any bit pattern (NaN payloads, infinities, denormals):
    /// the parser hands back every tensor's exact bytes, even where the model would be rejected.
    #[test]
    fn any_tensor_bits_round_trip_through_the_format(net in network(true)) {
        let (bytes, tensors, kinds) = write(&net);
        let parsed = format::parse(&bytes, true).expect("writer output parses");
        prop_assert_eq!(parsed.input_features, net.input_features);
        prop_assert_eq!(&parsed.metadata, &net.metadata);
        prop_assert_eq!(parsed.layers.len(), kinds.len());
        for (l, (name, kind)) in parsed.layers.iter().zip(&kinds) {
            prop_assert_eq!(&l.name, name);
            prop_assert_eq!(l.kind.kind_name(), kind.kind_name());
        }
        for (info, t) in parsed.tensors.iter().zip(&tensors) {
            prop_assert_eq!(&info.name, &t.name);
            prop_assert_eq!(&bytes[info.file_offset..info.file_offset + info.byte_len], &t.bytes[..]);
        }
    }
}

/// Where a byte of a written file lies.
#[derive(Debug, PartialEq)]
enum Region {
    /// The minor version (bytes 10..12): any value at least the one the file's layers need is
    /// accepted, by design.
    MinorVersion,
    /// The stored CRC-32 (bytes 40..44).
    Checksum,
    /// Any other byte of the 64-byte header: every one is checked.
    Header,
    /// The table section.
    Table,
    /// Padding after the table, and the data section.
    Data,
}

fn region(at: usize, table_end: usize) -> Region {
    if (10..12).contains(&at) {
        Region::MinorVersion
    } else if CHECKSUM_RANGE.contains(&at) {
        Region::Checksum
    } else if at < HEADER_LEN {
        Region::Header
    } else if at < table_end {
        Region::Table
    } else {
        Region::Data
    }
}

proptest! {
    #![proptest_config(cases(48))]

    /// Flipping bits of any single byte of a valid file:
    /// - with the checksum verified, always gives an error (CRC-32 detects every error confined to
    ///   one byte, and a flip inside the CRC field itself makes it disagree);
    /// - without the checksum, never panics; a flip in the header (other than the minor version or
    ///   the CRC field) is always an error; a flip in the data section either is an error (a NaN,
    ///   a negative variance) or loads with the same structure; whatever loads compiles and runs.
    #[test]
    fn single_byte_flip_is_an_error_or_a_loadable_model(net in network(false), mask in 1u8..=255) {
        let (bytes, _, _) = write(&net);
        let original = Model::from_bytes(&bytes).expect("valid");
        let table_end = HEADER_LEN + original.header().table_len as usize;
        let mut copy = bytes.clone();
        for at in 0..bytes.len() {
            copy[at] ^= mask;
            let checked = Model::from_bytes(&copy);
            prop_assert!(checked.is_err(), "byte {} ^ {:#x} loaded with the checksum verified", at, mask);
            let unchecked = Model::from_bytes_unchecked_crc(&copy);
            match region(at, table_end) {
                Region::Header => prop_assert!(unchecked.is_err(), "header byte {} ^ {:#x} accepted", at, mask),
                Region::MinorVersion
                    if u16::from_le_bytes([copy[10], copy[11]]) < original.header().version_minor =>
                {
                    // An affine layer (1.1) in a file now stamped 1.0.
                    let e = unchecked.as_ref().expect_err("1.1 layer in a 1.0 file");
                    prop_assert!(
                        matches!(e.format_kind(), Some(bnfold::FormatError::KindNeedsNewerMinor { .. })),
                        "{}", e
                    );
                }
                Region::Checksum | Region::MinorVersion => {
                    let m = unchecked.as_ref().expect("only the CRC field or minor version changed");
                    prop_assert_eq!(m.layers(), original.layers());
                }
                Region::Data => {
                    if let Ok(m) = &unchecked {
                        prop_assert_eq!(m.layers(), original.layers());
                        prop_assert_eq!(m.tensors(), original.tensors());
                        prop_assert_eq!(m.metadata(), original.metadata());
                    }
                }
                Region::Table => {}
            }
            if let Ok(m) = unchecked {
                for opts in [Options::folded(), Options::unfolded()] {
                    // Folding may overflow f32 after a flip made a value huge; that is an error.
                    if let Ok(plan) = m.compile(&opts) {
                        let x = vec![0.5f32; m.input_features()];
                        let y = plan.session().run(&x, 1).expect("well-shaped input").len();
                        prop_assert_eq!(y, m.output_features());
                    }
                }
            }
            copy[at] = bytes[at];
        }
    }
}

/// The mmap path (the one `unsafe` block of the loader, see docs/SAFETY.md) sees exactly the
/// bytes `from_bytes` sees, for files whose tensors end exactly at the end of the file.
#[test]
fn mmap_load_matches_in_memory_load() {
    let mut w = Writer::new(3);
    w.add_dense("fc", DType::F16, 5, 3, &[0.25; 15], Some(&[0.5; 5]))
        .expect("dense");
    w.add_batch_norm(
        "bn",
        DType::F32,
        1e-3,
        None,
        Some(&[0.1; 5]),
        &[0.2; 5],
        &[1.5; 5],
    )
    .expect("bn");
    w.activation("act", Activation::Tanh).expect("act");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.bnw");
    w.write(&path).expect("write");
    let bytes = std::fs::read(&path).expect("read back");
    let mapped = Model::load(&path).expect("mmap load");
    let read = Model::load_with(&path, bnfold::LoadMode::Read).expect("read load");
    let mem = Model::from_bytes(&bytes).expect("in-memory load");
    for m in [&mapped, &read] {
        assert_eq!(m.layers(), mem.layers());
        assert_eq!(m.tensors(), mem.tensors());
        for i in 0..mem.tensors().len() {
            let a = m.tensor_data(i).expect("view").to_f64_vec();
            let b = mem.tensor_data(i).expect("view").to_f64_vec();
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}

proptest! {
    #![proptest_config(cases(32))]

    /// Cutting a valid file short anywhere, or appending bytes to it, is always an error, with or
    /// without the checksum (the header's sizes must add up to the real length).
    #[test]
    fn truncated_or_extended_file_is_an_error(net in network(false), extra in prop::collection::vec(any::<u8>(), 1..80)) {
        let (bytes, _, _) = write(&net);
        for len in 0..bytes.len() {
            prop_assert!(Model::from_bytes(&bytes[..len]).is_err(), "prefix of {} bytes loaded", len);
            prop_assert!(Model::from_bytes_unchecked_crc(&bytes[..len]).is_err(), "prefix of {} bytes loaded", len);
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(Model::from_bytes_unchecked_crc(&longer).is_err());
        format::fix_checksum(&mut longer);
        prop_assert!(Model::from_bytes(&longer).is_err());
    }
}
