//! `moa-local serve` end to end on the real test models (qwen-coder + smollm2, tiny max_tokens):
//! an in-process server on 127.0.0.1 port 0, spoken to over loopback HTTP. Covers the OpenAI
//! response and stream shapes, usage and the `moa` extension, parameter validation, API keys,
//! unknown models, the queue limit (429 + Retry-After), cancellation when a client disconnects,
//! and concurrent requests.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use moa_local::moa::{Overrides, Recipe};
use moa_local::runtime::{DeviceSpec, Runtime};
use moa_local::server::{Server, ServerConfig};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

fn runtime() -> Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| Arc::new(Runtime::new(DeviceSpec::Cpu).unwrap())).clone()
}

struct TestServer {
    base: String,
    server: Server,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
    start_on(runtime(), configure).await
}

/// A server on its own runtime (counters no other test touches).
async fn start_on(rt: Arc<Runtime>, configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let o = Overrides {
        models: Some(vec!["qwen-coder".into(), "smollm2".into()]),
        layers: Some(2),
        temperature: Some(0.0),
        max_tokens: Some(4),
        ..Default::default()
    };
    let mut cfg = ServerConfig::new(Recipe::build(None, &o, &[]).unwrap());
    configure(&mut cfg);
    let server = Server::new(rt, cfg).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.clone().serve(listener, async move {
        let _ = rx.await;
    }));
    TestServer { base, server, _stop: tx }
}

fn chat_body(model: &str, prompt: &str, extra: Value) -> Value {
    let mut b = json!({"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "seed": 1});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

async fn post(s: &TestServer, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = reqwest::Client::new().post(format!("{}/v1/chat/completions", s.base)).json(body).send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, v)
}

/// Every `data:` payload of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n").filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_string)).collect()
}

fn assert_error(v: &Value, kind: &str, param: Option<&str>) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(e["type"], kind, "{v}");
    assert!(e.as_object().unwrap().contains_key("code"), "{v}");
    assert_eq!(e["param"], param.map_or(Value::Null, |p| json!(p)), "{v}");
}

