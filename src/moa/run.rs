//! Running a MoA recipe: load every model once, run each proposer layer concurrently (failures
//! are reported and left out), inject the layer's answers as references for the next, and
//! stream the aggregator's answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::JoinSet;

use crate::engine::{Control, SamplingParams};
use crate::error::{Error, Result};
use crate::model::{GenerateRequest, Message, Model, Prompt};
use crate::moa::fit::fit_references;
use crate::moa::recipe::{Agent, Recipe};
use crate::moa::report::{AgentAnswer, AgentStats, EventSink, LayerReport, MoaEvent, MoaReport, ModelReport};
use crate::runtime::Runtime;

pub struct RunOptions {
    pub seed: u64,
    /// Compute each model file's sha256 for the report.
    pub checksums: bool,
}

/// The seed of agent `index` in `layer` (samples of one model differ by seed).
pub fn agent_seed(base: u64, layer: usize, index: usize) -> u64 {
    base.wrapping_add(((layer as u64) << 20) | index as u64)
}

/// The conversation an agent answers: its own system prompt, when set, replaces the user's.
fn with_system(conv: &[Message], system: &Option<String>) -> Vec<Message> {
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

struct Ctx {
    start: Instant,
    notices: Mutex<Vec<String>>,
    sink: EventSink,
}

impl Ctx {
    fn notice(&self, s: String) {
        (self.sink)(MoaEvent::Notice(s.clone()));
        self.notices.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }
}

pub async fn run(rt: Arc<Runtime>, recipe: &Recipe, conv: &[Message], opts: &RunOptions, sink: EventSink) -> Result<MoaReport> {
    if conv.last().is_none_or(|m| m.role != "user") {
        return Err(Error::InvalidRequest("the conversation must end with a user message".into()));
    }
    let ctx = Arc::new(Ctx { start: Instant::now(), notices: Mutex::new(Vec::new()), sink: sink.clone() });

    // Load each distinct model once; a proposer whose model fails to load is reported later.
    let mut models: HashMap<String, std::result::Result<Arc<Model>, String>> = HashMap::new();
    for name in recipe.model_names() {
        sink(MoaEvent::Loading { model: name.clone() });
        let t = Instant::now();
        let r = rt.load(&name).await.map_err(|e| e.to_string());
        match &r {
            Ok(_) => sink(MoaEvent::Loaded { model: name.clone(), secs: t.elapsed().as_secs_f64() }),
            Err(e) => sink(MoaEvent::LoadFailed { model: name.clone(), error: e.clone() }),
        }
        models.insert(name, r);
    }
    let aggregator = match &models[&recipe.aggregator.model] {
        Ok(m) => m.clone(),
        Err(e) => return Err(Error::Other(format!("aggregator {}: {e}", recipe.aggregator.model))),
    };

    let mut refs: Vec<String> = Vec::new();
    let mut layers = Vec::new();
    for (li, agents) in recipe.layers.iter().enumerate() {
        let layer = li + 1;
        let t = Instant::now();
        let mut set = JoinSet::new();
        for (index, agent) in agents.iter().enumerate() {
            let model = models[&agent.model].clone();
            let (agent, conv, refs, ctx) = (agent.clone(), conv.to_vec(), refs.clone(), ctx.clone());
            let seed = agent_seed(opts.seed, layer, index);
            let instruction = recipe.instruction.clone();
            set.spawn(async move {
                let r = match model {
                    Ok(m) => run_agent(m, &agent, &conv, &instruction, &refs, seed, layer, index, &ctx, false).await,
                    Err(e) => Err(Error::Other(e)),
                };
                finish(layer, index, &agent, seed, r, &ctx)
            });
        }
        let mut answers: Vec<AgentAnswer> = set.join_all().await;
        answers.sort_by_key(|a| a.index);
        let ok: Vec<&AgentAnswer> = answers.iter().filter(|a| a.error.is_none()).collect();
        if ok.is_empty() {
            let why: Vec<String> = answers.iter().map(|a| format!("{}: {}", a.model, a.error.clone().unwrap_or_default())).collect();
            return Err(Error::Other(format!("every proposer of layer {layer} failed: {}", why.join("; "))));
        }
        refs = ok.iter().map(|a| a.text.trim().to_string()).collect();
        let tokens: usize = answers.iter().map(|a| a.stats.generated_tokens).sum();
        let wall = t.elapsed().as_secs_f64();
        sink(MoaEvent::LayerFinished { layer, wall_secs: wall, tokens });
        layers.push(LayerReport { layer, wall_secs: wall, generated_tokens: tokens, tokens_per_sec: tokens as f64 / wall.max(1e-9), answers });
    }

    let layer = recipe.layers.len() + 1;
    let t = Instant::now();
    let seed = agent_seed(opts.seed, layer, 0);
    let r = run_agent(aggregator, &recipe.aggregator, conv, &recipe.instruction, &refs, seed, layer, 0, &ctx, true).await;
    let aggregate = finish(layer, 0, &recipe.aggregator, seed, r, &ctx);
    if let Some(e) = &aggregate.error {
        return Err(Error::Other(format!("aggregator {}: {e}", recipe.aggregator.model)));
    }
    let aggregate_wall_secs = t.elapsed().as_secs_f64();
    sink(MoaEvent::LayerFinished { layer, wall_secs: aggregate_wall_secs, tokens: aggregate.stats.generated_tokens });

    let mut model_reports = Vec::new();
    for name in recipe.model_names() {
        if let Ok(m) = &models[&name] {
            let sha256 = if opts.checksums { Some(m.sha256()?) } else { None };
            model_reports.push(ModelReport { info: rt.info(m), alias: name, sha256 });
        }
    }
    let notices = ctx.notices.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(MoaReport {
        seed: opts.seed,
        layers,
        aggregate,
        aggregate_wall_secs,
        models: model_reports,
        notices,
        total_secs: ctx.start.elapsed().as_secs_f64(),
    })
}

type AgentRun = (crate::model::Generation, f64, f64);

#[allow(clippy::too_many_arguments)]
async fn run_agent(
    model: Arc<Model>,
    agent: &Agent,
    conv: &[Message],
    instruction: &str,
    refs: &[String],
    seed: u64,
    layer: usize,
    index: usize,
    ctx: &Arc<Ctx>,
    stream: bool,
) -> Result<AgentRun> {
    (ctx.sink)(MoaEvent::AgentStarted { layer, index, model: agent.model.clone() });
    let conv = with_system(conv, &agent.system);
    let fitted = fit_references(&model, &conv, instruction, refs, agent.max_tokens)?;
    if let Some(cap) = fitted.cut_to {
        ctx.notice(format!(
            "layer {layer}: references for {} cut to {cap} tokens each to fit its context of {} tokens",
            agent.model,
            model.context_length()
        ));
    }
    let sampling = SamplingParams { temperature: agent.temperature, seed, ..SamplingParams::default() };
    let req = GenerateRequest::new(Prompt::Chat(fitted.messages), agent.max_tokens, sampling);
    let start = ctx.start.elapsed().as_secs_f64();
    let (sink, t0) = (ctx.sink.clone(), Instant::now());
    let mut pieces = 0usize;
    let on_text = move |piece: &str| {
        pieces += 1;
        if stream {
            sink(MoaEvent::AggregateText(piece.to_string()));
        } else if pieces % 8 == 0 {
            sink(MoaEvent::AgentProgress { layer, index, pieces, secs: t0.elapsed().as_secs_f64() });
        }
        Control::Continue
    };
    let g = Runtime::generate(model, req, on_text).await?;
    Ok((g, start, ctx.start.elapsed().as_secs_f64()))
}

fn finish(layer: usize, index: usize, agent: &Agent, seed: u64, r: Result<AgentRun>, ctx: &Ctx) -> AgentAnswer {
    let mut a = AgentAnswer {
        layer,
        index,
        model: agent.model.clone(),
        seed,
        temperature: agent.temperature,
        max_tokens: agent.max_tokens,
        text: String::new(),
        stop_reason: None,
        stats: AgentStats::default(),
        prompt: String::new(),
        error: None,
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
