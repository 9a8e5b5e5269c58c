//! Official GLUE / SuperGLUE metrics and the leaderboard aggregation.
//!
//! Every metric here reproduces a named reference implementation — scikit-learn, SciPy, or the
//! official SQuAD v1.1 / ReCoRD / DNC evaluation scripts — and the crate's test
//! `tests/metrics.rs` checks each against values those libraries computed
//! (`tests/fixtures/make_metric_fixtures.py` writes them).
//!
//! Conventions:
//! - Scores are fractions in `[0, 1]` (correlations in `[-1, 1]`), not the ×100 the
//!   leaderboards print.
//! - Class labels are `usize`; binary tasks use `1` for the positive class.
//! - Bad input (length mismatch, empty input, label out of range, a malformed group) is an
//!   [`Error::Invalid`] naming the problem; nothing here panics on user input.
//! - Metric names in maps are the [`ACCURACY`], [`F1`], [`MCC`], [`PEARSON`], [`SPEARMAN`],
//!   [`F1_MACRO`], [`F1A`], [`EM`] and [`GENDER_PARITY`] strings (a CLI contract).

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};

/// Metric name: accuracy ([`accuracy`]).
pub const ACCURACY: &str = "accuracy";
/// Metric name: binary F1 of the positive class ([`f1_binary`]; ReCoRD's token F1 in [`record`]).
pub const F1: &str = "f1";
/// Metric name: Matthews correlation coefficient ([`matthews`]).
pub const MCC: &str = "mcc";
/// Metric name: Pearson correlation ([`pearson`]).
pub const PEARSON: &str = "pearson";
/// Metric name: Spearman rank correlation ([`spearman`]).
pub const SPEARMAN: &str = "spearman";
/// Metric name: macro-averaged F1 ([`f1_macro`]; CB).
pub const F1_MACRO: &str = "f1_macro";
/// Metric name: MultiRC F1 over all answer options ([`multirc`]).
pub const F1A: &str = "f1a";
/// Metric name: exact match (MultiRC per question, ReCoRD per query).
pub const EM: &str = "em";
/// Metric name: AX-g gender parity score ([`gender_parity`]).
pub const GENDER_PARITY: &str = "gender_parity";

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// Checks that two inputs have the same, non-zero length.
fn check_pair_len(what: &str, a: (&str, usize), b: (&str, usize)) -> Result<usize> {
    if a.1 != b.1 {
        return Err(invalid(format!(
            "{what}: length mismatch: {} has {} elements, {} has {}",
            a.0, a.1, b.0, b.1
        )));
    }
    if a.1 == 0 {
        return Err(invalid(format!("{what}: empty input")));
    }
    Ok(a.1)
}

/// Checks that every label is `< n` (names the first offender).
fn check_labels(what: &str, name: &str, labels: &[usize], n: usize) -> Result<()> {
    match labels.iter().enumerate().find(|(_, l)| **l >= n) {
        Some((i, l)) => Err(invalid(format!(
            "{what}: label out of range: {name}[{i}] = {l}, expected 0..{n}"
        ))),
        None => Ok(()),
    }
}

/// Accuracy: the fraction of positions where `pred[i] == gold[i]`.
///
/// Matches `sklearn.metrics.accuracy_score(gold, pred)`. Labels may be any `usize`.
///
/// Errors: length mismatch, empty input.
pub fn accuracy(pred: &[usize], gold: &[usize]) -> Result<f64> {
    let n = check_pair_len("accuracy", ("pred", pred.len()), ("gold", gold.len()))?;
    let correct = pred.iter().zip(gold).filter(|(p, g)| p == g).count();
    Ok(correct as f64 / n as f64)
}

/// Binary F1 of the positive class `1`: `2·tp / (2·tp + fp + fn)`.
///
/// Matches `sklearn.metrics.f1_score(gold, pred)` (`average="binary"`, `pos_label=1`),
/// including its `zero_division` default: when there is no positive label in either `gold` or
/// `pred` (`2·tp + fp + fn = 0`) the score is `0.0` (scikit-learn warns and returns 0).
/// Used by MRPC and QQP (GLUE) and, over all answer options, by MultiRC ([`multirc`]).
///
/// Errors: length mismatch, empty input, a label other than 0 or 1.
pub fn f1_binary(pred: &[usize], gold: &[usize]) -> Result<f64> {
    check_pair_len("f1_binary", ("pred", pred.len()), ("gold", gold.len()))?;
    check_labels("f1_binary", "pred", pred, 2)?;
    check_labels("f1_binary", "gold", gold, 2)?;
    Ok(f1_of_class(pred, gold, 1))
}

