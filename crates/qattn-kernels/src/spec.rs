//! The estimator specification: one string form used by config files, the CLI and the server.
//!
//! Grammar: `BASE[+NOISE]...` where BASE is one of `exact`, `multinomial:S`, `stratified:S`,
//! `topk:K:S`, `cv:R:S`, `adaptive:MIN:MAX`, and NOISE is one of `depol:λ`,
//! `readout:ε01:ε10`, `damp:γ`, `mitigate`. Example: `stratified:32+readout:0.02:0.03+mitigate`.
//! The canonical string ([`std::fmt::Display`]) lists noise terms in that order.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// How the attention output is estimated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Estimator {
    /// Exact softmax attention (streaming softmax, no sampling).
    #[default]
    Exact,
    /// `multinomial:S` — S i.i.d. measured keys, ô = mean of their values.
    Multinomial {
        /// Number of shots per query.
        samples: usize,
    },
    /// `stratified:S` — one inverse-CDF draw in each stratum [s/S, (s+1)/S).
    Stratified {
        /// Number of strata (= shots) per query.
        samples: usize,
    },
    /// `topk:K:S` — exact over the K most probable keys, S i.i.d. draws from the renormalised tail.
    TopK {
        /// Keys summed exactly.
        k: usize,
        /// Shots drawn from the tail.
        samples: usize,
    },
    /// `cv:R:S` — control variate: exact expectation of the rank-R principal projection of V,
    /// plus S i.i.d. draws of the residual.
    ControlVariate {
        /// Rank of the control.
        rank: usize,
        /// Shots for the residual.
        samples: usize,
    },
    /// `adaptive:MIN:MAX` — stratified with a per-query shot count
    /// S = clamp(⌈MAX·√(1 − 1/ESS)⌉, MIN, MAX), ESS = 1/Σp² the row's effective sample size:
    /// Neyman allocation when values are isotropic (expected variance ∝ 1 − 1/ESS), so peaked
    /// rows spend few shots and diffuse rows up to MAX.
    Adaptive {
        /// Lower bound on shots per query.
        min: usize,
        /// Upper bound on shots per query.
        max: usize,
    },
    /// `lsh:BITS:BLOCK:S[:R]` — sub-quadratic: queries and keys are hashed with BITS random
    /// hyperplanes (sign bits, Gray-code bucket order) and sorted; each query block attends
    /// exactly to the keys of its buckets, and the keys outside them are estimated from S
    /// uniform draws weighted m/S (m = the query's visible keys), so numerator and normaliser are
    /// each unbiased. With R rounds (default 1) the exact keys are the union of R independent
    /// hashings' blocks. Costs O(L·(R·BLOCK + S)·D) instead of O(L²·D); see docs/estimators.md.
    Lsh {
        /// Hyperplanes (1–16): 2^BITS buckets.
        bits: usize,
        /// Queries per block (and at least as many exact keys per block).
        block: usize,
        /// Uniform draws per query for the keys outside its blocks.
        samples: usize,
        /// Independent hashing rounds (1–8) whose blocks are united.
        rounds: usize,
    },
}

impl Estimator {
    /// Whether this estimator draws samples.
    pub fn samples(&self) -> bool {
        !matches!(self, Estimator::Exact)
    }

    /// The nominal number of shots per query (the maximum for `adaptive`; 0 for exact).
    pub fn nominal_samples(&self) -> usize {
        match *self {
            Estimator::Exact => 0,
            Estimator::Multinomial { samples }
            | Estimator::Stratified { samples }
            | Estimator::TopK { samples, .. }
            | Estimator::ControlVariate { samples, .. }
            | Estimator::Lsh { samples, .. } => samples,
            Estimator::Adaptive { max, .. } => max,
        }
    }

    /// A copy with the number of shots replaced (adaptive: MAX replaced, MIN capped at it).
    /// Exact stays exact. Used by sampling schedules.
    pub fn with_samples(&self, s: usize) -> Estimator {
        let s = s.max(1);
        match *self {
            Estimator::Exact => Estimator::Exact,
            Estimator::Multinomial { .. } => Estimator::Multinomial { samples: s },
            Estimator::Stratified { .. } => Estimator::Stratified { samples: s },
            Estimator::TopK { k, .. } => Estimator::TopK { k, samples: s },
            Estimator::ControlVariate { rank, .. } => {
                Estimator::ControlVariate { rank, samples: s }
            }
            Estimator::Adaptive { min, .. } => Estimator::Adaptive {
                min: min.min(s),
                max: s,
            },
            Estimator::Lsh {
                bits,
                block,
                rounds,
                ..
            } => Estimator::Lsh {
                bits,
                block,
                samples: s,
                rounds,
            },
        }
    }
}

