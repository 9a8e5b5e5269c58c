use crate::common::{Inputs, Moments, flat};
use candle_core::{Tensor, Var};
use qattn_kernels::reference::Dims;
use qattn_kernels::{AttentionOptions, GradMode, attention};

/// Gradients (dq, dk, dv) of Σ g ∘ attention(q, k, v).
fn grads(inp: &Inputs, opts: &AttentionOptions, g: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (q, k, v) = inp.tensors();
    let (q, k, v) = (
        Var::from_tensor(&q).unwrap(),
        Var::from_tensor(&k).unwrap(),
        Var::from_tensor(&v).unwrap(),
    );
    let out = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), opts).unwrap();
    let gt = Tensor::from_vec(g.to_vec(), out.shape(), out.device()).unwrap();
    let loss = (out * gt).unwrap().sum_all().unwrap();
    let store = loss.backward().unwrap();
    let get = |x: &Var| flat(store.get(x.as_tensor()).unwrap());
    (get(&q), get(&k), get(&v))
}

/// Asserts that the mean over 2,000 seeds of the sampled-mode gradients of `spec` is within
/// 4 standard errors (+ `floor`) of `exact` for every coordinate of dq, dk and dv.
fn assert_sampled_mean_matches(
    inp: &Inputs,
    g: &[f32],
    spec: &str,
    exact: &(Vec<f32>, Vec<f32>, Vec<f32>),
    floor: f64,
) {
    let runs: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..2000)
        .map(|seed| {
            let opts = AttentionOptions {
                estimator: spec.parse().unwrap(),
                seed,
                grad_mode: GradMode::Sampled,
                ..Default::default()
            };
            grads(inp, &opts, g)
        })
        .collect();
    for (name, pick, want) in [
        ("dq", 0usize, &exact.0),
        ("dk", 1, &exact.1),
        ("dv", 2, &exact.2),
    ] {
        let m = Moments::of(runs.iter().map(|r| [&r.0, &r.1, &r.2][pick].clone()));
        for (i, &w) in want.iter().enumerate() {
            let dev = (m.mean[i] - f64::from(w)).abs();
            assert!(
                dev <= 4.0 * m.se(i) + floor,
                "{spec} {name}[{i}]: |mean − exact| = {dev:.3e}, SE {:.3e}",
                m.se(i)
            );
        }
    }
}

fn upstream(n: usize, seed: u64) -> Vec<f32> {
    crate::common::Gen::new(seed).normals(n, 1.0)
}

/// Exact-mode gradients against central finite differences of the f64 reference
/// (ε = 1e-6): max |Δ| ≤ 1e-4 · max |fd|.
#[test]
fn exact_gradients_match_f64_finite_differences() {
    let dims = Dims {
        b: 1,
        h: 2,
        lq: 5,
        lk: 6,
        d: 3,
        dv: 4,
    };
    let inp = Inputs::gaussian(40, dims, 1.5);
    let mask = [1u8, 1, 0, 1, 1, 1];
    let g = upstream(dims.b * dims.h * dims.lq * dims.dv, 41);
    let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
    for causal in [false, true] {
        let opts = AttentionOptions {
            causal,
            mask: Some(inp.mask_tensor(&mask)),
            ..Default::default()
        };
        let (dq, dk, dv) = grads(&inp, &opts, &g);
        let (q, k, v) = inp.f64s();
        let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
            let o = qattn_kernels::reference::attention(
                q,
                k,
                v,
                dims,
                inp.scale(),
                causal,
                Some(&mask),
            );
            o.iter().zip(&g64).map(|(a, b)| a * b).sum()
        };
        let eps = 1e-6;
        let fd = |which: usize| -> Vec<f64> {
            let base = [&q, &k, &v][which];
            (0..base.len())
                .map(|i| {
                    let mut args = [q.clone(), k.clone(), v.clone()];
                    args[which][i] = base[i] + eps;
                    let up = loss(&args[0], &args[1], &args[2]);
                    args[which][i] = base[i] - eps;
                    let down = loss(&args[0], &args[1], &args[2]);
                    (up - down) / (2.0 * eps)
                })
                .collect()
        };
        for (name, got, which) in [("dq", &dq, 0), ("dk", &dk, 1), ("dv", &dv, 2)] {
            let want = fd(which);
            let scale = want.iter().map(|x| x.abs()).fold(0.0, f64::max);
            let err = got
                .iter()
                .zip(&want)
                .map(|(&a, b)| (f64::from(a) - b).abs())
                .fold(0.0, f64::max);
            assert!(
                err <= 1e-4 * scale.max(1e-3),
                "causal={causal} {name}: max error {err:.3e} (scale {scale:.3e})"
            );
        }
    }
}

