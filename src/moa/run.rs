//! Running a MoA recipe on the plan `moa::plan` makes (which models load when, which proposers
//! run together): each proposer layer runs wave by wave with the wave's generations concurrent
//! (failures are reported and left out), its answers become the next layer's references, and
//! the aggregator's answer streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::model::Message;
use crate::runtime::remote::is_remote;
use crate::runtime::scheduler::Wave;

use crate::moa::agents::{finish, run_agent, run_remote, run_samples, same_settings, with_system, AgentCall, AgentRun};
use crate::moa::plan::{plan, plan_jobs};
use crate::moa::recipe::Recipe;
use crate::moa::staircase::{ReferenceOrder, References, Staircase};
use crate::moa::report::{AgentAnswer, CriticalPath, EventSink, LayerReport, LoadRecord, MoaEvent, MoaReport, ModelReport};
use crate::model::gguf::sha256_file;
use crate::runtime::estimate::peak_rss_bytes;
use crate::runtime::prefill::TakeKept;
use crate::runtime::Runtime;

#[derive(Clone)]
pub struct RunOptions {
    pub seed: u64,
    /// Compute each model file's sha256 for the report.
    pub checksums: bool,
    /// Set to cancel the run: generations stop at their next token and the run returns
    /// `Error::Cancelled` (a server sets it when the client disconnects).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Verify drafts looked up in each agent's prompt (its references) and output.
    pub draft: bool,
    /// How references are numbered: finish order (default) or recipe order.
    pub reference_order: ReferenceOrder,
    /// Prefill the aggregator's prompt while the last proposer layer runs, where the plan has
    /// room for it.
    pub early_prefill: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { seed: 0, checksums: false, cancel: None, draft: true, reference_order: ReferenceOrder::Finish, early_prefill: true }
    }
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

pub(crate) struct Ctx {
    pub(crate) start: Instant,
    pub(crate) cancel: Option<Arc<AtomicBool>>,
    pub(crate) notices: Mutex<Vec<String>>,
    pub(crate) loads: Mutex<HashMap<String, Vec<LoadRecord>>>,
    pub(crate) infos: Mutex<HashMap<String, crate::runtime::LoadedInfo>>,
    pub(crate) sink: EventSink,
}

impl Ctx {
    pub(crate) fn notice(&self, s: String) {
        (self.sink)(MoaEvent::Notice(s.clone()));
        self.notices.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }

