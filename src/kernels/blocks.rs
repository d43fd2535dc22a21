//! GGUF/ggml block formats of the weight types the kernels read (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! Q4_K, Q5_K, Q6_K): sizes, byte offsets and a scalar decoder from raw block bytes to the
//! integer quants and scales ggml stores, and the portable scalar dot products built on it. The
//! decoder is the layout's single definition in this module tree (the tests' references use it).
//!
//! Byte layouts (little endian, no padding):
//! - Q4_0 (18 B / 32): `d:f16, qs[16]`; x[j] = d*(lo(qs[j])-8), x[j+16] = d*(hi(qs[j])-8)
//! - Q4_1 (20 B / 32): `d:f16, m:f16, qs[16]`; x = d*q + m
//! - Q5_0 (22 B / 32): `d:f16, qh:u32, qs[16]`; 5th bit of element j is bit j of qh, offset 16
//! - Q5_1 (24 B / 32): `d:f16, m:f16, qh:u32, qs[16]`; x = d*q + m
//! - Q8_0 (34 B / 32): `d:f16, qs:i8[32]`
//! - Q4_K (144 B / 256): `d:f16, dmin:f16, scales[12], qs[128]`; 8 sub-blocks of 32 with 6-bit
//!   scale/min: x = d*sc*q - dmin*m; qs chunk c (32 B) holds sub-block 2c (low) and 2c+1 (high)
//! - Q5_K (176 B / 256): `d, dmin, scales[12], qh[32], qs[128]`; bit 2c / 2c+1 of qh[l] is the
//!   5th bit of element l of sub-block 2c / 2c+1
//! - Q6_K (210 B / 256): `ql[128], qh[64], scales:i8[16], d:f16`; 16 sub-blocks of 16, offset 32

use half::f16;

use super::quantize::Acts;

/// A quantized weight type the kernels implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// The activation format a weight type is multiplied with (llama.cpp's `vec_dot_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActType {
    /// 32-blocks, f16 scale.
    Q8_0,
    /// 32-blocks, f16 scale and f16 `d * sum(q)`.
    Q8_1,
    /// 256-blocks, f32 scale and sums of 16.
    Q8K,
}

pub const QK: usize = 32;
pub const QK_K: usize = 256;

impl QType {
    pub const ALL: [QType; 8] =
        [QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1, QType::Q8_0, QType::Q4K, QType::Q5K, QType::Q6K];

    /// Elements per block.
    pub const fn block_elems(self) -> usize {
        match self {
            QType::Q4K | QType::Q5K | QType::Q6K => QK_K,
            _ => QK,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q5_0 => 22,
            QType::Q5_1 => 24,
            QType::Q8_0 => 34,
            QType::Q4K => 144,
            QType::Q5K => 176,
            QType::Q6K => 210,
        }
    }

    pub const fn act(self) -> ActType {
        match self {
            QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => ActType::Q8_0,
            QType::Q4_1 | QType::Q5_1 => ActType::Q8_1,
            QType::Q4K | QType::Q5K | QType::Q6K => ActType::Q8K,
        }
    }
}

impl ActType {
    pub const fn block_elems(self) -> usize {
        match self {
            ActType::Q8K => QK_K,
            _ => QK,
        }
    }
}

