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
                group: None,
                entity: None,
                answers: None,
            }
        })
        .collect();
    RunRecord {
        task: task.into(),
        model: "m".into(),
        attention: attention.into(),
        seed,
        pooling: Default::default(),
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
    let recs = records("cola", 0.77, 0.77, 2000);
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
    let recs = records("sst2", 0.7, 0.7, 200);
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
fn runs_on_different_dev_sets_make_that_claim_inconclusive_not_the_whole_evaluation() {
    let mut recs = records("sst2", 0.7, 0.7, 50);
    recs[1] = run("sst2", "exact", 1, 40, 0.7, 2);
    recs.extend(records("rte", 0.9, 0.6, 600));
    let file = claims(&format!(
        "{ONE}\n[[claim]]\nid = \"r\"\ntask = \"rte\"\nmetric = \"accuracy\"\n"
    ));
    let rep = evaluate(&file, &recs).unwrap();
    let r = &rep.results[0];
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert!(r.reason.contains("different dev examples"), "{}", r.reason);
    assert_eq!(
        rep.results[1].verdict,
        Verdict::Verified,
        "{}",
        rep.results[1].reason
    );
}

#[test]
fn the_shipped_source_document_claims_parse() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../benchmarks/claims/source-document.toml"
    );
    let file = ClaimsFile::read(std::path::Path::new(path)).unwrap();
    // 9 GLUE claims, then 10 long-range claims (4 systems at 64 and 128 words, 2 at 4096)
    assert_eq!(file.claims.len(), 19);
    let margins: Vec<f64> = file.claims.iter().map(|c| c.margin_points()).collect();
    let want = [13.1, 0.5, 2.5, 1.5, 0.6, 2.2, 1.4, 8.6, 6.3];
    for (m, w) in margins.iter().zip(want) {
        assert!((m - w).abs() < 1e-9, "{margins:?}");
    }
    assert!(margins[9..].iter().all(|&m| m == 0.0), "{margins:?}");
    assert!(
        file.claims[9..]
            .iter()
            .all(|c| c.task.starts_with("synthetic-majority-"))
    );
    assert_eq!(file.variance_claims.len(), 1);
    assert_eq!(file.variance_claims[0].claimed_reduction, 0.40);
    // mitigation of readout and damping at three levels each, for both samplers
    assert_eq!(file.noise_claims.len(), 12);
}

/// Records whose runs all give the same predictions `right[i]` (per example) for every seed.
fn fixed(task: &str, attention: &str, seeds: u64, right: &[bool]) -> Vec<RunRecord> {
    (1..=seeds)
        .map(|seed| {
            let mut r = run(task, attention, seed, right.len(), 1.0, 0);
            for (p, &ok) in r.predictions.iter_mut().zip(right) {
                let Some(Label::Class(g)) = p.gold else {
                    unreachable!()
                };
                p.pred = Prediction::Class(if ok { g } else { 1 - g });
            }
            r
        })
        .collect()
}

#[test]
fn identical_outputs_are_inconclusive_not_refuted() {
    // Both systems make the same predictions on every seed: δ = 0 with no variation at all.
    let right: Vec<bool> = (0..300).map(|i| i % 10 < 8).collect();
    let mut recs = fixed("sst2", "stratified:32", 3, &right);
    recs.extend(fixed("sst2", "exact", 3, &right));
    let r = &evaluate(&claims(ONE), &recs).unwrap().results[0];
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    assert_eq!(r.delta, Some(0.0));
    assert!(r.ci_low.is_none() && r.p_value.is_none());
    assert!(r.reason.contains("zero-width interval"), "{}", r.reason);
}

