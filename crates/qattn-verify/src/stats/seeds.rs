//! Tests across training seeds: is system A's score distribution over seeds better than B's?
//!
//! - [`welch`]: Welch's unequal-variance t-test (`scipy.stats.ttest_ind(a, b, equal_var=False)`)
//!   and its confidence interval of `mean(a) − mean(b)`;
//! - [`wilcoxon`]: the Wilcoxon signed-rank test on paired seeds (`scipy.stats.wilcoxon(a, b)`
//!   with its defaults, SciPy 1.17);
//! - [`aso`]: Almost Stochastic Order (`deepsig.aso`, deep-significance 1.2.8).

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal};
use statrs::function::beta::beta_reg;

use super::rng::Resampler;
use super::{check_finite, check_level, dist_err, mean, var};
use crate::error::{Result, invalid};

/// The result of a test across seeds (serialised with these field names).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TestResult {
    /// `welch` or `wilcoxon`.
    pub test: String,
    /// Welch: `t`; Wilcoxon: `min(W+, W−)` (SciPy's two-sided statistic).
    pub statistic: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// Degrees of freedom (Welch–Satterthwaite) where the test has them.
    pub df: Option<f64>,
    /// How the p-value was computed (Wilcoxon: `exact`, `exact-permutation` or `asymptotic`).
    pub method: Option<String>,
    /// Mean of `a`.
    pub mean_a: f64,
    /// Mean of `b`.
    pub mean_b: f64,
    /// `mean_a − mean_b`.
    pub delta: f64,
    /// Lower end of the CI of `delta` (Welch), `None` where the test gives none.
    pub ci_low: Option<f64>,
    /// Upper end of the CI of `delta` (Welch).
    pub ci_high: Option<f64>,
    /// Confidence level of `ci_low`/`ci_high`: the requested one (Welch) or the one the exact
    /// signed-rank distribution achieves (Wilcoxon; see [`wilcoxon`]).
    pub ci_level: Option<f64>,
    /// Wilcoxon: the Hodges–Lehmann estimate of the location of `a − b` (median of the Walsh
    /// averages), the point estimate that goes with its interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<f64>,
}

/// Two-sided p-value of a t statistic with `df` degrees of freedom:
/// `2·P(T > |t|) = I_{df/(df+t²)}(df/2, ½)` (regularised incomplete beta, no cancellation).
pub(crate) fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_infinite() {
        return 0.0;
    }
    beta_reg(df / 2.0, 0.5, df / (df + t * t))
}

/// The `p`-quantile of Student's t with `df` degrees of freedom: statrs' inverse CDF refined
/// by Newton steps on statrs' CDF (relative accuracy ~1e-14).
pub(crate) fn t_quantile(df: f64, p: f64) -> Result<f64> {
    use statrs::distribution::{Continuous, StudentsT};
    let t = StudentsT::new(0.0, 1.0, df).map_err(|e| dist_err("t quantile", e))?;
    let mut x = t.inverse_cdf(p);
    for _ in 0..4 {
        let f = t.pdf(x);
        if f.is_nan() || f <= 0.0 || !x.is_finite() {
            break;
        }
        // cdf(x) − p, computed on the small tail for accuracy
        let err = if x < 0.0 {
            t.cdf(x) - p
        } else {
            (1.0 - p) - t.sf(x)
        };
        let step = err / f;
        x -= step;
        if step.abs() <= 1e-15 * x.abs().max(1e-300) {
            break;
        }
    }
    Ok(x)
}

/// Welch's unequal-variance t-test of `mean(a) = mean(b)`, two-sided, with the 95% confidence
/// interval of `mean(a) − mean(b)`: [`welch_with_level`] at level 0.95.
///
/// Errors: as [`welch_with_level`].
pub fn welch(a: &[f64], b: &[f64]) -> Result<TestResult> {
    welch_with_level(a, b, 0.95)
}

