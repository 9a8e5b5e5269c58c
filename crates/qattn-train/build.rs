//! Build script of qattn-train: embeds the git commit the code was built from and whether the
//! build inputs differed from that commit (see `src/provenance.rs` for what "dirty" covers and
//! its limits).
//!
//! Sets `QATTN_BUILD_COMMIT` (40 or 64 hex digits, empty when unknown) and `QATTN_BUILD_DIRTY`
//! (`true`, `false`, empty when unknown) for the crate's compilation.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The files and folders, relative to the workspace root, whose contents go into the qattn
/// binaries. An uncommitted change to any of them (modified, staged, deleted or untracked and
/// not ignored) makes the build dirty; Cargo reruns this script when any of them changes.
const INPUTS: &[&str] = &[
    "crates",
    "proto",
    "Cargo.toml",
    "Cargo.lock",
    "rust-toolchain.toml",
    ".cargo",
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by Cargo"));
    let root = manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or(manifest);
    println!("cargo:rerun-if-changed=build.rs");
    // A folder is scanned recursively by Cargo: any edited source file reruns this script, so
    // the dirty flag follows unstaged edits too.
    for input in INPUTS {
        let path = root.join(input);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }

    // Only this workspace's own repository counts: a source copy unpacked inside some other
    // repository (or a registry cache that happens to live in one) must say "unknown" rather
    // than record that repository's commit.
    let own_repo = git(&root, &["rev-parse", "--show-toplevel"])
        .is_some_and(|top| same_dir(Path::new(&top), &root));
    let commit = own_repo
        .then(|| git(&root, &["rev-parse", "HEAD"]))
        .flatten()
        .filter(|s| matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit()));
    let dirty = if commit.is_some() {
        watch_git_state(&root);
        let mut args = vec![
            "status",
            "--porcelain",
            "--untracked-files=normal",
            "--ignore-submodules=none",
            "--",
        ];
        args.extend(INPUTS);
        git(&root, &args).map(|s| !s.is_empty())
    } else {
        None
    };
    println!(
        "cargo:rustc-env=QATTN_BUILD_COMMIT={}",
        commit.as_deref().unwrap_or("")
    );
    println!(
        "cargo:rustc-env=QATTN_BUILD_DIRTY={}",
        match dirty {
            Some(true) => "true",
            Some(false) => "false",
            None => "",
        }
    );
}

/// Reruns this script when HEAD moves (checkout) or the checked-out branch's ref changes
/// (commit, reset). Works in linked worktrees, where `.git` is a file. The index is not
/// watched: staging does not change what "dirty" means here, and every `git status` may
/// rewrite the index, which would rebuild this crate and its dependents needlessly.
fn watch_git_state(root: &Path) {
    let mut paths = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(head_ref) = git(root, &["symbolic-ref", "-q", "HEAD"]) {
        paths.push(head_ref);
    }
    for p in paths {
        if let Some(resolved) = git(root, &["rev-parse", "--git-path", &p]) {
            let path = root.join(resolved);
            // A path that does not exist would make Cargo rerun the script on every build.
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}

/// Whether two paths name the same folder (after resolving symbolic links).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The trimmed stdout of `git -C root ARGS`, or `None` when git is missing or fails (not a
/// repository, no commit yet). `--no-optional-locks` keeps `status` from rewriting the index,
/// which would otherwise rerun this script on the next build.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("--no-optional-locks")
        .arg("-C")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}
