//! AVX-512 (F/BW/VL/VNNI) per-row kernels for the K-quants: decode and batches below the column
//! kernels' threshold, driven by `avx2::drive` like the AVX2 ones.
//!
//! Against `avx2_k`, each 512-bit step takes 64 quants: `maddubs` gives the pair sums and one
//! `vpdpwssd` multiplies them by the 16-bit sub-block scales and accumulates (AVX2: `maddubs`,
//! `madd`, `add` per 32). Q4_K/Q5_K's nibble halves come as [sub-block 4h, 4h + 2] and
//! [4h + 1, 4h + 3], so the activation halves are regrouped to match with `shuffle_i64x2`; Q6_K's
//! 64 quants are contiguous. Every block reduces to one exact integer for the quants (and, for
//! Q4_K/Q5_K, one for the mins; Q6_K's `-32` comes from the `bsums`), and the float side is
//! `avx2_k`'s for Q4_K, so results equal the AVX2 Q4_K kernel and, for all three types, the
//! column kernels (`avx512_cols`), bit for bit. Decode's two-row tile (`decode2`) reduces both rows'
//! sums and mins in one pass and keeps the float side in four lanes, each the scalar `mul_add`.

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::x86_64::*;

use super::avx2::{f16_to_f32, Kern};
use super::avx2_k::{bsums32, hsum_i32x4, mins_and_scales, prefetch_block, prefetch_distance, rows};
use super::blocks::QType;
use super::quantize::Acts;

/// `vpermw` indices: Q4_K/Q5_K step `h` takes scale `SUB45[h].0` in its low 16 lanes and
/// `SUB45[h].1` in its high 16 (lanes hold `mins_and_scales`' 16-bit scales 0..8).
static IDX45: [[u16; 32]; 4] = {
    const SUB45: [(u16, u16); 4] = [(0, 2), (1, 3), (4, 6), (5, 7)];
    let mut t = [[0u16; 32]; 4];
    let mut h = 0;
    while h < 4 {
        let mut l = 0;
        while l < 32 {
            t[h][l] = if l < 16 { SUB45[h].0 } else { SUB45[h].1 };
            l += 1;
        }
        h += 1;
    }
    t
};

/// `vpermw` indices: Q6_K step `t` (64 quants from element 64t) takes the scale of group
/// `4t + lane / 8` (16 elements per group, 2 per 16-bit lane).
static IDX6: [[u16; 32]; 4] = {
    let mut t = [[0u16; 32]; 4];
    let mut s = 0;
    while s < 4 {
        let mut l = 0;
        while l < 32 {
            t[s][l] = (4 * s + l / 8) as u16;
            l += 1;
        }
        s += 1;
    }
    t
};

/// The matmul's `TileFn` for the kernels here: `drive` (inlined) with the AVX-512 features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn tile<K: Kern, const ROWS: usize>(_: QType, w: *const u8, row_bytes: usize, nw: usize, a: &Acts, r0: usize, nr: usize, out: *mut f32, ldo: usize) {
    super::avx2::drive::<K, ROWS>(w, row_bytes, nw, a, r0, nr, out, ldo)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn idx(t: &[u16; 32]) -> __m512i {
    _mm512_loadu_si512(t.as_ptr() as *const __m512i)
}

/// One Q4_K/Q5_K block's unpacked weights: the scales per step (`vpermw`ed for `maddubs`'
/// pairs), the 8 mins (16-bit) and the 256 quants as four 64-quant steps.
struct Block45 {
    sc: [__m512i; 4],
    mins: __m128i,
    qv: [__m512i; 4],
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn block45<const HIGH: bool>(p: *const u8, perm: &[__m512i; 4]) -> Block45 {
    let m4 = _mm512_set1_epi8(0xF);
    let m1 = _mm512_set1_epi8(1);
    let ms = mins_and_scales(p.add(4));
    let mins = _mm256_extracti128_si256::<1>(ms);
    let ms = _mm512_castsi256_si512(ms);
    let sc: [__m512i; 4] = std::array::from_fn(|h| _mm512_permutexvar_epi16(perm[h], ms));
    let q = if HIGH { p.add(48) } else { p.add(16) };
    let hb = if HIGH { _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(16) as *const __m256i)) } else { _mm512_setzero_si512() };
    let mut qv = [_mm512_setzero_si512(); 4];
    for h in 0..2 {
        let bits = _mm512_loadu_si512(q.add(64 * h) as *const __m512i);
        let mut lo = _mm512_and_si512(bits, m4);
        let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(bits), m4);
        if HIGH {
            // Bit s of qh byte l is the fifth bit of element l of sub-block s.
            let s = 4 * h as i64;
            let bit = |sh: __m512i| _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srlv_epi64(hb, sh), m1));
            lo = _mm512_or_si512(lo, bit(_mm512_set_epi64(s + 2, s + 2, s + 2, s + 2, s, s, s, s)));
            hi = _mm512_or_si512(hi, bit(_mm512_set_epi64(s + 3, s + 3, s + 3, s + 3, s + 1, s + 1, s + 1, s + 1)));
        }
        qv[2 * h] = lo;
        qv[2 * h + 1] = hi;
    }
    Block45 { sc, mins, qv }
}

