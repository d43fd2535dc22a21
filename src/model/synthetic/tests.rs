//! Tests of the synthetic files: they load and generate, follow llama.cpp's quantization mix,
//! and carry each architecture's features (experts, RoPE factors, soft-caps) into the forward pass.

use candle_core::Device;
use super::*;
use crate::engine::{Control, SamplingParams};
use crate::model::{GenerateRequest, Message, Model, Prompt, StopReason};

#[test]
fn parse_specs() {
    let s = SyntheticSpec::parse("Qwen2:7B:Q4_K_M").unwrap();
    assert_eq!((s.arch.as_str(), s.size.as_str(), s.quant), ("qwen2", "7b", SyntheticQuant::Q4KM));
    assert_eq!(s.to_string(), "qwen2:7b:q4_k_m");
    for bad in ["qwen2:7b", "qwen2:13b:q4_0", "llama:7b:q5_k", "foo:1b:q8_0"] {
        let e = SyntheticSpec::parse(bad).unwrap_err().to_string();
        assert!(e.contains("gemma3:270m") && e.contains("q4_k_m"), "{e}");
    }
    assert_eq!([byte_to_unicode(b' '), byte_to_unicode(b'\n'), byte_to_unicode(b'a')], ['Ġ', 'Ċ', 'a']);
}

#[test]
fn q4_k_m_mix_follows_llama_cpp() {
    let t = |spec: &str, kind: &str, layer: usize, cols: usize| {
        let s = SyntheticSpec::parse(spec).unwrap();
        s.weight_type(s.shape().unwrap(), kind, layer, cols)
    };
    assert_eq!(t("qwen2:7b:q4_k_m", "output", 0, 3584), GgmlDType::Q6K);
    assert_eq!(t("qwen2:7b:q4_k_m", "ffn_down", 0, 18944), GgmlDType::Q6K);
    assert_eq!(t("qwen2:7b:q4_k_m", "ffn_down", 4, 18944), GgmlDType::Q4K);
    assert_eq!(t("qwen2:7b:q4_k_m", "attn_v", 5, 3584), GgmlDType::Q6K);
    // Rows of 896 are not a multiple of 256: llama.cpp's fallbacks (the tied embedding is the output).
    assert_eq!(t("qwen2:0.5b:q4_k_m", "attn_q", 5, 896), GgmlDType::Q5_0);
    assert_eq!(t("qwen2:0.5b:q4_k_m", "token_embd", 0, 896), GgmlDType::Q8_0);
    assert_eq!(t("qwen2:0.5b:q4_0", "attn_q", 5, 896), GgmlDType::Q4_0);
}

fn write_and_generate(spec: &str) {
    let spec = SyntheticSpec::parse(spec).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{}.gguf", spec.to_string().replace(':', "-")));
    write_synthetic(&spec, &path, 7).unwrap();
    let model = Model::load_uncached(&path, &Device::Cpu).unwrap();
    let sh = spec.shape().unwrap();
    assert_eq!((model.cfg().n_layer, model.cfg().vocab_size), (sh.n_layer, sh.vocab));
    let prompt = Prompt::Chat(vec![Message { role: "user".into(), content: "Hello there".into() }]);
    let req = GenerateRequest::new(prompt, 4, SamplingParams::greedy());
    // Finite logits over the whole vocabulary (a short forward pass through every layer).
    let mut cache = model.transformer.new_cache(4).unwrap();
    let logits = crate::engine::Forward::forward(&model.transformer, &[1, 2, 3], &mut cache).unwrap();
    assert_eq!(logits.len(), sh.vocab);
    assert!(logits.iter().all(|x| x.is_finite()), "non-finite logits");
    let g = model.generate(&req, &mut |_| Control::Continue).unwrap();
    assert!(g.prompt_text.starts_with("<|im_start|>user\nHello there<|im_end|>"), "{}", g.prompt_text);
    assert_eq!(g.prompt_ids[0], sh.vocab as u32 - 2, "<|im_start|> is one control token");
    // llama.cpp loads only a string array of merges; ours merges two spaces into token 256.
    assert_eq!(model.tokenizer.encode("a   b", false).unwrap()[1], 256, "two of three spaces are one token");
    match g.stop_reason {
        StopReason::MaxTokens => assert_eq!(g.ids.len(), 4),
        StopReason::EndOfGeneration => assert!(g.ids.len() <= 4),
        other => panic!("unexpected stop reason {other:?}"),
    }
}

#[test]
fn llama_135m_q8_0_generates() {
    write_and_generate("llama:135m:q8_0");
}

#[test]
fn qwen2_0_5b_q4_0_generates() {
    write_and_generate("qwen2:0.5b:q4_0");
}

#[test]
fn gemma3_270m_q4_k_m_generates() {
    write_and_generate("gemma3:270m:q4_k_m");
}

#[test]
fn gemma2_phi3_and_rope_factor_files_generate() {
    for spec in ["gemma2:tiny:q4_k_m", "phi3:tiny:q4_k_m", "llama:tiny:q8_0"] {
        write_and_generate(spec);
    }
}

/// A copy of the GGUF at `from` with its metadata edited.
fn with_metadata(from: &Path, to: &Path, edit: impl FnOnce(&mut Vec<(String, Value)>)) {
    let mut f = std::fs::File::open(from).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    let mut meta: Vec<(String, Value)> = c.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    edit(&mut meta);
    let tensors: Vec<(String, QTensor)> =
        c.tensor_infos.keys().map(|n| (n.clone(), c.tensor(&mut f, n, &Device::Cpu).unwrap())).collect();
    let m: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::fs::File::create(to).unwrap(), &m, &t).unwrap();
}

