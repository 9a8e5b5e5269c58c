//! Training data: generic JSONL text classification / regression / multiple choice, and the
//! seeded, length-grouped batch order and dynamic-padding collator.
//!
//! JSONL, one object per line:
//! - `{"text": "...", "text_pair": "...", "label": 1}` — classification (integer or string
//!   labels) or regression (non-integer numbers, or `problem = "regression"`); `text_pair`
//!   is optional;
//! - `{"text": "premise", "choices": ["a", "b"], "label": 0}` — multiple choice: each choice
//!   becomes the second segment of one sequence; `label` is the index of the right choice.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use qattn_kernels::philox::philox4x32_10;
use qattn_model::tokenizer::{Batch, Encoding, collate};
use qattn_model::{HeadKind, Tokenizer};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What the labels are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Labels {
    /// Classes with these names, in id order.
    Classes {
        /// Label names.
        names: Vec<String>,
    },
    /// A real-valued target.
    Regression,
    /// The index of the right choice among `num_choices`.
    Choice {
        /// Choices per example.
        num_choices: usize,
    },
}

impl Labels {
    /// The task head these labels train.
    pub fn head(&self) -> HeadKind {
        match self {
            Labels::Classes { names } => HeadKind::Classification {
                num_labels: names.len(),
            },
            Labels::Regression => HeadKind::Regression,
            Labels::Choice { .. } => HeadKind::MultipleChoice,
        }
    }
}

/// How to read labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Problem {
    /// Infer: `choices` → multiple choice; non-integer numbers → regression; else classes.
    #[default]
    Auto,
    /// Classes.
    Classification,
    /// Real-valued targets.
    Regression,
}

/// One example after tokenisation.
#[derive(Clone, Debug)]
pub struct Example {
    /// One encoding, or one per choice.
    pub sequences: Vec<Encoding>,
    /// Class id or choice index (as f32), or the regression target; NaN when unlabelled.
    pub target: f32,
}

impl Example {
    /// Tokens of the longest sequence (the length used for grouping).
    pub fn len(&self) -> usize {
        self.sequences
            .iter()
            .map(|e| e.ids.len())
            .max()
            .unwrap_or(0)
    }

    /// Whether the example has no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tokenised dataset.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The examples in file order.
    pub examples: Vec<Example>,
    /// What the targets mean.
    pub labels: Labels,
}

/// One raw example: a JSONL line, or built in memory (e.g. by the GLUE readers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// First segment.
    pub text: String,
    /// Optional second segment.
    #[serde(default)]
    pub text_pair: Option<String>,
    /// Multiple-choice alternatives (each becomes the second segment of one sequence).
    #[serde(default)]
    pub choices: Option<Vec<String>>,
    /// Class id, class name, real-valued target or choice index; `null` when unlabelled.
    #[serde(default)]
    pub label: serde_json::Value,
    /// An optional example id, carried but unused by training.
    #[serde(default)]
    pub idx: Option<serde_json::Value>,
}

type Line = Record;

