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

#[test]
fn grid_plans_runs_resumes_and_names_every_missing_cell() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = dir.path().join("recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    std::fs::write(
        recipes.join("rte.toml"),
        r#"task = "rte"
model = "synthetic/bert-tiny-random-h32"
max_steps = 2
batch_size = 8
max_len = 32
train_limit = 16
eval_limit = 12
"#,
    )
    .unwrap();
    let out = dir.path().join("grid");
    let grid = |extra: &[&str]| {
        let mut args = vec![
            "glue",
            "grid",
            "--recipes",
            recipes.to_str().unwrap(),
            "--systems",
            "exact,multinomial:4",
            "--seeds",
            "1,2",
            "--tasks",
            "rte,cb,qqp",
            "--output-dir",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        qattn(&args)
    };
    let cells = || -> Vec<Value> {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("grid.json")).unwrap()).unwrap();
        v["cells"].as_array().unwrap().clone()
    };
    let state = |cells: &[Value], task: &str, system: &str, seed: u64| -> String {
        cells
            .iter()
            .find(|c| c["task"] == task && c["system"] == system && c["seed"] == seed)
            .unwrap_or_else(|| panic!("no cell {task} {system} {seed}"))["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // The plan trains nothing: 3 tasks × 2 systems × 2 seeds, every cell named.
    ok(grid(&["--plan"]));
    let c = cells();
    assert_eq!(c.len(), 12);
    assert_eq!(state(&c, "rte", "exact", 1), "missing");
    assert_eq!(state(&c, "cb", "exact", 2), "no recipe");
    assert_eq!(state(&c, "qqp", "multinomial:4", 1), "no data here");
    assert!(!out.join("rte").exists(), "--plan must not train");
    // A run leaves the seed directory behind without run.json: the grid resumes it.
    std::fs::create_dir_all(out.join("rte/multinomial_4/seed-2")).unwrap();
    ok(grid(&["--plan"]));
    assert_eq!(state(&cells(), "rte", "multinomial:4", 2), "partial");
    // The real run trains the four RTE cells and records their scores.
    let o = ok(grid(&[]));
    let c = cells();
    for (system, slug) in [("exact", "exact"), ("multinomial:4", "multinomial_4")] {
        for seed in [1u64, 2] {
            assert_eq!(state(&c, "rte", system, seed), "done");
            let run = out.join(format!("rte/{slug}/seed-{seed}/run.json"));
            let r: Value = serde_json::from_str(&std::fs::read_to_string(&run).unwrap()).unwrap();
            assert_eq!(r["attention"], system);
            assert_eq!(r["seed"], seed);
            assert_eq!(r["predictions"].as_array().unwrap().len(), 12);
        }
    }
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(md.contains("| rte | `exact` | accuracy | 1, 2 |"), "{md}");
    assert!(
        md.contains("no data here") && md.contains("no recipe"),
        "{md}"
    );
    let on_disk = std::fs::read_to_string(out.join("grid.md")).unwrap();
    assert!(on_disk.contains("4 done"), "{on_disk}");
    // A second call has nothing left to train.
    let o = ok(grid(&[]));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("0 to run"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Records in a --done directory count as done, elsewhere too.
    let other = dir.path().join("other");
    let o = qattn(&[
        "glue",
        "grid",
        "--recipes",
        recipes.to_str().unwrap(),
        "--systems",
        "exact",
        "--seeds",
        "1,3",
        "--tasks",
        "rte",
        "--output-dir",
        other.to_str().unwrap(),
        "--done",
        out.to_str().unwrap(),
        "--plan",
    ]);
    ok(o);
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(other.join("grid.json")).unwrap()).unwrap();
    let states: Vec<&str> = v["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["done", "missing"]);
    // The same records twice are refused, naming both files.
    let e = qattn(&[
        "glue",
        "grid",
        "--recipes",
        recipes.to_str().unwrap(),
        "--tasks",
        "rte",
        "--output-dir",
        other.to_str().unwrap(),
        "--done",
        out.to_str().unwrap(),
        "--done",
        out.to_str().unwrap(),
        "--plan",
    ]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("are the same run"));
    // Bad input names what is wrong.
    let e = qattn(&[
        "glue",
        "grid",
        "--recipes",
        recipes.to_str().unwrap(),
        "--systems",
        "exact,bogus:3",
        "--output-dir",
        other.to_str().unwrap(),
    ]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("bogus:3"));
}
