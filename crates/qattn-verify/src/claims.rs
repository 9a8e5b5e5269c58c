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
//! - **REFUTED** — the confidence interval lies entirely below m: an advantage as large as
//!   claimed is ruled out by the data (at the CI's level). For a bare "beats" claim (m = 0) an
//!   interval whose upper end is 0 — no advantage anywhere in it — also refutes it.
//! - **INCONCLUSIVE** — everything else: the interval contains m, or there are no records for
//!   one of the systems. The report says why and how many seeds would give the test 80% power
//!   at the claimed margin and the observed seed-to-seed variance.
//!
//! ## The default test
//! The unit of replication is a fine-tuning run (a seed) and each run is scored on the same
//! dev examples, so the default test is a **hierarchical paired bootstrap**: each round
//! resamples seeds (with replacement, keeping A's and B's run of a seed together) and dev
//! examples (with replacement, the same indices for every run), and recomputes
//! δ* = mean over resampled seeds of M(A) − M(B) on the resampled examples. The CI is the
//! percentile interval of δ*; the two-sided p-value is the shifted-null bootstrap p,
//! (c + 1)/(N + 1) with c = #{ |δ* − δ| ≥ |δ| }. It accounts for both the seed variance and the
//! finite dev set, and works for every metric (MCC, F1, correlations) because it recomputes the
//! metric. `test = "welch"` instead uses Welch's t on the per-seed scores (CI from the t
//! distribution). CIs are not adjusted for multiplicity; p-values are (Holm by default).

use crate::error::{Error, Result, invalid};
use crate::stats::effect::{cliffs_delta, cohens_d};
use crate::stats::multiple::{Correction, benjamini_hochberg, holm};
use crate::stats::paired::{Metric, Outputs};
use crate::stats::power::{seeds_needed, welch_power};
use crate::stats::rng::Resampler;
use crate::stats::seeds::welch;
use qattn_glue::runner::{Prediction, RunRecord};
use qattn_glue::tasks::Label;
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
    /// The claims.
    #[serde(default, rename = "claim")]
    pub claims: Vec<Claim>,
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
        }
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
        d.correction.parse::<Correction>().map_err(|_| {
            invalid(format!(
                "{source}: defaults.correction = {:?}: expected holm, bh or none",
                d.correction
            ))
        })?;
        if self.claims.is_empty() {
            return Err(invalid(format!("{source}: no [[claim]] entries")));
        }
        let mut seen = std::collections::BTreeSet::new();
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
    /// Power of Welch's t at the claimed margin with these seeds and the observed variance.
    pub power: Option<f64>,
    /// Seeds per system for `defaults.power` at the claimed margin (None: > 1000 or unknown).
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
    /// One result per claim, in file order.
    pub results: Vec<ClaimResult>,
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

/// Per-example outputs of a run record, as the paired tests read them.
pub fn outputs_of(record: &RunRecord) -> Outputs {
    let mut out = Outputs {
        ids: Vec::with_capacity(record.predictions.len()),
        pred: Vec::with_capacity(record.predictions.len()),
        gold: Vec::with_capacity(record.predictions.len()),
        group: None,
    };
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
    }
    out
}

/// Puts every run's outputs in the order of the first run's ids; errors name the run whose
/// dev set differs (the paired tests need the same examples everywhere).
fn aligned(runs: &[(&str, u64, &RunRecord)]) -> Result<Vec<Outputs>> {
    let mut outs: Vec<Outputs> = runs.iter().map(|(_, _, r)| outputs_of(r)).collect();
    let Some(first) = outs.first() else {
        return Ok(outs);
    };
    let order = first.ids.clone();
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
        *o = Outputs {
            ids: order.clone(),
            pred: perm.iter().map(|&i| o.pred[i]).collect(),
            gold: perm.iter().map(|&i| o.gold[i]).collect(),
            group: None,
        };
    }
    Ok(outs)
}

fn summary(attention: &str, runs: &Runs<'_>, scores: Vec<f64>) -> SystemSummary {
    let n = scores.len() as f64;
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
    }
}

