//! CUDA kernels: exact attention forward (f32, bf16, f16) and the Monte-Carlo sampling forward
//! (`multinomial:S`, `stratified:S`) whose sampled indices equal the CPU path's for the same
//! seed.
//!
//! The kernels live in `cuda/*.cu`, are compiled to PTX by nvcc in `build.rs` (only with the
//! `cuda` feature) and embedded in the library; the driver JIT-compiles each module on its first
//! use on a device. They run on candle's CUDA device and stream ([`GpuContext::from_device`]),
//! through candle's cudarc, which links the CUDA driver and libraries: a build with the feature
//! needs them at run time, and reports [`Error::NoGpu`](crate::Error::NoGpu) when there is no
//! such device. Without the feature, [`GpuContext::new`] returns
//! [`Error::NotCompiledWithCuda`](crate::Error::NotCompiledWithCuda). `attention()` on candle
//! CUDA tensors reaches these kernels through the op's CUDA path (`src/op/cuda.rs`).
//!
//! The API works on host slices in the CPU path's layout (q [B,H,Lq,D], k [B,H,Lk,D],
//! v [B,H,Lk,D], row-major f32; the value dimension equals D):
//! [`GpuContext::exact_forward`] → (out, lse) and [`GpuContext::mc_forward`] → (out, lse,
//! sampled indices). `exact_forward` runs bf16/f16 with D ∈ {32, 64} on the
//! FlashAttention-2-style kernel (`cuda/flash.cu`, 32 query rows per warp) and everything else
//! on `cuda/exact.cu` (f32 tiled; bf16/f16 WMMA, also callable explicitly as
//! `exact_forward_wmma`). With the feature, [`GpuContext::upload`] and friends keep tensors on the
//! device for timing. [`cpu_mc_reference`] returns the CPU path's output and indices for the
//! same inputs, for comparison.
//!
//! Why the indices match: the sampling kernel performs the CPU path's operations in its order
//! (logits as a sequential FMA chain, the same branch-free exp, 64-key block sums in 16 lanes,
//! f64 prefix, one search per target through 16-key sub-blocks, Philox4x32-10 with the
//! counter layout of [`crate::philox`]); `emu.rs` is a host emulation of the kernel's
//! decomposition that the CPU tests check against the CPU estimator bit for bit. Scope: the CPU
//! path computes its logits with gemm's FMA-chain microkernel whenever a 64-query block has
//! ≥ 2 rows, rows × keys > 256 and D ≥ 3; for smaller blocks gemm switches to kernels whose
//! summation order depends on the CPU's SIMD width, and an index can then differ where a
//! target lies within rounding of a CDF boundary.

pub mod backward;
pub(crate) mod emu;
#[cfg(test)]
mod flash_emu;
pub mod noise;

#[cfg(feature = "cuda")]
mod gpu;

/// Runs a module's `gpu_self_check` for its `#[test]`: skips (with a message) when no GPU is
/// usable, prints every check line, and fails when any check failed.
#[cfg(all(test, feature = "cuda"))]
pub(crate) fn assert_self_check_passes(
    check: fn(&GpuContext) -> crate::Result<Vec<backward::CheckLine>>,
) {
    let ctx = match GpuContext::new(0) {
        Ok(c) => c,
        Err(e @ crate::Error::NoGpu { .. }) => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("GPU present but unusable: {e}"),
    };
    let lines = check(&ctx).expect("self-check ran");
    assert!(!lines.is_empty());
    let mut failed = 0;
    for l in &lines {
        let verdict = if l.passed { "PASS" } else { "FAIL" };
        eprintln!("{verdict} {}: {}", l.name, l.detail);
        failed += usize::from(!l.passed);
    }
    assert_eq!(failed, 0, "{failed} of {} checks failed", lines.len());
}
#[cfg(feature = "cuda")]
pub use gpu::{DeviceExact, DeviceInputs, DeviceMc, GpuContext};

use crate::error::{Error, Result};
use crate::spec::{Estimator, EstimatorSpec};
use crate::{AttentionOptions, attention_with_diagnostics};
use candle_core::{Device, Tensor};

/// Element type the exact kernel computes in (inputs are given as f32 and rounded on upload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuDType {
    /// f32 throughout (CUDA cores).
    F32,
    /// bf16 inputs, tensor cores, f32 accumulation.
    BF16,
    /// f16 inputs, tensor cores, f32 accumulation.
    F16,
}

impl GpuDType {
    /// Rounds `x` to this dtype and back to f32 (the values the kernel actually sees).
    pub fn round(self, x: &[f32]) -> Vec<f32> {
        match self {
            GpuDType::F32 => x.to_vec(),
            GpuDType::BF16 => x
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect(),
            GpuDType::F16 => x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
        }
    }

    /// Lower-case name (`f32`, `bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            GpuDType::F32 => "f32",
            GpuDType::BF16 => "bf16",
            GpuDType::F16 => "f16",
        }
    }
}

