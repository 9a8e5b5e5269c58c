//! Study 2: the Bretagnolle–Huber–Carol bound for `multinomial:S` (module docs of [`super`]).

use super::common::{Prepared, parse_spec, seed_range};
use super::*;
use crate::error::{Result, invalid};
use qattn_kernels::attention_with_diagnostics;
use serde::Serialize;
use statrs::distribution::{Beta, ContinuousCDF};

/// The BHC radius ε(δ) = √(2(K ln 2 + ln(1/δ))/S) for K categories and S shots:
/// P(‖p̂ − p‖₁ ≥ ε(δ)) ≤ δ.
pub fn bhc_epsilon(keys: usize, shots: usize, delta: f64) -> f64 {
    (2.0 * (keys as f64 * std::f64::consts::LN_2 + (1.0 / delta).ln()) / shots as f64).sqrt()
}

/// One-sided upper confidence limit (Clopper–Pearson) of a binomial proportion with
/// `x` successes in `n` trials at `level` (e.g. 0.95).
pub fn clopper_pearson_upper(x: usize, n: usize, level: f64) -> Result<f64> {
    if n == 0 || x > n || !(level > 0.0 && level < 1.0) {
        return Err(invalid(format!(
            "Clopper-Pearson: need 0 ≤ x ≤ n, n ≥ 1 and level in (0, 1), got x = {x}, n = {n}, \
             level = {level}"
        )));
    }
    if x == n {
        return Ok(1.0);
    }
    let beta = Beta::new(x as f64 + 1.0, (n - x) as f64)
        .map_err(|e| invalid(format!("Clopper-Pearson: {e}")))?;
    Ok(beta.inverse_cdf(level))
}

/// The BHC bound at one (S, K).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BhcGroup {
    /// Shots S.
    pub shots: usize,
    /// Keys K of the rows.
    pub keys: usize,
    /// Trials (rows × seeds).
    pub trials: usize,
    /// ε(δ).
    pub epsilon: f64,
    /// Whether ε(δ) ≥ 2 (the bound says nothing: ‖p̂ − p‖₁ ≤ 2 always).
    pub vacuous: bool,
    /// Trials with ‖p̂ − p‖₁ ≥ ε(δ).
    pub exceed: usize,
    /// exceed / trials.
    pub exceed_fraction: f64,
    /// One-sided 95% Clopper–Pearson upper limit of the exceedance probability.
    pub exceed_upper95: f64,
    /// Mean ‖p̂ − p‖₁.
    pub mean_l1: f64,
    /// Empirical (1 − δ)-quantile of ‖p̂ − p‖₁ (inverse empirical CDF).
    pub quantile: f64,
    /// ε(δ) / quantile.
    pub looseness: f64,
}

/// Result of [`bhc_study`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BhcStudy {
    /// δ.
    pub delta: f64,
    /// Seeds per S.
    pub seeds: usize,
    /// How the counts were obtained.
    pub source: String,
    /// Per (S, K), ordered by S then K.
    pub groups: Vec<BhcGroup>,
    /// All trials.
    pub trials: usize,
    /// All exceedances.
    pub exceed: usize,
    /// exceed / trials over all groups.
    pub exceed_fraction: f64,
    /// One-sided 95% Clopper–Pearson upper limit over all groups.
    pub exceed_upper95: f64,
}

/// Inverse empirical CDF: the smallest sorted value v with F_n(v) ≥ q.
fn ecdf_quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let k = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[k - 1]
}

/// The BHC study (module docs, section 2) for `multinomial:S`, S in `shots`, `seeds` seeds.
pub fn bhc_study(
    workload: &Workload,
    shots: &[usize],
    seeds: usize,
    delta: f64,
    seed: u64,
    progress: &dyn Fn(&str),
) -> Result<BhcStudy> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(invalid(format!(
            "estimator study: δ must be in (0, 1), got {delta}"
        )));
    }
    if shots.is_empty() || shots.contains(&0) || seeds == 0 {
        return Err(invalid(format!(
            "estimator study: BHC needs shot counts ≥ 1 and ≥ 1 seed, got {shots:?} and {seeds}"
        )));
    }
    let seeds_r = seed_range(seed, seeds)?;
    let prepared = workload
        .problems
        .iter()
        .map(Prepared::new)
        .collect::<Result<Vec<_>>>()?;
    let mut groups = Vec::new();
    for &s in shots {
        progress(&format!("BHC: multinomial:{s}, {seeds} seeds"));
        let spec = parse_spec(&format!("multinomial:{s}"))?;
        let mut by_k: std::collections::BTreeMap<usize, Vec<f64>> = Default::default();
        for p in &prepared {
            let lk = p.dims.lk;
            let l1s = by_k.entry(lk).or_default();
            for sd in seeds_r.clone() {
                let pr = p.problem;
                let (_, diag) =
                    attention_with_diagnostics(&pr.q, &pr.k, &pr.v, &p.options(spec, sd))?;
                let counts = diag.counts();
                if counts.len() != p.probs.len() {
                    return Err(invalid(format!(
                        "estimator study: {} sampled counts for {} probabilities in `{}`",
                        counts.len(),
                        p.probs.len(),
                        pr.label
                    )));
                }
                for (c, pr) in counts.chunks(lk).zip(p.probs.chunks(lk)) {
                    let n: u32 = c.iter().sum();
                    if n == 0 {
                        continue;
                    }
                    let l1: f64 = c
                        .iter()
                        .zip(pr)
                        .map(|(&ci, &pi)| (f64::from(ci) / f64::from(n) - pi).abs())
                        .sum();
                    l1s.push(l1);
                }
            }
        }
        for (k, mut l1s) in by_k {
            if l1s.is_empty() {
                continue;
            }
            l1s.sort_by(f64::total_cmp);
            let eps = bhc_epsilon(k, s, delta);
            let exceed = l1s.iter().filter(|&&x| x >= eps).count();
            let quantile = ecdf_quantile(&l1s, 1.0 - delta);
            groups.push(BhcGroup {
                shots: s,
                keys: k,
                trials: l1s.len(),
                epsilon: eps,
                vacuous: eps >= 2.0,
                exceed,
                exceed_fraction: exceed as f64 / l1s.len() as f64,
                exceed_upper95: clopper_pearson_upper(exceed, l1s.len(), 0.95)?,
                mean_l1: l1s.iter().sum::<f64>() / l1s.len() as f64,
                quantile,
                looseness: eps / quantile,
            });
        }
    }
    let trials: usize = groups.iter().map(|g| g.trials).sum();
    let exceed: usize = groups.iter().map(|g| g.exceed).sum();
    if trials == 0 {
        return Err(invalid("estimator study: BHC drew no shots"));
    }
    Ok(BhcStudy {
        delta,
        seeds,
        source: "the kernel's own draws: QueryDiagnostics::samples of attention_with_diagnostics \
                 (multinomial:S, noiseless)"
            .into(),
        groups,
        trials,
        exceed,
        exceed_fraction: exceed as f64 / trials as f64,
        exceed_upper95: clopper_pearson_upper(exceed, trials, 0.95)?,
    })
}
