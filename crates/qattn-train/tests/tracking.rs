//! Experiment tracking: the JSONL log, the progress line, and MLflow against a real server.
//!
//! The MLflow round trip starts a real `mlflow server` on a free port of 127.0.0.1 with a SQLite
//! store in a temporary folder (stopped on drop). The executable: `QATTN_MLFLOW`, else the
//! `mlflow` beside `QATTN_CI_PYTHON` (the CI Python env of `cargo xtask ci`, which installs
//! mlflow from xtask/ci-requirements.txt), else `benchmarks/.venv/bin/mlflow`. Without one the
//! test is skipped with a message — except under `CI=true`, where that is a failure. The local
//! mock servers below cover the error paths.

use qattn_train::Error;
use qattn_train::tracking::{
    JsonlLog, MLFLOW_READ_TIMEOUT, Mlflow, Progress, RunStatus, Tracker, Trackers, format_eta,
    format_progress_line, git_sha,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn steps(path: &Path) -> Vec<u64> {
    read_lines(path)
        .iter()
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

/// Writes a log with steps 10, 20, …, `10 * n`.
fn write_log(path: &Path, n: u64) {
    let mut log = JsonlLog::open(path, None).unwrap();
    for i in 1..=n {
        log.log_metrics(10 * i, &metrics(&[("loss", 1.0 / i as f64)]))
            .unwrap();
    }
    log.finish(RunStatus::Finished).unwrap();
}

// ---------------------------------------------------------------------------------------------
// JSONL
// ---------------------------------------------------------------------------------------------

#[test]
fn jsonl_lines_have_step_time_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/metrics.jsonl");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut log = JsonlLog::open(&path, None).unwrap();
    assert_eq!(log.path(), path);
    log.log_metrics(1, &metrics(&[("train/loss", 0.75), ("lr", 2e-5)]))
        .unwrap();
    // Flushed per call: visible before finish.
    assert_eq!(read_lines(&path).len(), 1);
    log.log_metrics(2, &metrics(&[("train/loss", 0.5), ("lr", 1e-5)]))
        .unwrap();
    log.log_metrics(2, &metrics(&[("eval/accuracy", 0.875)]))
        .unwrap();
    log.finish(RunStatus::Finished).unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    assert!(text.starts_with("{\"step\":1,\"time\":"), "{text}");
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 3);
    for line in &lines {
        let t = line["time"].as_f64().unwrap();
        assert!(t >= before - 1.0 && t < before + 3600.0, "{t}");
    }
    assert_eq!(lines[0]["step"], 1);
    assert_eq!(lines[0]["train/loss"], 0.75);
    assert_eq!(lines[0]["lr"], 2e-5);
    assert_eq!(lines[1]["step"], 2);
    assert_eq!(lines[1]["train/loss"], 0.5);
    assert_eq!(lines[2]["step"], 2);
    assert_eq!(lines[2]["eval/accuracy"], 0.875);
    assert_eq!(lines[2].as_object().unwrap().len(), 3);
}

#[test]
fn jsonl_non_finite_values_are_null() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let mut log = JsonlLog::open(&path, None).unwrap();
    log.log_metrics(
        3,
        &metrics(&[
            ("nan", f64::NAN),
            ("inf", f64::INFINITY),
            ("ninf", f64::NEG_INFINITY),
            ("ok", 1.25),
        ]),
    )
    .unwrap();
    let line = &read_lines(&path)[0];
    assert!(line["nan"].is_null());
    assert!(line["inf"].is_null());
    assert!(line["ninf"].is_null());
    assert_eq!(line["ok"], 1.25);
    assert_eq!(line["step"], 3);
}

#[test]
fn jsonl_reserved_metric_names_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let mut log = JsonlLog::open(&path, None).unwrap();
    for name in ["step", "time"] {
        let err = log.log_metrics(1, &metrics(&[(name, 1.0)])).unwrap_err();
        assert!(matches!(err, Error::Tracking(_)), "{err}");
        assert!(err.to_string().contains(name), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
}

#[test]
fn jsonl_resume_keeps_steps_up_to_the_checkpoint_and_drops_a_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    write_log(&path, 5);
    // A crash in the middle of writing step 60.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"{\"step\":60,\"time\":1.0,\"lo").unwrap();
    drop(f);
    let original: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();

    let mut log = JsonlLog::open(&path, Some(30)).unwrap();
    assert_eq!(steps(&path), [10, 20, 30]);
    // Kept lines are kept verbatim.
    let kept: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(kept, original[..3]);
    // The resumed run continues the log.
    log.log_metrics(40, &metrics(&[("loss", 0.1)])).unwrap();
    assert_eq!(steps(&path), [10, 20, 30, 40]);
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["metrics.jsonl"]);
}