impl Dataset {
    /// Reads and tokenises a JSONL file. `labels` fixes the label space (pass the training
    /// set's when reading an evaluation set); otherwise it is inferred per `problem`.
    pub fn from_jsonl(
        path: &Path,
        tokenizer: &Tokenizer,
        problem: Problem,
        labels: Option<&Labels>,
    ) -> Result<Dataset> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let data_err = |line: usize, message: String| Error::Data {
            path: path.to_path_buf(),
            line,
            message,
        };
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let l: Line = serde_json::from_str(raw).map_err(|e| data_err(i + 1, e.to_string()))?;
            lines.push((i + 1, l));
        }
        Self::from_numbered_records(path, lines, tokenizer, problem, labels)
    }

    /// Tokenises in-memory records (errors name record numbers as "lines" of `source`).
    pub fn from_records(
        source: &Path,
        records: Vec<Record>,
        tokenizer: &Tokenizer,
        problem: Problem,
        labels: Option<&Labels>,
    ) -> Result<Dataset> {
        let lines = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| (i + 1, r))
            .collect();
        Self::from_numbered_records(source, lines, tokenizer, problem, labels)
    }

    fn from_numbered_records(
        path: &Path,
        lines: Vec<(usize, Record)>,
        tokenizer: &Tokenizer,
        problem: Problem,
        labels: Option<&Labels>,
    ) -> Result<Dataset> {
        let data_err = |line: usize, message: String| Error::Data {
            path: path.to_path_buf(),
            line,
            message,
        };
        if lines.is_empty() {
            return Err(data_err(0, "no examples".into()));
        }
        let given = labels.is_some();
        let labels = match labels {
            Some(l) => l.clone(),
            None => infer_labels(&lines, problem).map_err(|(n, m)| data_err(n, m))?,
        };
        let mut texts: Vec<(String, Option<String>)> = Vec::new();
        let mut owners = Vec::new();
        let mut targets = Vec::with_capacity(lines.len());
        for (n, l) in &lines {
            // Unlabelled examples (test sets) are allowed once the label space is known;
            // their target is NaN and must not be scored.
            let target = if l.label.is_null() && given {
                f32::NAN
            } else {
                target_of(&l.label, &labels).map_err(|m| data_err(*n, m))?
            };
            match (&labels, &l.choices) {
                (Labels::Choice { num_choices }, Some(ch)) => {
                    if ch.len() != *num_choices {
                        return Err(data_err(
                            *n,
                            format!("{} choices, the dataset has {num_choices}", ch.len()),
                        ));
                    }
                    for c in ch {
                        texts.push((l.text.clone(), Some(c.clone())));
                        owners.push(targets.len());
                    }
                }
                (Labels::Choice { .. }, None) => {
                    return Err(data_err(
                        *n,
                        "multiple-choice example without `choices`".into(),
                    ));
                }
                (_, Some(_)) => {
                    return Err(data_err(
                        *n,
                        "`choices` in a non-multiple-choice dataset".into(),
                    ));
                }
                (_, None) => {
                    texts.push((l.text.clone(), l.text_pair.clone()));
                    owners.push(targets.len());
                }
            }
            targets.push(target);
        }
        let refs: Vec<(&str, Option<&str>)> = texts
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_deref()))
            .collect();
        let encodings = tokenizer.encode_batch(&refs)?;
        let mut examples: Vec<Example> = targets
            .iter()
            .map(|&target| Example {
                sequences: Vec::new(),
                target,
            })
            .collect();
        for (enc, owner) in encodings.into_iter().zip(owners) {
            examples[owner].sequences.push(enc);
        }
        Ok(Dataset { examples, labels })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Pads the examples `idx` into one batch (choice-major for multiple choice) with their
    /// targets: u32 class ids / choice indices, or f32 scores.
    pub fn collate(&self, idx: &[usize], pad_id: u32, device: &Device) -> Result<(Batch, Tensor)> {
        let mut seqs = Vec::new();
        let mut targets = Vec::with_capacity(idx.len());
        for &i in idx {
            let ex = self.examples.get(i).ok_or_else(|| {
                Error::Training(format!("example {i} out of range ({})", self.len()))
            })?;
            seqs.extend(ex.sequences.iter().cloned());
            targets.push(ex.target);
        }
        let batch = collate(&seqs, pad_id, device)?;
        let t = Tensor::from_vec(targets, idx.len(), device)?;
        let t = match self.labels {
            Labels::Regression => t,
            _ => t.to_dtype(candle_core::DType::U32)?,
        };
        Ok((batch, t))
    }
}

type LineErr = (usize, String);

/// The largest label space a data file may define: integer labels must be below it, and there
/// may be at most this many distinct string labels. A classifier with more classes than this is
/// out of scope, and an integer label of 4 000 000 000 must be an error, not billions of label
/// names.
pub const MAX_CLASSES: usize = 10_000;

