//! Drafts from the context (`engine::draft`): at temperature 0 the text is the one plain
//! one-token steps give, on every bundled model, for MoA aggregations and plain prompts; a
//! seeded sampled run's tokens do not depend on how long its drafts may be; batched samples
//! draft each on its own.

mod common;

use candle_core::Device;
use moa_local::engine::{Control, SamplingParams};
use moa_local::model::{GenerateRequest, Generation, Message, Model, Prompt};
use moa_local::moa::prompt::{inject_references, AGGREGATE_AND_SYNTHESIZE};

fn user(s: &str) -> Message {
    Message { role: "user".into(), content: s.into() }
}

/// An aggregation prompt as a MoA run builds it: two references to synthesize.
fn aggregation() -> Prompt {
    let refs = [
        "The CAP theorem states that a distributed data store can provide only two of three guarantees: consistency, availability and partition tolerance. When the network partitions, a system must choose between consistency and availability.".to_string(),
        "CAP says that during a network partition a distributed system has to pick consistency (every read sees the latest write) or availability (every request gets an answer). Partition tolerance is not optional on real networks.".to_string(),
    ];
    Prompt::Chat(inject_references(&[user("Explain the CAP theorem in two sentences.")], AGGREGATE_AND_SYNTHESIZE, &refs))
}

fn generate(m: &Model, prompt: &Prompt, sampling: SamplingParams, max_draft: usize, max_tokens: usize) -> Generation {
    let mut req = GenerateRequest::new(prompt.clone(), max_tokens, sampling);
    req.max_draft = max_draft;
    let mut streamed = String::new();
    let g = m
        .generate(&req, &mut |p| {
            streamed.push_str(p);
            Control::Continue
        })
        .unwrap();
    assert_eq!(streamed, g.text, "the streamed pieces are the text");
    g
}

#[test]
fn greedy_text_is_the_same_with_and_without_drafts_on_every_model() {
    for key in common::available() {
        let m = Model::load(common::model_path(key), &Device::Cpu).unwrap();
        let plain = Prompt::Raw("A short history of the printing press: it began".into());
        let mut accepted = 0;
        for (what, prompt) in [("aggregation", aggregation()), ("plain", plain)] {
            let off = generate(&m, &prompt, SamplingParams::greedy(), 0, 48);
            let on = generate(&m, &prompt, SamplingParams::greedy(), moa_local::engine::draft::MAX_DRAFT, 48);
            assert_eq!(on.ids, off.ids, "{key}, {what}: drafts changed the greedy tokens");
            assert_eq!(on.stop_reason, off.stop_reason);
            assert_eq!((off.stats.drafted_tokens, off.stats.decode_passes + 1), (0, off.ids.len().max(1)), "{key}: --no-draft is one token per pass");
            if on.ids.len() > 3 {
                assert!(on.stats.drafted_tokens > 0, "{key}, {what}: no draft was verified");
            }
            assert!(on.stats.accepted_tokens <= on.stats.drafted_tokens);
            assert!(on.stats.decode_passes + on.stats.accepted_tokens + 1 >= on.ids.len(), "{key}: passes and accepted drafts account for every token");
            accepted += on.stats.accepted_tokens;
        }
        assert!(accepted > 0, "{key}: no draft token was ever accepted");
    }
}

#[test]
fn seeded_sampling_does_not_depend_on_the_draft_length() {
    let m = Model::load(common::model_path(common::QWEN), &Device::Cpu).unwrap();
    let sampling = SamplingParams { temperature: 0.8, seed: 9, ..Default::default() };
    let runs: Vec<Generation> = [1, 3, 12].iter().map(|&d| generate(&m, &aggregation(), sampling.clone(), d, 48)).collect();
    assert!(runs[2].stats.accepted_tokens > 0, "drafts were accepted while sampling");
    for r in &runs[1..] {
        assert_eq!(r.ids, runs[0].ids, "a seeded run's tokens changed with the draft length");
    }
}

#[test]
fn batched_samples_draft_each_on_its_own() {
    let m = Model::load(common::model_path(common::QWEN), &Device::Cpu).unwrap();
    let sampling = SamplingParams { temperature: 0.7, ..Default::default() };
    let req = GenerateRequest::new(aggregation(), 40, sampling.clone());
    let seeds = [1u64, 2, 3];
    let batch = m.generate_samples(&req, &seeds, &mut |_, _| Control::Continue).unwrap();
    for (i, &seed) in seeds.iter().enumerate() {
        let alone = generate(&m, &aggregation(), SamplingParams { seed, ..sampling.clone() }, moa_local::engine::draft::MAX_DRAFT, 40);
        assert_eq!(batch[i].ids, alone.ids, "sample {i} differs from its own generation");
    }
    assert!(batch.iter().map(|g| g.stats.accepted_tokens).sum::<usize>() > 0);
    // Greedy samples in one batch: each the plain greedy text.
    let greedy = GenerateRequest { max_draft: moa_local::engine::draft::MAX_DRAFT, ..GenerateRequest::new(aggregation(), 40, SamplingParams::greedy()) };
    let b = m.generate_samples(&greedy, &[5, 6], &mut |_, _| Control::Continue).unwrap();
    let plain = generate(&m, &aggregation(), SamplingParams::greedy(), 0, 40);
    assert!(b.iter().all(|g| g.ids == plain.ids), "greedy batched samples with drafts are the plain greedy text");
}
