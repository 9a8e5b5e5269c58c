//! Per-example paired tests: does system A beat system B on the same evaluation examples?
//!
//! Both systems' outputs on the same examples ([`Outputs`], aligned by id with [`align`]) are
//! compared under any GLUE/SuperGLUE metric ([`Metric`]) by
//! - [`paired_bootstrap`]: the paired bootstrap (percentile CI of δ = m(A) − m(B) and the
//!   two-sided bootstrap test under the shifted null);
//! - [`permutation_test`]: approximate randomisation (swap A/B per unit with probability ½);
//! - [`mcnemar`]: McNemar's test on the discordant pairs (accuracy only).
//!
//! **Resampling unit.** When the outputs carry a `group` (MultiRC: the question an answer
//! option belongs to) the unit of resampling and of swapping is the group — a cluster
//! bootstrap — because options of one question are not independent and `em` is defined per
//! question. Otherwise the unit is the example.
//!
//! **Sufficient statistics.** [`Metric::compute`] evaluates a metric on a multiset of example
//! indices (a bootstrap sample repeats examples) from per-example sufficient statistics:
//! correct counts (accuracy), confusion counts (F1, F1a, MCC, macro-F1), centred sums
//! `Σx, Σy, Σx², Σy², Σxy` (Pearson), per-group all-correct flags (EM); Spearman ranks the
//! sample directly ([`qattn_glue::metrics::spearman`]).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use qattn_glue::metrics;
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::rng::Resampler;
use super::{check_level, percentile_interval};
use crate::error::{Error, Result, invalid};

/// Largest class label accepted (class metrics keep per-class counts).
const MAX_LABEL: f64 = 65_535.0;

/// The metrics a paired test can compare (the `qattn_glue::metrics` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Accuracy ([`metrics::accuracy`]): the fraction of examples with `pred == gold`.
    Accuracy,
    /// Binary F1 of class 1 ([`metrics::f1_binary`]), 0 when there is no positive at all.
    F1,
    /// Matthews correlation, multiclass ([`metrics::matthews`]), 0 when undefined.
    Mcc,
    /// Pearson correlation of `pred` and `gold` ([`metrics::pearson`]); NaN for constant input.
    Pearson,
    /// Spearman rank correlation ([`metrics::spearman`]); NaN for constant input.
    Spearman,
    /// Macro-F1 over the classes `0..=max label` ([`metrics::f1_macro`]).
    F1Macro,
    /// MultiRC F1 over all answer options (binary F1, [`metrics::multirc`]).
    F1a,
    /// Exact match: the fraction of groups (MultiRC questions) with every example right
    /// ([`metrics::multirc`]); needs `group`.
    Em,
    /// The mean of `pred` (per-example scores already computed against the gold, e.g.
    /// ReCoRD's per-query token F1 / EM, [`metrics::record_f1_em`]); `gold` is ignored. Not a
    /// metric name of its own: claims use it for ReCoRD's `f1` and `em`.
    Mean,
}

impl Metric {
    /// The smallest and largest value the metric can take: [0, 1] for accuracy, the F1
    /// variants, exact match and means of per-example scores; [−1, 1] for the correlations.
    pub fn bounds(self) -> (f64, f64) {
        match self {
            Metric::Mcc | Metric::Pearson | Metric::Spearman => (-1.0, 1.0),
            Metric::Accuracy
            | Metric::F1
            | Metric::F1Macro
            | Metric::F1a
            | Metric::Em
            | Metric::Mean => (0.0, 1.0),
        }
    }

    /// Every metric, in the order of the `qattn_glue::metrics` name constants.
    pub const ALL: [Metric; 8] = [
        Metric::Accuracy,
        Metric::F1,
        Metric::Mcc,
        Metric::Pearson,
        Metric::Spearman,
        Metric::F1Macro,
        Metric::F1a,
        Metric::Em,
    ];

    /// The metric's name: `accuracy`, `f1`, `mcc`, `pearson`, `spearman`, `f1_macro`, `f1a`
    /// or `em` (the `qattn_glue::metrics::{ACCURACY, …}` strings).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => metrics::ACCURACY,
            Metric::F1 => metrics::F1,
            Metric::Mcc => metrics::MCC,
            Metric::Pearson => metrics::PEARSON,
            Metric::Spearman => metrics::SPEARMAN,
            Metric::F1Macro => metrics::F1_MACRO,
            Metric::F1a => metrics::F1A,
            Metric::Em => metrics::EM,
            Metric::Mean => "mean",
        }
    }

    /// Whether `pred` and `gold` are class labels (non-negative integers) for this metric.
    fn is_classification(self) -> bool {
        !matches!(self, Metric::Pearson | Metric::Spearman | Metric::Mean)
    }

    /// Whether the labels must be 0/1.
    fn is_binary(self) -> bool {
        matches!(self, Metric::F1 | Metric::F1a)
    }

    /// The metric on the multiset of examples `idx` of `out` (indices may repeat, as in a
    /// bootstrap sample; the identity `0..n` gives the metric of the whole set).
    ///
    /// On the identity index set the value equals the `qattn_glue::metrics` function named in
    /// the variant's docs (and through it scikit-learn / SciPy); on other index sets it equals
    /// that function applied to the examples `idx` picks, repeats included — except `em`, where
    /// a group counts `c_g / |g|` times when `idx` holds `c_g` of its `|g|` examples (whole
    /// groups repeated `k` times count `k` times, as in a cluster bootstrap sample).
    ///
    /// Computation: accuracy from the correct count; F1/F1a `2·tp / (2·tp + fp + fn)` (0 when
    /// the denominator is 0, scikit-learn's `zero_division` default); MCC
    /// `(c·s − t·p) / √((s² − p·p)(s² − t·t))` from per-class gold/predicted counts (0 when the
    /// denominator is 0); macro-F1 the mean over classes `0..=K−1` of `2·tp_k / (t_k + p_k)` (0
    /// for a class with neither), `K` = 1 + the largest label in `out`; Pearson
    /// `Sxy / √(Sxx·Syy)` from sums of values centred by the full-set means (NaN when either
    /// side is constant on `idx`, clipped to `[-1, 1]`, rounded for 2 pairs — SciPy's
    /// conventions); Spearman by [`metrics::spearman`] on the picked values (average ranks for
    /// ties); EM from per-group all-correct flags.
    ///
    /// Errors: `out` inconsistent (lengths), `idx` empty or out of range, labels that are not
    /// non-negative integers (0/1 for `f1`/`f1a`), non-finite values for the correlations, fewer
    /// than 2 pairs for the correlations, `em` without `group`.
    pub fn compute(&self, out: &Outputs, idx: &[usize]) -> Result<f64> {
        out.validate("compute")?;
        if let Some(&i) = idx.iter().find(|&&i| i >= out.len()) {
            return Err(invalid(format!(
                "{}: index {i} out of range for {} examples",
                self.name(),
                out.len()
            )));
        }
        let shared = Shared::of(*self, &[out])?;
        let prep = Prep::new(*self, out, &shared)?;
        let mut scratch = Scratch::default();
        prep.eval(idx, &mut scratch)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = Error;

    /// Parses a metric name (exactly the [`Metric::name`] strings); the error lists them.
    fn from_str(s: &str) -> Result<Self> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let valid: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
                invalid(format!(
                    "unknown metric \"{s}\"; valid metrics: {}",
                    valid.join(", ")
                ))
            })
    }
}

