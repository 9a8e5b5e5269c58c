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
/// Target directory of the `--features cuda` release builds (`gpu-check`, `gpu-bundle`), kept
/// apart from the shared `target/`; the compile check (`cuda-check`) uses the shared one.
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

/// The CUDA libraries candle's cudarc links (`dynamic-linking`): (link name, SONAME of the CUDA
/// 13 release, cudarc's `src/<module>/sys` with the library's functions). At run time the
/// driver's `libcuda.so.1` and the CUDA 13 wheels' libraries (as PyTorch installs them) are
/// loaded by these SONAMEs.
const LINKED_LIBS: &[(&str, &str, &str)] = &[
    ("cuda", "libcuda.so.1", "driver"),
    ("cublas", "libcublas.so.13", "cublas"),
    ("cublasLt", "libcublasLt.so.13", "cublaslt"),
    ("curand", "libcurand.so.10", "curand"),
    ("nvrtc", "libnvrtc.so.13", "nvrtc"),
];

/// Compute capability candle's kernels are compiled for when `CUDA_COMPUTE_CAP` is not set
/// (no GPU here to ask): 90, the H100/H200 the project's GPU runs use.
const DEFAULT_COMPUTE_CAP: &str = "90";

/// The CUDA release in `nvcc --version`'s output as cudarc's `CUDARC_CUDA_VERSION`
/// (`release 13.0,` → `13000`).
fn cudarc_version(nvcc_version: &str) -> Option<String> {
    let release = nvcc_version.split("release ").nth(1)?.split(',').next()?;
    let (major, minor) = release.trim().split_once('.')?;
    let digits = |x: &str| !x.is_empty() && x.chars().all(|c| c.is_ascii_digit());
    (digits(major) && digits(minor)).then(|| format!("{major}0{minor}0"))
}

/// Sets what a `--features cuda` cargo command needs on a machine without a GPU or a system
/// CUDA toolkit: nvcc's folder first on PATH (candle-kernels and cudarc call `nvcc`), `NVCC`,
/// `CUDA_COMPUTE_CAP` (default [`DEFAULT_COMPUTE_CAP`]), `CUDAFORGE_THREADS` (every core for
/// candle-kernels' nvcc jobs) and `CUDARC_CUDA_VERSION` from nvcc, unless already set; with `link`, also `CUDA_ROOT` at the link stubs of [`link_stubs`], so
/// binaries link.
pub(crate) fn cuda_env(cmd: &mut Command, root: &Path, nvcc: &Path, link: bool) -> Result<()> {
    let bin = nvcc.parent().context("nvcc has no parent folder")?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(dirs)?)
        .env("NVCC", nvcc);
    if std::env::var_os("CUDA_COMPUTE_CAP").is_none() {
        cmd.env("CUDA_COMPUTE_CAP", DEFAULT_COMPUTE_CAP);
    }
    if std::env::var_os("CUDAFORGE_THREADS").is_none() {
        // candle-kernels' build (cudaforge) compiles on half the cores by default.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cmd.env("CUDAFORGE_THREADS", cores.to_string());
    }
    if std::env::var_os("CUDARC_CUDA_VERSION").is_none() {
        let text = crate::output(Command::new(nvcc).arg("--version"))?;
        let version = cudarc_version(&text)
            .with_context(|| format!("no `release X.Y,` in `{} --version`", nvcc.display()))?;
        cmd.env("CUDARC_CUDA_VERSION", version);
    }
    if link {
        cmd.env("CUDA_ROOT", link_stubs(root, nvcc)?);
    }
    Ok(())
}

/// The functions of one cudarc `sys` module: every `pub unsafe fn NAME(`.
fn sys_functions(source: &str) -> Vec<&str> {
    let mut names: Vec<&str> = source
        .lines()
        .filter_map(|l| l.strip_prefix("pub unsafe fn "))
        .filter_map(|rest| rest.split('(').next())
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The source folder of the cudarc that candle's CUDA backend uses (from `cargo metadata`).
fn cudarc_source(root: &Path) -> Result<PathBuf> {
    let text = crate::output(cargo().current_dir(root).args([
        "metadata",
        "--format-version",
        "1",
        "--features",
        "qattn-kernels/cuda",
    ]))?;
    let meta: serde_json::Value = serde_json::from_str(&text).context("cargo metadata output")?;
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "cudarc")
        .and_then(|p| p["manifest_path"].as_str())
        .and_then(|m| Path::new(m).parent().map(Path::to_path_buf))
        .context("cudarc is not in the dependency graph of qattn-kernels' `cuda` feature")
}

