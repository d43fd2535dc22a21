//! The worker side of the server: a request that passed validation becomes a job. `submit`
//! admits it through the queue, checks its prompt against every model's context (so a prompt
//! that is too long is a 400 before any streaming starts), and spawns a task that waits for a run
//! slot and runs it in the MoA / runtime layer: `moa::run` for a recipe, `Runtime::load` +
//! `Runtime::generate` for one model alone. The job streams [`JobEvent`]s back; when the receiving side is dropped (the
//! client went away) the job sets its cancel flag, the generation stops at its next token, and
//! the slot, the KV cache and the queue place are freed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::engine::{Control, SamplingParams};
use crate::error::{Error, Result};
use crate::moa::staircase::ReferenceOrder;
use crate::moa::report::AgentStats;
use crate::moa::{self, EventSink, MoaEvent, Recipe, RunOptions};
use crate::engine::logprobs::TokenLogprob;
use crate::model::tokenizer::GgufTokenizer;
use crate::model::{GenerateRequest, Prompt, PromptCache, StopReason};
use crate::runtime::Runtime;
use crate::server::models::{precheck, ModelEntry};
use crate::server::openai::{AgentUsage, ApiError, ChatParams, LayerUsage, MoaUsage, Usage};
use crate::server::queue::{Outcome, Queue, Ticket};

/// What a request's `model` names.
#[derive(Clone)]
pub enum Target {
    Moa {
        name: String,
        recipe: Arc<Recipe>,
    },
    /// One model alone, by the name the recipes use.
    Single {
        name: String,
    },
}

/// Request settings the server applies when a request leaves them out.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub temperature: f32,
    pub max_tokens: usize,
    /// The seed of requests without one (random per request when absent).
    pub seed: Option<u64>,
    /// `--no-draft`, `--reference-order`, `--no-early-prefill` of the server's command line.
    pub draft: bool,
    pub reference_order: ReferenceOrder,
    pub early_prefill: bool,
}

pub enum JobEvent {
    /// A piece of choice `index`'s answer (the aggregator's, for MoA; index 0 unless `n > 1`).
    Text(usize, String),
    Done(Finished),
    Failed(Error),
}

pub struct Finished {
    /// One per choice.
    pub finish_reasons: Vec<&'static str>,
    pub usage: Usage,
    pub moa: Option<MoaUsage>,
    /// Per choice, when `logprobs` was asked for: its tokens with their log-probabilities.
    pub choices: Vec<ChoiceTokens>,
    /// With `echo`: the prompt's text and tokens (log-probabilities when asked for).
    pub prompt: Option<EchoPrompt>,
}

/// One token as a response reports it: its text (bytes read as UTF-8, lossy), its bytes, its
/// log-probability (None for a prompt's first token, which has no context) and alternatives.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: Option<f32>,
    pub top: Vec<(String, Vec<u8>, f32)>,
}

#[derive(Debug, Clone, Default)]
pub struct ChoiceTokens {
    pub tokens: Vec<TokenInfo>,
}

#[derive(Debug, Clone)]
pub struct EchoPrompt {
    pub text: String,
    pub tokens: Vec<TokenInfo>,
}

fn token_info(tok: &GgufTokenizer, id: u32, lp: Option<&TokenLogprob>) -> TokenInfo {
    let piece = |id: u32| {
        let b = tok.token_bytes(id).to_vec();
        (String::from_utf8_lossy(&b).into_owned(), b)
    };
    let (token, bytes) = piece(id);
    let top = lp.map(|l| l.top.iter().map(|&(t, p)| { let (s, b) = piece(t); (s, b, p) }).collect()).unwrap_or_default();
    TokenInfo { token, bytes, logprob: lp.map(|l| l.logprob), top }
}

/// A submitted job. Dropping it (the client went away) cancels the run.
pub struct Job {
    pub events: UnboundedReceiver<JobEvent>,
    _guard: CancelGuard,
}

