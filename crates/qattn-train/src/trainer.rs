//! The training loop.
//!
//! One optimiser step: for each of `gradient_accumulation_steps` micro-batches, a forward
//! pass in [`Mode::train`] (dropout masks and attention draws keyed by the micro-batch
//! counter), the task loss divided by the number of micro-batches (so k micro-batches of b
//! give the gradient of one batch of k·b), backward, and f32 accumulation of the gradients;
//! then gradient averaging through the [`Collective`], per-group clipping, the AdamW update
//! with the scheduled learning rate, and logging / evaluation / checkpointing on their
//! intervals.
//!
//! **Measurement-consistency regularisation** (`consistency_weight` λ > 0): when an
//! attention estimator samples, the batch is run a second time with independent
//! measurement outcomes (same data, same dropout masks, another Philox key) and
//! λ·D(out₁, out₂) is added to the loss, with D the symmetric KL divergence between the two
//! predicted distributions (classification, multiple choice) or the squared difference
//! (regression). It penalises predictions that depend on which keys were measured, pushing
//! the model towards attention patterns the sampler estimates well. With exact attention the
//! two passes are identical and the term is zero (the second pass is skipped).
//!
//! **Determinism.** Data order is a Philox permutation of (seed, epoch); dropout masks and
//! attention draws are keyed by (seed, micro-batch counter, sequence within the batch); new
//! weights by the seed. A run is a pure function of its arguments and data, and resuming from
//! a checkpoint continues it bit-identically.
//!
//! **Data parallelism.** With a [`Collective`] of W processes, every step's batch is the
//! *global* batch of W·`per_device_train_batch_size` examples that one process with that batch
//! size would take; rank r computes the r-th contiguous shard of it (keyed by its offset in
//! the global batch, so dropout and measurement draws are the ones the whole batch would
//! draw), weights its loss by its share of the batch, and the gradients and losses are
//! averaged in buckets. W processes with batch B therefore follow the trajectory of one
//! process with batch W·B, up to floating-point summation order; the run fingerprint uses the
//! global batch, so a checkpoint resumes on any number of processes with the same global
//! batch. Rank 0 reads checkpoints and sends weights, optimizer moments and trainer state to
//! the others (so they need no shared file system), evaluates, and alone writes checkpoints,
//! metrics and tracking; the metrics of each evaluation are sent to every rank so early
//! stopping ends all of them at the same step.

use crate::args::{LossScaler, Precision, TrainingArgs};
use crate::checkpoint::CheckpointManager;
use crate::collective::{
    BUCKET_ELEMS, Collective, SingleProcess, average_gradients, broadcast_f32, shard,
};
use crate::data::{Dataset, Labels, epoch_batches};
use crate::error::{Error, Result};
use crate::optim::{AdamW, Group};
use crate::reduce::{CommStats, Reducer};
use crate::tracking::{JsonlLog, Progress, RunStatus, Tracker};
use candle_core::{D, DType, Tensor};
use qattn_model::heads::{cross_entropy, mse};
use qattn_model::{AttentionConfig, Inputs, Mode, Model};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// Where a run stands; saved in every checkpoint's `trainer_state.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps done.
    pub step: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Next batch within the epoch's order.
    pub batch_in_epoch: usize,
    /// Sum and count of micro-batch losses since the last log line.
    pub running_loss: f64,
    /// Micro-batches in `running_loss`.
    pub running_count: u64,
    /// Examples seen.
    pub samples_seen: u64,
    /// Best value of the best-model metric so far.
    pub best_metric: Option<f64>,
    /// Step of the best model.
    pub best_step: Option<u64>,
    /// Evaluations since the best one.
    pub evals_without_improvement: u64,
    /// The attention configuration the run trains towards (before the sample schedule).
    pub attention: AttentionConfig,
    /// The label space.
    pub labels: Option<Labels>,
    /// [`run_fingerprint`] of the run that wrote this state; a resume with different
    /// trajectory-affecting arguments or data is refused. Absent in older checkpoints.
    #[serde(default)]
    pub run_fingerprint: Option<String>,
    /// The dynamic loss scaler of f16 training (absent otherwise, and in older checkpoints).
    #[serde(default)]
    pub loss_scaler: Option<LossScaler>,
}

