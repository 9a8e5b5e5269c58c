//! `qattn data fetch`: download the official GLUE / SuperGLUE archives into the official layout,
//! verified against [`crate::fetch_checksums`].
//!
//! # Sources
//!
//! The URLs are those of the official download scripts: GLUE's `download_glue_data.py`
//! (nyu-mll/GLUE-baselines; the same `TASK2PATH` table as the original gist by W4ngatang) and
//! SuperGLUE's `download_superglue_data.py` (nyu-mll/jiant):
//!
//! | unit | download(s) under `https://dl.fbaipublicfiles.com` | installed as |
//! |---|---|---|
//! | GLUE CoLA, SST-2, STS-B, MNLI, RTE, WNLI | `/glue/data/{DIR}.zip` | `glue/{DIR}/…` |
//! | GLUE QQP | `/glue/data/QQP-clean.zip` | `glue/QQP/…` |
//! | GLUE QNLI | `/glue/data/QNLIv2.zip` | `glue/QNLI/…` |
//! | GLUE MRPC | `/senteval/senteval_data/msr_paraphrase_{train,test}.txt`, `/glue/data/mrpc_dev_ids.tsv` | `glue/MRPC/{train,dev,test}.tsv` (+ the three sources) |
//! | GLUE AX | `/glue/data/AX.tsv` | `glue/AX/AX.tsv` |
//! | SuperGLUE BoolQ, CB, COPA, MultiRC, ReCoRD, RTE, WiC, WSC, AX-b, AX-g | `/glue/superglue/data/v2/{DIR}.zip` | `superglue/{DIR}/…` |
//!
//! Each zip unpacks to one top directory named like the task directory (`CoLA/train.tsv`,
//! `AX-b/AX-b.jsonl`); everything in it is installed (CoLA's and STS-B's `original/` too), and
//! anything outside it (`__MACOSX/`) is not. MRPC is not hosted as a zip: the script takes
//! SentEval's copy of the corpus and splits it with the official dev ids; [`format_mrpc`] does
//! exactly what the script does. The MRPC dev-id URL is the one the Hugging Face `glue` loader
//! uses (the script's Firebase URL for the same file is no longer served). The script saves the
//! diagnostic as `diagnostic/diagnostic.tsv`; the readers expect the leaderboard name
//! `glue/AX/AX.tsv`, so that is where it goes.
//!
//! # Safety of the destination
//!
//! A task directory that already holds every file the readers need is left alone unless
//! `force` is set. Otherwise everything happens in a staging directory beside the target
//! (`DEST/<benchmark>/.qattn-fetch-*`): download, extract, process, verify every file's
//! sha256, check every expected file is there; only then is the directory renamed into place
//! (an existing incomplete or forced directory is first moved into the staging directory and
//! deleted with it). A failure at any step leaves the destination as it was.
//!
//! The host can be replaced by a mirror with the same paths ([`MIRROR_ENV`] or
//! [`FetchOptions::base_url`]), which is also how the tests serve archives locally.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fetch_checksums;
use crate::tasks::{Benchmark, Split, Task};

/// Environment variable naming a mirror of `https://dl.fbaipublicfiles.com` (same paths).
pub const MIRROR_ENV: &str = "QATTN_GLUE_MIRROR";

/// The official host of every download.
pub const OFFICIAL_BASE: &str = "https://dl.fbaipublicfiles.com";

/// How one task directory is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A zip at this path on the host whose top directory is the task directory.
    Zip(&'static str),
    /// A single file at `path` on the host, saved as `name` in the task directory.
    File {
        /// Path on the host.
        path: &'static str,
        /// File name in the task directory.
        name: &'static str,
    },
    /// MRPC: SentEval's `msr_paraphrase_{train,test}.txt` and the official dev ids, split by
    /// [`format_mrpc`].
    Mrpc,
}