impl Serialize for Metric {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One system's outputs on an evaluation set: parallel vectors, one entry per example.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outputs {
    /// Example ids (unique).
    pub ids: Vec<String>,
    /// Predictions: class ids as `f64` (`1.0`, `0.0`, …) or real scores (STS-B).
    pub pred: Vec<f64>,
    /// Gold labels or scores, same encoding as `pred`.
    pub gold: Vec<f64>,
    /// Group of each example (MultiRC question id): needed by `em`, and when present the unit
    /// of resampling.
    pub group: Option<Vec<String>>,
}

impl Outputs {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Checks that the vectors are parallel and non-empty.
    fn validate(&self, what: &str) -> Result<()> {
        let n = self.ids.len();
        if n == 0 {
            return Err(invalid(format!("{what}: no examples")));
        }
        let mut lens = vec![("pred", self.pred.len()), ("gold", self.gold.len())];
        if let Some(g) = &self.group {
            lens.push(("group", g.len()));
        }
        for (name, len) in lens {
            if len != n {
                return Err(invalid(format!(
                    "{what}: {name} has {len} entries but ids has {n}"
                )));
            }
        }
        Ok(())
    }

    /// Reads a JSON-lines file of `{"id": …, "pred": …, "gold": …, "group": …}` objects, one
    /// example per line ([`Outputs::parse_jsonl`] on the file's text, named by its path).
    ///
    /// Errors: the file cannot be read ([`Error::Io`]), or any [`Outputs::parse_jsonl`] error.
    pub fn read_jsonl(path: &Path) -> Result<Outputs> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_jsonl(&text, &path.display().to_string())
    }

    /// Parses JSON lines: `id` a string or a number (numbers keep their JSON spelling),
    /// `pred` and `gold` numbers or booleans (`true` = 1, `false` = 0), optional `group` a
    /// string or number — on every line or on none. Blank lines are skipped.
    ///
    /// Errors name `source:line` and the reason: invalid JSON, not an object, a missing or
    /// mistyped field, a duplicate id (with the line of its first use), `group` on some lines
    /// only, no examples at all.
    pub fn parse_jsonl(text: &str, source: &str) -> Result<Outputs> {
        let mut out = Outputs::default();
        let mut groups: Vec<String> = Vec::new();
        let mut first_line_of: HashMap<String, usize> = HashMap::new();
        let mut with_group: Option<bool> = None;
        for (i, line) in text.lines().enumerate() {
            let lineno = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let at = |why: String| invalid(format!("{source}:{lineno}: {why}"));
            let v: Value =
                serde_json::from_str(line).map_err(|e| at(format!("invalid JSON: {e}")))?;
            let obj = v
                .as_object()
                .ok_or_else(|| at("expected a JSON object".to_string()))?;
            let id = match obj.get("id") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(other) => {
                    return Err(at(format!(
                        "\"id\" must be a string or number, got {other}"
                    )));
                }
                None => return Err(at("missing \"id\"".to_string())),
            };
            let num = |key: &str| -> Result<f64> {
                match obj.get(key) {
                    Some(Value::Number(n)) => n
                        .as_f64()
                        .ok_or_else(|| at(format!("\"{key}\" is not a representable number"))),
                    Some(Value::Bool(b)) => Ok(if *b { 1.0 } else { 0.0 }),
                    Some(other) => Err(at(format!(
                        "\"{key}\" must be a number or boolean, got {other}"
                    ))),
                    None => Err(at(format!("missing \"{key}\""))),
                }
            };
            let pred = num("pred")?;
            let gold = num("gold")?;
            let group = match obj.get("group") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(other) => {
                    return Err(at(format!(
                        "\"group\" must be a string or number, got {other}"
                    )));
                }
            };
            match with_group {
                None => with_group = Some(group.is_some()),
                Some(w) if w != group.is_some() => {
                    return Err(at(if w {
                        "missing \"group\" (earlier lines have one; give it on every line or none)"
                            .to_string()
                    } else {
                        "\"group\" given but earlier lines have none (give it on every line or none)"
                            .to_string()
                    }));
                }
                Some(_) => {}
            }
            if let Some(first) = first_line_of.get(&id) {
                return Err(at(format!("duplicate id \"{id}\" (first on line {first})")));
            }
            first_line_of.insert(id.clone(), lineno);
            out.ids.push(id);
            out.pred.push(pred);
            out.gold.push(gold);
            if let Some(g) = group {
                groups.push(g);
            }
        }
        if out.is_empty() {
            return Err(invalid(format!("{source}: no examples")));
        }
        if with_group == Some(true) {
            out.group = Some(groups);
        }
        Ok(out)
    }
}

