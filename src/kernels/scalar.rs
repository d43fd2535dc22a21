//! Portable scalar dot products (every type), the fallback where no SIMD path applies. Each block
//! is decoded by `blocks`, its integer dot product is exact, and blocks are accumulated in f32 the
//! way ggml's generic C code does.

use super::blocks::{decode_small, decode_super, QType, QK, QK_K};
use super::quantize::Acts;

/// Dot product of one weight row (raw block bytes) with activation row `r` of `a`.
pub fn dot(t: QType, w: &[u8], a: &Acts, r: usize) -> f32 {
    let bb = t.block_bytes();
    let (qs, d) = (a.row_qs(r), a.row_d(r));
    let mut sumf = 0f32;
    if t.block_elems() == QK {
        let with_min = matches!(t, QType::Q4_1 | QType::Q5_1);
        for (b, blk) in w.chunks_exact(bb).enumerate().take(a.nb) {
            let x = decode_small(t, blk);
            let y = &qs[b * QK..(b + 1) * QK];
            let sumi: i32 = x.q.iter().zip(y).map(|(&p, &q)| p * q as i32).sum();
            if with_min {
                sumf += (x.d * d[b]) * sumi as f32 + x.m * a.row_s(r)[b];
            } else {
                sumf += sumi as f32 * x.d * d[b];
            }
        }
    } else {
        for (b, blk) in w.chunks_exact(bb).enumerate().take(a.nb) {
            let x = decode_super(t, blk);
            let y = &qs[b * QK_K..(b + 1) * QK_K];
            let mut isum = 0i32;
            for (j, (xq, yq)) in x.q.chunks_exact(x.sub).zip(y.chunks_exact(x.sub)).enumerate() {
                let s: i32 = xq.iter().zip(yq).map(|(&p, &q)| p * q as i32).sum();
                isum += x.sc[j] * s;
            }
            sumf += d[b] * x.d * isum as f32;
            if t != QType::Q6K {
                let bs = &a.row_bsums(r)[b * 16..(b + 1) * 16];
                let msum: i32 = (0..8).map(|j| x.mn[j] * (bs[2 * j] as i32 + bs[2 * j + 1] as i32)).sum();
                sumf -= d[b] * x.dmin * msum as f32;
            }
        }
    }
    sumf
}

/// `out[r * ldo + j] = dot(row j, act row r0 + r)` for `j < nw`, `r < nr`.
///
/// # Safety
/// `w` must hold `nw` rows of `row_bytes`; `out` must be writable at every index above.
pub unsafe fn tile(t: QType, w: *const u8, row_bytes: usize, nw: usize, a: &Acts, r0: usize, nr: usize, out: *mut f32, ldo: usize) {
    for j in 0..nw {
        let row = std::slice::from_raw_parts(w.add(j * row_bytes), row_bytes);
        for r in 0..nr {
            *out.add(r * ldo + j) = dot(t, row, a, r0 + r);
        }
    }
}
