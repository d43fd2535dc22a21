//! Early prefill: a prompt cache filled on a worker thread of its own while the prompt is still
//! being written (a MoA aggregator's references arrive as its proposers finish). The owner sends
//! snapshots of the conversation with [`crate::model::prefix::SENTINEL`] where the unknown text
//! starts; the worker renders, tokenizes and extends the cache to the known beginning, always
//! working on the latest snapshot (older ones waiting in the channel are skipped). While it
//! computes it is a kernel-pool tenant, so it takes its share of the cores beside the
//! generations still running; idle, it takes none. `finish` hands the cache over for the
//! generation proper.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::kernels::pool::Tenant;
use crate::model::{Message, Model, PromptCache};

/// Tokens of a prefix not computed yet: they may merge with the text that follows.
const HOLD_BACK: usize = 2;

/// What the worker did, for the run report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PrefillLog {
    /// Snapshots worked on, and positions computed (recomputed ones included).
    pub updates: usize,
    /// Positions already in the kept cache it started from (the previous turn's, say).
    pub reused_tokens: usize,
    pub computed_tokens: usize,
    pub busy_secs: f64,
}

/// Hands out a kept prompt cache of the model sharing a prefix with the tokens (the runtime's
/// prefix store).
pub type TakeKept = Box<dyn FnOnce(&Model, &[u32]) -> Option<PromptCache> + Send>;

pub struct EarlyPrefill {
    tx: Option<mpsc::Sender<Vec<Message>>>,
    worker: Option<JoinHandle<Result<(PromptCache, PrefillLog)>>>,
}

impl EarlyPrefill {
    /// Start a worker for `model` with a cache of `capacity` positions; on its first snapshot it
    /// asks `kept` for a kept cache sharing a prefix with it (None: start empty).
    pub fn start(model: Arc<Model>, capacity: usize, kept: Option<TakeKept>) -> Result<Self> {
        let mut pc = model.new_prompt_cache(capacity)?;
        let mut kept = kept;
        let (tx, rx) = mpsc::channel::<Vec<Message>>();
        let worker = std::thread::Builder::new()
            .name("moa-early-prefill".into())
            .spawn(move || {
                let mut log = PrefillLog::default();
                while let Ok(mut msgs) = rx.recv() {
                    while let Ok(newer) = rx.try_recv() {
                        msgs = newer;
                    }
                    let t = Instant::now();
                    let Some(text) = model.prompt_prefix(&msgs)? else { continue };
                    let ids = model.encode_rendered(&text)?;
                    if let Some(take) = kept.take() {
                        if let Some(k) = take(&model, &ids) {
                            log.reused_tokens = crate::model::prefix::common_prefix(k.tokens(), &ids);
                            pc = k;
                        }
                    }
                    let _cores = Tenant::enter();
                    log.computed_tokens += pc.extend(&model, &ids, HOLD_BACK)?;
                    log.updates += 1;
                    log.busy_secs += t.elapsed().as_secs_f64();
                }
                Ok((pc, log))
            })
            .map_err(|e| Error::Other(format!("starting the early-prefill thread: {e}")))?;
        Ok(Self { tx: Some(tx), worker: Some(worker) })
    }

    /// A newer snapshot of the prompt (the worker skips to the latest one).
    pub fn update(&self, messages: Vec<Message>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(messages);
        }
    }

    /// Stop after the snapshots sent so far and hand over the cache.
    pub async fn finish(mut self) -> Result<(PromptCache, PrefillLog)> {
        self.tx = None;
        let worker = self.worker.take().expect("finish is called once");
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .map_err(|e| Error::Other(format!("early-prefill thread: {e}")))?
            .map_err(|_| Error::Other("the early-prefill thread panicked".into()))?
    }
}
