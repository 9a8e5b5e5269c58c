//! The estimator studies of `qattn verify estimators`: the statistics against scipy
//! (`tests/fixtures/estimators.json`, written by `tests/fixtures/make_estimator_fixtures.py`;
//! library versions in its `generator` entry), the properties each study must show on
//! synthetic rows, the real-row path on the tiny random model of the shared HF cache, and the
//! report files.
//!
//! The model cache is found as a user would point qattn at it: `QATTN_HF_CACHE`, default
//! `<repo>/../shared/data/hf`; a missing cache fails the test with the path to set.

use qattn_plot::Scale;
use qattn_verify::estimators::{
    StudyOptions, bhc_epsilon, bhc_study, clopper_pearson_upper, fit_power_law, model_workload,
    run_study, synthetic_workload, variance_study, write_report,
};
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> Value {
    serde_json::from_str(include_str!("fixtures/estimators.json")).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-300)
}

fn quiet(_: &str) {}

fn hf_cache() -> PathBuf {
    let p = std::env::var_os("QATTN_HF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/data/hf"
            ))
        });
    assert!(
        p.is_dir(),
        "model cache {} not found: set QATTN_HF_CACHE to the shared HF cache",
        p.display()
    );
    p
}

fn offline_hub(cache: PathBuf) -> qattn_model::HubOptions {
    qattn_model::HubOptions {
        cache_dir: Some(cache),
        offline: true,
        progress: false,
        ..Default::default()
    }
}

#[test]
fn power_law_fit_recovers_an_exact_exponent() {
    let n = [256.0, 512.0, 1024.0, 2048.0];
    for b in [1.0, 2.0, 2.37, 0.5] {
        let t: Vec<f64> = n.iter().map(|x: &f64| 3e-7 * x.powf(b)).collect();
        let fit = fit_power_law(&n, &t, 0.95).unwrap();
        assert!((fit.exponent - b).abs() < 1e-12, "{b}: {}", fit.exponent);
        assert!((fit.intercept - 3e-7f64.ln()).abs() < 1e-9);
        assert!(fit.se < 1e-9, "exact data has no residual: se {}", fit.se);
        assert!(fit.ci_low <= b + 1e-9 && b - 1e-9 <= fit.ci_high);
        assert!((fit.r_squared - 1.0).abs() < 1e-12);
        assert_eq!(fit.df, 2);
    }
}

#[test]
fn power_law_fit_matches_scipy_linregress() {
    for case in fixtures()["power_law"].as_array().unwrap() {
        let (n, t) = (floats(&case["n"]), floats(&case["t"]));
        let fit = fit_power_law(&n, &t, 0.95).unwrap();
        for (name, got) in [
            ("exponent", fit.exponent),
            ("intercept", fit.intercept),
            ("se", fit.se),
            ("ci_low", fit.ci_low),
            ("ci_high", fit.ci_high),
            ("r_squared", fit.r_squared),
        ] {
            let want = case[name].as_f64().unwrap();
            assert!(
                close(got, want, 1e-9),
                "{name} on n={n:?}: {got} vs scipy {want}"
            );
        }
        assert_eq!(fit.df as u64, case["df"].as_u64().unwrap());
    }
}

#[test]
fn power_law_fit_rejects_what_it_cannot_fit() {
    let e = |n: &[f64], t: &[f64]| fit_power_law(n, t, 0.95).unwrap_err().to_string();
    assert!(e(&[1.0, 2.0], &[1.0, 2.0]).contains("≥ 3"));
    assert!(e(&[1.0, 2.0, 4.0], &[1.0, 0.0, 2.0]).contains("pair 1"));
    assert!(e(&[1.0, 2.0, f64::NAN], &[1.0, 1.0, 2.0]).contains("pair 2"));
    assert!(e(&[3.0, 3.0, 3.0], &[1.0, 2.0, 3.0]).contains("same"));
    assert!(e(&[1.0, 2.0, 4.0], &[1.0, 2.0]).contains("equal length"));
    assert!(fit_power_law(&[1.0, 2.0, 4.0], &[1.0, 2.0, 4.0], 1.0).is_err());
}

