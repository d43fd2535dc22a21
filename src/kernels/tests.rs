//! Tests of the kernels: activation quantization against llama.cpp's rounding rules; every weight
//! type x every instruction set this machine has against a scalar f64 reference of the quantized
//! dot product (odd block counts, every tile remainder); block layouts against candle's
//! dequantize; `forward` against candle's quantized matmul and its fallbacks; the thread pool.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::blocks::{decode_small, decode_super, dequantize_row, ActType, QType, QK, QK_K};
use super::matmul::{qmatmul_many_with, qtype_of};
use super::tensor::{forward, forward_many, try_kernels, Weight};
use super::pool::pool;
use super::matmul::{qmatmul_with, Isa, QWeight};
use super::quantize::Acts;

/// Random well-formed blocks of `t`: random quant bytes, small finite scales.
pub(super) fn random_weight(t: QType, n: usize, k: usize, rng: &mut StdRng) -> Vec<u8> {
    let bb = t.block_bytes();
    let mut v = vec![0u8; n * k / t.block_elems() * bb];
    rng.fill(&mut v[..]);
    for b in v.chunks_exact_mut(bb) {
        let (x, y): (f32, f32) = (rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
        let mut put = |off: usize, val: f32| b[off..off + 2].copy_from_slice(&f16::from_f32(val).to_le_bytes());
        match t {
            QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => put(0, 0.05 * x),
            QType::Q4_1 | QType::Q5_1 => {
                put(0, 0.05 * x.abs());
                put(2, y);
            }
            QType::Q4K | QType::Q5K => {
                put(0, 0.005 * x.abs());
                put(2, 0.005 * y.abs());
            }
            QType::Q6K => put(208, 0.005 * x),
        }
    }
    v
}

/// Activations with some structure: gaussian-ish values, an outlier per row, a zero row, ties.
pub(super) fn random_acts(m: usize, k: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut x: Vec<f32> = (0..m * k).map(|_| (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum()).collect();
    for r in 0..m {
        let j = rng.random_range(0..k);
        x[r * k + j] *= 20.0;
        if r == 1 {
            x[r * k..(r + 1) * k].fill(0.0);
        }
    }
    x
}

/// f64 reference of the quantized dot product (what the block formats define), with the sum
/// of absolute terms for the tolerance.
fn reference(t: QType, w: &[u8], n: usize, k: usize, a: &Acts, m: usize) -> Vec<(f64, f64)> {
    let (be, bb) = (t.block_elems(), t.block_bytes());
    let nb = k / be;
    let mut out = Vec::with_capacity(m * n);
    for r in 0..m {
        let (qs, d) = (a.row_qs(r), a.row_d(r));
        for j in 0..n {
            let (mut sum, mut abs) = (0f64, 0f64);
            for b in 0..nb {
                let blk = &w[(j * nb + b) * bb..][..bb];
                let y = &qs[b * be..(b + 1) * be];
                let da = d[b] as f64;
                if be == QK {
                    let x = decode_small(t, blk);
                    for (&q, &yq) in x.q.iter().zip(y) {
                        let v = x.d as f64 * q as f64 * da * yq as f64;
                        sum += v;
                        abs += v.abs();
                    }
                    if t.act() == ActType::Q8_1 {
                        let v = x.m as f64 * a.row_s(r)[b] as f64;
                        sum += v;
                        abs += v.abs();
                    }
                } else {
                    let x = decode_super(t, blk);
                    for (i, (&q, &yq)) in x.q.iter().zip(y).enumerate() {
                        let wv = x.d as f64 * x.sc[i / x.sub] as f64 * q as f64 - x.dmin as f64 * x.mn[i / x.sub] as f64;
                        let v = wv * da * yq as f64;
                        sum += v;
                        abs += v.abs();
                    }
                }
            }
            out.push((sum, abs));
        }
    }
    out
}

#[test]
fn q8_0_rounds_like_llama_cpp() {
    let mut x = [0f32; 32];
    x[..8].copy_from_slice(&[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -126.5, 3.4999]);
    let mut a = Acts::default();
    a.quantize(ActType::Q8_1, &x, 32);
    assert_eq!(&a.qs[..8], &[127, 0, 2, 2, 0, -2, -126, 3]);
    assert_eq!(a.d[0], 1.0);
    assert_eq!(a.s[0], (127 + 2 + 2 - 2 - 126 + 3) as f32);
    // d is amax/127 rounded to f16; the quants use 127/amax, not 1/d.
    let y: Vec<f32> = (0..32).map(|i| (i as f32 - 15.3) * 0.0123).collect();
    a.quantize(ActType::Q8_0, &y, 32);
    let amax = y.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_eq!(a.d[0], f16::from_f32(amax / 127.0).to_f32());
    for (q, v) in a.qs[..32].iter().zip(&y) {
        assert_eq!(*q as f32, (v * (127.0 / amax)).round_ties_even());
    }
    a.quantize(ActType::Q8_0, &[0f32; 64], 32);
    assert!(a.qs[..64].iter().all(|&q| q == 0) && a.d[..2] == [0.0, 0.0]);
}

#[test]
fn q8_k_uses_signed_max_and_bsums() {
    let mut x = [0f32; 256];
    x[..6].copy_from_slice(&[0.5, 1.5, 2.5, -127.0, 127.0, -0.5]);
    x[100] = 10.0;
    let mut a = Acts::default();
    a.quantize(ActType::Q8K, &x, 256);
    // max = -127 (first of largest magnitude) -> iscale = 1, d = 1.
    assert_eq!(&a.qs[..6], &[0, 2, 2, -127, 127, 0]);
    assert_eq!(a.d[0], 1.0);
    assert_eq!(a.bsums[0], 4);
    assert_eq!(a.bsums[6], 10);
    // A positive max flips the sign: iscale = -127/max, d = 1/iscale.
    x[3] = 5.0;
    x[4] = -5.0;
    x[100] = 4.0;
    a.quantize(ActType::Q8K, &x, 256);
    let iscale = -127.0f32 / 5.0;
    assert_eq!(a.d[0], 1.0 / iscale);
    assert_eq!(a.qs[3], -127);
    assert_eq!(a.qs[4], 127);
    assert_eq!(a.qs[100] as f32, (iscale * 4.0).round_ties_even());
    let s: i16 = a.qs[..16].iter().map(|&q| q as i16).sum();
    assert_eq!(a.bsums[0], s);
}

#[test]
fn quantization_error_is_within_half_a_step() {
    let mut rng = StdRng::seed_from_u64(7);
    let x = random_acts(3, 512, &mut rng);
    for kind in [ActType::Q8_0, ActType::Q8_1, ActType::Q8K] {
        let mut a = Acts::default();
        a.quantize(kind, &x, 512);
        let be = kind.block_elems();
        for (i, (&q, &v)) in a.qs.iter().zip(&x).enumerate() {
            let d = a.d[i / be];
            // f16 rounding of d adds up to 2^-11 relative on top of half a step.
            let err = (q as f32 * d - v).abs();
            assert!(err <= d.abs() * (0.5 + 127.0 / 2048.0) + 1e-6, "{kind:?} elem {i}: {v} -> {q} * {d}");
        }
    }
}

#[test]
fn every_isa_quantizes_identically() {
    let mut rng = StdRng::seed_from_u64(9);
    let mut x = random_acts(4, 768, &mut rng);
    x[5] = 0.5;
    x[768 + 7] = f32::MIN_POSITIVE;
    for kind in [ActType::Q8_0, ActType::Q8_1, ActType::Q8K] {
        let mut want = Acts::default();
        want.quantize_isa(Isa::Scalar, kind, &x, 768);
        for isa in Isa::available() {
            let mut got = Acts::default();
            got.quantize_isa(isa, kind, &x, 768);
            let first = |a: &[i8], b: &[i8]| a.iter().zip(b).position(|(x, y)| x != y);
            assert_eq!(first(&got.qs, &want.qs), None, "{kind:?} {isa:?}: first differing quant");
            assert!(got.d == want.d && got.s == want.s && got.bsums == want.bsums, "{kind:?} {isa:?}: scales/sums");
        }
    }
}

fn check_type(t: QType, isa: Isa, rng: &mut StdRng) {
    let be = t.block_elems();
    let blocks: &[usize] = if be == QK { &[1, 3, 7, 28] } else { &[1, 3, 19] };
    for &nb in blocks {
        let k = nb * be;
        for &(m, n) in &[(1, 1), (1, 17), (2, 5), (3, 4), (4, 3), (5, 9), (6, 2), (9, 3), (10, 2), (13, 3), (16, 2), (21, 5), (17, 19), (24, 8)] {
            let w = random_weight(t, n, k, rng);
            let x = random_acts(m, k, rng);
            let qw = QWeight::new(t, n, k, &w).unwrap();
            let mut out = vec![f32::NAN; m * n];
            qmatmul_with(isa, &qw, &x, &mut out);
            let mut a = Acts::default();
            a.quantize(t.act(), &x, k);
            for (i, (&got, &(want, abs))) in out.iter().zip(&reference(t, &w, n, k, &a, m)).enumerate() {
                let tol = 1e-5 * abs + 1e-6;
                assert!(
                    (got as f64 - want).abs() <= tol,
                    "{t:?} {isa:?} k={k} m={m} n={n} out[{i}]: got {got}, want {want} (tol {tol})"
                );
            }
            // A row's result does not depend on the tile it was computed in.
            for r in 0..m {
                let mut one = vec![0f32; n];
                qmatmul_with(isa, &qw, &x[r * k..(r + 1) * k], &mut one);
                assert_eq!(one, out[r * n..(r + 1) * n], "{t:?} {isa:?} row {r} of {m} differs from m=1");
            }
        }
    }
}

#[test]
fn every_type_and_isa_matches_f64_reference() {
    let isas = Isa::available();
    assert!(isas.contains(&Isa::Scalar));
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        assert!(isas.contains(&Isa::Avx2), "AVX2 machine without the AVX2 path");
    }
    for isa in isas {
        for t in QType::ALL {
            check_type(t, isa, &mut StdRng::seed_from_u64(t as u64 * 31 + 1));
        }
    }
}

#[test]
fn large_shapes_use_threads_and_agree_across_isas() {
    let mut rng = StdRng::seed_from_u64(3);
    for t in [QType::Q5_0, QType::Q4K, QType::Q6K, QType::Q8_0, QType::Q4_1] {
        let (n, k) = (301, 2 * QK_K);
        let w = random_weight(t, n, k, &mut rng);
        let qw = QWeight::new(t, n, k, &w).unwrap();
        for m in [1, 7, 37] {
            let x = random_acts(m, k, &mut rng);
            let mut fast = vec![0f32; m * n];
            qmatmul_with(Isa::best(), &qw, &x, &mut fast);
            let mut slow = vec![0f32; m * n];
            qmatmul_with(Isa::Scalar, &qw, &x, &mut slow);
            for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{t:?} m={m} out[{i}]: {a} vs scalar {b}");
            }
        }
    }
}

