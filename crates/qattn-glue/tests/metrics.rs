//! The metrics against reference values from scikit-learn, SciPy and the official SQuAD v1.1 /
//! ReCoRD / DNC scripts (`tests/fixtures/metrics.json`, written by
//! `tests/fixtures/make_metric_fixtures.py`; library versions in its `generator` entry), plus
//! error cases and the leaderboard aggregation rules on hand-computed examples.
//!
//! Tolerance: every `f64` metric must be within 1e-12 (absolute) of its reference value; a
//! reference `null` means NaN and must be NaN. Normalised strings must be equal.

use std::collections::BTreeMap;
use std::path::PathBuf;

use qattn_glue::Error;
use qattn_glue::metrics::{
    self, accuracy, f1_binary, f1_macro, gender_pairs, gender_parity, glue_score, matthews,
    multirc, pearson, record, record_f1_em, spearman, squad_normalize, superglue_score,
    task_metrics, task_score,
};
use serde_json::Value;

const TOL: f64 = 1e-12;

fn fixtures() -> Value {
    serde_json::from_str(include_str!("fixtures/metrics.json")).unwrap()
}

fn cases(name: &str) -> Vec<Value> {
    let v = fixtures()[name].as_array().unwrap().clone();
    assert!(!v.is_empty(), "no {name} cases");
    v
}

