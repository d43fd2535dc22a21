//! K-quant weights repacked at load for AVX-512 VNNI: 16 weight rows interleaved so that each
//! 512-bit register holds one dword of 16 rows' blocks (a row per lane), the layout llama.cpp's
//! `q4_K_8x8` repack uses for 8 rows on AVX2. The bytes are the file's, only moved. Q4_K: a chunk
//! of 16 rows and one 256-block is 36 registers (2304 bytes, what 16 blocks take in the file),
//! register `i` lane `r` being dword `i` of row `r`'s block: `[d, dmin]`, the 12 scale bytes, then
//! the 128 quant bytes. Q6_K (210 bytes, not whole dwords): 52 registers per chunk block (`ql`
//! 0..32, `qh` 32..48, the 16 scales 48..52), the 16 rows' `d` of every block after the chunk's
//! blocks (32 bytes each), the chunk padded to whole registers. Rows past `n` are zero padding to
//! a whole chunk. This file holds the layout and the Q4_K kernels; `packed6` the Q6_K ones.
//!
//! Decode (and batches below the column threshold) multiply in place: per register of quants,
//! one `and` each gives the low nibbles (sub-block `2p`) and the high nibbles times 16 (sub-block
//! `2p + 1`), and one `vpdpbusd` per nibble half multiplies 16 rows' 4 quants by 4 activation
//! quants broadcast: 64 products, with no horizontal sum anywhere (the per-row kernel needs a
//! `maddubs`, a `vpdpwssd` and a share of the scale shuffles and reductions per 64). Scales and
//! mins are decoded lane-wise with shifts, masks and byte shuffles. Prefill unpacks a chunk into
//! the column kernels' scratch (`avx512_cols`), cheaper than their transposition of file rows.
//!
//! Every block still reduces to one exact integer for the quants and one for the mins, and the
//! float side is `acc += isum · (d·d_a)`, `accm += imin · (dmin·d_a)`, `acc - accm`: the outputs
//! are the per-row kernels' bits.

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop, clippy::too_many_arguments)]

use super::blocks::QType;

/// Weight rows per chunk (lanes of a 512-bit register).
pub const LANES: usize = 16;
/// File bytes of one Q4_K block.
const BLOCK: usize = 144;
/// Bytes of one chunk's block (16 rows).
const CHUNK_BLOCK: usize = LANES * BLOCK;
/// Q6_K: dwords of a block before its `d`, bytes of a chunk block without them.
const DWORDS6: usize = 52;
pub(crate) const CHUNK_BLOCK6: usize = 64 * DWORDS6;

/// 64-byte aligned storage, so every register load of a chunk is aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Whether `t` has a packed layout and kernels.
pub fn packs(t: QType) -> bool {
    matches!(t, QType::Q4K | QType::Q6K)
}

/// Bytes per row of a packed `t` weight of width `k` (a chunk of 16 rows is 16 times that): the
/// file's row bytes, and for Q6_K the chunk's padding to whole registers shared out.
pub(crate) fn stride(t: QType, k: usize) -> usize {
    let nb = k / 256;
    match t {
        QType::Q6K => (nb * CHUNK_BLOCK6 + (32 * nb).next_multiple_of(64)) / LANES,
        _ => nb * BLOCK,
    }
}

/// A `[n, k]` Q4_K or Q6_K weight in the interleaved layout.
pub struct Packed {
    pub ty: QType,
    pub n: usize,
    pub k: usize,
    lines: Vec<Line>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed {:?} [{}, {}]", self.ty, self.n, self.k)
    }
}

/// Where byte `i` of block `b` of the row in `lane` goes in its chunk (`nb` blocks).
fn place(t: QType, nb: usize, b: usize, lane: usize, i: usize) -> usize {
    match t {
        QType::Q6K if i >= 4 * DWORDS6 => nb * CHUNK_BLOCK6 + 32 * b + 2 * lane + (i - 4 * DWORDS6),
        QType::Q6K => b * CHUNK_BLOCK6 + 64 * (i / 4) + 4 * lane + i % 4,
        _ => b * CHUNK_BLOCK + 64 * (i / 4) + 4 * lane + i % 4,
    }
}

