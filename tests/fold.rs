//! BN folding: every placement, folded and unfolded, against the f64 reference.
//!
//! Tolerance: errors are measured normwise (max abs error over the largest reference magnitude of
//! the output). f32 has unit roundoff u = 2^-24 ~ 6e-8. Folding rounds each weight once (<= u
//! relative); a dot product of k <= 64 terms adds at most k*u relative to the sum of |terms|, and in
//! these He-scaled random networks that sum is within ~10x of the output scale. Over <= 4 dense
//! layers that bounds the error near 4 * 64 * 10 * u ~ 1.5e-4 in the worst case; typical errors are
//! 1e-7..1e-6. We assert 2e-5: 30x above what we measure, far below any real folding mistake (a
//! dropped scale, mean or shift changes outputs by O(1), i.e. a normwise error of 1e-2 or more).
//! Tiny variances (1e-6) amplify inputs and their rounding errors alike, so the normwise measure is
//! unchanged by them.

mod common;

use bnfold::{Activation, DType, Model, Options, reference};
use common::{L, Stats, input, network, normwise_error};

const TOL: f64 = 2e-5;

/// Run folded and unfolded plans and the reference; assert both within TOL of the reference and of
/// each other, through sessions (the serving path) and layer by layer through `bnfold::verify`
/// (the library's check, with the same tolerance). Returns the number of plan steps for the
/// folded plan.
///
/// TOL = 2e-5 on the normwise error: these layers are at most 64 wide, so a dot product carries at
/// most ~64 roundings of 2^-24 (4e-6) on the layer's scale, and the folded weights one more each;
/// 2e-5 leaves a factor of ~4 over that bound, while a folding mistake (a dropped scale, eps in the
/// wrong place) gives errors of order 1e-2 or more.
fn check(input_width: usize, layers: &[L], seed: u64, dtype: DType, stats: Stats) -> usize {
    let bytes = network(input_width, layers, seed, dtype, stats);
    let model = Model::from_bytes(&bytes).unwrap();
    let batch = 5;
    let x = input(batch, input_width, seed);
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let want = reference::forward(&model, &x64, batch).unwrap();
    let folded = model.compile(&Options::folded()).unwrap();
    let unfolded = model.compile(&Options::unfolded()).unwrap();
    // The model knows the plans' buffer width without compiling (bench and verify budget by it).
    assert_eq!(model.max_width(), folded.max_width());
    assert_eq!(model.max_width(), unfolded.max_width());
    let yf = folded.session().run(&x, batch).unwrap().to_vec();
    let yu = unfolded.session().run(&x, batch).unwrap().to_vec();
    let ef = normwise_error(&yf, &want);
    let eu = normwise_error(&yu, &want);
    let efu = normwise_error(&yf, &yu.iter().map(|&v| v as f64).collect::<Vec<_>>());
    assert!(
        ef <= TOL && eu <= TOL && efu <= 2.0 * TOL,
        "{layers:?} seed {seed} {dtype:?} {stats:?}: folded {ef:e}, unfolded {eu:e}, folded vs unfolded {efu:e}"
    );
    let report = bnfold::verify(
        &model,
        &x,
        batch,
        &bnfold::VerifyOptions::default().with_tolerance(TOL),
    )
    .unwrap();
    assert!(report.passed(), "{layers:?} seed {seed}: {report:#?}");
    assert_eq!(report.layers.len(), layers.len());
    // The report's output errors are the session's: the trace runs the same steps.
    assert_eq!(report.folded_vs_reference.normwise, ef);
    folded.num_steps()
}

const RELU: L = L::Act(Activation::Relu);

#[test]
fn dense_then_bn_folds_backward_into_one_step_per_block() {
    for &w in &[1, 3, 17, 30] {
        let steps = check(
            w,
            &[
                L::Dense(w),
                L::Bn,
                RELU,
                L::Dense(3),
                L::Bn,
                RELU,
                L::Dense(2),
            ],
            w as u64,
            DType::F32,
            Stats::default(),
        );
        // Dense+BN+ReLU fuse into one step each; the BN costs no step of its own.
        assert_eq!(steps, 3);
    }
}