#[test]
fn clopper_pearson_and_bhc_radius_match_scipy() {
    let f = fixtures();
    for c in f["clopper_pearson_upper"].as_array().unwrap() {
        let (x, n) = (
            c["x"].as_u64().unwrap() as usize,
            c["n"].as_u64().unwrap() as usize,
        );
        let got = clopper_pearson_upper(x, n, 0.95).unwrap();
        let want = c["upper"].as_f64().unwrap();
        assert!(close(got, want, 1e-9), "x={x}, n={n}: {got} vs {want}");
    }
    assert!(clopper_pearson_upper(3, 2, 0.95).is_err());
    for c in f["bhc_epsilon"].as_array().unwrap() {
        let got = bhc_epsilon(
            c["keys"].as_u64().unwrap() as usize,
            c["shots"].as_u64().unwrap() as usize,
            c["delta"].as_f64().unwrap(),
        );
        assert!(close(got, c["epsilon"].as_f64().unwrap(), 1e-12), "{c}");
    }
}

/// The BHC bound holds on the kernel's own draws: at most a fraction δ of trials exceed
/// ε(δ), so ε(δ) is at least the empirical (1 − δ)-quantile; and the measured ℓ1 error shrinks
/// with S (the counts are real draws, not p itself).
#[test]
fn bhc_exceedance_is_at_most_delta_on_synthetic_rows() {
    let w = synthetic_workload(2, 8, 64, 32, 2.0, 11).unwrap();
    let delta = 0.05;
    let b = bhc_study(&w, &[64, 256], 4, delta, 5, &quiet).unwrap();
    assert_eq!(b.groups.len(), 2, "one K = 64 group per S");
    for g in &b.groups {
        assert_eq!(g.keys, 64);
        assert_eq!(g.trials, 2 * 8 * 64 * 4);
        assert!(
            g.exceed_fraction <= delta,
            "S={}: {} of trials exceed ε(δ) = {}",
            g.shots,
            g.exceed_fraction,
            g.epsilon
        );
        assert!(
            g.epsilon >= g.quantile,
            "S={}: ε(δ) {} below the empirical quantile {}",
            g.shots,
            g.epsilon,
            g.quantile
        );
        assert!(g.looseness >= 1.0 && g.mean_l1 > 0.0 && g.quantile <= 2.0);
    }
    assert!(b.exceed_fraction <= delta);
    let (g64, g256) = (&b.groups[0], &b.groups[1]);
    assert_eq!((g64.shots, g256.shots), (64, 256));
    let shrink = g64.mean_l1 / g256.mean_l1;
    assert!(
        (1.4..2.6).contains(&shrink),
        "mean ‖p̂ − p‖₁ should fall roughly as S^(-1/2): ratio {shrink}"
    );
}

/// Stratified sampling never has larger variance than multinomial at equal S (law of total
/// variance), and on peaked rows it is clearly smaller: the whole 95% interval of the ratio
/// lies below 1. The measured multinomial variance matches its exact value.
#[test]
fn stratified_variance_is_below_multinomial_on_peaked_rows() {
    for (sd, strict) in [(4.0, true), (0.5, false)] {
        let w = synthetic_workload(1, 8, 64, 32, sd, 3).unwrap();
        let v = variance_study(&w, &[8], 32, 300, 1, &quiet).unwrap();
        assert_eq!(v.rows, 8 * 64);
        // the bootstrap resamples the 8 heads of the one input, not the 512 rows
        assert_eq!(v.clusters, 8);
        let b = &v.by_shots[0];
        let get = |f: &str| b.estimators.iter().find(|e| e.family == f).unwrap();
        let (m, st) = (get("multinomial"), get("stratified"));
        assert_eq!(m.ratio.value, 1.0);
        assert_eq!(m.p_value, None);
        let p = st.p_value.unwrap();
        // two-sided bootstrap p of ratio = 1: at least 2/(B + 1), and small when the whole
        // interval is below 1
        assert!((2.0 / 301.0 - 1e-12..=1.0).contains(&p), "p = {p}");
        if strict {
            assert!(p < 0.05, "peaked rows: p = {p}");
        }
        assert!((m.mean_shots - 8.0).abs() < 1e-12);
        assert!(
            st.ratio.value < 1.0,
            "logit sd {sd}: stratified / multinomial = {}",
            st.ratio.value
        );
        if strict {
            assert!(
                st.ratio.ci_high < 1.0,
                "peaked rows: ratio CI {:?}",
                (st.ratio.ci_low, st.ratio.ci_high)
            );
            assert!(get("topk").ratio.value < 1.0);
        }
        let th = &b.multinomial_vs_theory;
        assert!(
            (th.value - 1.0).abs() < 0.1 && th.covers(th.value),
            "measured / exact multinomial variance {th:?}"
        );
        assert_eq!(v.claim.len(), 1);
        assert_eq!(v.claim[0].consistent, st.ratio.covers(0.60));
    }
}

