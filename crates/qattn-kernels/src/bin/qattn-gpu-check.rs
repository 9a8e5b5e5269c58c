//! `qattn-gpu-check`: checks the CUDA kernels against the CPU reference and times them.
//!
//! Correctness (each on fresh random inputs, outputs poisoned with NaN before the run):
//! exact f32 relative error ≤ 1e-5, exact bf16/f16 ≤ 1e-2 (against the CPU path on the same
//! rounded inputs), sampling (`multinomial:S`, `stratified:S`) identical indices and outputs
//! within 1e-5 of the CPU path for the same seed. The `exact_*` checks and timings call the
//! `cuda/exact.cu` kernels explicitly (`exact_forward_wmma`/`exact_wmma_run`: f32 tiled, bf16/f16
//! WMMA), not the flash2 kernel that `exact_forward` dispatches bf16/f16 to, so the table's
//! WMMA rows stay reproducible. Timing: exact f32, exact bf16 and `stratified:32` forward for B·H = 16, D = 64, Lq = Lk ∈ {512, 2048, 8192}, CUDA events,
//! warm-ups, median of repeats. The FlashAttention-2-style kernels (`cuda/flash.cu`, 16 and 32
//! query rows per warp) are checked (rel. err ≤ 1e-2, bf16/f16) and timed (`"op":"exact_flash"`,
//! `"exact_flash2"`) after everything else, so a fault in them cannot hide the other results. Writes JSON to `--out` (default `gpu-rust.json`) and prints a
//! table. Exit status 1 when a check fails, 2 when there is no usable GPU.

use candle_core::{Device, Tensor};
use qattn_kernels::cuda::backward::CheckLine;
use qattn_kernels::cuda::{
    GpuContext, GpuDType, GpuOptions, GpuShape, McOutput, cpu_mc_reference, emulate_mc, lse_f64,
    mc_kernel_params,
};
use qattn_kernels::{AttentionOptions, EstimatorSpec, attention};
use std::fmt::Write as _;
use std::time::Instant;

struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut z = self.0;
        z = (z ^ (z >> 33)).wrapping_mul(0xff51afd7ed558ccd);
        z ^ (z >> 33)
    }
    /// Approximately standard normal (sum of 4 uniforms, rescaled).
    fn normal(&mut self) -> f32 {
        let s: f64 = (0..4)
            .map(|_| (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
            .sum();
        ((s - 2.0) * (3.0f64).sqrt()) as f32
    }
    fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * amp).collect()
    }
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (&g, &w) in got.iter().zip(want) {
        if g == w {
            continue; // also equal infinities (rows with no visible key)
        }
        if !g.is_finite() || !w.is_finite() {
            return f64::INFINITY;
        }
        num += (f64::from(g) - f64::from(w)).powi(2);
        den += f64::from(w).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

/// A JSON number, or null when not finite.
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:e}")
    } else {
        "null".into()
    }
}

fn cpu_exact(q: &[f32], k: &[f32], v: &[f32], s: GpuShape, o: &GpuOptions) -> Vec<f32> {
    let dev = Device::Cpu;
    let t = |x: &[f32], l: usize| Tensor::from_slice(x, (s.b, s.h, l, s.d), &dev).expect("tensor");
    let mask = o.mask.as_ref().map(|m| {
        let f: Vec<f32> = m.iter().map(|&x| f32::from(u8::from(x != 0))).collect();
        Tensor::from_vec(f, (s.b, s.lk), &dev).expect("mask")
    });
    let ao = AttentionOptions {
        causal: o.causal,
        scale: o.scale,
        mask,
        ..Default::default()
    };
    attention(&t(q, s.lq), &t(k, s.lk), &t(v, s.lk), &ao)
        .and_then(|x| Ok(x.flatten_all()?.to_vec1::<f32>()?))
        .expect("cpu exact")
}

struct Checks {
    lines: Vec<String>,
    json: Vec<String>,
    failed: usize,
}

