//! Running a MoA recipe on the plan `moa::plan` makes (which models load when, which proposers
//! run together): each proposer layer runs wave by wave with the wave's generations concurrent
//! (failures are reported and left out), its answers become the next layer's references, and
//! the aggregator's answer streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::JoinSet;

use crate::engine::{Control, SamplingParams};
use crate::error::{Error, Result};
use crate::model::{GenerateRequest, Message, Prompt};
use crate::moa::fit::fit_references;
use crate::moa::plan::{plan, plan_jobs};
use crate::moa::recipe::{Agent, Recipe};
use crate::moa::report::{AgentAnswer, AgentStats, EventSink, LayerReport, LoadRecord, MoaEvent, MoaReport, ModelReport};
use crate::model::gguf::sha256_file;
use crate::runtime::estimate::peak_rss_bytes;
use crate::runtime::Runtime;

#[derive(Clone, Default)]
pub struct RunOptions {
    pub seed: u64,
    /// Compute each model file's sha256 for the report.
    pub checksums: bool,
    /// Set to cancel the run: generations stop at their next token and the run returns
    /// `Error::Cancelled` (a server sets it when the client disconnects).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl RunOptions {
    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }
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

pub(crate) struct Ctx {
    start: Instant,
    cancel: Option<Arc<AtomicBool>>,
    notices: Mutex<Vec<String>>,
    loads: Mutex<HashMap<String, Vec<LoadRecord>>>,
    infos: Mutex<HashMap<String, crate::runtime::LoadedInfo>>,
    sink: EventSink,
}

impl Ctx {
    fn notice(&self, s: String) {
        (self.sink)(MoaEvent::Notice(s.clone()));
        self.notices.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }

    fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

pub async fn run(rt: Arc<Runtime>, recipe: &Recipe, conv: &[Message], opts: &RunOptions, sink: EventSink) -> Result<MoaReport> {
    if conv.last().is_none_or(|m| m.role != "user") {
        return Err(Error::InvalidRequest("the conversation must end with a user message".into()));
    }
    let ctx = Arc::new(Ctx {
        start: Instant::now(),
        cancel: opts.cancel.clone(),
        notices: Mutex::new(Vec::new()),
        loads: Mutex::new(HashMap::new()),
        infos: Mutex::new(HashMap::new()),
        sink: sink.clone(),
    });
    let (jobs, mut failed) = plan_jobs(&rt, recipe, conv);
    for (m, e) in &failed {
        sink(MoaEvent::LoadFailed { model: m.clone(), error: e.clone() });
    }
    let the_plan = plan(&rt, recipe, conv)?;

    let mut refs: Vec<String> = Vec::new();
    let mut layers = Vec::new();
    let n_layers = recipe.layers.len();
    let mut preload: Option<tokio::task::JoinHandle<()>> = None;
    for (li, agents) in recipe.layers.iter().enumerate() {
        let layer = li + 1;
        let t = Instant::now();
        // Plan job indices skip agents whose model could not be read.
        let runnable: Vec<usize> = (0..agents.len()).filter(|&i| jobs[li][i].is_some()).collect();
        let mut answers: Vec<AgentAnswer> = (0..agents.len())
            .filter(|i| !runnable.contains(i))
            .map(|i| {
                let err = Err(Error::Other(failed.get(&agents[i].model).cloned().unwrap_or_default()));
                finish(layer, i, 0, &agents[i], agent_seed(opts.seed, layer, i), err, &ctx)
            })
            .collect();
        let waves = &the_plan.layers[li].waves;
        for (wi, wave) in waves.iter().enumerate() {
            for u in &wave.unload {
                rt.unload(u);
            }
            for m in &wave.load {
                load_model(&rt, m, layer, wave.wave, &ctx, &mut failed).await;
            }
            if li + 1 == n_layers && wi + 1 == waves.len() && the_plan.aggregator.preload {
                let (rt2, ctx2, m) = (rt.clone(), ctx.clone(), recipe.aggregator.model.clone());
                preload = Some(tokio::spawn(async move {
                    let mut f = HashMap::new();
                    load_model(&rt2, &m, n_layers + 1, 0, &ctx2, &mut f).await;
                }));
            }
            // Samples of one model with the same settings share a prefill and decode as a batch.
            let mut groups: Vec<Vec<usize>> = Vec::new();
            for &ji in &wave.jobs {
                let i = runnable[ji];
                match groups.iter_mut().find(|g| same_settings(&agents[g[0]], &agents[i])) {
                    Some(g) => g.push(i),
                    None => groups.push(vec![i]),
                }
            }
            let mut set = JoinSet::new();
            for group in groups {
                let agent = agents[group[0]].clone();
                let seeds: Vec<u64> = group.iter().map(|&i| agent_seed(opts.seed, layer, i)).collect();
                let (rt, conv, refs, ctx) = (rt.clone(), conv.to_vec(), refs.clone(), ctx.clone());
                let (instruction, w, fail) = (recipe.instruction.clone(), wave.wave, failed.get(&agent.model).cloned());
                set.spawn(async move {
                    let results: Vec<Result<AgentRun>> = match fail {
                        Some(e) => group.iter().map(|_| Err(Error::Other(e.clone()))).collect(),
                        None if group.len() == 1 => {
                            vec![run_agent(&rt, &agent, &conv, &instruction, &refs, seeds[0], layer, group[0], &ctx, false).await]
                        }
                        None => run_samples(&rt, &agent, &conv, &instruction, &refs, &seeds, layer, &group, &ctx).await,
                    };
                    group.iter().zip(seeds).zip(results).map(|((&i, seed), r)| finish(layer, i, w, &agent, seed, r, &ctx)).collect::<Vec<_>>()
                });
            }
            answers.extend(set.join_all().await.into_iter().flatten());
            if opts.cancelled() {
                return Err(Error::Cancelled);
            }
        }
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

    let layer = n_layers + 1;
    let t = Instant::now();
    if let Some(h) = preload {
        let _ = h.await;
    }
    for u in &the_plan.aggregator.unload {
        rt.unload(u);
    }
    let agg = &recipe.aggregator;
    if !rt.is_loaded(&agg.model) {
        load_model(&rt, &agg.model, layer, 0, &ctx, &mut failed).await;
    }
    let seed = agent_seed(opts.seed, layer, 0);
    let r = match failed.get(&agg.model) {
        Some(e) => Err(Error::Other(e.clone())),
        None => run_agent(&rt, agg, conv, &recipe.instruction, &refs, seed, layer, 0, &ctx, true).await,
    };
    let aggregate = finish(layer, 0, 1, agg, seed, r, &ctx);
    if opts.cancelled() {
        return Err(Error::Cancelled);
    }
    if let Some(e) = &aggregate.error {
        return Err(Error::Other(format!("aggregator {}: {e}", agg.model)));
    }
    let aggregate_wall_secs = t.elapsed().as_secs_f64();
    sink(MoaEvent::LayerFinished { layer, wall_secs: aggregate_wall_secs, tokens: aggregate.stats.generated_tokens });

    let mut models = Vec::new();
    let loads = ctx.loads.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let infos = ctx.infos.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for name in recipe.model_names() {
        // Reported from what was recorded at load time: an evicted model is not loaded again.
        if let Some(info) = infos.get(&name) {
            let sha256 = if opts.checksums { Some(sha256_file(&info.path)?) } else { None };
            models.push(ModelReport { info: info.clone(), loads: loads.get(&name).cloned().unwrap_or_default(), alias: name, sha256 });
        }
    }
    let notices = ctx.notices.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(MoaReport {
        seed: opts.seed,
        plan: the_plan,
        peak_rss_bytes: peak_rss_bytes(),
        layers,
        aggregate,
        aggregate_wall_secs,
        models,
        notices,
        total_secs: ctx.secs(),
    })
}

async fn load_model(rt: &Arc<Runtime>, name: &str, layer: usize, wave: usize, ctx: &Ctx, failed: &mut HashMap<String, String>) {
    if failed.contains_key(name) {
        return;
    }
    (ctx.sink)(MoaEvent::Loading { model: name.to_string() });
    let (t, start_secs) = (Instant::now(), ctx.secs());
    match rt.load(name).await {
        Ok(m) => {
            ctx.infos.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), rt.info(&m));
            let secs = t.elapsed().as_secs_f64();
            (ctx.sink)(MoaEvent::Loaded { model: name.to_string(), secs });
            let rec = LoadRecord { layer, wave, start_secs, secs };
            ctx.loads.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_string()).or_default().push(rec);
        }
        Err(e) => {
            (ctx.sink)(MoaEvent::LoadFailed { model: name.to_string(), error: e.to_string() });
            failed.insert(name.to_string(), e.to_string());
        }
    }
}

