//! [`TrainingArgs`]: every knob of a run, from TOML / JSON, command-line flags, or
//! `--set key=value` for any field.

use crate::data::Problem;
use crate::error::{Error, Result};
use crate::optim::{AdamConfig, Group, GroupConfig};
use crate::reduce::GradientReduction;
use crate::schedule::{LrSchedule, SampleSchedule};
use qattn_model::GradMode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Numeric precision of training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere.
    #[default]
    F32,
    /// bf16 autocast with f32 master weights: the encoder's dense matmuls run in bf16
    /// (`qattn_model::Model::set_autocast`), everything else and the optimiser in f32. On the
    /// CPU candle widens bf16 matmuls to f32, so this reproduces bf16's rounding (useful to
    /// check a GPU recipe) but is slower than f32 there.
    Bf16,
    /// f16 autocast with f32 master weights and dynamic loss scaling ([`LossScaler`]): a step
    /// whose gradients overflow is skipped and the scale halved.
    F16,
}

impl Precision {
    /// The dtype the autocast matmuls run in (`None` for f32).
    pub fn autocast_dtype(self) -> Option<candle_core::DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(candle_core::DType::BF16),
            Precision::F16 => Some(candle_core::DType::F16),
        }
    }
}

/// The arguments of a training run. Field names follow transformers' `TrainingArguments`
/// where one exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingArgs {
    /// Where checkpoints, `metrics.jsonl` and the final model go.
    pub output_dir: PathBuf,
    /// Epochs (ignored when `max_steps` is set).
    pub num_train_epochs: u64,
    /// Total optimiser steps; overrides `num_train_epochs`.
    pub max_steps: Option<u64>,
    /// Examples per micro-batch.
    pub per_device_train_batch_size: usize,
    /// Examples per evaluation batch.
    pub per_device_eval_batch_size: usize,
    /// Micro-batches per optimiser step.
    pub gradient_accumulation_steps: usize,
    /// Base learning rate of the backbone group (and of the others unless set).
    pub learning_rate: f64,
    /// Learning rate of the attention (Q/K/V) group; default `learning_rate`.
    pub attention_learning_rate: Option<f64>,
    /// Learning rate of the head (classifier, pooler) group; default `learning_rate`.
    pub head_learning_rate: Option<f64>,
    /// Decoupled weight decay (not on biases and LayerNorm weights).
    pub weight_decay: f64,
    /// AdamW β₁.
    pub adam_beta1: f64,
    /// AdamW β₂.
    pub adam_beta2: f64,
    /// AdamW ε.
    pub adam_epsilon: f64,
    /// Gradient clipping norm per group (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Clip norm of the attention group; default `max_grad_norm`.
    pub attention_max_grad_norm: Option<f64>,
    /// Clip norm of the head group; default `max_grad_norm`.
    pub head_max_grad_norm: Option<f64>,
    /// Learning-rate schedule.
    pub lr_scheduler_type: LrSchedule,
    /// Warmup steps (overrides `warmup_ratio` when > 0).
    pub warmup_steps: u64,
    /// Warmup as a fraction of the total steps.
    pub warmup_ratio: f64,
    /// Log every N optimiser steps.
    pub logging_steps: u64,
    /// Evaluate every N steps (default: `save_steps`); always at the end.
    pub eval_steps: Option<u64>,
    /// Checkpoint every N steps; always at the end.
    pub save_steps: u64,
    /// Keep the newest N checkpoints (plus the best one).
    pub save_total_limit: Option<usize>,
    /// Seed of data order, dropout, attention draws and new weights.
    pub seed: u64,
    /// Stop after this many evaluations without improvement.
    pub early_stopping_patience: Option<u64>,
    /// Metric deciding the best model and early stopping (`eval_loss`, `eval_accuracy`, …).
    pub metric_for_best_model: String,
    /// Whether a larger metric is better (default: false for losses, true otherwise).
    pub greater_is_better: Option<bool>,
    /// Truncate inputs to this many tokens.
    pub max_length: usize,
    /// Sort by length within shuffled mega-batches of `mega_batch_factor` batches (0: off).
    pub mega_batch_factor: usize,
    /// Attention estimator spec of every head (default: the model's).
    pub attention: Option<String>,
    /// Per-layer/head overrides, `L=SPEC` or `L.H=SPEC`.
    pub attention_overrides: Vec<String>,
    /// Gradient of sampling estimators.
    pub grad_mode: GradMode,
    /// How S changes during training.
    pub sample_schedule: SampleSchedule,
    /// Weight of the measurement-consistency loss (0: off); see the trainer docs.
    pub consistency_weight: f64,
    /// How labels are read.
    pub problem: Problem,
    /// Numeric precision.
    pub precision: Precision,
    /// How gradients are combined across processes: `f32`, `bf16` or `topk:F` (see
    /// [`crate::reduce`]). Omitted from serialised arguments when `f32`.
    #[serde(skip_serializing_if = "GradientReduction::is_default")]
    pub gradient_reduction: GradientReduction,
    /// Reduce inside each node before reducing across nodes (`f32` only). Omitted from
    /// serialised arguments when off.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hierarchical_allreduce: bool,
}

