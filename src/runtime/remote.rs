//! Remote agents: any OpenAI-compatible endpoint (vLLM, llama-server, Ollama, another
//! `moa-local serve`) as a MoA agent beside the local models. A spec is a URL,
//! `http://host:8000/v1#MODEL` (after `#`, the remote model id; without it the endpoint's only
//! model from `GET /v1/models`). Answers stream (`stream: true`, SSE), token counts come from the
//! final `usage` chunk, and faults are handled the way a client of a shared server must:
//! connect and overall timeouts, retries with exponential backoff and jitter on 429, 5xx and
//! connection errors (honouring `Retry-After`) as long as nothing has streamed yet, and at most
//! `max_concurrency` requests in flight per endpoint. The API key comes from the environment
//! (`MOA_REMOTE_API_KEY`, or the variable a recipe's endpoint names) and never appears in an
//! error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::engine::Control;
use crate::error::{Error, Result};
use crate::model::Message;

/// The environment variable holding the bearer token sent to remote endpoints.
pub const API_KEY_ENV: &str = "MOA_REMOTE_API_KEY";

/// The longest stream line and the longest answer accepted from an endpoint: a server that sends
/// more is cut off with an error instead of growing this process's memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Whether a model spec names a remote endpoint.
pub fn is_remote(spec: &str) -> bool {
    spec.starts_with("http://") || spec.starts_with("https://")
}

/// How a remote endpoint is called (a recipe's `[endpoints.NAME]` table or inline endpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSettings {
    /// The environment variable holding its API key (default [`API_KEY_ENV`]).
    pub api_key_env: Option<String>,
    pub max_concurrency: Option<usize>,
    /// For a whole answer, all attempts included (default 600).
    pub timeout_secs: Option<u64>,
    /// How long the endpoint may stay silent (no headers yet, or no stream data) before the
    /// attempt is given up as stalled (default 120).
    pub read_timeout_secs: Option<u64>,
    /// Attempts per request, 1 = no retry (default 4).
    pub attempts: Option<usize>,
    /// The remote model's context in tokens, for endpoints whose `GET /models` does not report it.
    pub context_length: Option<usize>,
    /// A local model (catalog name or GGUF path) with the remote model's tokenizer and chat
    /// template: prompts are then counted and fitted exactly, and token counts the endpoint does
    /// not report are counted here.
    pub tokenizer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The API base, e.g. `http://10.0.0.5:8000/v1` (no trailing slash).
    pub base: String,
    /// The remote model id; None: the endpoint's only model.
    pub model: Option<String>,
}

impl Endpoint {
    pub fn parse(spec: &str) -> Result<Self> {
        if !is_remote(spec) {
            return Err(Error::InvalidRequest(format!("`{spec}` is not an http(s) URL")));
        }
        let (base, model) = match spec.split_once('#') {
            Some((b, m)) if !m.is_empty() => (b, Some(m.to_string())),
            Some((b, _)) => (b, None),
            None => (spec, None),
        };
        let base = base.trim_end_matches('/').to_string();
        if base.split("://").nth(1).is_none_or(|h| h.is_empty()) {
            return Err(Error::InvalidRequest(format!("remote model `{spec}`: the URL has no host")));
        }
        Ok(Self { base, model })
    }
}

/// Limits of remote calls.
#[derive(Debug, Clone, Copy)]
pub struct RemoteLimits {
    pub connect_timeout: Duration,
    /// For a whole answer (all attempts included).
    pub timeout: Duration,
    /// Attempts per request (1 = no retry).
    pub attempts: usize,
    pub max_concurrency: usize,
    /// Silence (before the headers, or between stream chunks) after which an attempt is stalled.
    pub read_timeout: Duration,
}

/// The context assumed for a remote model when neither its endpoint nor the recipe tells it (nor
/// a local tokenizer copy named by the recipe): references are fitted to it.
pub const DEFAULT_REMOTE_CONTEXT: usize = 8192;

impl Default for RemoteLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(600),
            attempts: 4,
            max_concurrency: 4,
            read_timeout: Duration::from_secs(120),
        }
    }
}

/// What one remote answer took.
#[derive(Debug, Clone, Default)]
pub struct RemoteReply {
    pub text: String,
    pub prompt_tokens: Option<usize>,
    pub completion_tokens: Option<usize>,
    pub finish_reason: Option<String>,
    /// From sending the request that answered to its first text, and to its end.
    pub ttft_secs: f64,
    pub secs: f64,
    /// Text pieces received (a count of tokens when the server sends no usage).
    pub pieces: usize,
    pub attempts: usize,
    /// Why each earlier attempt failed (they were retried).
    pub retried: Vec<String>,
}

