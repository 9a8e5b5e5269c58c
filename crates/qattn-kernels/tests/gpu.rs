//! GPU tests (feature `cuda`). They skip with a message when no GPU is usable, and run as one
//! test function so that they use the device serially. Exact forward: the dispatching
//! `exact_forward` and the explicit `cuda/exact.cu` (f32, WMMA), flash and flash2 kernels
//! against the CPU path; sampling: identical indices and outputs within 1e-5; `attention()` on
//! candle CUDA tensors (forward and gradients, kernels and host fallback) against the CPU.

use candle_core::{Device, Tensor};
use qattn_kernels::cuda::{GpuContext, GpuDType, GpuOptions, GpuShape, cpu_mc_reference};
use qattn_kernels::{AttentionOptions, Error, EstimatorSpec, attention};

fn vals(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((s >> 40) as f32) / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| f64::from(y).powi(2)).sum();
    if a.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    (num / den).sqrt()
}

#[test]
fn gpu_kernels_match_cpu() {
    let ctx = match GpuContext::new(0) {
        Ok(c) => c,
        Err(e @ Error::NoGpu { .. }) => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("opening the GPU failed: {e}"),
    };
    let s = GpuShape {
        b: 2,
        h: 2,
        lq: 100,
        lk: 130,
        d: 64,
    };
    let n = s.b * s.h * s.lq * s.d;
    let m = s.b * s.h * s.lk * s.d;
    let mask: Vec<u8> = (0..s.b * s.lk).map(|i| u8::from(i % 9 != 4)).collect();
    let opts = GpuOptions {
        scale: None,
        causal: false,
        mask: Some(mask.clone()),
    };
    for dtype in [GpuDType::F32, GpuDType::BF16, GpuDType::F16] {
        let q = dtype.round(&vals(1, n, 1.0));
        let k = dtype.round(&vals(2, m, 1.0));
        let v = dtype.round(&vals(3, m, 1.0));
        let g = ctx
            .exact_forward(&q, &k, &v, s, &opts, dtype)
            .expect("gpu exact");
        // The explicit kernels: cuda/exact.cu (f32 tiled, bf16/f16 WMMA) for every dtype, and
        // for bf16/f16 the flash (16 rows/warp) and flash2 (32 rows/warp) kernels.
        let mut runs = vec![(
            "exact.cu",
            ctx.exact_forward_wmma(&q, &k, &v, s, &opts, dtype)
                .expect("gpu exact (exact.cu)"),
        )];
        if dtype == GpuDType::F32 {
            assert!(
                ctx.exact_forward_flash2(&q, &k, &v, s, &opts, dtype)
                    .is_err(),
                "flash2 must reject f32"
            );
        } else {
            let f2 = ctx
                .exact_forward_flash2(&q, &k, &v, s, &opts, dtype)
                .expect("gpu exact (flash2)");
            // exact_forward dispatches bf16/f16 with D = 64 to flash2: the same kernel on the
            // same inputs gives the same bits.
            assert!(
                g.out
                    .iter()
                    .zip(&f2.out)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "exact_forward {dtype:?} is not the flash2 kernel's output"
            );
            runs.push(("flash2", f2));
            runs.push((
                "flash",
                ctx.exact_forward_flash(&q, &k, &v, s, &opts, dtype)
                    .expect("gpu exact (flash)"),
            ));
        }
        let dev = Device::Cpu;
        let t = |x: &[f32], l| Tensor::from_slice(x, (s.b, s.h, l, s.d), &dev).unwrap();
        let mf: Vec<f32> = mask.iter().map(|&x| f32::from(x)).collect();
        let ao = AttentionOptions {
            mask: Some(Tensor::from_vec(mf, (s.b, s.lk), &dev).unwrap()),
            ..Default::default()
        };
        let want = attention(&t(&q, s.lq), &t(&k, s.lk), &t(&v, s.lk), &ao)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let tol = if dtype == GpuDType::F32 { 1e-5 } else { 1e-2 };
        let e = rel_err(&g.out, &want);
        assert!(e <= tol, "exact {dtype:?}: relative error {e}");
        for (kernel, r) in &runs {
            let e = rel_err(&r.out, &want);
            assert!(e <= tol, "exact {dtype:?} ({kernel}): relative error {e}");
        }
    }
    let q = vals(4, n, 2.0);
    let k = vals(5, m, 2.0);
    let v = vals(6, m, 1.0);
    for spec in ["stratified:32", "multinomial:16"] {
        let spec: EstimatorSpec = spec.parse().unwrap();
        for seed in [0u64, 99] {
            let g = ctx
                .mc_forward(&q, &k, &v, s, &opts, &spec, seed)
                .expect("gpu mc");
            let w = cpu_mc_reference(&q, &k, &v, s, &opts, &spec, seed).unwrap();
            assert_eq!(g.indices, w.indices, "{spec} seed {seed}: indices differ");
            let worst = g
                .out
                .iter()
                .zip(&w.out)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= 1e-5, "{spec} seed {seed}: max |diff| {worst}");
        }
    }
}

