//! What `bench model` and `bench train` share: MiniLM measured by a qattn example and by an HF
//! transformers script side by side, one process per configuration, on a quiet machine.
//!
//! [`run_suite`] makes sure `benchmarks/.venv` has torch, numpy and transformers (install
//! what is missing, or say plainly that the PyTorch rows stay empty), finds the model's
//! snapshot in the cache, builds the suite's example once and runs a private copy of it, runs
//! every configuration of the plan as its own process (so each peak RSS is that
//! configuration's own), reads the JSON each writes under `benchmarks/results/raw/<suite>/`,
//! and turns the measurements into rows with ratios. [`compare_target`] turns rows into a
//! target of an issue, [`markdown`] a report into its page.
//!
//! Other work on the machine (a build, a test run) slows whatever runs meanwhile, and on a
//! 2-core machine it can turn a ratio upside down. So before each configuration the suite
//! waits (a while) for the machine to go quiet, measures how many cores other processes used
//! while the configuration ran (`/proc/stat` busy time minus the process's own CPU time, over
//! its wall time), runs a disturbed configuration once more, reports that load per row, and
//! [`compare_target`] marks a target fed by a disturbed row as unreliable rather than met or
//! not met.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use super::{
    Provenance, Status, Target, available_threads, cell, ensure_torch, estimator_order, read_json,
    sig3, target_directory, targets_markdown, threshold_target, write_results,
};
use crate::{cargo, run};

/// The benchmarked model (Hub id; read offline from the cache).
pub(crate) const MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// Sequences per batch.
pub(crate) const BATCH: u64 = 32;
/// Tokens per sequence (no padding).
pub(crate) const SEQ: u64 = 128;
/// Row label of HF transformers with `attn_implementation="eager"`.
pub(crate) const EAGER: &str = "pytorch-eager";
/// Row label of HF transformers with `attn_implementation="sdpa"`.
pub(crate) const SDPA: &str = "pytorch-sdpa";
/// Row label (and spec) of qattn with exact attention.
pub(crate) const EXACT: &str = "exact";
/// The environment variable naming the Hugging Face cache to read the model from.
const CACHE_ENV: &str = "QATTN_HF_CACHE";
/// Cores other processes may use on average while a configuration runs; above this the
/// configuration is disturbed: it runs again, and targets it feeds are unreliable.
pub(crate) const OTHER_LOAD_MAX: f64 = 0.2;
/// Runs of one configuration at most (another only when the previous one was disturbed).
pub(crate) const ATTEMPTS: usize = 3;
/// How long to wait, before each configuration, for other processes to go quiet.
const IDLE_WAIT_MAX: Duration = Duration::from_secs(120);
/// How long other processes must stay quiet before a configuration starts (builds pause
/// between crates, so one quiet second says little).
const QUIET_WINDOW: Duration = Duration::from_secs(3);
/// Linux's `USER_HZ`: `/proc/stat` counts clock ticks of 1/100 s.
const USER_HZ: f64 = 100.0;

/// The options of `cargo xtask bench model` and `bench train`.
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) cache_dir: Option<PathBuf>,
    /// Write the results even from a dirty tree (they say so).
    pub(crate) allow_dirty: bool,
    /// The workload's batch × sequence length.
    pub(crate) shape: Shape,
}

/// A workload's batch size and sequence length (tokens per sequence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) batch: u64,
    pub(crate) seq: u64,
}

/// The suites' standard workload, batch [`BATCH`] × [`SEQ`] tokens.
pub(crate) const DEFAULT_SHAPE: Shape = Shape {
    batch: BATCH,
    seq: SEQ,
};

/// The longest `--seq` (MiniLM's position table).
const MAX_SEQ: u64 = 512;

impl Shape {
    /// The results' base name: the suite's name for the standard shape, else
    /// `{suite}-b{batch}x{seq}` (e.g. `model-b1x16`), so a latency run does not overwrite the
    /// throughput results.
    pub(crate) fn results_name(self, suite: &str) -> String {
        if self == DEFAULT_SHAPE {
            suite.to_owned()
        } else {
            format!("{suite}-b{}x{}", self.batch, self.seq)
        }
    }

    /// How many times more warm-up and timed units than the standard shape: a small workload
    /// takes milliseconds, and its median needs more passes (at most 30×).
    pub(crate) fn pass_scale(self) -> u64 {
        ((BATCH * SEQ) / (self.batch * self.seq).max(1)).clamp(1, 30)
    }
}

fn positive(flag: &str, value: Option<&&str>, max: u64) -> std::result::Result<u64, String> {
    let v = value.ok_or_else(|| format!("{flag} needs a number"))?;
    match v.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{flag}: {v:?} is not a whole number in 1..={max}")),
    }
}

/// Parses `[--quick] [--cache-dir DIR] [--allow-dirty] [--batch N] [--seq N]` of
/// `cargo xtask bench {suite}`.
pub(crate) fn parse_options(suite: &str, args: &[&str]) -> std::result::Result<Options, String> {
    let mut opts = Options {
        quick: false,
        cache_dir: None,
        allow_dirty: false,
        shape: DEFAULT_SHAPE,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--quick" => opts.quick = true,
            "--allow-dirty" => opts.allow_dirty = true,
            "--batch" => opts.shape.batch = positive("--batch", it.next(), 4096)?,
            "--seq" => opts.shape.seq = positive("--seq", it.next(), MAX_SEQ)?,
            "--cache-dir" => match it.next() {
                Some(dir) => opts.cache_dir = Some(PathBuf::from(dir)),
                None => return Err("--cache-dir needs a folder".to_owned()),
            },
            other => {
                return Err(format!(
                    "unknown option for `cargo xtask bench {suite}`: {other}"
                ));
            }
        }
    }
    Ok(opts)
}

