//! Token-for-token parity of the GGUF tokenizer with llama.cpp (reference ids in
//! `../shared/reference/tokenize.json`), on the three bundled test models.

mod common;

use std::time::Instant;

use candle_core::quantized::gguf_file::{self, Value};
use moa_local::model::gguf::GgufFile;
use moa_local::model::tokenizer::GgufTokenizer;

use common::{model_path, reference, GEMMA, QWEN, SMOL};

fn load(key: &str) -> GgufTokenizer {
    let g = GgufFile::open(model_path(key)).unwrap();
    let t0 = Instant::now();
    let tok = GgufTokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{key}: {e}"));
    eprintln!("{key}: from_gguf took {:.1} ms ({} tokens)", t0.elapsed().as_secs_f64() * 1e3, tok.vocab_size());
    tok
}

fn check_model(key: &str) {
    let tok = load(key);
    let refs = reference("tokenize.json");
    let cases = refs["models"][key].as_array().unwrap_or_else(|| panic!("no reference cases for {key}"));
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> =
            case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text, true).unwrap();
        if got != expected {
            failures.push(format!("text:     {text:?}\nexpected: {expected:?}\ngot:      {got:?}"));
        }
        // Without BOS the text round-trips (unless it contains control tokens, which render as
        // nothing).
        let plain = tok.encode(text, false).unwrap();
        if !plain.iter().any(|&id| tok.is_control(id)) {
            let back = tok.decode(&plain);
            if back != text {
                failures.push(format!("round trip of {text:?} gave {back:?} (ids {plain:?})"));
            }
        }
    }
    assert!(failures.is_empty(), "{key}: {} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n\n"));
    eprintln!("{key}: {} cases match llama.cpp", cases.len());
}

#[test]
fn qwen_matches_llama_cpp() {
    check_model(QWEN);
}

#[test]
fn smollm_matches_llama_cpp() {
    check_model(SMOL);
}

#[test]
fn gemma_matches_llama_cpp() {
    check_model(GEMMA);
}

#[test]
fn special_ids_and_end_of_generation() {
    let qwen = load(QWEN);
    assert_eq!(qwen.bos_id(), Some(151643));
    assert_eq!(qwen.eos_id(), Some(151645));
    for id in [151643, 151645, 151662, 151663, 151664] {
        // <|endoftext|>, <|im_end|>, and llama.cpp's FIM pad / repo / file-sep
        assert!(qwen.is_eog(id), "qwen: {id} should end generation (eog = {:?})", qwen.eog_ids());
    }
    assert!(!qwen.is_eog(151644)); // <|im_start|>
    assert_eq!(qwen.token_id("<|im_start|>"), Some(151644));
    assert_eq!(qwen.token_text(151644), Some("<|im_start|>"));
    assert_eq!(qwen.token_bytes(151644), b"");
    assert_eq!(qwen.token_bytes(qwen.token_id("Ġworld").unwrap()), b" world");
    assert_eq!(qwen.token_bytes(151657), b"<tool_call>"); // user-defined: rendered as text
    assert_eq!(qwen.token_bytes(u32::MAX), b"");

    let smol = load(SMOL);
    assert!(smol.is_eog(2) && smol.is_eog(0), "smol eog = {:?}", smol.eog_ids());
    assert!(!smol.is_eog(1));

    let gemma = load(GEMMA);
    assert_eq!(gemma.bos_id(), Some(2));
    assert_eq!(gemma.eos_id(), Some(1));
    assert!(gemma.is_eog(1) && gemma.is_eog(106), "gemma eog = {:?}", gemma.eog_ids());
    assert_eq!(gemma.token_bytes(gemma.token_id("<0x0A>").unwrap()), b"\n");
    assert_eq!(gemma.token_bytes(gemma.token_id("▁world").unwrap()), b" world");
    assert_eq!(gemma.token_bytes(2), b"");
    assert_eq!(gemma.encode("", true).unwrap(), vec![2]);
    assert_eq!(gemma.encode("", false).unwrap(), Vec::<u32>::new());
}

/// A tiny GGUF file with only the given metadata (no tensors).
fn tiny_gguf(dir: &tempfile::TempDir, name: &str, meta: &[(&str, Value)]) -> GgufFile {
    let path = dir.path().join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut f, &refs, &[]).unwrap();
    drop(f);
    GgufFile::open(&path).unwrap()
}

fn strings(xs: &[&str]) -> Value {
    Value::Array(xs.iter().map(|s| Value::String(s.to_string())).collect())
}

