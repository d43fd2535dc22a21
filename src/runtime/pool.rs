//! The runtime's model pool: resolves names through the catalog, loads each file once per
//! device (every role a model plays shares one copy), and runs generations on blocking worker
//! threads so async callers (MoA, the server) can run several at once. Each generation is a
//! kernel-pool tenant: generations running at the same time split the CPU cores between them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::Device;

use crate::engine::Control;
use crate::error::{Error, Result};
use crate::kernels::pool::Tenant;
use crate::model::catalog::Catalog;
use crate::model::chat_tokens::ChatTokens;
use crate::model::{GenerateRequest, Generation, Model, PromptCache};
use crate::runtime::batcher::{KvLedger, ModelLoop, Pending};
use crate::runtime::device::DeviceSpec;
use crate::runtime::estimate::{MemoryEstimate, ModelShape};
use crate::runtime::remote::{is_remote, RemoteClient, RemoteLimits};
use crate::runtime::prefix_store::PrefixStore;
use crate::runtime::scheduler::{self, Job, Plan};

/// What a run report records about one loaded model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadedInfo {
    pub name: String,
    pub path: PathBuf,
    pub arch: String,
    pub file_bytes: u64,
    pub load_secs: f64,
    pub device: String,
}

pub struct Runtime {
    catalog: Catalog,
    spec: DeviceSpec,
    device: Device,
    /// Loaded models by resolved path; names map onto them.
    models: Mutex<HashMap<PathBuf, Arc<Model>>>,
    names: Mutex<HashMap<String, PathBuf>>,
    shapes: Mutex<HashMap<PathBuf, ModelShape>>,
    /// Tokenizers and chat templates read from headers alone (server checks, remote agents).
    chat_tokens: Mutex<HashMap<PathBuf, Arc<ChatTokens>>>,
    /// `--memory-budget`; None: the device's free memory (90%) plus what this runtime holds.
    budget: Option<u64>,
    /// Prompt caches kept for the next turn (see `prefix_store`).
    prefixes: PrefixStore,
    /// The HTTP client of remote agents (URL model specs).
    remote: RemoteClient,
    /// Each model's continuous-batching decode loop (started on first use), and how many
    /// sequences one loop runs at once.
    loops: Mutex<HashMap<PathBuf, Arc<ModelLoop>>>,
    parallel: usize,
    /// KV-cache memory the decode loops may hold together (admission waits beyond it).
    kv: Arc<KvLedger>,
}

/// Sequences one model's decode loop runs at once unless `with_parallel` says otherwise.
pub const DEFAULT_PARALLEL: usize = 4;

/// The prefix store takes at most this share of the memory budget, and at most
/// [`PREFIX_STORE_MAX`] bytes.
const PREFIX_STORE_SHARE: u64 = 8;
const PREFIX_STORE_MAX: u64 = 2 << 30;

impl Runtime {
    pub fn new(spec: DeviceSpec) -> Result<Self> {
        Ok(Self {
            catalog: Catalog::load()?,
            device: spec.open()?,
            spec,
            models: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            shapes: Mutex::new(HashMap::new()),
            chat_tokens: Mutex::new(HashMap::new()),
            budget: None,
            prefixes: PrefixStore::default(),
            remote: RemoteClient::new(RemoteLimits::default())?,
            loops: Mutex::new(HashMap::new()),
            parallel: DEFAULT_PARALLEL,
            kv: Arc::new(KvLedger::default()),
        })
    }

    /// Sequences per model decode loop (`serve --parallel`).
    pub fn with_parallel(mut self, n: usize) -> Self {
        self.parallel = n.max(1);
        self
    }

    pub fn parallel(&self) -> usize {
        self.parallel
    }

    /// Cap the memory the scheduler may plan for on this device.
    pub fn with_memory_budget(mut self, bytes: Option<u64>) -> Self {
        self.budget = bytes;
        self
    }

    /// The memory budget plans are made against, and where it came from.
    pub fn memory_budget(&self) -> Result<(u64, &'static str)> {
        if let Some(b) = self.budget {
            return Ok((b, "--memory-budget"));
        }
        let held: u64 = self.models.lock().unwrap_or_else(|p| p.into_inner()).values().map(|m| m.file_size).sum();
        Ok((self.spec.free_memory()? / 10 * 9 + held, "free device memory (90%)"))
    }