/// Welch's unequal-variance t-test of `mean(a) = mean(b)`, two-sided, with the confidence
/// interval of `mean(a) − mean(b)` at `level`.
///
/// With sample variances `v` (ddof 1), `vn_a = v_a/n_a`, `vn_b = v_b/n_b`:
/// `t = (ā − b̄)/√(vn_a + vn_b)`, Welch–Satterthwaite
/// `df = (vn_a + vn_b)² / (vn_a²/(n_a − 1) + vn_b²/(n_b − 1))`, `p = 2·P(T_df > |t|)`,
/// CI `(ā − b̄) ± t_{df, (1+level)/2}·√(vn_a + vn_b)`. This is
/// `scipy.stats.ttest_ind(a, b, equal_var=False)` and its `confidence_interval(level)`.
///
/// Errors: fewer than 2 values in either sample, non-finite values, `level` outside `(0, 1)`,
/// and zero variance in both samples — SciPy returns `t = ±inf, p = 0` (different means) or
/// `NaN` (equal means) there; no test is meaningful, so this is an error naming the cause.
pub fn welch_with_level(a: &[f64], b: &[f64], level: f64) -> Result<TestResult> {
    let what = "welch";
    for (name, v) in [("a", a), ("b", b)] {
        if v.len() < 2 {
            return Err(invalid(format!(
                "{what}: {name} needs at least 2 values (seeds), got {}",
                v.len()
            )));
        }
        check_finite(what, name, v)?;
    }
    check_level(what, "level", level)?;
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (ma, mb) = (mean(a), mean(b));
    let (vna, vnb) = (var(a, 1) / na, var(b, 1) / nb);
    if vna + vnb == 0.0 {
        return Err(invalid(format!(
            "{what}: both samples have zero variance (all a equal, all b equal): the t statistic \
             is undefined; compare the values directly"
        )));
    }
    let df = (vna + vnb).powi(2) / (vna * vna / (na - 1.0) + vnb * vnb / (nb - 1.0));
    let se = (vna + vnb).sqrt();
    let delta = ma - mb;
    let t = delta / se;
    let p = t_two_sided_p(t, df);
    let q = t_quantile(df, 1.0 - (1.0 - level) / 2.0)?;
    Ok(TestResult {
        test: "welch".into(),
        statistic: t,
        p_value: p,
        df: Some(df),
        method: None,
        mean_a: ma,
        mean_b: mb,
        delta,
        ci_low: Some(delta - q * se),
        ci_high: Some(delta + q * se),
        ci_level: Some(level),
        estimate: None,
    })
}

/// Counts of `W+ = s` for `s = 0..=n(n+1)/2` over the `2^n` sign assignments of ranks `1..=n`
/// (the exact null distribution of the signed-rank statistic without ties), as `f64` — exact
/// for `n ≤ 50` (counts below 2^50).
fn signed_rank_counts(n: usize) -> Vec<f64> {
    let max = n * (n + 1) / 2;
    let mut c = vec![0.0f64; max + 1];
    c[0] = 1.0;
    for k in 1..=n {
        let top = k * (k + 1) / 2;
        for s in (k..=top).rev() {
            c[s] += c[s - k];
        }
    }
    c
}

