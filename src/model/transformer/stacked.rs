//! Projections that read one input (q|k|v, gate|up). The CPU fast path keeps them as separate
//! matrices, read by one fused kernel call. The device path (candle's ops, the code a GPU runs)
//! stacks their rows into one matrix at load when their quantized types and widths agree, so one
//! quantize + matmul (and one bias add) replaces two or three; the output is split by views.
//! Every output element is the same dot product as before: stacking changes no result.

use candle_core::quantized::{ggml_file::qtensor_from_ggml, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::kernels::Weight;

pub(super) struct Stacked {
    groups: Vec<Group>,
}

/// Consecutive parts in one matrix: their rows stacked, their biases in one vector.
struct Group {
    w: Weight,
    rows: Vec<usize>,
    bias: Option<Tensor>,
}

/// `t` as a tensor on `device`.
fn upload(t: QTensor, device: &Device) -> Result<QTensor> {
    if t.device().same_device(device) {
        return Ok(t);
    }
    let data = t.data().map_err(Error::candle("reading a weight's blocks"))?;
    qtensor_from_ggml(t.dtype(), &data, t.shape().dims().to_vec(), device).map_err(Error::candle("uploading a weight"))
}

impl Stacked {
    /// `parts` (read into CPU memory) on `device`. When `stack` is asked, each run of
    /// consecutive parts of the same type and width becomes one matrix (Q4_K_M files give
    /// `attn_v` Q6_K in half the layers: then q|k are stacked and v stays apart); otherwise
    /// every part stays separate. `bias`: one vector per part.
    pub(super) fn new(parts: Vec<QTensor>, bias: Option<Vec<Tensor>>, stack: bool, pack: bool, device: &Device) -> Result<Self> {
        let key = |p: &QTensor| (p.dtype(), p.shape().dims().get(1).copied());
        let mut runs: Vec<Vec<(QTensor, Option<Tensor>)>> = Vec::new();
        let mut bias = bias.map(|b| b.into_iter());
        for p in parts {
            let b = bias.as_mut().and_then(|b| b.next());
            match runs.last_mut() {
                Some(run) if stack && p.rank() == 2 && key(&run[0].0) == key(&p) => run.push((p, b)),
                _ => runs.push(vec![(p, b)]),
            }
        }
        let groups = runs.into_iter().map(|run| Group::new(run, pack, device)).collect::<Result<_>>()?;
        Ok(Self { groups })
    }

    /// The separate matrices, or None when some are stacked.
    pub(super) fn parts(&self) -> Option<Vec<&Weight>> {
        self.groups.iter().map(|g| (g.rows.len() == 1).then_some(&g.w)).collect()
    }
}

impl Group {
    fn new(run: Vec<(QTensor, Option<Tensor>)>, pack: bool, device: &Device) -> Result<Self> {
        let rows: Vec<usize> = run.iter().map(|(p, _)| p.shape().dims()[0]).collect();
        let biases: Option<Vec<Tensor>> = run.iter().map(|(_, b)| b.clone()).collect();
        let bias = match biases {
            Some(mut b) if b.len() == 1 => b.pop(),
            Some(b) => Some(Tensor::cat(&b, 0).map_err(Error::candle("stacking biases"))?),
            None => None,
        };
        let t = if run.len() == 1 {
            upload(run.into_iter().next().expect("one part").0, device)?
        } else {
            let (dtype, cols) = (run[0].0.dtype(), run[0].0.shape().dims()[1]);
            let mut data = Vec::new();
            for (p, _) in &run {
                data.extend_from_slice(&p.data().map_err(Error::candle("reading a weight's blocks"))?);
            }
            qtensor_from_ggml(dtype, &data, vec![rows.iter().sum(), cols], device).map_err(Error::candle("stacking weights"))?
        };
        Ok(Self { w: Weight::new(t, pack).map_err(Error::candle("preparing a weight"))?, rows, bias })
    }
}

impl super::Transformer {
    /// The projections of `x` (`[1, rows, n_embd]`), biases added: one output per group, with
    /// the rows of each of its parts (views of it give the parts, see [`Transformer::project_parts`]).
    pub(super) fn project<'a>(&self, s: &'a Stacked, x: &Tensor) -> candle_core::Result<Vec<(Tensor, &'a [usize])>> {
        let ws: Vec<&Weight> = s.groups.iter().map(|g| &g.w).collect();
        let outs = self.mm_many(&ws, x)?;
        outs.into_iter()
            .zip(&s.groups)
            .map(|(y, g)| {
                let y = match &g.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                };
                Ok((y, g.rows.as_slice()))
            })
            .collect()
    }

    /// The projections of `x` as separate tensors (views of a group's output where stacked).
    pub(super) fn project_parts(&self, s: &Stacked, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut parts = Vec::new();
        for (y, rows) in self.project(s, x)? {
            parts.extend(split(&y, y.rank() - 1, rows, 1)?);
        }
        Ok(parts)
    }
}

