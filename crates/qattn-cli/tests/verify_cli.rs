//! `qattn verify compare | seeds` end to end: hand-made output files with known answers,
//! McNemar's JSON, Welch/Wilcoxon against the SciPy values of qattn-verify's fixture, and the
//! error messages of bad input.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn qattn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qattn"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs a command that must succeed and print exactly one JSON object.
fn json(args: &[&str]) -> Value {
    let o = qattn(args);
    assert!(
        o.status.success(),
        "qattn {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8(o.stdout).unwrap();
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(v.is_object(), "{text}");
    v
}

/// Runs a command that must fail; returns its stderr.
fn fails(args: &[&str]) -> String {
    let o = qattn(args);
    assert!(!o.status.success(), "qattn {args:?} should have failed");
    assert!(o.stdout.is_empty(), "no JSON on failure");
    String::from_utf8(o.stderr).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Writes JSON lines `{"id", "pred", "gold"}` for the given rows.
fn write(dir: &Path, name: &str, rows: &[(String, f64, f64)]) -> PathBuf {
    let p = dir.join(name);
    let text: String = rows
        .iter()
        .map(|(id, pred, gold)| {
            format!("{{\"id\": \"{id}\", \"pred\": {pred}, \"gold\": {gold}}}\n")
        })
        .collect();
    std::fs::write(&p, text).unwrap();
    p
}

/// `n` binary examples (gold alternates 0, 1); the system is right on example `i` iff `right(i)`.
fn rows(n: usize, right: impl Fn(usize) -> bool) -> Vec<(String, f64, f64)> {
    (0..n)
        .map(|i| {
            let gold = (i % 2) as f64;
            let pred = if right(i) { gold } else { 1.0 - gold };
            (format!("ex{i}"), pred, gold)
        })
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const FIELDS: [&str; 8] = [
    "metric", "metric_a", "metric_b", "delta", "ci_low", "ci_high", "p_value", "test",
];

#[test]
fn identical_systems_give_delta_zero_and_p_one() {
    let dir = tempfile::tempdir().unwrap();
    let r = rows(60, |i| i % 3 != 0);
    let a = write(dir.path(), "a.jsonl", &r);
    // same outputs, reversed order: alignment is by id
    let mut rev = r.clone();
    rev.reverse();
    let b = write(dir.path(), "b.jsonl", &rev);
    for test in ["bootstrap", "permutation", "mcnemar"] {
        let v = json(&[
            "verify",
            "compare",
            "--a",
            s(&a),
            "--b",
            s(&b),
            "--metric",
            "accuracy",
            "--test",
            test,
            "--resamples",
            "500",
        ]);
        for k in FIELDS {
            assert!(!v[k].is_null(), "{test}: missing {k} in {v}");
        }
        assert_eq!(v["test"], test);
        assert_eq!(v["metric"], "accuracy");
        assert_eq!(f(&v["delta"]), 0.0, "{v}");
        assert_eq!(f(&v["p_value"]), 1.0, "{v}");
        assert_eq!((f(&v["ci_low"]), f(&v["ci_high"])), (0.0, 0.0), "{v}");
        assert_eq!(f(&v["metric_a"]), 40.0 / 60.0);
        assert_eq!(v["n"], 60);
    }
}

#[test]
fn a_clearly_better_system_gets_a_small_p() {
    let dir = tempfile::tempdir().unwrap();
    // A right on 180 of 200, B on 120 of 200 (B's errors include all of A's)
    let a = write(dir.path(), "a.jsonl", &rows(200, |i| i % 10 != 0));
    let b = write(dir.path(), "b.jsonl", &rows(200, |i| i % 10 >= 4));
    for (test, metric) in [
        ("bootstrap", "accuracy"),
        ("bootstrap", "f1"),
        ("permutation", "mcc"),
        ("mcnemar", "accuracy"),
    ] {
        let v = json(&[
            "verify",
            "compare",
            "--a",
            s(&a),
            "--b",
            s(&b),
            "--metric",
            metric,
            "--test",
            test,
            "--resamples",
            "2000",
            "--seed",
            "3",
        ]);
        assert_eq!(v["metric"], metric);
        assert!(f(&v["delta"]) > 0.2, "{v}");
        assert!(f(&v["ci_low"]) > 0.0, "{v}");
        assert!(f(&v["p_value"]) < 0.001, "{test} {metric}: {v}");
    }
    // default test is the bootstrap, with 10000 resamples and seed 0; reproducible
    let args = [
        "verify",
        "compare",
        "--a",
        s(&a),
        "--b",
        s(&b),
        "--metric",
        "accuracy",
    ];
    let v = json(&args);
    assert_eq!(v["test"], "bootstrap");
    assert_eq!(v["resamples"], 10000);
    assert_eq!(v, json(&args));
    assert!((f(&v["delta"]) - 0.3).abs() < 1e-12);
}

#[test]
fn mcnemar_json_matches_the_exact_binomial_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    // 40 examples: both right on 0..20, A only on 20..30 (b01 = 10), B only on 30..32
    // (b10 = 2), both wrong on 32..40. 12 discordant < 25 → exact:
    // p = 2·P(X ≤ 2), X ~ Bin(12, ½) = 2·(1 + 12 + 66)/4096 = 158/4096.
    let a = write(dir.path(), "a.jsonl", &rows(40, |i| i < 30));
    let b = write(
        dir.path(),
        "b.jsonl",
        &rows(40, |i| i < 20 || (30..32).contains(&i)),
    );
    let v = json(&[
        "verify",
        "compare",
        "--a",
        s(&a),
        "--b",
        s(&b),
        "--metric",
        "accuracy",
        "--test",
        "mcnemar",
        "--resamples",
        "1000",
    ]);
    assert_eq!(v["test"], "mcnemar");
    assert_eq!((v["b01"].as_u64(), v["b10"].as_u64()), (Some(10), Some(2)));
    assert_eq!(v["method"], "exact-binomial");
    assert_eq!(f(&v["statistic"]), 2.0);
    assert!((f(&v["p_value"]) - 158.0 / 4096.0).abs() < 1e-12, "{v}");
    assert!((f(&v["delta"]) - 8.0 / 40.0).abs() < 1e-12);
    assert!(f(&v["ci_low"]) <= 0.2 && 0.2 <= f(&v["ci_high"]));
    // 30 discordant (A only on 20..46, B only on 46..50): χ² with continuity correction
    // (|26 − 4| − 1)²/30 = 14.7
    let a = write(dir.path(), "a2.jsonl", &rows(60, |i| i < 46));
    let b = write(
        dir.path(),
        "b2.jsonl",
        &rows(60, |i| i < 20 || (46..50).contains(&i)),
    );
    let v = json(&[
        "verify",
        "compare",
        "--a",
        s(&a),
        "--b",
        s(&b),
        "--metric",
        "accuracy",
        "--test",
        "mcnemar",
        "--resamples",
        "200",
    ]);
    assert_eq!(v["method"], "chi2-continuity-corrected");
    assert!((f(&v["statistic"]) - 14.7).abs() < 1e-12, "{v}");
}

fn stats_fixture() -> Value {
    serde_json::from_str(include_str!("../../qattn-verify/tests/fixtures/stats.json")).unwrap()
}

fn csv(v: &Value) -> String {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| format!("{}", x.as_f64().unwrap()))
        .collect::<Vec<_>>()
        .join(",")
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs() + 1e-12,
        "{what}: {got} vs {want}"
    );
}

