//! Task definitions and readers for the official GLUE / SuperGLUE file layouts.
//!
//! A data directory holds `glue/<DIR>/<file>` and `superglue/<DIR>/<file>` exactly as the
//! official downloads unpack ([`Task::dir_name`], [`Task::file`]); [`data_dir`] finds it and
//! [`read`] turns one task split into [`Example`]s.
//!
//! # Input mapping
//!
//! Every task becomes a single text or a text pair (plus `choices` for COPA), so one
//! sequence-classification model can run all of them:
//!
//! | task | `text` | `text_pair` | label / notes |
//! |---|---|---|---|
//! | CoLA, SST-2 | sentence | – | `"0"`/`"1"` |
//! | MRPC, STS-B, RTE, WNLI, AX, QQP, MNLI | first sentence / question | second | MNLI/AX `entailment, neutral, contradiction` |
//! | QNLI | question | sentence | |
//! | BoolQ | question | passage | `False`/`True` |
//! | CB, RTE (SuperGLUE), AX-g | premise | hypothesis | AX-g: `group` = the minimal pair's lower `pair_id` |
//! | AX-b | sentence1 | sentence2 | annotation columns in `extra` |
//! | COPA | premise + `" What was the cause?"` / `" What was the effect?"` | – | `choices` = [choice1, choice2], label = index |
//! | MultiRC | passage | question + `" "` + answer option | one example per answer option, `group` = `"{p}-{q}"` |
//! | ReCoRD | passage (`@highlight` lines joined into sentences) | query with `@placeholder` replaced by the candidate | one example per (query, candidate entity), `group` = query idx, label `1` = gold |
//! | WiC | sentence1 with the target `*marked*` | sentence2 with the target `*marked*` | marks from the official character offsets |
//! | WSC | text with the candidate `*marked*` and the pronoun in `[brackets]` | `"{pronoun} refers to {candidate}."` | |
//!
//! Example ids are the official ones used in submissions: the `index`/`id` column of GLUE files
//! that have one (else the 0-based data-row number, as the Hugging Face loader numbers them),
//! and `idx` of SuperGLUE files (MultiRC `"{p}-{q}-{a}"`, ReCoRD `"{query idx}-{k}"`).

mod glue;
mod superglue;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The environment variable naming the data directory (see [`data_dir`]).
pub const DATA_DIR_ENV: &str = "QATTN_DATA_DIR";

/// The data directory under the per-user data folder: `$XDG_DATA_HOME/qattn/data`, else
/// `$HOME/.local/share/qattn/data` (see [`default_data_dir`]).
pub const USER_DATA_SUBDIR: &str = "qattn/data";

/// The two benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Benchmark {
    /// GLUE (Wang et al., 2019).
    Glue,
    /// SuperGLUE (Wang et al., 2019).
    SuperGlue,
}

impl Benchmark {
    /// `"glue"` or `"superglue"`: the name and the directory under the data directory.
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Glue => "glue",
            Benchmark::SuperGlue => "superglue",
        }
    }

    /// The tasks of this benchmark, in [`Task::ALL`] order.
    pub fn tasks(self) -> impl Iterator<Item = Task> {
        Task::ALL.into_iter().filter(move |t| t.benchmark() == self)
    }
}

impl fmt::Display for Benchmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A GLUE or SuperGLUE task (the MNLI matched and mismatched evaluations are separate tasks
/// sharing one training set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    /// GLUE CoLA: acceptability (MCC).
    Cola,
    /// GLUE SST-2: sentiment.
    Sst2,
    /// GLUE MRPC: paraphrase.
    Mrpc,
    /// GLUE STS-B: similarity score 0–5 (regression).
    Stsb,
    /// GLUE QQP: duplicate questions.
    Qqp,
    /// GLUE MNLI, matched dev/test.
    MnliMatched,
    /// GLUE MNLI, mismatched dev/test.
    MnliMismatched,
    /// GLUE QNLI: question/sentence entailment.
    Qnli,
    /// GLUE RTE.
    Rte,
    /// GLUE WNLI.
    Wnli,
    /// GLUE diagnostic (AX): test only, scored with an MNLI model.
    Ax,
    /// SuperGLUE BoolQ: yes/no questions.
    BoolQ,
    /// SuperGLUE CommitmentBank.
    Cb,
    /// SuperGLUE COPA: choice of plausible alternatives.
    Copa,
    /// SuperGLUE MultiRC: each answer option true/false, grouped by question.
    MultiRc,
    /// SuperGLUE ReCoRD: cloze-style entity choice.
    Record,
    /// SuperGLUE RTE (same data as GLUE RTE, JSONL format).
    SgRte,
    /// SuperGLUE WiC: word in context.
    Wic,
    /// SuperGLUE WSC: Winograd coreference.
    Wsc,
    /// SuperGLUE broad-coverage diagnostic (AX-b): test only, scored with an RTE model.
    AxB,
    /// SuperGLUE Winogender diagnostic (AX-g): test only, scored with an RTE model.
    AxG,
}

