//! AVX2 prefill kernels for the K-quants (Q4_K, Q5_K, Q6_K): 8 weight rows per 256-bit register,
//! one output column per 32-bit lane (llama.cpp's interleaved-`q4_K_8x8` idea, on the project's
//! own layout), so no horizontal sum is left per block and, above all, the sub-block scale is
//! applied once per sub-block instead of once per 32 products.
//!
//! A chunk of 8 weight rows is unpacked once per call into a per-thread scratch: per 256-block and
//! per group of 4 consecutive elements, 32 bytes holding those 4 unsigned quants of each of the 8
//! rows (an 8×8 transposition of dwords), then the block's scales, mins and `d` as 8-lane vectors.
//! Every activation row then passes over the scratch, four at a time: per group one `maddubs` of
//! the 8 rows' quants by the row's 4 quants (broadcast) gives 16 i16 partial sums, which add up
//! in i16 over as many groups as cannot overflow (Q4_K: a whole 32-element sub-block, 8 groups,
//! |sum| ≤ 8·2·15·128 = 30720; Q5_K: 4 groups; Q6_K: 2), and one `madd` with the sub-block scale
//! turns them into i32 — 9 multiplies per 256 products for Q4_K where the per-row kernel
//! (`avx2_k`) needs 16. The mins (Q4_K/Q5_K) and Q6_K's `-32` offset come from the activations'
//! `bsums`. The result is one exact integer per block, row and column, and the float side is the
//! per-row kernels' (Q4_K/Q5_K: `acc = fma(isum, d·d_a)`, `accm = fma(imin, dmin·d_a)`,
//! `acc - accm`; Q6_K: `acc = fma(isum, d·d_a)`), so every output is bit for bit the per-row
//! kernel's (`avx2_k`, and `avx512_k` on an AVX-512 machine) and a row never depends on the batch
//! it was computed in.

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::avx2::f16_to_f32;
use super::avx2_k::{q45k_pair, q6k_quarter};
use super::blocks::{scale_min_k4, QType};
use super::quantize::Acts;

/// Weight rows per chunk (lanes of a 256-bit register).
pub(crate) const COLS: usize = 8;
/// Activation rows per pass over the scratch.
const ROWS: usize = 4;

/// Scratch bytes per 256-block of an 8-row chunk: quants, then the type's scale vectors.
const QBYTES: usize = 2048;
const K45_SC: usize = QBYTES; // 8 × 8 (i16, i16): sub-block scales, twice per lane
const K45_MN: usize = K45_SC + 8 * 32; // 4 × 8 (i16, i16): mins of sub-blocks 2p, 2p+1
const K45_D: usize = K45_MN + 4 * 32; // 8 f32
const K45_DMIN: usize = K45_D + 32; // 8 f32
const K45_BLOCK: usize = K45_DMIN + 32;
const K6_SC: usize = QBYTES; // 16 × 8 (i16, i16): scales of the 16-element groups, twice per lane
const K6_CP: usize = K6_SC + 16 * 32; // 8 × 8 (i16, i16): scales of groups 2p, 2p+1
const K6_D: usize = K6_CP + 8 * 32;
const K6_BLOCK: usize = K6_D + 32;

thread_local! {
    static SCRATCH: RefCell<Vec<__m256i>> = const { RefCell::new(Vec::new()) };
}

/// Whether `t` has a kernel here.
pub(crate) fn supports(t: QType) -> bool {
    matches!(t, QType::Q4K | QType::Q5K | QType::Q6K)
}

#[inline]
unsafe fn put_i32(scr: *mut u8, off: usize, c: usize, v: i32) {
    (scr.add(off + 4 * c) as *mut i32).write_unaligned(v)
}

#[inline]
unsafe fn put_f32(scr: *mut u8, off: usize, c: usize, v: f32) {
    (scr.add(off + 4 * c) as *mut f32).write_unaligned(v)
}

/// Two i16 lanes of one value (a `madd` operand scaling both halves of a lane alike).
fn twice(v: i16) -> i32 {
    (v as u16 as i32) | ((v as i32) << 16)
}

