//! Shared harness for the bnfold fuzz targets.
//!
//! - [`exercise`] takes a model that loaded and pushes it through everything a serving binary would
//!   do with it: compile folded and unfolded, run one tiny batch through each, and the f64
//!   reference. Values that parse but are absurd (huge widths with tiny tensors, NaN statistics,
//!   denormal variances) must give errors or numbers, never a panic.
//! - [`CappedAlloc`] is the global allocator of every target: a single allocation above
//!   [`MAX_ALLOC`] aborts, which libFuzzer reports as a crash. Under AddressSanitizer
//!   `-rss_limit_mb`/`-malloc_limit_mb` do this job; the cap keeps it when the targets are built
//!   with `-s none` (no sanitizer, so no `RUSTC_BOOTSTRAP=1` needed).

use std::alloc::{GlobalAlloc, Layout, System};

use bnfold::{LayerError, Model, Options};

/// Largest single allocation the targets allow. No input a fuzzer makes (a few KB) may make
/// bnfold ask for this much: the loader must bound every allocation by what the file paid for.
pub const MAX_ALLOC: usize = 256 << 20;

/// Input width above which [`exercise`] compiles but does not run the plan. A network with no
/// dense layer can declare a 16M-wide input in 100 bytes; its session buffers are then
/// proportional to the input the *caller* hands over, which is the caller's choice, and filling a
/// 64 MiB input per execution would only slow the fuzzer down.
pub const MAX_RUN_WIDTH: usize = 1 << 20;

/// The system allocator, refusing single allocations above [`MAX_ALLOC`].
pub struct CappedAlloc;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees hold; refusing an allocation by returning null is allowed by the `GlobalAlloc`
// contract (the standard library then calls `handle_alloc_error`, which aborts).
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` through this allocator with `layout`; forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

/// Load `bytes` both with and without the checksum and check the two loaders agree.
///
/// Returns the model loaded without the checksum check (the one that reaches deeper), if any.
pub fn load_both(bytes: &[u8]) -> Option<Model> {
    let checked = Model::from_bytes(bytes);
    let unchecked = Model::from_bytes_unchecked_crc(bytes);
    match (&checked, &unchecked) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                a.layers(),
                b.layers(),
                "checked and unchecked loads disagree"
            );
            assert_eq!(
                a.tensors(),
                b.tensors(),
                "checked and unchecked loads disagree"
            );
        }
        (Ok(_), Err(e)) => panic!("loads with the checksum verified but not without it: {e}"),
        // Everything that fails without the CRC check must fail with it too.
        (Err(_), Ok(_)) | (Err(_), Err(_)) => {}
    }
    unchecked.ok()
}

/// Compile `model` folded and unfolded, run one tiny batch through each and through the f64
/// reference, and check the shapes of what comes out.
pub fn exercise(model: &Model) {
    let unfolded = model
        .compile(&Options::unfolded())
        .unwrap_or_else(|e| panic!("a validated model must compile unfolded: {e}"));
    // Folding may overflow f32 on absurd (but finite) statistics; that is the one error allowed.
    let folded = match model.compile(&Options::folded()) {
        Ok(p) => Some(p),
        Err(e) if matches!(e.layer_kind(), Some(LayerError::FoldOverflow { .. })) => None,
        Err(e) => panic!("unexpected error compiling folded: {e}"),
    };
    let inputs = model.input_features();
    let outputs = model.output_features();
    if inputs > MAX_RUN_WIDTH {
        return;
    }
    let batch = 2;
    // Values in [-2, 2]: inside the input bound of the fold-overflow rule, so the folded plan's
    // accumulations are proven not to overflow (bnfold::fold::lower's module docs).
    let input: Vec<f32> = (0..batch * inputs)
        .map(|i| ((i % 17) as f32 - 8.0) * 0.25)
        .collect();
    assert!(input.iter().all(|v| v.abs() <= bnfold::fold::INPUT_BOUND));
    let yu = unfolded
        .session()
        .run(&input, batch)
        .unwrap_or_else(|e| panic!("a well-shaped input must run: {e}"))
        .to_vec();
    for plan in [Some(&unfolded), folded.as_ref()].into_iter().flatten() {
        assert_eq!(plan.input_features(), inputs);
        assert_eq!(plan.output_features(), outputs);
        let mut session = plan.session();
        let y = session
            .run(&input, batch)
            .unwrap_or_else(|e| panic!("a well-shaped input must run: {e}"));
        assert_eq!(y.len(), batch * outputs);
        // No silent infinities: folding never makes an output non-finite that the unfolded path
        // computes as finite (issue 11). A dense layer whose folded accumulation could overflow
        // for these inputs is kept unfolded; every other folded step computes the unfolded
        // path's formula or one rounding of it, so the two differ by rounding only (unless a BN
        // kept in its own form, with gamma / denom near f32::MAX / ulp, magnifies a one-ulp
        // difference past f32::MAX: docs/BATCHNORM.md, "Folding that could overflow"). (Within
        // 1e-5 of f32::MAX both forms may round either side of the boundary: folding changes
        // the order of roundings, each a few 2^-24 of the operands.)
        for (f, u) in y.iter().zip(&yu) {
            assert!(
                !u.is_finite() || f.is_finite() || u.abs() > f32::MAX * (1.0 - 1e-5),
                "folded {f}, unfolded {u}"
            );
        }
        // Wrong input shapes are errors, not panics.
        assert!(session.run(&input[..input.len() - 1], batch).is_err());
        assert!(session.run(&input, 0).is_err());
    }
    let x64: Vec<f64> = input.iter().map(|&v| v as f64).collect();
    let r = bnfold::reference::forward(model, &x64, batch)
        .unwrap_or_else(|e| panic!("the reference must run a validated model: {e}"));
    assert_eq!(r.len(), batch * outputs);
}