/// F1 of class `c`, scikit-learn's way: `2·tp / (true_sum + pred_sum)`, 0 when both sums are 0.
fn f1_of_class(pred: &[usize], gold: &[usize], c: usize) -> f64 {
    let (mut tp, mut pred_sum, mut true_sum) = (0u64, 0u64, 0u64);
    for (&p, &g) in pred.iter().zip(gold) {
        tp += u64::from(p == c && g == c);
        pred_sum += u64::from(p == c);
        true_sum += u64::from(g == c);
    }
    let denom = true_sum as f64 + pred_sum as f64;
    if denom == 0.0 {
        0.0
    } else {
        2.0 * tp as f64 / denom
    }
}

/// Matthews correlation coefficient, general multiclass form (Gorodkin's R_K).
///
/// With the confusion matrix `C` over the labels present, `t` its row sums (gold counts), `p`
/// its column sums (predicted counts), `c = trace(C)` and `s = n` samples:
/// `MCC = (c·s − t·p) / sqrt((s² − p·p)(s² − t·t))`, and `0.0` when the denominator is 0
/// (a constant `gold` or `pred`). This is `sklearn.metrics.matthews_corrcoef(gold, pred)`,
/// computed the same way in `f64`; for two classes it is the usual binary MCC.
/// CoLA uses it with two classes; the GLUE diagnostic AX with three (R3, Gorodkin 2004, as
/// the GLUE paper §4 specifies), as does SuperGLUE's AX-b with two. Labels may be any `usize`.
///
/// Errors: length mismatch, empty input.
pub fn matthews(pred: &[usize], gold: &[usize]) -> Result<f64> {
    let n = check_pair_len("matthews", ("pred", pred.len()), ("gold", gold.len()))?;
    // label -> (gold count, predicted count); BTreeMap keeps sklearn's sorted label order.
    let mut sums: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    let mut correct = 0u64;
    for (&p, &g) in pred.iter().zip(gold) {
        sums.entry(g).or_default().0 += 1;
        sums.entry(p).or_default().1 += 1;
        correct += u64::from(p == g);
    }
    let n_samples = n as f64;
    let n_correct = correct as f64;
    let (mut tp, mut pp, mut tt) = (0.0f64, 0.0f64, 0.0f64);
    for &(t, p) in sums.values() {
        let (t, p) = (t as f64, p as f64);
        tp += t * p;
        pp += p * p;
        tt += t * t;
    }
    let cov_ytyp = n_correct * n_samples - tp;
    let cov_ypyp = n_samples * n_samples - pp;
    let cov_ytyt = n_samples * n_samples - tt;
    let denom = cov_ypyp * cov_ytyt;
    if denom == 0.0 {
        Ok(0.0)
    } else {
        Ok(cov_ytyp / denom.sqrt())
    }
}

