//! Majority vote over many markers: the default task of `qattn compare`
//! (task names `synthetic-majority-L`).
//!
//! ## The generator
//! Every example is one whitespace-separated text of exactly `seq_len` (L) words:
//!
//! - M **markers** at M distinct positions chosen uniformly, M odd and uniform among the odd
//!   values in `min_markers..=max_markers`. A marker votes for class 0 (`a0 … a{F-1}`) or
//!   class 1 (`b0 … b{F-1}`), F = `forms` surface forms per class drawn uniformly, so the
//!   model must learn that several words mean the same vote.
//! - every other position holds a **filler** `f{i}`, i uniform in `0..num_fillers`: the
//!   distractors, whose random mix the model must learn to ignore.
//!
//! The **label** is the class with more votes. The margin d = n_win − n_lose is odd (M is odd,
//! so there are no ties), uniform among the odd values in `1..=min(M, max_margin)`: most
//! examples are close votes. Labels are balanced exactly: example `i` of a split has label
//! `i mod 2`. [`oracle`] recovers every label by counting.
//!
//! ## Why this task measures the estimator
//! The answer is spread over M keys. Exact attention can average all of them; a Monte-Carlo
//! estimate with S measured keys sees a sample of the votes, and a close vote (d = 1 among
//! M ≈ 20) is decided wrongly with a probability that grows as S shrinks: `multinomial:2`
//! reads about two votes, `multinomial:8` about eight, while stratified sampling with S ≥ M
//! strata measures nearly every marker once. Readout noise moves measured outcomes to other
//! positions (mostly fillers), which readout mitigation corrects only on average. Exact
//! attention itself stays below the ceiling at the default budget: separating 11 votes from
//! 10 through learned embeddings and a softmax, after a few hundred steps from a random start,
//! is not perfect.
//!
//! Train and dev use different Philox streams of the same `data_seed` (split id 3 and 4), so
//! the two splits share no draws; with L ≥ 32 words a repeated text is astronomically
//! unlikely.

use super::{Draws, SPECIAL_TOKENS, SyntheticSplit, TaskExample, word_level_tokenizer};
use crate::error::{Result, invalid};
use qattn_model::Tokenizer;
use qattn_train::Labels;
use serde::{Deserialize, Serialize};

/// The task-name prefix of majority tasks in run records (`synthetic-majority-L`).
pub const TASK_MAJORITY: &str = "synthetic-majority";

/// The parameters of the majority task; see the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MajorityTask {
    /// L: words per example (encodings have L + 2 tokens).
    pub seq_len: usize,
    /// Fewest markers per example (the odd values in `min_markers..=max_markers` are used).
    pub min_markers: usize,
    /// Most markers per example.
    pub max_markers: usize,
    /// Largest margin n_win − n_lose (odd margins 1, 3, … up to this and M).
    pub max_margin: usize,
    /// ε: the probability that an example's label is the minority class instead (label
    /// noise); the best achievable accuracy is 1 − ε.
    pub label_noise: f64,
    /// F: surface forms per class.
    pub forms: usize,
    /// Distinct filler words.
    pub num_fillers: usize,
    /// Training examples.
    pub train_size: usize,
    /// Development examples.
    pub dev_size: usize,
    /// Seed of every draw of the generator.
    pub data_seed: u64,
}

impl Default for MajorityTask {
    /// L = 64 with 9–25 markers, every odd margin, label noise 0.1, 4 forms per class, 16
    /// fillers, 2400 train / 1000 dev examples.
    fn default() -> Self {
        MajorityTask {
            seq_len: 64,
            min_markers: 9,
            max_markers: 25,
            max_margin: 25,
            label_noise: 0.1,
            forms: 4,
            num_fillers: 16,
            train_size: 2400,
            dev_size: 1000,
            data_seed: 0x5eed_0002,
        }
    }
}

/// The two classes.
pub const NUM_CLASSES: usize = 2;