#[test]
fn runs_at_the_metrics_bound_are_flagged_not_read_as_evidence() {
    // Both systems right on every example and seed: the old default's [0, 0] "verdict".
    let all = vec![true; 200];
    let mut recs = fixed("sst2", "stratified:32", 3, &all);
    recs.extend(fixed("sst2", "exact", 3, &all));
    let r = &evaluate(&claims(ONE), &recs).unwrap().results[0];
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    assert_eq!(r.system.bound.as_deref(), Some("ceiling"));
    assert_eq!(r.baseline.bound.as_deref(), Some("ceiling"));
    assert!(
        r.reason.contains("at the metric's ceiling") && r.reason.contains("not read as evidence"),
        "{}",
        r.reason
    );
    // Only the baseline at the ceiling, the system below it on varying examples: the verdict
    // rule decides (the system is worse) and the bound is still flagged.
    let mut recs = fixed("sst2", "exact", 3, &all);
    for seed in 1..=3u64 {
        let right: Vec<bool> = (0..200)
            .map(|i| !(i + seed as usize).is_multiple_of(5))
            .collect();
        recs.extend(
            fixed("sst2", "stratified:32", 1, &right)
                .into_iter()
                .map(|mut r| {
                    r.seed = seed;
                    r
                }),
        );
    }
    let r = &evaluate(&claims(ONE), &recs).unwrap().results[0];
    assert_eq!(r.baseline.bound.as_deref(), Some("ceiling"));
    assert_eq!(r.system.bound, None);
    assert!(r.reason.contains("every run of exact"), "{}", r.reason);
    // A floor: every prediction wrong.
    let none = vec![false; 200];
    let mut recs = fixed("sst2", "stratified:32", 3, &none);
    recs.extend(fixed("sst2", "exact", 3, &right_80()));
    let r = &evaluate(&claims(ONE), &recs).unwrap().results[0];
    assert_eq!(r.system.bound.as_deref(), Some("floor"));
    assert_eq!(r.baseline.bound, None);
}

fn right_80() -> Vec<bool> {
    (0..200).map(|i| i % 10 < 8).collect()
}

#[test]
fn one_seed_is_inconclusive_whatever_the_difference() {
    let recs: Vec<RunRecord> = vec![
        run("sst2", "stratified:32", 1, 2000, 0.95, 1),
        run("sst2", "exact", 1, 2000, 0.6, 2),
    ];
    let r = &evaluate(&claims(ONE), &recs).unwrap().results[0];
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    assert!(
        r.reason
            .contains("seed-to-seed variation cannot be estimated"),
        "{}",
        r.reason
    );
    assert!(r.delta.unwrap() > 0.3, "δ is still reported");
}

#[test]
fn a_baseline_at_chance_cannot_decide_a_claim() {
    // The baseline predicts at chance (50% on balanced labels): the claim is undecidable even
    // though the other system is far better.
    let recs = records("rte", 0.8, 0.5, 400);
    let r = &evaluate(&claims(&ONE.replace("sst2", "rte")), &recs)
        .unwrap()
        .results[0];
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    assert!(
        r.reason
            .contains("did not clearly beat the trivial predictor"),
        "{}",
        r.reason
    );
    assert_eq!(r.baseline.learned, Some(false));
    assert_eq!(r.system.learned, Some(true));
    assert!((r.trivial.unwrap() - 0.5).abs() < 1e-12);
    // A system at chance against a baseline that learned is simply worse: REFUTED.
    let recs = records("rte", 0.5, 0.8, 400);
    let r = &evaluate(&claims(&ONE.replace("sst2", "rte")), &recs)
        .unwrap()
        .results[0];
    assert_eq!(r.verdict, Verdict::Refuted, "{}", r.reason);
    assert!(r.ci_high.unwrap() < 0.0);
    assert!(
        r.reason.contains("did not clearly beat"),
        "noted: {}",
        r.reason
    );
}

#[test]
fn a_baseline_far_below_the_claimed_baseline_is_inconclusive() {
    let recs = records("sst2", 0.8, 0.7, 600);
    let file = claims(&format!("{ONE}claimed = 95.0\nclaimed_baseline = 92.0\n"));
    let r = &evaluate(&file, &recs).unwrap().results[0];
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.reason);
    assert!(
        r.reason.contains("below the claim's baseline"),
        "{}",
        r.reason
    );
    // Within the tolerance the claim is decided.
    let file = claims(&format!("{ONE}claimed = 75.0\nclaimed_baseline = 72.0\n"));
    let r = &evaluate(&file, &recs).unwrap().results[0];
    assert!(
        !r.reason.contains("below the claim's baseline"),
        "{}",
        r.reason
    );
}

