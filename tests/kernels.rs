//! The dense kernels, every instruction-set path forced in turn, against a naive f64 reference.
//!
//! Each test loops over `Isa::supported()` and asserts that the kernel it built runs the path it
//! asked for, so a path this host supports cannot go untested: forcing it must work, and then the
//! same assertions hold for it.

use bnfold::Activation;
use bnfold::kernels::{DenseKernel, EpilogueOp, Isa, KernelChoice, matmul_nt};

const SIZES: [usize; 15] = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 65, 127, 200];

/// Test data from the one seeded generator, [`bnfold::synth::Rng`].
struct Gen(bnfold::synth::Rng);
impl Gen {
    fn new(seed: u64) -> Gen {
        Gen(bnfold::synth::Rng::new(seed))
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        self.0.uniform(-1.0, 1.0)
    }
    /// A multiple of 1/8 in [-4, 4]: products and sums of these are exact in f32 for the sizes
    /// used here (|sum| <= 200 * 16 = 3200 in steps of 1/64 needs 18 bits < 24).
    fn eighths(&mut self) -> f32 {
        ((self.0.next_u64() >> 32) % 65) as f32 / 8.0 - 4.0
    }
    fn vec(&mut self, len: usize, f: fn(&mut Gen) -> f32) -> Vec<f32> {
        (0..len).map(|_| f(self)).collect()
    }
}

/// `x W^T + b` in f64, `x` `[m, k]`, `w` `[n, k]`.
fn reference(x: &[f32], w: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = b[j] as f64;
            for kk in 0..k {
                s += x[i * k + kk] as f64 * w[j * k + kk] as f64;
            }
            y[i * n + j] = s;
        }
    }
    y
}

/// The epilogue ops in f64, feature `j`.
fn reference_op(op: &EpilogueOp, v: f64, j: usize) -> f64 {
    match op {
        // The activations' one definition, the f64 reference's.
        EpilogueOp::Act(a) => bnfold::reference::activation(*a, v),
        EpilogueOp::Affine { scale, shift } => scale[j] as f64 * v + shift[j] as f64,
        EpilogueOp::BatchNorm {
            gamma,
            beta,
            mean,
            denom,
        } => gamma[j] as f64 * (v - mean[j] as f64) / denom[j] as f64 + beta[j] as f64,
    }
}

/// Every output equals the f64 reference exactly (an exact grid), else a failure naming `what`
/// and the (row, feature) of the first difference.
fn assert_exact(y: &[f32], want: &[f64], n: usize, what: &dyn std::fmt::Display) {
    for (i, (&got, &want)) in y.iter().zip(want).enumerate() {
        assert_eq!(got as f64, want, "{what} at ({}, {})", i / n, i % n);
    }
}

/// Every weight type the kernels store.
const DTYPES: [bnfold::DType; 3] = [bnfold::DType::F32, bnfold::DType::F16, bnfold::DType::BF16];

/// The half-precision ones (issue 12).
const HALVES: [bnfold::DType; 2] = [bnfold::DType::F16, bnfold::DType::BF16];

/// `w` rounded (once, from f64, as a plan's folded weights are) to `dtype`.
fn rounded(dtype: bnfold::DType, w: &[f32]) -> Vec<f32> {
    w.iter()
        .map(|&v| bnfold::fold::round_to(dtype, f64::from(v)))
        .collect()
}

/// A kernel forced onto `isa` storing `dtype` weights, checked to run that path and to store that
/// type (narrow layers, fewer outputs than half a vector, keep f32 rows whatever is asked).
fn kernel_of(
    isa: Isa,
    dtype: bnfold::DType,
    k: usize,
    n: usize,
    w: &[f32],
    b: &[f32],
) -> DenseKernel {
    let kern = DenseKernel::with_weights(k, n, w, b, KernelChoice::Force(isa), dtype);
    assert_eq!(
        kern.isa(),
        isa,
        "forcing a supported path must run that path"
    );
    let lanes = if isa == Isa::Avx512 { 16 } else { 8 };
    let want = if 2 * n < lanes {
        bnfold::DType::F32
    } else {
        dtype
    };
    assert_eq!(kern.weight_type(), want, "{isa} {dtype} {k}x{n}");
    kern
}

