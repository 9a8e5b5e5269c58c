//! The trainer end to end on the tiny random BERT from the shared model cache
//! (`QATTN_HF_CACHE`, default `<repo>/../shared/data/hf`).

use qattn_model::{AttentionConfig, HubOptions, LoadOptions, Model};
use qattn_train::{Dataset, Problem, Trainer, TrainingArgs, tokenizer_for};
use std::path::{Path, PathBuf};

const TINY: &str = "synthetic/bert-tiny-random-h32";

fn hub() -> HubOptions {
    let cache = std::env::var_os("QATTN_HF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/data/hf"
            ))
        });
    assert!(
        cache.is_dir(),
        "{} not found: set QATTN_HF_CACHE to the shared model cache",
        cache.display()
    );
    HubOptions {
        cache_dir: Some(cache),
        offline: true,
        ..HubOptions::default()
    }
}

/// A separable toy task: the sentiment word decides the label, fillers are noise.
fn write_task(dir: &Path, n: usize) -> PathBuf {
    let fillers = [
        "alpha", "river", "stone", "blue", "quiet", "table", "music", "green", "light", "paper",
    ];
    let mut s = String::new();
    for i in 0..n {
        let label = i % 2;
        let word = if label == 1 { "wonderful" } else { "terrible" };
        let a = fillers[(i * 7) % fillers.len()];
        let b = fillers[(i * 3 + 1) % fillers.len()];
        let extra = if i % 3 == 0 {
            " and more words here"
        } else {
            ""
        };
        s.push_str(&format!(
            "{{\"text\": \"{a} {word} {b}{extra}\", \"label\": {label}}}\n"
        ));
    }
    let p = dir.join("train.jsonl");
    std::fs::write(&p, s).unwrap();
    p
}

fn args(out: &Path) -> TrainingArgs {
    TrainingArgs {
        output_dir: out.to_path_buf(),
        max_steps: Some(100),
        per_device_train_batch_size: 8,
        learning_rate: 3e-3,
        logging_steps: 1,
        save_steps: 1000,
        warmup_steps: 5,
        seed: 1,
        ..Default::default()
    }
}

fn trainer(args: TrainingArgs, data: &Path, attention: &str, zero_dropout: bool) -> Trainer {
    let hub = hub();
    let tok = tokenizer_for(TINY, &hub, args.max_length).unwrap();
    let train = Dataset::from_jsonl(data, &tok, Problem::Auto, None).unwrap();
    let mut att = AttentionConfig::parse(attention)
        .unwrap()
        .with_seed(args.seed);
    att.grad_mode = args.grad_mode;
    let opts = LoadOptions {
        hub,
        attention: Some(att.clone()),
        head: Some(train.labels.head()),
        trainable: !zero_dropout,
        init_seed: args.seed,
        ..Default::default()
    };
    let mut model = Model::load(TINY, &opts).unwrap();
    if zero_dropout {
        let mut cfg = model.config().clone();
        cfg.hidden_dropout_prob = 0.0;
        let mut params = model.params().clone();
        params.make_trainable().unwrap();
        model =
            Model::from_params(cfg, att, model.head(), params, model.tokenizer().cloned()).unwrap();
    }
    let mut t = Trainer::new(args, model, train, None).unwrap();
    t.set_output(true, true);
    t
}

fn logged_losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn params_of(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    t.model()
        .params()
        .tensors()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect()
}

fn fits(attention: &str, grad_mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = write_task(dir.path(), 48);
    let mut a = args(&dir.path().join("out"));
    a.grad_mode = grad_mode.parse().unwrap();
    let mut t = trainer(a, &data, attention, false);
    let s = t.train(false).unwrap();
    let losses = logged_losses(&dir.path().join("out"));
    let first = losses[..3].iter().map(|x| x.1).sum::<f64>() / 3.0;
    let last = losses[losses.len() - 5..].iter().map(|x| x.1).sum::<f64>() / 5.0;
    eprintln!("{attention} ({grad_mode} gradient): loss {first:.4} → {last:.4}");
    assert_eq!(s.steps, 100);
    assert!(
        first > 0.5,
        "{attention}: the task should start unsolved ({first})"
    );
    assert!(
        last < 0.05,
        "{attention}/{grad_mode}: loss did not go to ~0: {last}"
    );
}

#[test]
fn loss_goes_to_zero_with_exact_attention() {
    fits("exact", "exact");
}

#[test]
fn loss_goes_to_zero_with_mc_attention_straight_through() {
    fits("stratified:8", "exact");
}

#[test]
fn loss_goes_to_zero_with_mc_attention_sampled_gradient() {
    fits("multinomial:8", "sampled");
}

