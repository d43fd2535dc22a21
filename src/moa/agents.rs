//! One agent's generation in a MoA run: a local model (alone or as batched samples of one
//! model), or a remote endpoint; its streamed text (to the user, the staircase, progress
//! events) and its report entry. `run` decides who runs when; this module runs each one.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::engine::{Control, DecodeStats, SamplingParams};
use crate::error::{Error, Result};
use crate::model::{GenerateRequest, Generation, Message, Prompt, PromptCache, StopReason};
use crate::moa::fit::{fit_references, fit_references_counted, fit_references_estimated};
use crate::moa::recipe::Agent;
use crate::moa::report::{AgentAnswer, AgentStats, MoaEvent};
use crate::moa::run::Ctx;
use crate::model::chat_tokens::ChatTokens;
use crate::runtime::remote::{Endpoint, RemoteRequest, DEFAULT_REMOTE_CONTEXT};
use crate::runtime::Runtime;

/// The conversation an agent answers: its own system prompt, when set, replaces the user's.
pub(crate) fn with_system(conv: &[Message], system: &Option<String>) -> Vec<Message> {
    let mut out: Vec<Message> = conv.to_vec();
    if let Some(s) = system {
        if out.first().is_some_and(|m| m.role == "system") {
            out[0].content = s.clone();
        } else {
            out.insert(0, Message { role: "system".into(), content: s.clone() });
        }
    }
    out
}

pub(crate) type AgentRun = (crate::model::Generation, f64, f64);

pub(crate) fn same_settings(a: &Agent, b: &Agent) -> bool {
    a.model == b.model && a.temperature == b.temperature && a.max_tokens == b.max_tokens && a.system == b.system
}

/// Several samples of one agent's settings (different seeds) as one batched generation.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_samples(
    rt: &Arc<Runtime>,
    agent: &Agent,
    conv: &[Message],
    instruction: &str,
    refs: &[String],
    seeds: &[u64],
    layer: usize,
    indices: &[usize],
    draft: bool,
    ctx: &Arc<Ctx>,
) -> Vec<Result<AgentRun>> {
    let all_err = |e: Error| indices.iter().map(|_| Err(Error::Other(e.to_string()))).collect();
    let model = match rt.load(&agent.model).await {
        Ok(m) => m,
        Err(e) => return all_err(e),
    };
    for &index in indices {
        (ctx.sink)(MoaEvent::AgentStarted { layer, index, model: agent.model.clone() });
    }
    let conv = with_system(conv, &agent.system);
    let fitted = match fit_references(&model, &conv, instruction, refs, agent.max_tokens) {
        Ok(f) => f,
        Err(e) => return all_err(e),
    };
    if let Some(cap) = fitted.cut_to {
        ctx.notice(format!("layer {layer}: references for {} cut to fit (the shortest cut to {cap} tokens)", agent.model));
    }
    let sampling = SamplingParams { temperature: agent.temperature, ..SamplingParams::default() };
    let mut req = GenerateRequest::new(Prompt::Chat(fitted.messages), agent.max_tokens, sampling);
    if !draft {
        req.max_draft = 0;
    }
    let start = ctx.secs();
    let (sink, t0, cancel, idx) = (ctx.sink.clone(), Instant::now(), ctx.cancel.clone(), indices.to_vec());
    let mut pieces = vec![0usize; indices.len()];
    let on_text = move |s: usize, _piece: &str| {
        if cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Control::Stop;
        }
        pieces[s] += 1;
        if pieces[s].is_multiple_of(8) {
            sink(MoaEvent::AgentProgress { layer, index: idx[s], pieces: pieces[s], secs: t0.elapsed().as_secs_f64() });
        }
        Control::Continue
    };
    match Runtime::generate_samples(model, req, seeds.to_vec(), on_text).await {
        Ok(gens) => {
            let end = ctx.secs();
            gens.into_iter().map(|g| Ok((g, start, end))).collect()
        }
        Err(e) => all_err(e),
    }
}

/// One agent's generation: where it sits in the run and what it starts from.
pub(crate) struct AgentCall {
    pub(crate) layer: usize,
    pub(crate) index: usize,
    pub(crate) seed: u64,
    /// The aggregator: its text streams to the run's caller.
    pub(crate) stream_to_user: bool,
    /// Where its text streams for the staircase (a proposer of the last layer).
    pub(crate) partial: Option<Arc<Mutex<String>>>,
    pub(crate) draft: bool,
    /// A cache already holding the beginning of its prompt (the staircase's).
    pub(crate) cache: Option<PromptCache>,
}

