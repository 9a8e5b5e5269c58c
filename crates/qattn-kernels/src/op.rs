//! The public entry points: validation, dtype handling and the candle `CustomOp3` that gives
//! attention an autograd backward.

use crate::cpu::mc::{self, QueryDiagnostics, RowRecord};
use crate::cpu::{self, Problem};
use crate::error::{Error, Result};
use crate::spec::{EstimatorSpec, GradMode};
use candle_core::{CpuStorage, DType, Device, Layout, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// The op on candle CUDA tensors (feature `cuda`).
#[cfg(feature = "cuda")]
mod cuda;

/// Options of one attention call.
#[derive(Clone, Debug, Default)]
pub struct AttentionOptions {
    /// The estimator (and measurement noise).
    pub estimator: EstimatorSpec,
    /// The seed of the Philox streams; with (batch, head, query, shot) it fixes every draw.
    pub seed: u64,
    /// Causal masking, top-left aligned as in PyTorch SDPA: query i sees keys j ≤ i.
    pub causal: bool,
    /// Logit scale; defaults to 1/√D.
    pub scale: Option<f64>,
    /// Gradient mode of sampling estimators (ignored by `exact`).
    pub grad_mode: GradMode,
    /// Key mask [B, Lk]; nonzero = keep. Any dtype.
    pub mask: Option<Tensor>,
    /// Index of this call's first batch row in a larger logical batch (default 0). Sampled
    /// draws of row b are keyed by `batch_offset + b`, so when a batch is split across
    /// processes (data-parallel training), each shard draws exactly what the whole batch would
    /// draw in one call. `batch_offset + B` must stay below 2^24.
    pub batch_offset: usize,
}

impl AttentionOptions {
    /// Options for `estimator` with everything else default.
    pub fn new(estimator: EstimatorSpec) -> Self {
        AttentionOptions {
            estimator,
            ..Default::default()
        }
    }
}

/// Per-query diagnostics of one call, in (batch, head, query) row-major order.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    /// (B, H, Lq).
    pub shape: (usize, usize, usize),
    /// Number of keys Lk.
    pub keys: usize,
    /// One entry per query; empty for exact attention.
    pub queries: Vec<QueryDiagnostics>,
}

impl Diagnostics {
    /// The diagnostics of query `i` of (batch `b`, head `h`).
    pub fn get(&self, b: usize, h: usize, i: usize) -> Option<&QueryDiagnostics> {
        let (_, nh, lq) = self.shape;
        self.queries.get((b * nh + h) * lq + i)
    }

    /// Dense measurement counts [B, H, Lq, Lk] (usable shots only).
    pub fn counts(&self) -> Vec<u32> {
        let lk = self.keys;
        let mut c = vec![0u32; self.queries.len() * lk];
        for (r, q) in self.queries.iter().enumerate() {
            for &j in &q.samples {
                c[r * lk + j as usize] += 1;
            }
        }
        c
    }
}

#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    h: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
}

struct OpConfig {
    spec: EstimatorSpec,
    seed: u64,
    batch_offset: usize,
    causal: bool,
    scale: f32,
    grad_mode: GradMode,
    mask: Option<Vec<u8>>,
    dims: Dims,
    record: bool,
    /// Diagnostics were asked for: records carry the variance estimate too.
    diagnostics: bool,
}

#[derive(Default)]
struct OpState {
    lse: Option<Vec<f32>>,
    rows: Option<Vec<RowRecord>>,
    /// The log-sum-exp of a forward that ran on the GPU kernels, left on the device.
    #[cfg(feature = "cuda")]
    lse_dev: Option<crate::cudarc::driver::CudaSlice<f32>>,
}

struct AttentionOp {
    cfg: Arc<OpConfig>,
    state: Arc<Mutex<OpState>>,
}

