//! Attention of one layer: the q/k/v projections, q/k norms and RoPE over every row of a step,
//! then per segment either the CPU fast path (llama.cpp-style attention straight over the f16
//! cache, `engine::attention`) or candle's tensor ops (mask + softmax, the code a GPU runs).
//! The device path's masks are built once per forward pass, one `[seq, kv_len]` per segment and
//! window, and shared by every layer and query head (see [`PassMasks`]).

use std::sync::atomic::Ordering;

use candle_core::Tensor;

use super::rope::PassRope;
use super::stacked::split;
use super::{Layer, Segment, Transformer};
use crate::engine::attention::{self, AttnShape};
use crate::engine::KvCache;
use crate::kernels::with_cpu_f32;
use crate::model::arch::RopeStyle;
use crate::model::row_ops::rope_cpu;

/// The first cache position a query at `pos` (the first of its step) attends to under `window`.
fn first_key(pos: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (pos + 1).saturating_sub(w))
}

/// The device path's additive masks of one forward pass: per segment, one per distinct window
/// of the model's layers (None: causal only), absent where nothing is masked (one query over
/// keys all in its window).
pub(super) struct PassMasks(Vec<Vec<(Option<usize>, Option<Tensor>)>>);

impl PassMasks {
    fn get(&self, seg: usize, window: Option<usize>) -> Option<&Tensor> {
        self.0[seg].iter().find(|(w, _)| *w == window).and_then(|(_, m)| m.as_ref())
    }
}

