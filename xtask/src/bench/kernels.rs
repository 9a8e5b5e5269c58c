//! `cargo xtask bench kernels`: criterion benches of `qattn-kernels` side by side with
//! PyTorch's `scaled_dot_product_attention`, reported as ratios.
//!
//! Steps: make sure `benchmarks/.venv` has torch (install it when missing, or say plainly that
//! the PyTorch column stays empty), run the criterion bench, read its `new/` estimates for the
//! groups `fwd` and `fwdbwd`, run `benchmarks/baselines/torch_sdpa.py`, run the
//! `estimator_errors` example, and write `benchmarks/results/kernels.{json,md}` atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use super::{
    EstimatorKey, Provenance, Target, cell, ensure_torch, estimator_order, read_json, sig3,
    target_directory, targets_markdown, threshold_target, write_results,
};
use crate::{cargo, run};

/// Batch size of every benchmarked shape (B·H = 16).
const B: u64 = 2;
/// Heads per batch element.
const H: u64 = 8;
/// Head dimension.
const D: u64 = 64;
/// Forward+backward FLOPs as a multiple of forward FLOPs: FlashAttention's convention counts the
/// backward pass as 2.5× the forward pass, so forward+backward is 3.5× forward.
const FWDBWD_FLOP_FACTOR: f64 = 3.5;
/// The criterion groups this command reads.
const GROUPS: [&str; 2] = ["fwd", "fwdbwd"];
/// Row label of the PyTorch baseline.
const TORCH: &str = "pytorch-sdpa";

pub(crate) struct BenchOptions {
    quick: bool,
    native: bool,
    /// Write the results even from a dirty tree (they say so).
    pub(crate) allow_dirty: bool,
}

pub(crate) fn parse_options(args: &[&str]) -> std::result::Result<BenchOptions, String> {
    let mut opts = BenchOptions {
        quick: false,
        native: false,
        allow_dirty: false,
    };
    for arg in args {
        match *arg {
            "--quick" => opts.quick = true,
            "--native" => opts.native = true,
            "--allow-dirty" => opts.allow_dirty = true,
            other => {
                return Err(format!(
                    "unknown option for `cargo xtask bench kernels`: {other}"
                ));
            }
        }
    }
    Ok(opts)
}

/// Exact-attention FLOPs of one forward call: 4·Lq·Lk·D per head, times B·H, with Lq = Lk.
fn fwd_flops(lk: u64) -> f64 {
    (4 * B * H * lk * lk * D) as f64
}

fn flops(mode: &str, lk: u64) -> f64 {
    match mode {
        "fwdbwd" => FWDBWD_FLOP_FACTOR * fwd_flops(lk),
        _ => fwd_flops(lk),
    }
}

#[derive(Serialize)]
struct Report {
    command: String,
    #[serde(flatten)]
    provenance: Provenance,
    quick: bool,
    rustflags: Option<String>,
    torch: Option<TorchInfo>,
    shape: Shape,
    flop_convention: String,
    notes: Vec<String>,
    targets: Vec<Target>,
    rows: Vec<Row>,
    /// The f32 GEMM row (the `gemm_peak` example and PyTorch's `torch.mm`).
    gemm: Option<Gemm>,
}

#[derive(Serialize, Clone)]
struct TorchInfo {
    version: String,
    threads: Option<u64>,
    /// `torch.mm` on the GEMM row's shape, GFLOP/s.
    gemm_gflops: Option<f64>,
}

/// The f32 GEMM row: candle's matmul against the machine's peak (from the measured clock and
/// FMA width) and against PyTorch in the same run.
#[derive(Serialize, Clone, Debug, PartialEq)]
struct Gemm {
    isa: String,
    lanes: u64,
    threads: u64,
    clock_ghz: f64,
    peak_gflops: f64,
    fma_gflops: f64,
    /// The 14 × 32 AVX-512 micro-kernel over L1-resident panels (no packing, no memory
    /// traffic): the ceiling of any GEMM's inner loop here. `None` without AVX-512F or in
    /// files written before it was measured.
    kernel_gflops: Option<f64>,
    m: u64,
    k: u64,
    n: u64,
    gflops: f64,
    fraction_of_peak: f64,
    torch_gflops: Option<f64>,
}

