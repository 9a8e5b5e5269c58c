//! Which attention estimator every layer and head uses, and how their seeds are derived.

use crate::error::{Error, Result};
use qattn_kernels::philox::philox4x32_10;
use qattn_kernels::{EstimatorSpec, GradMode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One head's estimator override.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadOverride {
    /// Encoder layer (0-based).
    pub layer: usize,
    /// Head within the layer (0-based).
    pub head: usize,
    /// The estimator of this head.
    pub estimator: EstimatorSpec,
}

/// The attention configuration of a model: a default estimator, per-layer and per-head
/// overrides, the gradient mode of sampling estimators and the global seed.
///
/// Precedence: a head override beats a layer override beats the default.
///
/// Seeds: every attention call draws from Philox streams keyed by
/// [`AttentionConfig::seed_for`]`(step, layer, head)`, a Philox hash of the global seed and
/// those three numbers; within a call the kernel's counters add (batch row, head, query,
/// shot). So training step `t` is reproducible from the global seed alone, and inference
/// (step 0) of the same batch is deterministic.
///
/// ```
/// use qattn_model::AttentionConfig;
/// let cfg = AttentionConfig::parse("stratified:32")?
///     .with_layer(0, "exact".parse()?)
///     .with_head(5, 3, "cv:4:16".parse()?);
/// assert_eq!(cfg.estimator_for(0, 1).to_string(), "exact");
/// assert_eq!(cfg.estimator_for(5, 3).to_string(), "cv:4:16");
/// assert_eq!(cfg.estimator_for(2, 0).to_string(), "stratified:32");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionConfig {
    /// Estimator of every head without an override.
    #[serde(default = "exact")]
    pub default: EstimatorSpec,
    /// Per-layer overrides (JSON keys are the layer numbers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub layers: BTreeMap<usize, EstimatorSpec>,
    /// Per-head overrides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<HeadOverride>,
    /// Gradient of sampling estimators: `exact` (straight-through) or `sampled`.
    #[serde(default)]
    pub grad_mode: GradMode,
    /// The global seed of every attention draw and dropout mask.
    #[serde(default)]
    pub seed: u64,
}

fn exact() -> EstimatorSpec {
    EstimatorSpec::EXACT
}

impl Default for AttentionConfig {
    fn default() -> Self {
        AttentionConfig {
            default: EstimatorSpec::EXACT,
            layers: BTreeMap::new(),
            heads: Vec::new(),
            grad_mode: GradMode::default(),
            seed: 0,
        }
    }
}

/// Streams of [`AttentionConfig::seed_for`]-style derivations, so attention draws and dropout
/// masks never share Philox keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SeedStream {
    Attention = 1,
    Dropout = 2,
    Init = 3,
}

/// A 64-bit hash of (seed, stream, a, b, c) through Philox4x32-10.
pub(crate) fn derive(seed: u64, stream: SeedStream, a: u64, b: u32, c: u32) -> u64 {
    let key = [seed as u32, (seed >> 32) as u32];
    let ctr = [a as u32, (a >> 32) as u32, b, c ^ ((stream as u32) << 24)];
    let r = philox4x32_10(ctr, key);
    u64::from(r[0]) | (u64::from(r[1]) << 32)
}

impl AttentionConfig {
    /// Every head uses `default`.
    pub fn new(default: EstimatorSpec) -> Self {
        AttentionConfig {
            default,
            ..Default::default()
        }
    }

    /// Every head uses the estimator spec string `spec` (e.g. `"stratified:32+depol:0.01"`).
    pub fn parse(spec: &str) -> Result<Self> {
        let default: EstimatorSpec = spec.parse()?;
        Ok(Self::new(default))
    }

    /// Sets the global seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the gradient mode.
    pub fn with_grad_mode(mut self, mode: GradMode) -> Self {
        self.grad_mode = mode;
        self
    }

    /// Overrides every head of `layer`.
    pub fn with_layer(mut self, layer: usize, spec: EstimatorSpec) -> Self {
        self.layers.insert(layer, spec);
        self
    }

    /// Overrides one head; a later override of the same head replaces an earlier one.
    pub fn with_head(mut self, layer: usize, head: usize, spec: EstimatorSpec) -> Self {
        self.heads.retain(|o| !(o.layer == layer && o.head == head));
        self.heads.push(HeadOverride {
            layer,
            head,
            estimator: spec,
        });
        self
    }

    /// Applies an override written as `L=SPEC` (a whole layer) or `L.H=SPEC` (one head),
    /// e.g. `0=exact` or `3.7=topk:8:16`.
    pub fn apply_override(self, text: &str) -> Result<Self> {
        let (target, spec) = text.split_once('=').ok_or_else(|| {
            Error::Config(format!(
                "attention override {text:?}: expected LAYER=SPEC or LAYER.HEAD=SPEC"
            ))
        })?;
        let spec: EstimatorSpec = spec.trim().parse()?;
        let num = |s: &str, what: &str| {
            s.trim().parse::<usize>().map_err(|_| {
                Error::Config(format!(
                    "attention override {text:?}: {what} {s:?} is not a number"
                ))
            })
        };
        Ok(match target.split_once('.') {
            Some((l, h)) => self.with_head(num(l, "layer")?, num(h, "head")?, spec),
            None => self.with_layer(num(target, "layer")?, spec),
        })
    }

    /// The estimator of (layer, head).
    pub fn estimator_for(&self, layer: usize, head: usize) -> &EstimatorSpec {
        if let Some(o) = self
            .heads
            .iter()
            .rev()
            .find(|o| o.layer == layer && o.head == head)
        {
            return &o.estimator;
        }
        self.layers.get(&layer).unwrap_or(&self.default)
    }

