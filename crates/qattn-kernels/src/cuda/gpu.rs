//! The CUDA implementation (feature `cuda`): context, module loading, launches.

use super::{ExactOutput, GpuDType, GpuOptions, GpuShape, McOutput, emu, mc_kernel_params};
use crate::cudarc::driver::sys::CUevent_flags;
use crate::cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};
use crate::error::{Error, Result};
use crate::spec::EstimatorSpec;
use std::sync::Arc;

/// The FlashAttention-2-style bf16/f16 exact forward (`cuda/flash.cu`).
mod flash;

/// The PTX of every `cuda/*.cu`, as (module name, text), compiled by build.rs.
const PTX: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/ptx_index.rs"));

/// Logit scratch of the sampling kernel: at most this many f32 per chunk (1 GiB).
const MC_SCRATCH: usize = 1 << 28;

pub(crate) fn cuda_err(what: impl Into<String>) -> impl FnOnce(DriverError) -> Error {
    let what = what.into();
    move |e| Error::Cuda {
        what,
        reason: e.to_string(),
    }
}

/// A CUDA device with the kernels loaded: candle's device (its context and stream), so the
/// kernels run in order with candle's own work on the same tensors.
pub struct GpuContext {
    device: candle_core::CudaDevice,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    /// Outputs start as NaN (self-checks: an unwritten element shows); otherwise as zeros
    /// (a device memset, no host traffic).
    poison: bool,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("name", &self.name)
            .finish()
    }
}

/// Inputs resident on the device.
pub struct DeviceInputs {
    shape: GpuShape,
    dtype: GpuDType,
    scale: f32,
    causal: bool,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    /// q, k, v as bf16/f16 bits when `dtype` is not f32.
    half: Option<[CudaSlice<u16>; 3]>,
    mask: Option<CudaSlice<u8>>,
}

impl DeviceInputs {
    /// The f32 q, k and v buffers, for reuse (e.g. by a backward pass).
    pub fn into_qkv(self) -> (CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>) {
        (self.q, self.k, self.v)
    }

    /// f32 inputs already on `ctx`'s device in [`GpuShape`]'s layout (e.g. candle tensors'
    /// storage); the mask of `opts` is uploaded.
    pub fn from_device(
        ctx: &GpuContext,
        q: CudaSlice<f32>,
        k: CudaSlice<f32>,
        v: CudaSlice<f32>,
        shape: GpuShape,
        opts: &GpuOptions,
    ) -> Result<Self> {
        shape.check(q.len(), k.len(), v.len(), opts.mask.as_ref().map(Vec::len))?;
        let mask = match &opts.mask {
            Some(m) => Some(
                ctx.stream
                    .clone_htod(m.as_slice())
                    .map_err(cuda_err("upload of mask"))?,
            ),
            None => None,
        };
        Ok(DeviceInputs {
            shape,
            dtype: GpuDType::F32,
            scale: opts.scale_for(shape.d),
            causal: opts.causal,
            q,
            k,
            v,
            half: None,
            mask,
        })
    }
}

/// Device outputs of the exact kernel.
pub struct DeviceExact {
    out: CudaSlice<f32>,
    lse: CudaSlice<f32>,
}

impl DeviceExact {
    /// (out [B,H,Lq,D], lse [B,H,Lq]) on the device.
    pub fn into_parts(self) -> (CudaSlice<f32>, CudaSlice<f32>) {
        (self.out, self.lse)
    }
}

/// Device outputs and scratch of the sampling kernel.
pub struct DeviceMc {
    shots: usize,
    out: CudaSlice<f32>,
    lse: CudaSlice<f32>,
    idx: CudaSlice<u32>,
    scratch: CudaSlice<f32>,
}

impl DeviceMc {
    /// (out [B,H,Lq,D], lse [B,H,Lq], sampled indices [B,H,Lq,S]) on the device.
    pub fn into_parts(self) -> (CudaSlice<f32>, CudaSlice<f32>, CudaSlice<u32>) {
        (self.out, self.lse, self.idx)
    }
}

fn launch_err(name: &str) -> impl FnOnce(DriverError) -> Error + '_ {
    move |e| Error::Cuda {
        what: format!("launch of kernel `{name}`"),
        reason: e.to_string(),
    }
}