/// Simulated measurement noise on the key-index register (see docs/estimators.md).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Noise {
    /// Depolarizing probability λ: with probability λ the outcome is uniform over all 2^m.
    pub depol: f64,
    /// Per-qubit readout flip probabilities (ε01 = P(read 1 | 0), ε10 = P(read 0 | 1)).
    pub readout: Option<(f64, f64)>,
    /// Amplitude damping γ: each qubit in |1⟩ decays to |0⟩ with probability γ before readout.
    pub damp: f64,
    /// Apply tensored readout mitigation (inverse per-qubit confusion matrices).
    pub mitigate: bool,
}

impl Noise {
    /// No channel is active.
    pub fn is_none(&self) -> bool {
        self.depol == 0.0 && self.readout.is_none() && self.damp == 0.0 && !self.mitigate
    }

    /// The readout flip probabilities, zero when unset.
    pub fn readout_or_zero(&self) -> (f64, f64) {
        self.readout.unwrap_or((0.0, 0.0))
    }

    /// ‖M⁻¹‖₁, the induced 1-norm (largest absolute column sum) of the inverse of the per-qubit
    /// confusion matrix M = R·D that `+mitigate` applies: the factor by which mitigation can
    /// enlarge one shot's contribution per index qubit. Infinite when M is singular.
    pub fn mitigation_norm_per_qubit(&self) -> f64 {
        let m = crate::noise::Channel::new(*self, 2).confusion();
        let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
        if det == 0.0 {
            return f64::INFINITY;
        }
        let col0 = m[1][1].abs() + m[1][0].abs();
        let col1 = m[0][1].abs() + m[0][0].abs();
        col0.max(col1) / det.abs()
    }

    /// Γ = ‖M⁻¹‖₁^m for a register of m = ⌈log2 lk⌉ index qubits: the induced 1-norm of the
    /// tensored inverse (M⁻¹)^{⊗m}, which bounds how much mitigation enlarges the statistical
    /// error of an estimate (its variance by up to Γ²). 1 without `+mitigate`.
    pub fn mitigation_amplification(&self, lk: usize) -> f64 {
        if !self.mitigate {
            return 1.0;
        }
        let m = crate::noise::index_qubits(lk);
        self.mitigation_norm_per_qubit().powi(m as i32)
    }
}

/// Largest per-qubit amplification ‖M⁻¹‖₁ of `+mitigate` a spec may have (checked when it is
/// parsed). With equal flip rates ε it is 1/(1 − 2ε), so this admits ε ≤ 0.375; with damping alone
/// it is (1 + γ)/(1 − γ), admitting γ ≤ 0.6.
pub const MAX_MITIGATION_NORM_PER_QUBIT: f64 = 4.0;

/// Largest amplification Γ = ‖M⁻¹‖₁^m of `+mitigate` over the m = ⌈log2 Lk⌉ index qubits
/// (checked at call time, when Lk is known): the statistical error may grow by up to Γ and the
/// variance by up to Γ² = 10⁶.
pub const MAX_MITIGATION_AMPLIFICATION: f64 = 1e3;

/// Gradient mode of sampled estimators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradMode {
    /// Straight-through: the gradient of exact attention, whatever the forward estimator.
    #[default]
    Exact,
    /// The gradient of the self-normalised importance-weighted estimator: only sampled keys
    /// (and, for `topk`, the exact top keys) receive gradient.
    Sampled,
}

impl FromStr for GradMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "exact" => Ok(GradMode::Exact),
            "sampled" => Ok(GradMode::Sampled),
            _ => Err(Error::Options(format!(
                "unknown gradient mode `{s}` (expected `exact` or `sampled`)"
            ))),
        }
    }
}

impl fmt::Display for GradMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GradMode::Exact => "exact",
            GradMode::Sampled => "sampled",
        })
    }
}

/// An estimator with its noise model: the value of an `--estimator`/`--attention` option.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct EstimatorSpec {
    /// The estimator.
    pub estimator: Estimator,
    /// The measurement noise applied to its shots.
    pub noise: Noise,
}

