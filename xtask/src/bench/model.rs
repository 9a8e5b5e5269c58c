//! `cargo xtask bench model`: forward throughput (sequences/s) and peak RSS of
//! `sentence-transformers/all-MiniLM-L6-v2` at batch 32, sequence length 128, f32 on the CPU,
//! for qattn-model with exact attention and each Monte-Carlo estimator, side by side with HF
//! transformers (PyTorch, `eager` and `sdpa` attention) in the same run.
//!
//! Steps: make sure `benchmarks/.venv` has torch, numpy and transformers (install what is
//! missing, or say plainly that the PyTorch rows stay empty), find the model's snapshot in the
//! cache, build the `bench_forward` example of qattn-model once, run every configuration as its
//! own process (so each peak RSS is that configuration's own; PyTorch and our exact run are
//! interleaved so they are close in time), read the JSON each writes under
//! `benchmarks/results/raw/model/`, and write `benchmarks/results/model.{json,md}` atomically.
//!
//! Other work on the machine (a build, a test run) slows whatever runs meanwhile, and on a
//! 2-core machine it can turn a ratio upside down. So before each configuration the command
//! waits (a while) for the machine to go quiet, measures how many cores other processes used
//! while the configuration ran (`/proc/stat` busy time minus the process's own CPU time, over
//! its wall time), runs a disturbed configuration once more, reports that load per row, and
//! marks a target fed by a disturbed row as unreliable rather than met or not met.

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
const MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// Sequences per forward pass.
const BATCH: u64 = 32;
/// Tokens per sequence (no padding).
const SEQ: u64 = 128;
/// Row label of HF transformers with `attn_implementation="eager"`.
const EAGER: &str = "pytorch-eager";
/// Row label of HF transformers with `attn_implementation="sdpa"`.
const SDPA: &str = "pytorch-sdpa";
/// Row label (and spec) of qattn with exact attention.
const EXACT: &str = "exact";
/// Measurements per query of the Monte-Carlo rows.
const SHOTS: [u64; 2] = [8, 32];
/// The environment variable naming the Hugging Face cache to read the model from.
const CACHE_ENV: &str = "QATTN_HF_CACHE";
/// Cores other processes may use on average while a configuration runs; above this the
/// configuration is disturbed: it runs again, and targets it feeds are unreliable.
const OTHER_LOAD_MAX: f64 = 0.2;
/// Runs of one configuration at most (another only when the previous one was disturbed).
const ATTEMPTS: usize = 3;
/// How long to wait, before each configuration, for other processes to go quiet.
const IDLE_WAIT_MAX: Duration = Duration::from_secs(120);
/// How long other processes must stay quiet before a configuration starts (builds pause
/// between crates, so one quiet second says little).
const QUIET_WINDOW: Duration = Duration::from_secs(3);
/// Linux's `USER_HZ`: `/proc/stat` counts clock ticks of 1/100 s.
const USER_HZ: f64 = 100.0;

pub(crate) struct ModelOptions {
    quick: bool,
    cache_dir: Option<PathBuf>,
}

pub(crate) fn parse_options(args: &[&str]) -> std::result::Result<ModelOptions, String> {
    let mut opts = ModelOptions {
        quick: false,
        cache_dir: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--quick" => opts.quick = true,
            "--cache-dir" => match it.next() {
                Some(dir) => opts.cache_dir = Some(PathBuf::from(dir)),
                None => return Err("--cache-dir needs a folder".to_owned()),
            },
            other => {
                return Err(format!(
                    "unknown option for `cargo xtask bench model`: {other}"
                ));
            }
        }
    }
    Ok(opts)
}

/// Untimed and timed forward passes per configuration.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
struct Passes {
    warmup: u64,
    iters: u64,
}

impl Passes {
    fn new(quick: bool) -> Self {
        if quick {
            Passes {
                warmup: 1,
                iters: 3,
            }
        } else {
            Passes {
                warmup: 2,
                iters: 10,
            }
        }
    }
}