/// Parses the `gemm_peak` example's JSON.
fn parse_gemm(v: &Value, torch_gflops: Option<f64>) -> Result<Gemm> {
    let num = |x: &Value, key: &str| -> Result<f64> {
        x[key]
            .as_f64()
            .with_context(|| format!("gemm_peak output: no number `{key}`"))
    };
    let g = &v["gemm"];
    Ok(Gemm {
        isa: v["isa"]
            .as_str()
            .context("gemm_peak output: no isa")?
            .to_owned(),
        lanes: num(v, "lanes")? as u64,
        threads: num(v, "threads")? as u64,
        clock_ghz: num(v, "clock_ghz")?,
        peak_gflops: num(v, "peak_gflops")?,
        fma_gflops: num(v, "fma_gflops")?,
        kernel_gflops: v["kernel_gflops"].as_f64(),
        m: num(g, "m")? as u64,
        k: num(g, "k")? as u64,
        n: num(g, "n")? as u64,
        gflops: num(g, "gflops")?,
        fraction_of_peak: num(g, "fraction_of_peak")?,
        torch_gflops,
    })
}

/// The GEMM section of the Markdown report.
fn gemm_markdown(g: &Gemm) -> String {
    let torch = g.torch_gflops.map_or("—".to_owned(), |t| format!("{t:.0}"));
    let ratio = g
        .torch_gflops
        .map_or("—".to_owned(), |t| format!("{:.2}", g.gflops / t));
    format!(
        "\n## f32 GEMM ({m} × {k} × {n}, {threads} threads)\n\n\
         Peak = measured clock {clock:.2} GHz × {lanes} f32 lanes ({isa}) × 2 FLOP per FMA × 2 \
         FMA pipes × {threads} cores = {peak:.0} GFLOP/s; 12 independent FMA chains per core \
         sustained {fma:.0} GFLOP/s (the `gemm_peak` example). The micro-kernel row is the \
         inner loop of a GEMM alone — a 14 × 32 block of C in registers, packed A and B panels \
         resident in L1, 14 broadcasts and 2 loads per 28 FMAs — on every core: no GEMM runs \
         faster than its inner loop.\n\n\
         | matmul | GFLOP/s | of peak | × PyTorch |\n|---|---:|---:|---:|\n\
         | qattn (candle → gemm) | {ours:.0} | {pct:.0}% | {ratio} |\n\
         | PyTorch `torch.mm` | {torch} | {tpct} | 1.00 |\n{kernel}",
        m = g.m,
        k = g.k,
        n = g.n,
        threads = g.threads,
        clock = g.clock_ghz,
        lanes = g.lanes,
        isa = g.isa,
        peak = g.peak_gflops,
        fma = g.fma_gflops,
        ours = g.gflops,
        pct = 100.0 * g.fraction_of_peak,
        kernel = g.kernel_gflops.map_or(String::new(), |k| format!(
            "| micro-kernel ceiling (L1 panels) | {k:.0} | {:.0}% | — |\n",
            100.0 * k / g.peak_gflops
        )),
        tpct = g.torch_gflops.map_or("—".to_owned(), |t| format!(
            "{:.0}%",
            100.0 * t / g.peak_gflops
        )),
    )
}

#[derive(Serialize)]
struct Shape {
    b: u64,
    h: u64,
    d: u64,
    lq_equals_lk: bool,
    dtype: &'static str,
}

impl Shape {
    /// The one shape every kernel benchmark row uses.
    const BENCH: Shape = Shape {
        b: B,
        h: H,
        d: D,
        lq_equals_lk: true,
        dtype: "f32",
    };
}

#[derive(Serialize, Clone, Debug, PartialEq)]
struct Row {
    /// `fwd` or `fwdbwd`.
    mode: String,
    /// Estimator spec, or `pytorch-sdpa` for the baseline.
    estimator: String,
    /// Gradient mode for `fwdbwd` rows: `exact` for the exact estimator, `sampled` otherwise.
    grad_mode: Option<String>,
    lk: u64,
    time_ms: Option<f64>,
    gflops: Option<f64>,
    /// PyTorch time / this time (> 1: faster than PyTorch).
    ratio_vs_torch: Option<f64>,
    /// Our exact time / this time, same mode and Lk.
    ratio_vs_exact: Option<f64>,
    /// Relative L2 error of the output vs exact attention on Gaussian inputs.
    rel_error: Option<f64>,
}

