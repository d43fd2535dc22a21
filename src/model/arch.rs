//! Architecture hyper-parameters read from GGUF metadata, dispatched on `general.architecture`.
//! One `Config` describes every supported family; the differences (bias, QK-norm, sandwich
//! norms, RoPE style, sliding windows, activation) are flags the forward pass reads.

use crate::error::{Error, Result};
use crate::model::gguf::GgufFile;

/// Largest vocabulary accepted (the largest real ones are about 262k).
pub const MAX_VOCAB: usize = 1 << 22;
/// Longest context accepted from a file's metadata.
pub const MAX_CONTEXT: u32 = 1 << 24;

pub const SUPPORTED_ARCHS: &[&str] = &["llama (Llama, Mistral, SmolLM2)", "qwen2", "qwen3", "gemma3"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RopeStyle {
    /// Adjacent pairs rotate together (GGUF llama: Q/K rows are permuted at conversion).
    Interleaved,
    /// First half rotates with second half (GPT-NeoX; Qwen, Gemma).
    Neox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Activation {
    Silu,
    GeluTanh,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub rms_eps: f64,
    pub rope_base: f32,
    /// RoPE base of the sliding-window layers (Gemma 3 uses 10k there, 1M on global layers).
    pub rope_base_local: f32,
    pub rope_style: RopeStyle,
    pub context_length: usize,
    pub vocab_size: usize,
    /// Sliding window size and the period of global layers: layer `i` is global when
    /// `(i + 1) % period == 0`.
    pub sliding_window: Option<(usize, usize)>,
    pub qk_norm: bool,
    pub sandwich_norm: bool,
    pub embed_scale: Option<f32>,
    pub attn_scale: f32,
    pub activation: Activation,
}

impl Config {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch_name = g.architecture()?;
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            other => {
                return Err(Error::UnsupportedArch {
                    path: g.path.clone(),
                    arch: other.to_string(),
                    supported: SUPPORTED_ARCHS.join(", "),
                })
            }
        };
        let k = |s: &str| format!("{arch_name}.{s}");
        // Every size is bounded before anything is computed from it (the products below, the
        // tensor shapes the loader expects, the KV cache); the limits are far above any real
        // model's and far below what could overflow.
        let dim = |key: &str, default: Option<u32>, max: u32| -> Result<usize> {
            let key = k(key);
            let v = match default {
                Some(d) => g.u32_or(&key, d)?,
                None => g.u32(&key)?,
            };
            if v == 0 || v > max {
                return Err(g.field_err(&key, &format!("is {v}, outside 1..={max}")));
            }
            Ok(v as usize)
        };
        let n_embd = dim("embedding_length", None, 1 << 16)?;
        let n_head = dim("attention.head_count", None, 1 << 10)?;
        let n_kv_head = dim("attention.head_count_kv", Some(n_head as u32), 1 << 10)?;
        if !n_head.is_multiple_of(n_kv_head) {
            return Err(g.field_err(&k("attention.head_count_kv"), &format!("{n_kv_head} must divide head_count {n_head}")));
        }
        let head_dim = dim("attention.key_length", Some((n_embd / n_head).max(1) as u32), 1 << 10)?;
        if !head_dim.is_multiple_of(2) {
            return Err(g.field_err(&k("attention.key_length"), &format!("is {head_dim}: RoPE needs an even head size")));
        }
        if g.has(&k("attention.value_length")) && g.u32(&k("attention.value_length"))? as usize != head_dim {
            return Err(g.field_err(&k("attention.value_length"), "differs from attention.key_length (not supported)"));
        }
        let vocab_size = match g.u32(&k("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => g.str_array("tokenizer.ggml.tokens")?.len(),
        };
        if vocab_size == 0 || vocab_size > MAX_VOCAB {
            return Err(g.field_err(&k("vocab_size"), &format!("is {vocab_size}, outside 1..={MAX_VOCAB}")));
        }
        let positive = |key: &str, default: f32| -> Result<f32> {
            let key = k(key);
            let v = g.f32_or(&key, default)?;
            if !(v.is_finite() && v > 0.0) {
                return Err(g.field_err(&key, &format!("is {v}, not a positive finite number")));
            }
            Ok(v)
        };
        let rope_base = positive("rope.freq_base", 10_000.0)?;
        let gemma = arch == Arch::Gemma3;
        let sliding_window = if gemma {
            let w = dim("attention.sliding_window", Some(512), 1 << 24)?;
            let period = dim("attention.sliding_window_pattern", Some(6), 1 << 10)?;
            Some((w, period))
        } else {
            None
        };
        let attn_scale = if gemma { positive("attention.scale", 1.0 / (head_dim as f32).sqrt())? } else { 1.0 / (head_dim as f32).sqrt() };
        let rms_eps = positive("attention.layer_norm_rms_epsilon", 1e-5)?;
        Ok(Self {
            arch,
            n_layer: dim("block_count", None, 1 << 10)?,
            n_embd,
            n_head,
            n_kv_head,
            head_dim,
            n_ff: dim("feed_forward_length", None, 1 << 20)?,
            rms_eps: rms_eps as f64,
            rope_base,
            // llama.cpp's key; 10k when absent, as there.
            rope_base_local: if gemma { positive("rope.freq_base_swa", 10_000.0)? } else { rope_base },
            rope_style: if arch == Arch::Llama { RopeStyle::Interleaved } else { RopeStyle::Neox },
            context_length: dim("context_length", Some(4096), MAX_CONTEXT)?,
            vocab_size,
            sliding_window,
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            sandwich_norm: gemma,
            embed_scale: gemma.then(|| (n_embd as f32).sqrt()),
            attn_scale,
            activation: if gemma { Activation::GeluTanh } else { Activation::Silu },
        })
    }

    /// Whether layer `i` attends through a sliding window, and its size.
    pub fn window_of(&self, layer: usize) -> Option<usize> {
        self.sliding_window.and_then(|(w, period)| (!(layer + 1).is_multiple_of(period)).then_some(w))
    }

    pub fn kv_bytes_per_token(&self, dtype_bytes: usize) -> u64 {
        (2 * self.n_layer * self.n_kv_head * self.head_dim * dtype_bytes) as u64
    }
}