/// A q8_K block's 256 quants regrouped as Q4_K/Q5_K's nibble halves come: [sub-block 4h, 4h + 2]
/// and [4h + 1, 4h + 3] of each 128.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn acts45(y: *const i8) -> [__m512i; 4] {
    let yv: [__m512i; 4] = std::array::from_fn(|t| _mm512_loadu_si512(y.add(64 * t) as *const __m512i));
    [
        _mm512_shuffle_i64x2::<0x44>(yv[0], yv[1]),
        _mm512_shuffle_i64x2::<0xEE>(yv[0], yv[1]),
        _mm512_shuffle_i64x2::<0x44>(yv[2], yv[3]),
        _mm512_shuffle_i64x2::<0xEE>(yv[2], yv[3]),
    ]
}

/// One block's quant products against regrouped activations, as 16 exact i32 lanes (each step's
/// `maddubs` pair sums times its sub-block scales).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot45(b: &Block45, ys: &[__m512i; 4]) -> __m512i {
    let mut s = _mm512_setzero_si512();
    for h in 0..4 {
        s = _mm512_dpwssd_epi32(s, b.sc[h], _mm512_maddubs_epi16(b.qv[h], ys[h]));
    }
    s
}

/// Two weight rows' block sums at once, each exact in i32 and then rounded to f32 once (as
/// `as f32` does): `[Σ s0, Σ m0, Σ s1, Σ m1]`. One reduction for both rows and their mins costs
/// about what one row's `reduce_add` and mins sum did (decode was compute-bound on them).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn sums_pair(s0: __m512i, s1: __m512i, m0: __m128i, m1: __m128i) -> __m128 {
    // [s0 lanes 0-3 + 8-11, s0 4-7 + 12-15, the same of s1] then each pair of 128-bit chunks summed.
    let u = _mm512_add_epi32(_mm512_shuffle_i64x2::<0x44>(s0, s1), _mm512_shuffle_i64x2::<0xEE>(s0, s1));
    let v = _mm512_add_epi32(u, _mm512_shuffle_i64x2::<0xB1>(u, u));
    let v = _mm512_inserti32x4::<3>(_mm512_inserti32x4::<1>(v, m0), m1);
    let v = _mm512_add_epi32(v, _mm512_shuffle_epi32::<0x4E>(v));
    let v = _mm512_add_epi32(v, _mm512_shuffle_epi32::<0xB1>(v));
    let lanes = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0);
    _mm_cvtepi32_ps(_mm512_castsi512_si128(_mm512_permutexvar_epi32(lanes, v)))
}

/// Two rows' `[d, dmin]` f16 pairs (the first 4 bytes at `p0`, `p1`) as `[d0, dmin0, d1, dmin1]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scales_pair(p0: *const u8, p1: *const u8) -> __m128 {
    let (a, b) = ((p0 as *const i32).read_unaligned(), (p1 as *const i32).read_unaligned());
    _mm_cvtph_ps(_mm_set_epi32(0, 0, b, a))
}

/// Q4_K (`HIGH = false`) and Q5_K (`HIGH = true`).
pub(crate) struct Q45K512<const HIGH: bool>;

impl<const HIGH: bool> Q45K512<HIGH> {
    /// Decode's tile (two weight rows, one activation row): the activations regrouped once per
    /// block for both rows, both rows' sums reduced together, and the float side as four lanes
    /// `[acc0, accm0, acc1, accm1]` whose every lane is the scalar path's `mul_add`, so the
    /// results are the same bits as [`Kern::run`]'s for any tile.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn decode2(w: [*const u8; 2], a: &Acts, r0: usize) -> [f32; 2] {
        let bytes = if HIGH { 176 } else { 144 };
        let ya = rows::<1>(a, r0);
        let ahead = prefetch_distance(2 * a.nb * bytes);
        let perm: [__m512i; 4] = std::array::from_fn(|h| idx(&IDX45[h]));
        let mut acc = _mm_setzero_ps();
        for i in 0..a.nb {
            let ys = acts45(ya.qs[0].add(256 * i));
            let bs = bsums32(ya.bs[0].add(16 * i));
            let (p0, p1) = (w[0].add(i * bytes), w[1].add(i * bytes));
            prefetch_block(p0.add(ahead), bytes);
            prefetch_block(p1.add(ahead), bytes);
            let dot = |p: *const u8| {
                let b = block45::<HIGH>(p, &perm);
                (dot45(&b, &ys), _mm_madd_epi16(b.mins, bs))
            };
            let ((s0, m0), (s1, m1)) = (dot(p0), dot(p1));
            let scale = _mm_mul_ps(scales_pair(p0, p1), _mm_set1_ps(*ya.d[0].add(i)));
            acc = _mm_fmadd_ps(sums_pair(s0, s1, m0, m1), scale, acc);
        }
        let v: [f32; 4] = std::mem::transmute(acc);
        [v[0] - v[1], v[2] - v[3]]
    }
}

