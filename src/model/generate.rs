//! Text-level generation on a loaded model: prompt rendering (raw or chat template), context
//! checks, end-of-generation tokens, stop strings, and UTF-8-safe streaming of the answer.

use crate::engine::decode::{decode_loop, decode_samples, DecodeOptions};
use crate::engine::logprobs::TokenLogprob;
use crate::engine::{Control, DecodeStats, KvCache, Sampler, SamplingParams};
use crate::error::{Error, Result};
use crate::model::loaded::Model;
use crate::model::template::Message;
use crate::model::tokenizer::Utf8Stream;

#[derive(Debug, Clone)]
pub enum Prompt {
    /// Tokenized as is (BOS as the model's metadata asks).
    Raw(String),
    /// Rendered through the model's chat template with the generation prompt.
    Chat(Vec<Message>),
    /// Token ids fed as they are (no BOS added).
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Context length to enforce; defaults to the model's own.
    pub context_length: Option<usize>,
    /// The longest draft looked up in the prompt and output and verified in one pass (default
    /// `engine::draft::MAX_DRAFT`; 0 = off). Same tokens at temperature 0, same distribution
    /// when sampling, and a seeded run's tokens do not depend on it.
    pub max_draft: usize,
    /// Report each generated token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    /// Set by the caller to give the request up: a sequence still waiting for a place in its
    /// model's batch leaves at the loop's next step (a running one stops through `on_text`).
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl GenerateRequest {
    pub fn new(prompt: Prompt, max_tokens: usize, sampling: SamplingParams) -> Self {
        Self { prompt, max_tokens, sampling, stop: Vec::new(), context_length: None, max_draft: crate::engine::draft::MAX_DRAFT, logprobs: None, cancel: None }
    }

    pub(crate) fn decode_options(&self) -> DecodeOptions {
        DecodeOptions { max_tokens: self.max_tokens, max_draft: self.max_draft, logprobs: self.logprobs }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndOfGeneration,
    StopString,
    MaxTokens,
    Cancelled,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub prompt_text: String,
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    pub text: String,
    pub stop_reason: StopReason,
    pub stats: DecodeStats,
    /// One per token of `ids` when the request asked for `logprobs` (batched decoding only).
    pub logprobs: Vec<TokenLogprob>,
}

impl Model {
    /// The exact text fed to the tokenizer for `prompt`.
    pub fn render_prompt(&self, prompt: &Prompt) -> Result<String> {
        match prompt {
            Prompt::Raw(s) => Ok(s.clone()),
            Prompt::Chat(msgs) => self.template.render(msgs, true),
            Prompt::Tokens(ids) => Ok(self.tokenizer.decode(ids)),
        }
    }

    /// Token ids of `prompt`, with BOS as the metadata asks (not doubled when the template
    /// already wrote it).
    pub fn tokenize_prompt(&self, prompt: &Prompt) -> Result<(String, Vec<u32>)> {
        if let Prompt::Tokens(ids) = prompt {
            let vocab = self.tokenizer.vocab_size();
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::InvalidRequest(format!("prompt token {bad} is outside {}'s vocabulary of {vocab}", self.name)));
            }
            return Ok((self.tokenizer.decode(ids), ids.clone()));
        }
        let text = self.render_prompt(prompt)?;
        let ids = self.encode_rendered(&text)?;
        Ok((text, ids))
    }

    /// Generate an answer, calling `on_text` with each complete UTF-8 piece as it is produced.
    /// `on_text` returning [`Control::Stop`] cancels the generation.
    pub fn generate(&self, req: &GenerateRequest, on_text: &mut dyn FnMut(&str) -> Control) -> Result<Generation> {
        let (prompt_text, prompt_ids) = self.tokenize_prompt(&req.prompt)?;
        let cache = self.prepare_cache(&prompt_ids, req)?;
        self.generate_with_cache(req, prompt_text, prompt_ids, cache, on_text)
    }

