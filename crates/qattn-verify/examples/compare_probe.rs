//! Measures `run_compare` settings: `compare_probe [quick|default] [KEY=VALUE...]` where keys
//! are majority-task fields applied to every length (min_markers, max_markers, max_margin,
//! label_noise, forms, num_fillers, train_size, dev_size), `lengths` (comma list), model and
//! training fields (layers, hidden, heads, ffn, dropout, steps, batch, lr, jobs, systems
//! (comma list), seeds (comma list), out), and anything else is a `--set` training argument.

use qattn_train::records::RunRecord;
use qattn_verify::compare::{CompareOptions, CompareProgress, TaskSource, run_compare};
use qattn_verify::synthetic::{MajorityTask, SyntheticSpec};
use std::time::Instant;

struct Print(Instant);

impl CompareProgress for Print {
    fn message(&self, msg: &str) {
        eprintln!("[{:6.1}s] {msg}", self.0.elapsed().as_secs_f64());
    }
    fn run_finished(&self, index: usize, r: &RunRecord) {
        eprintln!(
            "[{:6.1}s] run {index}: {} seed {} accuracy {:.4}  train {:.1}s eval {:.1}s load {:.2}s  {:.0} tok/s",
            self.0.elapsed().as_secs_f64(),
            r.attention,
            r.seed,
            r.dev_metrics["accuracy"],
            r.wall_seconds["train"],
            r.wall_seconds["eval"],
            r.wall_seconds["load"],
            r.train_tokens_per_second
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv = std::env::args().skip(1);
    let quick = argv.next().as_deref() == Some("quick");
    let mut opts = if quick {
        CompareOptions::quick()
    } else {
        CompareOptions::default()
    };
    let (mut tasks, mut model) = opts.synthetic()?;
    let mut edits: Vec<(String, String)> = Vec::new();
    for a in argv {
        let (k, v) = a.split_once('=').ok_or("KEY=VALUE")?;
        match k {
            "lengths" => {
                let l: Vec<usize> = v.split(',').map(|s| s.parse()).collect::<Result<_, _>>()?;
                tasks = opts.preset().tasks_at(&l)?;
            }
            "min_markers" | "max_markers" | "max_margin" | "label_noise" | "forms"
            | "num_fillers" | "train_size" | "dev_size" => edits.push((k.into(), v.into())),
            "jobs" => opts.jobs = v.parse()?,
            "layers" => model.num_layers = v.parse()?,
            "hidden" => model.hidden_size = v.parse()?,
            "heads" => model.num_heads = v.parse()?,
            "ffn" => model.intermediate_size = v.parse()?,
            "dropout" => model.dropout = v.parse()?,
            "steps" => opts.max_steps = Some(v.parse()?),
            "batch" => opts.batch_size = Some(v.parse()?),
            "lr" => opts.learning_rate = Some(v.parse()?),
            "systems" => opts.systems = v.split(',').map(String::from).collect(),
            "seeds" => opts.seeds = v.split(',').map(|s| s.parse()).collect::<Result<_, _>>()?,
            "out" => opts.output_dir = Some(v.into()),
            _ => opts.set.push(a.clone()),
        }
    }
    for t in &mut tasks {
        if let SyntheticSpec::Majority(m) = t {
            for (k, v) in &edits {
                apply(m, k, v)?;
            }
        }
    }
    opts.task = TaskSource::Synthetic {
        tasks: Some(tasks.clone()),
        model: Some(model.clone()),
    };
    let t = Instant::now();
    let p = Print(t);
    let recs = run_compare(&opts, &p)?;
    println!(
        "tasks {tasks:?}\nmodel {model:?}\nargs steps {:?} batch {} lr {}",
        recs[0].training_args.max_steps,
        recs[0].training_args.per_device_train_batch_size,
        recs[0].training_args.learning_rate
    );
    for r in &recs {
        println!(
            "{:>24} {:>16} seed {} accuracy {:.4} train {:.1}s eval {:.1}s",
            r.task,
            r.attention,
            r.seed,
            r.dev_metrics["accuracy"],
            r.wall_seconds["train"],
            r.wall_seconds["eval"]
        );
    }
    println!("total wall {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Sets one majority-task field from text.
fn apply(t: &mut MajorityTask, key: &str, v: &str) -> Result<(), Box<dyn std::error::Error>> {
    match key {
        "min_markers" => t.min_markers = v.parse()?,
        "max_markers" => t.max_markers = v.parse()?,
        "max_margin" => t.max_margin = v.parse()?,
        "label_noise" => t.label_noise = v.parse()?,
        "forms" => t.forms = v.parse()?,
        "num_fillers" => t.num_fillers = v.parse()?,
        "train_size" => t.train_size = v.parse()?,
        "dev_size" => t.dev_size = v.parse()?,
        _ => return Err(format!("unknown task field {key}").into()),
    }
    Ok(())
}