/// A hash of everything that decides a run's trajectory: the training arguments except the
/// ones that only affect logging, saving and evaluation cadence and the run's length
/// (`max_steps`, `num_train_epochs`: continuing a finished run to a later step is allowed),
/// plus the training set's size and label space. Resuming a checkpoint written under a different fingerprint would silently
/// mix two runs, so [`Trainer::train`] refuses it.
pub fn run_fingerprint(args: &TrainingArgs, train: &Dataset) -> String {
    use sha2::{Digest, Sha256};
    let mut v = serde_json::to_value(args).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = v.as_object_mut() {
        for k in [
            "output_dir",
            "max_steps",
            "num_train_epochs",
            "logging_steps",
            "eval_steps",
            "save_steps",
            "save_total_limit",
            "per_device_eval_batch_size",
            "early_stopping_patience",
            "metric_for_best_model",
            "greater_is_better",
        ] {
            obj.remove(k);
        }
    }
    let text = serde_json::json!({
        "args": v,
        "train_examples": train.len(),
        "labels": train.labels,
    })
    .to_string();
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Optimiser steps at the end.
    pub steps: u64,
    /// Steps done by this process (after a resume, fewer than `steps`).
    pub steps_this_run: u64,
    /// The step resumed from, if any.
    pub resumed_from: Option<u64>,
    /// Mean training loss of the last logging window.
    pub last_loss: Option<f64>,
    /// The last evaluation's metrics.
    pub eval: BTreeMap<String, f64>,
    /// Best metric value and its step.
    pub best_metric: Option<f64>,
    /// Step of the best checkpoint.
    pub best_step: Option<u64>,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Wall-clock seconds of this process's training.
    pub seconds: f64,
    /// Training examples per second (this process).
    pub samples_per_second: f64,
    /// Checkpoints skipped at resume because they did not verify.
    pub skipped_checkpoints: Vec<String>,
    /// The commit the training code was built from (`None`: unknown); see
    /// [`crate::provenance`].
    #[serde(default)]
    pub git_commit: Option<String>,
    /// Whether that build had uncommitted changes (`None`: unknown).
    #[serde(default)]
    pub git_dirty: Option<bool>,
}

/// Trains one model on one dataset.
pub struct Trainer {
    args: TrainingArgs,
    model: Model,
    train: Dataset,
    eval: Option<Dataset>,
    collective: Box<dyn Collective>,
    trackers: Vec<Box<dyn Tracker>>,
    plain_progress: bool,
    quiet: bool,
}

impl Trainer {
    /// A trainer for `model` (loaded trainable, with the head of `train.labels`).
    pub fn new(
        args: TrainingArgs,
        model: Model,
        train: Dataset,
        eval: Option<Dataset>,
    ) -> Result<Self> {
        args.validate()?;
        if model.params().vars().is_empty() {
            return Err(Error::Args(
                "the model is not trainable: load it with LoadOptions { trainable: true, .. }"
                    .into(),
            ));
        }
        if model.head() != Some(train.labels.head()) {
            return Err(Error::Args(format!(
                "the model's head {:?} does not match the data ({:?})",
                model.head(),
                train.labels.head()
            )));
        }
        if train.is_empty() {
            return Err(Error::Args("the training set is empty".into()));
        }
        let mut model = model;
        model.set_autocast(args.precision.autocast_dtype())?;
        Ok(Trainer {
            args,
            model,
            train,
            eval,
            collective: Box::new(SingleProcess),
            trackers: Vec::new(),
            plain_progress: false,
            quiet: false,
        })
    }

    /// Adds a metrics sink (the JSONL log, MLflow).
    pub fn add_tracker(&mut self, t: Box<dyn Tracker>) {
        self.trackers.push(t);
    }

    /// Uses `c` for gradient averaging.
    pub fn set_collective(&mut self, c: Box<dyn Collective>) {
        self.collective = c;
    }

    /// Plain progress lines instead of a bar; `quiet` prints nothing.
    pub fn set_output(&mut self, plain: bool, quiet: bool) {
        self.plain_progress = plain;
        self.quiet = quiet;
    }

