//! Reference order and the staircase: the references a layer hands on are numbered in the order
//! their proposers finish (or in recipe order), and while the layer still runs, the aggregator's
//! prompt is prefilled as far as it is known: the template's header and the instruction at once,
//! each reference as its proposer finishes, and the text of the last one still running as it
//! streams. When the last proposer ends only its tail and the user turn are left to prefill.
//!
//! This module keeps the bookkeeping (who finished, in which order, what is known of the
//! prompt); the cache is filled by `runtime::prefill::EarlyPrefill`.

use std::sync::{Arc, Mutex};

use crate::model::prefix::SENTINEL;
use crate::model::{Message, Model};
use crate::moa::fit::Budgets;
use crate::moa::prompt::inject_references;
use crate::runtime::prefill::{EarlyPrefill, TakeKept};

/// How a layer's references are numbered for the next one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceOrder {
    /// In the order the proposers finish (the default: the aggregator's prompt grows from the
    /// front as answers come in).
    #[default]
    Finish,
    /// In recipe order (bit-reproducible seeded runs; early prefill only for an in-order prefix).
    Recipe,
}

impl std::str::FromStr for ReferenceOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "finish" => Ok(Self::Finish),
            "recipe" => Ok(Self::Recipe),
            _ => Err(format!("reference order must be `finish` or `recipe`, got `{s}`")),
        }
    }
}

/// One layer's answers as they come in.
pub struct References {
    order: ReferenceOrder,
    /// Per agent of the layer: None while running; Some(None) failed; Some(Some(text)) answered.
    done: Vec<Option<Option<String>>>,
    /// Agent indices in the order they finished.
    finished: Vec<usize>,
}

impl References {
    pub fn new(agents: usize, order: ReferenceOrder) -> Self {
        Self { order, done: vec![None; agents], finished: Vec::new() }
    }

    /// Agent `index` finished with `text` (None: it failed or was left out).
    pub fn finish(&mut self, index: usize, text: Option<String>) {
        if index < self.done.len() && self.done[index].is_none() {
            self.done[index] = Some(text.map(|t| t.trim().to_string()));
            self.finished.push(index);
        }
    }

    /// The agents whose references are settled, in reference order, with their texts; and the
    /// agent whose reference comes next once it finishes, when that can be told already.
    pub fn settled(&self) -> (Vec<(usize, String)>, Option<usize>) {
        let ok = |i: &usize| self.done[*i].clone().flatten().map(|t| (*i, t));
        match self.order {
            ReferenceOrder::Finish => {
                let refs = self.finished.iter().filter_map(ok).collect();
                let running: Vec<usize> = (0..self.done.len()).filter(|&i| self.done[i].is_none()).collect();
                (refs, (running.len() == 1).then(|| running[0]))
            }
            ReferenceOrder::Recipe => {
                let upto = self.done.iter().position(Option::is_none).unwrap_or(self.done.len());
                let refs = (0..upto).filter_map(|i| ok(&i)).collect();
                (refs, (upto < self.done.len()).then_some(upto))
            }
        }
    }

    /// Agents that failed or were left out so far (they write no reference).
    pub fn failed(&self) -> usize {
        self.done.iter().filter(|d| matches!(d, Some(None))).count()
    }

    /// Once every agent finished: the references in order, and each agent's 1-based position.
    pub fn ordered(&self) -> (Vec<String>, Vec<Option<usize>>) {
        let (refs, _) = self.settled();
        let mut pos = vec![None; self.done.len()];
        for (k, (i, _)) in refs.iter().enumerate() {
            pos[*i] = Some(k + 1);
        }
        (refs.into_iter().map(|(_, t)| t).collect(), pos)
    }
}

/// The aggregator's prompt while its references come in.
pub struct Staircase {
    /// The aggregator's conversation (its system prompt applied) and the instruction.
    conv: Vec<Message>,
    instruction: String,
    /// The aggregator's answer length (its references' budgets leave room for it).
    max_tokens: usize,
    agents: usize,
    session: Option<(Arc<Model>, EarlyPrefill)>,
    /// Streamed text of running agents (single generations only), by index.
    partial: Vec<Option<Arc<Mutex<String>>>>,
    /// What the last snapshot held: settled references and bytes of streamed text.
    sent: Option<(usize, usize)>,
}

