//! AVX2 micro-kernels for the K-quants (Q4_K, Q5_K, Q6_K) against q8_K activations, driven by
//! `avx2::drive`. Per 256-block the sub-block scales are applied in integers (`madd` with the
//! 16-bit scale) and the min terms (Q6_K: its `-32` offset) come from the activation `bsums`. Each
//! block reduces to one exact integer for the quants and (Q4_K/Q5_K) one for the mins, as
//! llama.cpp's repacked Q4_K kernels (`ggml_gemv/gemm_q4_K_8x8_q8_K`, 0.3.36) do:
//! `acc = fma(isum, d_w * d_a, acc)`, `accm = fma(imin, dmin_w * d_a, accm)`, result `acc - accm`
//! (Q6_K: `acc` alone). Q4_K's outputs are llama.cpp's bit for bit for the same activations; its
//! Q5_K/Q6_K kernels keep lane-wise float sums instead (same integers, more roundings). The same
//! form is what the column kernels (`avx2_cols`, `avx512_cols`) and `avx512_k` compute, so an
//! output never depends on which of them ran it.

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::avx2::{f16_to_f32, Kern};
use super::quantize::Acts;

/// `shuffle_epi8` patterns broadcasting 16-bit scale `i` (bytes 2i, 2i+1) to all 16 lanes.
static SHUF_K4: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut i = 0;
    while i < 8 {
        let mut l = 0;
        while l < 16 {
            t[i][2 * l] = 2 * i as u8;
            t[i][2 * l + 1] = 2 * i as u8 + 1;
            l += 1;
        }
        i += 1;
    }
    t
};

/// `shuffle_epi8` patterns for Q6_K: byte 2i to the low 8 bytes, byte 2i+1 to the high 8.
static SHUF_Q6: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut i = 0;
    while i < 8 {
        let mut l = 0;
        while l < 8 {
            t[i][l] = 2 * i as u8;
            t[i][l + 8] = 2 * i as u8 + 1;
            l += 1;
        }
        i += 1;
    }
    t
};

/// Scales (low 128 bits) and mins (high 128) of a Q4_K/Q5_K block as 16-bit lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn mins_and_scales(p: *const u8) -> __m256i {
    const KM1: u32 = 0x3f3f3f3f;
    const KM2: u32 = 0x0f0f0f0f;
    const KM3: u32 = 0x03030303;
    let s = p as *const u32;
    let (u0, u1, u2) = (s.read_unaligned(), s.add(1).read_unaligned(), s.add(2).read_unaligned());
    let t3 = ((u2 >> 4) & KM2) | (((u1 >> 6) & KM3) << 4);
    let t2 = u1 & KM1;
    let t1 = (u2 & KM2) | (((u0 >> 6) & KM3) << 4);
    let t0 = u0 & KM1;
    _mm256_cvtepu8_epi16(_mm_set_epi32(t3 as i32, t2 as i32, t1 as i32, t0 as i32))
}

/// Decode streams the weights from DRAM: fetch the block a later tile will read at this point,
/// into L2 (`T1`). Into L1 (`T0`), 8 KiB ahead of several weight rows plus the activations, the
/// lines were evicted before use on Zen 4 (32 KiB L1): 1-thread decode of Qwen2.5-Coder-1.5B ran
/// at 8.8 t/s with `T0` against 18.4 with `T1` (llama.cpp 18.2), 2 threads 16.2 → 25.8.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn prefetch_block(p: *const u8, bytes: usize) {
    let mut o = 0;
    while o < bytes {
        _mm_prefetch::<_MM_HINT_T1>(p.add(o) as *const i8);
        o += 64;
    }
}

