//! Claims in, verdicts out: VERIFIED / REFUTED / INCONCLUSIVE.
//!
//! A claim says "system A beats system B on task T's metric M by at least m points" (the
//! source document's "CoLA 65.2 vs 52.1" is A = Monte-Carlo attention, B = exact attention,
//! M = MCC, m = 13.1). [`evaluate`] finds the run records of both systems (one per seed, as
//! `qattn glue run` or `qattn compare` write them), tests the difference and decides:
//!
//! - **VERIFIED** — the difference is significant after the multiple-comparison correction
//!   (adjusted p < α), positive, and the whole confidence interval lies at or above the
//!   claimed margin m (for a bare "A beats B" claim, m = 0: the interval lies above 0).
//! - **REFUTED** — the confidence interval lies strictly below m: an advantage as large as
//!   claimed is ruled out by the data (at the CI's level). For a bare "beats" claim that means
//!   A is significantly worse than B.
//! - **INCONCLUSIVE** — everything else, each with its reason: the interval contains m; there
//!   are no paired records, or fewer than 2 seeds per system (seed variation cannot be
//!   estimated); the interval has zero width (identical or constant outputs — no evidence
//!   either way); the baseline's runs did not clearly beat the trivial predictor (the best
//!   constant prediction: the majority class, MCC 0), i.e. the recipe did not learn; the
//!   baseline scored more than `defaults.max_baseline_shortfall` points below the claim's
//!   baseline (the runs do not reproduce the claim's setting); or the claim could not be
//!   tested (e.g. `em` on records without question groups). One claim's error never aborts the
//!   others.
//!
//! ## The default test
//! The unit of replication is a fine-tuning run (a seed) and each run is scored on the same
//! dev examples. The default test ([`crate::stats::hierarchical`]) takes the per-seed
//! differences `x_k = M(A_k) − M(B_k)` (A's and B's run of seed k paired), their mean δ, and
//! the standard error `se = √(s²/K + V_dev)`: `s²` the sample variance of the `x_k`
//! (seed-to-seed variation, K − 1 degrees of freedom) and `V_dev` the variance that the dev set
//! shares across all seeds, from a bootstrap over dev examples (groups when present). The
//! interval is `δ ± t_{K−1}·se`, the p-value the matching two-sided t test: the interval is as
//! wide as K seeds warrant, and the dev-set term only widens it. (A percentile
//! bootstrap over seeds spans about `[min x_k, max x_k]` and gave 9.5–10.5% false VERIFIED
//! verdicts instead of ≤ 2.5% at K = 2–3 (`qattn verify calibrate` re-measures this; see
//! docs/verify.md.) It works for every metric because the bootstrap recomputes the metric.
//! `test = "welch"` instead uses Welch's t on the per-seed scores at level 1 − α (no dev-set
//! term, no pairing). CIs are not adjusted for multiplicity; p-values are (Holm by default).
//!
//! ## Power
//! For a claimed margin m > 0 the report gives the probability that the interval lies above 0
//! if the true advantage were m (`power`; seeds needed for `defaults.power`), and the
//! probability of REFUTED if there were no advantage (`refute_power`). VERIFIED needs the whole
//! interval at or above m, which a true advantage of exactly m reaches only with probability
//! about α/2 whatever the seeds, so every claim also gets the rule's minimum detectable effect
//! (`mde`): the true advantage at which VERIFIED has probability `defaults.power`.

mod study;

pub use study::{
    NoiseClaim, StudyClaimResult, StudyEvidence, VARIANCE_CLAIM_FAMILIES, VarianceClaim,
};

use crate::error::{Error, Result, invalid};
use crate::stats::effect::{cliffs_delta, cohens_d};
use crate::stats::hierarchical::{Design, hierarchical_test, seeds_needed_for, trivial_score};
use crate::stats::multiple::{Correction, benjamini_hochberg, holm};
use crate::stats::paired::{Metric, Outputs};
use crate::stats::seeds::welch_with_level;
use qattn_glue::metrics::record_f1_em;
use qattn_train::records::{Label, Prediction, RunRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The three verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Significant, positive, and the CI lies at or above the claimed margin.
    Verified,
    /// The CI lies below the claimed margin.
    Refuted,
    /// Neither.
    Inconclusive,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Verified => "VERIFIED",
            Verdict::Refuted => "REFUTED",
            Verdict::Inconclusive => "INCONCLUSIVE",
        })
    }
}

/// Which test decides a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimTest {
    /// Hierarchical paired bootstrap over seeds and dev examples (the default).
    #[default]
    Bootstrap,
    /// Welch's t on the per-seed scores.
    Welch,
}

/// Settings shared by every claim of a file (`[defaults]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Defaults {
    /// Significance level α.
    pub alpha: f64,
    /// Multiple-comparison correction across the claims that have data: holm, bh or none.
    pub correction: String,
    /// The deciding test.
    pub test: ClaimTest,
    /// Bootstrap rounds.
    pub resamples: usize,
    /// Seed of the bootstrap.
    pub seed: u64,
    /// Power target for the "seeds needed" column.
    pub power: f64,
    /// The claimed-better system when a claim does not name one.
    pub system: String,
    /// The baseline when a claim does not name one.
    pub baseline: String,
    /// A claim whose baseline scores more than this many points below its `claimed_baseline`
    /// is INCONCLUSIVE: the runs do not reproduce the claim's setting.
    pub max_baseline_shortfall: f64,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            alpha: 0.05,
            correction: "holm".into(),
            test: ClaimTest::Bootstrap,
            resamples: 5000,
            seed: 0,
            power: 0.8,
            system: "stratified:32".into(),
            baseline: "exact".into(),
            max_baseline_shortfall: 10.0,
        }
    }
}

