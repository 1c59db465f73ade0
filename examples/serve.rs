//! A serving loop over the library, the shape a real service has: the plan is compiled once and
//! shared through an `Arc`; each worker thread owns an `OwnedSession` (no lifetime, so it could as
//! well live in a `thread_local!` or a spawned task) and answers requests from a queue, allocating
//! nothing per call once its buffers have seen the largest batch.
//!
//! ```sh
//! cargo run --release --example serve                       # models/digits.bnw, its 8 sample rows
//! cargo run --release --example serve -- MODEL.bnw ROWS.csv # any model and headerless CSV rows
//! ```
//!
//! The default paths are found from the crate's own directory, so the example runs from anywhere.

use std::path::PathBuf;
use std::sync::{Arc, mpsc};

use bnfold::{Model, Options};

/// One request: rows in, the outputs back on its own channel.
struct Request {
    rows: Vec<f32>,
    batch: usize,
    reply: mpsc::Sender<bnfold::Result<Vec<f32>>>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut args = std::env::args_os().skip(1);
    let model_path = args
        .next()
        .map_or_else(|| root.join("models/digits.bnw"), PathBuf::from);
    let rows_path = args
        .next()
        .map_or_else(|| root.join("models/digits_sample.csv"), PathBuf::from);

    // Map, verify and validate; fold BN and pack. The plan owns its weights: drop the model.
    let model = Model::load(&model_path)?;
    let plan = Arc::new(model.compile(&Options::default())?);
    drop(model);
    let (width, classes) = (plan.input_features(), plan.output_features());

    // Requests are read from CSV here; a service would take them from its network layer.
    let text =
        std::fs::read_to_string(&rows_path).map_err(|e| format!("{}: {e}", rows_path.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let values: Vec<f32> = line
            .split(',')
            .map(|v| v.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}:{}: {e}", rows_path.display(), n + 1))?;
        if values.len() != width {
            return Err(format!(
                "{}:{}: {} values, the model takes {width}",
                rows_path.display(),
                n + 1,
                values.len()
            )
            .into());
        }
        rows.push(values);
    }

    // Two workers share one queue; each owns its session.
    let (tx, rx) = mpsc::channel::<Request>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (plan, rx) = (Arc::clone(&plan), Arc::clone(&rx));
            std::thread::spawn(move || {
                let mut session = plan.owned_session_with_capacity(1);
                loop {
                    // The lock is held only to take a request, not while computing.
                    let next = rx.lock().map(|r| r.recv());
                    let Ok(Ok(req)) = next else { break };
                    let out = session.run(&req.rows, req.batch).map(<[f32]>::to_vec);
                    // A caller that went away no longer wants its answer.
                    let _ = req.reply.send(out);
                }
            })
        })
        .collect();

    // One request per row, all in flight at once; answers come back in any order.
    let replies: Vec<_> = rows
        .into_iter()
        .map(|r| {
            let (reply, answer) = mpsc::channel();
            tx.send(Request {
                rows: r,
                batch: 1,
                reply,
            })
            .map(|()| answer)
        })
        .collect::<Result<_, _>>()?;
    drop(tx);
    for (i, answer) in replies.into_iter().enumerate() {
        let scores = answer.recv()??;
        debug_assert_eq!(scores.len(), classes);
        match bnfold::argmax(&scores) {
            Some(class) => println!("row {i}: class {class}"),
            None => println!("row {i}: no class (NaN in the outputs)"),
        }
    }
    for w in workers {
        w.join().map_err(|_| "a worker panicked")?;
    }
    Ok(())
}
