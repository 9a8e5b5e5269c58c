//! Power of Welch's t-test across seeds, and how many seeds a comparison needs.

use statrs::distribution::{ContinuousCDF, StudentsT};

use super::seeds::t_quantile;
use super::{check_level, dist_err};
use crate::error::{Result, invalid};

/// Approximate power of the two-sided Welch t-test at level `alpha` with `n` seeds per system,
/// true mean difference `delta` and per-seed standard deviations `sd_a`, `sd_b`.
///
/// With `se = √(sd_a²/n + sd_b²/n)`, Welch–Satterthwaite
/// `df = (sd_a²/n + sd_b²/n)² / ((sd_a²/n)²/(n−1) + (sd_b²/n)²/(n−1))` and
/// `t_crit = T_df⁻¹(1 − alpha/2)`:
/// `power ≈ 1 − T_df(t_crit − δ/se) + T_df(−t_crit − δ/se)`.
///
/// Approximation: the noncentral t distribution of the statistic under the alternative is
/// replaced by the central t shifted by the noncentrality `δ/se` (and the standard deviations
/// are taken as known in `df`). It is exact at `δ = 0` (power = `alpha`) and conservative
/// (lower) than the noncentral-t power for few seeds: against statsmodels' `TTestIndPower`
/// (noncentral t, equal variances) it gives 0.247 vs 0.286 at `n = 5, δ/sd = 1, α = 0.05`,
/// 0.082 vs 0.161 at `n = 4, δ/sd = 1.5, α = 0.01`, and 0.330 vs 0.338 at `n = 20,
/// δ/sd = 0.5` (tests/fixtures/stats.json). [`seeds_needed`] therefore errs towards more seeds.
///
/// Errors: `n < 2`, `alpha` outside `(0, 1)`, negative or non-finite standard deviations, both
/// zero, a non-finite `delta`.
pub fn welch_power(delta: f64, sd_a: f64, sd_b: f64, n: usize, alpha: f64) -> Result<f64> {
    let what = "welch_power";
    check_level(what, "alpha", alpha)?;
    if n < 2 {
        return Err(invalid(format!(
            "{what}: n must be at least 2 seeds per system, got {n}"
        )));
    }
    for (name, sd) in [("sd_a", sd_a), ("sd_b", sd_b)] {
        if !(sd.is_finite() && sd >= 0.0) {
            return Err(invalid(format!(
                "{what}: {name} must be a finite non-negative standard deviation, got {sd}"
            )));
        }
    }
    if sd_a == 0.0 && sd_b == 0.0 {
        return Err(invalid(format!(
            "{what}: sd_a and sd_b are both zero: the t-test is undefined"
        )));
    }
    if !delta.is_finite() {
        return Err(invalid(format!(
            "{what}: delta must be finite, got {delta}"
        )));
    }
    let nf = n as f64;
    let (va, vb) = (sd_a * sd_a / nf, sd_b * sd_b / nf);
    let se = (va + vb).sqrt();
    let df = (va + vb).powi(2) / ((va * va + vb * vb) / (nf - 1.0));
    let t = StudentsT::new(0.0, 1.0, df).map_err(|e| dist_err(what, e))?;
    let crit = t_quantile(df, 1.0 - alpha / 2.0)?;
    let shift = delta / se;
    Ok((t.sf(crit - shift) + t.cdf(-crit - shift)).clamp(0.0, 1.0))
}

/// The smallest number of seeds per system `n` in `2..=max_n` whose [`welch_power`] reaches
/// `power_target`.
///
/// `None` when even `max_n` does not reach it — and also for input [`welch_power`] rejects or
/// a `power_target` outside `(0, 1)` (call [`welch_power`] for the error message).
pub fn seeds_needed(
    delta: f64,
    sd_a: f64,
    sd_b: f64,
    alpha: f64,
    power_target: f64,
    max_n: usize,
) -> Option<usize> {
    check_level("seeds_needed", "power_target", power_target).ok()?;
    (2..=max_n).find(|&n| welch_power(delta, sd_a, sd_b, n, alpha).is_ok_and(|p| p >= power_target))
}