impl GpuContext {
    /// Opens device `ordinal` (as candle's `Device::new_cuda`) and loads the kernels.
    /// [`Error::NoGpu`] when there is no such device or it cannot be opened.
    pub fn new(ordinal: usize) -> Result<Self> {
        let count = CudaContext::device_count().map_err(|e| Error::NoGpu {
            reason: format!("cuInit/cuDeviceGetCount failed: {e}"),
        })?;
        if ordinal as i64 >= i64::from(count) {
            return Err(Error::NoGpu {
                reason: format!("device {ordinal} requested, {count} present"),
            });
        }
        let device = candle_core::Device::new_cuda(ordinal)
            .and_then(|d| d.as_cuda_device().cloned())
            .map_err(|e| Error::NoGpu {
                reason: format!("could not open device {ordinal}: {e}"),
            })?;
        let mut ctx = Self::from_device(&device)?;
        ctx.poison = true;
        Ok(ctx)
    }

    /// The kernels on candle's CUDA device `device`: they run on its stream. Cheap: each module
    /// is JIT-compiled once per device, on its first use, and cached by candle's device.
    pub fn from_device(device: &candle_core::CudaDevice) -> Result<Self> {
        let stream = device.cuda_stream();
        let ctx = stream.context().clone();
        let name = ctx.name().unwrap_or_else(|_| "unknown".into());
        Ok(GpuContext {
            device: device.clone(),
            ctx,
            stream,
            name,
            poison: false,
        })
    }

    /// candle's device the kernels run on.
    pub fn device(&self) -> &candle_core::CudaDevice {
        &self.device
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// The driver's CUDA version as (major, minor).
    pub fn driver_version(&self) -> Option<(i32, i32)> {
        let mut v = 0i32;
        // SAFETY: writes one int.
        let r = unsafe { crate::cudarc::driver::sys::cuDriverGetVersion(&mut v) };
        (r == crate::cudarc::driver::sys::CUresult::CUDA_SUCCESS)
            .then_some((v / 1000, (v % 1000) / 10))
    }

    /// The stream all kernels run on.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Kernel `name` of module `module` (a `cuda/<module>.cu`), loaded through candle's module
    /// cache of this device (module key `qattn-<module>`).
    pub(crate) fn function(&self, module: &str, name: &str) -> Result<CudaFunction> {
        let ptx = PTX
            .iter()
            .find(|(n, _)| *n == module)
            .map(|(_, text)| *text)
            .ok_or_else(|| Error::Cuda {
                what: format!("kernel `{name}`"),
                reason: format!("module `{module}` was not built"),
            })?;
        self.device
            .get_or_load_custom_func(name, &format!("qattn-{module}"), ptx)
            .map(|f| f.into_cuda_function())
            .map_err(|e| Error::Cuda {
                what: format!("loading of kernel `{name}` from module `{module}`"),
                reason: e.to_string(),
            })
    }

    /// Waits for all queued work; surfaces asynchronous kernel errors.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("synchronize"))
    }

    /// Copies the inputs to the device (rounded to `dtype` for the half kernels; the sampling
    /// kernel always reads the f32 copies).
    pub fn upload(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: GpuShape,
        opts: &GpuOptions,
        dtype: GpuDType,
    ) -> Result<DeviceInputs> {
        shape.check(q.len(), k.len(), v.len(), opts.mask.as_ref().map(Vec::len))?;
        let s = &self.stream;
        let up = |x: &[f32], n: &str| s.clone_htod(x).map_err(cuda_err(format!("upload of {n}")));
        let half = match dtype {
            GpuDType::F32 => None,
            GpuDType::BF16 | GpuDType::F16 => {
                let bits = |x: &[f32]| -> Vec<u16> {
                    if dtype == GpuDType::BF16 {
                        x.iter()
                            .map(|&a| half::bf16::from_f32(a).to_bits())
                            .collect()
                    } else {
                        x.iter()
                            .map(|&a| half::f16::from_f32(a).to_bits())
                            .collect()
                    }
                };
                let u = |x: &[f32], n: &str| {
                    s.clone_htod(&bits(x))
                        .map_err(cuda_err(format!("upload of {n}")))
                };
                Some([u(q, "q")?, u(k, "k")?, u(v, "v")?])
            }
        };
        let mut inp =
            DeviceInputs::from_device(self, up(q, "q")?, up(k, "k")?, up(v, "v")?, shape, opts)?;
        inp.dtype = dtype;
        inp.half = half;
        Ok(inp)
    }

