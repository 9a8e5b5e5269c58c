//! # qattn-kernels
//!
//! Exact attention and Monte-Carlo ("quantum measurement") attention estimators on candle
//! tensors. Amplitude-encoding the logits, a_j = exp(l_j/2)/‖a‖, makes the squared amplitudes
//! equal softmax(l); measuring the key register draws j ~ softmax(l). Quantum attention is thus a
//! Monte-Carlo estimate of o = Σ_j p_j v_j from S measured keys. This crate implements that
//! estimate — with several variance-reduction schemes, simulated measurement noise and readout
//! mitigation — reproducibly (Philox4x32-10 counters) and with gradients.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use qattn_kernels::{attention, AttentionOptions, EstimatorSpec};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let q = Tensor::randn(0f32, 1.0, (1, 2, 8, 16), &dev)?;
//! let k = Tensor::randn(0f32, 1.0, (1, 2, 8, 16), &dev)?;
//! let v = Tensor::randn(0f32, 1.0, (1, 2, 8, 16), &dev)?;
//! let exact = attention(&q, &k, &v, &AttentionOptions::default())?;
//! let spec: EstimatorSpec = "stratified:64".parse()?;
//! let opts = AttentionOptions { estimator: spec, seed: 7, ..Default::default() };
//! let mc = attention(&q, &k, &v, &opts)?;
//! assert_eq!(mc.dims(), exact.dims());
//! // Same seed, same draws: bit-identical.
//! let again = attention(&q, &k, &v, &opts)?;
//! assert_eq!(mc.flatten_all()?.to_vec1::<f32>()?, again.flatten_all()?.to_vec1::<f32>()?);
//! # Ok(()) }
//! ```
//!
//! Estimator strings: `exact`, `multinomial:S`, `stratified:S`, `topk:K:S`, `cv:R:S`,
//! `adaptive:MIN:MAX`, with optional noise `+depol:λ`, `+readout:ε01:ε10`, `+damp:γ`,
//! `+mitigate`. The maths is in `docs/estimators.md`.
//!
//! ## Feature flags
//! - `cuda` — the custom CUDA kernels ([`cuda`]: exact attention in f32/bf16/f16 and the
//!   sampling forward, PTX built by nvcc in build.rs, loaded through the driver at run time).
//!   Without it, GPU entry points return [`Error::NotCompiledWithCuda`]; with it but no
//!   driver or device at run time, [`Error::NoGpu`]. The rest of the API is the same either way.

mod cpu;
/// candle's cudarc (one cudarc configuration for candle's CUDA backend and the kernels).
#[cfg(feature = "cuda")]
pub(crate) use candle_core::cuda_backend::cudarc;
pub mod cuda;
pub mod dense;
mod error;
pub mod fused;
pub mod heads;
mod math;
pub mod memory;
pub mod noise;
mod op;
pub mod packed;
pub mod philox;
pub mod reference;
mod spec;
pub mod study;

pub use cpu::mc::QueryDiagnostics;
pub use error::{Error, Result};
pub use op::{AttentionOptions, Diagnostics, attention, attention_with_diagnostics};
pub use spec::{
    Estimator, EstimatorSpec, GradMode, MAX_MITIGATION_AMPLIFICATION,
    MAX_MITIGATION_NORM_PER_QUBIT, Noise,
};