impl EstimatorSpec {
    /// Exact attention.
    pub const EXACT: EstimatorSpec = EstimatorSpec {
        estimator: Estimator::Exact,
        noise: Noise {
            depol: 0.0,
            readout: None,
            damp: 0.0,
            mitigate: false,
        },
    };

    /// A noiseless spec for `estimator`.
    pub fn new(estimator: Estimator) -> Self {
        EstimatorSpec {
            estimator,
            noise: Noise::default(),
        }
    }

    /// Whether this is exact attention.
    pub fn is_exact(&self) -> bool {
        self.estimator == Estimator::Exact
    }

    /// Checks what depends on the number of keys: with `+mitigate`, the amplification
    /// Γ = ‖M⁻¹‖₁^m over m = ⌈log2 lk⌉ index qubits must not exceed
    /// [`MAX_MITIGATION_AMPLIFICATION`].
    pub fn check_keys(&self, lk: usize) -> Result<()> {
        let gamma = self.noise.mitigation_amplification(lk);
        if gamma > MAX_MITIGATION_AMPLIFICATION {
            let m = crate::noise::index_qubits(lk);
            return Err(bad(
                &self.to_string(),
                format!(
                    "with Lk = {lk} keys (m = {m} index qubits) readout mitigation would amplify \
                     statistical errors by up to ‖M⁻¹‖₁^m = {:.4}^{m} = {gamma:.3e} (the variance \
                     by its square), above the bound {MAX_MITIGATION_AMPLIFICATION:e}; use fewer \
                     keys, lower readout/damping error, or drop +mitigate",
                    self.noise.mitigation_norm_per_qubit()
                ),
            ));
        }
        Ok(())
    }
}

/// The most hashing rounds of `lsh`.
const MAX_LSH_ROUNDS: usize = 8;

const GRAMMAR: &str = "expected exact | multinomial:S | stratified:S | topk:K:S | cv:R:S | adaptive:MIN:MAX \
     | lsh:BITS:BLOCK:S[:R], optionally followed by +depol:λ, +readout:ε01:ε10, +damp:γ, +mitigate";

