//! The trainer's error type.

use std::path::PathBuf;

/// Errors of qattn-train.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid training arguments (names the field).
    #[error("invalid training arguments: {0}")]
    Args(String),
    /// A data file is malformed (names the file and line).
    #[error("{path}:{line}: {message}")]
    Data {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 when not line-specific).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint is missing, partial or corrupted.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Experiment tracking failed (the JSONL log or MLflow).
    #[error("tracking: {0}")]
    Tracking(String),
    /// Training diverged or produced non-finite values.
    #[error("training: {0}")]
    Training(String),
    /// The process group could not be formed or a collective operation failed.
    #[error("distributed training: {0}")]
    Distributed(String),
    /// An I/O error with its path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The model crate failed.
    #[error(transparent)]
    Model(#[from] qattn_model::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
