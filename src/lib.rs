//! bnfold: CPU inference for dense networks trained with Batch Normalization, with BN folded into
//! the dense layers at load time.
//!
//! ```no_run
//! use std::sync::Arc;
//! let model = bnfold::Model::load("models/digits.bnw")?;          // map, verify, validate
//! let plan = Arc::new(model.compile(&bnfold::Options::default())?); // fold and pack; Send + Sync
//! drop(model);                                                     // the plan owns its weights
//! let mut session = plan.session_with_capacity(64);                // per-thread scratch
//! let pixels = vec![0.0f32; 64];
//! let scores: &[f32] = session.run(&pixels, 1)?;                   // no allocation per call
//! assert_eq!(scores.len(), plan.output_features());
//! # Ok::<(), bnfold::Error>(())
//! ```
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod activation;
pub mod error;
pub mod fold;
pub mod format;
pub mod kernels;
pub mod model;
pub mod output;
pub mod plan;
pub mod reference;
pub mod synth;
pub mod verify;

pub use activation::Activation;
pub use error::{Error, FormatError, InputError, LayerError, Result, WriterError};
pub use format::DType;
pub use kernels::{Isa, KernelChoice};
pub use model::{LoadMode, Model};
pub use output::argmax;
pub use plan::{Mode, Options, OwnedSession, Plan, Session};
pub use verify::{VerifyOptions, VerifyReport, verify};

/// The README's library example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
