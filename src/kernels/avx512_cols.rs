//! AVX-512 VNNI prefill kernels for the K-quants (Q4_K, Q5_K, Q6_K): 16 weight rows per 512-bit
//! register, one output column per lane, so the dot products accumulate lane-wise over `k` and no
//! horizontal sum is left per block.
//!
//! A chunk of 16 weight rows is unpacked once per call into a per-thread scratch: per 256-block
//! and per group of 4 consecutive elements, 64 bytes holding those 4 unsigned quants of each of the
//! 16 rows (a transposition of 16 rows of bytes), then the block's sub-block scales, mins and `d`
//! as 16-lane vectors. Every activation row then passes over the scratch: one `vpdpbusd` per 4
//! elements multiplies 16 rows' quants by the row's 4 quants (broadcast) — 64 products, where the
//! per-row AVX2 kernel needs `maddubs` + `madd` + `add` per 32. Sub-block sums are exact i32s,
//! scaled with `vpmulld`; the mins (Q4_K/Q5_K) and Q6_K's `-32` offset come from the activations'
//! `bsums` through `vpdpwssd`. The result is one exact integer per block, row and column: Q4_K's
//! float side is then the AVX2 kernel's (`acc = fma(isum, d·d_a)`, `accm = fma(imin, dmin·d_a)`,
//! `acc - accm`), bit for bit; Q5_K and Q6_K take the same one-integer form, which the per-row
//! kernels of this instruction set (`avx512_k`) also use, so a row never depends on whether it
//! was computed here or alone.
//!
//! Tested on Zen 5 (AVX-512 F/BW/VL/VNNI); any CPU with those flags takes it.

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::avx2::f16_to_f32;
use super::avx2_k::{q45k_pair, q6k_quarter};
use super::blocks::{scale_min_k4, QType};
use super::quantize::Acts;

/// Weight rows per chunk (lanes of a 512-bit register).
pub(crate) const COLS: usize = 16;

/// Scratch bytes per 256-block of a 16-row chunk: quants, then the type's scale vectors.
const QBYTES: usize = 4096;
pub(crate) const K45_SC: usize = QBYTES; // 8 × 16 i32: sub-block scales
pub(crate) const K45_MN: usize = K45_SC + 8 * 64; // 4 × 16 (i16, i16): mins of sub-blocks 2p, 2p+1
pub(crate) const K45_D: usize = K45_MN + 4 * 64; // 16 f32
pub(crate) const K45_DMIN: usize = K45_D + 64; // 16 f32
pub(crate) const K45_BLOCK: usize = K45_DMIN + 64;
pub(crate) const K6_SC: usize = QBYTES; // 16 × 16 i32: scales of the 16-element groups
pub(crate) const K6_CP: usize = K6_SC + 16 * 64; // 8 × 16 (i16, i16): scales of groups 2p, 2p+1
pub(crate) const K6_D: usize = K6_CP + 8 * 64;
pub(crate) const K6_BLOCK: usize = K6_D + 64;

thread_local! {
    static SCRATCH: RefCell<Vec<__m512i>> = const { RefCell::new(Vec::new()) };
}

/// Whether `t` has a kernel here.
pub(crate) fn supports(t: QType) -> bool {
    matches!(t, QType::Q4K | QType::Q5K | QType::Q6K)
}

#[inline]
unsafe fn put_i32(scr: *mut u8, off: usize, c: usize, v: i32) {
    (scr.add(off + 4 * c) as *mut i32).write(v)
}

#[inline]
unsafe fn put_f32(scr: *mut u8, off: usize, c: usize, v: f32) {
    (scr.add(off + 4 * c) as *mut f32).write(v)
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
                put_i32(scr, K45_SC + 64 * j, c, sm[j].0 as i32);
            }
            for pr in 0..4 {
                put_i32(scr, K45_MN + 64 * pr, c, sm[2 * pr].1 as i32 | (sm[2 * pr + 1].1 as i32) << 16);
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
                put_i32(scr, K6_SC + 64 * g, c, sc[g] as i32);
            }
            for pr in 0..8 {
                put_i32(scr, K6_CP + 64 * pr, c, (sc[2 * pr] as i16 as u16 as i32) | (sc[2 * pr + 1] as i32) << 16);
            }
            put_f32(scr, K6_D, c, f16_to_f32(p.add(208)));
        }
        _ => unreachable!("no column kernel for {t:?}"),
    }
}

