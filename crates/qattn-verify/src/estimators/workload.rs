//! The rows of the studies: attention problems from a pretrained model's layers or from
//! Philox Gaussians.

use super::*;
use crate::error::{Result, invalid};
use candle_core::{DType, Device, Tensor};
use qattn_kernels::philox::{philox4x32_10, u32_to_open01};
use qattn_model::{AttentionConfig, HubOptions, Inputs, LoadOptions, Model};
use serde::Serialize;

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
pub(super) fn gaussian_qkv(
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