#[test]
fn seeds_welch_and_wilcoxon_match_scipy() {
    let fx = stats_fixture();
    let c = fx["welch"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["level"] == 0.95)
        .unwrap()
        .clone();
    let (a, b) = (csv(&c["a"]), csv(&c["b"]));
    let v = json(&["verify", "seeds", "--a", &a, "--b", &b]);
    assert_eq!(v["test"], "welch");
    close(f(&v["statistic"]), f(&c["statistic"]), "t");
    close(f(&v["p_value"]), f(&c["pvalue"]), "p");
    close(f(&v["df"]), f(&c["df"]), "df");
    close(f(&v["ci_low"]), f(&c["ci_low"]), "ci_low");
    close(f(&v["ci_high"]), f(&c["ci_high"]), "ci_high");
    for k in ["mean_a", "mean_b", "delta"] {
        assert!(v[k].is_number(), "{k}: {v}");
    }
    for c in fx["wilcoxon"].as_array().unwrap() {
        let v = json(&[
            "verify",
            "seeds",
            "--a",
            &csv(&c["a"]),
            "--b",
            &csv(&c["b"]),
            "--test",
            "wilcoxon",
        ]);
        assert_eq!(v["test"], "wilcoxon");
        close(f(&v["statistic"]), f(&c["statistic"]), "W");
        close(f(&v["p_value"]), f(&c["pvalue"]), "p");
        assert_eq!(v["method"], c["method"]);
        // the Hodges–Lehmann interval comes with its estimate and achieved level
        let (lo, hi) = (f(&v["ci_low"]), f(&v["ci_high"]));
        assert!(lo <= f(&v["estimate"]) && f(&v["estimate"]) <= hi, "{v}");
        assert!(f(&v["ci_level"]) > 0.0 && f(&v["ci_level"]) < 1.0, "{v}");
    }
}

