//! The feed-forward of a layer: a gated MLP, or a mixture of experts (Mixtral, Qwen2-MoE,
//! Qwen3-MoE; see [`MoeConfig`]). Experts are separate `[rows, cols]` weights read from the
//! file's 3-D tensors, so a token's step runs only the experts its router picks, and a pass with
//! many rows (a prefill) groups its rows by expert: each picked expert's weights are read once,
//! over all the rows that picked it (what llama.cpp's `mul_mat_id` does).
//!
//! Routing follows llama.cpp's `build_moe_ffn`: softmax over the router logits, the `n_used`
//! largest probabilities (ties to the lower expert index), renormalized to sum to 1 where the
//! architecture does (the sum clamped below at 2⁻¹⁴, as there), times the weight scale.

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use super::stacked::Stacked;
use super::Transformer;
use crate::error::{Error, Result};
use crate::kernels::Weight;
use crate::model::arch::MoeConfig;
use crate::model::gguf::GgufFile;

/// A gated MLP: `down(act(gate · x) ⊙ (up · x))`.
pub(super) struct Mlp {
    pub gate_up: Stacked,
    pub down: Weight,
}

/// An MLP of separate matrices (experts: the decode step fuses the picked ones' calls itself).
fn parts(gate: QTensor, up: QTensor, down: QTensor, pack: bool) -> Result<Mlp> {
    let device = gate.device();
    Ok(Mlp { gate_up: Stacked::new(vec![gate, up], None, false, pack, &device)?, down: mm(down, pack)? })
}

pub(super) struct Moe {
    cfg: MoeConfig,
    router: Weight,
    experts: Vec<Mlp>,
    /// Qwen2-MoE's shared expert and its per-token gate vector (`[n_embd]`).
    shared: Option<(Mlp, Tensor)>,
}

pub(super) enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

fn mm(t: QTensor, pack: bool) -> Result<Weight> {
    Weight::new(t, pack).map_err(Error::candle("preparing a weight"))
}

impl Moe {
    /// Layer `p`'s (`blk.N`) router, experts and shared expert.
    /// `pack`: Q4_K experts repacked for the CPU kernels ([`Weight::new`]).
    pub(super) fn load<R: std::io::Read + std::io::Seek>(g: &GgufFile, r: &mut R, p: &str, cfg: &MoeConfig, device: &Device, pack: bool) -> Result<Self> {
        let router = mm(g.tensor(r, &format!("{p}.ffn_gate_inp.weight"), device)?, pack)?;
        let mut split = |kind: &str| g.tensor_experts(r, &format!("{p}.{kind}.weight"), device);
        let (gates, ups, downs) = (split("ffn_gate_exps")?, split("ffn_up_exps")?, split("ffn_down_exps")?);
        let experts = gates
            .into_iter()
            .zip(ups)
            .zip(downs)
            .map(|((gate, up), down)| parts(gate, up, down, pack))
            .collect::<Result<Vec<_>>>()?;
        let shared = match cfg.n_ff_shared {
            None => None,
            Some(_) => {
                let mut q = |kind: &str| g.tensor(r, &format!("{p}.{kind}.weight"), device);
                let mlp = parts(q("ffn_gate_shexp")?, q("ffn_up_shexp")?, q("ffn_down_shexp")?, pack)?;
                let gate = q("ffn_gate_inp_shexp")?.dequantize(device).map_err(Error::candle("dequantizing the shared expert's gate"))?;
                Some((mlp, gate))
            }
        };
        Ok(Self { cfg: cfg.clone(), router, experts, shared })
    }
}

/// Each row's picked experts and their weights, from the router's logits (`[rows, n_expert]`).
pub fn route(logits: &[Vec<f32>], cfg: &MoeConfig) -> Vec<Vec<(usize, f32)>> {
    logits
        .iter()
        .map(|l| {
            let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = l.iter().map(|&x| (x - max).exp()).collect();
            let sum: f64 = e.iter().map(|&x| x as f64).sum();
            let probs: Vec<f32> = e.iter().map(|&x| (x as f64 / sum) as f32).collect();
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let mut picked: Vec<(usize, f32)> = order[..cfg.n_used].iter().map(|&i| (i, probs[i])).collect();
            if cfg.norm_weights {
                let s = picked.iter().map(|p| p.1).sum::<f32>().max(6.103_515_6e-5);
                picked.iter_mut().for_each(|p| p.1 /= s);
            }
            if cfg.weights_scale != 1.0 {
                picked.iter_mut().for_each(|p| p.1 *= cfg.weights_scale);
            }
            picked
        })
        .collect()
}

