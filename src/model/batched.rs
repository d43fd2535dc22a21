//! A text-level request as a sequence of a continuous batch (`engine::batch`): the request is
//! checked, its prompt cache brought to the longest common prefix and sized, and the callbacks
//! carry the same text handling as [`Model::generate_cached_ids`] (end of generation, stop
//! strings, UTF-8 streaming), so the batched answer is the one generated alone.

use std::sync::{Arc, Mutex};

use crate::engine::batch::Join;
use crate::engine::{Control, Sampler};
use crate::error::{Error, Result};
use crate::model::generate::{GenerateRequest, Generation, TextState};
use crate::model::loaded::Model;
use crate::model::prefix::PromptCache;

/// Streams the answer's text pieces; `Stop` cancels.
pub type OnText = Box<dyn FnMut(&str) -> Control + Send>;
/// Receives the generation and the prompt cache (prompt and answer, for the next turn).
pub type OnDone = Box<dyn FnOnce(Result<(Generation, PromptCache)>) + Send>;

impl Model {
    /// The batch entry of `req` (already rendered and tokenized), starting from `pc`, which may
    /// hold a prefix of the prompt. Fails before joining when the request does not fit.
    pub fn batch_join(
        self: &Arc<Self>,
        req: &GenerateRequest,
        prompt_text: String,
        prompt_ids: Vec<u32>,
        mut pc: PromptCache,
        on_text: OnText,
        done: OnDone,
    ) -> Result<Join> {
        self.check_request(&prompt_ids, req)?;
        pc.prepare_for(&prompt_ids, prompt_ids.len() + req.max_tokens)?;
        let cache = pc.into_cache();
        // Shared by the two callbacks; `done` takes it out.
        let state = Arc::new(Mutex::new(Some((TextState::new(self.clone(), req), on_text))));
        let st = state.clone();
        let on_token = Box::new(move |tok: u32| match &mut *st.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((text, on_text)) => text.on_token(tok, &mut **on_text),
            None => Control::Stop,
        });
        let ids = prompt_ids.clone();
        let done = Box::new(move |r: Result<crate::engine::batch::Finished>| {
            let Some((text_state, mut on_text)) = state.lock().unwrap_or_else(|p| p.into_inner()).take() else {
                return done(Err(Error::Other("batched sequence finished twice".into())));
            };
            let f = match r {
                Ok(f) => f,
                Err(e) => return done(Err(e)),
            };
            let (text, stop_reason) = text_state.finish(&mut *on_text);
            let mut pc = PromptCache::from_cache(f.cache);
            if let Err(e) = pc.record(&ids, &f.ids) {
                return done(Err(e));
            }
            let g = Generation { prompt_text, prompt_ids: ids, ids: f.ids, text, stop_reason, stats: f.stats, logprobs: f.logprobs };
            done(Ok((g, pc)))
        });
        Ok(Join { prompt: prompt_ids, cache, sampler: Sampler::new(req.sampling.clone()), opts: req.decode_options(), on_token, done })
    }
}