/// The names one suite uses for what it times, in its JSON, flags and pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Schema {
    /// The raw JSON's list of timed durations (`times_s`, `step_times_s`).
    pub(crate) times: &'static str,
    /// The flag and JSON key of the number of timed units (`iters`, `steps`).
    pub(crate) count: &'static str,
    /// The row key of batch / median (`seqs_per_s`, `samples_per_s`).
    pub(crate) rate: &'static str,
    /// A sanity-check value of the raw JSON, copied into the row under the same key.
    pub(crate) check: &'static str,
    /// What one timed unit is, in "s/…" (`batch`, `step`).
    pub(crate) unit: &'static str,
    /// What the batch holds, in "…/s" (`sequences`, `samples`).
    pub(crate) items: &'static str,
    /// The heading of the column of ratios to qattn exact.
    pub(crate) exact_column: &'static str,
}

/// A value serialised under a key chosen at run time; flattened into the struct holding it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Named<T> {
    pub(crate) key: &'static str,
    pub(crate) value: T,
}

impl<T: Serialize> Serialize for Named<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(self.key, &self.value)?;
        map.end()
    }
}

/// Untimed and timed units (forward passes, training steps) per configuration.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub(crate) struct Passes {
    pub(crate) warmup: u64,
    #[serde(flatten)]
    pub(crate) timed: Named<u64>,
}

impl Passes {
    /// 1 warm-up and 3 timed units when `quick`, else 2 and `full`; each times `scale`.
    pub(crate) fn new(schema: &Schema, quick: bool, full: u64, scale: u64) -> Self {
        let (warmup, timed) = if quick { (1, 3) } else { (2, full) };
        let (warmup, timed) = (warmup * scale, timed * scale);
        Passes {
            warmup,
            timed: Named {
                key: schema.count,
                value: timed,
            },
        }
    }
}

/// One process to run: a configuration, and which of its runs this is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) config: String,
    /// 1, or 2 for the repeat of the baselines at the end.
    pub(crate) run: u8,
}

impl Run {
    pub(crate) fn new(config: &str, run: u8) -> Self {
        Run {
            config: config.to_owned(),
            run,
        }
    }

    /// `exact`, or `exact (run 2)`.
    pub(crate) fn label(&self) -> String {
        if self.run == 1 {
            self.config.clone()
        } else {
            format!("{} (run {})", self.config, self.run)
        }
    }

    /// The raw JSON's file name of an attempt: `exact.json`, `stratified_8.json`,
    /// `exact.run2.json`, and `exact.attempt2.json` for a repeat of a disturbed attempt.
    pub(crate) fn file_name(&self, attempt: usize) -> String {
        let mut stem = self.config.replace(':', "_");
        if self.run != 1 {
            stem.push_str(&format!(".run{}", self.run));
        }
        if attempt != 1 {
            stem.push_str(&format!(".attempt{attempt}"));
        }
        format!("{stem}.json")
    }
}

/// Every process in the order it runs. The comparison the targets are about, PyTorch eager,
/// our exact and PyTorch sdpa, runs first and again, mirrored, last: our exact run sits
/// between the PyTorch runs each time, and the two runs show how far the machine drifted
/// meanwhile. `middle` (the Monte-Carlo configurations) runs once, in between.
pub(crate) fn mirrored_plan(middle: &[String]) -> Vec<Run> {
    let mut runs: Vec<Run> = [EAGER, EXACT, SDPA]
        .iter()
        .map(|c| Run::new(c, 1))
        .collect();
    runs.extend(middle.iter().map(|c| Run::new(c, 1)));
    runs.extend([SDPA, EXACT, EAGER].iter().map(|c| Run::new(c, 2)));
    runs
}

pub(crate) fn is_torch(config: &str) -> bool {
    config == EAGER || config == SDPA
}

/// The cache folder: `--cache-dir`, else `$QATTN_HF_CACHE`, else `<repo>/../shared/data/hf`.
pub(crate) fn cache_dir(root: &Path, explicit: Option<&Path>, env: Option<&str>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    match env.filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => root.join("../shared/data/hf"),
    }
}

/// The snapshot folder of `repo` in a Hugging Face cache (`cache` or `cache/hub`):
/// `models--{org}--{name}/snapshots/<refs/main>`, or `snapshots/main` without a ref file.
pub(crate) fn snapshot_dir(cache: &Path, repo: &str) -> Result<PathBuf> {
    let folder = format!("models--{}", repo.replace('/', "--"));
    let mut tried = Vec::new();
    for base in [cache.to_path_buf(), cache.join("hub")] {
        let model = base.join(&folder);
        let rev = fs::read_to_string(model.join("refs/main"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "main".to_owned());
        let snapshot = model.join("snapshots").join(&rev);
        if snapshot.join("config.json").is_file() {
            return Ok(snapshot);
        }
        tried.push(snapshot.display().to_string());
    }
    bail!(
        "{repo} is not in the cache {} (looked for config.json in {}); pass --cache-dir DIR or \
         set {CACHE_ENV}",
        cache.display(),
        tried.join(" and ")
    )
}

/// What one configuration's process reported, plus the load other processes put on the
/// machine meanwhile.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Measurement {
    pub(crate) median_s: f64,
    /// Timed units.
    pub(crate) count: usize,
    pub(crate) peak_rss_mb: Option<f64>,
    pub(crate) threads: Option<u64>,
    /// The gradient mode of a qattn training run.
    pub(crate) grad_mode: Option<String>,
    /// The schema's sanity-check value.
    pub(crate) check: Option<f64>,
    /// The training hyper-parameters the process reported.
    pub(crate) hyperparameters: Option<Value>,
    /// CPU time of the configuration's process (user + system, all threads).
    pub(crate) cpu_s: Option<f64>,
    /// Cores other processes used on average while the process ran.
    pub(crate) other_load: Option<f64>,
    /// The raw JSON it came from, under `benchmarks/results/raw/<suite>/`.
    pub(crate) raw_json: Option<String>,
}

