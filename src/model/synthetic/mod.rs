//! Synthetic GGUF files: real architectures and shapes (Qwen2, Llama/Mistral/SmolLM2, Gemma 2 and
//! 3, Phi-3, and the mixtures of experts Mixtral, Qwen2-MoE, Qwen3-MoE) with random weights, so speed,
//! memory and the whole load → generate path can be exercised at full size without downloading
//! a model. The `tiny` shapes are small files for tests, with larger weights ([`Shape::peaked`])
//! so that their logits and their experts' routing are decided by clear margins: on N(0, 0.02²)
//! weights every distribution is near-uniform and any two implementations agree on it.
//!
//! A spec is `arch:size:quant`, e.g. `qwen2:7b:q4_k_m` or `llama:135m:q8_0` (see [`KNOWN`] and
//! [`SyntheticQuant`]). Weights are N(0, 0.02²) (norms 1.0) so activations stay finite (large
//! matrices draw their blocks from a pool of such blocks, see [`weights`]); the
//! output is gibberish. Quantization follows llama.cpp's type choice: `q4_k_m` is Q4_K with Q6_K
//! for `output` and for `attn_v`/`ffn_down` on llama.cpp's "more bits" layers; rows whose length is
//! not a multiple of 256 fall back to Q5_0 (for Q4_K) / Q8_0 (for Q6_K); `output` (or the tied
//! embedding) is Q6_K in `q4_0` files too. The tokenizer is a byte-level `gpt2` vocabulary: the
//! 256 GPT-2 byte tokens, filler tokens `tok<id>`, and the control tokens `<|endoftext|>`,
//! `<|im_start|>`, `<|im_end|>` (end of generation) last, one merge (two spaces, token 256; llama.cpp
//! needs a string array there), and a ChatML template: files llama.cpp loads too.

use std::io::BufWriter;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use crate::error::{Error, Result};

mod weights;
use weights::{random_matrix, vector, BlockPools};

/// Quantization scheme of a synthetic file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticQuant {
    Q4KM,
    Q4_0,
    Q8_0,
}

/// Name, scheme and llama.cpp's `general.file_type` (`LLAMA_FTYPE_MOSTLY_*`).
const QUANTS: &[(&str, SyntheticQuant, u32)] =
    &[("q4_k_m", SyntheticQuant::Q4KM, 15), ("q4_0", SyntheticQuant::Q4_0, 2), ("q8_0", SyntheticQuant::Q8_0, 7)];

/// Hyper-parameters of one known model shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub arch: &'static str,
    pub size: &'static str,
    pub like: &'static str, // the real model these shapes are taken from
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub qkv_bias: bool,
    pub tied_output: bool,
    /// Experts per layer, used per token, their feed-forward length, and a shared expert's
    /// (0: none); all 0 for a dense model.
    pub experts: [usize; 4],
    /// Weights of std 0.06 (router 0.15, output 0.25) instead of 0.02: peaked distributions.
    pub peaked: bool,
    /// RoPE frequency factors: Llama 3's `rope_freqs` (llama), LongRoPE's short and long
    /// factors with their attention factor and a trained context of 4096 (phi3).
    pub rope_factors: bool,
    /// Dimensions of each head that RoPE rotates (Phi-2, GLM-4 rotate part of it; 0: all).
    pub rope_dim: usize,
}

impl Shape {
    /// The same shape with experts (`n_expert`, `n_used`, `n_ff_exp`, shared `n_ff`, 0 for none).
    const fn moe(self, experts: [usize; 4]) -> Self {
        Shape { experts, ..self }
    }

    const fn peaked(self) -> Self {
        Shape { peaked: true, ..self }
    }

    const fn rope_factors(self) -> Self {
        Shape { rope_factors: true, ..self }
    }
    const fn partial_rope(self, rope_dim: usize) -> Self {
        Shape { rope_dim, ..self }
    }
    fn rotated_dims(&self) -> usize {
        if self.rope_dim == 0 { self.head_dim } else { self.rope_dim }
    }
    /// Phi-2: LayerNorm with biases, fused QKV, one MLP of up and down, each projection biased.
    fn is_phi2(&self) -> bool {
        self.arch == "phi2"
    }

    fn is_tiny(&self) -> bool {
        self.size == "tiny"
    }