#[test]
fn welch_mode_uses_the_claims_level() {
    let recs = records("sst2", 0.75, 0.7, 300);
    let at = |alpha: f64| {
        let file = ClaimsFile::parse(
            &format!("[defaults]\ntest = \"welch\"\nalpha = {alpha}\n{ONE}"),
            "t.toml",
        )
        .unwrap();
        let r = evaluate(&file, &recs).unwrap().results.remove(0);
        let w = qattn_verify::stats::welch_with_level(
            &r.system.scores,
            &r.baseline.scores,
            1.0 - alpha,
        )
        .unwrap();
        assert_eq!((r.ci_low, r.ci_high), (w.ci_low, w.ci_high));
        r.ci_high.unwrap() - r.ci_low.unwrap()
    };
    assert!(
        at(0.2) < at(0.05),
        "an 80% interval is narrower than a 95% one"
    );
}

#[test]
fn margin_claims_report_power_refutation_chance_and_mde() {
    let recs = records("sst2", 0.72, 0.7, 400);
    let file = claims(&format!("{ONE}min_delta = 5.0\n"));
    let r = &evaluate(&file, &recs).unwrap().results[0];
    let (power, refute, mde) = (r.power.unwrap(), r.refute_power.unwrap(), r.mde.unwrap());
    assert!(power > 0.0 && power < 1.0 && refute > 0.0 && refute < 1.0);
    // VERIFIED needs the whole interval above 5 points: the detectable effect lies above it.
    assert!(mde > 0.05 + r.se.unwrap(), "mde {mde}");
    // More seeds raise the power: the seeds needed, if any, exceed these 3 or power is ≥ 80%.
    match r.seeds_needed {
        Some(n) => assert!(n > 3 || power >= 0.8, "{n} {power}"),
        None => assert!(power < 0.8),
    }
    let md = to_markdown(&evaluate(&file, &recs).unwrap(), "cmd");
    assert!(md.contains("| MDE |"), "{md}");
}

/// MultiRC-like records: `q` questions of 3 answer options each, the group on every option.
fn grouped(attention: &str, seed: u64, q: usize, acc: f64, data_seed: u64) -> RunRecord {
    let mut r = run("multirc", attention, seed, 3 * q, acc, data_seed);
    for (i, p) in r.predictions.iter_mut().enumerate() {
        p.group = Some(format!("{}-{}", i / 3 / 5, i / 3));
    }
    r
}

#[test]
fn em_claims_use_the_question_groups_the_records_carry() {
    let mut recs = Vec::new();
    for seed in 1..=3 {
        recs.push(grouped("stratified:32", seed, 300, 0.95, 1));
        recs.push(grouped("exact", seed, 300, 0.8, 2));
    }
    let body = "[[claim]]\nid = \"em\"\ntask = \"multirc\"\nmetric = \"em\"\n\
                [[claim]]\nid = \"f1a\"\ntask = \"multirc\"\nmetric = \"f1a\"\n";
    let rep = evaluate(&claims(body), &recs).unwrap();
    for r in &rep.results {
        assert_eq!(r.verdict, Verdict::Verified, "{}: {}", r.claim.id, r.reason);
    }
    // EM per question: (0.95³ ≈ 0.86) vs (0.8³ ≈ 0.51).
    let d = rep.results[0].delta.unwrap();
    assert!(
        (d - (0.95f64.powi(3) - 0.8f64.powi(3))).abs() < 0.06,
        "δ = {d}"
    );
    // Without groups the em claim cannot be tested, and says so without aborting the rest.
    for r in &mut recs {
        for p in &mut r.predictions {
            p.group = None;
        }
    }
    let rep = evaluate(&claims(body), &recs).unwrap();
    assert_eq!(rep.results[0].verdict, Verdict::Inconclusive);
    assert!(
        rep.results[0].reason.contains("group"),
        "{}",
        rep.results[0].reason
    );
    assert_eq!(rep.results[1].verdict, Verdict::Verified);
}

