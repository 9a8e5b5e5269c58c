//! `qattn-load`: the load generator of `cargo xtask bench serve`.
//!
//! ```text
//! qattn-load run --target grpc --addr http://127.0.0.1:50051 --model NAME --method embed|classify
//!                --workload short|long --concurrency C [--requests N] [--duration S] [--warmup W]
//!                [--version V] [--api-key KEY] [--timeout S] [--tokenizer ID_OR_DIR] [--cache-dir DIR]
//! qattn-load run --target http --addr http://127.0.0.1:8000 --method … (same options; the
//!                Python baseline: POST /embed or /classify with {"text": …})
//! qattn-load workload [--tokenizer ID_OR_DIR] [--cache-dir DIR]   texts, token counts, encoder
//!                                                                  parameters (JSON)
//! qattn-load matmul-rate [--size N] [--reps R]                    candle f32 matmul GFLOP/s
//! qattn-load save-classifier --model ID_OR_DIR --out DIR [--cache-dir DIR] [--seed S]
//! ```
//!
//! `run` drives C concurrent clients, one text per request, first through `--warmup` requests
//! (not measured), then through `--requests` requests or `--duration` seconds, whichever ends
//! first, and prints one JSON object on stdout: requests/s, p50/p95/p99 latency, errors, and
//! the answer to the workload's first text (for the output check). gRPC clients share one
//! HTTP/2 channel on a single-threaded tokio runtime; HTTP clients are C blocking `ureq`
//! threads (keep-alive), so the generator itself uses as little CPU as it can.
//!
//! The texts are deterministic and the same for both targets: `short` is eight ~20-token
//! sentences, `long` eight texts of exactly 128 tokens (with `[CLS]`/`[SEP]`, built with the
//! model's tokenizer); requests cycle through them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use qattn_model::hub::{self, HubOptions};
use qattn_model::{Config, HeadKind, LoadOptions, Model, Tokenizer};
use serde_json::{Value, json};

/// The model whose tokenizer builds the texts by default.
const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// Tokens of a `long` text, `[CLS]` and `[SEP]` included.
const LONG_TOKENS: usize = 128;

/// The `short` workload: one sentence of about 20 tokens per request.
const SHORT_TEXTS: [&str; 8] = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the old barn.",
    "A man is playing a guitar on the street corner and a small crowd gathers to listen.",
    "Researchers measured the attention weights of every head in the model on a dev set.",
    "The weather in the mountains changed quickly, so the hikers returned before sunset.",
    "She ordered a cup of coffee and read the morning paper at the table near the window.",
    "Stock prices fell sharply after the central bank announced a surprise rate increase.",
    "This movie was a delight from start to finish, with warm characters and sharp jokes.",
    "The new library opens next week and will offer free classes for children and adults.",
];

/// Words the `long` texts are built from (cycled with a stride so texts differ).
const WORDS: [&str; 48] = [
    "the",
    "city",
    "council",
    "met",
    "on",
    "tuesday",
    "to",
    "discuss",
    "a",
    "plan",
    "for",
    "new",
    "parks",
    "and",
    "roads",
    "while",
    "residents",
    "asked",
    "about",
    "schools",
    "water",
    "prices",
    "in",
    "their",
    "neighborhood",
    "after",
    "long",
    "debate",
    "members",
    "voted",
    "delay",
    "final",
    "decision",
    "until",
    "next",
    "month",
    "when",
    "more",
    "information",
    "from",
    "engineers",
    "would",
    "be",
    "available",
    "public",
    "review",
    "of",
    "budget",
];

/// Largest `--duration` / `--timeout` accepted, in seconds (one day).
const MAX_SECONDS: f64 = 86_400.0;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run_cli(&args) {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("qattn-load: error: {e}");
            std::process::exit(if e.starts_with("usage") { 2 } else { 1 });
        }
    }
}

const USAGE: &str = "usage: qattn-load run|workload|matmul-rate|save-classifier [options] \
                     (see the module documentation of crates/qattn-serve/src/bin/qattn-load.rs)";

