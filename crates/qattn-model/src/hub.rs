//! Resolving a model — a local directory or a Hugging Face Hub repository id — to its files.
//!
//! [`resolve`] turns what a user typed (`./my-model`, `bert-base-uncased`,
//! `sentence-transformers/all-MiniLM-L6-v2@main`) into a [`ModelFiles`]: the `config.json`, the
//! weights (one `model.safetensors`, the shards named by `model.safetensors.index.json`, or a
//! `pytorch_model.bin`), the `tokenizer.json` and the optional `qattn.json`.
//!
//! # Local directories
//!
//! An existing directory is used as is and never downloaded into. Anything missing is reported
//! at once, every missing file in one [`Error::MissingFiles`].
//!
//! # Hub repositories and the cache
//!
//! A repository id is looked up, read-only, in the Hugging Face cache layout
//! (`models--{org}--{name}/refs/{revision}` holds a commit, the files lie in
//! `models--{org}--{name}/snapshots/{commit}/`; without a ref file the revision itself names
//! the snapshot folder). The lookup never creates, locks or modifies anything, so the cache may
//! be a read-only directory. The cache directories searched, in this order ([`cache_dirs`]):
//!
//! 1. with an explicit cache directory (`--cache-dir`, [`HubOptions::cache_dir`]) only that
//!    directory and its `hub` subdirectory; otherwise
//! 2. `$HF_HUB_CACHE`, if set;
//! 3. `$HF_HOME/hub`, if `HF_HOME` is set;
//! 4. `$HF_HOME` itself, if set (some setups put `models--*` folders directly under it);
//! 5. only when neither `HF_HUB_CACHE` nor `HF_HOME` is set: `$XDG_CACHE_HOME/huggingface/hub`,
//!    or else `~/.cache/huggingface/hub`.
//!
//! Empty variables count as unset and duplicates are dropped. The first directory that holds
//! the repository's folder is used.
//!
//! # Downloads
//!
//! Files missing from the cache are downloaded with `hf-hub` into that directory (or into the
//! first candidate when none has the repository), unless [`HubOptions::offline`] is set
//! (`HF_HUB_OFFLINE=1` or `--offline`): then resolution fails with [`Error::MissingFiles`]
//! without touching the network. `HF_TOKEN` and `HF_ENDPOINT` are honoured.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, MissingFiles, Result};

/// The model configuration file.
const CONFIG: &str = "config.json";
/// A single-file safetensors checkpoint.
const SAFETENSORS: &str = "model.safetensors";
/// The index of a sharded safetensors checkpoint.
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
/// A PyTorch pickle checkpoint.
const PYTORCH_BIN: &str = "pytorch_model.bin";
/// The tokenizer.
const TOKENIZER: &str = "tokenizer.json";
/// qattn's own per-model settings (optional).
const QATTN: &str = "qattn.json";
/// How a missing checkpoint is listed: any one of the alternatives will do.
const WEIGHTS_ALTERNATIVES: &str =
    "model.safetensors | model.safetensors.index.json | pytorch_model.bin";
/// The `reason` of [`MissingFiles`] in offline mode.
const OFFLINE_REASON: &str = "offline mode (HF_HUB_OFFLINE or --offline)";

/// How [`resolve`] finds and fetches Hub models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// An explicit cache directory (`--cache-dir`); `None` follows the environment
    /// (see the [module docs](self)).
    pub cache_dir: Option<PathBuf>,
    /// The revision (branch, tag or commit) used when the model id has no `@revision` suffix.
    /// Default `"main"`.
    pub revision: String,
    /// Never download: files missing from the cache are an error. Default: the environment
    /// variable `HF_HUB_OFFLINE` is one of `1`, `true`, `yes`, `on` (any case).
    pub offline: bool,
    /// Show progress bars while downloading. Default `true`.
    pub progress: bool,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            cache_dir: None,
            revision: "main".to_string(),
            offline: env_flag(std::env::var("HF_HUB_OFFLINE").ok().as_deref()),
            progress: true,
        }
    }
}

impl HubOptions {
    /// The options the environment asks for; the same as [`HubOptions::default`]
    /// (which reads `HF_HUB_OFFLINE`).
    pub fn from_env() -> Self {
        Self::default()
    }
}

/// Whether an environment flag's value means "on": `1`, `true`, `yes` or `on`, any case,
/// surrounding whitespace ignored.
fn env_flag(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim();
        ["1", "true", "yes", "on"]
            .iter()
            .any(|on| v.eq_ignore_ascii_case(on))
    })
}

/// A model's weights file(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsFile {
    /// `model.safetensors`, or the shards listed in `model.safetensors.index.json` (sorted by
    /// file name, each once).
    Safetensors(Vec<PathBuf>),
    /// `pytorch_model.bin`.
    PytorchBin(PathBuf),
}

/// The files of a resolved model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// The model id or directory as given to [`resolve`].
    pub source: String,
    /// The directory holding the files: the local directory, or the cache snapshot directory.
    pub dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// The weights.
    pub weights: WeightsFile,
    /// `tokenizer.json`, when present (always present when a tokenizer was asked for).
    pub tokenizer: Option<PathBuf>,
    /// `qattn.json`, when present.
    pub qattn: Option<PathBuf>,
}

