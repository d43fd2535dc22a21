//! OpenAI's legacy text completions (`POST /v1/completions`), which evaluation tools use
//! (lm-evaluation-harness's `local-completions`, optillm): a prompt string or token-id array fed
//! to one model without a chat template, `echo` (the prompt leads the text), `logprobs: N` (each
//! token's log-probability and its N most likely alternatives, for the prompt too when echoed,
//! so `echo` + `logprobs` + `max_tokens: 0` scores a text), and the `text_completion` response
//! shape. Sampling fields are those of chat completions.

use serde_json::{json, Map, Value};

use crate::model::Prompt;
use crate::server::openai::{integer, parse_object, parse_sampling, ApiError, ChatParams};
use crate::server::worker::{Finished, TokenInfo};

/// OpenAI's legacy cap on `logprobs` for text completions.
pub const MAX_COMPLETION_LOGPROBS: usize = 5;
/// `max_tokens` when a completion request leaves it out (OpenAI's default).
pub const DEFAULT_COMPLETION_TOKENS: usize = 16;

pub fn parse_completion(body: &[u8]) -> Result<ChatParams, ApiError> {
    let (m, model) = parse_object(body)?;
    let echo = match m.get("echo") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("echo must be a boolean", Some("echo"))),
    };
    let mut p = parse_sampling(&m, model, if echo { 0 } else { 1 })?;
    p.prompt = Some(parse_prompt(&m)?);
    p.echo = echo;
    p.max_tokens = Some(p.max_tokens.unwrap_or(DEFAULT_COMPLETION_TOKENS));
    p.logprobs = match integer(&m, "logprobs")? {
        None => None,
        Some(k) if (0..=MAX_COMPLETION_LOGPROBS as i64).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::bad_request(format!("logprobs must be between 0 and {MAX_COMPLETION_LOGPROBS}, got {k}"), Some("logprobs")))
        }
    };
    if m.get("suffix").is_some_and(|s| !s.is_null()) {
        return Err(ApiError::bad_request("suffix (insertion) is not supported by this server", Some("suffix")));
    }
    if m.get("best_of").and_then(Value::as_i64).is_some_and(|b| b > 1) {
        return Err(ApiError::bad_request("best_of is not supported by this server; use n", Some("best_of")));
    }
    if p.max_tokens == Some(0) && p.stream {
        return Err(ApiError::bad_request("max_tokens 0 (scoring the prompt) cannot stream", Some("max_tokens")));
    }
    if p.stream && echo && matches!(p.prompt, Some(Prompt::Tokens(_))) {
        return Err(ApiError::bad_request("echo of a token-id prompt cannot stream; send the prompt as text or ask without streaming", Some("echo")));
    }
    Ok(p)
}

/// A string, one string in an array, token ids, or one token-id array in an array.
fn parse_prompt(m: &Map<String, Value>) -> Result<Prompt, ApiError> {
    let bad = |msg: &str| ApiError::bad_request(msg.to_string(), Some("prompt"));
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter().map(|x| x.as_u64().and_then(|t| u32::try_from(t).ok()).ok_or_else(|| bad("prompt token ids must be non-negative integers"))).collect()
    };
    let p = match m.get("prompt") {
        None | Some(Value::Null) => return Err(bad("you must provide a prompt parameter")),
        Some(Value::String(s)) => Prompt::Raw(s.clone()),
        Some(Value::Array(a)) if a.is_empty() => return Err(bad("prompt must not be empty")),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => Prompt::Tokens(ids(a)?),
        Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
            Value::String(s) => Prompt::Raw(s.clone()),
            Value::Array(t) if !t.is_empty() => Prompt::Tokens(ids(t)?),
            _ => return Err(bad("prompt must be a string, an array of token ids, or an array holding one of them")),
        },
        Some(Value::Array(_)) => return Err(bad("one prompt per request: send several prompts as separate requests")),
        Some(_) => return Err(bad("prompt must be a string or an array of token ids")),
    };
    if matches!(&p, Prompt::Raw(s) if s.is_empty()) {
        return Err(bad("prompt must not be empty"));
    }
    Ok(p)
}

/// The legacy `logprobs` object: tokens, their log-probabilities (null for a first prompt token,
/// which has no context), the alternatives as {token: logprob} maps, and each token's offset in
/// the choice's text.
fn logprobs_object(tokens: &[TokenInfo]) -> Value {
    let mut offset = 0usize;
    let mut offsets = Vec::with_capacity(tokens.len());
    for t in tokens {
        offsets.push(offset);
        offset += t.token.len();
    }
    json!({
        "tokens": tokens.iter().map(|t| t.token.as_str()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|t| {
            if t.logprob.is_none() {
                return Value::Null;
            }
            Value::Object(t.top.iter().map(|(tok, _, lp)| (tok.clone(), json!(lp))).collect())
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

/// The `choices` of a text completion: `texts[i]` is choice i's generated text.
pub fn choices(texts: Vec<String>, fin: &Finished, p: &ChatParams) -> Vec<Value> {
    texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let reason = fin.finish_reasons.get(i).copied().unwrap_or("stop");
            let echoed = fin.prompt.as_ref().filter(|_| p.echo);
            let full = match echoed {
                Some(e) => format!("{}{text}", e.text),
                None => text,
            };
            json!({"text": full, "index": i, "logprobs": legacy_logprobs(fin, p, i), "finish_reason": reason})
        })
        .collect()
}

/// Choice `i`'s legacy `logprobs` object when asked for (the echoed prompt's tokens first), else
/// null.
pub fn legacy_logprobs(fin: &Finished, p: &ChatParams, i: usize) -> Value {
    let Some(_) = p.logprobs else { return Value::Null };
    let mut toks: Vec<TokenInfo> = fin.prompt.as_ref().filter(|_| p.echo).map(|e| e.tokens.clone()).unwrap_or_default();
    toks.extend(fin.choices.get(i).map(|c| c.tokens.clone()).unwrap_or_default());
    logprobs_object(&toks)
}
