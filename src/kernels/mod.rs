//! The project's own quantized matmul kernels for CPU: GGUF block formats, activation
//! quantization with llama.cpp's rounding, SIMD dot products chosen at run time (AVX2+FMA, or a
//! portable scalar fallback), a tiled multi-threaded `qmatmul`, and the glue that routes candle
//! `QMatMul`s on the CPU through them.
//!
//! Module map: `blocks` (layouts, scalar decode), `quantize` (activations), `scalar` (portable
//! dots), `avx2` (32-element types + tile driver), `avx2_k` (K-quants), `matmul` (`qmatmul`,
//! threading), `pool` (persistent threads), `candle_op` (integration).

pub mod blocks;
pub mod candle_op;
pub mod matmul;
pub mod pool;
pub mod quantize;
pub mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_k;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_glue;

pub use blocks::{ActType, QType};
pub use candle_op::{forward, qtype_of};
pub use matmul::{qmatmul, qmatmul_with, Isa, QWeight};
pub use quantize::Acts;
