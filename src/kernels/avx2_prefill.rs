//! AVX2 prefill kernel for Q4_0 and Q5_0 (most of Qwen2.5's weights): several activation rows at
//! once, bit-identical to the per-tile kernel in `avx2` (and so to llama.cpp's vec_dot).
//!
//! Two changes against `SmallKern`, both about the operations per block and activation row:
//! - The weight chunk is unpacked once per call into signed bytes and f32 scales in a per-thread
//!   scratch, instead of once per tile of activation rows (16 times for a 128-token prompt).
//! - The activations come as unsigned bytes `y + 128` (`Acts::qu`), so `maddubs(y + 128, x)`
//!   needs no `sign` per activation block; the integer sum `sum(y*x) + 128*sum(x)` is corrected
//!   by the weight block's own `128*sum(x)` per lane, computed once per block and shared by all
//!   rows. The lanes hold exactly the integers of the sign trick, so every rounding after them
//!   (the convert, the `fma` with the exact product of the scales, `hsum8`) is the same.
//!   `|x| <= 16` keeps the pair sums below i16 saturation (255 * 16 * 2), which is why Q8_0
//!   stays on the sign trick.
//!
//! With AVX-512 VNNI (+VL), [`Vnni`] computes the same lanes with one `vpdpbusd` per row and block:
//! `dpbusd(-128*sum(x), y + 128, x)` adds the four byte products of each lane without the i16
//! step, so it equals `madd(maddubs(y + 128, x)) - 128*sum(x)` exactly (no saturation either way).

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::avx2::{f16_to_f32, hsum8, Small};
use super::blocks::QType;
use super::quantize::Acts;

/// Bytes of scratch per weight block: 32 signed quants and the f32 scale (`W` is Q4_0 or Q5_0,
/// whose `unpack` gives `q + OFFSET`).
pub(crate) const SCRATCH_PER_BLOCK: usize = 36;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `out[r * ldo + j]` for weight rows `j < nw` and activation rows `r0..r0 + nr` (`a` prepared
/// with [`Acts::prepare_unsigned`]); the matmul's `TileFn` signature (the type is `W`'s).
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile<W: Small, K: Rows>(_: QType, w: *const u8, row_bytes: usize, nw: usize, a: &Acts, r0: usize, nr: usize, out: *mut f32, ldo: usize) {
    let nb = a.nb;
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let need = nw * nb * SCRATCH_PER_BLOCK;
        if s.len() < need {
            s.resize(need, 0);
        }
        let xs = s.as_mut_ptr();
        let ds = xs.add(nw * nb * 32) as *mut f32;
        for j in 0..nw {
            let row = w.add(j * row_bytes);
            for b in 0..nb {
                let p = row.add(b * W::BYTES);
                let x = _mm256_sub_epi8(W::unpack(p), _mm256_set1_epi8(W::OFFSET as i8));
                _mm256_storeu_si256(xs.add((j * nb + b) * 32) as *mut __m256i, x);
                ds.add(j * nb + b).write_unaligned(f16_to_f32(p));
            }
        }
        let (xs, ds) = (xs as *const u8, ds as *const f32);
        let mut r = 0;
        while r < nr {
            let o = out.add(r * ldo);
            let left = nr - r;
            match left.min(8) {
                8 => K::rows::<8>(xs, ds, nw, a, r0 + r, o, ldo),
                7 => K::rows::<7>(xs, ds, nw, a, r0 + r, o, ldo),
                6 => K::rows::<6>(xs, ds, nw, a, r0 + r, o, ldo),
                5 => K::rows::<5>(xs, ds, nw, a, r0 + r, o, ldo),
                4 => K::rows::<4>(xs, ds, nw, a, r0 + r, o, ldo),
                3 => K::rows::<3>(xs, ds, nw, a, r0 + r, o, ldo),
                2 => K::rows::<2>(xs, ds, nw, a, r0 + r, o, ldo),
                _ => K::rows::<1>(xs, ds, nw, a, r0 + r, o, ldo),
            }
            r += left.min(8);
        }
    })
}

