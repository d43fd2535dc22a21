//! Where a forward pass's wall time goes on the device path: the host building and issuing the
//! pass (every op's launch, allocation and upload, up to the final logits copy) against the wait
//! in that copy (the device finishing the queued work). On a GPU a pass whose host part is most of
//! its time is host-bound: the device idles between launches. Decode passes (one row per
//! sequence) and prefill passes are counted apart. On the CPU fast path the host part is the
//! whole compute; the split means something only where work is queued on a device.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Totals since the last [`PassClock::take`], per kind of pass.
#[derive(Default)]
pub struct PassClock {
    /// [decode, prefill] × [passes, host ns, wait ns]
    counts: [[AtomicU64; 3]; 2],
}

/// Mean milliseconds per pass of one kind.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct PassSplit {
    pub passes: u64,
    /// Building and issuing the pass, up to the final copy of the logits.
    pub host_ms: f64,
    /// Waiting in that copy for the device to finish.
    pub wait_ms: f64,
}

/// Decode and prefill passes measured since the last take.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct PassTimes {
    pub decode: Option<PassSplit>,
    pub prefill: Option<PassSplit>,
}

impl PassClock {
    /// Record one pass; `decode` when every sequence fed one row.
    pub fn record(&self, decode: bool, host: Duration, wait: Duration) {
        let c = &self.counts[usize::from(!decode)];
        c[0].fetch_add(1, Ordering::Relaxed);
        c[1].fetch_add(host.as_nanos() as u64, Ordering::Relaxed);
        c[2].fetch_add(wait.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The means so far, and start counting again.
    pub fn take(&self) -> PassTimes {
        let split = |c: &[AtomicU64; 3]| {
            let [n, h, w] = [0, 1, 2].map(|i| c[i].swap(0, Ordering::Relaxed));
            (n > 0).then(|| PassSplit { passes: n, host_ms: h as f64 / n as f64 / 1e6, wait_ms: w as f64 / n as f64 / 1e6 })
        };
        PassTimes { decode: split(&self.counts[0]), prefill: split(&self.counts[1]) }
    }
}

impl PassTimes {
    /// `decode 1.20 ms host + 6.30 ms wait per pass (128 passes)`, one clause per kind measured.
    pub fn describe(&self) -> String {
        let part = |name: &str, s: &Option<PassSplit>| {
            s.map(|s| format!("{name} {:.2} ms host + {:.2} ms wait per pass ({} passes)", s.host_ms, s.wait_ms, s.passes))
        };
        [part("decode", &self.decode), part("prefill", &self.prefill)].into_iter().flatten().collect::<Vec<_>>().join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_are_averaged_per_kind_and_take_starts_again() {
        let c = PassClock::default();
        c.record(true, Duration::from_millis(2), Duration::from_millis(6));
        c.record(true, Duration::from_millis(4), Duration::from_millis(2));
        c.record(false, Duration::from_millis(10), Duration::from_millis(1));
        let t = c.take();
        assert_eq!(t.decode, Some(PassSplit { passes: 2, host_ms: 3.0, wait_ms: 4.0 }));
        assert_eq!(t.prefill, Some(PassSplit { passes: 1, host_ms: 10.0, wait_ms: 1.0 }));
        assert_eq!(c.take(), PassTimes { decode: None, prefill: None });
    }
}
