//! Experiment tracking and progress display.
//!
//! A training run reports to a [`Tracker`]: parameters once, metrics at steps, and a final
//! [`RunStatus`]. Two implementations exist:
//!
//! - [`JsonlLog`]: `D/metrics.jsonl`, one JSON object per [`Tracker::log_metrics`] call, and
//!   `D/params.json` beside it. Always on; a resumed run first cuts the log back to the
//!   checkpoint's step so that it reads like an uninterrupted run.
//! - [`Mlflow`]: an MLflow tracking server over its REST API (`/api/2.0/mlflow/…`), enabled
//!   by `MLFLOW_TRACKING_URI` ([`Mlflow::from_env`]).
//!
//! [`Trackers`] fans out to several of them. Tracking never panics on I/O or network
//! failures: every failure is an [`Error::Tracking`] or [`Error::Io`] naming the file or URL.
//!
//! [`Progress`] shows the run's progress on stderr: an indicatif bar on a terminal, plain
//! lines ([`format_progress_line`]) otherwise.

use crate::error::{Error, Result};
use qattn_model::io::write_atomic;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The trait
// ---------------------------------------------------------------------------------------------

/// Where a training run's parameters and metrics go.
///
/// The trainer calls [`log_params`](Tracker::log_params) once near the start,
/// [`log_metrics`](Tracker::log_metrics) at logging steps and
/// [`finish`](Tracker::finish) once at the end. Implementations never panic on I/O or network
/// failure: they return [`Error::Tracking`] or [`Error::Io`] naming the path or URL.
pub trait Tracker {
    /// Records the run's parameters (hyper-parameters, model id, estimator spec, …).
    fn log_params(&mut self, params: &BTreeMap<String, String>) -> Result<()>;
    /// Records `metrics` at optimiser step `step`.
    fn log_metrics(&mut self, step: u64, metrics: &BTreeMap<String, f64>) -> Result<()>;
    /// Marks the run as ended with `status`.
    fn finish(&mut self, status: RunStatus) -> Result<()>;
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// The run completed.
    Finished,
    /// The run stopped on an error.
    Failed,
    /// The run was interrupted (signal, user, early drop).
    Killed,
}

