//! Real third-party clients against a server on 127.0.0.1:0 (issue 7, "Real third-party
//! clients"): Python `grpcio` driving qattn.v1 through server reflection only, and NVIDIA's
//! `tritonclient[grpc]` against the KServe Open Inference Protocol endpoint. The scripts live
//! in `tests/python/`; each checks its answers, prints a JSON summary, and this module compares
//! the numbers with the answers of the Rust generated client for the same inputs.
//!
//! Interpreter: `QATTN_CI_PYTHON` (CI points it at a venv with [`REQUIREMENTS`] installed);
//! when unset, a venv at `target/py-clients` is created (or reused while its requirement stamp
//! matches) with `python3 -m venv` + `pip install`. Only when that installation fails does a
//! test print `skipped: <reason>` and return — except under `CI=true`, where a missing
//! interpreter fails the test; a failing script always fails the test.

use crate::common::{base_config, classify_req, inputs, key_file, start, tiny, typed, with_key};
use qattn_serve::proto::qattn::v1 as pb;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The pinned client packages (also in xtask/ci-requirements.txt). Versions verified to install
/// together on Python 3.11: tritonclient 2.73 needs protobuf < 7 while grpcio-reflection 1.85.1
/// needs protobuf >= 7; pip resolves reflection 1.81.1 with protobuf 6.33.6.
pub(crate) const REQUIREMENTS: &[&str] = &[
    "grpcio==1.85.3",
    "grpcio-reflection==1.81.1",
    "protobuf==6.33.6",
    "tritonclient[grpc]==2.73.0",
    "numpy==2.4.6",
];

const KEY: &str = "py-client-secret-7";
const TEXTS: [&str; 2] = ["The service answered quickly.", "Nothing worked at all."];
/// Hidden size of synthetic/bert-tiny-random-h32.
const HIDDEN: usize = 32;
const LABELS: usize = 3;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")))
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

fn run_ok(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err
            .lines()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ");
        Err(format!("{cmd:?} exited with {}: {tail}", out.status))
    }
}

/// Creates (or reuses) target/py-clients with [`REQUIREMENTS`]; `Err(reason)` when that fails.
fn venv_python() -> Result<PathBuf, String> {
    let venv = target_dir().join("py-clients");
    let python = venv.join("bin").join("python");
    let stamp = venv.join(".qattn-requirements");
    let wanted = REQUIREMENTS.join("\n");
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    run_ok(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .map_err(|e| format!("cannot create a Python venv: {e}"))?;
    run_ok(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "--retries",
                "2",
            ])
            .args(["--timeout", "30"])
            .args(REQUIREMENTS),
    )
    .map_err(|e| format!("pip install of the client packages failed: {e}"))?;
    // The stamp is written last: an interrupted install is retried next time.
    std::fs::write(&stamp, wanted).map_err(|e| format!("writing {}: {e}", stamp.display()))?;
    Ok(python)
}

/// The interpreter to run the clients with, or the reason to skip.
fn python() -> Result<PathBuf, String> {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PY.get_or_init(|| match std::env::var_os("QATTN_CI_PYTHON") {
        // CI provides the interpreter: a wrong path is a CI bug, not a reason to skip.
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "QATTN_CI_PYTHON={} is not a file", p.display());
            Ok(p)
        }
        None if in_ci() => Err(
            "CI=true but QATTN_CI_PYTHON is not set (`cargo xtask ci` sets \
                                it to the CI Python env)"
                .to_owned(),
        ),
        None => venv_python(),
    })
    .clone()
}

/// Whether the tests run in CI (`CI=true` or `1`): there a missing interpreter fails the test.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The interpreter, or `None` after printing why the test is skipped; under CI a missing
/// interpreter is a failure, not a skip.
fn python_or_skip() -> Option<PathBuf> {
    match python() {
        Ok(p) => Some(p),
        Err(reason) if in_ci() => panic!("CI=true: the real-client test cannot run: {reason}"),
        Err(reason) => {
            println!("skipped: {reason}");
            None
        }
    }
}

/// Runs a client script; panics (fails the test) with its stderr when it fails. Returns the
/// JSON summary (its last stdout line).
fn run_script(python: &Path, name: &str, args: &[String]) -> Value {
    let out = Command::new(python)
        .arg(script(name))
        .args(args)
        // no __pycache__ in the source tree
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {name} with {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    println!("{name}: {last}");
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{name}: summary is not JSON ({e}): {last:?}"))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or_else(|| panic!("not a number: {x}")) as f32)
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: python {g} vs rust {w} (tol {tol})"
        );
    }
}

