//! CUDA steps: `cargo xtask cuda-check` (compile-check every kernel without a GPU; a CI step)
//! and `cargo xtask gpu-check` (on a machine with an NVIDIA GPU: correctness against the CPU
//! reference and timings against PyTorch SDPA, written to benchmarks/results/gpu.json).
//!
//! nvcc is found as qattn-kernels' build.rs finds it: `$NVCC`, `$CUDA_HOME/bin/nvcc`, `PATH`,
//! then the PyPI wheels (`nvidia-cuda-nvcc` 13.0, see xtask/ci-requirements.txt) in
//! `target/ci-venv` or `target/cuda-venv`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::pyenv::{PyEnv, Ran};
use crate::{cargo, run};

/// Kernel sources compiled with `--use_fast_math` (as in build.rs); every other `.cu` is built
/// with `-fmad=false` because its arithmetic must equal the CPU's.
const FAST_MATH: &[&str] = &["exact", "flash"];
/// Target directory of every `--features cuda` build (kept apart from the shared `target/`).
pub(crate) const CUDA_TARGET_DIR: &str = "target/cuda";

/// nvcc, or why none was found.
pub(crate) fn find_nvcc(root: &Path, py: Option<&PyEnv>) -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("NVCC").map(PathBuf::from) {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("$NVCC={} is not a file", p.display()))
        };
    }
    if let Some(h) = std::env::var_os("CUDA_HOME") {
        let p = PathBuf::from(h).join("bin/nvcc");
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let mut venvs = Vec::new();
    if let Some(py) = py {
        venvs.push(
            py.python()
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf),
        );
    }
    venvs.push(Some(root.join("target/ci-venv")));
    venvs.push(Some(root.join("target/cuda-venv")));
    for venv in venvs.into_iter().flatten() {
        if let Ok(rd) = fs::read_dir(venv.join("lib")) {
            for e in rd.filter_map(|e| e.ok()) {
                let p = e.path().join("site-packages/nvidia/cu13/bin/nvcc");
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
    }
    Err(
        "no nvcc: not in $NVCC, $CUDA_HOME/bin, PATH, target/ci-venv or target/cuda-venv \
         (pip install nvidia-cuda-nvcc==13.0.* etc., see xtask/ci-requirements.txt)"
            .into(),
    )
}

/// `cargo xtask cuda-check`: every `crates/qattn-kernels/cuda/*.cu` to PTX (compute_80) and
/// the PTX to an sm_90 cubin with ptxas (catches register and resource errors without a GPU),
/// then `cargo check -p qattn-kernels --features cuda --all-targets`.
pub(crate) fn cuda_check(root: &Path, py: Option<&PyEnv>) -> Result<Ran> {
    let nvcc = match find_nvcc(root, py) {
        Ok(p) => p,
        Err(why) => return Ok(Ran::Skipped(why)),
    };
    let ptxas = nvcc.with_file_name("ptxas");
    if !ptxas.is_file() {
        bail!("ptxas not found next to {}", nvcc.display());
    }
    let src_dir = root.join("crates/qattn-kernels/cuda");
    let out_dir = root.join("target/cuda-check");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut sources: Vec<PathBuf> = fs::read_dir(&src_dir)
        .with_context(|| format!("reading {}", src_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    if sources.is_empty() {
        bail!("no .cu files in {}", src_dir.display());
    }
    println!("nvcc: {}", nvcc.display());
    for src in &sources {
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .context("non-UTF-8 kernel file name")?;
        let ptx = out_dir.join(format!("{stem}.ptx"));
        let cubin = out_dir.join(format!("{stem}.sm_90.cubin"));
        let mut cmd = Command::new(&nvcc);
        cmd.args(["-ptx", "-arch=compute_80", "-std=c++17", "-O3", "-lineinfo"]);
        cmd.arg(if FAST_MATH.contains(&stem) {
            "--use_fast_math"
        } else {
            "-fmad=false"
        });
        cmd.arg("-I").arg(&src_dir).arg(src).arg("-o").arg(&ptx);
        run(&mut cmd).with_context(|| format!("nvcc on {}", src.display()))?;
        // ptxas writes its resource report (registers, spills, shared memory) to stderr.
        let rep = Command::new(&ptxas)
            .args(["-arch=sm_90", "-v"])
            .arg(&ptx)
            .arg("-o")
            .arg(&cubin)
            .output()
            .with_context(|| format!("running {}", ptxas.display()))?;
        if !rep.status.success() {
            bail!(
                "ptxas sm_90 failed on {}:\n{}",
                ptx.display(),
                String::from_utf8_lossy(&rep.stderr)
            );
        }
        let text = String::from_utf8_lossy(&rep.stderr);
        let mut kernel = String::new();
        for line in text.lines() {
            if let Some(rest) = line.split("Function properties for ").nth(1) {
                kernel = rest.trim().to_string();
            } else if line.contains("Used") && line.contains("registers") {
                let summary = line.split("info    : ").nth(1).unwrap_or(line);
                println!("  {stem}.cu {kernel}: {summary}");
            } else if line.contains("spill") && !line.contains(" 0 bytes spill stores") {
                println!("  {stem}.cu {kernel}: {}", line.trim());
            }
        }
    }
    run(cargo()
        .current_dir(root)
        .env("CARGO_TARGET_DIR", root.join(CUDA_TARGET_DIR))
        .env("NVCC", &nvcc)
        .args([
            "check",
            "-p",
            "qattn-kernels",
            "--features",
            "cuda",
            "--all-targets",
        ]))?;
    Ok(Ran::Done)
}

/// Time limit of `qattn-gpu-check` in `cargo xtask gpu-check` (and in the `run.sh` of
/// `cargo xtask gpu-bundle`); generous: the issue asks for the whole device check to finish
/// within 5 minutes.
pub(crate) const GPU_CHECK_LIMIT: Duration = Duration::from_secs(400);
/// Time limit of the PyTorch SDPA baseline.
pub(crate) const SDPA_LIMIT: Duration = Duration::from_secs(200);

/// Runs `cmd` with inherited stdio, killing it after `limit`; returns its exit status.
fn status_within(cmd: &mut Command, limit: Duration, what: &str) -> Result<ExitStatus> {
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {what}"))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            return Ok(status);
        }
        if start.elapsed() > limit {
            // Best effort: the child may exit between try_wait and kill.
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {} s; killed", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cargo xtask gpu-check`: builds `qattn-gpu-check` (release, `--features cuda`), runs it
/// with its default sizes (limit 400 s), then the PyTorch SDPA baseline (limit 200 s), merging
/// both into benchmarks/results/gpu.json — the same two steps, with the same limits, as the
/// `run.sh` of `cargo xtask gpu-bundle` (xtask/src/gpu_bundle.rs), the procedure for a GPU
/// machine without a Rust toolchain that produced benchmarks/results/gpu.json.
/// Builds `qattn-gpu-check` with the `cuda` feature into [`CUDA_TARGET_DIR`] using `nvcc`
/// (shared by `gpu-check` and `gpu-bundle`).
pub(crate) fn build_gpu_check(root: &Path, nvcc: &Path) -> Result<()> {
    run(cargo()
        .current_dir(root)
        .env("CARGO_TARGET_DIR", root.join(CUDA_TARGET_DIR))
        .env("NVCC", nvcc)
        .args([
            "build",
            "--release",
            "-p",
            "qattn-kernels",
            "--features",
            "cuda",
            "--bin",
            "qattn-gpu-check",
        ]))
}

pub(crate) fn gpu_check(root: &Path) -> Result<()> {
    let nvcc = find_nvcc(root, None).map_err(anyhow::Error::msg)?;
    let target = root.join(CUDA_TARGET_DIR);
    build_gpu_check(root, &nvcc)?;
    let results = root.join("benchmarks/results");
    fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    let rust_json = results.join("gpu-rust.json");
    let status = status_within(
        Command::new(target.join("release/qattn-gpu-check"))
            .arg("--out")
            .arg(&rust_json),
        GPU_CHECK_LIMIT,
        "qattn-gpu-check",
    )?;
    match status.code() {
        Some(0) => {}
        Some(2) => bail!("qattn-gpu-check found no usable GPU (see its message above)"),
        _ => println!("qattn-gpu-check reported failures ({status}); running the baseline anyway"),
    }
    let venv_python = root.join("benchmarks/.venv/bin/python");
    let python = if venv_python.is_file() {
        venv_python
    } else {
        PathBuf::from("python3")
    };
    let py_status = status_within(
        Command::new(python)
            .current_dir(root)
            .env("PYTHONUNBUFFERED", "1")
            .arg("benchmarks/gpu/sdpa_baseline.py")
            .arg("--rust")
            .arg(&rust_json)
            .arg("--out")
            .arg(results.join("gpu.json")),
        SDPA_LIMIT,
        "benchmarks/gpu/sdpa_baseline.py",
    )?;
    if !py_status.success() {
        bail!("benchmarks/gpu/sdpa_baseline.py exited with {py_status}");
    }
    if !status.success() {
        bail!("qattn-gpu-check failed ({status}); see benchmarks/results/gpu.json");
    }
    Ok(())
}
