//! `cargo xtask bench …`: benchmarks run side by side with a PyTorch baseline, reported as
//! ratios in `benchmarks/results/`.
//!
//! * [`kernels`]: criterion benches of `qattn-kernels` against PyTorch's
//!   `scaled_dot_product_attention`.
//! * [`model`]: forward throughput and peak memory of `qattn-model` (MiniLM) against HF
//!   transformers.
//! * [`train`]: fine-tuning throughput and peak memory of `qattn-train` (MiniLM with a
//!   classification head) against HF transformers.
//! * [`serve`]: requests/s and latency of `qattn serve` against a FastAPI + transformers
//!   server.
//!
//! This module holds what all share: the PyTorch venv, the provenance of a run (machine,
//! rustc, commit, date), targets with met / not met, and table formatting;
//! [`side_by_side`] what `model` and `train` share: one process per configuration on a quiet
//! machine, the load other processes put on it, rows with ratios, and the results page.

pub(crate) mod kernels;
pub(crate) mod model;
pub(crate) mod serve;
pub(crate) mod side_by_side;
pub(crate) mod train;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::{cargo, output, run, write_atomic};

/// The machine a benchmark ran on.
#[derive(Serialize, Clone, Debug)]
pub(crate) struct Machine {
    pub(crate) cpu: Option<String>,
    pub(crate) threads: usize,
}

/// Where and when a benchmark ran; flattened into each report's JSON.
#[derive(Serialize, Clone, Debug)]
pub(crate) struct Provenance {
    pub(crate) date_utc: String,
    pub(crate) machine: Machine,
    pub(crate) rustc: Option<String>,
    pub(crate) git_commit: Option<String>,
    /// Whether the working tree differed from `git_commit` (tracked or untracked files).
    pub(crate) git_dirty: Option<bool>,
}

impl Provenance {
    /// Now, this machine, the toolchain `rustc` of `root` and its `HEAD`.
    pub(crate) fn collect(root: &Path) -> Self {
        Provenance {
            date_utc: utc_now(),
            machine: Machine {
                cpu: cpu_model(),
                threads: available_threads(),
            },
            rustc: output(Command::new("rustc").current_dir(root).arg("--version"))
                .ok()
                .map(|s| s.trim().to_owned()),
            git_commit: output(Command::new("git").current_dir(root).args([
                "rev-parse",
                "--short=12",
                "HEAD",
            ]))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()),
            git_dirty: output(
                Command::new("git")
                    .current_dir(root)
                    .args(["status", "--porcelain"]),
            )
            .ok()
            .map(|s| !s.trim().is_empty()),
        }
    }

    /// A fixed provenance for tests of the report formatting.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Provenance {
            date_utc: format_utc(0),
            machine: Machine {
                cpu: Some("test cpu".to_owned()),
                threads: 2,
            },
            rustc: None,
            git_commit: None,
            git_dirty: None,
        }
    }

    /// The first lines of a results page: title, command, date, commit, machine and rustc.
    pub(crate) fn markdown_header(
        &self,
        title: &str,
        command: &str,
        rustflags: Option<&str>,
    ) -> String {
        let mut s = format!("# {title}\n\n");
        s.push_str(&format!(
            "Produced by `{command}` on {}{}.\n\n",
            self.date_utc,
            match (&self.git_commit, self.git_dirty) {
                (Some(c), Some(false)) => format!(" at commit {c} (clean tree)"),
                (Some(c), Some(true)) => format!(
                    " at commit {c} (dirty tree: uncommitted changes, written with --allow-dirty)"
                ),
                (Some(c), None) => format!(" at commit {c} (tree state unknown)"),
                (None, _) => " at an unknown commit (not a git checkout)".to_owned(),
            }
        ));
        s.push_str(&format!(
            "- Machine: {}, {} threads\n",
            self.machine.cpu.as_deref().unwrap_or("unknown CPU"),
            self.machine.threads
        ));
        s.push_str(&format!(
            "- rustc: {}{}\n",
            self.rustc.as_deref().unwrap_or("unknown"),
            rustflags.map_or(String::new(), |f| format!(", RUSTFLAGS=`{f}`"))
        ));
        s
    }
}

/// Whether a benchmark may write the committed result files from the tree `prov` describes:
/// only from a clean tree at a known commit, unless `allow_dirty` (then the page says "dirty
/// tree"). The error says why and how to proceed.
pub(crate) fn check_clean(prov: &Provenance, allow_dirty: bool) -> std::result::Result<(), String> {
    if allow_dirty {
        return Ok(());
    }
    match (&prov.git_commit, prov.git_dirty) {
        (Some(_), Some(false)) => Ok(()),
        (Some(c), Some(true)) => Err(format!(
            "the working tree has uncommitted changes (HEAD {c}): results written now would not \
             match any commit. Commit or stash them first, or pass --allow-dirty (the results \
             then say \"dirty tree\")"
        )),
        _ => Err(
            "cannot tell which commit the results would come from (not a git checkout, or \
                  git is missing): pass --allow-dirty to write them anyway"
                .to_owned(),
        ),
    }
}

