//! Claims about the estimators themselves, decided from a `qattn verify estimators` report
//! (`report.json`) instead of fine-tuning runs.
//!
//! - `[[variance_claim]]`: "estimator E has at least `claimed_reduction` less sampling variance
//!   than multinomial sampling with the same S" (the source document's "40% reduction in
//!   sampling variance" is E = stratified, 0.40). Evaluated at every S of the study's variance
//!   section (or the listed `shots`): δ = 1 − ratio, the ratio Σ MSE_E / Σ MSE_multinomial on
//!   real attention rows, its 95% interval from the cluster bootstrap over (head, sentence)
//!   clusters and its bootstrap p-value of ratio = 1.
//! - `[[noise_claim]]`: "`system` has a lower relative error ‖ô − o‖/‖o‖ than `baseline` by at
//!   least `min_reduction`" for two settings of the study's noise sweep (`:S` in a spec stands
//!   for the sweep's shot count), e.g. readout mitigation against no mitigation. Both settings
//!   ran on the same seeds: δ is the mean over seeds of the per-seed difference
//!   `error(baseline) − error(system)`, with a t interval at 1 − α (K − 1 degrees of freedom)
//!   and the matching two-sided p-value.
//!
//! The verdicts follow the rule of the run-record claims (module docs of [`super`]): VERIFIED
//! when the adjusted p < α, δ > 0 and the interval's lower end ≥ the claimed margin (and > 0);
//! REFUTED when its upper end lies strictly below the margin; INCONCLUSIVE otherwise, with the
//! reason. Their p-values join the same multiple-comparison correction as the other claims of
//! the file.

use super::Verdict;
use crate::error::{Error, Result, invalid};
use crate::estimators::{NoiseStudy, VarianceStudy};
use crate::stats::seeds::{t_quantile, t_two_sided_p};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The estimator families a `[[variance_claim]]` may name (every study estimator but
/// multinomial, the reference).
pub const VARIANCE_CLAIM_FAMILIES: [&str; 4] = ["stratified", "topk", "cv", "adaptive"];

/// `[[variance_claim]]`: an estimator's variance reduction against `multinomial:S`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VarianceClaim {
    /// Short name; the report adds " (S = n)" per shot count.
    pub id: String,
    /// The estimator family: stratified, topk, cv or adaptive.
    pub estimator: String,
    /// The claimed reduction of the sampling variance, as a fraction in [0, 1) (0.40 for
    /// "40% less variance"; 0 for a bare "less variance").
    pub claimed_reduction: f64,
    /// Shot counts to evaluate at; default every S of the study.
    #[serde(default)]
    pub shots: Option<Vec<usize>>,
    /// The claim in words.
    #[serde(default)]
    pub text: Option<String>,
}

/// `[[noise_claim]]`: one noise-sweep setting has a lower relative error than another.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseClaim {
    /// Short name.
    pub id: String,
    /// The setting claimed to have the lower error (a spec of the sweep; `:S` = its S).
    pub system: String,
    /// The setting it is compared with.
    pub baseline: String,
    /// The claimed reduction of the mean relative error (absolute, e.g. 0.01 = one point of
    /// relative error); default 0 ("lower error").
    #[serde(default)]
    pub min_reduction: f64,
    /// The claim in words.
    #[serde(default)]
    pub text: Option<String>,
}

/// The parts of a `qattn verify estimators` report (`report.json`) the claims read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StudyEvidence {
    /// The model whose attention rows were sampled (or `synthetic`).
    pub model: String,
    /// Whether it was the reduced study.
    pub quick: bool,
    /// The commit of the binary that ran it.
    #[serde(default)]
    pub git_sha: Option<String>,
    /// Whether that build had uncommitted changes.
    #[serde(default)]
    pub git_dirty: Option<bool>,
    /// Section 1 of the study.
    pub variance: VarianceStudy,
    /// Section 4 of the study.
    pub noise: NoiseStudy,
}

impl StudyEvidence {
    /// Reads the study's `report.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| {
            invalid(format!(
                "{}: not an estimator study report (qattn verify estimators writes \
                 report.json): {e}",
                path.display()
            ))
        })
    }

    /// One line naming the study for the report.
    pub fn describe(&self) -> String {
        format!(
            "estimator study on {} ({}), commit {}{}",
            self.model,
            if self.quick { "quick" } else { "full" },
            self.git_sha.as_deref().unwrap_or("unknown"),
            match self.git_dirty {
                Some(true) => ", dirty",
                Some(false) => ", clean",
                None => "",
            }
        )
    }
}

