//! AVX2+FMA(+F16C) dot products for the 32-element types (Q4_0, Q5_0, Q8_0 with q8_0
//! activations; Q4_1, Q5_1 with q8_1) and the register-tile driver shared with `avx2_k`.
//!
//! Each output is computed exactly like llama.cpp's AVX2 `ggml_vec_dot_*`: per block an exact
//! i32x8 of pair sums (`maddubs` + `madd`), converted to f32 and `fma`-accumulated with the
//! product of the two block scales into one 8-lane accumulator, then `hsum_float_8`; the min term
//! of the `_1` types is a scalar sum. A micro-kernel computes a `C x R` tile (weight rows x
//! activation rows), unpacking each weight block once per tile; every element of the tile gets
//! the same operations in the same order as a lone dot product, so the tile shape never changes
//! results.

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::quantize::Acts;

/// A micro-kernel: `C` weight rows (block pointers to the start of each row) times `R`
/// activation rows `r0..r0+R`, over `a.nb` blocks.
pub(crate) trait Kern {
    unsafe fn run<const C: usize, const R: usize>(w: [*const u8; C], a: &Acts, r0: usize) -> [[f32; R]; C];
}

/// Drive `K` over `nw` weight rows x `nr` activation rows: tiles of `ROWS` activation rows x 1
/// weight row (prefill), or 2 weight rows at a time for a single activation row (decode).
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn drive<K: Kern, const ROWS: usize>(w: *const u8, row_bytes: usize, nw: usize, a: &Acts, r0: usize, nr: usize, out: *mut f32, ldo: usize) {
    #[inline(always)]
    unsafe fn store<const C: usize, const R: usize>(v: [[f32; R]; C], out: *mut f32, ldo: usize, j: usize) {
        for (c, col) in v.iter().enumerate() {
            for (r, x) in col.iter().enumerate() {
                *out.add(r * ldo + j + c) = *x;
            }
        }
    }
    let row = |j: usize| w.add(j * row_bytes);
    let mut r = 0;
    while r < nr {
        let left = nr - r;
        let o = out.add(r * ldo);
        match left {
            1 => {
                let mut j = 0;
                while j + 2 <= nw {
                    store(K::run::<2, 1>([row(j), row(j + 1)], a, r0 + r), o, ldo, j);
                    j += 2;
                }
                if j < nw {
                    store(K::run::<1, 1>([row(j)], a, r0 + r), o, ldo, j);
                }
                r += 1;
            }
            // Prefill: `ROWS` activation rows per unpacked weight block (6 for the K-quants, 8
            // for the 32-element types, which keep their block scales in memory), the rows left
            // over as one narrower tile.
            _ if left < ROWS => {
                match left {
                    2 => (0..nw).for_each(|j| store(K::run::<1, 2>([row(j)], a, r0 + r), o, ldo, j)),
                    3 => (0..nw).for_each(|j| store(K::run::<1, 3>([row(j)], a, r0 + r), o, ldo, j)),
                    4 => (0..nw).for_each(|j| store(K::run::<1, 4>([row(j)], a, r0 + r), o, ldo, j)),
                    5 => (0..nw).for_each(|j| store(K::run::<1, 5>([row(j)], a, r0 + r), o, ldo, j)),
                    6 => (0..nw).for_each(|j| store(K::run::<1, 6>([row(j)], a, r0 + r), o, ldo, j)),
                    _ => (0..nw).for_each(|j| store(K::run::<1, 7>([row(j)], a, r0 + r), o, ldo, j)),
                }
                r += left;
            }
            _ => {
                (0..nw).for_each(|j| store(K::run::<1, ROWS>([row(j)], a, r0 + r), o, ldo, j));
                r += ROWS;
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f16_to_f32(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// llama.cpp's `hsum_float_8`: (hi + lo) halves, then pairs, then the last two.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn hsum8(x: __m256) -> f32 {
    let mut r = _mm256_extractf128_ps::<1>(x);
    r = _mm_add_ps(r, _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// 16 bytes of nibbles to 32 bytes: low nibbles first, then high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // The 16 bytes in both halves straight from memory (a load, no shuffle), the high half
    // shifted down by 4: two vector ops instead of shift + insert + and.
    let t = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
    _mm256_and_si256(_mm256_srlv_epi64(t, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(0xF))
}

/// 32 bits to 32 bytes of 0x00 / 0xFF.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bits32(p: *const u8) -> __m256i {
    let x = (p as *const u32).read_unaligned() as i32;
    let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    let b = _mm256_shuffle_epi8(_mm256_set1_epi32(x), shuf);
    let b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1))
}

/// A 32-element weight type: how to unpack one block's quants into bytes.
pub(crate) trait Small {
    const BYTES: usize;
    /// No min (q8_0 activations) vs unsigned quants plus a min (q8_1).
    const SIGNED: bool;
    /// Q4_0 / Q5_0: `unpack` gives the unsigned quants `q + OFFSET`; the kernel subtracts the
    /// activations' `OFFSET * (sums of 4)` per lane (`Acts::corr`), which leaves exactly the
    /// lanes of the sign trick without its two `sign` ops. 0: `unpack` gives the quants as
    /// stored (signed for Q8_0, unsigned for the types with a min).
    const OFFSET: i32 = 0;
    unsafe fn unpack(p: *const u8) -> __m256i;
}

pub(crate) struct Q4_0;
pub(crate) struct Q4_1;
pub(crate) struct Q5_0;
pub(crate) struct Q5_1;
pub(crate) struct Q8_0;

impl Small for Q4_0 {
    const BYTES: usize = 18;
    const SIGNED: bool = true;
    const OFFSET: i32 = 8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(p: *const u8) -> __m256i {
        nibbles(p.add(2))
    }
}

impl Small for Q4_1 {
    const BYTES: usize = 20;
    const SIGNED: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(p: *const u8) -> __m256i {
        nibbles(p.add(4))
    }
}

impl Small for Q5_0 {
    const BYTES: usize = 22;
    const SIGNED: bool = true;
    const OFFSET: i32 = 16;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(p: *const u8) -> __m256i {
        let hi = _mm256_and_si256(bits32(p.add(2)), _mm256_set1_epi8(0x10));
        _mm256_or_si256(nibbles(p.add(6)), hi)
    }
}

impl Small for Q5_1 {
    const BYTES: usize = 24;
    const SIGNED: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(p: *const u8) -> __m256i {
        let hi = _mm256_and_si256(bits32(p.add(4)), _mm256_set1_epi8(0x10));
        _mm256_or_si256(nibbles(p.add(8)), hi)
    }
}

impl Small for Q8_0 {
    const BYTES: usize = 34;
    const SIGNED: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p.add(2) as *const __m256i)
    }
}

/// f16 values at `p + i * stride` (i < cnt, zeros beyond) as f32x8, assembled in general
/// registers so the vector pipes stay free for the dot products.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16x8(p: *const u8, stride: usize, cnt: usize) -> __m256 {
    let h = |i: usize| if i < cnt { (p.add(i * stride) as *const u16).read_unaligned() as u64 } else { 0 };
    let lo = h(0) | h(1) << 16 | h(2) << 32 | h(3) << 48;
    let hi = h(4) | h(5) << 16 | h(6) << 32 | h(7) << 48;
    _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64))
}

