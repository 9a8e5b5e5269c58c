//! Does the verdict engine keep the error rates it promises? Simulated run records under a
//! known truth, pushed through [`crate::claims::evaluate`] exactly as `qattn verify claims`
//! reads real ones.
//!
//! Each simulated dataset holds, for systems A (`stratified:32`) and B (`exact`), K runs (seeds)
//! scored on the same `n` dev examples of a binary task. Run k of system S gets every example
//! right independently with probability `clamp(p + s_k^S ± w_i, 0, 1)`:
//! - `s_k^S ~ N(0, seed_sd²)` is the seed-to-seed quality shift (independent per system and
//!   seed);
//! - `w_i ~ N(0, example_sd²)`, drawn once per dataset and added for A and subtracted for B, is
//!   an example-level preference: on the whole task the systems are equal, but a finite dev set
//!   can favour one of them for every seed (the shared dev-set variance);
//! - A's accuracy is raised by `delta` (0 under the null).
//!
//! The claim is the bare "A beats B" (margin 0), so under the null a VERIFIED verdict is a false
//! positive whose rate must be at most α/2 (the interval is two-sided at 1 − α). Each row gives
//! the rate with its Clopper–Pearson interval.

use serde::{Deserialize, Serialize};
use statrs::distribution::{Beta, ContinuousCDF};

use crate::claims::{Claim, ClaimTest, ClaimsFile, Defaults, Verdict, evaluate};
use crate::error::{Result, invalid};
use crate::stats::Resampler;
use qattn_train::records::{Label, Prediction, PredictionRecord, RunRecord};

/// The simulation's settings (defaults: the null of the calibration table in docs/verify.md).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    /// Simulated datasets per row.
    pub datasets: usize,
    /// Seeds per system, one row each.
    pub seeds: Vec<usize>,
    /// Dev examples per run.
    pub examples: usize,
    /// Accuracy of the baseline before the seed and example effects.
    pub accuracy: f64,
    /// Standard deviation of the per-seed quality shift.
    pub seed_sd: f64,
    /// Standard deviation of the per-example preference (shared by every seed).
    pub example_sd: f64,
    /// True advantage of A in accuracy (0: the null).
    pub delta: f64,
    /// Significance level α of the claims.
    pub alpha: f64,
    /// Bootstrap rounds per evaluation.
    pub resamples: usize,
    /// The deciding test.
    pub test: ClaimTest,
    /// Seed of the whole simulation.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            datasets: 200,
            seeds: vec![2, 3, 5],
            examples: 277,
            accuracy: 0.7,
            seed_sd: 0.08,
            example_sd: 0.0,
            delta: 0.0,
            alpha: 0.05,
            resamples: 1000,
            test: ClaimTest::Bootstrap,
            seed: 0,
        }
    }
}

impl Settings {
    /// Checks every value; errors name the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, why: &str| Err(invalid(format!("calibration: {name} {why}")));
        if self.datasets == 0 || self.datasets > 1_000_000 {
            return bad("datasets", "must be in 1..=1000000");
        }
        if self.seeds.is_empty() || self.seeds.iter().any(|&k| k == 0 || k > 1000) {
            return bad(
                "seeds",
                "must be a non-empty list of seed counts in 1..=1000",
            );
        }
        if self.examples < 2 || self.examples > 10_000_000 {
            return bad("examples", "must be in 2..=10000000");
        }
        if !(self.accuracy > 0.0 && self.accuracy < 1.0) {
            return bad("accuracy", "must be in (0, 1)");
        }
        for (name, v) in [("seed_sd", self.seed_sd), ("example_sd", self.example_sd)] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return bad(name, "must be a finite standard deviation in [0, 1]");
            }
        }
        if !(self.delta.is_finite() && self.delta.abs() < 1.0) {
            return bad("delta", "must be in (-1, 1)");
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return bad("alpha", "must be in (0, 1)");
        }
        if !(100..=1_000_000).contains(&self.resamples) {
            return bad("resamples", "must be in 100..=1000000");
        }
        Ok(())
    }
}

