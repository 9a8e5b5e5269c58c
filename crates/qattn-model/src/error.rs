//! The crate's error type: every variant names what was wrong and where.

use std::path::PathBuf;

/// Errors of qattn-model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `config.json` field has a value this crate does not implement.
    #[error("config.json: unsupported {field} {value:?}; supported: {supported}")]
    Unsupported {
        /// The field, e.g. `model_type`.
        field: &'static str,
        /// The value found.
        value: String,
        /// The values that are supported, comma-separated.
        supported: &'static str,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Files a model needs are not in the local cache and may not be downloaded.
    #[error("{0}")]
    MissingFiles(MissingFiles),
    /// Downloading from the Hugging Face Hub failed.
    #[error("downloading {file} of {repo} from the Hugging Face Hub failed: {message}")]
    Download {
        /// The repository id.
        repo: String,
        /// The file.
        file: String,
        /// The underlying error.
        message: String,
    },
    /// A checkpoint lacks a tensor the model needs, or has it with the wrong shape.
    #[error("checkpoint {path}: {message}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Model inputs were malformed.
    #[error("invalid input: {0}")]
    Input(String),
    /// Tokenisation failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An attention kernel rejected its inputs or options.
    #[error(transparent)]
    Kernel(#[from] qattn_kernels::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An I/O error with the path it happened on.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Files that were looked for and not found, with how to obtain them.
#[derive(Debug, Clone)]
pub struct MissingFiles {
    /// The repository id or directory that was asked for.
    pub model: String,
    /// The cache directories (or the model directory) that were searched.
    pub searched: Vec<PathBuf>,
    /// The missing files; an entry with `|` means any one of the alternatives.
    pub files: Vec<String>,
    /// Why nothing was downloaded (offline mode, or a local directory).
    pub reason: String,
}

impl std::fmt::Display for MissingFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "model {:?}: missing files ({}):",
            self.model, self.reason
        )?;
        for file in &self.files {
            writeln!(f, "  - {file}")?;
        }
        write!(f, "searched:")?;
        for dir in &self.searched {
            write!(f, "\n  - {}", dir.display())?;
        }
        if !self.searched.is_empty() {
            writeln!(f)?;
        }
        let first = |s: &String| s.split(" | ").next().unwrap_or(s).to_string();
        let names: Vec<String> = self.files.iter().map(first).collect();
        let (repo, revision) = match self.model.split_once('@') {
            Some((repo, rev)) => (repo, format!(" --revision {rev}")),
            None => (self.model.as_str(), String::new()),
        };
        write!(
            f,
            "to get them: run online (unset HF_HUB_OFFLINE) so qattn downloads them into the cache, \
             or `huggingface-cli download {repo}{revision} {}`, or point --cache-dir / HF_HUB_CACHE / \
             HF_HOME at a cache that has them",
            names.join(" ")
        )
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
