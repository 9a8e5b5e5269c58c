//! `cargo xtask bench serve`: requests/s and latency of `qattn serve` on loopback against a
//! Python FastAPI + uvicorn + transformers server doing the same work, in the same run.
//!
//! The grid: concurrency 1, 4, 16, 64 × {embed, classify} × {short ~20-token sentence,
//! 128-token text} × {exact, `stratified:32`} for qattn, and the same grid (exact only) for
//! the Python baseline with 1 and 2 uvicorn workers. `qattn-load` (crates/qattn-load) drives
//! both servers with the same texts and concurrency, excludes warm-up requests, and measures
//! the candle f32 matmul rate for the FLOP ceiling (≈ 2 × encoder parameters × tokens per
//! request). Servers are started one at a time and always stopped (also on error, through
//! [`ServerGuard`]'s `Drop`). Results: `benchmarks/results/serve.{json,md}`, written
//! atomically.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use super::side_by_side::{self, MODEL_ID, Options};
use super::{Provenance, Status, Target, cell, ensure_torch, sig3, target_directory};
use crate::{cargo, output, run};

/// Concurrency levels of the grid.
const CONCURRENCY: [usize; 4] = [1, 4, 16, 64];
/// The Monte-Carlo estimator of the grid.
const MC_SPEC: &str = "stratified:32";
/// uvicorn worker counts tried for the baseline.
const PY_WORKERS: [usize; 2] = [1, 2];
/// Model names the qattn server serves the two checkpoints under.
const EMBED_NAME: &str = "minilm";
const CLASSIFY_NAME: &str = "minilm-cls";
/// Cores of other processes above which a point is flagged (as in the other benches).
const OTHER_LOAD_MAX: f64 = side_by_side::OTHER_LOAD_MAX;
/// The target of issue 7: this many times the best Python configuration's requests/s.
const TARGET_RATIO: f64 = 2.0;

pub(crate) fn parse_options(args: &[&str]) -> std::result::Result<Options, String> {
    side_by_side::parse_options("serve", args)
}

/// How long and how much each grid point runs.
#[derive(Clone, Copy, Debug, Serialize)]
struct Budget {
    duration_s: f64,
    max_requests: u64,
    /// Warm-up requests: max(this, 2 × concurrency).
    min_warmup: u64,
}

impl Budget {
    fn new(quick: bool) -> Budget {
        if quick {
            Budget {
                duration_s: 3.0,
                max_requests: 600,
                min_warmup: 8,
            }
        } else {
            Budget {
                duration_s: 8.0,
                max_requests: 3000,
                min_warmup: 16,
            }
        }
    }
}

/// One grid point's measurement.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Point {
    /// `qattn` or `python-<N>w`.
    server: String,
    estimator: String,
    method: String,
    workload: String,
    concurrency: usize,
    ok: u64,
    errors: u64,
    error_samples: Vec<String>,
    wall_s: f64,
    requests_per_s: f64,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Average cores the server process tree used during the timed phase.
    server_cores: Option<f64>,
    /// Average cores the load generator used.
    client_cores: Option<f64>,
    /// Average cores every other process on the machine used.
    other_cores: Option<f64>,
    /// Requests/s the FLOP ceiling allows for this workload.
    ceiling_rps: Option<f64>,
    /// requests_per_s / ceiling_rps.
    fraction_of_ceiling: Option<f64>,
    /// requests_per_s / the best Python configuration's at the same method, workload and
    /// concurrency (qattn rows only).
    ratio_vs_best_python: Option<f64>,
    /// The answer to the workload's first text (embedding or class scores).
    #[serde(skip)]
    sample: Option<Vec<f64>>,
}

impl Point {
    fn disturbed(&self) -> bool {
        self.other_cores.is_some_and(|c| c > OTHER_LOAD_MAX)
    }
}

/// The whole report (`serve.json`).
#[derive(Serialize, Debug)]
pub(crate) struct Report {
    #[serde(flatten)]
    provenance: Provenance,
    model: String,
    quick: bool,
    budget: Budget,
    workload: Value,
    encoder_layer_params: u64,
    matmul: Vec<Value>,
    /// The matmul rate used for the ceiling: the highest median of the measurements.
    matmul_gflops: Option<f64>,
    points: Vec<Point>,
    output_check: Vec<String>,
    targets: Vec<Target>,
    notes: Vec<String>,
}

pub(crate) fn serve(root: &Path, opts: &Options) -> Result<()> {
    let report = run_bench(root, opts)?;
    let md = markdown(&report, opts.quick);
    super::write_results(root, "serve", &report, &md)
}

