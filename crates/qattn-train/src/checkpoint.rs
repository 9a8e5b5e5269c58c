//! Crash-safe training checkpoints.
//!
//! A checkpoint is a directory `ROOT/checkpoint-{step}` (the step in decimal, no padding):
//!
//! | file | content |
//! |------|---------|
//! | `config.json`, `model.safetensors`, `qattn.json`, `tokenizer.json` | the model, written by [`Model::save_pretrained`] (`tokenizer.json` only when the model has one) |
//! | [`OPTIMIZER_FILE`] | the optimiser's named f32 tensors (e.g. `exp_avg.<param>`), bit-exact |
//! | [`STATE_FILE`] | the trainer's state, an opaque JSON value |
//! | [`MANIFEST_FILE`] | `{"format_version":1, "step":N, "files":{"<name>":{"bytes":n,"sha256":"<hex>"},…}}` over every other file |
//!
//! [`CheckpointManager::save`] builds the whole directory under a temporary name
//! (`ROOT/.tmp-checkpoint-{step}-{pid}`), fsyncs every file, writes the manifest last, fsyncs
//! the directory and only then renames it to `checkpoint-{step}`; old checkpoints are renamed
//! aside before they are deleted. A `checkpoint-{step}` name therefore never shows a
//! half-written or half-deleted checkpoint, whenever the writer is killed. The manifest's sizes
//! and SHA-256 digests catch what a crash cannot explain (a damaged disk, a hand edit, a
//! partial copy): [`CheckpointManager::latest_good`] resumes from the newest checkpoint that
//! verifies and reports the newer ones it skipped.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use qattn_model::Model;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

/// Version of `manifest.json` this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest: sizes and SHA-256 digests of every other file, written last.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The optimiser's tensors.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The trainer's state.
pub const STATE_FILE: &str = "trainer_state.json";
/// Files every checkpoint's manifest must list (besides the optional `tokenizer.json`).
pub const REQUIRED_FILES: [&str; 5] = [
    "config.json",
    "model.safetensors",
    "qattn.json",
    OPTIMIZER_FILE,
    STATE_FILE,
];

/// The prefix of checkpoint directory names.
const PREFIX: &str = "checkpoint-";
/// The prefix of temporary directories (checkpoints being written, replaced or deleted).
const TMP_PREFIX: &str = ".tmp-checkpoint-";

/// Saves, lists, verifies and rotates the checkpoints under one root directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointManager {
    root: PathBuf,
    keep_last: Option<usize>,
}

/// A checkpoint directory and its step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The training step it was saved at.
    pub step: u64,
    /// The directory (`ROOT/checkpoint-{step}`); [`Model::load`] reads the model from it.
    pub dir: PathBuf,
}

/// A checkpoint [`CheckpointManager::latest_good`] passed over because it did not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Why it did not verify (names the file at fault).
    pub reason: String,
}

/// The content of `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format_version: u32,
    step: u64,
    files: BTreeMap<String, FileEntry>,
}

/// One file of the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    bytes: u64,
    sha256: String,
}

