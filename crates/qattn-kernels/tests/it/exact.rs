use crate::common::{Inputs, flat, rel_err};
use candle_core::{DType, Tensor};
use qattn_kernels::reference::Dims;
use qattn_kernels::{AttentionOptions, attention};

/// Exact attention vs the naive f64 reference: max |Δ| / max |ref| ≤ 1e-5, across tile
/// boundaries (64 queries × 128 keys), with masks and causal masking.
#[test]
fn exact_matches_naive_f64_reference() {
    let dims = Dims {
        b: 2,
        h: 3,
        lq: 70,
        lk: 300,
        d: 19,
        dv: 13,
    };
    let inp = Inputs::gaussian(1, dims, 2.0);
    let mut mask = vec![1u8; dims.b * dims.lk];
    for j in (0..dims.lk).step_by(3) {
        mask[j] = 0; // batch 0: every third key masked
    }
    mask[dims.lk + 5] = 0;
    for causal in [false, true] {
        for use_mask in [false, true] {
            let m = use_mask.then_some(mask.as_slice());
            let opts = AttentionOptions {
                causal,
                mask: m.map(|m| inp.mask_tensor(m)),
                ..Default::default()
            };
            let got = inp.run_opts(&opts);
            let want = inp.reference(causal, m);
            let e = rel_err(&got, &want);
            assert!(
                e <= 1e-5,
                "causal={causal} mask={use_mask}: relative error {e}"
            );
        }
    }
}

#[test]
fn exact_with_lq_not_lk_and_explicit_scale() {
    let dims = Dims {
        b: 1,
        h: 2,
        lq: 7,
        lk: 513,
        d: 64,
        dv: 64,
    };
    let inp = Inputs::gaussian(2, dims, 1.0);
    let (q, k, v) = inp.tensors();
    let opts = AttentionOptions {
        scale: Some(0.3),
        causal: true,
        ..Default::default()
    };
    let got = flat(&attention(&q, &k, &v, &opts).unwrap());
    let (qf, kf, vf) = inp.f64s();
    let want = qattn_kernels::reference::attention(&qf, &kf, &vf, dims, 0.3, true, None);
    assert!(rel_err(&got, &want) <= 1e-5);
}

#[test]
fn fully_masked_rows_give_zeros() {
    let dims = Dims {
        b: 2,
        h: 1,
        lq: 3,
        lk: 4,
        d: 8,
        dv: 8,
    };
    let inp = Inputs::gaussian(3, dims, 1.0);
    let mask = [0u8, 0, 0, 0, 1, 1, 0, 1];
    for spec in ["exact", "stratified:8", "topk:1:4", "cv:2:4"] {
        let opts = AttentionOptions {
            estimator: spec.parse().unwrap(),
            mask: Some(inp.mask_tensor(&mask)),
            ..Default::default()
        };
        let got = inp.run_opts(&opts);
        assert!(
            got[..3 * 8].iter().all(|&x| x == 0.0),
            "{spec}: batch 0 is fully masked"
        );
        assert!(got.iter().all(|x| x.is_finite()));
        let want = inp.reference(false, Some(&mask));
        if spec == "exact" {
            assert!(rel_err(&got, &want) <= 1e-5);
        }
    }
}

/// f16/bf16 inputs are accepted, computed in f32 and returned in the input dtype; the result
/// matches f32 attention on the same (rounded) inputs within 1e-2 relative.
#[test]
fn half_precision_inputs() {
    let dims = Dims {
        b: 1,
        h: 2,
        lq: 16,
        lk: 40,
        d: 32,
        dv: 16,
    };
    let inp = Inputs::gaussian(4, dims, 1.0);
    let (q, k, v) = inp.tensors();
    for dt in [DType::F16, DType::BF16] {
        let (qh, kh, vh) = (
            q.to_dtype(dt).unwrap(),
            k.to_dtype(dt).unwrap(),
            v.to_dtype(dt).unwrap(),
        );
        let out = attention(&qh, &kh, &vh, &AttentionOptions::default()).unwrap();
        assert_eq!(out.dtype(), dt);
        let back = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let want = flat(
            &attention(
                &back(&qh),
                &back(&kh),
                &back(&vh),
                &AttentionOptions::default(),
            )
            .unwrap(),
        );
        let want: Vec<f64> = want.iter().map(|&x| f64::from(x)).collect();
        assert!(rel_err(&flat(&out), &want) <= 1e-2, "{dt:?}");
    }
}

#[test]
fn wrong_shapes_and_dtypes_are_named() {
    let dev = candle_core::Device::Cpu;
    let q = Tensor::zeros((1, 2, 3, 4), DType::F32, &dev).unwrap();
    let k = Tensor::zeros((1, 2, 5, 4), DType::F32, &dev).unwrap();
    let v = Tensor::zeros((1, 2, 5, 6), DType::F32, &dev).unwrap();
    let bad_k = Tensor::zeros((1, 2, 5, 3), DType::F32, &dev).unwrap();
    let err = attention(&q, &bad_k, &v, &AttentionOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`k`") && err.contains("D=4") && err.contains("[1, 2, 5, 3]"),
        "{err}"
    );
    let bad_v = Tensor::zeros((1, 2, 4, 6), DType::F32, &dev).unwrap();
    let err = attention(&q, &k, &bad_v, &AttentionOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`v`") && err.contains("Lk=5"), "{err}");
    let q3 = Tensor::zeros((2, 3, 4), DType::F32, &dev).unwrap();
    let err = attention(&q3, &k, &v, &AttentionOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`q`") && err.contains("4 dimensions"), "{err}");
    let qi = Tensor::zeros((1, 2, 3, 4), DType::I64, &dev).unwrap();
    let err = attention(&qi, &k, &v, &AttentionOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`q`") && err.contains("I64"), "{err}");
    let mask = Tensor::zeros((1, 4), DType::U8, &dev).unwrap();
    let opts = AttentionOptions {
        mask: Some(mask),
        ..Default::default()
    };
    let err = attention(&q, &k, &v, &opts).unwrap_err().to_string();
    assert!(err.contains("`mask`") && err.contains("Lk=5"), "{err}");
}
