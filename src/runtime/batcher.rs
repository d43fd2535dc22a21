//! One decode loop per model (continuous batching): a thread owns the model's running sequences
//! (`engine::batch::Batch`) and everything else talks to it through a channel. A sequence sent
//! to the loop joins the batch at the next step while fewer than `parallel` run, else waits in
//! arrival order; every step is one forward pass over all of them. The loop counts as one
//! kernel-pool tenant while it has work, so it shares the cores with other models' generations
//! like any generation does, and it ends when its model is unloaded and its batch is drained.
//!
//! KV memory: a sequence's cache is allocated when it joins, not when it is submitted, and every
//! loop of the runtime draws from one [`KvLedger`]. A sequence whose cache does not fit what is
//! left waits (in order) until running ones finish, instead of failing or overcommitting; a loop
//! with nothing running always admits its next sequence, so a request that fits the context
//! alone always runs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};

use crate::engine::batch::{Batch, Finished, Join};
use crate::error::{Error, Result};
use crate::kernels::pool::Tenant;
use crate::model::Model;

/// Prompt tokens a step prefills over all joining sequences (chunked prefill): long enough that
/// prefill runs at full matmul speed, short enough that decoding sequences wait at most one
/// such chunk per token.
pub const PREFILL_BUDGET: usize = 256;

/// Histogram bucket bounds (seconds): time to first token, and time between tokens.
pub const TTFT_BOUNDS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
pub const ITL_BOUNDS: &[f64] = &[0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A histogram of seconds with fixed bounds, updated lock-free.
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound (observations ≤ it, not cumulative) and one for the rest.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_micros: AtomicU64::new(0) }
    }

    fn observe(&self, secs: f64) {
        let i = self.bounds.iter().position(|&b| secs <= b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((secs.max(0.0) * 1e6) as u64, Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut cum = 0;
        let cumulative = self.counts.iter().map(|c| {
            cum += c.load(Relaxed);
            cum
        });
        let cumulative: Vec<u64> = cumulative.collect();
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            count: *cumulative.last().unwrap_or(&0),
            cumulative,
            sum_secs: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// Prometheus-style: `cumulative[i]` observations ≤ `bounds[i]`, the last one all of them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistogramSnapshot {
    pub bounds: Vec<f64>,
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_secs: f64,
}

/// What one decode loop has done and holds now.
struct Counters {
    running: AtomicUsize,
    waiting: AtomicUsize,
    /// The next waiting sequence waits for KV memory (not for a place).
    memory_wait: std::sync::atomic::AtomicBool,
    /// KV-cache bytes of the running sequences.
    kv_bytes: AtomicU64,
    /// Sequences that had to wait for KV memory before joining.
    memory_waits: AtomicU64,
    steps: AtomicU64,
    finished: AtomicU64,
    failed: AtomicU64,
    prefilled_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    ttft: Histogram,
    itl: Histogram,
}

impl Counters {
    fn record(&self, r: &crate::error::Result<Finished>) {
        match r {
            Ok(f) => {
                let s = &f.stats;
                self.finished.fetch_add(1, Relaxed);
                self.prefilled_tokens.fetch_add(s.prefilled_tokens as u64, Relaxed);
                self.generated_tokens.fetch_add(s.generated_tokens as u64, Relaxed);
                self.ttft.observe(s.ttft_secs);
                if s.generated_tokens > 1 {
                    self.itl.observe(s.decode_secs / (s.generated_tokens - 1) as f64);
                }
            }
            Err(_) => {
                self.failed.fetch_add(1, Relaxed);
            }
        }
    }
}

/// A decode loop's numbers (`/health`, `/metrics`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoopSnapshot {
    pub model: String,
    pub parallel: usize,
    pub running: usize,
    pub waiting: usize,
    /// The first waiting sequence waits for KV memory the running ones hold.
    pub waiting_for_memory: bool,
    pub kv_bytes: u64,
    pub memory_waits: u64,
    pub steps: u64,
    pub finished: u64,
    pub failed: u64,
    pub prefilled_tokens: u64,
    pub generated_tokens: u64,
    pub ttft: HistogramSnapshot,
    /// Mean time between tokens of each finished sequence.
    pub itl: HistogramSnapshot,
}

/// The KV-cache bytes all decode loops of a runtime may hold at once, and what they hold.
#[derive(Default)]
pub struct KvLedger {
    budget: AtomicU64,
    used: AtomicU64,
}

impl KvLedger {
    pub fn set_budget(&self, bytes: u64) {
        self.budget.store(bytes, Relaxed);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Relaxed)
    }

    pub fn budget(&self) -> u64 {
        self.budget.load(Relaxed)
    }

    fn fits(&self, bytes: u64) -> bool {
        self.used().saturating_add(bytes) <= self.budget()
    }
}

/// A sequence handed to a loop: `make` builds its batch entry (allocating its cache) when it is
/// admitted, or fails it through its own `done` (then None); `bytes` is what its cache takes.
pub struct Pending {
    pub make: Box<dyn FnOnce() -> Option<Join> + Send>,
    pub bytes: u64,
    /// When set while it waits, the sequence leaves the queue through `fail` at the next step.
    pub cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    pub fail: Box<dyn FnOnce(Error) + Send>,
}

