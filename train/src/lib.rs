//! The trainer: dense networks with Batch Normalization, trained with batch moments while the
//! exponential moving averages (EMA) of those moments are kept for inference, then written as
//! bnfold weight files.
//!
//! What it implements, and where (`docs/BATCHNORM.md` has the background):
//! - [`bn`]: BN in training mode (batch mean, *biased* batch variance, as `tf.nn.moments`), its
//!   exact backward pass, and the EMA `shadow = decay * shadow + (1 - decay) * batch_value`, with
//!   TF's optional `num_updates` schedule. The shadows start at 0, as TF1's do.
//! - [`Network`]: an optional input BN, Dense -> BN -> activation blocks, an output dense layer;
//!   [`Network::train_step`] normalises with the batch moments and updates every EMA exactly once;
//!   [`Network::predict`], [`Network::eval_loss`] and the exported file use the EMA only.
//! - [`optim`]: SGD and Adam.
//! - [`morvan`]: the tutorial's experiment, with and without BN; [`digits`]: the digits classifier.
//!
//! The `bnfold train` command line (argument parsing, progress bars, printing) lives in the binary,
//! `cli/src/train.rs`: the library never prints.
//!
//! Matrix products go through [`bnfold::kernels::matmul_nt`]. Every random number comes from one
//! seeded ChaCha8 stream and all reductions run in a fixed order, so the same seed gives the same
//! weight file, bit for bit, on the same machine.
#![forbid(unsafe_code)]

pub mod bn;
pub mod digits;
pub mod morvan;
mod net;
pub mod optim;
pub mod plot;

pub use bn::{BatchNorm, Ema};
pub use net::{Init, Loss, Network, Spec, Targets};
pub use optim::{Optimizer, OptimizerKind, Param};

/// What can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The network or training settings are not usable.
    #[error("bad network spec: {0}")]
    Spec(String),
    /// Data do not fit the network, or a data file is malformed.
    #[error("data: {0}")]
    Data(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Writing the weight file (or reading one back) failed. Boxed: `bnfold::Error` is large, and
    /// this keeps every `Result` of the trainer small.
    #[error(transparent)]
    Model(Box<bnfold::Error>),
    /// Drawing the plot failed.
    #[error("plot: {0}")]
    Plot(String),
}

impl From<bnfold::Error> for TrainError {
    fn from(e: bnfold::Error) -> Self {
        TrainError::Model(Box::new(e))
    }
}

/// Result alias of the trainer.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &std::path::Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Format a loss or score for metadata: shortest round-trip decimal of the f64.
pub(crate) fn num(v: f64) -> String {
    format!("{v}")
}
