//! `qattn glue report` end to end: two hand-made run records (the fields of
//! `qattn_glue::runner::RunRecord`) in the layout `qattn glue run` writes, then every export.

use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};

fn qattn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qattn"))
        .args(args)
        .output()
        .unwrap()
}

fn write_run(root: &Path, attention_dir: &str, attention: &str, seed: u64, mcc: f64, train_s: f64) {
    let dir = root
        .join("cola")
        .join(attention_dir)
        .join(format!("seed-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    let record = json!({
        "task": "cola",
        "model": "synthetic/bert-tiny-random-h32",
        "attention": attention,
        "seed": seed,
        "training_args": {"learning_rate": 2e-5, "seed": seed},
        "git_sha": "0123456789abcdef0123456789abcdef01234567",
        "machine": {"os": "linux", "threads": "2"},
        "dev_metrics": {"mcc": mcc},
        "predictions": [
            {"id": "0", "pred": 1, "gold": {"Class": 1}},
            {"id": "1", "pred": 0, "gold": {"Class": 1}}
        ],
        "wall_seconds": {"load": 0.5, "train": train_s, "eval": 0.25},
        "train_tokens_per_second": 1234.5,
        "peak_rss_mb": 321.0,
        "train_examples": 64,
        "dev_examples": 2,
        "unix_time": 1700000000u64
    });
    std::fs::write(
        dir.join("run.json"),
        serde_json::to_string_pretty(&record).unwrap(),
    )
    .unwrap();
}

#[test]
fn report_writes_every_format_from_two_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    write_run(&runs, "exact", "exact", 1, 0.25, 10.0);
    write_run(&runs, "exact", "exact", 2, 0.35, 14.0);
    let out = tmp.path().join("report");
    let o = qattn(&[
        "glue",
        "report",
        "--runs",
        runs.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    for f in [
        "results.csv",
        "results.md",
        "results.tex",
        "results.json",
        "cola.svg",
        "cola.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
        assert!(stdout.contains(f), "{f} not listed: {stdout}");
    }
    // mean 0.30, sd √((0.05² + 0.05²) / 1) = 0.0707…; train 12 s.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "task,attention,metric,n,mean,sd,seeds,models,train_seconds_mean"
    );
    assert_eq!(lines.len(), 2);
    let f: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(f[..4], ["cola", "exact", "mcc", "2"]);
    assert!((f[4].parse::<f64>().unwrap() - 0.30).abs() < 1e-12);
    assert!((f[5].parse::<f64>().unwrap() - 0.005f64.sqrt()).abs() < 1e-12);
    assert_eq!(f[6..], ["1 2", "synthetic/bert-tiny-random-h32", "12"]);

    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("qattn glue report --runs"), "{md}");
    assert!(md.contains("| attention | seeds | MCC | train s |"), "{md}");
    assert!(md.contains("| `exact` | 2 | 30.00 ± 7.07 | 12.0 |"), "{md}");

    let tex = std::fs::read_to_string(out.join("results.tex")).unwrap();
    for l in ["\\toprule", "\\midrule", "\\bottomrule"] {
        assert_eq!(tex.matches(l).count(), 1, "{l} in {tex}");
    }
    assert!(
        tex.contains("\\texttt{exact} & 2 & $30.00 \\pm 7.07$ & 12.0 \\\\"),
        "{tex}"
    );

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["runs"], 2);
    let g = &json["groups"][0];
    assert_eq!(g["task"], "cola");
    assert_eq!(g["attention"], "exact");
    assert_eq!(g["seeds"], json!([1, 2]));
    assert_eq!(g["metrics"][0]["metric"], "mcc");
    assert!((g["metrics"][0]["mean"].as_f64().unwrap() - 0.30).abs() < 1e-12);
    assert_eq!(g["train_seconds_mean"], 12.0);

    let svg = std::fs::read_to_string(out.join("cola.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<circle class=\"point\"").count(), 1);
    assert_eq!(svg.matches("<line class=\"errorbar\"").count(), 1);
    assert!(svg.contains(">exact</text>"));

    let png = std::fs::read(out.join("cola.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // No temporary files are left in the output directory.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 6);
}

#[test]
fn report_without_runs_is_an_error_naming_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let o = qattn(&[
        "glue",
        "report",
        "--runs",
        tmp.path().to_str().unwrap(),
        "--output-dir",
        tmp.path().join("out").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no run.json"), "{err}");
    assert!(err.contains(tmp.path().to_str().unwrap()), "{err}");
}