/// How far ahead decode prefetches the weight stream: whole tiles (so the same block of a later
/// tile), at least 8 KiB. (One tile ahead, 1.7 KiB for Qwen2.5-1.5B's attention, left the loads
/// waiting on DRAM: on Zen 5, 2 threads, decode gained 23–36% on the four test models at 8 KiB;
/// 2, 4, 12 and 16 KiB were slower; into L2 on Zen 4, 32 KiB was 7–15% slower than 8.)
#[inline]
pub(crate) fn prefetch_distance(tile_bytes: usize) -> usize {
    const MIN: usize = 8192;
    tile_bytes * MIN.div_ceil(tile_bytes).max(1)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn hsum_i32x4(v: __m128i) -> i32 {
    let v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
    _mm_cvtsi128_si32(_mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v)))
}

/// Pairwise sums of the 16 bsums of a q8_K block (one per 32-element sub-block).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn bsums32(p: *const i16) -> __m128i {
    let v = _mm256_loadu_si256(p as *const __m256i);
    _mm_hadd_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v))
}

pub(crate) struct RowPtrs<const R: usize> {
    pub(crate) qs: [*const i8; R],
    pub(crate) d: [*const f32; R],
    pub(crate) bs: [*const i16; R],
}

#[inline(always)]
pub(crate) unsafe fn rows<const R: usize>(a: &Acts, r0: usize) -> RowPtrs<R> {
    let nb = a.nb;
    RowPtrs {
        qs: std::array::from_fn(|r| a.qs.as_ptr().add((r0 + r) * nb * 256)),
        d: std::array::from_fn(|r| a.d.as_ptr().add((r0 + r) * nb)),
        bs: std::array::from_fn(|r| a.bsums.as_ptr().add((r0 + r) * nb * 16)),
    }
}

/// The horizontal sums of four i32x8 vectors as one i32x4 (exact: integer adds in any order).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum4_i32x8(v: [__m256i; 4]) -> __m128i {
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// The horizontal sums of four i32x4 vectors as one i32x4.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum4_i32x4(v: [__m128i; 4]) -> __m128i {
    _mm_hadd_epi32(_mm_hadd_epi32(v[0], v[1]), _mm_hadd_epi32(v[2], v[3]))
}

/// Q4_K/Q5_K quants `64j..64j+64` of a block (`q` at its packed nibbles) as two vectors of 32
/// unsigned bytes: sub-block `2j` and `2j + 1`. Q5_K (`HIGH`) adds the fifth bit from `hb`
/// (the block's 32 high-bit bytes, shifted on by two bits per call).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q45k_pair<const HIGH: bool>(q: *const u8, j: usize, hb: &mut __m256i) -> (__m256i, __m256i) {
    let (m4, m1) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(1));
    let bits = _mm256_loadu_si256(q.add(32 * j) as *const __m256i);
    let mut ql = _mm256_and_si256(bits, m4);
    let mut qh = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
    if HIGH {
        ql = _mm256_or_si256(ql, _mm256_slli_epi16::<4>(_mm256_and_si256(*hb, m1)));
        qh = _mm256_or_si256(qh, _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(*hb), m1)));
        *hb = _mm256_srli_epi16::<2>(*hb);
    }
    (ql, qh)
}

/// Q6_K quants `128j..128j+128` of the block at `p` as four vectors of 32 unsigned bytes
/// (`q + 32`, 0..64).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q6k_quarter(p: *const u8, j: usize) -> [__m256i; 4] {
    let (m4, m3) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(3));
    let ql = p.add(64 * j);
    let b1 = _mm256_loadu_si256(ql as *const __m256i);
    let b2 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
    let bh = _mm256_loadu_si256(p.add(128 + 32 * j) as *const __m256i);
    let h = |v: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(v, m3));
    [
        _mm256_or_si256(_mm256_and_si256(b1, m4), h(bh)),
        _mm256_or_si256(_mm256_and_si256(b2, m4), h(_mm256_srli_epi16::<2>(bh))),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(b1), m4), h(_mm256_srli_epi16::<4>(bh))),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(b2), m4), h(_mm256_srli_epi16::<6>(bh))),
    ]
}

