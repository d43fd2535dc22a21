//! The default command: run MoA on a prompt (argument or stdin), or chat interactively.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use moa_local::model::catalog::DEFAULT_MODELS;
use moa_local::model::Message;
use moa_local::moa::{self, Overrides, Recipe, RecipeFile};
use moa_local::runtime::device::parse_bytes;
use moa_local::runtime::scheduler::human;
use moa_local::runtime::{DeviceSpec, Runtime};

use super::generate::random_seed;
use super::progress::{summary, Display};
use super::MoaArgs;

/// The recipe the flags and `--config` describe.
pub fn recipe_of(a: &MoaArgs) -> anyhow::Result<Recipe> {
    let file = a.config.as_ref().map(|p| RecipeFile::read(p)).transpose()?;
    let o = Overrides {
        models: a.models.clone(),
        aggregator: a.aggregator.clone(),
        layers: a.layers,
        temperature: a.temperature,
        max_tokens: a.max_tokens,
        system: None,
        instruction: a.instruction.clone(),
    };
    Ok(Recipe::build(file.as_ref(), &o, DEFAULT_MODELS)?)
}

/// The runtime the flags describe (device + memory budget).
pub fn runtime(a: &MoaArgs) -> anyhow::Result<Arc<Runtime>> {
    runtime_parallel(a, moa_local::runtime::pool::DEFAULT_PARALLEL)
}

/// [`runtime`] whose model decode loops run up to `parallel` sequences at once.
pub fn runtime_parallel(a: &MoaArgs, parallel: usize) -> anyhow::Result<Arc<Runtime>> {
    let spec: DeviceSpec = a.device.parse()?;
    let budget = a.memory_budget.as_deref().map(parse_bytes).transpose()?;
    Ok(Arc::new(Runtime::new(spec)?.with_memory_budget(budget).with_parallel(parallel)))
}

/// A remote agent of a recipe as `plan` shows it: asked for its model id and context, nothing generated.
#[derive(serde::Serialize)]
struct RemoteCheck {
    spec: String,
    endpoint: String,
    /// Which agents use it ("layer 1 #2", "aggregator").
    used_by: Vec<String>,
    model_id: Option<String>,
    /// The endpoint's report, else the recipe's `context_length`.
    context_length: Option<usize>,
    error: Option<String>,
}

fn remote_checks(rt: &Runtime, recipe: &Recipe) -> anyhow::Result<Vec<RemoteCheck>> {
    use moa_local::runtime::remote::{is_remote, Endpoint};
    for (base, s) in &recipe.endpoints {
        rt.remote().configure(base, s);
    }
    let mut out: Vec<RemoteCheck> = Vec::new();
    let agents = recipe.layers.iter().enumerate().flat_map(|(l, v)| v.iter().enumerate().map(move |(i, a)| (format!("layer {} #{}", l + 1, i + 1), a)));
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    for (who, a) in agents.chain(std::iter::once(("aggregator".to_string(), &recipe.aggregator))) {
        if !is_remote(&a.model) {
            continue;
        }
        if let Some(r) = out.iter_mut().find(|r| r.spec == a.model) {
            r.used_by.push(who);
            continue;
        }
        let ep = Endpoint::parse(&a.model)?;
        let (model_id, error, context_length) = match tokio.block_on(rt.remote().check(&ep)) {
            Ok((id, ctx)) => (Some(id), None, ctx),
            Err(e) => (None, Some(e.to_string()), None),
        };
        out.push(RemoteCheck { spec: a.model.clone(), endpoint: ep.base, used_by: vec![who], model_id, context_length, error });
    }
    Ok(out)
}

