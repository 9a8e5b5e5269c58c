//! `qattn` — the command-line front door of qattn. Each capability adds a subcommand.

mod attn;
mod bounds;
mod compare;
mod data;
mod demo;
mod glue;
mod model;
mod serve;
mod train;
mod verify;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::sync::LazyLock;

/// `0.1.0 (commit abcdef123456, clean)`: the version and the build's commit (see
/// `qattn_train::provenance`), printed by `qattn --version`.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} ({})",
        env!("CARGO_PKG_VERSION"),
        qattn_train::provenance::BUILD.describe()
    )
});

/// Monte-Carlo ("quantum measurement") attention: kernels, models and their honest evaluation.
#[derive(Parser)]
#[command(name = "qattn", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply an estimator to q/k/v tensors from a safetensors file.
    Attn(attn::Args),
    /// Print the relative error of every estimator against exact attention as S grows.
    Demo(demo::Args),
    /// The main job: exact vs Monte-Carlo attention end to end — fine-tune k seeds each,
    /// evaluate, test — and print the verdict (embedded synthetic task by default).
    Compare(compare::Args),
    /// Run a BERT-family checkpoint (Hub id or directory) with any attention estimator.
    Model(model::Args),
    /// Fine-tune a model on JSONL data with exact or Monte-Carlo attention.
    Train(train::Args),
    /// GLUE and SuperGLUE: fine-tune and evaluate, write submissions, score predictions,
    /// export results.
    Glue(glue::Args),
    /// Data: download the official GLUE and SuperGLUE files.
    Data(data::Args),
    /// Statistics: is one system significantly better than another (paired tests on
    /// per-example outputs, tests across seeds)?
    #[command(subcommand)]
    Verify(verify::VerifyCmd),
    /// Serve models over gRPC (typed qattn.v1 API and the KServe Open Inference Protocol).
    Serve(serve::Args),
    /// Check a server's gRPC health (exit 0 when SERVING).
    Health(serve::HealthArgs),
}

/// An error in how a command was called (a flag value out of range, an output directory that
/// needs `--resume` or `--overwrite`): `qattn` exits with status 2 for it, as for clap's own
/// usage errors.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Sizes both pools the numerics use: candle reads `RAYON_NUM_THREADS` on every matmul, the
/// kernels run on rayon's global pool.
pub(crate) fn rayon_global(n: usize) -> anyhow::Result<()> {
    // SAFETY: called from `main`'s thread before this process starts any other thread (the
    // progress bar's ticker and every worker pool start later), so no concurrent reader of the
    // environment exists.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("setting the number of worker threads: {e}"))
}

fn main() {
    let matches = Cli::command().version(VERSION.as_str()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Attn(a) => attn::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Model(a) => model::run(a),
        Command::Train(a) => train::run(a),
        Command::Glue(a) => glue::run(a),
        Command::Data(a) => data::run(a),
        Command::Verify(c) => verify::run(c),
        Command::Serve(a) => serve::run(a),
        Command::Health(a) => serve::health(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        // Usage errors exit with 2, as clap's own do.
        let code = if e.downcast_ref::<UsageError>().is_some() {
            2
        } else {
            1
        };
        std::process::exit(code);
    }
}
