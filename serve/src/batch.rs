//! Dynamic batching and the inference workers.
//!
//! Requests wait in one queue per model. A free worker takes the model whose oldest request has
//! waited longest among those that are *ready*: the oldest has waited the batch window, or the
//! queue holds `max_batch` rows, or batching is off. It then takes whole requests from the front
//! of that queue, in order, while they fit in `max_batch` rows and were accepted on the same
//! version of the model, runs them as one batch on its own session, and answers each request with
//! its own rows of the output. Rows are never reordered or shared between requests: each request
//! owns the contiguous range `[offset, offset + rows)` of the batch.
//!
//! Inference runs only on these threads (plain `std` threads), never on the async runtime's.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bnfold::OwnedSession;
use tokio::sync::oneshot;

use crate::lock;
use crate::metrics::{Gauges, Metrics};
use crate::models::Loaded;

/// A request's rows, waiting to run.
#[derive(Debug)]
pub struct Job {
    /// The version the request was accepted on; it runs on this plan even if a reload has
    /// swapped in another since.
    pub loaded: Arc<Loaded>,
    /// Number of rows.
    pub rows: usize,
    /// `rows * input_features` values.
    pub input: Vec<f32>,
    /// When it was queued.
    pub queued_at: Instant,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Answer, String>>,
}

/// A request's outputs.
#[derive(Debug, Clone)]
pub struct Answer {
    /// `rows * cols` values.
    pub output: Vec<f32>,
    /// Width of an output row.
    pub cols: usize,
    /// The version that computed them.
    pub version: u64,
    /// Rows in the batch the request ran in (its own included).
    pub batch_rows: usize,
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The model's queue is full.
    Overloaded,
    /// The server is shutting down.
    ShuttingDown,
}

#[derive(Debug)]
struct Queues {
    jobs: Vec<VecDeque<Job>>,
    rows: Vec<usize>,
    closed: bool,
}

/// The batching settings.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Gather requests into batches.
    pub batching: bool,
    /// How long the oldest request of a batch waits for others.
    pub window: Duration,
    /// The most rows in a batch.
    pub max_batch: usize,
    /// The most rows waiting per model.
    pub max_queue_rows: usize,
}

/// The queues, shared by the request handlers (which push) and the workers (which take batches).
#[derive(Debug)]
pub struct Scheduler {
    queues: Mutex<Queues>,
    ready: Condvar,
    policy: Policy,
}

impl Scheduler {
    /// Empty queues for `models` models.
    pub fn new(models: usize, policy: Policy) -> Scheduler {
        Scheduler {
            queues: Mutex::new(Queues {
                jobs: (0..models).map(|_| VecDeque::new()).collect(),
                rows: vec![0; models],
                closed: false,
            }),
            ready: Condvar::new(),
            policy,
        }
    }

