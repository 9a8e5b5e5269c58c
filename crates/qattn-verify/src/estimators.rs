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
//! interval is the percentile interval of the same ratio over bootstrap resamples of rows
//! (rows drawn with replacement by [`crate::stats::Resampler`]). The relative RMSE
//! √(Σ_r MSE_e(r) / Σ_r ‖o_r‖²) is reported the same way. As a self-check, the measured
//! multinomial MSE is compared with its exact value (Σ_j p_j‖v_j‖² − ‖o‖²)/S.
//! The stratified ratio is set next to the claim of a "40% reduction in sampling variance"
//! (ratio [`CLAIMED_STRATIFIED_RATIO`]): consistent when 0.60 lies in the 95% interval.
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

use crate::error::{Error, Result, invalid};
use crate::plot::{LinePlot, Point, Scale, Series};
use crate::stats::seeds::t_quantile;
use crate::stats::{Resampler, percentile_interval};
use candle_core::{DType, Device, Tensor};
use qattn_kernels::philox::{philox4x32_10, u32_to_open01};
use qattn_kernels::reference::{self, Dims};
use qattn_kernels::study::relative_error;
use qattn_kernels::{AttentionOptions, EstimatorSpec, attention, attention_with_diagnostics};
use qattn_model::{AttentionConfig, HubOptions, Inputs, LoadOptions, Model};
use serde::Serialize;
use statrs::distribution::{Beta, ContinuousCDF};
use std::fmt::Write as _;
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
/// The [`Resampler`] stream of the bootstrap over rows.
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
    /// Bootstrap resamples of rows; `None` = 2000 (quick: 500).
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
    /// Bootstrap resamples of rows.
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

// ---------------------------------------------------------------------------------------------
// Workloads.

/// One attention problem: q, k, v of shape [1, H, L, D], f32, no mask; every (head, query)
/// is one row.
#[derive(Clone, Debug)]
pub struct Problem {
    /// What the rows are (e.g. `sentence 3 (21 tokens), layers 0-5 × 12 heads`).
    pub label: String,
    /// Queries [1, H, L, D].
    pub q: Tensor,
    /// Keys [1, H, L, D].
    pub k: Tensor,
    /// Values [1, H, L, D].
    pub v: Tensor,
}

impl Problem {
    /// (heads, length, head dim), checking the shapes.
    pub fn shape(&self) -> Result<(usize, usize, usize)> {
        let dims = |t: &Tensor, name: &str| -> Result<(usize, usize, usize)> {
            match *t.dims() {
                [1, h, l, d] if h > 0 && l > 0 && d > 0 => Ok((h, l, d)),
                _ => Err(invalid(format!(
                    "estimator study: problem `{}`: {name} must be [1, H, L, D] with H, L, D ≥ 1, got {:?}",
                    self.label,
                    t.dims()
                ))),
            }
        };
        let s = dims(&self.q, "q")?;
        if dims(&self.k, "k")? != s || dims(&self.v, "v")? != s {
            return Err(invalid(format!(
                "estimator study: problem `{}`: q {:?}, k {:?} and v {:?} differ in shape",
                self.label,
                self.q.dims(),
                self.k.dims(),
                self.v.dims()
            )));
        }
        Ok(s)
    }
}

/// The attention problems whose rows the studies sample.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Where the rows come from (model and sentences, or the synthetic distribution).
    pub description: String,
    /// The problems.
    pub problems: Vec<Problem>,
}

/// Shape of one problem in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProblemSummary {
    /// [`Problem::label`].
    pub label: String,
    /// Heads H (all layers stacked for real rows).
    pub heads: usize,
    /// Queries = keys L.
    pub length: usize,
    /// Head dimension D.
    pub dim: usize,
}

/// The workload in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkloadSummary {
    /// [`Workload::description`].
    pub description: String,
    /// Total rows (Σ heads × length).
    pub rows: usize,
    /// Every problem's shape.
    pub problems: Vec<ProblemSummary>,
}

impl Workload {
    /// Total number of rows.
    pub fn rows(&self) -> Result<usize> {
        self.problems
            .iter()
            .map(|p| p.shape().map(|(h, l, _)| h * l))
            .sum()
    }