/// Problem shape: q [b,h,lq,d], k and v [b,h,lk,d].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuShape {
    /// Batch size.
    pub b: usize,
    /// Heads.
    pub h: usize,
    /// Queries per head.
    pub lq: usize,
    /// Keys per head.
    pub lk: usize,
    /// Head dimension (of q, k and v).
    pub d: usize,
}

impl GpuShape {
    /// Checks the slice lengths and the kernels' limits (D ∈ {16, 32, 64} for f32, {32, 64}
    /// for bf16/f16; every count fits in an i32).
    pub fn check(&self, q: usize, k: usize, v: usize, mask: Option<usize>) -> Result<()> {
        let GpuShape { b, h, lq, lk, d } = *self;
        let want = |name: &'static str, got: usize, n: usize, l: usize| {
            if got == n {
                Ok(())
            } else {
                Err(Error::Shape {
                    name,
                    expected: format!("{n} elements (B={b}, H={h}, L={l}, D={d})"),
                    actual: vec![got],
                })
            }
        };
        want("q", q, b * h * lq * d, lq)?;
        want("k", k, b * h * lk * d, lk)?;
        want("v", v, b * h * lk * d, lk)?;
        if let Some(m) = mask {
            want("mask", m, b * lk, lk)?;
        }
        if b == 0 || h == 0 || lq == 0 || lk == 0 {
            return Err(Error::Options(format!(
                "CUDA kernels need B, H, Lq, Lk ≥ 1, got {self:?}"
            )));
        }
        if b >= 1 << 24 {
            return Err(Error::Options(format!(
                "batch size {b} exceeds the sampler's limit of 2^24"
            )));
        }
        let big = [b * h * lq * d, b * h * lk * d];
        if big.iter().any(|&x| x > i32::MAX as usize) || lq * lk == 0 {
            return Err(Error::Options(format!(
                "CUDA kernels: shape {self:?} too large"
            )));
        }
        Ok(())
    }
}

/// Options shared by the kernels.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Logit scale; defaults to 1/√D (as [`AttentionOptions::scale`]).
    pub scale: Option<f64>,
    /// Causal masking (query i sees keys j ≤ i).
    pub causal: bool,
    /// Key mask [B, Lk]; nonzero = keep.
    pub mask: Option<Vec<u8>>,
}

impl GpuOptions {
    /// The scale as the CPU path computes it.
    pub fn scale_for(&self, d: usize) -> f32 {
        self.scale.unwrap_or(1.0 / (d as f64).sqrt()) as f32
    }
}

/// Output of the exact forward pass.
#[derive(Clone, Debug)]
pub struct ExactOutput {
    /// [B,H,Lq,D].
    pub out: Vec<f32>,
    /// Natural log-sum-exp of the scaled logits, [B,H,Lq] (-inf for rows with no visible key).
    pub lse: Vec<f32>,
}

/// Output of the sampling forward pass.
#[derive(Clone, Debug)]
pub struct McOutput {
    /// [B,H,Lq,D].
    pub out: Vec<f32>,
    /// [B,H,Lq].
    pub lse: Vec<f32>,
    /// Sampled key of each shot, [B,H,Lq,S] in shot order (0 for rows with no visible key).
    pub indices: Vec<u32>,
    /// Shots per query S.
    pub shots: usize,
}

/// (shots, stratified) of a spec the sampling kernel supports.
pub fn mc_kernel_params(spec: &EstimatorSpec) -> Result<(usize, bool)> {
    if !spec.noise.is_none() {
        return Err(Error::Options(format!(
            "estimator `{spec}`: the CUDA sampling kernel does not apply measurement noise yet \
             (supported: multinomial:S, stratified:S)"
        )));
    }
    match spec.estimator {
        Estimator::Multinomial { samples } => Ok((samples, false)),
        Estimator::Stratified { samples } => Ok((samples, true)),
        _ => Err(Error::Options(format!(
            "estimator `{spec}` is not supported by the CUDA sampling kernel \
             (supported: multinomial:S, stratified:S)"
        ))),
    }
}

/// The CPU path's result for the same inputs as [`GpuContext::mc_forward`]: its output, and its
/// sampled indices in the same [B,H,Lq,S] layout (0 for rows with no visible key).
pub fn cpu_mc_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: GpuShape,
    opts: &GpuOptions,
    spec: &EstimatorSpec,
    seed: u64,
) -> Result<McOutput> {
    let (n, _) = mc_kernel_params(spec)?;
    shape.check(q.len(), k.len(), v.len(), opts.mask.as_ref().map(Vec::len))?;
    let GpuShape { b, h, lq, lk, d } = shape;
    let dev = Device::Cpu;
    let qt = Tensor::from_slice(q, (b, h, lq, d), &dev)?;
    let kt = Tensor::from_slice(k, (b, h, lk, d), &dev)?;
    let vt = Tensor::from_slice(v, (b, h, lk, d), &dev)?;
    let mask = match &opts.mask {
        Some(m) => {
            let f: Vec<f32> = m.iter().map(|&x| f32::from(u8::from(x != 0))).collect();
            Some(Tensor::from_vec(f, (b, lk), &dev)?)
        }
        None => None,
    };
    let ao = AttentionOptions {
        estimator: *spec,
        seed,
        causal: opts.causal,
        scale: opts.scale,
        mask,
        ..Default::default()
    };
    let (out, diag) = attention_with_diagnostics(&qt, &kt, &vt, &ao)?;
    let out = out.flatten_all()?.to_vec1::<f32>()?;
    let mut indices = vec![0u32; b * h * lq * n];
    for (r, qd) in diag.queries.iter().enumerate() {
        if qd.samples.len() == n {
            indices[r * n..(r + 1) * n].copy_from_slice(&qd.samples);
        }
    }
    let lse = lse_f64(q, k, shape, opts);
    Ok(McOutput {
        out,
        lse,
        indices,
        shots: n,
    })
}

