//! Task heads on top of a pooled sequence representation, with transformers' tensor names.
//!
//! The representation is chosen by [`Pooling`]: the pooler's tanh(W·h_\[CLS\] + b) (BERT's and
//! transformers' choice, the default), or the mask-weighted mean of the last hidden states —
//! the representation sentence-embedding checkpoints such as all-MiniLM-L6-v2 were trained to
//! produce, whose `[CLS]` pooler never was. The choice is saved in `qattn.json`; transformers
//! reads the same tensors but always pools with `[CLS]`, so a mean-pooled head is only
//! interpreted correctly by qattn.
//!
//! | head | transformers class | `classifier` shape | output |
//! |---|---|---|---|
//! | [`HeadKind::Classification`] | `BertForSequenceClassification` | [N, H] | logits [B, N] |
//! | [`HeadKind::Regression`] | `BertForSequenceClassification` (`num_labels = 1`, `problem_type = "regression"`) | [1, H] | score \[B\] |
//! | [`HeadKind::MultipleChoice`] | `BertForMultipleChoice` | [1, H] | logits [B, C] |
//! | [`HeadKind::CandidateScoring`] | `BertForMultipleChoice` weights | [1, H] | one score per candidate |
//!
//! Candidate scoring (ReCoRD): every candidate entity is substituted for the `@placeholder`
//! of the query, each (passage, filled query) pair is encoded and scored by the same
//! `classifier` as multiple choice, and the scores of one example form a softmax over its
//! (variable number of) candidates. The loss is −log Σ_{correct} softmax, since ReCoRD can
//! list several correct entity mentions. The prediction is the arg-max candidate.

use crate::error::{Error, Result};
use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

/// The kind of task head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HeadKind {
    /// Sequence (pair) classification into `num_labels` classes.
    Classification {
        /// Number of classes.
        num_labels: usize,
    },
    /// One real-valued output (STS-B).
    Regression,
    /// One score per choice, softmax over the choices of an example (COPA, SWAG).
    MultipleChoice,
    /// One score per candidate, softmax over a variable-size candidate set (ReCoRD).
    CandidateScoring,
}

impl HeadKind {
    /// Rows of the `classifier` weight.
    pub fn outputs(&self) -> usize {
        match self {
            HeadKind::Classification { num_labels } => *num_labels,
            _ => 1,
        }
    }

    /// The transformers class this head's weights correspond to.
    pub fn architecture(&self) -> &'static str {
        match self {
            HeadKind::Classification { .. } | HeadKind::Regression => {
                "BertForSequenceClassification"
            }
            HeadKind::MultipleChoice | HeadKind::CandidateScoring => "BertForMultipleChoice",
        }
    }

    /// Parses `classification:N`, `regression`, `multiple-choice`, `candidates`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::Config(format!(
                "head {s:?}: expected classification:N, regression, multiple-choice or candidates"
            ))
        };
        match s.split_once(':') {
            Some(("classification", n)) => {
                let n: usize = n.parse().map_err(|_| bad())?;
                if n < 2 {
                    return Err(Error::Config(format!(
                        "head {s:?}: classification needs at least 2 labels (use regression for 1)"
                    )));
                }
                Ok(HeadKind::Classification { num_labels: n })
            }
            None => match s {
                "regression" => Ok(HeadKind::Regression),
                "multiple-choice" | "multiple_choice" => Ok(HeadKind::MultipleChoice),
                "candidates" | "candidate_scoring" => Ok(HeadKind::CandidateScoring),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for HeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadKind::Classification { num_labels } => write!(f, "classification:{num_labels}"),
            HeadKind::Regression => f.write_str("regression"),
            HeadKind::MultipleChoice => f.write_str("multiple-choice"),
            HeadKind::CandidateScoring => f.write_str("candidates"),
        }
    }
}

/// Which sequence representation a task head reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The pooler's tanh(W·h_\[CLS\] + b), as `BertForSequenceClassification` does.
    #[default]
    Cls,
    /// The mean of the last hidden states over the attention mask (padding excluded), not
    /// normalised. The pooler's weights are kept (and saved) but not used.
    Mean,
}

impl Pooling {
    /// Parses `cls` or `mean`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            _ => Err(Error::Config(format!(
                "pooling {s:?}: expected cls (the [CLS] pooler) or mean (masked mean of the \
                 last hidden states)"
            ))),
        }
    }

    /// Whether this is the default ([`Pooling::Cls`]); for `skip_serializing_if`.
    pub fn is_cls(&self) -> bool {
        *self == Pooling::Cls
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
        })
    }
}

