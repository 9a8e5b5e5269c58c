//! Study 4: relative error under measurement noise, with and without readout mitigation
//! (module docs of [`super`]).

use super::common::{parse_spec, seed_range};
use super::*;
use crate::error::{Result, invalid};
use qattn_kernels::AttentionOptions;
use qattn_kernels::study::{mean_se, relative_errors};
use serde::{Deserialize, Serialize};

/// One noise setting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoisePoint {
    /// `multinomial` or `stratified`.
    pub base: String,
    /// `depol`, `readout` or `damp`.
    pub channel: String,
    /// λ, ε or γ.
    pub level: f64,
    /// With `+mitigate`.
    pub mitigate: bool,
    /// The spec that was run (the noiseless base at level 0).
    pub spec: String,
    /// Mean relative error ‖ô − o‖/‖o‖ (over seeds, then problems).
    pub rel_error: f64,
    /// Its standard error (over seeds, combined across problems).
    pub se: f64,
    /// Per seed (in seed order): the mean over problems of the relative error. Every setting
    /// runs on the same seeds, so two settings can be compared seed by seed (the noise claims
    /// of [`crate::claims`] do). Empty in reports written before the field existed.
    #[serde(default)]
    pub per_seed: Vec<f64>,
}

/// Result of [`noise_sweep`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseStudy {
    /// S.
    pub shots: usize,
    /// Seeds per setting.
    pub seeds: usize,
    /// Every setting.
    pub points: Vec<NoisePoint>,
}

/// Depolarizing λ of the sweep.
pub const DEPOL_LEVELS: [f64; 5] = [0.0, 0.01, 0.05, 0.1, 0.2];
/// Symmetric readout ε of the sweep.
pub const READOUT_LEVELS: [f64; 4] = [0.0, 0.01, 0.02, 0.05];
/// Amplitude damping γ of the sweep.
pub const DAMP_LEVELS: [f64; 4] = [0.0, 0.01, 0.05, 0.1];

/// The noise sweep (module docs, section 4) at S = `shots` with `seeds` seeds.
pub fn noise_sweep(
    workload: &Workload,
    shots: usize,
    seeds: usize,
    seed: u64,
    progress: &dyn Fn(&str),
) -> Result<NoiseStudy> {
    if shots == 0 || seeds < 2 {
        return Err(invalid(format!(
            "estimator study: the noise sweep needs S ≥ 1 and ≥ 2 seeds, got {shots} and {seeds}"
        )));
    }
    let seeds_r = seed_range(seed, seeds)?;
    for p in &workload.problems {
        p.shape()?;
    }
    // (mean, se, per-seed mean over problems)
    let run = |spec: &str| -> Result<(f64, f64, Vec<f64>)> {
        let spec = parse_spec(spec)?;
        let (mut m, mut v) = (0.0, 0.0);
        let mut per_seed = vec![0.0; seeds];
        let np = workload.problems.len() as f64;
        for p in &workload.problems {
            let errs = relative_errors(
                &p.q,
                &p.k,
                &p.v,
                &AttentionOptions::default(),
                spec,
                seeds_r.clone(),
            )?;
            let (e, se) = mean_se(&errs);
            m += e;
            v += se * se;
            for (acc, x) in per_seed.iter_mut().zip(&errs) {
                *acc += x / np;
            }
        }
        Ok((m / np, v.sqrt() / np, per_seed))
    };
    let mut points = Vec::new();
    for base in ["multinomial", "stratified"] {
        progress(&format!("noise: {base}:{shots}"));
        let clean = format!("{base}:{shots}");
        let (e0, se0, seeds0) = run(&clean)?;
        let channels: [(&str, &[f64], bool); 3] = [
            ("depol", &DEPOL_LEVELS, false),
            ("readout", &READOUT_LEVELS, true),
            ("damp", &DAMP_LEVELS, true),
        ];
        for (channel, levels, can_mitigate) in channels {
            for mitigate in [false, true] {
                if mitigate && !can_mitigate {
                    continue;
                }
                for &level in levels {
                    let (spec, (e, se, per_seed)) = if level == 0.0 {
                        (clean.clone(), (e0, se0, seeds0.clone()))
                    } else {
                        let term = match channel {
                            "readout" => format!("+readout:{level}:{level}"),
                            other => format!("+{other}:{level}"),
                        };
                        let m = if mitigate { "+mitigate" } else { "" };
                        let spec = format!("{clean}{term}{m}");
                        let r = run(&spec)?;
                        (spec, r)
                    };
                    points.push(NoisePoint {
                        base: base.into(),
                        channel: channel.into(),
                        level,
                        mitigate,
                        spec,
                        rel_error: e,
                        se,
                        per_seed,
                    });
                }
            }
        }
    }
    Ok(NoiseStudy {
        shots,
        seeds,
        points,
    })
}
