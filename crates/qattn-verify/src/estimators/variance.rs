//! Study 1: variance reduction against `multinomial:S` (module docs of [`super`]).

use super::common::{Prepared, parse_spec, seed_range};
use super::*;
use crate::error::{Result, invalid};
use crate::stats::Resampler;
use qattn_kernels::{attention, attention_with_diagnostics};
use serde::{Deserialize, Serialize};

/// One estimator at one S.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EstimatorResult {
    /// The estimator family (`multinomial`, `stratified`, `topk`, `cv`, `adaptive`).
    pub family: String,
    /// The spec string.
    pub spec: String,
    /// Mean shots actually measured per row (adaptive spends fewer than S; top-k's K exact
    /// keys are not shots).
    pub mean_shots: f64,
    /// Mean over rows of the per-row MSE.
    pub mse: f64,
    /// √(Σ MSE / Σ ‖o‖²).
    pub rel_rmse: Estimate,
    /// Σ MSE / Σ MSE of `multinomial:S` (exactly 1 for multinomial itself).
    pub ratio: Estimate,
    /// Two-sided bootstrap p-value of "no change against multinomial" (ratio = 1):
    /// 2·min(#{ratio* ≥ 1} + 1, #{ratio* ≤ 1} + 1)/(B + 1), at most 1; `None` for
    /// multinomial itself and in reports written before the field existed.
    #[serde(default)]
    pub p_value: Option<f64>,
}

/// All estimators at one S.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShotsResult {
    /// Shots S.
    pub shots: usize,
    /// Measured / exact multinomial MSE, Σ MSE / Σ tr Cov_p(v)/S: ≈ 1 when the sampler and
    /// the bookkeeping are right.
    pub multinomial_vs_theory: Estimate,
    /// Every estimator, multinomial first.
    pub estimators: Vec<EstimatorResult>,
}

/// The stratified ratio next to the claim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimCheck {
    /// Shots S.
    pub shots: usize,
    /// The claimed ratio ([`CLAIMED_STRATIFIED_RATIO`]).
    pub claimed: f64,
    /// The measured stratified / multinomial variance ratio.
    pub measured: Estimate,
    /// Whether the claimed ratio lies in the measured 95% interval.
    pub consistent: bool,
    /// Read as "at least a 40% reduction", like the claims of [`crate::claims`]:
    /// `at least the claimed reduction` (the whole CI at or below the claimed ratio),
    /// `less than the claimed reduction` (the whole CI above it) or `the CI contains the
    /// claimed ratio`.
    pub verdict: String,
}

/// Result of [`variance_study`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VarianceStudy {
    /// Rows sampled.
    pub rows: usize,
    /// Clusters the bootstrap resamples: one per (head, sentence), i.e. all query rows of one
    /// head on one input (0 in reports written before the cluster bootstrap, which resampled
    /// rows).
    #[serde(default)]
    pub clusters: usize,
    /// Replication seeds per (estimator, S).
    pub replications: usize,
    /// Bootstrap resamples.
    pub bootstrap: usize,
    /// One entry per S.
    pub by_shots: Vec<ShotsResult>,
    /// The stratified ratio against the claim, per S.
    pub claim: Vec<ClaimCheck>,
}

/// The estimator families of the studies with their spec at a symbolic S:
/// `multinomial:S`, `stratified:S`, `topk:K:S`, `cv:R:S`, `adaptive:1:S`.
pub fn estimator_families() -> Vec<(&'static str, String)> {
    vec![
        ("multinomial", "multinomial:S".into()),
        ("stratified", "stratified:S".into()),
        ("topk", format!("topk:{TOPK_K}:S")),
        ("cv", format!("cv:{CV_RANK}:S")),
        ("adaptive", "adaptive:1:S".into()),
    ]
}

