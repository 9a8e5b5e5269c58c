//! The embedded synthetic long-range tasks of `qattn compare`, generated in code, with their
//! word-level tokenizer: [`majority`] (the default of `qattn compare`: a vote spread over many
//! keys) and key–value retrieval (below), both behind [`SyntheticSpec`].
//!
//! ## Key–value retrieval
//! Every example is one whitespace-separated text of exactly `seq_len` (L) words:
//!
//! ```text
//! q{key}  w₁ w₂ … w_{L-1}
//! ```
//!
//! - the first word is the **query** `q{key}`;
//! - `num_pairs` (P) of the other L − 1 positions, chosen uniformly without replacement,
//!   hold **pair tokens** `k{key}v{value}` — one word per (key, value) pair, so a single
//!   attention hop from the query reaches the answer. The P keys are distinct, drawn
//!   uniformly from `0..num_keys`; the queried key is one of them;
//! - every remaining position holds a **filler** `f{i}`, i uniform in `0..num_fillers`.
//!
//! The **label** is the value paired with the queried key, a class in `0..num_values` (V).
//! Labels are balanced exactly: example `i` of a split has label `i mod V`; the values of the
//! P − 1 distractor pairs are uniform in `0..V`. A hand-written [`oracle`] recovers every
//! label from the text.
//!
//! **Held-out positions.** The queried pair sits at a word position p (the query is word 0)
//! with p a multiple of [`HOLDOUT_EVERY`] (4) in the dev split and at any other position in
//! the train split, so no dev text occurs in training and dev accuracy measures retrieval
//! from positions never seen holding the answer. Dev example `i` takes the held-out position
//! `dev_positions()[(i / V) mod n]` (n = ⌊(L − 1)/4⌋ positions in a seeded order): a dev
//! split of V·n examples holds every (held-out position, class) combination exactly once.
//!
//! ## Needle detection ([`SyntheticTask::default`], task name `synthetic-needle`)
//! P = 1, one key, one filler word, V = 4, L = 256: the class of the single marker token
//! `k0v{c}` hidden among 254 copies of `f0` (after the constant query `q0`). The model reads
//! the sequence only through the `[CLS]` pooler, so it must learn to attend from `[CLS]` to
//! one token among 258 — a long-range retrieval with one peaked attention row, exactly what
//! a Monte-Carlo estimator has to find by sampling. Train: 1920 examples (markers at the 192
//! non-held-out positions); dev: 252 = 4 classes × 63 held-out positions, each once (with a
//! single filler word the dev texts do not depend on `data_seed`).
//! **Chance level: 1/V = 0.25** (labels are balanced, so a constant prediction scores
//! exactly 1/V on a split whose size is a multiple of V, within 1/n otherwise).
//!
//! This was the default of `qattn compare` until it was found to have no power: every system
//! reached 1.0 on every seed, so the verdict interval was [0, 0]. Measured on the shared
//! 2-core machine (one layer, hidden 64, 4 heads,
//! batch 16, 120 steps, about 0.2 s per step at L = 256, see [`crate::compare`]), exact
//! attention reaches dev accuracy 1.0 on seeds 1–3 with one filler word. With 2 or 4 filler
//! words seed 3 stays at chance, with 16 every tried seed does, and 2-layer retrieval with
//! P = 2 over four keys stays at chance after 200 steps: the random mix of fillers drowns the
//! 1/258 signal of the marker before attention has learnt to find it. The generator keeps
//! those settings for longer runs.
//!
//! The tokenizer ([`SyntheticTask::tokenizer`]) is a `tokenizers` WordLevel model built in
//! code — `[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3, then the query, pair and filler words —
//! with a whitespace pre-tokenizer and a `[CLS] … [SEP]` post-processor, so every example
//! encodes to exactly L + 2 tokens, and the ordinary `Dataset::from_records` / `Trainer`
//! path is used unchanged.
//!
//! ## Randomness
//! Every draw is Philox4x32-10 keyed by `data_seed`, with counter (example index, stream,
//! block, tag): the same task gives the same examples on every machine; train (stream 0),
//! dev (stream 1) and the order of the held-out positions (stream 2) never share draws. The run seed of
//! a fine-tuning run does not change the data — only initialisation, data order, dropout
//! and attention draws — so runs with different attention or seeds see the same examples.

