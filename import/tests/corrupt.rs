//! Corrupt and hostile inputs: every one ends in a typed error (never a panic, never an allocation
//! the input did not pay for): truncations at every length, byte flips, huge declared lengths and
//! shapes, external data escaping the model's directory or missing or short, bad `--arch` strings,
//! and corrupt safetensors files.

mod common;

use std::path::Path;

use bnfold_import::onnx::proto::{ModelProto, StringStringEntryProto, TensorProto, data_type};
use bnfold_import::{ConvertOptions, ImportError, import_file, import_onnx_bytes};
use common::{GraphBuilder, encode, f32_tensor, fixture};
use prost::Message;

/// A small valid model: Gemm -> BatchNormalization -> Relu -> Gemm.
fn small() -> Vec<u8> {
    let mut g = GraphBuilder::new(3);
    g.gemm("fc", "x", "h", 3, 4);
    g.batch_norm("bn", "h", "n", 4, vec![]);
    g.node("Relu", "relu", &["n"], &["r"], vec![]);
    g.gemm("out", "r", "y", 4, 2);
    g.build("y")
}

#[test]
fn the_small_model_converts() {
    let net = import_onnx_bytes(&small(), None, "small.onnx").unwrap();
    assert_eq!(net.layers.len(), 4);
    net.to_bytes().unwrap();
}

#[test]
fn truncation_at_every_length_is_a_typed_error() {
    for bytes in [
        small(),
        std::fs::read(fixture("torch_input_bn.onnx")).unwrap(),
    ] {
        for len in 0..bytes.len() {
            match import_onnx_bytes(&bytes[..len], None, "t") {
                Ok(_) => panic!("prefix of {len} of {} bytes converted", bytes.len()),
                Err(
                    ImportError::Protobuf(_)
                    | ImportError::NoGraph
                    | ImportError::Graph(_)
                    | ImportError::Tensor { .. }
                    | ImportError::Unsupported { .. },
                ) => {}
                Err(e) => panic!("prefix {len}: unexpected error class: {e}"),
            }
        }
    }
}

#[test]
fn flipped_bytes_give_an_error_or_a_valid_model() {
    let bytes = small();
    let mut copy = bytes.clone();
    let (mut ok, mut err) = (0, 0);
    for at in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            copy[at] ^= mask;
            match import_onnx_bytes(&copy, None, "t") {
                // A flip inside a weight is still a model: it must write and load.
                Ok(net) => match net.to_bytes() {
                    Ok(_) => ok += 1,
                    // e.g. a flipped variance made negative: refused by the model checks.
                    Err(ImportError::Bnfold(_)) => err += 1,
                    Err(e) => panic!("byte {at} ^ {mask:#x}: {e}"),
                },
                Err(_) => err += 1,
            }
            copy[at] = bytes[at];
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

#[test]
fn garbage_is_not_an_onnx_model() {
    let mut state = 0x9e37_79b9_u32;
    for len in [0usize, 1, 7, 64, 1000] {
        let buf: Vec<u8> = (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        assert!(import_onnx_bytes(&buf, None, "t").is_err());
    }
}

/// A protobuf varint.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

#[test]
fn huge_declared_lengths_are_refused_before_allocating() {
    // ModelProto.graph (field 7, length-delimited) claiming 2^60 bytes, then 3 bytes.
    for len in [1u64 << 60, u64::MAX >> 1, 1 << 33, 1000] {
        let mut b = vec![7 << 3 | 2];
        b.extend(varint(len));
        b.extend([0, 0, 0]);
        let e = import_onnx_bytes(&b, None, "t").unwrap_err();
        assert!(matches!(e, ImportError::Protobuf(_)), "{len}: {e}");
    }
    // A packed float field (TensorProto.float_data) claiming more than there is, deep inside.
    let mut t = Vec::new();
    t.push(4 << 3 | 2);
    t.extend(varint(1 << 40));
    t.extend([0u8; 8]);
    let mut g = vec![5 << 3 | 2];
    g.extend(varint(t.len() as u64));
    g.extend(&t);
    let mut m = vec![7 << 3 | 2];
    m.extend(varint(g.len() as u64));
    m.extend(&g);
    let e = import_onnx_bytes(&m, None, "t").unwrap_err();
    assert!(matches!(e, ImportError::Protobuf(_)), "{e}");
    // Deep nesting of unknown groups / messages is cut off by prost's recursion limit, not the
    // stack: a GraphProto.node holding an attribute holding a tensor, ... is bounded by the
    // structs (no recursive field is declared), and unknown fields are skipped.
    let mut deep = Vec::new();
    for _ in 0..10_000 {
        deep.extend([(3 << 3) | 3]); // start group, field 3
    }
    let e = import_onnx_bytes(&deep, None, "t").unwrap_err();
    assert!(matches!(e, ImportError::Protobuf(_)), "{e}");
}

/// The small model with one initializer replaced.
fn with_initializer(t: TensorProto) -> Vec<u8> {
    let mut m = ModelProto::decode(&small()[..]).unwrap();
    let g = m.graph.as_mut().unwrap();
    let slot = g.initializer.iter_mut().find(|i| i.name == t.name).unwrap();
    *slot = t;
    encode(&m)
}

#[test]
fn tensors_whose_data_do_not_match_their_shape_are_typed_errors() {
    let cases: Vec<(TensorProto, &str)> = vec![
        // Huge dims, 4 bytes of data: refused by arithmetic, nothing allocated.
        (
            f32_tensor("fc.weight", &[1 << 20, 1 << 20], &[1.0]),
            "elements",
        ),
        (f32_tensor("fc.weight", &[i64::MAX, 2], &[1.0]), "elements"),
        (f32_tensor("fc.weight", &[-4, 3], &[1.0; 12]), "negative"),
        (
            f32_tensor("fc.weight", &[4, 3], &[1.0; 11]),
            "raw_data has 44 bytes",
        ),
        (f32_tensor("fc.weight", &[1; 9], &[1.0]), "rank 9"),
        (
            TensorProto {
                name: "fc.weight".into(),
                dims: vec![4, 3],
                data_type: data_type::FLOAT,
                float_data: vec![1.0; 5],
                ..Default::default()
            },
            "float_data has 5 values",
        ),
        (
            TensorProto {
                name: "fc.weight".into(),
                dims: vec![4, 3],
                data_type: data_type::FLOAT16,
                int32_data: vec![0x10000; 12],
                ..Default::default()
            },
            "not a 16-bit pattern",
        ),
        (
            TensorProto {
                name: "fc.weight".into(),
                dims: vec![4, 3],
                data_type: 8, // STRING
                ..Default::default()
            },
            "STRING",
        ),
    ];
    for (t, needle) in cases {
        let e = import_onnx_bytes(&with_initializer(t.clone()), None, "t").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(needle), "{:?}: {msg}", t.dims);
        assert!(msg.contains("fc.weight"), "{msg}");
    }
}

/// Copy the external-data fixture into a fresh directory; returns (dir, model path).
fn external_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["torch_dynamo.onnx", "torch_dynamo.onnx.data"] {
        std::fs::copy(fixture(f), dir.path().join(f)).unwrap();
    }
    let model = dir.path().join("torch_dynamo.onnx");
    (dir, model)
}

