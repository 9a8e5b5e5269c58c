//! The crate's error type.

use std::path::PathBuf;

/// Errors of qattn-glue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data file is missing: names it and how to get it.
    #[error("{path}: missing ({hint})")]
    Missing {
        /// The file that was looked for.
        path: PathBuf,
        /// How to obtain it.
        hint: String,
    },
    /// A data file is malformed (file, 1-based line, what).
    #[error("{path}:{line}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line (0: not line-specific).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Invalid arguments or inputs to a metric or task (names what).
    #[error("{0}")]
    Invalid(String),
    /// An I/O error with its path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