#[test]
fn jsonl_resume_edge_cases() {
    let dir = tempfile::tempdir().unwrap();
    // A missing file is created.
    let path = dir.path().join("new/metrics.jsonl");
    JsonlLog::open(&path, Some(100)).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    // Resuming beyond the last step keeps everything; resuming at 0 drops everything but step 0.
    let path = dir.path().join("metrics.jsonl");
    write_log(&path, 3);
    JsonlLog::open(&path, Some(1000)).unwrap();
    assert_eq!(steps(&path), [10, 20, 30]);
    JsonlLog::open(&path, Some(0)).unwrap();
    assert_eq!(steps(&path), Vec::<u64>::new());
    // A complete last line without its newline is kept (and terminated).
    std::fs::write(&path, "{\"step\":1,\"time\":0}\n{\"step\":2,\"time\":0}").unwrap();
    let mut log = JsonlLog::open(&path, Some(5)).unwrap();
    log.log_metrics(3, &metrics(&[])).unwrap();
    assert_eq!(steps(&path), [1, 2, 3]);
}

#[test]
fn jsonl_resume_rejects_a_corrupt_line_in_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let text = "{\"step\":1,\"time\":0}\nnot json\n{\"step\":3,\"time\":0}\n";
    std::fs::write(&path, text).unwrap();
    let err = JsonlLog::open(&path, Some(2)).unwrap_err();
    match &err {
        Error::Data { path: p, line, .. } => {
            assert_eq!(p, &path);
            assert_eq!(*line, 2);
        }
        other => panic!("{other}"),
    }
    // The file is left untouched.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    // A line without a step is corrupt too.
    std::fs::write(&path, "{\"params\":{}}\n{\"step\":3,\"time\":0}\n").unwrap();
    let err = JsonlLog::open(&path, Some(2)).unwrap_err().to_string();
    assert!(err.contains(":1:") && err.contains("step"), "{err}");
}

#[test]
fn jsonl_append_cuts_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    write_log(&path, 2);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"{\"step\":30,\"ti").unwrap();
    drop(f);
    let mut log = JsonlLog::open(&path, None).unwrap();
    log.log_metrics(30, &metrics(&[("loss", 0.3)])).unwrap();
    assert_eq!(steps(&path), [10, 20, 30]);
}

#[test]
fn jsonl_params_go_to_params_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let mut log = JsonlLog::open(&path, None).unwrap();
    assert_eq!(log.params_path(), dir.path().join("params.json"));
    log.log_params(&params(&[("lr", "2e-5"), ("estimator", "stratified:32")]))
        .unwrap();
    log.log_params(&params(&[("seed", "7"), ("lr", "3e-5")]))
        .unwrap();
    log.log_metrics(1, &metrics(&[("loss", 0.5)])).unwrap();
    let p: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("params.json")).unwrap())
            .unwrap();
    assert_eq!(
        p,
        serde_json::json!({"estimator": "stratified:32", "lr": "3e-5", "seed": "7"})
    );
    // The JSONL holds metrics lines only.
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 1);
    assert!(lines[0].get("params").is_none());
}

#[test]
fn jsonl_unwritable_paths_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    // The parent "directory" is a regular file.
    let path = blocker.join("metrics.jsonl");
    let err = JsonlLog::open(&path, None).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("a-file"), "{err}");
    let err = JsonlLog::open(&path, Some(3)).unwrap_err();
    assert!(err.to_string().contains("a-file"), "{err}");
    // The log path is a directory.
    let err = JsonlLog::open(dir.path(), None).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    // params.json cannot be written: a directory is in the way.
    let path = dir.path().join("metrics.jsonl");
    std::fs::create_dir(dir.path().join("params.json")).unwrap();
    let mut log = JsonlLog::open(&path, None).unwrap();
    let err = log.log_params(&params(&[("a", "b")])).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("params.json"), "{err}");
}

