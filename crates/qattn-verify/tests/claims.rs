//! The verdict machine on hand-made run records whose answer is known.

use qattn_glue::runner::{Prediction, PredictionRecord, RunRecord};
use qattn_glue::tasks::Label;
use qattn_train::TrainingArgs;
use qattn_verify::claims::{ClaimsFile, Verdict, evaluate, to_markdown};
use qattn_verify::stats::Resampler;
use std::collections::BTreeMap;

/// A run on `n` dev examples whose prediction is right with probability `acc` (seeded).
fn run(task: &str, attention: &str, seed: u64, n: usize, acc: f64, data_seed: u64) -> RunRecord {
    let mut rng = Resampler::new(data_seed * 1000 + seed);
    let predictions = (0..n)
        .map(|i| {
            let gold = i % 2;
            let right = rng.uniform() < acc;
            PredictionRecord {
                id: format!("ex-{i}"),
                pred: Prediction::Class(if right { gold } else { 1 - gold }),
                gold: Some(Label::Class(gold)),
            }
        })
        .collect();
    RunRecord {
        task: task.into(),
        model: "m".into(),
        attention: attention.into(),
        seed,
        training_args: TrainingArgs::default(),
        git_sha: None,
        git_dirty: None,
        machine: BTreeMap::new(),
        dev_metrics: BTreeMap::new(),
        predictions,
        wall_seconds: BTreeMap::new(),
        train_tokens_per_second: 0.0,
        peak_rss_mb: None,
        train_examples: 0,
        dev_examples: n,
        unix_time: 0,
    }
}

fn records(task: &str, acc_mc: f64, acc_exact: f64, n: usize) -> Vec<RunRecord> {
    let mut v = Vec::new();
    for seed in 1..=3 {
        v.push(run(task, "stratified:32", seed, n, acc_mc, 1));
        v.push(run(task, "exact", seed, n, acc_exact, 2));
    }
    v
}

fn claims(body: &str) -> ClaimsFile {
    let text = format!("[defaults]\nresamples = 1000\n\n{body}");
    ClaimsFile::parse(&text, "test.toml").unwrap()
}

const ONE: &str = r#"
[[claim]]
id = "t"
task = "sst2"
metric = "accuracy"
"#;

#[test]
fn a_large_real_advantage_is_verified() {
    let recs = records("sst2", 0.9, 0.6, 600);
    let file = claims(&format!("{ONE}min_delta = 10.0\n"));
    let r = &evaluate(&file, &recs).unwrap().results[0];
    assert_eq!(r.verdict, Verdict::Verified, "{}", r.reason);
    let delta = r.delta.unwrap();
    assert!((delta - 0.3).abs() < 0.05, "δ = {delta}");
    assert!(r.ci_low.unwrap() > 0.1 && r.p_adjusted.unwrap() < 0.01);
    // Every seed of the better system beats every seed of the other: Cliff's delta is 1.
    assert_eq!(r.cliffs_delta, Some(1.0));
    assert!(r.cohens_d.unwrap() > 3.0, "{:?}", r.cohens_d);
}

#[test]
fn a_claimed_advantage_that_is_absent_is_refuted() {
    // Both systems have the same accuracy; the claim says +13.1 points.
    let recs = records("cola", 0.7, 0.7, 600);
    let file = claims(
        "[[claim]]\nid = \"CoLA\"\ntask = \"CoLA\"\nmetric = \"mcc\"\nclaimed = 65.2\nclaimed_baseline = 52.1\n",
    );
    let r = &evaluate(&file, &recs).unwrap().results[0];
    assert_eq!(r.verdict, Verdict::Refuted, "{}", r.reason);
    assert!((r.margin - 0.131).abs() < 1e-12);
    assert!(r.ci_high.unwrap() < r.margin);
    assert!(
        r.ci_low.unwrap() < 0.0 && r.ci_high.unwrap() > 0.0,
        "no real difference"
    );
}

#[test]
fn a_small_claim_on_little_data_is_inconclusive() {
    let recs = records("sst2", 0.7, 0.7, 60);
    let file = claims(&format!("{ONE}min_delta = 1.0\n"));
    let r = &evaluate(&file, &recs).unwrap().results[0];
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    assert!(r.ci_low.unwrap() < r.margin && r.ci_high.unwrap() > r.margin);
    assert!(
        r.reason.contains("contains the claimed margin"),
        "{}",
        r.reason
    );
}

