//! Experiment tracking and progress display.
//!
//! A training run reports to a [`Tracker`]: parameters once, metrics at steps, and a final
//! [`RunStatus`]. Two implementations exist:
//!
//! - [`JsonlLog`]: `D/metrics.jsonl`, one JSON object per [`Tracker::log_metrics`] call, and
//!   `D/params.json` beside it. Always on; a resumed run first cuts the log back to the
//!   checkpoint's step so that it reads like an uninterrupted run.
//! - [`Mlflow`]: an MLflow tracking server over its REST API (`/api/2.0/mlflow/…`), enabled
//!   by `MLFLOW_TRACKING_URI` ([`Mlflow::from_env`]).
//!
//! [`Trackers`] fans out to several of them. Tracking never panics on I/O or network
//! failures: every failure is an [`Error::Tracking`] or [`Error::Io`] naming the file or URL.
//!
//! [`Progress`] shows the run's progress on stderr: an indicatif bar on a terminal, plain
//! lines ([`format_progress_line`]) otherwise.
//!
//! Modules: `jsonl` (the log), `mlflow` (the REST client), `git` (the commit of a checkout),
//! `progress` (the terminal display); this module holds the [`Tracker`] trait, [`RunStatus`]
//! and [`Trackers`]. Everything is re-exported here.

use crate::error::{Error, Result};
use std::collections::BTreeMap;

mod git;
mod jsonl;
mod mlflow;
mod progress;

pub use git::git_sha;
pub use jsonl::JsonlLog;
pub use mlflow::{
    MLFLOW_CONNECT_TIMEOUT, MLFLOW_MAX_METRICS_PER_BATCH, MLFLOW_MAX_PARAMS_PER_BATCH,
    MLFLOW_READ_TIMEOUT, MLFLOW_REQUEST_TIMEOUT, Mlflow,
};
pub use progress::{Progress, format_eta, format_progress_line};

/// Where a training run's parameters and metrics go.
///
/// The trainer calls [`log_params`](Tracker::log_params) once near the start,
/// [`log_metrics`](Tracker::log_metrics) at logging steps and
/// [`finish`](Tracker::finish) once at the end. Implementations never panic on I/O or network
/// failure: they return [`Error::Tracking`] or [`Error::Io`] naming the path or URL.
pub trait Tracker {
    /// Records the run's parameters (hyper-parameters, model id, estimator spec, …).
    fn log_params(&mut self, params: &BTreeMap<String, String>) -> Result<()>;
    /// Records `metrics` at optimiser step `step`.
    fn log_metrics(&mut self, step: u64, metrics: &BTreeMap<String, f64>) -> Result<()>;
    /// Marks the run as ended with `status`.
    fn finish(&mut self, status: RunStatus) -> Result<()>;
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// The run completed.
    Finished,
    /// The run stopped on an error.
    Failed,
    /// The run was interrupted (signal, user, early drop).
    Killed,
}

impl RunStatus {
    /// MLflow's name of the status: `FINISHED`, `FAILED` or `KILLED`.
    pub fn as_mlflow(self) -> &'static str {
        match self {
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Killed => "killed",
        })
    }
}

/// Several trackers at once (the JSONL log and, optionally, MLflow).
///
/// Every call goes to every tracker, even when one fails; a single failure is returned as
/// is, several are joined into one [`Error::Tracking`].
pub struct Trackers(pub Vec<Box<dyn Tracker>>);

impl Trackers {
    fn each(&mut self, mut f: impl FnMut(&mut dyn Tracker) -> Result<()>) -> Result<()> {
        let mut errors: Vec<Error> = self
            .0
            .iter_mut()
            .filter_map(|t| f(t.as_mut()).err())
            .collect();
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Tracking(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }
}

impl Tracker for Trackers {
    fn log_params(&mut self, params: &BTreeMap<String, String>) -> Result<()> {
        self.each(|t| t.log_params(params))
    }

    fn log_metrics(&mut self, step: u64, metrics: &BTreeMap<String, f64>) -> Result<()> {
        self.each(|t| t.log_metrics(step, metrics))
    }

    fn finish(&mut self, status: RunStatus) -> Result<()> {
        self.each(|t| t.finish(status))
    }
}
