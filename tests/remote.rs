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
        client.configure(&base, &EndpointSettings { api_key_env: Some("MOA_TEST_ENDPOINT_KEY".into()), max_concurrency: Some(1), timeout_secs: Some(30) });
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
