//! # qattn-serve
//!
//! Production gRPC inference for qattn models: the typed `qattn.v1` API (Info, Classify,
//! ClassifyStream, Embed, Tokenize; Admin) and the KServe Open Inference Protocol v2
//! (`inference.GRPCInferenceService`), with `grpc.health.v1`, server reflection and gRPC-web.
//! Requests are tokenised and dynamically batched per model version; API keys, per-key rate
//! limits, admission control, size limits and deadlines guard the door; Monte-Carlo attention
//! falls back to exact attention (with a circuit breaker) when it fails; versions can be split
//! A/B and rolled back, by hand or automatically. Prometheus metrics and structured logs
//! (see docs/serve.md and docs/metrics.md).
//!
//! ```no_run
//! # async fn run() -> Result<(), qattn_serve::Error> {
//! use qattn_serve::{ModelConfig, ServeConfig};
//! let mut cfg = ServeConfig::default();
//! cfg.listen.host = "127.0.0.1".into();
//! cfg.listen.port = 0; // any free port
//! cfg.models.push(ModelConfig::from_arg("sentence-transformers/all-MiniLM-L6-v2")?);
//! let server = qattn_serve::start(cfg, std::future::pending()).await?;
//! println!("listening on {}", server.addr);
//! server.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! ## Feature flags
//! - `cuda`: forwards to the CUDA support of the crates below.

pub mod admin;
pub mod config;
mod ctx;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod oip;
pub mod proto;
pub mod server;
pub mod typed;

pub use config::{FailMode, ModelConfig, ServeConfig};
pub use error::{Error, Result};
pub use server::{RunningServer, start};

// Pure logic (no tonic types): auth, rate limits, batching, version routing, circuit breaker.
pub mod auth;
pub mod batcher;
pub mod breaker;
pub mod ratelimit;
pub mod routing;