/// One row of the calibration table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// Seeds per system.
    pub seeds: usize,
    /// Datasets simulated.
    pub datasets: usize,
    /// VERIFIED verdicts.
    pub verified: usize,
    /// REFUTED verdicts.
    pub refuted: usize,
    /// INCONCLUSIVE verdicts.
    pub inconclusive: usize,
    /// verified / datasets.
    pub verified_rate: f64,
    /// Clopper–Pearson 95% interval of the VERIFIED rate.
    pub verified_ci: (f64, f64),
    /// refuted / datasets.
    pub refuted_rate: f64,
    /// Mean over datasets of the rule's predicted probability of VERIFIED (from each dataset's
    /// estimated variance components, [`crate::stats::Design::prob_lower_above`]); `None` when
    /// no dataset had a non-degenerate interval.
    pub predicted_verified: Option<f64>,
}

/// The calibration table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Table {
    /// The settings that produced it.
    pub settings: Settings,
    /// The nominal one-sided rate of a false VERIFIED verdict under the null, α/2.
    pub nominal: f64,
    /// One row per seed count.
    pub rows: Vec<Row>,
}

/// A standard normal draw (Box–Muller on two uniforms).
fn normal(rng: &mut Resampler) -> f64 {
    let u1 = rng.uniform().max(f64::MIN_POSITIVE);
    let u2 = rng.uniform();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// One simulated run record (the fields the claims engine reads; the rest empty).
fn record(attention: &str, seed: u64, predictions: Vec<PredictionRecord>) -> RunRecord {
    RunRecord {
        task: "synthetic-calibration".into(),
        model: "simulated".into(),
        attention: attention.into(),
        seed,
        pooling: Default::default(),
        training_args: Default::default(),
        git_sha: None,
        git_dirty: None,
        machine: Default::default(),
        dev_metrics: Default::default(),
        dev_examples: predictions.len(),
        predictions,
        wall_seconds: Default::default(),
        train_tokens_per_second: 0.0,
        peak_rss_mb: None,
        train_examples: 0,
        unix_time: 0,
    }
}

/// The run records of one simulated dataset with `k` seeds per system.
pub fn simulate(s: &Settings, k: usize, rng: &mut Resampler) -> Vec<RunRecord> {
    let n = s.examples;
    let gold: Vec<usize> = (0..n).map(|_| usize::from(rng.coin())).collect();
    let pref: Vec<f64> = (0..n).map(|_| s.example_sd * normal(rng)).collect();
    let mut out = Vec::with_capacity(2 * k);
    for (attention, sign, lift) in [("stratified:32", 1.0, s.delta), ("exact", -1.0, 0.0)] {
        for seed in 0..k as u64 {
            let shift = s.seed_sd * normal(rng);
            let preds = (0..n)
                .map(|i| {
                    let p = (s.accuracy + lift + shift + sign * pref[i]).clamp(0.0, 1.0);
                    let right = rng.uniform() < p;
                    PredictionRecord {
                        id: format!("ex-{i}"),
                        pred: Prediction::Class(if right { gold[i] } else { 1 - gold[i] }),
                        gold: Some(Label::Class(gold[i])),
                        group: None,
                        entity: None,
                        answers: None,
                    }
                })
                .collect();
            out.push(record(attention, seed, preds));
        }
    }
    out
}

/// The claims file every dataset is judged by: "stratified:32 beats exact" on accuracy, no
/// correction (one claim).
pub fn claims_file(s: &Settings) -> ClaimsFile {
    ClaimsFile {
        defaults: Defaults {
            alpha: s.alpha,
            correction: "none".into(),
            test: s.test,
            resamples: s.resamples,
            system: "stratified:32".into(),
            baseline: "exact".into(),
            ..Defaults::default()
        },
        claims: vec![Claim {
            id: "stratified:32 beats exact".into(),
            task: "synthetic-calibration".into(),
            metric: "accuracy".into(),
            system: None,
            baseline: None,
            claimed: None,
            claimed_baseline: None,
            min_delta: Some(0.0),
            text: None,
        }],
        ..ClaimsFile::default()
    }
}

/// Clopper–Pearson interval of `x` successes in `n` trials at 95%.
pub fn clopper_pearson(x: usize, n: usize) -> (f64, f64) {
    let q = |a: f64, b: f64, p: f64| Beta::new(a, b).map(|d| d.inverse_cdf(p)).unwrap_or(0.0);
    let (xf, nf) = (x as f64, n as f64);
    let lo = if x == 0 {
        0.0
    } else {
        q(xf, nf - xf + 1.0, 0.025)
    };
    let hi = if x == n {
        1.0
    } else {
        q(xf + 1.0, nf - xf, 0.975)
    };
    (lo, hi)
}

/// Runs the simulation; `progress` is called after every dataset with (done, total).
pub fn run(s: &Settings, mut progress: impl FnMut(usize, usize)) -> Result<Table> {
    s.validate()?;
    let file = claims_file(s);
    let total = s.datasets * s.seeds.len();
    let mut done = 0;
    let mut rows = Vec::with_capacity(s.seeds.len());
    for (ri, &k) in s.seeds.iter().enumerate() {
        let mut rng = Resampler::with_stream(s.seed, ri as u32 + 1);
        let (mut verified, mut refuted, mut inconclusive) = (0, 0, 0);
        let (mut predicted, mut with_prediction) = (0.0, 0usize);
        for d in 0..s.datasets {
            let records = simulate(s, k, &mut rng);
            let mut f = file.clone();
            f.defaults.seed = s.seed.wrapping_mul(1_000_003).wrapping_add(d as u64);
            let r = &evaluate(&f, &records)?.results[0];
            match r.verdict {
                Verdict::Verified => verified += 1,
                Verdict::Refuted => refuted += 1,
                Verdict::Inconclusive => inconclusive += 1,
            }
            if let (Some(vs), Some(vd)) = (r.var_seed, r.var_dev) {
                let design = crate::stats::Design {
                    var_seed: vs,
                    var_dev: vd,
                    k,
                };
                if s.test == ClaimTest::Bootstrap
                    && let Ok(p) = design.prob_lower_above(0.0, s.delta, 1.0 - s.alpha)
                {
                    predicted += p;
                    with_prediction += 1;
                }
            }
            done += 1;
            progress(done, total);
        }
        let n = s.datasets;
        rows.push(Row {
            seeds: k,
            datasets: n,
            verified,
            refuted,
            inconclusive,
            verified_rate: verified as f64 / n as f64,
            verified_ci: clopper_pearson(verified, n),
            refuted_rate: refuted as f64 / n as f64,
            predicted_verified: (with_prediction > 0).then(|| predicted / with_prediction as f64),
        });
    }
    Ok(Table {
        settings: s.clone(),
        nominal: s.alpha / 2.0,
        rows,
    })
}

/// The table as Markdown.
pub fn to_markdown(t: &Table, command: &str) -> String {
    let s = &t.settings;
    let mut out = format!(
        "# Verdict calibration\n\nRegenerate: `{command}`\n\n{} simulated datasets per row; \
         {} dev examples; accuracy {} + seed shift N(0, {}²) per run ± example preference \
         N(0, {}²) per example; true advantage {}; bare claim \"A beats B\", α = {}, no \
         correction, test {}, {} resamples. Nominal rate of VERIFIED under the null: ≤ {}.\n\n\
         | seeds per system | VERIFIED | 95% CI (Clopper–Pearson) | REFUTED | INCONCLUSIVE | \
         predicted VERIFIED |\n|---:|---:|---|---:|---:|---:|\n",
        s.datasets,
        s.examples,
        s.accuracy,
        s.seed_sd,
        s.example_sd,
        s.delta,
        s.alpha,
        match s.test {
            ClaimTest::Bootstrap => "hierarchical (t on seeds + dev-set variance)",
            ClaimTest::Welch => "welch",
        },
        s.resamples,
        t.nominal
    );
    for r in &t.rows {
        out.push_str(&format!(
            "| {} | {:.1}% ({}) | [{:.1}%, {:.1}%] | {:.1}% | {} | {} |\n",
            r.seeds,
            100.0 * r.verified_rate,
            r.verified,
            100.0 * r.verified_ci.0,
            100.0 * r.verified_ci.1,
            100.0 * r.refuted_rate,
            r.inconclusive,
            r.predicted_verified
                .map_or("–".into(), |p| format!("{:.1}%", 100.0 * p))
        ));
    }
    out
}
