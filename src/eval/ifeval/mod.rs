//! IFEval (Zhou et al. 2023) scored by code, as the project's own port of lm-eval 0.4.13's
//! `tasks/ifeval` (Apache-2.0): prompt files, the 25 instruction checkers, strict and loose
//! evaluation and the aggregate scores. Sentence counts use a port of NLTK's Punkt decision
//! procedure with NLTK's English parameters, read at run time from a `punkt_tab` directory
//! (`models/eval/punkt_tab/english`, fetched by `bash benches/eval/fetch.sh ifeval`); language
//! identification stands in for langdetect with `whatlang` (see [`lang`]).
//!
//! ```no_run
//! use moa_local::eval::ifeval::{load_prompts, IfEval};
//! let ifeval = IfEval::new(IfEval::DEFAULT_PUNKT_DIR.as_ref())?;
//! let prompts = load_prompts("models/eval/ifeval/input_data.jsonl".as_ref())?;
//! let verdicts = prompts.iter().map(|p| ifeval.evaluate(p, "my answer")).collect::<Result<Vec<_>, _>>()?;
//! let scores = moa_local::eval::ifeval::score(&prompts, &verdicts)?;
//! println!("{}", scores.prompt_level_strict_acc);
//! # Ok::<(), moa_local::Error>(())
//! ```

mod checks;
pub mod instructions;
pub mod lang;
pub mod punkt;
pub mod pystr;
mod score;
pub mod words;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use instructions::{Instruction, Relation, INSTRUCTION_IDS};
pub use punkt::Punkt;
pub use score::{aggregate, loose_variants, PromptVerdict, Scores, TypeCount};

use crate::{Error, Result};

/// One line of IFEval's `input_data.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub key: i64,
    pub prompt: String,
    pub instruction_id_list: Vec<String>,
    pub kwargs: Vec<Map<String, Value>>,
}

impl Prompt {
    /// Parse and validate one JSON line (every instruction must be configurable).
    pub fn parse(line: &str) -> std::result::Result<Prompt, String> {
        let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
        let obj = value.as_object().ok_or("expected a JSON object")?;
        for field in ["key", "prompt", "instruction_id_list", "kwargs"] {
            if !obj.contains_key(field) {
                return Err(format!("field `{field}` is missing"));
            }
        }
        let field_err = |field: &str, what: &str| format!("field `{field}` must be {what}");
        let p = Prompt {
            key: obj["key"].as_i64().ok_or_else(|| field_err("key", "an integer"))?,
            prompt: obj["prompt"].as_str().ok_or_else(|| field_err("prompt", "a string"))?.to_string(),
            instruction_id_list: serde_json::from_value(obj["instruction_id_list"].clone())
                .map_err(|_| field_err("instruction_id_list", "a list of strings"))?,
            kwargs: serde_json::from_value(obj["kwargs"].clone())
                .map_err(|_| field_err("kwargs", "a list of objects"))?,
        };
        p.instructions()?;
        Ok(p)
    }

    /// The configured instructions, in `instruction_id_list` order.
    pub fn instructions(&self) -> std::result::Result<Vec<Instruction>, String> {
        if self.kwargs.len() != self.instruction_id_list.len() {
            return Err(format!(
                "field `kwargs` has {} entries for {} instructions in `instruction_id_list`",
                self.kwargs.len(),
                self.instruction_id_list.len()
            ));
        }
        self.instruction_id_list
            .iter()
            .zip(&self.kwargs)
            .map(|(id, kw)| Instruction::from_kwargs(id, kw).map_err(|e| format!("field `kwargs`: {e}")))
            .collect()
    }
}

/// Read a JSONL file of prompts; errors name the file, the line and the field.
pub fn load_prompts(path: &Path) -> Result<Vec<Prompt>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let p = Prompt::parse(line).map_err(|e| Error::Config(format!("{}: line {}: {e}", path.display(), n + 1)))?;
        out.push(p);
    }
    Ok(out)
}