/// One claim (`[[claim]]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// Short name used in the report.
    pub id: String,
    /// Task name as the run records spell it (`cola`, `sst2`, …, `synthetic-kv`).
    pub task: String,
    /// Metric name (`accuracy`, `f1`, `mcc`, `pearson`, `spearman`, `f1_macro`, `f1a`, `em`).
    pub metric: String,
    /// The system claimed to be better (an attention spec); default `[defaults] system`.
    #[serde(default)]
    pub system: Option<String>,
    /// The baseline (an attention spec); default `[defaults] baseline`.
    #[serde(default)]
    pub baseline: Option<String>,
    /// The claimed score of `system`, in points (metric × 100), for the report.
    #[serde(default)]
    pub claimed: Option<f64>,
    /// The claimed score of `baseline`, in points.
    #[serde(default)]
    pub claimed_baseline: Option<f64>,
    /// The claimed margin in points; default `claimed − claimed_baseline`, else 0 ("beats").
    #[serde(default)]
    pub min_delta: Option<f64>,
    /// The claim in words.
    #[serde(default)]
    pub text: Option<String>,
}

impl Claim {
    /// The claimed margin in points.
    pub fn margin_points(&self) -> f64 {
        self.min_delta
            .unwrap_or(match (self.claimed, self.claimed_baseline) {
                (Some(a), Some(b)) => a - b,
                _ => 0.0,
            })
    }
}

/// A claims file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsFile {
    /// Shared settings.
    #[serde(default)]
    pub defaults: Defaults,
    /// The claims decided from run records.
    #[serde(default, rename = "claim")]
    pub claims: Vec<Claim>,
    /// Variance-reduction claims, decided from an estimator study ([`study`] module docs).
    #[serde(default, rename = "variance_claim")]
    pub variance_claims: Vec<VarianceClaim>,
    /// Noise-sweep claims, decided from an estimator study.
    #[serde(default, rename = "noise_claim")]
    pub noise_claims: Vec<NoiseClaim>,
}

impl ClaimsFile {
    /// One "`system` beats `baseline` on `task`'s `metric`" claim (margin 0) per system, as
    /// `qattn compare` asks it.
    pub fn beats(task: &str, metric: &str, baseline: &str, systems: &[String]) -> Self {
        ClaimsFile {
            defaults: Defaults {
                baseline: baseline.to_string(),
                ..Defaults::default()
            },
            claims: systems
                .iter()
                .map(|s| Claim {
                    id: format!("{s} beats {baseline}"),
                    task: task.to_string(),
                    metric: metric.to_string(),
                    system: Some(s.clone()),
                    baseline: None,
                    claimed: None,
                    claimed_baseline: None,
                    min_delta: Some(0.0),
                    text: None,
                })
                .collect(),
            ..ClaimsFile::default()
        }
    }

    /// "`s` beats `baseline`" on each of `tasks` for every `s` in `systems` (tasks outer). With
    /// one task the ids are those of [`ClaimsFile::beats`]; with several each id ends in
    /// " on TASK".
    pub fn beats_on(tasks: &[String], metric: &str, baseline: &str, systems: &[String]) -> Self {
        let mut file = ClaimsFile::beats("", metric, baseline, systems);
        file.claims = tasks
            .iter()
            .flat_map(|t| {
                ClaimsFile::beats(t, metric, baseline, systems)
                    .claims
                    .into_iter()
                    .map(move |mut c| {
                        if tasks.len() > 1 {
                            c.id = format!("{} on {t}", c.id);
                        }
                        c
                    })
            })
            .collect();
        file
    }

    /// Whether the file has `[[claim]]` entries (decided from run records).
    pub fn has_run_claims(&self) -> bool {
        !self.claims.is_empty()
    }

    /// Parses TOML text; `source` names the file in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let file: ClaimsFile =
            toml::from_str(text).map_err(|e| invalid(format!("{source}: {e}")))?;
        file.validate(source)?;
        Ok(file)
    }

    /// Reads and validates a claims file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn validate(&self, source: &str) -> Result<()> {
        let d = &self.defaults;
        if !(d.alpha > 0.0 && d.alpha < 1.0) {
            return Err(invalid(format!(
                "{source}: defaults.alpha = {} must be in (0, 1)",
                d.alpha
            )));
        }
        if !(d.power > 0.0 && d.power < 1.0) {
            return Err(invalid(format!(
                "{source}: defaults.power = {} must be in (0, 1)",
                d.power
            )));
        }
        if d.resamples < 100 {
            return Err(invalid(format!(
                "{source}: defaults.resamples = {} is too few (at least 100)",
                d.resamples
            )));
        }
        if !(d.max_baseline_shortfall.is_finite() && d.max_baseline_shortfall >= 0.0) {
            return Err(invalid(format!(
                "{source}: defaults.max_baseline_shortfall = {} must be a finite number of \
                 points ≥ 0",
                d.max_baseline_shortfall
            )));
        }
        d.correction.parse::<Correction>().map_err(|_| {
            invalid(format!(
                "{source}: defaults.correction = {:?}: expected holm, bh or none",
                d.correction
            ))
        })?;
        if self.claims.is_empty() && self.variance_claims.is_empty() && self.noise_claims.is_empty()
        {
            return Err(invalid(format!(
                "{source}: no [[claim]], [[variance_claim]] or [[noise_claim]] entries"
            )));
        }
        study::validate(&self.variance_claims, &self.noise_claims, source)?;
        let mut seen = std::collections::BTreeSet::new();
        for id in self
            .variance_claims
            .iter()
            .map(|c| &c.id)
            .chain(self.noise_claims.iter().map(|c| &c.id))
        {
            if !seen.insert(id.as_str()) {
                return Err(invalid(format!("{source}: duplicate claim id {id:?}")));
            }
        }
        for (i, c) in self.claims.iter().enumerate() {
            let at = format!("{source}: claim #{} ({:?})", i + 1, c.id);
            if !seen.insert(c.id.as_str()) {
                return Err(invalid(format!("{at}: duplicate id")));
            }
            c.metric
                .parse::<Metric>()
                .map_err(|e| invalid(format!("{at}: {e}")))?;
            if !c.margin_points().is_finite() {
                return Err(invalid(format!("{at}: the claimed margin is not finite")));
            }
        }
        Ok(())
    }
}

