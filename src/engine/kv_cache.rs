//! Per-sequence KV cache in f16 (as llama.cpp keeps it), preallocated to the capacity the
//! generation needs (prompt + max tokens) and written in place. On CPU it is plain memory read by
//! [`crate::engine::attention`]: values row by row, keys in blocks of [`KEY_BLOCK`] positions
//! stored dimension-major, so one load gives a dimension of 8 positions; on other devices it is a
//! pair of device tensors per layer.
//! Weights are shared between sequences, caches never are; a cache can be forked so that several
//! samples reuse one prefill.

use candle_core::{DType, Device, Tensor};
use half::f16;

use crate::error::{Error, Result};

/// Positions per key block on CPU: keys are `[n_kv_head, capacity / 8, head_dim, 8]`.
pub const KEY_BLOCK: usize = 8;

/// Key rows allocated per KV head for `capacity` positions (whole blocks).
pub fn key_rows(capacity: usize) -> usize {
    capacity.div_ceil(KEY_BLOCK) * KEY_BLOCK
}

/// Index of (KV head `h`, position `p`, dimension `j`) in a CPU key store.
#[inline]
pub fn key_index(h: usize, p: usize, j: usize, head_dim: usize, capacity: usize) -> usize {
    (h * key_rows(capacity) + p / KEY_BLOCK * KEY_BLOCK) * head_dim + j * KEY_BLOCK + p % KEY_BLOCK
}

enum Store {
    /// Per layer (k, v): k blocked `[n_kv_head, key_rows / 8, head_dim, 8]`, v
    /// `[n_kv_head, capacity, head_dim]`.
    Cpu(Vec<(Vec<f16>, Vec<f16>)>),
    /// Per layer (k, v), each `[1, n_kv_head, capacity, head_dim]` f16 tensors.
    Device(Vec<(Tensor, Tensor)>),
    /// The state of a forward pass that keeps its cache itself (a candle-transformers model):
    /// only it reads it; this cache counts the positions.
    Opaque(Box<dyn SequenceState>),
}

/// A sequence's state held by a forward pass that keeps its own cache (see `Store::Opaque`).
pub trait SequenceState: Send + Sync {
    /// A copy holding the same positions.
    fn fork(&self) -> Result<Box<dyn SequenceState>>;
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

pub struct KvCache {
    store: Store,
    n_kv_head: usize,
    head_dim: usize,
    len: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(n_layers: usize, n_kv_head: usize, head_dim: usize, capacity: usize, device: &Device) -> Result<Self> {
        if !device.is_cpu() {
            return Self::new_tensors(n_layers, n_kv_head, head_dim, capacity, device);
        }
        let per = n_kv_head * capacity * head_dim;
        let per_k = n_kv_head * key_rows(capacity) * head_dim;
        let store = Store::Cpu((0..n_layers).map(|_| (vec![f16::ZERO; per_k], vec![f16::ZERO; per])).collect());
        Ok(Self { store, n_kv_head, head_dim, len: 0, capacity })
    }

    /// A cache of f16 tensors on `device` (any device, CPU included), for candle's tensor ops.
    pub fn new_tensors(n_layers: usize, n_kv_head: usize, head_dim: usize, capacity: usize, device: &Device) -> Result<Self> {
        let shape = (1, n_kv_head, capacity, head_dim);
        let layers = (0..n_layers)
            .map(|_| Ok((Tensor::zeros(shape, DType::F16, device)?, Tensor::zeros(shape, DType::F16, device)?)))
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(Error::candle("allocating the KV cache"))?;
        Ok(Self { store: Store::Device(layers), n_kv_head, head_dim, len: 0, capacity })
    }

    /// A cache whose positions live in `state` (a forward pass with its own cache), for up to
    /// `capacity` positions.
    pub fn opaque(state: Box<dyn SequenceState>, capacity: usize) -> Self {
        Self { store: Store::Opaque(state), n_kv_head: 0, head_dim: 0, len: 0, capacity }
    }

    /// The state of an opaque cache (None for the project's own caches).
    pub fn opaque_state(&mut self) -> Option<&mut dyn std::any::Any> {
        match &mut self.store {
            Store::Opaque(s) => Some(s.as_any_mut()),
            _ => None,
        }
    }

