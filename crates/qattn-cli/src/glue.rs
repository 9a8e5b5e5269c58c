//! `qattn glue run | predict | score | report`: GLUE and SuperGLUE with the official formats and
//! metrics, and exports of the results.

use anyhow::{Context, Result, bail};
use qattn_glue::report;
use qattn_glue::runner::{self, RunOptions};
use qattn_glue::submission;
use qattn_glue::tasks::{self, Split, Task};
use qattn_model::{HubOptions, LoadOptions, Model, Precision};
use qattn_train::{Dataset, Problem, TrainingArgs};
use std::collections::BTreeMap;
use std::path::PathBuf;

mod grid;

/// Arguments of `qattn glue`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Fine-tune on a task's train split (one run per seed), evaluate on dev, write run records.
    Run(RunArgs),
    /// Write the official submission file of a split with a fine-tuned model.
    Predict(PredictArgs),
    /// Score a prediction file against an official gold file; prints JSON.
    Score(ScoreArgs),
    /// Summarise run records (mean ± sd over seeds per task and attention) as CSV, Markdown,
    /// LaTeX, JSON and one SVG/PNG plot per task.
    Report(ReportArgs),
    /// The full table: every task with a recipe × attention system × seed as resumable runs,
    /// with a plan from measured run times and grid.md / grid.json naming every missing cell.
    Grid(grid::GridArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// A recipe (TOML: task, model, attention, seeds, epochs, max_steps, lr, batch_size,
    /// max_len, pooling, train_limit, eval_limit and a [training] table of TrainingArgs fields; see
    /// benchmarks/recipes/). Flags given on the command line win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Task (cola, sst2, mrpc, stsb, qqp, mnli-m, mnli-mm, qnli, rte, wnli, boolq, cb, copa,
    /// multirc, record, sg-rte, wic, wsc); may come from --config.
    #[arg(long)]
    task: Option<String>,
    /// Hub id or directory of the pretrained model; may come from --config.
    #[arg(long)]
    model: Option<String>,
    /// Attention estimator spec [default: exact].
    #[arg(long)]
    attention: Option<String>,
    /// Comma-separated seeds, one fine-tuning run each [default: 1,2,3].
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Epochs [default: 3].
    #[arg(long)]
    epochs: Option<u64>,
    /// Stop after this many optimiser steps (overrides --epochs).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Learning rate [default: 2e-5].
    #[arg(long)]
    lr: Option<f64>,
    /// Examples per batch [default: 32].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Truncate inputs to this many tokens [default: 128].
    #[arg(long)]
    max_len: Option<usize>,
    /// What the task head reads: cls (the [CLS] pooler) or mean (masked mean of the last
    /// hidden states) [default: cls]; may come from --config.
    #[arg(long)]
    pooling: Option<qattn_model::Pooling>,
    /// Train on a seeded subset of this many examples (state it when reporting).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Score only the first N dev examples.
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Directory with glue/ and superglue/ (default: QATTN_DATA_DIR, else
    /// $XDG_DATA_HOME/qattn/data, else ~/.local/share/qattn/data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Output directory.
    #[arg(long)]
    output_dir: PathBuf,
    /// Continue interrupted runs from their checkpoints.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Remove the outputs of earlier runs in the seed directories (checkpoints, metrics,
    /// run.json, model) and start fresh; refuses if they hold other files.
    #[arg(long)]
    overwrite: bool,
    /// Set any TrainingArgs field (KEY=VALUE); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Hub cache directory.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Never download.
    #[arg(long)]
    offline: bool,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with candle's CUDA backend and a GPU;
    /// otherwise the command refuses with the reason).
    #[arg(long, default_value = "cpu", value_parser = crate::model::parse_device_arg)]
    device: candle_core::Device,
}

#[derive(clap::Args)]
struct PredictArgs {
    /// Task.
    #[arg(long)]
    task: String,
    /// Fine-tuned model directory (or Hub id).
    #[arg(long)]
    model: String,
    /// Split to predict.
    #[arg(long, default_value = "test")]
    split: String,
    /// Output file (the official name is {TASK}.tsv / {Task}.jsonl).
    #[arg(long)]
    output: PathBuf,
    /// Directory with glue/ and superglue/.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Examples per batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Truncate inputs to this many tokens.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Storage precision of the encoder's dense weights: f32, f16 or int8 (Q8_0); see
    /// docs/precision.md.
    #[arg(long, default_value = "f32", value_parser = crate::model::parse_precision)]
    precision: Precision,
    /// Also write JSON lines {"id", "pred", "gold"} of every labelled example (the input of
    /// `qattn verify compare`).
    #[arg(long)]
    outputs_jsonl: Option<PathBuf>,
    /// Hub cache directory.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Never download.
    #[arg(long)]
    offline: bool,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with candle's CUDA backend and a GPU;
    /// otherwise the command refuses with the reason).
    #[arg(long, default_value = "cpu", value_parser = crate::model::parse_device_arg)]
    device: candle_core::Device,
}

#[derive(clap::Args)]
struct ScoreArgs {
    /// Task.
    #[arg(long)]
    task: String,
    /// The official labelled file (e.g. glue/CoLA/dev.tsv).
    #[arg(long)]
    gold: PathBuf,
    /// Predictions: TSV `index<TAB>prediction` or JSONL `{"idx", "label"}`.
    #[arg(long)]
    pred: PathBuf,
}

#[derive(clap::Args)]
struct ReportArgs {
    /// Directory searched recursively for run.json files (a `glue run --output-dir`).
    #[arg(long)]
    runs: PathBuf,
    /// Where results.{csv,md,tex,json} and TASK.{svg,png} go.
    #[arg(long)]
    output_dir: PathBuf,
}

pub(crate) fn run(a: Args) -> Result<()> {
    match a.command {
        Command::Run(a) => run_task(a),
        Command::Predict(a) => predict(a),
        Command::Score(a) => score(a),
        Command::Report(a) => report_cmd(a),
        Command::Grid(a) => grid::grid(a),
    }
}

fn report_cmd(a: ReportArgs) -> Result<()> {
    let command = format!(
        "qattn glue report --runs {} --output-dir {}",
        a.runs.display(),
        a.output_dir.display()
    );
    let written = report::write_report(&a.runs, &a.output_dir, &command)?;
    for w in &written.report.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "{} run records, {} (task, attention) groups",
        written.report.runs,
        written.report.groups.len()
    );
    for f in &written.files {
        println!("{}", f.display());
    }
    Ok(())
}

