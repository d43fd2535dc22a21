//! OpenAI's chat-completions wire format: the request as a client sends it (parsed field by
//! field so every 400 names the offending parameter), the response and stream-chunk shapes, the
//! `moa` usage extension, and errors in OpenAI's `{"error":{message,type,param,code}}` shape.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::engine::logprobs::MAX_TOP_LOGPROBS;
use crate::error::Error;
use crate::model::{Message, Prompt};

/// A validated chat-completions request.
#[derive(Debug, Clone)]
pub struct ChatParams {
    pub model: String,
    pub messages: Vec<Message>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<usize>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// `stream_options.include_usage`: send a last chunk with `usage` (and `choices: []`).
    pub include_usage: bool,
    /// Choices to generate (1..=`MAX_N`; single models only), sampled in one batch with seeds
    /// `seed`, `seed + 1`, …
    pub n: usize,
    /// Log-probabilities of each generated token, with this many alternatives (chat:
    /// `logprobs: true` + `top_logprobs`; completions: `logprobs: N`).
    pub logprobs: Option<usize>,
    /// `/v1/completions`: the prompt as given (text or token ids), fed without a chat template.
    pub prompt: Option<Prompt>,
    /// `/v1/completions`: the answer starts with the prompt (and, with `logprobs`, the prompt
    /// tokens' log-probabilities).
    pub echo: bool,
}

/// The most choices one request may ask for.
pub const MAX_N: usize = 8;

/// Parse and validate a request body. Unknown fields are ignored, as OpenAI's own server does
/// for fields it does not use; fields whose meaning we cannot honour (`tools`, `n` past `MAX_N`) are 400s.
pub fn parse_chat(body: &[u8]) -> Result<ChatParams, ApiError> {
    let (m, model) = parse_object(body)?;
    let messages = parse_messages(m.get("messages"))?;
    let mut p = parse_sampling(&m, model, 1)?;
    p.messages = messages;
    if m.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::bad_request("tools are not supported by this server", Some("tools")));
    }
    let want = match m.get("logprobs") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(ApiError::bad_request("logprobs must be a boolean", Some("logprobs"))),
    };
    let top = integer(&m, "top_logprobs")?;
    p.logprobs = match (want, top) {
        (_, Some(k)) if !(0..=MAX_TOP_LOGPROBS as i64).contains(&k) => {
            return Err(ApiError::bad_request(format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"), Some("top_logprobs")))
        }
        (false, Some(_)) => return Err(ApiError::bad_request("top_logprobs needs logprobs: true", Some("top_logprobs"))),
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, None) => None,
    };
    Ok(p)
}

/// The request body as a JSON object, and its `model`.
pub(crate) fn parse_object(body: &[u8]) -> Result<(Map<String, Value>, String), ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}"), None))?;
    let Value::Object(m) = v else {
        return Err(ApiError::bad_request("the request body must be a JSON object", None));
    };
    let model = match m.get("model") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(ApiError::bad_request("you must provide a model parameter", Some("model")))
        }
        Some(_) => return Err(ApiError::bad_request("model must be a string", Some("model"))),
    };
    Ok((m, model))
}

/// The sampling and output fields chat and text completions share (`messages` left empty).
/// `min_tokens` is the least `max_tokens` accepted (0 for an echoed text completion).
pub(crate) fn parse_sampling(m: &Map<String, Value>, model: String, min_tokens: i64) -> Result<ChatParams, ApiError> {
    let temperature = number(&m, "temperature")?;
    if let Some(t) = temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::bad_request(format!("temperature must be between 0 and 2, got {t}"), Some("temperature")));
        }
    }
    let top_p = number(&m, "top_p")?;
    if let Some(p) = top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::bad_request(format!("top_p must be in (0, 1], got {p}"), Some("top_p")));
        }
    }
    let max_tokens = match integer(&m, "max_completion_tokens")? {
        Some(n) => Some((n, "max_completion_tokens")),
        None => integer(&m, "max_tokens")?.map(|n| (n, "max_tokens")),
    };
    let max_tokens = match max_tokens {
        Some((n, name)) if n < min_tokens => {
            return Err(ApiError::bad_request(format!("{name} must be at least {min_tokens}, got {n}"), Some(name)))
        }
        Some((n, _)) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => None,
    };
    // OpenAI's seed is any 64-bit integer; a negative one keeps its bits.
    let seed = integer(&m, "seed")?.map(|s| s as u64);
    let stop = match m.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::bad_request("stop must be a string or an array of strings", Some("stop")))?,
        Some(Value::Array(_)) => return Err(ApiError::bad_request("stop takes at most 4 sequences", Some("stop"))),
        Some(_) => return Err(ApiError::bad_request("stop must be a string or an array of strings", Some("stop"))),
    };
    let stream = match m.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("stream must be a boolean", Some("stream"))),
    };
    let include_usage = m.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    let n = match integer(&m, "n")? {
        None => 1,
        Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
        Some(n) => return Err(ApiError::bad_request(format!("n must be between 1 and {MAX_N}, got {n}"), Some("n"))),
    };
    Ok(ChatParams {
        model,
        messages: Vec::new(),
        temperature: temperature.map(|t| t as f32),
        top_p: top_p.map(|p| p as f32),
        max_tokens,
        seed,
        stop,
        stream,
        include_usage,
        n,
        logprobs: None,
        prompt: None,
        echo: false,
    })
}

