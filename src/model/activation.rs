//! The feed-forward activations on CPU, in one pass on the kernels' thread pool:
//!
//! - SwiGLU: `silu(gate) * up` with SiLU as `x / (1 + expf(-x))` (libm `expf`, ggml's scalar
//!   form). ggml's AVX2 loop uses its own `expf` approximation instead; tried here, it moved 2
//!   of the 9 greedy reference continuations off llama.cpp's path, the libm form keeps them.
//! - GELU (tanh form): the input rounded to f16 and looked up in a table of f16 results
//!   (`GGML_GELU_FP16`), saturating outside ±10.

use candle_core::{Tensor, D};
use half::f16;
use std::sync::OnceLock;

use crate::kernels::pool::{pool, SyncPtr};
use crate::kernels::with_cpu_f32;

fn swiglu_rows(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &x), &g) in out.iter_mut().zip(gate).zip(up) {
        *o = x / (1.0 + (-x).exp()) * g;
    }
}

/// Apply `f(input rows, output rows)` over `[rows, width]` data on the kernels' pool, in runs of
/// whole rows (ggml restarts its vector loop at each row).
fn par_rows(rows: usize, width: usize, out: &mut [f32], f: &(dyn Fn(std::ops::Range<usize>, &mut [f32]) + Sync)) {
    let per = if rows * width < 1 << 15 { rows } else { rows.div_ceil(pool().threads() * 2).max(1) };
    let o = SyncPtr::new(out.as_mut_ptr());
    let task = |t: usize| {
        let r = t * per..((t + 1) * per).min(rows);
        // SAFETY: each task owns rows `r` of `out`.
        let dst = unsafe { std::slice::from_raw_parts_mut(o.get().add(r.start * width), r.len() * width) };
        f(r.start * width..r.end * width, dst);
    };
    pool().run(rows.div_ceil(per), &task);
}

/// `silu(gate) * up` (same shapes, f32, CPU).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    let width = gate.dim(D::Minus1)?;
    if gate.shape() != up.shape() {
        candle_core::bail!("swiglu: gate {:?} and up {:?} differ", gate.shape(), up.shape());
    }
    let out = with_cpu_f32(gate, |g| {
        with_cpu_f32(up, |u| {
            let mut out = vec![0f32; g.len()];
            par_rows(g.len() / width.max(1), width, &mut out, &|r, dst| swiglu_rows(&g[r.clone()], &u[r], dst));
            out
        })
    })??;
    Tensor::from_vec(out, gate.shape(), gate.device())
}

/// GELU (tanh form) through ggml's f16 table (f32, CPU).
pub fn gelu_f16_table(x: &Tensor) -> candle_core::Result<Tensor> {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| {
                let v = f16::from_bits(bits).to_f32();
                let g = 0.5 * v * (1.0 + (0.797_884_6 * v * (1.0 + 0.044_715 * v * v)).tanh());
                f16::from_f32(g)
            })
            .collect()
    });
    let width = x.dim(D::Minus1)?;
    let out = with_cpu_f32(x, |v| gelu_rows(table, v, width))?;
    Tensor::from_vec(out, x.shape(), x.device())
}

fn gelu_rows(table: &[f16], v: &[f32], width: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    par_rows(v.len() / width.max(1), width, &mut out, &|r, dst| {
        for (o, &v) in dst.iter_mut().zip(&v[r]) {
            *o = if v <= -10.0 {
                0.0
            } else if v >= 10.0 {
                v
            } else {
                table[f16::from_f32(v).to_bits() as usize].to_f32()
            };
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn swiglu_matches_candle_silu_times_up_exactly() -> candle_core::Result<()> {
        let (rows, width) = (37, 1000);
        let gate: Vec<f32> = (0..rows * width).map(|i| ((i * 7919) % 4001) as f32 / 40.0 - 50.0).collect();
        let up: Vec<f32> = (0..rows * width).map(|i| ((i * 104729) % 1999) as f32 / 500.0 - 2.0).collect();
        let g = Tensor::from_vec(gate, (1, rows, width), &Device::Cpu)?;
        let u = Tensor::from_vec(up, (1, rows, width), &Device::Cpu)?;
        let ours = swiglu(&g, &u)?.flatten_all()?.to_vec1::<f32>()?;
        let candle = (candle_nn::ops::silu(&g)? * &u)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(ours, candle);
        Ok(())
    }
}
