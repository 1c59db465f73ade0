//! The packed form of a dense layer stays within a stated factor of its f32 size (issue 11): a
//! narrow layer (`Dense(k -> 1)`, a regression head) is not padded to a whole SIMD panel.
//!
//! Stated bound (`DenseKernel` docs): at most twice the f32 weights and bias, plus 128 bytes per
//! panel of `LANES` output features (rounding each panel to a cache line, and the one-line gap
//! between panels) and 64 bytes of alignment.

use bnfold::kernels::{DenseKernel, EpilogueOp, Isa, KernelChoice};
use bnfold::{Activation, synth::Rng};

#[test]
fn packed_layers_stay_within_twice_their_f32_size() {
    for isa in Isa::supported() {
        for n in 1..=40 {
            for k in [1, 7, 64, 1000] {
                let w = vec![0.5f32; n * k];
                let b = vec![0.0f32; n];
                let kern = DenseKernel::with_choice(k, n, &w, &b, KernelChoice::Force(isa));
                let f32_bytes = 4 * (n * k + n);
                // Panels have at least 8 lanes, so there are at most n / 8 of them (rounded up).
                let bound = 2 * f32_bytes + 128 * n.div_ceil(8) + 64;
                assert!(
                    kern.weight_bytes() <= bound,
                    "{isa} Dense({k} -> {n}): {} bytes for {f32_bytes} bytes of f32",
                    kern.weight_bytes()
                );
            }
        }
        // The case the issue measured: a 2^20-input regression head holds its f32 size, not 8x
        // or 16x of it.
        let k = 1 << 20;
        let kern =
            DenseKernel::with_choice(k, 1, &vec![0.25f32; k], &[1.0], KernelChoice::Force(isa));
        assert!(
            kern.weight_bytes() <= 4 * (k + 1),
            "{isa}: {}",
            kern.weight_bytes()
        );
    }
}

/// Narrow layers large enough for the pool: the same bits on 1 and 2 threads, and the f64
/// reference within the summation bound.
#[test]
fn narrow_layers_split_across_threads_and_match_the_reference() {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let mut g = Rng::new(3);
    for (m, k, n) in [
        (64, 20_000, 3),
        (7, 100_003, 1),
        (1, 300_001, 2),
        (33, 5_000, 7),
    ] {
        let x = g.uniform_vec(m * k, -1.0, 1.0);
        let w = g.uniform_vec(n * k, -1.0, 1.0);
        let b = g.uniform_vec(n, -1.0, 1.0);
        let ops = [EpilogueOp::Act(Activation::Tanh)];
        for isa in Isa::supported() {
            let kern = DenseKernel::with_choice(k, n, &w, &b, KernelChoice::Force(isa));
            let mut y1 = vec![0.0; m * n];
            let mut y2 = vec![0.0; m * n];
            one.install(|| kern.forward(&x, m, &mut y1, &ops));
            two.install(|| kern.forward(&x, m, &mut y2, &ops));
            assert!(
                y1.iter().zip(&y2).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa} {m}x{k}x{n}: 1 and 2 threads differ"
            );
            for r in 0..m {
                for o in 0..n {
                    let mut z = f64::from(b[o]);
                    for i in 0..k {
                        z += f64::from(x[r * k + i]) * f64::from(w[o * k + i]);
                    }
                    // Sum of |terms| times k * 2^-24 bounds the f32 summation error; tanh has
                    // slope <= 1, and its f32 evaluation adds a few ulps.
                    let mut mag = f64::from(b[o].abs());
                    for i in 0..k {
                        mag += f64::from((x[r * k + i] * w[o * k + i]).abs());
                    }
                    let bound = mag * k as f64 * f64::from(f32::EPSILON) / 2.0 + 1e-6;
                    let got = f64::from(y1[r * n + o]);
                    assert!(
                        (got - z.tanh()).abs() <= bound,
                        "{isa} {m}x{k}x{n} row {r} out {o}: {got} vs {}",
                        z.tanh()
                    );
                }
            }
        }
    }
}
