//! The trainer's Batch Normalization semantics and its shipped models.
//!
//! What must hold: the BN backward pass is the exact gradient (checked against central differences
//! in f64); the moving statistics follow `shadow = d * shadow + (1 - d) * batch` with TF's
//! `num_updates` schedule, updated exactly once per step; training normalises with batch moments
//! and inference with the EMA; training is deterministic; the tutorial's contrast holds; and the
//! shipped digits model classifies identically folded and unfolded.

use bnfold::{Activation, Model, Options};
use bnfold_train::bn::{self, Real};
use bnfold_train::{
    Ema, Init, Loss, Network, Optimizer, OptimizerKind, Spec, Targets, digits, morvan,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Repository root, where models/ and data/ live (this crate is `train/` in it).
fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("train/ has a parent")
        .to_owned()
}

/// The numbers of a headerless CSV file, row after row.
fn read_csv(path: &std::path::Path) -> Vec<f32> {
    std::fs::read_to_string(path)
        .expect("readable")
        .lines()
        .flat_map(|l| l.split(','))
        .map(|v| v.trim().parse().expect("a number"))
        .collect()
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// `L = sum(w * bn(x))` for fixed random weights `w`, so `dL/dy = w`.
fn bn_loss(x: &[f64], batch: usize, gamma: &[f64], beta: &[f64], w: &[f64], eps: f64) -> f64 {
    let mut y = vec![0.0; x.len()];
    let mut xhat = vec![0.0; x.len()];
    bn::forward_train(x, batch, gamma, beta, eps, &mut y, &mut xhat);
    y.iter().zip(w).map(|(a, b)| a * b).sum()
}

#[test]
fn bn_backward_matches_central_differences_in_f64() {
    // Several shapes, including a batch of 2 (where the batch moments dominate) and a feature
    // whose batch variance is tiny next to eps.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for &(batch, features, eps) in &[
        (2usize, 3usize, 1e-3),
        (5, 4, 1e-3),
        (16, 2, 1e-5),
        (7, 1, 0.5),
    ] {
        let n = batch * features;
        let mut x = uniform(&mut rng, n, -3.0, 5.0);
        if features > 1 {
            // Feature 1 nearly constant: variance ~1e-6, comparable to eps.
            for b in 0..batch {
                x[b * features + 1] = 2.0 + 1e-3 * (b as f64 - batch as f64 / 2.0);
            }
        }
        let gamma = uniform(&mut rng, features, 0.5, 2.0);
        let beta = uniform(&mut rng, features, -1.0, 1.0);
        let w = uniform(&mut rng, n, -1.0, 1.0);

        let mut y = vec![0.0; n];
        let mut xhat = vec![0.0; n];
        let m = bn::forward_train(&x, batch, &gamma, &beta, eps, &mut y, &mut xhat);
        let (mut dx, mut dgamma, mut dbeta) =
            (vec![0.0; n], vec![0.0; features], vec![0.0; features]);
        bn::backward(
            &w,
            &xhat,
            batch,
            &gamma,
            &m.inv_std,
            &mut dx,
            &mut dgamma,
            &mut dbeta,
        );

        // Central differences: truncation error O(h^2) (~1e-12 here) plus rounding ~1e-16 * |L| / h
        // (~1e-10); 1e-7 absolute plus 1e-6 relative is far above both and far below any wrong
        // term (which would be of the order of the gradient itself).
        let h = 1e-6;
        let close = |analytic: f64, numeric: f64, what: &str| {
            assert!(
                (analytic - numeric).abs() <= 1e-7 + 1e-6 * numeric.abs(),
                "batch {batch}, features {features}, eps {eps}: {what}: analytic {analytic}, numeric {numeric}"
            );
        };
        for i in 0..n {
            let mut xp = x.clone();
            xp[i] += h;
            let mut xm = x.clone();
            xm[i] -= h;
            let num = (bn_loss(&xp, batch, &gamma, &beta, &w, eps)
                - bn_loss(&xm, batch, &gamma, &beta, &w, eps))
                / (2.0 * h);
            close(dx[i], num, &format!("dx[{i}]"));
        }
        for j in 0..features {
            let (mut gp, mut gm) = (gamma.clone(), gamma.clone());
            gp[j] += h;
            gm[j] -= h;
            let num = (bn_loss(&x, batch, &gp, &beta, &w, eps)
                - bn_loss(&x, batch, &gm, &beta, &w, eps))
                / (2.0 * h);
            close(dgamma[j], num, &format!("dgamma[{j}]"));
            let (mut bp, mut bm) = (beta.clone(), beta.clone());
            bp[j] += h;
            bm[j] -= h;
            let num = (bn_loss(&x, batch, &gamma, &bp, &w, eps)
                - bn_loss(&x, batch, &gamma, &bm, &w, eps))
                / (2.0 * h);
            close(dbeta[j], num, &format!("dbeta[{j}]"));
        }
    }
}

