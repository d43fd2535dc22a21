//! The judged suites' data, read from `models/eval/` (fetched by `bash benches/eval/fetch.sh`):
//! MT-Bench's questions, FastChat's judge prompts and GPT-4 reference answers, AlpacaEval's
//! instructions and GPT-4 baseline outputs; and the fixed subset of questions a run uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Deserialize;

use crate::error::{Error, Result};

/// The default data folder (`MOA_EVAL_DATA` overrides it).
pub fn default_dir() -> PathBuf {
    std::env::var_os("MOA_EVAL_DATA").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("models/eval"))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => Error::Config(format!(
            "{} is missing: fetch the evaluation data with `bash benches/eval/fetch.sh`",
            path.display()
        )),
        _ => Error::Io { path: path.to_path_buf(), source },
    })
}

/// Parse a JSON-lines file, naming the file and line of a bad record.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text = read(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::Config(format!("{}:{}: {e}", path.display(), i + 1))))
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
pub struct MtQuestion {
    pub question_id: u64,
    pub category: String,
    pub turns: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JudgePrompt {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub system_prompt: String,
    pub prompt_template: String,
    pub output_format: String,
}

#[derive(Debug, Deserialize)]
struct Choice {
    turns: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ReferenceLine {
    question_id: u64,
    choices: Vec<Choice>,
}

/// FastChat's categories judged against a reference answer.
pub const NEED_REF_CATS: [&str; 3] = ["math", "reasoning", "coding"];

pub struct MtBench {
    pub questions: Vec<MtQuestion>,
    pub judges: BTreeMap<String, JudgePrompt>,
    /// GPT-4's reference answers by question id (one per turn).
    pub references: BTreeMap<u64, Vec<String>>,
}

impl MtBench {
    pub fn load(dir: &Path) -> Result<Self> {
        let d = dir.join("mt_bench");
        let questions: Vec<MtQuestion> = read_jsonl(&d.join("question.jsonl"))?;
        if let Some(q) = questions.iter().find(|q| q.turns.is_empty()) {
            return Err(Error::Config(format!("mt_bench/question.jsonl: question {} has no turns", q.question_id)));
        }
        let judges = read_jsonl::<JudgePrompt>(&d.join("judge_prompts.jsonl"))?.into_iter().map(|j| (j.name.clone(), j)).collect();
        let refs: Vec<ReferenceLine> = read_jsonl(&d.join("reference_answer/gpt-4.jsonl"))?;
        let references = refs.into_iter().filter_map(|r| r.choices.into_iter().next().map(|c| (r.question_id, c.turns))).collect();
        Ok(Self { questions, judges, references })
    }

    pub fn judge(&self, name: &str) -> Result<&JudgePrompt> {
        self.judges.get(name).ok_or_else(|| Error::Config(format!("mt_bench/judge_prompts.jsonl has no judge prompt `{name}`")))
    }

    /// The reference answer of `q`'s turn (0-based) when its category is judged against one.
    pub fn reference(&self, q: &MtQuestion, turn: usize) -> Option<&str> {
        if !NEED_REF_CATS.contains(&q.category.as_str()) {
            return None;
        }
        self.references.get(&q.question_id).and_then(|t| t.get(turn)).map(String::as_str)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AlpacaItem {
    pub instruction: String,
    pub output: String,
    #[serde(default)]
    pub generator: String,
    #[serde(default)]
    pub dataset: String,
}

/// AlpacaEval's 805 instructions with the GPT-4 (1106-preview) baseline's output for each.
pub struct Alpaca {
    pub items: Vec<AlpacaItem>,
}

impl Alpaca {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("alpaca/alpaca_eval_gpt4_baseline.json");
        let items: Vec<AlpacaItem> =
            serde_json::from_str(&read(&path)?).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        // The instruction set the baseline answers must be AlpacaEval's own.
        let ipath = dir.join("alpaca/outputs.json");
        let instructions: Vec<AlpacaItem> =
            serde_json::from_str(&read(&ipath)?).map_err(|e| Error::Config(format!("{}: {e}", ipath.display())))?;
        if instructions.len() != items.len() || instructions.iter().zip(&items).any(|(a, b)| a.instruction != b.instruction) {
            return Err(Error::Config(format!(
                "{} and {} do not hold the same instructions in the same order",
                ipath.display(),
                path.display()
            )));
        }
        Ok(Self { items })
    }
}

/// The fixed subset of `n` question indices out of `total` a run uses: a seeded shuffle, then
/// sorted (so `--limit 20` today and tomorrow pick the same questions, and a larger limit with
/// the same seed extends a smaller one's set).
pub fn subset(total: usize, limit: Option<usize>, seed: u64) -> Vec<usize> {
    let n = limit.unwrap_or(total).min(total);
    let mut all: Vec<usize> = (0..total).collect();
    all.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut pick = all[..n].to_vec();
    pick.sort_unstable();
    pick
}

/// MT-Bench's subset: `limit` questions spread evenly over the 8 categories (round-robin over
/// each category's seeded order), so a small run still covers every category.
pub fn stratified_subset(categories: &[&str], limit: Option<usize>, seed: u64) -> Vec<usize> {
    let mut by_cat: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, c) in categories.iter().enumerate() {
        by_cat.entry(c).or_default().push(i);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut lists: Vec<Vec<usize>> = by_cat.into_values().map(|mut v| { v.shuffle(&mut rng); v }).collect();
    let n = limit.unwrap_or(categories.len()).min(categories.len());
    let mut pick = Vec::with_capacity(n);
    let mut round = 0;
    while pick.len() < n {
        for l in lists.iter_mut() {
            if let Some(&i) = l.get(round) {
                if pick.len() < n {
                    pick.push(i);
                }
            }
        }
        round += 1;
    }
    pick.sort_unstable();
    pick
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_fixed_and_nested() {
        let a = subset(541, Some(20), 0);
        assert_eq!(a, subset(541, Some(20), 0));
        assert_eq!(a.len(), 20);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        let b = subset(541, Some(40), 0);
        assert!(a.iter().all(|i| b.contains(i)), "a larger limit extends the smaller set");
        assert_ne!(a, subset(541, Some(20), 1));
        assert_eq!(subset(5, None, 3), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn stratified_subset_covers_every_category() {
        let cats: Vec<&str> = (0..80).map(|i| ["a", "b", "c", "d", "e", "f", "g", "h"][i / 10]).collect();
        let pick = stratified_subset(&cats, Some(8), 0);
        let mut seen: Vec<&str> = pick.iter().map(|&i| cats[i]).collect();
        seen.dedup();
        assert_eq!(seen.len(), 8, "{pick:?}");
        assert_eq!(stratified_subset(&cats, Some(12), 0).len(), 12);
        assert_eq!(stratified_subset(&cats, None, 0).len(), 80);
    }

    #[test]
    fn missing_data_names_the_fetch_command() {
        let e = MtBench::load(Path::new("/nonexistent")).err().unwrap().to_string();
        assert!(e.contains("benches/eval/fetch.sh") && e.contains("question.jsonl"), "{e}");
    }
}