    pub(crate) fn secs(&self) -> f64 {
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
    for (base, s) in &recipe.endpoints {
        rt.remote().configure(base, s);
    }
    let (jobs, mut failed) = plan_jobs(&rt, recipe, conv);
    for (m, e) in &failed {
        sink(MoaEvent::LoadFailed { model: m.clone(), error: e.clone() });
    }
    let the_plan = plan(&rt, recipe, conv)?;
    let agg = &recipe.aggregator;
    let agg_context = jobs.last().and_then(|l| l.first().cloned().flatten()).map_or(0, |j| j.context);

    let mut refs: Vec<String> = Vec::new();
    let mut layers = Vec::new();
    let n_layers = recipe.layers.len();
    let mut preload: Option<tokio::task::JoinHandle<()>> = None;
    // Prompts of the next layer prefilled while this one runs: its agents' (by index), or the
    // aggregator's (None).
    let mut stairs: Vec<(Option<usize>, Staircase)> = Vec::new();
    let mut early_caches: HashMap<usize, crate::model::PromptCache> = HashMap::new();
    for (li, agents) in recipe.layers.iter().enumerate() {
        let layer = li + 1;
        let t = Instant::now();
        let last_layer = li + 1 == n_layers;
        if opts.early_prefill {
            stairs = next_stairs(recipe, li, &jobs, &the_plan, &failed, conv);
        }
        let mut order = References::new(agents.len(), opts.reference_order);
        // Plan job indices skip agents whose model could not be read.
        let runnable: Vec<usize> = (0..agents.len()).filter(|&i| jobs[li][i].is_some()).collect();
        let remote: Vec<usize> = (0..agents.len()).filter(|&i| is_remote(&agents[i].model)).collect();
        let mut answers: Vec<AgentAnswer> = (0..agents.len())
            .filter(|i| !runnable.contains(i) && !remote.contains(i))
            .map(|i| {
                let err = Err(Error::Other(failed.get(&agents[i].model).cloned().unwrap_or_default()));
                finish(layer, i, 0, &agents[i], agent_seed(opts.seed, layer, i), err, &ctx)
            })
            .collect();
        for a in &answers {
            order.finish(a.index, None);
        }
        // Remote agents run beside the local waves (they take no local memory); after the last
        // wave, an empty one waits for those still answering.
        let mut remote_set = JoinSet::new();
        for &i in &remote {
            let agent = agents[i].clone();
            let seed = agent_seed(opts.seed, layer, i);
            let (rt, conv, refs, ctx, instruction) = (rt.clone(), conv.to_vec(), refs.clone(), ctx.clone(), recipe.instruction.clone());
            let partial = watch(&mut stairs, i);
            remote_set.spawn(async move {
                let call = AgentCall { layer, index: i, seed, stream_to_user: false, partial, draft: false, cache: None };
                let r = run_remote(&rt, &agent, &conv, &instruction, &refs, call, &ctx).await;
                vec![finish(layer, i, 1, &agent, seed, r, &ctx)]
            });
        }
        let local_waves = the_plan.layers[li].waves.len();
        let mut waves = the_plan.layers[li].waves.clone();
        if !remote.is_empty() || waves.is_empty() {
            waves.push(Wave { wave: local_waves + 1, jobs: Vec::new(), load: Vec::new(), unload: Vec::new(), bytes: 0 });
        }
        for (wi, wave) in waves.iter().enumerate() {
            for u in &wave.unload {
                rt.unload(u);
            }
            rt.make_room(wave.bytes);
            for m in &wave.load {
                load_model(&rt, m, layer, wave.wave, &ctx, &mut failed).await;
            }
            let last_wave = wi + 1 >= local_waves;
            let final_wave = wi + 1 == waves.len();
            if last_layer && wi + 1 == local_waves.max(1) && the_plan.aggregator.preload && !is_remote(&agg.model) {
                let (rt2, ctx2, m) = (rt.clone(), ctx.clone(), agg.model.clone());
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
                let stream = if group.len() == 1 { watch(&mut stairs, group[0]) } else { None };
                let cache = if group.len() == 1 { early_caches.remove(&group[0]) } else { None };
                let draft = opts.draft;
                set.spawn(async move {
                    let results: Vec<Result<AgentRun>> = match fail {
                        Some(e) => group.iter().map(|_| Err(Error::Other(e.clone()))).collect(),
                        None if group.len() == 1 => {
                            let call = AgentCall { layer, index: group[0], seed: seeds[0], stream_to_user: false, partial: stream, draft, cache };
                            vec![run_agent(&rt, &agent, &conv, &instruction, &refs, call, &ctx).await]
                        }
                        None => run_samples(&rt, &agent, &conv, &instruction, &refs, &seeds, layer, &group, draft, &ctx).await,
                    };
                    group.iter().zip(seeds).zip(results).map(|((&i, seed), r)| finish(layer, i, w, &agent, seed, r, &ctx)).collect::<Vec<_>>()
                });
            }
            // Answers in the order they come; meanwhile the next layer's prompts grow.
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(150));
            loop {
                if last_wave {
                    stairs.retain_mut(|(target, s)| {
                        if s.started() {
                            return true;
                        }
                        let (name, capacity) = match *target {
                            Some(i) => (&recipe.layers[li + 1][i].model, jobs[li + 1][i].as_ref().map_or(0, |j| j.context)),
                            None => (&agg.model, agg_context),
                        };
                        let Some(m) = rt.loaded_model(name) else { return true };
                        let rt2 = rt.clone();
                        let kept: TakeKept = Box::new(move |m, ids| rt2.take_prefix(m, ids, capacity));
                        let started = s.start(m, capacity, Some(kept));
                        if let Err(e) = &started {
                            ctx.notice(format!("early prefill of {name} for layer {} not started: {e}", layer + 1));
                        }
                        started.is_ok()
                    });
                }
                for (_, s) in stairs.iter_mut() {
                    s.update(&order);
                }
                // A wave ends with its local agents; the final one also waits for the remote ones.
                if set.is_empty() && (!final_wave || remote_set.is_empty()) {
                    break;
                }
                let done = tokio::select! {
                    Some(d) = set.join_next(), if !set.is_empty() => Some(d),
                    Some(d) = remote_set.join_next(), if !remote_set.is_empty() => Some(d),
                    _ = tick.tick() => None,
                };
                match done {
                    None => {}
                    Some(Ok(group)) => {
                        for a in &group {
                            order.finish(a.index, a.error.is_none().then(|| a.text.clone()));
                        }
                        answers.extend(group);
                    }
                    Some(Err(e)) => return Err(Error::Other(format!("a proposer task failed: {e}"))),
                }
            }
            if opts.cancelled() {
                return Err(Error::Cancelled);
            }
        }
        answers.sort_by_key(|a| a.index);
        let (ordered, positions) = order.ordered();
        if ordered.is_empty() {
            let why: Vec<String> = answers.iter().map(|a| format!("{}: {}", a.model, a.error.clone().unwrap_or_default())).collect();
            return Err(Error::Other(format!("every proposer of layer {layer} failed: {}", why.join("; "))));
        }
        for a in answers.iter_mut() {
            a.reference = positions.get(a.index).copied().flatten();
        }
        refs = ordered;
        // The next layer's agents start from what was prefilled for them.
        for (target, s) in std::mem::take(&mut stairs) {
            let Some(i) = target else {
                stairs.push((None, s));
                continue;
            };
            if let Some(session) = s.into_session() {
                match session.finish().await {
                    Ok((pc, _)) => {
                        early_caches.insert(i, pc);
                    }
                    Err(e) => ctx.notice(format!("early prefill for layer {} agent {} failed, prefilling afresh: {e}", layer + 1, i + 1)),
                }
            }
        }
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
    rt.make_room(the_plan.aggregator.bytes);
    if !rt.is_loaded(&agg.model) && !is_remote(&agg.model) {
        load_model(&rt, &agg.model, layer, 0, &ctx, &mut failed).await;
    }
    let (mut early, mut early_cache) = (None, None);
    if let Some(session) = stairs.pop().and_then(|(_, s)| s.into_session()) {
        match session.finish().await {
            Ok((pc, log)) => {
                early = Some(log);
                early_cache = Some(pc);
            }
            Err(e) => ctx.notice(format!("early prefill of the aggregator failed, prefilling afresh: {e}")),
        }
    }
    let seed = agent_seed(opts.seed, layer, 0);
    let r = match failed.get(&agg.model) {
        Some(e) => Err(Error::Other(e.clone())),
        None => {
            let call = AgentCall { layer, index: 0, seed, stream_to_user: true, partial: None, draft: opts.draft, cache: early_cache.take() };
            if is_remote(&agg.model) {
                run_remote(&rt, agg, conv, &recipe.instruction, &refs, call, &ctx).await
            } else {
                run_agent(&rt, agg, conv, &recipe.instruction, &refs, call, &ctx).await
            }
        }
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
    let last_proposer_end = layers.last().map_or(0.0, |l: &LayerReport| l.answers.iter().map(|a| a.stats.end_secs).fold(0.0, f64::max));
    let first_token = aggregate.stats.start_secs + aggregate.stats.ttft_secs;
    let critical_path = CriticalPath {
        last_proposer_end_secs: last_proposer_end,
        aggregate_first_token_secs: first_token,
        wait_for_first_token_secs: first_token - last_proposer_end,
        aggregate_prefilled_after_proposers: aggregate.stats.prefilled_tokens,
        early_prefill: early,
    };

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
        reference_order: opts.reference_order,
        plan: the_plan,
        peak_rss_bytes: peak_rss_bytes(),
        layers,
        aggregate,
        aggregate_wall_secs,
        critical_path,
        models,
        notices,
        total_secs: ctx.secs(),
    })
}