/// The Monte-Carlo configurations: each estimator family at every S in [`SHOTS`]; adaptive
/// ranges from S/4 to S.
fn mc_specs() -> Vec<String> {
    let mut specs = Vec::new();
    for s in SHOTS {
        specs.push(format!("multinomial:{s}"));
        specs.push(format!("stratified:{s}"));
        specs.push(format!("topk:8:{s}"));
        specs.push(format!("cv:4:{s}"));
        specs.push(format!("adaptive:{}:{s}", s / 4));
    }
    specs
}

/// One process to run: a configuration, and which of its runs this is.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Run {
    config: String,
    /// 1, or 2 for the repeat of the baselines at the end.
    run: u8,
}

impl Run {
    fn new(config: &str, run: u8) -> Self {
        Run {
            config: config.to_owned(),
            run,
        }
    }

    /// `exact`, or `exact (run 2)`.
    fn label(&self) -> String {
        if self.run == 1 {
            self.config.clone()
        } else {
            format!("{} (run {})", self.config, self.run)
        }
    }

    /// The raw JSON's file name of an attempt: `exact.json`, `stratified_8.json`,
    /// `exact.run2.json`, and `exact.attempt2.json` for a repeat of a disturbed attempt.
    fn file_name(&self, attempt: usize) -> String {
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

/// Every process in the order it runs. The comparison the target is about, PyTorch eager,
/// our exact and PyTorch sdpa, runs first and again, mirrored, last: our exact run sits
/// between the PyTorch runs each time, and the two runs show how far the machine drifted
/// meanwhile.
fn plan() -> Vec<Run> {
    let mut runs: Vec<Run> = [EAGER, EXACT, SDPA]
        .iter()
        .map(|c| Run::new(c, 1))
        .collect();
    runs.extend(mc_specs().iter().map(|c| Run::new(c, 1)));
    runs.extend([SDPA, EXACT, EAGER].iter().map(|c| Run::new(c, 2)));
    runs
}

fn is_torch(config: &str) -> bool {
    config == EAGER || config == SDPA
}

/// The cache folder: `--cache-dir`, else `$QATTN_HF_CACHE`, else `<repo>/../shared/data/hf`.
fn cache_dir(root: &Path, explicit: Option<&Path>, env: Option<&str>) -> PathBuf {
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
fn snapshot_dir(cache: &Path, repo: &str) -> Result<PathBuf> {
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
struct Measurement {
    median_s: f64,
    iters: usize,
    peak_rss_mb: Option<f64>,
    threads: Option<u64>,
    output_abs_mean: Option<f64>,
    /// CPU time of the configuration's process (user + system, all threads).
    cpu_s: Option<f64>,
    /// Cores other processes used on average while the process ran.
    other_load: Option<f64>,
    /// The raw JSON it came from, under `benchmarks/results/raw/model/`.
    raw_json: Option<String>,
}

impl Measurement {
    fn disturbed(&self) -> bool {
        self.other_load.is_some_and(|x| x > OTHER_LOAD_MAX)
    }
}

/// Busy CPU time of the whole machine since boot (all CPUs; user, nice, system, irq, softirq
/// and steal), in seconds, from the `cpu` line of `/proc/stat`.
fn parse_busy_s(proc_stat: &str) -> Option<f64> {
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
fn other_load(
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

/// Reads the JSON of `bench_forward` or `hf_bert.py`, checking it measured the shape asked for.
fn parse_measurement(v: &Value, batch: u64, seq: u64) -> Result<Measurement> {
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
    let iters = v["times_s"].as_array().context("no times_s")?.len();
    if iters == 0 {
        bail!("times_s is empty");
    }
    Ok(Measurement {
        median_s,
        iters,
        peak_rss_mb: v["peak_rss_mb"].as_f64(),
        threads: v["threads"].as_u64(),
        output_abs_mean: v["output_abs_mean"].as_f64(),
        cpu_s: v["cpu_s"].as_f64(),
        other_load: None,
        raw_json: None,
    })
}

/// The PyTorch side's versions and thread count.
#[derive(Serialize, Clone, Debug, PartialEq)]
struct TorchInfo {
    torch: String,
    transformers: Option<String>,
    threads: Option<u64>,
}

fn parse_torch_info(v: &Value) -> Option<TorchInfo> {
    Some(TorchInfo {
        torch: v["torch_version"].as_str()?.to_owned(),
        transformers: v["transformers_version"].as_str().map(str::to_owned),
        threads: v["threads"].as_u64(),
    })
}

#[derive(Serialize, Clone, Debug, PartialEq)]
struct Row {
    /// `pytorch-eager`, `pytorch-sdpa`, or the qattn estimator spec.
    config: String,
    /// 1, or 2 for the baselines' repeat at the end.
    run: u8,
    /// `pytorch` or `qattn`.
    engine: &'static str,
    /// Median wall time of one forward pass over the batch.
    median_s: Option<f64>,
    /// batch / median_s.
    seqs_per_s: Option<f64>,
    /// This throughput / PyTorch SDPA's of the same run (> 1: faster than PyTorch SDPA).
    ratio_vs_torch_sdpa: Option<f64>,
    /// This throughput / qattn exact's of the same run; qattn rows only.
    ratio_vs_exact: Option<f64>,
    /// Peak resident set size of the configuration's process, MiB.
    peak_rss_mb: Option<f64>,
    /// Threads the process computed with.
    threads: Option<u64>,
    /// Timed passes.
    iters: Option<usize>,
    /// Mean |last_hidden_state| of the last timed pass (a sanity check, not an accuracy measure).
    output_abs_mean: Option<f64>,
    /// Cores other processes used on average while this configuration ran.
    other_load_cores: Option<f64>,
    /// The raw JSON of the kept attempt, under `benchmarks/results/raw/model/`.
    raw_json: Option<String>,
}

/// One row per run, ordered PyTorch, exact, then the estimator families (run 1 before run 2);
/// ratios compare rows of the same run. A run that failed keeps a row with empty cells.
fn build_rows(measured: &[(Run, Option<Measurement>)], batch: u64) -> Vec<Row> {
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
            let sdpa = throughput(SDPA, *run);
            let exact = throughput(EXACT, *run);
            Row {
                config: config.clone(),
                run: *run,
                engine: if torch { "pytorch" } else { "qattn" },
                median_s: m.as_ref().map(|m| m.median_s),
                seqs_per_s: tp,
                ratio_vs_torch_sdpa: ratio(tp, sdpa),
                ratio_vs_exact: if torch { None } else { ratio(tp, exact) },
                peak_rss_mb: m.as_ref().and_then(|m| m.peak_rss_mb),
                threads: m.as_ref().and_then(|m| m.threads),
                iters: m.as_ref().map(|m| m.iters),
                output_abs_mean: m.as_ref().and_then(|m| m.output_abs_mean),
                other_load_cores: m.as_ref().and_then(|m| m.other_load),
                raw_json: m.as_ref().and_then(|m| m.raw_json.clone()),
            }
        })
        .collect();
    rows.sort_by_key(|r| (estimator_order(&r.config), r.run));
    rows
}

/// Issue 3: qattn with exact attention at least as fast as PyTorch, eager and SDPA, in every
/// run (exact and PyTorch of the same run compared). A target whose rows were measured while
/// other processes were busy is unreliable.
fn evaluate_targets(rows: &[Row]) -> Vec<Target> {
    let row = |config: &str, run: u8| rows.iter().find(|r| r.config == config && r.run == run);
    let runs: std::collections::BTreeSet<u8> = rows.iter().map(|r| r.run).collect();
    [("eager", EAGER), ("sdpa", SDPA)]
        .into_iter()
        .map(|(label, config)| {
            let mut seen: Vec<(String, f64)> = Vec::new();
            let mut busy: f64 = 0.0;
            for &run in &runs {
                let (Some(ours), Some(theirs)) = (row(EXACT, run), row(config, run)) else {
                    continue;
                };
                if let (Some(a), Some(b)) = (ours.seqs_per_s, theirs.seqs_per_s)
                    && b > 0.0
                {
                    seen.push((format!("run {run}"), a / b));
                    busy = [ours.other_load_cores, theirs.other_load_cores]
                        .into_iter()
                        .flatten()
                        .fold(busy, f64::max);
                }
            }
            let mut target = threshold_target(
                format!(
                    "qattn exact ≥ 1.0× PyTorch {label} (sequences/s, batch {BATCH}, length {SEQ})"
                ),
                &seen,
                1.0,
                &format!("× PyTorch {label}"),
            );
            if target.status != Status::NoData && busy > OTHER_LOAD_MAX {
                target.status = Status::Unreliable;
                target.observed.push_str(&format!(
                    ", measured while other processes used {busy:.2} cores; rerun on an idle \
                     machine"
                ));
            }
            target
        })
        .collect()
}

#[derive(Serialize)]
struct Report {
    command: String,
    #[serde(flatten)]
    provenance: Provenance,
    quick: bool,
    model: String,
    snapshot: String,
    batch: u64,
    seq: u64,
    dtype: &'static str,
    passes: Passes,
    /// Threads asked of both sides (`RAYON_NUM_THREADS`, `torch.set_num_threads`).
    threads: usize,
    torch: Option<TorchInfo>,
    /// `/proc/loadavg` when the run started and ended: other work on the machine skews the
    /// rows measured meanwhile.
    loadavg_at_start: Option<String>,
    loadavg_at_end: Option<String>,
    statistic: &'static str,
    notes: Vec<String>,
    targets: Vec<Target>,
    rows: Vec<Row>,
}

pub(crate) fn model(root: &Path, opts: &ModelOptions) -> Result<()> {
    let mut command = "cargo xtask bench model".to_owned();
    if opts.quick {
        command.push_str(" --quick");
    }
    if let Some(dir) = &opts.cache_dir {
        command.push_str(&format!(" --cache-dir {}", dir.display()));
    }
    let passes = Passes::new(opts.quick);
    let threads = available_threads();
    // When and at which commit the run started (a long run may outlive a commit).
    let provenance = Provenance::collect(root);
    let loadavg_at_start = loadavg();
    let mut notes = Vec::new();
    let raw_dir = root.join("benchmarks/results/raw/model");
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
    println!("\n==> cargo build --release -p qattn-model --example bench_forward");
    run(cargo().current_dir(root).args([
        "build",
        "--release",
        "-p",
        "qattn-model",
        "--example",
        "bench_forward",
    ]))?;
    // Run a private copy: a build in the shared target folder (someone's `cargo test`) must
    // not swap the binary between configurations.
    let built = target_directory(root)?.join("release/examples/bench_forward");
    let example = raw_dir.join("bench_forward");
    fs::copy(&built, &example)
        .with_context(|| format!("copying {} to {}", built.display(), example.display()))?;

    // (c) One process per configuration.
    let configs = plan();
    let n = configs.len();
    println!(
        "\n==> {n} configurations, {} warm-up + {} timed passes each, batch {BATCH} × {SEQ} \
         tokens, {threads} threads",
        passes.warmup, passes.iters
    );
    let mut measured = Vec::new();
    let mut torch_info = None;
    for (i, this) in configs.iter().enumerate() {
        let config = &this.config;
        println!("[{}/{n}] {} …", i + 1, this.label());
        let command = |json_path: &Path| -> Option<Command> {
            let mut cmd = if is_torch(config) {
                let mut cmd = Command::new(python.as_ref()?);
                cmd.arg(root.join("benchmarks/baselines/hf_bert.py"))
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
                    .env("RAYON_NUM_THREADS", threads.to_string());
                cmd
            };
            cmd.current_dir(root)
                .args(["--batch", &BATCH.to_string(), "--seq", &SEQ.to_string()])
                .args(["--warmup", &passes.warmup.to_string()])
                .args(["--iters", &passes.iters.to_string()])
                .arg("--json")
                .arg(json_path);
            Some(cmd)
        };
        let mut best: Option<Measurement> = None;
        for attempt in 1..=ATTEMPTS {
            let json_path = raw_dir.join(this.file_name(attempt));
            let Some(mut cmd) = command(&json_path) else {
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
                    if is_torch(config) && torch_info.is_none() {
                        torch_info = parse_torch_info(&v);
                    }
                    parse_measurement(&v, BATCH, SEQ)
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
                "      {} s/batch, {} sequences/s, peak RSS {} MiB, other processes {} cores",
                sig3(m.median_s),
                sig3(BATCH as f64 / m.median_s),
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

    // (d) Assemble, write, print.
    let rows = build_rows(&measured, BATCH);
    let targets = evaluate_targets(&rows);
    let report = Report {
        command,
        provenance,
        quick: opts.quick,
        model: MODEL_ID.to_owned(),
        snapshot: snapshot.display().to_string(),
        batch: BATCH,
        seq: SEQ,
        dtype: "f32",
        passes,
        threads,
        torch: torch_info,
        loadavg_at_start,
        loadavg_at_end: loadavg(),
        statistic: "median of single forward-pass wall times, one process per configuration",
        notes,
        targets,
        rows,
    };
    write_results(root, "model", &report, &markdown(&report))
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

fn markdown(r: &Report) -> String {
    let mut s = r
        .provenance
        .markdown_header("qattn-model forward benchmark", &r.command, None);
    match &r.torch {
        Some(t) => s.push_str(&format!(
            "- PyTorch: torch {}, transformers {} (`AutoModel`, f32, eval, `inference_mode`, CPU, \
             {} threads)\n",
            t.torch,
            t.transformers.as_deref().unwrap_or("?"),
            t.threads.map_or("?".to_owned(), |n| n.to_string())
        )),
        None => s.push_str("- PyTorch: unavailable (see notes); the PyTorch rows are empty\n"),
    }
    let rust_threads: Vec<String> = r
        .rows
        .iter()
        .filter(|row| row.engine == "qattn")
        .filter_map(|row| row.threads.map(|t| t.to_string()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    s.push_str(&format!(
        "- qattn: `bench_forward` example of qattn-model, {} threads (`RAYON_NUM_THREADS={}`)\n",
        if rust_threads.is_empty() {
            "?".to_owned()
        } else {
            rust_threads.join("/")
        },
        r.threads
    ));
    s.push_str(&format!(
        "- Workload: `{}`, batch {} × {} tokens, {}, no padding, the same deterministic token \
         ids on both sides; {} warm-up and {} timed forward passes per configuration{}\n",
        r.model,
        r.batch,
        r.seq,
        r.dtype,
        r.passes.warmup,
        r.passes.iters,
        if r.quick { " (quick run)" } else { "" }
    ));
    s.push_str(&format!(
        "- Statistic: {}; sequences/s = batch / median. × PyTorch sdpa = this throughput / \
         PyTorch sdpa's (> 1: faster); × exact = this throughput / qattn exact's. Peak RSS: \
         `VmHWM` (qattn) or `ru_maxrss` (Python, including the interpreter and libtorch), MiB\n",
        r.statistic
    ));
    s.push_str(
        "- Order: PyTorch eager, qattn exact, PyTorch sdpa, the estimators, then PyTorch sdpa, \
         qattn exact and PyTorch eager again (run 2), so the rows the target compares are close \
         in time and their two runs show how much the machine drifted; ratios compare rows of \
         the same run (the estimators: run 1), and a target is met only when it is met in both \
         runs\n",
    );
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
    let mean = |config: &str| {
        r.rows
            .iter()
            .find(|row| row.config == config)
            .and_then(|row| row.output_abs_mean)
    };
    if let (Some(ours), Some(theirs)) = (mean(EXACT), mean(EAGER)) {
        s.push_str(&format!(
            "- Output check: mean |last_hidden_state| is {ours:.6} (qattn exact) and {theirs:.6} \
             (PyTorch eager)\n"
        ));
    }
    for n in &r.notes {
        s.push_str(&format!("- Note: {n}\n"));
    }
    s.push_str(&targets_markdown("Targets (issue 3)", &r.targets));
    s.push_str(
        "\n## Results\n\n\
         | configuration | median s/batch | sequences/s | × PyTorch sdpa | × exact | peak RSS (MiB) \
         | other load (cores) |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in &r.rows {
        let mut name = match row.config.as_str() {
            EAGER => "PyTorch eager".to_owned(),
            SDPA => "PyTorch sdpa".to_owned(),
            spec => format!("qattn {spec}"),
        };
        if row.run != 1 {
            name.push_str(&format!(" (run {})", row.run));
        }
        s.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} |\n",
            cell(row.median_s, sig3),
            cell(row.seqs_per_s, sig3),
            cell(row.ratio_vs_torch_sdpa, |x| format!("{x:.2}")),
            cell(row.ratio_vs_exact, |x| format!("{x:.2}")),
            cell(row.peak_rss_mb, |x| format!("{x:.0}")),
            cell(row.other_load_cores, |x| format!("{x:.2}")),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;
    use serde_json::json;

    fn m(median_s: f64) -> Option<Measurement> {
        Some(Measurement {
            median_s,
            iters: 10,
            peak_rss_mb: Some(200.0),
            threads: Some(2),
            output_abs_mean: Some(0.1),
            cpu_s: Some(20.0),
            other_load: Some(0.01),
            raw_json: None,
        })
    }

    /// A measurement taken while other processes used `load` cores.
    fn busy(median_s: f64, load: f64) -> Option<Measurement> {
        m(median_s).map(|m| Measurement {
            other_load: Some(load),
            ..m
        })
    }

    fn report(rows: Vec<Row>, targets: Vec<Target>) -> Report {
        Report {
            command: "cargo xtask bench model".to_owned(),
            provenance: Provenance::for_tests(),
            quick: false,
            model: MODEL_ID.to_owned(),
            snapshot: "snap".to_owned(),
            batch: BATCH,
            seq: SEQ,
            dtype: "f32",
            passes: Passes::new(false),
            threads: 2,
            torch: None,
            loadavg_at_start: None,
            loadavg_at_end: None,
            statistic: "median",
            notes: vec![],
            targets,
            rows,
        }
    }

    #[test]
    fn options() {
        let o = parse_options(&["--quick", "--cache-dir", "/c"]).unwrap();
        assert!(o.quick);
        assert_eq!(o.cache_dir.as_deref(), Some(Path::new("/c")));
        assert!(parse_options(&["--cache-dir"]).is_err());
        assert!(parse_options(&["--native"]).is_err());
        assert_eq!(Passes::new(true).iters, 3);
    }

    #[test]
    fn configurations() {
        let p = plan();
        let labels: Vec<String> = p.iter().map(Run::label).collect();
        assert_eq!(labels[..3], [EAGER, EXACT, SDPA]);
        assert_eq!(
            labels[labels.len() - 3..],
            [
                "pytorch-sdpa (run 2)",
                "exact (run 2)",
                "pytorch-eager (run 2)"
            ]
        );
        assert_eq!(p.len(), 16);
        for spec in [
            "adaptive:2:8",
            "adaptive:8:32",
            "topk:8:32",
            "cv:4:8",
            "stratified:32",
        ] {
            assert!(p.contains(&Run::new(spec, 1)), "{spec} missing from {p:?}");
        }
        assert_eq!(Run::new("cv:4:8", 1).file_name(1), "cv_4_8.json");
        assert_eq!(Run::new(EXACT, 2).file_name(1), "exact.run2.json");
        assert_eq!(Run::new(EXACT, 2).file_name(3), "exact.run2.attempt3.json");
    }

    /// Measurements of run 1.
    fn first(list: &[(&str, Option<Measurement>)]) -> Vec<(Run, Option<Measurement>)> {
        list.iter()
            .map(|(c, m)| (Run::new(c, 1), m.clone()))
            .collect()
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
            parse_measurement(&v, 32, 128).unwrap(),
            Measurement {
                median_s: 0.5,
                iters: 3,
                peak_rss_mb: Some(215.5),
                threads: Some(2),
                output_abs_mean: Some(0.12),
                cpu_s: Some(3.5),
                other_load: None,
                raw_json: None,
            }
        );
        assert!(parse_measurement(&v, 16, 128).is_err(), "wrong batch");
        assert!(parse_measurement(&v, 32, 64).is_err(), "wrong length");
        let zero = json!({"batch": 32, "seq": 128, "times_s": [0.0], "median_s": 0.0});
        assert!(parse_measurement(&zero, 32, 128).is_err());
        let empty = json!({"batch": 32, "seq": 128, "times_s": [], "median_s": 1.0});
        assert!(parse_measurement(&empty, 32, 128).is_err());

        let t = json!({"torch_version": "2.15.0", "transformers_version": "5.0.0", "threads": 2});
        assert_eq!(
            parse_torch_info(&t),
            Some(TorchInfo {
                torch: "2.15.0".to_owned(),
                transformers: Some("5.0.0".to_owned()),
                threads: Some(2),
            })
        );
        assert_eq!(parse_torch_info(&json!({})), None);
    }

    #[test]
    fn ratios_and_targets_met() {
        let measured = first(&[
            (EAGER, m(1.0)),
            (EXACT, m(0.5)),
            (SDPA, m(0.8)),
            ("stratified:8", m(0.25)),
            ("multinomial:8", None),
        ]);
        let rows = build_rows(&measured, 32);
        let order: Vec<&str> = rows.iter().map(|r| r.config.as_str()).collect();
        assert_eq!(order, [EAGER, SDPA, EXACT, "multinomial:8", "stratified:8"]);
        let find = |c: &str| rows.iter().find(|r| r.config == c).unwrap();
        assert_eq!(find(EXACT).seqs_per_s, Some(64.0));
        assert!((find(EXACT).ratio_vs_torch_sdpa.unwrap() - 1.6).abs() < 1e-12);
        assert_eq!(find(EXACT).ratio_vs_exact, Some(1.0));
        assert_eq!(find("stratified:8").ratio_vs_exact, Some(2.0));
        assert_eq!(find(SDPA).ratio_vs_torch_sdpa, Some(1.0));
        assert_eq!(find(SDPA).ratio_vs_exact, None, "not shown on PyTorch rows");
        let failed = find("multinomial:8");
        assert_eq!((failed.seqs_per_s, failed.ratio_vs_exact), (None, None));

        let targets = evaluate_targets(&rows);
        let status: Vec<Status> = targets.iter().map(|t| t.status).collect();
        assert_eq!(status, [Status::Met, Status::Met]);
        assert_eq!(targets[0].observed, "2.00× PyTorch eager (run 1)");

        let md = markdown(&report(rows, targets));
        assert!(
            md.contains("| qattn exact | 0.500 | 64.0 | 1.60 | 1.00 | 200 | 0.01 |"),
            "{md}"
        );
        assert!(
            md.contains("| qattn multinomial:8 | — | — | — | — | — | — |"),
            "{md}"
        );
        assert!(
            md.contains("| PyTorch sdpa | 0.800 | 40.0 | 1.00 | — | 200 | 0.01 |"),
            "{md}"
        );
        assert!(!md.contains("not met"), "{md}");
    }

    #[test]
    fn targets_not_met_and_missing() {
        // Exact is faster than eager but slower than SDPA: one met, one not met.
        let rows = build_rows(
            &first(&[(EAGER, m(1.0)), (EXACT, m(0.9)), (SDPA, m(0.6))]),
            32,
        );
        let targets = evaluate_targets(&rows);
        let status: Vec<Status> = targets.iter().map(|t| t.status).collect();
        assert_eq!(status, [Status::Met, Status::NotMet]);
        assert_eq!(targets[1].observed, "0.67× PyTorch sdpa (run 1)");
        let md = markdown(&report(rows, targets));
        assert!(md.contains("| not met |"), "{md}");

        // No PyTorch (install failed) or no exact run: no data, never met.
        let rows = build_rows(&first(&[(EXACT, m(0.5)), (SDPA, None)]), 32);
        let targets = evaluate_targets(&rows);
        assert!(targets.iter().all(|t| t.status == Status::NoData));
        assert_eq!(rows[0].ratio_vs_torch_sdpa, None);
    }

    #[test]
    fn second_run_must_meet_the_target_too() {
        // Run 1: exact 1.25× both baselines; run 2 (the machine drifted): exact 0.8× sdpa.
        let mut measured = first(&[(EAGER, m(1.0)), (EXACT, m(0.8)), (SDPA, m(1.0))]);
        measured.push((Run::new(SDPA, 2), m(0.8)));
        measured.push((Run::new(EXACT, 2), m(1.0)));
        measured.push((Run::new(EAGER, 2), m(1.0)));
        let rows = build_rows(&measured, 32);
        let labels: Vec<(&str, u8)> = rows.iter().map(|r| (r.config.as_str(), r.run)).collect();
        assert_eq!(
            labels,
            [
                (EAGER, 1),
                (EAGER, 2),
                (SDPA, 1),
                (SDPA, 2),
                (EXACT, 1),
                (EXACT, 2)
            ]
        );
        let exact2 = rows
            .iter()
            .find(|r| r.config == EXACT && r.run == 2)
            .unwrap();
        assert_eq!(
            exact2.ratio_vs_torch_sdpa,
            Some(0.8),
            "run 2 vs sdpa of run 2"
        );
        assert_eq!(exact2.ratio_vs_exact, Some(1.0));
        let targets = evaluate_targets(&rows);
        let status: Vec<Status> = targets.iter().map(|t| t.status).collect();
        assert_eq!(status, [Status::Met, Status::NotMet]);
        assert_eq!(
            targets[1].observed,
            "1.25× PyTorch sdpa (run 1), 0.80× PyTorch sdpa (run 2)"
        );
        let md = markdown(&report(rows, targets));
        assert!(
            md.contains("| qattn exact (run 2) | 1.00 | 32.0 | 0.80 | 1.00 | 200 | 0.01 |"),
            "{md}"
        );
    }

    #[test]
    fn disturbed_rows_make_targets_unreliable() {
        // The SDPA run was slowed by other processes: the exact-vs-SDPA ratio says "met" but
        // cannot be trusted; the exact-vs-eager target, from quiet rows, stands.
        let rows = build_rows(
            &first(&[(EAGER, m(0.5)), (EXACT, m(1.0)), (SDPA, busy(2.0, 0.9))]),
            32,
        );
        let targets = evaluate_targets(&rows);
        let status: Vec<Status> = targets.iter().map(|t| t.status).collect();
        assert_eq!(status, [Status::NotMet, Status::Unreliable]);
        assert!(targets[1].observed.contains("0.90 cores"), "{targets:?}");
        let md = markdown(&report(rows, targets));
        assert!(md.contains("| unreliable (machine busy) |"), "{md}");
        assert!(
            md.contains("| 2.00 | 16.0 | 1.00 | — | 200 | 0.90 |"),
            "{md}"
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
