//! A model's tokenizer and chat template read from its GGUF header alone — no weights: what it
//! takes to count a chat's prompt tokens exactly as generation counts them (template with the
//! generation prompt, BOS as the metadata asks and not doubled) and to check a prompt against the
//! model's context before anything loads. The server checks requests with it, and a remote agent
//! whose recipe names a local copy of its model counts and fits its prompts with it.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::arch::Config;
use crate::model::gguf::GgufFile;
use crate::model::template::{ChatTemplate, Message};
use crate::model::tokenizer::GgufTokenizer;
use crate::model::Prompt;

pub struct ChatTokens {
    /// `{:?}` of the architecture, lower case (`llama`, `qwen2`, …).
    pub arch: String,
    pub context_length: usize,
    pub tokenizer: GgufTokenizer,
    template: ChatTemplate,
    /// The vocabulary's longest token in bytes (see [`GgufTokenizer::max_token_bytes`]).
    max_token_bytes: usize,
}

impl ChatTokens {
    /// Read the header, tokenizer and template of the GGUF file at `path` (blocking).
    pub fn open(path: &Path) -> Result<Self> {
        let g = GgufFile::open(path)?;
        let cfg = Config::from_gguf(&g)?;
        let tokenizer = GgufTokenizer::from_gguf(&g)?;
        let template = ChatTemplate::from_gguf(&g, &tokenizer)?;
        Ok(Self {
            arch: format!("{:?}", cfg.arch).to_lowercase(),
            context_length: cfg.context_length,
            max_token_bytes: tokenizer.max_token_bytes(),
            tokenizer,
            template,
        })
    }

    /// Prompt tokens of a chat, counted as generation counts them.
    pub fn count(&self, msgs: &[Message]) -> Result<usize> {
        Ok(self.tokenizer.encode_prompt(&self.template.render(msgs, true)?)?.len())
    }

    /// Tokens of a prompt as generation feeds it: a chat through the template, a raw text with
    /// BOS as the metadata asks (not doubled), token ids as they are.
    pub fn count_prompt(&self, p: &Prompt) -> Result<usize> {
        match p {
            Prompt::Chat(m) => self.count(m),
            Prompt::Tokens(ids) => Ok(ids.len()),
            Prompt::Raw(text) => Ok(self.tokenizer.encode_prompt(text)?.len()),
        }
    }

    /// Tokens of a plain text (an answer), no BOS.
    pub fn count_text(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer.encode(text, false)?.len())
    }

    /// Does `msgs` plus `max_tokens` of answer fit a context of `context` tokens? `model` names
    /// the model in the error.
    pub fn check(&self, model: &str, msgs: &[Message], max_tokens: usize, context: usize) -> Result<()> {
        let bytes: usize = msgs.iter().map(|m| m.content.len()).sum();
        self.check_bytes(model, bytes, max_tokens, context)?;
        self.check_count(model, self.count(msgs)?, max_tokens, context)
    }

    /// [`ChatTokens::check`] for a prompt of any kind.
    pub fn check_prompt(&self, model: &str, p: &Prompt, max_tokens: usize, context: usize) -> Result<()> {
        match p {
            Prompt::Chat(m) => return self.check(model, m, max_tokens, context),
            Prompt::Raw(text) => self.check_bytes(model, text.len(), max_tokens, context)?,
            Prompt::Tokens(_) => {}
        }
        self.check_count(model, self.count_prompt(p)?, max_tokens, context)
    }

    /// A prompt whose bytes alone prove it too long (more bytes than the context's tokens of
    /// the longest token can hold) is rejected before it is rendered or tokenized.
    fn check_bytes(&self, model: &str, bytes: usize, max_tokens: usize, context: usize) -> Result<()> {
        if bytes.div_ceil(self.max_token_bytes.max(1)).saturating_add(max_tokens) > context {
            return Err(Error::PromptTooLong { model: model.to_string(), bytes, context, max_token_bytes: self.max_token_bytes });
        }
        Ok(())
    }

    fn check_count(&self, model: &str, n: usize, max_tokens: usize, context: usize) -> Result<()> {
        if n.saturating_add(max_tokens) > context {
            return Err(Error::ContextOverflow { model: model.to_string(), prompt_tokens: n, max_tokens, context });
        }
        Ok(())
    }
}
