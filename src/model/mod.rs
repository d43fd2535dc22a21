//! Everything that turns a GGUF file into a usable model: header parsing, tokenizer and chat
//! template from the metadata, architecture config, weights and forward pass, and the catalog of
//! model aliases.

pub mod gguf;
mod cpu_tensor;
pub mod template;
pub mod tokenizer;
pub mod arch;
pub mod transformer;
pub mod ubatch;
pub mod activation;
mod row_ops;
pub mod generate;
pub mod batched;
pub mod prefix;
pub mod loaded;
pub mod candle_tx;
pub mod network;
pub mod chat_tokens;

pub use generate::{GenerateRequest, Generation, Prompt, StopReason};
pub use loaded::Model;
pub use prefix::PromptCache;
pub use template::Message;
pub mod catalog;
pub mod synthetic;
