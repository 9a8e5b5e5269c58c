//! qattn-verify's statistics against reference values from SciPy, statsmodels, scikit-learn
//! and deep-significance (`tests/fixtures/stats.json`, written by
//! `tests/fixtures/make_stats_fixtures.py`; library versions in its `generator` entry), hand
//! computations, and calibration under simulated null hypotheses.
//!
//! Tolerances: 1e-9 relative (1e-12 absolute near 0) for every deterministic reference value;
//! ASO's `eps_min` is Monte-Carlo on both sides (see `aso_matches_deepsig`).

use qattn_glue::metrics as glue;
use qattn_verify::Error;
use qattn_verify::stats::paired::{mcnemar_counts, mcnemar_p};
use qattn_verify::stats::seeds::violation_ratio;
use qattn_verify::stats::{
    Correction, Metric, Outputs, PairedTest, Resampler, align, aso, benjamini_hochberg,
    bootstrap_diff_ci, cliffs_delta, cohens_d, holm, mcnemar, paired_bootstrap, paired_test,
    percentile_interval, permutation_test, seeds_needed, welch, welch_power, welch_with_level,
    wilcoxon,
};
use serde_json::Value;
use statrs::distribution::{Binomial, Discrete, DiscreteCDF};

fn fixtures() -> Value {
    serde_json::from_str(include_str!("fixtures/stats.json")).unwrap()
}

