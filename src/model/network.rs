//! A model's forward pass, whichever implementation runs it: the native transformer (the fast
//! path, every architecture it implements) or candle-transformers' (the architectures it does
//! not: `phi2`, `glm4`). Both are the engine's [`Forward`] with their own per-sequence caches, so
//! tokenizer, template, sampler, batcher and scheduler are the same around either.

use candle_core::Device;

use crate::engine::{Forward, KvCache};
use crate::error::Result;
use crate::model::arch::Config;
use crate::model::candle_tx::CandlePass;
use crate::model::gguf::GgufFile;
use crate::model::transformer::Transformer;

/// Which implementation runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Backend {
    Native,
    /// candle-transformers: one sequence at a time, no batched steps, caches grown by copying.
    CandleTransformers,
}

impl Backend {
    /// How `plan`, `bench` and `/health` name it.
    pub fn label(self) -> &'static str {
        match self {
            Backend::Native => "native",
            Backend::CandleTransformers => "candle-transformers (slower: no batching, no native kernels)",
        }
    }
}

enum Pass {
    Native(Transformer),
    Candle(CandlePass),
}

pub struct Network {
    pub cfg: Config,
    pass: Pass,
    file_bytes: u64,
}

impl Network {
    /// Load the weights of `g` with the implementation its architecture has.
    pub fn load(g: &GgufFile, cfg: Config, device: &Device) -> Result<Self> {
        let file_bytes = g.tensor_data_bytes();
        let pass = if cfg.arch.is_native() {
            Pass::Native(Transformer::load(g, cfg.clone(), device)?)
        } else {
            crate::model::transformer::shapes::check(g, &cfg)?;
            Pass::Candle(CandlePass::load(g, device)?)
        };
        Ok(Self { cfg, pass, file_bytes })
    }

    pub fn backend(&self) -> Backend {
        match self.pass {
            Pass::Native(_) => Backend::Native,
            Pass::Candle(_) => Backend::CandleTransformers,
        }
    }

    pub fn device(&self) -> &Device {
        match &self.pass {
            Pass::Native(t) => t.device(),
            Pass::Candle(c) => c.device(),
        }
    }

    /// A KV cache for one sequence of up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        match &self.pass {
            Pass::Native(t) => t.new_cache(capacity),
            Pass::Candle(c) => c.new_cache(capacity),
        }
    }

    /// Host time against device wait per pass since the last call (native path; the
    /// candle-transformers path is not measured).
    pub fn pass_times(&self) -> Option<crate::model::transformer::PassTimes> {
        match &self.pass {
            Pass::Native(t) => Some(t.pass_times()),
            Pass::Candle(_) => None,
        }
    }

    /// Weight bytes one decoded token reads (a mixture of experts reads only the picked ones).
    pub fn active_bytes(&self) -> u64 {
        match &self.pass {
            Pass::Native(t) => t.active_bytes(),
            Pass::Candle(_) => self.file_bytes,
        }
    }

    /// Rows per forward pass (candle-transformers takes a prompt in one piece).
    pub fn prefill_rows(&self) -> usize {
        match &self.pass {
            Pass::Native(t) => t.prefill_rows(),
            Pass::Candle(_) => self.cfg.context_length,
        }
    }

    /// Set the rows per forward pass of the native transformer (no effect on the other).
    pub fn set_prefill_rows(&mut self, rows: usize) {
        if let Pass::Native(t) = &mut self.pass {
            t.set_prefill_rows(rows);
        }
    }
}

impl Forward for Network {
    fn forward_rows(&self, segs: &mut [(&[u32], &mut KvCache)], rows: &[usize]) -> Result<Vec<Vec<Vec<f32>>>> {
        match &self.pass {
            Pass::Native(t) => t.forward_rows(segs, rows),
            Pass::Candle(c) => c.forward_rows(segs, rows),
        }
    }
}