#[cfg(target_os = "linux")]
#[test]
fn jsonl_write_failure_is_an_error_not_a_panic() {
    // /dev/full accepts the open and fails every write with ENOSPC.
    if !Path::new("/dev/full").exists() {
        return;
    }
    let mut log = JsonlLog::open(Path::new("/dev/full"), None).unwrap();
    let err = log.log_metrics(1, &metrics(&[("loss", 1.0)])).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("/dev/full"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Fan-out, git, progress
// ---------------------------------------------------------------------------------------------

struct Recorder {
    calls: std::rc::Rc<std::cell::RefCell<Vec<String>>>,
    fail: bool,
}

impl Tracker for Recorder {
    fn log_params(&mut self, params: &BTreeMap<String, String>) -> qattn_train::Result<()> {
        self.calls
            .borrow_mut()
            .push(format!("params {}", params.len()));
        self.result()
    }
    fn log_metrics(&mut self, step: u64, _: &BTreeMap<String, f64>) -> qattn_train::Result<()> {
        self.calls.borrow_mut().push(format!("metrics {step}"));
        self.result()
    }
    fn finish(&mut self, status: RunStatus) -> qattn_train::Result<()> {
        self.calls.borrow_mut().push(format!("finish {status}"));
        self.result()
    }
}

impl Recorder {
    fn result(&self) -> qattn_train::Result<()> {
        if self.fail {
            Err(Error::Tracking("recorder failed".into()))
        } else {
            Ok(())
        }
    }
}

#[test]
fn trackers_call_every_tracker_even_after_a_failure() {
    let calls = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let rec = |fail| -> Box<dyn Tracker> {
        Box::new(Recorder {
            calls: calls.clone(),
            fail,
        })
    };
    let mut all = Trackers(vec![rec(false), rec(true), rec(false)]);
    let err = all.log_params(&params(&[("a", "1")])).unwrap_err();
    assert_eq!(err.to_string(), "tracking: recorder failed");
    assert!(all.log_metrics(5, &metrics(&[])).is_err());
    assert_eq!(calls.borrow().len(), 6);

    let mut two_failing = Trackers(vec![rec(true), rec(true)]);
    let err = two_failing
        .finish(RunStatus::Failed)
        .unwrap_err()
        .to_string();
    assert_eq!(err.matches("recorder failed").count(), 2, "{err}");
    assert_eq!(calls.borrow().last().unwrap(), "finish failed");

    let mut ok = Trackers(vec![rec(false)]);
    ok.finish(RunStatus::Finished).unwrap();

    // The JSONL log works through the fan-out.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let mut t = Trackers(vec![Box::new(JsonlLog::open(&path, None).unwrap())]);
    t.log_metrics(4, &metrics(&[("loss", 0.25)])).unwrap();
    t.finish(RunStatus::Finished).unwrap();
    assert_eq!(steps(&path), [4]);
}

#[test]
fn git_sha_reads_head_and_is_none_outside_a_repository() {
    let outside = tempfile::tempdir().unwrap();
    assert_eq!(git_sha(outside.path()), None);
    assert_eq!(git_sha(&outside.path().join("does-not-exist")), None);

    let git = |dir: &Path, args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let repo = tempfile::tempdir().unwrap();
    if !git(repo.path(), &["init", "-q"]) {
        eprintln!("skipped the repository half: git is not available");
        return;
    }
    // No commit yet.
    assert_eq!(git_sha(repo.path()), None);
    assert!(git(
        repo.path(),
        &["commit", "-q", "--allow-empty", "-m", "first"]
    ));
    let sha = git_sha(repo.path()).expect("a sha after the first commit");
    assert_eq!(sha.len(), 40, "{sha}");
    assert!(sha.bytes().all(|b| b.is_ascii_hexdigit()), "{sha}");
    let out = Command::new("git")
        .arg("-C")
        .arg(repo.path())
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), sha);
}

#[test]
fn progress_plain_line_format() {
    assert_eq!(
        format_progress_line(
            40,
            200,
            std::f64::consts::LN_2,
            2e-5,
            12.34,
            Some(Duration::from_secs(65))
        ),
        "step 40/200  loss 0.6931  lr 2.00e-05  12.3 samples/s  eta 1m05s"
    );
    assert_eq!(
        format_progress_line(1, 10, 2.5, 1e-3, 0.0, None),
        "step 1/10  loss 2.5000  lr 1.00e-03  0.0 samples/s  eta ?"
    );
    assert_eq!(
        format_progress_line(
            9,
            10,
            f64::NAN,
            0.0,
            1000.0,
            Some(Duration::from_secs(3725))
        ),
        "step 9/10  loss NaN  lr 0.00e+00  1000.0 samples/s  eta 1h02m05s"
    );
    assert_eq!(format_eta(Some(Duration::from_millis(59_400))), "59s");
    assert_eq!(format_eta(Some(Duration::from_millis(59_600))), "1m00s");
}

