//! Run records: everything about one fine-tuning run that statistics need later — the run's
//! identity (task, model, attention, seed, arguments, commit, machine), its dev metrics and
//! every dev prediction with its gold label, and its costs.
//!
//! Two producers write them, `qattn glue run` (qattn-glue's runner, one `run.json` per seed)
//! and `qattn compare` on its synthetic task (qattn-verify); `glue report` and
//! `verify claims` read them. They live here, the lowest layer both producers sit on, so
//! neither producer owns the other's format. The JSON form is fixed: the committed records
//! under `benchmarks/` must keep loading (tested in qattn-glue).

use crate::args::TrainingArgs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A gold label.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Label {
    /// A class id: an index into the task's label names, the chosen alternative (COPA), or
    /// 1/0 for gold/other candidates (ReCoRD).
    Class(usize),
    /// A regression target (STS-B).
    Score(f64),
}

impl Label {
    /// The class id, if this is a class.
    pub fn class(self) -> Option<usize> {
        match self {
            Label::Class(c) => Some(c),
            Label::Score(_) => None,
        }
    }

    /// The score, if this is a score.
    pub fn score(self) -> Option<f64> {
        match self {
            Label::Score(s) => Some(s),
            Label::Class(_) => None,
        }
    }
}

/// A prediction for one example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prediction {
    /// A class id or choice index (ReCoRD: 1 for the chosen candidate of its query, else 0).
    Class(usize),
    /// A regression score.
    Score(f64),
}

impl Prediction {
    /// The prediction as a class id (a score rounded to the nearest non-negative integer).
    pub fn class(&self) -> usize {
        match self {
            Prediction::Class(c) => *c,
            Prediction::Score(s) => s.round().max(0.0) as usize,
        }
    }
}

/// Everything about one fine-tuning run, for statistics later.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// Task name.
    pub task: String,
    /// Model id or directory.
    pub model: String,
    /// Attention spec.
    pub attention: String,
    /// Seed.
    pub seed: u64,
    /// What the task head read (absent in records of `cls` runs and in records written
    /// before the field existed).
    #[serde(default, skip_serializing_if = "qattn_model::Pooling::is_cls")]
    pub pooling: qattn_model::Pooling,
    /// Training arguments.
    pub training_args: TrainingArgs,
    /// Git commit the qattn binary was built from, when known (see
    /// [`crate::provenance`]; not the commit of the current directory).
    pub git_sha: Option<String>,
    /// Whether that build had uncommitted changes; `None` when unknown (and in records written
    /// before the field existed, which therefore round-trip unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_dirty: Option<bool>,
    /// CPU, cores, OS.
    pub machine: BTreeMap<String, String>,
    /// Official dev metrics.
    pub dev_metrics: BTreeMap<String, f64>,
    /// Per-example dev predictions with gold labels.
    pub predictions: Vec<PredictionRecord>,
    /// Wall seconds per phase: load, train, eval.
    pub wall_seconds: BTreeMap<String, f64>,
    /// Training tokens (non-padding) per second: mean tokens per training example × examples
    /// processed by this run's optimiser steps / training wall time.
    pub train_tokens_per_second: f64,
    /// Peak resident memory of the process so far (MiB).
    pub peak_rss_mb: Option<f64>,
    /// Training examples used.
    pub train_examples: usize,
    /// Dev examples scored.
    pub dev_examples: usize,
    /// UTC time the record was written (seconds since the epoch).
    pub unix_time: u64,
}

/// One dev prediction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PredictionRecord {
    /// Official example id.
    pub id: String,
    /// The prediction.
    pub pred: Prediction,
    /// The gold label.
    pub gold: Option<Label>,
    /// The group the example is scored in (MultiRC question, ReCoRD query, AX-g pair): the
    /// unit of resampling and of per-group metrics (`em`). Absent for ungrouped tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// ReCoRD: the candidate entity this example stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// ReCoRD: the query's gold answers (on every candidate of the query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<Vec<String>>,
}

/// Peak resident set size of this process (MiB), from /proc.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU model, cores, OS.
pub fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Ok(s) = std::fs::read_to_string("/proc/cpuinfo")
        && let Some(l) = s.lines().find(|l| l.starts_with("model name"))
    {
        m.insert(
            "cpu".into(),
            l.split(':').nth(1).unwrap_or("").trim().to_string(),
        );
    }
    m.insert(
        "threads".into(),
        std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_default(),
    );
    m.insert("os".into(), std::env::consts::OS.to_string());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn run_records(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                run_records(&path, out);
            } else if path.file_name().is_some_and(|n| n == "run.json") {
                out.push(path);
            }
        }
    }

    /// Every run record committed under `benchmarks/` loads, and writing it back gives the
    /// same JSON: the format did not change when the types moved here from qattn-glue.
    #[test]
    fn committed_run_records_load_and_round_trip() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benchmarks");
        let mut files = Vec::new();
        run_records(&root, &mut files);
        assert!(
            files.len() >= 30,
            "expected the committed GLUE run records under {}, found {}",
            root.display(),
            files.len()
        );
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            let record: RunRecord =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let original: serde_json::Value = serde_json::from_str(&text).unwrap();
            let written = serde_json::to_value(&record).unwrap();
            assert_eq!(
                written,
                original,
                "{} changed on a round trip",
                path.display()
            );
        }
    }

    #[test]
    fn labels_and_predictions_keep_their_json_forms() {
        assert_eq!(
            serde_json::to_string(&Label::Class(2)).unwrap(),
            r#"{"Class":2}"#
        );
        assert_eq!(
            serde_json::to_string(&Label::Score(0.5)).unwrap(),
            r#"{"Score":0.5}"#
        );
        assert_eq!(serde_json::to_string(&Prediction::Class(1)).unwrap(), "1");
        assert_eq!(
            serde_json::to_string(&Prediction::Score(0.25)).unwrap(),
            "0.25"
        );
        assert_eq!(
            serde_json::from_str::<Prediction>("3").unwrap(),
            Prediction::Class(3)
        );
    }
}