pub(crate) async fn run_agent(
    rt: &Arc<Runtime>,
    agent: &Agent,
    conv: &[Message],
    instruction: &str,
    refs: &[String],
    call: AgentCall,
    ctx: &Arc<Ctx>,
) -> Result<AgentRun> {
    let AgentCall { layer, index, seed, stream_to_user, partial, draft, cache } = call;
    let model = rt.load(&agent.model).await?;
    (ctx.sink)(MoaEvent::AgentStarted { layer, index, model: agent.model.clone() });
    let conv = with_system(conv, &agent.system);
    let fitted = fit_references(&model, &conv, instruction, refs, agent.max_tokens)?;
    if let Some(cap) = fitted.cut_to {
        ctx.notice(format!(
            "layer {layer}: references for {} cut to fit its context of {} tokens (the shortest cut to {cap} tokens)",
            agent.model,
            model.context_length()
        ));
    }
    let sampling = SamplingParams { temperature: agent.temperature, seed, ..SamplingParams::default() };
    let mut req = GenerateRequest::new(Prompt::Chat(fitted.messages), agent.max_tokens, sampling);
    if !draft {
        req.max_draft = 0;
    }
    // A run given up while this agent waits for a place in its model's batch: out of the queue.
    req.cancel = ctx.cancel.clone();
    let start = ctx.secs();
    let on_text = text_sink(ctx, layer, index, stream_to_user, partial);
    // Through the model's decode loop: batched with every other sequence of that model (other
    // runs' agents, single-model requests), the same tokens as alone.
    let g = rt.generate_batched(model, req, cache, on_text).await?;
    Ok((g, start, ctx.secs()))
}

/// Where an agent's text goes as it streams: the user (the aggregator), the staircase buffer,
/// progress events; it stops the agent once the run is cancelled.
pub(crate) fn text_sink(
    ctx: &Ctx,
    layer: usize,
    index: usize,
    stream_to_user: bool,
    partial: Option<Arc<Mutex<String>>>,
) -> impl FnMut(&str) -> Control + Send + 'static {
    let (sink, t0, cancel) = (ctx.sink.clone(), Instant::now(), ctx.cancel.clone());
    let mut pieces = 0usize;
    move |piece: &str| {
        if cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Control::Stop;
        }
        pieces += 1;
        if let Some(p) = &partial {
            p.lock().unwrap_or_else(|p| p.into_inner()).push_str(piece);
        }
        if stream_to_user {
            sink(MoaEvent::AggregateText(piece.to_string()));
        } else if pieces.is_multiple_of(8) {
            sink(MoaEvent::AgentProgress { layer, index, pieces, secs: t0.elapsed().as_secs_f64() });
        }
        Control::Continue
    }
}