#[test]
fn rejects_mismatched_weights() {
    assert!(QWeight::new(QType::Q4K, 2, 128, &[0u8; 144]).is_err());
    assert!(QWeight::new(QType::Q8_0, 2, 32, &[0u8; 67]).is_err());
    assert!(QWeight::new(QType::Q8_0, 2, 32, &[0u8; 68]).is_ok());
}

fn ggml(t: QType) -> GgmlDType {
    match t {
        QType::Q4_0 => GgmlDType::Q4_0,
        QType::Q4_1 => GgmlDType::Q4_1,
        QType::Q5_0 => GgmlDType::Q5_0,
        QType::Q5_1 => GgmlDType::Q5_1,
        QType::Q8_0 => GgmlDType::Q8_0,
        QType::Q4K => GgmlDType::Q4K,
        QType::Q5K => GgmlDType::Q5K,
        QType::Q6K => GgmlDType::Q6K,
    }
}

pub(super) fn qtensor(t: QType, bytes: &[u8], n: usize, k: usize) -> QTensor {
    let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, ggml(t)).unwrap();
    QTensor::new(storage, (n, k)).unwrap()
}

#[test]
fn block_layouts_match_candle_dequantize() {
    let mut rng = StdRng::seed_from_u64(11);
    for t in QType::ALL {
        assert_eq!(qtype_of(ggml(t)), Some(t));
        assert_eq!(ggml(t).type_size(), t.block_bytes(), "{t:?} block bytes");
        assert_eq!(ggml(t).block_size(), t.block_elems(), "{t:?} block elems");
        let (n, k) = (3, 2 * 256);
        let w = random_weight(t, n, k, &mut rng);
        let want = qtensor(t, &w, n, k).dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut got = vec![0f32; n * k];
        let rb = w.len() / n;
        for j in 0..n {
            dequantize_row(t, &w[j * rb..(j + 1) * rb], &mut got[j * k..(j + 1) * k]);
        }
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(a == b, "{t:?} element {i}: ours {a}, candle {b}");
        }
    }
}