/// Rewrite the first external-data tensor of `model` with `f`.
fn edit_external(model: &Path, f: impl Fn(&mut TensorProto)) {
    let mut m = ModelProto::decode(&std::fs::read(model).unwrap()[..]).unwrap();
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    f(t);
    std::fs::write(model, encode(&m)).unwrap();
}

fn set(t: &mut TensorProto, key: &str, value: &str) {
    match t.external_data.iter_mut().find(|e| e.key == key) {
        Some(e) => e.value = value.into(),
        None => t.external_data.push(StringStringEntryProto {
            key: key.into(),
            value: value.into(),
        }),
    }
}

fn convert(model: &Path) -> Result<bnfold_import::Network, ImportError> {
    import_file(model, &ConvertOptions::default())
}

#[test]
fn external_data_is_read_from_the_side_file() {
    let (_dir, model) = external_copy();
    let net = convert(&model).unwrap();
    assert_eq!(net.layers.len(), 5);
    // Given as bytes there is no directory to look in: a typed error, not a guess.
    let bytes = std::fs::read(&model).unwrap();
    let e = import_onnx_bytes(&bytes, None, "t").unwrap_err();
    assert!(matches!(e, ImportError::ExternalData { .. }), "{e}");
}

#[test]
fn external_data_outside_the_model_directory_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.bin");
    std::fs::write(&secret, vec![0u8; 4096]).unwrap();
    let (dir, model) = external_copy();
    // Through "..", to a file that exists.
    let rel = format!(
        "../{}/secret.bin",
        outside.path().file_name().unwrap().to_str().unwrap()
    );
    for location in [
        rel.as_str(),
        "../../../../../../../../etc/passwd",
        "sub/../../x.data",
        secret.to_str().unwrap(),
        "/etc/passwd",
    ] {
        let (_d, model) = external_copy();
        edit_external(&model, |t| {
            set(t, "location", location);
            set(t, "offset", "0");
        });
        let e = convert(&model).unwrap_err();
        assert!(
            matches!(e, ImportError::ExternalDataOutside { .. }),
            "{location}: {e}"
        );
    }
    // Through a symbolic link inside the directory that points outside.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&secret, dir.path().join("link.data")).unwrap();
        edit_external(&model, |t| {
            set(t, "location", "link.data");
            set(t, "offset", "0");
        });
        let e = convert(&model).unwrap_err();
        assert!(matches!(e, ImportError::ExternalDataOutside { .. }), "{e}");
        assert!(e.to_string().contains("outside"), "{e}");
    }
}

#[test]
fn a_missing_side_file_is_named() {
    let (dir, model) = external_copy();
    std::fs::remove_file(dir.path().join("torch_dynamo.onnx.data")).unwrap();
    let e = convert(&model).unwrap_err();
    match &e {
        ImportError::ExternalDataMissing { path, .. } => {
            assert!(path.ends_with("torch_dynamo.onnx.data"), "{e}")
        }
        _ => panic!("{e}"),
    }
    assert!(e.to_string().contains("torch_dynamo.onnx.data"), "{e}");
}

