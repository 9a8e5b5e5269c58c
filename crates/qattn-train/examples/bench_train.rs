//! Fine-tuning throughput and peak memory of one qattn configuration, for
//! `cargo xtask bench train` (one process per configuration, so the peak RSS is that
//! configuration's own).
//!
//! ```text
//! cargo run --release -p qattn-train --example bench_train -- \
//!     --model sentence-transformers/all-MiniLM-L6-v2 --cache-dir ../shared/data/hf \
//!     --attention stratified:32 --grad-mode sampled --batch 32 --seq 128 \
//!     --warmup 2 --steps 8 --json out.json
//! ```
//!
//! `--device cpu|cuda[:N]` (default `cpu`) picks where the model trains (the GPU bundle runs it
//! on both and compares the per-step losses); step times are then wall-clock times of steps
//! that end in the trainer's loss read-back, which waits for the device.
//!
//! The model is loaded offline from the cache, trainable, with a new 2-label classification
//! head (and its tokenizer, for the pad id). The training set is built in memory:
//! `(warmup + steps) · batch` examples of exactly `seq` tokens (no padding), with the token ids
//! of `bench_forward` and `benchmarks/baselines/hf_train.py` (example `b` is row `b` of the
//! formula `id[b][j]` = 101 for `j = 0`, 102 for `j = L-1`, else
//! `1000 + (b·7919 + j·104729) mod 28000`) and label `b mod 2`.
//!
//! The steps run through the real trainer, [`qattn_train::Trainer::train`], with
//! `max_steps = warmup + steps` and the hyper-parameters of the PyTorch baseline, set
//! explicitly (they are also qattn-train's defaults): AdamW, learning rate 2e-5, weight decay
//! 0.01 (none on biases and LayerNorm weights), β = (0.9, 0.999), ε = 1e-8, linear schedule
//! without warm-up over the run's steps, gradient clipping at 1.0 (qattn-train clips each
//! parameter group, backbone, attention and head, to that norm), dropout of the model's
//! config (train mode); batch `batch`, one micro-batch per step, no length grouping, logging
//! every step, no evaluation, output in a temporary folder.
//!
//! Step times come from a tracker added to the trainer: the trainer logs after every
//! optimiser step, and the tracker stamps each log with [`Instant::now`]; the time of step `s`
//! is the difference of the stamps of steps `s` and `s - 1` (forward, backward, gradient
//! accumulation, clipping, the AdamW update and the log line), so the first step is never
//! timed and `--warmup` must be at least 1. The trainer writes a checkpoint after the last
//! step's log, so neither its time nor its memory is part of the measurement: the tracker
//! also reads `VmHWM` at every log, and `peak_rss_mb` is its value at the last step's log,
//! the peak of training (`peak_rss_with_checkpoint_mb` is `VmHWM` at the end).
//!
//! The JSON written: `{"attention", "grad_mode", "model", "batch", "seq", "warmup", "steps",
//! "step_times_s": [...], "median_s", "samples_per_s", "losses": [...], "mean_loss",
//! "peak_rss_mb", "peak_rss_with_checkpoint_mb", "threads", "load_s", "train_s", "cpu_s",
//! "hyperparameters": {...}, "device"}`, where `step_times_s` are the timed steps (after the warm-up),
//! `samples_per_s = batch / median_s`, `losses` the training loss of every step, `mean_loss`
//! their mean over the timed steps, RSS in MiB, `threads` candle's (and rayon's) thread count,
//! set with `RAYON_NUM_THREADS`, and `cpu_s` the CPU time of the whole process (checkpoint
//! included).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use qattn_model::{AttentionConfig, Encoding, GradMode, HeadKind, HubOptions, LoadOptions, Model};
use qattn_train::data::Example;
use qattn_train::tracking::{RunStatus, Tracker};
use qattn_train::{Dataset, Labels, LrSchedule, Trainer, TrainingArgs};

#[path = "../../qattn-model/examples/bench_util/mod.rs"]
mod bench_util;
use bench_util::{Flags, cpu_seconds, median, peak_rss_mib, token_ids, write_report};

