//! Replays the fuzz regression corpus (`tests/regressions/`) and the committed fuzz seeds
//! (`fuzz/seeds/parse_bytes/`) through the loader, so every past finding stays fixed without a
//! fuzzer. See `fuzz/README.md` for how a crash becomes a file here.
//!
//! Each file must load to an error or to a model that compiles (folded and unfolded) and runs,
//! and never panic. A file may have a sidecar `NAME.expect` saying what must happen exactly:
//! `error: TEXT` (loading fails and the message contains TEXT) or `ok` (it loads, and the folded
//! and unfolded plans agree with the f64 reference).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use bnfold::{Error, LayerError, Model, Options};

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// Largest |folded - reference| and |unfolded - reference| allowed, relative to `1 + |reference|`,
/// for the `ok` files and the valid seeds. These are small networks (widths <= 16, at most five
/// dense layers, weights and inputs of magnitude <= ~2): each f32 dot product carries a relative
/// error of about `k * 2^-24` of `sum |w x|`, a few 1e-6 here, and folding rounds each weight once
/// more; 1e-4 leaves a wide margin while still catching any wrong formula (which errs by O(1)).
const TOL: f64 = 1e-4;

/// What running a loaded model produced.
struct Ran {
    /// Max error of each plan against the reference, when the reference is finite.
    max_err: Option<f64>,
}

/// Compile folded and unfolded, run a batch of two through each and through the reference.
fn run(model: &Model) -> Ran {
    let unfolded = model
        .compile(&Options::unfolded())
        .unwrap_or_else(|e| panic!("a validated model must compile unfolded: {e}"));
    let folded = match model.compile(&Options::folded()) {
        Ok(p) => Some(p),
        Err(e) if matches!(e.layer_kind(), Some(LayerError::FoldOverflow { .. })) => None,
        Err(e) => panic!("unexpected error compiling folded: {e}"),
    };
    let (n_in, n_out, batch) = (model.input_features(), model.output_features(), 2);
    // Under Miri (hundreds of times slower) only narrow inputs are run; the wide ones still load.
    let max_width = if cfg!(miri) { 1 << 10 } else { 1 << 20 };
    if n_in > max_width {
        return Ran { max_err: None };
    }
    let x: Vec<f32> = (0..batch * n_in)
        .map(|i| ((i % 7) as f32 - 3.0) * 0.5)
        .collect();
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let reference = bnfold::reference::forward(model, &x64, batch).expect("reference runs");
    assert_eq!(reference.len(), batch * n_out);
    let finite = reference.iter().all(|v| v.is_finite());
    let mut max_err: Option<f64> = finite.then_some(0.0);
    let yu = unfolded.session().run(&x, batch).expect("runs").to_vec();
    for plan in [Some(&unfolded), folded.as_ref()].into_iter().flatten() {
        let y = plan.session().run(&x, batch).expect("runs").to_vec();
        assert_eq!(y.len(), batch * n_out);
        // No silent infinities: folding never makes an output non-finite that the unfolded path
        // computes as finite.
        for (i, (f, u)) in y.iter().zip(&yu).enumerate() {
            // (Within 1e-5 of f32::MAX both forms may round either side of the boundary.)
            assert!(
                !u.is_finite() || f.is_finite() || u.abs() > f32::MAX * (1.0 - 1e-5),
                "output {i}: {f} where the unfolded path gives {u}"
            );
        }
        if let Some(m) = max_err.as_mut() {
            for (a, r) in y.iter().zip(&reference) {
                *m = m.max((*a as f64 - r).abs() / (1.0 + r.abs()));
            }
        }
    }
    Ran { max_err }
}

enum Expect {
    Any,
    Ok,
    Error(String),
}

fn expectation(path: &Path) -> Expect {
    match std::fs::read_to_string(path.with_extension("expect")) {
        Err(_) => Expect::Any,
        Ok(s) => {
            let s = s.trim();
            if s == "ok" {
                Expect::Ok
            } else if let Some(t) = s.strip_prefix("error:") {
                Expect::Error(t.trim().to_owned())
            } else {
                panic!("{}: bad .expect file: {s:?}", path.display())
            }
        }
    }
}

/// Check one file; `Err` describes a failure (a panic included).
fn check(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let expect = expectation(path);
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        let checked = Model::from_bytes(&bytes);
        let unchecked = Model::from_bytes_unchecked_crc(&bytes);
        if checked.is_ok() && unchecked.is_err() {
            return Err("loads with the checksum verified but not without".into());
        }
        match (&expect, &checked) {
            (Expect::Error(text), Err(e)) if !e.to_string().contains(text.as_str()) => {
                return Err(format!("error {e:?} does not mention {text:?}"));
            }
            (Expect::Error(_), Ok(_)) => return Err("loaded, but an error was expected".into()),
            (Expect::Ok, Err(e)) => return Err(format!("expected to load, got: {e}")),
            _ => {}
        }
        if let Ok(m) = &unchecked {
            let ran = run(m);
            if let Expect::Ok = expect {
                match ran.max_err {
                    Some(e) if e <= TOL => {}
                    // Not run under Miri (too wide); it did load, which is what Miri checks.
                    None if cfg!(miri) => {}
                    other => return Err(format!("plans disagree with the reference: {other:?}")),
                }
            }
        }
        Ok(())
    }));
    match outcome {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("?")
        )),
    }
}

#[test]
fn regression_corpus_replays_without_panics() {
    let files = files("tests/regressions", "bnw");
    assert!(!files.is_empty(), "the regression corpus is empty");
    let failures: Vec<String> = files
        .iter()
        .filter_map(|p| check(p).err().map(|e| format!("{}: {e}", p.display())))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fuzz_seeds_are_meaningful() {
    // The seeds must reach deep code: all but the deliberately invalid ones load, compile and
    // agree with the reference; the invalid ones fail validation (a layer error), not parsing.
    let files = files("fuzz/seeds/parse_bytes", "bnw");
    assert!(files.len() >= 15, "only {} seeds", files.len());
    let mut loaded = 0;
    for p in &files {
        let bytes = std::fs::read(p).expect("read seed");
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let res = Model::from_bytes(&bytes);
        if name.starts_with("invalid_") {
            let e = res.expect_err(name);
            assert!(matches!(e, Error::Layer { .. }), "{name}: {e}");
            continue;
        }
        let m = res.unwrap_or_else(|e| panic!("{name}: {e}"));
        let err = run(&m)
            .max_err
            .unwrap_or_else(|| panic!("{name}: non-finite reference"));
        assert!(err <= TOL, "{name}: max relative error {err:e}");
        loaded += 1;
    }
    assert!(
        loaded * 4 >= files.len() * 3,
        "only {loaded} of {} seeds load",
        files.len()
    );
}