impl<const HIGH: bool> Kern for Q45K512<HIGH> {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn run<const C: usize, const R: usize>(w: [*const u8; C], a: &Acts, r0: usize) -> [[f32; R]; C] {
        if C == 2 && R == 1 {
            let v = Self::decode2([w[0], w[1]], a, r0);
            return std::array::from_fn(|c| std::array::from_fn(|_| v[c]));
        }
        let bytes = if HIGH { 176 } else { 144 };
        let ya = rows::<R>(a, r0);
        let (mut acc, mut accm) = ([[0f32; R]; C], [[0f32; R]; C]);
        let ahead = prefetch_distance(C * a.nb * bytes);
        let perm: [__m512i; 4] = std::array::from_fn(|h| idx(&IDX45[h]));
        for i in 0..a.nb {
            for c in 0..C {
                let p = w[c].add(i * bytes);
                if R <= 4 {
                    prefetch_block(p.add(ahead), bytes);
                }
                let (dx, dminx) = (f16_to_f32(p), f16_to_f32(p.add(2)));
                let b = block45::<HIGH>(p, &perm);
                for r in 0..R {
                    let isum = _mm512_reduce_add_epi32(dot45(&b, &acts45(ya.qs[r].add(256 * i)))) as f32;
                    let yd = *ya.d[r].add(i);
                    let imin = hsum_i32x4(_mm_madd_epi16(b.mins, bsums32(ya.bs[r].add(16 * i)))) as f32;
                    acc[c][r] = isum.mul_add(yd * dx, acc[c][r]);
                    accm[c][r] = imin.mul_add(dminx * yd, accm[c][r]);
                }
            }
        }
        std::array::from_fn(|c| std::array::from_fn(|r| acc[c][r] - accm[c][r]))
    }
}

pub(crate) struct Q6K512;

impl Kern for Q6K512 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn run<const C: usize, const R: usize>(w: [*const u8; C], a: &Acts, r0: usize) -> [[f32; R]; C] {
        let ya = rows::<R>(a, r0);
        let m4 = _mm512_set1_epi8(0xF);
        let m3 = _mm512_set1_epi8(3);
        let mut acc = [[0f32; R]; C];
        let ahead = prefetch_distance(C * a.nb * 210);
        let perm: [__m512i; 4] = std::array::from_fn(|t| idx(&IDX6[t]));
        for i in 0..a.nb {
            for c in 0..C {
                let p = w[c].add(i * 210);
                if R <= 4 {
                    prefetch_block(p.add(ahead), 210);
                }
                let dx = f16_to_f32(p.add(208));
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
                let sc512 = _mm512_castsi256_si512(sc16);
                let sc: [__m512i; 4] = std::array::from_fn(|t| _mm512_permutexvar_epi16(perm[t], sc512));
                let mut qv = [_mm512_setzero_si512(); 4];
                for j in 0..2 {
                    // ql[64j..64j+64] and qh[32j..32j+32] (in both halves) give elements
                    // 128j..128j+64 (low nibbles; qh bits 0-1, 2-3) and the next 64 (high
                    // nibbles; qh bits 4-5, 6-7).
                    let b = _mm512_loadu_si512(p.add(64 * j) as *const __m512i);
                    let bh = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(128 + 32 * j) as *const __m256i));
                    let h = |s0: i64, s1: i64| {
                        _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srlv_epi64(bh, _mm512_set_epi64(s1, s1, s1, s1, s0, s0, s0, s0)), m3))
                    };
                    qv[2 * j] = _mm512_or_si512(_mm512_and_si512(b, m4), h(0, 2));
                    qv[2 * j + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(b), m4), h(4, 6));
                }
                for r in 0..R {
                    let y = ya.qs[r].add(256 * i);
                    let mut s = _mm512_setzero_si512();
                    for t in 0..4 {
                        let yv = _mm512_loadu_si512(y.add(64 * t) as *const __m512i);
                        s = _mm512_dpwssd_epi32(s, sc[t], _mm512_maddubs_epi16(qv[t], yv));
                    }
                    // The quants are stored + 32: subtract 32 · Σ scale · (sum of 16 quants).
                    let bs = _mm256_loadu_si256(ya.bs[r].add(16 * i) as *const __m256i);
                    let corr = _mm256_madd_epi16(sc16, bs);
                    let corr = hsum_i32x4(_mm_add_epi32(_mm256_castsi256_si128(corr), _mm256_extracti128_si256::<1>(corr)));
                    let isum = _mm512_reduce_add_epi32(s) - 32 * corr;
                    let d = *ya.d[r].add(i) * dx;
                    acc[c][r] = (isum as f32).mul_add(d, acc[c][r]);
                }
            }
        }
        acc
    }
}