    /// Each prompt token's log-probability given those before it (`ids[1..]`, with `top`
    /// alternatives), from a cache of its own. Blocking.
    pub fn score_prompt(&self, ids: &[u32], top: usize) -> Result<Vec<TokenLogprob>> {
        if ids.len() > self.context_length() {
            return Err(Error::ContextOverflow { model: self.name.clone(), prompt_tokens: ids.len(), max_tokens: 0, context: self.context_length() });
        }
        let mut cache = self.transformer.new_cache(ids.len().max(1))?;
        crate::engine::logprobs::score(&self.transformer, ids, top, &mut cache)
    }

    /// Check the request against the context and allocate a cache sized to it.
    pub fn prepare_cache(&self, prompt_ids: &[u32], req: &GenerateRequest) -> Result<KvCache> {
        self.check_request(prompt_ids, req)?;
        self.transformer.new_cache(prompt_ids.len() + req.max_tokens)
    }

    /// Check the request's settings and that prompt + max tokens fit the context.
    pub(crate) fn check_request(&self, prompt_ids: &[u32], req: &GenerateRequest) -> Result<()> {
        req.sampling.validate()?;
        if req.max_tokens == 0 {
            return Err(Error::InvalidRequest("max_tokens must be at least 1".into()));
        }
        if prompt_ids.is_empty() {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        let ctx = req.context_length.unwrap_or(self.context_length()).min(self.context_length());
        if prompt_ids.len() + req.max_tokens > ctx {
            return Err(Error::ContextOverflow {
                model: self.name.clone(),
                prompt_tokens: prompt_ids.len(),
                max_tokens: req.max_tokens,
                context: ctx,
            });
        }
        Ok(())
    }

    /// Generate from an already prepared (possibly forked, prefix-filled) cache.
    pub fn generate_with_cache(
        &self,
        req: &GenerateRequest,
        prompt_text: String,
        prompt_ids: Vec<u32>,
        mut cache: KvCache,
        on_text: &mut dyn FnMut(&str) -> Control,
    ) -> Result<Generation> {
        let mut sampler = Sampler::new(req.sampling.clone());
        let (ids, text, stop_reason, stats) = self.decode_text(req, &prompt_ids, &mut cache, &mut sampler, on_text)?;
        Ok(Generation { prompt_text, prompt_ids, ids, text, stop_reason, stats, logprobs: Vec::new() })
    }

    /// The decode loop with text handling (end of generation, stop strings, UTF-8 streaming).
    pub(crate) fn decode_text(
        &self,
        req: &GenerateRequest,
        prompt_ids: &[u32],
        cache: &mut KvCache,
        sampler: &mut Sampler,
        on_text: &mut dyn FnMut(&str) -> Control,
    ) -> Result<(Vec<u32>, String, StopReason, DecodeStats)> {
        let mut text = TextState::new(self, req);
        let opts = req.decode_options();
        let mut on_token = |tok: u32| Ok(text.on_token(tok, on_text));
        let (ids, stats) = decode_loop(&self.transformer, cache, prompt_ids, sampler, &opts, &mut on_token)?;
        let (text, stop_reason) = text.finish(on_text);
        Ok((ids, text, stop_reason, stats))
    }

    /// Several samples of one request, one per seed: one shared prefill, then batched decode
    /// steps. `on_text(sample, piece)` streams each sample's text.
    pub fn generate_samples(
        &self,
        req: &GenerateRequest,
        seeds: &[u64],
        on_text: &mut dyn FnMut(usize, &str) -> Control,
    ) -> Result<Vec<Generation>> {
        let (prompt_text, prompt_ids) = self.tokenize_prompt(&req.prompt)?;
        let cache = self.prepare_cache(&prompt_ids, req)?;
        let mut samplers: Vec<Sampler> =
            seeds.iter().map(|&seed| Sampler::new(SamplingParams { seed, ..req.sampling.clone() })).collect();
        let mut texts: Vec<TextState<&Model>> = seeds.iter().map(|_| TextState::new(self, req)).collect();
        let opts = req.decode_options();
        let mut on_token = |i: usize, tok: u32| Ok(texts[i].on_token(tok, &mut |p| on_text(i, p)));
        let results = decode_samples(&self.transformer, cache, &prompt_ids, &mut samplers, &opts, &mut on_token)?;
        Ok(results
            .into_iter()
            .zip(texts)
            .enumerate()
            .map(|(i, ((ids, stats), t))| {
                let (text, stop_reason) = t.finish(&mut |p| on_text(i, p));
                Generation { prompt_text: prompt_text.clone(), prompt_ids: prompt_ids.clone(), ids, text, stop_reason, stats, logprobs: Vec::new() }
            })
            .collect())
    }
}

/// Token ids → streamed text for one sequence: end-of-generation tokens, stop strings (held back
/// until they can no longer start one), and whole UTF-8 characters only. `M` is `&Model`, or
/// `Arc<Model>` where the state outlives the call (a batched sequence's callbacks).
pub(crate) struct TextState<M> {
    model: M,
    stops: Vec<String>,
    utf8: Utf8Stream,
    held: String,
    text: String,
    reason: StopReason,
}

impl<M: std::ops::Deref<Target = Model>> TextState<M> {
    pub(crate) fn new(model: M, req: &GenerateRequest) -> Self {
        let mut stops: Vec<String> = req.stop.iter().filter(|s| !s.is_empty()).cloned().collect();
        stops.extend(model.template.stop_strings().iter().cloned());
        Self { model, stops, utf8: Utf8Stream::default(), held: String::new(), text: String::new(), reason: StopReason::MaxTokens }
    }

