//! moa-local: Mixture-of-Agents run fully offline on local quantized GGUF models.
//!
//! Layers (dependencies point one way):
//! `cli → moa → runtime (scheduler, devices, workers) → model (gguf, tokenizer, template,
//! transformer) → engine (kv cache, sampler, decode loop) → candle`.

pub mod bench;
pub mod engine;
pub mod eval;
pub mod error;
pub mod kernels;
pub mod model;
pub mod moa;
pub mod runtime;
pub mod server;

pub use error::{Error, Result};
