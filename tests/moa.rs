//! MoA end to end on the real test models: references really reach the next layer, layers
//! chain, failing proposers are left out, repeated models load once, history is kept, and
//! references that would overflow a context are cut by real token counts.

mod common;

use std::sync::{Arc, Mutex};

use moa_local::model::{Message, Model};
use moa_local::moa::fit::fit_references;
use moa_local::moa::prompt::AGGREGATE_AND_SYNTHESIZE;
use moa_local::moa::{self, MoaEvent, Overrides, Recipe, RunOptions};
use moa_local::runtime::{DeviceSpec, Runtime};

fn recipe(models: &[&str], layers: usize, max_tokens: usize) -> Recipe {
    let o = Overrides {
        models: Some(models.iter().map(|s| s.to_string()).collect()),
        layers: Some(layers),
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..Default::default()
    };
    Recipe::build(None, &o, &[]).unwrap()
}

fn runtime() -> Arc<Runtime> {
    Arc::new(Runtime::new(DeviceSpec::Cpu).unwrap())
}

fn run(rt: &Arc<Runtime>, r: &Recipe, conv: &[Message]) -> (moa_local::Result<moa::MoaReport>, Vec<MoaEvent>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let sink: moa::EventSink = Arc::new(move |e| ev.lock().unwrap().push(e));
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let out = tokio.block_on(moa::run(rt.clone(), r, conv, &RunOptions { seed: 7, ..RunOptions::default() }, sink));
    let ev = events.lock().unwrap().clone();
    (out, ev)
}

fn q(text: &str) -> Vec<Message> {
    vec![Message::user(text)]
}

#[test]
fn two_layers_inject_numbered_references_into_the_aggregator_prompt() {
    let rt = runtime();
    let (r, events) = run(&rt, &recipe(&["qwen-coder", "smollm2"], 2, 12), &q("Name a primary color."));
    let r = r.unwrap();
    assert_eq!(r.layers.len(), 1);
    let answers = &r.layers[0].answers;
    assert_eq!(answers.len(), 2);
    assert!(answers.iter().all(|a| a.error.is_none() && !a.text.trim().is_empty()), "{answers:#?}");
    let p = &r.aggregate.prompt;
    assert!(p.contains("Responses from models:"), "{p}");
    // Numbered in the order the proposers finished (the report says which number each got).
    let mut numbers: Vec<usize> = answers.iter().map(|a| a.reference.expect("every answer is a reference")).collect();
    for a in answers {
        assert!(p.contains(&format!("{}. {}", a.reference.unwrap(), a.text.trim())), "reference {:?} missing from {p}", a.reference);
    }
    let first_done = answers.iter().min_by(|a, b| a.stats.end_secs.total_cmp(&b.stats.end_secs)).unwrap();
    assert_eq!(first_done.reference, Some(1), "the first to finish is reference 1");
    numbers.sort();
    assert_eq!(numbers, vec![1, 2]);
    assert!(!r.aggregate.text.is_empty());
    let streamed: String = events.iter().filter_map(|e| if let MoaEvent::AggregateText(t) = e { Some(t.as_str()) } else { None }).collect();
    assert_eq!(streamed, r.aggregate.text, "the aggregate is streamed piece by piece");
    // Proposer generations of one layer were started together.
    assert!(answers.iter().all(|a| a.stats.start_secs < answers.iter().map(|b| b.stats.end_secs).fold(f64::MAX, f64::min)));
}