fn infer_labels(lines: &[(usize, Line)], problem: Problem) -> Result<Labels, LineErr> {
    if let Some((_, first)) = lines.first()
        && first.choices.is_some()
    {
        let n = first.choices.as_ref().map(Vec::len).unwrap_or(0);
        if n < 2 {
            return Err((
                lines[0].0,
                "multiple choice needs at least 2 choices".into(),
            ));
        }
        return Ok(Labels::Choice { num_choices: n });
    }
    let all_numbers = lines.iter().all(|(_, l)| l.label.is_number());
    let all_integers = lines.iter().all(|(_, l)| {
        l.label
            .as_f64()
            .is_some_and(|x| x.fract() == 0.0 && x >= 0.0)
    });
    let regression = match problem {
        Problem::Regression => true,
        Problem::Classification => false,
        Problem::Auto => all_numbers && !all_integers,
    };
    if regression {
        if let Some((n, l)) = lines.iter().find(|(_, l)| !l.label.is_number()) {
            return Err((*n, format!("regression label {} is not a number", l.label)));
        }
        return Ok(Labels::Regression);
    }
    if all_integers {
        // Integer labels are class ids 0..=max: check the largest before allocating names.
        let mut max = 0.0f64;
        for (n, l) in lines {
            let x = l.label.as_f64().unwrap_or(0.0);
            if x >= MAX_CLASSES as f64 {
                return Err((
                    *n,
                    format!(
                        "label {} is too large: integer labels are class ids 0..{MAX_CLASSES} \
                         (at most {MAX_CLASSES} classes); use string labels or regression for \
                         other numbers",
                        l.label
                    ),
                ));
            }
            max = max.max(x);
        }
        let names = (0..=(max as usize).max(1)).map(|i| i.to_string()).collect();
        return Ok(Labels::Classes { names });
    }
    let mut names: Vec<String> = Vec::new();
    for (n, l) in lines {
        match l.label.as_str() {
            Some(s) => names.push(s.to_string()),
            None => {
                return Err((
                    *n,
                    format!(
                        "label {} mixes with string labels; use one kind per file",
                        l.label
                    ),
                ));
            }
        }
    }
    names.sort();
    names.dedup();
    if names.len() > MAX_CLASSES {
        return Err((
            lines[0].0,
            format!(
                "{} distinct string labels: at most {MAX_CLASSES} classes are supported",
                names.len()
            ),
        ));
    }
    if names.len() < 2 {
        return Err((
            lines[0].0,
            format!("only one label ({:?}) in the data", names),
        ));
    }
    Ok(Labels::Classes { names })
}

fn target_of(label: &serde_json::Value, labels: &Labels) -> Result<f32, String> {
    match labels {
        Labels::Regression => label
            .as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| format!("label {label} is not a number")),
        Labels::Choice { num_choices } => match label.as_u64() {
            Some(i) if (i as usize) < *num_choices => Ok(i as f32),
            _ => Err(format!(
                "label {label} is not a choice index in 0..{num_choices}"
            )),
        },
        Labels::Classes { names } => {
            let id = match label {
                serde_json::Value::String(s) => names.iter().position(|n| n == s),
                serde_json::Value::Number(_) => label.as_u64().and_then(|i| {
                    names
                        .iter()
                        .position(|n| *n == i.to_string())
                        .or_else(|| ((i as usize) < names.len()).then_some(i as usize))
                }),
                _ => None,
            };
            id.map(|i| i as f32)
                .ok_or_else(|| format!("label {label} is not one of {names:?}"))
        }
    }
}