#[test]
fn bn_training_forward_uses_biased_batch_variance() {
    // Feature values 1, 2, 3, 6: mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5 (the unbiased
    // one would be 14 / 3).
    let x = [1.0f64, 2.0, 3.0, 6.0];
    let (mut y, mut xhat) = ([0.0; 4], [0.0; 4]);
    let m = bn::forward_train(&x, 4, &[2.0], &[0.5], 1e-3, &mut y, &mut xhat);
    assert_eq!(m.mean, vec![3.0]);
    assert_eq!(m.var, vec![3.5]);
    let inv = 1.0 / (3.5f64 + 1e-3).sqrt();
    for (yi, xi) in y.iter().zip(x) {
        assert!((yi - (2.0 * (xi - 3.0) * inv + 0.5)).abs() < 1e-15);
    }
    assert_eq!(<f32 as Real>::from_f64(0.5).to_f64(), 0.5);
}

/// A network of an input BN over 2 features and one dense layer to 1 output: the input BN's
/// batch moments are those of the raw input, which the test knows independently of training.
fn input_bn_net(ema: Ema) -> Network {
    let spec = Spec {
        inputs: 2,
        hidden: vec![],
        outputs: 1,
        activation: Activation::Relu,
        input_batch_norm: true,
        batch_norm: false,
        eps: 1e-3,
        ema,
        init: Init::Normal {
            std: 0.5,
            bias: 0.0,
        },
        loss: Loss::Mse,
    };
    Network::new(spec, 5).expect("valid spec")
}

/// Batch `k` has two rows, `m_k -/+ d_k` in feature 0 and `-(m_k -/+ d_k)` in feature 1: batch
/// mean `(m_k, -m_k)`, biased variance `d_k^2` in both.
const MEANS: [f64; 4] = [1.0, 3.0, -2.0, 5.0];
const HALF_SPREADS: [f64; 4] = [1.0, 2.0, 0.5, 3.0];

fn batch(k: usize) -> [f32; 4] {
    let (m, d) = (MEANS[k], HALF_SPREADS[k]);
    [
        (m - d) as f32,
        -(m - d) as f32,
        (m + d) as f32,
        -(m + d) as f32,
    ]
}

fn train_four_steps(net: &mut Network) {
    let mut opt = Optimizer::new(OptimizerKind::Sgd { lr: 0.01 });
    let y = [0.5f32, -0.5];
    for k in 0..4 {
        net.train_step(&batch(k), 2, Targets::Values(&y), &mut opt)
            .expect("valid batch");
        // Evaluating between steps must not touch the moving statistics.
        net.eval_loss(&batch(k), 2, Targets::Values(&y))
            .expect("valid batch");
        net.predict(&batch(0), 2).expect("valid batch");
    }
}