impl Checks {
    fn add(&mut self, name: &str, pass: bool, detail: String, json: String) {
        let line = format!("{} {name}: {detail}", if pass { "PASS" } else { "FAIL" });
        println!("{line}");
        self.lines.push(line);
        self.json
            .push(format!("{{\"name\":\"{name}\",\"pass\":{pass},{json}}}"));
        if !pass {
            self.failed += 1;
        }
    }
}

fn shape_str(s: &GpuShape) -> String {
    format!("B{}xH{}xLq{}xLk{}xD{}", s.b, s.h, s.lq, s.lk, s.d)
}

fn mask_for(rng: &mut Rng, s: &GpuShape, on: bool) -> Option<Vec<u8>> {
    on.then(|| {
        (0..s.b * s.lk)
            .map(|i| u8::from(i % s.lk == 0 || !rng.next_u64().is_multiple_of(5)))
            .collect()
    })
}

fn correctness(ctx: &GpuContext, rng: &mut Rng, c: &mut Checks) {
    let sh = |b, h, lq, lk, d| GpuShape { b, h, lq, lk, d };
    // exact
    let cases = [
        (sh(1, 2, 300, 257, 64), false, false),
        (sh(2, 2, 128, 200, 32), true, false),
        (sh(1, 2, 200, 200, 64), false, true),
        (sh(1, 1, 100, 70, 16), true, true),
        (sh(1, 16, 512, 512, 64), false, false),
    ];
    for dtype in [GpuDType::F32, GpuDType::BF16, GpuDType::F16] {
        let tol = if dtype == GpuDType::F32 { 1e-5 } else { 1e-2 };
        for (s, masked, causal) in cases {
            if dtype != GpuDType::F32 && s.d == 16 {
                continue;
            }
            let q = dtype.round(&rng.vec(s.b * s.h * s.lq * s.d, 1.0));
            let k = dtype.round(&rng.vec(s.b * s.h * s.lk * s.d, 1.0));
            let v = dtype.round(&rng.vec(s.b * s.h * s.lk * s.d, 1.0));
            let opts = GpuOptions {
                scale: None,
                causal,
                mask: mask_for(rng, &s, masked),
            };
            let name = format!(
                "exact_{}_{}{}{}",
                dtype.name(),
                shape_str(&s),
                if masked { "_mask" } else { "" },
                if causal { "_causal" } else { "" }
            );
            match ctx.exact_forward_wmma(&q, &k, &v, s, &opts, dtype) {
                Ok(g) => {
                    let want = cpu_exact(&q, &k, &v, s, &opts);
                    let e = rel_err(&g.out, &want);
                    let lw = lse_f64(&q, &k, s, &opts);
                    let le = rel_err(&g.lse, &lw);
                    let pass = e <= tol && le <= tol.max(1e-5);
                    c.add(
                        &name,
                        pass,
                        format!("rel err out {e:.3e}, lse {le:.3e} (tol {tol:.0e})"),
                        format!(
                            "\"rel_err\":{},\"lse_rel_err\":{},\"tol\":{tol:e}",
                            num(e),
                            num(le)
                        ),
                    );
                }
                Err(e) => c.add(&name, false, format!("error: {e}"), "\"error\":true".into()),
            }
        }
    }
    // sampling
    let cases = [
        (sh(1, 2, 70, 200, 64), false, false),
        (sh(2, 2, 64, 65, 32), true, false),
        (sh(1, 2, 80, 80, 64), false, true),
        (sh(1, 1, 33, 17, 16), true, false),
        (sh(1, 16, 512, 512, 64), false, false),
        (sh(1, 4, 256, 2048, 64), true, false),
    ];
    for spec in [
        "stratified:32",
        "multinomial:32",
        "stratified:7",
        "multinomial:1",
    ] {
        let spec: EstimatorSpec = spec.parse().expect("spec");
        for &(s, masked, causal) in &cases {
            let seed = rng.next_u64();
            let q = rng.vec(s.b * s.h * s.lq * s.d, 1.5);
            let k = rng.vec(s.b * s.h * s.lk * s.d, 1.5);
            let v = rng.vec(s.b * s.h * s.lk * s.d, 1.0);
            let opts = GpuOptions {
                scale: None,
                causal,
                mask: mask_for(rng, &s, masked),
            };
            let name = format!(
                "mc_{}_{}{}{}",
                spec.to_string().replace(':', ""),
                shape_str(&s),
                if masked { "_mask" } else { "" },
                if causal { "_causal" } else { "" }
            );
            let g = match ctx.mc_forward(&q, &k, &v, s, &opts, &spec, seed) {
                Ok(g) => g,
                Err(e) => {
                    c.add(&name, false, format!("error: {e}"), "\"error\":true".into());
                    continue;
                }
            };
            let w = cpu_mc_reference(&q, &k, &v, s, &opts, &spec, seed).expect("cpu mc");
            let diff_idx = g
                .indices
                .iter()
                .zip(&w.indices)
                .filter(|(a, b)| a != b)
                .count();
            let max_abs = g
                .out
                .iter()
                .zip(&w.out)
                .map(|(a, b)| {
                    if a.is_finite() {
                        (a - b).abs()
                    } else {
                        f32::INFINITY
                    }
                })
                .fold(0.0f32, f32::max);
            let bitwise = g
                .out
                .iter()
                .zip(&w.out)
                .filter(|(a, b)| a.to_bits() == b.to_bits())
                .count();
            let le = rel_err(&g.lse, &w.lse);
            let pass = diff_idx == 0 && max_abs <= 1e-5 && le <= 1e-5;
            if diff_idx > 0 {
                explain_mismatch(&g, &w, &q, &k, &v, s, &opts, &spec, seed);
            }
            c.add(
                &name,
                pass,
                format!(
                    "seed {seed:#x}: {diff_idx} of {} indices differ, max |out diff| {max_abs:.2e}, \
                     {bitwise}/{} outputs bit-equal, lse rel err {le:.2e}",
                    g.indices.len(),
                    g.out.len()
                ),
                format!(
                    "\"indices\":{},\"indices_differ\":{diff_idx},\"max_abs_out_diff\":{},\
                     \"bitwise_equal_outputs\":{bitwise},\"outputs\":{},\"lse_rel_err\":{}",
                    g.indices.len(),
                    num(f64::from(max_abs)),
                    g.out.len(),
                    num(le)
                ),
            );
        }
    }
}

