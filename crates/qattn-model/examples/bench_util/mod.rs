//! Helpers the benchmark examples share: `bench_forward` here and `bench_train` of qattn-train
//! (which includes this file with `#[path]`): the deterministic token ids of the benchmarks,
//! the median, and the process's peak RSS and CPU time.

/// The benchmarks' token ids, row-major `[batch, seq]`, the same formula as
/// `benchmarks/baselines/benchutil.py`: `id[b][j]` is 101 for `j = 0`, 102 for `j = L-1` and
/// `1000 + (b·7919 + j·104729) mod 28000` otherwise, for rows `b` of `first..first + batch`.
pub(crate) fn token_ids(first: usize, batch: usize, seq: usize) -> Vec<u32> {
    let mut ids = Vec::with_capacity(batch * seq);
    for b in first..first + batch {
        for j in 0..seq {
            ids.push(if j == 0 {
                101
            } else if j == seq - 1 {
                102
            } else {
                1000 + ((b * 7919 + j * 104_729) % 28_000) as u32
            });
        }
    }
    ids
}

/// Peak resident set size of this process (`VmHWM`), in MiB.
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// CPU time (user + system, all threads) of this process so far, in seconds, from
/// `/proc/self/stat` (fields 14 and 15, in clock ticks of 1/100 s).
pub(crate) fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after it start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The median of `times` (the mean of the middle two for an even count).
pub(crate) fn median(times: &[f64]) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

/// Writes `report` as pretty JSON to `path`, or to stdout without one.
pub(crate) fn write_report(
    report: &serde_json::Value,
    path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let body = serde_json::to_string_pretty(report)? + "\n";
    match path {
        Some(path) => {
            std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))
        }
        None => {
            print!("{body}");
            Ok(())
        }
    }
}

/// Command-line flags of the form `--name VALUE`, each given at most once.
pub(crate) struct Flags(std::collections::BTreeMap<String, String>);

impl Flags {
    /// Reads this process's arguments; a flag not in `known`, a flag without a value or a
    /// repeated flag is an error.
    pub(crate) fn parse(known: &[&str]) -> anyhow::Result<Flags> {
        let mut map = std::collections::BTreeMap::new();
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if !known.contains(&flag.as_str()) {
                anyhow::bail!("unknown option {flag}; expected {}", known.join(", "));
            }
            let value = it
                .next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
            if map.insert(flag.clone(), value).is_some() {
                anyhow::bail!("{flag} given twice");
            }
        }
        Ok(Flags(map))
    }

    /// The value of `flag`, or `default`.
    pub(crate) fn string(&self, flag: &str, default: &str) -> String {
        self.0
            .get(flag)
            .map_or_else(|| default.to_owned(), Clone::clone)
    }

    /// The value of `flag` as a path, if given.
    pub(crate) fn path(&self, flag: &str) -> Option<std::path::PathBuf> {
        self.0.get(flag).map(std::path::PathBuf::from)
    }

    /// The value of `flag` as a non-negative integer, or `default`.
    pub(crate) fn number(&self, flag: &str, default: usize) -> anyhow::Result<usize> {
        match self.0.get(flag) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("{flag}: {v:?} is not a non-negative integer")),
        }
    }
}
