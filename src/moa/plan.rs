//! Planning a MoA run before anything loads: each agent's context upper bound (conversation,
//! the previous layer's references at their agents' max tokens, the answer) per model, and the
//! runtime's memory plan (which models load in which wave) for those jobs.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::model::Message;
use crate::moa::recipe::{Agent, Recipe};
use crate::runtime::scheduler::{Job, Plan};
use crate::runtime::remote::is_remote;
use crate::runtime::Runtime;

/// Upper bound of the context each agent needs: the conversation, the references of the
/// previous layer (each at most its agent's max tokens) and the answer. Remote agents get no
/// job (a remote aggregator a zero-sized one) and no entry among the failures.
pub fn plan_jobs(rt: &Runtime, recipe: &Recipe, conv: &[Message]) -> (Vec<Vec<Option<Job>>>, HashMap<String, String>) {
    let mut failed = HashMap::new();
    let mut ctx_len = HashMap::new();
    for name in recipe.model_names() {
        if is_remote(&name) {
            continue;
        }
        match rt.shape(&name) {
            Ok(s) => {
                ctx_len.insert(name, s.cfg.context_length);
            }
            Err(e) => {
                failed.insert(name, e.to_string());
            }
        }
    }
    let conv_tokens: usize = conv.iter().map(|m| m.content.len() / 2 + 16).sum::<usize>() + 128;
    let instruction = recipe.instruction.len() / 2;
    let job = |a: &Agent, refs: usize| {
        ctx_len.get(&a.model).map(|&c| Job { model: a.model.clone(), context: (conv_tokens + refs + a.max_tokens).min(c) })
    };
    let mut layers = Vec::new();
    let mut refs = 0;
    for agents in &recipe.layers {
        // Remote proposers have no job here: they take no local memory and run beside the waves.
        layers.push(agents.iter().map(|a| job(a, refs)).collect());
        refs = agents.iter().map(|a| a.max_tokens + 8).sum::<usize>() + instruction;
    }
    let agg = &recipe.aggregator;
    layers.push(vec![if is_remote(&agg.model) { Some(Job { model: agg.model.clone(), context: 0 }) } else { job(agg, refs) }]);
    (layers, failed)
}

/// The plan a run of `recipe` on `conv` will execute (what `moa-local plan` prints).
pub fn plan(rt: &Runtime, recipe: &Recipe, conv: &[Message]) -> Result<Plan> {
    let (mut jobs, failed) = plan_jobs(rt, recipe, conv);
    let agg = jobs.pop().and_then(|mut v| v.pop().flatten()).ok_or_else(|| {
        Error::Other(format!("aggregator {}: {}", recipe.aggregator.model, failed.get(&recipe.aggregator.model).cloned().unwrap_or_default()))
    })?;
    let layers: Vec<Vec<Job>> = jobs.into_iter().map(|l| l.into_iter().flatten().collect()).collect();
    rt.plan(&layers, &agg)
}