pub(crate) fn hub(cache_dir: &Option<PathBuf>, offline: bool) -> HubOptions {
    let mut h = HubOptions::from_env();
    h.cache_dir = cache_dir.clone();
    h.offline |= offline;
    h
}

pub(crate) fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

fn run_task(a: RunArgs) -> Result<()> {
    // A training process: keep freed activation buffers for the next step (see the module).
    qattn_train::memory::retain_freed_memory();
    let opts = run_options(&a)?;
    let (task, attention) = (opts.task, opts.attention.clone());
    // A non-empty seed directory without --resume / --overwrite is a usage error (exit 2),
    // found before any run starts.
    let mode = qattn_train::output::OutputMode::from_flags(a.resume, a.overwrite)?;
    for &seed in &opts.seeds {
        qattn_train::output::check(&runner::seed_dir(&opts, seed), mode)
            .map_err(|e| crate::UsageError(e.to_string()))?;
    }
    let records = runner::run(&opts, |m| eprintln!("{m}"))?;
    println!(
        "| task | attention | seeds | {} | train s (mean) |",
        task.metrics().join(" | ")
    );
    println!("|---|---|---|{}---:|", "---:|".repeat(task.metrics().len()));
    let cells: Vec<String> = task
        .metrics()
        .iter()
        .map(|m| {
            let v: Vec<f64> = records
                .iter()
                .filter_map(|r| r.dev_metrics.get(*m).copied())
                .collect();
            let (mean, sd) = mean_sd(&v);
            format!("{:.2} ± {:.2}", 100.0 * mean, 100.0 * sd)
        })
        .collect();
    let train_s: Vec<f64> = records
        .iter()
        .filter_map(|r| r.wall_seconds.get("train").copied())
        .collect();
    println!(
        "| {} | {} | {} | {} | {:.0} |",
        task.name(),
        attention,
        records.len(),
        cells.join(" | "),
        mean_sd(&train_s).0
    );
    println!(
        "run records: {}",
        a.output_dir
            .join(task.name())
            .join(runner::slug(&attention))
            .display()
    );
    Ok(())
}

/// The run options of `glue run` (and of each `glue grid` cell): the recipe of `--config`,
/// overridden by the flags.
fn run_options(a: &RunArgs) -> Result<RunOptions> {
    let recipe = match &a.config {
        Some(p) => qattn_glue::recipe::Recipe::read(p)?,
        None => qattn_glue::recipe::Recipe::default(),
    };
    let task = Task::from_name(&recipe.task_or(a.task.as_deref())?)?;
    let model = a
        .model
        .clone()
        .or_else(|| recipe.model.clone())
        .context("no model: give --model or `model` in the --config recipe")?;
    let attention = a
        .attention
        .clone()
        .or_else(|| recipe.attention.clone())
        .unwrap_or_else(|| "exact".into());
    let seeds = a
        .seeds
        .clone()
        .or_else(|| recipe.seeds.clone())
        .unwrap_or_else(|| vec![1, 2, 3]);
    if seeds.is_empty() {
        bail!("--seeds needs at least one seed");
    }
    let mut args = TrainingArgs {
        num_train_epochs: a.epochs.or(recipe.epochs).unwrap_or(3),
        max_steps: a.max_steps.or(recipe.max_steps),
        learning_rate: a.lr.or(recipe.lr).unwrap_or(2e-5),
        per_device_train_batch_size: a.batch_size.or(recipe.batch_size).unwrap_or(32),
        max_length: a.max_len.or(recipe.max_len).unwrap_or(128),
        warmup_ratio: 0.1,
        logging_steps: 10,
        save_steps: 200,
        ..Default::default()
    };
    recipe.apply_training(&mut args)?;
    for s in &a.sets {
        args.set(s)?;
    }
    let opts = RunOptions {
        task,
        model,
        attention: attention.clone(),
        seeds,
        args,
        data_dir: tasks::data_dir(a.data_dir.as_deref()),
        output_dir: a.output_dir.clone(),
        resume: a.resume,
        overwrite: a.overwrite,
        hub: hub(&a.cache_dir, a.offline),
        train_limit: a.train_limit.or(recipe.train_limit),
        eval_limit: a.eval_limit.or(recipe.eval_limit),
        device: a.device.clone(),
        pooling: a.pooling.or(recipe.pooling).unwrap_or_default(),
    };
    Ok(opts)
}

