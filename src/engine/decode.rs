//! The decode loop: prefill the prompt in chunks, then sample tokens until the caller's callback
//! says stop or `max_tokens` is reached. With drafting on, each step feeds the last sampled token
//! plus a draft looked up in the context (`engine::draft`) and samples every verified row in
//! turn, keeping the draft up to its first mismatch and rolling the cache back past the rest: the
//! tokens are those of plain one-token steps at temperature 0 (a row's logits do not depend on
//! the rows beside it), and have the same distribution when sampling. Timing is measured here,
//! where the work happens, so every caller reports the same numbers.

use std::time::Instant;

use crate::engine::draft::{DraftLength, Lookup};
use crate::engine::kv_cache::KvCache;
use crate::engine::logprobs::{token_logprob, TokenLogprob};
use crate::engine::sampler::Sampler;
use crate::error::{Error, Result};

/// A model that can be run one step: feed `tokens` at position `cache.len()`, return the logits
/// of the last position.
pub trait Forward {
    /// One step over several sequences, each with its own cache (weights are read once for all):
    /// for segment `i`, the logits of its last `rows[i]` positions, in order (0 ≤ `rows[i]` ≤ its
    /// tokens). A row's logits do not depend on the other rows of the step.
    fn forward_rows(&self, segs: &mut [(&[u32], &mut KvCache)], rows: &[usize]) -> Result<Vec<Vec<Vec<f32>>>>;

    /// The last position's logits of one sequence.
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let mut out = self.forward_rows(&mut [(tokens, cache)], &[1])?;
        out.pop().and_then(|mut r| r.pop()).ok_or_else(|| Error::Other("forward returned no logits".into()))
    }

    /// The last position's logits of each of several sequences.
    fn forward_batch(&self, segs: &mut [(&[u32], &mut KvCache)]) -> Result<Vec<Vec<f32>>> {
        let ones = vec![1; segs.len()];
        let out = self.forward_rows(segs, &ones)?;
        out.into_iter().map(|mut r| r.pop().ok_or_else(|| Error::Other("forward returned no logits".into()))).collect()
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
    /// Tokens drafted from the context and verified, and how many of them were accepted.
    pub drafted_tokens: usize,
    pub accepted_tokens: usize,
    /// Decode forward passes (a verified draft is one pass for several tokens).
    pub decode_passes: usize,
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
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    pub max_tokens: usize,
    /// The longest draft looked up in the context (prompt and output) and verified in one
    /// pass; 0 decodes one token per step.
    pub max_draft: usize,
    /// Record each sampled token's log-probability and this many alternatives (None: off).
    pub logprobs: Option<usize>,
}

impl DecodeOptions {
    pub fn new(max_tokens: usize) -> Self {
        Self { max_tokens, max_draft: crate::engine::draft::MAX_DRAFT, logprobs: None }
    }
}

/// One sequence's decoding state between steps (also `engine::batch`'s).
pub(crate) struct Seq {
    hist: Vec<u32>,
    pub(crate) out: Vec<u32>,
    lookup: Option<Lookup>,
    /// Sampled, not yet fed; the draft fed after it in the current step.
    pending: u32,
    pub(crate) draft: Vec<u32>,
    /// Cache length before the current step.
    pub(crate) base: usize,
    pub(crate) active: bool,
    pub(crate) ttft: f64,
    pub(crate) drafted: usize,
    pub(crate) accepted: usize,
    /// `Some(top)`: each sampled token's log-probability (with `top` alternatives) goes to
    /// `logprobs`, one entry per token of `out`.
    want_logprobs: Option<usize>,
    pub(crate) logprobs: Vec<TokenLogprob>,
}

impl Seq {
    pub(crate) fn new(prompt: &[u32], draft: bool) -> Self {
        Self {
            hist: prompt.to_vec(),
            out: Vec::new(),
            lookup: draft.then(|| Lookup::new(prompt)),
            pending: 0,
            draft: Vec::new(),
            base: 0,
            active: true,
            ttft: 0.0,
            drafted: 0,
            accepted: 0,
            want_logprobs: None,
            logprobs: Vec::new(),
        }
    }