    /// Sliding window of the Gemmas: the real models' (4096, 512), 16 in test files so that
    /// it bites within a short prompt.
    fn sliding_window(&self) -> Option<u32> {
        match self.arch {
            _ if self.is_tiny() && self.arch.starts_with("gemma") => Some(16),
            "gemma2" => Some(4096),
            "gemma3" => Some(512),
            _ => None,
        }
    }

    /// Gemma 2's attention and final soft-caps: the real ones (50, 30), tighter in test files
    /// (whose scores would rarely reach the real ones).
    fn softcaps(&self) -> Option<(f32, f32)> {
        match (self.arch, self.is_tiny()) {
            ("gemma2", false) => Some((50.0, 30.0)),
            ("gemma2", true) => Some((3.0, 8.0)),
            _ => None,
        }
    }

    /// `head_dim / 2` RoPE factors rising from 1 (high frequencies) to `top` (low ones), as
    /// Llama 3's and LongRoPE's do.
    fn factors(&self, top: f32) -> Vec<f32> {
        let half = self.head_dim / 2;
        (0..half).map(|i| 1.0 + (top - 1.0) * (i as f32 / (half - 1).max(1) as f32).powi(2)).collect()
    }

    /// `general.architecture` of the file (Mixtral is `llama` with experts).
    pub fn gguf_arch(&self) -> &'static str {
        if self.arch == "mixtral" { "llama" } else { self.arch }
    }

    fn is_moe(&self) -> bool {
        self.experts[0] > 0
    }

    /// Standard deviation of the random weights of a matrix `kind`.
    fn std_of(&self, kind: &str) -> f32 {
        match (self.peaked, kind) {
            (false, _) => 0.02,
            (true, "ffn_gate_inp") => 0.15,
            (true, "output") => 0.25,
            (true, "token_embd") if self.tied_output => 0.25,
            (true, _) => 0.06,
        }
    }
}

#[allow(clippy::too_many_arguments)]
const fn shape(arch: &'static str, size: &'static str, like: &'static str, dims: [usize; 8], rope_base: f32, rms_eps: f32, qkv_bias: bool, tied_output: bool) -> Shape {
    let [n_layer, n_embd, n_head, n_kv_head, head_dim, n_ff, vocab, context] = dims;
    Shape {
        arch,
        size,
        like,
        n_layer,
        n_embd,
        n_head,
        n_kv_head,
        head_dim,
        n_ff,
        vocab,
        context,
        rope_base,
        rms_eps,
        qkv_bias,
        tied_output,
        experts: [0; 4],
        peaked: false,
        rope_factors: false,
        rope_dim: 0,
    }
}

