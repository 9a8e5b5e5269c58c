//! Time and accuracy of the `lsh` estimator against our exact kernel as the sequence grows.
//! Driven by `benchmarks/lsh/run.sh`, which writes benchmarks/results/lsh.{json,md}.
//!
//! `cargo run --release -p qattn-kernels --example lsh_scaling -- SPEC L1,L2,… [REPEATS] [EXACT_MAX_L]`
//!
//! For every L: inputs [B·H = 8, L, D = 64] of two kinds. **clustered**: L/256 random directions
//! of norm 8 (in-cluster logits ≈ 8 at scale 1/8, others ≈ 0 ± 1), every query and key one of
//! them plus N(0, 0.02²) noise, L/(L/256) = 256 keys per cluster: each query's attention mass
//! sits on the keys of its cluster, which angular hashing puts in one bucket: the regime LSH is
//! made for. **diffuse**: i.i.d. N(0, 1.5²) entries: peaked attention (logits ≈ N(0, 2.25²)) with
//! no angular structure for the hash to find, so the remainder draws carry the estimate. Forward passes only, no
//! autograd. Prints one JSON object per (L, input kind): median seconds of our exact kernel
//! (skipped above EXACT_MAX_L, default 65536) and of SPEC, SPEC's relative error
//! ‖o − o_exact‖_F / ‖o_exact‖_F (null where exact was skipped), and each kernel's peak memory:
//! how far the process's resident set rose above its level at the start of the first call
//! (Linux: `VmHWM` after resetting it through `/proc/self/clear_refs`; null elsewhere), in MiB —
//! the same measure `benchmarks/lsh/sdpa.py` takes for PyTorch.

use candle_core::{Device, Tensor};
use qattn_kernels::{AttentionOptions, attention};
use std::time::Instant;

fn inputs(kind: &str, l: usize, seed: u64) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let dev = Device::Cpu;
    let (bh, d) = (8usize, 64usize);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut normal = move || {
        // xorshift64* + Box–Muller: deterministic inputs without a dependency.
        let mut u = || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (u1, u2) = (u(), u());
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    };
    let n = bh * l * d;
    let (q, k) = match kind {
        "clustered" => {
            let clusters = (l / 256).max(1);
            let mut centres = vec![0.0f32; clusters * d];
            for c in 0..clusters {
                let row: Vec<f32> = (0..d).map(|_| normal()).collect();
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                for (j, x) in row.iter().enumerate() {
                    centres[c * d + j] = 8.0 * x / norm;
                }
            }
            let mut q = Vec::with_capacity(n);
            let mut k = Vec::with_capacity(n);
            for t in 0..bh * l {
                let cq = (t * 7919) % clusters;
                let ck = (t * 104_729 + 13) % clusters;
                for j in 0..d {
                    q.push(centres[cq * d + j] + 0.02 * normal());
                }
                for j in 0..d {
                    k.push(centres[ck * d + j] + 0.02 * normal());
                }
            }
            (q, k)
        }
        _ => (
            (0..n).map(|_| 1.5 * normal()).collect::<Vec<_>>(),
            (0..n).map(|_| 1.5 * normal()).collect::<Vec<_>>(),
        ),
    };
    let v: Vec<f32> = (0..n).map(|_| normal()).collect();
    let shape = (1, bh, l, d);
    Ok((
        Tensor::from_vec(q, shape, &dev)?,
        Tensor::from_vec(k, shape, &dev)?,
        Tensor::from_vec(v, shape, &dev)?,
    ))
}

/// A field of `/proc/self/status` in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Runs `f` once and returns its result with the rise of the resident set above its level at
/// the start (MiB), or `None` where the peak cannot be reset and read (not Linux).
fn peak_rise<T>(f: impl FnOnce() -> T) -> (T, Option<f64>) {
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = status_kib("VmRSS:");
    let out = f();
    let peak = status_kib("VmHWM:");
    let rise = match (reset, before, peak) {
        (true, Some(b), Some(p)) => Some(p.saturating_sub(b) as f64 / 1024.0),
        _ => None,
    };
    (out, rise)
}

/// The median wall time of `repeats` calls, the last output, and the memory rise of the first
/// call ([`peak_rise`]).
fn median_time(
    repeats: usize,
    mut f: impl FnMut() -> candle_core::Result<Tensor>,
) -> candle_core::Result<(f64, Tensor, Option<f64>)> {
    let mut times = Vec::with_capacity(repeats);
    let mut last = None;
    let mut mem = None;
    for r in 0..repeats {
        let t = Instant::now();
        let o = if r == 0 {
            let (o, rise) = peak_rise(&mut f);
            mem = rise;
            o?
        } else {
            f()?
        };
        times.push(t.elapsed().as_secs_f64());
        last = Some(o);
    }
    times.sort_by(f64::total_cmp);
    Ok((
        times[times.len() / 2],
        last.expect("at least one repeat"),
        mem,
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let spec = args
        .get(1)
        .ok_or("usage: lsh_scaling SPEC L1,L2,… [REPEATS] [EXACT_MAX_L]")?;
    let lengths: Vec<usize> = args
        .get(2)
        .ok_or("missing the lengths, e.g. 4096,16384")?
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let repeats: usize = args
        .get(3)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3)
        .max(1);
    let exact_max: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(65536);
    let lsh = AttentionOptions {
        estimator: spec.parse()?,
        seed: 1,
        ..Default::default()
    };
    let exact = AttentionOptions::default();
    for &l in &lengths {
        for kind in ["clustered", "diffuse"] {
            let (q, k, v) = inputs(kind, l, l as u64)?;
            let (t_lsh, o_lsh, mem_lsh) = median_time(repeats, || {
                attention(&q, &k, &v, &lsh).map_err(|e| candle_core::Error::Msg(e.to_string()))
            })?;
            let (t_exact, err, mem_exact) = if l <= exact_max {
                let reps = if l >= 32768 { 1 } else { repeats };
                let (t, o, mem) = median_time(reps, || {
                    attention(&q, &k, &v, &exact)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))
                })?;
                let diff = (&o_lsh - &o)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
                let norm = o.sqr()?.sum_all()?.to_scalar::<f32>()?;
                (Some(t), Some((diff / norm).sqrt()), mem)
            } else {
                (None, None, None)
            };
            println!(
                "{}",
                serde_json::json!({
                    "spec": spec, "length": l, "inputs": kind, "batch_heads": 8, "head_dim": 64,
                    "lsh_seconds": t_lsh, "exact_seconds": t_exact, "relative_error": err,
                    "speedup": t_exact.map(|t| t / t_lsh),
                    "lsh_peak_mib": mem_lsh, "exact_peak_mib": mem_exact,
                })
            );
        }
    }
    Ok(())
}