/// What a task predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// One class per example; [`Label::Class`] indexes `labels` (the official label strings).
    /// MultiRC is this too: each answer option is classified, and grouped by question.
    Classification {
        /// The label vocabulary.
        labels: &'static [&'static str],
    },
    /// A real-valued score ([`Label::Score`]).
    Regression,
    /// Pick one of `choices` alternatives ([`Example::choices`]); [`Label::Class`] is its index.
    MultipleChoice {
        /// Number of alternatives.
        choices: usize,
    },
    /// Score every candidate of a group and pick the best (ReCoRD). Each example is one
    /// candidate; [`Label::Class`]`(1)` marks a gold candidate, `Class(0)` the others.
    CandidateScoring,
}

const BINARY: &[&str] = &["0", "1"];
const NLI2: &[&str] = &["entailment", "not_entailment"];
const NLI3: &[&str] = &["entailment", "neutral", "contradiction"];
const CB_LABELS: &[&str] = &["entailment", "contradiction", "neutral"];
const BOOL: &[&str] = &["False", "True"];

impl Task {
    /// All tasks: GLUE first, then SuperGLUE, in leaderboard order.
    pub const ALL: [Task; 21] = [
        Task::Cola,
        Task::Sst2,
        Task::Mrpc,
        Task::Stsb,
        Task::Qqp,
        Task::MnliMatched,
        Task::MnliMismatched,
        Task::Qnli,
        Task::Rte,
        Task::Wnli,
        Task::Ax,
        Task::BoolQ,
        Task::Cb,
        Task::Copa,
        Task::MultiRc,
        Task::Record,
        Task::SgRte,
        Task::Wic,
        Task::Wsc,
        Task::AxB,
        Task::AxG,
    ];