fn run_bench(root: &Path, opts: &Options) -> Result<Report> {
    let provenance = Provenance::collect(root);
    let cache = side_by_side::cache_dir(
        root,
        opts.cache_dir.as_deref(),
        std::env::var("QATTN_HF_CACHE").ok().as_deref(),
    );
    let snapshot = side_by_side::snapshot_dir(&cache, MODEL_ID)?;
    println!("==> building qattn and qattn-load (release)");
    run(cargo().current_dir(root).args([
        "build",
        "--release",
        "-p",
        "qattn-cli",
        "--bin",
        "qattn",
        "-p",
        "qattn-load",
        "--bin",
        "qattn-load",
    ]))?;
    let release = target_directory(root)?.join("release");
    let qattn = release.join("qattn");
    let load = release.join("qattn-load");
    let work = target_directory(root)?.join("bench-serve");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let cache_arg = cache.display().to_string();

    let classifier = work.join("minilm-cls");
    if !classifier.join("qattn.json").is_file() {
        println!(
            "==> saving the 2-label classifier checkpoint to {}",
            classifier.display()
        );
        output(Command::new(&load).args([
            "save-classifier",
            "--model",
            MODEL_ID,
            "--cache-dir",
            &cache_arg,
            "--seed",
            "0",
            "--out",
            &classifier.display().to_string(),
        ]))?;
    }
    let workload: Value = serde_json::from_str(&output(Command::new(&load).args([
        "workload",
        "--tokenizer",
        MODEL_ID,
        "--cache-dir",
        &cache_arg,
    ]))?)
    .context("parsing `qattn-load workload` output")?;
    let params = workload["encoder_layer_params"]
        .as_u64()
        .context("`qattn-load workload`: no encoder_layer_params")?;
    let mut matmul = vec![matmul_rate(&load)?];

    let budget = Budget::new(opts.quick);
    let mut points = Vec::new();
    for estimator in ["exact", MC_SPEC] {
        let server = start_qattn(&qattn, &load, &cache, &classifier, estimator, &work)?;
        grid(&load, &server, &cache_arg, estimator, budget, &mut points)?;
        drop(server);
    }
    match ensure_torch(root, &["fastapi", "uvicorn"]) {
        Ok(python) => {
            for workers in PY_WORKERS {
                let server = start_python(root, &python, &snapshot, &classifier, workers, &work)?;
                grid(&load, &server, &cache_arg, "exact", budget, &mut points)?;
                drop(server);
            }
        }
        Err(why) => println!("==> no Python baseline: {why}"),
    }
    matmul.push(matmul_rate(&load)?);
    let matmul_gflops = matmul
        .iter()
        .filter_map(|m| m["median_gflops"].as_f64())
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
    finish_points(&mut points, &workload, params, matmul_gflops);
    let output_check = output_check(&points);
    let targets = evaluate_targets(&points);
    let mut notes: Vec<String> = busy_note(&points).into_iter().collect();
    notes.extend(matmul_note(&matmul));
    Ok(Report {
        provenance,
        model: MODEL_ID.to_owned(),
        quick: opts.quick,
        budget,
        workload,
        encoder_layer_params: params,
        matmul,
        matmul_gflops,
        points,
        output_check,
        targets,
        notes,
    })
}

/// A note when the matmul rates measured before and after the grid differ by more than 20%:
/// the ceiling then depends on the load of the moment, and a fraction above 100% means the
/// rate was measured at a busier moment than the point.
fn matmul_note(matmul: &[Value]) -> Option<String> {
    let rates: Vec<f64> = matmul
        .iter()
        .filter_map(|m| m["median_gflops"].as_f64())
        .collect();
    let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rates.iter().copied().fold(0.0, f64::max);
    (rates.len() > 1 && hi > 1.2 * lo).then(|| {
        format!(
            "the matmul rate moved from {lo:.0} to {hi:.0} GFLOP/s between measurements (other \
             processes): the FLOP ceiling uses the higher one, and a fraction of the ceiling \
             above 100% means the rate itself was measured while the machine was busier"
        )
    })
}

/// A note when points were measured while other processes were busy.
fn busy_note(points: &[Point]) -> Option<String> {
    let busy: Vec<f64> = points
        .iter()
        .filter(|p| p.disturbed())
        .filter_map(|p| p.other_cores)
        .collect();
    if busy.is_empty() {
        return None;
    }
    let mean = busy.iter().sum::<f64>() / busy.len() as f64;
    Some(format!(
        "{} of {} points (marked *) ran while other processes used more than {OTHER_LOAD_MAX} \
         cores ({mean:.2} on average over those points): their numbers measure a shared \
         machine, not qattn or Python alone, and targets that depend on them are unreliable",
        busy.len(),
        points.len()
    ))
}

