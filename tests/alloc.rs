//! A session call allocates nothing once its buffers have grown to the batch.
//!
//! A counting global allocator records allocations made by this thread; the plans of the first
//! two tests run on the calling thread (their layers are far below the parallel threshold), so
//! every allocation a call makes is counted; the last counts the pool thread a split call runs on.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bnfold::{Activation, DType, Model, Options};
use common::{L, Stats, input, network};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // try_with: the thread-local may be gone during thread teardown; then just don't count.
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCS.with(Cell::get)
}

#[test]
fn steady_state_calls_allocate_nothing() {
    let bytes = network(
        30,
        &[
            L::Bn,
            L::Dense(30),
            L::Bn,
            L::Act(Activation::Tanh),
            L::Dense(30),
            L::Bn,
            L::Act(Activation::Relu),
            L::Dense(10),
            L::Act(Activation::Softmax),
        ],
        1,
        DType::F32,
        Stats::default(),
    );
    let model = Model::from_bytes(&bytes).unwrap();
    for opts in [Options::folded(), Options::unfolded()] {
        let plan = model.compile(&opts).unwrap();
        let x = input(16, 30, 1);
        let mut out = vec![0.0; 16 * 10];

        let mut session = plan.session_with_capacity(16);
        let before = allocations();
        for batch in [1, 16, 7, 16] {
            let y = session.run(&x[..batch * 30], batch).unwrap();
            assert_eq!(y.len(), batch * 10);
        }
        session.run_into(&x, 16, &mut out).unwrap();
        assert_eq!(
            allocations() - before,
            0,
            "{:?}: a call allocated",
            opts.mode
        );

        // A lazily grown session allocates on its first call only.
        let mut lazy = plan.session();
        lazy.run(&x, 16).unwrap();
        let before = allocations();
        lazy.run(&x, 16).unwrap();
        lazy.run(&x[..30], 1).unwrap();
        assert_eq!(
            allocations() - before,
            0,
            "{:?}: warmed session allocated",
            opts.mode
        );
        // The counter is live: compiling a plan does allocate.
        let before = allocations();
        let _again = model.compile(&opts).unwrap();
        assert!(allocations() > before);
    }
}

#[test]
fn owned_sessions_in_static_places_allocate_nothing_per_call() {
    use std::cell::RefCell;
    use std::sync::Arc;

    thread_local! {
        // The place a server keeps a per-thread session: 'static, so it must own its plan.
        static SESSION: RefCell<Option<bnfold::OwnedSession>> = const { RefCell::new(None) };
    }
    let bytes = network(
        12,
        &[
            L::Dense(20),
            L::Bn,
            L::Act(Activation::GeluTanh),
            L::Dense(5),
        ],
        4,
        DType::F16,
        Stats::default(),
    );
    let model = Model::from_bytes(&bytes).unwrap();
    for opts in [Options::folded(), Options::unfolded()] {
        let plan = Arc::new(model.compile(&opts).unwrap());
        let x = input(8, 12, 4);
        let want = plan.session().run(&x, 8).unwrap().to_vec();
        SESSION.with_borrow_mut(|s| *s = Some(plan.owned_session_with_capacity(8)));
        // The Arc is shared: dropping ours leaves the session's plan alive.
        let weak = Arc::downgrade(&plan);
        drop(plan);
        let mut out = vec![0.0; 8 * 5];
        let before = allocations();
        SESSION.with_borrow_mut(|s| {
            let s = s.as_mut().expect("set above");
            for batch in [8, 1, 8] {
                assert_eq!(s.run(&x[..batch * 12], batch).unwrap().len(), batch * 5);
            }
            s.run_into(&x, 8, &mut out).unwrap();
        });
        assert_eq!(
            allocations() - before,
            0,
            "{:?}: a call allocated",
            opts.mode
        );
        // Same computation as a borrowing session: the same bits.
        assert_eq!(out, want, "{:?}", opts.mode);
        // The session kept the plan alive, and dropping it releases the plan.
        assert!(weak.upgrade().is_some());
        SESSION.with_borrow_mut(|s| *s = None);
        assert!(weak.upgrade().is_none());
    }
}

/// A narrow plan that splits a large call by rows across the pool (`Plan::rows_per_part`)
/// allocates nothing either, on the thread that makes the call (counted inside the pool, where
/// the call runs and does its share of the parts).
#[test]
fn calls_split_by_rows_across_a_pool_allocate_nothing_on_the_calling_thread() {
    let bytes = bnfold::synth::mlp(1, true, &[30; 7], Activation::Tanh, 1, 3).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let batch = 512;
    let x = input(batch, 1, 2);
    for opts in [Options::folded(), Options::unfolded()] {
        let plan = model.compile(&opts).unwrap();
        let counted = pool.install(|| {
            assert!(plan.rows_per_part(batch).is_some(), "the split is taken");
            let mut s = plan.session_with_capacity(batch);
            s.run(&x, batch).unwrap();
            let before = allocations();
            for _ in 0..5 {
                assert_eq!(s.run(&x, batch).unwrap().len(), batch);
            }
            allocations() - before
        });
        assert_eq!(counted, 0, "{:?}: a split call allocated", opts.mode);
    }
}
