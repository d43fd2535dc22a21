//! candle-transformers' quantized models, behind one type: the independent implementation the
//! native transformer is checked against (tests compare their logits on the same files), and the
//! forward pass of the architectures the native path does not implement (`phi2`, `glm4`), which
//! then run with the project's own tokenizer, template, sampler and scheduler around them.
//!
//! Each model keeps its KV cache inside itself and feeds tokens at an `index_pos`; a fresh one
//! starts at position 0. The header they read is the project's own validated parse of the file
//! (every tensor inside the file), and every call into candle-transformers runs under
//! `catch_unwind`, so a file they cannot handle is an error naming it, never a crash.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{
    quantized_gemma3, quantized_glm4, quantized_llama, quantized_phi, quantized_phi3, quantized_qwen2, quantized_qwen3, quantized_qwen3_moe,
};

use crate::engine::kv_cache::SequenceState;
use crate::engine::{Forward, KvCache};
use crate::error::{Error, Result};
use crate::model::gguf::GgufFile;

/// Architectures candle-transformers reads from GGUF, as `general.architecture` names them.
pub const CANDLE_ARCHS: &[&str] = &["llama", "qwen2", "qwen3", "qwen3moe", "phi3", "gemma3", "phi2", "glm4"];

/// The longest sequence of the models whose RoPE tables are fixed at 4096 positions.
pub const FIXED_TABLES: usize = 4096;

/// The most positions a model is given for the RoPE tables it sizes by `context_length` (a
/// crafted context of 2^24 would otherwise be gigabytes of tables for a file of kilobytes).
pub const MAX_TABLE_POSITIONS: usize = 1 << 17;

/// Cap the context length candle-transformers reads to [`MAX_TABLE_POSITIONS`].
fn cap_context(ct: &mut gguf_file::Content, arch: &str) {
    let key = format!("{arch}.context_length");
    if let Some(n) = ct.metadata.get(&key).and_then(|v| v.to_u32().ok()) {
        ct.metadata.insert(key, gguf_file::Value::U32(n.min(MAX_TABLE_POSITIONS as u32)));
    }
}

/// One candle-transformers model with its own KV cache.
pub enum CandleModel {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
    Qwen3(quantized_qwen3::ModelWeights),
    Qwen3Moe(quantized_qwen3_moe::GGUFQWenMoE),
    Phi3(quantized_phi3::ModelWeights),
    Gemma3(quantized_gemma3::ModelWeights),
    Phi2(quantized_phi::ModelWeights),
    Glm4(quantized_glm4::ModelWeights),
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "panic".into())
}

