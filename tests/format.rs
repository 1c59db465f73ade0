//! Weight-file format: round trips for each dtype, and a table of corrupt files, each rejected with
//! its specific error.

mod common;

use std::path::Path;

use bnfold::format::{self, Writer, fix_checksum};
use bnfold::{Activation, DType, Error, FormatError, LayerError, LoadMode, Model};
use common::{L, Stats, network};
use half::{bf16, f16};

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn round_trip_is_bit_exact_for_every_dtype() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // Values that exercise the dtype: subnormals, negative zero, extremes of each format.
        let special: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            -2.5,
            6.0e-8,
            65504.0,
            1e-30,
            // Near the top of each format's range (f16 tops out at 65504).
            if dtype == DType::F16 { 6.5e4 } else { 3.0e38 },
            f32::MIN_POSITIVE,
            0.1,
            -1e-5,
            123.456,
        ];
        let mut w = Writer::new(4);
        w.metadata("producer", "round trip")
            .metadata("ünïcode", "välue ✓");
        let t = w.tensor("dense.weight", dtype, &[3, 4], &special).unwrap();
        w.dense("dense", 4, 3, t, None).unwrap();
        w.activation("act", Activation::LeakyRelu { alpha: 0.01 })
            .unwrap();
        let bytes = w.to_bytes().unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        let data = model.tensor_data(0).unwrap();
        // Expected bits: the writer rounds f32 to the dtype; compare with `half`'s rounding.
        for (i, &v) in special.iter().enumerate() {
            match (dtype, data) {
                (DType::F32, bnfold::model::TensorData::F32(d)) => {
                    assert_eq!(d[i].to_bits(), v.to_bits())
                }
                (DType::F16, bnfold::model::TensorData::F16(d)) => {
                    assert_eq!(d[i].to_bits(), f16::from_f32(v).to_bits())
                }
                (DType::BF16, bnfold::model::TensorData::BF16(d)) => {
                    assert_eq!(d[i].to_bits(), bf16::from_f32(v).to_bits())
                }
                _ => panic!("view has the wrong dtype"),
            }
        }
        assert_eq!(model.tensors()[0].dtype, dtype);
        assert_eq!(model.tensors()[0].shape, vec![3, 4]);
        assert_eq!(model.metadata_value("ünïcode"), Some("välue ✓"));
        assert_eq!(
            model.layers()[1].kind,
            format::LayerKind::Activation(Activation::LeakyRelu { alpha: 0.01 })
        );
        // Tensor data sits 64-byte aligned in the file.
        assert_eq!(model.tensors()[0].file_offset % 64, 0);
    }
}

#[test]
fn raw_tensor_bytes_are_kept_bit_for_bit() {
    // Importers hand over f16 bits directly, NaN payloads and all; the writer must not touch them.
    let bits: Vec<u16> = vec![0x3c00, 0x8001, 0x7bff, 0x0400];
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let mut w = Writer::new(2);
    w.tensor_bytes("t", DType::F16, &[2, 2], bytes.clone())
        .unwrap();
    let file = w.to_bytes().unwrap();
    let m = Model::from_bytes(&file).unwrap();
    let off = m.tensors()[0].file_offset;
    assert_eq!(&file[off..off + 8], &bytes[..]);
}