impl Measurement {
    pub(crate) fn disturbed(&self) -> bool {
        self.other_load.is_some_and(|x| x > OTHER_LOAD_MAX)
    }
}

/// Reads the JSON of an example or a baseline script, checking it measured the shape asked
/// for.
pub(crate) fn parse_measurement(
    v: &Value,
    schema: &Schema,
    batch: u64,
    seq: u64,
) -> Result<Measurement> {
    for (key, want) in [("batch", batch), ("seq", seq)] {
        let got = v[key].as_u64().with_context(|| format!("no {key}"))?;
        if got != want {
            bail!("measured {key}={got}, expected {key}={want}");
        }
    }
    let median_s = v["median_s"].as_f64().context("no median_s")?;
    if !(median_s.is_finite() && median_s > 0.0) {
        bail!("median_s = {median_s} is not a positive time");
    }
    let count = v[schema.times]
        .as_array()
        .with_context(|| format!("no {}", schema.times))?
        .len();
    if count == 0 {
        bail!("{} is empty", schema.times);
    }
    Ok(Measurement {
        median_s,
        count,
        peak_rss_mb: v["peak_rss_mb"].as_f64(),
        threads: v["threads"].as_u64(),
        grad_mode: v["grad_mode"].as_str().map(str::to_owned),
        check: v[schema.check].as_f64(),
        hyperparameters: v.get("hyperparameters").cloned(),
        cpu_s: v["cpu_s"].as_f64(),
        other_load: None,
        raw_json: None,
    })
}

/// The PyTorch side's versions and thread count.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub(crate) struct TorchInfo {
    pub(crate) torch: String,
    pub(crate) transformers: Option<String>,
    pub(crate) threads: Option<u64>,
    /// The optimizer of a training baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) optimizer: Option<String>,
}

pub(crate) fn parse_torch_info(v: &Value) -> Option<TorchInfo> {
    Some(TorchInfo {
        torch: v["torch_version"].as_str()?.to_owned(),
        transformers: v["transformers_version"].as_str().map(str::to_owned),
        threads: v["threads"].as_u64(),
        optimizer: v["optimizer"].as_str().map(str::to_owned),
    })
}

/// Busy CPU time of the whole machine since boot (all CPUs; user, nice, system, irq, softirq
/// and steal), in seconds, from the `cpu` line of `/proc/stat`.
pub(crate) fn parse_busy_s(proc_stat: &str) -> Option<f64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    Some(busy as f64 / USER_HZ)
}

fn machine_busy_s() -> Option<f64> {
    parse_busy_s(&fs::read_to_string("/proc/stat").ok()?)
}

/// Cores other processes used on average: (machine busy time − the process's CPU time) / wall.
pub(crate) fn other_load(
    busy_before: Option<f64>,
    busy_after: Option<f64>,
    own_cpu_s: Option<f64>,
    wall_s: f64,
) -> Option<f64> {
    let others = busy_after? - busy_before? - own_cpu_s?;
    (wall_s > 0.0).then(|| (others / wall_s).max(0.0))
}

/// Waits until other processes use less than [`OTHER_LOAD_MAX`] cores over [`QUIET_WINDOW`],
/// or [`IDLE_WAIT_MAX`] has passed.
fn wait_for_idle() {
    let started = Instant::now();
    let mut said = false;
    loop {
        let before = machine_busy_s();
        std::thread::sleep(QUIET_WINDOW);
        let window = QUIET_WINDOW.as_secs_f64();
        let Some(load) = other_load(before, machine_busy_s(), Some(0.0), window) else {
            return;
        };
        if load < OTHER_LOAD_MAX {
            return;
        }
        if started.elapsed() >= IDLE_WAIT_MAX {
            println!(
                "      the machine is still busy ({load:.2} cores) after {} s; going ahead",
                IDLE_WAIT_MAX.as_secs()
            );
            return;
        }
        if !said {
            println!("      waiting for other processes to go quiet ({load:.2} cores busy) …");
            said = true;
        }
    }
}

/// The first three fields of `/proc/loadavg` (1, 5 and 15 minutes).
fn loadavg() -> Option<String> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// One row per run of a configuration.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub(crate) struct Row {
    /// `pytorch-eager`, `pytorch-sdpa`, or the qattn estimator spec.
    pub(crate) config: String,
    /// 1, or 2 for the baselines' repeat at the end.
    pub(crate) run: u8,
    /// `pytorch` or `qattn`.
    pub(crate) engine: &'static str,
    /// The gradient mode of a qattn training run (`exact`, `sampled`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) grad_mode: Option<String>,
    /// Median wall time of one timed unit (a forward pass, a training step) over the batch.
    pub(crate) median_s: Option<f64>,
    /// batch / median_s.
    #[serde(flatten)]
    pub(crate) rate: Named<Option<f64>>,
    /// This throughput / PyTorch SDPA's of the same run (> 1: faster than PyTorch SDPA).
    pub(crate) ratio_vs_torch_sdpa: Option<f64>,
    /// This throughput / qattn exact's of the same run; qattn rows only.
    pub(crate) ratio_vs_exact: Option<f64>,
    /// Peak resident set size of the configuration's process, MiB.
    pub(crate) peak_rss_mb: Option<f64>,
    /// Threads the process computed with.
    pub(crate) threads: Option<u64>,
    /// Timed units.
    #[serde(flatten)]
    pub(crate) count: Named<Option<usize>>,
    /// The schema's sanity-check value (not an accuracy measure).
    #[serde(flatten)]
    pub(crate) check: Named<Option<f64>>,
    /// Cores other processes used on average while this configuration ran.
    pub(crate) other_load_cores: Option<f64>,
    /// The raw JSON of the kept attempt, under `benchmarks/results/raw/<suite>/`.
    pub(crate) raw_json: Option<String>,
}