/// MRPC's downloads: (path on the host, name in `glue/MRPC/`).
pub const MRPC_DOWNLOADS: [(&str, &str); 3] = [
    (
        "/senteval/senteval_data/msr_paraphrase_train.txt",
        "msr_paraphrase_train.txt",
    ),
    (
        "/senteval/senteval_data/msr_paraphrase_test.txt",
        "msr_paraphrase_test.txt",
    ),
    ("/glue/data/mrpc_dev_ids.tsv", "dev_ids.tsv"),
];

/// One unit of download: a task directory and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Archive {
    /// The benchmark (the directory under the destination).
    pub benchmark: Benchmark,
    /// The task directory ([`Task::dir_name`]).
    pub dir: &'static str,
    /// Where its files come from.
    pub source: Source,
}

const fn zip(benchmark: Benchmark, dir: &'static str, path: &'static str) -> Archive {
    Archive {
        benchmark,
        dir,
        source: Source::Zip(path),
    }
}

/// Every download unit, GLUE first, in [`Task::ALL`] order.
pub const ARCHIVES: &[Archive] = &[
    zip(Benchmark::Glue, "CoLA", "/glue/data/CoLA.zip"),
    zip(Benchmark::Glue, "SST-2", "/glue/data/SST-2.zip"),
    Archive {
        benchmark: Benchmark::Glue,
        dir: "MRPC",
        source: Source::Mrpc,
    },
    zip(Benchmark::Glue, "STS-B", "/glue/data/STS-B.zip"),
    zip(Benchmark::Glue, "QQP", "/glue/data/QQP-clean.zip"),
    zip(Benchmark::Glue, "MNLI", "/glue/data/MNLI.zip"),
    zip(Benchmark::Glue, "QNLI", "/glue/data/QNLIv2.zip"),
    zip(Benchmark::Glue, "RTE", "/glue/data/RTE.zip"),
    zip(Benchmark::Glue, "WNLI", "/glue/data/WNLI.zip"),
    Archive {
        benchmark: Benchmark::Glue,
        dir: "AX",
        source: Source::File {
            path: "/glue/data/AX.tsv",
            name: "AX.tsv",
        },
    },
    zip(
        Benchmark::SuperGlue,
        "BoolQ",
        "/glue/superglue/data/v2/BoolQ.zip",
    ),
    zip(Benchmark::SuperGlue, "CB", "/glue/superglue/data/v2/CB.zip"),
    zip(
        Benchmark::SuperGlue,
        "COPA",
        "/glue/superglue/data/v2/COPA.zip",
    ),
    zip(
        Benchmark::SuperGlue,
        "MultiRC",
        "/glue/superglue/data/v2/MultiRC.zip",
    ),
    zip(
        Benchmark::SuperGlue,
        "ReCoRD",
        "/glue/superglue/data/v2/ReCoRD.zip",
    ),
    zip(
        Benchmark::SuperGlue,
        "RTE",
        "/glue/superglue/data/v2/RTE.zip",
    ),
    zip(
        Benchmark::SuperGlue,
        "WiC",
        "/glue/superglue/data/v2/WiC.zip",
    ),
    zip(
        Benchmark::SuperGlue,
        "WSC",
        "/glue/superglue/data/v2/WSC.zip",
    ),
    zip(
        Benchmark::SuperGlue,
        "AX-b",
        "/glue/superglue/data/v2/AX-b.zip",
    ),
    zip(
        Benchmark::SuperGlue,
        "AX-g",
        "/glue/superglue/data/v2/AX-g.zip",
    ),
];