fn bad(spec: &str, reason: impl Into<String>) -> Error {
    Error::InvalidSpec {
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

fn parse_count(spec: &str, what: &str, s: &str) -> Result<usize> {
    let n: usize = s.trim().parse().map_err(|_| {
        bad(
            spec,
            format!("{what} must be a positive integer, got `{s}`"),
        )
    })?;
    if n == 0 {
        return Err(bad(spec, format!("{what} must be at least 1, got 0")));
    }
    Ok(n)
}

fn parse_prob(spec: &str, what: &str, s: &str) -> Result<f64> {
    let p: f64 = s.trim().parse().map_err(|_| {
        bad(
            spec,
            format!("{what} must be a probability in [0, 1], got `{s}`"),
        )
    })?;
    if !(0.0..=1.0).contains(&p) {
        return Err(bad(spec, format!("{what} must be in [0, 1], got {p}")));
    }
    Ok(p)
}

impl FromStr for EstimatorSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let mut parts = spec.trim().split('+');
        let base = parts.next().unwrap_or("").trim();
        let fields: Vec<&str> = base.split(':').collect();
        let arity = |n: usize| -> Result<()> {
            if fields.len() != n + 1 {
                Err(bad(
                    spec,
                    format!(
                        "`{}` takes {n} parameter(s), got {}; {GRAMMAR}",
                        fields[0],
                        fields.len() - 1
                    ),
                ))
            } else {
                Ok(())
            }
        };
        let estimator = match fields[0].trim().to_ascii_lowercase().as_str() {
            "exact" => {
                arity(0)?;
                Estimator::Exact
            }
            "multinomial" => {
                arity(1)?;
                Estimator::Multinomial {
                    samples: parse_count(spec, "S", fields[1])?,
                }
            }
            "stratified" => {
                arity(1)?;
                Estimator::Stratified {
                    samples: parse_count(spec, "S", fields[1])?,
                }
            }
            "topk" => {
                arity(2)?;
                Estimator::TopK {
                    k: parse_count(spec, "K", fields[1])?,
                    samples: parse_count(spec, "S", fields[2])?,
                }
            }
            "cv" => {
                arity(2)?;
                Estimator::ControlVariate {
                    rank: parse_count(spec, "R", fields[1])?,
                    samples: parse_count(spec, "S", fields[2])?,
                }
            }
            "adaptive" => {
                arity(2)?;
                let min = parse_count(spec, "MIN", fields[1])?;
                let max = parse_count(spec, "MAX", fields[2])?;
                if min > max {
                    return Err(bad(
                        spec,
                        format!("adaptive needs MIN ≤ MAX, got {min} > {max}"),
                    ));
                }
                Estimator::Adaptive { min, max }
            }
            "lsh" => {
                if fields.len() != 5 {
                    arity(3)?;
                }
                let bits = parse_count(spec, "BITS", fields[1])?;
                if bits > 16 {
                    return Err(bad(spec, format!("lsh needs 1 ≤ BITS ≤ 16, got {bits}")));
                }
                let rounds = match fields.get(4) {
                    Some(r) => parse_count(spec, "R", r)?,
                    None => 1,
                };
                if rounds > MAX_LSH_ROUNDS {
                    return Err(bad(
                        spec,
                        format!("lsh needs 1 ≤ R ≤ {MAX_LSH_ROUNDS} rounds, got {rounds}"),
                    ));
                }
                Estimator::Lsh {
                    bits,
                    block: parse_count(spec, "BLOCK", fields[2])?,
                    samples: parse_count(spec, "S", fields[3])?,
                    rounds,
                }
            }
            "" => return Err(bad(spec, format!("empty estimator; {GRAMMAR}"))),
            other => return Err(bad(spec, format!("unknown estimator `{other}`; {GRAMMAR}"))),
        };
        let mut noise = Noise::default();
        let (mut seen_depol, mut seen_damp) = (false, false);
        for part in parts {
            let f: Vec<&str> = part.trim().split(':').collect();
            let dup = |seen: bool| -> Result<()> {
                if seen {
                    Err(bad(spec, format!("noise term `{}` given twice", f[0])))
                } else {
                    Ok(())
                }
            };
            let want = |n: usize| -> Result<()> {
                if f.len() != n + 1 {
                    Err(bad(
                        spec,
                        format!(
                            "noise term `{}` takes {n} parameter(s), got {}",
                            f[0],
                            f.len() - 1
                        ),
                    ))
                } else {
                    Ok(())
                }
            };
            match f[0].trim().to_ascii_lowercase().as_str() {
                "depol" => {
                    dup(seen_depol)?;
                    want(1)?;
                    noise.depol = parse_prob(spec, "depolarizing λ", f[1])?;
                    seen_depol = true;
                }
                "readout" => {
                    dup(noise.readout.is_some())?;
                    want(2)?;
                    noise.readout = Some((
                        parse_prob(spec, "readout ε01", f[1])?,
                        parse_prob(spec, "readout ε10", f[2])?,
                    ));
                }
                "damp" => {
                    dup(seen_damp)?;
                    want(1)?;
                    noise.damp = parse_prob(spec, "damping γ", f[1])?;
                    seen_damp = true;
                }
                "mitigate" => {
                    dup(noise.mitigate)?;
                    want(0)?;
                    noise.mitigate = true;
                }
                other => {
                    return Err(bad(
                        spec,
                        format!(
                            "unknown noise term `{other}` (expected depol, readout, damp or mitigate)"
                        ),
                    ));
                }
            }
        }
        if estimator == Estimator::Exact && !noise.is_none() {
            return Err(bad(
                spec,
                "`exact` makes no measurement, so noise terms do not apply to it",
            ));
        }
        if matches!(estimator, Estimator::Lsh { .. }) && noise.mitigate {
            return Err(bad(
                spec,
                "`+mitigate` is not available for `lsh`: readout mitigation gives signed \
                 (quasi-probability) weights, and the lsh kernel merges its terms in log-sum-exp \
                 form, which needs positive ones; the noise terms themselves apply to its \
                 remainder draws",
            ));
        }
        if noise.mitigate {
            let (e01, e10) = noise.readout_or_zero();
            if noise.readout.is_none() && noise.damp == 0.0 {
                return Err(bad(
                    spec,
                    "`+mitigate` corrects readout/damping errors; add +readout or +damp",
                ));
            }
            // The calibrated per-qubit confusion matrix is readout ∘ damping; its determinant is
            // (1 - ε01 - ε10)(1 - γ), and it must be invertible.
            let det = (1.0 - e01 - e10) * (1.0 - noise.damp);
            if det.abs() < 1e-9 {
                return Err(bad(
                    spec,
                    "the per-qubit confusion matrix is singular (ε01 + ε10 = 1 or γ = 1); mitigation impossible",
                ));
            }
            // Mitigation multiplies each shot's contribution by up to ‖M⁻¹‖₁ per index qubit,
            // exponentially in the register width; refuse confusion matrices that are too close
            // to singular for that to stay reasonable (the Lk-dependent total is checked at call
            // time by `check_keys`).
            let norm = noise.mitigation_norm_per_qubit();
            if norm > MAX_MITIGATION_NORM_PER_QUBIT {
                return Err(bad(
                    spec,
                    format!(
                        "readout mitigation would amplify statistical errors by ‖M⁻¹‖₁ = {norm:.4} \
                         per index qubit (up to ‖M⁻¹‖₁^m for m = ⌈log2 Lk⌉ qubits), above the \
                         per-qubit bound {MAX_MITIGATION_NORM_PER_QUBIT}; the confusion matrix is \
                         too close to singular (det M = {det:.4})"
                    ),
                ));
            }
        }
        Ok(EstimatorSpec { estimator, noise })
    }
}