#[test]
fn mmap_and_read_loads_agree_with_from_bytes() {
    let bytes = network(
        5,
        &[L::Bn, L::Dense(4), L::Bn, L::Act(Activation::Relu)],
        3,
        DType::F16,
        Stats::default(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.bnw");
    std::fs::write(&path, &bytes).unwrap();
    let a = Model::load(&path).unwrap();
    let b = Model::load_with(&path, LoadMode::Read).unwrap();
    let c = Model::from_bytes(&bytes).unwrap();
    for m in [&a, &b] {
        assert_eq!(m.layers(), c.layers());
        assert_eq!(m.tensors(), c.tensors());
        for i in 0..m.tensors().len() {
            assert_eq!(
                m.tensor_data(i).unwrap().to_f64_vec(),
                c.tensor_data(i).unwrap().to_f64_vec()
            );
        }
    }
    for mode in [LoadMode::Mmap, LoadMode::Read] {
        // A directory, and a device that never ends: "not a regular file", not a hang.
        let zero = Path::new("/dev/zero");
        for path in [dir.path(), zero].into_iter().filter(|p| p.exists()) {
            let e = Model::load_with(path, mode).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }
    let missing = Model::load(dir.path().join("nope.bnw")).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing}");
    assert!(missing.to_string().contains("nope.bnw"));
}

#[test]
fn writer_writes_atomically_and_the_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.bnw");
    let mut w = Writer::new(1);
    w.activation("id", Activation::Identity).unwrap();
    w.write(&path).unwrap();
    let m = Model::load(&path).unwrap();
    assert_eq!(m.output_features(), 1);
    assert!(!dir.path().join("w.bnw.tmp").exists());
}

// ---------------------------------------------------------------------------------------------
// Corrupt files. The base file has a known structure; helpers find fields by the unique names
// written next to them, so each case patches exactly one field and then (unless the case is about
// the checksum) recomputes the CRC so that the check under test is the one that fires.

/// Dense(2 -> 3, weight + bias) -> BN(3) -> ReLU, plus one metadata entry (`producer`).
fn dense_bn_relu(producer: &str) -> Vec<u8> {
    let mut w = Writer::new(2);
    w.metadata("producer", producer);
    w.add_dense(
        "fc",
        DType::F32,
        3,
        2,
        &[1., 2., 3., 4., 5., 6.],
        Some(&[0.1, 0.2, 0.3]),
    )
    .unwrap();
    w.add_batch_norm(
        "bn",
        DType::F32,
        1e-3,
        Some(&[1.0, 1.5, 0.5]),
        Some(&[0.0, 0.1, -0.1]),
        &[0.5, -0.5, 1.0],
        &[2.0, 0.5, 1.0],
    )
    .unwrap();
    w.activation("relu", Activation::Relu).unwrap();
    w.to_bytes().unwrap()
}

/// The file the corrupt-file cases patch.
fn base() -> Vec<u8> {
    dense_bn_relu("corrupt-file tests")
}

/// Offset of the first byte after the length-prefixed string `s` in the table.
fn after_string(b: &[u8], s: &str) -> usize {
    let mut needle = (s.len() as u32).to_le_bytes().to_vec();
    needle.extend_from_slice(s.as_bytes());
    let at = b
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("'{s}' not in file"));
    at + needle.len()
}