#[test]
fn quick_synthetic_study_writes_every_report_file() {
    let opts = StudyOptions {
        quick: true,
        model: Some("synthetic".into()),
        seed: 7,
        ..Default::default()
    };
    let messages = std::sync::Mutex::new(Vec::new());
    let report = run_study(&opts, &|m: &str| {
        messages.lock().unwrap().push(m.to_string())
    })
    .unwrap();
    assert!(messages.lock().unwrap().len() >= 4, "progress is reported");
    assert_eq!(report.variance.by_shots.len(), 2);
    assert!(report.bhc.exceed_fraction <= opts.delta);
    assert_eq!(report.timing.lengths, [128, 256, 512]);
    assert_eq!(report.timing.series.len(), 6);
    // 2 bases × (5 depol + 4 + 4 readout + 4 + 4 damp) settings.
    assert_eq!(report.noise.points.len(), 2 * (5 + 8 + 8));
    // every setting carries its per-seed errors, whose mean is the reported error
    for p in &report.noise.points {
        assert_eq!(p.per_seed.len(), report.noise.seeds, "{}", p.spec);
        let mean = p.per_seed.iter().sum::<f64>() / p.per_seed.len() as f64;
        assert!(
            (mean - p.rel_error).abs() < 1e-12,
            "{}: {mean} vs {}",
            p.spec,
            p.rel_error
        );
    }
    // 2 synthetic problems × 8 heads
    assert_eq!(report.variance.clusters, 16);
    eprintln!("quick synthetic study: {:.1} s", report.wall_seconds);

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("estimator-study-quick");
    let _ = std::fs::remove_dir_all(&dir);
    let files = write_report(&report, &dir).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "report.json",
            "report.md",
            "error_vs_s.svg",
            "error_vs_s.png",
            "time_vs_n.svg",
            "time_vs_n.png",
            "error_vs_noise.svg",
            "error_vs_noise.png"
        ]
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        8,
        "no temporaries left"
    );
    let json: Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["model"], "synthetic");
    assert_eq!(json["variance"]["by_shots"].as_array().unwrap().len(), 2);
    let ratio = json["variance"]["claim"][0]["measured"]["value"]
        .as_f64()
        .unwrap();
    assert_eq!(ratio, report.variance.claim[0].measured.value);
    let c = &report.variance.claim[0];
    let want = if c.measured.ci_high <= 0.60 {
        "at least the claimed reduction"
    } else if c.measured.ci_low > 0.60 {
        "less than the claimed reduction"
    } else {
        "the CI contains the claimed ratio"
    };
    assert_eq!(c.verdict, want);
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for needle in [
        "## 1. Variance",
        "## 2. Bretagnolle",
        "## 3. Time scaling",
        "## 4. Noise sweep",
        "claimed",
        "(head, sentence) clusters",
        "`stratified:16`",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle:?}");
    }
    for stem in ["error_vs_s", "time_vs_n", "error_vs_noise"] {
        let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{stem}"
        );
        assert!(
            svg.contains("<circle class=\"marker\""),
            "{stem} has points"
        );
        let png = std::fs::read(dir.join(format!("{stem}.png"))).unwrap();
        let img = qattn_plot::raster::decode_png(&png).unwrap();
        assert!(img.width() > 100 && img.height() > 100, "{stem}");
    }
    // The plots are on the axes the report promises.
    let plots = qattn_verify::estimators::plots(&report);
    assert_eq!(plots[0].1.x_scale, Scale::Log);
    assert_eq!(plots[2].1.x_scale, Scale::Linear);
    assert_eq!(plots[0].1.series.len(), 5);
}