    /// The model (trained in place).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Optimiser steps per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        let batches = self.train.len().div_ceil(self.global_batch_size()) as u64;
        batches.div_ceil(self.args.gradient_accumulation_steps as u64)
    }

    /// Total optimiser steps of the run.
    pub fn total_steps(&self) -> u64 {
        self.args
            .max_steps
            .unwrap_or(self.steps_per_epoch() * self.args.num_train_epochs)
    }

    /// Examples per micro-batch across all processes.
    fn global_batch_size(&self) -> usize {
        self.args.per_device_train_batch_size * self.collective.world_size()
    }

    /// Sequences per example (the choices of a multiple-choice example are one sequence each).
    fn rows_per_example(&self) -> usize {
        match &self.train.labels {
            Labels::Choice { num_choices } => *num_choices,
            _ => 1,
        }
    }

    fn lengths(&self) -> Vec<usize> {
        self.train.examples.iter().map(|e| e.len()).collect()
    }

    /// The trainable variables in name order (the optimiser's parameter order).
    fn param_list(&self) -> Vec<(String, candle_core::Var)> {
        self.model
            .params()
            .vars()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The loss of one micro-batch (already divided by `scale`), with the consistency term.
    fn micro_loss(
        &mut self,
        idx: &[usize],
        mode: Mode,
        attention: &AttentionConfig,
        scale: f64,
    ) -> Result<(Tensor, f64)> {
        let pad = self.pad_id();
        let (batch, targets) = self.train.collate(idx, pad, self.model.device())?;
        let inputs: Inputs = (&batch).into();
        let out = head_output(&self.model, &inputs, &self.train.labels, idx.len(), mode)?;
        let task = task_loss(&out, &targets, &self.train.labels)?;
        let task_value = f64::from(task.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        let mut loss = task;
        if self.args.consistency_weight > 0.0 && !attention.is_exact() {
            let mut other = attention.clone();
            other.seed ^= 0x9e37_79b9_7f4a_7c15;
            self.model.set_attention(other)?;
            let out2 = head_output(&self.model, &inputs, &self.train.labels, idx.len(), mode);
            self.model.set_attention(attention.clone())?;
            let reg = consistency(&out, &out2?, &self.train.labels)?;
            loss = (loss + (reg * self.args.consistency_weight)?)?;
        }
        Ok(((loss / scale)?, task_value))
    }

    fn pad_id(&self) -> u32 {
        self.model.tokenizer().map(|t| t.pad_id()).unwrap_or(0)
    }

    /// Evaluates on the evaluation set: `eval_loss` and `eval_accuracy` (classes, choices)
    /// or `eval_mse` and `eval_pearson` (regression). Deterministic ([`Mode::EVAL`]).
    pub fn evaluate(&self) -> Result<BTreeMap<String, f64>> {
        let ds = match &self.eval {
            Some(d) => d,
            None => return Ok(BTreeMap::new()),
        };
        evaluate(
            &self.model,
            ds,
            self.args.per_device_eval_batch_size,
            self.pad_id(),
        )
    }

    /// Accumulates the gradients of one optimiser step (all its micro-batches), advancing the
    /// data position in `state`. Returns this process's gradients and, per micro-batch, its
    /// weighted task loss: averaged over the processes (as the gradients are), the weighted
    /// losses give the mean loss over the whole global batch.
    fn step_gradients(
        &mut self,
        params: &[(String, candle_core::Var)],
        state: &mut TrainerState,
        order: &mut Vec<Vec<usize>>,
        lengths: &[usize],
        attention: &AttentionConfig,
    ) -> Result<(Vec<Vec<f32>>, Vec<f64>)> {
        let accum = self.args.gradient_accumulation_steps;
        let global_bs = self.global_batch_size();
        let (world, rank) = (self.collective.world_size(), self.collective.rank());
        let rows = self.rows_per_example();
        let step = state.step;
        // f16: the loss is multiplied by the scaler's power of two and the gradients divided by
        // it, both exactly.
        let loss_scale = state.loss_scaler.map_or(1.0, |s| s.scale);
        let unscale = (1.0 / loss_scale) as f32;
        // Filled by the first micro-batch that has a gradient for the parameter (moved in, not
        // added to zeros); parameters no micro-batch reached get zeros at the end.
        let mut grads: Vec<Vec<f32>> = vec![Vec::new(); params.len()];
        let mut losses = Vec::with_capacity(accum);
        for micro in 0..accum {
            if state.batch_in_epoch >= order.len() {
                state.epoch += 1;
                state.batch_in_epoch = 0;
                *order = epoch_batches(
                    lengths,
                    global_bs,
                    self.args.seed,
                    state.epoch,
                    self.args.mega_batch_factor,
                );
            }
            let global = &order[state.batch_in_epoch];
            let part = shard(global.len(), world, rank);
            let idx = global[part.clone()].to_vec();
            // This shard's weight: the mean over processes of weight × (mean loss of the
            // shard) is the mean loss of the global batch; 1 when the shards are equal.
            let weight = (idx.len() * world) as f64 / global.len() as f64;
            state.batch_in_epoch += 1;
            state.samples_seen += global.len() as u64;
            if idx.is_empty() {
                // More processes than examples in this (last) batch: contribute nothing.
                losses.push(0.0);
                continue;
            }
            let mode =
                Mode::train(step * accum as u64 + micro as u64).at_row((part.start * rows) as u64);
            let (loss, task_value) =
                self.micro_loss(&idx, mode, attention, accum as f64 / weight / loss_scale)?;
            if !task_value.is_finite() {
                return Err(Error::Training(format!(
                    "loss is {task_value} at step {step}; lower the learning rate"
                )));
            }
            let g = loss.backward()?;
            for ((_, var), acc) in params.iter().zip(grads.iter_mut()) {
                if let Some(gt) = g.get(var.as_tensor()) {
                    let mut v = gt.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    if loss_scale != 1.0 {
                        v.iter_mut().for_each(|x| *x *= unscale);
                    }
                    if acc.is_empty() {
                        *acc = v;
                    } else {
                        acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
                    }
                }
            }
            losses.push(task_value * weight);
        }
        for ((_, var), acc) in params.iter().zip(grads.iter_mut()) {
            if acc.is_empty() {
                *acc = vec![0.0f32; var.elem_count()];
            }
        }
        Ok((grads, losses))
    }

    /// Averages `grads` across the processes with `reducer` and the per-micro-batch `losses`
    /// with a small f32 all-reduce; returns the averaged losses and what the gradient
    /// reduction cost.
    fn reduce_step(
        &self,
        reducer: &mut Reducer,
        grads: &mut [Vec<f32>],
        losses: Vec<f64>,
    ) -> Result<(Vec<f64>, CommStats)> {
        if self.collective.world_size() == 1 {
            return Ok((losses, CommStats::default()));
        }
        let stats = reducer.reduce(self.collective.as_ref(), grads)?;
        let mut l = vec![losses.iter().map(|&l| l as f32).collect::<Vec<f32>>()];
        average_gradients(self.collective.as_ref(), &mut l, BUCKET_ELEMS)?;
        Ok((l.remove(0).into_iter().map(f64::from).collect(), stats))
    }

    /// Rank 0's weights, optimizer moments and trainer state on every rank: the same start
    /// for all, whether fresh or resumed (only rank 0 reads checkpoints).
    /// Gives `reducer` the residual this rank continues with: rank 0 read `saved` (every
    /// rank's residual of the checkpoint) and sends them to the others.
    fn restore_residual(&self, reducer: &mut Reducer, saved: &[Vec<f32>]) -> Result<()> {
        let c = self.collective.as_ref();
        if !reducer.has_feedback() {
            return Ok(());
        }
        if c.world_size() == 1 {
            if !saved.is_empty() {
                self.note(
                    "the checkpoint's top-k residuals are dropped: one process sends its \
                     gradients uncompressed",
                );
            }
            return Ok(());
        }
        // How many residuals of how many values, then the values.
        let header = if c.is_main() {
            let n = saved.first().map_or(0, Vec::len) as u64;
            [saved.len() as u64, n]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect()
        } else {
            Vec::new()
        };
        let header = c.broadcast(header)?;
        if header.len() != 16 {
            return Err(Error::Distributed(format!(
                "rank 0 sent a {}-byte residual header, expected 16",
                header.len()
            )));
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[8 * i..8 * i + 8]);
            u64::from_le_bytes(b) as usize
        };
        let (count, len) = (word(0), word(1));
        if count == 0 {
            return Ok(());
        }
        let flat = broadcast_f32(
            c,
            &if c.is_main() {
                saved.concat()
            } else {
                Vec::new()
            },
        )?;
        if flat.len() != count * len {
            return Err(Error::Distributed(format!(
                "rank 0 sent {} residual values, expected {count} × {len}",
                flat.len()
            )));
        }
        let all: Vec<Vec<f32>> = flat.chunks(len.max(1)).map(<[f32]>::to_vec).collect();
        if let Some(mine) = crate::reduce::residual_for_rank(&all, c.world_size(), c.rank()) {
            reducer.set_residual(mine);
        }
        if c.is_main() && count != c.world_size() {
            self.note(&format!(
                "the checkpoint holds top-k residuals of {count} ranks; each of the {} ranks \
                 continues with their mean",
                c.world_size()
            ));
        }
        Ok(())
    }

    fn sync_from_main(
        &mut self,
        params: &[(String, candle_core::Var)],
        opt: &mut AdamW,
        state: &mut TrainerState,
        summary: &mut TrainSummary,
        fingerprint: &str,
    ) -> Result<()> {
        let c = self.collective.as_ref();
        let main = c.is_main();
        let mut flat = Vec::new();
        if main {
            for (_, var) in params {
                flat.extend(
                    var.as_tensor()
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                );
            }
        }
        let flat = broadcast_f32(c, &flat)?;
        let total: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
        if flat.len() != total {
            return Err(Error::Distributed(format!(
                "rank 0 sent {} weights, this model has {total}: were the ranks started with \
                 different models?",
                flat.len()
            )));
        }
        let moments = broadcast_f32(c, &if main { opt.moments() } else { Vec::new() })?;
        let bytes = if main {
            serde_json::to_vec(&(&*state, summary.resumed_from))
                .map_err(|e| Error::Training(format!("trainer state: {e}")))?
        } else {
            Vec::new()
        };
        let bytes = c.broadcast(bytes)?;
        if main {
            return Ok(());
        }
        let mut at = 0;
        for (_, var) in params {
            let n = var.elem_count();
            let t = Tensor::from_slice(&flat[at..at + n], var.shape(), var.device())?
                .to_dtype(var.dtype())?;
            var.set(&t)?;
            at += n;
        }
        let (theirs, resumed_from): (TrainerState, Option<u64>) = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Distributed(format!("trainer state from rank 0: {e}")))?;
        if theirs.run_fingerprint.as_deref() != Some(fingerprint) {
            return Err(Error::Distributed(format!(
                "rank {} was started with different training arguments or data than rank 0 \
                 (run fingerprint {fingerprint}, rank 0 {:?})",
                c.rank(),
                theirs.run_fingerprint
            )));
        }
        opt.set_moments(&moments, theirs.step)?;
        *state = theirs;
        summary.resumed_from = resumed_from;
        Ok(())
    }

    /// [`Trainer::evaluate`] on rank 0, its metrics sent to every rank.
    fn evaluate_everywhere(&self) -> Result<BTreeMap<String, f64>> {
        let c = self.collective.as_ref();
        if c.world_size() == 1 {
            return self.evaluate();
        }
        let bytes = if c.is_main() {
            serde_json::to_vec(&self.evaluate()?)
                .map_err(|e| Error::Training(format!("evaluation metrics: {e}")))?
        } else {
            Vec::new()
        };
        let bytes = c.broadcast(bytes)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Distributed(format!("evaluation metrics from rank 0: {e}")))
    }

    /// The gradients (by parameter name) and mean task loss of the first optimiser step,
    /// without updating anything: what accumulation and regularisation tests compare.
    pub fn first_step_gradients(&mut self) -> Result<(BTreeMap<String, Vec<f32>>, f64)> {
        let params = self.param_list();
        let lengths = self.lengths();
        let mut order = epoch_batches(
            &lengths,
            self.global_batch_size(),
            self.args.seed,
            0,
            self.args.mega_batch_factor,
        );
        let attention = self.model.attention().clone();
        let mut state = TrainerState::default();
        let (mut grads, losses) =
            self.step_gradients(&params, &mut state, &mut order, &lengths, &attention)?;
        let mut reducer = Reducer::new(
            self.args.gradient_reduction,
            self.args.hierarchical_allreduce,
        );
        let (losses, _) = self.reduce_step(&mut reducer, &mut grads, losses)?;
        let loss = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
        Ok((
            params.into_iter().map(|(n, _)| n).zip(grads).collect(),
            loss,
        ))
    }

    /// Runs training to the end (or early stop). With `resume`, continues from the newest
    /// checkpoint in `output_dir` that verifies (reporting the ones that do not).
    pub fn train(&mut self, resume: bool) -> Result<TrainSummary> {
        self.train_until(resume, None)
    }

    /// [`Trainer::train`], stopping after step `stop_at` as if the process had been
    /// interrupted there (no final checkpoint or evaluation beyond the regular intervals).
    pub fn train_until(&mut self, resume: bool, stop_at: Option<u64>) -> Result<TrainSummary> {
        let out_dir = self.args.output_dir.clone();
        let main = self.collective.is_main();
        if main {
            std::fs::create_dir_all(&out_dir).map_err(|e| Error::io(&out_dir, e))?;
        }
        let ckpts = CheckpointManager::new(&out_dir, self.args.save_total_limit);
        let mut summary = TrainSummary {
            git_commit: crate::provenance::BUILD.commit_string(),
            git_dirty: crate::provenance::BUILD.dirty_flag(),
            ..Default::default()
        };
        let base_attention = self.model.attention().clone();
        let params = self.param_list();
        let vars: BTreeMap<String, candle_core::Var> = params.iter().cloned().collect();
        let mut opt = AdamW::new(&vars, self.args.adam(), self.args.groups())?;
        // The fingerprint sees the global batch, so a checkpoint resumes on any number of
        // processes that keeps it (W processes × B ≡ one process × W·B).
        let mut global_args = self.args.clone();
        global_args.per_device_train_batch_size = self.global_batch_size();
        let fingerprint = run_fingerprint(&global_args, &self.train);
        let mut state = TrainerState {
            attention: base_attention.clone(),
            labels: Some(self.train.labels.clone()),
            run_fingerprint: Some(fingerprint.clone()),
            loss_scaler: (self.args.precision == Precision::F16).then(LossScaler::default),
            ..Default::default()
        };
        // Every rank's top-k residual, read by rank 0 from the checkpoint it resumes.
        let mut saved_residuals: Vec<Vec<f32>> = Vec::new();
        if resume && main {
            let removed = ckpts.clean_temporaries()?;
            for r in removed {
                self.note(&format!("removed an unfinished checkpoint {}", r.display()));
            }
            let (good, skipped) = ckpts.latest_good()?;
            for s in &skipped {
                let msg = format!(
                    "checkpoint {} is damaged ({}); using an older one",
                    s.dir.display(),
                    s.reason
                );
                self.note(&msg);
                summary.skipped_checkpoints.push(msg);
            }
            match good {
                Some(c) => {
                    let restored = Model::load(
                        c.dir.to_str().ok_or_else(|| {
                            Error::Args(format!("non-UTF-8 path {}", c.dir.display()))
                        })?,
                        &qattn_model::LoadOptions {
                            trainable: true,
                            tokenizer: false,
                            ..Default::default()
                        },
                    )?;
                    copy_params(&restored, &self.model)?;
                    let tensors = c.optimizer()?;
                    opt.load_state(&tensors)?;
                    saved_residuals = crate::reduce::residuals_from_state(&tensors)?;
                    state = serde_json::from_value(c.state()?).map_err(|e| Error::Checkpoint {
                        path: c.dir.clone(),
                        message: format!("trainer_state.json: {e}"),
                    })?;
                    if let Some(theirs) = state.run_fingerprint.as_deref()
                        && theirs != fingerprint
                    {
                        return Err(Error::Checkpoint {
                            path: c.dir.clone(),
                            message: format!(
                                "written by a run with different training arguments or data \
                                 (fingerprint {theirs}, this run {fingerprint}); resuming would mix \
                                 two runs: use a fresh output directory or run without resume"
                            ),
                        });
                    }
                    state.run_fingerprint = Some(fingerprint.clone());
                    let skipped = state.loss_scaler.map_or(0, |s| s.skipped);
                    if opt.steps() + skipped != state.step {
                        return Err(Error::Checkpoint {
                            path: c.dir.clone(),
                            message: format!(
                                "optimizer step {} + {skipped} skipped ≠ trainer step {}",
                                opt.steps(),
                                state.step
                            ),
                        });
                    }
                    summary.resumed_from = Some(state.step);
                    self.note(&format!(
                        "resumed from {} (step {})",
                        c.dir.display(),
                        c.step
                    ));
                }
                None => self.note("no checkpoint to resume from; starting from the beginning"),
            }
        }
        if self.collective.world_size() > 1 {
            self.sync_from_main(&params, &mut opt, &mut state, &mut summary, &fingerprint)?;
        }
        let base_attention = state.attention.clone();
        if main {
            // The JSONL log always exists; on resume it is cut back to the checkpoint's step so
            // it reads like an uninterrupted run.
            let log = JsonlLog::open(&out_dir.join("metrics.jsonl"), summary.resumed_from)?;
            self.trackers.insert(0, Box::new(log));
            let params = self.params_for_tracking(&base_attention);
            for t in &mut self.trackers {
                t.log_params(&params)?;
            }
        }
        let total = self.total_steps();
        let warmup = self.args.warmup(total);
        let bs = self.global_batch_size();
        let eval_every = self.args.eval_steps.unwrap_or(self.args.save_steps);
        let lengths = self.lengths();
        let mut order = epoch_batches(
            &lengths,
            bs,
            self.args.seed,
            state.epoch,
            self.args.mega_batch_factor,
        );
        let progress = (!self.quiet).then(|| Progress::new(total, state.step, self.plain_progress));
        let start = Instant::now();
        let start_samples = state.samples_seen;
        let start_step = state.step;
        let mut last_log = (Instant::now(), state.samples_seen);
        // Seconds and payload bytes of gradient reduction since the last log line.
        let mut comm_window = (0.0f64, 0u64);
        // The top-k residual continues from the checkpoint (module docs of `reduce`).
        let mut reducer = Reducer::new(
            self.args.gradient_reduction,
            self.args.hierarchical_allreduce,
        );
        self.restore_residual(&mut reducer, &saved_residuals)?;
        let mut stopped_early = false;
        while state.step < total && stop_at.is_none_or(|s| state.step < s) {
            let step = state.step;
            let mut attention = base_attention.clone();
            let sched = self.args.sample_schedule;
            attention.default = sched.apply(&attention.default, step);
            for spec in attention.layers.values_mut() {
                *spec = sched.apply(spec, step);
            }
            for o in attention.heads.iter_mut() {
                o.estimator = sched.apply(&o.estimator, step);
            }
            self.model.set_attention(attention.clone())?;
            let (mut grads, losses) =
                self.step_gradients(&params, &mut state, &mut order, &lengths, &attention)?;
            let (losses, comm) = self.reduce_step(&mut reducer, &mut grads, losses)?;
            for l in losses {
                state.running_loss += l;
                state.running_count += 1;
            }
            comm_window.0 += comm.seconds;
            comm_window.1 += comm.bytes;
            let factor = self.args.lr_scheduler_type.factor(step, warmup, total);
            // f16: a step whose gradients overflowed is skipped (the scale halves); the
            // optimiser's step count then trails the trainer's by the skipped steps.
            let apply = match state.loss_scaler.as_mut() {
                Some(s) => {
                    let finite = grads.iter().all(|g| g.iter().all(|x| x.is_finite()));
                    let apply = s.update(finite);
                    if !apply {
                        let scale = s.scale;
                        self.note(&format!(
                            "step {}: f16 gradients overflowed; step skipped, loss scale now {scale}",
                            step + 1
                        ));
                    }
                    apply
                }
                None => true,
            };
            let report = if apply {
                opt.step(&mut grads, factor)?
            } else {
                Default::default()
            };
            state.step += 1;
            let now_step = state.step;
            let loss_now = state.running_loss / state.running_count.max(1) as f64;
            let lr = report.lrs.get(&Group::Backbone).copied().unwrap_or(0.0);
            let elapsed = last_log.0.elapsed().as_secs_f64().max(1e-9);
            let sps = (state.samples_seen - last_log.1) as f64 / elapsed;
            if let Some(p) = &progress {
                p.update(now_step, loss_now, lr, sps);
            }
            if now_step.is_multiple_of(self.args.logging_steps) || now_step == total {
                let mut m = BTreeMap::new();
                m.insert("loss".to_string(), loss_now);
                m.insert("lr".to_string(), lr);
                for (g, v) in &report.lrs {
                    m.insert(format!("lr_{}", g.name()), *v);
                }
                for (g, v) in &report.grad_norms {
                    m.insert(format!("grad_norm_{}", g.name()), *v);
                }
                m.insert(
                    "epoch".to_string(),
                    now_step as f64 / self.steps_per_epoch().max(1) as f64,
                );
                m.insert("samples_per_second".to_string(), sps);
                if self.collective.world_size() > 1 {
                    let steps_in_window = (state.running_count as f64
                        / self.args.gradient_accumulation_steps as f64)
                        .max(1.0);
                    m.insert("comm_seconds".to_string(), comm_window.0 / steps_in_window);
                    m.insert(
                        "comm_bytes".to_string(),
                        comm_window.1 as f64 / steps_in_window,
                    );
                    m.insert("comm_share".to_string(), comm_window.0 / elapsed);
                    comm_window = (0.0, 0);
                }
                m.insert(
                    "mc_samples".to_string(),
                    attention.default.estimator.nominal_samples() as f64,
                );
                if let Some(s) = &state.loss_scaler {
                    m.insert("loss_scale".to_string(), s.scale);
                    m.insert("skipped_steps".to_string(), s.skipped as f64);
                }
                self.log(now_step, &m)?;
                summary.last_loss = Some(loss_now);
                state.running_loss = 0.0;
                state.running_count = 0;
                last_log = (Instant::now(), state.samples_seen);
            }
            let do_eval =
                self.eval.is_some() && (now_step.is_multiple_of(eval_every) || now_step == total);
            let do_save = now_step.is_multiple_of(self.args.save_steps) || now_step == total;
            // Evaluate and save with the target estimator, not the annealed one.
            self.model.set_attention(base_attention.clone())?;
            if do_eval {
                let metrics = self.evaluate_everywhere()?;
                self.log(now_step, &metrics)?;
                summary.eval = metrics.clone();
                if let Some(&v) = metrics.get(&self.args.metric_for_best_model) {
                    let better = match state.best_metric {
                        None => true,
                        Some(b) if self.args.greater_is_better() => v > b,
                        Some(b) => v < b,
                    };
                    if better {
                        state.best_metric = Some(v);
                        state.best_step = Some(now_step);
                        state.evals_without_improvement = 0;
                    } else {
                        state.evals_without_improvement += 1;
                    }
                } else {
                    return Err(Error::Args(format!(
                        "metric_for_best_model {:?} is not among the evaluation metrics {:?}",
                        self.args.metric_for_best_model,
                        metrics.keys().collect::<Vec<_>>()
                    )));
                }
                if let Some(p) = self.args.early_stopping_patience
                    && state.evals_without_improvement >= p
                {
                    stopped_early = true;
                }
            }
            // Every rank's top-k residual goes into the checkpoint (all ranks take part).
            let residuals = if (do_save || stopped_early)
                && reducer.has_feedback()
                && self.collective.world_size() > 1
            {
                let bytes = reducer
                    .residual()
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect();
                self.collective.all_gather(bytes)?
            } else {
                Vec::new()
            };
            if (do_save || stopped_early) && self.collective.is_main() {
                let value = serde_json::to_value(&state)
                    .map_err(|e| Error::Training(format!("trainer state: {e}")))?;
                let mut tensors = opt.state()?;
                for (rank, bytes) in residuals.iter().enumerate() {
                    let v: Vec<f32> = bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    let n = v.len();
                    tensors.insert(
                        crate::reduce::residual_key(rank),
                        Tensor::from_vec(v, n, &candle_core::Device::Cpu)?,
                    );
                }
                let c = ckpts.save(now_step, &self.model, &tensors, &value, state.best_step)?;
                if let Some(p) = &progress {
                    p.println(&format!("saved {}", c.dir.display()));
                }
            }
            if stopped_early {
                self.note(&format!(
                    "early stopping at step {now_step}: {} did not improve for {} evaluations",
                    self.args.metric_for_best_model, state.evals_without_improvement
                ));
                break;
            }
        }
        self.model.set_attention(base_attention)?;
        let seconds = start.elapsed().as_secs_f64();
        summary.steps = state.step;
        summary.steps_this_run = state.step - start_step;
        summary.best_metric = state.best_metric;
        summary.best_step = state.best_step;
        summary.stopped_early = stopped_early;
        summary.seconds = seconds;
        summary.samples_per_second =
            (state.samples_seen - start_samples) as f64 / seconds.max(1e-9);
        if let Some(p) = &progress {
            p.finish(&format!(
                "trained to step {} in {:.1}s ({:.1} samples/s){}",
                state.step,
                seconds,
                summary.samples_per_second,
                summary
                    .last_loss
                    .map(|l| format!(", last loss {l:.4}"))
                    .unwrap_or_default()
            ));
        }
        for t in &mut self.trackers {
            t.finish(RunStatus::Finished)?;
        }
        Ok(summary)
    }

    /// The run's parameters for trackers: every training argument, the attention
    /// configuration and the model.
    fn params_for_tracking(&self, attention: &AttentionConfig) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&self.args) {
            for (k, v) in map {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(k, v);
            }
        }
        if let Ok(a) = serde_json::to_string(attention) {
            out.insert("attention_config".into(), a);
        }
        out.insert(
            "model_parameters".into(),
            self.model.params().count().to_string(),
        );
        out.insert("train_examples".into(), self.train.len().to_string());
        let build = crate::provenance::BUILD;
        out.insert(
            "git_commit".into(),
            build.commit.unwrap_or("unknown").to_string(),
        );
        out.insert("git_dirty".into(), build.state().to_string());
        out
    }

    fn log(&mut self, step: u64, m: &BTreeMap<String, f64>) -> Result<()> {
        if !self.collective.is_main() {
            return Ok(());
        }
        for t in &mut self.trackers {
            t.log_metrics(step, m)?;
        }
        Ok(())
    }

    fn note(&self, msg: &str) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }
}