/// A server with a classifier `clf` and an encoder `enc` (no head), both the tiny model with
/// exact attention, behind an API key, with public reflection and health.
async fn server(dir: &Path) -> qattn_serve::RunningServer {
    let mut cfg = base_config();
    cfg.auth.api_keys_file = Some(key_file(dir, "keys.txt", &format!("py:{KEY}\n")));
    cfg.auth.public_reflection = true;
    cfg.auth.public_health = true;
    cfg.models.push(tiny("clf", "1", "exact"));
    let mut enc = tiny("enc", "1", "exact");
    enc.head = Some("none".into());
    cfg.models.push(enc);
    start(cfg).await
}

fn text_args() -> Vec<String> {
    TEXTS
        .iter()
        .flat_map(|t| ["--text".to_string(), t.to_string()])
        .collect()
}

async fn rust_classify(s: &qattn_serve::RunningServer) -> pb::ClassifyResponse {
    typed(s)
        .await
        .classify(with_key(classify_req("clf", "", &TEXTS), Some(KEY)))
        .await
        .expect("typed Classify")
        .into_inner()
}

async fn rust_embed(s: &qattn_serve::RunningServer, model: &str) -> pb::EmbedResponse {
    let req = pb::EmbedRequest {
        inputs: inputs(&TEXTS),
        target: Some(pb::Target {
            model: model.into(),
            version: String::new(),
            seed: None,
        }),
    };
    typed(s)
        .await
        .embed(with_key(req, Some(KEY)))
        .await
        .expect("typed Embed")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_with_server_reflection() {
    let Some(py) = python_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let mut args = vec![
        "--addr".to_string(),
        s.addr.to_string(),
        "--model".into(),
        "clf".into(),
        "--embed-dim".into(),
        HIDDEN.to_string(),
        "--key".into(),
        KEY.into(),
    ];
    args.extend(text_args());
    let summary =
        tokio::task::spawn_blocking(move || run_script(&py, "reflection_client.py", &args))
            .await
            .unwrap();

    let services: Vec<&str> = summary["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for svc in [
        "qattn.v1.Inference",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.contains(&svc),
            "reflection lists {services:?}, missing {svc}"
        );
    }
    assert_eq!(summary["wrong_key"], "UNAUTHENTICATED");

    let want = rust_classify(&s).await;
    let got = summary["classify"].as_array().unwrap();
    assert_eq!(got.len(), want.results.len());
    for (i, (g, w)) in got.iter().zip(&want.results).enumerate() {
        assert_eq!(
            g["label"].as_str(),
            Some(w.label.as_str()),
            "label of text {i}"
        );
        let ws: Vec<f32> = w.scores.iter().map(|x| x.score).collect();
        let wl: Vec<f32> = w.scores.iter().map(|x| x.logit).collect();
        assert_close(&format!("scores[{i}]"), &floats(&g["scores"]), &ws, 1e-5);
        assert_close(&format!("logits[{i}]"), &floats(&g["logits"]), &wl, 1e-4);
    }
    let want = rust_embed(&s, "clf").await;
    let got = summary["embeddings"].as_array().unwrap();
    assert_eq!(got.len(), want.embeddings.len());
    for (i, (g, w)) in got.iter().zip(&want.embeddings).enumerate() {
        assert_close(&format!("embedding[{i}]"), &floats(g), &w.values, 1e-5);
    }
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_against_open_inference_protocol() {
    let Some(py) = python_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path()).await;
    let mut args = vec![
        "--addr".to_string(),
        s.addr.to_string(),
        "--model".into(),
        "clf".into(),
        "--labels".into(),
        LABELS.to_string(),
        "--encoder".into(),
        "enc".into(),
        "--embed-dim".into(),
        HIDDEN.to_string(),
        "--key".into(),
        KEY.into(),
    ];
    args.extend(text_args());
    let summary = tokio::task::spawn_blocking(move || run_script(&py, "triton_client.py", &args))
        .await
        .unwrap();
    assert!(
        summary["bad_input_status"]
            .as_str()
            .is_some_and(|s| s.contains("INVALID_ARGUMENT")),
        "{}",
        summary["bad_input_status"]
    );

    // OIP probabilities/logits == typed Classify scores/logits; OIP embedding == typed Embed.
    let want = rust_classify(&s).await;
    let clf = &summary["results"]["clf"];
    for (i, w) in want.results.iter().enumerate() {
        let ws: Vec<f32> = w.scores.iter().map(|x| x.score).collect();
        let wl: Vec<f32> = w.scores.iter().map(|x| x.logit).collect();
        assert_close(
            &format!("probabilities[{i}]"),
            &floats(&clf["probabilities"][i]),
            &ws,
            1e-5,
        );
        assert_close(
            &format!("logits[{i}]"),
            &floats(&clf["logits"][i]),
            &wl,
            1e-4,
        );
    }
    let want = rust_embed(&s, "enc").await;
    for (i, w) in want.embeddings.iter().enumerate() {
        assert_close(
            &format!("embedding[{i}]"),
            &floats(&summary["results"]["enc"]["embedding"][i]),
            &w.values,
            1e-5,
        );
    }
    s.shutdown().await.unwrap();
}