#[test]
fn three_layers_chain_references_through_every_layer() {
    let rt = runtime();
    let (r, _) = run(&rt, &recipe(&["smollm2", "qwen-coder"], 3, 8), &q("What is 2 + 2?"));
    let r = r.unwrap();
    assert_eq!(r.layers.len(), 2);
    for a in &r.layers[1].answers {
        for prev in &r.layers[0].answers {
            let n = prev.reference.unwrap();
            assert!(a.prompt.contains(&format!("{n}. {}", prev.text.trim())), "layer 2 prompt lacks layer-1 ref {n}");
        }
    }
    for prev in &r.layers[1].answers {
        assert!(r.aggregate.prompt.contains(&format!("{}. {}", prev.reference.unwrap(), prev.text.trim())));
    }
    assert!(!r.layers[0].answers[0].prompt.contains("Responses from models:"), "layer 1 sees no references");
}

#[test]
fn a_failing_proposer_is_left_out_and_the_others_survive() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("corrupt.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let bad_s = bad.to_string_lossy().to_string();
    let rt = runtime();
    let mut rc = recipe(&["qwen-coder", &bad_s, "smollm2"], 2, 8);
    rc.aggregator.model = "qwen-coder".into();
    let (r, _) = run(&rt, &rc, &q("Say hello."));
    let r = r.unwrap();
    let a = &r.layers[0].answers;
    assert!(a[0].error.is_none() && a[2].error.is_none());
    let err = a[1].error.as_deref().unwrap();
    assert!(err.contains("corrupt.gguf"), "{err}");
    assert!(r.notices.iter().any(|n| n.contains("left out")), "{:?}", r.notices);
    assert_eq!(a[1].reference, None);
    let mut n = vec![a[0].reference.unwrap(), a[2].reference.unwrap()];
    assert!(r.aggregate.prompt.contains(&format!("{}. {}", n[1], a[2].text.trim())));
    n.sort();
    assert_eq!(n, vec![1, 2], "the good answers are numbered 1, 2");

    let mut all_bad = recipe(&[&bad_s, &bad_s], 2, 8);
    all_bad.aggregator.model = "smollm2".into();
    let e = run(&rt, &all_bad, &q("Hi")).0.unwrap_err().to_string();
    assert!(e.contains("every proposer of layer 1 failed") && e.contains("corrupt.gguf"), "{e}");
}

#[test]
fn a_repeated_model_is_loaded_once_and_sampled_with_different_seeds() {
    let rt = runtime();
    let mut rc = recipe(&["smollm2", "smollm2", "smollm2"], 2, 10);
    for a in &mut rc.layers[0] {
        a.temperature = 1.0;
    }
    let (r, events) = run(&rt, &rc, &q("Write a word."));
    let r = r.unwrap();
    let loads = events.iter().filter(|e| matches!(e, MoaEvent::Loading { .. })).count();
    assert_eq!(loads, 1, "one model, one load");
    assert_eq!(rt.loaded().len(), 1);
    let seeds: Vec<u64> = r.layers[0].answers.iter().map(|a| a.seed).collect();
    assert!(seeds[0] != seeds[1] && seeds[1] != seeds[2], "{seeds:?}");
}

#[test]
fn history_reaches_every_agent() {
    let rt = runtime();
    let conv = vec![Message::user("My name is Ada."), Message::assistant("Nice to meet you, Ada."), Message::user("What is my name?")];
    let (r, _) = run(&rt, &recipe(&["qwen-coder", "smollm2"], 2, 8), &conv);
    let r = r.unwrap();
    assert!(r.layers[0].answers.iter().all(|a| a.prompt.contains("Nice to meet you, Ada.")));
    assert!(r.aggregate.prompt.contains("My name is Ada."));
}

#[test]
fn references_too_long_for_the_context_are_cut_by_tokens() {
    let m = Model::load(common::model_path(common::SMOL), &candle_core::Device::Cpu).unwrap();
    let long = "word ".repeat(3000);
    let refs = vec![long.clone(), "short answer".to_string()];
    let max_tokens = m.context_length() - 600;
    let f = fit_references(&m, &q("Summarize."), AGGREGATE_AND_SYNTHESIZE, &refs, max_tokens).unwrap();
    let cap = f.cut_to.expect("references must be cut");
    assert!(f.prompt_tokens <= 600, "{} tokens", f.prompt_tokens);
    assert!(cap > 100, "the budget is used, not thrown away: {cap}");
    let sys = &f.messages[0].content;
    assert!(sys.contains("2. short answer"), "short references are kept whole");
    assert!(sys.contains("[…]"), "cut references are marked");
}

