//! Continuous batching for one model: sequences join at any step and leave when they stop.
//! Each [`Batch::step`] is one batched forward over the decode rows of every running sequence
//! (its pending token and draft, as in `decode_loop`) plus, within a token budget, the next
//! chunk of each joining sequence's prompt (chunked prefill, so a long prompt never stalls the
//! others for more than a budget's worth of rows). A row's logits do not depend on the rows
//! beside it and every sequence keeps its own cache, sampler and draft lookup, so what a
//! sequence generates is what `decode_loop` gives it alone: the same tokens at temperature 0,
//! the same tokens for the same seed.
//!
//! Streaming and completion are callbacks, so the owner of the loop (a thread in `runtime`)
//! needs nothing but this type; nothing here waits or knows about async runtimes.

use std::time::Instant;

use crate::engine::decode::{pick_mut as pick, Control, DecodeOptions, DecodeStats, Forward, Seq};
use crate::engine::draft::DraftLength;
use crate::engine::kv_cache::KvCache;
use crate::engine::logprobs::TokenLogprob;
use crate::engine::sampler::Sampler;
use crate::error::{Error, Result};

/// What a joining sequence brings.
pub struct Join {
    pub prompt: Vec<u32>,
    /// Its cache: empty, or holding a prefix of `prompt` (a kept conversation), with room for
    /// the prompt and `opts.max_tokens`.
    pub cache: KvCache,
    pub sampler: Sampler,
    pub opts: DecodeOptions,
    /// Every sampled token in order; `Stop` ends the sequence (the token counts as generated).
    pub on_token: Box<dyn FnMut(u32) -> Control + Send>,
    /// Called once, when the sequence ends or fails.
    pub done: Box<dyn FnOnce(Result<Finished>) + Send>,
}

/// A finished sequence: its tokens, its numbers and its cache (prompt and output but the last
/// token, which was never fed).
pub struct Finished {
    pub ids: Vec<u32>,
    pub stats: DecodeStats,
    pub cache: KvCache,
    /// One per token of `ids` when `DecodeOptions::logprobs` asked for them, else empty.
    pub logprobs: Vec<TokenLogprob>,
}

struct Running {
    prompt: Vec<u32>,
    cache: KvCache,
    sampler: Sampler,
    opts: DecodeOptions,
    on_token: Box<dyn FnMut(u32) -> Control + Send>,
    done: Option<Box<dyn FnOnce(Result<Finished>) + Send>>,
    seq: Seq,
    /// Prompt fully fed (the sequence decodes).
    decoding: bool,
    start: Instant,
    stats: DecodeStats,
}

/// The running sequences of one model.
pub struct Batch {
    running: Vec<Running>,
    prefill_budget: usize,
    len: DraftLength,
    steps: usize,
}