fn labels(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// `actual` within [`TOL`] of `expected` (JSON `null` = NaN).
fn assert_close(actual: f64, expected: &Value, what: &str) {
    match expected.as_f64() {
        None => {
            assert!(expected.is_null(), "{what}: bad reference {expected}");
            assert!(actual.is_nan(), "{what}: got {actual}, expected NaN");
        }
        Some(e) => assert!(
            (actual - e).abs() <= TOL,
            "{what}: got {actual:e}, expected {e:e} (diff {:e})",
            (actual - e).abs()
        ),
    }
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, Error>, needle: &str) {
    match r {
        Err(Error::Invalid(msg)) => assert!(
            msg.contains(needle),
            "error {msg:?} does not mention {needle:?}"
        ),
        other => panic!("expected Error::Invalid mentioning {needle:?}, got {other:?}"),
    }
}

fn map(entries: &[(&str, f64)]) -> BTreeMap<String, f64> {
    entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

// ---------------------------------------------------------------- reference fixtures

#[test]
fn fixture_records_library_versions() {
    let g = &fixtures()["generator"];
    for key in ["python", "numpy", "scipy", "scikit-learn", "seed"] {
        assert!(!g[key].is_null(), "generator.{key} missing");
    }
}

#[test]
fn accuracy_matches_sklearn() {
    for (i, c) in cases("accuracy").iter().enumerate() {
        let got = accuracy(&labels(&c["pred"]), &labels(&c["gold"])).unwrap();
        assert_close(got, &c["expected"], &format!("accuracy case {i}"));
    }
}

#[test]
fn f1_binary_matches_sklearn() {
    for (i, c) in cases("f1_binary").iter().enumerate() {
        let got = f1_binary(&labels(&c["pred"]), &labels(&c["gold"])).unwrap();
        assert_close(got, &c["expected"], &format!("f1_binary case {i}"));
    }
}

#[test]
fn matthews_matches_sklearn() {
    for (i, c) in cases("matthews").iter().enumerate() {
        let got = matthews(&labels(&c["pred"]), &labels(&c["gold"])).unwrap();
        assert_close(got, &c["expected"], &format!("matthews case {i}"));
    }
}

#[test]
fn f1_macro_matches_sklearn() {
    for (i, c) in cases("f1_macro").iter().enumerate() {
        let n = c["num_classes"].as_u64().unwrap() as usize;
        let got = f1_macro(&labels(&c["pred"]), &labels(&c["gold"]), n).unwrap();
        assert_close(got, &c["expected"], &format!("f1_macro case {i}"));
    }
}

#[test]
fn pearson_matches_scipy() {
    for (i, c) in cases("pearson").iter().enumerate() {
        let got = pearson(&floats(&c["x"]), &floats(&c["y"])).unwrap();
        assert_close(got, &c["expected"], &format!("pearson case {i}"));
    }
}

#[test]
fn spearman_matches_scipy() {
    for (i, c) in cases("spearman").iter().enumerate() {
        let got = spearman(&floats(&c["x"]), &floats(&c["y"])).unwrap();
        assert_close(got, &c["expected"], &format!("spearman case {i}"));
    }
}

#[test]
fn multirc_matches_reference() {
    for (i, c) in cases("multirc").iter().enumerate() {
        let (f1a, em) = multirc(
            &labels(&c["pred"]),
            &labels(&c["gold"]),
            &strings(&c["question"]),
        )
        .unwrap();
        assert_close(f1a, &c["f1a"], &format!("multirc f1a case {i}"));
        assert_close(em, &c["em"], &format!("multirc em case {i}"));
    }
}

#[test]
fn squad_normalize_matches_official_script() {
    for c in cases("squad_normalize") {
        let input = c["input"].as_str().unwrap();
        assert_eq!(
            squad_normalize(input),
            c["expected"].as_str().unwrap(),
            "input {input:?}"
        );
    }
}

#[test]
fn record_f1_em_matches_official_script() {
    for (i, c) in cases("record_f1_em").iter().enumerate() {
        let (f1, em) = record_f1_em(c["prediction"].as_str().unwrap(), &strings(&c["golds"]));
        assert_close(f1, &c["f1"], &format!("record_f1_em f1 case {i}"));
        assert_close(em, &c["em"], &format!("record_f1_em em case {i}"));
    }
}

#[test]
fn record_matches_official_script() {
    for (i, c) in cases("record").iter().enumerate() {
        let golds: Vec<Vec<String>> = c["golds"].as_array().unwrap().iter().map(strings).collect();
        let (f1, em) = record(&strings(&c["preds"]), &golds).unwrap();
        assert_close(f1, &c["f1"], &format!("record f1 case {i}"));
        assert_close(em, &c["em"], &format!("record em case {i}"));
    }
}

#[test]
fn gender_parity_matches_dnc_script() {
    for (i, c) in cases("gender_parity").iter().enumerate() {
        let ids: Vec<u64> = c["pair_id"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        let got = gender_parity(&labels(&c["pred"]), &ids).unwrap();
        assert_close(got, &c["expected"], &format!("gender_parity case {i}"));
    }
}

// ---------------------------------------------------------------- the real AX-g file

fn data_dir() -> PathBuf {
    std::env::var_os("QATTN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        })
}

/// The pairing rule on the official AX-g.jsonl: every example has exactly one partner, with the
/// same hypothesis and a premise that differs in one pronoun (male variant first).
#[test]
fn gender_pairs_on_official_axg() {
    let path = data_dir().join("superglue/AX-g/AX-g.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set QATTN_DATA_DIR)", path.display()));
    let rows: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 356);
    let ids: Vec<u64> = rows
        .iter()
        .map(|r| r["pair_id"].as_u64().unwrap())
        .collect();
    let pairs = gender_pairs(&ids).unwrap();
    assert_eq!(pairs.len(), 178);
    for &(m, f) in &pairs {
        let (a, b) = (&rows[m], &rows[f]);
        assert_eq!(a["hypothesis"], b["hypothesis"], "pair {m}/{f}");
        let pa: Vec<&str> = a["premise"].as_str().unwrap().split(' ').collect();
        let pb: Vec<&str> = b["premise"].as_str().unwrap().split(' ').collect();
        assert_eq!(pa.len(), pb.len(), "pair {m}/{f}");
        let diff: Vec<(&str, &str)> = pa
            .iter()
            .zip(&pb)
            .filter(|(x, y)| x != y)
            .map(|(x, y)| (*x, *y))
            .collect();
        assert_eq!(diff.len(), 1, "pair {m}/{f}: {diff:?}");
        assert!(
            matches!(diff[0], ("he", "she") | ("his", "her") | ("him", "her")),
            "pair {m}/{f}: {diff:?}"
        );
    }
    // A constant prediction has perfect parity; one differing pair costs 1/178.
    let mut pred = vec![0usize; ids.len()];
    assert_eq!(gender_parity(&pred, &ids).unwrap(), 1.0);
    pred[pairs[0].1] = 1;
    assert_close(
        gender_parity(&pred, &ids).unwrap(),
        &Value::from(177.0 / 178.0),
        "one broken pair",
    );
}

// ---------------------------------------------------------------- hand-computed values

#[test]
fn small_hand_computed_values() {
    // tp=2, fp=1, fn=1 -> F1 = 4/6; accuracy 3/5.
    let (pred, gold) = ([1, 1, 0, 1, 0], [1, 0, 1, 1, 0]);
    assert_eq!(accuracy(&pred, &gold).unwrap(), 0.6);
    assert!((f1_binary(&pred, &gold).unwrap() - 2.0 / 3.0).abs() < TOL);
    // MCC = (tp·tn − fp·fn)/sqrt(...) = (2·1 − 1·1)/sqrt(3·3·2·2) = 1/6.
    assert!((matthews(&pred, &gold).unwrap() - 1.0 / 6.0).abs() < TOL);
    // Perfect and inverted predictions.
    assert_eq!(matthews(&[0, 1, 2], &[0, 1, 2]).unwrap(), 1.0);
    assert!((matthews(&[1, 0], &[0, 1]).unwrap() + 1.0).abs() < TOL);
    assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap() - 1.0).abs() < TOL);
    // Monotone but not linear: Spearman 1.
    assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 8.0, 27.0, 64.0]).unwrap() - 1.0).abs() < TOL);
    // Two questions: q1 all right, q2 one wrong -> em 1/2.
    let q: Vec<String> = ["q1", "q2", "q1", "q2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (f1a, em) = multirc(&[1, 0, 0, 1], &[1, 1, 0, 1], &q).unwrap();
    assert_eq!(em, 0.5);
    assert!((f1a - 0.8).abs() < TOL); // tp=2, fp=0, fn=1
}

