//! Continuous batching (`engine::batch`): sequences that join a running batch at different steps,
//! with chunked prefill, drafts on or off, greedy or seeded sampling, and leave at different
//! times, generate exactly the tokens `decode_loop` gives each of them alone.

mod common;

use std::sync::{Arc, Mutex};

use candle_core::Device;
use moa_local::engine::batch::{Batch, Finished, Join};
use moa_local::engine::decode::DecodeOptions;
use moa_local::engine::{decode_loop, Control, Sampler, SamplingParams};
use moa_local::error::Result;
use moa_local::model::Model;

struct Case {
    prompt: Vec<u32>,
    params: SamplingParams,
    opts: DecodeOptions,
    /// The step of the batch at which it joins.
    at: usize,
}

fn alone(m: &Model, c: &Case) -> Vec<u32> {
    let mut cache = m.transformer.new_cache(c.prompt.len() + c.opts.max_tokens).unwrap();
    let mut sampler = Sampler::new(c.params.clone());
    decode_loop(&m.transformer, &mut cache, &c.prompt, &mut sampler, &c.opts, &mut |_| Ok(Control::Continue)).unwrap().0
}

type Slot = Arc<Mutex<Option<Result<Finished>>>>;

fn batched(m: &Model, cases: &[Case], budget: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>, usize) {
    let mut batch = Batch::new(budget);
    let slots: Vec<Slot> = cases.iter().map(|_| Arc::new(Mutex::new(None))).collect();
    let streamed: Vec<Arc<Mutex<Vec<u32>>>> = cases.iter().map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let mut joined = vec![false; cases.len()];
    let mut most = 0;
    loop {
        for (i, c) in cases.iter().enumerate() {
            if !joined[i] && c.at <= batch.steps() {
                joined[i] = true;
                let (slot, seen) = (slots[i].clone(), streamed[i].clone());
                batch.join(Join {
                    prompt: c.prompt.clone(),
                    cache: m.transformer.new_cache(c.prompt.len() + c.opts.max_tokens).unwrap(),
                    sampler: Sampler::new(c.params.clone()),
                    opts: c.opts,
                    on_token: Box::new(move |t| {
                        seen.lock().unwrap().push(t);
                        Control::Continue
                    }),
                    done: Box::new(move |r| *slot.lock().unwrap() = Some(r)),
                });
            }
        }
        if batch.is_empty() && joined.iter().all(|&j| j) {
            break;
        }
        most = most.max(batch.len());
        batch.step(&m.transformer);
    }
    let ids = slots.iter().map(|s| s.lock().unwrap().take().expect("every sequence finished").unwrap().ids).collect();
    let seen = streamed.iter().map(|s| s.lock().unwrap().clone()).collect();
    (ids, seen, most)
}

fn prompt(m: &Model, text: &str) -> Vec<u32> {
    m.tokenizer.encode(text, true).unwrap()
}

#[test]
fn joining_and_leaving_sequences_generate_what_they_generate_alone() {
    for key in [common::SMOL, common::QWEN] {
        let m = Model::load(common::model_path(key), &Device::Cpu).unwrap();
        let seeded = |seed| SamplingParams { temperature: 0.8, top_p: 0.95, seed, ..SamplingParams::greedy() };
        let opts = |max_tokens, draft: bool| DecodeOptions { max_tokens, max_draft: if draft { 8 } else { 0 }, logprobs: None };
        let long = "The history of the printing press: movable type, paper, ink and the spread of books. ".repeat(4);
        let cases = vec![
            Case { prompt: prompt(&m, "Once upon a time"), params: SamplingParams::greedy(), opts: opts(24, true), at: 0 },
            Case { prompt: prompt(&m, &long), params: SamplingParams::greedy(), opts: opts(16, false), at: 0 },
            Case { prompt: prompt(&m, "def fibonacci(n):"), params: seeded(7), opts: opts(20, true), at: 3 },
            Case { prompt: prompt(&m, "The capital of France is"), params: seeded(11), opts: opts(6, false), at: 5 },
            Case { prompt: prompt(&m, &long), params: seeded(3), opts: opts(12, true), at: 9 },
        ];
        let want: Vec<Vec<u32>> = cases.iter().map(|c| alone(&m, c)).collect();
        // A small budget cuts the long prompts into chunks that run beside decoding rows.
        for budget in [16, 512] {
            let (got, streamed, most) = batched(&m, &cases, budget);
            assert!(most >= 3, "{key}: the batch never held several sequences at once ({most})");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "{key} budget {budget}: sequence {i} differs from its run alone");
                assert_eq!(&streamed[i], g, "{key}: sequence {i}'s streamed tokens are not its result");
            }
        }
    }
}