fn dims4(
    t: &Tensor,
    name: &'static str,
    expected: impl Fn() -> String,
) -> Result<(usize, usize, usize, usize)> {
    match *t.dims() {
        [a, b, c, d] => Ok((a, b, c, d)),
        _ => Err(Error::Shape {
            name,
            expected: expected(),
            actual: t.dims().to_vec(),
        }),
    }
}

fn check_dtype(t: &Tensor, name: &'static str) -> Result<()> {
    match t.dtype() {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => Err(Error::DType {
            name,
            expected: "f32, f16 or bf16",
            actual: format!("{other:?}"),
        }),
    }
}

fn validate(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<(Dims, Option<Vec<u8>>)> {
    let (b, h, lq, d) = dims4(q, "q", || "[B, H, Lq, D] (4 dimensions)".into())?;
    let (kb, kh, lk, kd) = dims4(k, "k", || format!("[B={b}, H={h}, Lk, D={d}]"))?;
    if (kb, kh, kd) != (b, h, d) {
        return Err(Error::Shape {
            name: "k",
            expected: format!("[B={b}, H={h}, Lk, D={d}]"),
            actual: k.dims().to_vec(),
        });
    }
    let (vb, vh, vl, dv) = dims4(v, "v", || format!("[B={b}, H={h}, Lk={lk}, Dv]"))?;
    if (vb, vh, vl) != (b, h, lk) {
        return Err(Error::Shape {
            name: "v",
            expected: format!("[B={b}, H={h}, Lk={lk}, Dv]"),
            actual: v.dims().to_vec(),
        });
    }
    if lk == 0 {
        return Err(Error::Shape {
            name: "k",
            expected: "at least one key (Lk ≥ 1)".into(),
            actual: k.dims().to_vec(),
        });
    }
    opts.estimator.check_keys(lk)?;
    if d == 0 {
        return Err(Error::Shape {
            name: "q",
            expected: "D ≥ 1".into(),
            actual: q.dims().to_vec(),
        });
    }
    for (t, name) in [(q, "q"), (k, "k"), (v, "v")] {
        check_dtype(t, name)?;
        match t.device() {
            Device::Cpu => {}
            Device::Cuda(_) if cfg!(feature = "cuda") => {}
            Device::Cuda(_) => return Err(Error::NotCompiledWithCuda),
            other => {
                return Err(Error::Options(format!(
                    "tensor `{name}` is on {other:?}; qattn attention runs on the CPU and on \
                     CUDA devices"
                )));
            }
        }
        if !t.device().same_device(q.device()) {
            return Err(Error::Options(format!(
                "tensor `{name}` is on {:?} but q is on {:?}",
                t.device(),
                q.device()
            )));
        }
    }
    if b.saturating_add(opts.batch_offset) >= 1 << 24 {
        return Err(Error::Options(format!(
            "batch size {b} at batch offset {} exceeds the sampler's limit of 2^24",
            opts.batch_offset
        )));
    }
    if let Some(s) = opts.scale.filter(|s| !s.is_finite()) {
        return Err(Error::Options(format!("scale must be finite, got {s}")));
    }
    let mask = match &opts.mask {
        None => None,
        Some(m) => {
            if m.dims() != [b, lk] {
                return Err(Error::Shape {
                    name: "mask",
                    expected: format!("[B={b}, Lk={lk}]"),
                    actual: m.dims().to_vec(),
                });
            }
            let vals = m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Some(vals.into_iter().map(|x| u8::from(x != 0.0)).collect())
        }
    };
    Ok((
        Dims {
            b,
            h,
            lq,
            lk,
            d,
            dv,
        },
        mask,
    ))
}

/// `t` as a contiguous f32 tensor on the CPU (`t` itself when it already is one).
fn host_f32(t: &Tensor) -> candle_core::Result<Tensor> {
    let t = if t.device().is_cpu() {
        t.clone()
    } else {
        t.to_device(&candle_core::Device::Cpu)?
    };
    t.to_dtype(DType::F32)?.contiguous()
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, name: &str) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("qattn attention: `{name}` must be f32 inside the op"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("qattn attention: `{name}` must be contiguous inside the op"),
    }
}

