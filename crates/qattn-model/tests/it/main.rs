//! Integration tests of qattn-model: parity with PyTorch transformers fixtures, Monte-Carlo
//! convergence, save/load round trips and offline loading errors.

mod common;
mod convergence;
mod heads;
mod loading;
mod parity;
mod precision;
