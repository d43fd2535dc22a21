//! The decode loop: prefill the prompt in chunks, then sample one token at a time until the
//! caller's callback says stop or `max_tokens` is reached. Timing is measured here, where the
//! work happens, so every caller reports the same numbers.

use std::time::Instant;

use crate::engine::kv_cache::KvCache;
use crate::engine::sampler::Sampler;
use crate::error::{Error, Result};

/// A model that can be run one step: feed `tokens` at position `cache.len()`, return the logits
/// of the last position.
pub trait Forward {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>>;

    /// One step over several sequences, each with its own cache; the last position's logits of
    /// each. Models that can batch rows override this (weights are read once for all).
    fn forward_batch(&self, segs: &mut [(&[u32], &mut KvCache)]) -> Result<Vec<Vec<f32>>> {
        segs.iter_mut().map(|(t, c)| self.forward(t, c)).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DecodeStats {
    pub prompt_tokens: usize,
    /// Prompt tokens actually computed (a forked cache may already hold a prefix).
    pub prefilled_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    /// From the start of the call to the first sampled token.
    pub ttft_secs: f64,
    /// CPU kernel threads when the prefill started: the generation's share of the cores while
    /// others run beside it (see `kernels::pool::Tenant`).
    pub threads: usize,
}

impl DecodeStats {
    pub fn prefill_tps(&self) -> f64 {
        if self.prefill_secs > 0.0 { self.prefilled_tokens as f64 / self.prefill_secs } else { 0.0 }
    }

    /// Tokens per second after the first one (the first comes out of the prefill).
    pub fn decode_tps(&self) -> f64 {
        let n = self.generated_tokens.saturating_sub(1);
        if self.decode_secs > 0.0 && n > 0 { n as f64 / self.decode_secs } else { 0.0 }
    }
}

/// The prompt goes to the model in one `forward`; a model whose working memory grows with the
/// rows of a step splits it into passes itself.
pub struct DecodeOptions {
    pub max_tokens: usize,
}

/// Run generation. `cache` may already hold a prefix of `prompt` (a forked prefill).
/// `on_token` sees every sampled token in order and may stop the loop; the token it stops on is
/// counted as generated and returned.
pub fn decode_loop(
    model: &dyn Forward,
    cache: &mut KvCache,
    prompt: &[u32],
    sampler: &mut Sampler,
    opts: &DecodeOptions,
    on_token: &mut dyn FnMut(u32) -> Result<Control>,
) -> Result<(Vec<u32>, DecodeStats)> {
    if prompt.is_empty() {
        return Err(Error::InvalidRequest("the prompt is empty (no tokens to start from)".into()));
    }
    let start = Instant::now();
    // Always recompute at least the last prompt token: its logits start the generation.
    if cache.len() >= prompt.len() {
        cache.truncate(prompt.len() - 1);
    }
    let threads = crate::kernels::pool::pool().threads();
    let mut stats = DecodeStats { prompt_tokens: prompt.len(), threads, ..Default::default() };
    let rest = &prompt[cache.len()..];
    let mut logits = model.forward(rest, cache)?;
    stats.prefilled_tokens = rest.len();
    stats.prefill_secs = start.elapsed().as_secs_f64();

    let mut history: Vec<u32> = prompt.to_vec();
    let mut out = Vec::new();
    let decode_start = Instant::now();
    while out.len() < opts.max_tokens {
        let tok = sampler.sample(&mut logits, &history);
        if out.is_empty() {
            stats.ttft_secs = start.elapsed().as_secs_f64();
        }
        out.push(tok);
        history.push(tok);
        if on_token(tok)? == Control::Stop || out.len() >= opts.max_tokens {
            break;
        }
        logits = model.forward(&[tok], cache)?;
    }
    stats.generated_tokens = out.len();
    stats.decode_secs = decode_start.elapsed().as_secs_f64() - (stats.ttft_secs - stats.prefill_secs).max(0.0);
    Ok((out, stats))
}

/// Several samples of one prompt: the prompt is prefilled once into `base`, the cache is forked
/// per sample, and every step feeds all unfinished samples through one batched forward (the
/// weights are read once per step for all of them). `on_token(sample, token)` may stop a sample.
pub fn decode_samples(
    model: &dyn Forward,
    mut base: KvCache,
    prompt: &[u32],
    samplers: &mut [Sampler],
    opts: &DecodeOptions,
    on_token: &mut dyn FnMut(usize, u32) -> Result<Control>,
) -> Result<Vec<(Vec<u32>, DecodeStats)>> {
    if prompt.is_empty() {
        return Err(Error::InvalidRequest("the prompt is empty (no tokens to start from)".into()));
    }
    let n = samplers.len();
    let threads = crate::kernels::pool::pool().threads();
    let start = Instant::now();
    let logits = model.forward(prompt, &mut base)?;
    let prefilled = prompt.len();
    let prefill_secs = start.elapsed().as_secs_f64();
    let mut caches = (1..n).map(|_| base.fork(base.capacity())).collect::<Result<Vec<_>>>()?;
    caches.insert(0, base);
    let mut logits: Vec<Vec<f32>> = vec![logits; n];
    let mut hist: Vec<Vec<u32>> = vec![prompt.to_vec(); n];
    let mut outs: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut ttft = vec![0f64; n];
    let mut active: Vec<bool> = vec![true; n];
    let decode_start = Instant::now();
    loop {
        let mut step: Vec<usize> = Vec::new();
        for i in 0..n {
            if !active[i] {
                continue;
            }
            let tok = samplers[i].sample(&mut logits[i], &hist[i]);
            if outs[i].is_empty() {
                ttft[i] = start.elapsed().as_secs_f64();
            }
            outs[i].push(tok);
            hist[i].push(tok);
            if on_token(i, tok)? == Control::Stop || outs[i].len() >= opts.max_tokens {
                active[i] = false;
            } else {
                step.push(i);
            }
        }
        if step.is_empty() {
            break;
        }
        let toks: Vec<[u32; 1]> = step.iter().map(|&i| [outs[i][outs[i].len() - 1]]).collect();
        let mut segs: Vec<(&[u32], &mut KvCache)> = Vec::with_capacity(step.len());
        let mut rest: &mut [KvCache] = &mut caches;
        let mut taken = 0;
        for (k, &i) in step.iter().enumerate() {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - taken);
            let (c, tail) = tail.split_first_mut().expect("sample index in range");
            segs.push((&toks[k][..], c));
            rest = tail;
            taken = i + 1;
        }
        let out = model.forward_batch(&mut segs)?;
        for (k, l) in out.into_iter().enumerate() {
            logits[step[k]] = l;
        }
    }
    let decode_secs = decode_start.elapsed().as_secs_f64();
    Ok(outs
        .into_iter()
        .enumerate()
        .map(|(i, ids)| {
            let stats = DecodeStats {
                prompt_tokens: prompt.len(),
                prefilled_tokens: prefilled,
                generated_tokens: ids.len(),
                prefill_secs,
                decode_secs,
                ttft_secs: ttft[i],
                threads,
            };
            (ids, stats)
        })
        .collect())
}
