//! Fine-tune / evaluate / predict / score: tasks mapped onto qattn-train datasets, official
//! decisions (arg-max, per-group candidate choice) and official metrics, run records.

use crate::error::{Error, Result};
use crate::metrics;
use crate::tasks::{self, Example, Label, Split, Task, TaskKind};
use qattn_model::{AttentionConfig, HubOptions, LoadOptions, Model};
use qattn_train::output::OutputMode;
use qattn_train::{Dataset, Labels, Problem, Record, Trainer, TrainingArgs, tokenizer_for};
// The run-record types live in qattn-train (qattn-verify's synthetic compare writes them too);
// re-exported so that `runner::RunRecord` keeps working.
pub use qattn_train::records::{Prediction, PredictionRecord, RunRecord, machine, peak_rss_mb};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// The label space qattn-train uses for `task`.
pub fn labels_for(task: Task) -> Labels {
    match task.kind() {
        TaskKind::Classification { labels } => Labels::Classes {
            names: labels.iter().map(|s| s.to_string()).collect(),
        },
        TaskKind::Regression => Labels::Regression,
        TaskKind::MultipleChoice { choices } => Labels::Choice {
            num_choices: choices,
        },
        // One binary decision per (query, candidate); the arg-max within the query decides.
        TaskKind::CandidateScoring => Labels::Classes {
            names: vec!["0".into(), "1".into()],
        },
    }
}

/// Examples as training records (label = class id or score; `null` when unlabelled).
pub fn to_records(examples: &[Example]) -> Vec<Record> {
    examples
        .iter()
        .map(|e| Record {
            text: e.text.clone(),
            text_pair: e.text_pair.clone(),
            choices: e.choices.clone(),
            label: match e.label {
                Some(Label::Class(c)) => serde_json::json!(c),
                Some(Label::Score(s)) => serde_json::json!(s),
                None => serde_json::Value::Null,
            },
            idx: Some(serde_json::Value::String(e.id.clone())),
        })
        .collect()
}

/// Turns the head outputs of `examples` into predictions: arg-max of the logits, the score, or
/// (ReCoRD) the candidate with the largest logit margin within each query.
pub fn decide(task: Task, examples: &[Example], outputs: &[Vec<f32>]) -> Result<Vec<Prediction>> {
    if examples.len() != outputs.len() {
        return Err(Error::Invalid(format!(
            "{} outputs for {} examples",
            outputs.len(),
            examples.len()
        )));
    }
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &x)| if x > b.1 { (i, x) } else { b },
            )
            .0
    };
    Ok(match task.kind() {
        TaskKind::Regression => outputs
            .iter()
            .map(|o| Prediction::Score(f64::from(o[0])))
            .collect(),
        TaskKind::CandidateScoring => {
            let margin = |o: &Vec<f32>| o.get(1).copied().unwrap_or(0.0) - o[0];
            let mut best: BTreeMap<&str, (usize, f32)> = BTreeMap::new();
            for (i, (e, o)) in examples.iter().zip(outputs).enumerate() {
                let g = e.group.as_deref().unwrap_or(e.id.as_str());
                let m = margin(o);
                let entry = best.entry(g).or_insert((i, m));
                if m > entry.1 {
                    *entry = (i, m);
                }
            }
            let chosen: std::collections::BTreeSet<usize> = best.values().map(|v| v.0).collect();
            (0..examples.len())
                .map(|i| Prediction::Class(usize::from(chosen.contains(&i))))
                .collect()
        }
        _ => outputs
            .iter()
            .map(|o| Prediction::Class(argmax(o)))
            .collect(),
    })
}

