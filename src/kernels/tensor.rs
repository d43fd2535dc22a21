//! Candle integration of the kernels: [`forward`] runs a `QMatMul` through them when the weight
//! is a CPU `QTensor` of a supported type and the input is f32, reading the weight's raw GGUF
//! bytes in place (`QTensor::data` borrows the CPU storage; nothing is copied or dequantized),
//! and falls back to candle's own `forward` for every other device, type or dtype.
//! [`forward_many`] does the same for several weights over one input (q/k/v, gate/up), fusing
//! the weights of one type into one quantization and one pool job. [`Weight`] is what the model
//! holds: a candle `QMatMul`, or a Q4_K / Q6_K weight repacked at load for AVX-512 (`packed`).

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{CpuStorage, DType, Module, Storage, Tensor};

use super::blocks::QType;
use super::matmul::{qmatmul_many, qtype_of, Isa, QWeight};
use super::packed::{self, Packed};

/// Run `f` on the f32 values of a CPU tensor in place (no copy when it is contiguous f32).
pub fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = if t.dtype() == DType::F32 { t.contiguous()? } else { t.to_dtype(DType::F32)?.contiguous()? };
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(f(&v[a..b])),
        _ => candle_core::bail!("with_cpu_f32: not a contiguous CPU f32 tensor"),
    }
}

/// A matmul weight as the model holds it: candle's `QMatMul` (any device or type), or, on a CPU
/// with AVX-512 VNNI, a Q4_K or Q6_K weight repacked for the kernels ([`Packed`]: the same
/// bytes moved, the candle tensor dropped).
pub enum Weight {
    Candle(QMatMul),
    Packed(Packed),
}

impl Weight {
    /// `t` as a weight, repacked when `pack` is asked and the kernels have a packed path for it
    /// here (a 2-D Q4_K or Q6_K CPU tensor, AVX-512 VNNI the best kernels, `MOA_PACK` not `0`,
    /// or `MOA_PACK=q4k` for Q4_K only).
    pub fn new(t: QTensor, pack: bool) -> candle_core::Result<Self> {
        let ty = qtype_of(t.dtype()).filter(|&q| packs(q));
        if let (Some(ty), true, true, 2) = (ty, pack, t.device().is_cpu(), t.rank()) {
            let (n, k) = t.shape().dims2()?;
            let p = Packed::new(ty, &t.data()?, n, k).map_err(candle_core::Error::Msg)?;
            return Ok(Weight::Packed(p));
        }
        Ok(Weight::Candle(QMatMul::from_qtensor(t)?))
    }

    /// A weight shared with another use (the output tied to the embedding): never repacked.
    pub fn from_arc(t: Arc<QTensor>) -> candle_core::Result<Self> {
        Ok(Weight::Candle(QMatMul::from_arc(t)?))
    }

    /// `x · Wᵀ` by candle's ops for a candle weight (the device path), the kernels for a packed one.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Weight::Candle(w) => w.forward(x),
            Weight::Packed(_) => forward(self, x),
        }
    }

    pub fn is_packed(&self) -> bool {
        matches!(self, Weight::Packed(_))
    }
}

impl From<QMatMul> for Weight {
    fn from(w: QMatMul) -> Self {
        Weight::Candle(w)
    }
}

/// Whether weights of `t` are repacked on this machine.
fn packs(t: QType) -> bool {
    let env = std::env::var("MOA_PACK").unwrap_or_default();
    packed::packs(t) && Isa::best() == Isa::Avx512Vnni && env != "0" && (env != "q4k" || t == QType::Q4K)
}

/// `x · Wᵀ` for `x` of shape `[.., k]`: the kernels where they apply, candle otherwise.
pub fn forward(w: &Weight, x: &Tensor) -> candle_core::Result<Tensor> {
    if let Some(mut ys) = fused(&[w], &x.contiguous()?)? {
        return Ok(ys.pop().expect("one output"));
    }
    match w {
        Weight::Candle(w) => w.forward(x),
        Weight::Packed(_) => candle_core::bail!("a packed weight needs a contiguous CPU f32 input"),
    }
}

/// `Ok(None)` when the kernels do not apply to this weight/input.
pub fn try_kernels(w: &Weight, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
    Ok(fused(&[w], &x.contiguous()?)?.and_then(|mut ys| ys.pop()))
}

