//! `cargo xtask gpu-bundle [--out DIR]`: the device procedure of `cargo xtask gpu-check` as a
//! self-contained folder for a machine that has an NVIDIA GPU and Python with PyTorch but no
//! Rust toolchain (and possibly no network).
//!
//! Here (with nvcc, see [`crate::cuda::find_nvcc`]; no GPU needed) it builds, with
//! `--features cuda` in release mode, `qattn-gpu-check` and the GPU test binary
//! (`crates/qattn-kernels/tests/gpu.rs`), then writes:
//!
//! ```text
//! DIR/run.sh                   the device script (bash)
//! DIR/bin/qattn-gpu-check.gz   correctness checks and timings, JSON to --out
//! DIR/bin/gpu-tests.gz         the GPU test binary (libtest; run with --test-threads=1)
//! DIR/bin/bench_forward.gz     qattn-model's forward benchmark (CUDA build; --device)
//! DIR/bin/bench_train.gz       qattn-train's fine-tuning benchmark (CUDA build; --device)
//! DIR/python/model_check.py    the model-level check (benchmarks/gpu/model_check.py)
//! DIR/model-files/             all-MiniLM-L6-v2's config and tokenizer files (no weights)
//! DIR/python/sdpa_baseline.py  the PyTorch SDPA baseline (benchmarks/gpu/sdpa_baseline.py)
//! DIR/BUNDLE.json              commit, clean/dirty, date, nvcc and the command that wrote it
//! ```
//!
//! On the device, `DIR/run.sh [OUT]` (default `DIR/results`) records the environment
//! (`env.txt`: date, `nvidia-smi` query, `uname -a`, `nproc`, torch version), runs
//! `qattn-gpu-check` (limit 400 s; `rust.log`, `gpu-rust.json`), the SDPA baseline (limit
//! 200 s; `sdpa.log`, `gpu.json` — the same two steps and limits as `cargo xtask gpu-check`),
//! then the GPU tests (limit 400 s; `gpu-tests.log`), then the model check (limit 500 s;
//! `model.log`, `gpu-model.json`, `gpu-model.md`: MiniLM parity GPU vs CPU and throughput
//! against PyTorch, see benchmarks/gpu/model_check.py), copies `BUNDLE.json` into OUT and exits
//! non-zero when any step failed. `STEPS="model"` (any subset of `check sdpa tests model`) runs
//! only those steps. The binaries are stored stripped and gzip-compressed and unpacked by
//! run.sh; the CUDA libraries are taken from the NVIDIA wheels of `$PYTHON`'s environment.
//! Copy OUT's files into `benchmarks/results/` (gpu.json, gpu-model.json/.md) and
//! `benchmarks/results/gpu-logs/` to publish them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::bench::Provenance;
use crate::cuda::{CUDA_TARGET_DIR, GPU_CHECK_LIMIT, SDPA_LIMIT, find_nvcc};
use crate::{cargo, output, pyenv, run, write_atomic};

/// The bundle's device script.
const RUN_SH: &str = "run.sh";
/// `qattn-gpu-check` inside the bundle.
const GPU_CHECK: &str = "bin/qattn-gpu-check";
/// The GPU test binary inside the bundle.
const GPU_TESTS: &str = "bin/gpu-tests";
/// The SDPA baseline inside the bundle, and where it comes from in the repository.
const SDPA: (&str, &str) = ("python/sdpa_baseline.py", "benchmarks/gpu/sdpa_baseline.py");
/// The model-level check inside the bundle, and where it comes from in the repository.
const MODEL_CHECK: (&str, &str) = ("python/model_check.py", "benchmarks/gpu/model_check.py");
/// The qattn-model example `bench_forward` (CUDA build) inside the bundle.
const BENCH_FORWARD: &str = "bin/bench_forward";
/// The qattn-train example `bench_train` (CUDA build) inside the bundle.
const BENCH_TRAIN: &str = "bin/bench_train";
/// all-MiniLM-L6-v2's configuration and tokenizer files (no weights: the model check uses the
/// device's cached weights or a random initialisation), as (file in the snapshot, bundle path).
const MODEL_FILES: &[(&str, &str)] = &[
    ("config.json", "model-files/config.json"),
    ("tokenizer.json", "model-files/tokenizer.json"),
    ("tokenizer_config.json", "model-files/tokenizer_config.json"),
    (
        "special_tokens_map.json",
        "model-files/special_tokens_map.json",
    ),
    ("vocab.txt", "model-files/vocab.txt"),
];
/// What the bundle was built from.
const INFO: &str = "BUNDLE.json";
/// Time limit of the GPU tests on the device.
const GPU_TESTS_LIMIT_S: u64 = 400;
/// Time limit of the model-level check on the device.
const MODEL_LIMIT_S: u64 = 500;

