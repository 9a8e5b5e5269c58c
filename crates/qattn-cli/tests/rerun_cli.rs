//! A second run into a non-empty output directory: refused without `--resume` or
//! `--overwrite` (exit 2, the directory and both options named, nothing changed); with
//! `--overwrite` the old run's outputs are replaced, never interleaved.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn shared_data() -> PathBuf {
    std::env::var_os("QATTN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        })
}

fn hf_cache() -> PathBuf {
    let p = std::env::var_os("QATTN_HF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared_data().join("hf"));
    assert!(p.is_dir(), "{} not found: set QATTN_HF_CACHE", p.display());
    p
}

fn qattn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qattn"))
        .args(args)
        .env("HF_HUB_CACHE", hf_cache())
        .env("HF_HUB_OFFLINE", "1")
        .env("QATTN_DATA_DIR", shared_data())
        .env_remove("MLFLOW_TRACKING_URI")
        .output()
        .unwrap()
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Exit status 2 and a message naming `dir`, `--resume` and `--overwrite`.
fn assert_refused(o: &Output, dir: &Path) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&dir.display().to_string()), "{err}");
    assert!(
        err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn metric_steps(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn train_into_a_used_directory_needs_resume_or_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = String::new();
    for i in 0..16 {
        let label = if i % 2 == 0 { "neg" } else { "pos" };
        data.push_str(&format!(
            "{{\"text\": \"item {i}\", \"label\": \"{label}\"}}\n"
        ));
    }
    let train = dir.path().join("train.jsonl");
    std::fs::write(&train, data).unwrap();
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            "synthetic/bert-tiny-random-h32",
            "--train",
            train.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--batch-size",
            "8",
            "--logging-steps",
            "1",
            "--save-steps",
            "3",
        ];
        args.extend_from_slice(extra);
        qattn(&args)
    };
    assert_ok(&run(&["--max-steps", "3"]));
    let metrics = out.join("metrics.jsonl");
    assert_eq!(metric_steps(&metrics), [1, 2, 3]);
    let before = std::fs::read(&metrics).unwrap();

    let refused = run(&["--max-steps", "2"]);
    assert_refused(&refused, &out);
    assert_eq!(std::fs::read(&metrics).unwrap(), before, "log untouched");

    // Both flags at once: a usage error from the argument parser.
    let both = run(&["--max-steps", "2", "--resume", "--overwrite"]);
    assert_eq!(both.status.code(), Some(2));

    // --overwrite: a fresh run, its log alone (no steps of the first run).
    assert_ok(&run(&["--max-steps", "2", "--overwrite"]));
    assert_eq!(metric_steps(&metrics), [1, 2]);
    assert!(!out.join("checkpoint-3").exists());

    // A file qattn did not write: --overwrite refuses and removes nothing.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let o = run(&["--max-steps", "2", "--overwrite"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("notes.txt"));
    assert!(out.join("notes.txt").exists() && metrics.exists());
}

#[test]
fn glue_run_into_a_used_directory_needs_resume_or_overwrite() {
    assert!(
        shared_data().join("glue").is_dir(),
        "{} has no glue/: set QATTN_DATA_DIR",
        shared_data().display()
    );
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "glue",
            "run",
            "--task",
            "rte",
            "--model",
            "synthetic/bert-tiny-random-h32",
            "--seeds",
            "1,2",
            "--max-steps",
            "2",
            "--train-limit",
            "8",
            "--eval-limit",
            "8",
            "--batch-size",
            "8",
            "--output-dir",
            runs.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        qattn(&args)
    };
    assert_ok(&run(&[]));
    let seed2 = runs.join("rte/exact/seed-2");
    let metrics = seed2.join("metrics.jsonl");
    let first = metric_steps(&metrics);
    let record = std::fs::read(seed2.join("run.json")).unwrap();

    let refused = run(&[]);
    assert_refused(&refused, &runs.join("rte/exact/seed-1"));
    assert_eq!(std::fs::read(seed2.join("run.json")).unwrap(), record);

    assert_ok(&run(&["--overwrite"]));
    assert_eq!(metric_steps(&metrics), first, "one run's log, not two");
}
