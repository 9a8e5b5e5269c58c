//! Leaderboard submission files: writing them from predictions, and reading them back to score
//! against gold files.
//!
//! - GLUE: `{TASK}.tsv` with a header `index\tprediction` and one row per test example; the
//!   prediction is the label string (`0`/`1`, `entailment`, …) or, for STS-B, the score
//!   clipped to [0, 5].
//! - SuperGLUE: `{Task}.jsonl`, one `{"idx": …, "label": …}` per example; labels are
//!   `"true"`/`"false"` for BoolQ, WiC and WSC, label names for CB, RTE, AX-b and AX-g, the
//!   choice index for COPA, the entity text for ReCoRD (one line per query), and for MultiRC
//!   one line per passage: `{"idx": p, "passage": {"questions": [{"idx": q, "answers":
//!   [{"idx": a, "label": 0|1}]}]}}`.

use crate::error::{Error, Result};
use crate::runner::Prediction;
use crate::tasks::{Benchmark, Example, Task, TaskKind};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// A MultiRC question id and its answers' JSON.
type Question = (String, Vec<Value>);

fn idx_value(id: &str) -> Value {
    id.parse::<u64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::from(id))
}

fn label_name(task: Task, class: usize) -> String {
    task.labels()
        .and_then(|l| l.get(class))
        .map(|s| s.to_string())
        .unwrap_or_else(|| class.to_string())
}

fn is_boolean(task: Task) -> bool {
    matches!(task, Task::BoolQ | Task::Wic | Task::Wsc)
}

/// The submission file content for `task`.
pub fn render(task: Task, examples: &[Example], preds: &[Prediction]) -> Result<String> {
    if examples.len() != preds.len() {
        return Err(Error::Invalid(format!(
            "{} predictions for {} examples",
            preds.len(),
            examples.len()
        )));
    }
    let class = |p: &Prediction| match p {
        Prediction::Class(c) => *c,
        Prediction::Score(s) => s.round().max(0.0) as usize,
    };
    let mut out = String::new();
    match task.benchmark() {
        Benchmark::Glue => {
            out.push_str("index\tprediction\n");
            for (e, p) in examples.iter().zip(preds) {
                let v = match (task.kind(), p) {
                    (TaskKind::Regression, Prediction::Score(s)) => {
                        format!("{:.3}", s.clamp(0.0, 5.0))
                    }
                    _ => label_name(task, class(p)),
                };
                out.push_str(&format!("{}\t{v}\n", e.id));
            }
        }
        Benchmark::SuperGlue => match task {
            Task::MultiRc => {
                // passage → question → answers, in file order.
                let mut passages: Vec<(String, Vec<Question>)> = Vec::new();
                for (e, p) in examples.iter().zip(preds) {
                    let pid = e.extra.get("passage_idx").cloned().unwrap_or_default();
                    let qid = e.extra.get("question_idx").cloned().unwrap_or_default();
                    let aid = e.extra.get("answer_idx").cloned().unwrap_or_default();
                    if passages.last().is_none_or(|x| x.0 != pid) {
                        passages.push((pid.clone(), Vec::new()));
                    }
                    let qs = &mut passages.last_mut().expect("pushed").1;
                    if qs.last().is_none_or(|x| x.0 != qid) {
                        qs.push((qid.clone(), Vec::new()));
                    }
                    qs.last_mut()
                        .expect("pushed")
                        .1
                        .push(json!({"idx": idx_value(&aid), "label": class(p)}));
                }
                for (pid, qs) in passages {
                    let questions: Vec<Value> = qs
                        .into_iter()
                        .map(|(q, answers)| json!({"idx": idx_value(&q), "answers": answers}))
                        .collect();
                    out.push_str(&format!(
                        "{}\n",
                        json!({"idx": idx_value(&pid), "passage": {"questions": questions}})
                    ));
                }
            }
            Task::Record => {
                let mut chosen: Vec<(String, String)> = Vec::new();
                for (e, p) in examples.iter().zip(preds) {
                    let q = e.group.clone().unwrap_or_else(|| e.id.clone());
                    if chosen.last().is_none_or(|x| x.0 != q) {
                        chosen.push((q.clone(), String::new()));
                    }
                    if class(p) == 1 {
                        chosen.last_mut().expect("pushed").1 =
                            e.extra.get("entity").cloned().unwrap_or_default();
                    }
                }
                for (q, entity) in chosen {
                    out.push_str(&format!(
                        "{}\n",
                        json!({"idx": idx_value(&q), "label": entity})
                    ));
                }
            }
            _ => {
                for (e, p) in examples.iter().zip(preds) {
                    let label = if is_boolean(task) {
                        Value::from(if class(p) == 1 { "true" } else { "false" })
                    } else if matches!(task.kind(), TaskKind::MultipleChoice { .. }) {
                        Value::from(class(p))
                    } else {
                        Value::from(label_name(task, class(p)))
                    };
                    out.push_str(&format!(
                        "{}\n",
                        json!({"idx": idx_value(&e.id), "label": label})
                    ));
                }
            }
        },
    }
    Ok(out)
}