#[test]
fn forward_agrees_with_candle_qmatmul() {
    let mut rng = StdRng::seed_from_u64(5);
    let (n, k) = (40, 512);
    for t in QType::ALL {
        let w = random_weight(t, n, k, &mut rng);
        let qm = Weight::from(QMatMul::from_qtensor(qtensor(t, &w, n, k)).unwrap());
        for m in [1usize, 6] {
            let x = Tensor::from_vec(random_acts(m, k, &mut rng), (1, m, k), &Device::Cpu).unwrap();
            let ours = forward(&qm, &x).unwrap();
            assert_eq!(ours.dims(), &[1, m, n]);
            let theirs = qm.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ours = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Candle rounds activations half away from zero (llama.cpp: to even), so allow the
            // odd different quant: compare against the output's scale.
            let scale = theirs.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-3);
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert!((a - b).abs() <= 2e-3 * scale, "{t:?} m={m} out[{i}]: ours {a}, candle {b}");
            }
        }
    }
}

#[test]
fn forward_falls_back_where_kernels_do_not_apply() {
    let (n, k) = (8, 64);
    let wf = Tensor::from_vec((0..n * k).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>(), (n, k), &Device::Cpu).unwrap();
    // f32 weights: candle's dense path.
    let qf = Weight::from(QMatMul::from_qtensor(QTensor::quantize(&wf, GgmlDType::F32).unwrap()).unwrap());
    let x = Tensor::ones((2, k), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(try_kernels(&qf, &x).unwrap().is_none());
    let y = forward(&qf, &x).unwrap();
    assert_eq!(y.dims(), &[2, n]);
    // f16 input: candle's path.
    let q8 = Weight::from(QMatMul::from_qtensor(QTensor::quantize(&wf, GgmlDType::Q8_0).unwrap()).unwrap());
    assert!(try_kernels(&q8, &x.to_dtype(candle_core::DType::F16).unwrap()).unwrap().is_none());
    // A non-contiguous f32 input goes through the kernels.
    let xt = Tensor::ones((k, 2), candle_core::DType::F32, &Device::Cpu).unwrap().t().unwrap();
    assert_eq!(try_kernels(&q8, &xt).unwrap().unwrap().dims(), &[2, n]);
}

#[test]
fn pool_runs_every_task_once_under_concurrency() {
    let p = pool();
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                for n in [1usize, 2, 5, 64, 1000] {
                    let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    p.run(n, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n = {n}");
                }
            });
        }
    });
}