fn cases(name: &str) -> Vec<Value> {
    let v = fixtures()[name].as_array().unwrap().clone();
    assert!(!v.is_empty(), "no {name} cases");
    v
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn indices(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

/// `actual` within 1e-9 relative (1e-12 absolute) of `expected`.
fn close(actual: f64, expected: f64, what: &str) {
    let tol = 1e-9 * expected.abs() + 1e-12;
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: got {actual}, expected {expected} (diff {:e})",
        (actual - expected).abs()
    );
}

fn err_msg<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn outputs(pred: Vec<f64>, gold: Vec<f64>, group: Option<Vec<String>>) -> Outputs {
    Outputs {
        ids: (0..pred.len()).map(|i| format!("e{i}")).collect(),
        pred,
        gold,
        group,
    }
}

// --- reference values ------------------------------------------------------------------------

#[test]
fn mcnemar_matches_statsmodels() {
    for c in cases("mcnemar") {
        let [b00, b01, b10, b11] = ["b00", "b01", "b10", "b11"].map(|k| c[k].as_u64().unwrap());
        // gold all 1; a system is right when pred = 1
        let mut pa = Vec::new();
        let mut pb = Vec::new();
        for (n, ra, rb) in [
            (b00, false, false),
            (b01, true, false),
            (b10, false, true),
            (b11, true, true),
        ] {
            for _ in 0..n {
                pa.push(f64::from(u8::from(ra)));
                pb.push(f64::from(u8::from(rb)));
            }
        }
        let n = pa.len();
        let a = outputs(pa, vec![1.0; n], None);
        let b = outputs(pb, vec![1.0; n], None);
        assert_eq!(mcnemar_counts(&a, &b).unwrap(), (b01, b10));
        let r = paired_test(PairedTest::Mcnemar, &a, &b, Metric::Accuracy, 200, 0, 0.95).unwrap();
        let what = format!("mcnemar {b00},{b01},{b10},{b11}");
        close(r.statistic.unwrap(), f(&c["statistic"]), &what);
        close(r.p_value, f(&c["pvalue"]), &what);
        assert_eq!(r.test, "mcnemar");
        assert_eq!(r.n, n);
        close(r.delta, (b01 as f64 - b10 as f64) / n as f64, &what);
        // the exact branch's statistic is min(b01, b10), the chi2 branch's is not (here)
        if c["exact"].as_bool().unwrap() {
            assert_eq!(r.statistic.unwrap(), b01.min(b10) as f64, "{what}");
        }
        assert!(r.ci_low <= r.delta && r.delta <= r.ci_high, "{what}: {r:?}");
    }
}

#[test]
fn wilcoxon_matches_scipy_auto() {
    let mut methods = std::collections::BTreeSet::new();
    for (k, c) in cases("wilcoxon").iter().enumerate() {
        let (a, b) = (floats(&c["a"]), floats(&c["b"]));
        let r = wilcoxon(&a, &b).unwrap();
        let what = format!("wilcoxon case {k}");
        close(r.statistic, f(&c["statistic"]), &what);
        close(r.p_value, f(&c["pvalue"]), &what);
        assert_eq!(r.method.as_deref(), c["method"].as_str(), "{what}: method");
        methods.insert(r.method.unwrap());
        close(
            r.delta,
            a.iter().sum::<f64>() / a.len() as f64 - b.iter().sum::<f64>() / b.len() as f64,
            &what,
        );
    }
    // the fixture exercises all three branches of scipy's method="auto"
    assert_eq!(methods.len(), 3, "{methods:?}");
}

#[test]
fn wilcoxon_interval_by_hand_for_five_differences() {
    // d = 1..5: the Walsh averages run from 1 to 5 with median 3. With n = 5 the smallest
    // two-sided tail of the signed-rank statistic is 2/32, so the best achievable level is
    // 1 − 2/32 = 0.9375 and the interval is [min d, max d].
    let a = [2.0, 4.0, 6.0, 8.0, 10.0];
    let b = [1.0, 2.0, 3.0, 4.0, 5.0];
    let r = wilcoxon(&a, &b).unwrap();
    assert_eq!(r.estimate, Some(3.0));
    assert_eq!((r.ci_low, r.ci_high), (Some(1.0), Some(5.0)));
    close(r.ci_level.unwrap(), 1.0 - 2.0 / 32.0, "achieved level");
    // n = 10 reaches 95%: k = 9 (P(V ≤ 8) = 25/1024 < 0.025 ≤ P(V ≤ 9) = 33/1024), achieved
    // level 1 − 50/1024
    let a: Vec<f64> = (1..=10).map(|i| f64::from(i * i)).collect();
    let r = wilcoxon(&a, &[0.0; 10]).unwrap();
    close(r.ci_level.unwrap(), 1.0 - 50.0 / 1024.0, "n = 10 level");
    let a = &a;
    let mut walsh: Vec<f64> = (0..10)
        .flat_map(|i| (i..10).map(move |j| 0.5 * (a[i] + a[j])))
        .collect();
    walsh.sort_by(f64::total_cmp);
    assert_eq!((r.ci_low, r.ci_high), (Some(walsh[8]), Some(walsh[55 - 9])));
}

#[test]
fn wilcoxon_interval_inverts_the_exact_test() {
    // The exact interval is the set of shifts θ whose test of d − θ does not reject at the
    // achieved level: just outside either end it rejects, just inside it does not.
    let mut rng = Resampler::new(7);
    for n in [6usize, 9, 14, 20] {
        let d: Vec<f64> = (0..n).map(|_| rng.uniform() * 4.0 - 1.0).collect();
        let r = wilcoxon(&d, &vec![0.0; n]).unwrap();
        assert_eq!(r.method.as_deref(), Some("exact"), "n = {n}");
        let (lo, hi, level) = (r.ci_low.unwrap(), r.ci_high.unwrap(), r.ci_level.unwrap());
        assert!(level >= 0.95 || n < 7, "n = {n}: level {level}");
        assert!(
            lo < r.estimate.unwrap() && r.estimate.unwrap() < hi,
            "n = {n}"
        );
        let p_at = |theta: f64| {
            let shifted: Vec<f64> = d.iter().map(|x| x - theta).collect();
            wilcoxon(&shifted, &vec![0.0; n]).unwrap().p_value
        };
        let alpha = 1.0 - level;
        let eps = 1e-9;
        for (inside, outside) in [(lo + eps, lo - eps), (hi - eps, hi + eps)] {
            assert!(p_at(inside) > alpha + 1e-12, "n = {n}: θ = {inside} inside");
            assert!(
                p_at(outside) <= alpha + 1e-12,
                "n = {n}: θ = {outside} outside"
            );
        }
    }
}

#[test]
fn wilcoxon_normal_interval_is_close_to_the_exact_one() {
    // n = 45 without ties takes the exact branch; a tied copy (one value repeated) takes the
    // normal approximation. Their ends lie within a few Walsh averages of each other.
    let mut rng = Resampler::new(3);
    let d: Vec<f64> = (0..45).map(|_| rng.uniform() - 0.3).collect();
    let exact = wilcoxon(&d, &[0.0; 45]).unwrap();
    let mut tied = d.clone();
    tied[1] = tied[0];
    let approx = wilcoxon(&tied, &[0.0; 45]).unwrap();
    assert_eq!(exact.method.as_deref(), Some("exact"));
    assert_eq!(approx.ci_level, Some(0.95));
    let width = exact.ci_high.unwrap() - exact.ci_low.unwrap();
    assert!((exact.ci_low.unwrap() - approx.ci_low.unwrap()).abs() < 0.1 * width);
    assert!((exact.ci_high.unwrap() - approx.ci_high.unwrap()).abs() < 0.1 * width);
}

#[test]
fn welch_matches_scipy() {
    for (k, c) in cases("welch").iter().enumerate() {
        let r = welch_with_level(&floats(&c["a"]), &floats(&c["b"]), f(&c["level"])).unwrap();
        let what = format!("welch case {k}");
        close(r.statistic, f(&c["statistic"]), &what);
        close(r.p_value, f(&c["pvalue"]), &what);
        close(r.df.unwrap(), f(&c["df"]), &what);
        close(r.ci_low.unwrap(), f(&c["ci_low"]), &what);
        close(r.ci_high.unwrap(), f(&c["ci_high"]), &what);
        assert_eq!(r.test, "welch");
    }
}

#[test]
fn holm_and_bh_match_statsmodels() {
    for c in cases("corrections") {
        let p = floats(&c["p"]);
        for (name, got, want) in [
            ("holm", holm(&p), floats(&c["holm"])),
            ("bh", benjamini_hochberg(&p), floats(&c["bh"])),
        ] {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                close(*g, *w, &format!("{name} of {p:?}"));
            }
        }
        assert_eq!(Correction::Holm.apply(&p).unwrap(), holm(&p));
        assert_eq!(Correction::Bh.apply(&p).unwrap(), benjamini_hochberg(&p));
        assert_eq!(Correction::None.apply(&p).unwrap(), p);
    }
    assert_eq!("bh".parse::<Correction>().unwrap(), Correction::Bh);
    assert_eq!("holm".parse::<Correction>().unwrap(), Correction::Holm);
    assert_eq!("none".parse::<Correction>().unwrap(), Correction::None);
    let e = err_msg("bonferroni".parse::<Correction>());
    assert!(e.contains("holm, bh, none"), "{e}");
    let e = err_msg(Correction::Holm.apply(&[0.1, 1.5]));
    assert!(e.contains("p[1]"), "{e}");
}

