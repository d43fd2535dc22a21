//! Throughput measurement like llama-bench: `pp` = prefill N prompt tokens in one pass, `tg` =
//! generate N tokens one at a time, repeated R times, mean ± sd tokens/s; batched against
//! single-sequence decode in back-to-back pairs; plus a MoA bench (per layer wall time, aggregate
//! tok/s, time to the aggregator's first token, peak memory).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::{Forward, KvCache};
use crate::error::Result;
use crate::model::transformer::PassTimes;
use crate::model::Model;

#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    /// `pp128`, `tg64`, …
    pub test: String,
    pub tokens: usize,
    pub samples_tps: Vec<f64>,
    pub mean_tps: f64,
    pub sd_tps: f64,
    /// Per pass of the timed runs: host time building and issuing it against the wait for the
    /// device (see `Transformer::pass_times`; meaningful on a GPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_times: Option<PassTimes>,
}

/// Mean and sample standard deviation.
fn mean_sd(samples: &[f64]) -> (f64, f64) {
    let n = samples.len().max(1) as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn stats(test: String, tokens: usize, samples: Vec<f64>) -> TestResult {
    let (mean_tps, sd_tps) = mean_sd(&samples);
    TestResult { test, tokens, mean_tps, sd_tps, samples_tps: samples, pass_times: None }
}

/// Deterministic pseudo-random token ids (llama-bench also feeds random tokens).
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab.min(32000) as u64) as u32 + 1
        })
        .collect()
}

fn cache(model: &Model, cap: usize) -> Result<KvCache> {
    model.transformer.new_cache(cap)
}

/// The largest KV cache the tests allocate: pp `pp`, tg `tg`, or `batch` caches of tg `tg`.
pub fn largest_kv_bytes(model: &Model, pp: usize, tg: usize, batch: usize) -> u64 {
    let c = model.cfg();
    let kv = |cap: usize| KvCache::bytes_for(c.n_layer, c.n_kv_head, c.head_dim, cap);
    kv(pp).max(kv(tg) * batch.max(1) as u64)
}

/// Tokens per second of `reps` timed runs after one warm-up; `run` sets up untimed and returns
/// the duration of its timed part.
/// The model's pass clock restarts after the warm-up, so that what it reads next covers the timed runs.
fn sample(model: &Model, reps: usize, tokens: usize, mut run: impl FnMut() -> Result<Duration>) -> Result<Vec<f64>> {
    run()?;
    model.transformer.pass_times();
    (0..reps).map(|_| Ok(tokens as f64 / run()?.as_secs_f64())).collect()
}

/// Prefill `n` tokens in one forward, `reps` times (after one warm-up).
pub fn bench_pp(model: &Model, n: usize, reps: usize) -> Result<TestResult> {
    let toks = tokens(n, model.cfg().vocab_size, 1);
    let samples = sample(model, reps, n, || {
        let mut c = cache(model, n)?;
        let t = Instant::now();
        model.transformer.forward(&toks, &mut c)?;
        Ok(t.elapsed())
    })?;
    Ok(TestResult { pass_times: model.transformer.pass_times(), ..stats(format!("pp{n}"), n, samples) })
}

/// One timed run of `toks` generated one at a time from an empty cache.
fn tg_run(model: &Model, toks: &[u32]) -> Result<Duration> {
    let mut c = cache(model, toks.len())?;
    let t = Instant::now();
    for tok in toks {
        model.transformer.forward(std::slice::from_ref(tok), &mut c)?;
    }
    Ok(t.elapsed())
}

/// One timed run of `batch` sequences decoding `toks`, one batched forward per step.
fn tg_batch_run(model: &Model, toks: &[u32], batch: usize) -> Result<Duration> {
    let mut caches = (0..batch).map(|_| cache(model, toks.len())).collect::<Result<Vec<_>>>()?;
    let t = Instant::now();
    for tok in toks {
        let one = [*tok];
        let mut segs: Vec<(&[u32], &mut KvCache)> = caches.iter_mut().map(|c| (&one[..], c)).collect();
        model.transformer.forward_batch(&mut segs)?;
    }
    Ok(t.elapsed())
}

/// Generate `n` tokens one at a time from an empty cache, `reps` times (after one warm-up).
pub fn bench_tg(model: &Model, n: usize, reps: usize) -> Result<TestResult> {
    let toks = tokens(n, model.cfg().vocab_size, 2);
    let samples = sample(model, reps, n, || tg_run(model, &toks))?;
    Ok(TestResult { pass_times: model.transformer.pass_times(), ..stats(format!("tg{n}"), n, samples) })
}

/// What decoding `batch` sequences in one forward gains over one sequence: aggregate tok/s over
/// single-sequence tok/s, from runs measured back to back in pairs.
#[derive(Debug, Clone, Serialize)]
pub struct BatchGain {
    pub batch: usize,
    /// One ratio per pair of runs.
    pub samples: Vec<f64>,
    pub mean: f64,
    pub sd: f64,
}

