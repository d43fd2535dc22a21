//! The decoder-only transformer shared by every supported architecture: weights read from the
//! GGUF (kept quantized, the embedding table too) and one `forward(tokens, cache)` that feeds
//! tokens at the cache's position. Weights are immutable and shared; state lives in the cache.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::engine::attention::{self, AttnShape};
use crate::model::activation;
use crate::kernels::with_cpu_f32;
use crate::engine::{Forward, KvCache};
use crate::error::{Error, Result};
use crate::model::arch::{Activation, Config, RopeStyle};
use crate::model::gguf::GgufFile;

struct Layer {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    bias: Option<(Tensor, Tensor, Tensor)>,
    qk_norm: Option<(Tensor, Tensor)>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    post_ffn_norm: Option<Tensor>,
    window: Option<usize>,
    rope_base: f32,
}

pub struct Transformer {
    pub cfg: Config,
    embed: Arc<QTensor>,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
    device: Device,
    /// The CPU fast path: the project's kernels, f16 cache attention and fused activations.
    /// False on other devices, and on CPU when `MOA_GENERIC_OPS=1` (candle's ops only, the code
    /// path a GPU runs, so it can be checked on a machine without one).
    fast_cpu: bool,
    /// GPU ordinal whose step lock each forward holds (`MOA_CUDA_CONCURRENCY=steps`).
    step_lock: Option<usize>,
}

/// One lock per GPU: with `MOA_CUDA_CONCURRENCY=steps` concurrent generations on a GPU take turns
/// per forward step (they still interleave token by token) instead of overlapping on separate
/// streams. benches/README.md has what each gave on an H100.
static GPU_STEP_LOCKS: [std::sync::Mutex<()>; 16] = [const { std::sync::Mutex::new(()) }; 16];

fn step_lock_for(device: &Device) -> Option<usize> {
    let steps = std::env::var("MOA_CUDA_CONCURRENCY").is_ok_and(|v| v == "steps");
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } if steps => Some(gpu_id % GPU_STEP_LOCKS.len()),
        _ => None,
    }
}

/// `MOA_GENERIC_OPS=1`: run CPU models through candle's generic ops (the GPU code path).
pub fn generic_ops_requested() -> bool {
    std::env::var("MOA_GENERIC_OPS").is_ok_and(|v| v == "1")
}

impl Transformer {
    pub fn load(g: &GgufFile, cfg: Config, device: &Device) -> Result<Self> {
        let mut r = g.reader()?;
        let mut q = |name: &str| g.tensor(&mut r, name, device);
        let embed = Arc::new(q("token_embd.weight")?);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        let mut r2 = g.reader()?;
        let mut opt = |name: &str| -> Result<Option<QTensor>> {
            if g.has_tensor(name) { g.tensor(&mut r2, name, device).map(Some) } else { Ok(None) }
        };
        let mut all = Vec::new();
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let names = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"];
            let mut t = Vec::with_capacity(names.len());
            for n in names {
                t.push(opt(&format!("{p}.{n}.weight"))?.ok_or_else(|| Error::BadGguf {
                    path: g.path.clone(),
                    reason: format!("tensor `{p}.{n}.weight` is missing for architecture {:?}", cfg.arch),
                })?);
            }
            let bq = opt(&format!("{p}.attn_q.bias"))?;
            let bk = opt(&format!("{p}.attn_k.bias"))?;
            let bv = opt(&format!("{p}.attn_v.bias"))?;
            let qn = opt(&format!("{p}.attn_q_norm.weight"))?;
            let kn = opt(&format!("{p}.attn_k_norm.weight"))?;
            let pan = opt(&format!("{p}.post_attention_norm.weight"))?;
            let pfn = opt(&format!("{p}.post_ffw_norm.weight"))?;
            all.push((i, t, bq, bk, bv, qn, kn, pan, pfn));
        }
        let deq = |t: QTensor| t.dequantize(device).map_err(Error::candle("dequantizing a norm/bias"));
        let mm = |t: QTensor| QMatMul::from_qtensor(t).map_err(Error::candle("preparing a weight"));
        for (i, t, bq, bk, bv, qn, kn, pan, pfn) in all {
            let mut it = t.into_iter();
            let mut next = || it.next().expect("nine tensors per layer");
            let attn_norm = deq(next())?;
            let (wq, wk, wv, wo) = (mm(next())?, mm(next())?, mm(next())?, mm(next())?);
            let ffn_norm = deq(next())?;
            let (gate, up, down) = (mm(next())?, mm(next())?, mm(next())?);
            let bias = match (bq, bk, bv) {
                (Some(a), Some(b), Some(c)) => Some((deq(a)?, deq(b)?, deq(c)?)),
                _ => None,
            };
            let qk_norm = match (qn, kn) {
                (Some(a), Some(b)) if cfg.qk_norm => Some((deq(a)?, deq(b)?)),
                _ => None,
            };
            let window = cfg.window_of(i);
            layers.push(Layer {
                attn_norm,
                wq,
                wk,
                wv,
                wo,
                bias,
                qk_norm,
                post_attn_norm: pan.map(deq).transpose()?,
                ffn_norm,
                gate,
                up,
                down,
                post_ffn_norm: pfn.map(deq).transpose()?,
                window,
                rope_base: if window.is_some() { cfg.rope_base_local } else { cfg.rope_base },
            });
        }
        let norm = deq(q("output_norm.weight")?)?;
        let output = if g.has_tensor("output.weight") {
            mm(q("output.weight")?)?
        } else {
            QMatMul::from_arc(embed.clone()).map_err(Error::candle("tying the output to the embedding"))?
        };
        let fast_cpu = device.is_cpu() && !generic_ops_requested();
        Ok(Self { cfg, embed, layers, norm, output, device: device.clone(), fast_cpu, step_lock: step_lock_for(device) })
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