    /// Architecture and sizes of a model, read from its header only (cached).
    pub fn shape(&self, name: &str) -> Result<ModelShape> {
        let path = self.resolve(name)?;
        if let Some(s) = self.shapes.lock().unwrap_or_else(|p| p.into_inner()).get(&path) {
            return Ok(s.clone());
        }
        let s = ModelShape::read(&path)?;
        self.shapes.lock().unwrap_or_else(|p| p.into_inner()).insert(path, s.clone());
        Ok(s)
    }

    /// The tokenizer and chat template of a model, read from its header only (cached).
    pub fn chat_tokens(&self, name: &str) -> Result<Arc<ChatTokens>> {
        let path = self.resolve(name)?;
        if let Some(t) = self.chat_tokens.lock().unwrap_or_else(|p| p.into_inner()).get(&path) {
            return Ok(t.clone());
        }
        let t = Arc::new(ChatTokens::open(&path)?);
        self.chat_tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(path, t.clone());
        Ok(t)
    }

    /// Plan waves for `layers` of jobs and the aggregator against this runtime's budget.
    pub fn plan(&self, layers: &[Vec<Job>], aggregator: &Job) -> Result<Plan> {
        let mut ctx: BTreeMap<String, usize> = BTreeMap::new();
        for j in layers.iter().flatten().chain(std::iter::once(aggregator)) {
            let c = ctx.entry(j.model.clone()).or_default();
            *c = (*c).max(j.context);
        }
        let mut est = BTreeMap::new();
        for (m, c) in ctx {
            // A remote agent takes no memory here.
            let e = if is_remote(&m) { MemoryEstimate::default() } else { self.shape(&m)?.estimate(c, self.device.is_cpu()) };
            est.insert(m.clone(), e);
        }
        let (budget, _) = self.memory_budget()?;
        scheduler::plan(layers, aggregator, &est, budget, &self.spec.to_string())
    }

    /// The client remote agents are called with.
    pub fn remote(&self) -> &RemoteClient {
        &self.remote
    }

    /// The model `name` when it is loaded now.
    pub fn loaded_model(&self, name: &str) -> Option<Arc<Model>> {
        let path = self.resolve(name).ok()?;
        self.models.lock().unwrap_or_else(|p| p.into_inner()).get(&path).cloned()
    }