/// The Wilcoxon signed-rank test on the paired differences `d = a − b`, two-sided.
///
/// Exactly `scipy.stats.wilcoxon(a, b)` with its defaults in SciPy 1.17
/// (`zero_method="wilcox"`, `correction=False`, `method="auto"`):
/// - zeros of `d` are dropped; the `m` non-zero `|d|` get average ranks; `W+` (`W−`) is the
///   rank sum of positive (negative) differences; the statistic is `min(W+, W−)`;
/// - `method`, decided on `n = len(d)` (zeros included):
///   - `exact` when `n ≤ 50` and there are no zeros and no ties among `|d|`: the exact null
///     distribution of `W+` (counts over the `2^n` sign patterns),
///     `p = min(1, 2·min(P(W ≤ ⌊W+⌋), P(W ≥ ⌈W+⌉)))`;
///   - `exact-permutation` when `n ≤ 13` with zeros or ties: SciPy then runs
///     `permutation_test` over all `2^n` sign flips of `d` (exhaustive, hence exact) with
///     statistic `W+` (average ranks kept), `p = min(1, 2·min(#{W ≤ W+}, #{W ≥ W+})/2^n)`
///     (ties within `100·ε·W+`);
///   - `asymptotic` otherwise: `z = (W+ − m(m+1)/4)/σ`,
///     `σ² = (m(m+1)(2m+1) − Σ(t³ − t)/2)/24` over tie-group sizes `t` (tie correction, no
///     continuity correction), `p = 2·Φ(−|z|)`.
///
/// `delta` is `mean(a) − mean(b)`. The interval is the Hodges–Lehmann interval at 95% that
/// goes with the test ([`wilcoxon_with_level`]); `estimate` is its point estimate.
///
/// Errors: different lengths, empty input, non-finite values, all differences zero (the test
/// is undefined; SciPy returns NaN).
pub fn wilcoxon(a: &[f64], b: &[f64]) -> Result<TestResult> {
    wilcoxon_with_level(a, b, 0.95)
}

/// Most paired differences for which [`wilcoxon_with_level`] forms the Walsh averages
/// (n(n+1)/2 of them: 4.5 million at this size); above it the interval is left out.
pub const WILCOXON_CI_MAX_N: usize = 3000;