/// Diagnoses an index mismatch: GPU vs the host emulation of the kernel vs the CPU path.
#[allow(clippy::too_many_arguments)]
fn explain_mismatch(
    g: &McOutput,
    w: &McOutput,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: GpuShape,
    opts: &GpuOptions,
    spec: &EstimatorSpec,
    seed: u64,
) {
    let n = g.shots;
    let Ok(e) = emulate_mc(q, k, v, s, opts, spec, seed) else {
        return;
    };
    let cnt = |a: &[u32], b: &[u32]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    println!(
        "  mismatch detail: gpu vs emulation {} differ, emulation vs cpu {} differ",
        cnt(&g.indices, &e.indices),
        cnt(&e.indices, &w.indices)
    );
    let rows = g.indices.len() / n.max(1);
    let mut shown = 0;
    for r in 0..rows {
        let (a, b) = (
            &g.indices[r * n..(r + 1) * n],
            &w.indices[r * n..(r + 1) * n],
        );
        if a != b && shown < 3 {
            println!(
                "  row {r}: gpu {:?}\n          cpu {:?}\n          emu {:?}\n          lse gpu {} cpu {} emu {}",
                &a[..n.min(12)],
                &b[..n.min(12)],
                &e.indices[r * n..r * n + n.min(12)],
                g.lse[r],
                w.lse[r],
                e.lse[r]
            );
            shown += 1;
        }
    }
}

fn median(mut t: Vec<f32>) -> f64 {
    t.sort_by(f32::total_cmp);
    let n = t.len();
    if n % 2 == 1 {
        f64::from(t[n / 2])
    } else {
        (f64::from(t[n / 2 - 1]) + f64::from(t[n / 2])) / 2.0
    }
}