    /// Whether `name` is loaded now.
    pub fn is_loaded(&self, name: &str) -> bool {
        self.resolve(name).is_ok_and(|p| self.models.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&p))
    }

    pub fn device_spec(&self) -> DeviceSpec {
        self.spec
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The file a model name refers to.
    pub fn resolve(&self, name: &str) -> Result<PathBuf> {
        if let Some(p) = self.names.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(p.clone());
        }
        let p = self.catalog.resolve(name)?;
        let p = std::fs::canonicalize(&p).unwrap_or(p);
        self.names.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), p.clone());
        Ok(p)
    }

    /// Load (or reuse) the model `name` on this runtime's device. Blocking.
    pub fn load_blocking(&self, name: &str) -> Result<Arc<Model>> {
        let path = self.resolve(name)?;
        if let Some(m) = self.models.lock().unwrap_or_else(|p| p.into_inner()).get(&path) {
            return Ok(m.clone());
        }
        // Kept prompt caches give way to the weights the plan made room for.
        self.prefixes.clear();
        let m = Model::load(&path, &self.spec.open_for_model(&self.device)?)?;
        self.models.lock().unwrap_or_else(|p| p.into_inner()).insert(path, m.clone());
        Ok(m)
    }

    /// Load on a blocking thread.
    pub async fn load(self: &Arc<Self>, name: &str) -> Result<Arc<Model>> {
        let this = self.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || this.load_blocking(&name))
            .await
            .map_err(|e| Error::Other(format!("model loading thread failed: {e}")))?
    }

    /// Drop the runtime's reference to a model (it is freed once no generation uses it).
    pub fn unload(&self, name: &str) -> bool {
        let Ok(path) = self.resolve(name) else { return false };
        let removed = self.models.lock().unwrap_or_else(|p| p.into_inner()).remove(&path);
        // Its loop ends once the sequences it runs are done.
        self.loops.lock().unwrap_or_else(|p| p.into_inner()).remove(&path);
        self.prefixes.clear();
        let unloaded = removed.is_some();
        // The last holder frees the weights (their own mappings) and the tokenizer (heap).
        drop(removed);
        crate::model::loaded::release_freed_memory();
        unloaded
    }

    /// Models currently held, as report entries.
    pub fn loaded(&self) -> Vec<LoadedInfo> {
        let models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<LoadedInfo> = models.values().map(|m| self.info(m)).collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    pub fn info(&self, m: &Model) -> LoadedInfo {
        LoadedInfo {
            name: m.name.clone(),
            path: m.path.clone(),
            arch: format!("{:?}", m.cfg().arch).to_lowercase(),
            file_bytes: m.file_size,
            load_secs: m.load_secs,
            device: self.spec.to_string(),
        }
    }

    /// Several samples of one request (one per seed) with one shared prefill and batched decode
    /// steps, on a blocking worker thread; `on_text(sample, piece)` streams.
    pub async fn generate_samples(
        model: Arc<Model>,
        req: GenerateRequest,
        seeds: Vec<u64>,
        mut on_text: impl FnMut(usize, &str) -> Control + Send + 'static,
    ) -> Result<Vec<Generation>> {
        tokio::task::spawn_blocking(move || {
            let _cores = Tenant::enter();
            model.generate_samples(&req, &seeds, &mut on_text)
        })
            .await
            .map_err(|e| Error::Other(format!("generation thread failed: {e}")))?
    }

    /// `req`'s prompt prefilled once (all but its last token, which each sequence computes for
    /// its own first logits) into a cache with room for its answer, on a blocking worker thread as
    /// a kernel tenant: `n` choices of one request fork it instead of prefilling `n` times.
    pub async fn prefill_shared(&self, model: Arc<Model>, req: &GenerateRequest) -> Result<PromptCache> {
        let (_, ids) = model.tokenize_prompt(&req.prompt)?;
        model.check_request(&ids, req)?;
        let capacity = ids.len() + req.max_tokens;
        tokio::task::spawn_blocking(move || {
            let mut pc = model.new_prompt_cache(capacity)?;
            let _cores = Tenant::enter();
            pc.extend(&model, &ids, 1)?;
            Ok(pc)
        })
        .await
        .map_err(|e| Error::Other(format!("prefill thread failed: {e}")))?
    }

    /// Each prompt token's log-probability given the tokens before it (see
    /// `Model::score_prompt`), on a blocking worker thread as a kernel tenant.
    pub async fn score_prompt(&self, model: Arc<Model>, ids: Vec<u32>, top: usize) -> Result<Vec<crate::engine::logprobs::TokenLogprob>> {
        tokio::task::spawn_blocking(move || {
            let _cores = Tenant::enter();
            model.score_prompt(&ids, top)
        })
        .await
        .map_err(|e| Error::Other(format!("scoring thread failed: {e}")))?
    }

    /// Prompt caches kept for reuse: how many and their bytes.
    pub fn prefix_caches(&self) -> (usize, u64) {
        self.prefixes.held()
    }

    /// The kept cache of `model` sharing the longest prefix with `tokens` (removed from the store).
    pub fn take_prefix(&self, model: &Model, tokens: &[u32], positions: usize) -> Option<PromptCache> {
        self.prefixes.take(model, tokens, positions)
    }

    /// Drop every kept prompt cache (a benchmark's runs must each start cold).
    pub fn clear_prefix_caches(&self) {
        self.prefixes.clear();
    }

    /// Keep at most what is left of the budget beside `planned` bytes in prompt caches (a step
    /// of the plan is about to run).
    pub fn make_room(&self, planned: u64) {
        let room = self.memory_budget().map_or(0, |(b, _)| b.saturating_sub(planned));
        self.prefixes.shrink_to(room.min(self.prefix_store_cap()));
    }

    /// KV memory the decode loops may hold: with `--memory-budget`, the budget less the loaded
    /// weights and kept prompt caches; else the free memory (90%) plus what the loops hold now
    /// (their caches are already out of the free memory).
    fn kv_budget(&self) -> u64 {
        let weights: u64 = self.models.lock().unwrap_or_else(|p| p.into_inner()).values().map(|m| m.file_size).sum();
        match self.budget {
            Some(b) => b.saturating_sub(weights).saturating_sub(self.prefixes.held().1),
            None => self.spec.free_memory().map_or(u64::MAX, |f| f / 10 * 9).saturating_add(self.kv.used()),
        }
    }

    /// KV-cache bytes the decode loops hold, and what they may hold.
    pub fn kv_memory(&self) -> (u64, u64) {
        (self.kv.used(), self.kv.budget())
    }

    fn prefix_store_cap(&self) -> u64 {
        self.memory_budget().map_or(0, |(b, _)| b / PREFIX_STORE_SHARE).min(PREFIX_STORE_MAX)
    }

    /// One generation on a blocking worker thread; `on_text` receives the streamed pieces. It
    /// starts from `pc` when given (a cache that may hold a prefix of its prompt), else from the
    /// kept cache of this model sharing the longest prefix with the prompt; afterwards the cache
    /// is kept for the next turn.
    pub async fn generate(
        self: &Arc<Self>,
        model: Arc<Model>,
        req: GenerateRequest,
        pc: Option<PromptCache>,
        mut on_text: impl FnMut(&str) -> Control + Send + 'static,
    ) -> Result<Generation> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _cores = Tenant::enter();
            let (text, ids) = model.tokenize_prompt(&req.prompt)?;
            let mut pc = match pc.or_else(|| this.prefixes.take(&model, &ids, ids.len() + req.max_tokens)) {
                Some(pc) => pc,
                None => model.new_prompt_cache(ids.len() + req.max_tokens)?,
            };
            let g = model.generate_cached_ids(&req, text, ids, &mut pc, &mut on_text)?;
            this.prefixes.put(&model, pc, this.prefix_store_cap());
            Ok(g)
        })
            .await
            .map_err(|e| Error::Other(format!("generation thread failed: {e}")))?
    }

    /// [`Runtime::generate`] as a sequence of the model's continuous batch: it joins the
    /// model's decode loop beside every other sequence of that model (requests, agents) and
    /// generates what it would alone. Same prompt-cache reuse and keeping as `generate`.
    pub async fn generate_batched(
        self: &Arc<Self>,
        model: Arc<Model>,
        req: GenerateRequest,
        pc: Option<PromptCache>,
        on_text: impl FnMut(&str) -> Control + Send + 'static,
    ) -> Result<Generation> {
        let lp = self.model_loop(&model)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (text, ids) = model.tokenize_prompt(&req.prompt)?;
        model.check_request(&ids, &req)?;
        let pc = pc.or_else(|| self.prefixes.take(&model, &ids, ids.len() + req.max_tokens));
        let capacity = pc.as_ref().map_or(0, |p| p.capacity()).max(ids.len() + req.max_tokens);
        let bytes = model.cache_bytes(capacity);
        self.kv.set_budget(self.kv_budget());
        // Built when the loop admits it: only then is its cache allocated.
        let m = model.clone();
        let cancel = req.cancel.clone();
        // The answer goes out once: through the sequence's `done`, or here if it cannot join or
        // is given up while waiting.
        let tx = Arc::new(Mutex::new(Some(tx)));
        let send = move |tx: &Mutex<Option<tokio::sync::oneshot::Sender<_>>>, r| {
            if let Some(tx) = tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = tx.send(r);
            }
        };
        let tx_fail = tx.clone();
        let fail = Box::new(move |e: Error| send(&tx_fail, Err(e)));
        let make = Box::new(move || {
            let model = m;
            let t = tx.clone();
            let done: crate::model::batched::OnDone = Box::new(move |r| send(&t, r));
            let joined = pc
                .map_or_else(|| model.new_prompt_cache(capacity), Ok)
                .and_then(|pc| model.batch_join(&req, text, ids, pc, Box::new(on_text), done));
            match joined {
                Ok(j) => Some(j),
                Err(e) => {
                    send(&tx, Err(e));
                    None
                }
            }
        });
        if let Err(p) = lp.submit(Pending { make, bytes, cancel, fail }) {
            drop(p);
            return Err(Error::Other("the model's decode loop has stopped".into()));
        }
        let (g, pc) = rx.await.map_err(|_| Error::Other("the decode loop dropped a sequence".into()))??;
        self.prefixes.put(&model, pc, self.prefix_store_cap());
        Ok(g)
    }

    /// Every model decode loop's numbers, by model name.
    pub fn decode_loops(&self) -> Vec<crate::runtime::batcher::LoopSnapshot> {
        let loops = self.loops.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = loops.values().map(|l| l.snapshot()).collect();
        v.sort_by(|a, b| a.model.cmp(&b.model));
        v
    }

    /// The decode loop of `model`, started on first use.
    fn model_loop(&self, model: &Arc<Model>) -> Result<Arc<ModelLoop>> {
        let mut loops = self.loops.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = loops.get(&model.path) {
            return Ok(l.clone());
        }
        let l = Arc::new(ModelLoop::start(model.clone(), self.parallel, self.kv.clone())?);
        loops.insert(model.path.clone(), l.clone());
        Ok(l)
    }
}