fn predict(a: PredictArgs) -> Result<()> {
    let task = Task::from_name(&a.task)?;
    let split = Split::from_name(&a.split)?;
    let data_dir = tasks::data_dir(a.data_dir.as_deref());
    let loaded = tasks::load(task, split, &data_dir)?;
    for s in &loaded.skipped {
        eprintln!("skipped line {}: {}", s.line, s.reason);
    }
    let hub = hub(&a.cache_dir, a.offline);
    let mut model = Model::load(
        &a.model,
        &LoadOptions {
            hub,
            precision: a.precision,
            device: a.device.clone(),
            ..Default::default()
        },
    )
    .with_context(|| format!("cannot load model {:?}", a.model))?;
    let labels = runner::labels_for(task);
    if model.head() != Some(labels.head()) {
        bail!(
            "model {} has head {:?}, task {} needs {}",
            a.model,
            model.head().map(|h| h.to_string()),
            task.name(),
            labels.head()
        );
    }
    let tok = model
        .tokenizer_mut()
        .context("the model directory has no tokenizer.json")?;
    tok.set_max_length(Some(a.max_len));
    let tok = tok.clone();
    let ds = Dataset::from_records(
        &a.output,
        runner::to_records(&loaded.examples),
        &tok,
        Problem::Auto,
        Some(&labels),
    )?;
    let started = std::time::Instant::now();
    let outputs = qattn_train::predict(&model, &ds, a.batch_size, tok.pad_id())?;
    let predict_s = started.elapsed().as_secs_f64();
    let preds = runner::decide(task, &loaded.examples, &outputs)?;
    let body = submission::render(task, &loaded.examples, &preds)?;
    qattn_model::io::write_atomic(&a.output, body.as_bytes())?;
    eprintln!(
        "wrote {} predictions to {} (official name: {}); precision {}, inference {:.2} s, \
         peak RSS {} MiB",
        loaded.examples.len(),
        a.output.display(),
        task.submission_name(),
        model.precision(),
        predict_s,
        runner::peak_rss_mb()
            .map(|m| format!("{m:.0}"))
            .unwrap_or_else(|| "?".into())
    );
    if let Some(path) = &a.outputs_jsonl {
        let m = runner::score(task, &loaded.examples, &preds).ok();
        let body = prediction_lines(&loaded.examples, &preds)?;
        qattn_model::io::write_atomic(path, body.as_bytes())?;
        eprintln!(
            "wrote per-example outputs to {}{}",
            path.display(),
            m.map(|m| format!("; dev metrics {}", serde_json::json!(m)))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn score(a: ScoreArgs) -> Result<()> {
    let task = Task::from_name(&a.task)?;
    let gold = tasks::load_path(task, Split::Dev, &a.gold)?;
    let examples: Vec<_> = gold
        .examples
        .into_iter()
        .filter(|e| e.label.is_some())
        .collect();
    if examples.is_empty() {
        bail!("{} has no labelled examples", a.gold.display());
    }
    let preds = submission::read_predictions(task, &a.pred, &examples)?;
    let m: BTreeMap<String, f64> = runner::score(task, &examples, &preds)?;
    println!("{}", serde_json::to_string_pretty(&m)?);
    Ok(())
}

/// JSON lines `{"id", "pred", "gold"}` of the labelled examples: the input format of
/// `qattn verify compare`.
fn prediction_lines(examples: &[tasks::Example], preds: &[runner::Prediction]) -> Result<String> {
    let mut body = String::new();
    for (e, p) in examples.iter().zip(preds) {
        let gold = match e.label {
            Some(tasks::Label::Class(c)) => serde_json::json!(c),
            Some(tasks::Label::Score(s)) => serde_json::json!(s),
            None => continue,
        };
        let line = serde_json::json!({ "id": e.id, "pred": p, "gold": gold });
        body.push_str(&serde_json::to_string(&line)?);
        body.push('\n');
    }
    if body.is_empty() {
        bail!("no labelled examples: --outputs-jsonl needs a labelled split (dev)");
    }
    Ok(body)
}