pub mod majority;

pub use majority::{MajorityExample, MajorityTask, TASK_MAJORITY};

use crate::error::{Result, invalid};
use qattn_kernels::philox::philox4x32_10;
use qattn_model::Tokenizer;
use qattn_train::{Labels, Record};
use serde::{Deserialize, Serialize};

/// The token ids of the special tokens, in the order of [`SyntheticTask::vocab`].
pub const SPECIAL_TOKENS: [&str; 4] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"];

/// A split of the synthetic task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyntheticSplit {
    /// Training examples (Philox split id 0).
    Train,
    /// Development examples (Philox split id 1).
    Dev,
}

impl SyntheticSplit {
    fn id(self) -> u32 {
        match self {
            SyntheticSplit::Train => 0,
            SyntheticSplit::Dev => 1,
        }
    }

    /// `train` or `dev` (the prefix of example ids).
    pub fn name(self) -> &'static str {
        match self {
            SyntheticSplit::Train => "train",
            SyntheticSplit::Dev => "dev",
        }
    }
}

/// The generator's parameters; see the module docs for the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticTask {
    /// L: words per example, the query included (encodings have L + 2 tokens).
    pub seq_len: usize,
    /// Distinct keys.
    pub num_keys: usize,
    /// V: distinct values = classes.
    pub num_values: usize,
    /// P: (key, value) pair tokens per example, 1 ≤ P ≤ `num_keys`.
    pub num_pairs: usize,
    /// Distinct filler words.
    pub num_fillers: usize,
    /// Training examples.
    pub train_size: usize,
    /// Development examples.
    pub dev_size: usize,
    /// Seed of every draw of the generator.
    pub data_seed: u64,
}

impl Default for SyntheticTask {
    /// The setting of `qattn compare`: needle detection (one pair token, one filler word)
    /// over L = 256 words, 4 classes, 1920 train / 252 dev examples (every held-out marker
    /// position with every class, once).
    fn default() -> Self {
        SyntheticTask {
            seq_len: 256,
            num_keys: 1,
            num_values: 4,
            num_pairs: 1,
            num_fillers: 1,
            train_size: 1920,
            dev_size: 252,
            data_seed: 0x5eed_0001,
        }
    }
}

/// One generated example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticExample {
    /// `train-N` / `dev-N`: stable across runs, so predictions pair by id.
    pub id: String,
    /// The whitespace-separated words.
    pub text: String,
    /// The class: the value of the queried key.
    pub label: usize,
    /// The queried key.
    pub query: usize,
    /// (position among the L words, key, value) of every pair token, by position.
    pub pairs: Vec<(usize, usize, usize)>,
}

/// Dev markers sit at word positions that are multiples of this, train markers elsewhere.
pub const HOLDOUT_EVERY: usize = 4;

/// The task name of key–value retrieval (P ≥ 2 pairs) in run records.
pub const TASK_KV: &str = "synthetic-kv";
/// The task name of needle detection (P = 1) in run records.
pub const TASK_NEEDLE: &str = "synthetic-needle";

