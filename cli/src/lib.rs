//! The parts of the `bnfold` command line that its tests also use: reading and writing batches
//! (`.npy`, CSV) and the latency harness of `bnfold bench`. The core library (`bnfold`) has
//! neither: a serving binary brings its own input format and its own metrics.
#![forbid(unsafe_code)]

pub mod io;
pub mod measure;
pub mod text;