impl Transformer {
    pub(super) fn ffn(&self, f: &Ffn, x: &Tensor) -> candle_core::Result<Tensor> {
        match f {
            Ffn::Dense(m) => self.mlp(m, x),
            Ffn::Moe(m) => self.moe(m, x),
        }
    }

    /// `x`: `[1, rows, n_embd]`.
    fn moe(&self, m: &Moe, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        let rows = x.dim(1)?;
        let logits = self.mm(&m.router, &x)?.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let picks = route(&logits, &m.cfg);
        let mut out = if rows == 1 {
            self.moe_one_row(m, &x, &picks[0])?
        } else {
            // Rows grouped by expert: one pass over each picked expert's weights.
            let mut groups: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); m.experts.len()];
            for (row, p) in picks.iter().enumerate() {
                for &(e, w) in p {
                    groups[e].0.push(row as u32);
                    groups[e].1.push(w);
                }
            }
            let mut out = x.zeros_like()?;
            for (e, (idx, w)) in groups.iter().enumerate().filter(|(_, g)| !g.0.is_empty()) {
                let n = idx.len();
                let idx = Tensor::from_vec(idx.clone(), n, x.device())?;
                let xs = x.index_select(&idx, 1)?;
                let y = self.mlp(&m.experts[e], &xs)?;
                let w = Tensor::from_vec(w.clone(), (1, n, 1), x.device())?.to_dtype(y.dtype())?;
                out = out.index_add(&idx, &y.broadcast_mul(&w)?, 1)?;
            }
            out
        };
        if let Some((mlp, gate)) = &m.shared {
            let y = self.mlp(mlp, &x)?;
            let g = x.broadcast_matmul(&gate.to_dtype(x.dtype())?.unsqueeze(1)?)?; // [1, rows, 1]
            out = (out + y.broadcast_mul(&candle_nn::ops::sigmoid(&g)?)?)?;
        }
        Ok(out)
    }

    /// A decode step: the picked experts' gate and up projections share one input, so they run
    /// as one fused call; the down projections follow one by one.
    fn moe_one_row(&self, m: &Moe, x: &Tensor, picks: &[(usize, f32)]) -> candle_core::Result<Tensor> {
        let ws: Vec<&Weight> = picks
            .iter()
            .flat_map(|&(e, _)| m.experts[e].gate_up.parts().expect("experts keep separate matrices"))
            .collect();
        let gu = self.mm_many(&ws, x)?;
        let mut out: Option<Tensor> = None;
        for (pair, &(e, w)) in gu.chunks_exact(2).zip(picks) {
            let h = self.gated(pair[0].clone(), pair[1].clone())?;
            let y = (self.mm(&m.experts[e].down, &h)? * w as f64)?;
            out = Some(match out {
                None => y,
                Some(o) => (o + y)?,
            });
        }
        Ok(out.expect("at least one expert per token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n_used: usize, norm: bool, scale: f32) -> MoeConfig {
        MoeConfig { n_expert: 4, n_used, n_ff_exp: 8, n_ff_shared: None, norm_weights: norm, weights_scale: scale }
    }

    #[test]
    fn routing_picks_the_largest_probabilities_and_renormalizes() {
        let logits = vec![vec![0.0, 2.0, 1.0, 2.0]];
        let e: Vec<f64> = logits[0].iter().map(|&x: &f32| (x as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        // Ties go to the lower index; without normalization the weights are the softmax's.
        let p = route(&logits, &cfg(2, false, 1.0));
        assert_eq!(p[0].iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!((p[0][0].1 as f64 - e[1] / z).abs() < 1e-6);
        let p = route(&logits, &cfg(3, true, 1.0));
        assert_eq!(p[0].iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        let sum: f32 = p[0].iter().map(|x| x.1).sum();
        assert!((sum - 1.0).abs() < 1e-6, "{sum}");
        assert!((p[0][2].1 as f64 - e[2] / (e[1] + e[2] + e[3])).abs() < 1e-6);
        let p = route(&logits, &cfg(1, true, 2.5));
        assert_eq!(p[0], vec![(1, 2.5)]);
    }
}