impl OpConfig {
    /// The `lsh` parameters, when this is the LSH estimator.
    fn lsh(&self) -> Option<cpu::lsh::Lsh> {
        match self.spec.estimator {
            crate::spec::Estimator::Lsh {
                bits,
                block,
                samples,
                rounds,
            } => Some(cpu::lsh::Lsh {
                bits,
                block,
                samples,
                rounds,
                noise: self.spec.noise,
            }),
            _ => None,
        }
    }

    fn problem<'a>(&'a self, q: &'a [f32], k: &'a [f32], v: &'a [f32]) -> Problem<'a> {
        let Dims {
            b,
            h,
            lq,
            lk,
            d,
            dv,
        } = self.dims;
        Problem {
            q,
            k,
            v,
            b,
            h,
            lq,
            lk,
            d,
            dv,
            scale: self.scale,
            causal: self.causal,
            mask: self.mask.as_deref(),
        }
    }
}

impl AttentionOp {
    /// The CPU forward on host slices; saves what the backward needs in the op's state.
    fn host_forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> candle_core::Result<Vec<f32>> {
        let cfg = &self.cfg;
        let p = cfg.problem(q, k, v);
        let (out, lse, rows) = if cfg.spec.is_exact() {
            let (o, l) = cpu::exact_forward(&p);
            (o, l, None)
        } else if let Some(lsh) = cfg.lsh() {
            let f = cpu::lsh::forward(&p, lsh, cfg.seed, cfg.batch_offset, cfg.record);
            (f.out, f.lse, f.rows)
        } else {
            let f = mc::forward_at(
                &p,
                &cfg.spec,
                cfg.seed,
                cfg.batch_offset,
                cfg.record,
                cfg.diagnostics,
            );
            (f.out, f.lse, f.rows)
        };
        let mut st = self.state()?;
        st.lse = Some(lse);
        st.rows = rows;
        Ok(out)
    }

    fn state(&self) -> candle_core::Result<std::sync::MutexGuard<'_, OpState>> {
        self.state
            .lock()
            .map_err(|_| candle_core::Error::Msg("qattn op state poisoned".into()))
    }
}

impl candle_core::CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "qattn-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = self.host_forward(
            slice(s1, l1, "q")?,
            slice(s2, l2, "k")?,
            slice(s3, l3, "v")?,
        )?;
        let Dims { b, h, lq, dv, .. } = self.cfg.dims;
        Ok((CpuStorage::F32(out), Shape::from((b, h, lq, dv))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self, [(s1, l1), (s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if let Some(grads) = cuda::backward(self, q, k, v, res, grad_res)? {
            return Ok(grads);
        }
        let cfg = &self.cfg;
        let dev = q.device().clone();
        // The operands are read in place (no copies): contiguous f32 CPU tensors, as the op's
        // inputs and output are; anything else is made so first.
        let (q, k, v) = (host_f32(q)?, host_f32(k)?, host_f32(v)?);
        let grad_res = host_f32(grad_res)?;
        let res = host_f32(res)?;
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (gs, gl) = grad_res.storage_and_layout();
        let (rs, rl) = res.storage_and_layout();
        let data = |s, l, what| crate::fused::storage_f32(s, l, "qattn attention backward", what);
        let (qv, kv, vv) = (
            data(&qs, ql, "q")?,
            data(&ks, kl, "k")?,
            data(&vs, vl, "v")?,
        );
        let dout = data(&gs, gl, "the output gradient")?;
        let out = data(&rs, rl, "the output")?;
        let p = cfg.problem(qv, kv, vv);
        let st = self.state()?;
        let (dq, dk, dvv) = if cfg.spec.is_exact() {
            match &st.lse {
                Some(lse) => cpu::exact_backward(&p, out, lse, dout),
                None => {
                    let (o, l) = cpu::exact_forward(&p);
                    cpu::exact_backward(&p, &o, &l, dout)
                }
            }
        } else if let (Some(lsh), GradMode::Sampled) = (cfg.lsh(), cfg.grad_mode) {
            // The selection is recomputed from the same Philox streams, not stored.
            let lse = st.lse.as_ref().expect("lse saved by forward");
            cpu::lsh::backward_sampled(&p, lsh, cfg.seed, cfg.batch_offset, out, lse, dout)
        } else if cfg.grad_mode == GradMode::Sampled {
            let rows = st.rows.as_ref().ok_or_else(|| {
                candle_core::Error::Msg(
                    "qattn: sampled backward needs the forward records (internal error)".into(),
                )
            })?;
            let lse = st.lse.as_ref().expect("lse saved by forward");
            mc::backward_sampled(&p, &cfg.spec, out, lse, rows, dout)
        } else {
            // Straight-through: the gradient of exact attention, recomputed.
            let (o, l) = cpu::exact_forward(&p);
            cpu::exact_backward(&p, &o, &l, dout)
        };
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), &dev)?),
            Some(Tensor::from_vec(dk, k.shape(), &dev)?),
            Some(Tensor::from_vec(dvv, v.shape(), &dev)?),
        ))
    }
}

