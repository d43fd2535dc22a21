//! Kernel micro-benchmarks at Qwen2.5-0.5B's FFN shapes (gate/up: k = 896, n = 4864; down:
//! k = 4864, n = 896, where the K-quants live): every weight type, decode (m = 1), batched
//! decode (m = 4) and prefill (m = 128), on the best instruction set. Divan reports time per call; the
//! GFLOP/s-style figure is `2 * m * n * k / time` (printed once per case by `report`).
//!
//! The `packed_*` cases run Q4_K / Q6_K in the layout the model holds them in on AVX-512 VNNI.
//!
//! Run: `cargo bench --bench kernels` (`RAYON_NUM_THREADS` / `MOA_THREADS` set the threads).

use divan::Bencher;
use moa_local::kernels::packed::Packed;
use moa_local::kernels::{qmatmul, Isa, QType, QWeight};

fn main() {
    eprintln!("isa: {:?}, threads: {}", Isa::best(), moa_local::kernels::pool::pool().threads());
    divan::main();
}

/// 32-element types run at k = 896; K-quants need k % 256 == 0, so they run at the down
/// projection's k = 4864, n = 896 (the same flops).
const TYPES: [QType; 5] = [QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1, QType::Q8_0];

/// Deterministic well-formed weight bytes (a tiny LCG; scales kept small and finite).
fn weight(t: QType, n: usize, k: usize) -> Vec<u8> {
    let bb = t.block_bytes();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut v: Vec<u8> = (0..n * k / t.block_elems() * bb)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect();
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for b in v.chunks_exact_mut(bb) {
        let off = if t == QType::Q6K { 208 } else { 0 };
        b[off..off + 2].copy_from_slice(&scale);
        if matches!(t, QType::Q4_1 | QType::Q5_1 | QType::Q4K | QType::Q5K) {
            b[2..4].copy_from_slice(&scale);
        }
    }
    v
}

fn bench(b: Bencher, t: QType, m: usize, n: usize, k: usize) {
    run(b, t, m, n, k, false)
}

/// `packed`: repacked as the model holds it on AVX-512 VNNI (`kernels::packed`).
fn run(b: Bencher, t: QType, m: usize, n: usize, k: usize, packed: bool) {
    let w = weight(t, n, k);
    let p = packed.then(|| Packed::new(t, &w, n, k).unwrap());
    let qw = match &p {
        Some(p) => QWeight::packed(p),
        None => QWeight::new(t, n, k, &w).unwrap(),
    };
    let t = if packed { format!("{t:?} packed") } else { format!("{t:?}") };
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let mut out = vec![0f32; m * n];
    // One timed pass for a GFLOP/s line alongside divan's table.
    let reps = if m <= 4 { 200 } else { 5 };
    let t0 = std::time::Instant::now();
    for _ in 0..reps {
        qmatmul(&qw, &x, &mut out);
    }
    let s = t0.elapsed().as_secs_f64() / reps as f64;
    eprintln!("{t} m={m} n={n} k={k}: {:.1} GFLOP/s ({:.1} GB/s of weights)", 2.0 * (m * n * k) as f64 / s / 1e9, w.len() as f64 / s / 1e9);
    b.counter(divan::counter::ItemsCount::new(2 * m * n * k)).bench_local(|| qmatmul(&qw, divan::black_box(&x), &mut out));
}

#[divan::bench(args = TYPES)]
fn decode_k896_n4864(b: Bencher, t: QType) {
    bench(b, t, 1, 4864, 896)
}

/// Batched decode (4 sequences of one model in one forward).
#[divan::bench(args = TYPES)]
fn batch4_k896_n4864(b: Bencher, t: QType) {
    bench(b, t, 4, 4864, 896)
}

#[divan::bench(args = TYPES, sample_count = 10)]
fn prefill128_k896_n4864(b: Bencher, t: QType) {
    bench(b, t, 128, 4864, 896)
}

#[divan::bench(args = [QType::Q4K, QType::Q5K, QType::Q6K])]
fn decode_k4864_n896(b: Bencher, t: QType) {
    bench(b, t, 1, 896, 4864)
}

#[divan::bench(args = [QType::Q4K, QType::Q5K, QType::Q6K])]
fn batch4_k4864_n896(b: Bencher, t: QType) {
    bench(b, t, 4, 896, 4864)
}

#[divan::bench(args = [QType::Q4K, QType::Q5K, QType::Q6K], sample_count = 10)]
fn prefill128_k4864_n896(b: Bencher, t: QType) {
    bench(b, t, 128, 896, 4864)
}

/// Qwen2.5-1.5B's FFN (the first real K-quant file here): gate/up k = 1536, n = 8960; down
/// k = 8960, n = 1536 — an activation tile of 6 rows is 9 KiB at the first, 52 KiB at the second.
#[divan::bench(args = [QType::Q4K, QType::Q6K], sample_count = 10)]
fn prefill128_k1536_n8960(b: Bencher, t: QType) {
    bench(b, t, 128, 8960, 1536)
}

#[divan::bench(args = [QType::Q4K, QType::Q6K], sample_count = 10)]
fn prefill128_k8960_n1536(b: Bencher, t: QType) {
    bench(b, t, 128, 1536, 8960)
}

/// Packed Q4_K (AVX-512 VNNI only; `m`: 1, 4, 128) at the 0.5B's down and the 1.5B's gate/up shapes.
#[divan::bench(args = [1, 4, 128], sample_count = 10)]
fn packed_q4k_k4864_n896(b: Bencher, m: usize) {
    if Isa::best() == Isa::Avx512Vnni {
        run(b, QType::Q4K, m, 896, 4864, true)
    }
}

#[divan::bench(args = [1, 128], sample_count = 10)]
fn packed_q4k_k1536_n8960(b: Bencher, m: usize) {
    if Isa::best() == Isa::Avx512Vnni {
        run(b, QType::Q4K, m, 8960, 1536, true)
    }
}

#[divan::bench(args = [1], sample_count = 10)]
fn decode_k1536_n8960(b: Bencher, m: usize) {
    bench(b, QType::Q4K, m, 8960, 1536)
}

/// Packed Q6_K at the 0.5B's down shape and the 1.5B's down (k 8960: an odd number of blocks,
/// so chunks end in padding), against the file layout's decode at the latter.
#[divan::bench(args = [1, 4, 128], sample_count = 10)]
fn packed_q6k_k4864_n896(b: Bencher, m: usize) {
    if Isa::best() == Isa::Avx512Vnni {
        run(b, QType::Q6K, m, 896, 4864, true)
    }
}

#[divan::bench(args = [1, 128], sample_count = 10)]
fn packed_q6k_k8960_n1536(b: Bencher, m: usize) {
    if Isa::best() == Isa::Avx512Vnni {
        run(b, QType::Q6K, m, 1536, 8960, true)
    }
}

#[divan::bench(args = [QType::Q4K, QType::Q6K], sample_count = 10)]
fn decode_k8960_n1536(b: Bencher, t: QType) {
    bench(b, t, 1, 1536, 8960)
}