impl fmt::Display for Estimator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Estimator::Exact => write!(f, "exact"),
            Estimator::Multinomial { samples } => write!(f, "multinomial:{samples}"),
            Estimator::Stratified { samples } => write!(f, "stratified:{samples}"),
            Estimator::TopK { k, samples } => write!(f, "topk:{k}:{samples}"),
            Estimator::ControlVariate { rank, samples } => write!(f, "cv:{rank}:{samples}"),
            Estimator::Adaptive { min, max } => write!(f, "adaptive:{min}:{max}"),
            Estimator::Lsh {
                bits,
                block,
                samples,
                rounds: 1,
            } => write!(f, "lsh:{bits}:{block}:{samples}"),
            Estimator::Lsh {
                bits,
                block,
                samples,
                rounds,
            } => write!(f, "lsh:{bits}:{block}:{samples}:{rounds}"),
        }
    }
}

impl fmt::Display for EstimatorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.estimator)?;
        let n = &self.noise;
        if n.depol != 0.0 {
            write!(f, "+depol:{}", n.depol)?;
        }
        if let Some((a, b)) = n.readout {
            write!(f, "+readout:{a}:{b}")?;
        }
        if n.damp != 0.0 {
            write!(f, "+damp:{}", n.damp)?;
        }
        if n.mitigate {
            write!(f, "+mitigate")?;
        }
        Ok(())
    }
}

impl serde::Serialize for EstimatorSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EstimatorSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_canonical_strings() {
        for s in [
            "exact",
            "multinomial:8",
            "stratified:32",
            "topk:4:16",
            "cv:2:32",
            "adaptive:4:64",
            "lsh:8:128:64",
            "lsh:8:128:64:3",
            "lsh:8:128:64+depol:0.01+readout:0.02:0.03",
            "stratified:32+readout:0.02:0.03+mitigate",
            "multinomial:8+depol:0.1+readout:0.01:0.02+damp:0.05+mitigate",
        ] {
            let spec: EstimatorSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
    }

    #[test]
    fn noise_order_is_canonicalised() {
        let spec: EstimatorSpec = "stratified:4+mitigate+damp:0.1".parse().unwrap();
        assert_eq!(spec.to_string(), "stratified:4+damp:0.1+mitigate");
    }

