//! `qattn verify compare | seeds | claims | calibrate | estimators`: is one system significantly better than another?
//!
//! - `compare`: per-example outputs of two systems on the same examples (JSON lines
//!   `{"id", "pred", "gold"[, "group"]}`), a paired test (bootstrap, permutation, McNemar) under
//!   any GLUE/SuperGLUE metric;
//! - `seeds`: two lists of per-seed scores, Welch's t, Wilcoxon signed-rank or Almost
//!   Stochastic Order.
//!
//! - `claims`: a claims file evaluated against run records, VERIFIED / REFUTED / INCONCLUSIVE
//!   per claim (`qattn_verify::claims`);
//! - `calibrate`: the verdicts' error rates on simulated run records
//!   (`qattn_verify::calibration`);
//! - `estimators`: the estimator studies of `qattn_verify::estimators`.
//!
//! `compare` and `seeds` print one JSON object on stdout; `claims` prints the Markdown verdict
//! table (or the JSON report with `--json`) and writes both files. Errors go to stderr with a
//! non-zero exit.

use anyhow::{Context, Result};
use qattn_verify::stats::paired::{
    DEFAULT_CI_LEVEL, DEFAULT_RESAMPLES, MCNEMAR_EXACT_BELOW, mcnemar_counts,
};
use qattn_verify::stats::{self, Metric, Outputs, PairedTest};
use serde_json::{Value, json};
use std::path::PathBuf;

/// Subcommands of `qattn verify`.
#[derive(clap::Subcommand)]
pub(crate) enum VerifyCmd {
    /// Paired test of two systems' per-example outputs (JSON lines with id, pred, gold and an
    /// optional group); prints one JSON object.
    Compare(CompareArgs),
    /// Test across training seeds on two lists of per-seed scores; prints one JSON object.
    Seeds(SeedsArgs),
    /// Evaluate claims ("A beats B on task T's metric by ≥ m points") against run records;
    /// writes claims-report.md and claims-report.json and prints the verdict table.
    Claims(ClaimsArgs),
    /// Measure the verdicts' error rates: simulated run records under a known truth (by default
    /// the null: equal systems) judged by the claims engine; prints the rate of each verdict per
    /// seed count and writes calibration.md and calibration.json.
    Calibrate(CalibrateArgs),
    /// Estimator studies on the pretrained model's attention rows: variance reduction against
    /// multinomial, the Bretagnolle–Huber–Carol bound, time scaling, measurement noise; writes
    /// a Markdown + JSON report with plots.
    Estimators(EstimatorsArgs),
}

/// Arguments of `qattn verify estimators`.
#[derive(clap::Args)]
pub(crate) struct EstimatorsArgs {
    /// The reduced study (under a minute on two cores).
    #[arg(long)]
    quick: bool,
    /// Hub id or directory of the model whose attention rows are sampled; `synthetic` uses
    /// random logits instead.
    #[arg(long, default_value = qattn_verify::estimators::DEFAULT_MODEL)]
    model: String,
    /// Where to write report.md, report.json and the plots.
    #[arg(long, default_value = "estimator-study")]
    output_dir: PathBuf,
    /// Base seed of every random draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// δ of the Bretagnolle–Huber–Carol bound.
    #[arg(long, default_value_t = 0.05)]
    delta: f64,
    /// Hub cache directory.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Never download.
    #[arg(long)]
    offline: bool,
}

/// Arguments of `qattn verify calibrate` (defaults: the null of docs/verify.md's table).
#[derive(clap::Args)]
pub(crate) struct CalibrateArgs {
    /// Simulated datasets per seed count.
    #[arg(long, default_value_t = 200)]
    datasets: usize,
    /// Seeds per system, comma-separated; one row each.
    #[arg(long, value_delimiter = ',', default_value = "2,3,5")]
    seeds: Vec<usize>,
    /// Dev examples per run.
    #[arg(long, default_value_t = 277)]
    examples: usize,
    /// Baseline accuracy before the seed and example effects.
    #[arg(long, default_value_t = 0.7)]
    accuracy: f64,
    /// Standard deviation of the per-seed quality shift of each run.
    #[arg(long, default_value_t = 0.08)]
    seed_sd: f64,
    /// Standard deviation of the per-example preference for one system (shared by all seeds).
    #[arg(long, default_value_t = 0.0)]
    example_sd: f64,
    /// True accuracy advantage of the claimed-better system (0 = the null).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    delta: f64,
    /// Significance level α.
    #[arg(long, default_value_t = 0.05)]
    alpha: f64,
    /// Bootstrap rounds per evaluation.
    #[arg(long, default_value_t = 1000)]
    resamples: usize,
    /// Deciding test: bootstrap (the default hierarchical test) or welch.
    #[arg(long, default_value = "bootstrap")]
    test: String,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write calibration.md and calibration.json.
    #[arg(long, default_value = "calibration")]
    output_dir: PathBuf,
    /// Print the JSON table on stdout instead of the Markdown one.
    #[arg(long)]
    json: bool,
}