type AgentRun = (crate::model::Generation, f64, f64);

fn same_settings(a: &Agent, b: &Agent) -> bool {
    a.model == b.model && a.temperature == b.temperature && a.max_tokens == b.max_tokens && a.system == b.system
}

/// Several samples of one agent's settings (different seeds) as one batched generation.
#[allow(clippy::too_many_arguments)]
async fn run_samples(
    rt: &Arc<Runtime>,
    agent: &Agent,
    conv: &[Message],
    instruction: &str,
    refs: &[String],
    seeds: &[u64],
    layer: usize,
    indices: &[usize],
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
        ctx.notice(format!("layer {layer}: references for {} cut to {cap} tokens each", agent.model));
    }
    let sampling = SamplingParams { temperature: agent.temperature, ..SamplingParams::default() };
    let req = GenerateRequest::new(Prompt::Chat(fitted.messages), agent.max_tokens, sampling);
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

#[allow(clippy::too_many_arguments)]
async fn run_agent(
    rt: &Arc<Runtime>,
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
    let model = rt.load(&agent.model).await?;
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
    let start = ctx.secs();
    let (sink, t0) = (ctx.sink.clone(), Instant::now());
    let mut pieces = 0usize;
    let cancel = ctx.cancel.clone();
    let on_text = move |piece: &str| {
        if cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Control::Stop;
        }
        pieces += 1;
        if stream {
            sink(MoaEvent::AggregateText(piece.to_string()));
        } else if pieces.is_multiple_of(8) {
            sink(MoaEvent::AgentProgress { layer, index, pieces, secs: t0.elapsed().as_secs_f64() });
        }
        Control::Continue
    };
    let g = Runtime::generate(model, req, on_text).await?;
    Ok((g, start, ctx.secs()))
}

fn finish(layer: usize, index: usize, wave: usize, agent: &Agent, seed: u64, r: Result<AgentRun>, ctx: &Ctx) -> AgentAnswer {
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