#[test]
fn correlations_on_index_multisets_match_scipy() {
    for (k, c) in cases("correlations").iter().enumerate() {
        let out = outputs(floats(&c["pred"]), floats(&c["gold"]), None);
        let idx = indices(&c["idx"]);
        let what = format!("correlation case {k}");
        close(
            Metric::Pearson.compute(&out, &idx).unwrap(),
            f(&c["pearson"]),
            &what,
        );
        close(
            Metric::Spearman.compute(&out, &idx).unwrap(),
            f(&c["spearman"]),
            &what,
        );
    }
}

#[test]
fn classification_on_index_multisets_match_sklearn() {
    for (k, c) in cases("classification").iter().enumerate() {
        let out = outputs(floats(&c["pred"]), floats(&c["gold"]), None);
        let idx = indices(&c["idx"]);
        let what = format!("classification case {k}");
        for (m, key) in [
            (Metric::Accuracy, "accuracy"),
            (Metric::Mcc, "mcc"),
            (Metric::F1Macro, "f1_macro"),
            (Metric::F1, "f1"),
            (Metric::F1a, "f1"),
        ] {
            if c[key].is_null() {
                continue;
            }
            close(
                m.compute(&out, &idx).unwrap(),
                f(&c[key]),
                &format!("{what} {m}"),
            );
        }
    }
}

#[test]
fn em_and_f1a_on_group_multisets() {
    for (k, c) in cases("em").iter().enumerate() {
        let group: Vec<String> = c["group"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_str().unwrap().to_string())
            .collect();
        let out = outputs(floats(&c["pred"]), floats(&c["gold"]), Some(group));
        let idx = indices(&c["idx"]);
        let what = format!("em case {k}");
        close(Metric::Em.compute(&out, &idx).unwrap(), f(&c["em"]), &what);
        close(
            Metric::F1a.compute(&out, &idx).unwrap(),
            f(&c["f1a"]),
            &what,
        );
    }
}

#[test]
fn effect_sizes_match_formulas() {
    for c in cases("effect") {
        let (a, b) = (floats(&c["a"]), floats(&c["b"]));
        close(cohens_d(&a, &b).unwrap(), f(&c["cohens_d"]), "cohens_d");
        close(
            cliffs_delta(&a, &b).unwrap(),
            f(&c["cliffs_delta"]),
            "cliffs_delta",
        );
    }
    let e = err_msg(cohens_d(&[1.0, 1.0], &[2.0, 2.0]));
    assert!(e.contains("pooled standard deviation is zero"), "{e}");
    assert!(err_msg(cliffs_delta(&[], &[1.0])).contains("a needs at least 1"));
}

#[test]
fn power_formula_matches_scipy_and_is_conservative_vs_noncentral_t() {
    for c in cases("power") {
        let n = c["n"].as_u64().unwrap() as usize;
        let (d, sa, sb, alpha) = (f(&c["delta"]), f(&c["sd_a"]), f(&c["sd_b"]), f(&c["alpha"]));
        let p = welch_power(d, sa, sb, n, alpha).unwrap();
        close(p, f(&c["power"]), &format!("power {c}"));
        if let Some(nc) = c["power_noncentral"].as_f64() {
            // the documented approximation: below the noncentral-t power, within 0.1
            assert!(p <= nc + 1e-12 && nc - p < 0.1, "{p} vs noncentral {nc}");
        }
    }
    // delta = 0: power is alpha exactly
    close(welch_power(0.0, 0.02, 0.01, 7, 0.05).unwrap(), 0.05, "size");
    // seeds_needed is the first n reaching the target
    let n = seeds_needed(0.01, 0.01, 0.01, 0.05, 0.8, 100).unwrap();
    assert!(welch_power(0.01, 0.01, 0.01, n, 0.05).unwrap() >= 0.8);
    assert!(welch_power(0.01, 0.01, 0.01, n - 1, 0.05).unwrap() < 0.8);
    assert_eq!(seeds_needed(0.001, 0.01, 0.01, 0.05, 0.8, 10), None);
    assert!(err_msg(welch_power(0.01, 0.0, 0.0, 5, 0.05)).contains("both zero"));
    assert_eq!(seeds_needed(0.01, 0.0, 0.0, 0.05, 0.8, 10), None);
}

#[test]
fn aso_matches_deepsig() {
    for (k, c) in cases("aso").iter().enumerate() {
        let (a, b) = (floats(&c["a"]), floats(&c["b"]));
        let iters = c["iterations"].as_u64().unwrap() as usize;
        let r = aso(&a, &b, 0.5, f(&c["confidence"]), iters, 7).unwrap();
        let what = format!("aso case {k}");
        // deterministic part: identical to deepsig.aso.compute_violation_ratio
        close(r.violation_ratio, f(&c["violation_ratio"]), &what);
        // eps_min = vr + z·σ̂/c with σ̂ estimated by 2000 bootstrap rounds on each side (with
        // different generators): the standard deviation's relative Monte-Carlo error is
        // ≈ 1/√(2·2000) = 1.6% each, so 10% of the margin is > 4 combined standard errors.
        let want = f(&c["eps_min"]);
        let margin = want - r.violation_ratio;
        assert!(margin > 0.05, "{what}: pick an unclipped case");
        assert!(
            (r.eps_min - want).abs() <= 0.1 * margin,
            "{what}: eps_min {} vs deepsig {want}",
            r.eps_min
        );
        assert_eq!(r.dominant, r.eps_min < 0.5);
    }
}

