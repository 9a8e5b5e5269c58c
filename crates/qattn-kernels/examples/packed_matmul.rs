//! Small-batch dense layers: the packed-weight matmul against candle's matmul (gemm) for
//! `x [m, k] · Wᵀ` with `W [n, k]`, at the shapes of a MiniLM layer, for a range of row counts.
//! Prints one line per shape and a JSON array on the last line.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p qattn-kernels --example packed_matmul [REPS]
//! ```

use std::time::Instant;

use candle_core::{Device, Tensor};
use qattn_kernels::packed::PackedWeight;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() -> candle_core::Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let dev = Device::Cpu;
    let mut rows = Vec::new();
    for &(k, n) in &[(384usize, 384usize), (384, 1152), (384, 1536), (1536, 384)] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let wt = w.t()?;
        let p = PackedWeight::from_tensor(&w)?;
        for &m in &[1usize, 8, 20, 32, 64, 128, 256, 384, 512, 768, 1024, 4096] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let gemm = time(reps, || {
                std::hint::black_box(x.matmul(&wt).unwrap());
            });
            let packed = time(reps, || {
                std::hint::black_box(p.matmul_t(&x).unwrap());
            });
            let gflop = 2.0 * (m * n * k) as f64 / 1e9;
            println!(
                "m={m:4} k={k:5} n={n:5}  gemm {:8.1} us {:6.1} GFLOP/s  packed {:8.1} us {:6.1} GFLOP/s  speedup {:.2}x",
                gemm * 1e6,
                gflop / gemm,
                packed * 1e6,
                gflop / packed,
                gemm / packed
            );
            rows.push(format!(
                "{{\"m\":{m},\"k\":{k},\"n\":{n},\"gemm_s\":{gemm:e},\"packed_s\":{packed:e}}}"
            ));
        }
    }
    println!("[{}]", rows.join(","));
    Ok(())
}
