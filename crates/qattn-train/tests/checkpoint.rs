//! Checkpoints: round trip, rotation, corruption detection, temporaries, and crash safety
//! under SIGKILL (the test binary re-runs itself as the writer and kills it mid-save).

use candle_core::{Device, Tensor};
use qattn_model::{Config, HeadKind, LoadOptions, Model};
use qattn_train::checkpoint::{Checkpoint, CheckpointManager};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that turns the crash test into the writer it kills.
const CHILD_ENV: &str = "QATTN_CKPT_CHILD";
/// The crash test's name, for the child's `--exact` filter.
const CRASH_TEST: &str = "sigkill_during_save_never_exposes_a_torn_checkpoint";

fn tiny_model(seed: u64) -> Model {
    Model::random(
        Config::tiny(),
        Default::default(),
        Some(HeadKind::Classification { num_labels: 2 }),
        seed,
        &Device::Cpu,
    )
    .unwrap()
}

fn load_model(dir: &Path) -> Model {
    let opts = LoadOptions {
        tokenizer: false,
        ..Default::default()
    };
    Model::load(dir.to_str().unwrap(), &opts).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Panics unless both models hold the same parameter names, shapes and bits.
fn assert_same_params(a: &Model, b: &Model) {
    let (pa, pb) = (a.params().tensors(), b.params().tensors());
    assert_eq!(pa.keys().collect::<Vec<_>>(), pb.keys().collect::<Vec<_>>());
    for (name, ta) in pa {
        let tb = &pb[name];
        assert_eq!(ta.dims(), tb.dims(), "{name}");
        assert!(bits(ta) == bits(tb), "{name} differs");
    }
}

/// Optimizer state with every awkward f32: NaN payloads, signed zeros, subnormals, infinities.
fn awkward_optimizer(model: &Model) -> BTreeMap<String, Tensor> {
    let special = [
        f32::from_bits(0x7fc0_1234),
        f32::from_bits(0xffa0_0001),
        -0.0,
        0.0,
        f32::MIN_POSITIVE / 3.0,
        -f32::MIN_POSITIVE / 7.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        1e-38,
        0.1,
        -123.456,
    ];
    let mut opt = BTreeMap::new();
    for (i, (name, p)) in model.params().tensors().iter().enumerate() {
        let n = p.elem_count();
        let m: Vec<f32> = (0..n)
            .map(|j| special[(i * 7 + j) % special.len()] * if j % 2 == 0 { 1.0 } else { 0.5 })
            .collect();
        let v: Vec<f32> = (0..n)
            .map(|j| (j as f32 + 0.3).sqrt() / (i + 1) as f32)
            .collect();
        opt.insert(
            format!("exp_avg.{name}"),
            Tensor::from_vec(m, p.dims(), &Device::Cpu).unwrap(),
        );
        opt.insert(
            format!("exp_avg_sq.{name}"),
            Tensor::from_vec(v, p.dims(), &Device::Cpu).unwrap(),
        );
    }
    opt.insert(
        "scalar".into(),
        Tensor::new(f32::from_bits(0x0000_0001), &Device::Cpu).unwrap(),
    );
    opt
}

fn state(step: u64) -> serde_json::Value {
    json!({
        "global_step": step,
        "epoch": step as f64 / 3.0,
        "best_metric": 0.8125,
        "best_step": 2,
        "rng": {"seed": 42u64, "offset": 18_446_744_073_709_551_615u64},
        "log_history": [{"step": step, "loss": 0.456_789_012_345_678_9, "lr": 2e-5}],
        "args": {"output_dir": "runs/x", "note": "ünïcødé ✓"},
    })
}

fn steps(mgr: &CheckpointManager) -> Vec<u64> {
    mgr.list().unwrap().iter().map(|c| c.step).collect()
}

fn temporaries(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tmp"))
        .collect();
    v.sort();
    v
}

#[test]
fn save_list_and_load_round_trip_bit_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runs/a/checkpoints");
    let mgr = CheckpointManager::new(&root, None);
    assert_eq!(mgr.root(), root);
    assert!(mgr.list().unwrap().is_empty(), "a missing root has none");
    assert_eq!(mgr.latest_good().unwrap(), (None, vec![]));

    let model = tiny_model(11);
    let opt = awkward_optimizer(&model);
    let saved = mgr.save(7, &model, &opt, &state(7), None).unwrap();
    assert_eq!(
        saved,
        Checkpoint {
            step: 7,
            dir: root.join("checkpoint-7")
        }
    );
    assert!(temporaries(&root).is_empty());
    assert_eq!(mgr.list().unwrap(), vec![saved.clone()]);
    let (good, skipped) = mgr.latest_good().unwrap();
    assert_eq!(good, Some(saved.clone()));
    assert!(skipped.is_empty());
    CheckpointManager::verify(&saved.dir).unwrap();

    // The manifest covers every other file, with sizes.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(saved.dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format_version"], 1);
    assert_eq!(manifest["step"], 7);
    let files = manifest["files"].as_object().unwrap();
    let mut on_disk: Vec<String> = std::fs::read_dir(&saved.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "manifest.json")
        .collect();
    on_disk.sort();
    assert_eq!(files.keys().cloned().collect::<Vec<_>>(), on_disk);
    assert_eq!(
        on_disk,
        [
            "config.json",
            "model.safetensors",
            "optimizer.safetensors",
            "qattn.json",
            "trainer_state.json"
        ]
    );
    for (name, entry) in files {
        let len = std::fs::metadata(saved.dir.join(name)).unwrap().len();
        assert_eq!(entry["bytes"], len, "{name}");
        assert_eq!(entry["sha256"].as_str().unwrap().len(), 64, "{name}");
    }

    // Optimizer tensors and trainer state come back exactly.
    let back = saved.optimizer().unwrap();
    assert_eq!(
        back.keys().collect::<Vec<_>>(),
        opt.keys().collect::<Vec<_>>()
    );
    for (name, t) in &opt {
        assert_eq!(back[name].dims(), t.dims(), "{name}");
        assert_eq!(back[name].dtype(), candle_core::DType::F32);
        assert!(bits(&back[name]) == bits(t), "{name} is not bit-identical");
    }
    assert_eq!(saved.state().unwrap(), state(7));

    // The model loads with identical parameters, head and attention configuration.
    let loaded = load_model(&saved.dir);
    assert_same_params(&model, &loaded);
    assert_eq!(loaded.head(), model.head());
    assert_eq!(loaded.attention(), model.attention());

    // Saving the same step again replaces it, leaving no temporaries.
    let other = tiny_model(12);
    let again = mgr
        .save(7, &other, &BTreeMap::new(), &json!({"second": true}), None)
        .unwrap();
    assert_eq!(again, saved);
    assert_eq!(steps(&mgr), [7]);
    assert!(temporaries(&root).is_empty());
    CheckpointManager::verify(&again.dir).unwrap();
    assert_eq!(again.state().unwrap(), json!({"second": true}));
    assert!(again.optimizer().unwrap().is_empty());
    assert_same_params(&other, &load_model(&again.dir));
}

