//! `qattn train` end to end: fine-tune the tiny BERT on a JSONL file, resume, survive SIGKILL.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn hf_cache() -> PathBuf {
    let p = std::env::var_os("QATTN_HF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/data/hf"
            ))
        });
    assert!(p.is_dir(), "{} not found: set QATTN_HF_CACHE", p.display());
    p
}

fn qattn_train(dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qattn"));
    c.args([
        "train",
        "--model",
        "synthetic/bert-tiny-random-h32",
        "--train",
        dir.join("train.jsonl").to_str().unwrap(),
        "--output-dir",
        dir.join("out").to_str().unwrap(),
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--seed",
        "3",
    ])
    .args(extra)
    .env("HF_HUB_CACHE", hf_cache())
    .env("HF_HUB_OFFLINE", "1")
    .env_remove("MLFLOW_TRACKING_URI");
    c
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "qattn train failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn write_data(dir: &Path) {
    let mut s = String::new();
    for i in 0..40 {
        let (word, label) = if i % 2 == 0 {
            ("awful", "neg")
        } else {
            ("great", "pos")
        };
        s.push_str(&format!(
            "{{\"text\": \"item {i} was {word}\", \"text_pair\": \"review {}\", \"label\": \"{label}\"}}\n",
            i % 5
        ));
    }
    std::fs::write(dir.join("train.jsonl"), s).unwrap();
}

fn metric_steps(out_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(out_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn trains_evaluates_saves_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let eval = dir.path().join("train.jsonl");
    let out = ok(qattn_train(
        dir.path(),
        &[
            "--eval",
            eval.to_str().unwrap(),
            "--max-steps",
            "20",
            "--save-steps",
            "10",
            "--logging-steps",
            "5",
            "--attention",
            "stratified:4",
            "--set",
            "warmup_steps=2",
            "--json",
        ],
    )
    .output()
    .unwrap());
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["steps"], 20);
    assert!(summary["eval"]["eval_accuracy"].as_f64().is_some());
    let o = dir.path().join("out");
    for p in [
        "checkpoint-10",
        "checkpoint-20",
        "model/config.json",
        "metrics.jsonl",
    ] {
        assert!(o.join(p).exists(), "{p} missing");
    }
    let lines = metric_steps(&o);
    let logged: Vec<&Value> = lines.iter().filter(|v| v.get("loss").is_some()).collect();
    assert_eq!(
        logged
            .iter()
            .map(|v| v["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![5, 10, 15, 20]
    );
    for v in &logged {
        assert!(v["lr"].as_f64().is_some() && v["loss"].as_f64().unwrap() > 0.0);
    }
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(o.join("model/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["id2label"]["1"], "pos");
    // Resume to a later step: the same arguments, a longer run.
    let out = ok(qattn_train(
        dir.path(),
        &[
            "--max-steps",
            "25",
            "--save-steps",
            "10",
            "--logging-steps",
            "5",
            "--attention",
            "stratified:4",
            "--set",
            "warmup_steps=2",
            "--resume",
            "--json",
        ],
    )
    .output()
    .unwrap());
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["resumed_from"], 20);
    assert_eq!(summary["steps"], 25);
    assert_eq!(summary["steps_this_run"], 5);
    // Resuming with a different learning rate would mix two runs: refused.
    let o = qattn_train(
        dir.path(),
        &[
            "--max-steps",
            "30",
            "--attention",
            "stratified:4",
            "--set",
            "warmup_steps=2",
            "--set",
            "learning_rate=0.5",
            "--resume",
        ],
    )
    .output()
    .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("different training arguments"), "{err}");
}

#[test]
fn sigkill_during_training_loses_nothing_saved() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let o = dir.path().join("out");
    let args = [
        "--max-steps",
        "300",
        "--save-steps",
        "3",
        "--logging-steps",
        "1",
    ];
    let mut child = qattn_train(dir.path(), &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !o.join("checkpoint-9").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint-9 appeared"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("training ended early: {status}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(37));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let out = ok(
        qattn_train(dir.path(), &[&args[..], &["--resume", "--json"]].concat())
            .output()
            .unwrap(),
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let from = summary["resumed_from"].as_u64().expect("resumed");
    assert!(from >= 9 && from.is_multiple_of(3), "resumed from {from}");
    assert_eq!(summary["steps"], 300);
    let steps: Vec<u64> = metric_steps(&o)
        .iter()
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        steps,
        (1..=300).collect::<Vec<_>>(),
        "metrics.jsonl has gaps or repeats"
    );
}

#[test]
fn bad_arguments_fail_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let out = qattn_train(dir.path(), &["--set", "learnin_rate=1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("learnin_rate"));
    std::fs::write(dir.path().join("train.jsonl"), "{\"text\": \"x\"}\n").unwrap();
    let out = qattn_train(dir.path(), &["--max-steps", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("train.jsonl:1") && err.contains("label"),
        "{err}"
    );
}