/// Lists up to 5 items and how many more.
fn some_of(items: &[&str]) -> String {
    let shown: Vec<String> = items.iter().take(5).map(|s| format!("\"{s}\"")).collect();
    if items.len() > 5 {
        format!("{} and {} more", shown.join(", "), items.len() - 5)
    } else {
        shown.join(", ")
    }
}

/// Aligns two systems' outputs by id: returns both in `a`'s example order.
///
/// Both must hold exactly the same set of (unique) ids, with equal `gold` for each id; when
/// both carry `group` they must agree, and when only one does, both results get it.
///
/// Errors: a duplicate id in either, ids only in A (missing from B) and ids only in B (extra)
/// — up to five of each are named —, a gold mismatch (naming the id and both values), a group
/// mismatch, inconsistent or empty inputs.
pub fn align(a: &Outputs, b: &Outputs) -> Result<(Outputs, Outputs)> {
    a.validate("align: A")?;
    b.validate("align: B")?;
    let pos_b = index_ids(b, "B")?;
    let pos_a = index_ids(a, "A")?;
    let missing: Vec<&str> = a
        .ids
        .iter()
        .filter(|id| !pos_b.contains_key(id.as_str()))
        .map(String::as_str)
        .collect();
    let extra: Vec<&str> = b
        .ids
        .iter()
        .filter(|id| !pos_a.contains_key(id.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!(
                "{} id(s) of A missing from B: {}",
                missing.len(),
                some_of(&missing)
            ));
        }
        if !extra.is_empty() {
            parts.push(format!(
                "{} id(s) of B not in A: {}",
                extra.len(),
                some_of(&extra)
            ));
        }
        return Err(invalid(format!("id mismatch: {}", parts.join("; "))));
    }
    let order: Vec<usize> = a.ids.iter().map(|id| pos_b[id.as_str()]).collect();
    let mut b2 = Outputs {
        ids: a.ids.clone(),
        pred: order.iter().map(|&j| b.pred[j]).collect(),
        gold: order.iter().map(|&j| b.gold[j]).collect(),
        group: b
            .group
            .as_ref()
            .map(|g| order.iter().map(|&j| g[j].clone()).collect()),
    };
    for (i, id) in a.ids.iter().enumerate() {
        let (ga, gb) = (a.gold[i], b2.gold[i]);
        if ga != gb && !(ga.is_nan() && gb.is_nan()) {
            return Err(invalid(format!(
                "gold mismatch for id \"{id}\": A has {ga}, B has {gb}"
            )));
        }
    }
    let mut a2 = a.clone();
    match (&a.group, &b2.group) {
        (Some(ga), Some(gb)) => {
            if let Some(i) = (0..ga.len()).find(|&i| ga[i] != gb[i]) {
                return Err(invalid(format!(
                    "group mismatch for id \"{}\": A has \"{}\", B has \"{}\"",
                    a.ids[i], ga[i], gb[i]
                )));
            }
        }
        (Some(ga), None) => b2.group = Some(ga.clone()),
        (None, Some(gb)) => a2.group = Some(gb.clone()),
        (None, None) => {}
    }
    Ok((a2, b2))
}

fn index_ids<'a>(o: &'a Outputs, name: &str) -> Result<HashMap<&'a str, usize>> {
    let mut pos = HashMap::with_capacity(o.len());
    for (i, id) in o.ids.iter().enumerate() {
        if pos.insert(id.as_str(), i).is_some() {
            return Err(invalid(format!("duplicate id \"{id}\" in {name}")));
        }
    }
    Ok(pos)
}

/// Checks that `a` and `b` are aligned (same ids, order, gold and groups).
fn check_aligned(what: &str, a: &Outputs, b: &Outputs) -> Result<()> {
    a.validate(&format!("{what}: A"))?;
    b.validate(&format!("{what}: B"))?;
    if a.len() != b.len() {
        return Err(invalid(format!(
            "{what}: A has {} examples, B has {} (align them by id first)",
            a.len(),
            b.len()
        )));
    }
    if let Some(i) = (0..a.len()).find(|&i| a.ids[i] != b.ids[i]) {
        return Err(invalid(format!(
            "{what}: example {i} has id \"{}\" in A but \"{}\" in B (align them by id first)",
            a.ids[i], b.ids[i]
        )));
    }
    if let Some(i) = (0..a.len()).find(|&i| a.gold[i] != b.gold[i]) {
        return Err(invalid(format!(
            "{what}: gold mismatch for id \"{}\": A has {}, B has {}",
            a.ids[i], a.gold[i], b.gold[i]
        )));
    }
    if a.group != b.group {
        return Err(invalid(format!(
            "{what}: A and B have different groups (align them by id first)"
        )));
    }
    Ok(())
}

