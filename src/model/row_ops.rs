//! Row-wise ops of the CPU fast path (RoPE, RMSNorm), on the calling thread. candle_nn's
//! `rope_i` / `rope` hand any call with more than one row to rayon, and its `rms_norm` any call
//! with more than 32: in batched decode (several sequences, one row each) and in prefill those
//! were rayon jobs every layer, whose idle workers then spun in `sched_yield` beside the kernels'
//! pool on the same cores (~350 yields per batched step). A call covers a few thousand values, so
//! one thread does it in microseconds. The float operations are candle_nn's, in the same order,
//! so the results are bit-identical.

use candle_core::Tensor;

use crate::kernels::with_cpu_f32;
use crate::model::arch::RopeStyle;

/// `t` (`[1, heads, rows, head_dim]` f32 on the CPU) rotated by `cos`/`sin` (`[rows, head_dim / 2]`).
pub fn rope_cpu(t: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> candle_core::Result<Tensor> {
    let (b, heads, rows, d) = t.dims4()?;
    let half = d / 2;
    if b != 1 || d % 2 != 0 || cos.dims2()? != (rows, half) || sin.dims2()? != (rows, half) {
        candle_core::bail!("rope: {:?} against tables {:?} / {:?}", t.shape(), cos.shape(), sin.shape());
    }
    let mut out = vec![0f32; heads * rows * d];
    with_cpu_f32(cos, |cos| {
        with_cpu_f32(sin, |sin| {
            with_cpu_f32(t, |src| {
                // Rows of each head in turn; row `r` takes the tables' row `r`.
                for (i, (s, o)) in src.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
                    let r = i % rows;
                    rotate(s, o, &cos[r * half..(r + 1) * half], &sin[r * half..(r + 1) * half], style);
                }
            })
        })
    })???;
    Tensor::from_vec(out, (1, heads, rows, d), t.device())
}

/// One row of one head: pairs `(2i, 2i + 1)` (interleaved) or `(i, i + d/2)` (NeoX).
#[inline]
fn rotate(src: &[f32], dst: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = cos.len();
    for i in 0..half {
        let (a, b) = match style {
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            RopeStyle::Neox => (i, i + half),
        };
        dst[a] = src[a] * cos[i] - src[b] * sin[i];
        dst[b] = src[a] * sin[i] + src[b] * cos[i];
    }
}

/// `x / sqrt(mean(x²) + eps) * alpha` over the last dimension of `x` (f32 on the CPU).
pub fn rms_norm_cpu(x: &Tensor, alpha: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    let n = x.dim(candle_core::D::Minus1)?;
    if alpha.dims1()? != n {
        candle_core::bail!("rms-norm: {:?} against weight {:?}", x.shape(), alpha.shape());
    }
    let mut out = vec![0f32; x.elem_count()];
    with_cpu_f32(alpha, |alpha| {
        with_cpu_f32(x, |src| {
            for (s, d) in src.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
                let sum2 = s.iter().map(|&v| v * v).sum::<f32>();
                let m = (sum2 / n as f32 + eps).sqrt();
                for ((d, s), a) in d.iter_mut().zip(s).zip(alpha) {
                    *d = *s / m * *a;
                }
            }
        })
    })??;
    Tensor::from_vec(out, x.shape(), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 20001) as f32 / 10000.0 - 1.0).collect()
    }

    #[test]
    fn rope_matches_candle_nn_bit_for_bit() {
        let dev = Device::Cpu;
        for (heads, rows, d) in [(9, 1, 64), (9, 4, 64), (3, 40, 64), (2, 7, 256)] {
            let t = Tensor::from_vec(values(heads * rows * d, 1), (1, heads, rows, d), &dev).unwrap();
            let cos = Tensor::from_vec(values(rows * d / 2, 2), (rows, d / 2), &dev).unwrap();
            let sin = Tensor::from_vec(values(rows * d / 2, 3), (rows, d / 2), &dev).unwrap();
            for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
                let ours = rope_cpu(&t, &cos, &sin, style).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let theirs = match style {
                    RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&t, &cos, &sin),
                    RopeStyle::Neox => candle_nn::rotary_emb::rope(&t, &cos, &sin),
                };
                let theirs = theirs.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let same = ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{style:?} heads {heads} rows {rows} d {d}");
            }
        }
    }

    #[test]
    fn rms_norm_matches_candle_nn_bit_for_bit() {
        let dev = Device::Cpu;
        for (rows, n) in [(1, 576), (4, 576), (40, 576), (33, 896), (3, 7)] {
            let x = Tensor::from_vec(values(rows * n, 4), (1, rows, n), &dev).unwrap();
            let w = Tensor::from_vec(values(n, 5), n, &dev).unwrap();
            let ours = rms_norm_cpu(&x, &w, 1e-5).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let theirs = candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits()), "rows {rows} n {n}");
        }
    }

    #[test]
    fn mismatched_tables_are_an_error() {
        let dev = Device::Cpu;
        let t = Tensor::zeros((1, 2, 3, 8), candle_core::DType::F32, &dev).unwrap();
        let cos = Tensor::zeros((2, 4), candle_core::DType::F32, &dev).unwrap();
        assert!(rope_cpu(&t, &cos, &cos, RopeStyle::Neox).is_err());
    }
}