/// Resolves `model` — an existing directory, or a Hub repository id `org/name` or `name` with
/// an optional `@revision` suffix — to its files, downloading missing ones unless
/// `opts.offline`.
///
/// `config.json` and a checkpoint are always required; `tokenizer.json` only when
/// `need_tokenizer`; `qattn.json` is optional. Errors:
/// [`Error::MissingFiles`] lists every missing file of a local directory, or of the cache in
/// offline mode; [`Error::File`] for a path that does not exist or a malformed
/// `model.safetensors.index.json`; [`Error::Input`] for a malformed repository id;
/// [`Error::Download`] when downloading fails.
pub fn resolve(model: &str, opts: &HubOptions, need_tokenizer: bool) -> Result<ModelFiles> {
    if model.trim().is_empty() {
        return Err(Error::Input(
            "empty model: give a local directory or a Hugging Face Hub repository id such as \
             `sentence-transformers/all-MiniLM-L6-v2`"
                .into(),
        ));
    }
    let path = expand_tilde(model);
    if path.is_dir() {
        return resolve_local(model, &path, need_tokenizer);
    }
    if looks_like_path(model) {
        let message = if path.exists() {
            "not a directory: give the model's directory (with config.json and the weights)"
        } else {
            "no such directory"
        };
        return Err(Error::file(path, message));
    }
    let (id, revision) = parse_repo_id(model, &opts.revision)?;
    let candidates = cache_dirs(opts.cache_dir.as_deref());
    resolve_hub(model, &id, &revision, &candidates, opts, need_tokenizer)
}

/// The cache directories to search, in order (see the [module docs](self)): `explicit` and
/// `explicit/hub` when given, otherwise from `HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME` and
/// `HOME`.
pub fn cache_dirs(explicit: Option<&Path>) -> Vec<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    cache_dirs_from(
        explicit,
        var("HF_HUB_CACHE"),
        var("HF_HOME"),
        var("XDG_CACHE_HOME"),
        var("HOME"),
    )
}