/// The sampling settings an agent sends.
#[derive(Debug, Clone)]
pub struct RemoteRequest {
    pub messages: Vec<Message>,
    pub temperature: f32,
    pub max_tokens: usize,
    pub seed: u64,
}

pub struct RemoteClient {
    http: reqwest::Client,
    limits: RemoteLimits,
    /// In-flight caps per endpoint base.
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// A recipe's settings per endpoint base (its key variable, cap, timeout).
    settings: Mutex<HashMap<String, EndpointSettings>>,
    /// Context lengths the endpoints reported, by (base, model).
    contexts: Mutex<HashMap<(String, String), Option<usize>>>,
    /// The only model of endpoints named without one, by base.
    model_ids: Mutex<HashMap<String, String>>,
}

/// A failed attempt: retried or final.
enum Failure {
    Retry(String, Option<Duration>),
    Final(String),
}

impl RemoteClient {
    pub fn new(limits: RemoteLimits) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(limits.connect_timeout)
            .build()
            .map_err(|e| Error::Other(format!("starting the HTTP client: {e}")))?;
        Ok(Self {
            http,
            limits,
            slots: Mutex::new(HashMap::new()),
            settings: Mutex::new(HashMap::new()),
            contexts: Mutex::new(HashMap::new()),
            model_ids: Mutex::new(HashMap::new()),
        })
    }

    /// Use `s` for the endpoint at `base` (a recipe's `[endpoints]` entry).
    pub fn configure(&self, base: &str, s: &EndpointSettings) {
        let base = base.trim_end_matches('/').to_string();
        let mut g = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        if g.get(&base) != Some(s) {
            // A new cap takes effect for the requests that follow.
            self.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(&base);
            g.insert(base, s.clone());
        }
    }

    /// The settings a recipe gave the endpoint (defaults where none).
    pub fn setting(&self, ep: &Endpoint) -> EndpointSettings {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).get(&ep.base).cloned().unwrap_or_default()
    }

    fn slot(&self, ep: &Endpoint) -> Arc<Semaphore> {
        let cap = self.setting(ep).max_concurrency.unwrap_or(self.limits.max_concurrency).max(1);
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.entry(ep.base.clone()).or_insert_with(|| Arc::new(Semaphore::new(cap))).clone()
    }

    /// The bearer token: from the endpoint's `api_key_env`, else [`API_KEY_ENV`].
    fn auth(&self, ep: &Endpoint, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let var = self.setting(ep).api_key_env.unwrap_or_else(|| API_KEY_ENV.to_string());
        match std::env::var(var).ok().filter(|k| !k.is_empty()) {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// `GET /models` of the endpoint: its `data` entries.
    async fn list_models(&self, ep: &Endpoint) -> Result<Vec<Value>> {
        let url = format!("{}/models", ep.base);
        let fail = |why: String| Error::Other(format!("remote endpoint {}: {why}", ep.base));
        let r = self.auth(ep, self.http.get(&url)).timeout(self.limits.connect_timeout * 3).send().await.map_err(|e| fail(describe(&e)))?;
        let status = r.status();
        if !status.is_success() {
            return Err(fail(format!("GET /models answered HTTP {}", status.as_u16())));
        }
        let v: Value = r.json().await.map_err(|e| fail(format!("GET /models: {}", describe(&e))))?;
        Ok(v["data"].as_array().cloned().unwrap_or_default())
    }

    /// The model id requests name: the spec's, else the endpoint's only model.
    pub async fn model_id(&self, ep: &Endpoint) -> Result<String> {
        if let Some(m) = &ep.model {
            return Ok(m.clone());
        }
        if let Some(m) = self.model_ids.lock().unwrap_or_else(|p| p.into_inner()).get(&ep.base) {
            return Ok(m.clone());
        }
        let ids = ids_of(&self.list_models(ep).await?);
        let fail = |why: String| Error::Other(format!("remote endpoint {}: {why}", ep.base));
        match ids.as_slice() {
            [one] => {
                self.model_ids.lock().unwrap_or_else(|p| p.into_inner()).insert(ep.base.clone(), one.clone());
                Ok(one.clone())
            }
            [] => Err(fail("GET /models lists no model".into())),
            many => Err(fail(format!("it serves {} models ({}); name one after `#` in the URL", many.len(), many.join(", ")))),
        }
    }

    /// What `plan` shows of an endpoint, asked now (nothing generated): the model id requests
    /// will name, which `GET /models` must list, and its context length where known.
    pub async fn check(&self, ep: &Endpoint) -> Result<(String, Option<usize>)> {
        let data = self.list_models(ep).await?;
        let listed = ids_of(&data);
        let id = self.model_id(ep).await?;
        let Some(entry) = data.iter().find(|m| m["id"].as_str() == Some(id.as_str())) else {
            return Err(Error::Other(format!("remote endpoint {}: GET /models does not list `{id}` (it lists: {})", ep.base, listed.join(", "))));
        };
        // The listing just read answers the context question too.
        let n = reported_context_of(entry);
        self.contexts.lock().unwrap_or_else(|p| p.into_inner()).insert((ep.base.clone(), id.clone()), n);
        Ok((id, n.or(self.setting(ep).context_length)))
    }

    /// The remote model's context length: where its `GET /models` entry tells it (vLLM's
    /// `max_model_len`, llama-server's `meta.n_ctx_train`, moa-local's `moa_local.context_length`,
    /// or a plain `context_length`; asked once per endpoint and model), else the recipe's setting.
    pub async fn context_length(&self, ep: &Endpoint) -> Option<usize> {
        let reported = self.reported_context(ep).await;
        reported.or(self.setting(ep).context_length)
    }

    async fn reported_context(&self, ep: &Endpoint) -> Option<usize> {
        let model = self.model_id(ep).await.ok()?;
        let key = (ep.base.clone(), model.clone());
        if let Some(c) = self.contexts.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return *c;
        }
        let data = self.list_models(ep).await.ok()?;
        let n = reported_context_of(data.iter().find(|m| m["id"].as_str() == Some(model.as_str()))?);
        self.contexts.lock().unwrap_or_else(|p| p.into_inner()).insert(key, n);
        n
    }

    /// One streamed chat completion; `on_text` sees each piece and may stop the answer.
    pub async fn chat(&self, ep: &Endpoint, req: &RemoteRequest, on_text: &mut (dyn FnMut(&str) -> Control + Send)) -> Result<RemoteReply> {
        let model = self.model_id(ep).await?;
        let _slot = self.slot(ep).acquire_owned().await.map_err(|_| Error::Other("remote slots closed".into()))?;
        let body = json!({
            "model": model,
            "messages": req.messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": req.temperature,
            "max_tokens": req.max_tokens,
            "seed": req.seed,
        });
        let set = self.setting(ep);
        let timeout = set.timeout_secs.map_or(self.limits.timeout, Duration::from_secs);
        let silence = set.read_timeout_secs.map_or(self.limits.read_timeout, Duration::from_secs);
        let attempts = set.attempts.unwrap_or(self.limits.attempts).max(1);
        let deadline = Instant::now() + timeout;
        let name = format!("remote {}#{model}", ep.base);
        let mut retried: Vec<String> = Vec::new();
        for attempt in 1..=attempts {
            let mut reply = RemoteReply { attempts: attempt, ..Default::default() };
            match self.attempt(ep, &body, deadline, silence, &mut reply, on_text).await {
                Ok(()) => {
                    reply.retried = retried;
                    return Ok(reply);
                }
                Err(Failure::Final(why)) => return Err(Error::Other(format!("{name}: {why}"))),
                Err(Failure::Retry(why, after)) => {
                    retried.push(why);
                    if attempt == attempts {
                        break;
                    }
                    let backoff = Duration::from_millis(250u64 << (attempt - 1).min(6));
                    let jitter = backoff.mul_f64(rand::random::<f64>() * 0.5);
                    let wait = after.unwrap_or(backoff + jitter).min(Duration::from_secs(30));
                    if Instant::now() + wait >= deadline {
                        break;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
        let n = retried.len();
        let last = retried.pop().unwrap_or_default();
        Err(Error::Other(format!("{name}: {last} (after {n} attempt{})", if n == 1 { "" } else { "s" })))
    }

    async fn attempt(
        &self,
        ep: &Endpoint,
        body: &Value,
        deadline: Instant,
        silence: Duration,
        reply: &mut RemoteReply,
        on_text: &mut (dyn FnMut(&str) -> Control + Send),
    ) -> std::result::Result<(), Failure> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Final("timed out (the answer's time limit is spent)".into()));
        }
        let t0 = Instant::now();
        let send = self.auth(ep, self.http.post(format!("{}/chat/completions", ep.base))).json(body).timeout(left).send();
        let wait = silence.min(left);
        let r = match tokio::time::timeout(wait, send).await {
            Err(_) if wait < left => return Err(Failure::Retry(format!("stalled: no response for {wait:?}"), None)),
            Err(_) => return Err(Failure::Final("timed out (the answer's time limit is spent)".into())),
            Ok(r) => r,
        };
        let r = match r {
            Ok(r) => r,
            Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => return Err(Failure::Retry(describe(&e), None)),
            Err(e) => return Err(Failure::Final(describe(&e))),
        };
        let status = r.status().as_u16();
        if status != 200 {
            let after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
            let text = r.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["error"]["message"].as_str().map(String::from)).unwrap_or_default();
            let why = format!("HTTP {status}{}", if msg.is_empty() { String::new() } else { format!(": {}", clip(&msg)) });
            return Err(if status == 429 || status >= 500 { Failure::Retry(why, after) } else { Failure::Final(why) });
        }
        let mut stream = r.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = silence.min(left);
            let next = match tokio::time::timeout(wait, stream.next()).await {
                Ok(n) => n,
                Err(_) if wait < left && reply.pieces == 0 => {
                    return Err(Failure::Retry(format!("stalled: no data for {wait:?}"), None))
                }
                Err(_) if wait < left => {
                    return Err(Failure::Final(format!("the stream stalled after {} pieces (no data for {wait:?})", reply.pieces)))
                }
                Err(_) => return Err(Failure::Final(format!("timed out after {} pieces (the answer's time limit is spent)", reply.pieces))),
            };
            let chunk = match next {
                None => break,
                Some(Ok(c)) => c,
                Some(Err(e)) if reply.pieces == 0 => return Err(Failure::Retry(describe(&e), None)),
                Some(Err(e)) => return Err(Failure::Final(format!("the stream broke after {} pieces: {}", reply.pieces, describe(&e)))),
            };
            buf.extend_from_slice(&chunk);
            if buf.len() > MAX_LINE_BYTES && !buf.contains(&b'\n') {
                return Err(Failure::Final(format!("a stream line is longer than {MAX_LINE_BYTES} bytes")));
            }
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim().strip_prefix("data:") else { continue };
                let data = data.trim();
                if data == "[DONE]" {
                    reply.secs = t0.elapsed().as_secs_f64();
                    return Ok(());
                }
                let v: Value = serde_json::from_str(data).map_err(|e| Failure::Final(format!("a stream chunk is not JSON ({e})")))?;
                if let Some(e) = v.get("error") {
                    return Err(Failure::Final(format!("error in the stream: {}", clip(&e.to_string()))));
                }
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    reply.prompt_tokens = u["prompt_tokens"].as_u64().map(|n| n as usize);
                    reply.completion_tokens = u["completion_tokens"].as_u64().map(|n| n as usize);
                }
                let choice = &v["choices"][0];
                if let Some(f) = choice["finish_reason"].as_str() {
                    reply.finish_reason = Some(f.to_string());
                }
                if let Some(piece) = choice["delta"]["content"].as_str().filter(|p| !p.is_empty()) {
                    if reply.pieces == 0 {
                        reply.ttft_secs = t0.elapsed().as_secs_f64();
                    }
                    reply.pieces += 1;
                    if reply.text.len() + piece.len() > MAX_ANSWER_BYTES {
                        return Err(Failure::Final(format!("the answer is longer than {MAX_ANSWER_BYTES} bytes")));
                    }
                    reply.text.push_str(piece);
                    if on_text(piece) == Control::Stop {
                        reply.finish_reason = Some("cancelled".into());
                        reply.secs = t0.elapsed().as_secs_f64();
                        return Ok(());
                    }
                }
            }
        }
        reply.secs = t0.elapsed().as_secs_f64();
        if reply.pieces == 0 {
            return Err(Failure::Retry("the stream ended without an answer".into(), None));
        }
        Ok(())
    }
}

