//! Tests of the packed Q4_K / Q6_K layouts: the repack loses nothing (every row comes back),
//! sizes are checked, and on AVX-512 VNNI every kernel over packed weights (decode, small
//! batches, the column prefill, threads, fused calls, the candle-facing `Weight`) gives the
//! per-row kernels' outputs bit for bit, including at the integer sums' extremes.

use candle_core::quantized::QMatMul;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::blocks::QType;
use super::matmul::{qmatmul_many_with, qmatmul_with, Isa, QWeight};
use super::packed::{stride, Packed};
use super::tensor::{forward, forward_many, Weight};
use super::tests::{qtensor, random_acts, random_weight};

const TYPES: [QType; 2] = [QType::Q4K, QType::Q6K];

#[test]
fn repack_keeps_every_row_and_checks_sizes() {
    let mut rng = StdRng::seed_from_u64(21);
    for t in TYPES {
        let bb = t.block_bytes();
        for (n, nb) in [(1, 1), (16, 2), (37, 3), (130, 1), (17, 35)] {
            let k = 256 * nb;
            let w = random_weight(t, n, k, &mut rng);
            let p = Packed::new(t, &w, n, k).unwrap();
            let chunk = 16 * stride(t, k);
            assert_eq!(p.bytes().len(), n.div_ceil(16) * chunk, "{t:?} n={n} nb={nb}: whole chunks of 16 rows");
            assert_eq!(chunk % 64, 0, "{t:?} nb={nb}: chunks start on a register");
            assert!(chunk >= 16 * nb * bb && chunk < 16 * nb * bb + 64, "{t:?} nb={nb}: the file's bytes, padded to a register at most");
            for r in 0..n {
                assert_eq!(p.row(r), w[r * nb * bb..(r + 1) * nb * bb], "{t:?} n={n} nb={nb} row {r}");
            }
        }
        let w = random_weight(t, 4, 256, &mut rng);
        assert!(Packed::new(t, &w[..w.len() - 1], 4, 256).unwrap_err().contains(&format!("expected 4 × {bb}")));
        assert!(Packed::new(t, &w, 4, 200).unwrap_err().contains("multiple of 256"));
        assert!(Packed::new(t, &w, usize::MAX / 2, 256).is_err());
        assert!(Packed::new(t, &[], 0, usize::MAX / 256 * 256).unwrap_err().contains("too large"));
    }
    assert!(Packed::new(QType::Q5K, &[0; 176], 1, 256).unwrap_err().contains("no packed layout"));
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Skips (and says so) on a CPU without AVX-512 VNNI.
fn vnni() -> bool {
    let ok = Isa::Avx512Vnni.supported();
    if !ok {
        eprintln!("no AVX-512 VNNI on this CPU: the packed kernels are not exercised here");
    }
    ok
}

/// `m` rows against `w` ([n, k] of `t`) in the file's layout and packed: the same bits.
fn check(t: QType, w: &[u8], p: &Packed, n: usize, k: usize, x: &[f32], what: &str) -> Vec<f32> {
    let m = x.len() / k;
    let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
    qmatmul_with(Isa::Avx512Vnni, &QWeight::new(t, n, k, w).unwrap(), x, &mut a);
    qmatmul_with(Isa::Avx512Vnni, &QWeight::packed(p), x, &mut b);
    assert!(same_bits(&a, &b), "{t:?} {what}: m={m} n={n} k={k}");
    b
}

#[test]
fn packed_kernels_match_row_kernels_bit_for_bit() {
    if !vnni() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(22);
    // Every activation-row remainder of the gemv (groups of 4), the column threshold (16) and
    // its row groups of 8, partial chunks of 16 weight rows, one and several blocks (an odd
    // number: Q6_K's padded chunks), threads.
    let ms = [1usize, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33];
    for t in TYPES {
        for &(n, nb) in &[(16usize, 1usize), (37, 3), (5, 2), (130, 6), (21, 35)] {
            let k = 256 * nb;
            let w = random_weight(t, n, k, &mut rng);
            let p = Packed::new(t, &w, n, k).unwrap();
            for &m in &ms {
                check(t, &w, &p, n, k, &random_acts(m, k, &mut rng), "single");
            }
        }
        // Large enough to split across the pool's threads at chunk boundaries.
        let (n, k) = (1000, 1536);
        let w = random_weight(t, n, k, &mut rng);
        let p = Packed::new(t, &w, n, k).unwrap();
        for m in [1, 3, 40] {
            check(t, &w, &p, n, k, &random_acts(m, k, &mut rng), "threaded");
        }
    }
}

/// The largest sums the integer side meets. Q4_K: every quant 15, scales and mins 63 (the high
/// nibbles' sums carry a factor 16 before the shift). Q6_K: every quant 63 or 0 (31 or -32 after
/// the offset), scales 127 or -128. Activations at ±127.
#[test]
fn packed_kernels_hold_the_extremes() {
    if !vnni() {
        return;
    }
    let (n, nb) = (20, 3);
    let k = 256 * nb;
    let f16 = |v: f32| half::f16::from_f32(v).to_le_bytes();
    let mut q4 = vec![0xFFu8; n * nb * 144];
    for b in q4.chunks_exact_mut(144) {
        b[..2].copy_from_slice(&f16(0.01));
        b[2..4].copy_from_slice(&f16(0.002));
    }
    let mut cases = vec![(QType::Q4K, q4, (0.01f32 * 63.0 * 15.0 - 0.002 * 63.0) * k as f32)];
    for (q, sc, v) in [(0xFFu8, 127i8, 31.0f32), (0, 127, -32.0), (0xFF, -128, 31.0), (0, -128, -32.0)] {
        let mut w = vec![q; n * nb * 210];
        for b in w.chunks_exact_mut(210) {
            b[192..208].fill(sc as u8);
            b[208..].copy_from_slice(&f16(0.01));
        }
        cases.push((QType::Q6K, w, 0.01 * sc as f32 * v * k as f32));
    }
    for (t, w, want) in cases {
        let p = Packed::new(t, &w, n, k).unwrap();
        for sign in [1.0f32, -1.0] {
            for m in [1, 2, 16] {
                let out = check(t, &w, &p, n, k, &vec![sign; m * k], "extremes");
                let want = sign * want;
                assert!((out[0] - want).abs() < 1e-2 * want.abs(), "{t:?} sign {sign}: {} vs {want}", out[0]);
            }
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
    for t in TYPES {
        let ws: Vec<(usize, Vec<u8>)> = [24usize, 40, 7].iter().map(|&n| (n, random_weight(t, n, k, &mut rng))).collect();
        let packed = Packed::new(t, &ws[1].1, ws[1].0, k).unwrap();
        let qws = [QWeight::new(t, ws[0].0, k, &ws[0].1).unwrap(), QWeight::packed(&packed), QWeight::new(t, ws[2].0, k, &ws[2].1).unwrap()];
        for m in [1, 5, 20] {
            let x = random_acts(m, k, &mut rng);
            let mut outs: Vec<Vec<f32>> = qws.iter().map(|w| vec![0f32; m * w.n]).collect();
            {
                let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
                qmatmul_many_with(Isa::Avx512Vnni, &qws, &x, &mut refs);
            }
            for (i, (n, w)) in ws.iter().enumerate() {
                let mut alone = vec![0f32; m * n];
                qmatmul_with(Isa::Avx512Vnni, &QWeight::new(t, *n, k, w).unwrap(), &x, &mut alone);
                assert!(same_bits(&outs[i], &alone), "{t:?} weight {i} m={m}");
            }
        }
    }
}

/// What the model holds: `Weight::new` repacks a Q4_K or Q6_K tensor here (unless asked not
/// to), never another type, and its `forward` and `forward_many` give the candle-held weight's
/// outputs.
#[test]
fn weight_repacks_and_keeps_outputs() {
    let mut rng = StdRng::seed_from_u64(24);
    let (n, k) = (48, 768);
    let env = std::env::var("MOA_PACK").unwrap_or_default();
    for t in TYPES {
        let w = random_weight(t, n, k, &mut rng);
        let packed = Weight::new(qtensor(t, &w, n, k), true).unwrap();
        let plain = Weight::new(qtensor(t, &w, n, k), false).unwrap();
        assert!(!plain.is_packed());
        let wanted = env != "0" && (env != "q4k" || t == QType::Q4K);
        assert_eq!(packed.is_packed(), Isa::best() == Isa::Avx512Vnni && wanted, "{t:?}");
        let other = Weight::from(QMatMul::from_qtensor(qtensor(t, &w, n, k)).unwrap());
        for m in [1usize, 3, 17] {
            let x = Tensor::from_vec(random_acts(m, k, &mut rng), (1, m, k), &Device::Cpu).unwrap();
            let v = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (a, b) = (v(forward(&packed, &x).unwrap()), v(forward(&plain, &x).unwrap()));
            assert!(same_bits(&a, &b), "{t:?} forward m={m}");
            assert!(same_bits(&v(packed.forward(&x).unwrap()), &b), "{t:?} Weight::forward m={m}");
            let many = forward_many(&[&packed, &other], &x).unwrap();
            assert!(same_bits(&v(many[0].clone()), &b) && same_bits(&v(many[1].clone()), &b), "{t:?} forward_many m={m}");
        }
    }
    let q5 = random_weight(QType::Q5K, 16, k, &mut rng);
    assert!(!Weight::new(qtensor(QType::Q5K, &q5, 16, k), true).unwrap().is_packed(), "Q5_K is not repacked");
}