    /// Record log-probabilities of the sampled tokens (see [`DecodeOptions::logprobs`]).
    pub(crate) fn with_logprobs(mut self, top: Option<usize>) -> Self {
        self.want_logprobs = top;
        self
    }

    /// Sample from the rows of the last step (one per fed token) in order, up to the first
    /// token that is not the draft's; roll the cache back past what was not kept.
    pub(crate) fn take_rows(
        &mut self,
        rows: Vec<Vec<f32>>,
        cache: &mut KvCache,
        sampler: &mut Sampler,
        max_tokens: usize,
        start: &Instant,
        on_token: &mut dyn FnMut(u32) -> Result<Control>,
    ) -> Result<usize> {
        let mut kept = 0;
        for (i, mut logits) in rows.into_iter().enumerate() {
            // Greedy ignores the hint: no lookup then.
            let sampled = sampler.params().temperature > 0.0;
            let hint = self.lookup.as_ref().filter(|_| sampled).and_then(|l| l.next(&[])).map(|g| g.0);
            // The sampler reshapes the logits in place; log-probabilities describe the model's.
            let raw = self.want_logprobs.map(|top| (logits.clone(), top));
            let tok = sampler.sample_hinted(&mut logits, &self.hist, hint);
            if let Some((raw, top)) = raw {
                self.logprobs.push(token_logprob(&raw, tok, top));
            }
            if self.out.is_empty() {
                self.ttft = start.elapsed().as_secs_f64();
            }
            self.out.push(tok);
            self.hist.push(tok);
            if let Some(l) = &mut self.lookup {
                l.extend(&[tok]);
            }
            let matched = i < self.draft.len() && self.draft[i] == tok;
            kept += matched as usize;
            if on_token(tok)? == Control::Stop || self.out.len() >= max_tokens {
                self.active = false;
                break;
            }
            if !matched {
                break;
            }
        }
        self.drafted += self.draft.len();
        self.accepted += kept;
        // Positions of the pending token and the kept draft stay.
        cache.truncate(self.base + 1 + kept);
        self.pending = *self.out.last().expect("a token was sampled");
        Ok(kept)
    }

    /// Choose this step's draft (up to `k` tokens, within max tokens and the cache).
    pub(crate) fn plan(&mut self, k: usize, cache: &KvCache, max_tokens: usize) {
        self.base = cache.len();
        let room = max_tokens.saturating_sub(self.out.len() + 1).min(cache.capacity().saturating_sub(cache.len() + 1));
        self.draft = match &self.lookup {
            Some(l) if k.min(room) > 0 => l.chain(&[], k.min(room)),
            _ => Vec::new(),
        };
    }

    pub(crate) fn fed(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(1 + self.draft.len());
        v.push(self.pending);
        v.extend_from_slice(&self.draft);
        v
    }
}