/// One row per run, ordered PyTorch, exact, then the estimator families (run 1 before run 2);
/// ratios compare rows of the same run. A run that failed keeps a row with empty cells.
pub(crate) fn build_rows(
    measured: &[(Run, Option<Measurement>)],
    schema: &Schema,
    batch: u64,
) -> Vec<Row> {
    let throughput = |config: &str, run: u8| {
        measured
            .iter()
            .find(|(r, _)| r.config == config && r.run == run)
            .and_then(|(_, m)| m.as_ref())
            .map(|m| batch as f64 / m.median_s)
    };
    let ratio = |num: Option<f64>, den: Option<f64>| match (num, den) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    };
    let mut rows: Vec<Row> = measured
        .iter()
        .map(|(Run { config, run }, m)| {
            let torch = is_torch(config);
            let tp = m.as_ref().map(|m| batch as f64 / m.median_s);
            Row {
                config: config.clone(),
                run: *run,
                engine: if torch { "pytorch" } else { "qattn" },
                grad_mode: m.as_ref().and_then(|m| m.grad_mode.clone()),
                median_s: m.as_ref().map(|m| m.median_s),
                rate: Named {
                    key: schema.rate,
                    value: tp,
                },
                ratio_vs_torch_sdpa: ratio(tp, throughput(SDPA, *run)),
                ratio_vs_exact: if torch {
                    None
                } else {
                    ratio(tp, throughput(EXACT, *run))
                },
                peak_rss_mb: m.as_ref().and_then(|m| m.peak_rss_mb),
                threads: m.as_ref().and_then(|m| m.threads),
                count: Named {
                    key: schema.count,
                    value: m.as_ref().map(|m| m.count),
                },
                check: Named {
                    key: schema.check,
                    value: m.as_ref().and_then(|m| m.check),
                },
                other_load_cores: m.as_ref().and_then(|m| m.other_load),
                raw_json: m.as_ref().and_then(|m| m.raw_json.clone()),
            }
        })
        .collect();
    rows.sort_by_key(|r| (estimator_order(&r.config), r.run));
    rows
}

/// A target: the throughput of configuration `ours` / that of `theirs` is at least `min`, in
/// every run where both were measured (rows of the same run compared). Unreliable when a row
/// it compares was measured while other processes were busy.
pub(crate) fn compare_target(
    rows: &[Row],
    ours: &str,
    theirs: &str,
    target: String,
    unit: &str,
    min: f64,
) -> Target {
    let row = |config: &str, run: u8| rows.iter().find(|r| r.config == config && r.run == run);
    let runs: BTreeSet<u8> = rows.iter().map(|r| r.run).collect();
    let mut seen: Vec<(String, f64)> = Vec::new();
    let mut busy: f64 = 0.0;
    for &run in &runs {
        let (Some(a), Some(b)) = (row(ours, run), row(theirs, run)) else {
            continue;
        };
        if let (Some(x), Some(y)) = (a.rate.value, b.rate.value)
            && y > 0.0
        {
            seen.push((format!("run {run}"), x / y));
            busy = [a.other_load_cores, b.other_load_cores]
                .into_iter()
                .flatten()
                .fold(busy, f64::max);
        }
    }
    let mut target = threshold_target(target, &seen, min, unit);
    if target.status != Status::NoData && busy > OTHER_LOAD_MAX {
        target.status = Status::Unreliable;
        target.observed.push_str(&format!(
            ", measured while other processes used {busy:.2} cores; rerun on an idle machine"
        ));
    }
    target
}

/// The targets of qattn exact against each PyTorch baseline: at least 1.0× PyTorch eager and
/// sdpa in `measure` (e.g. `sequences/s`), in every run.
pub(crate) fn exact_vs_pytorch(rows: &[Row], measure: &str, shape: Shape) -> Vec<Target> {
    let Shape { batch, seq } = shape;
    [("eager", EAGER), ("sdpa", SDPA)]
        .into_iter()
        .map(|(label, config)| {
            compare_target(
                rows,
                EXACT,
                config,
                format!(
                    "qattn exact ≥ 1.0× PyTorch {label} ({measure}, batch {batch}, length {seq})"
                ),
                &format!("× PyTorch {label}"),
                1.0,
            )
        })
        .collect()
}

/// A suite: which example and script measure it, and in what order.
pub(crate) struct Suite {
    /// The subcommand (`model`, `train`): results `benchmarks/results/{name}.{json,md}`, raw
    /// files under `benchmarks/results/raw/{name}/`.
    pub(crate) name: &'static str,
    /// The qattn example, `(package, example)`.
    pub(crate) example: (&'static str, &'static str),
    /// The PyTorch script, relative to the repository root.
    pub(crate) script: &'static str,
    pub(crate) schema: Schema,
    /// The number of timed units of a full run.
    pub(crate) full: u64,
    pub(crate) plan: Vec<Run>,
    /// Flags for the qattn example besides `--attention CONFIG` (e.g. `--grad-mode`).
    pub(crate) qattn_args: fn(&str) -> Vec<String>,
    /// What the statistic is.
    pub(crate) statistic: &'static str,
    /// The issue's targets, from the rows.
    pub(crate) targets: fn(&[Row], Shape) -> Vec<Target>,
    /// The results page.
    pub(crate) markdown: fn(&Report) -> String,
}