/// Arguments of `qattn verify claims`.
#[derive(clap::Args)]
pub(crate) struct ClaimsArgs {
    /// Directory of run records (TASK/ATTENTION/seed-S/run.json below it, as `qattn glue run`
    /// and `qattn compare` write them); repeat it to read several (a run of the same task,
    /// attention and seed in two of them is an error).
    #[arg(long)]
    records: Vec<PathBuf>,
    /// Claims file (TOML; see benchmarks/claims/source-document.toml and docs/verify.md).
    #[arg(long)]
    claims: PathBuf,
    /// The `report.json` of `qattn verify estimators`, which decides the file's
    /// `[[variance_claim]]` and `[[noise_claim]]` entries (without it they are INCONCLUSIVE).
    #[arg(long)]
    estimators: Option<PathBuf>,
    /// Where to write claims-report.md and claims-report.json.
    #[arg(long, default_value = "claims-report")]
    output_dir: PathBuf,
    /// Override the file's deciding test: bootstrap (hierarchical, seeds × examples) or welch.
    #[arg(long)]
    test: Option<String>,
    /// Override the file's bootstrap resamples.
    #[arg(long)]
    resamples: Option<usize>,
    /// Override the file's multiple-comparison correction: holm, bh or none.
    #[arg(long)]
    correction: Option<String>,
    /// Print the JSON report on stdout instead of the Markdown table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `qattn verify compare`.
#[derive(clap::Args)]
pub(crate) struct CompareArgs {
    /// System A's outputs: JSON lines {"id": …, "pred": …, "gold": …[, "group": …]}.
    #[arg(long)]
    a: PathBuf,
    /// System B's outputs, same ids and gold as A (any order).
    #[arg(long)]
    b: PathBuf,
    /// Metric: accuracy, f1, mcc, pearson, spearman, f1_macro, f1a or em.
    #[arg(long)]
    metric: String,
    /// Test: bootstrap, permutation or mcnemar (accuracy only).
    #[arg(long, default_value = "bootstrap")]
    test: String,
    /// Bootstrap resamples / random permutations.
    #[arg(long, default_value_t = DEFAULT_RESAMPLES)]
    resamples: usize,
    /// Seed of the resampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Confidence level of the CI of the difference.
    #[arg(long, default_value_t = DEFAULT_CI_LEVEL)]
    ci_level: f64,
}

/// Arguments of `qattn verify seeds`.
#[derive(clap::Args)]
pub(crate) struct SeedsArgs {
    /// System A's score per seed, comma-separated (e.g. 0.61,0.58,0.64).
    #[arg(
        long,
        value_delimiter = ',',
        allow_negative_numbers = true,
        required = true
    )]
    a: Vec<f64>,
    /// System B's score per seed, comma-separated (paired by position for wilcoxon).
    #[arg(
        long,
        value_delimiter = ',',
        allow_negative_numbers = true,
        required = true
    )]
    b: Vec<f64>,
    /// Test: welch, wilcoxon or aso.
    #[arg(long, default_value = "welch")]
    test: String,
    /// ASO: A is declared better when eps_min < tau.
    #[arg(long, default_value_t = 0.5)]
    tau: f64,
    /// ASO: confidence level of the eps_min bound.
    #[arg(long, default_value_t = 0.95)]
    confidence: f64,
    /// ASO: bootstrap iterations.
    #[arg(long, default_value_t = 1000)]
    bootstrap_iterations: usize,
    /// Seed of ASO's bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Welch: confidence level of the CI of mean(a) − mean(b).
    #[arg(long, default_value_t = DEFAULT_CI_LEVEL)]
    ci_level: f64,
}

