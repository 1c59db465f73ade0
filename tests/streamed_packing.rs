//! Compiling a plan streams each dense layer's folded rows into its packed panels (the f32 copy of
//! a whole layer never exists); the values it packs must be exactly those of the route that
//! folded a whole layer first and packed it afterwards.
//!
//! Checks, on small seeded models (every stored type, odd widths, a narrow layer, composed BN
//! and affine runs, forward and backward folds) and on the fold-overflow cases of
//! `docs/BATCHNORM.md` ("Folding that could overflow"), for f32, f16 and bf16 weights:
//! - `lowered_values_are_unchanged`: the lowering's values (every folded weight and bias, every
//!   elementwise op, or the error) hash to what the code before the streaming route produced
//!   (hashes of their `Debug` text, which prints each f32 exactly; recorded on commit 6b824cd);
//! - `streamed_plans_pack_the_same_bits_as_whole_layers`: every dense kernel of a compiled plan
//!   holds the same packed bytes as `DenseKernel::with_weights` over the lowering's whole
//!   `FoldedDense`, on every supported kernel path (and `a_kernel_built_row_by_row_packs_like_one_built_at_once`
//!   checks the row-by-row builder alone on a spread of shapes);
//! - on layers large enough that their blocks of rows fold and pack on the rayon pool:
//!   `large_layers_fold_and_pack_the_same_bits_on_every_pool` (pools of 1 and 3 threads) and
//!   `a_large_layer_names_its_first_failing_row_on_every_pool`.

mod common;

use bnfold::fold::{LoweredStep, lower};
use bnfold::{Activation, DType, Model, Options};
use common::{L, Stats, network};

/// FNV-1a, 64-bit: enough to tell two long texts apart.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A dense layer `inputs -> outputs` followed by a BN whose first feature has scale 3e38: its
/// folded weights fit f32 (and bf16, not f16: an f16 plan is a load error) but its folded
/// accumulation could overflow, so the lowering keeps the layer and the BN unfolded (issue 11).
/// The rest are ordinary seeded values.
fn overflow_backward(inputs: usize, outputs: usize) -> Vec<u8> {
    let mut rng = bnfold::synth::Rng::new(11);
    let mut weight = rng.uniform_vec(inputs * outputs, -0.5, 0.5);
    weight[..inputs].iter_mut().for_each(|w| *w = 1.0);
    let bias = rng.uniform_vec(outputs, -0.5, 0.5);
    let mut gamma = rng.uniform_vec(outputs, 0.5, 1.5);
    gamma[0] = 3e38;
    let beta = rng.uniform_vec(outputs, -0.5, 0.5);
    let mut mean = rng.uniform_vec(outputs, -1.0, 1.0);
    let mut var = rng.uniform_vec(outputs, 0.25, 2.0);
    (mean[0], var[0]) = (0.5, 1.0);
    let mut w = bnfold::format::Writer::new(inputs);
    w.add_dense("fc", DType::F32, outputs, inputs, &weight, Some(&bias))
        .unwrap();
    w.add_batch_norm(
        "bn",
        DType::F32,
        0.0,
        Some(&gamma),
        Some(&beta),
        &mean,
        &var,
    )
    .unwrap();
    w.activation("act", Activation::Relu).unwrap();
    w.add_dense(
        "out",
        DType::F32,
        9,
        outputs,
        &rng.uniform_vec(9 * outputs, -1.0, 1.0),
        None,
    )
    .unwrap();
    w.to_bytes().unwrap()
}

/// An ordinary BN after a dense layer whose inputs can be huge (a leaky ReLU of slope 1e30 before
/// it): its folded weights are small (every type holds them) but the bound of its accumulation
/// exceeds f32's range, so it stays unfolded for f32, f16 and bf16 alike.
fn overflow_by_bound(inputs: usize, outputs: usize) -> Vec<u8> {
    let mut rng = bnfold::synth::Rng::new(14);
    let mut weight = rng.uniform_vec(inputs * outputs, -0.5, 0.5);
    weight[..inputs].iter_mut().for_each(|w| *w = 10.0);
    let bias = rng.uniform_vec(outputs, -0.5, 0.5);
    let gamma = rng.uniform_vec(outputs, 0.5, 1.5);
    let beta = rng.uniform_vec(outputs, -0.5, 0.5);
    let mean = rng.uniform_vec(outputs, -1.0, 1.0);
    let var = rng.uniform_vec(outputs, 0.25, 2.0);
    let mut w = bnfold::format::Writer::new(inputs);
    w.activation("leaky", Activation::LeakyRelu { alpha: 1e30 })
        .unwrap();
    w.add_dense("fc", DType::F32, outputs, inputs, &weight, Some(&bias))
        .unwrap();
    w.add_batch_norm(
        "bn",
        DType::F32,
        1e-3,
        Some(&gamma),
        Some(&beta),
        &mean,
        &var,
    )
    .unwrap();
    w.activation("act", Activation::Relu).unwrap();
    w.to_bytes().unwrap()
}

