//! Fitting references into the next model's context. When the injected references would push
//! the prompt past `context - max_tokens`, each reference is cut in reference order to its share
//! of what the references before it left ([`Budgets`]: fixed when it is appended, so a prompt
//! prefilled while references arrive holds the same cut) and a notice says so; nothing is
//! dropped silently. A remote model is fitted the same way when its recipe names a local copy
//! of its tokenizer; otherwise its token counts are estimated from bytes
//! ([`fit_references_estimated`]).

use crate::error::{Error, Result};
use crate::model::chat_tokens::ChatTokens;
use crate::model::tokenizer::GgufTokenizer;
use crate::model::{Message, Model, Prompt};
use crate::moa::prompt::inject_references;

pub struct Fitted {
    pub messages: Vec<Message>,
    pub prompt_tokens: usize,
    /// Set when references were cut: the fewest tokens a cut reference was kept to.
    pub cut_to: Option<usize>,
}

/// What fitting needs of a model: its chat prompt's token count and its tokenizer.
pub trait PromptTokens {
    fn count(&self, msgs: &[Message]) -> Result<usize>;
    fn tokenizer(&self) -> &GgufTokenizer;
}

impl PromptTokens for Model {
    fn count(&self, msgs: &[Message]) -> Result<usize> {
        Ok(self.tokenize_prompt(&Prompt::Chat(msgs.to_vec()))?.1.len())
    }
    fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }
}

impl PromptTokens for ChatTokens {
    fn count(&self, msgs: &[Message]) -> Result<usize> {
        ChatTokens::count(self, msgs)
    }
    fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }
}

/// Inject `refs` into `conv` for `model`, cutting them to fit `max_tokens` of answer.
pub fn fit_references(model: &Model, conv: &[Message], instruction: &str, refs: &[String], max_tokens: usize) -> Result<Fitted> {
    fit_references_counted(model, &model.name, model.context_length(), conv, instruction, refs, max_tokens)
}

/// [`fit_references`] for any model whose tokens can be counted here (`name` in errors), with a
/// context of `ctx` tokens: a loaded model, or a remote one whose local tokenizer copy is named.
/// References that fit are injected whole; otherwise each is cut in reference order to its
/// [`Budgets`] share, the cut a prompt prefilled while they arrived already holds.
pub fn fit_references_counted(
    model: &dyn PromptTokens,
    name: &str,
    ctx: usize,
    conv: &[Message],
    instruction: &str,
    refs: &[String],
    max_tokens: usize,
) -> Result<Fitted> {
    let limit = ctx.saturating_sub(max_tokens);
    let full = inject_references(conv, instruction, refs);
    let n = model.count(&full)?;
    if n <= limit {
        return Ok(Fitted { messages: full, prompt_tokens: n, cut_to: None });
    }
    let budgets = Budgets::new(model, name, ctx, conv, instruction, refs.len(), max_tokens)?;
    let (texts, cut_to) = budgets.cut(refs)?;
    let messages = inject_references(conv, instruction, &texts);
    let prompt_tokens = model.count(&messages)?;
    if prompt_tokens <= limit {
        return Ok(Fitted { messages, prompt_tokens, cut_to });
    }
    common_cap(model, name, ctx, conv, instruction, refs, max_tokens)
}

/// What cut references end with.
pub const CUT_MARK: &str = " […]";

/// Per-reference token budgets fixed as the references are appended, so that a reference is cut
/// once, when it arrives, and never again: reference k (0-based, in reference order) may take
/// `(available - used by references 0..k) / (slots - k)` tokens, where `available` is the context
/// less the answer's `max_tokens` and the prompt without any reference text. A short reference
/// leaves its unused share to those after it.
pub struct Budgets<'a> {
    tok: &'a GgufTokenizer,
    available: usize,
    slots: usize,
    mark: usize,
}