/// The scales and mins of 8 blocks of a `_1` type (f16 `d` then f16 `m` at `p + i * stride`,
/// i < cnt, zeros beyond) as two f32x8: one 32-bit load per block, the halves sorted apart with
/// one byte shuffle and one quarter permute.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16x8_pairs(p: *const u8, stride: usize, cnt: usize) -> (__m256, __m256) {
    let h = |i: usize| if i < cnt { (p.add(i * stride) as *const u32).read_unaligned() as u64 } else { 0 };
    let pair = |i: usize| (h(i) | h(i + 1) << 32) as i64;
    let v = _mm256_set_epi64x(pair(6), pair(4), pair(2), pair(0));
    // Per 128-bit half: d0 m0 d1 m1 d2 m2 d3 m3 → d0 d1 d2 d3 m0 m1 m2 m3.
    let sort = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    // Quarters d0-3, m0-3, d4-7, m4-7 → d0-3, d4-7, m0-3, m4-7.
    let v = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(v, sort));
    (_mm256_cvtph_ps(_mm256_castsi256_si128(v)), _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(v)))
}

/// The micro-kernel of every 32-element type. Blocks go in groups of 8: the 8 products
/// `d_w * d_a` (exact: two f16 values) are formed in one vector and each block's is broadcast
/// with a lane permute.
pub(crate) struct SmallKern<W>(std::marker::PhantomData<W>);

