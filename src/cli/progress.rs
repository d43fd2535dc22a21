//! Live progress on stderr for a MoA run (indicatif spinners per proposer, hidden when stderr is
//! not a terminal), the streamed aggregate on stdout, and the closing summary.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use moa_local::moa::{EventSink, MoaEvent, MoaReport};

pub struct Display {
    multi: MultiProgress,
    bars: Mutex<HashMap<(usize, usize), ProgressBar>>,
    /// Proposer layers; the aggregator's layer is one more.
    layers: usize,
    stream: bool,
    show_proposals: bool,
}

impl Display {
    pub fn new(layers: usize, stream: bool, show_proposals: bool) -> Arc<Self> {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        Arc::new(Self { multi, bars: Mutex::new(HashMap::new()), layers, stream, show_proposals })
    }

    pub fn sink(self: &Arc<Self>) -> EventSink {
        let me = self.clone();
        Arc::new(move |e| me.on(e))
    }

    fn on(&self, e: MoaEvent) {
        let style = ProgressStyle::with_template("{spinner} {prefix:<24} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner());
        match e {
            MoaEvent::Loading { model } => self.line(format!("loading {model}…")),
            MoaEvent::Loaded { model, secs } => self.line(format!("loaded {model} in {secs:.1}s")),
            MoaEvent::LoadFailed { model, error } => self.line(format!("failed to load {model}: {error}")),
            MoaEvent::AgentStarted { layer, index, model } if layer <= self.layers => {
                let pb = self.multi.add(ProgressBar::new_spinner());
                pb.set_style(style);
                pb.set_prefix(format!("L{layer} #{} {model}", index + 1));
                pb.set_message("prefill…");
                pb.enable_steady_tick(std::time::Duration::from_millis(120));
                self.bars.lock().unwrap_or_else(|p| p.into_inner()).insert((layer, index), pb);
            }
            MoaEvent::AgentStarted { model, .. } => {
                let _ = self.multi.clear();
                self.line(format!("aggregating with {model}…"));
            }
            MoaEvent::AgentProgress { layer, index, pieces, secs } => {
                if let Some(pb) = self.bars.lock().unwrap_or_else(|p| p.into_inner()).get(&(layer, index)) {
                    pb.set_message(format!("{pieces} tok, {:.1} tok/s", pieces as f64 / secs.max(1e-9)));
                }
            }
            MoaEvent::AgentFinished { layer, index, model, text, outcome } => {
                if let Some(pb) = self.bars.lock().unwrap_or_else(|p| p.into_inner()).remove(&(layer, index)) {
                    match &outcome {
                        Ok(s) => pb.finish_with_message(format!("done: {} tok, {:.1} tok/s", s.generated_tokens, s.decode_tps)),
                        Err(e) => pb.finish_with_message(format!("FAILED: {e}")),
                    }
                }
                if self.show_proposals && layer <= self.layers && outcome.is_ok() {
                    let _ = self.multi.suspend(|| {
                        let mut o = std::io::stdout();
                        writeln!(o, "=== layer {layer}, proposer {} ({model}) ===\n{}\n", index + 1, text.trim())
                    });
                }
            }
            MoaEvent::LayerFinished { .. } => {}
            MoaEvent::Notice(n) => self.line(format!("notice: {n}")),
            MoaEvent::AggregateText(t) => {
                if self.stream {
                    let mut o = std::io::stdout();
                    let _ = o.write_all(t.as_bytes());
                    let _ = o.flush();
                }
            }
        }
    }

    fn line(&self, s: String) {
        if self.multi.is_hidden() {
            eprintln!("{s}");
        } else {
            let _ = self.multi.println(s);
        }
    }
}

/// Per-layer wall time, tokens and tok/s, then the aggregator's, on stderr.
pub fn summary(r: &MoaReport) {
    eprintln!("── MoA summary (seed {}) ──", r.seed);
    for l in &r.layers {
        let ok = l.answers.iter().filter(|a| a.error.is_none()).count();
        eprintln!(
            "layer {}: {}/{} proposers ok, {:.2}s wall, {} tokens, {:.1} tok/s aggregate",
            l.layer,
            ok,
            l.answers.len(),
            l.wall_secs,
            l.generated_tokens,
            l.tokens_per_sec
        );
    }
    let a = &r.aggregate;
    eprintln!(
        "aggregator {}: prompt {} tok, {} tokens, ttft {:.2}s, prefill {:.1} tok/s, decode {:.1} tok/s, {:.2}s wall",
        a.model, a.stats.prompt_tokens, a.stats.generated_tokens, a.stats.ttft_secs, a.stats.prefill_tps, a.stats.decode_tps, r.aggregate_wall_secs
    );
    let c = &r.critical_path;
    eprintln!(
        "critical path: last proposer done at {:.2}s, first aggregate token at {:.2}s ({:.2}s later; {} prompt tokens left to prefill{}); drafts {}/{} accepted",
        c.last_proposer_end_secs,
        c.aggregate_first_token_secs,
        c.wait_for_first_token_secs,
        c.aggregate_prefilled_after_proposers,
        c.early_prefill.as_ref().map_or(String::new(), |e| format!(", {} computed early", e.computed_tokens)),
        a.stats.accepted_tokens,
        a.stats.drafted_tokens
    );
    eprintln!("total {:.2}s", r.total_secs);
}