/// The result of a paired test (serialised with exactly these field names).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairedResult {
    /// The metric compared.
    pub metric: Metric,
    /// The metric of system A on all examples.
    pub metric_a: f64,
    /// The metric of system B on all examples.
    pub metric_b: f64,
    /// `metric_a − metric_b`.
    pub delta: f64,
    /// Lower end of the paired bootstrap percentile CI of `delta`.
    pub ci_low: f64,
    /// Upper end of the paired bootstrap percentile CI of `delta`.
    pub ci_high: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// `bootstrap`, `permutation` or `mcnemar`.
    pub test: String,
    /// The test statistic where there is one (McNemar: `min(b01, b10)` exact, χ² otherwise).
    pub statistic: Option<f64>,
    /// Resamples (bootstrap rounds or random permutations) used.
    pub resamples: Option<usize>,
    /// Number of examples.
    pub n: usize,
}

/// What every paired metric computation shares between the two systems: the class count and
/// the centring shifts, so A's, B's and swapped outputs are evaluated identically.
struct Shared {
    classes: usize,
    x_shift: f64,
    y_shift: f64,
}

impl Shared {
    fn of(metric: Metric, outs: &[&Outputs]) -> Result<Shared> {
        let mut classes = 0usize;
        let (mut sx, mut nx) = (0.0, 0usize);
        let mut y_shift = 0.0;
        for o in outs {
            if metric.is_classification() {
                for (field, v) in [("pred", &o.pred), ("gold", &o.gold)] {
                    for (i, &x) in v.iter().enumerate() {
                        classes = classes.max(label(metric, field, &o.ids[i], x)? as usize + 1);
                    }
                }
            } else {
                for (field, v) in [("pred", &o.pred), ("gold", &o.gold)] {
                    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                        return Err(invalid(format!(
                            "{metric}: {field} of id \"{}\" is {}, not a finite number",
                            o.ids[i], v[i]
                        )));
                    }
                }
                sx += o.pred.iter().sum::<f64>();
                nx += o.len();
                y_shift = super::mean(&o.gold);
            }
        }
        if metric.is_binary() {
            classes = 2;
        }
        let x_shift = if nx > 0 { sx / nx as f64 } else { 0.0 };
        Ok(Shared {
            classes,
            x_shift,
            y_shift,
        })
    }
}

/// A class label from its `f64` encoding.
fn label(metric: Metric, field: &str, id: &str, x: f64) -> Result<u32> {
    let max = if metric.is_binary() { 1.0 } else { MAX_LABEL };
    if x.is_finite() && x >= 0.0 && x <= max && x.fract() == 0.0 {
        Ok(x as u32)
    } else if metric.is_binary() {
        Err(invalid(format!(
            "{metric}: {field} of id \"{id}\" is {x}; expected a 0/1 label"
        )))
    } else {
        Err(invalid(format!(
            "{metric}: {field} of id \"{id}\" is {x}; expected a class label (an integer 0..={MAX_LABEL})"
        )))
    }
}

/// One system's outputs in the form the metric needs, evaluable on any index multiset.
#[derive(Clone)]
struct Prep {
    metric: Metric,
    classes: usize,
    pred_lab: Vec<u32>,
    gold_lab: Vec<u32>,
    /// Centred predictions (Pearson) or raw predictions (Spearman).
    x: Vec<f64>,
    /// Centred gold (Pearson) or raw gold (Spearman).
    y: Vec<f64>,
    /// Dense group index per example (EM).
    group_of: Vec<usize>,
    /// Examples per group (EM).
    group_size: Vec<usize>,
}

/// Reusable buffers of [`Prep::eval`].
#[derive(Default)]
struct Scratch {
    a: Vec<f64>,
    b: Vec<f64>,
    counts: Vec<u64>,
    groups: Vec<(u64, bool)>,
}

/// Dense group ids in order of first appearance, and the group sizes.
fn dense_groups(group: &[String]) -> (Vec<usize>, Vec<usize>) {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut of = Vec::with_capacity(group.len());
    let mut size = Vec::new();
    for g in group {
        let next = index.len();
        let k = *index.entry(g.as_str()).or_insert(next);
        if k == size.len() {
            size.push(0);
        }
        size[k] += 1;
        of.push(k);
    }
    (of, size)
}

impl Prep {
    fn new(metric: Metric, out: &Outputs, shared: &Shared) -> Result<Prep> {
        let mut p = Prep {
            metric,
            classes: shared.classes,
            pred_lab: Vec::new(),
            gold_lab: Vec::new(),
            x: Vec::new(),
            y: Vec::new(),
            group_of: Vec::new(),
            group_size: Vec::new(),
        };
        if metric.is_classification() {
            for i in 0..out.len() {
                p.pred_lab
                    .push(label(metric, "pred", &out.ids[i], out.pred[i])?);
                p.gold_lab
                    .push(label(metric, "gold", &out.ids[i], out.gold[i])?);
            }
        } else {
            let (sx, sy) = if metric == Metric::Pearson {
                (shared.x_shift, shared.y_shift)
            } else {
                (0.0, 0.0)
            };
            p.x = out.pred.iter().map(|v| v - sx).collect();
            p.y = out.gold.iter().map(|v| v - sy).collect();
        }
        if metric == Metric::Em {
            let g = out.group.as_ref().ok_or_else(|| {
                invalid("em: exact match needs a group (question id) for every example")
            })?;
            (p.group_of, p.group_size) = dense_groups(g);
        }
        Ok(p)
    }

    /// Takes example `i`'s prediction from `other` (permutation swaps).
    fn take_pred(&mut self, i: usize, other: &Prep) {
        if self.metric.is_classification() {
            self.pred_lab[i] = other.pred_lab[i];
        } else {
            self.x[i] = other.x[i];
        }
    }

