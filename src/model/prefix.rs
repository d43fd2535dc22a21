//! Prompts whose KV cache is kept and extended: a [`PromptCache`] holds the tokens whose keys
//! and values are in its cache, and [`PromptCache::extend`] brings it to a new token sequence by
//! keeping the longest common prefix and computing only the rest. Used for a prompt that is
//! prefilled while it is still being written (the staircase of a MoA aggregator: its references
//! arrive one by one) and for a conversation's next turn.
//!
//! Extending is exact: a cache filled in several calls holds the keys and values one prefill of
//! the same tokens computes (a row's results do not depend on the rows beside it), so the
//! logits that follow are the same. Text is tokenized whole each time and compared as tokens,
//! so a token that merges across a boundary (the last tokens of a prefix may change when more
//! text follows) costs a few recomputed positions, never a wrong cache.

use crate::engine::{Control, Forward, KvCache, Sampler};
use crate::error::{Error, Result};
use crate::model::generate::{GenerateRequest, Generation};
use crate::model::loaded::Model;
use crate::model::template::Message;

/// Marks where a prompt stops being known: rendered in place of the text still to come, then cut
/// off with everything after it (private-use characters no template or model text contains).
pub const SENTINEL: &str = "\u{E000}moa-prefix\u{E001}";

pub struct PromptCache {
    cache: KvCache,
    tokens: Vec<u32>,
}

impl PromptCache {
    /// Tokens whose keys and values the cache holds.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Positions the cache has room for.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    pub fn bytes(&self, model: &Model) -> u64 {
        model.cache_bytes(self.cache.capacity())
    }

    /// A deep copy of the first `len` tokens' positions with room for `capacity`: a new
    /// prompt that shares only a beginning with this one (a system prompt) starts from it
    /// while this one stays whole.
    pub fn fork_prefix(&self, len: usize, capacity: usize) -> Result<PromptCache> {
        let len = len.min(self.tokens.len());
        Ok(PromptCache { cache: self.cache.fork_prefix(len, capacity)?, tokens: self.tokens[..len].to_vec() })
    }

    /// A deep copy (same tokens, same capacity): several samples of one prompt start from one
    /// prefill.
    pub fn fork(&self) -> Result<PromptCache> {
        Ok(PromptCache { cache: self.cache.fork(self.cache.capacity())?, tokens: self.tokens.clone() })
    }

    /// Keep the longest common prefix of the cached tokens and `tokens`, then compute
    /// `tokens[..len − hold_back]` (the last ones may still change when more text follows).
    /// Returns how many positions were computed.
    pub fn extend(&mut self, model: &Model, tokens: &[u32], hold_back: usize) -> Result<usize> {
        let common = common_prefix(&self.tokens, tokens);
        self.truncate(common);
        let target = tokens.len().saturating_sub(hold_back);
        if target <= common {
            return Ok(0);
        }
        self.reserve(target)?;
        let new = &tokens[common..target];
        model.transformer.forward_rows(&mut [(new, &mut self.cache)], &[0])?;
        self.tokens.extend_from_slice(new);
        Ok(new.len())
    }

    fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
        self.cache.truncate(len);
    }

    /// Keep the longest prefix shared with `prompt` (always recomputing its last token) and make
    /// room for `positions`: the state a generation of `prompt` starts from.
    pub(crate) fn prepare_for(&mut self, prompt: &[u32], positions: usize) -> Result<()> {
        let common = common_prefix(&self.tokens, prompt).min(prompt.len().saturating_sub(1));
        self.truncate(common);
        self.reserve(positions)
    }

    /// After generating `out` from `prompt`: the tokens the cache now holds (all but the last
    /// generated one, never fed).
    pub(crate) fn record(&mut self, prompt: &[u32], out: &[u32]) -> Result<()> {
        let len = self.cache.len();
        let mut all = prompt.to_vec();
        all.extend_from_slice(out);
        if len > all.len() {
            return Err(Error::Other(format!("prompt cache: {len} positions for {} tokens", all.len())));
        }
        all.truncate(len);
        self.tokens = all;
        Ok(())
    }

    /// The cache alone (a batched sequence takes it and gives it back through [`PromptCache::from_cache`]).
    pub(crate) fn into_cache(self) -> KvCache {
        self.cache
    }

    pub(crate) fn from_cache(cache: KvCache) -> Self {
        Self { cache, tokens: Vec::new() }
    }

    /// Room for at least `positions` (the cache grows by copying, at least doubling).
    fn reserve(&mut self, positions: usize) -> Result<()> {
        if positions > self.cache.capacity() {
            self.cache = self.cache.fork(positions.max(2 * self.cache.capacity()))?;
        }
        Ok(())
    }
}

/// Length of the longest common prefix.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Model {
    /// Bytes of a KV cache of this model with room for `capacity` positions.
    pub fn cache_bytes(&self, capacity: usize) -> u64 {
        let c = self.cfg();
        KvCache::bytes_for(c.n_layer, c.n_kv_head, c.head_dim, capacity)
    }

    /// An empty prompt cache with room for `capacity` positions to start with.
    pub fn new_prompt_cache(&self, capacity: usize) -> Result<PromptCache> {
        Ok(PromptCache { cache: self.transformer.new_cache(capacity.clamp(1, self.context_length()))?, tokens: Vec::new() })
    }

    /// Token ids of an already rendered prompt (BOS as the metadata asks, not doubled).
    pub fn encode_rendered(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode_prompt(text)
    }

    /// The known beginning of a chat prompt: `messages` hold [`SENTINEL`] where the unknown
    /// text starts; the rendering up to it. None when the template does not keep the sentinel
    /// (it rewrites content), so the prompt's beginning cannot be told.
    pub fn prompt_prefix(&self, messages: &[Message]) -> Result<Option<String>> {
        let text = self.template.render(messages, true)?;
        Ok(text.find(SENTINEL).map(|i| text[..i].to_string()))
    }

    /// [`Model::generate`] starting from `pc`, which may hold a prefix of the prompt: only the
    /// rest is prefilled. Afterwards `pc` holds the prompt and the answer (all but its last
    /// token), ready for the next turn of the conversation.
    pub fn generate_cached(&self, req: &GenerateRequest, pc: &mut PromptCache, on_text: &mut dyn FnMut(&str) -> Control) -> Result<Generation> {
        let (prompt_text, prompt_ids) = self.tokenize_prompt(&req.prompt)?;
        self.generate_cached_ids(req, prompt_text, prompt_ids, pc, on_text)
    }

    /// [`Model::generate_cached`] for a prompt already rendered and tokenized.
    pub fn generate_cached_ids(
        &self,
        req: &GenerateRequest,
        prompt_text: String,
        prompt_ids: Vec<u32>,
        pc: &mut PromptCache,
        on_text: &mut dyn FnMut(&str) -> Control,
    ) -> Result<Generation> {
        // Validates the request and the context; its fresh cache is not needed.
        self.check_request(&prompt_ids, req)?;
        pc.prepare_for(&prompt_ids, prompt_ids.len() + req.max_tokens)?;
        let mut sampler = Sampler::new(req.sampling.clone());
        let (ids, text, stop_reason, stats) = self.decode_text(req, &prompt_ids, &mut pc.cache, &mut sampler, on_text)?;
        pc.record(&prompt_ids, &ids)?;
        Ok(Generation { prompt_text, prompt_ids, ids, text, stop_reason, stats, logprobs: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefix_lengths() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
    }
}
