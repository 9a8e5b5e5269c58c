//! Readers on the real GLUE / SuperGLUE files in `../shared/data` (or `$QATTN_DATA_DIR`) and on
//! hand-made official-format files in `tests/data/` for the tasks the shared data lacks (QQP,
//! MNLI, QNLI train, BoolQ train, ReCoRD).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use qattn_glue::Error;
use qattn_glue::tasks::{
    self, Benchmark, Example, Label, Split, Task, TaskKind, data_dir, load, read,
};

/// The shared data directory: `$QATTN_DATA_DIR`, else `../shared/data` next to the workspace.
/// Missing → the test fails, naming the path and the variable.
fn real_dir() -> PathBuf {
    let dir = match std::env::var_os(tasks::DATA_DIR_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data")),
    };
    assert!(
        dir.join("glue").is_dir() && dir.join("superglue").is_dir(),
        "GLUE/SuperGLUE data not found at {} (expected glue/ and superglue/ there); \
         set {} to the data directory",
        dir.display(),
        tasks::DATA_DIR_ENV
    );
    dir
}

/// The hand-made files.
fn hand_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn real(task: Task, split: Split) -> Vec<Example> {
    read(task, split, &real_dir()).unwrap_or_else(|e| panic!("{task} {split}: {e}"))
}

fn hand(task: Task, split: Split) -> Vec<Example> {
    read(task, split, &hand_dir()).unwrap_or_else(|e| panic!("{task} {split}: {e}"))
}

/// The splits present in the shared data, with the MANIFEST sizes.
const REAL_COUNTS: &[(Task, Split, usize)] = &[
    (Task::Cola, Split::Train, 8551),
    (Task::Cola, Split::Dev, 1043),
    (Task::Cola, Split::Test, 1063),
    (Task::Sst2, Split::Train, 67349),
    (Task::Sst2, Split::Dev, 872),
    (Task::Sst2, Split::Test, 1821),
    (Task::Mrpc, Split::Train, 3668),
    (Task::Mrpc, Split::Dev, 408),
    (Task::Mrpc, Split::Test, 1725),
    (Task::Stsb, Split::Train, 5749),
    (Task::Stsb, Split::Dev, 1500),
    (Task::Stsb, Split::Test, 1379),
    (Task::Qnli, Split::Dev, 5463),
    (Task::Qnli, Split::Test, 5463),
    (Task::Rte, Split::Train, 2490),
    (Task::Rte, Split::Dev, 277),
    (Task::Rte, Split::Test, 3000),
    (Task::Wnli, Split::Train, 635),
    (Task::Wnli, Split::Dev, 71),
    (Task::Wnli, Split::Test, 146),
    (Task::Ax, Split::Test, 1104),
    (Task::BoolQ, Split::Dev, 3270),
    (Task::BoolQ, Split::Test, 3245),
    (Task::Cb, Split::Train, 250),
    (Task::Cb, Split::Dev, 56),
    (Task::Cb, Split::Test, 250),
    (Task::Copa, Split::Train, 400),
    (Task::Copa, Split::Dev, 100),
    (Task::Copa, Split::Test, 500),
    // MultiRC: answer options (456/83/166 passages).
    (Task::MultiRc, Split::Train, 27243),
    (Task::MultiRc, Split::Dev, 4848),
    (Task::MultiRc, Split::Test, 9693),
    (Task::SgRte, Split::Train, 2490),
    (Task::SgRte, Split::Dev, 277),
    (Task::SgRte, Split::Test, 3000),
    (Task::Wic, Split::Train, 5428),
    (Task::Wic, Split::Dev, 638),
    (Task::Wic, Split::Test, 1400),
    (Task::Wsc, Split::Train, 554),
    (Task::Wsc, Split::Dev, 104),
    (Task::Wsc, Split::Test, 146),
    (Task::AxB, Split::Test, 1104),
    (Task::AxG, Split::Test, 356),
];

fn labelled(task: Task, split: Split) -> bool {
    split != Split::Test || matches!(task, Task::AxB | Task::AxG)
}

#[test]
fn real_row_counts_match_manifest() {
    for &(task, split, n) in REAL_COUNTS {
        assert_eq!(real(task, split).len(), n, "{task} {split}");
    }
}

