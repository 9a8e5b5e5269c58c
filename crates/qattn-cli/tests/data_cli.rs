//! `qattn data fetch` through the binary, from a local mirror named by `QATTN_GLUE_MIRROR`.

use std::io::{BufRead, BufReader, Cursor, Write};
use std::net::TcpListener;
use std::process::{Command, Output};

/// Serves `body` at `path` (404 elsewhere) on 127.0.0.1; returns the base URL.
fn serve(path: &'static str, body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
            }
            let (status, content) = if request.split_whitespace().nth(1) == Some(path) {
                ("200 OK", body.as_slice())
            } else {
                ("404 Not Found", &b"no"[..])
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                content.len()
            );
            let _ = stream.write_all(content);
        }
    });
    base
}

fn qqp_zip() -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    let pairs = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t1\t2\ta?\tb?\t1\n";
    for (name, body) in [
        ("QQP/train.tsv", pairs),
        ("QQP/dev.tsv", pairs),
        ("QQP/test.tsv", "id\tquestion1\tquestion2\n0\ta?\tb?\n"),
    ] {
        w.start_file(name, opts).unwrap();
        w.write_all(body.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn qattn(args: &[&str], mirror: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qattn"))
        .args(args)
        .env("QATTN_GLUE_MIRROR", mirror)
        .output()
        .unwrap()
}

#[test]
fn fetch_installs_from_the_mirror_then_leaves_the_directory_alone() {
    let base = serve("/glue/data/QQP-clean.zip", qqp_zip());
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let o = qattn(
        &["data", "fetch", "glue", "--tasks", "qqp", "--dest", d],
        &base,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("downloading {base}/glue/data/QQP-clean.zip")),
        "{err}"
    );
    assert!(
        err.contains("warning: glue/QQP/train.tsv: no checksum is known, not verified"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 installed"));
    assert!(dest.path().join("glue/QQP/test.tsv").is_file());

    let o = qattn(
        &["data", "fetch", "glue", "--tasks", "qqp", "--dest", d],
        "http://127.0.0.1:9",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("complete, left as it is (--force replaces it)"),
        "{err}"
    );
}

#[test]
fn fetch_errors_name_the_task_list_and_the_url() {
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let o = qattn(
        &["data", "fetch", "superglue", "--tasks", "bool", "--dest", d],
        "http://127.0.0.1:9",
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown superglue task \"bool\""), "{err}");
    assert!(err.contains("boolq, cb, copa"), "{err}");
    let o = qattn(
        &[
            "data",
            "fetch",
            "superglue",
            "--tasks",
            "cb",
            "--dest",
            d,
            "--timeout",
            "2",
        ],
        "http://127.0.0.1:9",
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("http://127.0.0.1:9/glue/superglue/data/v2/CB.zip"),
        "{err}"
    );
    assert!(err.contains("to get the data manually"), "{err}");
}

#[test]
fn fetch_without_dest_uses_the_per_user_data_directory_and_says_so() {
    let base = serve("/glue/data/QQP-clean.zip", qqp_zip());
    let xdg = tempfile::tempdir().unwrap();
    let run = |env_data: Option<&std::path::Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_qattn"));
        c.args(["data", "fetch", "glue", "--tasks", "qqp"])
            .env("QATTN_GLUE_MIRROR", &base)
            .env("XDG_DATA_HOME", xdg.path())
            .env_remove("QATTN_DATA_DIR");
        if let Some(d) = env_data {
            c.env("QATTN_DATA_DIR", d);
        }
        c.output().unwrap()
    };
    // XDG_DATA_HOME/qattn/data, printed.
    let o = run(None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let want = xdg.path().join("qattn/data");
    assert!(
        err.contains(&format!("data directory: {}", want.display())),
        "{err}"
    );
    assert!(want.join("glue/QQP/test.tsv").is_file());
    // QATTN_DATA_DIR overrides it.
    let other = tempfile::tempdir().unwrap();
    let o = run(Some(other.path()));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("data directory: {}", other.path().display())),
        "{err}"
    );
    assert!(other.path().join("glue/QQP/test.tsv").is_file());
}