struct CancelGuard(Arc<AtomicBool>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Admit, check and start a job; errors are the HTTP errors to answer with.
pub async fn submit(
    rt: &Arc<Runtime>,
    queue: &Arc<Queue>,
    models: &[Arc<ModelEntry>],
    target: Target,
    params: ChatParams,
    defaults: Defaults,
    moa_gate: Arc<tokio::sync::Semaphore>,
) -> std::result::Result<Job, ApiError> {
    let ticket = queue.try_enter().map_err(|f| ApiError::queue_full(f.waiting, f.retry_after_secs))?;
    let target = match target {
        Target::Moa { name, recipe } => Target::Moa { name, recipe: Arc::new(adjust(&recipe, &params)) },
        t => t,
    };
    let (m, t, p) = (models.to_vec(), target.clone(), params.clone());
    tokio::task::spawn_blocking(move || precheck(&m, &t, &p, defaults))
        .await
        .map_err(|e| ApiError::from(Error::Other(format!("the prompt check failed: {e}"))))??;
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = unbounded_channel();
    tokio::spawn(job(rt.clone(), ticket, target, params, defaults, moa_gate, cancel.clone(), tx));
    Ok(Job { events: rx, _guard: CancelGuard(cancel) })
}

/// The request's sampling settings applied to a recipe: `temperature` to every agent,
/// `max_tokens` to the aggregator (proposers are capped by it too, never raised).
fn adjust(recipe: &Recipe, p: &ChatParams) -> Recipe {
    let mut r = recipe.clone();
    for a in r.layers.iter_mut().flatten() {
        if let Some(t) = p.temperature {
            a.temperature = t;
        }
        if let Some(n) = p.max_tokens {
            a.max_tokens = a.max_tokens.min(n);
        }
    }
    if let Some(t) = p.temperature {
        r.aggregator.temperature = t;
    }
    if let Some(n) = p.max_tokens {
        r.aggregator.max_tokens = n;
    }
    r
}

#[allow(clippy::too_many_arguments)]
async fn job(
    rt: Arc<Runtime>,
    ticket: Ticket,
    target: Target,
    p: ChatParams,
    defaults: Defaults,
    moa_gate: Arc<tokio::sync::Semaphore>,
    cancel: Arc<AtomicBool>,
    tx: UnboundedSender<JobEvent>,
) {
    let slot = tokio::select! {
        s = ticket.start() => s,
        _ = tx.closed() => return, // the client left while waiting; the ticket is dropped with this future
    };
    if cancel.load(Ordering::Relaxed) || tx.is_closed() {
        slot.finish(Outcome::Cancelled);
        return;
    }
    let run = run(rt, target, p, defaults, moa_gate, cancel.clone(), tx.clone());
    tokio::pin!(run);
    let r = tokio::select! {
        r = &mut run => r,
        _ = tx.closed() => {
            cancel.store(true, Ordering::Relaxed);
            run.await // returns at the generation's next token
        }
    };
    slot.finish(match &r {
        Ok(_) => Outcome::Completed,
        Err(Error::Cancelled) => Outcome::Cancelled,
        Err(_) => Outcome::Failed,
    });
    let _ = tx.send(match r {
        Ok(f) => JobEvent::Done(f),
        Err(e) => JobEvent::Failed(e),
    });
}

async fn run(
    rt: Arc<Runtime>,
    target: Target,
    p: ChatParams,
    defaults: Defaults,
    moa_gate: Arc<tokio::sync::Semaphore>,
    cancel: Arc<AtomicBool>,
    tx: UnboundedSender<JobEvent>,
) -> Result<Finished> {
    let seed = p.seed.or(defaults.seed).unwrap_or_else(rand::random);
    match target {
        Target::Single { name } => {
            let model = rt.load(&name).await?;
            let prompt = p.prompt.clone().unwrap_or_else(|| Prompt::Chat(p.messages.clone()));
            let max_tokens = p.max_tokens.unwrap_or(defaults.max_tokens);
            let sampling = SamplingParams {
                temperature: p.temperature.unwrap_or(defaults.temperature),
                top_p: p.top_p.unwrap_or(SamplingParams::default().top_p),
                seed,
                ..SamplingParams::default()
            };
            let mut req = GenerateRequest::new(prompt.clone(), max_tokens, sampling);
            req.stop = p.stop.clone();
            req.logprobs = p.logprobs;
            req.cancel = Some(cancel.clone());
            if !defaults.draft {
                req.max_draft = 0;
            }
            // Every choice joins the model's decode loop (batched), choice i with seed + i; n > 1
            // choices start from forks of one prefill of the prompt.
            let shared = if p.n > 1 && max_tokens > 0 { Some(rt.prefill_shared(model.clone(), &req).await?) } else { None };
            let runs = (0..p.n.max(1)).map(|i| {
                let (c, tx, rt, model) = (cancel.clone(), tx.clone(), rt.clone(), model.clone());
                let mut req = req.clone();
                req.sampling.seed = seed.wrapping_add(i as u64);
                let pc = shared.as_ref().map(PromptCache::fork).transpose();
                async move {
                    rt.generate_batched(model, req, pc?, move |piece| {
                        if c.load(Ordering::Relaxed) {
                            return Control::Stop;
                        }
                        let _ = tx.send(JobEvent::Text(i, piece.to_string()));
                        Control::Continue
                    })
                    .await
                }
            });
            // max_tokens 0 (an echoed text completion that only scores its prompt) generates nothing.
            let gens = if max_tokens == 0 {
                Vec::new()
            } else {
                futures_util::future::join_all(runs).await.into_iter().collect::<Result<Vec<_>>>()?
            };
            if cancel.load(Ordering::Relaxed) || gens.iter().any(|g| g.stop_reason == StopReason::Cancelled) {
                return Err(Error::Cancelled);
            }
            let tok = &model.tokenizer;
            let choices = gens
                .iter()
                .map(|g| ChoiceTokens { tokens: g.ids.iter().zip(&g.logprobs).map(|(&id, lp)| token_info(tok, id, Some(lp))).collect() })
                .collect();
            let (prompt_text, prompt_ids) = match gens.first() {
                Some(g) => (g.prompt_text.clone(), g.prompt_ids.clone()),
                None => model.tokenize_prompt(&prompt)?,
            };
            let echo = match (p.echo, p.logprobs) {
                (false, _) => None,
                (true, None) => Some(EchoPrompt { text: prompt_text, tokens: prompt_ids.iter().map(|&id| token_info(tok, id, None)).collect() }),
                (true, Some(top)) => {
                    let scored = rt.score_prompt(model.clone(), prompt_ids.clone(), top).await?;
                    let lps = std::iter::once(None).chain(scored.iter().map(Some));
                    Some(EchoPrompt { text: prompt_text, tokens: prompt_ids.iter().zip(lps).map(|(&id, lp)| token_info(tok, id, lp)).collect() })
                }
            };
            let completion: usize = gens.iter().map(|g| g.stats.generated_tokens).sum();
            let usage = usage(prompt_ids.len(), completion);
            // Nothing generated (max_tokens 0): every choice ended at its length.
            let finish_reasons: Vec<&'static str> = match gens.as_slice() {
                [] => vec!["length"; p.n.max(1)],
                g => g.iter().map(|g| finish_reason(Some(g.stop_reason))).collect(),
            };
            Ok(Finished { finish_reasons, usage, moa: None, choices, prompt: echo })
        }
        Target::Moa { name, recipe } => {
            let _one_at_a_time = moa_gate.acquire_owned().await.map_err(|_| Error::Other("the server is shutting down".into()))?;
            let opts = RunOptions {
                seed,
                cancel: Some(cancel.clone()),
                draft: defaults.draft,
                reference_order: defaults.reference_order,
                early_prefill: defaults.early_prefill,
                ..RunOptions::default()
            };
            run_moa(rt, &name, &recipe, p, opts, cancel, tx).await
        }
    }
}