#[inline(always)]
pub fn f16_at(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// A 32-element block decoded to integers: x[j] = d * q[j] + m (m = 0 for Q4_0/Q5_0/Q8_0).
#[derive(Clone, Copy, Debug)]
pub struct Small {
    pub d: f32,
    pub m: f32,
    pub q: [i32; QK],
}

/// Decode one block of a 32-element type (`b` holds at least one block).
pub fn decode_small(t: QType, b: &[u8]) -> Small {
    let mut q = [0i32; QK];
    let nib = |qs: &[u8], q: &mut [i32; QK]| {
        for j in 0..16 {
            q[j] = (qs[j] & 0xF) as i32;
            q[j + 16] = (qs[j] >> 4) as i32;
        }
    };
    let high = |qh: u32, q: &mut [i32; QK]| {
        for (j, v) in q.iter_mut().enumerate() {
            *v |= (((qh >> j) & 1) << 4) as i32;
        }
    };
    let qh_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let (d, m) = match t {
        QType::Q4_0 => {
            nib(&b[2..18], &mut q);
            q.iter_mut().for_each(|v| *v -= 8);
            (f16_at(b, 0), 0.0)
        }
        QType::Q4_1 => {
            nib(&b[4..20], &mut q);
            (f16_at(b, 0), f16_at(b, 2))
        }
        QType::Q5_0 => {
            nib(&b[6..22], &mut q);
            high(qh_at(2), &mut q);
            q.iter_mut().for_each(|v| *v -= 16);
            (f16_at(b, 0), 0.0)
        }
        QType::Q5_1 => {
            nib(&b[8..24], &mut q);
            high(qh_at(4), &mut q);
            (f16_at(b, 0), f16_at(b, 2))
        }
        QType::Q8_0 => {
            for j in 0..QK {
                q[j] = b[2 + j] as i8 as i32;
            }
            (f16_at(b, 0), 0.0)
        }
        _ => panic!("decode_small: {t:?} is a 256-element type"),
    };
    Small { d, m, q }
}

/// A 256-element K-quant block decoded: x[j] = d * sc[j / sub] * q[j] - dmin * mn[j / sub]
/// with `sub` = 32 (Q4_K, Q5_K; mins used) or 16 (Q6_K; q already offset by -32, no mins).
#[derive(Clone, Copy, Debug)]
pub struct Super {
    pub d: f32,
    pub dmin: f32,
    pub sc: [i32; 16],
    pub mn: [i32; 16],
    pub sub: usize,
    pub q: [i32; QK_K],
}

/// The 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K/Q5_K.
#[inline]
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Decode one block of a K-quant type.
pub fn decode_super(t: QType, b: &[u8]) -> Super {
    let mut r = Super { d: 0.0, dmin: 0.0, sc: [0; 16], mn: [0; 16], sub: 32, q: [0; QK_K] };
    match t {
        QType::Q4K | QType::Q5K => {
            r.d = f16_at(b, 0);
            r.dmin = f16_at(b, 2);
            for j in 0..8 {
                let (s, m) = scale_min_k4(j, &b[4..16]);
                r.sc[j] = s as i32;
                r.mn[j] = m as i32;
            }
            let (qh, qs) = if t == QType::Q5K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
            for c in 0..4 {
                for l in 0..32 {
                    let byte = qs[32 * c + l];
                    let (mut lo, mut hi) = ((byte & 0xF) as i32, (byte >> 4) as i32);
                    if let Some(qh) = qh {
                        lo |= (((qh[l] >> (2 * c)) & 1) as i32) << 4;
                        hi |= (((qh[l] >> (2 * c + 1)) & 1) as i32) << 4;
                    }
                    r.q[64 * c + l] = lo;
                    r.q[64 * c + 32 + l] = hi;
                }
            }
        }
        QType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            r.d = f16_at(b, 208);
            r.sub = 16;
            for (j, s) in sc.iter().enumerate() {
                r.sc[j] = *s as i8 as i32;
            }
            for n in 0..2 {
                let (ql, qh, y) = (&ql[64 * n..], &qh[32 * n..], 128 * n);
                for l in 0..32 {
                    let h = qh[l] as i32;
                    r.q[y + l] = ((ql[l] & 0xF) as i32 | ((h & 3) << 4)) - 32;
                    r.q[y + l + 32] = ((ql[l + 32] & 0xF) as i32 | (((h >> 2) & 3) << 4)) - 32;
                    r.q[y + l + 64] = ((ql[l] >> 4) as i32 | (((h >> 4) & 3) << 4)) - 32;
                    r.q[y + l + 96] = ((ql[l + 32] >> 4) as i32 | (((h >> 6) & 3) << 4)) - 32;
                }
            }
        }
        _ => panic!("decode_super: {t:?} is a 32-element type"),
    }
    r
}

/// Dequantize a whole row of `t` (the ggml rounding: `d*sc` first for K-quants) into `out`.
pub fn dequantize_row(t: QType, row: &[u8], out: &mut [f32]) {
    let (be, bb) = (t.block_elems(), t.block_bytes());
    assert_eq!(row.len() / bb * be, out.len());
    for (b, o) in row.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
        if be == QK {
            let s = decode_small(t, b);
            for (o, &q) in o.iter_mut().zip(&s.q) {
                *o = if s.m == 0.0 { s.d * q as f32 } else { s.d * q as f32 + s.m };
            }
        } else {
            let s = decode_super(t, b);
            for (j, (o, &q)) in o.iter_mut().zip(&s.q).enumerate() {
                let (dl, ml) = (s.d * s.sc[j / s.sub] as f32, s.dmin * s.mn[j / s.sub] as f32);
                *o = dl * q as f32 - ml;
            }
        }
    }
}

/// The portable scalar dot product (the fallback where no SIMD path applies): one weight row
/// (raw block bytes) with activation row `r` of `a`. Each block's integer dot product is exact;
/// blocks are accumulated in f32 the way ggml's generic C code does.
pub fn dot_scalar(t: QType, w: &[u8], a: &Acts, r: usize) -> f32 {
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
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_scalar(t: QType, w: *const u8, row_bytes: usize, nw: usize, a: &Acts, r0: usize, nr: usize, out: *mut f32, ldo: usize) {
    for j in 0..nw {
        let row = std::slice::from_raw_parts(w.add(j * row_bytes), row_bytes);
        for r in 0..nr {
            *out.add(r * ldo + j) = dot_scalar(t, row, a, r0 + r);
        }
    }
}
