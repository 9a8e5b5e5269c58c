//! `qattn data fetch` without the internet: archives built here with the zip writer and served
//! by a tiny HTTP server on 127.0.0.1 (the host is a parameter), plus the failure modes —
//! unreachable host, stalled server, HTTP error, checksum mismatch, unknown task, incomplete or
//! unsafe archives — and the committed checksum table against `../shared/data/MANIFEST.md`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Cursor, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use qattn_glue::Error;
use qattn_glue::fetch::{self, Archive, FetchOptions, Progress, format_mrpc};
use qattn_glue::fetch_checksums;
use qattn_glue::tasks::{self, Benchmark, Split, Task};

/// The shared data directory (`$QATTN_DATA_DIR`, else `../shared/data`); missing → the test
/// fails naming it.
fn shared() -> PathBuf {
    let dir = match std::env::var_os(tasks::DATA_DIR_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data")),
    };
    assert!(
        dir.join("glue").is_dir(),
        "GLUE data not found at {}; set {}",
        dir.display(),
        tasks::DATA_DIR_ENV
    );
    dir
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A zip (deflated) of `(name, content)` entries.
fn make_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, body) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(body).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A local HTTP/1.1 server answering GET `path` from `files` (404 otherwise).
struct Server {
    base: String,
    hits: Arc<AtomicUsize>,
}

fn serve(files: Vec<(&str, Vec<u8>)>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let files: HashMap<String, Vec<u8>> =
        files.into_iter().map(|(p, b)| (p.to_string(), b)).collect();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = answer(stream, &files);
        }
    });
    Server { base, hits }
}

fn answer(mut stream: TcpStream, files: &HashMap<String, Vec<u8>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    match files.get(&path) {
        Some(body) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(body)?;
        }
        None => {
            let body = b"not found";
            write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(body)?;
        }
    }
    stream.flush()
}

/// A base URL on which nothing listens.
fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    base
}

fn opts(dest: &Path, base: &str) -> FetchOptions {
    FetchOptions {
        dest: dest.to_path_buf(),
        force: false,
        base_url: Some(base.to_string()),
        timeout: Duration::from_secs(2),
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// CoLA's three official files from the shared data.
fn cola_files() -> Vec<(String, Vec<u8>)> {
    ["train.tsv", "dev.tsv", "test.tsv"]
        .iter()
        .map(|f| {
            (
                format!("CoLA/{f}"),
                read(&shared().join("glue/CoLA").join(f)),
            )
        })
        .collect()
}

fn cola_zip(files: &[(String, Vec<u8>)], extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut e: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    e.extend_from_slice(extra);
    make_zip(&e)
}

#[test]
fn fetches_a_zip_verifies_it_and_installs_the_official_layout() {
    let zip = cola_zip(
        &cola_files(),
        &[
            ("CoLA/original/raw/in_domain_train.tsv", b"raw\n"),
            ("__MACOSX/CoLA/._train.tsv", b"resource fork"),
        ],
    );
    let server = serve(vec![("/glue/data/CoLA.zip", zip)]);
    let dest = tempfile::tempdir().unwrap();
    let mut events = Vec::new();
    let report = fetch::fetch(&[Task::Cola], &opts(dest.path(), &server.base), |p| {
        events.push(p.clone())
    })
    .unwrap();
    let cola = dest.path().join("glue/CoLA");
    assert_eq!(report.installed, std::slice::from_ref(&cola));
    assert_eq!(
        report.verified,
        [
            "glue/CoLA/dev.tsv",
            "glue/CoLA/test.tsv",
            "glue/CoLA/train.tsv"
        ]
    );
    // No checksum is known for the archive nor for the extra file: both are warned about.
    let url = format!("{}/glue/data/CoLA.zip", server.base);
    assert_eq!(
        report.unverified,
        [
            url.clone(),
            "glue/CoLA/original/raw/in_domain_train.tsv".into()
        ]
    );
    let warnings: Vec<String> = events
        .iter()
        .filter(|e| matches!(e, Progress::Unverified { .. }))
        .map(|e| e.to_string())
        .collect();
    assert_eq!(warnings.len(), 2);
    assert!(
        warnings[1].starts_with(
            "warning: glue/CoLA/original/raw/in_domain_train.tsv: no checksum is known"
        )
    );
    assert!(warnings[1].contains(&sha256(b"raw\n")));
    assert!(events.contains(&Progress::Downloading { url }));
    // The official layout, nothing else: no __MACOSX, no staging directory left behind.
    assert_eq!(entries(dest.path()), ["glue"]);
    assert_eq!(entries(&dest.path().join("glue")), ["CoLA"]);
    assert_eq!(
        entries(&cola),
        ["dev.tsv", "original", "test.tsv", "train.tsv"]
    );
    let examples = tasks::read(Task::Cola, Split::Train, dest.path()).unwrap();
    assert_eq!(examples.len(), 8551);
}

#[test]
fn superglue_archives_land_under_superglue() {
    let files: Vec<(String, Vec<u8>)> = ["train.jsonl", "val.jsonl", "test.jsonl"]
        .iter()
        .map(|f| {
            (
                format!("RTE/{f}"),
                read(&shared().join("superglue/RTE").join(f)),
            )
        })
        .collect();
    let e: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), &b[..])).collect();
    let server = serve(vec![("/glue/superglue/data/v2/RTE.zip", make_zip(&e))]);
    let dest = tempfile::tempdir().unwrap();
    let tasks = fetch::parse_tasks(Benchmark::SuperGlue, &["rte".into()]).unwrap();
    assert_eq!(tasks, [Task::SgRte]);
    let report = fetch::fetch(&tasks, &opts(dest.path(), &server.base), |_| {}).unwrap();
    assert_eq!(report.verified.len(), 3);
    assert_eq!(
        tasks::read(Task::SgRte, Split::Dev, dest.path())
            .unwrap()
            .len(),
        277
    );
}