/// `moa-local plan`: the placement a run would use, from the GGUF headers alone.
pub fn plan(a: MoaArgs) -> anyhow::Result<ExitCode> {
    let recipe = recipe_of(&a)?;
    let rt = runtime(&a)?;
    let mut conv = Vec::new();
    if let Some(s) = &a.system {
        conv.push(Message { role: "system".into(), content: s.clone() });
    }
    conv.push(Message { role: "user".into(), content: a.prompt.clone().unwrap_or_default() });
    let p = moa::plan::plan(&rt, &recipe, &conv)?;
    let remote = remote_checks(&rt, &recipe)?;
    if a.json {
        let mut v = serde_json::to_value(&p)?;
        // The run report's `plan` is the same object; remote checks are `plan`'s own addition.
        if !remote.is_empty() {
            v["remote"] = serde_json::to_value(&remote)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (budget, source) = rt.memory_budget()?;
    println!("device {}: budget {} ({source})", p.device, human(budget));
    for name in recipe.model_names() {
        if let Some(r) = remote.iter().find(|r| r.spec == name) {
            match (&r.model_id, &r.error) {
                (Some(id), _) => println!(
                    "  model {name}: remote, model id {id}, context {} (answers GET /models; no local memory)",
                    r.context_length.map_or("not reported".to_string(), |c| format!("{c} tokens"))
                ),
                (None, e) => println!("  model {name}: remote, NOT REACHABLE: {}", e.as_deref().unwrap_or("")),
            }
            continue;
        }
        let s = rt.shape(&name)?;
        let path = rt.resolve(&name)?;
        let active = if s.cfg.moe.is_some() { format!(" ({} read per token)", human(s.active_weights)) } else { String::new() };
        let through = if s.cfg.arch.is_native() { "" } else { ", runs through candle-transformers (slower: one sequence at a time)" };
        println!("  model {name}: {:?}, weights {}{active}, file {}{through}", s.cfg.arch, human(s.weights), path.display());
    }
    // Wave jobs index the layer's local agents with a job (remote ones run beside the waves).
    let (jobs, _) = moa::plan::plan_jobs(&rt, &recipe, &conv);
    for l in &p.layers {
        let runnable: Vec<usize> = (0..recipe.layers[l.layer - 1].len()).filter(|&i| jobs[l.layer - 1][i].is_some()).collect();
        for w in &l.waves {
            let agents: Vec<String> = w
                .jobs
                .iter()
                .filter_map(|&j| runnable.get(j))
                .map(|&i| format!("#{} {}", i + 1, recipe.layers[l.layer - 1][i].model))
                .collect();
            println!(
                "layer {} wave {}: run [{}]; load {:?}; unload {:?}; planned {} (free {})",
                l.layer,
                w.wave,
                agents.join(", "),
                w.load,
                w.unload,
                human(w.bytes),
                human(budget.saturating_sub(w.bytes))
            );
        }
        if !l.early_prefill.is_empty() {
            let early: Vec<String> = l.early_prefill.iter().filter_map(|&j| runnable.get(j)).map(|&i| format!("#{} {}", i + 1, recipe.layers[l.layer - 1][i].model)).collect();
            println!("layer {}: prompts of [{}] prefilled while layer {} runs", l.layer, early.join(", "), l.layer - 1);
        }
    }
    let ag = &p.aggregator;
    println!(
        "aggregator {}: {}{}; unload {:?}; planned {} (free {})",
        ag.model,
        if ag.resident {
            "already resident"
        } else if ag.preload {
            "loaded during the last proposer wave"
        } else {
            "loaded after the proposers"
        },
        if ag.early_prefill { ", its prompt prefilled as the references arrive" } else { "" },
        ag.unload,
        human(ag.bytes),
        human(budget.saturating_sub(ag.bytes))
    );
    println!("peak planned {} of {}", human(p.peak), human(budget));
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: MoaArgs) -> anyhow::Result<ExitCode> {
    let recipe = recipe_of(&a)?;
    let rt = runtime(&a)?;
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let seed = a.seed.unwrap_or_else(random_seed);
    let mut history: Vec<Message> = Vec::new();
    if let Some(s) = &a.system {
        history.push(Message { role: "system".into(), content: s.clone() });
    }
    let prompt = match &a.prompt {
        Some(p) => Some(p.clone()),
        None if std::io::stdin().is_terminal() => None,
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading the prompt from stdin")?;
            Some(s)
        }
    };
    match prompt {
        Some(p) => {
            if p.trim().is_empty() {
                anyhow::bail!("the prompt is empty");
            }
            history.push(Message { role: "user".into(), content: p });
            tokio.block_on(turn(&rt, &recipe, &history, seed, &a))?;
        }
        None => chat(&tokio, &rt, &recipe, history, seed, &a)?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn turn(rt: &Arc<Runtime>, recipe: &Recipe, conv: &[Message], seed: u64, a: &MoaArgs) -> anyhow::Result<String> {
    let display = Display::new(recipe.layers.len(), !a.json, a.show_proposals && !a.json);
    let opts = a.run_options(seed);
    let report = moa::run(rt.clone(), recipe, conv, &opts, display.sink()).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
        summary(&report);
    }
    Ok(report.aggregate.text)
}

fn chat(tokio: &tokio::runtime::Runtime, rt: &Arc<Runtime>, recipe: &Recipe, mut history: Vec<Message>, seed: u64, a: &MoaArgs) -> anyhow::Result<()> {
    eprintln!("moa-local chat: proposers {:?}, aggregator {}. Empty line or /exit quits.", recipe.layers[0].iter().map(|x| &x.model).collect::<Vec<_>>(), recipe.aggregator.model);
    let stdin = std::io::stdin();
    for turn_no in 0u64.. {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin.read_line(&mut line)? == 0 || line.trim().is_empty() || line.trim() == "/exit" {
            break;
        }
        history.push(Message { role: "user".into(), content: line.trim_end().to_string() });
        match tokio.block_on(turn(rt, recipe, &history, seed.wrapping_add(turn_no), a)) {
            Ok(answer) => history.push(Message { role: "assistant".into(), content: answer }),
            Err(e) => {
                eprintln!("error: {e:#}");
                history.pop();
            }
        }
    }
    Ok(())
}
