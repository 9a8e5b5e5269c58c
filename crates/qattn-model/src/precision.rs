//! Reduced-precision weights for inference: [`Precision`] selects how the encoder's dense
//! layers store their weight matrices.
//!
//! - [`Precision::F32`]: the checkpoint's f32 weights (the default).
//! - [`Precision::F16`]: every encoder dense weight rounded to IEEE half precision and stored
//!   as f16; each matmul widens it back to f32, so activations and accumulation stay f32 and
//!   the only change is the weights' rounding.
//! - [`Precision::Int8`]: every encoder dense weight quantised to ggml's Q8_0 (blocks of 32
//!   weights along the input dimension, one f16 scale per block, int8 values) with candle's
//!   quantiser; each matmul dequantises it to f32 and runs the f32 gemm, so activations stay
//!   f32 (weight-only quantisation). candle's fused Q8_0 matmul (which also quantises the
//!   activations) was measured 2.6× slower than the f32 gemm on BERT-sized batches here, see
//!   docs/precision.md. The input dimension of every quantised layer (`hidden_size`,
//!   `intermediate_size`) must be a multiple of 32.
//!
//! The quantised layers are Q, K, V, the attention output projection, the intermediate and the
//! output dense layer of every encoder layer. Embeddings, LayerNorms, the pooler and task
//! heads stay f32 (they are a small share of the compute). Attention itself (exact or
//! Monte-Carlo) runs in f32 on the f32 projections of whichever precision.
//!
//! Reduced precision is inference-only: a model loaded trainable refuses it, and a training
//! forward pass ([`crate::Mode::train`]) of a reduced-precision model is an error (gradients
//! would not reach the f32 parameters). The f32 originals are kept in [`crate::Params`], so
//! `save_pretrained` of a reduced-precision model writes the f32 checkpoint it was loaded
//! from, and the precision can be switched back with [`crate::Model::set_precision`].

use crate::error::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Storage precision of the encoder's dense-layer weights at inference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 weights (the checkpoint as loaded).
    #[default]
    F32,
    /// f16 weights, widened to f32 inside each matmul.
    F16,
    /// Q8_0 int8 weights (blocks of 32, one f16 scale each), dequantised inside each matmul.
    Int8,
}

impl Precision {
    /// Every precision, in the order of [`Precision::ACCEPTED`].
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Int8];

    /// The accepted spellings, for error messages and help texts.
    pub const ACCEPTED: &'static str = "f32 (fp32, float32), f16 (fp16, float16, half), \
                                        int8 (i8, q8, q8_0)";

    /// Parses `f32`, `f16` or `int8` (case-insensitive; the aliases of
    /// [`Precision::ACCEPTED`] too).
    pub fn parse(s: &str) -> Result<Precision> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            "int8" | "i8" | "q8" | "q8_0" => Ok(Precision::Int8),
            _ => Err(Error::Config(format!(
                "unknown weight precision {s:?}; accepted: {}",
                Precision::ACCEPTED
            ))),
        }
    }

    /// The canonical name: `f32`, `f16` or `int8`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
        }
    }

    /// The number of consecutive input-dimension weights that share a scale (1 when there is
    /// no block structure): every quantised layer's input dimension must be a multiple of it.
    pub fn block_size(self) -> usize {
        match self {
            Precision::F32 | Precision::F16 => 1,
            Precision::Int8 => GgmlDType::Q8_0.block_size(),
        }
    }

    /// Bytes per weight of the stored matrices (Q8_0: 34 bytes per block of 32).
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            Precision::F32 => 4.0,
            Precision::F16 => 2.0,
            Precision::Int8 => 34.0 / 32.0,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Precision::parse(s)
    }
}

/// A dense layer's weight [out, in] in reduced precision.
#[derive(Clone, Debug)]
pub(crate) enum ReducedWeight {
    /// The weight in f16.
    F16(Tensor),
    /// The weight in Q8_0.
    Int8(Arc<QTensor>),
}

