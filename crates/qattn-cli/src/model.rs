//! `qattn model encode | info`: run a BERT-family checkpoint with any attention estimator.

use anyhow::{Context, Result};
use candle_core::{IndexOp, Tensor};
use qattn_model::{AttentionConfig, HubOptions, LoadOptions, Mode, Model, Precision};
use serde_json::json;
use std::path::PathBuf;

/// Arguments of `qattn model`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Encode a text (or text pair): token ids, hidden states, pooler output, sentence embedding.
    Encode(EncodeArgs),
    /// Print a model's configuration, parameter count and attention configuration.
    Info(InfoArgs),
}

/// Where the model comes from and how its attention is configured.
#[derive(clap::Args)]
pub(crate) struct ModelArgs {
    /// Hugging Face Hub id (`org/name`, optionally `@revision`) or a local model directory.
    #[arg(long)]
    model: String,
    /// Hub cache directory (default: HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Never download; use the cache only (also set by HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// Default attention estimator of every head, e.g. `exact`, `stratified:32`,
    /// `topk:8:32+readout:0.02:0.03+mitigate` (default: the model's qattn.json, else exact).
    #[arg(long)]
    attention: Option<String>,
    /// Override one layer (`L=SPEC`) or one head (`L.H=SPEC`); repeatable.
    #[arg(long = "attention-override", value_name = "L[.H]=SPEC")]
    overrides: Vec<String>,
    /// Global seed of attention draws (default: the model's qattn.json, else 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Storage precision of the encoder's dense weights: f32, f16 or int8 (Q8_0); see
    /// docs/precision.md.
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    precision: Precision,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with candle's CUDA backend and a GPU;
    /// otherwise the command refuses with the reason).
    #[arg(long, default_value = "cpu", value_parser = crate::model::parse_device_arg)]
    device: candle_core::Device,
}

/// clap value parser of `--device` (see [`qattn_model::parse_device`]).
pub(crate) fn parse_device_arg(s: &str) -> std::result::Result<candle_core::Device, String> {
    qattn_model::parse_device(s).map_err(|e| e.to_string())
}

/// clap value parser of `--precision`.
pub(crate) fn parse_precision(s: &str) -> std::result::Result<Precision, String> {
    Precision::parse(s).map_err(|e| e.to_string())
}

impl ModelArgs {
    pub(crate) fn load(&self, tokenizer: bool) -> Result<Model> {
        let mut hub = HubOptions::from_env();
        hub.cache_dir = self.cache_dir.clone();
        hub.offline |= self.offline;
        let opts = LoadOptions {
            hub,
            tokenizer,
            precision: self.precision,
            device: self.device.clone(),
            ..Default::default()
        };
        let mut model = Model::load(&self.model, &opts)
            .with_context(|| format!("cannot load model {:?}", self.model))?;
        if self.attention.is_some() || self.seed.is_some() || !self.overrides.is_empty() {
            let mut att = match &self.attention {
                Some(spec) => {
                    AttentionConfig::parse(spec).with_context(|| format!("--attention {spec:?}"))?
                }
                None => model.attention().clone(),
            };
            if let Some(seed) = self.seed {
                att.seed = seed;
            }
            for o in &self.overrides {
                att = att
                    .apply_override(o)
                    .with_context(|| format!("--attention-override {o:?}"))?;
            }
            model.set_attention(att)?;
        }
        Ok(model)
    }
}

/// Arguments of `qattn model encode`.
#[derive(clap::Args)]
pub(crate) struct EncodeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to encode.
    #[arg(long)]
    text: String,
    /// Optional second segment (token type 1).
    #[arg(long)]
    pair: Option<String>,
    /// Truncate (longest first) to this many tokens including [CLS]/[SEP] (default: the
    /// model's max_position_embeddings).
    #[arg(long)]
    max_length: Option<usize>,
    /// Print JSON: {"input_ids", "last_hidden_state", "pooler_output", "sentence_embedding"}.
    #[arg(long)]
    json: bool,
}

/// Arguments of `qattn model info`.
#[derive(clap::Args)]
pub(crate) struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: Args) -> Result<()> {
    match a.command {
        Command::Encode(a) => encode(a),
        Command::Info(a) => info(a),
    }
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(t.to_vec2::<f32>()?)
}