fn usage(prompt: usize, completion: usize) -> Usage {
    Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
}

fn finish_reason(r: Option<StopReason>) -> &'static str {
    match r {
        Some(StopReason::MaxTokens) => "length",
        _ => "stop",
    }
}

type Finish = (usize, String, std::result::Result<AgentStats, String>);

/// What a MoA run's events tell: each agent's tokens, the stop-string state of the aggregate.
#[derive(Default)]
struct Collected {
    finished: Vec<(usize, Finish)>,
    notices: Vec<String>,
    stop: StopCut,
}

async fn run_moa(
    rt: Arc<Runtime>,
    name: &str,
    recipe: &Recipe,
    p: ChatParams,
    opts: RunOptions,
    cancel: Arc<AtomicBool>,
    tx: UnboundedSender<JobEvent>,
) -> Result<Finished> {
    let col = Arc::new(Mutex::new(Collected { stop: StopCut::new(p.stop.clone()), ..Default::default() }));
    let (c, stop_flag, out) = (col.clone(), cancel.clone(), tx.clone());
    let sink: EventSink = Arc::new(move |e| {
        let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            MoaEvent::AggregateText(t) => {
                let (emit, hit) = c.stop.push(&t);
                if !emit.is_empty() {
                    let _ = tx.send(JobEvent::Text(0, emit));
                }
                if hit {
                    // A stop string: end the aggregator at its next token (the run then reports
                    // `Cancelled`, and the usage comes from the events collected here).
                    stop_flag.store(true, Ordering::Relaxed);
                }
            }
            MoaEvent::AgentFinished { layer, index, model, outcome, .. } => c.finished.push((layer, (index, model, outcome))),
            MoaEvent::Notice(n) => c.notices.push(n),
            _ => {}
        }
    });
        let r = moa::run(rt, recipe, &p.messages, &opts, sink).await;
    let mut c = col.lock().unwrap_or_else(|p| p.into_inner());
    let finish = match r {
        Ok(report) => {
            let rest = std::mem::take(&mut c.stop.held);
            if !rest.is_empty() {
                let _ = out.send(JobEvent::Text(0, rest));
            }
            finish_reason(report.aggregate.stop_reason)
        }
        Err(Error::Cancelled) if c.stop.hit => "stop",
        Err(e) => return Err(e),
    };
    let agg_layer = recipe.layers.len() + 1;
    let mut layers: Vec<LayerUsage> = (1..agg_layer).map(|layer| LayerUsage { layer, agents: Vec::new() }).collect();
    let mut agg = Usage::default();
    c.finished.sort_by_key(|(l, (i, _, _))| (*l, *i));
    for (layer, (_, model, outcome)) in c.finished.drain(..) {
        let (pt, ct, error) = match outcome {
            Ok(s) => (s.prompt_tokens, s.generated_tokens, None),
            Err(e) => (0, 0, Some(e)),
        };
        if layer == agg_layer {
            agg = usage(pt, ct);
        } else if let Some(l) = layers.get_mut(layer - 1) {
            l.agents.push(AgentUsage { model, prompt_tokens: pt, completion_tokens: ct, error });
        }
    }
    let all = || layers.iter().flat_map(|l| l.agents.iter());
    let moa = MoaUsage {
        recipe: name.to_string(),
        aggregator: recipe.aggregator.model.clone(),
        seed: opts.seed,
        proposer_prompt_tokens: all().map(|a| a.prompt_tokens).sum(),
        proposer_completion_tokens: all().map(|a| a.completion_tokens).sum(),
        layers,
        notices: std::mem::take(&mut c.notices),
    };
    Ok(Finished { finish_reasons: vec![finish], usage: agg, moa: Some(moa), choices: Vec::new(), prompt: None })
}

