//! Architecture hyper-parameters read from GGUF metadata, dispatched on `general.architecture`.
//! One `Config` describes every supported family; the differences (bias, QK-norm, sandwich
//! norms, RoPE style and scaling, sliding windows, soft-capping, activation, fused projections, a
//! mixture-of-experts feed-forward) are flags the forward pass reads.

use crate::error::{Error, Result};
use crate::model::gguf::GgufFile;

/// Largest vocabulary accepted (the largest real ones are about 262k).
pub const MAX_VOCAB: usize = 1 << 22;
/// Longest context accepted from a file's metadata.
pub const MAX_CONTEXT: u32 = 1 << 24;

pub const SUPPORTED_ARCHS: &[&str] = &[
    "llama (Llama, Mistral, SmolLM2, Mixtral)",
    "qwen2",
    "qwen2moe",
    "qwen3",
    "qwen3moe",
    "gemma2",
    "gemma3",
    "phi3",
    "phi2 and glm4 (through candle-transformers, slower)",
];
/// Most experts per layer accepted (real models have up to 256 or 384).
pub const MAX_EXPERTS: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen2Moe,
    Qwen3,
    Qwen3Moe,
    Gemma2,
    Gemma3,
    Phi3,
    /// Run by candle-transformers' implementation, not the native transformer.
    Phi2,
    Glm4,
}

impl Arch {
    /// Whether the project's own transformer implements this architecture (the others run
    /// through candle-transformers, see `model::network`).
    pub fn is_native(self) -> bool {
        !matches!(self, Arch::Phi2 | Arch::Glm4)
    }
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

/// A mixture-of-experts feed-forward (every layer of the file): a router picks `n_used` of
/// `n_expert` gated MLPs per token (softmax over all experts, then the top `n_used`), and their
/// outputs are summed with the picked probabilities as weights — renormalized to sum to 1 where
/// the architecture does (Mixtral, Qwen3-MoE; not Qwen2-MoE), then times `weights_scale`.
/// Qwen2-MoE adds a shared expert of `n_ff_shared`, gated per token by a sigmoid.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MoeConfig {
    pub n_expert: usize,
    pub n_used: usize,
    pub n_ff_exp: usize,
    pub n_ff_shared: Option<usize>,
    pub norm_weights: bool,
    pub weights_scale: f32,
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
    pub moe: Option<MoeConfig>,
    /// Gemma 2: attention scores become `cap · tanh(score / cap)`, and so do the final logits.
    pub attn_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
    /// Linear RoPE scaling: positions are multiplied by this (`1 / rope.scaling.factor`).
    pub rope_freq_scale: f32,
    /// cos/sin are multiplied by this (`rope.scaling.attn_factor`; Phi-3's LongRoPE sets it).
    pub rope_attn_factor: f32,
    /// The context the RoPE frequencies were trained at (`rope.scaling.original_context_length`):
    /// a sequence with a longer cache uses Phi-3's long-context factors.
    pub rope_orig_context: usize,
    /// Phi-3: `ffn_up` holds the gate's rows and then the up projection's.
    pub fused_gate_up: bool,
}

