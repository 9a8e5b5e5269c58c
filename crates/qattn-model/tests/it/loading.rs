//! Loading errors: missing files offline, bad configs, bad checkpoints, bad inputs.

use crate::common::*;
use candle_core::{Device, Tensor};
use qattn_model::{Error, HubOptions, Inputs, LoadOptions, Mode, Model};
use std::path::Path;

fn copy_snapshot(files: &[&str], dst: &Path) {
    let src = hf_cache().join("models--synthetic--bert-tiny-random-h32/snapshots/main");
    let snap = dst.join("models--synthetic--bert-tiny-random-h32/snapshots/main");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(dst.join("models--synthetic--bert-tiny-random-h32/refs")).unwrap();
    std::fs::write(
        dst.join("models--synthetic--bert-tiny-random-h32/refs/main"),
        "main",
    )
    .unwrap();
    for f in files {
        std::fs::copy(src.join(f), snap.join(f)).unwrap();
    }
}

#[test]
fn offline_missing_files_are_listed() {
    let cache = tempfile::tempdir().unwrap();
    copy_snapshot(&["config.json"], cache.path());
    let opts = LoadOptions {
        hub: HubOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            offline: true,
            ..HubOptions::default()
        },
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let err = Model::load(TINY, &opts).unwrap_err();
    assert!(
        start.elapsed().as_secs() < 5,
        "offline failure must be immediate"
    );
    assert!(matches!(err, Error::MissingFiles(_)), "{err:?}");
    let msg = err.to_string();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "huggingface-cli download",
    ] {
        assert!(msg.contains(f), "{f} not in: {msg}");
    }
    assert!(
        !msg.contains("config.json"),
        "config.json is present: {msg}"
    );
}

#[test]
fn repo_absent_from_cache_lists_every_file() {
    let cache = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        hub: HubOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            offline: true,
            ..HubOptions::default()
        },
        ..Default::default()
    };
    let msg = Model::load("nobody/no-such-model", &opts)
        .unwrap_err()
        .to_string();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(msg.contains(f), "{f} not in: {msg}");
    }
}

#[test]
fn unsupported_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_snapshot(&["model.safetensors", "tokenizer.json"], dir.path());
    let snap = dir
        .path()
        .join("models--synthetic--bert-tiny-random-h32/snapshots/main");
    std::fs::write(
        snap.join("config.json"),
        r#"{"model_type":"bert","hidden_act":"gelu","vocab_size":30522,"hidden_size":32,
            "num_hidden_layers":2,"num_attention_heads":2,"intermediate_size":64,
            "max_position_embeddings":512,"position_embedding_type":"relative_key_query"}"#,
    )
    .unwrap();
    let opts = LoadOptions {
        hub: hub(),
        ..Default::default()
    };
    let msg = Model::load(snap.to_str().unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("position_embedding_type") && msg.contains("absolute"),
        "{msg}"
    );
}

#[test]
fn wrong_shapes_and_garbage_weights_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    copy_snapshot(&["config.json", "tokenizer.json"], dir.path());
    let snap = dir
        .path()
        .join("models--synthetic--bert-tiny-random-h32/snapshots/main");
    std::fs::write(snap.join("model.safetensors"), b"not a safetensors file").unwrap();
    let opts = LoadOptions {
        hub: hub(),
        ..Default::default()
    };
    let msg = Model::load(snap.to_str().unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
    let mut m = std::collections::HashMap::new();
    m.insert(
        "embeddings.word_embeddings.weight".to_string(),
        Tensor::zeros((10, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&m, snap.join("model.safetensors")).unwrap();
    let msg = Model::load(snap.to_str().unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("bert.embeddings.word_embeddings.weight") && msg.contains("[10, 32]"),
        "{msg}"
    );
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let m = load(TINY, Default::default());
    let dev = Device::Cpu;
    let ids = Tensor::new(&[[101u32, 999_999, 102]], &dev).unwrap();
    let e = m.forward(&Inputs::from_ids(ids), Mode::EVAL).unwrap_err();
    assert!(e.to_string().contains("vocab_size"), "{e}");
    let long = Tensor::zeros((1, 600), candle_core::DType::U32, &dev).unwrap();
    let e = m.forward(&Inputs::from_ids(long), Mode::EVAL).unwrap_err();
    assert!(e.to_string().contains("max_position_embeddings"), "{e}");
    let ids = Tensor::new(&[[101u32, 7, 102]], &dev).unwrap();
    let bad_mask = Tensor::new(&[[1u32, 1]], &dev).unwrap();
    let e = m
        .forward(
            &Inputs {
                input_ids: ids,
                token_type_ids: None,
                attention_mask: Some(bad_mask),
            },
            Mode::EVAL,
        )
        .unwrap_err();
    assert!(e.to_string().contains("attention_mask"), "{e}");
}