/// [`wilcoxon`] with the Hodges–Lehmann confidence interval of the location of `d = a − b` at
/// `level` (the interval that inverts the signed-rank test; R's
/// `wilcox.test(a, b, paired = TRUE, conf.int = TRUE)` in its exact branch).
///
/// The `M = n(n+1)/2` Walsh averages `(d_i + d_j)/2, i ≤ j` of all `n` differences are sorted
/// as `W_(1) ≤ … ≤ W_(M)`; `estimate` is their median. The interval is `[W_(k), W_(M+1−k)]`:
/// - **exact** (`n ≤ 50`, no zero and no tied `|d|`): `k` is the smallest `x` with
///   `P(V ≤ x) ≥ (1 − level)/2` under the exact null distribution of `V = W+`, at least 1.
///   Because `V` is discrete the achieved level `1 − 2·P(V ≤ k − 1)` is reported in
///   `ci_level`; it is at least `level` when `k` > 1 was reachable, and below it for very few
///   differences (n = 5 gives at best 1 − 2/32 = 0.9375, the interval [min d, max d]);
/// - **normal approximation** otherwise: `k = max(1, ⌊M/2 − z_{(1+level)/2}·σ⌋)` with the
///   tie-corrected `σ` of the test's asymptotic branch; `ci_level` is `level`.
///
/// Every shift θ inside the exact interval leaves the test of `d − θ` unrejected at the
/// achieved level, every θ outside rejects it (tested). With more than
/// [`WILCOXON_CI_MAX_N`] differences the interval and estimate are `None`.
///
/// Errors: as [`wilcoxon`], and `level` outside (0, 1).
pub fn wilcoxon_with_level(a: &[f64], b: &[f64], level: f64) -> Result<TestResult> {
    let what = "wilcoxon";
    check_level(what, "level", level)?;
    if a.len() != b.len() {
        return Err(invalid(format!(
            "{what}: paired samples need equal lengths, got a: {}, b: {}",
            a.len(),
            b.len()
        )));
    }
    if a.is_empty() {
        return Err(invalid(format!("{what}: empty input")));
    }
    check_finite(what, "a", a)?;
    check_finite(what, "b", b)?;
    let n = a.len();
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let nz: Vec<f64> = d.iter().copied().filter(|&x| x != 0.0).collect();
    let n_zero = n - nz.len();
    let m = nz.len();
    if m == 0 {
        return Err(invalid(format!(
            "{what}: all {n} differences a − b are zero; the signed-rank test is undefined"
        )));
    }
    let abs: Vec<f64> = nz.iter().map(|x| x.abs()).collect();
    let (ranks, ties) = qattn_glue::metrics::average_ranks(&abs);
    let has_ties = ties.iter().any(|&t| t > 1);
    // Σ(t³ − t) over the tie groups of the non-zero |d| (the normal approximation's correction)
    let tie: f64 = ties.iter().map(|&t| (t * t * t - t) as f64).sum();
    let w_plus: f64 = nz
        .iter()
        .zip(&ranks)
        .filter(|(x, _)| **x > 0.0)
        .map(|(_, r)| r)
        .sum();
    let w_minus: f64 = nz
        .iter()
        .zip(&ranks)
        .filter(|(x, _)| **x < 0.0)
        .map(|(_, r)| r)
        .sum();
    let (p, method) = if n <= 50 && !has_ties && n_zero == 0 {
        let counts = signed_rank_counts(m);
        let total = 2f64.powi(m as i32);
        let lo = w_plus.floor() as usize;
        let hi = w_plus.ceil() as usize;
        let sf: f64 = counts[lo.min(counts.len())..].iter().sum();
        let cdf: f64 = counts[..=hi.min(counts.len() - 1)].iter().sum();
        ((2.0 * sf.min(cdf) / total).clamp(0.0, 1.0), "exact")
    } else if n <= 13 {
        let gamma = 100.0 * f64::EPSILON * w_plus.abs();
        let (mut le, mut ge) = (0u64, 0u64);
        for mask in 0u32..(1u32 << m) {
            let w: f64 = (0..m)
                .filter(|&i| {
                    // flipping the sign of d_i when bit i is set
                    (nz[i] > 0.0) != (mask >> i & 1 == 1)
                })
                .map(|i| ranks[i])
                .sum();
            le += u64::from(w <= w_plus + gamma);
            ge += u64::from(w >= w_plus - gamma);
        }
        let total = (1u64 << m) as f64;
        let p = (2.0 * (le.min(ge) as f64) / total).clamp(0.0, 1.0);
        (p, "exact-permutation")
    } else {
        let mf = m as f64;
        let mn = mf * (mf + 1.0) * 0.25;
        let se = ((mf * (mf + 1.0) * (2.0 * mf + 1.0) - tie / 2.0) / 24.0).sqrt();
        let z = (w_plus - mn) / se;
        let normal = Normal::new(0.0, 1.0).map_err(|e| dist_err(what, e))?;
        ((2.0 * normal.cdf(-z.abs())).min(1.0), "asymptotic")
    };
    let (ma, mb) = (mean(a), mean(b));
    let interval = if n <= WILCOXON_CI_MAX_N {
        Some(hodges_lehmann(
            &d,
            level,
            n <= 50 && !has_ties && n_zero == 0,
            tie,
        )?)
    } else {
        None
    };
    Ok(TestResult {
        test: "wilcoxon".into(),
        statistic: w_plus.min(w_minus),
        p_value: p,
        df: None,
        method: Some(method.into()),
        mean_a: ma,
        mean_b: mb,
        delta: ma - mb,
        ci_low: interval.map(|i| i.1),
        ci_high: interval.map(|i| i.2),
        ci_level: interval.map(|i| i.3),
        estimate: interval.map(|i| i.0),
    })
}