impl Archive {
    /// The archive holding `task`'s files.
    pub fn of(task: Task) -> &'static Archive {
        ARCHIVES
            .iter()
            .find(|a| a.benchmark == task.benchmark() && a.dir == task.dir_name())
            .expect("every task has an archive")
    }

    /// The tasks whose files this archive holds (MNLI: both evaluations).
    pub fn tasks(&self) -> Vec<Task> {
        Task::ALL
            .into_iter()
            .filter(|t| t.benchmark() == self.benchmark && t.dir_name() == self.dir)
            .collect()
    }

    /// The files the readers need from this archive, relative to the task directory.
    pub fn expected_files(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for t in self.tasks() {
            for s in Split::ALL {
                if let Some(f) = t.file(s)
                    && !out.contains(&f)
                {
                    out.push(f);
                }
            }
        }
        out
    }

    /// `dest/<benchmark>/<dir>`.
    pub fn target(&self, dest: &Path) -> PathBuf {
        dest.join(self.benchmark.name()).join(self.dir)
    }

    /// Whether `dest` already holds every file the readers need from this archive.
    pub fn is_complete(&self, dest: &Path) -> bool {
        let target = self.target(dest);
        self.expected_files()
            .iter()
            .all(|f| target.join(f).is_file())
    }

    /// The paths on the host this archive downloads.
    pub fn download_paths(&self) -> Vec<&'static str> {
        match self.source {
            Source::Zip(p) => vec![p],
            Source::File { path, .. } => vec![path],
            Source::Mrpc => MRPC_DOWNLOADS.iter().map(|(p, _)| *p).collect(),
        }
    }

    /// The URLs this archive downloads from `base` (no trailing `/`).
    pub fn urls(&self, base: &str) -> Vec<String> {
        let base = base.trim_end_matches('/');
        self.download_paths()
            .iter()
            .map(|p| format!("{base}{p}"))
            .collect()
    }

    /// How to get this archive by hand (for error messages).
    fn manual_hint(&self, base: &str, dest: &Path) -> String {
        let bench_dir = dest.join(self.benchmark.name());
        let first = self.expected_files().first().copied().unwrap_or("");
        let urls = self.urls(base);
        let how = match self.source {
            Source::Zip(_) => format!(
                "download {} by hand and unzip it into {} (giving {})",
                urls[0],
                bench_dir.display(),
                self.target(dest).join(first).display()
            ),
            Source::File { name, .. } => format!(
                "download {} by hand and save it as {}",
                urls[0],
                self.target(dest).join(name).display()
            ),
            Source::Mrpc => format!(
                "run the official download_glue_data.py (nyu-mll/GLUE-baselines) with --tasks \
                 MRPC, which splits the same sources ({}), and copy its MRPC/{{train,dev,test}}.tsv \
                 into {}",
                urls.join(", "),
                self.target(dest).display()
            ),
        };
        format!(
            "to get the data manually: {how}; or set {MIRROR_ENV} to a mirror with the same paths \
             (or pass --mirror); or point --data-dir / QATTN_DATA_DIR at an existing copy"
        )
    }
}

/// Parses `--tasks` for `benchmark`: task names as [`Task::from_name`] reads them (the
/// official spellings too); `rte` means SuperGLUE's RTE under `superglue`. An empty list means
/// every task of the benchmark. An unknown name, or one of the other benchmark, is an
/// [`Error::Invalid`] listing the benchmark's tasks.
pub fn parse_tasks(benchmark: Benchmark, names: &[String]) -> Result<Vec<Task>> {
    let list = || {
        benchmark
            .tasks()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if names.iter().all(|n| n.trim().is_empty()) {
        return Ok(benchmark.tasks().collect());
    }
    let mut out = Vec::new();
    for name in names.iter().filter(|n| !n.trim().is_empty()) {
        let task = match Task::from_name(name) {
            Ok(Task::Rte) if benchmark == Benchmark::SuperGlue => Task::SgRte,
            Ok(t) => t,
            Err(_) => {
                return Err(Error::Invalid(format!(
                    "unknown {benchmark} task {name:?}; {benchmark} tasks are: {}",
                    list()
                )));
            }
        };
        if task.benchmark() != benchmark {
            return Err(Error::Invalid(format!(
                "{name:?} is a {} task, not a {benchmark} one (use `qattn data fetch {} --tasks \
                 {}`); {benchmark} tasks are: {}",
                task.benchmark(),
                task.benchmark(),
                task.name(),
                list()
            )));
        }
        if !out.contains(&task) {
            out.push(task);
        }
    }
    Ok(out)
}

/// The archives holding `tasks`, each once, in [`ARCHIVES`] order.
pub fn archives_for(tasks: &[Task]) -> Vec<&'static Archive> {
    ARCHIVES
        .iter()
        .filter(|a| tasks.iter().any(|&t| Archive::of(t) == *a))
        .collect()
}

