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
    /// A download failed (`qattn data fetch`): the URL, what went wrong, and how to get the
    /// data by hand.
    #[error("{url}: {message}\n{hint}")]
    Download {
        /// The URL that was requested.
        url: String,
        /// What went wrong (connection refused, timeout, HTTP status, …).
        message: String,
        /// How to obtain the data without this command.
        hint: String,
    },
    /// A fetched file is not the one whose checksum is recorded (`qattn data fetch`); nothing
    /// was installed.
    #[error(
        "{file}: sha256 mismatch: expected {expected}, got {actual} (from {source_url}); \
         nothing was installed"
    )]
    Checksum {
        /// The file, relative to the destination (`glue/CoLA/train.tsv`) or the download URL.
        file: String,
        /// Where it came from.
        source_url: String,
        /// The recorded sha256.
        expected: String,
        /// The sha256 of what was downloaded.
        actual: String,
    },
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
