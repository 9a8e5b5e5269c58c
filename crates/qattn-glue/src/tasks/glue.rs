//! GLUE TSV readers.

use std::path::Path;

use super::{
    Example, Label, Loaded, SkippedRow, Split, Task, TaskKind, class_of, format_err, lines,
};
use crate::error::Result;

/// A column, by header name or (header-less files) by position.
#[derive(Clone, Copy)]
enum Col {
    Name(&'static str),
    At(usize),
}

/// How one GLUE file maps onto [`Example`].
struct Spec {
    /// The file has a header line.
    header: bool,
    /// Number of fields of a header-less file.
    fields: usize,
    /// The id column; `None`: the 0-based data-row number.
    id: Option<Col>,
    text: Col,
    pair: Option<Col>,
    label: Option<Col>,
    /// Copied into `extra` under the given key when the column exists.
    extra: &'static [(&'static str, Col)],
    /// Skip (and report) malformed rows instead of failing (QQP).
    skip_malformed: bool,
}

fn spec(task: Task, split: Split) -> Spec {
    use Col::{At, Name};
    let base = Spec {
        header: true,
        fields: 0,
        id: Some(Name("index")),
        text: Name("sentence1"),
        pair: Some(Name("sentence2")),
        label: Some(Name("label")),
        extra: &[],
        skip_malformed: false,
    };
    match task {
        Task::Cola if split != Split::Test => Spec {
            header: false,
            fields: 4,
            id: None,
            text: At(3),
            pair: None,
            label: Some(At(1)),
            extra: &[("source", At(0)), ("original_label", At(2))],
            ..base
        },
        Task::Cola | Task::Sst2 => Spec {
            id: (split == Split::Test).then_some(Name("index")),
            text: Name("sentence"),
            pair: None,
            ..base
        },
        Task::Mrpc => Spec {
            id: (split == Split::Test).then_some(Name("index")),
            text: Name("#1 String"),
            pair: Some(Name("#2 String")),
            label: Some(Name("Quality")),
            extra: &[("id1", Name("#1 ID")), ("id2", Name("#2 ID"))],
            ..base
        },
        Task::Stsb => Spec {
            label: Some(Name("score")),
            extra: &[
                ("genre", Name("genre")),
                ("filename", Name("filename")),
                ("year", Name("year")),
                ("old_index", Name("old_index")),
                ("source1", Name("source1")),
                ("source2", Name("source2")),
            ],
            ..base
        },
        Task::Qqp => Spec {
            id: Some(Name("id")),
            text: Name("question1"),
            pair: Some(Name("question2")),
            label: Some(Name("is_duplicate")),
            extra: &[("qid1", Name("qid1")), ("qid2", Name("qid2"))],
            skip_malformed: true,
            ..base
        },
        Task::MnliMatched | Task::MnliMismatched => Spec {
            label: Some(Name("gold_label")),
            extra: &[
                ("promptID", Name("promptID")),
                ("pairID", Name("pairID")),
                ("genre", Name("genre")),
            ],
            ..base
        },
        Task::Qnli => Spec {
            text: Name("question"),
            pair: Some(Name("sentence")),
            ..base
        },
        Task::Rte | Task::Wnli | Task::Ax => base,
        _ => unreachable!("{task} is not a GLUE task"),
    }
}

/// Resolves a column to a field position; `Err` names the missing header column.
fn resolve(col: Col, header: Option<&[&str]>) -> std::result::Result<usize, &'static str> {
    match (col, header) {
        (Col::At(i), _) => Ok(i),
        (Col::Name(n), Some(h)) => h.iter().position(|&c| c == n).ok_or(n),
        (Col::Name(n), None) => Err(n),
    }
}

pub(super) fn read(task: Task, split: Split, path: &Path, text: &str) -> Result<Loaded> {
    let spec = spec(task, split);
    let mut rows = lines(text);
    let header: Option<Vec<&str>> = if spec.header {
        let Some((_, h)) = rows.next() else {
            return Err(format_err(path, 1, "empty file: expected a header line"));
        };
        Some(h.split('\t').collect())
    } else {
        None
    };
    let h = header.as_deref();
    let fields = h.map_or(spec.fields, <[&str]>::len);
    let missing = |name: &str| {
        format_err(
            path,
            1,
            format!(
                "header has no column {name:?} (columns: {})",
                h.unwrap_or(&[]).join(", ")
            ),
        )
    };
    let required = |c: Col| resolve(c, h).map_err(missing);
    let id_col = spec.id.map(required).transpose()?;
    let text_col = required(spec.text)?;
    let pair_col = spec.pair.map(required).transpose()?;
    // Labels are required in train/dev and read in test only if the file has them.
    let label_col = match spec.label {
        Some(c) if split != Split::Test => Some(required(c)?),
        Some(c) => resolve(c, h).ok(),
        None => None,
    };
    let layout = Layout {
        fields,
        id: id_col,
        text: text_col,
        pair: pair_col,
        label: label_col,
        extra: spec
            .extra
            .iter()
            .filter_map(|&(k, c)| resolve(c, h).ok().map(|i| (k, i)))
            .collect(),
    };

    let mut examples = Vec::new();
    let mut skipped = Vec::new();
    for (row, (line, l)) in rows.enumerate() {
        match layout.parse(task, row, l) {
            Ok(ex) => examples.push(ex),
            Err(reason) if spec.skip_malformed => skipped.push(SkippedRow { line, reason }),
            Err(reason) => return Err(format_err(path, line, reason)),
        }
    }
    Ok(Loaded { examples, skipped })
}

/// Field positions of one file.
struct Layout {
    fields: usize,
    /// `None`: the id is the 0-based data-row number.
    id: Option<usize>,
    text: usize,
    pair: Option<usize>,
    label: Option<usize>,
    extra: Vec<(&'static str, usize)>,
}

impl Layout {
    /// One data row (`row`: its 0-based number); `Err` says what is wrong with it.
    fn parse(&self, task: Task, row: usize, line: &str) -> std::result::Result<Example, String> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != self.fields {
            return Err(format!(
                "expected {} tab-separated fields, found {}",
                self.fields,
                f.len()
            ));
        }
        let id = match self.id {
            Some(i) if f[i].trim().is_empty() => return Err("empty id".to_string()),
            Some(i) => f[i].trim().to_string(),
            None => row.to_string(),
        };
        let label = match self.label {
            None => None,
            Some(i) => Some(match task.kind() {
                TaskKind::Regression => {
                    let v = f[i].trim();
                    match v.parse::<f64>() {
                        Ok(s) if s.is_finite() => Label::Score(s),
                        _ => return Err(format!("score {v:?} is not a finite number")),
                    }
                }
                _ => Label::Class(class_of(task, f[i].trim())?),
            }),
        };
        let mut ex = Example::new(
            id,
            f[self.text].to_string(),
            self.pair.map(|i| f[i].to_string()),
            label,
        );
        for &(k, i) in &self.extra {
            ex.extra.insert(k.to_string(), f[i].to_string());
        }
        Ok(ex)
    }
}