#[test]
fn input_bn_folds_forward_into_the_first_dense_layer() {
    for &w in &[1, 3, 17, 30] {
        let steps = check(
            w,
            &[
                L::Bn,
                L::Dense(7),
                L::Bn,
                L::Act(Activation::Tanh),
                L::Dense(1),
            ],
            100 + w as u64,
            DType::F32,
            Stats {
                mean_abs: 5.0,
                ..Stats::default()
            },
        );
        assert_eq!(steps, 2);
    }
}

#[test]
fn bn_after_activation_folds_forward_into_the_next_dense_layer() {
    // Keras-style Dense -> act -> BN -> Dense.
    let steps = check(
        17,
        &[
            L::Dense(30),
            RELU,
            L::Bn,
            L::Dense(3),
            L::Act(Activation::Sigmoid),
        ],
        7,
        DType::F32,
        Stats::default(),
    );
    assert_eq!(steps, 2);
}

#[test]
fn bn_with_no_dense_neighbour_stays_an_affine_in_the_epilogue() {
    // Trailing BN after an activation, and a network that is only BN and activations.
    let steps = check(
        9,
        &[L::Dense(4), RELU, L::Bn],
        11,
        DType::F32,
        Stats::default(),
    );
    assert_eq!(steps, 1, "affine fused into the dense step's epilogue");
    let steps = check(
        6,
        &[L::Bn, RELU, L::Bn, L::Act(Activation::GeluErf)],
        12,
        DType::F32,
        Stats::default(),
    );
    assert_eq!(steps, 1, "one elementwise step");
    // BN -> act -> Dense: the BN cannot cross the activation.
    check(
        5,
        &[L::Bn, L::Act(Activation::Tanh), L::Dense(3)],
        13,
        DType::F32,
        Stats::default(),
    );
}

#[test]
fn consecutive_bns_and_both_sided_folds_compose() {
    check(
        8,
        &[L::Bn, L::Bn, L::Dense(8), L::Bn, L::Bn, RELU, L::Dense(2)],
        21,
        DType::F32,
        Stats::default(),
    );
    // Dense -> BN -> Dense: the BN folds backward (into the first), not forward.
    let steps = check(
        4,
        &[L::Dense(6), L::Bn, L::Dense(3)],
        22,
        DType::F32,
        Stats::default(),
    );
    assert_eq!(steps, 2);
}

#[test]
fn dense_without_bias_and_bn_without_gamma_beta() {
    check(
        10,
        &[L::DenseNoBias(6), L::BnBare, RELU, L::DenseNoBias(3), L::Bn],
        31,
        DType::F32,
        Stats::default(),
    );
    check(
        10,
        &[L::BnBare, L::DenseNoBias(6)],
        32,
        DType::F32,
        Stats::default(),
    );
}

#[test]
fn eps_range_tiny_variances_and_large_means() {
    for (i, &eps) in [1e-5, 1e-4, 1e-3].iter().enumerate() {
        for stats in [
            Stats {
                eps,
                var_lo: 1e-6,
                var_hi: 1e-4,
                mean_abs: 1.0,
            },
            Stats {
                eps,
                var_lo: 0.5,
                var_hi: 2.0,
                mean_abs: 1000.0,
            },
            Stats {
                eps,
                var_lo: 1e-2,
                var_hi: 1e4,
                mean_abs: 50.0,
            },
        ] {
            check(
                17,
                &[
                    L::Bn,
                    L::Dense(30),
                    L::Bn,
                    RELU,
                    L::Dense(3),
                    L::Bn,
                    L::Act(Activation::LeakyRelu { alpha: 0.1 }),
                    L::Dense(1),
                ],
                40 + i as u64,
                DType::F32,
                stats,
            );
        }
    }
}

