//! Build script: with the `cuda` feature, compiles every `cuda/*.cu` to PTX with nvcc into
//! OUT_DIR (embedded by `src/cuda/mod.rs`). Without the feature it does nothing.
//!
//! nvcc is found through `$NVCC`, then `$CUDA_HOME/bin/nvcc`, then `PATH`, then the project's
//! PyPI venvs (`target/cuda-venv`, `target/ci-venv`). PTX targets `compute_80` (bf16 mma needs
//! sm_80) and runs on Ampere and Hopper through the driver's JIT.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Kernel sources and whether they may use fast math (the sampling kernels must not: their
/// arithmetic has to match the CPU's bit for bit).
const SOURCES: &[(&str, bool)] = &[("exact", true), ("flash", true), ("mc", false)];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let cuda_dir = manifest.join("cuda");
    println!("cargo:rerun-if-changed={}", cuda_dir.display());
    // Extra sources (e.g. backward.cu, noise.cu) are compiled when present, without fast math.
    let mut sources: Vec<(String, bool)> =
        SOURCES.iter().map(|&(n, f)| (n.to_string(), f)).collect();
    if let Ok(rd) = std::fs::read_dir(&cuda_dir) {
        let mut extra: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                (p.extension().is_some_and(|x| x == "cu"))
                    .then(|| p.file_stem()?.to_str().map(str::to_string))
                    .flatten()
            })
            .filter(|n| !SOURCES.iter().any(|&(s, _)| s == n))
            .collect();
        extra.sort();
        sources.extend(extra.into_iter().map(|n| (n, false)));
    }
    let nvcc = match find_nvcc(&manifest) {
        Some(p) => p,
        None => {
            eprintln!(
                "error: the `cuda` feature of qattn-kernels needs nvcc (CUDA 12.x/13.0) at build time, \
                 and none was found via $NVCC, $CUDA_HOME/bin/nvcc, PATH or target/cuda-venv.\n\
                 Get one without a GPU from PyPI:\n  python3 -m venv target/cuda-venv && \
                 target/cuda-venv/bin/pip install 'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*' \
                 'nvidia-nvvm==13.0.*' 'nvidia-cuda-cccl==13.0.*' 'nvidia-cuda-runtime==13.0.*'\n\
                 (it is found there automatically), or set NVCC=/path/to/nvcc."
            );
            std::process::exit(1);
        }
    };
    let mut index = String::new();
    for (name, fast) in &sources {
        let src = cuda_dir.join(format!("{name}.cu"));
        println!("cargo:rerun-if-changed={}", src.display());
        let ptx = out.join(format!("{name}.ptx"));
        let mut cmd = Command::new(&nvcc);
        cmd.arg("-ptx")
            .arg("-arch=compute_80")
            .arg("-std=c++17")
            .arg("-O3")
            .arg("-lineinfo");
        if *fast {
            cmd.arg("--use_fast_math");
        } else {
            // No contraction of a*b+c into FMA: the sampling arithmetic must equal the CPU's.
            cmd.arg("-fmad=false");
        }
        cmd.arg("-I").arg(&cuda_dir).arg(&src).arg("-o").arg(&ptx);
        let status = cmd.output();
        match status {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!(
                    "error: nvcc failed on {}:\n{}{}",
                    src.display(),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("error: could not run {}: {e}", nvcc.display());
                std::process::exit(1);
            }
        }
        index.push_str(&format!(
            "(\"{name}\", include_str!(concat!(env!(\"OUT_DIR\"), \"/{name}.ptx\"))),\n"
        ));
    }
    std::fs::write(out.join("ptx_index.rs"), format!("&[\n{index}]\n"))
        .expect("write ptx_index.rs");
}

fn is_file(p: &Path) -> bool {
    p.is_file()
}

/// nvcc: $NVCC, $CUDA_HOME/bin/nvcc, PATH, then the repository's PyPI venvs.
fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC").map(PathBuf::from) {
        return is_file(&p).then_some(p);
    }
    if let Some(h) = std::env::var_os("CUDA_HOME") {
        let p = PathBuf::from(h).join("bin/nvcc");
        if is_file(&p) {
            return Some(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nvcc");
            if is_file(&p) {
                return Some(p);
            }
        }
    }
    let root = manifest.parent()?.parent()?;
    for venv in ["target/cuda-venv", "target/ci-venv"] {
        let lib = root.join(venv).join("lib");
        if let Ok(rd) = std::fs::read_dir(&lib) {
            for e in rd.filter_map(|e| e.ok()) {
                let p = e.path().join("site-packages/nvidia/cu13/bin/nvcc");
                if is_file(&p) {
                    return Some(p);
                }
            }
        }
    }
    None
}