/// The context a `GET /models` entry reports: vLLM's `max_model_len`, llama-server's
/// `meta.n_ctx_train`, moa-local's `moa_local.context_length`, or a plain `context_length`.
fn reported_context_of(entry: &Value) -> Option<usize> {
    ["/max_model_len", "/meta/n_ctx_train", "/moa_local/context_length", "/context_length"]
        .iter()
        .find_map(|p| entry.pointer(p).and_then(Value::as_u64))
        .map(|n| n as usize)
}

fn ids_of(data: &[Value]) -> Vec<String> {
    data.iter().filter_map(|m| m["id"].as_str().map(String::from)).collect()
}

/// An HTTP client error without the request's headers (where the key is).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = src {
        detail = s.to_string();
        src = s.source();
    }
    if detail.is_empty() { kind.to_string() } else { format!("{kind} ({})", clip(&detail)) }
}

fn clip(s: &str) -> String {
    let mut t: String = s.chars().take(300).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_into_base_and_model() {
        let e = Endpoint::parse("http://10.0.0.5:8000/v1/#Qwen2.5-72B-Instruct").unwrap();
        assert_eq!(e, Endpoint { base: "http://10.0.0.5:8000/v1".into(), model: Some("Qwen2.5-72B-Instruct".into()) });
        assert_eq!(Endpoint::parse("https://h/v1").unwrap().model, None);
        assert!(Endpoint::parse("http://").is_err());
        assert!(!is_remote("qwen-coder") && is_remote("https://x/v1"));
    }
}
