//! AdamW with parameter groups, decoupled weight decay and per-group gradient clipping.
//!
//! ## Parameter groups
//! | group | parameters |
//! |---|---|
//! | `attention` | the query, key and value projections of every layer (`*.attention.self.{query,key,value}.*`): the maps that produce the logits that are amplitude-encoded and measured, and the values that are averaged |
//! | `head` | the task head (`classifier.*`) and the pooler (`bert.pooler.*`) |
//! | `backbone` | everything else: embeddings, attention output projections, feed-forward layers, LayerNorms |
//!
//! The document qattn grew from spoke of "separate learning rates for quantum vs classical
//! parameters". There are no quantum parameters: the simulated measurement has none. The
//! closest honest reading is the `attention` group above — the projections whose outputs
//! the measurement samples from — and that is what its learning rate and clip norm apply to.
//!
//! Biases and LayerNorm weights get no weight decay (as in transformers' Trainer).

use crate::error::{Error, Result};
use candle_core::{Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A parameter group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// Embeddings, output projections, feed-forward layers, LayerNorms.
    Backbone,
    /// Query/key/value projections.
    Attention,
    /// Classifier and pooler.
    Head,
}

impl Group {
    /// All groups in order.
    pub const ALL: [Group; 3] = [Group::Backbone, Group::Attention, Group::Head];

    /// The group of a canonical parameter name.
    pub fn of(name: &str) -> Group {
        if name.starts_with("classifier.") || name.starts_with("bert.pooler.") {
            Group::Head
        } else if name.contains(".attention.self.") {
            Group::Attention
        } else {
            Group::Backbone
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Group::Backbone => "backbone",
            Group::Attention => "attention",
            Group::Head => "head",
        }
    }
}

/// Whether weight decay applies to a parameter: not to biases and LayerNorm weights.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm"))
}

/// Per-group hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupConfig {
    /// Base learning rate (the schedule multiplies it).
    pub lr: f64,
    /// Clip the group's gradient to this global L2 norm (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Decoupled weight decay of the group's decaying parameters.
    pub weight_decay: f64,
}

/// Elements per parallel task of the update (and of the gradient norm's partial sums).
const CHUNK: usize = 1 << 16;

/// Σ x² in f64, as fixed-size chunks whose partial sums are added in chunk order: the same
/// value for any number of threads.
fn sum_of_squares(g: &[f32]) -> f64 {
    g.par_chunks(CHUNK)
        .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
        .collect::<Vec<f64>>()
        .into_iter()
        .sum()
}

/// AdamW hyperparameters shared by all groups.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε (added to √v̂).
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    group: Group,
    decay: bool,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// What one optimiser step did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepReport {
    /// Global L2 norm of each group's gradient before clipping.
    pub grad_norms: BTreeMap<Group, f64>,
    /// The learning rate each group used.
    pub lrs: BTreeMap<Group, f64>,
}

/// AdamW (Loshchilov & Hutter) with bias correction, matching `torch.optim.AdamW`:
/// p ← p·(1 − lr·wd); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
/// p ← p − (lr/(1−β₁ᵗ)) · m / (√v/√(1−β₂ᵗ) + ε).
pub struct AdamW {
    slots: Vec<Slot>,
    adam: AdamConfig,
    groups: BTreeMap<Group, GroupConfig>,
    steps: u64,
}