/// Parsed `--name value` options; every option takes a value.
struct Opts(BTreeMap<String, String>);

impl Opts {
    fn parse(args: &[String], allowed: &[&str]) -> Result<Opts, String> {
        let mut map = BTreeMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let name = a
                .strip_prefix("--")
                .ok_or_else(|| format!("usage: unexpected argument {a:?}"))?;
            if !allowed.contains(&name) {
                return Err(format!(
                    "usage: unknown option --{name}; allowed: --{}",
                    allowed.join(", --")
                ));
            }
            let v = it
                .next()
                .ok_or_else(|| format!("usage: --{name} needs a value"))?;
            map.insert(name.to_owned(), v.clone());
        }
        Ok(Opts(map))
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
    fn required(&self, name: &str) -> Result<&str, String> {
        self.get(name)
            .ok_or_else(|| format!("usage: --{name} is required"))
    }
    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("usage: --{name} {v:?} is not a valid number")),
        }
    }
}

fn run_cli(args: &[String]) -> Result<Value, String> {
    let (cmd, rest) = args.split_first().ok_or_else(|| USAGE.to_owned())?;
    match cmd.as_str() {
        "run" => {
            let o = Opts::parse(
                rest,
                &[
                    "target",
                    "addr",
                    "model",
                    "version",
                    "method",
                    "workload",
                    "concurrency",
                    "requests",
                    "duration",
                    "warmup",
                    "api-key",
                    "tokenizer",
                    "cache-dir",
                    "timeout",
                ],
            )?;
            let cfg = RunConfig::from_opts(&o)?;
            let texts = workload_texts(&load_tokenizer(&o)?, cfg.workload)?;
            run_load(&cfg, texts.into_iter().map(|(t, _)| t).collect())
        }
        "workload" => {
            let o = Opts::parse(rest, &["tokenizer", "cache-dir"])?;
            workload_info(&o)
        }
        "matmul-rate" => {
            let o = Opts::parse(rest, &["size", "reps"])?;
            matmul_rate(o.num("size", 1024)?, o.num("reps", 7)?)
        }
        "save-classifier" => {
            let o = Opts::parse(rest, &["model", "out", "cache-dir", "seed"])?;
            save_classifier(&o)
        }
        "help" | "--help" | "-h" => Ok(json!({ "usage": USAGE })),
        other => Err(format!("usage: unknown command {other:?}; {USAGE}")),
    }
}

fn hub_options(o: &Opts) -> HubOptions {
    HubOptions {
        cache_dir: o.get("cache-dir").map(PathBuf::from),
        offline: true,
        progress: false,
        ..HubOptions::default()
    }
}