#[test]
fn concurrent_tenants_split_the_threads() {
    use crate::kernels::pool::{share, Tenant};
    let total = pool().threads();
    let (ready, done) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
    let shares: Vec<(usize, usize)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let _t = Tenant::enter();
                    ready.wait();
                    // Both tenants are live: each runs on its own pool of its share.
                    let (mine, now) = (pool().threads(), share());
                    // Entering again on the same thread is the same tenant, not another one.
                    let nested = {
                        let _again = Tenant::enter();
                        share()
                    };
                    assert_eq!(nested, now, "a nested enter changed the share");
                    // A job on the tenant's pool still runs every task once.
                    let hits: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
                    pool().run(100, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    done.wait();
                    (mine, now)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (mine, now) in shares {
        assert_eq!(mine, now, "a tenant's pool has its share of threads");
        assert!(now >= 1 && now <= (total / 2).max(1), "two tenants on {total} threads got {now} each");
    }
    // Threads that are not tenants keep the whole machine.
    assert_eq!(pool().threads(), total);
}

#[test]
fn fused_weights_match_separate_calls_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(5);
    for isa in Isa::available() {
        for t in [QType::Q5_0, QType::Q4_0, QType::Q8_0, QType::Q4_1, QType::Q4K, QType::Q6K] {
            let k = 2 * QK_K;
            let ns = [96, 16, 37];
            let ws: Vec<Vec<u8>> = ns.iter().map(|&n| random_weight(t, n, k, &mut rng)).collect();
            let qws: Vec<QWeight> = ws.iter().zip(ns).map(|(w, n)| QWeight::new(t, n, k, w).unwrap()).collect();
            for m in [1, 3, 17, 40] {
                let x = random_acts(m, k, &mut rng);
                let mut fused: Vec<Vec<f32>> = ns.iter().map(|&n| vec![f32::NAN; m * n]).collect();
                let mut outs: Vec<&mut [f32]> = fused.iter_mut().map(|v| v.as_mut_slice()).collect();
                qmatmul_many_with(isa, &qws, &x, &mut outs);
                for (i, qw) in qws.iter().enumerate() {
                    let mut one = vec![0f32; m * qw.n];
                    qmatmul_with(isa, qw, &x, &mut one);
                    assert_eq!(one, fused[i], "{t:?} {isa:?} m={m}: weight {i} differs when fused");
                }
            }
        }
    }
}