/// One timing read back from criterion or from the PyTorch script.
#[derive(Clone, Debug, PartialEq)]
struct Timing {
    mode: String,
    estimator: String,
    lk: u64,
    time_ms: f64,
}

pub(crate) fn kernels(root: &Path, opts: &BenchOptions) -> Result<()> {
    let mut command = "cargo xtask bench kernels".to_owned();
    if opts.quick {
        command.push_str(" --quick");
    }
    if opts.native {
        command.push_str(" --native");
    }
    let mut notes = Vec::new();
    let target_dir = target_directory(root)?;
    let criterion_home = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir.join("criterion"));
    let raw_dir = root.join("benchmarks/results/raw");
    fs::create_dir_all(&raw_dir).with_context(|| format!("creating {}", raw_dir.display()))?;

    // (a) The PyTorch environment.
    println!("\n==> PyTorch baseline environment (benchmarks/.venv)");
    let python = match ensure_torch(root, &[]) {
        Ok(py) => Some(py),
        Err(reason) => {
            println!("PyTorch baseline unavailable: {reason}");
            notes.push(format!("PyTorch baseline unavailable: {reason}"));
            None
        }
    };

    // (b) Our criterion bench; stale results of the two groups are removed first.
    for g in GROUPS {
        let dir = criterion_home.join(g);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    println!("\n==> cargo bench -p qattn-kernels --bench kernels");
    let mut bench = cargo();
    bench
        .current_dir(root)
        .args(["bench", "-p", "qattn-kernels", "--bench", "kernels"])
        .env("CRITERION_HOME", &criterion_home);
    if opts.quick {
        bench.env("QATTN_BENCH_QUICK", "1").args(["--", "--quick"]);
    } else {
        bench.env_remove("QATTN_BENCH_QUICK");
    }
    let rustflags = if opts.native {
        let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
        if !flags.is_empty() {
            flags.push(' ');
        }
        flags.push_str("-C target-cpu=native");
        // A separate target folder, so the portable release artifacts are not rebuilt.
        bench
            .env("RUSTFLAGS", &flags)
            .env("CARGO_TARGET_DIR", target_dir.join("native"));
        Some(flags)
    } else {
        std::env::var("RUSTFLAGS").ok().filter(|f| !f.is_empty())
    };
    run(&mut bench)?;

    // (c) Criterion results.
    let ours = read_criterion(&criterion_home)?;
    if ours.is_empty() {
        bail!(
            "no criterion results for the groups fwd/fwdbwd under {}",
            criterion_home.display()
        );
    }

    // (d) PyTorch SDPA in the same run.
    let mut torch_info = None;
    let mut torch_rows = Vec::new();
    if let Some(py) = &python {
        println!("\n==> benchmarks/baselines/torch_sdpa.py");
        let json_path = raw_dir.join("torch_sdpa.json");
        let _ = fs::remove_file(&json_path);
        let mut cmd = Command::new(py);
        cmd.current_dir(root)
            .arg(root.join("benchmarks/baselines/torch_sdpa.py"))
            .arg("--json")
            .arg(&json_path);
        if opts.quick {
            cmd.arg("--quick");
        }
        match run(&mut cmd).and_then(|()| read_json(&json_path)) {
            Ok(v) => match parse_torch(&v) {
                Ok((info, rows)) => {
                    torch_info = Some(info);
                    torch_rows = rows;
                }
                Err(e) => notes.push(format!("PyTorch baseline unavailable: {e:#}")),
            },
            Err(e) => {
                println!("PyTorch baseline unavailable: {e:#}");
                notes.push(format!("PyTorch baseline unavailable: {e:#}"));
            }
        }
    }

    // (e) Relative output error of each estimator.
    println!("\n==> cargo run --release -p qattn-kernels --example estimator_errors");
    let errors_path = raw_dir.join("estimator_errors.json");
    let _ = fs::remove_file(&errors_path);
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args([
            "run",
            "--release",
            "-p",
            "qattn-kernels",
            "--example",
            "estimator_errors",
            "--",
            "--json",
        ])
        .arg(&errors_path);
    if opts.quick {
        cmd.env("QATTN_BENCH_QUICK", "1");
    }
    let errors = match run(&mut cmd)
        .and_then(|()| read_json(&errors_path))
        .and_then(|v| parse_errors(&v))
    {
        Ok(e) => e,
        Err(e) => {
            println!("estimator errors unavailable: {e:#}");
            notes.push(format!(
                "relative-error column empty: the estimator_errors example failed: {e:#}"
            ));
            BTreeMap::new()
        }
    };

    // (f) The f32 GEMM row.
    println!("\n==> cargo run --release -p qattn-kernels --example gemm_peak");
    let gemm_path = raw_dir.join("gemm_peak.json");
    let _ = fs::remove_file(&gemm_path);
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args([
            "run",
            "--release",
            "-p",
            "qattn-kernels",
            "--example",
            "gemm_peak",
            "--",
            "--json",
        ])
        .arg(&gemm_path);
    if opts.quick {
        cmd.arg("--quick");
    }
    let torch_gemm = torch_info.as_ref().and_then(|t| t.gemm_gflops);
    let gemm = match run(&mut cmd)
        .and_then(|()| read_json(&gemm_path))
        .and_then(|v| parse_gemm(&v, torch_gemm))
    {
        Ok(g) => Some(g),
        Err(e) => {
            println!("GEMM row unavailable: {e:#}");
            notes.push(format!("GEMM row unavailable: {e:#}"));
            None
        }
    };

    // (g) Assemble, write, print.
    let rows = build_rows(&ours, &torch_rows, &errors);
    let mut targets = evaluate_targets(&rows);
    let seen: Vec<(String, f64)> = gemm
        .iter()
        .map(|g| (g.isa.clone(), g.fraction_of_peak))
        .collect();
    targets.push(threshold_target(
        "f32 GEMM (4096×384×1536) ≥ 0.90 of the f32 peak".to_owned(),
        &seen,
        0.9,
        " of peak",
    ));
    let report = Report {
        command,
        provenance: Provenance::collect(root),
        quick: opts.quick,
        rustflags,
        torch: torch_info,
        shape: Shape::BENCH,
        flop_convention: format!(
            "fwd: exact-attention FLOPs 4*B*H*Lq*Lk*D for every estimator (Monte-Carlo rows show \
             effective throughput); fwdbwd: {FWDBWD_FLOP_FACTOR}x fwd (FlashAttention's \
             convention: backward = 2.5x forward)"
        ),
        notes,
        targets,
        rows,
        gemm,
    };
    write_results(root, "kernels", &report, &markdown(&report))
}

