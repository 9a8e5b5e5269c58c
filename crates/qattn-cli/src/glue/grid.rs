//! `qattn glue grid`: the full-budget table — every task with a recipe × every attention system
//! × every seed — as resumable cells, with a plan from measured run times and a status table
//! that names every missing cell.
//!
//! A cell is one fine-tuning run (`glue run --config RECIPES/TASK.toml --attention SYSTEM
//! --seeds SEED`) into `OUTPUT/TASK/SYSTEM/seed-S`. Its state is `done` (a `run.json` there, or
//! in one of the `--done` directories), `partial` (a seed directory without `run.json`: the run
//! resumes from its last checkpoint), `missing`, `failed` (this invocation's run returned an
//! error), `no recipe` (no TOML for the task) or `no data here` (the task's train or dev file
//! is absent from the data directory; `qattn data fetch` gets it where there is network).
//! Cells run one after another in table order; `grid.md` and `grid.json` in the output
//! directory are rewritten (atomically) after every cell, so an interrupted grid loses at most
//! the cell it was in, and rerunning the same command continues it.

use super::{RunArgs, mean_sd, run_options};
use anyhow::{Context, Result};
use qattn_glue::runner;
use qattn_glue::tasks::{self, Split, Task};
use qattn_train::records::RunRecord;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The systems of the table: exact attention, three estimators and one noisy spec with
/// readout mitigation.
pub(crate) const DEFAULT_SYSTEMS: [&str; 5] = [
    "exact",
    "stratified:32",
    "multinomial:8",
    "topk:8:24",
    "stratified:32+readout:0.02:0.03+mitigate",
];

/// The tasks that are fine-tuned (AX, AX-b and AX-g are diagnostics predicted with a model
/// trained on another task).
pub(crate) const DEFAULT_TASKS: [&str; 17] = [
    "cola", "sst2", "mrpc", "stsb", "qqp", "mnli-m", "qnli", "rte", "wnli", "boolq", "cb", "copa",
    "multirc", "record", "sg-rte", "wic", "wsc",
];

/// Arguments of `qattn glue grid`.
#[derive(clap::Args)]
pub(crate) struct GridArgs {
    /// Directory of recipes, one `TASK.toml` per task (benchmarks/recipes/); a task without
    /// one is listed as "no recipe".
    #[arg(long)]
    recipes: PathBuf,
    /// Comma-separated attention specs [default: exact, stratified:32, multinomial:8,
    /// topk:8:24, stratified:32+readout:0.02:0.03+mitigate].
    #[arg(long, value_delimiter = ',')]
    systems: Option<Vec<String>>,
    /// Comma-separated seeds.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5")]
    seeds: Vec<u64>,
    /// Comma-separated tasks [default: every fine-tuned GLUE and SuperGLUE task].
    #[arg(long, value_delimiter = ',')]
    tasks: Option<Vec<String>>,
    /// Where the runs go (OUTPUT/TASK/SYSTEM/seed-S) and grid.md / grid.json are written.
    #[arg(long)]
    output_dir: PathBuf,
    /// A directory of finished run records to count as done (not rerun), e.g. committed
    /// records; repeatable.
    #[arg(long)]
    done: Vec<PathBuf>,
    /// Write the plan (states and estimated hours) and stop without training.
    #[arg(long)]
    plan: bool,
    /// Start no new cell after this many hours, or when the next cell's estimate would end
    /// past them (the running cell always finishes).
    #[arg(long)]
    max_hours: Option<f64>,
    /// Set any TrainingArgs field (KEY=VALUE) in every cell; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Directory with glue/ and superglue/ (default: QATTN_DATA_DIR, else
    /// $XDG_DATA_HOME/qattn/data, else ~/.local/share/qattn/data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Hub cache directory.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Never download.
    #[arg(long)]
    offline: bool,
}

/// One cell of the grid.
#[derive(Clone, Debug, Serialize)]
struct Cell {
    task: String,
    system: String,
    seed: u64,
    /// done, partial, missing, failed, no recipe, no data here.
    state: String,
    /// The task's first metric (×100) when done.
    score: Option<f64>,
    /// Load + train + eval seconds of the finished run.
    seconds: Option<f64>,
    /// Where its run.json is (done) or would be.
    record: Option<PathBuf>,
    /// The error of a failed run.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Summary of one (task, system) row.
#[derive(Clone, Debug, Serialize)]
struct Row {
    task: String,
    system: String,
    metric: Option<String>,
    done: Vec<u64>,
    todo: Vec<u64>,
    mean: Option<f64>,
    sd: Option<f64>,
    /// Estimated seconds per run (from this row's finished runs, else the task's).
    estimate_seconds: Option<f64>,
    note: Option<String>,
}

/// grid.json.
#[derive(Serialize)]
struct GridFile<'a> {
    command: String,
    qattn_commit: Option<String>,
    qattn_dirty: Option<bool>,
    seeds: &'a [u64],
    systems: &'a [String],
    rows: Vec<Row>,
    cells: &'a [Cell],
    /// Estimated hours of the runs still to do (rows without an estimate left out).
    hours_left: f64,
    /// Runs to do whose time cannot be estimated yet (no finished run of their task).
    runs_without_estimate: usize,
}