#[test]
fn accumulation_equals_one_large_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_task(dir.path(), 32);
    let mut big = args(&dir.path().join("a"));
    big.per_device_train_batch_size = 8;
    big.mega_batch_factor = 0;
    let mut small = big.clone();
    small.per_device_train_batch_size = 2;
    small.gradient_accumulation_steps = 4;
    let (g_big, l_big) = trainer(big, &data, "exact", true)
        .first_step_gradients()
        .unwrap();
    let (g_small, l_small) = trainer(small, &data, "exact", true)
        .first_step_gradients()
        .unwrap();
    assert!((l_big - l_small).abs() < 1e-5, "{l_big} vs {l_small}");
    let mut worst = 0.0f32;
    let mut scale = 0.0f32;
    for (name, a) in &g_big {
        let b = &g_small[name];
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
            scale = scale.max(x.abs());
        }
    }
    eprintln!("accumulation: max |Δgrad| {worst:.2e} (max |grad| {scale:.2e})");
    assert!(scale > 0.0);
    assert!(worst <= 1e-5 * scale.max(1.0), "{worst} vs scale {scale}");
}

#[test]
fn consistency_regularisation_changes_the_gradient_only_when_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_task(dir.path(), 16);
    let base = args(&dir.path().join("o"));
    let mut reg = base.clone();
    reg.consistency_weight = 1.0;
    let grads = |a: TrainingArgs, att: &str| {
        trainer(a, &data, att, false)
            .first_step_gradients()
            .unwrap()
    };
    let (g0, l0) = grads(base.clone(), "multinomial:4");
    let (g1, l1) = grads(reg.clone(), "multinomial:4");
    assert_eq!(l0, l1, "the task loss itself is unchanged");
    let diff: f32 = g0
        .iter()
        .map(|(k, a)| {
            a.iter()
                .zip(&g1[k])
                .map(|(x, y)| (x - y).abs())
                .sum::<f32>()
        })
        .sum();
    assert!(
        diff > 1e-4,
        "consistency term did not change the gradient ({diff})"
    );
    let (e0, _) = grads(base, "exact");
    let (e1, _) = grads(reg, "exact");
    assert_eq!(e0, e1, "with exact attention the term is zero");
}

#[test]
fn resume_continues_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_task(dir.path(), 24);
    let mut a = args(&dir.path().join("full"));
    a.max_steps = Some(10);
    a.save_steps = 4;
    a.attention = None;
    let mut full = trainer(a.clone(), &data, "stratified:4", false);
    full.train(false).unwrap();
    let want = logged_losses(&a.output_dir);
    let mut b = a.clone();
    b.output_dir = dir.path().join("interrupted");
    let mut first = trainer(b.clone(), &data, "stratified:4", false);
    first.train_until(false, Some(6)).unwrap(); // "crash" after step 6; last checkpoint: 4
    let mut second = trainer(b.clone(), &data, "stratified:4", false);
    let s = second.train(true).unwrap();
    assert_eq!(s.resumed_from, Some(4));
    let got = logged_losses(&b.output_dir);
    assert_eq!(got.len(), 10, "{got:?}");
    for ((s1, l1), (s2, l2)) in want.iter().zip(&got) {
        assert_eq!(s1, s2);
        assert_eq!(
            l1.to_bits(),
            l2.to_bits(),
            "loss at step {s1}: {l1} vs {l2}"
        );
    }
    assert_eq!(params_of(&full), params_of(&second), "final weights differ");
}

#[test]
fn resume_refuses_a_checkpoint_of_different_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_task(dir.path(), 24);
    let mut a = args(&dir.path().join("o"));
    a.max_steps = Some(6);
    a.save_steps = 4;
    let mut first = trainer(a.clone(), &data, "exact", false);
    first.train_until(false, Some(5)).unwrap(); // checkpoint at step 4
    // Same arguments except the logging cadence: resumes.
    let mut same = a.clone();
    same.logging_steps = 3;
    let s = trainer(same, &data, "exact", false).train(true).unwrap();
    assert_eq!(s.resumed_from, Some(4));
    // A different learning rate: refused, naming the reason.
    let mut other = a.clone();
    other.learning_rate = 1e-4;
    let err = trainer(other, &data, "exact", false)
        .train(true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("different training arguments"), "{err}");
}