/// Checks lengths for the correlations: equal and at least 2.
fn check_corr_len(what: &str, x: &[f64], y: &[f64]) -> Result<usize> {
    let n = check_pair_len(what, ("x", x.len()), ("y", y.len()))?;
    if n < 2 {
        return Err(invalid(format!("{what}: need at least 2 pairs, got {n}")));
    }
    Ok(n)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn is_constant(v: &[f64]) -> bool {
    v.iter().all(|&a| a == v[0])
}

/// Pearson correlation coefficient `r = Σ(x−x̄)(y−ȳ) / (‖x−x̄‖·‖y−ȳ‖)`, clipped to `[-1, 1]`.
///
/// Matches the statistic of `scipy.stats.pearsonr(x, y)`, computed the same way (centre,
/// scale each centred vector to unit norm, dot product, clip; with exactly 2 pairs the result
/// is rounded to ±1). Like SciPy, it is `NaN` when either input is constant (the coefficient
/// is undefined; SciPy warns `ConstantInputWarning`) and `NaN` propagates from `NaN` inputs.
/// STS-B reports it (with [`spearman`]).
///
/// Errors: length mismatch, fewer than 2 pairs (SciPy raises there too).
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64> {
    let n = check_corr_len("pearson", x, y)?;
    if is_constant(x) || is_constant(y) {
        return Ok(f64::NAN);
    }
    let unit = |v: &[f64]| -> Vec<f64> {
        let m = mean(v);
        let centred: Vec<f64> = v.iter().map(|a| a - m).collect();
        let max = centred.iter().fold(0.0f64, |acc, a| acc.max(a.abs()));
        let norm = max
            * centred
                .iter()
                .map(|a| (a / max) * (a / max))
                .sum::<f64>()
                .sqrt();
        centred.iter().map(|a| a / norm).collect()
    };
    let (ux, uy) = (unit(x), unit(y));
    let r = ux.iter().zip(&uy).map(|(a, b)| a * b).sum::<f64>();
    let r = r.clamp(-1.0, 1.0); // NaN stays NaN
    Ok(if n == 2 { r.round() } else { r })
}

/// Ranks 1..=n of `v` with ties given the average of their ordinal ranks
/// (`scipy.stats.rankdata(v, method="average")`), and the sizes of the tie groups in
/// ascending order of value (what tie corrections need). `v` must not contain NaN.
pub fn average_ranks(v: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut ties = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && v[order[end]] == v[order[start]] {
            end += 1;
        }
        // Ordinal ranks start+1 ..= end; their mean is (start + 1 + end) / 2.
        let r = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = r;
        }
        ties.push(end - start);
        start = end;
    }
    (ranks, ties)
}

/// Spearman rank correlation: the Pearson correlation of the ranks, ties ranked by their
/// average rank.
///
/// Matches the statistic of `scipy.stats.spearmanr(x, y)`: `rankdata(method="average")` on
/// each input, then `numpy.corrcoef` of the ranks (`cov / σx / σy`, clipped to `[-1, 1]`).
/// Like SciPy, it is `NaN` when either input is constant and when any input is `NaN`
/// (`nan_policy="propagate"`). STS-B reports it (with [`pearson`]).
///
/// Errors: length mismatch, fewer than 2 pairs (SciPy returns `NaN` for a single pair; a
/// correlation of one point is meaningless input here).
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64> {
    let n = check_corr_len("spearman", x, y)?;
    if is_constant(x) || is_constant(y) || x.iter().chain(y).any(|a| a.is_nan()) {
        return Ok(f64::NAN);
    }
    let (rx, ry) = (average_ranks(x).0, average_ranks(y).0);
    let (mx, my) = (mean(&rx), mean(&ry));
    let dx: Vec<f64> = rx.iter().map(|a| a - mx).collect();
    let dy: Vec<f64> = ry.iter().map(|a| a - my).collect();
    let fact = 1.0 / (n - 1) as f64;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    let cxy = dot(&dx, &dy) * fact;
    let sx = (dot(&dx, &dx) * fact).sqrt();
    let sy = (dot(&dy, &dy) * fact).sqrt();
    Ok((cxy / sx / sy).clamp(-1.0, 1.0))
}

/// Macro-averaged F1 over the classes `0..num_classes`: the unweighted mean of each class's
/// F1 (`2·tp / (true_sum + pred_sum)`, `0.0` for a class absent from both `gold` and `pred`).
///
/// Matches `sklearn.metrics.f1_score(gold, pred, average="macro",
/// labels=range(num_classes))` with the default `zero_division` (a class with no gold and no
/// predicted example counts as 0 in the mean). SuperGLUE's CB reports it as "Avg. F1" (with
/// accuracy), over its 3 classes.
///
/// Errors: length mismatch, empty input, `num_classes == 0`, a label `>= num_classes`.
pub fn f1_macro(pred: &[usize], gold: &[usize], num_classes: usize) -> Result<f64> {
    check_pair_len("f1_macro", ("pred", pred.len()), ("gold", gold.len()))?;
    if num_classes == 0 {
        return Err(invalid("f1_macro: num_classes is 0"));
    }
    check_labels("f1_macro", "pred", pred, num_classes)?;
    check_labels("f1_macro", "gold", gold, num_classes)?;
    let sum: f64 = (0..num_classes).map(|c| f1_of_class(pred, gold, c)).sum();
    Ok(sum / num_classes as f64)
}