/// Link-time stand-ins for the CUDA libraries of [`LINKED_LIBS`] in
/// `target/cuda-stubs/lib/stubs` (what the CUDA toolkit's `lib/stubs` is for `libcuda`): each
/// a shared library with the library's SONAME that defines every function cudarc declares for
/// it, built with the C compiler from the names in cudarc's sources. Returns the folder to use
/// as `CUDA_ROOT`. A binary linked against them loads the real libraries by SONAME at run
/// time; the stubs are never loaded.
///
/// candle-kernels also links the CUDA runtime (`-lcudart`, for its statically compiled MoE and
/// quantised kernels, whose nvcc-generated host code calls runtime internals that no binding
/// lists): that one is the real `libcudart.so.N` found beside nvcc (`../lib`, as the PyPI
/// `nvidia-cuda-runtime` wheel and the toolkit lay it out), linked here as `libcudart.so`.
pub(crate) fn link_stubs(root: &Path, nvcc: &Path) -> Result<PathBuf> {
    let cudarc = cudarc_source(root)?;
    let cuda_root = root.join("target/cuda-stubs");
    let dir = cuda_root.join("lib/stubs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for &(name, soname, module) in LINKED_LIBS {
        let sys = cudarc.join(format!("src/{module}/sys/mod.rs"));
        let text =
            fs::read_to_string(&sys).with_context(|| format!("reading {}", sys.display()))?;
        let funcs = sys_functions(&text);
        if funcs.is_empty() {
            bail!("no functions found in {}", sys.display());
        }
        let mut c = format!(
            "/* Link stub for {soname}, generated by xtask from {}. */\n",
            sys.display()
        );
        for f in &funcs {
            c.push_str(&format!("void {f}(void) {{}}\n"));
        }
        let src = dir.join(format!("{name}.c"));
        let lib = dir.join(format!("lib{name}.so"));
        if fs::read_to_string(&src).ok().as_deref() == Some(c.as_str()) && lib.is_file() {
            continue;
        }
        fs::write(&src, &c).with_context(|| format!("writing {}", src.display()))?;
        let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
        run(Command::new(cc)
            .args(["-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(format!("-Wl,-soname,{soname}"))
            .arg(&src))
        .with_context(|| format!("building the link stub {}", lib.display()))?;
    }
    let lib_dir = nvcc
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("lib"))
        .context("nvcc has no grandparent folder")?;
    let cudart = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libcudart.so."))
        })
        .min()
        .with_context(|| {
            format!(
                "no libcudart.so.N in {} (pip install nvidia-cuda-runtime, see \
                 xtask/ci-requirements.txt)",
                lib_dir.display()
            )
        })?;
    let link = dir.join("libcudart.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&cudart, &link)
        .with_context(|| format!("linking {} to {}", link.display(), cudart.display()))?;
    Ok(cuda_root)
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
    // The check shares the default target folder with clippy and the tests, so the
    // dependencies that do not change with CUDA (everything but candle and cudarc) are
    // checked once per CI run, not twice. `-G` (device code unoptimised) makes nvcc's compile of
    // candle-kernels for this check faster (a `cargo check -p qattn-kernels --features cuda`
    // from scratch: 670 s with it, 880 s without, both on a shared 2-core machine); the check
    // only needs the PTX and the static library to exist, and release builds
    // (`gpu-bundle`, `gpu-check`) never see the flag.
    let mut check = cargo();
    if std::env::var_os("NVCC_APPEND_FLAGS").is_none() {
        check.env("NVCC_APPEND_FLAGS", "-G");
    }
    check.current_dir(root).args([
        "check",
        "--workspace",
        "--features",
        "qattn-cli/cuda",
        "--all-targets",
    ]);
    cuda_env(&mut check, root, &nvcc, false)?;
    run(&mut check)?;
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
    let mut build = cargo();
    build
        .current_dir(root)
        .env("CARGO_TARGET_DIR", root.join(CUDA_TARGET_DIR))
        .args([
            "build",
            "--release",
            "-p",
            "qattn-kernels",
            "--features",
            "cuda",
            "--bin",
            "qattn-gpu-check",
        ]);
    cuda_env(&mut build, root, nvcc, true)?;
    run(&mut build)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cudarc_version_from_nvcc_output() {
        let out = "nvcc: NVIDIA (R) Cuda compiler driver\nCopyright (c) 2005-2025 NVIDIA Corporation\n\
                   Built on Wed_Aug_20_01:58:59_PM_PDT_2025\n\
                   Cuda compilation tools, release 13.0, V13.0.88\nBuild cuda_13.0.r13.0/compiler.36424714_0\n";
        assert_eq!(cudarc_version(out).as_deref(), Some("13000"));
        let out12 = "Cuda compilation tools, release 12.8, V12.8.93";
        assert_eq!(cudarc_version(out12).as_deref(), Some("12080"));
        assert_eq!(cudarc_version("no version here"), None);
        assert_eq!(cudarc_version("release x.y, V1"), None);
    }

    #[test]
    fn sys_functions_lists_each_declared_function_once() {
        let src = "pub type CUresult = u32;\n\
                   pub unsafe fn cuInit(flags: u32) -> CUresult {\n    extern \"C\" { fn cuInit(f: u32) -> CUresult; }\n}\n\
                   pub unsafe fn cuCtxCreate_v2(p: *mut u8) -> CUresult { 0 }\n\
                   pub unsafe fn cuInit(flags: u32) -> CUresult { 0 }\n\
                   pub fn not_a_binding() {}\n\
                   pub unsafe fn is_culib_present() -> bool { true }\n";
        assert_eq!(
            sys_functions(src),
            vec!["cuCtxCreate_v2", "cuInit", "is_culib_present"]
        );
    }
}
