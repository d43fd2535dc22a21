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
    /// q8_K: `m * nb * 16` sums of 16 quants.
    pub bsums: Vec<i16>,
}

impl Default for Acts {
    fn default() -> Self {
        Self { kind: ActType::Q8_0, m: 0, nb: 0, qs: Vec::new(), d: Vec::new(), s: Vec::new(), bsums: Vec::new() }
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
        let be = kind.block_elems();
        assert!(k > 0 && k % be == 0 && x.len() % k == 0, "activation length {} / k {k} / block {be}", x.len());
        let m = x.len() / k;
        let nb = k / be;
        self.kind = kind;
        self.m = m;
        self.nb = nb;
        grow(&mut self.qs, m * k);
        grow(&mut self.d, m * nb);
        match kind {
            ActType::Q8_0 | ActType::Q8_1 => {
                if kind == ActType::Q8_1 {
                    grow(&mut self.s, m * nb);
                }
                for (i, xb) in x.chunks_exact(QK).enumerate() {
                    let q: &mut [i8; QK] = (&mut self.qs[i * QK..(i + 1) * QK]).try_into().unwrap();
                    let (d, sum) = quantize_q8_0_block(xb.try_into().unwrap(), q);
                    self.d[i] = f16::from_f32(d).to_f32();
                    if kind == ActType::Q8_1 {
                        self.s[i] = f16::from_f32(d * sum as f32).to_f32();
                    }
                }
            }
            ActType::Q8K => {
                grow(&mut self.bsums, m * nb * 16);
                for (i, xb) in x.chunks_exact(QK_K).enumerate() {
                    let q: &mut [i8; QK_K] = (&mut self.qs[i * QK_K..(i + 1) * QK_K]).try_into().unwrap();
                    let bs: &mut [i16; 16] = (&mut self.bsums[i * 16..(i + 1) * 16]).try_into().unwrap();
                    self.d[i] = quantize_q8k_block(xb.try_into().unwrap(), q, bs);
                }
            }
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
        let r = (v * id).round_ties_even() as i32;
        sum += r;
        *q = r as i8;
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
    let max = *x.iter().find(|v| v.abs() == amax).unwrap();
    let iscale = -127.0 / max;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    for (s, c) in bsums.iter_mut().zip(q.chunks_exact(16)) {
        *s = c.iter().map(|&v| v as i16).sum();
    }
    1.0 / iscale
}