#[test]
fn seeds_aso_prints_eps_min() {
    let v = json(&[
        "verify",
        "seeds",
        "--a",
        "0.80,0.81,0.82,0.83",
        "--b",
        "0.60,0.61,0.62,0.63",
        "--test",
        "aso",
        "--seed",
        "1",
    ]);
    assert_eq!(v["test"], "aso");
    // A is above B everywhere, in every bootstrap sample too: eps_min = 0, dominant
    assert_eq!(f(&v["eps_min"]), 0.0);
    assert_eq!(v["dominant"], true);
    assert!((f(&v["delta"]) - 0.2).abs() < 1e-12);
    let v = json(&[
        "verify",
        "seeds",
        "--a",
        "0.60,0.61,0.62,0.63",
        "--b",
        "0.80,0.81,0.82,0.83",
        "--test",
        "aso",
        "--tau",
        "0.2",
    ]);
    assert!(f(&v["eps_min"]) > 0.9 && v["dominant"] == false, "{v}");
    assert_eq!(f(&v["tau"]), 0.2);
}

#[test]
fn bad_input_is_reported_with_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.jsonl", &rows(10, |i| i < 7));
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"id\": \"ex0\", \"pred\": 1, \"gold\": 0}\n{\"id\": \"ex1\", \"pred\": \"yes\", \"gold\": 1}\n",
    )
    .unwrap();
    let e = fails(&[
        "verify",
        "compare",
        "--a",
        s(&bad),
        "--b",
        s(&good),
        "--metric",
        "accuracy",
    ]);
    assert!(
        e.contains("bad.jsonl:2") && e.contains("\"pred\" must be a number or boolean"),
        "{e}"
    );
    let broken = dir.path().join("broken.jsonl");
    std::fs::write(&broken, "{\"id\": 1, \"pred\": 1, \"gold\": 1}\n{oops\n").unwrap();
    let e = fails(&[
        "verify",
        "compare",
        "--a",
        s(&broken),
        "--b",
        s(&good),
        "--metric",
        "accuracy",
    ]);
    assert!(
        e.contains("broken.jsonl:2") && e.contains("invalid JSON"),
        "{e}"
    );
    // id mismatch: B lacks ex9 and has ex10
    let mut r = rows(10, |i| i < 5);
    r[9].0 = "ex10".into();
    let other = write(dir.path(), "other.jsonl", &r);
    let e = fails(&[
        "verify",
        "compare",
        "--a",
        s(&good),
        "--b",
        s(&other),
        "--metric",
        "accuracy",
    ]);
    assert!(e.contains("\"ex9\"") && e.contains("\"ex10\""), "{e}");
    // gold mismatch
    let mut r = rows(10, |i| i < 5);
    r[3].2 = 1.0 - r[3].2;
    let other = write(dir.path(), "gold.jsonl", &r);
    let e = fails(&[
        "verify",
        "compare",
        "--a",
        s(&good),
        "--b",
        s(&other),
        "--metric",
        "accuracy",
    ]);
    assert!(e.contains("gold mismatch") && e.contains("\"ex3\""), "{e}");
    // unknown metric lists the valid ones
    let e = fails(&[
        "verify",
        "compare",
        "--a",
        s(&good),
        "--b",
        s(&good),
        "--metric",
        "bleu",
    ]);
    assert!(
        e.contains("bleu") && e.contains("accuracy, f1, mcc, pearson, spearman, f1_macro, f1a, em"),
        "{e}"
    );
    // McNemar is accuracy only; unknown tests are named
    let e = fails(&[
        "verify",
        "compare",
        "--a",
        s(&good),
        "--b",
        s(&good),
        "--metric",
        "f1",
        "--test",
        "mcnemar",
    ]);
    assert!(e.contains("accuracy only"), "{e}");
    let e = fails(&[
        "verify",
        "compare",
        "--a",
        s(&good),
        "--b",
        s(&good),
        "--metric",
        "f1",
        "--test",
        "t",
    ]);
    assert!(e.contains("bootstrap, permutation, mcnemar"), "{e}");
    // em needs groups
    let e = fails(&[
        "verify",
        "compare",
        "--a",
        s(&good),
        "--b",
        s(&good),
        "--metric",
        "em",
    ]);
    assert!(e.contains("group"), "{e}");
    // a missing file is named
    let e = fails(&[
        "verify",
        "compare",
        "--a",
        "/nonexistent/a.jsonl",
        "--b",
        s(&good),
        "--metric",
        "accuracy",
    ]);
    assert!(e.contains("/nonexistent/a.jsonl"), "{e}");
    // seeds: too few values, unknown test, a non-number
    let e = fails(&["verify", "seeds", "--a", "0.5", "--b", "0.4,0.6"]);
    assert!(e.contains("at least 2"), "{e}");
    let e = fails(&[
        "verify", "seeds", "--a", "0.5,0.6", "--b", "0.4,0.6", "--test", "z",
    ]);
    assert!(e.contains("welch, wilcoxon, aso"), "{e}");
    let e = fails(&["verify", "seeds", "--a", "0.5,x", "--b", "0.4,0.6"]);
    assert!(e.contains("x"), "{e}");
}

