//! One decode loop per model (continuous batching): a thread owns the model's running sequences
//! (`engine::batch::Batch`) and everything else talks to it through a channel. A sequence sent
//! to the loop joins the batch at the next step while fewer than `parallel` run, else waits in
//! arrival order; every step is one forward pass over all of them. The loop counts as one
//! kernel-pool tenant while it has work, so it shares the cores with other models' generations
//! like any generation does, and it ends when its model is unloaded and its batch is drained.

use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};

use crate::engine::batch::{Batch, Join};
use crate::error::{Error, Result};
use crate::kernels::pool::Tenant;
use crate::model::Model;

/// Prompt tokens a step prefills over all joining sequences (chunked prefill): long enough that
/// prefill runs at full matmul speed, short enough that decoding sequences wait at most one
/// such chunk per token.
pub const PREFILL_BUDGET: usize = 256;

/// The sending side of a model's loop.
pub struct ModelLoop {
    tx: Mutex<Sender<Join>>,
    parallel: usize,
}

impl ModelLoop {
    /// Starts the loop thread of `model`; at most `parallel` sequences run at once.
    pub fn start(model: Arc<Model>, parallel: usize) -> Result<Self> {
        let (tx, rx) = channel::<Join>();
        let parallel = parallel.max(1);
        std::thread::Builder::new()
            .name(format!("moa-batch-{}", model.name))
            .spawn(move || run(&model, rx, parallel))
            .map_err(|e| Error::Other(format!("cannot start the decode loop thread: {e}")))?;
        Ok(Self { tx: Mutex::new(tx), parallel })
    }

    pub fn parallel(&self) -> usize {
        self.parallel
    }

    /// Hands a sequence to the loop; if the loop is gone its `done` gets the error.
    pub fn submit(&self, j: Join) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = tx.send(j) {
            (e.0.done)(Err(Error::Other("the model's decode loop has stopped".into())));
        }
    }
}

fn run(model: &Model, rx: Receiver<Join>, parallel: usize) {
    let mut batch = Batch::new(PREFILL_BUDGET);
    let mut waiting: VecDeque<Join> = VecDeque::new();
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
        if tenant.is_none() && !waiting.is_empty() {
            tenant = Some(Tenant::enter()); // before joining: the sequences' stats see their share
        }
        while batch.len() < parallel {
            match waiting.pop_front() {
                Some(j) => batch.join(j),
                None => break,
            }
        }
        batch.step(&model.transformer);
    }
}
