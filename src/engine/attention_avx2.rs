//! AVX2 + F16C versions of attention's two inner loops (see `attention`). They keep its
//! arithmetic exactly — in-order sums, a rounded multiply then a rounded add per term, no fused
//! multiply-add — by putting independent sums in the vector lanes: 8 positions' scores per key
//! block, 8 output dimensions of the weighted sum of values. Selected at run time when the CPU
//! has the features.

use super::attention::{Ops, SCALAR};
use super::kv_cache::KEY_BLOCK;
use half::f16;
use std::arch::x86_64::*;

pub(super) const OPS: Ops = Ops { dots, accumulate };

pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")
}

fn dots(q: &[f32], k: &[f16], out: &mut [f32]) {
    let d = q.len();
    assert!(KEY_BLOCK == 8 && k.len() == out.len() * d);
    // SAFETY: `available()` chose these ops; the lengths are checked above.
    unsafe { dots_avx2(q, k, out) }
}

fn accumulate(w: &[f32], v: &[f16], out: &mut [f32]) {
    let d = out.len();
    if !d.is_multiple_of(8) {
        return (SCALAR.accumulate)(w, v, out);
    }
    assert!(v.len() >= w.len() * d);
    // SAFETY: as above.
    unsafe { accumulate_avx2(w, v, out) }
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn load_f16(p: *const f16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// Four key blocks (32 positions) at a time for independent add chains, then single blocks.
#[target_feature(enable = "avx2,f16c")]
unsafe fn dots_avx2(q: &[f32], k: &[f16], out: &mut [f32]) {
    const G: usize = 4;
    let d = q.len();
    let blocks = out.len() / 8;
    let (qp, kp, op) = (q.as_ptr(), k.as_ptr(), out.as_mut_ptr());
    let step = d * 8;
    let mut b = 0;
    while b + G <= blocks {
        let mut acc = [_mm256_setzero_ps(); G];
        for j in 0..d {
            let qj = _mm256_broadcast_ss(&*qp.add(j));
            for (g, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_ps(*a, _mm256_mul_ps(qj, load_f16(kp.add((b + g) * step + j * 8))));
            }
        }
        for (g, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(op.add((b + g) * 8), *a);
        }
        b += G;
    }
    for b in b..blocks {
        let mut a = _mm256_setzero_ps();
        for j in 0..d {
            a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_broadcast_ss(&*qp.add(j)), load_f16(kp.add(b * step + j * 8))));
        }
        _mm256_storeu_ps(op.add(b * 8), a);
    }
}

/// The output row stays in registers for head dimensions up to 256 (32 vectors would spill,
/// so it is walked in slices of 64 dimensions).
#[target_feature(enable = "avx2,f16c")]
unsafe fn accumulate_avx2(w: &[f32], v: &[f16], out: &mut [f32]) {
    const S: usize = 8;
    let d = out.len();
    let (vp, op) = (v.as_ptr(), out.as_mut_ptr());
    let mut j0 = 0;
    while j0 < d {
        let n = ((d - j0) / 8).min(S);
        let mut acc = [_mm256_setzero_ps(); S];
        for (r, a) in acc.iter_mut().enumerate().take(n) {
            *a = _mm256_loadu_ps(op.add(j0 + 8 * r));
        }
        for (p, &wp) in w.iter().enumerate() {
            let (wv, row) = (_mm256_set1_ps(wp), vp.add(p * d + j0));
            for (r, a) in acc.iter_mut().enumerate().take(n) {
                *a = _mm256_add_ps(*a, _mm256_mul_ps(wv, load_f16(row.add(8 * r))));
            }
        }
        for (r, a) in acc.iter().enumerate().take(n) {
            _mm256_storeu_ps(op.add(j0 + 8 * r), *a);
        }
        j0 += 8 * n;
    }
}