/// The hierarchical paired bootstrap of δ (see the module docs): (CI low, CI high, p).
pub fn hierarchical_bootstrap(
    metric: Metric,
    a: &[Outputs],
    b: &[Outputs],
    resamples: usize,
    seed: u64,
    ci_level: f64,
) -> Result<(f64, f64, f64)> {
    if a.len() != b.len() || a.is_empty() {
        return Err(invalid(
            "hierarchical bootstrap: needs the same number (≥ 1) of runs per system",
        ));
    }
    let n = a[0].ids.len();
    if n == 0 {
        return Err(invalid("hierarchical bootstrap: no dev examples"));
    }
    let identity: Vec<usize> = (0..n).collect();
    let mean_delta = |seeds: &[usize], idx: &[usize]| -> Result<f64> {
        let mut s = 0.0;
        for &k in seeds {
            s += metric.compute(&a[k], idx)? - metric.compute(&b[k], idx)?;
        }
        Ok(s / seeds.len() as f64)
    };
    let all: Vec<usize> = (0..a.len()).collect();
    let delta = mean_delta(&all, &identity)?;
    let mut rng = Resampler::new(seed);
    let mut deltas = Vec::with_capacity(resamples);
    let mut seeds = vec![0usize; a.len()];
    let mut idx = vec![0usize; n];
    for _ in 0..resamples {
        for s in seeds.iter_mut() {
            *s = rng.index(a.len());
        }
        for i in idx.iter_mut() {
            *i = rng.index(n);
        }
        deltas.push(mean_delta(&seeds, &idx)?);
    }
    let extreme = deltas
        .iter()
        .filter(|d| (*d - delta).abs() >= delta.abs())
        .count();
    let p = (extreme as f64 + 1.0) / (resamples as f64 + 1.0);
    let (lo, hi) = crate::stats::percentile_interval(&deltas, ci_level)?;
    Ok((lo, hi, p))
}