#[test]
fn sample_schedule_is_applied_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_task(dir.path(), 16);
    let mut a = args(&dir.path().join("o"));
    a.max_steps = Some(6);
    a.sample_schedule.exact_steps = 2;
    a.sample_schedule.start_samples = 64;
    a.sample_schedule.anneal_steps = 2;
    let mut t = trainer(a.clone(), &data, "multinomial:4", false);
    t.train(false).unwrap();
    let s: Vec<f64> = std::fs::read_to_string(a.output_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["mc_samples"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(s, vec![0.0, 0.0, 64.0, 16.0, 4.0, 4.0]);
    // The saved model carries the target estimator, not an annealed one.
    assert_eq!(t.model().attention().default.to_string(), "multinomial:4");
}

#[test]
fn early_stopping_and_best_model_tracking() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_task(dir.path(), 16);
    let mut a = args(&dir.path().join("o"));
    // lr = 0: the evaluation loss never improves after the first evaluation.
    a.learning_rate = 0.0;
    a.max_steps = Some(50);
    a.eval_steps = Some(2);
    a.save_steps = 2;
    a.early_stopping_patience = Some(2);
    a.save_total_limit = Some(1);
    let hub = hub();
    let tok = tokenizer_for(TINY, &hub, a.max_length).unwrap();
    let train = Dataset::from_jsonl(&data, &tok, Problem::Auto, None).unwrap();
    let eval = Dataset::from_jsonl(&data, &tok, Problem::Auto, Some(&train.labels)).unwrap();
    let model = Model::load(
        TINY,
        &LoadOptions {
            hub,
            head: Some(train.labels.head()),
            trainable: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut t = Trainer::new(a.clone(), model, train, Some(eval)).unwrap();
    t.set_output(true, true);
    let s = t.train(false).unwrap();
    assert!(s.stopped_early);
    assert_eq!(s.steps, 6, "best at 2, no improvement at 4 and 6");
    assert_eq!(s.best_step, Some(2));
    // keep-last-1 plus the protected best checkpoint.
    let mut kept: Vec<String> = std::fs::read_dir(&a.output_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    kept.sort();
    assert_eq!(kept, vec!["checkpoint-2", "checkpoint-6"]);
}

#[test]
fn multiple_choice_trains() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = String::new();
    for i in 0..24 {
        let right = i % 2;
        let choices = if right == 0 {
            "[\"wonderful\", \"terrible\"]"
        } else {
            "[\"terrible\", \"wonderful\"]"
        };
        s.push_str(&format!(
            "{{\"text\": \"pick the happy word {i}\", \"choices\": {choices}, \"label\": {right}}}\n"
        ));
    }
    let data = dir.path().join("mc.jsonl");
    std::fs::write(&data, s).unwrap();
    let mut a = args(&dir.path().join("o"));
    a.max_steps = Some(60);
    let mut t = trainer(a.clone(), &data, "exact", false);
    t.train(false).unwrap();
    let losses = logged_losses(&a.output_dir);
    let last = losses[losses.len() - 5..].iter().map(|x| x.1).sum::<f64>() / 5.0;
    assert!(losses[0].1 > 0.5 && last < 0.1, "{} → {last}", losses[0].1);
}

/// bf16 and f16 autocast (f32 master weights; f16 with the dynamic loss scaler) start from
/// the f32 run's loss within their rounding and fit the task as f32 does; the parameters stay
/// f32, and f16 logs its loss scale (a power of two, never above the initial 65536).
#[test]
fn mixed_precision_tracks_f32_and_fits() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_task(dir.path(), 48);
    let run = |precision: &str| {
        let mut a = args(&dir.path().join(precision));
        a.precision = serde_json::from_value(serde_json::json!(precision)).unwrap();
        let mut t = trainer(a.clone(), &data, "exact", false);
        let s = t.train(false).unwrap();
        assert_eq!(s.steps, 100);
        for (name, p) in t.model().params().tensors() {
            assert_eq!(p.dtype(), candle_core::DType::F32, "{precision}: {name}");
        }
        (logged_losses(&a.output_dir), a.output_dir)
    };
    let (f32_losses, _) = run("f32");
    for (precision, tol) in [("bf16", 2e-2), ("f16", 2e-3)] {
        let (losses, out) = run(precision);
        let (l0, r0) = (losses[0].1, f32_losses[0].1);
        let rel = ((l0 - r0) / r0).abs();
        let last = losses[losses.len() - 5..].iter().map(|x| x.1).sum::<f64>() / 5.0;
        eprintln!("{precision}: first loss {l0:.5} (f32 {r0:.5}, rel {rel:.1e}), last {last:.4}");
        assert!(
            rel > 0.0,
            "{precision}: no rounding at all: is autocast on?"
        );
        assert!(rel < tol, "{precision}: first loss {l0} vs f32 {r0}");
        assert!(last < 0.05, "{precision}: loss did not go to ~0: {last}");
        let scales: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss_scale"].as_f64()
            })
            .collect();
        if precision == "f16" {
            assert_eq!(scales.len(), 100, "f16 logs its loss scale every step");
            for s in scales {
                assert!(
                    (1.0..=65536.0).contains(&s) && s.log2().fract() == 0.0,
                    "{s}"
                );
            }
        } else {
            assert!(scales.is_empty(), "only f16 scales the loss");
        }
    }
}