#[test]
fn half_precision_storage_is_widened_before_folding() {
    for dtype in [DType::F16, DType::BF16] {
        check(
            17,
            &[L::Bn, L::Dense(30), L::Bn, RELU, L::Dense(3)],
            50,
            dtype,
            Stats::default(),
        );
    }
}

#[test]
fn every_activation_runs_folded_and_unfolded() {
    for (i, a) in [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu { alpha: 0.2 },
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::GeluErf,
        Activation::GeluTanh,
    ]
    .into_iter()
    .enumerate()
    {
        check(
            5,
            &[
                L::Dense(9),
                L::Bn,
                L::Act(a),
                L::Dense(4),
                L::Act(Activation::Softmax),
            ],
            60 + i as u64,
            DType::F32,
            Stats::default(),
        );
    }
}

#[test]
fn large_layers_take_the_parallel_path_and_agree() {
    // 200 x 300 x 256 multiply-adds is above the serial threshold.
    let bytes = network(
        300,
        &[L::Dense(256), L::Bn, RELU, L::Dense(10)],
        70,
        DType::F32,
        Stats::default(),
    );
    let model = Model::from_bytes(&bytes).unwrap();
    for batch in [1, 3, 200] {
        let x = input(batch, 300, 70);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let want = reference::forward(&model, &x64, batch).unwrap();
        let plan = model.compile(&Options::folded()).unwrap();
        let y = plan.session().run(&x, batch).unwrap().to_vec();
        // k = 300 here, so allow 5x the small-network tolerance (k*u scales with k).
        let e = normwise_error(&y, &want);
        assert!(e <= 5.0 * TOL, "batch {batch}: {e:e}");
    }
}

#[test]
fn folded_weights_are_rounded_once_from_f64() {
    // A single Dense -> BN: each folded weight must be exactly the f64 product rounded to f32.
    let bytes = network(3, &[L::Dense(2), L::Bn], 80, DType::F32, Stats::default());
    let model = Model::from_bytes(&bytes).unwrap();
    use bnfold::model::LayerView;
    let (LayerView::Dense(dense), LayerView::BatchNorm(bn)) =
        (model.layer_view(0).unwrap(), model.layer_view(1).unwrap())
    else {
        panic!("layers 0 and 1 are Dense and BatchNorm");
    };
    let post = bnfold::fold::Affine::of_batch_norm(&bn);
    let f = bnfold::fold::fold_dense(&dense, None, Some(&post)).unwrap();
    let w = model.tensor_data(0).unwrap().to_f64_vec();
    let b = model.tensor_data(1).unwrap().to_f64_vec();
    let g = model.tensor_data(2).unwrap().to_f64_vec();
    let beta = model.tensor_data(3).unwrap().to_f64_vec();
    let mean = model.tensor_data(4).unwrap().to_f64_vec();
    let var = model.tensor_data(5).unwrap().to_f64_vec();
    for o in 0..2 {
        let s = g[o] / (var[o] + 1e-3).sqrt();
        for i in 0..3 {
            assert_eq!(f.weight[o * 3 + i], (w[o * 3 + i] * s) as f32);
        }
        // The bias formula written the other way round: (b - mean) * s + beta. The two forms agree
        // to f64 rounding (~1e-16 relative), so after rounding to f32 they may differ by one ulp at
        // most.
        let want = ((b[o] - mean[o]) * s + beta[o]) as f32;
        assert!(
            (f.bias[o] - want).abs() <= want.abs() * f32::EPSILON,
            "{} vs {want}",
            f.bias[o]
        );
    }
}

#[test]
fn sessions_reuse_buffers_and_shared_plans_work_across_threads() {
    use std::sync::Arc;
    let bytes = network(
        12,
        &[L::Bn, L::Dense(20), L::Bn, RELU, L::Dense(4)],
        90,
        DType::F32,
        Stats::default(),
    );
    let model = Model::from_bytes(&bytes).unwrap();
    let plan = Arc::new(model.compile(&Options::default()).unwrap());
    drop(model); // the plan owns its weights
    let x = input(8, 12, 90);
    let want = plan.session().run(&x, 8).unwrap().to_vec();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let plan = Arc::clone(&plan);
            let x = x.clone();
            std::thread::spawn(move || {
                let mut s = plan.session_with_capacity(8);
                let mut last = Vec::new();
                for batch in [8, 1, 8] {
                    last = s.run(&x[..batch * 12], batch).unwrap().to_vec();
                }
                last
            })
        })
        .collect();
    for h in handles {
        // Same plan, same input, same kernel: the same bits.
        assert_eq!(h.join().unwrap(), want);
    }
}

