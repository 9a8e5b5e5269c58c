//! The fused encoder ops against f64 references and against the unfused candle ops they
//! replace, forward and backward.

use candle_core::{DType, Device, Tensor, Var};
use qattn_kernels::fused::{bias_gelu, bias_residual_layer_norm, gelu_erf};
use statrs::function::erf::erfc;

/// Φ(x) in f64 through erfc (no cancellation in the lower tail).
fn cdf64(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

fn gelu64(x: f64) -> f64 {
    x * cdf64(x)
}

fn gelu_grad64(x: f64) -> f64 {
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    cdf64(x) + x * pdf
}

/// Every f32 on a fine grid of [-14, 14] plus extremes, through the public op.
fn grid() -> Vec<f32> {
    let mut xs: Vec<f32> = (-1_400_000..=1_400_000)
        .step_by(7)
        .map(|i| i as f32 * 1e-5)
        .collect();
    xs.extend([
        0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 20.0, -20.0, 100.0, -100.0,
    ]);
    xs
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn gelu_relative_error_is_within_1e_6_of_f64() {
    let xs = grid();
    let got = values(&gelu_erf(&Tensor::new(xs.as_slice(), &Device::Cpu).unwrap()).unwrap());
    let mut worst = (0.0f64, 0.0f32);
    for (&x, &g) in xs.iter().zip(&got) {
        let want = gelu64(f64::from(x));
        if want.abs() < f64::from(f32::MIN_POSITIVE) {
            // Below f32's normal range: only the absolute error is meaningful.
            assert!(f64::from(g).abs() < 1e-37, "gelu({x}) = {g}, want {want}");
            continue;
        }
        let rel = ((f64::from(g) - want) / want).abs();
        if rel > worst.0 {
            worst = (rel, x);
        }
    }
    eprintln!(
        "gelu: worst relative error {:.3e} at x = {}",
        worst.0, worst.1
    );
    assert!(
        worst.0 <= 1e-6,
        "worst relative error {} at x = {}",
        worst.0,
        worst.1
    );
    let special =
        values(&gelu_erf(&Tensor::new(&[f32::INFINITY, f32::NAN], &Device::Cpu).unwrap()).unwrap());
    assert_eq!(special[0], f32::INFINITY);
    assert!(special[1].is_nan());
    // GELU(x) → 0 as x → −∞.
    let low = values(
        &gelu_erf(&Tensor::new(&[f32::NEG_INFINITY, -1e30, -30.0], &Device::Cpu).unwrap()).unwrap(),
    );
    for (x, g) in [f32::NEG_INFINITY, -1e30, -30.0].iter().zip(&low) {
        assert!(g.is_finite() && g.abs() < 1e-37, "gelu({x}) = {g}");
    }
}

#[test]
fn gelu_gradient_matches_f64() {
    let xs = grid();
    let x = Var::new(xs.as_slice(), &Device::Cpu).unwrap();
    let y = gelu_erf(x.as_tensor()).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let got = values(grads.get(x.as_tensor()).unwrap());
    for (&x, &g) in xs.iter().zip(&got) {
        if x.abs() > 14.0 {
            continue;
        }
        let want = gelu_grad64(f64::from(x));
        let tol = 1e-6 * (1.0 + want.abs());
        assert!(
            (f64::from(g) - want).abs() <= tol,
            "gelu'({x}) = {g}, want {want}"
        );
    }
}

/// Deterministic pseudo-random values in [-scale, scale].
fn data(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn var(shape: &[usize], seed: u64, scale: f32) -> Var {
    let n = shape.iter().product();
    Var::from_tensor(&Tensor::from_vec(data(n, seed, scale), shape, &Device::Cpu).unwrap()).unwrap()
}

fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{name}: shapes");
    let (g, w) = (values(got), values(want));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{name}[{i}]: fused {a}, unfused {b}"
        );
    }
}

#[test]
fn bias_gelu_matches_the_unfused_ops_forward_and_backward() {
    // Rows wider than one rayon block and a width that is not a multiple of the lanes.
    let (rows, n) = (300, 1539);
    let x = var(&[3, rows / 3, n], 1, 4.0);
    let b = var(&[n], 2, 1.0);
    let w = Tensor::from_vec(data(rows * n, 3, 1.0), (3, rows / 3, n), &Device::Cpu).unwrap();
    let fused = bias_gelu(x.as_tensor(), b.as_tensor()).unwrap();
    let unfused = x
        .as_tensor()
        .broadcast_add(b.as_tensor())
        .unwrap()
        .gelu_erf()
        .unwrap();
    assert_close("forward", &fused, &unfused, 2e-6);
    let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gu = (unfused * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, v) in [("dx", &x), ("dbias", &b)] {
        assert_close(
            name,
            gf.get(v.as_tensor()).unwrap(),
            gu.get(v.as_tensor()).unwrap(),
            1e-4,
        );
    }
    let err = bias_gelu(
        x.as_tensor(),
        &Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("bias") && err.contains("[1539]"), "{err}");
}

