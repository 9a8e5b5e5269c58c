//! Sampling estimators inside the full model converge to exact attention as S grows.

use crate::common::*;
use qattn_model::{AttentionConfig, Mode, Model};

fn hidden(model: &Model, text: (&str, Option<&str>)) -> Vec<f32> {
    let batch = model.tokenize(&[text]).unwrap();
    tensor_values(
        &model
            .forward(&(&batch).into(), Mode::EVAL)
            .unwrap()
            .last_hidden_state,
    )
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

const TEXT: (&str, Option<&str>) = (
    "A man is playing a guitar.",
    Some("A person plays an instrument."),
);

#[test]
fn multinomial_error_decreases_in_s() {
    let mut model = load(MINILM, AttentionConfig::default());
    let exact = hidden(&model, TEXT);
    let mut errs = Vec::new();
    for s in [2usize, 8, 32, 128, 512] {
        let mut e = 0.0;
        let seeds = 4;
        for seed in 0..seeds {
            let att = AttentionConfig::parse(&format!("multinomial:{s}"))
                .unwrap()
                .with_seed(seed);
            model.set_attention(att).unwrap();
            e += rel_err(&hidden(&model, TEXT), &exact) / seeds as f64;
        }
        eprintln!("multinomial:{s}: mean relative error of last_hidden_state {e:.4}");
        errs.push(e);
    }
    for w in errs.windows(2) {
        assert!(w[1] < w[0], "error did not decrease: {errs:?}");
    }
    // 1/√S scaling: 256× more shots should cut the error by far more than 4×.
    assert!(errs[4] < errs[0] / 4.0, "{errs:?}");
    assert!(errs[0] > 1e-3, "S=2 should be visibly noisy: {errs:?}");
}

#[test]
fn stratified_and_topk_reach_exact() {
    let mut model = load(MINILM, AttentionConfig::default());
    let exact = hidden(&model, TEXT);
    let lk = model.tokenize(&[TEXT]).unwrap().lengths[0];
    // Top-k with k = Lk computes every key exactly: no sampled tail remains.
    model
        .set_attention(AttentionConfig::parse(&format!("topk:{lk}:4")).unwrap())
        .unwrap();
    let e = rel_err(&hidden(&model, TEXT), &exact);
    assert!(e < 1e-5, "topk:{lk}: {e}");
    let mut prev = f64::INFINITY;
    for s in [4usize, 64, 1024] {
        model
            .set_attention(AttentionConfig::parse(&format!("stratified:{s}")).unwrap())
            .unwrap();
        let e = rel_err(&hidden(&model, TEXT), &exact);
        eprintln!("stratified:{s}: relative error {e:.5}");
        assert!(
            e < prev,
            "stratified error did not decrease at S={s}: {e} ≥ {prev}"
        );
        prev = e;
    }
    assert!(prev < 0.02, "stratified:1024 still {prev} from exact");
}

#[test]
fn same_seed_same_output_other_seed_other_output() {
    let att = AttentionConfig::parse("multinomial:8")
        .unwrap()
        .with_seed(3);
    let model = load(TINY, att.clone());
    let a = hidden(&model, TEXT);
    assert_eq!(a, hidden(&model, TEXT), "inference must be deterministic");
    let other = load(TINY, att.with_seed(4));
    assert_ne!(a, hidden(&other, TEXT));
}

#[test]
fn per_head_overrides_change_only_what_they_name() {
    let exact_model = load(TINY, AttentionConfig::default());
    let exact = hidden(&exact_model, TEXT);
    // Layer 1 head 0 sampled: layer-0 output (hidden_states[1]) unchanged, final output not.
    let att = AttentionConfig::default()
        .apply_override("1.0=multinomial:2")
        .unwrap();
    let model = load(TINY, att);
    let batch = model.tokenize(&[TEXT]).unwrap();
    let out = model
        .forward_all_layers(&(&batch).into(), Mode::EVAL)
        .unwrap();
    let ref_out = exact_model
        .forward_all_layers(&(&batch).into(), Mode::EVAL)
        .unwrap();
    assert_eq!(
        tensor_values(&out.hidden_states[1]),
        tensor_values(&ref_out.hidden_states[1])
    );
    assert!(rel_err(&tensor_values(&out.last_hidden_state), &exact) > 1e-4);
}
