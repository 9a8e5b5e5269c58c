//! `qattn glue report`: the run records of `qattn glue run` summarised per (task, attention).
//!
//! [`load_runs`] reads every `run.json` ([`RunRecord`]) under a directory, recursively;
//! [`aggregate`] groups them by (task, attention estimator) and computes, over seeds, the mean
//! and the sample standard deviation (divisor n − 1; none for a single seed) of every dev
//! metric and the mean training wall time; [`write_report`] writes, atomically:
//!
//! - `results.csv`: one row per (task, attention, metric), values as fractions;
//! - `results.md`: one Markdown table per task, metrics ×100 as `mean ± sd`;
//! - `results.tex`: the same as booktabs `tabular`s (`\usepackage{booktabs}`);
//! - `results.json`: every group with its metrics in the task's official order;
//! - `TASK.svg` and `TASK.png` per task: the task's first official metric (×100) per attention
//!   estimator, a point at the mean and a bar of ±1 sd over seeds.
//!
//! Groups are ordered by task ([`Task::ALL`] order; names that are not tasks after, by name)
//! and then by attention (`exact` first, then in natural order, so `multinomial:8` precedes
//! `multinomial:16`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::runner::RunRecord;
use crate::tasks::Task;
use qattn_plot::raster::{BLACK, Canvas, GRID, nice_ticks, svg_start, xml_escape};

/// Mean and spread of one quantity over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Number of values.
    pub n: usize,
    /// Their mean.
    pub mean: f64,
    /// Their sample standard deviation (divisor n − 1); `None` for a single value.
    pub sd: Option<f64>,
}

impl Stat {
    /// The statistics of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let n = values.len();
        if values.iter().all(|&v| v == values[0]) {
            // Exactly: the summed mean of equal values can be off in the last bit.
            return Some(Stat {
                n,
                mean: values[0],
                sd: (n > 1).then_some(0.0),
            });
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = (n > 1).then(|| {
            (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        });
        Some(Stat { n, mean, sd })
    }
}

/// One metric of a group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricStat {
    /// The metric name (`accuracy`, `mcc`, …).
    pub metric: String,
    /// Its statistics over the group's runs (fractions, as in the run records).
    #[serde(flatten)]
    pub stat: Stat,
}

/// The runs of one (task, attention) pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// Task name as in the run records.
    pub task: String,
    /// Attention estimator spec.
    pub attention: String,
    /// The models the runs fine-tuned (normally one).
    pub models: Vec<String>,
    /// The seeds, sorted (one per run).
    pub seeds: Vec<u64>,
    /// Every dev metric: the task's official metrics in order, then any others by name.
    pub metrics: Vec<MetricStat>,
    /// Mean training wall time (seconds), where the records have it.
    pub train_seconds_mean: Option<f64>,
}

impl Group {
    /// The statistics of `metric`, if the group has it.
    pub fn metric(&self, metric: &str) -> Option<&Stat> {
        self.metrics
            .iter()
            .find(|m| m.metric == metric)
            .map(|m| &m.stat)
    }
}

/// The aggregated runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Number of run records read.
    pub runs: usize,
    /// One entry per (task, attention), ordered as the module docs say.
    pub groups: Vec<Group>,
    /// Things worth a look: mixed models in a group, a seed recorded twice.
    pub warnings: Vec<String>,
}

impl Report {
    /// The tasks present, in report order.
    pub fn tasks(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for g in &self.groups {
            if !out.contains(&g.task.as_str()) {
                out.push(&g.task);
            }
        }
        out
    }

    /// The groups of `task`, in report order.
    pub fn task_groups(&self, task: &str) -> Vec<&Group> {
        self.groups.iter().filter(|g| g.task == task).collect()
    }

    /// The metric columns of `task`: its official metrics first, then any others present.
    pub fn task_metrics(&self, task: &str) -> Vec<String> {
        let mut out: Vec<String> = Task::from_name(task)
            .map(|t| t.metrics().iter().map(|m| m.to_string()).collect())
            .unwrap_or_default();
        let mut extra: Vec<String> = self
            .task_groups(task)
            .iter()
            .flat_map(|g| g.metrics.iter().map(|m| m.metric.clone()))
            .filter(|m| !out.contains(m))
            .collect();
        extra.sort();
        extra.dedup();
        out.retain(|m| self.task_groups(task).iter().any(|g| g.metric(m).is_some()));
        out.extend(extra);
        out
    }
}

/// Every `run.json` under `dir` (recursively, not following symbolic links), sorted.
pub fn find_runs(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    if !dir.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: not a directory of runs (expected TASK/ATTENTION/seed-S/run.json below it, as \
             `qattn glue run --output-dir` writes)",
            dir.display()
        )));
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let entry = entry.map_err(io(&d))?;
            let ty = entry.file_type().map_err(io(&entry.path()))?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() && entry.file_name() == "run.json" {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every run record under `dir` ([`find_runs`]). A file that is not a [`RunRecord`] is
/// an [`Error::Format`] naming it; no record at all is an [`Error::Invalid`].
pub fn load_runs(dir: &Path) -> Result<Vec<(PathBuf, RunRecord)>> {
    let paths = find_runs(dir)?;
    if paths.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no run.json below it (`qattn glue run --output-dir` writes \
             TASK/ATTENTION/seed-S/run.json)",
            dir.display()
        )));
    }
    paths
        .into_iter()
        .map(|p| read_run(&p).map(|r| (p, r)))
        .collect()
}

/// Reads one `run.json`: an [`Error::Io`] or an [`Error::Format`] naming the file.
pub fn read_run(path: &Path) -> Result<RunRecord> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        line: e.line(),
        message: format!("not a run record: {e}"),
    })
}

