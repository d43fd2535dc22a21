//! The `moa-local` binary as a user runs it: tokenize, generate --json, a MoA run with --json,
//! and clear errors (non-zero exit, a message naming the problem, no panic) for bad input.

mod common;

use std::process::{Command, Output};

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moa-local"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("running moa-local")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn tokenize_prints_llama_cpp_ids() {
    let o = bin(&["tokenize", "--model", "smollm2", "Hello, world!"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: Vec<u32> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ids, vec![19556, 28, 905, 17]);
}

#[test]
fn generate_json_reports_ids_text_and_timings() {
    let o = bin(&["generate", "--model", "qwen-coder", "--raw", "--temperature", "0", "--max-tokens", "4", "--json", "The capital of France is"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["prompt_ids"], serde_json::json!([785, 6722, 315, 9625, 374]));
    assert_eq!(v["generated_ids"].as_array().unwrap().len(), 4);
    assert!(v["text"].as_str().unwrap().starts_with(" Paris"));
    for k in ["prompt_tokens", "generated_tokens", "ttft_secs", "prefill_tps", "decode_tps"] {
        assert!(v["timings"][k].is_number(), "timings.{k} missing: {v}");
    }
}

#[test]
fn moa_json_document_has_layers_answers_models_and_seed() {
    let o = bin(&["--models", "smollm2,smollm2", "--max-tokens", "6", "--seed", "5", "--json", "Name a fruit."]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["seed"], 5);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let answers = layers[0]["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 2);
    for a in answers {
        for k in ["model", "seed", "text", "prompt", "stats"] {
            assert!(!a[k].is_null(), "answer.{k} missing");
        }
        assert!(a["stats"]["generated_tokens"].as_u64().unwrap() >= 1);
    }
    assert!(v["aggregate"]["text"].is_string());
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "a repeated model is one model");
    assert_eq!(models[0]["sha256"], "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
    assert!(layers[0]["wall_secs"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_flags_fail_with_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["--layers", "1", "hi"], "--layers must be at least 2"),
        (&["--models", "smollm2,", "hi"], "empty model"),
        (&["--max-tokens", "0", "hi"], "--max-tokens"),
        (&["--temperature", "-1", "hi"], "--temperature"),
        (&["--device", "tpu", "hi"], "unknown device `tpu`"),
        (&["--models", "no-such-model", "hi"], "unknown model `no-such-model`"),
        (&["--models", "/tmp/definitely/missing.gguf", "--aggregator", "/tmp/definitely/missing.gguf", "hi"], "missing.gguf"),
        (&["--config", "/tmp/definitely/moa.toml", "hi"], "/tmp/definitely/moa.toml"),
        (&["--models", "smollm2", "--device", "cuda:0", "hi"], "CUDA"),
        (&["generate", "--model", "smollm2", "--top-p", "0", "hi"], "top_p"),
        (&["generate", "--model", "smollm2", "--ctx-size", "4", "--max-tokens", "8", "hi"], "exceeds the context length of 4"),
        (&["--models", "smollm2", "   "], "the prompt is empty"),
    ];
    for (args, want) in cases {
        let o = bin(args);
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err:?}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

#[test]
fn bench_json_pairs_batched_and_single_decode() {
    let o = bin(&["bench", "-m", "smollm2", "-p", "0", "-n", "4", "-r", "3", "-b", "2", "-t", "2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = &v[0];
    let tests: Vec<&str> = row["results"].as_array().unwrap().iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["tg4", "tg4 x2"]);
    let samples = |i: usize| -> Vec<f64> {
        row["results"][i]["samples_tps"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let (one, many) = (samples(0), samples(1));
    assert_eq!((one.len(), many.len()), (3, 3));
    let gain = &row["batch_gain"];
    assert_eq!(gain["batch"], 2);
    let ratios: Vec<f64> = gain["samples"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    // Each gain is the batched run over the single run it was paired with.
    for i in 0..3 {
        assert!(one[i] > 0.0 && many[i] > 0.0);
        assert!((ratios[i] - many[i] / one[i]).abs() < 1e-9 * ratios[i], "pair {i}: {} vs {}/{}", ratios[i], many[i], one[i]);
    }
    let mean = ratios.iter().sum::<f64>() / 3.0;
    assert!((gain["mean"].as_f64().unwrap() - mean).abs() < 1e-9 * mean);
}

#[test]
fn a_corrupt_model_is_one_line_naming_the_file_even_with_rust_backtrace_set() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read(common::model_path(common::SMOL)).unwrap();
    // Cut inside the tensor data, and cut inside the header.
    for (name, len) in [("cut-data.gguf", src.len() - 4096), ("cut-header.gguf", 3000)] {
        let path = dir.path().join(name);
        std::fs::write(&path, &src[..len]).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_moa-local"))
            .args(["generate", "--model", path.to_str().unwrap(), "--max-tokens", "1", "hi"])
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(!o.status.success());
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: expected one line, got {err}");
        assert!(lines[0].starts_with("error: ") && lines[0].contains(name) && lines[0].contains("truncated"), "{name}: {err}");
    }
}

/// `plan --json` lists remote agents with what their endpoints answered, without generating; an
/// unreachable one is named with its URL, the plan still printed.
#[test]
fn plan_json_lists_remote_agents_and_their_endpoints() {
    let o = bin(&["plan", "--json", "--models", "smollm2,http://127.0.0.1:1/v1#big", "--aggregator", "http://127.0.0.1:1/v1#big", "Hi"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &v["remote"][0];
    assert_eq!(r["spec"], "http://127.0.0.1:1/v1#big");
    assert_eq!(r["endpoint"], "http://127.0.0.1:1/v1");
    assert_eq!(r["used_by"], serde_json::json!(["layer 1 #2", "aggregator"]));
    assert!(r["model_id"].is_null() && r["error"].as_str().unwrap().contains("cannot connect"), "{r}");
    assert_eq!(v["remote"].as_array().unwrap().len(), 1);
    assert!(v["layers"][0]["waves"].as_array().is_some_and(|w| !w.is_empty()), "{v}");
}
