//! Project automation for qattn, run as `cargo xtask <command>`.
//!
//! * `cargo xtask ci [--skip-clippy] [--skip-tests]`: the checks CI runs, cheapest first
//!   (format, layering, unused dependencies (cargo-machete), deploy/ lints from the CI Python
//!   env, clippy, tests). This is the README's test command.
//! * `cargo xtask bench kernels [--quick] [--native] [--allow-dirty]`: criterion benches of `qattn-kernels`
//!   side by side with PyTorch's `scaled_dot_product_attention`, written to
//!   `benchmarks/results/kernels.{json,md}`.
//! * `cargo xtask bench model [--quick] [--cache-dir DIR] [--allow-dirty]`: forward throughput and peak RSS of
//!   qattn-model (MiniLM, exact and every estimator) side by side with HF transformers, written
//!   to `benchmarks/results/model.{json,md}`.
//! * `cargo xtask bench train [--quick] [--cache-dir DIR] [--allow-dirty]`: fine-tuning throughput and peak RSS
//!   of qattn-train (MiniLM with a classification head; exact, and `stratified:32` with sampled
//!   gradients) side by side with HF transformers, written to
//!   `benchmarks/results/train.{json,md}`.
//! * `cargo xtask bench serve [--quick] [--cache-dir DIR] [--allow-dirty]`: requests/s and latency of
//!   `qattn serve` side by side with a FastAPI + transformers server, written to
//!   `benchmarks/results/serve.{json,md}`.
//! * `cargo xtask cuda-check`: compile-checks the CUDA kernels without a GPU (also a CI step).
//! * `cargo xtask gpu-check`: on a GPU machine, checks the kernels against the CPU and times
//!   them against PyTorch SDPA, written to `benchmarks/results/gpu.json`.
//! * `cargo xtask gpu-bundle [--out DIR]`: builds the GPU binaries here and writes a folder with
//!   them, the SDPA baseline and `run.sh` for a GPU machine without a Rust toolchain.
//! * `cargo xtask image [--cuda | --train-mpi] [--tag T] [--dry-run]`: the qattn-serve container
//!   image (or the MPI training image) from `deploy/docker/` with docker or podman, or the exact
//!   commands when no engine is usable.
//!
//! xtask depends on `anyhow`, `serde`, `serde_json` and the std-only `qattn-io` (for
//! `write_atomic`), so it builds in seconds.

