//! The JSONL metrics log `D/metrics.jsonl` and its `params.json`.

use super::{RunStatus, Tracker};
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// [`qattn_io::write_atomic`] with this crate's [`Error::Io`] naming the file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    qattn_io::write_atomic(path, bytes).map_err(|e| Error::io(e.path, e.source))
}

/// The run's metrics log, `D/metrics.jsonl`.
///
/// Every line is one JSON object written by one [`Tracker::log_metrics`] call:
/// `{"step": N, "time": <unix seconds as f64>, "<metric>": value, …}`, metrics in name order,
/// non-finite values written as `null`. Each line is written with a single `write` and
/// flushed before the call returns. Parameters go to a sibling `D/params.json` (a JSON object
/// of strings, written atomically), never into the JSONL, so that every line of the log is a
/// metrics line with a `"step"`.
#[derive(Debug)]
pub struct JsonlLog {
    path: PathBuf,
    params_path: PathBuf,
    file: File,
    params: BTreeMap<String, String>,
}

impl JsonlLog {
    /// Opens (creating it and its parent directories if needed) the log at `path` for
    /// appending.
    ///
    /// With `resume_step = Some(s)` the file is first rewritten atomically (temporary file,
    /// fsync, rename) keeping only the lines whose `"step"` is `<= s`, so that a run resumed
    /// from the checkpoint of step `s` produces a log that reads like an uninterrupted one. A
    /// torn last line (a crash in the middle of a write: no final newline and not valid JSON)
    /// is dropped. Any other line that is not a JSON object with an unsigned integer
    /// `"step"` is an [`Error::Data`] naming the file and line.
    ///
    /// Without `resume_step` the existing lines are kept; only a torn last line is cut off
    /// so that the next line starts on a line of its own.
    pub fn open(path: &Path, resume_step: Option<u64>) -> Result<Self> {
        let dir = parent_dir(path);
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        match resume_step {
            Some(s) => truncate_log_to_step(path, s)?,
            None => repair_torn_tail(path)?,
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(JsonlLog {
            path: path.to_path_buf(),
            params_path: dir.join("params.json"),
            file,
            params: BTreeMap::new(),
        })
    }

    /// The JSONL file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parameters file, `params.json` beside the JSONL file.
    pub fn params_path(&self) -> &Path {
        &self.params_path
    }
}

/// Formats one metrics line (without the newline): `step` and `time` first, then the metrics
/// in name order, non-finite values as `null`.
fn metrics_line(step: u64, time: f64, metrics: &BTreeMap<String, f64>) -> Result<String> {
    let mut line = format!("{{\"step\":{step},\"time\":{}", json_number(time));
    for (key, &value) in metrics {
        if key == "step" || key == "time" {
            return Err(Error::Tracking(format!(
                "metric name {key:?} is reserved in the JSONL log"
            )));
        }
        let key = serde_json::to_string(key).map_err(|e| Error::Tracking(e.to_string()))?;
        let _ = write!(line, ",{key}:{}", json_number(value));
    }
    line.push('}');
    Ok(line)
}

/// A JSON number, or `null` for NaN and infinities.
fn json_number(x: f64) -> String {
    if x.is_finite() {
        Value::from(x).to_string()
    } else {
        "null".to_string()
    }
}

impl Tracker for JsonlLog {
    /// Merges `params` into those logged before and writes them all to `params.json`
    /// atomically.
    fn log_params(&mut self, params: &BTreeMap<String, String>) -> Result<()> {
        self.params
            .extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut bytes = serde_json::to_vec_pretty(&self.params)
            .map_err(|e| Error::Tracking(format!("{}: {e}", self.params_path.display())))?;
        bytes.push(b'\n');
        write_atomic(&self.params_path, &bytes)
    }

    fn log_metrics(&mut self, step: u64, metrics: &BTreeMap<String, f64>) -> Result<()> {
        let mut line = metrics_line(step, unix_secs(), metrics)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes the log to disk (fsync). The status itself is not written to the JSONL.
    fn finish(&mut self, _status: RunStatus) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Seconds since the Unix epoch.
fn unix_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The `"step"` of a metrics line, if it is a JSON object with an unsigned integer step.
fn line_step(line: &[u8]) -> std::result::Result<u64, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    value
        .as_object()
        .ok_or_else(|| "not a JSON object".to_string())?
        .get("step")
        .and_then(Value::as_u64)
        .ok_or_else(|| "no unsigned integer \"step\"".to_string())
}

/// Rewrites the log at `path` keeping the lines with step `<= keep_through` (see
/// [`JsonlLog::open`]). A missing file is fine.
fn truncate_log_to_step(path: &Path, keep_through: u64) -> Result<()> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut kept = Vec::with_capacity(bytes.len());
    let mut segments = bytes.split(|&b| b == b'\n').enumerate().peekable();
    while let Some((i, line)) = segments.next() {
        // `split` yields the text after the last newline as the final segment: empty for a
        // well-formed file, a torn line after a crash mid-write.
        let is_tail = segments.peek().is_none();
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match line_step(line) {
            Ok(step) if step <= keep_through => {
                kept.extend_from_slice(line);
                kept.push(b'\n');
            }
            Ok(_) => {}
            Err(_) if is_tail => {}
            Err(message) => {
                return Err(Error::Data {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: format!("malformed metrics line: {message}"),
                });
            }
        }
    }
    if kept != bytes {
        write_atomic(path, &kept)?;
    }
    Ok(())
}

/// When the log's last line has no newline (a crash mid-write), cuts it off if it is not
/// valid JSON, or terminates it if it is, so that the next append starts a line of its own.
fn repair_torn_tail(path: &Path) -> Result<()> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let io = |e| Error::io(path, e);
    let len = f.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    f.seek(SeekFrom::Start(len - 1)).map_err(io)?;
    f.read_exact(&mut last).map_err(io)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    let mut bytes = Vec::new();
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    f.read_to_end(&mut bytes).map_err(io)?;
    let start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    if line_step(&bytes[start..]).is_ok() {
        f.seek(SeekFrom::End(0)).map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
    } else {
        f.set_len(start as u64).map_err(io)?;
    }
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_line_puts_step_and_time_first() {
        let m = BTreeMap::from([("b".to_string(), 1.5), ("a".to_string(), f64::INFINITY)]);
        assert_eq!(
            metrics_line(7, 12.5, &m).unwrap(),
            r#"{"step":7,"time":12.5,"a":null,"b":1.5}"#
        );
        let bad = BTreeMap::from([("step".to_string(), 1.0)]);
        assert!(metrics_line(1, 0.0, &bad).is_err());
    }
}
