//! Small networks never touch the rayon pool: the tutorial's network at batch 1 (and 8) runs on
//! the calling thread without even asking rayon how many threads it has, which would start the
//! global pool. This file is its own test process, and holds a single test, so nothing else can
//! have started the pool: if inference had touched it, configuring it afterwards would fail.

use bnfold::{Model, Options};

#[test]
fn tutorial_network_runs_without_starting_the_global_pool() {
    let bytes = bnfold::synth::mlp(1, true, &[30; 7], bnfold::Activation::Relu, 1, 1).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    for opts in [Options::folded(), Options::unfolded()] {
        let plan = model.compile(&opts).unwrap();
        let mut session = plan.session();
        for batch in [1, 8] {
            let x = vec![0.5f32; batch];
            let y = session.run(&x, batch).unwrap();
            assert!(y.iter().all(|v| v.is_finite()));
        }
    }
    // Succeeds only if the global pool has not been started yet.
    let configured = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build_global();
    assert!(
        configured.is_ok(),
        "inference started the global pool: {configured:?}"
    );
}