impl Default for TrainingArgs {
    fn default() -> Self {
        TrainingArgs {
            output_dir: PathBuf::from("runs/train"),
            num_train_epochs: 3,
            max_steps: None,
            per_device_train_batch_size: 16,
            per_device_eval_batch_size: 64,
            gradient_accumulation_steps: 1,
            learning_rate: 2e-5,
            attention_learning_rate: None,
            head_learning_rate: None,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: Some(1.0),
            attention_max_grad_norm: None,
            head_max_grad_norm: None,
            lr_scheduler_type: LrSchedule::Linear,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            logging_steps: 10,
            eval_steps: None,
            save_steps: 500,
            save_total_limit: Some(3),
            seed: 42,
            early_stopping_patience: None,
            metric_for_best_model: "eval_loss".into(),
            greater_is_better: None,
            max_length: 128,
            mega_batch_factor: 50,
            attention: None,
            attention_overrides: Vec::new(),
            grad_mode: GradMode::Exact,
            sample_schedule: SampleSchedule::default(),
            consistency_weight: 0.0,
            problem: Problem::Auto,
            precision: Precision::F32,
            gradient_reduction: GradientReduction::F32,
            hierarchical_allreduce: false,
        }
    }
}

impl TrainingArgs {
    /// Reads a TOML (`.toml`) or JSON file; unknown fields are errors naming the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        parsed.map_err(|e| Error::Args(format!("{}: {e}", path.display())))
    }

    /// Sets one field from `key=value`; the value is TOML (`0.1`, `true`, `"linear"`,
    /// `[1, 2]`), and a bare word is taken as a string. Nested fields use dots
    /// (`sample_schedule.exact_steps=100`).
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| Error::Args(format!("--set {assignment:?}: expected KEY=VALUE")))?;
        let key = key.trim();
        let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
            Ok(mut t) => t.remove("v").expect("parsed key"),
            Err(_) => toml::Value::String(value.trim().to_string()),
        };
        let mut table = toml::Table::try_from(&*self)
            .map_err(|e| Error::Args(format!("cannot represent the arguments: {e}")))?;
        let parts: Vec<&str> = key.split('.').collect();
        let (last, path) = parts.split_last().expect("split yields one part");
        let mut node = &mut table;
        for p in path {
            node = node
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .ok_or_else(|| Error::Args(format!("--set {key}: {p} is not a table")))?;
        }
        node.insert(last.to_string(), value);
        *self = table
            .try_into()
            .map_err(|e| Error::Args(format!("--set {assignment:?}: {e}")))?;
        Ok(())
    }

    /// Checks ranges and consistency; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Args(m));
        if self.hierarchical_allreduce && !self.gradient_reduction.is_default() {
            return bad(format!(
                "hierarchical_allreduce works with gradient_reduction f32, not {}",
                self.gradient_reduction
            ));
        }
        if self.per_device_train_batch_size == 0 {
            return bad("per_device_train_batch_size must be ≥ 1".into());
        }
        if self.per_device_eval_batch_size == 0 {
            return bad("per_device_eval_batch_size must be ≥ 1".into());
        }
        if self.gradient_accumulation_steps == 0 {
            return bad("gradient_accumulation_steps must be ≥ 1".into());
        }
        for (name, v) in [
            ("learning_rate", Some(self.learning_rate)),
            ("attention_learning_rate", self.attention_learning_rate),
            ("head_learning_rate", self.head_learning_rate),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return bad(format!("{name} = {v} must be a finite number ≥ 0"));
            }
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            return bad("adam_beta1 and adam_beta2 must be in [0, 1)".into());
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "warmup_ratio = {} must be in [0, 1]",
                self.warmup_ratio
            ));
        }
        if self.logging_steps == 0 || self.save_steps == 0 || self.eval_steps == Some(0) {
            return bad("logging_steps, save_steps and eval_steps must be ≥ 1".into());
        }
        if self.max_steps == Some(0) || (self.max_steps.is_none() && self.num_train_epochs == 0) {
            return bad("nothing to train: max_steps = 0 or num_train_epochs = 0".into());
        }
        if self.max_length < 3 {
            return bad("max_length must be ≥ 3".into());
        }
        if !(self.consistency_weight >= 0.0 && self.consistency_weight.is_finite()) {
            return bad("consistency_weight must be ≥ 0".into());
        }
        if let Some(spec) = &self.attention {
            spec.parse::<qattn_model::EstimatorSpec>()
                .map_err(|e| Error::Args(format!("attention: {e}")))?;
        }
        Ok(())
    }

    /// AdamW's shared settings.
    pub fn adam(&self) -> AdamConfig {
        AdamConfig {
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_epsilon,
        }
    }

    /// Per-group settings.
    pub fn groups(&self) -> BTreeMap<Group, GroupConfig> {
        let mk = |lr: Option<f64>, clip: Option<f64>| GroupConfig {
            lr: lr.unwrap_or(self.learning_rate),
            max_grad_norm: clip.or(self.max_grad_norm),
            weight_decay: self.weight_decay,
        };
        BTreeMap::from([
            (Group::Backbone, mk(None, None)),
            (
                Group::Attention,
                mk(self.attention_learning_rate, self.attention_max_grad_norm),
            ),
            (
                Group::Head,
                mk(self.head_learning_rate, self.head_max_grad_norm),
            ),
        ])
    }

    /// Warmup steps for `total` steps.
    pub fn warmup(&self, total: u64) -> u64 {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * total as f64).ceil() as u64
        }
    }

    /// Whether larger values of the best-model metric are better.
    pub fn greater_is_better(&self) -> bool {
        self.greater_is_better
            .unwrap_or(!self.metric_for_best_model.ends_with("loss"))
    }
}

