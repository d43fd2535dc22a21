//! `moa-local perplexity`: perplexity of a model on a text file, chunked as llama-perplexity
//! does (same numbers on the same file and context), and with `--kl-divergence-base` the KL
//! divergence against the base logits llama-perplexity saved.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use moa_local::eval::perplexity::{perplexity, KlBase};
use moa_local::model::catalog::Catalog;
use moa_local::model::Model;
use moa_local::runtime::DeviceSpec;

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    /// The model: a catalog name or a .gguf path.
    #[arg(short = 'm', long = "model")]
    pub model: String,
    /// The text to score (llama-perplexity's -f). Not needed with --kl-divergence-base.
    #[arg(short = 'f', long = "file")]
    pub file: Option<std::path::PathBuf>,
    /// Tokens per chunk (llama-perplexity's -c); the second half of each chunk is scored.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many chunks (llama-perplexity's --chunks).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// A file written by `llama-perplexity --kl-divergence-base FILE`: score its tokens and report
    /// the KL divergence from its logits, top-1 agreement and both perplexities.
    #[arg(long)]
    pub kl_divergence_base: Option<std::path::PathBuf>,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PerplexityArgs) -> anyhow::Result<ExitCode> {
    if let Some(t) = a.threads {
        anyhow::ensure!(t > 0, "--threads must be at least 1");
        std::env::set_var("MOA_THREADS", t.to_string());
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let base = a.kl_divergence_base.as_deref().map(KlBase::read).transpose()?;
    let text = match (&a.file, &base) {
        (Some(f), _) => Some(std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?),
        (None, Some(_)) => None,
        (None, None) => anyhow::bail!("give the text with -f FILE (or a --kl-divergence-base file)"),
    };
    let device = a.device.parse::<DeviceSpec>()?.open()?;
    let path = Catalog::load()?.resolve(&a.model)?;
    let model = Model::load(&path, &device)?;
    let quiet = a.json;
    let r = perplexity(&model, text.as_deref(), a.ctx, a.chunks, base.as_ref(), &mut |c, n, ppl| {
        if !quiet {
            eprint!("\r[{c}/{n}] {ppl:.4}");
            if c == n {
                eprintln!();
            }
        }
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}: {} chunks of {} tokens, {} scored", path.display(), r.chunks, r.ctx, r.scored);
    println!("Final estimate: PPL = {:.4} +/- {:.5}", r.ppl, r.ppl_sd);
    if let Some(k) = &r.kld {
        println!("Mean PPL(base)  : {:.6}", k.ppl_base);
        println!("Mean    KLD     : {:.6}", k.mean_kld);
        println!("Maximum KLD     : {:.6}", k.max_kld);
        println!("99.0%   KLD     : {:.6}", k.p99_kld);
        println!("95.0%   KLD     : {:.6}", k.p95_kld);
        println!("Median  KLD     : {:.6}", k.median_kld);
        println!("RMS Δp          : {:.3} %", 100.0 * k.rms_dp);
        println!("Same top p      : {:.3} %", 100.0 * k.same_top);
    }
    Ok(ExitCode::SUCCESS)
}