#[test]
fn ax_is_saved_as_glue_ax_ax_tsv() {
    let ax = read(&shared().join("glue/AX/AX.tsv"));
    let server = serve(vec![("/glue/data/AX.tsv", ax.clone())]);
    let dest = tempfile::tempdir().unwrap();
    let report = fetch::fetch(&[Task::Ax], &opts(dest.path(), &server.base), |_| {}).unwrap();
    assert_eq!(report.verified, ["glue/AX/AX.tsv"]);
    assert_eq!(read(&dest.path().join("glue/AX/AX.tsv")), ax);
}

/// Rebuilds SentEval's `msr_paraphrase_{train,test}.txt` and the dev ids from the shared GLUE
/// MRPC files (train and dev rows interleaved, CRLF line ends), so that the official procedure
/// must give those files back byte for byte.
fn senteval_mrpc() -> (String, String, String) {
    let text = |f: &str| String::from_utf8(read(&shared().join("glue/MRPC").join(f))).unwrap();
    let (train, dev, test) = (text("train.tsv"), text("dev.tsv"), text("test.tsv"));
    let train_rows: Vec<&str> = train.lines().skip(1).collect();
    let dev_rows: Vec<&str> = dev.lines().skip(1).collect();
    let mut msr_train = format!("{}\r\n", train.lines().next().unwrap());
    let (mut t, mut d) = (train_rows.iter(), dev_rows.iter());
    loop {
        let (a, b) = (t.next(), d.next());
        if a.is_none() && b.is_none() {
            break;
        }
        for r in a.into_iter().chain(t.by_ref().take(7)).chain(b) {
            msr_train.push_str(r);
            msr_train.push_str("\r\n");
        }
    }
    let ids: String = dev_rows
        .iter()
        .map(|r| {
            let f: Vec<&str> = r.split('\t').collect();
            format!("{}\t{}\r\n", f[1], f[2])
        })
        .collect();
    let mut msr_test = String::from("\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n");
    for r in test.lines().skip(1) {
        let f: Vec<&str> = r.split('\t').collect();
        msr_test.push_str(&format!("1\t{}\t{}\t{}\t{}\r\n", f[1], f[2], f[3], f[4]));
    }
    (msr_train, msr_test, ids)
}