    fn eval(&self, idx: &[usize], s: &mut Scratch) -> Result<f64> {
        let name = self.metric.name();
        if idx.is_empty() {
            return Err(invalid(format!("{name}: no examples selected")));
        }
        let n = idx.len() as f64;
        match self.metric {
            Metric::Accuracy => {
                let correct = idx
                    .iter()
                    .filter(|&&i| self.pred_lab[i] == self.gold_lab[i])
                    .count();
                Ok(correct as f64 / n)
            }
            Metric::F1 | Metric::F1a => {
                let (mut tp, mut pred_sum, mut true_sum) = (0u64, 0u64, 0u64);
                for &i in idx {
                    let (p, g) = (self.pred_lab[i] == 1, self.gold_lab[i] == 1);
                    tp += u64::from(p && g);
                    pred_sum += u64::from(p);
                    true_sum += u64::from(g);
                }
                Ok(f1_from(tp, pred_sum, true_sum))
            }
            Metric::Mcc => {
                // counts[2k] = gold count of class k, counts[2k+1] = predicted count
                s.counts.clear();
                s.counts.resize(2 * self.classes, 0);
                let mut correct = 0u64;
                for &i in idx {
                    let (p, g) = (self.pred_lab[i] as usize, self.gold_lab[i] as usize);
                    s.counts[2 * g] += 1;
                    s.counts[2 * p + 1] += 1;
                    correct += u64::from(p == g);
                }
                let (mut tp, mut pp, mut tt) = (0.0f64, 0.0f64, 0.0f64);
                for c in s.counts.chunks_exact(2) {
                    let (t, p) = (c[0] as f64, c[1] as f64);
                    tp += t * p;
                    pp += p * p;
                    tt += t * t;
                }
                let cov_ytyp = correct as f64 * n - tp;
                let denom = (n * n - pp) * (n * n - tt);
                Ok(if denom == 0.0 {
                    0.0
                } else {
                    cov_ytyp / denom.sqrt()
                })
            }
            Metric::F1Macro => {
                // counts[3k..3k+3] = (tp, predicted, gold) of class k
                s.counts.clear();
                s.counts.resize(3 * self.classes, 0);
                for &i in idx {
                    let (p, g) = (self.pred_lab[i] as usize, self.gold_lab[i] as usize);
                    s.counts[3 * p] += u64::from(p == g);
                    s.counts[3 * p + 1] += 1;
                    s.counts[3 * g + 2] += 1;
                }
                let sum: f64 = s
                    .counts
                    .chunks_exact(3)
                    .map(|c| f1_from(c[0], c[1], c[2]))
                    .sum();
                Ok(sum / self.classes as f64)
            }
            Metric::Pearson => {
                if idx.len() < 2 {
                    return Err(invalid(format!(
                        "pearson: need at least 2 pairs, got {}",
                        idx.len()
                    )));
                }
                let first = idx[0];
                if idx.iter().all(|&i| self.x[i] == self.x[first])
                    || idx.iter().all(|&i| self.y[i] == self.y[first])
                {
                    return Ok(f64::NAN);
                }
                let (mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for &i in idx {
                    let (x, y) = (self.x[i], self.y[i]);
                    sx += x;
                    sy += y;
                    sxx += x * x;
                    syy += y * y;
                    sxy += x * y;
                }
                let cxy = sxy - sx * sy / n;
                let cxx = (sxx - sx * sx / n).max(0.0);
                let cyy = (syy - sy * sy / n).max(0.0);
                let r = (cxy / (cxx.sqrt() * cyy.sqrt())).clamp(-1.0, 1.0);
                Ok(if idx.len() == 2 { r.round() } else { r })
            }
            Metric::Mean => Ok(idx.iter().map(|&i| self.x[i]).sum::<f64>() / n),
            Metric::Spearman => {
                s.a.clear();
                s.b.clear();
                s.a.extend(idx.iter().map(|&i| self.x[i]));
                s.b.extend(idx.iter().map(|&i| self.y[i]));
                Ok(metrics::spearman(&s.a, &s.b)?)
            }
            Metric::Em => {
                s.groups.clear();
                s.groups.resize(self.group_size.len(), (0, true));
                for &i in idx {
                    let e = &mut s.groups[self.group_of[i]];
                    e.0 += 1;
                    e.1 &= self.pred_lab[i] == self.gold_lab[i];
                }
                let (mut right, mut total) = (0.0, 0.0);
                for (g, &(c, ok)) in s.groups.iter().enumerate() {
                    if c == 0 {
                        continue;
                    }
                    let m = c as f64 / self.group_size[g] as f64;
                    total += m;
                    if ok {
                        right += m;
                    }
                }
                Ok(right / total)
            }
        }
    }
}

/// scikit-learn's F1 of one class: `2·tp / (true_sum + pred_sum)`, 0 when both are 0.
fn f1_from(tp: u64, pred_sum: u64, true_sum: u64) -> f64 {
    let denom = pred_sum + true_sum;
    if denom == 0 {
        0.0
    } else {
        2.0 * tp as f64 / denom as f64
    }
}

/// The resampling units: example indices of each group (order of first appearance), or one
/// example per unit.
pub(crate) fn units(out: &Outputs) -> Vec<Vec<usize>> {
    match &out.group {
        Some(g) => {
            let (of, size) = dense_groups(g);
            let mut u: Vec<Vec<usize>> = size.iter().map(|&s| Vec::with_capacity(s)).collect();
            for (i, &k) in of.iter().enumerate() {
                u[k].push(i);
            }
            u
        }
        None => (0..out.len()).map(|i| vec![i]).collect(),
    }
}

/// Several runs' outputs on the same examples, prepared once so that the metric of any run on
/// any index multiset is cheap (the hierarchical claims test evaluates every run on every
/// bootstrap sample). All runs share the class count and the centring shifts.
pub(crate) struct RunSet {
    preps: Vec<Prep>,
    scratch: Scratch,
}

impl RunSet {
    /// Prepares `outs` for `metric`; errors as [`Metric::compute`].
    pub(crate) fn new(metric: Metric, outs: &[&Outputs]) -> Result<RunSet> {
        for o in outs {
            o.validate("runs")?;
        }
        let shared = Shared::of(metric, outs)?;
        let preps = outs
            .iter()
            .map(|o| Prep::new(metric, o, &shared))
            .collect::<Result<Vec<_>>>()?;
        Ok(RunSet {
            preps,
            scratch: Scratch::default(),
        })
    }