fn timing(
    ctx: &GpuContext,
    rng: &mut Rng,
    sizes: &[usize],
) -> Result<Vec<String>, qattn_kernels::Error> {
    let mut rows = Vec::new();
    let spec: EstimatorSpec = "stratified:32".parse().expect("spec");
    let (n, strat) = mc_kernel_params(&spec)?;
    for &l in sizes {
        let s = GpuShape {
            b: 1,
            h: 16,
            lq: l,
            lk: l,
            d: 64,
        };
        let q = rng.vec(16 * l * 64, 1.0);
        let k = rng.vec(16 * l * 64, 1.0);
        let v = rng.vec(16 * l * 64, 1.0);
        let opts = GpuOptions::default();
        let flops = 4.0 * 16.0 * (l as f64) * (l as f64) * 64.0;
        let reps = if l >= 8192 { 10 } else { 20 };
        for dtype in [GpuDType::F32, GpuDType::BF16] {
            let inp = ctx.upload(&q, &k, &v, s, &opts, dtype)?;
            let mut o = ctx.exact_alloc(&inp)?;
            let t = ctx.time_ms(3, reps, || ctx.exact_wmma_run(&inp, &mut o))?;
            let ms = median(t.clone());
            let tf = flops / (ms * 1e-3) / 1e12;
            println!(
                "time exact {} L={l}: median {ms:.3} ms ({tf:.1} TFLOP/s), reps {reps}",
                dtype.name()
            );
            rows.push(format!(
                "{{\"impl\":\"qattn\",\"op\":\"exact\",\"dtype\":\"{}\",\"pass\":\"fwd\",\"bh\":16,\"d\":64,\"l\":{l},\"median_ms\":{ms:.6},\"min_ms\":{:.6},\"reps\":{reps},\"tflops\":{tf:.3}}}",
                dtype.name(),
                t.iter().cloned().fold(f32::INFINITY, f32::min)
            ));
        }
        let inp = ctx.upload(&q, &k, &v, s, &opts, GpuDType::F32)?;
        let mut o = ctx.mc_alloc(&inp, n)?;
        let t = ctx.time_ms(3, reps, || ctx.mc_run(&inp, &mut o, strat, 42))?;
        let ms = median(t.clone());
        println!("time stratified:32 f32 L={l}: median {ms:.3} ms, reps {reps}");
        rows.push(format!(
            "{{\"impl\":\"qattn\",\"op\":\"stratified:32\",\"dtype\":\"f32\",\"pass\":\"fwd\",\"bh\":16,\"d\":64,\"l\":{l},\"median_ms\":{ms:.6},\"min_ms\":{:.6},\"reps\":{reps}}}",
            t.iter().cloned().fold(f32::INFINITY, f32::min)
        ));
    }
    Ok(rows)
}

/// A library self-check on the GPU (`gpu_self_check` of `cuda::backward` / `cuda::noise`).
type SelfCheck = fn(&GpuContext) -> qattn_kernels::Result<Vec<CheckLine>>;

/// The backward (exact f32 and sampled) and measurement-noise self-checks against the CPU
/// reference; returns how many failed (an error while checking counts as a failure).
fn backward_and_noise_checks(ctx: &GpuContext, c: &mut Checks) -> usize {
    let before = c.failed;
    let runs: [(&str, SelfCheck); 2] = [
        ("backward", qattn_kernels::cuda::backward::gpu_self_check),
        ("noise", qattn_kernels::cuda::noise::gpu_self_check),
    ];
    for (what, run) in runs {
        match run(ctx) {
            Ok(lines) => {
                for l in lines {
                    let detail = l.detail.replace('"', "'");
                    c.add(
                        &format!("{what}_{}", l.name.replace([' ', '"'], "_")),
                        l.passed,
                        l.detail.clone(),
                        format!("\"detail\":\"{detail}\""),
                    );
                }
            }
            Err(e) => {
                let msg = e.to_string().replace('"', "'");
                c.add(what, false, msg.clone(), format!("\"error\":\"{msg}\""));
            }
        }
    }
    c.failed - before
}