impl CheckpointManager {
    /// A manager of the checkpoints under `root` (created on the first save) that keeps the
    /// newest `keep_last` checkpoints after each save (`None`: keep all).
    pub fn new(root: impl Into<PathBuf>, keep_last: Option<usize>) -> Self {
        CheckpointManager {
            root: root.into(),
            keep_last,
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many checkpoints rotation keeps (`None`: all).
    pub fn keep_last(&self) -> Option<usize> {
        self.keep_last
    }

    /// The directory of the checkpoint of `step` (whether or not it exists).
    pub fn dir_of(&self, step: u64) -> PathBuf {
        self.root.join(format!("{PREFIX}{step}"))
    }

    /// Writes `checkpoint-{step}` atomically: the model ([`Model::save_pretrained`]), the
    /// optimiser's tensors (f32, any device; stored bit-exactly), the trainer's `state` and
    /// the manifest all go into `ROOT/.tmp-checkpoint-{step}-{pid}`, every file fsynced, the
    /// manifest last; the directory is fsynced and renamed to `checkpoint-{step}` (an existing
    /// `checkpoint-{step}` is renamed aside first, then removed) and ROOT is fsynced.
    ///
    /// Then rotates: with `keep_last = Some(n)` it keeps the `n` newest checkpoints (by step),
    /// the one just written, and `protect` (e.g. the best model's step), and deletes the
    /// others, oldest first, each renamed aside before it is removed. Returns the checkpoint.
    ///
    /// On an error the temporary directory is removed; an existing checkpoint of `step` is
    /// kept unless the error came after it was renamed aside.
    pub fn save(
        &self,
        step: u64,
        model: &Model,
        optimizer: &BTreeMap<String, Tensor>,
        state: &serde_json::Value,
        protect: Option<u64>,
    ) -> Result<Checkpoint> {
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let pid = std::process::id();
        let tmp = self.root.join(format!("{TMP_PREFIX}{step}-{pid}"));
        remove_dir_if_exists(&tmp)?;
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let dir = self.dir_of(step);
        if let Err(e) = write_contents(&tmp, &dir, step, model, optimizer, state) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }

        let aside = self.root.join(format!("{TMP_PREFIX}{step}-{pid}-replaced"));
        let replaced = match std::fs::symlink_metadata(&dir) {
            Ok(_) => {
                remove_dir_if_exists(&aside)?;
                std::fs::rename(&dir, &aside).map_err(|e| {
                    let _ = std::fs::remove_dir_all(&tmp);
                    Error::io(&dir, e)
                })?;
                true
            }
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(Error::io(&dir, e));
            }
        };
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::io(&dir, e));
        }
        sync_dir(&self.root)?;
        if replaced {
            remove_dir_if_exists(&aside)?;
        }
        self.rotate(step, protect)?;
        Ok(Checkpoint { step, dir })
    }

    /// Deletes the checkpoints rotation does not keep (see [`CheckpointManager::save`]).
    fn rotate(&self, just_saved: u64, protect: Option<u64>) -> Result<()> {
        let Some(keep_last) = self.keep_last else {
            return Ok(());
        };
        let all = self.list()?;
        let mut keep: BTreeSet<u64> = all.iter().take(keep_last).map(|c| c.step).collect();
        keep.insert(just_saved);
        keep.extend(protect);
        let pid = std::process::id();
        // `list` is newest first: delete from the back, oldest first.
        for ckpt in all.iter().rev().filter(|c| !keep.contains(&c.step)) {
            let aside = self
                .root
                .join(format!("{TMP_PREFIX}{}-{pid}-deleted", ckpt.step));
            remove_dir_if_exists(&aside)?;
            std::fs::rename(&ckpt.dir, &aside).map_err(|e| Error::io(&ckpt.dir, e))?;
            remove_dir_if_exists(&aside)?;
        }
        sync_dir(&self.root)
    }

    /// All `checkpoint-{step}` directories under ROOT, newest (highest step) first, verified
    /// or not. Temporary directories (`.tmp-*`), files, and names that are not
    /// `checkpoint-` followed by a step without padding are ignored; a missing ROOT has none.
    pub fn list(&self) -> Result<Vec<Checkpoint>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.root, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.root, e))?;
            let Some(step) = entry.file_name().to_str().and_then(parse_checkpoint_name) else {
                continue;
            };
            let is_dir = entry
                .file_type()
                .map_err(|e| Error::io(entry.path(), e))?
                .is_dir();
            if is_dir {
                out.push(Checkpoint {
                    step,
                    dir: entry.path(),
                });
            }
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.step));
        Ok(out)
    }

    /// Verifies the checkpoint in `dir`: `manifest.json` is present, valid and of a supported
    /// format, its step matches the directory name, it lists the required files, and every
    /// file it lists is present with the listed size and SHA-256 digest. Files the manifest
    /// does not list are ignored. The [`Error::Checkpoint`] names each file at fault.
    pub fn verify(dir: &Path) -> Result<()> {
        let bad = |message: String| Error::Checkpoint {
            path: dir.to_path_buf(),
            message,
        };
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read(&manifest_path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(bad(format!(
                    "{MANIFEST_FILE} is missing (the checkpoint was never completed)"
                )));
            }
            Err(e) => return Err(bad(format!("{MANIFEST_FILE} cannot be read: {e}"))),
        };
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("{MANIFEST_FILE} is not a valid manifest: {e}")))?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(bad(format!(
                "{MANIFEST_FILE} format_version {} is not supported (this build reads \
                 {FORMAT_VERSION})",
                manifest.format_version
            )));
        }
        if let Some(step) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_checkpoint_name)
            && step != manifest.step
        {
            return Err(bad(format!(
                "{MANIFEST_FILE} is for step {}, the directory for step {step}",
                manifest.step
            )));
        }
        let mut problems = Vec::new();
        for name in REQUIRED_FILES {
            if !manifest.files.contains_key(name) {
                problems.push(format!("{name} is not listed in {MANIFEST_FILE}"));
            }
        }
        for (name, entry) in &manifest.files {
            if !is_plain_file_name(name) || name == MANIFEST_FILE {
                problems.push(format!(
                    "{MANIFEST_FILE} lists {name:?}, which is not a file of a checkpoint"
                ));
                continue;
            }
            let path = dir.join(name);
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    problems.push(format!("{name} is missing"));
                    continue;
                }
                Err(e) => {
                    problems.push(format!("{name} cannot be read: {e}"));
                    continue;
                }
            };
            if !meta.is_file() {
                problems.push(format!("{name} is not a regular file"));
            } else if meta.len() != entry.bytes {
                problems.push(format!(
                    "{name} has {} bytes, {MANIFEST_FILE} says {}",
                    meta.len(),
                    entry.bytes
                ));
            } else {
                match hash_file(&path) {
                    Ok((_, digest)) if digest.eq_ignore_ascii_case(&entry.sha256) => {}
                    Ok((_, digest)) => problems.push(format!(
                        "{name} is corrupted: its sha256 is {digest}, {MANIFEST_FILE} says {}",
                        entry.sha256
                    )),
                    Err(e) => problems.push(format!("{name} cannot be read: {e}")),
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(bad(problems.join("; ")))
        }
    }

    /// The newest checkpoint that verifies, and the newer ones that did not, newest first,
    /// with the reasons (for the caller to report). `(None, skipped)` when none verifies.
    pub fn latest_good(&self) -> Result<(Option<Checkpoint>, Vec<Skipped>)> {
        let mut skipped = Vec::new();
        for ckpt in self.list()? {
            match Self::verify(&ckpt.dir) {
                Ok(()) => return Ok((Some(ckpt), skipped)),
                Err(e) => {
                    let reason = match e {
                        Error::Checkpoint { message, .. } => message,
                        other => other.to_string(),
                    };
                    skipped.push(Skipped {
                        dir: ckpt.dir,
                        reason,
                    });
                }
            }
        }
        Ok((None, skipped))
    }

    /// Removes the `ROOT/.tmp-checkpoint-*` directories that crashed writers left (checkpoints
    /// being written, replaced or deleted) and returns them. Directories of a save in progress
    /// in this process (its pid in the name) are left alone; call this before other processes
    /// start writing to ROOT, e.g. when a run starts or resumes.
    pub fn clean_temporaries(&self) -> Result<Vec<PathBuf>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.root, e)),
        };
        let own_pid = std::process::id();
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.root, e))?;
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TMP_PREFIX)) else {
                continue;
            };
            let pid = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
            if pid == Some(own_pid) {
                continue;
            }
            let path = entry.path();
            let is_dir = entry.file_type().map_err(|e| Error::io(&path, e))?.is_dir();
            if is_dir {
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            } else {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
            removed.push(path);
        }
        removed.sort();
        Ok(removed)
    }
}