    /// The metric of run `k` on the examples `idx` (indices may repeat).
    pub(crate) fn eval(&mut self, k: usize, idx: &[usize]) -> Result<f64> {
        self.preps[k].eval(idx, &mut self.scratch)
    }
}

/// Everything a paired test needs, built once.
struct Pair {
    metric: Metric,
    a: Prep,
    b: Prep,
    units: Vec<Vec<usize>>,
    n: usize,
    metric_a: f64,
    metric_b: f64,
}

impl Pair {
    fn new(what: &str, a: &Outputs, b: &Outputs, metric: Metric) -> Result<Pair> {
        check_aligned(what, a, b)?;
        let shared = Shared::of(metric, &[a, b])?;
        let pa = Prep::new(metric, a, &shared)?;
        let pb = Prep::new(metric, b, &shared)?;
        let all: Vec<usize> = (0..a.len()).collect();
        let mut s = Scratch::default();
        let metric_a = pa.eval(&all, &mut s)?;
        let metric_b = pb.eval(&all, &mut s)?;
        for (name, v) in [("A", metric_a), ("B", metric_b)] {
            if v.is_nan() {
                return Err(invalid(format!(
                    "{what}: {metric} of system {name} is undefined (NaN: constant predictions or gold)"
                )));
            }
        }
        Ok(Pair {
            metric,
            a: pa,
            b: pb,
            units: units(a),
            n: a.len(),
            metric_a,
            metric_b,
        })
    }

    fn delta(&self) -> f64 {
        self.metric_a - self.metric_b
    }