    /// True when every head of every layer is exact.
    pub fn is_exact(&self) -> bool {
        self.default.is_exact()
            && self.layers.values().all(EstimatorSpec::is_exact)
            && self.heads.iter().all(|o| o.estimator.is_exact())
    }

    /// Checks that every override names an existing layer and head.
    pub fn validate(&self, num_layers: usize, num_heads: usize) -> Result<()> {
        if let Some(l) = self.layers.keys().find(|&&l| l >= num_layers) {
            return Err(Error::Config(format!(
                "attention override for layer {l}, but the model has {num_layers} layers (0..{})",
                num_layers.saturating_sub(1)
            )));
        }
        if let Some(o) = self
            .heads
            .iter()
            .find(|o| o.layer >= num_layers || o.head >= num_heads)
        {
            return Err(Error::Config(format!(
                "attention override for layer {} head {}, but the model has {num_layers} layers \
                 of {num_heads} heads",
                o.layer, o.head
            )));
        }
        Ok(())
    }

    /// The heads of `layer` grouped by estimator: one group per distinct estimator, in order
    /// of each group's first head. A layer without head overrides is one group.
    pub fn groups(&self, layer: usize, num_heads: usize) -> Vec<(EstimatorSpec, Vec<usize>)> {
        let mut groups: Vec<(EstimatorSpec, Vec<usize>)> = Vec::new();
        for h in 0..num_heads {
            let spec = self.estimator_for(layer, h);
            match groups.iter_mut().find(|(s, _)| s == spec) {
                Some((_, heads)) => heads.push(h),
                None => groups.push((*spec, vec![h])),
            }
        }
        groups
    }

    /// The Philox key of the attention draws of (step, layer, first head of the call).
    pub fn seed_for(&self, step: u64, layer: usize, head: usize) -> u64 {
        derive(
            self.seed,
            SeedStream::Attention,
            step,
            layer as u32,
            head as u32,
        )
    }

    /// One line per layer: `layer 0: exact` or `layer 3: stratified:32 (heads 0-5), exact (…)`.
    pub fn describe(&self, num_layers: usize, num_heads: usize) -> Vec<String> {
        (0..num_layers)
            .map(|l| {
                let groups = self.groups(l, num_heads);
                if groups.len() == 1 {
                    format!("layer {l}: {}", groups[0].0)
                } else {
                    let parts: Vec<String> = groups
                        .iter()
                        .map(|(s, hs)| {
                            let hs: Vec<String> = hs.iter().map(|h| h.to_string()).collect();
                            format!("{s} (heads {})", hs.join(","))
                        })
                        .collect();
                    format!("layer {l}: {}", parts.join("; "))
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_head_over_layer_over_default() {
        let cfg = AttentionConfig::parse("multinomial:8")
            .unwrap()
            .apply_override("1=exact")
            .unwrap()
            .apply_override("1.2=topk:4:8")
            .unwrap();
        assert_eq!(cfg.estimator_for(0, 2).to_string(), "multinomial:8");
        assert_eq!(cfg.estimator_for(1, 0).to_string(), "exact");
        assert_eq!(cfg.estimator_for(1, 2).to_string(), "topk:4:8");
        let g = cfg.groups(1, 4);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].1, vec![0, 1, 3]);
        assert_eq!(g[1].1, vec![2]);
        assert!(!cfg.is_exact());
        assert!(AttentionConfig::default().is_exact());
    }

    #[test]
    fn validate_names_the_bad_override() {
        let cfg = AttentionConfig::default().with_head(1, 9, EstimatorSpec::EXACT);
        let err = cfg.validate(2, 4).unwrap_err().to_string();
        assert!(err.contains("head 9"), "{err}");
        let cfg = AttentionConfig::default().with_layer(6, EstimatorSpec::EXACT);
        assert!(
            cfg.validate(6, 12)
                .unwrap_err()
                .to_string()
                .contains("layer 6")
        );
        assert!(cfg.validate(7, 12).is_ok());
    }

    #[test]
    fn bad_overrides_are_errors() {
        for bad in ["3", "x=exact", "1.y=exact", "1=stratified:-1"] {
            assert!(
                AttentionConfig::default().apply_override(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn seeds_depend_on_every_coordinate() {
        let cfg = AttentionConfig::default().with_seed(42);
        let base = cfg.seed_for(0, 0, 0);
        assert_eq!(base, cfg.seed_for(0, 0, 0));
        assert_ne!(base, cfg.seed_for(1, 0, 0));
        assert_ne!(base, cfg.seed_for(0, 1, 0));
        assert_ne!(base, cfg.seed_for(0, 0, 1));
        assert_ne!(base, cfg.clone().with_seed(43).seed_for(0, 0, 0));
        assert_ne!(
            derive(42, SeedStream::Attention, 0, 0, 0),
            derive(42, SeedStream::Dropout, 0, 0, 0)
        );
    }

    #[test]
    fn serde_round_trip_uses_spec_strings() {
        let cfg = AttentionConfig::parse("stratified:32+depol:0.01")
            .unwrap()
            .with_layer(0, EstimatorSpec::EXACT)
            .with_head(2, 1, "cv:4:16".parse().unwrap())
            .with_seed(7);
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains("\"stratified:32+depol:0.01\""), "{json}");
        let back: AttentionConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
        let minimal: AttentionConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(minimal, AttentionConfig::default());
    }
}
