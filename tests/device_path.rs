//! The device code path (candle's generic tensor ops: candle's quantized matmuls, f16 cache
//! tensors, attention by matmul + mask + softmax) against the CPU fast path (the project's
//! kernels and attention), on the same weights.
//!
//! - Always: the generic path on CPU (`MOA_GENERIC_OPS=1`, the same code a GPU runs) on the
//!   real test models, so the GPU path is exercised by every CI run.
//! - With `--features cuda` (run on a machine with a GPU): CUDA against the CPU's f32 reference
//!   (weights dequantized, see `load_exact`) on small random-weight models written by moa-local
//!   (`qwen2:0.5b:q4_k_m` shapes: Q4_K, Q5_0, Q6_K, Q8_0 weights; llama, gemma2, phi3), which is
//!   how a lent GPU machine checks it (no model files reach it); and two models at once on one GPU.
//!
//! Both check what a user relies on: the prompt's logits close (the top logit within 2%, the RMS
//! of the difference within 5% of the logits' RMS; see [`TOP_REL`]), and
//! the same greedy continuation for 16 tokens (an early parting must be a near-tie, within 1% of
//! the top logit, and is printed).

mod common;

use std::path::Path;

use candle_core::Device;
use moa_local::engine::decode::{decode_loop, DecodeOptions};
use moa_local::engine::sampler::argmax;
use moa_local::engine::{Control, Forward, Sampler, SamplingParams};
use moa_local::model::arch::Config;
use moa_local::model::gguf::GgufFile;
use moa_local::model::transformer::Transformer;

const STEPS: usize = 16;
/// The top logit's relative difference, and the RMS of the difference over the RMS of the logits.
/// Two correct int8-activation pipelines part by about this much: measured generic-vs-fast on
/// CPU, top 0.01–1.2%, RMS 1.4–3.9% (rounding an activation to int8 one way or the other is a
/// 1/127 step that the next 30 layers carry on); a wrong op moves logits by far more.
const TOP_REL: f32 = 2e-2;
const RMS_REL: f32 = 5e-2;
const NEAR_TIE_REL: f32 = 0.01;

fn load(path: &Path, device: &Device, generic: bool) -> Transformer {
    // Read at load time; every test of this binary loads under the same lock.
    std::env::set_var("MOA_GENERIC_OPS", if generic { "1" } else { "0" });
    let g = GgufFile::open(path).unwrap();
    let cfg = Config::from_gguf(&g).unwrap();
    let t = Transformer::load(&g, cfg, device).unwrap();
    std::env::remove_var("MOA_GENERIC_OPS");
    t
}

/// A random-weight file of `spec` (`arch:size:quant`) written into `dir`.
fn synthetic(dir: &Path, spec: &str, seed: u64) -> std::path::PathBuf {
    use moa_local::model::synthetic::{write_synthetic, SyntheticSpec};
    let path = dir.join(format!("{}.gguf", spec.replace(':', "-")));
    write_synthetic(&SyntheticSpec::parse(spec).unwrap(), &path, seed).unwrap();
    path
}

fn greedy(model: &Transformer, prompt: &[u32]) -> Vec<u32> {
    let mut cache = model.new_cache(prompt.len() + STEPS).unwrap();
    let mut sampler = Sampler::new(SamplingParams::greedy());
    let opts = DecodeOptions { max_tokens: STEPS, max_draft: 0, logprobs: None };
    decode_loop(model, &mut cache, prompt, &mut sampler, &opts, &mut |_| Ok(Control::Continue)).unwrap().0
}