impl Packed {
    /// Repacks `data`, `n` rows of `k` elements of `ty` (Q4_K or Q6_K) in the file's layout
    /// (checked: the size must be exactly that, every product checked).
    pub fn new(ty: QType, data: &[u8], n: usize, k: usize) -> Result<Self, String> {
        if !packs(ty) {
            return Err(format!("{ty:?} has no packed layout"));
        }
        if k == 0 || !k.is_multiple_of(256) {
            return Err(format!("{ty:?}: k = {k} is not a positive multiple of 256"));
        }
        // `stride` (at most 13k + 64 bytes) must not wrap, even for an empty tensor.
        if k > usize::MAX / 16 {
            return Err(format!("{ty:?}: k = {k} is too large"));
        }
        let (nb, bb) = (k / 256, ty.block_bytes());
        let rb = nb * bb;
        if n.checked_mul(rb) != Some(data.len()) {
            return Err(format!("{ty:?} [{n}, {k}]: {} bytes, expected {n} × {rb}", data.len()));
        }
        let chunks = n.div_ceil(LANES);
        let total = chunks.checked_mul(stride(ty, k)).and_then(|c| c.checked_mul(LANES)).ok_or(format!("{ty:?}: packed size overflows"))?;
        let mut lines = vec![Line([0; 64]); total / 64];
        // SAFETY: `lines` is `total` initialized bytes.
        let out = unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut u8, total) };
        let chunk = LANES * stride(ty, k);
        for row in 0..n {
            let (c, lane) = (row / LANES, row % LANES);
            for b in 0..nb {
                let src = &data[row * rb + b * bb..][..bb];
                for i in (0..bb).step_by(2) {
                    // Pairs of bytes stay together in both layouts (dwords, and Q6_K's `d`).
                    out[c * chunk + place(ty, nb, b, lane, i)..][..2].copy_from_slice(&src[i..i + 2]);
                }
            }
        }
        Ok(Self { ty, n, k, lines })
    }

    /// The packed bytes: `n.div_ceil(16)` chunks of `16 × stride(ty, k)` bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.lines.len() * 64) }
    }

    /// Row `row`'s blocks back in the file's layout (tests, and anything that needs a row).
    pub fn row(&self, row: usize) -> Vec<u8> {
        let (nb, bb, bytes) = (self.k / 256, self.ty.block_bytes(), self.bytes());
        let (c, lane) = (row / LANES, row % LANES);
        let base = c * LANES * stride(self.ty, self.k);
        let mut v = Vec::with_capacity(nb * bb);
        for b in 0..nb {
            for i in (0..bb).step_by(2) {
                v.extend_from_slice(&bytes[base + place(self.ty, nb, b, lane, i)..][..2]);
            }
        }
        v
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use simd::{cols_tile, gemv_tile, Kern, Q4};

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{CHUNK_BLOCK, LANES};
    use crate::kernels::avx2_k::{bsums32, prefetch_block, prefetch_distance, rows};
    use crate::kernels::avx512_cols::{self, bcast4};
    use crate::kernels::blocks::QType;
    use crate::kernels::quantize::Acts;

    /// One chunk block's scales, lane-wise: the 8 sub-block scales (i32), the mins of
    /// sub-blocks `2p, 2p + 1` as i16 pairs, and `d`, `dmin`.
    struct Scales {
        sc: [__m512i; 8],
        mn: [__m512i; 4],
        d: __m512,
        dmin: __m512,
    }

    /// `vpshufb` controls: `PICK[b]` takes byte `b` of each dword into its low byte (a scale as
    /// an i32), `PICK[4 + b / 2]` bytes `b`, `b + 1` into its two 16-bit halves (a pair of mins).
    static PICK: [[u8; 64]; 6] = {
        let mut t = [[0x80u8; 64]; 6];
        let mut d = 0;
        while d < 16 {
            let base = (4 * (d % 4)) as u8;
            let mut b = 0;
            while b < 4 {
                t[b][4 * d] = base + b as u8;
                b += 1;
            }
            t[4][4 * d] = base;
            t[4][4 * d + 2] = base + 1;
            t[5][4 * d] = base + 2;
            t[5][4 * d + 2] = base + 3;
            d += 1;
        }
        t
    };

    #[inline(always)]
    unsafe fn pick(i: usize) -> __m512i {
        _mm512_loadu_si512(PICK[i].as_ptr() as *const __m512i)
    }

    /// The scales of the chunk block at `blk` (registers 0..4: `[d, dmin]`, scale bytes 0..12),
    /// as llama.cpp's `get_scale_min_k4` gives them, for 16 rows at once.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn scales(blk: *const u8) -> Scales {
        let ld = |i: usize| _mm512_loadu_si512(blk.add(64 * i) as *const __m512i);
        let (dd, d0, d1, d2) = (ld(0), ld(1), ld(2), ld(3));
        let m3f = _mm512_set1_epi8(0x3F);
        let m0f = _mm512_set1_epi8(0x0F);
        let m30 = _mm512_set1_epi8(0x30);
        // Bytes 0..4 of each dword: scales (mins) 0..4, then 4..8 (low four bits from bytes
        // 8..12, the top two from bits 6-7 of bytes 0..4 (4..8)).
        let sc_lo = _mm512_and_si512(d0, m3f);
        let mn_lo = _mm512_and_si512(d1, m3f);
        let sc_hi = _mm512_or_si512(_mm512_and_si512(d2, m0f), _mm512_and_si512(_mm512_srli_epi32::<2>(d0), m30));
        let mn_hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(d2), m0f), _mm512_and_si512(_mm512_srli_epi32::<2>(d1), m30));
        let sc = std::array::from_fn(|j| _mm512_shuffle_epi8(if j < 4 { sc_lo } else { sc_hi }, pick(j % 4)));
        let mn = std::array::from_fn(|p| _mm512_shuffle_epi8(if p < 2 { mn_lo } else { mn_hi }, pick(4 + p % 2)));
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
        let dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dd)));
        Scales { sc, mn, d, dmin }
    }

    /// `R` activation rows from `r0` against one chunk (`nb` blocks at `c`): 16 outputs each.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn chunk<const R: usize>(c: *const u8, nb: usize, a: &Acts, r0: usize, ahead: usize) -> [__m512; R] {
        let ya = rows::<R>(a, r0);
        let m4 = _mm512_set1_epi8(0x0F);
        let mf0 = _mm512_set1_epi8(0xF0u8 as i8);
        let mut acc = [_mm512_setzero_ps(); R];
        let mut accm = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let blk = c.add(b * CHUNK_BLOCK);
            prefetch_block(blk.add(ahead), CHUNK_BLOCK);
            let s = scales(blk);
            let mut isum = [_mm512_setzero_si512(); R];
            for p in 0..4 {
                let mut lo = [_mm512_setzero_si512(); R];
                let mut hi = [_mm512_setzero_si512(); R];
                for g in 0..8 {
                    let q = _mm512_loadu_si512(blk.add(64 * (4 + 8 * p + g)) as *const __m512i);
                    let (ql, qh) = (_mm512_and_si512(q, m4), _mm512_and_si512(q, mf0));
                    for r in 0..R {
                        let y = ya.qs[r].add(256 * b + 64 * p + 4 * g);
                        lo[r] = _mm512_dpbusd_epi32(lo[r], ql, bcast4(y));
                        hi[r] = _mm512_dpbusd_epi32(hi[r], qh, bcast4(y.add(32)));
                    }
                }
                for r in 0..R {
                    // The high nibbles came as 16·q: every product, so every sum, is a multiple of 16.
                    let h = _mm512_mullo_epi32(_mm512_srai_epi32::<4>(hi[r]), s.sc[2 * p + 1]);
                    isum[r] = _mm512_add_epi32(isum[r], _mm512_add_epi32(_mm512_mullo_epi32(lo[r], s.sc[2 * p]), h));
                }
            }
            for r in 0..R {
                let mut pairs = [0i32; 4];
                _mm_storeu_si128(pairs.as_mut_ptr() as *mut __m128i, bsums32(ya.bs[r].add(16 * b)));
                let mut imin = _mm512_setzero_si512();
                for p in 0..4 {
                    imin = _mm512_dpwssd_epi32(imin, s.mn[p], _mm512_set1_epi32(pairs[p]));
                }
                let da = _mm512_set1_ps(*ya.d[r].add(b));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_mul_ps(s.d, da), acc[r]);
                accm[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(imin), _mm512_mul_ps(s.dmin, da), accm[r]);
            }
        }
        std::array::from_fn(|r| _mm512_sub_ps(acc[r], accm[r]))
    }

    /// Unpacks one chunk (`nb` blocks at `c`) into the column kernels' scratch.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack(c: *const u8, nb: usize, scr: *mut u8) {
        let m4 = _mm512_set1_epi8(0x0F);
        for b in 0..nb {
            let (blk, sb) = (c.add(b * CHUNK_BLOCK), scr.add(b * avx512_cols::K45_BLOCK));
            let st = |off: usize, v: __m512i| _mm512_storeu_si512(sb.add(off) as *mut __m512i, v);
            for p in 0..4 {
                for g in 0..8 {
                    let q = _mm512_loadu_si512(blk.add(64 * (4 + 8 * p + g)) as *const __m512i);
                    st(64 * (8 * (2 * p) + g), _mm512_and_si512(q, m4));
                    st(64 * (8 * (2 * p + 1) + g), _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4));
                }
            }
            let s = scales(blk);
            for j in 0..8 {
                st(avx512_cols::K45_SC + 64 * j, s.sc[j]);
            }
            for p in 0..4 {
                st(avx512_cols::K45_MN + 64 * p, s.mn[p]);
            }
            _mm512_storeu_ps(sb.add(avx512_cols::K45_D) as *mut f32, s.d);
            _mm512_storeu_ps(sb.add(avx512_cols::K45_DMIN) as *mut f32, s.dmin);
        }
    }

    /// A packed type's kernels over one chunk, which the tile drivers below run.
    pub(crate) trait Kern {
        /// Bytes of one chunk block (the prefetch distance is whole blocks).
        const BLOCK: usize;
        /// Bytes per block of the column kernels' scratch for the type.
        const SCRATCH: usize;
        /// `R` activation rows from `r0` against one chunk (`nb` blocks at `c`): 16 outputs each.
        unsafe fn chunk<const R: usize>(c: *const u8, nb: usize, a: &Acts, r0: usize, ahead: usize) -> [__m512; R];
        /// Unpacks one chunk into the column kernels' scratch.
        unsafe fn unpack(c: *const u8, nb: usize, scr: *mut u8);
    }

    /// Q4_K.
    pub(crate) struct Q4;

    impl Kern for Q4 {
        const BLOCK: usize = CHUNK_BLOCK;
        const SCRATCH: usize = avx512_cols::K45_BLOCK;
        #[inline(always)]
        unsafe fn chunk<const R: usize>(c: *const u8, nb: usize, a: &Acts, r0: usize, ahead: usize) -> [__m512; R] {
            chunk::<R>(c, nb, a, r0, ahead)
        }
        #[inline(always)]
        unsafe fn unpack(c: *const u8, nb: usize, scr: *mut u8) {
            unpack(c, nb, scr)
        }
    }

    #[inline(always)]
    unsafe fn rows_of<K: Kern, const R: usize>(c: *const u8, nb: usize, a: &Acts, r0: usize, ahead: usize, out: *mut f32, ldo: usize, mask: __mmask16) {
        let v = K::chunk::<R>(c, nb, a, r0, ahead);
        for r in 0..R {
            _mm512_mask_storeu_ps(out.add(r * ldo), mask, v[r]);
        }
    }

    /// The matmul's `TileFn` for packed weights over few activation rows: `w` is the first
    /// chunk (`nw` rows from a multiple of 16; the last chunk may be partial, its padding
    /// present), `stride` the packed bytes per row ([`super::stride`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(crate) unsafe fn gemv_tile<K: Kern>(_: QType, w: *const u8, stride: usize, nw: usize, a: &Acts, r0: usize, nr: usize, out: *mut f32, ldo: usize) {
        let nb = a.nb;
        let ahead = prefetch_distance(K::BLOCK);
        for c in 0..nw.div_ceil(LANES) {
            let cw = w.add(c * LANES * stride);
            let left = nw - c * LANES;
            let mask: __mmask16 = if left >= LANES { !0 } else { (1u16 << left) - 1 };
            let mut r = 0;
            while r < nr {
                let o = out.add(r * ldo + c * LANES);
                let rr = r0 + r;
                match nr - r {
                    1 => rows_of::<K, 1>(cw, nb, a, rr, ahead, o, ldo, mask),
                    2 => rows_of::<K, 2>(cw, nb, a, rr, ahead, o, ldo, mask),
                    3 => rows_of::<K, 3>(cw, nb, a, rr, ahead, o, ldo, mask),
                    _ => rows_of::<K, 4>(cw, nb, a, rr, ahead, o, ldo, mask),
                }
                r += (nr - r).min(4);
            }
        }
    }

    /// The matmul's `TileFn` for packed weights over many activation rows (one chunk per call
    /// in practice): each chunk unpacked once, then every activation row passes over it.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(crate) unsafe fn cols_tile<K: Kern>(t: QType, w: *const u8, stride: usize, nw: usize, a: &Acts, r0: usize, nr: usize, out: *mut f32, ldo: usize) {
        let nb = a.nb;
        avx512_cols::with_scratch(nb * K::SCRATCH, |scr| {
            for c in 0..nw.div_ceil(LANES) {
                K::unpack(w.add(c * LANES * stride), nb, scr);
                let cols = (nw - c * LANES).min(LANES);
                avx512_cols::over_scratch(t, scr, K::SCRATCH, a, r0, nr, out.add(c * LANES), ldo, cols);
            }
        })
    }
}