#[test]
fn aso_hand_computations() {
    let sorted = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s
    };
    // Grid t = 0.005·k, k = 1..=199; with 3 values Q(t) = x[0] for k ≤ 66, x[1] for
    // 67 ≤ k ≤ 133, x[2] for k ≥ 134 (66, 67, 66 points).
    // A = B − 1: every point violates, but deepsig leaves k = 1 out of the numerator.
    let b = [1.0, 2.0, 3.0];
    let a = [0.0, 1.0, 2.0];
    close(
        violation_ratio(&sorted(&a), &sorted(&b)),
        198.0 / 199.0,
        "shift down",
    );
    // A = B + 1: no violation.
    let a = [2.0, 3.0, 4.0];
    close(violation_ratio(&sorted(&a), &sorted(&b)), 0.0, "shift up");
    // Mirror case: A wider than B around the same centre: (g − f) = 1, 0, −1 on the three
    // stretches: W2² = (66 + 66)·dt, violation (66 − 1)·dt.
    let a = [0.0, 2.0, 4.0];
    close(
        violation_ratio(&sorted(&a), &sorted(&b)),
        65.0 / 132.0,
        "mirror",
    );
    // identical: W2 = 0 → ½ by convention
    close(violation_ratio(&sorted(&b), &sorted(&b)), 0.5, "identical");
    // A far above B: every bootstrap sample has zero violation too → σ̂ = 0, ε_min = 0.
    let r = aso(&[10.0, 11.0, 12.0], &b, 0.5, 0.95, 200, 1).unwrap();
    assert_eq!((r.eps_min, r.violation_ratio), (0.0, 0.0));
    assert!(r.dominant);
    // …and the other way round: ε_min = 1 after clipping, not dominant.
    let r = aso(&b, &[10.0, 11.0, 12.0], 0.5, 0.95, 200, 1).unwrap();
    assert!(r.eps_min >= 198.0 / 199.0 && !r.dominant, "{r:?}");
    // reproducible
    let a = [0.7, 0.72, 0.69, 0.74, 0.71];
    let b = [0.69, 0.7, 0.68, 0.71, 0.7];
    assert_eq!(
        aso(&a, &b, 0.5, 0.95, 300, 9).unwrap(),
        aso(&a, &b, 0.5, 0.95, 300, 9).unwrap()
    );
}

// --- Metric::compute against qattn_glue on the identity index set --------------------------

#[test]
fn compute_on_identity_equals_qattn_glue_for_every_metric() {
    let mut r = Resampler::new(2024);
    let n = 300;
    let idx: Vec<usize> = (0..n).collect();
    let bin_gold: Vec<usize> = (0..n).map(|_| r.index(2)).collect();
    let bin_pred: Vec<usize> = bin_gold
        .iter()
        .map(|&g| if r.uniform() < 0.75 { g } else { 1 - g })
        .collect();
    let tri_gold: Vec<usize> = (0..n).map(|_| r.index(3)).collect();
    let tri_pred: Vec<usize> = tri_gold
        .iter()
        .map(|&g| if r.uniform() < 0.6 { g } else { r.index(3) })
        .collect();
    let question: Vec<String> = (0..n).map(|i| format!("p{}/q{}", i / 11, i / 4)).collect();
    let x: Vec<f64> = (0..n).map(|_| 5.0 * r.uniform()).collect();
    let y: Vec<f64> = x.iter().map(|v| v + r.uniform() - 0.5).collect();
    let fl = |v: &[usize]| v.iter().map(|&c| c as f64).collect::<Vec<_>>();
    let bin = outputs(fl(&bin_pred), fl(&bin_gold), Some(question.clone()));
    let tri = outputs(fl(&tri_pred), fl(&tri_gold), None);
    let reg = outputs(x.clone(), y.clone(), None);
    let (f1a, em) = glue::multirc(&bin_pred, &bin_gold, &question).unwrap();
    let checks = [
        (
            Metric::Accuracy,
            &tri,
            glue::accuracy(&tri_pred, &tri_gold).unwrap(),
        ),
        (
            Metric::F1,
            &bin,
            glue::f1_binary(&bin_pred, &bin_gold).unwrap(),
        ),
        (
            Metric::Mcc,
            &tri,
            glue::matthews(&tri_pred, &tri_gold).unwrap(),
        ),
        (Metric::Pearson, &reg, glue::pearson(&x, &y).unwrap()),
        (Metric::Spearman, &reg, glue::spearman(&x, &y).unwrap()),
        (
            Metric::F1Macro,
            &tri,
            glue::f1_macro(&tri_pred, &tri_gold, 3).unwrap(),
        ),
        (Metric::F1a, &bin, f1a),
        (Metric::Em, &bin, em),
    ];
    assert_eq!(checks.len(), Metric::ALL.len());
    for (m, out, want) in checks {
        let got = m.compute(out, &idx).unwrap();
        assert!((got - want).abs() <= 1e-12, "{m}: {got} vs glue {want}");
        assert_eq!(m.name().parse::<Metric>().unwrap(), m);
    }
    // degenerate cases follow qattn_glue: no positives → F1 0; constant → MCC 0, Pearson NaN
    let zeros = outputs(vec![0.0; 5], vec![0.0; 5], None);
    assert_eq!(Metric::F1.compute(&zeros, &[0, 1, 2, 3, 4]).unwrap(), 0.0);
    assert_eq!(Metric::Mcc.compute(&zeros, &[0, 1, 2, 3, 4]).unwrap(), 0.0);
    assert!(
        Metric::Pearson
            .compute(&zeros, &[0, 1, 2])
            .unwrap()
            .is_nan()
    );
    // names are the qattn_glue constants
    let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
    assert_eq!(
        names,
        [
            glue::ACCURACY,
            glue::F1,
            glue::MCC,
            glue::PEARSON,
            glue::SPEARMAN,
            glue::F1_MACRO,
            glue::F1A,
            glue::EM
        ]
    );
}

