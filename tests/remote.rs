//! Remote agents (`runtime::remote`): a URL in `--models` is an OpenAI-compatible endpoint. A
//! remote proposer served by moa-local's own server answers what the same model answers
//! locally; 429/5xx are retried with backoff (honouring Retry-After) and then reported with the
//! endpoint and status; a client error is final and never shows the API key; an unreachable
//! endpoint is left out of the run like a failing local proposer.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use moa_local::engine::Control;
use moa_local::model::Message;
use moa_local::moa::{self, Overrides, Recipe, RunOptions};
use moa_local::runtime::remote::{Endpoint, RemoteClient, RemoteLimits, RemoteRequest};
use moa_local::runtime::{DeviceSpec, Runtime};
use moa_local::server::{Server, ServerConfig};

fn recipe(models: &[&str], aggregator: &str) -> Recipe {
    let o = Overrides {
        models: Some(models.iter().map(|s| s.to_string()).collect()),
        aggregator: Some(aggregator.into()),
        layers: Some(2),
        temperature: Some(0.0),
        max_tokens: Some(16),
        ..Default::default()
    };
    Recipe::build(None, &o, &[]).unwrap()
}

fn opts() -> RunOptions {
    RunOptions { seed: 4, reference_order: moa_local::moa::staircase::ReferenceOrder::Recipe, ..RunOptions::default() }
}

/// A fake endpoint: the first `fail` chat requests get `status` (with `Retry-After: 0` on 429),
/// later ones a two-piece stream. Returns its base URL and the request counter.
async fn fake(status: StatusCode, fail: usize) -> (String, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let count = count.clone();
            async move {
                if count.fetch_add(1, Ordering::SeqCst) < fail {
                    let mut r: Response = (status, r#"{"error":{"message":"busy"}}"#).into_response();
                    r.headers_mut().insert("retry-after", "0".parse().unwrap());
                    return r;
                }
                let body = concat!(
                    "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
                    "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
                    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\n",
                    "data: [DONE]\n\n"
                );
                ([("content-type", "text/event-stream")], body).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, n)
}

fn request() -> RemoteRequest {
    RemoteRequest { messages: vec![Message::user("Hi")], temperature: 0.0, max_tokens: 8, seed: 1 }
}

#[test]
fn busy_endpoints_are_retried_then_reported_and_client_errors_are_final() {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    tokio.block_on(async {
        let client = RemoteClient::new(RemoteLimits::default()).unwrap();
        let (base, n) = fake(StatusCode::TOO_MANY_REQUESTS, 2).await;
        let ep = Endpoint::parse(&format!("{base}#m")).unwrap();
        let mut pieces = Vec::new();
        let r = client.chat(&ep, &request(), &mut |p| { pieces.push(p.to_string()); Control::Continue }).await.unwrap();
        assert_eq!((r.text.as_str(), r.attempts, n.load(Ordering::SeqCst)), ("Hello", 3, 3), "two 429s, then the answer");
        assert_eq!(pieces, ["Hel", "lo"], "the answer streams piece by piece");
        assert_eq!((r.prompt_tokens, r.completion_tokens, r.finish_reason.as_deref()), (Some(7), Some(2), Some("stop")));

        let (base, n) = fake(StatusCode::SERVICE_UNAVAILABLE, usize::MAX).await;
        let e = client.chat(&Endpoint::parse(&format!("{base}#m")).unwrap(), &request(), &mut |_| Control::Continue).await.unwrap_err().to_string();
        assert!(e.contains(&base) && e.contains("HTTP 503") && e.contains("after 4 attempts"), "{e}");
        assert_eq!(n.load(Ordering::SeqCst), 4);
    });
    // A client error is not retried, and the key sent never shows.
    std::env::set_var(moa_local::runtime::remote::API_KEY_ENV, "sk-very-secret");
    tokio.block_on(async {
        let client = RemoteClient::new(RemoteLimits::default()).unwrap();
        let (base, n) = fake(StatusCode::UNAUTHORIZED, usize::MAX).await;
        let e = client.chat(&Endpoint::parse(&format!("{base}#m")).unwrap(), &request(), &mut |_| Control::Continue).await.unwrap_err().to_string();
        assert!(e.contains("HTTP 401") && e.contains("busy") && !e.contains("sk-very-secret"), "{e}");
        assert_eq!(n.load(Ordering::SeqCst), 1, "a 401 is final");
    });
    std::env::remove_var(moa_local::runtime::remote::API_KEY_ENV);
}

#[test]
fn a_remote_proposer_answers_like_the_local_model_and_an_unreachable_one_is_left_out() {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let rt = Arc::new(Runtime::new(DeviceSpec::Cpu).unwrap());
    let conv = vec![Message::user("Name a primary color.")];
    // smollm2 served over HTTP by moa-local itself.
    let base = tokio.block_on(async {
        let cfg = ServerConfig::new(recipe(&["smollm2"], "smollm2"));
        let server = Server::new(Arc::new(Runtime::new(DeviceSpec::Cpu).unwrap()), cfg).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(server.serve(listener, std::future::pending()));
        base
    });
    let url = format!("{base}#smollm2");
    let ctx = tokio.block_on(rt.remote().context_length(&Endpoint::parse(&url).unwrap()));
    assert_eq!(ctx, Some(rt.shape("smollm2").unwrap().cfg.context_length), "the endpoint reports the model's context");
    let remote = tokio.block_on(moa::run(rt.clone(), &recipe(&["qwen-coder", &url], "qwen-coder"), &conv, &opts(), moa::report::no_events())).unwrap();
    let local = tokio.block_on(moa::run(rt.clone(), &recipe(&["qwen-coder", "smollm2"], "qwen-coder"), &conv, &opts(), moa::report::no_events())).unwrap();
    let (r, l) = (&remote.layers[0].answers[1], &local.layers[0].answers[1]);
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.text, l.text, "the remote smollm2 answers what the local one does at temperature 0");
    assert_eq!(r.stats.generated_tokens, l.stats.generated_tokens, "token counts come from the endpoint's usage");
    assert_eq!(remote.aggregate.text, local.aggregate.text, "so the aggregate is the same too");
    assert!(remote.plan.layers[0].waves.iter().all(|w| w.jobs.len() == 1), "the remote agent takes no place in the memory plan");

    let down = recipe(&["smollm2", "http://127.0.0.1:1/v1#x"], "smollm2");
    let r = tokio.block_on(moa::run(rt.clone(), &down, &conv, &opts(), moa::report::no_events())).unwrap();
    let e = r.layers[0].answers[1].error.clone().unwrap();
    assert!(e.contains("127.0.0.1:1") && e.contains("cannot connect"), "{e}");
    assert!(r.layers[0].answers[0].error.is_none() && !r.aggregate.text.is_empty(), "the local proposer and the aggregator carry on");

    // A remote aggregator streams the final answer.
    let agg = tokio.block_on(moa::run(rt, &recipe(&["qwen-coder", "smollm2"], &url), &conv, &opts(), moa::report::no_events())).unwrap();
    assert!(!agg.aggregate.text.is_empty() && agg.aggregate.error.is_none());
}

