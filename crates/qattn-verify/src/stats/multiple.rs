//! Multiple-comparison control: adjusted p-values.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result, invalid};

/// Indices that sort `p` ascending (NaN last).
fn ascending(p: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    order
}

/// Holm's step-down adjusted p-values (Holm 1979), controlling the family-wise error rate.
///
/// With `p_(1) ≤ … ≤ p_(m)` sorted: `p̃_(i) = min(1, max_{j ≤ i} (m − j + 1)·p_(j))`, returned
/// in the input order — `statsmodels.stats.multitest.multipletests(p, method="holm")[1]`.
/// Inputs should be p-values in `[0, 1]` ([`Correction::apply`] checks that).
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut out = vec![0.0; m];
    let mut running = 0.0f64;
    for (rank, &i) in ascending(p).iter().enumerate() {
        running = running.max((m - rank) as f64 * p[i]);
        out[i] = running.min(1.0);
    }
    out
}

/// Benjamini–Hochberg adjusted p-values (Benjamini & Hochberg 1995), controlling the false
/// discovery rate.
///
/// With `p_(1) ≤ … ≤ p_(m)` sorted: `p̃_(i) = min(1, min_{j ≥ i} m·p_(j)/j)`, returned in the
/// input order — `statsmodels.stats.multitest.multipletests(p, method="fdr_bh")[1]`.
/// Inputs should be p-values in `[0, 1]` ([`Correction::apply`] checks that).
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let order = ascending(p);
    let mut out = vec![0.0; m];
    let mut running = f64::INFINITY;
    for (rank, &i) in order.iter().enumerate().rev() {
        running = running.min(m as f64 * p[i] / (rank + 1) as f64);
        out[i] = running.min(1.0);
    }
    out
}

/// A multiple-comparison correction, parsed from `holm`, `bh` or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Correction {
    /// [`holm`]: family-wise error rate.
    Holm,
    /// [`benjamini_hochberg`]: false discovery rate.
    Bh,
    /// No correction: p-values unchanged.
    None,
}

impl Correction {
    /// The name: `holm`, `bh` or `none`.
    pub fn name(self) -> &'static str {
        match self {
            Correction::Holm => "holm",
            Correction::Bh => "bh",
            Correction::None => "none",
        }
    }

    /// Adjusted p-values of `p` (input order).
    ///
    /// Errors: a value that is NaN or outside `[0, 1]` (named by index).
    pub fn apply(self, p: &[f64]) -> Result<Vec<f64>> {
        if let Some(i) = p.iter().position(|x| !(0.0..=1.0).contains(x)) {
            return Err(invalid(format!(
                "{} correction: p[{i}] = {} is not a p-value in [0, 1]",
                self.name(),
                p[i]
            )));
        }
        Ok(match self {
            Correction::Holm => holm(p),
            Correction::Bh => benjamini_hochberg(p),
            Correction::None => p.to_vec(),
        })
    }
}

impl fmt::Display for Correction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Correction {
    type Err = Error;

    /// Parses `holm`, `bh` or `none`; the error lists them.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "holm" => Ok(Correction::Holm),
            "bh" => Ok(Correction::Bh),
            "none" => Ok(Correction::None),
            _ => Err(invalid(format!(
                "unknown correction \"{s}\"; valid corrections: holm, bh, none"
            ))),
        }
    }
}
