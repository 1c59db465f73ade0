//! Half-precision packed weights (issue 12): the folded weights are rounded once, from f64, to
//! f16 or bf16 (correctly, ties to even), a folded weight beyond f16's range is a load error
//! naming the layer and the feature, and `verify`'s tolerance follows the weights' rounding.

use bnfold::fold::{round_slice, round_to};
use bnfold::synth::{Layer as L, Rng, Stats};
use bnfold::{Activation, DType, Error, LayerError, Model, Options, VerifyOptions};
use half::{bf16, f16};

/// Every finite non-negative value of `dtype`, ascending, with its bit pattern.
fn grid(dtype: DType) -> Vec<(f64, u16)> {
    let max_bits = match dtype {
        DType::F16 => 0x7bff,
        DType::BF16 => 0x7f7f,
        DType::F32 => unreachable!(),
    };
    (0..=max_bits)
        .map(|b: u16| {
            let v = match dtype {
                DType::F16 => f16::from_bits(b).to_f64(),
                _ => bf16::from_bits(b).to_f64(),
            };
            (v, b)
        })
        .collect()
}

/// The correctly rounded value of `v` (nearest, ties to the even bit pattern), from the grid.
fn nearest(grid: &[(f64, u16)], v: f64) -> f64 {
    let a = v.abs();
    let i = grid.partition_point(|&(g, _)| g < a);
    let pick = if i == 0 {
        grid[0]
    } else if i == grid.len() {
        grid[i - 1]
    } else {
        let (lo, hi) = (grid[i - 1], grid[i]);
        match (a - lo.0).total_cmp(&(hi.0 - a)) {
            std::cmp::Ordering::Less => lo,
            std::cmp::Ordering::Greater => hi,
            std::cmp::Ordering::Equal => {
                if lo.1 % 2 == 0 {
                    lo
                } else {
                    hi
                }
            }
        }
    };
    pick.0.copysign(v)
}

#[test]
fn weights_round_once_to_the_nearest_half_precision_value() {
    for dtype in [DType::F16, DType::BF16] {
        let g = grid(dtype);
        let max = g.last().unwrap().0;
        let mut rng = Rng::new(11);
        let mut cases: Vec<f64> = Vec::new();
        // Random magnitudes over the whole finite range (and the subnormals).
        for _ in 0..20_000 {
            let u = f64::from(rng.unit());
            let e = (u * max.log2().ceil() * 2.0 - max.log2().ceil() - 10.0).min(max.log2() - 0.01);
            let m = 1.0 + f64::from(rng.unit());
            let s = if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
            cases.push(s * m * e.exp2());
        }
        // Exact ties between neighbours, and values a hair either side of them: where rounding to
        // f32 first and then to the half type goes wrong.
        for w in g.windows(2).step_by(97) {
            let mid = (w[0].0 + w[1].0) / 2.0;
            let hair = mid * 2f64.powi(-40) + f64::MIN_POSITIVE;
            cases.extend([mid, mid + hair, mid - hair, -mid, -(mid + hair)]);
        }
        // One value at a time, and the whole set as one slice (the plan compile's path).
        let mut sliced = vec![0f32; cases.len()];
        round_slice(dtype, &cases, &mut sliced);
        for (&v, &s) in cases.iter().zip(&sliced) {
            let want = nearest(&g, v);
            for (how, got) in [("round_to", round_to(dtype, v)), ("round_slice", s)] {
                let got = f64::from(got);
                assert!(
                    got == want || (got == 0.0 && want == 0.0),
                    "{dtype}, {how}: {v:e} rounded to {got:e}, the nearest (ties to even) is \
                     {want:e}"
                );
            }
        }
    }
}

/// `round_slice` (vectorised, with a fast path for f32's normal range) gives the bits of
/// `round_to` for every kind of f64: both sides of each edge of f32's normal range, of f16's and
/// bf16's largest finite values and of their ties to infinity, zeros, subnormals of all three
/// types, infinities, NaN, and random bit patterns (which are mostly far outside every range).
#[test]
fn round_slice_gives_the_bits_of_round_to() {
    let f32_min = f64::from(f32::MIN_POSITIVE);
    let mut cases: Vec<f64> = vec![
        0.0,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -f64::NAN,
        f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        2f64.powi(128),
        f64::from(f32::MAX),
        f64::from(f32::MAX) * (1.0 + 2f64.powi(-25)),
        f32_min,
        f32_min / 2.0,
        f32_min * (1.0 - 2f64.powi(-40)),
        2f64.powi(-149),
        2f64.powi(-150),
        2f64.powi(-133),
        2f64.powi(-24),
        2f64.powi(-25),
        2f64.powi(-25) * (1.0 + 2f64.powi(-30)),
        65504.0,
        65519.99,
        65520.0,
        65520.0 * (1.0 + 2f64.powi(-40)),
        f64::from(bf16::MAX),
        f64::from(bf16::MAX) * (1.0 + 2f64.powi(-9)),
        f64::from(bf16::MAX) * (1.0 + 2f64.powi(-9) - 2f64.powi(-40)),
    ];
    // Neighbours of each edge, a few f64 ulps either side.
    for e in cases.clone() {
        if e.is_finite() && e > 0.0 {
            for d in 1..4u64 {
                // Above f64::MAX the bit patterns are the infinity and NaNs: cases too. Below
                // the smallest subnormal, `- d` stops at zero.
                cases.push(f64::from_bits(e.to_bits() + d));
                cases.push(f64::from_bits(e.to_bits().saturating_sub(d)));
            }
        }
    }
    let mut rng = Rng::new(12);
    for _ in 0..20_000 {
        cases.push(f64::from_bits(rng.next_u64()));
        // Values of weight-like magnitude with random low bits (ties and near-ties).
        let m = f64::from(rng.unit()) * 8.0 - 4.0;
        cases.push(f64::from_bits(m.to_bits() ^ (rng.next_u64() & 0xfff_ffff)));
    }
    cases.extend(cases.clone().iter().map(|v| -v));
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let mut got = vec![0f32; cases.len()];
        round_slice(dtype, &cases, &mut got);
        for (&v, &g) in cases.iter().zip(&got) {
            let want = round_to(dtype, v);
            assert!(
                g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                "{dtype}: {v:e} ({:#x}): round_slice {g:e}, round_to {want:e}",
                v.to_bits()
            );
        }
    }
}

