//! The HTTP handlers. They authenticate, parse and validate, resolve the `model`, hand the job
//! to `worker::submit` (which admits it through the queue) and turn its events into an OpenAI
//! response: one JSON document, or server-sent `chat.completion.chunk` events ending with
//! `data: [DONE]`. A dropped response (the client went away) drops the job, which cancels it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};

use crate::model::Message;
use crate::server::openai::{chunk, parse_chat, ApiError, ChatCompletion, ChatParams};
use crate::server::completions::{self, parse_completion};
use crate::server::worker::{self, Finished, Job, JobEvent, Target, TokenInfo};
use crate::server::AppState;

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/chat/completions", post(chat))
        .route("/completions", post(completions))
        .route("/models", get(models))
        .route("/models/{id}", get(model))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}

async fn auth(State(s): St, req: Request, next: Next) -> Response {
    let Some(key) = &s.api_key else { return next.run(req).await };
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match given.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(k) if constant_time_eq(k.trim().as_bytes(), key.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::unauthorized("incorrect API key provided").into_response(),
        None => ApiError::unauthorized("missing API key: send `Authorization: Bearer KEY`").into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("no route for {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

async fn health(State(s): St) -> Json<Value> {
    Json(json!({"status": "ok", "queue": s.queue.stats(), "models": s.known(), "decode_loops": s.rt.decode_loops()}))
}

async fn metrics(State(s): St) -> Response {
    let text = crate::server::metrics::render(&s.queue.stats(), &s.rt.decode_loops());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn model_entry(s: &AppState, id: &str) -> Option<Value> {
    let base = |kind: Value| json!({"id": id, "object": "model", "created": s.started, "owned_by": "moa-local", "moa_local": kind});
    if let Some((_, r)) = s.recipes.iter().find(|(n, _)| n == id) {
        let layers: Vec<Vec<&str>> = r.layers.iter().map(|l| l.iter().map(|a| a.model.as_str()).collect()).collect();
        return Some(base(json!({"kind": "recipe", "proposer_layers": layers, "aggregator": r.aggregator.model})));
    }
    s.models.iter().find(|e| e.name == id).map(|e| {
        let file = e.path.file_name().map(|f| f.to_string_lossy().into_owned());
        base(json!({"kind": "model", "file": file, "context_length": e.context_length, "arch": e.arch}))
    })
}

async fn models(State(s): St) -> Json<Value> {
    let data: Vec<Value> = s.known().iter().filter_map(|id| model_entry(&s, id)).collect();
    Json(json!({"object": "list", "data": data}))
}

async fn model(State(s): St, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    model_entry(&s, &id).map(Json).ok_or_else(|| ApiError::unknown_model(&id, &s.known()))
}

async fn chat(State(s): St, body: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), "invalid_request_error", e.body_text()))?;
    let mut p = parse_chat(&body)?;
    let target = s.target(&p.model).ok_or_else(|| ApiError::unknown_model(&p.model, &s.known()))?;
    if let (Target::Moa { .. }, Some(_)) = (&target, p.top_p) {
        return Err(ApiError::bad_request(
            "top_p is not supported with a MoA recipe (its agents sample with the recipe's settings); use it with a single model",
            Some("top_p"),
        ));
    }
    if let (Target::Moa { .. }, true) = (&target, p.n > 1) {
        return Err(ApiError::bad_request("n > 1 is supported with a single model, not with a MoA recipe", Some("n")));
    }
    if let Some(sys) = &s.system {
        if !p.messages.iter().any(|m| m.role == "system") {
            p.messages.insert(0, Message::system(sys.clone()));
        }
    }
    respond(&s, target, p, Kind::Chat).await
}

/// `POST /v1/completions`: a prompt for one model, no chat template.
async fn completions(State(s): St, body: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), "invalid_request_error", e.body_text()))?;
    let p = parse_completion(&body)?;
    let target = s.target(&p.model).ok_or_else(|| ApiError::unknown_model(&p.model, &s.known()))?;
    if let Target::Moa { .. } = target {
        return Err(ApiError::bad_request(
            "text completions run one model (a MoA recipe answers a conversation); use /v1/chat/completions for a recipe",
            Some("model"),
        ));
    }
    respond(&s, target, p, Kind::Text).await
}

async fn respond(s: &AppState, target: Target, p: ChatParams, kind: Kind) -> Result<Response, ApiError> {
    let job = worker::submit(&s.rt, &s.queue, &s.models, target, p.clone(), s.defaults, s.moa_gate.clone()).await?;
    let meta = Meta { id: kind.id(), created: unix_now(), model: p.model.clone(), kind };
    if p.stream {
        Ok(Sse::new(sse(job, meta, p)).keep_alive(KeepAlive::new().interval(Duration::from_secs(5))).into_response())
    } else {
        complete(job, meta, &p).await
    }
}

/// Which API a response speaks.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn id(self) -> String {
        let prefix = if self == Kind::Chat { "chatcmpl" } else { "cmpl" };
        format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
    }
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