/// Per-system summary in a claim's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SystemSummary {
    /// Attention spec.
    pub attention: String,
    /// Seeds found.
    pub seeds: Vec<u64>,
    /// Metric per seed (fraction), in seed order.
    pub scores: Vec<f64>,
    /// Mean over seeds.
    pub mean: Option<f64>,
    /// Sample standard deviation over seeds (n ≥ 2).
    pub sd: Option<f64>,
    /// Whether these runs' mean score lies above the trivial predictor's beyond the dev set's
    /// sampling noise ([`crate::stats::Level::above`], the claims' level); `None` when not
    /// tested.
    #[serde(default)]
    pub learned: Option<bool>,
    /// `"ceiling"` / `"floor"` when every run scored the metric's largest / smallest value: a
    /// bound hides differences, so it is flagged instead of being read as evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<String>,
}

/// The outcome of one claim.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimResult {
    /// The claim as given.
    pub claim: Claim,
    /// Claimed margin (metric units, i.e. points / 100).
    pub margin: f64,
    /// The claimed-better system.
    pub system: SystemSummary,
    /// The baseline.
    pub baseline: SystemSummary,
    /// Dev examples paired per run.
    pub dev_examples: usize,
    /// The deciding test.
    pub test: String,
    /// Measured δ = mean(system) − mean(baseline).
    pub delta: Option<f64>,
    /// CI of δ.
    pub ci_low: Option<f64>,
    /// CI of δ.
    pub ci_high: Option<f64>,
    /// CI level.
    pub ci_level: f64,
    /// Standard error of δ (the deciding test's; `None` when it is 0).
    #[serde(default)]
    pub se: Option<f64>,
    /// Degrees of freedom of the deciding test's t quantile.
    #[serde(default)]
    pub df: Option<f64>,
    /// Sample variance of the per-seed differences (seed level).
    #[serde(default)]
    pub var_seed: Option<f64>,
    /// Shared dev-set variance of δ (does not shrink with more seeds).
    #[serde(default)]
    pub var_dev: Option<f64>,
    /// Unadjusted two-sided p-value.
    pub p_value: Option<f64>,
    /// p-value after the correction across the claims with data.
    pub p_adjusted: Option<f64>,
    /// Welch's t p-value on the per-seed scores (always reported next to the deciding test).
    pub welch_p: Option<f64>,
    /// Cohen's d of the per-seed scores (pooled SD; ≥ 2 seeds per system, not both constant).
    pub cohens_d: Option<f64>,
    /// Cliff's delta of the per-seed scores.
    pub cliffs_delta: Option<f64>,
    /// The best constant predictor's score on the dev set (the trivial baseline).
    #[serde(default)]
    pub trivial: Option<f64>,
    /// For a claimed margin m > 0: the probability that the deciding interval lies above 0
    /// (an advantage is found) if the true advantage is m, with these seeds and the observed
    /// variance components (seed level and dev set).
    pub power: Option<f64>,
    /// For m > 0: the probability of REFUTED if there is no advantage at all (true δ = 0).
    #[serde(default)]
    pub refute_power: Option<f64>,
    /// Minimum detectable effect of the verdict rule: the true advantage at which VERIFIED
    /// (whole interval ≥ max(m, 0)) has probability `defaults.power`, before the correction.
    #[serde(default)]
    pub mde: Option<f64>,
    /// Seeds per system for which [`ClaimResult::power`] reaches `defaults.power` (None: more
    /// than 1000, the shared dev-set variance alone prevents it, or m ≤ 0).
    pub seeds_needed: Option<usize>,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in words.
    pub reason: String,
}

/// A whole evaluation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimsReport {
    /// Settings used.
    pub defaults: Defaults,
    /// Run records read.
    pub records: usize,
    /// One result per run-record claim, in file order.
    pub results: Vec<ClaimResult>,
    /// The estimator study the variance and noise claims were decided from, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study: Option<String>,
    /// One result per variance claim and shot count, then per noise claim, in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub study_results: Vec<StudyClaimResult>,
}

/// The runs of one (task, attention), keyed by seed.
type Runs<'a> = BTreeMap<u64, &'a RunRecord>;

/// A task name in canonical form: the GLUE/SuperGLUE command-line name when it is one
/// (`SST-2` → `sst2`), else lower-cased (`synthetic-kv`).
fn canonical_task(task: &str) -> String {
    qattn_glue::tasks::Task::from_name(task)
        .map(|t| t.name().to_string())
        .unwrap_or_else(|_| task.trim().to_ascii_lowercase())
}

fn runs_of<'a>(records: &'a [RunRecord], task: &str, attention: &str) -> Runs<'a> {
    let task = canonical_task(task);
    records
        .iter()
        .filter(|r| canonical_task(&r.task) == task && r.attention.trim() == attention.trim())
        .map(|r| (r.seed, r))
        .collect()
}