/// ReCoRD-like records: `q` queries with 4 candidate entities each; the gold answer is
/// candidate 0 ("Alice Smith"); a run picks it with probability `acc`, else candidate 1
/// ("Alice Jones", token F1 0.5 against the answer) .
fn record_run(attention: &str, seed: u64, q: usize, acc: f64, data_seed: u64) -> RunRecord {
    let mut rng = Resampler::new(data_seed * 1000 + seed);
    let names = ["Alice Smith", "Alice Jones", "Bob", "Carol"];
    let mut r = run("record", attention, seed, 4 * q, 1.0, 0);
    let picks: Vec<usize> = (0..q).map(|_| usize::from(rng.uniform() >= acc)).collect();
    for (i, p) in r.predictions.iter_mut().enumerate() {
        let (query, cand) = (i / 4, i % 4);
        p.group = Some(format!("q{query}"));
        p.entity = Some(names[cand].into());
        p.answers = Some(vec!["Alice Smith".into()]);
        p.gold = Some(Label::Class(usize::from(cand == 0)));
        p.pred = Prediction::Class(usize::from(cand == picks[query]));
    }
    r
}

#[test]
fn record_f1_is_the_official_max_over_answers_token_f1() {
    let mut recs = Vec::new();
    for seed in 1..=3 {
        recs.push(record_run("stratified:32", seed, 400, 0.9, 1));
        recs.push(record_run("exact", seed, 400, 0.5, 2));
    }
    let body = "[[claim]]\nid = \"f1\"\ntask = \"record\"\nmetric = \"f1\"\n\
                [[claim]]\nid = \"em\"\ntask = \"record\"\nmetric = \"em\"\n";
    let rep = evaluate(&claims(body), &recs).unwrap();
    let (f1, em) = (&rep.results[0], &rep.results[1]);
    // A wrong pick still earns token F1 0.5: F1 = acc + (1 − acc)/2, EM = acc.
    let want_f1 = (0.9 + 0.05) - (0.5 + 0.25);
    assert!((f1.delta.unwrap() - want_f1).abs() < 0.05, "{:?}", f1.delta);
    assert!((em.delta.unwrap() - 0.4).abs() < 0.06, "{:?}", em.delta);
    assert!(
        f1.system.mean.unwrap() > 0.9,
        "per query, not a binary F1 over candidates"
    );
    assert_eq!(f1.verdict, Verdict::Verified, "{}", f1.reason);
}

mod calibration {
    use qattn_verify::calibration::{Settings, clopper_pearson, run};

    fn check_null(seed_sd: f64, example_sd: f64) {
        let s = Settings {
            datasets: 400,
            seeds: vec![2, 3, 5],
            seed_sd,
            example_sd,
            resamples: 200,
            seed: 7,
            ..Settings::default()
        };
        let t = run(&s, |_, _| {}).unwrap();
        for r in &t.rows {
            assert_eq!(r.datasets, 400);
            // The false-VERIFIED rate is at most α/2 within its binomial interval.
            assert!(
                r.verified_ci.0 <= t.nominal,
                "K = {}: {} of {} VERIFIED under the null (CI {:?}) exceeds α/2 = {} \
                 (seed sd {seed_sd}, example sd {example_sd})",
                r.seeds,
                r.verified,
                r.datasets,
                r.verified_ci,
                t.nominal
            );
            // The other tail: "A is worse" (REFUTED for a bare claim) keeps its level too.
            let (lo, _) = clopper_pearson(r.refuted, r.datasets);
            assert!(
                lo <= t.nominal,
                "K = {}: {} REFUTED under the null",
                r.seeds,
                r.refuted
            );
        }
    }

    #[test]
    fn false_verified_rate_is_nominal_when_seed_variation_dominates() {
        check_null(0.08, 0.0);
    }

    #[test]
    fn false_verified_rate_is_nominal_when_the_dev_set_dominates() {
        check_null(0.005, 0.3);
    }