fn matmul_rate(load: &Path) -> Result<Value> {
    println!("==> candle f32 matmul rate (1024³)");
    let v: Value = serde_json::from_str(&output(Command::new(load).args(["matmul-rate"]))?)
        .context("parsing `qattn-load matmul-rate` output")?;
    if let Some(g) = v["median_gflops"].as_f64() {
        println!("    {g:.1} GFLOP/s (median)");
    }
    Ok(v)
}

/// A running server: its process (tree) is stopped when this is dropped.
struct ServerGuard {
    /// `qattn` or `python-<N>w`.
    label: String,
    child: Child,
    /// `grpc` or `http`.
    target: &'static str,
    addr: String,
    log: PathBuf,
}

impl ServerGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let pid = self.child.id();
        let tree = process_tree(pid);
        // SIGTERM first (graceful; uvicorn stops its workers), SIGKILL whatever is left.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in tree.into_iter().filter(|&p| p != pid) {
            if Path::new(&format!("/proc/{p}")).exists() {
                let _ = Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        println!("    stopped {} (pid {pid})", self.label);
    }
}

/// `pid` and its descendants, from `/proc/*/stat`.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(pp) =
                proc_stat_fields(p).and_then(|f| f.get(1).and_then(|s| s.parse().ok()))
            {
                parents.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let cur = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3, the state, first).
fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat[stat.rfind(')')? + 2..]
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// CPU seconds (user + system) of `pid` and its descendants.
fn tree_cpu_s(pid: u32) -> Option<f64> {
    let mut total = 0.0;
    for p in process_tree(pid) {
        let f = proc_stat_fields(p)?;
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        total += ticks / 100.0;
    }
    Some(total)
}

fn machine_busy_s() -> Option<f64> {
    side_by_side::parse_busy_s(&fs::read_to_string("/proc/stat").ok()?)
}

/// A free loopback port (bound, read, released; the server binds it right after).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = file.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

/// Starts `qattn serve` with the embedding model and the classifier, both with `estimator`.
fn start_qattn(
    qattn: &Path,
    load: &Path,
    cache: &Path,
    classifier: &Path,
    estimator: &str,
    work: &Path,
) -> Result<ServerGuard> {
    let port = free_port()?;
    let metrics = free_port()?;
    let log = work.join(format!("qattn-serve-{}.log", estimator.replace(':', "-")));
    println!(
        "==> starting qattn serve ({estimator}) on 127.0.0.1:{port}; log {}",
        log.display()
    );
    let mut cmd = Command::new(qattn);
    cmd.args(qattn_serve_args(
        cache, classifier, estimator, port, metrics,
    ));
    let child = spawn_logged(&mut cmd, &log)?;
    let mut guard = ServerGuard {
        label: format!("qattn serve ({estimator})"),
        child,
        target: "grpc",
        addr: format!("http://127.0.0.1:{port}"),
        log,
    };
    wait_ready(&mut guard, port, load, &cache.display().to_string())?;
    Ok(guard)
}

/// The command line of `qattn serve` for one estimator.
fn qattn_serve_args(
    cache: &Path,
    classifier: &Path,
    estimator: &str,
    port: u16,
    metrics: u16,
) -> Vec<String> {
    vec![
        "serve".to_owned(),
        "--model".to_owned(),
        format!("{MODEL_ID}={EMBED_NAME}"),
        "--model".to_owned(),
        format!("{}={CLASSIFY_NAME}", classifier.display()),
        "--attention".to_owned(),
        estimator.to_owned(),
        "--cache-dir".to_owned(),
        cache.display().to_string(),
        "--offline".to_owned(),
        "--host".to_owned(),
        "127.0.0.1".to_owned(),
        "--port".to_owned(),
        port.to_string(),
        "--metrics-port".to_owned(),
        metrics.to_string(),
    ]
}

fn start_python(
    root: &Path,
    python: &Path,
    snapshot: &Path,
    classifier: &Path,
    workers: usize,
    work: &Path,
) -> Result<ServerGuard> {
    let port = free_port()?;
    let log = work.join(format!("python-{workers}w.log"));
    println!(
        "==> starting the Python baseline ({workers} uvicorn worker(s)) on 127.0.0.1:{port}; log {}",
        log.display()
    );
    let mut cmd = Command::new(python);
    cmd.arg(root.join("benchmarks/serve/baseline_server.py"))
        .args(["--embed-dir", &snapshot.display().to_string()])
        .args(["--classify-dir", &classifier.display().to_string()])
        .args(["--port", &port.to_string()])
        .args(["--workers", &workers.to_string()]);
    let child = spawn_logged(&mut cmd, &log)?;
    let mut guard = ServerGuard {
        label: format!("python-{workers}w"),
        child,
        target: "http",
        addr: format!("http://127.0.0.1:{port}"),
        log,
    };
    wait_ready(&mut guard, port, Path::new(""), "")?;
    Ok(guard)
}

