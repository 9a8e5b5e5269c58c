//! The crate's error type and its one mapping to gRPC status codes.

use std::path::PathBuf;

/// Everything that can go wrong in qattn-serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid (names the field).
    #[error("configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Loading or running a model failed.
    #[error("model: {0}")]
    Model(#[from] qattn_model::Error),
    /// Unknown model or version.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or over a limit (the message names which).
    #[error("{0}")]
    InvalidArgument(String),
    /// Queue full, too many concurrent requests or rate limited.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request's deadline passed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The server is shutting down or the model is not ready.
    #[error("{0}")]
    Unavailable(String),
    /// The operation is not allowed in the current state (e.g. unloading the default version).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Inference failed on the server.
    #[error("{0}")]
    Internal(String),
    /// Binding or serving failed.
    #[error("transport: {0}")]
    Transport(String),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Status;
        match e {
            Error::NotFound(m) => Status::not_found(m),
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::Config(m) => Status::invalid_argument(format!("configuration: {m}")),
            e @ (Error::Io { .. } | Error::Model(_) | Error::Internal(_) | Error::Transport(_)) => {
                Status::internal(e.to_string())
            }
        }
    }
}

impl From<crate::batcher::BatchError> for Error {
    fn from(e: crate::batcher::BatchError) -> Self {
        use crate::batcher::BatchError as B;
        match e {
            B::QueueFull => Error::ResourceExhausted(
                "the model's batch queue is full (batching.queue_capacity); retry later".into(),
            ),
            B::DeadlineExceeded => Error::DeadlineExceeded(
                "the request's deadline passed before inference ran; no work was done".into(),
            ),
            B::ShuttingDown => Error::Unavailable("the server is shutting down".into()),
            B::Failed(m) => Error::Internal(format!("inference failed: {m}")),
        }
    }
}

/// The canonical gRPC name of a status code (`OK`, `INVALID_ARGUMENT`, …), as used in metric
/// labels.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}
