//! An OpenAI-compatible HTTP server (`moa-local serve`): `POST /v1/chat/completions` (plain and
//! streamed as server-sent events, `n` choices for single models), `GET /v1/models`, `GET /health`,
//! `GET /metrics` (Prometheus text, `metrics`).
//!
//! Layout: `openai` holds the wire types and errors, `routes` the axum handlers (they validate,
//! authenticate and enqueue, nothing more), `queue` the bounded admission queue and run slots,
//! `worker` the jobs that run a recipe through `moa::run` or one model through the runtime (its
//! decode loop: requests to one model are batched).
//!
//! A request's `model` is `moa` (the configured recipe), a named recipe from the config file
//! (`[recipes.NAME]`), or one of the models those recipes use (run alone); no request can name
//! a file. `models` reads each model's header, tokenizer and template when the server starts
//! (a missing or broken file fails the start); the weights are loaded by the runtime on first use.

pub mod completions;
pub mod models;
pub mod openai;
pub mod metrics;
pub mod queue;
pub mod routes;
pub mod worker;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::moa::Recipe;
use crate::runtime::Runtime;

pub use models::ModelEntry;
pub use queue::{Queue, QueueStats};
pub use worker::{Defaults, Target};

/// The name of the configured recipe in requests and in `/v1/models`.
pub const MOA_MODEL: &str = "moa";

/// What `moa-local serve` configures.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The recipe served as `model: "moa"`.
    pub recipe: Recipe,
    /// Named recipes (`[recipes.NAME]` in the config file).
    pub recipes: BTreeMap<String, Recipe>,
    /// `Authorization: Bearer KEY` required on `/v1/*` when set.
    pub api_key: Option<String>,
    /// Requests that may wait for a run slot (beyond the running ones).
    pub queue: usize,
    /// Requests running at once (default [`ServerConfig::full_loops`]): single-model requests
    /// batch in their model's decode loop.
    pub concurrency: usize,
    /// MoA runs at once (default 1: each plans the whole memory budget for its agents). Their
    /// agents batch in the model decode loops with everything else.
    pub moa_concurrency: usize,
    /// Temperature and max_tokens when a single-model request gives none; the seed of requests
    /// without one.
    pub defaults: Defaults,
    /// A system message for conversations that have none.
    pub system: Option<String>,
    /// Largest request body accepted; a larger one is answered 413 before it is read in full.
    pub max_body_bytes: usize,
}

/// Default `--max-body`: 8 MiB, some two million tokens of text, past any model's context.
pub const DEFAULT_MAX_BODY: usize = 8 << 20;

impl ServerConfig {
    pub fn new(recipe: Recipe) -> Self {
        let defaults = Defaults {
            temperature: recipe.aggregator.temperature,
            max_tokens: recipe.aggregator.max_tokens,
            seed: None,
            draft: true,
            reference_order: Default::default(),
            early_prefill: true,
        };
        Self { recipe, recipes: BTreeMap::new(), api_key: None, queue: 8, concurrency: crate::runtime::pool::DEFAULT_PARALLEL, moa_concurrency: 1, defaults, system: None, max_body_bytes: DEFAULT_MAX_BODY }
    }

    /// Requests that can run at once when every served local model's decode loop is full
    /// (`parallel` sequences each): `--concurrency`'s default. Memory is what admits them: a
    /// sequence whose KV cache does not fit yet waits in its loop until one leaves, so running
    /// more requests than memory holds costs nothing but their place. Remote endpoints batch on
    /// their own side and add no loop here.
    pub fn full_loops(&self, parallel: usize) -> usize {
        let recipes = std::iter::once((MOA_MODEL, &self.recipe)).chain(self.recipes.iter().map(|(n, r)| (n.as_str(), r)));
        parallel.max(1) * models::local_models(recipes).len().max(1)
    }
}