impl SyntheticTask {
    /// Checks the sizes; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(invalid(format!("synthetic task: {m}")));
        if self.seq_len < HOLDOUT_EVERY + 1 {
            return bad(format!(
                "seq_len = {} must be ≥ {} (a query and a held-out marker position)",
                self.seq_len,
                HOLDOUT_EVERY + 1
            ));
        }
        if self.num_values < 2 {
            return bad(format!("num_values = {} must be ≥ 2", self.num_values));
        }
        if self.num_keys == 0 {
            return bad("num_keys must be ≥ 1".into());
        }
        if self.num_pairs == 0 || self.num_pairs > self.num_keys {
            return bad(format!(
                "num_pairs = {} must be in 1..={} (num_keys)",
                self.num_pairs, self.num_keys
            ));
        }
        if self.num_pairs > self.seq_len - 1 {
            return bad(format!(
                "num_pairs = {} does not fit in seq_len − 1 = {} positions",
                self.num_pairs,
                self.seq_len - 1
            ));
        }
        if self.num_fillers == 0 && self.num_pairs < self.seq_len - 1 {
            return bad("num_fillers must be ≥ 1 when fillers are needed".into());
        }
        if self.train_size == 0 || self.dev_size == 0 {
            return bad("train_size and dev_size must be ≥ 1".into());
        }
        if self.num_keys.saturating_mul(self.num_values) > 1 << 20 || self.num_fillers > 1 << 20 {
            return bad("vocabulary over 2^20 words".into());
        }
        Ok(())
    }

    /// The name in run records: [`TASK_NEEDLE`] for P = 1, else [`TASK_KV`].
    pub fn name(&self) -> &'static str {
        if self.num_pairs == 1 {
            TASK_NEEDLE
        } else {
            TASK_KV
        }
    }

    /// The chance accuracy 1/V of a constant prediction on balanced labels.
    pub fn chance(&self) -> f64 {
        1.0 / self.num_values.max(1) as f64
    }

    /// Tokens of every encoding: L words plus `[CLS]` and `[SEP]`.
    pub fn encoded_len(&self) -> usize {
        self.seq_len + 2
    }

    /// The vocabulary in id order: special tokens, `q0…`, `k0v0, k0v1, …`, `f0…`.
    pub fn vocab(&self) -> Vec<String> {
        let mut v: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
        v.extend((0..self.num_keys).map(|k| format!("q{k}")));
        for k in 0..self.num_keys {
            v.extend((0..self.num_values).map(|x| format!("k{k}v{x}")));
        }
        v.extend((0..self.num_fillers).map(|f| format!("f{f}")));
        v
    }

    /// The `tokenizer.json` text of the word-level tokenizer (see the module docs).
    pub fn tokenizer_json(&self) -> String {
        word_level_tokenizer_json(&self.vocab())
    }

    /// The word-level tokenizer, truncating at [`SyntheticTask::encoded_len`] (a no-op for
    /// generated texts, which have exactly that many tokens).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        self.validate()?;
        word_level_tokenizer(&self.vocab(), self.encoded_len())
    }

    /// The label space (class names `"0"…"V-1"`).
    pub fn labels(&self) -> Labels {
        Labels::Classes {
            names: (0..self.num_values).map(|i| i.to_string()).collect(),
        }
    }

    /// The examples of `split` (`train_size` or `dev_size` of them).
    pub fn generate(&self, split: SyntheticSplit) -> Result<Vec<SyntheticExample>> {
        self.validate()?;
        let n = match split {
            SyntheticSplit::Train => self.train_size,
            SyntheticSplit::Dev => self.dev_size,
        };
        Ok((0..n).map(|i| self.example(split, i)).collect())
    }

    /// Example `i` of `split` (a pure function of the task, the split and `i`).
    pub fn example(&self, split: SyntheticSplit, i: usize) -> SyntheticExample {
        let mut rng = Draws::new(self.data_seed, split.id(), i as u32);
        let label = i % self.num_values;
        let slots = self.seq_len - 1;
        // P distinct keys (partial Fisher–Yates); the first is the queried one.
        let mut keys: Vec<usize> = (0..self.num_keys).collect();
        for j in 0..self.num_pairs {
            let r = j + rng.below(self.num_keys - j);
            keys.swap(j, r);
        }
        keys.truncate(self.num_pairs);
        // The queried pair's slot (word position p = slot + 1): dev enumerates the held-out
        // positions p ≡ 0 (mod 4) class by class; train draws among the others.
        let first = match split {
            SyntheticSplit::Dev => {
                let order = self.dev_positions();
                order[(i / self.num_values) % order.len()] - 1
            }
            SyntheticSplit::Train => loop {
                let slot = rng.below(slots);
                if !(slot + 1).is_multiple_of(HOLDOUT_EVERY) {
                    break slot;
                }
            },
        };
        // P − 1 further distinct slots, anywhere.
        let mut positions: Vec<usize> = Vec::with_capacity(self.num_pairs);
        positions.push(first);
        while positions.len() < self.num_pairs {
            let p = rng.below(slots);
            if !positions.contains(&p) {
                positions.push(p);
            }
        }
        let mut words: Vec<String> = (0..slots)
            .map(|_| format!("f{}", rng.below(self.num_fillers.max(1))))
            .collect();
        let mut pairs = Vec::with_capacity(self.num_pairs);
        for (j, (&key, &pos)) in keys.iter().zip(&positions).enumerate() {
            let value = if j == 0 {
                label
            } else {
                rng.below(self.num_values)
            };
            words[pos] = format!("k{key}v{value}");
            pairs.push((pos + 1, key, value));
        }
        pairs.sort_unstable();
        let text = std::iter::once(format!("q{}", keys[0]))
            .chain(words)
            .collect::<Vec<_>>()
            .join(" ");
        SyntheticExample {
            id: format!("{}-{i}", split.name()),
            text,
            label,
            query: keys[0],
            pairs,
        }
    }

    /// The held-out word positions (multiples of [`HOLDOUT_EVERY`] in 1..L) in the order dev
    /// examples visit them: a Philox shuffle keyed by `data_seed`, so that a dev split smaller
    /// than V × (number of held-out positions) still spreads over the whole sequence.
    pub fn dev_positions(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (1..self.seq_len.max(1))
            .filter(|p| p.is_multiple_of(HOLDOUT_EVERY))
            .collect();
        let mut rng = Draws::new(self.data_seed, 2, 0);
        for j in (1..order.len()).rev() {
            order.swap(j, rng.below(j + 1));
        }
        order
    }

    /// The examples as training records (label = class id, idx = example id).
    pub fn records(examples: &[SyntheticExample]) -> Vec<Record> {
        let plain: Vec<TaskExample> = examples.iter().map(TaskExample::from).collect();
        TaskExample::records(&plain)
    }
}