/// The kernel type of a weight on the CPU, if the kernels implement it.
fn kernel_type(w: &Weight) -> Option<QType> {
    match w {
        Weight::Candle(QMatMul::QTensor(t)) if t.device().is_cpu() => qtype_of(t.dtype()),
        Weight::Candle(_) => None,
        Weight::Packed(p) => Some(p.ty),
    }
}

/// The weights of one kernel type over contiguous `x` as one fused call; `Ok(None)` when the
/// kernels do not apply (another device, dtype or width).
fn fused(ws: &[&Weight], x: &Tensor) -> candle_core::Result<Option<Vec<Tensor>>> {
    if ws.is_empty() || !x.device().is_cpu() || x.dtype() != DType::F32 || x.rank() < 1 {
        return Ok(None);
    }
    let Some(ty) = kernel_type(ws[0]) else { return Ok(None) };
    let k = x.dim(candle_core::D::Minus1)?;
    // Borrowed from each weight's CPU storage (no copy).
    let mut data: Vec<Option<Cow<'_, [u8]>>> = Vec::with_capacity(ws.len());
    for w in ws {
        if kernel_type(w) != Some(ty) || k % ty.block_elems() != 0 {
            return Ok(None);
        }
        data.push(match w {
            Weight::Candle(QMatMul::QTensor(t)) => {
                if t.shape().dims2()?.1 != k {
                    return Ok(None);
                }
                Some(t.data()?)
            }
            Weight::Packed(p) if p.k == k => None,
            _ => return Ok(None),
        });
    }
    let qws: Vec<QWeight> = ws
        .iter()
        .zip(&data)
        .map(|(w, d)| match (w, d) {
            (Weight::Packed(p), _) => Ok(QWeight::packed(p)),
            (Weight::Candle(QMatMul::QTensor(t)), Some(d)) => QWeight::new(ty, t.shape().dims()[0], k, d).map_err(candle_core::Error::Msg),
            _ => unreachable!("every weight's data was taken above"),
        })
        .collect::<candle_core::Result<_>>()?;
    let shapes: Vec<usize> = qws.iter().map(|q| q.n).collect();
    let m = x.elem_count() / k;
    let mut bufs: Vec<Vec<f32>> = shapes.iter().map(|&n| vec![0f32; m * n]).collect();
    {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(v)) = &*storage else { return Ok(None) };
        let start = layout.start_offset();
        let mut outs: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        qmatmul_many(&qws, &v[start..start + m * k], &mut outs);
    }
    let mut ys = Vec::with_capacity(bufs.len());
    for (b, &n) in bufs.into_iter().zip(&shapes) {
        let mut dims = x.dims().to_vec();
        *dims.last_mut().unwrap() = n;
        ys.push(Tensor::from_vec(b, dims, x.device())?);
    }
    Ok(Some(ys))
}

/// `x · Wᵢᵀ` for every weight: weights of one kernel type are fused (one quantization of `x`,
/// one pool job); the others go through [`forward`] one by one. Outputs in the order given.
pub fn forward_many(ws: &[&Weight], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
    let mut outs: Vec<Option<Tensor>> = vec![None; ws.len()];
    let x = x.contiguous()?;
    let mut done = vec![false; ws.len()];
    for i in 0..ws.len() {
        if done[i] {
            continue;
        }
        let Some(ty) = kernel_type(ws[i]) else {
            outs[i] = Some(forward(ws[i], &x)?);
            done[i] = true;
            continue;
        };
        let group: Vec<usize> = (i..ws.len()).filter(|&j| !done[j] && kernel_type(ws[j]) == Some(ty)).collect();
        let ys = if group.len() < 2 { None } else { fused(&group.iter().map(|&j| ws[j]).collect::<Vec<_>>(), &x)? };
        match ys {
            Some(ys) => {
                for (&j, y) in group.iter().zip(ys) {
                    outs[j] = Some(y);
                    done[j] = true;
                }
            }
            None => {
                outs[i] = Some(forward(ws[i], &x)?);
                done[i] = true;
            }
        }
    }
    Ok(outs.into_iter().map(|o| o.expect("every weight computed")).collect())
}