/// `stage` holds 16 rows × 256 quants; writes the block's quants to `scr` as 64 groups of
/// (16 rows × 4 bytes): an 8×8 transposition of dwords in each 256-bit half.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn transpose_block(stage: *const u8, scr: *mut u8) {
    let lo = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
    let hi = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
    for s in 0..8 {
        // Row c (0..8) in the low half, row c + 8 in the high half: elements 32s..32s+32.
        let r: [__m512i; 8] = std::array::from_fn(|c| {
            let a = _mm256_loadu_si256(stage.add(256 * c + 32 * s) as *const __m256i);
            let b = _mm256_loadu_si256(stage.add(256 * (c + 8) + 32 * s) as *const __m256i);
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b)
        });
        let t: [__m512i; 8] = std::array::from_fn(|i| {
            let (x, y) = (r[i & !1], r[i | 1]);
            if i & 1 == 0 { _mm512_unpacklo_epi32(x, y) } else { _mm512_unpackhi_epi32(x, y) }
        });
        // u[q]: rows 0..4 (q < 4) or 4..8 of dword columns (q & 3) and (q & 3) + 4.
        let u: [__m512i; 8] = std::array::from_fn(|q| {
            let b = if q < 4 { 0 } else { 4 };
            let (x, y) = (t[b + (q & 2) / 2], t[b + 2 + (q & 2) / 2]);
            if q & 1 == 0 { _mm512_unpacklo_epi64(x, y) } else { _mm512_unpackhi_epi64(x, y) }
        });
        for g in 0..4 {
            let (x, y) = (u[g], u[g + 4]);
            _mm512_storeu_si512(scr.add((8 * s + g) * 64) as *mut __m512i, _mm512_permutex2var_epi64(x, lo, y));
            _mm512_storeu_si512(scr.add((8 * s + g + 4) * 64) as *mut __m512i, _mm512_permutex2var_epi64(x, hi, y));
        }
    }
}

/// `$f::<R>(args)` for `R = $left` (1..=8).
macro_rules! by_rows {
    ($f:ident, $left:expr, $($arg:expr),*) => {
        match $left {
            8 => $f::<8>($($arg),*),
            7 => $f::<7>($($arg),*),
            6 => $f::<6>($($arg),*),
            5 => $f::<5>($($arg),*),
            4 => $f::<4>($($arg),*),
            3 => $f::<3>($($arg),*),
            2 => $f::<2>($($arg),*),
            _ => $f::<1>($($arg),*),
        }
    };
}

/// `out[r * ldo + j]` for weight rows `j < nw` (from `w`, `row_bytes` apart) and activation rows
/// `r0..r0 + nr`: the matmul's `TileFn`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn tile(t: QType, w: *const u8, row_bytes: usize, nw: usize, a: &Acts, r0: usize, nr: usize, out: *mut f32, ldo: usize) {
    let (bb, blk) = match t {
        QType::Q4K => (144, K45_BLOCK),
        QType::Q5K => (176, K45_BLOCK),
        _ => (210, K6_BLOCK),
    };
    let nb = a.nb;
    with_scratch(nb * blk + COLS * 256, |scr| {
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
                        for off in (QBYTES..blk).step_by(64) {
                            put_i32(sb, off, c, 0);
                        }
                    }
                }
                transpose_block(stage, sb);
            }
            over_scratch(t, scr, blk, a, r0, nr, out.add(j0), ldo, cols);
            j0 += COLS;
        }
    })
}

/// `f` on this thread's scratch of at least `bytes` (64-byte aligned).
pub(crate) fn with_scratch<R>(bytes: usize, f: impl FnOnce(*mut u8) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let need = bytes.div_ceil(64);
        if s.len() < need {
            s.resize(need, unsafe { _mm512_setzero_si512() });
        }
        f(s.as_mut_ptr() as *mut u8)
    })
}

/// Activation rows `r0..r0 + nr` against the unpacked chunk in `scr` (`blk` bytes per block):
/// `out[r * ldo + c]` for its first `cols` weight rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn over_scratch(t: QType, scr: *const u8, blk: usize, a: &Acts, r0: usize, nr: usize, out: *mut f32, ldo: usize, cols: usize) {
    let mask: __mmask16 = if cols == COLS { !0 } else { (1u16 << cols) - 1 };
    let mut r = 0;
    while r < nr {
        let left = (nr - r).min(8);
        let o = out.add(r * ldo);
        let rr = r0 + r;
        if t == QType::Q6K {
            by_rows!(rows6, left, scr, blk, a, rr, o, ldo, mask);
        } else {
            by_rows!(rows45, left, scr, blk, a, rr, o, ldo, mask);
        }
        r += left;
    }
}

/// The 4 activation quants at `p`, broadcast to every lane.
#[inline(always)]
pub(crate) unsafe fn bcast4(p: *const i8) -> __m512i {
    _mm512_set1_epi32((p as *const i32).read_unaligned())
}

