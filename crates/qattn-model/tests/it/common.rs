//! Where the shared test data lives and how to compare against the fixtures.
//!
//! Models are found the way a user points qattn at a cache: `QATTN_HF_CACHE` (the value one
//! would pass as `--cache-dir`), default `<repo>/../shared/data/hf`. Fixtures come from
//! `QATTN_DATA_DIR` (default `<repo>/../shared/data`). Missing data fails the test with the
//! path and variable to set — it never passes silently.

use candle_core::Tensor;
use qattn_model::{AttentionConfig, HubOptions, LoadOptions, Model};
use serde_json::Value;
use std::path::PathBuf;

pub(crate) const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
pub(crate) const TINY: &str = "synthetic/bert-tiny-random-h32";

pub(crate) fn data_dir() -> PathBuf {
    std::env::var_os("QATTN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        })
}

pub(crate) fn hf_cache() -> PathBuf {
    let p = std::env::var_os("QATTN_HF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir().join("hf"));
    assert!(
        p.is_dir(),
        "model cache {} not found: set QATTN_HF_CACHE (or QATTN_DATA_DIR) to the shared data",
        p.display()
    );
    p
}

pub(crate) fn hub() -> HubOptions {
    HubOptions {
        cache_dir: Some(hf_cache()),
        offline: true,
        ..HubOptions::default()
    }
}

pub(crate) fn load(id: &str, attention: AttentionConfig) -> Model {
    let opts = LoadOptions {
        hub: hub(),
        attention: Some(attention),
        ..Default::default()
    };
    Model::load(id, &opts).unwrap_or_else(|e| panic!("loading {id}: {e}"))
}

pub(crate) fn fixture(name: &str) -> Value {
    let p = data_dir().join("fixtures").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "fixture {} unreadable ({e}): set QATTN_DATA_DIR to the shared data",
            p.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// Flattens nested JSON number arrays.
pub(crate) fn flat(v: &Value) -> Vec<f32> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<f32>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Number(n) => out.push(n.as_f64().unwrap() as f32),
            other => panic!("not a number: {other}"),
        }
    }
    walk(v, &mut out);
    out
}

pub(crate) fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub(crate) fn tensor_values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