#[test]
fn grouped_outputs_numeric_ids_and_booleans() {
    let dir = tempfile::tempdir().unwrap();
    // 8 questions of 3 options; A gets questions 0..6 fully right, B questions 0..3
    let line = |q: usize, o: usize, right: bool| {
        let gold = (q + o).is_multiple_of(2);
        let pred = if right { gold } else { !gold };
        format!(
            "{{\"id\": {}, \"pred\": {pred}, \"gold\": {gold}, \"group\": \"q{q}\"}}\n",
            q * 10 + o
        )
    };
    let mut ta = String::new();
    let mut tb = String::new();
    for q in 0..8 {
        for o in 0..3 {
            ta += &line(q, o, q < 6 || o > 0);
            tb += &line(q, o, q < 3 || o > 0);
        }
    }
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    std::fs::write(&a, ta).unwrap();
    std::fs::write(&b, tb).unwrap();
    let v = json(&[
        "verify",
        "compare",
        "--a",
        s(&a),
        "--b",
        s(&b),
        "--metric",
        "em",
        "--resamples",
        "500",
    ]);
    assert_eq!(
        (f(&v["metric_a"]), f(&v["metric_b"])),
        (6.0 / 8.0, 3.0 / 8.0)
    );
    assert!((f(&v["delta"]) - 3.0 / 8.0).abs() < 1e-12);
    assert_eq!(v["n"], 24);
    let v = json(&[
        "verify",
        "compare",
        "--a",
        s(&a),
        "--b",
        s(&b),
        "--metric",
        "f1a",
        "--test",
        "permutation",
        "--resamples",
        "500",
    ]);
    assert_eq!(v["test"], "permutation");
    assert!(f(&v["delta"]) > 0.0);
}