fn encode(a: EncodeArgs) -> Result<()> {
    let mut model = a.model.load(true)?;
    let max_len = a
        .max_length
        .unwrap_or(model.config().max_position_embeddings);
    if let Some(tok) = model.tokenizer_mut() {
        tok.set_max_length(Some(max_len));
    }
    let batch = model.tokenize(&[(a.text.as_str(), a.pair.as_deref())])?;
    let inputs = (&batch).into();
    let out = model.forward(&inputs, Mode::EVAL)?;
    let emb =
        qattn_model::mean_pool_normalize(&out.last_hidden_state, Some(&batch.attention_mask))?;
    let ids: Vec<u32> = batch.input_ids.i(0)?.to_vec1()?;
    let hidden = rows(&out.last_hidden_state.i(0)?)?;
    let pooled: Option<Vec<f32>> = match &out.pooler_output {
        Some(p) => Some(p.i(0)?.to_vec1()?),
        None => None,
    };
    let sentence: Vec<f32> = emb.i(0)?.to_vec1()?;
    if a.json {
        let v = json!({
            "input_ids": ids,
            "last_hidden_state": hidden,
            "pooler_output": pooled,
            "sentence_embedding": sentence,
        });
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let tokens: Vec<String> = model
        .tokenizer()
        .map(|t| t.inner().get_vocab(true))
        .map(|vocab| {
            let mut inv = std::collections::HashMap::new();
            for (tok, id) in vocab {
                inv.insert(id, tok);
            }
            ids.iter()
                .map(|id| inv.get(id).cloned().unwrap_or_else(|| format!("#{id}")))
                .collect()
        })
        .unwrap_or_default();
    let cfg = model.config();
    println!("model      {}", a.model.model);
    println!("precision  {}", model.precision());
    println!(
        "attention  {}",
        model
            .attention()
            .describe(cfg.num_hidden_layers, cfg.num_attention_heads)
            .join(" | ")
    );
    println!("tokens     {} {:?}", ids.len(), tokens);
    println!("input_ids  {ids:?}");
    let preview = |v: &[f32]| -> String {
        let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:+.6}")).collect();
        format!("[{}, …] ({} values)", head.join(", "), v.len())
    };
    println!(
        "last_hidden_state [{}, {}]  token 0: {}",
        hidden.len(),
        cfg.hidden_size,
        preview(&hidden[0])
    );
    match &pooled {
        Some(p) => println!("pooler_output      {}", preview(p)),
        None => println!("pooler_output      (the checkpoint has no pooler)"),
    }
    println!("sentence_embedding {}", preview(&sentence));
    println!("(use --json for every value)");
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let model = a.model.load(false)?;
    let cfg = model.config();
    let layers = model
        .attention()
        .describe(cfg.num_hidden_layers, cfg.num_attention_heads);
    let files = model.files();
    if a.json {
        let v = json!({
            "model": a.model.model,
            "dir": files.map(|f| f.dir.display().to_string()),
            "config": cfg,
            "parameters": model.params().count(),
            "precision": model.precision(),
            "attention": model.attention(),
            "attention_layers": layers,
            "head": model.head().map(|h| h.to_string()),
            "labels": cfg.labels(),
            "tokenizer": files.and_then(|f| f.tokenizer.as_ref()).is_some(),
            "initialized": model.load_report().initialized,
            "unused": model.load_report().unused,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model       {}", a.model.model);
    if let Some(f) = files {
        println!("directory   {}", f.dir.display());
    }
    println!(
        "architecture bert: {} layers, hidden {}, {} heads × {}, intermediate {}, {}, vocab {}, max positions {}",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.head_dim(),
        cfg.intermediate_size,
        cfg.hidden_act.as_str(),
        cfg.vocab_size,
        cfg.max_position_embeddings
    );
    println!("parameters  {}", model.params().count());
    println!("precision   {}", model.precision());
    println!(
        "head        {}",
        model
            .head()
            .map(|h| h.to_string())
            .unwrap_or_else(|| "none (encoder only)".into())
    );
    if let Some(labels) = cfg.labels() {
        println!("labels      {}", labels.join(", "));
    }
    println!(
        "attention   seed {}, gradient {}",
        model.attention().seed,
        model.attention().grad_mode
    );
    for l in layers {
        println!("  {l}");
    }
    println!("config.json");
    println!("{}", cfg.to_json());
    Ok(())
}
