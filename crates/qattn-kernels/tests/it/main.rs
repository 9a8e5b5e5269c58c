#![allow(unreachable_pub, missing_docs, clippy::needless_range_loop)]
//! Integration tests of qattn-kernels through its public API, each against a reference with a
//! stated tolerance.

mod common;
mod estimators;
mod exact;
mod fused;
mod grads;
mod isa;
mod matmul;
mod noise;
mod props;
