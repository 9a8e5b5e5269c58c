//! `serve.toml`: every setting of the server, with defaults. Command-line flags of
//! `qattn serve` override the file (see docs/serve.md and docs/serve.example.toml).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole server configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Addresses.
    pub listen: ListenConfig,
    /// API keys.
    pub auth: AuthConfig,
    /// Request limits and admission control.
    pub limits: LimitsConfig,
    /// Dynamic batching.
    pub batching: BatchingConfig,
    /// Monte-Carlo fallback and circuit breaker.
    pub fallback: FallbackConfig,
    /// Automatic rollback of a newly promoted version.
    pub rollout: RolloutConfig,
    /// gRPC-web.
    pub web: WebConfig,
    /// Where models come from.
    pub hub: HubConfig,
    /// The models to load at start-up (`[[models]]` tables).
    pub models: Vec<ModelConfig>,
}

/// Listening addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Interface to bind (default `0.0.0.0`, all interfaces).
    pub host: String,
    /// gRPC port (default 50051; 0 picks a free port, printed at start-up).
    pub port: u16,
    /// Prometheus `/metrics` HTTP port (default 9000; 0 picks a free port).
    pub metrics_port: u16,
    /// Serve metrics at all.
    pub metrics: bool,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            host: "0.0.0.0".into(),
            port: 50051,
            metrics_port: 9000,
            metrics: true,
        }
    }
}

/// API keys (the secrets live in files or environment variables, never in serve.toml).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Data-plane keys file (`id:secret` or `secret` per line, `#` comments); merged with
    /// env `QATTN_API_KEYS`.
    pub api_keys_file: Option<PathBuf>,
    /// Admin keys file; merged with env `QATTN_ADMIN_KEYS`.
    pub admin_keys_file: Option<PathBuf>,
    /// `grpc.health.v1` needs no key (default true: probes carry none).
    pub public_health: bool,
    /// Server reflection needs no key (default false).
    pub public_reflection: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            api_keys_file: None,
            admin_keys_file: None,
            public_health: true,
            public_reflection: false,
        }
    }
}

/// Limits; a request over one fails with `INVALID_ARGUMENT` or `RESOURCE_EXHAUSTED`
/// naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most texts (or pairs) in one request.
    pub max_batch_texts: usize,
    /// Most bytes in one text (each side of a pair counts separately).
    pub max_text_bytes: usize,
    /// Largest decoded gRPC message in bytes.
    pub max_message_bytes: usize,
    /// Requests being served at once; more get `RESOURCE_EXHAUSTED` (0 = unlimited).
    pub max_concurrent: usize,
    /// Per-key token-bucket rate in requests/s (absent: no rate limit).
    pub rate_limit: Option<f64>,
    /// Bucket size (absent: max(1, rate)).
    pub rate_burst: Option<f64>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_batch_texts: 64,
            max_text_bytes: 16 * 1024,
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent: 512,
            rate_limit: None,
            rate_burst: None,
        }
    }
}

/// Dynamic batching per model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingConfig {
    /// Most requests per batch.
    pub max_batch_size: usize,
    /// Padded-token budget per batch.
    pub max_batch_tokens: usize,
    /// Longest wait for a batch to fill, in milliseconds. The default 0 runs a request as soon
    /// as the worker is free: batches still form from the requests that queue while a batch
    /// runs, and a lone request pays no wait (measured with `qattn-load`: concurrency 1 p50
    /// 9.9 → 7.8 ms with the same throughput at concurrency 16).
    pub max_wait_ms: u64,
    /// Most queued requests per version; more get `RESOURCE_EXHAUSTED`.
    pub queue_capacity: usize,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch_size: 32,
            max_batch_tokens: 8192,
            max_wait_ms: 0,
            queue_capacity: 1024,
        }
    }
}

/// Fallback from Monte-Carlo to exact attention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FallbackConfig {
    /// A Monte-Carlo forward pass slower than this (ms) is discarded and the exact result
    /// served (absent: no latency budget).
    pub latency_budget_ms: Option<u64>,
    /// Failures within the window that open the breaker (0 disables it).
    pub breaker_failures: u32,
    /// Breaker failure window, ms.
    pub breaker_window_ms: u64,
    /// How long the breaker stays open before a probe, ms.
    pub breaker_open_ms: u64,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            latency_budget_ms: None,
            breaker_failures: 5,
            breaker_window_ms: 30_000,
            breaker_open_ms: 10_000,
        }
    }
}

/// The longest `rollout.window_s`: 7 days, in seconds.
pub const MAX_ROLLOUT_WINDOW_S: f64 = 7.0 * 86_400.0;
/// The shortest `rollout.window_s`: one millisecond. Shorter windows round to a zero
/// [`Duration`] (a subnormal number of seconds does) and could never hold a request.
pub const MIN_ROLLOUT_WINDOW_S: f64 = 0.001;