/// Unpacks one weight row's block `p` into column `c` of the chunk's block scratch `scr`: its
/// 256 quants in order into `stage` (256 bytes) and its scales into lane `c` of the vectors.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_col(t: QType, p: *const u8, stage: *mut u8, scr: *mut u8, c: usize) {
    let st = |i: usize, v: __m256i| _mm256_storeu_si256(stage.add(32 * i) as *mut __m256i, v);
    match t {
        QType::Q4K | QType::Q5K => {
            let q = if t == QType::Q5K { p.add(48) } else { p.add(16) };
            let mut hb = if t == QType::Q5K { _mm256_loadu_si256(p.add(16) as *const __m256i) } else { _mm256_setzero_si256() };
            for j in 0..4 {
                let (lo, hi) = if t == QType::Q5K { q45k_pair::<true>(q, j, &mut hb) } else { q45k_pair::<false>(q, j, &mut hb) };
                st(2 * j, lo);
                st(2 * j + 1, hi);
            }
            let sc: [u8; 12] = std::ptr::read_unaligned(p.add(4) as *const [u8; 12]);
            let sm: [(u8, u8); 8] = std::array::from_fn(|j| scale_min_k4(j, &sc));
            for j in 0..8 {
                put_i32(scr, K45_SC + 32 * j, c, twice(sm[j].0 as i16));
            }
            for pr in 0..4 {
                put_i32(scr, K45_MN + 32 * pr, c, sm[2 * pr].1 as i32 | (sm[2 * pr + 1].1 as i32) << 16);
            }
            put_f32(scr, K45_D, c, f16_to_f32(p));
            put_f32(scr, K45_DMIN, c, f16_to_f32(p.add(2)));
        }
        QType::Q6K => {
            for j in 0..2 {
                for (k, v) in q6k_quarter(p, j).into_iter().enumerate() {
                    st(4 * j + k, v);
                }
            }
            let sc: [i8; 16] = std::ptr::read_unaligned(p.add(192) as *const [i8; 16]);
            for g in 0..16 {
                put_i32(scr, K6_SC + 32 * g, c, twice(sc[g] as i16));
            }
            for pr in 0..8 {
                put_i32(scr, K6_CP + 32 * pr, c, (sc[2 * pr] as i16 as u16 as i32) | (sc[2 * pr + 1] as i32) << 16);
            }
            put_f32(scr, K6_D, c, f16_to_f32(p.add(208)));
        }
        _ => unreachable!("no column kernel for {t:?}"),
    }
}

/// `stage` holds 8 rows × 256 quants; writes the block's quants to `scr` as 64 groups of
/// (8 rows × 4 bytes): an 8×8 transposition of dwords per 32 elements.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn transpose_block(stage: *const u8, scr: *mut u8) {
    for s in 0..8 {
        let r: [__m256i; 8] = std::array::from_fn(|c| _mm256_loadu_si256(stage.add(256 * c + 32 * s) as *const __m256i));
        // t[2i], t[2i+1]: rows 2i, 2i+1 interleaved by dword (low and high pairs of each half).
        let t: [__m256i; 8] = std::array::from_fn(|i| {
            let (x, y) = (r[i & !1], r[i | 1]);
            if i & 1 == 0 { _mm256_unpacklo_epi32(x, y) } else { _mm256_unpackhi_epi32(x, y) }
        });
        // u[q] (q < 4: rows 0..4, else 4..8): dword (q & 3) of each half of those rows.
        let u: [__m256i; 8] = std::array::from_fn(|q| {
            let b = if q < 4 { 0 } else { 4 };
            let (x, y) = (t[b + (q & 2) / 2], t[b + 2 + (q & 2) / 2]);
            if q & 1 == 0 { _mm256_unpacklo_epi64(x, y) } else { _mm256_unpackhi_epi64(x, y) }
        });
        for g in 0..4 {
            let (x, y) = (u[g], u[g + 4]);
            _mm256_storeu_si256(scr.add((8 * s + g) * 32) as *mut __m256i, _mm256_permute2x128_si256::<0x20>(x, y));
            _mm256_storeu_si256(scr.add((8 * s + g + 4) * 32) as *mut __m256i, _mm256_permute2x128_si256::<0x31>(x, y));
        }
    }
}