#[test]
fn a_stop_ends_one_sequence_and_a_bad_join_fails_alone() {
    let m = Model::load(common::model_path(common::SMOL), &Device::Cpu).unwrap();
    let mut batch = Batch::new(64);
    let results: Vec<Slot> = (0..3).map(|_| Arc::new(Mutex::new(None))).collect();
    let p = prompt(&m, "Once upon a time");
    for (i, slot) in results.iter().enumerate() {
        let slot = slot.clone();
        let mut n = 0;
        // Sequence 0 stops itself after 3 tokens; 1 runs to max_tokens; 2 asks for more room
        // than its cache has.
        let cap = if i == 2 { p.len() + 4 } else { p.len() + 10 };
        batch.join(Join {
            prompt: p.clone(),
            cache: m.transformer.new_cache(cap).unwrap(),
            sampler: Sampler::new(SamplingParams::greedy()),
            opts: DecodeOptions { max_tokens: 10, max_draft: 0, logprobs: None },
            on_token: Box::new(move |_| {
                n += 1;
                if i == 0 && n == 3 { Control::Stop } else { Control::Continue }
            }),
            done: Box::new(move |r| *slot.lock().unwrap() = Some(r)),
        });
    }
    assert_eq!(batch.len(), 2, "the join without room failed at once");
    let err = results[2].lock().unwrap().take().unwrap().err().expect("no room is an error");
    assert!(err.to_string().contains("max_tokens"), "{err}");
    batch.run(&m.transformer);
    let a = results[0].lock().unwrap().take().unwrap().unwrap();
    let b = results[1].lock().unwrap().take().unwrap().unwrap();
    assert_eq!(a.ids.len(), 3);
    assert_eq!(b.ids.len(), 10);
    assert_eq!(a.ids[..], b.ids[..3], "same prompt, greedy: the stopped sequence is a prefix of the other");
    // The cache holds the prompt and every token but the last (never fed).
    assert_eq!(b.cache.len(), p.len() + 9);
    assert_eq!(b.stats.prompt_tokens, p.len());
    assert_eq!(b.stats.generated_tokens, 10);
}

/// KV admission: under a memory budget that holds one sequence's cache beside the weights, the
/// second of two concurrent requests waits for the first to finish (counted by its loop) and
/// then completes; both answer what they answer alone.
#[test]
fn admission_waits_for_kv_memory_and_completes() {
    use moa_local::model::{GenerateRequest, Prompt};
    use moa_local::runtime::{DeviceSpec, Runtime};
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let prompts = ["Name a primary color.", "What is two plus two?"];
    let req = |p: &str| GenerateRequest::new(Prompt::Chat(vec![moa_local::model::Message::user(p)]), 48, SamplingParams::greedy());
    let solo_rt = Arc::new(Runtime::new(DeviceSpec::Cpu).unwrap());
    let model = solo_rt.load_blocking("smollm2").unwrap();
    let solo: Vec<String> = prompts
        .iter()
        .map(|p| tokio.block_on(solo_rt.generate_batched(model.clone(), req(p), None, |_| Control::Continue)).unwrap().text)
        .collect();
    let c = model.cfg();
    let longest = prompts.iter().map(|p| model.tokenize_prompt(&req(p).prompt).unwrap().1.len()).max().unwrap();
    let one = moa_local::engine::KvCache::bytes_for(c.n_layer, c.n_kv_head, c.head_dim, longest + 48);
    // Weights, plus room for one cache (prompt + 48 tokens) and not two.
    let budget = model.file_size + one * 3 / 2;
    let rt = Arc::new(Runtime::new(DeviceSpec::Cpu).unwrap().with_memory_budget(Some(budget)));
    let m = rt.load_blocking("smollm2").unwrap();
    let both = tokio.block_on(async {
        let runs = prompts.iter().map(|p| rt.generate_batched(m.clone(), req(p), None, |_| Control::Continue));
        futures_util::future::join_all(runs).await
    });
    let texts: Vec<String> = both.into_iter().map(|g| g.unwrap().text).collect();
    assert_eq!(texts, solo, "each answers what it answers alone");
    let loops = rt.decode_loops();
    assert_eq!(loops[0].memory_waits, 1, "the second request waited for the first one's KV memory: {loops:?}");
    assert_eq!((loops[0].kv_bytes, rt.kv_memory().0), (0, 0), "finished sequences give their KV memory back");
    let free = Arc::new(Runtime::new(DeviceSpec::Cpu).unwrap());
    let m = free.load_blocking("smollm2").unwrap();
    tokio.block_on(async {
        let runs = prompts.iter().map(|p| free.generate_batched(m.clone(), req(p), None, |_| Control::Continue));
        futures_util::future::join_all(runs).await
    });
    assert_eq!(free.decode_loops()[0].memory_waits, 0, "with room both run at once");
}

