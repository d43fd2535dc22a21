//! The evaluation's result: per system and metric a score with its bootstrap interval, the paired
//! difference against the best single model on the same questions, answer lengths and times;
//! written as `summary.json` and a Markdown table (`summary.md`, also printed).

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};
use crate::eval::stats::{estimate, paired_difference, Estimate, Item};
use crate::eval::system::{Settings, System};

/// What one system scored, question by question (the same questions, in the same order, for
/// every system of a run).
pub struct Scored {
    pub system: System,
    /// Metric name → one item per question (the first metric is the suite's headline).
    pub metrics: Vec<(String, Vec<Item>)>,
    pub answers: usize,
    pub failed: usize,
    pub mean_chars: f64,
    pub mean_tokens: f64,
    pub mean_secs: f64,
    /// Judgments that gave no verdict (or rating) and were left out.
    pub unjudged: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MetricRow {
    pub metric: String,
    pub score: Estimate,
    /// This system minus the best single model (None for that model itself).
    pub vs_best_single: Option<Estimate>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SystemRow {
    pub system: String,
    pub spec: String,
    pub single_model: bool,
    pub metrics: Vec<MetricRow>,
    pub answers: usize,
    pub failed_answers: usize,
    pub unjudged: usize,
    pub mean_answer_chars: f64,
    pub mean_answer_tokens: f64,
    pub mean_answer_secs: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub suite: String,
    pub questions: usize,
    pub question_ids: Vec<String>,
    pub settings: Settings,
    pub judge: Option<String>,
    /// The single model with the best headline score (the reference of the paired differences).
    pub best_single: Option<String>,
    pub systems: Vec<SystemRow>,
    /// Extra tables of the suite (IFEval: accuracy per instruction type), already in Markdown.
    #[serde(skip)]
    pub extra_markdown: String,
    pub extra: serde_json::Value,
}

const BOOT_SEED: u64 = 20240607;

pub fn summarize(suite: &str, ids: Vec<String>, settings: Settings, judge: Option<String>, scored: &[Scored]) -> Summary {
    let headline = |s: &Scored| s.metrics.first().map(|(_, v)| estimate(v, BOOT_SEED).value).unwrap_or(f64::NAN);
    let best = scored
        .iter()
        .filter(|s| s.system.is_single() && headline(s).is_finite())
        .max_by(|a, b| headline(a).total_cmp(&headline(b)));
    let systems = scored
        .iter()
        .map(|s| {
            let metrics = s
                .metrics
                .iter()
                .enumerate()
                .map(|(k, (name, items))| {
                    let vs = best.filter(|b| b.system.name != s.system.name).and_then(|b| b.metrics.get(k)).filter(|(_, bi)| bi.len() == items.len());
                    MetricRow {
                        metric: name.clone(),
                        score: estimate(items, BOOT_SEED + k as u64),
                        vs_best_single: vs.map(|(_, bi)| paired_difference(items, bi, BOOT_SEED + k as u64)),
                    }
                })
                .collect();
            SystemRow {
                system: s.system.name.clone(),
                spec: s.system.spec.clone(),
                single_model: s.system.is_single(),
                metrics,
                answers: s.answers,
                failed_answers: s.failed,
                unjudged: s.unjudged,
                mean_answer_chars: s.mean_chars,
                mean_answer_tokens: s.mean_tokens,
                mean_answer_secs: s.mean_secs,
            }
        })
        .collect();
    Summary {
        suite: suite.to_string(),
        questions: ids.len(),
        question_ids: ids,
        settings,
        judge,
        best_single: best.map(|b| b.system.name.clone()),
        systems,
        extra_markdown: String::new(),
        extra: serde_json::Value::Null,
    }
}

impl Summary {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let st = &self.settings;
        let _ = writeln!(
            s,
            "{} — {} questions; temperature {}, max tokens {}, seed {}{}; 95% bootstrap intervals ({} resamples over questions)\n",
            self.suite,
            self.questions,
            st.temperature,
            st.max_tokens,
            st.seed,
            self.judge.as_deref().map(|j| format!(", judge {j}")).unwrap_or_default(),
            crate::eval::stats::RESAMPLES
        );
        let Some(first) = self.systems.first() else { return s };
        let names: Vec<&str> = first.metrics.iter().map(|m| m.metric.as_str()).collect();
        let _ = write!(s, "| system |");
        for n in &names {
            let _ = write!(s, " {n} |");
        }
        let best = self.best_single.as_deref().unwrap_or("-");
        let _ = writeln!(s, " {} vs best single ({best}) | mean tokens | mean chars | s/answer | failed |", names[0]);
        let _ = writeln!(s, "|---|{}---:|---:|---:|---:|---:|", "---:|".repeat(names.len()));
        for r in &self.systems {
            let _ = write!(s, "| {}{} |", r.system, if r.single_model { "" } else { " (MoA)" });
            for m in &r.metrics {
                let _ = write!(s, " {:.3} |", m.score);
            }
            let vs = r.metrics.first().and_then(|m| m.vs_best_single).map(|d| format!("{:+.3} [{:+.3}, {:+.3}]", d.value, d.low, d.high)).unwrap_or_else(|| "—".into());
            let failed = if r.unjudged > 0 { format!("{} (+{} unjudged)", r.failed_answers, r.unjudged) } else { r.failed_answers.to_string() };
            let _ = writeln!(s, " {vs} | {:.0} | {:.0} | {:.1} | {failed} |", r.mean_answer_tokens, r.mean_answer_chars, r.mean_answer_secs);
        }
        s.push_str(&self.extra_markdown);
        s
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let name = self.suite.replace('-', "_");
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Other(format!("summary: {e}")))?;
        write_file(&dir.join(format!("{name}_summary.json")), &json)?;
        write_file(&dir.join(format!("{name}_summary.md")), &self.markdown())
    }
}

pub fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|source| Error::Io { path: d.to_path_buf(), source })?;
    }
    std::fs::write(path, text).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// Mean of `f` over records (0 when there are none).
pub fn mean<T>(v: &[T], f: impl Fn(&T) -> f64) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().map(f).sum::<f64>() / v.len() as f64 }
}