/// The official metrics of `task` on the labelled examples.
pub fn score(
    task: Task,
    examples: &[Example],
    preds: &[Prediction],
) -> Result<BTreeMap<String, f64>> {
    if examples.len() != preds.len() {
        return Err(Error::Invalid(format!(
            "{} predictions for {} examples",
            preds.len(),
            examples.len()
        )));
    }
    let labelled: Vec<usize> = (0..examples.len())
        .filter(|&i| examples[i].label.is_some())
        .collect();
    if labelled.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no labelled examples to score",
            task.name()
        )));
    }
    let gold_c: Vec<usize> = labelled
        .iter()
        .map(|&i| examples[i].label.and_then(Label::class).unwrap_or(0))
        .collect();
    let pred_c: Vec<usize> = labelled.iter().map(|&i| preds[i].class()).collect();
    let mut m = BTreeMap::new();
    if task == Task::Record {
        // One prediction per query: the chosen candidate's entity vs the gold answers.
        let mut by_query: BTreeMap<String, (Option<String>, Vec<String>)> = BTreeMap::new();
        for &i in &labelled {
            let e = &examples[i];
            let q = e.group.clone().unwrap_or_else(|| e.id.clone());
            let slot = by_query.entry(q).or_default();
            if slot.1.is_empty()
                && let Some(a) = e.extra.get("answers")
            {
                slot.1 = serde_json::from_str(a).unwrap_or_default();
            }
            if preds[i].class() == 1 {
                slot.0 = e.extra.get("entity").cloned();
            }
        }
        let (p, g): (Vec<String>, Vec<Vec<String>>) = by_query
            .into_values()
            .map(|(p, g)| (p.unwrap_or_default(), g))
            .unzip();
        let (f1, em) = metrics::record(&p, &g)?;
        m.insert(metrics::F1.to_string(), f1);
        m.insert(metrics::EM.to_string(), em);
        return Ok(m);
    }
    for &name in task.metrics() {
        let v = match name {
            metrics::ACCURACY => metrics::accuracy(&pred_c, &gold_c)?,
            metrics::F1 => metrics::f1_binary(&pred_c, &gold_c)?,
            metrics::MCC => metrics::matthews(&pred_c, &gold_c)?,
            metrics::F1_MACRO => {
                let n = task.labels().map(|l| l.len()).unwrap_or(2);
                metrics::f1_macro(&pred_c, &gold_c, n)?
            }
            metrics::PEARSON | metrics::SPEARMAN => {
                let x: Vec<f64> = labelled
                    .iter()
                    .map(|&i| match preds[i] {
                        Prediction::Score(s) => s,
                        Prediction::Class(c) => c as f64,
                    })
                    .collect();
                let y: Vec<f64> = labelled
                    .iter()
                    .map(|&i| examples[i].label.and_then(Label::score).unwrap_or(f64::NAN))
                    .collect();
                if name == metrics::PEARSON {
                    metrics::pearson(&x, &y)?
                } else {
                    metrics::spearman(&x, &y)?
                }
            }
            metrics::F1A | metrics::EM => {
                let q: Vec<String> = labelled
                    .iter()
                    .map(|&i| examples[i].group.clone().unwrap_or_default())
                    .collect();
                let (f1a, em) = metrics::multirc(&pred_c, &gold_c, &q)?;
                if name == metrics::F1A { f1a } else { em }
            }
            metrics::GENDER_PARITY => {
                let ids: Vec<u64> = labelled
                    .iter()
                    .map(|&i| {
                        examples[i]
                            .extra
                            .get("pair_id")
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| {
                                Error::Invalid(format!("example {} has no pair_id", examples[i].id))
                            })
                    })
                    .collect::<Result<_>>()?;
                metrics::gender_parity(&pred_c, &ids)?
            }
            other => return Err(Error::Invalid(format!("unknown metric {other}"))),
        };
        m.insert(name.to_string(), v);
    }
    Ok(m)
}

/// Options of `qattn glue run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The task.
    pub task: Task,
    /// Hub id or directory.
    pub model: String,
    /// Attention estimator spec.
    pub attention: String,
    /// One fine-tuning run per seed.
    pub seeds: Vec<u64>,
    /// Training arguments (output_dir and seed are set per run).
    pub args: TrainingArgs,
    /// Where the task data lives.
    pub data_dir: PathBuf,
    /// Where runs go.
    pub output_dir: PathBuf,
    /// Continue interrupted runs.
    pub resume: bool,
    /// Remove the outputs of earlier runs in the seed directories first (exclusive with
    /// `resume`). With neither, a non-empty seed directory is an error naming both options.
    pub overwrite: bool,
    /// Model files.
    pub hub: HubOptions,
    /// Train on a seeded subset of this many examples.
    pub train_limit: Option<usize>,
    /// Evaluate on the first N dev examples.
    pub eval_limit: Option<usize>,
    /// Device of the model and batches.
    pub device: qattn_model::Device,
    /// What the task head reads (the pooler, or the mean of the last hidden states).
    pub pooling: qattn_model::Pooling,
}

/// Everything about one fine-tuning run, for statistics later.
/// The record of `pred` on `example`, carrying its group and (ReCoRD) entity and answers.
pub fn prediction_record(example: &Example, pred: Prediction) -> PredictionRecord {
    PredictionRecord {
        id: example.id.clone(),
        pred,
        gold: example.label,
        group: example.group.clone(),
        entity: example.extra.get("entity").cloned(),
        answers: example
            .extra
            .get("answers")
            .and_then(|a| serde_json::from_str(a).ok()),
    }
}

