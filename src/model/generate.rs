//! Text-level generation on a loaded model: prompt rendering (raw or chat template), context
//! checks, end-of-generation tokens, stop strings, and UTF-8-safe streaming of the answer.

use crate::engine::decode::{decode_loop, DecodeOptions};
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
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Context length to enforce; defaults to the model's own.
    pub context_length: Option<usize>,
}

impl GenerateRequest {
    pub fn new(prompt: Prompt, max_tokens: usize, sampling: SamplingParams) -> Self {
        Self { prompt, max_tokens, sampling, stop: Vec::new(), context_length: None }
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
}

impl Model {
    /// The exact text fed to the tokenizer for `prompt`.
    pub fn render_prompt(&self, prompt: &Prompt) -> Result<String> {
        match prompt {
            Prompt::Raw(s) => Ok(s.clone()),
            Prompt::Chat(msgs) => self.template.render(msgs, true),
        }
    }

    /// Token ids of `prompt`, with BOS as the metadata asks (not doubled when the template
    /// already wrote it).
    pub fn tokenize_prompt(&self, prompt: &Prompt) -> Result<(String, Vec<u32>)> {
        let text = self.render_prompt(prompt)?;
        let mut ids = self.tokenizer.encode(&text, true)?;
        if let (Some(bos), [a, b, ..]) = (self.tokenizer.bos_id(), ids.as_slice()) {
            if *a == bos && *b == bos {
                ids.remove(0);
            }
        }
        Ok((text, ids))
    }

    /// Generate an answer, calling `on_text` with each complete UTF-8 piece as it is produced.
    /// `on_text` returning [`Control::Stop`] cancels the generation.
    pub fn generate(&self, req: &GenerateRequest, on_text: &mut dyn FnMut(&str) -> Control) -> Result<Generation> {
        let (prompt_text, prompt_ids) = self.tokenize_prompt(&req.prompt)?;
        let cache = self.prepare_cache(&prompt_ids, req)?;
        self.generate_with_cache(req, prompt_text, prompt_ids, cache, on_text)
    }

    /// Check the request against the context and allocate a cache sized to it.
    pub fn prepare_cache(&self, prompt_ids: &[u32], req: &GenerateRequest) -> Result<KvCache> {
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
        self.transformer.new_cache(prompt_ids.len() + req.max_tokens)
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
        let mut stops: Vec<String> = req.stop.iter().filter(|s| !s.is_empty()).cloned().collect();
        stops.extend(self.template.stop_strings().iter().cloned());
        let mut sampler = Sampler::new(req.sampling.clone());
        let mut utf8 = Utf8Stream::default();
        let mut held = String::new(); // decoded text not yet emitted (could start a stop string)
        let mut text = String::new();
        let mut reason = StopReason::MaxTokens;
        let opts = DecodeOptions { max_tokens: req.max_tokens, prefill_chunk: 512 };
        let mut on_token = |tok: u32| -> Result<Control> {
            if self.tokenizer.is_eog(tok) {
                reason = StopReason::EndOfGeneration;
                return Ok(Control::Stop);
            }
            held.push_str(&utf8.push(self.tokenizer.token_bytes(tok)));
            let (emit, stop) = split_at_stop(&held, &stops);
            if !emit.is_empty() {
                text.push_str(&emit);
                if on_text(&emit) == Control::Stop {
                    reason = StopReason::Cancelled;
                    return Ok(Control::Stop);
                }
            }
            held.drain(..emit.len());
            if stop {
                reason = StopReason::StopString;
                held.clear();
                return Ok(Control::Stop);
            }
            Ok(Control::Continue)
        };
        let (ids, stats) = decode_loop(&self.transformer, &mut cache, &prompt_ids, &mut sampler, &opts, &mut on_token)?;
        if matches!(reason, StopReason::MaxTokens | StopReason::EndOfGeneration) {
            // Flush what was held back for a possible stop string. Bytes of a character that
            // the last token left unfinished are dropped: they can never complete.
            drop(utf8);
            if !held.is_empty() {
                text.push_str(&held);
                on_text(&held);
            }
        }
        Ok(Generation { prompt_text, prompt_ids, ids, text, stop_reason: reason, stats })
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