/// AdamW's learning rate (the baseline's too).
const LR: f64 = 2e-5;
/// Decoupled weight decay, not on biases and LayerNorm weights.
const WEIGHT_DECAY: f64 = 0.01;
/// AdamW's β₁ and β₂.
const BETAS: (f64, f64) = (0.9, 0.999);
/// AdamW's ε.
const EPS: f64 = 1e-8;
/// Gradient clipping norm.
const MAX_GRAD_NORM: f64 = 1.0;

/// One logged step: its number, when it was logged, its training loss and `VmHWM` then.
struct Stamp {
    step: u64,
    at: Instant,
    loss: f64,
    peak_rss_mb: Option<f64>,
}

type Stamps = Rc<RefCell<Vec<Stamp>>>;

/// A tracker that stamps every logged step with the monotonic clock and the peak RSS.
struct StepClock(Stamps);

impl Tracker for StepClock {
    fn log_params(&mut self, _: &BTreeMap<String, String>) -> qattn_train::Result<()> {
        Ok(())
    }

    fn log_metrics(
        &mut self,
        step: u64,
        metrics: &BTreeMap<String, f64>,
    ) -> qattn_train::Result<()> {
        let at = Instant::now();
        if let Some(&loss) = metrics.get("loss") {
            self.0.borrow_mut().push(Stamp {
                step,
                at,
                loss,
                peak_rss_mb: peak_rss_mib(),
            });
        }
        Ok(())
    }

    fn finish(&mut self, _: RunStatus) -> qattn_train::Result<()> {
        Ok(())
    }
}

/// The step times after the first `warmup` steps: differences of consecutive stamps, checking
/// that every step was logged once, in order.
fn step_times(stamps: &[Stamp], warmup: usize) -> Result<Vec<f64>> {
    for (i, s) in stamps.iter().enumerate() {
        if s.step != i as u64 + 1 {
            bail!(
                "the trainer logged step {} where step {} was expected",
                s.step,
                i + 1
            );
        }
    }
    Ok(stamps
        .windows(2)
        .skip(warmup - 1)
        .map(|w| w[1].at.duration_since(w[0].at).as_secs_f64())
        .collect())
}

/// `n` examples of exactly `seq` tokens: example `b` is row `b` of the benchmark formula, with
/// label `b mod 2`.
fn dataset(n: usize, seq: usize) -> Dataset {
    let examples = (0..n)
        .map(|b| Example {
            sequences: vec![Encoding {
                ids: token_ids(b, 1, seq),
                type_ids: vec![0; seq],
                tokens: Vec::new(),
            }],
            target: (b % 2) as f32,
        })
        .collect();
    Dataset {
        examples,
        labels: Labels::Classes {
            names: vec!["0".to_owned(), "1".to_owned()],
        },
    }
}