/// A reference is cut when it is appended, never after: what the aggregator's early prefill holds
/// while the answers come in (`Budgets::known`) is always a prefix of the prompt the final fit
/// renders, when the references fit whole and when they must be cut; and a short early answer
/// leaves its unused share to the later ones.
#[test]
fn references_are_cut_as_they_are_appended_and_the_early_prompt_stays_a_prefix() {
    use moa_local::model::prefix::SENTINEL;
    use moa_local::moa::fit::Budgets;
    use moa_local::moa::prompt::inject_references;
    let m = Model::load(common::model_path(common::SMOL), &candle_core::Device::Cpu).unwrap();
    let conv = q("Summarize.");
    let refs = vec!["short answer".to_string(), "word ".repeat(3000), "other ".repeat(2000)];
    for (label, max_tokens) in [("whole", 16), ("cut", m.context_length() - 900)] {
        let f = fit_references(&m, &conv, AGGREGATE_AND_SYNTHESIZE, &refs, max_tokens).unwrap();
        assert_eq!(f.cut_to.is_some(), label == "cut", "{label}");
        assert!(f.prompt_tokens + max_tokens <= m.context_length(), "{label}: {} tokens", f.prompt_tokens);
        let fin = m.render_prompt(&moa_local::model::Prompt::Chat(f.messages.clone())).unwrap();
        let b = Budgets::new(m.as_ref(), "smollm2", m.context_length(), &conv, AGGREGATE_AND_SYNTHESIZE, refs.len(), max_tokens).unwrap();
        // Each answer as it streams (half of it, then all) and once it is settled.
        for k in 0..refs.len() {
            for part in [&refs[k][..refs[k].len() / 2], refs[k].as_str()] {
                let mut texts = b.known(&refs[..k], part).unwrap();
                texts.last_mut().unwrap().push_str(SENTINEL);
                let early = m.prompt_prefix(&inject_references(&conv, AGGREGATE_AND_SYNTHESIZE, &texts)).unwrap().unwrap();
                assert!(fin.starts_with(&early), "{label}: after {k} references the early prompt is not a prefix of the final one");
                assert!(early.len() > 600, "{label}: the instruction at least is known");
            }
        }
        if label == "cut" {
            let sys = &f.messages[0].content;
            assert!(sys.contains("1. short answer\n2. word"), "the short answer is whole");
            let (n2, n3) = (sys.matches("word").count(), sys.matches("other").count());
            assert!(n2 > 100 && n3 > n2 / 2, "the later references share what the first left: {n2} and {n3} words");
        }
    }
}

fn run_with(rt: &Arc<Runtime>, r: &Recipe, conv: &[Message], opts: RunOptions) -> moa::MoaReport {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    tokio.block_on(moa::run(rt.clone(), r, conv, &opts, moa::report::no_events())).unwrap()
}