#[test]
fn compute_rejects_bad_input_with_names() {
    let out = outputs(vec![1.0, 2.0], vec![1.0, 0.0], None);
    let e = err_msg(Metric::F1.compute(&out, &[0, 1]));
    assert!(e.contains("e1") && e.contains("0/1"), "{e}");
    let e = err_msg(Metric::Accuracy.compute(&out, &[0, 5]));
    assert!(e.contains("index 5"), "{e}");
    let e = err_msg(Metric::Em.compute(&out, &[0, 1]));
    assert!(e.contains("group"), "{e}");
    let out = outputs(vec![0.5, 1.0], vec![1.0, 0.0], None);
    let e = err_msg(Metric::Accuracy.compute(&out, &[0, 1]));
    assert!(e.contains("\"e0\"") && e.contains("class label"), "{e}");
    let e = err_msg("bleu".parse::<Metric>());
    assert!(
        e.contains("bleu") && e.contains("accuracy, f1, mcc, pearson, spearman, f1_macro, f1a, em"),
        "{e}"
    );
}

// --- paired tests: behaviour ---------------------------------------------------------------

/// A binary task with `n` examples where A is right with probability `pa`, B with `pb`.
fn two_systems(n: usize, pa: f64, pb: f64, seed: u64) -> (Outputs, Outputs) {
    let mut r = Resampler::new(seed);
    let gold: Vec<f64> = (0..n).map(|_| r.index(2) as f64).collect();
    let pred = |p: f64, r: &mut Resampler| -> Vec<f64> {
        gold.iter()
            .map(|&g| if r.uniform() < p { g } else { 1.0 - g })
            .collect()
    };
    let a = pred(pa, &mut r);
    let b = pred(pb, &mut r);
    (
        outputs(a, gold.clone(), None),
        outputs(b, gold.clone(), None),
    )
}

#[test]
fn identical_systems_give_delta_zero_and_p_one() {
    let (a, _) = two_systems(150, 0.7, 0.7, 1);
    for m in [Metric::Accuracy, Metric::F1, Metric::Mcc] {
        let r = paired_bootstrap(&a, &a, m, 500, 3, 0.95).unwrap();
        assert_eq!(
            (r.delta, r.p_value, r.ci_low, r.ci_high),
            (0.0, 1.0, 0.0, 0.0)
        );
        let r = paired_test(PairedTest::Permutation, &a, &a, m, 500, 3, 0.95).unwrap();
        assert_eq!((r.delta, r.p_value), (0.0, 1.0));
    }
    let r = paired_test(PairedTest::Mcnemar, &a, &a, Metric::Accuracy, 100, 0, 0.95).unwrap();
    assert_eq!((r.delta, r.p_value, r.statistic), (0.0, 1.0, Some(0.0)));
}

#[test]
fn a_clearly_better_system_gets_a_small_p_and_a_positive_ci() {
    let (a, b) = two_systems(400, 0.9, 0.6, 2);
    for m in [Metric::Accuracy, Metric::F1, Metric::Mcc, Metric::F1Macro] {
        let r = paired_bootstrap(&a, &b, m, 2000, 5, 0.95).unwrap();
        assert!(
            r.delta > 0.2 && r.ci_low > 0.0 && r.p_value < 0.001,
            "{m}: {r:?}"
        );
        assert_eq!(r.resamples, Some(2000));
        let r = paired_test(PairedTest::Permutation, &a, &b, m, 2000, 5, 0.95).unwrap();
        assert!(r.p_value < 0.001, "{m}: {r:?}");
        // smallest possible p is 1/(N+1)
        assert!(r.p_value >= 1.0 / 2001.0);
    }
    let r = paired_test(PairedTest::Mcnemar, &a, &b, Metric::Accuracy, 1000, 5, 0.95).unwrap();
    assert!(r.p_value < 1e-6, "{r:?}");
    // and the reverse comparison has the opposite sign, same p
    let r1 = paired_test(PairedTest::Mcnemar, &b, &a, Metric::Accuracy, 1000, 5, 0.95).unwrap();
    assert_eq!((r1.delta, r1.p_value), (-r.delta, r.p_value));
}

