//! The decoder-only transformer shared by every supported architecture: weights read from the
//! GGUF (kept quantized, the embedding table too) and one `forward(tokens, cache)` that feeds
//! tokens at the cache's position, in passes of at most `prefill_rows` rows (see `model::ubatch`).
//! Weights are immutable and shared; state lives in the cache.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use crate::kernels::Weight;

use crate::model::activation::{self, Gate};
use crate::engine::{Forward, KvCache};
use crate::error::{Error, Result};
use crate::model::arch::{Activation, Config};
use crate::model::gguf::GgufFile;
use crate::model::row_ops::rms_norm_cpu;
use crate::model::ubatch;

mod attention;
mod moe;
mod pass_clock;
mod rope;
pub(crate) mod shapes;
mod stacked;
mod switches;

pub use pass_clock::{PassSplit, PassTimes};
pub use switches::generic_ops_requested;
use moe::{Ffn, Mlp, Moe};
use rope::RopeFactors;
use stacked::Stacked;
use switches::{step_lock_for, GPU_STEP_LOCKS};


struct Layer {
    attn_norm: Tensor,
    /// q, k, v (with Qwen 2's biases).
    qkv: Stacked,
    wo: Weight,
    qk_norm: Option<(Tensor, Tensor)>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    ffn: Ffn,
    post_ffn_norm: Option<Tensor>,
    window: Option<usize>,
    rope_base: f32,
}

pub struct Transformer {
    pub cfg: Config,
    embed: Arc<QTensor>,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Weight,
    device: Device,
    /// The CPU fast path: the project's kernels, f16 cache attention and fused activations.
    /// False on other devices, and on CPU when `MOA_GENERIC_OPS=1` (candle's ops only, the code
    /// path a GPU runs, so it can be checked on a machine without one).
    fast_cpu: bool,
    /// Per-frequency divisors of the RoPE angles (Llama 3's `rope_freqs`, Phi-3's LongRoPE).
    rope_factors: RopeFactors,
    /// GPU ordinal whose step lock each forward holds (`MOA_CUDA_CONCURRENCY=steps`).
    step_lock: Option<usize>,
    /// Rows per forward pass: longer steps go through in pieces (see [`ubatch`]).
    prefill_rows: usize,
    /// Weight bytes one decoded token reads: all of them for a dense model; for a mixture of
    /// experts, all but the experts a token does not pick.
    active_bytes: u64,
    /// Bytes of attention masks built so far (device path; see `attention::PassMasks`).
    mask_bytes: std::sync::atomic::AtomicU64,
    /// Host time against device wait per pass (see [`pass_clock`]).
    clock: pass_clock::PassClock,
}