#[test]
fn rotation_keeps_the_newest_and_the_protected() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = CheckpointManager::new(tmp.path(), Some(2));
    assert_eq!(mgr.keep_last(), Some(2));
    let model = tiny_model(1);
    let opt = BTreeMap::new();
    let mut kept = Vec::new();
    for step in 1..=5 {
        mgr.save(step * 10, &model, &opt, &state(step), Some(20))
            .unwrap();
        kept.push(steps(&mgr));
    }
    assert_eq!(
        kept,
        [
            vec![10],
            vec![20, 10],
            vec![30, 20],
            vec![40, 30, 20],
            vec![50, 40, 20]
        ]
    );
    // A new best: the old one is no longer protected.
    mgr.save(60, &model, &opt, &state(6), Some(60)).unwrap();
    assert_eq!(steps(&mgr), [60, 50]);
    mgr.save(70, &model, &opt, &state(7), Some(60)).unwrap();
    assert_eq!(steps(&mgr), [70, 60]);
    mgr.save(80, &model, &opt, &state(8), None).unwrap();
    assert_eq!(steps(&mgr), [80, 70]);
    // The checkpoint just written is kept even when it is not among the newest (a run
    // resumed from an earlier step), and so is keep_last = 0's.
    mgr.save(75, &model, &opt, &state(9), None).unwrap();
    assert_eq!(steps(&mgr), [80, 75]);
    CheckpointManager::new(tmp.path(), Some(0))
        .save(90, &model, &opt, &state(10), None)
        .unwrap();
    assert_eq!(steps(&mgr), [90]);
    assert!(temporaries(tmp.path()).is_empty());

    // keep_last = None keeps everything.
    let all = CheckpointManager::new(tmp.path(), None);
    for step in [1, 2, 3] {
        all.save(step, &model, &opt, &state(step), None).unwrap();
    }
    assert_eq!(steps(&all), [90, 3, 2, 1]);
}