#[test]
fn results_are_reproducible_and_the_permutation_ci_is_the_bootstrap_ci() {
    let (a, b) = two_systems(200, 0.75, 0.7, 3);
    let r1 = paired_bootstrap(&a, &b, Metric::Accuracy, 1000, 11, 0.9).unwrap();
    let r2 = paired_bootstrap(&a, &b, Metric::Accuracy, 1000, 11, 0.9).unwrap();
    assert_eq!(r1, r2);
    let r3 = paired_bootstrap(&a, &b, Metric::Accuracy, 1000, 12, 0.9).unwrap();
    assert_ne!(
        (r1.ci_low, r1.ci_high, r1.p_value),
        (r3.ci_low, r3.ci_high, r3.p_value)
    );
    let p = paired_test(
        PairedTest::Permutation,
        &a,
        &b,
        Metric::Accuracy,
        1000,
        11,
        0.9,
    )
    .unwrap();
    assert_eq!((p.ci_low, p.ci_high), (r1.ci_low, r1.ci_high));
    let m = paired_test(PairedTest::Mcnemar, &a, &b, Metric::Accuracy, 1000, 11, 0.9).unwrap();
    assert_eq!((m.ci_low, m.ci_high), (r1.ci_low, r1.ci_high));
    // the brief-signature entry points: 95% CI, and McNemar's CI from 10000 resamples, seed 0
    let p95 = permutation_test(&a, &b, Metric::Accuracy, 1000, 11).unwrap();
    let b95 = paired_bootstrap(&a, &b, Metric::Accuracy, 1000, 11, 0.95).unwrap();
    assert_eq!((p95.ci_low, p95.ci_high), (b95.ci_low, b95.ci_high));
    assert_eq!(p95.p_value, p.p_value);
    assert_eq!(
        mcnemar(&a, &b).unwrap(),
        paired_test(
            PairedTest::Mcnemar,
            &a,
            &b,
            Metric::Accuracy,
            10_000,
            0,
            0.95
        )
        .unwrap()
    );
    // a wider level gives a wider interval
    let w = paired_bootstrap(&a, &b, Metric::Accuracy, 1000, 11, 0.99).unwrap();
    assert!(w.ci_low < r1.ci_low && w.ci_high > r1.ci_high);
}

#[test]
fn clusters_are_the_resampling_unit_when_groups_are_given() {
    // 60 groups of 5 examples; within a group the two systems are all right or all wrong
    // together, so the effective sample size is the number of groups and the cluster CI must
    // be about √5 ≈ 2.2 times wider than the (wrong) per-example CI.
    let mut r = Resampler::new(8);
    let (mut pa, mut pb, mut gold, mut group) = (vec![], vec![], vec![], vec![]);
    for g in 0..60 {
        let ra = r.uniform() < 0.7;
        let rb = r.uniform() < 0.6;
        for _ in 0..5 {
            let y = r.index(2) as f64;
            gold.push(y);
            pa.push(if ra { y } else { 1.0 - y });
            pb.push(if rb { y } else { 1.0 - y });
            group.push(format!("q{g}"));
        }
    }
    let a = outputs(pa, gold.clone(), Some(group.clone()));
    let b = outputs(pb, gold, Some(group));
    let (mut a0, mut b0) = (a.clone(), b.clone());
    a0.group = None;
    b0.group = None;
    let clustered = paired_bootstrap(&a, &b, Metric::Accuracy, 4000, 1, 0.95).unwrap();
    let flat = paired_bootstrap(&a0, &b0, Metric::Accuracy, 4000, 1, 0.95).unwrap();
    let ratio = (clustered.ci_high - clustered.ci_low) / (flat.ci_high - flat.ci_low);
    assert!(ratio > 1.7 && ratio < 2.8, "width ratio {ratio}");
    // em works per group and equals accuracy here (groups are all right or all wrong)
    let em = paired_bootstrap(&a, &b, Metric::Em, 500, 1, 0.95).unwrap();
    assert!((em.delta - clustered.delta).abs() < 1e-12);
    let p = paired_test(PairedTest::Permutation, &a, &b, Metric::Em, 500, 1, 0.95).unwrap();
    assert!((0.0..=1.0).contains(&p.p_value));
}

#[test]
fn align_matches_by_id_and_names_what_is_wrong() {
    let a = Outputs {
        ids: vec!["x".into(), "y".into(), "z".into()],
        pred: vec![1.0, 0.0, 1.0],
        gold: vec![1.0, 1.0, 0.0],
        group: None,
    };
    let b = Outputs {
        ids: vec!["z".into(), "x".into(), "y".into()],
        pred: vec![0.0, 1.0, 1.0],
        gold: vec![0.0, 1.0, 1.0],
        group: None,
    };
    let (a2, b2) = align(&a, &b).unwrap();
    assert_eq!(a2, a);
    assert_eq!(b2.ids, a.ids);
    assert_eq!(b2.pred, vec![1.0, 1.0, 0.0]);
    // unaligned input is refused by the tests
    let e = err_msg(paired_bootstrap(&a, &b, Metric::Accuracy, 10, 0, 0.95));
    assert!(e.contains("align"), "{e}");
    // missing and extra ids
    let mut c = b.clone();
    c.ids[0] = "w".into();
    let e = err_msg(align(&a, &c));
    assert!(
        e.contains("\"z\"") && e.contains("\"w\"") && e.contains("missing"),
        "{e}"
    );
    // gold mismatch
    let mut d = b.clone();
    d.gold[1] = 0.0;
    let e = err_msg(align(&a, &d));
    assert!(e.contains("gold mismatch") && e.contains("\"x\""), "{e}");
    // duplicate ids
    let mut d = b.clone();
    d.ids[1] = "z".into();
    assert!(err_msg(align(&a, &d)).contains("duplicate id \"z\""));
    // McNemar refuses other metrics
    let e = err_msg(paired_test(
        PairedTest::Mcnemar,
        &a,
        &a,
        Metric::F1,
        10,
        0,
        0.95,
    ));
    assert!(e.contains("accuracy only") && e.contains("f1"), "{e}");
}