#[test]
fn mrpc_is_split_like_download_glue_data_py() {
    let (msr_train, msr_test, ids) = senteval_mrpc();
    let out = format_mrpc(&msr_train, &msr_test, &ids).unwrap();
    let glue = shared().join("glue/MRPC");
    assert_eq!(out.train.as_bytes(), read(&glue.join("train.tsv")));
    assert_eq!(out.dev.as_bytes(), read(&glue.join("dev.tsv")));
    assert_eq!(out.test.as_bytes(), read(&glue.join("test.tsv")));

    // And over the network, verified against the recorded checksums.
    let server = serve(vec![
        (
            "/senteval/senteval_data/msr_paraphrase_train.txt",
            msr_train.into_bytes(),
        ),
        (
            "/senteval/senteval_data/msr_paraphrase_test.txt",
            msr_test.into_bytes(),
        ),
        ("/glue/data/mrpc_dev_ids.tsv", ids.into_bytes()),
    ]);
    let dest = tempfile::tempdir().unwrap();
    let report = fetch::fetch(&[Task::Mrpc], &opts(dest.path(), &server.base), |_| {}).unwrap();
    assert_eq!(
        report.verified,
        [
            "glue/MRPC/dev.tsv",
            "glue/MRPC/test.tsv",
            "glue/MRPC/train.tsv"
        ]
    );
    assert_eq!(
        entries(&dest.path().join("glue/MRPC")),
        [
            "dev.tsv",
            "dev_ids.tsv",
            "msr_paraphrase_test.txt",
            "msr_paraphrase_train.txt",
            "test.tsv",
            "train.tsv"
        ]
    );
}

#[test]
fn mrpc_rows_are_stripped_split_and_checked_like_the_script() {
    let train = "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n\
                 1\t1\t2\tA .\tB .  \r\n0\t3\t4\tC\tD\r\n1\t5\t6\tE\tF\n";
    let test = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t7\t8\tG\tH\n";
    let ids = "3\t4\r\n5\t6 \n\n";
    let out = format_mrpc(train, test, ids).unwrap();
    let header = "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n";
    assert_eq!(out.train, format!("{header}1\t1\t2\tA .\tB .\n"));
    assert_eq!(out.dev, format!("{header}0\t3\t4\tC\tD\n1\t5\t6\tE\tF\n"));
    assert_eq!(
        out.test,
        "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t7\t8\tG\tH\n"
    );
    let err = format_mrpc("h\n1\t2\t3\tonly four\n", test, ids).unwrap_err();
    assert!(
        err.contains("msr_paraphrase_train.txt line 2") && err.contains("found 4"),
        "{err}"
    );
}

