//! `qattn attn`: apply a qattn estimator to tensors exported from PyTorch (or anywhere).

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor, Var};
use qattn_kernels::{AttentionOptions, EstimatorSpec, GradMode, attention_with_diagnostics};
use qattn_model::io::write_atomic;
use std::collections::HashMap;
use std::path::PathBuf;

/// Arguments of `qattn attn`.
#[derive(clap::Args)]
#[command(
    after_help = "The input holds tensors `q` [B,H,Lq,D], `k` [B,H,Lk,D], `v` [B,H,Lk,Dv] \
(f32, f16 or bf16), optionally `mask` [B,Lk] (nonzero = keep) and `grad_out` [B,H,Lq,Dv]. The output \
holds `out` (in q's dtype), `counts` [B,H,Lq,Lk] (u32, usable measurements) when the estimator \
samples, and `dq`, `dk`, `dv` when `grad_out` was given."
)]
pub(crate) struct Args {
    /// safetensors file with q, k, v [, mask, grad_out].
    #[arg(long)]
    input: PathBuf,
    /// Estimator spec, e.g. `exact`, `stratified:32`, `topk:8:32+readout:0.02:0.03+mitigate`.
    #[arg(long, default_value = "exact")]
    estimator: String,
    /// Seed of the Philox sampling streams.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Causal attention (query i sees keys j ≤ i, as PyTorch SDPA's is_causal).
    #[arg(long)]
    causal: bool,
    /// Logit scale (default 1/√D).
    #[arg(long)]
    scale: Option<f64>,
    /// Gradient mode used when the input holds `grad_out`.
    #[arg(long, default_value = "exact", value_parser = ["exact", "sampled"])]
    grad_mode: String,
    /// Output safetensors file (written atomically).
    #[arg(long)]
    output: PathBuf,
}

fn take(map: &mut HashMap<String, Tensor>, name: &str, input: &std::path::Path) -> Result<Tensor> {
    map.remove(name).with_context(|| {
        let mut names: Vec<&String> = map.keys().collect();
        names.sort();
        format!(
            "{} has no tensor `{name}` (it holds: {names:?})",
            input.display()
        )
    })
}

pub(crate) fn run(a: Args) -> Result<()> {
    let estimator: EstimatorSpec = a.estimator.parse()?;
    let grad_mode: GradMode = a.grad_mode.parse()?;
    if !a.input.exists() {
        bail!("input file {} does not exist", a.input.display());
    }
    let mut map = candle_core::safetensors::load(&a.input, &Device::Cpu)
        .with_context(|| format!("cannot read {} as safetensors", a.input.display()))?;
    let q = take(&mut map, "q", &a.input)?;
    let k = take(&mut map, "k", &a.input)?;
    let v = take(&mut map, "v", &a.input)?;
    let mask = map.remove("mask");
    let grad_out = map.remove("grad_out");
    let opts = AttentionOptions {
        estimator,
        seed: a.seed,
        causal: a.causal,
        scale: a.scale,
        grad_mode,
        mask,
        batch_offset: 0,
    };

    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let (out, diag) = match &grad_out {
        None => attention_with_diagnostics(&q, &k, &v, &opts)?,
        Some(g) => {
            let vars =
                [&q, &k, &v].map(|t| t.to_dtype(DType::F32).and_then(|t| Var::from_tensor(&t)));
            let [qv, kv, vv] = vars;
            let (qv, kv, vv) = (qv?, kv?, vv?);
            let (out, diag) =
                attention_with_diagnostics(qv.as_tensor(), kv.as_tensor(), vv.as_tensor(), &opts)?;
            if g.dims() != out.dims() {
                bail!(
                    "tensor `grad_out`: expected shape {:?} (the output's), got {:?}",
                    out.dims(),
                    g.dims()
                );
            }
            let loss = (&out * g.to_dtype(DType::F32)?)?.sum_all()?;
            let grads = loss.backward()?;
            for (name, var, orig) in [("dq", &qv, &q), ("dk", &kv, &k), ("dv", &vv, &v)] {
                let gr = grads.get(var.as_tensor()).context("no gradient computed")?;
                tensors.insert(name.into(), gr.to_dtype(orig.dtype())?);
            }
            (out.to_dtype(q.dtype())?, diag)
        }
    };
    let (b, h, lq) = diag.shape;
    if !estimator.is_exact() {
        let counts = Tensor::from_vec(diag.counts(), (b, h, lq, diag.keys), &Device::Cpu)?;
        tensors.insert("counts".into(), counts);
    }
    tensors.insert("out".into(), out);
    let dir = a
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = tempfile_in(dir)?;
    candle_core::safetensors::save(&tensors, &tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let bytes = std::fs::read(&tmp)?;
    let _ = std::fs::remove_file(&tmp);
    write_atomic(&a.output, &bytes)?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    eprintln!(
        "wrote {} ({}) — estimator {estimator}, seed {}, shape [B={b}, H={h}, Lq={lq}, Lk={}]",
        a.output.display(),
        names
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        a.seed,
        diag.keys
    );
    Ok(())
}

fn tempfile_in(dir: &std::path::Path) -> Result<PathBuf> {
    Ok(dir.join(format!(
        ".qattn-attn-{}.safetensors.partial",
        std::process::id()
    )))
}
