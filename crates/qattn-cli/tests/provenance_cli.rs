//! Records name the code that produced them: `qattn --version` and the files of `qattn train`
//! and `qattn glue run` carry the commit the binary was built from (and whether its sources
//! were dirty), even when the command runs inside some other git repository.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn shared_data() -> PathBuf {
    std::env::var_os("QATTN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/data"))
}

fn hf_cache() -> PathBuf {
    let p = std::env::var_os("QATTN_HF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared_data().join("hf"));
    assert!(p.is_dir(), "{} not found: set QATTN_HF_CACHE", p.display());
    p
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What the build should have embedded: the workspace's HEAD and whether its build inputs have
/// uncommitted changes (the test binary is built from the same tree as `qattn`), or `None` when
/// the workspace is not a git checkout.
fn expected() -> Option<(String, bool)> {
    let root = workspace().canonicalize().unwrap();
    let top = git(&root, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != root {
        return None;
    }
    let head = git(&root, &["rev-parse", "HEAD"])?;
    let status = git(
        &root,
        &[
            "status",
            "--porcelain",
            "--untracked-files=normal",
            "--",
            "crates",
            "proto",
            "Cargo.toml",
            "Cargo.lock",
            "rust-toolchain.toml",
            ".cargo",
        ],
    )?;
    Some((head, !status.is_empty()))
}

/// A fresh repository with one commit, to run `qattn` inside; returns it and its commit.
fn foreign_repo() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]).expect("git init");
    std::fs::write(dir.path().join("README"), "another project\n").unwrap();
    git(dir.path(), &["add", "README"]).unwrap();
    git(dir.path(), &["commit", "-q", "-m", "other"]).unwrap();
    let sha = git(dir.path(), &["rev-parse", "HEAD"]).unwrap();
    (dir, sha)
}

fn qattn_in(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qattn"));
    c.current_dir(dir)
        .env("HF_HUB_CACHE", hf_cache())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("MLFLOW_TRACKING_URI");
    c
}

fn ok(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "qattn failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn version_names_the_build_commit_inside_another_repository() {
    let (repo, foreign) = foreign_repo();
    let out = ok(qattn_in(repo.path()).arg("--version").output().unwrap());
    let line = String::from_utf8(out.stdout).unwrap();
    let want = match expected() {
        Some((head, dirty)) => format!(
            "qattn {} (commit {}, {})",
            env!("CARGO_PKG_VERSION"),
            &head[..12],
            if dirty { "dirty" } else { "clean" }
        ),
        None => format!("qattn {} (commit unknown)", env!("CARGO_PKG_VERSION")),
    };
    assert_eq!(line.trim(), want);
    assert!(!line.contains(&foreign[..12]), "{line}");
}

#[test]
fn train_and_glue_records_carry_the_build_commit_not_the_cwd_commit() {
    let (repo, foreign) = foreign_repo();
    let (want_commit, want_dirty) = match expected() {
        Some((head, dirty)) => (Value::from(head), Value::from(dirty)),
        None => (Value::Null, Value::Null),
    };

    // qattn train: params.json (next to metrics.jsonl) and train_summary.json.
    let mut data = String::new();
    for i in 0..16 {
        let label = if i % 2 == 0 { "neg" } else { "pos" };
        data.push_str(&format!(
            "{{\"text\": \"item {i}\", \"label\": \"{label}\"}}\n"
        ));
    }
    let train = repo.path().join("train.jsonl");
    std::fs::write(&train, data).unwrap();
    let out_dir = repo.path().join("out");
    ok(qattn_in(repo.path())
        .args([
            "train",
            "--model",
            "synthetic/bert-tiny-random-h32",
            "--train",
        ])
        .arg(&train)
        .arg("--output-dir")
        .arg(&out_dir)
        .args(["--max-steps", "2", "--batch-size", "8", "--save-steps", "2"])
        .output()
        .unwrap());
    let read = |p: PathBuf| -> Value {
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let params = read(out_dir.join("params.json"));
    let summary = read(out_dir.join("train_summary.json"));
    let commit_str = want_commit.as_str().unwrap_or("unknown");
    assert_eq!(params["git_commit"], commit_str, "{params}");
    let state = match want_dirty.as_bool() {
        Some(true) => "dirty",
        Some(false) => "clean",
        None => "unknown",
    };
    assert_eq!(params["git_dirty"], state, "{params}");
    assert_eq!(summary["git_commit"], want_commit, "{summary}");
    assert_eq!(summary["git_dirty"], want_dirty, "{summary}");
    assert_ne!(params["git_commit"], foreign.as_str());

    // qattn glue run: run.json.
    let data_dir = shared_data();
    assert!(
        data_dir.join("glue").is_dir(),
        "{} has no glue/: set QATTN_DATA_DIR",
        data_dir.display()
    );
    let runs = repo.path().join("runs");
    ok(qattn_in(repo.path())
        .env("QATTN_DATA_DIR", &data_dir)
        .args([
            "glue",
            "run",
            "--task",
            "rte",
            "--model",
            "synthetic/bert-tiny-random-h32",
            "--seeds",
            "1",
            "--max-steps",
            "1",
            "--train-limit",
            "8",
            "--eval-limit",
            "8",
            "--batch-size",
            "8",
            "--output-dir",
        ])
        .arg(&runs)
        .output()
        .unwrap());
    let record = read(runs.join("rte/exact/seed-1/run.json"));
    assert_eq!(record["git_sha"], want_commit, "{record}");
    assert_eq!(record["git_dirty"], want_dirty, "{record}");
}