    #[test]
    fn a_true_advantage_is_found_as_often_as_predicted() {
        let s = Settings {
            datasets: 200,
            seeds: vec![5],
            seed_sd: 0.02,
            delta: 0.08,
            resamples: 200,
            seed: 3,
            ..Settings::default()
        };
        let t = run(&s, |_, _| {}).unwrap();
        let r = &t.rows[0];
        let predicted = r.predicted_verified.unwrap();
        assert!(r.verified_rate > 0.5, "power {:?}", r);
        assert!(
            (r.verified_rate - predicted).abs() < 0.15,
            "measured {} vs predicted {predicted}",
            r.verified_rate
        );
        assert_eq!(r.refuted, 0);
    }
}

/// An estimator study report with the stratified ratio `ratio` (95% interval `lo..hi`,
/// bootstrap p 0.001) at S = 16 over 40 clusters, and a noise sweep at S = 16 over 4 seeds in
/// which mitigation of readout noise lowers the error on every seed (by 0.025–0.03) and mitigation of damping
/// raises it.
fn study(ratio: f64, lo: f64, hi: f64) -> qattn_verify::claims::StudyEvidence {
    let est = |v: f64, l: f64, h: f64| serde_json::json!({"value": v, "boot_mean": v, "boot_se": 0.01, "ci_low": l, "ci_high": h});
    let point = |spec: &str, errs: [f64; 4]| {
        serde_json::json!({"base": "stratified", "channel": "readout", "level": 0.05,
            "mitigate": spec.contains("mitigate"), "spec": spec,
            "rel_error": errs.iter().sum::<f64>() / 4.0, "se": 0.001, "per_seed": errs})
    };
    serde_json::from_value(serde_json::json!({
        "model": "m", "quick": false, "git_sha": "abc", "git_dirty": false,
        "variance": {"rows": 400, "clusters": 40, "replications": 8, "bootstrap": 1000,
            "by_shots": [{"shots": 16, "multinomial_vs_theory": est(1.0, 0.99, 1.01),
                "estimators": [
                    {"family": "multinomial", "spec": "multinomial:16", "mean_shots": 16.0,
                     "mse": 1.0, "rel_rmse": est(0.5, 0.4, 0.6), "ratio": est(1.0, 1.0, 1.0),
                     "p_value": null},
                    {"family": "stratified", "spec": "stratified:16", "mean_shots": 16.0,
                     "mse": ratio, "rel_rmse": est(0.3, 0.2, 0.4), "ratio": est(ratio, lo, hi),
                     "p_value": 0.001}]}],
            "claim": []},
        "noise": {"shots": 16, "seeds": 4, "points": [
            point("stratified:16+readout:0.05:0.05", [0.47, 0.46, 0.48, 0.465]),
            point("stratified:16+readout:0.05:0.05+mitigate", [0.44, 0.435, 0.45, 0.44]),
            point("stratified:16+damp:0.1", [0.36, 0.37, 0.365, 0.366]),
            point("stratified:16+damp:0.1+mitigate", [0.37, 0.38, 0.376, 0.372])]}
    }))
    .unwrap()
}

const STUDY_CLAIMS: &str = r#"
[[variance_claim]]
id = "40% less variance"
estimator = "stratified"
claimed_reduction = 0.40
text = "40% reduction in sampling variance"

[[noise_claim]]
id = "readout mitigation"
system = "stratified:S+readout:0.05:0.05+mitigate"
baseline = "stratified:S+readout:0.05:0.05"

[[noise_claim]]
id = "damping mitigation"
system = "stratified:S+damp:0.1+mitigate"
baseline = "stratified:S+damp:0.1"

[[noise_claim]]
id = "not in the sweep"
system = "stratified:S+readout:0.2:0.2+mitigate"
baseline = "stratified:S"
"#;