/// `attention()` on candle CUDA tensors (the custom op's CUDA path) against the same call on
/// the CPU: forward and gradients of every routing case — the GPU kernels (`exact`,
/// `stratified`, `multinomial`; the exact backward for `exact` and straight-through) and the
/// host fallback (`topk`, noise, sampled gradients), with a key mask, with and without causal
/// masking. Tolerances: 1e-5 relative (forward), 1e-4 relative (gradients) on the kernels; the
/// fallback runs the CPU code on the same values, so it must agree to 1e-6.
#[test]
fn candle_cuda_tensors_match_cpu() {
    use candle_core::Var;
    use qattn_kernels::GradMode;
    let gpu = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: no CUDA device: {e}");
            return;
        }
    };
    let (b, h, lq, lk, d) = (2usize, 3usize, 40usize, 50usize, 32usize);
    let q = vals(11, b * h * lq * d, 1.5);
    let k = vals(12, b * h * lk * d, 1.5);
    let v = vals(13, b * h * lk * d, 1.0);
    let w = vals(14, b * h * lq * d, 1.0);
    let mask: Vec<f32> = (0..b * lk)
        .map(|i| f32::from(u8::from(i % 7 != 3)))
        .collect();
    let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1::<f32>().unwrap() };
    let cases: [(&str, GradMode, bool); 6] = [
        ("exact", GradMode::Exact, true),
        ("stratified:32", GradMode::Exact, true),
        ("multinomial:16", GradMode::Exact, true),
        ("topk:4:8", GradMode::Exact, false),
        ("stratified:32+readout:0.02:0.03", GradMode::Exact, false),
        ("stratified:32", GradMode::Sampled, false),
    ];
    for (spec, grad_mode, on_kernels) in cases {
        for causal in [false, true] {
            let run = |dev: &Device| -> (Vec<f32>, [Vec<f32>; 3]) {
                let var = |x: &[f32], l: usize| {
                    Var::from_tensor(&Tensor::from_slice(x, (b, h, l, d), dev).unwrap()).unwrap()
                };
                let (qv, kv, vv) = (var(&q, lq), var(&k, lk), var(&v, lk));
                let opts = AttentionOptions {
                    estimator: spec.parse().unwrap(),
                    seed: 7,
                    causal,
                    grad_mode,
                    mask: Some(Tensor::from_slice(&mask, (b, lk), dev).unwrap()),
                    ..Default::default()
                };
                let out = attention(qv.as_tensor(), kv.as_tensor(), vv.as_tensor(), &opts)
                    .unwrap_or_else(|e| panic!("{spec} on {dev:?}: {e}"));
                let wt = Tensor::from_slice(&w, (b, h, lq, d), dev).unwrap();
                let grads = (&out * &wt).unwrap().sum_all().unwrap().backward().unwrap();
                let g = |x: &Var| {
                    flat(
                        &grads
                            .get(x.as_tensor())
                            .expect("gradient")
                            .to_device(&Device::Cpu)
                            .unwrap(),
                    )
                };
                (
                    flat(&out.to_device(&Device::Cpu).unwrap()),
                    [g(&qv), g(&kv), g(&vv)],
                )
            };
            let (cpu_out, cpu_g) = run(&Device::Cpu);
            let (gpu_out, gpu_g) = run(&gpu);
            let (fwd_tol, bwd_tol) = if on_kernels {
                (1e-5, 1e-4)
            } else {
                (1e-6, 1e-6)
            };
            let e = rel_err(&gpu_out, &cpu_out);
            assert!(
                e <= fwd_tol,
                "{spec} causal={causal}: forward relative error {e}"
            );
            for (name, (a, c)) in ["dq", "dk", "dv"].iter().zip(gpu_g.iter().zip(&cpu_g)) {
                let e = rel_err(a, c);
                assert!(
                    e <= bwd_tol,
                    "{spec} causal={causal} grad {grad_mode:?}: {name} relative error {e}"
                );
            }
        }
    }
}