/// The aggregator's prompt prefilled while the proposers run, and drafts from the references,
/// change when work is done, not what is written: at temperature 0 in recipe order the aggregate
/// is the baseline's text exactly, with most of its prompt computed before the last proposer
/// ended.
#[test]
fn early_prefill_and_drafts_keep_the_aggregate_text() {
    use moa_local::moa::staircase::ReferenceOrder;
    let rt = runtime();
    let mut rc = recipe(&["qwen-coder", "smollm2"], 2, 24);
    rc.aggregator.model = "smollm2".into();
    let conv = q("Explain what a hash map is in one sentence.");
    let base = RunOptions { seed: 3, draft: false, early_prefill: false, reference_order: ReferenceOrder::Recipe, ..RunOptions::default() };
    let fast = RunOptions { draft: true, early_prefill: true, ..base.clone() };
    let b = run_with(&rt, &rc, &conv, base);
    let f = run_with(&rt, &rc, &conv, fast);
    assert_eq!(f.aggregate.prompt, b.aggregate.prompt, "recipe order: the same prompt");
    assert_eq!(f.aggregate.text, b.aggregate.text, "early prefill and drafts changed the aggregate");
    assert!(b.critical_path.early_prefill.is_none());
    assert_eq!(b.critical_path.aggregate_prefilled_after_proposers, b.aggregate.stats.prompt_tokens);
    let early = f.critical_path.early_prefill.as_ref().expect("the plan has room: early prefill ran");
    assert!(early.computed_tokens > 0 && early.updates > 0, "{early:?}");
    let left = f.critical_path.aggregate_prefilled_after_proposers;
    assert!(left < f.aggregate.stats.prompt_tokens / 2, "{left} of {} prompt tokens were left after the proposers", f.aggregate.stats.prompt_tokens);
    assert!(f.aggregate.stats.drafted_tokens > 0 && b.aggregate.stats.drafted_tokens == 0);
    for l in [&b, &f] {
        assert_eq!(l.layers[0].answers.iter().map(|a| a.reference).collect::<Vec<_>>(), vec![Some(1), Some(2)], "recipe order");
    }
}

/// Proposers of layer 2 prefill their prompts while layer 1 still runs (the staircase one layer
/// down): in recipe order at temperature 0 every layer writes what it writes without it, and the
/// layer-2 agents compute most of their prompts before they start.
#[test]
fn layer_two_proposers_prefill_while_layer_one_runs() {
    use moa_local::moa::staircase::ReferenceOrder;
    let rt = runtime();
    let rc = recipe(&["qwen-coder", "smollm2"], 3, 16);
    let conv = q("Name two uses of a hash map.");
    let base = RunOptions { seed: 4, draft: false, early_prefill: false, reference_order: ReferenceOrder::Recipe, ..RunOptions::default() };
    let b = run_with(&rt, &rc, &conv, base.clone());
    rt.clear_prefix_caches();
    let f = run_with(&rt, &rc, &conv, RunOptions { early_prefill: true, ..base });
    assert_eq!(f.plan.layers[1].early_prefill, vec![0, 1], "both layer-2 models are resident during layer 1");
    for (lb, lf) in b.layers.iter().zip(&f.layers) {
        for (x, y) in lb.answers.iter().zip(&lf.answers) {
            assert_eq!((&x.prompt, &x.text), (&y.prompt, &y.text), "layer {} {}: early prefill changed the answer", lb.layer, x.model);
        }
    }
    assert_eq!(f.aggregate.text, b.aggregate.text);
    for (x, y) in b.layers[1].answers.iter().zip(&f.layers[1].answers) {
        assert_eq!(x.stats.prefilled_tokens, x.stats.prompt_tokens, "without it {} computes its whole prompt", x.model);
        assert!(y.stats.prefilled_tokens < y.stats.prompt_tokens / 2, "{}: {} of {} prompt tokens computed after layer 1", y.model, y.stats.prefilled_tokens, y.stats.prompt_tokens);
    }
}