/// (estimate, low, high, achieved level) of the Hodges–Lehmann interval of [`wilcoxon_with_level`]
/// for the differences `d`; `exact` picks the branch, `tie` is Σ(t³ − t) over the tie groups of
/// the non-zero `|d|` (normal branch only).
fn hodges_lehmann(d: &[f64], level: f64, exact: bool, tie: f64) -> Result<(f64, f64, f64, f64)> {
    let n = d.len();
    let mut walsh = Vec::with_capacity(n * (n + 1) / 2);
    for i in 0..n {
        for j in i..n {
            walsh.push(0.5 * (d[i] + d[j]));
        }
    }
    walsh.sort_by(f64::total_cmp);
    let m = walsh.len();
    let estimate = if m % 2 == 1 {
        walsh[m / 2]
    } else {
        0.5 * (walsh[m / 2 - 1] + walsh[m / 2])
    };
    let alpha = 1.0 - level;
    let (k, achieved) = if exact {
        let counts = signed_rank_counts(n);
        let total = 2f64.powi(n as i32);
        let mut cdf = 0.0;
        let mut k = counts.len() - 1;
        for (x, c) in counts.iter().enumerate() {
            cdf += c / total;
            if cdf >= alpha / 2.0 {
                k = x;
                break;
            }
        }
        let k = k.max(1);
        let below: f64 = counts[..k].iter().sum::<f64>() / total;
        (k, 1.0 - 2.0 * below)
    } else {
        let nf = n as f64;
        let sigma = ((nf * (nf + 1.0) * (2.0 * nf + 1.0) - tie / 2.0) / 24.0).sqrt();
        let z = Normal::new(0.0, 1.0)
            .map_err(|e| dist_err("wilcoxon", e))?
            .inverse_cdf(1.0 - alpha / 2.0);
        let k = (m as f64 / 2.0 - z * sigma).floor().max(1.0) as usize;
        (k.min(m.div_ceil(2)), level)
    };
    Ok((estimate, walsh[k - 1], walsh[m - k], achieved))
}

/// The result of [`aso`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AsoResult {
    /// `ε_min`: an upper confidence bound on the violation ratio (clipped to `[0, 1]`).
    pub eps_min: f64,
    /// The violation ratio `ε_W2(F_A, F_B)` of the empirical distributions.
    pub violation_ratio: f64,
    /// The decision threshold.
    pub tau: f64,
    /// `eps_min < tau`: A is almost stochastically dominant over B ("A better").
    pub dominant: bool,
}

/// Grid step of the quantile integrals (deep-significance's default `dt`).
pub const ASO_DT: f64 = 0.005;

/// Empirical quantile function as deep-significance defines it:
/// `Q(p) = sorted[clip(⌈n·p⌉ − 1, 0, n − 1)]`.
fn empirical_quantile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let k = (n as f64 * p).ceil() as i64 - 1;
    sorted[k.clamp(0, n as i64 - 1) as usize]
}

/// The violation ratio `ε_W2(F_A, F_B)` of two ascending-sorted samples on deep-significance's
/// grid `t = dt, 2·dt, …` (`numpy.arange(dt, 1, dt)`, 199 points for `dt = 0.005`):
///
/// `W2² = Σ_t (Q_B(t) − Q_A(t))²·dt`, violation integral `Σ_{t > dt, Q_A(t) < Q_B(t)}
/// (Q_B(t) − Q_A(t))²·dt`, ratio = violation / W2², and ½ when `W2² = 0` (identical
/// quantile functions). Like `deepsig.aso.compute_violation_ratio` (1.2.8), the first grid
/// point is left out of the violation integral (but not of `W2²`): a pure shift of A below B
/// therefore gives `198/199`, not 1.
pub fn violation_ratio(sorted_a: &[f64], sorted_b: &[f64]) -> f64 {
    let k = ((1.0 - ASO_DT) / ASO_DT).ceil() as usize;
    let (mut w2, mut viol) = (0.0, 0.0);
    for i in 0..k {
        let t = ASO_DT + i as f64 * ASO_DT;
        let f = empirical_quantile(sorted_a, t);
        let g = empirical_quantile(sorted_b, t);
        let sq = (g - f) * (g - f) * ASO_DT;
        w2 += sq;
        if i > 0 && f < g {
            viol += sq;
        }
    }
    if w2 == 0.0 { 0.5 } else { viol / w2 }
}