/// [`load_runs`] over several directories. The same run (task — official or command-line
/// spelling —, attention and seed) in two places is an [`Error::Invalid`] naming both files:
/// statistics over the union would count it twice or pick one silently.
pub fn load_runs_from(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, RunRecord)>> {
    let mut seen: std::collections::BTreeMap<(String, String, u64), PathBuf> = Default::default();
    let mut out = Vec::new();
    for dir in dirs {
        for (path, r) in load_runs(dir)? {
            let task = crate::tasks::Task::from_name(&r.task)
                .map(|t| t.name().to_string())
                .unwrap_or_else(|_| r.task.trim().to_ascii_lowercase());
            let key = (task, r.attention.clone(), r.seed);
            if let Some(first) = seen.insert(key, path.clone()) {
                return Err(Error::Invalid(format!(
                    "run records {} and {} are the same run (task {}, attention {}, seed {}): \
                     give each run once",
                    first.display(),
                    path.display(),
                    r.task,
                    r.attention,
                    r.seed
                )));
            }
            out.push((path, r));
        }
    }
    Ok(out)
}

/// Splits into runs of digits and of other characters, for natural ordering.
fn natural_key(s: &str) -> Vec<(bool, String)> {
    let mut out: Vec<(bool, String)> = Vec::new();
    for c in s.chars() {
        let digit = c.is_ascii_digit();
        match out.last_mut() {
            Some((d, chunk)) if *d == digit => chunk.push(c),
            _ => out.push((digit, c.to_string())),
        }
    }
    out
}

/// Natural order: digit runs compare as numbers.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (ka, kb) = (natural_key(a), natural_key(b));
    for ((da, ca), (db, cb)) in ka.iter().zip(&kb) {
        let ord = if *da && *db {
            let (ta, tb) = (ca.trim_start_matches('0'), cb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            ca.cmp(cb)
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ka.len().cmp(&kb.len()).then_with(|| a.cmp(b))
}

fn task_rank(task: &str) -> (usize, String) {
    let i = Task::from_name(task)
        .ok()
        .and_then(|t| Task::ALL.iter().position(|&x| x == t))
        .unwrap_or(Task::ALL.len());
    (i, task.to_string())
}

fn attention_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    (a != "exact")
        .cmp(&(b != "exact"))
        .then_with(|| natural_cmp(a, b))
}

/// The distinct values of `key` over `runs`, sorted.
fn distinct(runs: &[&RunRecord], key: impl Fn(&RunRecord) -> String) -> Vec<String> {
    let mut v: Vec<String> = runs.iter().map(|r| key(r)).collect();
    v.sort();
    v.dedup();
    v
}

/// Groups run records by (task, attention) and computes the statistics (see the module docs).
pub fn aggregate(records: &[RunRecord]) -> Report {
    let mut by: BTreeMap<(String, String), Vec<&RunRecord>> = BTreeMap::new();
    for r in records {
        by.entry((r.task.clone(), r.attention.clone()))
            .or_default()
            .push(r);
    }
    let mut warnings = Vec::new();
    let mut groups: Vec<Group> = by
        .into_iter()
        .map(|((task, attention), runs)| {
            let models = distinct(&runs, |r| r.model.clone());
            if models.len() > 1 {
                warnings.push(format!(
                    "{task} / {attention}: runs of different models are pooled ({})",
                    models.join(", ")
                ));
            }
            let poolings = distinct(&runs, |r| r.pooling.to_string());
            if poolings.len() > 1 {
                warnings.push(format!(
                    "{task} / {attention}: runs whose heads read different representations are \
                     pooled (pooling {})",
                    poolings.join(", ")
                ));
            }
            let mut seeds: Vec<u64> = runs.iter().map(|r| r.seed).collect();
            seeds.sort_unstable();
            for w in seeds.windows(2) {
                if w[0] == w[1] {
                    warnings.push(format!(
                        "{task} / {attention}: seed {} appears in more than one run record",
                        w[0]
                    ));
                }
            }
            let mut names: Vec<String> = Task::from_name(&task)
                .map(|t| t.metrics().iter().map(|m| m.to_string()).collect())
                .unwrap_or_default();
            let mut extra: Vec<String> = runs
                .iter()
                .flat_map(|r| r.dev_metrics.keys().cloned())
                .filter(|m| !names.contains(m))
                .collect();
            extra.sort();
            extra.dedup();
            names.extend(extra);
            let metrics = names
                .into_iter()
                .filter_map(|metric| {
                    let v: Vec<f64> = runs
                        .iter()
                        .filter_map(|r| r.dev_metrics.get(&metric).copied())
                        .collect();
                    Stat::of(&v).map(|stat| MetricStat { metric, stat })
                })
                .collect();
            let train: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.wall_seconds.get("train").copied())
                .collect();
            Group {
                task,
                attention,
                models,
                seeds,
                metrics,
                train_seconds_mean: Stat::of(&train).map(|s| s.mean),
            }
        })
        .collect();
    groups.sort_by(|a, b| {
        task_rank(&a.task)
            .cmp(&task_rank(&b.task))
            .then_with(|| attention_cmp(&a.attention, &b.attention))
    });
    warnings.dedup();
    Report {
        runs: records.len(),
        groups,
        warnings,
    }
}

/// A value ×100 with two decimals; `n/a` when not finite.
fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2}", 100.0 * x)
    } else {
        "n/a".to_string()
    }
}

