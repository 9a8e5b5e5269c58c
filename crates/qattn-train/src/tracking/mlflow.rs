//! An MLflow tracking server over its REST API (`/api/2.0/mlflow/…`).

use super::{RunStatus, Tracker};
use crate::error::{Error, Result};
use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
                BASE64_STANDARD.encode(format!("{user}:{pass}"))
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

    /// The `experiment_id` string of `value` (part of the server's `reply` to `endpoint`).
    fn experiment_id_in(&self, value: &Value, reply: &Value, endpoint: &str) -> Result<String> {
        value
            .get("experiment_id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                Error::Tracking(format!(
                    "{}: answer has no experiment_id: {reply}",
                    self.url(endpoint)
                ))
            })
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
                    return self.experiment_id_in(exp, &reply, endpoint);
                }
                Err(f)
                    if f.status == 404
                        || f.error_code.as_deref() == Some("RESOURCE_DOES_NOT_EXIST") => {}
                Err(f) => return Err(self.failure("GET", endpoint, &f)),
            }
            let endpoint = "experiments/create";
            match self.send(endpoint, &[], Some(&json!({"name": name})))? {
                Ok(reply) => {
                    return self.experiment_id_in(&reply, &reply, endpoint);
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

/// Milliseconds since the Unix epoch.
fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The encoder the client used before the `base64` crate: standard alphabet, padded.
    fn hand_written_base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
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

    #[test]
    fn basic_auth_encoding_matches_rfc4648_and_the_former_encoder() {
        for (input, out) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("user:p@ss word", "dXNlcjpwQHNzIHdvcmQ="),
        ] {
            assert_eq!(BASE64_STANDARD.encode(input), out);
        }
        // Every length 0..=200 (all three padding cases) and every byte value.
        let mut x = 0x9E37_79B9_u32;
        let bytes: Vec<u8> = (0..200)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i < 64 { (i * 4 + 3) as u8 } else { x as u8 }
            })
            .chain(0..=255)
            .collect();
        for n in 0..=bytes.len() {
            let b = &bytes[..n];
            assert_eq!(
                BASE64_STANDARD.encode(b),
                hand_written_base64(b),
                "length {n}"
            );
        }
    }
}
