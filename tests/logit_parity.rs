//! Parity with llama.cpp on 34 raw prompts per model (prose, code, numbers, seven other
//! languages), from `tests/data/parity/<model>.json`, written by `benches/llama_reference.sh` with
//! the llama.cpp copy in the llama-cpp-python 0.3.36 sdist: each prompt's token ids, 32 greedy
//! steps and llama.cpp's top-5 (id, logit) at every step, plus `spread`: how far llama.cpp lies
//! from itself when only its attention kernel changes (flash attention on against off).
//!
//! That spread is the yardstick. Engines that quantize activations to int8 and sum in other
//! orders differ in every logit; on these small models llama.cpp's two attention paths differ by
//! a median 0.05–0.2 and part on 14–24 of the 34 prompts within 32 tokens, at gaps of up to 6% of
//! the top logit — so a fixed 1% near-tie cannot hold over this many prompts even between two
//! llama.cpp builds. The test teacher-forces llama.cpp's greedy tokens (all prompts batched per
//! step, which the engine computes bit-identically to one sequence alone) and requires:
//! - the top-5 logits: our deviation from llama.cpp no wider than llama.cpp's own spread (median
//!   and 95th percentile within `SPREAD_FACTOR` of it, the largest within twice its largest);
//! - greedy agreement: where our argmax differs from llama.cpp's token, a near-tie: llama.cpp's
//!   token within 1% of our top logit, or within twice the spread's 95th percentile (the error of
//!   two logits at once);
//! - tokenization: our ids for each prompt equal llama.cpp's.
//!
//! The mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE) have no real file small enough to
//! bundle: their references come from the synthetic `tiny` files (`moa-local bench --synthetic
//! ARCH:tiny:q4_k_m`, seed 1, peaked weights), which the test writes again and checks by sha256
//! before comparing. There one more kind of disagreement is inherent: where a token's router
//! scores two experts within rounding of each other, any change of rounding can swap the expert
//! it runs, and that token's logits jump (llama.cpp against itself shows such jumps: its largest
//! spread is 4–17× its p95 on these files, 4× on the dense ones). So a mixture of experts may
//! part from llama.cpp with a gap up to twice llama.cpp's own largest spread, on at most 1% of
//! the steps (`ROUTING_FLIPS`); every other check is the dense models'.

mod common;

use candle_core::Device;
use moa_local::engine::sampler::argmax;
use moa_local::engine::Forward;
use moa_local::model::Model;

const NEAR_TIE_REL: f32 = 0.01;
const SPREAD_FACTOR: f32 = 1.25;
/// Sequences per batched step.
const BATCH: usize = 12;
/// Mixtures of experts: the most steps (a fraction of all) whose disagreement is past the dense
/// models' near-tie but within twice llama.cpp's own largest spread (an expert swapped on a
/// router near-tie).
const ROUTING_FLIPS: f64 = 0.01;

struct Case {
    name: String,
    text: String,
    prompt: Vec<u32>,
    greedy: Vec<u32>,
    top: Vec<Vec<(u32, f32)>>,
}

struct Reference {
    sha256: String,
    cases: Vec<Case>,
    /// llama.cpp against itself: median, p95 and max absolute logit difference.
    spread: [f32; 3],
}

fn reference(key: &str) -> Reference {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let read = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
    };
    let prompts = read(dir.join("parity_prompts.json"));
    let data = read(dir.join(format!("parity/{key}.json")));
    let texts = prompts["prompts"].as_array().unwrap();
    let cases = data["cases"].as_array().unwrap();
    assert_eq!(texts.len(), cases.len(), "{key}: reference data and prompts differ in number");
    let cases = texts
        .iter()
        .zip(cases)
        .map(|(p, c)| {
            assert_eq!(p["name"], c["name"]);
            Case {
                name: c["name"].as_str().unwrap().into(),
                text: p["text"].as_str().unwrap().into(),
                prompt: serde_json::from_value(c["prompt_ids"].clone()).unwrap(),
                greedy: serde_json::from_value(c["greedy_ids"].clone()).unwrap(),
                top: serde_json::from_value(c["top"].clone()).unwrap(),
            }
        })
        .collect();
    let s = &data["spread"];
    let f = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("{key}: spread.{k} missing")) as f32;
    let sha256 = data["sha256"].as_str().unwrap_or_default().to_string();
    Reference { sha256, cases, spread: [f("logit_abs_median"), f("logit_abs_p95"), f("logit_abs_max")] }
}

