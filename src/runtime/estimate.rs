//! Memory a model will need, estimated from the GGUF header alone (nothing is loaded): weights
//! as stored (everything stays quantized, the embedding table too), the copy made while the
//! largest tensor is read, the tokenizer's tables, the f16 KV cache of every sequence, and the
//! working buffers of prefill and decode.

use std::path::Path;

use crate::engine::KvCache;
use crate::error::Result;
use crate::model::arch::Config;
use crate::model::gguf::{tensor_bytes, GgufFile};
use crate::model::ubatch;

/// Bytes per tokenizer entry (vocabulary token or merge) once loaded: the compact vocabulary
/// (texts, offsets, hash index), merge table or scores, rendered pieces — calibrated on the three
/// test models (measured 40–51).
const TOKENIZER_BYTES_PER_ENTRY: u64 = 48;

/// Bytes per tokenizer entry of the header's metadata arrays (token and merge strings) and their
/// copy while the tokenizer is built from them; freed before the weights load (measured 79–122).
const METADATA_BYTES_PER_ENTRY: u64 = 100;

/// Fixed process overhead (runtime, allocator arenas, code).
const BASE_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryEstimate {
    pub weights: u64,
    /// Transient while loading, above the loaded model: the header's tokenizer metadata where
    /// it outweighs the weights (it is freed before they load), and on a GPU the host copy of
    /// the tensor being read (the CPU reads each tensor straight into place).
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
    /// Weight bytes one decoded token reads ([`Config::active_weight_bytes`]).
    pub active_weights: u64,
    /// The most a GPU load goes above the final weights: candle reads a tensor's raw bytes and
    /// then copies them to the device, so at tensor `i` of the load order (embedding, layers,
    /// the rest) `loaded_before_i + 2 * size_i` is counted.
    pub load_overshoot: u64,
    pub tokenizer_entries: u64,
}

impl ModelShape {
    pub fn read(path: &Path) -> Result<Self> {
        let g = GgufFile::open(path)?;
        let cfg = Config::from_gguf(&g)?;
        // The loader's order: the embedding, the layers in order, then everything else.
        let mut sized: Vec<(u64, u64)> = g
            .content
            .tensor_infos
            .iter()
            .map(|(name, i)| {
                let rank = if name.starts_with("token_embd.") {
                    0
                } else if let Some(n) = name.strip_prefix("blk.").and_then(|r| r.split('.').next()?.parse::<u64>().ok()) {
                    1 + n
                } else {
                    u64::MAX
                };
                (rank, tensor_bytes(i.ggml_dtype, i.shape.elem_count()))
            })
            .collect();
        sized.sort_unstable();
        let total: u64 = sized.iter().map(|s| s.1).sum();
        let mut before = 0u64;
        let mut load_overshoot = 0u64;
        for (_, size) in sized {
            load_overshoot = load_overshoot.max((before + 2 * size).saturating_sub(total));
            before += size;
        }
        let merges = g.str_array("tokenizer.ggml.merges").map(|m| m.len()).unwrap_or(0);
        // candle-transformers keeps the token embedding dequantized to f32 beside the file's.
        let dequantized = if cfg.arch.is_native() { 0 } else { (cfg.vocab_size * cfg.n_embd * 4) as u64 };
        Ok(Self {
            weights: g.tensor_data_bytes() + dequantized,
            active_weights: cfg.active_weight_bytes(&g),
            load_overshoot,
            tokenizer_entries: (cfg.vocab_size + merges) as u64,
            cfg,
        })
    }

    /// Estimate for sequences of up to `context` positions (prompt + new tokens), on the CPU or
    /// a GPU (which run prompts in passes of different sizes).
    pub fn estimate(&self, context: usize, on_cpu: bool) -> MemoryEstimate {
        let c = &self.cfg;
        let context = context.min(c.context_length).max(1);
        // Activations of one forward pass of prompt rows (the model's ubatch), plus two logits
        // vectors.
        let rows = ubatch::prefill_rows(c, self.weights, on_cpu).min(context);
        let acts = rows * ubatch::activation_bytes_per_row(c);
        let logits = 2 * c.vocab_size * 4;
        MemoryEstimate {
            weights: self.weights,
            load_transient: if on_cpu { 0 } else { self.load_overshoot }
                + (self.tokenizer_entries * METADATA_BYTES_PER_ENTRY).saturating_sub(self.weights),
            tokenizer: self.tokenizer_entries * TOKENIZER_BYTES_PER_ENTRY,
            // candle-transformers' caches are f32: twice the native f16 ones.
            kv_per_sequence: KvCache::bytes_for(c.n_layer, c.n_kv_head, c.head_dim, context) * if c.arch.is_native() { 1 } else { 2 },
            buffers: (acts + logits) as u64,
        }
    }
}

/// The peak resident memory of this process so far (Linux VmHWM), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// The resident memory of this process now (Linux VmRSS), if known.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

/// File-backed resident memory now (Linux RssFile): the executable's and libraries' pages (model
/// files are read into memory, not mapped), if known.
pub fn file_rss_bytes() -> Option<u64> {
    status_kib("RssFile:").map(|k| k * 1024)
}

/// Restart the peak (VmHWM) from the current resident memory, so that a later
/// [`peak_rss_bytes`] covers only what follows (Linux `clear_refs` 5). False where unsupported.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with(field))?;
    l.split_whitespace().nth(1)?.parse::<u64>().ok()
}