pub(crate) fn number(m: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(ApiError::bad_request(format!("{name} must be a number"), Some(name))),
    }
}

pub(crate) fn integer(m: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(u)) => Ok(Some(u as i64)),
            _ => Err(ApiError::bad_request(format!("{name} must be an integer, got {n}"), Some(name))),
        },
        Some(_) => Err(ApiError::bad_request(format!("{name} must be an integer"), Some(name))),
    }
}

fn parse_messages(v: Option<&Value>) -> Result<Vec<Message>, ApiError> {
    let bad = |msg: String| ApiError::bad_request(msg, Some("messages"));
    let list = match v {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Err(bad("you must provide a messages parameter".into())),
        Some(_) => return Err(bad("messages must be an array".into())),
    };
    if list.is_empty() {
        return Err(bad("messages must not be empty".into()));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| bad(format!("messages[{i}].role must be a string")))?;
        let role = match role {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => return Err(bad(format!("messages[{i}].role `{other}` is not supported (use system, developer, user or assistant)"))),
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => s.push_str(t),
                        _ => return Err(bad(format!("messages[{i}].content: only text parts are supported"))),
                    }
                }
                s
            }
            None | Some(Value::Null) if role == "assistant" => String::new(),
            _ => return Err(bad(format!("messages[{i}].content must be a string or an array of text parts"))),
        };
        out.push(Message { role: role.to_string(), content });
    }
    if out.last().is_some_and(|m| m.role != "user") {
        return Err(bad(format!("the last message must be from the user, got role `{}`", out[out.len() - 1].role)));
    }
    Ok(out)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// One proposer's tokens in the `moa` extension.
#[derive(Debug, Clone, Serialize)]
pub struct AgentUsage {
    pub model: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerUsage {
    pub layer: usize,
    pub agents: Vec<AgentUsage>,
}

/// The `moa` extension of a response: what the proposers spent (`usage` is the aggregator's).
#[derive(Debug, Clone, Serialize)]
pub struct MoaUsage {
    pub recipe: String,
    pub aggregator: String,
    pub seed: u64,
    pub layers: Vec<LayerUsage>,
    pub proposer_prompt_tokens: usize,
    pub proposer_completion_tokens: usize,
    pub notices: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<Value>,
    pub usage: &'a Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moa: Option<&'a MoaUsage>,
}

/// A `chat.completion.chunk` (the `choices` entry is built by the caller).
pub fn chunk(id: &str, created: u64, model: &str, choices: Value, extra: Option<(&str, Value)>) -> Value {
    let mut v = serde_json::json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
    });
    if let Some((k, x)) = extra {
        v[k] = x;
    }
    v
}

/// An error as OpenAI sends it, with its HTTP status (and `Retry-After` for 429).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }
    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self { param, ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    pub fn unknown_model(name: &str, known: &[String]) -> Self {
        let msg = format!("the model `{name}` does not exist on this server (available: {})", known.join(", "));
        Self { param: Some("model"), ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", msg) }.code("model_not_found")
    }
    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message).code("invalid_api_key")
    }
    pub fn queue_full(waiting: usize, retry_after: u64) -> Self {
        let msg = format!("the server is busy ({waiting} requests already waiting); retry in about {retry_after}s");
        Self { retry_after: Some(retry_after), ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", msg) }
            .code("rate_limit_exceeded")
    }

    pub fn body(&self) -> Value {
        serde_json::json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match &e {
            Error::ContextOverflow { .. } | Error::PromptTooLong { .. } => {
                Self { param: Some("messages"), ..Self::bad_request(e.to_string(), None) }.code("context_length_exceeded")
            }
            Error::InvalidRequest(_) => Self::bad_request(e.to_string(), None),
            Error::UnknownModel { .. } => {
                Self { param: Some("model"), ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", e.to_string()) }
            }
            Error::Cancelled => {
                Self::new(StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST), "invalid_request_error", e.to_string())
            }
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        parse_chat(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_a_full_request() {
        let p = parse_chat(
            br#"{"model":"moa","messages":[{"role":"developer","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}],
                "temperature":0.2,"top_p":0.9,"max_completion_tokens":7,"seed":-1,"stop":"\n","stream":true,
                "stream_options":{"include_usage":true},"user":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(p.messages, vec![Message::system("Be brief."), Message::user("Hi")]);
        assert_eq!(
            (p.max_tokens, p.seed, p.stop.clone(), p.stream, p.include_usage),
            (Some(7), Some(u64::MAX), vec!["\n".to_string()], true, true)
        );
    }

    #[test]
    fn bad_parameters_name_the_parameter() {
        assert_eq!(err("{").param, None);
        assert_eq!(err(r#"{"messages":[{"role":"user","content":"x"}]}"#).param, Some("model"));
        assert_eq!(err(r#"{"model":"m","messages":[]}"#).param, Some("messages"));
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#).param, Some("messages"));
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y"}]}"#).param,
            Some("messages")
        );
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":-1}"#).param, Some("temperature"));
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#).param, Some("max_tokens"));
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":[1]}"#).param, Some("stop"));
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":9}"#).param, Some("n"));
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":0}"#).param, Some("n"));
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_logprobs":2}"#).param, Some("top_logprobs"));
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":21}"#).param, Some("top_logprobs"));
        let p = parse_chat(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":3}"#).unwrap();
        assert_eq!(p.logprobs, Some(3));
    }
}