/// Evaluates every claim against `records`.
pub fn evaluate(file: &ClaimsFile, records: &[RunRecord]) -> Result<ClaimsReport> {
    let d = &file.defaults;
    let ci_level = 1.0 - d.alpha;
    let mut results = Vec::with_capacity(file.claims.len());
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
        let mut all: Vec<(&str, u64, &RunRecord)> = Vec::new();
        for &s in &paired {
            all.push((sys_name.as_str(), s, sys_runs[&s]));
        }
        for &s in &paired {
            all.push((base_name.as_str(), s, base_runs[&s]));
        }
        let outs = aligned(&all)?;
        let identity: Vec<usize> = (0..outs.first().map_or(0, |o| o.ids.len())).collect();
        let score = |o: &Outputs| metric.compute(o, &identity);
        let k = paired.len();
        let sys_scores = outs[..k].iter().map(score).collect::<Result<Vec<_>>>()?;
        let base_scores = outs[k..].iter().map(score).collect::<Result<Vec<_>>>()?;
        let system = summary(&sys_name, &sys_runs, sys_scores.clone());
        let baseline = summary(&base_name, &base_runs, base_scores.clone());
        let mut res = ClaimResult {
            claim: claim.clone(),
            margin,
            system,
            baseline,
            dev_examples: identity.len(),
            test: match d.test {
                ClaimTest::Bootstrap => "hierarchical paired bootstrap (seeds × examples)".into(),
                ClaimTest::Welch => "welch t (per-seed scores)".into(),
            },
            delta: None,
            ci_low: None,
            ci_high: None,
            ci_level,
            p_value: None,
            p_adjusted: None,
            welch_p: None,
            cohens_d: None,
            cliffs_delta: None,
            power: None,
            seeds_needed: None,
            verdict: Verdict::Inconclusive,
            reason: String::new(),
        };
        if k == 0 {
            res.reason = format!(
                "no paired run records: {} run(s) of {sys_name} and {} of {base_name} for task {} \
                 with common seeds",
                sys_runs.len(),
                base_runs.len(),
                claim.task
            );
            results.push(res);
            continue;
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        res.delta = Some(mean(&sys_scores) - mean(&base_scores));
        res.cliffs_delta = cliffs_delta(&sys_scores, &base_scores).ok();
        if k >= 2 {
            res.cohens_d = cohens_d(&sys_scores, &base_scores)
                .ok()
                .filter(|d| d.is_finite());
            match welch(&sys_scores, &base_scores) {
                Ok(w) => {
                    res.welch_p = Some(w.p_value).filter(|p| p.is_finite());
                    if d.test == ClaimTest::Welch {
                        res.p_value = res.welch_p;
                        res.ci_low = w.ci_low;
                        res.ci_high = w.ci_high;
                    }
                }
                Err(e) => res.reason = format!("welch: {e}; "),
            }
            let (sa, sb) = (res.system.sd.unwrap_or(0.0), res.baseline.sd.unwrap_or(0.0));
            if margin != 0.0 {
                res.power = welch_power(margin, sa, sb, k, d.alpha).ok();
                res.seeds_needed = seeds_needed(margin, sa, sb, d.alpha, d.power, 1000);
            }
        }
        if d.test == ClaimTest::Bootstrap {
            let (lo, hi, p) = hierarchical_bootstrap(
                metric,
                &outs[..k],
                &outs[k..],
                d.resamples,
                d.seed.wrapping_add(ci as u64),
                ci_level,
            )?;
            res.ci_low = Some(lo);
            res.ci_high = Some(hi);
            res.p_value = Some(p);
        }
        results.push(res);
    }
    // Correct the p-values of the claims that have one.
    let with_p: Vec<usize> = (0..results.len())
        .filter(|&i| results[i].p_value.is_some())
        .collect();
    let ps: Vec<f64> = with_p.iter().filter_map(|&i| results[i].p_value).collect();
    let adjusted = match d.correction.parse::<Correction>()? {
        Correction::Holm => holm(&ps),
        Correction::Bh => benjamini_hochberg(&ps),
        Correction::None => ps.clone(),
    };
    for (&i, p) in with_p.iter().zip(adjusted) {
        results[i].p_adjusted = Some(p);
    }
    for r in &mut results {
        decide(r, d.alpha, d.power);
    }
    Ok(ClaimsReport {
        defaults: d.clone(),
        records: records.len(),
        results,
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

/// Applies the verdict rule of the module docs.
fn decide(r: &mut ClaimResult, alpha: f64, target: f64) {
    let (Some(delta), Some(lo), Some(hi), Some(p)) = (r.delta, r.ci_low, r.ci_high, r.p_adjusted)
    else {
        if r.reason.is_empty() {
            r.reason = "no test could be run (need ≥ 2 seeds per system for Welch)".into();
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
    let power = match (r.power, r.seeds_needed) {
        (Some(pw), Some(n)) => format!(
            "; power at the claimed margin {pw:.2}, {n} seeds/system for {:.0}%",
            100.0 * target
        ),
        (Some(pw), None) => format!("; power at the claimed margin {pw:.2}"),
        _ => String::new(),
    };
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
    } else if hi < m || (m == 0.0 && hi <= 0.0) {
        r.verdict = Verdict::Refuted;
        r.reason = if hi < m {
            format!(
                "measured δ = {} points; {ci} lies below the claimed margin {}",
                pts(delta),
                pts(m)
            )
        } else {
            format!(
                "measured δ = {} points; {ci} holds no advantage for {}",
                pts(delta),
                r.system.attention
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
}

/// The report as Markdown (one table plus the settings and the command).
pub fn to_markdown(report: &ClaimsReport, command: &str) -> String {
    let d = &report.defaults;
    let mut s = String::new();
    s.push_str("# Claims report\n\n");
    s.push_str(&format!(
        "Regenerate: `{command}` (written by qattn {})\n\nTest: {}; α = {}; correction: {}; {} resamples (seed {}); \
         CIs at {:.0}% (not adjusted for multiplicity). Scores in points (metric × 100); \
         mean ± sd over seeds. {} run records read.\n\n",
        qattn_train::provenance::BUILD.describe(),
        match d.test {
            ClaimTest::Bootstrap => "hierarchical paired bootstrap over seeds and dev examples",
            ClaimTest::Welch => "Welch's t on per-seed scores",
        },
        d.alpha,
        d.correction,
        d.resamples,
        d.seed,
        100.0 * (1.0 - d.alpha),
        report.records
    ));
    s.push_str(
        "| claim | task | metric | claimed | system (n) | baseline (n) | δ | CI | p | p adj | \
         Welch p | power | verdict |\n|---|---|---|---|---|---|---:|---|---:|---:|---:|---:|---|\n",
    );
    let f = |x: Option<f64>, scale: f64, prec: usize| {
        x.map_or("–".to_string(), |v| format!("{:.*}", prec, v * scale))
    };
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
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | **{}** |\n",
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
            r.verdict
        ));
    }
    s.push_str("\n## Reasons\n\n");
    for r in &report.results {
        s.push_str(&format!(
            "- **{}** — {}: {}\n",
            r.claim.id, r.verdict, r.reason
        ));
    }
    s
}

/// Counts of each verdict.
pub fn tally(report: &ClaimsReport) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for r in &report.results {
        *t.entry(r.verdict.to_string()).or_insert(0) += 1;
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