#[test]
fn unknown_task_lists_the_benchmarks_tasks() {
    let err = fetch::parse_tasks(Benchmark::Glue, &["cola".into(), "colla".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown glue task \"colla\""), "{err}");
    assert!(
        err.contains("cola, sst2, mrpc, stsb, qqp, mnli-m, mnli-mm, qnli, rte, wnli, ax"),
        "{err}"
    );
    let err = fetch::parse_tasks(Benchmark::SuperGlue, &["CoLA".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a glue task"), "{err}");
    assert!(err.contains("qattn data fetch glue --tasks cola"), "{err}");
    assert!(err.contains("boolq, cb, copa, multirc, record, sg-rte, wic, wsc, axb, axg"));
    // Official spellings; MNLI's two evaluations share one archive; no list = everything.
    let t = fetch::parse_tasks(
        Benchmark::Glue,
        &["MNLI".into(), "mnli-mm".into(), "SST-2".into()],
    )
    .unwrap();
    assert_eq!(t, [Task::MnliMatched, Task::MnliMismatched, Task::Sst2]);
    let dirs: Vec<&str> = fetch::archives_for(&t).iter().map(|a| a.dir).collect();
    assert_eq!(dirs, ["SST-2", "MNLI"]);
    assert_eq!(fetch::parse_tasks(Benchmark::Glue, &[]).unwrap().len(), 11);
    let all = fetch::parse_tasks(Benchmark::SuperGlue, &[]).unwrap();
    assert_eq!(fetch::archives_for(&all).len(), 10);
}

#[test]
fn every_task_has_an_archive_with_the_official_urls() {
    for t in Task::ALL {
        let a = Archive::of(t);
        assert!(a.tasks().contains(&t));
        for f in a.expected_files() {
            let rel = format!("{}/{}/{f}", a.benchmark.name(), a.dir);
            assert!(
                fetch_checksums::file(&rel).is_some(),
                "{rel} has no row in the checksum table"
            );
        }
        for p in a.download_paths() {
            assert!(
                fetch_checksums::download(p).is_some(),
                "{p} has no row in the download table"
            );
        }
    }
    let base = fetch::OFFICIAL_BASE;
    assert_eq!(
        Archive::of(Task::Qqp).urls(base),
        ["https://dl.fbaipublicfiles.com/glue/data/QQP-clean.zip"]
    );
    assert_eq!(
        Archive::of(Task::Qnli).urls(base),
        ["https://dl.fbaipublicfiles.com/glue/data/QNLIv2.zip"]
    );
    assert_eq!(
        Archive::of(Task::AxG).urls("http://mirror/"),
        ["http://mirror/glue/superglue/data/v2/AX-g.zip"]
    );
    assert_eq!(
        Archive::of(Task::Mrpc).urls(base),
        [
            "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt",
            "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_test.txt",
            "https://dl.fbaipublicfiles.com/glue/data/mrpc_dev_ids.tsv"
        ]
    );
}

#[test]
fn checksum_mismatch_names_the_file_and_both_hashes() {
    let mut files = cola_files();
    files[1].1[0] ^= 0x20; // dev.tsv, one byte changed
    let bad_sha = sha256(&files[1].1);
    let server = serve(vec![("/glue/data/CoLA.zip", cola_zip(&files, &[]))]);
    let dest = tempfile::tempdir().unwrap();
    let err = fetch::fetch(&[Task::Cola], &opts(dest.path(), &server.base), |_| {}).unwrap_err();
    let expected = fetch_checksums::file("glue/CoLA/dev.tsv")
        .unwrap()
        .sha256
        .unwrap();
    match &err {
        Error::Checksum {
            file,
            expected: e,
            actual,
            ..
        } => {
            assert_eq!(file, "glue/CoLA/dev.tsv");
            assert_eq!(e, expected);
            assert_eq!(actual, &bad_sha);
        }
        other => panic!("expected a checksum error, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("glue/CoLA/dev.tsv") && msg.contains(expected) && msg.contains(&bad_sha));
    assert!(msg.contains("nothing was installed"), "{msg}");
    // Nothing installed, nothing left behind.
    assert_eq!(entries(&dest.path().join("glue")), Vec::<String>::new());
}

#[test]
fn unreachable_host_fails_fast_naming_the_url_and_the_manual_route() {
    let base = closed_port();
    let dest = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let err = fetch::fetch(&[Task::Qqp], &opts(dest.path(), &base), |_| {}).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let msg = err.to_string();
    assert!(matches!(err, Error::Download { .. }), "{msg}");
    assert!(
        msg.contains(&format!("{base}/glue/data/QQP-clean.zip")),
        "{msg}"
    );
    assert!(msg.contains("to get the data manually"), "{msg}");
    assert!(msg.contains("unzip it into"), "{msg}");
    assert!(msg.contains(fetch::MIRROR_ENV), "{msg}");
    assert_eq!(entries(&dest.path().join("glue")), Vec::<String>::new());
}

#[test]
fn stalled_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s); // accept, never answer
        }
    });
    let dest = tempfile::tempdir().unwrap();
    let mut o = opts(dest.path(), &base);
    o.timeout = Duration::from_secs(1);
    let t0 = Instant::now();
    let err = fetch::fetch(&[Task::Wnli], &o, |_| {}).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let msg = err.to_string();
    assert!(
        msg.contains("/glue/data/WNLI.zip") && msg.contains("timed out"),
        "{msg}"
    );
}