    /// Bytes a cache of this geometry takes.
    pub fn bytes_for(n_layers: usize, n_kv_head: usize, head_dim: usize, capacity: usize) -> u64 {
        (2 * n_layers * n_kv_head * head_dim * capacity * 2) as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn check_room(&self, seq: usize) -> Result<()> {
        if self.len + seq > self.capacity {
            return Err(Error::Other(format!(
                "KV cache full: {} + {seq} positions exceed its capacity of {}",
                self.len, self.capacity
            )));
        }
        Ok(())
    }

    /// CPU: write rows `off..off + seq` of `k`, `v` (f32, `[n_kv_head, rows, head_dim]`: a batch
    /// may hold several sequences' rows) for `layer` at the current position; read them back with
    /// [`KvCache::cpu_layer`]. The position moves on [`KvCache::advance`], once every layer has
    /// been written.
    pub fn append_cpu(&mut self, layer: usize, k: &[f32], v: &[f32], off: usize, seq: usize, rows: usize) -> Result<()> {
        self.check_room(seq)?;
        let (d, cap, len) = (self.head_dim, self.capacity, self.len);
        if off + seq > rows || k.len() < self.n_kv_head * rows * d || v.len() < self.n_kv_head * rows * d {
            return Err(Error::Other(format!("append_cpu: rows {off}..{} of {rows} do not fit the K/V data", off + seq)));
        }
        let Store::Cpu(layers) = &mut self.store else {
            return Err(Error::Other("append_cpu on a device cache".into()));
        };
        let (kc, vc) = &mut layers[layer];
        for h in 0..self.n_kv_head {
            for i in 0..seq {
                let src = (h * rows + off + i) * d;
                let dst = (h * cap + len + i) * d;
                for j in 0..d {
                    kc[key_index(h, len + i, j, d, cap)] = f16::from_f32(k[src + j]);
                    vc[dst + j] = f16::from_f32(v[src + j]);
                }
            }
        }
        Ok(())
    }

    /// CPU: the whole layer's (k, v) memory (layouts as in `Store::Cpu`).
    pub fn cpu_layer(&self, layer: usize) -> Result<(&[f16], &[f16])> {
        match &self.store {
            Store::Cpu(layers) => Ok((layers[layer].0.as_slice(), layers[layer].1.as_slice())),
            _ => Err(Error::Other("cpu_layer on a cache not held in CPU memory by this engine".into())),
        }
    }

    /// Device: write `k`, `v` (`[1, n_kv_head, seq, head_dim]`) for `layer` and return every
    /// position so far as f32 tensors.
    pub fn append_device(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let seq = k.dim(2)?;
        self.check_room(seq)?;
        let Store::Device(layers) = &self.store else {
            return Err(Error::Other("append_device on a CPU cache".into()));
        };
        let (kc, vc) = &layers[layer];
        kc.slice_set(&k.to_dtype(DType::F16)?.contiguous()?, 2, self.len)?;
        vc.slice_set(&v.to_dtype(DType::F16)?.contiguous()?, 2, self.len)?;
        let end = self.len + seq;
        Ok((kc.narrow(2, 0, end)?.to_dtype(DType::F32)?, vc.narrow(2, 0, end)?.to_dtype(DType::F32)?))
    }

    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Forget everything after position `len` (e.g. to reuse a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// A deep copy holding the same positions, with at least `capacity` room.
    pub fn fork(&self, capacity: usize) -> Result<Self> {
        self.fork_prefix(self.len, capacity)
    }

    /// A deep copy of the first `len` positions (at most all), with at least `capacity` room.
    pub fn fork_prefix(&self, len: usize, capacity: usize) -> Result<Self> {
        let len = len.min(self.len);
        let capacity = capacity.max(len);
        let (h, d) = (self.n_kv_head, self.head_dim);
        let store = match &self.store {
            Store::Cpu(layers) => Store::Cpu(
                layers
                    .iter()
                    .map(|(k, v)| {
                        // Rows per head before/after, rows to copy (keys: whole blocks).
                        let copy = |src: &Vec<f16>, from: usize, to: usize, rows: usize| {
                            let mut dst = vec![f16::ZERO; h * to * d];
                            for hh in 0..h {
                                dst[hh * to * d..][..rows * d].copy_from_slice(&src[hh * from * d..][..rows * d]);
                            }
                            dst
                        };
                        let (kf, kt) = (key_rows(self.capacity), key_rows(capacity));
                        (copy(k, kf, kt, key_rows(len)), copy(v, self.capacity, capacity, len))
                    })
                    .collect(),
            ),
            Store::Device(layers) => {
                let mut out = Vec::with_capacity(layers.len());
                for (k, v) in layers {
                    let nk = Tensor::zeros((1, h, capacity, d), DType::F16, k.device())?;
                    let nv = Tensor::zeros((1, h, capacity, d), DType::F16, v.device())?;
                    if len > 0 {
                        nk.slice_set(&k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                        nv.slice_set(&v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                    }
                    out.push((nk, nv));
                }
                Store::Device(out)
            }
            // A state kept elsewhere forks whole (it cannot be cut here).
            Store::Opaque(_) if len < self.len => {
                return Err(Error::Other("a cache kept by its forward pass cannot be forked in part".into()))
            }
            Store::Opaque(s) => Store::Opaque(s.fork()?),
        };
        Ok(Self { store, n_kv_head: h, head_dim: d, len, capacity })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_fork_and_overflow() -> Result<()> {
        let mut c = KvCache::new(1, 2, 4, 8, &Device::Cpu)?;
        let k: Vec<f32> = (0..2 * 3 * 4).map(|x| x as f32).collect();
        c.append_cpu(0, &k, &k, 0, 3, 3)?;
        let (kc, _) = c.cpu_layer(0)?;
        // Key of head 1, position 2, dim 3: block 0 of head 1, dimension-major.
        assert_eq!(kc[(8 * 4) + 3 * 8 + 2].to_f32(), ((3 + 2) * 4 + 3) as f32);
        assert_eq!(kc[key_index(1, 2, 3, 4, 8)], kc[(8 * 4) + 3 * 8 + 2]);
        c.advance(3);
        let f = c.fork(16)?;
        assert_eq!((f.len(), f.capacity()), (3, 16));
        let Store::Cpu(l) = &f.store else { unreachable!() };
        assert_eq!(l[0].0[key_index(1, 2, 3, 4, 16)].to_f32(), ((3 + 2) * 4 + 3) as f32);
        assert_eq!(l[0].1[(16 + 2) * 4 + 3].to_f32(), ((3 + 2) * 4 + 3) as f32);
        let big = vec![0f32; 2 * 6 * 4];
        assert!(c.append_cpu(0, &big, &big, 0, 6, 6).is_err(), "overflow must be an error");
        Ok(())
    }
}