#[test]
fn ema_follows_the_hand_computed_sequence_with_num_updates() {
    let mut net = input_bn_net(Ema {
        decay: 0.9,
        num_updates: true,
    });
    train_four_steps(&mut net);
    // By hand: shadows start at 0; update n uses d_n = min(0.9, (1 + n) / (10 + n)):
    // d_0 = 1/10, d_1 = 2/11, d_2 = 3/12, d_3 = 4/13 (all below 0.9).
    // mean:  0.1 * 0 + 0.9 * 1 = 0.9
    //        (2/11) * 0.9 + (9/11) * 3 = 28.8 / 11
    //        (3/12) * (28.8 / 11) + (9/12) * (-2)
    //        (4/13) * previous + (9/13) * 5
    let m1 = 0.9;
    let m2 = 2.0 / 11.0 * m1 + 9.0 / 11.0 * 3.0;
    let m3 = 0.25 * m2 - 1.5;
    let m4 = 4.0 / 13.0 * m3 + 9.0 / 13.0 * 5.0;
    // variance: batch variances d^2 = 1, 4, 0.25, 9.
    let v1 = 0.9;
    let v2 = 2.0 / 11.0 * v1 + 9.0 / 11.0 * 4.0;
    let v3 = 0.25 * v2 + 0.75 * 0.25;
    let v4 = 4.0 / 13.0 * v3 + 9.0 / 13.0 * 9.0;
    let bn = net.input_batch_norm().expect("has input BN");
    assert_eq!(bn.updates, 4, "one update per step");
    // The batch moments are computed in f64 from f32 inputs that are exact here, so only the
    // EMA's own rounding (a few ulps) separates code from hand.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
    assert!(
        close(bn.moving_mean[0], m4),
        "mean {} vs {m4}",
        bn.moving_mean[0]
    );
    assert!(
        close(bn.moving_mean[1], -m4),
        "mean {} vs {}",
        bn.moving_mean[1],
        -m4
    );
    assert!(
        close(bn.moving_var[0], v4),
        "var {} vs {v4}",
        bn.moving_var[0]
    );
    assert!(
        close(bn.moving_var[1], v4),
        "var {} vs {v4}",
        bn.moving_var[1]
    );
}

#[test]
fn ema_with_constant_decay_matches_the_hand_computed_sequence() {
    let mut net = input_bn_net(Ema::new(0.5));
    train_four_steps(&mut net);
    // 0.5 each time: 0.5, 0.5*0.5 + 0.5*3 = 1.75, 0.875 - 1 = -0.125, -0.0625 + 2.5 = 2.4375.
    // A missing update would leave 0.5 * (-0.125) ... and a double one gives another value.
    let bn = net.input_batch_norm().expect("has input BN");
    assert_eq!(bn.moving_mean[0], 2.4375);
    // Variances 1, 4, 0.25, 9: 0.5, 2.25, 1.25, 5.125.
    assert_eq!(bn.moving_var[0], 5.125);
    assert_eq!(bn.updates, 4);
}

#[test]
fn hidden_bn_is_updated_exactly_once_per_step_with_the_batch_moments() {
    // A hidden BN's batch moments depend on the weights; compute them independently from the
    // initial weights and check that after one step the shadow is (1 - d) * batch mean, which a
    // double update ((1 - d^2) * mean) or a missing one (0) would not give.
    let d = 0.5;
    let spec = Spec {
        inputs: 3,
        hidden: vec![4, 2],
        outputs: 1,
        activation: Activation::Tanh,
        input_batch_norm: false,
        batch_norm: true,
        eps: 1e-3,
        ema: Ema::new(d),
        init: Init::Normal {
            std: 1.0,
            bias: 0.1,
        },
        loss: Loss::Mse,
    };
    let mut net = Network::new(spec, 9).expect("valid spec");
    let x = [0.5f32, -1.0, 2.0, 1.5, 0.0, -0.5, -2.0, 1.0, 0.25];
    let (w, b) = net
        .dense(0)
        .map(|(w, b)| (w.to_vec(), b.to_vec()))
        .expect("layer 0");
    let mut mean = [0f64; 4];
    for row in x.chunks_exact(3) {
        for (j, m) in mean.iter_mut().enumerate() {
            let z: f64 = (0..3)
                .map(|i| row[i] as f64 * w[j * 3 + i] as f64)
                .sum::<f64>()
                + b[j] as f64;
            *m += z / 3.0;
        }
    }
    let mut opt = Optimizer::new(OptimizerKind::Sgd { lr: 0.01 });
    net.train_step(&x, 3, Targets::Values(&[1.0, 0.0, -1.0]), &mut opt)
        .expect("valid batch");
    let bn0 = &net.batch_norms()[0];
    for (got, m) in bn0.moving_mean.iter().zip(mean) {
        // f32 dot products against an f64 sum of 3 terms: 1e-5 relative is ample.
        assert!(
            (got - (1.0 - d) * m).abs() <= 1e-5 * m.abs().max(1.0),
            "{got} vs {}",
            (1.0 - d) * m
        );
    }
    for _ in 0..6 {
        net.train_step(&x, 3, Targets::Values(&[1.0, 0.0, -1.0]), &mut opt)
            .expect("valid batch");
        net.eval_loss(&x, 3, Targets::Values(&[1.0, 0.0, -1.0]))
            .expect("valid batch");
    }
    assert_eq!(net.steps(), 7);
    for bn in net.batch_norms() {
        assert_eq!(bn.updates, 7, "exactly one EMA update per training step");
    }
}