/// Options of `cargo xtask gpu-bundle`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Options {
    /// Where the bundle goes (default `target/gpu-bundle`).
    pub(crate) out: Option<PathBuf>,
}

/// Parses `[--out DIR]`.
pub(crate) fn parse_options(args: &[&str]) -> std::result::Result<Options, String> {
    let mut opts = Options { out: None };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--out" => match it.next() {
                Some(dir) => opts.out = Some(PathBuf::from(dir)),
                None => return Err("--out needs a folder".to_owned()),
            },
            other => {
                return Err(format!(
                    "unknown option for `cargo xtask gpu-bundle`: {other}"
                ));
            }
        }
    }
    Ok(opts)
}

/// One file of the bundle: its source and its path inside the bundle.
#[derive(Debug, Clone)]
struct Entry {
    src: PathBuf,
    dest: &'static str,
    executable: bool,
}

/// The binaries built for the bundle.
struct Binaries {
    gpu_check: PathBuf,
    gpu_tests: PathBuf,
    bench_forward: PathBuf,
    bench_train: PathBuf,
}

/// The bundle's files besides run.sh and BUNDLE.json; `snapshot` is the all-MiniLM-L6-v2
/// snapshot folder the model files come from.
fn entries(root: &Path, bins: &Binaries, snapshot: &Path) -> Vec<Entry> {
    let exe = |src: &PathBuf, dest| Entry {
        src: src.clone(),
        dest,
        executable: true,
    };
    let mut v = vec![
        exe(&bins.gpu_check, GPU_CHECK),
        exe(&bins.gpu_tests, GPU_TESTS),
        exe(&bins.bench_forward, BENCH_FORWARD),
        exe(&bins.bench_train, BENCH_TRAIN),
    ];
    for (src, dest) in [SDPA, MODEL_CHECK].map(|(d, s)| (root.join(s), d)) {
        v.push(Entry {
            src,
            dest,
            executable: false,
        });
    }
    for &(name, dest) in MODEL_FILES {
        v.push(Entry {
            src: snapshot.join(name),
            dest,
            executable: false,
        });
    }
    v
}

/// The all-MiniLM-L6-v2 snapshot folder in the first Hugging Face cache that has one:
/// `$HF_HUB_CACHE`, `$QATTN_HF_CACHE`, then the shared data beside the repository
/// (`../shared/data/hf`).
fn minilm_snapshot(root: &Path) -> Result<PathBuf> {
    let mut caches: Vec<PathBuf> = ["HF_HUB_CACHE", "QATTN_HF_CACHE"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    caches.push(root.join("../shared/data/hf"));
    for cache in &caches {
        let snaps = cache.join("models--sentence-transformers--all-MiniLM-L6-v2/snapshots");
        if let Ok(rd) = fs::read_dir(&snaps) {
            let mut found: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("config.json").is_file())
                .collect();
            found.sort();
            if let Some(p) = found.pop() {
                return Ok(p);
            }
        }
    }
    bail!(
        "all-MiniLM-L6-v2 (config and tokenizer, for the model check) is in none of the Hugging \
         Face caches {caches:?}: set HF_HUB_CACHE to a cache that has it"
    )
}