/// The known `arch:size` combinations. dims: layers, embd, heads, kv heads, head dim, ff, vocab, ctx.
pub const KNOWN: &[Shape] = &[
    shape("qwen2", "7b", "Qwen2.5-7B", [28, 3584, 28, 4, 128, 18944, 152064, 32768], 1e6, 1e-6, true, false),
    shape("qwen2", "0.5b", "Qwen2.5-0.5B", [24, 896, 14, 2, 64, 4864, 151936, 32768], 1e6, 1e-6, true, true),
    shape("llama", "7b", "Mistral-7B-v0.3", [32, 4096, 32, 8, 128, 14336, 32768, 32768], 1e6, 1e-5, false, false),
    shape("llama", "8b", "Llama-3.1-8B", [32, 4096, 32, 8, 128, 14336, 128256, 131072], 5e5, 1e-5, false, false),
    shape("llama", "135m", "SmolLM2-135M", [30, 576, 9, 3, 64, 1536, 49152, 8192], 1e5, 1e-5, false, true),
    shape("gemma3", "270m", "gemma-3-270m", [18, 640, 4, 1, 256, 2048, 262144, 32768], 1e6, 1e-6, false, true),
    shape("mixtral", "8x7b", "Mixtral-8x7B-v0.1", [32, 4096, 32, 8, 128, 14336, 32000, 32768], 1e6, 1e-5, false, false)
        .moe([8, 2, 14336, 0]),
    shape("qwen3moe", "30b-a3b", "Qwen3-30B-A3B", [48, 2048, 32, 4, 128, 6144, 151936, 40960], 1e6, 1e-6, false, false)
        .moe([128, 8, 768, 0]),
    shape("qwen2moe", "a2.7b", "Qwen1.5-MoE-A2.7B", [24, 2048, 16, 16, 128, 5632, 151936, 8192], 1e6, 1e-6, true, false)
        .moe([60, 4, 1408, 5632]),
    shape("gemma2", "2b", "gemma-2-2b", [26, 2304, 8, 4, 256, 9216, 256000, 8192], 1e4, 1e-6, false, true),
    shape("phi3", "mini", "Phi-3.5-mini-instruct", [32, 3072, 32, 32, 96, 8192, 32064, 131072], 1e4, 1e-5, false, false).rope_factors(),
    // Run through candle-transformers (no native implementation).
    shape("phi2", "2.7b", "phi-2", [32, 2560, 32, 32, 80, 10240, 51200, 2048], 1e4, 1e-5, false, false).partial_rope(32),
    shape("glm4", "9b", "GLM-4-9B-0414", [40, 4096, 32, 2, 128, 13696, 151552, 32768], 1e4, 1e-5, true, false).partial_rope(64),
    // Test files: two layers, peaked weights; the MoEs 8 experts of which 2 per token.
    shape("llama", "tiny", "Llama 3 (tiny)", [2, 256, 4, 2, 64, 512, 512, 4096], 5e5, 1e-5, false, false).rope_factors().peaked(),
    shape("gemma2", "tiny", "Gemma 2 (tiny)", [3, 256, 4, 2, 64, 512, 512, 4096], 1e4, 1e-6, false, true).peaked(),
    shape("phi3", "tiny", "Phi-3 (tiny)", [2, 256, 4, 2, 64, 512, 512, 131072], 1e4, 1e-5, false, false).rope_factors().peaked(),
    // Phi-3-mini-4k's layout: no LongRoPE factors (candle-transformers applies none).
    shape("phi3", "tiny-4k", "Phi-3-mini-4k (tiny)", [2, 256, 4, 2, 64, 512, 512, 4096], 1e4, 1e-5, false, false).peaked(),
    shape("qwen3", "tiny", "Qwen3 (tiny)", [2, 256, 4, 2, 64, 512, 512, 4096], 1e6, 1e-6, false, true).peaked(),
    shape("phi2", "tiny", "phi-2 (tiny)", [2, 256, 4, 4, 64, 512, 512, 2048], 1e4, 1e-5, false, false).partial_rope(32).peaked(),
    shape("glm4", "tiny", "GLM-4 (tiny)", [2, 256, 4, 2, 64, 512, 512, 4096], 1e4, 1e-5, true, false).partial_rope(32).peaked(),
    shape("mixtral", "tiny", "Mixtral (tiny)", [2, 256, 4, 2, 64, 512, 512, 4096], 1e6, 1e-5, false, false).moe([8, 2, 512, 0]).peaked(),
    shape("qwen3moe", "tiny", "Qwen3-MoE (tiny)", [2, 256, 4, 2, 64, 512, 512, 4096], 1e6, 1e-6, false, true).moe([8, 2, 256, 0]).peaked(),
    shape("qwen2moe", "tiny", "Qwen2-MoE (tiny)", [2, 256, 4, 2, 64, 512, 512, 4096], 1e6, 1e-6, true, false)
        .moe([8, 2, 256, 512])
        .peaked(),
];