impl<'a> Budgets<'a> {
    /// Budgets for `slots` references in `conv` for a model of `ctx` tokens answering in up to
    /// `max_tokens`. Error when even empty references do not fit.
    pub fn new(model: &'a dyn PromptTokens, name: &str, ctx: usize, conv: &[Message], instruction: &str, slots: usize, max_tokens: usize) -> Result<Self> {
        let limit = ctx.saturating_sub(max_tokens);
        let base = model.count(&inject_references(conv, instruction, &vec![String::new(); slots.max(1)]))?;
        // A token per reference for merges at its edges.
        let framed = base + slots;
        if framed > limit {
            return Err(Error::ContextOverflow { model: name.to_string(), prompt_tokens: base, max_tokens, context: ctx });
        }
        let tok = model.tokenizer();
        Ok(Self { tok, available: limit - framed, slots: slots.max(1), mark: tok.encode(CUT_MARK, false)?.len() })
    }

    /// `refs`, in order, each cut to its budget, and the fewest tokens a cut reference was kept
    /// to (None: none was cut).
    pub fn cut(&self, refs: &[String]) -> Result<(Vec<String>, Option<usize>)> {
        let mut cut_to = None::<usize>;
        let out = refs
            .iter()
            .zip(self.each(refs)?)
            .map(|(r, (ids, b))| {
                if ids.len() <= b {
                    return r.clone();
                }
                let keep = b.saturating_sub(self.mark);
                cut_to = Some(cut_to.map_or(keep, |c| c.min(keep)));
                format!("{}{CUT_MARK}", self.tok.decode(&ids[..keep]))
            })
            .collect();
        Ok((out, cut_to))
    }

    /// What a prompt may hold already while references arrive, whichever way the final fit goes
    /// (all whole when they fit, else [`Budgets::cut`]): the `settled` references, in order,
    /// while each is within its budget, and of the first one that is not, or else of `streaming`
    /// (the one being written), the tokens within its budget. The last text returned is the open
    /// one: what follows it is not known yet.
    pub fn known(&self, settled: &[String], streaming: &str) -> Result<Vec<String>> {
        let each = self.each(settled)?;
        let mut out = Vec::with_capacity(settled.len() + 1);
        for (r, (ids, b)) in settled.iter().zip(&each) {
            if ids.len() > *b {
                out.push(self.tok.decode(&ids[..b.saturating_sub(self.mark)]));
                return Ok(out);
            }
            out.push(r.clone());
        }
        let used = each.iter().map(|(ids, _)| ids.len()).sum();
        let keep = self.budget(settled.len(), used).saturating_sub(self.mark);
        let ids = self.tok.encode(streaming, false)?;
        out.push(if ids.len() <= keep { streaming.to_string() } else { self.tok.decode(&ids[..keep]) });
        Ok(out)
    }

    /// Each of `refs`, in order, with its tokens and its budget (a reference over its budget
    /// uses all of it).
    fn each(&self, refs: &[String]) -> Result<Vec<(Vec<u32>, usize)>> {
        let (mut used, mut out) = (0usize, Vec::with_capacity(refs.len()));
        for r in refs {
            let b = self.budget(out.len(), used);
            let ids = self.tok.encode(r, false)?;
            used += ids.len().min(b);
            out.push((ids, b));
        }
        Ok(out)
    }

    fn budget(&self, k: usize, used: usize) -> usize {
        self.available.saturating_sub(used) / self.slots.saturating_sub(k).max(1)
    }
}

