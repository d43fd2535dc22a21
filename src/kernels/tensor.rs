//! Candle integration of the kernels: [`forward`] runs a `QMatMul` through them when the weight
//! is a CPU `QTensor` of a supported type and the input is f32, reading the weight's raw GGUF
//! bytes in place (`QTensor::data` borrows the CPU storage; nothing is copied or dequantized),
//! and falls back to candle's own `forward` for every other device, type or dtype.
//! [`forward_many`] does the same for several weights over one input (q/k/v, gate/up), fusing
//! the weights of one type into one quantization and one pool job.

use std::borrow::Cow;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{CpuStorage, DType, Module, Storage, Tensor};

use super::matmul::{qmatmul_many, qtype_of, QWeight};

/// Run `f` on the f32 values of a CPU tensor in place (no copy when it is contiguous f32).
pub fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = if t.dtype() == DType::F32 { t.contiguous()? } else { t.to_dtype(DType::F32)?.contiguous()? };
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(f(&v[a..b])),
        _ => candle_core::bail!("with_cpu_f32: not a contiguous CPU f32 tensor"),
    }
}

/// `x · Wᵀ` for `x` of shape `[.., k]`: the kernels where they apply, candle otherwise.
pub fn forward(w: &QMatMul, x: &Tensor) -> candle_core::Result<Tensor> {
    if let QMatMul::QTensor(t) = w {
        if let Some(y) = try_kernels(t, x)? {
            return Ok(y);
        }
    }
    w.forward(x)
}

/// `Ok(None)` when the kernels do not apply to this weight/input.
pub fn try_kernels(t: &QTensor, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
    Ok(fused(&[t], &x.contiguous()?)?.and_then(|mut ys| ys.pop()))
}

/// The weights of one kernel type over contiguous `x` as one fused call; `Ok(None)` when the
/// kernels do not apply (another device, dtype or width).
fn fused(ts: &[&QTensor], x: &Tensor) -> candle_core::Result<Option<Vec<Tensor>>> {
    if ts.is_empty() || !x.device().is_cpu() || x.dtype() != DType::F32 || x.rank() < 1 {
        return Ok(None);
    }
    let Some(ty) = qtype_of(ts[0].dtype()) else { return Ok(None) };
    let k = x.dim(candle_core::D::Minus1)?;
    let mut shapes = Vec::with_capacity(ts.len());
    for t in ts {
        let (n, tk) = t.shape().dims2()?;
        if !t.device().is_cpu() || t.dtype() != ts[0].dtype() || tk != k || k % ty.block_elems() != 0 {
            return Ok(None);
        }
        shapes.push(n);
    }
    // Borrowed from each weight's CPU storage (no copy).
    let data: Vec<Cow<'_, [u8]>> = ts.iter().map(|t| t.data()).collect::<candle_core::Result<_>>()?;
    let qws: Vec<QWeight> = data
        .iter()
        .zip(&shapes)
        .map(|(d, &n)| QWeight::new(ty, n, k, d).map_err(candle_core::Error::Msg))
        .collect::<candle_core::Result<_>>()?;
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
pub fn forward_many(ws: &[&QMatMul], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
    let mut outs: Vec<Option<Tensor>> = vec![None; ws.len()];
    let x = x.contiguous()?;
    let mut done = vec![false; ws.len()];
    for i in 0..ws.len() {
        if done[i] {
            continue;
        }
        let QMatMul::QTensor(ti) = ws[i] else {
            outs[i] = Some(forward(ws[i], &x)?);
            continue;
        };
        let group: Vec<usize> = (i..ws.len())
            .filter(|&j| !done[j] && matches!(ws[j], QMatMul::QTensor(tj) if tj.dtype() == ti.dtype()))
            .collect();
        if group.len() < 2 || qtype_of(ti.dtype()).is_none() {
            outs[i] = Some(forward(ws[i], &x)?);
            done[i] = true;
            continue;
        }
        let ts: Vec<&QTensor> =
            group.iter().filter_map(|&j| if let QMatMul::QTensor(t) = ws[j] { Some(t.as_ref()) } else { None }).collect();
        match fused(&ts, &x)? {
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