/// Wait until nothing runs or waits; returns the queue stats.
async fn wait_idle(s: &TestServer, limit: Duration) -> Value {
    let t = Instant::now();
    loop {
        let st = s.server.stats();
        if st.running == 0 && st.waiting == 0 {
            return serde_json::to_value(st).unwrap();
        }
        assert!(t.elapsed() < limit, "still busy after {limit:?}: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_running(s: &TestServer) {
    let t = Instant::now();
    while s.server.stats().running == 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "the run never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const LONG: &str = "Write the numbers from 1 to 3000 in words, one per line, and nothing else.";

/// Open a streaming request with a large max_tokens and return its byte stream once the first
/// content delta has arrived.
async fn stream_until_content(s: &TestServer, model: &str) -> impl Sized {
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&chat_body(model, LONG, json!({"stream": true, "max_tokens": 3000})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || !seen.split("\"content\":\"").skip(1).any(|s| !s.starts_with('"')) {
        let piece = body.next().await.expect("stream ended before any content").unwrap();
        seen.push_str(&String::from_utf8_lossy(&piece));
    }
    (client, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moa_completion_has_openai_shape_usage_and_proposer_tokens() {
    let s = start(|_| {}).await;
    let (status, _, v) = post(&s, &chat_body("moa", "Name a primary color.", json!({"max_tokens": 3}))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "moa");
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert!(!c["message"]["content"].as_str().unwrap().is_empty(), "{v}");
    assert!(matches!(c["finish_reason"].as_str(), Some("stop" | "length")), "{v}");
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 20, "the aggregator's prompt holds the references: {v}");
    assert!((1..=3).contains(&u["completion_tokens"].as_u64().unwrap()), "{v}");
    assert_eq!(u["total_tokens"].as_u64(), Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()));
    let m = &v["moa"];
    assert_eq!(m["aggregator"], "qwen-coder");
    let agents = m["layers"][0]["agents"].as_array().unwrap();
    assert_eq!(agents.iter().map(|a| a["model"].as_str().unwrap()).collect::<Vec<_>>(), ["qwen-coder", "smollm2"]);
    assert!(agents.iter().all(|a| a["prompt_tokens"].as_u64().unwrap() > 0 && a["completion_tokens"].as_u64().unwrap() <= 3), "{v}");
    let sum: u64 = agents.iter().map(|a| a["completion_tokens"].as_u64().unwrap()).sum();
    assert_eq!(m["proposer_completion_tokens"].as_u64(), Some(sum));

    // A single model alone: no `moa` extension; max_completion_tokens is honoured.
    let (status, _, v) = post(&s, &chat_body("smollm2", "Say hi.", json!({"max_completion_tokens": 2}))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "smollm2");
    assert!(v.get("moa").is_none());
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moa_streams_chunks_and_done_and_honours_stop() {
    let s = start(|_| {}).await;
    let body =
        chat_body("moa", "Name a primary color.", json!({"max_tokens": 6, "stream": true, "stream_options": {"include_usage": true}}));
    let r = reqwest::Client::new().post(format!("{}/v1/chat/completions", s.base)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let data = sse_data(&r.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(!text.is_empty(), "{data:?}");
    let finals: Vec<&Value> = chunks.iter().filter(|c| c["choices"][0]["finish_reason"].is_string()).collect();
    assert_eq!(finals.len(), 1, "{data:?}");
    assert_eq!(finals[0]["moa"]["layers"][0]["agents"].as_array().unwrap().len(), 2);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() >= 1);

    // Greedy everywhere, so the same request again gives the same text; cut it with a stop string.
    let (_, _, v) = post(&s, &chat_body("moa", "Name a primary color.", json!({"max_tokens": 6}))).await;
    let full = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(full, text, "the stream and the plain answer agree");
    if full.chars().count() >= 4 {
        let stop: String = full.chars().skip(2).take(2).collect();
        let (status, _, v) = post(&s, &chat_body("moa", "Name a primary color.", json!({"max_tokens": 6, "stop": [stop.clone()]}))).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["choices"][0]["message"]["content"].as_str().unwrap(), &full[..full.find(&stop).unwrap()]);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors() {
    let s = start(|_| {}).await;
    let client = reqwest::Client::new();
    let r = client.post(format!("{}/v1/chat/completions", s.base)).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_error(&r.json().await.unwrap(), "invalid_request_error", None);

    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (json!({"model": "moa", "messages": user, "temperature": -1}), "temperature"),
        (json!({"model": "moa", "messages": user, "temperature": "hot"}), "temperature"),
        (json!({"model": "moa", "messages": []}), "messages"),
        (json!({"model": "moa"}), "messages"),
        (json!({"model": "moa", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}), "messages"),
        (json!({"model": "moa", "messages": [{"role": "wizard", "content": "hi"}]}), "messages"),
        (json!({"model": "moa", "messages": user, "max_tokens": 0}), "max_tokens"),
        (json!({"model": "moa", "messages": user, "top_p": 0.5}), "top_p"),
        (json!({"model": "smollm2", "messages": user, "top_p": 1.5}), "top_p"),
        (json!({"messages": user}), "model"),
    ];
    for (body, param) in cases {
        let (status, _, v) = post(&s, &body).await;
        assert_eq!(status, 400, "{body} → {v}");
        assert_error(&v, "invalid_request_error", Some(param));
    }

    // Prompt too long: a 400 that names the limit, before anything runs.
    for model in ["moa", "smollm2"] {
        let (status, _, v) = post(&s, &chat_body(model, "hi", json!({"max_tokens": 1_000_000}))).await;
        assert_eq!(status, 400, "{v}");
        assert_error(&v, "invalid_request_error", Some("messages"));
        assert_eq!(v["error"]["code"], "context_length_exceeded");
        assert!(v["error"]["message"].as_str().unwrap().contains("context length of"), "{v}");
    }

    let (status, _, v) = post(&s, &chat_body("gpt-4o", "hi", json!({}))).await;
    assert_eq!(status, 404);
    assert_error(&v, "invalid_request_error", Some("model"));
    assert_eq!(v["error"]["code"], "model_not_found");
    let r = client.get(format!("{}/v1/nothing", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_error(&r.json().await.unwrap(), "invalid_request_error", None);
    assert_eq!(s.server.stats().completed, 0, "no invalid request ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_when_set() {
    let tiny = Recipe::build(None, &Overrides { models: Some(vec!["smollm2".into(); 2]), max_tokens: Some(2), ..Default::default() }, &[])
        .unwrap();
    let s = start(|c| {
        c.api_key = Some("sekrit".into());
        c.recipes.insert("tiny".into(), tiny);
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/models", s.base);
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_error(&r.json().await.unwrap(), "invalid_request_error", None);
    let r = client.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&chat_body("smollm2", "hi", json!({"max_tokens": 1})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client.get(&url).bearer_auth("sekrit").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["moa", "tiny", "qwen-coder", "smollm2"]);
    assert_eq!(v["data"][1]["moa_local"]["proposer_layers"], json!([["smollm2", "smollm2"]]));
    // A named recipe is a model too.
    let r = client
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth("sekrit")
        .json(&chat_body("tiny", "hi", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["model"].as_str(), v["moa"]["recipe"].as_str(), v["moa"]["aggregator"].as_str()),
        (Some("tiny"), Some("tiny"), Some("smollm2"))
    );
    let r = client
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth("sekrit")
        .json(&chat_body("smollm2", "hi", json!({"max_tokens": 1})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(client.get(format!("{}/health", s.base)).send().await.unwrap().status(), 200, "health needs no key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let s = start(|c| {
        c.queue = 0;
        c.concurrency = 1;
    })
    .await;
    let held = stream_until_content(&s, "qwen-coder").await;
    assert_eq!(s.server.stats().running, 1);
    let (status, headers, v) = post(&s, &chat_body("smollm2", "hi", json!({"max_tokens": 1}))).await;
    assert_eq!(status, 429, "{v}");
    assert_error(&v, "rate_limit_error", None);
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    drop(held);
    wait_idle(&s, Duration::from_secs(30)).await;
    let (status, _, v) = post(&s, &chat_body("smollm2", "hi", json!({"max_tokens": 1}))).await;
    assert_eq!(status, 200, "the queue takes requests again: {v}");
    assert_eq!(s.server.stats().rejected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_generation() {
    let s = start(|_| {}).await;
    // Streaming: drop the connection after the first content chunk.
    let t = Instant::now();
    let held = stream_until_content(&s, "qwen-coder").await;
    drop(held);
    let st = wait_idle(&s, Duration::from_secs(20)).await;
    assert_eq!(st["cancelled"], 1, "{st}");
    assert_eq!(st["completed"], 0, "{st}");
    eprintln!("streaming run cancelled {:?} after it started", t.elapsed());

    // Non-streaming: the client sends its request and closes the connection while it runs.
    let mut conn = tokio::net::TcpStream::connect(s.base.trim_start_matches("http://")).await.unwrap();
    let body = chat_body("qwen-coder", LONG, json!({"max_tokens": 3000})).to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    wait_running(&s).await;
    drop(conn);
    let st = wait_idle(&s, Duration::from_secs(20)).await;
    assert_eq!(st["cancelled"], 2, "{st}");

    // The server is free again: the next request is served at once.
    let (status, _, v) = post(&s, &chat_body("smollm2", "hi", json!({"max_tokens": 2}))).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_all_answered() {
    let s = Arc::new(start(|c| c.queue = 8).await);
    let bodies = [
        chat_body("moa", "Name a fruit.", json!({"max_tokens": 3})),
        chat_body("smollm2", "Name a fruit.", json!({"max_tokens": 3})),
        chat_body("qwen-coder", "Name a fruit.", json!({"max_tokens": 3})),
        chat_body("moa", "Name a tree.", json!({"max_tokens": 3, "seed": 5})),
        chat_body("smollm2", "Name a tree.", json!({"max_tokens": 3, "stream": true})),
    ];
    let mut tasks = Vec::new();
    for b in bodies {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new().post(format!("{}/v1/chat/completions", s.base)).json(&b).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (status, text) = t.await.unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("\"content\":\"") && (text.contains("chat.completion") || text.ends_with("[DONE]\n\n")), "{text}");
    }
    let st = wait_idle(&s, Duration::from_secs(10)).await;
    assert_eq!(st["completed"], 5, "{st}");
    let health: Value = reqwest::get(format!("{}/health", s.base)).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_long_prompts_are_refused_by_their_bytes() {
    let s = start(|c| c.max_body_bytes = 64 << 10).await;
    // Past --max-body: 413 in OpenAI's shape, before the body is read in full.
    let (status, _, v) = post(&s, &chat_body("smollm2", &"word ".repeat(20_000), json!({"max_tokens": 1}))).await;
    assert_eq!(status, 413, "{v}");
    assert_error(&v, "invalid_request_error", None);
    // Within it, but more bytes than the context's tokens could hold even if each were the
    // vocabulary's longest: a 400 naming the bytes and the context, without tokenizing.
    let s = start(|c| c.max_body_bytes = 32 << 20).await;
    let long = "x".repeat(24 << 20);
    let t = Instant::now();
    let (status, _, v) = post(&s, &chat_body("smollm2", &long, json!({"max_tokens": 1}))).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("prompt of {} bytes", long.len())) && msg.contains("context length of"), "{msg}");
    println!("24 MiB prompt refused in {:?}", t.elapsed());
    assert_eq!(s.server.stats().completed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_moa_runs_and_requests_batch_and_answer_as_alone() {
    // Two MoA runs at once (their agents share the model decode loops with a single-model
    // request) give the answers each gives alone: seeded, so every agent's tokens are fixed.
    let s = Arc::new(start(|c| c.moa_concurrency = 2).await);
    let bodies = [
        chat_body("moa", "Name a fruit.", json!({"max_tokens": 8, "seed": 3})),
        chat_body("moa", "Name a tree.", json!({"max_tokens": 8, "seed": 4})),
        chat_body("qwen-coder", "Name a river.", json!({"max_tokens": 8, "seed": 5})),
    ];
    let content = |v: &Value| v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let mut alone = Vec::new();
    for b in &bodies {
        let (status, _, v) = post(&s, b).await;
        assert_eq!(status, 200, "{v}");
        alone.push(content(&v));
    }
    let mut tasks = Vec::new();
    for b in bodies.clone() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { post(&s, &b).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, _, v) = t.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(content(&v), alone[i], "request {i}: the concurrent answer differs from the one alone");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_tokens_and_latencies_per_model() {
    let s = start_on(Arc::new(Runtime::new(DeviceSpec::Cpu).unwrap()), |_| {}).await;
    let (status, _, v) = post(&s, &chat_body("qwen-coder", "Name a fruit.", json!({"max_tokens": 6, "seed": 1}))).await;
    assert_eq!(status, 200, "{v}");
    let generated = v["usage"]["completion_tokens"].as_u64().unwrap();
    wait_idle(&s, Duration::from_secs(10)).await;
    let health: Value = reqwest::get(format!("{}/health", s.base)).await.unwrap().json().await.unwrap();
    let loops = health["decode_loops"].as_array().unwrap();
    assert_eq!(loops.len(), 1, "{health}");
    assert_eq!(loops[0]["finished"], 1);
    assert_eq!(loops[0]["running"], 0);
    let model = loops[0]["model"].as_str().unwrap().to_string();
    let r = reqwest::get(format!("{}/metrics", s.base)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text().await.unwrap();
    // Every sample line is `name{labels} value` with a numeric value, under a TYPE line.
    let mut samples = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (k, v) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let v: f64 = v.parse().unwrap_or_else(|_| panic!("non-numeric value in {line:?}"));
        let name = k.split('{').next().unwrap();
        let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
        assert!(text.contains(&format!("# TYPE {family} ")) || text.contains(&format!("# TYPE {name} ")), "{name} has no TYPE line");
        samples.insert(k.to_string(), v);
    }
    let m = |k: &str| samples.get(k).copied().unwrap_or_else(|| panic!("no sample {k}\n{text}"));
    assert_eq!(m("moa_requests_total{outcome=\"completed\"}"), 1.0);
    assert_eq!(m(&format!("moa_generated_tokens_total{{model=\"{model}\"}}")), generated as f64);
    assert_eq!(m(&format!("moa_time_to_first_token_seconds_count{{model=\"{model}\"}}")), 1.0);
    assert_eq!(m(&format!("moa_time_to_first_token_seconds_bucket{{model=\"{model}\",le=\"+Inf\"}}")), 1.0);
    assert!(m(&format!("moa_prompt_tokens_total{{model=\"{model}\"}}")) > 0.0);
    assert_eq!(m(&format!("moa_sequences_running{{model=\"{model}\"}}")), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_are_sampled_in_one_batch_with_consecutive_seeds() {
    let s = start(|_| {}).await;
    let body = |n: usize, seed: u64, stream: bool| {
        chat_body("qwen-coder", "Name a color.", json!({"max_tokens": 6, "temperature": 0.9, "seed": seed, "n": n, "stream": stream}))
    };
    let content = |v: &Value, i: usize| v["choices"][i]["message"]["content"].as_str().unwrap().to_string();
    let (status, _, three) = post(&s, &body(3, 40, false)).await;
    assert_eq!(status, 200, "{three}");
    let choices = three["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{three}");
    let mut completion = 0;
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert!(c["finish_reason"].is_string(), "{c}");
        // Choice i is what n = 1 with seed + i answers.
        let (_, _, one) = post(&s, &body(1, 40 + i as u64, false)).await;
        assert_eq!(content(&one, 0), content(&three, i), "choice {i}");
        completion += one["usage"]["completion_tokens"].as_u64().unwrap();
    }
    assert_eq!(three["usage"]["completion_tokens"].as_u64().unwrap(), completion, "usage sums the choices");
    // One prefill for the three: the loop computes the prompt once (at most: the beginning it
    // shares with the earlier requests' kept caches, the chat template's, comes from a copy of
    // them) plus one position per choice, where three separate prefills compute the part not
    // shared three times (here 3 x 19 positions).
    let loop_prefilled = |h: &Value| h["decode_loops"].as_array().unwrap().iter().find(|l| l["model"].as_str().is_some_and(|m| m.contains("qwen"))).unwrap_or_else(|| panic!("{h}"))["prefilled_tokens"].as_u64().unwrap();
    let health = || async { reqwest::get(format!("{}/health", s.base)).await.unwrap().json::<Value>().await.unwrap() };
    let before = loop_prefilled(&health().await);
    let fresh = chat_body("qwen-coder", "Name a fruit that is yellow.", json!({"max_tokens": 4, "temperature": 0.9, "seed": 5, "n": 3}));
    let (_, _, again) = post(&s, &fresh).await;
    let prompt = again["usage"]["prompt_tokens"].as_u64().unwrap();
    let after = loop_prefilled(&health().await);
    assert!(after - before <= prompt + 3 + 4, "computed {} prompt positions in the loop for a {prompt}-token prompt", after - before);
    // Streaming: deltas of both choices, one final chunk with both finish reasons.
    let r = reqwest::Client::new().post(format!("{}/v1/chat/completions", s.base)).json(&body(2, 40, true)).send().await.unwrap();
    let text = r.text().await.unwrap();
    let chunks: Vec<Value> = sse_data(&text).iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect();
    let mut streamed = [String::new(), String::new()];
    for c in &chunks {
        for ch in c["choices"].as_array().unwrap() {
            let i = ch["index"].as_u64().unwrap() as usize;
            streamed[i] += ch["delta"]["content"].as_str().unwrap_or("");
        }
    }
    assert_eq!(streamed[0], content(&three, 0));
    assert_eq!(streamed[1], content(&three, 1));
    let last = chunks.last().unwrap()["choices"].as_array().unwrap().clone();
    assert_eq!(last.len(), 2);
    assert!(last.iter().all(|c| c["finish_reason"].is_string()), "{last:?}");
    // A recipe answers one choice: n > 1 is a 400 naming n.
    let (status, _, v) = post(&s, &chat_body("moa", "hi", json!({"n": 2}))).await;
    assert_eq!(status, 400, "{v}");
    assert_error(&v, "invalid_request_error", Some("n"));
}

async fn post_completion(s: &TestServer, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(format!("{}/v1/completions", s.base)).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// Text completions: a token-id prompt echoed with `logprobs` and `max_tokens: 0` (how
/// lm-evaluation-harness scores a continuation) gives each answer token the log-probability the
/// generation itself reported for it; the generation's own logprobs are the model's (the greedy
/// token is the most likely one); text and token-id prompts give the same answer; bad parameters
/// are 400s that name them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_completions_score_like_generation_and_name_bad_parameters() {
    use moa_local::engine::{Control, SamplingParams};
    use moa_local::model::{GenerateRequest, Prompt};
    let s = start(|_| {}).await;
    let rt = runtime();
    let model = rt.load("smollm2").await.unwrap();
    let prompt = "The capital of France is";
    let mut req = GenerateRequest::new(Prompt::Raw(prompt.into()), 6, SamplingParams::greedy());
    req.logprobs = Some(3);
    let g = rt.generate_batched(model, req, None, |_| Control::Continue).await.unwrap();
    assert_eq!(g.logprobs.len(), g.ids.len());
    for (id, lp) in g.ids.iter().zip(&g.logprobs) {
        assert_eq!((lp.id, lp.top.len()), (*id, 3));
        assert_eq!(lp.top[0], (*id, lp.logprob), "greedy picks the most likely token and reports its log-probability");
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1) && lp.logprob <= 0.0);
    }

    let (status, v) = post_completion(&s, &json!({"model": "smollm2", "prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 3})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["object"].as_str(), v["choices"][0]["text"].as_str()), (Some("text_completion"), Some(g.text.as_str())));
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(g.prompt_ids.len() as u64));
    let lps: Vec<f64> = v["choices"][0]["logprobs"]["token_logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(lps, g.logprobs.iter().map(|l| l.logprob as f64).collect::<Vec<_>>());
    let (_, by_ids) = post_completion(&s, &json!({"model": "smollm2", "prompt": g.prompt_ids, "max_tokens": 6, "temperature": 0})).await;
    assert_eq!(by_ids["choices"][0]["text"], v["choices"][0]["text"], "token ids and text give the same answer");

    let all: Vec<u32> = g.prompt_ids.iter().chain(&g.ids).copied().collect();
    let (status, e) = post_completion(&s, &json!({"model": "smollm2", "prompt": [all], "max_tokens": 0, "echo": true, "logprobs": 1})).await;
    assert_eq!(status, 200, "{e}");
    let c = &e["choices"][0];
    let scored = c["logprobs"]["token_logprobs"].as_array().unwrap();
    assert_eq!(scored.len(), all.len());
    assert!(scored[0].is_null() && c["logprobs"]["top_logprobs"][0].is_null(), "the first token has no context: {c}");
    assert_eq!(e["usage"]["completion_tokens"].as_u64(), Some(0));
    let n = g.prompt_ids.len();
    for (j, lp) in g.logprobs.iter().enumerate() {
        let got = scored[n + j].as_f64().unwrap();
        assert!((got - lp.logprob as f64).abs() < 1e-2, "token {j}: scored {got}, generated {}", lp.logprob);
    }
    assert_eq!(c["text"].as_str(), Some(format!("{}{}", g.prompt_text, g.text).as_str()), "the echo leads the text");
    let offsets: Vec<u64> = c["logprobs"]["text_offset"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]) && offsets[0] == 0);

    let user = "hi";
    for (body, param) in [
        (json!({"model": "moa", "prompt": user}), "model"),
        (json!({"model": "smollm2"}), "prompt"),
        (json!({"model": "smollm2", "prompt": ["a", "b"]}), "prompt"),
        (json!({"model": "smollm2", "prompt": [1, -2]}), "prompt"),
        (json!({"model": "smollm2", "prompt": user, "logprobs": 6}), "logprobs"),
        (json!({"model": "smollm2", "prompt": user, "suffix": "x"}), "suffix"),
        (json!({"model": "smollm2", "prompt": user, "max_tokens": 0}), "max_tokens"),
    ] {
        let (status, v) = post_completion(&s, &body).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_error(&v, "invalid_request_error", Some(param));
    }
    let (status, v) = post_completion(&s, &json!({"model": "smollm2", "prompt": [99999999]})).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("vocabulary"), "{v}");
}

/// Streamed, each choice's token log-probabilities come with its last chunk and are the ones the
/// same request gets unstreamed: chat (`logprobs.content`) and text completions (the legacy
/// object, echoed prompt first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_logprobs_are_the_unstreamed_ones() {
    let s = start(|_| {}).await;
    let streamed = |url: &'static str, body: Value| {
        let base = s.base.clone();
        async move {
            let r = reqwest::Client::new().post(format!("{base}{url}")).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let data = sse_data(&r.text().await.unwrap());
            let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
            let with: Vec<&Value> = chunks.iter().filter(|c| !c["choices"][0]["logprobs"].is_null()).collect();
            assert_eq!(with.len(), 1, "one chunk carries them: {chunks:?}");
            assert!(with[0]["choices"][0]["finish_reason"].is_string());
            with[0]["choices"][0]["logprobs"].clone()
        }
    };
    let chat = chat_body("smollm2", "Say hi.", json!({"max_tokens": 5, "logprobs": true, "top_logprobs": 2}));
    let (_, _, plain) = post(&s, &chat).await;
    let mut sc = chat.clone();
    sc["stream"] = json!(true);
    assert_eq!(streamed("/v1/chat/completions", sc).await, plain["choices"][0]["logprobs"]);
    assert_eq!(plain["choices"][0]["logprobs"]["content"].as_array().unwrap().len(), 5);
    let text = json!({"model": "smollm2", "prompt": "The sky is", "max_tokens": 4, "temperature": 0, "echo": true, "logprobs": 2});
    let (_, plain) = post_completion(&s, &text).await;
    let mut st = text.clone();
    st["stream"] = json!(true);
    let got = streamed("/v1/completions", st).await;
    assert_eq!(got, plain["choices"][0]["logprobs"]);
    assert!(got["token_logprobs"][0].is_null() && got["tokens"].as_array().unwrap().len() > 4, "the echoed prompt leads: {got}");
}

/// Chat completions report the answer tokens' log-probabilities in OpenAI's shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_have_openai_shape() {
    let s = start(|_| {}).await;
    let (status, _, v) = post(&s, &chat_body("smollm2", "Say hi.", json!({"max_tokens": 3, "logprobs": true, "top_logprobs": 2}))).await;
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, v["usage"]["completion_tokens"].as_u64().unwrap());
    let mut text = Vec::new();
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!((top.len(), &top[0]["token"], &top[0]["logprob"]), (2, &t["token"], &t["logprob"]), "{t}");
        text.extend(t["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8));
    }
    assert!(String::from_utf8_lossy(&text).starts_with(v["choices"][0]["message"]["content"].as_str().unwrap()), "{v}");
    let (_, _, plain) = post(&s, &chat_body("smollm2", "Say hi.", json!({"max_tokens": 3}))).await;
    assert!(plain["choices"][0]["logprobs"].is_null());
}
