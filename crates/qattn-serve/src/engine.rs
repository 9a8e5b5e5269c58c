//! The model registry: models → versions, each version a qattn-model [`Model`] with its
//! estimator, an exact-attention twin for fallback (sharing the weights), a [`Breaker`] and a
//! [`Batcher`] whose worker thread runs the forward passes. Routing (default version, A/B
//! split, sticky keys) and automatic rollback live here too.

use crate::batcher::{Batchable, Batcher};
use crate::breaker::{Breaker, BreakerState, Route};
use crate::config::{FailMode, ModelConfig, ServeConfig};
use crate::error::{Error, Result};
use crate::metrics as m;
use crate::routing::{RolloutMonitor, Split};
use qattn_model::tokenizer::collate;
use qattn_model::{
    AttentionConfig, Encoding, EstimatorSpec, HeadKind, HubOptions, Inputs, LoadOptions, Mode,
    Model, Precision, Tokenizer,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a request asks the model for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Head output (logits, or the regression score).
    Classify,
    /// Mean-pooled, L2-normalised sentence embeddings.
    Embed,
}

/// Why the exact-attention result was served instead of the Monte-Carlo one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// The Monte-Carlo pass returned an error.
    Error,
    /// It returned NaN or infinite values.
    NonFinite,
    /// It exceeded `fallback.latency_budget_ms`.
    Latency,
    /// The breaker is open.
    BreakerOpen,
}

impl FallbackReason {
    /// The metric label / response string.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::Error => "error",
            FallbackReason::NonFinite => "non_finite",
            FallbackReason::Latency => "latency",
            FallbackReason::BreakerOpen => "breaker_open",
        }
    }
}

/// One request in a batch queue.
#[derive(Debug)]
pub struct Job {
    /// What to compute.
    pub task: Task,
    /// The tokenised inputs of the request.
    pub encodings: Vec<Encoding>,
    /// When the answer stops being useful.
    pub deadline: Option<Instant>,
    /// Explicit Monte-Carlo step seed: the job runs alone with it.
    pub seed: Option<u64>,
    /// When it was queued.
    pub enqueued: Instant,
}

impl Batchable for Job {
    fn tokens(&self) -> usize {
        let longest = self
            .encodings
            .iter()
            .map(|e| e.ids.len())
            .max()
            .unwrap_or(0);
        longest * self.encodings.len().max(1)
    }
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// The answer to one [`Job`].
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// One row per input: logits (classification), `[score]` (regression) or the embedding.
    pub rows: Vec<Vec<f32>>,
    /// The estimator spec of the served result.
    pub estimator: String,
    /// Whether the served result used Monte-Carlo attention.
    pub monte_carlo: bool,
    /// Set when the exact result was served instead.
    pub fallback: Option<FallbackReason>,
    /// Nominal Monte-Carlo samples drawn for this job (also when discarded by a fallback).
    pub samples: u64,
    /// Attention seed and step of the draws.
    pub seed: u64,
    /// The step (per-batch counter, or the job's explicit seed).
    pub step: u64,
    /// Time in the queue.
    pub queue: Duration,
    /// Forward pass time of the job's (sub-)batch, fallback included.
    pub inference: Duration,
}

/// One loaded model version.
pub struct Version {
    /// Model name.
    pub model: String,
    /// Version label.
    pub version: String,
    /// Where it was loaded from.
    pub source: String,
    /// Attention spec of the Monte-Carlo path (`exact` for exact versions).
    pub estimator: String,
    /// Weight precision.
    pub precision: String,
    /// Task head.
    pub head: Option<HeadKind>,
    /// Class names of a classification head.
    pub labels: Vec<String>,
    /// Hidden size (embedding width).
    pub hidden: usize,
    /// Longest encoding (special tokens included); longer inputs are truncated.
    pub max_len: usize,
    tokenizer: Tokenizer,
    batcher: Batcher<Job, JobOutput>,
    breaker: Arc<Breaker>,
    fail: Arc<Mutex<Option<FailMode>>>,
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version")
            .field("model", &self.model)
            .field("version", &self.version)
            .field("estimator", &self.estimator)
            .finish_non_exhaustive()
    }
}