    /// The command-line name: `cola, sst2, mrpc, stsb, qqp, mnli-m, mnli-mm, qnli, rte, wnli,
    /// ax, boolq, cb, copa, multirc, record, sg-rte, wic, wsc, axb, axg`.
    pub fn name(self) -> &'static str {
        match self {
            Task::Cola => "cola",
            Task::Sst2 => "sst2",
            Task::Mrpc => "mrpc",
            Task::Stsb => "stsb",
            Task::Qqp => "qqp",
            Task::MnliMatched => "mnli-m",
            Task::MnliMismatched => "mnli-mm",
            Task::Qnli => "qnli",
            Task::Rte => "rte",
            Task::Wnli => "wnli",
            Task::Ax => "ax",
            Task::BoolQ => "boolq",
            Task::Cb => "cb",
            Task::Copa => "copa",
            Task::MultiRc => "multirc",
            Task::Record => "record",
            Task::SgRte => "sg-rte",
            Task::Wic => "wic",
            Task::Wsc => "wsc",
            Task::AxB => "axb",
            Task::AxG => "axg",
        }
    }

    /// Parses a task name, case-insensitively, with `_` read as `-`. Accepts [`Task::name`]
    /// and the official spellings: `CoLA`, `SST-2`, `STS-B`, `MNLI` (= matched),
    /// `MNLI-matched`, `MNLI-mismatched`, `RTE` (the GLUE task; SuperGLUE's is `sg-rte`),
    /// `AX-b`, `AX-g`. Anything else is [`Error::Invalid`] listing every name.
    pub fn from_name(s: &str) -> Result<Task> {
        let key = s.trim().to_ascii_lowercase().replace('_', "-");
        if let Some(t) = Task::ALL.into_iter().find(|t| t.name() == key) {
            return Ok(t);
        }
        let t = match key.as_str() {
            "sst-2" => Task::Sst2,
            "sts-b" => Task::Stsb,
            "mnli" | "mnli-matched" => Task::MnliMatched,
            "mnli-mismatched" => Task::MnliMismatched,
            "ax-b" => Task::AxB,
            "ax-g" => Task::AxG,
            "sgrte" | "superglue-rte" => Task::SgRte,
            _ => {
                let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
                return Err(Error::Invalid(format!(
                    "unknown task {s:?}; expected one of: {} (official spellings such as \
                     CoLA, SST-2, STS-B, MNLI, AX-b, AX-g are accepted too)",
                    names.join(", ")
                )));
            }
        };
        Ok(t)
    }

    /// The benchmark the task belongs to.
    pub fn benchmark(self) -> Benchmark {
        match self {
            Task::Cola
            | Task::Sst2
            | Task::Mrpc
            | Task::Stsb
            | Task::Qqp
            | Task::MnliMatched
            | Task::MnliMismatched
            | Task::Qnli
            | Task::Rte
            | Task::Wnli
            | Task::Ax => Benchmark::Glue,
            _ => Benchmark::SuperGlue,
        }
    }

    /// What the task predicts, with its label vocabulary.
    pub fn kind(self) -> TaskKind {
        let labels = match self {
            Task::Stsb => return TaskKind::Regression,
            Task::Copa => return TaskKind::MultipleChoice { choices: 2 },
            Task::Record => return TaskKind::CandidateScoring,
            Task::Cola | Task::Sst2 | Task::Mrpc | Task::Qqp | Task::Wnli => BINARY,
            Task::MnliMatched | Task::MnliMismatched | Task::Ax => NLI3,
            Task::Qnli | Task::Rte | Task::SgRte | Task::AxB | Task::AxG => NLI2,
            Task::Cb => CB_LABELS,
            Task::BoolQ | Task::MultiRc | Task::Wic | Task::Wsc => BOOL,
        };
        TaskKind::Classification { labels }
    }

    /// The label vocabulary of a classification task, `None` otherwise.
    pub fn labels(self) -> Option<&'static [&'static str]> {
        match self.kind() {
            TaskKind::Classification { labels } => Some(labels),
            _ => None,
        }
    }

    /// The official metrics, leaderboard's main metric first where it has one.
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Task::Cola | Task::Ax | Task::AxB => &["mcc"],
            Task::Mrpc | Task::Qqp => &["f1", "accuracy"],
            Task::Stsb => &["pearson", "spearman"],
            Task::Cb => &["accuracy", "f1_macro"],
            Task::MultiRc => &["f1a", "em"],
            Task::Record => &["f1", "em"],
            Task::AxG => &["accuracy", "gender_parity"],
            Task::Sst2
            | Task::MnliMatched
            | Task::MnliMismatched
            | Task::Qnli
            | Task::Rte
            | Task::Wnli
            | Task::BoolQ
            | Task::Copa
            | Task::SgRte
            | Task::Wic
            | Task::Wsc => &["accuracy"],
        }
    }

    /// The official directory under `glue/` or `superglue/`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Task::Cola => "CoLA",
            Task::Sst2 => "SST-2",
            Task::Mrpc => "MRPC",
            Task::Stsb => "STS-B",
            Task::Qqp => "QQP",
            Task::MnliMatched | Task::MnliMismatched => "MNLI",
            Task::Qnli => "QNLI",
            Task::Rte | Task::SgRte => "RTE",
            Task::Wnli => "WNLI",
            Task::Ax => "AX",
            Task::BoolQ => "BoolQ",
            Task::Cb => "CB",
            Task::Copa => "COPA",
            Task::MultiRc => "MultiRC",
            Task::Record => "ReCoRD",
            Task::Wic => "WiC",
            Task::Wsc => "WSC",
            Task::AxB => "AX-b",
            Task::AxG => "AX-g",
        }
    }

    /// The official file of a split, `None` where the task has no such split (the
    /// diagnostics are test-only).
    pub fn file(self, split: Split) -> Option<&'static str> {
        match (self, split) {
            (Task::Ax, Split::Test) => Some("AX.tsv"),
            (Task::AxB, Split::Test) => Some("AX-b.jsonl"),
            (Task::AxG, Split::Test) => Some("AX-g.jsonl"),
            (Task::Ax | Task::AxB | Task::AxG, _) => None,
            (Task::MnliMatched | Task::MnliMismatched, Split::Train) => Some("train.tsv"),
            (Task::MnliMatched, Split::Dev) => Some("dev_matched.tsv"),
            (Task::MnliMatched, Split::Test) => Some("test_matched.tsv"),
            (Task::MnliMismatched, Split::Dev) => Some("dev_mismatched.tsv"),
            (Task::MnliMismatched, Split::Test) => Some("test_mismatched.tsv"),
            (t, s) => Some(match (t.benchmark(), s) {
                (Benchmark::Glue, Split::Train) => "train.tsv",
                (Benchmark::Glue, Split::Dev) => "dev.tsv",
                (Benchmark::Glue, Split::Test) => "test.tsv",
                (Benchmark::SuperGlue, Split::Train) => "train.jsonl",
                (Benchmark::SuperGlue, Split::Dev) => "val.jsonl",
                (Benchmark::SuperGlue, Split::Test) => "test.jsonl",
            }),
        }
    }

    /// The splits the task has ([`Task::file`] is `Some`).
    pub fn splits(self) -> Vec<Split> {
        Split::ALL
            .into_iter()
            .filter(|&s| self.file(s).is_some())
            .collect()
    }

    /// `data_dir/<benchmark>/<dir_name>/<file>`, `None` where the split does not exist.
    pub fn path(self, split: Split, data_dir: &Path) -> Option<PathBuf> {
        let file = self.file(split)?;
        Some(
            data_dir
                .join(self.benchmark().name())
                .join(self.dir_name())
                .join(file),
        )
    }

    /// The file name of the task's predictions in a leaderboard submission (GLUE: TSV,
    /// SuperGLUE: JSONL).
    pub fn submission_name(self) -> &'static str {
        match self {
            Task::Cola => "CoLA.tsv",
            Task::Sst2 => "SST-2.tsv",
            Task::Mrpc => "MRPC.tsv",
            Task::Stsb => "STS-B.tsv",
            Task::Qqp => "QQP.tsv",
            Task::MnliMatched => "MNLI-m.tsv",
            Task::MnliMismatched => "MNLI-mm.tsv",
            Task::Qnli => "QNLI.tsv",
            Task::Rte => "RTE.tsv",
            Task::Wnli => "WNLI.tsv",
            Task::Ax => "AX.tsv",
            Task::BoolQ => "BoolQ.jsonl",
            Task::Cb => "CB.jsonl",
            Task::Copa => "COPA.jsonl",
            Task::MultiRc => "MultiRC.jsonl",
            Task::Record => "ReCoRD.jsonl",
            Task::SgRte => "RTE.jsonl",
            Task::Wic => "WiC.jsonl",
            Task::Wsc => "WSC.jsonl",
            Task::AxB => "AX-b.jsonl",
            Task::AxG => "AX-g.jsonl",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Task> {
        Task::from_name(s)
    }
}