#[test]
fn estimators_quick_on_synthetic_rows_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("study");
    let o = qattn(&[
        "verify",
        "estimators",
        "--quick",
        "--model",
        "synthetic",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(report.is_object());
    for f in [
        "report.md",
        "error_vs_s.svg",
        "error_vs_s.png",
        "time_vs_n.svg",
        "error_vs_noise.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(md.contains("stratified"), "{md}");

    // The same report decides variance and noise claims (no run records needed for them).
    let claims = dir.path().join("study.toml");
    std::fs::write(
        &claims,
        "[[variance_claim]]\nid = \"less variance\"\nestimator = \"stratified\"\n\
         claimed_reduction = 0.0\n\n[[noise_claim]]\nid = \"readout mitigation\"\n\
         system = \"stratified:S+readout:0.05:0.05+mitigate\"\n\
         baseline = \"stratified:S+readout:0.05:0.05\"\n",
    )
    .unwrap();
    let rep_dir = dir.path().join("claims");
    let o = qattn(&[
        "verify",
        "claims",
        "--claims",
        claims.to_str().unwrap(),
        "--estimators",
        out.join("report.json").to_str().unwrap(),
        "--output-dir",
        rep_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rep: Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = rep["study_results"].as_array().unwrap();
    // one variance result per S of the quick study (4 and 16), then the noise claim
    assert_eq!(r.len(), 3, "{rep}");
    assert_eq!(r[0]["id"], "less variance (S = 4)");
    assert_eq!(r[2]["system"], "stratified:16+readout:0.05:0.05+mitigate");
    for x in r {
        assert!(x["p_value"].is_number() && x["ci_low"].is_number(), "{x}");
        let v = x["verdict"].as_str().unwrap();
        assert!(["VERIFIED", "REFUTED", "INCONCLUSIVE"].contains(&v), "{x}");
    }
    let md = std::fs::read_to_string(rep_dir.join("claims-report.md")).unwrap();
    assert!(md.contains("## Claims about the estimators"), "{md}");
    // a file with run-record claims needs --records
    let e = fails(&[
        "verify",
        "claims",
        "--claims",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../benchmarks/claims/source-document.toml"
        ),
    ]);
    assert!(e.contains("--records"), "{e}");
}

#[test]
fn claims_on_hand_made_records_gives_verdicts_and_files() {
    let dir = tempfile::tempdir().unwrap();
    // Two systems × 2 seeds on 200 examples: "mc" is always right, "exact" on three in four.
    // With 2 seeds the interval uses t with 1 df, so the dev set must be large enough for a
    // claim of +90 points to be ruled out.
    for (att, seed) in [("mc", 1), ("mc", 2), ("exact", 1), ("exact", 2)] {
        let preds: Vec<Value> = (0..200)
            .map(|i| {
                let gold = i % 2;
                let pred = if att == "mc" || i % 4 < 3 {
                    gold
                } else {
                    1 - gold
                };
                serde_json::json!({"id": format!("e{i}"), "pred": pred, "gold": {"Class": gold}})
            })
            .collect();
        let rec = serde_json::json!({
            "task": "rte", "model": "m", "attention": att, "seed": seed,
            "training_args": {},
            "git_sha": null, "machine": {}, "dev_metrics": {}, "predictions": preds,
            "wall_seconds": {}, "train_tokens_per_second": 0.0, "peak_rss_mb": null,
            "train_examples": 0, "dev_examples": 200, "unix_time": 0
        });
        let d = dir.path().join(format!("runs/rte/{att}/seed-{seed}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("run.json"), rec.to_string()).unwrap();
    }
    let claims = dir.path().join("c.toml");
    std::fs::write(
        &claims,
        "[defaults]\nsystem = \"mc\"\nresamples = 500\n\n[[claim]]\nid = \"big\"\ntask = \"RTE\"\nmetric = \"accuracy\"\nmin_delta = 90.0\n\n[[claim]]\nid = \"none\"\ntask = \"qqp\"\nmetric = \"accuracy\"\n",
    )
    .unwrap();
    let out = dir.path().join("rep");
    let o = qattn(&[
        "verify",
        "claims",
        "--records",
        dir.path().join("runs").to_str().unwrap(),
        "--claims",
        claims.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rep: Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &rep["results"];
    // δ = +25 points exactly; a claim of ≥ 90 points is refuted, the missing task inconclusive.
    assert!((f(&r[0]["delta"]) - 0.25).abs() < 1e-12, "{}", r[0]);
    assert_eq!(r[0]["verdict"], "REFUTED");
    assert_eq!(r[1]["verdict"], "INCONCLUSIVE");
    assert!(out.join("claims-report.md").is_file() && out.join("claims-report.json").is_file());
    let e = fails(&[
        "verify",
        "claims",
        "--records",
        out.to_str().unwrap(),
        "--claims",
        claims.to_str().unwrap(),
    ]);
    assert!(e.contains("no run.json"), "{e}");
    // the same directory twice holds every run twice: refused, naming both files
    let runs = dir.path().join("runs");
    let e = fails(&[
        "verify",
        "claims",
        "--records",
        runs.to_str().unwrap(),
        "--records",
        runs.to_str().unwrap(),
        "--claims",
        claims.to_str().unwrap(),
    ]);
    assert!(
        e.contains("are the same run") && e.contains("seed-1"),
        "{e}"
    );
}
