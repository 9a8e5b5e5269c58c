//! Criterion benches of exact and Monte-Carlo attention, read back by `cargo xtask bench kernels`.
//!
//! Shapes match `benchmarks/baselines/torch_sdpa.py`: q, k, v are `[B, H, L, D]` =
//! `[2, 8, L, 64]` f32 on the CPU with Lq = Lk, filled from a fixed-seed Gaussian generator.
//!
//! * group `fwd`: every estimator, function id = the estimator spec, parameter = Lk.
//! * group `fwdbwd`: `exact` with exact gradients, `stratified:32` and `multinomial:32` with
//!   sampled gradients; loss = Σ out ⊙ g, then `loss.backward()`.
//!
//! Throughput is exact-attention FLOPs, 4·B·H·Lq·Lk·D for `fwd` and 3.5× that for `fwdbwd`
//! (FlashAttention's convention: backward = 2.5× forward), so criterion's elements/s are FLOP/s.
//!
//! Freed buffers stay in the process (`qattn_kernels::memory::retain_freed_memory`, as in the
//! `qattn` commands that train and serve): without it every call's multi-megabyte outputs are
//! mapped and unmapped again, and on a multi-threaded process each unmap flushes the other
//! cores' TLBs (the exact forward+backward at Lk = 512, 2 threads: 30.6 and 43.5 ms in two
//! runs with it off, 14.9 ms with it on).
//!
//! `QATTN_BENCH_QUICK=1` shrinks the grid to Lk ∈ {128, 512, 2048} and S ∈ {8, 32}.

use std::hint::black_box;
use std::time::Duration;

use candle_core::{Device, Tensor, Var};
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use criterion::{criterion_group, criterion_main, measurement::WallTime};
use qattn_kernels::{AttentionOptions, EstimatorSpec, GradMode, attention};

const B: usize = 2;
const H: usize = 8;
const D: usize = 64;
/// Seed of the Monte-Carlo estimators; fixed, so every iteration does the same work.
const SEED: u64 = 0x5eed;

fn quick() -> bool {
    std::env::var("QATTN_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn lks() -> &'static [usize] {
    if quick() {
        &[128, 512, 2048]
    } else {
        &[128, 512, 2048, 8192]
    }
}

fn fwd_specs() -> Vec<String> {
    let samples: &[usize] = if quick() { &[8, 32] } else { &[8, 32, 128] };
    let mut specs = vec!["exact".to_owned()];
    for family in ["multinomial", "stratified"] {
        for s in samples {
            specs.push(format!("{family}:{s}"));
        }
    }
    specs.extend(["topk:8:32", "cv:4:32", "adaptive:8:128"].map(str::to_owned));
    specs
}

fn spec(s: &str) -> EstimatorSpec {
    match s.parse::<EstimatorSpec>() {
        Ok(spec) => spec,
        Err(e) => panic!("invalid estimator spec {s:?}: {e}"),
    }
}

fn options(estimator: EstimatorSpec, grad_mode: GradMode) -> AttentionOptions {
    AttentionOptions {
        estimator,
        seed: SEED,
        grad_mode,
        ..AttentionOptions::default()
    }
}

fn fwd_flops(lk: usize) -> u64 {
    (4 * B * H * lk * lk * D) as u64
}

/// Deterministic standard-normal tensor (splitmix64 + Box-Muller), so every run benches the
/// same inputs and data-dependent estimators (adaptive) do the same work.
fn gaussian(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let mut state = seed;
    let mut next_uniform = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // 53 random bits in (0, 1].
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    };
    let mut data = Vec::with_capacity(n);
    while data.len() < n {
        let (u1, u2) = (next_uniform(), next_uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        data.push((r * theta.cos()) as f32);
        data.push((r * theta.sin()) as f32);
    }
    data.truncate(n);
    Tensor::from_vec(data, shape, &Device::Cpu).expect("building a bench input tensor")
}

fn inputs(lk: usize) -> (Tensor, Tensor, Tensor) {
    let shape = (B, H, lk, D);
    let seed = lk as u64;
    (
        gaussian(shape, seed),
        gaussian(shape, seed + 1),
        gaussian(shape, seed + 2),
    )
}

/// Sized for a full run of roughly 10 minutes and a quick run under 3 on 2 cores: long calls get
/// flat sampling (10 samples of one call each when a call is slow) and short warm-ups.
fn configure(group: &mut BenchmarkGroup<'_, WallTime>, lk: usize) {
    let (warm_up, measurement, mode) = match (lk, quick()) {
        (0..=512, true) => (0.2, 1.0, SamplingMode::Auto),
        (0..=512, false) => (0.5, 2.0, SamplingMode::Auto),
        (513..=2048, true) => (0.3, 1.5, SamplingMode::Flat),
        (513..=2048, false) => (0.5, 3.0, SamplingMode::Flat),
        _ => (0.5, 5.0, SamplingMode::Flat),
    };
    group
        .warm_up_time(Duration::from_secs_f64(warm_up))
        .measurement_time(Duration::from_secs_f64(measurement))
        .sampling_mode(mode);
}

fn fwd(c: &mut Criterion) {
    qattn_kernels::memory::retain_freed_memory();
    let specs = fwd_specs();
    let mut group = c.benchmark_group("fwd");
    group.sample_size(10);
    for &lk in lks() {
        configure(&mut group, lk);
        group.throughput(Throughput::Elements(fwd_flops(lk)));
        let (q, k, v) = inputs(lk);
        for s in &specs {
            let opts = options(spec(s), GradMode::Exact);
            let id = BenchmarkId::new(opts.estimator.to_string(), lk);
            group.bench_with_input(id, &opts, |b, opts| {
                b.iter(|| {
                    let out = attention(&q, &k, &v, opts).expect("attention forward");
                    black_box(out)
                })
            });
        }
    }
    group.finish();
}

fn fwdbwd(c: &mut Criterion) {
    qattn_kernels::memory::retain_freed_memory();
    let cases = [
        ("exact", GradMode::Exact),
        ("stratified:32", GradMode::Sampled),
        ("multinomial:32", GradMode::Sampled),
    ];
    let mut group = c.benchmark_group("fwdbwd");
    group.sample_size(10);
    for &lk in lks() {
        configure(&mut group, lk);
        // 3.5× the forward FLOPs: FlashAttention's convention (backward = 2.5× forward).
        group.throughput(Throughput::Elements(fwd_flops(lk) * 7 / 2));
        let (q, k, v) = inputs(lk);
        let g = gaussian((B, H, lk, D), lk as u64 + 3);
        let q = Var::from_tensor(&q).expect("q var");
        let k = Var::from_tensor(&k).expect("k var");
        let v = Var::from_tensor(&v).expect("v var");
        for (s, grad_mode) in cases {
            let opts = options(spec(s), grad_mode);
            let id = BenchmarkId::new(opts.estimator.to_string(), lk);
            group.bench_with_input(id, &opts, |b, opts| {
                b.iter(|| {
                    let out = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), opts)
                        .expect("attention forward");
                    let loss = out
                        .mul(&g)
                        .and_then(|x| x.sum_all())
                        .expect("loss = sum(out * g)");
                    black_box(loss.backward().expect("backward"))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, fwd, fwdbwd);
criterion_main!(benches);