/// Options of [`fetch`].
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The data directory receiving `glue/` and `superglue/`.
    pub dest: PathBuf,
    /// Replace task directories that are already complete.
    pub force: bool,
    /// The host to download from; `None`: [`MIRROR_ENV`] if set and non-empty, else
    /// [`OFFICIAL_BASE`].
    pub base_url: Option<String>,
    /// Limit for resolving and connecting, for the response headers, and for each read of the
    /// body (a stalled transfer fails after this long; a slow one does not).
    pub timeout: Duration,
}

impl FetchOptions {
    /// Options for `dest` with the defaults: no force, host from the environment, 30 s timeout.
    pub fn new(dest: impl Into<PathBuf>) -> FetchOptions {
        FetchOptions {
            dest: dest.into(),
            force: false,
            base_url: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// The host in effect (see [`FetchOptions::base_url`]), without a trailing `/`.
    pub fn base(&self) -> String {
        let b = match &self.base_url {
            Some(b) => b.clone(),
            None => match std::env::var(MIRROR_ENV) {
                Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
                _ => OFFICIAL_BASE.to_string(),
            },
        };
        b.trim_end_matches('/').to_string()
    }
}

/// Something [`fetch`] reports while it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A complete task directory was left alone (no `force`).
    Skipped {
        /// The directory.
        dir: PathBuf,
    },
    /// A download starts.
    Downloading {
        /// Its URL.
        url: String,
    },
    /// A file matched its recorded checksum.
    Verified {
        /// Path relative to the destination.
        file: String,
    },
    /// A file or download has no known checksum and was not verified: a warning.
    Unverified {
        /// Path relative to the destination, or the URL of a download.
        file: String,
        /// Its sha256, for the record.
        sha256: String,
    },
    /// A task directory was installed.
    Installed {
        /// The directory.
        dir: PathBuf,
        /// Whether it replaced an existing one.
        replaced: bool,
    },
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Skipped { dir } => write!(
                f,
                "{}: complete, left as it is (--force replaces it)",
                dir.display()
            ),
            Progress::Downloading { url } => write!(f, "downloading {url}"),
            Progress::Verified { file } => write!(f, "{file}: sha256 verified"),
            Progress::Unverified { file, sha256 } => write!(
                f,
                "warning: {file}: no checksum is known, not verified (sha256 {sha256})"
            ),
            Progress::Installed { dir, replaced } => write!(
                f,
                "{}: {}",
                dir.display(),
                if *replaced { "replaced" } else { "installed" }
            ),
        }
    }
}

/// What [`fetch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Task directories installed (or replaced).
    pub installed: Vec<PathBuf>,
    /// Complete task directories left alone.
    pub skipped: Vec<PathBuf>,
    /// Files verified against a known checksum (relative to the destination).
    pub verified: Vec<String>,
    /// Files and downloads installed without a known checksum (warned about).
    pub unverified: Vec<String>,
}