#[test]
fn wrong_input_shapes_are_typed_errors() {
    let bytes = network(4, &[L::Dense(2)], 1, DType::F32, Stats::default());
    let plan = Model::from_bytes(&bytes)
        .unwrap()
        .compile(&Options::default())
        .unwrap();
    let mut s = plan.session();
    assert!(matches!(
        s.run(&[0.0; 7], 2),
        Err(bnfold::Error::Input(bnfold::InputError::Length {
            expected: 8,
            ..
        }))
    ));
    assert!(matches!(
        s.run(&[], 0),
        Err(bnfold::Error::Input(bnfold::InputError::EmptyBatch))
    ));
    let mut out = [0.0; 3];
    assert!(matches!(
        s.run_into(&[0.0; 4], 1, &mut out),
        Err(bnfold::Error::Input(bnfold::InputError::OutputLength {
            expected: 2,
            ..
        }))
    ));
}

#[test]
fn folding_that_overflows_f32_is_an_error_naming_the_feature() {
    // 1e38 * 1/sqrt(1e-30) = 1e53: representable in the f64 fold, not in the f32 result.
    let mut w = bnfold::format::Writer::new(1);
    w.add_dense("fc", DType::F32, 2, 1, &[1.0, 1e38], None)
        .unwrap();
    w.add_batch_norm("bn", DType::F32, 0.0, None, None, &[0.0; 2], &[1.0, 1e-30])
        .unwrap();
    let model = Model::from_bytes(&w.to_bytes().unwrap()).unwrap();
    let e = model.compile(&Options::folded()).unwrap_err();
    assert!(
        matches!(
            e.layer_kind(),
            Some(bnfold::LayerError::FoldOverflow { feature: 1 })
        ),
        "{e}"
    );
    assert!(e.to_string().starts_with("layer 0 (Dense 'fc')"), "{e}");
}

#[test]
fn session_buffers_give_the_same_bits_as_the_traced_run() {
    // Session::run juggles two buffers and runs elementwise steps in place; a trace writes every
    // step to the other buffer. The same ops on the same values: the same bits.
    let bytes = network(
        6,
        &[
            L::Bn,
            L::Act(Activation::Tanh),
            L::Dense(9),
            L::Bn,
            RELU,
            L::Bn,
            L::Act(Activation::GeluTanh),
            L::Dense(4),
            L::Act(Activation::Softmax),
        ],
        91,
        DType::F32,
        Stats::default(),
    );
    let model = Model::from_bytes(&bytes).unwrap();
    let x = input(7, 6, 91);
    for opts in [Options::folded(), Options::unfolded()] {
        let plan = model.compile(&opts).unwrap();
        let mut trace = plan.trace(&x, 7).unwrap();
        let mut want = Vec::new();
        while let Some((_, y)) = trace.step() {
            want = y.to_vec();
        }
        assert_eq!(
            plan.session().run(&x, 7).unwrap(),
            &want[..],
            "{:?}",
            opts.mode
        );
    }
}