/// A data split. SuperGLUE calls the dev split `val`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// Training data.
    Train,
    /// Development / validation data (labelled).
    Dev,
    /// Test data (unlabelled, except the diagnostics AX-b and AX-g).
    Test,
}

impl Split {
    /// All splits.
    pub const ALL: [Split; 3] = [Split::Train, Split::Dev, Split::Test];

    /// `"train"`, `"dev"` or `"test"`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }

    /// Parses `train`, `dev` (also `val`, `validation`) or `test`, case-insensitively.
    pub fn from_name(s: &str) -> Result<Split> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "dev" | "val" | "validation" => Ok(Split::Dev),
            "test" => Ok(Split::Test),
            _ => Err(Error::Invalid(format!(
                "unknown split {s:?}; expected one of: train, dev (or val), test"
            ))),
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Split> {
        Split::from_name(s)
    }
}

/// A gold label (defined with the run records in qattn-train, which store it).
pub use qattn_train::records::Label;

/// One model input of a task (see the module docs for how each task maps onto it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The official example id used in submissions (see the module docs).
    pub id: String,
    /// The first segment.
    pub text: String,
    /// The second segment, for pair tasks.
    pub text_pair: Option<String>,
    /// The alternatives of a multiple-choice example (COPA).
    pub choices: Option<Vec<String>>,
    /// The gold label; `None` for unlabelled test data.
    pub label: Option<Label>,
    /// The group the example is scored in: MultiRC `"{passage idx}-{question idx}"`, ReCoRD
    /// query idx, AX-g the minimal pair (same hypothesis, other pronoun gender) named by its
    /// lower `pair_id`: the files' `pair_id` is unique per example, and ids `p` and `p + 2`
    /// pair up when `(p + 2) / 4 == (p + 4) / 4`, as in the official gender-parity script
    /// ([`crate::metrics::gender_pairs`]).
    pub group: Option<String>,
    /// Task-specific fields (documented per task on [`read`]).
    pub extra: BTreeMap<String, String>,
}

