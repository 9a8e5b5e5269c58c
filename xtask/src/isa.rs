//! The CI step that exercises the AVX2 fallback of the matmuls on a CPU whose native path is
//! AVX-512 (gemm's `x86-v4` microkernels and the kernels' AVX-512 variants).
//!
//! gemm and `qattn-kernels` pick their code path at run time from CPUID, and neither can be told
//! to ignore AVX-512. valgrind can: its CPU model has AVX2 and FMA but no AVX-512, so running
//! the ISA-sensitive tests under valgrind forces every dispatcher onto the AVX2 path. The tests
//! compare against the same f64 references as the native run, and `QATTN_EXPECT_NO_AVX512=1`
//! makes them fail if AVX-512 is still visible. On a CPU without AVX-512 the native test run
//! already took the AVX2 path and this step has nothing to add.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::pyenv::Ran;
use crate::{cargo, output, run};

/// The test modules of `qattn-kernels`' `it` binary whose results depend on the matmul path.
const FILTERS: [&str; 4] = ["isa::", "exact::", "grads::", "fused::"];

/// Whether this CPU reports AVX-512F.
fn host_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `valgrind` on PATH, or installed from Debian when running as root with apt-get; else why not.
fn valgrind() -> std::result::Result<PathBuf, String> {
    let find = || crate::on_path("valgrind");
    if let Some(p) = find() {
        return Ok(p);
    }
    crate::apt_install(&["valgrind"])?;
    find().ok_or_else(|| "valgrind could not be installed with apt-get".into())
}

/// The path of `qattn-kernels`' `it` test binary (built in release mode if needed, with the
/// test step's `features` so nothing is rebuilt).
fn kernels_test_binary(root: &Path, features: &[String]) -> Result<PathBuf> {
    let json = output(
        cargo()
            .current_dir(root)
            .args([
                "test",
                "--release",
                "--workspace",
                "--test",
                "it",
                "--no-run",
                "--message-format=json",
            ])
            .args(features),
    )?;
    for line in json.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_kernels = v["package_id"]
            .as_str()
            .is_some_and(|id| id.contains("qattn-kernels"));
        if v["reason"] == "compiler-artifact"
            && v["target"]["name"] == "it"
            && is_kernels
            && let Some(exe) = v["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo built no `it` test binary of qattn-kernels")
}

/// The step: the ISA-sensitive tests again under valgrind when this CPU has AVX-512.
pub(crate) fn fallback_check(
    root: &Path,
    env: &[(&'static str, PathBuf)],
    features: &[String],
) -> Result<Ran> {
    if !host_has_avx512() {
        println!(
            "this CPU has no AVX-512: the test run above already took the AVX2 paths of every \
             matmul and kernel"
        );
        return Ok(Ran::Done);
    }
    let valgrind = match valgrind() {
        Ok(v) => v,
        Err(reason) => return Ok(Ran::Skipped(reason)),
    };
    let exe = kernels_test_binary(root, features)?;
    let mut cmd = Command::new(valgrind);
    cmd.current_dir(root.join("crates/qattn-kernels"))
        .args(["--tool=none", "--error-exitcode=1", "-q"])
        .arg(&exe)
        .args(FILTERS)
        .args(["--test-threads=2"])
        .env("QATTN_EXPECT_NO_AVX512", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd).context("the AVX2 fallback run (under valgrind) failed")?;
    Ok(Ran::Done)
}