/// The outcome of one variance or noise claim (a variance claim gives one per S).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StudyClaimResult {
    /// The claim's id (variance: with " (S = n)").
    pub id: String,
    /// `variance` or `noise`.
    pub kind: String,
    /// The claim in words.
    pub text: Option<String>,
    /// The claimed-better estimator or setting (resolved spec).
    pub system: String,
    /// What it is compared with.
    pub baseline: String,
    /// What δ measures.
    pub quantity: String,
    /// The claimed margin of δ.
    pub margin: f64,
    /// Measured δ (larger = the system is better).
    pub delta: Option<f64>,
    /// Lower end of δ's interval.
    pub ci_low: Option<f64>,
    /// Upper end of δ's interval.
    pub ci_high: Option<f64>,
    /// The interval's level.
    pub ci_level: f64,
    /// Two-sided p-value of δ = 0.
    pub p_value: Option<f64>,
    /// p-value after the file's correction.
    pub p_adjusted: Option<f64>,
    /// Replication units behind the interval: clusters (variance) or seeds (noise).
    pub n: usize,
    /// `clusters` or `seeds`.
    pub unit: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in words.
    pub reason: String,
}

impl StudyClaimResult {
    fn new(id: String, kind: &str, text: Option<String>, system: String, baseline: String) -> Self {
        StudyClaimResult {
            id,
            kind: kind.into(),
            text,
            system,
            baseline,
            quantity: String::new(),
            margin: 0.0,
            delta: None,
            ci_low: None,
            ci_high: None,
            ci_level: 0.95,
            p_value: None,
            p_adjusted: None,
            n: 0,
            unit: String::new(),
            verdict: Verdict::Inconclusive,
            reason: String::new(),
        }
    }
}

/// Checks the variance and noise claims of a file (`source` names it in errors).
pub(crate) fn validate(
    variance: &[VarianceClaim],
    noise: &[NoiseClaim],
    source: &str,
) -> Result<()> {
    for (i, c) in variance.iter().enumerate() {
        let at = format!("{source}: variance_claim #{} ({:?})", i + 1, c.id);
        if !VARIANCE_CLAIM_FAMILIES.contains(&c.estimator.as_str()) {
            return Err(invalid(format!(
                "{at}: estimator {:?} is not one of {VARIANCE_CLAIM_FAMILIES:?} (multinomial is \
                 the reference)",
                c.estimator
            )));
        }
        if !(c.claimed_reduction >= 0.0 && c.claimed_reduction < 1.0) {
            return Err(invalid(format!(
                "{at}: claimed_reduction = {} must be a fraction in [0, 1)",
                c.claimed_reduction
            )));
        }
        if c.shots
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.contains(&0))
        {
            return Err(invalid(format!("{at}: shots must be non-empty and ≥ 1")));
        }
    }
    for (i, c) in noise.iter().enumerate() {
        let at = format!("{source}: noise_claim #{} ({:?})", i + 1, c.id);
        if c.system.trim().is_empty() || c.baseline.trim().is_empty() {
            return Err(invalid(format!("{at}: system and baseline must be specs")));
        }
        if !c.min_reduction.is_finite() {
            return Err(invalid(format!("{at}: min_reduction is not finite")));
        }
    }
    Ok(())
}