fn run(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
    diagnostics: bool,
) -> Result<(Tensor, Option<Diagnostics>)> {
    let (dims, mask) = validate(q, k, v, opts)?;
    let scale = opts.scale.unwrap_or(1.0 / (dims.d as f64).sqrt()) as f32;
    let tracking = q.track_op() || k.track_op() || v.track_op();
    // The sampled backward of `lsh` recomputes its selection; the other samplers replay records.
    let replays = !matches!(opts.estimator.estimator, crate::spec::Estimator::Lsh { .. });
    let record = diagnostics || (tracking && opts.grad_mode == GradMode::Sampled && replays);
    let cfg = Arc::new(OpConfig {
        spec: opts.estimator,
        seed: opts.seed,
        batch_offset: opts.batch_offset,
        causal: opts.causal,
        scale,
        grad_mode: opts.grad_mode,
        mask,
        dims,
        record,
        diagnostics,
    });
    let state = Arc::new(Mutex::new(OpState::default()));
    let prep = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.contiguous()?) };
    let (qf, kf, vf) = (prep(q)?, prep(k)?, prep(v)?);
    let out = qf.apply_op3(
        &kf,
        &vf,
        AttentionOp {
            cfg: cfg.clone(),
            state: state.clone(),
        },
    )?;
    let out = if q.dtype() == DType::F32 {
        out
    } else {
        out.to_dtype(q.dtype())?
    };
    let diag = if diagnostics {
        let st = state
            .lock()
            .map_err(|_| Error::Options("internal: op state poisoned".into()))?;
        let queries = st
            .rows
            .as_ref()
            .map(|r| r.iter().map(|x| x.diag.clone()).collect())
            .unwrap_or_default();
        Some(Diagnostics {
            shape: (dims.b, dims.h, dims.lq),
            keys: dims.lk,
            queries,
        })
    } else {
        None
    };
    Ok((out, diag))
}

/// Attention with the estimator of `opts`: q [B,H,Lq,D], k [B,H,Lk,D], v [B,H,Lk,Dv] → [B,H,Lq,Dv].
///
/// f16/bf16 inputs are computed in f32 and the output is returned in q's dtype. Differentiable
/// through candle's autograd (see [`GradMode`]).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Tensor> {
    Ok(run(q, k, v, opts, false)?.0)
}

/// [`attention`] plus per-query [`Diagnostics`] (sampled indices, effective sample size,
/// estimated variance).
pub fn attention_with_diagnostics(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<(Tensor, Diagnostics)> {
    let (t, d) = run(q, k, v, opts, true)?;
    Ok((t, d.unwrap_or_default()))
}
