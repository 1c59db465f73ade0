//! Whole networks large enough for the multi-threaded kernel paths (layers above
//! `kernels::PARALLEL_MIN_MACS`), with random shapes, activations, storage types and BN
//! placements: the plan gives the same bits in a 1-thread and a 2-thread pool (the parallel split
//! changes which thread computes a tile, never the order of a sum), and both paths pass
//! `bnfold::verify` against the f64 reference.
//!
//! Narrow networks (weights within half an L2) take the other split: a large call runs as parts
//! of its rows, one per thread, each through every step; the second property checks that those
//! give the bits of the undivided call, with pools of 1, 2 and 3 threads.
//!
//! The fuzz targets' inputs (8 KB) are too small to reach these paths; this test is what does.

use bnfold::kernels::PARALLEL_MIN_MACS;
use bnfold::synth::{Layer, Stats};
use bnfold::{Activation, DType, Model, Options, Plan, VerifyOptions};
use proptest::prelude::*;

/// A rayon pool of `threads` threads of its own.
fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// The seeded network of `layers` over `input` features stored as `dtype`, and `batch` rows of
/// input for it.
fn model_and_input(
    input: usize,
    layers: &[Layer],
    batch: usize,
    dtype: DType,
    seed: u64,
) -> (Model, Vec<f32>) {
    let bytes = bnfold::synth::network(input, layers, seed, dtype, Stats::default()).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    (model, bnfold::synth::input(batch, input, 2.0, seed))
}

/// `plan` on `batch` rows of `x`, in `pool`.
fn run_in(pool: &rayon::ThreadPool, plan: &Plan, x: &[f32], batch: usize) -> Vec<f32> {
    pool.install(|| plan.session().run(x, batch).unwrap().to_vec())
}

/// Any activation but softmax (which may only end a network).
fn elementwise_activation() -> impl Strategy<Value = Activation> {
    proptest::sample::select(
        Activation::ALL
            .into_iter()
            .filter(|a| a.is_elementwise())
            .collect::<Vec<_>>(),
    )
}

/// A network with at least one layer above the parallel threshold at `batch` rows.
fn net() -> impl Strategy<Value = (usize, Vec<Layer>, usize, DType, u64)> {
    let act = elementwise_activation();
    (
        33usize..400,
        prop::collection::vec((65usize..700, act, any::<bool>(), any::<bool>()), 1..3),
        1usize..40,
        prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)],
        any::<u64>(),
        any::<bool>(),
    )
        .prop_filter_map(
            "one layer must reach the parallel threshold",
            |(input, hidden, batch, dtype, seed, input_bn)| {
                let mut layers = Vec::new();
                if input_bn {
                    layers.push(Layer::Bn);
                }
                let mut width = input;
                let mut biggest = 0;
                for (out, act, bn, bias) in hidden {
                    layers.push(if bias {
                        Layer::Dense(out)
                    } else {
                        Layer::DenseNoBias(out)
                    });
                    if bn {
                        layers.push(Layer::Bn);
                    }
                    layers.push(Layer::Act(act));
                    biggest = biggest.max(width * out);
                    width = out;
                }
                layers.push(Layer::Dense(7));
                // Widen the batch until the biggest layer is above the threshold.
                let batch = batch.max(PARALLEL_MIN_MACS.div_ceil(biggest));
                (batch <= 256).then_some((input, layers, batch, dtype, seed))
            },
        )
}

/// A narrow network (every width below 64, so its weights are a few KiB) and a batch large
/// enough for the whole call to reach the parallel threshold.
fn narrow_net() -> impl Strategy<Value = (usize, Vec<Layer>, usize, DType, u64)> {
    let act = elementwise_activation();
    (
        1usize..64,
        prop::collection::vec((1usize..64, act, any::<bool>()), 1..5),
        (1usize..8, any::<bool>()),
        0usize..64,
        prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)],
        any::<u64>(),
    )
        .prop_map(|(input, hidden, (out, softmax), extra, dtype, seed)| {
            let mut layers = vec![Layer::Bn];
            let (mut width, mut macs) = (input, 0);
            for (w, act, bn) in hidden {
                layers.push(Layer::Dense(w));
                if bn {
                    layers.push(Layer::Bn);
                }
                layers.push(Layer::Act(act));
                macs += width * w;
                width = w;
            }
            layers.push(Layer::Dense(out));
            if softmax {
                layers.push(Layer::Act(Activation::Softmax));
            }
            macs += width * out;
            // At least the threshold, plus a few rows so that the last part is a short one.
            let batch = PARALLEL_MIN_MACS.div_ceil(macs) + extra;
            (input, layers, batch, dtype, seed)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn narrow_plans_split_by_rows_give_the_same_bits(
        (input, layers, batch, dtype, seed) in narrow_net()
    ) {
        let (model, x) = model_and_input(input, &layers, batch, dtype, seed);
        for opts in [Options::folded(), Options::unfolded()] {
            let plan = model.compile(&opts).unwrap();
            let y1 = run_in(&pool(1), &plan, &x, batch);
            prop_assert_eq!(y1.len(), batch * plan.output_features());
            for n in [2, 3] {
                let p = pool(n);
                // The split this property is about is taken.
                prop_assert!(p.install(|| plan.rows_per_part(batch)).is_some());
                let y = run_in(&p, &plan, &x, batch);
                prop_assert!(
                    y1.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{:?} {layers:?} batch {batch}: 1 and {n} threads differ", opts.mode
                );
            }
        }
    }

    #[test]
    fn parallel_plans_give_the_same_bits_and_pass_verify(
        (input, layers, batch, dtype, seed) in net()
    ) {
        let (model, x) = model_and_input(input, &layers, batch, dtype, seed);
        let (one, two) = (pool(1), pool(2));
        for opts in [Options::folded(), Options::unfolded()] {
            let plan = model.compile(&opts).unwrap();
            let y1 = run_in(&one, &plan, &x, batch);
            let y2 = run_in(&two, &plan, &x, batch);
            prop_assert!(
                y1.iter().zip(&y2).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{:?} {layers:?} batch {batch}: 1 and 2 threads differ", opts.mode
            );
        }
        // The default tolerance (see src/verify.rs): these layers are at most 700 wide.
        let report = two.install(|| bnfold::verify(&model, &x, batch, &VerifyOptions::default()))
            .unwrap();
        prop_assert!(report.passed(), "{layers:?} batch {batch}: worst {:e}", report.worst);
    }
}