/// `R` activation rows from `r0` against the unpacked chunk: Q4_K / Q5_K.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn rows45<const R: usize>(scr: *const u8, blk: usize, a: &Acts, r0: usize, out: *mut f32, ldo: usize, mask: __mmask16) {
    let nb = a.nb;
    let ys: [*const i8; R] = std::array::from_fn(|r| a.qs.as_ptr().add((r0 + r) * nb * 256));
    let mut acc = [_mm512_setzero_ps(); R];
    let mut accm = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let sb = scr.add(b * blk);
        let mut isum = [_mm512_setzero_si512(); R];
        for s in 0..8 {
            let mut sub = [_mm512_setzero_si512(); R];
            for g in 0..8 {
                let wq = _mm512_loadu_si512(sb.add((8 * s + g) * 64) as *const __m512i);
                for r in 0..R {
                    sub[r] = _mm512_dpbusd_epi32(sub[r], wq, bcast4(ys[r].add(256 * b + 32 * s + 4 * g)));
                }
            }
            let sc = _mm512_loadu_si512(sb.add(K45_SC + 64 * s) as *const __m512i);
            for r in 0..R {
                isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(sub[r], sc));
            }
        }
        let mut imin = [_mm512_setzero_si512(); R];
        for r in 0..R {
            // Pairs of 32-element sums of the row's quants (bsums are per 16).
            let v = _mm256_loadu_si256(a.bsums.as_ptr().add(((r0 + r) * nb + b) * 16) as *const __m256i);
            let b32 = _mm_hadd_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let mut pairs = [0i32; 4];
            _mm_storeu_si128(pairs.as_mut_ptr() as *mut __m128i, b32);
            for p in 0..4 {
                let mn = _mm512_loadu_si512(sb.add(K45_MN + 64 * p) as *const __m512i);
                imin[r] = _mm512_dpwssd_epi32(imin[r], mn, _mm512_set1_epi32(pairs[p]));
            }
        }
        let dw = _mm512_loadu_ps(sb.add(K45_D) as *const f32);
        let dm = _mm512_loadu_ps(sb.add(K45_DMIN) as *const f32);
        for r in 0..R {
            let da = _mm512_set1_ps(*a.d.as_ptr().add((r0 + r) * nb + b));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_mul_ps(dw, da), acc[r]);
            accm[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(imin[r]), _mm512_mul_ps(dm, da), accm[r]);
        }
    }
    for r in 0..R {
        _mm512_mask_storeu_ps(out.add(r * ldo), mask, _mm512_sub_ps(acc[r], accm[r]));
    }
}

/// `R` activation rows from `r0` against the unpacked chunk: Q6_K (quants `q + 32`, unsigned;
/// the `32 · Σ scale · bsum` term is subtracted per block).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn rows6<const R: usize>(scr: *const u8, blk: usize, a: &Acts, r0: usize, out: *mut f32, ldo: usize, mask: __mmask16) {
    let nb = a.nb;
    let ys: [*const i8; R] = std::array::from_fn(|r| a.qs.as_ptr().add((r0 + r) * nb * 256));
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let sb = scr.add(b * blk);
        let mut isum = [_mm512_setzero_si512(); R];
        for grp in 0..16 {
            let mut sub = [_mm512_setzero_si512(); R];
            for g in 0..4 {
                let wq = _mm512_loadu_si512(sb.add((4 * grp + g) * 64) as *const __m512i);
                for r in 0..R {
                    sub[r] = _mm512_dpbusd_epi32(sub[r], wq, bcast4(ys[r].add(256 * b + 16 * grp + 4 * g)));
                }
            }
            let sc = _mm512_loadu_si512(sb.add(K6_SC + 64 * grp) as *const __m512i);
            for r in 0..R {
                isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(sub[r], sc));
            }
        }
        for r in 0..R {
            let bs = a.bsums.as_ptr().add(((r0 + r) * nb + b) * 16) as *const i32;
            let mut corr = _mm512_setzero_si512();
            for p in 0..8 {
                let cp = _mm512_loadu_si512(sb.add(K6_CP + 64 * p) as *const __m512i);
                corr = _mm512_dpwssd_epi32(corr, cp, _mm512_set1_epi32(bs.add(p).read_unaligned()));
            }
            isum[r] = _mm512_sub_epi32(isum[r], _mm512_slli_epi32::<5>(corr));
        }
        let dw = _mm512_loadu_ps(sb.add(K6_D) as *const f32);
        for r in 0..R {
            let da = _mm512_set1_ps(*a.d.as_ptr().add((r0 + r) * nb + b));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_mul_ps(dw, da), acc[r]);
        }
    }
    for r in 0..R {
        _mm512_mask_storeu_ps(out.add(r * ldo), mask, acc[r]);
    }
}