#[test]
fn a_folded_weight_beyond_f16_is_a_load_error_naming_layer_and_feature() {
    // A BN with gamma 1e3 over var 1e-4 scales the dense layer's second output by 1e5: fine in
    // f32 and bf16, beyond f16's 65504.
    let mut w = bnfold::format::Writer::new(2);
    w.add_dense("fc", DType::F32, 2, 2, &[0.5, 0.25, 1.0, -1.0], None)
        .unwrap();
    w.add_batch_norm(
        "bn",
        DType::F32,
        0.0,
        Some(&[1.0, 1e3]),
        None,
        &[0.0, 0.0],
        &[1.0, 1e-4],
    )
    .unwrap();
    let model = Model::from_bytes(&w.to_bytes().unwrap()).unwrap();
    for weights in [DType::F32, DType::BF16] {
        model
            .compile(&Options::folded().with_weights(weights))
            .unwrap();
    }
    let e = model
        .compile(&Options::folded().with_weights(DType::F16))
        .unwrap_err();
    match &e {
        Error::Layer { index, name, .. } => assert_eq!((*index, name.as_str()), (0, "fc")),
        e => panic!("{e}"),
    }
    assert_eq!(
        e.layer_kind(),
        Some(&LayerError::WeightOutOfRange {
            feature: 1,
            dtype: "f16"
        })
    );
    assert!(e.to_string().contains("output feature 1"), "{e}");
}

#[test]
fn half_precision_plans_pass_verify_with_the_derived_tolerance() {
    for dtype in [DType::F16, DType::BF16] {
        for (seed, layers) in [
            (
                1,
                vec![
                    L::Bn,
                    L::Dense(64),
                    L::Bn,
                    L::Act(Activation::Relu),
                    L::Dense(32),
                    L::Bn,
                    L::Act(Activation::Tanh),
                    L::Dense(5),
                ],
            ),
            (
                2,
                vec![
                    L::Dense(128),
                    L::Bn,
                    L::Act(Activation::GeluErf),
                    L::Dense(10),
                    L::Act(Activation::Softmax),
                ],
            ),
        ] {
            let bytes =
                bnfold::synth::network(40, &layers, seed, DType::F32, Stats::default()).unwrap();
            let model = Model::from_bytes(&bytes).unwrap();
            let x = bnfold::synth::input(32, 40, 1.0, seed);
            let opts = VerifyOptions::default().with_weights(dtype);
            let r = bnfold::verify(&model, &x, 32, &opts).unwrap();
            assert!(
                r.passed(),
                "{dtype} seed {seed}: worst {:e} > {:e}",
                r.worst,
                r.tolerance
            );
            // And the rounding is real: f16/bf16 weights are measurably worse than f32 ones.
            let r32 = bnfold::verify(&model, &x, 32, &VerifyOptions::default()).unwrap();
            assert!(
                r.worst > 4.0 * r32.worst,
                "{dtype}: {:e} vs {:e}",
                r.worst,
                r32.worst
            );
        }
    }
}

/// The packed panels hold the type asked for: a plan with f16 or bf16 weights holds about half
/// the bytes of the f32 plan (the biases stay f32), on every supported path.
#[test]
fn half_precision_plans_hold_half_the_weight_bytes() {
    let bytes = bnfold::synth::mlp(512, false, &[512, 512], Activation::Relu, 512, 5).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    for isa in bnfold::kernels::Isa::supported() {
        let opts = Options::folded().with_kernel(bnfold::KernelChoice::Force(isa));
        let full = model.compile(&opts.clone()).unwrap().weight_bytes();
        // Three 512x512 layers: at least their f32 weights.
        assert!(full >= 3 * 512 * 512 * 4, "{isa}: {full}");
        for dtype in [DType::F16, DType::BF16] {
            let half = model
                .compile(&opts.clone().with_weights(dtype))
                .unwrap()
                .weight_bytes();
            assert!(
                half as f64 <= 0.55 * full as f64,
                "{isa} {dtype}: {half} bytes vs {full} for f32"
            );
        }
    }
}