/// Copies every parameter of `from` into the variables of `to` (same names and shapes).
fn copy_params(from: &Model, to: &Model) -> Result<()> {
    for (name, var) in to.params().vars() {
        let src = from
            .params()
            .tensors()
            .get(name)
            .ok_or_else(|| Error::Training(format!("checkpoint lacks parameter {name}")))?;
        var.set(src)?;
    }
    Ok(())
}

/// The head output: logits [B, N] (classes), [B, C] (choices) or scores [B] (regression).
fn head_output(
    model: &Model,
    inputs: &Inputs,
    labels: &Labels,
    examples: usize,
    mode: Mode,
) -> Result<Tensor> {
    Ok(match labels {
        Labels::Choice { num_choices } => {
            let l = model.choice_logits(inputs, *num_choices, mode)?;
            debug_assert_eq!(l.dim(0)?, examples);
            l
        }
        _ => model.logits(inputs, mode)?,
    })
}

fn task_loss(out: &Tensor, targets: &Tensor, labels: &Labels) -> Result<Tensor> {
    Ok(match labels {
        Labels::Regression => mse(out, targets)?,
        _ => cross_entropy(out, targets)?,
    })
}

/// D(out₁, out₂): symmetric KL of the softmaxes, or the mean squared difference (regression).
fn consistency(a: &Tensor, b: &Tensor, labels: &Labels) -> Result<Tensor> {
    Ok(match labels {
        Labels::Regression => (a - b)?.sqr()?.mean_all()?,
        _ => {
            let la = candle_nn::ops::log_softmax(a, D::Minus1)?;
            let lb = candle_nn::ops::log_softmax(b, D::Minus1)?;
            let diff = (la.exp()? - lb.exp()?)?;
            ((diff * (la - lb)?)?.sum(D::Minus1)? * 0.5)?.mean_all()?
        }
    })
}

