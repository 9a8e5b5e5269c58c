//! Helpers the studies share: a problem with its exact f64 probabilities and outputs, spec
//! parsing, seed ranges and bootstrap [`Estimate`]s.

use super::*;
use crate::error::{Result, invalid};
use crate::stats::percentile_interval;
use candle_core::{DType, Tensor};
use qattn_kernels::reference::{self, Dims};
use qattn_kernels::{AttentionOptions, EstimatorSpec};
use serde::Serialize;

pub(super) fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// A problem with its exact f64 probabilities and outputs.
pub(super) struct Prepared<'a> {
    pub(super) problem: &'a Problem,
    pub(super) dims: Dims,
    /// p [H·L·L].
    pub(super) probs: Vec<f64>,
    /// o [H·L·D].
    pub(super) exact: Vec<f64>,
    /// v [H·L·D].
    pub(super) values: Vec<f64>,
}

impl<'a> Prepared<'a> {
    pub(super) fn new(problem: &'a Problem) -> Result<Self> {
        let (h, l, d) = problem.shape()?;
        let dims = Dims {
            b: 1,
            h,
            lq: l,
            lk: l,
            d,
            dv: d,
        };
        let (q, k, v) = (
            to_f64(&problem.q)?,
            to_f64(&problem.k)?,
            to_f64(&problem.v)?,
        );
        let scale = 1.0 / (d as f64).sqrt();
        let probs = reference::probabilities(&q, &k, dims, scale, false, None);
        let exact = reference::attention(&q, &k, &v, dims, scale, false, None);
        Ok(Prepared {
            problem,
            dims,
            probs,
            exact,
            values: v,
        })
    }

    pub(super) fn rows(&self) -> usize {
        self.dims.h * self.dims.lq
    }

    /// Per row: ‖o‖² and tr Cov_p(v) = Σ_j p_j ‖v_j‖² − ‖o‖² (S × the multinomial variance).
    pub(super) fn norms_and_spread(&self) -> (Vec<f64>, Vec<f64>) {
        let Dims { lq, lk, dv, .. } = self.dims;
        let mut norm2 = Vec::with_capacity(self.rows());
        let mut spread = Vec::with_capacity(self.rows());
        for r in 0..self.rows() {
            let head = r / lq;
            let o = &self.exact[r * dv..(r + 1) * dv];
            let o2: f64 = o.iter().map(|x| x * x).sum();
            let mut second = 0.0;
            for (j, &p) in self.probs[r * lk..(r + 1) * lk].iter().enumerate() {
                let vj = &self.values[(head * lk + j) * dv..(head * lk + j + 1) * dv];
                second += p * vj.iter().map(|x| x * x).sum::<f64>();
            }
            norm2.push(o2);
            spread.push((second - o2).max(0.0));
        }
        (norm2, spread)
    }

    /// Adds ‖ô_r − o_r‖² of the estimate `out` to `acc[r]`.
    pub(super) fn add_squared_errors(&self, out: &Tensor, acc: &mut [f64]) -> Result<()> {
        let est = to_f64(out)?;
        let dv = self.dims.dv;
        for (r, a) in acc.iter_mut().enumerate() {
            let (e, o) = (
                &est[r * dv..(r + 1) * dv],
                &self.exact[r * dv..(r + 1) * dv],
            );
            *a += e.iter().zip(o).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
        }
        Ok(())
    }

    pub(super) fn options(&self, spec: EstimatorSpec, seed: u64) -> AttentionOptions {
        AttentionOptions {
            estimator: spec,
            seed,
            ..Default::default()
        }
    }
}

pub(super) fn parse_spec(s: &str) -> Result<EstimatorSpec> {
    s.parse()
        .map_err(|e| invalid(format!("estimator study: bad estimator `{s}`: {e}")))
}

/// Seeds `base .. base + n`, an error if that passes u64::MAX.
pub(super) fn seed_range(base: u64, n: usize) -> Result<std::ops::Range<u64>> {
    let end = base.checked_add(n as u64).ok_or_else(|| {
        invalid(format!(
            "estimator study: seed {base} + {n} replications overflows u64"
        ))
    })?;
    Ok(base..end)
}

/// A point estimate with its bootstrap distribution's mean, standard error and 95%
/// percentile interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Estimate {
    /// The estimate on all rows.
    pub value: f64,
    /// Mean over bootstrap resamples.
    pub boot_mean: f64,
    /// Standard deviation over bootstrap resamples.
    pub boot_se: f64,
    /// 2.5% percentile of the bootstrap distribution.
    pub ci_low: f64,
    /// 97.5% percentile of the bootstrap distribution.
    pub ci_high: f64,
}

impl Estimate {
    pub(super) fn from_bootstrap(value: f64, mut boot: Vec<f64>) -> Estimate {
        boot.retain(|x| x.is_finite());
        let n = boot.len() as f64;
        let mean = boot.iter().sum::<f64>() / n;
        let sd = (boot.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let (lo, hi) = percentile_interval(&boot, 0.95).unwrap_or((f64::NAN, f64::NAN));
        Estimate {
            value,
            boot_mean: mean,
            boot_se: sd,
            ci_low: lo,
            ci_high: hi,
        }
    }

    /// Whether `x` lies in the 95% interval.
    pub fn covers(&self, x: f64) -> bool {
        self.ci_low <= x && x <= self.ci_high
    }
}