fn check_model(key: &str) -> Vec<String> {
    check_file(key, &common::model_path(key), reference(key))
}

/// A synthetic file (`arch:tiny:q4_k_m`, seed 1), written here and checked against the reference's
/// sha256 (reference key `synthetic-ARCH-tiny-q4_k_m`).
fn check_synthetic(spec: &str) -> Vec<String> {
    use moa_local::model::synthetic::{write_synthetic, SyntheticSpec};
    let key = format!("synthetic-{}", spec.replace(':', "-"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{key}.gguf"));
    write_synthetic(&SyntheticSpec::parse(spec).unwrap(), &path, 1).unwrap();
    let r = reference(&key);
    let sha = moa_local::model::gguf::sha256_file(&path).unwrap();
    assert_eq!(sha, r.sha256, "{spec}: the synthetic file differs from the one llama.cpp's reference was made from");
    check_file(&key, &path, r)
}

fn check_file(key: &str, path: &std::path::Path, r: Reference) -> Vec<String> {
    let model = Model::load_uncached(path, &Device::Cpu).unwrap();
    let Reference { cases, spread, .. } = r;
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    let (mut agreed, mut steps_total, mut partings) = (0usize, 0usize, 0usize);
    let mut devs: Vec<f32> = Vec::new();
    let tie_abs = 2.0 * spread[1];
    let moe = model.cfg().moe.is_some();
    let mut flips = 0usize;
    for chunk in cases.chunks(BATCH) {
        let mut caches: Vec<_> = chunk.iter().map(|c| model.transformer.new_cache(c.prompt.len() + c.greedy.len()).unwrap()).collect();
        let mut logits: Vec<Vec<f32>> =
            chunk.iter().zip(caches.iter_mut()).map(|(c, cache)| model.transformer.forward(&c.prompt, cache).unwrap()).collect();
        let steps = chunk[0].greedy.len();
        let mut parted: Vec<Option<usize>> = vec![None; chunk.len()];
        for step in 0..steps {
            for (j, c) in chunk.iter().enumerate() {
                let l = &logits[j];
                let (want, top) = (c.greedy[step], argmax(l));
                if top != want {
                    partings += 1;
                    parted[j].get_or_insert(step);
                    let (best, gap) = (l[top as usize], l[top as usize] - l[want as usize]);
                    let near_tie = gap <= NEAR_TIE_REL * best.abs() || gap <= tie_abs;
                    if !near_tie && moe && gap <= 2.0 * spread[2] {
                        flips += 1;
                        println!("{key} {:?} step {step}: llama.cpp's {want} is {gap:.3} below our {top}: an expert swap", c.name);
                    } else if !near_tie {
                        failures.push(format!(
                            "{key} {:?} step {step}: llama.cpp's {want} is {gap:.3} below our {top} ({best:.3}): \
                             past 1% and past twice llama.cpp's own p95 spread ({tie_abs:.3})",
                            c.name
                        ));
                    }
                }
                devs.extend(c.top[step].iter().map(|&(id, theirs)| (l[id as usize] - theirs).abs()));
            }
            if step + 1 == steps {
                break;
            }
            let feed: Vec<[u32; 1]> = chunk.iter().map(|c| [c.greedy[step]]).collect();
            let mut segs: Vec<(&[u32], &mut _)> = feed.iter().map(|f| &f[..]).zip(caches.iter_mut()).collect();
            logits = model.transformer.forward_batch(&mut segs).unwrap();
        }
        for (c, p) in chunk.iter().zip(&parted) {
            let n = p.unwrap_or(steps);
            agreed += n;
            steps_total += steps;
            println!("{key} {:?}: greedy agrees with llama.cpp on the first {n}/{steps} tokens", c.name);
        }
    }
    devs.sort_by(f32::total_cmp);
    let n = devs.len();
    let ours = [devs[n / 2], devs[n * 95 / 100], devs[n - 1]];
    println!(
        "{key}: {agreed}/{steps_total} steps before the first parting, {partings} teacher-forced disagreements; \
         |ours - llama.cpp| median/p95/max {:.3}/{:.3}/{:.3}, llama.cpp against itself {:.3}/{:.3}/{:.3}",
        ours[0], ours[1], ours[2], spread[0], spread[1], spread[2]
    );
    for (i, what) in ["median", "95th percentile"].iter().enumerate() {
        if ours[i] > SPREAD_FACTOR * spread[i] {
            failures.push(format!("{key}: {what} logit deviation {:.3} > {SPREAD_FACTOR} × llama.cpp's own {:.3}", ours[i], spread[i]));
        }
    }
    if ours[2] > 2.0 * spread[2] {
        failures.push(format!("{key}: largest logit deviation {:.3} > 2 × llama.cpp's own {:.3}", ours[2], spread[2]));
    }
    if flips as f64 > ROUTING_FLIPS * steps_total as f64 {
        failures.push(format!("{key}: {flips} of {steps_total} steps part from llama.cpp past a near-tie (at most {ROUTING_FLIPS} of them may)"));
    }
    for c in &cases {
        let ours = model.tokenizer.encode(&c.text, true).unwrap();
        if ours != c.prompt {
            failures.push(format!("{key} {:?}: our tokens {ours:?} differ from llama.cpp's {:?}", c.name, c.prompt));
        }
    }
    failures
}

#[test]
fn logits_match_llama_cpp_qwen2() {
    let f = check_model(common::QWEN);
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn logits_match_llama_cpp_smollm2() {
    let f = check_model(common::SMOL);
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn logits_match_llama_cpp_gemma3() {
    let f = check_model(common::GEMMA);
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn logits_match_llama_cpp_mixtral_tiny() {
    let f = check_synthetic("mixtral:tiny:q4_k_m");
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn logits_match_llama_cpp_qwen3moe_tiny() {
    let f = check_synthetic("qwen3moe:tiny:q4_k_m");
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn logits_match_llama_cpp_qwen2moe_tiny() {
    let f = check_synthetic("qwen2moe:tiny:q4_k_m");
    assert!(f.is_empty(), "{f:#?}");
}

/// Llama 3's RoPE frequency factors (`rope_freqs`).
#[test]
fn logits_match_llama_cpp_llama3_rope_freqs_tiny() {
    let f = check_synthetic("llama:tiny:q4_k_m");
    assert!(f.is_empty(), "{f:#?}");
}

/// Gemma 2: attention and final logit soft-capping, every other layer a sliding window (of 16
/// here, so that it bites within the prompts), sandwich norms.
#[test]
fn logits_match_llama_cpp_gemma2_tiny() {
    let f = check_synthetic("gemma2:tiny:q4_k_m");
    assert!(f.is_empty(), "{f:#?}");
}

/// Phi-3: fused Q/K/V and gate/up matrices, LongRoPE's short factors and attention factor.
#[test]
fn logits_match_llama_cpp_phi3_tiny() {
    let f = check_synthetic("phi3:tiny:q4_k_m");
    assert!(f.is_empty(), "{f:#?}");
}

/// Phi-2, run through candle-transformers (no native implementation): LayerNorm with biases,
/// parallel attention and MLP, partial rotary embeddings (32 of 64 dimensions).
#[test]
fn logits_match_llama_cpp_phi2_tiny_through_candle_transformers() {
    let f = check_synthetic("phi2:tiny:q4_k_m");
    assert!(f.is_empty(), "{f:#?}");
}

/// GLM-4, run through candle-transformers: fused gate/up, sandwich norms, Q/K/V biases, RoPE on
/// half of each head.
#[test]
fn logits_match_llama_cpp_glm4_tiny_through_candle_transformers() {
    let f = check_synthetic("glm4:tiny:q4_k_m");
    assert!(f.is_empty(), "{f:#?}");
}
