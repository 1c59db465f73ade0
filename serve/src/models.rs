//! The served models: loading a weight file, verifying and compiling it, and swapping a reloaded
//! plan in beside the running one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bnfold::{LoadMode, Model, Options, Plan, VerifyOptions};
use serde::Serialize;

use crate::lock;

/// Rows of the seeded batch every load and reload verifies the model on.
pub const VERIFY_ROWS: usize = 8;
const VERIFY_SEED: u64 = 0x5e7e;

/// One compiled version of a model: the plan requests run on, and what the status reports.
#[derive(Debug)]
pub struct Loaded {
    /// The compiled, folded plan.
    pub plan: Arc<Plan>,
    /// 1 for the model loaded at start, one more for each successful reload.
    pub version: u64,
    /// The metadata `GET /v1/models/{name}` reports.
    pub info: ModelInfo,
}

/// What the status reports about one loaded version.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Width of input rows.
    pub input_features: usize,
    /// Width of output rows.
    pub output_features: usize,
    /// The layers in the file.
    pub layers: Vec<LayerInfo>,
    /// Whether BN is folded (always, for served plans).
    pub folded: bool,
    /// Kernel steps of the plan (folding makes them fewer than the layers).
    pub steps: usize,
    /// The instruction-set path of the dense kernels: `avx512`, `avx2` or `portable`.
    pub kernel: &'static str,
    /// The file's CRC-32 as stored in its header (and verified at load), `0x` and 8 hex digits.
    pub checksum: String,
    /// Size of the weight file.
    pub file_bytes: u64,
    /// Format version of the file.
    pub format_version: String,
    /// The file's metadata entries.
    pub file_metadata: BTreeMap<String, String>,
    /// The largest normwise error of the verification at load (folded and unfolded against the
    /// f64 reference, on [`VERIFY_ROWS`] seeded rows), and its tolerance.
    pub verify_worst_error: f64,
    /// The tolerance of that verification.
    pub verify_tolerance: f64,
    /// When this version was loaded (seconds since the Unix epoch).
    pub loaded_at_unix: u64,
}

/// One layer, as `bnfold inspect` names it.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    /// The producer's name.
    pub name: String,
    /// `dense`, `batch_norm`, ...
    pub kind: &'static str,
    /// Its shape, as text.
    pub shape: String,
}

/// The result of the last reload of a model.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadResult {
    /// When it finished (seconds since the Unix epoch).
    pub at_unix: u64,
    /// Whether the new version is serving.
    pub ok: bool,
    /// The version serving after it.
    pub serving_version: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// A model by name: the version serving now, swapped atomically by a reload.
#[derive(Debug)]
pub struct ServedModel {
    /// The name in the URL.
    pub name: String,
    /// The weight file.
    pub path: PathBuf,
    current: RwLock<Arc<Loaded>>,
    last_reload: Mutex<Option<ReloadResult>>,
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Load `path` (read into memory, not mapped: a file replaced or truncated under a server must
/// not crash it), check its input width against `expect_input`, verify it (folded and unfolded
/// against the f64 reference on a small seeded batch) and compile it folded.
pub fn load_verified(
    path: &Path,
    expect_input: Option<usize>,
    version: u64,
) -> Result<Loaded, String> {
    let model = Model::load_with(path, LoadMode::Read).map_err(|e| match e {
        bnfold::Error::Io { .. } => e.to_string(),
        e => format!("{}: {e}", path.display()),
    })?;
    if let Some(want) = expect_input
        && model.input_features() != want
    {
        return Err(format!(
            "{}: the input width changed from {want} to {}; clients send rows of {want}",
            path.display(),
            model.input_features()
        ));
    }
    let x = bnfold::synth::input(VERIFY_ROWS, model.input_features(), 1.0, VERIFY_SEED);
    let opts = VerifyOptions::default();
    let report = bnfold::verify(&model, &x, VERIFY_ROWS, &opts)
        .map_err(|e| format!("{}: verification: {e}", path.display()))?;
    if !report.passed() {
        return Err(format!(
            "{}: verification failed: the worst normwise error is {:.3e}, over the tolerance {:.1e}",
            path.display(),
            report.worst,
            report.tolerance
        ));
    }
    let plan = model
        .compile(&Options::folded())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let h = model.header();
    let info = ModelInfo {
        input_features: plan.input_features(),
        output_features: plan.output_features(),
        layers: model
            .layers()
            .iter()
            .map(|l| LayerInfo {
                name: l.name.clone(),
                kind: l.kind.kind_name(),
                shape: l.kind.shape_text(),
            })
            .collect(),
        folded: plan.mode() == bnfold::Mode::Folded,
        steps: plan.num_steps(),
        kernel: plan.kernel_isa().name(),
        checksum: format!("0x{:08x}", h.checksum),
        file_bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
        format_version: format!("{}.{}", h.version_major, h.version_minor),
        file_metadata: model.metadata().iter().cloned().collect(),
        verify_worst_error: report.worst,
        verify_tolerance: report.tolerance,
        loaded_at_unix: now_unix(),
    };
    Ok(Loaded {
        plan: Arc::new(plan),
        version,
        info,
    })
}

impl ServedModel {
    /// Load, verify and compile the first version.
    pub fn load(name: &str, path: &Path) -> Result<ServedModel, String> {
        let loaded = load_verified(path, None, 1)?;
        Ok(ServedModel {
            name: name.to_owned(),
            path: path.to_owned(),
            current: RwLock::new(Arc::new(loaded)),
            last_reload: Mutex::new(None),
        })
    }

    /// The version serving now. A request holds it from arrival to answer, so a reload never
    /// changes the plan under a request.
    pub fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Load the file again beside the running version and swap it in if it loads, has the same
    /// input width and verifies; otherwise keep the running version. Callers serialise reloads.
    pub fn reload(&self) -> ReloadResult {
        let old = self.current();
        let result = match load_verified(&self.path, Some(old.info.input_features), old.version + 1)
        {
            Ok(new) => {
                let version = new.version;
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
                ReloadResult {
                    at_unix: now_unix(),
                    ok: true,
                    serving_version: version,
                    error: None,
                }
            }
            Err(e) => ReloadResult {
                at_unix: now_unix(),
                ok: false,
                serving_version: old.version,
                error: Some(e),
            },
        };
        *lock(&self.last_reload) = Some(result.clone());
        result
    }

    /// The last reload's result, if any.
    pub fn last_reload(&self) -> Option<ReloadResult> {
        lock(&self.last_reload).clone()
    }

    /// The body of `GET /v1/models/{name}`: TensorFlow Serving's `model_version_status`, then
    /// the metadata of the serving version and the last reload.
    pub fn status_json(&self) -> serde_json::Value {
        let cur = self.current();
        serde_json::json!({
            "model_version_status": [{
                "version": cur.version.to_string(),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }],
            "name": self.name,
            "path": self.path.display().to_string(),
            "metadata": cur.info,
            "last_reload": self.last_reload(),
        })
    }
}