/// The sampling kernel executed on the host, step for step (`emu.rs`): its output, log-sum-exp
/// and indices. Tells a GPU/CPU mismatch in the kernel from one in the logits' arithmetic.
pub fn emulate_mc(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: GpuShape,
    opts: &GpuOptions,
    spec: &EstimatorSpec,
    seed: u64,
) -> Result<McOutput> {
    let (n, stratified) = mc_kernel_params(spec)?;
    shape.check(q.len(), k.len(), v.len(), opts.mask.as_ref().map(Vec::len))?;
    let p = crate::cpu::Problem {
        q,
        k,
        v,
        b: shape.b,
        h: shape.h,
        lq: shape.lq,
        lk: shape.lk,
        d: shape.d,
        dv: shape.d,
        scale: opts.scale_for(shape.d),
        causal: opts.causal,
        mask: opts.mask.as_deref(),
    };
    let e = emu::mc_forward(&p, n, stratified, seed);
    Ok(McOutput {
        out: e.out,
        lse: e.lse,
        indices: e.indices,
        shots: n,
    })
}

/// Log-sum-exp of the scaled, masked logits of every row in f64 (the exact reference for the
/// kernels' `lse` output); -inf for rows with no visible key.
pub fn lse_f64(q: &[f32], k: &[f32], shape: GpuShape, opts: &GpuOptions) -> Vec<f32> {
    let GpuShape { b, h, lq, lk, d } = shape;
    let scale = f64::from(opts.scale_for(d));
    let mut out = vec![f32::NEG_INFINITY; b * h * lq];
    let mut l = vec![0.0f64; lk];
    for bh in 0..b * h {
        let batch = bh / h;
        for i in 0..lq {
            let qi = &q[(bh * lq + i) * d..(bh * lq + i + 1) * d];
            let mut mx = f64::NEG_INFINITY;
            for (j, lj) in l.iter_mut().enumerate() {
                let keep = opts.mask.as_ref().is_none_or(|m| m[batch * lk + j] != 0)
                    && !(opts.causal && j > i);
                *lj = if keep {
                    let kj = &k[(bh * lk + j) * d..(bh * lk + j + 1) * d];
                    scale
                        * qi.iter()
                            .zip(kj)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum::<f64>()
                } else {
                    f64::NEG_INFINITY
                };
                mx = mx.max(*lj);
            }
            if mx > f64::NEG_INFINITY {
                let s: f64 = l.iter().map(|&x| (x - mx).exp()).sum();
                out[bh * lq + i] = (mx + s.ln()) as f32;
            }
        }
    }
    out
}

#[cfg(not(feature = "cuda"))]
mod stub {
    use super::*;

    /// A CUDA device with the kernels loaded. This build has no `cuda` feature: it cannot be
    /// created.
    #[derive(Debug)]
    pub struct GpuContext {
        _never: std::convert::Infallible,
    }

    impl GpuContext {
        /// Always [`Error::NotCompiledWithCuda`] in this build.
        pub fn new(_ordinal: usize) -> Result<Self> {
            Err(Error::NotCompiledWithCuda)
        }

        /// The device's name.
        pub fn device_name(&self) -> &str {
            match self._never {}
        }

        /// Exact attention on the GPU (see the `cuda` feature).
        pub fn exact_forward(
            &self,
            _q: &[f32],
            _k: &[f32],
            _v: &[f32],
            _shape: GpuShape,
            _opts: &GpuOptions,
            _dtype: GpuDType,
        ) -> Result<ExactOutput> {
            match self._never {}
        }

        /// Exact attention with the `cuda/exact.cu` kernels explicitly (see the `cuda`
        /// feature).
        pub fn exact_forward_wmma(
            &self,
            _q: &[f32],
            _k: &[f32],
            _v: &[f32],
            _shape: GpuShape,
            _opts: &GpuOptions,
            _dtype: GpuDType,
        ) -> Result<ExactOutput> {
            match self._never {}
        }

        /// Sampling forward on the GPU (see the `cuda` feature).
        #[allow(clippy::too_many_arguments)]
        pub fn mc_forward(
            &self,
            _q: &[f32],
            _k: &[f32],
            _v: &[f32],
            _shape: GpuShape,
            _opts: &GpuOptions,
            _spec: &EstimatorSpec,
            _seed: u64,
        ) -> Result<McOutput> {
            match self._never {}
        }
    }
}
#[cfg(not(feature = "cuda"))]
pub use stub::GpuContext;