fn seconds_of(r: &RunRecord) -> f64 {
    r.wall_seconds.values().sum()
}

pub(crate) fn grid(a: GridArgs) -> Result<()> {
    qattn_train::memory::retain_freed_memory();
    let systems: Vec<String> = a
        .systems
        .clone()
        .unwrap_or_else(|| DEFAULT_SYSTEMS.iter().map(|s| s.to_string()).collect());
    anyhow::ensure!(!systems.is_empty(), "--systems needs at least one spec");
    anyhow::ensure!(!a.seeds.is_empty(), "--seeds needs at least one seed");
    for s in &systems {
        s.parse::<qattn_kernels::EstimatorSpec>()
            .with_context(|| format!("--systems: {s:?} is not an attention spec"))?;
    }
    let task_names: Vec<String> = a
        .tasks
        .clone()
        .unwrap_or_else(|| DEFAULT_TASKS.iter().map(|s| s.to_string()).collect());
    let tasks: Vec<Task> = task_names
        .iter()
        .map(|t| Task::from_name(t).with_context(|| format!("--tasks: {t:?}")))
        .collect::<Result<_>>()?;
    anyhow::ensure!(
        a.recipes.is_dir(),
        "--recipes {}: not a directory of TASK.toml recipes",
        a.recipes.display()
    );
    let data_dir = tasks::data_dir(a.data_dir.as_deref());
    // Finished runs in --done directories, by (task, system, seed).
    let mut finished: BTreeMap<(String, String, u64), (PathBuf, RunRecord)> = BTreeMap::new();
    for (path, r) in qattn_glue::report::load_runs_from(&a.done)? {
        let task = Task::from_name(&r.task).map(|t| t.name().to_string())?;
        finished.insert((task, r.attention.clone(), r.seed), (path, r));
    }
    let mut command = format!(
        "qattn glue grid --recipes {} --systems {} --seeds {} --tasks {} --output-dir {}",
        a.recipes.display(),
        systems.join(","),
        a.seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
        task_names.join(","),
        a.output_dir.display()
    );
    for d in &a.done {
        command.push_str(&format!(" --done {}", d.display()));
    }
    for s in &a.sets {
        command.push_str(&format!(" --set {s}"));
    }

    // Every cell's state before anything runs.
    let mut cells = Vec::new();
    let mut recipe_of: BTreeMap<String, PathBuf> = BTreeMap::new();
    for &task in &tasks {
        let recipe = a.recipes.join(format!("{}.toml", task.name()));
        let has_data = [Split::Train, Split::Dev]
            .iter()
            .all(|&s| task.path(s, &data_dir).is_some_and(|p| p.is_file()));
        for system in &systems {
            for &seed in &a.seeds {
                let dir = a
                    .output_dir
                    .join(task.name())
                    .join(runner::slug(system))
                    .join(format!("seed-{seed}"));
                let mut cell = Cell {
                    task: task.name().into(),
                    system: system.clone(),
                    seed,
                    state: "missing".into(),
                    score: None,
                    seconds: None,
                    record: Some(dir.join("run.json")),
                    error: None,
                };
                let known = finished.get(&(task.name().to_string(), system.clone(), seed));
                let local = dir.join("run.json");
                if let Some((path, r)) = known {
                    cell.state = "done".into();
                    cell.record = Some(path.clone());
                    fill(&mut cell, task, r);
                } else if local.is_file() {
                    let r = qattn_glue::report::read_run(&local)?;
                    cell.state = "done".into();
                    fill(&mut cell, task, &r);
                } else if !has_data {
                    cell.state = "no data here".into();
                    cell.record = None;
                } else if !recipe.is_file() {
                    cell.state = "no recipe".into();
                    cell.record = None;
                } else if dir.is_dir() {
                    cell.state = "partial".into();
                }
                cells.push(cell);
            }
        }
        if recipe.is_file() {
            recipe_of.insert(task.name().to_string(), recipe);
        }
    }
    write_status(&a.output_dir, &command, &a.seeds, &systems, &cells)?;
    let todo: Vec<usize> = (0..cells.len())
        .filter(|&i| matches!(cells[i].state.as_str(), "missing" | "partial"))
        .collect();
    let (hours, unknown) = hours_left(&rows(&cells, &systems));
    eprintln!(
        "grid: {} cells, {} done, {} to run (≈ {hours:.1} h estimated{}), {} without data or \
         recipe; status in {}",
        cells.len(),
        cells.iter().filter(|c| c.state == "done").count(),
        todo.len(),
        if unknown > 0 {
            format!(", {unknown} runs without an estimate")
        } else {
            String::new()
        },
        cells
            .iter()
            .filter(|c| c.state == "no data here" || c.state == "no recipe")
            .count(),
        a.output_dir.join("grid.md").display()
    );
    if a.plan {
        print!("{}", markdown(&command, &rows(&cells, &systems), &cells));
        return Ok(());
    }
    let start = Instant::now();
    let mut failed = 0;
    for (k, &i) in todo.iter().enumerate() {
        let elapsed_h = start.elapsed().as_secs_f64() / 3600.0;
        if let Some(max) = a.max_hours {
            let est_h = estimate(&cells, &cells[i].task, &cells[i].system).unwrap_or(0.0) / 3600.0;
            if elapsed_h + est_h > max {
                eprintln!(
                    "grid: stopping before cell {}/{} ({} {} seed {}): {elapsed_h:.2} h used, its \
                     estimate {est_h:.2} h would pass --max-hours {max}",
                    k + 1,
                    todo.len(),
                    cells[i].task,
                    cells[i].system,
                    cells[i].seed
                );
                break;
            }
        }
        let (task, system, seed) = (
            cells[i].task.clone(),
            cells[i].system.clone(),
            cells[i].seed,
        );
        eprintln!(
            "grid: cell {}/{}: {task} {system} seed {seed}{}",
            k + 1,
            todo.len(),
            if cells[i].state == "partial" {
                " (resuming)"
            } else {
                ""
            }
        );
        let args = RunArgs {
            config: Some(recipe_of[&task].clone()),
            task: None,
            model: None,
            attention: Some(system.clone()),
            seeds: Some(vec![seed]),
            epochs: None,
            max_steps: None,
            lr: None,
            batch_size: None,
            max_len: None,
            pooling: None,
            train_limit: None,
            eval_limit: None,
            data_dir: Some(data_dir.clone()),
            output_dir: a.output_dir.clone(),
            resume: cells[i].state == "partial",
            overwrite: false,
            sets: a.sets.clone(),
            cache_dir: a.cache_dir.clone(),
            offline: a.offline,
            device: candle_core::Device::Cpu,
        };
        let outcome =
            run_options(&args).and_then(|opts| Ok(runner::run(&opts, |m| eprintln!("{m}"))?));
        match outcome {
            Ok(records) => {
                let t = Task::from_name(&task)?;
                if let Some(r) = records.first() {
                    cells[i].state = "done".into();
                    fill(&mut cells[i], t, r);
                }
            }
            Err(e) => {
                failed += 1;
                cells[i].state = "failed".into();
                cells[i].error = Some(format!("{e:#}"));
                eprintln!("grid: {task} {system} seed {seed} failed: {e:#}");
            }
        }
        write_status(&a.output_dir, &command, &a.seeds, &systems, &cells)?;
    }
    print!("{}", markdown(&command, &rows(&cells, &systems), &cells));
    anyhow::ensure!(
        failed == 0,
        "{failed} cell(s) failed; their errors are in {}",
        a.output_dir.join("grid.json").display()
    );
    Ok(())
}

