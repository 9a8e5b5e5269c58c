//! Small measurement helpers shared by the demo, the benchmarks and the estimator studies.

use crate::error::Result;
use crate::op::{AttentionOptions, attention};
use crate::spec::EstimatorSpec;
use candle_core::{DType, Tensor};

/// Mean over `seeds` of the relative L2 error ‖ô − o‖ / ‖o‖ of `estimator` against exact
/// attention with the same options (mask, causal, scale). Returns (mean, standard error); with
/// one seed the standard error is NaN, with none both are.
pub fn relative_error(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    base: &AttentionOptions,
    estimator: EstimatorSpec,
    seeds: std::ops::Range<u64>,
) -> Result<(f64, f64)> {
    Ok(mean_se(&relative_errors(q, k, v, base, estimator, seeds)?))
}

/// Mean and standard error of the mean (sample variance, n − 1) of `x`; the standard error is
/// NaN for one value, both are NaN for none.
pub fn mean_se(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    if x.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = x.iter().sum::<f64>() / n;
    let se = if x.len() > 1 {
        (x.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt()
    } else {
        f64::NAN
    };
    (mean, se)
}

/// The relative L2 error ‖ô − o‖ / ‖o‖ of `estimator` against exact attention with the same
/// options, one value per seed of `seeds` in order (the per-seed values behind
/// [`relative_error`], for paired comparisons of two estimators on common seeds).
pub fn relative_errors(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    base: &AttentionOptions,
    estimator: EstimatorSpec,
    seeds: std::ops::Range<u64>,
) -> Result<Vec<f64>> {
    let exact = attention(
        q,
        k,
        v,
        &AttentionOptions {
            estimator: EstimatorSpec::EXACT,
            ..base.clone()
        },
    )?;
    let exact = exact
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let norm = exact.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
    let mut errs = Vec::new();
    for seed in seeds {
        let opts = AttentionOptions {
            estimator,
            seed,
            ..base.clone()
        };
        let est = attention(q, k, v, &opts)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let e = est
            .iter()
            .zip(&exact)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
            / norm;
        errs.push(e);
    }
    Ok(errs)
}
