//! Tests tying the kernels to the outside: block layouts decoded exactly as candle dequantizes
//! them, `forward` agreeing with candle's own quantized matmul (and falling back where the
//! kernels do not apply), and the thread pool running every task once under concurrency.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::blocks::{dequantize_row, QType};
use super::candle_op::{forward, qtype_of, try_kernels};
use super::pool::pool;
use super::tests::{random_acts, random_weight};

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

fn qtensor(t: QType, bytes: &[u8], n: usize, k: usize) -> QTensor {
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
        let qm = QMatMul::from_qtensor(qtensor(t, &w, n, k)).unwrap();
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
    let qf = QTensor::quantize(&wf, GgmlDType::F32).unwrap();
    let x = Tensor::ones((2, k), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(try_kernels(&qf, &x).unwrap().is_none());
    let y = forward(&QMatMul::from_qtensor(qf).unwrap(), &x).unwrap();
    assert_eq!(y.dims(), &[2, n]);
    // f16 input: candle's path.
    let q8 = QTensor::quantize(&wf, GgmlDType::Q8_0).unwrap();
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