/// Downloads the archives holding `tasks` into `opts.dest` (see the module docs), reporting
/// progress and warnings through `on_progress`.
///
/// Errors: [`Error::Download`] (naming the URL and how to get the data by hand) when a download
/// fails, [`Error::Checksum`] (naming the file and both hashes) when a file differs from its
/// recorded checksum, [`Error::Format`] / [`Error::Invalid`] for a malformed archive, and
/// [`Error::Io`]. On error nothing is installed for the failing archive; archives installed
/// before it stay.
pub fn fetch(
    tasks: &[Task],
    opts: &FetchOptions,
    mut on_progress: impl FnMut(&Progress),
) -> Result<FetchReport> {
    let base = opts.base();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Error::Invalid(format!(
            "download host {base:?}: only http:// and https:// are supported"
        )));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_resolve(Some(opts.timeout))
        .timeout_connect(Some(opts.timeout))
        .timeout_recv_response(Some(opts.timeout))
        .timeout_per_read(Some(opts.timeout))
        .user_agent(concat!("qattn-glue/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut report = FetchReport::default();
    for archive in archives_for(tasks) {
        let target = archive.target(&opts.dest);
        if archive.is_complete(&opts.dest) && !opts.force {
            on_progress(&Progress::Skipped {
                dir: target.clone(),
            });
            report.skipped.push(target);
            continue;
        }
        fetch_archive(archive, opts, &base, &agent, &mut report, &mut on_progress)?;
    }
    Ok(report)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn fetch_archive(
    archive: &Archive,
    opts: &FetchOptions,
    base: &str,
    agent: &ureq::Agent,
    report: &mut FetchReport,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<()> {
    let bench_dir = opts.dest.join(archive.benchmark.name());
    std::fs::create_dir_all(&bench_dir).map_err(io_err(&bench_dir))?;
    // Staging beside the target, so that the final rename stays on one file system; removed
    // (with whatever it holds) when dropped, on success and on error alike.
    let staging = tempfile::Builder::new()
        .prefix(".qattn-fetch-")
        .tempdir_in(&bench_dir)
        .map_err(io_err(&bench_dir))?;
    let downloads = staging.path().join("downloads");
    let extract = staging.path().join("extract");
    let new_dir = extract.join(archive.dir);
    for d in [&downloads, &extract] {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let hint = || archive.manual_hint(base, &opts.dest);

    // Download every source file, checking it against its recorded checksum where one is known.
    let mut files = Vec::new();
    for path in archive.download_paths() {
        let url = format!("{base}{path}");
        let name = path.rsplit('/').next().unwrap_or("download");
        let local = downloads.join(name);
        on_progress(&Progress::Downloading { url: url.clone() });
        let sha = download(agent, &url, &local, &hint)?;
        match fetch_checksums::download(path).and_then(|d| d.sha256) {
            Some(expected) if expected != sha => {
                return Err(Error::Checksum {
                    file: url.clone(),
                    source_url: url,
                    expected: expected.to_string(),
                    actual: sha,
                });
            }
            Some(_) => report.verified.push(url.clone()),
            None => {
                on_progress(&Progress::Unverified {
                    file: url.clone(),
                    sha256: sha,
                });
                report.unverified.push(url.clone());
            }
        }
        files.push((url, local));
    }
    let source_url = files
        .iter()
        .map(|(u, _)| u.as_str())
        .collect::<Vec<_>>()
        .join(", ");

    // Build the task directory in staging.
    match archive.source {
        Source::Zip(_) => {
            extract_zip(&files[0].1, &extract, &files[0].0)?;
            if !new_dir.is_dir() {
                return Err(Error::Invalid(format!(
                    "{}: the archive has no {}/ directory; {}",
                    files[0].0,
                    archive.dir,
                    hint()
                )));
            }
        }
        Source::File { name, .. } => {
            std::fs::create_dir_all(&new_dir).map_err(io_err(&new_dir))?;
            let to = new_dir.join(name);
            std::fs::rename(&files[0].1, &to).map_err(io_err(&to))?;
        }
        Source::Mrpc => {
            std::fs::create_dir_all(&new_dir).map_err(io_err(&new_dir))?;
            let read = |p: &Path| -> Result<String> {
                let bytes = std::fs::read(p).map_err(io_err(p))?;
                String::from_utf8(bytes).map_err(|_| Error::Format {
                    path: p.to_path_buf(),
                    line: 0,
                    message: "not valid UTF-8".into(),
                })
            };
            let train = read(&files[0].1)?;
            let test = read(&files[1].1)?;
            let ids = read(&files[2].1)?;
            let out = format_mrpc(&train, &test, &ids)
                .map_err(|e| Error::Invalid(format!("MRPC from {source_url}: {e}")))?;
            for (name, body) in [
                ("train.tsv", &out.train),
                ("dev.tsv", &out.dev),
                ("test.tsv", &out.test),
            ] {
                write_synced(&new_dir.join(name), body.as_bytes())?;
            }
            for ((_, local), (_, name)) in files.iter().zip(MRPC_DOWNLOADS) {
                let to = new_dir.join(name);
                std::fs::rename(local, &to).map_err(io_err(&to))?;
            }
        }
    }

    // Every expected file must be there.
    let missing: Vec<&str> = archive
        .expected_files()
        .into_iter()
        .filter(|f| !new_dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Invalid(format!(
            "{source_url}: lacks {} (expected in {}/); nothing was installed; {}",
            missing.join(", "),
            archive.dir,
            hint()
        )));
    }

    // Verify every file against its recorded checksum; warn about those without one.
    let rel_root = format!("{}/{}", archive.benchmark.name(), archive.dir);
    let mut verified = Vec::new();
    let mut unverified = Vec::new();
    for path in walk_files(&new_dir)? {
        let rel = path
            .strip_prefix(&new_dir)
            .unwrap_or(&path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let rel = format!("{rel_root}/{rel}");
        let sha = sha256_file(&path)?;
        match fetch_checksums::file(&rel).and_then(|f| f.sha256) {
            Some(expected) if expected != sha => {
                return Err(Error::Checksum {
                    file: rel,
                    source_url,
                    expected: expected.to_string(),
                    actual: sha,
                });
            }
            Some(_) => verified.push(rel),
            None => unverified.push((rel, sha)),
        }
    }
    for rel in verified {
        on_progress(&Progress::Verified { file: rel.clone() });
        report.verified.push(rel);
    }
    for (rel, sha256) in unverified {
        on_progress(&Progress::Unverified {
            file: rel.clone(),
            sha256,
        });
        report.unverified.push(rel);
    }

    // Install: move an existing directory aside into staging, rename the new one into place.
    let target = archive.target(&opts.dest);
    let replaced = target.symlink_metadata().is_ok();
    if replaced {
        let old = staging.path().join("old");
        std::fs::rename(&target, &old).map_err(io_err(&target))?;
    }
    std::fs::rename(&new_dir, &target).map_err(io_err(&target))?;
    if let Ok(d) = File::open(&bench_dir) {
        let _ = d.sync_all();
    }
    on_progress(&Progress::Installed {
        dir: target.clone(),
        replaced,
    });
    report.installed.push(target);
    Ok(())
}

/// Downloads `url` to `to` (fsynced); returns its sha256.
fn download(
    agent: &ureq::Agent,
    url: &str,
    to: &Path,
    hint: &dyn Fn() -> String,
) -> Result<String> {
    let fail = |message: String| Error::Download {
        url: url.to_string(),
        message,
        hint: hint(),
    };
    let response = agent.get(url).call().map_err(|e| {
        fail(match e {
            ureq::Error::StatusCode(code) => format!("HTTP status {code}"),
            ureq::Error::Timeout(what) => format!("timed out ({what})"),
            other => other.to_string(),
        })
    })?;
    let mut body = response.into_body().into_reader();
    let mut file = File::create(to).map_err(io_err(to))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match body.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(format!("transfer failed: {e}"))),
        };
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(io_err(to))?;
    }
    file.sync_all().map_err(io_err(to))?;
    Ok(hex(&h.finalize()))
}

/// Writes a file and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Unpacks every regular file of a zip under `into`, refusing entries whose names would leave
/// it (absolute paths, `..`) and skipping symbolic links and `__MACOSX/` resource forks.
fn extract_zip(zip_path: &Path, into: &Path, url: &str) -> Result<()> {
    let bad = |message: String| Error::Format {
        path: PathBuf::from(url),
        line: 0,
        message,
    };
    let file = File::open(zip_path).map_err(io_err(zip_path))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| bad(format!("not a readable zip archive: {e}")))?;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| bad(format!("zip entry {i}: {e}")))?;
        let Some(rel) = entry.enclosed_name() else {
            return Err(bad(format!(
                "zip entry {i} has an unsafe name ({:?})",
                entry.name().map(|n| n.into_owned()).unwrap_or_default()
            )));
        };
        if rel.starts_with("__MACOSX") || entry.is_symlink() {
            continue;
        }
        let out = into.join(&rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&out).map_err(io_err(&out))?;
            continue;
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut f = File::create(&out).map_err(io_err(&out))?;
        std::io::copy(&mut entry, &mut f)
            .map_err(|e| bad(format!("{}: cannot extract: {e}", rel.display())))?;
        f.sync_all().map_err(io_err(&out))?;
    }
    Ok(())
}