impl Version {
    /// Tokenises inputs (no inference).
    pub fn tokenize(&self, inputs: &[(&str, Option<&str>)]) -> Result<Vec<Encoding>> {
        self.tokenizer
            .encode_batch(inputs)
            .map_err(|e| Error::InvalidArgument(format!("tokenizing: {e}")))
    }

    /// Queues a job and waits for its result.
    pub async fn submit(&self, job: Job) -> Result<JobOutput> {
        let r = self.batcher.submit(job).await;
        metrics::gauge!(m::QUEUE_DEPTH, "model" => self.model.clone())
            .set(self.batcher.queue_depth() as f64);
        Ok(r?)
    }

    /// Testing aid: changes (or clears) the injected Monte-Carlo failure of this version.
    pub fn set_fail_mc(&self, mode: Option<FailMode>) {
        *lock(&self.fail) = mode;
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// `"classification:N"`, `"regression"` or `"none"`.
    pub fn head_name(&self) -> String {
        match self.head {
            Some(HeadKind::Classification { num_labels }) => format!("classification:{num_labels}"),
            Some(HeadKind::Regression) => "regression".into(),
            Some(HeadKind::MultipleChoice) => "multiple-choice".into(),
            Some(HeadKind::CandidateScoring) => "candidates".into(),
            None => "none".into(),
        }
    }
}

/// A model: its versions and routing.
#[derive(Debug)]
struct Entry {
    versions: BTreeMap<String, Arc<Version>>,
    default: String,
    split: Option<Split>,
    /// The default before the last promotion (target of a manual rollback).
    previous: Option<String>,
    monitor: Option<RolloutMonitor>,
}

/// A snapshot of one model's routing, for Info/ListModels.
#[derive(Debug, Clone)]
pub struct ModelView {
    /// Name.
    pub name: String,
    /// Default version.
    pub default: String,
    /// Versions with their split weight (0 when not in the split).
    pub versions: Vec<(Arc<Version>, f64)>,
    /// Whether requests without a model name go here.
    pub is_default_model: bool,
}

/// The registry.
pub struct Engine {
    cfg: ServeConfig,
    models: Mutex<BTreeMap<String, Entry>>,
    default_model: Mutex<Option<String>>,
    rng: AtomicU64,
    draining: AtomicBool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// An empty registry with `cfg`'s batching, fallback and rollout settings.
    pub fn new(cfg: ServeConfig) -> Engine {
        Engine {
            cfg,
            models: Mutex::new(BTreeMap::new()),
            default_model: Mutex::new(None),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            draining: AtomicBool::new(false),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServeConfig {
        &self.cfg
    }

    /// Loads every model of the configuration (blocking) and applies the configured defaults
    /// and splits.
    pub fn load_configured(&self) -> Result<()> {
        let models = self.cfg.models.clone();
        for mc in &models {
            self.load_version(mc)?;
        }
        let mut names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        names.dedup();
        for name in names {
            let weights: Vec<(String, f64)> = models
                .iter()
                .filter(|m| m.name == name)
                .filter_map(|m| m.weight.map(|w| (m.version.clone(), w)))
                .collect();
            if let Some(d) = models.iter().find(|m| m.name == name && m.default) {
                self.set_default(name, &d.version, false)?;
            }
            if !weights.is_empty() {
                self.set_split(name, weights, false)?;
            }
        }
        Ok(())
    }

    /// Loads one version (blocking: reads weights) and registers it. The first version of a
    /// model becomes its default; the first model becomes the server's default model.
    pub fn load_version(&self, mc: &ModelConfig) -> Result<()> {
        if lock(&self.models)
            .get(&mc.name)
            .is_some_and(|e| e.versions.contains_key(&mc.version))
        {
            return Err(Error::FailedPrecondition(format!(
                "model {}:{} is already loaded; unload it first",
                mc.name, mc.version
            )));
        }
        let version = Arc::new(self.build_version(mc)?);
        metrics::gauge!(m::MODEL_INFO, "model" => version.model.clone(), "version" => version.version.clone(),
            "estimator" => version.estimator.clone(), "precision" => version.precision.clone())
        .set(1.0);
        let mut models = lock(&self.models);
        let entry = models.entry(mc.name.clone()).or_insert_with(|| Entry {
            versions: BTreeMap::new(),
            default: mc.version.clone(),
            split: None,
            previous: None,
            monitor: None,
        });
        entry.versions.insert(mc.version.clone(), version);
        drop(models);
        let mut dm = lock(&self.default_model);
        if dm.is_none() {
            *dm = Some(mc.name.clone());
        }
        tracing::info!(
            model = %mc.name,
            version = %mc.version,
            source = %mc.source,
            device = mc.device.as_deref().unwrap_or("cpu"),
            "model loaded"
        );
        Ok(())
    }

    fn build_version(&self, mc: &ModelConfig) -> Result<Version> {
        let mut hub = HubOptions::from_env();
        hub.progress = false;
        if let Some(dir) = &self.cfg.hub.cache_dir {
            hub.cache_dir = Some(dir.clone());
        }
        hub.offline |= self.cfg.hub.offline;
        let where_ = format!("model {}:{} ({})", mc.name, mc.version, mc.source);
        let attention = match &mc.attention {
            Some(spec) => Some(
                AttentionConfig::parse(spec)
                    .map_err(|e| Error::Config(format!("{where_}: attention {spec:?}: {e}")))?,
            ),
            None => None,
        };
        let head = match mc.head.as_deref() {
            None | Some("") | Some("none") => None,
            Some(h) => Some(
                HeadKind::parse(h).map_err(|e| Error::Config(format!("{where_}: head: {e}")))?,
            ),
        };
        let precision = mc.precision.clone().unwrap_or_else(|| "f32".into());
        let mut opts = LoadOptions {
            hub,
            attention,
            head,
            ..Default::default()
        };
        opts.tokenizer = true;
        opts.precision = Precision::parse(&precision)
            .map_err(|e| Error::Config(format!("{where_}: precision: {e}")))?;
        let precision = opts.precision.to_string();
        opts.device = qattn_model::parse_device(mc.device.as_deref().unwrap_or("cpu"))
            .map_err(|e| Error::Config(format!("{where_}: {e}")))?;
        let mut model =
            Model::load(&mc.source, &opts).map_err(|e| Error::Config(format!("{where_}: {e}")))?;
        if let Some(seed) = mc.seed {
            let att = model.attention().clone().with_seed(seed);
            model.set_attention(att)?;
        }
        let cfg = model.config().clone();
        let max_pos = cfg.max_position_embeddings;
        let Some(tok) = model.tokenizer_mut() else {
            return Err(Error::Config(format!("{where_}: no tokenizer.json")));
        };
        let max_len = tok.max_length().unwrap_or(max_pos).min(max_pos).max(4);
        tok.set_max_length(Some(max_len));
        let tokenizer = tok.clone();
        let head = model.head();
        let labels = match head {
            Some(HeadKind::Classification { num_labels }) => cfg
                .labels()
                .filter(|l| l.len() == num_labels)
                .unwrap_or_else(|| (0..num_labels).map(|i| format!("LABEL_{i}")).collect()),
            _ => Vec::new(),
        };
        let attention = model.attention().clone();
        let estimator =
            attention_summary(&attention, cfg.num_hidden_layers, cfg.num_attention_heads);
        let mut per_token = 0u64;
        for l in 0..cfg.num_hidden_layers {
            for h in 0..cfg.num_attention_heads {
                per_token += attention.estimator_for(l, h).estimator.nominal_samples() as u64;
            }
        }
        let exact = if attention.is_exact() {
            None
        } else {
            // Model is Clone with Arc-backed tensors: the twin shares the weights.
            let mut twin = model.clone();
            twin.set_attention(AttentionConfig::new(EstimatorSpec::EXACT))?;
            Some(twin)
        };
        let breaker = Arc::new(Breaker::new(self.cfg.breaker_config()));
        let fail = Arc::new(Mutex::new(mc.fail_mc));
        let worker = Worker {
            mc: model,
            exact,
            breaker: breaker.clone(),
            fail: fail.clone(),
            budget: self
                .cfg
                .fallback
                .latency_budget_ms
                .map(Duration::from_millis),
            step: 0,
            per_token,
            pad_id: tokenizer.pad_id(),
            model_name: mc.name.clone(),
            version: mc.version.clone(),
            estimator: estimator.clone(),
            attention_seed: attention.seed,
        };
        let mut worker = worker;
        let batcher = Batcher::spawn(
            &format!("{}:{}", mc.name, mc.version),
            self.cfg.batch_config(),
            move |jobs| worker.run(jobs),
        );
        metrics::gauge!(m::BREAKER_STATE, "model" => mc.name.clone(), "version" => mc.version.clone())
            .set(0.0);
        Ok(Version {
            model: mc.name.clone(),
            version: mc.version.clone(),
            source: mc.source.clone(),
            estimator,
            precision,
            head,
            labels,
            hidden: cfg.hidden_size,
            max_len,
            tokenizer,
            batcher,
            breaker,
            fail,
        })
    }

    /// Picks the version for a request: `version` when given; else the model's split (sticky
    /// on `sticky` when present) or its default.
    pub fn resolve(
        &self,
        model: &str,
        version: &str,
        sticky: Option<&str>,
    ) -> Result<Arc<Version>> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(Error::Unavailable("the server is shutting down".into()));
        }
        let name = if model.is_empty() {
            lock(&self.default_model)
                .clone()
                .ok_or_else(|| Error::NotFound("no model is loaded".into()))?
        } else {
            model.to_string()
        };
        let models = lock(&self.models);
        let entry = models.get(&name).ok_or_else(|| {
            Error::NotFound(format!(
                "model {name:?} is not loaded (loaded: {})",
                models.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let chosen = if !version.is_empty() {
            version.to_string()
        } else if let Some(split) = &entry.split {
            let u = self.uniform();
            split.choose(sticky, u).to_string()
        } else {
            entry.default.clone()
        };
        entry.versions.get(&chosen).cloned().ok_or_else(|| {
            Error::NotFound(format!(
                "model {name:?} has no version {chosen:?} (versions: {})",
                entry
                    .versions
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    fn uniform(&self) -> f64 {
        // SplitMix64 over an atomic counter: cheap, lock-free, good enough for traffic splits.
        let mut z = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Records a request outcome for automatic rollback (failures: errors and fallbacks).
    pub fn record_outcome(&self, model: &str, version: &str, ok: bool) {
        let mut models = lock(&self.models);
        let Some(entry) = models.get_mut(model) else {
            return;
        };
        let Some(mon) = entry.monitor.as_mut() else {
            return;
        };
        if let Some(prev) = mon.record(version, ok, Instant::now()) {
            let promoted = mon.promoted().to_string();
            if entry.versions.contains_key(&prev) {
                entry.default = prev.clone();
                entry.split = None;
                entry.previous = Some(promoted.clone());
                tracing::warn!(model, promoted = %promoted, restored = %prev,
                    "automatic rollback: the promoted version's failure rate exceeded rollout.error_rate_threshold");
            }
            entry.monitor = None;
        }
    }

    /// Makes `version` the default and sends it all traffic. `monitor`: watch it and roll
    /// back automatically.
    pub fn set_default(&self, model: &str, version: &str, monitor: bool) -> Result<()> {
        // Everything that can fail is checked before the entry changes: a refused request
        // leaves the routing as it was.
        let policy = monitor.then(|| self.cfg.rollback_policy()).transpose()?;
        let mut models = lock(&self.models);
        let entry = entry_mut(&mut models, model)?;
        if !entry.versions.contains_key(version) {
            return Err(Error::NotFound(format!(
                "model {model:?} has no version {version:?}"
            )));
        }
        if entry.default != version {
            entry.previous = Some(entry.default.clone());
        }
        let previous = entry.default.clone();
        entry.default = version.to_string();
        entry.split = None;
        entry.monitor = policy
            .filter(|_| previous != version)
            .map(|p| RolloutMonitor::new(p, version.into(), previous, Instant::now()));
        Ok(())
    }

    /// Sets the A/B split. The largest-weight version becomes the default; `monitor` watches
    /// it (when it changed) and rolls back to the previous default on failures.
    pub fn set_split(&self, model: &str, weights: Vec<(String, f64)>, monitor: bool) -> Result<()> {
        // Everything that can fail is checked before the entry changes (see set_default).
        let policy = monitor.then(|| self.cfg.rollback_policy()).transpose()?;
        let mut models = lock(&self.models);
        let entry = entry_mut(&mut models, model)?;
        for (v, _) in &weights {
            if !entry.versions.contains_key(v) {
                return Err(Error::NotFound(format!(
                    "model {model:?} has no version {v:?}"
                )));
            }
        }
        let split =
            Split::new(weights.clone()).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let main = weights
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(v, _)| v.clone())
            .unwrap_or_else(|| entry.default.clone());
        let previous = entry.default.clone();
        if main != previous {
            entry.previous = Some(previous.clone());
        }
        entry.monitor = policy
            .filter(|_| main != previous)
            .map(|p| RolloutMonitor::new(p, main.clone(), previous, Instant::now()));
        entry.default = main;
        entry.split = Some(split);
        Ok(())
    }

    /// Restores the previous default version with all traffic; returns it.
    pub fn rollback(&self, model: &str) -> Result<String> {
        let mut models = lock(&self.models);
        let entry = entry_mut(&mut models, model)?;
        let prev = entry
            .monitor
            .as_ref()
            .map(|m| m.previous().to_string())
            .or_else(|| entry.previous.clone())
            .filter(|p| entry.versions.contains_key(p))
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "model {model:?} has no previous version to roll back to"
                ))
            })?;
        let cur = std::mem::replace(&mut entry.default, prev.clone());
        entry.previous = Some(cur);
        entry.split = None;
        entry.monitor = None;
        Ok(prev)
    }

    /// Unloads a version (or the whole model when `version` is empty), draining its queue.
    pub async fn unload(&self, model: &str, version: &str) -> Result<()> {
        let removed: Vec<Arc<Version>> = {
            let mut models = lock(&self.models);
            let entry = entry_mut(&mut models, model)?;
            if version.is_empty()
                || (entry.versions.len() == 1 && entry.versions.contains_key(version))
            {
                let e = models.remove(model).expect("checked above");
                let mut dm = lock(&self.default_model);
                if dm.as_deref() == Some(model) {
                    *dm = models.keys().next().cloned();
                }
                e.versions.into_values().collect()
            } else {
                if !entry.versions.contains_key(version) {
                    return Err(Error::NotFound(format!(
                        "model {model:?} has no version {version:?}"
                    )));
                }
                if entry.default == version
                    || entry.split.as_ref().is_some_and(|s| s.share(version) > 0.0)
                {
                    return Err(Error::FailedPrecondition(format!(
                        "{model}:{version} is the default or in the traffic split; set another default or split first"
                    )));
                }
                if entry.previous.as_deref() == Some(version) {
                    entry.previous = None;
                }
                vec![entry.versions.remove(version).expect("checked above")]
            }
        };
        for v in removed {
            v.batcher.shutdown().await;
            metrics::gauge!(m::MODEL_INFO, "model" => v.model.clone(), "version" => v.version.clone(),
                "estimator" => v.estimator.clone(), "precision" => v.precision.clone())
            .set(0.0);
        }
        Ok(())
    }

    /// Snapshots of every model.
    pub fn models(&self) -> Vec<ModelView> {
        let dm = lock(&self.default_model).clone();
        lock(&self.models)
            .iter()
            .map(|(name, e)| ModelView {
                name: name.clone(),
                default: e.default.clone(),
                versions: e
                    .versions
                    .values()
                    .map(|v| {
                        let w = match &e.split {
                            Some(s) => s.share(&v.version),
                            None => f64::from(u8::from(v.version == e.default)),
                        };
                        (v.clone(), w)
                    })
                    .collect(),
                is_default_model: dm.as_deref() == Some(name),
            })
            .collect()
    }

    /// One model's snapshot.
    pub fn model(&self, name: &str) -> Result<ModelView> {
        self.models()
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::NotFound(format!("model {name:?} is not loaded")))
    }

    /// Whether at least one model is loaded and the server is not draining.
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && !lock(&self.models).is_empty()
    }

    /// Stops routing new requests and drains every batch queue.
    pub async fn shutdown(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let all: Vec<Arc<Version>> = lock(&self.models)
            .values()
            .flat_map(|e| e.versions.values().cloned())
            .collect();
        for v in all {
            v.batcher.shutdown().await;
        }
    }
}

fn entry_mut<'a>(models: &'a mut BTreeMap<String, Entry>, model: &str) -> Result<&'a mut Entry> {
    models
        .get_mut(model)
        .ok_or_else(|| Error::NotFound(format!("model {model:?} is not loaded")))
}

/// A one-line description of an attention configuration: the default spec plus overrides.
fn attention_summary(a: &AttentionConfig, layers: usize, heads: usize) -> String {
    if a.layers.is_empty() && a.heads.is_empty() {
        return a.default.to_string();
    }
    a.describe(layers, heads).join("; ")
}

/// The batch worker of one version (runs on the batcher's thread).
struct Worker {
    mc: Model,
    exact: Option<Model>,
    breaker: Arc<Breaker>,
    fail: Arc<Mutex<Option<FailMode>>>,
    budget: Option<Duration>,
    step: u64,
    per_token: u64,
    pad_id: u32,
    model_name: String,
    version: String,
    estimator: String,
    attention_seed: u64,
}

impl Worker {
    fn run(&mut self, jobs: Vec<Job>) -> Vec<std::result::Result<JobOutput, String>> {
        let started = Instant::now();
        metrics::histogram!(m::BATCH_SIZE, "model" => self.model_name.clone())
            .record(jobs.len() as f64);
        // Groups: each seeded job alone; unseeded jobs by task.
        let mut groups: Vec<(Task, Option<u64>, Vec<usize>)> = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            if j.seed.is_some() {
                groups.push((j.task, j.seed, vec![i]));
            } else if let Some(g) = groups.iter_mut().find(|g| g.0 == j.task && g.1.is_none()) {
                g.2.push(i);
            } else {
                groups.push((j.task, None, vec![i]));
            }
        }
        let mut out: Vec<Option<std::result::Result<JobOutput, String>>> =
            (0..jobs.len()).map(|_| None).collect();
        let mut padded = 0usize;
        for (task, seed, idx) in groups {
            let encs: Vec<Encoding> = idx
                .iter()
                .flat_map(|&i| jobs[i].encodings.iter().cloned())
                .collect();
            let longest = encs.iter().map(|e| e.ids.len()).max().unwrap_or(0);
            padded += longest * encs.len();
            let step = seed.unwrap_or_else(|| {
                self.step = self.step.wrapping_add(1);
                self.step
            });
            let t0 = Instant::now();
            let result = self.run_group(task, &encs, step);
            let inference = t0.elapsed();
            match result {
                Ok((rows, estimator, monte_carlo, fallback)) => {
                    metrics::histogram!(m::INFERENCE_DURATION, "model" => self.model_name.clone(),
                        "version" => self.version.clone(), "estimator" => estimator.clone())
                    .record(inference.as_secs_f64());
                    let mut rows = rows.into_iter();
                    for &i in &idx {
                        let job = &jobs[i];
                        let tokens: usize = job.encodings.iter().map(|e| e.ids.len()).sum();
                        let ran_mc = monte_carlo
                            || !matches!(fallback, None | Some(FallbackReason::BreakerOpen));
                        let samples = if ran_mc {
                            self.per_token * tokens as u64
                        } else {
                            0
                        };
                        out[i] = Some(Ok(JobOutput {
                            rows: rows.by_ref().take(job.encodings.len()).collect(),
                            estimator: estimator.clone(),
                            monte_carlo,
                            fallback,
                            samples,
                            seed: self.attention_seed,
                            step,
                            queue: started.saturating_duration_since(job.enqueued),
                            inference,
                        }));
                    }
                }
                Err(e) => {
                    for &i in &idx {
                        out[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        metrics::histogram!(m::BATCH_TOKENS, "model" => self.model_name.clone())
            .record(padded as f64);
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err("job was not run".into())))
            .collect()
    }

    /// Runs one sub-batch; returns (rows, estimator served, monte_carlo, fallback).
    #[allow(clippy::type_complexity)]
    fn run_group(
        &mut self,
        task: Task,
        encs: &[Encoding],
        step: u64,
    ) -> std::result::Result<(Vec<Vec<f32>>, String, bool, Option<FallbackReason>), String> {
        let batch = collate(encs, self.pad_id, self.mc.device()).map_err(|e| e.to_string())?;
        let inputs = Inputs::from(&batch);
        let mode = Mode {
            train: false,
            step,
            row_offset: 0,
        };
        let Some(exact) = &self.exact else {
            let rows = forward(&self.mc, task, &inputs, mode).map_err(|e| e.to_string())?;
            return Ok((rows, self.estimator.clone(), false, None));
        };
        let now = Instant::now();
        let route = self.breaker.route(now);
        let reason = match route {
            Route::Exact => Some(FallbackReason::BreakerOpen),
            Route::Mc | Route::Probe => {
                let t0 = Instant::now();
                let r = self.forward_mc(task, &inputs, mode);
                let took = t0.elapsed();
                let tokens: usize = encs.iter().map(|e| e.ids.len()).sum();
                metrics::counter!(m::MC_SAMPLES_TOTAL, "model" => self.model_name.clone(), "version" => self.version.clone())
                    .increment(self.per_token * tokens as u64);
                let failure = match &r {
                    Err(e) => {
                        tracing::warn!(model = %self.model_name, version = %self.version, error = %e, "Monte-Carlo inference failed; serving exact");
                        Some(FallbackReason::Error)
                    }
                    Ok(rows) if rows.iter().flatten().any(|x| !x.is_finite()) => {
                        Some(FallbackReason::NonFinite)
                    }
                    Ok(_) if self.budget.is_some_and(|b| took > b) => Some(FallbackReason::Latency),
                    Ok(_) => None,
                };
                match (failure, r) {
                    (None, Ok(rows)) => {
                        self.breaker.record_success(Instant::now());
                        self.set_gauge();
                        return Ok((rows, self.estimator.clone(), true, None));
                    }
                    (f, _) => {
                        self.breaker.record_failure(Instant::now());
                        f.or(Some(FallbackReason::Error))
                    }
                }
            }
        };
        self.set_gauge();
        let reason = reason.expect("every path without a result sets a reason");
        metrics::counter!(m::FALLBACKS_TOTAL, "model" => self.model_name.clone(),
            "version" => self.version.clone(), "reason" => reason.as_str())
        .increment(1);
        let rows = forward(exact, task, &inputs, mode).map_err(|e| e.to_string())?;
        Ok((rows, "exact".into(), false, Some(reason)))
    }

    fn forward_mc(
        &self,
        task: Task,
        inputs: &Inputs,
        mode: Mode,
    ) -> std::result::Result<Vec<Vec<f32>>, String> {
        let fail = *lock(&self.fail);
        match fail {
            Some(FailMode::Error) => return Err("injected failure (fail_mc = error)".into()),
            Some(FailMode::SleepMs(ms)) => std::thread::sleep(Duration::from_millis(ms)),
            _ => {}
        }
        let mut rows = forward(&self.mc, task, inputs, mode).map_err(|e| e.to_string())?;
        if fail == Some(FailMode::Nan) {
            for r in &mut rows {
                r.iter_mut().for_each(|x| *x = f32::NAN);
            }
        }
        Ok(rows)
    }

    fn set_gauge(&self) {
        metrics::gauge!(m::BREAKER_STATE, "model" => self.model_name.clone(), "version" => self.version.clone())
            .set(self.breaker.state().gauge_value());
    }
}

fn forward(
    model: &Model,
    task: Task,
    inputs: &Inputs,
    mode: Mode,
) -> qattn_model::Result<Vec<Vec<f32>>> {
    let t = match task {
        Task::Embed => model.sentence_embeddings(inputs, mode)?,
        Task::Classify => {
            let l = model.logits(inputs, mode)?;
            if l.rank() == 1 { l.unsqueeze(1)? } else { l }
        }
    };
    Ok(t.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}
