//! The synthetic task generator and the `qattn compare` run engine.

use qattn_glue::runner::{Prediction, RunRecord};
use qattn_glue::tasks::Label;
use qattn_verify::claims::{self, ClaimsFile, Verdict};
use qattn_verify::compare::{
    CompareOptions, DEFAULT_SEEDS, DEFAULT_SYSTEMS, NoProgress, SyntheticModel, SyntheticPreset,
    TaskSource, run_compare,
};
use qattn_verify::synthetic::{
    HOLDOUT_EVERY, MajorityTask, SyntheticExample, SyntheticSpec, SyntheticSplit, SyntheticTask,
    TASK_NEEDLE, oracle,
};
use std::collections::BTreeSet;
use std::sync::OnceLock;

/// A retrieval setting with distractor pairs and varied fillers (not the default), so the
/// generator's general path is tested too.
fn kv_task() -> SyntheticTask {
    SyntheticTask {
        seq_len: 300,
        num_keys: 8,
        num_values: 5,
        num_pairs: 3,
        num_fillers: 16,
        train_size: 401,
        dev_size: 203,
        data_seed: 99,
    }
}

/// The retrieval generator's settings under test: needle detection at its default length and
/// at L = 64, and key–value retrieval.
fn tasks() -> Vec<SyntheticTask> {
    vec![
        SyntheticTask::default(),
        SyntheticTask {
            seq_len: 64,
            train_size: 960,
            dev_size: 60,
            ..SyntheticTask::default()
        },
        kv_task(),
    ]
}

/// The quick preset's (only) task.
fn quick_task() -> SyntheticSpec {
    SyntheticPreset::quick_preset().tasks[0].clone()
}

#[test]
fn generator_is_deterministic_and_seeded() {
    for task in tasks() {
        for split in [SyntheticSplit::Train, SyntheticSplit::Dev] {
            let a = task.generate(split).unwrap();
            assert_eq!(a, task.generate(split).unwrap(), "{task:?} {split:?}");
            let b = SyntheticTask {
                data_seed: task.data_seed + 1,
                ..task.clone()
            }
            .generate(split)
            .unwrap();
            assert_eq!(example_ids(&a), example_ids(&b));
            // Another data seed moves the markers: most texts differ. (Not the dev split of a
            // one-filler needle task: it enumerates every (held-out position, class) once, so
            // only its order depends on the seed.)
            let same = a.iter().zip(&b).filter(|(x, y)| x.text == y.text).count();
            if split == SyntheticSplit::Train || task.num_fillers > 1 {
                assert!(same * 10 < a.len(), "{same} of {} texts unchanged", a.len());
            } else {
                let set = |v: &[SyntheticExample]| -> BTreeSet<String> {
                    v.iter().map(|e| e.text.clone()).collect()
                };
                assert_eq!(set(&a), set(&b));
                assert!(
                    same * 2 < a.len(),
                    "{same} of {} in the same order",
                    a.len()
                );
            }
        }
        let train = task.generate(SyntheticSplit::Train).unwrap();
        let dev = task.generate(SyntheticSplit::Dev).unwrap();
        assert_eq!((train.len(), dev.len()), (task.train_size, task.dev_size));
        assert_eq!(dev[0].id, "dev-0");
        assert_eq!(train[3].id, "train-3");
        // Held-out positions: dev markers at multiples of 4, train markers elsewhere, so no dev
        // text is a train text.
        let marker = |e: &SyntheticExample| e.pairs.iter().find(|p| p.1 == e.query).unwrap().0;
        assert!(dev.iter().all(|e| marker(e) % HOLDOUT_EVERY == 0));
        assert!(train.iter().all(|e| marker(e) % HOLDOUT_EVERY != 0));
        let train_texts: BTreeSet<&str> = train.iter().map(|e| e.text.as_str()).collect();
        assert!(dev.iter().all(|e| !train_texts.contains(e.text.as_str())));
    }
    // The default dev split holds every (held-out position, class) combination exactly once.
    let task = SyntheticTask::default();
    let dev = task.generate(SyntheticSplit::Dev).unwrap();
    let combos: BTreeSet<(usize, usize)> = dev.iter().map(|e| (e.pairs[0].0, e.label)).collect();
    assert_eq!(combos.len(), 63 * 4);
    assert_eq!(dev.len(), 63 * 4);
}