    pub(crate) fn on_token(&mut self, tok: u32, on_text: &mut dyn FnMut(&str) -> Control) -> Control {
        if self.model.tokenizer.is_eog(tok) {
            self.reason = StopReason::EndOfGeneration;
            return Control::Stop;
        }
        self.held.push_str(&self.utf8.push(self.model.tokenizer.token_bytes(tok)));
        let (emit, stop) = split_at_stop(&self.held, &self.stops);
        if !emit.is_empty() {
            self.text.push_str(&emit);
            if on_text(&emit) == Control::Stop {
                self.reason = StopReason::Cancelled;
                return Control::Stop;
            }
        }
        self.held.drain(..emit.len());
        if stop {
            self.reason = StopReason::StopString;
            self.held.clear();
            return Control::Stop;
        }
        Control::Continue
    }

    /// Flush what was held back for a possible stop string. Bytes of a character that the last
    /// token left unfinished are dropped: they can never complete.
    pub(crate) fn finish(mut self, on_text: &mut dyn FnMut(&str) -> Control) -> (String, StopReason) {
        if matches!(self.reason, StopReason::MaxTokens | StopReason::EndOfGeneration) && !self.held.is_empty() {
            self.text.push_str(&self.held);
            on_text(&self.held);
        }
        (self.text, self.reason)
    }
}

/// Given the held-back text, return the part that can be emitted now and whether a stop string
/// was found (the emitted part then ends right before it).
fn split_at_stop(held: &str, stops: &[String]) -> (String, bool) {
    if stops.is_empty() {
        return (held.to_string(), false);
    }
    if let Some(i) = stops.iter().filter_map(|s| held.find(s.as_str())).min() {
        return (held[..i].to_string(), true);
    }
    // Hold back the longest suffix that is a prefix of some stop string.
    let mut keep_from = held.len();
    for s in stops {
        for (i, _) in held.char_indices().rev().take(s.chars().count()) {
            if s.starts_with(&held[i..]) {
                keep_from = keep_from.min(i);
            }
        }
    }
    (held[..keep_from].to_string(), false)
}

#[cfg(test)]
mod tests {
    use super::split_at_stop;

    #[test]
    fn stop_strings_hold_back_prefixes() {
        let stops = vec!["\nUser:".to_string()];
        assert_eq!(split_at_stop("hello", &stops), ("hello".into(), false));
        assert_eq!(split_at_stop("hello\nUs", &stops), ("hello".into(), false));
        assert_eq!(split_at_stop("hello\nUser: hi", &stops), ("hello".into(), true));
        assert_eq!(split_at_stop("a\nb", &stops), ("a\nb".into(), false));
    }
}