/// A chat choice's `logprobs`: OpenAI's `{"content": [...]}`.
fn chat_logprobs(tokens: &[TokenInfo]) -> Value {
    let entry = |t: &str, b: &[u8], lp: f32| json!({"token": t, "logprob": lp, "bytes": b});
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(&t.token, &t.bytes, t.logprob.unwrap_or(f32::NEG_INFINITY));
            e["top_logprobs"] = t.top.iter().map(|(s, b, lp)| entry(s, b, *lp)).collect();
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Wait for the whole answer. If the client goes away this future is dropped with the job.
async fn complete(mut job: Job, meta: Meta, p: &ChatParams) -> Result<Response, ApiError> {
    let mut texts: Vec<String> = Vec::new();
    let fin: Finished = loop {
        match job.events.recv().await {
            Some(JobEvent::Text(i, t)) => {
                if texts.len() <= i {
                    texts.resize(i + 1, String::new());
                }
                texts[i].push_str(&t);
            }
            Some(JobEvent::Done(f)) => break f,
            Some(JobEvent::Failed(e)) => return Err(e.into()),
            None => return Err(ApiError::from(crate::Error::Other("the job ended without an answer".into()))),
        }
    };
    texts.resize(texts.len().max(fin.finish_reasons.len()), String::new());
    let choices = match meta.kind {
        Kind::Text => completions::choices(texts, &fin, p),
        Kind::Chat => texts
            .into_iter()
            .enumerate()
            .map(|(i, text)| {
                let reason = fin.finish_reasons.get(i).copied().unwrap_or("stop");
                let lp = match (p.logprobs, fin.choices.get(i)) {
                    (Some(_), Some(c)) => chat_logprobs(&c.tokens),
                    _ => Value::Null,
                };
                json!({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": lp, "finish_reason": reason})
            })
            .collect(),
    };
    let body = ChatCompletion {
        id: &meta.id,
        object: if meta.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        created: meta.created,
        model: &meta.model,
        choices,
        usage: &fin.usage,
        moa: fin.moa.as_ref(),
    };
    Ok(Json(body).into_response())
}

enum Phase {
    Start,
    Echo(String),
    Body,
    Tail(Vec<Event>),
}

/// The streamed answer: a first chunk with the role, content deltas as they come, a final chunk
/// with `finish_reason` (and the `moa` extension), a usage chunk when asked for, `[DONE]`.
/// The job lives in the stream's state: when the client goes away the stream is dropped, and
/// with it the job, which cancels the run.
fn sse(job: Job, meta: Meta, p: ChatParams) -> impl Stream<Item = Result<Event, Infallible>> {
    let (include_usage, n) = (p.include_usage, p.n.max(1));
    let data = |v: Value| Event::default().data(v.to_string());
    // Text completions have no role chunk; an echo (the prompt string) leads the text.
    let start = match (&meta.kind, p.echo, &p.prompt) {
        (Kind::Text, true, Some(crate::model::Prompt::Raw(s))) => Phase::Echo(s.clone()),
        (Kind::Text, _, _) => Phase::Body,
        _ => Phase::Start,
    };
    let p = std::sync::Arc::new(p);
    stream::unfold((job, meta, start), move |(mut job, meta, phase)| {
        let p = p.clone();
        async move {
            let text_kind = meta.kind == Kind::Text;
            let object = if text_kind { "text_completion" } else { "chat.completion.chunk" };
            let ch = |choices: Value, extra: Option<(&str, Value)>| {
                let mut v = chunk(&meta.id, meta.created, &meta.model, choices, extra);
                v["object"] = object.into();
                data(v)
            };
            // A choice's delta: chat's `delta.content`, text completion's `text`.
            let delta = |i: usize, t: Option<&str>, reason: Option<&str>| match (text_kind, t) {
                (true, t) => json!({"index": i, "text": t.unwrap_or(""), "logprobs": null, "finish_reason": reason}),
                (false, Some(t)) => json!({"index": i, "delta": {"content": t}, "logprobs": null, "finish_reason": reason}),
                (false, None) => json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": reason}),
            };
            match phase {
                Phase::Echo(text) => Some((Ok(ch(json!([delta(0, Some(&text), None)]), None)), (job, meta, Phase::Body))),
                Phase::Start => {
                    let roles: Vec<Value> =
                        (0..n).map(|i| json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})).collect();
                    let first = ch(json!(roles), None);
                    Some((Ok(first), (job, meta, Phase::Body)))
                }
                Phase::Body => loop {
                    let ev = match job.events.recv().await {
                        Some(JobEvent::Text(_, t)) if t.is_empty() => continue,
                        Some(JobEvent::Text(i, t)) => ch(json!([delta(i, Some(&t), None)]), None),
                        Some(JobEvent::Done(f)) => {
                            let moa = f.moa.as_ref().map(|m| ("moa", json!(m)));
                            // Each choice's token log-probabilities come with its last chunk.
                            let ends: Vec<Value> = f
                                .finish_reasons
                                .iter()
                                .enumerate()
                                .map(|(i, r)| {
                                    let mut d = delta(i, None, Some(r));
                                    d["logprobs"] = match (text_kind, p.logprobs, f.choices.get(i)) {
                                        (true, _, _) => crate::server::completions::legacy_logprobs(&f, &p, i),
                                        (false, Some(_), Some(c)) => chat_logprobs(&c.tokens),
                                        _ => Value::Null,
                                    };
                                    d
                                })
                                .collect();
                            let last = ch(json!(ends), moa.clone());
                            let mut tail = vec![Event::default().data("[DONE]")];
                            if include_usage {
                                let mut u = chunk(&meta.id, meta.created, &meta.model, json!([]), Some(("usage", json!(f.usage))));
                                if let Some((k, v)) = moa {
                                    u[k] = v;
                                }
                                tail.push(data(u));
                            }
                            break Some((Ok(last), (job, meta, Phase::Tail(tail))));
                        }
                        Some(JobEvent::Failed(e)) => {
                            let err = ApiError::from(e);
                            break Some((Ok(data(err.body())), (job, meta, Phase::Tail(vec![Event::default().data("[DONE]")]))));
                        }
                        None => break None,
                    };
                    break Some((Ok(ev), (job, meta, Phase::Body)));
                },
                Phase::Tail(mut rest) => rest.pop().map(|e| (Ok(e), (job, meta, Phase::Tail(rest)))),
            }
        }
    })
}
