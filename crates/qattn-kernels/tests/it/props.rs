use crate::common::{Inputs, rel_err};
use proptest::prelude::*;
use qattn_kernels::AttentionOptions;
use qattn_kernels::reference::Dims;

fn dims() -> impl Strategy<Value = (Dims, bool, bool, u64)> {
    (
        1usize..3,
        1usize..3,
        1usize..20,
        1usize..40,
        1usize..20,
        1usize..12,
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(b, h, lq, lk, d, dv, causal, masked, seed)| {
            (
                Dims {
                    b,
                    h,
                    lq,
                    lk,
                    d,
                    dv,
                },
                causal,
                masked,
                seed,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Over shapes including Lk = 1, Lq ≠ Lk and D not a multiple of 8: exact matches the f64
    /// reference (1e-5 relative) and every sampling estimator returns, per output coordinate, a
    /// value inside the range of the visible values (it is a convex combination of them).
    #[test]
    fn shapes(args in dims()) {
        let (dims, causal, masked, seed) = args;
        let inp = Inputs::gaussian(seed, dims, 1.5);
        let mask: Option<Vec<u8>> = masked.then(|| (0..dims.b * dims.lk).map(|i| u8::from(!(i * 7 + seed as usize).is_multiple_of(4))).collect());
        let mask_t = mask.as_ref().map(|m| inp.mask_tensor(m));
        let opts = AttentionOptions { causal, mask: mask_t.clone(), ..Default::default() };
        let got = inp.run_opts(&opts);
        let want = inp.reference(causal, mask.as_deref());
        prop_assert!(rel_err(&got, &want) <= 1e-5);
        for spec in ["multinomial:3", "stratified:5", "topk:2:3", "adaptive:1:8", "stratified:4+depol:0.3"] {
            let opts = AttentionOptions { estimator: spec.parse().unwrap(), seed, causal, mask: mask_t.clone(), ..Default::default() };
            let got = inp.run_opts(&opts);
            let Dims { b, h, lq, lk, dv, .. } = dims;
            for bh in 0..b * h {
                for i in 0..lq {
                    let visible: Vec<usize> = (0..lk)
                        .filter(|&j| mask.as_ref().is_none_or(|m| m[(bh / h) * lk + j] != 0) && (!causal || j <= i))
                        .collect();
                    for t in 0..dv {
                        let x = got[(bh * lq + i) * dv + t];
                        prop_assert!(x.is_finite());
                        if visible.is_empty() {
                            prop_assert_eq!(x, 0.0);
                        } else {
                            let vals = visible.iter().map(|&j| inp.v[(bh * lk + j) * dv + t]);
                            let (lo, hi) = vals.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
                            prop_assert!(x >= lo - 1e-5 && x <= hi + 1e-5, "{} ({}, {}, {}): {} outside [{}, {}]", spec, bh, i, t, x, lo, hi);
                        }
                    }
                }
            }
        }
    }
}
