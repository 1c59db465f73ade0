//! The rules docs/FORMAT.md states for the bytes outside tables and tensors, and for names
//! (issue 11: an independent implementation written from the spec disagreed with bnfold on these).

use bnfold::format::{self, Writer, fix_checksum};
use bnfold::{DType, Error, FormatError, Model, WriterError};

/// A file with two tensors (so the data section has a gap between them) and a known table end.
fn file() -> (Vec<u8>, usize, Vec<(usize, usize)>) {
    let mut w = Writer::new(3);
    w.metadata("producer", "format_rules");
    w.add_dense("fc", DType::F32, 2, 3, &[0.5; 6], Some(&[0.25, -0.25]))
        .unwrap();
    let bytes = w.to_bytes().unwrap();
    let p = format::parse(&bytes, true).unwrap();
    let table_end = format::HEADER_LEN + p.header.table_len as usize;
    let tensors = p
        .tensors
        .iter()
        .map(|t| (t.file_offset, t.file_offset + t.byte_len))
        .collect();
    (bytes, table_end, tensors)
}

fn kind(bytes: &[u8]) -> (u64, FormatError) {
    match Model::from_bytes(bytes) {
        Err(Error::Format { offset, kind }) => (offset, kind),
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[test]
fn padding_before_the_data_section_must_be_zero() {
    let (mut bytes, table_end, tensors) = file();
    assert!(tensors[0].0 > table_end, "the example has padding");
    bytes[table_end] = 0x5a;
    fix_checksum(&mut bytes);
    let (offset, k) = kind(&bytes);
    assert_eq!(offset, table_end as u64);
    assert!(
        matches!(k, FormatError::NonZeroPadding { value: 0x5a, .. }),
        "{k}"
    );
}

#[test]
fn gaps_between_tensors_must_be_zero() {
    let (mut bytes, _, tensors) = file();
    let gap = tensors[0].1;
    assert!(gap < tensors[1].0, "weights (24 bytes) are padded to 64");
    bytes[gap] = 1;
    fix_checksum(&mut bytes);
    let (offset, k) = kind(&bytes);
    assert_eq!(offset, gap as u64);
    assert!(k.to_string().contains("between tensors"), "{k}");
}

#[test]
fn tensor_names_and_metadata_keys_must_not_be_empty() {
    // The writer refuses them ...
    let mut w = Writer::new(1);
    assert!(matches!(
        w.tensor("", DType::F32, &[1], &[1.0]),
        Err(Error::Writer(WriterError::EmptyName("tensor name")))
    ));
    let mut w = Writer::new(1);
    w.metadata("", "value");
    assert!(matches!(
        w.to_bytes(),
        Err(Error::Writer(WriterError::EmptyName("metadata key")))
    ));
    // ... and so does the reader, in a file patched to have them: the one-byte key `x` and tensor
    // name `t` become empty by shortening the length fields and shifting the rest of the table.
    for (what, name) in [("metadata key", "x"), ("tensor name", "t")] {
        let mut w = Writer::new(1);
        w.metadata("x", "v");
        let t = w.tensor("t", DType::F32, &[1, 1], &[2.0]).unwrap();
        w.dense("fc", 1, 1, t, None).unwrap();
        let bytes = w.to_bytes().unwrap();
        let needle: Vec<u8> = [&1u32.to_le_bytes()[..], name.as_bytes()].concat();
        let at = bytes[64..]
            .windows(needle.len())
            .position(|win| win == needle.as_slice())
            .expect("the string is in the table")
            + 64;
        // Drop the name's byte and keep the file's layout: re-point the table length and pad at
        // the end of the table, where the padding before the data section absorbs one byte.
        let mut patched = bytes.clone();
        patched.splice(at..at + 5, 0u32.to_le_bytes());
        let table_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) - 1;
        patched[16..24].copy_from_slice(&table_len.to_le_bytes());
        let table_end = 64 + table_len as usize;
        patched.insert(table_end, 0);
        fix_checksum(&mut patched);
        let (offset, k) = kind(&patched);
        assert_eq!(k, FormatError::EmptyName { what }, "{what}");
        assert!(
            offset >= 64 && offset < table_end as u64,
            "{what} at {offset}"
        );
    }
}

#[test]
fn layer_names_may_be_empty_or_repeated() {
    let mut w = Writer::new(2);
    w.activation("", bnfold::Activation::Relu).unwrap();
    w.activation("", bnfold::Activation::Tanh).unwrap();
    let m = Model::from_bytes(&w.to_bytes().unwrap()).unwrap();
    assert_eq!(m.layers().len(), 2);
}