/// MultiRC's two metrics, `(f1a, em)`, over answer options labelled 0/1.
///
/// - `f1a`: binary F1 ([`f1_binary`]) over all answer options pooled, as SuperGLUE defines
///   F1a (the MultiRC paper's F1 over all answer-options).
/// - `em`: exact match — the fraction of questions all of whose answer options are labelled
///   correctly. `question[i]` names the question answer option `i` belongs to (e.g.
///   `"{passage idx}/{question idx}"` from the SuperGLUE `idx` fields); options with equal keys
///   form one question whether or not they are adjacent.
///
/// These are the MultiRC evaluation's "dataset-wide" F1a (precision and recall across all
/// candidate answers) and its per-question EM (Khashabi et al. 2018), which SuperGLUE reports
/// as "F1a / EM" (SuperGLUE paper Table 1).
///
/// Errors: length mismatch (of any of the three), empty input, a label other than 0 or 1.
pub fn multirc(pred: &[usize], gold: &[usize], question: &[String]) -> Result<(f64, f64)> {
    check_pair_len("multirc", ("pred", pred.len()), ("gold", gold.len()))?;
    check_pair_len(
        "multirc",
        ("pred", pred.len()),
        ("question", question.len()),
    )?;
    check_labels("multirc", "pred", pred, 2)?;
    check_labels("multirc", "gold", gold, 2)?;
    let f1a = f1_binary(pred, gold)?;
    // question -> all options right so far
    let mut all_right: HashMap<&str, bool> = HashMap::new();
    for ((p, g), q) in pred.iter().zip(gold).zip(question) {
        let e = all_right.entry(q.as_str()).or_insert(true);
        *e &= p == g;
    }
    let right = all_right.values().filter(|&&r| r).count();
    Ok((f1a, right as f64 / all_right.len() as f64))
}

/// Python's `\w` for `str` patterns is "alphanumeric or underscore"; Rust's
/// `char::is_alphanumeric` is the same up to marks with the Other_Alphabetic property (see
/// [`squad_normalize`]).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Python's `str.isspace` (used by `str.split()`): Unicode White_Space plus U+001C..=U+001F,
/// which Python also splits on.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// SQuAD v1.1 answer normalisation (`normalize_answer` of the official `evaluate-v1.1.py`,
/// reused verbatim by the official ReCoRD evaluation script), in its order:
/// 1. lower-case (full Unicode lower-casing, as Python's `str.lower`);
/// 2. remove every character of Python's `string.punctuation` (the 32 ASCII punctuation
///    characters; other punctuation such as `’` or `—` stays);
/// 3. replace the articles `a`, `an`, `the` — as whole words, regex `\b(a|an|the)\b` — by a
///    space;
/// 4. split on whitespace (Python `str.split()`) and rejoin with single spaces.
///
/// Word boundaries use `char::is_alphanumeric() || '_'` for Python's Unicode `\w`; the two
/// differ only for combining marks with the Unicode Other_Alphabetic property, which could
/// matter only right next to an article.
pub fn squad_normalize(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punc: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    // Replace each maximal run of word characters that is exactly an article by a space.
    let mut no_art = String::with_capacity(no_punc.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in no_punc.chars() {
        if is_word_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut no_art);
            no_art.push(c);
        }
    }
    flush(&mut word, &mut no_art);
    no_art
        .split(is_py_space)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Token F1 of one prediction against one gold answer (`f1_score` of the official script).