#[test]
fn short_side_files_and_bad_ranges_are_refused() {
    // The side file cut short.
    let (dir, model) = external_copy();
    let data = dir.path().join("torch_dynamo.onnx.data");
    let len = std::fs::metadata(&data).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    f.set_len(len / 2).unwrap();
    let e = convert(&model).unwrap_err();
    assert!(matches!(e, ImportError::ExternalDataRange { .. }), "{e}");
    // Offsets and lengths that do not fit, or are not numbers.
    for (key, value, class) in [
        ("offset", "18446744073709551615", "range"),
        ("offset", "1000000000", "range"),
        ("length", "3", "range"),
        ("length", "18446744073709551615", "range"),
        ("offset", "-1", "field"),
        ("offset", "ten", "field"),
        ("colour", "blue", "field"),
        ("location", "", "field"),
    ] {
        let (_d, model) = external_copy();
        edit_external(&model, |t| set(t, key, value));
        let e = convert(&model).unwrap_err();
        let ok = match class {
            "range" => matches!(e, ImportError::ExternalDataRange { .. }),
            _ => matches!(e, ImportError::ExternalData { .. }),
        };
        assert!(ok, "{key}={value}: {e}");
    }
    // Huge declared dims on an external tensor: refused before any read.
    let (_d, model) = external_copy();
    edit_external(&model, |t| t.dims = vec![1 << 30, 1 << 30]);
    let e = convert(&model).unwrap_err();
    assert!(matches!(e, ImportError::Tensor { .. }), "{e}");
}

#[test]
fn bad_arch_strings_are_typed_errors_naming_the_item() {
    let st = fixture("torch_state_dict.safetensors");
    let with = |arch: &str| {
        import_file(
            &st,
            &ConvertOptions {
                arch: Some(arch.into()),
                dtype: None,
            },
        )
    };
    for (arch, index) in [
        ("", 0),
        ("linear,,relu", 1),
        ("linear,bn:abc,relu", 1),
        ("linear,bn:-1,relu", 1),
        ("linear,swish", 1),
        ("linear,relu:2", 1),
        ("conv", 0),
    ] {
        match with(arch) {
            Err(ImportError::ArchSyntax { index: i, .. }) => assert_eq!(i, index, "{arch}"),
            other => panic!("{arch}: {other:?}"),
        }
    }
    // Parses, but does not match the tensors: the error names the item and the tensor.
    for (arch, index, needle) in [
        // Item 1 is a BN in the file.
        (
            "linear,relu,relu,linear,bn:0.001,tanh,linear",
            1,
            "'1.bias'",
        ),
        // Item 2 (ReLU) given as a Linear.
        (
            "linear,bn,linear,linear,bn:0.001,tanh,linear",
            2,
            "'2.weight'",
        ),
        // Item 3 given as a BN: no running statistics.
        (
            "linear,bn,relu,bn,bn:0.001,tanh,linear",
            3,
            "'3.running_mean'",
        ),
    ] {
        match with(arch) {
            Err(e @ ImportError::ArchMismatch { .. }) => {
                let ImportError::ArchMismatch { index: i, .. } = e else {
                    unreachable!()
                };
                assert_eq!(i, index, "{arch}");
                assert!(e.to_string().contains(needle), "{arch}: {e}");
            }
            other => panic!("{arch}: {other:?}"),
        }
    }
    // Too short: the tensors of the missing modules are listed.
    match with("linear,bn,relu,linear") {
        Err(e @ ImportError::UnusedTensor { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("'4.running_mean'") && msg.contains("'6.weight'"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    // No --arch for safetensors, --arch for ONNX.
    assert!(matches!(
        import_file(&st, &ConvertOptions::default()),
        Err(ImportError::ArchUsage(_))
    ));
    assert!(matches!(
        import_file(
            &fixture("torch_input_bn.onnx"),
            &ConvertOptions {
                arch: Some("linear".into()),
                dtype: None
            }
        ),
        Err(ImportError::ArchUsage(_))
    ));
}

#[test]
fn corrupt_safetensors_files_are_typed_errors() {
    let bytes = std::fs::read(fixture("torch_state_dict.safetensors")).unwrap();
    let arch = "linear,bn,relu,linear,bn:0.001,tanh,linear";
    for len in 0..bytes.len() {
        match bnfold_import::import_safetensors_bytes(&bytes[..len], arch, "t") {
            Err(ImportError::Safetensors(_)) => {}
            other => panic!("prefix {len}: {other:?}"),
        }
    }
    // A header length far beyond the file.
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        bnfold_import::import_safetensors_bytes(&b, arch, "t"),
        Err(ImportError::Safetensors(_))
    ));
    // Flipped bytes in the header: an error, or (a flip in a name or a value) a typed error of
    // the architecture match; never a panic.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut copy = bytes.clone();
    for at in 8..8 + header_len {
        let saved = copy[at];
        copy[at] ^= 0x20;
        let _ = bnfold_import::import_safetensors_bytes(&copy, arch, "t");
        copy[at] = saved;
    }
}