impl Example {
    fn new(id: String, text: String, text_pair: Option<String>, label: Option<Label>) -> Example {
        Example {
            id,
            text,
            text_pair,
            choices: None,
            label,
            group: None,
            extra: BTreeMap::new(),
        }
    }
}

/// A data row the reader skipped (only QQP skips rows; see [`load`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// 1-based line in the file.
    pub line: usize,
    /// Why it was skipped.
    pub reason: String,
}

/// What [`load`] read: the examples and the rows it skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// Malformed rows skipped (QQP only; empty for every other task).
    pub skipped: Vec<SkippedRow>,
}

/// The data directory: `explicit` if given, else `$QATTN_DATA_DIR` if set and non-empty, else
/// the per-user [`default_data_dir`]. It holds `glue/` and `superglue/`.
pub fn data_dir(explicit: Option<&Path>) -> PathBuf {
    let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
    resolve_data_dir(
        explicit,
        var(DATA_DIR_ENV),
        var("XDG_DATA_HOME"),
        var("HOME"),
    )
}

/// The per-user data directory: `$XDG_DATA_HOME/qattn/data` when `XDG_DATA_HOME` is an absolute
/// path (the XDG Base Directory rule), else `$HOME/.local/share/qattn/data`, else (no home at
/// all) `qattn-data` in the current directory.
pub fn default_data_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
    resolve_data_dir(None, None, var("XDG_DATA_HOME"), var("HOME"))
}

