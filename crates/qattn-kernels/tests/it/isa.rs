//! The instruction-set paths of the matmuls: candle's (through `gemm`, with its AVX-512
//! microkernels switched on by the workspace's `x86-v4` feature) and the kernels' own, against
//! an f64 reference. `cargo xtask ci` runs this module, with `exact::`, `grads::` and
//! `fused::`, a second time under valgrind on a CPU with AVX-512 — valgrind reports no AVX-512,
//! so the run takes the AVX2 fallback — and `QATTN_EXPECT_NO_AVX512=1` makes that run prove it.

use candle_core::{Device, Tensor};

/// The matmul path the dispatchers (gemm's and `math`'s) pick on this CPU.
fn isa() -> &'static str {
    if std::arch::is_x86_feature_detected!("avx512f") {
        "AVX-512F"
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        "AVX2+FMA"
    } else {
        "baseline x86-64"
    }
}

fn det(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let v = (i as u64)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed * 97)
                % 2001;
            v as f32 / 1000.0 - 1.0
        })
        .collect()
}

#[test]
fn matmul_matches_f64_on_this_cpus_path() {
    let path = isa();
    eprintln!("matmul path on this CPU: {path}");
    if std::env::var_os("QATTN_EXPECT_NO_AVX512").is_some() {
        assert_ne!(
            path, "AVX-512F",
            "the forced-fallback run still sees AVX-512: the fallback path was not exercised"
        );
    }
    // Shapes below, at and beyond gemm's blocking (and not multiples of any vector width).
    for (m, k, n) in [(7, 5, 3), (64, 384, 96), (300, 257, 190)] {
        let a = det(m * k, 1);
        let b = det(k * n, 2);
        let ta = Tensor::from_vec(a.clone(), (m, k), &Device::Cpu).unwrap();
        let tb = Tensor::from_vec(b.clone(), (k, n), &Device::Cpu).unwrap();
        let got = ta
            .matmul(&tb)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut worst = 0.0f64;
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|l| f64::from(a[i * k + l]) * f64::from(b[l * n + j]))
                    .sum();
                // Error relative to the magnitude of the terms summed (cancellation-safe).
                let scale: f64 = (0..k)
                    .map(|l| (f64::from(a[i * k + l]) * f64::from(b[l * n + j])).abs())
                    .sum::<f64>()
                    .max(1e-30);
                worst = worst.max((f64::from(got[i * n + j]) - want).abs() / scale);
            }
        }
        assert!(
            worst < 1e-5,
            "{m}x{k}x{n} on {path}: error {worst:.2e} relative to Σ|aᵢbᵢ|"
        );
    }
}

/// The packed-weight small-batch matmul (`qattn_kernels::packed`, the inference path of the
/// model's dense layers) on this CPU's path, against f64: row counts around its register block
/// and row block, widths not a multiple of its panel.
#[test]
fn packed_matmul_matches_f64_on_this_cpus_path() {
    use qattn_kernels::packed::PackedWeight;
    let path = isa();
    for (m, k, n) in [(1, 384, 40), (2, 3, 17), (20, 257, 190), (200, 64, 33)] {
        let x = det(m * k, 3);
        let w = det(n * k, 4);
        let p = PackedWeight::pack(&w, n, k).unwrap();
        let mut got = vec![0.0f32; m * n];
        p.matmul_into(&x, m, &mut got).unwrap();
        let mut worst = 0.0f64;
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|l| f64::from(x[i * k + l]) * f64::from(w[j * k + l]));
                let want: f64 = terms.clone().sum();
                let scale = terms.map(f64::abs).sum::<f64>().max(1e-30);
                worst = worst.max((f64::from(got[i * n + j]) - want).abs() / scale);
            }
        }
        assert!(
            worst < 1e-5,
            "packed {m}x{k}x{n} on {path}: error {worst:.2e} relative to Σ|xᵢwᵢ|"
        );
    }
}
