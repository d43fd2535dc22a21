//! Token log-probabilities, as OpenAI's `logprobs` / `top_logprobs` and llama-server's `n_probs`
//! report them: the log-softmax of the model's raw logits (before temperature, penalties or
//! truncation, so they describe the model, not the sampler), for the chosen token and the `top`
//! most likely ones. Also the log-probability of each prompt token given the tokens before it
//! (`echo` with `logprobs`, the loglikelihood lm-evaluation-harness asks for), computed chunk by
//! chunk so that no more than one chunk's logits are held at a time.

use crate::engine::decode::Forward;
use crate::engine::kv_cache::KvCache;
use crate::error::{Error, Result};

/// The most alternatives one token may report (OpenAI's cap for chat is 20).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Prompt rows scored per forward pass.
const SCORE_CHUNK: usize = 64;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// The `top` most likely tokens, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// log Σ exp(x) over the logits.
fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// The log-probability of `id` and of the `top` most likely tokens under `logits`.
pub fn token_logprob(logits: &[f32], id: u32, top: usize) -> TokenLogprob {
    let lse = log_sum_exp(logits);
    let top = top.min(MAX_TOP_LOGPROBS).min(logits.len());
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &x) in logits.iter().enumerate() {
            if best.len() < top || x > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, y)| y >= x);
                best.insert(at, (i as u32, x));
                best.truncate(top);
            }
        }
    }
    let at = |i: u32| logits.get(i as usize).copied().unwrap_or(f32::NEG_INFINITY) - lse;
    TokenLogprob { id, logprob: at(id), top: best.into_iter().map(|(i, x)| (i, x - lse)).collect() }
}

/// For each token of `ids` after the first, its log-probability given the tokens before it (and
/// the `top` alternatives at that position), from a fresh `cache` (at least `ids.len()` positions).
pub fn score(model: &dyn Forward, ids: &[u32], top: usize, cache: &mut KvCache) -> Result<Vec<TokenLogprob>> {
    if ids.len() > cache.capacity() {
        return Err(Error::InvalidRequest(format!("{} prompt tokens to score; the cache holds {}", ids.len(), cache.capacity())));
    }
    let mut out = Vec::with_capacity(ids.len().saturating_sub(1));
    let mut start = cache.len();
    while start < ids.len() {
        let chunk = &ids[start..(start + SCORE_CHUNK).min(ids.len())];
        let rows = model.forward_rows(&mut [(chunk, &mut *cache)], &[chunk.len()])?;
        let rows = rows.into_iter().next().ok_or_else(|| Error::Other("forward returned no logits".into()))?;
        for (j, logits) in rows.iter().enumerate() {
            if let Some(&next) = ids.get(start + j + 1) {
                out.push(token_logprob(logits, next, top));
            }
        }
        start += chunk.len();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_a_direct_computation_and_top_is_sorted() {
        let l = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        let t = token_logprob(&l, 4, 3);
        assert!((t.logprob as f64 - (0.5f64.exp() / z).ln()).abs() < 1e-6);
        assert_eq!(t.top.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 3, 0], "ties keep the lower id first");
        let total: f64 = l.iter().enumerate().map(|(i, _)| (token_logprob(&l, i as u32, 0).logprob as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(token_logprob(&l, 9, 0).logprob == f32::NEG_INFINITY, "an id outside the vocabulary has no probability");
    }
}