// ---------------------------------------------------------------- errors

#[test]
fn length_mismatch_is_an_error() {
    assert_invalid(accuracy(&[0, 1], &[0]), "length mismatch");
    assert_invalid(f1_binary(&[0], &[0, 1]), "length mismatch");
    assert_invalid(matthews(&[0, 1, 2], &[0]), "length mismatch");
    assert_invalid(f1_macro(&[0], &[0, 1], 2), "length mismatch");
    assert_invalid(pearson(&[1.0, 2.0], &[1.0, 2.0, 3.0]), "length mismatch");
    assert_invalid(spearman(&[1.0, 2.0, 3.0], &[1.0]), "length mismatch");
    assert_invalid(
        multirc(&[0, 1], &[0, 1], &["q".to_string()]),
        "length mismatch",
    );
    assert_invalid(
        multirc(&[0], &[0, 1], &["q".to_string()]),
        "length mismatch",
    );
    assert_invalid(
        record(
            &["a".to_string()],
            &[vec!["a".to_string()], vec!["b".to_string()]],
        ),
        "length mismatch",
    );
    assert_invalid(gender_parity(&[0, 0], &[551646]), "length mismatch");
}

#[test]
fn empty_input_is_an_error() {
    assert_invalid(accuracy(&[], &[]), "empty");
    assert_invalid(f1_binary(&[], &[]), "empty");
    assert_invalid(matthews(&[], &[]), "empty");
    assert_invalid(f1_macro(&[], &[], 3), "empty");
    assert_invalid(pearson(&[], &[]), "empty");
    assert_invalid(spearman(&[], &[]), "empty");
    assert_invalid(multirc(&[], &[], &[]), "empty");
    assert_invalid(record(&[], &[]), "empty");
    assert_invalid(gender_parity(&[], &[]), "empty");
    assert_invalid(gender_pairs(&[]), "empty");
}

#[test]
fn bad_labels_and_degenerate_inputs_are_errors() {
    assert_invalid(f1_binary(&[0, 2], &[0, 1]), "pred[1] = 2");
    assert_invalid(f1_binary(&[0, 1], &[3, 1]), "gold[0] = 3");
    assert_invalid(f1_macro(&[0, 3], &[0, 1], 3), "pred[1] = 3");
    assert_invalid(f1_macro(&[0], &[0], 0), "num_classes");
    let q = vec!["q".to_string(); 2];
    assert_invalid(
        multirc(&[0, 2], &[0, 1], &q),
        "multirc: label out of range: pred[1] = 2",
    );
    assert_invalid(pearson(&[1.0], &[2.0]), "at least 2");
    assert_invalid(spearman(&[1.0], &[2.0]), "at least 2");
    assert_invalid(
        record(&["x".to_string()], &[Vec::new()]),
        "query 0 has no gold answer",
    );
    // Winogender pairing: 551646 pairs with 551648, 551647 with 551649.
    assert_invalid(gender_pairs(&[551646, 551647]), "551646");
    assert_invalid(gender_pairs(&[551648]), "551648");
    assert_invalid(gender_pairs(&[551646, 551648, 551646]), "twice");
    assert_eq!(
        gender_pairs(&[551649, 551646, 551647, 551648]).unwrap(),
        vec![(1, 3), (2, 0)]
    );
}