impl Transformer {
    pub fn load(g: &GgufFile, cfg: Config, device: &Device) -> Result<Self> {
        shapes::check(g, &cfg)?;
        let fast_cpu = device.is_cpu() && !generic_ops_requested();
        // The device path stacks q|k|v and gate|up (see `stacked`): their parts are read into CPU
        // memory first, then stacked or uploaded one by one.
        let cpu = Device::Cpu;
        let mut r = g.reader()?;
        let mut q = |name: &str| g.tensor(&mut r, name, device);
        let embed = Arc::new(q("token_embd.weight")?);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        let (mut r2, mut r3) = (g.reader()?, g.reader()?);
        let mut opt_on = |name: &str, on: &Device| -> Result<Option<QTensor>> {
            if g.has_tensor(name) { g.tensor(&mut r2, name, on).map(Some) } else { Ok(None) }
        };
        let missing = |name: &str| Error::BadGguf {
            path: g.path.clone(),
            reason: format!("tensor `{name}` is missing for architecture {:?}", cfg.arch),
        };
        let mut all = Vec::new();
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let mut req_on = |n: &str, on: &Device| -> Result<QTensor> {
                let name = format!("{p}.{n}.weight");
                opt_on(&name, on)?.ok_or_else(|| missing(&name))
            };
            let attn_norm = req_on("attn_norm", device)?;
            // Fused Q/K/V (Phi-3) and gate/up (Phi-3's `ffn_up`) are read as separate matrices.
            let (q_rows, kv_rows) = (cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim);
            let qkv_name = format!("{p}.attn_qkv.weight");
            let qkv: [QTensor; 3] = if g.has_tensor(&qkv_name) {
                g.tensor_row_groups(&mut r3, &qkv_name, &[q_rows, kv_rows, kv_rows], &cpu)?.try_into().expect("three parts")
            } else {
                [req_on("attn_q", &cpu)?, req_on("attn_k", &cpu)?, req_on("attn_v", &cpu)?]
            };
            let wo = req_on("attn_output", device)?;
            let ffn_norm = req_on("ffn_norm", device)?;
            let dense = match (&cfg.moe, cfg.fused_gate_up) {
                (Some(_), _) => None,
                (None, true) => {
                    let name = format!("{p}.ffn_up.weight");
                    let [gate, up]: [QTensor; 2] =
                        g.tensor_row_groups(&mut r3, &name, &[cfg.n_ff, cfg.n_ff], &cpu)?.try_into().expect("two parts");
                    Some([gate, up, req_on("ffn_down", device)?])
                }
                (None, false) => Some([req_on("ffn_gate", &cpu)?, req_on("ffn_up", &cpu)?, req_on("ffn_down", device)?]),
            };
            let mut opt = |name: &str| opt_on(name, device);
            let bq = opt(&format!("{p}.attn_q.bias"))?;
            let bk = opt(&format!("{p}.attn_k.bias"))?;
            let bv = opt(&format!("{p}.attn_v.bias"))?;
            let qn = opt(&format!("{p}.attn_q_norm.weight"))?;
            let kn = opt(&format!("{p}.attn_k_norm.weight"))?;
            let pan = opt(&format!("{p}.post_attention_norm.weight"))?;
            let pfn = opt(&format!("{p}.post_ffw_norm.weight"))?;
            let experts = cfg.moe.as_ref().map(|m| Moe::load(g, &mut r3, &p, m, device, fast_cpu)).transpose()?;
            all.push((i, [attn_norm, wo, ffn_norm], qkv, dense, experts, [bq, bk, bv], [qn, kn, pan, pfn]));
        }
        let deq = |t: QTensor| t.dequantize(device).map_err(Error::candle("dequantizing a norm/bias"));
        let mm = |t: QTensor| Weight::new(t, fast_cpu).map_err(Error::candle("preparing a weight"));
        for (i, [attn_norm, wo, ffn_norm], [wq, wk, wv], dense, experts, [bq, bk, bv], [qn, kn, pan, pfn]) in all {
            let ffn = match (experts, dense) {
                (Some(m), _) => Ffn::Moe(m),
                (None, Some([gate, up, down])) => {
                    Ffn::Dense(Mlp { gate_up: Stacked::new(vec![gate, up], None, !fast_cpu, fast_cpu, device)?, down: mm(down)? })
                }
                (None, None) => unreachable!("a layer has experts or a dense feed-forward"),
            };
            let bias = match (bq, bk, bv) {
                (Some(a), Some(b), Some(c)) => Some(vec![deq(a)?, deq(b)?, deq(c)?]),
                _ => None,
            };
            let qk_norm = match (qn, kn) {
                (Some(a), Some(b)) if cfg.qk_norm => Some((deq(a)?, deq(b)?)),
                _ => None,
            };
            let window = cfg.window_of(i);
            layers.push(Layer {
                attn_norm: deq(attn_norm)?,
                qkv: Stacked::new(vec![wq, wk, wv], bias, !fast_cpu, fast_cpu, device)?,
                wo: mm(wo)?,
                qk_norm,
                post_attn_norm: pan.map(deq).transpose()?,
                ffn_norm: deq(ffn_norm)?,
                ffn,
                post_ffn_norm: pfn.map(deq).transpose()?,
                window,
                rope_base: if window.is_some() { cfg.rope_base_local } else { cfg.rope_base },
            });
        }
        let rope_factors = RopeFactors::load(g, &mut r2, &cfg)?;
        let norm = deq(q("output_norm.weight")?)?;
        let output = if g.has_tensor("output.weight") {
            mm(q("output.weight")?)?
        } else {
            Weight::from_arc(embed.clone()).map_err(Error::candle("tying the output to the embedding"))?
        };
        let prefill_rows = ubatch::prefill_rows(&cfg, g.tensor_data_bytes(), device.is_cpu());
        let active_bytes = cfg.active_weight_bytes(g);
        Ok(Self {
            cfg,
            embed,
            layers,
            norm,
            output,
            device: device.clone(),
            fast_cpu,
            rope_factors,
            step_lock: step_lock_for(device),
            prefill_rows,
            active_bytes,
            mask_bytes: Default::default(),
            clock: Default::default(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A KV cache for one sequence of up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        let c = &self.cfg;
        if self.fast_cpu {
            KvCache::new(c.n_layer, c.n_kv_head, c.head_dim, capacity, &self.device)
        } else {
            KvCache::new_tensors(c.n_layer, c.n_kv_head, c.head_dim, capacity, &self.device)
        }
    }

    /// RMSNorm with `w`: on the calling thread on the CPU fast path (see `row_ops`), candle_nn's
    /// elsewhere.
    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        let eps = self.cfg.rms_eps as f32;
        if self.fast_cpu { rms_norm_cpu(x, w, eps) } else { candle_nn::ops::rms_norm(x, w, eps) }
    }

    fn mlp(&self, m: &Mlp, x: &Tensor) -> candle_core::Result<Tensor> {
        let [gate, up]: [Tensor; 2] = self.project_parts(&m.gate_up, x)?.try_into().expect("two projections");
        let h = self.gated(gate, up)?;
        self.mm(&m.down, &h)
    }

    /// `act(gate) ⊙ up`, in place in `gate` on the CPU fast path.
    fn gated(&self, gate: Tensor, up: Tensor) -> candle_core::Result<Tensor> {
        Ok(if self.fast_cpu {
            let kind = match self.cfg.activation {
                Activation::Silu => Gate::Silu,
                Activation::GeluTanh => Gate::GeluTable,
            };
            activation::gated_in_place(&gate, &up, kind)?;
            drop(up);
            gate
        } else {
            match self.cfg.activation {
                Activation::Silu => (candle_nn::ops::silu(&gate)? * up)?,
                Activation::GeluTanh => (gate.gelu()? * up)?,
            }
        })
    }

    /// Host time against device wait per pass since the last call (see [`pass_clock`]).
    pub fn pass_times(&self) -> PassTimes {
        self.clock.take()
    }

    /// One step over several sequences: every segment's tokens are fed at its cache's position;
    /// returns the last position's logits of each segment that asks for them, in order.
    fn forward_inner(&self, segs: &mut [Segment<'_>]) -> candle_core::Result<Vec<Vec<f32>>> {
        let c = &self.cfg;
        let started = std::time::Instant::now();
        let all: Vec<u32> = segs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let ids = Tensor::new(all.as_slice(), &self.device)?;
        let mut x = self.embed.embedding(&ids)?.unsqueeze(0)?;
        if let Some(s) = c.embed_scale {
            x = (x * s as f64)?;
        }
        // Only the rows whose logits are asked for (usually each segment's last) go past the last
        // layer's attention (which still reads and writes every position's K/V); the others are
        // dropped there, as llama.cpp does with its output ids.
        let mut last_rows = Vec::with_capacity(segs.len());
        let mut off = 0;
        for sg in segs.iter() {
            let n = sg.tokens.len();
            last_rows.extend((off + n - sg.logits.min(n)..off + n).map(|r| r as u32));
            off += n;
        }
        let keep = (!last_rows.is_empty() && last_rows.len() < all.len())
            .then(|| Tensor::new(last_rows.as_slice(), &self.device))
            .transpose()?;
        // RoPE tables for every row's position, once per distinct base (Gemma 3 has two), shared
        // by all layers.
        let rows: Vec<(usize, Option<&[f32]>)> = segs
            .iter()
            .flat_map(|sg| {
                let f = self.rope_factors.for_capacity(sg.cache.capacity(), c.rope_orig_context);
                (sg.cache.len()..sg.cache.len() + sg.tokens.len()).map(move |p| (p, f))
            })
            .collect();
        let mut ropes: Vec<(f32, rope::PassRope)> = Vec::new();
        for l in &self.layers {
            if !ropes.iter().any(|(b, _)| *b == l.rope_base) {
                ropes.push((l.rope_base, rope::PassRope::new(c, l.rope_base, &rows, &self.device, !self.fast_cpu)?));
            }
        }
        let masks = self.pass_masks(segs)?;
        let n_layers = self.layers.len();
        for (li, l) in self.layers.iter().enumerate() {
            let rope = &ropes.iter().find(|(b, _)| *b == l.rope_base).expect("a table per base").1;
            let mut h = self.attention(l, li, &self.rms_norm(&x, &l.attn_norm)?, segs, rope, &masks)?;
            if let (Some(idx), true) = (&keep, li + 1 == n_layers) {
                h = h.index_select(idx, 1)?;
                x = x.index_select(idx, 1)?;
            }
            if let Some(n) = &l.post_attn_norm {
                h = self.rms_norm(&h, n)?;
            }
            x = (x + h)?;
            let mut h = self.ffn(&l.ffn, &self.rms_norm(&x, &l.ffn_norm)?)?;
            if let Some(n) = &l.post_ffn_norm {
                h = self.rms_norm(&h, n)?;
            }
            x = (x + h)?;
        }
        for sg in segs.iter_mut() {
            sg.cache.advance(sg.tokens.len());
        }
        if last_rows.is_empty() {
            // A piece of a prompt: no copy to wait in (the next pass's copy waits for it too).
            self.clock.record(false, started.elapsed(), std::time::Duration::ZERO);
            return Ok(Vec::new());
        }
        let last = self.rms_norm(&x, &self.norm)?;
        let logits = self.mm(&self.output, &last)?.squeeze(0)?.to_dtype(DType::F32)?;
        let issued = std::time::Instant::now();
        let mut rows = logits.to_vec2::<f32>()?;
        let decode = segs.iter().all(|s| s.tokens.len() == 1);
        self.clock.record(decode, issued - started, issued.elapsed());
        if let Some(cap) = c.final_softcap {
            for x in rows.iter_mut().flatten() {
                *x = cap * (*x / cap).tanh();
            }
        }
        Ok(rows)
    }

    fn check(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::InvalidRequest("forward called with no tokens".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidRequest(format!("token id {bad} is outside the vocabulary of {}", self.cfg.vocab_size)));
        }
        Ok(())
    }
}

/// One sequence's part of a batched step.
pub struct Segment<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// How many of this piece's last positions need logits (0 for a piece of a prompt that
    /// continues in the next pass; 1 for a decode step; more to verify a draft).
    pub logits: usize,
}