/// Streamed text is sent on when it grew by this many bytes (a few tokens).
const STREAM_STEP: usize = 48;

impl Staircase {
    pub fn new(conv: Vec<Message>, instruction: String, agents: usize, max_tokens: usize) -> Self {
        Self { conv, instruction, max_tokens, agents, session: None, partial: vec![None; agents], sent: None }
    }

    pub fn started(&self) -> bool {
        self.session.is_some()
    }

    /// Start filling `model`'s cache (capacity: the planned context), from a kept cache that
    /// `kept` hands out when one shares a prefix with the prompt.
    pub fn start(&mut self, model: Arc<Model>, capacity: usize, kept: Option<TakeKept>) -> crate::error::Result<()> {
        self.session = Some((model.clone(), EarlyPrefill::start(model, capacity, kept)?));
        Ok(())
    }

    /// Agent `index` streams its answer into `buf`.
    pub fn watch(&mut self, index: usize, buf: Arc<Mutex<String>>) {
        if let Some(slot) = self.partial.get_mut(index) {
            *slot = Some(buf);
        }
    }

    /// Send the session what is known of the prompt now, when it grew. References that may be
    /// cut to fit the context are sent only as far as they are sure to stay ([`Budgets::known`]).
    pub fn update(&mut self, refs: &References) {
        let Some((model, session)) = &self.session else { return };
        let (settled, next) = refs.settled();
        let streamed = next
            .and_then(|i| self.partial.get(i).cloned().flatten())
            .map(|b| b.lock().unwrap_or_else(|p| p.into_inner()).trim_start().to_string())
            .unwrap_or_default();
        let now = (settled.len(), streamed.len());
        if let Some(prev) = self.sent {
            if prev.0 == now.0 && now.1 < prev.1 + STREAM_STEP {
                return;
            }
        }
        self.sent = Some(now);
        let settled: Vec<String> = settled.into_iter().map(|(_, t)| t).collect();
        let slots = self.agents.saturating_sub(refs.failed());
        let known = Budgets::new(model.as_ref(), &model.name, model.context_length(), &self.conv, &self.instruction, slots, self.max_tokens)
            .and_then(|b| b.known(&settled, &streamed));
        // Not even empty references fit: the aggregator's own run reports it.
        let Ok(mut texts) = known else { return };
        if let Some(open) = texts.last_mut() {
            open.push_str(SENTINEL);
        }
        session.update(inject_references(&self.conv, &self.instruction, &texts));
    }

    pub fn into_session(self) -> Option<EarlyPrefill> {
        self.session.map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_order_numbers_references_as_they_come() {
        let mut r = References::new(3, ReferenceOrder::Finish);
        r.finish(2, Some(" c ".into()));
        assert_eq!(r.settled(), (vec![(2, "c".to_string())], None));
        r.finish(0, None);
        assert_eq!(r.settled(), (vec![(2, "c".to_string())], Some(1)), "the last one running comes next");
        r.finish(1, Some("b".into()));
        assert_eq!(r.ordered(), (vec!["c".to_string(), "b".to_string()], vec![None, Some(2), Some(1)]));
    }

    #[test]
    fn recipe_order_settles_an_in_order_prefix() {
        let mut r = References::new(3, ReferenceOrder::Recipe);
        r.finish(1, Some("b".into()));
        assert_eq!(r.settled(), (vec![], Some(0)), "agent 0 is still running");
        r.finish(0, Some("a".into()));
        assert_eq!(r.settled(), (vec![(0, "a".to_string()), (1, "b".to_string())], Some(2)));
        r.finish(2, Some("c".into()));
        assert_eq!(r.ordered().0, vec!["a", "b", "c"]);
        assert_eq!("finish".parse::<ReferenceOrder>(), Ok(ReferenceOrder::Finish));
        assert!("random".parse::<ReferenceOrder>().is_err());
    }
}
