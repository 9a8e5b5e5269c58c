//! The git commit of a checkout, for run records.

use std::path::Path;
use std::process::{Command, Stdio};

/// The commit checked out in `dir` (`git rev-parse HEAD`), or `None` when git is not
/// installed, `dir` is not in a repository, or the repository has no commit yet.
pub fn git_sha(dir: &Path) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let sha = String::from_utf8(out.stdout).ok()?.trim().to_string();
    let valid = matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then_some(sha)
}