#[test]
fn training_uses_batch_moments_and_inference_uses_the_ema() {
    // Input BN -> dense (w = 1, b = 0) -> hidden BN -> identity -> dense (w = 1, b = 0), with
    // moving statistics set far from any batch's: mean 100, variance 4 everywhere.
    let spec = Spec {
        inputs: 1,
        hidden: vec![1],
        outputs: 1,
        activation: Activation::Identity,
        input_batch_norm: true,
        batch_norm: true,
        eps: 1e-3,
        ema: Ema::new(0.5),
        init: Init::Normal {
            std: 1.0,
            bias: 0.0,
        },
        loss: Loss::Mse,
    };
    let mut net = Network::new(spec, 1).expect("valid spec");
    net.set_dense(0, &[1.0], &[0.0]).expect("shape");
    net.set_dense(1, &[1.0], &[0.0]).expect("shape");
    for bn in net.batch_norms_mut() {
        bn.moving_mean = vec![100.0];
        bn.moving_var = vec![4.0];
    }
    let x = [1.0f32, 3.0];

    // Training mode: batch mean 2, biased variance 1. Input BN gives +-1/sqrt(1.001); the hidden BN
    // sees those (mean 0, variance 1/1.001) and standardises them again.
    let s1 = 1.0 / (1.0f64 + 1e-3).sqrt();
    let s2 = 1.0 / (s1 * s1 + 1e-3).sqrt();
    let train = net.forward_train(&x, 2).expect("valid batch").to_vec();
    let want_train = [-s1 * s2, s1 * s2];
    // Inference mode: (x - 100) / sqrt(4.001), then (v - 100) / sqrt(4.001) again.
    let e = |v: f64| (v - 100.0) / (4.0f64 + 1e-3).sqrt();
    let want_infer = [e(e(1.0)), e(e(3.0))];
    let infer = net.predict(&x, 2).expect("valid batch");
    // f32 arithmetic on values of order 1 (training) and 50 (inference): 1e-5 relative.
    for i in 0..2 {
        assert!(
            (train[i] as f64 - want_train[i]).abs() < 1e-5,
            "train {train:?} vs {want_train:?}"
        );
        assert!(
            (infer[i] as f64 - want_infer[i]).abs() < 1e-5 * want_infer[i].abs(),
            "infer {infer:?} vs {want_infer:?}"
        );
    }
    // Neither mode touched the statistics.
    for bn in net.batch_norms_mut() {
        assert_eq!(
            (bn.moving_mean[0], bn.moving_var[0], bn.updates),
            (100.0, 4.0, 0)
        );
    }
    // The exported file infers with the same EMA statistics, folded and unfolded.
    let bytes = net
        .to_writer(&[])
        .expect("writer")
        .to_bytes()
        .expect("bytes");
    let model = Model::from_bytes(&bytes).expect("valid model");
    for opts in [Options::folded(), Options::unfolded()] {
        let plan = model.compile(&opts).expect("compiles");
        let y = plan.session().run(&x, 2).expect("runs").to_vec();
        for i in 0..2 {
            assert!(
                (y[i] as f64 - want_infer[i]).abs() < 1e-5 * want_infer[i].abs(),
                "{opts:?}: {y:?}"
            );
        }
    }
}

fn short_morvan(steps: usize, activation: Activation, seed: u64) -> morvan::Config {
    morvan::Config {
        steps,
        activation,
        seed,
        // 600 points instead of 2500: the full-data evaluations dominate a debug build's time.
        samples: 600,
        // Measure the full-data loss only at the start, after step 1 and at the end (keeps the
        // test fast in debug builds).
        record_every: steps,
        ..morvan::Config::default()
    }
}