const CONTROL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A synthetic model: architecture, size and quantization (`qwen2:7b:q4_k_m`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticSpec {
    pub arch: String,
    pub size: String,
    pub quant: SyntheticQuant,
}

impl SyntheticSpec {
    /// Parse `arch:size:quant`, e.g. `qwen2:0.5b:q4_k_m` (case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: String| {
            let combos: Vec<String> = KNOWN.iter().map(|k| format!("{}:{}", k.arch, k.size)).collect();
            let quants: Vec<&str> = QUANTS.iter().map(|q| q.0).collect();
            let (combos, quants) = (combos.join(", "), quants.join(", "));
            Error::InvalidRequest(format!(
                "synthetic model `{s}`: {why}; expected arch:size:quant with arch:size one of {combos} and quant one of {quants}"
            ))
        };
        let lower = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split(':').collect();
        let [arch, size, quant] = parts[..] else {
            return Err(bad(format!("has {} `:`-separated parts, not 3", parts.len())));
        };
        if !KNOWN.iter().any(|k| k.arch == arch && k.size == size) {
            return Err(bad(format!("unknown arch:size `{arch}:{size}`")));
        }
        let quant = QUANTS.iter().find(|q| q.0 == quant).ok_or_else(|| bad(format!("unknown quant `{quant}`")))?.1;
        Ok(Self { arch: arch.to_string(), size: size.to_string(), quant })
    }

    /// The shapes of this spec's model.
    pub fn shape(&self) -> Result<&'static Shape> {
        let found = KNOWN.iter().find(|k| k.arch == self.arch && k.size == self.size);
        found.ok_or_else(|| Error::InvalidRequest(format!("unknown synthetic model {}:{}", self.arch, self.size)))
    }

    fn quant_entry(&self) -> &'static (&'static str, SyntheticQuant, u32) {
        QUANTS.iter().find(|q| q.1 == self.quant).expect("every quant is listed")
    }

    /// llama.cpp's tensor type for a weight matrix `kind` of layer `layer` with rows of `cols`.
    fn weight_type(&self, sh: &Shape, kind: &str, layer: usize, cols: usize) -> GgmlDType {
        let is_output = kind == "output" || (kind == "token_embd" && sh.tied_output);
        let more_bits = layer < sh.n_layer / 8 || layer >= 7 * sh.n_layer / 8 || (layer - sh.n_layer / 8) % 3 == 2;
        let t = match self.quant {
            SyntheticQuant::Q8_0 => GgmlDType::Q8_0,
            _ if is_output => GgmlDType::Q6K,
            SyntheticQuant::Q4_0 => GgmlDType::Q4_0,
            SyntheticQuant::Q4KM if (kind == "attn_v" || kind.starts_with("ffn_down")) && more_bits => GgmlDType::Q6K,
            SyntheticQuant::Q4KM => GgmlDType::Q4K,
        };
        let fits = cols.is_multiple_of(256); // k-quant super-blocks of 256
        match t {
            GgmlDType::Q4K if !fits => GgmlDType::Q5_0,
            GgmlDType::Q6K if !fits => GgmlDType::Q8_0,
            t => t,
        }
    }
}

impl std::fmt::Display for SyntheticSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.arch, self.size, self.quant_entry().0)
    }
}

/// GPT-2's byte → printable character map (`bytes_to_unicode`).
fn byte_to_unicode(b: u8) -> char {
    let printable = |x: u8| (b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || x >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    char::from_u32(256 + (0..b).filter(|&x| !printable(x)).count() as u32).expect("valid code point")
}

/// Tokenizer, template and architecture metadata.
fn metadata(spec: &SyntheticSpec, sh: &Shape) -> Vec<(String, Value)> {
    let a = sh.gguf_arch();
    let u = |x: usize| Value::U32(x as u32);
    let n = sh.vocab;
    let n_normal = n - CONTROL_TOKENS.len();
    let mut tokens: Vec<Value> = (0..=255u8).map(|b| Value::String(byte_to_unicode(b).to_string())).collect();
    // One merge (two spaces) whose result is token 256: llama.cpp wants a string array of merges.
    tokens.push(Value::String("\u{120}\u{120}".into()));
    tokens.extend((257..n_normal).map(|i| Value::String(format!("tok{i}"))));
    tokens.extend(CONTROL_TOKENS.iter().map(|t| Value::String(t.to_string())));
    let mut types: Vec<Value> = (0..n).map(|i| Value::I32(if i < n_normal { 1 } else { 3 })).collect();
    if a == "phi3" {
        // llama.cpp sets Phi-3's strip attributes on these by name and needs them present.
        for (i, t) in ["<unk>", "<s>", "</s>"].into_iter().enumerate() {
            tokens[257 + i] = Value::String(t.into());
            types[257 + i] = Value::I32(3);
        }
    }
    let mut m = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.name".into(), Value::String(format!("synthetic {} ({spec})", sh.like))),
        ("general.file_type".into(), Value::U32(spec.quant_entry().2)),
        ("general.quantization_version".into(), Value::U32(2)),
        (format!("{a}.block_count"), u(sh.n_layer)),
        (format!("{a}.context_length"), u(sh.context)),
        (format!("{a}.embedding_length"), u(sh.n_embd)),
        (format!("{a}.feed_forward_length"), u(sh.n_ff)),
        (format!("{a}.attention.head_count"), u(sh.n_head)),
        (format!("{a}.attention.head_count_kv"), u(sh.n_kv_head)),
        (format!("{a}.attention.layer_norm_{}epsilon", if sh.is_phi2() { "" } else { "rms_" }), Value::F32(sh.rms_eps)),
        (format!("{a}.rope.freq_base"), Value::F32(sh.rope_base)),
        (format!("{a}.rope.dimension_count"), u(sh.rotated_dims())),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(if a.starts_with("qwen") { "qwen2" } else { "default" }.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![Value::String("\u{120} \u{120}".into())])),
        ("tokenizer.ggml.bos_token_id".into(), u(n - 3)),
        ("tokenizer.ggml.eos_token_id".into(), u(n - 1)),
        ("tokenizer.ggml.padding_token_id".into(), u(n - 3)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), Value::String(CHATML.into())),
    ];
    if sh.is_moe() {
        let [n_expert, n_used, n_ff_exp, n_ff_shared] = sh.experts;
        m.push((format!("{a}.expert_count"), u(n_expert)));
        m.push((format!("{a}.expert_used_count"), u(n_used)));
        if a != "llama" {
            m.push((format!("{a}.expert_feed_forward_length"), u(n_ff_exp)));
        }
        if n_ff_shared > 0 {
            m.push((format!("{a}.expert_shared_feed_forward_length"), u(n_ff_shared)));
        }
    }
    if a.starts_with("gemma") || a.starts_with("qwen3") || a == "glm4" {
        m.push((format!("{a}.attention.key_length"), u(sh.head_dim)));
        m.push((format!("{a}.attention.value_length"), u(sh.head_dim)));
    }
    if let Some(w) = sh.sliding_window() {
        m.push((format!("{a}.attention.sliding_window"), Value::U32(w)));
    }
    if let Some((attn, last)) = sh.softcaps() {
        m.push((format!("{a}.attn_logit_softcapping"), Value::F32(attn)));
        m.push((format!("{a}.final_logit_softcapping"), Value::F32(last)));
    }
    if a == "phi3" && sh.rope_factors {
        // LongRoPE as Phi-3.5's converter writes it: sqrt(1 + ln(ctx / 4096) / ln(4096)).
        let attn_factor = (1.0 + (sh.context as f32 / 4096.0).ln() / 4096f32.ln()).sqrt();
        m.push((format!("{a}.rope.scaling.attn_factor"), Value::F32(attn_factor)));
        m.push((format!("{a}.rope.scaling.original_context_length"), Value::U32(4096)));
    }
    m
}

