//! Reading one GGUF tensor into CPU memory with a single copy: the file's bytes go straight into
//! the block vector the `QTensor` keeps. candle's own reader first reads them into a byte buffer
//! and then copies that into the blocks, so every tensor is briefly resident twice; for the
//! largest one (Qwen-0.5B's 151936 × 896 embedding, 112 MiB) that put the load's peak 130 MiB
//! above the loaded model.

use std::io::Read;
use std::mem::size_of;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, GgmlType,
};
use candle_core::quantized::{GgmlDType, QStorage, QTensor, QuantizedType};
use candle_core::Shape;
use half::{bf16, f16};

/// Read `shape`'s elements of `dtype` from `r` (positioned at the tensor's first byte).
/// `Err` names what went wrong; the caller adds the file and tensor.
pub fn read(r: &mut impl Read, dtype: GgmlDType, shape: Shape) -> Result<QTensor, String> {
    let elems = shape.elem_count();
    if !elems.is_multiple_of(dtype.block_size()) {
        return Err(format!("{elems} elements are not a whole number of {dtype:?} blocks of {}", dtype.block_size()));
    }
    let blocks = elems / dtype.block_size();
    let storage = match dtype {
        GgmlDType::F32 => blocks_of::<f32>(r, blocks, dtype)?,
        GgmlDType::F16 => blocks_of::<f16>(r, blocks, dtype)?,
        GgmlDType::BF16 => blocks_of::<bf16>(r, blocks, dtype)?,
        GgmlDType::Q4_0 => blocks_of::<BlockQ4_0>(r, blocks, dtype)?,
        GgmlDType::Q4_1 => blocks_of::<BlockQ4_1>(r, blocks, dtype)?,
        GgmlDType::Q5_0 => blocks_of::<BlockQ5_0>(r, blocks, dtype)?,
        GgmlDType::Q5_1 => blocks_of::<BlockQ5_1>(r, blocks, dtype)?,
        GgmlDType::Q8_0 => blocks_of::<BlockQ8_0>(r, blocks, dtype)?,
        GgmlDType::Q2K => blocks_of::<BlockQ2K>(r, blocks, dtype)?,
        GgmlDType::Q3K => blocks_of::<BlockQ3K>(r, blocks, dtype)?,
        GgmlDType::Q4K => blocks_of::<BlockQ4K>(r, blocks, dtype)?,
        GgmlDType::Q5K => blocks_of::<BlockQ5K>(r, blocks, dtype)?,
        GgmlDType::Q6K => blocks_of::<BlockQ6K>(r, blocks, dtype)?,
        other => return Err(format!("weight type {other:?} is not supported")),
    };
    QTensor::new(QStorage::Cpu(storage), shape).map_err(|e| crate::error::candle_message(&e))
}

/// `n` blocks of `T` read from `r` into the vector that will hold them.
fn blocks_of<T: GgmlType + 'static>(r: &mut impl Read, n: usize, dtype: GgmlDType) -> Result<Box<dyn QuantizedType>, String> {
    // The byte view below relies on `T` being exactly the file's block: GGML's block layouts are
    // `repr(C)` structs of integers and f16/f32 without padding, and this check catches a
    // candle version whose layout differs.
    if size_of::<T>() != dtype.type_size() {
        return Err(format!("{dtype:?} block is {} bytes in candle but {} in GGUF", size_of::<T>(), dtype.type_size()));
    }
    let mut v = zeroed_vec::<T>(n)?;
    let bytes = n * size_of::<T>();
    // SAFETY: `v` holds `n` initialized values of `T`, `bytes` long; `T` has no padding (checked
    // above) and only integer and float fields, so any bytes written form valid values.
    let view = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), bytes) };
    r.read_exact(view).map_err(|e| format!("reading {bytes} bytes: {e}"))?;
    Ok(Box::new(v))
}

/// `n` all-zero `T`s from the allocator's zeroed memory (`calloc`: fresh pages of a large block
/// are zero already), so the file's bytes are the first to be written to them; `vec![T::zeros();
/// n]` would write every byte once more before the read. Every GGML block type is valid as all
/// zero bytes (that is what `GgmlType::zeros` is).
fn zeroed_vec<T: GgmlType>(n: usize) -> Result<Vec<T>, String> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| format!("{n} blocks overflow the address space"))?;
    // SAFETY: `layout` has a non-zero size (n > 0 and the block types are not zero-sized).
    let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if p.is_null() {
        return Err(format!("out of memory allocating {} bytes", layout.size()));
    }
    // SAFETY: allocated by the global allocator with `T`'s array layout for exactly `n`
    // elements, which are initialized (all-zero bytes are a valid `T`).
    Ok(unsafe { Vec::from_raw_parts(p, n, n) })
}