#[test]
fn real_labels_cover_the_vocabulary_and_tests_are_unlabelled() {
    for &(task, split, _) in REAL_COUNTS {
        let ex = real(task, split);
        if !labelled(task, split) {
            assert!(
                ex.iter().all(|e| e.label.is_none()),
                "{task} {split}: labelled test row"
            );
            continue;
        }
        assert!(
            ex.iter().all(|e| e.label.is_some()),
            "{task} {split}: unlabelled row"
        );
        match task.kind() {
            TaskKind::Classification { labels } => {
                let seen: BTreeSet<usize> = ex.iter().filter_map(|e| e.label?.class()).collect();
                let all: BTreeSet<usize> = (0..labels.len()).collect();
                assert_eq!(seen, all, "{task} {split}: labels seen");
            }
            TaskKind::Regression => {
                let s: Vec<f64> = ex.iter().filter_map(|e| e.label?.score()).collect();
                assert_eq!(s.len(), ex.len());
                assert!(
                    s.iter().all(|v| (0.0..=5.0).contains(v)),
                    "{task}: score range"
                );
                assert!(
                    s.iter().any(|v| v.fract() != 0.0),
                    "{task}: scores are real-valued"
                );
            }
            TaskKind::MultipleChoice { choices } => {
                let seen: BTreeSet<usize> = ex.iter().filter_map(|e| e.label?.class()).collect();
                assert_eq!(seen, (0..choices).collect(), "{task} {split}");
                assert!(
                    ex.iter()
                        .all(|e| e.choices.as_ref().map(Vec::len) == Some(choices))
                );
            }
            TaskKind::CandidateScoring => unreachable!("no ReCoRD in the shared data"),
        }
    }
}

#[test]
fn real_ids_are_unique_and_glue_test_ids_are_the_index_column() {
    for &(task, split, n) in REAL_COUNTS {
        let ex = real(task, split);
        let ids: BTreeSet<&str> = ex.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), n, "{task} {split}: duplicate ids");
        if task.benchmark() == Benchmark::Glue && split == Split::Test {
            for (i, e) in ex.iter().enumerate() {
                assert_eq!(e.id, i.to_string(), "{task} test row {i}");
            }
        }
    }
}

#[test]
fn cola_headerless_train_dev_and_headed_test() {
    let dev = real(Task::Cola, Split::Dev);
    assert_eq!(dev[0].id, "0");
    assert_eq!(
        dev[0].text,
        "The sailors rode the breeze clear of the rocks."
    );
    assert_eq!(dev[0].text_pair, None);
    assert_eq!(dev[0].label, Some(Label::Class(1)));
    assert_eq!(dev[0].extra["source"], "gj04");
    // The last dev line has no final newline; it is still read.
    assert_eq!(dev.last().unwrap().id, "1042");
    let unacceptable = dev
        .iter()
        .find(|e| e.label == Some(Label::Class(0)))
        .unwrap();
    assert_eq!(unacceptable.extra["original_label"], "*");
    let train = real(Task::Cola, Split::Train);
    assert_eq!(
        train[0].text,
        "Our friends won't buy this analysis, let alone the next one we propose."
    );
    let test = real(Task::Cola, Split::Test);
    assert_eq!(
        (test[0].id.as_str(), test[0].text.as_str()),
        ("0", "Bill whistled past the house.")
    );
}

#[test]
fn mrpc_bom_is_stripped_and_columns_found_by_name() {
    let train = real(Task::Mrpc, Split::Train);
    let e = &train[0];
    assert_eq!(e.id, "0");
    assert_eq!(e.label, Some(Label::Class(1)));
    assert!(
        e.text.starts_with("Amrozi accused his brother"),
        "{:?}",
        e.text
    );
    assert!(
        e.text_pair
            .as_deref()
            .unwrap()
            .starts_with("Referring to him as only")
    );
    assert_eq!(
        (e.extra["id1"].as_str(), e.extra["id2"].as_str()),
        ("702876", "702977")
    );
    let dev = real(Task::Mrpc, Split::Dev);
    assert_eq!(dev[0].extra["id1"], "1355540");
    let test = real(Task::Mrpc, Split::Test);
    assert_eq!(test[0].id, "0");
    assert!(test[0].text.starts_with("PCCW 's chief operating officer"));
    assert_eq!(test[0].label, None);
}

#[test]
fn stsb_scores_are_floats() {
    let train = real(Task::Stsb, Split::Train);
    assert_eq!(train[0].text, "A plane is taking off.");
    assert_eq!(
        train[0].text_pair.as_deref(),
        Some("An air plane is taking off.")
    );
    assert_eq!(train[0].label, Some(Label::Score(5.0)));
    assert_eq!(train[1].label, Some(Label::Score(3.8)));
    assert_eq!(train[0].extra["genre"], "main-captions");
    let dev = real(Task::Stsb, Split::Dev);
    assert_eq!(dev[1].label, Some(Label::Score(4.75)));
    let test = real(Task::Stsb, Split::Test);
    assert_eq!(test[0].text, "A girl is styling her hair.");
}

