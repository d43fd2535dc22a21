//! `GET /metrics`: the server's counters in Prometheus' text format (version 0.0.4): requests by
//! outcome, the queue, and per model decode loop the running and waiting sequences, steps,
//! prompt and generated tokens, and histograms of time to first token and time between tokens.

use std::fmt::Write;

use crate::runtime::batcher::{HistogramSnapshot, LoopSnapshot};
use crate::server::queue::QueueStats;

/// A per-model sample family: name, type, help, value.
type PerModel = (&'static str, &'static str, &'static str, fn(&LoopSnapshot) -> u64);

/// The exposition text.
pub fn render(q: &QueueStats, loops: &[LoopSnapshot]) -> String {
    let mut o = String::new();
    head(&mut o, "moa_requests_total", "counter", "Requests by how they ended (rejected: 429, queue full).");
    for (outcome, n) in [("completed", q.completed), ("failed", q.failed), ("cancelled", q.cancelled), ("rejected", q.rejected)] {
        let _ = writeln!(o, "moa_requests_total{{outcome=\"{outcome}\"}} {n}");
    }
    gauge(&mut o, "moa_queue_waiting", "Admitted requests waiting for a run slot.", q.waiting as u64);
    gauge(&mut o, "moa_queue_running", "Requests running.", q.running as u64);
    gauge(&mut o, "moa_queue_slots", "Requests that may run at once.", q.slots as u64);
    let per_model: [PerModel; 8] = [
        ("moa_sequences_running", "gauge", "Sequences in the model's decode batch.", |l| l.running as u64),
        ("moa_sequences_waiting", "gauge", "Sequences waiting for a place in the batch.", |l| l.waiting as u64),
        ("moa_kv_cache_bytes", "gauge", "KV-cache bytes of the running sequences.", |l| l.kv_bytes),
        ("moa_kv_memory_waits_total", "counter", "Sequences that waited for KV memory before joining.", |l| l.memory_waits),
        ("moa_sequences_parallel", "gauge", "Sequences the batch holds at most.", |l| l.parallel as u64),
        ("moa_decode_steps_total", "counter", "Batched forward passes.", |l| l.steps),
        ("moa_prompt_tokens_total", "counter", "Prompt tokens computed (not reused from a kept cache).", |l| l.prefilled_tokens),
        ("moa_generated_tokens_total", "counter", "Tokens generated.", |l| l.generated_tokens),
    ];
    for (name, kind, help, get) in per_model {
        head(&mut o, name, kind, help);
        for l in loops {
            let _ = writeln!(o, "{name}{{model=\"{}\"}} {}", label(&l.model), get(l));
        }
    }
    head(&mut o, "moa_sequences_total", "counter", "Sequences that left the batch, by outcome.");
    for l in loops {
        let m = label(&l.model);
        let _ = writeln!(o, "moa_sequences_total{{model=\"{m}\",outcome=\"finished\"}} {}", l.finished);
        let _ = writeln!(o, "moa_sequences_total{{model=\"{m}\",outcome=\"failed\"}} {}", l.failed);
    }
    histogram(&mut o, "moa_time_to_first_token_seconds", "From joining the batch to the first token.", loops, |l| &l.ttft);
    histogram(&mut o, "moa_inter_token_latency_seconds", "Mean time between tokens, per finished sequence.", loops, |l| &l.itl);
    o
}

fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(o: &mut String, name: &str, help: &str, v: u64) {
    head(o, name, "gauge", help);
    let _ = writeln!(o, "{name} {v}");
}

fn histogram(o: &mut String, name: &str, help: &str, loops: &[LoopSnapshot], h: fn(&LoopSnapshot) -> &HistogramSnapshot) {
    head(o, name, "histogram", help);
    for l in loops {
        let (m, h) = (label(&l.model), h(l));
        for (b, c) in h.bounds.iter().zip(&h.cumulative) {
            let _ = writeln!(o, "{name}_bucket{{model=\"{m}\",le=\"{b}\"}} {c}");
        }
        let _ = writeln!(o, "{name}_bucket{{model=\"{m}\",le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(o, "{name}_sum{{model=\"{m}\"}} {}", h.sum_secs);
        let _ = writeln!(o, "{name}_count{{model=\"{m}\"}} {}", h.count);
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::label;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