/// The batch order of one epoch: a Philox permutation of the examples keyed by (seed,
/// epoch); with `mega_batch > 0`, the permutation is cut into mega-batches of
/// `batch_size · mega_batch` examples, each sorted by length (longest first, stable), so
/// batches hold similar lengths and pad less. Entirely determined by the arguments.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: u64,
    mega_batch: usize,
) -> Vec<Vec<usize>> {
    let n = lengths.len();
    let mut order: Vec<usize> = (0..n).collect();
    let key = [seed as u32, (seed >> 32) as u32];
    // Fisher–Yates, one Philox word per swap.
    for i in (1..n).rev() {
        let r = philox4x32_10([i as u32, epoch as u32, (epoch >> 32) as u32, 0x5eed], key);
        let x = (u64::from(r[0]) << 32) | u64::from(r[1]);
        let j = (x % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    if mega_batch > 0 {
        for chunk in order.chunks_mut(batch_size.max(1) * mega_batch) {
            chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        }
    }
    order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;
    use serde_json::json;

    fn line(label: serde_json::Value) -> (usize, Line) {
        (
            1,
            Line {
                text: "x".into(),
                text_pair: None,
                choices: None,
                label,
                idx: None,
            },
        )
    }

    proptest::proptest! {
        /// Extreme numeric labels (huge, negative, fractional, 0) never panic or allocate a
        /// huge label space: inference gives at most MAX_CLASSES classes or a line error.
        #[test]
        fn label_inference_is_bounded(labels in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::num::f64::NORMAL.prop_map(|x| json!(x)),
                proptest::num::u64::ANY.prop_map(|x| json!(x)),
                proptest::num::i64::ANY.prop_map(|x| json!(x)),
                (0u64..20).prop_map(|x| json!(x)),
                proptest::strategy::Just(json!(0)),
                proptest::strategy::Just(json!(f64::MAX)),
                proptest::strategy::Just(json!(4_000_000_000u64)),
            ],
            1..6,
        )) {
            let lines: Vec<_> = labels.into_iter().map(line).collect();
            for problem in [Problem::Auto, Problem::Classification, Problem::Regression] {
                match infer_labels(&lines, problem) {
                    Ok(Labels::Classes { names }) => {
                        proptest::prop_assert!(names.len() <= MAX_CLASSES)
                    }
                    Ok(_) => {}
                    Err((n, msg)) => proptest::prop_assert!(n == 1 && !msg.is_empty()),
                }
            }
        }
    }

    #[test]
    fn label_inference() {
        let ints = vec![line(json!(0)), line(json!(2))];
        assert_eq!(
            infer_labels(&ints, Problem::Auto).unwrap(),
            Labels::Classes {
                names: vec!["0".into(), "1".into(), "2".into()]
            }
        );
        let floats = vec![line(json!(0.5)), line(json!(3))];
        assert_eq!(
            infer_labels(&floats, Problem::Auto).unwrap(),
            Labels::Regression
        );
        assert_eq!(
            infer_labels(&ints, Problem::Regression).unwrap(),
            Labels::Regression
        );
        let strings = vec![line(json!("pos")), line(json!("neg")), line(json!("pos"))];
        let l = infer_labels(&strings, Problem::Auto).unwrap();
        assert_eq!(
            l,
            Labels::Classes {
                names: vec!["neg".into(), "pos".into()]
            }
        );
        assert_eq!(target_of(&json!("pos"), &l).unwrap(), 1.0);
        assert!(target_of(&json!("meh"), &l).is_err());
        assert!(infer_labels(&[line(json!("a")), line(json!(1))], Problem::Auto).is_err());
        // The label space is capped: no allocation of billions of names.
        for big in [json!(4_000_000_000u64), json!(1e300), json!(MAX_CLASSES)] {
            let (_, msg) =
                infer_labels(&[line(json!(0)), line(big.clone())], Problem::Auto).unwrap_err();
            assert!(msg.contains("too large"), "{big}: {msg}");
        }
        assert!(matches!(
            infer_labels(&[line(json!(0)), line(json!(MAX_CLASSES - 1))], Problem::Auto),
            Ok(Labels::Classes { names }) if names.len() == MAX_CLASSES
        ));
    }

    #[test]
    fn batch_order_is_a_seeded_permutation_grouped_by_length() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 37) % 50 + 3).collect();
        let a = epoch_batches(&lengths, 8, 1, 0, 4);
        assert_eq!(a, epoch_batches(&lengths, 8, 1, 0, 4));
        assert_ne!(a, epoch_batches(&lengths, 8, 1, 1, 4));
        assert_ne!(a, epoch_batches(&lengths, 8, 2, 0, 4));
        let mut all: Vec<usize> = a.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        assert_eq!(a.len(), 13);
        // Within a mega-batch of 32, lengths are non-increasing.
        for mega in a.chunks(4) {
            let ls: Vec<usize> = mega.iter().flatten().map(|&i| lengths[i]).collect();
            assert!(ls.windows(2).all(|w| w[0] >= w[1]), "{ls:?}");
        }
        // Grouping pads less than the plain shuffle.
        let pad = |bs: &[Vec<usize>]| -> usize {
            bs.iter()
                .map(|b| {
                    let m = b.iter().map(|&i| lengths[i]).max().unwrap();
                    b.iter().map(|&i| m - lengths[i]).sum::<usize>()
                })
                .sum()
        };
        assert!(pad(&a) < pad(&epoch_batches(&lengths, 8, 1, 0, 0)));
    }
}