fn token_f1(prediction: &str, gold: &str) -> f64 {
    let p = squad_normalize(prediction);
    let g = squad_normalize(gold);
    let p_toks: Vec<&str> = p.split(' ').filter(|t| !t.is_empty()).collect();
    let g_toks: Vec<&str> = g.split(' ').filter(|t| !t.is_empty()).collect();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &g_toks {
        *counts.entry(t).or_default() += 1;
    }
    let mut num_same = 0u64;
    for t in &p_toks {
        if let Some(c) = counts.get_mut(t)
            && *c > 0
        {
            *c -= 1;
            num_same += 1;
        }
    }
    if num_same == 0 {
        return 0.0;
    }
    let precision = num_same as f64 / p_toks.len() as f64;
    let recall = num_same as f64 / g_toks.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// ReCoRD / SQuAD v1.1 scores of one prediction: `(f1, em)`, each the maximum over `golds`
/// (`metric_max_over_ground_truths` of the official ReCoRD evaluation script).
///
/// - token F1: on the [`squad_normalize`]d texts split on spaces, `common` = the multiset
///   intersection of the tokens; `0.0` when nothing is in common (so also when either side
///   normalises to no tokens), otherwise `2PR / (P + R)` with `P = common / |pred|`,
///   `R = common / |gold|`;
/// - exact match: `1.0` when the normalised strings are equal, else `0.0`.
///
/// An empty `golds` gives `(0.0, 0.0)` (the Python script would fail on `max([])`; [`record`]
/// rejects it).
pub fn record_f1_em(prediction: &str, golds: &[String]) -> (f64, f64) {
    let norm_pred = squad_normalize(prediction);
    let mut best = (0.0f64, 0.0f64);
    for g in golds {
        let f1 = token_f1(prediction, g);
        let em = if norm_pred == squad_normalize(g) {
            1.0
        } else {
            0.0
        };
        best = (best.0.max(f1), best.1.max(em));
    }
    best
}

/// ReCoRD's `(f1, em)`: the means over queries of [`record_f1_em`] (`preds[i]` answers the
/// query whose gold answers are `golds[i]`), as the official ReCoRD evaluation script
/// computes them (there scaled by 100).
///
/// Errors: length mismatch, empty input, a query with no gold answer.
pub fn record(preds: &[String], golds: &[Vec<String>]) -> Result<(f64, f64)> {
    let n = check_pair_len("record", ("preds", preds.len()), ("golds", golds.len()))?;
    if let Some(i) = golds.iter().position(|g| g.is_empty()) {
        return Err(invalid(format!("record: query {i} has no gold answer")));
    }
    let (mut f1, mut em) = (0.0f64, 0.0f64);
    for (p, g) in preds.iter().zip(golds) {
        let (a, b) = record_f1_em(p, g);
        f1 += a;
        em += b;
    }
    Ok((f1 / n as f64, em / n as f64))
}

/// The minimal pairs of SuperGLUE's AX-g, as index pairs `(male, female)` into `pair_id`.
///
/// AX-g (the DNC recast of Winogender) gives every example its own `pair_id` (it is not
/// shared by the two members of a pair). The official DNC gender-parity script sorts by
/// `pair-id` and, in each block of four consecutive ids starting at 551638, pairs the 1st with
/// the 3rd and the 2nd with the 4th. Equivalently: ids `p` and `p + 2` form a minimal pair when
/// `(p + 2) / 4 == (p + 4) / 4` (integer division), i.e. two ids pair up when they agree on
/// `(p + 2) / 4` and on `p % 2`. In the official `AX-g.jsonl` (356 examples) this yields 178
/// pairs whose hypotheses are identical and whose premises differ in exactly one pronoun
/// (he/she, his/her, him/her); the lower id is the male variant.
///
/// Pairs come back ordered by their lower id.
///
/// Errors: empty input, an id that has no partner or that occurs twice.
pub fn gender_pairs(pair_id: &[u64]) -> Result<Vec<(usize, usize)>> {
    if pair_id.is_empty() {
        return Err(invalid("gender_pairs: empty input"));
    }
    let mut by_id: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, &id) in pair_id.iter().enumerate() {
        if let Some(j) = by_id.insert(id, i) {
            return Err(invalid(format!(
                "gender_pairs: pair_id {id} occurs twice (examples {j} and {i})"
            )));
        }
    }
    let is_first = |id: u64| id.checked_add(4).is_some() && (id + 2) / 4 == (id + 4) / 4;
    let mut pairs = Vec::with_capacity(pair_id.len() / 2);
    for (&id, &i) in &by_id {
        if is_first(id) {
            match by_id.get(&(id + 2)) {
                Some(&j) => pairs.push((i, j)),
                None => {
                    return Err(invalid(format!(
                        "gender_pairs: pair_id {id} (example {i}) has no partner {}",
                        id + 2
                    )));
                }
            }
        } else {
            let partner = id.checked_sub(2).filter(|&p| is_first(p));
            if partner.is_none_or(|p| !by_id.contains_key(&p)) {
                let want = partner.map_or_else(String::new, |p| format!(" {p}"));
                return Err(invalid(format!(
                    "gender_pairs: pair_id {id} (example {i}) has no partner{want}"
                )));
            }
        }
    }
    Ok(pairs)
}