fn load_tokenizer(o: &Opts) -> Result<Tokenizer, String> {
    let model = o.get("tokenizer").unwrap_or(DEFAULT_MODEL);
    let files = hub::resolve(model, &hub_options(o), true)
        .map_err(|e| format!("tokenizer of {model}: {e}"))?;
    let path = files
        .tokenizer
        .ok_or_else(|| format!("{model}: no tokenizer.json"))?;
    Tokenizer::from_file(&path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Which texts a run sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Short,
    Long,
}

impl Workload {
    fn parse(s: &str) -> Result<Workload, String> {
        match s {
            "short" => Ok(Workload::Short),
            "long" => Ok(Workload::Long),
            _ => Err(format!("usage: --workload {s:?}: expected short or long")),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Workload::Short => "short",
            Workload::Long => "long",
        }
    }
}

/// The texts of a workload and their token counts (special tokens included).
fn workload_texts(tok: &Tokenizer, w: Workload) -> Result<Vec<(String, usize)>, String> {
    let count = |t: &str| {
        tok.encode(t, None)
            .map(|e| e.ids.len())
            .map_err(|e| format!("tokenizing {t:?}: {e}"))
    };
    match w {
        Workload::Short => SHORT_TEXTS
            .iter()
            .map(|t| Ok(((*t).to_owned(), count(t)?)))
            .collect(),
        Workload::Long => (0..SHORT_TEXTS.len())
            .map(|k| {
                let mut words: Vec<&str> = Vec::new();
                let mut i = k * 5;
                let mut n = count("")?;
                while n < LONG_TOKENS {
                    let w = WORDS[i % WORDS.len()];
                    i += 7;
                    words.push(w);
                    n = count(&words.join(" "))?;
                    if n > LONG_TOKENS {
                        words.pop();
                        n = count(&words.join(" "))?;
                        // Fill the gap with words known to be single tokens.
                        while n < LONG_TOKENS {
                            words.push("the");
                            n = count(&words.join(" "))?;
                        }
                    }
                }
                let text = words.join(" ");
                if n != LONG_TOKENS {
                    return Err(format!("long text {k} has {n} tokens, not {LONG_TOKENS}"));
                }
                Ok((text, n))
            })
            .collect(),
    }
}

/// Texts, token counts and encoder parameters of the default model, for the FLOP ceiling.
fn workload_info(o: &Opts) -> Result<Value, String> {
    let model = o.get("tokenizer").unwrap_or(DEFAULT_MODEL);
    let tok = load_tokenizer(o)?;
    let files = hub::resolve(model, &hub_options(o), false).map_err(|e| format!("{model}: {e}"))?;
    let cfg = Config::from_file(&files.config).map_err(|e| format!("{model}: {e}"))?;
    let mut workloads = serde_json::Map::new();
    for w in [Workload::Short, Workload::Long] {
        let texts = workload_texts(&tok, w)?;
        let tokens: Vec<usize> = texts.iter().map(|(_, n)| *n).collect();
        let mean = tokens.iter().sum::<usize>() as f64 / tokens.len() as f64;
        workloads.insert(
            w.name().to_owned(),
            json!({
                "texts": texts.iter().map(|(t, _)| t).collect::<Vec<_>>(),
                "tokens": tokens,
                "mean_tokens": mean,
            }),
        );
    }
    let h = cfg.hidden_size as u64;
    let i = cfg.intermediate_size as u64;
    // Per layer: Q, K, V, O (weights + biases), the feed-forward pair, two LayerNorms.
    let per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h;
    Ok(json!({
        "model": model,
        "hidden_size": h,
        "intermediate_size": i,
        "num_hidden_layers": cfg.num_hidden_layers,
        "encoder_layer_params": per_layer * cfg.num_hidden_layers as u64,
        "params_note": "transformer layers only: embeddings are lookups and the pooler/head \
                        run once per sequence, so neither is counted",
        "workloads": workloads,
    }))
}

/// Median wall time of an `n`×`n` by `n`×`n` f32 matmul on the CPU with candle (all cores,
/// its default thread pool), as GFLOP/s (2n³ per product).
fn matmul_rate(n: usize, reps: usize) -> Result<Value, String> {
    use candle_core::{Device, Tensor};
    if n == 0 || reps == 0 {
        return Err("usage: --size and --reps must be positive".to_owned());
    }
    let err = |e: candle_core::Error| format!("candle matmul {n}x{n}: {e}");
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu).map_err(err)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu).map_err(err)?;
    for _ in 0..2 {
        a.matmul(&b).map_err(err)?;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let c = a.matmul(&b).map_err(err)?;
        std::hint::black_box(&c);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let best = times[0];
    let flop = 2.0 * (n as f64).powi(3);
    Ok(json!({
        "size": n,
        "reps": reps,
        "times_s": times,
        "median_gflops": flop / median / 1e9,
        "best_gflops": flop / best / 1e9,
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
    }))
}

