//! Sequence-pair classification with a per-layer / per-head estimator mix.
//!
//! ```text
//! HF_HOME=../shared/data/hf cargo run --release -p qattn-model --example classify -- [MODEL]
//! ```
//! A checkpoint without a classifier (e.g. the default `synthetic/bert-tiny-random-h32`) gets
//! one initialised from the seed — qattn warns, as transformers does — so its predictions are
//! meaningless until fine-tuned; the point here is the API. `save_pretrained` writes a
//! directory PyTorch transformers loads as `BertForSequenceClassification`.

use candle_nn::ops::softmax_last_dim;
use qattn_model::{AttentionConfig, HeadKind, LoadOptions, Mode, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let id = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "synthetic/bert-tiny-random-h32".into());
    // Exact attention in layer 0, 16 stratified measurements elsewhere, and a
    // readout-noisy, mitigated top-k estimator on head 1 of layer 1.
    let attention = AttentionConfig::parse("stratified:16")?
        .apply_override("0=exact")?
        .apply_override("1.1=topk:4:16+readout:0.02:0.03+mitigate")?
        .with_seed(42);
    let opts = LoadOptions {
        attention: Some(attention),
        head: Some(HeadKind::Classification { num_labels: 3 }),
        labels: Some(vec![
            "entailment".into(),
            "neutral".into(),
            "contradiction".into(),
        ]),
        init_seed: 7,
        ..Default::default()
    };
    let model = Model::load(&id, &opts)?;
    let cfg = model.config();
    for line in model
        .attention()
        .describe(cfg.num_hidden_layers, cfg.num_attention_heads)
    {
        println!("{line}");
    }
    let pairs = [
        (
            "A man is playing a guitar.",
            Some("A person plays an instrument."),
        ),
        (
            "A man is playing a guitar.",
            Some("Nobody is making music."),
        ),
    ];
    let batch = model.tokenize(&pairs)?;
    let logits = model.logits(&(&batch).into(), Mode::EVAL)?;
    let probs = softmax_last_dim(&logits)?.to_vec2::<f32>()?;
    let labels = cfg.labels().unwrap_or_default();
    for ((a, b), p) in pairs.iter().zip(probs) {
        println!("{a} / {}", b.unwrap_or(""));
        for (l, v) in labels.iter().zip(p) {
            println!("    {l:<13} {v:.3}");
        }
    }
    let out = std::env::temp_dir().join("qattn-classify-example");
    model.save_pretrained(&out)?;
    println!("saved to {}", out.display());
    Ok(())
}
