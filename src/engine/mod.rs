//! Engine: per-sequence KV cache, sampler and the decode loop. It knows tensors and token ids,
//! nothing about files, tokenizers or async runtimes (no tokio here).

pub mod attention;
pub mod batch;
#[cfg(target_arch = "x86_64")]
mod attention_avx2;
pub mod decode;
pub mod draft;
pub mod kv_cache;
pub mod logprobs;
pub mod sampler;

pub use decode::{decode_loop, Control, DecodeStats, Forward};
pub use kv_cache::KvCache;
pub use sampler::{Sampler, SamplingParams};