/// The estimators of the studies at S: (family, spec), multinomial first.
pub fn study_estimators(s: usize) -> Vec<(&'static str, String)> {
    estimator_families()
        .into_iter()
        .map(|(f, t)| (f, t.replace(":S", &format!(":{s}"))))
        .collect()
}

/// The variance study (module docs, section 1) on `workload` with shot counts `shots`,
/// `replications` seeds from `seed` and `bootstrap` resamples of rows.
pub fn variance_study(
    workload: &Workload,
    shots: &[usize],
    replications: usize,
    bootstrap: usize,
    seed: u64,
    progress: &dyn Fn(&str),
) -> Result<VarianceStudy> {
    if shots.is_empty() || shots.contains(&0) {
        return Err(invalid(format!(
            "estimator study: shot counts must be non-empty and ≥ 1, got {shots:?}"
        )));
    }
    if replications < 2 || bootstrap < 2 {
        return Err(invalid(format!(
            "estimator study: need ≥ 2 replications and ≥ 2 bootstrap resamples, got \
             {replications} and {bootstrap}"
        )));
    }
    let seeds = seed_range(seed, replications)?;
    let prepared = workload
        .problems
        .iter()
        .map(Prepared::new)
        .collect::<Result<Vec<_>>>()?;
    let rows: usize = prepared.iter().map(Prepared::rows).sum();
    if rows == 0 {
        return Err(invalid("estimator study: the workload has no rows"));
    }
    let (mut norm2, mut spread) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    for p in &prepared {
        let (n, s) = p.norms_and_spread();
        norm2.extend(n);
        spread.extend(s);
    }
    // mse[s][e][row], shots_used[s][e]
    let fams: Vec<Vec<(&str, String)>> = shots.iter().map(|&s| study_estimators(s)).collect();
    let mut mse = vec![vec![vec![0.0f64; rows]; fams[0].len()]; shots.len()];
    let mut used = vec![vec![0.0f64; fams[0].len()]; shots.len()];
    for (si, &s) in shots.iter().enumerate() {
        progress(&format!(
            "variance: S = {s}, {} estimators x {replications} seeds on {rows} rows",
            fams[si].len()
        ));
        for (ei, (_, spec)) in fams[si].iter().enumerate() {
            let spec = parse_spec(spec)?;
            let mut offset = 0;
            for p in &prepared {
                let n = p.rows();
                let acc = &mut mse[si][ei][offset..offset + n];
                for (r, sd) in seeds.clone().enumerate() {
                    let pr = p.problem;
                    let opts = p.options(spec, sd);
                    let out = if r == 0 {
                        let (out, diag) = attention_with_diagnostics(&pr.q, &pr.k, &pr.v, &opts)?;
                        used[si][ei] +=
                            diag.queries.iter().map(|d| f64::from(d.shots)).sum::<f64>();
                        out
                    } else {
                        attention(&pr.q, &pr.k, &pr.v, &opts)?
                    };
                    p.add_squared_errors(&out, acc)?;
                }
                offset += n;
            }
            mse[si][ei]
                .iter_mut()
                .for_each(|x| *x /= replications as f64);
            used[si][ei] /= rows as f64;
        }
    }
    // The rows of one head on one input share that input's keys and values and are strongly
    // correlated, so the bootstrap resamples whole (head, input) clusters, not rows.
    let mut clusters: Vec<std::ops::Range<usize>> = Vec::new();
    let mut offset = 0;
    for p in &prepared {
        for _ in 0..p.dims.h {
            clusters.push(offset..offset + p.dims.lq);
            offset += p.dims.lq;
        }
    }
    let nc = clusters.len();
    progress(&format!(
        "variance: {bootstrap} bootstrap resamples of {nc} (head, input) clusters"
    ));
    let ne = fams[0].len();
    // Per cluster: Σ over its rows of norm2, spread and every mse[s][e].
    let width = 2 + shots.len() * ne;
    let sums_of = |range: &std::ops::Range<usize>| -> Vec<f64> {
        let mut v = vec![0.0; width];
        v[0] = norm2[range.clone()].iter().sum();
        v[1] = spread[range.clone()].iter().sum();
        for si in 0..shots.len() {
            for ei in 0..ne {
                v[2 + si * ne + ei] = mse[si][ei][range.clone()].iter().sum();
            }
        }
        v
    };
    let per_cluster: Vec<Vec<f64>> = clusters.iter().map(sums_of).collect();
    let mut boot = vec![vec![0.0f64; width]; bootstrap];
    let mut rng = Resampler::with_stream(seed, BOOTSTRAP_STREAM);
    for sums in boot.iter_mut() {
        for _ in 0..nc {
            let c = &per_cluster[rng.index(nc)];
            sums.iter_mut().zip(c).for_each(|(a, b)| *a += b);
        }
    }
    let total = |v: &[f64]| v.iter().sum::<f64>();
    let (n2, sp) = (total(&norm2), total(&spread));
    let mut by_shots = Vec::new();
    let mut claim = Vec::new();
    for (si, &s) in shots.iter().enumerate() {
        let col = |ei: usize| 2 + si * ne + ei;
        let m0 = total(&mse[si][0]);
        let theory = Estimate::from_bootstrap(
            m0 / (sp / s as f64),
            boot.iter().map(|b| b[col(0)] / (b[1] / s as f64)).collect(),
        );
        let mut ests = Vec::new();
        for (ei, (family, spec)) in fams[si].iter().enumerate() {
            let me = total(&mse[si][ei]);
            let ratios: Vec<f64> = boot.iter().map(|b| b[col(ei)] / b[col(0)]).collect();
            ests.push(EstimatorResult {
                family: family.to_string(),
                spec: spec.clone(),
                mean_shots: used[si][ei],
                mse: me / rows as f64,
                rel_rmse: Estimate::from_bootstrap(
                    (me / n2).sqrt(),
                    boot.iter().map(|b| (b[col(ei)] / b[0]).sqrt()).collect(),
                ),
                ratio: Estimate::from_bootstrap(me / m0, ratios.clone()),
                p_value: (ei > 0).then(|| bootstrap_p_vs_one(&ratios)),
            });
        }
        if let Some(st) = ests.iter().find(|e| e.family == "stratified") {
            let consistent = st.ratio.covers(CLAIMED_STRATIFIED_RATIO);
            claim.push(ClaimCheck {
                shots: s,
                claimed: CLAIMED_STRATIFIED_RATIO,
                measured: st.ratio,
                consistent,
                verdict: if st.ratio.ci_high <= CLAIMED_STRATIFIED_RATIO {
                    "at least the claimed reduction".into()
                } else if st.ratio.ci_low > CLAIMED_STRATIFIED_RATIO {
                    "less than the claimed reduction".into()
                } else {
                    "the CI contains the claimed ratio".into()
                },
            });
        }
        by_shots.push(ShotsResult {
            shots: s,
            multinomial_vs_theory: theory,
            estimators: ests,
        });
    }
    Ok(VarianceStudy {
        rows,
        clusters: nc,
        replications,
        bootstrap,
        by_shots,
        claim,
    })
}

/// Two-sided bootstrap p-value of ratio = 1 from the bootstrap ratios (non-finite ones left
/// out): 2·min(#{r ≥ 1} + 1, #{r ≤ 1} + 1)/(B + 1), at most 1.
fn bootstrap_p_vs_one(ratios: &[f64]) -> f64 {
    let finite: Vec<f64> = ratios.iter().copied().filter(|x| x.is_finite()).collect();
    let b = finite.len() as f64;
    let above = finite.iter().filter(|&&r| r >= 1.0).count() as f64;
    let below = finite.iter().filter(|&&r| r <= 1.0).count() as f64;
    (2.0 * (above + 1.0).min(below + 1.0) / (b + 1.0)).min(1.0)
}