#[test]
fn corrupted_checkpoints_are_skipped_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = CheckpointManager::new(tmp.path(), None);
    let model = tiny_model(5);
    let mut opt = BTreeMap::new();
    opt.insert(
        "exp_avg.classifier.bias".to_string(),
        Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(),
    );
    for step in 1..=4 {
        mgr.save(step, &model, &opt, &state(step), None).unwrap();
    }
    let dir = |s: u64| tmp.path().join(format!("checkpoint-{s}"));

    // 4: one flipped byte in the middle of the weights (same size).
    let weights = dir(4).join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&weights, &bytes).unwrap();
    // 3: a deleted file.
    std::fs::remove_file(dir(3).join("optimizer.safetensors")).unwrap();
    // 2: a truncated manifest.
    let manifest = dir(2).join("manifest.json");
    let text = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &text[..text.len() / 2]).unwrap();

    let (good, skipped) = mgr.latest_good().unwrap();
    assert_eq!(
        good,
        Some(Checkpoint {
            step: 1,
            dir: dir(1)
        })
    );
    assert_eq!(
        skipped.iter().map(|s| s.dir.clone()).collect::<Vec<_>>(),
        [dir(4), dir(3), dir(2)]
    );
    let expect = [
        "model.safetensors is corrupted",
        "optimizer.safetensors is missing",
        "manifest.json is not a valid manifest",
    ];
    for (s, want) in skipped.iter().zip(expect) {
        assert!(s.reason.contains(want), "{}: {}", s.dir.display(), s.reason);
        // verify says the same, as an Error::Checkpoint naming the directory.
        match CheckpointManager::verify(&s.dir).unwrap_err() {
            qattn_train::Error::Checkpoint { path, message } => {
                assert_eq!(path, s.dir);
                assert_eq!(message, s.reason);
            }
            other => panic!("{other}"),
        }
    }
    // The good one still loads.
    assert_same_params(&model, &load_model(&dir(1)));

    // A manifest deleted outright (an unfinished checkpoint) is reported too; with nothing
    // left that verifies, latest_good is None with every skipped one.
    std::fs::remove_file(dir(1).join("manifest.json")).unwrap();
    let (good, skipped) = mgr.latest_good().unwrap();
    assert_eq!(good, None);
    assert_eq!(skipped.len(), 4);
    assert!(
        skipped[3].reason.contains("manifest.json is missing"),
        "{}",
        skipped[3].reason
    );
}

#[test]
fn temporaries_are_ignored_by_list_and_removed_by_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mgr = CheckpointManager::new(root, Some(3));
    assert!(mgr.clean_temporaries().unwrap().is_empty(), "no root yet");
    let model = tiny_model(2);
    mgr.save(3, &model, &BTreeMap::new(), &state(3), None)
        .unwrap();

    // A crashed writer's half-written checkpoint 9, and one it was deleting.
    let crashed = root.join(".tmp-checkpoint-9-4000000000");
    std::fs::create_dir(&crashed).unwrap();
    std::fs::write(crashed.join("model.safetensors"), b"half").unwrap();
    let deleting = root.join(".tmp-checkpoint-1-4000000000-deleted");
    std::fs::create_dir(&deleting).unwrap();
    // Names that are not checkpoints.
    for name in ["checkpoint-007", "checkpoint-x", "runs", ".tmp-other"] {
        std::fs::create_dir(root.join(name)).unwrap();
    }
    std::fs::write(root.join("checkpoint-12"), b"a file").unwrap();

    assert_eq!(steps(&mgr), [3]);
    assert_eq!(
        mgr.latest_good().unwrap().0.map(|c| c.step),
        Some(3),
        "temporaries are not candidates"
    );
    assert_eq!(mgr.clean_temporaries().unwrap(), [deleting, crashed]);
    let mut left: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ".tmp-other",
            "checkpoint-007",
            "checkpoint-12",
            "checkpoint-3",
            "checkpoint-x",
            "runs"
        ]
    );
    assert!(mgr.clean_temporaries().unwrap().is_empty());
}

/// The optimizer state of the crash test's writer at `step`: 4 × 1 MiB, every value
/// derived from the step so that a checkpoint mixing two saves would be caught.
fn crash_optimizer(step: u64) -> BTreeMap<String, Tensor> {
    (0..4)
        .map(|i| {
            let t = Tensor::full(step as f32 + i as f32 / 8.0, (512, 512), &Device::Cpu).unwrap();
            (format!("exp_avg.{i}"), t)
        })
        .collect()
}

