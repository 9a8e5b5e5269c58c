//! SuperGLUE JSONL readers.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value};

use super::{Example, Label, Loaded, Split, Task, class_of, format_err, lines};
use crate::error::{Error, Result};

type Fields = Map<String, Value>;

/// One JSON object (or a nested one) with where it came from, for error messages.
#[derive(Clone, Copy)]
struct Obj<'a, 'b> {
    map: &'a Fields,
    /// Dotted field path of this object inside the line (`""` at top level).
    at: &'b str,
    path: &'a Path,
    line: usize,
}

impl<'a> Obj<'a, '_> {
    fn err(&self, message: impl Into<String>) -> Error {
        format_err(self.path, self.line, message)
    }

    fn field_name(&self, key: &str) -> String {
        if self.at.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.at)
        }
    }

    fn get(&self, key: &str) -> Result<&'a Value> {
        self.map
            .get(key)
            .filter(|v| !v.is_null())
            .ok_or_else(|| self.err(format!("missing field {:?}", self.field_name(key))))
    }

    fn str(&self, key: &str) -> Result<&'a str> {
        self.get(key)?
            .as_str()
            .ok_or_else(|| self.err(format!("field {:?} is not a string", self.field_name(key))))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        v.as_u64()
            .and_then(|u| usize::try_from(u).ok())
            .ok_or_else(|| {
                self.err(format!(
                    "field {:?} is not a non-negative integer: {v}",
                    self.field_name(key)
                ))
            })
    }

    /// An id: a non-negative integer or a string (AX-b writes `"idx": "0"`).
    fn idx(&self, key: &str) -> Result<String> {
        match self.get(key)? {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            Value::Number(n) if n.is_u64() => Ok(n.to_string()),
            v => Err(self.err(format!(
                "field {:?} is not an id (integer or string): {v}",
                self.field_name(key)
            ))),
        }
    }

    fn array(&self, key: &str) -> Result<&'a Vec<Value>> {
        self.get(key)?
            .as_array()
            .ok_or_else(|| self.err(format!("field {:?} is not an array", self.field_name(key))))
    }

    /// The label, if present: required outside the test split.
    fn label_value(&self, split: Split) -> Result<Option<&'a Value>> {
        match self.map.get("label").filter(|v| !v.is_null()) {
            Some(v) => Ok(Some(v)),
            None if split == Split::Test => Ok(None),
            None => Err(self.err(format!(
                "missing field {:?} ({split} data is labelled)",
                self.field_name("label")
            ))),
        }
    }

    /// A class label from the task's string vocabulary, or a boolean / 0-1 for the
    /// `False`/`True` tasks.
    fn class_label(&self, task: Task, split: Split) -> Result<Option<Label>> {
        let Some(v) = self.label_value(split)? else {
            return Ok(None);
        };
        let s = match v {
            Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
            Value::Number(n) if n.as_u64() == Some(0) => "False".to_string(),
            Value::Number(n) if n.as_u64() == Some(1) => "True".to_string(),
            Value::String(s) => s.clone(),
            v => return Err(self.err(format!("label {v} is not a valid label"))),
        };
        class_of(task, &s)
            .map(|c| Some(Label::Class(c)))
            .map_err(|m| self.err(m))
    }
}

/// Iterates the JSON objects of a JSONL file with their 1-based line numbers.
fn objects<'t>(
    path: &'t Path,
    text: &'t str,
) -> impl Iterator<Item = Result<(usize, Fields)>> + 't {
    lines(text)
        .filter(|(_, l)| !l.trim().is_empty())
        .map(move |(line, l)| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(m)) => Ok((line, m)),
            Ok(_) => Err(format_err(path, line, "expected a JSON object")),
            Err(e) => Err(format_err(path, line, format!("invalid JSON: {e}"))),
        })
}

pub(super) fn read(task: Task, split: Split, path: &Path, text: &str) -> Result<Loaded> {
    let mut examples = Vec::new();
    for item in objects(path, text) {
        let (line, map) = item?;
        let o = Obj {
            map: &map,
            at: "",
            path,
            line,
        };
        match task {
            Task::MultiRc => multirc(o, split, &mut examples)?,
            Task::Record => record(o, split, &mut examples)?,
            _ => examples.push(single(task, split, o)?),
        }
    }
    Ok(Loaded {
        examples,
        skipped: Vec::new(),
    })
}

