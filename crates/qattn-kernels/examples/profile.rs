//! Runs one attention configuration repeatedly, for profilers (`perf record`, callgrind).
//! Not a benchmark: use `cargo xtask bench kernels` for numbers.
//!
//! `cargo run --release -p qattn-kernels --example profile -- SPEC LK [ITERS] [fwd|fwdbwd] [B,H,D] [SHARPNESS]`
//!
//! Shape defaults to 2 × 8 heads × D 64 (MiniLM's is 32 × 12 × 32 at LK 128). Queries are
//! scaled by SHARPNESS (default 1): above 1 the attention rows get peakier, like a trained
//! model's.

use candle_core::{Device, Tensor, Var};
use qattn_kernels::{AttentionOptions, GradMode, attention};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let spec = args.get(1).map(String::as_str).unwrap_or("exact");
    let lk: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2048);
    let iters: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let mode = args.get(4).map(String::as_str).unwrap_or("fwd");
    let shape: Vec<usize> = match args.get(5) {
        Some(s) => s.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![2, 8, 64],
    };
    let [b, h, d] = shape[..] else {
        return Err(format!("shape must be B,H,D, got {shape:?}").into());
    };
    let sharpness: f32 = args.get(6).map(|s| s.parse()).transpose()?.unwrap_or(1.0);
    qattn_kernels::memory::retain_freed_memory();
    let dev = Device::Cpu;
    let q = Var::from_tensor(&Tensor::randn(0f32, sharpness, (b, h, lk, d), &dev)?)?;
    let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, lk, d), &dev)?)?;
    let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, lk, d), &dev)?)?;
    let g = Tensor::randn(0f32, 1.0, (b, h, lk, d), &dev)?;
    let grad_mode = if spec == "exact" {
        GradMode::Exact
    } else {
        GradMode::Sampled
    };
    let opts = AttentionOptions {
        estimator: spec.parse()?,
        grad_mode,
        ..Default::default()
    };
    let mut times = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        if mode == "fwd" {
            let _ = attention(
                &q.as_tensor().detach(),
                &k.as_tensor().detach(),
                &v.as_tensor().detach(),
                &opts,
            )?;
        } else {
            // The loss of `cargo xtask bench kernels`' fwdbwd group: Σ out ⊙ g.
            let out = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &opts)?;
            let _ = out.mul(&g)?.sum_all()?.backward()?;
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let flops = 4.0 * (b * h) as f64 * (lk * lk * d) as f64;
    let med = times[times.len() / 2];
    println!(
        "{spec} {mode} Lk={lk}: median {med:.2} ms ({:.1} GFLOP/s exact-equivalent)",
        flops / med / 1e6
    );
    Ok(())
}
