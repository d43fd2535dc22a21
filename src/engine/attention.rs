//! CPU attention over an f16 KV cache with llama.cpp's CPU rounding points (its default,
//! non-flash path): the query is rounded to f16 like the keys, scores are f32 dot products,
//! softmax in f32 with an f64 sum, the weights rounded to f16 before the f32 weighted sum of f16
//! values. Matching those points keeps greedy decoding on llama.cpp's path through most
//! near-ties. Memory is O(context) per query row; the attention matrix is never materialised.

use half::f16;
use rayon::prelude::*;

/// Shapes and positions of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Rows allocated per KV head in the cache.
    pub capacity: usize,
    /// Queries in this call, at positions `pos..pos + seq`.
    pub seq: usize,
    pub pos: usize,
    pub window: Option<usize>,
    pub scale: f32,
}

/// `q`: `[n_head, seq, head_dim]`; `k`, `v`: `[n_kv_head, capacity, head_dim]` holding every
/// position up to `pos + seq`; `out`: `[seq, n_head, head_dim]`.
pub fn attention(s: &AttnShape, q: &[f32], k: &[f16], v: &[f16], out: &mut [f32]) {
    let d = s.head_dim;
    let n_rep = s.n_head / s.n_kv_head;
    assert_eq!(q.len(), s.n_head * s.seq * d);
    assert_eq!(out.len(), s.n_head * s.seq * d);
    assert!(k.len() >= s.n_kv_head * s.capacity * d && v.len() >= s.n_kv_head * s.capacity * d);
    // One task per (query position, head): rows of `out` are disjoint.
    out.par_chunks_mut(d).enumerate().for_each(|(row, o)| {
        let (i, h) = (row / s.n_head, row % s.n_head);
        let kvh = h / n_rep;
        let qp = s.pos + i;
        let first = s.window.map_or(0, |w| (qp + 1).saturating_sub(w));
        let qrow = &q[(h * s.seq + i) * d..(h * s.seq + i + 1) * d];
        let q16: Vec<f32> = qrow.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        let base = kvh * s.capacity * d;
        let scores: Vec<f32> = (first..=qp)
            .map(|kp| {
                let krow = &k[base + kp * d..base + (kp + 1) * d];
                let mut dot = 0f32;
                for (a, b) in q16.iter().zip(krow) {
                    dot += a * b.to_f32();
                }
                dot * s.scale
            })
            .collect();
        let mx = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = scores.iter().map(|x| (x - mx).exp()).collect();
        let sum: f64 = e.iter().map(|&x| x as f64).sum();
        let inv = (1.0 / sum) as f32;
        o.fill(0.0);
        for (kp, w) in (first..=qp).zip(&e) {
            let w16 = f16::from_f32(w * inv).to_f32();
            let vrow = &v[base + kp * d..base + (kp + 1) * d];
            for (o, b) in o.iter_mut().zip(vrow) {
                *o += w16 * b.to_f32();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain softmax attention in f64 over the same (f16-rounded) inputs.
    fn reference(s: &AttnShape, q: &[f32], k: &[f16], v: &[f16]) -> Vec<f32> {
        let d = s.head_dim;
        let mut out = vec![0f32; s.seq * s.n_head * d];
        for i in 0..s.seq {
            for h in 0..s.n_head {
                let kvh = h / (s.n_head / s.n_kv_head);
                let qp = s.pos + i;
                let first = s.window.map_or(0, |w| (qp + 1).saturating_sub(w));
                let qr = &q[(h * s.seq + i) * d..][..d];
                let scores: Vec<f64> = (first..=qp)
                    .map(|kp| {
                        let kr = &k[(kvh * s.capacity + kp) * d..][..d];
                        qr.iter().zip(kr).map(|(a, b)| *a as f64 * b.to_f64()).sum::<f64>() * s.scale as f64
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|x| (x - mx).exp()).collect();
                let tot: f64 = w.iter().sum();
                for j in 0..d {
                    let val: f64 = (first..=qp).zip(&w).map(|(kp, wi)| wi * v[(kvh * s.capacity + kp) * d + j].to_f64()).sum();
                    out[(i * s.n_head + h) * d + j] = (val / tot) as f32;
                }
            }
        }
        out
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_plain_softmax_attention_with_gqa_and_windows() {
        for (window, pos, seq) in [(None, 0, 5), (None, 7, 1), (Some(3), 2, 6), (Some(4), 9, 1)] {
            let s = AttnShape { n_head: 4, n_kv_head: 2, head_dim: 8, capacity: 16, seq, pos, window, scale: 0.35 };
            let q = pseudo(s.n_head * seq * 8, 1);
            let k: Vec<f16> = pseudo(2 * 16 * 8, 2).into_iter().map(f16::from_f32).collect();
            let v: Vec<f16> = pseudo(2 * 16 * 8, 3).into_iter().map(f16::from_f32).collect();
            let mut out = vec![0f32; q.len()];
            attention(&s, &q, &k, &v, &mut out);
            let r = reference(&s, &q, &k, &v);
            for (a, b) in out.iter().zip(&r) {
                assert!((a - b).abs() < 5e-3, "window {window:?} pos {pos}: {a} vs {b}");
            }
        }
    }
}
