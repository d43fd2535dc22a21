//! Greedy decoding parity with llama.cpp on the three test models (`greedy.json`; prompt ids
//! from the reference so this checks the forward pass alone).
//!
//! For each prompt the free-running greedy sequence must match llama.cpp's for the first 16
//! tokens. Where it parts earlier, the test teacher-forces llama.cpp's tokens and requires every
//! disagreement within those 16 steps to be a near-tie: llama.cpp's token scores within
//! `NEAR_TIE_REL` (1%) of our top logit. Engines that quantize activations to int8 and sum in
//! different orders differ by about that much (measured here: 0.02–0.1 on logits of 13–21), so
//! no two can agree past such ties. It prints where sequences part and by how much; today 8 of
//! the 9 prompts agree on all 32 tokens.

mod common;

use candle_core::Device;
use moa_local::engine::decode::{decode_loop, DecodeOptions};
use moa_local::engine::sampler::argmax;
use moa_local::engine::{Control, Forward, Sampler, SamplingParams};
use moa_local::model::arch::Config;
use moa_local::model::gguf::GgufFile;
use moa_local::model::transformer::Transformer;

const REQUIRED: usize = 16;
const NEAR_TIE_REL: f32 = 0.01;

fn check_model(key: &str) -> Vec<String> {
    let refs = common::reference("greedy.json");
    let g = GgufFile::open(common::model_path(key)).unwrap();
    let cfg = Config::from_gguf(&g).unwrap();
    let model = Transformer::load(&g, cfg, &Device::Cpu).unwrap();
    let mut failures = Vec::new();
    for case in refs["models"][key].as_array().unwrap() {
        let name = case["prompt"].as_str().unwrap();
        let prompt: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        let expected: Vec<u32> = serde_json::from_value(case["greedy_ids"].clone()).unwrap();
        let mut cache = model.new_cache(prompt.len() + expected.len()).unwrap();
        let mut sampler = Sampler::new(SamplingParams::greedy());
        let opts = DecodeOptions { max_tokens: expected.len(), max_draft: 0, logprobs: None };
        let (got, _) =
            decode_loop(&model, &mut cache, &prompt, &mut sampler, &opts, &mut |_| Ok(Control::Continue)).unwrap();
        let agree = got.iter().zip(&expected).take_while(|(a, b)| a == b).count();
        println!("{key} {name:?}: free-running greedy agrees with llama.cpp on {agree}/{} tokens", expected.len());
        if agree >= REQUIRED {
            continue;
        }
        // Teacher-force llama.cpp's tokens and measure each disagreement.
        let mut cache = model.new_cache(prompt.len() + expected.len()).unwrap();
        let mut logits = model.forward(&prompt, &mut cache).unwrap();
        for (step, &want) in expected.iter().take(REQUIRED).enumerate() {
            let top = argmax(&logits) as usize;
            if top as u32 != want {
                let gap = logits[top] - logits[want as usize];
                println!("   step {step}: llama.cpp {want} ({:.3}) vs ours {top} ({:.3}), gap {gap:.3}", logits[want as usize], logits[top]);
                let limit = NEAR_TIE_REL * logits[top].abs();
                if gap > limit {
                    failures.push(format!("{key} {name:?} step {step}: gap {gap:.3} > {limit:.3} (1% of the top logit)"));
                }
            }
            logits = model.forward(&[want], &mut cache).unwrap();
        }
    }
    failures
}

#[test]
fn greedy_matches_llama_cpp_qwen2() {
    let f = check_model(common::QWEN);
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn greedy_matches_llama_cpp_smollm2() {
    let f = check_model(common::SMOL);
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn greedy_matches_llama_cpp_gemma3() {
    let f = check_model(common::GEMMA);
    assert!(f.is_empty(), "{f:#?}");
}