/// Loads `--model` with a fresh 2-label classification head (seeded) and saves it, so the
/// Rust and Python servers classify with the same weights.
fn save_classifier(o: &Opts) -> Result<Value, String> {
    let model = o.get("model").unwrap_or(DEFAULT_MODEL);
    let out = PathBuf::from(o.required("out")?);
    let opts = LoadOptions {
        hub: hub_options(o),
        head: Some(HeadKind::Classification { num_labels: 2 }),
        labels: Some(vec!["negative".to_owned(), "positive".to_owned()]),
        init_seed: o.num("seed", 0)?,
        ..LoadOptions::default()
    };
    let m = Model::load(model, &opts).map_err(|e| format!("loading {model}: {e}"))?;
    m.save_pretrained(&out)
        .map_err(|e| format!("saving to {}: {e}", out.display()))?;
    Ok(json!({ "model": model, "out": out, "initialized": m.load_report().initialized }))
}

/// Which server a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Grpc,
    Http,
}

/// Which work each request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Embed,
    Classify,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Embed => "embed",
            Method::Classify => "classify",
        }
    }
}

struct RunConfig {
    target: Target,
    addr: String,
    model: Option<String>,
    version: Option<String>,
    method: Method,
    workload: Workload,
    concurrency: usize,
    requests: u64,
    duration: Duration,
    warmup: u64,
    api_key: Option<String>,
    timeout: Duration,
}

impl RunConfig {
    fn from_opts(o: &Opts) -> Result<RunConfig, String> {
        let target = match o.required("target")? {
            "grpc" => Target::Grpc,
            "http" => Target::Http,
            t => return Err(format!("usage: --target {t:?}: expected grpc or http")),
        };
        let method = match o.required("method")? {
            "embed" => Method::Embed,
            "classify" => Method::Classify,
            m => return Err(format!("usage: --method {m:?}: expected embed or classify")),
        };
        let concurrency: usize = o.num("concurrency", 1)?;
        let requests: u64 = o.num("requests", 200)?;
        let duration: f64 = o.num("duration", 30.0)?;
        let timeout: f64 = o.num("timeout", 60.0)?;
        // Duration::from_secs_f64 panics above ~1.8e19 s: bound both to a day.
        let seconds = |x: f64| x.is_finite() && x > 0.0 && x <= MAX_SECONDS;
        if concurrency == 0 || requests == 0 || !seconds(duration) || !seconds(timeout) {
            return Err(format!(
                "usage: --concurrency and --requests must be positive, --duration and --timeout \
                 in (0, {MAX_SECONDS}] seconds (got --duration {duration}, --timeout {timeout})"
            ));
        }
        let cfg = RunConfig {
            target,
            addr: o.required("addr")?.trim_end_matches('/').to_owned(),
            model: o.get("model").map(str::to_owned),
            version: o.get("version").map(str::to_owned),
            method,
            workload: Workload::parse(o.get("workload").unwrap_or("short"))?,
            concurrency,
            requests,
            duration: Duration::from_secs_f64(duration),
            warmup: o.num("warmup", concurrency as u64 * 2)?,
            api_key: o.get("api-key").map(str::to_owned),
            timeout: Duration::from_secs_f64(timeout),
        };
        if cfg.target == Target::Grpc && cfg.model.is_none() {
            return Err("usage: --model is required with --target grpc".to_owned());
        }
        Ok(cfg)
    }
}

/// What one phase of a run observed.
#[derive(Default)]
struct Phase {
    latencies_s: Vec<f64>,
    errors: u64,
    error_samples: Vec<String>,
    wall_s: f64,
    /// The answer to text 0 (embedding or class scores), when it was asked and answered.
    sample: Option<Vec<f32>>,
}

impl Phase {
    fn merge(&mut self, other: Worker) {
        self.latencies_s.extend(other.latencies_s);
        self.errors += other.errors;
        for e in other.error_samples {
            if self.error_samples.len() < 5 {
                self.error_samples.push(e);
            }
        }
        if self.sample.is_none() {
            self.sample = other.sample;
        }
    }
}

