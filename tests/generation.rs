//! Generation behaviour on the real test models: seeded sampling, stop conditions, UTF-8
//! streaming, context limits, shared weights, weights loaded as stored, and clear errors for bad
//! model files.

mod common;

use std::sync::Arc;

use candle_core::Device;
use moa_local::engine::{Control, SamplingParams};
use moa_local::model::gguf::GgufFile;
use moa_local::model::{GenerateRequest, Message, Model, Prompt, StopReason};
use moa_local::Error;

fn smol() -> Arc<Model> {
    Model::load(common::model_path(common::SMOL), &Device::Cpu).unwrap()
}

fn qwen() -> Arc<Model> {
    Model::load(common::model_path(common::QWEN), &Device::Cpu).unwrap()
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed, ..Default::default() }
}

fn run(m: &Model, req: &GenerateRequest) -> (moa_local::model::Generation, Vec<String>) {
    let mut pieces = Vec::new();
    let g = m
        .generate(req, &mut |p| {
            pieces.push(p.to_string());
            Control::Continue
        })
        .unwrap();
    (g, pieces)
}

#[test]
fn same_seed_same_text_other_seed_other_text() {
    let m = smol();
    let req = |seed| GenerateRequest::new(Prompt::Raw("Once upon a time".into()), 24, sampled(seed));
    let (a, _) = run(&m, &req(11));
    let (b, _) = run(&m, &req(11));
    let (c, _) = run(&m, &req(12));
    assert_eq!(a.ids, b.ids, "same seed must give the same tokens");
    assert_ne!(a.ids, c.ids, "another seed should give other tokens");
}

#[test]
fn max_tokens_and_stop_strings_end_generation() {
    let m = qwen();
    let greedy = SamplingParams::greedy();
    let mut req = GenerateRequest::new(Prompt::Raw("The capital of France is".into()), 5, greedy);
    let (g, _) = run(&m, &req);
    assert_eq!((g.stats.generated_tokens, g.stop_reason), (5, StopReason::MaxTokens));
    assert!(g.text.starts_with(" Paris"), "{:?}", g.text);

    req.max_tokens = 30;
    req.stop = vec![".".into()];
    let (g, pieces) = run(&m, &req);
    assert_eq!(g.stop_reason, StopReason::StopString);
    assert_eq!(g.text, " Paris", "text ends right before the stop string");
    assert_eq!(pieces.concat(), g.text, "streamed pieces are exactly the text");
}

#[test]
fn chat_answers_end_at_the_end_of_turn_token() {
    let m = qwen();
    let req = GenerateRequest::new(Prompt::Chat(vec![Message::user("Reply with the single word: yes")]), 64, SamplingParams::greedy());
    let (g, _) = run(&m, &req);
    assert_eq!(g.stop_reason, StopReason::EndOfGeneration, "text: {:?}", g.text);
    assert!(!g.text.contains("<|im_end|>"));
    assert!(g.stats.generated_tokens < 64);
}

#[test]
fn streamed_pieces_are_whole_utf8_characters() {
    // Byte-level BPE splits emoji into several tokens; pieces must still be whole characters.
    let m = smol();
    let req = GenerateRequest::new(Prompt::Raw("Emoji list: 🦀 🦀 🦀 ❤️ 🦀 🦀".into()), 24, SamplingParams::greedy());
    let (g, pieces) = run(&m, &req);
    assert_eq!(pieces.concat(), g.text);
    assert!(!g.text.contains('\u{FFFD}'), "no replacement characters: {:?}", g.text);
    let multi_token_chars = g.ids.iter().filter(|&&t| std::str::from_utf8(m.tokenizer.token_bytes(t)).is_err()).count();
    println!("{} of {} tokens were partial UTF-8; text {:?}", multi_token_chars, g.ids.len(), g.text);
}

#[test]
fn prompt_plus_max_tokens_beyond_context_is_a_clear_error() {
    let m = smol();
    let mut req = GenerateRequest::new(Prompt::Raw("The capital of France is".into()), 20, SamplingParams::greedy());
    req.context_length = Some(16);
    let e = m.generate(&req, &mut |_| Control::Continue).unwrap_err();
    assert!(matches!(e, Error::ContextOverflow { context: 16, max_tokens: 20, .. }), "{e}");
    assert!(e.to_string().contains("exceeds the context length of 16"), "{e}");
    req.context_length = None;
    req.max_tokens = m.context_length() + 1;
    let e = m.generate(&req, &mut |_| Control::Continue).unwrap_err();
    assert!(e.to_string().contains(&m.context_length().to_string()), "{e}");
}

#[test]
fn cancelling_from_the_callback_stops_early() {
    let m = smol();
    let req = GenerateRequest::new(Prompt::Raw("Count: 1, 2, 3,".into()), 40, SamplingParams::greedy());
    let mut n = 0;
    let g = m
        .generate(&req, &mut |_| {
            n += 1;
            if n >= 3 { Control::Stop } else { Control::Continue }
        })
        .unwrap();
    assert_eq!(g.stop_reason, StopReason::Cancelled);
    assert!(g.stats.generated_tokens < 40);
}

