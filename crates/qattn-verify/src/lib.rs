//! # qattn-verify
//!
//! The statistics that decide whether Monte-Carlo attention beats exact attention — and say so
//! when it does not.
//!
//! - [`stats`]: paired tests on per-example outputs (McNemar, paired bootstrap, approximate
//!   randomisation) for any metric, tests across seeds (Welch's t, Wilcoxon signed-rank, Almost
//!   Stochastic Order), effect sizes, multiple-comparison control and power.
//! - [`claims`]: claims in, VERIFIED / REFUTED / INCONCLUSIVE out, from run records.

pub mod claims;
pub mod error;
pub mod stats;

pub use error::{Error, Result};
