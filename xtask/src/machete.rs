//! The unused-dependency check: `cargo machete` over the workspace.
//!
//! cargo-machete reads every crate's `Cargo.toml` and searches its sources for each declared
//! dependency; a dependency whose name never appears is reported as unused. It does not build
//! anything, so the check takes a second once the tool is installed.
//!
//! The tool is installed by this step itself, pinned to [`VERSION`], with
//! `cargo install --locked --root target/tools` (git-ignored) when `target/tools/bin` does not
//! hold that version yet. The install compiles cargo-machete from crates.io (measured on this
//! project's 2-core machines: see ARCHITECTURE.md, `xtask`); later runs reuse it. When the
//! install fails (no network), the step says why and is skipped, like the steps that need the
//! CI Python env. Dependencies that are used in a way machete cannot see are listed under
//! `[package.metadata.cargo-machete] ignored` in that crate's `Cargo.toml`, each with a comment
//! saying why.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::pyenv::Ran;
use crate::{cargo, output, run};

/// The pinned cargo-machete version.
pub(crate) const VERSION: &str = "0.9.2";
/// The install root, relative to the repository root (under the git-ignored `target/`).
const TOOLS_ROOT: &str = "target/tools";

fn binary(root: &Path) -> PathBuf {
    root.join(TOOLS_ROOT).join("bin").join("cargo-machete")
}

/// Whether `bin` exists and reports [`VERSION`].
fn installed(bin: &Path) -> bool {
    bin.is_file()
        && output(Command::new(bin).arg("--version"))
            .map(|v| v.split_whitespace().any(|w| w == VERSION))
            .unwrap_or(false)
}

/// Installs cargo-machete [`VERSION`] into `target/tools` when missing; `Err(reason)` when that
/// fails.
fn ensure(root: &Path) -> std::result::Result<PathBuf, String> {
    let bin = binary(root);
    if installed(&bin) {
        return Ok(bin);
    }
    println!("installing cargo-machete {VERSION} into {TOOLS_ROOT} (once)");
    let tools = root.join(TOOLS_ROOT);
    run(cargo()
        .current_dir(root)
        .args([
            "install",
            "cargo-machete",
            "--locked",
            "--version",
            VERSION,
            "--root",
        ])
        .arg(&tools))
    .map_err(|e| format!("could not install cargo-machete {VERSION}: {e:#}"))?;
    if installed(&bin) {
        Ok(bin)
    } else {
        Err(format!(
            "cargo install finished but {} does not report version {VERSION}",
            bin.display()
        ))
    }
}

/// The CI step: fails when any workspace crate declares a dependency it does not use.
pub(crate) fn check(root: &Path) -> Result<Ran> {
    let bin = match ensure(root) {
        Ok(bin) => bin,
        Err(reason) => return Ok(Ran::Skipped(reason)),
    };
    // `cargo-machete PATH` (without the `machete` subcommand word when run directly).
    run(Command::new(bin).arg(root))?;
    Ok(Ran::Done)
}
