//! Fine-tuning recipes: the TOML files `qattn glue run --config FILE` reads
//! (`benchmarks/recipes/TASK.toml`).
//!
//! ```toml
//! description = "why these values"      # free text, not used by the runner
//! task = "rte"                          # optional: must agree with --task when both are given
//! model = "sentence-transformers/all-MiniLM-L6-v2"
//! attention = "exact"
//! seeds = [1, 2, 3, 4, 5]
//! epochs = 3
//! max_steps = 500                       # overrides epochs
//! lr = 3e-5
//! batch_size = 32
//! max_len = 128
//! pooling = "mean"                      # what the head reads: cls (the pooler) or mean
//! train_limit = 1000                    # a seeded subset (state it when reporting)
//! eval_limit = 500
//!
//! [training]                            # any TrainingArgs field, as `--set KEY=VALUE`
//! warmup_ratio = 0.1
//! weight_decay = 0.01
//! ```
//!
//! Every key is optional; unknown keys are errors (a misspelt key must not be ignored
//! silently). Precedence: a command-line flag wins over the recipe, which wins over the
//! command's default; `--set` is applied after the recipe's `[training]` table.

use crate::error::{Error, Result};
use qattn_train::TrainingArgs;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A fine-tuning recipe (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Why these values (documentation only).
    pub description: Option<String>,
    /// The task the recipe was made for.
    pub task: Option<String>,
    /// Hub id or directory of the pretrained model.
    pub model: Option<String>,
    /// Attention estimator spec.
    pub attention: Option<String>,
    /// One fine-tuning run per seed.
    pub seeds: Option<Vec<u64>>,
    /// Epochs.
    pub epochs: Option<u64>,
    /// Optimiser steps (overrides epochs).
    pub max_steps: Option<u64>,
    /// Peak learning rate.
    pub lr: Option<f64>,
    /// Examples per batch.
    pub batch_size: Option<usize>,
    /// Truncate inputs to this many tokens.
    pub max_len: Option<usize>,
    /// What the task head reads: `cls` (the pooler) or `mean` (masked mean of the last
    /// hidden states); see [`qattn_model::Pooling`].
    pub pooling: Option<qattn_model::Pooling>,
    /// Train on a seeded subset of this many examples.
    pub train_limit: Option<usize>,
    /// Score only the first N dev examples.
    pub eval_limit: Option<usize>,
    /// Further TrainingArgs fields, applied as `--set KEY=VALUE` in key order.
    #[serde(default)]
    pub training: toml::Table,
    /// The file it was read from (set by [`Recipe::read`]).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Recipe {
    /// Parses recipe text; `source` names the file in errors.
    pub fn parse(text: &str, source: &Path) -> Result<Self> {
        let mut r: Recipe = toml::from_str(text)
            .map_err(|e| Error::Invalid(format!("recipe {}: {e}", source.display())))?;
        r.source = Some(source.to_path_buf());
        r.validate()?;
        Ok(r)
    }

    /// Reads and checks a recipe file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    fn name(&self) -> String {
        self.source
            .as_ref()
            .map_or("<recipe>".to_string(), |p| p.display().to_string())
    }

    /// Checks the values that can be checked without the task: positive sizes, a finite
    /// positive learning rate, at least one seed, and `[training]` keys that TrainingArgs
    /// accepts.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("recipe {}: {m}", self.name())));
        if let Some(lr) = self.lr
            && !(lr.is_finite() && lr > 0.0)
        {
            return bad(format!("lr = {lr} must be a positive number"));
        }
        for (k, v) in [
            ("batch_size", self.batch_size),
            ("max_len", self.max_len),
            ("train_limit", self.train_limit),
            ("eval_limit", self.eval_limit),
        ] {
            if v == Some(0) {
                return bad(format!("{k} must be ≥ 1"));
            }
        }
        if self.epochs == Some(0) || self.max_steps == Some(0) {
            return bad("epochs and max_steps must be ≥ 1".into());
        }
        if self.seeds.as_ref().is_some_and(|s| s.is_empty()) {
            return bad("seeds must list at least one seed".into());
        }
        self.apply_training(&mut TrainingArgs::default())
    }

    /// Applies the `[training]` table to `args` (key order), as `--set KEY=VALUE` would.
    pub fn apply_training(&self, args: &mut TrainingArgs) -> Result<()> {
        for (k, v) in &self.training {
            args.set(&format!("{k}={v}")).map_err(|e| {
                Error::Invalid(format!("recipe {}: [training] {k}: {e}", self.name()))
            })?;
        }
        Ok(())
    }

    /// The task: `flag` when given (and then it must agree with the recipe's), else the
    /// recipe's; an error naming both when neither is set.
    pub fn task_or(&self, flag: Option<&str>) -> Result<String> {
        match (flag, self.task.as_deref()) {
            (Some(f), Some(r)) if !f.eq_ignore_ascii_case(r) => Err(Error::Invalid(format!(
                "--task {f}, but the recipe {} is for task {r}",
                self.name()
            ))),
            (Some(f), _) => Ok(f.to_string()),
            (None, Some(r)) => Ok(r.to_string()),
            (None, None) => Err(Error::Invalid(
                "no task: give --task or `task` in the --config recipe".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_recipe_parses_and_applies_its_training_table() {
        let r = Recipe::parse(
            r#"
description = "test"
task = "rte"
model = "m"
seeds = [1, 2]
epochs = 4
lr = 3e-5
batch_size = 16
max_len = 96
pooling = "mean"
[training]
warmup_ratio = 0.06
weight_decay = 0.0
lr_scheduler_type = "linear"
"#,
            Path::new("rte.toml"),
        )
        .unwrap();
        assert_eq!(r.task.as_deref(), Some("rte"));
        assert_eq!(r.seeds, Some(vec![1, 2]));
        assert_eq!(r.lr, Some(3e-5));
        assert_eq!(r.pooling, Some(qattn_model::Pooling::Mean));
        let mut args = TrainingArgs::default();
        r.apply_training(&mut args).unwrap();
        assert_eq!(args.warmup_ratio, 0.06);
        assert_eq!(args.weight_decay, 0.0);
        assert_eq!(r.task_or(None).unwrap(), "rte");
        assert_eq!(r.task_or(Some("RTE")).unwrap(), "RTE");
        let e = r.task_or(Some("cola")).unwrap_err().to_string();
        assert!(e.contains("rte.toml") && e.contains("cola"), "{e}");
        assert!(
            Recipe::default()
                .task_or(None)
                .unwrap_err()
                .to_string()
                .contains("--task")
        );
    }

    #[test]
    fn bad_recipes_name_the_file_and_the_key() {
        let cases = [
            ("lrr = 1e-5", "lrr"),
            ("lr = -1.0", "lr"),
            ("pooling = \"max\"", "pooling"),
            ("batch_size = 0", "batch_size"),
            ("seeds = []", "seeds"),
            ("epochs = 0", "epochs"),
            ("[training]\nno_such_field = 3", "no_such_field"),
            ("[training]\nwarmup_ratio = \"x\"", "warmup_ratio"),
            ("lr = ", "recipe"),
        ];
        for (text, what) in cases {
            let e = Recipe::parse(text, Path::new("bad.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("bad.toml") && e.contains(what), "{text}: {e}");
        }
    }

    #[test]
    fn the_committed_recipes_parse_and_name_a_known_task() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benchmarks/recipes");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let r = Recipe::read(&path).unwrap();
            let task = r.task_or(None).unwrap();
            crate::tasks::Task::from_name(&task).unwrap();
            // The file is named after its task.
            assert_eq!(
                path.file_stem().and_then(|s| s.to_str()),
                Some(task.as_str()),
                "{}",
                path.display()
            );
            assert!(r.description.is_some(), "{}: say why", path.display());
            n += 1;
        }
        assert!(n >= 2, "{n} recipes in {}", dir.display());
    }
}
