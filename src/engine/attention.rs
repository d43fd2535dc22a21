//! CPU attention over an f16 KV cache with llama.cpp's CPU rounding points (its default,
//! non-flash path): the query is rounded to f16 like the keys, scores are f32 dot products,
//! softmax in f32 with an f64 sum, the weights rounded to f16 before the f32 weighted sum of f16
//! values. Matching those points keeps greedy decoding on llama.cpp's path through most
//! near-ties (`tests/greedy_parity.rs`).
//!
//! The arithmetic is fixed — every dot product and weighted sum accumulates in order, one
//! rounded multiply and one rounded add per term — and the SIMD path keeps it bit for bit: keys
//! are stored in blocks of 8 positions, dimension-major (`kv_cache::KEY_BLOCK`), so one vector
//! holds 8 positions' partial scores, and the weighted sum of values runs across the head
//! dimension. `attention_avx2` has the AVX2 loops; the scalar ones here are the reference.
//! Memory is O(context) per query row, taken from a per-thread scratch buffer.

use half::f16;
use std::cell::RefCell;

use crate::kernels::pool::{pool, SyncPtr};

use super::kv_cache::{key_rows, KEY_BLOCK};

/// Shapes and positions of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Positions allocated per KV head in the cache.
    pub capacity: usize,
    /// Queries in this call, at positions `pos..pos + seq`.
    pub seq: usize,
    pub pos: usize,
    /// Rows per head in `q` (≥ `seq`: a batch may hold other sequences' rows) and the first of
    /// this call's.
    pub q_rows: usize,
    pub q_off: usize,
    pub window: Option<usize>,
    pub scale: f32,
    /// Gemma 2's logit soft-capping: scores become `cap · tanh(score / cap)` after the scale.
    pub softcap: Option<f32>,
}

/// The two inner loops, in a SIMD or a scalar version with identical results.
#[derive(Clone, Copy)]
pub(super) struct Ops {
    /// Scores of the key blocks `k` (`[blocks, d, 8]`) against `q`: `out[p] = Σ_j q[j]·k_p[j]`,
    /// summed in order of `j`; `out.len()` = 8 × blocks.
    pub dots: fn(q: &[f32], k: &[f16], out: &mut [f32]),
    /// `out[j] += w[p] · v[p·d + j]` for each `p` in order.
    pub accumulate: fn(w: &[f32], v: &[f16], out: &mut [f32]),
}

fn ops() -> Ops {
    #[cfg(target_arch = "x86_64")]
    if super::attention_avx2::available() {
        return super::attention_avx2::OPS;
    }
    SCALAR
}

pub(super) const SCALAR: Ops = Ops { dots: dots_scalar, accumulate: accumulate_scalar };

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `q`: `[n_head, q_rows, head_dim]` (this call's rows at `q_off..q_off + seq`); `k`: key blocks `[n_kv_head, key_rows(capacity) / 8,
/// head_dim, 8]`, `v`: `[n_kv_head, capacity, head_dim]`, both holding every position up to
/// `pos + seq`; `out`: `[seq, n_head, head_dim]`.
pub fn attention(s: &AttnShape, q: &[f32], k: &[f16], v: &[f16], out: &mut [f32]) {
    let d = s.head_dim;
    let krows = key_rows(s.capacity);
    assert!(q.len() >= s.n_head * s.q_rows * d && s.q_off + s.seq <= s.q_rows);
    assert_eq!(out.len(), s.n_head * s.seq * d);
    assert!(k.len() >= s.n_kv_head * krows * d && v.len() >= s.n_kv_head * s.capacity * d);
    assert!(s.pos + s.seq <= s.capacity);
    let ops = ops();
    // Rows (query position, head) of `out` are disjoint; tasks take contiguous runs of rows on
    // the kernels' pool (the threads that are already awake for the matmuls around this).
    let rows = s.seq * s.n_head;
    let per_task = rows.div_ceil(pool().threads() * 4).max(1);
    let o = SyncPtr::new(out.as_mut_ptr());
    let task = |t: usize| {
        for row in t * per_task..((t + 1) * per_task).min(rows) {
            let (i, h) = (row / s.n_head, row % s.n_head);
            let kvh = h / (s.n_head / s.n_kv_head);
            let qrow = &q[(h * s.q_rows + s.q_off + i) * d..][..d];
            let (kh, vh) = (&k[kvh * krows * d..][..krows * d], &v[kvh * s.capacity * d..][..s.capacity * d]);
            let qp = s.pos + i;
            let first = s.window.map_or(0, |w| (qp + 1).saturating_sub(w));
            // SAFETY: each row index is visited by exactly one task; `out` has `rows * d` values.
            let orow = unsafe { std::slice::from_raw_parts_mut(o.get().add(row * d), d) };
            SCRATCH.with_borrow_mut(|buf| attend_row(ops, s, qrow, kh, vh, first, qp, buf, orow));
        }
    };
    pool().run(rows.div_ceil(per_task), &task);
}

/// One query row against positions `first..=qp` of one KV head.
#[allow(clippy::too_many_arguments)]
fn attend_row(ops: Ops, s: &AttnShape, q: &[f32], k: &[f16], v: &[f16], first: usize, qp: usize, buf: &mut Vec<f32>, out: &mut [f32]) {
    let d = s.head_dim;
    let (b0, b1) = (first / KEY_BLOCK, (qp + 1).div_ceil(KEY_BLOCK));
    buf.clear();
    buf.resize(d + (b1 - b0) * KEY_BLOCK, 0.0);
    let (q16, scores) = buf.split_at_mut(d);
    for (a, &x) in q16.iter_mut().zip(q) {
        *a = f16::from_f32(x).to_f32();
    }
    (ops.dots)(q16, &k[b0 * KEY_BLOCK * d..b1 * KEY_BLOCK * d], scores);
    let e = &mut scores[first - b0 * KEY_BLOCK..qp + 1 - b0 * KEY_BLOCK];
    let mut mx = f32::NEG_INFINITY;
    match s.softcap {
        None => {
            for x in e.iter_mut() {
                *x *= s.scale;
                mx = mx.max(*x);
            }
        }
        Some(cap) => {
            for x in e.iter_mut() {
                *x = cap * (*x * s.scale / cap).tanh();
                mx = mx.max(*x);
            }
        }
    }
    let mut sum = 0f64;
    for x in e.iter_mut() {
        *x = (*x - mx).exp();
        sum += *x as f64;
    }
    let inv = (1.0 / sum) as f32;
    for x in e.iter_mut() {
        *x = f16::from_f32(*x * inv).to_f32();
    }
    out.fill(0.0);
    (ops.accumulate)(e, &v[first * d..(qp + 1) * d], out);
}

pub(super) fn dots_scalar(q: &[f32], k: &[f16], out: &mut [f32]) {
    let d = q.len();
    for (blk, o) in k.chunks_exact(d * KEY_BLOCK).zip(out.chunks_exact_mut(KEY_BLOCK)) {
        for (t, o) in o.iter_mut().enumerate() {
            let mut dot = 0f32;
            for (j, &a) in q.iter().enumerate() {
                dot += a * blk[j * KEY_BLOCK + t].to_f32();
            }
            *o = dot;
        }
    }
}

pub(super) fn accumulate_scalar(w: &[f32], v: &[f16], out: &mut [f32]) {
    let d = out.len();
    for (&wp, row) in w.iter().zip(v.chunks_exact(d)) {
        for (o, b) in out.iter_mut().zip(row) {
            *o += wp * b.to_f32();
        }
    }
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