    /// Queue a request for model `model`.
    pub fn submit(&self, model: usize, job: Job) -> Result<(), Refused> {
        let mut q = lock(&self.queues);
        if q.closed {
            return Err(Refused::ShuttingDown);
        }
        if q.rows[model] + job.rows > self.policy.max_queue_rows {
            return Err(Refused::Overloaded);
        }
        q.rows[model] += job.rows;
        q.jobs[model].push_back(job);
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    /// Requests and rows waiting, per model.
    pub fn depths(&self) -> Vec<(usize, usize)> {
        let q = lock(&self.queues);
        q.jobs
            .iter()
            .map(VecDeque::len)
            .zip(q.rows.iter().copied())
            .collect()
    }

    /// Take no more requests; the workers run what is queued at once, then stop.
    pub fn close(&self) {
        lock(&self.queues).closed = true;
        self.ready.notify_all();
    }

    /// The next batch: the model and its requests, in order. `None` once closed and empty.
    fn next_batch(&self) -> Option<(usize, Vec<Job>)> {
        let p = self.policy;
        let mut q = lock(&self.queues);
        loop {
            let now = Instant::now();
            let mut best: Option<(usize, Instant)> = None;
            let mut wake: Option<Instant> = None;
            for (m, jobs) in q.jobs.iter().enumerate() {
                let Some(head) = jobs.front() else { continue };
                let deadline = head.queued_at + p.window;
                let ready = !p.batching || q.closed || q.rows[m] >= p.max_batch || now >= deadline;
                if ready {
                    if best.is_none_or(|(_, t)| head.queued_at < t) {
                        best = Some((m, head.queued_at));
                    }
                } else {
                    wake = Some(wake.map_or(deadline, |w| w.min(deadline)));
                }
            }
            if let Some((m, _)) = best {
                let batch = self.take(&mut q, m);
                let more = q.jobs.iter().any(|j| !j.is_empty());
                drop(q);
                if more {
                    // Another worker may be able to take what is left.
                    self.ready.notify_one();
                }
                if batch.is_empty() {
                    // Every request taken had been abandoned by its client.
                    q = lock(&self.queues);
                    continue;
                }
                return Some((m, batch));
            }
            if q.closed && q.jobs.iter().all(VecDeque::is_empty) {
                return None;
            }
            q = match wake {
                Some(w) => {
                    self.ready
                        .wait_timeout(q, w.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.ready.wait(q).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    /// Whole requests from the front of model `m`'s queue: the first, then those that follow it
    /// on the same version while the batch stays within `max_batch` rows. Requests whose client
    /// has gone are dropped without running.
    fn take(&self, q: &mut Queues, m: usize) -> Vec<Job> {
        let mut batch: Vec<Job> = Vec::new();
        let mut rows = 0;
        while let Some(next) = q.jobs[m].front() {
            if next.reply.is_closed() {
                let gone = q.jobs[m].pop_front().expect("front exists");
                q.rows[m] -= gone.rows;
                continue;
            }
            if let Some(first) = batch.first() {
                let fits = rows + next.rows <= self.policy.max_batch;
                if !self.policy.batching || !fits || !Arc::ptr_eq(&first.loaded, &next.loaded) {
                    break;
                }
            }
            let job = q.jobs[m].pop_front().expect("front exists");
            q.rows[m] -= job.rows;
            rows += job.rows;
            batch.push(job);
            if !self.policy.batching {
                break;
            }
        }
        batch
    }
}

/// Start `n` worker threads.
pub fn spawn_workers(
    n: usize,
    models: usize,
    scheduler: &Arc<Scheduler>,
    metrics: &Arc<Metrics>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let (s, m) = (Arc::clone(scheduler), Arc::clone(metrics));
            std::thread::Builder::new()
                .name(format!("bnfold-worker-{i}"))
                .spawn(move || worker(&s, &m, models))
        })
        .collect()
}

/// One worker: a session per model (made again when a reload changes the plan), an input buffer
/// reused across batches.
fn worker(scheduler: &Scheduler, metrics: &Metrics, models: usize) {
    let mut sessions: Vec<Option<OwnedSession>> = (0..models).map(|_| None).collect();
    let mut input: Vec<f32> = Vec::new();
    while let Some((m, jobs)) = scheduler.next_batch() {
        let loaded = Arc::clone(&jobs[0].loaded);
        let plan = &loaded.plan;
        let rows: usize = jobs.iter().map(|j| j.rows).sum();
        metrics.batch(m, rows);
        if !sessions[m]
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s.plan(), plan))
        {
            // Buffers for a full batch up front (at most 1024 rows: a larger batch, or a request
            // of more rows, grows them on its first run).
            let rows = scheduler.policy.max_batch.min(1024);
            sessions[m] = Some(plan.owned_session_with_capacity(rows));
        }
        let session = sessions[m].as_mut().expect("made above");
        let x: &[f32] = if jobs.len() == 1 {
            &jobs[0].input
        } else {
            input.clear();
            for j in &jobs {
                input.extend_from_slice(&j.input);
            }
            &input
        };
        let cols = plan.output_features();
        // Each request's rows are the contiguous range it brought, in the order taken.
        let split = |out: &[f32]| {
            let mut offset = 0;
            jobs.iter()
                .map(|j| {
                    let part = out[offset * cols..(offset + j.rows) * cols].to_vec();
                    offset += j.rows;
                    part
                })
                .collect::<Vec<_>>()
        };
        // A panic in inference must not take the worker down: its requests get a 500, its session
        // (whose buffers may be in any state) is dropped, and the worker goes on.
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| session.run(x, rows).map(&split)));
        let outcome: Vec<Result<Answer, String>> = match result {
            Ok(Ok(parts)) => parts
                .into_iter()
                .map(|output| {
                    Ok(Answer {
                        output,
                        cols,
                        version: loaded.version,
                        batch_rows: rows,
                    })
                })
                .collect(),
            Ok(Err(e)) => vec![Err(format!("inference failed: {e}")); jobs.len()],
            Err(_) => {
                sessions[m] = None;
                vec![Err("inference failed: a worker panicked".to_string()); jobs.len()]
            }
        };
        for (j, answer) in jobs.into_iter().zip(outcome) {
            let _ = j.reply.send(answer);
        }
    }
}

