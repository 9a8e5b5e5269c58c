//! The f32 GEMM row of `cargo xtask bench kernels`: candle's matmul (gemm underneath) against
//! this machine's f32 peak, computed from the measured clock and the FMA width.
//!
//! `cargo run --release -p qattn-kernels --example gemm_peak -- [--quick] [--json PATH]`
//!
//! - Clock: a chain of dependent register-to-register integer adds (one per cycle on every
//!   x86-64 core since the Pentium Pro), timed on one thread; GHz = adds / seconds. Adds of an
//!   immediate would not do: Golden Cove cores (Sapphire Rapids, Alder Lake) fold chains of
//!   `add reg, imm` in the renamer and retire several per cycle (an immediate chain measured
//!   23.9 "GHz" on a Sapphire Rapids Xeon).
//! - Width: 16 f32 lanes with AVX-512F, 8 with AVX2+FMA (what gemm's dispatcher picks).
//! - Peak: clock × lanes × 2 FLOP (multiply + add) × 2 FMA pipes per core × threads. Two FMA
//!   pipes is the figure of the Zen and Xeon cores this project runs on; a core with one
//!   AVX-512 FMA unit has half the AVX-512 peak (the measured FMA throughput shows it).
//! - FMA throughput: 12 independent FMA chains per thread in registers (no memory), the
//!   rate the core sustains in practice.
//! - Micro-kernel ceiling (AVX-512F only): the inner loop of a GEMM with nothing around it —
//!   a 14 × 32 block of C in 28 registers, updated from packed A and B panels that sit in L1
//!   (14 broadcasts and 2 vector loads per 28 FMAs, the shape of a BLIS-style AVX-512 kernel),
//!   on every thread at once. No GEMM can beat its own inner loop, so this is the rate a GEMM
//!   can reach on this machine; the FMA-chain figure above has no loads at all.
//! - GEMM: `[M, K] × [K, N]` f32 candle matmuls, default 4096 × 384 × 1536 (the MiniLM
//!   feed-forward at batch 32 × 128), median of timed runs after a warm-up.
//!
//! JSON: `{"isa", "lanes", "threads", "clock_ghz", "peak_gflops", "fma_gflops",
//! "kernel_gflops" (null without AVX-512F), "gemm": {"m", "k", "n", "median_s", "gflops", "fraction_of_peak"}}`.

use std::time::Instant;

use candle_core::{Device, Tensor};

fn isa() -> (&'static str, usize) {
    if std::arch::is_x86_feature_detected!("avx512f") {
        ("AVX-512F", 16)
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        ("AVX2+FMA", 8)
    } else {
        ("baseline x86-64", 4)
    }
}

/// GHz from a dependent chain of register-to-register integer adds (1 cycle each).
fn clock_ghz() -> f64 {
    const ADDS_PER_ITER: u64 = 100;
    let iters: u64 = 5_000_000;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let mut x: u64 = 0;
        let one: u64 = std::hint::black_box(1);
        let t = Instant::now();
        for _ in 0..iters {
            // SAFETY: register-only arithmetic on `x`.
            unsafe {
                std::arch::asm!(
                    ".rept 100",
                    "add {x}, {one}",
                    ".endr",
                    x = inout(reg) x,
                    one = in(reg) one,
                    options(nomem, nostack, pure),
                );
            }
        }
        let s = t.elapsed().as_secs_f64();
        std::hint::black_box(x);
        best = best.min(s);
    }
    (iters * ADDS_PER_ITER) as f64 / best / 1e9
}

/// FLOP/s of 12 independent AVX2 FMA chains for `iters` iterations on the calling thread.
#[target_feature(enable = "avx2,fma")]
fn fma_avx2(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(0.0); 12];
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let t = Instant::now();
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let s = t.elapsed().as_secs_f64();
    std::hint::black_box(&acc);
    (iters * 12 * 8 * 2) as f64 / s
}

/// As [`fma_avx2`] with AVX-512 vectors.
#[target_feature(enable = "avx512f")]
fn fma_avx512(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); 12];
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let t = Instant::now();
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let s = t.elapsed().as_secs_f64();
    std::hint::black_box(&acc);
    (iters * 12 * 16 * 2) as f64 / s
}

/// Rows and columns of the micro-kernel's register block, and its reduction depth.
const KMR: usize = 14;
const KNR: usize = 32;
const KKC: usize = 128;