/// [`data_dir`] as a pure function of the explicit directory and the values of
/// `QATTN_DATA_DIR`, `XDG_DATA_HOME` and `HOME` (empty values count as unset).
pub fn resolve_data_dir(
    explicit: Option<&Path>,
    qattn_data_dir: Option<PathBuf>,
    xdg_data_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> PathBuf {
    let set = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = set(qattn_data_dir) {
        return p;
    }
    if let Some(xdg) = set(xdg_data_home).filter(|p| p.is_absolute()) {
        return xdg.join(USER_DATA_SUBDIR);
    }
    match set(home) {
        Some(home) => home.join(".local/share").join(USER_DATA_SUBDIR),
        None => PathBuf::from("qattn-data"),
    }
}

/// Reads one split of a task from `data_dir` (see [`load`], which also reports skipped rows).
pub fn read(task: Task, split: Split, data_dir: &Path) -> Result<Vec<Example>> {
    load(task, split, data_dir).map(|l| l.examples)
}

/// Reads one split of a task from `data_dir/<benchmark>/<dir_name>/<file>`.
///
/// Files are read as the official loaders read them: GLUE TSVs are split on tabs with no quote
/// processing (Python's `csv.QUOTE_NONE`), a leading UTF-8 BOM is dropped (MRPC), `\r\n` line
/// ends are accepted; columns are found by header name (CoLA train/dev have no header: source,
/// label, original label, sentence). SuperGLUE JSONL is one JSON object a line; blank lines
/// are ignored.
///
/// `extra` holds: CoLA train/dev `source`, `original_label`; MRPC `id1`, `id2`; STS-B `genre`,
/// `filename`, `year`, `old_index`, `source1`, `source2`; QQP `qid1`, `qid2`; MNLI `promptID`,
/// `pairID`, `genre`; COPA `question` (`cause`/`effect`); MultiRC `passage_idx`,
/// `question_idx`, `answer_idx`, `question`, `answer`; ReCoRD `passage_idx`, `query_idx`,
/// `entity` (the candidate), `answers` (the gold answer texts as a JSON array, sorted, unique;
/// absent in test); WiC `word`, `start1`, `end1`, `start2`, `end2`; WSC `span1_text`,
/// `span1_index`, `span2_text`, `span2_index` (and `span1_marked_index` / `span2_marked_index`
/// where the official index had to be realigned, see below); AX-b its annotation fields
/// (`lexical-semantics`, `predicate-argument-structure`, `logic`, `knowledge`); AX-g
/// `pair_id` (unique per example).
///
/// Quirks handled:
/// - QQP: rows whose field count differs from the header's, whose id is empty or whose label
///   is not `0`/`1` are skipped and listed in [`Loaded::skipped`] (the Hugging Face loader
///   likewise drops rows with missing fields, and `run_glue` skips rows that raise
///   `IndexError`; a record broken by a newline inside a question shows up as two such
///   lines). Every other task fails on a malformed row.
/// - WiC offsets are character (code point) offsets, not bytes.
/// - WSC span indices count words of `text.split(' ')`; some official spans carry punctuation
///   or a possessive (`benefit,`, `Mark's`) — the mark goes around the span text only. Where
///   the words at the official index do not match the span text, the nearest matching
///   occurrence is marked instead (val idx 42, test idx 81); where the span text
///   occurs nowhere contiguously (test idx 80 and 82, e.g. "Kamenev and Zinoviev") only its
///   first word is marked, at its occurrence nearest the official index.
/// - ReCoRD entity `end` offsets are inclusive (as in the Hugging Face loader); candidates are
///   the unique entity texts, sorted.
///
/// Errors: [`Error::Missing`] when the file is absent (with how to fetch it), [`Error::Format`]
/// naming file and line for malformed content, [`Error::Invalid`] for a split the task does
/// not have.
pub fn load(task: Task, split: Split, data_dir: &Path) -> Result<Loaded> {
    let Some(path) = task.path(split, data_dir) else {
        let have: Vec<&str> = task.splits().iter().map(|s| s.name()).collect();
        return Err(Error::Invalid(format!(
            "task {task} has no {split} split (it has: {})",
            have.join(", ")
        )));
    };
    let text = read_file(task, &path, data_dir)?;
    match task.benchmark() {
        Benchmark::Glue => glue::read(task, split, &path, &text),
        Benchmark::SuperGlue => superglue::read(task, split, &path, &text),
    }
}

/// Reads `split` of `task` from an explicit file in the official format (e.g. the gold file
/// given to `qattn glue score`).
pub fn load_path(task: Task, split: Split, path: &Path) -> Result<Loaded> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let text = read_file(task, path, dir)?;
    match task.benchmark() {
        Benchmark::Glue => glue::read(task, split, path, &text),
        Benchmark::SuperGlue => superglue::read(task, split, path, &text),
    }
}

/// Reads a data file as UTF-8 text without a BOM.
fn read_file(task: Task, path: &Path, data_dir: &Path) -> Result<String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Missing {
                path: path.to_path_buf(),
                hint: format!(
                    "run `qattn data fetch {} --tasks {} --dest {}` or set {DATA_DIR_ENV}",
                    task.benchmark(),
                    task,
                    data_dir.display()
                ),
            });
        }
        Err(source) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        Error::Format {
            path: path.to_path_buf(),
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
            message: "not valid UTF-8".to_string(),
        }
    })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// The lines of a file, 1-based, without line ends (`\n` or `\r\n`); a final line end does
/// not start another line.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let empty = text.is_empty();
    body.split('\n')
        .filter(move |_| !empty)
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
}

fn format_err(path: &Path, line: usize, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// The class id of `value` in the task's vocabulary.
fn class_of(task: Task, value: &str) -> std::result::Result<usize, String> {
    let labels = task.labels().unwrap_or(&[]);
    labels
        .iter()
        .position(|&l| l == value)
        .ok_or_else(|| format!("label {value:?} is not one of {labels:?}"))
}