/// Single-sequence decode (`tg{n}`) and `batch` sequences decoded together (`tg{n} x{batch}`,
/// aggregate tok/s; MoA samples of one model), measured in back-to-back pairs whose order
/// alternates, so a slow phase of a shared machine weighs on both sides of the gain alike.
pub fn bench_tg_paired(model: &Model, n: usize, batch: usize, reps: usize) -> Result<(TestResult, TestResult, BatchGain)> {
    let toks = tokens(n, model.cfg().vocab_size, 2);
    tg_run(model, &toks)?;
    tg_batch_run(model, &toks, batch)?;
    let single = || tg_run(model, &toks).map(|d| n as f64 / d.as_secs_f64());
    let batched = || tg_batch_run(model, &toks, batch).map(|d| (n * batch) as f64 / d.as_secs_f64());
    let (mut one, mut many) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for rep in 0..reps {
        let (a, b) = if rep % 2 == 0 {
            (single()?, batched()?)
        } else {
            let b = batched()?;
            (single()?, b)
        };
        one.push(a);
        many.push(b);
    }
    let ratios: Vec<f64> = many.iter().zip(&one).map(|(b, a)| b / a).collect();
    let (mean, sd) = mean_sd(&ratios);
    let gain = BatchGain { batch, samples: ratios, mean, sd };
    Ok((stats(format!("tg{n}"), n, one), stats(format!("tg{n} x{batch}"), n * batch, many), gain))
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelBench {
    pub model: String,
    pub file: String,
    pub arch: String,
    pub file_bytes: u64,
    /// A mixture of experts: the weight bytes one decoded token reads (the picked experts only).
    pub active_bytes: Option<u64>,
    pub device: String,
    pub threads: usize,
    pub synthetic: bool,
    pub results: Vec<TestResult>,
    /// With `--batch`: the paired gain of batched over single-sequence decode.
    pub batch_gain: Option<BatchGain>,
    pub memory: Option<MemoryAfterLoad>,
}

/// Resident memory once the model is loaded, against the GGUF file plus the KV cache the tests
/// used (the target is a ratio ≤ 1.1: weights stay quantized, no f32 copies).
#[derive(Debug, Clone, Serialize)]
pub struct MemoryAfterLoad {
    /// VmRSS before loading: the executable, its libraries and threads.
    pub rss_before_load_bytes: u64,
    /// VmRSS right after loading.
    pub rss_after_load_bytes: u64,
    /// VmHWM over the load itself (header, tokenizer, weights).
    pub load_peak_rss_bytes: u64,
    /// VmHWM over the tests, counted from the end of loading.
    pub peak_rss_bytes: u64,
    /// File-backed resident pages after the tests (code of the executable and its libraries).
    pub code_bytes: u64,
    /// The largest KV cache a test allocated.
    pub kv_bytes: u64,
    /// The GGUF file's size.
    pub file_bytes: u64,
    /// `peak_rss_bytes / (file_bytes + kv_bytes)`: the whole process.
    pub ratio: f64,
    /// `(peak_rss_bytes - rss_before_load_bytes) / (file_bytes + kv_bytes)`: what the model adds.
    pub model_ratio: f64,
}

impl MemoryAfterLoad {
    pub fn line(&self, model: &str) -> String {
        format!(
            "{model}: resident before load {:.1} MiB, peak while loading {:.1} MiB, after load {:.1} MiB, peak during the tests {:.1} MiB (code pages {:.1} MiB) = {:.3} x (GGUF {:.1} MiB + KV cache {:.1} MiB); the model's part {:.3} x",
            self.rss_before_load_bytes as f64 / 1048576.0,
            self.load_peak_rss_bytes as f64 / 1048576.0,
            self.rss_after_load_bytes as f64 / 1048576.0,
            self.peak_rss_bytes as f64 / 1048576.0,
            self.code_bytes as f64 / 1048576.0,
            self.ratio,
            self.file_bytes as f64 / 1048576.0,
            self.kv_bytes as f64 / 1048576.0,
            self.model_ratio
        )
    }
}

/// llama-bench style markdown table.
pub fn markdown(rows: &[ModelBench]) -> String {
    let mut s = String::from("| model | size | device | threads | test | t/s |\n|---|---:|---|---:|---|---:|\n");
    for b in rows {
        for r in &b.results {
            s.push_str(&format!(
                "| {}{} | {:.2} MiB{} | {} | {} | {} | {:.2} ± {:.2} |\n",
                b.model,
                if b.synthetic { " (random weights)" } else { "" },
                b.file_bytes as f64 / 1048576.0,
                b.active_bytes.map_or(String::new(), |a| format!(" ({:.2} MiB active)", a as f64 / 1048576.0)),
                b.device,
                b.threads,
                r.test,
                r.mean_tps,
                r.sd_tps
            ));
        }
    }
    s
}