/// The fallback when merges at reference edges pushed the in-order cut past the limit: every
/// reference cut to one common token cap, the largest that fits (binary search over real token
/// counts of the rendered prompt).
fn common_cap(model: &dyn PromptTokens, name: &str, ctx: usize, conv: &[Message], instruction: &str, refs: &[String], max_tokens: usize) -> Result<Fitted> {
    let limit = ctx.saturating_sub(max_tokens);
    let tok = model.tokenizer();
    let ids: Vec<Vec<u32>> = refs.iter().map(|r| tok.encode(r, false)).collect::<Result<_>>()?;
    let cut = |cap: usize| -> Vec<String> {
        ids.iter()
            .zip(refs)
            .map(|(t, r)| if t.len() <= cap { r.clone() } else { format!("{}{CUT_MARK}", tok.decode(&t[..cap])) })
            .collect()
    };
    let (lo, hi) = (0usize, ids.iter().map(Vec::len).max().unwrap_or(0));
    let base = model.count(&inject_references(conv, instruction, &cut(0)))?;
    if base > limit {
        return Err(Error::ContextOverflow { model: name.to_string(), prompt_tokens: base, max_tokens, context: ctx });
    }
    let lo = largest_fitting(lo, hi, |cap| Ok(model.count(&inject_references(conv, instruction, &cut(cap)))? <= limit))?;
    let messages = inject_references(conv, instruction, &cut(lo));
    let prompt_tokens = model.count(&messages)?;
    Ok(Fitted { messages, prompt_tokens, cut_to: Some(lo) })
}

/// The largest cap in `lo..=hi` for which `fits` holds, given that it holds for `lo` and, once
/// false, stays false for larger caps.
fn largest_fitting(mut lo: usize, mut hi: usize, fits: impl Fn(usize) -> Result<bool>) -> Result<usize> {
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}

/// Bytes per token assumed for a model whose tokenizer is not at hand (English text with BPE
/// vocabularies averages about 4; 3 leaves room).
pub const BYTES_PER_TOKEN_ESTIMATE: usize = 3;

fn estimate(msgs: &[Message]) -> usize {
    msgs.iter().map(|m| m.content.len().div_ceil(BYTES_PER_TOKEN_ESTIMATE) + 8).sum::<usize>() + 8
}

/// `refs` injected into `conv` for a model with `context` tokens and no tokenizer here: cut to a
/// common byte budget (at character boundaries) when the estimate says they would overflow.
/// `cut_to` is then the budget in estimated tokens.
pub fn fit_references_estimated(conv: &[Message], instruction: &str, refs: &[String], context: usize, max_tokens: usize, model: &str) -> Result<Fitted> {
    let limit = context.saturating_sub(max_tokens);
    let full = inject_references(conv, instruction, refs);
    if estimate(&full) <= limit {
        return Ok(Fitted { prompt_tokens: estimate(&full), messages: full, cut_to: None });
    }
    let cut = |bytes: usize| -> Vec<String> {
        refs.iter()
            .map(|r| {
                if r.len() <= bytes {
                    return r.clone();
                }
                let mut end = bytes;
                while !r.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{} […]", &r[..end])
            })
            .collect()
    };
    let base = estimate(&inject_references(conv, instruction, &cut(0)));
    if base > limit {
        return Err(Error::ContextOverflow { model: model.to_string(), prompt_tokens: base, max_tokens, context });
    }
    let longest = refs.iter().map(String::len).max().unwrap_or(0);
    let lo = largest_fitting(0, longest, |cap| Ok(estimate(&inject_references(conv, instruction, &cut(cap))) <= limit))?;
    let messages = inject_references(conv, instruction, &cut(lo));
    Ok(Fitted { prompt_tokens: estimate(&messages), messages, cut_to: Some(lo / BYTES_PER_TOKEN_ESTIMATE) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimated_fitting_cuts_long_references_to_fit() {
        let conv = vec![Message::user("Q")];
        let refs = vec!["short".to_string(), "é".repeat(3000)];
        let f = fit_references_estimated(&conv, "Synthesize:", &refs, 100_000, 10, "m").unwrap();
        assert!(f.cut_to.is_none());
        let f = fit_references_estimated(&conv, "Synthesize:", &refs, 1000, 100, "m").unwrap();
        assert!(f.cut_to.is_some() && f.prompt_tokens <= 900, "{:?} {}", f.cut_to, f.prompt_tokens);
        assert!(f.messages[0].content.contains("1. short") && f.messages[0].content.contains("[…]"));
        assert!(fit_references_estimated(&conv, &"x".repeat(10_000), &refs, 1000, 100, "m").is_err());
    }
}