impl Transformer {
    /// The masks of a pass over `segs` (nothing on the CPU fast path, which needs none).
    pub(super) fn pass_masks(&self, segs: &[Segment<'_>]) -> candle_core::Result<PassMasks> {
        if self.fast_cpu {
            return Ok(PassMasks(Vec::new()));
        }
        let mut windows: Vec<Option<usize>> = Vec::new();
        for l in &self.layers {
            if !windows.contains(&l.window) {
                windows.push(l.window);
            }
        }
        let mut out = Vec::with_capacity(segs.len());
        for sg in segs {
            let (seq, pos) = (sg.tokens.len(), sg.cache.len());
            let mut per = Vec::with_capacity(windows.len());
            for &w in &windows {
                let kv_start = first_key(pos, w);
                let kv_len = pos + seq - kv_start;
                let needed = seq > 1 || w.is_some_and(|w| kv_len > w);
                per.push((w, needed.then(|| self.mask(pos, seq, kv_start, kv_len, w)).transpose()?));
            }
            out.push(per);
        }
        Ok(PassMasks(out))
    }

    /// Additive mask `[seq, kv_len]` for queries at `pos..pos+seq` over keys
    /// `kv_start..kv_start+kv_len`.
    fn mask(&self, pos: usize, seq: usize, kv_start: usize, kv_len: usize, window: Option<usize>) -> candle_core::Result<Tensor> {
        let mut m = Vec::with_capacity(seq * kv_len);
        for i in 0..seq {
            let qp = pos + i;
            for j in 0..kv_len {
                let kp = kv_start + j;
                let visible = kp <= qp && window.is_none_or(|w| qp - kp < w);
                m.push(if visible { 0f32 } else { f32::NEG_INFINITY });
            }
        }
        self.mask_bytes.fetch_add((m.len() * std::mem::size_of::<f32>()) as u64, Ordering::Relaxed);
        Tensor::from_vec(m, (seq, kv_len), &self.device)
    }

    /// Bytes of attention masks built on the host so far (the device path uploads each).
    pub fn mask_bytes_built(&self) -> u64 {
        self.mask_bytes.load(Ordering::Relaxed)
    }

    /// Attention for every segment of `x` (`[1, rows, n_embd]`, segments' rows back to back):
    /// projections run once over all rows, each segment attends over its own cache.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention(&self, l: &Layer, li: usize, x: &Tensor, segs: &mut [Segment<'_>], rope: &PassRope, masks: &PassMasks) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        // Each step takes its input by value, so a prefill's intermediate copies are freed as
        // soon as the next one exists (activations are most of a small model's working memory).
        // Every segment's rows at once: heads first, norms and RoPE (per-row positions) in one
        // pass each, then attention per segment over its own cache.
        let rows = x.dim(1)?;
        let (q, k, v) = {
            // Each group's output `[1, rows, heads * d]` → heads first, then each part's heads
            // (one copy per part, whether the parts were stacked or not).
            let mut heads = Vec::with_capacity(3);
            for (y, part_rows) in self.project(&l.qkv, x)? {
                let n = y.dim(2)? / c.head_dim;
                let y = y.reshape((1, rows, n, c.head_dim))?.transpose(1, 2)?;
                for part in split(&y, 1, part_rows, c.head_dim)? {
                    // The device path's values stay a strided view: their only use is the cache's
                    // f16 cast, which reads it in place (one copy fewer per layer).
                    heads.push(if heads.len() == 2 && !self.fast_cpu { part } else { part.contiguous()? });
                }
            }
            let [q, k, v]: [Tensor; 3] = heads.try_into().expect("three projections");
            (q, k, v)
        };
        let norm = |t: Tensor, w: Option<&Tensor>| match w {
            Some(w) => self.rms_norm(&t, w),
            None => Ok(t),
        };
        let (q, k) = (norm(q, l.qk_norm.as_ref().map(|n| &n.0))?, norm(k, l.qk_norm.as_ref().map(|n| &n.1))?);
        let rot = |t: Tensor, (cos, sin): (&Tensor, &Tensor)| {
            if self.fast_cpu {
                return rope_cpu(&t, cos, sin, c.rope_style);
            }
            match c.rope_style {
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&t, cos, sin),
                RopeStyle::Neox => candle_nn::rotary_emb::rope(&t, cos, sin),
            }
        };
        // On the device path the queries come out scaled by the attention scale (see PassRope).
        let (q, k) = (rot(q, rope.for_queries())?, rot(k, (&rope.cos, &rope.sin))?);
        let out = if self.fast_cpu {
            self.attention_cpu(l, li, &q, &k, &v, segs)?
        } else {
            debug_assert!(rope.q.is_some(), "the device path's queries need scaled RoPE tables");
            let mut outs = Vec::with_capacity(segs.len());
            let mut off = 0;
            for (si, sg) in segs.iter_mut().enumerate() {
                let (seq, pos) = (sg.tokens.len(), sg.cache.len());
                let part = |t: &Tensor| t.narrow(2, off, seq)?.contiguous();
                let mask = masks.get(si, l.window);
                outs.push(self.attention_device(l, li, &part(&q)?, &part(&k)?, &v.narrow(2, off, seq)?, pos, sg.cache, mask)?);
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
                            softcap: c.attn_softcap,
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
    fn attention_device(&self, l: &Layer, li: usize, q: &Tensor, k: &Tensor, v: &Tensor, pos: usize, cache: &mut KvCache, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let (b, _, seq, _) = q.dims4()?;
        let (mut ka, mut va) = cache.append_device(li, k, v).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let total = pos + seq;
        let kv_start = first_key(pos, l.window);
        if kv_start > 0 {
            ka = ka.narrow(2, kv_start, total - kv_start)?;
            va = va.narrow(2, kv_start, total - kv_start)?;
        }
        let kv_len = total - kv_start;
        let n_rep = c.n_head / c.n_kv_head;
        // Group query heads by their KV head: [b, n_kv, n_rep * seq, d], no KV copies.
        let qg = q.reshape((b, c.n_kv_head, n_rep * seq, c.head_dim))?;
        // The queries carry the attention scale already (their RoPE tables are scaled).
        let mut att = qg.matmul(&ka.contiguous()?.t()?)?;
        if let Some(cap) = c.attn_softcap {
            att = ((att / cap as f64)?.tanh()? * cap as f64)?;
        }
        // The pass's `[seq, kv_len]` mask, broadcast over the KV heads and each one's query heads.
        let att = match mask {
            Some(m) => att.reshape((b, c.n_kv_head, n_rep, seq, kv_len))?.broadcast_add(m)?.reshape((b, c.n_kv_head, n_rep * seq, kv_len))?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let out = att.matmul(&va.contiguous()?)?;
        out.reshape((b, c.n_head, seq, c.head_dim))?.transpose(1, 2)?.reshape((b, seq, c.n_head * c.head_dim))
    }
}
