//! Statistical tests that decide whether one system beats another.
//!
//! - [`rng`]: a seeded, counter-based resampler (Philox4x32-10) — same seed, same numbers.
//! - [`paired`]: per-example paired tests for any GLUE/SuperGLUE metric — the paired
//!   bootstrap, approximate randomisation (permutation) and McNemar's test — with cluster
//!   resampling when examples come in groups (MultiRC questions).
//! - [`seeds`]: tests across training seeds — Welch's t, the Wilcoxon signed-rank test and
//!   Almost Stochastic Order (ASO).
//! - [`hierarchical`]: the deciding test of claims — per-seed differences with a t seed
//!   level plus the shared dev-set variance, power and minimum detectable effects of that rule.
//! - [`effect`]: effect sizes (Cohen's d, Cliff's delta) and a bootstrap CI of a mean difference.
//! - [`multiple`]: multiple-comparison control (Holm, Benjamini–Hochberg).
//! - [`power`]: power of Welch's test and the number of seeds needed.
//!
//! Every function matches a named reference implementation (SciPy, statsmodels,
//! deep-significance); `tests/stats.rs` checks them against values those libraries computed
//! (`tests/fixtures/make_stats_fixtures.py`). Bad input is an [`Error::Invalid`] naming what
//! and where; nothing here panics on user input.

pub mod effect;
pub mod hierarchical;
pub mod multiple;
pub mod paired;
pub mod power;
pub mod rng;
pub mod seeds;

pub use effect::{bootstrap_diff_ci, cliffs_delta, cohens_d};
pub use hierarchical::{Design, Hierarchical, Level, hierarchical_test, trivial_score};
pub use multiple::{Correction, benjamini_hochberg, holm};
pub use paired::{
    Metric, Outputs, PairedResult, PairedTest, align, mcnemar, paired_bootstrap, paired_test,
    permutation_test,
};
pub use power::{seeds_needed, welch_power};
pub use rng::Resampler;
pub use seeds::{
    AsoResult, TestResult, WILCOXON_CI_MAX_N, aso, welch, welch_with_level, wilcoxon,
    wilcoxon_with_level,
};

use crate::error::{Error, Result, invalid};

/// The `q`-quantile (`0 ≤ q ≤ 1`) of ascending `sorted` values by linear interpolation between
/// order statistics: position `h = (n − 1)·q`, value `x[⌊h⌋] + (h − ⌊h⌋)·(x[⌊h⌋+1] − x[⌊h⌋])`.
///
/// This is `numpy.quantile(x, q)` with its default `method="linear"` (Hyndman & Fan type 7).
/// `sorted` must be non-empty and sorted (callers in this module guarantee it).
pub(crate) fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 1 {
        return sorted[0];
    }
    let h = (n - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = (h.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let t = h - lo as f64;
    sorted[lo] + t * (sorted[hi] - sorted[lo])
}

/// The two-sided percentile interval of `samples` at confidence `level`: the
/// `(1 − level)/2` and `(1 + level)/2` quantiles ([numpy's default linear interpolation](
/// https://numpy.org/doc/stable/reference/generated/numpy.quantile.html)).
///
/// This is the percentile bootstrap interval of Efron & Tibshirani (1993, §13.3) when
/// `samples` are bootstrap replicates.
///
/// Errors: empty `samples`, a NaN sample, `level` outside `(0, 1)`.
pub fn percentile_interval(samples: &[f64], level: f64) -> Result<(f64, f64)> {
    check_level("percentile_interval", "level", level)?;
    if samples.is_empty() {
        return Err(invalid("percentile_interval: no samples"));
    }
    if let Some(i) = samples.iter().position(|x| x.is_nan()) {
        return Err(invalid(format!("percentile_interval: sample {i} is NaN")));
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let alpha = 1.0 - level;
    Ok((
        quantile_sorted(&s, alpha / 2.0),
        quantile_sorted(&s, 1.0 - alpha / 2.0),
    ))
}

/// Checks that a probability-like parameter lies strictly inside `(0, 1)`.
pub(crate) fn check_level(what: &str, name: &str, v: f64) -> Result<()> {
    if v > 0.0 && v < 1.0 {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what}: {name} must be in (0, 1), got {v}"
        )))
    }
}

/// Checks that every value is finite (names the first offender).
pub(crate) fn check_finite(what: &str, name: &str, v: &[f64]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(invalid(format!(
            "{what}: {name}[{i}] = {} is not a finite number",
            v[i]
        ))),
        None => Ok(()),
    }
}

/// Arithmetic mean (callers check non-emptiness).
pub(crate) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample variance with `ddof` delta degrees of freedom, two-pass (`numpy.var(v, ddof=…)`).
pub(crate) fn var(v: &[f64], ddof: usize) -> f64 {
    let m = mean(v);
    v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - ddof) as f64
}

/// Converts a statrs construction error into [`Error::Invalid`] naming the context.
pub(crate) fn dist_err(what: &str, e: impl std::fmt::Display) -> Error {
    invalid(format!("{what}: {e}"))
}