/// The device script. Every bundle file it uses is named as `"$HERE/<path>"`.
fn run_script(info: &str) -> String {
    let gpu_check_s = GPU_CHECK_LIMIT.as_secs();
    let sdpa_s = SDPA_LIMIT.as_secs();
    let sdpa = SDPA.0;
    let model_check = MODEL_CHECK.0;
    let model_config = MODEL_FILES[0].1;
    format!(
        r#"#!/usr/bin/env bash
# Device script of a qattn GPU bundle, written by `cargo xtask gpu-bundle` (xtask/src/gpu_bundle.rs).
# Built from: {info}
# Needs: an NVIDIA GPU and its driver, bash, coreutils `timeout`, Python 3 with torch
# ($PYTHON, default python3). No Rust toolchain, no network.
# Usage: [STEPS="check sdpa tests model"] ./run.sh [OUT_DIR]   (default: results/ beside this script)
set -uo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
OUT="${{1:-$HERE/results}}"
PYTHON="${{PYTHON:-python3}}"
mkdir -p "$OUT"
cp "$HERE/{INFO}" "$OUT/{INFO}"
# The binaries travel gzip-compressed (bin/*.gz): unpack them once.
for gz in "$HERE"/bin/*.gz; do
  [ -e "$gz" ] || continue
  [ -x "${{gz%.gz}}" ] || {{ gzip -dc "$gz" > "${{gz%.gz}}" && chmod 755 "${{gz%.gz}}"; }} || exit 3
done
# The CUDA libraries the binaries load by SONAME (libcublas.so.13, libcurand.so.10,
# libcudart.so.13; libcuda.so.1 comes with the driver): from the NVIDIA wheels of $PYTHON's
# environment, as PyTorch loads them, unless LD_LIBRARY_PATH already has them.
NV_LIBS="$("$PYTHON" -c 'import glob, os, site
dirs = {{os.path.dirname(p) for sp in site.getsitepackages() for p in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True)}}
print(":".join(sorted(dirs)))' 2>/dev/null)"
export LD_LIBRARY_PATH="${{NV_LIBS}}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
failed=0

{{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.current.sm,clocks.max.sm,temperature.gpu --format=csv
  uname -a
  nproc
  "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ldd "$HERE/{GPU_CHECK}"
}} > "$OUT/env.txt" 2>&1

# Which steps run: STEPS="check sdpa tests model" (the default; any subset, in this order).
STEPS=" ${{STEPS:-check sdpa tests model}} "
want() {{ case "$STEPS" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }}

# 1. Correctness against the CPU reference and timings (as `cargo xtask gpu-check`).
if want check; then
  timeout {gpu_check_s} "$HERE/{GPU_CHECK}" --out "$OUT/gpu-rust.json" 2>&1 | tee "$OUT/rust.log"
  rust_status=${{PIPESTATUS[0]}}
  case $rust_status in
    0) ;;
    2) echo "qattn-gpu-check found no usable GPU" >&2; exit 2 ;;
    *) echo "qattn-gpu-check failed ($rust_status); running the baseline anyway" >&2; failed=1 ;;
  esac
fi

# 2. PyTorch SDPA baseline, merged with the Rust results into gpu.json.
if want sdpa; then
  timeout {sdpa_s} "$PYTHON" "$HERE/{sdpa}" --rust "$OUT/gpu-rust.json" --out "$OUT/gpu.json" 2>&1 | tee "$OUT/sdpa.log"
  [ "${{PIPESTATUS[0]}}" -eq 0 ] || {{ echo "sdpa_baseline.py failed" >&2; failed=1; }}
fi

# 3. The GPU tests of qattn-kernels (tests/gpu.rs), one at a time.
if want tests; then
  timeout {GPU_TESTS_LIMIT_S} "$HERE/{GPU_TESTS}" --test-threads=1 2>&1 | tee "$OUT/gpu-tests.log"
  [ "${{PIPESTATUS[0]}}" -eq 0 ] || {{ echo "GPU tests failed" >&2; failed=1; }}
fi

# 4. Models on the GPU: parity with the CPU, throughput against PyTorch (gpu-model.json/.md).
if want model; then
  timeout {MODEL_LIMIT_S} "$PYTHON" "$HERE/{model_check}" --forward "$HERE/{BENCH_FORWARD}" \
    --train "$HERE/{BENCH_TRAIN}" --model-config "$HERE/{model_config}" --out "$OUT" 2>&1 | tee "$OUT/model.log"
  [ "${{PIPESTATUS[0]}}" -eq 0 ] || {{ echo "model check failed" >&2; failed=1; }}
fi

echo "results in $OUT"
exit $failed
"#
    )
}

/// The bundle files `script` names as `"$HERE/<path>"`.
fn referenced_files(script: &str) -> Vec<String> {
    script
        .split("\"$HERE/")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// Writes the bundle into `out`: into a fresh sibling folder first, which then replaces `out`.
/// An existing `out` is replaced only when it is an earlier bundle (it has BUNDLE.json) or
/// empty, so a mistyped `--out` deletes nothing else.
fn write_bundle(out: &Path, entries: &[Entry], info: &Value) -> Result<()> {
    if out.exists() {
        let empty = fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_none();
        if !empty && !out.join(INFO).is_file() {
            bail!(
                "{} exists and is not a GPU bundle (no {INFO}); not replacing it: choose another \
                 --out",
                out.display()
            );
        }
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = out
        .file_name()
        .with_context(|| format!("{} has no folder name", out.display()))?
        .to_string_lossy();
    let staging = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    let result = (|| -> Result<()> {
        for e in entries {
            let dest = staging.join(e.dest);
            fs::create_dir_all(dest.parent().expect("bundle paths have a folder"))?;
            fs::copy(&e.src, &dest)
                .with_context(|| format!("copying {} to {}", e.src.display(), dest.display()))?;
            set_mode(&dest, if e.executable { 0o755 } else { 0o644 })?;
            if e.executable {
                pack(&dest)?;
            }
        }
        let info_text = serde_json::to_string_pretty(info)? + "\n";
        write_atomic(&staging.join(INFO), info_text.as_bytes())?;
        let script = run_script(&describe(info));
        let run = staging.join(RUN_SH);
        write_atomic(&run, script.as_bytes())?;
        set_mode(&run, 0o755)?;
        for f in referenced_files(&script) {
            if !staging.join(&f).is_file() && !staging.join(format!("{f}.gz")).is_file() {
                bail!("run.sh uses {f}, which the bundle does not contain");
            }
        }
        if out.exists() {
            fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
        }
        fs::rename(&staging, out)
            .with_context(|| format!("renaming {} to {}", staging.display(), out.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// Shrinks an executable of the bundle for the trip to the device: debug information and
/// symbols removed (`strip`, when on PATH and the file is an object it understands), then
/// gzip-compressed to `PATH.gz` (the CUDA builds carry candle's kernels: ~100 MB with debug
/// information, ~40 MB stripped, ~11 MB compressed). run.sh unpacks them first.
fn pack(path: &Path) -> Result<()> {
    if crate::on_path("strip").is_some() {
        let stripped = Command::new("strip").arg(path).output();
        if !matches!(&stripped, Ok(o) if o.status.success()) {
            println!("note: strip left {} as it was", path.display());
        }
    }
    crate::run(Command::new("gzip").args(["-6", "-f"]).arg(path))
        .with_context(|| format!("compressing {}", path.display()))
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<()> {
    Ok(())
}

/// `commit abc (clean), 2026-12-06T…` from BUNDLE.json's fields.
fn describe(info: &Value) -> String {
    let commit = info["git_commit"].as_str().unwrap_or("unknown");
    let state = match info["git_dirty"].as_bool() {
        Some(true) => "dirty tree",
        Some(false) => "clean tree",
        None => "tree state unknown",
    };
    format!(
        "commit {commit} ({state}), {}",
        info["date_utc"].as_str().unwrap_or("unknown date")
    )
}

/// The executable of the `gpu` test target from `cargo test --no-run --message-format=json`.
fn test_executable(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "gpu")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// `cargo xtask gpu-bundle`.
pub(crate) fn gpu_bundle(root: &Path, opts: &Options) -> Result<()> {
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/gpu-bundle"));
    let nvcc = match find_nvcc(root, None) {
        Ok(p) => p,
        Err(_) => {
            // nvcc from PyPI, as the CI step does.
            let py = pyenv::ensure(root)?;
            find_nvcc(root, Some(&py)).map_err(anyhow::Error::msg)?
        }
    };
    let provenance = Provenance::collect(root);
    if provenance.git_dirty != Some(false) {
        println!(
            "warning: building the bundle from a tree that is not a clean commit; BUNDLE.json \
             and run.sh say so"
        );
    }
    let target = root.join(CUDA_TARGET_DIR);
    crate::cuda::build_gpu_check(root, &nvcc)?;
    let mut tests = cargo();
    tests
        .current_dir(root)
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "test",
            "--release",
            "-p",
            "qattn-kernels",
            "--features",
            "cuda",
            "--test",
            "gpu",
            "--no-run",
            "--message-format=json",
        ]);
    crate::cuda::cuda_env(&mut tests, root, &nvcc, true)?;
    let messages = output(&mut tests)?;
    let gpu_tests = test_executable(&messages)
        .context("cargo did not report the executable of the `gpu` test target")?;
    let nvcc_version = output(Command::new(&nvcc).arg("--version"))
        .ok()
        .and_then(|s| s.lines().last().map(str::to_owned));
    let mut info = serde_json::to_value(&provenance)?;
    if let Some(obj) = info.as_object_mut() {
        obj.insert(
            "command".into(),
            Value::from(match &opts.out {
                Some(o) => format!("cargo xtask gpu-bundle --out {}", o.display()),
                None => "cargo xtask gpu-bundle".to_owned(),
            }),
        );
        obj.insert("nvcc".into(), Value::from(nvcc_version));
    }
    let mut examples = cargo();
    examples
        .current_dir(root)
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "build",
            "--release",
            "-p",
            "qattn-model",
            "-p",
            "qattn-train",
            "--features",
            "qattn-model/cuda,qattn-train/cuda",
            "--example",
            "bench_forward",
            "--example",
            "bench_train",
        ]);
    crate::cuda::cuda_env(&mut examples, root, &nvcc, true)?;
    run(&mut examples)?;
    let bins = Binaries {
        gpu_check: target.join("release/qattn-gpu-check"),
        gpu_tests,
        bench_forward: target.join("release/examples/bench_forward"),
        bench_train: target.join("release/examples/bench_train"),
    };
    let files = entries(root, &bins, &minilm_snapshot(root)?);
    write_bundle(&out, &files, &info)?;
    println!(
        "wrote the GPU bundle to {} ({}); on the device: {}/run.sh [OUT_DIR]",
        out.display(),
        describe(&info),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("qattn-gpu-bundle-{name}-{}", std::process::id()));
        if d.exists() {
            fs::remove_dir_all(&d).unwrap();
        }
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn options() {
        assert_eq!(parse_options(&[]).unwrap(), Options { out: None });
        assert_eq!(
            parse_options(&["--out", "b"]).unwrap().out,
            Some(PathBuf::from("b"))
        );
        assert!(parse_options(&["--out"]).is_err());
        assert!(parse_options(&["--quick"]).is_err());
    }

    #[test]
    fn run_sh_uses_only_files_the_bundle_contains() {
        let tmp = scratch("layout");
        let root = tmp.join("repo");
        fs::create_dir_all(root.join("benchmarks/gpu")).unwrap();
        fs::write(root.join(SDPA.1), "print('baseline')\n").unwrap();
        fs::write(root.join(MODEL_CHECK.1), "print('models')\n").unwrap();
        let snapshot = tmp.join("snapshot");
        fs::create_dir_all(&snapshot).unwrap();
        for (name, _) in MODEL_FILES {
            fs::write(snapshot.join(name), "{}").unwrap();
        }
        let bin = |name: &str| {
            let p = tmp.join(name);
            fs::write(&p, "binary").unwrap();
            p
        };
        let bins = Binaries {
            gpu_check: bin("qattn-gpu-check"),
            gpu_tests: bin("gpu-1234abcd"),
            bench_forward: bin("bench_forward"),
            bench_train: bin("bench_train"),
        };
        let info = serde_json::json!({
            "git_commit": "0123456789ab", "git_dirty": false, "date_utc": "2026-12-06T00:00:00Z"
        });
        let out = tmp.join("bundle");
        write_bundle(&out, &entries(&root, &bins, &snapshot), &info).unwrap();

        let script = fs::read_to_string(out.join(RUN_SH)).unwrap();
        let used = referenced_files(&script);
        for f in [
            GPU_CHECK,
            GPU_TESTS,
            BENCH_FORWARD,
            BENCH_TRAIN,
            SDPA.0,
            MODEL_CHECK.0,
            MODEL_FILES[0].1,
            INFO,
        ] {
            assert!(used.iter().any(|u| u == f), "run.sh does not use {f}");
        }
        for (_, dest) in MODEL_FILES {
            assert!(out.join(dest).is_file(), "{dest} missing from the bundle");
        }
        for f in &used {
            assert!(
                out.join(f).is_file() || out.join(format!("{f}.gz")).is_file(),
                "run.sh uses {f}, missing from the bundle"
            );
        }
        // Executables are stored compressed; run.sh unpacks them.
        for f in [GPU_CHECK, GPU_TESTS, BENCH_FORWARD, BENCH_TRAIN] {
            assert!(!out.join(f).exists(), "{f} stored uncompressed");
            let gz = fs::read(out.join(format!("{f}.gz"))).unwrap();
            assert_eq!(&gz[..2], &[0x1f, 0x8b], "{f}.gz is not gzip");
        }
        assert!(
            script.contains("commit 0123456789ab (clean tree)"),
            "{script}"
        );
        assert!(script.contains(&format!("timeout {} ", GPU_CHECK_LIMIT.as_secs())));
        assert!(script.contains(&format!("timeout {} ", SDPA_LIMIT.as_secs())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(out.join(RUN_SH)).unwrap().permissions().mode();
            assert_eq!(mode & 0o111, 0o111, "{RUN_SH} is not executable");
        }
        // The script parses (when bash is installed).
        if let Ok(o) = Command::new("bash")
            .arg("-n")
            .arg(out.join(RUN_SH))
            .output()
        {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let written: Value =
            serde_json::from_str(&fs::read_to_string(out.join(INFO)).unwrap()).unwrap();
        assert_eq!(written, info);

        // Rewriting replaces an earlier bundle; a folder that is not a bundle is left alone.
        let bins = Binaries {
            gpu_check: bin("qattn-gpu-check"),
            gpu_tests: bin("gpu-1234abcd"),
            bench_forward: bin("bench_forward"),
            bench_train: bin("bench_train"),
        };
        write_bundle(&out, &entries(&root, &bins, &snapshot), &info).unwrap();
        let other = tmp.join("not-a-bundle");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join("keep.txt"), "mine").unwrap();
        let err = write_bundle(&other, &entries(&root, &bins, &snapshot), &info).unwrap_err();
        assert!(err.to_string().contains("not a GPU bundle"), "{err}");
        assert!(other.join("keep.txt").is_file());
        // A missing source fails without leaving a half-written bundle.
        let err = write_bundle(
            &tmp.join("b2"),
            &entries(
                &root,
                &Binaries {
                    gpu_check: tmp.join("missing"),
                    ..bins
                },
                &snapshot,
            ),
            &info,
        );
        assert!(err.is_err());
        assert!(!tmp.join("b2").exists());
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn finds_the_test_executable_in_cargo_messages() {
        let msgs = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"qattn_kernels"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"gpu"},"executable":"/t/release/deps/gpu-ab12"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            test_executable(msgs),
            Some(PathBuf::from("/t/release/deps/gpu-ab12"))
        );
        assert_eq!(test_executable(""), None);
    }
}
