//! # qattn-train
//!
//! Fine-tuning of [`qattn_model`] models with exact or Monte-Carlo attention: AdamW with
//! parameter groups (backbone / attention / head, each with its own learning rate and clip
//! norm), learning-rate and sample-count schedules, gradient accumulation, a seeded
//! length-grouped collator, measurement-consistency regularisation, crash-safe checkpoints
//! with bit-identical resume, and tracking (JSONL, MLflow, progress bar).
//!
//! ```no_run
//! use qattn_model::{LoadOptions, Model};
//! use qattn_train::{Dataset, Problem, Trainer, TrainingArgs, tokenizer_for};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let args = TrainingArgs { max_steps: Some(100), ..Default::default() };
//! let tok = tokenizer_for("sentence-transformers/all-MiniLM-L6-v2", &Default::default(), args.max_length)?;
//! let train = Dataset::from_jsonl("train.jsonl".as_ref(), &tok, Problem::Auto, None)?;
//! let model = Model::load(
//!     "sentence-transformers/all-MiniLM-L6-v2",
//!     &LoadOptions { head: Some(train.labels.head()), trainable: true, ..Default::default() },
//! )?;
//! let mut trainer = Trainer::new(args, model, train, None)?;
//! let summary = trainer.train(false)?;
//! # Ok(()) }
//! ```

pub mod args;
pub mod checkpoint;
pub mod collective;
pub mod data;
pub mod error;
pub mod launch;
/// Keeping freed buffers in the process (moved to `qattn_model::memory`, which inference
/// uses too; re-exported here for the training commands).
pub use qattn_model::memory;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod optim;
pub mod output;
pub mod provenance;
pub mod records;
pub mod reduce;
pub mod schedule;
pub mod tracking;
pub mod trainer;

pub use args::{LossScaler, Precision, TrainingArgs};
pub use collective::{Collective, SingleProcess};
pub use data::Record;
pub use data::{Dataset, Labels, Problem};
pub use error::{Error, Result};
pub use launch::{Launch, Launcher};
pub use optim::{AdamW, Group};
pub use reduce::{CommStats, GradientReduction, Reducer};
pub use schedule::{LrSchedule, SampleSchedule};
pub use trainer::{TrainSummary, Trainer, TrainerState, evaluate, predict, run_fingerprint};

/// The tokenizer of `model` (a Hub id or directory) with truncation at `max_length`.
pub fn tokenizer_for(
    model: &str,
    hub: &qattn_model::HubOptions,
    max_length: usize,
) -> Result<qattn_model::Tokenizer> {
    let files = qattn_model::hub::resolve(model, hub, true)?;
    let path = files
        .tokenizer
        .ok_or_else(|| Error::Args(format!("model {model:?} has no tokenizer.json")))?;
    let mut tok = qattn_model::Tokenizer::from_file(&path)?;
    tok.set_max_length(Some(max_length));
    Ok(tok)
}