/// The inner product kernel of [`tile`]: `R` activation rows from `r0` against every unpacked
/// weight row.
pub(crate) trait Rows {
    /// # Safety
    /// The CPU has the implementation's features; the pointers cover `nw` rows of `a.nb` blocks.
    unsafe fn rows<const R: usize>(xs: *const u8, ds: *const f32, nw: usize, a: &Acts, r0: usize, out: *mut f32, ldo: usize);
}

/// AVX2: `maddubs` + `madd` per row and block.
pub(crate) struct Madd;
/// AVX-512 VNNI (256-bit, VL): one `dpbusd` per row and block.
pub(crate) struct Vnni;

impl Rows for Madd {
    unsafe fn rows<const R: usize>(xs: *const u8, ds: *const f32, nw: usize, a: &Acts, r0: usize, out: *mut f32, ldo: usize) {
        rows_madd::<R>(xs, ds, nw, a, r0, out, ldo)
    }
}

impl Rows for Vnni {
    unsafe fn rows<const R: usize>(xs: *const u8, ds: *const f32, nw: usize, a: &Acts, r0: usize, out: *mut f32, ldo: usize) {
        rows_vnni::<R>(xs, ds, nw, a, r0, out, ldo)
    }
}

/// One `rows` function: `$k` (from the block's `x`) is computed once per weight block and
/// `$dot` (from `$k`, an activation row's `y` and `x`) once per row; both give i32 lanes.
macro_rules! rows_fn {
    ($name:ident, $features:literal, |$x:ident| $k:expr, |$kk:ident, $y:ident| $dot:expr) => {
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize>(xs: *const u8, ds: *const f32, nw: usize, a: &Acts, r0: usize, out: *mut f32, ldo: usize) {
            let nb = a.nb;
            let ys: [*const u8; R] = std::array::from_fn(|r| a.qu.as_ptr().add((r0 + r) * nb * 32));
            let mut s8 = [[0f32; 8]; 8];
            for j in 0..nw {
                let mut acc = [_mm256_setzero_ps(); R];
                let mut b0 = 0;
                while b0 < nb {
                    let cnt = (nb - b0).min(8);
                    // The scale products of the next (up to) 8 blocks for 8 consecutive rows
                    // (`d_t` is padded), exact; written ahead so the broadcasts below read
                    // settled memory.
                    for i in 0..cnt {
                        let b = b0 + i;
                        let da = _mm256_loadu_ps(a.d_t.as_ptr().add(b * a.d_stride + r0));
                        _mm256_storeu_ps(s8[i].as_mut_ptr(), _mm256_mul_ps(_mm256_set1_ps(*ds.add(j * nb + b)), da));
                    }
                    for i in 0..cnt {
                        let b = b0 + i;
                        let $x = _mm256_loadu_si256(xs.add((j * nb + b) * 32) as *const __m256i);
                        let $kk = $k;
                        for r in 0..R {
                            let $y = _mm256_loadu_si256(ys[r].add(b * 32) as *const __m256i);
                            let dot = $dot;
                            acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&s8[i][r]), _mm256_cvtepi32_ps(dot), acc[r]);
                        }
                    }
                    b0 += 8;
                }
                for r in 0..R {
                    *out.add(r * ldo + j) = hsum8(acc[r]);
                }
            }
        }
    };
}

// 128 * (pair sums of x), summed to 8 lanes exactly as the rows' products are; subtracted per row.
rows_fn!(
    rows_madd,
    "avx2,fma,f16c",
    |x| _mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(_mm256_set1_epi8(-128), x)),
    |k, y| _mm256_sub_epi32(_mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(y, x)), k)
);

// The row's dot product accumulates onto -128 * sum(x) directly.
rows_fn!(
    rows_vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl",
    |x| _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(-128), x)),
    |nk, y| _mm256_dpbusd_epi32(nk, y, x)
);