/// Shared by every handler.
pub struct AppState {
    pub rt: Arc<Runtime>,
    pub queue: Arc<Queue>,
    pub api_key: Option<String>,
    pub defaults: Defaults,
    pub system: Option<String>,
    /// `moa` first, then the named recipes.
    pub recipes: Vec<(String, Arc<Recipe>)>,
    /// Every model the recipes use (header, tokenizer, template; no weights).
    pub models: Vec<Arc<ModelEntry>>,
    /// Unix time the server started (the `created` of `/v1/models` entries).
    pub started: u64,
    /// Largest request body accepted (413 beyond it).
    pub max_body_bytes: usize,
    /// MoA runs hold a permit while they run (`moa_concurrency` permits).
    pub moa_gate: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// Resolve a request's `model`.
    pub fn target(&self, name: &str) -> Option<Target> {
        if let Some((n, r)) = self.recipes.iter().find(|(n, _)| n == name) {
            return Some(Target::Moa { name: n.clone(), recipe: r.clone() });
        }
        self.models.iter().find(|e| e.name == name || e.stem == name).map(|e| Target::Single { name: e.name.clone() })
    }

    /// Every name a request may use.
    pub fn known(&self) -> Vec<String> {
        self.recipes.iter().map(|(n, _)| n.clone()).chain(self.models.iter().map(|e| e.name.clone())).collect()
    }
}

/// A server with its models loaded, ready to serve.
#[derive(Clone)]
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// Read every model of every recipe (headers, tokenizers, templates) and set up the queue.
    pub async fn new(rt: Arc<Runtime>, cfg: ServerConfig) -> Result<Self> {
        if cfg.recipes.contains_key(MOA_MODEL) {
            return Err(Error::Config(format!("a named recipe cannot be called `{MOA_MODEL}` (that name is the configured recipe)")));
        }
        let mut recipes = vec![(MOA_MODEL.to_string(), Arc::new(cfg.recipe))];
        recipes.extend(cfg.recipes.into_iter().map(|(n, r)| (n, Arc::new(r))));
        let (rt2, r2) = (rt.clone(), recipes.clone());
        let models = tokio::task::spawn_blocking(move || models::open_all(&rt2, &r2))
            .await
            .map_err(|e| Error::Other(format!("reading the models failed: {e}")))??;
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let state = AppState {
            rt,
            queue: Queue::new(cfg.queue, cfg.concurrency),
            api_key: cfg.api_key.filter(|k| !k.is_empty()),
            defaults: cfg.defaults,
            system: cfg.system,
            recipes,
            models,
            started,
            max_body_bytes: cfg.max_body_bytes,
            moa_gate: Arc::new(tokio::sync::Semaphore::new(cfg.moa_concurrency.max(1))),
        };
        Ok(Self { state: Arc::new(state) })
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Waiting / running / finished counts (also served at `/health`).
    pub fn stats(&self) -> QueueStats {
        self.state.queue.stats()
    }

    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone())
    }

    /// Serve on `listener` until `shutdown` resolves (in-flight requests are then finished).
    pub async fn serve(self, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let addr = listener.local_addr().ok();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::Other(format!("serving on {addr:?}: {e}")))
    }

    /// Bind `addr` and serve until Ctrl-C, printing where it listens to stderr.
    pub async fn run(self, addr: SocketAddr) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::Other(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().unwrap_or(addr);
        let names = self.state.known();
        eprintln!("moa-local serve: listening on http://{local} (models: {})", names.join(", "));
        if !local.ip().is_loopback() && self.state.api_key.is_none() {
            eprintln!("warning: listening on a non-loopback address without --api-key; anyone who can reach it can use it");
        }
        self.serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("moa-local serve: shutting down");
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moa::recipe::Overrides;

    fn recipe(models: &[&str], aggregator: &str) -> Recipe {
        let o = Overrides { models: Some(models.iter().map(|s| s.to_string()).collect()), aggregator: Some(aggregator.into()), ..Default::default() };
        Recipe::build(None, &o, &[]).unwrap()
    }

    #[test]
    fn concurrency_defaults_to_every_local_loop_full() {
        let mut cfg = ServerConfig::new(recipe(&["qwen-coder", "smollm2"], "qwen-coder"));
        assert_eq!(cfg.full_loops(4), 8, "two local models, four sequences each");
        cfg.recipes.insert("remote".into(), recipe(&["gemma3", "https://box:8000/v1#big"], "smollm2"));
        assert_eq!(cfg.full_loops(4), 12, "gemma3 adds a loop; the endpoint batches on its own side");
        assert_eq!(cfg.full_loops(0), 3, "at least one sequence per loop");
    }
}
