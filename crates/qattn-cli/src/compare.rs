//! `qattn compare`: the main job. Exact vs Monte-Carlo attention end to end — fine-tune every
//! system with k seeds, evaluate on the same dev examples, test "MC beats exact" — and print
//! the verdict table.
//!
//! With no arguments it runs the embedded synthetic long-range task
//! (`qattn_verify::synthetic`) on a small random encoder: no downloads. With
//! `--task T --model M` it runs a GLUE/SuperGLUE task on real data.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use qattn_glue::tasks::{self, Task};
use qattn_train::records::RunRecord;
use qattn_verify::claims::{self, ClaimsFile};
use qattn_verify::compare::{CompareOptions, CompareProgress, TaskSource, run_compare};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `qattn compare`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The baseline attention.
    #[arg(long, default_value = "exact")]
    baseline: String,
    /// Comma-separated Monte-Carlo attention specs compared against the baseline (default:
    /// stratified:32, multinomial:8, and stratified:32 with readout noise, without and with
    /// mitigation; with --long: lsh:6:256:256 and lsh:6:128:32).
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Comma-separated seeds: one fine-tuning run per system and seed.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
    /// A small preset for smoke tests (synthetic: the majority task at 32 words only, 100
    /// steps; GLUE: 1 epoch on at most 1000 train / 500 dev examples).
    #[arg(long)]
    quick: bool,
    /// The long-context comparison: the majority task at 4096 words (4098 tokens) with
    /// 257–1025 markers, exact attention against the sub-quadratic lsh estimator, 120 steps of
    /// batch 8 (several minutes per run on one core; with --quick: 4 steps on 32 examples, a
    /// smoke test).
    #[arg(long, conflicts_with = "task")]
    long: bool,
    /// Comma-separated sequence lengths (words) of the synthetic majority task, one comparison
    /// each (default: 64,128; --quick: 32).
    #[arg(long, value_delimiter = ',', conflicts_with = "task")]
    lengths: Vec<usize>,
    /// A GLUE/SuperGLUE task instead of the embedded synthetic one (needs --model).
    #[arg(long, requires = "model")]
    task: Option<String>,
    /// Hub id or directory of the pretrained model (with --task).
    #[arg(long, requires = "task")]
    model: Option<String>,
    /// Directory with glue/ and superglue/ (default: QATTN_DATA_DIR, else
    /// $XDG_DATA_HOME/qattn/data, else ~/.local/share/qattn/data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Train on a seeded subset of this many examples (GLUE).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Score only the first N dev examples (GLUE).
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Epochs (GLUE).
    #[arg(long)]
    epochs: Option<u64>,
    /// Optimiser steps (overrides epochs).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Examples per step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Any TrainingArgs field (KEY=VALUE); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Bootstrap resamples of the verdict.
    #[arg(long, default_value_t = 5000)]
    resamples: usize,
    /// Where run records, claims-report.md and claims-report.json go.
    #[arg(long, default_value = "qattn-compare")]
    output_dir: PathBuf,
    /// Worker threads for the numerics (default: all cores). On a machine busy with other
    /// work, 1 is often faster: the workers spin while waiting for each other.
    #[arg(long)]
    threads: Option<usize>,
    /// Synthetic runs trained at the same time, the threads shared among them (default: one
    /// per thread). Results do not depend on it.
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    jobs: usize,
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

/// The progress bar over all runs.
struct Bar {
    bar: ProgressBar,
}

impl CompareProgress for Bar {
    fn begin(&self, total_runs: usize) {
        self.bar.set_length(total_runs as u64);
    }
    fn run_started(&self, _index: usize, system: &str, seed: u64) {
        self.bar.set_message(format!("{system} seed {seed}"));
    }
    fn run_finished(&self, _index: usize, r: &RunRecord) {
        let metrics = r
            .dev_metrics
            .iter()
            .map(|(k, v)| format!("{k} {:.4}", v))
            .collect::<Vec<_>>()
            .join(", ");
        let secs: f64 = r.wall_seconds.values().sum();
        self.bar.println(format!(
            "  {} seed {}: {metrics} ({secs:.0} s)",
            r.attention, r.seed
        ));
        self.bar.inc(1);
    }
    fn message(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }
}

