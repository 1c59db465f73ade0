//! The limits of `bnfold::format::limits` are enforced with clear errors, and values exactly at a
//! limit are accepted.
//!
//! The writer refuses to write past a limit, so these files are built by hand with a small encoder
//! that follows the layout of docs/FORMAT.md (independently of the writer).

use bnfold::format::{self, CHECKSUM_RANGE, MAGIC, NO_TENSOR, Writer, limits};
use bnfold::{DType, Error, FormatError, LayerError, Model};

/// A hand-built table section.
#[derive(Default)]
struct Table(Vec<u8>);

impl Table {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// A tensor entry.
    fn tensor(
        &mut self,
        name: &str,
        dtype: u8,
        shape: &[u64],
        offset: u64,
        byte_len: u64,
    ) -> &mut Self {
        self.str(name).u8(dtype).u8(shape.len() as u8);
        for &d in shape {
            self.u64(d);
        }
        self.u64(offset).u64(byte_len)
    }
    /// A dense layer entry.
    fn dense(
        &mut self,
        name: &str,
        inputs: u32,
        outputs: u32,
        weight: u32,
        bias: u32,
    ) -> &mut Self {
        self.str(name)
            .u8(1)
            .u32(inputs)
            .u32(outputs)
            .u32(weight)
            .u32(bias)
    }
    /// An activation layer entry.
    fn act(&mut self, name: &str, code: u8) -> &mut Self {
        self.str(name).u8(3).u8(code).u32(0)
    }
}