mod bench;
mod cuda;
mod deploy;
mod gpu_bundle;
mod image;
mod isa;
mod layering;
mod machete;
mod mpi;
mod mpijob;
mod pyenv;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  ci [--skip-clippy] [--skip-tests]
        fmt check, layering check, unused dependencies (cargo-machete, installed into
        target/tools when missing), CI Python env (target/ci-venv from xtask/ci-requirements.txt),
        hadolint deploy/docker, kubernetes-validate deploy/k8s (MPIJobs: a structural check and
        their pod templates as core/v1 PodTemplates), cuda-check, clippy -D warnings,
        tests (release; QATTN_DATA_DIR / QATTN_HF_CACHE default to ../shared/data(/hf) when
        that folder exists); stops at the first failure. A check whose tool is unavailable
        fails under CI=true and is skipped (and counted in the summary) elsewhere
  bench kernels [--quick] [--native] [--allow-dirty]
        criterion benches of qattn-kernels plus the PyTorch SDPA baseline;
        writes benchmarks/results/kernels.json and kernels.md
        --quick   smaller size grid and criterion's quick mode
        --native  build the bench with -C target-cpu=native (separate target dir)
        every bench command refuses to start from a tree with uncommitted changes (or outside
        git) unless --allow-dirty; the results name the commit and say clean or dirty
  bench model [--quick] [--cache-dir DIR] [--allow-dirty] [--batch N] [--seq N]
        forward throughput and peak RSS of qattn-model (all-MiniLM-L6-v2, batch 32 x 128,
        exact and each estimator) plus HF transformers (eager, sdpa);
        writes benchmarks/results/model.json and model.md
        --quick      1 warm-up and 3 timed passes per configuration (default 2 and 10)
        --cache-dir  Hugging Face cache holding the model (default $QATTN_HF_CACHE,
                     else ../shared/data/hf)
        --batch, --seq  another workload (e.g. --batch 1 --seq 16 for latency); results go
                     to model-bBxS.{json,md}, and a small workload gets up to 30x the passes
  bench train [--quick] [--cache-dir DIR] [--allow-dirty] [--batch N] [--seq N]
        fine-tuning throughput and peak RSS of qattn-train (all-MiniLM-L6-v2 + 2-label head,
        batch 32 x 128; exact, and stratified:32 with sampled gradients) plus HF transformers
        BertForSequenceClassification (eager, sdpa), same hyper-parameters;
        writes benchmarks/results/train.json and train.md
        --quick      1 warm-up and 3 timed steps per configuration (default 2 and 8)
        --cache-dir, --batch, --seq  as for bench model
  bench serve [--quick] [--cache-dir DIR] [--allow-dirty]
        requests/s and p50/p95/p99 latency of `qattn serve` (all-MiniLM-L6-v2 embed and
        2-label classify; ~20-token and 128-token inputs; exact and stratified:32; concurrency
        1, 4, 16, 64) plus a FastAPI + uvicorn + transformers server (1 and 2 workers), with
        the FLOP ceiling from a measured matmul rate;
        writes benchmarks/results/serve.json and serve.md
        --quick      3 s per point (default 8 s)
        --cache-dir  as for bench model
  cuda-check
        compile every crates/qattn-kernels/cuda/*.cu to PTX (nvcc, compute_80) and to an sm_90
        cubin (ptxas), then cargo check -p qattn-kernels --features cuda --all-targets;
        no GPU needed (nvcc from $NVCC, $CUDA_HOME, PATH or the PyPI wheels in target/ci-venv)
  gpu-check
        on a machine with an NVIDIA GPU: build qattn-gpu-check (--features cuda, release), check
        the kernels against the CPU reference, time them and PyTorch SDPA;
        writes benchmarks/results/gpu.json
  gpu-bundle [--out DIR]
        build qattn-gpu-check and the GPU tests here (--features cuda, release; nvcc as for
        cuda-check, no GPU needed) and write DIR (default target/gpu-bundle): the binaries,
        benchmarks/gpu/sdpa_baseline.py, BUNDLE.json (commit, clean/dirty) and run.sh, the
        device script for a GPU machine with Python + torch and no Rust toolchain
        (./run.sh [OUT_DIR] writes env.txt, rust.log, gpu-rust.json, sdpa.log, gpu.json,
        gpu-tests.log)
  image [--cuda | --train-mpi] [--tag T] [--dry-run]
        build the qattn-serve image from deploy/docker/Dockerfile.cpu (or .cuda, or the MPI
        training image from .train-mpi) with docker or podman (whichever answers `info`);
        without a usable engine, print the commands
        --cuda       the CUDA image (Dockerfile.cuda)
        --train-mpi  the distributed-training image for the Kubeflow MPI Operator
                     (Dockerfile.train-mpi: qattn built with --features mpi, Open MPI, OpenSSH)
        --tag T      image reference (default qattn-serve:cpu, qattn-serve:cuda or
                     qattn-train:mpi)
        --dry-run    print the commands only
  lint-deploy
        only the deploy/ steps of `ci`: CI Python env, hadolint, kubernetes-validate (with the
        MPIJob check)
  help
        print this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["ci", rest @ ..] => match parse_ci(rest) {
            Ok(opts) => ci(&opts),
            Err(msg) => return usage_error(&msg),
        },
        ["bench", "kernels", rest @ ..] => match bench::kernels::parse_options(rest) {
            Ok(opts) => bench::require_clean(&repo_root(), opts.allow_dirty)
                .and_then(|()| bench::kernels::kernels(&repo_root(), &opts)),
            Err(msg) => return usage_error(&msg),
        },
        ["bench", "model", rest @ ..] => match bench::model::parse_options(rest) {
            Ok(opts) => bench::require_clean(&repo_root(), opts.allow_dirty)
                .and_then(|()| bench::model::model(&repo_root(), &opts)),
            Err(msg) => return usage_error(&msg),
        },
        ["bench", "train", rest @ ..] => match bench::train::parse_options(rest) {
            Ok(opts) => bench::require_clean(&repo_root(), opts.allow_dirty)
                .and_then(|()| bench::train::train(&repo_root(), &opts)),
            Err(msg) => return usage_error(&msg),
        },
        ["bench", "serve", rest @ ..] => match bench::serve::parse_options(rest) {
            Ok(opts) => bench::require_clean(&repo_root(), opts.allow_dirty)
                .and_then(|()| bench::serve::serve(&repo_root(), &opts)),
            Err(msg) => return usage_error(&msg),
        },
        ["cuda-check"] => {
            let root = repo_root();
            pyenv::step_or_skip(
                &mut pyenv::SkipPolicy::from_env(),
                "cuda-check (nvcc PTX + ptxas sm_90 + cargo check --features cuda)",
                || cuda::cuda_check(&root, None),
            )
        }
        ["gpu-check"] => cuda::gpu_check(&repo_root()),
        ["gpu-bundle", rest @ ..] => match gpu_bundle::parse_options(rest) {
            Ok(opts) => gpu_bundle::gpu_bundle(&repo_root(), &opts),
            Err(msg) => return usage_error(&msg),
        },
        ["lint-deploy"] => lint_deploy(),
        ["image", rest @ ..] => match image::parse_options(rest) {
            Ok(opts) => image::image(&repo_root(), &opts),
            Err(msg) => return usage_error(&msg),
        },
        ["help" | "--help" | "-h"] => {
            print!("{USAGE}");
            Ok(())
        }
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `msg` and the usage text; exit status 2 like other command-line tools.
fn usage_error(msg: &str) -> ExitCode {
    eprintln!("error: {msg}\n");
    eprint!("{USAGE}");
    ExitCode::from(2)
}

/// The repository root: the parent of this crate's manifest directory.
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the repository root")
        .to_path_buf()
}

/// The `cargo` that runs us (so the pinned toolchain is used), or `cargo` from PATH.
pub(crate) fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

struct CiOptions {
    skip_clippy: bool,
    skip_tests: bool,
}

fn parse_ci(args: &[&str]) -> std::result::Result<CiOptions, String> {
    let mut opts = CiOptions {
        skip_clippy: false,
        skip_tests: false,
    };
    for arg in args {
        match *arg {
            "--skip-clippy" => opts.skip_clippy = true,
            "--skip-tests" => opts.skip_tests = true,
            other => return Err(format!("unknown option for `cargo xtask ci`: {other}")),
        }
    }
    Ok(opts)
}

fn ci(opts: &CiOptions) -> Result<()> {
    let root = repo_root();
    let started = Instant::now();

    step("cargo fmt --all -- --check", || {
        run(cargo()
            .current_dir(&root)
            .args(["fmt", "--all", "--", "--check"]))
    })?;
    step("layering check (cargo metadata)", || layering::check(&root))?;
    // A check whose tool cannot be had is a failure under CI=true, a counted skip elsewhere
    // (pyenv::SkipPolicy).
    let mut skips = pyenv::SkipPolicy::from_env();
    pyenv::step_or_skip(
        &mut skips,
        &format!("unused dependencies (cargo-machete {})", machete::VERSION),
        || machete::check(&root),
    )?;
    let py = pyenv::ci_step(&root);
    pyenv::step_or_skip(&mut skips, "hadolint deploy/docker/*", || {
        deploy::hadolint(&root, &py)
    })?;
    pyenv::step_or_skip(&mut skips, &deploy::k8s_step_name(), || {
        deploy::kubernetes_validate(&root, &py)
    })?;
    pyenv::step_or_skip(
        &mut skips,
        "cuda-check (nvcc PTX + ptxas sm_90 + cargo check --features cuda)",
        || cuda::cuda_check(&root, py.as_ref().ok()),
    )?;
    // With the MPI toolchain, clippy and the tests run with the `mpi` feature on, so the MPI
    // backend is linted and the multi-process tests (qattn-cli/tests/mpi_cli.rs) run.
    let mut features: Vec<String> = Vec::new();
    pyenv::step_or_skip(
        &mut skips,
        "MPI toolchain for the `mpi` feature (Open MPI, libclang)",
        || {
            let ran = mpi::ensure()?;
            if matches!(ran, pyenv::Ran::Done) {
                features = vec!["--features".into(), mpi::FEATURE.into()];
            }
            Ok(ran)
        },
    )?;
    let with = if features.is_empty() {
        String::new()
    } else {
        format!(" {}", features.join(" "))
    };
    if opts.skip_clippy {
        println!("\n==> clippy skipped (--skip-clippy)");
    } else {
        step(
            &format!("cargo clippy --workspace --all-targets{with} -- -D warnings"),
            || {
                run(cargo()
                    .current_dir(&root)
                    .args(["clippy", "--workspace", "--all-targets"])
                    .args(&features)
                    .args(["--", "-D", "warnings"]))
            },
        )?;
    }
    if opts.skip_tests {
        println!("\n==> tests skipped (--skip-tests)");
    } else {
        // The real-client tests (Python gRPC clients, MLflow server) find their interpreter
        // through QATTN_CI_PYTHON; without the venv they cannot run.
        if let Err(reason) = &py {
            skips.unavailable("real-client tests (Python gRPC clients, MLflow)", reason)?;
        }
        step(&format!("cargo test --workspace --release{with}"), || {
            let mut cmd = cargo();
            cmd.current_dir(&root)
                .args(["test", "--workspace", "--release"])
                .args(&features);
            if let Ok(env) = &py {
                cmd.env("QATTN_CI_PYTHON", env.python());
            }
            for (name, value) in shared_data_env(&root, |k| std::env::var_os(k)) {
                println!("{name}={}", value.display());
                cmd.env(name, value);
            }
            run(&mut cmd)
        })?;
        let env = shared_data_env(&root, |k| std::env::var_os(k));
        pyenv::step_or_skip(
            &mut skips,
            "AVX2 fallback of the matmuls (ISA tests under valgrind on an AVX-512 CPU)",
            || isa::fallback_check(&root, &env, &features),
        )?;
    }
    let skipped = match (opts.skip_clippy, opts.skip_tests) {
        (false, false) => "",
        (true, false) => " (clippy skipped)",
        (false, true) => " (tests skipped)",
        (true, true) => " (clippy and tests skipped)",
    };
    println!(
        "\nci: all checks that ran passed{skipped} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(summary) = skips.summary() {
        println!("ci: {summary}");
    }
    Ok(())
}

/// `QATTN_DATA_DIR` and `QATTN_HF_CACHE` for the tests: each one that `get` (the environment)
/// leaves unset or empty is pointed at `../shared/data` (and `../shared/data/hf`) beside the
/// checkout when that folder exists, so the README's test command works with the shared data
/// next to the repository; set variables are left alone.
fn shared_data_env(
    root: &Path,
    get: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Vec<(&'static str, PathBuf)> {
    let shared = root.join("../shared/data");
    let mut out = Vec::new();
    for (name, dir) in [
        ("QATTN_DATA_DIR", shared.clone()),
        ("QATTN_HF_CACHE", shared.join("hf")),
    ] {
        if get(name).is_none_or(|v| v.is_empty()) && dir.is_dir() {
            out.push((name, dir));
        }
    }
    out
}

/// `cargo xtask lint-deploy`: the deploy/ steps of `ci` on their own (here a missing Python env
/// is an error, since nothing else would run).
fn lint_deploy() -> Result<()> {
    let root = repo_root();
    let py = pyenv::ci_step(&root);
    if let Err(reason) = &py {
        bail!("{reason}");
    }
    // The venv is there, so nothing may be skipped.
    let mut policy = pyenv::SkipPolicy::new(true);
    pyenv::step_or_skip(&mut policy, "hadolint deploy/docker/*", || {
        deploy::hadolint(&root, &py)
    })?;
    pyenv::step_or_skip(&mut policy, &deploy::k8s_step_name(), || {
        deploy::kubernetes_validate(&root, &py)
    })
}

/// The first `name` on `PATH`.
pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Installs Debian `packages` with apt-get (refreshing the package lists once if the first
/// attempt fails); an error says why it could not (not root, no apt-get, apt failed).
pub(crate) fn apt_install(packages: &[&str]) -> std::result::Result<(), String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let list = packages.join(" ");
    if !root || !Path::new("/usr/bin/apt-get").is_file() {
        return Err(format!(
            "not installed, and installing needs root and apt-get (Debian: apt-get install {list})"
        ));
    }
    println!("installing {list} from Debian");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let install: Vec<&str> = ["install", "-y", "-q", "--no-install-recommends"]
        .into_iter()
        .chain(packages.iter().copied())
        .collect();
    if !apt(&install) {
        apt(&["update", "-q"]);
        if !apt(&install) {
            return Err(format!("apt-get install {list} failed"));
        }
    }
    Ok(())
}

/// Runs one named step, printing a header before and the elapsed time after.
fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("\n==> {name}");
    let started = Instant::now();
    let result = f();
    let secs = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => println!("==> ok: {name} ({secs:.1} s)"),
        Err(_) => println!("==> FAILED: {name} ({secs:.1} s)"),
    }
    result.with_context(|| format!("step failed: {name}"))
}

/// Runs a command with inherited stdio and fails on a non-zero exit status.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` exited with {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout; stderr is passed through.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` exited with {}", out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8 output"))
}

fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes `contents` to `path` atomically with [`qattn_io::write_atomic`] (temporary file in the
/// same folder, fsync, rename, fsync of the folder), creating the folder first.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent folder", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    qattn_io::write_atomic(path, contents)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_get_the_shared_data_only_when_unset_and_present() {
        let base = std::env::temp_dir().join(format!("qattn-xtask-shared-{}", std::process::id()));
        let root = base.join("repo");
        fs::create_dir_all(&root).unwrap();
        let none = |_: &str| None;
        // No ../shared/data: nothing set.
        assert!(shared_data_env(&root, none).is_empty());
        fs::create_dir_all(base.join("shared/data/hf")).unwrap();
        let got = shared_data_env(&root, none);
        assert_eq!(
            got,
            [
                ("QATTN_DATA_DIR", root.join("../shared/data")),
                ("QATTN_HF_CACHE", root.join("../shared/data/hf")),
            ]
        );
        // A variable the caller set wins; an empty one counts as unset.
        let set = |k: &str| (k == "QATTN_DATA_DIR").then(|| "/elsewhere".into());
        assert_eq!(
            shared_data_env(&root, set),
            [("QATTN_HF_CACHE", root.join("../shared/data/hf"))]
        );
        let empty = |_: &str| Some(std::ffi::OsString::new());
        assert_eq!(shared_data_env(&root, empty).len(), 2);
        fs::remove_dir_all(&base).unwrap();
    }
}
