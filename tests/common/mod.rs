//! Shared helpers of the integration tests: thin names over [`bnfold::synth`] (the one seeded
//! generator and network builder) and [`bnfold::verify::ErrorStats`] (the one error measure).
#![allow(dead_code)]

use bnfold::DType;
pub use bnfold::synth::{Layer as L, Stats};

/// A seeded random network (see [`bnfold::synth::network`]); panics on a writer error, which in a
/// test means the test built something the format cannot hold.
pub fn network(input: usize, layers: &[L], seed: u64, dtype: DType, stats: Stats) -> Vec<u8> {
    bnfold::synth::network(input, layers, seed, dtype, stats).expect("the writer takes the network")
}

/// A seeded random input batch, uniform in [-2, 2).
pub fn input(batch: usize, features: usize, seed: u64) -> Vec<f32> {
    bnfold::synth::input(batch, features, 2.0, seed)
}

/// The verification criterion: largest `|got - want|` divided by the largest `|want|` (see
/// [`bnfold::verify`] for why normwise).
pub fn normwise_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    bnfold::verify::ErrorStats::measure(got, want).normwise
}