impl Config {
    /// Weight bytes one decoded token reads from `g`: all its tensors, less the share of the
    /// expert tensors the router leaves unpicked (`1 - n_used / n_expert`) and, unless the output
    /// is tied to it, the token embedding (read one row per token).
    pub fn active_weight_bytes(&self, g: &GgufFile) -> u64 {
        let bytes = |i: &candle_core::quantized::gguf_file::TensorInfo| crate::model::gguf::tensor_bytes(i.ggml_dtype, i.shape.elem_count());
        let infos = &g.content.tensor_infos;
        let idle: u64 = match &self.moe {
            None => 0,
            Some(m) => infos
                .iter()
                .filter(|(name, _)| name.ends_with("_exps.weight"))
                .map(|(_, i)| bytes(i) / m.n_expert as u64 * (m.n_expert - m.n_used) as u64)
                .sum(),
        };
        let tied = !g.has_tensor("output.weight");
        let embed = if tied { 0 } else { infos.get("token_embd.weight").map_or(0, bytes) };
        g.tensor_data_bytes().saturating_sub(idle).saturating_sub(embed)
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch_name = g.architecture()?;
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen2moe" => Arch::Qwen2Moe,
            "qwen3" => Arch::Qwen3,
            "qwen3moe" => Arch::Qwen3Moe,
            "gemma2" => Arch::Gemma2,
            "gemma3" => Arch::Gemma3,
            "phi3" => Arch::Phi3,
            "phi2" => Arch::Phi2,
            "glm4" => Arch::Glm4,
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
        if g.has(&k("rope.dimension_count")) {
            let rope_dim = g.u32(&k("rope.dimension_count"))? as usize;
            if arch.is_native() && rope_dim != head_dim {
                return Err(g.field_err(&k("rope.dimension_count"), &format!("differs from the head size {head_dim} (partial rotary embeddings are not supported)")));
            }
            // candle-transformers' Phi-2 and GLM-4 rotate part of each head, as those models do,
            // with tables of rope_dim / 2 columns.
            if rope_dim == 0 || rope_dim > head_dim || !rope_dim.is_multiple_of(2) {
                return Err(g.field_err(&k("rope.dimension_count"), &format!("is {rope_dim}: must be even and within 2..={head_dim} (the head size)")));
            }
        }
        let rope_base = positive("rope.freq_base", 10_000.0)?;
        let rope_freq_scale = Self::rope_scaling(g, &k)?;
        let gemma = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
        // llama.cpp's defaults: Gemma 3 a window of 512 with every 6th layer global, Gemma 2 4096
        // and every other layer.
        let sliding_window = match arch {
            Arch::Gemma3 => Some((dim("attention.sliding_window", Some(512), 1 << 24)?, dim("attention.sliding_window_pattern", Some(6), 1 << 10)?)),
            Arch::Gemma2 => Some((dim("attention.sliding_window", Some(4096), 1 << 24)?, dim("attention.sliding_window_pattern", Some(2), 1 << 10)?)),
            _ => None,
        };
        let n_layer = dim("block_count", None, 1 << 10)?;
        let attn_scale = match arch {
            Arch::Gemma3 => positive("attention.scale", 1.0 / (head_dim as f32).sqrt())?,
            // Gemma 2 27B (46 layers) scales by the embedding per head, as llama.cpp and gemma_pytorch.
            Arch::Gemma2 if n_layer == 46 => 1.0 / ((n_embd / n_head) as f32).sqrt(),
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        let (attn_softcap, final_softcap) = if arch == Arch::Gemma2 {
            (Some(positive("attn_logit_softcapping", 50.0)?), Some(positive("final_logit_softcapping", 30.0)?))
        } else {
            (None, None)
        };
        let rms_eps = positive(if arch == Arch::Phi2 { "attention.layer_norm_epsilon" } else { "attention.layer_norm_rms_epsilon" }, 1e-5)?;
        let n_ff = dim("feed_forward_length", None, 1 << 20)?;
        let moe = Self::moe_from_gguf(g, arch, n_ff)?;
        let mut context_length = dim("context_length", Some(4096), MAX_CONTEXT)?;
        if arch == Arch::Phi2 {
            // candle-transformers' Phi-2 holds RoPE tables for 4096 positions.
            context_length = context_length.min(crate::model::candle_tx::FIXED_TABLES);
        } else if !arch.is_native() {
            // Its other models size their tables by the context, which it is given capped.
            context_length = context_length.min(crate::model::candle_tx::MAX_TABLE_POSITIONS);
        }
        Ok(Self {
            arch,
            n_layer,
            n_embd,
            n_head,
            n_kv_head,
            head_dim,
            n_ff,
            rms_eps: rms_eps as f64,
            rope_base,
            // llama.cpp's key; 10k when absent, as there.
            rope_base_local: match arch {
                Arch::Gemma3 => positive("rope.freq_base_swa", 10_000.0)?,
                Arch::Gemma2 => positive("rope.freq_base_swa", rope_base)?,
                _ => rope_base,
            },
            rope_style: if arch == Arch::Llama { RopeStyle::Interleaved } else { RopeStyle::Neox },
            context_length,
            vocab_size,
            sliding_window,
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3),
            sandwich_norm: gemma,
            embed_scale: gemma.then(|| (n_embd as f32).sqrt()),
            attn_scale,
            activation: if gemma || arch == Arch::Phi2 { Activation::GeluTanh } else { Activation::Silu },
            moe,
            attn_softcap,
            final_softcap,
            rope_freq_scale,
            rope_attn_factor: positive("rope.scaling.attn_factor", 1.0)?,
            rope_orig_context: dim("rope.scaling.original_context_length", Some(context_length as u32), MAX_CONTEXT)?,
            fused_gate_up: matches!(arch, Arch::Phi3 | Arch::Glm4),
        })
    }

