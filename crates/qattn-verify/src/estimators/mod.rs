//! Estimator studies (`qattn verify estimators`): how much each Monte-Carlo attention
//! estimator of qattn-kernels reduces sampling variance on real attention rows, how tight the
//! Bretagnolle–Huber–Carol bound is for the multinomial sampler, how run time scales with the
//! sequence length, and how measurement noise (and readout mitigation) changes the error.
//!
//! [`run_study`] runs the four studies and returns a [`StudyReport`]; [`write_report`] writes
//! `report.json`, `report.md` and three plots (`error_vs_s`, `time_vs_n`, `error_vs_noise`,
//! each as SVG and PNG), every file atomically.
//!
//! ## Rows
//! A *row* is one query of one head: its exact attention distribution p over the keys and the
//! exact output o = Σ_j p_j v_j. With a model ([`DEFAULT_MODEL`] unless
//! [`StudyOptions::model`] names another Hub id or directory) the rows are real: each of a few
//! fixed English sentences ([`SENTENCES`]) is run through the pretrained encoder (exact
//! attention, inference mode) and every layer's per-head Q, K, V ([`qattn_model::Bert::attention_inputs`])
//! becomes one attention problem, the layers stacked along the head axis, one problem per
//! sentence (no padding). With `model = "synthetic"` the rows are random
//! ([`synthetic_workload`]): q ~ N(0, σ²), k, v ~ N(0, 1) i.i.d. from Philox, so the logits
//! q·k/√D have standard deviation ≈ σ = [`StudyOptions::logit_sd`]. Exact outputs and
//! probabilities come from the f64 reference ([`qattn_kernels::reference`]).
//!
//! ## 1. Variance reduction ([`variance_study`])
//! For each shot count S and estimator e ∈ {`multinomial:S`, `stratified:S`,
//! `topk:K:S`, `cv:R:S`, `adaptive:1:S`} (K = [`TOPK_K`], R = [`CV_RANK`]) the estimate is
//! computed with R replication seeds (common random numbers across estimators) and the per-row
//! mean squared error MSE_e(r) = mean over seeds of ‖ô_r − o_r‖² is formed. Every estimator
//! here is unbiased without noise, so MSE is the sampling variance. The variance ratio is
//! ratio_e = Σ_r MSE_e(r) / Σ_r MSE_multinomial(r) (a ratio of means over rows); its 95%
//! interval is the percentile interval of the same ratio over a cluster bootstrap: the
//! clusters are the (head, input) pairs — all query rows of one head on one sentence, which
//! share that sentence's keys and values and are strongly correlated — drawn with replacement
//! by [`crate::stats::Resampler`] (resampling single rows treated them as independent and gave
//! intervals that were too narrow). Each non-multinomial ratio also gets the two-sided
//! bootstrap p-value of ratio = 1. The relative RMSE
//! √(Σ_r MSE_e(r) / Σ_r ‖o_r‖²) is reported the same way. As a self-check, the measured
//! multinomial MSE is compared with its exact value (Σ_j p_j‖v_j‖² − ‖o‖²)/S.
//! The stratified ratio is set next to the claim of a "40% reduction in sampling variance"
//! (ratio [`CLAIMED_STRATIFIED_RATIO`]), read as "at least 40%": the whole 95% interval at or
//! below 0.60 supports it, the whole interval above refutes it (`qattn verify claims` decides
//! it with a `[[variance_claim]]`, together with the document's other claims).
//!
//! ## 2. The BHC bound ([`bhc_study`])
//! For `multinomial:S`, the empirical distribution p̂ of the S measured keys of a row (from
//! [`qattn_kernels::attention_with_diagnostics`], i.e. the kernel's own draws) is compared with
//! the exact p: ‖p̂ − p‖₁. Bretagnolle–Huber–Carol: P(‖p̂ − p‖₁ ≥ ε) ≤ 2^K·exp(−S ε²/2) for a
//! distribution over K categories, so at confidence δ the bound is
//! ε(δ) = √(2(K ln 2 + ln(1/δ))/S) ([`bhc_epsilon`]); K is the number of keys of the row.
//! Over rows × seeds, per (S, K): the fraction of trials with ‖p̂ − p‖₁ ≥ ε(δ) (which the bound
//! says is at most δ) with a one-sided 95% Clopper–Pearson upper limit, the empirical
//! (1 − δ)-quantile of ‖p̂ − p‖₁ (the smallest value whose empirical CDF reaches 1 − δ) and the
//! looseness ε(δ) / quantile. ε(δ) ≥ 2 is vacuous (‖p̂ − p‖₁ ≤ 2 always) and flagged.
//!
//! ## 3. Time scaling ([`timing_study`])
//! Lq = Lk = n, B = 1, H = 4, D = 64, Gaussian inputs; each estimator (S fixed) and exact
//! attention are timed with [`std::time::Instant`], best of a few repetitions, and
//! ln t = a + b ln n is fitted by least squares ([`fit_power_law`]): b with a 95% interval
//! from Student's t on the slope's standard error (n − 2 degrees of freedom). These are
//! measurements on the machine that ran the study, on a CPU that may be shared.
//!
//! ## 4. Noise sweep ([`noise_sweep`])
//! Relative error ‖ô − o‖/‖o‖ against exact attention ([`qattn_kernels::study::relative_error`],
//! mean over seeds, then over problems) of `multinomial:S` and `stratified:S` under
//! depolarizing λ ∈ {0, .01, .05, .1, .2}, symmetric readout ε ∈ {0, .01, .02, .05}
//! (`+readout:ε:ε`) and amplitude damping γ ∈ {0, .01, .05, .1}, each alone, with and without
//! `+mitigate`. Level 0 is the noiseless estimator for every series. Depolarizing has no
//! mitigated series: `+mitigate` corrects readout and damping only (the grammar rejects it
//! alone).
//!
//! The code is one module per concern: `workload` (the rows), `common` (shared helpers and
//! [`Estimate`]), `variance`, `bhc`, `timing` and `noise` (the four studies), `markdown`
//! (`report.md`), `plots` (the three plots); this module holds the options, the plan,
//! [`run_study`] and [`write_report`]. Everything public is re-exported here.