    /// A device buffer of `n` NaNs for a context from [`Self::new`] (outputs start poisoned, so
    /// an unwritten element shows), of zeros for one from [`Self::from_device`].
    pub(crate) fn poisoned(&self, n: usize) -> Result<CudaSlice<f32>> {
        if self.poison {
            self.stream
                .clone_htod(&vec![f32::NAN; n])
                .map_err(cuda_err("alloc"))
        } else {
            self.stream.alloc_zeros::<f32>(n).map_err(cuda_err("alloc"))
        }
    }

    /// Output buffers for [`Self::exact_run`].
    pub fn exact_alloc(&self, inp: &DeviceInputs) -> Result<DeviceExact> {
        let GpuShape { b, h, lq, d, .. } = inp.shape;
        Ok(DeviceExact {
            out: self.poisoned(b * h * lq * d)?,
            lse: self.poisoned(b * h * lq)?,
        })
    }

    /// Queues the exact forward (asynchronous), choosing the kernel:
    ///
    /// - bf16/f16 with head dimension 32 or 64: the FlashAttention-2-style kernel with 32 query
    ///   rows per warp ([`Self::exact_flash2_run`], `cuda/flash.cu`) — the fastest we measured
    ///   on an H200 at L ≥ 2048 (benchmarks/results/gpu.md);
    /// - everything else: [`Self::exact_wmma_run`] (`cuda/exact.cu`: the tiled f32 kernel on
    ///   CUDA cores; no bf16/f16 case is left for its WMMA kernels today, they are kept as the
    ///   explicit fallback and for the benchmark table).
    ///
    /// All kernels have the same contract: f32 `out` [B,H,Lq,D] and `lse` [B,H,Lq].
    pub fn exact_run(&self, inp: &DeviceInputs, o: &mut DeviceExact) -> Result<()> {
        if Self::flash_supported(inp.dtype, inp.shape.d) && inp.half.is_some() {
            self.exact_flash2_run(inp, o)
        } else {
            self.exact_wmma_run(inp, o)
        }
    }