#[test]
fn same_seed_gives_the_same_file_bit_for_bit() {
    let cfg = short_morvan(20, Activation::Relu, 3);
    let a = morvan::run(&cfg, &mut |_| {}).expect("trains");
    let b = morvan::run(&cfg, &mut |_| {}).expect("trains");
    let bytes = |o: &morvan::Outcome| {
        morvan::writer(&cfg, o)
            .expect("writer")
            .to_bytes()
            .expect("bytes")
    };
    assert_eq!(bytes(&a), bytes(&b));
    let other = morvan::run(&short_morvan(20, Activation::Relu, 4), &mut |_| {}).expect("trains");
    assert_ne!(
        bytes(&a),
        bytes(&other),
        "a different seed must give different weights"
    );

    // Adam, cross-entropy and shuffled batches too, on a slice of the digits data.
    let all = digits::load(&root().join(digits::DEFAULT_DATA)).expect("data");
    let (train, test) = digits::split(&all);
    let small = |d: &digits::Digits, rows: usize| digits::Digits {
        pixels: d.pixels[..rows * digits::PIXELS].to_vec(),
        labels: d.labels[..rows].to_vec(),
    };
    let (train, test) = (small(&train, 160), small(&test, 40));
    let cfg = digits::Config {
        hidden: vec![16, 16],
        epochs: 2,
        ..digits::Config::default()
    };
    let run = || {
        let o = digits::train(&cfg, &train, &test, &mut |_| {}).expect("trains");
        digits::writer(&cfg, &o)
            .expect("writer")
            .to_bytes()
            .expect("bytes")
    };
    assert_eq!(run(), run());
}

#[test]
fn with_bn_ends_lower_than_without_on_a_short_seeded_run() {
    // relu (the lesson's code): without BN, N(0, 1) weights through 7 layers give outputs of order
    // 1e4 and the first SGD step overflows; with BN the loss comes down to the noise level's order.
    let o = morvan::run(&short_morvan(60, Activation::Relu, 1), &mut |_| {}).expect("trains");
    let (with, without) = o.final_losses();
    assert!(with.is_finite() && with < 1000.0, "with BN: {with}");
    // A diverged network (NaN loss) counts as worse; a finite one must be higher.
    assert!(
        without.is_nan() || without > with,
        "without BN ({without}) must be worse than with BN ({with})"
    );
    // tanh (the annotated discussion): both stay finite, and BN still ends far lower.
    let o = morvan::run(&short_morvan(100, Activation::Tanh, 1), &mut |_| {}).expect("trains");
    let (with, without) = o.final_losses();
    assert!(with.is_finite() && without.is_finite(), "{with} {without}");
    assert!(with * 1.5 < without, "with BN {with}, without {without}");
}

#[test]
fn shipped_digits_model_folded_and_unfolded_agree_on_every_test_sample() {
    let model = Model::load(root().join("models/digits.bnw")).expect("models/digits.bnw loads");
    let all = digits::load(&root().join(digits::DEFAULT_DATA)).expect("data");
    let (_, test) = digits::split(&all);
    let run = |opts: Options| {
        let plan = model.compile(&opts).expect("compiles");
        plan.session()
            .run(&test.pixels, test.rows())
            .expect("runs")
            .to_vec()
    };
    let folded = run(Options::folded());
    let unfolded = run(Options::unfolded());
    let (pf, pu) = (
        digits::argmax_rows(&folded, digits::CLASSES),
        digits::argmax_rows(&unfolded, digits::CLASSES),
    );
    for (i, (a, b)) in pf.iter().zip(&pu).enumerate() {
        assert!(
            a.is_some() && a == b,
            "test row {i}: folded says {a:?}, unfolded says {b:?}"
        );
    }
    // The accuracy recorded in the file is the one the engine reproduces (the trainer's own
    // inference could differ from the engine only on a near tie: allow one row).
    let acc = digits::accuracy(&folded, &test.labels);
    let recorded: f64 = model
        .metadata_value("test_accuracy")
        .and_then(|v| v.parse().ok())
        .expect("test_accuracy in metadata");
    assert!(
        (acc - recorded).abs() <= 1.0 / test.rows() as f64,
        "engine {acc}, metadata {recorded}"
    );
    assert!(acc > 0.95, "test accuracy {acc}");
    for key in [
        "producer",
        "ema_decay",
        "bn_eps",
        "steps",
        "seed",
        "bn_variance",
        "final_train_loss",
        "final_test_loss",
    ] {
        assert!(
            model.metadata_value(key).is_some(),
            "metadata key {key} missing"
        );
    }
    assert_eq!(model.metadata_value("bn_variance"), Some("biased"));
}