/// Runs a `qattn verify` subcommand.
pub(crate) fn run(cmd: VerifyCmd) -> Result<()> {
    let out = match cmd {
        VerifyCmd::Compare(a) => compare(a)?,
        VerifyCmd::Seeds(a) => seeds(a)?,
        VerifyCmd::Claims(a) => return claims(a),
        VerifyCmd::Estimators(a) => return estimators(a),
        VerifyCmd::Calibrate(a) => return calibrate(a),
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

fn compare(args: CompareArgs) -> Result<Value> {
    let metric: Metric = args.metric.parse()?;
    let test: PairedTest = args.test.parse()?;
    let a = Outputs::read_jsonl(&args.a)?;
    let b = Outputs::read_jsonl(&args.b)?;
    let (a, b) = stats::align(&a, &b).with_context(|| {
        format!(
            "--a {} and --b {} do not describe the same examples",
            args.a.display(),
            args.b.display()
        )
    })?;
    let r = stats::paired_test(
        test,
        &a,
        &b,
        metric,
        args.resamples,
        args.seed,
        args.ci_level,
    )?;
    let mut v = serde_json::to_value(&r)?;
    v["ci_level"] = json!(args.ci_level);
    v["seed"] = json!(args.seed);
    if test == PairedTest::Mcnemar {
        let (b01, b10) = mcnemar_counts(&a, &b)?;
        v["b01"] = json!(b01);
        v["b10"] = json!(b10);
        v["method"] = json!(if b01 + b10 < MCNEMAR_EXACT_BELOW {
            "exact-binomial"
        } else {
            "chi2-continuity-corrected"
        });
    }
    Ok(v)
}

fn seeds(args: SeedsArgs) -> Result<Value> {
    let (a, b) = (&args.a, &args.b);
    let v = match args.test.as_str() {
        "welch" => {
            let r = stats::welch_with_level(a, b, args.ci_level)?;
            let mut v = serde_json::to_value(&r)?;
            v["ci_level"] = json!(args.ci_level);
            v
        }
        "wilcoxon" => serde_json::to_value(stats::wilcoxon(a, b)?)?,
        "aso" => {
            let r = stats::aso(
                a,
                b,
                args.tau,
                args.confidence,
                args.bootstrap_iterations,
                args.seed,
            )?;
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let (ma, mb) = (mean(a), mean(b));
            json!({
                "test": "aso",
                "eps_min": r.eps_min,
                "violation_ratio": r.violation_ratio,
                "tau": r.tau,
                "dominant": r.dominant,
                "confidence": args.confidence,
                "bootstrap_iterations": args.bootstrap_iterations,
                "seed": args.seed,
                "mean_a": ma,
                "mean_b": mb,
                "delta": ma - mb,
            })
        }
        other => anyhow::bail!("unknown test \"{other}\"; valid tests: welch, wilcoxon, aso"),
    };
    let mut v = v;
    v["n_a"] = json!(a.len());
    v["n_b"] = json!(b.len());
    Ok(v)
}

fn claims(args: ClaimsArgs) -> Result<()> {
    use qattn_verify::claims::{self, ClaimsFile};
    let mut file = ClaimsFile::read(&args.claims)?;
    if let Some(t) = &args.test {
        file.defaults.test = parse_test(t)?;
    }
    if let Some(n) = args.resamples {
        anyhow::ensure!(n >= 100, "--resamples {n}: at least 100");
        file.defaults.resamples = n;
    }
    if let Some(c) = &args.correction {
        c.parse::<stats::Correction>()
            .map_err(|_| anyhow::anyhow!("--correction {c:?}: expected holm, bh or none"))?;
        file.defaults.correction = c.clone();
    }
    anyhow::ensure!(
        !args.records.is_empty() || !file.has_run_claims(),
        "{}: [[claim]] entries are decided from run records: give --records DIR",
        args.claims.display()
    );
    let records: Vec<_> = qattn_glue::report::load_runs_from(&args.records)?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let study = args
        .estimators
        .as_deref()
        .map(claims::StudyEvidence::read)
        .transpose()?;
    let report = claims::evaluate_with_study(&file, &records, study.as_ref())?;
    let mut command = String::from("qattn verify claims");
    for dir in &args.records {
        command.push_str(&format!(" --records {}", dir.display()));
    }
    command.push_str(&format!(" --claims {}", args.claims.display()));
    if let Some(e) = &args.estimators {
        command.push_str(&format!(" --estimators {}", e.display()));
    }
    command.push_str(&format!(" --output-dir {}", args.output_dir.display()));
    let written = claims::write_report(&report, &args.output_dir, &command)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", claims::to_markdown(&report, &command));
    }
    let tally = claims::tally(&report);
    eprintln!(
        "{} claims: {}; wrote {}",
        report.results.len() + report.study_results.len(),
        tally
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn parse_test(t: &str) -> Result<qattn_verify::claims::ClaimTest> {
    use qattn_verify::claims::ClaimTest;
    match t {
        "bootstrap" => Ok(ClaimTest::Bootstrap),
        "welch" => Ok(ClaimTest::Welch),
        other => Err(anyhow::anyhow!(
            "--test {other:?}: expected bootstrap or welch"
        )),
    }
}

fn calibrate(args: CalibrateArgs) -> Result<()> {
    use qattn_verify::calibration::{Settings, run, to_markdown};
    let settings = Settings {
        datasets: args.datasets,
        seeds: args.seeds.clone(),
        examples: args.examples,
        accuracy: args.accuracy,
        seed_sd: args.seed_sd,
        example_sd: args.example_sd,
        delta: args.delta,
        alpha: args.alpha,
        resamples: args.resamples,
        test: parse_test(&args.test)?,
        seed: args.seed,
    };
    settings.validate()?;
    let total = settings.datasets * settings.seeds.len();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} calibrate [{bar:30}] {pos}/{len} datasets ({eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let table = run(&settings, |done, _| bar.set_position(done as u64));
    bar.finish_and_clear();
    let table = table?;
    let command = format!(
        "qattn verify calibrate --datasets {} --seeds {} --examples {} --accuracy {} --seed-sd {} \
         --example-sd {} --delta {} --alpha {} --resamples {} --test {} --seed {}",
        args.datasets,
        args.seeds
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(","),
        args.examples,
        args.accuracy,
        args.seed_sd,
        args.example_sd,
        args.delta,
        args.alpha,
        args.resamples,
        args.test,
        args.seed
    );
    let md = to_markdown(&table, &command);
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("creating {}", args.output_dir.display()))?;
    let mut value = serde_json::to_value(&table)?;
    if let Some(o) = value.as_object_mut() {
        o.insert("command".into(), Value::from(command.clone()));
    }
    qattn_model::io::write_atomic(&args.output_dir.join("calibration.md"), md.as_bytes())?;
    qattn_model::io::write_atomic(
        &args.output_dir.join("calibration.json"),
        format!("{}\n", serde_json::to_string_pretty(&value)?).as_bytes(),
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{md}");
    }
    eprintln!(
        "calibration: {} datasets in {:.0} s; wrote calibration.md and calibration.json to {}",
        total,
        started.elapsed().as_secs_f64(),
        args.output_dir.display()
    );
    Ok(())
}

fn estimators(args: EstimatorsArgs) -> Result<()> {
    use qattn_verify::estimators::{StudyOptions, run_study, to_markdown, write_report};
    let opts = StudyOptions {
        quick: args.quick,
        model: Some(args.model.clone()),
        hub: crate::glue::hub(&args.cache_dir, args.offline),
        seed: args.seed,
        delta: args.delta,
        ..StudyOptions::default()
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    let report = run_study(&opts, &|msg: &str| bar.set_message(msg.to_string()));
    bar.finish_and_clear();
    let report = report?;
    let written = write_report(&report, &args.output_dir)?;
    print!("{}", to_markdown(&report));
    eprintln!(
        "estimator study ({}) done in {:.0} s; wrote {} files to {}",
        if args.quick { "quick" } else { "full" },
        started.elapsed().as_secs_f64(),
        written.len(),
        args.output_dir.display()
    );
    Ok(())
}
