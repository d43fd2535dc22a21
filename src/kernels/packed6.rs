//! Kernels over Q6_K weights in the packed layout of [`super::packed`] (AVX-512 VNNI): a chunk
//! block is 52 registers, `ql` dwords 0..32, `qh` 32..48 and the 16 scale bytes 48..52 (dword `i`
//! of 16 rows, a row per lane), the rows' `d` after the chunk's blocks.
//!
//! Decode: per dword position, the two `ql` registers and the `qh` register give four registers
//! of 6-bit quants (16 rows × 4 elements of each quarter of a half-block), by a mask or a shift
//! and a mask for the nibble and one shift and one `vpternlogd` that ORs in the two high bits:
//! 13 operations per 4 `vpdpbusd`s of 64 products, no horizontal sum. Scales are decoded
//! lane-wise once per block. The quants are stored `+ 32`; as in the other Q6_K kernels, `32 ·
//! Σ scale · bsum` is subtracted from the block's one exact integer, so the outputs are the
//! per-row kernels' bits. Prefill unpacks a chunk into the column kernels' scratch.

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::x86_64::*;

use super::avx2_k::{prefetch_block, rows};
use super::avx512_cols::{bcast4, K6_BLOCK, K6_CP, K6_D, K6_SC};
use super::packed::{Kern, CHUNK_BLOCK6};
use super::quantize::Acts;

/// `vpternlogd` truth table of `A | (B & C)`.
const OR_AND: i32 = 0xF8;

/// One chunk block's scales lane-wise: the 16 group scales (i32) and the pairs of groups
/// `2p, 2p + 1` as (i16, i16), for the `-32` correction.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scales(blk: *const u8) -> ([__m512i; 16], [__m512i; 8]) {
    let regs: [__m512i; 4] = std::array::from_fn(|i| _mm512_loadu_si512(blk.add(64 * (48 + i)) as *const __m512i));
    // Byte g % 4 of dword g / 4, sign-extended.
    let sc: [__m512i; 16] = std::array::from_fn(|g| {
        let up = _mm512_sllv_epi32(regs[g / 4], _mm512_set1_epi32(24 - 8 * (g % 4) as i32));
        _mm512_srai_epi32::<24>(up)
    });
    let lo16 = _mm512_set1_epi32(0xFFFF);
    let cp = std::array::from_fn(|p| _mm512_or_si512(_mm512_and_si512(sc[2 * p], lo16), _mm512_slli_epi32::<16>(sc[2 * p + 1])));
    (sc, cp)
}

/// The four quant registers of dword position `g` of half `j`: elements `128j + 32s + 4g..+4`
/// for quarter `s`, 16 rows, unsigned (`q + 32`).
#[inline(always)]
unsafe fn quants(blk: *const u8, j: usize, g: usize, m0f: __m512i, m30: __m512i) -> [__m512i; 4] {
    let ld = |i: usize| _mm512_loadu_si512(blk.add(64 * i) as *const __m512i);
    let (qa, qb, h) = (ld(16 * j + g), ld(16 * j + 8 + g), ld(32 + 8 * j + g));
    [
        _mm512_ternarylogic_epi32::<OR_AND>(_mm512_and_si512(qa, m0f), _mm512_slli_epi16::<4>(h), m30),
        _mm512_ternarylogic_epi32::<OR_AND>(_mm512_and_si512(qb, m0f), _mm512_slli_epi16::<2>(h), m30),
        _mm512_ternarylogic_epi32::<OR_AND>(_mm512_and_si512(_mm512_srli_epi16::<4>(qa), m0f), h, m30),
        _mm512_ternarylogic_epi32::<OR_AND>(_mm512_and_si512(_mm512_srli_epi16::<4>(qb), m0f), _mm512_srli_epi16::<2>(h), m30),
    ]
}