/// The sending side of a model's loop.
pub struct ModelLoop {
    tx: Mutex<Sender<Pending>>,
    parallel: usize,
    model: String,
    counters: Arc<Counters>,
}

impl ModelLoop {
    /// Starts the loop thread of `model`; at most `parallel` sequences run at once.
    pub fn start(model: Arc<Model>, parallel: usize, ledger: Arc<KvLedger>) -> Result<Self> {
        let (tx, rx) = channel::<Pending>();
        let parallel = parallel.max(1);
        let counters = Arc::new(Counters {
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            memory_wait: Default::default(),
            kv_bytes: AtomicU64::new(0),
            memory_waits: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            prefilled_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BOUNDS),
            itl: Histogram::new(ITL_BOUNDS),
        });
        let (name, c) = (model.name.clone(), counters.clone());
        std::thread::Builder::new()
            .name(format!("moa-batch-{}", model.name))
            .spawn(move || run(&model, rx, parallel, c, ledger))
            .map_err(|e| Error::Other(format!("cannot start the decode loop thread: {e}")))?;
        Ok(Self { tx: Mutex::new(tx), parallel, model: name, counters })
    }

    pub fn snapshot(&self) -> LoopSnapshot {
        let c = &self.counters;
        LoopSnapshot {
            model: self.model.clone(),
            parallel: self.parallel,
            running: c.running.load(Relaxed),
            waiting: c.waiting.load(Relaxed),
            waiting_for_memory: c.memory_wait.load(Relaxed),
            kv_bytes: c.kv_bytes.load(Relaxed),
            memory_waits: c.memory_waits.load(Relaxed),
            steps: c.steps.load(Relaxed),
            finished: c.finished.load(Relaxed),
            failed: c.failed.load(Relaxed),
            prefilled_tokens: c.prefilled_tokens.load(Relaxed),
            generated_tokens: c.generated_tokens.load(Relaxed),
            ttft: c.ttft.snapshot(),
            itl: c.itl.snapshot(),
        }
    }

    pub fn parallel(&self) -> usize {
        self.parallel
    }

    /// Hands a sequence to the loop; if the loop is gone, Err gives it back.
    pub fn submit(&self, p: Pending) -> std::result::Result<(), Pending> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(p).map_err(|e| e.0)
    }
}

fn run(model: &Model, rx: Receiver<Pending>, parallel: usize, counters: Arc<Counters>, ledger: Arc<KvLedger>) {
    let mut batch = Batch::new(PREFILL_BUDGET);
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    let mut waited = false;
    let mut open = true;
    let mut tenant: Option<Tenant> = None;
    loop {
        if batch.is_empty() && waiting.is_empty() {
            tenant = None; // idle: give the cores back
            if !open {
                return;
            }
            match rx.recv() {
                Ok(j) => waiting.push_back(j),
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(j) => waiting.push_back(j),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        // Given up while waiting: out of the queue now, not when it would have joined.
        let mut i = 0;
        while i < waiting.len() {
            if waiting[i].cancel.as_ref().is_some_and(|c| c.load(Relaxed)) {
                if let Some(p) = waiting.remove(i) {
                    (p.fail)(Error::Cancelled);
                }
            } else {
                i += 1;
            }
        }
        if batch.is_empty() && waiting.is_empty() {
            continue;
        }
        if tenant.is_none() && !waiting.is_empty() {
            tenant = Some(Tenant::enter()); // before joining: the sequences' stats see their share
        }
        let mut memory_wait = false;
        while batch.len() < parallel {
            let Some(next) = waiting.front() else { break };
            if !batch.is_empty() && !ledger.fits(next.bytes) {
                memory_wait = true;
                if !waited {
                    waited = true;
                    counters.memory_waits.fetch_add(1, Relaxed);
                }
                break;
            }
            waited = false;
            let Some(p) = waiting.pop_front() else { break };
            let bytes = p.bytes;
            ledger.used.fetch_add(bytes, Relaxed);
            let Some(mut j) = (p.make)() else {
                ledger.used.fetch_sub(bytes, Relaxed);
                continue;
            };
            // Counted before its answer goes out, so a client that then asks sees it.
            let (c, l, done) = (counters.clone(), ledger.clone(), j.done);
            j.done = Box::new(move |r| {
                c.running.fetch_sub(1, Relaxed);
                c.kv_bytes.fetch_sub(bytes, Relaxed);
                l.used.fetch_sub(bytes, Relaxed);
                c.record(&r);
                done(r)
            });
            counters.running.fetch_add(1, Relaxed);
            counters.kv_bytes.fetch_add(bytes, Relaxed);
            batch.join(j);
        }
        counters.memory_wait.store(memory_wait, Relaxed);
        counters.waiting.store(waiting.len(), Relaxed);
        batch.step(&model.transformer);
        counters.steps.fetch_add(1, Relaxed);
    }
}