#[test]
fn progress_plain_mode_runs() {
    let p = Progress::new(20, 5, true);
    assert!(!p.is_bar());
    p.update(6, 0.5, 1e-4, 32.0);
    p.println("evaluation: accuracy 0.5");
    p.update(20, 0.25, 0.0, 32.0);
    assert_eq!(p.eta(20), Some(Duration::ZERO));
    p.finish("done");
}

// ---------------------------------------------------------------------------------------------
// MLflow without a server
// ---------------------------------------------------------------------------------------------

/// A free TCP port on 127.0.0.1 (nothing listens on it once this returns).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn mlflow_unreachable_server_fails_fast_with_the_url() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let t = Instant::now();
    let err = Mlflow::new(&url, "exp", "run", &BTreeMap::new()).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(matches!(err, Error::Tracking(_)), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}

#[test]
fn mlflow_rejects_non_http_urls() {
    for url in ["file:///tmp/mlruns", "databricks", "/tmp/mlruns"] {
        let err = Mlflow::new(url, "exp", "run", &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("only http"), "{err}");
    }
}

/// Reads one HTTP request (headers and a Content-Length body); returns its request line.
fn read_request(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = stream.read_exact(&mut body);
    head.lines().next().unwrap_or_default().to_string()
}

#[test]
fn mlflow_http_errors_carry_status_and_body() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let answers = [
            (
                "200 OK",
                r#"{"experiment":{"experiment_id":"7","name":"exp","lifecycle_stage":"active"}}"#,
            ),
            (
                "400 Bad Request",
                r#"{"error_code":"INVALID_PARAMETER_VALUE","message":"tag value too long"}"#,
            ),
        ];
        for (status, body) in answers {
            let (mut stream, _) = listener.accept().unwrap();
            seen.push(read_request(&mut stream));
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).unwrap();
        }
        seen
    });
    let err = Mlflow::new(&url, "exp", "run", &BTreeMap::new()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Tracking(_)), "{msg}");
    assert!(msg.contains("HTTP 400"), "{msg}");
    assert!(msg.contains("tag value too long"), "{msg}");
    assert!(
        msg.contains(&format!("{url}/api/2.0/mlflow/runs/create")),
        "{msg}"
    );
    let seen = server.join().unwrap();
    assert!(
        seen[0].starts_with("GET /api/2.0/mlflow/experiments/get-by-name?experiment_name=exp "),
        "{seen:?}"
    );
    assert!(
        seen[1].starts_with("POST /api/2.0/mlflow/runs/create "),
        "{seen:?}"
    );
}

#[test]
fn mlflow_silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        // Accept, read, never answer; hold the connection until the client gave up.
        let (mut stream, _) = listener.accept().unwrap();
        read_request(&mut stream);
        let _ = rx.recv_timeout(Duration::from_secs(120));
    });
    let t = Instant::now();
    let err = Mlflow::new(&url, "exp", "run", &BTreeMap::new()).unwrap_err();
    let elapsed = t.elapsed();
    drop(tx);
    server.join().unwrap();
    assert!(
        elapsed >= MLFLOW_READ_TIMEOUT - Duration::from_millis(500)
            && elapsed < MLFLOW_READ_TIMEOUT + Duration::from_secs(10),
        "{elapsed:?}"
    );
    assert!(err.to_string().contains(&url), "{err}");
}

// ---------------------------------------------------------------------------------------------
// MLflow against a real server
// ---------------------------------------------------------------------------------------------

/// The `mlflow` CLI: `QATTN_MLFLOW`, else beside `QATTN_CI_PYTHON`, else the benchmarks venv.
fn mlflow_cli() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|p| !p.is_empty());
    if let Some(p) = var("QATTN_MLFLOW") {
        return Some(PathBuf::from(p));
    }
    if let Some(python) = var("QATTN_CI_PYTHON") {
        let beside = Path::new(&python).with_file_name("mlflow");
        if beside.is_file() {
            return Some(beside);
        }
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = repo.join("benchmarks/.venv/bin/mlflow");
    venv.is_file().then_some(venv)
}