mod bhc;
mod common;
mod markdown;
mod noise;
mod plots;
mod timing;
mod variance;
mod workload;

pub use bhc::{BhcGroup, BhcStudy, bhc_epsilon, bhc_study, clopper_pearson_upper};
pub use common::Estimate;
pub use markdown::to_markdown;
pub use noise::{DAMP_LEVELS, DEPOL_LEVELS, NoisePoint, NoiseStudy, READOUT_LEVELS, noise_sweep};
pub use plots::plots;
pub use timing::{
    PowerLawFit, TimingSeries, TimingStudy, fit_power_law, machine_description, timing_study,
};
pub use variance::{
    ClaimCheck, EstimatorResult, ShotsResult, VarianceStudy, estimator_families, study_estimators,
    variance_study,
};
pub use workload::{
    Problem, ProblemSummary, Workload, WorkloadSummary, load_workload, model_workload,
    philox_gaussians, synthetic_workload,
};

use crate::error::{Error, Result, invalid};
use qattn_model::HubOptions;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The model of the study when [`StudyOptions::model`] is `None`.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// The [`StudyOptions::model`] value that selects random rows instead of a model.
pub const SYNTHETIC_MODEL: &str = "synthetic";
/// The variance ratio of stratified to multinomial sampling that the claim of a "40% reduction
/// in sampling variance" implies.
pub const CLAIMED_STRATIFIED_RATIO: f64 = 0.60;
/// The claim, as worded in the source document.
pub const CLAIM: &str = "40% reduction in sampling variance";
/// K of the `topk:K:S` estimator in the studies.
pub const TOPK_K: usize = 4;
/// R of the `cv:R:S` estimator in the studies.
pub const CV_RANK: usize = 4;
/// The [`Resampler`] stream of the cluster bootstrap.
const BOOTSTRAP_STREAM: u32 = 0xE57_0001;
/// Version of the layout of `report.json`.
pub const FORMAT_VERSION: u32 = 1;

