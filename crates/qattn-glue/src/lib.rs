//! # qattn-glue
//!
//! GLUE and SuperGLUE for qattn: readers for the official file layouts, the official metrics,
//! and (later) the fine-tune/evaluate runner, submission files and exports.

pub mod error;
pub mod metrics;
pub mod runner;
pub mod submission;
pub mod tasks;

pub use error::{Error, Result};