#[test]
fn jsonl_parsing_names_file_and_line() {
    let ok = "{\"id\": 1, \"pred\": true, \"gold\": 1}\n\n{\"id\": \"b\", \"pred\": 0, \"gold\": false}\n";
    let o = Outputs::parse_jsonl(ok, "a.jsonl").unwrap();
    assert_eq!(o.ids, ["1", "b"]);
    assert_eq!(
        (o.pred.clone(), o.gold.clone()),
        (vec![1.0, 0.0], vec![1.0, 0.0])
    );
    for (text, want) in [
        (
            "{\"id\": 1, \"pred\": 1, \"gold\": 1}\nnot json\n",
            "a.jsonl:2: invalid JSON",
        ),
        ("{\"id\": 1, \"gold\": 1}\n", "a.jsonl:1: missing \"pred\""),
        (
            "{\"id\": 1, \"pred\": \"x\", \"gold\": 1}\n",
            "a.jsonl:1: \"pred\" must be a number",
        ),
        (
            "{\"id\": [1], \"pred\": 1, \"gold\": 1}\n",
            "a.jsonl:1: \"id\" must be",
        ),
        (
            "{\"id\": 1, \"pred\": 1, \"gold\": 1}\n{\"id\": 1, \"pred\": 1, \"gold\": 1}\n",
            "a.jsonl:2: duplicate id \"1\" (first on line 1)",
        ),
        (
            "{\"id\": 1, \"pred\": 1, \"gold\": 1, \"group\": \"q\"}\n{\"id\": 2, \"pred\": 1, \"gold\": 1}\n",
            "a.jsonl:2: missing \"group\"",
        ),
        ("\n", "a.jsonl: no examples"),
    ] {
        let e = err_msg(Outputs::parse_jsonl(text, "a.jsonl"));
        assert!(e.contains(want), "{e:?} should contain {want:?}");
    }
}

#[test]
fn seeds_tests_reject_bad_input() {
    assert!(err_msg(welch(&[1.0], &[1.0, 2.0])).contains("at least 2"));
    assert!(err_msg(welch(&[1.0, 1.0], &[2.0, 2.0])).contains("zero variance"));
    assert!(err_msg(welch(&[1.0, f64::NAN], &[2.0, 2.0])).contains("a[1]"));
    assert!(err_msg(wilcoxon(&[1.0, 2.0], &[1.0, 2.0])).contains("all 2 differences"));
    assert!(err_msg(wilcoxon(&[1.0, 2.0], &[1.0])).contains("equal lengths"));
    assert!(err_msg(aso(&[], &[1.0], 0.5, 0.95, 10, 0)).contains("a is empty"));
}

#[test]
fn bootstrap_diff_ci_covers_the_difference() {
    let a: Vec<f64> = (0..30).map(|i| 0.70 + 0.001 * (i % 7) as f64).collect();
    let b: Vec<f64> = (0..25).map(|i| 0.65 + 0.002 * (i % 5) as f64).collect();
    let (lo, hi) = bootstrap_diff_ci(&a, &b, 2000, 4, 0.95).unwrap();
    let d = a.iter().sum::<f64>() / 30.0 - b.iter().sum::<f64>() / 25.0;
    assert!(
        lo < d && d < hi && hi - lo < 0.01,
        "({lo}, {hi}) around {d}"
    );
    assert_eq!(bootstrap_diff_ci(&a, &b, 2000, 4, 0.95).unwrap(), (lo, hi));
    // numpy.quantile's linear interpolation on 0..=10: the 5% and 95% points are 0.5 and 9.5
    let v: Vec<f64> = (0..=10).rev().map(f64::from).collect();
    let (lo, hi) = percentile_interval(&v, 0.9).unwrap();
    close(lo, 0.5, "5% point");
    close(hi, 9.5, "95% point");
}

// --- calibration under the null, and power ---------------------------------------------------

/// Paired null/alternative datasets: `n` binary examples; example `i` is easy (p = 0.95) or
/// hard (p = 0.45) with probability ½ each (mean accuracy 0.7), and A and B are right
/// independently given the difficulty, A with `p + shift` (capped at 1).
fn simulated(n: usize, shift: f64, r: &mut Resampler) -> (Outputs, Outputs) {
    let (mut pa, mut pb, mut gold) = (vec![], vec![], vec![]);
    for _ in 0..n {
        let p = if r.coin() { 0.95 } else { 0.45 };
        let y = r.index(2) as f64;
        let ra = r.uniform() < (p + shift).min(1.0);
        let rb = r.uniform() < p;
        gold.push(y);
        pa.push(if ra { y } else { 1.0 - y });
        pb.push(if rb { y } else { 1.0 - y });
    }
    (
        outputs(pa, gold.clone(), None),
        outputs(pb, gold.clone(), None),
    )
}

const TRIALS: usize = 1000;
const N: usize = 200;
const RESAMPLES: usize = 200;

/// The binomial 99% interval of the number of rejections in `trials` tests of size `rate`.
fn binomial_99(rate: f64, trials: u64) -> (u64, u64) {
    let b = Binomial::new(rate, trials).unwrap();
    (b.inverse_cdf(0.005), b.inverse_cdf(0.995))
}

fn rejections(
    test: impl Fn(&Outputs, &Outputs) -> f64,
    shift: f64,
    trials: usize,
    seed: u64,
) -> u64 {
    let mut r = Resampler::new(seed);
    (0..trials)
        .filter(|_| {
            let (a, b) = simulated(N, shift, &mut r);
            test(&a, &b) <= 0.05
        })
        .count() as u64
}

fn check_null_rate(name: &str, rejected: u64) {
    let (lo, hi) = binomial_99(0.05, TRIALS as u64);
    eprintln!("{name}: {rejected}/{TRIALS} null rejections at 0.05 (99% interval {lo}..={hi})");
    assert!(
        (lo..=hi).contains(&rejected),
        "{name}: {rejected}/{TRIALS} rejections, outside the binomial 99% interval {lo}..={hi}"
    );
}

