//! Architecture hyper-parameters read from GGUF metadata, dispatched on `general.architecture`.
//! One `Config` describes every supported family; the differences (bias, QK-norm, sandwich
//! norms, RoPE style, sliding windows, activation) are flags the forward pass reads.

use crate::error::{Error, Result};
use crate::model::gguf::GgufFile;

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
        let n_embd = g.u32(&k("embedding_length"))? as usize;
        let n_head = g.u32(&k("attention.head_count"))? as usize;
        let n_kv_head = g.u32_or(&k("attention.head_count_kv"), n_head as u32)? as usize;
        if n_head == 0 || n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
            return Err(g.field_err(
                &k("attention.head_count_kv"),
                &format!("{n_kv_head} must be > 0 and divide head_count {n_head}"),
            ));
        }
        let head_dim = if g.has(&k("attention.key_length")) {
            g.u32(&k("attention.key_length"))? as usize
        } else {
            n_embd / n_head
        };
        let rope_base = g.f32_or(&k("rope.freq_base"), 10_000.0)?;
        let vocab_size = match g.u32(&k("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => g.str_array("tokenizer.ggml.tokens")?.len(),
        };
        let gemma = arch == Arch::Gemma3;
        let sliding_window = if gemma {
            let w = g.u32_or(&k("attention.sliding_window"), 512)? as usize;
            let period = g.u32_or(&k("attention.sliding_window_pattern"), 6)? as usize;
            Some((w, period.max(1)))
        } else {
            None
        };
        let attn_scale = if gemma && g.has(&k("attention.scale")) {
            g.f32(&k("attention.scale"))?
        } else {
            1.0 / (head_dim as f32).sqrt()
        };
        Ok(Self {
            arch,
            n_layer: g.u32(&k("block_count"))? as usize,
            n_embd,
            n_head,
            n_kv_head,
            head_dim,
            n_ff: g.u32(&k("feed_forward_length"))? as usize,
            rms_eps: g.f32_or(&k("attention.layer_norm_rms_epsilon"), 1e-5)? as f64,
            rope_base,
            rope_base_local: if gemma { g.f32_or(&k("rope.local_freq_base"), 10_000.0)? } else { rope_base },
            rope_style: if arch == Arch::Llama { RopeStyle::Interleaved } else { RopeStyle::Neox },
            context_length: g.u32_or(&k("context_length"), 4096)? as usize,
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
