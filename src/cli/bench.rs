//! `moa-local bench`: llama-bench-like pp/tg throughput per model (real or synthetic GGUF), and
//! a MoA bench (per-layer wall time, aggregate tok/s, time to the aggregator's first token,
//! peak memory). Markdown by default, JSON with --json.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use moa_local::bench::{bench_pp, bench_tg, bench_tg_paired, largest_kv_bytes, markdown, MemoryAfterLoad, ModelBench};
use moa_local::runtime::estimate;
use moa_local::model::catalog::Catalog;
use moa_local::model::synthetic::{write_synthetic, SyntheticSpec};
use moa_local::model::network::Backend;
use moa_local::model::Model;
use moa_local::runtime::DeviceSpec;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Models to bench (repeatable; catalog names or .gguf paths). Default: qwen-coder, smollm2.
    #[arg(short = 'm', long = "model")]
    pub models: Vec<String>,
    /// Bench a random-weight GGUF with a real architecture's shapes, written by moa-local:
    /// ARCH:SIZE:QUANT, e.g. qwen2:7b:q4_k_m, llama:7b:q4_k_m (repeatable).
    #[arg(long)]
    pub synthetic: Vec<String>,
    /// Keep the synthetic files in this directory (as ARCH-SIZE-QUANT.gguf) and reuse them when
    /// present, e.g. to run llama-bench on the same files (default: a temporary directory).
    #[arg(long)]
    pub synthetic_dir: Option<std::path::PathBuf>,
    /// Prompt tokens for the prefill test (0 skips it).
    #[arg(short = 'p', long, default_value_t = 128)]
    pub pp: usize,
    /// Generated tokens for the decode test (0 skips it).
    #[arg(short = 'n', long, default_value_t = 64)]
    pub tg: usize,
    /// Repetitions (after one warm-up).
    #[arg(short = 'r', long, default_value_t = 5)]
    pub reps: usize,
    /// Also decode this many sequences together (batched forward; aggregate tok/s), e.g. 4; each
    /// batched run is paired with a single-sequence run and the gain is reported per pair.
    #[arg(short = 'b', long)]
    pub batch: Option<usize>,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
    /// Run the MoA bench instead: these proposers (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub moa: Option<Vec<String>>,
    /// MoA bench: total layers.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// MoA bench: max tokens per agent.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// MoA bench: the aggregator (default: the first proposer).
    #[arg(long)]
    pub aggregator: Option<String>,
    /// MoA bench: sampling temperature of every agent (0: greedy, and the texts of the modes
    /// that must agree are compared).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// MoA bench: the user prompt.
    #[arg(long, default_value = "Explain how a hash map works and when to use one.")]
    pub prompt: String,
}