impl MajorityTask {
    /// Checks the sizes; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(invalid(format!("synthetic majority task: {m}")));
        if self.min_markers == 0 || self.min_markers > self.max_markers {
            return bad(format!(
                "markers {}..={}: need 1 ≤ min_markers ≤ max_markers",
                self.min_markers, self.max_markers
            ));
        }
        if self.odd_counts().is_empty() {
            return bad(format!(
                "markers {}..={} contain no odd count (an odd count rules out ties)",
                self.min_markers, self.max_markers
            ));
        }
        if self.max_markers > self.seq_len {
            return bad(format!(
                "max_markers = {} does not fit in seq_len = {} words",
                self.max_markers, self.seq_len
            ));
        }
        if self.max_margin == 0 {
            return bad("max_margin must be ≥ 1".into());
        }
        if !(0.0..0.5).contains(&self.label_noise) {
            return bad(format!(
                "label_noise = {} must be in [0, 0.5) (at 0.5 labels carry no information)",
                self.label_noise
            ));
        }
        if self.forms == 0 {
            return bad("forms must be ≥ 1".into());
        }
        if self.num_fillers == 0 && self.min_markers < self.seq_len {
            return bad("num_fillers must be ≥ 1 when fillers are needed".into());
        }
        if self.train_size == 0 || self.dev_size == 0 {
            return bad("train_size and dev_size must be ≥ 1".into());
        }
        if self.forms > 1 << 16 || self.num_fillers > 1 << 20 || self.seq_len > 1 << 20 {
            return bad("vocabulary or sequence over the supported size".into());
        }
        Ok(())
    }

    /// The odd marker counts in `min_markers..=max_markers`.
    fn odd_counts(&self) -> Vec<usize> {
        (self.min_markers..=self.max_markers)
            .filter(|m| m % 2 == 1)
            .collect()
    }

    /// `synthetic-majority-L`.
    pub fn name(&self) -> String {
        format!("{TASK_MAJORITY}-{}", self.seq_len)
    }

    /// Tokens of every encoding: L words plus `[CLS]` and `[SEP]`.
    pub fn encoded_len(&self) -> usize {
        self.seq_len + 2
    }

    /// The vocabulary in id order: special tokens, `a0…`, `b0…`, `f0…`.
    pub fn vocab(&self) -> Vec<String> {
        let mut v: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
        for class in ["a", "b"] {
            v.extend((0..self.forms).map(|i| format!("{class}{i}")));
        }
        v.extend((0..self.num_fillers).map(|f| format!("f{f}")));
        v
    }

    /// The word-level tokenizer (see [`super`]).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        self.validate()?;
        word_level_tokenizer(&self.vocab(), self.encoded_len())
    }

    /// The label space (class names `"a"`, `"b"`).
    pub fn labels(&self) -> Labels {
        Labels::Classes {
            names: vec!["a".into(), "b".into()],
        }
    }

    /// The examples of `split`.
    pub fn generate(&self, split: SyntheticSplit) -> Result<Vec<MajorityExample>> {
        self.validate()?;
        let n = match split {
            SyntheticSplit::Train => self.train_size,
            SyntheticSplit::Dev => self.dev_size,
        };
        let counts = self.odd_counts();
        Ok((0..n).map(|i| self.example(split, i, &counts)).collect())
    }

    /// Example `i` of `split` (`counts`: [`Self::odd_counts`]).
    fn example(&self, split: SyntheticSplit, i: usize, counts: &[usize]) -> MajorityExample {
        let stream = match split {
            SyntheticSplit::Train => 3,
            SyntheticSplit::Dev => 4,
        };
        let mut rng = Draws::new(self.data_seed, stream, i as u32);
        let label = i % NUM_CLASSES;
        // The vote winner is the label except for a fraction ε of examples (53-bit uniform).
        let flipped = ((rng.below(1 << 53) as f64) / (1u64 << 53) as f64) < self.label_noise;
        let winner = if flipped { 1 - label } else { label };
        let m = counts[rng.below(counts.len())];
        let margins = m.min(self.max_margin).div_ceil(2);
        let margin = 2 * rng.below(margins) + 1;
        let wins = (m + margin) / 2;
        // M distinct positions (partial Fisher–Yates over all L).
        let mut slots: Vec<usize> = (0..self.seq_len).collect();
        for j in 0..m {
            let r = j + rng.below(self.seq_len - j);
            slots.swap(j, r);
        }
        let mut words: Vec<String> = (0..self.seq_len)
            .map(|_| format!("f{}", rng.below(self.num_fillers.max(1))))
            .collect();
        let class_word = |c: usize| if c == 0 { "a" } else { "b" };
        for (j, &pos) in slots[..m].iter().enumerate() {
            let class = if j < wins { winner } else { 1 - winner };
            words[pos] = format!("{}{}", class_word(class), rng.below(self.forms));
        }
        MajorityExample {
            example: TaskExample {
                id: format!("{}-{i}", split.name()),
                text: words.join(" "),
                label,
            },
            markers: m,
            margin,
            flipped,
        }
    }
}

/// One generated majority example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MajorityExample {
    /// Id, text and label.
    pub example: TaskExample,
    /// M: the number of markers.
    pub markers: usize,
    /// n_win − n_lose (odd, ≥ 1).
    pub margin: usize,
    /// Whether the label is the minority class (label noise).
    pub flipped: bool,
}

