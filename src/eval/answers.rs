//! Answers and judgments, generated on the runtime and cached. A record's key is the sha256 of
//! everything that decides its text: the system (model or whole recipe, with its instruction),
//! the model files' sha256, the sampling settings and seed, and the conversation it answers. A
//! run appends each record as it is made (JSONL), so an interrupted evaluation resumes where it
//! stopped and a new judge re-scores old answers without regenerating them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::engine::{Control, SamplingParams};
use crate::error::{Error, Result};
use crate::eval::system::{Kind, Settings, System};
use crate::model::generate::{GenerateRequest, Prompt};
use crate::model::gguf::sha256_file;
use crate::model::Message;
use crate::moa::{self, RunOptions};
use crate::runtime::remote::is_remote;
use crate::runtime::Runtime;

/// One generated text (an answer or a judgment).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub key: String,
    /// The system's label (or the judge model).
    pub system: String,
    /// What it answers: `ifeval/1000`, `mt-bench/81/turn1`, a judgment's id.
    pub item: String,
    pub text: String,
    /// Tokens the answer (for MoA: the aggregate) has.
    pub tokens: usize,
    pub secs: f64,
    pub seed: u64,
    pub settings: Settings,
    /// Why there is no text (a failed generation counts as an empty answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A JSONL file of records, loaded whole and appended to.
pub struct Cache {
    path: PathBuf,
    file: Mutex<File>,
    records: Mutex<HashMap<String, Record>>,
}

impl Cache {
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| Error::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        }
        let mut records = HashMap::new();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(io)?;
            let lines = text.lines().count();
            for (i, line) in text.lines().enumerate() {
                // A line cut short by an interrupted run is dropped (its answer is made again).
                match serde_json::from_str::<Record>(line) {
                    Ok(r) => {
                        records.insert(r.key.clone(), r);
                    }
                    Err(e) if i + 1 == lines => eprintln!("{}: dropping a truncated last line ({e})", path.display()),
                    Err(e) => return Err(Error::Config(format!("{}:{}: not an answer record: {e}", path.display(), i + 1))),
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        Ok(Self { path: path.to_path_buf(), file: Mutex::new(file), records: Mutex::new(records) })
    }

    pub fn get(&self, key: &str) -> Option<Record> {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// Keep `r` (a failed generation is kept in memory only, so a rerun tries it again).
    pub fn put(&self, r: Record) -> Result<()> {
        if r.error.is_none() {
            let mut line = serde_json::to_string(&r).map_err(|e| Error::Other(format!("answer record: {e}")))?;
            line.push('\n');
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            f.write_all(line.as_bytes()).and_then(|_| f.flush()).map_err(|source| Error::Io { path: self.path.clone(), source })?;
        }
        self.records.lock().unwrap_or_else(|p| p.into_inner()).insert(r.key.clone(), r);
        Ok(())
    }
}

/// Generates answers of systems on one runtime (models stay loaded between questions).
pub struct Answerer {
    rt: Arc<Runtime>,
    tokio: tokio::runtime::Runtime,
    shas: Mutex<HashMap<String, String>>,
    /// Drafts from the prompt (output-preserving; off for A/B checks).
    pub draft: bool,
}

impl Answerer {
    pub fn new(rt: Arc<Runtime>) -> Result<Self> {
        let tokio = tokio::runtime::Runtime::new().map_err(|e| Error::Other(format!("cannot start the async runtime: {e}")))?;
        Ok(Self { rt, tokio, shas: Mutex::new(HashMap::new()), draft: true })
    }

    /// The sha256 of a model's file (remote agents: their spec), computed once per run.
    pub fn fingerprint(&self, model: &str) -> Result<String> {
        if is_remote(model) {
            return Ok(format!("remote:{model}"));
        }
        if let Some(s) = self.shas.lock().unwrap_or_else(|p| p.into_inner()).get(model) {
            return Ok(s.clone());
        }
        let sha = sha256_file(&self.rt.resolve(model)?)?;
        self.shas.lock().unwrap_or_else(|p| p.into_inner()).insert(model.to_string(), sha.clone());
        Ok(sha)
    }

    /// The cache key of `system` answering `conv` with `settings` and `seed`.
    pub fn key(&self, system: &System, conv: &[Message], settings: &Settings, seed: u64) -> Result<String> {
        let files: Vec<String> = system.models().iter().map(|m| self.fingerprint(m)).collect::<Result<_>>()?;
        let doc = serde_json::json!({ "kind": system.kind, "files": files, "settings": settings, "seed": seed, "conversation": conv });
        Ok(format!("{:x}", Sha256::digest(doc.to_string().as_bytes())))
    }

    /// The cached record, or a new answer (kept in `cache`).
    pub fn answer(&self, cache: &Cache, system: &System, item: &str, conv: &[Message], settings: &Settings, seed: u64) -> Result<Record> {
        let key = self.key(system, conv, settings, seed)?;
        if let Some(r) = cache.get(&key) {
            return Ok(r);
        }
        let t = Instant::now();
        let (text, tokens, error) = match self.generate(system, conv, settings, seed) {
            Ok((text, tokens)) => (text, tokens, None),
            Err(e) => (String::new(), 0, Some(e.to_string())),
        };
        let r = Record { key, system: system.name.clone(), item: item.to_string(), text, tokens, secs: t.elapsed().as_secs_f64(), seed, settings: *settings, error };
        cache.put(r.clone())?;
        Ok(r)
    }

    fn generate(&self, system: &System, conv: &[Message], s: &Settings, seed: u64) -> Result<(String, usize)> {
        match &system.kind {
            Kind::Single { model } => {
                let rt = self.rt.clone();
                let sampling = SamplingParams { temperature: s.temperature, seed, ..SamplingParams::default() };
                let mut req = GenerateRequest::new(Prompt::Chat(conv.to_vec()), s.max_tokens, sampling);
                if !self.draft {
                    req.max_draft = 0;
                }
                self.tokio.block_on(async {
                    let m = rt.load(model).await?;
                    let g = rt.generate(m, req, None, |_| Control::Continue).await?;
                    Ok((g.text, g.ids.len()))
                })
            }
            Kind::Moa { recipe } => {
                let opts = RunOptions { seed, draft: self.draft, ..RunOptions::default() };
                let report = self.tokio.block_on(moa::run(self.rt.clone(), recipe, conv, &opts, moa::report::no_events()))?;
                Ok((report.aggregate.text, report.aggregate.stats.generated_tokens))
            }
        }
    }
}