#[test]
fn variance_and_noise_claims_are_decided_from_the_estimator_study() {
    use qattn_verify::claims::evaluate_with_study;
    let file = claims(STUDY_CLAIMS);
    let verdict_of = |ratio: f64, lo: f64, hi: f64| {
        let rep = evaluate_with_study(&file, &[], Some(&study(ratio, lo, hi))).unwrap();
        assert!(rep.results.is_empty());
        assert_eq!(rep.study_results.len(), 4);
        rep
    };
    // ratio 0.35 [0.33, 0.37]: a 63–67% reduction, at least the claimed 40%
    let rep = verdict_of(0.35, 0.33, 0.37);
    let v = &rep.study_results[0];
    assert_eq!(v.id, "40% less variance (S = 16)");
    assert_eq!(v.verdict, Verdict::Verified, "{}", v.reason);
    assert!((v.delta.unwrap() - 0.65).abs() < 1e-12);
    assert!((v.ci_low.unwrap() - 0.63).abs() < 1e-12 && (v.ci_high.unwrap() - 0.67).abs() < 1e-12);
    assert_eq!((v.n, v.unit.as_str()), (40, "clusters"));
    // ratio 0.70 [0.68, 0.72]: less than 40%, refuted; [0.55, 0.65] straddles 0.60
    assert_eq!(
        verdict_of(0.70, 0.68, 0.72).study_results[0].verdict,
        Verdict::Refuted
    );
    assert_eq!(
        verdict_of(0.60, 0.55, 0.65).study_results[0].verdict,
        Verdict::Inconclusive
    );
    // readout mitigation lowers the error on every seed (mean 0.0275): verified
    let r = &rep.study_results[1];
    assert_eq!(r.system, "stratified:16+readout:0.05:0.05+mitigate");
    assert_eq!(r.verdict, Verdict::Verified, "{}", r.reason);
    assert!((r.delta.unwrap() - 0.0275).abs() < 1e-12, "{:?}", r.delta);
    assert_eq!((r.n, r.unit.as_str()), (4, "seeds"));
    // damping mitigation raises it on every seed: refuted
    let r = &rep.study_results[2];
    assert_eq!(r.verdict, Verdict::Refuted, "{}", r.reason);
    assert!(r.delta.unwrap() < 0.0 && r.ci_high.unwrap() < 0.0);
    // a setting the sweep did not run is named
    let r = &rep.study_results[3];
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert!(
        r.reason.contains("stratified:16+readout:0.2:0.2+mitigate"),
        "{}",
        r.reason
    );
    assert!(
        r.reason.contains("no setting stratified:16"),
        "{}",
        r.reason
    );
    // Holm runs over the three claims with a p-value: every adjusted p ≥ its raw p
    for r in &rep.study_results[..3] {
        assert!(r.p_adjusted.unwrap() >= r.p_value.unwrap());
    }
    let md = to_markdown(&rep, "cmd");
    assert!(md.contains("## Claims about the estimators"), "{md}");
    assert!(md.contains("40% reduction in sampling variance"), "{md}");
    // without a study every such claim is inconclusive and says what is missing
    let rep = evaluate_with_study(&file, &[], None).unwrap();
    for r in &rep.study_results {
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert!(r.reason.contains("--estimators"), "{}", r.reason);
    }
}

#[test]
fn study_claims_with_bad_fields_name_the_problem() {
    let err = |body: &str| {
        ClaimsFile::parse(body, "x.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = err(
        "[[variance_claim]]\nid = \"v\"\nestimator = \"multinomial\"\nclaimed_reduction = 0.4\n",
    );
    assert!(
        e.contains("variance_claim #1") && e.contains("multinomial"),
        "{e}"
    );
    let e = err(
        "[[variance_claim]]\nid = \"v\"\nestimator = \"stratified\"\nclaimed_reduction = 1.5\n",
    );
    assert!(e.contains("claimed_reduction"), "{e}");
    let e = err(
        "[[noise_claim]]\nid = \"n\"\nsystem = \"a\"\nbaseline = \"b\"\n[[noise_claim]]\nid = \"n\"\nsystem = \"a\"\nbaseline = \"b\"\n",
    );
    assert!(e.contains("duplicate"), "{e}");
    assert!(err("[defaults]\nalpha = 0.05\n").contains("no [[claim]]"));
}
