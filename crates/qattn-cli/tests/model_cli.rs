//! `qattn model encode | info` against the transformers fixtures, configured as a user would:
//! `HF_HOME` (or `--cache-dir`) pointing at the shared model cache.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn data_dir() -> PathBuf {
    std::env::var_os("QATTN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        })
}

fn hf_cache() -> PathBuf {
    let p = std::env::var_os("QATTN_HF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir().join("hf"));
    assert!(
        p.is_dir(),
        "{} not found: set QATTN_HF_CACHE or QATTN_DATA_DIR",
        p.display()
    );
    p
}

/// `qattn model ARGS…` with HF_HOME at the shared cache and downloads disabled.
fn model_cmd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qattn"))
        .arg("model")
        .args(args)
        .env("HF_HOME", hf_cache())
        .env_remove("HF_HUB_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn ok_json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "qattn failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("not a number: {other}"),
    }
}

fn max_abs(a: &Value, b: &Value) -> f64 {
    let (a, b) = (flat(a), flat(b));
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn encode_reproduces_the_fixture_numbers() {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(data_dir().join("fixtures/all-MiniLM-L6-v2.json")).unwrap(),
    )
    .unwrap();
    for (n, input) in fx["inputs"].as_array().unwrap().iter().enumerate() {
        let mut args = vec![
            "encode",
            "--model",
            MINILM,
            "--text",
            input["text"].as_str().unwrap(),
            "--json",
        ];
        if let Some(p) = input["text_pair"].as_str() {
            args.extend(["--pair", p]);
        }
        let got = ok_json(model_cmd(&args));
        assert_eq!(got["input_ids"], input["input_ids"], "input {n} ids");
        for (key, want) in [
            ("last_hidden_state", &input["last_hidden_state"]["values"]),
            ("pooler_output", &input["pooler_output"]["values"]),
            (
                "sentence_embedding",
                &input["sentence_embedding_mean_pooled_l2_normalized"]["values"],
            ),
        ] {
            let d = max_abs(&got[key], want);
            assert!(d <= 1e-4, "input {n} {key}: max abs diff {d}");
        }
    }
}

#[test]
fn encode_with_a_sampling_estimator_is_seeded() {
    let run = |seed: &str, cache_flag: bool| {
        let cache = hf_cache();
        let mut args = vec![
            "encode",
            "--model",
            MINILM,
            "--text",
            "Quantum attention samples keys.",
            "--attention",
            "multinomial:4",
            "--seed",
            seed,
            "--json",
        ];
        if cache_flag {
            args.extend(["--cache-dir", cache.to_str().unwrap()]);
        }
        ok_json(model_cmd(&args))
    };
    let a = run("1", false);
    assert_eq!(a["last_hidden_state"], run("1", true)["last_hidden_state"]);
    assert_ne!(a["last_hidden_state"], run("2", false)["last_hidden_state"]);
    let exact = ok_json(model_cmd(&[
        "encode",
        "--model",
        MINILM,
        "--text",
        "Quantum attention samples keys.",
        "--json",
    ]));
    assert!(max_abs(&a["last_hidden_state"], &exact["last_hidden_state"]) > 1e-3);
}

#[test]
fn info_reports_config_parameters_and_attention() {
    let v = ok_json(model_cmd(&[
        "info",
        "--model",
        MINILM,
        "--attention",
        "stratified:32",
        "--attention-override",
        "0=exact",
        "--json",
    ]));
    assert_eq!(v["config"]["hidden_size"], 384);
    let (h, i, l, vocab, pos) = (384u64, 1536u64, 6u64, 30522u64, 512u64);
    let per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h;
    let expected = (vocab + pos + 2) * h + 2 * h + l * per_layer + h * h + h;
    assert_eq!(v["parameters"], expected);
    assert_eq!(v["attention"]["default"], "stratified:32");
    assert_eq!(v["attention_layers"][0], "layer 0: exact");
    assert_eq!(v["attention_layers"][1], "layer 1: stratified:32");
}

#[test]
fn missing_files_and_bad_specs_fail_clearly() {
    let empty = tempfile::tempdir().unwrap();
    let out = model_cmd(&[
        "info",
        "--model",
        MINILM,
        "--cache-dir",
        empty.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.json") && err.contains("model.safetensors"),
        "{err}"
    );
    let out = model_cmd(&[
        "encode",
        "--model",
        MINILM,
        "--text",
        "x",
        "--attention",
        "stratified:zero",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--attention") && err.contains("stratified"),
        "{err}"
    );
    let out = model_cmd(&["info", "--model", "./no/such/dir"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/dir"));
}

/// `--device cpu` is the default path; a malformed device and (in a build without candle's
/// CUDA backend) a CUDA device are refused before anything loads, with the reason and a usage
/// exit code, never a panic. The same flag on `train` is checked the same way.
#[test]
fn device_flag_selects_cpu_and_refuses_what_is_not_there() {
    let out = model_cmd(&["info", "--model", MINILM, "--device", "cpu"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = model_cmd(&["info", "--model", MINILM, "--device", "gpu:0"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("expected cpu, cuda or cuda:N"), "{err}");
    let cuda = model_cmd(&[
        "encode", "--model", MINILM, "--text", "hi", "--device", "cuda:0",
    ]);
    let err = String::from_utf8_lossy(&cuda.stderr);
    assert!(!err.contains("panicked"), "{err}");
    if cfg!(not(feature = "cuda")) {
        assert_eq!(cuda.status.code(), Some(2), "{err}");
        assert!(err.contains("no CUDA backend"), "{err}");
    }
    for cmd in [
        &["train"][..],
        &["glue", "run"],
        &["glue", "predict"],
        &["compare"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_qattn"))
            .args(cmd)
            .args(["--device", "cuda:x"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(err.contains("whole number"), "{cmd:?}: {err}");
    }
}