fn main() -> Result<()> {
    // A training process: keep freed activation buffers for the next step (see the module).
    qattn_train::memory::retain_freed_memory();
    let flags = Flags::parse(&[
        "--model",
        "--cache-dir",
        "--attention",
        "--grad-mode",
        "--batch",
        "--seq",
        "--warmup",
        "--steps",
        "--seed",
        "--json",
        "--device",
    ])?;
    let model_id = flags.string("--model", "sentence-transformers/all-MiniLM-L6-v2");
    let spec = flags.string("--attention", "exact");
    let grad_mode: GradMode = flags.string("--grad-mode", "exact").parse()?;
    let batch = flags.number("--batch", 32)?;
    let seq = flags.number("--seq", 128)?;
    let warmup = flags.number("--warmup", 2)?;
    let steps = flags.number("--steps", 8)?;
    let seed = flags.number("--seed", 42)? as u64;
    if batch == 0 || seq < 3 || steps == 0 || warmup == 0 {
        bail!(
            "need --batch ≥ 1, --seq ≥ 3, --steps ≥ 1 and --warmup ≥ 1 (the first step is never \
             timed)"
        );
    }
    let total = warmup + steps;
    let threads = candle_core::utils::get_num_threads();
    let device = qattn_model::parse_device(&flags.string("--device", "cpu"))?;

    let attention = AttentionConfig::parse(&spec)?
        .with_grad_mode(grad_mode)
        .with_seed(seed);
    let opts = LoadOptions {
        hub: HubOptions {
            cache_dir: flags.path("--cache-dir"),
            offline: true,
            ..HubOptions::default()
        },
        attention: Some(attention),
        head: Some(HeadKind::Classification { num_labels: 2 }),
        labels: Some(vec!["0".to_owned(), "1".to_owned()]),
        tokenizer: true,
        trainable: true,
        init_seed: seed,
        device: device.clone(),
        ..Default::default()
    };
    let started = Instant::now();
    let model =
        Model::load(&model_id, &opts).with_context(|| format!("loading {model_id} (offline)"))?;
    let load_s = started.elapsed().as_secs_f64();

    let out = tempfile::tempdir().context("creating a temporary output folder")?;
    let args = TrainingArgs {
        output_dir: out.path().to_path_buf(),
        max_steps: Some(total as u64),
        per_device_train_batch_size: batch,
        gradient_accumulation_steps: 1,
        learning_rate: LR,
        weight_decay: WEIGHT_DECAY,
        adam_beta1: BETAS.0,
        adam_beta2: BETAS.1,
        adam_epsilon: EPS,
        max_grad_norm: Some(MAX_GRAD_NORM),
        lr_scheduler_type: LrSchedule::Linear,
        warmup_steps: 0,
        warmup_ratio: 0.0,
        logging_steps: 1,
        save_steps: u64::MAX,
        max_length: seq,
        mega_batch_factor: 0,
        attention: Some(spec.clone()),
        grad_mode,
        seed,
        ..TrainingArgs::default()
    };
    let mut trainer = Trainer::new(args, model, dataset(total * batch, seq), None)?;
    trainer.set_output(true, true);
    let stamps: Stamps = Rc::default();
    trainer.add_tracker(Box::new(StepClock(Rc::clone(&stamps))));
    let started = Instant::now();
    let summary = trainer.train(false)?;
    let train_s = started.elapsed().as_secs_f64();
    if summary.steps != total as u64 {
        bail!("the trainer stopped at step {}, not {total}", summary.steps);
    }
    let stamps = stamps.borrow();
    let times = step_times(&stamps, warmup)?;
    let losses: Vec<f64> = stamps.iter().map(|s| s.loss).collect();
    let training_peak = stamps.last().and_then(|s| s.peak_rss_mb);
    let mean_loss = losses[warmup..].iter().sum::<f64>() / steps as f64;
    let median_s = median(&times);
    let samples_per_s = batch as f64 / median_s;
    eprintln!(
        "qattn {spec:>16} ({grad_mode} gradients): median {median_s:.3} s/step, \
         {samples_per_s:.2} samples/s, {threads} threads"
    );
    let report = serde_json::json!({
        "attention": spec,
        "grad_mode": grad_mode.to_string(),
        "model": model_id,
        "batch": batch,
        "seq": seq,
        "warmup": warmup,
        "steps": steps,
        "step_times_s": times,
        "median_s": median_s,
        "samples_per_s": samples_per_s,
        "losses": losses,
        "mean_loss": mean_loss,
        "peak_rss_mb": training_peak,
        "peak_rss_with_checkpoint_mb": peak_rss_mib(),
        "threads": threads,
        "device": qattn_model::device_spec(&device),
        "load_s": load_s,
        "train_s": train_s,
        "cpu_s": cpu_seconds(),
        "hyperparameters": {
            "optimizer": "AdamW",
            "learning_rate": LR,
            "weight_decay": WEIGHT_DECAY,
            "no_weight_decay": "biases, LayerNorm weights",
            "adam_betas": [BETAS.0, BETAS.1],
            "adam_epsilon": EPS,
            "lr_schedule": "linear",
            "warmup_steps": 0,
            "scheduled_steps": total,
            "max_grad_norm": MAX_GRAD_NORM,
            "clipping": "per parameter group (backbone, attention, head)",
            "dropout": "model config, train mode",
        },
    });
    write_report(&report, flags.path("--json").as_deref())
}