/// `rollout.window_s` as a duration: an error naming the key unless it is a number of
/// seconds in [[`MIN_ROLLOUT_WINDOW_S`], [`MAX_ROLLOUT_WINDOW_S`]].
fn rollout_window(window_s: f64) -> Result<Duration> {
    if (MIN_ROLLOUT_WINDOW_S..=MAX_ROLLOUT_WINDOW_S).contains(&window_s)
        && let Ok(window) = Duration::try_from_secs_f64(window_s)
        && !window.is_zero()
    {
        return Ok(window);
    }
    Err(Error::Config(format!(
        "rollout.window_s: {window_s} is out of range: must be a number of seconds between \
         {MIN_ROLLOUT_WINDOW_S} and {MAX_ROLLOUT_WINDOW_S} (7 days)"
    )))
}
/// The longest `batching.max_wait_ms` (one minute).
pub const MAX_WAIT_MS: u64 = 60_000;
/// The largest `limits.max_concurrent` (a semaphore of more permits cannot exist).
pub const MAX_CONCURRENT: usize = 1_000_000;

/// Automatic rollback of a version promoted by `SetSplit { monitor: true }` or
/// `SetDefault`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// Roll back when the promoted version's failure rate (errors and fallbacks) exceeds this.
    pub error_rate_threshold: f64,
    /// Window over which the rate is measured, seconds.
    pub window_s: f64,
    /// Requests needed in the window before a decision.
    pub min_requests: u64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            error_rate_threshold: 0.2,
            window_s: 60.0,
            min_requests: 20,
        }
    }
}

/// gRPC-web for browsers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Accept gRPC-web (HTTP/1.1) requests.
    pub enabled: bool,
    /// Origins allowed by CORS (`*` for any); empty: no cross-origin requests.
    pub cors_origins: Vec<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            cors_origins: Vec::new(),
        }
    }
}

/// Model cache settings (the same as `qattn model`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Hugging Face cache directory (else HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub).
    pub cache_dir: Option<PathBuf>,
    /// Never download; read the cache only (also `HF_HUB_OFFLINE=1`).
    pub offline: bool,
}

/// Testing aid: makes the Monte-Carlo path of a version fail on purpose so fallback, breaker
/// and rollback can be exercised. Never set it in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// The Monte-Carlo forward pass returns an error.
    Error,
    /// The Monte-Carlo forward pass returns NaN outputs.
    Nan,
    /// The Monte-Carlo forward pass sleeps this many milliseconds first.
    SleepMs(u64),
}

impl FailMode {
    /// Parses `error`, `nan` or `sleep:MS`.
    pub fn parse(s: &str) -> Result<FailMode> {
        match s {
            "error" => Ok(FailMode::Error),
            "nan" => Ok(FailMode::Nan),
            _ => s
                .strip_prefix("sleep:")
                .and_then(|ms| ms.parse().ok())
                .map(FailMode::SleepMs)
                .ok_or_else(|| {
                    Error::Config(format!("fail_mc {s:?}: expected error, nan or sleep:MS"))
                }),
        }
    }
}

/// One model version to load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model name clients use (default: the last path component of `source`).
    #[serde(default)]
    pub name: String,
    /// Version label (default "1").
    #[serde(default = "default_version")]
    pub version: String,
    /// Hub id (`org/name[@revision]`) or a `save_pretrained` directory.
    pub source: String,
    /// Attention spec (e.g. `exact`, `stratified:32`); absent: the checkpoint's or exact.
    #[serde(default)]
    pub attention: Option<String>,
    /// Weight precision `f32` | `f16` | `int8` (absent: f32).
    #[serde(default)]
    pub precision: Option<String>,
    /// Device `cpu` | `cuda` | `cuda:N` (absent: cpu); batches of this model run there.
    #[serde(default)]
    pub device: Option<String>,
    /// Task head `classification:N` | `regression` | `none`; absent: the checkpoint's.
    #[serde(default)]
    pub head: Option<String>,
    /// Base seed of the Monte-Carlo draws.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Serve this version by default (the first version of a model is the default otherwise).
    #[serde(default)]
    pub default: bool,
    /// A/B split weight (versions of one model with weights form the split).
    #[serde(default)]
    pub weight: Option<f64>,
    /// Testing aid only (see [`FailMode`]).
    #[serde(default)]
    pub fail_mc: Option<FailMode>,
}

fn default_version() -> String {
    "1".into()
}

