//! `qattn train`: fine-tune a BERT-family model on JSONL text classification / regression /
//! multiple-choice data, with exact or Monte-Carlo attention.

use crate::UsageError;
use anyhow::{Context, Result, bail};
use qattn_model::{AttentionConfig, HubOptions, LoadOptions, Model};
use qattn_train::output::OutputMode;
use qattn_train::provenance::BUILD;
use qattn_train::tracking::Mlflow;
use qattn_train::{Collective, Dataset, Launch, Problem, Trainer, TrainingArgs, tokenizer_for};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The process group of a data-parallel run, kept outside the trainer so that a failing rank
/// can exit without finalising MPI (which would wait for the other ranks); the launcher then
/// ends the whole job. Taken and dropped (finalised) after a successful run.
static GROUP: Mutex<Option<Arc<dyn Collective>>> = Mutex::new(None);

/// Arguments of `qattn train`.
#[derive(clap::Args)]
#[command(
    after_help = "Data: JSONL, one object per line: {\"text\": …, \"text_pair\": … (optional), \
\"label\": 0 | \"name\" | 0.7} or, for multiple choice, {\"text\": …, \"choices\": [\"a\", \"b\"], \"label\": 0}.\n\
Outputs in --output-dir: checkpoint-STEP/ (model, optimizer, trainer state, sha256 manifest), \
metrics.jsonl (one object per logged step: step, loss, lr, …), params.json, model/ (the final \
model, loadable by transformers), train_summary.json.\n\
Precedence: defaults < --config FILE < flags < --set KEY=VALUE (any TrainingArgs field).\n\
MLflow: set MLFLOW_TRACKING_URI=http://… to also log the run there.\n\
Data-parallel: `mpirun -np N qattn train …` (a build with `--features mpi`) trains on N \
processes, each taking --batch-size examples of every step's global batch of N × --batch-size, \
with a 1/N share of the cores; rank 0 writes the outputs. It follows the trajectory of one \
process with --batch-size N × B, and resumes from a checkpoint on any N that keeps N × B."
)]
pub(crate) struct Args {
    /// Hugging Face Hub id or local directory of the model to fine-tune.
    #[arg(long)]
    model: String,
    /// Training data (JSONL).
    #[arg(long)]
    train: PathBuf,
    /// Evaluation data (JSONL, same label space).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Output directory.
    #[arg(long)]
    output_dir: PathBuf,
    /// Total optimiser steps (overrides --epochs).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<u64>,
    /// Checkpoint every N steps.
    #[arg(long)]
    save_steps: Option<u64>,
    /// Evaluate every N steps (default: --save-steps).
    #[arg(long)]
    eval_steps: Option<u64>,
    /// Log every N steps.
    #[arg(long)]
    logging_steps: Option<u64>,
    /// Examples per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimiser step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Base learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of data order, dropout, attention draws and new weights.
    #[arg(long)]
    seed: Option<u64>,
    /// Attention estimator of every head, e.g. `exact`, `stratified:32`.
    #[arg(long)]
    attention: Option<String>,
    /// Per-layer/head override `L=SPEC` or `L.H=SPEC`; repeatable.
    #[arg(long = "attention-override", value_name = "L[.H]=SPEC")]
    overrides: Vec<String>,
    /// Gradient of sampling estimators: exact (straight-through) or sampled.
    #[arg(long)]
    grad_mode: Option<String>,
    /// What the task head reads: cls (the [CLS] pooler, as transformers) or mean (masked mean
    /// of the last hidden states, what sentence-embedding checkpoints were trained for)
    /// [default: the saved model's, else cls].
    #[arg(long)]
    pooling: Option<qattn_model::Pooling>,
    /// TOML (or .json) file of TrainingArgs fields.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Set any TrainingArgs field: KEY=VALUE (TOML value); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Continue from the newest good checkpoint in --output-dir.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Remove an earlier run's outputs from --output-dir (checkpoints, metrics, model, …) and
    /// start fresh; refuses if the directory holds other files.
    #[arg(long)]
    overwrite: bool,
    /// Hub cache directory.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Never download.
    #[arg(long)]
    offline: bool,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    plain: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with candle's CUDA backend and a GPU;
    /// otherwise the command refuses with the reason).
    #[arg(long, default_value = "cpu", value_parser = crate::model::parse_device_arg)]
    device: candle_core::Device,
}