    /// The position scale of `rope.scaling.type`: `none`, or `linear` by `rope.scaling.factor`
    /// (llama.cpp's default type is linear, and a factor of 0 or 1 means none). Other types
    /// (YaRN, LongRoPE's in-metadata form) change the frequencies in ways not implemented here:
    /// refused rather than run with the wrong positions. Llama 3's and Phi-3's frequency factors
    /// are tensors (`rope_freqs`, `rope_factors_*`), read by the transformer.
    fn rope_scaling(g: &GgufFile, k: &dyn Fn(&str) -> String) -> Result<f32> {
        let kind = if g.has(&k("rope.scaling.type")) { g.str(&k("rope.scaling.type"))?.to_string() } else { "linear".to_string() };
        let factor = if g.has(&k("rope.scaling.factor")) {
            g.f32_or(&k("rope.scaling.factor"), 0.0)?
        } else {
            g.f32_or(&k("rope.scale_linear"), 0.0)?
        };
        if !(factor.is_finite() && factor >= 0.0) {
            return Err(g.field_err(&k("rope.scaling.factor"), &format!("is {factor}, not a finite number ≥ 0")));
        }
        match kind.as_str() {
            "none" => Ok(1.0),
            "linear" => Ok(if factor == 0.0 || factor == 1.0 { 1.0 } else { 1.0 / factor }),
            _ if factor == 0.0 || factor == 1.0 => Ok(1.0),
            other => Err(g.field_err(&k("rope.scaling.type"), &format!("is `{other}` (factor {factor}): only linear RoPE scaling is supported"))),
        }
    }

    /// The experts of `arch`, as llama.cpp reads them: `expert_count` experts (required by the
    /// `*moe` architectures, optional for `llama`, where it makes Mixtral), `expert_used_count` per
    /// token, each of `expert_feed_forward_length` (Mixtral: `feed_forward_length`; the Qwen MoEs
    /// without the key: `feed_forward_length / expert_used_count`).
    fn moe_from_gguf(g: &GgufFile, arch: Arch, n_ff: usize) -> Result<Option<MoeConfig>> {
        let arch_name = g.architecture()?;
        let k = |s: &str| format!("{arch_name}.{s}");
        let moe_arch = matches!(arch, Arch::Qwen2Moe | Arch::Qwen3Moe);
        let n_expert = g.u32_or(&k("expert_count"), 0)?;
        if n_expert == 0 {
            if moe_arch {
                return Err(g.field_err(&k("expert_count"), &format!("is missing or 0: {arch_name} needs experts")));
            }
            return Ok(None);
        }
        if !matches!(arch, Arch::Llama) && !moe_arch {
            return Err(g.field_err(&k("expert_count"), &format!("is {n_expert}: experts are not supported for {arch_name}")));
        }
        if n_expert > MAX_EXPERTS {
            return Err(g.field_err(&k("expert_count"), &format!("is {n_expert}, above the limit of {MAX_EXPERTS}")));
        }
        let n_used = g.u32_or(&k("expert_used_count"), 0)?;
        if n_used == 0 || n_used > n_expert {
            return Err(g.field_err(&k("expert_used_count"), &format!("is {n_used}, outside 1..={n_expert} (expert_count)")));
        }
        let (n_expert, n_used) = (n_expert as usize, n_used as usize);
        let ff = |key: &str, default: usize| -> Result<usize> {
            let v = g.u32_or(&k(key), default as u32)? as usize;
            if v == 0 || v > 1 << 20 {
                return Err(g.field_err(&k(key), &format!("is {v}, outside 1..={}", 1 << 20)));
            }
            Ok(v)
        };
        let n_ff_exp = if arch == Arch::Llama { n_ff } else { ff("expert_feed_forward_length", (n_ff / n_used).max(1))? };
        let n_ff_shared = (arch == Arch::Qwen2Moe).then(|| ff("expert_shared_feed_forward_length", n_ff)).transpose()?;
        let scale = g.f32_or(&k("expert_weights_scale"), 0.0)?;
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(g.field_err(&k("expert_weights_scale"), &format!("is {scale}, not a finite number ≥ 0")));
        }
        Ok(Some(MoeConfig {
            n_expert,
            n_used,
            n_ff_exp,
            n_ff_shared,
            norm_weights: arch != Arch::Qwen2Moe,
            // llama.cpp scales only by a value other than 0 and 1.
            weights_scale: if scale == 0.0 { 1.0 } else { scale },
        }))
    }

    /// Whether layer `i` attends through a sliding window, and its size.
    pub fn window_of(&self, layer: usize) -> Option<usize> {
        self.sliding_window.and_then(|(w, period)| (!(layer + 1).is_multiple_of(period)).then_some(w))
    }

    pub fn kv_bytes_per_token(&self, dtype_bytes: usize) -> u64 {
        (2 * self.n_layer * self.n_kv_head * self.head_dim * dtype_bytes) as u64
    }
}