/// Compare `other` with the CPU fast path `reference`; returns failures (empty when they agree).
/// `tie`: an absolute gap also accepted as a near-tie (0: only the relative one).
fn compare(label: &str, reference: &Transformer, other: &Transformer, prompt: &[u32], tie: f32) -> Vec<String> {
    let mut failures = Vec::new();
    let mut c1 = reference.new_cache(prompt.len() + STEPS).unwrap();
    let mut c2 = other.new_cache(prompt.len() + STEPS).unwrap();
    let (a, b) = (reference.forward(prompt, &mut c1).unwrap(), other.forward(prompt, &mut c2).unwrap());
    assert!(b.iter().all(|x| x.is_finite()), "{label}: non-finite logits");
    let rms = |v: &mut dyn Iterator<Item = f32>| {
        let (s, n) = v.fold((0f64, 0usize), |(s, n), x| (s + (x as f64).powi(2), n + 1));
        (s / n as f64).sqrt() as f32
    };
    let rel = rms(&mut a.iter().zip(&b).map(|(x, y)| x - y)) / rms(&mut a.iter().copied());
    let (ta, tb) = (argmax(&a) as usize, argmax(&b) as usize);
    let top_rel = (a[ta] - b[ta]).abs() / a[ta].abs();
    let max = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    println!("{label}: prompt logits rms diff / rms {rel:.2e}, top logit {:.3} vs {:.3} (rel {top_rel:.2e}), max |diff| {max:.3}", a[ta], b[ta]);
    if rel > RMS_REL || top_rel > TOP_REL {
        failures.push(format!("{label}: logits differ (rms rel {rel:.2e} > {RMS_REL} or top rel {top_rel:.2e} > {TOP_REL})"));
    }
    if ta != tb {
        println!("   top token {ta} vs {tb}");
    }
    let (ga, gb) = (greedy(reference, prompt), greedy(other, prompt));
    let agree = ga.iter().zip(&gb).take_while(|(x, y)| x == y).count();
    println!("{label}: greedy agrees on {agree}/{STEPS} tokens");
    if agree < STEPS {
        // Teacher-force the reference's tokens through `other` and measure the parting step.
        let mut cache = other.new_cache(prompt.len() + STEPS).unwrap();
        let mut logits = other.forward(prompt, &mut cache).unwrap();
        for (step, &want) in ga.iter().enumerate() {
            let top = argmax(&logits) as usize;
            if top as u32 != want {
                let gap = logits[top] - logits[want as usize];
                println!("   step {step}: reference {want} vs {top}, gap {gap:.4}");
                if gap > (NEAR_TIE_REL * logits[top].abs()).max(tie) {
                    failures.push(format!("{label} step {step}: gap {gap:.4} is not a near-tie"));
                }
                break;
            }
            logits = other.forward(&[want], &mut cache).unwrap();
        }
    }
    failures
}

/// The first reference prompt of a test model (token ids from llama.cpp).
fn reference_prompt(key: &str) -> Vec<u32> {
    let refs = common::reference("greedy.json");
    serde_json::from_value(refs["models"][key][0]["prompt_ids"].clone()).unwrap()
}