/// Evaluation metrics of `model` on `ds` (see [`Trainer::evaluate`]).
pub fn evaluate(
    model: &Model,
    ds: &Dataset,
    batch_size: usize,
    pad_id: u32,
) -> Result<BTreeMap<String, f64>> {
    let mut loss_sum = 0.0;
    let mut correct = 0usize;
    let (mut preds, mut golds) = (Vec::new(), Vec::new());
    let idx: Vec<usize> = (0..ds.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let (batch, targets) = ds.collate(chunk, pad_id, model.device())?;
        let out = head_output(model, &(&batch).into(), &ds.labels, chunk.len(), Mode::EVAL)?;
        let loss = task_loss(&out, &targets, &ds.labels)?.to_scalar::<f32>()?;
        loss_sum += f64::from(loss) * chunk.len() as f64;
        match ds.labels {
            Labels::Regression => {
                preds.extend(out.to_vec1::<f32>()?.into_iter().map(f64::from));
                golds.extend(targets.to_vec1::<f32>()?.into_iter().map(f64::from));
            }
            _ => {
                let p = out.argmax(D::Minus1)?.to_vec1::<u32>()?;
                let t = targets.to_vec1::<u32>()?;
                correct += p.iter().zip(&t).filter(|(a, b)| a == b).count();
            }
        }
    }
    let n = ds.len().max(1) as f64;
    let mut m = BTreeMap::new();
    m.insert("eval_loss".to_string(), loss_sum / n);
    match ds.labels {
        Labels::Regression => {
            m.insert("eval_mse".to_string(), loss_sum / n);
            m.insert("eval_pearson".to_string(), pearson(&preds, &golds));
        }
        _ => {
            m.insert("eval_accuracy".to_string(), correct as f64 / n);
        }
    }
    Ok(m)
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    if x.len() < 2 {
        return f64::NAN;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// The head's raw output for every example of `ds`, in order: the logits row
/// (classification, multiple choice) or a one-element score (regression). Deterministic
/// ([`Mode::EVAL`]).
pub fn predict(
    model: &Model,
    ds: &Dataset,
    batch_size: usize,
    pad_id: u32,
) -> Result<Vec<Vec<f32>>> {
    let idx: Vec<usize> = (0..ds.len()).collect();
    let mut out = Vec::with_capacity(ds.len());
    for chunk in idx.chunks(batch_size.max(1)) {
        let (batch, _) = ds.collate(chunk, pad_id, model.device())?;
        let y = head_output(model, &(&batch).into(), &ds.labels, chunk.len(), Mode::EVAL)?;
        match ds.labels {
            Labels::Regression => out.extend(y.to_vec1::<f32>()?.into_iter().map(|v| vec![v])),
            _ => out.extend(y.to_dtype(DType::F32)?.to_vec2::<f32>()?),
        }
    }
    Ok(out)
}