/// `out[r * ldo + j]` for weight rows `j < nw` (from `w`, `row_bytes` apart) and activation rows
/// `r0..r0 + nr`: the matmul's `TileFn`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn tile(t: QType, w: *const u8, row_bytes: usize, nw: usize, a: &Acts, r0: usize, nr: usize, out: *mut f32, ldo: usize) {
    let (bb, blk) = match t {
        QType::Q4K => (144, K45_BLOCK),
        QType::Q5K => (176, K45_BLOCK),
        _ => (210, K6_BLOCK),
    };
    let nb = a.nb;
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let need = (nb * blk + COLS * 256).div_ceil(32);
        if s.len() < need {
            s.resize(need, _mm256_setzero_si256());
        }
        let scr = s.as_mut_ptr() as *mut u8;
        let stage = scr.add(nb * blk);
        let mut j0 = 0;
        while j0 < nw {
            let cols = (nw - j0).min(COLS);
            for b in 0..nb {
                let sb = scr.add(b * blk);
                for c in 0..COLS {
                    if c < cols {
                        unpack_col(t, w.add((j0 + c) * row_bytes + b * bb), stage.add(256 * c), sb, c);
                    } else {
                        // Padding rows: zero quants and scales, their lanes never stored.
                        std::ptr::write_bytes(stage.add(256 * c), 0, 256);
                        for off in (QBYTES..blk).step_by(32) {
                            put_i32(sb, off, c, 0);
                        }
                    }
                }
                transpose_block(stage, sb);
            }
            let mut r = 0;
            while r < nr {
                let left = (nr - r).min(ROWS);
                let o = out.add(r * ldo + j0);
                let rr = r0 + r;
                let f = match (t, left) {
                    (QType::Q6K, 4) => rows6::<4>,
                    (QType::Q6K, 3) => rows6::<3>,
                    (QType::Q6K, 2) => rows6::<2>,
                    (QType::Q6K, _) => rows6::<1>,
                    (QType::Q5K, 4) => rows45::<4, true>,
                    (QType::Q5K, 3) => rows45::<3, true>,
                    (QType::Q5K, 2) => rows45::<2, true>,
                    (QType::Q5K, _) => rows45::<1, true>,
                    (_, 4) => rows45::<4, false>,
                    (_, 3) => rows45::<3, false>,
                    (_, 2) => rows45::<2, false>,
                    _ => rows45::<1, false>,
                };
                f(scr, blk, a, rr, o, ldo, cols);
                r += left;
            }
            j0 += COLS;
        }
    })
}

/// The 4 activation quants at `p`, broadcast to every lane.
#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