/// The tiled exact backward across tile boundaries against the analytic f64 gradient (1e-4 rel).
#[test]
fn exact_backward_matches_reference_across_tiles() {
    let dims = Dims {
        b: 1,
        h: 2,
        lq: 70,
        lk: 300,
        d: 17,
        dv: 9,
    };
    let inp = Inputs::gaussian(42, dims, 2.0);
    let g = upstream(dims.b * dims.h * dims.lq * dims.dv, 43);
    let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
    for causal in [false, true] {
        let (dq, dk, dv) = grads(
            &inp,
            &AttentionOptions {
                causal,
                ..Default::default()
            },
            &g,
        );
        let (q, k, v) = inp.f64s();
        let (rq, rk, rv) = qattn_kernels::reference::attention_grad(
            &q,
            &k,
            &v,
            &g64,
            dims,
            inp.scale(),
            causal,
            None,
        );
        for (name, got, want) in [("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)] {
            let e = crate::common::rel_err(&got, &want);
            assert!(e <= 1e-4, "causal={causal} {name}: relative error {e:.3e}");
        }
    }
}

/// Straight-through mode gives the exact gradient whatever the forward estimator.
#[test]
fn straight_through_equals_exact_gradient() {
    let dims = Dims {
        b: 1,
        h: 2,
        lq: 9,
        lk: 20,
        d: 8,
        dv: 4,
    };
    let inp = Inputs::gaussian(44, dims, 1.0);
    let g = upstream(dims.b * dims.h * dims.lq * dims.dv, 45);
    let exact = grads(&inp, &AttentionOptions::default(), &g);
    let st = grads(
        &inp,
        &AttentionOptions {
            estimator: "stratified:4".parse().unwrap(),
            seed: 3,
            grad_mode: GradMode::Exact,
            ..Default::default()
        },
        &g,
    );
    assert_eq!(exact, st);
}

/// Sampled-mode gradients are unbiased for multinomial sampling: the mean over 2,000 seeds is
/// within 4 standard errors (+1e-6) of the exact gradient for every coordinate of dq, dk, dv.
/// S = 4 makes the (S−1)/S shrinkage of the uncorrected estimator clearly detectable.
#[test]
fn sampled_gradients_are_unbiased_for_multinomial() {
    let dims = Dims {
        b: 1,
        h: 1,
        lq: 3,
        lk: 10,
        d: 4,
        dv: 3,
    };
    let inp = Inputs::gaussian(46, dims, 1.0);
    let g = upstream(dims.lq * dims.dv, 47);
    let exact = grads(&inp, &AttentionOptions::default(), &g);
    assert_sampled_mean_matches(&inp, &g, "multinomial:4", &exact, 1e-6);
}

/// In sampled mode only sampled keys receive dk/dv gradient, and the gradient is finite.
#[test]
fn sampled_mode_is_sparse_over_keys() {
    let dims = Dims {
        b: 1,
        h: 1,
        lq: 2,
        lk: 64,
        d: 4,
        dv: 3,
    };
    let inp = Inputs::gaussian(48, dims, 3.0);
    let g = upstream(dims.lq * dims.dv, 49);
    for spec in ["multinomial:2", "stratified:2", "topk:1:2", "adaptive:1:2"] {
        let opts = AttentionOptions {
            estimator: spec.parse().unwrap(),
            seed: 9,
            grad_mode: GradMode::Sampled,
            ..Default::default()
        };
        let (_, dk, dv) = grads(&inp, &opts, &g);
        let touched = (0..dims.lk)
            .filter(|&j| dv[j * 3..(j + 1) * 3].iter().any(|&x| x != 0.0))
            .count();
        assert!(
            (1..=2 * 3).contains(&touched),
            "{spec}: {touched} keys got gradient"
        );
        assert!(dk.iter().chain(&dv).all(|x| x.is_finite()));
    }
    // cv's control part is exact over all keys, its residual is sampled: all finite.
    let opts = AttentionOptions {
        estimator: "cv:2:4".parse().unwrap(),
        grad_mode: GradMode::Sampled,
        ..Default::default()
    };
    let (dq, dk, dv) = grads(&inp, &opts, &g);
    assert!(dq.iter().chain(&dk).chain(&dv).all(|x| x.is_finite()));
}

/// cv's sampled gradient is unbiased for dv (its coefficients have expectation p) and its logit
/// gradient is consistent: the mean over seeds is close to the exact gradient.
#[test]
fn cv_sampled_gradient_mean_is_close_to_exact() {
    let dims = Dims {
        b: 1,
        h: 1,
        lq: 2,
        lk: 12,
        d: 4,
        dv: 6,
    };
    let inp = Inputs::gaussian(50, dims, 1.0);
    let g = upstream(dims.lq * dims.dv, 51);
    let exact = grads(&inp, &AttentionOptions::default(), &g);
    assert_sampled_mean_matches(&inp, &g, "cv:2:8", &exact, 1e-5);
}