impl RunStatus {
    /// MLflow's name of the status: `FINISHED`, `FAILED` or `KILLED`.
    pub fn as_mlflow(self) -> &'static str {
        match self {
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Killed => "killed",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// JSONL log
// ---------------------------------------------------------------------------------------------

/// The run's metrics log, `D/metrics.jsonl`.
///
/// Every line is one JSON object written by one [`Tracker::log_metrics`] call:
/// `{"step": N, "time": <unix seconds as f64>, "<metric>": value, …}`, metrics in name order,
/// non-finite values written as `null`. Each line is written with a single `write` and
/// flushed before the call returns. Parameters go to a sibling `D/params.json` (a JSON object
/// of strings, written atomically), never into the JSONL, so that every line of the log is a
/// metrics line with a `"step"`.
#[derive(Debug)]
pub struct JsonlLog {
    path: PathBuf,
    params_path: PathBuf,
    file: File,
    params: BTreeMap<String, String>,
}

impl JsonlLog {
    /// Opens (creating it and its parent directories if needed) the log at `path` for
    /// appending.
    ///
    /// With `resume_step = Some(s)` the file is first rewritten atomically (temporary file,
    /// fsync, rename) keeping only the lines whose `"step"` is `<= s`, so that a run resumed
    /// from the checkpoint of step `s` produces a log that reads like an uninterrupted one. A
    /// torn last line (a crash in the middle of a write: no final newline and not valid JSON)
    /// is dropped. Any other line that is not a JSON object with an unsigned integer
    /// `"step"` is an [`Error::Data`] naming the file and line.
    ///
    /// Without `resume_step` the existing lines are kept; only a torn last line is cut off
    /// so that the next line starts on a line of its own.
    pub fn open(path: &Path, resume_step: Option<u64>) -> Result<Self> {
        let dir = parent_dir(path);
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        match resume_step {
            Some(s) => truncate_log_to_step(path, s)?,
            None => repair_torn_tail(path)?,
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(JsonlLog {
            path: path.to_path_buf(),
            params_path: dir.join("params.json"),
            file,
            params: BTreeMap::new(),
        })
    }

    /// The JSONL file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parameters file, `params.json` beside the JSONL file.
    pub fn params_path(&self) -> &Path {
        &self.params_path
    }
}

/// Formats one metrics line (without the newline): `step` and `time` first, then the metrics
/// in name order, non-finite values as `null`.
fn metrics_line(step: u64, time: f64, metrics: &BTreeMap<String, f64>) -> Result<String> {
    let mut line = format!("{{\"step\":{step},\"time\":{}", json_number(time));
    for (key, &value) in metrics {
        if key == "step" || key == "time" {
            return Err(Error::Tracking(format!(
                "metric name {key:?} is reserved in the JSONL log"
            )));
        }
        let key = serde_json::to_string(key).map_err(|e| Error::Tracking(e.to_string()))?;
        let _ = write!(line, ",{key}:{}", json_number(value));
    }
    line.push('}');
    Ok(line)
}

/// A JSON number, or `null` for NaN and infinities.
fn json_number(x: f64) -> String {
    if x.is_finite() {
        Value::from(x).to_string()
    } else {
        "null".to_string()
    }
}

impl Tracker for JsonlLog {
    /// Merges `params` into those logged before and writes them all to `params.json`
    /// atomically.
    fn log_params(&mut self, params: &BTreeMap<String, String>) -> Result<()> {
        self.params
            .extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut bytes = serde_json::to_vec_pretty(&self.params)
            .map_err(|e| Error::Tracking(format!("{}: {e}", self.params_path.display())))?;
        bytes.push(b'\n');
        Ok(write_atomic(&self.params_path, &bytes)?)
    }

    fn log_metrics(&mut self, step: u64, metrics: &BTreeMap<String, f64>) -> Result<()> {
        let mut line = metrics_line(step, unix_secs(), metrics)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes the log to disk (fsync). The status itself is not written to the JSONL.
    fn finish(&mut self, _status: RunStatus) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Seconds since the Unix epoch.
fn unix_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Milliseconds since the Unix epoch.
fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The `"step"` of a metrics line, if it is a JSON object with an unsigned integer step.
fn line_step(line: &[u8]) -> std::result::Result<u64, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    value
        .as_object()
        .ok_or_else(|| "not a JSON object".to_string())?
        .get("step")
        .and_then(Value::as_u64)
        .ok_or_else(|| "no unsigned integer \"step\"".to_string())
}

/// Rewrites the log at `path` keeping the lines with step `<= keep_through` (see
/// [`JsonlLog::open`]). A missing file is fine.
fn truncate_log_to_step(path: &Path, keep_through: u64) -> Result<()> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut kept = Vec::with_capacity(bytes.len());
    let mut segments = bytes.split(|&b| b == b'\n').enumerate().peekable();
    while let Some((i, line)) = segments.next() {
        // `split` yields the text after the last newline as the final segment: empty for a
        // well-formed file, a torn line after a crash mid-write.
        let is_tail = segments.peek().is_none();
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match line_step(line) {
            Ok(step) if step <= keep_through => {
                kept.extend_from_slice(line);
                kept.push(b'\n');
            }
            Ok(_) => {}
            Err(_) if is_tail => {}
            Err(message) => {
                return Err(Error::Data {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: format!("malformed metrics line: {message}"),
                });
            }
        }
    }
    if kept != bytes {
        write_atomic(path, &kept)?;
    }
    Ok(())
}

/// When the log's last line has no newline (a crash mid-write), cuts it off if it is not
/// valid JSON, or terminates it if it is, so that the next append starts a line of its own.
fn repair_torn_tail(path: &Path) -> Result<()> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let io = |e| Error::io(path, e);
    let len = f.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    f.seek(SeekFrom::Start(len - 1)).map_err(io)?;
    f.read_exact(&mut last).map_err(io)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    let mut bytes = Vec::new();
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    f.read_to_end(&mut bytes).map_err(io)?;
    let start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    if line_step(&bytes[start..]).is_ok() {
        f.seek(SeekFrom::End(0)).map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
    } else {
        f.set_len(start as u64).map_err(io)?;
    }
    f.sync_all().map_err(io)
}

// ---------------------------------------------------------------------------------------------
// MLflow
// ---------------------------------------------------------------------------------------------

/// At most this many parameters per `runs/log-batch` request (MLflow's limit).
pub const MLFLOW_MAX_PARAMS_PER_BATCH: usize = 100;
/// At most this many metrics per `runs/log-batch` request (MLflow's limit).
pub const MLFLOW_MAX_METRICS_PER_BATCH: usize = 1000;
/// Time allowed to connect to the MLflow server.
pub const MLFLOW_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the server to start answering a request (the response headers).
pub const MLFLOW_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a whole request, connection to the last byte of the answer.
pub const MLFLOW_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A run on an MLflow tracking server, written through its REST API (2.0 endpoints:
/// `experiments/get-by-name`, `experiments/create`, `runs/create`, `runs/log-batch`,
/// `runs/update`).
///
/// Requests time out ([`MLFLOW_CONNECT_TIMEOUT`], [`MLFLOW_READ_TIMEOUT`],
/// [`MLFLOW_REQUEST_TIMEOUT`]) so that an unreachable server never hangs training; failures,
/// HTTP errors included (with their status and the server's answer), are
/// [`Error::Tracking`] naming the URL. Requests are not retried.
///
/// A run dropped without [`Tracker::finish`] is marked `FAILED` when the thread is panicking
/// and `KILLED` otherwise (best effort, one request).
#[derive(Debug)]
pub struct Mlflow {
    http: MlflowHttp,
    experiment_id: String,
    run_id: String,
    finished: bool,
    skipped_non_finite: u64,
}

impl Mlflow {
    /// The run described by the environment: `Some(..)` when `MLFLOW_TRACKING_URI` is set to
    /// an `http://` or `https://` URL (the run is then created as by [`Mlflow::new`]),
    /// `Some(Err(..))` for any other tracking URI (`file:`, `databricks`, a bare path: only
    /// http(s) tracking servers are supported), `None` when it is unset or empty.
    ///
    /// `MLFLOW_TRACKING_TOKEN` (bearer token) or `MLFLOW_TRACKING_USERNAME` and
    /// `MLFLOW_TRACKING_PASSWORD` (basic authentication) are sent when set.
    pub fn from_env(
        experiment: &str,
        run_name: &str,
        tags: &BTreeMap<String, String>,
    ) -> Option<Result<Self>> {
        let uri = std::env::var("MLFLOW_TRACKING_URI").ok()?;
        let base = match check_tracking_uri(&uri)? {
            Ok(base) => base,
            Err(e) => return Some(Err(e)),
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let auth = if let Some(token) = env("MLFLOW_TRACKING_TOKEN") {
            Some(format!("Bearer {token}"))
        } else if let (Some(user), Some(pass)) = (
            env("MLFLOW_TRACKING_USERNAME"),
            env("MLFLOW_TRACKING_PASSWORD"),
        ) {
            Some(format!(
                "Basic {}",
                base64(format!("{user}:{pass}").as_bytes())
            ))
        } else {
            None
        };
        Some(Self::connect(&base, auth, experiment, run_name, tags))
    }

    /// Gets the experiment named `experiment` on the server at `base_url` (e.g.
    /// `http://127.0.0.1:5000`), creating it if it does not exist, then creates a run named
    /// `run_name` in it with `tags`, plus `mlflow.runName` and, when `tags` has a `git_sha`,
    /// `mlflow.source.git.commit`.
    pub fn new(
        base_url: &str,
        experiment: &str,
        run_name: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<Self> {
        Self::connect(base_url, None, experiment, run_name, tags)
    }

    fn connect(
        base_url: &str,
        auth: Option<String>,
        experiment: &str,
        run_name: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let http = MlflowHttp::new(base_url, auth)?;
        let experiment_id = http.get_or_create_experiment(experiment)?;

        let mut all_tags = tags.clone();
        all_tags.insert("mlflow.runName".into(), run_name.into());
        if let Some(sha) = tags.get("git_sha") {
            all_tags.insert("mlflow.source.git.commit".into(), sha.clone());
        }
        let tags_json: Vec<Value> = all_tags
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        let reply = http.post(
            "runs/create",
            &json!({
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": unix_millis(),
                "tags": tags_json,
            }),
        )?;
        let run_id = reply
            .pointer("/run/info/run_id")
            .or_else(|| reply.pointer("/run/info/run_uuid"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::Tracking(format!(
                    "{}: answer has no run id: {reply}",
                    http.url("runs/create")
                ))
            })?
            .to_string();
        Ok(Mlflow {
            http,
            experiment_id,
            run_id,
            finished: false,
            skipped_non_finite: 0,
        })
    }

    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The experiment's id.
    pub fn experiment_id(&self) -> &str {
        &self.experiment_id
    }

    /// The server's base URL (without a trailing `/`).
    pub fn base_url(&self) -> &str {
        &self.http.base
    }

    /// How many non-finite metric values were not sent (MLflow rejects NaN in some versions).
    pub fn skipped_non_finite(&self) -> u64 {
        self.skipped_non_finite
    }

    fn log_batch(&self, field: &str, items: &[Value]) -> Result<()> {
        let mut body = serde_json::Map::new();
        body.insert("run_id".into(), Value::from(self.run_id.as_str()));
        body.insert(field.into(), Value::from(items.to_vec()));
        self.http.post("runs/log-batch", &Value::Object(body))?;
        Ok(())
    }

    fn update(&mut self, status: RunStatus) -> Result<()> {
        self.finished = true;
        self.http.post(
            "runs/update",
            &json!({
                "run_id": self.run_id,
                "status": status.as_mlflow(),
                "end_time": unix_millis(),
            }),
        )?;
        Ok(())
    }
}

impl Tracker for Mlflow {
    /// Logs the parameters in `runs/log-batch` requests of at most
    /// [`MLFLOW_MAX_PARAMS_PER_BATCH`].
    fn log_params(&mut self, params: &BTreeMap<String, String>) -> Result<()> {
        let items: Vec<Value> = params
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        for chunk in items.chunks(MLFLOW_MAX_PARAMS_PER_BATCH) {
            self.log_batch("params", chunk)?;
        }
        Ok(())
    }

    /// Logs the finite metrics in `runs/log-batch` requests of at most
    /// [`MLFLOW_MAX_METRICS_PER_BATCH`], with the current time in milliseconds; non-finite
    /// values are skipped and counted ([`Mlflow::skipped_non_finite`]).
    fn log_metrics(&mut self, step: u64, metrics: &BTreeMap<String, f64>) -> Result<()> {
        let timestamp = unix_millis();
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let mut items = Vec::with_capacity(metrics.len());
        for (key, &value) in metrics {
            if value.is_finite() {
                items.push(
                    json!({"key": key, "value": value, "timestamp": timestamp, "step": step}),
                );
            } else {
                self.skipped_non_finite += 1;
            }
        }
        for chunk in items.chunks(MLFLOW_MAX_METRICS_PER_BATCH) {
            self.log_batch("metrics", chunk)?;
        }
        Ok(())
    }

    /// Sets the run's status and end time (`runs/update`).
    fn finish(&mut self, status: RunStatus) -> Result<()> {
        self.update(status)
    }
}

impl Drop for Mlflow {
    fn drop(&mut self) {
        if !self.finished {
            let status = if std::thread::panicking() {
                RunStatus::Failed
            } else {
                RunStatus::Killed
            };
            let _ = self.update(status);
        }
    }
}

/// Checks a tracking URI: `None` for an empty one, the base URL (no trailing `/`) for
/// http(s), an error naming the URI for anything else.
fn check_tracking_uri(uri: &str) -> Option<Result<String>> {
    let uri = uri.trim();
    if uri.is_empty() {
        return None;
    }
    let lower = uri.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Some(Ok(uri.trim_end_matches('/').to_string()));
    }
    let scheme = uri.split_once(':').map_or("", |(s, _)| s);
    let what = if scheme.is_empty() || scheme.contains(['/', '\\', '.']) {
        "a bare path or name".to_string()
    } else {
        format!("the {scheme}: scheme")
    };
    Some(Err(Error::Tracking(format!(
        "MLFLOW_TRACKING_URI={uri:?} uses {what}: only http:// and https:// tracking servers are \
         supported (start one with `mlflow server`, or unset MLFLOW_TRACKING_URI)"
    ))))
}

/// Standard base64 with padding (for basic authentication).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// HTTP access to the MLflow REST API.
struct MlflowHttp {
    agent: ureq::Agent,
    base: String,
    auth: Option<String>,
}

impl std::fmt::Debug for MlflowHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowHttp")
            .field("base", &self.base)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// An MLflow API answer with an HTTP error status.
struct ApiFailure {
    status: u16,
    error_code: Option<String>,
    body: String,
}

impl MlflowHttp {
    fn new(base_url: &str, auth: Option<String>) -> Result<Self> {
        let base = base_url.trim().trim_end_matches('/').to_string();
        let lower = base.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(Error::Tracking(format!(
                "MLflow URL {base_url:?}: only http:// and https:// tracking servers are supported"
            )));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(MLFLOW_CONNECT_TIMEOUT))
            .timeout_recv_response(Some(MLFLOW_READ_TIMEOUT))
            .timeout_global(Some(MLFLOW_REQUEST_TIMEOUT))
            .user_agent(concat!("qattn-train/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(MlflowHttp { agent, base, auth })
    }

    fn url(&self, endpoint: &str) -> String {
        format!("{}/api/2.0/mlflow/{endpoint}", self.base)
    }

    /// Sends a request; `Ok(Err(..))` for an HTTP error status, `Err` for transport errors.
    fn send(
        &self,
        endpoint: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<std::result::Result<Value, ApiFailure>> {
        let url = self.url(endpoint);
        let method = if body.is_some() { "POST" } else { "GET" };
        let transport = |e: ureq::Error| Error::Tracking(format!("{method} {url}: {e}"));
        let mut response = match body {
            Some(body) => {
                let mut req = self.agent.post(&url);
                if let Some(auth) = &self.auth {
                    req = req.header("Authorization", auth);
                }
                req.send_json(body).map_err(transport)?
            }
            None => {
                let mut req = self.agent.get(&url);
                for (k, v) in query {
                    req = req.query(k, v);
                }
                if let Some(auth) = &self.auth {
                    req = req.header("Authorization", auth);
                }
                req.call().map_err(transport)?
            }
        };
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(transport)?;
        if (200..300).contains(&status) {
            let value = if text.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&text).map_err(|e| {
                    Error::Tracking(format!(
                        "{method} {url}: HTTP {status}: answer is not JSON ({e}): {}",
                        clip(&text)
                    ))
                })?
            };
            Ok(Ok(value))
        } else {
            let error_code = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
                v.get("error_code")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            Ok(Err(ApiFailure {
                status,
                error_code,
                body: text,
            }))
        }
    }

    fn failure(&self, method: &str, endpoint: &str, f: &ApiFailure) -> Error {
        Error::Tracking(format!(
            "{method} {}: HTTP {}: {}",
            self.url(endpoint),
            f.status,
            clip(&f.body)
        ))
    }

    fn post(&self, endpoint: &str, body: &Value) -> Result<Value> {
        self.send(endpoint, &[], Some(body))?
            .map_err(|f| self.failure("POST", endpoint, &f))
    }

    /// The id of the experiment `name`, created if missing.
    fn get_or_create_experiment(&self, name: &str) -> Result<String> {
        // Two rounds: if another process creates the experiment between our get and create,
        // the create fails with RESOURCE_ALREADY_EXISTS and the second get finds it.
        for _ in 0..2 {
            let endpoint = "experiments/get-by-name";
            match self.send(endpoint, &[("experiment_name", name)], None)? {
                Ok(reply) => {
                    let exp = reply.get("experiment").unwrap_or(&Value::Null);
                    if exp.get("lifecycle_stage").and_then(Value::as_str) == Some("deleted") {
                        return Err(Error::Tracking(format!(
                            "{}: experiment {name:?} is deleted; restore it or choose another name",
                            self.url(endpoint)
                        )));
                    }
                    return exp
                        .get("experiment_id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| {
                            Error::Tracking(format!(
                                "{}: answer has no experiment_id: {reply}",
                                self.url(endpoint)
                            ))
                        });
                }
                Err(f)
                    if f.status == 404
                        || f.error_code.as_deref() == Some("RESOURCE_DOES_NOT_EXIST") => {}
                Err(f) => return Err(self.failure("GET", endpoint, &f)),
            }
            let endpoint = "experiments/create";
            match self.send(endpoint, &[], Some(&json!({"name": name})))? {
                Ok(reply) => {
                    return reply
                        .get("experiment_id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| {
                            Error::Tracking(format!(
                                "{}: answer has no experiment_id: {reply}",
                                self.url(endpoint)
                            ))
                        });
                }
                Err(f) if f.error_code.as_deref() == Some("RESOURCE_ALREADY_EXISTS") => {}
                Err(f) => return Err(self.failure("POST", endpoint, &f)),
            }
        }
        Err(Error::Tracking(format!(
            "{}: experiment {name:?} neither found nor created",
            self.url("experiments/create")
        )))
    }
}

/// The first 2000 characters of a server answer.
fn clip(text: &str) -> String {
    const MAX: usize = 2000;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Fan-out and git
// ---------------------------------------------------------------------------------------------

/// Several trackers at once (the JSONL log and, optionally, MLflow).
///
/// Every call goes to every tracker, even when one fails; a single failure is returned as
/// is, several are joined into one [`Error::Tracking`].
pub struct Trackers(pub Vec<Box<dyn Tracker>>);

impl Trackers {
    fn each(&mut self, mut f: impl FnMut(&mut dyn Tracker) -> Result<()>) -> Result<()> {
        let mut errors: Vec<Error> = self
            .0
            .iter_mut()
            .filter_map(|t| f(t.as_mut()).err())
            .collect();
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Tracking(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }
}

impl Tracker for Trackers {
    fn log_params(&mut self, params: &BTreeMap<String, String>) -> Result<()> {
        self.each(|t| t.log_params(params))
    }

    fn log_metrics(&mut self, step: u64, metrics: &BTreeMap<String, f64>) -> Result<()> {
        self.each(|t| t.log_metrics(step, metrics))
    }

    fn finish(&mut self, status: RunStatus) -> Result<()> {
        self.each(|t| t.finish(status))
    }
}

/// The commit checked out in `dir` (`git rev-parse HEAD`), or `None` when git is not
/// installed, `dir` is not in a repository, or the repository has no commit yet.
pub fn git_sha(dir: &Path) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let sha = String::from_utf8(out.stdout).ok()?.trim().to_string();
    let valid = matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then_some(sha)
}

// ---------------------------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------------------------

/// Progress of a training run on stderr.
///
/// When stderr is a terminal (and plain output is not forced): an indicatif bar with the
/// step, the total, loss, learning rate, samples/s and ETA. Otherwise one plain line per
/// [`update`](Progress::update), as [`format_progress_line`] writes it:
/// `step 40/200  loss 0.6931  lr 2.00e-05  12.3 samples/s  eta 1m05s`.
///
/// The ETA is the wall time per step since [`Progress::new`] times the steps left.
#[derive(Debug)]
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    start_step: u64,
    started: Instant,
}

impl Progress {
    /// Progress towards `total_steps`, resuming at `start_step` (0 for a fresh run). With
    /// `force_plain`, plain lines even on a terminal.
    pub fn new(total_steps: u64, start_step: u64, force_plain: bool) -> Self {
        let bar = (!force_plain && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(total_steps),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "[{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len}  {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_position(start_step.min(total_steps));
            bar
        });
        Progress {
            bar,
            total: total_steps,
            start_step,
            started: Instant::now(),
        }
    }

    /// Whether this shows a bar (stderr is a terminal) rather than plain lines.
    pub fn is_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// The estimated time left after `step`, from the pace since [`Progress::new`]; `None`
    /// before the first step.
    pub fn eta(&self, step: u64) -> Option<Duration> {
        let done = step.checked_sub(self.start_step).filter(|&d| d > 0)?;
        let left = self.total.saturating_sub(step);
        let per_step = self.started.elapsed().as_secs_f64() / done as f64;
        Duration::try_from_secs_f64(per_step * left as f64).ok()
    }

    /// Reports that `step` is done, with the current loss, learning rate and throughput.
    pub fn update(&self, step: u64, loss: f64, lr: f64, samples_per_s: f64) {
        let eta = self.eta(step);
        match &self.bar {
            Some(bar) => {
                bar.set_position(step.min(self.total));
                bar.set_message(format!(
                    "loss {}  lr {}  {:.1} samples/s  eta {}",
                    format_loss(loss),
                    format_lr(lr),
                    samples_per_s,
                    format_eta(eta)
                ));
            }
            None => plain(&format_progress_line(
                step,
                self.total,
                loss,
                lr,
                samples_per_s,
                eta,
            )),
        }
    }

    /// Prints `msg` on a line of its own (above the bar when there is one).
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => plain(msg),
        }
    }

    /// Ends the progress display and prints `summary`.
    pub fn finish(&self, summary: &str) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        plain(summary);
    }
}