fn fill(cell: &mut Cell, task: Task, r: &RunRecord) {
    let metric = task.metrics().first().copied().unwrap_or("accuracy");
    cell.score = r.dev_metrics.get(metric).map(|v| 100.0 * v);
    cell.seconds = Some(seconds_of(r));
}

/// Estimated seconds of one run of (task, system): the mean of its finished runs, else of the
/// task's finished runs with any system.
fn estimate(cells: &[Cell], task: &str, system: &str) -> Option<f64> {
    let mean = |f: &dyn Fn(&Cell) -> bool| {
        let v: Vec<f64> = cells
            .iter()
            .filter(|c| c.task == task && f(c))
            .filter_map(|c| c.seconds)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    mean(&|c| c.system == system).or_else(|| mean(&|_| true))
}

fn hours_left(rows: &[Row]) -> (f64, usize) {
    let mut hours = 0.0;
    let mut unknown = 0;
    for r in rows {
        match r.estimate_seconds {
            Some(s) => hours += s * r.todo.len() as f64 / 3600.0,
            None => unknown += r.todo.len(),
        }
    }
    (hours, unknown)
}

fn rows(cells: &[Cell], systems: &[String]) -> Vec<Row> {
    let mut tasks: Vec<&str> = Vec::new();
    for c in cells {
        if !tasks.contains(&c.task.as_str()) {
            tasks.push(&c.task);
        }
    }
    let mut out = Vec::new();
    for task in tasks {
        for system in systems {
            let of: Vec<&Cell> = cells
                .iter()
                .filter(|c| c.task == task && &c.system == system)
                .collect();
            let done: Vec<&Cell> = of.iter().copied().filter(|c| c.state == "done").collect();
            let scores: Vec<f64> = done.iter().filter_map(|c| c.score).collect();
            let (mean, sd) = if scores.is_empty() {
                (None, None)
            } else {
                let (m, s) = mean_sd(&scores);
                (Some(m), (scores.len() > 1).then_some(s))
            };
            let note = of
                .iter()
                .find(|c| matches!(c.state.as_str(), "no data here" | "no recipe"))
                .map(|c| c.state.clone())
                .or_else(|| {
                    let f = of.iter().filter(|c| c.state == "failed").count();
                    (f > 0).then(|| format!("{f} failed"))
                });
            out.push(Row {
                task: task.to_string(),
                system: system.clone(),
                metric: Task::from_name(task)
                    .ok()
                    .and_then(|t| t.metrics().first().map(|m| m.to_string())),
                done: done.iter().map(|c| c.seed).collect(),
                todo: of
                    .iter()
                    .filter(|c| matches!(c.state.as_str(), "missing" | "partial" | "failed"))
                    .map(|c| c.seed)
                    .collect(),
                mean,
                sd,
                estimate_seconds: estimate(cells, task, system),
                note,
            });
        }
    }
    out
}

fn seeds_text(s: &[u64]) -> String {
    if s.is_empty() {
        "–".into()
    } else {
        s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
    }
}

fn markdown(command: &str, rows: &[Row], cells: &[Cell]) -> String {
    let mut s = format!(
        "# Fine-tuning grid\n\nCommand: `{command}` (qattn {})\n\nDev scores ×100, mean ± sd \
         over the finished seeds (the task's first metric). Missing cells are named: the seeds \
         still to run, or why a row cannot run here.\n\n| task | system | metric | seeds done | \
         score | seeds to run | est. h left |\n|---|---|---|---|---:|---|---:|\n",
        qattn_train::provenance::BUILD.describe()
    );
    for r in rows {
        let score = match (r.mean, r.sd) {
            (Some(m), Some(sd)) => format!("{m:.2} ± {sd:.2}"),
            (Some(m), None) => format!("{m:.2}"),
            _ => "–".into(),
        };
        let todo = match &r.note {
            Some(n) if r.done.is_empty() && r.todo.is_empty() => n.clone(),
            Some(n) => format!("{} ({n})", seeds_text(&r.todo)),
            None => seeds_text(&r.todo),
        };
        let est = match (r.estimate_seconds, r.todo.len()) {
            (_, 0) if r.note.is_some() => "–".into(),
            (_, 0) => "0".into(),
            (Some(e), n) => format!("{:.1}", e * n as f64 / 3600.0),
            (None, _) => "?".into(),
        };
        s.push_str(&format!(
            "| {} | `{}` | {} | {} | {score} | {todo} | {est} |\n",
            r.task,
            r.system,
            r.metric.as_deref().unwrap_or("–"),
            seeds_text(&r.done)
        ));
    }
    let count = |st: &str| cells.iter().filter(|c| c.state == st).count();
    s.push_str(&format!(
        "\n{} cells: {} done, {} partial, {} missing, {} failed, {} without a recipe, {} without \
         data here.\n",
        cells.len(),
        count("done"),
        count("partial"),
        count("missing"),
        count("failed"),
        count("no recipe"),
        count("no data here")
    ));
    s
}

fn write_status(
    out: &Path,
    command: &str,
    seeds: &[u64],
    systems: &[String],
    cells: &[Cell],
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let rows = rows(cells, systems);
    let (hours_left, runs_without_estimate) = hours_left(&rows);
    let build = qattn_train::provenance::BUILD;
    let file = GridFile {
        command: command.to_string(),
        qattn_commit: build.commit_string(),
        qattn_dirty: build.dirty_flag(),
        seeds,
        systems,
        rows: rows.clone(),
        cells,
        hours_left,
        runs_without_estimate,
    };
    let json = serde_json::to_string_pretty(&file)? + "\n";
    qattn_model::io::write_atomic(&out.join("grid.json"), json.as_bytes())?;
    qattn_model::io::write_atomic(
        &out.join("grid.md"),
        markdown(command, &rows, cells).as_bytes(),
    )?;
    Ok(())
}