/// The same on the input side: a BN of scale 3e38 (mean 0) folded forward into the dense layer
/// after it would overflow its products, so both stay unfolded (f16 cannot hold the folded
/// weights: an error).
fn overflow_forward(inputs: usize, outputs: usize) -> Vec<u8> {
    let mut rng = bnfold::synth::Rng::new(12);
    let mut w = bnfold::format::Writer::new(inputs);
    w.add_batch_norm(
        "bn",
        DType::F32,
        0.0,
        Some(&vec![3e38; inputs]),
        None,
        &vec![0.0; inputs],
        &vec![1.0; inputs],
    )
    .unwrap();
    let weight = rng.uniform_vec(inputs * outputs, -1.0, 1.0);
    let bias = rng.uniform_vec(outputs, -0.5, 0.5);
    w.add_dense("fc", DType::F32, outputs, inputs, &weight, Some(&bias))
        .unwrap();
    w.to_bytes().unwrap()
}

/// A folded weight of 1e5 (beyond f16's 65504): an f16 plan is a load error naming the feature,
/// f32 and bf16 plans fold it.
fn beyond_f16() -> Vec<u8> {
    let mut rng = bnfold::synth::Rng::new(13);
    let mut weight = rng.uniform_vec(24 * 10, -1.0, 1.0);
    weight[5 * 10 + 3] = 1e5;
    let mut w = bnfold::format::Writer::new(10);
    w.add_dense("fc", DType::F32, 24, 10, &weight, None)
        .unwrap();
    w.to_bytes().unwrap()
}