/// Writes a line to stderr, ignoring failures (a closed stderr must not stop training).
fn plain(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// The plain progress line:
/// `step 40/200  loss 0.6931  lr 2.00e-05  12.3 samples/s  eta 1m05s` (loss with 4 decimals,
/// learning rate in scientific notation with a two-digit exponent, throughput with 1
/// decimal, ETA as [`format_eta`] writes it).
pub fn format_progress_line(
    step: u64,
    total: u64,
    loss: f64,
    lr: f64,
    samples_per_s: f64,
    eta: Option<Duration>,
) -> String {
    format!(
        "step {step}/{total}  loss {}  lr {}  {samples_per_s:.1} samples/s  eta {}",
        format_loss(loss),
        format_lr(lr),
        format_eta(eta)
    )
}

/// An ETA in whole seconds: `42s`, `1m05s`, `2h03m04s`; `?` when unknown.
pub fn format_eta(eta: Option<Duration>) -> String {
    let Some(eta) = eta else {
        return "?".to_string();
    };
    let secs = eta.as_secs() + u64::from(eta.subsec_millis() >= 500);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn format_loss(loss: f64) -> String {
    format!("{loss:.4}")
}

/// Scientific notation with two decimals and a signed two-digit exponent (`2.00e-05`), as
/// Python's `{:.2e}` writes it.
fn format_lr(lr: f64) -> String {
    if !lr.is_finite() {
        return format!("{lr}");
    }
    let s = format!("{lr:.2e}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let exp: i32 = exp.parse().unwrap_or(0);
            let sign = if exp < 0 { '-' } else { '+' };
            format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
        }
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_is_written_like_python() {
        assert_eq!(format_lr(2e-5), "2.00e-05");
        assert_eq!(format_lr(1.0), "1.00e+00");
        assert_eq!(format_lr(0.0), "0.00e+00");
        assert_eq!(format_lr(3.456e12), "3.46e+12");
        assert_eq!(format_lr(1e-100), "1.00e-100");
        assert_eq!(format_lr(f64::NAN), "NaN");
    }

    #[test]
    fn eta_formats() {
        let d = |s: f64| Some(Duration::from_secs_f64(s));
        assert_eq!(format_eta(None), "?");
        assert_eq!(format_eta(d(0.2)), "0s");
        assert_eq!(format_eta(d(42.0)), "42s");
        assert_eq!(format_eta(d(64.6)), "1m05s");
        assert_eq!(format_eta(d(3600.0 * 2.0 + 3.0 * 60.0 + 4.0)), "2h03m04s");
    }

    #[test]
    fn plain_line_has_the_documented_format() {
        let line = format_progress_line(
            40,
            200,
            std::f64::consts::LN_2,
            2e-5,
            12.34,
            Some(Duration::from_secs(65)),
        );
        assert_eq!(
            line,
            "step 40/200  loss 0.6931  lr 2.00e-05  12.3 samples/s  eta 1m05s"
        );
    }

    #[test]
    fn eta_uses_the_pace_since_start() {
        let p = Progress::new(100, 10, true);
        assert!(!p.is_bar());
        assert_eq!(p.eta(10), None);
        assert_eq!(p.eta(5), None);
        assert!(p.eta(20).is_some());
        assert_eq!(p.eta(100), Some(Duration::ZERO));
    }

    #[test]
    fn tracking_uris() {
        assert!(check_tracking_uri("").is_none());
        assert!(check_tracking_uri("  ").is_none());
        assert_eq!(
            check_tracking_uri("http://localhost:5000/")
                .unwrap()
                .unwrap(),
            "http://localhost:5000"
        );
        assert_eq!(
            check_tracking_uri("HTTPS://mlflow.example.org")
                .unwrap()
                .unwrap(),
            "HTTPS://mlflow.example.org"
        );
        for (uri, what) in [
            ("file:///tmp/mlruns", "the file: scheme"),
            ("databricks", "bare path or name"),
            ("./mlruns", "bare path or name"),
            ("sqlite:///x.db", "the sqlite: scheme"),
        ] {
            let err = check_tracking_uri(uri).unwrap().unwrap_err().to_string();
            assert!(err.contains("only http:// and https://"), "{err}");
            assert!(err.contains(what), "{uri}: {err}");
        }
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (input, out) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), out);
        }
    }

    #[test]
    fn metrics_line_puts_step_and_time_first() {
        let m = BTreeMap::from([("b".to_string(), 1.5), ("a".to_string(), f64::INFINITY)]);
        assert_eq!(
            metrics_line(7, 12.5, &m).unwrap(),
            r#"{"step":7,"time":12.5,"a":null,"b":1.5}"#
        );
        let bad = BTreeMap::from([("step".to_string(), 1.0)]);
        assert!(metrics_line(1, 0.0, &bad).is_err());
    }
}