/// A dynamic loss scaler for f16 training (PyTorch's `GradScaler` rule): multiply the loss by
/// `scale`, unscale the gradients; on overflow skip the step and halve the scale, after
/// `growth_interval` clean steps double it. Kept in the trainer state, so a resumed run
/// continues with the same scale.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// Current scale (a power of two, so scaling and unscaling are exact).
    pub scale: f64,
    /// Clean steps since the last change.
    pub clean_steps: u64,
    /// Clean steps before the scale doubles.
    pub growth_interval: u64,
    /// Steps skipped because their gradients overflowed.
    #[serde(default)]
    pub skipped: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: 65536.0,
            clean_steps: 0,
            growth_interval: 2000,
            skipped: 0,
        }
    }
}

impl LossScaler {
    /// Updates after a step whose gradients were finite (`true`) or not; returns whether the
    /// optimiser step should be applied.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale = (self.scale / 2.0).max(1.0);
            self.clean_steps = 0;
            self.skipped += 1;
            return false;
        }
        self.clean_steps += 1;
        if self.clean_steps >= self.growth_interval {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_reaches_every_kind_of_field() {
        let mut a = TrainingArgs::default();
        a.set("learning_rate=3e-4").unwrap();
        a.set("max_steps=100").unwrap();
        a.set("lr_scheduler_type=cosine").unwrap();
        a.set("grad_mode=sampled").unwrap();
        a.set("sample_schedule.exact_steps=7").unwrap();
        a.set("attention=\"stratified:8\"").unwrap();
        a.set("attention_overrides=[\"0=exact\"]").unwrap();
        a.set("output_dir=/tmp/x").unwrap();
        assert_eq!(a.learning_rate, 3e-4);
        assert_eq!(a.max_steps, Some(100));
        assert_eq!(a.lr_scheduler_type, LrSchedule::Cosine);
        assert_eq!(a.grad_mode, GradMode::Sampled);
        assert_eq!(a.sample_schedule.exact_steps, 7);
        assert_eq!(a.attention.as_deref(), Some("stratified:8"));
        assert_eq!(a.attention_overrides, vec!["0=exact".to_string()]);
        assert_eq!(a.output_dir, PathBuf::from("/tmp/x"));
        let e = a.set("learnin_rate=1").unwrap_err().to_string();
        assert!(e.contains("learnin_rate"), "{e}");
        assert!(a.set("max_steps=-3").is_err());
    }

    #[test]
    fn toml_file_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("args.toml");
        std::fs::write(
            &p,
            "learning_rate = 1e-3\nper_device_train_batch_size = 4\n[sample_schedule]\nexact_steps = 3\n",
        )
        .unwrap();
        let a = TrainingArgs::from_file(&p).unwrap();
        assert_eq!(a.per_device_train_batch_size, 4);
        assert_eq!(a.sample_schedule.exact_steps, 3);
        a.validate().unwrap();
        std::fs::write(&p, "lerning_rate = 1\n").unwrap();
        assert!(
            TrainingArgs::from_file(&p)
                .unwrap_err()
                .to_string()
                .contains("lerning_rate")
        );
        let bad = TrainingArgs {
            gradient_accumulation_steps: 0,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("gradient_accumulation")
        );
        for precision in [Precision::Bf16, Precision::F16] {
            let mixed = TrainingArgs {
                precision,
                ..Default::default()
            };
            mixed.validate().unwrap();
        }
        assert_eq!(Precision::F32.autocast_dtype(), None);
        assert_eq!(
            Precision::Bf16.autocast_dtype(),
            Some(candle_core::DType::BF16)
        );
    }

    #[test]
    fn groups_inherit_the_base_settings() {
        let mut a = TrainingArgs {
            head_learning_rate: Some(1e-3),
            attention_max_grad_norm: Some(0.5),
            ..Default::default()
        };
        let g = a.groups();
        assert_eq!(g[&Group::Backbone].lr, 2e-5);
        assert_eq!(g[&Group::Head].lr, 1e-3);
        assert_eq!(g[&Group::Attention].max_grad_norm, Some(0.5));
        assert_eq!(g[&Group::Head].max_grad_norm, Some(1.0));
        assert_eq!(a.warmup(100), 0);
        a.warmup_ratio = 0.1;
        assert_eq!(a.warmup(95), 10);
        assert!(!a.greater_is_better());
        a.metric_for_best_model = "eval_accuracy".into();
        assert!(a.greater_is_better());
    }

    #[test]
    fn loss_scaler_backs_off_and_grows() {
        let mut s = LossScaler {
            growth_interval: 2,
            ..Default::default()
        };
        assert!(!s.update(false));
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(true));
        assert!(s.update(true));
        assert_eq!(s.scale, 65536.0);
        assert_eq!(s.skipped, 1);
    }
}