#[test]
fn undefined_values_follow_the_references() {
    // Constant input: SciPy returns NaN; sklearn's MCC returns 0; sklearn's F1 with no
    // positive anywhere returns 0 (zero_division).
    assert!(
        pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0])
            .unwrap()
            .is_nan()
    );
    assert!(
        spearman(&[1.0, 2.0, 3.0], &[4.0, 4.0, 4.0])
            .unwrap()
            .is_nan()
    );
    assert!(
        spearman(&[1.0, f64::NAN, 3.0], &[1.0, 2.0, 3.0])
            .unwrap()
            .is_nan()
    );
    assert_eq!(matthews(&[1, 1, 1], &[0, 1, 0]).unwrap(), 0.0);
    assert_eq!(f1_binary(&[0, 0], &[0, 0]).unwrap(), 0.0);
    // ReCoRD: both sides normalise to nothing -> EM 1 but F1 0 (official script); no golds.
    assert_eq!(record_f1_em("The", &["a".to_string()]), (0.0, 1.0));
    assert_eq!(record_f1_em("x", &[]), (0.0, 0.0));
}

// ---------------------------------------------------------------- aggregation

#[test]
fn task_score_averages_the_leaderboard_metrics() {
    let m = map(&[
        (metrics::ACCURACY, 0.8),
        (metrics::F1, 0.9),
        (metrics::MCC, 0.5),
        (metrics::PEARSON, 0.86),
        (metrics::SPEARMAN, 0.84),
        (metrics::F1_MACRO, 0.7),
        (metrics::F1A, 0.75),
        (metrics::EM, 0.25),
        (metrics::GENDER_PARITY, 0.9),
    ]);
    let close = |task: &str, want: f64| {
        let got = task_score(task, &m).unwrap_or_else(|| panic!("{task}: no score"));
        assert!((got - want).abs() < TOL, "{task}: {got} != {want}");
    };
    close("CoLA", 0.5);
    close("SST-2", 0.8);
    close("MRPC", (0.9 + 0.8) / 2.0);
    close("QQP", (0.9 + 0.8) / 2.0);
    close("STS-B", (0.86 + 0.84) / 2.0);
    close("MNLI-m", 0.8);
    close("mnli_mismatched", 0.8);
    close("QNLI", 0.8);
    close("RTE", 0.8);
    close("WNLI", 0.8);
    close("AX", 0.5);
    close("BoolQ", 0.8);
    close("CB", (0.7 + 0.8) / 2.0);
    close("COPA", 0.8);
    close("MultiRC", (0.75 + 0.25) / 2.0);
    close("ReCoRD", (0.9 + 0.25) / 2.0);
    close("WiC", 0.8);
    close("WSC", 0.8);
    close("AX-b", 0.5);
    // Names are matched without case, '-' and '_'.
    close("sts_b", (0.86 + 0.84) / 2.0);
    close("multi-rc", 0.5);
    // AX-g reports parity and accuracy side by side, never averaged; unknown tasks; missing
    // metrics.
    assert_eq!(task_score("AX-g", &m), None);
    assert_eq!(task_metrics("AX-g"), None);
    assert_eq!(task_score("SQuAD", &m), None);
    assert_eq!(task_score("MRPC", &map(&[(metrics::F1, 0.9)])), None);
    assert_eq!(
        task_metrics("CB"),
        Some(&[metrics::F1_MACRO, metrics::ACCURACY][..])
    );
}

fn glue_tasks() -> BTreeMap<String, f64> {
    map(&[
        ("CoLA", 0.6),
        ("SST-2", 0.9),
        ("MRPC", 0.85),
        ("STS-B", 0.8),
        ("QQP", 0.7),
        ("MNLI-m", 0.84),
        ("MNLI-mm", 0.82),
        ("QNLI", 0.9),
        ("RTE", 0.7),
        ("WNLI", 0.65),
    ])
}