/// Waits until the server answers (gRPC: an `Embed` through `qattn-load`; HTTP: `GET
/// /health` 200), at most two minutes; fails early when it exits.
fn wait_ready(guard: &mut ServerGuard, port: u16, load: &Path, cache: &str) -> Result<()> {
    let started = Instant::now();
    let limit = Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = guard.child.try_wait() {
            bail!(
                "{} exited with {status} before it was ready; last lines of {}:\n{}",
                guard.label,
                guard.log.display(),
                log_tail(&guard.log)
            );
        }
        let ready = match guard.target {
            "http" => http_health(port),
            // `qattn serve` prints this line once its models are loaded and the port is bound;
            // then one Embed must succeed.
            _ => {
                fs::read_to_string(&guard.log).is_ok_and(|l| l.contains(LISTENING))
                    && grpc_probe(load, &guard.addr, cache)
            }
        };
        if ready {
            println!("    ready after {:.1} s", started.elapsed().as_secs_f64());
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!(
                "{} did not answer on port {port} within {} s; last lines of {}:\n{}",
                guard.label,
                limit.as_secs(),
                guard.log.display(),
                log_tail(&guard.log)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The line `qattn serve` prints when it is ready.
const LISTENING: &str = "qattn-serve listening on";

/// One `Embed` request through `qattn-load` succeeded.
fn grpc_probe(load: &Path, addr: &str, cache: &str) -> bool {
    let out = Command::new(load)
        .args([
            "run", "--target", "grpc", "--addr", addr, "--model", EMBED_NAME,
        ])
        .args([
            "--method",
            "embed",
            "--requests",
            "1",
            "--warmup",
            "0",
            "--timeout",
            "10",
        ])
        .args(["--tokenizer", MODEL_ID, "--cache-dir", cache])
        .stderr(Stdio::null())
        .output();
    out.ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .is_some_and(|v| v["ok"].as_u64() == Some(1))
}

/// `GET /health` answered with status 200.
fn http_health(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")
}

/// Waits (at most a minute) until other processes use less than [`OTHER_LOAD_MAX`] cores over
/// 3 s; the server is idle then, so all the machine's busy time is theirs.
fn wait_for_quiet() {
    let started = Instant::now();
    let mut said = false;
    loop {
        let before = machine_busy_s();
        std::thread::sleep(Duration::from_secs(3));
        let Some(load) = machine_busy_s().zip(before).map(|(a, b)| (a - b) / 3.0) else {
            return;
        };
        if load < OTHER_LOAD_MAX {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            println!("    the machine is still busy ({load:.2} cores); going ahead");
            return;
        }
        if !said {
            println!("    waiting for other processes to go quiet ({load:.2} cores busy) …");
            said = true;
        }
    }
}

/// Runs every (method, workload, concurrency) point against one server.
fn grid(
    load: &Path,
    server: &ServerGuard,
    cache: &str,
    estimator: &str,
    budget: Budget,
    points: &mut Vec<Point>,
) -> Result<()> {
    wait_for_quiet();
    for method in ["embed", "classify"] {
        for workload in ["short", "long"] {
            for c in CONCURRENCY {
                let p = point(load, server, cache, estimator, method, workload, c, budget)?;
                println!(
                    "    {:<10} {:<13} {:<8} {:<5} c={:<3} {:>8.1} req/s  p50 {:>8} ms  p99 {:>8} ms  errors {}{}",
                    server.label,
                    estimator,
                    method,
                    workload,
                    c,
                    p.requests_per_s,
                    cell(p.p50_ms, sig3),
                    cell(p.p99_ms, sig3),
                    p.errors,
                    if p.disturbed() {
                        format!(
                            "  (other processes: {:.2} cores)",
                            p.other_cores.unwrap_or(0.0)
                        )
                    } else {
                        String::new()
                    }
                );
                points.push(p);
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn point(
    load: &Path,
    server: &ServerGuard,
    cache: &str,
    estimator: &str,
    method: &str,
    workload: &str,
    concurrency: usize,
    budget: Budget,
) -> Result<Point> {
    let model = if method == "embed" {
        EMBED_NAME
    } else {
        CLASSIFY_NAME
    };
    let warmup = budget.min_warmup.max(2 * concurrency as u64);
    let mut cmd = Command::new(load);
    cmd.args(["run", "--target", server.target, "--addr", &server.addr])
        .args(["--method", method, "--workload", workload])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--requests", &budget.max_requests.to_string()])
        .args(["--duration", &budget.duration_s.to_string()])
        .args(["--warmup", &warmup.to_string()])
        .args(["--tokenizer", MODEL_ID, "--cache-dir", cache]);
    if server.target == "grpc" {
        cmd.args(["--model", model]);
    }
    let busy0 = machine_busy_s();
    let server0 = tree_cpu_s(server.pid());
    let started = Instant::now();
    let text = output(&mut cmd)?;
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = tree_cpu_s(server.pid()).zip(server0).map(|(a, b)| a - b);
    let busy = machine_busy_s().zip(busy0).map(|(a, b)| a - b);
    let v: Value = serde_json::from_str(&text).context("parsing `qattn-load run` output")?;
    let wall_s = v["wall_s"].as_f64().unwrap_or(0.0);
    let client_cpu = v["client_cpu_s"].as_f64();
    // Server and machine CPU are read around the whole process (warm-up included), so the
    // shares are per second of the whole run; the client's covers the timed phase only.
    let other = match (busy, server_cpu) {
        (Some(b), Some(s)) if elapsed > 0.0 => {
            // The load generator's own CPU during warm-up is not known; count the timed
            // phase's and scale it to the whole run (same work per request).
            let client_all = client_cpu.map_or(0.0, |c| {
                if wall_s > 0.0 {
                    c * elapsed / wall_s
                } else {
                    c
                }
            });
            Some(((b - s - client_all) / elapsed).max(0.0))
        }
        _ => None,
    };
    let ms = |k: &str| v["latency_ms"][k].as_f64();
    Ok(Point {
        server: server.label.split(' ').next().unwrap_or("qattn").to_owned(),
        estimator: estimator.to_owned(),
        method: method.to_owned(),
        workload: workload.to_owned(),
        concurrency,
        ok: v["ok"].as_u64().unwrap_or(0),
        errors: v["errors"].as_u64().unwrap_or(0),
        error_samples: v["error_samples"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        wall_s,
        requests_per_s: v["requests_per_s"].as_f64().unwrap_or(0.0),
        p50_ms: ms("p50"),
        p95_ms: ms("p95"),
        p99_ms: ms("p99"),
        server_cores: server_cpu.map(|s| s / elapsed),
        client_cores: client_cpu.filter(|_| wall_s > 0.0).map(|c| c / wall_s),
        other_cores: other,
        ceiling_rps: None,
        fraction_of_ceiling: None,
        ratio_vs_best_python: None,
        sample: v["sample"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect()),
    })
}

fn is_python(p: &Point) -> bool {
    p.server.starts_with("python")
}

/// Ceilings, fractions and ratios vs the best Python configuration.
fn finish_points(points: &mut [Point], workload: &Value, params: u64, gflops: Option<f64>) {
    let best_python: Vec<(String, String, usize, f64)> = points
        .iter()
        .filter(|p| is_python(p) && p.ok > 0)
        .map(|p| {
            (
                p.method.clone(),
                p.workload.clone(),
                p.concurrency,
                p.requests_per_s,
            )
        })
        .collect();
    for p in points.iter_mut() {
        let tokens = workload["workloads"][&p.workload]["mean_tokens"].as_f64();
        p.ceiling_rps = match (gflops, tokens) {
            (Some(g), Some(t)) if t > 0.0 && params > 0 => {
                Some(g * 1e9 / (2.0 * params as f64 * t))
            }
            _ => None,
        };
        p.fraction_of_ceiling = p
            .ceiling_rps
            .filter(|_| p.ok > 0)
            .map(|c| p.requests_per_s / c);
        if !is_python(p) {
            p.ratio_vs_best_python = best_python
                .iter()
                .filter(|(m, w, c, _)| *m == p.method && *w == p.workload && *c == p.concurrency)
                .map(|(_, _, _, r)| *r)
                .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))))
                .filter(|r| *r > 0.0 && p.ok > 0)
                .map(|r| p.requests_per_s / r);
        }
    }
}

/// The best point (highest requests/s, no errors) of a server kind for a method and workload.
fn best<'a>(
    points: &'a [Point],
    method: &str,
    workload: &str,
    pick: impl Fn(&Point) -> bool,
) -> Option<&'a Point> {
    points
        .iter()
        .filter(|p| p.method == method && p.workload == workload && p.errors == 0 && p.ok > 0)
        .filter(|p| pick(p))
        .max_by(|a, b| a.requests_per_s.total_cmp(&b.requests_per_s))
}

/// Issue 7: qattn (exact) ≥ 2× the best Python configuration's requests/s at equal or better
/// p99, per method and workload. Met when some concurrency reaches both; the observation names
/// the qattn point with the highest requests/s among those with p99 ≤ Python's (or overall
/// when none).
fn evaluate_targets(points: &[Point]) -> Vec<Target> {
    let mut targets = Vec::new();
    for method in ["embed", "classify"] {
        for workload in ["short", "long"] {
            let name = format!(
                "{method}, {workload}: qattn exact ≥ {TARGET_RATIO}× the best Python requests/s \
                 at equal or better p99"
            );
            let py = best(points, method, workload, is_python);
            let Some(py) = py else {
                targets.push(Target {
                    target: name,
                    observed: "no Python measurement".to_owned(),
                    status: Status::NoData,
                });
                continue;
            };
            let py_p99 = py.p99_ms.unwrap_or(f64::INFINITY);
            let ours = |p: &Point| !is_python(p) && p.estimator == "exact";
            let within = best(points, method, workload, |p| {
                ours(p) && p.p99_ms.is_some_and(|x| x <= py_p99)
            });
            let shown = within.or_else(|| best(points, method, workload, ours));
            let Some(q) = shown else {
                targets.push(Target {
                    target: name,
                    observed: "no qattn measurement".to_owned(),
                    status: Status::NoData,
                });
                continue;
            };
            let ratio = q.requests_per_s / py.requests_per_s;
            let met = within.is_some() && ratio >= TARGET_RATIO;
            let disturbed = q.disturbed() || py.disturbed();
            targets.push(Target {
                target: name,
                observed: format!(
                    "{ratio:.2}× ({} req/s, p99 {} ms at c={} vs {} {} req/s, p99 {} ms at c={})",
                    sig3(q.requests_per_s),
                    cell(q.p99_ms, sig3),
                    q.concurrency,
                    py.server,
                    sig3(py.requests_per_s),
                    cell(py.p99_ms, sig3),
                    py.concurrency
                ),
                status: if disturbed {
                    Status::Unreliable
                } else if met {
                    Status::Met
                } else {
                    Status::NotMet
                },
            });
        }
    }
    targets
}

/// Largest absolute difference between qattn exact's and Python's answer to the first text.
fn output_check(points: &[Point]) -> Vec<String> {
    let mut lines = Vec::new();
    for method in ["embed", "classify"] {
        let sample = |pick: &dyn Fn(&Point) -> bool| {
            points
                .iter()
                .filter(|p| p.method == method && p.workload == "short" && pick(p))
                .find_map(|p| p.sample.clone())
        };
        let ours = sample(&|p| !is_python(p) && p.estimator == "exact");
        let theirs = sample(&is_python);
        match (ours, theirs) {
            (Some(a), Some(b)) if a.len() == b.len() => {
                let d = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max);
                lines.push(format!(
                    "{method}: {} values, max |qattn exact − Python| = {d:.2e} on the first short text",
                    a.len()
                ));
            }
            (Some(a), Some(b)) => lines.push(format!(
                "{method}: qattn answered {} values, Python {}",
                a.len(),
                b.len()
            )),
            _ => lines.push(format!("{method}: no answer from both servers to compare")),
        }
    }
    lines
}

fn markdown(r: &Report, quick: bool) -> String {
    let command = if quick {
        "cargo xtask bench serve --quick"
    } else {
        "cargo xtask bench serve"
    };
    let mut s = r
        .provenance
        .markdown_header("qattn serve benchmark", command, None);
    let tokens = |w: &str| r.workload["workloads"][w]["mean_tokens"].as_f64();
    s.push_str(&format!(
        "- Workload: `{}`; one text per request; `short` = 8 sentences of {} tokens on average, \
         `long` = 8 texts of {} tokens ([CLS]/[SEP] included), cycled; embed = mean-pooled, \
         L2-normalised embedding; classify = 2-label sequence classification (a head saved \
         once by qattn `save_pretrained`, loaded by both servers)\n",
        r.model,
        cell(tokens("short"), |t| format!("{t:.1}")),
        cell(tokens("long"), |t| format!("{t:.0}")),
    ));
    s.push_str(&format!(
        "- Load: `qattn-load` on the same machine (gRPC: one HTTP/2 channel, C tasks on one \
         thread; HTTP: C keep-alive threads), per point max({} warm-up requests, 2×C) not \
         measured, then up to {} requests or {} s; requests/s = successful requests / wall \
         time; latency percentiles by nearest rank\n",
        r.budget.min_warmup, r.budget.max_requests, r.budget.duration_s
    ));
    s.push_str(
        "- qattn: `qattn serve` (release) with both checkpoints, exact and `stratified:32` \
         attention (separate server runs), default batching. Python: \
         benchmarks/serve/baseline_server.py (FastAPI + uvicorn + transformers, f32, sdpa, \
         one inference at a time per worker, torch threads = cores / workers), 1 and 2 \
         workers, exact only\n",
    );
    s.push_str(&format!(
        "- FLOP ceiling: 2 × {} encoder-layer parameters × tokens per request against the \
         candle f32 1024³ matmul rate measured in this run ({}); requests/s at the ceiling: \
         short {}, long {}. Attention-score FLOPs (≈ 4·T²·H per layer, ~5% at 128 tokens) are \
         not counted\n",
        r.encoder_layer_params,
        r.matmul
            .iter()
            .filter_map(|m| m["median_gflops"].as_f64())
            .map(|g| format!("{g:.0} GFLOP/s"))
            .collect::<Vec<_>>()
            .join(" before, ")
            + " after",
        cell(
            r.points
                .iter()
                .find(|p| p.workload == "short")
                .and_then(|p| p.ceiling_rps),
            sig3
        ),
        cell(
            r.points
                .iter()
                .find(|p| p.workload == "long")
                .and_then(|p| p.ceiling_rps),
            sig3
        ),
    ));
    for line in &r.output_check {
        s.push_str(&format!("- Output check: {line}\n"));
    }
    s.push_str(
        "- Caveats: the load generator runs on the same cores as the server (its share is in \
         the table); the machine is shared with other work: `other` is the cores other \
         processes used during a point, and a point above 0.2 is flagged (*); this is a \
         loopback benchmark, not a network one\n",
    );
    for n in &r.notes {
        s.push_str(&format!("- Note: {n}\n"));
    }
    s.push_str(&super::targets_markdown("Targets (issue 7)", &r.targets));
    s.push_str(
        "\n## Results\n\n| server | attention | method | input | C | req/s | p50 ms | p95 ms | \
         p99 ms | errors | × best Python | of ceiling | server cores | client cores | other |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for p in &r.points {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            p.server,
            p.estimator,
            p.method,
            p.workload,
            p.concurrency,
            sig3(p.requests_per_s),
            if p.disturbed() { "*" } else { "" },
            cell(p.p50_ms, sig3),
            cell(p.p95_ms, sig3),
            cell(p.p99_ms, sig3),
            p.errors,
            cell(p.ratio_vs_best_python, |x| format!("{x:.2}")),
            cell(p.fraction_of_ceiling, |x| format!("{:.1}%", x * 100.0)),
            cell(p.server_cores, |x| format!("{x:.2}")),
            cell(p.client_cores, |x| format!("{x:.2}")),
            cell(p.other_cores, |x| format!("{x:.2}")),
        ));
    }
    let errors: Vec<String> = r
        .points
        .iter()
        .filter(|p| !p.error_samples.is_empty())
        .map(|p| {
            format!(
                "- {} {} {} {} c={}: {}\n",
                p.server,
                p.estimator,
                p.method,
                p.workload,
                p.concurrency,
                p.error_samples.join("; ")
            )
        })
        .collect();
    if !errors.is_empty() {
        s.push_str("\n## Errors (first messages per point)\n\n");
        s.push_str(&errors.concat());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(server: &str, est: &str, method: &str, c: usize, rps: f64, p99: f64) -> Point {
        Point {
            server: server.to_owned(),
            estimator: est.to_owned(),
            method: method.to_owned(),
            workload: "short".to_owned(),
            concurrency: c,
            ok: 100,
            errors: 0,
            error_samples: Vec::new(),
            wall_s: 1.0,
            requests_per_s: rps,
            p50_ms: Some(p99 / 2.0),
            p95_ms: Some(p99 * 0.9),
            p99_ms: Some(p99),
            server_cores: Some(1.5),
            client_cores: Some(0.1),
            other_cores: Some(0.0),
            ceiling_rps: None,
            fraction_of_ceiling: None,
            ratio_vs_best_python: None,
            sample: None,
        }
    }

    fn workload() -> Value {
        serde_json::json!({"workloads": {"short": {"mean_tokens": 20.0}, "long": {"mean_tokens": 128.0}}})
    }

    #[test]
    fn ratios_ceilings_and_targets() {
        let mut points = vec![
            pt("qattn", "exact", "embed", 1, 100.0, 12.0),
            pt("qattn", "exact", "embed", 16, 400.0, 60.0),
            pt("python-1w", "exact", "embed", 1, 80.0, 15.0),
            pt("python-2w", "exact", "embed", 1, 90.0, 20.0),
            pt("python-2w", "exact", "embed", 16, 150.0, 130.0),
        ];
        finish_points(&mut points, &workload(), 10_000_000, Some(200.0));
        // 200 GFLOP/s / (2 × 1e7 × 20) = 500 req/s.
        assert_eq!(points[0].ceiling_rps, Some(500.0));
        assert_eq!(points[0].fraction_of_ceiling, Some(0.2));
        // Best Python at c=1 is the 2-worker one (90 req/s).
        assert!((points[0].ratio_vs_best_python.unwrap() - 100.0 / 90.0).abs() < 1e-12);
        assert_eq!(points[2].ratio_vs_best_python, None, "not on Python rows");
        let targets = evaluate_targets(&points);
        // Best Python: 150 req/s, p99 130 ms; qattn c=16: 400 req/s at p99 60 ms: 2.67×, met.
        assert_eq!(targets[0].status, Status::Met, "{:?}", targets[0]);
        assert!(targets[0].observed.starts_with("2.67×"), "{:?}", targets[0]);
        // Classify has no measurements at all.
        assert_eq!(targets[2].status, Status::NoData);
    }

    #[test]
    fn target_needs_equal_or_better_p99() {
        let mut points = vec![
            pt("qattn", "exact", "embed", 64, 400.0, 200.0),
            pt("qattn", "exact", "embed", 1, 100.0, 10.0),
            pt("python-1w", "exact", "embed", 16, 150.0, 100.0),
        ];
        finish_points(&mut points, &workload(), 1, None);
        let t = &evaluate_targets(&points)[0];
        // The fast qattn point has the worse p99; the one within p99 is only 0.67×.
        assert_eq!(t.status, Status::NotMet, "{t:?}");
        assert!(t.observed.starts_with("0.67×"), "{t:?}");
        let mut busy = points.clone();
        busy[1].other_cores = Some(0.9);
        let t = &evaluate_targets(&busy)[0];
        assert_eq!(t.status, Status::Unreliable, "{t:?}");
    }

    #[test]
    fn markdown_lists_points_and_checks_outputs() {
        let mut points = vec![
            pt("qattn", "exact", "embed", 1, 100.0, 12.0),
            pt("python-1w", "exact", "embed", 1, 50.0, 15.0),
        ];
        points[0].sample = Some(vec![0.5, 0.25]);
        points[1].sample = Some(vec![0.5, 0.2501]);
        let check = output_check(&points);
        assert!(
            check[0].contains("max |qattn exact − Python| = 1.00e-4"),
            "{check:?}"
        );
        assert!(check[1].contains("no answer"), "{check:?}");
        finish_points(&mut points, &workload(), 10_000_000, Some(200.0));
        let report = Report {
            provenance: Provenance::for_tests(),
            model: MODEL_ID.to_owned(),
            quick: true,
            budget: Budget::new(true),
            workload: workload(),
            encoder_layer_params: 10_000_000,
            matmul: vec![serde_json::json!({"median_gflops": 200.0})],
            matmul_gflops: Some(200.0),
            targets: evaluate_targets(&points),
            points,
            output_check: check,
            notes: Vec::new(),
        };
        let md = markdown(&report, true);
        assert!(md.contains("`cargo xtask bench serve --quick`"), "{md}");
        assert!(
            md.contains("| qattn | exact | embed | short | 1 | 100 | 6.00 | 10.8 | 12.0 | 0 | 2.00 | 20.0% | 1.50 | 0.10 | 0.00 |"),
            "{md}"
        );
        assert!(md.contains("short 500, long —"), "{md}");
    }

    #[test]
    fn notes() {
        let m = |g: f64| serde_json::json!({ "median_gflops": g });
        assert!(matmul_note(&[m(100.0), m(110.0)]).is_none());
        let n = matmul_note(&[m(30.0), m(200.0)]).unwrap();
        assert!(n.contains("from 30 to 200 GFLOP/s"), "{n}");
        let mut busy = pt("qattn", "exact", "embed", 1, 1.0, 1.0);
        assert!(busy_note(std::slice::from_ref(&busy)).is_none());
        busy.other_cores = Some(1.5);
        let n = busy_note(&[busy.clone(), pt("qattn", "exact", "embed", 4, 1.0, 1.0)]).unwrap();
        assert!(n.starts_with("1 of 2 points"), "{n}");
    }

    #[test]
    fn options() {
        assert!(parse_options(&["--quick"]).unwrap().quick);
        assert!(parse_options(&["--native"]).is_err());
        let args = qattn_serve_args(Path::new("/c"), Path::new("/m"), "exact", 5, 6);
        assert!(
            args.windows(2).any(|w| w[0] == "--port" && w[1] == "5"),
            "{args:?}"
        );
    }
}