impl ModelConfig {
    /// A model from a `--model ID_OR_DIR[=NAME]` argument (`NAME` may be `NAME:VERSION`).
    pub fn from_arg(arg: &str) -> Result<ModelConfig> {
        let (source, name) = match arg.rsplit_once('=') {
            Some((s, n)) => (s.to_string(), n.to_string()),
            None => (arg.to_string(), String::new()),
        };
        if source.trim().is_empty() {
            return Err(Error::Config(format!(
                "--model {arg:?}: expected ID_OR_DIR[=NAME[:VERSION]]"
            )));
        }
        let (name, version) = match name.split_once(':') {
            Some((n, v)) if !v.is_empty() => (n.to_string(), v.to_string()),
            _ => (name, default_version()),
        };
        let mut m = ModelConfig {
            name,
            version,
            source,
            attention: None,
            precision: None,
            device: None,
            head: None,
            seed: None,
            default: false,
            weight: None,
            fail_mc: None,
        };
        m.fill_name();
        Ok(m)
    }

    /// Fills an empty name from the source's last component.
    pub fn fill_name(&mut self) {
        if self.name.is_empty() {
            let s = self.source.split('@').next().unwrap_or(&self.source);
            self.name = s
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(s)
                .to_string();
        }
    }
}

impl ServeConfig {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<ServeConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: ServeConfig =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        for m in &mut cfg.models {
            m.fill_name();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks value ranges; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, why: &str| Err(Error::Config(format!("{f}: {why}")));
        if self.limits.max_batch_texts == 0 {
            return bad("limits.max_batch_texts", "must be at least 1");
        }
        if self.limits.max_text_bytes == 0 {
            return bad("limits.max_text_bytes", "must be at least 1");
        }
        if let Some(r) = self.limits.rate_limit
            && !(r.is_finite() && r > 0.0)
        {
            return bad(
                "limits.rate_limit",
                "must be a positive number of requests/s",
            );
        }
        if let Some(b) = self.limits.rate_burst
            && !(b.is_finite() && b >= 1.0)
        {
            return bad("limits.rate_burst", "must be at least 1");
        }
        if self.batching.max_batch_size == 0 {
            return bad("batching.max_batch_size", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.rollout.error_rate_threshold) {
            return bad("rollout.error_rate_threshold", "must be in [0, 1]");
        }
        rollout_window(self.rollout.window_s)?;
        if self.batching.max_wait_ms > MAX_WAIT_MS {
            return Err(Error::Config(format!(
                "batching.max_wait_ms: {} is out of range: must be ≤ {MAX_WAIT_MS}",
                self.batching.max_wait_ms
            )));
        }
        if self.limits.max_concurrent > MAX_CONCURRENT {
            return Err(Error::Config(format!(
                "limits.max_concurrent: {} is out of range: must be ≤ {MAX_CONCURRENT} (0 = \
                 unlimited)",
                self.limits.max_concurrent
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.models {
            if m.name.is_empty() || m.version.is_empty() {
                return bad("models", "every model needs a non-empty name and version");
            }
            if !seen.insert((m.name.clone(), m.version.clone())) {
                return Err(Error::Config(format!(
                    "models: {}:{} is listed twice",
                    m.name, m.version
                )));
            }
            if let Some(w) = m.weight
                && !(w.is_finite() && w >= 0.0)
            {
                return Err(Error::Config(format!(
                    "models.weight of {}:{}: must be >= 0",
                    m.name, m.version
                )));
            }
        }
        Ok(())
    }

    /// The batcher settings.
    pub fn batch_config(&self) -> crate::batcher::BatchConfig {
        crate::batcher::BatchConfig {
            max_batch_size: self.batching.max_batch_size,
            max_batch_tokens: self.batching.max_batch_tokens,
            max_wait: Duration::from_millis(self.batching.max_wait_ms),
            queue_capacity: self.batching.queue_capacity,
        }
    }

    /// The breaker settings.
    pub fn breaker_config(&self) -> crate::breaker::BreakerConfig {
        crate::breaker::BreakerConfig {
            failure_threshold: self.fallback.breaker_failures,
            window: Duration::from_millis(self.fallback.breaker_window_ms),
            open_for: Duration::from_millis(self.fallback.breaker_open_ms),
        }
    }

    /// The rollback policy; an error naming `rollout.window_s` when it is not a valid
    /// duration (a configuration built in code, not through [`ServeConfig::validate`]).
    pub fn rollback_policy(&self) -> Result<crate::routing::RollbackPolicy> {
        let window = rollout_window(self.rollout.window_s)?;
        Ok(crate::routing::RollbackPolicy {
            error_rate_threshold: self.rollout.error_rate_threshold,
            window,
            min_requests: self.rollout.min_requests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_arg_forms() {
        let m = ModelConfig::from_arg("sentence-transformers/all-MiniLM-L6-v2").unwrap();
        assert_eq!(
            (m.name.as_str(), m.version.as_str()),
            ("all-MiniLM-L6-v2", "1")
        );
        let m = ModelConfig::from_arg("/tmp/dir=minilm:2").unwrap();
        assert_eq!(
            (m.source.as_str(), m.name.as_str(), m.version.as_str()),
            ("/tmp/dir", "minilm", "2")
        );
        assert!(ModelConfig::from_arg("=x").is_err());
    }

    #[test]
    fn toml_round_trip_and_unknown_fields() {
        let cfg: ServeConfig = toml::from_str(
            "[limits]\nmax_batch_texts = 8\n[[models]]\nsource = \"a/b\"\nweight = 0.5\n",
        )
        .unwrap();
        assert_eq!(cfg.limits.max_batch_texts, 8);
        assert_eq!(cfg.models[0].weight, Some(0.5));
        assert!(toml::from_str::<ServeConfig>("[limits]\nmax_texts = 8\n").is_err());
        assert!(FailMode::parse("sleep:5").is_ok() && FailMode::parse("boom").is_err());
    }

    #[test]
    fn out_of_range_values_are_refused_at_load_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        for (text, key) in [
            ("[rollout]\nwindow_s = 1e20\n", "rollout.window_s"),
            ("[rollout]\nwindow_s = inf\n", "rollout.window_s"),
            ("[rollout]\nwindow_s = nan\n", "rollout.window_s"),
            ("[rollout]\nwindow_s = -1.0\n", "rollout.window_s"),
            ("[rollout]\nwindow_s = 0.0\n", "rollout.window_s"),
            ("[rollout]\nwindow_s = 1e-309\n", "rollout.window_s"),
            ("[rollout]\nwindow_s = 0.0001\n", "rollout.window_s"),
            (
                "[batching]\nmax_wait_ms = 18446744073709551615\n",
                "batching.max_wait_ms",
            ),
            (
                "[limits]\nmax_concurrent = 4611686018427387904\n",
                "limits.max_concurrent",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = ServeConfig::from_file(&path).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn rollback_policy_of_an_unvalidated_config_is_an_error_not_a_panic() {
        let mut cfg = ServeConfig::default();
        cfg.rollout.window_s = 1e20;
        let err = cfg.rollback_policy().unwrap_err().to_string();
        assert!(err.contains("rollout.window_s"), "{err}");
        // A subnormal number of seconds is positive but rounds to a zero duration.
        cfg.rollout.window_s = 8.486188323428343e-309;
        assert!(cfg.validate().is_err());
        let err = cfg.rollback_policy().unwrap_err().to_string();
        assert!(err.contains("rollout.window_s"), "{err}");
        cfg.rollout.window_s = 30.0;
        assert_eq!(
            cfg.rollback_policy().unwrap().window,
            Duration::from_secs(30)
        );
    }

    proptest::proptest! {
        /// Extreme numbers never panic validation, and whatever validates turns into the
        /// durations, semaphores and deadlines the server builds from it.
        #[test]
        fn validate_accepts_only_usable_values(
            window_s in proptest::prop_oneof![
                proptest::num::f64::ANY,
                proptest::strategy::Just(f64::INFINITY),
                proptest::strategy::Just(f64::NAN),
                proptest::strategy::Just(1e20),
                proptest::strategy::Just(0.0),
                proptest::strategy::Just(-1.0),
                proptest::strategy::Just(8.5e-309),
                proptest::strategy::Just(1e-10),
                proptest::strategy::Just(MIN_ROLLOUT_WINDOW_S),
                0.001f64..1e6,
            ],
            max_wait_ms in proptest::prop_oneof![proptest::num::u64::ANY, 0u64..100_000],
            max_concurrent in proptest::prop_oneof![proptest::num::usize::ANY, 0usize..2_000_000],
            rate in proptest::num::f64::ANY,
        ) {
            let mut cfg = ServeConfig::default();
            cfg.rollout.window_s = window_s;
            cfg.batching.max_wait_ms = max_wait_ms;
            cfg.limits.max_concurrent = max_concurrent;
            cfg.limits.rate_limit = Some(rate);
            if cfg.validate().is_ok() {
                let policy = cfg.rollback_policy().unwrap();
                proptest::prop_assert!(!policy.window.is_zero());
                let now = std::time::Instant::now();
                let _ = now + cfg.batch_config().max_wait + policy.window;
                proptest::prop_assert!(cfg.limits.max_concurrent <= MAX_CONCURRENT);
            }
        }
    }
}