/// The tasks with one example per line.
fn single(task: Task, split: Split, o: Obj<'_, '_>) -> Result<Example> {
    let id = o.idx("idx")?;
    let pair = |a: &str, b: &str| -> Result<Example> {
        Ok(Example::new(
            id.clone(),
            o.str(a)?.to_string(),
            Some(o.str(b)?.to_string()),
            o.class_label(task, split)?,
        ))
    };
    Ok(match task {
        Task::BoolQ => pair("question", "passage")?,
        Task::Cb | Task::SgRte => pair("premise", "hypothesis")?,
        Task::AxB => {
            let mut ex = pair("sentence1", "sentence2")?;
            for (k, v) in o.map {
                if let (false, Some(s)) = (
                    matches!(k.as_str(), "idx" | "label" | "sentence1" | "sentence2"),
                    v.as_str(),
                ) {
                    ex.extra.insert(k.clone(), s.to_string());
                }
            }
            ex
        }
        Task::AxG => {
            let mut ex = pair("premise", "hypothesis")?;
            // `pair_id` is unique per example; the official DNC gender-parity script pairs ids
            // p and p + 2 where (p + 2) / 4 == (p + 4) / 4 (see `metrics::gender_pairs`). The
            // group is the pair's lower id.
            let id = o
                .get("pair_id")?
                .as_u64()
                .ok_or_else(|| o.err("field \"pair_id\" is not a non-negative integer"))?;
            let first = if (id + 2) / 4 == (id + 4) / 4 {
                id
            } else {
                id.saturating_sub(2)
            };
            ex.group = Some(first.to_string());
            ex.extra.insert("pair_id".into(), id.to_string());
            ex
        }
        Task::Copa => copa(o, split, id)?,
        Task::Wic => wic(task, o, split, id)?,
        Task::Wsc => wsc(task, o, split, id)?,
        _ => unreachable!("{task} is not a one-line SuperGLUE task"),
    })
}

fn copa(o: Obj<'_, '_>, split: Split, id: String) -> Result<Example> {
    let question = o.str("question")?;
    if question != "cause" && question != "effect" {
        return Err(o.err(format!(
            "field \"question\" is {question:?}, expected \"cause\" or \"effect\""
        )));
    }
    let text = format!("{} What was the {question}?", o.str("premise")?.trim_end());
    let label = match o.label_value(split)? {
        None => None,
        Some(v) => match v.as_u64() {
            Some(c @ (0 | 1)) => Some(Label::Class(c as usize)),
            _ => return Err(o.err(format!("label {v} is not 0 or 1"))),
        },
    };
    let mut ex = Example::new(id, text, None, label);
    ex.choices = Some(vec![
        o.str("choice1")?.to_string(),
        o.str("choice2")?.to_string(),
    ]);
    ex.extra.insert("question".into(), question.to_string());
    Ok(ex)
}

/// Byte offset of the `chars`-th character of `s` (`s.len()` at the end).
fn char_to_byte(s: &str, chars: usize) -> Option<usize> {
    s.char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(s.len()))
        .nth(chars)
}

fn wic(task: Task, o: Obj<'_, '_>, split: Split, id: String) -> Result<Example> {
    let mut marked = Vec::with_capacity(2);
    let mut ex_extra = Vec::new();
    for n in ["1", "2"] {
        let s = o.str(&format!("sentence{n}"))?;
        let (start, end) = (o.usize(&format!("start{n}"))?, o.usize(&format!("end{n}"))?);
        let (Some(b0), Some(b1)) = (char_to_byte(s, start), char_to_byte(s, end)) else {
            return Err(o.err(format!(
                "start{n}/end{n} = {start}/{end} lie outside sentence{n} ({} characters)",
                s.chars().count()
            )));
        };
        if b0 > b1 {
            return Err(o.err(format!("start{n} = {start} > end{n} = {end}")));
        }
        marked.push(format!("{}*{}*{}", &s[..b0], &s[b0..b1], &s[b1..]));
        ex_extra.push((format!("start{n}"), start.to_string()));
        ex_extra.push((format!("end{n}"), end.to_string()));
    }
    let text_pair = marked.pop();
    let text = marked.pop().unwrap_or_default();
    let mut ex = Example::new(id, text, text_pair, o.class_label(task, split)?);
    ex.extra.extend(ex_extra);
    ex.extra.insert("word".into(), o.str("word")?.to_string());
    Ok(ex)
}

