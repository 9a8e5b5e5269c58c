//! # qattn-model
//!
//! A BERT-family encoder whose self-attention runs through [`qattn_kernels`]: exact, or any
//! Monte-Carlo ("quantum measurement") estimator, chosen per layer and per head. It loads the
//! Hugging Face checkpoints people already have (Hub download or an offline cache, safetensors
//! or `pytorch_model.bin`, with or without the `bert.` prefix), adds task heads
//! (classification, regression, multiple choice, candidate scoring), tokenises with the
//! model's `tokenizer.json`, and saves models transformers can load back.
//!
//! ```no_run
//! use qattn_model::{AttentionConfig, LoadOptions, Mode, Model};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Every head of every layer estimates attention from 32 stratified measurements, except
//! // layer 0 (exact) and head 3 of layer 5 (control variate, rank 4, 16 shots).
//! let attention = AttentionConfig::parse("stratified:32")?
//!     .apply_override("0=exact")?
//!     .apply_override("5.3=cv:4:16")?
//!     .with_seed(7);
//! let opts = LoadOptions { attention: Some(attention), ..Default::default() };
//! let model = Model::load("sentence-transformers/all-MiniLM-L6-v2", &opts)?;
//! let batch = model.tokenize(&[("Quantum attention samples keys.", None)])?;
//! let emb = model.sentence_embeddings(&(&batch).into(), Mode::EVAL)?; // [1, 384]
//! # Ok(()) }
//! ```
//!
//! ## Where to find models
//! [`hub::resolve`] takes a directory or a Hub id. Offline (`HF_HUB_OFFLINE=1` or
//! [`HubOptions::offline`]) it reads the cache only — `--cache-dir`, `HF_HUB_CACHE`,
//! `HF_HOME/hub`, `HF_HOME`, `~/.cache/huggingface/hub` — and a missing file is an error that
//! lists every missing file and how to get it.
//!
//! ## Differences from transformers
//! - Dropout on attention probabilities (`attention_probs_dropout_prob`) is not applied: the
//!   kernels never form the probability matrix. Hidden and classifier dropout are applied in
//!   [`Mode::train`], with masks from Philox streams so runs are reproducible.
//! - Attention draws are seeded per (global seed, step, layer, first head of a kernel call);
//!   see [`AttentionConfig`].

pub mod attention;
pub mod bert;
pub mod config;
pub mod device;
pub mod error;
pub mod heads;
pub mod hub;
pub mod io;
/// Keeping freed buffers in the process (defined in `qattn-kernels`, the lowest layer, so its
/// benchmarks can use it too).
pub use qattn_kernels::memory;
pub mod model;
pub mod params;
pub mod precision;
pub mod tokenizer;

pub use attention::{AttentionConfig, HeadOverride};
pub use bert::{Bert, EncoderOutput, Inputs, Mode, mean_pool, mean_pool_normalize};
pub use candle_core::Device;
pub use config::{Activation, Config, ProblemType};
pub use device::{device_spec, parse_device};
pub use error::{Error, MissingFiles, Result};
pub use heads::{HeadKind, Pooling};
pub use hub::HubOptions;
pub use model::{LoadOptions, LoadReport, Model, QattnMeta};
pub use params::Params;
pub use precision::Precision;
pub use qattn_kernels::{EstimatorSpec, GradMode};
pub use tokenizer::{Batch, Encoding, Tokenizer};