/// [`kernel_of`] with f32 weights.
fn kernel(isa: Isa, k: usize, n: usize, w: &[f32], b: &[f32]) -> DenseKernel {
    kernel_of(isa, bnfold::DType::F32, k, n, w, b)
}

#[test]
fn every_supported_path_is_reported_and_forceable() {
    #[cfg(target_arch = "x86_64")]
    {
        assert_eq!(
            Isa::Avx512.is_supported(),
            std::arch::is_x86_feature_detected!("avx512f")
        );
        assert_eq!(
            Isa::Avx2.is_supported(),
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        );
    }
    assert!(Isa::Portable.is_supported());
    for isa in Isa::supported() {
        assert_eq!(kernel(isa, 3, 5, &[0.0; 15], &[0.0; 5]).isa(), isa);
        assert_eq!(Isa::from_name(isa.name()), Some(isa));
    }
    // An unsupported path falls back to a supported one instead of faulting.
    for isa in Isa::ALL {
        let got = KernelChoice::Force(isa).resolve();
        assert!(got.is_supported());
    }
}

/// With inputs on a 1/8 grid every product and partial sum is exact in f32, so every path, in
/// any summation order, must give the f64 reference exactly: a tolerance of zero.
#[test]
fn exact_products_match_reference_bit_for_bit_on_every_shape_and_path() {
    let mut g = Gen::new(0x9e37_79b9_7f4a_7c15);
    for &m in &SIZES {
        for &k in &SIZES {
            for &n in &SIZES {
                let x = g.vec(m * k, Gen::eighths);
                let w = g.vec(n * k, Gen::eighths);
                let b = g.vec(n, Gen::eighths);
                let want = reference(&x, &w, &b, m, k, n);
                for isa in Isa::supported() {
                    let kern = kernel(isa, k, n, &w, &b);
                    let mut y = vec![f32::NAN; m * n];
                    kern.forward(&x, m, &mut y, &[]);
                    assert_exact(&y, &want, n, &format_args!("{isa} m={m} k={k} n={n}"));
                }
            }
        }
    }
}

/// Uniform floats: the f32 sum of `k` products differs from the exact one by at most
/// `gamma_k * sum |x_i w_i|` with `gamma_k = k u / (1 - k u)`, `u = 2^-24` (Higham, 3.1), for any
/// summation order, plus one rounding of the bias addition. The test allows twice that bound.
/// Half-precision weights (issue 12) are held to the same bound against the f64 product of the
/// *rounded* weights: their only extra error is their own rounding, which the reference includes;
/// widening is exact and the sums are f32. The kernel is also given the unrounded weights: it
/// rounds them to nearest itself, and here (where a single rounding from f32 is the rounding from
/// f64, the weights being f32) must give the same bits. Every weight type, both drivers, every
/// path.
#[test]
fn random_floats_are_within_the_summation_error_bound() {
    let mut g = Gen::new(42);
    for &(m, k, n) in &[
        (1, 200, 127),
        (2, 333, 45),
        (9, 65, 33),
        (17, 127, 200),
        (64, 200, 65),
        (200, 33, 17),
        (31, 513, 70),
        (300, 300, 50),
        // Deeper than one depth block (256) of the blocked driver: partial sums reloaded.
        (9, 600, 33),
        (70, 1000, 20),
        // Deep and wide enough that the unpacked driver takes the panels in several L2-sized
        // groups (with a partial group and a partial last vector).
        (40, 1500, 300),
    ] {
        let x = g.vec(m * k, Gen::uniform);
        let w32 = g.vec(n * k, Gen::uniform);
        let b = g.vec(n, Gen::uniform);
        for dtype in DTYPES {
            let w = rounded(dtype, &w32);
            let want = reference(&x, &w, &b, m, k, n);
            for (isa, blocked) in Isa::supported()
                .into_iter()
                .flat_map(|i| [(i, false), (i, true)])
            {
                let what = format!("{isa} {dtype} blocked={blocked} {m}x{k}x{n}");
                let mut y = vec![0.0; m * n];
                kernel_of(isa, dtype, k, n, &w, &b).forward_with_driver(
                    &x,
                    m,
                    &mut y,
                    &[],
                    blocked,
                );
                for i in 0..m {
                    for j in 0..n {
                        let mag: f64 = (0..k)
                            .map(|kk| (x[i * k + kk] as f64 * w[j * k + kk] as f64).abs())
                            .sum::<f64>()
                            + (b[j] as f64).abs();
                        let u = f64::powi(2.0, -24);
                        let bound = 2.0 * ((k + 1) as f64 * u) * mag;
                        let err = (y[i * n + j] as f64 - want[i * n + j]).abs();
                        assert!(err <= bound, "{what} ({i},{j}): err {err} > {bound}");
                    }
                }
                let mut y2 = vec![0.0; m * n];
                kernel_of(isa, dtype, k, n, &w32, &b).forward_with_driver(
                    &x,
                    m,
                    &mut y2,
                    &[],
                    blocked,
                );
                assert!(
                    y.iter().zip(&y2).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what}: the kernel's own rounding differs"
                );
            }
        }
    }
}

