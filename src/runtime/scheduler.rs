//! Memory-aware placement: which models are resident when, and which generations run together.
//! Given the proposer layers (one job per sequence), the aggregator and a memory budget, it
//! packs each layer's jobs into waves that fit (first fit, in recipe order: deterministic),
//! keeps resident what the next wave needs, evicts least-recently-used models only when room is
//! needed, and loads the aggregator during the last wave when it fits. `moa-local plan` prints
//! this plan; a run executes exactly it.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::runtime::estimate::MemoryEstimate;

/// One sequence to generate: a model and the context it needs (prompt + new tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub model: String,
    pub context: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Wave {
    pub wave: usize,
    /// Indices of the layer's jobs that run together in this wave.
    pub jobs: Vec<usize>,
    pub load: Vec<String>,
    pub unload: Vec<String>,
    /// Planned peak bytes while this wave loads and runs.
    pub bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerPlan {
    pub layer: usize,
    pub waves: Vec<Wave>,
    /// Jobs of this layer (≥ 2) whose prompts are prefilled while the previous layer's last wave
    /// runs: they run in this layer's first wave on a model resident then, and their KV caches
    /// fit beside that wave.
    pub early_prefill: Vec<usize>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AggregatorPlan {
    pub model: String,
    /// Still resident from the last proposer layer: nothing to load.
    pub resident: bool,
    /// Loaded while the last proposer wave still runs (it fits beside it).
    pub preload: bool,
    /// Its prompt is prefilled while the last proposer wave runs (resident or preloaded, and its
    /// KV cache fits beside that wave): the references are appended as they arrive.
    pub early_prefill: bool,
    pub unload: Vec<String>,
    pub bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub device: String,
    pub budget: u64,
    pub layers: Vec<LayerPlan>,
    pub aggregator: AggregatorPlan,
    /// The highest planned peak of any step.
    pub peak: u64,
}

/// Estimates by model name, at the largest context any of its jobs needs.
pub type Estimates = BTreeMap<String, MemoryEstimate>;

struct Residency {
    /// name → last use tick.
    models: BTreeMap<String, u64>,
    tick: u64,
}

impl Residency {
    fn bytes(&self, est: &Estimates) -> u64 {
        self.models.keys().map(|m| est[m].resident()).sum()
    }

    /// Evict LRU models not in `keep` until `extra` more bytes fit under `budget`.
    fn make_room(&mut self, keep: &[&str], extra: u64, budget: u64, est: &Estimates) -> Vec<String> {
        let mut out = Vec::new();
        while self.bytes(est) + extra > budget {
            let victim = self
                .models
                .iter()
                .filter(|(m, _)| !keep.contains(&m.as_str()))
                .min_by_key(|(m, t)| (**t, (*m).clone()))
                .map(|(m, _)| m.clone());
            match victim {
                Some(v) => {
                    self.models.remove(&v);
                    out.push(v);
                }
                None => break,
            }
        }
        out
    }

    fn touch(&mut self, names: &[&str]) {
        self.tick += 1;
        for n in names {
            self.models.insert(n.to_string(), self.tick);
        }
    }
}

/// Bytes while `jobs` run together (their models resident, one KV cache per job, buffers per
/// model, the largest load transient among models not yet resident).
fn wave_bytes(jobs: &[&Job], est: &Estimates, resident: &Residency) -> u64 {
    let mut models: Vec<&str> = jobs.iter().map(|j| j.model.as_str()).collect();
    models.sort_unstable();
    models.dedup();
    let mut b: u64 = models.iter().map(|m| est[*m].resident() + est[*m].buffers).sum();
    b += jobs.iter().map(|j| est[&j.model].kv_per_sequence).sum::<u64>();
    b += models.iter().filter(|m| !resident.models.contains_key(**m)).map(|m| est[*m].load_transient).max().unwrap_or(0);
    b
}

fn too_large(model: &str, need: u64, budget: u64, device: &str) -> Error {
    Error::InvalidRequest(format!(
        "model {model} needs about {} (weights, KV cache, buffers) but the memory budget of {device} is {}; pass a larger --memory-budget or a smaller model / --max-tokens",
        human(need),
        human(budget)
    ))
}

pub fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// Build the plan. `est` must hold an estimate for every model named in `layers` and `aggregator`.
pub fn plan(layers: &[Vec<Job>], aggregator: &Job, est: &Estimates, budget: u64, device: &str) -> Result<Plan> {
    let mut res = Residency { models: BTreeMap::new(), tick: 0 };
    let mut out_layers = Vec::new();
    let mut peak = 0u64;
    for (li, jobs) in layers.iter().enumerate() {
        let before: Vec<String> = res.models.keys().cloned().collect();
        let prev_bytes = out_layers.last().and_then(|l: &LayerPlan| l.waves.last()).map(|w| w.bytes);
        let mut remaining: Vec<usize> = (0..jobs.len()).collect();
        let mut waves = Vec::new();
        while !remaining.is_empty() {
            let mut chosen: Vec<usize> = Vec::new();
            for &j in &remaining {
                let mut trial: Vec<&Job> = chosen.iter().map(|&c| &jobs[c]).collect();
                trial.push(&jobs[j]);
                let need = wave_bytes(&trial, est, &res);
                if need <= budget {
                    chosen.push(j);
                } else if chosen.is_empty() {
                    return Err(too_large(&jobs[j].model, need, budget, device));
                }
            }
            remaining.retain(|j| !chosen.contains(j));
            let wave_jobs: Vec<&Job> = chosen.iter().map(|&c| &jobs[c]).collect();
            let mut names: Vec<&str> = wave_jobs.iter().map(|j| j.model.as_str()).collect();
            names.dedup();
            let need = wave_bytes(&wave_jobs, est, &res);
            let in_wave_resident: u64 = names.iter().filter(|m| res.models.contains_key(**m)).map(|m| est[*m].resident()).sum();
            let unload = res.make_room(&names, need - in_wave_resident.min(need), budget, est);
            let mut load: Vec<String> = Vec::new();
            for n in &names {
                if !res.models.contains_key(*n) && !load.iter().any(|l| l == n) {
                    load.push(n.to_string());
                }
            }
            let bytes = need + res.bytes(est) - in_wave_resident.min(res.bytes(est));
            res.touch(&names);
            peak = peak.max(bytes);
            waves.push(Wave { wave: waves.len() + 1, jobs: chosen, load, unload, bytes });
        }
        let mut early_prefill = Vec::new();
        if let (Some(mut bytes), Some(first)) = (prev_bytes, waves.first()) {
            for &j in &first.jobs {
                let kv = est[&jobs[j].model].kv_per_sequence;
                if before.contains(&jobs[j].model) && bytes + kv <= budget {
                    bytes += kv;
                    early_prefill.push(j);
                }
            }
            peak = peak.max(bytes);
        }
        out_layers.push(LayerPlan { layer: li + 1, waves, early_prefill });
    }
    // The aggregator: preload during the last wave when it fits beside it.
    let agg = &aggregator.model;
    let agg_need = wave_bytes(&[aggregator], est, &res);
    if agg_need > budget {
        return Err(too_large(agg, agg_need, budget, device));
    }
    let last_bytes = out_layers.last().and_then(|l| l.waves.last()).map_or(0, |w| w.bytes);
    let resident_already = res.models.contains_key(agg);
    let preload = !resident_already && last_bytes + est[agg].resident() + est[agg].load_transient <= budget;
    // Early prefill: the aggregator's cache (and, preloaded, its weights) beside the last wave.
    let early_bytes = last_bytes + est[agg].kv_per_sequence + if preload { est[agg].resident() + est[agg].load_transient + est[agg].buffers } else { 0 };
    let early_prefill = (resident_already || preload) && early_bytes <= budget;
    if early_prefill {
        peak = peak.max(early_bytes);
    }
    let in_res = if resident_already { est[agg].resident() } else { 0 };
    let unload = if preload { Vec::new() } else { res.make_room(&[agg.as_str()], agg_need - in_res, budget, est) };
    res.touch(&[agg.as_str()]);
    let bytes = if preload { last_bytes + est[agg].resident() + est[agg].load_transient } else { res.bytes(est) - est[agg].resident() + agg_need };
    peak = peak.max(bytes);
    Ok(Plan {
        device: device.to_string(),
        budget,
        layers: out_layers,
        aggregator: AggregatorPlan { model: agg.clone(), resident: resident_already, preload, early_prefill, unload, bytes },
        peak,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(weights_mib: u64) -> MemoryEstimate {
        MemoryEstimate { weights: weights_mib << 20, load_transient: 0, tokenizer: 0, kv_per_sequence: 1 << 20, buffers: 0 }
    }

    fn job(m: &str) -> Job {
        Job { model: m.into(), context: 64 }
    }

    fn estimates() -> Estimates {
        [("a", est(500)), ("b", est(300)), ("c", est(300))].into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn everything_fits_in_one_wave_with_an_ample_budget() {
        let p = plan(&[vec![job("a"), job("b"), job("c")]], &job("a"), &estimates(), 8 << 30, "cpu").unwrap();
        assert_eq!(p.layers[0].waves.len(), 1);
        assert_eq!(p.layers[0].waves[0].load, vec!["a", "b", "c"]);
        assert!(p.aggregator.unload.is_empty() && !p.aggregator.preload, "a stays resident for the aggregator");
        assert!(p.aggregator.early_prefill, "and its prompt can be prefilled beside the proposers");
    }

    #[test]
    fn a_tight_budget_runs_in_waves_and_evicts_lru() {
        let budget = 700 << 20;
        let layers = vec![vec![job("a"), job("b"), job("c")], vec![job("a"), job("b")]];
        let p = plan(&layers, &job("b"), &estimates(), budget, "cpu").unwrap();
        let w = &p.layers[0].waves;
        assert_eq!(w.iter().map(|w| w.jobs.clone()).collect::<Vec<_>>(), vec![vec![0], vec![1, 2]]);
        assert_eq!(w[1].unload, vec!["a"]);
        assert!(p.peak <= budget, "peak {} > budget", p.peak);
        // Deterministic.
        let q = plan(&layers, &job("b"), &estimates(), budget, "cpu").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), serde_json::to_string(&q).unwrap());
    }

    #[test]
    fn early_prefill_only_where_the_aggregator_fits_beside_the_last_wave() {
        let roomy = plan(&[vec![job("a")]], &job("c"), &estimates(), 8 << 30, "cpu").unwrap();
        assert!(roomy.aggregator.preload && roomy.aggregator.early_prefill);
        assert!(roomy.peak >= (500 + 300 + 2) << 20, "both models and both caches are counted");
        let tight = plan(&[vec![job("a")]], &job("c"), &estimates(), 700 << 20, "cpu").unwrap();
        assert!(!tight.aggregator.preload && !tight.aggregator.early_prefill, "c loads after a is gone: it runs as before");
    }

    #[test]
    fn next_layer_prompts_are_prefilled_only_on_resident_models_with_room() {
        let layers = vec![vec![job("a"), job("b")], vec![job("a"), job("b"), job("c")]];
        let roomy = plan(&layers, &job("a"), &estimates(), 8 << 30, "cpu").unwrap();
        assert!(roomy.layers[0].early_prefill.is_empty(), "nothing runs before layer 1");
        assert_eq!(roomy.layers[1].early_prefill, vec![0, 1], "c is not resident during layer 1");
        // Room beside layer 1's wave for exactly one more cache.
        let budget = roomy.layers[0].waves[0].bytes + (1 << 20);
        let tight = plan(&layers, &job("a"), &estimates(), budget, "cpu").unwrap();
        assert_eq!(tight.layers[0].waves.len(), 1);
        assert_eq!(tight.layers[1].early_prefill, vec![0]);
        assert!(tight.peak <= budget);
    }

    #[test]
    fn a_model_larger_than_the_budget_is_a_clear_error() {
        let e = plan(&[vec![job("a")]], &job("a"), &estimates(), 100 << 20, "cpu").unwrap_err().to_string();
        assert!(e.contains("model a needs about") && e.contains("100 MiB"), "{e}");
    }
}
