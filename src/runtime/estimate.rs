//! Memory a model will need, estimated from the GGUF header alone (nothing is loaded): weights
//! as stored (everything stays quantized, the embedding table too), the copy made while the
//! largest tensor is read, the tokenizer's tables, the f16 KV cache of every sequence, and the
//! working buffers of prefill and decode.

use std::path::Path;

use crate::engine::KvCache;
use crate::error::Result;
use crate::model::arch::Config;
use crate::model::gguf::{tensor_bytes, GgufFile};

/// Prompt tokens per prefill step (the decode loop's chunk).
pub const PREFILL_CHUNK: usize = 512;

/// Bytes per tokenizer entry (vocabulary token or merge) — strings, maps, caches, and the
/// header's copy of the vocabulary alive while loading — calibrated on the three test models.
const TOKENIZER_BYTES_PER_ENTRY: u64 = 300;

/// Fixed process overhead (runtime, allocator arenas, code).
const BASE_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MemoryEstimate {
    pub weights: u64,
    /// Transient while loading: the raw copy of the tensor being read. At the measured peak
    /// about half of the largest tensor's size is resident on top of the weights (calibrated on
    /// the three test models with `tests/memory.rs`).
    pub load_transient: u64,
    pub tokenizer: u64,
    /// Per sequence, at the planned context.
    pub kv_per_sequence: u64,
    pub buffers: u64,
}

impl MemoryEstimate {
    /// Resident bytes once loaded, with no sequence running.
    pub fn resident(&self) -> u64 {
        self.weights + self.tokenizer + BASE_BYTES / 4
    }

    /// Bytes while `sequences` generate at once.
    pub fn running(&self, sequences: usize) -> u64 {
        self.resident() + self.kv_per_sequence * sequences as u64 + self.buffers * sequences.min(1) as u64
    }

    /// The peak: loading (with its transient copy) or running, whichever is higher.
    pub fn peak(&self, sequences: usize) -> u64 {
        (self.resident() + self.load_transient).max(self.running(sequences)) + BASE_BYTES
    }
}

/// The geometry the estimate needs, read once per file.
#[derive(Debug, Clone)]
pub struct ModelShape {
    pub cfg: Config,
    pub weights: u64,
    pub largest_tensor: u64,
    pub tokenizer_entries: u64,
}

impl ModelShape {
    pub fn read(path: &Path) -> Result<Self> {
        let g = GgufFile::open(path)?;
        let cfg = Config::from_gguf(&g)?;
        let largest_tensor = g
            .content
            .tensor_infos
            .values()
            .map(|i| tensor_bytes(i.ggml_dtype, i.shape.elem_count()))
            .max()
            .unwrap_or(0);
        let merges = g.str_array("tokenizer.ggml.merges").map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            weights: g.tensor_data_bytes(),
            largest_tensor,
            tokenizer_entries: (cfg.vocab_size + merges) as u64,
            cfg,
        })
    }

    /// Estimate for sequences of up to `context` positions (prompt + new tokens).
    pub fn estimate(&self, context: usize) -> MemoryEstimate {
        let c = &self.cfg;
        let context = context.min(c.context_length).max(1);
        let chunk = PREFILL_CHUNK.min(context);
        let q_dim = c.n_head * c.head_dim;
        // Activations of one prefill chunk (residual, norms, q/k/v/attn, gate/up/act) in f32,
        // plus two logits vectors.
        let acts = chunk * (4 * c.n_embd + 2 * q_dim + 3 * c.n_ff) * 4;
        let logits = 2 * c.vocab_size * 4;
        MemoryEstimate {
            weights: self.weights,
            load_transient: self.largest_tensor / 2,
            tokenizer: self.tokenizer_entries * TOKENIZER_BYTES_PER_ENTRY,
            kv_per_sequence: KvCache::bytes_for(c.n_layer, c.n_kv_head, c.head_dim, context),
            buffers: (acts + logits) as u64,
        }
    }
}

/// The peak resident memory of this process so far (Linux VmHWM), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(l.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}