/// The 16 rows' `d` of block `b` of the chunk at `c` (`nb` blocks).
#[inline(always)]
unsafe fn block_d(c: *const u8, nb: usize, b: usize) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(c.add(nb * CHUNK_BLOCK6 + 32 * b) as *const __m256i))
}

/// `R` activation rows from `r0` against one chunk (`nb` blocks at `c`): 16 outputs each.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn chunk<const R: usize>(c: *const u8, nb: usize, a: &Acts, r0: usize, ahead: usize) -> [__m512; R] {
    let ya = rows::<R>(a, r0);
    let (m0f, m30) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let blk = c.add(b * CHUNK_BLOCK6);
        // One line more than the block: the stream also covers the `d`s after the chunk.
        prefetch_block(blk.add(ahead), CHUNK_BLOCK6 + 64);
        let (sc, cp) = scales(blk);
        let mut isum = [_mm512_setzero_si512(); R];
        for j in 0..2 {
            for half in 0..2 {
                let mut sub = [[_mm512_setzero_si512(); R]; 4];
                for g in 4 * half..4 * half + 4 {
                    let q = quants(blk, j, g, m0f, m30);
                    for s in 0..4 {
                        for r in 0..R {
                            let y = ya.qs[r].add(256 * b + 128 * j + 32 * s + 4 * g);
                            sub[s][r] = _mm512_dpbusd_epi32(sub[s][r], q[s], bcast4(y));
                        }
                    }
                }
                for s in 0..4 {
                    for r in 0..R {
                        isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(sub[s][r], sc[8 * j + 2 * s + half]));
                    }
                }
            }
        }
        let d = block_d(c, nb, b);
        for r in 0..R {
            let bs = ya.bs[r].add(16 * b) as *const i32;
            let mut corr = _mm512_setzero_si512();
            for p in 0..8 {
                corr = _mm512_dpwssd_epi32(corr, cp[p], _mm512_set1_epi32(bs.add(p).read_unaligned()));
            }
            let isum = _mm512_sub_epi32(isum[r], _mm512_slli_epi32::<5>(corr));
            let da = _mm512_set1_ps(*ya.d[r].add(b));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, da), acc[r]);
        }
    }
    acc
}

/// Unpacks one chunk (`nb` blocks at `c`) into the column kernels' Q6_K scratch: register `t`
/// holds elements `4t..4t + 4` of the 16 rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack(c: *const u8, nb: usize, scr: *mut u8) {
    let (m0f, m30) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
    for b in 0..nb {
        let (blk, sb) = (c.add(b * CHUNK_BLOCK6), scr.add(b * K6_BLOCK));
        let st = |off: usize, v: __m512i| _mm512_storeu_si512(sb.add(off) as *mut __m512i, v);
        for j in 0..2 {
            for g in 0..8 {
                for (s, q) in quants(blk, j, g, m0f, m30).into_iter().enumerate() {
                    st(64 * (32 * j + 8 * s + g), q);
                }
            }
        }
        let (sc, cp) = scales(blk);
        for g in 0..16 {
            st(K6_SC + 64 * g, sc[g]);
        }
        for p in 0..8 {
            st(K6_CP + 64 * p, cp[p]);
        }
        _mm512_storeu_ps(sb.add(K6_D) as *mut f32, block_d(c, nb, b));
    }
}

/// Q6_K, for the packed tile drivers ([`super::packed::gemv_tile`], [`super::packed::cols_tile`]).
pub(crate) struct Q6;

impl Kern for Q6 {
    const BLOCK: usize = CHUNK_BLOCK6;
    const SCRATCH: usize = K6_BLOCK;
    #[inline(always)]
    unsafe fn chunk<const R: usize>(c: *const u8, nb: usize, a: &Acts, r0: usize, ahead: usize) -> [__m512; R] {
        chunk::<R>(c, nb, a, r0, ahead)
    }
    #[inline(always)]
    unsafe fn unpack(c: *const u8, nb: usize, scr: *mut u8) {
        unpack(c, nb, scr)
    }
}
