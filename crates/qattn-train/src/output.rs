//! What a training run may do with an output directory that already holds files.
//!
//! Starting a fresh run in a directory with an earlier run's files would append to its
//! `metrics.jsonl` and mix two runs' checkpoints, so [`prepare`] refuses unless the caller
//! chose [`OutputMode::Resume`] (continue the earlier run) or [`OutputMode::Overwrite`]
//! (remove the earlier run's outputs first). Overwriting removes only the files and folders a
//! run writes ([`is_run_output`]); if anything else is in the directory it refuses and names
//! it, so a mistyped `--output-dir ~` deletes nothing.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How to treat an output directory that already holds files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// The directory must be missing or empty.
    Fresh,
    /// Continue the run whose files are there (checkpoints, metrics.jsonl).
    Resume,
    /// Remove the earlier run's outputs, then start fresh.
    Overwrite,
}

impl OutputMode {
    /// The mode of the `--resume` / `--overwrite` flags (both: an error naming them).
    pub fn from_flags(resume: bool, overwrite: bool) -> Result<Self> {
        match (resume, overwrite) {
            (true, true) => Err(Error::Args(
                "--resume and --overwrite exclude each other: continue the run in the output \
                 directory, or replace it"
                    .into(),
            )),
            (true, false) => Ok(OutputMode::Resume),
            (false, true) => Ok(OutputMode::Overwrite),
            (false, false) => Ok(OutputMode::Fresh),
        }
    }
}

/// Whether `name` is a file or folder that a training run writes into its output directory:
/// `checkpoint-*`, `model`, `metrics.jsonl`, `params.json`, `train_summary.json`,
/// `training_args.json`, `run.json`, and the temporaries of atomic writes (`.tmp-*`,
/// `.NAME.tmp-PID`).
pub fn is_run_output(name: &str) -> bool {
    matches!(
        name,
        "model"
            | "metrics.jsonl"
            | "params.json"
            | "train_summary.json"
            | "training_args.json"
            | "run.json"
    ) || name.starts_with("checkpoint-")
        || name.starts_with(".tmp-")
        || (name.starts_with('.') && name.contains(".tmp-"))
}

/// Checks `dir` for `mode` and, for [`OutputMode::Overwrite`], removes the earlier run's
/// outputs. Nothing is removed unless every entry of `dir` is a run output.
pub fn prepare(dir: &Path, mode: OutputMode) -> Result<()> {
    check(dir, mode)?;
    if mode == OutputMode::Overwrite {
        for p in &entries(dir)? {
            let removed = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
            removed.map_err(|e| Error::io(p, e))?;
        }
    }
    Ok(())
}

/// [`prepare`] without removing anything: the error `prepare` would give, so that a caller
/// with several output directories can check them all before changing any.
pub fn check(dir: &Path, mode: OutputMode) -> Result<()> {
    let entries = entries(dir)?;
    if entries.is_empty() || mode == OutputMode::Resume {
        return Ok(());
    }
    if mode == OutputMode::Fresh {
        return Err(Error::Args(format!(
            "output directory {} is not empty (it holds {}): pass --resume to continue the run \
             in it, or --overwrite to remove its outputs and start fresh (or choose another \
             --output-dir)",
            dir.display(),
            list(&entries)
        )));
    }
    let foreign: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_run_output)
        })
        .collect();
    if !foreign.is_empty() {
        return Err(Error::Args(format!(
            "--overwrite: output directory {} holds files a training run does not write ({}); \
             not removing anything: move them away or choose another --output-dir",
            dir.display(),
            list(&foreign)
        )));
    }
    Ok(())
}

/// The entries of `dir`, sorted; empty when `dir` does not exist.
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for e in rd {
        out.push(e.map_err(|e| Error::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

/// `a, b, c` (at most five names, then `and N more`).
fn list<P: AsRef<Path>>(paths: &[P]) -> String {
    let names: Vec<String> = paths
        .iter()
        .take(5)
        .map(|p| {
            p.as_ref()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let mut s = names.join(", ");
    if paths.len() > 5 {
        s.push_str(&format!(" and {} more", paths.len() - 5));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(names: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for n in names {
            if n.ends_with('/') {
                std::fs::create_dir_all(d.path().join(n).join("inner")).unwrap();
            } else {
                std::fs::write(d.path().join(n), "x").unwrap();
            }
        }
        d
    }

    #[test]
    fn fresh_refuses_a_non_empty_directory_and_names_both_options() {
        let d = dir_with(&["metrics.jsonl"]);
        let err = prepare(d.path(), OutputMode::Fresh)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&d.path().display().to_string()), "{err}");
        assert!(
            err.contains("--resume") && err.contains("--overwrite"),
            "{err}"
        );
        assert!(d.path().join("metrics.jsonl").exists());
        // Missing or empty: fine.
        prepare(&d.path().join("new"), OutputMode::Fresh).unwrap();
        let empty = tempfile::tempdir().unwrap();
        prepare(empty.path(), OutputMode::Fresh).unwrap();
        prepare(d.path(), OutputMode::Resume).unwrap();
        assert!(d.path().join("metrics.jsonl").exists());
    }

    #[test]
    fn overwrite_removes_run_outputs_only() {
        let d = dir_with(&[
            "metrics.jsonl",
            "params.json",
            "checkpoint-10/",
            "model/",
            ".tmp-checkpoint-20-7/",
            ".run.json.tmp-9",
        ]);
        prepare(d.path(), OutputMode::Overwrite).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);

        let d = dir_with(&["metrics.jsonl", "notes.txt", "checkpoint-10/"]);
        let err = prepare(d.path(), OutputMode::Overwrite)
            .unwrap_err()
            .to_string();
        assert!(err.contains("notes.txt"), "{err}");
        // Nothing half-removed.
        assert!(d.path().join("metrics.jsonl").exists());
        assert!(d.path().join("checkpoint-10/inner").exists());
    }

    #[test]
    fn flags() {
        assert_eq!(
            OutputMode::from_flags(false, false).unwrap(),
            OutputMode::Fresh
        );
        assert_eq!(
            OutputMode::from_flags(true, false).unwrap(),
            OutputMode::Resume
        );
        assert_eq!(
            OutputMode::from_flags(false, true).unwrap(),
            OutputMode::Overwrite
        );
        assert!(OutputMode::from_flags(true, true).is_err());
    }
}
