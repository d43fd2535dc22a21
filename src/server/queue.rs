//! Admission control: a bounded queue in front of a small pool of run slots.
//!
//! A request is admitted only while `waiting + running < max_waiting + slots`; otherwise it is
//! refused at once (HTTP 429 with a `Retry-After` estimated from recent run times) instead of
//! piling up. An admitted request holds a [`Ticket`]; it waits for a run slot (a semaphore permit,
//! FIFO) and runs while holding a [`Slot`]. Dropping either gives its place back, so a client that
//! goes away while waiting frees its place at once.
//!
//! The slots default to the model decode loops' `--parallel`: requests to one model run as one
//! batch there (a forward pass reads the weights once for all of them), so admitting several at
//! once raises throughput instead of splitting the cores. MoA runs take a further permit
//! (`--moa-concurrency`, default 1) because each plans the whole memory budget.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How a run ended, for the counters `/health` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Admitted requests waiting for a run slot.
    pub waiting: usize,
    /// Runs in progress.
    pub running: usize,
    pub max_waiting: usize,
    pub slots: usize,
    pub completed: u64,
    pub failed: u64,
    /// Runs stopped early because their client went away (or left before running).
    pub cancelled: u64,
    /// Requests refused with 429.
    pub rejected: u64,
}

pub struct Queue {
    max_waiting: usize,
    slots: usize,
    permits: Arc<Semaphore>,
    admitted: AtomicUsize,
    running: AtomicUsize,
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    rejected: AtomicU64,
    /// Moving average of run wall times, for `Retry-After`.
    avg_secs: Mutex<Option<f64>>,
}

/// Refusal: the queue is full.
#[derive(Debug, Clone, Copy)]
pub struct Full {
    pub waiting: usize,
    pub retry_after_secs: u64,
}

impl Queue {
    pub fn new(max_waiting: usize, slots: usize) -> Arc<Self> {
        let slots = slots.max(1);
        Arc::new(Self {
            max_waiting,
            slots,
            permits: Arc::new(Semaphore::new(slots)),
            admitted: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            avg_secs: Mutex::new(None),
        })
    }

    /// Admit a request or refuse it at once.
    pub fn try_enter(self: &Arc<Self>) -> Result<Ticket, Full> {
        let cap = self.max_waiting + self.slots;
        match self.admitted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1)) {
            Ok(_) => Ok(Ticket { queue: self.clone() }),
            Err(n) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                Err(Full { waiting: n.saturating_sub(self.slots), retry_after_secs: self.retry_after(n) })
            }
        }
    }

    /// Seconds until a place is likely to free up: the average run time times the runs ahead
    /// per slot (1 s when nothing has run yet), capped at 10 minutes.
    fn retry_after(&self, admitted: usize) -> u64 {
        let avg = self.avg_secs.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or(1.0);
        let ahead = admitted.saturating_sub(self.slots) + 1;
        (avg * ahead as f64 / self.slots as f64).ceil().clamp(1.0, 600.0) as u64
    }

    pub fn stats(&self) -> QueueStats {
        let admitted = self.admitted.load(Ordering::Acquire);
        let running = self.running.load(Ordering::Acquire);
        QueueStats {
            waiting: admitted.saturating_sub(running),
            running,
            max_waiting: self.max_waiting,
            slots: self.slots,
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }

    fn record(&self, outcome: Outcome, secs: Option<f64>) {
        let counter = match outcome {
            Outcome::Completed => &self.completed,
            Outcome::Failed => &self.failed,
            Outcome::Cancelled => &self.cancelled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let (Outcome::Completed, Some(s)) = (outcome, secs) {
            let mut avg = self.avg_secs.lock().unwrap_or_else(|p| p.into_inner());
            *avg = Some(match *avg {
                Some(a) => 0.7 * a + 0.3 * s,
                None => s,
            });
        }
    }
}

/// An admitted request's place in the queue (waiting or running).
pub struct Ticket {
    queue: Arc<Queue>,
}

impl Ticket {
    /// Wait (FIFO) for a run slot.
    pub async fn start(self) -> Slot {
        let permit = self.queue.permits.clone().acquire_owned().await.expect("the run semaphore is never closed");
        self.queue.running.fetch_add(1, Ordering::AcqRel);
        Slot { ticket: self, _permit: permit, started: Instant::now(), outcome: None }
    }

    /// The request left before it ran (its client went away).
    pub fn abandon(self) {
        self.queue.record(Outcome::Cancelled, None);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queue.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running request. Dropping it frees the slot and the queue place.
pub struct Slot {
    ticket: Ticket,
    _permit: OwnedSemaphorePermit,
    started: Instant,
    outcome: Option<Outcome>,
}

impl Slot {
    pub fn finish(mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let q = &self.ticket.queue;
        q.record(self.outcome.unwrap_or(Outcome::Failed), Some(self.started.elapsed().as_secs_f64()));
        q.running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_slots_plus_waiting_then_refuses() {
        let q = Queue::new(1, 1);
        let a = q.try_enter().unwrap();
        let b = q.try_enter().unwrap();
        let full = q.try_enter().err().expect("third request is refused");
        assert!(full.retry_after_secs >= 1);
        let slot = a.start().await;
        assert_eq!((q.stats().running, q.stats().waiting, q.stats().rejected), (1, 1, 1));
        slot.finish(Outcome::Completed);
        assert_eq!((q.stats().running, q.stats().waiting, q.stats().completed), (0, 1, 1));
        b.abandon();
        assert_eq!(q.stats().waiting, 0);
        assert_eq!(q.stats().cancelled, 1);
        assert!(q.try_enter().is_ok());
    }
}
