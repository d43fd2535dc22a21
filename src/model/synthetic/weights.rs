//! Random weights for synthetic files: N(0, σ²) values (σ = 0.02 unless a shape asks for more)
//! drawn from a fixed table of normal samples, quantized in parallel chunks seeded per tensor and chunk (the result does not depend
//! on the thread count), and large matrices assembled from a pool of quantized blocks.

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Standard deviation of every random weight.
const WEIGHT_STD: f32 = 0.02;

/// 65536 standard normal samples (Box-Muller, fixed seed): indexing it with 16 random bits draws
/// from their empirical distribution, ~10x faster than Box-Muller per value (7B = 7.6e9 values).
fn normal_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let mut t = Vec::with_capacity(1 << 16);
        while t.len() < 1 << 16 {
            let m = (-2.0 * (1.0 - rng.random::<f64>()).ln()).sqrt(); // 1 - u is in (0, 1]
            let (s, c) = (std::f64::consts::TAU * rng.random::<f64>()).sin_cos();
            t.extend([(m * c) as f32, (m * s) as f32]);
        }
        t
    })
}

/// `n` values from N(0, std²), deterministic in `seed`.
fn normals(seed: u64, n: usize, std: f32) -> Vec<f32> {
    let table = normal_table();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut v = vec![0f32; n];
    for quad in v.chunks_mut(4) {
        let r = rng.random::<u64>();
        for (k, x) in quad.iter_mut().enumerate() {
            *x = std * table[(r >> (16 * k)) as usize & 0xffff];
        }
    }
    v
}

/// Seed of chunk `chunk` of tensor `name` (FNV-1a of the name, mixed with the chunk index).
fn chunk_seed(seed: u64, name: &str, chunk: usize) -> u64 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    seed ^ h ^ (chunk as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Tensors of at least this many elements are assembled from a pool of quantized blocks.
const POOL_MIN_ELEMS: usize = 1 << 22;
/// Blocks in each type's pool (a power of two).
const POOL_BLOCKS: usize = 1 << 16;

/// Per quant type and σ, [`POOL_BLOCKS`] blocks quantized from N(0, σ²) values, made once per file.
#[derive(Default)]
pub(super) struct BlockPools(Vec<(GgmlDType, u32, Vec<u8>)>);

impl BlockPools {
    fn get(&mut self, dtype: GgmlDType, std: f32, seed: u64) -> Result<&[u8]> {
        if let Some(i) = self.0.iter().position(|(d, s, _)| *d == dtype && *s == std.to_bits()) {
            return Ok(&self.0[i].2);
        }
        // The name of the 0.02 pool is the one it always had, so such files keep their bytes.
        let name = if std == WEIGHT_STD { format!("pool.{dtype:?}") } else { format!("pool.{dtype:?}.{std}") };
        let bytes = quantized_rows(&name, POOL_BLOCKS, dtype.block_size(), dtype, std, seed)?;
        self.0.push((dtype, std.to_bits(), bytes));
        Ok(&self.0.last().expect("just pushed").2)
    }
}

/// `rows × cols` N(0, σ²) values quantized to `dtype`, generated and quantized in parallel
/// chunks of whole rows (each chunk seeded from `seed`, `name` and its index, so the result does
/// not depend on the thread count). No f32 copy of the whole matrix is ever held.
fn quantized_rows(name: &str, rows: usize, cols: usize, dtype: GgmlDType, std: f32, seed: u64) -> Result<Vec<u8>> {
    let ctx = || format!("quantizing synthetic tensor `{name}` ({rows}x{cols}) to {dtype:?}");
    let rows_per_chunk = ((1 << 20) / cols).max(1);
    let chunks: Vec<Vec<u8>> = (0..rows.div_ceil(rows_per_chunk))
        .into_par_iter()
        .map(|c| -> candle_core::Result<Vec<u8>> {
            let r = rows_per_chunk.min(rows - c * rows_per_chunk);
            let v = normals(chunk_seed(seed, name, c), r * cols, std);
            let t = Tensor::from_vec(v, (r, cols), &Device::Cpu)?;
            Ok(QTensor::quantize(&t, dtype)?.data()?.into_owned())
        })
        .collect::<candle_core::Result<_>>()
        .map_err(Error::candle(ctx()))?;
    Ok(chunks.concat())
}

/// A `rows × cols` weight matrix of `dtype` of N(0, σ²) values, or `experts` of them as one
/// `[experts, rows, cols]` tensor when `experts > 0`. Small ones are quantized from fresh values;
/// large ones (≥ [`POOL_MIN_ELEMS`]) draw every block uniformly from the type's pool of
/// [`POOL_BLOCKS`] quantized blocks: the same distribution of block values at memory speed (a 7B
/// file in seconds instead of minutes), and rows still differ from each other.
#[allow(clippy::too_many_arguments)]
pub(super) fn random_matrix(
    name: &str,
    experts: usize,
    rows: usize,
    cols: usize,
    dtype: GgmlDType,
    std: f32,
    seed: u64,
    pools: &mut BlockPools,
) -> Result<QTensor> {
    let ctx = || format!("synthetic tensor `{name}` ({experts}x{rows}x{cols}, {dtype:?})");
    let (shape, rows): (candle_core::Shape, usize) =
        if experts > 0 { ((experts, rows, cols).into(), experts * rows) } else { ((rows, cols).into(), rows) };
    let bytes = if rows * cols >= POOL_MIN_ELEMS && cols.is_multiple_of(dtype.block_size()) {
        let pool = pools.get(dtype, std, seed)?;
        let bb = dtype.type_size();
        let mut bytes = vec![0u8; rows * cols / dtype.block_size() * bb];
        bytes.par_chunks_mut(bb << 16).enumerate().for_each(|(c, out)| {
            let mut rng = SmallRng::seed_from_u64(chunk_seed(seed, name, c));
            for blk in out.chunks_exact_mut(bb) {
                let i = rng.random::<u32>() as usize & (POOL_BLOCKS - 1);
                blk.copy_from_slice(&pool[i * bb..(i + 1) * bb]);
            }
        });
        bytes
    } else {
        quantized_rows(name, rows, cols, dtype, std, seed)?
    };
    let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), &Device::Cpu, dtype).map_err(Error::candle(ctx()))?;
    QTensor::new(storage, shape).map_err(Error::candle(ctx()))
}

/// A 1-D f32 tensor: all `fill` (norms), or N(0, 0.02²) values when `fill` is `None` (biases).
pub(super) fn vector(name: &str, len: usize, fill: Option<f32>, seed: u64) -> Result<QTensor> {
    let v = match fill {
        Some(x) => vec![x; len],
        None => normals(chunk_seed(seed, name, 0), len, WEIGHT_STD),
    };
    Tensor::from_vec(v, len, &Device::Cpu)
        .and_then(|t| QTensor::quantize(&t, GgmlDType::F32))
        .map_err(Error::candle(format!("synthetic tensor `{name}`")))
}