/// The fixed English sentences whose attention rows the study samples (the quick study uses
/// the first four).
pub const SENTENCES: [&str; 8] = [
    "The quick brown fox jumps over the lazy dog.",
    "Attention lets every token weigh all the others before the next layer mixes them together.",
    "In 1905 Albert Einstein published four papers that changed how physicists think about light, motion, mass and energy.",
    "She bought three apples, two pears and a loaf of bread at the market on Saturday morning.",
    "Measuring a quantum register in the computational basis returns one basis state with probability equal to its squared amplitude.",
    "The committee postponed its decision because several members had not yet read the report, which ran to more than four hundred pages.",
    "Rain is expected tomorrow.",
    "After the storm, volunteers cleared fallen trees from the roads, restored power to the hospital and delivered water to families in the hills.",
];

/// Options of [`run_study`].
#[derive(Clone, Debug)]
pub struct StudyOptions {
    /// The reduced study (fewer sentences, shots, seeds and sizes), sized for well under a
    /// minute on two cores.
    pub quick: bool,
    /// Hub id or local directory of the model whose attention rows are sampled;
    /// `None` = [`DEFAULT_MODEL`]; `"synthetic"` ([`SYNTHETIC_MODEL`]) = random rows.
    pub model: Option<String>,
    /// Where to find the model (set `offline` and `cache_dir` to use a local cache only).
    pub hub: HubOptions,
    /// Base seed of every random draw (estimator seeds, synthetic inputs, bootstrap).
    pub seed: u64,
    /// δ of the BHC bound, in (0, 1). Default 0.05.
    pub delta: f64,
    /// Standard deviation σ of the synthetic logits (only for `"synthetic"` rows and the
    /// timing inputs). Default 2.
    pub logit_sd: f64,
    /// Replications (seeds) per estimator in the variance study; `None` = 64 (quick: 16).
    pub replications: Option<usize>,
    /// Bootstrap resamples of (head, input) clusters; `None` = 2000 (quick: 500).
    pub bootstrap: Option<usize>,
}

impl Default for StudyOptions {
    fn default() -> Self {
        StudyOptions {
            quick: false,
            model: None,
            hub: HubOptions::default(),
            seed: 0,
            delta: 0.05,
            logit_sd: 2.0,
            replications: None,
            bootstrap: None,
        }
    }
}

/// The sizes a study runs with, derived from [`StudyOptions`] by [`StudyPlan::new`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StudyPlan {
    /// Sentences run through the model (real rows).
    pub sentences: usize,
    /// Synthetic rows: (problems, heads, length, head dim).
    pub synthetic_shape: (usize, usize, usize, usize),
    /// Shot counts S of the variance study.
    pub variance_shots: Vec<usize>,
    /// Replication seeds per estimator and S.
    pub replications: usize,
    /// Bootstrap resamples of (head, input) clusters.
    pub bootstrap: usize,
    /// Shot counts of the BHC study.
    pub bhc_shots: Vec<usize>,
    /// Seeds per shot count in the BHC study.
    pub bhc_seeds: usize,
    /// Sequence lengths n of the timing study.
    pub timing_lengths: Vec<usize>,
    /// Timed repetitions per (estimator, n); the best is kept.
    pub timing_reps: usize,
    /// S of the estimators in the timing study.
    pub timing_shots: usize,
    /// S of the noise sweep.
    pub noise_shots: usize,
    /// Seeds per noise setting.
    pub noise_seeds: usize,
}

impl StudyPlan {
    /// The sizes for `opts` (quick or full; replications and bootstrap may be overridden).
    pub fn new(opts: &StudyOptions) -> Self {
        let q = opts.quick;
        StudyPlan {
            sentences: if q { 4 } else { SENTENCES.len() },
            synthetic_shape: if q { (2, 8, 64, 32) } else { (4, 8, 128, 32) },
            variance_shots: if q { vec![4, 16] } else { vec![4, 16, 64] },
            replications: opts.replications.unwrap_or(if q { 16 } else { 64 }),
            bootstrap: opts.bootstrap.unwrap_or(if q { 500 } else { 2000 }),
            bhc_shots: if q {
                vec![64, 256]
            } else {
                vec![64, 256, 1024]
            },
            bhc_seeds: if q { 4 } else { 16 },
            timing_lengths: if q {
                vec![128, 256, 512]
            } else {
                vec![256, 512, 1024, 2048]
            },
            timing_reps: if q { 2 } else { 3 },
            timing_shots: 64,
            noise_shots: if q { 16 } else { 64 },
            noise_seeds: if q { 3 } else { 8 },
        }
    }
}

