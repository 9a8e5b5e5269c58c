//! `qattn serve` as a process: start-up line, `qattn health`, and SIGTERM losing no accepted
//! request.

use qattn_serve::proto::qattn::v1 as pb;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Starts `qattn serve` with the tiny model; returns the child and the gRPC address.
fn spawn_server(
    extra: &[&str],
) -> (
    std::process::Child,
    String,
    BufReader<std::process::ChildStdout>,
) {
    let cache = hf_cache();
    let mut child = Command::new(env!("CARGO_BIN_EXE_qattn"))
        .args([
            "serve",
            "--model",
            "synthetic/bert-tiny-random-h32=tiny",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .args([
            "--metrics-port",
            "0",
            "--offline",
            "--head",
            "classification:3",
            "--cache-dir",
        ])
        .arg(&cache)
        .args(extra)
        .env_remove("QATTN_API_KEYS")
        .env_remove("QATTN_ADMIN_KEYS")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn qattn serve");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).expect("read the start-up line");
    let addr = line
        .strip_prefix("qattn-serve listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected start-up line {line:?}"))
        .to_string();
    assert!(line.contains("metrics on http://127.0.0.1:"), "{line}");
    (child, addr, out)
}

#[test]
fn health_command_reports_serving() {
    let (mut child, addr, _out) = spawn_server(&[]);
    let ok = Command::new(env!("CARGO_BIN_EXE_qattn"))
        .args(["health", "--addr", &addr])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "SERVING");
    let ok = Command::new(env!("CARGO_BIN_EXE_qattn"))
        .args([
            "health",
            "--addr",
            &addr,
            "--service",
            "inference.GRPCInferenceService",
        ])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let bad = Command::new(env!("CARGO_BIN_EXE_qattn"))
        .args(["health", "--addr", &addr, "--service", "no.such.Service"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    child.kill().unwrap();
    let _ = child.wait();
    let down = Command::new(env!("CARGO_BIN_EXE_qattn"))
        .args(["health", "--addr", &addr, "--timeout", "1"])
        .output()
        .unwrap();
    assert!(!down.status.success());
}

#[test]
fn sigterm_loses_no_accepted_request() {
    // Each Monte-Carlo batch sleeps 150 ms and holds one request: 8 requests queue for ~1.2 s.
    let (child, addr, mut out) = spawn_server(&[
        "--attention",
        "stratified:4",
        "--fail-mc",
        "sleep:150",
        "--max-batch-size",
        "1",
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pid = child.id();
    let results = rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let client = pb::inference_client::InferenceClient::new(channel);
        let mut handles = Vec::new();
        for i in 0..8 {
            let mut c = client.clone();
            handles.push(tokio::spawn(async move {
                let req = pb::ClassifyRequest {
                    inputs: vec![pb::TextInput {
                        text: format!("request {i}"),
                        text_pair: None,
                    }],
                    target: None,
                    id: i.to_string(),
                };
                c.classify(req).await
            }));
        }
        // All eight are accepted (queued) before the signal.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        let st = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.unwrap());
        }
        (results, t0.elapsed())
    });
    let (results, waited) = results;
    for (i, r) in results.iter().enumerate() {
        let r = r
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i} was lost: {e:?}"));
        assert_eq!(r.get_ref().id, i.to_string());
        assert_eq!(r.get_ref().results.len(), 1);
    }
    // The queue really was draining after the signal (not answered before it).
    assert!(
        waited > Duration::from_millis(500),
        "answers came {waited:?} after SIGTERM"
    );
    let mut child = child;
    let status = child.wait().unwrap();
    assert!(status.success(), "qattn serve exited with {status:?}");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    assert!(rest.contains("qattn-serve stopped"), "{rest}");
}
