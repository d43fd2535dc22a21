//! The library's one error type. Every variant names what went wrong (file, field, limit) so a
//! user can act on it; `anyhow` appears only at the binary's edge.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model file not found: {path}")]
    MissingFile { path: PathBuf },

    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path} is not a valid GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },

    #[error("{path}: metadata field `{field}` {problem}")]
    Metadata { path: PathBuf, field: String, problem: String },

    #[error("{path}: unsupported architecture `{arch}` (supported: {supported})")]
    UnsupportedArch { path: PathBuf, arch: String, supported: String },

    #[error("{path}: tensor `{tensor}` has unsupported type {dtype} (supported: {supported})")]
    UnsupportedQuant { path: PathBuf, tensor: String, dtype: String, supported: String },

    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    #[error("chat template of {model}: {reason}")]
    Template { model: String, reason: String },

    #[error(
        "prompt of {prompt_tokens} tokens + {max_tokens} new tokens exceeds the context length of {context} tokens for {model}"
    )]
    ContextOverflow { model: String, prompt_tokens: usize, max_tokens: usize, context: usize },

    #[error(
        "prompt of {bytes} bytes cannot fit the context length of {context} tokens for {model} (its longest token is {max_token_bytes} bytes, so the prompt has at least {} tokens)", bytes.div_ceil(*max_token_bytes)
    )]
    PromptTooLong { model: String, bytes: usize, context: usize, max_token_bytes: usize },

    #[error("invalid request: {0}")]
    InvalidRequest(String),

    #[error("unknown model `{name}`: {hint}")]
    UnknownModel { name: String, hint: String },

    #[error("{0}")]
    Config(String),

    #[error("generation was cancelled")]
    Cancelled,

    #[error("{context}: {}", candle_message(source))]
    Candle { context: String, source: candle_core::Error },

    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Wrap a candle error with a short description of what was being done.
    pub fn candle(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Error {
        let context = context.into();
        move |source| Error::Candle { context, source }
    }
}

impl From<candle_core::Error> for Error {
    fn from(source: candle_core::Error) -> Self {
        Error::Candle { context: "tensor operation".into(), source }
    }
}

/// A candle error as one message and its causes. candle captures a backtrace into its errors
/// whenever `RUST_BACKTRACE` is set (many Rust users keep it set), and its `Display` prints it:
/// fifteen lines of frames after a corrupt file's message. They are left out unless
/// `MOA_BACKTRACE=1` asks for them.
pub fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, backtrace } if backtraces_requested() => {
            format!("{}\n{backtrace}", candle_message(inner))
        }
        E::WithBacktrace { inner, .. } => candle_message(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        other => other.to_string(),
    }
}

fn backtraces_requested() -> bool {
    std::env::var_os("MOA_BACKTRACE").is_some_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_errors_print_without_their_backtrace() {
        let bt = Box::new(std::backtrace::Backtrace::force_capture());
        let inner = candle_core::Error::Msg("shape mismatch".into());
        let e = candle_core::Error::WithBacktrace { inner: Box::new(inner), backtrace: bt }.context("matmul");
        let msg = Error::Candle { context: "forward pass".into(), source: e }.to_string();
        assert_eq!(msg, "forward pass: matmul: shape mismatch");
    }
}