/// The next turn of a conversation reuses each proposer's cache from the turn before: only the
/// tokens it has not seen (the aggregate answer and the new question) are computed, and the
/// answers are those of a fresh runtime.
#[test]
fn the_second_turn_computes_only_new_tokens() {
    let rt = runtime();
    let rc = recipe(&["qwen-coder", "smollm2"], 2, 16);
    // Recipe order: the aggregate prompt must not depend on which proposer finished first.
    let opts = RunOptions { seed: 5, reference_order: moa_local::moa::staircase::ReferenceOrder::Recipe, ..RunOptions::default() };
    let mut conv = q("Name a fruit.");
    let t1 = run_with(&rt, &rc, &conv, opts.clone());
    conv.push(Message { role: "assistant".into(), content: t1.aggregate.text.clone() });
    conv.push(Message::user("And a vegetable?"));
    let t2 = run_with(&rt, &rc, &conv, opts.clone());
    let fresh = run_with(&runtime(), &rc, &conv, opts);
    for (a, (prev, f)) in t2.layers[0].answers.iter().zip(t1.layers[0].answers.iter().zip(&fresh.layers[0].answers)) {
        assert_eq!(a.text, f.text, "{}: a reused cache changed the answer", a.model);
        let seen = prev.stats.prompt_tokens;
        assert!(a.stats.prefilled_tokens + seen <= a.stats.prompt_tokens + 4, "{}: turn 2 computed {} of {} prompt tokens, {seen} of which it had seen", a.model, a.stats.prefilled_tokens, a.stats.prompt_tokens);
        assert_eq!(f.stats.prefilled_tokens, f.stats.prompt_tokens, "a fresh runtime computes everything");
    }
    // The aggregator's early prefill starts from its turn-1 cache (the header and instruction).
    let early = t2.critical_path.early_prefill.as_ref().expect("early prefill ran");
    assert!(early.reused_tokens > 16, "turn 2's aggregator reused {} tokens", early.reused_tokens);
    assert_eq!(t2.aggregate.text, fresh.aggregate.text, "and writes what a fresh runtime writes");
}

/// A mixture of experts (Qwen3-MoE) and an architecture the native transformer does not have
/// (Phi-2, run through candle-transformers) as proposers beside a real model, the real Qwen
/// aggregating: every proposer answers, each answer reaches the aggregator as a reference, and
/// each synthetic proposer's answer is what its model gives alone on the same prompt (temperature
/// 0), so neither the scheduler nor the shared batch loop changes them. (Synthetic weights: the
/// answers are gibberish of the files' filler tokens; the ChatML template is real.)
#[test]
fn moe_and_candle_transformers_proposers_run_in_a_moa() {
    use moa_local::engine::{Control, SamplingParams};
    use moa_local::model::generate::{GenerateRequest, Prompt};
    use moa_local::model::synthetic::{write_synthetic, SyntheticSpec};
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for spec in ["qwen3moe:tiny:q4_k_m", "phi2:tiny:q4_k_m"] {
        let path = dir.path().join(format!("{}.gguf", spec.replace(':', "-")));
        // Seed 5: weights whose greedy answer to this question is not all newlines.
        write_synthetic(&SyntheticSpec::parse(spec).unwrap(), &path, 5).unwrap();
        files.push(path.display().to_string());
    }
    let rt = runtime();
    let mut r = recipe(&[files[0].as_str(), files[1].as_str(), "smollm2"], 2, 12);
    r.aggregator.model = "qwen-coder".into();
    let question = q("Name a primary color.");
    let (out, _) = run(&rt, &r, &question);
    let out = out.unwrap();
    let answers = &out.layers[0].answers;
    assert_eq!(answers.len(), 3);
    for a in answers {
        assert!(a.error.is_none() && !a.text.is_empty() && a.stats.generated_tokens > 0, "{a:#?}");
        assert!(out.aggregate.prompt.contains(&format!("{}. {}", a.reference.unwrap(), a.text.trim())), "{} is not among the references", a.model);
    }
    assert!(!out.aggregate.text.is_empty());
    for (path, a) in files.iter().zip(answers) {
        let m = Model::load(path, &candle_core::Device::Cpu).unwrap();
        let req = GenerateRequest::new(Prompt::Chat(question.clone()), 12, SamplingParams::greedy());
        let alone = m.generate(&req, &mut |_| Control::Continue).unwrap();
        assert_eq!(alone.text, a.text, "{path}: the MoA proposer's answer differs from the model's own");
    }
}