/// Decode steps for several sequences of one model until each stops: every step feeds all active
/// sequences (their pending token and draft) through one batched forward. `first` holds each
/// sequence's logits after its prompt.
#[allow(clippy::too_many_arguments)]
fn run_steps(
    model: &dyn Forward,
    caches: &mut [KvCache],
    seqs: &mut [Seq],
    samplers: &mut [Sampler],
    first: Vec<Vec<f32>>,
    opts: &DecodeOptions,
    start: &Instant,
    on_token: &mut dyn FnMut(usize, u32) -> Result<Control>,
) -> Result<usize> {
    let mut len = DraftLength::default();
    let mut passes = 0;
    let mut rows: Vec<Vec<Vec<f32>>> = first.into_iter().map(|l| vec![l]).collect();
    for (s, c) in seqs.iter_mut().zip(caches.iter()) {
        // The prompt's last token was the one fed.
        s.base = c.len().saturating_sub(1);
    }
    loop {
        let mut step = Vec::new();
        for (i, r) in rows.iter_mut().enumerate() {
            if !seqs[i].active || r.is_empty() {
                continue;
            }
            let drafted = seqs[i].draft.len();
            let kept = seqs[i].take_rows(std::mem::take(r), &mut caches[i], &mut samplers[i], opts.max_tokens, start, &mut |t| on_token(i, t))?;
            if drafted > 0 {
                len.observe_draft(drafted, kept);
            }
            if seqs[i].active {
                step.push(i);
            }
        }
        if step.is_empty() {
            return Ok(passes);
        }
        let k = if opts.max_draft > 0 { len.choose(opts.max_draft) } else { 0 };
        if std::env::var_os("MOA_DRAFT_TRACE").is_some() {
            eprintln!("[draft] k {k} {}", len.describe());
        }
        for &i in &step {
            seqs[i].plan(k, &caches[i], opts.max_tokens);
        }
        let fed: Vec<Vec<u32>> = step.iter().map(|&i| seqs[i].fed()).collect();
        let want: Vec<usize> = fed.iter().map(Vec::len).collect();
        let mut segs: Vec<(&[u32], &mut KvCache)> = Vec::with_capacity(step.len());
        for (c, f) in pick_mut(caches, &step).into_iter().zip(&fed) {
            segs.push((f.as_slice(), c));
        }
        let t = Instant::now();
        let out = model.forward_rows(&mut segs, &want)?;
        let extra: usize = want.iter().map(|w| w - 1).sum();
        len.observe_pass(extra, t.elapsed().as_secs_f64());
        passes += 1;
        for (k, r) in out.into_iter().enumerate() {
            rows[step[k]] = r;
        }
    }
}

/// Mutable references to `items[i]` for the increasing indices `idx`.
pub(crate) fn pick_mut<'a, T>(items: &'a mut [T], idx: &[usize]) -> Vec<&'a mut T> {
    let mut out = Vec::with_capacity(idx.len());
    let mut rest: &mut [T] = items;
    let mut taken = 0;
    for &i in idx {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - taken);
        let (c, tail) = tail.split_first_mut().expect("index in range");
        out.push(c);
        rest = tail;
        taken = i + 1;
    }
    out
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
    let logits = model.forward(rest, cache)?;
    stats.prefilled_tokens = rest.len();
    stats.prefill_secs = start.elapsed().as_secs_f64();

    let decode_start = Instant::now();
    let mut seqs = [Seq::new(prompt, opts.max_draft > 0)];
    let caches = std::slice::from_mut(cache);
    let samplers = std::slice::from_mut(sampler);
    stats.decode_passes = run_steps(model, caches, &mut seqs, samplers, vec![logits], opts, &start, &mut |_, t| on_token(t))?;
    let [seq] = seqs;
    stats.ttft_secs = seq.ttft;
    stats.generated_tokens = seq.out.len();
    stats.drafted_tokens = seq.drafted;
    stats.accepted_tokens = seq.accepted;
    stats.decode_secs = decode_start.elapsed().as_secs_f64() - (stats.ttft_secs - stats.prefill_secs).max(0.0);
    Ok((seq.out, stats))
}

/// Several samples of one prompt: the prompt is prefilled once into `base`, the cache is forked
/// per sample, and every step feeds all unfinished samples through one batched forward (the
/// weights are read once per step for all of them), each with its own draft.
/// `on_token(sample, token)` may stop a sample.
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
    let mut seqs: Vec<Seq> = (0..n).map(|_| Seq::new(prompt, opts.max_draft > 0)).collect();
    let decode_start = Instant::now();
    let passes = run_steps(model, &mut caches, &mut seqs, samplers, vec![logits; n], opts, &start, on_token)?;
    let decode_secs = decode_start.elapsed().as_secs_f64();
    Ok(seqs
        .into_iter()
        .map(|s| {
            let stats = DecodeStats {
                prompt_tokens: prompt.len(),
                prefilled_tokens: prefilled,
                generated_tokens: s.out.len(),
                prefill_secs,
                decode_secs,
                ttft_secs: s.ttft,
                threads,
                drafted_tokens: s.drafted,
                accepted_tokens: s.accepted,
                decode_passes: passes,
            };
            (s.out, stats)
        })
        .collect())
}
