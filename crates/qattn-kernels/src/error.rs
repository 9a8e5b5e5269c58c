//! The error type of qattn-kernels.

/// Everything that can go wrong in qattn-kernels. Messages name what was wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An estimator specification string could not be parsed or is out of range.
    #[error("invalid estimator spec `{spec}`: {reason}")]
    InvalidSpec {
        /// The offending specification string.
        spec: String,
        /// Why it was rejected, including the accepted grammar where useful.
        reason: String,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}`: expected shape {expected}, got {actual:?}")]
    Shape {
        /// Which tensor (`q`, `k`, `v`, `mask`).
        name: &'static str,
        /// The expected shape, in words.
        expected: String,
        /// The actual dimensions.
        actual: Vec<usize>,
    },
    /// A tensor has an unsupported dtype.
    #[error("tensor `{name}`: dtype {actual} not supported (expected {expected})")]
    DType {
        /// Which tensor.
        name: &'static str,
        /// The accepted dtypes.
        expected: &'static str,
        /// The actual dtype.
        actual: String,
    },
    /// The options are inconsistent with each other or with the inputs.
    #[error("invalid attention options: {0}")]
    Options(String),
    /// A GPU entry point was called in a build without the `cuda` feature.
    #[error(
        "qattn-kernels was built without the `cuda` feature; rebuild with `--features cuda` to use the GPU"
    )]
    NotCompiledWithCuda,
    /// The `cuda` feature is on but no usable GPU was found at run time (no driver library, no
    /// device, or the device could not be opened).
    #[error("no usable CUDA GPU: {reason}")]
    NoGpu {
        /// What was missing or failed.
        reason: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA error in {what}: {reason}")]
    Cuda {
        /// The operation that failed (kernel name, copy, module load).
        what: String,
        /// The driver's error.
        reason: String,
    },
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(c) => c,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}