/// Every regular file under `dir`, sorted.
fn walk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let ty = entry.file_type().map_err(io_err(&entry.path()))?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// MRPC's three files as `download_glue_data.py` writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MrpcFiles {
    /// `train.tsv`: the header of `msr_paraphrase_train.txt` (BOM included), then its rows
    /// whose id pair is not a dev id.
    pub train: String,
    /// `dev.tsv`: the same header, then the rows whose id pair is a dev id.
    pub dev: String,
    /// `test.tsv`: `index\t#1 ID\t#2 ID\t#1 String\t#2 String`, then one row per test pair
    /// numbered from 0 (the label column dropped).
    pub test: String,
}

/// Python's `str.isspace`: Unicode White_Space plus the separators U+001C–U+001F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Lines as Python's text mode reads them (universal newlines: `\r\n`, `\r` and `\n` all end a
/// line and read as `\n`), each with its `\n` when it had one.
fn py_lines(text: &str) -> Vec<String> {
    let normalised = text.replace("\r\n", "\n").replace('\r', "\n");
    normalised
        .split_inclusive('\n')
        .map(|s| s.to_string())
        .collect()
}

/// Splits a row like the script (`row.strip().split('\t')` into five fields).
fn mrpc_row<'a>(
    file: &str,
    line: usize,
    row: &'a str,
) -> std::result::Result<[&'a str; 5], String> {
    let fields: Vec<&str> = row.trim_matches(py_space).split('\t').collect();
    <[&str; 5]>::try_from(fields.as_slice()).map_err(|_| {
        format!(
            "{file} line {line}: expected 5 tab-separated fields, found {}",
            fields.len()
        )
    })
}

