//! Activation quantization to the vec-dot formats, with llama.cpp's x86 rounding so a matmul sees
//! the same integers llama.cpp does:
//! - q8_0 / q8_1 (32-blocks): `amax = max|x|`, `d = amax / 127` stored as f16, `id = 127 / amax`
//!   (0 when amax is 0), `q = round_nearest_even(x * id)`; q8_1 adds `s = f16(d * sum(q))`.
//! - q8_K (256-blocks): `max` = the first element of largest magnitude (signed), `iscale =
//!   -127 / max`, `q = min(127, round_nearest_even(iscale * x))`, `d = 1 / iscale` (f32), `bsums`
//!   = sums of 16 consecutive quants.
//!
//! The quantized rows live in [`Acts`], structure-of-arrays (quants, scales, sums) so kernels load
//! each with plain strides; f16 scales are kept as the f32 they convert to (same values).

use half::f16;

use super::blocks::{ActType, QK, QK_K};
use super::matmul::Isa;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Quantized activation rows `[m, k]`. Reused between calls (buffers only grow).
#[derive(Debug)]
pub struct Acts {
    pub kind: ActType,
    pub m: usize,
    /// Blocks per row.
    pub nb: usize,
    /// `m * nb * block` quants.
    pub qs: Vec<i8>,
    /// `m * nb` scales (f16-rounded for q8_0/q8_1, f32 for q8_K).
    pub d: Vec<f32>,
    /// q8_1: `m * nb` f16-rounded `d * sum(q)`.
    pub s: Vec<f32>,
    /// q8_1 with m > 1: `s` transposed, block-major with `s_stride` (≥ m + 8) per block, so a
    /// kernel loads one block's sums of 8 consecutive rows in one vector.
    pub s_t: Vec<f32>,
    pub s_stride: usize,
    /// q8_K: `m * nb * 16` sums of 16 quants.
    pub bsums: Vec<i16>,
    /// After [`Acts::prepare_offset`]: per block, 8 lanes of `offset * (sum of 4 consecutive
    /// quants)`, the correction the Q4_0/Q5_0 kernels subtract from unsigned-quant dot lanes.
    pub corr: Vec<i32>,
    /// The offset `corr` was made for (0: not made for the current quants).
    pub corr_offset: i32,
    /// After [`Acts::prepare_unsigned`]: the quants as unsigned bytes `q + 128` (same layout).
    pub qu: Vec<u8>,
    /// After [`Acts::prepare_unsigned`]: `d` transposed, block-major with `d_stride` (≥ m + 8).
    pub d_t: Vec<f32>,
    pub d_stride: usize,
}

impl Default for Acts {
    fn default() -> Self {
        Self { kind: ActType::Q8_0, m: 0, nb: 0, qs: Vec::new(), d: Vec::new(), s: Vec::new(), s_t: Vec::new(), s_stride: 0, bsums: Vec::new(), corr: Vec::new(), corr_offset: 0, qu: Vec::new(), d_t: Vec::new(), d_stride: 0 }
    }
}

fn grow<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

impl Acts {
    /// Quantize `x` (`[m, k]`, row-major) to `kind`. `k` must be a multiple of the block size.
    pub fn quantize(&mut self, kind: ActType, x: &[f32], k: usize) {
        self.quantize_isa(Isa::best(), kind, x, k)
    }

    /// [`Acts::quantize`] on a chosen instruction set (every path gives identical results).
    pub fn quantize_isa(&mut self, isa: Isa, kind: ActType, x: &[f32], k: usize) {
        let dst = self.prepare(isa, kind, x, k);
        // SAFETY: `prepare` sized every buffer for all blocks of `x`.
        unsafe { quantize_blocks(isa, dst, x, 0, self.m * self.nb) };
        self.transpose_sums();
    }

    /// Fill `s_t` from `s` (q8_1, several rows).
    fn transpose_sums(&mut self) {
        if self.kind != ActType::Q8_1 || self.m < 2 {
            return;
        }
        self.s_stride = transpose_blocks(&self.s, self.m, self.nb, &mut self.s_t);
    }

    /// Fill `corr` for weights stored as `q + offset` (Q4_0: 8, Q5_0: 16).
    pub fn prepare_offset(&mut self, offset: i32) {
        let n = self.m * self.nb * self.kind.block_elems();
        grow(&mut self.corr, n / 4);
        for (c, q) in self.corr.iter_mut().zip(self.qs[..n].chunks_exact(4)) {
            *c = offset * q.iter().map(|&v| v as i32).sum::<i32>();
        }
        self.corr_offset = offset;
    }

    /// Fill `qu` and `d_t` (the prefill kernel of Q4_0/Q5_0 reads them).
    pub fn prepare_unsigned(&mut self) {
        let (m, nb, be) = (self.m, self.nb, self.kind.block_elems());
        grow(&mut self.qu, m * nb * be);
        for (u, &q) in self.qu.iter_mut().zip(&self.qs[..m * nb * be]) {
            *u = q as u8 ^ 0x80;
        }
        self.d_stride = transpose_blocks(&self.d, m, nb, &mut self.d_t);
    }