impl CandleModel {
    /// Load `path` with candle-transformers (its vocabulary arrays dropped first: the models
    /// read none of them).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let mut g = GgufFile::open(path)?;
        g.drop_vocabulary();
        Self::from_gguf(&g, device)
    }

    /// Load the weights of an opened file, from a copy of its parsed header.
    pub fn from_gguf(g: &GgufFile, device: &Device) -> Result<Self> {
        let path = g.path.as_path();
        let arch = g.architecture()?;
        if !CANDLE_ARCHS.contains(&arch.as_str()) {
            return Err(Error::UnsupportedArch { path: path.to_path_buf(), arch, supported: CANDLE_ARCHS.join(", ") });
        }
        let mut r = g.reader()?;
        let c = &g.content;
        let infos = c.tensor_infos.iter().map(|(n, i)| (n.clone(), gguf_file::TensorInfo { ggml_dtype: i.ggml_dtype, shape: i.shape.clone(), offset: i.offset }));
        let mut ct = gguf_file::Content { magic: c.magic, metadata: c.metadata.clone(), tensor_infos: infos.collect(), tensor_data_offset: c.tensor_data_offset };
        cap_context(&mut ct, &arch);
        let fail = |reason: String| Error::BadGguf { path: path.to_path_buf(), reason: format!("candle-transformers' {arch} model: {reason}") };
        let loaded = catch_unwind(AssertUnwindSafe(|| -> candle_core::Result<Self> {
            Ok(match arch.as_str() {
                "llama" => Self::Llama(quantized_llama::ModelWeights::from_gguf(ct, &mut r, device)?),
                "qwen2" => Self::Qwen2(quantized_qwen2::ModelWeights::from_gguf(ct, &mut r, device)?),
                "qwen3" => Self::Qwen3(quantized_qwen3::ModelWeights::from_gguf(ct, &mut r, device)?),
                "qwen3moe" => Self::Qwen3Moe(quantized_qwen3_moe::GGUFQWenMoE::from_gguf(ct, &mut r, device, DType::F32)?),
                "phi3" => Self::Phi3(quantized_phi3::ModelWeights::from_gguf(false, ct, &mut r, device)?),
                "gemma3" => Self::Gemma3(quantized_gemma3::ModelWeights::from_gguf(ct, &mut r, device)?),
                "phi2" => Self::Phi2(quantized_phi::ModelWeights::from_gguf(ct, &mut r, device)?),
                "glm4" => Self::Glm4(quantized_glm4::ModelWeights::from_gguf(ct, &mut r, device, DType::F32)?),
                _ => unreachable!("checked against CANDLE_ARCHS"),
            })
        }));
        match loaded {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => Err(fail(crate::error::candle_message(&e))),
            Err(p) => Err(fail(panic_text(&*p))),
        }
    }

    /// The most positions this model's RoPE tables hold (`context` for those sized from the
    /// file's context length).
    pub fn max_positions(&self, context: usize) -> usize {
        match self {
            Self::Llama(_) | Self::Phi2(_) => FIXED_TABLES,
            _ => context,
        }
    }

    /// A copy sharing the weights, with the cache of this one: only for a model that has not run
    /// yet (candle_nn's preallocated caches, used by Phi-3 and GLM-4, are written in place, so a
    /// copy of a filled one would share its storage). None for the models that cannot be copied.
    pub fn fresh_copy(&self) -> Option<Self> {
        Some(match self {
            Self::Llama(m) => Self::Llama(m.clone()),
            Self::Qwen3(m) => Self::Qwen3(m.clone()),
            Self::Phi3(m) => Self::Phi3(m.clone()),
            Self::Gemma3(m) => Self::Gemma3(m.clone()),
            Self::Phi2(m) => Self::Phi2(m.clone()),
            Self::Glm4(m) => Self::Glm4(m.clone()),
            Self::Qwen2(_) | Self::Qwen3Moe(_) => return None,
        })
    }

    /// Feed `tokens` at position `index_pos` (0 starts a new sequence, dropping the cache) and
    /// return the last position's logits.
    pub fn forward(&mut self, tokens: &[u32], index_pos: usize, device: &Device) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::InvalidRequest("forward called with no tokens".into()));
        }
        let out = catch_unwind(AssertUnwindSafe(|| -> candle_core::Result<Vec<f32>> {
            let x = Tensor::new(tokens, device)?.unsqueeze(0)?;
            let logits = match self {
                Self::Llama(m) => m.forward(&x, index_pos)?,
                Self::Qwen2(m) => m.forward(&x, index_pos)?,
                Self::Qwen3(m) => m.forward(&x, index_pos)?,
                Self::Qwen3Moe(m) => m.forward(&x, index_pos)?,
                Self::Phi3(m) => m.forward(&x, index_pos)?,
                Self::Gemma3(m) => m.forward(&x, index_pos)?,
                Self::Phi2(m) => m.forward(&x, index_pos)?,
                Self::Glm4(m) => m.forward(&x, index_pos)?,
            };
            logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
        }));
        match out {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::Candle { context: "candle-transformers forward pass".into(), source: e }),
            Err(p) => Err(Error::Other(format!("candle-transformers forward pass failed: {}", panic_text(&*p)))),
        }
    }
}

/// A candle-transformers model as the engine's [`Forward`]: each sequence's cache is its own
/// copy of the model (sharing the weights), held in an opaque [`KvCache`] with the tokens it has
/// been fed. A cache truncated below what its model holds (a shared prefix reused) is fed again
/// from position 0, since these caches only grow; so is a fork. Several sequences of a step run
/// one after another, and rows asked for past a piece's last are fed one token at a time: the
/// path is correct everywhere and fast nowhere, which `plan` and `bench` say.
pub struct CandlePass {
    pristine: Arc<CandleModel>,
    device: Device,
}