    /// `resamples` paired bootstrap replicates of δ (stream 0 of `seed`): each round draws
    /// `U` units with replacement and evaluates both systems on the same examples.
    fn bootstrap(&self, what: &str, resamples: usize, seed: u64) -> Result<Vec<f64>> {
        let mut rng = Resampler::new(seed);
        let mut idx = Vec::with_capacity(self.n);
        let mut s = Scratch::default();
        let mut out = Vec::with_capacity(resamples);
        let u = self.units.len();
        for r in 0..resamples {
            idx.clear();
            for _ in 0..u {
                idx.extend_from_slice(&self.units[rng.index(u)]);
            }
            let d = self.a.eval(&idx, &mut s)? - self.b.eval(&idx, &mut s)?;
            if d.is_nan() {
                return Err(invalid(format!(
                    "{what}: {} is undefined (NaN) on bootstrap resample {r} (constant values \
                     in the resample); use more examples or another metric",
                    self.metric
                )));
            }
            out.push(d);
        }
        Ok(out)
    }
}

/// Tolerance for "at least as extreme": SciPy's `permutation_test` uses `100·ε·|observed|` so
/// that numerically distinct but theoretically equal statistics count as ties.
fn tie_tolerance(observed: f64) -> f64 {
    100.0 * f64::EPSILON * observed.abs()
}

fn check_resamples(what: &str, resamples: usize) -> Result<()> {
    if resamples == 0 {
        Err(invalid(format!("{what}: resamples must be at least 1")))
    } else {
        Ok(())
    }
}

/// The paired bootstrap: confidence interval and two-sided test of δ = m(A) − m(B).
///
/// Each of `resamples` rounds draws as many units as there are (examples, or groups when
/// `group` is present — a cluster bootstrap) with replacement, using the SAME units for both
/// systems, and records `δ*ᵢ = m(A on sample) − m(B on sample)` ([`Metric::compute`]'s
/// semantics). Then
/// - CI: the percentile interval of the `δ*` at `ci_level` ([`super::percentile_interval`],
///   numpy's linear-interpolation quantiles; Efron & Tibshirani 1993 §13.3);
/// - p: the bootstrap test under the shifted null (Efron & Tibshirani 1993 §16.4; the
///   two-sided form of Berg-Kirkpatrick, Burkett & Klein 2012's `δ*ᵢ > 2δ` test, which
///   re-centres Koehn 2004's paired bootstrap on the null): `c = #{|δ*ᵢ − δ| ≥ |δ|}`,
///   `p = (c + 1)/(N + 1)` (Davison & Hinkley 1997, eq. 4.11), ties within `100·ε·|δ|`
///   counted as at least as extreme. Identical systems give `p = 1`.
///
/// Randomness: stream 0 of `seed` ([`Resampler`]); the same arguments give the same result.
///
/// Errors: `a`, `b` not aligned (different ids, order, gold or groups: use [`align`]), metric
/// errors ([`Metric::compute`]), a metric undefined (NaN) on the full set or on a resample,
/// `resamples == 0`, `ci_level` outside `(0, 1)`.
pub fn paired_bootstrap(
    a: &Outputs,
    b: &Outputs,
    metric: Metric,
    resamples: usize,
    seed: u64,
    ci_level: f64,
) -> Result<PairedResult> {
    let what = "paired_bootstrap";
    check_resamples(what, resamples)?;
    check_level(what, "ci_level", ci_level)?;
    let pair = Pair::new(what, a, b, metric)?;
    let delta = pair.delta();
    let reps = pair.bootstrap(what, resamples, seed)?;
    let (ci_low, ci_high) = percentile_interval(&reps, ci_level)?;
    let thr = delta.abs() - tie_tolerance(delta);
    let c = reps.iter().filter(|&&d| (d - delta).abs() >= thr).count();
    Ok(PairedResult {
        metric,
        metric_a: pair.metric_a,
        metric_b: pair.metric_b,
        delta,
        ci_low,
        ci_high,
        p_value: (c + 1) as f64 / (resamples + 1) as f64,
        test: "bootstrap".into(),
        statistic: None,
        resamples: Some(resamples),
        n: pair.n,
    })
}

/// Approximate randomisation (a Monte-Carlo paired permutation test; Noreen 1989, Riezler &
/// Maxwell 2005): does δ = m(A) − m(B) differ from 0?
///
/// Each of `resamples` rounds swaps A's and B's predictions on each unit (example, or whole
/// group when `group` is present) independently with probability ½ and recomputes
/// `δ_perm = m(A') − m(B')` on all examples. Two-sided `p = (c + 1)/(N + 1)` with
/// `c = #{|δ_perm| ≥ |δ|}` (ties within `100·ε·|δ|` count). Identical systems give `p = 1`.
///
/// The CI is NOT from the permutations: it is the paired bootstrap percentile CI of δ, exactly
/// as [`paired_bootstrap`] with the same `resamples`, `seed` and `ci_level` computes it, so
/// every result carries `ci_low`/`ci_high`.
///
/// Randomness: the swaps use stream 1 of `seed`, the CI's bootstrap stream 0.
///
/// The CI level is [`DEFAULT_CI_LEVEL`]; [`paired_test`] takes any level.
///
/// Errors: as [`paired_bootstrap`].
pub fn permutation_test(
    a: &Outputs,
    b: &Outputs,
    metric: Metric,
    resamples: usize,
    seed: u64,
) -> Result<PairedResult> {
    permutation_impl(a, b, metric, resamples, seed, DEFAULT_CI_LEVEL)
}

fn permutation_impl(
    a: &Outputs,
    b: &Outputs,
    metric: Metric,
    resamples: usize,
    seed: u64,
    ci_level: f64,
) -> Result<PairedResult> {
    let what = "permutation_test";
    check_resamples(what, resamples)?;
    check_level(what, "ci_level", ci_level)?;
    let pair = Pair::new(what, a, b, metric)?;
    let delta = pair.delta();
    let thr = delta.abs() - tie_tolerance(delta);
    let all: Vec<usize> = (0..pair.n).collect();
    let (mut pa, mut pb) = (pair.a.clone(), pair.b.clone());
    let mut rng = Resampler::with_stream(seed, 1);
    let mut s = Scratch::default();
    let mut c = 0usize;
    for r in 0..resamples {
        for unit in &pair.units {
            let swap = rng.coin();
            let (src_a, src_b) = if swap {
                (&pair.b, &pair.a)
            } else {
                (&pair.a, &pair.b)
            };
            for &i in unit {
                pa.take_pred(i, src_a);
                pb.take_pred(i, src_b);
            }
        }
        let d = pa.eval(&all, &mut s)? - pb.eval(&all, &mut s)?;
        if d.is_nan() {
            return Err(invalid(format!(
                "{what}: {metric} is undefined (NaN) on permutation {r}"
            )));
        }
        if d.abs() >= thr {
            c += 1;
        }
    }
    let reps = pair.bootstrap(what, resamples, seed)?;
    let (ci_low, ci_high) = percentile_interval(&reps, ci_level)?;
    Ok(PairedResult {
        metric,
        metric_a: pair.metric_a,
        metric_b: pair.metric_b,
        delta,
        ci_low,
        ci_high,
        p_value: (c + 1) as f64 / (resamples + 1) as f64,
        test: "permutation".into(),
        statistic: None,
        resamples: Some(resamples),
        n: pair.n,
    })
}

/// McNemar's discordant counts `(b01, b10)`: `b01` = examples A gets right and B wrong,
/// `b10` = A wrong and B right (right = `pred == gold` as class labels).
///
/// Errors: not aligned, labels that are not class labels.
pub fn mcnemar_counts(a: &Outputs, b: &Outputs) -> Result<(u64, u64)> {
    check_aligned("mcnemar", a, b)?;
    let shared = Shared::of(Metric::Accuracy, &[a, b])?;
    let pa = Prep::new(Metric::Accuracy, a, &shared)?;
    let pb = Prep::new(Metric::Accuracy, b, &shared)?;
    let (mut b01, mut b10) = (0u64, 0u64);
    for i in 0..a.len() {
        let ra = pa.pred_lab[i] == pa.gold_lab[i];
        let rb = pb.pred_lab[i] == pb.gold_lab[i];
        b01 += u64::from(ra && !rb);
        b10 += u64::from(!ra && rb);
    }
    Ok((b01, b10))
}

/// Discordant pairs below which [`mcnemar`] uses the exact binomial test.
pub const MCNEMAR_EXACT_BELOW: u64 = 25;

/// McNemar's test of equal accuracy on paired examples.
///
/// With the discordant counts of [`mcnemar_counts`] and `m = b01 + b10`:
/// - `m < 25` ([`MCNEMAR_EXACT_BELOW`]): the exact binomial test, statistic `min(b01, b10)`,
///   `p = min(1, 2·P(X ≤ min(b01, b10)))`, `X ~ Binomial(m, ½)` (summed exactly);
/// - otherwise: χ² with continuity correction, statistic `(|b01 − b10| − 1)²/m`, `p` its upper
///   tail under χ²(1) (statrs).
///
/// These are `statsmodels.stats.contingency_tables.mcnemar(table, exact=m < 25,
/// correction=True)` (`m = 0` gives `p = 1`).
///
/// The CI is not a Wald interval: it is the paired bootstrap percentile CI of the accuracy
/// difference, as [`paired_bootstrap`] computes it — here with [`DEFAULT_RESAMPLES`] rounds,
/// seed 0 and [`DEFAULT_CI_LEVEL`]; [`paired_test`] takes other values. With `group` present
/// the CI resamples groups; the McNemar counts themselves are per example.
///
/// McNemar is defined for accuracy only (right/wrong per example); [`paired_test`] refuses it
/// for other metrics.
///
/// Errors: `a`, `b` not aligned, labels that are not class labels.
pub fn mcnemar(a: &Outputs, b: &Outputs) -> Result<PairedResult> {
    mcnemar_impl(a, b, DEFAULT_RESAMPLES, 0, DEFAULT_CI_LEVEL)
}

fn mcnemar_impl(
    a: &Outputs,
    b: &Outputs,
    resamples: usize,
    seed: u64,
    ci_level: f64,
) -> Result<PairedResult> {
    let what = "mcnemar";
    let metric = Metric::Accuracy;
    check_resamples(what, resamples)?;
    check_level(what, "ci_level", ci_level)?;
    let pair = Pair::new(what, a, b, metric)?;
    let (b01, b10) = mcnemar_counts(a, b)?;
    let (statistic, p_value) = mcnemar_p(b01, b10)?;
    let reps = pair.bootstrap(what, resamples, seed)?;
    let (ci_low, ci_high) = percentile_interval(&reps, ci_level)?;
    Ok(PairedResult {
        metric,
        metric_a: pair.metric_a,
        metric_b: pair.metric_b,
        delta: pair.delta(),
        ci_low,
        ci_high,
        p_value,
        test: "mcnemar".into(),
        statistic: Some(statistic),
        resamples: Some(resamples),
        n: pair.n,
    })
}

/// Default number of resamples ([`mcnemar`]'s CI; the CLI's `--resamples`).
pub const DEFAULT_RESAMPLES: usize = 10_000;

/// Default confidence level of the CIs.
pub const DEFAULT_CI_LEVEL: f64 = 0.95;

/// A paired test, parsed from `bootstrap`, `permutation` or `mcnemar`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairedTest {
    /// [`paired_bootstrap`].
    Bootstrap,
    /// [`permutation_test`] (approximate randomisation).
    Permutation,
    /// [`mcnemar`] (accuracy only).
    Mcnemar,
}