/// Everything [`run_study`] measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StudyReport {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The qattn version that ran the study.
    pub qattn_version: String,
    /// The commit the binary was built from and whether its sources were clean
    /// ([`qattn_train::provenance`]); `None` in reports written before the field existed.
    #[serde(default)]
    pub git_sha: Option<String>,
    /// Whether that build had uncommitted changes.
    #[serde(default)]
    pub git_dirty: Option<bool>,
    /// Quick or full study.
    pub quick: bool,
    /// The model (or `synthetic`).
    pub model: String,
    /// Base seed.
    pub seed: u64,
    /// The sizes.
    pub plan: StudyPlan,
    /// The rows.
    pub workload: WorkloadSummary,
    /// Section 1.
    pub variance: VarianceStudy,
    /// Section 2.
    pub bhc: BhcStudy,
    /// Section 3.
    pub timing: TimingStudy,
    /// Section 4.
    pub noise: NoiseStudy,
    /// Wall time of the whole study in seconds.
    pub wall_seconds: f64,
}

/// Runs the four studies of the module docs with `opts`, reporting each stage to `progress`.
pub fn run_study(opts: &StudyOptions, progress: &dyn Fn(&str)) -> Result<StudyReport> {
    let t0 = Instant::now();
    if !(opts.delta > 0.0 && opts.delta < 1.0) {
        return Err(invalid(format!(
            "estimator study: δ must be in (0, 1), got {}",
            opts.delta
        )));
    }
    if !(opts.logit_sd.is_finite() && opts.logit_sd > 0.0) {
        return Err(invalid(format!(
            "estimator study: logit_sd must be finite and > 0, got {}",
            opts.logit_sd
        )));
    }
    let plan = StudyPlan::new(opts);
    let model = opts.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into());
    progress(&format!("loading rows ({model})"));
    let workload = load_workload(opts, &plan)?;
    let summary = workload.summary()?;
    progress(&format!(
        "{} rows in {} problems",
        summary.rows,
        summary.problems.len()
    ));
    let variance = variance_study(
        &workload,
        &plan.variance_shots,
        plan.replications,
        plan.bootstrap,
        opts.seed,
        progress,
    )?;
    let bhc = bhc_study(
        &workload,
        &plan.bhc_shots,
        plan.bhc_seeds,
        opts.delta,
        opts.seed,
        progress,
    )?;
    let noise = noise_sweep(
        &workload,
        plan.noise_shots,
        plan.noise_seeds,
        opts.seed,
        progress,
    )?;
    let timing = timing_study(
        &plan.timing_lengths,
        plan.timing_reps,
        plan.timing_shots,
        opts.logit_sd,
        opts.seed,
        progress,
    )?;
    Ok(StudyReport {
        format_version: FORMAT_VERSION,
        qattn_version: env!("CARGO_PKG_VERSION").into(),
        git_sha: qattn_train::provenance::BUILD.commit_string(),
        git_dirty: qattn_train::provenance::BUILD.dirty_flag(),
        quick: opts.quick,
        model,
        seed: opts.seed,
        plan,
        workload: summary,
        variance,
        bhc,
        timing,
        noise,
        wall_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Writes `report.json`, `report.md` and the plots `error_vs_s`, `time_vs_n` and
/// `error_vs_noise` (each `.svg` and `.png`) into `out_dir` (created if needed), each file
/// atomically (temporary file in the same directory, fsync, rename). Returns the paths in
/// that order.
pub fn write_report(report: &StudyReport, out_dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir).map_err(|source| Error::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| invalid(format!("estimator study: cannot serialise the report: {e}")))?;
    let mut outputs: Vec<(PathBuf, Vec<u8>)> = vec![
        (out_dir.join("report.json"), (json + "\n").into_bytes()),
        (out_dir.join("report.md"), to_markdown(report).into_bytes()),
    ];
    for (stem, plot) in plots(report) {
        outputs.push((
            out_dir.join(format!("{stem}.svg")),
            plot.to_svg().into_bytes(),
        ));
        outputs.push((out_dir.join(format!("{stem}.png")), plot.to_png()));
    }
    let mut files = Vec::new();
    for (path, bytes) in outputs {
        qattn_model::io::write_atomic(&path, &bytes)?;
        files.push(path);
    }
    Ok(files)
}