/// `n` of `examples` chosen by a seeded shuffle (all when `n` ≥ len).
fn subset(mut examples: Vec<Example>, n: Option<usize>, seed: u64) -> Vec<Example> {
    let Some(n) = n.filter(|&n| n < examples.len()) else {
        return examples;
    };
    let key = [seed as u32, (seed >> 32) as u32];
    for i in (1..examples.len()).rev() {
        let r = philox_u64(i as u32, key);
        examples.swap(i, (r % (i as u64 + 1)) as usize);
    }
    examples.truncate(n);
    examples
}

fn philox_u64(i: u32, key: [u32; 2]) -> u64 {
    let r = qattn_kernels::philox::philox4x32_10([i, 0x6c75, 0, 0], key);
    (u64::from(r[0]) << 32) | u64::from(r[1])
}

/// A directory name for an attention spec.
pub fn slug(spec: &str) -> String {
    spec.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The output directory of one seed's run: `OUTPUT/TASK/ATTENTION/seed-S`.
pub fn seed_dir(opts: &RunOptions, seed: u64) -> PathBuf {
    opts.output_dir
        .join(opts.task.name())
        .join(slug(&opts.attention))
        .join(format!("seed-{seed}"))
}

/// Fine-tunes `opts.task` once per seed, evaluates on dev, writes
/// `OUTPUT/TASK/ATTENTION/seed-S/run.json` (atomically) and returns the records.
pub fn run(opts: &RunOptions, mut on_progress: impl FnMut(&str)) -> Result<Vec<RunRecord>> {
    let task = opts.task;
    if task.file(Split::Train).is_none() || task.file(Split::Dev).is_none() {
        return Err(Error::Invalid(format!(
            "{} is a diagnostic without train/dev data: fine-tune {} and use `qattn glue predict`",
            task.name(),
            if task.benchmark() == tasks::Benchmark::Glue {
                "mnli-m"
            } else {
                "sg-rte"
            }
        )));
    }
    // Every seed's directory is checked before any is changed: nothing is half-applied.
    let mode = OutputMode::from_flags(opts.resume, opts.overwrite)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let run_dir = |seed: u64| seed_dir(opts, seed);
    for &seed in &opts.seeds {
        qattn_train::output::check(&run_dir(seed), mode)
            .map_err(|e| Error::Invalid(e.to_string()))?;
    }
    let mut records = Vec::new();
    for &seed in &opts.seeds {
        let t0 = Instant::now();
        let train_ex = subset(
            tasks::read(task, Split::Train, &opts.data_dir)?,
            opts.train_limit,
            seed,
        );
        let mut dev_ex = tasks::read(task, Split::Dev, &opts.data_dir)?;
        if let Some(n) = opts.eval_limit {
            dev_ex.truncate(n);
        }
        let mut args = opts.args.clone();
        args.seed = seed;
        args.attention = Some(opts.attention.clone());
        args.output_dir = run_dir(seed);
        args.validate().map_err(|e| Error::Invalid(e.to_string()))?;
        let tok = tokenizer_for(&opts.model, &opts.hub, args.max_length)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let labels = labels_for(task);
        let src = task.path(Split::Train, &opts.data_dir).unwrap_or_default();
        let train = Dataset::from_records(
            &src,
            to_records(&train_ex),
            &tok,
            Problem::Auto,
            Some(&labels),
        )
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let dsrc = task.path(Split::Dev, &opts.data_dir).unwrap_or_default();
        let dev = Dataset::from_records(
            &dsrc,
            to_records(&dev_ex),
            &tok,
            Problem::Auto,
            Some(&labels),
        )
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let train_tokens: usize = train
            .examples
            .iter()
            .flat_map(|e| e.sequences.iter().map(|s| s.ids.len()))
            .sum();
        let attention = AttentionConfig::parse(&opts.attention)
            .map_err(|e| Error::Invalid(e.to_string()))?
            .with_seed(seed)
            .with_grad_mode(args.grad_mode);
        let load = LoadOptions {
            hub: opts.hub.clone(),
            attention: Some(attention),
            head: Some(labels.head()),
            labels: match &labels {
                Labels::Classes { names } if task != Task::Record => Some(names.clone()),
                _ => None,
            },
            pooling: Some(opts.pooling),
            trainable: true,
            init_seed: seed,
            device: opts.device.clone(),
            ..Default::default()
        };
        let mut model =
            Model::load(&opts.model, &load).map_err(|e| Error::Invalid(e.to_string()))?;
        if let Some(t) = model.tokenizer_mut() {
            t.set_max_length(Some(args.max_length));
        }
        let load_s = t0.elapsed().as_secs_f64();
        on_progress(&format!(
            "{} seed {seed}: {} train / {} dev examples, attention {}",
            task.name(),
            train.len(),
            dev.len(),
            opts.attention
        ));
        qattn_train::output::prepare(&args.output_dir, mode)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let t1 = Instant::now();
        let mut trainer = Trainer::new(args.clone(), model, train.clone(), None)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let summary = trainer
            .train(opts.resume)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let train_s = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let pad = trainer.model().tokenizer().map(|t| t.pad_id()).unwrap_or(0);
        let outputs =
            qattn_train::predict(trainer.model(), &dev, args.per_device_eval_batch_size, pad)
                .map_err(|e| Error::Invalid(e.to_string()))?;
        let preds = decide(task, &dev_ex, &outputs)?;
        let dev_metrics = score(task, &dev_ex, &preds)?;
        let eval_s = t2.elapsed().as_secs_f64();
        let trained_tokens = if summary.steps_this_run == 0 {
            0.0
        } else {
            train_tokens as f64
                * summary.steps_this_run as f64
                * args.per_device_train_batch_size as f64
                * args.gradient_accumulation_steps as f64
                / train.len().max(1) as f64
        };
        let rec = RunRecord {
            task: task.name().to_string(),
            model: opts.model.clone(),
            attention: opts.attention.clone(),
            seed,
            pooling: opts.pooling,
            training_args: args.clone(),
            git_sha: qattn_train::provenance::BUILD.commit_string(),
            git_dirty: qattn_train::provenance::BUILD.dirty_flag(),
            machine: machine(),
            dev_metrics,
            predictions: dev_ex
                .iter()
                .zip(&preds)
                .map(|(e, p)| prediction_record(e, p.clone()))
                .collect(),
            wall_seconds: BTreeMap::from([
                ("load".to_string(), load_s),
                ("train".to_string(), train_s),
                ("eval".to_string(), eval_s),
            ]),
            train_tokens_per_second: trained_tokens / train_s.max(1e-9),
            peak_rss_mb: peak_rss_mb(),
            train_examples: train.len(),
            dev_examples: dev_ex.len(),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let json = serde_json::to_string_pretty(&rec)
            .map_err(|e| Error::Invalid(format!("run record: {e}")))?;
        let path = args.output_dir.join("run.json");
        qattn_model::io::write_atomic(&path, json.as_bytes())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        trainer
            .model()
            .save_pretrained(&args.output_dir.join("model"))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        on_progress(&format!(
            "{} seed {seed}: {} ({:.0}s train)",
            task.name(),
            rec.dev_metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", "),
            train_s
        ));
        records.push(rec);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(group: Option<&str>, extra: &[(&str, &str)]) -> Example {
        Example {
            id: "7".into(),
            text: "t".into(),
            text_pair: None,
            choices: None,
            label: Some(Label::Class(1)),
            group: group.map(str::to_string),
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn prediction_records_carry_groups_and_record_answers() {
        let e = example(
            Some("q3"),
            &[("entity", "Alice"), ("answers", r#"["Alice","A. Smith"]"#)],
        );
        let r = prediction_record(&e, Prediction::Class(1));
        assert_eq!(r.group.as_deref(), Some("q3"));
        assert_eq!(r.entity.as_deref(), Some("Alice"));
        assert_eq!(
            r.answers,
            Some(vec!["Alice".to_string(), "A. Smith".to_string()])
        );
        let json = serde_json::to_string(&r).unwrap();
        let back: PredictionRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.group, r.group);
    }

    #[test]
    fn ungrouped_records_keep_the_old_format_both_ways() {
        let r = prediction_record(&example(None, &[]), Prediction::Class(0));
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            !json.contains("group") && !json.contains("answers") && !json.contains("entity"),
            "{json}"
        );
        // A record written before the fields existed still loads.
        let old: PredictionRecord =
            serde_json::from_str(r#"{"id":"1","pred":0,"gold":{"Class":1}}"#).unwrap();
        assert!(old.group.is_none() && old.answers.is_none());
    }
}