fn epilogues(n: usize, g: &mut Gen) -> Vec<Vec<EpilogueOp>> {
    let acts = [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu { alpha: 0.125 },
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::GeluErf,
        Activation::GeluTanh,
    ];
    let affine = EpilogueOp::Affine {
        scale: g.vec(n, Gen::uniform),
        shift: g.vec(n, Gen::uniform),
    };
    let bn = EpilogueOp::BatchNorm {
        gamma: g.vec(n, Gen::uniform),
        beta: g.vec(n, Gen::uniform),
        mean: g.vec(n, Gen::uniform),
        denom: (0..n).map(|_| 0.5 + g.uniform().abs()).collect(),
    };
    let mut out: Vec<Vec<EpilogueOp>> = acts.iter().map(|a| vec![EpilogueOp::Act(*a)]).collect();
    out.push(vec![affine.clone()]);
    out.push(vec![bn.clone()]);
    // Register ops, then a transcendental one, then register ops again (split across the tile
    // store), as a folded plan with an unfoldable BN produces.
    out.push(vec![
        EpilogueOp::Act(Activation::Relu),
        affine.clone(),
        EpilogueOp::Act(Activation::Tanh),
        bn,
        EpilogueOp::Act(Activation::LeakyRelu { alpha: 0.5 }),
    ]);
    out
}

