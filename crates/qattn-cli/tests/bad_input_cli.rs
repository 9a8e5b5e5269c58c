//! Bad input never panics: out-of-range numbers on the command line are usage errors (exit 2,
//! the flag named), extreme values in config and data files are errors naming the key or the
//! file and line; and `qattn demo` is reproducible from its `--seed`.

use proptest::prelude::*;
use std::path::PathBuf;
use std::process::{Command, Output};

fn qattn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qattn"))
        .args(args)
        .env_remove("MLFLOW_TRACKING_URI")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit status 2, `flag` named, no panic message.
fn assert_usage_error(o: &Output, flag: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(flag), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn demo_is_reproducible_from_its_seed() {
    let demo = |seed: &str| {
        let o = qattn(&[
            "demo", "--lk", "32", "--d", "16", "--seeds", "2", "--seed", seed,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let a = demo("7");
    assert_eq!(a, demo("7"), "same seed, same table");
    assert_ne!(a, demo("8"), "another seed, other inputs");
    assert!(!a.contains("NaN"), "{a}");
}

#[test]
fn demo_rejects_out_of_range_numbers() {
    assert_usage_error(&qattn(&["demo", "--seeds", "0"]), "--seeds");
    for (flag, value) in [
        ("--logit-sd", "nan"),
        ("--logit-sd", "inf"),
        ("--logit-sd", "-1"),
        ("--lk", "0"),
        ("--lk", "18446744073709551615"),
        ("--d", "0"),
        ("--seeds", "-1"),
    ] {
        let arg = format!("{flag}={value}");
        assert_usage_error(&qattn(&["demo", &arg]), flag);
    }
}

#[test]
fn health_rejects_out_of_range_timeouts() {
    for t in ["inf", "1e20", "-1", "NaN", "0", "-inf"] {
        let arg = format!("--timeout={t}");
        let o = qattn(&["health", "--addr", "127.0.0.1:9", &arg]);
        assert_usage_error(&o, "--timeout");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any number given to `health --timeout` is either accepted (then the check runs and fails
    /// to connect to a closed port: exit 1) or a usage error (exit 2); never a panic.
    #[test]
    fn health_timeout_never_panics(x in prop_oneof![
        any::<f64>(),
        Just(f64::INFINITY), Just(f64::NAN), Just(1e20), Just(-1.0), Just(0.0), Just(1e-300),
        0.01f64..0.2,
    ]) {
        let arg = format!("--timeout={x}");
        let o = qattn(&["health", "--addr", "127.0.0.1:9", &arg]);
        let err = stderr(&o);
        prop_assert!(!err.contains("panicked"), "{}", err);
        let code = o.status.code();
        prop_assert!(code == Some(1) || code == Some(2), "{:?}: {}", code, err);
        prop_assert_eq!(code == Some(2), !(x > 0.0 && x <= 3600.0), "{}", err);
    }

    /// `demo --seeds N` with any N: 0 and huge values are usage errors, never a panic or NaN.
    #[test]
    fn demo_seed_counts_never_panic(n in prop_oneof![Just(0u64), Just(u64::MAX), 10_001u64..u64::MAX]) {
        let o = qattn(&["demo", "--lk", "8", "--d", "4", "--seeds", &n.to_string()]);
        prop_assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        prop_assert!(!stderr(&o).contains("panicked"));
    }
}

#[test]
fn serve_config_with_an_out_of_range_window_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("serve.toml");
    for value in ["1e20", "inf", "-1.0"] {
        std::fs::write(&cfg, format!("[rollout]\nwindow_s = {value}\n")).unwrap();
        let o = qattn(&["serve", "--config", cfg.to_str().unwrap(), "--model", "x"]);
        let err = stderr(&o);
        assert!(!o.status.success() && o.status.code() != Some(101), "{err}");
        assert!(err.contains("rollout.window_s"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

fn hf_cache() -> PathBuf {
    let p = std::env::var_os("QATTN_HF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/data/hf"
            ))
        });
    assert!(p.is_dir(), "{} not found: set QATTN_HF_CACHE", p.display());
    p
}

#[test]
fn a_huge_integer_label_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.jsonl");
    std::fs::write(
        &train,
        "{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": 4000000000}\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_qattn"))
        .args([
            "train",
            "--model",
            "synthetic/bert-tiny-random-h32",
            "--train",
        ])
        .arg(&train)
        .arg("--output-dir")
        .arg(dir.path().join("out"))
        .args(["--max-steps", "1"])
        .env("HF_HUB_CACHE", hf_cache())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("MLFLOW_TRACKING_URI")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("train.jsonl:2"), "{err}");
    assert!(err.contains("4000000000") && err.contains("10000"), "{err}");
    assert!(!dir.path().join("out").exists(), "nothing written");
}