#[test]
fn unsupported_rope_variants_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.gguf");
    write_synthetic(&SyntheticSpec::parse("llama:tiny:q8_0").unwrap(), &base, 1).unwrap();
    let cases: [(&str, Value, &str); 3] = [
        ("llama.rope.scaling.type", Value::String("yarn".into()), "only linear RoPE scaling"),
        ("llama.rope.dimension_count", Value::U32(32), "partial rotary"),
        ("llama.rope.scaling.factor", Value::F32(f32::NAN), "rope.scaling.factor"),
    ];
    for (key, value, why) in cases {
        let bad = dir.path().join("bad.gguf");
        with_metadata(&base, &bad, |m| {
            m.retain(|(k, _)| k != key);
            m.push((key.to_string(), value));
            if key.ends_with("type") {
                m.push(("llama.rope.scaling.factor".into(), Value::F32(4.0)));
            }
        });
        let Err(e) = Model::load_uncached(&bad, &Device::Cpu) else { panic!("{key}: loaded") };
        let e = e.to_string();
        assert!(e.contains(key) && e.contains(why) && e.contains("bad.gguf"), "{key}: {e}");
    }
    // Linear scaling loads and moves every position but the first.
    let linear = dir.path().join("linear.gguf");
    with_metadata(&base, &linear, |m| {
        m.push(("llama.rope.scaling.type".into(), Value::String("linear".into())));
        m.push(("llama.rope.scaling.factor".into(), Value::F32(2.0)));
    });
    use crate::engine::Forward;
    let logits = |p: &Path| {
        let model = Model::load_uncached(p, &Device::Cpu).unwrap();
        let mut c = model.transformer.new_cache(8).unwrap();
        model.transformer.forward_rows(&mut [(&[5, 77, 300][..], &mut c)], &[3]).unwrap().remove(0)
    };
    let (a, b) = (logits(&base), logits(&linear));
    assert_eq!(a[0], b[0], "position 0 has no rotation");
    assert_ne!(a[2], b[2]);
}

/// Phi-3's LongRoPE: a sequence whose cache is longer than the trained context (4096) uses
/// the long factors, a shorter one the short factors (as llama.cpp chooses by context size).
#[test]
fn long_rope_factors_apply_beyond_the_trained_context() {
    use crate::engine::Forward;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phi3.gguf");
    write_synthetic(&SyntheticSpec::parse("phi3:tiny:q8_0").unwrap(), &path, 1).unwrap();
    let model = Model::load_uncached(&path, &Device::Cpu).unwrap();
    assert_eq!(model.cfg().rope_orig_context, 4096);
    let run = |capacity: usize| {
        let mut c = model.transformer.new_cache(capacity).unwrap();
        model.transformer.forward_rows(&mut [(&[5, 77, 300][..], &mut c)], &[3]).unwrap().remove(0)
    };
    let (short, short_again, long) = (run(64), run(4096), run(4097));
    assert_eq!(short, short_again);
    assert_eq!(short[0], long[0], "position 0 has no rotation");
    assert_ne!(short[2], long[2], "the long factors change later positions");
}

#[test]
fn moe_tiny_files_generate() {
    for spec in ["mixtral:tiny:q4_k_m", "qwen3moe:tiny:q4_k_m", "qwen2moe:tiny:q4_k_m"] {
        write_and_generate(spec);
    }
}

/// A prefill groups its rows by expert; decode runs one row's experts fused. Both must give
/// the same logits, position by position, and the tiny files' logits must be peaked.
#[test]
fn moe_prefill_matches_decode() {
    use crate::engine::Forward;
    let dir = tempfile::tempdir().unwrap();
    for spec in ["qwen2moe:tiny:q4_k_m", "mixtral:tiny:q8_0"] {
        let path = dir.path().join("m.gguf");
        write_synthetic(&SyntheticSpec::parse(spec).unwrap(), &path, 3).unwrap();
        let model = Model::load_uncached(&path, &Device::Cpu).unwrap();
        let moe = model.cfg().moe.clone().expect("a mixture of experts");
        assert_eq!((moe.n_expert, moe.n_used), (8, 2));
        let toks: Vec<u32> = (0..24).map(|i| (i * 37 + 11) % 500).collect();
        let mut c1 = model.transformer.new_cache(32).unwrap();
        let all = model.transformer.forward_rows(&mut [(&toks[..], &mut c1)], &[toks.len()]).unwrap().remove(0);
        let mut c2 = model.transformer.new_cache(32).unwrap();
        for (i, t) in toks.iter().enumerate() {
            let one = model.transformer.forward(&[*t], &mut c2).unwrap();
            let scale = one.iter().fold(0f32, |m, x| m.max(x.abs()));
            let dev = one.iter().zip(&all[i]).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(dev <= 2e-3 * scale, "{spec} position {i}: prefill and decode differ by {dev} (logits up to {scale})");
        }
        let spread = all[0].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) - all[0].iter().fold(f32::INFINITY, |m, &x| m.min(x));
        assert!(spread > 5.0, "{spec}: logits spread only {spread}: not peaked");
    }
}