/// Walks `<criterion_home>/{fwd,fwdbwd}/**/new/benchmark.json` and the sibling
/// `estimates.json` (mean point estimate, ns per iteration).
fn read_criterion(criterion_home: &Path) -> Result<Vec<Timing>> {
    let mut files = Vec::new();
    for g in GROUPS {
        find_benchmark_files(&criterion_home.join(g), &mut files)?;
    }
    let mut out = Vec::new();
    for file in files {
        let bench = read_json(&file)?;
        let estimates = read_json(&file.with_file_name("estimates.json"))?;
        match parse_criterion(&bench, &estimates) {
            Ok(Some(t)) => out.push(t),
            Ok(None) => {}
            Err(e) => bail!("{}: {e:#}", file.display()),
        }
    }
    out.sort_by(|a, b| (&a.mode, a.lk, &a.estimator).cmp(&(&b.mode, b.lk, &b.estimator)));
    Ok(out)
}

fn find_benchmark_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            find_benchmark_files(&path, out)?;
        } else if path.file_name().is_some_and(|n| n == "benchmark.json")
            && path
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "new")
        {
            out.push(path);
        }
    }
    Ok(())
}

/// One criterion result; `None` for groups other than `fwd` and `fwdbwd`.
fn parse_criterion(bench: &Value, estimates: &Value) -> Result<Option<Timing>> {
    let group = bench["group_id"].as_str().context("no group_id")?;
    if !GROUPS.contains(&group) {
        return Ok(None);
    }
    let estimator = bench["function_id"].as_str().context("no function_id")?;
    let lk: u64 = bench["value_str"]
        .as_str()
        .context("no value_str (the parameter should be Lk)")?
        .parse()
        .context("value_str is not an integer Lk")?;
    let mean_ns = estimates["mean"]["point_estimate"]
        .as_f64()
        .context("estimates.json: no mean.point_estimate")?;
    if let Some(elements) = bench["throughput"]["Elements"].as_f64() {
        let expected = flops(group, lk);
        if (elements - expected).abs() > 1e-6 * expected {
            eprintln!(
                "warning: {group}/{estimator}/{lk}: the bench declares {elements} elements per \
                 iteration, xtask counts {expected} FLOPs; the bench and xtask disagree on the shape"
            );
        }
    }
    Ok(Some(Timing {
        mode: group.to_owned(),
        estimator: estimator.to_owned(),
        lk,
        time_ms: mean_ns / 1e6,
    }))
}