/// How a metric is headed in the tables.
pub fn metric_label(metric: &str) -> String {
    match metric {
        "accuracy" => "Acc.".into(),
        "f1" => "F1".into(),
        "mcc" => "MCC".into(),
        "pearson" => "Pearson".into(),
        "spearman" => "Spearman".into(),
        "f1_macro" => "F1 (macro)".into(),
        "f1a" => "F1a".into(),
        "em" => "EM".into(),
        "gender_parity" => "Gender parity".into(),
        other => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The header of `results.csv`.
pub const CSV_HEADER: &str = "task,attention,metric,n,mean,sd,seeds,models,train_seconds_mean";

/// `results.csv`: [`CSV_HEADER`], then one row per (task, attention, metric); `mean` and `sd`
/// are fractions as in the run records (full precision), `sd` empty for a single seed, `seeds`
/// space-separated, `models` `;`-separated.
pub fn to_csv(report: &Report) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for g in &report.groups {
        let seeds = g
            .seeds
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        for m in &g.metrics {
            let row = [
                csv_field(&g.task),
                csv_field(&g.attention),
                csv_field(&m.metric),
                m.stat.n.to_string(),
                m.stat.mean.to_string(),
                m.stat.sd.map(|s| s.to_string()).unwrap_or_default(),
                csv_field(&seeds),
                csv_field(&g.models.join(";")),
                g.train_seconds_mean
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            ];
            out.push_str(&row.join(","));
            out.push('\n');
        }
    }
    out
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn cell(stat: Option<&Stat>, pm: &str) -> String {
    match stat {
        None => "–".to_string(),
        Some(s) => match s.sd {
            Some(sd) => format!("{}{pm}{}", pct(s.mean), pct(sd)),
            None => pct(s.mean),
        },
    }
}

fn seconds(s: Option<f64>) -> String {
    s.map(|s| format!("{s:.1}")).unwrap_or_else(|| "–".into())
}

/// `results.md`: a heading per task and a table with one row per attention estimator: seeds,
/// each metric ×100 as `mean ± sd`, mean training seconds.
pub fn to_markdown(report: &Report, command: &str) -> String {
    let mut out = String::from("# GLUE / SuperGLUE dev results\n\n");
    let _ = writeln!(
        out,
        "Written by `{command}` ({}) from {} run records. Dev metrics ×100, mean ± sample \
         standard deviation over seeds (no ± for a single seed); train s: mean training wall \
         time in seconds.",
        qattn_train::provenance::BUILD.describe(),
        report.runs
    );
    for task in report.tasks() {
        let metrics = report.task_metrics(task);
        let _ = write!(out, "\n## {}\n\n| attention | seeds |", md_escape(task));
        for m in &metrics {
            let _ = write!(out, " {} |", md_escape(&metric_label(m)));
        }
        out.push_str(" train s |\n|---|---:|");
        out.push_str(&"---:|".repeat(metrics.len() + 1));
        out.push('\n');
        for g in report.task_groups(task) {
            let _ = write!(
                out,
                "| `{}` | {} |",
                g.attention.replace('`', "'"),
                g.seeds.len()
            );
            for m in &metrics {
                let _ = write!(out, " {} |", cell(g.metric(m), " ± "));
            }
            let _ = writeln!(out, " {} |", seconds(g.train_seconds_mean));
        }
    }
    if !report.warnings.is_empty() {
        out.push_str("\n## Warnings\n\n");
        for w in &report.warnings {
            let _ = writeln!(out, "- {}", md_escape(w));
        }
    }
    out
}

/// Escapes LaTeX's special characters.
pub fn latex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            _ => out.push(c),
        }
    }
    out
}

/// `results.tex`: one booktabs `tabular` per task (`\toprule`, `\midrule`, `\bottomrule`),
/// metrics ×100 as `$mean \pm sd$`. Needs `\usepackage{booktabs}`.
pub fn to_latex(report: &Report, command: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "% Written by `{command}` ({}) from {} run records.\n% Dev metrics x100, mean \\pm \
         sample standard deviation over seeds; Train (s): mean training wall time.\n% Requires \
         \\usepackage{{booktabs}}.",
        qattn_train::provenance::BUILD.describe(),
        report.runs
    );
    for task in report.tasks() {
        let metrics = report.task_metrics(task);
        let _ = writeln!(out, "\n% {task}");
        let _ = writeln!(
            out,
            "\\begin{{tabular}}{{lr{}r}}",
            "r".repeat(metrics.len())
        );
        out.push_str("\\toprule\n");
        let _ = write!(out, "Attention ({}) & Seeds", latex_escape(task));
        for m in &metrics {
            let _ = write!(out, " & {}", latex_escape(&metric_label(m)));
        }
        out.push_str(" & Train (s) \\\\\n\\midrule\n");
        for g in report.task_groups(task) {
            let _ = write!(
                out,
                "\\texttt{{{}}} & {}",
                latex_escape(&g.attention),
                g.seeds.len()
            );
            for m in &metrics {
                let c = cell(g.metric(m), " \\pm ");
                if c == "–" {
                    out.push_str(" & --");
                } else {
                    let _ = write!(out, " & ${c}$");
                }
            }
            let s = seconds(g.train_seconds_mean);
            let _ = writeln!(
                out,
                " & {} \\\\",
                if s == "–" { "--".to_string() } else { s }
            );
        }
        out.push_str("\\bottomrule\n\\end{tabular}\n");
    }
    out
}