/// Lower-cased alphanumeric core of a word, without a possessive `'s`.
fn norm_word(w: &str) -> String {
    let w = w.trim_matches(|c: char| !c.is_alphanumeric());
    let w = w
        .strip_suffix("'s")
        .or_else(|| w.strip_suffix("’s"))
        .unwrap_or(w);
    w.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Where to mark a span of `span_words` in `words` (start, word count): the official `index`
/// if the words there match, else the nearest position where the whole span occurs, else (a
/// span that is not contiguous in the text) the nearest occurrence of its first word alone,
/// else `index` as given.
fn locate_span(words: &[&str], span_words: &[&str], index: usize) -> (usize, usize) {
    let target: Vec<String> = span_words.iter().map(|w| norm_word(w)).collect();
    let nearest = |n: usize| {
        (0..words.len())
            .filter(|&j| {
                j + n <= words.len()
                    && words[j..j + n]
                        .iter()
                        .zip(&target)
                        .all(|(w, t)| norm_word(w) == *t)
            })
            .min_by_key(|&j| (j.abs_diff(index), j))
    };
    let n = target.len().max(1);
    if let Some(j) = nearest(n) {
        return (j, n);
    }
    if let Some(j) = nearest(1) {
        return (j, 1);
    }
    let j = index.min(words.len().saturating_sub(1));
    (j, n.min(words.len() - j))
}

/// Byte length of the longest prefix of `word` equal, case-insensitively, to `target`; `None`
/// if `word` does not start with `target`.
fn prefix_len_ci(word: &str, target: &str) -> Option<usize> {
    let mut wi = word.char_indices();
    for t in target.chars() {
        let (_, c) = wi.next()?;
        if !c.to_lowercase().eq(t.to_lowercase()) {
            return None;
        }
    }
    Some(wi.next().map_or(word.len(), |(b, _)| b))
}

/// Wraps words `start..start + len` in `open`/`close`, keeping trailing punctuation or a
/// possessive of the last word (and leading punctuation of the first) outside the mark.
fn mark_span(
    words: &mut [String],
    start: usize,
    len: usize,
    span: &[&str],
    open: &str,
    close: &str,
) {
    if words.is_empty() || len == 0 {
        return;
    }
    let last = start + len - 1;
    let last_span = span.last().copied().unwrap_or("");
    let cut = prefix_len_ci(&words[last], last_span).unwrap_or(words[last].len());
    words[last].insert_str(cut, close);
    let first = &words[start];
    let first_span_starts_alnum = span
        .first()
        .and_then(|w| w.chars().next())
        .is_some_and(char::is_alphanumeric);
    let lead = if first_span_starts_alnum {
        first
            .char_indices()
            .find(|(_, c)| c.is_alphanumeric())
            .map_or(0, |(b, _)| b)
    } else {
        0
    };
    words[start].insert_str(lead, open);
}

fn wsc(task: Task, o: Obj<'_, '_>, split: Split, id: String) -> Result<Example> {
    let text = o.str("text")?;
    let target = o
        .get("target")?
        .as_object()
        .ok_or_else(|| o.err("field \"target\" is not an object"))?;
    let t = Obj {
        map: target,
        at: "target",
        ..o
    };
    let words_raw: Vec<&str> = text.split(' ').collect();
    let mut words: Vec<String> = words_raw.iter().map(|w| w.to_string()).collect();
    let mut extra = Vec::new();
    let mut texts = Vec::new();
    // Mark the pronoun first: marks only grow words, and the two spans never share a word.
    for (n, open, close) in [("2", "[", "]"), ("1", "*", "*")] {
        let span_text = t.str(&format!("span{n}_text"))?;
        let index = t.usize(&format!("span{n}_index"))?;
        if index >= words_raw.len() {
            return Err(o.err(format!(
                "target.span{n}_index = {index} is past the last word ({} words)",
                words_raw.len()
            )));
        }
        let span: Vec<&str> = span_text.split_whitespace().collect();
        let (at, len) = locate_span(&words_raw, &span, index);
        mark_span(
            &mut words,
            at,
            len,
            &span[..len.min(span.len())],
            open,
            close,
        );
        extra.push((format!("span{n}_text"), span_text.to_string()));
        extra.push((format!("span{n}_index"), index.to_string()));
        if at != index {
            extra.push((format!("span{n}_marked_index"), at.to_string()));
        }
        texts.push(span.join(" "));
    }
    let (pronoun, candidate) = (&texts[0], &texts[1]);
    let mut ex = Example::new(
        id,
        words.join(" "),
        Some(format!("{pronoun} refers to {candidate}.")),
        o.class_label(task, split)?,
    );
    ex.extra.extend(extra);
    Ok(ex)
}

/// The `passage` object of a MultiRC or ReCoRD line.
fn passage_of<'a>(o: Obj<'a, '_>) -> Result<Obj<'a, 'static>> {
    let map = o
        .get("passage")?
        .as_object()
        .ok_or_else(|| o.err("field \"passage\" is not an object"))?;
    Ok(Obj {
        map,
        at: "passage",
        path: o.path,
        line: o.line,
    })
}