impl PairedTest {
    /// The name: `bootstrap`, `permutation` or `mcnemar` (the `test` field of the result).
    pub fn name(self) -> &'static str {
        match self {
            PairedTest::Bootstrap => "bootstrap",
            PairedTest::Permutation => "permutation",
            PairedTest::Mcnemar => "mcnemar",
        }
    }
}

impl FromStr for PairedTest {
    type Err = Error;

    /// Parses `bootstrap`, `permutation` or `mcnemar`; the error lists them.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bootstrap" => Ok(PairedTest::Bootstrap),
            "permutation" => Ok(PairedTest::Permutation),
            "mcnemar" => Ok(PairedTest::Mcnemar),
            _ => Err(invalid(format!(
                "unknown test \"{s}\"; valid tests: bootstrap, permutation, mcnemar"
            ))),
        }
    }
}

/// Runs one paired test with every knob: `resamples` bootstrap rounds or permutations, `seed`,
/// and the CI level (all three tests report the paired bootstrap percentile CI of δ, computed
/// identically from `resamples`, `seed`, `ci_level`).
///
/// Errors: McNemar with a metric other than accuracy (it compares per-example right/wrong;
/// use the bootstrap or permutation test), and the errors of the test run.
pub fn paired_test(
    test: PairedTest,
    a: &Outputs,
    b: &Outputs,
    metric: Metric,
    resamples: usize,
    seed: u64,
    ci_level: f64,
) -> Result<PairedResult> {
    match test {
        PairedTest::Bootstrap => paired_bootstrap(a, b, metric, resamples, seed, ci_level),
        PairedTest::Permutation => permutation_impl(a, b, metric, resamples, seed, ci_level),
        PairedTest::Mcnemar if metric != Metric::Accuracy => Err(invalid(format!(
            "mcnemar: McNemar's test compares per-example right/wrong and is defined for \
             accuracy only, not {metric}; use --test bootstrap or --test permutation"
        ))),
        PairedTest::Mcnemar => mcnemar_impl(a, b, resamples, seed, ci_level),
    }
}

/// McNemar's `(statistic, p)` from the discordant counts (see [`mcnemar`]).
///
/// Errors: only if statrs rejects the χ² distribution (cannot happen for df 1).
pub fn mcnemar_p(b01: u64, b10: u64) -> Result<(f64, f64)> {
    use statrs::distribution::{ChiSquared, ContinuousCDF};
    let m = b01 + b10;
    if m < MCNEMAR_EXACT_BELOW {
        let k = b01.min(b10);
        // P(X <= k) = sum_{j<=k} C(m, j) / 2^m, exact in u64 for m < 25
        let mut c = 1u64; // C(m, 0)
        let mut sum = 0u64;
        for j in 0..=k {
            sum += c;
            c = c * (m - j) / (j + 1);
        }
        let p = (2.0 * sum as f64 / (1u64 << m) as f64).min(1.0);
        Ok((k as f64, p))
    } else {
        let d = b01.abs_diff(b10) as f64 - 1.0;
        let stat = d * d / m as f64;
        let chi2 = ChiSquared::new(1.0).map_err(|e| super::dist_err("mcnemar", e))?;
        Ok((stat, chi2.sf(stat)))
    }
}
