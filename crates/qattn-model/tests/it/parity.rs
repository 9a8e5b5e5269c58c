//! Parity with PyTorch transformers (fixtures made with transformers 5.24, eval mode, f32).
//! Tolerance: 1e-4 max abs on every hidden state, pooler output and sentence embedding; the
//! fixtures are rounded to 6 decimals, so 5e-7 of any difference is rounding.

use crate::common::*;
use candle_core::{IndexOp, Tensor};
use qattn_model::{AttentionConfig, Inputs, Mode, Model, mean_pool_normalize};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn check_inputs(model: &Model, fx: &Value, name: &str) -> f32 {
    let tok = model.tokenizer().expect("tokenizer loaded");
    let mut worst = 0.0f32;
    for (n, input) in fx["inputs"].as_array().unwrap().iter().enumerate() {
        let text = input["text"].as_str().unwrap();
        let pair = input["text_pair"].as_str();
        let enc = tok.encode(text, pair).unwrap();
        assert_eq!(
            enc.ids,
            ids(&input["input_ids"]),
            "{name} input {n}: token ids"
        );
        assert_eq!(
            enc.type_ids,
            ids(&input["token_type_ids"]),
            "{name} input {n}: token type ids"
        );
        let batch = model.tokenize(&[(text, pair)]).unwrap();
        let inputs: Inputs = (&batch).into();
        let out = model.forward_all_layers(&inputs, Mode::EVAL).unwrap();
        let mut check = |what: &str, got: &Tensor, want: &Value| {
            let d = max_abs_diff(&tensor_values(got), &flat(want));
            eprintln!("{name} input {n} {what}: max abs diff {d:.2e}");
            assert!(
                d <= TOL,
                "{name} input {n} {what}: max abs diff {d} > {TOL}"
            );
            worst = worst.max(d);
        };
        check(
            "last_hidden_state",
            &out.last_hidden_state,
            &input["last_hidden_state"]["values"],
        );
        check(
            "pooler_output",
            out.pooler_output.as_ref().expect("pooler"),
            &input["pooler_output"]["values"],
        );
        if let Some(emb) = input.get("sentence_embedding_mean_pooled_l2_normalized") {
            let got =
                mean_pool_normalize(&out.last_hidden_state, Some(&batch.attention_mask)).unwrap();
            check("sentence_embedding", &got, &emb["values"]);
        }
        if let Some(all) = input.get("hidden_states_all_layers") {
            let layers = all["values"].as_array().unwrap();
            assert_eq!(
                layers.len(),
                out.hidden_states.len(),
                "number of hidden states"
            );
            for (l, (got, want)) in out.hidden_states.iter().zip(layers).enumerate() {
                check(&format!("hidden_states[{l}]"), got, want);
            }
        }
    }
    worst
}

/// The padded batch: same ids/mask as transformers' padding, and non-padded positions equal
/// both the fixture and the unbatched run.
fn check_batch(model: &Model, fx: &Value, name: &str) {
    let inputs: Vec<(&str, Option<&str>)> = fx["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["text"].as_str().unwrap(), i["text_pair"].as_str()))
        .collect();
    let batch = model.tokenize(&inputs).unwrap();
    let want_ids: Vec<Vec<u32>> = fx["batch"]["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    assert_eq!(
        batch.input_ids.to_vec2::<u32>().unwrap(),
        want_ids,
        "batch ids"
    );
    let want_mask: Vec<Vec<u32>> = fx["batch"]["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    assert_eq!(
        batch.attention_mask.to_vec2::<u32>().unwrap(),
        want_mask,
        "batch mask"
    );
    let out = model.forward(&(&batch).into(), Mode::EVAL).unwrap();
    let want = fx["batch"]["last_hidden_state"]["values"]
        .as_array()
        .unwrap();
    for (b, (text, pair)) in inputs.iter().enumerate() {
        let len = batch.lengths[b];
        let got = out.last_hidden_state.i((b, 0..len)).unwrap();
        let want_b: Vec<f32> = flat(&Value::Array(want[b].as_array().unwrap()[..len].to_vec()));
        let d = max_abs_diff(&tensor_values(&got), &want_b);
        eprintln!("{name} batch row {b}: max abs diff vs fixture {d:.2e}");
        assert!(d <= TOL, "{name} batch row {b}: {d}");
        let single = model.tokenize(&[(text, *pair)]).unwrap();
        let alone = model.forward(&(&single).into(), Mode::EVAL).unwrap();
        let d = max_abs_diff(
            &tensor_values(&got),
            &tensor_values(&alone.last_hidden_state),
        );
        assert!(d <= TOL, "{name} batch row {b} vs unbatched: {d}");
    }
    let pooled = out.pooler_output.unwrap();
    let d = max_abs_diff(
        &tensor_values(&pooled),
        &flat(&fx["batch"]["pooler_output"]["values"]),
    );
    assert!(d <= TOL, "{name} batch pooler: {d}");
}

#[test]
fn all_minilm_matches_transformers() {
    let model = load(MINILM, AttentionConfig::default());
    let fx = fixture("all-MiniLM-L6-v2");
    let worst = check_inputs(&model, &fx, "all-MiniLM-L6-v2");
    eprintln!("all-MiniLM-L6-v2 worst max abs diff: {worst:.2e}");
    check_batch(&model, &fx, "all-MiniLM-L6-v2");
}

#[test]
fn tiny_random_bert_matches_transformers() {
    let model = load(TINY, AttentionConfig::default());
    let fx = fixture("bert-tiny-random-h32");
    let worst = check_inputs(&model, &fx, "bert-tiny-random-h32");
    eprintln!("bert-tiny-random-h32 worst max abs diff: {worst:.2e}");
    check_batch(&model, &fx, "bert-tiny-random-h32");
}

/// The parity check must be able to fail: a model with one perturbed weight is far off.
#[test]
fn parity_check_detects_a_wrong_weight() {
    let model = load(TINY, AttentionConfig::default());
    let fx = fixture("bert-tiny-random-h32");
    let mut tensors = model.params().tensors().clone();
    let name = "bert.encoder.layer.1.attention.self.value.bias";
    let t = tensors[name].clone();
    tensors.insert(name.to_string(), (t + 0.05).unwrap());
    let broken = Model::from_params(
        model.config().clone(),
        AttentionConfig::default(),
        None,
        qattn_model::Params::new(tensors, "perturbed".into()),
        model.tokenizer().cloned(),
    )
    .unwrap();
    let input = &fx["inputs"][0];
    let batch = broken
        .tokenize(&[(input["text"].as_str().unwrap(), None)])
        .unwrap();
    let out = broken.forward(&(&batch).into(), Mode::EVAL).unwrap();
    let d = max_abs_diff(
        &tensor_values(&out.last_hidden_state),
        &flat(&input["last_hidden_state"]["values"]),
    );
    assert!(d > 10.0 * TOL, "perturbation not detected: {d}");
}
