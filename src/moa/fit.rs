//! Fitting references into the next model's context. When the injected references would push
//! the prompt past `context - max_tokens`, each reference is cut to a common token budget (found
//! by binary search over real token counts of the rendered prompt) and a notice says so; nothing
//! is dropped silently.

use crate::error::{Error, Result};
use crate::model::{Message, Model, Prompt};
use crate::moa::prompt::inject_references;

pub struct Fitted {
    pub messages: Vec<Message>,
    pub prompt_tokens: usize,
    /// Set when references were cut: the per-reference token budget used.
    pub cut_to: Option<usize>,
}

fn count(model: &Model, msgs: &[Message]) -> Result<usize> {
    Ok(model.tokenize_prompt(&Prompt::Chat(msgs.to_vec()))?.1.len())
}

/// Inject `refs` into `conv` for `model`, cutting them to fit `max_tokens` of answer.
pub fn fit_references(model: &Model, conv: &[Message], instruction: &str, refs: &[String], max_tokens: usize) -> Result<Fitted> {
    let ctx = model.context_length();
    let limit = ctx.saturating_sub(max_tokens);
    let full = inject_references(conv, instruction, refs);
    let n = count(model, &full)?;
    if n <= limit {
        return Ok(Fitted { messages: full, prompt_tokens: n, cut_to: None });
    }
    let ids: Vec<Vec<u32>> = refs.iter().map(|r| model.tokenizer.encode(r, false)).collect::<Result<_>>()?;
    let cut = |cap: usize| -> Vec<String> {
        ids.iter()
            .zip(refs)
            .map(|(t, r)| if t.len() <= cap { r.clone() } else { format!("{} […]", model.tokenizer.decode(&t[..cap])) })
            .collect()
    };
    let (mut lo, mut hi) = (0usize, ids.iter().map(Vec::len).max().unwrap_or(0));
    let base = count(model, &inject_references(conv, instruction, &cut(0)))?;
    if base > limit {
        return Err(Error::ContextOverflow { model: model.name.clone(), prompt_tokens: base, max_tokens, context: ctx });
    }
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if count(model, &inject_references(conv, instruction, &cut(mid)))? <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let messages = inject_references(conv, instruction, &cut(lo));
    let prompt_tokens = count(model, &messages)?;
    Ok(Fitted { messages, prompt_tokens, cut_to: Some(lo) })
}