/// Parses the output of `torch_sdpa.py`.
fn parse_torch(v: &Value) -> Result<(TorchInfo, Vec<Timing>)> {
    let version = v["torch_version"]
        .as_str()
        .context("torch_sdpa.py output: no torch_version")?
        .to_owned();
    for (key, want) in [("b", B), ("h", H), ("d", D)] {
        if let Some(got) = v[key].as_u64()
            && got != want
        {
            bail!("torch_sdpa.py measured {key}={got}, the Rust bench uses {key}={want}");
        }
    }
    let mut rows = Vec::new();
    for r in v["rows"]
        .as_array()
        .context("torch_sdpa.py output: no rows")?
    {
        rows.push(Timing {
            mode: r["mode"].as_str().context("row without mode")?.to_owned(),
            estimator: TORCH.to_owned(),
            lk: r["lk"].as_u64().context("row without lk")?,
            time_ms: r["time_ms"].as_f64().context("row without time_ms")?,
        });
    }
    Ok((
        TorchInfo {
            version,
            threads: v["threads"].as_u64(),
            gemm_gflops: v["gemm"]["gflops"].as_f64(),
        },
        rows,
    ))
}

/// Parses `{"rows":[{"estimator":..,"lk":..,"rel_error":..}]}` from the estimator_errors example.
fn parse_errors(v: &Value) -> Result<BTreeMap<(String, u64), f64>> {
    let mut out = BTreeMap::new();
    for r in v["rows"]
        .as_array()
        .context("estimator_errors output: no rows")?
    {
        let est = r["estimator"].as_str().context("row without estimator")?;
        let lk = r["lk"].as_u64().context("row without lk")?;
        let err = r["rel_error"].as_f64().context("row without rel_error")?;
        out.insert((est.to_owned(), lk), err);
    }
    Ok(out)
}

fn build_rows(
    ours: &[Timing],
    torch: &[Timing],
    errors: &BTreeMap<(String, u64), f64>,
) -> Vec<Row> {
    let time_of = |set: &[Timing], mode: &str, est: &str, lk: u64| {
        set.iter()
            .find(|t| t.mode == mode && t.estimator == est && t.lk == lk)
            .map(|t| t.time_ms)
    };
    // Every (mode, estimator, Lk) seen anywhere gets a row; missing cells stay empty.
    let mut keys: BTreeSet<(String, EstimatorKey, u64)> = BTreeSet::new();
    for t in ours.iter().chain(torch) {
        keys.insert((t.mode.clone(), estimator_order(&t.estimator), t.lk));
    }
    for (est, lk) in errors.keys() {
        keys.insert(("fwd".to_owned(), estimator_order(est), *lk));
    }
    let mut rows = Vec::new();
    for (mode, (_, _, est), lk) in keys {
        let is_torch = est == TORCH;
        let time_ms = if is_torch {
            time_of(torch, &mode, &est, lk)
        } else {
            time_of(ours, &mode, &est, lk)
        };
        let torch_ms = time_of(torch, &mode, TORCH, lk);
        let exact_ms = time_of(ours, &mode, "exact", lk);
        let ratio = |num: Option<f64>| match (num, time_ms) {
            (Some(n), Some(t)) if t > 0.0 => Some(n / t),
            _ => None,
        };
        rows.push(Row {
            grad_mode: match (mode.as_str(), is_torch, est.as_str()) {
                ("fwdbwd", true, _) => Some("autograd".to_owned()),
                ("fwdbwd", false, "exact") => Some("exact".to_owned()),
                ("fwdbwd", false, _) => Some("sampled".to_owned()),
                _ => None,
            },
            gflops: time_ms
                .filter(|t| *t > 0.0)
                .map(|t| flops(&mode, lk) / (t * 1e-3) / 1e9),
            ratio_vs_torch: ratio(torch_ms),
            ratio_vs_exact: if is_torch { None } else { ratio(exact_ms) },
            // The error is a property of the forward output: shown on forward rows only.
            rel_error: if is_torch || mode != "fwd" {
                None
            } else {
                errors.get(&(est.clone(), lk)).copied()
            },
            mode,
            estimator: est,
            lk,
            time_ms,
        });
    }
    rows
}