    /// cos/sin for positions `pos..pos+seq` (angles computed in f64, rounded once).
    fn rope_tables(&self, base: f32, positions: &[usize]) -> candle_core::Result<(Tensor, Tensor)> {
        let (half, rows) = (self.cfg.head_dim / 2, positions.len());
        let freqs: Vec<f64> = (0..half).map(|i| (base as f64).powf(-2.0 * i as f64 / self.cfg.head_dim as f64)).collect();
        let mut cos = Vec::with_capacity(rows * half);
        let mut sin = Vec::with_capacity(rows * half);
        for &p in positions {
            for &freq in &freqs {
                let (s, c) = (p as f64 * freq).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        Ok((Tensor::from_vec(cos, (rows, half), &self.device)?, Tensor::from_vec(sin, (rows, half), &self.device)?))
    }

    /// Additive mask `[n_rep * seq, kv_len]` for queries at `pos..pos+seq` over keys `0..kv_len`.
    fn mask(&self, pos: usize, seq: usize, kv_start: usize, kv_len: usize, window: Option<usize>) -> candle_core::Result<Tensor> {
        let n_rep = self.cfg.n_head / self.cfg.n_kv_head;
        let mut m = Vec::with_capacity(n_rep * seq * kv_len);
        for _ in 0..n_rep {
            for i in 0..seq {
                let qp = pos + i;
                for j in 0..kv_len {
                    let kp = kv_start + j;
                    let visible = kp <= qp && window.is_none_or(|w| qp - kp < w);
                    m.push(if visible { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        Tensor::from_vec(m, (n_rep * seq, kv_len), &self.device)
    }

    /// Attention for every segment of `x` (`[1, rows, n_embd]`, segments' rows back to back):
    /// projections run once over all rows, each segment attends over its own cache.
    fn attention(&self, l: &Layer, li: usize, x: &Tensor, segs: &mut [Segment<'_>], rope: &(Tensor, Tensor)) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let [mut q, mut k, mut v]: [Tensor; 3] =
            self.mm_many(&[&l.wq, &l.wk, &l.wv], x)?.try_into().expect("three projections");
        if let Some((bq, bk, bv)) = &l.bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        // Every segment's rows at once: heads first, norms and RoPE (per-row positions) in one
        // pass each, then attention per segment over its own cache.
        let rows = x.dim(1)?;
        let heads = |t: &Tensor, n: usize| t.reshape((1, rows, n, c.head_dim))?.transpose(1, 2)?.contiguous();
        let (q, k, v) = (heads(&q, c.n_head)?, heads(&k, c.n_kv_head)?, heads(&v, c.n_kv_head)?);
        let (q, k) = match &l.qk_norm {
            Some((qn, kn)) => (candle_nn::ops::rms_norm(&q, qn, c.rms_eps as f32)?, candle_nn::ops::rms_norm(&k, kn, c.rms_eps as f32)?),
            None => (q, k),
        };
        let (cos, sin) = rope;
        let (q, k) = match c.rope_style {
            RopeStyle::Interleaved => (candle_nn::rotary_emb::rope_i(&q, cos, sin)?, candle_nn::rotary_emb::rope_i(&k, cos, sin)?),
            RopeStyle::Neox => (candle_nn::rotary_emb::rope(&q, cos, sin)?, candle_nn::rotary_emb::rope(&k, cos, sin)?),
        };
        let out = if self.fast_cpu {
            self.attention_cpu(l, li, &q, &k, &v, segs)?
        } else {
            let mut outs = Vec::with_capacity(segs.len());
            let mut off = 0;
            for sg in segs.iter_mut() {
                let (seq, pos) = (sg.tokens.len(), sg.cache.len());
                let part = |t: &Tensor| t.narrow(2, off, seq)?.contiguous();
                outs.push(self.attention_device(l, li, &part(&q)?, &part(&k)?, &part(&v)?, pos, sg.cache)?);
                off += seq;
            }
            if outs.len() == 1 { outs.pop().expect("one segment") } else { Tensor::cat(&outs, 1)? }
        };
        self.mm(&l.wo, &out)
    }

    /// CPU: llama.cpp-style attention straight over the f16 cache (see engine::attention), each
    /// segment reading its rows of the batch's `q`, `k`, `v` (`[1, heads, rows, head_dim]`) in place.
    fn attention_cpu(&self, l: &Layer, li: usize, q: &Tensor, k: &Tensor, v: &Tensor, segs: &mut [Segment<'_>]) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let rows = q.dim(2)?;
        let width = c.n_head * c.head_dim;
        let mut out = vec![0f32; rows * width];
        let err = |e: crate::error::Error| candle_core::Error::Msg(e.to_string());
        with_cpu_f32(q, |qv| {
            with_cpu_f32(k, |kv| {
                with_cpu_f32(v, |vv| {
                    let mut off = 0;
                    for sg in segs.iter_mut() {
                        let (seq, pos) = (sg.tokens.len(), sg.cache.len());
                        sg.cache.append_cpu(li, kv, vv, off, seq, rows).map_err(err)?;
                        let (kc, vc) = sg.cache.cpu_layer(li).map_err(err)?;
                        let shape = AttnShape {
                            n_head: c.n_head,
                            n_kv_head: c.n_kv_head,
                            head_dim: c.head_dim,
                            capacity: sg.cache.capacity(),
                            seq,
                            pos,
                            q_rows: rows,
                            q_off: off,
                            window: l.window,
                            scale: c.attn_scale,
                        };
                        attention::attention(&shape, qv, kc, vc, &mut out[off * width..(off + seq) * width]);
                        off += seq;
                    }
                    Ok::<(), candle_core::Error>(())
                })
            })
        })????;
        Tensor::from_vec(out, (1, rows, width), &self.device)
    }

    /// Other devices: the same attention with candle's tensor ops (mask + softmax).
    #[allow(clippy::too_many_arguments)]
    fn attention_device(&self, l: &Layer, li: usize, q: &Tensor, k: &Tensor, v: &Tensor, pos: usize, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let (b, _, seq, _) = q.dims4()?;
        let (mut ka, mut va) = cache.append_device(li, k, v).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let total = pos + seq;
        let mut kv_start = 0;
        if let Some(w) = l.window {
            let first_needed = (pos + 1).saturating_sub(w);
            if first_needed > 0 {
                ka = ka.narrow(2, first_needed, total - first_needed)?;
                va = va.narrow(2, first_needed, total - first_needed)?;
                kv_start = first_needed;
            }
        }
        let kv_len = total - kv_start;
        let n_rep = c.n_head / c.n_kv_head;
        // Group query heads by their KV head: [b, n_kv, n_rep * seq, d], no KV copies.
        let qg = q.reshape((b, c.n_kv_head, n_rep * seq, c.head_dim))?;
        let att = (qg.matmul(&ka.contiguous()?.t()?)? * c.attn_scale as f64)?;
        let att = if seq > 1 || l.window.is_some_and(|w| kv_len > w) {
            att.broadcast_add(&self.mask(pos, seq, kv_start, kv_len, l.window)?)?
        } else {
            att
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let out = att.matmul(&va.contiguous()?)?;
        out.reshape((b, c.n_head, seq, c.head_dim))?.transpose(1, 2)?.reshape((b, seq, c.n_head * c.head_dim))
    }

    fn mlp(&self, l: &Layer, x: &Tensor) -> candle_core::Result<Tensor> {
        let [gate, up]: [Tensor; 2] = self.mm_many(&[&l.gate, &l.up], x)?.try_into().expect("two projections");
        let cpu = self.fast_cpu;
        let h = match self.cfg.activation {
            Activation::Silu if cpu => activation::swiglu(&gate, &up)?,
            Activation::Silu => (candle_nn::ops::silu(&gate)? * up)?,
            Activation::GeluTanh if cpu => (activation::gelu_f16_table(&gate)? * up)?,
            Activation::GeluTanh => (gate.gelu()? * up)?,
        };
        self.mm(&l.down, &h)
    }

    /// One step over several sequences: every segment's tokens are fed at its cache's position;
    /// returns the last position's logits of each segment, in order.
    fn forward_inner(&self, segs: &mut [Segment<'_>]) -> candle_core::Result<Vec<Vec<f32>>> {
        let c = &self.cfg;
        let all: Vec<u32> = segs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let ids = Tensor::new(all.as_slice(), &self.device)?;
        let mut x = self.embed.embedding(&ids)?.unsqueeze(0)?;
        if let Some(s) = c.embed_scale {
            x = (x * s as f64)?;
        }
        let eps = c.rms_eps as f32;
        // Only each segment's last position needs logits: after the last layer's attention (which
        // still reads and writes every position's K/V) the other rows are dropped, as llama.cpp
        // does with its output ids.
        let mut last_rows = Vec::with_capacity(segs.len());
        let mut off = 0;
        for sg in segs.iter() {
            off += sg.tokens.len();
            last_rows.push((off - 1) as u32);
        }
        let keep = (last_rows.len() < all.len()).then(|| Tensor::new(last_rows.as_slice(), &self.device)).transpose()?;
        // RoPE tables for every row's position, once per distinct base (Gemma 3 has two), shared
        // by all layers.
        let positions: Vec<usize> = segs.iter().flat_map(|sg| sg.cache.len()..sg.cache.len() + sg.tokens.len()).collect();
        let mut ropes: Vec<(f32, (Tensor, Tensor))> = Vec::new();
        for l in &self.layers {
            if !ropes.iter().any(|(b, _)| *b == l.rope_base) {
                ropes.push((l.rope_base, self.rope_tables(l.rope_base, &positions)?));
            }
        }
        let n_layers = self.layers.len();
        for (li, l) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &l.attn_norm, eps)?;
            let rope = &ropes.iter().find(|(b, _)| *b == l.rope_base).expect("a table per base").1;
            let mut h = self.attention(l, li, &h, segs, rope)?;
            if let (Some(idx), true) = (&keep, li + 1 == n_layers) {
                h = h.index_select(idx, 1)?;
                x = x.index_select(idx, 1)?;
            }
            if let Some(n) = &l.post_attn_norm {
                h = candle_nn::ops::rms_norm(&h, n, eps)?;
            }
            x = (x + h)?;
            let h = candle_nn::ops::rms_norm(&x, &l.ffn_norm, eps)?;
            let mut h = self.mlp(l, &h)?;
            if let Some(n) = &l.post_ffn_norm {
                h = candle_nn::ops::rms_norm(&h, n, eps)?;
            }
            x = (x + h)?;
        }
        for sg in segs.iter_mut() {
            sg.cache.advance(sg.tokens.len());
        }
        let last = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        let logits = self.mm(&self.output, &last)?.squeeze(0)?.to_dtype(DType::F32)?;
        logits.to_vec2::<f32>()
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
}

impl Forward for Transformer {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let mut out = self.forward_batch(&mut [(tokens, cache)])?;
        Ok(out.pop().expect("one segment"))
    }

    fn forward_batch(&self, segs: &mut [(&[u32], &mut KvCache)]) -> Result<Vec<Vec<f32>>> {
        for (t, _) in segs.iter() {
            self.check(t)?;
        }
        let _turn = self.step_lock.map(|i| GPU_STEP_LOCKS[i].lock().unwrap_or_else(|p| p.into_inner()));
        let before: Vec<usize> = segs.iter().map(|(_, c)| c.len()).collect();
        let mut parts: Vec<Segment<'_>> = segs.iter_mut().map(|(t, c)| Segment { tokens: t, cache: c }).collect();
        let r = self.forward_inner(&mut parts);
        drop(parts);
        r.map_err(|e| {
            for ((_, c), b) in segs.iter_mut().zip(before) {
                c.truncate(b);
            }
            Error::Candle { context: "forward pass".into(), source: e }
        })
    }
}

impl Transformer {
    /// A quantized matmul (one place to swap kernels): the project's kernels for CPU weights of
    /// the types they implement (raw GGUF blocks read in place), candle's `forward` otherwise.
    fn mm(&self, w: &QMatMul, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.fast_cpu {
            crate::kernels::forward(w, x)
        } else {
            w.forward(x)
        }
    }

    /// Several weights over one input (q/k/v, gate/up): fused on the CPU fast path.
    fn mm_many(&self, ws: &[&QMatMul], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        if self.fast_cpu {
            crate::kernels::forward_many(ws, x)
        } else {
            ws.iter().map(|w| w.forward(x)).collect()
        }
    }
}
