//! The default command: run MoA on a prompt (argument or stdin), or chat interactively.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use moa_local::model::catalog::DEFAULT_MODELS;
use moa_local::model::Message;
use moa_local::moa::{self, Overrides, Recipe, RecipeFile, RunOptions};
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

pub fn run(a: MoaArgs) -> anyhow::Result<ExitCode> {
    let recipe = recipe_of(&a)?;
    let spec: DeviceSpec = a.device.parse()?;
    let rt = Arc::new(Runtime::new(spec)?);
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
    let opts = RunOptions { seed, checksums: a.json };
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