/// Splits SentEval's MRPC files into GLUE's `train.tsv`, `dev.tsv` and `test.tsv`, exactly as
/// `format_mrpc` in `download_glue_data.py` does: files read as UTF-8 text (a BOM is kept as
/// part of the header), universal newlines, each row stripped of surrounding whitespace and
/// split on tabs into `label, id1, id2, s1, s2`; a training row goes to dev when `[id1, id2]`
/// is a line of `dev_ids`. Errors name the file and line of a row without five fields (where
/// the script raises `ValueError`).
pub fn format_mrpc(
    train_txt: &str,
    test_txt: &str,
    dev_ids_tsv: &str,
) -> std::result::Result<MrpcFiles, String> {
    let mut test = String::from("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n");
    for (idx, row) in py_lines(test_txt).iter().skip(1).enumerate() {
        let [_, id1, id2, s1, s2] = mrpc_row("msr_paraphrase_test.txt", idx + 2, row)?;
        test.push_str(&format!("{idx}\t{id1}\t{id2}\t{s1}\t{s2}\n"));
    }
    let dev_ids: HashSet<Vec<String>> = py_lines(dev_ids_tsv)
        .iter()
        .map(|r| {
            r.trim_matches(py_space)
                .split('\t')
                .map(str::to_string)
                .collect()
        })
        .collect();
    let lines = py_lines(train_txt);
    let header = lines.first().cloned().unwrap_or_default();
    let mut train = header.clone();
    let mut dev = header;
    for (i, row) in lines.iter().enumerate().skip(1) {
        let [label, id1, id2, s1, s2] = mrpc_row("msr_paraphrase_train.txt", i + 1, row)?;
        let out = if dev_ids.contains(&vec![id1.to_string(), id2.to_string()]) {
            &mut dev
        } else {
            &mut train
        };
        out.push_str(&format!("{label}\t{id1}\t{id2}\t{s1}\t{s2}\n"));
    }
    Ok(MrpcFiles { train, dev, test })
}