/// One client's results.
#[derive(Default)]
struct Worker {
    latencies_s: Vec<f64>,
    errors: u64,
    error_samples: Vec<String>,
    sample: Option<Vec<f32>>,
}

impl Worker {
    fn record(&mut self, index: u64, started: Instant, result: Result<Vec<f32>, String>) {
        match result {
            Ok(v) => {
                self.latencies_s.push(started.elapsed().as_secs_f64());
                if index == 0 && self.sample.is_none() {
                    self.sample = Some(v);
                }
            }
            Err(e) => {
                self.errors += 1;
                if self.error_samples.len() < 5 {
                    self.error_samples.push(e);
                }
            }
        }
    }
}

/// Shared request counter: hands out request indices until `total` or the deadline.
struct Budget {
    next: AtomicU64,
    total: u64,
    deadline: Instant,
}

impl Budget {
    fn new(total: u64, duration: Duration) -> Arc<Budget> {
        Arc::new(Budget {
            next: AtomicU64::new(0),
            total,
            deadline: Instant::now() + duration,
        })
    }
    fn take(&self) -> Option<u64> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.total).then_some(i)
    }
}

/// Checks an answer: the right length, finite values.
fn check_vector(v: Vec<f32>, method: Method) -> Result<Vec<f32>, String> {
    if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
        return Err(format!(
            "{}: answer has {} values, finite: {}",
            method.name(),
            v.len(),
            v.iter().all(|x| x.is_finite())
        ));
    }
    Ok(v)
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

fn run_load(cfg: &RunConfig, texts: Vec<String>) -> Result<Value, String> {
    let texts = Arc::new(texts);
    let warm = if cfg.warmup > 0 {
        Some(run_phase(cfg, &texts, cfg.warmup, cfg.duration)?)
    } else {
        None
    };
    let cpu_before = own_cpu_s();
    let timed = run_phase(cfg, &texts, cfg.requests, cfg.duration)?;
    let client_cpu_s = own_cpu_s().zip(cpu_before).map(|(a, b)| a - b);
    let mut lat = timed.latencies_s.clone();
    lat.sort_by(f64::total_cmp);
    let ok = lat.len() as u64;
    let ms = |p: f64| percentile(&lat, p).map(|s| s * 1e3);
    let mean = (!lat.is_empty()).then(|| lat.iter().sum::<f64>() / lat.len() as f64 * 1e3);
    Ok(json!({
        "target": match cfg.target { Target::Grpc => "grpc", Target::Http => "http" },
        "addr": cfg.addr,
        "model": cfg.model,
        "version": cfg.version,
        "method": cfg.method.name(),
        "workload": cfg.workload.name(),
        "concurrency": cfg.concurrency,
        "warmup_requests": cfg.warmup,
        "warmup_errors": warm.as_ref().map_or(0, |w| w.errors),
        "requests_asked": cfg.requests,
        "duration_limit_s": cfg.duration.as_secs_f64(),
        "ok": ok,
        "errors": timed.errors,
        "error_samples": timed.error_samples,
        "wall_s": timed.wall_s,
        "requests_per_s": if timed.wall_s > 0.0 { ok as f64 / timed.wall_s } else { 0.0 },
        "latency_ms": {
            "p50": ms(50.0), "p95": ms(95.0), "p99": ms(99.0), "mean": mean,
            "max": lat.last().map(|s| s * 1e3),
        },
        "client_cpu_s": client_cpu_s,
        "sample": timed.sample,
    }))
}

/// This process's CPU time (user + system, all threads) from `/proc/self/stat`, in seconds.
fn own_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn run_phase(
    cfg: &RunConfig,
    texts: &Arc<Vec<String>>,
    total: u64,
    duration: Duration,
) -> Result<Phase, String> {
    let budget = Budget::new(total, duration);
    let started = Instant::now();
    let workers = match cfg.target {
        Target::Http => http_phase(cfg, texts, &budget),
        Target::Grpc => grpc::phase(cfg, texts, &budget)?,
    };
    let mut phase = Phase {
        wall_s: started.elapsed().as_secs_f64(),
        ..Phase::default()
    };
    for w in workers {
        phase.merge(w);
    }
    Ok(phase)
}

