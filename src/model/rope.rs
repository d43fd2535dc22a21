//! RoPE on the CPU fast path, on the calling thread. candle_nn's `rope_i` / `rope` compute the
//! same thing but hand any call with more than one row to rayon: in batched decode (several
//! sequences, one row each) that was two rayon jobs per layer per step, whose workers then spun
//! in `sched_yield` beside the kernels' pool on the same cores (~350 yields per step). A step
//! rotates a few thousand pairs, so one thread does it in microseconds. The float operations are
//! candle's, in the same order, so the results are bit-identical.

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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 20001) as f32 / 10000.0 - 1.0).collect()
    }

    #[test]
    fn matches_candle_nn_bit_for_bit() {
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
    fn mismatched_tables_are_an_error() {
        let dev = Device::Cpu;
        let t = Tensor::zeros((1, 2, 3, 8), candle_core::DType::F32, &dev).unwrap();
        let cos = Tensor::zeros((2, 4), candle_core::DType::F32, &dev).unwrap();
        assert!(rope_cpu(&t, &cos, &cos, RopeStyle::Neox).is_err());
    }
}