impl ReducedWeight {
    /// `weight` [out, in] (f32) in `precision`; `None` for f32. `name` is the layer's
    /// parameter prefix, for errors.
    pub(crate) fn new(weight: &Tensor, precision: Precision, name: &str) -> Result<Option<Self>> {
        let (_, inp) = weight.dims2()?;
        check_block(name, inp, precision)?;
        Ok(match precision {
            Precision::F32 => None,
            Precision::F16 => Some(ReducedWeight::F16(weight.to_dtype(DType::F16)?)),
            Precision::Int8 => {
                let q = QTensor::quantize(&weight.to_dtype(DType::F32)?, GgmlDType::Q8_0)
                    .map_err(|e| Error::Config(format!("quantising {name}.weight to int8: {e}")))?;
                Some(ReducedWeight::Int8(Arc::new(q)))
            }
        })
    }

    /// x [rows, in] (f32) times the weight transposed: [rows, out] (f32).
    pub(crate) fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            ReducedWeight::F16(w) => x.matmul(&w.to_dtype(x.dtype())?.t()?)?,
            ReducedWeight::Int8(q) => {
                let w = q.dequantize(x.device())?.to_dtype(x.dtype())?;
                x.matmul(&w.t()?)?
            }
        })
    }
}

/// Errors unless `input_dim` of layer `name` is a multiple of `precision`'s block size.
pub(crate) fn check_block(name: &str, input_dim: usize, precision: Precision) -> Result<()> {
    let block = precision.block_size();
    if !input_dim.is_multiple_of(block) {
        return Err(Error::Config(format!(
            "precision {precision} stores weights in blocks of {block} along the input \
             dimension, but {name} has input dimension {input_dim} (not a multiple of {block}); \
             use precision f16 or f32 for this model"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn parse_display_serde_round_trip() {
        for p in Precision::ALL {
            assert_eq!(Precision::parse(p.as_str()).unwrap(), p);
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
            assert_eq!(serde_json::from_str::<Precision>(&json).unwrap(), p);
        }
        assert_eq!(Precision::parse(" FP16 ").unwrap(), Precision::F16);
        assert_eq!(Precision::parse("Q8_0").unwrap(), Precision::Int8);
        assert_eq!(Precision::default(), Precision::F32);
        let err = Precision::parse("int4").unwrap_err().to_string();
        assert!(err.contains("\"int4\""), "{err}");
        for name in ["f32", "f16", "int8"] {
            assert!(err.contains(name), "{err}");
        }
        assert!(serde_json::from_str::<Precision>("\"bf16\"").is_err());
    }

    /// The reduced matmuls stay close to f32 on a random matrix, and f16 is exactly the f32
    /// matmul of the f16-rounded weights.
    #[test]
    fn reduced_matmul_close_to_f32() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (48, 64), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 64), &dev).unwrap();
        let exact = x.matmul(&w.t().unwrap()).unwrap();
        let scale = exact
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        for (p, tol) in [(Precision::F16, 2e-3f32), (Precision::Int8, 1e-2)] {
            let r = ReducedWeight::new(&w, p, "layer").unwrap().unwrap();
            let y = r.matmul_t(&x).unwrap();
            assert_eq!(y.dims(), [5, 48]);
            let err = (&y - &exact)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(err <= tol * scale, "{p}: max error {err}, scale {scale}");
            assert!(err > 0.0, "{p}: no rounding at all is implausible");
        }
        assert!(
            ReducedWeight::new(&w, Precision::F32, "layer")
                .unwrap()
                .is_none()
        );
        let odd = Tensor::zeros((8, 40), DType::F32, &dev).unwrap();
        let err = ReducedWeight::new(&odd, Precision::Int8, "bert.x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bert.x") && err.contains("40") && err.contains("32"),
            "{err}"
        );
        assert!(ReducedWeight::new(&odd, Precision::F16, "bert.x").is_ok());
    }
}