#[test]
fn glue_pair_tasks_first_rows() {
    let sst = real(Task::Sst2, Split::Dev);
    // Raw text, trailing space included, as the official loader keeps it.
    assert_eq!(
        sst[0].text,
        "it 's a charming and often affecting journey . "
    );
    assert_eq!(sst[0].label, Some(Label::Class(1)));
    let qnli = real(Task::Qnli, Split::Dev);
    assert_eq!(
        qnli[0].text,
        "What came into force after the new constitution was herald?"
    );
    assert_eq!(qnli[0].label, Some(Label::Class(0))); // entailment
    assert_eq!(qnli[1].label, Some(Label::Class(1))); // not_entailment
    let rte = real(Task::Rte, Split::Dev);
    assert_eq!(
        rte[0].text_pair.as_deref(),
        Some("Christopher Reeve had an accident.")
    );
    assert_eq!(rte[0].label, Some(Label::Class(1)));
    let wnli = real(Task::Wnli, Split::Dev);
    assert_eq!(
        wnli[0].text_pair.as_deref(),
        Some("The hair has to be cleaned.")
    );
    assert_eq!(wnli[0].label, Some(Label::Class(0)));
    let ax = real(Task::Ax, Split::Test);
    assert_eq!(ax[0].text, "The cat sat on the mat.");
    assert_eq!(
        ax[0].text_pair.as_deref(),
        Some("The cat did not sit on the mat.")
    );
    // AX.tsv has no final newline.
    assert_eq!(ax.last().unwrap().id, "1103");
}

#[test]
fn superglue_pair_tasks_first_rows() {
    let boolq = real(Task::BoolQ, Split::Dev);
    assert_eq!(
        boolq[0].text,
        "does ethanol take more energy make that produces"
    );
    assert!(
        boolq[0]
            .text_pair
            .as_deref()
            .unwrap()
            .starts_with("Ethanol fuel -- ")
    );
    assert_eq!(boolq[0].label, Some(Label::Class(0)));
    let cb = real(Task::Cb, Split::Dev);
    assert_eq!(cb[0].text_pair.as_deref(), Some("Valence was helping"));
    assert_eq!(cb[0].label, Some(Label::Class(1))); // contradiction
    let rte = real(Task::SgRte, Split::Train);
    assert_eq!(
        rte[0].text,
        "No Weapons of Mass Destruction Found in Iraq Yet."
    );
    assert_eq!(rte[0].label, Some(Label::Class(1)));
    let axb = real(Task::AxB, Split::Test);
    assert_eq!(axb[0].id, "0");
    assert_eq!(axb[0].label, Some(Label::Class(1)));
    assert_eq!(axb[0].extra["logic"], "Negation");
    let axg = real(Task::AxG, Split::Test);
    assert_eq!(axg[0].group.as_deref(), Some("551646"));
    assert_eq!(axg[1].group.as_deref(), Some("551646"));
    assert_eq!(axg[1].extra["pair_id"], "551648");
    assert_eq!(
        axg[0].text_pair.as_deref(),
        Some("The accountant sought help filing taxes.")
    );
    // Winogender minimal pairs: same hypothesis and label, "his" vs "her".
    let mut pairs: BTreeMap<&str, Vec<&Example>> = BTreeMap::new();
    for e in &axg {
        pairs
            .entry(e.group.as_deref().unwrap())
            .or_default()
            .push(e);
    }
    assert_eq!(pairs.len(), 178);
    let ids: Vec<u64> = axg
        .iter()
        .map(|e| e.extra["pair_id"].parse().unwrap())
        .collect();
    let official = qattn_glue::metrics::gender_pairs(&ids).unwrap();
    assert_eq!(official.len(), 178);
    for (i, j) in official {
        assert_eq!(axg[i].group, axg[j].group, "AX-g examples {i} and {j}");
    }
    for p in pairs.values() {
        assert_eq!(p.len(), 2);
        assert_eq!((&p[0].text_pair, p[0].label), (&p[1].text_pair, p[1].label));
        assert_ne!(p[0].text, p[1].text);
    }
}