fn training_args(a: &Args) -> Result<TrainingArgs> {
    let mut t = match &a.config {
        Some(p) => TrainingArgs::from_file(p)?,
        None => TrainingArgs::default(),
    };
    t.output_dir = a.output_dir.clone();
    if let Some(v) = a.max_steps {
        t.max_steps = Some(v);
    }
    if let Some(v) = a.epochs {
        t.num_train_epochs = v;
    }
    if let Some(v) = a.save_steps {
        t.save_steps = v;
    }
    if let Some(v) = a.eval_steps {
        t.eval_steps = Some(v);
    }
    if let Some(v) = a.logging_steps {
        t.logging_steps = v;
    }
    if let Some(v) = a.batch_size {
        t.per_device_train_batch_size = v;
    }
    if let Some(v) = a.grad_accum {
        t.gradient_accumulation_steps = v;
    }
    if let Some(v) = a.lr {
        t.learning_rate = v;
    }
    if let Some(v) = a.seed {
        t.seed = v;
    }
    if let Some(v) = &a.attention {
        t.attention = Some(v.clone());
    }
    if !a.overrides.is_empty() {
        t.attention_overrides = a.overrides.clone();
    }
    if let Some(v) = &a.grad_mode {
        t.grad_mode = v.parse().with_context(|| format!("--grad-mode {v:?}"))?;
    }
    for s in &a.sets {
        t.set(s)?;
    }
    t.validate()?;
    Ok(t)
}

pub(crate) fn run(a: Args) -> Result<()> {
    // A training process: keep freed activation buffers for the next step (see the module).
    qattn_train::memory::retain_freed_memory();
    let launch = Launch::from_env()?;
    if launch.world_size == 1 {
        return train(a, &launch, Arc::new(qattn_train::SingleProcess));
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        crate::rayon_global(launch.threads(cores))?;
    }
    let group: Arc<dyn Collective> = Arc::from(launch.connect()?);
    *GROUP.lock().unwrap_or_else(|p| p.into_inner()) = Some(group.clone());
    match train(a, &launch, group) {
        Ok(()) => {
            // Finalise MPI (the last handle) only after a clean run.
            GROUP.lock().unwrap_or_else(|p| p.into_inner()).take();
            Ok(())
        }
        Err(e) => {
            eprintln!(
                "error (rank {} of {}): {e:#}",
                launch.rank, launch.world_size
            );
            // Exit without finalising: the launcher sees the failure and stops the other ranks.
            std::process::exit(1);
        }
    }
}