#[test]
fn same_file_shares_weights_and_sequences_run_concurrently() {
    let a = smol();
    let b = smol();
    assert!(Arc::ptr_eq(&a, &b), "opening the same file twice must share the loaded weights");
    let req = GenerateRequest::new(Prompt::Raw("The capital of France is".into()), 12, SamplingParams::greedy());
    let (alone, _) = run(&a, &req);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (m, r) = (a.clone(), req.clone());
            std::thread::spawn(move || m.generate(&r, &mut |_| Control::Continue).unwrap().ids)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), alone.ids, "each sequence has its own KV cache");
    }
}

#[test]
fn bad_model_files_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // Missing file.
    let missing = dir.path().join("nope.gguf");
    let e = Model::load_uncached(&missing, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("nope.gguf") && e.contains("not found"), "{e}");
    // Not a GGUF at all.
    let text = dir.path().join("notes.gguf");
    std::fs::write(&text, "this is not a model").unwrap();
    let e = Model::load_uncached(&text, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("notes.gguf") && e.contains("GGUF"), "{e}");
    // A real model cut short: header intact, tensor data missing.
    let bytes = std::fs::read(common::model_path(common::SMOL)).unwrap();
    let cut = dir.path().join("truncated.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let e = Model::load_uncached(&cut, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("truncated.gguf") && e.contains("truncated"), "{e}");
    // Cut inside the header.
    let cut = dir.path().join("header.gguf");
    std::fs::write(&cut, &bytes[..4096]).unwrap();
    let e = Model::load_uncached(&cut, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("header.gguf"), "{e}");
}

#[test]
fn weights_read_in_place_are_byte_for_byte_what_candle_reads() {
    // Every tensor of the three test models (F32 norms; Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K
    // weights), read by the loader's single-copy path and by candle's own reader.
    let mut types = std::collections::BTreeSet::new();
    for key in [common::SMOL, common::QWEN, common::GEMMA] {
        let g = GgufFile::open(common::model_path(key)).unwrap();
        let (mut r1, mut r2) = (g.reader().unwrap(), g.reader().unwrap());
        for (name, info) in &g.content.tensor_infos {
            let ours = g.tensor(&mut r1, name, &Device::Cpu).unwrap();
            let theirs = g.content.tensor(&mut r2, name, &Device::Cpu).unwrap();
            assert_eq!((ours.dtype(), ours.shape()), (theirs.dtype(), theirs.shape()), "{key} {name}");
            assert!(ours.data().unwrap() == theirs.data().unwrap(), "{key} {name}: bytes differ");
            types.insert(format!("{:?}", info.ggml_dtype));
        }
    }
    assert!(types.len() >= 6, "types covered: {types:?}");
}

#[test]
fn batched_samples_match_separate_generations_seed_for_seed() {
    let m = smol();
    let req = GenerateRequest::new(Prompt::Chat(vec![Message::user("Name an animal.")]), 16, sampled(0));
    let seeds = [3u64, 4, 5];
    let mut streamed = vec![String::new(); seeds.len()];
    let batch = m
        .generate_samples(&req, &seeds, &mut |i, p| {
            streamed[i].push_str(p);
            Control::Continue
        })
        .unwrap();
    assert_eq!(batch.len(), 3);
    for (i, &seed) in seeds.iter().enumerate() {
        let alone = run(&m, &GenerateRequest { sampling: sampled(seed), ..req.clone() }).0;
        assert_eq!(batch[i].ids, alone.ids, "sample {i} (seed {seed}) differs from its own generation");
        assert_eq!(streamed[i], batch[i].text);
        assert_eq!(batch[i].stats.prompt_tokens, alone.stats.prompt_tokens);
    }
    assert!(batch[0].ids != batch[1].ids || batch[1].ids != batch[2].ids, "different seeds, different samples");
}

/// A prompt longer than the model's rows per forward pass goes through in passes (its later rows
/// attend to the earlier ones through the cache); the logits and the next step must be the ones
/// a single pass gives. Gemma covers the GELU gate and q/k norms, SmolLM2 the SwiGLU gate.
#[test]
fn a_prompt_in_several_passes_gives_the_logits_of_one_pass() {
    use moa_local::engine::Forward;
    let text = "The history of computing is a story of abstraction layered on abstraction. ".repeat(12);
    for key in [common::SMOL, common::GEMMA] {
        let mut m = Model::load_uncached(&common::model_path(key), &Device::Cpu).unwrap();
        let prompt = m.tokenizer.encode(&text, true).unwrap();
        assert!(prompt.len() > 100, "{key}: a prompt of {} tokens", prompt.len());
        let mut run = |rows: usize| {
            m.transformer.set_prefill_rows(rows);
            let mut cache = m.transformer.new_cache(prompt.len() + 1).unwrap();
            let first = m.transformer.forward(&prompt, &mut cache).unwrap();
            let next = m.transformer.forward(&[moa_local::engine::sampler::argmax(&first)], &mut cache).unwrap();
            (first, next)
        };
        let one = run(512);
        for rows in [24, 40] {
            let passes = run(rows);
            assert_eq!(passes, one, "{key}: {} tokens in passes of {rows} rows differ from one pass", prompt.len());
        }
    }
}
