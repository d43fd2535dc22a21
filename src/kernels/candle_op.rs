//! Integration with candle: [`forward`] runs a `QMatMul` through the kernels when the weight is
//! a CPU `QTensor` of a supported type and the input is f32, reading the weight's raw GGUF
//! bytes in place (`QTensor::data` borrows the CPU storage; nothing is copied or dequantized),
//! and falls back to candle's own `forward` for every other device, type or dtype.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, DType, Module, Storage, Tensor};

use super::blocks::QType;
use super::matmul::{qmatmul, QWeight};

/// The kernel type of a ggml dtype, if the kernels implement it.
pub fn qtype_of(d: GgmlDType) -> Option<QType> {
    Some(match d {
        GgmlDType::Q4_0 => QType::Q4_0,
        GgmlDType::Q4_1 => QType::Q4_1,
        GgmlDType::Q5_0 => QType::Q5_0,
        GgmlDType::Q5_1 => QType::Q5_1,
        GgmlDType::Q8_0 => QType::Q8_0,
        GgmlDType::Q4K => QType::Q4K,
        GgmlDType::Q5K => QType::Q5K,
        GgmlDType::Q6K => QType::Q6K,
        _ => return None,
    })
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
    let Some(ty) = qtype_of(t.dtype()) else { return Ok(None) };
    if !t.device().is_cpu() || !x.device().is_cpu() || x.dtype() != DType::F32 || x.rank() < 1 {
        return Ok(None);
    }
    let (n, k) = t.shape().dims2()?;
    if x.dim(candle_core::D::Minus1)? != k || k % ty.block_elems() != 0 {
        return Ok(None);
    }
    let data = t.data()?;
    let qw = QWeight::new(ty, n, k, &data).map_err(candle_core::Error::Msg)?;
    let x = x.contiguous()?;
    let m = x.elem_count() / k;
    let mut out = vec![0f32; m * n];
    {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(v)) = &*storage else { return Ok(None) };
        let start = layout.start_offset();
        qmatmul(&qw, &v[start..start + m * k], &mut out);
    }
    let mut dims = x.dims().to_vec();
    *dims.last_mut().unwrap() = n;
    Tensor::from_vec(out, dims, x.device()).map(Some)
}