/// C blocking HTTP/1.1 clients (one keep-alive connection each) against the Python baseline.
fn http_phase(cfg: &RunConfig, texts: &Arc<Vec<String>>, budget: &Arc<Budget>) -> Vec<Worker> {
    let url = format!("{}/{}", cfg.addr, cfg.method.name());
    let handles: Vec<_> = (0..cfg.concurrency)
        .map(|_| {
            let (url, texts, budget) = (url.clone(), Arc::clone(texts), Arc::clone(budget));
            let (method, timeout) = (cfg.method, cfg.timeout);
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(timeout))
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut w = Worker::default();
                while let Some(i) = budget.take() {
                    let text = &texts[i as usize % texts.len()];
                    let t = Instant::now();
                    let r = http_request(&agent, &url, text, method);
                    w.record(i, t, r);
                }
                w
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join().unwrap_or_else(|_| Worker {
                errors: 1,
                error_samples: vec!["HTTP client thread panicked".to_owned()],
                ..Worker::default()
            })
        })
        .collect()
}

fn http_request(
    agent: &ureq::Agent,
    url: &str,
    text: &str,
    method: Method,
) -> Result<Vec<f32>, String> {
    let mut resp = agent
        .post(url)
        .send_json(json!({ "text": text }))
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status();
    let body: Value = resp
        .body_mut()
        .read_json()
        .map_err(|e| format!("POST {url}: HTTP {status}, body is not JSON: {e}"))?;
    if !status.is_success() {
        return Err(format!("POST {url}: HTTP {status}: {body}"));
    }
    let field = match method {
        Method::Embed => "embedding",
        Method::Classify => "scores",
    };
    let v: Vec<f32> = body[field]
        .as_array()
        .ok_or_else(|| format!("POST {url}: no {field:?} array in the answer"))?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("POST {url}: {field:?} holds a non-number"))?;
    check_vector(v, method)
}

mod grpc {
    //! The gRPC clients (typed `qattn.v1` API): C tasks on one single-threaded tokio runtime,
    //! sharing one HTTP/2 channel, like a typical gRPC client process.

    use super::{Budget, Method, RunConfig, Worker, check_vector};
    use qattn_serve::proto::qattn::v1::inference_client::InferenceClient;
    use qattn_serve::proto::qattn::v1::{ClassifyRequest, EmbedRequest, Target, TextInput};
    use std::sync::Arc;
    use std::time::Instant;
    use tonic::transport::Channel;

