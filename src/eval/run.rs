//! One evaluation run: the suite, the systems, the judge, the fixed question subset and the
//! output folder; dispatches to the suite and writes its summary. `Context` is what every suite
//! shares: the answer and judgment caches on one runtime, the settings, and progress reporting.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::eval::answers::{Answerer, Cache, Record};
use crate::eval::report::Summary;
use crate::eval::system::{file_safe, Kind, Settings, System};
use crate::model::Message;
use crate::runtime::Runtime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    IfEval,
    MtBench,
    Alpaca,
}

impl std::str::FromStr for Suite {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ifeval" => Ok(Suite::IfEval),
            "mt-bench" | "mtbench" => Ok(Suite::MtBench),
            "alpaca" | "alpaca-eval" => Ok(Suite::Alpaca),
            _ => Err(Error::InvalidRequest(format!("unknown suite `{s}` (suites: ifeval, mt-bench, alpaca)"))),
        }
    }
}

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::IfEval => "ifeval",
            Suite::MtBench => "mt-bench",
            Suite::Alpaca => "alpaca",
        }
    }
}

/// Progress of a run, for a bar with ETA.
pub enum Progress {
    /// A phase with `total` steps begins.
    Phase { name: String, total: usize },
    /// One step done (`cached`: it came from the cache).
    Step { label: String, cached: bool },
}

pub struct EvalOptions {
    pub suite: Suite,
    pub systems: Vec<System>,
    /// The judge model (MT-Bench and AlpacaEval need one).
    pub judge: Option<String>,
    /// Questions to use (a fixed, seeded subset; all when None).
    pub limit: Option<usize>,
    pub subset_seed: u64,
    /// MT-Bench turns to answer and judge (1 or 2).
    pub turns: usize,
    pub settings: Settings,
    /// The judge's longest verdict in tokens (it writes an explanation first).
    pub judge_max_tokens: usize,
    pub data: PathBuf,
    pub out: PathBuf,
    pub draft: bool,
}

pub struct Context<'a> {
    pub answerer: Answerer,
    pub answers: Cache,
    pub judgments: Cache,
    pub opts: &'a EvalOptions,
    pub progress: &'a (dyn Fn(Progress) + Sync),
}

impl Context<'_> {
    pub fn phase(&self, name: impl Into<String>, total: usize) {
        (self.progress)(Progress::Phase { name: name.into(), total });
    }

    /// `system`'s answer to `conv` (question number `index` of the suite: its seed).
    pub fn answer(&self, system: &System, item: &str, conv: &[Message], index: usize) -> Result<Record> {
        let key = self.answerer.key(system, conv, &self.opts.settings, self.opts.settings.seed.wrapping_add(index as u64))?;
        let cached = self.answers.get(&key).is_some();
        let r = self.answerer.answer(&self.answers, system, item, conv, &self.opts.settings, self.opts.settings.seed.wrapping_add(index as u64))?;
        if let Some(e) = &r.error {
            eprintln!("{}: {item}: generation failed (counted as an empty answer): {e}", system.name);
        }
        (self.progress)(Progress::Step { label: format!("{} {item}", system.name), cached });
        Ok(r)
    }

    /// The judge's greedy judgment of `conv`.
    pub fn judge(&self, item: &str, conv: &[Message]) -> Result<Record> {
        let judge = self.judge_system()?;
        let s = Settings { temperature: 0.0, max_tokens: self.opts.judge_max_tokens, seed: 0 };
        let cached = self.judgments.get(&self.answerer.key(&judge, conv, &s, 0)?).is_some();
        let r = self.answerer.answer(&self.judgments, &judge, item, conv, &s, 0)?;
        if let Some(e) = &r.error {
            eprintln!("judge {}: {item}: failed (left unjudged): {e}", judge.name);
        }
        (self.progress)(Progress::Step { label: format!("judge {item}"), cached });
        Ok(r)
    }

    pub fn judge_system(&self) -> Result<System> {
        let model = self.opts.judge.clone().ok_or_else(|| {
            Error::InvalidRequest(format!("the {} suite needs a judge model: --judge MODEL", self.opts.suite.name()))
        })?;
        Ok(System { name: file_safe(&model), spec: model.clone(), kind: Kind::Single { model } })
    }

    pub fn system_dir(&self, s: &System) -> PathBuf {
        self.opts.out.join(&s.name)
    }
}

/// Run the evaluation `opts` describes on `rt`; writes answers, judgments and the summary under
/// `opts.out` and returns the summary.
pub fn evaluate(rt: Arc<Runtime>, opts: &EvalOptions, progress: &(dyn Fn(Progress) + Sync)) -> Result<Summary> {
    if opts.limit == Some(0) {
        return Err(Error::InvalidRequest("--limit must be at least 1".into()));
    }
    if !(1..=2).contains(&opts.turns) {
        return Err(Error::InvalidRequest(format!("--turns must be 1 or 2, got {}", opts.turns)));
    }
    let mut answerer = Answerer::new(rt)?;
    answerer.draft = opts.draft;
    let cache = opts.out.join("cache");
    let ctx = Context {
        answerer,
        answers: Cache::open(&cache.join("answers.jsonl"))?,
        judgments: Cache::open(&cache.join("judgments.jsonl"))?,
        opts,
        progress,
    };
    if opts.suite != Suite::IfEval {
        ctx.judge_system()?;
    }
    let summary = match opts.suite {
        Suite::IfEval => crate::eval::ifeval_suite::run(&ctx)?,
        Suite::MtBench => crate::eval::mtbench::run(&ctx)?,
        Suite::Alpaca => crate::eval::alpaca::run(&ctx)?,
    };
    summary.write(&opts.out)?;
    Ok(summary)
}