fn train(a: Args, launch: &Launch, group: Arc<dyn Collective>) -> Result<()> {
    let main = launch.is_main();
    let args = training_args(&a)?;
    let mode = OutputMode::from_flags(a.resume, a.overwrite)?;
    // Refuse before any work; --overwrite removes the old outputs only once the model and data
    // have loaded. Only rank 0 owns the output directory.
    if main {
        qattn_train::output::check(&args.output_dir, mode)
            .map_err(|e| UsageError(e.to_string()))?;
    }
    if !a.train.is_file() {
        bail!("training data {} does not exist", a.train.display());
    }
    let mut hub = HubOptions::from_env();
    hub.cache_dir = a.cache_dir.clone();
    hub.offline |= a.offline;
    let tok = tokenizer_for(&a.model, &hub, args.max_length)
        .with_context(|| format!("cannot load the tokenizer of {:?}", a.model))?;
    let train = Dataset::from_jsonl(&a.train, &tok, args.problem, None)?;
    let eval = match &a.eval {
        Some(p) => Some(Dataset::from_jsonl(
            p,
            &tok,
            Problem::Auto,
            Some(&train.labels),
        )?),
        None => None,
    };
    let mut attention = match &args.attention {
        Some(spec) => AttentionConfig::parse(spec)?,
        None => AttentionConfig::default(),
    };
    for o in &args.attention_overrides {
        attention = attention.apply_override(o)?;
    }
    attention.seed = args.seed;
    attention.grad_mode = args.grad_mode;
    let labels = match &train.labels {
        qattn_train::Labels::Classes { names } => Some(names.clone()),
        _ => None,
    };
    let opts = LoadOptions {
        hub,
        attention: Some(attention),
        head: Some(train.labels.head()),
        labels,
        pooling: a.pooling,
        trainable: true,
        init_seed: args.seed,
        device: a.device.clone(),
        ..Default::default()
    };
    let mut model =
        Model::load(&a.model, &opts).with_context(|| format!("cannot load model {:?}", a.model))?;
    if let Some(t) = model.tokenizer_mut() {
        t.set_max_length(Some(args.max_length));
    }
    let announce = format!(
        "training {} on {} ({} examples{}), {:?} labels, attention {}",
        a.model,
        a.train.display(),
        train.len(),
        eval.as_ref()
            .map(|e| format!(", eval {}", e.len()))
            .unwrap_or_default(),
        train.labels,
        opts.attention
            .as_ref()
            .map(|a| a.default.to_string())
            .unwrap_or_default()
    );
    let mut trainer = Trainer::new(args.clone(), model, train, eval)?;
    trainer.set_collective(Box::new(group.clone()));
    trainer.set_output(a.plain || !std::io::stderr().is_terminal(), !main);
    if !main {
        // The other ranks compute and exchange; rank 0 reports and writes.
        trainer.train(a.resume)?;
        return Ok(());
    }
    qattn_train::output::prepare(&args.output_dir, mode).map_err(|e| UsageError(e.to_string()))?;
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("cannot create {}", args.output_dir.display()))?;
    let args_json = serde_json::to_string_pretty(&args)?;
    qattn_model::io::write_atomic(
        &args.output_dir.join("training_args.json"),
        args_json.as_bytes(),
    )?;
    if launch.world_size > 1 {
        eprintln!(
            "data-parallel: {} processes ({}), global batch {} = {} × {}, {} threads each",
            launch.world_size,
            group.describe(),
            launch.world_size * args.per_device_train_batch_size,
            launch.world_size,
            args.per_device_train_batch_size,
            rayon::current_num_threads()
        );
    }
    eprintln!("{announce}");
    let mut tags = BTreeMap::new();
    // The commit this binary was built from, not the current directory's.
    if let Some(sha) = BUILD.commit {
        tags.insert("git_sha".to_string(), sha.to_string());
    }
    tags.insert("qattn.git_dirty".to_string(), BUILD.state().to_string());
    tags.insert("qattn.config".to_string(), serde_json::to_string(&args)?);
    tags.insert("qattn.model".to_string(), a.model.clone());
    if let Some(m) = Mlflow::from_env("qattn", &run_name(&args), &tags) {
        let m = m.context("MLFLOW_TRACKING_URI is set but the MLflow run could not be created")?;
        eprintln!("MLflow run {} at {}", m.run_id(), m.base_url());
        trainer.add_tracker(Box::new(m));
    }
    let summary = trainer.train(a.resume)?;
    let final_dir = args.output_dir.join("model");
    trainer.model().save_pretrained(&final_dir)?;
    let json = serde_json::to_string_pretty(&summary)?;
    qattn_model::io::write_atomic(&args.output_dir.join("train_summary.json"), json.as_bytes())?;
    if a.json {
        println!("{json}");
    } else {
        println!(
            "steps {} ({} this run{}), last loss {}, {:.1} samples/s",
            summary.steps,
            summary.steps_this_run,
            summary
                .resumed_from
                .map(|s| format!(", resumed from {s}"))
                .unwrap_or_default(),
            summary
                .last_loss
                .map(|l| format!("{l:.4}"))
                .unwrap_or_else(|| "-".into()),
            summary.samples_per_second
        );
        for (k, v) in &summary.eval {
            println!("{k} {v:.4}");
        }
        if let (Some(m), Some(s)) = (summary.best_metric, summary.best_step) {
            println!("best {} {m:.4} at step {s}", args.metric_for_best_model);
        }
        println!(
            "final model: {}  metrics: {}",
            final_dir.display(),
            args.output_dir.join("metrics.jsonl").display()
        );
    }
    Ok(())
}

fn run_name(args: &TrainingArgs) -> String {
    format!(
        "{}-{}",
        args.attention.as_deref().unwrap_or("exact"),
        args.seed
    )
}