/// `cargo xtask bench {suite}`: runs the suite, evaluates its targets and writes
/// `benchmarks/results/{suite}.{json,md}` atomically.
pub(crate) fn bench(root: &Path, opts: &Options, suite: &Suite) -> Result<()> {
    let mut report = run_suite(root, opts, suite)?;
    report.targets = (suite.targets)(&report.rows, opts.shape);
    let name = opts.shape.results_name(suite.name);
    write_results(root, &name, &report, &(suite.markdown)(&report))
}

/// A suite's results; the suite adds its targets.
#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) command: String,
    #[serde(flatten)]
    pub(crate) provenance: Provenance,
    pub(crate) quick: bool,
    pub(crate) model: String,
    pub(crate) snapshot: String,
    pub(crate) batch: u64,
    pub(crate) seq: u64,
    pub(crate) dtype: &'static str,
    pub(crate) passes: Passes,
    /// Threads asked of both sides (`RAYON_NUM_THREADS`, `torch.set_num_threads`).
    pub(crate) threads: usize,
    pub(crate) torch: Option<TorchInfo>,
    /// `/proc/loadavg` when the run started and ended: other work on the machine skews the
    /// rows measured meanwhile.
    pub(crate) loadavg_at_start: Option<String>,
    pub(crate) loadavg_at_end: Option<String>,
    pub(crate) statistic: &'static str,
    /// The training hyper-parameters each side reported, `{"qattn": …, "pytorch": …}`
    /// (training suites).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hyperparameters: Option<Value>,
    pub(crate) notes: Vec<String>,
    pub(crate) targets: Vec<Target>,
    pub(crate) rows: Vec<Row>,
}

/// Runs every configuration of `suite` (see the module docs) and returns the report, without
/// targets.
pub(crate) fn run_suite(root: &Path, opts: &Options, suite: &Suite) -> Result<Report> {
    let schema = &suite.schema;
    let mut command = format!("cargo xtask bench {}", suite.name);
    if opts.quick {
        command.push_str(" --quick");
    }
    if let Some(dir) = &opts.cache_dir {
        command.push_str(&format!(" --cache-dir {}", dir.display()));
    }
    let shape = opts.shape;
    let Shape { batch, seq } = shape;
    if shape != DEFAULT_SHAPE {
        command.push_str(&format!(" --batch {batch} --seq {seq}"));
    }
    let passes = Passes::new(schema, opts.quick, suite.full, shape.pass_scale());
    let threads = available_threads();
    // When and at which commit the run started (a long run may outlive a commit).
    let provenance = Provenance::collect(root);
    let loadavg_at_start = loadavg();
    let mut notes = Vec::new();
    let raw_dir = root
        .join("benchmarks/results/raw")
        .join(shape.results_name(suite.name));
    fs::create_dir_all(&raw_dir).with_context(|| format!("creating {}", raw_dir.display()))?;

    let cache = cache_dir(
        root,
        opts.cache_dir.as_deref(),
        std::env::var(CACHE_ENV).ok().as_deref(),
    );
    let snapshot = snapshot_dir(&cache, MODEL_ID)?;
    println!("model: {MODEL_ID} from {}", snapshot.display());

    // (a) The PyTorch environment.
    println!("\n==> PyTorch baseline environment (benchmarks/.venv)");
    let python = match ensure_torch(root, &["transformers"]) {
        Ok(py) => Some(py),
        Err(reason) => {
            println!("PyTorch baseline unavailable: {reason}");
            notes.push(format!("PyTorch baseline unavailable: {reason}"));
            None
        }
    };

    // (b) Our side, built once.
    let (package, example_name) = suite.example;
    println!("\n==> cargo build --release -p {package} --example {example_name}");
    run(cargo().current_dir(root).args([
        "build",
        "--release",
        "-p",
        package,
        "--example",
        example_name,
    ]))?;
    // Run a private copy: a build in the shared target folder (someone's `cargo test`) must
    // not swap the binary between configurations.
    let built = target_directory(root)?
        .join("release/examples")
        .join(example_name);
    let example = raw_dir.join(example_name);
    fs::copy(&built, &example)
        .with_context(|| format!("copying {} to {}", built.display(), example.display()))?;

    // (c) One process per configuration.
    let n = suite.plan.len();
    println!(
        "\n==> {n} configurations, {} warm-up + {} timed {}s each, batch {batch} × {seq} tokens, \
         {threads} threads",
        passes.warmup, passes.timed.value, schema.unit
    );
    let command_for = |config: &str, json_path: &Path| -> Option<Command> {
        let mut cmd = if is_torch(config) {
            let mut cmd = Command::new(python.as_ref()?);
            cmd.arg(root.join(suite.script))
                .arg("--model-dir")
                .arg(&snapshot)
                .args(["--attn", config.trim_start_matches("pytorch-")])
                .args(["--threads", &threads.to_string()]);
            cmd
        } else {
            let mut cmd = Command::new(&example);
            cmd.args(["--model", MODEL_ID])
                .arg("--cache-dir")
                .arg(&cache)
                .args(["--attention", config])
                .args((suite.qattn_args)(config))
                .env("RAYON_NUM_THREADS", threads.to_string());
            cmd
        };
        cmd.current_dir(root)
            .args(["--batch", &batch.to_string(), "--seq", &seq.to_string()])
            .args(["--warmup", &passes.warmup.to_string()])
            .arg(format!("--{}", schema.count))
            .arg(passes.timed.value.to_string())
            .arg("--json")
            .arg(json_path);
        Some(cmd)
    };
    let mut measured = Vec::new();
    let mut torch_info = None;
    for (i, this) in suite.plan.iter().enumerate() {
        println!("[{}/{n}] {} …", i + 1, this.label());
        let mut best: Option<Measurement> = None;
        for attempt in 1..=ATTEMPTS {
            let json_path = raw_dir.join(this.file_name(attempt));
            let Some(mut cmd) = command_for(&this.config, &json_path) else {
                println!("      skipped: PyTorch baseline unavailable");
                break;
            };
            wait_for_idle();
            let _ = fs::remove_file(&json_path);
            let busy_before = machine_busy_s();
            let started = Instant::now();
            let result = run(&mut cmd)
                .and_then(|()| read_json(&json_path))
                .and_then(|v| {
                    if is_torch(&this.config) && torch_info.is_none() {
                        torch_info = parse_torch_info(&v);
                    }
                    parse_measurement(&v, schema, batch, seq)
                });
            let wall_s = started.elapsed().as_secs_f64();
            let mut m = match result {
                Ok(m) => m,
                Err(e) => {
                    println!("      failed: {e:#}");
                    notes.push(format!("{}: no measurement: {e:#}", this.label()));
                    break;
                }
            };
            m.other_load = other_load(busy_before, machine_busy_s(), m.cpu_s, wall_s);
            m.raw_json = Some(this.file_name(attempt));
            println!(
                "      {} s/{}, {} {}/s, peak RSS {} MiB, other processes {} cores",
                sig3(m.median_s),
                schema.unit,
                sig3(batch as f64 / m.median_s),
                schema.items,
                cell(m.peak_rss_mb, |x| format!("{x:.0}")),
                cell(m.other_load, |x| format!("{x:.2}"))
            );
            let disturbed = m.disturbed();
            if best
                .as_ref()
                .is_none_or(|b| m.other_load.unwrap_or(0.0) < b.other_load.unwrap_or(0.0))
            {
                best = Some(m);
            }
            if !disturbed {
                break;
            }
            if attempt < ATTEMPTS {
                println!("      disturbed by other processes; running it again");
            } else {
                notes.push(format!(
                    "{}: other processes were busy during every attempt; its row is disturbed",
                    this.label()
                ));
            }
        }
        measured.push((this.clone(), best));
    }
    let reported = |torch: bool| {
        measured
            .iter()
            .filter(|(r, _)| is_torch(&r.config) == torch)
            .find_map(|(_, m)| m.as_ref()?.hyperparameters.clone())
    };
    let hyperparameters = match (reported(false), reported(true)) {
        (None, None) => None,
        (ours, theirs) => Some(serde_json::json!({"qattn": ours, "pytorch": theirs})),
    };

    Ok(Report {
        command,
        provenance,
        quick: opts.quick,
        model: MODEL_ID.to_owned(),
        snapshot: snapshot.display().to_string(),
        batch,
        seq,
        dtype: "f32",
        passes,
        threads,
        torch: torch_info,
        loadavg_at_start,
        loadavg_at_end: loadavg(),
        statistic: suite.statistic,
        hyperparameters,
        notes,
        targets: Vec::new(),
        rows: build_rows(&measured, schema, batch),
    })
}