/// Per-example outputs of a run record, as the paired tests read them; the examples' groups
/// when every scored example has one (MultiRC questions: resampled as clusters, `em` per group).
pub fn outputs_of(record: &RunRecord) -> Outputs {
    let mut out = Outputs {
        ids: Vec::with_capacity(record.predictions.len()),
        pred: Vec::with_capacity(record.predictions.len()),
        gold: Vec::with_capacity(record.predictions.len()),
        group: None,
    };
    let mut groups = Vec::with_capacity(record.predictions.len());
    for p in &record.predictions {
        let Some(gold) = p.gold else { continue };
        out.ids.push(p.id.clone());
        out.pred.push(match p.pred {
            Prediction::Class(c) => c as f64,
            Prediction::Score(s) => s,
        });
        out.gold.push(match gold {
            Label::Class(c) => c as f64,
            Label::Score(s) => s,
        });
        groups.push(p.group.clone());
    }
    if !groups.is_empty() && groups.iter().all(Option::is_some) {
        out.group = Some(groups.into_iter().flatten().collect());
    }
    out
}

/// ReCoRD's official per-query scores as outputs for [`Metric::Mean`]: one entry per query (its
/// group), `pred` = the token F1 (`em = false`) or exact match of the chosen candidate's entity
/// against the query's gold answers, maximised over the answers ([`record_f1_em`]); a query
/// with no chosen candidate scores 0.
///
/// Errors name the record and the query whose group, entity or answers are missing (records
/// written before run records carried them).
pub fn record_outputs(record: &RunRecord, em: bool) -> Result<Outputs> {
    let mut queries: BTreeMap<&str, (Option<&str>, &[String])> = BTreeMap::new();
    let at = |id: &str, what: &str| {
        invalid(format!(
            "run {} seed {}: ReCoRD example {id} has no {what} (records written by an older \
             qattn lack it; re-run to score ReCoRD's f1/em)",
            record.attention, record.seed
        ))
    };
    for p in &record.predictions {
        if p.gold.is_none() {
            continue;
        }
        let q = p
            .group
            .as_deref()
            .ok_or_else(|| at(&p.id, "group (query)"))?;
        let answers = p
            .answers
            .as_deref()
            .ok_or_else(|| at(&p.id, "gold answers"))?;
        let slot = queries.entry(q).or_insert((None, answers));
        if matches!(p.pred, Prediction::Class(1)) {
            slot.0 = Some(p.entity.as_deref().ok_or_else(|| at(&p.id, "entity"))?);
        }
    }
    let mut out = Outputs::default();
    for (q, (chosen, answers)) in queries {
        let (f1, exact) = chosen.map_or((0.0, 0.0), |c| record_f1_em(c, answers));
        out.ids.push(q.to_string());
        out.pred.push(if em { exact } else { f1 });
        out.gold.push(1.0);
    }
    Ok(out)
}

/// Whether a claim's metric is ReCoRD's per-query `f1`/`em` ([`record_outputs`]).
fn is_record_score(task: &str, metric: Metric) -> bool {
    canonical_task(task) == "record" && matches!(metric, Metric::F1 | Metric::Em)
}

/// The outputs a claim's metric reads from a record.
fn claim_outputs(task: &str, metric: Metric, record: &RunRecord) -> Result<Outputs> {
    if is_record_score(task, metric) {
        record_outputs(record, metric == Metric::Em)
    } else {
        Ok(outputs_of(record))
    }
}

/// Puts every run's outputs in the order of the first run's ids; errors name the run whose
/// dev set differs (the paired tests need the same examples everywhere).
fn aligned(runs: &[(&str, u64, &RunRecord)], task: &str, metric: Metric) -> Result<Vec<Outputs>> {
    let mut outs: Vec<Outputs> = runs
        .iter()
        .map(|(_, _, r)| claim_outputs(task, metric, r))
        .collect::<Result<_>>()?;
    let Some(first) = outs.first() else {
        return Ok(outs);
    };
    let order = first.ids.clone();
    let first_group = first.group.clone();
    let index: std::collections::BTreeSet<String> = order.iter().cloned().collect();
    for (k, o) in outs.iter_mut().enumerate().skip(1) {
        let (att, seed, _) = runs[k];
        if o.ids.len() != order.len() || o.ids.iter().any(|id| !index.contains(id)) {
            return Err(invalid(format!(
                "run {att} seed {seed} was scored on different dev examples than {} seed {} \
                 ({} vs {} examples); paired tests need the same dev set",
                runs[0].0,
                runs[0].1,
                o.ids.len(),
                order.len()
            )));
        }
        let pos: BTreeMap<&str, usize> = o
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let perm: Vec<usize> = order.iter().map(|id| pos[id.as_str()]).collect();
        let group = match (&first_group, &o.group) {
            (Some(g0), Some(g)) => {
                if let Some(j) = perm.iter().enumerate().position(|(i, &p)| g[p] != g0[i]) {
                    return Err(invalid(format!(
                        "run {att} seed {seed} puts example {} in group {:?}, {} seed {} in {:?}",
                        order[j], g[perm[j]], runs[0].0, runs[0].1, g0[j]
                    )));
                }
                Some(g0.clone())
            }
            _ => None,
        };
        *o = Outputs {
            ids: order.clone(),
            pred: perm.iter().map(|&i| o.pred[i]).collect(),
            gold: perm.iter().map(|&i| o.gold[i]).collect(),
            group,
        };
    }
    // Groups decide the resampling unit: use them only when every run has the same ones.
    if outs.iter().any(|o| o.group.is_none()) {
        for o in &mut outs {
            o.group = None;
        }
    }
    Ok(outs)
}