#[test]
fn copa_premise_question_and_choices() {
    let dev = real(Task::Copa, Split::Dev);
    assert_eq!(
        dev[0].text,
        "The man turned on the faucet. What was the effect?"
    );
    assert_eq!(
        dev[0].choices.as_deref(),
        Some(
            &[
                "The toilet filled with water.".to_string(),
                "Water flowed from the spout.".to_string()
            ][..]
        )
    );
    assert_eq!(dev[0].label, Some(Label::Class(1)));
    let train = real(Task::Copa, Split::Train);
    assert_eq!(
        train[0].text,
        "My body cast a shadow over the grass. What was the cause?"
    );
    assert_eq!(train[0].extra["question"], "cause");
}

#[test]
fn multirc_one_example_per_answer_grouped_by_question() {
    for (split, passages, questions) in [
        (Split::Train, 456, 5131),
        (Split::Dev, 83, 953),
        (Split::Test, 166, 1820),
    ] {
        let ex = real(Task::MultiRc, split);
        let groups: BTreeSet<&str> = ex.iter().map(|e| e.group.as_deref().unwrap()).collect();
        assert_eq!(groups.len(), questions, "{split} questions");
        let ps: BTreeSet<&str> = ex.iter().map(|e| e.extra["passage_idx"].as_str()).collect();
        assert_eq!(ps.len(), passages, "{split} passages");
        for e in &ex {
            let x = &e.extra;
            assert_eq!(
                e.id,
                format!(
                    "{}-{}-{}",
                    x["passage_idx"], x["question_idx"], x["answer_idx"]
                )
            );
            assert_eq!(
                e.group.as_deref().unwrap(),
                format!("{}-{}", x["passage_idx"], x["question_idx"])
            );
        }
    }
    let dev = real(Task::MultiRc, Split::Dev);
    let e = &dev[0];
    assert_eq!(e.id, "0-0-0");
    assert!(e.text.starts_with("What causes a change in motion?"));
    let pair = e.text_pair.as_deref().unwrap();
    assert_eq!(
        pair,
        format!("{} {}", e.extra["question"], e.extra["answer"])
    );
}

#[test]
fn wic_marks_the_target_by_character_offsets() {
    let train = real(Task::Wic, Split::Train);
    assert_eq!(
        train[0].text,
        "Do you want to come over to my *place* later?"
    );
    assert_eq!(
        train[0].text_pair.as_deref(),
        Some("A political system with no *place* for the less prominent groups.")
    );
    assert_eq!(train[0].extra["word"], "place");
    assert_eq!(train[0].label, Some(Label::Class(0)));
    // Offsets count characters, not bytes: ī in "Papīra" precedes the target.
    let krona = train.iter().find(|e| e.id == "860").unwrap();
    assert!(
        krona
            .text_pair
            .as_deref()
            .unwrap()
            .contains("Papīra *krona* --"),
        "{krona:?}"
    );
    for split in Split::ALL {
        for e in real(Task::Wic, split) {
            // At least the two marks ("2*x" in train shows the text may hold '*' itself).
            for s in [e.text.as_str(), e.text_pair.as_deref().unwrap()] {
                assert!(s.matches('*').count() >= 2, "{s}");
            }
        }
    }
}

#[test]
fn wsc_marks_candidate_and_pronoun() {
    let train = real(Task::Wsc, Split::Train);
    let e = &train[0];
    assert_eq!(
        e.text,
        "*Mark* told Pete many lies about himself, which Pete included in his book. [He] should \
         have been more skeptical."
    );
    assert_eq!(e.text_pair.as_deref(), Some("He refers to Mark."));
    assert_eq!(e.label, Some(Label::Class(0)));
    assert_eq!(e.extra["span1_text"], "Mark");
    // Punctuation stays outside the marks ("him,\"" → "[him],\"").
    let pony = train.iter().find(|e| e.id == "137").unwrap();
    assert!(pony.text.contains("the *pony* ,"), "{}", pony.text);
    assert!(
        pony.text.contains("\"Good for [him],\" he said."),
        "{}",
        pony.text
    );
    // val idx 42: the official span2_index points at "use"; the pronoun "it" follows it.
    let dev = real(Task::Wsc, Split::Dev);
    let e42 = dev.iter().find(|e| e.id == "42").unwrap();
    assert!(e42.text.contains("want to use [it]"), "{}", e42.text);
    assert_eq!(e42.extra["span2_index"], "30");
    assert_eq!(e42.extra["span2_marked_index"], "31");
    // Possessive: the mark closes before "'s".
    let test = real(Task::Wsc, Split::Test);
    let e51 = test.iter().find(|e| e.id == "51").unwrap();
    assert!(e51.text.contains("that *Mark*'s legs"), "{}", e51.text);
    // test idx 81: "Stalin and Kamenev" is not at the official index 4 but occurs at 14.
    let e81 = test.iter().find(|e| e.id == "81").unwrap();
    assert!(
        e81.text.contains("who with *Stalin and Kamenev* had"),
        "{}",
        e81.text
    );
    assert_eq!(e81.extra["span1_marked_index"], "14");
    // test idx 80: "Kamenev and Zinoviev" is not contiguous; its first word is marked.
    let e80 = test.iter().find(|e| e.id == "80").unwrap();
    assert!(
        e80.text
            .starts_with("Kotkin describes how Lev *Kamenev*, Stalin's"),
        "{}",
        e80.text
    );
    assert_eq!(
        e80.text_pair.as_deref(),
        Some("them refers to Kamenev and Zinoviev.")
    );
    for split in Split::ALL {
        for e in real(Task::Wsc, split) {
            assert_eq!(e.text.matches('[').count(), 1, "{}", e.text);
            assert_eq!(e.text.matches('*').count(), 2, "{}", e.text);
        }
    }
}

