//! `moa-local eval`: does a recipe beat the best single model, on this machine? Runs a suite
//! (IFEval, MT-Bench, AlpacaEval-style) offline over models, MoA recipes and Self-MoA, with a
//! progress bar, and prints the table with bootstrap intervals.

use std::process::ExitCode;
use std::sync::Mutex;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use moa_local::eval::run::{evaluate, EvalOptions, Progress, Suite};
use moa_local::eval::system::{parse_all, Settings};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// ifeval (scored by code), mt-bench (1–10 by the judge) or alpaca (pairwise against GPT-4's
    /// outputs, both orders).
    #[arg(long)]
    pub suite: String,
    /// Systems to compare, comma separated: a model (`qwen-coder`, `a.gguf`), `moa:A+B>AGG[:LAYERS]`,
    /// `self-moa:MODEL:N`, a recipe file `r.toml[#NAME]`; `LABEL=` before any names it.
    #[arg(long, value_delimiter = ',', required = true)]
    pub systems: Vec<String>,
    /// The judge model (mt-bench, alpaca).
    #[arg(long)]
    pub judge: Option<String>,
    /// Use this many questions: a fixed subset chosen by --subset-seed (MT-Bench: spread over its
    /// 8 categories). Default: all.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub subset_seed: u64,
    /// Output folder: answers (FastChat, AlpacaEval and IFEval formats), judgments, the cache that
    /// lets a run resume, and `<suite>_summary.{json,md}`.
    #[arg(long, default_value = "eval-out")]
    pub out: std::path::PathBuf,
    /// The suites' data (fetched by `bash benches/eval/fetch.sh`). Default: models/eval or
    /// $MOA_EVAL_DATA.
    #[arg(long)]
    pub data: Option<std::path::PathBuf>,
    /// Sampling temperature of every agent of every system.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Maximum new tokens of every agent.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Question i is answered with seed SEED + i.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// MT-Bench turns to answer and judge (1 or 2).
    #[arg(long, default_value_t = 2)]
    pub turns: usize,
    /// The judge's longest judgment in tokens (it explains before it rates).
    #[arg(long, default_value_t = 512)]
    pub judge_max_tokens: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Memory the scheduler may use (e.g. 6GiB); default: 90% of free memory.
    #[arg(long)]
    pub memory_budget: Option<String>,
    /// Decode one token per step (no drafts; same text at temperature 0).
    #[arg(long)]
    pub no_draft: bool,
    /// Print the summary as JSON instead of the Markdown table.
    #[arg(long)]
    pub json: bool,
}

pub fn eval(a: EvalArgs) -> anyhow::Result<ExitCode> {
    let suite: Suite = a.suite.parse()?;
    let settings = Settings { temperature: a.temperature, max_tokens: a.max_tokens, seed: a.seed };
    let systems = parse_all(&a.systems, &settings)?;
    let opts = EvalOptions {
        suite,
        systems,
        judge: a.judge.clone(),
        limit: a.limit,
        subset_seed: a.subset_seed,
        turns: a.turns,
        settings,
        judge_max_tokens: a.judge_max_tokens,
        data: a.data.clone().unwrap_or_else(moa_local::eval::data::default_dir),
        out: a.out.clone(),
        draft: !a.no_draft,
    };
    let moa_args = super::MoaArgs { device: a.device.clone(), memory_budget: a.memory_budget.clone(), ..Default::default() };
    let rt = super::moa_cmd::runtime(&moa_args)?;
    let bar = Mutex::new(None::<ProgressBar>);
    let style = ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} (ETA {eta}) {prefix}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let progress = move |p: Progress| {
        let mut b = bar.lock().unwrap_or_else(|p| p.into_inner());
        match p {
            Progress::Phase { name, total } => {
                if let Some(old) = b.take() {
                    old.finish();
                }
                let pb = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
                pb.set_style(style.clone());
                pb.set_message(name);
                *b = Some(pb);
            }
            Progress::Step { label, cached } => {
                if let Some(pb) = b.as_ref() {
                    pb.set_prefix(format!("{label}{}", if cached { " (cached)" } else { "" }));
                    // Cached steps take no time: leave them out of the ETA's rate.
                    if cached {
                        pb.set_length(pb.length().unwrap_or(1).saturating_sub(1));
                    } else {
                        pb.inc(1);
                    }
                }
            }
        }
    };
    let summary = evaluate(rt, &opts, &progress)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{}", summary.markdown());
        eprintln!("answers, judgments and the summary are in {}", a.out.display());
    }
    Ok(ExitCode::SUCCESS)
}