/// `results.json`: `{"command", "qattn_commit", "qattn_dirty" (the build that wrote it; null
/// when unknown), "runs", "groups": [{task, attention, models, seeds, metrics:
/// [{metric, n, mean, sd}], train_seconds_mean}], "warnings"}`; values are fractions.
pub fn to_json(report: &Report, command: &str) -> Result<String> {
    #[derive(Serialize)]
    struct Out<'a> {
        command: &'a str,
        qattn_commit: Option<&'static str>,
        qattn_dirty: Option<bool>,
        #[serde(flatten)]
        report: &'a Report,
    }
    let build = qattn_train::provenance::BUILD;
    serde_json::to_string_pretty(&Out {
        command,
        qattn_commit: build.commit,
        qattn_dirty: build.dirty_flag(),
        report,
    })
    .map(|s| s + "\n")
    .map_err(|e| Error::Invalid(format!("results.json: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Plots.

/// Longest estimator label drawn under the x axis (longer ones are shortened with `..`).
const MAX_LABEL: usize = 40;

/// One plotted estimator.
struct Point {
    label: String,
    mean: f64,
    sd: Option<f64>,
    n: usize,
}

/// Geometry shared by the SVG and the PNG (in SVG pixels).
struct Plot {
    title: String,
    y_label: String,
    points: Vec<Point>,
    w: f64,
    h: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    decimals: usize,
}

impl Plot {
    fn new(report: &Report, task: &str) -> Option<Plot> {
        let metric = report.task_metrics(task).into_iter().next()?;
        let points: Vec<Point> = report
            .task_groups(task)
            .into_iter()
            .filter_map(|g| {
                let s = g.metric(&metric)?;
                let mut label = g.attention.clone();
                if label.chars().count() > MAX_LABEL {
                    label = label.chars().take(MAX_LABEL - 2).collect::<String>() + "..";
                }
                (s.mean.is_finite()).then(|| Point {
                    label,
                    mean: 100.0 * s.mean,
                    sd: s.sd.filter(|x| x.is_finite()).map(|x| 100.0 * x),
                    n: s.n,
                })
            })
            .collect();
        if points.is_empty() {
            return None;
        }
        let lo_v = points
            .iter()
            .map(|p| p.mean - p.sd.unwrap_or(0.0))
            .fold(f64::INFINITY, f64::min);
        let hi_v = points
            .iter()
            .map(|p| p.mean + p.sd.unwrap_or(0.0))
            .fold(f64::NEG_INFINITY, f64::max);
        let (ticks, decimals) = nice_ticks(lo_v, hi_v, 5.0);
        let (lo, hi) = (ticks[0], ticks[ticks.len() - 1]);
        let longest = points
            .iter()
            .map(|p| p.label.chars().count())
            .max()
            .unwrap_or(0);
        let bottom = 40.0 + 6.0 * longest as f64;
        // The first label, slanted down to the left, must not leave the picture.
        let first = points[0].label.chars().count() as f64;
        let left = (4.5 * first - 25.0).max(70.0);
        let right = 20.0;
        let w = left + right + (70.0 * points.len() as f64).max(390.0);
        let h = 300.0 + bottom;
        Some(Plot {
            title: format!("{task}: dev {metric} by attention estimator (mean +- 1 sd over seeds)"),
            y_label: format!("{metric} x 100"),
            points,
            w,
            h,
            left,
            right,
            top: 40.0,
            bottom,
            lo,
            hi,
            ticks,
            decimals,
        })
    }

    fn y(&self, v: f64) -> f64 {
        self.top + (self.hi - v) / (self.hi - self.lo) * (self.h - self.top - self.bottom)
    }

    fn x(&self, i: usize) -> f64 {
        let band = (self.w - self.left - self.right) / self.points.len() as f64;
        self.left + (i as f64 + 0.5) * band
    }

    fn axis_y(&self) -> f64 {
        self.h - self.bottom
    }
}

/// `TASK.svg`: the task's first official metric (×100) per attention estimator — a
/// `<circle class="point">` at the mean and a `<line class="errorbar">` over ±1 sd (no bar for
/// a single seed) — with axes, ticks, grid, labels and a title. `None` when the task has no
/// finite value to plot.
pub fn to_svg(report: &Report, task: &str) -> Option<String> {
    let p = Plot::new(report, task)?;
    let mut s = svg_start(p.w, p.h, p.w / 2.0, &p.title.replace("+-", "±"));
    let (x0, x1, ay) = (p.left, p.w - p.right, p.axis_y());
    for &t in &p.ticks {
        let y = p.y(t);
        let _ = writeln!(
            s,
            "<line class=\"grid\" x1=\"{x0:.1}\" y1=\"{y:.1}\" x2=\"{x1:.1}\" y2=\"{y:.1}\" \
             stroke=\"#dddddd\"/>"
        );
        let _ = writeln!(
            s,
            "<line class=\"tick\" x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{x0:.1}\" y2=\"{y:.1}\" \
             stroke=\"black\"/>",
            x0 - 5.0
        );
        let _ = writeln!(
            s,
            "<text class=\"tick-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.*}</text>",
            x0 - 8.0,
            y + 4.0,
            p.decimals,
            t
        );
    }
    let _ = writeln!(
        s,
        "<line class=\"axis\" x1=\"{x0:.1}\" y1=\"{:.1}\" x2=\"{x0:.1}\" y2=\"{ay:.1}\" \
         stroke=\"black\"/>",
        p.top
    );
    let _ = writeln!(
        s,
        "<line class=\"axis\" x1=\"{x0:.1}\" y1=\"{ay:.1}\" x2=\"{x1:.1}\" y2=\"{ay:.1}\" \
         stroke=\"black\"/>"
    );
    let ymid = (p.top + ay) / 2.0;
    let _ = writeln!(
        s,
        "<text class=\"axis-label\" x=\"18\" y=\"{ymid:.1}\" text-anchor=\"middle\" \
         transform=\"rotate(-90 18 {ymid:.1})\">{}</text>",
        xml_escape(&p.y_label.replace(" x ", " × "))
    );
    for (i, pt) in p.points.iter().enumerate() {
        let x = p.x(i);
        let _ = writeln!(
            s,
            "<line class=\"xtick\" x1=\"{x:.1}\" y1=\"{ay:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" \
             stroke=\"black\"/>",
            ay + 5.0
        );
        let ly = ay + 14.0;
        let _ = writeln!(
            s,
            "<text class=\"estimator\" x=\"{x:.1}\" y=\"{ly:.1}\" text-anchor=\"end\" \
             transform=\"rotate(-45 {x:.1} {ly:.1})\">{}</text>",
            xml_escape(&pt.label)
        );
        if let Some(sd) = pt.sd {
            let (ya, yb) = (p.y(pt.mean + sd), p.y(pt.mean - sd));
            let _ = writeln!(
                s,
                "<line class=\"errorbar\" x1=\"{x:.1}\" y1=\"{ya:.1}\" x2=\"{x:.1}\" y2=\"{yb:.1}\" \
                 stroke=\"#1f77b4\" stroke-width=\"1.5\"/>"
            );
            let _ = writeln!(
                s,
                "<path class=\"errorbar-cap\" d=\"M{:.1} {ya:.1}H{:.1}M{:.1} {yb:.1}H{:.1}\" \
                 stroke=\"#1f77b4\" stroke-width=\"1.5\" fill=\"none\"/>",
                x - 5.0,
                x + 5.0,
                x - 5.0,
                x + 5.0
            );
        }
        let tip = match pt.sd {
            Some(sd) => format!("{}: {:.2} ± {:.2} (n={})", pt.label, pt.mean, sd, pt.n),
            None => format!("{}: {:.2} (n={})", pt.label, pt.mean, pt.n),
        };
        let _ = writeln!(
            s,
            "<circle class=\"point\" cx=\"{x:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#1f77b4\"><title>{}</title></circle>",
            p.y(pt.mean),
            xml_escape(&tip)
        );
    }
    s.push_str("</svg>\n");
    Some(s)
}

// PNG: drawn with the rasteriser of [`qattn_plot::raster`] at twice the SVG's scale.

const PNG_SCALE: f64 = 2.0;

/// The colour of points and error bars (`#1f77b4`).
pub const POINT_RGB: [u8; 3] = [0x1f, 0x77, 0xb4];

/// `TASK.png`: the plot of [`to_svg`] rasterised at twice its scale (8-bit RGB). Points are
/// discs of colour [`POINT_RGB`] centred at [`png_point_centres`]. `None` when the task has no
/// finite value to plot.
pub fn to_png(report: &Report, task: &str) -> Option<Vec<u8>> {
    let p = Plot::new(report, task)?;
    let s = PNG_SCALE;
    let mut c = Canvas::new((p.w * s) as usize, (p.h * s) as usize);
    let (x0, x1, ay) = (p.left * s, (p.w - p.right) * s, p.axis_y() * s);
    for &t in &p.ticks {
        let y = p.y(t) * s;
        c.hline(x0, x1, y, 1, GRID);
        c.hline(x0 - 10.0, x0, y, 2, BLACK);
        let label = format!("{:.*}", p.decimals, t);
        let wpx = label.chars().count() as f64 * 12.0;
        c.text(x0 - 16.0 - wpx, y - 7.0, &label, 2, false, BLACK);
    }
    c.vline(x0, p.top * s, ay, 2, BLACK);
    c.hline(x0, x1, ay, 2, BLACK);
    let title_w = p.title.chars().count() as f64 * 12.0;
    c.text((p.w * s - title_w) / 2.0, 14.0, &p.title, 2, false, BLACK);
    let ylab_h = p.y_label.chars().count() as f64 * 12.0;
    c.text(
        12.0,
        (p.top * s + ay) / 2.0 + ylab_h / 2.0,
        &p.y_label,
        2,
        true,
        BLACK,
    );
    for (i, pt) in p.points.iter().enumerate() {
        let x = p.x(i) * s;
        c.vline(x, ay, ay + 10.0, 2, BLACK);
        let len = pt.label.chars().count() as f64 * 12.0;
        c.text(x - 7.0, ay + 18.0 + len, &pt.label, 2, true, BLACK);
        if let Some(sd) = pt.sd {
            let (ya, yb) = (p.y(pt.mean + sd) * s, p.y(pt.mean - sd) * s);
            c.vline(x, ya, yb, 3, POINT_RGB);
            c.hline(x - 10.0, x + 10.0, ya, 3, POINT_RGB);
            c.hline(x - 10.0, x + 10.0, yb, 3, POINT_RGB);
        }
        c.disc(x, p.y(pt.mean) * s, 8.0, POINT_RGB);
    }
    Some(c.encode_png())
}

/// The pixel centres of the PNG's points, in estimator order (for checking a rendering).
pub fn png_point_centres(report: &Report, task: &str) -> Vec<(usize, usize)> {
    Plot::new(report, task)
        .map(|p| {
            (0..p.points.len())
                .map(|i| {
                    (
                        (p.x(i) * PNG_SCALE) as usize,
                        (p.y(p.points[i].mean) * PNG_SCALE) as usize,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The aggregated report.
    pub report: Report,
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
}

/// A file name for a task's plot (`TASK.svg`): the task name with anything but ASCII letters,
/// digits, `-`, `_` and `.` replaced by `_`.
pub fn plot_stem(task: &str) -> String {
    task.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Reads the runs under `runs_dir`, aggregates them and writes every export into `out_dir`
/// (created if needed), each file atomically. `command` is the command line named in the
/// Markdown, LaTeX and JSON outputs.
pub fn write_report(runs_dir: &Path, out_dir: &Path, command: &str) -> Result<Written> {
    let records: Vec<RunRecord> = load_runs(runs_dir)?.into_iter().map(|(_, r)| r).collect();
    let report = aggregate(&records);
    std::fs::create_dir_all(out_dir).map_err(|source| Error::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut outputs: Vec<(PathBuf, Vec<u8>)> = vec![
        (out_dir.join("results.csv"), to_csv(&report).into_bytes()),
        (
            out_dir.join("results.md"),
            to_markdown(&report, command).into_bytes(),
        ),
        (
            out_dir.join("results.tex"),
            to_latex(&report, command).into_bytes(),
        ),
        (
            out_dir.join("results.json"),
            to_json(&report, command)?.into_bytes(),
        ),
    ];
    for task in report.tasks() {
        let stem = plot_stem(task);
        if let Some(svg) = to_svg(&report, task) {
            outputs.push((out_dir.join(format!("{stem}.svg")), svg.into_bytes()));
        }
        if let Some(png) = to_png(&report, task) {
            outputs.push((out_dir.join(format!("{stem}.png")), png));
        }
    }
    let mut files = Vec::new();
    for (path, bytes) in outputs {
        qattn_model::io::write_atomic(&path, &bytes)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        files.push(path);
    }
    Ok(Written { report, files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(
        task: &str,
        attention: &str,
        seed: u64,
        metrics: &[(&str, f64)],
        train: f64,
    ) -> RunRecord {
        let m: BTreeMap<&str, f64> = metrics.iter().copied().collect();
        serde_json::from_value(json!({
            "task": task, "model": "tiny", "attention": attention, "seed": seed,
            "training_args": {}, "git_sha": null, "machine": {}, "dev_metrics": m,
            "predictions": [], "wall_seconds": {"train": train, "eval": 1.0},
            "train_tokens_per_second": 1.0, "peak_rss_mb": null, "train_examples": 10,
            "dev_examples": 5, "unix_time": 0
        }))
        .unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// rte: exact (2 seeds), multinomial:16 (3 seeds), multinomial:8 (1 seed); cola: exact.
    fn sample() -> Report {
        aggregate(&[
            rec("rte", "multinomial:16", 3, &[("accuracy", 0.50)], 30.0),
            rec("rte", "exact", 1, &[("accuracy", 0.60)], 10.0),
            rec("rte", "multinomial:16", 1, &[("accuracy", 0.40)], 30.0),
            rec("rte", "exact", 2, &[("accuracy", 0.70)], 20.0),
            rec("rte", "multinomial:8", 1, &[("accuracy", 0.45)], 5.0),
            rec("rte", "multinomial:16", 2, &[("accuracy", 0.60)], 60.0),
            rec("cola", "exact", 1, &[("mcc", 0.30)], 1.0),
            rec("cola", "exact", 2, &[("mcc", 0.50)], 3.0),
        ])
    }

    #[test]
    fn stat_is_the_mean_and_the_sample_sd() {
        let s = Stat::of(&[0.5, 0.6, 0.7]).unwrap();
        assert_eq!(s.n, 3);
        assert!(close(s.mean, 0.6));
        // Σ(x − m)² = 0.01 + 0 + 0.01 = 0.02; / (n − 1) = 0.01; √ = 0.1.
        assert!(close(s.sd.unwrap(), 0.1));
        let s = Stat::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        // mean 2.5; Σ = 2.25 + 0.25 + 0.25 + 2.25 = 5; / 3; √.
        assert!(close(s.mean, 2.5));
        assert!(close(s.sd.unwrap(), (5.0f64 / 3.0).sqrt()));
        assert_eq!(Stat::of(&[0.42]).unwrap().sd, None);
        assert_eq!(Stat::of(&[0.72, 0.72, 0.72]).unwrap().sd, Some(0.0));
        assert_eq!(Stat::of(&[]), None);
    }

    #[test]
    fn groups_by_task_and_attention_in_report_order() {
        let r = sample();
        assert_eq!(r.runs, 8);
        let keys: Vec<(&str, &str)> = r
            .groups
            .iter()
            .map(|g| (g.task.as_str(), g.attention.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("cola", "exact"),
                ("rte", "exact"),
                ("rte", "multinomial:8"),
                ("rte", "multinomial:16"),
            ]
        );
        let exact = &r.groups[1];
        assert_eq!(exact.seeds, [1, 2]);
        let acc = exact.metric("accuracy").unwrap();
        assert!(close(acc.mean, 0.65));
        // (0.05² + 0.05²) / 1 = 0.005.
        assert!(close(acc.sd.unwrap(), 0.005f64.sqrt()));
        assert_eq!(exact.train_seconds_mean, Some(15.0));
        let m16 = &r.groups[3];
        assert_eq!(m16.seeds, [1, 2, 3]);
        assert!(close(m16.metric("accuracy").unwrap().mean, 0.5));
        assert!(close(m16.metric("accuracy").unwrap().sd.unwrap(), 0.1));
        assert_eq!(m16.train_seconds_mean, Some(40.0));
        assert_eq!(r.groups[2].metric("accuracy").unwrap().sd, None);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn runs_with_different_head_poolings_are_warned_when_pooled() {
        let mut mean = rec("rte", "exact", 2, &[("accuracy", 0.6)], 1.0);
        mean.pooling = qattn_model::Pooling::Mean;
        let r = aggregate(&[
            rec("rte", "exact", 1, &[("accuracy", 0.5)], 1.0),
            mean.clone(),
        ]);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].contains("rte / exact") && r.warnings[0].contains("pooling cls, mean"),
            "{:?}",
            r.warnings
        );
        let mut mean3 = mean.clone();
        mean3.seed = 3;
        assert!(aggregate(&[mean, mean3]).warnings.is_empty());
    }

    #[test]
    fn metrics_follow_the_official_order_and_duplicates_are_warned() {
        let r = aggregate(&[
            rec("mrpc", "exact", 1, &[("accuracy", 0.8), ("f1", 0.9)], 1.0),
            rec("mrpc", "exact", 1, &[("accuracy", 0.7), ("f1", 0.8)], 1.0),
        ]);
        let names: Vec<&str> = r.groups[0]
            .metrics
            .iter()
            .map(|m| m.metric.as_str())
            .collect();
        assert_eq!(names, ["f1", "accuracy"]);
        assert_eq!(r.task_metrics("mrpc"), ["f1", "accuracy"]);
        assert!(
            r.warnings[0].contains("seed 1 appears in more than one"),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn natural_order_of_specs() {
        let mut v = vec![
            "topk:4:16",
            "multinomial:16",
            "exact",
            "multinomial:8",
            "cv:2:8",
        ];
        v.sort_by(|a, b| attention_cmp(a, b));
        assert_eq!(
            v,
            [
                "exact",
                "cv:2:8",
                "multinomial:8",
                "multinomial:16",
                "topk:4:16"
            ]
        );
    }

    #[test]
    fn csv_has_the_header_and_one_row_per_metric() {
        let csv = to_csv(&sample());
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines.len(), 1 + 4);
        let f: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(f[..5], ["cola", "exact", "mcc", "2", "0.4"]);
        // sd of (0.3, 0.5): √((0.1² + 0.1²) / 1) = √0.02.
        assert!(close(f[5].parse::<f64>().unwrap(), 0.02f64.sqrt()));
        assert_eq!(f[6..], ["1 2", "tiny", "2"]);
        assert!(
            lines[3].starts_with("rte,multinomial:8,accuracy,1,0.45,,1,tiny,5"),
            "{}",
            lines[3]
        );
        let quoted = to_csv(&aggregate(&[rec(
            "rte",
            "a,b",
            1,
            &[("accuracy", 0.5)],
            1.0,
        )]));
        assert!(quoted.lines().nth(1).unwrap().starts_with("rte,\"a,b\","));
    }

    #[test]
    fn markdown_has_one_table_per_task() {
        let md = to_markdown(&sample(), "qattn glue report --runs R --output-dir O");
        assert!(md.contains("`qattn glue report --runs R --output-dir O`"));
        assert!(md.contains("from 8 run records"));
        assert!(
            md.contains("## cola\n\n| attention | seeds | MCC | train s |\n|---|---:|---:|---:|\n")
        );
        assert!(md.contains("| `exact` | 2 | 40.00 ± 14.14 | 2.0 |"), "{md}");
        assert!(md.contains("## rte\n\n| attention | seeds | Acc. | train s |"));
        assert!(md.contains("| `exact` | 2 | 65.00 ± 7.07 | 15.0 |"));
        assert!(md.contains("| `multinomial:8` | 1 | 45.00 | 5.0 |"), "{md}");
        assert!(md.contains("| `multinomial:16` | 3 | 50.00 ± 10.00 | 40.0 |"));
        assert!(md.find("`multinomial:8`").unwrap() < md.find("`multinomial:16`").unwrap());
    }

    #[test]
    fn latex_uses_booktabs() {
        let tex = to_latex(&sample(), "qattn glue report");
        assert_eq!(tex.matches("\\begin{tabular}{lrrr}").count(), 2);
        assert_eq!(tex.matches("\\toprule").count(), 2);
        assert_eq!(tex.matches("\\midrule").count(), 2);
        assert_eq!(tex.matches("\\bottomrule").count(), 2);
        assert_eq!(tex.matches("\\end{tabular}").count(), 2);
        assert!(tex.contains("Attention (rte) & Seeds & Acc. & Train (s) \\\\"));
        assert!(
            tex.contains("\\texttt{exact} & 2 & $65.00 \\pm 7.07$ & 15.0 \\\\"),
            "{tex}"
        );
        assert!(tex.contains("\\texttt{multinomial:8} & 1 & $45.00$ & 5.0 \\\\"));
        assert!(!tex.contains('±'), "LaTeX gets \\pm, not the Unicode sign");
        assert_eq!(
            latex_escape("a_b&c%d#e$f{g}h~i^j\\"),
            "a\\_b\\&c\\%d\\#e\\$f\\{g\\}h\\textasciitilde{}i\\textasciicircum{}j\\textbackslash{}"
        );
    }

    #[test]
    fn json_has_every_group_and_field() {
        let v: serde_json::Value =
            serde_json::from_str(&to_json(&sample(), "qattn glue report").unwrap()).unwrap();
        assert_eq!(v["command"], "qattn glue report");
        // The build that wrote the report, as embedded at build time.
        let build = qattn_train::provenance::BUILD;
        assert_eq!(v["qattn_commit"].as_str(), build.commit);
        assert_eq!(v["qattn_dirty"].as_bool(), build.dirty_flag());
        assert!(v.as_object().unwrap().contains_key("qattn_commit"));
        let md = to_markdown(&sample(), "qattn glue report");
        assert!(md.contains(&build.describe()), "{md}");
        assert_eq!(v["runs"], 8);
        assert_eq!(v["groups"].as_array().unwrap().len(), 4);
        let g = &v["groups"][1];
        assert_eq!(g["task"], "rte");
        assert_eq!(g["attention"], "exact");
        assert_eq!(g["models"], json!(["tiny"]));
        assert_eq!(g["seeds"], json!([1, 2]));
        assert_eq!(g["train_seconds_mean"], 15.0);
        assert_eq!(g["metrics"][0]["metric"], "accuracy");
        assert_eq!(g["metrics"][0]["n"], 2);
        assert!(close(g["metrics"][0]["mean"].as_f64().unwrap(), 0.65));
        assert!(close(
            g["metrics"][0]["sd"].as_f64().unwrap(),
            0.005f64.sqrt()
        ));
        assert_eq!(v["groups"][2]["metrics"][0]["sd"], serde_json::Value::Null);
        assert_eq!(v["warnings"], json!([]));
    }

    /// Tags balance, and text holds no raw `<` or stray `&`.
    fn assert_xmlish(doc: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = doc;
        while let Some(start) = rest.find('<') {
            let text = &rest[..start];
            for (i, _) in text.match_indices('&') {
                let ent = &text[i..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;"]
                        .iter()
                        .any(|e| ent.starts_with(e)),
                    "stray & in {text:?}"
                );
            }
            let end = rest[start..].find('>').expect("unclosed <") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "< inside a tag: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.trim()),
                    "mismatched </{name}>"
                );
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap().to_string());
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
    }

    #[test]
    fn svg_has_one_point_and_one_error_bar_per_estimator() {
        let r = aggregate(&[
            rec("rte", "exact", 1, &[("accuracy", 0.60)], 1.0),
            rec("rte", "exact", 2, &[("accuracy", 0.70)], 1.0),
            rec("rte", "multinomial:16", 1, &[("accuracy", 0.40)], 1.0),
            rec("rte", "multinomial:16", 2, &[("accuracy", 0.60)], 1.0),
            rec("rte", "a<b&c", 1, &[("accuracy", 0.50)], 1.0),
            rec("rte", "a<b&c", 2, &[("accuracy", 0.55)], 1.0),
        ]);
        let svg = to_svg(&r, "rte").unwrap();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert_xmlish(&svg);
        assert_eq!(svg.matches("<circle class=\"point\"").count(), 3);
        assert_eq!(svg.matches("<line class=\"errorbar\"").count(), 3);
        assert_eq!(svg.matches("<line class=\"axis\"").count(), 2);
        assert!(svg.matches("<line class=\"tick\"").count() >= 2);
        assert!(svg.contains(">accuracy × 100</text>"));
        assert!(svg.contains("rte: dev accuracy by attention estimator (mean ± 1 sd over seeds)"));
        assert!(svg.contains(">exact</text>") && svg.contains(">a&lt;b&amp;c</text>"));
        assert!(svg.contains("<title>exact: 65.00 ± 7.07 (n=2)</title>"));
        // The mean sits between the ends of its bar.
        let p = Plot::new(&r, "rte").unwrap();
        let (ya, ym, yb) = (p.y(72.07), p.y(65.0), p.y(57.93));
        assert!(ya < ym && ym < yb);
        // A single seed: a point, no bar.
        let one = aggregate(&[rec(
            "cb",
            "exact",
            1,
            &[("accuracy", 0.8), ("f1_macro", 0.7)],
            1.0,
        )]);
        let svg = to_svg(&one, "cb").unwrap();
        assert_xmlish(&svg);
        assert_eq!(svg.matches("<circle class=\"point\"").count(), 1);
        assert_eq!(svg.matches("<line class=\"errorbar\"").count(), 0);
        assert!(to_svg(&one, "rte").is_none());
    }

    #[test]
    fn png_is_a_valid_rgb_image_with_the_points_drawn() {
        let r = sample();
        let png = to_png(&r, "rte").unwrap();
        let img = qattn_plot::raster::decode_png(&png).unwrap();
        let w = img.width();
        let pixel = |x: usize, y: usize| img.pixel(x, y).unwrap();
        let centres = png_point_centres(&r, "rte");
        assert_eq!(centres.len(), 3);
        for (x, y) in centres {
            assert_eq!(pixel(x, y), POINT_RGB);
        }
        assert_eq!(pixel(w - 1, 0), [255, 255, 255]);
        assert!(
            (0..img.height()).any(|y| (0..w).any(|x| pixel(x, y) == [0, 0, 0])),
            "axes and text are black"
        );
    }

    #[test]
    fn load_runs_names_bad_files_and_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_runs(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no run.json"), "{err}");
        let p = dir.path().join("rte/exact/seed-1");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("run.json"), "{\"task\": 1}").unwrap();
        let err = load_runs(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("seed-1/run.json") && err.contains("not a run record"),
            "{err}"
        );
        let err = load_runs(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(err.contains("not a directory of runs"), "{err}");
    }

    #[test]
    fn write_report_writes_every_file() {
        let runs = tempfile::tempdir().unwrap();
        for (att, seed, acc) in [
            ("exact", 1, 0.6),
            ("exact", 2, 0.7),
            ("multinomial:8", 1, 0.5),
        ] {
            let d = runs
                .path()
                .join("rte")
                .join(crate::runner::slug(att))
                .join(format!("seed-{seed}"));
            std::fs::create_dir_all(&d).unwrap();
            let r = rec("rte", att, seed, &[("accuracy", acc)], 2.0);
            std::fs::write(d.join("run.json"), serde_json::to_string(&r).unwrap()).unwrap();
            std::fs::create_dir_all(d.join("model")).unwrap();
        }
        let out = runs.path().join("out");
        let w = write_report(runs.path(), &out, "qattn glue report").unwrap();
        let names: Vec<String> = w
            .files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "results.csv",
                "results.md",
                "results.tex",
                "results.json",
                "rte.svg",
                "rte.png"
            ]
        );
        let mut on_disk: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        assert_eq!(on_disk.len(), 6, "no temporaries left: {on_disk:?}");
        assert_eq!(w.report.groups.len(), 2);
    }
}