    /// [`Acts::quantize`] with the rows split over the kernel thread pool.
    pub fn quantize_par(&mut self, kind: ActType, x: &[f32], k: usize) {
        let isa = Isa::best();
        let dst = self.prepare(isa, kind, x, k);
        let (m, nb) = (self.m, self.nb);
        let pool = super::pool::pool();
        let rows = m.div_ceil(pool.threads() * 2).max(1);
        let task = |t: usize| {
            let (r0, r1) = (t * rows, ((t + 1) * rows).min(m));
            // SAFETY: tasks cover disjoint rows of the sized buffers.
            unsafe { quantize_blocks(isa, dst, x, r0 * nb, r1 * nb) };
        };
        pool.run(m.div_ceil(rows), &task);
        self.transpose_sums();
    }

    /// Size the buffers for `x` and return where the blocks go.
    fn prepare(&mut self, isa: Isa, kind: ActType, x: &[f32], k: usize) -> Dst {
        assert!(isa.supported(), "{isa:?} is not supported on this CPU");
        let be = kind.block_elems();
        assert!(k > 0 && k.is_multiple_of(be) && x.len().is_multiple_of(k), "activation length {} / k {k} / block {be}", x.len());
        let m = x.len() / k;
        let nb = k / be;
        self.kind = kind;
        self.m = m;
        self.nb = nb;
        self.d_stride = 0; // `qu` / `d_t` are stale until `prepare_unsigned`
        self.corr_offset = 0; // `corr` is stale until `prepare_offset`
        grow(&mut self.qs, m * k);
        // 8 spare scales (and sums): kernels load them 8 blocks at a time.
        grow(&mut self.d, m * nb + 8);
        if kind == ActType::Q8_1 {
            grow(&mut self.s, m * nb + 8);
        }
        if kind == ActType::Q8K {
            grow(&mut self.bsums, m * nb * 16);
        }
        Dst {
            kind,
            qs: self.qs.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            bsums: self.bsums.as_mut_ptr(),
        }
    }

    /// Quants of row `r`.
    #[inline]
    pub fn row_qs(&self, r: usize) -> &[i8] {
        let k = self.nb * self.kind.block_elems();
        &self.qs[r * k..(r + 1) * k]
    }

    #[inline]
    pub fn row_d(&self, r: usize) -> &[f32] {
        &self.d[r * self.nb..(r + 1) * self.nb]
    }

    #[inline]
    pub fn row_s(&self, r: usize) -> &[f32] {
        &self.s[r * self.nb..(r + 1) * self.nb]
    }

    #[inline]
    pub fn row_bsums(&self, r: usize) -> &[i16] {
        &self.bsums[r * self.nb * 16..(r + 1) * self.nb * 16]
    }
}

/// Per-row, per-block values `src[r * nb + b]` to block-major `dst[b * stride + r]` with
/// `stride = m + 8` (so 8-wide loads from any row stay in bounds); returns the stride.
fn transpose_blocks(src: &[f32], m: usize, nb: usize, dst: &mut Vec<f32>) -> usize {
    let stride = m + 8;
    grow(dst, nb * stride);
    for r in 0..m {
        for b in 0..nb {
            dst[b * stride + r] = src[r * nb + b];
        }
    }
    stride
}

/// f32 to i32 rounding to nearest even, as `cvtps2dq` does it: NaN and out-of-range values give
/// `i32::MIN` (only reachable for blocks whose scale is 0 or denormal, which then contribute 0).
#[inline]
fn cvt_rne(v: f32) -> i32 {
    let r = v.round_ties_even();
    if (-2147483648.0..2147483648.0).contains(&r) {
        r as i32
    } else {
        i32::MIN
    }
}

/// i32 to i8 with saturation (`packssdw` + `packsswb`).
#[inline]
fn sat_i8(v: i32) -> i8 {
    v.clamp(-128, 127) as i8
}

/// One q8_0 block; returns the unrounded scale `amax / 127` and the sum of the quants.
#[inline]
pub fn quantize_q8_0_block(x: &[f32; QK], q: &mut [i8; QK]) -> (f32, i32) {
    let mut amax = 0f32;
    for &v in x {
        let a = v.abs();
        amax = if a > amax { a } else { amax };
    }
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(x) {
        let r = cvt_rne(v * id);
        sum = sum.wrapping_add(r);
        *q = sat_i8(r);
    }
    (d, sum)
}

/// One q8_K block; returns `d`.
#[inline]
pub fn quantize_q8k_block(x: &[f32; QK_K], q: &mut [i8; QK_K], bsums: &mut [i16; 16]) -> f32 {
    let mut amax = 0f32;
    for &v in x {
        let a = v.abs();
        amax = if a > amax { a } else { amax };
    }
    if amax == 0.0 {
        q.fill(0);
        bsums.fill(0);
        return 0.0;
    }
    // The first element reaching amax gives the sign (ggml's strict `>` scan).
    // (NaN activations, from a corrupt file, leave no element equal to amax: the block is then
    // garbage in, garbage out, never a panic.)
    let max = x.iter().find(|v| v.abs() == amax).map_or(amax, |v| *v);
    let iscale = -127.0 / max;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = sat_i8(cvt_rne(iscale * v).min(127));
    }
    for (s, c) in bsums.iter_mut().zip(q.chunks_exact(16)) {
        *s = c.iter().map(|&v| v as i16).sum();
    }
    1.0 / iscale
}