static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn generic_ops_on_cpu_match_the_fast_path() {
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut failures = Vec::new();
    for key in [common::SMOL, common::QWEN, common::GEMMA] {
        let path = common::model_path(key);
        let fast = load(&path, &Device::Cpu, false);
        let mut generic = load(&path, &Device::Cpu, true);
        let prompt = reference_prompt(key);
        failures.extend(compare(&format!("{key} generic-cpu"), &fast, &generic, &prompt, 0.0));
        // A prompt in several passes: later passes attend to the earlier ones through the cache.
        generic.set_prefill_rows(prompt.len() / 3 + 1);
        failures.extend(compare(&format!("{key} generic-cpu in passes"), &fast, &generic, &prompt, 0.0));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The device path builds a pass's attention mask once per window of the model's layers,
/// `[seq, kv_len]`, shared by every layer and query head, and none for a decode step (per layer
/// and query head it was 90 times as many bytes on SmolLM2's 30 layers of 3 query heads per KV
/// head: host work and an upload a GPU pays in every prefill pass).
#[test]
fn generic_path_builds_one_mask_per_pass_and_window() {
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    for (key, windows) in [(common::SMOL, 1u64), (common::GEMMA, 2)] {
        let model = load(&common::model_path(key), &Device::Cpu, true);
        let prompt = reference_prompt(key);
        let n = prompt.len() as u64;
        let mut cache = model.new_cache(prompt.len() + 2).unwrap();
        let logits = model.forward(&prompt, &mut cache).unwrap();
        assert_eq!(model.mask_bytes_built(), windows * n * n * 4, "{key}: mask bytes of one {n}-token pass");
        model.forward(&[argmax(&logits)], &mut cache).unwrap();
        assert_eq!(model.mask_bytes_built(), windows * n * n * 4, "{key}: a decode step needs no mask");
    }
}

/// The architectures without a bundled real file, on their tiny synthetic files: Gemma 2's
/// soft-caps and alternating windows, Phi-3's fused matrices and LongRoPE, Llama 3's RoPE factors.
/// Their peaked random weights make every rounding difference larger than on real models, so a
/// greedy parting may also be as wide as twice llama.cpp's own p95 spread on the file (flash
/// attention on against off, from `tests/data/parity/`), the yardstick of `logit_parity`.
#[test]
fn generic_ops_on_cpu_match_the_fast_path_on_synthetic_architectures() {
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for spec in ["gemma2:tiny:q4_k_m", "phi3:tiny:q4_k_m", "llama:tiny:q4_k_m"] {
        let path = synthetic(dir.path(), spec, 1);
        let fast = load(&path, &Device::Cpu, false);
        let mut generic = load(&path, &Device::Cpu, true);
        let prompt: Vec<u32> = (0..40u32).map(|i| (11 + i * 37) % 500).collect();
        let parity_file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/parity/synthetic-{}.json", spec.replace(':', "-")));
        let parity: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(parity_file).unwrap()).unwrap();
        let tie = 2.0 * parity["spread"]["logit_abs_p95"].as_f64().unwrap() as f32;
        failures.extend(compare(&format!("{spec} generic-cpu"), &fast, &generic, &prompt, tie));
        generic.set_prefill_rows(13);
        failures.extend(compare(&format!("{spec} generic-cpu in passes"), &fast, &generic, &prompt, tie));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The f32 reference of a file: the CPU's generic path with candle's weights dequantized to f32
/// (`CANDLE_DEQUANTIZE_ALL`, read once per thread, so on a thread of its own), f32 activations.
/// CUDA (int8 activations in 32-blocks) is checked against it rather than against the CPU fast
/// path (int8 in 256-blocks): two int8 pipelines can part on either side of the exact value
/// (on an H200, `phi3:tiny:q4_k_m`'s top logit: exact 11.515, CPU fast 11.759, CUDA 11.411; CUDA
/// with f32 activations 11.515).
#[cfg(feature = "cuda")]
fn load_exact(path: &Path) -> Transformer {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
        let t = load(&path, &Device::Cpu, true);
        std::env::remove_var("CANDLE_DEQUANTIZE_ALL");
        t
    })
    .join()
    .unwrap()
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_matches_cpu_on_a_random_weight_model() {
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for spec in ["qwen2:0.5b:q4_k_m", "llama:135m:q8_0", "gemma2:tiny:q4_k_m", "phi3:tiny:q4_k_m"] {
        let path = synthetic(dir.path(), spec, 7);
        let exact = load_exact(&path);
        let mut cuda = load(&path, &moa_local::runtime::DeviceSpec::Cuda(0).open().expect("opening cuda:0"), false);
        let vocab = exact.cfg.vocab_size as u32;
        let prompt: Vec<u32> = (0..40u32).map(|i| (300 + i * 37) % vocab).collect();
        failures.extend(compare(&format!("{spec} cuda"), &exact, &cuda, &prompt, 0.0));
        // The CPU fast path against the same reference, for scale (printed, not asserted here:
        // the CPU tests check it).
        let fast = load(&path, &Device::Cpu, false);
        for f in compare(&format!("{spec} cpu fast path"), &exact, &fast, &prompt, 0.0) {
            eprintln!("  (cpu fast path) {f}");
        }
        cuda.set_prefill_rows(16);
        failures.extend(compare(&format!("{spec} cuda in passes"), &exact, &cuda, &prompt, 0.0));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Two models decoding at once on one GPU, each on its own thread as concurrent proposers do,
/// with their devices opened as the runtime opens them (a handle and stream per model, event
/// tracking off), write what each writes alone: no shared buffer or missing synchronisation lets
/// one model's work reach the other's. (On candle's per-thread default streams, one device handle
/// for both, this failed on an H200 in the second round.)
#[cfg(feature = "cuda")]
#[test]
fn cuda_concurrent_models_match_their_solo_runs() {
    use moa_local::runtime::DeviceSpec;
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let spec = DeviceSpec::Cuda(0);
    let shared = spec.open().expect("opening cuda:0");
    let models: Vec<Transformer> = ["qwen2:0.5b:q4_k_m", "llama:135m:q8_0"]
        .iter()
        .map(|syn| load(&synthetic(dir.path(), syn, 11), &spec.open_for_model(&shared).unwrap(), false))
        .collect();
    let prompt: Vec<u32> = (0..40u32).map(|i| 300 + i * 37).collect();
    let run = |m: &Transformer| {
        let mut c = m.new_cache(prompt.len() + STEPS).unwrap();
        (m.forward(&prompt, &mut c).unwrap(), greedy(m, &prompt))
    };
    let solo: Vec<_> = models.iter().map(run).collect();
    for round in 0..6 {
        let together: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = models.iter().map(|m| s.spawn(move || run(m))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, ((l1, t1), (l2, t2))) in solo.iter().zip(&together).enumerate() {
            let top = l1.iter().fold(0f32, |a, x| a.max(x.abs()));
            let diff = l1.iter().zip(l2).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            eprintln!("round {round} model {i}: max logit difference {diff} (top {top}), tokens {t1:?} / {t2:?}");
            assert!(diff <= 1e-4 * top, "round {round}, model {i}: logits moved by {diff} (top {top}) when run beside another model");
            assert_eq!(t1, t2, "round {round}, model {i}: greedy tokens changed when run beside another model");
        }
    }
}