fn multirc(o: Obj<'_, '_>, split: Split, out: &mut Vec<Example>) -> Result<()> {
    let p = o.idx("idx")?;
    let passage = passage_of(o)?;
    let paragraph = passage.str("text")?;
    for (qi, q) in passage.array("questions")?.iter().enumerate() {
        let at = format!("passage.questions[{qi}]");
        let q = Obj {
            map: q
                .as_object()
                .ok_or_else(|| o.err(format!("{at} is not an object")))?,
            at: &at,
            ..o
        };
        let qid = q.idx("idx")?;
        let question = q.str("question")?;
        for (ai, a) in q.array("answers")?.iter().enumerate() {
            let at = format!("{at}.answers[{ai}]");
            let a = Obj {
                map: a
                    .as_object()
                    .ok_or_else(|| o.err(format!("{at} is not an object")))?,
                at: &at,
                ..o
            };
            let aid = a.idx("idx")?;
            let answer = a.str("text")?;
            let mut ex = Example::new(
                format!("{p}-{qid}-{aid}"),
                paragraph.to_string(),
                Some(format!("{question} {answer}")),
                a.class_label(Task::MultiRc, split)?,
            );
            ex.group = Some(format!("{p}-{qid}"));
            for (k, v) in [
                ("passage_idx", p.as_str()),
                ("question_idx", qid.as_str()),
                ("answer_idx", aid.as_str()),
                ("question", question),
                ("answer", answer),
            ] {
                ex.extra.insert(k.into(), v.to_string());
            }
            out.push(ex);
        }
    }
    Ok(())
}

/// Joins ReCoRD's `@highlight` bullet lines into running text: `"…\n@highlight\nX"` becomes
/// `"…. X"` (or `"… X"` after end punctuation), as T5's ReCoRD preprocessing does.
fn record_passage(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut parts = text.split("\n@highlight\n");
    out.push_str(parts.next().unwrap_or(""));
    for part in parts {
        let ends_sentence = out
            .chars()
            .last()
            .is_some_and(|c| matches!(c, '.' | '?' | '!' | '"' | '\''));
        out.push_str(if ends_sentence { " " } else { ". " });
        out.push_str(part);
    }
    out
}

fn record(o: Obj<'_, '_>, split: Split, out: &mut Vec<Example>) -> Result<()> {
    let p = o.idx("idx")?;
    let passage = passage_of(o)?;
    let raw = passage.str("text")?;
    // Entity spans are inclusive character offsets.
    let mut entities = BTreeSet::new();
    for (ei, e) in passage.array("entities")?.iter().enumerate() {
        let at = format!("passage.entities[{ei}]");
        let e = Obj {
            map: e
                .as_object()
                .ok_or_else(|| o.err(format!("{at} is not an object")))?,
            at: &at,
            ..o
        };
        let (start, end) = (e.usize("start")?, e.usize("end")?);
        let span = (start <= end)
            .then(|| Some((char_to_byte(raw, start)?, char_to_byte(raw, end + 1)?)))
            .flatten();
        let Some((b0, b1)) = span else {
            return Err(o.err(format!(
                "{at}: start/end = {start}/{end} is not an inclusive span of passage.text ({} characters)",
                raw.chars().count()
            )));
        };
        entities.insert(&raw[b0..b1]);
    }
    let text = record_passage(raw);
    for (qi, q) in o.array("qas")?.iter().enumerate() {
        let at = format!("qas[{qi}]");
        let q = Obj {
            map: q
                .as_object()
                .ok_or_else(|| o.err(format!("{at} is not an object")))?,
            at: &at,
            ..o
        };
        let qid = q.idx("idx")?;
        let query = q.str("query")?;
        if !query.contains("@placeholder") {
            return Err(q.err(format!("{at}.query has no @placeholder")));
        }
        let answers: Option<BTreeSet<&str>> = match q.map.get("answers").filter(|v| !v.is_null()) {
            None if split == Split::Test => None,
            None => {
                return Err(q.err(format!(
                    "missing field \"{at}.answers\" ({split} data is labelled)"
                )));
            }
            Some(_) => {
                let mut set = BTreeSet::new();
                for (ai, a) in q.array("answers")?.iter().enumerate() {
                    let at = format!("{at}.answers[{ai}]");
                    let a = Obj {
                        map: a
                            .as_object()
                            .ok_or_else(|| o.err(format!("{at} is not an object")))?,
                        at: &at,
                        ..o
                    };
                    set.insert(a.str("text")?);
                }
                Some(set)
            }
        };
        let answers_json = answers
            .as_ref()
            .map(|a| serde_json::to_string(&a.iter().collect::<Vec<_>>()).unwrap_or_default());
        for (k, &entity) in entities.iter().enumerate() {
            let label = answers
                .as_ref()
                .map(|a| Label::Class(usize::from(a.contains(entity))));
            let mut ex = Example::new(
                format!("{qid}-{k}"),
                text.clone(),
                Some(query.replace("@placeholder", entity)),
                label,
            );
            ex.group = Some(qid.clone());
            ex.extra.insert("passage_idx".into(), p.clone());
            ex.extra.insert("query_idx".into(), qid.clone());
            ex.extra.insert("entity".into(), entity.to_string());
            if let Some(a) = &answers_json {
                ex.extra.insert("answers".into(), a.clone());
            }
            out.push(ex);
        }
    }
    Ok(())
}