impl Forward for Transformer {
    fn forward_rows(&self, segs: &mut [(&[u32], &mut KvCache)], rows: &[usize]) -> Result<Vec<Vec<Vec<f32>>>> {
        if rows.len() != segs.len() {
            return Err(Error::Other(format!("forward_rows: {} row counts for {} segments", rows.len(), segs.len())));
        }
        for ((t, _), &r) in segs.iter().zip(rows) {
            self.check(t)?;
            if r > t.len() {
                return Err(Error::Other(format!("forward_rows: logits of {r} rows asked from a segment of {}", t.len())));
            }
        }
        let _turn = self.step_lock.map(|i| GPU_STEP_LOCKS[i].lock().unwrap_or_else(|p| p.into_inner()));
        let before: Vec<usize> = segs.iter().map(|(_, c)| c.len()).collect();
        self.forward_passes(segs, rows).map_err(|e| {
            for ((_, c), b) in segs.iter_mut().zip(before) {
                c.truncate(b);
            }
            Error::Candle { context: "forward pass".into(), source: e }
        })
    }
}

impl Transformer {
    /// Weight bytes one decoded token reads (a mixture of experts reads only the picked ones).
    pub fn active_bytes(&self) -> u64 {
        self.active_bytes
    }

    /// Rows per forward pass of this model.
    pub fn prefill_rows(&self) -> usize {
        self.prefill_rows
    }

