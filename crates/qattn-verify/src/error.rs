//! Errors of qattn-verify.

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in qattn-verify.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: the message names what and where.
    #[error("{0}")]
    Invalid(String),
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// From the GLUE layer (run records, metrics).
    #[error(transparent)]
    Glue(#[from] qattn_glue::Error),
    /// From the model layer.
    #[error(transparent)]
    Model(#[from] qattn_model::Error),
    /// From the training layer.
    #[error(transparent)]
    Train(#[from] qattn_train::Error),
    /// From the kernels.
    #[error(transparent)]
    Kernels(#[from] qattn_kernels::Error),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Shorthand for [`Error::Invalid`].
pub fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}
