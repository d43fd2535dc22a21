//! The models a server offers, known from their GGUF headers alone: name, file, architecture,
//! context length, tokenizer and chat template — no weights. The server checks every prompt
//! against the context of each model it will reach before the request is queued, so a prompt
//! that is too long is a 400 naming the limit (even for a streamed request), while the weights
//! stay under the runtime's control (loaded on first use, shared, unloaded by its scheduler).

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::moa::prompt::inject_references;
use crate::moa::Recipe;
use crate::model::chat_tokens::ChatTokens;
use crate::model::Message;
use crate::runtime::remote::is_remote;
use crate::runtime::Runtime;
use crate::server::openai::{ApiError, ChatParams};
use crate::server::worker::{Defaults, Target};

/// One model as the server knows it.
pub struct ModelEntry {
    /// The name recipes use (catalog alias or path).
    pub name: String,
    /// The file's stem, accepted as a second name.
    pub stem: String,
    pub path: PathBuf,
    pub arch: String,
    pub context_length: usize,
    tokens: Arc<ChatTokens>,
}

impl ModelEntry {
    /// Read `name`'s header, tokenizer and template (blocking; no weights are read).
    pub fn open(rt: &Runtime, name: &str) -> Result<Self> {
        let path = rt.resolve(name)?;
        let tokens = rt.chat_tokens(name)?;
        Ok(Self {
            name: name.to_string(),
            stem: path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            arch: tokens.arch.clone(),
            context_length: tokens.context_length,
            path,
            tokens,
        })
    }

    /// Prompt tokens of a chat, counted as generation counts them.
    pub fn count(&self, msgs: &[Message]) -> Result<usize> {
        self.tokens.count(msgs)
    }

    /// Does `msgs` plus `max_tokens` of answer fit the context?
    pub fn check(&self, msgs: &[Message], max_tokens: usize) -> Result<()> {
        self.tokens.check(&self.name, msgs, max_tokens, self.context_length)
    }
}

/// Every local model the recipes use, in first-use order, with the first recipe that uses it.
/// A remote agent's model lives on its endpoint (which checks its own context and batches on its
/// own side), so it is not among them.
pub fn local_models<'a>(recipes: impl IntoIterator<Item = (&'a str, &'a Recipe)>) -> Vec<(&'a str, String)> {
    let mut out: Vec<(&str, String)> = Vec::new();
    for (rname, r) in recipes {
        for name in r.model_names() {
            if !is_remote(&name) && !out.iter().any(|(_, n)| *n == name) {
                out.push((rname, name));
            }
        }
    }
    out
}

/// The entries of every model the recipes use, in first-use order.
pub fn open_all(rt: &Runtime, recipes: &[(String, Arc<Recipe>)]) -> Result<Vec<Arc<ModelEntry>>> {
    local_models(recipes.iter().map(|(n, r)| (n.as_str(), r.as_ref())))
        .into_iter()
        .map(|(rname, name)| {
            ModelEntry::open(rt, &name).map(Arc::new).map_err(|e| Error::Config(format!("recipe `{rname}`: model {name}: {e}")))
        })
        .collect()
}

/// The conversation an agent sees: its own system prompt, when set, replaces the user's.
fn with_system(conv: &[Message], system: &Option<String>) -> Vec<Message> {
    let mut out = conv.to_vec();
    if let Some(s) = system {
        match out.first_mut() {
            Some(m) if m.role == "system" => m.content = s.clone(),
            _ => out.insert(0, Message::system(s.clone())),
        }
    }
    out
}

/// Would the request fit? A single model: the conversation plus `max_tokens`. A recipe: every
/// first-layer proposer the conversation plus its answer; later proposers and the aggregator the
/// conversation with the MoA instruction (their references are cut to fit at run time).
pub fn precheck(models: &[Arc<ModelEntry>], target: &Target, p: &ChatParams, defaults: Defaults) -> std::result::Result<(), ApiError> {
    let entry = |name: &str| {
        models.iter().find(|e| e.name == name).cloned().ok_or_else(|| Error::Other(format!("model {name} is not set up on this server")))
    };
    match target {
        Target::Single { name } => {
            let e = entry(name)?;
            let max_tokens = p.max_tokens.unwrap_or(defaults.max_tokens);
            match &p.prompt {
                Some(prompt) => e.tokens.check_prompt(&e.name, prompt, max_tokens, e.context_length)?,
                None => e.check(&p.messages, max_tokens)?,
            }
        }
        Target::Moa { recipe, .. } => {
            let mut seen = Vec::new();
            let with_refs = recipe.layers.iter().enumerate().flat_map(|(li, l)| l.iter().map(move |a| (li > 0, a)));
            for (refs, a) in with_refs.chain(std::iter::once((true, &recipe.aggregator))) {
                if seen.contains(&(refs, a)) {
                    continue;
                }
                seen.push((refs, a));
                if is_remote(&a.model) {
                    continue;
                }
                let conv = with_system(&p.messages, &a.system);
                let conv = if refs { inject_references(&conv, &recipe.instruction, &[]) } else { conv };
                entry(&a.model)?.check(&conv, a.max_tokens)?;
            }
        }
    }
    Ok(())
}