/// Field offsets of tensor `name`: (dtype, rank, first dim, offset field, byte_len field).
fn tensor_fields(b: &[u8], name: &str) -> (usize, usize, usize, usize, usize) {
    let dtype = after_string(b, name);
    let rank = b[dtype + 1] as usize;
    let dims = dtype + 2;
    let off = dims + 8 * rank;
    (dtype, dtype + 1, dims, off, off + 8)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A named corrupt file and the check its error must pass.
type PatchCase = (&'static str, Vec<u8>, fn(&FormatError) -> bool);

fn load(mut b: Vec<u8>, fix: bool) -> Error {
    if fix {
        fix_checksum(&mut b);
    }
    Model::from_bytes(&b).expect_err("corrupt file was accepted")
}

fn format_kind(e: &Error) -> FormatError {
    e.format_kind()
        .unwrap_or_else(|| panic!("expected a format error, got: {e}"))
        .clone()
}

fn layer_kind(e: &Error) -> LayerError {
    e.layer_kind()
        .unwrap_or_else(|| panic!("expected a layer error, got: {e}"))
        .clone()
}

/// Rewrite the header of a file whose table section was cut to `table_len` bytes, so that the
/// header is consistent and the table parser is what meets the truncation.
fn with_table_cut(b: &[u8], table_len: usize) -> Vec<u8> {
    let old_table = le_u64(b, 16) as usize;
    let data_offset = le_u64(b, 24) as usize;
    let data = &b[data_offset..];
    let new_data_offset = (64 + table_len).div_ceil(64) * 64;
    let mut out = vec![0u8; new_data_offset + data.len()];
    out[..64].copy_from_slice(&b[..64]);
    let keep = table_len.min(old_table);
    out[64..64 + keep].copy_from_slice(&b[64..64 + keep]);
    put_u64(&mut out, 16, table_len as u64);
    put_u64(&mut out, 24, new_data_offset as u64);
    out[new_data_offset..].copy_from_slice(data);
    fix_checksum(&mut out);
    out
}

#[test]
fn the_base_file_is_valid() {
    let m = Model::from_bytes(&base()).unwrap();
    assert_eq!(m.output_features(), 3);
}

#[test]
fn file_truncated_at_every_section_boundary_is_rejected() {
    let b = base();
    let data_offset = le_u64(&b, 24) as usize;
    let first_tensor = tensor_fields(&b, "fc.weight").0;
    for cut in [
        0,
        4,
        8,
        40,
        63,
        64,
        68,
        first_tensor,
        data_offset - 1,
        data_offset,
        data_offset + 10,
        b.len() - 1,
    ] {
        let e = Model::from_bytes(&b[..cut]).unwrap_err();
        let kind = format_kind(&e);
        match cut {
            0..=63 => assert!(
                matches!(kind, FormatError::FileTooSmall { len } if len == cut as u64),
                "cut {cut}: {e}"
            ),
            _ => assert!(
                matches!(kind, FormatError::LengthMismatch { actual, .. } if actual == cut as u64),
                "cut {cut}: {e}"
            ),
        }
    }
}

#[test]
fn table_truncated_inside_each_section_names_the_field() {
    let b = base();
    // Cuts inside an entry must leave enough bytes for the entry count's plausibility check
    // (count x smallest entry), so the metadata cut is inside the key's bytes and the tensor
    // cuts are inside the last tensor entry.
    let (meta_count, in_meta) = (64, 77);
    let tensor_count = after_string(&b, "corrupt-file tests");
    let (w_dtype, _, w_dim, w_off, _) = tensor_fields(&b, "bn.moving_variance");
    let input_features = tensor_fields(&b, "bn.moving_variance").4 + 8;
    let layer_count = input_features + 4;
    let bn_kind = after_string(&b, "bn");
    let bn_eps = bn_kind + 1 + 4;
    let relu_code = after_string(&b, "relu") + 1;
    let table_end = 64 + le_u64(&b, 16) as usize;
    let cases: &[(usize, &str)] = &[
        (meta_count + 2, "metadata"),
        (in_meta, "metadata key"),
        (tensor_count + 1, "tensor"),
        (w_dtype, "tensor dtype"),
        (w_dim + 3, "tensor dimension"),
        (w_off + 7, "tensor offset"),
        (input_features + 1, "input_features"),
        (layer_count + 2, "layer"),
        (bn_eps + 5, "batchnorm eps"),
        (relu_code, "activation code"),
        (table_end - 1, "activation parameter"),
    ];
    for &(cut_at, what) in cases {
        let e = Model::from_bytes(&with_table_cut(&b, cut_at - 64)).unwrap_err();
        match format_kind(&e) {
            FormatError::Truncated { what: w } => assert_eq!(w, what, "cut at {cut_at}: {e}"),
            _ => panic!("cut at {cut_at} ({what}): {e}"),
        }
    }
}

#[test]
fn corrupt_headers_are_rejected_with_their_own_error() {
    let b = base();
    type Case = (
        &'static str,
        fn(&mut Vec<u8>),
        fn(&FormatError) -> bool,
        u64,
    );
    let cases: Vec<Case> = vec![
        (
            "bad magic",
            |b| b[1] = b'X',
            |k| *k == FormatError::BadMagic,
            0,
        ),
        (
            "newer major version",
            |b| b[8] = 2,
            |k| {
                matches!(
                    k,
                    FormatError::UnsupportedVersion {
                        major: 2,
                        supported: 1,
                        ..
                    }
                )
            },
            8,
        ),
        (
            "flags set",
            |b| b[12] = 1,
            |k| matches!(k, FormatError::Reserved { field: "flags", .. }),
            12,
        ),
        (
            "reserved bytes set",
            |b| b[60] = 1,
            |k| {
                matches!(
                    k,
                    FormatError::Reserved {
                        field: "reserved",
                        ..
                    }
                )
            },
            60,
        ),
        (
            "huge table length",
            |b| put_u64(b, 16, u64::MAX),
            |k| matches!(k, FormatError::TableTooLarge { .. }),
            16,
        ),
        (
            "data offset past the end",
            |b| put_u64(b, 24, 1 << 40),
            |k| matches!(k, FormatError::BadDataOffset { found, .. } if *found == 1 << 40),
            24,
        ),
        (
            "huge data length",
            |b| put_u64(b, 32, u64::MAX),
            |k| {
                matches!(
                    k,
                    FormatError::LengthMismatch {
                        declared: u64::MAX,
                        ..
                    }
                )
            },
            32,
        ),
    ];
    for (name, patch, ok, offset) in cases {
        let mut c = b.clone();
        patch(&mut c);
        let e = load(c, true);
        assert!(ok(&format_kind(&e)), "{name}: {e}");
        assert!(
            matches!(e, Error::Format { offset: o, .. } if o == offset),
            "{name}: {e}"
        );
        assert!(
            e.to_string().contains(&format!("byte {offset}")),
            "{name}: {e}"
        );
    }
}

#[test]
fn newer_version_message_tells_the_user_what_to_do() {
    let mut b = base();
    b[8] = 2;
    let msg = load(b, true).to_string();
    assert!(
        msg.contains("version 2.0") && msg.contains("upgrade"),
        "{msg}"
    );
}

#[test]
fn any_flipped_byte_fails_the_checksum() {
    let b = base();
    for at in [0x48, 100, b.len() / 2, b.len() - 1] {
        let mut c = b.clone();
        c[at] ^= 0x10;
        let e = load(c, false);
        assert!(
            matches!(format_kind(&e), FormatError::ChecksumMismatch { .. }),
            "byte {at}: {e}"
        );
    }
}

#[test]
fn corrupt_tensor_entries_are_rejected() {
    let b = base();
    let (dtype, rank, dim, off, len) = tensor_fields(&b, "fc.weight");
    let (.., off2, _) = tensor_fields(&b, "fc.bias");
    let data_len = le_u64(&b, 32);
    let cases: Vec<PatchCase> = vec![
        (
            "unknown dtype",
            {
                let mut c = b.clone();
                c[dtype] = 9;
                c
            },
            |k| matches!(k, FormatError::UnknownDtype { code: 9, .. }),
        ),
        (
            "rank 0",
            {
                let mut c = b.clone();
                c[rank] = 0;
                c
            },
            |k| matches!(k, FormatError::BadRank { rank: 0, .. }),
        ),
        (
            "rank 200",
            {
                let mut c = b.clone();
                c[rank] = 200;
                c
            },
            |k| matches!(k, FormatError::BadRank { rank: 200, .. }),
        ),
        (
            "zero dimension",
            {
                let mut c = b.clone();
                put_u64(&mut c, dim, 0);
                c
            },
            |k| matches!(k, FormatError::BadDimension { value: 0, .. }),
        ),
        (
            "huge dimension",
            {
                let mut c = b.clone();
                put_u64(&mut c, dim, 1 << 62);
                c
            },
            |k| matches!(k, FormatError::BadDimension { .. }),
        ),
        (
            "byte_len disagrees with shape",
            {
                let mut c = b.clone();
                put_u64(&mut c, len, 20);
                c
            },
            |k| {
                matches!(
                    k,
                    FormatError::TensorSizeMismatch {
                        expected: 24,
                        declared: 20,
                        ..
                    }
                )
            },
        ),
        (
            "huge byte_len",
            {
                let mut c = b.clone();
                put_u64(&mut c, len, u64::MAX);
                c
            },
            |k| matches!(k, FormatError::TensorSizeMismatch { .. }),
        ),
        (
            "offset past the end",
            {
                let mut c = b.clone();
                put_u64(&mut c, off, (data_len + 64) & !63);
                c
            },
            |k| matches!(k, FormatError::TensorOutOfBounds { .. }),
        ),
        (
            "offset + len overflows",
            {
                let mut c = b.clone();
                put_u64(&mut c, off, !63);
                c
            },
            |k| matches!(k, FormatError::TensorOutOfBounds { .. }),
        ),
        (
            "misaligned offset",
            {
                let mut c = b.clone();
                put_u64(&mut c, off, 4);
                c
            },
            |k| matches!(k, FormatError::TensorMisaligned { offset: 4, .. }),
        ),
        (
            "overlapping tensors",
            {
                let mut c = b.clone();
                put_u64(&mut c, off2, 0);
                c
            },
            |k| matches!(k, FormatError::TensorOverlap { .. }),
        ),
        (
            "bad UTF-8 name",
            {
                let mut c = b.clone();
                let at = dtype - 1;
                c[at] = 0xff;
                c
            },
            |k| {
                matches!(
                    k,
                    FormatError::BadUtf8 {
                        what: "tensor name"
                    }
                )
            },
        ),
    ];
    for (name, c, ok) in cases {
        let e = load(c, true);
        assert!(ok(&format_kind(&e)), "{name}: {e}");
    }
}

#[test]
fn duplicate_tensor_names_are_rejected() {
    let mut b = base();
    // Rename "bn.beta" to "fc.bias" in place (both 7 bytes).
    let at = after_string(&b, "bn.beta") - 7;
    b[at..at + 7].copy_from_slice(b"fc.bias");
    let e = load(b, true);
    assert!(
        matches!(format_kind(&e), FormatError::DuplicateTensor { ref tensor } if tensor == "fc.bias"),
        "{e}"
    );
}

#[test]
fn huge_claimed_counts_and_lengths_are_rejected_before_allocating() {
    let b = base();
    let tensor_count = after_string(&b, "corrupt-file tests");
    let layer_count = tensor_fields(&b, "bn.moving_variance").4 + 8 + 4;
    let cases: Vec<PatchCase> = vec![
        (
            "metadata count u32::MAX",
            {
                let mut c = b.clone();
                put_u32(&mut c, 64, u32::MAX);
                c
            },
            |k| {
                matches!(
                    k,
                    FormatError::TooMany {
                        what: "metadata",
                        ..
                    }
                )
            },
        ),
        (
            "metadata count within limit but beyond the table",
            {
                let mut c = b.clone();
                put_u32(&mut c, 64, 4000);
                c
            },
            |k| matches!(k, FormatError::Truncated { what: "metadata" }),
        ),
        (
            "metadata key length u32::MAX",
            {
                let mut c = b.clone();
                put_u32(&mut c, 68, u32::MAX);
                c
            },
            |k| {
                matches!(
                    k,
                    FormatError::StringTooLong {
                        what: "metadata key",
                        ..
                    }
                )
            },
        ),
        (
            "tensor count u32::MAX",
            {
                let mut c = b.clone();
                put_u32(&mut c, tensor_count, u32::MAX);
                c
            },
            |k| matches!(k, FormatError::TooMany { what: "tensor", .. }),
        ),
        (
            "tensor count beyond the table",
            {
                let mut c = b.clone();
                put_u32(&mut c, tensor_count, 60000);
                c
            },
            |k| matches!(k, FormatError::Truncated { what: "tensor" }),
        ),
        (
            "layer count u32::MAX",
            {
                let mut c = b.clone();
                put_u32(&mut c, layer_count, u32::MAX);
                c
            },
            |k| matches!(k, FormatError::TooMany { what: "layer", .. }),
        ),
    ];
    for (name, c, ok) in cases {
        let e = load(c, true);
        assert!(ok(&format_kind(&e)), "{name}: {e}");
    }
}

#[test]
fn corrupt_layer_entries_are_rejected() {
    let b = base();
    let fc = after_string(&b, "fc");
    let bn = after_string(&b, "bn");
    let relu = after_string(&b, "relu");
    let cases: Vec<PatchCase> = vec![
        (
            "unknown layer kind",
            {
                let mut c = b.clone();
                c[fc] = 42;
                c
            },
            |k| {
                matches!(
                    k,
                    FormatError::UnknownLayerKind {
                        index: 0,
                        code: 42,
                        ..
                    }
                )
            },
        ),
        (
            "unknown activation",
            {
                let mut c = b.clone();
                c[relu + 1] = 99;
                c
            },
            |k| matches!(k, FormatError::UnknownActivation { index: 2, code: 99 }),
        ),
        (
            "parameter on relu",
            {
                let mut c = b.clone();
                c[relu + 5] = 1;
                c
            },
            |k| {
                matches!(
                    k,
                    FormatError::Reserved {
                        field: "activation parameter",
                        ..
                    }
                )
            },
        ),
        (
            "weight index out of range",
            {
                let mut c = b.clone();
                put_u32(&mut c, fc + 9, 77);
                c
            },
            |k| {
                matches!(
                    k,
                    FormatError::BadTensorIndex {
                        field: "dense weight",
                        tensor_index: 77,
                        ..
                    }
                )
            },
        ),
        (
            "mean index out of range",
            {
                let mut c = b.clone();
                put_u32(&mut c, bn + 1 + 4 + 8 + 8, 6);
                c
            },
            |k| {
                matches!(
                    k,
                    FormatError::BadTensorIndex {
                        field: "batchnorm moving_mean",
                        ..
                    }
                )
            },
        ),
        (
            "trailing bytes",
            with_table_cut(&b, le_u64(&b, 16) as usize + 3),
            |k| matches!(k, FormatError::TrailingBytes { count: 3 }),
        ),
    ];
    for (name, c, ok) in cases {
        let e = load(c, true);
        assert!(ok(&format_kind(&e)), "{name}: {e}");
    }
}

/// A network with one layer changed, for the model-level (layer) errors.
fn with_bn(gamma: &[f32], mean: &[f32], var: &[f32], eps: f64) -> Vec<u8> {
    let mut w = Writer::new(3);
    w.add_dense("fc", DType::F32, 3, 3, &[0.5; 9], None)
        .unwrap();
    w.add_batch_norm("bn1", DType::F32, eps, Some(gamma), None, mean, var)
        .unwrap();
    w.to_bytes().unwrap()
}

#[test]
fn impossible_statistics_name_the_layer_and_feature() {
    let ok = [1.0f32; 3];
    type Case<'a> = (&'a str, Vec<u8>, fn(&LayerError) -> bool);
    let cases: Vec<Case> = vec![
        (
            "NaN variance",
            with_bn(&ok, &ok, &[1.0, f32::NAN, 1.0], 1e-3),
            |k| {
                matches!(
                    k,
                    LayerError::NonFinite {
                        role: "moving_variance",
                        position: 1,
                        ..
                    }
                )
            },
        ),
        (
            "infinite mean",
            with_bn(&ok, &[1.0, 1.0, f32::INFINITY], &ok, 1e-3),
            |k| {
                matches!(
                    k,
                    LayerError::NonFinite {
                        role: "moving_mean",
                        position: 2,
                        ..
                    }
                )
            },
        ),
        (
            "NaN gamma",
            with_bn(&[f32::NAN, 1.0, 1.0], &ok, &ok, 1e-3),
            |k| {
                matches!(
                    k,
                    LayerError::NonFinite {
                        role: "gamma",
                        position: 0,
                        ..
                    }
                )
            },
        ),
        (
            "negative variance",
            with_bn(&ok, &ok, &[1.0, 1.0, -0.5], 1e-3),
            |k| matches!(k, LayerError::NegativeVariance { feature: 2, value } if *value == -0.5),
        ),
        (
            "var + eps = 0",
            with_bn(&ok, &ok, &[1.0, 0.0, 1.0], 0.0),
            |k| matches!(k, LayerError::NonPositiveDenominator { feature: 1, .. }),
        ),
        ("NaN eps", with_bn(&ok, &ok, &ok, f64::NAN), |k| {
            matches!(k, LayerError::BadEps(_))
        }),
        ("negative eps", with_bn(&ok, &ok, &ok, -1e-3), |k| {
            matches!(k, LayerError::BadEps(_))
        }),
    ];
    for (name, bytes, ok) in cases {
        let e = Model::from_bytes(&bytes).unwrap_err();
        assert!(ok(&layer_kind(&e)), "{name}: {e}");
        assert!(
            matches!(&e, Error::Layer { index: 1, name, .. } if name == "bn1"),
            "{name}: {e}"
        );
        assert!(
            e.to_string().starts_with("layer 1 (BatchNorm 'bn1')"),
            "{e}"
        );
    }
    // Zero variance with a positive eps is fine (a feature that never varied).
    Model::from_bytes(&with_bn(&ok, &ok, &[0.0, 1.0, 1.0], 1e-5)).unwrap();
}

#[test]
fn nan_weights_are_rejected_with_their_position() {
    let mut w = Writer::new(2);
    w.add_dense("fc", DType::BF16, 2, 2, &[1.0, 2.0, f32::NAN, 4.0], None)
        .unwrap();
    let e = Model::from_bytes(&w.to_bytes().unwrap()).unwrap_err();
    assert!(
        matches!(
            layer_kind(&e),
            LayerError::NonFinite {
                role: "weight",
                position: 2,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn shapes_that_do_not_chain_are_rejected() {
    // Dense expects 4 inputs but the network's input is 3.
    let mut w = Writer::new(3);
    w.add_dense("fc", DType::F32, 2, 4, &[0.0; 8], None)
        .unwrap();
    let e = Model::from_bytes(&w.to_bytes().unwrap()).unwrap_err();
    assert_eq!(
        layer_kind(&e),
        LayerError::WidthMismatch {
            expected: 4,
            found: 3
        }
    );
    // Dense declares 2 -> 3 but its weight tensor is [2, 2].
    let mut w = Writer::new(2);
    let t = w.tensor("w", DType::F32, &[2, 2], &[0.0; 4]).unwrap();
    w.dense("fc", 2, 3, t, None).unwrap();
    let e = Model::from_bytes(&w.to_bytes().unwrap()).unwrap_err();
    assert!(
        matches!(layer_kind(&e), LayerError::TensorShape { role: "weight", ref expected, ref found, .. } if *expected == vec![3, 2] && *found == vec![2, 2]),
        "{e}"
    );
    // BN over 5 features after a 3-wide layer.
    let mut w = Writer::new(3);
    w.add_batch_norm("bn", DType::F32, 1e-3, None, None, &[0.0; 5], &[1.0; 5])
        .unwrap();
    let e = Model::from_bytes(&w.to_bytes().unwrap()).unwrap_err();
    assert_eq!(
        layer_kind(&e),
        LayerError::WidthMismatch {
            expected: 5,
            found: 3
        }
    );
}

#[test]
fn softmax_must_be_last_and_leaky_slope_finite() {
    let mut w = Writer::new(2);
    w.activation("sm", Activation::Softmax).unwrap();
    w.activation("relu", Activation::Relu).unwrap();
    let e = Model::from_bytes(&w.to_bytes().unwrap()).unwrap_err();
    assert_eq!(layer_kind(&e), LayerError::SoftmaxNotLast);
    let mut w = Writer::new(2);
    w.activation(
        "lr",
        Activation::LeakyRelu {
            alpha: f32::INFINITY,
        },
    )
    .unwrap();
    let e = Model::from_bytes(&w.to_bytes().unwrap()).unwrap_err();
    assert!(
        matches!(layer_kind(&e), LayerError::BadActivationParam(_)),
        "{e}"
    );
}

#[test]
fn random_garbage_and_short_buffers_never_panic() {
    // Deterministic pseudo-random buffers of every small length; the fuzzers do this at scale.
    let mut state = 0x1234_5678_u64;
    for len in 0..300 {
        let buf: Vec<u8> = (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect();
        assert!(Model::from_bytes(&buf).is_err());
        assert!(Model::from_bytes_unchecked_crc(&buf).is_err());
    }
    // Prefixes of a valid file with the magic intact.
    let b = base();
    for len in 0..b.len() {
        assert!(
            Model::from_bytes(&b[..len]).is_err(),
            "prefix {len} accepted"
        );
    }
    let _ = le_u32(&b, 0);
}

/// The worked example in docs/FORMAT.md ("Example" section): its sizes and offsets are asserted here
/// so the document cannot drift from the writer.
#[test]
fn format_md_worked_example_matches_the_writer() {
    // Sizes and offsets depend on the structure and the metadata, not on the values.
    let b = dense_bn_relu("example");
    let m = Model::from_bytes(&b).unwrap();
    let h = m.header();
    let offsets: Vec<u64> = m
        .tensors()
        .iter()
        .map(|t| t.file_offset as u64 - h.data_offset)
        .collect();
    assert_eq!(
        (h.table_len, h.data_offset, h.data_len, b.len()),
        (EXAMPLE.0, EXAMPLE.1, EXAMPLE.2, EXAMPLE.3)
    );
    assert_eq!(offsets, vec![0, 64, 128, 192, 256, 320]);
}

/// (table_len, data_offset, data_len, file length) of the FORMAT.md example.
const EXAMPLE: (u64, u64, u64, usize) = (362, 448, 332, 780);

/// A 3 -> 2 dense layer and an affine layer (format 1.1) with the given scale and shift.
fn dense_affine(scale: Option<&[f32]>, shift: Option<&[f32]>, dtype: DType) -> Vec<u8> {
    let mut w = Writer::new(3);
    w.add_dense(
        "fc",
        DType::F32,
        2,
        3,
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        None,
    )
    .unwrap();
    w.add_affine("af", dtype, 2, scale, shift).unwrap();
    w.to_bytes().unwrap()
}

#[test]
fn affine_layer_round_trips_and_stamps_minor_version_1() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for (scale, shift) in [
            (Some(&[0.5f32, -2.0][..]), Some(&[0.25f32, 3.0][..])),
            (Some(&[0.5, -2.0][..]), None),
            (None, Some(&[0.25, 3.0][..])),
            (None, None),
        ] {
            let b = dense_affine(scale, shift, dtype);
            let m = Model::from_bytes(&b).unwrap();
            assert_eq!((m.header().version_major, m.header().version_minor), (1, 1));
            let l = &m.layers()[1];
            assert_eq!(l.kind.kind_name(), "Affine");
            assert_eq!(l.kind.shape_text(), "2");
            let format::LayerKind::Affine {
                features: 2,
                scale: s,
                shift: t,
            } = l.kind
            else {
                panic!("not an affine layer: {:?}", l.kind);
            };
            assert_eq!(
                s.map(|s| m.tensors()[s].name.as_str()),
                scale.map(|_| "af.scale")
            );
            assert_eq!(
                t.map(|t| m.tensors()[t].name.as_str()),
                shift.map(|_| "af.shift")
            );
            let detail = l.kind.detail(m.tensors());
            let want = format!(
                "scale={} shift={}",
                if scale.is_some() { "af.scale" } else { "-" },
                if shift.is_some() { "af.shift" } else { "-" }
            );
            assert_eq!(detail, want);
            // The reference applies it: x = [1, 1, 1] -> dense [6, 15] -> affine.
            let y = bnfold::reference::forward(&m, &[1.0, 1.0, 1.0], 1).unwrap();
            let (s, t) = (scale.unwrap_or(&[1.0, 1.0]), shift.unwrap_or(&[0.0, 0.0]));
            assert_eq!(
                y,
                vec![
                    6.0 * s[0] as f64 + t[0] as f64,
                    15.0 * s[1] as f64 + t[1] as f64
                ]
            );
        }
    }
    // A file without an affine layer is stamped 1.0, readable by 1.0 readers.
    let b = dense_bn_relu("example");
    assert_eq!(Model::from_bytes(&b).unwrap().header().version_minor, 0);
}

#[test]
fn affine_layer_in_a_file_stamped_1_0_is_rejected() {
    let mut b = dense_affine(Some(&[1.0, 2.0]), None, DType::F32);
    b[10..12].copy_from_slice(&0u16.to_le_bytes());
    let kind_at = after_string(&b, "af");
    let e = load(b, true);
    assert_eq!(e.format_kind().map(|_| ()), Some(()), "{e}");
    match format_kind(&e) {
        FormatError::KindNeedsNewerMinor {
            index: 1,
            code: 4,
            needs_minor: 1,
            minor: 0,
            ..
        } => {}
        k => panic!("wrong error: {k}"),
    }
    let Error::Format { offset, .. } = e else {
        unreachable!()
    };
    assert_eq!(offset as usize, kind_at);
    // A later minor version is accepted (minor versions only add).
    let mut b = dense_affine(Some(&[1.0, 2.0]), None, DType::F32);
    b[10..12].copy_from_slice(&7u16.to_le_bytes());
    fix_checksum(&mut b);
    Model::from_bytes(&b).unwrap();
}

#[test]
fn unknown_layer_kind_says_the_file_may_be_newer() {
    let mut b = dense_affine(Some(&[1.0, 2.0]), None, DType::F32);
    let at = after_string(&b, "af");
    b[at] = 5;
    let e = load(b, true);
    assert!(
        matches!(
            format_kind(&e),
            FormatError::UnknownLayerKind {
                index: 1,
                code: 5,
                minor: 1
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("newer version of bnfold"), "{msg}");
    assert!(msg.contains("format 1.0 to 1.1"), "{msg}");
}

#[test]
fn invalid_affine_layers_name_the_layer_and_problem() {
    // Non-finite scale.
    let e = Model::from_bytes(&dense_affine(Some(&[1.0, f32::NAN]), None, DType::F32)).unwrap_err();
    assert!(
        matches!(
            layer_kind(&e),
            LayerError::NonFinite {
                role: "scale",
                position: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().starts_with("layer 1 (Affine 'af')"), "{e}");
    // Infinite shift in f16.
    let e = Model::from_bytes(&dense_affine(None, Some(&[f32::INFINITY, 0.0]), DType::F16))
        .unwrap_err();
    assert!(
        matches!(
            layer_kind(&e),
            LayerError::NonFinite {
                role: "shift",
                position: 0,
                ..
            }
        ),
        "{e}"
    );
    // Width that does not chain.
    let mut w = Writer::new(3);
    w.add_affine("af", DType::F32, 2, Some(&[1.0, 1.0]), None)
        .unwrap();
    let e = Model::from_bytes(&w.to_bytes().unwrap()).unwrap_err();
    assert!(
        matches!(
            layer_kind(&e),
            LayerError::WidthMismatch {
                expected: 2,
                found: 3
            }
        ),
        "{e}"
    );
    // A tensor of the wrong shape for its role.
    let mut w = Writer::new(2);
    let t = w.tensor("s", DType::F32, &[3], &[1.0; 3]).unwrap();
    w.affine(
        "af",
        2,
        format::AffineTensors {
            scale: Some(t),
            shift: None,
        },
    )
    .unwrap();
    let e = Model::from_bytes(&w.to_bytes().unwrap()).unwrap_err();
    assert!(
        matches!(
            layer_kind(&e),
            LayerError::TensorShape { role: "scale", .. }
        ),
        "{e}"
    );
    // Zero features.
    let mut w = Writer::new(2);
    w.affine("af", 0, format::AffineTensors::default()).unwrap();
    let e = Model::from_bytes(&w.to_bytes().unwrap()).unwrap_err();
    assert!(
        matches!(
            layer_kind(&e),
            LayerError::BadWidth {
                what: "features",
                ..
            }
        ),
        "{e}"
    );
    // Truncated inside the payload, and a tensor index out of range.
    let b = dense_affine(Some(&[1.0, 2.0]), None, DType::F32);
    let at = after_string(&b, "af");
    let mut c = b.clone();
    put_u32(&mut c, at + 5, 9);
    assert!(matches!(
        format_kind(&load(c, true)),
        FormatError::BadTensorIndex {
            field: "affine scale",
            ..
        }
    ));
    let mut c = b.clone();
    put_u32(&mut c, at + 5, 0);
    assert!(matches!(
        format_kind(&load(c, true)),
        FormatError::TensorReused {
            field: "affine scale",
            ..
        }
    ));
}
