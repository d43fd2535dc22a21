//! The feed-forward activations on CPU, in one pass on the kernels' thread pool:
//!
//! - SwiGLU: `silu(gate) * up` with SiLU as `x / (1 + expf(-x))` (libm `expf`, ggml's scalar
//!   form). ggml's AVX2 loop uses its own `expf` approximation instead; tried here, it moved 2
//!   of the 9 greedy reference continuations off llama.cpp's path, the libm form keeps them.
//! - GELU (tanh form): the input rounded to f16 and looked up in a table of f16 results
//!   (`GGML_GELU_FP16`), saturating outside ±10.

use candle_core::{CpuStorage, Layout, Tensor, D};
use half::f16;
use std::sync::OnceLock;

use crate::kernels::pool::{pool, SyncPtr};

fn swiglu_rows(gate: &mut [f32], up: &[f32]) {
    for (o, &g) in gate.iter_mut().zip(up) {
        let x = *o;
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

/// The gating function of a feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// `silu(gate) * up`.
    Silu,
    /// `gelu_tanh(gate) * up`, GELU through ggml's f16 table.
    GeluTable,
}

/// `gate <- act(gate) * up` in place (same shapes, contiguous f32 on the CPU): the product takes
/// the gate's buffer instead of a third one of the same size.
pub fn gated_in_place(gate: &Tensor, up: &Tensor, kind: Gate) -> candle_core::Result<()> {
    if gate.shape() != up.shape() {
        candle_core::bail!("gated activation: gate {:?} and up {:?} differ", gate.shape(), up.shape());
    }
    let up = up.contiguous()?;
    gate.inplace_op2(&up, &GatedOp { kind, width: gate.dim(D::Minus1)? })
}

struct GatedOp {
    kind: Gate,
    width: usize,
}

impl candle_core::InplaceOp2 for GatedOp {
    fn name(&self) -> &'static str {
        "gated-activation"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (s1, s2) else {
            candle_core::bail!("gated activation: f32 tensors only");
        };
        let (Some((ga, gb)), Some((ua, ub))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("gated activation: contiguous tensors only");
        };
        let (g, u) = (&mut g[ga..gb], &u[ua..ub]);
        let table = match self.kind {
            Gate::Silu => None,
            Gate::GeluTable => Some(gelu_table()),
        };
        par_rows(g.len() / self.width.max(1), self.width, g, &|r, dst| match table {
            None => swiglu_rows(dst, &u[r]),
            Some(t) => gelu_rows(t, dst, &u[r]),
        });
        Ok(())
    }
}

fn gelu_table() -> &'static [f16] {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| {
                let v = f16::from_bits(bits).to_f32();
                let g = 0.5 * v * (1.0 + (0.797_884_6 * v * (1.0 + 0.044_715 * v * v)).tanh());
                f16::from_f32(g)
            })
            .collect()
    })
}

/// GELU of the f16-rounded input from the table, saturating outside ±10, times `up`.
fn gelu_rows(table: &[f16], gate: &mut [f32], up: &[f32]) {
    for (o, &g) in gate.iter_mut().zip(up) {
        let v = *o;
        let a = if v <= -10.0 {
            0.0
        } else if v >= 10.0 {
            v
        } else {
            table[f16::from_f32(v).to_bits() as usize].to_f32()
        };
        *o = a * g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn inputs(rows: usize, width: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let gate: Vec<f32> = (0..rows * width).map(|i| ((i * 7919) % 4001) as f32 / 40.0 - 50.0).collect();
        let up: Vec<f32> = (0..rows * width).map(|i| ((i * 104729) % 1999) as f32 / 500.0 - 2.0).collect();
        Ok((Tensor::from_vec(gate, (1, rows, width), &Device::Cpu)?, Tensor::from_vec(up, (1, rows, width), &Device::Cpu)?))
    }

    #[test]
    fn swiglu_in_place_matches_candle_silu_times_up_exactly() -> candle_core::Result<()> {
        let (g, u) = inputs(37, 1000)?;
        let candle = (candle_nn::ops::silu(&g)? * &u)?.flatten_all()?.to_vec1::<f32>()?;
        gated_in_place(&g, &u, Gate::Silu)?;
        assert_eq!(g.flatten_all()?.to_vec1::<f32>()?, candle);
        Ok(())
    }

    #[test]
    fn gelu_in_place_is_the_f16_rounded_gelu_times_up() -> candle_core::Result<()> {
        let (g, u) = inputs(5, 999)?;
        let (gv, uv) = (g.flatten_all()?.to_vec1::<f32>()?, u.flatten_all()?.to_vec1::<f32>()?);
        gated_in_place(&g, &u, Gate::GeluTable)?;
        let got = g.flatten_all()?.to_vec1::<f32>()?;
        let gelu = |v: f32| 0.5 * v * (1.0 + (0.797_884_6 * v * (1.0 + 0.044_715 * v * v)).tanh());
        for ((&x, &up), &y) in gv.iter().zip(&uv).zip(&got) {
            let a = if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                x
            } else {
                f16::from_f32(gelu(f16::from_f32(x).to_f32())).to_f32()
            };
            assert_eq!(y, a * up, "x={x}");
        }
        assert_ne!(got, gv, "the gate was overwritten");
        Ok(())
    }
}