/// A recipe's endpoint may name the variable its key is in; the key goes out as a bearer token.
#[test]
fn an_endpoint_sends_the_key_from_its_own_variable() {
    use moa_local::runtime::remote::EndpointSettings;
    let tokio = tokio::runtime::Runtime::new().unwrap();
    tokio.block_on(async {
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(|h: axum::http::HeaderMap| async move {
                if h.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer k-endpoint") {
                    return (StatusCode::UNAUTHORIZED, "{}").into_response();
                }
                ([("content-type", "text/event-stream")], "data: {\"choices\":[{\"delta\":{\"content\":\"ok\"}}]}\n\ndata: [DONE]\n\n").into_response()
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        std::env::set_var("MOA_TEST_ENDPOINT_KEY", "k-endpoint");
        let client = RemoteClient::new(RemoteLimits::default()).unwrap();
        let ep = Endpoint::parse(&format!("{base}#m")).unwrap();
        let e = client.chat(&ep, &request(), &mut |_| Control::Continue).await.unwrap_err().to_string();
        assert!(e.contains("HTTP 401"), "without the endpoint's variable no key is sent: {e}");
        client.configure(&base, &EndpointSettings { api_key_env: Some("MOA_TEST_ENDPOINT_KEY".into()), max_concurrency: Some(1), timeout_secs: Some(30), ..Default::default() });
        let r = client.chat(&ep, &request(), &mut |_| Control::Continue).await.unwrap();
        assert_eq!(r.text, "ok");
    });
}

/// An endpoint that streams one endless line is cut off with an error, not buffered.
#[test]
fn an_endless_stream_line_is_an_error() {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    tokio.block_on(async {
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(|| async { ([("content-type", "text/event-stream")], "x".repeat(moa_local::runtime::remote::MAX_LINE_BYTES + 10)).into_response() }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = RemoteClient::new(RemoteLimits::default()).unwrap();
        let e = client.chat(&Endpoint::parse(&format!("{base}#m")).unwrap(), &request(), &mut |_| Control::Continue).await.unwrap_err().to_string();
        assert!(e.contains("stream line is longer than"), "{e}");
    });
}

/// A local moa-local server for smollm2 (the "remote" machine); returns its API base.
async fn smollm2_server() -> String {
    let cfg = ServerConfig::new(recipe(&["smollm2"], "smollm2"));
    let server = Server::new(Arc::new(Runtime::new(DeviceSpec::Cpu).unwrap()), cfg).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(server.serve(listener, std::future::pending()));
    base
}

/// `serve` fronting a recipe whose second proposer and aggregator are another server's model:
/// the answer (plain and streamed) is the one the all-local recipe gives.
#[test]
fn serve_runs_a_recipe_with_remote_agents_plain_and_streamed() {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let rt = Arc::new(Runtime::new(DeviceSpec::Cpu).unwrap());
    let conv = vec![Message::user("Name a primary color.")];
    tokio.block_on(async {
        let back = smollm2_server().await;
        let url = format!("{back}#smollm2");
        // What `plan` asks: the model listed, its context reported; a name the endpoint does not list is named.
        let (id, ctx) = rt.remote().check(&Endpoint::parse(&url).unwrap()).await.unwrap();
        assert_eq!((id.as_str(), ctx), ("smollm2", Some(rt.shape("smollm2").unwrap().cfg.context_length)));
        let e = rt.remote().check(&Endpoint::parse(&format!("{back}#nope")).unwrap()).await.unwrap_err().to_string();
        assert!(e.contains("does not list `nope`") && e.contains("smollm2"), "{e}");
        let mut cfg = ServerConfig::new(recipe(&["qwen-coder", &url], &url));
        cfg.defaults.reference_order = moa_local::moa::staircase::ReferenceOrder::Recipe;
        cfg.defaults.seed = Some(4);
        let front = Server::new(rt.clone(), cfg).await.expect("a recipe with remote agents is served");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(front.serve(listener, std::future::pending()));

        let local = moa::run(rt.clone(), &recipe(&["qwen-coder", "smollm2"], "smollm2"), &conv, &opts(), moa::report::no_events()).await.unwrap();
        let http = reqwest::Client::new();
        let body = serde_json::json!({"model": "moa", "messages": [{"role": "user", "content": "Name a primary color."}], "temperature": 0, "seed": 4});
        let v: serde_json::Value = http.post(format!("{base}/chat/completions")).json(&body).send().await.unwrap().json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"].as_str(), Some(local.aggregate.text.as_str()), "{v}");
        let agents: Vec<&str> = v["moa"]["layers"][0]["agents"].as_array().unwrap().iter().map(|a| a["model"].as_str().unwrap()).collect();
        assert_eq!(agents, ["qwen-coder", url.as_str()]);
        assert_eq!(v["moa"]["aggregator"].as_str(), Some(url.as_str()));

        let mut stream_body = body.clone();
        stream_body["stream"] = true.into();
        let text = http.post(format!("{base}/chat/completions")).json(&stream_body).send().await.unwrap().text().await.unwrap();
        let deltas: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let streamed: String = deltas.iter().filter_map(|d| d["choices"][0]["delta"]["content"].as_str()).collect();
        assert!(deltas.iter().filter(|d| d["choices"][0]["delta"]["content"].is_string()).count() > 1, "the remote aggregate streams in pieces: {text}");
        assert_eq!(streamed, local.aggregate.text);
        assert!(text.trim_end().ends_with("data: [DONE]"));
    });
}

/// An endpoint whose first `stall` requests get no response at all, later ones a short answer;
/// with `piece_then_stall`, every answer sends one piece and then nothing.
async fn stalling(stall: usize, piece_then_stall: bool) -> (String, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let count = count.clone();
            async move {
                if count.fetch_add(1, Ordering::SeqCst) < stall {
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                }
                let first = futures_util::stream::once(async {
                    Ok::<_, std::convert::Infallible>("data: {\"choices\":[{\"delta\":{\"content\":\"Red\"}}]}\n\n".to_string())
                });
                let rest = futures_util::stream::once(async move {
                    if piece_then_stall {
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    }
                    Ok("data: {\"choices\":[{\"delta\":{\"content\":\".\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n".to_string())
                });
                use futures_util::StreamExt as _;
                let body = axum::body::Body::from_stream(first.chain(rest));
                ([("content-type", "text/event-stream")], body).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, n)
}

/// A stalled endpoint is given up after the read timeout: retried while nothing has streamed (and
/// the retry is a notice of the run), final once part of the answer has; a MoA run completes
/// with the stalled proposer left out.
#[test]
fn a_stalled_endpoint_is_retried_or_left_out_after_its_read_timeout() {
    use moa_local::runtime::remote::EndpointSettings;
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let quick = EndpointSettings { read_timeout_secs: Some(1), attempts: Some(3), ..Default::default() };
    tokio.block_on(async {
        let client = RemoteClient::new(RemoteLimits::default()).unwrap();
        let (base, n) = stalling(1, false).await;
        client.configure(&base, &quick);
        let t0 = std::time::Instant::now();
        let r = client.chat(&Endpoint::parse(&format!("{base}#m")).unwrap(), &request(), &mut |_| Control::Continue).await.unwrap();
        assert_eq!((r.text.as_str(), r.attempts, n.load(Ordering::SeqCst)), ("Red.", 2, 2));
        assert!(r.retried.len() == 1 && r.retried[0].contains("stalled"), "{:?}", r.retried);
        assert!(t0.elapsed().as_secs_f64() < 10.0, "given up after about a second, not the answer's 600 s");

        let (base, n) = stalling(0, true).await;
        client.configure(&base, &quick);
        let e = client.chat(&Endpoint::parse(&format!("{base}#m")).unwrap(), &request(), &mut |_| Control::Continue).await.unwrap_err().to_string();
        assert!(e.contains("stalled after 1 pieces") && e.contains(&base), "{e}");
        assert_eq!(n.load(Ordering::SeqCst), 1, "part of the answer had streamed: not retried");
    });

    // In a run: one endpoint stalls once and is retried, another stalls mid-answer and is left out.
    let rt = Arc::new(Runtime::new(DeviceSpec::Cpu).unwrap());
    let (once, _) = tokio.block_on(stalling(1, false));
    let (mid, _) = tokio.block_on(stalling(0, true));
    let file = moa_local::moa::RecipeFile::parse(
        &format!(
            r#"
            temperature = 0.0
            max_tokens = 8
            aggregator = "smollm2"
            [[layer]]
            models = ["smollm2",
                      {{ endpoint = "{once}", model = "a", read_timeout_secs = 1, attempts = 2, context_length = 2048, tokenizer = "smollm2" }},
                      {{ endpoint = "{mid}", model = "b", read_timeout_secs = 1 }}]
            "#
        ),
        "test",
    )
    .unwrap();
    let r = Recipe::build(Some(&file), &Overrides::default(), &[]).unwrap();
    assert_eq!(r.endpoints[&once].context_length, Some(2048));
    let conv = vec![Message::user("Name a primary color.")];
    let run = tokio.block_on(moa::run(rt.clone(), &r, &conv, &opts(), moa::report::no_events())).unwrap();
    let answers = &run.layers[0].answers;
    assert_eq!((answers[1].text.as_str(), answers[1].error.as_deref()), ("Red.", None));
    assert!(answers[2].error.as_deref().is_some_and(|e| e.contains("stalled")), "{:?}", answers[2].error);
    assert!(run.notices.iter().any(|n| n.contains("answered on attempt 2") && n.contains("stalled")), "{:?}", run.notices);
    // That endpoint sends no usage; its recipe names smollm2's tokenizer, so the counts are exact.
    let tokens = rt.chat_tokens("smollm2").unwrap();
    assert_eq!(answers[1].stats.generated_tokens, tokens.count_text("Red.").unwrap());
    assert_eq!(answers[1].stats.prompt_tokens, answers[0].stats.prompt_tokens, "counted as the local smollm2 counts its prompt");
    assert!(run.notices.iter().any(|n| n.contains(&mid) && n.contains("no context length")), "{:?}", run.notices);
    assert!(!run.aggregate.text.is_empty() && run.aggregate.error.is_none());
}

/// A remote agent fitted with a local tokenizer copy (header only) cuts references exactly as
/// the loaded model would.
#[test]
fn references_fitted_with_a_tokenizer_copy_match_the_loaded_model() {
    use moa_local::moa::fit::{fit_references_counted, PromptTokens};
    let rt = Runtime::new(DeviceSpec::Cpu).unwrap();
    let model = rt.load_blocking("smollm2").unwrap();
    let tokens = rt.chat_tokens("smollm2").unwrap();
    let conv = vec![Message::user("Summarize the answers.")];
    let refs: Vec<String> = (0..3).map(|i| format!("Answer {i}: ").to_string() + &"the quick brown fox jumps over the lazy dog. ".repeat(20 + i * 5)).collect();
    let instr = moa_local::moa::prompt::AGGREGATE_AND_SYNTHESIZE;
    for ctx in [400, 700, 4000] {
        let a = fit_references_counted(model.as_ref() as &dyn PromptTokens, "m", ctx, &conv, instr, &refs, 64).unwrap();
        let b = fit_references_counted(tokens.as_ref(), "m", ctx, &conv, instr, &refs, 64).unwrap();
        assert_eq!((a.prompt_tokens, a.cut_to), (b.prompt_tokens, b.cut_to), "context {ctx}");
        assert_eq!(a.messages, b.messages);
        assert!(b.prompt_tokens + 64 <= ctx);
        assert_eq!(b.cut_to.is_some(), ctx < 4000, "context {ctx}: {:?}", b.cut_to);
    }
}