fn evaluate_targets(rows: &[Row]) -> Vec<Target> {
    let mut out = Vec::new();
    for (mode, label) in [("fwd", "forward"), ("fwdbwd", "forward+backward")] {
        let seen: Vec<(String, f64)> = rows
            .iter()
            .filter(|r| r.mode == mode && r.estimator == "exact" && r.lk >= 1024)
            .filter_map(|r| r.ratio_vs_torch.map(|x| (format!("Lk={}", r.lk), x)))
            .collect();
        out.push(threshold_target(
            format!("exact {label} ≥ 1.0× PyTorch SDPA at every Lk ≥ 1024"),
            &seen,
            1.0,
            "× PyTorch",
        ));
    }
    let strat: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| r.mode == "fwd" && r.estimator == "stratified:32" && r.lk == 2048)
        .filter_map(|r| r.ratio_vs_exact.map(|x| (format!("Lk={}", r.lk), x)))
        .collect();
    out.push(threshold_target(
        "stratified:32 forward ≥ 1.5× our exact forward at Lk = 2048".to_owned(),
        &strat,
        1.5,
        "× exact",
    ));
    let sampled: BTreeSet<String> = rows
        .iter()
        .filter(|r| r.mode == "fwdbwd" && r.grad_mode.as_deref() == Some("sampled"))
        .map(|r| r.estimator.clone())
        .collect();
    if sampled.is_empty() {
        out.push(threshold_target(
            "sampled-gradient forward+backward ≥ 2.5× exact forward+backward at Lk = 2048"
                .to_owned(),
            &[],
            2.5,
            "× exact",
        ));
    }
    for est in sampled {
        let seen: Vec<(String, f64)> = rows
            .iter()
            .filter(|r| r.mode == "fwdbwd" && r.estimator == est && r.lk == 2048)
            .filter_map(|r| r.ratio_vs_exact.map(|x| (format!("Lk={}", r.lk), x)))
            .collect();
        out.push(threshold_target(
            format!(
                "{est} sampled-gradient forward+backward ≥ 2.5× exact forward+backward at Lk = 2048"
            ),
            &seen,
            2.5,
            "× exact",
        ));
    }
    out
}

fn error_cell(x: f64) -> String {
    if x == 0.0 {
        "0".to_owned()
    } else if x < 1e-3 {
        format!("{x:.1e}")
    } else {
        format!("{x:.4}")
    }
}