#[test]
fn forward_many_groups_types_and_keeps_order() {
    let mut rng = StdRng::seed_from_u64(6);
    let k = 64;
    let specs = [(QType::Q5_0, 24), (QType::Q8_0, 8), (QType::Q5_0, 40), (QType::Q4_1, 8)];
    let bytes: Vec<Vec<u8>> = specs.iter().map(|&(t, n)| random_weight(t, n, k, &mut rng)).collect();
    let mms: Vec<Weight> = specs
        .iter()
        .zip(&bytes)
        .map(|(&(t, n), b)| Weight::from(QMatMul::from_qtensor(qtensor(t, b, n, k)).unwrap()))
        .collect();
    let x = Tensor::new(random_acts(5, k, &mut rng), &Device::Cpu).unwrap().reshape((1, 5, k)).unwrap();
    let refs: Vec<&Weight> = mms.iter().collect();
    let many = forward_many(&refs, &x).unwrap();
    assert_eq!(many.len(), specs.len());
    for (i, mm) in mms.iter().enumerate() {
        let one = forward(mm, &x).unwrap();
        assert_eq!(many[i].dims(), &[1, 5, specs[i].1]);
        let (a, b) = (many[i].flatten_all().unwrap().to_vec1::<f32>().unwrap(), one.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(a, b, "weight {i} ({:?})", specs[i].0);
    }
}

/// The VNNI prefill kernel gives the AVX2 kernel's integer lanes, so its outputs are the same
/// bits (skipped, and said so, on a CPU without AVX-512 VNNI).
#[test]
fn vnni_prefill_is_bit_identical_to_avx2() {
    if !Isa::Avx512Vnni.supported() {
        eprintln!("no AVX-512 VNNI on this CPU: the VNNI prefill path is not exercised here");
        return;
    }
    let mut rng = StdRng::seed_from_u64(12);
    // Q4_K through the 512-bit column kernel (from 16 rows; partial chunks of 16 weight rows and
    // of 8 activation rows): the same exact integers per block as the AVX2 kernel.
    for t in [QType::Q4_0, QType::Q5_0, QType::Q4K] {
        // (Q4_K from one row on: the AVX-512 per-row kernels keep its integers and float side.)
        let shapes: &[(usize, usize, usize)] =
            if t == QType::Q4K { &[(1, 37, 9), (5, 19, 3), (16, 37, 28), (23, 5, 3), (64, 130, 9)] } else { &[(16, 37, 28), (23, 5, 3), (64, 130, 9)] };
        for &(m, n, nb) in shapes {
            let k = nb * t.block_elems();
            let w = random_weight(t, n, k, &mut rng);
            let qw = QWeight::new(t, n, k, &w).unwrap();
            let x = random_acts(m, k, &mut rng);
            let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
            qmatmul_with(Isa::Avx2, &qw, &x, &mut a);
            qmatmul_with(Isa::Avx512Vnni, &qw, &x, &mut b);
            assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "{t:?} m={m} n={n} k={k}");
        }
    }
}