/// [`cache_dirs`] as a pure function of the environment's values (`None` = unset).
fn cache_dirs_from(
    explicit: Option<&Path>,
    hf_hub_cache: Option<PathBuf>,
    hf_home: Option<PathBuf>,
    xdg_cache_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = explicit {
        dirs.push(dir.to_path_buf());
        dirs.push(dir.join("hub"));
    } else {
        let nonempty = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        let (hf_hub_cache, hf_home) = (nonempty(hf_hub_cache), nonempty(hf_home));
        let defaults = hf_hub_cache.is_none() && hf_home.is_none();
        dirs.extend(hf_hub_cache);
        if let Some(hf_home) = hf_home {
            dirs.push(hf_home.join("hub"));
            dirs.push(hf_home);
        }
        if defaults {
            if let Some(xdg) = nonempty(xdg_cache_home) {
                dirs.push(xdg.join("huggingface").join("hub"));
            } else if let Some(home) = nonempty(home) {
                dirs.push(home.join(".cache").join("huggingface").join("hub"));
            }
        }
    }
    let mut unique: Vec<PathBuf> = Vec::with_capacity(dirs.len());
    for dir in dirs {
        if !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

/// `~` and `~/…` with `$HOME` put in; anything else unchanged.
fn expand_tilde(model: &str) -> PathBuf {
    let rest = if model == "~" {
        Some("")
    } else {
        model.strip_prefix("~/")
    };
    match (rest, std::env::var_os("HOME").filter(|h| !h.is_empty())) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(model),
    }
}

/// Whether `model` is meant as a filesystem path rather than a repository id.
fn looks_like_path(model: &str) -> bool {
    let is_sep = |c: char| c == '/' || std::path::is_separator(c);
    let has_sep = model.chars().any(is_sep);
    (has_sep && (model.starts_with(['.', '/', '~']) || Path::new(model).is_absolute()))
        || model.ends_with(is_sep)
        || model == "."
        || model == ".."
        || model == "~"
}

/// Splits `org/name@revision` into a validated id and revision (`default_revision` without a
/// suffix).
fn parse_repo_id(model: &str, default_revision: &str) -> Result<(String, String)> {
    let (id, revision) = match model.split_once('@') {
        Some((id, revision)) => (id, revision),
        None => (model, default_revision),
    };
    let bad_id = |why: &str| {
        Error::Input(format!(
            "{model:?} is neither an existing directory nor a valid Hugging Face Hub repository \
             id ({why}); expected `org/name` or `name`, optionally followed by `@revision`"
        ))
    };
    if id.is_empty() {
        return Err(bad_id("the id is empty"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(bad_id(&format!(
            "{c:?} is not allowed; use letters, digits, `.`, `_`, `-` and one `/`"
        )));
    }
    if id.matches('/').count() > 1 {
        return Err(bad_id("more than one `/`"));
    }
    for part in id.split('/') {
        if part.is_empty() {
            return Err(bad_id("empty organisation or name"));
        }
        if part.contains("--") || part.contains("..") {
            return Err(bad_id("`--` and `..` are not allowed"));
        }
    }
    if revision.is_empty() {
        return Err(Error::Input(format!("{model:?}: empty revision after `@`")));
    }
    let bad_revision = revision
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
        || revision
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad_revision {
        return Err(Error::Input(format!(
            "{model:?}: invalid revision {revision:?}; expected a branch, tag or commit such as \
             `main`"
        )));
    }
    Ok((id.to_string(), revision.to_string()))
}

/// The cache folder of a model repository: `models--{org}--{name}`.
fn repo_folder(id: &str) -> String {
    format!("models--{}", id.replace('/', "--"))
}

/// What a directory holds of the files a model needs.
#[derive(Debug)]
struct Scan {
    /// `config.json`, when present.
    config: Option<PathBuf>,
    /// The checkpoint.
    weights: WeightsScan,
    /// `tokenizer.json`, when present.
    tokenizer: Option<PathBuf>,
    /// `qattn.json`, when present.
    qattn: Option<PathBuf>,
}

/// What a directory holds of a checkpoint.
#[derive(Debug)]
enum WeightsScan {
    /// A complete checkpoint.
    Found(WeightsFile),
    /// `model.safetensors.index.json` with some of its shards missing.
    Shards {
        /// The index file.
        index: PathBuf,
        /// The shard file names, sorted, each once.
        shards: Vec<String>,
    },
    /// No checkpoint at all.
    Missing,
}

impl Scan {
    /// The missing files, in the order config, weights (or missing shards), tokenizer.
    fn missing(&self, need_tokenizer: bool) -> Vec<String> {
        let mut missing = Vec::new();
        if self.config.is_none() {
            missing.push(CONFIG.to_string());
        }
        match &self.weights {
            WeightsScan::Found(_) => {}
            WeightsScan::Shards { index, shards } => {
                let dir = parent(index);
                missing.extend(shards.iter().filter(|s| !is_file(&dir.join(s))).cloned());
            }
            WeightsScan::Missing => missing.push(WEIGHTS_ALTERNATIVES.to_string()),
        }
        if need_tokenizer && self.tokenizer.is_none() {
            missing.push(TOKENIZER.to_string());
        }
        missing
    }

    /// The files, once [`Scan::missing`] is empty.
    fn into_files(self, source: &str, dir: PathBuf) -> Option<ModelFiles> {
        let weights = match self.weights {
            WeightsScan::Found(w) => w,
            WeightsScan::Shards { index, shards } => {
                let dir = parent(&index);
                WeightsFile::Safetensors(shards.iter().map(|s| dir.join(s)).collect())
            }
            WeightsScan::Missing => return None,
        };
        Some(ModelFiles {
            source: source.to_string(),
            dir,
            config: self.config?,
            weights,
            tokenizer: self.tokenizer,
            qattn: self.qattn,
        })
    }
}

/// The directory a file lies in (`.` for a bare name).
fn parent(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether `path` is a file (following symbolic links, so a dangling cache link is missing).
fn is_file(path: &Path) -> bool {
    path.is_file()
}

/// `dir/name` when it is a file.
fn file_in(dir: &Path, name: &str) -> Option<PathBuf> {
    let path = dir.join(name);
    is_file(&path).then_some(path)
}

/// Looks at what `dir` holds, read-only. A nonexistent `dir` holds nothing.
fn scan_dir(dir: &Path) -> Result<Scan> {
    let weights = if let Some(st) = file_in(dir, SAFETENSORS) {
        WeightsScan::Found(WeightsFile::Safetensors(vec![st]))
    } else if let Some(index) = file_in(dir, SAFETENSORS_INDEX) {
        let shards = read_index(&index)?;
        if shards.iter().all(|s| is_file(&dir.join(s))) {
            WeightsScan::Found(WeightsFile::Safetensors(
                shards.iter().map(|s| dir.join(s)).collect(),
            ))
        } else {
            WeightsScan::Shards { index, shards }
        }
    } else if let Some(bin) = file_in(dir, PYTORCH_BIN) {
        WeightsScan::Found(WeightsFile::PytorchBin(bin))
    } else {
        WeightsScan::Missing
    };
    Ok(Scan {
        config: file_in(dir, CONFIG),
        weights,
        tokenizer: file_in(dir, TOKENIZER),
        qattn: file_in(dir, QATTN),
    })
}

/// The shard file names of a `model.safetensors.index.json` (the values of its `weight_map`),
/// sorted, each once. Shard names must be relative paths inside the model directory.
fn read_index(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::file(index, format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::file(index, "no `weight_map` object"))?;
    let mut shards = BTreeSet::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| {
            Error::file(
                index,
                format!("weight_map[{tensor:?}] is {shard}, expected a file name"),
            )
        })?;
        let inside = !shard.is_empty()
            && Path::new(shard)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !inside {
            return Err(Error::file(
                index,
                format!(
                    "weight_map[{tensor:?}] = {shard:?} is not a file name inside the model \
                     directory"
                ),
            ));
        }
        shards.insert(shard.to_string());
    }
    if shards.is_empty() {
        return Err(Error::file(index, "`weight_map` is empty"));
    }
    Ok(shards.into_iter().collect())
}

/// A local model directory: everything must be there.
fn resolve_local(model: &str, dir: &Path, need_tokenizer: bool) -> Result<ModelFiles> {
    let scan = scan_dir(dir)?;
    let missing = scan.missing(need_tokenizer);
    if !missing.is_empty() {
        return Err(Error::MissingFiles(MissingFiles {
            model: model.to_string(),
            searched: vec![dir.to_path_buf()],
            files: missing,
            reason: "local directory".into(),
        }));
    }
    scan.into_files(model, dir.to_path_buf())
        .ok_or_else(|| Error::Input(format!("{model}: incomplete model directory")))
}

/// Where a repository lies in a cache directory.
#[derive(Debug)]
struct CachedRepo {
    /// The index of the cache directory among the candidates.
    index: usize,
    /// The snapshot directory for the revision (it may not exist).
    snapshot: PathBuf,
}

/// Finds the first candidate holding the repository's folder and the snapshot directory of
/// `revision` in it. Read-only.
fn find_cached(candidates: &[PathBuf], id: &str, revision: &str) -> Result<Option<CachedRepo>> {
    let folder = repo_folder(id);
    for (index, cache) in candidates.iter().enumerate() {
        let repo = cache.join(&folder);
        if !repo.is_dir() {
            continue;
        }
        let ref_file = repo.join("refs").join(revision);
        let commit = if ref_file.is_file() {
            let text = std::fs::read_to_string(&ref_file).map_err(|e| Error::io(&ref_file, e))?;
            let commit = text.trim().to_string();
            let single = !commit.is_empty()
                && Path::new(&commit)
                    .components()
                    .eq([Component::Normal(commit.as_ref())]);
            if !single {
                return Err(Error::file(
                    &ref_file,
                    format!("expected a commit hash, found {commit:?}"),
                ));
            }
            commit
        } else {
            revision.to_string()
        };
        return Ok(Some(CachedRepo {
            index,
            snapshot: repo.join("snapshots").join(commit),
        }));
    }
    Ok(None)
}

/// A Hub repository: the cache first, then (unless offline) downloads.
fn resolve_hub(
    model: &str,
    id: &str,
    revision: &str,
    candidates: &[PathBuf],
    opts: &HubOptions,
    need_tokenizer: bool,
) -> Result<ModelFiles> {
    let cached = find_cached(candidates, id, revision)?;
    let scan = match &cached {
        Some(c) => scan_dir(&c.snapshot)?,
        None => Scan {
            config: None,
            weights: WeightsScan::Missing,
            tokenizer: None,
            qattn: None,
        },
    };
    let missing = scan.missing(need_tokenizer);
    if missing.is_empty() {
        let dir = cached.map(|c| c.snapshot).unwrap_or_default();
        return scan
            .into_files(model, dir)
            .ok_or_else(|| Error::Input(format!("{model}: incomplete cache snapshot")));
    }
    if opts.offline {
        let searched = match &cached {
            Some(c) => candidates[..=c.index].to_vec(),
            None => candidates.to_vec(),
        };
        return Err(Error::MissingFiles(MissingFiles {
            model: model.to_string(),
            searched,
            files: missing,
            reason: OFFLINE_REASON.into(),
        }));
    }
    let target = match (&cached, candidates.first()) {
        (Some(c), _) => candidates[c.index].clone(),
        (None, Some(first)) => first.clone(),
        (None, None) => {
            return Err(Error::Download {
                repo: id.to_string(),
                file: missing.join(", "),
                message: "no cache directory to download into: set HF_HOME or HF_HUB_CACHE, \
                          or pass --cache-dir"
                    .into(),
            });
        }
    };
    download_missing(
        model,
        id,
        revision,
        &target,
        scan,
        need_tokenizer,
        opts.progress,
    )
}

/// Downloads what `scan` lacks into the cache directory `target`.
fn download_missing(
    model: &str,
    id: &str,
    revision: &str,
    target: &Path,
    scan: Scan,
    need_tokenizer: bool,
    progress: bool,
) -> Result<ModelFiles> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};

    let download_error = |file: &str, message: &str| Error::Download {
        repo: id.to_string(),
        file: file.to_string(),
        message: format!("{message} (cache directory {})", target.display()),
    };
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mut builder =
        ApiBuilder::from_cache(Cache::new(target.to_path_buf())).with_progress(progress);
    if let Some(token) = env("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    if let Some(endpoint) = env("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    let api = builder
        .build()
        .map_err(|e| download_error(CONFIG, &e.to_string()))?;
    let repo = api.repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let try_fetch = |file: &str| repo.get(file).map_err(|e| e.to_string());
    let fetch = |file: &str| try_fetch(file).map_err(|e| download_error(file, &e));

    let config = match scan.config {
        Some(p) => p,
        None => fetch(CONFIG)?,
    };
    let weights = match scan.weights {
        WeightsScan::Found(w) => w,
        WeightsScan::Shards { index, shards } => fetch_shards(&index, &shards, &fetch)?,
        WeightsScan::Missing => {
            let mut failures = Vec::new();
            let mut found = None;
            match try_fetch(SAFETENSORS) {
                Ok(p) => found = Some(WeightsFile::Safetensors(vec![p])),
                Err(e) => failures.push(format!("{SAFETENSORS}: {e}")),
            }
            if found.is_none() {
                match try_fetch(SAFETENSORS_INDEX) {
                    Ok(index) => {
                        let shards = read_index(&index)?;
                        found = Some(fetch_shards(&index, &shards, &fetch)?);
                    }
                    Err(e) => failures.push(format!("{SAFETENSORS_INDEX}: {e}")),
                }
            }
            if found.is_none() {
                match try_fetch(PYTORCH_BIN) {
                    Ok(p) => found = Some(WeightsFile::PytorchBin(p)),
                    Err(e) => failures.push(format!("{PYTORCH_BIN}: {e}")),
                }
            }
            match found {
                Some(w) => w,
                None => {
                    return Err(download_error(
                        WEIGHTS_ALTERNATIVES,
                        &format!("no checkpoint could be downloaded: {}", failures.join("; ")),
                    ));
                }
            }
        }
    };
    let tokenizer = match scan.tokenizer {
        Some(p) => Some(p),
        None if need_tokenizer => Some(fetch(TOKENIZER)?),
        None => None,
    };
    // qattn.json is optional: most repositories do not have one.
    let qattn = scan.qattn.or_else(|| try_fetch(QATTN).ok());
    Ok(ModelFiles {
        source: model.to_string(),
        dir: parent(&config),
        config,
        weights,
        tokenizer,
        qattn,
    })
}

/// The shards of `index` (beside it, or downloaded when missing), in the order of `shards`.
fn fetch_shards(
    index: &Path,
    shards: &[String],
    fetch: &dyn Fn(&str) -> Result<PathBuf>,
) -> Result<WeightsFile> {
    let dir = parent(index);
    let paths = shards
        .iter()
        .map(|shard| match file_in(&dir, shard) {
            Some(p) => Ok(p),
            None => fetch(shard),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(WeightsFile::Safetensors(paths))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `content` to `path`, creating its parents.
    fn write(path: &Path, content: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// A cache repository folder for `id` under `cache`: `refs/{rev}` → `commit` for each
    /// `(rev, commit)` in `refs`, and `files` in `snapshots/{commit}` for each `(commit, files)`.
    fn fake_repo(cache: &Path, id: &str, refs: &[(&str, &str)], snapshots: &[(&str, &[&str])]) {
        let repo = cache.join(repo_folder(id));
        std::fs::create_dir_all(&repo).unwrap();
        for (rev, commit) in refs {
            write(&repo.join("refs").join(rev), &format!("{commit}\n"));
        }
        for (commit, files) in snapshots {
            for file in *files {
                write(&repo.join("snapshots").join(commit).join(file), "{}");
            }
        }
    }

    fn offline(cache: &Path) -> HubOptions {
        HubOptions {
            cache_dir: Some(cache.to_path_buf()),
            revision: "main".into(),
            offline: true,
            progress: false,
        }
    }

    /// Every file and directory under `dir`, sorted.
    fn listing(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path.clone());
                }
                out.push(path);
            }
        }
        out.sort();
        out
    }

    fn missing_files(err: Error) -> MissingFiles {
        match err {
            Error::MissingFiles(m) => m,
            other => panic!("expected MissingFiles, got {other:?}"),
        }
    }

    const FULL: &[&str] = &[CONFIG, SAFETENSORS, TOKENIZER];

    #[test]
    fn env_flag_values() {
        for on in ["1", "true", "TRUE", "Yes", "on", " on "] {
            assert!(env_flag(Some(on)), "{on:?}");
        }
        for off in ["0", "false", "no", "off", "", "2", "enabled"] {
            assert!(!env_flag(Some(off)), "{off:?}");
        }
        assert!(!env_flag(None));
    }

    #[test]
    fn cache_dirs_explicit_takes_precedence() {
        let p = PathBuf::from;
        let dirs = cache_dirs_from(
            Some(Path::new("/x")),
            Some(p("/hub")),
            Some(p("/home-hf")),
            Some(p("/xdg")),
            Some(p("/home")),
        );
        assert_eq!(dirs, vec![p("/x"), p("/x/hub")]);
    }

    #[test]
    fn cache_dirs_env_order_and_defaults() {
        let p = PathBuf::from;
        let all = cache_dirs_from(
            None,
            Some(p("/hub")),
            Some(p("/hf")),
            Some(p("/xdg")),
            Some(p("/home")),
        );
        assert_eq!(all, vec![p("/hub"), p("/hf/hub"), p("/hf")]);
        let home_only = cache_dirs_from(None, None, Some(p("/hf")), None, Some(p("/home")));
        assert_eq!(home_only, vec![p("/hf/hub"), p("/hf")]);
        let xdg = cache_dirs_from(None, None, None, Some(p("/xdg")), Some(p("/home")));
        assert_eq!(xdg, vec![p("/xdg/huggingface/hub")]);
        let home = cache_dirs_from(None, None, None, None, Some(p("/home")));
        assert_eq!(home, vec![p("/home/.cache/huggingface/hub")]);
        // Empty values count as unset.
        let empty = cache_dirs_from(None, Some(p("")), Some(p("")), Some(p("")), Some(p("/h")));
        assert_eq!(empty, vec![p("/h/.cache/huggingface/hub")]);
        assert!(cache_dirs_from(None, None, None, None, None).is_empty());
        // Duplicates are dropped, the first occurrence kept.
        let dup = cache_dirs_from(None, Some(p("/hf/hub/")), Some(p("/hf")), None, None);
        assert_eq!(dup, vec![p("/hf/hub"), p("/hf")]);
    }

    #[test]
    fn repo_ids_and_revisions() {
        let ok = |m: &str| parse_repo_id(m, "main").unwrap();
        assert_eq!(ok("org/name"), ("org/name".into(), "main".into()));
        assert_eq!(
            ok("bert-base-uncased"),
            ("bert-base-uncased".into(), "main".into())
        );
        assert_eq!(
            ok("org/na.me_1@v1.0"),
            ("org/na.me_1".into(), "v1.0".into())
        );
        assert_eq!(
            ok("org/name@refs/pr/1"),
            ("org/name".into(), "refs/pr/1".into())
        );
        assert_eq!(
            parse_repo_id("org/name", "dev").unwrap(),
            ("org/name".into(), "dev".into())
        );
        for bad in [
            "@main",
            "a/b/c",
            "org/na me",
            "org/ñ",
            "org/",
            "/name",
            "a--b/c",
            "a/..",
            "o/n@",
            "o/n@../x",
            "o/n@a b",
        ] {
            let err = parse_repo_id(bad, "main").unwrap_err();
            assert!(matches!(err, Error::Input(_)), "{bad:?}: {err:?}");
            assert!(err.to_string().contains(bad), "{bad:?}: {err}");
        }
    }

    #[test]
    fn path_like_models() {
        for path in ["./m", "../m", "/abs/m", "~/m", "m/", "org/name/", ".", "~"] {
            assert!(looks_like_path(path), "{path:?}");
        }
        for id in ["org/name", "name", "org/name@v1", ".hidden"] {
            assert!(!looks_like_path(id), "{id:?}");
        }
    }

    #[test]
    fn missing_path_is_a_file_error() {
        let tmp = tempfile::tempdir().unwrap();
        let gone = tmp.path().join("no-such-model");
        let err = resolve(&gone.to_string_lossy(), &offline(tmp.path()), true).unwrap_err();
        assert!(matches!(err, Error::File { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("no-such-model") && text.contains("no such directory"),
            "{text}"
        );
    }

    #[test]
    fn empty_model_is_an_input_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = resolve("", &offline(tmp.path()), true).unwrap_err();
        assert!(matches!(err, Error::Input(_)), "{err:?}");
    }

    #[test]
    fn cache_ref_resolves_to_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        fake_repo(
            tmp.path(),
            "org/tiny",
            &[("main", "abc123")],
            &[("abc123", FULL)],
        );
        let before = listing(tmp.path());
        let files = resolve("org/tiny", &offline(tmp.path()), true).unwrap();
        let snap = tmp.path().join("models--org--tiny/snapshots/abc123");
        assert_eq!(files.source, "org/tiny");
        assert_eq!(files.dir, snap);
        assert_eq!(files.config, snap.join(CONFIG));
        assert_eq!(
            files.weights,
            WeightsFile::Safetensors(vec![snap.join(SAFETENSORS)])
        );
        assert_eq!(files.tokenizer, Some(snap.join(TOKENIZER)));
        assert_eq!(files.qattn, None);
        // The lookup is read-only: nothing was created (no locks, no refs).
        assert_eq!(listing(tmp.path()), before);

        write(&snap.join(QATTN), "{}");
        let files = resolve("org/tiny", &offline(tmp.path()), true).unwrap();
        assert_eq!(files.qattn, Some(snap.join(QATTN)));
    }

    #[test]
    fn revision_suffix_and_option() {
        let tmp = tempfile::tempdir().unwrap();
        fake_repo(
            tmp.path(),
            "tiny",
            &[("main", "abc123"), ("v2", "def456")],
            &[("abc123", FULL), ("def456", FULL), ("fedcba", FULL)],
        );
        let snaps = tmp.path().join("models--tiny/snapshots");
        let opts = offline(tmp.path());
        assert_eq!(
            resolve("tiny", &opts, true).unwrap().dir,
            snaps.join("abc123")
        );
        let v2 = resolve("tiny@v2", &opts, true).unwrap();
        assert_eq!(v2.dir, snaps.join("def456"));
        assert_eq!(v2.source, "tiny@v2");
        // Without a ref file the revision names the snapshot folder (a commit hash).
        assert_eq!(
            resolve("tiny@fedcba", &opts, true).unwrap().dir,
            snaps.join("fedcba")
        );
        let opts_v2 = HubOptions {
            revision: "v2".into(),
            ..offline(tmp.path())
        };
        assert_eq!(
            resolve("tiny", &opts_v2, true).unwrap().dir,
            snaps.join("def456")
        );
        // The suffix wins over the option.
        assert_eq!(
            resolve("tiny@main", &opts_v2, true).unwrap().dir,
            snaps.join("abc123")
        );
        // An unknown revision is missing everything.
        let m = missing_files(resolve("tiny@nope", &opts, true).unwrap_err());
        assert_eq!(m.files, vec![CONFIG, WEIGHTS_ALTERNATIVES, TOKENIZER]);
    }

    #[test]
    fn explicit_cache_dir_and_its_hub_subdir() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = tmp.path().join("hub");
        fake_repo(&hub, "org/tiny", &[("main", "abc")], &[("abc", FULL)]);
        let files = resolve("org/tiny", &offline(tmp.path()), true).unwrap();
        assert_eq!(files.dir, hub.join("models--org--tiny/snapshots/abc"));
        // The explicit directory comes first, before its hub subdirectory.
        fake_repo(tmp.path(), "org/tiny", &[("main", "top")], &[("top", FULL)]);
        let files = resolve("org/tiny", &offline(tmp.path()), true).unwrap();
        assert_eq!(
            files.dir,
            tmp.path().join("models--org--tiny/snapshots/top")
        );
    }

    #[test]
    fn first_cache_with_the_repo_folder_is_used() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        fake_repo(&b, "org/tiny", &[("main", "c1")], &[("c1", FULL)]);
        let found = find_cached(&[a.clone(), b.clone()], "org/tiny", "main")
            .unwrap()
            .unwrap();
        assert_eq!(found.index, 1);
        assert_eq!(found.snapshot, b.join("models--org--tiny/snapshots/c1"));
        assert!(find_cached(&[a], "org/tiny", "main").unwrap().is_none());
    }

    #[test]
    fn offline_missing_files_are_listed() {
        let tmp = tempfile::tempdir().unwrap();
        fake_repo(
            tmp.path(),
            "org/tiny",
            &[("main", "abc")],
            &[("abc", &[CONFIG])],
        );
        let before = listing(tmp.path());
        let err = resolve("org/tiny", &offline(tmp.path()), true).unwrap_err();
        assert_eq!(listing(tmp.path()), before);
        let text = err.to_string();
        let m = missing_files(err);
        assert_eq!(m.model, "org/tiny");
        assert_eq!(m.files, vec![WEIGHTS_ALTERNATIVES, TOKENIZER]);
        assert_eq!(m.reason, OFFLINE_REASON);
        assert_eq!(m.searched, vec![tmp.path().to_path_buf()]);
        for name in [
            SAFETENSORS,
            SAFETENSORS_INDEX,
            PYTORCH_BIN,
            TOKENIZER,
            "HF_HUB_OFFLINE",
        ] {
            assert!(text.contains(name), "{name} not in:\n{text}");
        }
        assert!(!text.contains("  - config.json"), "{text}");

        // Without the tokenizer requirement only the weights are missing.
        let m = missing_files(resolve("org/tiny", &offline(tmp.path()), false).unwrap_err());
        assert_eq!(m.files, vec![WEIGHTS_ALTERNATIVES]);
    }

    #[test]
    fn offline_unknown_repo_lists_everything_and_every_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let err = resolve("org/absent", &offline(tmp.path()), true).unwrap_err();
        let text = err.to_string();
        let m = missing_files(err);
        assert_eq!(m.files, vec![CONFIG, WEIGHTS_ALTERNATIVES, TOKENIZER]);
        assert_eq!(
            m.searched,
            vec![tmp.path().to_path_buf(), tmp.path().join("hub")]
        );
        assert!(
            text.contains("org/absent") && text.contains(CONFIG),
            "{text}"
        );
        // Nothing was created.
        assert!(listing(tmp.path()).is_empty());
    }

    #[test]
    fn tokenizer_is_optional_unless_needed() {
        let tmp = tempfile::tempdir().unwrap();
        fake_repo(
            tmp.path(),
            "org/tiny",
            &[("main", "abc")],
            &[("abc", &[CONFIG, PYTORCH_BIN])],
        );
        let files = resolve("org/tiny", &offline(tmp.path()), false).unwrap();
        assert_eq!(files.tokenizer, None);
        assert!(matches!(files.weights, WeightsFile::PytorchBin(_)));
    }

    #[test]
    fn local_dir_lists_every_missing_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_string_lossy().into_owned();
        let err = resolve(&dir, &offline(tmp.path()), true).unwrap_err();
        let text = err.to_string();
        let m = missing_files(err);
        assert_eq!(m.model, dir);
        assert_eq!(m.searched, vec![tmp.path().to_path_buf()]);
        assert_eq!(m.files, vec![CONFIG, WEIGHTS_ALTERNATIVES, TOKENIZER]);
        assert_eq!(m.reason, "local directory");
        for name in [
            CONFIG,
            SAFETENSORS,
            SAFETENSORS_INDEX,
            PYTORCH_BIN,
            TOKENIZER,
        ] {
            assert!(text.contains(name), "{name} not in:\n{text}");
        }
        let m = missing_files(resolve(&dir, &offline(tmp.path()), false).unwrap_err());
        assert_eq!(m.files, vec![CONFIG, WEIGHTS_ALTERNATIVES]);
    }

    #[test]
    fn local_dir_weights_preference() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let dir = d.to_string_lossy().into_owned();
        write(&d.join(CONFIG), "{}");
        write(&d.join(PYTORCH_BIN), "");
        let files = resolve(&dir, &offline(d), false).unwrap();
        assert_eq!(files.weights, WeightsFile::PytorchBin(d.join(PYTORCH_BIN)));
        assert_eq!(files.dir, d);
        assert_eq!(files.config, d.join(CONFIG));
        write(&d.join(SAFETENSORS), "");
        let files = resolve(&dir, &offline(d), false).unwrap();
        assert_eq!(
            files.weights,
            WeightsFile::Safetensors(vec![d.join(SAFETENSORS)])
        );
        write(&d.join(TOKENIZER), "{}");
        write(&d.join(QATTN), "{}");
        let files = resolve(&dir, &offline(d), true).unwrap();
        assert_eq!(files.tokenizer, Some(d.join(TOKENIZER)));
        assert_eq!(files.qattn, Some(d.join(QATTN)));
    }

    #[test]
    fn sharded_index_resolution() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let dir = d.to_string_lossy().into_owned();
        let (s1, s2) = (
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        );
        write(&d.join(CONFIG), "{}");
        write(
            &d.join(SAFETENSORS_INDEX),
            &format!(
                r#"{{"metadata": {{"total_size": 8}},
                    "weight_map": {{"b.weight": "{s2}", "a.weight": "{s1}", "c.bias": "{s1}"}}}}"#
            ),
        );
        write(&d.join(s1), "");
        write(&d.join(PYTORCH_BIN), "");
        // A missing shard is listed by name (pytorch_model.bin does not stand in for it).
        let m = missing_files(resolve(&dir, &offline(d), false).unwrap_err());
        assert_eq!(m.files, vec![s2]);
        write(&d.join(s2), "");
        let files = resolve(&dir, &offline(d), false).unwrap();
        assert_eq!(
            files.weights,
            WeightsFile::Safetensors(vec![d.join(s1), d.join(s2)])
        );

        // The same in a cache snapshot.
        let cache = d.join("cache");
        fake_repo(
            &cache,
            "org/sharded",
            &[("main", "abc")],
            &[("abc", &[CONFIG, SAFETENSORS_INDEX, s1])],
        );
        let snap = cache.join("models--org--sharded/snapshots/abc");
        std::fs::copy(d.join(SAFETENSORS_INDEX), snap.join(SAFETENSORS_INDEX)).unwrap();
        let m = missing_files(resolve("org/sharded", &offline(&cache), false).unwrap_err());
        assert_eq!(m.files, vec![s2]);
        write(&snap.join(s2), "");
        let files = resolve("org/sharded", &offline(&cache), false).unwrap();
        assert_eq!(
            files.weights,
            WeightsFile::Safetensors(vec![snap.join(s1), snap.join(s2)])
        );
    }

    #[test]
    fn malformed_index_is_a_file_error() {
        for (index, why) in [
            ("not json", "invalid JSON"),
            (r#"{"metadata": {}}"#, "weight_map"),
            (r#"{"weight_map": {}}"#, "empty"),
            (r#"{"weight_map": {"a": 3}}"#, "file name"),
            (r#"{"weight_map": {"a": "../x.safetensors"}}"#, "inside"),
            (r#"{"weight_map": {"a": "/etc/x.safetensors"}}"#, "inside"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let d = tmp.path();
            write(&d.join(CONFIG), "{}");
            write(&d.join(SAFETENSORS_INDEX), index);
            let err = resolve(&d.to_string_lossy(), &offline(d), false).unwrap_err();
            assert!(matches!(err, Error::File { .. }), "{index}: {err:?}");
            let text = err.to_string();
            assert!(
                text.contains(SAFETENSORS_INDEX) && text.contains(why),
                "{index}: {text}"
            );
        }
    }

    #[test]
    fn bad_ref_is_a_file_error() {
        let tmp = tempfile::tempdir().unwrap();
        fake_repo(tmp.path(), "org/tiny", &[("main", "../../etc")], &[]);
        let err = resolve("org/tiny", &offline(tmp.path()), true).unwrap_err();
        assert!(matches!(err, Error::File { .. }), "{err:?}");
        assert!(err.to_string().contains("refs"), "{err}");
    }
}