impl From<&SyntheticExample> for TaskExample {
    fn from(e: &SyntheticExample) -> Self {
        TaskExample {
            id: e.id.clone(),
            text: e.text.clone(),
            label: e.label,
        }
    }
}

/// One labelled text of any synthetic task, as the compare engine uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskExample {
    /// `train-N` / `dev-N`: stable across runs, so predictions pair by id.
    pub id: String,
    /// The whitespace-separated words.
    pub text: String,
    /// The class id.
    pub label: usize,
}

impl TaskExample {
    /// The examples as training records (label = class id, idx = example id).
    pub fn records(examples: &[TaskExample]) -> Vec<Record> {
        examples
            .iter()
            .map(|e| Record {
                text: e.text.clone(),
                text_pair: None,
                choices: None,
                label: serde_json::json!(e.label),
                idx: Some(serde_json::Value::String(e.id.clone())),
            })
            .collect()
    }
}

/// Any of the embedded synthetic tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SyntheticSpec {
    /// Majority vote over many markers ([`majority`]): the default of `qattn compare`.
    Majority(MajorityTask),
    /// Needle detection / key–value retrieval ([`SyntheticTask`]).
    Retrieval(SyntheticTask),
}

impl SyntheticSpec {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        match self {
            SyntheticSpec::Majority(t) => t.validate(),
            SyntheticSpec::Retrieval(t) => t.validate(),
        }
    }

    /// The task name in run records.
    pub fn name(&self) -> String {
        match self {
            SyntheticSpec::Majority(t) => t.name(),
            SyntheticSpec::Retrieval(t) => t.name().to_string(),
        }
    }

    /// Words per example.
    pub fn seq_len(&self) -> usize {
        match self {
            SyntheticSpec::Majority(t) => t.seq_len,
            SyntheticSpec::Retrieval(t) => t.seq_len,
        }
    }

    /// Classes.
    pub fn num_classes(&self) -> usize {
        match self {
            SyntheticSpec::Majority(_) => majority::NUM_CLASSES,
            SyntheticSpec::Retrieval(t) => t.num_values,
        }
    }

    /// The accuracy of a constant prediction on the balanced labels.
    pub fn chance(&self) -> f64 {
        1.0 / self.num_classes() as f64
    }

    /// Tokens of every encoding (L + 2).
    pub fn encoded_len(&self) -> usize {
        self.seq_len() + 2
    }

    /// The vocabulary in id order.
    pub fn vocab(&self) -> Vec<String> {
        match self {
            SyntheticSpec::Majority(t) => t.vocab(),
            SyntheticSpec::Retrieval(t) => t.vocab(),
        }
    }

    /// The word-level tokenizer.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match self {
            SyntheticSpec::Majority(t) => t.tokenizer(),
            SyntheticSpec::Retrieval(t) => t.tokenizer(),
        }
    }

    /// The label space.
    pub fn labels(&self) -> Labels {
        match self {
            SyntheticSpec::Majority(t) => t.labels(),
            SyntheticSpec::Retrieval(t) => t.labels(),
        }
    }

    /// The examples of `split`.
    pub fn generate(&self, split: SyntheticSplit) -> Result<Vec<TaskExample>> {
        Ok(match self {
            SyntheticSpec::Majority(t) => {
                t.generate(split)?.into_iter().map(|e| e.example).collect()
            }
            SyntheticSpec::Retrieval(t) => {
                t.generate(split)?.iter().map(TaskExample::from).collect()
            }
        })
    }
}

