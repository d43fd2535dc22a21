//! Command-line interface (clap types stop here): `moa-local [OPTIONS] [PROMPT]` runs MoA;
//! subcommands run one model, tokenize, plan, bench, serve, eval and perplexity.

mod bench;
mod bench_moa;
mod eval;
mod generate;
mod moa_cmd;
mod perplexity;
mod progress;
mod serve;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "moa-local",
    version,
    about = "Mixture-of-Agents on local GGUF models, fully offline",
    args_conflicts_with_subcommands = true,
    after_help = "With no --models, the bundled test models (qwen-coder, smollm2) are used; fetch them with `bash models/fetch.sh`.\nWith no PROMPT on a terminal, starts an interactive multi-turn chat; otherwise reads the prompt from stdin."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub moa: MoaArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate with one model alone.
    Generate(generate::GenerateArgs),
    /// Print the token ids of TEXT as a JSON array (like llama-tokenize).
    Tokenize(generate::TokenizeArgs),
    /// Serve an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models, /health).
    Serve(serve::ServeArgs),
    /// Print the memory plan of a MoA run (same flags) without loading any weights.
    Plan(MoaArgs),
    /// Measure prefill/decode tokens per second (like llama-bench), or a whole MoA run.
    Bench(bench::BenchArgs),
    /// Evaluate models, MoA recipes and Self-MoA on IFEval, MT-Bench or AlpacaEval, offline.
    Eval(eval::EvalArgs),
    /// Perplexity on a text file, chunked like llama-perplexity; KL divergence against its
    /// --kl-divergence-base logits.
    Perplexity(perplexity::PerplexityArgs),
}

/// Options of a MoA run (also used by `plan`, `bench` and `serve`).
#[derive(Args, Debug, Clone, Default)]
pub struct MoaArgs {
    /// The user prompt (read from stdin when absent and stdin is not a terminal).
    pub prompt: Option<String>,
    /// Proposer models, comma separated: catalog names or .gguf paths; a name may repeat
    /// (`qwen,qwen,qwen` = three samples of one model with different seeds).
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// The final aggregator model (default: the first proposer).
    #[arg(long)]
    pub aggregator: Option<String>,
    /// Total layers: proposer layers + the aggregator (default 2).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Sampling temperature for every agent (0 = greedy; default 0.7).
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Maximum new tokens per agent (default 512).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Base seed; agent i of layer l uses seed + (l << 20 | i). Random when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// A system prompt for the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Replace the aggregate-and-synthesize instruction.
    #[arg(long)]
    pub instruction: Option<String>,
    /// Device: cpu, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print each proposer's answer, labelled, before the aggregate.
    #[arg(long)]
    pub show_proposals: bool,
    /// Print one JSON document with every layer's answers, token counts, timings and models.
    #[arg(long)]
    pub json: bool,
    /// A TOML recipe (layers, aggregator, per-model settings); flags override it.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Memory the scheduler may use on the device (e.g. 6GiB, 800MiB); default: 90% of the
    /// device's free memory.
    #[arg(long)]
    pub memory_budget: Option<String>,
    /// Decode one token per step: no drafts looked up in the references and the output (the
    /// text is the same at temperature 0 either way).
    #[arg(long)]
    pub no_draft: bool,
    /// Number references in the order the proposers `finish` (default) or in `recipe` order
    /// (bit-reproducible seeded runs).
    #[arg(long, default_value = "finish")]
    pub reference_order: moa_local::moa::staircase::ReferenceOrder,
    /// Prefill the aggregator only after the last proposer ends (not as its references arrive).
    #[arg(long)]
    pub no_early_prefill: bool,
}

impl MoaArgs {
    /// The run options these flags ask for.
    pub fn run_options(&self, seed: u64) -> moa_local::moa::RunOptions {
        moa_local::moa::RunOptions {
            seed,
            checksums: self.json,
            cancel: None,
            draft: !self.no_draft,
            reference_order: self.reference_order,
            early_prefill: !self.no_early_prefill,
        }
    }
}

pub fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Generate(a)) => generate::generate(a),
        Some(Command::Tokenize(a)) => generate::tokenize(a),
        Some(Command::Serve(a)) => serve::serve(a),
        Some(Command::Plan(a)) => moa_cmd::plan(a),
        Some(Command::Bench(a)) => bench::bench(a),
        Some(Command::Eval(a)) => eval::eval(a),
        Some(Command::Perplexity(a)) => perplexity::run(a),
        None => moa_cmd::run(cli.moa),
    }
}
