//! Effect sizes of independent samples (e.g. scores over seeds) and a bootstrap CI of the
//! mean difference.

use super::rng::Resampler;
use super::{check_finite, check_level, mean, percentile_interval, var};
use crate::error::{Result, invalid};

fn check_samples(what: &str, a: &[f64], b: &[f64], min: usize) -> Result<()> {
    for (name, v) in [("a", a), ("b", b)] {
        if v.len() < min {
            return Err(invalid(format!(
                "{what}: {name} needs at least {min} value(s), got {}",
                v.len()
            )));
        }
        check_finite(what, name, v)?;
    }
    Ok(())
}

/// Cohen's d with the pooled standard deviation:
/// `d = (ā − b̄) / s_p`, `s_p = √(((n_a − 1)·s_a² + (n_b − 1)·s_b²) / (n_a + n_b − 2))`, sample
/// variances with ddof 1 (Cohen 1988, eq. 2.5.2; `numpy.var(…, ddof=1)`).
///
/// Errors: fewer than 2 values in either sample, non-finite values, a pooled standard
/// deviation of zero (d undefined).
pub fn cohens_d(a: &[f64], b: &[f64]) -> Result<f64> {
    check_samples("cohens_d", a, b, 2)?;
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let pooled = (((na - 1.0) * var(a, 1) + (nb - 1.0) * var(b, 1)) / (na + nb - 2.0)).sqrt();
    if pooled == 0.0 {
        return Err(invalid(
            "cohens_d: the pooled standard deviation is zero (every value of a equal, every \
             value of b equal): d is undefined",
        ));
    }
    Ok((mean(a) - mean(b)) / pooled)
}

/// Cliff's delta: `δ = (#{(i, j): a_i > b_j} − #{(i, j): a_i < b_j}) / (n_a·n_b)`, in
/// `[-1, 1]` (Cliff 1993). Counted by binary search in the sorted `b` (`O(n log n)`).
///
/// Errors: an empty sample, non-finite values.
pub fn cliffs_delta(a: &[f64], b: &[f64]) -> Result<f64> {
    check_samples("cliffs_delta", a, b, 1)?;
    let mut sb = b.to_vec();
    sb.sort_by(f64::total_cmp);
    let (mut greater, mut less) = (0u64, 0u64);
    for &x in a {
        let below = sb.partition_point(|&y| y < x);
        let not_above = sb.partition_point(|&y| y <= x);
        greater += below as u64;
        less += (sb.len() - not_above) as u64;
    }
    Ok((greater as f64 - less as f64) / (a.len() as f64 * b.len() as f64))
}

/// Percentile bootstrap CI of `mean(a) − mean(b)` for independent samples: each of
/// `resamples` rounds resamples `a` and `b` separately with replacement (stream 0 of `seed`,
/// [`Resampler`]); the interval is the `(1 ∓ level)/2` quantiles of the replicate differences
/// ([`super::percentile_interval`]). Returns `(low, high)`.
///
/// Errors: an empty sample, non-finite values, `resamples == 0`, `level` outside `(0, 1)`.
pub fn bootstrap_diff_ci(
    a: &[f64],
    b: &[f64],
    resamples: usize,
    seed: u64,
    level: f64,
) -> Result<(f64, f64)> {
    let what = "bootstrap_diff_ci";
    check_samples(what, a, b, 1)?;
    check_level(what, "level", level)?;
    if resamples == 0 {
        return Err(invalid(format!("{what}: resamples must be at least 1")));
    }
    let mut rng = Resampler::new(seed);
    let mut reps = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        let ma = (0..a.len()).map(|_| a[rng.index(a.len())]).sum::<f64>() / a.len() as f64;
        let mb = (0..b.len()).map(|_| b[rng.index(b.len())]).sum::<f64>() / b.len() as f64;
        reps.push(ma - mb);
    }
    percentile_interval(&reps, level)
}