impl Batch {
    /// `prefill_budget`: prompt tokens per step over all joining sequences (at least 1).
    pub fn new(prefill_budget: usize) -> Self {
        Self { running: Vec::new(), prefill_budget: prefill_budget.max(1), len: DraftLength::default(), steps: 0 }
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Forward passes run so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Adds a sequence; it is prefilled from the next step on. A request that cannot run (no
    /// prompt, no room in its cache) fails at once through its `done`.
    pub fn join(&mut self, j: Join) {
        let Join { prompt, mut cache, sampler, opts, on_token, done } = j;
        if prompt.is_empty() {
            return done(Err(Error::InvalidRequest("the prompt is empty (no tokens to start from)".into())));
        }
        let need = prompt.len() + opts.max_tokens;
        if need > cache.capacity() {
            return done(Err(Error::InvalidRequest(format!(
                "prompt {} + max_tokens {} = {need} positions; the sequence's cache holds {}",
                prompt.len(),
                opts.max_tokens,
                cache.capacity()
            ))));
        }
        // Always recompute at least the last prompt token: its logits start the generation.
        if cache.len() >= prompt.len() {
            cache.truncate(prompt.len() - 1);
        }
        let threads = crate::kernels::pool::pool().threads();
        let stats = DecodeStats { prompt_tokens: prompt.len(), prefilled_tokens: prompt.len() - cache.len(), threads, ..Default::default() };
        let seq = Seq::new(&prompt, opts.max_draft > 0).with_logprobs(opts.logprobs);
        self.running.push(Running { prompt, cache, sampler, opts, on_token, done: Some(done), seq, decoding: false, start: Instant::now(), stats });
    }

    /// One forward pass for every running sequence (decode rows, then prompt chunks in joining
    /// order within the budget); sequences that stop leave with their `done`.
    pub fn step(&mut self, model: &dyn Forward) {
        if self.running.is_empty() {
            return;
        }
        let max_draft = self.running.iter().filter(|r| r.decoding).map(|r| r.opts.max_draft).max().unwrap_or(0);
        let drafting = self.running.iter().filter(|r| r.decoding && r.opts.max_draft > 0).count();
        let k = if max_draft > 0 { self.len.choose_for(max_draft, drafting) } else { 0 };
        let mut budget = self.prefill_budget;
        // (index, fed tokens, rows wanted)
        let mut plan: Vec<(usize, Vec<u32>, usize)> = Vec::with_capacity(self.running.len());
        for (i, r) in self.running.iter_mut().enumerate() {
            if r.decoding {
                r.seq.plan(k.min(r.opts.max_draft), &r.cache, r.opts.max_tokens);
                let fed = r.seq.fed();
                let n = fed.len();
                plan.push((i, fed, n));
            } else if budget > 0 {
                let rest = &r.prompt[r.cache.len()..];
                let n = rest.len().min(budget);
                budget -= n;
                plan.push((i, rest[..n].to_vec(), usize::from(n == rest.len())));
            }
        }
        let rows: Vec<usize> = plan.iter().map(|p| p.2).collect();
        let idx: Vec<usize> = plan.iter().map(|p| p.0).collect();
        let t = Instant::now();
        let out = {
            let mut segs: Vec<(&[u32], &mut KvCache)> = Vec::with_capacity(plan.len());
            for (r, p) in pick(&mut self.running, &idx).into_iter().zip(&plan) {
                segs.push((p.1.as_slice(), &mut r.cache));
            }
            model.forward_rows(&mut segs, &rows)
        };
        self.steps += 1;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                // The pass failed for all of them: end every sequence of it with the error.
                let msg = e.to_string();
                for &i in idx.iter().rev() {
                    let mut r = self.running.remove(i);
                    if let Some(done) = r.done.take() {
                        done(Err(Error::Other(format!("batched forward pass failed: {msg}"))));
                    }
                }
                return;
            }
        };
        // Decode passes only: a pass that also prefills says nothing about the cost of rows of
        // drafts.
        if plan.iter().all(|p| self.running[p.0].decoding) {
            let extra: usize = plan.iter().map(|p| p.1.len() - 1).sum();
            self.len.observe_pass(extra, t.elapsed().as_secs_f64());
        }
        for ((i, _, want), logits) in plan.into_iter().zip(out) {
            let r = &mut self.running[i];
            if want == 0 {
                continue; // a prompt chunk short of the end
            }
            if !r.decoding {
                r.decoding = true;
                r.stats.prefill_secs = r.start.elapsed().as_secs_f64();
                // The prompt's last token was the one fed.
                r.seq.base = r.cache.len() - 1;
            } else {
                r.stats.decode_passes += 1;
            }
            let drafted = r.seq.draft.len();
            let on_token = &mut r.on_token;
            let kept = r.seq.take_rows(logits, &mut r.cache, &mut r.sampler, r.opts.max_tokens, &r.start, &mut |t| Ok(on_token(t)));
            match kept {
                Ok(kept) if drafted > 0 => self.len.observe_draft(drafted, kept),
                Ok(_) => {}
                Err(e) => {
                    r.seq.active = false;
                    if let Some(done) = r.done.take() {
                        done(Err(e));
                    }
                }
            }
        }
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].seq.active && self.running[i].done.is_some() {
                i += 1;
                continue;
            }
            let mut r = self.running.remove(i);
            if let Some(done) = r.done.take() {
                let s = &mut r.stats;
                s.ttft_secs = r.seq.ttft;
                s.generated_tokens = r.seq.out.len();
                s.drafted_tokens = r.seq.drafted;
                s.accepted_tokens = r.seq.accepted;
                s.decode_secs = (r.start.elapsed().as_secs_f64() - s.ttft_secs.max(s.prefill_secs)).max(0.0);
                let logprobs = std::mem::take(&mut r.seq.logprobs);
                done(Ok(Finished { ids: std::mem::take(&mut r.seq.out), stats: r.stats, cache: r.cache, logprobs }));
            }
        }
    }

    /// Runs steps until every sequence has left.
    pub fn run(&mut self, model: &dyn Forward) {
        while !self.is_empty() {
            self.step(model);
        }
    }
}