impl Checkpoint {
    /// The optimiser's tensors, read from `optimizer.safetensors` onto the CPU.
    pub fn optimizer(&self) -> Result<BTreeMap<String, Tensor>> {
        let path = self.dir.join(OPTIMIZER_FILE);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            Error::Checkpoint {
                path: self.dir.clone(),
                message: format!("{OPTIMIZER_FILE} is not a readable safetensors file: {e}"),
            }
        })?;
        Ok(map.into_iter().collect())
    }

    /// The trainer's state, read from `trainer_state.json`.
    pub fn state(&self) -> Result<serde_json::Value> {
        let path = self.dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Checkpoint {
            path: self.dir.clone(),
            message: format!("{STATE_FILE} is not valid JSON: {e}"),
        })
    }
}

/// Writes every file of a checkpoint into the (empty) directory `tmp`, the manifest last, and
/// fsyncs the directory. Errors name `dir`, the checkpoint's final directory.
fn write_contents(
    tmp: &Path,
    dir: &Path,
    step: u64,
    model: &Model,
    optimizer: &BTreeMap<String, Tensor>,
    state: &serde_json::Value,
) -> Result<()> {
    model.save_pretrained(tmp)?;
    write_synced(&tmp.join(OPTIMIZER_FILE), &optimizer_bytes(dir, optimizer)?)?;
    let state = serde_json::to_vec_pretty(state).map_err(|e| Error::Checkpoint {
        path: dir.to_path_buf(),
        message: format!("serialising {STATE_FILE}: {e}"),
    })?;
    write_synced(&tmp.join(STATE_FILE), &state)?;

    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(tmp).map_err(|e| Error::io(tmp, e))? {
        let entry = entry.map_err(|e| Error::io(tmp, e))?;
        let path = entry.path();
        let name = entry
            .file_name()
            .to_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Checkpoint {
                path: tmp.to_path_buf(),
                message: format!("unexpected file {path:?} (not UTF-8)"),
            })?;
        if !entry
            .file_type()
            .map_err(|e| Error::io(&path, e))?
            .is_file()
        {
            return Err(Error::Checkpoint {
                path: tmp.to_path_buf(),
                message: format!("unexpected non-file {name}"),
            });
        }
        let (bytes, sha256) = hash_file(&path).map_err(|e| Error::io(&path, e))?;
        files.insert(name, FileEntry { bytes, sha256 });
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        step,
        files,
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Checkpoint {
        path: tmp.to_path_buf(),
        message: format!("serialising {MANIFEST_FILE}: {e}"),
    })?;
    write_synced(&tmp.join(MANIFEST_FILE), &text)?;
    sync_dir(tmp)
}