    /// The summary written to the report.
    pub fn summary(&self) -> Result<WorkloadSummary> {
        let problems = self
            .problems
            .iter()
            .map(|p| {
                let (heads, length, dim) = p.shape()?;
                Ok(ProblemSummary {
                    label: p.label.clone(),
                    heads,
                    length,
                    dim,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(WorkloadSummary {
            description: self.description.clone(),
            rows: problems.iter().map(|p| p.heads * p.length).sum(),
            problems,
        })
    }
}

/// `n` standard normal f32 values from Philox4x32-10 (key = `seed`, counter =
/// (block, a, b, c)) by the Box–Muller transform, four per Philox block.
pub fn philox_gaussians(seed: u64, stream: [u32; 3], n: usize) -> Vec<f32> {
    let key = [seed as u32, (seed >> 32) as u32];
    let mut out = Vec::with_capacity(n + 3);
    let mut block = 0u32;
    while out.len() < n {
        let r = philox4x32_10([block, stream[0], stream[1], stream[2]], key);
        for pair in [(r[0], r[1]), (r[2], r[3])] {
            let (u1, u2) = (u32_to_open01(pair.0), u32_to_open01(pair.1));
            let rad = (-2.0 * u1.ln()).sqrt();
            let th = std::f64::consts::TAU * u2;
            out.push((rad * th.cos()) as f32);
            out.push((rad * th.sin()) as f32);
        }
        block = block.wrapping_add(1);
    }
    out.truncate(n);
    out
}

/// Gaussian q (× `logit_sd`), k, v of shape [1, h, l, d] from Philox stream `tag`.
fn gaussian_qkv(
    seed: u64,
    tag: u32,
    (h, l, d): (usize, usize, usize),
    logit_sd: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let n = h * l * d;
    let make = |which: u32, sd: f64| -> Result<Tensor> {
        let x: Vec<f32> = philox_gaussians(seed, [tag, which, 0x5EED_0001], n)
            .into_iter()
            .map(|x| (f64::from(x) * sd) as f32)
            .collect();
        Ok(Tensor::from_vec(x, (1, h, l, d), &Device::Cpu)?)
    };
    Ok((make(0, logit_sd)?, make(1, 1.0)?, make(2, 1.0)?))
}

/// Random rows: `problems` problems of `heads` heads, `len` queries = keys and head dim
/// `dim`, with q ~ N(0, logit_sd²) and k, v ~ N(0, 1) i.i.d. (Philox from `seed`), so the
/// logits q·k/√D have standard deviation ≈ `logit_sd`.
pub fn synthetic_workload(
    problems: usize,
    heads: usize,
    len: usize,
    dim: usize,
    logit_sd: f64,
    seed: u64,
) -> Result<Workload> {
    if problems == 0 || heads == 0 || len == 0 || dim == 0 {
        return Err(invalid(format!(
            "estimator study: synthetic rows need problems, heads, length and dim ≥ 1, got \
             {problems}, {heads}, {len}, {dim}"
        )));
    }
    if !(logit_sd.is_finite() && logit_sd > 0.0) {
        return Err(invalid(format!(
            "estimator study: logit_sd must be finite and > 0, got {logit_sd}"
        )));
    }
    let problems = (0..problems)
        .map(|p| {
            let (q, k, v) = gaussian_qkv(seed, p as u32, (heads, len, dim), logit_sd)?;
            Ok(Problem {
                label: format!("synthetic {p}"),
                q,
                k,
                v,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Workload {
        description: format!(
            "synthetic rows: q ~ N(0, {logit_sd}^2), k, v ~ N(0, 1) i.i.d. (Philox, seed {seed}); \
             logits q.k/sqrt(D) with standard deviation ~ {logit_sd}; {} problems of {heads} \
             heads x {len} queries = keys, D = {dim}",
            problems.len()
        ),
        problems,
    })
}

/// Real rows: each of `sentences` is tokenised (no padding) and run through `model` (Hub id
/// or directory, found with `hub`) with exact attention in inference mode; every layer's
/// per-head Q, K, V ([`qattn_model::Bert::attention_inputs`]) is stacked along the head axis
/// into one [`Problem`] per sentence. A model that cannot be loaded is an error naming it
/// and the way out (`--model synthetic`).
pub fn model_workload(model: &str, hub: &HubOptions, sentences: &[&str]) -> Result<Workload> {
    if sentences.is_empty() {
        return Err(invalid(
            "estimator study: no sentences to run through the model",
        ));
    }
    let opts = LoadOptions {
        hub: hub.clone(),
        attention: Some(AttentionConfig::default()),
        tokenizer: true,
        ..Default::default()
    };
    let m = Model::load(model, &opts).map_err(|e| {
        invalid(format!(
            "estimator study: cannot load model `{model}`: {e}\n(point HF_HOME or --cache-dir \
             at a cache that holds it, allow downloads, or pass --model {SYNTHETIC_MODEL} for \
             random rows)"
        ))
    })?;
    let layers = m.config().num_hidden_layers;
    let heads = m.config().num_attention_heads;
    let mut problems = Vec::new();
    for (i, s) in sentences.iter().enumerate() {
        let batch = m.tokenize(&[(*s, None)])?;
        let inputs = Inputs::from(&batch);
        let len = batch.input_ids.dim(1)?;
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for layer in 0..layers {
            let (q, k, v) = m.bert().attention_inputs(&inputs, layer)?;
            qs.push(q.to_dtype(DType::F32)?);
            ks.push(k.to_dtype(DType::F32)?);
            vs.push(v.to_dtype(DType::F32)?);
        }
        problems.push(Problem {
            label: format!(
                "sentence {i} ({len} tokens), layers 0-{} x {heads} heads",
                layers - 1
            ),
            q: Tensor::cat(&qs, 1)?.contiguous()?,
            k: Tensor::cat(&ks, 1)?.contiguous()?,
            v: Tensor::cat(&vs, 1)?.contiguous()?,
        });
    }
    Ok(Workload {
        description: format!(
            "real rows of `{model}` ({layers} layers x {heads} heads, exact attention, \
             inference mode) on {} fixed English sentences, one problem per sentence with all \
             layers' heads",
            sentences.len()
        ),
        problems,
    })
}

/// The workload [`run_study`] samples: synthetic rows for `"synthetic"`, else the model's.
pub fn load_workload(opts: &StudyOptions, plan: &StudyPlan) -> Result<Workload> {
    match opts.model.as_deref() {
        Some(SYNTHETIC_MODEL) => {
            let (p, h, l, d) = plan.synthetic_shape;
            synthetic_workload(p, h, l, d, opts.logit_sd, opts.seed)
        }
        other => {
            let id = other.unwrap_or(DEFAULT_MODEL);
            let n = plan.sentences.min(SENTENCES.len());
            model_workload(id, &opts.hub, &SENTENCES[..n])
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers.

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// A problem with its exact f64 probabilities and outputs.
struct Prepared<'a> {
    problem: &'a Problem,
    dims: Dims,
    /// p [H·L·L].
    probs: Vec<f64>,
    /// o [H·L·D].
    exact: Vec<f64>,
    /// v [H·L·D].
    values: Vec<f64>,
}

impl<'a> Prepared<'a> {
    fn new(problem: &'a Problem) -> Result<Self> {
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

    fn rows(&self) -> usize {
        self.dims.h * self.dims.lq
    }

    /// Per row: ‖o‖² and tr Cov_p(v) = Σ_j p_j ‖v_j‖² − ‖o‖² (S × the multinomial variance).
    fn norms_and_spread(&self) -> (Vec<f64>, Vec<f64>) {
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
    fn add_squared_errors(&self, out: &Tensor, acc: &mut [f64]) -> Result<()> {
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

    fn options(&self, spec: EstimatorSpec, seed: u64) -> AttentionOptions {
        AttentionOptions {
            estimator: spec,
            seed,
            ..Default::default()
        }
    }
}

fn parse_spec(s: &str) -> Result<EstimatorSpec> {
    s.parse()
        .map_err(|e| invalid(format!("estimator study: bad estimator `{s}`: {e}")))
}

/// Seeds `base .. base + n`, an error if that passes u64::MAX.
fn seed_range(base: u64, n: usize) -> Result<std::ops::Range<u64>> {
    let end = base.checked_add(n as u64).ok_or_else(|| {
        invalid(format!(
            "estimator study: seed {base} + {n} replications overflows u64"
        ))
    })?;
    Ok(base..end)
}

/// A point estimate with its bootstrap distribution's mean, standard error and 95%
/// percentile interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
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
    fn from_bootstrap(value: f64, mut boot: Vec<f64>) -> Estimate {
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

// ---------------------------------------------------------------------------------------------
// 1. Variance reduction.

/// One estimator at one S.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EstimatorResult {
    /// The estimator family (`multinomial`, `stratified`, `topk`, `cv`, `adaptive`).
    pub family: String,
    /// The spec string.
    pub spec: String,
    /// Mean shots actually measured per row (adaptive spends fewer than S; top-k's K exact
    /// keys are not shots).
    pub mean_shots: f64,
    /// Mean over rows of the per-row MSE.
    pub mse: f64,
    /// √(Σ MSE / Σ ‖o‖²).
    pub rel_rmse: Estimate,
    /// Σ MSE / Σ MSE of `multinomial:S` (exactly 1 for multinomial itself).
    pub ratio: Estimate,
}

/// All estimators at one S.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShotsResult {
    /// Shots S.
    pub shots: usize,
    /// Measured / exact multinomial MSE, Σ MSE / Σ tr Cov_p(v)/S: ≈ 1 when the sampler and
    /// the bookkeeping are right.
    pub multinomial_vs_theory: Estimate,
    /// Every estimator, multinomial first.
    pub estimators: Vec<EstimatorResult>,
}

/// The stratified ratio next to the claim.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClaimCheck {
    /// Shots S.
    pub shots: usize,
    /// The claimed ratio ([`CLAIMED_STRATIFIED_RATIO`]).
    pub claimed: f64,
    /// The measured stratified / multinomial variance ratio.
    pub measured: Estimate,
    /// Whether the claimed ratio lies in the measured 95% interval.
    pub consistent: bool,
    /// `consistent with the claim given the CI` or `inconsistent with the claim given the CI`.
    pub verdict: String,
}

/// Result of [`variance_study`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VarianceStudy {
    /// Rows sampled.
    pub rows: usize,
    /// Replication seeds per (estimator, S).
    pub replications: usize,
    /// Bootstrap resamples.
    pub bootstrap: usize,
    /// One entry per S.
    pub by_shots: Vec<ShotsResult>,
    /// The stratified ratio against the claim, per S.
    pub claim: Vec<ClaimCheck>,
}

/// The estimator families of the studies with their spec at a symbolic S:
/// `multinomial:S`, `stratified:S`, `topk:K:S`, `cv:R:S`, `adaptive:1:S`.
pub fn estimator_families() -> Vec<(&'static str, String)> {
    vec![
        ("multinomial", "multinomial:S".into()),
        ("stratified", "stratified:S".into()),
        ("topk", format!("topk:{TOPK_K}:S")),
        ("cv", format!("cv:{CV_RANK}:S")),
        ("adaptive", "adaptive:1:S".into()),
    ]
}

/// The estimators of the studies at S: (family, spec), multinomial first.
pub fn study_estimators(s: usize) -> Vec<(&'static str, String)> {
    estimator_families()
        .into_iter()
        .map(|(f, t)| (f, t.replace(":S", &format!(":{s}"))))
        .collect()
}

/// The variance study (module docs, section 1) on `workload` with shot counts `shots`,
/// `replications` seeds from `seed` and `bootstrap` resamples of rows.
pub fn variance_study(
    workload: &Workload,
    shots: &[usize],
    replications: usize,
    bootstrap: usize,
    seed: u64,
    progress: &dyn Fn(&str),
) -> Result<VarianceStudy> {
    if shots.is_empty() || shots.contains(&0) {
        return Err(invalid(format!(
            "estimator study: shot counts must be non-empty and ≥ 1, got {shots:?}"
        )));
    }
    if replications < 2 || bootstrap < 2 {
        return Err(invalid(format!(
            "estimator study: need ≥ 2 replications and ≥ 2 bootstrap resamples, got \
             {replications} and {bootstrap}"
        )));
    }
    let seeds = seed_range(seed, replications)?;
    let prepared = workload
        .problems
        .iter()
        .map(Prepared::new)
        .collect::<Result<Vec<_>>>()?;
    let rows: usize = prepared.iter().map(Prepared::rows).sum();
    if rows == 0 {
        return Err(invalid("estimator study: the workload has no rows"));
    }
    let (mut norm2, mut spread) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    for p in &prepared {
        let (n, s) = p.norms_and_spread();
        norm2.extend(n);
        spread.extend(s);
    }
    // mse[s][e][row], shots_used[s][e]
    let fams: Vec<Vec<(&str, String)>> = shots.iter().map(|&s| study_estimators(s)).collect();
    let mut mse = vec![vec![vec![0.0f64; rows]; fams[0].len()]; shots.len()];
    let mut used = vec![vec![0.0f64; fams[0].len()]; shots.len()];
    for (si, &s) in shots.iter().enumerate() {
        progress(&format!(
            "variance: S = {s}, {} estimators x {replications} seeds on {rows} rows",
            fams[si].len()
        ));
        for (ei, (_, spec)) in fams[si].iter().enumerate() {
            let spec = parse_spec(spec)?;
            let mut offset = 0;
            for p in &prepared {
                let n = p.rows();
                let acc = &mut mse[si][ei][offset..offset + n];
                for (r, sd) in seeds.clone().enumerate() {
                    let pr = p.problem;
                    let opts = p.options(spec, sd);
                    let out = if r == 0 {
                        let (out, diag) = attention_with_diagnostics(&pr.q, &pr.k, &pr.v, &opts)?;
                        used[si][ei] +=
                            diag.queries.iter().map(|d| f64::from(d.shots)).sum::<f64>();
                        out
                    } else {
                        attention(&pr.q, &pr.k, &pr.v, &opts)?
                    };
                    p.add_squared_errors(&out, acc)?;
                }
                offset += n;
            }
            mse[si][ei]
                .iter_mut()
                .for_each(|x| *x /= replications as f64);
            used[si][ei] /= rows as f64;
        }
    }
    progress(&format!(
        "variance: {bootstrap} bootstrap resamples of rows"
    ));
    let ne = fams[0].len();
    // Per resample: Σ over resampled rows of norm2, spread and every mse[s][e].
    let mut boot = vec![vec![0.0f64; 2 + shots.len() * ne]; bootstrap];
    let mut idx = vec![0usize; rows];
    let mut rng = Resampler::with_stream(seed, BOOTSTRAP_STREAM);
    for sums in boot.iter_mut() {
        idx.iter_mut().for_each(|i| *i = rng.index(rows));
        for &r in &idx {
            sums[0] += norm2[r];
            sums[1] += spread[r];
        }
        for si in 0..shots.len() {
            for ei in 0..ne {
                let m = &mse[si][ei];
                sums[2 + si * ne + ei] = idx.iter().map(|&r| m[r]).sum();
            }
        }
    }
    let total = |v: &[f64]| v.iter().sum::<f64>();
    let (n2, sp) = (total(&norm2), total(&spread));
    let mut by_shots = Vec::new();
    let mut claim = Vec::new();
    for (si, &s) in shots.iter().enumerate() {
        let col = |ei: usize| 2 + si * ne + ei;
        let m0 = total(&mse[si][0]);
        let theory = Estimate::from_bootstrap(
            m0 / (sp / s as f64),
            boot.iter().map(|b| b[col(0)] / (b[1] / s as f64)).collect(),
        );
        let mut ests = Vec::new();
        for (ei, (family, spec)) in fams[si].iter().enumerate() {
            let me = total(&mse[si][ei]);
            ests.push(EstimatorResult {
                family: family.to_string(),
                spec: spec.clone(),
                mean_shots: used[si][ei],
                mse: me / rows as f64,
                rel_rmse: Estimate::from_bootstrap(
                    (me / n2).sqrt(),
                    boot.iter().map(|b| (b[col(ei)] / b[0]).sqrt()).collect(),
                ),
                ratio: Estimate::from_bootstrap(
                    me / m0,
                    boot.iter().map(|b| b[col(ei)] / b[col(0)]).collect(),
                ),
            });
        }
        if let Some(st) = ests.iter().find(|e| e.family == "stratified") {
            let consistent = st.ratio.covers(CLAIMED_STRATIFIED_RATIO);
            claim.push(ClaimCheck {
                shots: s,
                claimed: CLAIMED_STRATIFIED_RATIO,
                measured: st.ratio,
                consistent,
                verdict: if consistent {
                    "consistent with the claim given the CI".into()
                } else {
                    "inconsistent with the claim given the CI".into()
                },
            });
        }
        by_shots.push(ShotsResult {
            shots: s,
            multinomial_vs_theory: theory,
            estimators: ests,
        });
    }
    Ok(VarianceStudy {
        rows,
        replications,
        bootstrap,
        by_shots,
        claim,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. BHC.

/// The BHC radius ε(δ) = √(2(K ln 2 + ln(1/δ))/S) for K categories and S shots:
/// P(‖p̂ − p‖₁ ≥ ε(δ)) ≤ δ.
pub fn bhc_epsilon(keys: usize, shots: usize, delta: f64) -> f64 {
    (2.0 * (keys as f64 * std::f64::consts::LN_2 + (1.0 / delta).ln()) / shots as f64).sqrt()
}

/// One-sided upper confidence limit (Clopper–Pearson) of a binomial proportion with
/// `x` successes in `n` trials at `level` (e.g. 0.95).
pub fn clopper_pearson_upper(x: usize, n: usize, level: f64) -> Result<f64> {
    if n == 0 || x > n || !(level > 0.0 && level < 1.0) {
        return Err(invalid(format!(
            "Clopper-Pearson: need 0 ≤ x ≤ n, n ≥ 1 and level in (0, 1), got x = {x}, n = {n}, \
             level = {level}"
        )));
    }
    if x == n {
        return Ok(1.0);
    }
    let beta = Beta::new(x as f64 + 1.0, (n - x) as f64)
        .map_err(|e| invalid(format!("Clopper-Pearson: {e}")))?;
    Ok(beta.inverse_cdf(level))
}

/// The BHC bound at one (S, K).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BhcGroup {
    /// Shots S.
    pub shots: usize,
    /// Keys K of the rows.
    pub keys: usize,
    /// Trials (rows × seeds).
    pub trials: usize,
    /// ε(δ).
    pub epsilon: f64,
    /// Whether ε(δ) ≥ 2 (the bound says nothing: ‖p̂ − p‖₁ ≤ 2 always).
    pub vacuous: bool,
    /// Trials with ‖p̂ − p‖₁ ≥ ε(δ).
    pub exceed: usize,
    /// exceed / trials.
    pub exceed_fraction: f64,
    /// One-sided 95% Clopper–Pearson upper limit of the exceedance probability.
    pub exceed_upper95: f64,
    /// Mean ‖p̂ − p‖₁.
    pub mean_l1: f64,
    /// Empirical (1 − δ)-quantile of ‖p̂ − p‖₁ (inverse empirical CDF).
    pub quantile: f64,
    /// ε(δ) / quantile.
    pub looseness: f64,
}

/// Result of [`bhc_study`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BhcStudy {
    /// δ.
    pub delta: f64,
    /// Seeds per S.
    pub seeds: usize,
    /// How the counts were obtained.
    pub source: String,
    /// Per (S, K), ordered by S then K.
    pub groups: Vec<BhcGroup>,
    /// All trials.
    pub trials: usize,
    /// All exceedances.
    pub exceed: usize,
    /// exceed / trials over all groups.
    pub exceed_fraction: f64,
    /// One-sided 95% Clopper–Pearson upper limit over all groups.
    pub exceed_upper95: f64,
}

/// Inverse empirical CDF: the smallest sorted value v with F_n(v) ≥ q.
fn ecdf_quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let k = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[k - 1]
}

/// The BHC study (module docs, section 2) for `multinomial:S`, S in `shots`, `seeds` seeds.
pub fn bhc_study(
    workload: &Workload,
    shots: &[usize],
    seeds: usize,
    delta: f64,
    seed: u64,
    progress: &dyn Fn(&str),
) -> Result<BhcStudy> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(invalid(format!(
            "estimator study: δ must be in (0, 1), got {delta}"
        )));
    }
    if shots.is_empty() || shots.contains(&0) || seeds == 0 {
        return Err(invalid(format!(
            "estimator study: BHC needs shot counts ≥ 1 and ≥ 1 seed, got {shots:?} and {seeds}"
        )));
    }
    let seeds_r = seed_range(seed, seeds)?;
    let prepared = workload
        .problems
        .iter()
        .map(Prepared::new)
        .collect::<Result<Vec<_>>>()?;
    let mut groups = Vec::new();
    for &s in shots {
        progress(&format!("BHC: multinomial:{s}, {seeds} seeds"));
        let spec = parse_spec(&format!("multinomial:{s}"))?;
        let mut by_k: std::collections::BTreeMap<usize, Vec<f64>> = Default::default();
        for p in &prepared {
            let lk = p.dims.lk;
            let l1s = by_k.entry(lk).or_default();
            for sd in seeds_r.clone() {
                let pr = p.problem;
                let (_, diag) =
                    attention_with_diagnostics(&pr.q, &pr.k, &pr.v, &p.options(spec, sd))?;
                let counts = diag.counts();
                if counts.len() != p.probs.len() {
                    return Err(invalid(format!(
                        "estimator study: {} sampled counts for {} probabilities in `{}`",
                        counts.len(),
                        p.probs.len(),
                        pr.label
                    )));
                }
                for (c, pr) in counts.chunks(lk).zip(p.probs.chunks(lk)) {
                    let n: u32 = c.iter().sum();
                    if n == 0 {
                        continue;
                    }
                    let l1: f64 = c
                        .iter()
                        .zip(pr)
                        .map(|(&ci, &pi)| (f64::from(ci) / f64::from(n) - pi).abs())
                        .sum();
                    l1s.push(l1);
                }
            }
        }
        for (k, mut l1s) in by_k {
            if l1s.is_empty() {
                continue;
            }
            l1s.sort_by(f64::total_cmp);
            let eps = bhc_epsilon(k, s, delta);
            let exceed = l1s.iter().filter(|&&x| x >= eps).count();
            let quantile = ecdf_quantile(&l1s, 1.0 - delta);
            groups.push(BhcGroup {
                shots: s,
                keys: k,
                trials: l1s.len(),
                epsilon: eps,
                vacuous: eps >= 2.0,
                exceed,
                exceed_fraction: exceed as f64 / l1s.len() as f64,
                exceed_upper95: clopper_pearson_upper(exceed, l1s.len(), 0.95)?,
                mean_l1: l1s.iter().sum::<f64>() / l1s.len() as f64,
                quantile,
                looseness: eps / quantile,
            });
        }
    }
    let trials: usize = groups.iter().map(|g| g.trials).sum();
    let exceed: usize = groups.iter().map(|g| g.exceed).sum();
    if trials == 0 {
        return Err(invalid("estimator study: BHC drew no shots"));
    }
    Ok(BhcStudy {
        delta,
        seeds,
        source: "the kernel's own draws: QueryDiagnostics::samples of attention_with_diagnostics \
                 (multinomial:S, noiseless)"
            .into(),
        groups,
        trials,
        exceed,
        exceed_fraction: exceed as f64 / trials as f64,
        exceed_upper95: clopper_pearson_upper(exceed, trials, 0.95)?,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Time scaling.

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

// ---------------------------------------------------------------------------------------------
// 4. Noise sweep.

/// One noise setting.
#[derive(Clone, Debug, PartialEq, Serialize)]
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
}

/// Result of [`noise_sweep`].
#[derive(Clone, Debug, PartialEq, Serialize)]
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
    let run = |spec: &str| -> Result<(f64, f64)> {
        let spec = parse_spec(spec)?;
        let (mut m, mut v) = (0.0, 0.0);
        for p in &workload.problems {
            let (e, se) = relative_error(
                &p.q,
                &p.k,
                &p.v,
                &AttentionOptions::default(),
                spec,
                seeds_r.clone(),
            )?;
            m += e;
            v += se * se;
        }
        let np = workload.problems.len() as f64;
        Ok((m / np, v.sqrt() / np))
    };
    let mut points = Vec::new();
    for base in ["multinomial", "stratified"] {
        progress(&format!("noise: {base}:{shots}"));
        let clean = format!("{base}:{shots}");
        let (e0, se0) = run(&clean)?;
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
                    let (spec, (e, se)) = if level == 0.0 {
                        (clean.clone(), (e0, se0))
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

// ---------------------------------------------------------------------------------------------
// The whole study.

/// Everything [`run_study`] measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StudyReport {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The qattn version that ran the study.
    pub qattn_version: String,
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

// ---------------------------------------------------------------------------------------------
// Output.

fn ci(e: &Estimate, digits: usize) -> String {
    format!(
        "{:.d$} [{:.d$}, {:.d$}]",
        e.value,
        e.ci_low,
        e.ci_high,
        d = digits
    )
}

fn sci(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3e}")
    } else {
        "—".into()
    }
}

/// The report as Markdown: one section per study, numbers with their intervals.
pub fn to_markdown(r: &StudyReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Estimator studies\n");
    let _ = writeln!(
        s,
        "qattn {} · {} study · model `{}` · seed {} · wall time {:.1} s\n",
        r.qattn_version,
        if r.quick { "quick" } else { "full" },
        r.model,
        r.seed,
        r.wall_seconds
    );
    let _ = writeln!(
        s,
        "Rows: {} ({} rows in {} problems).\n",
        r.workload.description,
        r.workload.rows,
        r.workload.problems.len()
    );

    let v = &r.variance;
    let _ = writeln!(
        s,
        "## 1. Variance of each estimator against multinomial:S\n"
    );
    let _ = writeln!(
        s,
        "MSE per row over {} seeds (common random numbers), ratio = Σ MSE / Σ MSE(multinomial:S) \
         over {} rows; [95% percentile interval over {} bootstrap resamples of rows]. Every \
         estimator here is unbiased without noise, so MSE is the sampling variance.\n",
        v.replications, v.rows, v.bootstrap
    );
    for b in &v.by_shots {
        let _ = writeln!(s, "### S = {}\n", b.shots);
        let _ = writeln!(
            s,
            "| estimator | mean shots / row | relative RMSE [95% CI] | variance ratio vs multinomial [95% CI] |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for e in &b.estimators {
            let _ = writeln!(
                s,
                "| `{}` | {:.2} | {} | {} |",
                e.spec,
                e.mean_shots,
                ci(&e.rel_rmse, 4),
                ci(&e.ratio, 3)
            );
        }
        let _ = writeln!(
            s,
            "\nCheck: measured / exact multinomial variance = {} (1 expected).\n",
            ci(&b.multinomial_vs_theory, 3)
        );
    }
    let _ = writeln!(
        s,
        "Claim: \"{CLAIM}\", i.e. a stratified / multinomial variance ratio of {CLAIMED_STRATIFIED_RATIO:.2}.\n"
    );
    let _ = writeln!(
        s,
        "| S | measured stratified ratio [95% CI] | claimed | verdict |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---|");
    for c in &v.claim {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {} |",
            c.shots,
            ci(&c.measured, 3),
            c.claimed,
            c.verdict
        );
    }

    let b = &r.bhc;
    let _ = writeln!(
        s,
        "\n## 2. Bretagnolle–Huber–Carol bound for multinomial:S (δ = {})\n",
        b.delta
    );
    let _ = writeln!(
        s,
        "ε(δ) = √(2(K ln 2 + ln(1/δ))/S); counts from {}; {} seeds. Exceed = trials with \
         ‖p̂ − p‖₁ ≥ ε(δ) (the bound allows a fraction δ); quantile = empirical (1 − δ)-quantile \
         of ‖p̂ − p‖₁; looseness = ε(δ) / quantile.\n",
        b.source, b.seeds
    );
    let _ = writeln!(
        s,
        "| S | K | trials | ε(δ) | exceed fraction (95% upper) | mean ‖p̂ − p‖₁ | quantile | looseness |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for g in &b.groups {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.4}{} | {:.2e} ({:.2e}) | {:.4} | {:.4} | {:.2} |",
            g.shots,
            g.keys,
            g.trials,
            g.epsilon,
            if g.vacuous { " (vacuous)" } else { "" },
            g.exceed_fraction,
            g.exceed_upper95,
            g.mean_l1,
            g.quantile,
            g.looseness
        );
    }
    let _ = writeln!(
        s,
        "\nAll groups: {} of {} trials exceed ε(δ) (fraction {:.2e}, 95% upper limit {:.2e}; δ = {}).",
        b.exceed, b.trials, b.exceed_fraction, b.exceed_upper95, b.delta
    );

    let t = &r.timing;
    let _ = writeln!(s, "\n## 3. Time scaling\n");
    let _ = writeln!(
        s,
        "{}. Machine: {}. B = {}, H = {}, D = {}, Lq = Lk = n, S = {}, best of {}. Fit: \
         ln t = a + b ln n, b with a 95% interval (Student's t, n − 2 df).\n",
        t.note, t.machine, t.batch, t.heads, t.dim, t.shots, t.reps
    );
    let mut head = "| estimator |".to_string();
    let mut rule = "|---|".to_string();
    for n in &t.lengths {
        let _ = write!(head, " n = {n} (ms) |");
        rule.push_str("---:|");
    }
    let _ = writeln!(s, "{head} exponent b [95% CI] |\n{rule}---:|");
    for ser in &t.series {
        let mut row = format!("| `{}` |", ser.spec);
        for x in &ser.seconds {
            let _ = write!(row, " {:.3} |", x * 1e3);
        }
        let _ = writeln!(
            s,
            "{row} {:.3} [{:.3}, {:.3}] |",
            ser.fit.exponent, ser.fit.ci_low, ser.fit.ci_high
        );
    }

    let n = &r.noise;
    let _ = writeln!(
        s,
        "\n## 4. Noise sweep (S = {}, {} seeds)\n",
        n.shots, n.seeds
    );
    let _ = writeln!(
        s,
        "Mean relative error ‖ô − o‖/‖o‖ against exact attention (± standard error). Level 0 is \
         the noiseless estimator. Depolarizing is not mitigated (`+mitigate` corrects readout and \
         damping only).\n"
    );
    let _ = writeln!(
        s,
        "| estimator | channel | level | no mitigation | +mitigate |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|");
    for p in n.points.iter().filter(|p| !p.mitigate) {
        let mitigated = n
            .points
            .iter()
            .find(|m| {
                m.mitigate && m.base == p.base && m.channel == p.channel && m.level == p.level
            })
            .map(|m| format!("{:.4} ± {:.4}", m.rel_error, m.se))
            .unwrap_or_else(|| "—".into());
        let _ = writeln!(
            s,
            "| {}:{} | {} | {} | {:.4} ± {:.4} | {} |",
            p.base, n.shots, p.channel, p.level, p.rel_error, p.se, mitigated
        );
    }
    let _ = writeln!(
        s,
        "\nMethod: see the documentation of `qattn_verify::estimators`. Per-row MSE means: {}.",
        v.by_shots
            .iter()
            .flat_map(|b| b
                .estimators
                .iter()
                .map(|e| format!("{} {}", e.spec, sci(e.mse))))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s
}

/// The three plots of the report: (file stem, plot).
pub fn plots(r: &StudyReport) -> Vec<(&'static str, LinePlot)> {
    let fams = estimator_families();
    let error_vs_s = LinePlot {
        title: "relative rmse of the attention output vs shots S (95% bootstrap CI)".into(),
        x_label: "shots per query S".into(),
        y_label: "relative rmse".into(),
        x_scale: Scale::Log,
        y_scale: Scale::Log,
        series: fams
            .iter()
            .map(|(f, template)| Series {
                label: template.clone(),
                points: r
                    .variance
                    .by_shots
                    .iter()
                    .filter_map(|b| {
                        let e = b.estimators.iter().find(|e| e.family == *f)?;
                        Some(Point::with_bar(
                            b.shots as f64,
                            e.rel_rmse.value,
                            e.rel_rmse.ci_low,
                            e.rel_rmse.ci_high,
                        ))
                    })
                    .collect(),
            })
            .collect(),
    };
    let t = &r.timing;
    let time_vs_n = LinePlot {
        title: format!(
            "forward time vs n (B={}, H={}, D={}, S={}, this machine, shared cpu)",
            t.batch, t.heads, t.dim, t.shots
        ),
        x_label: "n = Lq = Lk".into(),
        y_label: "seconds (best of reps)".into(),
        x_scale: Scale::Log,
        y_scale: Scale::Log,
        series: t
            .series
            .iter()
            .map(|ser| Series {
                label: format!("{} (b = {:.2})", ser.spec, ser.fit.exponent),
                points: t
                    .lengths
                    .iter()
                    .zip(&ser.seconds)
                    .map(|(&n, &x)| Point::new(n as f64, x))
                    .collect(),
            })
            .collect(),
    };
    let n = &r.noise;
    let mut groups: Vec<(String, String, bool)> = Vec::new();
    for p in &n.points {
        let key = (p.base.clone(), p.channel.clone(), p.mitigate);
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    let error_vs_noise = LinePlot {
        title: format!(
            "relative error vs noise level (S={}, mean +- se over {} seeds)",
            n.shots, n.seeds
        ),
        x_label: "noise level (depol lambda, readout eps, damping gamma)".into(),
        y_label: "relative error".into(),
        x_scale: Scale::Linear,
        y_scale: Scale::Log,
        series: groups
            .iter()
            .map(|(base, channel, mitigate)| Series {
                label: format!(
                    "{base} {channel}{}",
                    if *mitigate { " +mitigate" } else { "" }
                ),
                points: n
                    .points
                    .iter()
                    .filter(|p| &p.base == base && &p.channel == channel && p.mitigate == *mitigate)
                    .map(|p| {
                        Point::with_bar(
                            p.level,
                            p.rel_error,
                            p.rel_error - p.se,
                            p.rel_error + p.se,
                        )
                    })
                    .collect(),
            })
            .collect(),
    };
    vec![
        ("error_vs_s", error_vs_s),
        ("time_vs_n", time_vs_n),
        ("error_vs_noise", error_vs_noise),
    ]
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