/// Write a synthetic GGUF for `spec` to `path` (through `path.partial`, renamed when complete).
/// Quantized tensors are kept in memory until written (≈ the file size); f32 data only per chunk.
pub fn write_synthetic(spec: &SyntheticSpec, path: impl AsRef<Path>, seed: u64) -> Result<()> {
    let path = path.as_ref();
    let sh = spec.shape()?;
    let (e, hd) = (sh.n_embd, sh.head_dim);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut pools = BlockPools::default();
    // `experts` matrices of `rows × cols`: one 3-D tensor when `experts > 0`, a matrix when 0.
    let mut tensor = |name: String, kind: &str, layer: usize, experts: usize, rows: usize, cols: usize| -> Result<()> {
        let dtype = if kind == "ffn_gate_inp" { GgmlDType::F32 } else { spec.weight_type(sh, kind, layer, cols) };
        let t = random_matrix(&name, experts, rows, cols, dtype, sh.std_of(kind), seed, &mut pools)?;
        tensors.push((name, t));
        Ok(())
    };
    tensor("token_embd.weight".into(), "token_embd", 0, 0, sh.vocab, e)?;
    let [n_expert, _, n_ff_exp, n_ff_shared] = sh.experts;
    for i in 0..sh.n_layer {
        let p = format!("blk.{i}");
        let mut m = |kind: &str, experts: usize, rows: usize, cols: usize| tensor(format!("{p}.{kind}.weight"), kind, i, experts, rows, cols);
        if sh.arch == "phi3" || sh.is_phi2() {
            // Phi-3's fused projections: Q, K, V in one matrix; the gate's rows, then up's.
            m("attn_qkv", 0, (sh.n_head + 2 * sh.n_kv_head) * hd, e)?;
        } else {
            m("attn_q", 0, sh.n_head * hd, e)?;
            m("attn_k", 0, sh.n_kv_head * hd, e)?;
            m("attn_v", 0, sh.n_kv_head * hd, e)?;
        }
        m("attn_output", 0, e, sh.n_head * hd)?;
        if sh.arch == "phi3" || sh.arch == "glm4" {
            m("ffn_up", 0, 2 * sh.n_ff, e)?;
            m("ffn_down", 0, e, sh.n_ff)?;
            continue;
        }
        if sh.is_phi2() {
            m("ffn_up", 0, sh.n_ff, e)?;
            m("ffn_down", 0, e, sh.n_ff)?;
            continue;
        }
        if !sh.is_moe() {
            m("ffn_gate", 0, sh.n_ff, e)?;
            m("ffn_up", 0, sh.n_ff, e)?;
            m("ffn_down", 0, e, sh.n_ff)?;
            continue;
        }
        m("ffn_gate_inp", 0, n_expert, e)?;
        m("ffn_gate_exps", n_expert, n_ff_exp, e)?;
        m("ffn_up_exps", n_expert, n_ff_exp, e)?;
        m("ffn_down_exps", n_expert, e, n_ff_exp)?;
        if n_ff_shared > 0 {
            m("ffn_gate_shexp", 0, n_ff_shared, e)?;
            m("ffn_up_shexp", 0, n_ff_shared, e)?;
            m("ffn_down_shexp", 0, e, n_ff_shared)?;
        }
    }
    if !sh.tied_output {
        tensor("output.weight".into(), "output", 0, 0, sh.vocab, e)?;
    }
    // 1-D f32 tensors: norms (1.0) and biases (random).
    let mut vectors = vec![("output_norm.weight".to_string(), e, Some(1.0))];
    if sh.is_phi2() {
        vectors.push(("output_norm.bias".to_string(), e, None));
        vectors.push(("output.bias".to_string(), sh.vocab, None));
    }
    for i in 0..sh.n_layer {
        let mut add = |name: &str, len: usize, fill: Option<f32>| vectors.push((format!("blk.{i}.{name}"), len, fill));
        add("attn_norm.weight", e, Some(1.0));
        if sh.is_phi2() {
            // Phi-2's one LayerNorm feeds attention and MLP in parallel; every projection is biased.
            add("attn_norm.bias", e, None);
            add("attn_qkv.bias", (sh.n_head + 2 * sh.n_kv_head) * hd, None);
            add("attn_output.bias", e, None);
            add("ffn_up.bias", sh.n_ff, None);
            add("ffn_down.bias", e, None);
            continue;
        }
        add("ffn_norm.weight", e, Some(1.0));
        if sh.qkv_bias {
            add("attn_q.bias", sh.n_head * hd, None);
            add("attn_k.bias", sh.n_kv_head * hd, None);
            add("attn_v.bias", sh.n_kv_head * hd, None);
        }
        if sh.arch == "gemma3" || sh.arch.starts_with("qwen3") {
            add("attn_q_norm.weight", hd, Some(1.0));
            add("attn_k_norm.weight", hd, Some(1.0));
        }
        if sh.arch.starts_with("gemma") || sh.arch == "glm4" {
            add("post_attention_norm.weight", e, Some(1.0));
            add("post_ffw_norm.weight", e, Some(1.0));
        }
        if n_ff_shared > 0 {
            add("ffn_gate_inp_shexp.weight", e, None);
        }
    }
    for (name, len, fill) in vectors {
        let t = vector(&name, len, fill, seed)?;
        tensors.push((name, t));
    }
    if sh.rope_factors {
        let named: Vec<(&str, Vec<f32>)> = if sh.arch == "phi3" {
            vec![("rope_factors_short.weight", sh.factors(1.5)), ("rope_factors_long.weight", sh.factors(12.0))]
        } else {
            vec![("rope_freqs.weight", sh.factors(8.0))]
        };
        for (name, f) in named {
            let t = candle_core::Tensor::from_vec(f, hd / 2, &candle_core::Device::Cpu).and_then(|t| QTensor::quantize(&t, GgmlDType::F32));
            tensors.push((name.to_string(), t.map_err(Error::candle(format!("writing {name}")))?));
        }
    }

    let meta = metadata(spec, sh);
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let partial = path.with_extension("gguf.partial");
    let io_err = |source| Error::Io { path: partial.clone(), source };
    let file = std::fs::File::create(&partial).map_err(io_err)?;
    let mut w = BufWriter::with_capacity(1 << 22, file);
    gguf_file::write(&mut w, &meta_refs, &tensor_refs).map_err(Error::candle(format!("writing {}", partial.display())))?;
    w.into_inner().map_err(|e| io_err(e.into_error()))?; // flush and close before the rename
    std::fs::rename(&partial, path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests;