#[test]
fn glue_score_counts_mnli_once_and_excludes_ax() {
    // Nine tasks, MNLI = (0.84 + 0.82) / 2 = 0.83:
    // (0.6 + 0.9 + 0.85 + 0.8 + 0.7 + 0.83 + 0.9 + 0.7 + 0.65) / 9 = 6.93 / 9 = 0.77.
    let s = glue_tasks();
    assert!((glue_score(&s).unwrap() - 0.77).abs() < TOL);
    let mut with_ax = s.clone();
    with_ax.insert("AX".into(), -0.3);
    assert_eq!(glue_score(&with_ax).unwrap(), glue_score(&s).unwrap());
    // Hugging Face split names are accepted for MNLI.
    let mut hf = s.clone();
    let m = hf.remove("MNLI-m").unwrap();
    let mm = hf.remove("MNLI-mm").unwrap();
    hf.insert("mnli_matched".into(), m);
    hf.insert("mnli_mismatched".into(), mm);
    assert_eq!(glue_score(&hf).unwrap(), glue_score(&s).unwrap());
}

/// GLUE paper (ICLR 2019) Table 4, the row printed with average 70.0: the rule reproduces it.
#[test]
fn glue_score_reproduces_a_glue_paper_average() {
    let s = map(&[
        ("CoLA", 33.6),
        ("SST-2", 90.4),
        ("MRPC", (78.0 + 84.4) / 2.0),
        ("QQP", (84.3 + 63.1) / 2.0),
        ("STS-B", (74.2 + 72.3) / 2.0),
        ("MNLI-m", 74.1),
        ("MNLI-mm", 74.5),
        ("QNLI", 79.8),
        ("RTE", 58.9),
        ("WNLI", 65.1),
    ]);
    let got = glue_score(&s).unwrap();
    assert!((got - 70.0).abs() < 0.05, "{got}");
}

#[test]
fn glue_score_errors() {
    let mut s = glue_tasks();
    s.remove("WNLI");
    assert_invalid(glue_score(&s), "missing task scores: wnli");
    let mut s = glue_tasks();
    s.insert("BoolQ".into(), 0.8);
    assert_invalid(glue_score(&s), "\"BoolQ\" is not a task");
    let mut s = glue_tasks();
    s.insert("MNLI".into(), 0.8);
    assert_invalid(glue_score(&s), "\"MNLI\" is not a task");
    let mut s = glue_tasks();
    s.insert("sst2".into(), 0.9);
    assert_invalid(glue_score(&s), "given twice");
    let mut s = glue_tasks();
    s.insert("STS-B".into(), f64::NAN);
    assert_invalid(glue_score(&s), "NaN");
    assert_invalid(glue_score(&BTreeMap::new()), "missing");
}

#[test]
fn superglue_score_averages_eight_tasks_and_excludes_diagnostics() {
    // (0.8 + 0.75 + 0.7 + 0.5 + 0.7 + 0.75 + 0.7 + 0.65) / 8 = 5.55 / 8 = 0.69375.
    let s = map(&[
        ("BoolQ", 0.8),
        ("CB", 0.75),
        ("COPA", 0.7),
        ("MultiRC", 0.5),
        ("ReCoRD", 0.7),
        ("RTE", 0.75),
        ("WiC", 0.7),
        ("WSC", 0.65),
    ]);
    assert!((superglue_score(&s).unwrap() - 0.69375).abs() < TOL);
    let mut with_ax = s.clone();
    with_ax.insert("AX-b".into(), 0.2);
    with_ax.insert("AX-g".into(), 0.95);
    assert_eq!(
        superglue_score(&with_ax).unwrap(),
        superglue_score(&s).unwrap()
    );
    let mut missing = s.clone();
    missing.remove("ReCoRD");
    assert_invalid(superglue_score(&missing), "missing task scores: record");
    let mut extra = s.clone();
    extra.insert("CoLA".into(), 0.5);
    assert_invalid(superglue_score(&extra), "\"CoLA\" is not a task");
    let mut inf = s;
    inf.insert("WSC".into(), f64::INFINITY);
    assert_invalid(superglue_score(&inf), "inf");
}