/// Q4_K (`HIGH = false`) and Q5_K (`HIGH = true`).
pub(crate) struct Q45K<const HIGH: bool>;

impl<const HIGH: bool> Kern for Q45K<HIGH> {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run<const C: usize, const R: usize>(w: [*const u8; C], a: &Acts, r0: usize) -> [[f32; R]; C] {
        let bytes = if HIGH { 176 } else { 144 };
        let ahead = prefetch_distance(C * a.nb * bytes);
        let ya = rows::<R>(a, r0);
        // Tiles of 4 rows or more take rows 0..4 four to a vector through the per-block steps
        // outside the quants (horizontal sums, the min term, the fma with the block scale):
        // lane by lane the same operations as the scalar form, so a row's result never depends
        // on its tile. The other rows keep the scalar form (padding them into a second group, or
        // one flat reduction over every dot product of the tile, measured slower).
        let v = if R >= 4 { 4 } else { 0 };
        // One exact integer per block for the quants and one for the mins (see the header).
        let (mut acc4, mut accm4) = ([[0f32; R]; C], [[0f32; R]; C]);
        let (mut acc4v, mut accm4v) = ([_mm_setzero_ps(); C], [_mm_setzero_ps(); C]);
        for i in 0..a.nb {
            let yd4 = if v == 4 {
                _mm_set_ps(*ya.d[3].add(i), *ya.d[2].add(i), *ya.d[1].add(i), *ya.d[0].add(i))
            } else {
                _mm_setzero_ps()
            };
            for c in 0..C {
                let p = w[c].add(i * bytes);
                if R <= 4 {
                    prefetch_block(p.add(ahead), bytes);
                }
                let (dx, dminx) = (f16_to_f32(p), f16_to_f32(p.add(2)));
                let ms = mins_and_scales(p.add(4));
                let mins = _mm256_extracti128_si256::<1>(ms);
                let sc = _mm256_castsi256_si128(ms);
                let scales = _mm256_insertf128_si256::<1>(_mm256_castsi128_si256(sc), sc);
                let dr: [f32; R] = std::array::from_fn(|r| *ya.d[r].add(i) * dx);
                for r in v..R {
                    let yd = *ya.d[r].add(i);
                    let prod = _mm_madd_epi16(mins, bsums32(ya.bs[r].add(16 * i)));
                    let imin = hsum_i32x4(prod) as f32;
                    accm4[c][r] = imin.mul_add(dminx * yd, accm4[c][r]);
                }
                if v == 4 {
                    let prods: [__m128i; 4] = std::array::from_fn(|r| _mm_madd_epi16(mins, bsums32(ya.bs[r].add(16 * i))));
                    let imin = _mm_cvtepi32_ps(hsum4_i32x4(prods));
                    accm4v[c] = _mm_fmadd_ps(imin, _mm_mul_ps(_mm_set1_ps(dminx), yd4), accm4v[c]);
                }
                let (q, mut hb) = if HIGH {
                    (p.add(48), _mm256_loadu_si256(p.add(16) as *const __m256i))
                } else {
                    (p.add(16), _mm256_setzero_si256())
                };
                let mut sumi = [_mm256_setzero_si256(); R];
                for j in 0..4 {
                    let sl = _mm256_shuffle_epi8(scales, _mm256_loadu_si256(SHUF_K4[2 * j].as_ptr() as *const __m256i));
                    let sh = _mm256_shuffle_epi8(scales, _mm256_loadu_si256(SHUF_K4[2 * j + 1].as_ptr() as *const __m256i));
                    let (ql, qh) = q45k_pair::<HIGH>(q, j, &mut hb);
                    for r in 0..R {
                        let y = ya.qs[r].add(256 * i + 64 * j);
                        let pl = _mm256_madd_epi16(sl, _mm256_maddubs_epi16(ql, _mm256_loadu_si256(y as *const __m256i)));
                        let ph =
                            _mm256_madd_epi16(sh, _mm256_maddubs_epi16(qh, _mm256_loadu_si256(y.add(32) as *const __m256i)));
                        sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(pl, ph));
                    }
                }
                for r in v..R {
                    let isum = _mm_add_epi32(_mm256_castsi256_si128(sumi[r]), _mm256_extracti128_si256::<1>(sumi[r]));
                    acc4[c][r] = (hsum_i32x4(isum) as f32).mul_add(dr[r], acc4[c][r]);
                }
                if v == 4 {
                    let isum = _mm_cvtepi32_ps(hsum4_i32x8([sumi[0], sumi[1], sumi[2], sumi[3]]));
                    acc4v[c] = _mm_fmadd_ps(isum, _mm_mul_ps(yd4, _mm_set1_ps(dx)), acc4v[c]);
                }
            }
        }
        let mut out = [[0f32; R]; C];
        for c in 0..C {
            // Rows 0..v: the quant and min sums from the vector lanes.
            let (mut quants, mut mins) = ([0f32; 4], [0f32; 4]);
            _mm_storeu_ps(quants.as_mut_ptr(), acc4v[c]);
            _mm_storeu_ps(mins.as_mut_ptr(), accm4v[c]);
            for r in 0..R {
                out[c][r] = if r < v { quants[r] - mins[r] } else { acc4[c][r] - accm4[c][r] };
            }
        }
        out
    }
}