/// The models both tests run, by name.
fn models() -> Vec<(String, Vec<u8>)> {
    let layers = [
        L::Bn,
        L::Dense(37),
        L::Bn,
        L::Act(Activation::Relu),
        L::Dense(40),
        L::BnBare,
        L::Act(Activation::Tanh),
        L::Bn,
        L::Dense(3),
        L::Bn,
        L::Affine(true, true),
        L::DenseNoBias(21),
        L::Bn,
        L::Act(Activation::Sigmoid),
        L::Dense(50),
    ];
    let mut v: Vec<(String, Vec<u8>)> = [DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .map(|dtype| {
            let stats = Stats::default();
            (
                format!("seeded {}", dtype.name()),
                network(13, &layers, 5, dtype, stats),
            )
        })
        .collect();
    v.push(("overflow backward".into(), overflow_backward(3, 20)));
    v.push(("overflow by bound".into(), overflow_by_bound(24, 20)));
    v.push(("overflow forward".into(), overflow_forward(5, 19)));
    v.push(("beyond f16".into(), beyond_f16()));
    v
}

/// Every step the lowering hands out, or its error.
fn lowered(model: &Model, opts: &Options) -> Result<Vec<LoweredStep>, String> {
    let mut steps = Vec::new();
    lower(model, opts, &mut |s| {
        steps.push(s);
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    Ok(steps)
}

fn options() -> Vec<(&'static str, Options)> {
    let mut v = Vec::new();
    for (mode, base) in [
        ("folded", Options::folded()),
        ("unfolded", Options::unfolded()),
    ] {
        for w in [DType::F32, DType::F16, DType::BF16] {
            v.push((mode, base.clone().with_weights(w)));
        }
    }
    v
}

/// Hashes of the lowering's `Debug` text, recorded with the code before the streaming route
/// (commit 6b824cd), in the order of `models()` x `options()`.
const GOLDEN: &[(&str, &str, &str, u64)] = &[
    ("seeded f32", "folded", "f32", 0x15a04fd4af50574a),
    ("seeded f32", "folded", "f16", 0x97e1010b71be898f),
    ("seeded f32", "folded", "bf16", 0xb699ea0080e1c16d),
    ("seeded f32", "unfolded", "f32", 0x42bb8561d5aed030),
    ("seeded f32", "unfolded", "f16", 0x298ba5036745c712),
    ("seeded f32", "unfolded", "bf16", 0xd338fe90671ae1c9),
    ("seeded f16", "folded", "f32", 0xa3ad07c9d43659eb),
    ("seeded f16", "folded", "f16", 0x9f7cad3bddb9f776),
    ("seeded f16", "folded", "bf16", 0x1e1bce8d31334046),
    ("seeded f16", "unfolded", "f32", 0xfa0ada37c6a3a9c8),
    ("seeded f16", "unfolded", "f16", 0xfa0ada37c6a3a9c8),
    ("seeded f16", "unfolded", "bf16", 0x74c49dd87517811c),
    ("seeded bf16", "folded", "f32", 0x8f3624ae2147c9b8),
    ("seeded bf16", "folded", "f16", 0xab304c8305ff4158),
    ("seeded bf16", "folded", "bf16", 0xaf3df319293cc497),
    ("seeded bf16", "unfolded", "f32", 0x9e9106caad19b489),
    ("seeded bf16", "unfolded", "f16", 0x9e9106caad19b489),
    ("seeded bf16", "unfolded", "bf16", 0x9e9106caad19b489),
    ("overflow backward", "folded", "f32", 0xd85b676e7044bbd2),
    ("overflow backward", "folded", "f16", 0x890f0c6541913554),
    ("overflow backward", "folded", "bf16", 0xb4244f6335ec4741),
    ("overflow backward", "unfolded", "f32", 0xd85b676e7044bbd2),
    ("overflow backward", "unfolded", "f16", 0x39380e3052342d3b),
    ("overflow backward", "unfolded", "bf16", 0xb4244f6335ec4741),
    ("overflow by bound", "folded", "f32", 0x30cfb6db0c244c6c),
    ("overflow by bound", "folded", "f16", 0xa9b2ac1a145db1f0),
    ("overflow by bound", "folded", "bf16", 0x5ad409dda34e70d4),
    ("overflow by bound", "unfolded", "f32", 0x30cfb6db0c244c6c),
    ("overflow by bound", "unfolded", "f16", 0xa9b2ac1a145db1f0),
    ("overflow by bound", "unfolded", "bf16", 0x5ad409dda34e70d4),
    ("overflow forward", "folded", "f32", 0xc4287a3461b90fc2),
    ("overflow forward", "folded", "f16", 0x1f89caf72f534f63),
    ("overflow forward", "folded", "bf16", 0x1a98c12ef423365b),
    ("overflow forward", "unfolded", "f32", 0xc4287a3461b90fc2),
    ("overflow forward", "unfolded", "f16", 0xe6acd7d9239bbcde),
    ("overflow forward", "unfolded", "bf16", 0x1a98c12ef423365b),
    ("beyond f16", "folded", "f32", 0x9f407369e1344c3e),
    ("beyond f16", "folded", "f16", 0x95967f2db4dc2d77),
    ("beyond f16", "folded", "bf16", 0x0cd1989a62a770b6),
    ("beyond f16", "unfolded", "f32", 0x9f407369e1344c3e),
    ("beyond f16", "unfolded", "f16", 0x95967f2db4dc2d77),
    ("beyond f16", "unfolded", "bf16", 0x0cd1989a62a770b6),
];

#[test]
fn lowered_values_are_unchanged() {
    let mut got = Vec::new();
    for (name, bytes) in models() {
        let model = Model::from_bytes(&bytes).unwrap();
        for (mode, opts) in options() {
            let text = format!("{:?}", lowered(&model, &opts));
            got.push((name.clone(), mode, opts.weights.name(), fnv(&text)));
        }
    }
    let printed: String = got
        .iter()
        .map(|(n, m, w, h)| format!("    ({n:?}, {m:?}, {w:?}, {h:#018x}),\n"))
        .collect();
    let want: Vec<_> = GOLDEN
        .iter()
        .map(|&(n, m, w, h)| (n.to_owned(), m, w, h))
        .collect();
    assert!(got == want, "got:\n{printed}");
    // The fold-overflow cases do what their names say (else they would test nothing).
    for (name, bytes) in models().into_iter().filter(|m| m.0.starts_with("overflow")) {
        let model = Model::from_bytes(&bytes).unwrap();
        for (mode, opts) in options().into_iter().filter(|o| o.0 == "folded") {
            let kept_bn = match lowered(&model, &opts) {
                Ok(steps) => steps.iter().any(|s| {
                    matches!(
                        s.op,
                        bnfold::fold::Lowered::Elementwise(
                            bnfold::kernels::EpilogueOp::BatchNorm { .. }
                        )
                    )
                }),
                // 3e38 is beyond f16.
                Err(e) => {
                    assert!(
                        name != "overflow by bound" && opts.weights == DType::F16,
                        "{e}"
                    );
                    true
                }
            };
            assert!(
                kept_bn,
                "{name} {mode} {}: every BN folded",
                opts.weights.name()
            );
        }
    }
}

#[test]
fn streamed_plans_pack_the_same_bits_as_whole_layers() {
    use bnfold::kernels::KernelChoice;
    let x = bnfold::synth::input(3, 24, 2.0, 3);
    let mut dense_layers = 0;
    for (name, bytes) in models() {
        let model = Model::from_bytes(&bytes).unwrap();
        let x = &x[..3 * model.input_features()];
        for (mode, opts) in options() {
            for isa in bnfold::Isa::supported() {
                let opts = opts.clone().with_kernel(KernelChoice::Force(isa));
                let case = format!("{name} {mode} {} {isa}", opts.weights.name());
                let (steps, plan) = match (lowered(&model, &opts), model.compile(&opts)) {
                    (Ok(steps), Ok(plan)) => (steps, plan),
                    (Err(a), Err(b)) => {
                        assert_eq!(a, b.to_string(), "{case}: the same error");
                        continue;
                    }
                    (a, b) => panic!("{case}: {:?} vs {:?}", a.err(), b.err()),
                };
                // The route before: the whole folded layer, then packed at once.
                dense_layers += assert_packed_as_whole_layers(&plan, &steps, &opts, &case);
                // And the plan runs: outputs of the right length (its values are the
                // kernels' and the lowering's, compared above and in `lowered_values_are_unchanged`).
                let mut session = plan.session();
                let y = session.run(x, 3).unwrap();
                assert_eq!(y.len(), 3 * plan.output_features(), "{case}");
            }
        }
    }
    assert!(dense_layers > 100, "{dense_layers} layers compared");
}

/// A kernel filled row by row holds the same bytes as one packed from the whole matrix, for every
/// stored type, supported path and a spread of shapes (narrow layers, partial panels, odd depths).
#[test]
fn a_kernel_built_row_by_row_packs_like_one_built_at_once() {
    use bnfold::kernels::{DenseKernel, KernelChoice};
    let mut rng = bnfold::synth::Rng::new(21);
    for isa in bnfold::Isa::supported() {
        for weights in [DType::F32, DType::F16, DType::BF16] {
            for (k, n) in [
                (1, 1),
                (3, 2),
                (7, 9),
                (13, 16),
                (17, 33),
                (64, 40),
                (5, 100),
            ] {
                // Values already in the stored type, as a plan's folded weights are.
                let w: Vec<f32> = rng
                    .uniform_vec(n * k, -2.0, 2.0)
                    .into_iter()
                    .map(|v| bnfold::fold::round_to(weights, f64::from(v)))
                    .collect();
                let b = rng.uniform_vec(n, -1.0, 1.0);
                let choice = KernelChoice::Force(isa);
                let whole = DenseKernel::with_weights(k, n, &w, &b, choice, weights);
                let mut built = DenseKernel::builder(k, n, choice, weights);
                for (row, &bias) in w.chunks_exact(k).zip(&b) {
                    built.push_row(row, bias);
                }
                assert_eq!(built.rows_pushed(), n);
                let built = built.finish();
                assert!(
                    built.same_packing(&whole),
                    "{isa} {} {k}x{n}",
                    weights.name()
                );
                assert_eq!(built.weight_type(), whole.weight_type());
                // In blocks of 5 rows (most starting inside a panel), then all rows at once.
                for block in [5, n] {
                    let mut built = DenseKernel::builder(k, n, choice, weights);
                    for (rows, biases) in w.chunks(block * k).zip(b.chunks(block)) {
                        built.push_rows(rows, biases);
                    }
                    assert!(
                        built.finish().same_packing(&whole),
                        "{isa} {} {k}x{n}, blocks of {block}",
                        weights.name()
                    );
                }
            }
        }
    }
}

/// Assert that every dense kernel of `plan` holds the packed bytes of `DenseKernel::with_weights`
/// over the whole folded layer of `steps` (the lowering's values, packed at once); the number of
/// dense layers compared.
fn assert_packed_as_whole_layers(
    plan: &bnfold::Plan,
    steps: &[LoweredStep],
    opts: &Options,
    case: &str,
) -> usize {
    use bnfold::fold::Lowered;
    use bnfold::kernels::DenseKernel;
    let whole: Vec<DenseKernel> = steps
        .iter()
        .filter_map(|s| match &s.op {
            Lowered::Dense(d) => Some(DenseKernel::with_weights(
                d.inputs,
                d.outputs,
                &d.weight,
                &d.bias,
                opts.kernel,
                opts.weights,
            )),
            _ => None,
        })
        .collect();
    let streamed: Vec<&DenseKernel> = plan.dense_kernels().collect();
    assert_eq!(streamed.len(), whole.len(), "{case}");
    for (i, (s, w)) in streamed.iter().zip(&whole).enumerate() {
        assert!(
            s.same_packing(w),
            "{case}: dense layer {i} packed differently"
        );
    }
    whole.len()
}

/// A pool of `threads` threads.
fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// Layers large enough that their blocks of rows fold and pack on the pool (blocks of at least
/// `PARALLEL_MIN_MACS` weights; the last block of each layer smaller, so on the calling thread):
/// the lowering's values and every kernel's packed bytes are the same on a pool of 1 and of 3
/// threads, and the same as packing the whole folded layer at once, on every supported path.
#[test]
fn large_layers_fold_and_pack_the_same_bits_on_every_pool() {
    use bnfold::fold::Lowered;
    use bnfold::kernels::{KernelChoice, PARALLEL_MIN_MACS};
    let layers = [
        L::Dense(1100),
        L::Bn,
        L::Act(Activation::Relu),
        L::Dense(1000),
        L::Bn,
    ];
    // Each layer holds at least two blocks' worth: a full block goes to the pool.
    const { assert!(1024 * 1100 >= 2 * PARALLEL_MIN_MACS && 1100 * 1000 >= 2 * PARALLEL_MIN_MACS) };
    let model =
        Model::from_bytes(&network(1024, &layers, 9, DType::F32, Stats::default())).unwrap();
    let (one, three) = (pool(1), pool(3));
    let mut opts_all: Vec<(&str, Options)> = [DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .map(|w| ("folded", Options::folded().with_weights(w)))
        .collect();
    opts_all.push(("unfolded", Options::unfolded()));
    for (mode, opts) in opts_all {
        // The lowering's values: bit for bit the same on both pools.
        let lowered_on = |p: &rayon::ThreadPool| p.install(|| lowered(&model, &opts)).unwrap();
        let (a, b) = (lowered_on(&one), lowered_on(&three));
        let dense = |steps: &[LoweredStep]| -> Vec<(Vec<u32>, Vec<u32>, usize, usize)> {
            steps
                .iter()
                .filter_map(|s| match &s.op {
                    Lowered::Dense(d) => Some((
                        d.weight.iter().map(|v| v.to_bits()).collect(),
                        d.bias.iter().map(|v| v.to_bits()).collect(),
                        d.inputs,
                        d.outputs,
                    )),
                    _ => None,
                })
                .collect()
        };
        let (da, db) = (dense(&a), dense(&b));
        assert_eq!(da.len(), 2, "{mode}");
        assert!(
            da == db,
            "{mode} {}: lowered values differ",
            opts.weights.name()
        );
        for isa in bnfold::Isa::supported() {
            let opts = opts.clone().with_kernel(KernelChoice::Force(isa));
            let case = format!("{mode} {} {isa}", opts.weights.name());
            let plans: Vec<_> = [&one, &three]
                .iter()
                .map(|p| p.install(|| model.compile(&opts)).unwrap())
                .collect();
            // Against the whole folded layers of the one-thread lowering, packed at once.
            for plan in &plans {
                assert_packed_as_whole_layers(plan, &a, &opts, &case);
            }
        }
    }
}

/// When several rows of a large layer fail (folded weights beyond f16's range at features 700 and
/// 900 of 1100, in blocks folded on the pool), the error names the first, whatever the pool.
#[test]
fn a_large_layer_names_its_first_failing_row_on_every_pool() {
    let (k, n) = (1024, 1100);
    let mut w = bnfold::format::Writer::new(k);
    w.add_dense("fc", DType::F32, n, k, &vec![1.0; k * n], None)
        .unwrap();
    let mut gamma = vec![1.0f32; n];
    gamma[700] = 1e5;
    gamma[900] = 1e5;
    w.add_batch_norm(
        "bn",
        DType::F32,
        0.0,
        Some(&gamma),
        None,
        &vec![0.0; n],
        &vec![1.0; n],
    )
    .unwrap();
    let model = Model::from_bytes(&w.to_bytes().unwrap()).unwrap();
    let opts = Options::folded().with_weights(DType::F16);
    for threads in [1, 3] {
        let e = pool(threads)
            .install(|| model.compile(&opts))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("feature 700") && !e.contains("feature 900"),
            "{threads} threads: {e}"
        );
    }
}