/// A remote agent: the same conversation and references, sent to its endpoint. References are
/// cut to fit the remote context: the endpoint's report, else the recipe's `context_length`, else
/// the named local tokenizer copy's, else [`DEFAULT_REMOTE_CONTEXT`]. With a local tokenizer copy
/// the prompt is counted exactly, else estimated from bytes.
pub(crate) async fn run_remote(
    rt: &Arc<Runtime>,
    agent: &Agent,
    conv: &[Message],
    instruction: &str,
    refs: &[String],
    call: AgentCall,
    ctx: &Arc<Ctx>,
) -> Result<AgentRun> {
    let AgentCall { layer, index, seed, stream_to_user, partial, .. } = call;
    let ep = Endpoint::parse(&agent.model)?;
    (ctx.sink)(MoaEvent::AgentStarted { layer, index, model: agent.model.clone() });
    let conv = with_system(conv, &agent.system);
    let local = match rt.remote().setting(&ep).tokenizer {
        Some(name) => {
            let r = rt.clone();
            let t = tokio::task::spawn_blocking(move || r.chat_tokens(&name).map_err(|e| Error::Config(format!("tokenizer `{name}`: {e}"))))
                .await
                .map_err(|e| Error::Other(format!("tokenizer thread failed: {e}")))??;
            Some(t)
        }
        None => None,
    };
    let context = match rt.remote().context_length(&ep).await.or(local.as_ref().map(|t| t.context_length)) {
        Some(c) => c,
        None => {
            ctx.notice(format!(
                "layer {layer}: {} reports no context length; references fitted to {DEFAULT_REMOTE_CONTEXT} tokens (set context_length for the endpoint)",
                agent.model
            ));
            DEFAULT_REMOTE_CONTEXT
        }
    };
    let fitted = match &local {
        Some(t) => fit_references_counted(t.as_ref(), &agent.model, context, &conv, instruction, refs, agent.max_tokens)?,
        None => fit_references_estimated(&conv, instruction, refs, context, agent.max_tokens, &agent.model)?,
    };
    if let Some(cap) = fitted.cut_to {
        let how = if local.is_some() { "the shortest cut to " } else { "each cut to about " };
        ctx.notice(format!("layer {layer}: references for {} cut to fit its context of {context} tokens ({how}{cap} tokens)", agent.model));
    }
    let messages = fitted.messages;
    let req = RemoteRequest { messages: messages.clone(), temperature: agent.temperature, max_tokens: agent.max_tokens, seed };
    let start = ctx.secs();
    let mut on_text = text_sink(ctx, layer, index, stream_to_user, partial);
    let r = rt.remote().chat(&ep, &req, &mut on_text).await?;
    if !r.retried.is_empty() {
        ctx.notice(format!("layer {layer}: {} answered on attempt {} (retried: {})", agent.model, r.attempts, r.retried.join("; ")));
    }
    // Token counts: the endpoint's usage, else counted with the local tokenizer copy, else the
    // streamed pieces (one per token on the servers seen) and no prompt count.
    let counted = |n: Option<usize>, f: &dyn Fn(&ChatTokens) -> Result<usize>| n.or_else(|| local.as_deref().and_then(|t| f(t).ok()));
    let generated = counted(r.completion_tokens, &|t| t.count_text(&r.text)).unwrap_or(r.pieces);
    let prompt_tokens = counted(r.prompt_tokens, &|t| t.count(&messages)).unwrap_or(0);
    let stats = DecodeStats {
        prompt_tokens,
        prefilled_tokens: prompt_tokens,
        generated_tokens: generated,
        prefill_secs: r.ttft_secs,
        decode_secs: (r.secs - r.ttft_secs).max(0.0),
        ttft_secs: r.ttft_secs,
        ..DecodeStats::default()
    };
    let stop_reason = match r.finish_reason.as_deref() {
        Some("length") => StopReason::MaxTokens,
        Some("cancelled") => StopReason::Cancelled,
        _ => StopReason::EndOfGeneration,
    };
    let prompt_text = messages.iter().map(|m| format!("[{}]\n{}", m.role, m.content)).collect::<Vec<_>>().join("\n");
    let g = Generation { prompt_text, prompt_ids: Vec::new(), ids: Vec::new(), text: r.text, stop_reason, stats, logprobs: Vec::new() };
    Ok((g, start, ctx.secs()))
}

pub(crate) fn finish(layer: usize, index: usize, wave: usize, agent: &Agent, seed: u64, r: Result<AgentRun>, ctx: &Ctx) -> AgentAnswer {
    let mut a = AgentAnswer {
        layer,
        index,
        wave,
        model: agent.model.clone(),
        seed,
        temperature: agent.temperature,
        max_tokens: agent.max_tokens,
        text: String::new(),
        stop_reason: None,
        stats: AgentStats::default(),
        prompt: String::new(),
        error: None,
        reference: None,
    };
    match r {
        Ok((g, start, end)) => {
            let s = &g.stats;
            a.stats = AgentStats {
                prompt_tokens: s.prompt_tokens,
                generated_tokens: s.generated_tokens,
                ttft_secs: s.ttft_secs,
                prefill_tps: s.prefill_tps(),
                decode_tps: s.decode_tps(),
                start_secs: start,
                end_secs: end,
                threads: s.threads,
                prefilled_tokens: s.prefilled_tokens,
                drafted_tokens: s.drafted_tokens,
                accepted_tokens: s.accepted_tokens,
            };
            a.stop_reason = Some(g.stop_reason);
            a.prompt = g.prompt_text;
            if g.text.trim().is_empty() {
                a.error = Some("returned an empty answer".into());
            }
            a.text = g.text;
        }
        Err(e) => a.error = Some(e.to_string()),
    }
    let outcome = match &a.error {
        None => Ok(a.stats.clone()),
        Some(e) => Err(e.clone()),
    };
    if let Some(e) = &a.error {
        ctx.notice(format!("layer {layer}: proposer {} ({}) left out: {e}", index + 1, agent.model));
    }
    (ctx.sink)(MoaEvent::AgentFinished { layer, index, model: agent.model.clone(), text: a.text.clone(), outcome });
    a
}