pub(crate) struct Q6K;

impl Kern for Q6K {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run<const C: usize, const R: usize>(w: [*const u8; C], a: &Acts, r0: usize) -> [[f32; R]; C] {
        let ya = rows::<R>(a, r0);
        let mut acc = [[0f32; R]; C];
        let ahead = prefetch_distance(C * a.nb * 210);
        for i in 0..a.nb {
            for c in 0..C {
                let p = w[c].add(i * 210);
                if R <= 4 {
                    prefetch_block(p.add(ahead), 210);
                }
                let dx = f16_to_f32(p.add(208));
                let scales = _mm_loadu_si128(p.add(192) as *const __m128i);
                // The `-32` of every quant, per row: 32 · Σ scale · bsum over the 16 groups.
                let sc16 = _mm256_cvtepi8_epi16(scales);
                let mut sumi = [_mm256_setzero_si256(); R];
                for j in 0..2 {
                    let q = q6k_quarter(p, j);
                    let sc: [__m256i; 4] = std::array::from_fn(|k| {
                        let s = _mm_shuffle_epi8(scales, _mm_loadu_si128(SHUF_Q6[4 * j + k].as_ptr() as *const __m128i));
                        _mm256_cvtepi8_epi16(s)
                    });
                    for r in 0..R {
                        let y = ya.qs[r].add(256 * i + 128 * j);
                        let mut p16 = [_mm256_setzero_si256(); 4];
                        for k in 0..4 {
                            let yv = _mm256_loadu_si256(y.add(32 * k) as *const __m256i);
                            p16[k] = _mm256_madd_epi16(sc[k], _mm256_maddubs_epi16(q[k], yv));
                        }
                        sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p16[0], p16[1]));
                        sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p16[2], p16[3]));
                    }
                }
                for r in 0..R {
                    let bs = _mm256_loadu_si256(ya.bs[r].add(16 * i) as *const __m256i);
                    let corr = _mm256_madd_epi16(sc16, bs);
                    let isum = _mm256_sub_epi32(sumi[r], _mm256_slli_epi32::<5>(corr));
                    let isum = hsum_i32x4(_mm_add_epi32(_mm256_castsi256_si128(isum), _mm256_extracti128_si256::<1>(isum)));
                    let d = *ya.d[r].add(i) * dx;
                    acc[c][r] = (isum as f32).mul_add(d, acc[c][r]);
                }
            }
        }
        acc
    }
}