#[test]
fn bias_residual_layer_norm_matches_the_unfused_ops_forward_and_backward() {
    let (b, l, h) = (4, 37, 384);
    let eps = 1e-12;
    let x = var(&[b, l, h], 11, 3.0);
    let r = var(&[b, l, h], 12, 3.0);
    let bias = var(&[h], 13, 0.5);
    let gamma = var(&[h], 14, 1.5);
    let beta = var(&[h], 15, 0.5);
    let w = Tensor::from_vec(data(b * l * h, 16, 1.0), (b, l, h), &Device::Cpu).unwrap();
    for with_residual in [true, false] {
        let res = with_residual.then(|| r.as_tensor());
        let fused = bias_residual_layer_norm(
            x.as_tensor(),
            bias.as_tensor(),
            res,
            gamma.as_tensor(),
            beta.as_tensor(),
            eps,
        )
        .unwrap();
        let mut z = x.as_tensor().broadcast_add(bias.as_tensor()).unwrap();
        if let Some(r) = res {
            z = (z + r).unwrap();
        }
        let unfused =
            candle_nn::ops::layer_norm_slow(&z, gamma.as_tensor(), beta.as_tensor(), eps as f32)
                .unwrap();
        assert_close("forward", &fused, &unfused, 1e-5);
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gu = (unfused * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let mut checked = vec![
            ("dx", &x),
            ("dbias", &bias),
            ("dgamma", &gamma),
            ("dbeta", &beta),
        ];
        if with_residual {
            checked.push(("dresidual", &r));
        } else {
            assert!(gf.get(r.as_tensor()).is_none());
        }
        for (name, v) in checked {
            assert_close(
                name,
                gf.get(v.as_tensor()).unwrap(),
                gu.get(v.as_tensor()).unwrap(),
                1e-4,
            );
        }
    }
}

#[test]
fn layer_norm_rejects_mismatched_shapes_and_eps() {
    let x = Tensor::zeros((2, 8), DType::F32, &Device::Cpu).unwrap();
    let p = Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap();
    let short = Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap();
    let e = bias_residual_layer_norm(&x, &p, None, &short, &p, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gamma"), "{e}");
    let r = Tensor::zeros((3, 8), DType::F32, &Device::Cpu).unwrap();
    let e = bias_residual_layer_norm(&x, &p, Some(&r), &p, &p, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("residual"), "{e}");
    let e = bias_residual_layer_norm(&x, &p, None, &p, &p, 0.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("eps"), "{e}");
}

#[test]
fn bias_add_matches_the_unfused_op_forward_and_backward() {
    let (rows, n) = (301, 97);
    let x = var(&[rows, n], 21, 2.0);
    let b = var(&[n], 22, 1.0);
    let w = Tensor::from_vec(data(rows * n, 23, 1.0), (rows, n), &Device::Cpu).unwrap();
    let fused = qattn_kernels::fused::bias_add(x.as_tensor(), b.as_tensor()).unwrap();
    let unfused = x.as_tensor().broadcast_add(b.as_tensor()).unwrap();
    assert_close("forward", &fused, &unfused, 0.0);
    let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gu = (unfused * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, v) in [("dx", &x), ("dbias", &b)] {
        assert_close(
            name,
            gf.get(v.as_tensor()).unwrap(),
            gu.get(v.as_tensor()).unwrap(),
            1e-5,
        );
    }
    let e = qattn_kernels::fused::bias_add(x.as_tensor(), w.as_ref())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias_add") && e.contains("[97]"), "{e}");
}

#[test]
fn in_place_forms_equal_the_out_of_place_ops_and_refuse_autograd_tensors() {
    use qattn_kernels::fused::{bias_gelu_, bias_residual_layer_norm_};
    let (rows, h) = (70, 384);
    let x = Tensor::from_vec(data(rows * h, 31, 3.0), (rows, h), &Device::Cpu).unwrap();
    let r = Tensor::from_vec(data(rows * h, 32, 3.0), (rows, h), &Device::Cpu).unwrap();
    let p: Vec<Tensor> = (0..3)
        .map(|i| Tensor::from_vec(data(h, 33 + i, 1.0), h, &Device::Cpu).unwrap())
        .collect();
    let want = bias_gelu(&x, &p[0]).unwrap();
    let y = x.copy().unwrap();
    bias_gelu_(&y, &p[0]).unwrap();
    assert_close("gelu in place", &y, &want, 0.0);
    for res in [Some(&r), None] {
        let want = bias_residual_layer_norm(&x, &p[0], res, &p[1], &p[2], 1e-12).unwrap();
        let y = x.copy().unwrap();
        bias_residual_layer_norm_(&y, &p[0], res, &p[1], &p[2], 1e-12).unwrap();
        assert_close("layer norm in place", &y, &want, 0.0);
    }
    let v = var(&[rows, h], 34, 1.0);
    let e = bias_gelu_(v.as_tensor(), &p[0]).unwrap_err().to_string();
    assert!(e.contains("autograd"), "{e}");
    let e = bias_residual_layer_norm_(v.as_tensor(), &p[0], None, &p[1], &p[2], 1e-12)
        .unwrap_err()
        .to_string();
    assert!(e.contains("autograd"), "{e}");
}