/// `y` as one view per part along `dim`, part `i` being `rows[i] / unit` wide there (a
/// group's output split by the parts' rows, or its heads split with `unit` the head size).
pub(super) fn split(y: &Tensor, dim: usize, rows: &[usize], unit: usize) -> candle_core::Result<Vec<Tensor>> {
    if rows.len() == 1 {
        return Ok(vec![y.clone()]);
    }
    let mut off = 0;
    rows.iter()
        .map(|&r| {
            off += r / unit;
            y.narrow(dim, off - r / unit, r / unit)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;
    use candle_core::Module;

    use super::*;

    fn weight(rows: usize, seed: u64, dtype: GgmlDType) -> QTensor {
        let t = Tensor::rand(-1f32, 1f32, (rows, 256), &Device::Cpu).unwrap();
        let t = (t * (1.0 + seed as f64 / 10.0)).unwrap();
        QTensor::quantize(&t, dtype).unwrap()
    }

    #[test]
    fn stacking_matches_the_separate_matmuls_exactly_and_only_for_equal_types() {
        let parts = || vec![weight(64, 1, GgmlDType::Q4K), weight(32, 2, GgmlDType::Q4K), weight(32, 3, GgmlDType::Q4K)];
        let copy = |ps: &[QTensor]| -> Vec<QTensor> {
            ps.iter().map(|p| qtensor_from_ggml(p.dtype(), &p.data().unwrap(), p.shape().dims().to_vec(), &Device::Cpu).unwrap()).collect()
        };
        let ws = parts();
        let bias: Vec<Tensor> = [64, 32, 32].iter().map(|&n| Tensor::rand(-1f32, 1f32, n, &Device::Cpu).unwrap()).collect();
        let fused = Stacked::new(copy(&ws), Some(bias.clone()), true, false, &Device::Cpu).unwrap();
        assert_eq!(fused.groups.len(), 1);
        assert_eq!(fused.groups[0].rows, [64, 32, 32]);
        let x = Tensor::rand(-1f32, 1f32, (1, 5, 256), &Device::Cpu).unwrap();
        // What the device path runs (`Transformer::project` off the CPU fast path) on one side,
        // candle's matmuls of the separate matrices plus their biases on the other: same bits.
        let g = &fused.groups[0];
        let got = split(&g.w.forward(&x).unwrap().broadcast_add(g.bias.as_ref().unwrap()).unwrap(), 2, &g.rows, 1).unwrap();
        for ((w, b), g) in ws.into_iter().zip(&bias).zip(&got) {
            let want = candle_core::quantized::QMatMul::from_qtensor(w).unwrap().forward(&x).unwrap().broadcast_add(b).unwrap();
            assert_eq!(want.flatten_all().unwrap().to_vec1::<f32>().unwrap(), g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        // A part of another type stays apart (the run before it is still stacked); stacking not
        // asked for: separate matrices.
        let mut mixed = parts();
        mixed[2] = weight(32, 3, GgmlDType::Q6K);
        let s = Stacked::new(mixed, None, true, false, &Device::Cpu).unwrap();
        assert_eq!(s.groups.iter().map(|g| g.rows.clone()).collect::<Vec<_>>(), [vec![64, 32], vec![32]]);
        assert!(s.parts().is_none());
        assert_eq!(Stacked::new(parts(), None, false, false, &Device::Cpu).unwrap().parts().map(|p| p.len()), Some(3));
    }
}