fn check_power(name: &str, test: impl Fn(&Outputs, &Outputs) -> f64 + Copy) {
    let rates: Vec<u64> = [(0.0, 51), (0.05, 52), (0.2, 53)]
        .iter()
        .map(|&(shift, seed)| rejections(test, shift, 300, seed))
        .collect();
    eprintln!("{name}: rejections out of 300 at shifts 0, 0.05, 0.2: {rates:?}");
    assert!(
        rates[0] < rates[1] && rates[1] < rates[2] && rates[2] >= 240,
        "{name}: power not increasing with the effect: {rates:?}"
    );
}

#[test]
fn calibration_paired_bootstrap() {
    let test = |a: &Outputs, b: &Outputs| {
        paired_bootstrap(a, b, Metric::Accuracy, RESAMPLES, 17, 0.95)
            .unwrap()
            .p_value
    };
    check_null_rate("bootstrap", rejections(test, 0.0, TRIALS, 1001));
    check_power("bootstrap", test);
}

/// Approximate randomisation on accuracy is a Monte-Carlo version of the exact sign test on
/// the discordant pairs, so it inherits the sign test's discreteness and is conservative (its
/// size here is about 0.035, not 0.05). The exact size of the test as implemented is computed
/// below and the simulated rate must lie in the binomial 99% interval of that size — and not
/// above the interval around 0.05.
///
/// With `m` discordant examples (Binomial(N, q), q = 2·E[p(1 − p)]) and `b01` of them won by
/// A (Binomial(m, ½) under the null), a random swap gives `|δ_perm| ≥ |δ|` with probability
/// `π = P(|2X − m| ≥ |2·b01 − m|)`, `X ~ Binomial(m, ½)`; the `RESAMPLES` swaps are independent,
/// so `c ~ Binomial(RESAMPLES, π)` and the test rejects when `(c + 1)/(RESAMPLES + 1) ≤ 0.05`.
#[test]
fn calibration_permutation() {
    let c_max = (0.05 * (RESAMPLES + 1) as f64 - 1.0).floor() as u64; // reject iff c <= c_max
    let size = null_size(|b01, m| {
        let half = Binomial::new(0.5, m).unwrap();
        let d = (2 * b01).abs_diff(m);
        let pi: f64 = (0..=m)
            .filter(|&x| (2 * x).abs_diff(m) >= d)
            .map(|x| half.pmf(x))
            .sum();
        Binomial::new(pi.min(1.0), RESAMPLES as u64)
            .unwrap()
            .cdf(c_max)
    });
    let test = |a: &Outputs, b: &Outputs| {
        paired_test(
            PairedTest::Permutation,
            a,
            b,
            Metric::Accuracy,
            RESAMPLES,
            17,
            0.95,
        )
        .unwrap()
        .p_value
    };
    check_rate_against_size("permutation", rejections(test, 0.0, TRIALS, 1002), size);
    check_power("permutation", test);
}

/// The exact null rejection probability of a paired test on accuracy under [`simulated`]'s
/// design: `Σ_m P(M = m) Σ_b01 P(b01 | m)·reject(b01, m)`, with `M ~ Binomial(N, q)`,
/// `q = 2·E[p(1 − p)]`, `b01 | m ~ Binomial(m, ½)`, and `reject` the probability that the test
/// rejects at 0.05 given the discordant counts.
fn null_size(reject: impl Fn(u64, u64) -> f64) -> f64 {
    let q = 2.0 * (0.5 * 0.95 * 0.05 + 0.5 * 0.45 * 0.55);
    let disc = Binomial::new(q, N as u64).unwrap();
    let mut size = 0.0;
    for m in 0..=N as u64 {
        let pm = disc.pmf(m);
        if pm < 1e-15 {
            continue;
        }
        let half = Binomial::new(0.5, m).unwrap();
        size += pm
            * (0..=m)
                .map(|b01| half.pmf(b01) * reject(b01, m))
                .sum::<f64>();
    }
    size
}

/// The simulated rejections lie in the binomial 99% interval of the test's exact `size`, the
/// size does not exceed 0.05 (a valid test), and the rejections are not above the 99% interval
/// around 0.05.
fn check_rate_against_size(name: &str, rejected: u64, size: f64) {
    let (lo, hi) = binomial_99(size, TRIALS as u64);
    let (_, hi05) = binomial_99(0.05, TRIALS as u64);
    eprintln!(
        "{name}: exact size {size:.4}; {rejected}/{TRIALS} null rejections (99% interval {lo}..={hi})"
    );
    assert!(size <= 0.05 && size > 0.02, "{name}: size {size}");
    assert!(
        (lo..=hi).contains(&rejected) && rejected <= hi05,
        "{name}: {rejected}/{TRIALS} rejections, outside {lo}..={hi} (or above {hi05})"
    );
}

/// McNemar with continuity correction is conservative: its size under this design is about
/// 0.036 (statsmodels gives the same p-values, see `mcnemar_matches_statsmodels`). Its exact
/// size is computed with [`null_size`] and the simulated rate checked against it.
#[test]
fn calibration_mcnemar() {
    let size = null_size(|b01, m| f64::from(u8::from(mcnemar_p(b01, m - b01).unwrap().1 <= 0.05)));
    let test = |a: &Outputs, b: &Outputs| {
        paired_test(PairedTest::Mcnemar, a, b, Metric::Accuracy, 1, 17, 0.95)
            .unwrap()
            .p_value
    };
    check_rate_against_size("mcnemar", rejections(test, 0.0, TRIALS, 1003), size);
    check_power("mcnemar", test);
}