/// The real-row path: the tiny random BERT of the shared cache, every layer's heads stacked,
/// one problem per sentence of the sentence's token count; the multinomial variance measured on
/// those rows matches its exact value and stratified sampling does not do worse.
#[test]
fn tiny_random_model_gives_real_rows() {
    let hub = offline_hub(hf_cache());
    let sentences = [
        "Rain is expected tomorrow.",
        "The quick brown fox jumps over the lazy dog.",
    ];
    let w = model_workload("synthetic/bert-tiny-random-h32", &hub, &sentences).unwrap();
    assert_eq!(w.problems.len(), 2);
    let s = w.summary().unwrap();
    for p in &s.problems {
        assert_eq!(p.heads, 2 * 2, "2 layers x 2 heads");
        assert_eq!(p.dim, 16);
        assert!(p.length >= 5, "[CLS] ... [SEP]: {}", p.length);
    }
    assert!(s.problems[1].length > s.problems[0].length);
    assert!(w.description.contains("synthetic/bert-tiny-random-h32"));
    let v = variance_study(&w, &[8], 32, 200, 2, &quiet).unwrap();
    let b = &v.by_shots[0];
    let th = &b.multinomial_vs_theory;
    assert!((th.value - 1.0).abs() < 0.1, "{th:?}");
    let st = b
        .estimators
        .iter()
        .find(|e| e.family == "stratified")
        .unwrap();
    assert!(st.ratio.value < 1.0, "{:?}", st.ratio);
    let bhc = bhc_study(&w, &[64], 2, 0.05, 0, &quiet).unwrap();
    assert!(bhc.exceed_fraction <= 0.05);
    assert_eq!(bhc.groups.len(), 2, "one group per sentence length");
}

#[test]
fn a_missing_model_is_a_clear_error() {
    let empty = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("estimators-empty-hf-cache");
    std::fs::create_dir_all(&empty).unwrap();
    let opts = StudyOptions {
        quick: true,
        model: Some("nobody/no-such-model".into()),
        hub: offline_hub(empty),
        ..Default::default()
    };
    let err = run_study(&opts, &quiet).unwrap_err().to_string();
    assert!(err.contains("nobody/no-such-model"), "{err}");
    assert!(err.contains("--model synthetic"), "{err}");
}

#[test]
fn bad_options_are_rejected_with_the_reason() {
    for (delta, sd) in [(0.0, 2.0), (1.5, 2.0), (0.05, f64::NAN), (0.05, -1.0)] {
        let opts = StudyOptions {
            quick: true,
            model: Some("synthetic".into()),
            delta,
            logit_sd: sd,
            ..Default::default()
        };
        let err = run_study(&opts, &quiet).unwrap_err().to_string();
        assert!(err.contains("δ") || err.contains("logit_sd"), "{err}");
    }
    let w = synthetic_workload(1, 1, 4, 4, 1.0, 0).unwrap();
    assert!(variance_study(&w, &[], 4, 10, 0, &quiet).is_err());
    assert!(variance_study(&w, &[4], 1, 10, 0, &quiet).is_err());
    assert!(
        variance_study(&w, &[4], 4, 10, u64::MAX, &quiet)
            .unwrap_err()
            .to_string()
            .contains("overflows")
    );
    assert!(synthetic_workload(0, 1, 4, 4, 1.0, 0).is_err());
}