#[test]
fn verify_passes_a_deep_gelu_network_whose_reference_underflows_f32() {
    // 4,096 GELUs drive negative inputs towards 0 faster than f32 can follow: the f64 reference
    // reaches values like 1e-300, which are exactly 0 in f32. That is not an error.
    let mut w = bnfold::format::Writer::new(3);
    for i in 0..4096 {
        w.activation(&format!("gelu{i}"), Activation::GeluErf)
            .unwrap();
    }
    let model = Model::from_bytes(&w.to_bytes().unwrap()).unwrap();
    let x = [-3.0f32, -0.5, -2.0, -1.0, -0.25, -1.5];
    let report = bnfold::verify(&model, &x, 2, &bnfold::VerifyOptions::default()).unwrap();
    assert!(report.passed(), "worst {:e}", report.worst);
    let all = bnfold::reference::forward_all(
        &model,
        &x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        2,
    )
    .unwrap();
    assert!(
        all.iter().flatten().any(|&v| v != 0.0 && v.abs() < 1e-300),
        "the case must take the reference far below f32's range"
    );
}

#[test]
fn affine_layers_fold_like_bn_and_run_as_their_own_step_unfolded() {
    const A: L = L::Affine(true, true);
    // Dense -> affine (backward fold), affine on the input (forward fold), act -> affine -> dense
    // (forward fold), BN and affine runs composed, and each of scale / shift alone.
    let steps = check(
        7,
        &[A, L::Dense(6), A, RELU, L::Affine(true, false), L::Dense(5)],
        41,
        DType::F32,
        Stats::default(),
    );
    assert_eq!(
        steps, 2,
        "dense with both affines folded and relu in its epilogue, dense with the forward affine"
    );
    let steps = check(
        6,
        &[L::Dense(6), L::Bn, A, L::Affine(false, true), L::Bn, RELU],
        42,
        DType::F32,
        Stats::default(),
    );
    assert_eq!(
        steps, 1,
        "one composed run folds backward, relu in the epilogue"
    );
    // No dense neighbour: a per-feature step; unfolded, every affine layer is its own step.
    let steps = check(
        5,
        &[L::Affine(false, true), RELU, A, L::Act(Activation::Tanh)],
        43,
        DType::F16,
        Stats::default(),
    );
    assert_eq!(
        steps, 1,
        "affine, relu, affine, tanh fused into one elementwise step"
    );
    let bytes = network(
        5,
        &[A, L::Dense(4), A, A],
        44,
        DType::BF16,
        Stats::default(),
    );
    let model = Model::from_bytes(&bytes).unwrap();
    assert_eq!(model.compile(&Options::unfolded()).unwrap().num_steps(), 4);
    check(
        5,
        &[A, L::Dense(4), A, A],
        44,
        DType::BF16,
        Stats::default(),
    );
    check(
        3,
        &[L::Affine(false, false), L::Dense(2)],
        45,
        DType::F32,
        Stats::default(),
    );
}

#[test]
fn an_unfoldable_bn_whose_combined_form_overflows_keeps_its_own_form() {
    // The two cases of issue 11, on a BN with no dense neighbour: gamma 3e38 over var 0.25 (the
    // combined scale 6e38 overflows f32) at input 0.1, and a mean of 3e38 at an input equal to
    // it (the combined shift -3e38 * s overflows). The unfolded path and the f64 reference give
    // 6e37 and 0; the folded plan must too, not inf and -inf.
    let mut w = bnfold::format::Writer::new(2);
    w.add_batch_norm(
        "bn",
        DType::F32,
        0.0,
        Some(&[3e38, 1.0]),
        None,
        &[0.0, 3e38],
        &[0.25, 0.25],
    )
    .unwrap();
    w.activation("act", Activation::Identity).unwrap();
    let model = Model::from_bytes(&w.to_bytes().unwrap()).unwrap();
    let x = [0.1f32, 3e38];
    for opts in [Options::folded(), Options::unfolded()] {
        let plan = model.compile(&opts).unwrap();
        let y = plan.session().run(&x, 1).unwrap().to_vec();
        assert!(y.iter().all(|v| v.is_finite()), "{:?}: {y:?}", opts.mode);
        assert!((y[0] / 6e37 - 1.0).abs() < 1e-6, "{:?}: {y:?}", opts.mode);
        assert_eq!(y[1], 0.0, "{:?}", opts.mode);
    }
    let report = bnfold::verify(&model, &x, 1, &bnfold::VerifyOptions::default()).unwrap();
    assert!(report.passed(), "{report:#?}");
    // A run of BNs that stays in range still becomes one affine op (folded: one step).
    let ok = network(3, &[L::Bn, L::Bn, RELU], 3, DType::F32, Stats::default());
    let plan = Model::from_bytes(&ok)
        .unwrap()
        .compile(&Options::folded())
        .unwrap();
    assert_eq!(plan.num_steps(), 1);
}

