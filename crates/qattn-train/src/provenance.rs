//! Which code produced a result: the git commit the binary was built from and whether its
//! sources differed from that commit, embedded at build time by `build.rs`.
//!
//! Every run record, training log (`params.json`, `train_summary.json`, MLflow), report and
//! `qattn --version` takes its commit from here, never from the current directory: a run
//! started inside another repository records the commit of the qattn code that ran.
//!
//! What the build script knows, and its limits:
//!
//! * **commit**: `git rev-parse HEAD` of the workspace's own repository at build time. A build
//!   outside git (a source archive, no `git` installed, a copy inside some other repository)
//!   says "unknown" ([`BuildInfo::commit`] is `None`), never another repository's commit.
//! * **dirty**: whether `git status` showed uncommitted changes (modified, staged, deleted, or
//!   untracked and not ignored) in the build inputs — `crates/`, `proto/`, `Cargo.toml`,
//!   `Cargo.lock`, `rust-toolchain.toml`, `.cargo/`. Edits elsewhere (docs, benchmarks,
//!   xtask) do not go into the binaries and do not count.
//! * **staying correct**: Cargo reruns the script when any file under those inputs changes
//!   (it scans the folders recursively by modification time), so unstaged edits flip the flag
//!   without a `git add`; and when HEAD or the checked-out branch's ref change (commit,
//!   checkout, reset), so a commit flips it back. A change that keeps a file's modification
//!   time (e.g. restored with its old mtime) is not seen until the next change; if the branch's
//!   ref lives only in `packed-refs` when the script runs, the first commit (which writes the
//!   loose ref) is seen at the next change of a watched file.
//! * Cargo runs the script only when qattn-train is rebuilt; a binary copied elsewhere keeps
//!   the values it was built with, which is the point.

/// The commit and dirty flag a binary was built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildInfo {
    /// The full commit hash, or `None` when the build did not happen in the workspace's git
    /// repository (or git was missing).
    pub commit: Option<&'static str>,
    /// Whether the build inputs had uncommitted changes; `None` when unknown.
    pub dirty: Option<bool>,
}

/// The commit and dirty flag of this build.
pub const BUILD: BuildInfo = BuildInfo {
    commit: non_empty(env!("QATTN_BUILD_COMMIT")),
    dirty: parse_dirty(env!("QATTN_BUILD_DIRTY")),
};

const fn non_empty(s: &'static str) -> Option<&'static str> {
    if s.is_empty() { None } else { Some(s) }
}

const fn parse_dirty(s: &str) -> Option<bool> {
    match s.as_bytes() {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    }
}

impl BuildInfo {
    /// The first 12 hex digits of the commit, or `"unknown"`.
    pub fn short_commit(&self) -> &'static str {
        match self.commit {
            Some(c) => &c[..c.len().min(12)],
            None => "unknown",
        }
    }

    /// `"clean"`, `"dirty"` or `"unknown"`.
    pub fn state(&self) -> &'static str {
        match (self.commit, self.dirty) {
            (Some(_), Some(false)) => "clean",
            (Some(_), Some(true)) => "dirty",
            _ => "unknown",
        }
    }

    /// `commit abcdef123456, clean` (or `dirty`), or `commit unknown`.
    pub fn describe(&self) -> String {
        match self.commit {
            Some(_) => format!("commit {}, {}", self.short_commit(), self.state()),
            None => "commit unknown".to_string(),
        }
    }

    /// The commit as an owned string, for records.
    pub fn commit_string(&self) -> Option<String> {
        self.commit.map(str::to_string)
    }

    /// The dirty flag for records: `None` whenever the commit is unknown.
    pub fn dirty_flag(&self) -> Option<bool> {
        self.commit.and(self.dirty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        let clean = BuildInfo {
            commit: Some(c),
            dirty: Some(false),
        };
        assert_eq!(clean.describe(), "commit 0123456789ab, clean");
        let dirty = BuildInfo {
            dirty: Some(true),
            ..clean
        };
        assert_eq!(dirty.describe(), "commit 0123456789ab, dirty");
        let unknown = BuildInfo {
            commit: None,
            dirty: Some(true),
        };
        assert_eq!(unknown.describe(), "commit unknown");
        assert_eq!(unknown.dirty_flag(), None);
        assert_eq!(unknown.state(), "unknown");
        assert_eq!(parse_dirty("true"), Some(true));
        assert_eq!(parse_dirty(""), None);
        assert_eq!(non_empty(""), None);
    }

    #[test]
    fn this_build_is_consistent() {
        if let Some(c) = BUILD.commit {
            assert!(matches!(c.len(), 40 | 64), "{c}");
            assert!(c.bytes().all(|b| b.is_ascii_hexdigit()), "{c}");
            assert!(BUILD.dirty.is_some());
        }
    }
}
