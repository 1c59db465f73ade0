//! Subcommands of the binary whose code is longer than a function in `main.rs`.

pub mod train;
