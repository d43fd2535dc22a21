//! Prompt caches kept for reuse: after a generation its cache (prompt and answer) is put here,
//! and the next generation on the same model takes the one sharing the longest token prefix
//! with its prompt, so it computes only what is new — the next turn of a conversation, or
//! agents of one model whose prompts share a beginning. The store is bounded in bytes (least
//! recently used caches go first) and is emptied whenever a model is loaded or unloaded, so
//! that caches never take memory the scheduler planned for weights.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::model::prefix::common_prefix;
use crate::model::{Model, PromptCache};

/// A cache is worth taking when it shares at least this many tokens.
const MIN_SHARED: usize = 8;

struct Entry {
    model: PathBuf,
    pc: PromptCache,
    bytes: u64,
    used: u64,
}

#[derive(Default)]
pub struct PrefixStore {
    entries: Mutex<(Vec<Entry>, u64)>,
}

impl PrefixStore {
    /// A cache of `model` sharing the longest prefix with `prompt` (at least [`MIN_SHARED`]
    /// tokens), with room for `positions`. A stored cache the prompt continues (the next turn
    /// of its conversation) is removed from the store: one generation uses it at a time. One
    /// that goes on differently after the shared part (the system prompt and template of
    /// another request) stays, and the prompt gets a copy of the shared positions: concurrent
    /// requests that begin alike all skip computing their beginning.
    pub fn take(&self, model: &Model, prompt: &[u32], positions: usize) -> Option<PromptCache> {
        let mut g = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (best, shared) = g
            .0
            .iter()
            .enumerate()
            .filter(|(_, e)| e.model == model.path)
            .map(|(i, e)| (i, common_prefix(e.pc.tokens(), prompt)))
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))?;
        if shared < MIN_SHARED {
            return None;
        }
        if shared < g.0[best].pc.tokens().len() {
            if let Ok(pc) = g.0[best].pc.fork_prefix(shared, positions) {
                g.1 += 1;
                g.0[best].used = g.1;
                return Some(pc);
            }
        }
        Some(g.0.swap_remove(best).pc)
    }

    /// Keep `pc` for later, dropping least recently used caches beyond `cap` bytes in all.
    pub fn put(&self, model: &Model, pc: PromptCache, cap: u64) {
        let bytes = pc.bytes(model);
        if bytes > cap {
            return;
        }
        let mut g = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        g.1 += 1;
        let used = g.1;
        g.0.push(Entry { model: model.path.clone(), pc, bytes, used });
        drop(g);
        self.shrink_to(cap);
    }

    /// Drop least recently used caches until at most `bytes` are held.
    pub fn shrink_to(&self, bytes: u64) {
        let mut g = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        while g.0.iter().map(|e| e.bytes).sum::<u64>() > bytes {
            let Some(lru) = g.0.iter().enumerate().min_by_key(|(_, e)| e.used).map(|(i, _)| i) else { break };
            g.0.swap_remove(lru);
        }
    }

    /// Drop every cache (a model is about to load or was unloaded).
    pub fn clear(&self) {
        let taken = std::mem::take(&mut self.entries.lock().unwrap_or_else(|p| p.into_inner()).0);
        drop(taken);
    }

    /// Caches held and their bytes.
    pub fn held(&self) -> (usize, u64) {
        let g = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        (g.0.len(), g.0.iter().map(|e| e.bytes).sum())
    }
}
