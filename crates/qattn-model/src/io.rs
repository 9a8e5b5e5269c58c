//! Crash-safe file output: write to a temporary file beside the target, fsync, rename.
//!
//! The implementation is [`qattn_io::write_atomic`], shared with every crate above and xtask;
//! this module gives it this crate's error type.

use crate::error::{Error, Result};
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename over the target, fsync of the directory. A crash leaves either the old file or the
/// new one, never a torn one. Errors are [`Error::Io`] naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    qattn_io::write_atomic(path, bytes).map_err(|e| Error::io(e.path, e.source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_io_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomic(&dir.path().join("missing/x"), b"").unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
