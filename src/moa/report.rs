//! What a MoA run tells its caller: live events while it runs (for progress displays and
//! streaming) and the final report (the `--json` document).

use std::sync::Arc;

use crate::model::StopReason;
use crate::runtime::scheduler::Plan;
use crate::moa::staircase::ReferenceOrder;
use crate::runtime::prefill::PrefillLog;
use crate::runtime::LoadedInfo;

/// Layer numbers count from 1; the aggregator's layer is `proposer layers + 1`.
#[derive(Debug, Clone)]
pub enum MoaEvent {
    Loading { model: String },
    Loaded { model: String, secs: f64 },
    LoadFailed { model: String, error: String },
    AgentStarted { layer: usize, index: usize, model: String },
    AgentProgress { layer: usize, index: usize, pieces: usize, secs: f64 },
    AgentFinished { layer: usize, index: usize, model: String, text: String, outcome: Result<AgentStats, String> },
    LayerFinished { layer: usize, wall_secs: f64, tokens: usize },
    Notice(String),
    /// A piece of the aggregator's answer, in order.
    AggregateText(String),
}

pub type EventSink = Arc<dyn Fn(MoaEvent) + Send + Sync>;

pub fn no_events() -> EventSink {
    Arc::new(|_| {})
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AgentStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub ttft_secs: f64,
    pub prefill_tps: f64,
    pub decode_tps: f64,
    /// Seconds since the start of the run when this generation started and ended.
    pub start_secs: f64,
    pub end_secs: f64,
    /// CPU kernel threads it started with (its share of the cores beside concurrent agents).
    pub threads: usize,
    /// Prompt tokens computed by the generation itself (fewer than the prompt when a prefix was
    /// prefilled early).
    pub prefilled_tokens: usize,
    /// Tokens drafted from the context and verified, and how many were accepted.
    pub drafted_tokens: usize,
    pub accepted_tokens: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentAnswer {
    pub layer: usize,
    pub index: usize,
    /// The scheduler's wave within the layer (1-based; 0 when the agent never ran).
    pub wave: usize,
    pub model: String,
    pub seed: u64,
    pub temperature: f32,
    pub max_tokens: usize,
    /// The answer; empty when the agent failed.
    pub text: String,
    pub stop_reason: Option<StopReason>,
    pub stats: AgentStats,
    /// The rendered prompt the model saw (shows the injected references).
    pub prompt: String,
    pub error: Option<String>,
    /// Its answer's number among the references the next layer saw (1-based; None when it
    /// failed).
    pub reference: Option<usize>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerReport {
    pub layer: usize,
    pub wall_secs: f64,
    pub generated_tokens: usize,
    pub tokens_per_sec: f64,
    pub answers: Vec<AgentAnswer>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelReport {
    #[serde(flatten)]
    pub info: LoadedInfo,
    pub alias: String,
    pub sha256: Option<String>,
    /// Every time the run loaded this model (a model evicted between waves loads again).
    pub loads: Vec<LoadRecord>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadRecord {
    pub layer: usize,
    pub wave: usize,
    pub start_secs: f64,
    pub secs: f64,
}

/// The run's critical path: from the last proposer's end to the aggregator's first token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CriticalPath {
    /// Seconds since the start of the run.
    pub last_proposer_end_secs: f64,
    pub aggregate_first_token_secs: f64,
    /// The user's wait between them.
    pub wait_for_first_token_secs: f64,
    /// Aggregator prompt tokens still to compute when its generation started.
    pub aggregate_prefilled_after_proposers: usize,
    /// What the early prefill did (None when it did not run).
    pub early_prefill: Option<PrefillLog>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MoaReport {
    pub seed: u64,
    /// How references were numbered (finish or recipe order).
    pub reference_order: ReferenceOrder,
    /// The memory plan the run executed (waves, loads, unloads, planned bytes).
    pub plan: Plan,
    /// Peak resident memory of this process so far (Linux VmHWM).
    pub peak_rss_bytes: Option<u64>,
    pub layers: Vec<LayerReport>,
    pub aggregate: AgentAnswer,
    pub aggregate_wall_secs: f64,
    pub critical_path: CriticalPath,
    pub models: Vec<ModelReport>,
    pub notices: Vec<String>,
    pub total_secs: f64,
}