#[test]
fn handmade_qqp_skips_the_malformed_row() {
    let dir = hand_dir();
    let loaded = load(Task::Qqp, Split::Train, &dir).unwrap();
    let ids: Vec<&str> = loaded.examples.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["17", "18", "20"]);
    // The record broken by a newline inside question1 spans lines 4 and 5.
    let lines: Vec<usize> = loaded.skipped.iter().map(|s| s.line).collect();
    assert_eq!(lines, [4, 5]);
    assert!(
        loaded.skipped[0].reason.contains("expected 6"),
        "{:?}",
        loaded.skipped
    );
    let e = &loaded.examples[0];
    assert_eq!(e.text, "How do I learn to play the violin as an adult?");
    assert_eq!(e.label, Some(Label::Class(1)));
    assert_eq!(
        (e.extra["qid1"].as_str(), e.extra["qid2"].as_str()),
        ("101", "102")
    );
    // No quote processing (QUOTE_NONE).
    assert_eq!(loaded.examples[2].text, "Is \"quoted text\" kept as-is?");
    assert_eq!(hand(Task::Qqp, Split::Dev).len(), 2);
    let test = hand(Task::Qqp, Split::Test);
    assert_eq!(test.len(), 3);
    assert_eq!(test[2].text, "What does a \"null\" value mean?");
    assert!(test.iter().all(|e| e.label.is_none() && e.extra.is_empty()));
}

#[test]
fn handmade_mnli_matched_and_mismatched() {
    let train_m = hand(Task::MnliMatched, Split::Train);
    assert_eq!(train_m, hand(Task::MnliMismatched, Split::Train));
    let labels: Vec<_> = train_m.iter().map(|e| e.label.unwrap()).collect();
    assert_eq!(labels, [Label::Class(1), Label::Class(0), Label::Class(2)]);
    let dev_m = hand(Task::MnliMatched, Split::Dev);
    assert_eq!(dev_m.len(), 4);
    assert_eq!(dev_m[0].text, "The new rules are fair enough.");
    assert_eq!(
        dev_m[0].text_pair.as_deref(),
        Some("Everyone loves the newest rules. ")
    );
    // gold_label (last column), not label1.
    assert_eq!(dev_m[0].label, Some(Label::Class(1)));
    assert_eq!(dev_m[0].extra["pairID"], "63735n");
    assert_eq!(dev_m[0].extra["genre"], "slate");
    let dev_mm = hand(Task::MnliMismatched, Split::Dev);
    assert_eq!(dev_mm.len(), 3);
    assert_eq!(dev_mm[0].extra["genre"], "letters");
    assert_eq!(dev_mm[2].label, Some(Label::Class(1)));
    let test_m = hand(Task::MnliMatched, Split::Test);
    let test_mm = hand(Task::MnliMismatched, Split::Test);
    assert_eq!((test_m.len(), test_mm.len()), (2, 3));
    assert!(test_m.iter().chain(&test_mm).all(|e| e.label.is_none()));
    assert_eq!(test_mm[1].text, "Tea is grown on the hills.");
    assert_eq!(test_mm[1].id, "1");
}

