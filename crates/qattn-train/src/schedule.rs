//! Learning-rate schedules (as multipliers of each group's base rate) and the Monte-Carlo
//! sample-count schedule.

use crate::error::{Error, Result};
use qattn_kernels::EstimatorSpec;
use serde::{Deserialize, Serialize};

/// The learning-rate schedule: λ(t) multiplies every group's base rate at optimiser step t
/// (0-based: the first update uses λ(0)), as transformers' `get_*_schedule_with_warmup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// λ = t/w during warmup, then 1.
    Constant,
    /// λ = t/w during warmup, then (T − t)/(T − w), floored at 0.
    #[default]
    Linear,
    /// λ = t/w during warmup, then ½(1 + cos(π·p)) with p = (t − w)/(T − w).
    Cosine,
}

impl std::str::FromStr for LrSchedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(LrSchedule::Constant),
            "linear" => Ok(LrSchedule::Linear),
            "cosine" => Ok(LrSchedule::Cosine),
            _ => Err(Error::Args(format!(
                "lr_scheduler {s:?}: expected constant, linear or cosine"
            ))),
        }
    }
}

impl LrSchedule {
    /// The multiplier at step `t` of `total` with `warmup` warmup steps.
    pub fn factor(self, t: u64, warmup: u64, total: u64) -> f64 {
        if t < warmup {
            return t as f64 / warmup.max(1) as f64;
        }
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Linear => {
                let rest = total.saturating_sub(warmup).max(1) as f64;
                (total.saturating_sub(t) as f64 / rest).max(0.0)
            }
            LrSchedule::Cosine => {
                let rest = total.saturating_sub(warmup).max(1) as f64;
                let p = ((t - warmup) as f64 / rest).min(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * p).cos())).max(0.0)
            }
        }
    }
}

/// How the number of Monte-Carlo samples changes during training: exact attention for the
/// first `exact_steps`, then S interpolated geometrically from `start_samples` to the target S
/// of each estimator over `anneal_steps`, then the target. Estimators that do not sample are
/// untouched.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SampleSchedule {
    /// Steps trained with exact attention before sampling starts.
    pub exact_steps: u64,
    /// S at the start of the anneal (0 = start at the target: no anneal).
    pub start_samples: usize,
    /// Steps over which S goes from `start_samples` to the target.
    pub anneal_steps: u64,
}

impl SampleSchedule {
    /// True when the schedule changes nothing.
    pub fn is_identity(&self) -> bool {
        self.exact_steps == 0 && (self.start_samples == 0 || self.anneal_steps == 0)
    }

    /// The sample count at `step` for an estimator whose target is `target`; `None` means
    /// exact attention at this step.
    pub fn samples_at(&self, step: u64, target: usize) -> Option<usize> {
        if step < self.exact_steps {
            return None;
        }
        let t = step - self.exact_steps;
        if self.start_samples == 0 || self.anneal_steps == 0 || t >= self.anneal_steps {
            return Some(target);
        }
        let p = t as f64 / self.anneal_steps as f64;
        let (a, b) = (self.start_samples as f64, target.max(1) as f64);
        let s = (a.ln() + p * (b.ln() - a.ln())).exp().round() as usize;
        Some(s.max(1))
    }

    /// `spec` as it applies at `step`.
    pub fn apply(&self, spec: &EstimatorSpec, step: u64) -> EstimatorSpec {
        if !spec.estimator.samples() || self.is_identity() {
            return *spec;
        }
        match self.samples_at(step, spec.estimator.nominal_samples()) {
            None => EstimatorSpec::EXACT,
            Some(s) => EstimatorSpec {
                estimator: spec.estimator.with_samples(s),
                noise: spec.noise,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_and_cosine_match_closed_forms() {
        let (w, total) = (10u64, 110u64);
        for t in 0..=120u64 {
            let lin = LrSchedule::Linear.factor(t, w, total);
            let cos = LrSchedule::Cosine.factor(t, w, total);
            let con = LrSchedule::Constant.factor(t, w, total);
            if t < w {
                let want = t as f64 / w as f64;
                assert_eq!((lin, cos, con), (want, want, want), "t={t}");
            } else {
                let p = (t - w) as f64 / (total - w) as f64;
                let want_lin = (1.0 - p).max(0.0);
                let want_cos = 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos());
                assert!(
                    (lin - want_lin).abs() < 1e-12,
                    "linear t={t}: {lin} vs {want_lin}"
                );
                assert!(
                    (cos - want_cos).abs() < 1e-12,
                    "cosine t={t}: {cos} vs {want_cos}"
                );
                assert_eq!(con, 1.0);
            }
        }
        assert_eq!(LrSchedule::Linear.factor(0, 0, 10), 1.0);
        assert_eq!(LrSchedule::Cosine.factor(60, 10, 110), 0.5);
        assert!("exp".parse::<LrSchedule>().is_err());
    }

    #[test]
    fn sample_schedule_goes_exact_then_anneals_to_target() {
        let s = SampleSchedule {
            exact_steps: 5,
            start_samples: 128,
            anneal_steps: 10,
        };
        assert_eq!(s.samples_at(0, 8), None);
        assert_eq!(s.samples_at(4, 8), None);
        assert_eq!(s.samples_at(5, 8), Some(128));
        assert_eq!(s.samples_at(10, 8), Some(32)); // halfway in log space: √(128·8)
        assert_eq!(s.samples_at(15, 8), Some(8));
        assert_eq!(s.samples_at(1000, 8), Some(8));
        let spec: EstimatorSpec = "topk:4:8+depol:0.01".parse().unwrap();
        assert_eq!(s.apply(&spec, 10).to_string(), "topk:4:32+depol:0.01");
        assert!(s.apply(&spec, 0).is_exact());
        assert!(s.apply(&EstimatorSpec::EXACT, 10).is_exact());
        assert!(SampleSchedule::default().is_identity());
    }
}
