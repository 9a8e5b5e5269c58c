//! # qattn-glue
//!
//! GLUE and SuperGLUE for qattn: readers for the official file layouts ([`tasks`]), the
//! official metrics ([`metrics`]), the fine-tune/evaluate runner ([`runner`]), submission files
//! ([`submission`]), downloading the official data ([`fetch`], checked against
//! [`fetch_checksums`]) and exports of run results ([`report`], plots drawn with qattn-plot).

pub mod error;
pub mod fetch;
pub mod fetch_checksums;
pub mod metrics;
pub mod recipe;
pub mod report;
pub mod runner;
pub mod submission;
pub mod tasks;

pub use error::{Error, Result};