/// A request given up while it waits for a place leaves the queue at the loop's next step,
/// without ever joining; the running one is untouched.
#[test]
fn a_waiting_request_given_up_leaves_without_joining() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use moa_local::model::{GenerateRequest, Message, Prompt};
    use moa_local::runtime::{DeviceSpec, Runtime};
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let rt = Arc::new(Runtime::new(DeviceSpec::Cpu).unwrap().with_parallel(1));
    let m = rt.load_blocking("smollm2").unwrap();
    let req = |p: &str| GenerateRequest::new(Prompt::Chat(vec![Message::user(p)]), 32, SamplingParams::greedy());
    let alone = tokio.block_on(rt.generate_batched(m.clone(), req("Name a primary color."), None, |_| Control::Continue)).unwrap().text;
    let flag = Arc::new(AtomicBool::new(false));
    let (first, second) = tokio.block_on(async {
        let f = flag.clone();
        // The running request gives the waiting one up after its first piece of text.
        let a = rt.generate_batched(m.clone(), req("Name a primary color."), None, move |_| {
            f.store(true, Ordering::Relaxed);
            Control::Continue
        });
        let mut b_req = req("What is two plus two?");
        b_req.cancel = Some(flag.clone());
        let b = rt.generate_batched(m.clone(), b_req, None, |_| Control::Continue);
        futures_util::future::join(a, b).await
    });
    assert_eq!(first.unwrap().text, alone);
    assert!(matches!(second, Err(moa_local::error::Error::Cancelled)), "{:?}", second.map(|g| g.text));
    let l = &rt.decode_loops()[0];
    assert_eq!((l.finished, l.failed, l.running, l.waiting), (2, 0, 0, 0), "the given-up request never joined (the solo run and the first): {l:?}");
}

/// A MoA run given up while its agents wait for a place in their model's batch: the waiting
/// agent leaves the queue at the loop's next step without joining, the run ends cancelled, and
/// the request that holds the place writes what it writes alone.
#[test]
fn a_moa_run_given_up_while_its_agent_waits_leaves_the_queue() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use moa_local::model::{GenerateRequest, Message, Prompt};
    use moa_local::moa::{self, Overrides, Recipe, RunOptions};
    use moa_local::runtime::{DeviceSpec, Runtime};
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let rt = Arc::new(Runtime::new(DeviceSpec::Cpu).unwrap().with_parallel(1));
    let m = rt.load_blocking("smollm2").unwrap();
    let req = || GenerateRequest::new(Prompt::Chat(vec![Message::user("Name a primary color.")]), 32, SamplingParams::greedy());
    let alone = tokio.block_on(rt.generate_batched(m.clone(), req(), None, |_| Control::Continue)).unwrap().text;
    let o = Overrides { models: Some(vec!["smollm2".into()]), temperature: Some(0.0), max_tokens: Some(8), ..Default::default() };
    let recipe = Recipe::build(None, &o, &[]).unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    let opts = RunOptions { cancel: Some(flag.clone()), early_prefill: false, ..RunOptions::default() };
    let (first, run) = tokio.block_on(async {
        let f = flag.clone();
        let a = rt.generate_batched(m.clone(), req(), None, move |_| {
            f.store(true, Ordering::Relaxed);
            Control::Continue
        });
        let conv = [Message::user("What is two plus two?")];
        let b = moa::run(rt.clone(), &recipe, &conv, &opts, moa::report::no_events());
        futures_util::future::join(a, b).await
    });
    assert_eq!(first.unwrap().text, alone);
    assert!(matches!(run, Err(moa_local::error::Error::Cancelled)), "{:?}", run.map(|r| r.aggregate.text));
    let l = &rt.decode_loops()[0];
    assert_eq!((l.finished, l.running, l.waiting), (2, 0, 0), "the MoA agent never joined (the solo run and the first): {l:?}");
}