/// Times the exact f32 backward and the sampled backward of `stratified:32` (each after one
/// GPU forward; only the backward is timed); rows with `"pass":"bwd"`.
fn backward_timing(
    ctx: &GpuContext,
    rng: &mut Rng,
    sizes: &[usize],
) -> Result<Vec<String>, qattn_kernels::Error> {
    use qattn_kernels::cuda::backward::{time_exact_backward, time_sampled_backward};
    let spec: EstimatorSpec = "stratified:32".parse().expect("spec");
    let mut rows = Vec::new();
    for &l in sizes {
        let s = GpuShape {
            b: 1,
            h: 16,
            lq: l,
            lk: l,
            d: 64,
        };
        let q = rng.vec(16 * l * 64, 1.0);
        let k = rng.vec(16 * l * 64, 1.0);
        let v = rng.vec(16 * l * 64, 1.0);
        let opts = GpuOptions::default();
        let reps = if l >= 8192 { 5 } else { 10 };
        for (op, t) in [
            (
                "exact",
                time_exact_backward(ctx, &q, &k, &v, s, &opts, 2, reps)?,
            ),
            (
                "stratified:32",
                time_sampled_backward(ctx, &q, &k, &v, s, &opts, &spec, 42, 2, reps)?,
            ),
        ] {
            let ms = median(t.clone());
            println!("time backward {op} f32 L={l}: median {ms:.3} ms, reps {reps}");
            rows.push(format!(
                "{{\"impl\":\"qattn\",\"op\":\"{op}\",\"dtype\":\"f32\",\"pass\":\"bwd\",\"bh\":16,\"d\":64,\"l\":{l},\"median_ms\":{ms:.6},\"min_ms\":{:.6},\"reps\":{reps}}}",
                t.iter().cloned().fold(f32::INFINITY, f32::min)
            ));
        }
    }
    Ok(rows)
}

/// Correctness of the FlashAttention-2-style kernel (`exact_forward_flash`, bf16/f16, D ∈ {32,
/// 64}) against the CPU path on the same rounded inputs: rel. err ≤ 1e-2 (output and lse).
/// Runs after every other check, so a fault in it cannot hide their results.
fn flash_correctness(ctx: &GpuContext, rng: &mut Rng, c: &mut Checks, rows32: bool) -> usize {
    let sh = |b, h, lq, lk, d| GpuShape { b, h, lq, lk, d };
    // L not a multiple of 64, Lq ≠ Lk, single partial tiles, masks, causal, D = 32 and 64,
    // and the timing shape.
    let cases = [
        (sh(1, 2, 300, 257, 64), false, false),
        (sh(2, 2, 128, 200, 32), true, false),
        (sh(1, 2, 200, 200, 64), false, true),
        (sh(2, 3, 77, 77, 64), true, true),
        (sh(1, 1, 5, 3, 32), false, false),
        (sh(1, 2, 64, 1000, 64), true, false),
        (sh(1, 2, 190, 130, 32), false, true),
        (sh(1, 16, 512, 512, 64), false, false),
        (sh(1, 4, 1024, 1024, 64), false, true),
    ];
    let mut failed = 0;
    for dtype in [GpuDType::BF16, GpuDType::F16] {
        for (s, masked, causal) in cases {
            // Larger logits on one case (amplitude 2: scores up to ~±30) test the rescaling.
            let amp = if s.lq == 77 { 2.0 } else { 1.0 };
            let q = dtype.round(&rng.vec(s.b * s.h * s.lq * s.d, amp));
            let k = dtype.round(&rng.vec(s.b * s.h * s.lk * s.d, amp));
            let v = dtype.round(&rng.vec(s.b * s.h * s.lk * s.d, 1.0));
            let opts = GpuOptions {
                scale: None,
                causal,
                mask: mask_for(rng, &s, masked),
            };
            let name = format!(
                "exact_{}_{}_{}{}{}",
                flash_op(rows32),
                dtype.name(),
                shape_str(&s),
                if masked { "_mask" } else { "" },
                if causal { "_causal" } else { "" }
            );
            let tol = 1e-2;
            let got = if rows32 {
                ctx.exact_forward_flash2(&q, &k, &v, s, &opts, dtype)
            } else {
                ctx.exact_forward_flash(&q, &k, &v, s, &opts, dtype)
            };
            match got {
                Ok(g) => {
                    let want = cpu_exact(&q, &k, &v, s, &opts);
                    let e = rel_err(&g.out, &want);
                    let lw = lse_f64(&q, &k, s, &opts);
                    let le = rel_err(&g.lse, &lw);
                    let pass = e <= tol && le <= tol;
                    failed += usize::from(!pass);
                    c.add(
                        &name,
                        pass,
                        format!("rel err out {e:.3e}, lse {le:.3e} (tol {tol:.0e})"),
                        format!(
                            "\"rel_err\":{},\"lse_rel_err\":{},\"tol\":{tol:e}",
                            num(e),
                            num(le)
                        ),
                    );
                }
                Err(e) => {
                    failed += 1;
                    c.add(&name, false, format!("error: {e}"), "\"error\":true".into());
                }
            }
        }
    }
    failed
}

