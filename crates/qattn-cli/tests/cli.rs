//! End-to-end tests of the `qattn` binary.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::process::Command;

fn qattn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qattn"))
}

/// Runs `qattn attn --input INPUT --output OUTPUT EXTRA…`.
fn attn(input: &std::path::Path, output: &std::path::Path, extra: &[&str]) -> std::process::Output {
    qattn()
        .args([
            "attn",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
        .args(extra)
        .output()
        .unwrap()
}

fn write_input(
    dir: &std::path::Path,
    k_shape: (usize, usize, usize, usize),
    with_grad: bool,
) -> std::path::PathBuf {
    let dev = Device::Cpu;
    let mut m = HashMap::new();
    m.insert(
        "q".to_string(),
        Tensor::randn(0f32, 1.0, (1, 2, 5, 8), &dev).unwrap(),
    );
    m.insert(
        "k".to_string(),
        Tensor::randn(0f32, 1.0, k_shape, &dev).unwrap(),
    );
    m.insert(
        "v".to_string(),
        Tensor::randn(0f32, 1.0, (1, 2, 7, 4), &dev).unwrap(),
    );
    m.insert(
        "mask".to_string(),
        Tensor::new(&[[1u8, 1, 0, 1, 1, 1, 1]], &dev).unwrap(),
    );
    if with_grad {
        m.insert(
            "grad_out".to_string(),
            Tensor::ones((1, 2, 5, 4), DType::F32, &dev).unwrap(),
        );
    }
    let p = dir.join("qkv.safetensors");
    candle_core::safetensors::save(&m, &p).unwrap();
    p
}

const SAMPLED: [&str; 6] = [
    "--estimator",
    "stratified:16",
    "--seed",
    "3",
    "--grad-mode",
    "sampled",
];

#[test]
fn attn_writes_out_counts_and_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), (1, 2, 7, 8), true);
    let output = dir.path().join("out.safetensors");
    assert!(attn(&input, &output, &SAMPLED).status.success());
    let t = candle_core::safetensors::load(&output, &Device::Cpu).unwrap();
    assert_eq!(t["out"].dims(), &[1, 2, 5, 4]);
    assert_eq!(t["counts"].dims(), &[1, 2, 5, 7]);
    assert_eq!(t["counts"].dtype(), DType::U32);
    let counts = t["counts"].flatten_all().unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(
        counts.iter().sum::<u32>(),
        2 * 5 * 16,
        "16 usable shots per query"
    );
    assert!(
        counts.chunks(7).all(|row| row[2] == 0),
        "masked key 2 was sampled"
    );
    for g in ["dq", "dk", "dv"] {
        assert!(t.contains_key(g), "missing {g}");
    }
    // Same seed → identical output.
    let output2 = dir.path().join("out2.safetensors");
    assert!(attn(&input, &output2, &SAMPLED).status.success());
    let t2 = candle_core::safetensors::load(&output2, &Device::Cpu).unwrap();
    let flat = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&t["out"]), flat(&t2["out"]));
}

#[test]
fn attn_exact_has_no_counts() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), (1, 2, 7, 8), false);
    let output = dir.path().join("out.safetensors");
    assert!(
        attn(&input, &output, &["--estimator", "exact"])
            .status
            .success()
    );
    let t = candle_core::safetensors::load(&output, &Device::Cpu).unwrap();
    assert!(t.contains_key("out") && !t.contains_key("counts"));
}

#[test]
fn attn_rejects_bad_shapes_and_specs_with_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.safetensors");
    let stderr = |o: std::process::Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let bad = write_input(dir.path(), (1, 2, 7, 3), false);
    let err = stderr(attn(&bad, &output, &[]));
    assert!(
        err.contains("`k`") && err.contains("D=8") && err.contains("[1, 2, 7, 3]"),
        "{err}"
    );
    assert!(!output.exists(), "no output on failure");

    let good = write_input(dir.path(), (1, 2, 7, 8), false);
    assert!(stderr(attn(&good, &output, &["--estimator", "stratified:0"])).contains("at least 1"));
    let missing = std::path::Path::new("/nonexistent.safetensors");
    assert!(stderr(attn(missing, &output, &[])).contains("does not exist"));
}

#[test]
fn demo_prints_a_table() {
    let o = qattn()
        .args(["demo", "--lk", "64", "--seeds", "2"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    for name in [
        "multinomial:S",
        "stratified:S",
        "topk:8:S",
        "cv:8:S",
        "adaptive:1:S",
        "mitigate",
    ] {
        assert!(s.contains(name), "missing row {name}:\n{s}");
    }
}
