//! Shared test helpers: where the test models and llama.cpp reference data live.
#![allow(dead_code)]

use std::path::PathBuf;

pub const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";
pub const SMOL: &str = "smollm2-135m-instruct-q4_1";
pub const GEMMA: &str = "gemma-3-270m-q4_k_m";
pub const ALL: [&str; 3] = [QWEN, SMOL, GEMMA];
/// The fourth test model, fetched on request (`bash models/fetch.sh qwen-coder-1.5b`).
pub const QWEN15: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m";

/// The bundled models, plus the 1.5B one when it has been fetched.
pub fn available() -> Vec<&'static str> {
    let mut v = ALL.to_vec();
    if model_file(QWEN15).exists() {
        v.push(QWEN15);
    }
    v
}

/// Path of a bundled test model by its reference key (models/fetch.sh puts them there).
pub fn model_path(key: &str) -> PathBuf {
    let p = model_file(key);
    assert!(p.exists(), "test model {} is missing: run `bash models/fetch.sh` first", p.display());
    p
}

fn model_file(key: &str) -> PathBuf {
    let dir = std::env::var_os("MOA_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    let file = match key {
        QWEN => "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        SMOL => "SmolLM2-135M-Instruct.Q4_1.gguf",
        GEMMA => "gemma-3-270m-q4_k_m.gguf",
        QWEN15 => "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        other => panic!("unknown test model key {other}"),
    };
    dir.join(file)
}

/// The llama.cpp reference data directory (`../shared/reference` beside the checkout).
pub fn reference_dir() -> PathBuf {
    std::env::var_os("MOA_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference"))
}

pub fn reference(name: &str) -> serde_json::Value {
    let p = reference_dir().join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}