fn example_ids(v: &[SyntheticExample]) -> Vec<String> {
    v.iter().map(|e| e.id.clone()).collect()
}

#[test]
fn labels_are_balanced_and_markers_spread() {
    for task in tasks() {
        for split in [SyntheticSplit::Train, SyntheticSplit::Dev] {
            let ex = task.generate(split).unwrap();
            let mut counts = vec![0usize; task.num_values];
            for e in &ex {
                counts[e.label] += 1;
            }
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "{split:?} label counts {counts:?}");
            // The queried marker lands in both halves of the sequence, often.
            let late = ex
                .iter()
                .filter(|e| {
                    let pos = e.pairs.iter().find(|p| p.1 == e.query).unwrap().0;
                    pos > task.seq_len / 2
                })
                .count();
            let frac = late as f64 / ex.len() as f64;
            assert!(
                (0.35..0.65).contains(&frac),
                "{split:?}: {frac} of markers in the second half"
            );
        }
    }
    let t = SyntheticTask::default();
    assert_eq!(t.chance(), 0.25);
    assert_eq!(t.name(), TASK_NEEDLE);
    assert_eq!(kv_task().name(), "synthetic-kv");
}

#[test]
fn oracle_recovers_every_label_and_texts_have_the_stated_shape() {
    for task in tasks() {
        let tok = task.tokenizer().unwrap();
        for split in [SyntheticSplit::Train, SyntheticSplit::Dev] {
            for e in task.generate(split).unwrap() {
                assert_eq!(oracle(&e.text), Some(e.label), "{}: {}", e.id, e.text);
                let words: Vec<&str> = e.text.split_whitespace().collect();
                assert_eq!(words.len(), task.seq_len);
                assert_eq!(words[0], format!("q{}", e.query));
                let pairs: Vec<&str> = words
                    .iter()
                    .copied()
                    .filter(|w| w.starts_with('k'))
                    .collect();
                assert_eq!(pairs.len(), task.num_pairs, "{}", e.id);
                let keys: BTreeSet<usize> = e.pairs.iter().map(|p| p.1).collect();
                assert_eq!(keys.len(), task.num_pairs, "{}: keys not distinct", e.id);
                for &(pos, k, v) in &e.pairs {
                    assert_eq!(words[pos], format!("k{k}v{v}"));
                }
                let enc = tok.encode(&e.text, None).unwrap();
                assert_eq!(enc.ids.len(), task.encoded_len());
                assert_eq!(enc.tokens[0], "[CLS]");
                assert_eq!(enc.tokens[task.seq_len + 1], "[SEP]");
                assert_eq!(&enc.tokens[1..=task.seq_len], words.as_slice(), "{}", e.id);
                assert!(!enc.ids.contains(&1), "{}: an unknown word", e.id);
            }
        }
    }
    // The oracle reads the task's definition, not a position.
    assert_eq!(oracle("q2 f0 k1v3 f1 k2v0 f0"), Some(0));
    assert_eq!(oracle("q1 f0 k1v3 f1 k2v0 f0"), Some(3));
    assert_eq!(oracle("q4 f0 k1v3 f1 k2v0 f0"), None);
    assert_eq!(oracle("f0 k1v3"), None);
    assert_eq!(oracle(""), None);
}

#[test]
fn tokenizer_maps_the_vocabulary_and_marks_unknown_words() {
    let task = kv_task();
    let tok = task.tokenizer().unwrap();
    let vocab = task.vocab();
    assert_eq!(tok.vocab_size(), vocab.len());
    assert_eq!(vocab.len(), 4 + 8 + 8 * 5 + 16);
    assert_eq!(tok.pad_id(), 0);
    let enc = tok.encode("q3 k3v4 f15 banana", None).unwrap();
    let id = |w: &str| vocab.iter().position(|v| v == w).unwrap() as u32;
    assert_eq!(enc.ids, vec![2, id("q3"), id("k3v4"), id("f15"), 1, 3]);
}

