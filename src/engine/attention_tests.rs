//! Tests of `engine::attention`: against plain f64 softmax attention (with GQA, windows, odd
//! lengths) and the SIMD loops against the scalar ones, bit for bit.

use super::*;
use crate::engine::kv_cache::key_index;

/// Plain softmax attention in f64 over the same inputs; `k` row-major like `v`.
fn reference(s: &AttnShape, q: &[f32], k: &[f16], v: &[f16]) -> Vec<f32> {
    let d = s.head_dim;
    let mut out = vec![0f32; s.seq * s.n_head * d];
    for i in 0..s.seq {
        for h in 0..s.n_head {
            let kvh = h / (s.n_head / s.n_kv_head);
            let qp = s.pos + i;
            let first = s.window.map_or(0, |w| (qp + 1).saturating_sub(w));
            let qr = &q[(h * s.seq + i) * d..][..d];
            let scores: Vec<f64> = (first..=qp)
                .map(|kp| {
                    let kr = &k[(kvh * s.capacity + kp) * d..][..d];
                    let x = qr.iter().zip(kr).map(|(a, b)| *a as f64 * b.to_f64()).sum::<f64>() * s.scale as f64;
                    s.softcap.map_or(x, |c| c as f64 * (x / c as f64).tanh())
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|x| (x - mx).exp()).collect();
            let tot: f64 = w.iter().sum();
            for j in 0..d {
                let val: f64 = (first..=qp).zip(&w).map(|(kp, wi)| wi * v[(kvh * s.capacity + kp) * d + j].to_f64()).sum();
                out[(i * s.n_head + h) * d + j] = (val / tot) as f32;
            }
        }
    }
    out
}

/// Row-major keys `[n_kv_head, capacity, d]` into the cache's block layout.
fn blocked(k: &[f16], n_kv_head: usize, capacity: usize, d: usize) -> Vec<f16> {
    let mut out = vec![f16::ZERO; n_kv_head * key_rows(capacity) * d];
    for h in 0..n_kv_head {
        for p in 0..capacity {
            for j in 0..d {
                out[key_index(h, p, j, d, capacity)] = k[(h * capacity + p) * d + j];
            }
        }
    }
    out
}

fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn check(s: AttnShape, tol: f32) -> Vec<f32> {
    let (d, cap) = (s.head_dim, s.capacity);
    let q = pseudo(s.n_head * s.seq * d, 1);
    let k: Vec<f16> = pseudo(s.n_kv_head * cap * d, 2).into_iter().map(f16::from_f32).collect();
    let v: Vec<f16> = pseudo(s.n_kv_head * cap * d, 3).into_iter().map(f16::from_f32).collect();
    let mut out = vec![0f32; q.len()];
    attention(&s, &q, &blocked(&k, s.n_kv_head, cap, d), &v, &mut out);
    let r = reference(&s, &q, &k, &v);
    for (a, b) in out.iter().zip(&r) {
        assert!((a - b).abs() < tol, "{s:?}: {a} vs {b}");
    }
    out
}

#[test]
fn matches_plain_softmax_attention_with_gqa_and_windows() {
    for (window, pos, seq) in [(None, 0, 5), (None, 7, 1), (Some(3), 2, 6), (Some(4), 9, 1)] {
        check(AttnShape { n_head: 4, n_kv_head: 2, head_dim: 8, capacity: 16, seq, pos, q_rows: seq, q_off: 0, window, scale: 0.35, softcap: None }, 5e-3);
    }
    // Long context, window ending mid-block, capacity not a multiple of the key block.
    check(AttnShape { n_head: 2, n_kv_head: 1, head_dim: 64, capacity: 301, seq: 3, pos: 290, q_rows: 3, q_off: 0, window: Some(37), scale: 0.125, softcap: None }, 5e-3);
    check(AttnShape { n_head: 6, n_kv_head: 2, head_dim: 128, capacity: 75, seq: 70, pos: 0, q_rows: 70, q_off: 0, window: None, scale: 0.09, softcap: None }, 5e-3);
    // Gemma 2's soft-capping, with scores large enough that the cap bends them.
    let capped = check(AttnShape { n_head: 4, n_kv_head: 2, head_dim: 32, capacity: 24, seq: 9, pos: 3, q_rows: 9, q_off: 0, window: Some(5), scale: 1.5, softcap: Some(2.0) }, 5e-3);
    let plain = check(AttnShape { n_head: 4, n_kv_head: 2, head_dim: 32, capacity: 24, seq: 9, pos: 3, q_rows: 9, q_off: 0, window: Some(5), scale: 1.5, softcap: None }, 5e-3);
    assert!(capped.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 0.05), "the cap changes the result");
}

#[test]
fn simd_inner_loops_are_bit_identical_to_scalar() {
    #[cfg(target_arch = "x86_64")]
    {
        if !super::super::attention_avx2::available() {
            eprintln!("no AVX2/F16C on this CPU: only the scalar path exists");
            return;
        }
        let simd = super::super::attention_avx2::OPS;
        for d in [8, 48, 64, 128, 256, 20] {
            for blocks in [1, 3, 4, 5, 17] {
                let q: Vec<f32> = pseudo(d, blocks as u32).into_iter().map(|x| f16::from_f32(x).to_f32()).collect();
                let k: Vec<f16> = pseudo(blocks * 8 * d, 7 + d as u32).into_iter().map(f16::from_f32).collect();
                let (mut a, mut b) = (vec![0f32; blocks * 8], vec![0f32; blocks * 8]);
                (simd.dots)(&q, &k, &mut a);
                (SCALAR.dots)(&q, &k, &mut b);
                assert_eq!(a, b, "dots d={d} blocks={blocks}");
                let n = blocks * 8 - 3;
                let w: Vec<f32> = pseudo(n, 3).into_iter().map(|x| if x < -0.8 { 0.0 } else { x.abs() }).collect();
                let (mut a, mut b) = (pseudo(d, 9), pseudo(d, 9));
                (simd.accumulate)(&w, &k[..n * d], &mut a);
                (SCALAR.accumulate)(&w, &k[..n * d], &mut b);
                assert_eq!(a, b, "accumulate d={d} n={n}");
            }
        }
    }
}
