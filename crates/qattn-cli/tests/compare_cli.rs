//! `qattn compare`, the main job, in its quick mode: it runs every system × seed on the
//! embedded synthetic task and prints a verdict backed by a written report.

use serde_json::Value;
use std::process::Command;

/// Runs `qattn compare ARGS --resamples 1000 --output-dir OUT` and returns its stdout and
/// claims-report.json, failing the test when the command fails.
fn compare(args: &[&str], out: &std::path::Path) -> (String, Value) {
    let o = Command::new(env!("CARGO_BIN_EXE_qattn"))
        .arg("compare")
        .args(args)
        .args(["--resamples", "1000", "--output-dir"])
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report =
        serde_json::from_str(&std::fs::read_to_string(out.join("claims-report.json")).unwrap())
            .unwrap();
    (stdout, report)
}

#[test]
fn quick_compare_prints_a_verdict_and_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let (stdout, report) = compare(&["--quick"], &out);
    let verdicts = ["VERIFIED", "REFUTED", "INCONCLUSIVE"];
    assert!(
        stdout.contains("stratified:32 beats exact") && verdicts.iter().any(|v| stdout.contains(v)),
        "{stdout}"
    );
    // One record per system × seed (5 default systems, 3 seeds), all on the same dev examples.
    let runs = qattn_glue_runs(&out.join("runs"));
    assert_eq!(runs.len(), 15, "{runs:?}");
    let r = &report["results"][0];
    assert_eq!(r["system"]["scores"].as_array().unwrap().len(), 3);
    assert_eq!(r["baseline"]["scores"].as_array().unwrap().len(), 3);
    let v = r["verdict"].as_str().unwrap();
    assert!(verdicts.contains(&v), "{v}");
    assert!(
        stdout.contains(v),
        "the printed verdict is the reported one"
    );
    // The verdict follows from the reported interval (docs/verify.md); an interval of zero
    // width (every run identical) is never evidence either way.
    let reason = r["reason"].as_str().unwrap();
    match (r["ci_low"].as_f64(), r["ci_high"].as_f64()) {
        (Some(lo), Some(hi)) => {
            assert!(hi > lo, "{r}");
            match v {
                "REFUTED" => assert!(hi < 0.0),
                "VERIFIED" => assert!(lo > 0.0),
                _ => assert!(
                    (lo <= 0.0 && hi >= 0.0) || reason.contains("did not clearly beat"),
                    "{r}"
                ),
            }
        }
        _ => assert!(v == "INCONCLUSIVE" && reason.contains("zero-width"), "{r}"),
    }
}

#[test]
fn a_clearly_weaker_system_is_reported_worse_at_every_length() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let (stdout, report) = compare(
        &[
            "--quick",
            "--systems",
            "multinomial:2",
            "--lengths",
            "32,48",
        ],
        &out,
    );
    let results = report["results"].as_array().unwrap();
    let tasks: Vec<&str> = results
        .iter()
        .map(|r| r["claim"]["task"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, ["synthetic-majority-32", "synthetic-majority-48"]);
    for r in results {
        assert_eq!(r["verdict"], "REFUTED", "{r}");
        let (lo, hi) = (
            r["ci_low"].as_f64().unwrap(),
            r["ci_high"].as_f64().unwrap(),
        );
        assert!(lo < hi && hi < 0.0, "{r}");
        assert!(r["mde"].as_f64().unwrap() > 0.0, "{r}");
        assert!(
            stdout.contains(&format!(
                "multinomial:2 beats exact on {}: REFUTED",
                r["claim"]["task"].as_str().unwrap()
            )),
            "{stdout}"
        );
    }
    assert_eq!(qattn_glue_runs(&out.join("runs")).len(), 12);
}

#[test]
fn long_compare_runs_exact_against_lsh_at_4096_words() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let (stdout, report) = compare(&["--long", "--quick", "--seeds", "1,2"], &out);
    // The default systems of --long: exact against the two lsh settings, 2 seeds each.
    let results = report["results"].as_array().unwrap();
    let systems: Vec<&str> = results
        .iter()
        .map(|r| r["claim"]["system"].as_str().unwrap())
        .collect();
    assert_eq!(systems, ["lsh:6:256:256", "lsh:6:128:32"], "{report}");
    for r in results {
        assert_eq!(r["claim"]["task"], "synthetic-majority-4096", "{r}");
        assert_eq!(r["system"]["scores"].as_array().unwrap().len(), 2, "{r}");
    }
    assert!(
        stdout.contains("synthetic-majority-4096") && stdout.contains("lsh:6:256:256 beats exact"),
        "{stdout}"
    );
    let runs = qattn_glue_runs(&out.join("runs"));
    assert_eq!(runs.len(), 6, "{runs:?}");
    for r in &runs {
        let rec: Value = serde_json::from_str(&std::fs::read_to_string(r).unwrap()).unwrap();
        assert_eq!(rec["task"], "synthetic-majority-4096", "{rec}");
        // Every dev example was scored: 32 predictions of 4098-token examples.
        assert_eq!(rec["predictions"].as_array().unwrap().len(), 32, "{r:?}");
    }
}

#[test]
fn compare_rejects_the_baseline_as_a_system_and_bad_specs() {
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_qattn"))
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = run(&["compare", "--quick", "--systems", "exact"]);
    assert!(e.contains("is the baseline"), "{e}");
    let e = run(&["compare", "--quick", "--systems", "stratified:zero"]);
    assert!(e.contains("stratified:zero"), "{e}");
    let e = run(&["compare", "--task", "rte"]);
    assert!(e.contains("--model"), "{e}");
    let e = run(&["compare", "--quick", "--lengths", "0"]);
    assert!(e.contains("length 0"), "{e}");
    let e = run(&[
        "compare",
        "--lengths",
        "64",
        "--task",
        "rte",
        "--model",
        "m",
    ]);
    assert!(e.contains("--lengths") && e.contains("--task"), "{e}");
    let e = run(&["compare", "--long", "--task", "rte", "--model", "m"]);
    assert!(e.contains("--long") && e.contains("--task"), "{e}");
}

fn qattn_glue_runs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "run.json") {
                out.push(p);
            }
        }
    }
    out
}