fn summary(attention: &str, runs: &Runs<'_>, scores: Vec<f64>, metric: Metric) -> SystemSummary {
    let n = scores.len() as f64;
    let (lo, hi) = metric.bounds();
    let all = |b: f64| !scores.is_empty() && scores.iter().all(|x| (x - b).abs() <= 1e-12);
    let bound = if all(hi) {
        Some("ceiling".to_string())
    } else if all(lo) {
        Some("floor".to_string())
    } else {
        None
    };
    let mean = (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / n);
    let sd = mean
        .filter(|_| scores.len() >= 2)
        .map(|m| (scores.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    SystemSummary {
        attention: attention.to_string(),
        seeds: runs.keys().copied().collect(),
        scores,
        mean,
        sd,
        learned: None,
        bound,
    }
}

/// What the deciding test gives one claim, before the correction and the verdict.
struct Tested {
    ci: Option<(f64, f64)>,
    p: Option<f64>,
    /// The design the power figures are computed for.
    design: Option<Design>,
}

/// Runs the claim's test on the aligned outputs (`outs[..k]` system, `outs[k..]` baseline) and
/// fills in the effect sizes, the learned checks and the power figures of `res`.
fn test_claim(
    res: &mut ClaimResult,
    d: &Defaults,
    metric: Metric,
    outs: &[Outputs],
    k: usize,
    seed: u64,
) -> Result<Tested> {
    let ci_level = res.ci_level;
    let (sys_scores, base_scores) = (&res.system.scores, &res.baseline.scores);
    res.cohens_d = cohens_d(sys_scores, base_scores)
        .ok()
        .filter(|d| d.is_finite());
    res.cliffs_delta = cliffs_delta(sys_scores, base_scores).ok();
    if let Ok(w) = welch_with_level(sys_scores, base_scores, ci_level) {
        res.welch_p = Some(w.p_value).filter(|p| p.is_finite());
    }
    let h = hierarchical_test(metric, &outs[..k], &outs[k..], d.resamples, seed)?;
    res.se = Some(h.delta.se).filter(|s| *s > 0.0);
    res.df = Some(h.delta.df);
    res.var_seed = Some(h.delta.var_seed);
    res.var_dev = Some(h.delta.var_dev);
    // Did the runs learn? Each system's mean score against the best constant predictor.
    let trivial = trivial_score(metric, &outs[k])?;
    res.trivial = Some(trivial);
    res.system.learned = Some(h.a.above(trivial, ci_level)?);
    res.baseline.learned = Some(h.b.above(trivial, ci_level)?);
    let mut tested = match d.test {
        ClaimTest::Bootstrap => Tested {
            ci: h.delta.interval(ci_level)?,
            p: h.delta.p_value(),
            design: Some(h.delta.design(k)),
        },
        ClaimTest::Welch => {
            let w = welch_with_level(sys_scores, base_scores, ci_level)?;
            let (sa, sb) = (res.system.sd.unwrap_or(0.0), res.baseline.sd.unwrap_or(0.0));
            Tested {
                ci: w.ci_low.zip(w.ci_high).filter(|(lo, hi)| hi > lo),
                p: Some(w.p_value).filter(|p| p.is_finite()),
                // Welch's interval has no dev-set term: the seed level is sd_a² + sd_b².
                design: Some(Design {
                    var_seed: sa * sa + sb * sb,
                    var_dev: 0.0,
                    k,
                }),
            }
        }
    };
    if let Some(design) = tested.design {
        let m = res.margin;
        let threshold = m.max(0.0);
        match design.detectable(threshold, ci_level, d.power) {
            Ok(mde) => res.mde = Some(mde),
            Err(_) => tested.design = None,
        }
        if m > 0.0 {
            res.power = design.prob_lower_above(0.0, m, ci_level).ok();
            res.refute_power = design.prob_upper_below(m, 0.0, ci_level).ok();
            res.seeds_needed = seeds_needed_for(design, m, ci_level, d.power, 1000);
        }
    }
    Ok(tested)
}

/// Evaluates every claim against `records`.
///
/// A claim that cannot be tested (no paired records, one seed, a metric that needs question
/// groups the records lack, runs scored on different dev sets, …) is INCONCLUSIVE with the
/// reason; it never aborts the others.
pub fn evaluate(file: &ClaimsFile, records: &[RunRecord]) -> Result<ClaimsReport> {
    evaluate_with_study(file, records, None)
}

/// [`evaluate`], with the file's `[[variance_claim]]` and `[[noise_claim]]` entries decided
/// from `study` (a `qattn verify estimators` report; `None`: they are INCONCLUSIVE for want of
/// evidence). All p-values share one correction.
pub fn evaluate_with_study(
    file: &ClaimsFile,
    records: &[RunRecord],
    study: Option<&StudyEvidence>,
) -> Result<ClaimsReport> {
    let d = &file.defaults;
    let ci_level = 1.0 - d.alpha;
    let mut results = Vec::with_capacity(file.claims.len());
    let mut p_raw: Vec<Option<f64>> = Vec::with_capacity(file.claims.len());
    let mut intervals: Vec<Option<(f64, f64)>> = Vec::with_capacity(file.claims.len());
    for (ci, claim) in file.claims.iter().enumerate() {
        let metric: Metric = claim.metric.parse()?;
        let sys_name = claim.system.clone().unwrap_or_else(|| d.system.clone());
        let base_name = claim.baseline.clone().unwrap_or_else(|| d.baseline.clone());
        let sys_runs = runs_of(records, &claim.task, &sys_name);
        let base_runs = runs_of(records, &claim.task, &base_name);
        let margin = claim.margin_points() / 100.0;
        // Seeds present for both systems are paired; the rest are reported but unused.
        let paired: Vec<u64> = sys_runs
            .keys()
            .filter(|s| base_runs.contains_key(s))
            .copied()
            .collect();
        let mut res = ClaimResult {
            claim: claim.clone(),
            margin,
            system: summary(&sys_name, &sys_runs, Vec::new(), metric),
            baseline: summary(&base_name, &base_runs, Vec::new(), metric),
            dev_examples: 0,
            test: match d.test {
                ClaimTest::Bootstrap => {
                    "hierarchical: t on per-seed differences + dev-set bootstrap variance".into()
                }
                ClaimTest::Welch => "welch t (per-seed scores)".into(),
            },
            delta: None,
            ci_low: None,
            ci_high: None,
            ci_level,
            se: None,
            df: None,
            var_seed: None,
            var_dev: None,
            p_value: None,
            p_adjusted: None,
            welch_p: None,
            cohens_d: None,
            cliffs_delta: None,
            trivial: None,
            power: None,
            refute_power: None,
            mde: None,
            seeds_needed: None,
            verdict: Verdict::Inconclusive,
            reason: String::new(),
        };
        let k = paired.len();
        let outcome = (|| -> Result<Option<Tested>> {
            if k == 0 {
                res.reason = format!(
                    "no paired run records: {} run(s) of {sys_name} and {} of {base_name} for \
                     task {} with common seeds",
                    sys_runs.len(),
                    base_runs.len(),
                    claim.task
                );
                return Ok(None);
            }
            let mut all: Vec<(&str, u64, &RunRecord)> = Vec::new();
            for &s in &paired {
                all.push((sys_name.as_str(), s, sys_runs[&s]));
            }
            for &s in &paired {
                all.push((base_name.as_str(), s, base_runs[&s]));
            }
            let outs = aligned(&all, &claim.task, metric)?;
            // ReCoRD's f1/em are per-query scores (the official max-over-answers token F1).
            let metric = if is_record_score(&claim.task, metric) {
                Metric::Mean
            } else {
                metric
            };
            let identity: Vec<usize> = (0..outs[0].ids.len()).collect();
            let score = |o: &Outputs| metric.compute(o, &identity);
            let sys_scores = outs[..k].iter().map(score).collect::<Result<Vec<_>>>()?;
            let base_scores = outs[k..].iter().map(score).collect::<Result<Vec<_>>>()?;
            let paired_runs: Runs<'_> = paired.iter().map(|&s| (s, sys_runs[&s])).collect();
            res.system = summary(&sys_name, &paired_runs, sys_scores, metric);
            let paired_runs: Runs<'_> = paired.iter().map(|&s| (s, base_runs[&s])).collect();
            res.baseline = summary(&base_name, &paired_runs, base_scores, metric);
            res.dev_examples = identity.len();
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            res.delta = Some(mean(&res.system.scores) - mean(&res.baseline.scores));
            if k < 2 {
                res.reason = format!(
                    "only {k} paired seed per system: seed-to-seed variation cannot be \
                     estimated, so no interval can account for it (run ≥ 2 seeds, 5 or more for \
                     useful power)"
                );
                return Ok(None);
            }
            test_claim(
                &mut res,
                d,
                metric,
                &outs,
                k,
                d.seed.wrapping_add(ci as u64),
            )
            .map(Some)
        })();
        match outcome {
            Ok(Some(t)) => {
                p_raw.push(t.p);
                intervals.push(t.ci);
            }
            Ok(None) => {
                p_raw.push(None);
                intervals.push(None);
            }
            Err(e) => {
                res.reason = format!("the claim could not be tested: {e}");
                p_raw.push(None);
                intervals.push(None);
            }
        }
        if let Some((lo, hi)) = intervals[ci] {
            res.ci_low = Some(lo);
            res.ci_high = Some(hi);
        }
        res.p_value = p_raw[ci];
        results.push(res);
    }
    let mut study_results =
        study::evaluate(&file.variance_claims, &file.noise_claims, study, d.alpha);
    // Correct the p-values of the claims that have one, run-record and study claims together.
    let ps: Vec<f64> = results
        .iter()
        .filter_map(|r| r.p_value)
        .chain(study_results.iter().filter_map(|r| r.p_value))
        .collect();
    let mut adjusted = match d.correction.parse::<Correction>()? {
        Correction::Holm => holm(&ps),
        Correction::Bh => benjamini_hochberg(&ps),
        Correction::None => ps.clone(),
    }
    .into_iter();
    for r in &mut results {
        if r.p_value.is_some() {
            r.p_adjusted = adjusted.next();
        }
    }
    for r in &mut study_results {
        if r.p_value.is_some() {
            r.p_adjusted = adjusted.next();
        }
    }
    for r in &mut results {
        decide(r, d);
    }
    for r in &mut study_results {
        study::decide(r, d.alpha);
    }
    Ok(ClaimsReport {
        defaults: d.clone(),
        records: records.len(),
        results,
        study: study.map(StudyEvidence::describe),
        study_results,
    })
}

/// A p-value with three significant digits.
fn p_text(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else {
        format!("{p:.2e}")
    }
}

fn pts(x: f64) -> String {
    format!("{:+.2}", 100.0 * x)
}

/// Applies the verdict rule of the module docs, then flags systems whose every run sits at
/// the metric's bound.
fn decide(r: &mut ClaimResult, d: &Defaults) {
    decide_rule(r, d);
    let at_bound: Vec<String> = [&r.system, &r.baseline]
        .iter()
        .filter_map(|s| {
            s.bound
                .as_ref()
                .map(|b| format!("every run of {} is at the metric's {b}", s.attention))
        })
        .collect();
    if !at_bound.is_empty() {
        r.reason.push_str(&format!(
            "; note: {}: a bound hides how much better a system could be, so it is flagged, \
             not read as evidence (make the task harder or the budget smaller)",
            at_bound.join(" and ")
        ));
    }
}

/// The verdict rule of the module docs.
fn decide_rule(r: &mut ClaimResult, d: &Defaults) {
    let alpha = d.alpha;
    let (Some(delta), Some(lo), Some(hi), Some(p)) = (r.delta, r.ci_low, r.ci_high, r.p_adjusted)
    else {
        if r.reason.is_empty() {
            r.reason = match r.delta {
                Some(delta) => format!(
                    "zero-width interval: every seed gave the same difference (δ = {} points) and \
                     resampling the dev set adds no variance (identical or constant outputs); \
                     that says nothing about which system is better",
                    pts(delta)
                ),
                None => "no test could be run".into(),
            };
        }
        return;
    };
    let m = r.margin;
    let ci = format!(
        "{}% CI [{}, {}] points",
        (100.0 * r.ci_level).round(),
        pts(lo),
        pts(hi)
    );
    let power = power_text(r, d.power);
    // Runs that did not learn cannot decide a claim about attention.
    if r.baseline.learned == Some(false) {
        r.reason = format!(
            "the baseline {} did not clearly beat the trivial predictor ({:.1} ± {} vs {:.1} \
             points for the best constant prediction): a recipe that does not learn cannot \
             decide a claim about attention; measured δ = {} points, {ci}",
            r.baseline.attention,
            100.0 * r.baseline.mean.unwrap_or(f64::NAN),
            r.baseline
                .sd
                .map_or("–".to_string(), |s| format!("{:.1}", 100.0 * s)),
            100.0 * r.trivial.unwrap_or(f64::NAN),
            pts(delta)
        );
        return;
    }
    if let (Some(claimed), Some(mean)) = (r.claim.claimed_baseline, r.baseline.mean) {
        let shortfall = claimed - 100.0 * mean;
        if shortfall > d.max_baseline_shortfall {
            r.reason = format!(
                "the baseline {} scored {:.1} points, {:.1} below the claim's baseline of \
                 {claimed:.1} (more than defaults.max_baseline_shortfall = {}): these runs do not \
                 reproduce the setting the claim was made in; measured δ = {} points, {ci}",
                r.baseline.attention,
                100.0 * mean,
                shortfall,
                d.max_baseline_shortfall,
                pts(delta)
            );
            return;
        }
    }
    if p < alpha && delta > 0.0 && lo >= m && lo > 0.0 {
        r.verdict = Verdict::Verified;
        r.reason = format!(
            "{} beats {} by {} points (adjusted p = {}); {ci} ≥ claimed margin {}",
            r.system.attention,
            r.baseline.attention,
            pts(delta),
            p_text(p),
            pts(m)
        );
    } else if hi < m {
        r.verdict = Verdict::Refuted;
        r.reason = if m == 0.0 {
            format!(
                "measured δ = {} points; {ci} lies below 0: {} is worse than {}",
                pts(delta),
                r.system.attention,
                r.baseline.attention
            )
        } else {
            format!(
                "measured δ = {} points; {ci} lies below the claimed margin {}",
                pts(delta),
                pts(m)
            )
        };
    } else {
        r.verdict = Verdict::Inconclusive;
        r.reason = format!(
            "measured δ = {} points (adjusted p = {}); {ci} contains the claimed margin {}{power}",
            pts(delta),
            p_text(p),
            pts(m)
        );
    }
    if r.system.learned == Some(false) {
        r.reason.push_str(&format!(
            "; note: {} did not clearly beat the trivial predictor",
            r.system.attention
        ));
    }
}

/// The power sentence of a reason: what the design could have found.
fn power_text(r: &ClaimResult, target: f64) -> String {
    let mut s = String::new();
    let k = r.system.scores.len();
    if let Some(pw) = r.power {
        s.push_str(&format!(
            "; with {k} seeds the chance to find an advantage (CI above 0) if it were as large \
             as claimed is {pw:.2}"
        ));
        match r.seeds_needed {
            Some(n) => s.push_str(&format!(" ({n} seeds/system for {:.0}%)", 100.0 * target)),
            None => s.push_str(&format!(
                " (no number of seeds up to 1000 reaches {:.0}%: the dev set limits it)",
                100.0 * target
            )),
        }
    }
    if let Some(mde) = r.mde {
        s.push_str(&format!(
            "; VERIFIED with {:.0}% probability needs a true advantage of {} points",
            100.0 * target,
            pts(mde)
        ));
    }
    s
}

/// The report as Markdown (one table plus the settings and the command).
pub fn to_markdown(report: &ClaimsReport, command: &str) -> String {
    let d = &report.defaults;
    let mut s = String::new();
    s.push_str("# Claims report\n\n");
    s.push_str(&format!(
        "Regenerate: `{command}` (written by qattn {})\n\nTest: {}; α = {}; correction: {}; {} resamples (seed {}); \
         CIs at {:.0}% (not adjusted for multiplicity). Scores in points (metric × 100); \
         mean ± sd over seeds. power: chance to find an advantage (CI above 0) if it were as large as \
         claimed; MDE: the true advantage at which VERIFIED has {:.0}% probability. {} run \
         records read.\n\n",
        qattn_train::provenance::BUILD.describe(),
        match d.test {
            ClaimTest::Bootstrap =>
                "t on the per-seed paired differences with the dev set's shared variance \
                 (bootstrap over dev examples), K − 1 df",
            ClaimTest::Welch => "Welch's t on per-seed scores",
        },
        d.alpha,
        d.correction,
        d.resamples,
        d.seed,
        100.0 * (1.0 - d.alpha),
        100.0 * d.power,
        report.records
    ));
    let f = |x: Option<f64>, scale: f64, prec: usize| {
        x.map_or("–".to_string(), |v| format!("{:.*}", prec, v * scale))
    };
    if !report.results.is_empty() {
        s.push_str(
            "| claim | task | metric | claimed | system (n) | baseline (n) | δ | CI | p | p adj | \
             Welch p | power | MDE | verdict |\n|---|---|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---|\n",
        );
    }
    for r in &report.results {
        let claimed = match (r.claim.claimed, r.claim.claimed_baseline) {
            (Some(a), Some(b)) => format!("{a:.1} vs {b:.1}"),
            _ => format!("≥ {:+.1}", r.claim.margin_points()),
        };
        let sys = |x: &SystemSummary| match x.mean {
            Some(m) => format!(
                "{} {:.1} ± {} ({})",
                x.attention,
                100.0 * m,
                f(x.sd, 100.0, 1),
                x.scores.len()
            ),
            None => format!("{} – (0)", x.attention),
        };
        let ci = match (r.ci_low, r.ci_high) {
            (Some(l), Some(h)) => format!("[{}, {}]", pts(l), pts(h)),
            _ => "–".into(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | **{}** |\n",
            r.claim.id,
            r.claim.task,
            r.claim.metric,
            claimed,
            sys(&r.system),
            sys(&r.baseline),
            r.delta.map_or("–".into(), pts),
            ci,
            f(r.p_value, 1.0, 4),
            f(r.p_adjusted, 1.0, 4),
            f(r.welch_p, 1.0, 4),
            f(r.power, 1.0, 2),
            r.mde.map_or("–".into(), pts),
            r.verdict
        ));
    }
    if !report.results.is_empty() {
        s.push_str(&format!(
            "\n## Effect sizes and seeds needed\n\nPer-seed scores of the paired runs: Cohen's d \
             (pooled SD) and Cliff's delta. Seeds needed: seeds per system for a {:.0}% chance \
             that the interval lies above 0 if the advantage were as large as claimed (claims \
             with a positive margin only).\n\n| claim | Cohen's d | Cliff's δ | seeds | seeds \
             needed |\n|---|---:|---:|---:|---:|\n",
            100.0 * d.power
        ));
        for r in &report.results {
            let needed = match (r.seeds_needed, r.power) {
                (Some(n), _) => n.to_string(),
                (None, Some(_)) => "> 1000 or never (the dev set limits it)".into(),
                (None, None) => "–".into(),
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.claim.id,
                f(r.cohens_d, 1.0, 2),
                f(r.cliffs_delta, 1.0, 2),
                r.system.scores.len(),
                needed
            ));
        }
    }
    if !report.study_results.is_empty() {
        s.push_str(&format!(
            "\n## Claims about the estimators\n\nDecided from the {}. Variance claims: δ = 1 − \
             variance ratio against multinomial sampling at the same S, 95% interval from the \
             cluster bootstrap over (head, sentence) clusters. Noise claims: δ = mean over seeds \
             of the baseline's minus the system's relative error ‖ô − o‖/‖o‖, t interval over \
             seeds. p-values join the correction above.\n\n| claim | system | baseline | \
             claimed δ ≥ | δ | CI | n | p | p adj | verdict |\n\
             |---|---|---|---:|---:|---|---:|---:|---:|---|\n",
            report
                .study
                .as_deref()
                .unwrap_or("estimator study (none given)")
        ));
        for r in &report.study_results {
            let ci = match (r.ci_low, r.ci_high) {
                (Some(l), Some(h)) => format!("[{l:+.4}, {h:+.4}]"),
                _ => "–".into(),
            };
            s.push_str(&format!(
                "| {} | `{}` | `{}` | {:.4} | {} | {} | {} {} | {} | {} | **{}** |\n",
                r.id,
                r.system,
                r.baseline,
                r.margin,
                r.delta.map_or("–".into(), |x| format!("{x:+.4}")),
                ci,
                r.n,
                r.unit,
                r.p_value.map_or("–".into(), p_text),
                r.p_adjusted.map_or("–".into(), p_text),
                r.verdict
            ));
        }
    }
    s.push_str("\n## Reasons\n\n");
    for r in &report.results {
        s.push_str(&format!(
            "- **{}** — {}: {}\n",
            r.claim.id, r.verdict, r.reason
        ));
    }
    for r in &report.study_results {
        let text = r
            .text
            .as_deref()
            .map_or(String::new(), |t| format!(" (\"{t}\")"));
        s.push_str(&format!(
            "- **{}**{text} — {}: {}\n",
            r.id, r.verdict, r.reason
        ));
    }
    s
}

/// Counts of each verdict.
pub fn tally(report: &ClaimsReport) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    let verdicts = report.results.iter().map(|r| r.verdict);
    for v in verdicts.chain(report.study_results.iter().map(|r| r.verdict)) {
        *t.entry(v.to_string()).or_insert(0) += 1;
    }
    t
}

/// Writes `claims-report.md` and `claims-report.json` into `out_dir` (created if needed), each
/// atomically; returns the paths.
pub fn write_report(
    report: &ClaimsReport,
    out_dir: &Path,
    command: &str,
) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(out_dir).map_err(|source| Error::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let md = out_dir.join("claims-report.md");
    let json = out_dir.join("claims-report.json");
    qattn_model::io::write_atomic(&md, to_markdown(report, command).as_bytes())?;
    let mut value = serde_json::to_value(report).map_err(|e| invalid(format!("report: {e}")))?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("command".into(), serde_json::Value::from(command));
        let build = qattn_train::provenance::BUILD;
        obj.insert("qattn_commit".into(), serde_json::Value::from(build.commit));
        obj.insert(
            "qattn_dirty".into(),
            serde_json::Value::from(build.dirty_flag()),
        );
        obj.insert(
            "tally".into(),
            serde_json::to_value(tally(report)).unwrap_or_default(),
        );
    }
    let text = serde_json::to_string_pretty(&value).map_err(|e| invalid(format!("report: {e}")))?;
    qattn_model::io::write_atomic(&json, format!("{text}\n").as_bytes())?;
    Ok(vec![md, json])
}
