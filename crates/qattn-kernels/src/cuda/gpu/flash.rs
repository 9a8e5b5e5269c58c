//! Launches of the FlashAttention-2-style exact forward (`cuda/flash.cu`): bf16/f16 inputs,
//! head dimension 32 or 64, key mask and causal masking, f32 output and log-sum-exp — the same
//! contract as [`GpuContext::exact_wmma_run`]. [`GpuContext::exact_run`] dispatches bf16/f16
//! with D ∈ {32, 64} to `flash2_*`; the WMMA kernel stays the fallback for the rest.
//!
//! Two tilings: `flash_*` (16 query rows per warp, 64-query CTAs) and `flash2_*` (32 rows per
//! warp, 128-query CTAs, every K/V fragment reused for two m16 tiles).

use super::{DeviceExact, DeviceInputs, GpuContext, launch_err};
use crate::cuda::{ExactOutput, GpuDType, GpuOptions, GpuShape};
use crate::cudarc::driver::{LaunchConfig, PushKernelArg};
use crate::error::{Error, Result};

/// Warps per CTA (`FL_WARPS` in cuda/flash.cu).
const FLASH_WARPS: usize = 4;

impl GpuContext {
    /// Whether the flash kernels support `dtype` with head dimension `d` (bf16/f16,
    /// D ∈ {32, 64}).
    pub fn flash_supported(dtype: GpuDType, d: usize) -> bool {
        matches!(dtype, GpuDType::BF16 | GpuDType::F16) && matches!(d, 32 | 64)
    }

    /// Queues the flash forward with 16 query rows per warp (asynchronous); the outputs are
    /// those of [`Self::exact_wmma_run`]. An error (no launch) for dtypes/head dimensions it does not
    /// cover.
    pub fn exact_flash_run(&self, inp: &DeviceInputs, o: &mut DeviceExact) -> Result<()> {
        self.flash_launch(inp, o, 1)
    }

    /// As [`Self::exact_flash_run`] with 32 query rows per warp (`flash2_*`); what
    /// [`Self::exact_run`] uses for bf16/f16 with D ∈ {32, 64}.
    pub fn exact_flash2_run(&self, inp: &DeviceInputs, o: &mut DeviceExact) -> Result<()> {
        self.flash_launch(inp, o, 2)
    }

    /// `mt` = m16 tiles per warp: 1 (`flash_*`) or 2 (`flash2_*`).
    fn flash_launch(&self, inp: &DeviceInputs, o: &mut DeviceExact, mt: usize) -> Result<()> {
        let GpuShape { b, h, lq, lk, d } = inp.shape;
        let Some([q, k, v]) = inp
            .half
            .as_ref()
            .filter(|_| Self::flash_supported(inp.dtype, d))
        else {
            return Err(unsupported(inp.dtype, d));
        };
        let prefix = if mt == 2 { "flash2" } else { "flash" };
        let name = format!("{prefix}_{}_d{d}", inp.dtype.name());
        let f = self.function("flash", &name)?;
        let cfg = LaunchConfig {
            grid_dim: (lq.div_ceil(FLASH_WARPS * 16 * mt) as u32, (b * h) as u32, 1),
            block_dim: ((FLASH_WARPS * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (hh, lqi, lki) = (h as i32, lq as i32, lk as i32);
        let causal = i32::from(inp.causal);
        let null = 0u64;
        let mut a = self.stream.launch_builder(&f);
        a.arg(q).arg(k).arg(v);
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
        // SAFETY: argument types and counts match `flash{,2}_{bf16,f16}_d{32,64}` in
        // cuda/flash.cu (q, k, v as 16-bit elements of the uploaded shape, u8 mask [B, Lk] or
        // null, f32 out [B,H,Lq,D] and lse [B,H,Lq] allocated by `exact_alloc` from the same
        // shape); the grid covers Lq with the kernel's 16·mt·4-query tiles.
        unsafe { a.launch(cfg) }.map_err(launch_err(&name))?;
        Ok(())
    }

    /// Exact attention with the flash kernel (16 rows per warp) from host slices (bf16/f16,
    /// D ∈ {32, 64}; other cases are an error — use [`Self::exact_forward`] for them).
    pub fn exact_forward_flash(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: GpuShape,
        opts: &GpuOptions,
        dtype: GpuDType,
    ) -> Result<ExactOutput> {
        self.flash_forward_host(q, k, v, shape, opts, dtype, 1)
    }

    /// As [`Self::exact_forward_flash`] with 32 query rows per warp (`flash2_*`).
    pub fn exact_forward_flash2(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: GpuShape,
        opts: &GpuOptions,
        dtype: GpuDType,
    ) -> Result<ExactOutput> {
        self.flash_forward_host(q, k, v, shape, opts, dtype, 2)
    }

    #[allow(clippy::too_many_arguments)]
    fn flash_forward_host(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: GpuShape,
        opts: &GpuOptions,
        dtype: GpuDType,
        mt: usize,
    ) -> Result<ExactOutput> {
        if !Self::flash_supported(dtype, shape.d) {
            return Err(unsupported(dtype, shape.d));
        }
        let inp = self.upload(q, k, v, shape, opts, dtype)?;
        let mut o = self.exact_alloc(&inp)?;
        self.flash_launch(&inp, &mut o, mt)?;
        self.exact_download(&o)
    }
}

fn unsupported(dtype: GpuDType, d: usize) -> Error {
    Error::Options(format!(
        "CUDA flash kernel: {} with head dimension {d} not supported (bf16/f16, D ∈ {{32, 64}}; \
         use exact_forward/exact_run, which fall back to the WMMA/f32 kernels, for other cases)",
        dtype.name()
    ))
}