/// Every activation and the affine and BN epilogues, on shapes with partial vectors (17, 33)
/// and partial tiles, over every weight type. The matrix part is exact (1/8 grid, see above; the
/// grid is exact in f16 and bf16 too), so the only error is the f32 epilogue: a few roundings of
/// values of magnitude up to ~400, and the f32 transcendental functions (within a few ulp).
/// Tolerance: 1e-5 relative to max(1, |value|) after each op chain of up to five ops.
#[test]
fn epilogues_match_reference_on_every_path() {
    let mut g = Gen::new(7);
    for &(m, k, n) in &[
        (1, 9, 17),
        (3, 31, 33),
        (8, 16, 65),
        (9, 64, 31),
        (65, 33, 127),
        (200, 7, 200),
    ] {
        let x = g.vec(m * k, Gen::eighths);
        let w = g.vec(n * k, Gen::eighths);
        let b = g.vec(n, Gen::eighths);
        let base = reference(&x, &w, &b, m, k, n);
        for ops in epilogues(n, &mut g) {
            let want: Vec<f64> = base
                .iter()
                .enumerate()
                .map(|(i, &v)| ops.iter().fold(v, |v, op| reference_op(op, v, i % n)))
                .collect();
            for isa in Isa::supported() {
                for dtype in DTYPES {
                    let kern = kernel_of(isa, dtype, k, n, &w, &b);
                    for blocked in [false, true] {
                        let mut y = vec![0.0; m * n];
                        kern.forward_with_driver(&x, m, &mut y, &ops, blocked);
                        for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
                            let tol = 1e-5 * want.abs().max(1.0);
                            assert!(
                                (got as f64 - want).abs() <= tol,
                                "{isa} {dtype} blocked={blocked} {m}x{k}x{n} {ops:?} at {i}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A NaN input makes its whole output row NaN (ReLU included: it must not turn NaN into 0);
/// an infinite input gives +-inf where the weights have one sign and NaN where inf - inf occurs,
/// exactly as the f64 reference.
#[test]
fn nan_and_infinity_propagate_like_the_reference() {
    let (m, k, n) = (10, 20, 40);
    let mut g = Gen::new(3);
    let mut x = g.vec(m * k, Gen::eighths);
    let mut w = g.vec(n * k, Gen::eighths);
    let b = g.vec(n, Gen::eighths);
    x[2 * k + 5] = f32::NAN;
    x[4 * k + 7] = f32::INFINITY;
    x[7 * k] = f32::NEG_INFINITY;
    // Feature 3 sees +inf times 0 (NaN); feature 4 a weight of +2 at the infinite inputs.
    w[3 * k + 7] = 0.0;
    w[4 * k + 7] = 2.0;
    w[4 * k] = 2.0;
    let want = reference(&x, &w, &b, m, k, n);
    for ops in [vec![], vec![EpilogueOp::Act(Activation::Relu)]] {
        for isa in Isa::supported() {
            for batch in [m, 1] {
                let mut y = vec![0.0; batch * n];
                kernel(isa, k, n, &w, &b).forward(&x[..batch * k], batch, &mut y, &ops);
                for (i, &got) in y.iter().enumerate() {
                    let v = ops.iter().fold(want[i], |v, op| reference_op(op, v, i % n));
                    if v.is_nan() {
                        assert!(got.is_nan(), "{isa} {ops:?} at {i}: {got}, want NaN");
                    } else {
                        assert_eq!(got as f64, v, "{isa} {ops:?} at {i}");
                    }
                }
            }
            let mut y = vec![0.0; m * n];
            kernel(isa, k, n, &w, &b).forward(&x, m, &mut y, &ops);
            assert!(y[2 * n..3 * n].iter().all(|v| v.is_nan()), "{isa}: NaN row");
            assert!(y[4 * n + 3].is_nan(), "{isa}: inf * 0");
            assert_eq!(y[4 * n + 4], f32::INFINITY, "{isa}: +inf");
        }
    }
}

/// Inputs and outputs at addresses that are not multiples of the vector size give the same bits
/// as aligned ones.
#[test]
fn unaligned_slices_give_the_same_bits() {
    let (m, k, n) = (13, 37, 45);
    let mut g = Gen::new(11);
    let x = g.vec(m * k, Gen::uniform);
    let w = g.vec(n * k, Gen::uniform);
    let b = g.vec(n, Gen::uniform);
    for isa in Isa::supported() {
        let kern = kernel(isa, k, n, &w, &b);
        let mut y0 = vec![0.0; m * n];
        kern.forward(&x, m, &mut y0, &[]);
        for off in 1..4 {
            let mut xs = vec![0.0; m * k + off];
            xs[off..].copy_from_slice(&x);
            let mut ys = vec![0.0; m * n + off];
            kern.forward(&xs[off..], m, &mut ys[off..], &[]);
            assert_eq!(
                ys[off..].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                y0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{isa} offset {off}"
            );
        }
    }
}

/// The parallel split changes which thread computes a tile, never the order of a sum: the same
/// bits with 1 and 2 threads, for batches that split by features and by rows, every weight type,
/// both drivers.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let pool = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    };
    let (one, two) = (pool(1), pool(2));
    let mut g = Gen::new(5);
    for &(m, k, n) in &[
        (1, 1024, 1000),
        (5, 700, 600),
        (8, 513, 1031),
        (40, 600, 300),
        (300, 300, 257),
    ] {
        let x = g.vec(m * k, Gen::uniform);
        let w = g.vec(n * k, Gen::uniform);
        let b = g.vec(n, Gen::uniform);
        let ops = [EpilogueOp::Act(Activation::Relu)];
        for isa in Isa::supported() {
            for dtype in DTYPES {
                let kern = kernel_of(isa, dtype, k, n, &w, &b);
                for blocked in [false, true] {
                    let mut y1 = vec![0.0; m * n];
                    let mut y2 = vec![0.0; m * n];
                    one.install(|| kern.forward_with_driver(&x, m, &mut y1, &ops, blocked));
                    two.install(|| kern.forward_with_driver(&x, m, &mut y2, &ops, blocked));
                    assert!(
                        y1.iter().zip(&y2).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{isa} {dtype} blocked={blocked} {m}x{k}x{n}"
                    );
                }
            }
        }
    }
}

/// `matmul_nt` (the trainer's product) against the reference, exact on the 1/8 grid.
#[test]
fn matmul_nt_matches_reference() {
    let mut g = Gen::new(9);
    for &(m, n, k) in &[
        (1, 1, 1),
        (3, 17, 9),
        (33, 8, 65),
        (100, 64, 127),
        (257, 31, 300),
    ] {
        let a = g.vec(m * k, Gen::eighths);
        let b = g.vec(n * k, Gen::eighths);
        let want = reference(&a, &b, &vec![0.0; n], m, k, n);
        let mut c = vec![f32::NAN; m * n];
        matmul_nt(&a, &b, m, n, k, &mut c);
        for (got, want) in c.iter().zip(&want) {
            assert_eq!(*got as f64, *want, "{m}x{n}x{k}");
        }
    }
}

/// A layer with no inputs outputs its bias, through the epilogue.
#[test]
fn zero_inputs_give_the_bias() {
    for isa in Isa::supported() {
        let kern = kernel(isa, 0, 3, &[], &[1.0, -2.0, 3.0]);
        let mut y = vec![0.0; 6];
        kern.forward(&[], 2, &mut y, &[EpilogueOp::Act(Activation::Relu)]);
        assert_eq!(y, [1.0, 0.0, 3.0, 1.0, 0.0, 3.0]);
    }
}

/// The standalone elementwise passes (the unfolded plan's BN and activation steps) against the
/// f64 reference, on every path, over lengths that leave every tail size of the 8- and 16-lane
/// loops, with NaN, +-inf and -0 among the values. ReLU and leaky ReLU are exact (a select, or
/// one multiply by alpha, the same rounding in f32 and in the f64 reference rounded back); affine
/// and BN are a few f32 roundings of O(10) values: 1e-5 relative tolerance.
#[test]
fn elementwise_passes_match_reference_with_special_values() {
    let mut g = Gen::new(13);
    for (len, isa) in (1..=35).flat_map(|l| Isa::supported().into_iter().map(move |i| (l, i))) {
        let mut v: Vec<f32> = g.vec(len, Gen::uniform).iter().map(|x| x * 10.0).collect();
        let specials = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, -0.0];
        v[len / 2] = specials[len % 4];
        let ops = epilogues(len, &mut g);
        for op_list in &ops {
            let mut got = v.clone();
            bnfold::kernels::elementwise_with(KernelChoice::Force(isa), op_list, &mut got, len);
            for (j, (&got, &x)) in got.iter().zip(&v).enumerate() {
                let want = op_list
                    .iter()
                    .fold(x as f64, |y, op| reference_op(op, y, j));
                if want.is_nan() {
                    assert!(got.is_nan(), "{isa} {op_list:?} len {len} at {j}: {got}");
                } else if want.is_infinite() {
                    assert_eq!(got as f64, want, "{isa} {op_list:?} len {len} at {j}");
                } else {
                    let tol = 1e-5 * want.abs().max(1.0);
                    assert!(
                        (got as f64 - want).abs() <= tol,
                        "{isa} {op_list:?} len {len} at {j}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// `Options::kernel` reaches every dense kernel of a plan: a network compiled for each supported
/// path, folded and unfolded, runs that path and agrees with the f64 reference forward pass.
/// Tolerance: 1e-4 relative to max(1, |reference|) -- each of the three 64-wide dense layers adds
/// at most ~64 f32 roundings of O(10) partial sums, and folding rounds the folded weights once.
#[test]
fn plan_options_force_the_kernel_path() {
    let bytes = bnfold::synth::mlp(20, true, &[64, 64], Activation::Relu, 5, 17).unwrap();
    let model = bnfold::Model::from_bytes(&bytes).unwrap();
    let batch = 11;
    let mut g = Gen::new(21);
    let x = g.vec(batch * 20, Gen::uniform);
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let want = bnfold::reference::forward(&model, &x64, batch).unwrap();
    for isa in Isa::supported() {
        for opts in [bnfold::Options::folded(), bnfold::Options::unfolded()] {
            let plan = model
                .compile(&opts.with_kernel(KernelChoice::Force(isa)))
                .unwrap();
            assert_eq!(plan.kernel_isa(), isa);
            let mut session = plan.session();
            let got = session.run(&x, batch).unwrap();
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "{isa} {:?} at {i}: {g} vs {w}",
                    plan.mode()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Half-precision weights (issue 12): panels of f16 or bf16, widened to f32 in registers (the
// bound, epilogue and thread-count tests above cover them beside f32).

/// On the 1/8 grid in [-4, 4] every weight is exact in f16 and bf16 too, so half-precision panels
/// must give the f64 reference bit for bit, like f32 ones: every shape with partial vectors and
/// tiles, both drivers, every path. Any wrong lane, panel or stride in the widening shows here.
#[test]
fn half_weights_on_an_exact_grid_match_the_reference_bit_for_bit() {
    let mut g = Gen::new(0x05ee_df16_bf16);
    for &m in &[1, 2, 3, 7, 8, 9, 17, 65] {
        for &k in &SIZES {
            for &n in &SIZES {
                let x = g.vec(m * k, Gen::eighths);
                let w = g.vec(n * k, Gen::eighths);
                let b = g.vec(n, Gen::eighths);
                let want = reference(&x, &w, &b, m, k, n);
                for isa in Isa::supported() {
                    for dtype in HALVES {
                        let kern = kernel_of(isa, dtype, k, n, &w, &b);
                        for blocked in [false, true] {
                            let mut y = vec![f32::NAN; m * n];
                            kern.forward_with_driver(&x, m, &mut y, &[], blocked);
                            let what =
                                format_args!("{isa} {dtype} blocked={blocked} m={m} k={k} n={n}");
                            assert_exact(&y, &want, n, &what);
                        }
                    }
                }
            }
        }
    }
}

/// A plan with half-precision weights, compiled for every supported path, folded and unfolded:
/// its dense kernels store the type asked for and the plan runs that path.
#[test]
fn plan_options_pack_half_weights_on_every_path() {
    let bytes = bnfold::synth::mlp(20, true, &[64, 64], Activation::Relu, 5, 17).unwrap();
    let model = bnfold::Model::from_bytes(&bytes).unwrap();
    let f32_bytes = model
        .compile(&bnfold::Options::folded())
        .unwrap()
        .weight_bytes();
    for isa in Isa::supported() {
        for dtype in HALVES {
            for opts in [bnfold::Options::folded(), bnfold::Options::unfolded()] {
                let plan = model
                    .compile(
                        &opts
                            .with_kernel(KernelChoice::Force(isa))
                            .with_weights(dtype),
                    )
                    .unwrap();
                assert_eq!(plan.kernel_isa(), isa);
                // The 5-wide head stays f32 on AVX-512 (narrow there), so not exactly half.
                assert!(
                    plan.weight_bytes() * 10 < f32_bytes * 7,
                    "{isa} {dtype}: {} vs {f32_bytes}",
                    plan.weight_bytes()
                );
                let x = Gen::new(21).vec(11 * 20, Gen::uniform);
                let r = bnfold::verify(
                    &model,
                    &x,
                    11,
                    &bnfold::VerifyOptions::default()
                        .with_kernel(KernelChoice::Force(isa))
                        .with_weights(dtype),
                )
                .unwrap();
                assert!(
                    r.passed(),
                    "{isa} {dtype}: {:e} > {:e}",
                    r.worst,
                    r.tolerance
                );
            }
        }
    }
}

/// The blocked driver with tiny blocks (depth 16, a few panels per weight block, 24 rows per
/// input block): every boundary (depth blocks, weight blocks copied contiguous, input blocks, an
/// odd last depth block of paired bf16 panels) on small shapes, every weight type and path, on an
/// exact grid (eighths: every product and partial sum is exact in f32), so the result must equal
/// the f64 reference bit for bit.
#[test]
fn tiny_blocks_cross_every_boundary_exactly() {
    let mut g = Gen::new(0xb10c_b10c);
    for &m in &[1, 5, 23, 24, 25, 49, 100] {
        for &k in &[1, 15, 16, 17, 31, 33, 70] {
            for &n in &[1, 7, 9, 17, 33, 70, 150] {
                let x = g.vec(m * k, Gen::eighths);
                let w = g.vec(n * k, Gen::eighths);
                let b = g.vec(n, Gen::eighths);
                let want = reference(&x, &w, &b, m, k, n);
                for isa in Isa::supported() {
                    for dtype in [bnfold::DType::F32, bnfold::DType::F16, bnfold::DType::BF16] {
                        let kern = DenseKernel::with_weights(
                            k,
                            n,
                            &w,
                            &b,
                            KernelChoice::Force(isa),
                            dtype,
                        )
                        .with_tiny_blocking();
                        assert_eq!(kern.blocking().kc, 16);
                        let mut y = vec![f32::NAN; m * n];
                        kern.forward_with_driver(&x, m, &mut y, &[], true);
                        assert_exact(
                            &y,
                            &want,
                            n,
                            &format_args!("{isa} {dtype} m={m} k={k} n={n}"),
                        );
                    }
                }
            }
        }
    }
}

/// Narrow layers (the row layout, fewer outputs than half a vector) compute blocks of rows that
/// share each weight load; every row gets the bits it gets alone (the same lane-wise sums along
/// `k`, then its lanes in index order), for each number of outputs a block takes together and
/// rows left over after the last whole block.
#[test]
fn narrow_layers_give_each_row_the_bits_it_gets_alone() {
    let mut g = Gen::new(21);
    for isa in Isa::supported() {
        let lanes = if isa == Isa::Avx512 { 16 } else { 8 };
        for n in 1..lanes / 2 {
            for k in [1, 5, 8, 30, 37] {
                let batch = 19;
                let x = g.vec(batch * k, Gen::uniform);
                let w = g.vec(n * k, Gen::uniform);
                let b = g.vec(n, Gen::uniform);
                let kern = kernel(isa, k, n, &w, &b);
                assert_eq!(kern.weight_bytes(), (n * k + n) * 4, "row layout");
                let mut all = vec![0.0; batch * n];
                kern.forward(&x, batch, &mut all, &[]);
                for r in 0..batch {
                    let mut one = vec![0.0; n];
                    kern.forward(&x[r * k..(r + 1) * k], 1, &mut one, &[]);
                    for (j, (a, o)) in all[r * n..(r + 1) * n].iter().zip(&one).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            o.to_bits(),
                            "{isa} n {n} k {k} row {r} out {j}"
                        );
                    }
                }
                let want = reference(&x, &w, &b, batch, k, n);
                for (i, (&a, &r)) in all.iter().zip(&want).enumerate() {
                    // k + 1 terms below 1 in magnitude, summed with k + 1 roundings (f32).
                    let tol = (k as f64 + 1.0) * f64::from(f32::EPSILON) * (k as f64 + 1.0);
                    assert!((f64::from(a) - r).abs() <= tol, "{isa} n {n} k {k} at {i}");
                }
            }
        }
    }
}