impl AdamW {
    /// An optimiser over `vars` (canonical names) with one config per group.
    pub fn new(
        vars: &BTreeMap<String, Var>,
        adam: AdamConfig,
        groups: BTreeMap<Group, GroupConfig>,
    ) -> Result<Self> {
        for g in Group::ALL {
            if !groups.contains_key(&g) {
                return Err(Error::Args(format!("no settings for group {}", g.name())));
            }
        }
        let slots = vars
            .iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                Slot {
                    name: name.clone(),
                    var: var.clone(),
                    group: Group::of(name),
                    decay: decays(name),
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            })
            .collect();
        Ok(AdamW {
            slots,
            adam,
            groups,
            steps: 0,
        })
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Parameter names and their groups.
    pub fn param_groups(&self) -> Vec<(String, Group)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.group))
            .collect()
    }

    /// The number of scalar parameters per group.
    pub fn group_sizes(&self) -> BTreeMap<Group, usize> {
        let mut out = BTreeMap::new();
        for s in &self.slots {
            *out.entry(s.group).or_insert(0) += s.m.len();
        }
        out
    }

    /// One update from `grads` (flattened f32 gradients in the order of the parameters,
    /// see [`AdamW::param_groups`]), with the schedule multiplier `lr_factor`. Clips each
    /// group's gradient in place first. Non-finite gradients are an error (nothing is updated).
    pub fn step(&mut self, grads: &mut [Vec<f32>], lr_factor: f64) -> Result<StepReport> {
        if grads.len() != self.slots.len() {
            return Err(Error::Training(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            )));
        }
        let mut report = StepReport::default();
        let mut sq: BTreeMap<Group, f64> = BTreeMap::new();
        for (slot, g) in self.slots.iter().zip(grads.iter()) {
            *sq.entry(slot.group).or_insert(0.0) += sum_of_squares(g);
        }
        for (&group, &s) in &sq {
            let norm = s.sqrt();
            if !norm.is_finite() {
                return Err(Error::Training(format!(
                    "non-finite gradient in group {} (norm {norm}); the step was skipped",
                    group.name()
                )));
            }
            report.grad_norms.insert(group, norm);
        }
        // Clip (torch.nn.utils.clip_grad_norm_: coefficient max/(norm + 1e-6), capped at 1).
        for (slot, g) in self.slots.iter().zip(grads.iter_mut()) {
            let cfg = self.groups[&slot.group];
            if let Some(max) = cfg.max_grad_norm {
                let coef = max / (report.grad_norms[&slot.group] + 1e-6);
                if coef < 1.0 {
                    let c = coef as f32;
                    g.par_chunks_mut(CHUNK)
                        .for_each(|g| g.iter_mut().for_each(|x| *x *= c));
                }
            }
        }
        self.steps += 1;
        let t = self.steps as i32;
        let AdamConfig { beta1, beta2, eps } = self.adam;
        let bc1 = 1.0 - beta1.powi(t);
        let bc2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        for (slot, g) in self.slots.iter_mut().zip(grads.iter()) {
            let cfg = self.groups[&slot.group];
            let lr = cfg.lr * lr_factor;
            report.lrs.insert(slot.group, lr);
            let shape = slot.var.shape().clone();
            let dtype = slot.var.dtype();
            let mut p = slot
                .var
                .as_tensor()
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let decay = if slot.decay {
                (1.0 - lr * cfg.weight_decay) as f32
            } else {
                1.0
            };
            let (b1, b2) = (beta1 as f32, beta2 as f32);
            let step_size = (lr / bc1) as f32;
            let (bc2s, eps) = (bc2_sqrt as f32, eps as f32);
            // Element-wise, so splitting it over threads cannot change the result.
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(slot.m.par_chunks_mut(CHUNK))
                .zip(slot.v.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| {
                    for i in 0..p.len() {
                        let gi = g[i];
                        let mi = b1 * m[i] + (1.0 - b1) * gi;
                        let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
                        m[i] = mi;
                        v[i] = vi;
                        p[i] = p[i] * decay - step_size * mi / (vi.sqrt() / bc2s + eps);
                    }
                });
            let new = Tensor::from_vec(p, shape, slot.var.device())?.to_dtype(dtype)?;
            slot.var.set(&new)?;
        }
        Ok(report)
    }

    /// The moments as named tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`) plus `step`, for
    /// checkpoints.
    pub fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        let dev = candle_core::Device::Cpu;
        for s in &self.slots {
            let shape = s.var.shape().clone();
            out.insert(
                format!("exp_avg.{}", s.name),
                Tensor::from_slice(&s.m, shape.clone(), &dev)?,
            );
            out.insert(
                format!("exp_avg_sq.{}", s.name),
                Tensor::from_slice(&s.v, shape, &dev)?,
            );
        }
        out.insert(
            "step".into(),
            Tensor::from_slice(&[self.steps as f32], 1, &dev)?,
        );
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::state`]; every parameter must be present with its
    /// shape.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let get = |key: &str, n: usize| -> Result<Vec<f32>> {
            let t = state
                .get(key)
                .ok_or_else(|| Error::Training(format!("optimizer state has no tensor {key:?}")))?;
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            if v.len() != n {
                return Err(Error::Training(format!(
                    "optimizer state {key:?} has {} values, the parameter {n}",
                    v.len()
                )));
            }
            Ok(v)
        };
        for s in &mut self.slots {
            let n = s.m.len();
            s.m = get(&format!("exp_avg.{}", s.name), n)?;
            s.v = get(&format!("exp_avg_sq.{}", s.name), n)?;
        }
        self.steps = get("step", 1)?[0] as u64;
        Ok(())
    }

    /// Every parameter's first moments, then every parameter's second moments, each in
    /// parameter order: what a data-parallel run sends from rank 0 to the other ranks.
    pub fn moments(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(2 * self.slots.iter().map(|s| s.m.len()).sum::<usize>());
        for s in &self.slots {
            out.extend_from_slice(&s.m);
        }
        for s in &self.slots {
            out.extend_from_slice(&s.v);
        }
        out
    }

    /// Restores moments laid out as by [`AdamW::moments`] and the step count.
    pub fn set_moments(&mut self, flat: &[f32], steps: u64) -> Result<()> {
        let n: usize = self.slots.iter().map(|s| s.m.len()).sum();
        if flat.len() != 2 * n {
            return Err(Error::Training(format!(
                "optimizer moments have {} values, the parameters need {}",
                flat.len(),
                2 * n
            )));
        }
        let (ms, vs) = flat.split_at(n);
        let mut at = 0;
        for s in &mut self.slots {
            let len = s.m.len();
            s.m.copy_from_slice(&ms[at..at + len]);
            s.v.copy_from_slice(&vs[at..at + len]);
            at += len;
        }
        self.steps = steps;
        Ok(())
    }

    /// The variables in parameter order.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.slots.iter().map(|s| &s.var)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn groups(lr: f64, clip: Option<f64>, wd: f64) -> BTreeMap<Group, GroupConfig> {
        Group::ALL
            .iter()
            .map(|&g| {
                (
                    g,
                    GroupConfig {
                        lr,
                        max_grad_norm: clip,
                        weight_decay: wd,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn groups_and_decay_rules() {
        assert_eq!(
            Group::of("bert.encoder.layer.3.attention.self.query.weight"),
            Group::Attention
        );
        assert_eq!(
            Group::of("bert.encoder.layer.3.attention.output.dense.weight"),
            Group::Backbone
        );
        assert_eq!(Group::of("classifier.weight"), Group::Head);
        assert_eq!(Group::of("bert.pooler.dense.bias"), Group::Head);
        assert_eq!(
            Group::of("bert.embeddings.word_embeddings.weight"),
            Group::Backbone
        );
        assert!(decays("bert.encoder.layer.0.output.dense.weight"));
        assert!(!decays("bert.encoder.layer.0.output.dense.bias"));
        assert!(!decays("bert.embeddings.LayerNorm.weight"));
    }

    /// Two AdamW steps against a hand computation in f64.
    #[test]
    fn adamw_matches_hand_computation() {
        let dev = Device::Cpu;
        let w0 = [0.5f32, -1.0, 2.0];
        let b0 = [0.1f32];
        let mut vars = BTreeMap::new();
        vars.insert(
            "bert.encoder.layer.0.output.dense.weight".to_string(),
            Var::from_slice(&w0, 3, &dev).unwrap(),
        );
        vars.insert(
            "bert.encoder.layer.0.output.dense.bias".to_string(),
            Var::from_slice(&b0, 1, &dev).unwrap(),
        );
        let (lr, wd) = (0.1, 0.01);
        let adam = AdamConfig::default();
        let mut opt = AdamW::new(&vars, adam, groups(lr, None, wd)).unwrap();
        // Parameter order is the BTreeMap order: bias, then weight.
        let g1 = [vec![0.3f32], vec![0.2f32, -0.4, 1.0]];
        let g2 = [vec![-0.1f32], vec![0.1f32, 0.1, -0.5]];
        opt.step(&mut g1.clone(), 1.0).unwrap();
        opt.step(&mut g2.clone(), 0.5).unwrap();
        let hand = |p0: &[f32], gs: [&[f32]; 2], decay: bool| -> Vec<f64> {
            let mut p: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
            let mut m = vec![0.0; p.len()];
            let mut v = vec![0.0; p.len()];
            for (t, (g, f)) in gs.iter().zip([1.0, 0.5]).enumerate() {
                let t = t as i32 + 1;
                let lr_t = lr * f;
                for i in 0..p.len() {
                    let gi = f64::from(g[i]);
                    if decay {
                        p[i] *= 1.0 - lr_t * wd;
                    }
                    m[i] = 0.9 * m[i] + 0.1 * gi;
                    v[i] = 0.999 * v[i] + 0.001 * gi * gi;
                    let mh = m[i] / (1.0 - 0.9f64.powi(t));
                    let vh = v[i] / (1.0 - 0.999f64.powi(t));
                    p[i] -= lr_t * mh / (vh.sqrt() + 1e-8);
                }
            }
            p
        };
        let want_w = hand(&w0, [&g1[1], &g2[1]], true);
        let want_b = hand(&b0, [&g1[0], &g2[0]], false);
        let got_w = vars["bert.encoder.layer.0.output.dense.weight"]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        let got_b = vars["bert.encoder.layer.0.output.dense.bias"]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        for (g, w) in got_w.iter().zip(&want_w).chain(got_b.iter().zip(&want_b)) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{g} vs {w}");
        }
        // The bias did not decay: with wd the weight moved differently than without.
        assert_eq!(opt.steps(), 2);
    }

    #[test]
    fn clipping_is_per_group_and_reports_the_pre_clip_norm() {
        let dev = Device::Cpu;
        let mut vars = BTreeMap::new();
        vars.insert(
            "classifier.weight".to_string(),
            Var::from_slice(&[0f32; 2], 2, &dev).unwrap(),
        );
        vars.insert(
            "bert.encoder.layer.0.attention.self.key.weight".to_string(),
            Var::from_slice(&[0f32; 2], 2, &dev).unwrap(),
        );
        let mut cfg = groups(1.0, Some(1.0), 0.0);
        cfg.get_mut(&Group::Head).unwrap().max_grad_norm = None;
        let mut opt = AdamW::new(&vars, AdamConfig::default(), cfg).unwrap();
        // Order: attention key weight, then classifier.
        let mut grads = vec![vec![3.0f32, 4.0], vec![30.0f32, 40.0]];
        let r = opt.step(&mut grads, 1.0).unwrap();
        assert!((r.grad_norms[&Group::Attention] - 5.0).abs() < 1e-9);
        assert!((r.grad_norms[&Group::Head] - 50.0).abs() < 1e-9);
        let clipped: f32 = grads[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((clipped - 1.0).abs() < 1e-5, "{clipped}");
        assert_eq!(grads[1], vec![30.0, 40.0], "head group is not clipped");
        let mut bad = vec![vec![f32::NAN, 0.0], vec![0.0, 0.0]];
        assert!(opt.step(&mut bad, 1.0).is_err());
    }

    #[test]
    fn state_round_trip() {
        let dev = Device::Cpu;
        let mut vars = BTreeMap::new();
        vars.insert(
            "classifier.weight".to_string(),
            Var::from_slice(&[1f32, 2.0], 2, &dev).unwrap(),
        );
        let mut a = AdamW::new(&vars, AdamConfig::default(), groups(0.1, None, 0.0)).unwrap();
        a.step(&mut [vec![0.5, -0.5]], 1.0).unwrap();
        let st = a.state().unwrap();
        let mut b = AdamW::new(&vars, AdamConfig::default(), groups(0.1, None, 0.0)).unwrap();
        b.load_state(&st).unwrap();
        assert_eq!(b.steps(), 1);
        assert_eq!(b.slots[0].m, a.slots[0].m);
        assert_eq!(b.slots[0].v, a.slots[0].v);
        let mut missing = st.clone();
        missing.remove("exp_avg.classifier.weight");
        assert!(b.load_state(&missing).is_err());
    }
}