/// `optimizer.safetensors`: every tensor as little-endian f32, exactly its bits. Errors name
/// `dir`.
fn optimizer_bytes(dir: &Path, optimizer: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    let bad = |message: String| Error::Checkpoint {
        path: dir.to_path_buf(),
        message,
    };
    let mut data = Vec::with_capacity(optimizer.len());
    for (name, t) in optimizer {
        if t.dtype() != DType::F32 {
            return Err(bad(format!(
                "optimizer tensor {name} is {:?}; checkpoints store f32 optimizer state",
                t.dtype()
            )));
        }
        let t = t.to_device(&Device::Cpu)?;
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        data.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| bad(format!("optimizer tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize(views, None)
        .map_err(|e| bad(format!("serialising {OPTIMIZER_FILE}: {e}")))
}

/// Creates `path` with `bytes` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Fsyncs a directory so that renames and new entries in it are durable. Not possible (and
/// not needed) on every platform: only Unix does it.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Removes `path` (a directory and its content, or a file) if it exists.
fn remove_dir_if_exists(path: &Path) -> Result<()> {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// The size and lowercase hex SHA-256 of a file.
fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

/// Lowercase hexadecimal.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The step of a `checkpoint-{step}` name (decimal, no sign, no leading zeros).
fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?;
    let step: u64 = digits.parse().ok()?;
    (step.to_string() == digits).then_some(step)
}

/// Whether `name` names a file directly inside a directory (no separators, not `.`/`..`).
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && Path::new(name).components().count() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_are_strict() {
        assert_eq!(parse_checkpoint_name("checkpoint-0"), Some(0));
        assert_eq!(parse_checkpoint_name("checkpoint-1200"), Some(1200));
        for bad in [
            "checkpoint-",
            "checkpoint-007",
            "checkpoint-+5",
            "checkpoint--5",
            "checkpoint-5a",
            "checkpoint-99999999999999999999999",
            ".tmp-checkpoint-5-12",
            "ckpt-5",
        ] {
            assert_eq!(parse_checkpoint_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn plain_file_names() {
        assert!(is_plain_file_name("model.safetensors"));
        for bad in ["", ".", "..", "a/b", "/etc/passwd", "..\\x"] {
            assert!(!is_plain_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn hashes_files_like_sha256sum() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            hash_file(&p).unwrap(),
            (
                3,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string()
            )
        );
    }

    #[test]
    fn optimizer_state_must_be_f32() {
        let mut opt = BTreeMap::new();
        opt.insert(
            "step".to_string(),
            Tensor::new(&[3u32], &Device::Cpu).unwrap(),
        );
        let e = optimizer_bytes(Path::new("ck"), &opt)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ck:") && e.contains("step") && e.contains("f32"),
            "{e}"
        );
        // No tensors at all is a valid (empty) file.
        let bytes = optimizer_bytes(Path::new("ck"), &BTreeMap::new()).unwrap();
        assert!(
            candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
                .unwrap()
                .is_empty()
        );
    }

    /// A directory holding a manifest over one file, and the manifest.
    fn fake_checkpoint(root: &Path, step: u64) -> (PathBuf, Manifest) {
        let dir = root.join(format!("checkpoint-{step}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = BTreeMap::new();
        for name in REQUIRED_FILES {
            let p = dir.join(name);
            std::fs::write(&p, name.as_bytes()).unwrap();
            let (bytes, sha256) = hash_file(&p).unwrap();
            files.insert(name.to_string(), FileEntry { bytes, sha256 });
        }
        let m = Manifest {
            format_version: FORMAT_VERSION,
            step,
            files,
        };
        write_manifest(&dir, &m);
        (dir, m)
    }

    fn write_manifest(dir: &Path, m: &Manifest) {
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(m).unwrap()).unwrap();
    }

    fn verify_err(dir: &Path) -> String {
        match CheckpointManager::verify(dir).unwrap_err() {
            Error::Checkpoint { path, message } => {
                assert_eq!(path, dir);
                message
            }
            other => panic!("not a checkpoint error: {other}"),
        }
    }

    #[test]
    fn verify_names_each_problem() {
        let root = tempfile::tempdir().unwrap();
        let (dir, m) = fake_checkpoint(root.path(), 4);
        CheckpointManager::verify(&dir).unwrap();
        // Extra, unlisted files are allowed.
        std::fs::write(dir.join("README"), "notes").unwrap();
        CheckpointManager::verify(&dir).unwrap();

        let mut v2 = m.clone();
        v2.format_version = 2;
        write_manifest(&dir, &v2);
        let e = verify_err(&dir);
        assert!(e.contains("format_version 2"), "{e}");

        let mut other_step = m.clone();
        other_step.step = 5;
        write_manifest(&dir, &other_step);
        let e = verify_err(&dir);
        assert!(e.contains("step 5") && e.contains("step 4"), "{e}");

        let mut unlisted = m.clone();
        unlisted.files.remove(STATE_FILE);
        write_manifest(&dir, &unlisted);
        let e = verify_err(&dir);
        assert!(e.contains("trainer_state.json is not listed"), "{e}");

        let mut escape = m.clone();
        escape.files.insert(
            "../x".into(),
            FileEntry {
                bytes: 0,
                sha256: String::new(),
            },
        );
        write_manifest(&dir, &escape);
        let e = verify_err(&dir);
        assert!(e.contains("\"../x\""), "{e}");

        write_manifest(&dir, &m);
        std::fs::write(dir.join("qattn.json"), "qattn.jsonX").unwrap();
        std::fs::remove_file(dir.join("config.json")).unwrap();
        let e = verify_err(&dir);
        assert!(
            e.contains("config.json is missing")
                && e.contains("qattn.json has 11 bytes, manifest.json says 10"),
            "{e}"
        );

        std::fs::write(dir.join(MANIFEST_FILE), b"{\"format_version\":1,").unwrap();
        let e = verify_err(&dir);
        assert!(e.contains("manifest.json is not a valid manifest"), "{e}");
        std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
        let e = verify_err(&dir);
        assert!(e.contains("manifest.json is missing"), "{e}");
    }
}