/// Whether the tests run in CI (`CI=true` or `1`).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A running `mlflow server`, stopped (with its worker processes) on drop.
struct MlflowServer {
    child: Child,
    url: String,
    log: PathBuf,
}

impl MlflowServer {
    fn start(cli: &Path, dir: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let log = dir.join("server.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(cli)
            .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--default-artifact-root")
            .arg(dir.join("artifacts"))
            .args(["--workers", "1"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            // Its own process group, so that drop stops the workers too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", cli.display()));
        let server = MlflowServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        server.wait_ready(Duration::from_secs(120));
        server
    }

    fn wait_ready(&self, limit: Duration) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Ok(resp) = agent.get(format!("{}/health", self.url)).call()
                && resp.status() == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "mlflow server at {} not ready after {limit:?}; log:\n{}",
            self.url,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    fn get(&self, endpoint: &str, query: &[(&str, &str)]) -> Value {
        let mut req = ureq::get(format!("{}/api/2.0/mlflow/{endpoint}", self.url));
        for (k, v) in query {
            req = req.query(k, v);
        }
        req.call()
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"))
            .body_mut()
            .read_json()
            .unwrap()
    }

    fn run(&self, run_id: &str) -> Value {
        self.get("runs/get", &[("run_id", run_id)])["run"].clone()
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        for signal in ["-TERM", "-KILL"] {
            let _ = Command::new("kill")
                .args([signal, "--", &group])
                .stderr(Stdio::null())
                .status();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Equality up to 2 ulp: serde_json's default float parser (without its `float_roundtrip`
/// feature) may be off by one ulp on the server's exact decimal answer.
fn assert_same(got: f64, want: f64, what: &str) {
    let tol = 2.0 * f64::EPSILON * want.abs().max(f64::MIN_POSITIVE);
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got:e}, want {want:e}"
    );
}

/// `key → value` of a list of `{"key", "value"}` objects.
fn key_values(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|kv| (kv["key"].as_str().unwrap().to_string(), kv["value"].clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn mlflow_round_trip_against_a_real_server() {
    let Some(cli) = mlflow_cli().filter(|p| p.is_file()) else {
        let why = "no mlflow executable (QATTN_MLFLOW, beside QATTN_CI_PYTHON, or \
                   benchmarks/.venv/bin/mlflow; `cargo xtask ci` installs it into the CI Python \
                   env)";
        assert!(!in_ci(), "CI=true: the MLflow round trip cannot run: {why}");
        eprintln!("skipped: {why}");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = MlflowServer::start(&cli, dir.path());

    let sha = "0123456789abcdef0123456789abcdef01234567";
    let tags = params(&[("git_sha", sha), ("task", "sst2")]);
    // A trailing slash on the base URL is fine.
    let mut run = Mlflow::new(&format!("{}/", server.url), "qattn-test", "run-1", &tags).unwrap();
    let exp_id = run.experiment_id().to_string();
    let run_id = run.run_id().to_string();
    assert!(!exp_id.is_empty() && !run_id.is_empty());

    // 150 params: two log-batch requests.
    let mut all_params = params(&[("estimator", "stratified:32+readout:0.02:0.03")]);
    for i in 0..149 {
        all_params.insert(format!("p{i:03}"), format!("value {i}"));
    }
    run.log_params(&all_params).unwrap();

    // Metrics at several steps; a NaN is skipped and counted.
    let series: Vec<(u64, f64, f64)> = (1..=5)
        .map(|s| (s * 10, 1.0 / (s as f64 + 0.5), 2e-5 * (6 - s) as f64))
        .collect();
    for &(step, loss, lr) in &series {
        run.log_metrics(step, &metrics(&[("train/loss", loss), ("lr", lr)]))
            .unwrap();
    }
    run.log_metrics(60, &metrics(&[("train/loss", f64::NAN), ("lr", 1e-6)]))
        .unwrap();
    assert_eq!(run.skipped_non_finite(), 1);
    // 1100 metrics at one step: two log-batch requests.
    let wide: BTreeMap<String, f64> = (0..1100)
        .map(|i| (format!("w/{i:04}"), i as f64 * 0.5))
        .collect();
    run.log_metrics(70, &wide).unwrap();
    run.finish(RunStatus::Finished).unwrap();

    // What the server holds.
    let got = server.run(&run_id);
    let info = &got["info"];
    assert_eq!(info["status"], "FINISHED", "{info}");
    assert_eq!(info["experiment_id"], exp_id.as_str());
    assert_eq!(info["run_name"], "run-1");
    assert!(info["end_time"].as_i64().unwrap() >= info["start_time"].as_i64().unwrap());

    let got_params = key_values(&got["data"]["params"]);
    assert_eq!(got_params.len(), all_params.len());
    for (k, v) in &all_params {
        assert_eq!(got_params[k], v.as_str(), "param {k}");
    }

    let got_tags = key_values(&got["data"]["tags"]);
    assert_eq!(got_tags["mlflow.runName"], "run-1");
    assert_eq!(got_tags["mlflow.source.git.commit"], sha);
    assert_eq!(got_tags["git_sha"], sha);
    assert_eq!(got_tags["task"], "sst2");

    let history = |key: &str| -> BTreeMap<u64, f64> {
        history_of(&server, &run_id, key).into_iter().collect()
    };
    let loss = history("train/loss");
    let lr = history("lr");
    assert_eq!(loss.len(), series.len(), "{loss:?}");
    assert_eq!(lr.len(), series.len() + 1, "{lr:?}");
    for &(step, l, r) in &series {
        assert_same(loss[&step], l, &format!("loss at step {step}"));
        assert_same(lr[&step], r, &format!("lr at step {step}"));
    }
    assert!(!loss.contains_key(&60));
    assert_same(lr[&60], 1e-6, "lr at step 60");

    let latest = key_values(&got["data"]["metrics"]);
    assert_eq!(latest.len(), 2 + wide.len());
    for (k, v) in &wide {
        assert_same(latest[k].as_f64().unwrap(), *v, k);
    }

    // A second run finds the existing experiment; dropping it unfinished marks it KILLED.
    let second = Mlflow::new(&server.url, "qattn-test", "run-2", &BTreeMap::new()).unwrap();
    assert_eq!(second.experiment_id(), exp_id);
    let second_id = second.run_id().to_string();
    assert_ne!(second_id, run_id);
    assert_eq!(server.run(&second_id)["info"]["status"], "RUNNING");
    drop(second);
    let got = server.run(&second_id);
    assert_eq!(got["info"]["status"], "KILLED");
    let got_tags = key_values(&got["data"]["tags"]);
    assert!(!got_tags.contains_key("mlflow.source.git.commit"));

    // A failed run.
    let mut third = Mlflow::new(&server.url, "qattn-test-2", "run-3", &BTreeMap::new()).unwrap();
    assert_ne!(third.experiment_id(), exp_id);
    third.finish(RunStatus::Failed).unwrap();
    assert_eq!(server.run(third.run_id())["info"]["status"], "FAILED");

    // Through the fan-out with the JSONL log.
    let jsonl = dir.path().join("run/metrics.jsonl");
    let fourth = Mlflow::new(&server.url, "qattn-test", "run-4", &BTreeMap::new()).unwrap();
    let fourth_id = fourth.run_id().to_string();
    let mut both = Trackers(vec![
        Box::new(JsonlLog::open(&jsonl, None).unwrap()),
        Box::new(fourth),
    ]);
    both.log_params(&params(&[("lr", "1e-4")])).unwrap();
    both.log_metrics(1, &metrics(&[("loss", 0.5)])).unwrap();
    both.finish(RunStatus::Finished).unwrap();
    drop(both);
    assert_eq!(steps(&jsonl), [1]);
    let got = server.run(&fourth_id);
    assert_eq!(got["info"]["status"], "FINISHED");
    assert_eq!(key_values(&got["data"]["params"])["lr"], "1e-4");
    assert_eq!(history_of(&server, &fourth_id, "loss"), [(1, 0.5)]);

    let version = Command::new(&cli)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    eprintln!("mlflow round trip passed against a real server ({version})");
}

fn history_of(server: &MlflowServer, run_id: &str, key: &str) -> Vec<(u64, f64)> {
    server.get(
        "metrics/get-history",
        &[("run_id", run_id), ("metric_key", key)],
    )["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["step"].as_u64().unwrap(), m["value"].as_f64().unwrap()))
        .collect()
}