/// Almost Stochastic Order (del Barrio, Cuesta-Albertos & Matrán 2018; Dror, Shlomov &
/// Reichart, ACL 2019), as `deepsig.aso(a, b, confidence_level, num_bootstrap_iterations,
/// dt=0.005)` of deep-significance 1.2.8 computes it. Higher scores are better; A is the
/// system suspected to be better.
///
/// 1. `ε = violation_ratio(A, B)` ([`violation_ratio`]): the share of the squared
///    Wasserstein-2 distance between the empirical quantile functions where A is below B
///    (`ε_W2(F, G) = ∫_{F⁻¹<G⁻¹} (F⁻¹(t) − G⁻¹(t))² dt / W2²(F, G)`).
/// 2. `bootstrap_iterations` times, resample A (n values) and B (m values) with replacement
///    (deepsig draws `Q(U)`, `U ~ Uniform(0, 1)`: the same thing) and recompute `ε*`.
/// 3. `σ̂ = std(√(nm/(n+m))·(ε* − ε))` (population standard deviation, ddof 0).
/// 4. `ε_min = clip(ε − √((n+m)/(nm))·σ̂·Φ⁻¹(1 − confidence), 0, 1)`: an upper
///    `confidence`-level bound on the violation ratio.
///
/// Decision: A is almost stochastically dominant over B ("A better") when `ε_min < τ`
/// (`dominant`). deep-significance documents `τ = 0.5` as the threshold and recommends the
/// stricter `τ = 0.2`. `ε_min` near 1 means B is better: test `aso(b, a, …)` for that claim.
///
/// Randomness: stream 0 of `seed` ([`Resampler`]); deepsig uses NumPy's generator, so `ε` is
/// identical and `ε_min` agrees up to Monte-Carlo error in `σ̂`.
///
/// Errors: an empty sample, non-finite values, `confidence` outside `(0, 1)`, `tau` outside
/// `[0, 1]`, `bootstrap_iterations == 0`.
pub fn aso(
    a: &[f64],
    b: &[f64],
    tau: f64,
    confidence: f64,
    bootstrap_iterations: usize,
    seed: u64,
) -> Result<AsoResult> {
    let what = "aso";
    for (name, v) in [("a", a), ("b", b)] {
        if v.is_empty() {
            return Err(invalid(format!("{what}: {name} is empty")));
        }
        check_finite(what, name, v)?;
    }
    check_level(what, "confidence", confidence)?;
    if !(0.0..=1.0).contains(&tau) {
        return Err(invalid(format!("{what}: tau must be in [0, 1], got {tau}")));
    }
    if bootstrap_iterations == 0 {
        return Err(invalid(format!(
            "{what}: bootstrap_iterations must be at least 1"
        )));
    }
    let sorted = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s
    };
    let (sa, sb) = (sorted(a), sorted(b));
    let eps = violation_ratio(&sa, &sb);
    let (n, m) = (a.len() as f64, b.len() as f64);
    let c = (n * m / (n + m)).sqrt();
    let mut rng = Resampler::new(seed);
    let (mut ra, mut rb) = (vec![0.0; a.len()], vec![0.0; b.len()]);
    let mut dev = Vec::with_capacity(bootstrap_iterations);
    for _ in 0..bootstrap_iterations {
        for x in ra.iter_mut() {
            *x = sa[rng.index(sa.len())];
        }
        for x in rb.iter_mut() {
            *x = sb[rng.index(sb.len())];
        }
        ra.sort_by(f64::total_cmp);
        rb.sort_by(f64::total_cmp);
        dev.push(c * (violation_ratio(&ra, &rb) - eps));
    }
    let sigma = var(&dev, 0).sqrt();
    let normal = Normal::new(0.0, 1.0).map_err(|e| dist_err(what, e))?;
    let eps_min = (eps - sigma / c * normal.inverse_cdf(1.0 - confidence)).clamp(0.0, 1.0);
    Ok(AsoResult {
        eps_min,
        violation_ratio: eps,
        tau,
        dominant: eps_min < tau,
    })
}