impl<W: Small> Kern for SmallKern<W> {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run<const C: usize, const R: usize>(w: [*const u8; C], a: &Acts, r0: usize) -> [[f32; R]; C] {
        let nb = a.nb;
        let ahead = super::avx2_k::prefetch_distance(C * nb * W::BYTES);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); R]; C];
        let mut summs = [[0f32; R]; C];
        // Several rows: the min terms of `C` weight rows x 8 activation rows in vector lanes
        // (each lane the same in-order sum of exact products as the scalar form).
        let mut summ_v = [_mm256_setzero_ps(); C];
        let qs: [*const i8; R] = std::array::from_fn(|r| a.qs.as_ptr().add((r0 + r) * nb * 32));
        let ds: [*const f32; R] = std::array::from_fn(|r| a.d.as_ptr().add((r0 + r) * nb));
        let cs: [*const i32; R] = std::array::from_fn(|r| {
            if W::OFFSET != 0 {
                assert_eq!(a.corr_offset, W::OFFSET, "activations prepared for another offset");
                a.corr.as_ptr().add((r0 + r) * nb * 8)
            } else {
                std::ptr::null()
            }
        });
        let ss: [*const f32; R] =
            std::array::from_fn(|r| if W::SIGNED { std::ptr::null() } else { a.s.as_ptr().add((r0 + r) * nb) });
        let mut b0 = 0;
        while b0 < nb {
            let cnt = (nb - b0).min(8);
            // `Acts` pads `d` and `s` so 8-wide loads past a row's last block stay in bounds.
            let da: [__m256; R] = std::array::from_fn(|r| _mm256_loadu_ps(ds[r].add(b0)));
            // The 8 blocks' scale products, broadcast from memory per block (a load, not a shuffle).
            let mut s8 = [[[0f32; 8]; R]; C];
            // `_1` types: the 8 blocks' mins, or with one activation row their products `m * s`.
            let mut mins = [[0f32; 8]; C];
            for c in 0..C {
                let (dw, m) = if W::SIGNED {
                    (f16x8(w[c].add(b0 * W::BYTES), W::BYTES, cnt), _mm256_setzero_ps())
                } else {
                    f16x8_pairs(w[c].add(b0 * W::BYTES), W::BYTES, cnt)
                };
                for r in 0..R {
                    _mm256_storeu_ps(s8[c][r].as_mut_ptr(), _mm256_mul_ps(dw, da[r]));
                }
                if !W::SIGNED {
                    // One activation row: the 8 min terms `m * s` at once (exact products: both
                    // are f16 values); they are still summed one block at a time, in order.
                    let m = if R == 1 { _mm256_mul_ps(m, _mm256_loadu_ps(ss[0].add(b0))) } else { m };
                    _mm256_storeu_ps(mins[c].as_mut_ptr(), m);
                }
            }
            for i in 0..cnt {
                let b = b0 + i;
                if R <= 4 {
                    // Decode (one row, or a few sequences batched) streams the weights from DRAM:
                    // fetch the next tile's block now.
                    for c in 0..C {
                        _mm_prefetch::<_MM_HINT_T1>(w[c].add(b * W::BYTES + ahead) as *const i8);
                    }
                }
                if !W::SIGNED && R > 1 {
                    let sv = _mm256_loadu_ps(a.s_t.as_ptr().add(b * a.s_stride + r0));
                    for c in 0..C {
                        summ_v[c] = _mm256_fmadd_ps(_mm256_broadcast_ss(&mins[c][i]), sv, summ_v[c]);
                    }
                }
                for c in 0..C {
                    let x = W::unpack(w[c].add(b * W::BYTES));
                    let ax = if W::SIGNED && W::OFFSET == 0 { _mm256_sign_epi8(x, x) } else { x };
                    for r in 0..R {
                        let y = _mm256_loadu_si256(qs[r].add(b * 32) as *const __m256i);
                        let dot = if W::OFFSET != 0 {
                            let c = _mm256_loadu_si256(cs[r].add(b * 8) as *const __m256i);
                            _mm256_sub_epi32(_mm256_madd_epi16(ones, _mm256_maddubs_epi16(x, y)), c)
                        } else {
                            let sy = if W::SIGNED { _mm256_sign_epi8(y, x) } else { y };
                            _mm256_madd_epi16(ones, _mm256_maddubs_epi16(ax, sy))
                        };
                        let q = _mm256_cvtepi32_ps(dot);
                        acc[c][r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&s8[c][r][i]), q, acc[c][r]);
                        if !W::SIGNED && R == 1 {
                            summs[c][r] += mins[c][i];
                        }
                    }
                }
            }
            b0 += 8;
        }
        let mut out = [[0f32; R]; C];
        for c in 0..C {
            if !W::SIGNED && R > 1 {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), summ_v[c]);
                summs[c].copy_from_slice(&lanes[..R]);
            }
            for r in 0..R {
                out[c][r] = hsum8(acc[c][r]) + summs[c][r];
            }
        }
        out
    }
}