/// The first `cols` lanes of `v` to `out`.
#[inline(always)]
unsafe fn store(out: *mut f32, v: __m256, cols: usize) {
    if cols == COLS {
        _mm256_storeu_ps(out, v);
    } else {
        let mut t = [0f32; COLS];
        _mm256_storeu_ps(t.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(t.as_ptr(), out, cols);
    }
}

/// `R` activation rows from `r0` against the unpacked chunk: Q4_K (`HIGH = false`) / Q5_K.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows45<const R: usize, const HIGH: bool>(scr: *const u8, blk: usize, a: &Acts, r0: usize, out: *mut f32, ldo: usize, cols: usize) {
    let nb = a.nb;
    // Groups of 4 elements whose i16 partial sums fit: 8 (a sub-block) for 4-bit quants, 4 for 5-bit.
    let run = if HIGH { 4 } else { 8 };
    let ys: [*const i8; R] = std::array::from_fn(|r| a.qs.as_ptr().add((r0 + r) * nb * 256));
    let mut acc = [_mm256_setzero_ps(); R];
    let mut accm = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let sb = scr.add(b * blk);
        let mut isum = [_mm256_setzero_si256(); R];
        for s in 0..8 {
            let sc = _mm256_loadu_si256(sb.add(K45_SC + 32 * s) as *const __m256i);
            for g0 in (0..8).step_by(run) {
                let mut sub = [_mm256_setzero_si256(); R];
                for g in g0..g0 + run {
                    let wq = _mm256_loadu_si256(sb.add((8 * s + g) * 32) as *const __m256i);
                    for r in 0..R {
                        let y = bcast4(ys[r].add(256 * b + 32 * s + 4 * g));
                        sub[r] = _mm256_add_epi16(sub[r], _mm256_maddubs_epi16(wq, y));
                    }
                }
                for r in 0..R {
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(sub[r], sc));
                }
            }
        }
        let dw = _mm256_loadu_ps(sb.add(K45_D) as *const f32);
        let dm = _mm256_loadu_ps(sb.add(K45_DMIN) as *const f32);
        for r in 0..R {
            // Pairs of 32-element sums of the row's quants (bsums are per 16).
            let v = _mm256_loadu_si256(a.bsums.as_ptr().add(((r0 + r) * nb + b) * 16) as *const __m256i);
            let b32 = _mm_hadd_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let mut imin = _mm256_setzero_si256();
            let pairs = [_mm_cvtsi128_si32(b32), _mm_extract_epi32::<1>(b32), _mm_extract_epi32::<2>(b32), _mm_extract_epi32::<3>(b32)];
            for p in 0..4 {
                let mn = _mm256_loadu_si256(sb.add(K45_MN + 32 * p) as *const __m256i);
                imin = _mm256_add_epi32(imin, _mm256_madd_epi16(mn, _mm256_set1_epi32(pairs[p])));
            }
            let da = _mm256_set1_ps(*a.d.as_ptr().add((r0 + r) * nb + b));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_mul_ps(dw, da), acc[r]);
            accm[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_mul_ps(dm, da), accm[r]);
        }
    }
    for r in 0..R {
        store(out.add(r * ldo), _mm256_sub_ps(acc[r], accm[r]), cols);
    }
}

/// `R` activation rows from `r0` against the unpacked chunk: Q6_K (quants `q + 32`, unsigned;
/// the `32 · Σ scale · bsum` term is subtracted per block).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows6<const R: usize>(scr: *const u8, blk: usize, a: &Acts, r0: usize, out: *mut f32, ldo: usize, cols: usize) {
    let nb = a.nb;
    let ys: [*const i8; R] = std::array::from_fn(|r| a.qs.as_ptr().add((r0 + r) * nb * 256));
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let sb = scr.add(b * blk);
        let mut isum = [_mm256_setzero_si256(); R];
        for grp in 0..16 {
            let sc = _mm256_loadu_si256(sb.add(K6_SC + 32 * grp) as *const __m256i);
            // Two groups of 4 per i16 partial sum: |sum| ≤ 2 · 2 · 63 · 128 = 32256.
            for half in 0..2 {
                let g = 4 * grp + 2 * half;
                let (w0, w1) = (_mm256_loadu_si256(sb.add(g * 32) as *const __m256i), _mm256_loadu_si256(sb.add((g + 1) * 32) as *const __m256i));
                for r in 0..R {
                    let y = ys[r].add(256 * b + 4 * g);
                    let sub = _mm256_add_epi16(_mm256_maddubs_epi16(w0, bcast4(y)), _mm256_maddubs_epi16(w1, bcast4(y.add(4))));
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(sub, sc));
                }
            }
        }
        let dw = _mm256_loadu_ps(sb.add(K6_D) as *const f32);
        for r in 0..R {
            let bs = a.bsums.as_ptr().add(((r0 + r) * nb + b) * 16) as *const i32;
            let mut corr = _mm256_setzero_si256();
            for p in 0..8 {
                let cp = _mm256_loadu_si256(sb.add(K6_CP + 32 * p) as *const __m256i);
                corr = _mm256_add_epi32(corr, _mm256_madd_epi16(cp, _mm256_set1_epi32(bs.add(p).read_unaligned())));
            }
            let isum = _mm256_sub_epi32(isum[r], _mm256_slli_epi32::<5>(corr));
            let da = _mm256_set1_ps(*a.d.as_ptr().add((r0 + r) * nb + b));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, da), acc[r]);
        }
    }
    for r in 0..R {
        store(out.add(r * ldo), acc[r], cols);
    }
}