/// Raw destination of quantized blocks (buffers owned by an [`Acts`]).
#[derive(Clone, Copy)]
struct Dst {
    kind: ActType,
    qs: *mut i8,
    d: *mut f32,
    s: *mut f32,
    bsums: *mut i16,
}
// SAFETY: writers touch disjoint blocks (see `quantize_par`).
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

/// Quantize blocks `i0..i1` of `x` into `dst`.
///
/// # Safety
/// `dst` must have room for block `i1 - 1`; `isa` must be supported.
unsafe fn quantize_blocks(isa: Isa, dst: Dst, x: &[f32], i0: usize, i1: usize) {
    #[cfg(target_arch = "x86_64")]
    if isa.avx2() {
        return quantize_avx2(dst, x, i0, i1);
    }
    let _ = isa;
    let be = dst.kind.block_elems();
    for i in i0..i1 {
        let xb = &x[i * be..(i + 1) * be];
        if be == QK {
            let q = &mut *(dst.qs.add(i * QK) as *mut [i8; QK]);
            let (d, sum) = quantize_q8_0_block(xb.try_into().unwrap(), q);
            *dst.d.add(i) = f16::from_f32(d).to_f32();
            if dst.kind == ActType::Q8_1 {
                *dst.s.add(i) = f16::from_f32(d * sum as f32).to_f32();
            }
        } else {
            let q = &mut *(dst.qs.add(i * QK_K) as *mut [i8; QK_K]);
            let bs = &mut *(dst.bsums.add(i * 16) as *mut [i16; 16]);
            *dst.d.add(i) = quantize_q8k_block(xb.try_into().unwrap(), q, bs);
        }
    }
}

/// AVX2 quantization, instruction for instruction llama.cpp's `quantize_row_q8_0/q8_1` (and the
/// q8_K reference, vectorized); results are identical to the scalar path.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_avx2(dst: Dst, x: &[f32], i0: usize, i1: usize) {
    let sign = _mm256_set1_ps(-0.0);
    let be = dst.kind.block_elems();
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for i in i0..i1 {
        let xb = &x[i * be..(i + 1) * be];
        let p = xb.as_ptr();
        let q = dst.qs.add(i * be);
        let mut vmax = _mm256_setzero_ps();
        for j in (0..be).step_by(8) {
            vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(j))));
        }
        let mut m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(vmax), _mm256_castps256_ps128(vmax));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let (mul, d) = if be == QK {
            (if amax != 0.0 { 127.0 / amax } else { 0.0 }, amax / 127.0)
        } else {
            if amax == 0.0 {
                std::ptr::write_bytes(q, 0, QK_K);
                std::ptr::write_bytes(dst.bsums.add(i * 16), 0, 16);
                *dst.d.add(i) = 0.0;
                continue;
            }
            // A NaN in the block can make the vector max NaN; no element equals it then.
            let max = xb.iter().find(|v| v.abs() == amax).map_or(amax, |v| *v);
            let iscale = -127.0 / max;
            (iscale, 1.0 / iscale)
        };
        let vm = _mm256_set1_ps(mul);
        let mut sum = _mm256_setzero_si256();
        for j in (0..be).step_by(32) {
            let cv = |o: usize| {
                let v = _mm256_mul_ps(_mm256_loadu_ps(p.add(j + o)), vm);
                let v = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                _mm256_min_epi32(_mm256_cvtps_epi32(v), _mm256_set1_epi32(127))
            };
            let (a0, a1, a2, a3) = (cv(0), cv(8), cv(16), cv(24));
            sum = _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3)));
            let v = _mm256_packs_epi16(_mm256_packs_epi32(a0, a1), _mm256_packs_epi32(a2, a3));
            let v = _mm256_permutevar8x32_epi32(v, perm);
            _mm256_storeu_si256(q.add(j) as *mut __m256i, v);
            if be == QK_K {
                let s16 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), v), _mm256_set1_epi16(1));
                let mut l = [0i32; 8];
                _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, s16);
                let bs = dst.bsums.add(i * 16 + j / 16);
                *bs = (l[0] + l[1] + l[2] + l[3]) as i16;
                *bs.add(1) = (l[4] + l[5] + l[6] + l[7]) as i16;
            }
        }
        if be == QK {
            *dst.d.add(i) = f16::from_f32(d).to_f32();
            if dst.kind == ActType::Q8_1 {
                let t = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
                let t = _mm_add_epi32(t, _mm_unpackhi_epi64(t, t));
                let t = _mm_add_epi32(t, _mm_shuffle_epi32::<0b10_11_00_01>(t));
                *dst.s.add(i) = f16::from_f32(d * _mm_cvtsi128_si32(t) as f32).to_f32();
            }
        } else {
            *dst.d.add(i) = d;
        }
    }
}