/// Refuses to start a benchmark whose results would come from a dirty tree (see
/// [`check_clean`]), before any build or measurement.
pub(crate) fn require_clean(root: &Path, allow_dirty: bool) -> Result<()> {
    check_clean(&Provenance::collect(root), allow_dirty).map_err(anyhow::Error::msg)
}

/// The number of threads this process may run in parallel.
pub(crate) fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Status {
    Met,
    NotMet,
    NoData,
    /// Measured while other processes were busy on the machine: neither met nor not met.
    Unreliable,
}

impl Status {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::NotMet => "not met",
            Status::NoData => "no data",
            Status::Unreliable => "unreliable (machine busy)",
        }
    }
}

/// A target of an issue, what was observed, and whether it was met.
#[derive(Serialize, Clone, Debug)]
pub(crate) struct Target {
    pub(crate) target: String,
    pub(crate) observed: String,
    pub(crate) status: Status,
}

/// Met when every observed ratio reaches `min`; no data when nothing was observed. Each
/// observation is (where, ratio); `where` is shown in brackets after the ratio when not empty.
pub(crate) fn threshold_target(
    target: String,
    seen: &[(String, f64)],
    min: f64,
    unit: &str,
) -> Target {
    let status = if seen.is_empty() {
        Status::NoData
    } else if seen.iter().all(|(_, x)| *x >= min) {
        Status::Met
    } else {
        Status::NotMet
    };
    let observed = if seen.is_empty() {
        "—".to_owned()
    } else {
        seen.iter()
            .map(|(at, x)| {
                if at.is_empty() {
                    format!("{x:.2}{unit}")
                } else {
                    format!("{x:.2}{unit} ({at})")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Target {
        target,
        observed,
        status,
    }
}

/// The targets as a Markdown section.
pub(crate) fn targets_markdown(heading: &str, targets: &[Target]) -> String {
    let mut s = format!("\n## {heading}\n\n| target | observed | status |\n|---|---|---|\n");
    for t in targets {
        s.push_str(&format!(
            "| {} | {} | {} |\n",
            t.target,
            t.observed,
            t.status.label()
        ));
    }
    s
}

/// A table cell: the formatted value, or `—` when there is none.
pub(crate) fn cell(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "—".to_owned(), f)
}

/// Three significant digits (at least; integers of 100 and more are shown whole).
pub(crate) fn sig3(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// Sort key of an estimator: family rank, numeric parameters, then the spec itself.
pub(crate) type EstimatorKey = (usize, Vec<u64>, String);

/// PyTorch baselines (`pytorch-…`) first, then exact, then the estimator families in the order
/// of the docs, then by their numeric parameters.
pub(crate) fn estimator_order(spec: &str) -> EstimatorKey {
    const FAMILIES: [&str; 6] = [
        "exact",
        "multinomial",
        "stratified",
        "topk",
        "cv",
        "adaptive",
    ];
    if spec.starts_with("pytorch") {
        return (0, Vec::new(), spec.to_owned());
    }
    let base = spec.split('+').next().unwrap_or(spec);
    let mut parts = base.split(':');
    let family = parts.next().unwrap_or("");
    let rank = FAMILIES
        .iter()
        .position(|f| *f == family)
        .unwrap_or(FAMILIES.len())
        + 1;
    let params = parts.filter_map(|p| p.parse().ok()).collect();
    (rank, params, spec.to_owned())
}

/// The cargo target folder, from `cargo metadata` (honours `CARGO_TARGET_DIR` and config).
pub(crate) fn target_directory(root: &Path) -> Result<PathBuf> {
    let json =
        output(
            cargo()
                .current_dir(root)
                .args(["metadata", "--format-version", "1", "--no-deps"]),
        )?;
    let v: Value = serde_json::from_str(&json).context("parsing cargo metadata output")?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata: no target_directory")
}

/// Returns the python of `benchmarks/.venv` once `import torch, numpy` and `import` of each of
/// `extra` work there, creating the venv and installing what is missing from PyPI when needed;
/// otherwise the reason it could not. Each name in `extra` is both the module and the PyPI
/// package name.
pub(crate) fn ensure_torch(root: &Path, extra: &[&str]) -> std::result::Result<PathBuf, String> {
    let venv = root.join("benchmarks/.venv");
    let python = venv.join("bin/python");
    let modules: Vec<&str> = ["torch", "numpy"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let imports = |py: &Path, module: &str| -> bool {
        Command::new(py)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let missing = |py: &Path| -> Vec<&str> {
        modules
            .iter()
            .copied()
            .filter(|m| !imports(py, m))
            .collect()
    };
    if !python.exists() {
        println!("creating a Python venv at {}", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .map_err(|e| format!("{e:#}"))?;
    }
    let to_install = missing(&python);
    if to_install.is_empty() {
        println!("using {}", python.display());
        return Ok(python);
    }
    let list = to_install.join(" ");
    println!(
        "installing {list} from PyPI into {} (one-time{})",
        venv.display(),
        if to_install.contains(&"torch") {
            "; the Linux torch wheel with its dependencies is several GB"
        } else {
            ""
        }
    );
    run(Command::new(&python)
        .args(["-m", "pip", "install"])
        .args(&to_install))
    .map_err(|e| format!("{e:#}"))?;
    let still = missing(&python);
    if still.is_empty() {
        Ok(python)
    } else {
        Err(format!(
            "{list} installed into {} but `import {}` still fails",
            venv.display(),
            still.join(", ")
        ))
    }
}

/// Writes `benchmarks/results/{stem}.json` and `{stem}.md` atomically and prints the Markdown.
pub(crate) fn write_results(
    root: &Path,
    stem: &str,
    report: &impl Serialize,
    markdown: &str,
) -> Result<()> {
    let json = serde_json::to_string_pretty(report)? + "\n";
    let results = root.join("benchmarks/results");
    write_atomic(&results.join(format!("{stem}.json")), json.as_bytes())?;
    write_atomic(&results.join(format!("{stem}.md")), markdown.as_bytes())?;
    println!("\n{markdown}");
    println!("wrote benchmarks/results/{stem}.json and benchmarks/results/{stem}.md");
    Ok(())
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn cpu_model() -> Option<String> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

fn format_utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = (if z >= 0 { z } else { z - 146_096 }) / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_704_067_199), "2023-12-31T23:59:59Z");
        assert_eq!(format_utc(1_709_210_096), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn header_names_commit_and_dirty_tree() {
        let mut p = Provenance::for_tests();
        assert!(p.markdown_header("T", "cmd", None).starts_with(
            "# T\n\nProduced by `cmd` on 1970-01-01T00:00:00Z at an unknown commit (not a \
                 git checkout).\n"
        ));
        p.git_commit = Some("abc".to_owned());
        p.git_dirty = Some(true);
        let h = p.markdown_header("T", "cmd", Some("-C x"));
        assert!(
            h.contains(
                "at commit abc (dirty tree: uncommitted changes, written with --allow-dirty)."
            ),
            "{h}"
        );
        assert!(h.contains(", RUSTFLAGS=`-C x`"), "{h}");
        p.git_dirty = Some(false);
        let h = p.markdown_header("T", "cmd", None);
        assert!(h.contains("at commit abc (clean tree)."), "{h}");
    }

    #[test]
    fn results_from_a_dirty_or_unknown_tree_need_allow_dirty() {
        let mut p = Provenance::for_tests();
        p.git_commit = Some("abc".to_owned());
        p.git_dirty = Some(false);
        assert_eq!(check_clean(&p, false), Ok(()));
        p.git_dirty = Some(true);
        let err = check_clean(&p, false).unwrap_err();
        assert!(
            err.contains("uncommitted") && err.contains("--allow-dirty"),
            "{err}"
        );
        assert_eq!(check_clean(&p, true), Ok(()));
        p.git_dirty = None;
        assert!(check_clean(&p, false).is_err());
        p.git_commit = None;
        let err = check_clean(&p, false).unwrap_err();
        assert!(err.contains("--allow-dirty"), "{err}");
        assert_eq!(check_clean(&p, true), Ok(()));
    }

    #[test]
    fn thresholds() {
        let met = threshold_target("t".to_owned(), &[("a".to_owned(), 1.0)], 1.0, "×");
        assert_eq!(
            (met.status, met.observed.as_str()),
            (Status::Met, "1.00× (a)")
        );
        let not = threshold_target(
            "t".to_owned(),
            &[(String::new(), 1.2), (String::new(), 0.99)],
            1.0,
            "×",
        );
        assert_eq!(
            (not.status, not.observed.as_str()),
            (Status::NotMet, "1.20×, 0.99×")
        );
        assert_eq!(
            threshold_target("t".to_owned(), &[], 1.0, "×").status,
            Status::NoData
        );
    }

    #[test]
    fn estimator_ordering() {
        let mut specs = [
            "adaptive:2:8",
            "cv:4:8",
            "stratified:32",
            "exact",
            "pytorch-sdpa",
            "multinomial:32",
            "multinomial:8",
            "pytorch-eager",
            "topk:8:8",
        ];
        specs.sort_by_key(|s| estimator_order(s));
        assert_eq!(
            specs,
            [
                "pytorch-eager",
                "pytorch-sdpa",
                "exact",
                "multinomial:8",
                "multinomial:32",
                "stratified:32",
                "topk:8:8",
                "cv:4:8",
                "adaptive:2:8",
            ]
        );
    }
}
