//! Rotary position embeddings' tables: the angle of each (position, frequency) pair, with the
//! file's frequency factors (Llama 3's `rope_freqs`; Phi-3's LongRoPE `rope_factors_short` /
//! `rope_factors_long`, the long ones for a sequence whose cache is longer than the trained
//! context, as llama.cpp chooses), linear position scaling and LongRoPE's attention factor on
//! cos/sin. Angles are computed in f64 and rounded once.

use std::io::{Read, Seek};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::arch::Config;
use crate::model::gguf::GgufFile;

/// Divisors of the RoPE angle per frequency (`head_dim / 2` of them), when the file has them.
#[derive(Debug, Clone, Default)]
pub(super) struct RopeFactors {
    short: Option<Vec<f32>>,
    long: Option<Vec<f32>>,
}

impl RopeFactors {
    pub(super) fn load<R: Read + Seek>(g: &GgufFile, r: &mut R, cfg: &Config) -> Result<Self> {
        let mut read = |name: &str| -> Result<Option<Vec<f32>>> {
            if !g.has_tensor(name) {
                return Ok(None);
            }
            let t = g.tensor(r, name, &Device::Cpu)?.dequantize(&Device::Cpu).map_err(Error::candle(format!("reading `{name}`")))?;
            let v = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(Error::candle(format!("reading `{name}`")))?;
            if v.len() != cfg.head_dim / 2 {
                return Err(Error::BadGguf { path: g.path.clone(), reason: format!("tensor `{name}` has {} values, not head size / 2 = {}", v.len(), cfg.head_dim / 2) });
            }
            if let Some(bad) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                return Err(Error::BadGguf { path: g.path.clone(), reason: format!("tensor `{name}` holds {bad}: RoPE factors must be positive and finite") });
            }
            Ok(Some(v))
        };
        if let Some(f) = read("rope_freqs.weight")? {
            return Ok(Self { short: Some(f.clone()), long: Some(f) });
        }
        Ok(Self { short: read("rope_factors_short.weight")?, long: read("rope_factors_long.weight")? })
    }

    /// The factors for a sequence whose cache holds `capacity` positions.
    pub(super) fn for_capacity(&self, capacity: usize, orig_context: usize) -> Option<&[f32]> {
        if capacity > orig_context { self.long.as_deref() } else { self.short.as_deref() }
    }
}

/// cos/sin `[rows, head_dim / 2]` for each row's position, with that row's factors.
pub(super) fn tables(cfg: &Config, base: f32, rows: &[(usize, Option<&[f32]>)], device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let freqs: Vec<f64> = (0..half).map(|i| (base as f64).powf(-2.0 * i as f64 / cfg.head_dim as f64)).collect();
    let (scale, mscale) = (cfg.rope_freq_scale as f64, cfg.rope_attn_factor as f64);
    let mut cos = Vec::with_capacity(rows.len() * half);
    let mut sin = Vec::with_capacity(rows.len() * half);
    for &(p, factors) in rows {
        for (i, &freq) in freqs.iter().enumerate() {
            let ff = factors.map_or(1.0, |f| f[i] as f64);
            let (s, c) = (p as f64 * freq / ff * scale).sin_cos();
            cos.push((c * mscale) as f32);
            sin.push((s * mscale) as f32);
        }
    }
    Ok((Tensor::from_vec(cos, (rows.len(), half), device)?, Tensor::from_vec(sin, (rows.len(), half), device)?))
}

/// One pass's RoPE tables for a base: cos/sin for the keys, and on the device path the same
/// tables times the attention scale for the queries, so that `q·kᵀ` comes out scaled (RoPE is
/// linear): two ops per pass instead of a scaling op per layer. The CPU fast path scales inside
/// its attention and gets no query tables.
pub(super) struct PassRope {
    pub cos: Tensor,
    pub sin: Tensor,
    pub q: Option<(Tensor, Tensor)>,
}

impl PassRope {
    pub(super) fn new(cfg: &Config, base: f32, rows: &[(usize, Option<&[f32]>)], device: &Device, scale_queries: bool) -> candle_core::Result<Self> {
        let (cos, sin) = tables(cfg, base, rows, device)?;
        let s = cfg.attn_scale as f64;
        let q = scale_queries.then(|| Ok::<_, candle_core::Error>(((&cos * s)?, (&sin * s)?))).transpose()?;
        Ok(Self { cos, sin, q })
    }

    /// The tables for the queries: scaled where this pass has them.
    pub(super) fn for_queries(&self) -> (&Tensor, &Tensor) {
        self.q.as_ref().map_or((&self.cos, &self.sin), |(c, s)| (c, s))
    }
}