pub fn bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(t) = a.threads {
        anyhow::ensure!(t > 0, "--threads must be at least 1");
        // Before any thread pool starts.
        std::env::set_var("MOA_THREADS", t.to_string());
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let spec: DeviceSpec = a.device.parse()?;
    if let Some(models) = &a.moa {
        return super::bench_moa::moa_bench(&a, models, spec);
    }
    let device = spec.open()?;
    let catalog = Catalog::load()?;
    let tmp = tempfile_dir()?;
    let mut files: Vec<(String, std::path::PathBuf, bool)> = Vec::new();
    let names = if a.models.is_empty() && a.synthetic.is_empty() { vec!["qwen-coder".into(), "smollm2".into()] } else { a.models.clone() };
    for m in names {
        files.push((m.clone(), catalog.resolve(&m)?, false));
    }
    let dir = a.synthetic_dir.as_deref().unwrap_or(&tmp);
    if !a.synthetic.is_empty() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating --synthetic-dir {}", dir.display()))?;
    }
    for s in &a.synthetic {
        let sp = SyntheticSpec::parse(s)?;
        let path = dir.join(format!("{}.gguf", s.to_lowercase().replace(':', "-")));
        if a.synthetic_dir.is_some() && path.exists() {
            eprintln!("using synthetic {s} (random weights) at {}", path.display());
        } else {
            eprintln!("writing synthetic {s} (random weights) to {}…", path.display());
            let t0 = std::time::Instant::now();
            write_synthetic(&sp, &path, 1)?;
            eprintln!("  written in {:.1}s", t0.elapsed().as_secs_f64());
        }
        files.push((s.clone(), path, true));
    }
    let mut rows = Vec::new();
    for (name, path, synthetic) in files {
        let rss_before_load = estimate::rss_bytes();
        let load_tracked = device.is_cpu() && estimate::reset_peak_rss();
        let model = Model::load(&path, &device)?;
        let rss_after_load = estimate::rss_bytes();
        let load_peak = estimate::peak_rss_bytes().filter(|_| load_tracked);
        let peak_tracked = device.is_cpu() && estimate::reset_peak_rss();
        let mut results = Vec::new();
        let mut batch_gain = None;
        if a.pp > 0 {
            results.push(bench_pp(&model, a.pp, a.reps)?);
        }
        if a.tg > 0 {
            match a.batch.filter(|&b| b > 1) {
                Some(b) => {
                    let (one, many, gain) = bench_tg_paired(&model, a.tg, b, a.reps)?;
                    results.extend([one, many]);
                    batch_gain = Some(gain);
                }
                None => results.push(bench_tg(&model, a.tg, a.reps)?),
            }
        }
        let kv_bytes = largest_kv_bytes(&model, a.pp, a.tg, a.batch.unwrap_or(1));
        let memory = match (rss_before_load, rss_after_load, load_peak, estimate::peak_rss_bytes()) {
            (Some(before), Some(after), Some(load_peak), Some(peak)) if peak_tracked => Some(MemoryAfterLoad {
                rss_before_load_bytes: before,
                rss_after_load_bytes: after,
                load_peak_rss_bytes: load_peak,
                code_bytes: estimate::file_rss_bytes().unwrap_or(0),
                peak_rss_bytes: peak,
                kv_bytes,
                file_bytes: model.file_size,
                ratio: peak as f64 / (model.file_size + kv_bytes) as f64,
                model_ratio: peak.saturating_sub(before) as f64 / (model.file_size + kv_bytes) as f64,
            }),
            _ => None,
        };
        let name = match model.transformer.backend() {
            Backend::Native => name,
            b => format!("{name} [{}]", b.label()),
        };
        rows.push(ModelBench {
            model: name,
            file: path.display().to_string(),
            arch: format!("{:?}", model.cfg().arch).to_lowercase(),
            file_bytes: model.file_size,
            active_bytes: model.cfg().moe.as_ref().map(|_| model.transformer.active_bytes()),
            device: spec.to_string(),
            threads,
            synthetic,
            results,
            batch_gain,
            memory,
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", markdown(&rows));
        for r in &rows {
            if let Some(g) = &r.batch_gain {
                println!(
                    "\nbatched decode: {}: {} sequences in one forward = {:.2} ± {:.2} x one sequence's tok/s ({} back-to-back pairs)",
                    r.model,
                    g.batch,
                    g.mean,
                    g.sd,
                    g.samples.len()
                );
            }
        }
        // Where a pass's time goes, where work is queued on a device (on the CPU fast path the
        // host part is the whole compute).
        if !device.is_cpu() || moa_local::model::transformer::generic_ops_requested() {
            for r in &rows {
                for (t, p) in r.results.iter().filter_map(|t| t.pass_times.as_ref().map(|p| (t, p))) {
                    println!("\n{} {}: {}", r.model, t.test, p.describe());
                }
            }
        }
        let mem: Vec<String> = rows.iter().filter_map(|r| r.memory.as_ref().map(|m| m.line(&r.model))).collect();
        if !mem.is_empty() {
            println!("\nmemory (CPU): {}", mem.join("; "));
        }
        if rows.iter().any(|r| r.synthetic) {
            println!("\nSynthetic rows use random weights with the real architecture's shapes: timings are true for dense models, outputs are meaningless.");
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("moa-local-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