/// The gauges of the metrics page.
pub fn gauges(scheduler: &Scheduler, versions: impl Iterator<Item = u64>) -> Vec<Gauges> {
    scheduler
        .depths()
        .into_iter()
        .zip(versions)
        .map(|((queued_requests, queued_rows), version)| Gauges {
            queued_requests,
            queued_rows,
            version,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(version: u64) -> Arc<Loaded> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bnw");
        let bytes = bnfold::synth::mlp(3, false, &[4], bnfold::Activation::Relu, 2, 1).unwrap();
        std::fs::write(&path, bytes).unwrap();
        Arc::new(crate::models::load_verified(&path, None, version).unwrap())
    }

    type Reply = oneshot::Receiver<Result<Answer, String>>;

    fn job(l: &Arc<Loaded>, rows: usize, first: f32) -> (Job, Reply) {
        let (reply, rx) = oneshot::channel();
        let input = (0..rows * 3).map(|i| first + i as f32).collect();
        let job = Job {
            loaded: Arc::clone(l),
            rows,
            input,
            queued_at: Instant::now(),
            reply,
        };
        (job, rx)
    }

    fn scheduler(window_ms: u64, max_batch: usize) -> Arc<Scheduler> {
        Arc::new(Scheduler::new(
            1,
            Policy {
                batching: true,
                window: Duration::from_millis(window_ms),
                max_batch,
                max_queue_rows: 100,
            },
        ))
    }

    #[test]
    fn batches_close_at_the_window_or_when_full_and_keep_versions_and_rows_apart() {
        let v1 = loaded(1);
        let s = scheduler(300, 4);
        // Queued before any worker runs: 5 one-row requests, then 2 on another version.
        let t0 = Instant::now();
        let mut rx = Vec::new();
        for i in 0..5 {
            let (j, r) = job(&v1, 1, 10.0 * i as f32);
            s.submit(0, j).unwrap();
            rx.push(r);
        }
        let v2 = loaded(2);
        for i in 0..2 {
            let (j, r) = job(&v2, 1, 100.0 + i as f32);
            s.submit(0, j).unwrap();
            rx.push(r);
        }
        let metrics = Arc::new(Metrics::new(vec!["m".into()]));
        let workers = spawn_workers(1, 1, &s, &metrics).unwrap();
        let answers: Vec<(Answer, Duration)> = rx
            .into_iter()
            .map(|r| (r.blocking_recv().unwrap().unwrap(), t0.elapsed()))
            .collect();
        // The first four fill a batch: they run without waiting for the window.
        let batches: Vec<(usize, u64)> = answers
            .iter()
            .map(|(a, _)| (a.batch_rows, a.version))
            .collect();
        assert_eq!(
            batches,
            [(4, 1), (4, 1), (4, 1), (4, 1), (1, 1), (2, 2), (2, 2)]
        );
        // The fifth is alone on its version: it waited its window, and no longer than that by
        // much (a generous bound: the machine is shared).
        assert!(
            answers[4].1 >= Duration::from_millis(300),
            "{:?}",
            answers[4].1
        );
        assert!(answers[4].1 < Duration::from_secs(3), "{:?}", answers[4].1);
        // Each request got the outputs of its own row.
        let plan1 = &v1.plan;
        for (i, (a, _)) in answers.iter().enumerate().take(5) {
            let x: Vec<f32> = (0..3).map(|k| 10.0 * i as f32 + k as f32).collect();
            let want = plan1.session().run(&x, 1).unwrap().to_vec();
            let close = a
                .output
                .iter()
                .zip(&want)
                .all(|(g, w)| (g - w).abs() <= 1e-5 * (1.0 + w.abs()));
            assert!(a.output.len() == 2 && close, "{:?} != {want:?}", a.output);
        }
        s.close();
        for w in workers {
            w.join().unwrap();
        }
    }

    #[test]
    fn abandoned_requests_are_not_run_and_full_queues_refuse() {
        let v = loaded(1);
        let s = scheduler(0, 8);
        let (j, r) = job(&v, 2, 0.0);
        s.submit(0, j).unwrap();
        drop(r);
        let (j, r) = job(&v, 1, 0.0);
        s.submit(0, j).unwrap();
        let (big, _r) = job(&v, 98, 0.0);
        assert_eq!(s.submit(0, big), Err(Refused::Overloaded));
        let metrics = Arc::new(Metrics::new(vec!["m".into()]));
        let workers = spawn_workers(1, 1, &s, &metrics).unwrap();
        assert_eq!(r.blocking_recv().unwrap().unwrap().batch_rows, 1);
        s.close();
        let (j, _r) = job(&v, 1, 0.0);
        assert_eq!(s.submit(0, j), Err(Refused::ShuttingDown));
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(s.depths(), [(0, 0)]);
    }
}
