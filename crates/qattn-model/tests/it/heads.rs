//! Task heads, saving and re-loading.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use qattn_model::{AttentionConfig, HeadKind, LoadOptions, Mode, Model, Pooling};
use std::collections::HashMap;

fn with_head(id: &str, head: HeadKind, seed: u64) -> Model {
    let opts = LoadOptions {
        hub: hub(),
        head: Some(head),
        init_seed: seed,
        ..Default::default()
    };
    Model::load(id, &opts).unwrap()
}

fn params_equal(a: &Model, b: &Model) {
    let (pa, pb) = (a.params().tensors(), b.params().tensors());
    assert_eq!(pa.keys().collect::<Vec<_>>(), pb.keys().collect::<Vec<_>>());
    for (name, t) in pa {
        assert_eq!(
            tensor_values(t),
            tensor_values(&pb[name]),
            "parameter {name} differs"
        );
    }
}

#[test]
fn missing_head_weights_are_initialised_from_the_seed_and_reported() {
    let m = with_head(TINY, HeadKind::Classification { num_labels: 3 }, 11);
    assert_eq!(
        m.load_report().initialized,
        vec!["classifier.weight", "classifier.bias"]
    );
    assert!(m.load_report().unprefixed);
    let again = with_head(TINY, HeadKind::Classification { num_labels: 3 }, 11);
    params_equal(&m, &again);
    let other = with_head(TINY, HeadKind::Classification { num_labels: 3 }, 12);
    assert_ne!(
        tensor_values(&m.params().tensors()["classifier.weight"]),
        tensor_values(&other.params().tensors()["classifier.weight"])
    );
    let batch = m
        .tokenize(&[("a b c", None), ("a longer second input", Some("pair"))])
        .unwrap();
    let logits = m.logits(&(&batch).into(), Mode::EVAL).unwrap();
    assert_eq!(logits.dims(), [2, 3]);
}

#[test]
fn a_mean_pooled_head_reads_the_masked_mean_and_the_choice_survives_saving() {
    let head = HeadKind::Classification { num_labels: 3 };
    let cls = with_head(TINY, head, 5);
    assert_eq!(cls.pooling(), Pooling::Cls);
    let mut mean = with_head(TINY, head, 5);
    mean.set_pooling(Pooling::Mean);
    let texts = [("a b c", None), ("a longer second input", Some("pair"))];
    let batch = mean.tokenize(&texts).unwrap();
    let inputs = (&batch).into();
    let got = mean.logits(&inputs, Mode::EVAL).unwrap();
    // The reference: the classifier applied by hand to the mean of the real tokens' states,
    // row by row, padding excluded.
    let hidden = mean.forward(&inputs, Mode::EVAL).unwrap().last_hidden_state;
    let mask = tensor_values(&batch.attention_mask.to_dtype(DType::F32).unwrap());
    let (b, l, h) = hidden.dims3().unwrap();
    let hv = tensor_values(&hidden);
    let w = tensor_values(&mean.params().tensors()["classifier.weight"]);
    let bias = tensor_values(&mean.params().tensors()["classifier.bias"]);
    let gv = tensor_values(&got);
    assert!(mask.contains(&0.0), "the batch must have padding");
    for row in 0..b {
        let n: f64 = (0..l).map(|t| f64::from(mask[row * l + t])).sum();
        let pooled: Vec<f64> = (0..h)
            .map(|k| {
                (0..l)
                    .map(|t| f64::from(mask[row * l + t] * hv[(row * l + t) * h + k]))
                    .sum::<f64>()
                    / n
            })
            .collect();
        for c in 0..3 {
            let want = f64::from(bias[c])
                + (0..h)
                    .map(|k| f64::from(w[c * h + k]) * pooled[k])
                    .sum::<f64>();
            let d = (f64::from(gv[row * 3 + c]) - want).abs();
            assert!(
                d < 1e-5,
                "row {row} class {c}: {} vs {want}",
                gv[row * 3 + c]
            );
        }
    }
    // Same weights, other representation: different logits.
    let other = tensor_values(&cls.logits(&inputs, Mode::EVAL).unwrap());
    assert!(other.iter().zip(&gv).any(|(a, b)| (a - b).abs() > 1e-4));

    let dir = tempfile::tempdir().unwrap();
    mean.save_pretrained(dir.path()).unwrap();
    let meta = std::fs::read_to_string(dir.path().join("qattn.json")).unwrap();
    assert!(meta.contains("\"pooling\": \"mean\""), "{meta}");
    let opts = LoadOptions {
        hub: hub(),
        ..Default::default()
    };
    let back = Model::load(dir.path().to_str().unwrap(), &opts).unwrap();
    assert_eq!(back.pooling(), Pooling::Mean);
    assert_eq!(
        tensor_values(&back.logits(&inputs, Mode::EVAL).unwrap()),
        gv
    );
    // An explicit load option wins over the saved choice.
    let forced = LoadOptions {
        hub: hub(),
        pooling: Some(Pooling::Cls),
        ..Default::default()
    };
    let as_cls = Model::load(dir.path().to_str().unwrap(), &forced).unwrap();
    assert_eq!(as_cls.pooling(), Pooling::Cls);
    // A cls model writes no pooling key, so older readers see the file they know.
    let dir2 = tempfile::tempdir().unwrap();
    cls.save_pretrained(dir2.path()).unwrap();
    let meta = std::fs::read_to_string(dir2.path().join("qattn.json")).unwrap();
    assert!(!meta.contains("pooling"), "{meta}");
}