#[test]
fn bad_metadata_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = |m: &str| Value::String(m.to_string());

    let g = tiny_gguf(&dir, "no_tokens.gguf", &[("tokenizer.ggml.model", model("gpt2"))]);
    let e = GgufTokenizer::from_gguf(&g).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.tokens") && e.contains("no_tokens.gguf"), "{e}");

    let g = tiny_gguf(&dir, "no_model.gguf", &[("tokenizer.ggml.tokens", strings(&["a", "b"]))]);
    let e = GgufTokenizer::from_gguf(&g).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.model"), "{e}");

    let g = tiny_gguf(
        &dir,
        "no_merges.gguf",
        &[("tokenizer.ggml.model", model("gpt2")), ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"]))],
    );
    let e = GgufTokenizer::from_gguf(&g).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.merges"), "{e}");

    let g = tiny_gguf(
        &dir,
        "bad_pre.gguf",
        &[
            ("tokenizer.ggml.model", model("gpt2")),
            ("tokenizer.ggml.pre", model("martian")),
            ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"])),
            ("tokenizer.ggml.merges", strings(&["a b"])),
        ],
    );
    let e = GgufTokenizer::from_gguf(&g).unwrap_err().to_string();
    assert!(e.contains("martian") && e.contains("qwen2"), "{e}");

    let g = tiny_gguf(
        &dir,
        "bad_model.gguf",
        &[("tokenizer.ggml.model", model("t5")), ("tokenizer.ggml.tokens", strings(&["a"]))],
    );
    let e = GgufTokenizer::from_gguf(&g).unwrap_err().to_string();
    assert!(e.contains("t5") && e.contains("gpt2"), "{e}");

    let g = tiny_gguf(
        &dir,
        "short_types.gguf",
        &[
            ("tokenizer.ggml.model", model("llama")),
            ("tokenizer.ggml.tokens", strings(&["<unk>", "<s>", "</s>", "a"])),
            ("tokenizer.ggml.token_type", Value::Array(vec![Value::I32(2), Value::I32(3)])),
        ],
    );
    let e = GgufTokenizer::from_gguf(&g).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.token_type"), "{e}");

    // A minimal but valid BPE vocabulary works.
    let g = tiny_gguf(
        &dir,
        "ok.gguf",
        &[
            ("tokenizer.ggml.model", model("gpt2")),
            ("tokenizer.ggml.pre", model("qwen2")),
            ("tokenizer.ggml.tokens", strings(&["a", "b", "ab", "Ġ", "Ġab", "<|end|>"])),
            (
                "tokenizer.ggml.token_type",
                Value::Array([1, 1, 1, 1, 1, 3].into_iter().map(Value::I32).collect()),
            ),
            ("tokenizer.ggml.merges", strings(&["a b", "Ġ ab"])),
            ("tokenizer.ggml.eos_token_id", Value::U32(5)),
        ],
    );
    let tok = GgufTokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.encode("ab ab<|end|>", true).unwrap(), vec![2, 4, 5]);
    assert_eq!(tok.decode(&[2, 4, 5]), "ab ab");
    assert!(tok.is_eog(5));
}

/// The raw prompts of `greedy.json` tokenize to llama.cpp's prompt ids, and prompt + generated ids
/// decode to llama.cpp's text (which shows the BOS token as text and ends with a newline).
#[test]
fn greedy_prompts_and_texts_match_llama_cpp() {
    let refs = reference("greedy.json");
    let mut failures = Vec::new();
    for key in common::ALL {
        let tok = load(key);
        for case in refs["models"][key].as_array().unwrap() {
            let ids = |k: &str| -> Vec<u32> {
                case[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
            };
            let (prompt_ids, greedy_ids) = (ids("prompt_ids"), ids("greedy_ids"));
            let prompt = case["prompt"].as_str().unwrap();
            let got = tok.encode(prompt, true).unwrap();
            if got != prompt_ids {
                failures.push(format!("{key}: prompt {prompt:?}\nexpected: {prompt_ids:?}\ngot:      {got:?}"));
            }
            let all: Vec<u32> = prompt_ids.iter().chain(&greedy_ids).copied().collect();
            let bos_text = match tok.bos_id() {
                Some(b) if all.first() == Some(&b) => tok.token_text(b).unwrap_or(""),
                _ => "",
            };
            let expected = case["text"].as_str().unwrap();
            let got = format!("{bos_text}{}\n", tok.decode(&all));
            if got != expected {
                failures.push(format!("{key}: text of {prompt:?}\nexpected: {expected:?}\ngot:      {got:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
