//! `qattn glue run | predict | score` end to end on a slice of RTE with the tiny random BERT,
//! plus scoring of hand-written prediction files (which must be able to fail).

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

fn data_dir() -> PathBuf {
    let p = std::env::var_os("QATTN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        });
    assert!(
        p.join("glue").is_dir(),
        "{} has no glue/: set QATTN_DATA_DIR",
        p.display()
    );
    p
}

fn qattn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qattn"))
        .args(args)
        .env("HF_HUB_CACHE", data_dir().join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .env("QATTN_DATA_DIR", data_dir())
        .output()
        .unwrap()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn run_predict_and_score_a_slice_of_rte() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    ok(qattn(&[
        "glue",
        "run",
        "--task",
        "rte",
        "--model",
        "synthetic/bert-tiny-random-h32",
        "--attention",
        "multinomial:4",
        "--seeds",
        "1,2",
        "--max-steps",
        "4",
        "--train-limit",
        "32",
        "--eval-limit",
        "40",
        "--batch-size",
        "8",
        "--output-dir",
        out.to_str().unwrap(),
    ]));
    for seed in [1, 2] {
        let run = out.join(format!("rte/multinomial_4/seed-{seed}/run.json"));
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&run).unwrap()).unwrap();
        assert_eq!(r["task"], "rte");
        assert_eq!(r["seed"], seed);
        assert_eq!(r["attention"], "multinomial:4");
        assert_eq!(r["train_examples"], 32);
        assert_eq!(r["predictions"].as_array().unwrap().len(), 40);
        let acc = r["dev_metrics"]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        for k in ["load", "train", "eval"] {
            assert!(r["wall_seconds"][k].as_f64().is_some(), "{k}");
        }
    }
    let model = out.join("rte/multinomial_4/seed-1/model");
    let pred = dir.path().join("RTE.tsv");
    ok(qattn(&[
        "glue",
        "predict",
        "--task",
        "rte",
        "--model",
        model.to_str().unwrap(),
        "--split",
        "dev",
        "--output",
        pred.to_str().unwrap(),
    ]));
    let text = std::fs::read_to_string(&pred).unwrap();
    assert!(text.starts_with("index\tprediction\n"));
    assert_eq!(text.lines().count(), 278);
    let gold = data_dir().join("glue/RTE/dev.tsv");
    let s = ok(qattn(&[
        "glue",
        "score",
        "--task",
        "rte",
        "--gold",
        gold.to_str().unwrap(),
        "--pred",
        pred.to_str().unwrap(),
    ]));
    let m: Value = serde_json::from_slice(&s.stdout).unwrap();
    assert!(m["accuracy"].as_f64().is_some());
}

/// Gold labels as predictions score perfectly; flipped ones score zero (CoLA MCC −1).
#[test]
fn score_perfect_and_inverted_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let gold = data_dir().join("glue/CoLA/dev.tsv");
    let rows: Vec<(usize, String)> = std::fs::read_to_string(&gold)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| (i, l.split('\t').nth(1).unwrap().to_string()))
        .collect();
    let write = |name: &str, flip: bool| {
        let mut s = String::from("index\tprediction\n");
        for (i, l) in &rows {
            let l = if flip {
                if l == "1" { "0" } else { "1" }
            } else {
                l.as_str()
            };
            s.push_str(&format!("{i}\t{l}\n"));
        }
        let p = dir.path().join(name);
        std::fs::write(&p, s).unwrap();
        p
    };
    let score = |p: &PathBuf| -> Value {
        let o = ok(qattn(&[
            "glue",
            "score",
            "--task",
            "cola",
            "--gold",
            gold.to_str().unwrap(),
            "--pred",
            p.to_str().unwrap(),
        ]));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    assert_eq!(
        score(&write("good.tsv", false))["mcc"].as_f64().unwrap(),
        1.0
    );
    assert_eq!(
        score(&write("bad.tsv", true))["mcc"].as_f64().unwrap(),
        -1.0
    );
    // A file missing predictions is an error naming the first missing id.
    let short = dir.path().join("short.tsv");
    std::fs::write(&short, "index\tprediction\n0\t1\n").unwrap();
    let o = qattn(&[
        "glue",
        "score",
        "--task",
        "cola",
        "--gold",
        gold.to_str().unwrap(),
        "--pred",
        short.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("first: id 1"));
}

/// SuperGLUE JSONL: CB gold labels as predictions give accuracy 1 and macro-F1 1.
#[test]
fn score_superglue_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let gold = data_dir().join("superglue/CB/val.jsonl");
    let mut s = String::new();
    for l in std::fs::read_to_string(&gold).unwrap().lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        s.push_str(&format!(
            "{}\n",
            serde_json::json!({"idx": v["idx"], "label": v["label"]})
        ));
    }
    let p = dir.path().join("CB.jsonl");
    std::fs::write(&p, s).unwrap();
    let o = ok(qattn(&[
        "glue",
        "score",
        "--task",
        "cb",
        "--gold",
        gold.to_str().unwrap(),
        "--pred",
        p.to_str().unwrap(),
    ]));
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["accuracy"], 1.0);
    assert_eq!(m["f1_macro"], 1.0);
}

#[test]
fn run_reads_a_recipe_and_flags_win_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("rte.toml");
    std::fs::write(
        &recipe,
        r#"description = "a test recipe"
task = "rte"
model = "synthetic/bert-tiny-random-h32"
seeds = [3]
max_steps = 2
lr = 7e-5
batch_size = 8
max_len = 48
train_limit = 16
eval_limit = 20

[training]
warmup_ratio = 0.0
weight_decay = 0.02
"#,
    )
    .unwrap();
    let out = dir.path().join("runs");
    ok(qattn(&[
        "glue",
        "run",
        "--config",
        recipe.to_str().unwrap(),
        "--eval-limit",
        "24",
        "--output-dir",
        out.to_str().unwrap(),
    ]));
    let run = out.join("rte/exact/seed-3/run.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&run).unwrap()).unwrap();
    assert_eq!(r["train_examples"], 16);
    assert_eq!(
        r["predictions"].as_array().unwrap().len(),
        24,
        "the flag wins"
    );
    let a = &r["training_args"];
    assert_eq!(a["learning_rate"], 7e-5);
    assert_eq!(a["per_device_train_batch_size"], 8);
    assert_eq!(a["max_length"], 48);
    assert_eq!(a["max_steps"], 2);
    assert_eq!(a["warmup_ratio"], 0.0);
    assert_eq!(a["weight_decay"], 0.02);

    // A task that disagrees with the recipe, and a misspelt key, are errors naming the file.
    let o = qattn(&[
        "glue",
        "run",
        "--config",
        recipe.to_str().unwrap(),
        "--task",
        "cola",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("rte.toml") && e.contains("cola"),
        "{e}"
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "task = \"rte\"\nlearning_rate = 1e-5\n").unwrap();
    let o = qattn(&[
        "glue",
        "run",
        "--config",
        bad.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("bad.toml") && e.contains("learning_rate"),
        "{e}"
    );
    // Without --task or a recipe's task: a clear error.
    let o = qattn(&["glue", "run", "--model", "m", "--output-dir", "x"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--task"), "{e}");
}
