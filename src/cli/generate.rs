//! `moa-local generate` (one model alone, streamed) and `moa-local tokenize`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use moa_local::engine::{Control, SamplingParams};
use moa_local::model::catalog::Catalog;
use moa_local::model::{GenerateRequest, Message, Model, Prompt};
use moa_local::runtime::estimate::{peak_rss_bytes, ModelShape};
use moa_local::runtime::DeviceSpec;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model: a catalog name or a .gguf path.
    #[arg(long, short)]
    pub model: String,
    /// Skip the chat template: tokenize PROMPT as is.
    #[arg(long)]
    pub raw: bool,
    #[arg(long, default_value_t = 0.7, allow_negative_numbers = true)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Random when absent (printed in --json output).
    #[arg(long)]
    pub seed: Option<u64>,
    /// System prompt (chat mode only).
    #[arg(long)]
    pub system: Option<String>,
    /// Stop when this string is generated (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Context length to enforce (default: the model's own).
    #[arg(long)]
    pub ctx_size: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print prompt ids, generated ids, text and timings as JSON.
    #[arg(long)]
    pub json: bool,
    /// Decode one token per step: no drafts looked up in the prompt and output (the tokens are
    /// the same at temperature 0 either way).
    #[arg(long)]
    pub no_draft: bool,
    pub prompt: String,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[arg(long, short)]
    pub model: String,
    /// Do not add BOS even if the model asks for it.
    #[arg(long)]
    pub no_bos: bool,
    pub text: String,
}

pub fn random_seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0) % 1_000_000_007
}

pub fn generate(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let spec: DeviceSpec = a.device.parse()?;
    let path = Catalog::load()?.resolve(&a.model)?;
    // Read before the weights load: parsing the header again beside them (the vocabulary
    // arrays, 30 MiB for Gemma's 262k tokens) would add to the peak the report measures.
    let shape = if a.json { Some(ModelShape::read(&path)?) } else { None };
    let model = Model::load(&path, &spec.open()?)?;
    let seed = a.seed.unwrap_or_else(random_seed);
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        seed,
        ..SamplingParams::default()
    };
    let prompt = if a.raw {
        Prompt::Raw(a.prompt.clone())
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message { role: "system".into(), content: s.clone() });
        }
        msgs.push(Message { role: "user".into(), content: a.prompt.clone() });
        Prompt::Chat(msgs)
    };
    let mut req = GenerateRequest::new(prompt, a.max_tokens, sampling);
    req.stop = a.stop.clone();
    req.context_length = a.ctx_size;
    if a.no_draft {
        req.max_draft = 0;
    }
    let json = a.json;
    let mut out = std::io::stdout();
    let g = model.generate(&req, &mut |piece| {
        if !json {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
        Control::Continue
    })?;
    let s = &g.stats;
    if let Some(shape) = shape {
        let est = shape.estimate(g.prompt_ids.len() + a.max_tokens, model.transformer.device().is_cpu());
        let doc = serde_json::json!({
            "model": model.name,
            "file": model.path,
            "seed": seed,
            "prompt": g.prompt_text,
            "prompt_ids": g.prompt_ids,
            "generated_ids": g.ids,
            "text": g.text,
            "stop_reason": g.stop_reason,
            "timings": {
                "prompt_tokens": s.prompt_tokens,
                "generated_tokens": s.generated_tokens,
                "ttft_secs": s.ttft_secs,
                "prefill_tps": s.prefill_tps(),
                "decode_tps": s.decode_tps(),
                "drafted_tokens": s.drafted_tokens,
                "accepted_tokens": s.accepted_tokens,
                "decode_passes": s.decode_passes,
                "load_secs": model.load_secs,
            },
            "memory": {
                "estimated_peak_bytes": est.peak(1),
                "estimate": est,
                "peak_rss_bytes": peak_rss_bytes(),
            }
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!();
        eprintln!(
            "[{}] prompt {} tok, generated {} tok, ttft {:.2}s, prefill {:.1} tok/s, decode {:.1} tok/s (drafted {}, accepted {}), stop: {:?}",
            model.name,
            s.prompt_tokens,
            s.generated_tokens,
            s.ttft_secs,
            s.prefill_tps(),
            s.decode_tps(),
            s.drafted_tokens,
            s.accepted_tokens,
            g.stop_reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn tokenize(a: TokenizeArgs) -> anyhow::Result<ExitCode> {
    let path = Catalog::load()?.resolve(&a.model)?;
    let g = moa_local::model::gguf::GgufFile::open(&path)?;
    let tok = moa_local::model::tokenizer::GgufTokenizer::from_gguf(&g).context("building the tokenizer")?;
    let ids = tok.encode(&a.text, !a.no_bos)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(ExitCode::SUCCESS)
}