struct Sequence {
    /// Never run: the source of fresh copies.
    pristine: Arc<CandleModel>,
    model: CandleModel,
    /// Every token of the sequence so far (the cache's positions).
    tokens: Vec<u32>,
    /// How many of them `model` holds (0 after a failed pass, so the next one starts over).
    fed: usize,
}

impl SequenceState for Sequence {
    fn fork(&self) -> Result<Box<dyn SequenceState>> {
        let model = fresh(&self.pristine)?;
        Ok(Box::new(Sequence { pristine: self.pristine.clone(), model, tokens: self.tokens.clone(), fed: 0 }))
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

fn fresh(m: &CandleModel) -> Result<CandleModel> {
    m.fresh_copy().ok_or_else(|| Error::Other("this candle-transformers model cannot hold more than one sequence".into()))
}

impl CandlePass {
    pub fn load(g: &GgufFile, device: &Device) -> Result<Self> {
        let model = CandleModel::from_gguf(g, device)?;
        fresh(&model)?;
        Ok(Self { pristine: Arc::new(model), device: device.clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        let model = fresh(&self.pristine)?;
        Ok(KvCache::opaque(Box::new(Sequence { pristine: self.pristine.clone(), model, tokens: Vec::new(), fed: 0 }), capacity))
    }

    /// Feed `tokens` to one sequence; the logits of its last `rows` positions.
    fn feed(&self, tokens: &[u32], cache: &mut KvCache, rows: usize) -> Result<Vec<Vec<f32>>> {
        let (len, capacity) = (cache.len(), cache.capacity());
        if len + tokens.len() > capacity {
            return Err(Error::Other(format!("KV cache full: {len} + {} positions exceed its capacity of {capacity}", tokens.len())));
        }
        let seq = cache.opaque_state().and_then(|s| s.downcast_mut::<Sequence>());
        let seq = seq.ok_or_else(|| Error::Other("a candle-transformers model was given another model's cache".into()))?;
        if seq.tokens.len() < len {
            return Err(Error::Other(format!("cache of {len} positions holds {} tokens", seq.tokens.len())));
        }
        seq.tokens.truncate(len);
        // A cache cut below what the model holds, or a fork, starts over from position 0.
        let start = if seq.fed == len { len } else { 0 };
        let mut all = seq.tokens[start..].to_vec();
        all.extend_from_slice(tokens);
        let head = all.len() - rows.min(tokens.len()).saturating_sub(1);
        let mut out = Vec::with_capacity(rows);
        let mut run = || -> Result<()> {
            let last = seq.model.forward(&all[..head], start, &self.device)?;
            if rows > 0 {
                out.push(last);
            }
            for i in head..all.len() {
                out.push(seq.model.forward(&all[i..i + 1], start + i, &self.device)?);
            }
            Ok(())
        };
        match run() {
            Ok(()) => {
                seq.tokens.extend_from_slice(tokens);
                seq.fed = seq.tokens.len();
                cache.advance(tokens.len());
                Ok(out)
            }
            Err(e) => {
                seq.fed = 0;
                Err(e)
            }
        }
    }
}

impl Forward for CandlePass {
    fn forward_rows(&self, segs: &mut [(&[u32], &mut KvCache)], rows: &[usize]) -> Result<Vec<Vec<Vec<f32>>>> {
        if rows.len() != segs.len() {
            return Err(Error::Other(format!("forward_rows: {} row counts for {} segments", rows.len(), segs.len())));
        }
        let mut out = Vec::with_capacity(segs.len());
        for ((tokens, cache), &r) in segs.iter_mut().zip(rows) {
            if tokens.is_empty() || r > tokens.len() {
                return Err(Error::InvalidRequest(format!("forward_rows: logits of {r} rows asked from {} tokens", tokens.len())));
            }
            out.push(self.feed(tokens, cache, r)?);
        }
        Ok(out)
    }
}