#[test]
fn regression_and_multiple_choice_shapes() {
    let m = with_head(TINY, HeadKind::Regression, 0);
    let batch = m.tokenize(&[("x", None), ("y", None)]).unwrap();
    assert_eq!(m.logits(&(&batch).into(), Mode::EVAL).unwrap().dims(), [2]);
    let mc = with_head(TINY, HeadKind::MultipleChoice, 0);
    let texts = [
        ("premise", Some("choice one")),
        ("premise", Some("choice two")),
        ("other", Some("a")),
        ("other", Some("b")),
    ];
    let batch = mc.tokenize(&texts).unwrap();
    let logits = mc.choice_logits(&(&batch).into(), 2, Mode::EVAL).unwrap();
    assert_eq!(logits.dims(), [2, 2]);
    assert!(mc.choice_logits(&(&batch).into(), 3, Mode::EVAL).is_err());
    // The scores of one choice do not depend on the other choices in the batch.
    let one = mc.tokenize(&texts[..2]).unwrap();
    let l1 = mc.choice_logits(&(&one).into(), 2, Mode::EVAL).unwrap();
    let d = max_abs_diff(
        &tensor_values(&l1),
        &tensor_values(&logits.narrow(0, 0, 1).unwrap()),
    );
    assert!(d < 1e-5, "{d}");
}

#[test]
fn train_mode_applies_reproducible_dropout() {
    let m = with_head(TINY, HeadKind::Classification { num_labels: 2 }, 0);
    let batch = m.tokenize(&[("some words here", None)]).unwrap();
    let inputs = (&batch).into();
    let eval = tensor_values(&m.logits(&inputs, Mode::EVAL).unwrap());
    let t1 = tensor_values(&m.logits(&inputs, Mode::train(1)).unwrap());
    let t1b = tensor_values(&m.logits(&inputs, Mode::train(1)).unwrap());
    let t2 = tensor_values(&m.logits(&inputs, Mode::train(2)).unwrap());
    assert_ne!(eval, t1, "dropout must change training outputs");
    assert_eq!(t1, t1b, "same step, same masks");
    assert_ne!(t1, t2, "another step, other masks");
}

#[test]
fn save_load_round_trip_is_bit_identical() {
    let att = AttentionConfig::parse("stratified:16")
        .unwrap()
        .apply_override("0=exact")
        .unwrap()
        .with_seed(5);
    let opts = LoadOptions {
        hub: hub(),
        head: Some(HeadKind::Classification { num_labels: 2 }),
        labels: Some(vec!["negative".into(), "positive".into()]),
        attention: Some(att.clone()),
        init_seed: 3,
        ..Default::default()
    };
    let m = Model::load(TINY, &opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    m.save_pretrained(dir.path()).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "qattn.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} not written");
    }
    let back = Model::load(
        dir.path().to_str().unwrap(),
        &LoadOptions {
            hub: hub(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(back.attention(), &att);
    assert_eq!(
        back.head(),
        Some(HeadKind::Classification { num_labels: 2 })
    );
    assert_eq!(
        back.config().labels().unwrap(),
        vec!["negative".to_string(), "positive".to_string()]
    );
    assert!(back.load_report().initialized.is_empty());
    params_equal(&m, &back);
    let batch = m.tokenize(&[("round trip", Some("check"))]).unwrap();
    assert_eq!(
        tensor_values(&m.logits(&(&batch).into(), Mode::EVAL).unwrap()),
        tensor_values(&back.logits(&(&batch).into(), Mode::EVAL).unwrap())
    );
    // transformers' names: `bert.` prefix, classifier at the root, BertForSequenceClassification.
    let saved =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(saved.contains_key("bert.embeddings.word_embeddings.weight"));
    assert!(saved.contains_key("classifier.weight"));
    assert!(
        saved
            .keys()
            .all(|k| k.starts_with("bert.") || k.starts_with("classifier."))
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    assert_eq!(cfg["id2label"]["1"], "positive");
    // Saving again gives the same bytes.
    let dir2 = tempfile::tempdir().unwrap();
    back.save_pretrained(dir2.path()).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("model.safetensors")).unwrap(),
        std::fs::read(dir2.path().join("model.safetensors")).unwrap()
    );
}

#[test]
fn with_and_without_bert_prefix_load_the_same_model() {
    let prefixed_dir = tempfile::tempdir().unwrap();
    let base = load(TINY, AttentionConfig::default());
    base.save_pretrained(prefixed_dir.path()).unwrap();
    // Strip the prefix, as sentence-transformers checkpoints store it, and rename LayerNorm
    // weights to the old TensorFlow gamma/beta spelling.
    let plain_dir = tempfile::tempdir().unwrap();
    let saved: HashMap<String, Tensor> =
        candle_core::safetensors::load(prefixed_dir.path().join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let stripped: HashMap<String, Tensor> = saved
        .into_iter()
        .map(|(k, v)| {
            let k = k.strip_prefix("bert.").unwrap().to_string();
            let k = k
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            (k, v.to_dtype(DType::F32).unwrap())
        })
        .collect();
    candle_core::safetensors::save(&stripped, plain_dir.path().join("model.safetensors")).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(prefixed_dir.path().join(f), plain_dir.path().join(f)).unwrap();
    }
    let opts = LoadOptions {
        hub: hub(),
        ..Default::default()
    };
    let a = Model::load(prefixed_dir.path().to_str().unwrap(), &opts).unwrap();
    let b = Model::load(plain_dir.path().to_str().unwrap(), &opts).unwrap();
    assert!(!a.load_report().unprefixed);
    assert!(b.load_report().unprefixed);
    params_equal(&a, &b);
    params_equal(&a, &base);
}