    /// Set the rows per forward pass (at least 1); results do not depend on it.
    pub fn set_prefill_rows(&mut self, rows: usize) {
        self.prefill_rows = rows.max(1);
    }

    /// The step in passes of at most `prefill_rows` rows (a long prompt continues in the next
    /// pass at its cache's position); each segment's logits come from the passes holding its
    /// last `rows[i]` tokens.
    fn forward_passes(&self, segs: &mut [(&[u32], &mut KvCache)], rows: &[usize]) -> candle_core::Result<Vec<Vec<Vec<f32>>>> {
        let lengths: Vec<usize> = segs.iter().map(|(t, _)| t.len()).collect();
        let mut out = vec![Vec::new(); segs.len()];
        for pass in ubatch::plan(&lengths, self.prefill_rows) {
            let mut parts = Vec::with_capacity(pass.len());
            let mut rest = segs.iter_mut().enumerate();
            for (i, r) in &pass {
                let (_, (t, c)) = rest.find(|(j, _)| j == i).expect("a pass's pieces are in segment order");
                // Rows of this piece among the segment's last `rows[i]`.
                let first_wanted = lengths[*i] - rows[*i];
                let logits = r.end.saturating_sub(first_wanted.max(r.start));
                parts.push(Segment { tokens: &t[r.clone()], cache: c, logits });
            }
            let mut logits = self.forward_inner(&mut parts)?.into_iter();
            for ((i, _), part) in pass.iter().zip(&parts) {
                for _ in 0..part.logits {
                    out[*i].push(logits.next().expect("logits for every row asked for in this pass"));
                }
            }
        }
        Ok(out)
    }

    /// A quantized matmul (one place to swap kernels): the project's kernels for CPU weights of
    /// the types they implement (raw GGUF blocks read in place, or Q4_K repacked at load),
    /// candle's `forward` otherwise.
    fn mm(&self, w: &Weight, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.fast_cpu {
            crate::kernels::forward(w, x)
        } else {
            w.forward(x)
        }
    }

    /// Several weights over one input (q/k/v, gate/up): fused on the CPU fast path.
    fn mm_many(&self, ws: &[&Weight], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        if self.fast_cpu {
            crate::kernels::forward_many(ws, x)
        } else {
            ws.iter().map(|w| w.forward(x)).collect()
        }
    }
}
