//! The attention op on candle CUDA tensors: candle's custom-op CUDA path into the project's
//! kernels, on candle's device and stream.
//!
//! | call | forward | backward |
//! |---|---|---|
//! | `exact` | `exact.cu` (f32) | `backward.cu` exact backward |
//! | `multinomial:S`, `stratified:S` without noise, batch offset 0, no recording | `mc.cu` (same indices as the CPU path) | straight-through: exact backward on the GPU (forward recomputed there) |
//! | everything else (noise, `topk`, `cv`, `adaptive`, `lsh`, sampled gradients, diagnostics, a batch offset, D ∉ {16, 32, 64} or Dv ≠ D) | the CPU kernels on a host copy, the result copied back | the CPU backward on host copies (exact/straight-through on the GPU where the shape allows) |
//!
//! Inputs reach the op as contiguous f32 (the public entry points convert), so bf16/f16 tensors
//! are computed in f32 on the GPU as on the CPU. The kernels take owned device buffers, so the
//! op makes one device-to-device copy of q, k and v (bandwidth-bound, small next to the
//! attention itself).

use super::{AttentionOp, Dims, OpConfig};
use crate::cuda::backward::{BwdDevice, DeviceGrads, exact_backward_run};
use crate::cuda::{DeviceInputs, GpuContext, GpuOptions, GpuShape, mc_kernel_params};
use crate::cudarc::driver::CudaSlice;
use crate::error::Error;
use crate::spec::GradMode;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape, Storage, Tensor};

/// (dq, dk, dv) as [`candle_core::CustomOp3::bwd`] returns them.
type Grads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

/// Where a forward call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Exact,
    Sampling { stratified: bool },
    Host,
}

fn to_candle(e: Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("qattn attention on CUDA: {e}"))
}

impl OpConfig {
    /// The shape of the GPU kernels, when this call's dimensions fit them.
    fn gpu_shape(&self) -> Option<GpuShape> {
        let Dims {
            b,
            h,
            lq,
            lk,
            d,
            dv,
        } = self.dims;
        (d == dv && matches!(d, 16 | 32 | 64)).then_some(GpuShape { b, h, lq, lk, d })
    }

    fn gpu_options(&self) -> GpuOptions {
        GpuOptions {
            scale: Some(f64::from(self.scale)),
            causal: self.causal,
            mask: self.mask.clone(),
        }
    }

    fn forward_path(&self) -> Path {
        if self.gpu_shape().is_none() {
            return Path::Host;
        }
        if self.spec.is_exact() {
            return Path::Exact;
        }
        if self.record || self.batch_offset != 0 {
            return Path::Host;
        }
        match mc_kernel_params(&self.spec) {
            Ok((shots, stratified)) if mc_fits(self.dims.lk, shots) => {
                Path::Sampling { stratified }
            }
            _ => Path::Host,
        }
    }
}

/// Whether the sampling kernel's shared memory holds Lk = `lk` with S = `shots` (as
/// [`GpuContext::mc_alloc`] checks).
fn mc_fits(lk: usize, shots: usize) -> bool {
    (1..=4096).contains(&shots) && lk.div_ceil(64) * 8 + shots * 4 <= 48 * 1024
}

/// A device copy of the contiguous f32 elements `layout` selects in `s`.
fn device_copy(
    s: &CudaStorage,
    layout: &Layout,
    name: &str,
) -> candle_core::Result<CudaSlice<f32>> {
    let data = s.as_cuda_slice::<f32>()?;
    let (a, b) = layout.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "qattn attention: `{name}` must be contiguous inside the op"
        ))
    })?;
    s.device
        .cuda_stream()
        .clone_dtod(&data.slice(a..b))
        .map_err(|e| candle_core::Error::Msg(format!("qattn attention: copy of `{name}`: {e}")))
}

/// A device copy of a CUDA tensor's elements as contiguous f32.
fn tensor_copy(t: &Tensor, name: &str) -> candle_core::Result<CudaSlice<f32>> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let (st, layout) = t.storage_and_layout();
    match &*st {
        Storage::Cuda(s) => device_copy(s, layout, name),
        _ => candle_core::bail!("qattn attention: `{name}` is not on a CUDA device"),
    }
}

fn host_copy(s: &CudaStorage, layout: &Layout, name: &str) -> candle_core::Result<Vec<f32>> {
    let data = s.as_cuda_slice::<f32>()?;
    let (a, b) = layout.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "qattn attention: `{name}` must be contiguous inside the op"
        ))
    })?;
    s.device
        .cuda_stream()
        .clone_dtoh(&data.slice(a..b))
        .map_err(|e| candle_core::Error::Msg(format!("qattn attention: download of `{name}`: {e}")))
}

fn wrap(slice: CudaSlice<f32>, device: &CudaDevice, shape: &Shape) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, device.clone())),
        shape.clone(),
        BackpropOp::none(),
        false,
    )
}

/// The exact forward on the kernels: (out, lse) on the device.
fn exact_on_device(
    ctx: &GpuContext,
    inp: &DeviceInputs,
) -> candle_core::Result<(CudaSlice<f32>, CudaSlice<f32>)> {
    let mut o = ctx.exact_alloc(inp).map_err(to_candle)?;
    ctx.exact_run(inp, &mut o).map_err(to_candle)?;
    Ok(o.into_parts())
}

