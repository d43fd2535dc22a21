//! `moa-local serve`: an OpenAI-compatible HTTP server over the configured MoA recipe, the
//! named recipes of `--config` and each model they load (the server itself is `moa_local::server`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use moa_local::moa::{Overrides, Recipe, RecipeFile};
use moa_local::model::catalog::DEFAULT_MODELS;

use moa_local::server::{Server, ServerConfig};

use super::moa_cmd::recipe_of;
use super::MoaArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub moa: MoaArgs,
    /// Address to listen on (loopback by default; anything else should come with --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (also read from $MOA_API_KEY).
    #[arg(long, env = "MOA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests that may wait for a run slot; more get HTTP 429 with Retry-After.
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Requests running at once (default: every served model's decode loop full, --parallel
    /// each; beyond what memory holds, sequences wait in their loop). Requests and MoA agents of
    /// the same model share its decode loop's batch.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// MoA runs at once (default 1: each plans the whole memory budget for its agents; raise it
    /// when the recipe's models and caches fit that many times).
    #[arg(long, default_value_t = 1)]
    pub moa_concurrency: usize,
    /// Sequences one model's decode loop runs at once (continuous batching); more wait for a
    /// place in arrival order.
    #[arg(long, default_value_t = moa_local::runtime::pool::DEFAULT_PARALLEL)]
    pub parallel: usize,
    /// Largest request body in bytes; larger requests get HTTP 413 before they are read in full.
    #[arg(long, default_value_t = moa_local::server::DEFAULT_MAX_BODY)]
    pub max_body: usize,
}

pub fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(p) = &a.moa.prompt {
        anyhow::bail!("`serve` takes no prompt (got {p:?}); send requests to /v1/chat/completions");
    }
    if a.moa.json || a.moa.show_proposals {
        anyhow::bail!("--json and --show-proposals apply to a single run, not to `serve`");
    }
    anyhow::ensure!(a.parallel >= 1, "--parallel must be at least 1");
    anyhow::ensure!(a.moa_concurrency >= 1, "--moa-concurrency must be at least 1");
    let recipe = recipe_of(&a.moa)?;
    let mut recipes = BTreeMap::new();
    if let Some(path) = &a.moa.config {
        let file = RecipeFile::read(path)?;
        for (name, r) in &file.recipes {
            let built = Recipe::build(Some(r), &Overrides::default(), DEFAULT_MODELS)
                .with_context(|| format!("{}: recipe `{name}`", path.display()))?;
            recipes.insert(name.clone(), built);
        }
    }
    let mut cfg = ServerConfig::new(recipe);
    cfg.recipes = recipes;
    cfg.api_key = a.api_key.clone();
    cfg.queue = a.queue;
    cfg.concurrency = a.concurrency.unwrap_or_else(|| cfg.full_loops(a.parallel));
    anyhow::ensure!(cfg.concurrency >= 1, "--concurrency must be at least 1");
    cfg.moa_concurrency = a.moa_concurrency;
    anyhow::ensure!(a.max_body >= 1024, "--max-body must be at least 1024 bytes");
    cfg.max_body_bytes = a.max_body;
    cfg.system = a.moa.system.clone();
    cfg.defaults.seed = a.moa.seed;
    cfg.defaults.draft = !a.moa.no_draft;
    cfg.defaults.reference_order = a.moa.reference_order;
    cfg.defaults.early_prefill = !a.moa.no_early_prefill;
    let rt = super::moa_cmd::runtime_parallel(&a.moa, a.parallel)?;
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    tokio.block_on(async {
        eprintln!("moa-local serve: reading the models…");
        let server = Server::new(rt, cfg).await?;
        server.run(SocketAddr::new(a.host, a.port)).await
    })?;
    Ok(ExitCode::SUCCESS)
}