#[test]
fn missing_records_are_inconclusive_with_a_reason() {
    let recs = records("sst2", 0.7, 0.7, 50);
    let file = claims("[[claim]]\nid = \"q\"\ntask = \"qqp\"\nmetric = \"accuracy\"\n");
    let r = &evaluate(&file, &recs).unwrap().results[0];
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert!(r.reason.contains("no paired run records"), "{}", r.reason);
    assert!(r.p_value.is_none() && r.delta.is_none());
}

#[test]
fn holm_adjusts_across_claims_with_data() {
    let mut recs = records("sst2", 0.72, 0.7, 300);
    recs.extend(records("rte", 0.75, 0.7, 300));
    let file = claims(
        "[[claim]]\nid = \"a\"\ntask = \"sst2\"\nmetric = \"accuracy\"\n\
         [[claim]]\nid = \"b\"\ntask = \"rte\"\nmetric = \"accuracy\"\n\
         [[claim]]\nid = \"c\"\ntask = \"qqp\"\nmetric = \"accuracy\"\n",
    );
    let rep = evaluate(&file, &recs).unwrap();
    let p: Vec<f64> = rep.results[..2]
        .iter()
        .map(|r| r.p_value.unwrap())
        .collect();
    let adj: Vec<f64> = rep.results[..2]
        .iter()
        .map(|r| r.p_adjusted.unwrap())
        .collect();
    let want = qattn_verify::stats::holm(&p);
    assert_eq!(adj, want, "Holm over the two claims with data, not three");
    assert!(adj.iter().zip(&p).all(|(a, p)| a >= p));
    assert!(rep.results[2].p_adjusted.is_none());
    let md = to_markdown(&rep, "cmd");
    assert!(md.contains("| a | sst2 | accuracy |") && md.contains("**INCONCLUSIVE**"));
}

#[test]
fn bad_claims_files_name_the_problem() {
    let err = |body: &str| ClaimsFile::parse(body, "c.toml").unwrap_err().to_string();
    assert!(err("").contains("no [[claim]]"));
    let e = err("[[claim]]\nid = \"x\"\ntask = \"cola\"\nmetric = \"bleu\"\n");
    assert!(e.contains("claim #1") && e.contains("bleu"), "{e}");
    let e = err(
        "[[claim]]\nid = \"x\"\ntask = \"cola\"\nmetric = \"mcc\"\n[[claim]]\nid = \"x\"\ntask = \"rte\"\nmetric = \"accuracy\"\n",
    );
    assert!(e.contains("duplicate id"), "{e}");
    let e = err("[[claim]]\nid = \"x\"\ntask = \"cola\"\nmetric = \"mcc\"\nmargin = 3\n");
    assert!(e.contains("margin"), "{e}");
    let e =
        err("[defaults]\nalpha = 1.5\n[[claim]]\nid = \"x\"\ntask = \"cola\"\nmetric = \"mcc\"\n");
    assert!(e.contains("alpha"), "{e}");
}

#[test]
fn runs_on_different_dev_sets_are_an_error() {
    let mut recs = records("sst2", 0.7, 0.7, 50);
    recs[1] = run("sst2", "exact", 1, 40, 0.7, 2);
    let err = evaluate(&claims(ONE), &recs).unwrap_err().to_string();
    assert!(err.contains("different dev examples"), "{err}");
}

#[test]
fn the_shipped_source_document_claims_parse() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../benchmarks/claims/source-document.toml"
    );
    let file = ClaimsFile::read(std::path::Path::new(path)).unwrap();
    assert_eq!(file.claims.len(), 9);
    let margins: Vec<f64> = file.claims.iter().map(|c| c.margin_points()).collect();
    let want = [13.1, 0.5, 2.5, 1.5, 0.6, 2.2, 1.4, 8.6, 6.3];
    for (m, w) in margins.iter().zip(want) {
        assert!((m - w).abs() < 1e-9, "{margins:?}");
    }
}