/// Header + table + zero padding to 64 + data, with a correct checksum.
fn file(table: &Table, data: &[u8]) -> Vec<u8> {
    let table_len = table.0.len() as u64;
    let data_offset = (64 + table_len).div_ceil(64) * 64;
    let mut out = vec![0u8; data_offset as usize];
    out[..8].copy_from_slice(&MAGIC);
    out[8..10].copy_from_slice(&1u16.to_le_bytes());
    out[16..24].copy_from_slice(&table_len.to_le_bytes());
    out[24..32].copy_from_slice(&data_offset.to_le_bytes());
    out[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
    out[64..64 + table.0.len()].copy_from_slice(&table.0);
    out.extend_from_slice(data);
    format::fix_checksum(&mut out);
    out
}

/// A file with `meta` metadata entries, no tensors, an identity network of width 1.
fn with_metadata(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut t = Table::default();
    t.u32(entries.len() as u32);
    for (k, v) in entries {
        t.str(k).str(v);
    }
    t.u32(0).u32(1).u32(0);
    file(&t, &[])
}

/// A file with one f32 tensor named `name` of `shape` (data zeros) and no layers.
fn with_tensor(name: &str, shape: &[u64]) -> Vec<u8> {
    let elems: u64 = shape.iter().product();
    let mut t = Table::default();
    t.u32(0)
        .u32(1)
        .tensor(name, 1, shape, 0, elems * 4)
        .u32(1)
        .u32(0);
    file(&t, &vec![0u8; (elems * 4) as usize])
}

fn format_err(bytes: &[u8]) -> (FormatError, String) {
    match Model::from_bytes(bytes) {
        Err(e @ Error::Format { .. }) => (e.format_kind().cloned().expect("format"), e.to_string()),
        Err(e) => panic!("expected a format error, got: {e}"),
        Ok(_) => panic!("expected a format error, the file loaded"),
    }
}

#[test]
fn the_hand_built_encoder_writes_what_the_reader_accepts() {
    // Guards the tests below: without this, a bug in the encoder would make every test pass.
    let mut t = Table::default();
    t.u32(1).str("producer").str("test");
    t.u32(2)
        .tensor("fc.weight", 1, &[2, 3], 0, 24)
        .tensor("fc.bias", 1, &[2], 64, 8);
    t.u32(3).u32(2).dense("fc", 3, 2, 0, 1).act("relu", 1);
    let mut data = vec![0u8; 72];
    data[..4].copy_from_slice(&1.5f32.to_le_bytes());
    let m = Model::from_bytes(&file(&t, &data)).expect("valid");
    assert_eq!(m.output_features(), 2);
    assert_eq!(m.metadata_value("producer"), Some("test"));
    assert_eq!(m.tensor_data(0).expect("view").get_f64(0), 1.5);
}

#[test]
fn table_length_limit() {
    let mut b = with_metadata(&[]);
    b[16..24].copy_from_slice(&(limits::MAX_TABLE_LEN + 1).to_le_bytes());
    format::fix_checksum(&mut b);
    let (kind, msg) = format_err(&b);
    assert!(
        matches!(kind, FormatError::TableTooLarge { len, limit } if len == limits::MAX_TABLE_LEN + 1 && limit == limits::MAX_TABLE_LEN)
    );
    assert!(msg.contains(&limits::MAX_TABLE_LEN.to_string()), "{msg}");
}

#[test]
fn metadata_count_limit() {
    let mut t = Table::default();
    t.u32(limits::MAX_METADATA as u32 + 1);
    let (kind, msg) = format_err(&file(&t, &[]));
    assert!(
        matches!(kind, FormatError::TooMany { what: "metadata", count, limit } if count == limits::MAX_METADATA + 1 && limit == limits::MAX_METADATA)
    );
    assert!(
        msg.contains("metadata count 4097 exceeds the limit of 4096"),
        "{msg}"
    );
    // Exactly at the limit loads.
    let entries = vec![("k", "v"); limits::MAX_METADATA as usize];
    let m = Model::from_bytes(&with_metadata(&entries)).expect("4096 entries load");
    assert_eq!(m.metadata().len(), limits::MAX_METADATA as usize);
}

#[test]
fn metadata_key_and_value_length_limits() {
    let key_ok = "k".repeat(limits::MAX_KEY_LEN as usize);
    let value_ok = "v".repeat(limits::MAX_VALUE_LEN as usize);
    Model::from_bytes(&with_metadata(&[(key_ok.as_str(), value_ok.as_str())]))
        .expect("at the limits");

    let key = "k".repeat(limits::MAX_KEY_LEN as usize + 1);
    let (kind, msg) = format_err(&with_metadata(&[(&key, "v")]));
    assert!(matches!(
        kind,
        FormatError::StringTooLong {
            what: "metadata key",
            len: 257,
            limit: 256
        }
    ));
    assert!(
        msg.contains("metadata key of 257 bytes exceeds the limit of 256"),
        "{msg}"
    );

    let value = "v".repeat(limits::MAX_VALUE_LEN as usize + 1);
    let (kind, _) = format_err(&with_metadata(&[("k", &value)]));
    assert!(matches!(
        kind,
        FormatError::StringTooLong {
            what: "metadata value",
            ..
        }
    ));
}

#[test]
fn tensor_count_limit() {
    let mut t = Table::default();
    t.u32(0).u32(limits::MAX_TENSORS as u32 + 1);
    let (kind, msg) = format_err(&file(&t, &[]));
    assert!(
        matches!(kind, FormatError::TooMany { what: "tensor", count, .. } if count == limits::MAX_TENSORS + 1)
    );
    assert!(msg.contains("65536"), "{msg}");
}

#[test]
fn tensor_name_length_limit() {
    Model::from_bytes(&with_tensor(
        &"t".repeat(limits::MAX_NAME_LEN as usize),
        &[1],
    ))
    .expect("at the limit");
    let (kind, msg) = format_err(&with_tensor(
        &"t".repeat(limits::MAX_NAME_LEN as usize + 1),
        &[1],
    ));
    assert!(matches!(
        kind,
        FormatError::StringTooLong {
            what: "tensor name",
            len: 1025,
            limit: 1024
        }
    ));
    assert!(
        msg.contains("tensor name of 1025 bytes exceeds the limit of 1024"),
        "{msg}"
    );
}

#[test]
fn layer_name_length_limit() {
    let build = |len: usize| {
        let mut t = Table::default();
        t.u32(0).u32(0).u32(2).u32(1).act(&"n".repeat(len), 1);
        file(&t, &[])
    };
    Model::from_bytes(&build(limits::MAX_NAME_LEN as usize)).expect("at the limit");
    let (kind, _) = format_err(&build(limits::MAX_NAME_LEN as usize + 1));
    assert!(matches!(
        kind,
        FormatError::StringTooLong {
            what: "layer name",
            len: 1025,
            ..
        }
    ));
}

#[test]
fn rank_limit() {
    let m = Model::from_bytes(&with_tensor("t", &[1, 2, 1, 2])).expect("rank 4 loads");
    assert_eq!(m.tensors()[0].shape, vec![1, 2, 1, 2]);
    let (kind, msg) = format_err(&with_tensor("t", &[1, 1, 1, 1, 1]));
    assert!(matches!(kind, FormatError::BadRank { rank: 5, max, .. } if max == limits::MAX_RANK));
    assert!(msg.contains("rank 5 is outside 1..=4"), "{msg}");
    let (kind, _) = format_err(&with_tensor("t", &[]));
    assert!(matches!(kind, FormatError::BadRank { rank: 0, .. }));
}

#[test]
fn dimension_limit() {
    // A dimension above the width limit is refused before its size is even compared to the data.
    let mut t = Table::default();
    t.u32(0).u32(1).tensor(
        "t",
        1,
        &[limits::MAX_WIDTH + 1],
        0,
        (limits::MAX_WIDTH + 1) * 4,
    );
    t.u32(1).u32(0);
    let (kind, msg) = format_err(&file(&t, &[]));
    assert!(
        matches!(kind, FormatError::BadDimension { dim: 0, value, max, .. } if value == limits::MAX_WIDTH + 1 && max == limits::MAX_WIDTH)
    );
    assert!(msg.contains("16777217"), "{msg}");
    let (kind, _) = format_err(&with_tensor("t", &[2, 0]));
    assert!(matches!(
        kind,
        FormatError::BadDimension {
            dim: 1,
            value: 0,
            ..
        }
    ));
    // Shape products that overflow u64 are a size mismatch, not a wrap-around.
    let mut t = Table::default();
    let d = limits::MAX_WIDTH;
    t.u32(0)
        .u32(1)
        .tensor("t", 1, &[d, d, d, d], 0, 0)
        .u32(1)
        .u32(0);
    let (kind, _) = format_err(&file(&t, &[]));
    assert!(matches!(
        kind,
        FormatError::TensorSizeMismatch {
            expected: u64::MAX,
            declared: 0,
            ..
        }
    ));
}

#[test]
fn input_width_limit() {
    let build = |w: u32| {
        let mut t = Table::default();
        t.u32(0).u32(0).u32(w).u32(0);
        file(&t, &[])
    };
    let m = Model::from_bytes(&build(limits::MAX_WIDTH as u32)).expect("at the limit");
    assert_eq!(m.input_features(), limits::MAX_WIDTH as usize);
    let (kind, _) = format_err(&build(limits::MAX_WIDTH as u32 + 1));
    assert!(
        matches!(kind, FormatError::BadDimension { value, .. } if value == limits::MAX_WIDTH + 1)
    );
    let (kind, _) = format_err(&build(0));
    assert!(matches!(kind, FormatError::BadDimension { value: 0, .. }));
}

#[test]
fn layer_width_limit_names_the_layer() {
    // A dense layer declaring more outputs than the limit: its weight tensor cannot exist, but the
    // width is checked first, with the layer named.
    let mut t = Table::default();
    t.u32(0).u32(1).tensor("w", 1, &[1], 0, 4);
    t.u32(1)
        .u32(1)
        .dense("huge", 1, limits::MAX_WIDTH as u32 + 1, 0, NO_TENSOR);
    let err = Model::from_bytes(&file(&t, &[0; 4])).expect_err("too wide");
    assert!(matches!(
        err.layer_kind(),
        Some(LayerError::BadWidth {
            what: "outputs",
            ..
        })
    ));
    let msg = err.to_string();
    assert!(
        msg.contains("layer 0 (Dense 'huge')") && msg.contains("16777217"),
        "{msg}"
    );
}

#[test]
fn layer_count_limit() {
    let mut t = Table::default();
    t.u32(0).u32(0).u32(1).u32(limits::MAX_LAYERS as u32 + 1);
    let (kind, msg) = format_err(&file(&t, &[]));
    assert!(matches!(
        kind,
        FormatError::TooMany {
            what: "layer",
            count: 4097,
            limit: 4096
        }
    ));
    assert!(
        msg.contains("layer count 4097 exceeds the limit of 4096"),
        "{msg}"
    );
    // Exactly at the limit loads (identity activations).
    let mut t = Table::default();
    t.u32(0).u32(0).u32(1).u32(limits::MAX_LAYERS as u32);
    for i in 0..limits::MAX_LAYERS {
        t.act(&format!("a{i}"), 0);
    }
    let m = Model::from_bytes(&file(&t, &[])).expect("4096 layers load");
    assert_eq!(m.layers().len(), limits::MAX_LAYERS as usize);
}

#[test]
fn counts_are_checked_against_the_bytes_left_before_allocating() {
    // 4096 layers claimed in a table with no room for them: refused as truncated, without
    // reserving memory for 4096 layers first.
    let mut t = Table::default();
    t.u32(0).u32(0).u32(1).u32(4000);
    let (kind, _) = format_err(&file(&t, &[]));
    assert!(matches!(kind, FormatError::Truncated { what: "layer" }));
}

#[test]
fn a_tensor_may_serve_only_one_role() {
    // Two dense layers sharing one weight: the plan would convert and pack it once per use, so a
    // small file could demand memory far beyond its size. The reader refuses it, naming both.
    let mut t = Table::default();
    t.u32(0).u32(1).tensor("shared", 1, &[2, 2], 0, 16);
    t.u32(2)
        .u32(2)
        .dense("a", 2, 2, 0, NO_TENSOR)
        .dense("b", 2, 2, 0, NO_TENSOR);
    let b = file(&t, &[0; 16]);
    let (kind, msg) = format_err(&b);
    assert!(matches!(
        kind,
        FormatError::TensorReused {
            index: 1,
            first_layer: 0,
            field: "dense weight",
            ..
        }
    ));
    assert!(
        msg.contains("'shared'") && msg.contains("layer 0 already uses"),
        "{msg}"
    );
    // Also within one layer (weight used again as the bias).
    let mut t = Table::default();
    t.u32(0).u32(1).tensor("w", 1, &[1, 1], 0, 4);
    t.u32(1).u32(1).dense("d", 1, 1, 0, 0);
    let (kind, _) = format_err(&file(&t, &[0; 4]));
    assert!(matches!(
        kind,
        FormatError::TensorReused {
            index: 0,
            first_layer: 0,
            field: "dense bias",
            ..
        }
    ));
}

#[test]
fn the_writer_refuses_what_the_reader_would() {
    let mut w = Writer::new(1);
    assert!(
        w.tensor(&"n".repeat(1025), DType::F32, &[1], &[0.0])
            .is_err()
    );
    assert!(
        w.tensor("rank5", DType::F32, &[1, 1, 1, 1, 1], &[0.0])
            .is_err()
    );
    assert!(
        w.tensor("wide", DType::F32, &[limits::MAX_WIDTH as usize + 1], &[])
            .is_err()
    );
    assert!(
        w.activation(&"n".repeat(1025), bnfold::Activation::Relu)
            .is_err()
    );
    let mut w = Writer::new(1);
    w.metadata("k".repeat(257), "v");
    assert!(w.to_bytes().is_err());
}

#[test]
fn checksum_field_is_where_the_spec_says() {
    let b = with_metadata(&[]);
    let stored = u32::from_le_bytes(b[CHECKSUM_RANGE].try_into().expect("4 bytes"));
    assert_eq!(stored, format::checksum(&b));
    assert_eq!(stored, {
        let mut z = b.clone();
        z[CHECKSUM_RANGE].fill(0);
        crc32fast::hash(&z)
    });
}