#[test]
fn digits_sample_is_the_first_eight_test_rows() {
    let all = digits::load(&root().join(digits::DEFAULT_DATA)).expect("data");
    assert_eq!(all.rows(), 1797);
    let (train, test) = digits::split(&all);
    assert_eq!((train.rows(), test.rows()), (1433, 364));
    let sample = read_csv(&root().join("models/digits_sample.csv"));
    assert_eq!(sample.len(), 8 * 64);
    assert_eq!(sample, test.pixels[..8 * 64].to_vec());
}

#[test]
fn shipped_morvan_model_loads_and_records_its_experiment() {
    let model = Model::load(root().join("models/morvan.bnw")).expect("models/morvan.bnw loads");
    assert_eq!((model.input_features(), model.output_features()), (1, 1));
    assert_eq!(model.metadata_value("ema_decay"), Some("0.5"));
    assert_eq!(model.metadata_value("bn_eps"), Some("1e-3"));
    let loss: f64 = model
        .metadata_value("final_loss")
        .and_then(|v| v.parse().ok())
        .expect("final_loss");
    // The noise alone has variance 64; a fitted network ends within a small factor of it.
    assert!(loss.is_finite() && loss < 200.0, "final loss {loss}");
}

#[test]
fn loss_plot_is_a_png_with_both_curves() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("loss.png");
    let a: Vec<(f64, f64)> = (1..=50).map(|i| (i as f64, 1000.0 / i as f64)).collect();
    let b: Vec<(f64, f64)> = (1..=50)
        .map(|i| (i as f64, 2000.0 - 10.0 * i as f64))
        .collect();
    let series = [
        bnfold_train::plot::Series {
            label: "a",
            color: (31, 119, 180),
            points: &a,
        },
        bnfold_train::plot::Series {
            label: "b",
            color: (214, 39, 40),
            points: &b,
        },
    ];
    bnfold_train::plot::log_curves(&path, "t", "x", "y", &series, (400, 300)).expect("plots");
    let png = std::fs::read(&path).expect("written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height, big-endian, right after the chunk length and type.
    assert_eq!(&png[16..24], &[0, 0, 1, 144, 0, 0, 1, 44]);
    // A plot with nothing finite to draw is an error, not an empty picture.
    let nan = [(1.0, f64::NAN), (2.0, f64::NAN)];
    let bad = [bnfold_train::plot::Series {
        label: "n",
        color: (0, 0, 0),
        points: &nan,
    }];
    assert!(bnfold_train::plot::log_curves(&path, "t", "x", "y", &bad, (400, 300)).is_err());
}

#[test]
fn bad_digits_data_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.csv.gz");
    std::fs::write(&bad, b"not gzip").expect("write");
    assert!(digits::load(&bad).is_err());
}

#[test]
fn shipped_digits_model_gives_the_same_class_with_f16_and_bf16_weights() {
    // Issue 12: half-precision packed weights must not change a single prediction of the shipped
    // classifier on its 364 test images.
    let model = Model::load(root().join("models/digits.bnw")).expect("models/digits.bnw loads");
    let all = digits::load(&root().join(digits::DEFAULT_DATA)).expect("data");
    let (_, test) = digits::split(&all);
    let classes = |weights: bnfold::DType| {
        let plan = model
            .compile(&Options::folded().with_weights(weights))
            .expect("compiles");
        let y = plan
            .session()
            .run(&test.pixels, test.rows())
            .expect("runs")
            .to_vec();
        digits::argmax_rows(&y, digits::CLASSES)
    };
    let want = classes(bnfold::DType::F32);
    for weights in [bnfold::DType::F16, bnfold::DType::BF16] {
        let got = classes(weights);
        let differ: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
        assert!(differ.is_empty(), "{weights}: rows {differ:?} change class");
    }
}