/// AX-g gender parity score: the fraction of minimal pairs (see [`gender_pairs`]) whose two
/// predictions are equal.
///
/// SuperGLUE paper (Wang et al. 2019), Winogender diagnostic: "the gender parity score: the
/// percentage of minimal pairs for which the predictions are the same", where a minimal pair is
/// two examples that differ only in the gender of the pronoun in the premise. This is the official
/// DNC script's `same_pred / (same_pred + diff_pred)` (there ×100). It ignores the gold labels:
/// a constant prediction scores 1.0, so SuperGLUE reads it only next to accuracy.
///
/// Errors: length mismatch, empty input, and [`gender_pairs`]'s errors.
pub fn gender_parity(pred: &[usize], pair_id: &[u64]) -> Result<f64> {
    check_pair_len(
        "gender_parity",
        ("pred", pred.len()),
        ("pair_id", pair_id.len()),
    )?;
    let pairs = gender_pairs(pair_id)?;
    let same = pairs.iter().filter(|(a, b)| pred[*a] == pred[*b]).count();
    Ok(same as f64 / pairs.len() as f64)
}

/// Canonical form of a task name: ASCII lower case without `-`, `_`, `.` or spaces, so
/// `"SST-2"`, `"sst2"` and `"sst_2"` agree; `mnli_matched` / `mnli_mismatched` (the Hugging
/// Face split names) become `mnlim` / `mnlimm`.
fn canonical(task: &str) -> String {
    let c: String = task
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    match c.as_str() {
        "mnlimatched" => "mnlim".into(),
        "mnlimismatched" => "mnlimm".into(),
        _ => c,
    }
}

/// The leaderboard metrics of a task, by name (case, `-`, `_`, `.` and spaces ignored), or
/// `None` for an unknown task and for AX-g.
///
/// GLUE (paper Table 4 / leaderboard): CoLA `mcc`; SST-2 `accuracy`; MRPC and QQP `f1`,
/// `accuracy`; STS-B `pearson`, `spearman`; MNLI, MNLI-m (also `mnli_matched`), MNLI-mm (also
/// `mnli_mismatched`), QNLI, RTE, WNLI `accuracy`; AX `mcc`. SuperGLUE (paper Table 1):
/// BoolQ, COPA, RTE, WiC, WSC `accuracy`; CB `f1_macro`, `accuracy`; MultiRC `f1a`, `em`;
/// ReCoRD `f1`, `em`; AX-b `mcc`. AX-g's leaderboard entry is gender parity and accuracy side
/// by side, never combined, so it has no task score and this returns `None` for it.
pub fn task_metrics(task: &str) -> Option<&'static [&'static str]> {
    Some(match canonical(task).as_str() {
        "cola" | "ax" | "axb" => &[MCC],
        "mrpc" | "qqp" => &[F1, ACCURACY],
        "stsb" => &[PEARSON, SPEARMAN],
        "sst2" | "mnli" | "mnlim" | "mnlimm" | "qnli" | "rte" | "wnli" | "boolq" | "copa"
        | "wic" | "wsc" => &[ACCURACY],
        "cb" => &[F1_MACRO, ACCURACY],
        "multirc" => &[F1A, EM],
        "record" => &[F1, EM],
        _ => return None,
    })
}

/// A task's leaderboard score: the unweighted mean of its leaderboard metrics
/// ([`task_metrics`]) taken from `metrics`; e.g. MRPC `(f1 + accuracy) / 2`, STS-B
/// `(pearson + spearman) / 2`, CB `(f1_macro + accuracy) / 2`, MultiRC `(f1a + em) / 2`,
/// ReCoRD `(f1 + em) / 2`, CoLA `mcc`.
///
/// Rule: GLUE paper (Wang et al. 2019, ICLR) §3.4: "For tasks with multiple metrics (e.g.,
/// accuracy and F1), we use an unweighted average of the metrics as the score for the task";
/// SuperGLUE paper §3.3 does the same ("for tasks with multiple metrics, first averaging those
/// metrics to get a task score"). Extra entries in `metrics` are ignored.
///
/// `None` when the task is unknown, is AX-g (see [`task_metrics`]), or a needed metric is
/// missing from `metrics`.
pub fn task_score(task: &str, metrics: &BTreeMap<String, f64>) -> Option<f64> {
    let names = task_metrics(task)?;
    let mut sum = 0.0;
    for name in names {
        sum += metrics.get(*name)?;
    }
    Some(sum / names.len() as f64)
}