#[test]
fn http_error_status_names_the_url() {
    let server = serve(vec![]);
    let dest = tempfile::tempdir().unwrap();
    let err = fetch::fetch(&[Task::Ax], &opts(dest.path(), &server.base), |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "{}/glue/data/AX.tsv: HTTP status 404",
            server.base
        )),
        "{msg}"
    );
    assert!(msg.contains("save it as"), "{msg}");
}

fn qqp_zip(tag: &str) -> Vec<u8> {
    let body =
        format!("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\t{tag}?\tb?\t0\n");
    let test = format!("id\tquestion1\tquestion2\n0\t{tag}?\tb?\n");
    make_zip(&[
        ("QQP/train.tsv", body.as_bytes()),
        ("QQP/dev.tsv", body.as_bytes()),
        ("QQP/test.tsv", test.as_bytes()),
    ])
}

#[test]
fn complete_directory_is_left_alone_unless_forced() {
    let dest = tempfile::tempdir().unwrap();
    let qqp = dest.path().join("glue/QQP");
    std::fs::create_dir_all(&qqp).unwrap();
    for f in ["train.tsv", "dev.tsv", "test.tsv", "notes.txt"] {
        std::fs::write(qqp.join(f), "old").unwrap();
    }
    // Complete: skipped without contacting the host (which does not exist).
    let report = fetch::fetch(&[Task::Qqp], &opts(dest.path(), &closed_port()), |_| {}).unwrap();
    assert_eq!(report.skipped, std::slice::from_ref(&qqp));
    assert!(report.installed.is_empty());
    assert_eq!(
        std::fs::read_to_string(qqp.join("train.tsv")).unwrap(),
        "old"
    );

    let server = serve(vec![("/glue/data/QQP-clean.zip", qqp_zip("new"))]);
    let report = fetch::fetch(&[Task::Qqp], &opts(dest.path(), &server.base), |_| {}).unwrap();
    assert_eq!(report.skipped, std::slice::from_ref(&qqp));
    assert_eq!(server.hits.load(Ordering::SeqCst), 0);

    // --force replaces the directory as a whole; no checksum is known for QQP: warnings.
    let mut o = opts(dest.path(), &server.base);
    o.force = true;
    let mut events = Vec::new();
    let report = fetch::fetch(&[Task::Qqp], &o, |p| events.push(p.clone())).unwrap();
    assert_eq!(report.installed, std::slice::from_ref(&qqp));
    assert!(events.contains(&Progress::Installed {
        dir: qqp.clone(),
        replaced: true
    }));
    assert_eq!(report.unverified.len(), 4, "{:?}", report.unverified);
    assert!(
        std::fs::read_to_string(qqp.join("train.tsv"))
            .unwrap()
            .contains("new?")
    );
    assert_eq!(entries(&qqp), ["dev.tsv", "test.tsv", "train.tsv"]);
    assert_eq!(entries(&dest.path().join("glue")), ["QQP"]);
    assert_eq!(
        tasks::read(Task::Qqp, Split::Train, dest.path())
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn incomplete_directory_is_completed() {
    let dest = tempfile::tempdir().unwrap();
    let qqp = dest.path().join("glue/QQP");
    std::fs::create_dir_all(&qqp).unwrap();
    std::fs::write(qqp.join("train.tsv"), "partial").unwrap();
    let server = serve(vec![("/glue/data/QQP-clean.zip", qqp_zip("new"))]);
    let report = fetch::fetch(&[Task::Qqp], &opts(dest.path(), &server.base), |_| {}).unwrap();
    assert_eq!(report.installed, std::slice::from_ref(&qqp));
    assert!(Archive::of(Task::Qqp).is_complete(dest.path()));
    assert!(
        std::fs::read_to_string(qqp.join("train.tsv"))
            .unwrap()
            .contains("new?")
    );
}

#[test]
fn archive_without_the_expected_files_is_refused() {
    let zip = make_zip(&[("QQP/train.tsv", b"x"), ("QQP/dev.tsv", b"x")]);
    let server = serve(vec![("/glue/data/QQP-clean.zip", zip)]);
    let dest = tempfile::tempdir().unwrap();
    let err = fetch::fetch(&[Task::Qqp], &opts(dest.path(), &server.base), |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lacks test.tsv") && err.contains("nothing was installed"),
        "{err}"
    );
    let zip = make_zip(&[("qqp/train.tsv", b"x")]);
    let server = serve(vec![("/glue/data/QQP-clean.zip", zip)]);
    let err = fetch::fetch(&[Task::Qqp], &opts(dest.path(), &server.base), |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("the archive has no QQP/ directory"), "{err}");
    let server = serve(vec![("/glue/data/QQP-clean.zip", b"not a zip".to_vec())]);
    let err = fetch::fetch(&[Task::Qqp], &opts(dest.path(), &server.base), |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a readable zip archive"), "{err}");
    assert_eq!(entries(&dest.path().join("glue")), Vec::<String>::new());
}

#[test]
fn zip_entries_leaving_the_directory_are_refused() {
    let zip = make_zip(&[("QQP/train.tsv", b"x"), ("../../evil.txt", b"x")]);
    let server = serve(vec![("/glue/data/QQP-clean.zip", zip)]);
    let dest = tempfile::tempdir().unwrap();
    let err = fetch::fetch(&[Task::Qqp], &opts(dest.path(), &server.base), |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsafe name"), "{err}");
    assert!(!dest.path().join("evil.txt").exists());
    assert!(!dest.path().parent().unwrap().join("evil.txt").exists());
}

/// The committed table is the MANIFEST's, and both match the files in `../shared/data`.
#[test]
fn checksum_table_matches_the_manifest_and_the_shared_files() {
    let dir = shared();
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.md")).unwrap();
    let mut rows = HashMap::new();
    for line in manifest.lines() {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let path = cells[0].trim_matches('`');
        if line.starts_with("| `") && (path.starts_with("glue/") || path.starts_with("superglue/"))
        {
            let sha = cells[cells.len() - 1].trim_matches('`');
            let bytes: u64 = cells[cells.len() - 2].parse().unwrap();
            rows.insert(path.to_string(), (sha.to_string(), bytes));
        }
    }
    assert_eq!(rows.len(), 44, "the MANIFEST lists 44 GLUE/SuperGLUE files");
    let mut known = 0;
    for row in fetch_checksums::FILES {
        match (row.sha256, rows.get(row.path)) {
            (Some(sha), Some((m, bytes))) => {
                assert_eq!(sha, m, "{}", row.path);
                assert_eq!(row.bytes, Some(*bytes), "{}", row.path);
                let on_disk = read(&dir.join(row.path));
                assert_eq!(sha256(&on_disk), sha, "{} in {}", row.path, dir.display());
                known += 1;
            }
            (None, None) => assert!(!dir.join(row.path).exists(), "{} exists", row.path),
            (s, m) => panic!("{}: table {s:?}, MANIFEST {m:?}", row.path),
        }
    }
    // Every MANIFEST row but the jiant copy of the labelled diagnostic (not an official
    // download) is in the table.
    assert_eq!(known, 43);
    for path in rows.keys() {
        assert!(
            fetch_checksums::file(path).is_some() || path == "glue/AX/diagnostic-full.tsv",
            "{path} is in the MANIFEST but not in the table"
        );
    }
    assert!(
        fetch_checksums::DOWNLOADS
            .iter()
            .all(|d| d.sha256.is_none())
    );
}