#[test]
fn handmade_qnli_train_and_boolq_train() {
    let qnli = hand(Task::Qnli, Split::Train);
    assert_eq!(qnli.len(), 3);
    assert_eq!(qnli[0].text, "When did the bridge open?");
    assert_eq!(qnli[1].label, Some(Label::Class(1)));
    // A stray leading quote is kept verbatim.
    assert_eq!(
        qnli[2].text_pair.as_deref(),
        Some("\"The main span is 1,280 metres long.")
    );
    let boolq = hand(Task::BoolQ, Split::Train);
    assert_eq!(boolq.len(), 3);
    assert_eq!(boolq[0].text, "is the moon larger than pluto");
    let labels: Vec<_> = boolq.iter().map(|e| e.label.unwrap()).collect();
    assert_eq!(labels, [Label::Class(1), Label::Class(0), Label::Class(1)]);
}

#[test]
fn handmade_record_candidates() {
    let train = hand(Task::Record, Split::Train);
    // Passage 0: 8 unique entities × 2 queries; passage 1: 6 entities × 1 query.
    assert_eq!(train.len(), 8 * 2 + 6);
    let q0: Vec<&Example> = train
        .iter()
        .filter(|e| e.group.as_deref() == Some("0"))
        .collect();
    let entities: Vec<&str> = q0.iter().map(|e| e.extra["entity"].as_str()).collect();
    // Sorted unique entity texts; offsets are inclusive character offsets (Zürich is not ASCII).
    assert_eq!(
        entities,
        [
            "Anna Meier",
            "CNN",
            "German",
            "Germany",
            "Italy",
            "Lucerne",
            "Swiss",
            "Zürich"
        ]
    );
    let gold: Vec<&str> = q0
        .iter()
        .filter(|e| e.label == Some(Label::Class(1)))
        .map(|e| e.extra["entity"].as_str())
        .collect();
    assert_eq!(gold, ["German", "Germany"]);
    assert_eq!(q0[3].id, "0-3");
    assert_eq!(
        q0[3].text_pair.as_deref(),
        Some("Germany crews won the eight at the regatta.")
    );
    assert_eq!(q0[3].extra["answers"], r#"["German","Germany"]"#);
    assert_eq!(q0[3].extra["passage_idx"], "0");
    // @highlight bullets are joined into sentences.
    assert!(q0[0].text.starts_with("Zürich (CNN) -- The Swiss town"));
    assert!(
        q0[0].text.ends_with(
            "to victory. Germany won the eight in Lucerne. Italy took silver, Anna Meier said"
        ),
        "{}",
        q0[0].text
    );
    assert!(!q0[0].text.contains("@highlight"));
    let q2: Vec<&Example> = train
        .iter()
        .filter(|e| e.group.as_deref() == Some("2"))
        .collect();
    assert_eq!(q2.len(), 6);
    assert_eq!(
        q2.iter()
            .filter(|e| e.label == Some(Label::Class(1)))
            .count(),
        1
    );
    let val = hand(Task::Record, Split::Dev);
    assert_eq!(val.len(), 3);
    let test = hand(Task::Record, Split::Test);
    assert_eq!(test.len(), 3);
    assert!(
        test.iter()
            .all(|e| e.label.is_none() && !e.extra.contains_key("answers"))
    );
    assert_eq!(
        test[2].text_pair.as_deref(),
        Some("Staff in Paris voted to end the strike.")
    );
}

#[test]
fn missing_file_names_the_path_and_how_to_fetch_it() {
    let tmp = tempfile::tempdir().unwrap();
    let err = read(Task::Qqp, Split::Train, tmp.path()).unwrap_err();
    let want = tmp.path().join("glue/QQP/train.tsv");
    match &err {
        Error::Missing { path, hint } => {
            assert_eq!(path, &want);
            assert!(hint.contains("qattn data fetch glue --tasks qqp"), "{hint}");
            assert!(hint.contains("QATTN_DATA_DIR"), "{hint}");
        }
        e => panic!("expected Missing, got {e:?}"),
    }
    assert!(err.to_string().contains(&want.display().to_string()));
    let err = read(Task::Record, Split::Dev, tmp.path()).unwrap_err();
    assert!(
        err.to_string().contains("superglue/ReCoRD/val.jsonl"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("qattn data fetch superglue --tasks record"),
        "{err}"
    );
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn format_line(err: Error) -> (PathBuf, usize, String) {
    match err {
        Error::Format {
            path,
            line,
            message,
        } => (path, line, message),
        e => panic!("expected Format, got {e:?}"),
    }
}

#[test]
fn malformed_lines_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A short row in RTE (not skipped: only QQP skips).
    write(
        d,
        "glue/RTE/dev.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n",
    );
    let (path, line, msg) = format_line(read(Task::Rte, Split::Dev, d).unwrap_err());
    assert_eq!((path, line), (d.join("glue/RTE/dev.tsv"), 3));
    assert!(msg.contains("expected 4"), "{msg}");
    // An unknown label.
    write(
        d,
        "glue/RTE/train.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tneutral\n",
    );
    let (_, line, msg) = format_line(read(Task::Rte, Split::Train, d).unwrap_err());
    assert_eq!(line, 2);
    assert!(msg.contains("\"neutral\""), "{msg}");
    // A bad score.
    write(
        d,
        "glue/STS-B/dev.tsv",
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n\
         0\tg\tf\ty\t0\tn\tn\ta\tb\tfive\n",
    );
    let (_, line, msg) = format_line(read(Task::Stsb, Split::Dev, d).unwrap_err());
    assert_eq!(line, 2);
    assert!(msg.contains("\"five\""), "{msg}");
    // A missing header column names it.
    write(d, "glue/WNLI/dev.tsv", "index\tsentence1\tlabel\n0\ta\t1\n");
    let (_, line, msg) = format_line(read(Task::Wnli, Split::Dev, d).unwrap_err());
    assert_eq!(line, 1);
    assert!(msg.contains("\"sentence2\""), "{msg}");
    // Invalid JSON on line 2 of a JSONL file.
    write(
        d,
        "superglue/CB/val.jsonl",
        "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": \"neutral\", \"idx\": 0}\n{\"premise\": \n",
    );
    let (path, line, msg) = format_line(read(Task::Cb, Split::Dev, d).unwrap_err());
    assert_eq!((path, line), (d.join("superglue/CB/val.jsonl"), 2));
    assert!(msg.contains("invalid JSON"), "{msg}");
    // A missing field in a labelled split, named with its path in the object.
    write(
        d,
        "superglue/MultiRC/val.jsonl",
        "\n{\"idx\": 0, \"passage\": {\"text\": \"t\", \"questions\": [{\"question\": \"q\", \"idx\": 0, \
         \"answers\": [{\"text\": \"a\", \"idx\": 0}]}]}}\n",
    );
    let (_, line, msg) = format_line(read(Task::MultiRc, Split::Dev, d).unwrap_err());
    assert_eq!(line, 2);
    assert!(
        msg.contains("passage.questions[0].answers[0].label"),
        "{msg}"
    );
    // WiC offsets past the sentence.
    write(
        d,
        "superglue/WiC/test.jsonl",
        "{\"word\": \"w\", \"sentence1\": \"ab\", \"sentence2\": \"cd\", \"idx\": 0, \"start1\": 0, \
         \"end1\": 9, \"start2\": 0, \"end2\": 1}\n",
    );
    let (_, line, msg) = format_line(read(Task::Wic, Split::Test, d).unwrap_err());
    assert_eq!(line, 1);
    assert!(msg.contains("end1"), "{msg}");
}

#[test]
fn splits_a_task_lacks_are_invalid() {
    let d = real_dir();
    for (task, split) in [
        (Task::Ax, Split::Train),
        (Task::AxB, Split::Dev),
        (Task::AxG, Split::Train),
    ] {
        match read(task, split, &d) {
            Err(Error::Invalid(m)) => assert!(m.contains("has no"), "{m}"),
            r => panic!("{task} {split}: {r:?}"),
        }
    }
}

#[test]
fn task_table() {
    assert_eq!(Task::ALL.len(), 21);
    for t in Task::ALL {
        assert_eq!(Task::from_name(t.name()).unwrap(), t);
        assert_eq!(t.name().parse::<Task>().unwrap(), t);
        assert!(!t.metrics().is_empty());
        assert!(!t.splits().is_empty());
    }
    let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
    assert_eq!(
        names.join(","),
        "cola,sst2,mrpc,stsb,qqp,mnli-m,mnli-mm,qnli,rte,wnli,ax,boolq,cb,copa,multirc,record,\
         sg-rte,wic,wsc,axb,axg"
    );
    for (s, t) in [
        ("CoLA", Task::Cola),
        ("SST-2", Task::Sst2),
        ("STS-B", Task::Stsb),
        ("MNLI", Task::MnliMatched),
        ("mnli", Task::MnliMatched),
        ("MNLI-mm", Task::MnliMismatched),
        ("RTE", Task::Rte),
        ("AX-b", Task::AxB),
        ("AX-g", Task::AxG),
        ("BoolQ", Task::BoolQ),
        ("ReCoRD", Task::Record),
        ("mnli_mismatched", Task::MnliMismatched),
    ] {
        assert_eq!(Task::from_name(s).unwrap(), t, "{s}");
    }
    match Task::from_name("squad") {
        Err(Error::Invalid(m)) => {
            for n in names {
                assert!(m.contains(n), "{m} lacks {n}");
            }
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(Task::Cola.metrics(), ["mcc"]);
    assert_eq!(Task::Mrpc.metrics(), ["f1", "accuracy"]);
    assert_eq!(Task::Stsb.metrics(), ["pearson", "spearman"]);
    assert_eq!(Task::Cb.metrics(), ["accuracy", "f1_macro"]);
    assert_eq!(Task::MultiRc.metrics(), ["f1a", "em"]);
    assert_eq!(Task::Record.metrics(), ["f1", "em"]);
    assert_eq!(Task::AxG.metrics(), ["accuracy", "gender_parity"]);
    assert_eq!(Task::Copa.kind(), TaskKind::MultipleChoice { choices: 2 });
    assert_eq!(Task::Record.kind(), TaskKind::CandidateScoring);
    assert_eq!(Task::Stsb.kind(), TaskKind::Regression);
    assert_eq!(
        Task::Cb.labels().unwrap(),
        ["entailment", "contradiction", "neutral"]
    );
    assert_eq!(
        Task::Ax.labels().unwrap(),
        ["entailment", "neutral", "contradiction"]
    );
    assert_eq!(Task::MultiRc.labels().unwrap(), ["False", "True"]);
    assert_eq!(
        Task::MnliMismatched.file(Split::Dev),
        Some("dev_mismatched.tsv")
    );
    assert_eq!(
        Task::MnliMatched.file(Split::Test),
        Some("test_matched.tsv")
    );
    assert_eq!(Task::Ax.file(Split::Test), Some("AX.tsv"));
    assert_eq!(Task::Ax.file(Split::Dev), None);
    assert_eq!(Task::Wic.file(Split::Dev), Some("val.jsonl"));
    assert_eq!(Task::AxB.splits(), [Split::Test]);
    assert_eq!(
        Task::SgRte.path(Split::Dev, Path::new("D")),
        Some(PathBuf::from("D/superglue/RTE/val.jsonl"))
    );
    let subs: Vec<&str> = Task::ALL.iter().map(|t| t.submission_name()).collect();
    assert_eq!(
        subs.join(","),
        "CoLA.tsv,SST-2.tsv,MRPC.tsv,STS-B.tsv,QQP.tsv,MNLI-m.tsv,MNLI-mm.tsv,QNLI.tsv,RTE.tsv,\
         WNLI.tsv,AX.tsv,BoolQ.jsonl,CB.jsonl,COPA.jsonl,MultiRC.jsonl,ReCoRD.jsonl,RTE.jsonl,\
         WiC.jsonl,WSC.jsonl,AX-b.jsonl,AX-g.jsonl"
    );
    assert_eq!(Benchmark::Glue.tasks().count(), 11);
    assert_eq!(Benchmark::SuperGlue.tasks().count(), 10);
    assert_eq!(Split::from_name("val").unwrap(), Split::Dev);
    assert_eq!(Split::from_name("Validation").unwrap(), Split::Dev);
    assert!(Split::from_name("eval").is_err());
}

#[test]
fn data_dir_precedence() {
    assert_eq!(data_dir(Some(Path::new("/x/y"))), PathBuf::from("/x/y"));
    match std::env::var_os(tasks::DATA_DIR_ENV) {
        Some(v) if !v.is_empty() => assert_eq!(data_dir(None), PathBuf::from(v)),
        _ => assert_eq!(data_dir(None), tasks::default_data_dir()),
    }
    let p = |s: &str| Some(PathBuf::from(s));
    let r = tasks::resolve_data_dir;
    // Explicit, then QATTN_DATA_DIR, then the per-user directory; never ../shared/data.
    assert_eq!(
        r(Some(Path::new("/d")), p("/e"), p("/x"), p("/h")),
        PathBuf::from("/d")
    );
    assert_eq!(r(None, p("/e"), p("/x"), p("/h")), PathBuf::from("/e"));
    assert_eq!(
        r(None, None, p("/x"), p("/h")),
        PathBuf::from("/x/qattn/data")
    );
    assert_eq!(
        r(None, None, None, p("/h")),
        PathBuf::from("/h/.local/share/qattn/data")
    );
    // Empty values are unset; a relative XDG_DATA_HOME is ignored (XDG Base Directory spec).
    assert_eq!(
        r(None, p(""), p("rel"), p("/h")),
        PathBuf::from("/h/.local/share/qattn/data")
    );
    assert_eq!(r(None, None, None, None), PathBuf::from("qattn-data"));
}