    pub(super) fn phase(
        cfg: &RunConfig,
        texts: &Arc<Vec<String>>,
        budget: &Arc<Budget>,
    ) -> Result<Vec<Worker>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the tokio runtime: {e}"))?;
        rt.block_on(async {
            let channel = Channel::from_shared(cfg.addr.clone())
                .map_err(|e| format!("--addr {:?}: {e}", cfg.addr))?
                .connect()
                .await
                .map_err(|e| format!("connecting to {}: {e}", cfg.addr))?;
            let auth = match &cfg.api_key {
                Some(k) => Some(
                    format!("Bearer {k}")
                        .parse::<tonic::metadata::MetadataValue<_>>()
                        .map_err(|e| format!("--api-key: not a valid header value: {e}"))?,
                ),
                None => None,
            };
            let target = Target {
                model: cfg.model.clone().unwrap_or_default(),
                version: cfg.version.clone().unwrap_or_default(),
                seed: None,
            };
            let tasks: Vec<_> = (0..cfg.concurrency)
                .map(|_| {
                    let mut client =
                        InferenceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
                    let (texts, budget) = (Arc::clone(texts), Arc::clone(budget));
                    let (auth, target, method, timeout) =
                        (auth.clone(), target.clone(), cfg.method, cfg.timeout);
                    tokio::spawn(async move {
                        let mut w = Worker::default();
                        while let Some(i) = budget.take() {
                            let input = TextInput {
                                text: texts[i as usize % texts.len()].clone(),
                                text_pair: None,
                            };
                            let t = Instant::now();
                            let r = match method {
                                Method::Embed => {
                                    let mut req = tonic::Request::new(EmbedRequest {
                                        inputs: vec![input],
                                        target: Some(target.clone()),
                                    });
                                    req.set_timeout(timeout);
                                    if let Some(a) = &auth {
                                        req.metadata_mut().insert("authorization", a.clone());
                                    }
                                    client
                                        .embed(req)
                                        .await
                                        .map_err(|s| {
                                            format!("Embed: {:?}: {}", s.code(), s.message())
                                        })
                                        .and_then(|r| {
                                            r.into_inner()
                                                .embeddings
                                                .into_iter()
                                                .next()
                                                .map(|e| e.values)
                                                .ok_or_else(|| "Embed: no embedding".to_owned())
                                        })
                                }
                                Method::Classify => {
                                    let mut req = tonic::Request::new(ClassifyRequest {
                                        inputs: vec![input],
                                        target: Some(target.clone()),
                                        id: String::new(),
                                    });
                                    req.set_timeout(timeout);
                                    if let Some(a) = &auth {
                                        req.metadata_mut().insert("authorization", a.clone());
                                    }
                                    client
                                        .classify(req)
                                        .await
                                        .map_err(|s| {
                                            format!("Classify: {:?}: {}", s.code(), s.message())
                                        })
                                        .and_then(|r| {
                                            r.into_inner()
                                                .results
                                                .into_iter()
                                                .next()
                                                .map(|c| c.scores.iter().map(|s| s.score).collect())
                                                .ok_or_else(|| "Classify: no result".to_owned())
                                        })
                                }
                            }
                            .and_then(|v| check_vector(v, method));
                            w.record(i, t, r);
                        }
                        w
                    })
                })
                .collect();
            let mut workers = Vec::with_capacity(tasks.len());
            for t in tasks {
                workers.push(t.await.unwrap_or_else(|e| Worker {
                    errors: 1,
                    error_samples: vec![format!("gRPC client task failed: {e}")],
                    ..Worker::default()
                }));
            }
            Ok(workers)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[3.0], 95.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn budget_stops_at_count_and_deadline() {
        let b = Budget::new(3, Duration::from_secs(60));
        assert_eq!(
            (b.take(), b.take(), b.take(), b.take()),
            (Some(0), Some(1), Some(2), None)
        );
        let b = Budget::new(100, Duration::ZERO);
        assert_eq!(b.take(), None);
    }

    #[test]
    fn options_are_checked() {
        let args = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert!(run_cli(&args("run --target grpc --addr x --method embed")).is_err());
        assert!(run_cli(&args("run --target ftp --addr x --method embed")).is_err());
        assert!(run_cli(&args("matmul-rate --size 0")).is_err());
        let bad = "run --target http --addr x --method embed --duration";
        for d in ["inf", "NaN", "-1", "0", "1e20", "86401"] {
            assert!(run_cli(&args(&format!("{bad} {d}"))).is_err(), "{d}");
            let t = format!("run --target http --addr x --method embed --timeout {d}");
            assert!(run_cli(&args(&t)).is_err(), "--timeout {d}");
        }
        assert!(run_cli(&args("matmul-rate --bogus 1")).is_err());
        let v = run_cli(&args("matmul-rate --size 64 --reps 3")).unwrap();
        assert!(v["median_gflops"].as_f64().unwrap() > 0.0, "{v}");
    }

    #[test]
    fn bad_answers_are_errors() {
        assert!(check_vector(vec![], Method::Embed).is_err());
        assert!(check_vector(vec![1.0, f32::NAN], Method::Classify).is_err());
        assert_eq!(check_vector(vec![0.5], Method::Embed), Ok(vec![0.5]));
    }
}