/// Evaluates the variance and noise claims against `study` (`None`: every claim is
/// INCONCLUSIVE for want of evidence); p-values are not adjusted yet and no verdict is set.
pub(crate) fn evaluate(
    variance: &[VarianceClaim],
    noise: &[NoiseClaim],
    study: Option<&StudyEvidence>,
    alpha: f64,
) -> Vec<StudyClaimResult> {
    let mut out = Vec::new();
    for c in variance {
        let spec_of = |s: &str| match c.estimator.as_str() {
            "topk" => format!("topk:{}:{s}", crate::estimators::TOPK_K),
            "cv" => format!("cv:{}:{s}", crate::estimators::CV_RANK),
            "adaptive" => format!("adaptive:1:{s}"),
            family => format!("{family}:{s}"),
        };
        let Some(study) = study else {
            let mut r = StudyClaimResult::new(
                c.id.clone(),
                "variance",
                c.text.clone(),
                spec_of("S"),
                "multinomial:S".into(),
            );
            r.margin = c.claimed_reduction;
            r.reason = "no estimator study report given (--estimators report.json of `qattn \
                        verify estimators`)"
                .into();
            out.push(r);
            continue;
        };
        let shots: Vec<usize> = c
            .shots
            .clone()
            .unwrap_or_else(|| study.variance.by_shots.iter().map(|b| b.shots).collect());
        for s in shots {
            let mut r = StudyClaimResult::new(
                format!("{} (S = {s})", c.id),
                "variance",
                c.text.clone(),
                spec_of(&s.to_string()),
                format!("multinomial:{s}"),
            );
            r.quantity = "variance reduction 1 − Σ MSE / Σ MSE(multinomial)".into();
            r.margin = c.claimed_reduction;
            r.unit = "clusters".into();
            r.n = study.variance.clusters;
            let found = study
                .variance
                .by_shots
                .iter()
                .find(|b| b.shots == s)
                .and_then(|b| b.estimators.iter().find(|e| e.family == c.estimator));
            match found {
                None => {
                    r.reason = format!(
                        "the study has no {} estimator at S = {s} (it ran S = {:?})",
                        c.estimator,
                        study
                            .variance
                            .by_shots
                            .iter()
                            .map(|b| b.shots)
                            .collect::<Vec<_>>()
                    )
                }
                Some(e) if study.variance.clusters == 0 || e.p_value.is_none() => {
                    r.delta = Some(1.0 - e.ratio.value);
                    r.reason = "the study report predates the cluster bootstrap (its interval \
                                resampled single rows, which are correlated); re-run `qattn \
                                verify estimators`"
                        .into();
                }
                Some(e) => {
                    r.delta = Some(1.0 - e.ratio.value);
                    r.ci_low = Some(1.0 - e.ratio.ci_high);
                    r.ci_high = Some(1.0 - e.ratio.ci_low);
                    r.p_value = e.p_value;
                }
            }
            out.push(r);
        }
    }
    for c in noise {
        let shots = study.map(|s| s.noise.shots);
        let resolve = |spec: &str| match shots {
            Some(s) => spec.replace(":S", &format!(":{s}")),
            None => spec.to_string(),
        };
        let (sys, base) = (resolve(&c.system), resolve(&c.baseline));
        let mut r = StudyClaimResult::new(
            c.id.clone(),
            "noise",
            c.text.clone(),
            sys.clone(),
            base.clone(),
        );
        r.quantity = "relative error reduction error(baseline) − error(system)".into();
        r.margin = c.min_reduction;
        r.unit = "seeds".into();
        r.ci_level = 1.0 - alpha;
        let Some(study) = study else {
            r.reason = "no estimator study report given (--estimators report.json of `qattn \
                        verify estimators`)"
                .into();
            out.push(r);
            continue;
        };
        let point = |spec: &str| study.noise.points.iter().find(|p| p.spec == spec);
        match (point(&sys), point(&base)) {
            (Some(a), Some(b)) if a.per_seed.len() >= 2 && a.per_seed.len() == b.per_seed.len() => {
                let d: Vec<f64> = b
                    .per_seed
                    .iter()
                    .zip(&a.per_seed)
                    .map(|(x, y)| x - y)
                    .collect();
                let k = d.len() as f64;
                let mean = d.iter().sum::<f64>() / k;
                let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt();
                r.n = d.len();
                r.delta = Some(mean);
                if sd > 0.0 {
                    let se = sd / k.sqrt();
                    match t_quantile(k - 1.0, 1.0 - alpha / 2.0) {
                        Ok(q) => {
                            r.ci_low = Some(mean - q * se);
                            r.ci_high = Some(mean + q * se);
                            r.p_value = Some(t_two_sided_p(mean / se, k - 1.0));
                        }
                        Err(e) => r.reason = format!("the claim could not be tested: {e}"),
                    }
                } else {
                    r.reason = format!(
                        "every seed gave the same difference ({mean:+.5}): identical settings \
                         or outputs, no evidence either way"
                    );
                }
            }
            (Some(_), Some(_)) => {
                r.reason = "the study report has no per-seed errors for these settings (written \
                            before they were recorded); re-run `qattn verify estimators`"
                    .into()
            }
            (a, b) => {
                let missing: Vec<&str> =
                    [(a.is_none(), sys.as_str()), (b.is_none(), base.as_str())]
                        .iter()
                        .filter(|(m, _)| *m)
                        .map(|(_, s)| *s)
                        .collect();
                r.reason = format!(
                    "the study's noise sweep (S = {}) has no setting {}",
                    study.noise.shots,
                    missing.join(" and no setting ")
                );
            }
        }
        out.push(r);
    }
    out
}

/// The verdict rule of the module docs, after the correction filled `p_adjusted`.
pub(crate) fn decide(r: &mut StudyClaimResult, alpha: f64) {
    let (Some(delta), Some(lo), Some(hi), Some(p)) = (r.delta, r.ci_low, r.ci_high, r.p_adjusted)
    else {
        if r.reason.is_empty() {
            r.reason = "no test could be run".into();
        }
        return;
    };
    let m = r.margin;
    let ci = format!(
        "{:.0}% CI [{lo:+.4}, {hi:+.4}] over {} {}",
        100.0 * r.ci_level,
        r.n,
        r.unit
    );
    let what = match r.kind.as_str() {
        "variance" => "variance reduction",
        _ => "relative-error reduction",
    };
    if p < alpha && delta > 0.0 && lo >= m && lo > 0.0 {
        r.verdict = Verdict::Verified;
        r.reason = format!(
            "{what} of {} against {} is {delta:+.4} (adjusted p = {p:.3e}); {ci} ≥ claimed \
             {m:.4}",
            r.system, r.baseline
        );
    } else if hi < m {
        r.verdict = Verdict::Refuted;
        r.reason = format!(
            "{what} of {} against {} is {delta:+.4}; {ci} lies below the claimed {m:.4}",
            r.system, r.baseline
        );
    } else {
        r.verdict = Verdict::Inconclusive;
        r.reason = format!(
            "{what} of {} against {} is {delta:+.4} (adjusted p = {p:.3}); {ci} contains the \
             claimed {m:.4}",
            r.system, r.baseline
        );
    }
}
