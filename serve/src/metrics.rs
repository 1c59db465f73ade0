//! Prometheus metrics, kept with atomics and written in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::lock;

/// Upper bounds of the latency buckets, in seconds: 50 us to 2.5 s.
const LATENCY_BOUNDS: &[f64] = &[
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5,
];

/// Upper bounds of the batch-size buckets, in rows.
const BATCH_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// A cumulative histogram.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, and one for `+Inf`.
    counts: Vec<AtomicU64>,
    /// The sum of the observations, in `unit`s.
    sum: AtomicU64,
    /// What one unit of `sum` is worth (1e-9 for nanoseconds, 1 for rows).
    unit: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64], unit: f64) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            unit,
        }
    }

    fn observe(&self, value: f64, units: u64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(units, Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| format!("{b}"));
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum.load(Relaxed) as f64 * self.unit;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// The label a request for no served model is counted under (a client's made-up names never
/// become labels: their number would be unbounded).
pub const UNKNOWN_MODEL: &str = "_unknown";

/// The server's counters.
#[derive(Debug)]
pub struct Metrics {
    names: Vec<String>,
    requests: Mutex<BTreeMap<(usize, u16), u64>>,
    latency: Vec<Histogram>,
    batch_rows: Vec<Histogram>,
    reloads: Mutex<BTreeMap<(usize, bool), u64>>,
}

/// What the metrics page needs to know of the moment: per model, the requests and rows waiting,
/// and the version serving.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Requests waiting for a worker.
    pub queued_requests: usize,
    /// Rows in those requests.
    pub queued_rows: usize,
    /// The version serving.
    pub version: u64,
}

impl Metrics {
    /// Counters for these models (index = the model's index).
    pub fn new(names: Vec<String>) -> Metrics {
        let n = names.len();
        Metrics {
            names,
            requests: Mutex::new(BTreeMap::new()),
            latency: (0..n)
                .map(|_| Histogram::new(LATENCY_BOUNDS, 1e-9))
                .collect(),
            batch_rows: (0..n).map(|_| Histogram::new(BATCH_BOUNDS, 1.0)).collect(),
            reloads: Mutex::new(BTreeMap::new()),
        }
    }

    /// Count a request for model `model` (`None`: no served model) answered with `code`.
    pub fn request(&self, model: Option<usize>, code: u16) {
        *lock(&self.requests)
            .entry((model.unwrap_or(usize::MAX), code))
            .or_default() += 1;
    }

    /// The time from a predict request's arrival to its answer.
    pub fn latency(&self, model: usize, d: Duration) {
        self.latency[model].observe(d.as_secs_f64(), d.as_nanos().min(u64::MAX as u128) as u64);
    }

    /// Rows of one batch run.
    pub fn batch(&self, model: usize, rows: usize) {
        self.batch_rows[model].observe(rows as f64, rows as u64);
    }

    /// A reload of model `model` ended.
    pub fn reload(&self, model: usize, ok: bool) {
        *lock(&self.reloads).entry((model, ok)).or_default() += 1;
    }

    fn name(&self, model: usize) -> &str {
        self.names.get(model).map_or(UNKNOWN_MODEL, String::as_str)
    }

    /// The metrics page, with the gauges of each model.
    pub fn render(&self, gauges: &[Gauges]) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP bnfold_requests_total Requests to /v1/models, by model and HTTP status code.\n\
             # TYPE bnfold_requests_total counter\n",
        );
        for (&(m, code), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "bnfold_requests_total{{model=\"{}\",code=\"{code}\"}} {n}",
                self.name(m)
            );
        }
        out.push_str(
            "# HELP bnfold_request_duration_seconds Time from a predict request's arrival to its answer.\n\
             # TYPE bnfold_request_duration_seconds histogram\n",
        );
        for (m, h) in self.latency.iter().enumerate() {
            h.write(
                &mut out,
                "bnfold_request_duration_seconds",
                &format!("model=\"{}\"", self.name(m)),
            );
        }
        out.push_str(
            "# HELP bnfold_batch_rows Rows per batch run by a worker.\n\
             # TYPE bnfold_batch_rows histogram\n",
        );
        for (m, h) in self.batch_rows.iter().enumerate() {
            h.write(
                &mut out,
                "bnfold_batch_rows",
                &format!("model=\"{}\"", self.name(m)),
            );
        }
        out.push_str(
            "# HELP bnfold_queue_depth Requests waiting for a worker.\n\
             # TYPE bnfold_queue_depth gauge\n",
        );
        for (m, g) in gauges.iter().enumerate() {
            let _ = writeln!(
                out,
                "bnfold_queue_depth{{model=\"{}\"}} {}",
                self.name(m),
                g.queued_requests
            );
        }
        out.push_str(
            "# HELP bnfold_queue_rows Rows in the requests waiting for a worker.\n\
             # TYPE bnfold_queue_rows gauge\n",
        );
        for (m, g) in gauges.iter().enumerate() {
            let _ = writeln!(
                out,
                "bnfold_queue_rows{{model=\"{}\"}} {}",
                self.name(m),
                g.queued_rows
            );
        }
        out.push_str(
            "# HELP bnfold_model_version The version serving (1 at start, +1 per successful reload).\n\
             # TYPE bnfold_model_version gauge\n",
        );
        for (m, g) in gauges.iter().enumerate() {
            let _ = writeln!(
                out,
                "bnfold_model_version{{model=\"{}\"}} {}",
                self.name(m),
                g.version
            );
        }
        out.push_str(
            "# HELP bnfold_reloads_total Reloads, by model and result.\n\
             # TYPE bnfold_reloads_total counter\n",
        );
        for (&(m, ok), n) in lock(&self.reloads).iter() {
            let result = if ok { "ok" } else { "failed" };
            let _ = writeln!(
                out,
                "bnfold_reloads_total{{model=\"{}\",result=\"{result}\"}} {n}",
                self.name(m)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_bounded() {
        let m = Metrics::new(vec!["a".into()]);
        m.request(Some(0), 200);
        m.request(Some(0), 200);
        m.request(None, 404);
        m.latency(0, Duration::from_micros(70));
        m.latency(0, Duration::from_secs(10));
        m.batch(0, 3);
        m.reload(0, false);
        let text = m.render(&[Gauges {
            queued_requests: 2,
            queued_rows: 5,
            version: 1,
        }]);
        for line in [
            "bnfold_requests_total{model=\"a\",code=\"200\"} 2",
            "bnfold_requests_total{model=\"_unknown\",code=\"404\"} 1",
            "bnfold_request_duration_seconds_bucket{model=\"a\",le=\"0.00005\"} 0",
            "bnfold_request_duration_seconds_bucket{model=\"a\",le=\"0.0001\"} 1",
            "bnfold_request_duration_seconds_bucket{model=\"a\",le=\"+Inf\"} 2",
            "bnfold_request_duration_seconds_count{model=\"a\"} 2",
            "bnfold_batch_rows_bucket{model=\"a\",le=\"2\"} 0",
            "bnfold_batch_rows_bucket{model=\"a\",le=\"4\"} 1",
            "bnfold_batch_rows_sum{model=\"a\"} 3",
            "bnfold_queue_depth{model=\"a\"} 2",
            "bnfold_reloads_total{model=\"a\",result=\"failed\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