/// Reads a prediction file (GLUE TSV `index\tprediction`, or SuperGLUE JSONL) and aligns it
/// with `examples` by id. Every labelled example needs a prediction.
pub fn read_predictions(task: Task, path: &Path, examples: &[Example]) -> Result<Vec<Prediction>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let fmt = |line: usize, message: String| Error::Format {
        path: path.to_path_buf(),
        line,
        message,
    };
    let class_of = |v: &Value, line: usize| -> Result<Prediction> {
        if let TaskKind::Regression = task.kind() {
            let s = match v {
                Value::String(s) => s.trim().parse::<f64>().ok(),
                other => other.as_f64(),
            };
            return s
                .map(Prediction::Score)
                .ok_or_else(|| fmt(line, format!("prediction {v} is not a number")));
        }
        let s = match v {
            Value::Bool(b) => return Ok(Prediction::Class(usize::from(*b))),
            Value::Number(n) => {
                return n
                    .as_u64()
                    .map(|c| Prediction::Class(c as usize))
                    .ok_or_else(|| fmt(line, format!("prediction {v} is not a class")));
            }
            Value::String(s) => s.trim().to_string(),
            other => return Err(fmt(line, format!("prediction {other} is not a label"))),
        };
        let labels = task.labels().unwrap_or(&[]);
        if let Some(i) = labels.iter().position(|l| l.eq_ignore_ascii_case(&s)) {
            return Ok(Prediction::Class(i));
        }
        s.parse::<usize>()
            .ok()
            .filter(|&c| labels.is_empty() || c < labels.len())
            .map(Prediction::Class)
            .ok_or_else(|| fmt(line, format!("prediction {s:?} is not one of {labels:?}")))
    };
    let mut by_id: BTreeMap<String, Prediction> = BTreeMap::new();
    match task.benchmark() {
        Benchmark::Glue => {
            for (n, line) in text.lines().enumerate() {
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() || (n == 0 && line.starts_with("index")) {
                    continue;
                }
                let (id, v) = line
                    .split_once('\t')
                    .ok_or_else(|| fmt(n + 1, "expected index<TAB>prediction".into()))?;
                by_id.insert(id.trim().to_string(), class_of(&Value::from(v), n + 1)?);
            }
        }
        Benchmark::SuperGlue => {
            let entity_of: BTreeMap<(&str, &str), &str> = examples
                .iter()
                .filter_map(|e| {
                    Some((
                        (e.group.as_deref()?, e.extra.get("entity")?.as_str()),
                        e.id.as_str(),
                    ))
                })
                .collect();
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(line).map_err(|e| fmt(n + 1, e.to_string()))?;
                let idx = match &v["idx"] {
                    Value::Number(x) => x.to_string(),
                    Value::String(s) => s.clone(),
                    _ => return Err(fmt(n + 1, "missing idx".into())),
                };
                match task {
                    Task::MultiRc => {
                        let qs = v["passage"]["questions"]
                            .as_array()
                            .ok_or_else(|| fmt(n + 1, "missing passage.questions".into()))?;
                        for q in qs {
                            for a in q["answers"].as_array().into_iter().flatten() {
                                let id = format!("{idx}-{}-{}", q["idx"], a["idx"]);
                                by_id.insert(id, class_of(&a["label"], n + 1)?);
                            }
                        }
                    }
                    Task::Record => {
                        let entity = v["label"].as_str().unwrap_or_default();
                        if let Some(id) = entity_of.get(&(idx.as_str(), entity)) {
                            by_id.insert(id.to_string(), Prediction::Class(1));
                        }
                        // Every other candidate of the query is "not chosen".
                        for e in examples.iter().filter(|e| e.group.as_deref() == Some(&idx)) {
                            by_id.entry(e.id.clone()).or_insert(Prediction::Class(0));
                        }
                    }
                    _ => {
                        by_id.insert(idx, class_of(&v["label"], n + 1)?);
                    }
                }
            }
        }
    }
    let mut out = Vec::with_capacity(examples.len());
    let mut missing = Vec::new();
    for e in examples {
        match by_id.get(&e.id) {
            Some(p) => out.push(p.clone()),
            None => {
                missing.push(e.id.clone());
                out.push(Prediction::Class(0));
            }
        }
    }
    if !missing.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no prediction for {} of {} examples (first: id {})",
            path.display(),
            missing.len(),
            examples.len(),
            missing[0]
        )));
    }
    Ok(out)
}