/// The shape and passes of a report's workload: "batch … × … tokens, f32, no padding, … {unit}s
/// per configuration".
pub(crate) fn workload_shape(r: &Report, units: &str) -> String {
    format!(
        "batch {} × {} tokens, {}, no padding, the same deterministic token ids on both sides; \
         {} warm-up and {} timed {units} per configuration{}",
        r.batch,
        r.seq,
        r.dtype,
        r.passes.warmup,
        r.passes.timed.value,
        if r.quick { " (quick run)" } else { "" }
    )
}

/// What a suite's page says besides what [`markdown`] writes from the report.
pub(crate) struct Page<'a> {
    pub(crate) title: &'a str,
    /// The heading of the targets, e.g. `Targets (issue 3)`.
    pub(crate) targets_heading: &'a str,
    pub(crate) schema: &'a Schema,
    /// How the PyTorch side ran, after `torch X, transformers Y (`.
    pub(crate) pytorch: &'a str,
    /// The qattn example, `(package, example)`.
    pub(crate) example: (&'a str, &'a str),
    /// The workload, statistic and order lines (each `- …\n`).
    pub(crate) workload: String,
    /// The sanity-check line, if any (`- …\n`).
    pub(crate) check: Option<String>,
}

/// The results page: provenance, how both sides ran, the workload, the machine's load, notes,
/// targets and the results table.
pub(crate) fn markdown(r: &Report, page: &Page) -> String {
    let mut s = r.provenance.markdown_header(page.title, &r.command, None);
    match &r.torch {
        Some(t) => s.push_str(&format!(
            "- PyTorch: torch {}, transformers {} ({}, CPU, {} threads)\n",
            t.torch,
            t.transformers.as_deref().unwrap_or("?"),
            page.pytorch,
            t.threads.map_or("?".to_owned(), |n| n.to_string())
        )),
        None => s.push_str("- PyTorch: unavailable (see notes); the PyTorch rows are empty\n"),
    }
    let rust_threads: Vec<String> = r
        .rows
        .iter()
        .filter(|row| row.engine == "qattn")
        .filter_map(|row| row.threads.map(|t| t.to_string()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    s.push_str(&format!(
        "- qattn: `{}` example of {}, {} threads (`RAYON_NUM_THREADS={}`)\n",
        page.example.1,
        page.example.0,
        if rust_threads.is_empty() {
            "?".to_owned()
        } else {
            rust_threads.join("/")
        },
        r.threads
    ));
    s.push_str(&page.workload);
    s.push_str(&format!(
        "- Other load: cores other processes used on average while a configuration ran \
         ((machine busy time from `/proc/stat` − the process's own CPU time) / wall time). A \
         configuration above {OTHER_LOAD_MAX} was run again (at most {ATTEMPTS} runs, the least \
         disturbed kept); a target fed by a row still above it is marked unreliable\n"
    ));
    if r.loadavg_at_start.is_some() || r.loadavg_at_end.is_some() {
        s.push_str(&format!(
            "- Load average (1, 5, 15 min) at start: {}; at end: {} (other work on the machine \
             slows the rows measured meanwhile)\n",
            r.loadavg_at_start.as_deref().unwrap_or("?"),
            r.loadavg_at_end.as_deref().unwrap_or("?")
        ));
    }
    if let Some(line) = &page.check {
        s.push_str(line);
    }
    for n in &r.notes {
        s.push_str(&format!("- Note: {n}\n"));
    }
    s.push_str(&targets_markdown(page.targets_heading, &r.targets));
    let schema = page.schema;
    s.push_str(&format!(
        "\n## Results\n\n\
         | configuration | median s/{} | {}/s | × PyTorch sdpa | {} | peak RSS (MiB) \
         | other load (cores) |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        schema.unit, schema.items, schema.exact_column
    ));
    for row in &r.rows {
        let mut name = match row.config.as_str() {
            EAGER => "PyTorch eager".to_owned(),
            SDPA => "PyTorch sdpa".to_owned(),
            spec => format!("qattn {spec}"),
        };
        if row.grad_mode.as_deref() == Some("sampled") {
            name.push_str(" (sampled gradients)");
        }
        if row.run != 1 {
            name.push_str(&format!(" (run {})", row.run));
        }
        s.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} |\n",
            cell(row.median_s, sig3),
            cell(row.rate.value, sig3),
            cell(row.ratio_vs_torch_sdpa, |x| format!("{x:.2}")),
            cell(row.ratio_vs_exact, |x| format!("{x:.2}")),
            cell(row.peak_rss_mb, |x| format!("{x:.0}")),
            cell(row.other_load_cores, |x| format!("{x:.2}")),
        ));
    }
    s
}