    #[test]
    fn rejects_bad_specs_with_reasons() {
        for (s, needle) in [
            ("", "empty"),
            ("gauss:3", "unknown estimator"),
            ("multinomial", "takes 1"),
            ("multinomial:0", "at least 1"),
            ("stratified:x", "positive integer"),
            ("adaptive:9:3", "MIN ≤ MAX"),
            ("exact+depol:0.1", "no measurement"),
            ("stratified:4+depol:1.5", "[0, 1]"),
            ("stratified:4+depol:0.1+depol:0.2", "twice"),
            ("stratified:4+mitigate", "add +readout"),
            ("stratified:4+readout:0.5:0.5+mitigate", "singular"),
            ("stratified:4+readout:0.4:0.4+mitigate", "per-qubit bound 4"),
            ("stratified:4+damp:0.7+mitigate", "‖M⁻¹‖₁ = 5.6667"),
            ("stratified:4+phase:0.1", "unknown noise"),
            ("lsh:4:64", "takes 3"),
            ("lsh:4:64:32:2:1", "takes 3"),
            ("lsh:4:64:32:9", "R ≤ 8"),
            ("lsh:4:64:32:0", "at least 1"),
            ("lsh:17:64:32", "BITS ≤ 16"),
            ("lsh:4:0:32", "at least 1"),
            (
                "lsh:4:64:32+readout:0.1:0.1+mitigate",
                "not available for `lsh`",
            ),
        ] {
            let err = s.parse::<EstimatorSpec>().unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "`{s}` gave `{err}`, expected to mention `{needle}`"
            );
        }
    }

    /// ‖M⁻¹‖₁ in closed form: 1/(1 − 2ε) for equal flip rates, (1 + γ)/(1 − γ) for damping
    /// alone; the per-qubit bound keeps realistic noise and refuses near-singular matrices.
    #[test]
    fn mitigation_norm_per_qubit_closed_forms() {
        let norm = |s: &str| {
            s.parse::<EstimatorSpec>()
                .unwrap()
                .noise
                .mitigation_norm_per_qubit()
        };
        for eps in [0.01, 0.05, 0.1, 0.3, 0.37] {
            let got = norm(&format!("stratified:4+readout:{eps}:{eps}+mitigate"));
            assert!(
                (got - 1.0 / (1.0 - 2.0 * eps)).abs() < 1e-12,
                "ε = {eps}: {got}"
            );
        }
        for g in [0.01, 0.1, 0.5, 0.6] {
            let got = norm(&format!("stratified:4+damp:{g}+mitigate"));
            assert!(
                (got - (1.0 + g) / (1.0 - g)).abs() < 1e-12,
                "γ = {g}: {got}"
            );
        }
        // Every mitigated spec used in the repository's tests, docs and benchmarks parses.
        for s in [
            "stratified:32+readout:0.02:0.03+mitigate",
            "topk:8:32+readout:0.02:0.03+mitigate",
            "multinomial:8+depol:0.1+readout:0.01:0.02+damp:0.05+mitigate",
            "multinomial:64+depol:0.3+readout:0.1:0.1+mitigate",
            "multinomial:256+readout:0.05:0.08+damp:0.02+mitigate",
            "stratified:8+damp:0.1+readout:0.03:0.02+mitigate",
            "stratified:64+readout:0.05:0.05+mitigate",
            "stratified:64+damp:0.1+mitigate",
        ] {
            let spec: EstimatorSpec = s.parse().unwrap();
            assert!(spec.noise.mitigation_norm_per_qubit() < 1.3, "{s}");
            // Even a register of 2^24 keys stays within the call-time bound.
            spec.check_keys(1 << 24).unwrap();
        }
    }

    /// The call-time bound: readout 0.3:0.3 has ‖M⁻¹‖₁ = 2.5, so Γ = 2.5^m is 610 at Lk = 128
    /// (m = 7, accepted) and 1526 at Lk = 256 (m = 8, refused, naming Lk, m and the factor).
    #[test]
    fn mitigation_amplification_is_bounded_by_the_number_of_keys() {
        let spec: EstimatorSpec = "stratified:4+readout:0.3:0.3+mitigate".parse().unwrap();
        assert!((spec.noise.mitigation_amplification(128) - 2.5f64.powi(7)).abs() < 1e-9);
        spec.check_keys(128).unwrap();
        spec.check_keys(1).unwrap();
        let err = spec.check_keys(256).unwrap_err().to_string();
        for needle in ["Lk = 256", "m = 8", "2.5000^8 = 1.526e3", "bound 1e3"] {
            assert!(err.contains(needle), "`{err}` does not mention `{needle}`");
        }
        let plain: EstimatorSpec = "stratified:4+readout:0.3:0.3".parse().unwrap();
        assert_eq!(plain.noise.mitigation_amplification(1 << 20), 1.0);
        plain.check_keys(1 << 20).unwrap();
    }

    #[test]
    fn serde_uses_the_string_form() {
        let spec: EstimatorSpec = "topk:2:8+depol:0.05".parse().unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(json, "\"topk:2:8+depol:0.05\"");
        let back: EstimatorSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        assert!(serde_json::from_str::<EstimatorSpec>("\"nope\"").is_err());
    }
}
