//! Writes the committed fuzz seed corpora (`fuzz/seeds/<target>/`).
//!
//! ```text
//! cargo run --example gen_fuzz_seeds -- fuzz/seeds
//! ```
//!
//! `parse_bytes/` gets small weight files written by bnfold's own writer: most are valid networks
//! covering every layer kind, dtype and activation (so the fuzzer starts from files that reach the
//! folding and kernel code), a few are well-formed files of invalid networks (NaN statistics, a width
//! mismatch, softmax not last) so the validation errors are reached too. Every `models/*.bnw`
//! present is copied in as well. `structured/` gets a few deterministic pseudo-random byte strings:
//! the structure-aware target decodes any bytes into a network, so these only give it a head start.
//!
//! With a second argument (`cargo run --example gen_fuzz_seeds -- fuzz/seeds tests/regressions`) it
//! also writes the `review_*.bnw` cases of the regression corpus: inputs found by reading the code
//! rather than by the fuzzer, with their `.expect` files (see `tests/regressions/README.md`).
//!
//! Output is deterministic (no time or OS randomness), so re-running it changes nothing.

use std::path::{Path, PathBuf};

use bnfold::format::{Activation, BatchNormTensors, DType, Writer};
use bnfold::synth::Rng;

/// Values `offset + scale * u`, `u` uniform in [-1, 1), from the one seeded generator.
fn vals(r: &mut Rng, n: usize, scale: f32, offset: f32) -> Vec<f32> {
    r.uniform_vec(n, offset - scale, offset + scale)
}

type Result<T> = std::result::Result<T, bnfold::Error>;

fn dense(
    w: &mut Writer,
    r: &mut Rng,
    name: &str,
    dt: DType,
    inp: usize,
    out: usize,
    bias: bool,
) -> Result<()> {
    let weight = vals(r, out * inp, 0.5, 0.0);
    let b = vals(r, out, 0.1, 0.1);
    w.add_dense(name, dt, out, inp, &weight, bias.then_some(&b[..]))?;
    Ok(())
}

fn bn(
    w: &mut Writer,
    r: &mut Rng,
    name: &str,
    dt: DType,
    n: usize,
    eps: f64,
    affine: bool,
) -> Result<()> {
    let gamma = vals(r, n, 0.5, 1.0);
    let beta = vals(r, n, 0.2, 0.0);
    let mean = vals(r, n, 1.0, 0.0);
    let var = vals(r, n, 0.5, 1.0);
    let (g, b) = if affine {
        (Some(&gamma[..]), Some(&beta[..]))
    } else {
        (None, None)
    };
    w.add_batch_norm(name, dt, eps, g, b, &mean, &var)?;
    Ok(())
}

/// The tutorial's network, narrowed: input BN, hidden Dense -> BN -> act blocks, Dense -> 1.
fn tutorial(
    r: &mut Rng,
    width: usize,
    hidden: usize,
    act: Activation,
    dt: DType,
) -> Result<Writer> {
    let mut w = Writer::new(1);
    w.metadata("producer", "gen_fuzz_seeds");
    w.metadata("source", "tutorial network, narrowed");
    bn(&mut w, r, "input_bn", dt, 1, 1e-3, true)?;
    let mut inp = 1;
    for i in 0..hidden {
        dense(&mut w, r, &format!("l{i}.dense"), dt, inp, width, true)?;
        bn(&mut w, r, &format!("l{i}.bn"), dt, width, 1e-3, true)?;
        w.activation(&format!("l{i}.act"), act)?;
        inp = width;
    }
    dense(&mut w, r, "out", dt, inp, 1, true)?;
    Ok(w)
}