/// The `tokenizer.json` text of a word-level tokenizer over `vocab` (ids in order; the first
/// four must be [`SPECIAL_TOKENS`]): whitespace pre-tokenizer, `[CLS] … [SEP]` post-processor.
pub fn word_level_tokenizer_json(vocab: &[String]) -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), serde_json::json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
    .to_string()
}

/// The word-level tokenizer over `vocab`, truncating at `max_len` tokens.
pub fn word_level_tokenizer(vocab: &[String], max_len: usize) -> Result<Tokenizer> {
    let mut tok = Tokenizer::from_bytes(word_level_tokenizer_json(vocab).as_bytes())?;
    tok.set_max_length(Some(max_len));
    Ok(tok)
}

/// The label of a text read back the way the task defines it: the value of the pair token
/// whose key is the query's. `None` when the text is not a well-formed example (no query,
/// or no pair token with the queried key).
pub fn oracle(text: &str) -> Option<usize> {
    let mut words = text.split_whitespace();
    let key: usize = words.next()?.strip_prefix('q')?.parse().ok()?;
    words.find_map(|w| {
        let (k, v) = w.strip_prefix('k')?.split_once('v')?;
        (k.parse::<usize>().ok()? == key)
            .then(|| v.parse().ok())
            .flatten()
    })
}

/// Sequential Philox draws of one example.
struct Draws {
    key: [u32; 2],
    split: u32,
    example: u32,
    counter: u32,
    buf: [u32; 4],
    used: usize,
}

impl Draws {
    fn new(seed: u64, split: u32, example: u32) -> Self {
        Draws {
            key: [seed as u32, (seed >> 32) as u32],
            split,
            example,
            counter: 0,
            buf: [0; 4],
            used: 4,
        }
    }

    fn next_u32(&mut self) -> u32 {
        if self.used == 4 {
            self.buf = philox4x32_10(
                [self.example, self.split, self.counter, 0x5717_0001],
                self.key,
            );
            self.counter = self.counter.wrapping_add(1);
            self.used = 0;
        }
        self.used += 1;
        self.buf[self.used - 1]
    }

    /// Uniform in `0..n` (n ≥ 1) from 64 bits (bias below 2⁻⁴⁰ for the sizes used).
    fn below(&mut self, n: usize) -> usize {
        let x = (u64::from(self.next_u32()) << 32) | u64::from(self.next_u32());
        (x % n.max(1) as u64) as usize
    }
}
