//! The MPI toolchain behind the `mpi` feature (data-parallel `qattn train` under `mpirun`):
//! Open MPI (`mpirun`, `mpicc`, libmpi and its headers) and libclang, which the `mpi-sys`
//! crate's bindgen needs. [`ensure`] installs them from Debian when they are missing and this
//! is a root shell with apt-get; `cargo xtask ci` then builds, lints and tests the workspace
//! with the feature on, so the MPI backend and the multi-process tests
//! (`crates/qattn-cli/tests/mpi_cli.rs`) run in CI.

use crate::pyenv::Ran;
use anyhow::Result;
use std::path::Path;
use std::process::Command;

/// The cargo feature that turns the MPI backend on, for workspace-wide commands.
pub(crate) const FEATURE: &str = "qattn-cli/mpi";

/// The Debian packages that provide what [`present`] looks for.
const PACKAGES: [&str; 3] = ["libopenmpi-dev", "openmpi-bin", "libclang-dev"];

/// Why the toolchain is incomplete, or `None` when `mpirun`, `mpicc` and a libclang are there.
fn missing() -> Option<String> {
    let mut gaps = Vec::new();
    for tool in ["mpirun", "mpicc"] {
        if crate::on_path(tool).is_none() {
            gaps.push(tool.to_string());
        }
    }
    if !has_libclang() {
        gaps.push("libclang".to_string());
    }
    (!gaps.is_empty()).then(|| format!("{} not found", gaps.join(", ")))
}

/// Whether a libclang shared library is where clang-sys looks (LLVM's lib directories, the
/// multiarch library directory, or `$LIBCLANG_PATH`).
fn has_libclang() -> bool {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("LIBCLANG_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/lib/x86_64-linux-gnu".into());
    dirs.push("/usr/lib".into());
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("llvm-") {
                dirs.push(e.path().join("lib"));
            }
        }
    }
    dirs.iter().any(|d| dir_has_libclang(d))
}

fn dir_has_libclang(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("libclang") && n.contains(".so") && !n.starts_with("libclang-cpp")
        })
    })
}

/// Makes the toolchain available: `Done` when it is (installing it if needed and possible),
/// `Skipped` with the reason when it cannot be had here.
pub(crate) fn ensure() -> Result<Ran> {
    if let Some(gap) = missing() {
        println!("MPI toolchain incomplete: {gap}");
        if let Err(why) = crate::apt_install(&PACKAGES) {
            return Ok(Ran::Skipped(format!("{gap}; {why}")));
        }
        if let Some(gap) = missing() {
            return Ok(Ran::Skipped(format!(
                "{gap} even after installing {}",
                PACKAGES.join(" ")
            )));
        }
    }
    let version = Command::new("mpirun")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    println!("mpirun: {version}");
    Ok(Ran::Done)
}