/// Looks up canonical task names in `task_scores`; errors on unknown tasks, on two keys for
/// the same task and on non-finite scores.
fn canonical_scores(
    what: &str,
    task_scores: &BTreeMap<String, f64>,
    known: &[&str],
    ignored: &[&str],
) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for (name, &score) in task_scores {
        let c = canonical(name);
        if ignored.contains(&c.as_str()) {
            continue;
        }
        if !known.contains(&c.as_str()) {
            return Err(invalid(format!(
                "{what}: {name:?} is not a task of the score (expected {})",
                known.join(", ")
            )));
        }
        if !score.is_finite() {
            return Err(invalid(format!("{what}: score of {name} is {score}")));
        }
        if out.insert(c, score).is_some() {
            return Err(invalid(format!("{what}: task {name} given twice")));
        }
    }
    let missing: Vec<&str> = known
        .iter()
        .copied()
        .filter(|k| !out.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!(
            "{what}: missing task scores: {}",
            missing.join(", ")
        )));
    }
    Ok(out)
}

/// The GLUE score: the unweighted mean of the nine task scores (see [`task_score`]) of CoLA,
/// SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE and WNLI, where MNLI's task score is the mean of
/// MNLI-m and MNLI-mm accuracy.
///
/// `task_scores` maps task names (matched as in [`task_metrics`]) to task scores and must hold
/// `CoLA`, `SST-2`, `MRPC`, `STS-B`, `QQP`, `MNLI-m`, `MNLI-mm`, `QNLI`, `RTE` and `WNLI`;
/// an `AX` entry is allowed and ignored (the diagnostic is reported beside the score, not in
/// it).
///
/// Sources: GLUE paper (Wang et al. 2019, ICLR) §3.4 — the leaderboard ranks by "a
/// macro-average of [the per-task] scores", multi-metric tasks averaged first; Table 6's
/// caption — "For MNLI, we report accuracy averaged over the matched and mismatched test
/// sets"; §4 — the diagnostic "is provided not as a benchmark, but as an analysis tool".
/// Recomputing the paper's Table 4 averages confirms the rule: nine tasks with MNLI =
/// (m + mm) / 2 reproduce 14 of its 16 printed averages to the printed precision (the other
/// two are off by 0.1), while counting MNLI-m and MNLI-mm as two tasks reproduces none.
///
/// Errors: a missing task, an unknown task (e.g. a plain `MNLI`: give `MNLI-m` and `MNLI-mm`),
/// a task given twice (`SST-2` and `sst2`), a non-finite score.
pub fn glue_score(task_scores: &BTreeMap<String, f64>) -> Result<f64> {
    const KNOWN: &[&str] = &[
        "cola", "sst2", "mrpc", "stsb", "qqp", "mnlim", "mnlimm", "qnli", "rte", "wnli",
    ];
    let mut s = canonical_scores("glue_score", task_scores, KNOWN, &["ax"])?;
    let mnli = (s["mnlim"] + s["mnlimm"]) / 2.0;
    s.remove("mnlim");
    s.remove("mnlimm");
    s.insert("mnli".into(), mnli);
    Ok(s.values().sum::<f64>() / s.len() as f64)
}

/// The SuperGLUE score: the unweighted mean of the eight task scores (see [`task_score`]) of
/// BoolQ, CB, COPA, MultiRC, ReCoRD, RTE, WiC and WSC.
///
/// `task_scores` maps task names (matched as in [`task_metrics`]) to task scores and must hold
/// those eight; `AX-b` and `AX-g` entries are allowed and ignored (the diagnostics are shown
/// on the leaderboard but are not part of the score).
///
/// Source: SuperGLUE paper (Wang et al. 2019, NeurIPS) §3.3 "Scoring": "we opt for the simple
/// approach of weighing each task equally, and for tasks with multiple metrics, first averaging
/// those metrics to get a task score"; Table 1 lists the eight tasks and their metrics.
///
/// Errors: a missing task, an unknown task, a task given twice, a non-finite score.
pub fn superglue_score(task_scores: &BTreeMap<String, f64>) -> Result<f64> {
    const KNOWN: &[&str] = &[
        "boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc",
    ];
    let s = canonical_scores("superglue_score", task_scores, KNOWN, &["axb", "axg"])?;
    Ok(s.values().sum::<f64>() / s.len() as f64)
}