/// Stop strings applied to streamed text: text that could begin a stop string is held back
/// until it cannot; once one is found nothing more is emitted.
#[derive(Default)]
pub struct StopCut {
    stops: Vec<String>,
    /// Text not yet emitted (it could begin a stop string).
    pub held: String,
    pub hit: bool,
}

impl StopCut {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), ..Default::default() }
    }

    /// Add a piece; returns what may be emitted now and whether a stop string was reached.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.hit {
            return (String::new(), true);
        }
        self.held.push_str(piece);
        if let Some(i) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.hit = true;
            let out = self.held[..i].to_string();
            self.held.clear();
            return (out, true);
        }
        let mut keep = self.held.len();
        for s in &self.stops {
            for (i, _) in self.held.char_indices().rev().take(s.chars().count()) {
                if s.starts_with(&self.held[i..]) {
                    keep = keep.min(i);
                }
            }
        }
        let out: String = self.held.drain(..keep).collect();
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::StopCut;

    #[test]
    fn stop_strings_cut_the_stream_and_hold_back_prefixes() {
        let mut s = StopCut::new(vec!["\n\n".into(), "END".into()]);
        assert_eq!(s.push("Hello E"), ("Hello ".to_string(), false));
        assert_eq!(s.push("N"), (String::new(), false));
        assert_eq!(s.push("ough\n"), ("ENough".to_string(), false));
        assert_eq!(s.held, "\n");
        assert_eq!(s.push("\nmore"), (String::new(), true));
        assert_eq!(s.push("x"), (String::new(), true));
        let mut none = StopCut::new(vec![String::new()]);
        assert_eq!(none.push("a\n\n"), ("a\n\n".to_string(), false));
    }
}
