//! Subcommands of the binary whose code is longer than a function in `main.rs`.

pub mod bench;
pub mod train;