/// Runs `qattn compare`.
pub(crate) fn run(a: Args) -> Result<()> {
    // A training process: keep freed activation buffers for the next step (see the module).
    qattn_train::memory::retain_freed_memory();
    if let Some(n) = a.threads {
        anyhow::ensure!(n >= 1, "--threads {n}: at least 1");
        crate::rayon_global(n)?;
    }
    let started = Instant::now();
    let mc_systems: Vec<String> = if !a.systems.is_empty() {
        a.systems.clone()
    } else if a.long {
        qattn_verify::compare::LONG_MC_SYSTEMS
            .map(String::from)
            .to_vec()
    } else {
        qattn_verify::compare::DEFAULT_MC_SYSTEMS
            .map(String::from)
            .to_vec()
    };
    let mut systems = vec![a.baseline.clone()];
    for s in &mc_systems {
        anyhow::ensure!(
            *s != a.baseline,
            "--systems {s:?} is the baseline; give Monte-Carlo specs to compare against it"
        );
        systems.push(s.clone());
    }
    let (task, metric) = match (&a.task, &a.model) {
        (Some(t), Some(m)) => {
            let task = Task::from_name(t)?;
            let metric = qattn_glue::metrics::task_metrics(task.name())
                .and_then(|m| m.first().copied())
                .with_context(|| format!("task {} has no dev metric", task.name()))?;
            (
                TaskSource::Glue {
                    task,
                    model: m.clone(),
                    data_dir: tasks::data_dir(a.data_dir.as_deref()),
                    hub: crate::glue::hub(&a.cache_dir, a.offline),
                    train_limit: a.train_limit,
                    eval_limit: a.eval_limit,
                },
                metric,
            )
        }
        _ => {
            let tasks = if a.lengths.is_empty() {
                None
            } else {
                let preset = CompareOptions {
                    quick: a.quick,
                    long: a.long,
                    ..CompareOptions::default()
                }
                .preset();
                Some(preset.tasks_at(&a.lengths)?)
            };
            (
                TaskSource::Synthetic { tasks, model: None },
                qattn_glue::metrics::ACCURACY,
            )
        }
    };
    let opts = CompareOptions {
        systems: systems.clone(),
        seeds: a.seeds.clone(),
        quick: a.quick,
        long: a.long,
        task,
        max_steps: a.max_steps,
        epochs: a.epochs,
        learning_rate: a.lr,
        batch_size: a.batch_size,
        set: a.set.clone(),
        output_dir: Some(a.output_dir.join("runs")),
        jobs: a.jobs,
        device: a.device.clone(),
    };
    let task_names = opts.task_names()?;
    eprintln!(
        "qattn compare: {} — {} vs {} × seeds {:?}{}",
        task_names.join(", "),
        a.baseline,
        mc_systems.join(", "),
        a.seeds,
        if a.quick { " (quick)" } else { "" }
    );
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} runs  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    let progress = Bar { bar: bar.clone() };
    let records = run_compare(&opts, &progress);
    bar.finish_and_clear();
    let records = records?;

    let mut file = ClaimsFile::beats_on(&task_names, metric, &a.baseline, &mc_systems);
    anyhow::ensure!(
        a.resamples >= 100,
        "--resamples {}: at least 100",
        a.resamples
    );
    file.defaults.resamples = a.resamples;
    let report = claims::evaluate(&file, &records)?;
    let command = std::env::args()
        .map(|s| if s.contains(' ') { format!("{s:?}") } else { s })
        .collect::<Vec<_>>()
        .join(" ");
    let written = claims::write_report(&report, &a.output_dir, &command)?;

    let width = systems.iter().map(|s| s.len()).max().unwrap_or(9).max(9);
    for task in &task_names {
        println!();
        println!("{task}");
        println!(
            "  {:<width$} {:>6} {:>16} {:>10}  flags",
            "attention", "seeds", metric, "train s"
        );
        for s in &systems {
            let runs: Vec<&RunRecord> = records
                .iter()
                .filter(|r| &r.attention == s && &r.task == task)
                .collect();
            let scores: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.dev_metrics.get(metric).copied())
                .collect();
            let (m, sd) = crate::glue::mean_sd(&scores);
            let train: f64 = runs
                .iter()
                .filter_map(|r| r.wall_seconds.get("train"))
                .sum::<f64>()
                / runs.len().max(1) as f64;
            let flag = report
                .results
                .iter()
                .filter(|r| &r.claim.task == task)
                .flat_map(|r| [&r.system, &r.baseline])
                .find(|x| &x.attention == s)
                .and_then(|x| x.bound.clone())
                .unwrap_or_default();
            println!(
                "  {:<width$} {:>6} {:>16} {:>10.1}  {flag}",
                s,
                runs.len(),
                format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * sd),
                train
            );
        }
    }
    println!();
    for r in &report.results {
        let ci = match (r.ci_low, r.ci_high) {
            (Some(l), Some(h)) => format!("[{:+.2}, {:+.2}]", 100.0 * l, 100.0 * h),
            _ => "–".into(),
        };
        println!("{}: {}", r.claim.id, r.verdict);
        println!(
            "    δ = {} points, {:.0}% CI {ci}, adjusted p = {}, detectable advantage (MDE, {:.0}% \
             power) {}",
            r.delta.map_or("–".into(), |d| format!("{:+.2}", 100.0 * d)),
            100.0 * r.ci_level,
            r.p_adjusted.map_or("–".into(), |p| format!("{p:.4}")),
            100.0 * report.defaults.power,
            r.mde
                .map_or("–".into(), |m| format!("{:+.2} points", 100.0 * m)),
        );
        println!("    {}", r.reason);
    }
    println!();
    println!(
        "{} runs in {:.0} s; records under {}, report: {}",
        records.len(),
        started.elapsed().as_secs_f64(),
        a.output_dir.join("runs").display(),
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