/// The forward of [`AttentionOp`] on CUDA storage ([`candle_core::CustomOp3::cuda_fwd`]).
pub(super) fn forward(
    op: &AttentionOp,
    inputs: [(&CudaStorage, &Layout); 3],
) -> candle_core::Result<(CudaStorage, Shape)> {
    let cfg = &op.cfg;
    let Dims { b, h, lq, dv, .. } = cfg.dims;
    let out_shape = Shape::from((b, h, lq, dv));
    let device = inputs[0].0.device.clone();
    let path = cfg.forward_path();
    if path == Path::Host {
        let [q, k, v] = [("q", 0), ("k", 1), ("v", 2)].map(|(n, i)| (n, inputs[i]));
        let out = op.host_forward(
            &host_copy(q.1.0, q.1.1, q.0)?,
            &host_copy(k.1.0, k.1.1, k.0)?,
            &host_copy(v.1.0, v.1.1, v.0)?,
        )?;
        let dev_out = device.cuda_stream().clone_htod(&out).map_err(|e| {
            candle_core::Error::Msg(format!("qattn attention: upload of the output: {e}"))
        })?;
        return Ok((CudaStorage::wrap_cuda_slice(dev_out, device), out_shape));
    }
    let shape = cfg.gpu_shape().expect("checked by forward_path");
    let ctx = GpuContext::from_device(&device).map_err(to_candle)?;
    let [q, k, v] =
        [(0, "q"), (1, "k"), (2, "v")].map(|(i, n)| device_copy(inputs[i].0, inputs[i].1, n));
    let inp = DeviceInputs::from_device(&ctx, q?, k?, v?, shape, &cfg.gpu_options())
        .map_err(to_candle)?;
    let (out, lse) = match path {
        Path::Exact => exact_on_device(&ctx, &inp)?,
        Path::Sampling { stratified } => {
            let (shots, _) = mc_kernel_params(&cfg.spec).map_err(to_candle)?;
            let mut o = ctx.mc_alloc(&inp, shots).map_err(to_candle)?;
            ctx.mc_run(&inp, &mut o, stratified, cfg.seed)
                .map_err(to_candle)?;
            let (out, lse, _) = o.into_parts();
            (out, lse)
        }
        Path::Host => unreachable!("handled above"),
    };
    let mut st = op.state()?;
    st.lse = None;
    st.rows = None;
    st.lse_dev = cfg.spec.is_exact().then_some(lse);
    Ok((CudaStorage::wrap_cuda_slice(out, device), out_shape))
}

/// The backward of [`AttentionOp`] on the GPU kernels, when the inputs are on a CUDA device and
/// the gradient is exact attention's (estimator `exact`, or straight-through) at a shape the
/// kernels take; `None` sends the call to the host backward.
pub(super) fn backward(
    op: &AttentionOp,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    res: &Tensor,
    grad_res: &Tensor,
) -> candle_core::Result<Option<Grads>> {
    let cfg = &op.cfg;
    let device = match q.device() {
        candle_core::Device::Cuda(d) => d.clone(),
        _ => return Ok(None),
    };
    let exact_grad = cfg.spec.is_exact() || cfg.grad_mode == GradMode::Exact;
    let Some(shape) = cfg.gpu_shape().filter(|_| exact_grad) else {
        return Ok(None);
    };
    if shape.b * shape.h > 65_535 {
        return Ok(None);
    }
    let ctx = GpuContext::from_device(&device).map_err(to_candle)?;
    let opts = cfg.gpu_options();
    let copy = |t: &Tensor, n: &str| tensor_copy(t, n);
    let saved = if cfg.spec.is_exact() {
        op.state()?.lse_dev.clone()
    } else {
        None
    };
    let (qd, kd, vd) = (copy(q, "q")?, copy(k, "k")?, copy(v, "v")?);
    let (qd, kd, vd, out, lse) = match saved {
        Some(lse) => (qd, kd, vd, copy(res, "out")?, lse),
        None => {
            // Straight-through (or an exact forward that ran on the host): the exact forward,
            // recomputed on the GPU from the same device copies.
            let inp =
                DeviceInputs::from_device(&ctx, qd, kd, vd, shape, &opts).map_err(to_candle)?;
            let (out, lse) = exact_on_device(&ctx, &inp)?;
            let (qd, kd, vd) = inp.into_qkv();
            (qd, kd, vd, out, lse)
        }
    };
    let bw = BwdDevice::from_device(
        &ctx,
        qd,
        kd,
        vd,
        out,
        copy(grad_res, "grad")?,
        lse,
        shape,
        &opts,
    )
    .map_err(to_candle)?;
    let mut g = DeviceGrads::alloc(&ctx, &bw).map_err(to_candle)?;
    exact_backward_run(&ctx, &bw, &mut g).map_err(to_candle)?;
    let (dq, dk, dv) = g.into_parts();
    Ok(Some((
        Some(wrap(dq, &device, q.shape())),
        Some(wrap(dk, &device, k.shape())),
        Some(wrap(dv, &device, v.shape())),
    )))
}