/// The crash test's writer: saves checkpoints 1, 2, 3, … (continuing after the newest
/// present; every 4th step saved twice, exercising replacement) until it is killed, or for
/// 30 s at most should its parent have died.
fn crash_child(root: &Path) {
    let mgr = CheckpointManager::new(root, Some(3));
    let model = tiny_model(3);
    let mut step = mgr.list().unwrap().first().map_or(1, |c| c.step + 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let repeats = if step.is_multiple_of(4) { 2 } else { 1 };
        for _ in 0..repeats {
            mgr.save(
                step,
                &model,
                &crash_optimizer(step),
                &json!({"global_step": step}),
                None,
            )
            .unwrap();
        }
        step += 1;
    }
}

/// Checks what a killed writer left: the newest verified checkpoint is returned, loads, and
/// is self-consistent; newer ones that do not verify are reported, not returned.
fn check_after_kill(mgr: &CheckpointManager, reference: &Model) -> u64 {
    let (good, skipped) = mgr.latest_good().unwrap();
    let good = good.expect("a verified checkpoint survives every kill");
    CheckpointManager::verify(&good.dir).unwrap();
    for s in &skipped {
        let step: u64 = s.dir.file_name().unwrap().to_str().unwrap()["checkpoint-".len()..]
            .parse()
            .unwrap();
        assert!(step > good.step, "{s:?}");
        assert!(!s.reason.is_empty());
        assert!(CheckpointManager::verify(&s.dir).is_err());
    }
    // Stronger than the contract above: no visible checkpoint is ever torn.
    for c in mgr.list().unwrap() {
        if let Err(e) = CheckpointManager::verify(&c.dir) {
            panic!("a torn checkpoint is visible: {e}");
        }
    }
    assert_same_params(reference, &load_model(&good.dir));
    assert_eq!(good.state().unwrap(), json!({"global_step": good.step}));
    let opt = good.optimizer().unwrap();
    let expected = crash_optimizer(good.step);
    assert_eq!(opt.len(), expected.len());
    for (name, t) in &expected {
        assert!(bits(&opt[name]) == bits(t), "{name} of step {}", good.step);
    }
    good.step
}

#[test]
fn sigkill_during_save_never_exposes_a_torn_checkpoint() {
    if let Some(root) = std::env::var_os(CHILD_ENV) {
        crash_child(Path::new(&root));
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ckpt");
    let mgr = CheckpointManager::new(&root, Some(3));
    let reference = tiny_model(3);
    let exe = std::env::current_exe().unwrap();
    let mut report = Vec::new();
    for delay_ms in [50u64, 140, 230, 320, 400] {
        let before = mgr.list().unwrap().first().map(|c| c.step);
        let mut child = Command::new(&exe)
            .args(["--exact", CRASH_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for this writer's first checkpoint, then let it run on for the delay.
        let wait_start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the writer exited early: {status}");
            }
            let newest = mgr.list().unwrap().first().map(|c| c.step);
            if newest > before {
                break;
            }
            assert!(
                wait_start.elapsed() < Duration::from_secs(20),
                "the writer wrote nothing"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        assert!(!status.success(), "the writer was not killed: {status}");

        let temps = temporaries(&root);
        let step = check_after_kill(&mgr, &reference);
        let removed = mgr.clean_temporaries().unwrap();
        assert_eq!(removed, temps);
        assert!(temporaries(&root).is_empty());
        report.push(format!(
            "{delay_ms} ms: resume from {step}, {} temporaries",
            removed.len()
        ));
    }
    eprintln!(
        "crash test ({:.1} s): {}",
        started.elapsed().as_secs_f64(),
        report.join("; ")
    );
}

/// Every f64 of the trainer state comes back with the same bits. serde_json parses floats
/// exactly only with its `float_roundtrip` feature; without it these values come back one
/// ulp off.
#[test]
fn trainer_state_floats_round_trip_bit_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let mgr = CheckpointManager::new(tmp.path(), None);
    let values: [f64; 5] = [
        2.0 / 11.0,
        8.502_574_670_373_677e-14,
        -1.819_967_304_027_17e-179,
        1.586_084_611_999_269_7e-265,
        -1.603_964_615_428_183e143,
    ];
    let state = json!({ "values": values });
    let c = mgr
        .save(1, &tiny_model(1), &BTreeMap::new(), &state, None)
        .unwrap();
    let back: Vec<f64> = serde_json::from_value(c.state().unwrap()["values"].clone()).unwrap();
    for (a, b) in values.iter().zip(&back) {
        assert_eq!(a.to_bits(), b.to_bits(), "{a:e} came back as {b:e}");
    }
}