fn markdown(r: &Report) -> String {
    let mut s = r.provenance.markdown_header(
        "qattn-kernels benchmarks",
        &r.command,
        r.rustflags.as_deref(),
    );
    match &r.torch {
        Some(t) => s.push_str(&format!(
            "- PyTorch: {} (`scaled_dot_product_attention`, f32, CPU, {} threads)\n",
            t.version,
            t.threads.map_or("?".to_owned(), |n| n.to_string())
        )),
        None => s.push_str("- PyTorch: unavailable (see notes); the × PyTorch column is empty\n"),
    }
    s.push_str(&format!(
        "- Shapes: B={B}, H={H} (B·H={}), D={D}, Lq = Lk, f32 on the CPU{}\n",
        B * H,
        if r.quick {
            "; quick run (smaller grid, criterion --quick)"
        } else {
            ""
        }
    ));
    s.push_str(
        "- GFLOP/s counts exact-attention FLOPs, 4·B·H·Lq·Lk·D, for every row (Monte-Carlo rows \
         show effective throughput); fwdbwd counts 3.5× that (FlashAttention's convention: \
         backward = 2.5× forward).\n\
         - × PyTorch = PyTorch time / this time (> 1: faster than PyTorch); × exact = our exact \
         time / this time, same mode and Lk.\n\
         - rel. error: relative L2 error of the output against exact attention on Gaussian inputs \
         (the `estimator_errors` example).\n\
         - fwdbwd: `exact` uses exact gradients, Monte-Carlo estimators use sampled gradients.\n",
    );
    for n in &r.notes {
        s.push_str(&format!("- Note: {n}\n"));
    }
    s.push_str(&targets_markdown("Targets (issue 2)", &r.targets));
    s.push_str(
        "\n## Results\n\n\
         | mode | estimator | grad | Lk | time (ms) | GFLOP/s | × PyTorch | × exact | rel. error |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in &r.rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.mode,
            row.estimator,
            row.grad_mode.as_deref().unwrap_or("—"),
            row.lk,
            cell(row.time_ms, sig3),
            cell(row.gflops, sig3),
            cell(row.ratio_vs_torch, |x| format!("{x:.2}")),
            cell(row.ratio_vs_exact, |x| format!("{x:.2}")),
            cell(row.rel_error, error_cell),
        ));
    }
    if let Some(g) = &r.gemm {
        s.push_str(&gemm_markdown(g));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::Status;

    #[test]
    fn gemm_row_parses_and_renders() {
        let v = json!({"isa": "AVX2+FMA", "lanes": 8, "threads": 2, "clock_ghz": 3.19,
                       "peak_gflops": 204.2, "fma_gflops": 203.9,
                       "gemm": {"m": 4096, "k": 384, "n": 1536, "median_s": 0.029,
                                "gflops": 166.0, "fraction_of_peak": 0.813}});
        let g = parse_gemm(&v, Some(135.0)).unwrap();
        assert_eq!((g.lanes, g.threads, g.m, g.k, g.n), (8, 2, 4096, 384, 1536));
        let md = gemm_markdown(&g);
        assert!(
            md.contains("| qattn (candle → gemm) | 166 | 81% | 1.23 |"),
            "{md}"
        );
        assert!(
            md.contains("| PyTorch `torch.mm` | 135 | 66% | 1.00 |"),
            "{md}"
        );
        assert!(md.contains("3.19 GHz × 8 f32 lanes (AVX2+FMA)"), "{md}");
        assert!(!md.contains("micro-kernel ceiling"), "{md}");
        let mut v = v;
        v["kernel_gflops"] = json!(163.4);
        let md = gemm_markdown(&parse_gemm(&v, Some(135.0)).unwrap());
        assert!(
            md.contains("| micro-kernel ceiling (L1 panels) | 163 | 80% | — |"),
            "{md}"
        );
        let err = parse_gemm(&json!({"isa": "AVX2+FMA"}), None).unwrap_err();
        assert!(format!("{err:#}").contains("lanes"), "{err:#}");
    }
    use super::*;
    use serde_json::json;

    fn t(mode: &str, est: &str, lk: u64, ms: f64) -> Timing {
        Timing {
            mode: mode.to_owned(),
            estimator: est.to_owned(),
            lk,
            time_ms: ms,
        }
    }

    #[test]
    fn flop_counts() {
        assert_eq!(fwd_flops(128), (4 * 16 * 128 * 128 * 64) as f64);
        assert_eq!(flops("fwdbwd", 128), 3.5 * fwd_flops(128));
    }

    #[test]
    fn criterion_json_is_read() {
        let bench = json!({"group_id": "fwd", "function_id": "stratified:32", "value_str": "512",
                           "throughput": {"Elements": fwd_flops(512)}});
        let est = json!({"mean": {"point_estimate": 2.5e6}});
        assert_eq!(
            parse_criterion(&bench, &est).unwrap(),
            Some(t("fwd", "stratified:32", 512, 2.5))
        );
        let other = json!({"group_id": "misc", "function_id": "x", "value_str": "1"});
        assert_eq!(parse_criterion(&other, &est).unwrap(), None);
    }

    #[test]
    fn rows_ratios_and_missing_cells() {
        let ours = [
            t("fwd", "exact", 2048, 100.0),
            t("fwd", "stratified:32", 2048, 50.0),
            t("fwd", "exact", 8192, 1600.0),
            t("fwdbwd", "exact", 2048, 400.0),
            t("fwdbwd", "stratified:32", 2048, 100.0),
        ];
        let torch = [
            t("fwd", TORCH, 2048, 120.0),
            t("fwdbwd", TORCH, 2048, 300.0),
            t("fwd", TORCH, 128, 1.0),
        ];
        let mut errors = BTreeMap::new();
        errors.insert(("stratified:32".to_owned(), 2048), 0.05);
        errors.insert(("multinomial:8".to_owned(), 512), 0.2);
        let rows = build_rows(&ours, &torch, &errors);
        let find = |mode: &str, est: &str, lk: u64| {
            rows.iter()
                .find(|r| r.mode == mode && r.estimator == est && r.lk == lk)
                .unwrap_or_else(|| panic!("no row {mode} {est} {lk}"))
        };
        let e = find("fwd", "exact", 2048);
        assert!((e.ratio_vs_torch.unwrap() - 1.2).abs() < 1e-12);
        assert_eq!(e.ratio_vs_exact, Some(1.0));
        let s = find("fwd", "stratified:32", 2048);
        assert_eq!(s.ratio_vs_exact, Some(2.0));
        assert_eq!(s.rel_error, Some(0.05));
        let big = find("fwd", "exact", 8192);
        assert_eq!(big.ratio_vs_torch, None, "no torch time at 8192");
        let only_err = find("fwd", "multinomial:8", 512);
        assert_eq!((only_err.time_ms, only_err.rel_error), (None, Some(0.2)));
        let torch_only = find("fwd", TORCH, 128);
        assert_eq!(torch_only.ratio_vs_torch, Some(1.0));
        assert_eq!(
            find("fwdbwd", "stratified:32", 2048).grad_mode.as_deref(),
            Some("sampled")
        );
        // Baseline first, then exact, within each (mode, Lk).
        let order: Vec<&str> = rows
            .iter()
            .filter(|r| r.mode == "fwd" && r.lk == 2048)
            .map(|r| r.estimator.as_str())
            .collect();
        assert_eq!(order, [TORCH, "exact", "stratified:32"]);

        let targets = evaluate_targets(&rows);
        let status: Vec<Status> = targets.iter().map(|t| t.status).collect();
        // exact fwd 1.2× torch at 2048 (8192 has no torch time): met; exact fwdbwd 0.75×: not
        // met; stratified fwd 2.0×: met; stratified fwdbwd 4.0×: met.
        assert_eq!(
            status,
            [Status::Met, Status::NotMet, Status::Met, Status::Met]
        );
        let md = markdown(&Report {
            command: "cargo xtask bench kernels --quick".to_owned(),
            provenance: Provenance::for_tests(),
            quick: true,
            rustflags: None,
            torch: None,
            shape: Shape::BENCH,
            flop_convention: String::new(),
            notes: vec![],
            targets,
            rows: rows.clone(),
            gemm: None,
        });
        assert!(
            md.contains("| fwd | multinomial:8 | — | 512 | — | — | — | — | 0.2000 |"),
            "{md}"
        );
        assert!(md.contains("| not met |"), "{md}");
    }

    #[test]
    fn targets_without_data() {
        let targets = evaluate_targets(&[]);
        assert_eq!(targets.len(), 4);
        assert!(targets.iter().all(|t| t.status == Status::NoData));
    }

    #[test]
    fn torch_and_error_json() {
        let v = json!({"torch_version": "2.9.0", "threads": 2, "b": 2, "h": 8, "d": 64,
                       "rows": [{"mode": "fwd", "lk": 512, "time_ms": 3.0}]});
        let (info, rows) = parse_torch(&v).unwrap();
        assert_eq!(info.version, "2.9.0");
        assert_eq!(rows, [t("fwd", TORCH, 512, 3.0)]);
        let wrong = json!({"torch_version": "2", "d": 128, "rows": []});
        assert!(parse_torch(&wrong).is_err());
        assert_eq!(info.gemm_gflops, None);
        let e = json!({"rows": [{"estimator": "stratified:32", "lk": 512, "rel_error": 0.05}]});
        assert_eq!(
            parse_errors(&e).unwrap()[&("stratified:32".to_owned(), 512)],
            0.05
        );
    }
}
