use crate::common::{Inputs, Moments};
use qattn_kernels::noise::Channel;
use qattn_kernels::reference::Dims;
use qattn_kernels::{AttentionOptions, EstimatorSpec};

/// Upper 1−α quantile of χ²(df) by the Wilson–Hilferty approximation (z = 3.0902 for α = 1e-3).
fn chi2_crit_001(df: f64) -> f64 {
    let z = 3.0902;
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + z * a.sqrt()).powi(3)
}

/// The empirical distribution of usable noisy outcomes matches the analytic channel restricted
/// to usable keys (chi-square goodness of fit at α = 0.001), and the discarded fraction matches
/// the channel's mass on unusable outcomes (within 5 standard errors).
#[test]
fn noisy_outcomes_match_the_analytic_channel() {
    let dims = Dims {
        b: 1,
        h: 1,
        lq: 1,
        lk: 5,
        d: 4,
        dv: 2,
    };
    let inp = Inputs::gaussian(30, dims, 1.5);
    let shots = 100_000usize;
    for (noise, mask) in [
        ("+depol:0.2+readout:0.05:0.1+damp:0.1", [1u8, 1, 1, 1, 1]),
        ("+readout:0.1:0.02", [1, 1, 0, 1, 1]),
        ("+damp:0.3", [1, 1, 1, 1, 1]),
        ("+depol:0.5", [1, 0, 1, 1, 1]),
    ] {
        let spec: EstimatorSpec = format!("multinomial:{shots}{noise}").parse().unwrap();
        let opts = AttentionOptions {
            estimator: spec,
            seed: 3,
            mask: Some(inp.mask_tensor(&mask)),
            ..Default::default()
        };
        let (_, d) = inp.run_diag(&opts);
        let q = d.get(0, 0, 0).unwrap();
        let (qf, kf, _) = inp.f64s();
        let p = qattn_kernels::reference::probabilities(
            &qf,
            &kf,
            dims,
            inp.scale(),
            false,
            Some(&mask),
        );
        let analytic = Channel::new(spec.noise, dims.lk).analytic(&p);
        let usable: Vec<usize> = (0..dims.lk).filter(|&j| mask[j] != 0).collect();
        let mass: f64 = usable.iter().map(|&j| analytic[j]).sum();
        let n = q.samples.len() as f64;
        let mut counts = vec![0.0f64; dims.lk];
        for &j in &q.samples {
            counts[j as usize] += 1.0;
        }
        let chi2: f64 = usable
            .iter()
            .map(|&j| {
                let e = n * analytic[j] / mass;
                (counts[j] - e).powi(2) / e
            })
            .sum();
        let crit = chi2_crit_001((usable.len() - 1) as f64);
        assert!(chi2 < crit, "{noise}: chi-square {chi2:.2} ≥ {crit:.2}");
        let disc = f64::from(q.discarded) / f64::from(q.shots);
        let se = ((1.0 - mass) * mass / f64::from(q.shots)).sqrt();
        assert!(
            (disc - (1.0 - mass)).abs() <= 5.0 * se + 1e-9,
            "{noise}: discarded {disc:.4} vs {:.4}",
            1.0 - mass
        );
        assert_eq!(u64::from(q.shots), shots as u64, "one round suffices here");
    }
}

/// Readout mitigation reduces the bias the readout channel causes in the attention output.
#[test]
fn mitigation_reduces_bias() {
    let dims = Dims {
        b: 1,
        h: 2,
        lq: 3,
        lk: 8,
        d: 8,
        dv: 4,
    };
    let inp = Inputs::gaussian(31, dims, 1.5);
    let exact = inp.reference(false, None);
    let bias = |spec: &str| {
        let m = Moments::of((0..1000).map(|s| inp.run(spec, s)));
        let b2: f64 = m
            .mean
            .iter()
            .zip(&exact)
            .map(|(a, e)| (a - e).powi(2))
            .sum();
        (b2.sqrt(), m)
    };
    let (raw, mraw) = bias("multinomial:256+readout:0.05:0.08+damp:0.02");
    let (mit, _) = bias("multinomial:256+readout:0.05:0.08+damp:0.02+mitigate");
    let (clean, _) = bias("multinomial:256");
    let se: f64 = (mraw.total_var() / mraw.n as f64).sqrt();
    assert!(
        raw > 5.0 * se,
        "the noise should cause a visible bias: {raw:.3e} vs SE {se:.3e}"
    );
    assert!(
        mit < 0.5 * raw,
        "mitigated bias {mit:.3e} not well below raw bias {raw:.3e}"
    );
    assert!(clean < raw);
}

#[test]
fn depolarized_outcomes_beyond_lk_are_discarded_and_redrawn() {
    // Lk = 3 → 2 qubits, outcome 3 names no key. With λ = 1 every outcome is uniform over 4.
    let dims = Dims {
        b: 1,
        h: 1,
        lq: 2,
        lk: 3,
        d: 2,
        dv: 2,
    };
    let inp = Inputs::gaussian(32, dims, 1.0);
    let opts = AttentionOptions {
        estimator: "stratified:4+depol:1".parse().unwrap(),
        seed: 1,
        ..Default::default()
    };
    let (out, d) = inp.run_diag(&opts);
    for q in &d.queries {
        assert!(q.samples.iter().all(|&j| j < 3));
        assert_eq!(q.shots as usize, q.samples.len() + q.discarded as usize);
        assert!(!q.samples.is_empty());
    }
    assert!(out.iter().all(|x| x.is_finite()));
}

/// attention() refuses a mitigated spec whose amplification ‖M⁻¹‖₁^m exceeds the bound for the
/// call's Lk (readout 0.3:0.3: 2.5^8 > 1000 at Lk = 256), with an error naming Lk and m, and
/// accepts the same spec at Lk = 128 and a realistic one at Lk = 256.
#[test]
fn mitigation_amplification_is_refused_at_call_time() {
    let dims = |lk| Dims {
        b: 1,
        h: 1,
        lq: 2,
        lk,
        d: 4,
        dv: 2,
    };
    let call = |lk: usize, spec: &str| {
        let inp = Inputs::gaussian(40, dims(lk), 1.0);
        let (q, k, v) = inp.tensors();
        let opts = AttentionOptions {
            estimator: spec.parse::<EstimatorSpec>().unwrap(),
            ..Default::default()
        };
        qattn_kernels::attention(&q, &k, &v, &opts)
    };
    let err = call(256, "stratified:8+readout:0.3:0.3+mitigate")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Lk = 256") && err.contains("m = 8") && err.contains("amplify"),
        "{err}"
    );
    call(128, "stratified:8+readout:0.3:0.3+mitigate").unwrap();
    call(256, "stratified:8+readout:0.02:0.03+mitigate").unwrap();
}