/// Staircases for the prompts of the layer after `li` that the plan lets be prefilled while `li`
/// runs: the aggregator's after the last layer; after others, the next layer's local agents the
/// plan names that run alone (samples of one model batch their own prefill).
fn next_stairs(
    recipe: &Recipe,
    li: usize,
    jobs: &[Vec<Option<crate::runtime::scheduler::Job>>],
    plan: &crate::runtime::scheduler::Plan,
    failed: &HashMap<String, String>,
    conv: &[Message],
) -> Vec<(Option<usize>, Staircase)> {
    let n = recipe.layers[li].len();
    let stair = |a: &crate::moa::recipe::Agent| Staircase::new(with_system(conv, &a.system), recipe.instruction.clone(), n, a.max_tokens);
    let usable = |m: &str| !failed.contains_key(m) && !is_remote(m);
    let Some(next) = recipe.layers.get(li + 1) else {
        let agg = &recipe.aggregator;
        return if plan.aggregator.early_prefill && usable(&agg.model) { vec![(None, stair(agg))] } else { Vec::new() };
    };
    let runnable: Vec<usize> = (0..next.len()).filter(|&i| jobs[li + 1][i].is_some()).collect();
    plan.layers[li + 1]
        .early_prefill
        .iter()
        .filter_map(|&j| runnable.get(j).copied())
        .filter(|&i| usable(&next[i].model) && next.iter().filter(|b| same_settings(&next[i], b)).count() == 1)
        .map(|i| (Some(i), stair(&next[i])))
        .collect()
}

/// The buffer agent `index` streams its text into for every staircase (None: there is none).
fn watch(stairs: &mut [(Option<usize>, Staircase)], index: usize) -> Option<Arc<Mutex<String>>> {
    if stairs.is_empty() {
        return None;
    }
    let b = Arc::new(Mutex::new(String::new()));
    for (_, s) in stairs.iter_mut() {
        s.watch(index, b.clone());
    }
    Some(b)
}

async fn load_model(rt: &Arc<Runtime>, name: &str, layer: usize, wave: usize, ctx: &Ctx, failed: &mut HashMap<String, String>) {
    if failed.contains_key(name) || is_remote(name) {
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