#[test]
fn compiling_twice_from_a_mapped_file_gives_the_same_plan() {
    // Compiling releases the mapped pages of each packed layer (S-5 in docs/SAFETY.md): the model
    // must read exactly the same bytes afterwards, in its views and in a second compile.
    let bytes = network(
        300,
        &[L::Bn, L::Dense(700), L::Bn, RELU, L::Dense(9)],
        12,
        DType::F16,
        Stats::default(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.bnw");
    std::fs::write(&path, &bytes).unwrap();
    let model = Model::load(&path).unwrap();
    let before: Vec<Vec<f64>> = (0..model.tensors().len())
        .map(|t| model.tensor_data(t).unwrap().to_f64_vec())
        .collect();
    let x = input(3, 300, 12);
    for opts in [Options::folded(), Options::unfolded()] {
        let a = model.compile(&opts).unwrap();
        let b = model.compile(&opts).unwrap();
        let ya = a.session().run(&x, 3).unwrap().to_vec();
        let yb = b.session().run(&x, 3).unwrap().to_vec();
        assert!(ya.iter().zip(&yb).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
    for (t, want) in before.iter().enumerate() {
        assert_eq!(
            &model.tensor_data(t).unwrap().to_f64_vec(),
            want,
            "tensor {t}"
        );
    }
    let in_memory = Model::from_bytes(&bytes).unwrap();
    let y_mem = in_memory
        .compile(&Options::folded())
        .unwrap()
        .session()
        .run(&x, 3)
        .unwrap()
        .to_vec();
    let y_map = model
        .compile(&Options::folded())
        .unwrap()
        .session()
        .run(&x, 3)
        .unwrap()
        .to_vec();
    assert_eq!(y_mem, y_map);
}

#[test]
fn an_elementwise_affine_does_not_overflow_between_multiply_and_add() {
    // Found by the structured fuzz target: a composed BN/affine run whose `s * x` overflows f32
    // while `s * x + t` does not gave -inf (a multiply then an add, as `wide` does without FMA)
    // where the unfolded path gave -2.6e38. Eight lanes, so the vector path runs.
    use bnfold::kernels::EpilogueOp;
    let op = EpilogueOp::Affine {
        scale: vec![3e38; 8],
        shift: vec![-3e38; 8],
    };
    let mut v = vec![2.0f32; 8];
    op.apply(&mut v, 0);
    for y in v {
        assert!(y.is_finite() && (y / 3e38 - 1.0).abs() < 1e-6, "{y}");
    }
}

/// Folded and unfolded outputs of `model` on one input row.
fn run_both(model: &Model, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let run = |opts: Options| {
        model
            .compile(&opts)
            .unwrap()
            .session()
            .run(x, 1)
            .unwrap()
            .to_vec()
    };
    (run(Options::folded()), run(Options::unfolded()))
}

#[test]
fn a_dense_layer_whose_folded_partial_sums_would_overflow_stays_unfolded() {
    // Issue 11 (found by the parse_bytes fuzz target): a BN of scale s = 3e38 after a dense
    // layer. Every folded weight (3e38) and the folded bias fit f32, but at x = [2, -2] the
    // folded products are +-6e38: inf - inf. The unfolded path computes z = 2 - 2 + 4 = 4 = mean,
    // and gamma * (z - mean) / 1 + beta = 0.5. The second feature is an ordinary BN.
    let mut w = bnfold::format::Writer::new(2);
    w.add_dense(
        "fc",
        DType::F32,
        2,
        2,
        &[1.0, 1.0, 0.5, -0.25],
        Some(&[4.0, 0.1]),
    )
    .unwrap();
    w.add_batch_norm(
        "bn",
        DType::F32,
        0.0,
        Some(&[3e38, 1.5]),
        Some(&[0.5, -0.2]),
        &[4.0, 0.3],
        &[1.0, 0.25],
    )
    .unwrap();
    w.activation("act", Activation::Relu).unwrap();
    let model = Model::from_bytes(&w.to_bytes().unwrap()).unwrap();
    let (yf, yu) = run_both(&model, &[2.0, -2.0]);
    // Feature 1: 1.5 * (0.5 * 2 + 0.25 * 2 + 0.1 - 0.3) / sqrt(0.25) - 0.2 = 3.7.
    assert_eq!(yu[0], 0.5);
    assert!((yu[1] - 3.7).abs() < 1e-5, "{yu:?}");
    // Kept unfolded, the layer computes exactly what the unfolded path computes.
    assert_eq!(yf, yu, "folded {yf:?}, unfolded {yu:?}");
    // And it is still one step: dense with the BN and the activation in its epilogue.
    assert_eq!(model.compile(&Options::folded()).unwrap().num_steps(), 1);
}

#[test]
fn a_bn_whose_forward_fold_would_overflow_the_partial_sums_stays_unfolded() {
    // The same on the input side: BN (s = 3e38, mean 1) -> dense [1, -1]. At x = [1.5, 1.5] the
    // unfolded path normalises to [1.5e38, 1.5e38] and the dense layer cancels them (0 + 0.25);
    // folded forward, the products 3e38 * 1.5 overflow.
    let mut w = bnfold::format::Writer::new(2);
    w.add_batch_norm(
        "bn",
        DType::F32,
        0.0,
        Some(&[3e38, 3e38]),
        None,
        &[1.0, 1.0],
        &[1.0, 1.0],
    )
    .unwrap();
    w.add_dense("fc", DType::F32, 1, 2, &[1.0, -1.0], Some(&[0.25]))
        .unwrap();
    let model = Model::from_bytes(&w.to_bytes().unwrap()).unwrap();
    let (yf, yu) = run_both(&model, &[1.5, 1.5]);
    assert_eq!(yu, [0.25]);
    assert_eq!(yf, yu, "folded {yf:?}, unfolded {yu:?}");
}

/// The layers a folded lowering of `model` keeps in their own BN form (the fold-overflow rule,
/// `bnfold::fold::INPUT_BOUND`), and the number of steps of its folded plan.
fn kept_unfolded(model: &Model) -> (Vec<usize>, usize) {
    use bnfold::fold::{Lowered, lower};
    use bnfold::kernels::EpilogueOp;
    let mut kept = Vec::new();
    lower(model, &Options::folded(), &mut |s| {
        if let Lowered::Elementwise(EpilogueOp::BatchNorm { .. }) = s.op {
            kept.push(s.last_layer);
        }
        Ok(())
    })
    .unwrap();
    (kept, model.compile(&Options::folded()).unwrap().num_steps())
}

#[test]
fn shipped_models_and_ordinary_networks_still_fold_completely() {
    // The fold-overflow rule must cost ordinary models nothing: every BN folds (no BN op in the
    // folded lowering) and the folded plans keep the step counts they had before the rule.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut shipped: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bnw"))
        .collect();
    shipped.sort();
    let steps_before = [("digits.bnw", 4), ("morvan.bnw", 8)];
    assert_eq!(shipped.len(), steps_before.len(), "{shipped:?}");
    for (path, (name, steps)) in shipped.iter().zip(steps_before) {
        assert!(path.ends_with(name), "{}", path.display());
        let model = Model::load(path).unwrap();
        assert_eq!(kept_unfolded(&model), (vec![], steps), "{name}");
    }
    // The fuzz seeds' valid networks (every layer kind, dtype and placement) and the synthetic
    // networks the tests and benchmarks use.
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/parse_bytes");
    for p in std::fs::read_dir(&seeds)
        .unwrap()
        .map(|e| e.unwrap().path())
    {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".bnw") && !name.starts_with("invalid_") {
            let model = Model::load(&p).unwrap();
            assert_eq!(kept_unfolded(&model).0, Vec::<usize>::new(), "{name}");
        }
    }
    let mlp = |input, input_bn, hidden: &[usize], act, output| {
        let bytes = bnfold::synth::mlp(input, input_bn, hidden, act, output, 42).unwrap();
        Model::from_bytes(&bytes).unwrap()
    };
    for act in [Activation::Relu, Activation::Tanh] {
        // The tutorial shape: input BN, 7 x (dense 30, BN, act), dense 1: 8 dense steps.
        let (kept, steps) = kept_unfolded(&mlp(1, true, &[30; 7], act, 1));
        assert_eq!((kept, steps), (vec![], 8));
    }
    // The "wide" benchmark network: 784 -> 3 x 1024 -> 10.
    let (kept, steps) = kept_unfolded(&mlp(784, false, &[1024; 3], Activation::Relu, 10));
    assert_eq!((kept, steps), (vec![], 4));
    // Every placement the other tests of this file fold, with tiny variances and large means.
    let stats = Stats {
        var_lo: 1e-6,
        var_hi: 1e-6,
        mean_abs: 100.0,
        ..Stats::default()
    };
    let layers = [
        L::Bn,
        L::Dense(16),
        L::Bn,
        L::Bn,
        RELU,
        L::Bn,
        L::Dense(8),
        L::Affine(true, true),
        L::Act(Activation::GeluErf),
        L::Dense(4),
        L::Bn,
    ];
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let model = Model::from_bytes(&network(6, &layers, 9, dtype, stats)).unwrap();
        assert_eq!(kept_unfolded(&model), (vec![], 3), "{dtype:?}");
    }
}

#[test]
fn the_overflow_rule_bounds_each_layer_by_what_the_layers_before_it_can_produce() {
    // The model input is small, but the first dense layer (weights 1e30, no BN) makes the second
    // one's inputs 1e30: a rule that assumed every layer's inputs within INPUT_BOUND would fold
    // the second layer's BN (s = 1e10, so folded weights +-1e10) and the products 1e40 would
    // overflow. The unfolded path cancels them: z = 1e30 - 1e30 + 0.5 = mean, output beta.
    let mut w = bnfold::format::Writer::new(1);
    w.add_dense("big", DType::F32, 2, 1, &[1e30, 1e30], None)
        .unwrap();
    w.add_dense("diff", DType::F32, 1, 2, &[1.0, -1.0], Some(&[0.5]))
        .unwrap();
    w.add_batch_norm(
        "bn",
        DType::F32,
        0.0,
        Some(&[1e10]),
        Some(&[-3.0]),
        &[0.5],
        &[1.0],
    )
    .unwrap();
    let model = Model::from_bytes(&w.to_bytes().unwrap()).unwrap();
    let (yf, yu) = run_both(&model, &[1.0]);
    assert_eq!(yu, [-3.0]);
    assert_eq!(yf, yu, "folded {yf:?}, unfolded {yu:?}");
    assert_eq!(kept_unfolded(&model).0, [2]);
    // With weights 1e10 and a BN of scale 1e4 the bound is 1e4 * 2 * 1e10 * INPUT_BOUND ~ 3e21:
    // the same shape folds.
    let mut w = bnfold::format::Writer::new(1);
    w.add_dense("small", DType::F32, 2, 1, &[1e10, 1e10], None)
        .unwrap();
    w.add_dense("diff", DType::F32, 1, 2, &[1.0, -1.0], Some(&[0.5]))
        .unwrap();
    w.add_batch_norm("bn", DType::F32, 0.0, Some(&[1e4]), None, &[0.5], &[1.0])
        .unwrap();
    let model = Model::from_bytes(&w.to_bytes().unwrap()).unwrap();
    assert_eq!(kept_unfolded(&model), (vec![], 2));
}