fn seeds() -> Result<Vec<(String, Vec<u8>)>> {
    let mut r = Rng::new(0x5EED_B4F0);
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut push = |name: &str, w: &Writer| -> Result<()> {
        out.push((name.to_owned(), w.to_bytes()?));
        Ok(())
    };

    push(
        "tutorial_relu_f32",
        &tutorial(&mut r, 4, 3, Activation::Relu, DType::F32)?,
    )?;
    push(
        "tutorial_tanh_f16",
        &tutorial(&mut r, 5, 2, Activation::Tanh, DType::F16)?,
    )?;
    push(
        "tutorial_relu_bf16",
        &tutorial(&mut r, 3, 2, Activation::Relu, DType::BF16)?,
    )?;

    // Every activation after a dense layer, each in its own small file.
    for a in Activation::ALL {
        let mut w = Writer::new(3);
        dense(&mut w, &mut r, "fc", DType::F32, 3, 4, true)?;
        w.activation("act", a)?;
        push(&format!("act_{}", a.name()), &w)?;
    }

    // Dense without bias, BN without gamma/beta (Keras scale=False, center=False), eps 0 and 1e-5.
    let mut w = Writer::new(4);
    dense(&mut w, &mut r, "fc", DType::F32, 4, 4, false)?;
    bn(&mut w, &mut r, "bn", DType::F32, 4, 1e-5, false)?;
    push("dense_nobias_bn_noaffine", &w)?;

    // BN before a dense layer (folds forward), and Dense -> act -> BN -> Dense (Keras style).
    let mut w = Writer::new(3);
    bn(&mut w, &mut r, "bn0", DType::F32, 3, 1e-3, true)?;
    dense(&mut w, &mut r, "fc0", DType::F32, 3, 2, true)?;
    w.activation("relu", Activation::Relu)?;
    bn(&mut w, &mut r, "bn1", DType::F16, 2, 0.0, true)?;
    dense(&mut w, &mut r, "fc1", DType::F32, 2, 2, true)?;
    push("bn_before_dense", &w)?;

    // Consecutive BNs (composed), and a BN with no dense neighbour (an affine epilogue).
    let mut w = Writer::new(2);
    dense(&mut w, &mut r, "fc", DType::F32, 2, 3, true)?;
    bn(&mut w, &mut r, "bn_a", DType::F32, 3, 1e-3, true)?;
    bn(&mut w, &mut r, "bn_b", DType::BF16, 3, 1e-3, true)?;
    w.activation("tanh", Activation::Tanh)?;
    bn(&mut w, &mut r, "bn_alone", DType::F32, 3, 1e-3, true)?;
    push("bn_chain_and_alone", &w)?;

    // BN only, no dense layer at all.
    let mut w = Writer::new(5);
    bn(&mut w, &mut r, "bn", DType::F16, 5, 1e-3, true)?;
    w.activation("sigmoid", Activation::Sigmoid)?;
    push("bn_only", &w)?;

    // No layers (the identity network), with metadata.
    let mut w = Writer::new(2);
    w.metadata("producer", "gen_fuzz_seeds");
    w.metadata("note", "no layers: the identity");
    push("empty_network", &w)?;

    // Tensors in the table that no layer uses, and mixed dtypes in one layer.
    let mut w = Writer::new(2);
    w.tensor("unused", DType::F16, &[2, 2], &[1.0, 2.0, 3.0, 4.0])?;
    let wt = w.tensor("fc.weight", DType::BF16, &[2, 2], &[0.5, -0.5, 0.25, 1.0])?;
    let bt = w.tensor("fc.bias", DType::F32, &[2], &[0.1, -0.1])?;
    w.dense("fc", 2, 2, wt, Some(bt))?;
    push("unused_tensor_mixed_dtypes", &w)?;

    // A deeper, slightly wider one (a few KB).
    let mut w = Writer::new(8);
    let mut inp = 8;
    for (i, width) in [16, 12, 8, 4].into_iter().enumerate() {
        dense(
            &mut w,
            &mut r,
            &format!("fc{i}"),
            DType::F32,
            inp,
            width,
            true,
        )?;
        bn(
            &mut w,
            &mut r,
            &format!("bn{i}"),
            DType::F32,
            width,
            1e-3,
            true,
        )?;
        w.activation(&format!("act{i}"), Activation::GeluErf)?;
        inp = width;
    }
    w.activation("softmax", Activation::Softmax)?;
    push("deep_gelu_softmax", &w)?;

    // Well-formed files of invalid networks, so validation errors are reached from the seeds.
    let mut w = Writer::new(2);
    dense(&mut w, &mut r, "fc", DType::F32, 2, 2, true)?;
    let mean = w.tensor("bn.moving_mean", DType::F32, &[2], &[0.0, f32::NAN])?;
    let var = w.tensor("bn.moving_variance", DType::F32, &[2], &[1.0, 1.0])?;
    w.batch_norm(
        "bn",
        2,
        1e-3,
        BatchNormTensors {
            gamma: None,
            beta: None,
            moving_mean: mean,
            moving_variance: var,
        },
    )?;
    push("invalid_nan_mean", &w)?;

    let mut w = Writer::new(3);
    dense(&mut w, &mut r, "fc", DType::F32, 2, 2, true)?;
    push("invalid_width_mismatch", &w)?;

    let mut w = Writer::new(2);
    w.activation("softmax", Activation::Softmax)?;
    w.activation("relu", Activation::Relu)?;
    push("invalid_softmax_not_last", &w)?;

    // Format 1.1: affine layers (scale and shift, scale only, shift only) around a dense layer and
    // beside a BN, so the 1.1 reader path and the BN/affine composition are reached from the seeds.
    let mut w = Writer::new(3);
    let (s, t) = (vals(&mut r, 3, 0.5, 1.0), vals(&mut r, 3, 0.2, 0.0));
    w.add_affine("in_affine", DType::F32, 3, Some(&s), Some(&t))?;
    dense(&mut w, &mut r, "fc", DType::F32, 3, 4, true)?;
    bn(&mut w, &mut r, "bn", DType::F32, 4, 1e-3, true)?;
    let s = vals(&mut r, 4, 0.5, 1.0);
    w.add_affine("scale_only", DType::F16, 4, Some(&s), None)?;
    w.activation("relu", Activation::Relu)?;
    let t = vals(&mut r, 4, 0.2, 0.0);
    w.add_affine("shift_only", DType::BF16, 4, None, Some(&t))?;
    push("affine_v1_1", &w)?;

    Ok(out)
}