/// `flash` (16 query rows per warp) or `flash2` (32 rows per warp).
fn flash_op(rows32: bool) -> &'static str {
    if rows32 { "flash2" } else { "flash" }
}

/// Times a flash kernel (bf16 and f16, forward) for the timing shapes; rows with
/// `"op":"exact_flash"` (16 rows per warp) or `"op":"exact_flash2"` (32).
fn flash_timing(
    ctx: &GpuContext,
    rng: &mut Rng,
    sizes: &[usize],
    rows32: bool,
) -> Result<Vec<String>, qattn_kernels::Error> {
    let mut rows = Vec::new();
    for &l in sizes {
        let s = GpuShape {
            b: 1,
            h: 16,
            lq: l,
            lk: l,
            d: 64,
        };
        let q = rng.vec(16 * l * 64, 1.0);
        let k = rng.vec(16 * l * 64, 1.0);
        let v = rng.vec(16 * l * 64, 1.0);
        let opts = GpuOptions::default();
        let flops = 4.0 * 16.0 * (l as f64) * (l as f64) * 64.0;
        let reps = if l >= 8192 { 10 } else { 20 };
        for dtype in [GpuDType::BF16, GpuDType::F16] {
            let inp = ctx.upload(&q, &k, &v, s, &opts, dtype)?;
            let mut o = ctx.exact_alloc(&inp)?;
            let t = ctx.time_ms(3, reps, || {
                if rows32 {
                    ctx.exact_flash2_run(&inp, &mut o)
                } else {
                    ctx.exact_flash_run(&inp, &mut o)
                }
            })?;
            let ms = median(t.clone());
            let tf = flops / (ms * 1e-3) / 1e12;
            println!(
                "time exact {} ({}) L={l}: median {ms:.3} ms ({tf:.1} TFLOP/s), reps {reps}",
                dtype.name(),
                flash_op(rows32)
            );
            rows.push(format!(
                "{{\"impl\":\"qattn\",\"op\":\"exact_{}\",\"dtype\":\"{}\",\"pass\":\"fwd\",\"bh\":16,\"d\":64,\"l\":{l},\"median_ms\":{ms:.6},\"min_ms\":{:.6},\"reps\":{reps},\"tflops\":{tf:.3}}}",
                flash_op(rows32),
                dtype.name(),
                t.iter().cloned().fold(f32::INFINITY, f32::min)
            ));
        }
    }
    Ok(rows)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut out_path = "gpu-rust.json".to_string();
    let mut sizes = vec![512usize, 2048, 8192];
    let mut skip_timing = false;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--out" if i + 1 < args.len() => {
                out_path = args[i + 1].clone();
                i += 1;
            }
            "--sizes" if i + 1 < args.len() => {
                sizes = args[i + 1]
                    .split(',')
                    .filter_map(|x| x.parse().ok())
                    .collect();
                i += 1;
            }
            "--no-timing" => skip_timing = true,
            other => {
                eprintln!(
                    "usage: qattn-gpu-check [--out FILE] [--sizes 512,2048,8192] [--no-timing]\nunknown argument `{other}`"
                );
                std::process::exit(64);
            }
        }
        i += 1;
    }
    let t0 = Instant::now();
    let ctx = match GpuContext::new(0) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qattn-gpu-check: skipped: {e}");
            std::process::exit(2);
        }
    };
    let driver = ctx
        .driver_version()
        .map(|(a, b)| format!("{a}.{b}"))
        .unwrap_or_default();
    println!(
        "device: {} (CUDA driver API {driver}); context + JIT {:.2} s",
        ctx.device_name(),
        t0.elapsed().as_secs_f64()
    );
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ 20261128);
    let mut checks = Checks {
        lines: Vec::new(),
        json: Vec::new(),
        failed: 0,
    };
    correctness(&ctx, &mut rng, &mut checks);
    println!(
        "correctness: {} checks, {} failed ({:.1} s)",
        checks.json.len(),
        checks.failed,
        t0.elapsed().as_secs_f64()
    );
    let timings = if skip_timing {
        Ok(Vec::new())
    } else {
        timing(&ctx, &mut rng, &sizes)
    };
    let (mut timings, mut terr) = match timings {
        Ok(t) => (t, String::new()),
        Err(e) => {
            eprintln!("timing failed: {e}");
            (Vec::new(), e.to_string())
        }
    };
    // Backward kernels and measurement-noise channels (cuda/backward.cu, cuda/noise.cu).
    let bwd_failed = backward_and_noise_checks(&ctx, &mut checks);
    println!(
        "backward + noise correctness: {bwd_failed} failed; all checks: {}, {} failed ({:.1} s)",
        checks.json.len(),
        checks.failed,
        t0.elapsed().as_secs_f64()
    );
    if !skip_timing {
        if bwd_failed > 0 {
            eprintln!("backward timing skipped: its correctness checks failed");
        } else {
            match backward_timing(&ctx, &mut rng, &sizes) {
                Ok(t) => timings.extend(t),
                Err(e) => {
                    eprintln!("backward timing failed: {e}");
                    if !terr.is_empty() {
                        terr.push_str("; ");
                    }
                    terr.push_str(&format!("backward: {e}"));
                }
            }
        }
    }
    // The flash kernel last: a fault in it (which can poison the CUDA context) cannot hide
    // the results above.
    for rows32 in [false, true] {
        let op = flash_op(rows32);
        let flash_failed = flash_correctness(&ctx, &mut rng, &mut checks, rows32);
        println!(
            "{op} correctness: {flash_failed} failed; all checks: {}, {} failed ({:.1} s)",
            checks.json.len(),
            checks.failed,
            t0.elapsed().as_secs_f64()
        );
        if skip_timing {
            continue;
        }
        if flash_failed > 0 {
            eprintln!("{op} timing skipped: its correctness checks failed");
            continue;
        }
        match flash_timing(&ctx, &mut rng, &sizes, rows32) {
            Ok(t) => timings.extend(t),
            Err(e) => {
                eprintln!("{op} timing failed: {e}");
                if !terr.is_empty() {
                    terr.push_str("; ");
                }
                terr.push_str(&format!("{op}: {e}"));
            }
        }
    }
    let mut js = String::new();
    let _ = write!(
        js,
        "{{\n\"device\":\"{}\",\n\"cuda_driver_api\":\"{driver}\",\n\"qattn_version\":\"{}\",\n\"checks_failed\":{},\n\"checks\":[\n{}\n],\n\"timings\":[\n{}\n],\n\"timing_error\":\"{}\",\n\"wall_s\":{:.1}\n}}\n",
        ctx.device_name().replace('"', "'"),
        env!("CARGO_PKG_VERSION"),
        checks.failed,
        checks.json.join(",\n"),
        timings.join(",\n"),
        terr.replace('"', "'"),
        t0.elapsed().as_secs_f64()
    );
    let tmp = format!("{out_path}.tmp");
    if let Err(e) = std::fs::write(&tmp, js).and_then(|_| std::fs::rename(&tmp, &out_path)) {
        eprintln!("could not write {out_path}: {e}");
        std::process::exit(1);
    }
    println!("wrote {out_path}");
    if checks.failed > 0 || !terr.is_empty() {
        std::process::exit(1);
    }
}