/// Row `config` of run 1 (for the sanity-check lines).
pub(crate) fn first_run<'a>(r: &'a Report, config: &str) -> Option<&'a Row> {
    r.rows
        .iter()
        .find(|row| row.config == config && row.run == 1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bench::model::SCHEMA;
    use serde_json::json;

    /// A quiet measurement of `median_s` per unit.
    pub(crate) fn m(median_s: f64) -> Option<Measurement> {
        Some(Measurement {
            median_s,
            count: 10,
            peak_rss_mb: Some(200.0),
            threads: Some(2),
            grad_mode: None,
            check: Some(0.1),
            hyperparameters: None,
            cpu_s: Some(20.0),
            other_load: Some(0.01),
            raw_json: None,
        })
    }

    /// A measurement taken while other processes used `load` cores.
    pub(crate) fn busy(median_s: f64, load: f64) -> Option<Measurement> {
        m(median_s).map(|m| Measurement {
            other_load: Some(load),
            ..m
        })
    }

    /// Measurements of run 1.
    pub(crate) fn first(list: &[(&str, Option<Measurement>)]) -> Vec<(Run, Option<Measurement>)> {
        list.iter()
            .map(|(c, m)| (Run::new(c, 1), m.clone()))
            .collect()
    }

    /// A report of `rows` and `targets` with fixed provenance.
    pub(crate) fn report(schema: &Schema, rows: Vec<Row>, targets: Vec<Target>) -> Report {
        Report {
            command: "cargo xtask bench test".to_owned(),
            provenance: Provenance::for_tests(),
            quick: false,
            model: MODEL_ID.to_owned(),
            snapshot: "snap".to_owned(),
            batch: BATCH,
            seq: SEQ,
            dtype: "f32",
            passes: Passes::new(schema, false, 10, 1),
            threads: 2,
            torch: None,
            loadavg_at_start: None,
            loadavg_at_end: None,
            statistic: "median",
            hyperparameters: None,
            notes: vec![],
            targets,
            rows,
        }
    }

    #[test]
    fn options() {
        let o = parse_options("model", &["--quick", "--cache-dir", "/c"]).unwrap();
        assert!(o.quick);
        assert_eq!(o.cache_dir.as_deref(), Some(Path::new("/c")));
        assert!(parse_options("model", &["--cache-dir"]).is_err());
        let e = parse_options("train", &["--native"]).err().unwrap();
        assert!(e.contains("bench train"), "{e}");
        assert_eq!(Passes::new(&SCHEMA, true, 10, 1).timed.value, 3);
        assert_eq!(Passes::new(&SCHEMA, false, 8, 1).timed.value, 8);
        assert_eq!(o.shape, DEFAULT_SHAPE);
    }

    /// `--batch`/`--seq` choose the workload, name the results after it and scale the passes
    /// of a small workload; out-of-range values are refused with the flag named.
    #[test]
    fn batch_and_seq_options() {
        let o = parse_options("model", &["--batch", "1", "--seq", "16", "--quick"]).unwrap();
        assert_eq!(o.shape, Shape { batch: 1, seq: 16 });
        assert_eq!(o.shape.results_name("model"), "model-b1x16");
        assert_eq!(DEFAULT_SHAPE.results_name("model"), "model");
        assert_eq!(o.shape.pass_scale(), 30);
        assert_eq!(Shape { batch: 8, seq: 128 }.pass_scale(), 4);
        assert_eq!(DEFAULT_SHAPE.pass_scale(), 1);
        let p = Passes::new(&SCHEMA, true, 10, o.shape.pass_scale());
        assert_eq!((p.warmup, p.timed.value), (30, 90));
        for bad in [
            &["--batch", "0"][..],
            &["--seq", "513"],
            &["--seq", "x"],
            &["--batch"],
        ] {
            let e = parse_options("model", bad).err().unwrap();
            assert!(e.contains(bad[0]), "{e}");
        }
    }

    #[test]
    fn plans_and_file_names() {
        let p = mirrored_plan(&["cv:4:8".to_owned()]);
        let labels: Vec<String> = p.iter().map(Run::label).collect();
        assert_eq!(
            labels,
            [
                EAGER,
                EXACT,
                SDPA,
                "cv:4:8",
                "pytorch-sdpa (run 2)",
                "exact (run 2)",
                "pytorch-eager (run 2)"
            ]
        );
        assert_eq!(Run::new("cv:4:8", 1).file_name(1), "cv_4_8.json");
        assert_eq!(Run::new(EXACT, 2).file_name(1), "exact.run2.json");
        assert_eq!(Run::new(EXACT, 2).file_name(3), "exact.run2.attempt3.json");
    }

    #[test]
    fn cache_and_snapshot() {
        let root = Path::new("/repo");
        assert_eq!(
            cache_dir(root, None, None),
            Path::new("/repo/../shared/data/hf")
        );
        assert_eq!(cache_dir(root, None, Some("")), cache_dir(root, None, None));
        assert_eq!(cache_dir(root, None, Some("/e")), Path::new("/e"));
        assert_eq!(
            cache_dir(root, Some(Path::new("/x")), Some("/e")),
            Path::new("/x")
        );

        let tmp = std::env::temp_dir().join(format!("xtask-snapshot-{}", std::process::id()));
        let model = tmp.join("hub/models--org--name");
        fs::create_dir_all(model.join("refs")).unwrap();
        fs::create_dir_all(model.join("snapshots/abc123")).unwrap();
        fs::write(model.join("refs/main"), "abc123\n").unwrap();
        assert!(
            snapshot_dir(&tmp, "org/name").is_err(),
            "no config.json yet"
        );
        fs::write(model.join("snapshots/abc123/config.json"), "{}").unwrap();
        assert_eq!(
            snapshot_dir(&tmp, "org/name").unwrap(),
            model.join("snapshots/abc123")
        );
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn measurement_json() {
        let v = json!({"estimator": "exact", "batch": 32, "seq": 128, "iters": 3,
                       "times_s": [0.5, 0.4, 0.6], "median_s": 0.5, "seqs_per_s": 64.0,
                       "peak_rss_mb": 215.5, "threads": 2, "output_abs_mean": 0.12,
                       "cpu_s": 3.5});
        assert_eq!(
            parse_measurement(&v, &SCHEMA, 32, 128).unwrap(),
            Measurement {
                median_s: 0.5,
                count: 3,
                peak_rss_mb: Some(215.5),
                threads: Some(2),
                grad_mode: None,
                check: Some(0.12),
                hyperparameters: None,
                cpu_s: Some(3.5),
                other_load: None,
                raw_json: None,
            }
        );
        assert!(
            parse_measurement(&v, &SCHEMA, 16, 128).is_err(),
            "wrong batch"
        );
        assert!(
            parse_measurement(&v, &SCHEMA, 32, 64).is_err(),
            "wrong length"
        );
        let zero = json!({"batch": 32, "seq": 128, "times_s": [0.0], "median_s": 0.0});
        assert!(parse_measurement(&zero, &SCHEMA, 32, 128).is_err());
        let empty = json!({"batch": 32, "seq": 128, "times_s": [], "median_s": 1.0});
        assert!(parse_measurement(&empty, &SCHEMA, 32, 128).is_err());

        let t = json!({"torch_version": "2.15.0", "transformers_version": "5.0.0", "threads": 2});
        assert_eq!(
            parse_torch_info(&t),
            Some(TorchInfo {
                torch: "2.15.0".to_owned(),
                transformers: Some("5.0.0".to_owned()),
                threads: Some(2),
                optimizer: None,
            })
        );
        assert_eq!(parse_torch_info(&json!({})), None);
    }

    #[test]
    fn rows_serialise_under_the_schema_names() {
        let rows = build_rows(&first(&[(EXACT, m(0.5))]), &SCHEMA, 32);
        let v = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!(v["seqs_per_s"], json!(64.0));
        assert_eq!(v["iters"], json!(10));
        assert_eq!(v["output_abs_mean"], json!(0.1));
        assert!(v.get("grad_mode").is_none(), "{v}");
        // The order of the fields in the file: the schema's keys where `bench model` had them.
        let text = serde_json::to_string(&rows[0]).unwrap();
        assert!(
            text.starts_with(
                r#"{"config":"exact","run":1,"engine":"qattn","median_s":0.5,"seqs_per_s":64.0,"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#""threads":2,"iters":10,"output_abs_mean":0.1,"other_load_cores""#),
            "{text}"
        );
    }

    #[test]
    fn machine_load() {
        let stat = "cpu  1000 50 300 9000 20 10 40 100 0 0\ncpu0 500 25 150 4500 10 5 20 50 0 0\n";
        // user + nice + system + irq + softirq + steal = 1500 ticks = 15 s.
        assert_eq!(parse_busy_s(stat), Some(15.0));
        assert_eq!(parse_busy_s("intr 1 2 3\n"), None);
        // 30 s of machine time over 10 s of wall, 20 s of it ours: others used 1 core.
        assert_eq!(
            other_load(Some(100.0), Some(130.0), Some(20.0), 10.0),
            Some(1.0)
        );
        assert_eq!(
            other_load(Some(100.0), Some(119.0), Some(20.0), 10.0),
            Some(0.0)
        );
        assert_eq!(other_load(None, Some(130.0), Some(20.0), 10.0), None);
        assert_eq!(other_load(Some(100.0), Some(130.0), None, 10.0), None);
        assert!(busy(1.0, 0.3).unwrap().disturbed());
        assert!(!m(1.0).unwrap().disturbed());
    }
}
