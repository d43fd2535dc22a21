//! Prompt rows per forward pass (the "ubatch"): how many rows a model's forward takes at once, and
//! the plan that splits a batched step's segments into such passes. A prompt's activations grow
//! with its rows (residual, norms, q/k/v, gate/up in f32), so long prompts go through in pieces;
//! the piece is sized to the model so a small model's activations stay small beside its weights.

use std::ops::Range;

use crate::model::arch::Config;

/// The fewest and the most rows of one pass (multiples of the kernels' 8-row tile).
pub const MIN_ROWS: usize = 32;
pub const MAX_ROWS: usize = 512;

/// On the CPU one pass's activations are kept near `weights / ACTIVATION_SHARE`.
const ACTIVATION_SHARE: u64 = 64;

/// f32 activation bytes per prompt row at the widest point of a layer: the residual, its norm,
/// q/k/v and their rotated copies, the attention output, gate, up and their product.
pub fn activation_bytes_per_row(c: &Config) -> usize {
    let q_dim = c.n_head * c.head_dim;
    let kv_dim = c.n_kv_head * c.head_dim;
    (3 * c.n_embd + 2 * (q_dim + 2 * kv_dim) + 3 * c.n_ff) * 4
}

/// Rows per pass for a model with `weight_bytes` of weights. On the CPU: activations near 1/64
/// of the weights, between [`MIN_ROWS`] and [`MAX_ROWS`], a multiple of 8 (from 32 rows on, the
/// kernels' speed does not depend on it). On a GPU: [`MAX_ROWS`], like llama.cpp's default
/// ubatch: a GPU needs many rows per kernel launch to be busy, and its memory is not the host's.
/// `MOA_UBATCH=N` overrides both (for measuring).
pub fn prefill_rows(c: &Config, weight_bytes: u64, on_cpu: bool) -> usize {
    if let Some(n) = std::env::var("MOA_UBATCH").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0) {
        return n;
    }
    if !on_cpu {
        return MAX_ROWS;
    }
    let per_row = activation_bytes_per_row(c).max(1) as u64;
    let rows = (weight_bytes / ACTIVATION_SHARE / per_row) as usize;
    rows.clamp(MIN_ROWS, MAX_ROWS) / 8 * 8
}

/// One pass: `(segment index, its token range)` pieces, at most `rows` tokens in all.
pub type Pass = Vec<(usize, Range<usize>)>;

/// Split segments of `lengths` tokens into passes of at most `rows` tokens, in order: a segment
/// longer than what is left of a pass continues at the start of the next one. Every pass but the
/// last is full, and each segment's pieces are consecutive and in order.
pub fn plan(lengths: &[usize], rows: usize) -> Vec<Pass> {
    let rows = rows.max(1);
    let mut passes = Vec::new();
    let mut cur: Pass = Vec::new();
    let mut room = rows;
    for (i, &len) in lengths.iter().enumerate() {
        let mut start = 0;
        while start < len {
            let take = (len - start).min(room);
            cur.push((i, start..start + take));
            start += take;
            room -= take;
            if room == 0 {
                passes.push(std::mem::take(&mut cur));
                room = rows;
            }
        }
    }
    if !cur.is_empty() {
        passes.push(cur);
    }
    passes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_keeps_every_token_once_in_order_within_the_limit() {
        for rows in [1, 3, 8, 32] {
            for lengths in [vec![1], vec![100], vec![1, 1, 1, 1], vec![5, 40, 1, 33, 7]] {
                let passes = plan(&lengths, rows);
                let mut fed = vec![0usize; lengths.len()];
                for (pi, p) in passes.iter().enumerate() {
                    let n: usize = p.iter().map(|(_, r)| r.len()).sum();
                    assert!(n <= rows && n > 0, "pass of {n} rows with limit {rows}");
                    if pi + 1 < passes.len() {
                        assert_eq!(n, rows, "only the last pass may be short");
                    }
                    for (s, r) in p {
                        assert_eq!(r.start, fed[*s], "segment {s} continues where it stopped");
                        fed[*s] = r.end;
                    }
                }
                assert_eq!(fed, lengths);
            }
        }
    }

    #[test]
    fn single_tokens_share_one_pass() {
        assert_eq!(plan(&[1, 1, 1, 1], 32), vec![vec![(0, 0..1), (1, 0..1), (2, 0..1), (3, 0..1)]]);
    }
}
