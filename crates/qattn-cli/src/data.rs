//! `qattn data fetch`: download the official GLUE / SuperGLUE data into the official layout.

use anyhow::Result;
use qattn_glue::fetch::{self, FetchOptions, Progress};
use qattn_glue::tasks::Benchmark;
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `qattn data`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Download the official GLUE or SuperGLUE files into DEST/glue or DEST/superglue, checked
    /// against the committed sha256 table; complete task directories are left alone.
    Fetch(FetchArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// GLUE: CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI, AX.
    Glue,
    /// SuperGLUE: BoolQ, CB, COPA, MultiRC, ReCoRD, RTE, WiC, WSC, AX-b, AX-g.
    Superglue,
}

#[derive(clap::Args)]
struct FetchArgs {
    /// Which benchmark.
    #[arg(value_enum)]
    benchmark: Bench,
    /// Comma-separated tasks (e.g. cola,mrpc or boolq,rte); default: all of the benchmark.
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Data directory receiving glue/ and superglue/ (default: QATTN_DATA_DIR, else
    /// $XDG_DATA_HOME/qattn/data, else ~/.local/share/qattn/data — where the other commands look).
    #[arg(long)]
    dest: Option<PathBuf>,
    /// Replace task directories that are already complete.
    #[arg(long)]
    force: bool,
    /// Download from a mirror of https://dl.fbaipublicfiles.com with the same paths
    /// (default: QATTN_GLUE_MIRROR, else the official host).
    #[arg(long)]
    mirror: Option<String>,
    /// Seconds allowed to connect, to get a response, and for each read of a transfer
    /// (1 to 3600).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
}

pub(crate) fn run(a: Args) -> Result<()> {
    match a.command {
        Command::Fetch(a) => fetch_cmd(a),
    }
}

fn fetch_cmd(a: FetchArgs) -> Result<()> {
    let benchmark = match a.benchmark {
        Bench::Glue => Benchmark::Glue,
        Bench::Superglue => Benchmark::SuperGlue,
    };
    let tasks = fetch::parse_tasks(benchmark, &a.tasks)?;
    let dest = qattn_glue::tasks::data_dir(a.dest.as_deref());
    eprintln!("data directory: {}", dest.display());
    let opts = FetchOptions {
        dest: dest.clone(),
        force: a.force,
        base_url: a.mirror.clone(),
        timeout: Duration::from_secs(a.timeout.max(1)),
    };
    let report = fetch::fetch(&tasks, &opts, |p| match p {
        Progress::Verified { .. } => {}
        other => eprintln!("{other}"),
    })?;
    println!(
        "{} installed, {} already complete; {} files verified, {} without a known checksum \
         (warned above)",
        report.installed.len(),
        report.skipped.len(),
        report.verified.len(),
        report.unverified.len()
    );
    if a.dest.is_some() {
        println!(
            "data directory {}: use it with --data-dir {} (or QATTN_DATA_DIR={})",
            dest.display(),
            dest.display(),
            dest.display()
        );
    } else {
        println!(
            "data directory {} (the default of --data-dir)",
            dest.display()
        );
    }
    Ok(())
}
