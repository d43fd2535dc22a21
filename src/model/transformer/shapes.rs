//! What the loader expects of the file's tensor table: every tensor the forward pass reads, with
//! the shape its hyper-parameters give it, checked before any weight is read. A file whose table
//! disagrees with its metadata (a crafted dimension, a swapped shape, a projection of the wrong
//! width) fails here with an error naming the tensor, the shape found and the shape expected,
//! instead of reaching the kernels, which trust the shapes they are given.

use crate::error::{Error, Result};
use crate::model::arch::{Arch, Config};
use crate::model::gguf::GgufFile;

/// Check the shapes (row-major, as candle holds them) of every tensor `cfg` implies: for the
/// native transformer, and for the architectures candle-transformers runs, whose loaders read
/// each tensor by name and trust its shape.
pub fn check(g: &GgufFile, cfg: &Config) -> Result<()> {
    let (e, hd) = (cfg.n_embd, cfg.head_dim);
    let q = cfg.n_head * hd;
    let kv = cfg.n_kv_head * hd;
    // Phi-2: LayerNorms with biases, one MLP of up and down, every projection biased.
    let phi2 = cfg.arch == Arch::Phi2;
    if phi2 && q != e {
        return Err(Error::BadGguf {
            path: g.path.clone(),
            reason: format!("{} heads of {hd} do not make the embedding length {e} (Phi-2 splits the embedding into its heads)", cfg.n_head),
        });
    }
    let mut want: Vec<(String, Vec<usize>, bool)> = vec![
        ("token_embd.weight".into(), vec![cfg.vocab_size, e], true),
        ("output.weight".into(), vec![cfg.vocab_size, e], false),
        ("output_norm.weight".into(), vec![e], true),
        ("rope_freqs.weight".into(), vec![hd / 2], false),
        ("rope_factors_long.weight".into(), vec![hd / 2], false),
        ("rope_factors_short.weight".into(), vec![hd / 2], false),
        ("output_norm.bias".into(), vec![e], phi2),
        ("output.bias".into(), vec![cfg.vocab_size], phi2),
    ];
    for i in 0..cfg.n_layer {
        let mut t = |n: &str, dims: &[usize], required: bool| want.push((format!("blk.{i}.{n}"), dims.to_vec(), required));
        t("attn_norm.weight", &[e], true);
        // Q, K and V as one matrix (Phi-3) or three.
        let fused_qkv = g.tensor_info(&format!("blk.{i}.attn_qkv.weight")).is_some();
        t("attn_qkv.weight", &[q + 2 * kv, e], false);
        t("attn_q.weight", &[q, e], !fused_qkv);
        t("attn_k.weight", &[kv, e], !fused_qkv);
        t("attn_v.weight", &[kv, e], !fused_qkv);
        t("attn_output.weight", &[e, q], true);
        t("ffn_norm.weight", &[e], !phi2);
        if phi2 {
            t("attn_norm.bias", &[e], true);
            t("attn_qkv.bias", &[q + 2 * kv], true);
            t("attn_output.bias", &[e], true);
            t("ffn_up.bias", &[cfg.n_ff], true);
            t("ffn_down.bias", &[e], true);
        }
        match &cfg.moe {
            None if phi2 => {
                t("ffn_up.weight", &[cfg.n_ff, e], true);
                t("ffn_down.weight", &[e, cfg.n_ff], true);
            }
            None if cfg.fused_gate_up => {
                t("ffn_up.weight", &[2 * cfg.n_ff, e], true);
                t("ffn_down.weight", &[e, cfg.n_ff], true);
            }
            None => {
                t("ffn_gate.weight", &[cfg.n_ff, e], true);
                t("ffn_up.weight", &[cfg.n_ff, e], true);
                t("ffn_down.weight", &[e, cfg.n_ff], true);
            }
            Some(m) => {
                let (x, f) = (m.n_expert, m.n_ff_exp);
                t("ffn_gate_inp.weight", &[x, e], true);
                t("ffn_gate_exps.weight", &[x, f, e], true);
                t("ffn_up_exps.weight", &[x, f, e], true);
                t("ffn_down_exps.weight", &[x, e, f], true);
                if let Some(s) = m.n_ff_shared {
                    t("ffn_gate_inp_shexp.weight", &[e], true);
                    t("ffn_gate_shexp.weight", &[s, e], true);
                    t("ffn_up_shexp.weight", &[s, e], true);
                    t("ffn_down_shexp.weight", &[e, s], true);
                }
            }
        }
        t("attn_q.bias", &[q], false);
        t("attn_k.bias", &[kv], false);
        t("attn_v.bias", &[kv], false);
        t("attn_q_norm.weight", &[hd], false);
        t("attn_k_norm.weight", &[hd], false);
        t("post_attention_norm.weight", &[e], false);
        t("post_ffw_norm.weight", &[e], false);
    }
    for (name, dims, required) in want {
        match g.tensor_info(&name) {
            None if required => {
                return Err(Error::BadGguf {
                    path: g.path.clone(),
                    reason: format!("tensor `{name}` is missing for architecture {:?}", cfg.arch),
                })
            }
            None => {}
            Some((found, _)) if found != dims => {
                return Err(Error::BadGguf {
                    path: g.path.clone(),
                    reason: format!(
                        "tensor `{name}` has shape {found:?}, but the metadata ({:?}: embedding {e}, {} heads of {hd}, \
                         {} KV heads, feed-forward {}, vocabulary {}{}) gives {dims:?}",
                        cfg.arch,
                        cfg.n_head,
                        cfg.n_kv_head,
                        cfg.n_ff,
                        cfg.vocab_size,
                        cfg.moe.as_ref().map_or(String::new(), |m| format!(
                            ", {} experts of feed-forward {}{}",
                            m.n_expert,
                            m.n_ff_exp,
                            m.n_ff_shared.map_or(String::new(), |s| format!(", shared expert {s}"))
                        ))
                    ),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}
