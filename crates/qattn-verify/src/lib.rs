//! # qattn-verify
//!
//! The statistics that decide whether Monte-Carlo attention beats exact attention — and say so
//! when it does not.
//!
//! - [`stats`]: paired tests on per-example outputs (McNemar, paired bootstrap, approximate
//!   randomisation) for any metric, tests across seeds (Welch's t, Wilcoxon signed-rank, Almost
//!   Stochastic Order), effect sizes, multiple-comparison control and power.
//! - [`claims`]: claims in, VERIFIED / REFUTED / INCONCLUSIVE out, from run records.
//! - [`calibration`]: simulated run records under a known truth, to measure the verdicts'
//!   error rates (`qattn verify calibrate`).
//! - [`estimators`]: estimator studies on real attention rows (variance reduction, the
//!   Bretagnolle–Huber–Carol bound, time scaling, measurement noise), with plots drawn by
//!   qattn-plot.
//! - [`synthetic`] and [`compare`]: the embedded long-range task and the exact-vs-MC run
//!   engine behind `qattn compare`, the project's main job.

pub mod calibration;
pub mod claims;
pub mod compare;
pub mod error;
pub mod estimators;
pub mod stats;
pub mod synthetic;

pub use error::{Error, Result};
