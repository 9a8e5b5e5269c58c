//! Forward throughput and peak memory of one qattn-model configuration, for
//! `cargo xtask bench model` (one process per configuration, so the peak RSS is that
//! configuration's own).
//!
//! ```text
//! cargo run --release -p qattn-model --example bench_forward -- \
//!     --model sentence-transformers/all-MiniLM-L6-v2 --cache-dir ../shared/data/hf \
//!     --attention stratified:32 --batch 32 --seq 128 --warmup 2 --iters 10 --json out.json
//! ```
//!
//! `--device cpu|cuda[:N]` (default `cpu`) picks where the model runs; on a GPU each timed pass
//! ends with a device synchronisation, so the time is the pass's, not its launch's.
//! `--hidden-out PATH` writes the last timed pass's last hidden state as little-endian f32
//! (row-major [batch, seq, hidden]) for comparing devices (the GPU bundle's parity check).
//!
//! The model is loaded offline from the cache (no tokenizer). The token ids are deterministic
//! and identical to `benchmarks/baselines/hf_bert.py`: `id[b][j]` is 101 for `j = 0`, 102 for
//! `j = L-1` and `1000 + (b·7919 + j·104729) mod 28000` otherwise, with no padding. After
//! `warmup` untimed passes, `iters` forward passes are timed one by one (wall clock). The JSON
//! written: `{"estimator", "model", "batch", "seq", "warmup", "iters", "times_s": [...],
//! "median_s", "seqs_per_s", "peak_rss_mb", "threads", "load_s", "cpu_s", "output_abs_mean",
//! "device"}`,
//! where `seqs_per_s = batch / median_s`, `peak_rss_mb` is `VmHWM` of `/proc/self/status` in
//! MiB, `threads` is candle's (and rayon's) thread count, set with `RAYON_NUM_THREADS`, and
//! `cpu_s` the CPU time (user + system, all threads) of the whole process.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use qattn_model::{AttentionConfig, HubOptions, Inputs, LoadOptions, Mode, Model};

mod bench_util;
use bench_util::{Flags, cpu_seconds, median, peak_rss_mib, token_ids, write_report};

/// Command-line options.
struct Args {
    model: String,
    cache_dir: Option<PathBuf>,
    attention: String,
    batch: usize,
    seq: usize,
    warmup: usize,
    iters: usize,
    json: Option<PathBuf>,
    device: String,
    hidden_out: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let flags = Flags::parse(&[
        "--model",
        "--cache-dir",
        "--attention",
        "--batch",
        "--seq",
        "--warmup",
        "--iters",
        "--json",
        "--device",
        "--hidden-out",
    ])?;
    let args = Args {
        model: flags.string("--model", "sentence-transformers/all-MiniLM-L6-v2"),
        cache_dir: flags.path("--cache-dir"),
        attention: flags.string("--attention", "exact"),
        batch: flags.number("--batch", 32)?,
        seq: flags.number("--seq", 128)?,
        warmup: flags.number("--warmup", 2)?,
        iters: flags.number("--iters", 10)?,
        json: flags.path("--json"),
        device: flags.string("--device", "cpu"),
        hidden_out: flags.path("--hidden-out"),
    };
    if args.batch == 0 || args.seq < 2 || args.iters == 0 {
        bail!("need --batch ≥ 1, --seq ≥ 2 and --iters ≥ 1");
    }
    Ok(args)
}

fn main() -> Result<()> {
    // As `qattn serve` does: freed activation buffers stay in the heap between passes.
    qattn_model::memory::retain_freed_memory();
    let args = parse_args()?;
    let threads = candle_core::utils::get_num_threads();
    let device = qattn_model::parse_device(&args.device)?;
    let opts = LoadOptions {
        hub: HubOptions {
            cache_dir: args.cache_dir.clone(),
            offline: true,
            ..HubOptions::default()
        },
        attention: Some(AttentionConfig::parse(&args.attention)?),
        tokenizer: false,
        device: device.clone(),
        ..Default::default()
    };
    let started = Instant::now();
    let model = Model::load(&args.model, &opts)
        .with_context(|| format!("loading {} (offline)", args.model))?;
    let load_s = started.elapsed().as_secs_f64();
    let ids = Tensor::from_vec(
        token_ids(0, args.batch, args.seq),
        (args.batch, args.seq),
        &device,
    )?;
    let inputs = Inputs::from_ids(ids);

    for _ in 0..args.warmup {
        model.forward(&inputs, Mode::EVAL)?;
    }
    device.synchronize()?;
    let mut times = Vec::with_capacity(args.iters);
    let mut output_abs_mean = 0.0;
    let mut last = None;
    for _ in 0..args.iters {
        let t0 = Instant::now();
        let out = model.forward(&inputs, Mode::EVAL)?;
        device.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
        output_abs_mean = out
            .last_hidden_state
            .abs()?
            .mean_all()?
            .to_scalar::<f32>()? as f64;
        last = Some(out.last_hidden_state);
    }
    if let (Some(path), Some(h)) = (&args.hidden_out, last) {
        let values = h
            .to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    let median_s = median(&times);
    let seqs_per_s = args.batch as f64 / median_s;
    eprintln!(
        "qattn {:>16}: median {:.4} s/batch, {:.1} seq/s, {} threads",
        args.attention, median_s, seqs_per_s, threads
    );
    let report = serde_json::json!({
        "estimator": args.attention,
        "model": args.model,
        "batch": args.batch,
        "seq": args.seq,
        "warmup": args.warmup,
        "iters": args.iters,
        "times_s": times,
        "median_s": median_s,
        "seqs_per_s": seqs_per_s,
        "peak_rss_mb": peak_rss_mib(),
        "threads": threads,
        "load_s": load_s,
        "cpu_s": cpu_seconds(),
        "output_abs_mean": output_abs_mean,
        "device": qattn_model::device_spec(&device),
    });
    write_report(&report, args.json.as_deref())
}