#[test]
fn invalid_settings_are_errors_naming_the_field() {
    let cases: Vec<(SyntheticTask, &str)> = vec![
        (
            SyntheticTask {
                num_pairs: 9,
                ..kv_task()
            },
            "num_pairs",
        ),
        (
            SyntheticTask {
                num_pairs: 0,
                ..kv_task()
            },
            "num_pairs",
        ),
        (
            SyntheticTask {
                num_values: 1,
                ..kv_task()
            },
            "num_values",
        ),
        (
            SyntheticTask {
                seq_len: 1,
                ..kv_task()
            },
            "seq_len",
        ),
        (
            SyntheticTask {
                dev_size: 0,
                ..kv_task()
            },
            "dev_size",
        ),
        (
            SyntheticTask {
                num_fillers: 0,
                ..kv_task()
            },
            "num_fillers",
        ),
    ];
    for (task, field) in cases {
        let err = task
            .generate(SyntheticSplit::Train)
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
    let bad_model = SyntheticModel {
        num_heads: 3,
        ..SyntheticModel::default()
    };
    let err = bad_model
        .config(&SyntheticSpec::Retrieval(kv_task()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_heads"), "{err}");

    let run = |o: CompareOptions| run_compare(&o, &NoProgress).unwrap_err().to_string();
    let err = run(CompareOptions {
        systems: vec![],
        ..CompareOptions::quick()
    });
    assert!(err.contains("no attention systems"), "{err}");
    let err = run(CompareOptions {
        systems: vec!["exact".into(), "stratified:zero".into()],
        ..CompareOptions::quick()
    });
    assert!(
        err.contains("system 2") && err.contains("stratified:zero"),
        "{err}"
    );
    let err = run(CompareOptions {
        seeds: vec![1, 1],
        ..CompareOptions::quick()
    });
    assert!(err.contains("seed 1"), "{err}");
    let err = run(CompareOptions {
        set: vec!["no_such_field=3".into()],
        ..CompareOptions::quick()
    });
    assert!(err.contains("no_such_field"), "{err}");
}

#[test]
fn defaults_compare_five_systems_on_two_lengths_over_three_seeds() {
    let o = CompareOptions::default();
    assert_eq!(o.systems, DEFAULT_SYSTEMS);
    assert_eq!(o.seeds, DEFAULT_SEEDS);
    assert_eq!(
        o.systems,
        [
            "exact",
            "stratified:32",
            "multinomial:8",
            "stratified:32+readout:0.02:0.03",
            "stratified:32+readout:0.02:0.03+mitigate"
        ]
    );
    assert_eq!(o.seeds, [1, 2, 3]);
    assert_eq!(
        o.task_names().unwrap(),
        ["synthetic-majority-64", "synthetic-majority-128"]
    );
    let args = o.training_args().unwrap();
    assert_eq!(args.max_length, 130);
    assert_eq!(args.max_steps, Some(150));
    let q = CompareOptions::quick();
    assert_eq!(q.task_names().unwrap(), ["synthetic-majority-32"]);
    assert_eq!(q.training_args().unwrap().max_length, 34);
    // --lengths: the preset's task at other lengths, markers capped at L.
    let at = SyntheticPreset::default_preset()
        .tasks_at(&[16, 300])
        .unwrap();
    assert_eq!(at[0].name(), "synthetic-majority-16");
    match &at[0] {
        SyntheticSpec::Majority(t) => assert!(t.max_markers <= 16 && t.min_markers <= 16),
        other => panic!("{other:?}"),
    }
    assert_eq!(at[1].encoded_len(), 302);
    let e = SyntheticPreset::default_preset()
        .tasks_at(&[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("length 0"), "{e}");
    // An explicit learning rate keeps the attention group's factor.
    let o = CompareOptions {
        learning_rate: Some(1e-3),
        ..CompareOptions::default()
    };
    let args = o.training_args().unwrap();
    assert_eq!(args.learning_rate, 1e-3);
    let factor = SyntheticPreset::default_preset().attention_lr_factor;
    assert_eq!(args.attention_learning_rate, Some(1e-3 * factor));
}

#[test]
fn the_long_preset_is_at_least_4096_tokens_and_refuses_glue() {
    let o = CompareOptions {
        long: true,
        ..CompareOptions::default()
    };
    assert_eq!(o.task_names().unwrap(), ["synthetic-majority-4096"]);
    let args = o.training_args().unwrap();
    assert_eq!(args.max_length, 4098);
    let (tasks, model) = o.synthetic().unwrap();
    // The model has positions for every token of the long task.
    assert!(model.config(&tasks[0]).unwrap().max_position_embeddings >= 4098);
    match &tasks[0] {
        SyntheticSpec::Majority(t) => assert!(t.min_markers > 25 && t.max_markers <= 4096),
        other => panic!("{other:?}"),
    }
    // --long --quick: the same length, a smoke-test budget.
    let q = CompareOptions {
        long: true,
        quick: true,
        ..CompareOptions::default()
    };
    assert_eq!(q.training_args().unwrap().max_length, 4098);
    assert!(q.training_args().unwrap().max_steps < args.max_steps);
    let e = run_compare(
        &CompareOptions {
            long: true,
            task: TaskSource::Glue {
                task: qattn_glue::tasks::Task::from_name("rte").unwrap(),
                model: "m".into(),
                data_dir: "/nonexistent".into(),
                hub: Default::default(),
                train_limit: None,
                eval_limit: None,
            },
            ..CompareOptions::default()
        },
        &NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("long-context") && e.contains("rte"), "{e}");
}

/// The quick compare with its default systems and seeds, run once for the tests below.
fn quick_records() -> &'static Vec<RunRecord> {
    static RECORDS: OnceLock<Vec<RunRecord>> = OnceLock::new();
    RECORDS.get_or_init(|| run_compare(&CompareOptions::quick(), &NoProgress).unwrap())
}

fn class(p: &Prediction) -> usize {
    match p {
        Prediction::Class(c) => *c,
        Prediction::Score(s) => panic!("a score {s} in a classification record"),
    }
}

#[test]
fn quick_compare_returns_every_run_on_the_same_dev_examples() {
    let opts = CompareOptions::quick();
    let records = quick_records();
    let task = quick_task();
    let dev = task.generate(SyntheticSplit::Dev).unwrap();
    let train_size = task.generate(SyntheticSplit::Train).unwrap().len();
    // Systems outer, seeds inner.
    let expected: Vec<(String, u64)> = opts
        .systems
        .iter()
        .flat_map(|s| opts.seeds.iter().map(move |&k| (s.clone(), k)))
        .collect();
    let got: Vec<(String, u64)> = records
        .iter()
        .map(|r| (r.attention.clone(), r.seed))
        .collect();
    assert_eq!(got, expected);
    for r in records {
        assert_eq!(r.task, "synthetic-majority-32");
        assert_eq!(r.dev_examples, dev.len());
        assert_eq!(r.train_examples, train_size);
        assert_eq!(r.training_args.seed, r.seed);
        assert_eq!(
            r.training_args.attention.as_deref(),
            Some(r.attention.as_str())
        );
        assert_eq!(r.predictions.len(), dev.len());
        for (p, e) in r.predictions.iter().zip(&dev) {
            assert_eq!(p.id, e.id);
            assert_eq!(p.gold, Some(Label::Class(e.label)));
            assert!(class(&p.pred) < task.num_classes());
        }
        // The stored accuracy is the accuracy of the stored predictions.
        let correct = r
            .predictions
            .iter()
            .filter(|p| p.gold == Some(Label::Class(class(&p.pred))))
            .count();
        assert_eq!(r.dev_metrics["accuracy"], correct as f64 / dev.len() as f64);
        for phase in ["load", "train", "eval"] {
            assert!(r.wall_seconds[phase] >= 0.0, "{phase}");
        }
        assert!(r.wall_seconds["train"] > 0.0);
        assert!(r.train_tokens_per_second > 0.0);
    }
}

#[test]
fn quick_exact_attention_learns_but_stays_below_the_ceiling() {
    let chance = quick_task().chance();
    assert_eq!(chance, 0.5);
    // A predictor at chance scores 0.5 ± 0.02 (binomial sd over 600 dev examples): chance + 0.2
    // is 10 sd above it. Label noise ε = 0.1 caps the expected accuracy at 0.9, so no run can
    // sit at the ceiling, and the seeds differ. Measured on seeds 1/2/3: 0.88–0.89.
    let exact: Vec<f64> = quick_records()
        .iter()
        .filter(|r| r.attention == "exact")
        .map(|r| r.dev_metrics["accuracy"])
        .collect();
    assert_eq!(exact.len(), 3);
    for acc in &exact {
        assert!(*acc >= chance + 0.2, "exact accuracy {acc}");
        assert!(
            *acc < 0.97,
            "exact accuracy {acc}: the task should not be at its ceiling"
        );
    }
    assert!(exact.iter().any(|a| *a != exact[0]), "{exact:?}");
}

#[test]
fn quick_verdicts_have_intervals_of_positive_width_and_no_bound() {
    let names: Vec<String> = DEFAULT_SYSTEMS[1..].iter().map(|s| s.to_string()).collect();
    let file = ClaimsFile::beats_on(
        &["synthetic-majority-32".to_string()],
        "accuracy",
        "exact",
        &names,
    );
    let report = claims::evaluate(&file, quick_records()).unwrap();
    assert_eq!(report.results.len(), 4);
    for r in &report.results {
        let (lo, hi) = (r.ci_low.unwrap(), r.ci_high.unwrap());
        assert!(hi - lo > 0.001, "{}: [{lo}, {hi}]", r.claim.id);
        assert!(r.mde.is_some_and(|m| m > 0.0), "{}", r.claim.id);
        assert!(r.system.bound.is_none() && r.baseline.bound.is_none());
        assert_eq!(r.baseline.learned, Some(true), "{}", r.claim.id);
    }
}

#[test]
fn a_clearly_weaker_system_is_detected_as_worse() {
    // multinomial:2 reads about two of the 9–25 votes: measured 9–10 points below exact.
    let opts = CompareOptions {
        systems: vec!["exact".into(), "multinomial:2".into()],
        ..CompareOptions::quick()
    };
    let records = run_compare(&opts, &NoProgress).unwrap();
    let file = ClaimsFile::beats_on(
        &opts.task_names().unwrap(),
        "accuracy",
        "exact",
        &["multinomial:2".to_string()],
    );
    let report = claims::evaluate(&file, &records).unwrap();
    let r = &report.results[0];
    assert_eq!(r.verdict, Verdict::Refuted, "{}", r.reason);
    assert!(
        r.delta.unwrap() < -0.03 && r.ci_high.unwrap() < 0.0,
        "{r:?}"
    );
}

#[test]
fn the_same_seed_gives_the_same_result_and_records_are_written() {
    let dir = std::env::temp_dir().join(format!("qattn-compare-test-{}", std::process::id()));
    let opts = CompareOptions {
        systems: vec!["exact".into(), "stratified:8".into()],
        seeds: vec![7],
        max_steps: Some(6),
        task: TaskSource::Synthetic {
            tasks: Some(vec![SyntheticSpec::Majority(MajorityTask {
                seq_len: 32,
                train_size: 96,
                dev_size: 48,
                ..MajorityTask::default()
            })]),
            model: None,
        },
        jobs: 2,
        ..CompareOptions::quick()
    };
    let a = run_compare(&opts, &NoProgress).unwrap();
    // One run at a time instead of two: the same results.
    let b = run_compare(
        &CompareOptions {
            output_dir: Some(dir.clone()),
            jobs: 1,
            ..opts.clone()
        },
        &NoProgress,
    )
    .unwrap();
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        let px: Vec<usize> = x.predictions.iter().map(|p| class(&p.pred)).collect();
        let py: Vec<usize> = y.predictions.iter().map(|p| class(&p.pred)).collect();
        assert_eq!(px, py, "{} seed {}", x.attention, x.seed);
        assert_eq!(x.dev_metrics, y.dev_metrics);
        // The run directory has the layout of `qattn glue run`.
        let path = dir
            .join("synthetic-majority-32")
            .join(qattn_glue::runner::slug(&y.attention))
            .join("seed-7");
        let text = std::fs::read_to_string(path.join("run.json")).unwrap();
        let back: RunRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back.dev_metrics, y.dev_metrics);
        assert_eq!(back.predictions.len(), y.predictions.len());
        assert!(path.join("model").join("model.safetensors").is_file());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