    /// Queues the `cuda/exact.cu` kernels explicitly (asynchronous): f32 (D ∈ {16, 32, 64})
    /// tiled on CUDA cores, bf16/f16 (D ∈ {32, 64}) with WMMA 16×16×16 tensor-core tiles and
    /// f32 accumulation. [`Self::exact_run`] dispatches bf16/f16 to the faster flash2 kernel;
    /// this entry point keeps the WMMA kernel reachable (and the benchmark table reproducible).
    pub fn exact_wmma_run(&self, inp: &DeviceInputs, o: &mut DeviceExact) -> Result<()> {
        let GpuShape { h, lq, lk, d, b } = inp.shape;
        let (name, block, qtile) = match (inp.dtype, d) {
            (GpuDType::F32, 16 | 32 | 64) => (format!("exact_f32_d{d}"), 64u32, 64usize),
            (GpuDType::BF16, 32 | 64) => (format!("exact_bf16_d{d}"), 128, 64),
            (GpuDType::F16, 32 | 64) => (format!("exact_f16_d{d}"), 128, 64),
            (dt, _) => {
                return Err(Error::Options(format!(
                    "CUDA exact kernel: head dimension {d} not supported in {} \
                     (f32: 16, 32, 64; bf16/f16: 32, 64)",
                    dt.name()
                )));
            }
        };
        let f = self.function("exact", &name)?;
        let cfg = LaunchConfig {
            grid_dim: (lq.div_ceil(qtile) as u32, (b * h) as u32, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        let (hh, lqi, lki) = (h as i32, lq as i32, lk as i32);
        let causal = i32::from(inp.causal);
        let null = 0u64;
        let mut a = self.stream.launch_builder(&f);
        match &inp.half {
            None => {
                a.arg(&inp.q).arg(&inp.k).arg(&inp.v);
            }
            Some([q, k, v]) => {
                a.arg(q).arg(k).arg(v);
            }
        }
        match &inp.mask {
            Some(m) => a.arg(m),
            None => a.arg(&null),
        };
        a.arg(&mut o.out)
            .arg(&mut o.lse)
            .arg(&hh)
            .arg(&lqi)
            .arg(&lki)
            .arg(&inp.scale)
            .arg(&causal);
        // SAFETY: argument types and counts match the kernel's signature in cuda/exact.cu;
        // buffers were sized from the same shape.
        unsafe { a.launch(cfg) }.map_err(launch_err(&name))?;
        Ok(())
    }

    /// Copies exact outputs to the host (synchronises).
    pub fn exact_download(&self, o: &DeviceExact) -> Result<ExactOutput> {
        let s = &self.stream;
        Ok(ExactOutput {
            out: s.clone_dtoh(&o.out).map_err(cuda_err("download of out"))?,
            lse: s.clone_dtoh(&o.lse).map_err(cuda_err("download of lse"))?,
        })
    }

    /// Output and scratch buffers for [`Self::mc_run`] with `shots` draws per query.
    pub fn mc_alloc(&self, inp: &DeviceInputs, shots: usize) -> Result<DeviceMc> {
        let GpuShape { b, h, lq, lk, d } = inp.shape;
        if shots == 0 || shots > 4096 {
            return Err(Error::Options(format!(
                "CUDA sampling kernel: S = {shots} shots per query not supported (1..=4096)"
            )));
        }
        let nblk = lk.div_ceil(emu::BLOCK);
        if nblk * 8 + shots * 4 > 48 * 1024 {
            return Err(Error::Options(format!(
                "CUDA sampling kernel: Lk = {lk} with S = {shots} needs more than 48 KiB of \
                 shared memory per query"
            )));
        }
        let rows = (b * h * lq).min((MC_SCRATCH / lk).max(1));
        let s = &self.stream;
        let a = |n: usize| s.alloc_zeros::<f32>(n).map_err(cuda_err("alloc"));
        Ok(DeviceMc {
            shots,
            out: self.poisoned(b * h * lq * d)?,
            lse: self.poisoned(b * h * lq)?,
            idx: s
                .alloc_zeros::<u32>(b * h * lq * shots)
                .map_err(cuda_err("alloc"))?,
            scratch: a(rows * lk)?,
        })
    }

    /// Queues the sampling forward (asynchronous): `stratified` selects `stratified:S`,
    /// otherwise `multinomial:S`.
    pub fn mc_run(
        &self,
        inp: &DeviceInputs,
        o: &mut DeviceMc,
        stratified: bool,
        seed: u64,
    ) -> Result<()> {
        let GpuShape { b, h, lq, lk, d } = inp.shape;
        let n = o.shots;
        let fl = self.function("mc", "mc_logits")?;
        let fs = self.function("mc", "mc_sample")?;
        let cap = o.scratch.len() / lk;
        // Chunks: whole heads when they fit, else query ranges of one head.
        let (heads_per, q_per) = if lq <= cap {
            ((cap / lq).max(1).min(b * h), lq)
        } else {
            (1, cap.max(1))
        };
        let null = 0u64;
        let (hh, lqi, lki, di) = (h as i32, lq as i32, lk as i32, d as i32);
        let causal = i32::from(inp.causal);
        let (ni, strat) = (n as i32, i32::from(stratified));
        let mut bh0 = 0usize;
        while bh0 < b * h {
            let nbh = heads_per.min(b * h - bh0);
            let mut i0 = 0usize;
            while i0 < lq {
                let nq = q_per.min(lq - i0);
                let (bh0i, i0i, nqi) = (bh0 as i32, i0 as i32, nq as i32);
                let cfg = LaunchConfig {
                    grid_dim: (lk.div_ceil(64) as u32, nq.div_ceil(64) as u32, nbh as u32),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut a = self.stream.launch_builder(&fl);
                a.arg(&inp.q).arg(&inp.k);
                match &inp.mask {
                    Some(m) => a.arg(m),
                    None => a.arg(&null),
                };
                a.arg(&mut o.scratch)
                    .arg(&hh)
                    .arg(&lqi)
                    .arg(&lki)
                    .arg(&di)
                    .arg(&inp.scale)
                    .arg(&causal)
                    .arg(&bh0i)
                    .arg(&i0i)
                    .arg(&nqi);
                // SAFETY: matches `mc_logits` in cuda/mc.rs; the scratch holds nbh·nq rows of Lk.
                unsafe { a.launch(cfg) }.map_err(launch_err("mc_logits"))?;
                let nblk = lk.div_ceil(emu::BLOCK);
                let cfg = LaunchConfig {
                    grid_dim: ((nbh * nq) as u32, 1, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: (nblk * 8 + n * 4) as u32,
                };
                let mut a = self.stream.launch_builder(&fs);
                a.arg(&mut o.scratch)
                    .arg(&inp.v)
                    .arg(&hh)
                    .arg(&lqi)
                    .arg(&lki)
                    .arg(&di)
                    .arg(&causal)
                    .arg(&bh0i)
                    .arg(&i0i)
                    .arg(&nqi)
                    .arg(&ni)
                    .arg(&strat)
                    .arg(&seed)
                    .arg(&mut o.out)
                    .arg(&mut o.lse)
                    .arg(&mut o.idx);
                // SAFETY: matches `mc_sample` in cuda/mc.cu; outputs sized B·H·Lq(·D|·S).
                unsafe { a.launch(cfg) }.map_err(launch_err("mc_sample"))?;
                i0 += nq;
            }
            bh0 += nbh;
        }
        Ok(())
    }

    /// Copies sampling outputs to the host (synchronises).
    pub fn mc_download(&self, o: &DeviceMc) -> Result<McOutput> {
        let s = &self.stream;
        Ok(McOutput {
            out: s.clone_dtoh(&o.out).map_err(cuda_err("download of out"))?,
            lse: s.clone_dtoh(&o.lse).map_err(cuda_err("download of lse"))?,
            indices: s
                .clone_dtoh(&o.idx)
                .map_err(cuda_err("download of indices"))?,
            shots: o.shots,
        })
    }

    /// Times `f` with CUDA events: `warmup` untimed calls, then `reps` timed ones; returns the
    /// milliseconds of each timed call.
    pub fn time_ms(
        &self,
        warmup: usize,
        reps: usize,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<Vec<f32>> {
        for _ in 0..warmup {
            f()?;
        }
        self.synchronize()?;
        let ev = || {
            self.ctx
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cuda_err("event"))
        };
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let (a, b) = (ev()?, ev()?);
            a.record(&self.stream).map_err(cuda_err("event record"))?;
            f()?;
            b.record(&self.stream).map_err(cuda_err("event record"))?;
            times.push(a.elapsed_ms(&b).map_err(cuda_err("event elapsed"))?);
        }
        Ok(times)
    }

    /// Exact attention on the GPU from host slices, with the kernel [`Self::exact_run`]
    /// chooses (bf16/f16 with D ∈ {32, 64}: flash2; otherwise `cuda/exact.cu`).
    pub fn exact_forward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: GpuShape,
        opts: &GpuOptions,
        dtype: GpuDType,
    ) -> Result<ExactOutput> {
        let inp = self.upload(q, k, v, shape, opts, dtype)?;
        let mut o = self.exact_alloc(&inp)?;
        self.exact_run(&inp, &mut o)?;
        self.exact_download(&o)
    }

    /// Exact attention from host slices with the `cuda/exact.cu` kernels explicitly
    /// ([`Self::exact_wmma_run`]: f32 tiled, bf16/f16 WMMA), whatever [`Self::exact_run`]
    /// would choose.
    pub fn exact_forward_wmma(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: GpuShape,
        opts: &GpuOptions,
        dtype: GpuDType,
    ) -> Result<ExactOutput> {
        let inp = self.upload(q, k, v, shape, opts, dtype)?;
        let mut o = self.exact_alloc(&inp)?;
        self.exact_wmma_run(&inp, &mut o)?;
        self.exact_download(&o)
    }

    /// The sampling forward (`multinomial:S` or `stratified:S`, no noise) on the GPU from host
    /// slices; the same seed gives the CPU path's indices.
    #[allow(clippy::too_many_arguments)]
    pub fn mc_forward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: GpuShape,
        opts: &GpuOptions,
        spec: &EstimatorSpec,
        seed: u64,
    ) -> Result<McOutput> {
        let (n, stratified) = mc_kernel_params(spec)?;
        let inp = self.upload(q, k, v, shape, opts, GpuDType::F32)?;
        let mut o = self.mc_alloc(&inp, n)?;
        self.mc_run(&inp, &mut o, stratified, seed)?;
        self.mc_download(&o)
    }
}
