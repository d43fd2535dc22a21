//! Tests of the packed Q4_K layout: the repack loses nothing (every row comes back), sizes are
//! checked, and on AVX-512 VNNI every kernel over packed weights (decode, small batches, the
//! column prefill, threads, fused calls, the candle-facing `Weight`) gives the per-row kernels'
//! outputs bit for bit, including at the integer sums' extremes.

use candle_core::quantized::QMatMul;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::blocks::QType;
use super::matmul::{qmatmul_many_with, qmatmul_with, Isa, QWeight};
use super::packed::PackedQ4K;
use super::tensor::{forward, forward_many, Weight};
use super::tests::{qtensor, random_acts, random_weight};

#[test]
fn repack_keeps_every_row_and_checks_sizes() {
    let mut rng = StdRng::seed_from_u64(21);
    for (n, nb) in [(1, 1), (16, 2), (37, 3), (130, 1)] {
        let k = 256 * nb;
        let w = random_weight(QType::Q4K, n, k, &mut rng);
        let p = PackedQ4K::new(&w, n, k).unwrap();
        assert_eq!(p.bytes().len(), n.div_ceil(16) * 16 * nb * 144, "n={n} nb={nb}: whole chunks of 16 rows");
        for r in 0..n {
            assert_eq!(p.row(r), w[r * nb * 144..(r + 1) * nb * 144], "n={n} nb={nb} row {r}");
        }
    }
    let w = random_weight(QType::Q4K, 4, 256, &mut rng);
    assert!(PackedQ4K::new(&w[..w.len() - 1], 4, 256).unwrap_err().contains("expected 4 × 144"));
    assert!(PackedQ4K::new(&w, 4, 200).unwrap_err().contains("multiple of 256"));
    assert!(PackedQ4K::new(&w, usize::MAX / 2, 256).is_err());
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Skips (and says so) on a CPU without AVX-512 VNNI.
fn vnni() -> bool {
    let ok = Isa::Avx512Vnni.supported();
    if !ok {
        eprintln!("no AVX-512 VNNI on this CPU: the packed Q4_K kernels are not exercised here");
    }
    ok
}

#[test]
fn packed_kernels_match_row_kernels_bit_for_bit() {
    if !vnni() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(22);
    // Every activation-row remainder of the gemv (groups of 4), the column threshold (16) and
    // its row groups of 8, partial chunks of 16 weight rows, one and several blocks, threads.
    let ms = [1usize, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33];
    for &(n, nb) in &[(16usize, 1usize), (37, 3), (5, 2), (130, 6)] {
        let k = 256 * nb;
        let w = random_weight(QType::Q4K, n, k, &mut rng);
        let p = PackedQ4K::new(&w, n, k).unwrap();
        let (rows, packed) = (QWeight::new(QType::Q4K, n, k, &w).unwrap(), QWeight::packed(&p));
        for &m in &ms {
            let x = random_acts(m, k, &mut rng);
            let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
            qmatmul_with(Isa::Avx512Vnni, &rows, &x, &mut a);
            qmatmul_with(Isa::Avx512Vnni, &packed, &x, &mut b);
            assert!(same_bits(&a, &b), "m={m} n={n} k={k}");
        }
    }
    // Large enough to split across the pool's threads at chunk boundaries.
    let (n, k) = (1000, 1536);
    let w = random_weight(QType::Q4K, n, k, &mut rng);
    let p = PackedQ4K::new(&w, n, k).unwrap();
    for m in [1, 3, 40] {
        let x = random_acts(m, k, &mut rng);
        let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
        qmatmul_with(Isa::Avx512Vnni, &QWeight::new(QType::Q4K, n, k, &w).unwrap(), &x, &mut a);
        qmatmul_with(Isa::Avx512Vnni, &QWeight::packed(&p), &x, &mut b);
        assert!(same_bits(&a, &b), "threaded m={m}");
    }
}

/// Every quant 15, every scale and min 63, activations at ±127: the largest sums the integer
/// side meets (the high nibbles' sums carry a factor 16 before the shift).
#[test]
fn packed_kernels_hold_the_extremes() {
    if !vnni() {
        return;
    }
    let (n, nb) = (20, 2);
    let k = 256 * nb;
    let mut w = vec![0xFFu8; n * nb * 144];
    for b in w.chunks_exact_mut(144) {
        b[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        b[2..4].copy_from_slice(&half::f16::from_f32(0.002).to_le_bytes());
    }
    let p = PackedQ4K::new(&w, n, k).unwrap();
    for sign in [1.0f32, -1.0] {
        for m in [1, 2, 16] {
            let x = vec![sign; m * k];
            let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
            qmatmul_with(Isa::Avx512Vnni, &QWeight::new(QType::Q4K, n, k, &w).unwrap(), &x, &mut a);
            qmatmul_with(Isa::Avx512Vnni, &QWeight::packed(&p), &x, &mut b);
            assert!(same_bits(&a, &b), "sign {sign} m={m}");
            // 0.01·63·15·k − 0.002·63·k in the float side's rounding, times the sign.
            let want = sign * (0.01f32 * 63.0 * 15.0 - 0.002 * 63.0) * k as f32;
            assert!((b[0] - want).abs() < 1e-2 * want.abs(), "sign {sign}: {} vs {want}", b[0]);
        }
    }
}

#[test]
fn packed_and_row_weights_fuse_in_one_call() {
    if !vnni() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(23);
    let k = 512;
    let ws: Vec<(usize, Vec<u8>)> = [24usize, 40, 7].iter().map(|&n| (n, random_weight(QType::Q4K, n, k, &mut rng))).collect();
    let packed = PackedQ4K::new(&ws[1].1, ws[1].0, k).unwrap();
    let qws = [QWeight::new(QType::Q4K, ws[0].0, k, &ws[0].1).unwrap(), QWeight::packed(&packed), QWeight::new(QType::Q4K, ws[2].0, k, &ws[2].1).unwrap()];
    for m in [1, 5, 20] {
        let x = random_acts(m, k, &mut rng);
        let mut outs: Vec<Vec<f32>> = qws.iter().map(|w| vec![0f32; m * w.n]).collect();
        {
            let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            qmatmul_many_with(Isa::Avx512Vnni, &qws, &x, &mut refs);
        }
        for (i, (n, w)) in ws.iter().enumerate() {
            let mut alone = vec![0f32; m * n];
            qmatmul_with(Isa::Avx512Vnni, &QWeight::new(QType::Q4K, *n, k, w).unwrap(), &x, &mut alone);
            assert!(same_bits(&outs[i], &alone), "weight {i} m={m}");
        }
    }
}

/// What the model holds: `Weight::new` repacks a Q4_K tensor here (unless asked not to) and
/// its `forward` and `forward_many` give the candle-held weight's outputs.
#[test]
fn weight_repacks_q4k_and_keeps_outputs() {
    let mut rng = StdRng::seed_from_u64(24);
    let (n, k) = (48, 768);
    let w = random_weight(QType::Q4K, n, k, &mut rng);
    let packed = Weight::new(qtensor(QType::Q4K, &w, n, k), true).unwrap();
    let plain = Weight::new(qtensor(QType::Q4K, &w, n, k), false).unwrap();
    assert!(!plain.is_packed());
    assert_eq!(packed.is_packed(), Isa::best() == Isa::Avx512Vnni && std::env::var("MOA_PACK").as_deref() != Ok("0"));
    let q6 = random_weight(QType::Q6K, 16, k, &mut rng);
    assert!(!Weight::new(qtensor(QType::Q6K, &q6, 16, k), true).unwrap().is_packed(), "only Q4_K is repacked");
    let other = Weight::from(QMatMul::from_qtensor(qtensor(QType::Q4K, &w, n, k)).unwrap());
    for m in [1usize, 3, 17] {
        let x = Tensor::from_vec(random_acts(m, k, &mut rng), (1, m, k), &Device::Cpu).unwrap();
        let v = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (a, b) = (v(forward(&packed, &x).unwrap()), v(forward(&plain, &x).unwrap()));
        assert!(same_bits(&a, &b), "forward m={m}");
        assert!(same_bits(&v(packed.forward(&x).unwrap()), &b), "Weight::forward m={m}");
        let many = forward_many(&[&packed, &other], &x).unwrap();
        assert!(same_bits(&v(many[0].clone()), &b) && same_bits(&v(many[1].clone()), &b), "forward_many m={m}");
    }
}