impl std::str::FromStr for Pooling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Pooling::parse(s)
    }
}

/// Softmax cross-entropy of `logits` [B, N] against class ids `labels` \[B\] (mean over B).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let labels = labels.to_dtype(DType::U32)?;
    Ok(candle_nn::loss::cross_entropy(
        &logits.to_dtype(DType::F32)?,
        &labels,
    )?)
}

/// Mean squared error of `pred` \[B\] against `target` \[B\].
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::mse(
        &pred.to_dtype(DType::F32)?,
        &target.to_dtype(DType::F32)?,
    )?)
}

/// Candidate-set loss: for each group (a contiguous run of `scores` of length `sizes[g]`),
/// −log Σ_{j correct} softmax(scores of the group)_j, averaged over groups. `correct` has one
/// flag per candidate; every group needs at least one correct candidate.
pub fn candidate_loss(scores: &Tensor, sizes: &[usize], correct: &[bool]) -> Result<Tensor> {
    let n = scores.dim(0)?;
    if sizes.iter().sum::<usize>() != n || correct.len() != n {
        return Err(Error::Input(format!(
            "candidate_loss: {n} scores, {} flags, groups summing to {}",
            correct.len(),
            sizes.iter().sum::<usize>()
        )));
    }
    let scores = scores.to_dtype(DType::F32)?;
    let mut losses = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for (g, &size) in sizes.iter().enumerate() {
        if size == 0 {
            return Err(Error::Input(format!("candidate group {g} is empty")));
        }
        let flags = &correct[start..start + size];
        if !flags.iter().any(|&c| c) {
            return Err(Error::Input(format!(
                "candidate group {g} has no correct candidate"
            )));
        }
        let s = scores.narrow(0, start, size)?;
        let lse_all = log_sum_exp(&s)?;
        let idx: Vec<u32> = flags
            .iter()
            .enumerate()
            .filter(|(_, c)| **c)
            .map(|(i, _)| i as u32)
            .collect();
        let idx = Tensor::new(idx.as_slice(), s.device())?;
        let lse_good = log_sum_exp(&s.index_select(&idx, 0)?)?;
        losses.push((lse_all - lse_good)?);
        start += size;
    }
    Ok(Tensor::stack(&losses, 0)?.mean(0)?)
}

fn log_sum_exp(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    Ok((x.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()? + m)?.squeeze(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn head_strings_round_trip() {
        for s in [
            "classification:3",
            "regression",
            "multiple-choice",
            "candidates",
        ] {
            assert_eq!(HeadKind::parse(s).unwrap().to_string(), s);
        }
        for bad in [
            "classification:1",
            "classification:x",
            "ner",
            "regression:2",
        ] {
            assert!(HeadKind::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pooling_strings_round_trip_and_default_to_cls() {
        for s in ["cls", "mean"] {
            assert_eq!(Pooling::parse(s).unwrap().to_string(), s);
            let json = serde_json::to_string(&Pooling::parse(s).unwrap()).unwrap();
            assert_eq!(json, format!("\"{s}\""));
        }
        assert_eq!(Pooling::default(), Pooling::Cls);
        for bad in ["CLS", "max", ""] {
            let e = Pooling::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("expected cls") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn candidate_loss_matches_hand_computation() {
        let dev = Device::Cpu;
        let scores = Tensor::new(&[1.0f32, 2.0, 0.5, -1.0, 3.0], &dev).unwrap();
        let loss = candidate_loss(&scores, &[3, 2], &[false, true, true, true, false])
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let g1 = {
            let z: f64 = [1.0f64, 2.0, 0.5].iter().map(|x| x.exp()).sum();
            -((2.0f64.exp() + 0.5f64.exp()) / z).ln()
        };
        let g2 = -((-1.0f64).exp() / ((-1.0f64).exp() + 3.0f64.exp())).ln();
        assert!((f64::from(loss) - (g1 + g2) / 2.0).abs() < 1e-5, "{loss}");
        assert!(candidate_loss(&scores, &[3, 2], &[false; 5]).is_err());
        assert!(candidate_loss(&scores, &[4], &[true; 5]).is_err());
    }
}
