//! Prompt caches that are extended and rolled back (`model::prefix`): the logits after an
//! incremental prefill are exactly those of one prefill of the same tokens, and a cached
//! generation writes the text a fresh one writes while computing only the new tokens.

mod common;

use candle_core::Device;
use moa_local::engine::{Control, Forward, SamplingParams};
use moa_local::model::{GenerateRequest, Message, Model, Prompt};

#[test]
fn an_incremental_prefill_with_a_rollback_gives_the_logits_of_one_prefill() {
    for key in [common::SMOL, common::GEMMA] {
        let m = Model::load(common::model_path(key), &Device::Cpu).unwrap();
        let text = "Mixture-of-Agents feeds several models' answers to an aggregator, which writes one reply. ".repeat(3);
        let t = m.tokenizer.encode(&text, true).unwrap();
        let mut one = m.transformer.new_cache(t.len()).unwrap();
        let want = m.transformer.forward(&t, &mut one).unwrap();
        let mut inc = m.transformer.new_cache(t.len()).unwrap();
        let wrong: Vec<u32> = t[20..35].iter().rev().copied().collect();
        m.transformer.forward_rows(&mut [(&t[..20], &mut inc)], &[0]).unwrap();
        m.transformer.forward_rows(&mut [(&wrong, &mut inc)], &[0]).unwrap();
        inc.truncate(17);
        m.transformer.forward_rows(&mut [(&t[17..29], &mut inc)], &[0]).unwrap();
        let got = m.transformer.forward(&t[29..], &mut inc).unwrap();
        assert_eq!(got, want, "{key}: logits after pieces and a rollback differ from one prefill");
        // The rows of a draft verification are the one-token steps' logits.
        let mut a = m.transformer.new_cache(t.len()).unwrap();
        m.transformer.forward(&t[..t.len() - 4], &mut a).unwrap();
        let rows = m.transformer.forward_rows(&mut [(&t[t.len() - 4..], &mut a)], &[4]).unwrap().pop().unwrap();
        let mut b = m.transformer.new_cache(t.len()).unwrap();
        m.transformer.forward(&t[..t.len() - 4], &mut b).unwrap();
        for (i, row) in rows.iter().enumerate() {
            let step = m.transformer.forward(&t[t.len() - 4 + i..t.len() - 3 + i], &mut b).unwrap();
            assert_eq!(row, &step, "{key}: row {i} of a 4-row pass differs from its one-token step");
        }
    }
}

#[test]
fn a_cached_generation_writes_the_fresh_text_and_computes_only_new_tokens() {
    let m = Model::load(common::model_path(common::QWEN), &Device::Cpu).unwrap();
    let turn1 = vec![Message::user("Name three prime numbers.")];
    let req = |msgs: Vec<Message>| GenerateRequest::new(Prompt::Chat(msgs), 24, SamplingParams::greedy());
    let mut pc = m.new_prompt_cache(64).unwrap();
    let first = m.generate_cached(&req(turn1.clone()), &mut pc, &mut |_| Control::Continue).unwrap();
    let fresh = m.generate(&req(turn1.clone()), &mut |_| Control::Continue).unwrap();
    assert_eq!(first.ids, fresh.ids);
    assert_eq!(first.stats.prefilled_tokens, first.stats.prompt_tokens, "an empty cache computes the whole prompt");
    // The next turn: the history (with the answer) is in the cache already.
    let mut turn2 = turn1.clone();
    turn2.push(Message { role: "assistant".into(), content: first.text.clone() });
    turn2.push(Message::user("And three even ones?"));
    let second = m.generate_cached(&req(turn2.clone()), &mut pc, &mut |_| Control::Continue).unwrap();
    let fresh2 = m.generate(&req(turn2), &mut |_| Control::Continue).unwrap();
    assert_eq!(second.ids, fresh2.ids, "the reused cache changed the answer");
    let new_tokens = second.stats.prompt_tokens - first.stats.prompt_tokens - first.ids.len();
    assert!(
        second.stats.prefilled_tokens <= new_tokens + 2,
        "turn 2 computed {} of {} prompt tokens; only about {new_tokens} are new",
        second.stats.prefilled_tokens,
        second.stats.prompt_tokens
    );
}

/// Requests that begin alike (a system prompt and the template's start) but ask different
/// things: after the first, each of the others starts from a copy of the shared positions of the
/// first one's kept cache, which stays for the next (served requests arriving together all skip
/// computing their beginning), and each writes what it writes from an empty cache.
#[test]
fn requests_sharing_a_beginning_all_start_from_the_kept_cache_and_write_the_same() {
    use std::sync::Arc;
    use moa_local::runtime::{DeviceSpec, Runtime};
    let rt = Arc::new(Runtime::new(DeviceSpec::Cpu).unwrap());
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let m = tokio.block_on(rt.load("qwen-coder")).unwrap();
    let req = |q: &str| {
        let msgs = vec![Message { role: "system".into(), content: "You are a concise assistant that answers in one sentence.".into() }, Message::user(q)];
        GenerateRequest::new(Prompt::Chat(msgs), 12, SamplingParams::greedy())
    };
    let asks = ["Name a primary color.", "What is two plus two?", "Name a planet."];
    let fresh: Vec<_> = asks.iter().map(|q| m.generate(&req(q), &mut |_| Control::Continue).unwrap()).collect();
    let first = tokio.block_on(rt.generate_batched(m.clone(), req(asks[0]), None, |_| Control::Continue)).unwrap();
    assert_eq!(first.ids, fresh[0].ids);
    assert_eq!(rt.prefix_caches().0, 1, "the first request's cache is kept");
    for (q, want) in asks[1..].iter().zip(&fresh[1..]) {
        let g = tokio.block_on(rt.generate_batched(m.clone(), req(q), None, |_| Control::Continue)).unwrap();
        assert_eq!(g.ids, want.ids, "{q}: starting from the shared positions changed the answer");
        assert!(
            g.stats.prefilled_tokens * 2 < g.stats.prompt_tokens,
            "{q}: computed {} of {} prompt tokens; the system prompt was shared",
            g.stats.prefilled_tokens,
            g.stats.prompt_tokens
        );
    }
    // The first cache stayed (copied from, not taken) and each request's own cache was kept.
    assert_eq!(rt.prefix_caches().0, 3);
}
