//! The `bnfold train` subcommands: argument parsing, progress bars and printing over the trainer.
//! (The library functions they call never print.)

use std::path::{Path, PathBuf};

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use bnfold::format::Activation;
use bnfold_train::{digits, morvan};

/// What `bnfold train` trains.
#[derive(Debug, Clone, Subcommand)]
pub enum TrainCommand {
    /// The tutorial's experiment: y = x^2 - 5 + noise, 7 hidden layers of 30, bad initialisation,
    /// SGD, trained with and without Batch Normalization from the same seed.
    Morvan {
        /// Training steps (batches of 10); the tutorial's is 250.
        #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        steps: u32,
        /// Seed of the data and the initial weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Hidden activation: relu (the lesson's code), tanh (the annotated discussion), sigmoid,
        /// leaky_relu, gelu_erf, gelu_tanh, identity.
        #[arg(long, default_value = "relu", value_parser = clap::value_parser!(Activation))]
        activation: Activation,
        /// Where to write the network trained with BN.
        #[arg(long, default_value = "models/morvan.bnw")]
        out: PathBuf,
        /// Where to write the loss history of both networks (CSV).
        #[arg(long, default_value = "models/morvan_loss.csv")]
        history: PathBuf,
        /// Where to write the plot of both loss curves (PNG).
        #[arg(long, default_value = "models/morvan_loss.png")]
        plot: PathBuf,
        /// No progress bar and no summary.
        #[arg(long, short)]
        quiet: bool,
    },
    /// The handwritten-digits classifier (scikit-learn's digits data set, raw pixels in).
    Digits {
        /// The data file (gzip-compressed CSV: 64 pixels and a label per line).
        #[arg(long, default_value = digits::DEFAULT_DATA)]
        data: PathBuf,
        /// Passes over the training set.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        epochs: u32,
        /// Seed of the initial weights and the batch order.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to write the trained network.
        #[arg(long, default_value = "models/digits.bnw")]
        out: PathBuf,
        /// Where to write a sample input: the first 8 test rows, raw pixels, CSV without header.
        #[arg(long, default_value = "models/digits_sample.csv")]
        sample: PathBuf,
        /// No progress bar and no summary.
        #[arg(long, short)]
        quiet: bool,
    },
}

fn bar(len: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} steps ({elapsed}, eta {eta})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_owned());
    pb
}

fn ensure_parent(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Run a `bnfold train` subcommand.
pub fn run(cmd: &TrainCommand) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        TrainCommand::Morvan {
            steps,
            seed,
            activation,
            out,
            history,
            plot,
            quiet,
        } => {
            let cfg = morvan::Config {
                steps: *steps as usize,
                seed: *seed,
                activation: *activation,
                ..morvan::Config::default()
            };
            let pb = bar(cfg.steps as u64, *quiet, "morvan");
            let outcome = morvan::run(&cfg, &mut |s| pb.set_position(s))?;
            pb.finish_and_clear();
            for p in [out, history, plot] {
                ensure_parent(p)?;
            }
            morvan::writer(&cfg, &outcome)?.write(out)?;
            morvan::write_history(history, &outcome.history)?;
            // Step 0 (before any training) is left out of the plot: its EMA statistics are still
            // the initial zeros, so the BN network's loss there is astronomically large (it is in
            // the CSV) and would squash the scale.
            let pts = |f: fn(&morvan::Record) -> f64| -> Vec<(f64, f64)> {
                outcome
                    .history
                    .iter()
                    .filter(|r| r.step > 0)
                    .map(|r| (r.step as f64, f(r)))
                    .collect()
            };
            let (with, without) = (pts(|r| r.with_bn), pts(|r| r.without_bn));
            let label = |name: &str, f: fn(&morvan::Record) -> f64| match outcome
                .history
                .iter()
                .find(|r| !f(r).is_finite())
            {
                Some(r) => format!(
                    "{name}: diverged (loss {} at step {}, not drawn)",
                    f(r),
                    r.step
                ),
                None => name.to_owned(),
            };
            let (with_label, without_label) = (
                label("with BN", |r| r.with_bn),
                label("without BN", |r| r.without_bn),
            );
            bnfold_train::plot::log_curves(
                plot,
                &format!(
                    "y = x^2 - 5 + noise: {} x {} {}, SGD lr {}, batch {}, seed {}",
                    cfg.layers,
                    cfg.units,
                    cfg.activation.name(),
                    cfg.lr,
                    cfg.batch,
                    cfg.seed
                ),
                "training steps",
                "full-data MSE (inference mode, EMA statistics; log scale)",
                &[
                    bnfold_train::plot::Series {
                        label: &with_label,
                        color: (31, 119, 180),
                        points: &with,
                    },
                    bnfold_train::plot::Series {
                        label: &without_label,
                        color: (214, 39, 40),
                        points: &without,
                    },
                ],
                (900, 560),
            )?;
            if !quiet {
                let (w, wo) = outcome.final_losses();
                outln!(
                    "steps {}, seed {}, activation {}",
                    cfg.steps,
                    cfg.seed,
                    cfg.activation.name()
                );
                outln!("final full-data MSE with BN    {w:.6e}");
                outln!("final full-data MSE without BN {wo:.6e}");
                match outcome.without_bn_diverged_at() {
                    Some(step) => outln!(
                        "ratio without / with BN        infinite: without BN, SGD diverged (non-finite loss from step {step})"
                    ),
                    None => outln!("ratio without / with BN        {:.3e}", wo / w),
                }
                outln!(
                    "wrote {}, {}, {}",
                    out.display(),
                    history.display(),
                    plot.display()
                );
            }
        }
        TrainCommand::Digits {
            data,
            epochs,
            seed,
            out,
            sample,
            quiet,
        } => {
            let cfg = digits::Config {
                epochs: *epochs as usize,
                seed: *seed,
                ..digits::Config::default()
            };
            let all = digits::load(data)?;
            let (train, test) = digits::split(&all);
            let pb = bar(cfg.steps(train.rows()) as u64, *quiet, "digits");
            let outcome = digits::train(&cfg, &train, &test, &mut |s| pb.set_position(s))?;
            pb.finish_and_clear();
            for p in [out, sample] {
                ensure_parent(p)?;
            }
            digits::writer(&cfg, &outcome)?.write(out)?;
            let rows = test.rows().min(8);
            let mut csv = String::new();
            for r in test.pixels[..rows * digits::PIXELS].chunks_exact(digits::PIXELS) {
                let line: Vec<String> = r.iter().map(|v| format!("{v}")).collect();
                csv.push_str(&line.join(","));
                csv.push('\n');
            }
            std::fs::write(sample, csv).map_err(|e| format!("{}: {e}", sample.display()))?;
            if !quiet {
                outln!(
                    "{} training rows, {} test rows, {} epochs, {} steps, seed {}",
                    train.rows(),
                    test.rows(),
                    cfg.epochs,
                    outcome.network.steps(),
                    cfg.seed
                );
                outln!(
                    "train: loss {:.4}, accuracy {:.2}%",
                    outcome.train_loss,
                    100.0 * outcome.train_accuracy
                );
                outln!(
                    "test:  loss {:.4}, accuracy {:.2}%",
                    outcome.test_loss,
                    100.0 * outcome.test_accuracy
                );
                outln!(
                    "labels of the {rows} sample rows: {:?}",
                    &test.labels[..rows]
                );
                outln!("wrote {}, {}", out.display(), sample.display());
            }
        }
    }
    Ok(())
}
