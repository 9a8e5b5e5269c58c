//! The named parameter store behind a model: plain tensors for inference, candle `Var`s for
//! training, in both cases under transformers' `BertFor…` names (`bert.*`, `classifier.*`).

use crate::attention::{SeedStream, derive};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Named parameters. Names are canonical: the encoder under `bert.`, task heads at the root.
#[derive(Clone, Debug)]
pub struct Params {
    tensors: BTreeMap<String, Tensor>,
    vars: BTreeMap<String, Var>,
    source: PathBuf,
}

impl Params {
    /// A store of plain tensors.
    pub fn new(tensors: BTreeMap<String, Tensor>, source: PathBuf) -> Self {
        Params {
            tensors,
            vars: BTreeMap::new(),
            source,
        }
    }

    /// Turns every floating-point tensor into a trainable [`Var`].
    pub fn make_trainable(&mut self) -> Result<()> {
        for (name, t) in self.tensors.iter_mut() {
            if t.dtype().is_float() && !self.vars.contains_key(name) {
                let var = Var::from_tensor(t)?;
                *t = var.as_tensor().clone();
                self.vars.insert(name.clone(), var);
            }
        }
        Ok(())
    }

    /// The trainable variables by name (empty unless [`Params::make_trainable`] ran).
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// All tensors by name.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`, checked to have `shape`.
    pub fn get(&self, name: &str, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        let t = self.tensors.get(name).ok_or_else(|| Error::Weights {
            path: self.source.clone(),
            message: format!("tensor {name:?} is missing"),
        })?;
        if t.shape() != &shape {
            return Err(Error::Weights {
                path: self.source.clone(),
                message: format!(
                    "tensor {name:?} has shape {:?}, the configuration needs {:?}",
                    t.dims(),
                    shape.dims()
                ),
            });
        }
        Ok(t.clone())
    }

    /// Inserts `name` if it is absent, initialised as transformers initialises new weights:
    /// `weight` ~ N(0, std²) from a Philox stream of (`seed`, name), `bias` = 0, LayerNorm
    /// weight = 1. Returns true when the tensor was created.
    pub fn init_if_missing(
        &mut self,
        name: &str,
        shape: impl Into<Shape>,
        std: f64,
        seed: u64,
        device: &Device,
    ) -> Result<bool> {
        if self.tensors.contains_key(name) {
            return Ok(false);
        }
        let shape = shape.into();
        let n = shape.elem_count();
        let t = if name.ends_with("LayerNorm.weight") {
            Tensor::ones(shape, DType::F32, device)?
        } else if name.ends_with("bias") {
            Tensor::zeros(shape, DType::F32, device)?
        } else {
            let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            let data = normal_philox(n, std, derive(seed, SeedStream::Init, h, 0, 0));
            Tensor::from_vec(data, shape, device)?
        };
        self.tensors.insert(name.to_string(), t);
        Ok(true)
    }

    /// Where the parameters were loaded from (for error messages).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The number of scalar parameters (floating-point tensors only).
    pub fn count(&self) -> usize {
        self.tensors
            .values()
            .filter(|t| t.dtype().is_float())
            .map(|t| t.elem_count())
            .sum()
    }
}

/// `n` draws of N(0, std²) (Box–Muller on Philox4x32-10 counters 0..).
pub(crate) fn normal_philox(n: usize, std: f64, seed: u64) -> Vec<f32> {
    let key = [seed as u32, (seed >> 32) as u32];
    let mut out = Vec::with_capacity(n + 3);
    let mut ctr = 0u32;
    while out.len() < n {
        let r = qattn_kernels::philox::philox4x32_10([ctr, 0, 0, 0], key);
        ctr = ctr.wrapping_add(1);
        for pair in r.chunks(2) {
            let u1 = qattn_kernels::philox::u32_to_open01(pair[0]);
            let u2 = qattn_kernels::philox::u32_to_open01(pair[1]);
            let rad = (-2.0 * u1.ln()).sqrt();
            let th = 2.0 * std::f64::consts::PI * u2;
            out.push((std * rad * th.cos()) as f32);
            out.push((std * rad * th.sin()) as f32);
        }
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_init_has_the_requested_moments() {
        let x = normal_philox(100_000, 0.02, 9);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 3.0 * 0.02 / n.sqrt() * 2.0, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 0.0005, "std {}", var.sqrt());
        assert_eq!(x, normal_philox(100_000, 0.02, 9));
        assert_ne!(x[..8], normal_philox(8, 0.02, 10)[..]);
    }

    #[test]
    fn get_checks_presence_and_shape() {
        let dev = Device::Cpu;
        let mut p = Params::new(BTreeMap::new(), PathBuf::from("m.safetensors"));
        assert!(
            p.init_if_missing("a.weight", (2, 3), 0.02, 1, &dev)
                .unwrap()
        );
        assert!(
            !p.init_if_missing("a.weight", (2, 3), 0.02, 1, &dev)
                .unwrap()
        );
        p.init_if_missing("a.bias", 2, 0.02, 1, &dev).unwrap();
        assert_eq!(
            p.get("a.bias", 2).unwrap().to_vec1::<f32>().unwrap(),
            [0.0, 0.0]
        );
        let e = p.get("a.weight", (3, 2)).unwrap_err().to_string();
        assert!(e.contains("m.safetensors") && e.contains("[2, 3]"), "{e}");
        let e = p.get("b.weight", 1).unwrap_err().to_string();
        assert!(e.contains("\"b.weight\" is missing"), "{e}");
        assert_eq!(p.count(), 8);
        p.make_trainable().unwrap();
        assert_eq!(p.vars().len(), 2);
    }
}