/// The IFEval scorer: the loaded Punkt model plus the checkers.
pub struct IfEval {
    punkt: Punkt,
}

impl IfEval {
    /// Where `benches/eval/fetch.sh ifeval` puts NLTK's English Punkt parameters.
    pub const DEFAULT_PUNKT_DIR: &'static str = "models/eval/punkt_tab/english";

    /// Load the Punkt parameters from `punkt_dir` (a `punkt_tab/<language>` directory).
    pub fn new(punkt_dir: &Path) -> Result<Self> {
        if !punkt_dir.is_dir() {
            return Err(Error::Config(format!(
                "Punkt parameters not found in {} (run `bash benches/eval/fetch.sh ifeval`)",
                punkt_dir.display()
            )));
        }
        Ok(IfEval { punkt: Punkt::load(punkt_dir)? })
    }

    /// The default directory under a repository root.
    pub fn default_punkt_dir(root: &Path) -> PathBuf {
        root.join(Self::DEFAULT_PUNKT_DIR)
    }

    pub fn punkt(&self) -> &Punkt {
        &self.punkt
    }

    fn configured(prompt: &Prompt) -> Result<Vec<Instruction>> {
        prompt.instructions().map_err(|e| Error::InvalidRequest(format!("IFEval prompt {}: {e}", prompt.key)))
    }

    /// Strict verdicts, one per instruction.
    pub fn strict(&self, prompt: &Prompt, response: &str) -> Result<Vec<bool>> {
        Ok(score::strict(&Self::configured(prompt)?, response, &self.punkt))
    }

    /// Loose verdicts, one per instruction.
    pub fn loose(&self, prompt: &Prompt, response: &str) -> Result<Vec<bool>> {
        Ok(score::loose(&Self::configured(prompt)?, response, &self.punkt))
    }

    /// Strict and loose verdicts for `response` to `prompt`.
    pub fn evaluate(&self, prompt: &Prompt, response: &str) -> Result<PromptVerdict> {
        let instructions = Self::configured(prompt)?;
        Ok(PromptVerdict {
            strict: score::strict(&instructions, response, &self.punkt),
            loose: score::loose(&instructions, response, &self.punkt),
        })
    }
}

/// Aggregate scores of `verdicts[k]` answering `prompts[k]`.
pub fn score(prompts: &[Prompt], verdicts: &[PromptVerdict]) -> Result<Scores> {
    if prompts.len() != verdicts.len() {
        return Err(Error::InvalidRequest(format!("{} prompts but {} verdicts", prompts.len(), verdicts.len())));
    }
    Ok(aggregate(prompts.iter().map(|p| p.instruction_id_list.as_slice()).zip(verdicts)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_name_the_field() {
        assert!(Prompt::parse("{").unwrap_err().contains("JSON"));
        assert!(Prompt::parse(r#"{"key": 1, "prompt": "p", "instruction_id_list": []}"#).unwrap_err().contains("`kwargs`"));
        let e = Prompt::parse(r#"{"key": 1, "prompt": "p", "instruction_id_list": ["x:y"], "kwargs": [{}]}"#).unwrap_err();
        assert!(e.contains("x:y"), "{e}");
        let e = Prompt::parse(r#"{"key": "a", "prompt": "p", "instruction_id_list": [], "kwargs": []}"#).unwrap_err();
        assert!(e.contains("`key`"), "{e}");
        let ok = Prompt::parse(r#"{"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}"#);
        assert_eq!(ok.map(|p| p.instruction_id_list.len()), Ok(1));
    }

    #[test]
    fn load_reports_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.jsonl");
        std::fs::write(&path, "{\"key\": 1, \"prompt\": \"p\", \"instruction_id_list\": [], \"kwargs\": []}\n\nnot json\n").expect("write");
        let e = load_prompts(&path).unwrap_err().to_string();
        assert!(e.contains("p.jsonl: line 3"), "{e}");
        assert!(load_prompts(&dir.path().join("missing.jsonl")).is_err());
    }
}