/// A regression case: name, bytes, expectation (`ok` or `error: TEXT`, none for "no panic").
type Case = (String, Vec<u8>, Option<&'static str>);

/// Regression cases found by review.
fn review_cases() -> Result<Vec<Case>> {
    let mut out = Vec::new();

    // One f16 [64, 64] weight (8 KiB) shared by 512 dense layers: before the reader refused shared
    // tensors, compiling this 19 KB file built 512 f32 copies (8 MiB); the same trick with 4096
    // layers over a 1 MiB tensor asked for 8 GiB.
    let mut w = Writer::new(64);
    let wt = w.tensor("shared", DType::F16, &[64, 64], &vec![0.01; 64 * 64])?;
    for i in 0..512 {
        w.dense(&format!("d{i}"), 64, 64, wt, None)?;
    }
    out.push((
        "review_shared_weight_amplification".into(),
        w.to_bytes()?,
        Some("error: already uses"),
    ));

    // A 2^20-wide input with no dense layer: loads (widths are the caller's business), runs exactly.
    let mut w = Writer::new(1 << 20);
    w.activation("relu", Activation::Relu)?;
    out.push((
        "review_wide_input_no_dense".into(),
        w.to_bytes()?,
        Some("ok"),
    ));

    // Denormal variance with eps 0: 1/sqrt(var) is about 3.7e22, finite in f32.
    let mut w = Writer::new(2);
    w.add_dense("fc", DType::F32, 2, 2, &[1e-20, 0.0, 0.0, 1e-20], None)?;
    let tiny = f32::from_bits(1);
    w.add_batch_norm("bn", DType::F32, 0.0, None, None, &[0.0; 2], &[tiny; 2])?;
    out.push(("review_denormal_variance_eps0".into(), w.to_bytes()?, None));

    // Five BNs in a row, each scaling by ~1e22: their composition overflows f64 to infinity.
    // Without a dense layer it becomes an affine epilogue of infinities (inf/NaN outputs, no panic).
    let mut w = Writer::new(2);
    overflowing_bn_chain(&mut w)?;
    out.push(("review_bn_chain_overflow".into(), w.to_bytes()?, None));

    // The same chain before a dense layer: folding must report the overflow, not run with NaNs.
    let mut w = Writer::new(2);
    overflowing_bn_chain(&mut w)?;
    w.add_dense("fc", DType::F32, 1, 2, &[1.0, -1.0], Some(&[0.0]))?;
    out.push((
        "review_bn_chain_overflow_into_dense".into(),
        w.to_bytes()?,
        None,
    ));

    // NaN in an f16 variance is named with the layer and the feature.
    let mut w = Writer::new(3);
    w.add_batch_norm(
        "bn",
        DType::F16,
        1e-3,
        None,
        None,
        &[0.0; 3],
        &[1.0, f32::NAN, 1.0],
    )?;
    out.push((
        "review_nan_variance_f16".into(),
        w.to_bytes()?,
        Some("error: non-finite value NaN at index 1"),
    ));

    // A header cut short.
    let mut w = Writer::new(1);
    w.activation("relu", Activation::Relu)?;
    let mut b = w.to_bytes()?;
    b.truncate(40);
    out.push((
        "review_truncated_header".into(),
        b,
        Some("error: shorter than the 64-byte header"),
    ));

    // Leaky ReLU with an infinite slope.
    let mut w = Writer::new(1);
    w.activation(
        "leaky",
        Activation::LeakyRelu {
            alpha: f32::INFINITY,
        },
    )?;
    out.push((
        "review_leaky_relu_infinite_slope".into(),
        w.to_bytes()?,
        Some("error: activation parameter inf"),
    ));

    Ok(out)
}

fn write_dir(dir: &Path, files: &[(String, Vec<u8>)], ext: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in files {
        std::fs::write(dir.join(format!("{name}{ext}")), bytes)?;
    }
    Ok(())
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".into()),
    );
    let mut parse_seeds = seeds()?;
    // Real models, when the repository has any.
    if let Ok(entries) = std::fs::read_dir("models") {
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "bnw"))
            .collect();
        paths.sort();
        for p in paths {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            parse_seeds.push((format!("model_{stem}"), std::fs::read(&p)?));
        }
    }
    write_dir(&root.join("parse_bytes"), &parse_seeds, ".bnw")?;
    if let Some(reg) = std::env::args().nth(2).map(PathBuf::from) {
        std::fs::create_dir_all(&reg)?;
        let cases = review_cases()?;
        for (name, bytes, expect) in &cases {
            std::fs::write(reg.join(format!("{name}.bnw")), bytes)?;
            if let Some(e) = expect {
                std::fs::write(reg.join(format!("{name}.expect")), format!("{e}\n"))?;
            }
        }
        eprintln!("wrote {} review cases under {}", cases.len(), reg.display());
    }

    let mut r = Rng::new(0xA5B1_7A50);
    let structured: Vec<(String, Vec<u8>)> = (0..16)
        .map(|i| {
            let len = 16 + 24 * i;
            let bytes = (0..len).map(|_| r.next_u64() as u8).collect();
            (format!("random_{i:02}"), bytes)
        })
        .collect();
    write_dir(&root.join("structured"), &structured, ".bin")?;
    eprintln!(
        "wrote {} parse_bytes seeds and {} structured seeds under {}",
        parse_seeds.len(),
        structured.len(),
        root.display()
    );
    Ok(())
}

/// Five 2-feature BNs in a row, each scaling by about 3e38 / sqrt(denormal) ~ 1e60: their composition
/// overflows f64.
fn overflowing_bn_chain(w: &mut Writer) -> bnfold::Result<()> {
    let tiny = f32::from_bits(1);
    for i in 0..5 {
        w.add_batch_norm(
            &format!("bn{i}"),
            DType::F32,
            0.0,
            Some(&[3e38; 2]),
            None,
            &[0.5; 2],
            &[tiny; 2],
        )?;
    }
    Ok(())
}
