//! Study 3: run time against the sequence length, with a fitted power law (module docs of
//! [`super`]).

use super::common::parse_spec;
use super::workload::gaussian_qkv;
use super::*;
use crate::error::{Result, invalid};
use crate::stats::seeds::t_quantile;
use qattn_kernels::{AttentionOptions, attention};
use serde::Serialize;
use std::time::Instant;

/// Least-squares fit of ln t = a + b ln n.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PowerLawFit {
    /// The exponent b.
    pub exponent: f64,
    /// The intercept a (natural logarithms).
    pub intercept: f64,
    /// Standard error of b.
    pub se: f64,
    /// Degrees of freedom (points − 2).
    pub df: usize,
    /// Confidence level of the interval.
    pub level: f64,
    /// Lower end of the interval: b − t_{df, (1+level)/2} · se.
    pub ci_low: f64,
    /// Upper end of the interval.
    pub ci_high: f64,
    /// Coefficient of determination of the log-log fit.
    pub r_squared: f64,
}

/// Fits ln t = a + b ln n by ordinary least squares over the pairs (n_i, t_i) and gives b a
/// `level` confidence interval from Student's t with (points − 2) degrees of freedom. Needs at
/// least three points, positive finite values and two distinct n.
pub fn fit_power_law(n: &[f64], t: &[f64], level: f64) -> Result<PowerLawFit> {
    if n.len() != t.len() || n.len() < 3 {
        return Err(invalid(format!(
            "power-law fit: need ≥ 3 (n, t) pairs of equal length, got {} n and {} t",
            n.len(),
            t.len()
        )));
    }
    if !(level > 0.0 && level < 1.0) {
        return Err(invalid(format!(
            "power-law fit: level must be in (0, 1), got {level}"
        )));
    }
    if let Some((i, (a, b))) = n
        .iter()
        .zip(t)
        .enumerate()
        .find(|(_, (a, b))| !(a.is_finite() && **a > 0.0 && b.is_finite() && **b > 0.0))
    {
        return Err(invalid(format!(
            "power-law fit: pair {i} is (n = {a}, t = {b}); both must be finite and > 0"
        )));
    }
    let x: Vec<f64> = n.iter().map(|v| v.ln()).collect();
    let y: Vec<f64> = t.iter().map(|v| v.ln()).collect();
    let m = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / m, y.iter().sum::<f64>() / m);
    let sxx: f64 = x.iter().map(|v| (v - mx).powi(2)).sum();
    let sxy: f64 = x.iter().zip(&y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let syy: f64 = y.iter().map(|v| (v - my).powi(2)).sum();
    if sxx <= 0.0 {
        return Err(invalid("power-law fit: every n is the same"));
    }
    let b = sxy / sxx;
    let a = my - b * mx;
    let sse: f64 = x
        .iter()
        .zip(&y)
        .map(|(xi, yi)| (yi - a - b * xi).powi(2))
        .sum();
    let df = x.len() - 2;
    let se = (sse / df as f64 / sxx).sqrt();
    let tq = t_quantile(df as f64, 0.5 + level / 2.0)?;
    Ok(PowerLawFit {
        exponent: b,
        intercept: a,
        se,
        df,
        level,
        ci_low: b - tq * se,
        ci_high: b + tq * se,
        r_squared: if syy > 0.0 { 1.0 - sse / syy } else { 1.0 },
    })
}

/// One estimator's times.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimingSeries {
    /// The spec string (`exact` or an estimator at S = [`TimingStudy::shots`]).
    pub spec: String,
    /// Best time in seconds per n (same order as [`TimingStudy::lengths`]).
    pub seconds: Vec<f64>,
    /// The fit of ln t on ln n.
    pub fit: PowerLawFit,
}

/// Result of [`timing_study`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimingStudy {
    /// Sequence lengths n (Lq = Lk = n).
    pub lengths: Vec<usize>,
    /// Batch B.
    pub batch: usize,
    /// Heads H.
    pub heads: usize,
    /// Head dimension D.
    pub dim: usize,
    /// S of the sampling estimators.
    pub shots: usize,
    /// Timed repetitions per point (the best is kept).
    pub reps: usize,
    /// The machine, as far as the process can tell.
    pub machine: String,
    /// What the numbers are.
    pub note: String,
    /// Exact attention first, then each estimator.
    pub series: Vec<TimingSeries>,
}

/// A one-line description of the machine: architecture, OS, CPU model (Linux), threads.
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!(
        "{} {}, {cpu}, {threads} hardware threads available to the process",
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

/// The timing study (module docs, section 3): exact and every estimator of
/// [`study_estimators`] at S = `shots`, for each n in `lengths`, best of `reps`.
pub fn timing_study(
    lengths: &[usize],
    reps: usize,
    shots: usize,
    logit_sd: f64,
    seed: u64,
    progress: &dyn Fn(&str),
) -> Result<TimingStudy> {
    if lengths.len() < 3 || lengths.contains(&0) || reps == 0 || shots == 0 {
        return Err(invalid(format!(
            "estimator study: timing needs ≥ 3 lengths ≥ 1, reps ≥ 1 and S ≥ 1, got \
             {lengths:?}, {reps}, {shots}"
        )));
    }
    let (batch, heads, dim) = (1usize, 4usize, 64usize);
    let mut specs = vec!["exact".to_string()];
    specs.extend(study_estimators(shots).into_iter().map(|(_, s)| s));
    let parsed = specs
        .iter()
        .map(|s| parse_spec(s))
        .collect::<Result<Vec<_>>>()?;
    let mut seconds = vec![Vec::new(); specs.len()];
    for (ni, &n) in lengths.iter().enumerate() {
        progress(&format!("timing: n = {n}"));
        let (q, k, v) = gaussian_qkv(seed, 0x7100 + ni as u32, (heads, n, dim), logit_sd)?;
        if ni == 0 {
            // Warm-up: thread pool, allocator, page faults.
            for spec in &parsed {
                attention(&q, &k, &v, &AttentionOptions::new(*spec))?;
            }
        }
        for (si, spec) in parsed.iter().enumerate() {
            let opts = AttentionOptions {
                estimator: *spec,
                seed,
                ..Default::default()
            };
            let mut best = f64::INFINITY;
            for _ in 0..reps {
                let t0 = Instant::now();
                std::hint::black_box(attention(&q, &k, &v, &opts)?);
                best = best.min(t0.elapsed().as_secs_f64());
            }
            seconds[si].push(best.max(1e-9));
        }
    }
    let ns: Vec<f64> = lengths.iter().map(|&n| n as f64).collect();
    let series = specs
        .into_iter()
        .zip(seconds)
        .map(|(spec, secs)| {
            let fit = fit_power_law(&ns, &secs, 0.95)?;
            Ok(TimingSeries {
                spec,
                seconds: secs,
                fit,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TimingStudy {
        lengths: lengths.to_vec(),
        batch,
        heads,
        dim,
        shots,
        reps,
        machine: machine_description(),
        note: "wall-clock measurements on this machine (std::time::Instant, best of the reps, \
               forward only, f32 CPU kernels); the CPU may be shared with other work, so the \
               times are noisy"
            .into(),
        series,
    })
}
