//! Sentence embeddings with exact and Monte-Carlo attention, side by side.
//!
//! ```text
//! HF_HOME=../shared/data/hf cargo run --release -p qattn-model --example embed -- \
//!     [MODEL] [ESTIMATOR]
//! ```
//! MODEL defaults to `sentence-transformers/all-MiniLM-L6-v2` (a Hub id or a directory; set
//! `HF_HUB_OFFLINE=1` to stay offline), ESTIMATOR to `stratified:32`.

use qattn_model::{AttentionConfig, LoadOptions, Mode, Model};

fn cosine_matrix(e: &candle_core::Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    // Rows are L2-normalised, so E·Eᵀ holds the cosine similarities.
    e.matmul(&e.t()?)?.to_vec2::<f32>()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let id = args
        .next()
        .unwrap_or_else(|| "sentence-transformers/all-MiniLM-L6-v2".into());
    let spec = args.next().unwrap_or_else(|| "stratified:32".into());
    let sentences = [
        "A man is playing a guitar.",
        "A person plays an instrument.",
        "The stock market fell sharply today.",
    ];
    let texts: Vec<(&str, Option<&str>)> = sentences.iter().map(|s| (*s, None)).collect();

    let mut model = Model::load(&id, &LoadOptions::default())?;
    let batch = model.tokenize(&texts)?;
    let inputs = (&batch).into();
    let exact = model.sentence_embeddings(&inputs, Mode::EVAL)?;

    // Swap the estimator of every head; nothing is reloaded.
    model.set_attention(AttentionConfig::parse(&spec)?.with_seed(1))?;
    let sampled = model.sentence_embeddings(&inputs, Mode::EVAL)?;

    for (name, e) in [("exact", &exact), (spec.as_str(), &sampled)] {
        println!("cosine similarities, {name} attention:");
        for (s, row) in sentences.iter().zip(cosine_matrix(e)?) {
            let cells: Vec<String> = row.iter().map(|c| format!("{c:6.3}")).collect();
            println!("  {} | {s}", cells.join(" "));
        }
    }
    let agreement = (&exact * &sampled)?.sum(1)?.to_vec1::<f32>()?;
    println!("cosine(exact, {spec}) per sentence: {agreement:.4?}");
    Ok(())
}
