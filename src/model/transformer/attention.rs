//! Attention of one layer: the q/k/v projections, q/k norms and RoPE over every row of a step,
//! then per segment either the CPU fast path (llama.cpp-style attention straight over the f16
//! cache, `engine::attention`) or candle's tensor ops (mask + softmax, the code a GPU runs).

use candle_core::Tensor;

use super::{Layer, Segment, Transformer};
use crate::engine::attention::{self, AttnShape};
use crate::engine::KvCache;
use crate::kernels::with_cpu_f32;
use crate::model::arch::RopeStyle;
use crate::model::row_ops::rope_cpu;

impl Transformer {
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
    pub(super) fn attention(&self, l: &Layer, li: usize, x: &Tensor, segs: &mut [Segment<'_>], rope: &(Tensor, Tensor)) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        // Each step takes its input by value, so a prefill's intermediate copies are freed as
        // soon as the next one exists (activations are most of a small model's working memory).
        let (q, k, v) = {
            let [mut q, mut k, mut v]: [Tensor; 3] =
                self.mm_many(&[&l.wq, &l.wk, &l.wv], x)?.try_into().expect("three projections");
            if let Some((bq, bk, bv)) = &l.bias {
                q = q.broadcast_add(bq)?;
                k = k.broadcast_add(bk)?;
                v = v.broadcast_add(bv)?;
            }
            // Every segment's rows at once: heads first, norms and RoPE (per-row positions) in
            // one pass each, then attention per segment over its own cache.
            let rows = x.dim(1)?;
            let heads = |t: Tensor, n: usize| t.reshape((1, rows, n, c.head_dim))?.transpose(1, 2)?.contiguous();
            (heads(q, c.n_head)?, heads(k, c.n_kv_head)?, heads(v, c.n_kv_head)?)
        };
        let norm = |t: Tensor, w: Option<&Tensor>| match w {
            Some(w) => self.rms_norm(&t, w),
            None => Ok(t),
        };
        let (q, k) = (norm(q, l.qk_norm.as_ref().map(|n| &n.0))?, norm(k, l.qk_norm.as_ref().map(|n| &n.1))?);
        let (cos, sin) = rope;
        let rot = |t: Tensor| {
            if self.fast_cpu {
                return rope_cpu(&t, cos, sin, c.rope_style);
            }
            match c.rope_style {
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&t, cos, sin),
                RopeStyle::Neox => candle_nn::rotary_emb::rope(&t, cos, sin),
            }
        };
        let (q, k) = (rot(q)?, rot(k)?);
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
        let mut att = (qg.matmul(&ka.contiguous()?.t()?)? * c.attn_scale as f64)?;
        if let Some(cap) = c.attn_softcap {
            att = ((att / cap as f64)?.tanh()? * cap as f64)?;
        }
        let att = if seq > 1 || l.window.is_some_and(|w| kv_len > w) {
            att.broadcast_add(&self.mask(pos, seq, kv_start, kv_len, l.window)?)?
        } else {
            att
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let out = att.matmul(&va.contiguous()?)?;
        out.reshape((b, c.n_head, seq, c.head_dim))?.transpose(1, 2)?.reshape((b, seq, c.n_head * c.head_dim))
    }
}