/// The majority class of a text read back by counting (the label unless the example is
/// [`MajorityExample::flipped`]): `Some(0)` when `a…` words outnumber
/// `b…` words, `Some(1)` for the reverse, `None` on a tie or when there are no markers.
pub fn oracle(text: &str) -> Option<usize> {
    let (mut a, mut b) = (0usize, 0usize);
    for w in text.split_whitespace() {
        if w.starts_with('a') {
            a += 1;
        } else if w.starts_with('b') {
            b += 1;
        }
    }
    match a.cmp(&b) {
        std::cmp::Ordering::Greater => Some(0),
        std::cmp::Ordering::Less => Some(1),
        std::cmp::Ordering::Equal => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_is_the_majority_and_margins_and_counts_stay_in_range() {
        let t = MajorityTask {
            train_size: 500,
            dev_size: 200,
            ..MajorityTask::default()
        };
        for split in [SyntheticSplit::Train, SyntheticSplit::Dev] {
            let ex = t.generate(split).unwrap();
            let mut ones = 0;
            let mut flipped = 0;
            for e in &ex {
                let expect = if e.flipped {
                    flipped += 1;
                    1 - e.example.label
                } else {
                    e.example.label
                };
                assert_eq!(oracle(&e.example.text), Some(expect), "{e:?}");
                assert_eq!(e.example.text.split_whitespace().count(), t.seq_len);
                assert!(e.markers % 2 == 1 && (t.min_markers..=t.max_markers).contains(&e.markers));
                assert!(e.margin % 2 == 1 && e.margin <= t.max_margin.min(e.markers));
                let votes = e
                    .example
                    .text
                    .split_whitespace()
                    .filter(|w| !w.starts_with('f'))
                    .count();
                assert_eq!(votes, e.markers);
                ones += e.example.label;
            }
            assert_eq!(ones, ex.len() / 2, "labels are balanced");
            // ε = 0.1 of the labels are flipped: within 4.5 binomial SDs.
            let n = ex.len() as f64;
            let sd = (n * 0.1 * 0.9).sqrt();
            assert!(
                (flipped as f64 - 0.1 * n).abs() < 4.5 * sd,
                "{flipped} of {n}"
            );
            // Every odd margin up to M occurs; close votes (margin 1) are common.
            let close = ex.iter().filter(|e| e.margin == 1).count() as f64 / n;
            assert!((0.05..0.25).contains(&close), "{close}");
            assert!(ex.iter().any(|e| e.margin == e.markers));
        }
        let train: std::collections::BTreeSet<String> = t
            .generate(SyntheticSplit::Train)
            .unwrap()
            .into_iter()
            .map(|e| e.example.text)
            .collect();
        assert!(
            t.generate(SyntheticSplit::Dev)
                .unwrap()
                .iter()
                .all(|e| !train.contains(&e.example.text))
        );
    }

    #[test]
    fn without_label_noise_every_label_is_the_majority() {
        let t = MajorityTask {
            label_noise: 0.0,
            train_size: 300,
            dev_size: 10,
            ..MajorityTask::default()
        };
        for e in t.generate(SyntheticSplit::Train).unwrap() {
            assert!(!e.flipped);
            assert_eq!(oracle(&e.example.text), Some(e.example.label));
        }
    }

    #[test]
    fn generation_is_a_pure_function_of_the_seed() {
        let t = MajorityTask {
            train_size: 50,
            dev_size: 20,
            ..MajorityTask::default()
        };
        assert_eq!(
            t.generate(SyntheticSplit::Dev).unwrap(),
            t.generate(SyntheticSplit::Dev).unwrap()
        );
        let other = MajorityTask {
            data_seed: 7,
            ..t.clone()
        };
        assert_ne!(
            t.generate(SyntheticSplit::Dev).unwrap(),
            other.generate(SyntheticSplit::Dev).unwrap()
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let cases = [
            (
                MajorityTask {
                    min_markers: 4,
                    max_markers: 4,
                    ..Default::default()
                },
                "odd",
            ),
            (
                MajorityTask {
                    max_markers: 99,
                    ..Default::default()
                },
                "max_markers",
            ),
            (
                MajorityTask {
                    max_margin: 0,
                    ..Default::default()
                },
                "max_margin",
            ),
            (
                MajorityTask {
                    label_noise: 0.5,
                    ..Default::default()
                },
                "label_noise",
            ),
            (
                MajorityTask {
                    forms: 0,
                    ..Default::default()
                },
                "forms",
            ),
            (
                MajorityTask {
                    dev_size: 0,
                    ..Default::default()
                },
                "dev_size",
            ),
        ];
        for (t, what) in cases {
            let e = t.validate().unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn oracle_counts_votes() {
        assert_eq!(oracle("a0 f1 b2 a3"), Some(0));
        assert_eq!(oracle("b0 f1 b2 a3"), Some(1));
        assert_eq!(oracle("a0 b0"), None);
        assert_eq!(oracle("f0 f1"), None);
    }
}
