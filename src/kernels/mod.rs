//! The project's own quantized matmul kernels for CPU: GGUF block formats, activation
//! quantization with llama.cpp's rounding, SIMD dot products chosen at run time (AVX2+FMA, or a
//! portable scalar fallback), a tiled multi-threaded `qmatmul`, and the glue that routes candle
//! `QMatMul`s on the CPU through them.
//!
//! Module map: `blocks` (layouts, decode, portable scalar dots), `quantize` (activations),
//! `avx2` (32-element types + tile driver), `avx2_k` (K-quants), `avx2_prefill` (Q4_0/Q5_0 over
//! many rows), `avx512_cols` (K-quant prefill, 16 weight rows per 512-bit register), `avx512_k`
//! (K-quant decode and small batches, 64 quants per step), `packed` (Q4_K and Q6_K rows interleaved
//! by 16 at load for AVX-512: decode without horizontal sums; Q4_K kernels), `packed6` (the Q6_K
//! ones), `matmul`
//! (`qmatmul`, fused weights, threading), `tensor` (candle integration), `pool` (persistent
//! threads, cores split between concurrent generations).

pub mod blocks;
pub mod matmul;
pub mod packed;
pub mod pool;
pub mod quantize;
pub mod tensor;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_cols;
#[cfg(target_arch = "x86_64")]
mod avx2_k;
#[cfg(target_arch = "x86_64")]
mod avx2_prefill;
#[cfg(target_arch = "x86_64")]
mod avx512_cols;
#[cfg(target_arch = "x86_64")]
mod avx512_k;
#[cfg(target_arch = "x86_64")]
mod packed6;

#[cfg(test)]
mod packed_tests;
#[cfg(test)]
mod tests;

pub use blocks::{ActType, QType};
pub use matmul::{qmatmul, qmatmul_many, qmatmul_many_with, qmatmul_with, qtype_of, Isa, QWeight};
pub use tensor::{forward, forward_many, try_kernels, with_cpu_f32, Weight};
pub use quantize::Acts;