/// FLOP/s of the 14 × 32 micro-kernel over L1-resident panels for `reps` passes.
#[target_feature(enable = "avx512f")]
fn kernel_avx512(reps: u64) -> f64 {
    use std::arch::x86_64::*;
    let a: Vec<f32> = (0..KMR * KKC)
        .map(|i| 1.0 + (i % 7) as f32 * 1e-3)
        .collect();
    let b: Vec<f32> = (0..KKC * KNR).map(|i| 1e-3 * (i % 5) as f32).collect();
    let mut c = [0.0f32; KMR * KNR];
    let t = Instant::now();
    for _ in 0..reps {
        let mut acc = [[_mm512_setzero_ps(); 2]; KMR];
        for kk in 0..KKC {
            // SAFETY: kk < KKC, so the loads stay inside `b` (KKC·KNR) and `a` (KKC·KMR).
            unsafe {
                let bp = b.as_ptr().add(kk * KNR);
                let (b0, b1) = (_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(16)));
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm512_set1_ps(*a.as_ptr().add(kk * KMR + i));
                    row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                    row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: row i of the 14 × 32 block of `c`.
            unsafe {
                let p = c.as_mut_ptr().add(i * KNR);
                _mm512_storeu_ps(p, _mm512_add_ps(row[0], _mm512_loadu_ps(p)));
                _mm512_storeu_ps(p.add(16), _mm512_add_ps(row[1], _mm512_loadu_ps(p.add(16))));
            }
        }
    }
    let s = t.elapsed().as_secs_f64();
    std::hint::black_box(&c);
    (reps as usize * 2 * KMR * KNR * KKC) as f64 / s
}

/// The best of 3 rounds of `run` on `threads` threads at once, each round's results summed.
fn best_total(threads: usize, run: impl Fn() -> f64 + Send + Copy + 'static) -> f64 {
    (0..3)
        .map(|_| {
            let handles: Vec<_> = (0..threads).map(|_| std::thread::spawn(run)).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0.0))
                .sum::<f64>()
        })
        .fold(0.0, f64::max)
}

/// Total micro-kernel FLOP/s over `threads` threads at once (best of 3); `None` without
/// AVX-512F.
fn kernel_throughput(threads: usize) -> Option<f64> {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return None;
    }
    let reps = 200_000;
    // SAFETY: AVX-512F was detected above.
    let run = move || -> f64 { unsafe { kernel_avx512(reps) } };
    Some(best_total(threads, run))
}

/// Total FMA FLOP/s over `threads` threads running at once (best of 3).
fn fma_throughput(lanes: usize, threads: usize) -> f64 {
    let iters = 20_000_000;
    let run = move || -> f64 {
        // SAFETY: the function is only called when the CPU has the features it was compiled
        // for (checked by `isa`).
        unsafe {
            if lanes == 16 {
                fma_avx512(iters)
            } else {
                fma_avx2(iters)
            }
        }
    };
    best_total(threads, run)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let (isa, lanes) = isa();
    if lanes < 8 {
        return Err(format!("no AVX2+FMA on this CPU ({isa}): no FMA peak to measure").into());
    }
    let clock = clock_ghz();
    let peak = clock * lanes as f64 * 2.0 * 2.0 * threads as f64;
    let fma = fma_throughput(lanes, threads) / 1e9;
    let kernel = kernel_throughput(threads).map(|f| f / 1e9);
    let (m, k, n) = (4096, 384, 1536);
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), &dev)?;
    for _ in 0..2 {
        a.matmul(&b)?;
    }
    let reps = if quick { 10 } else { 30 };
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        times.push(t.elapsed().as_secs_f64());
        std::hint::black_box(c);
    }
    let med = median(times);
    let gflops = 2.0 * (m * k * n) as f64 / med / 1e9;
    println!(
        "{isa}, {threads} threads: clock {clock:.2} GHz, peak {peak:.0} GFLOP/s \
         ({lanes} lanes × 2 × 2 FMA pipes × {threads}), FMA throughput {fma:.0} GFLOP/s, \
         micro-kernel on L1 panels {}; matmul {m}×{k}×{n}: {:.2} ms, {gflops:.0} GFLOP/s = {:.0}% of peak",
        kernel.map_or("—".to_owned(), |k| format!("{k:.0} GFLOP/s")),
        med * 1e3,
        100.0 * gflops / peak
    );
    if let Some(path) = json {
        let text = format!(
            "{{\"isa\": \"{isa}\", \"lanes\": {lanes}, \"threads\": {threads}, \
             \"clock_ghz\": {clock}, \"peak_gflops\": {peak}, \"fma_gflops\": {fma}, \
             \"kernel_gflops\": {}, \"gemm\": {{\"m\": {m}, \"k\": {k}, \"n\": {n}, \"median_s\": {med}, \
             \"gflops\": {gflops}, \"fraction_of_peak\": {}}}}}\n",
            kernel.map_or("null".to_owned(), |k| k.to_string()),
            gflops / peak
        );
        std::fs::write(&path, text)?;
    }
    Ok(())
}
