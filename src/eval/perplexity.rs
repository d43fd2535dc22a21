//! Perplexity over a text, computed as llama.cpp's `llama-perplexity` does so that the numbers
//! compare: the text is tokenized once (with BOS where the vocabulary adds one), cut into chunks
//! of `ctx` tokens (a chunk's first token replaced by BOS), each chunk evaluated from an empty
//! cache, and only the second half of each chunk scored (token `j + 1` from the logits at `j`,
//! for `j` in `ctx/2 .. ctx - 1`), so every scored token has at least `ctx/2` of context.
//!
//! With a base file (`llama-perplexity --kl-divergence-base FILE` writes one: its tokens and, per
//! scored position, the log-probabilities of every token in 16 bits), the same chunks are read
//! from the file and each position's distribution is compared with the base's: KL divergence,
//! top-1 agreement, the probability of the right token, and both perplexities — how users
//! compare a quantization with the full-precision model, and here the parity oracle for an
//! architecture against llama.cpp.

use std::io::Read;
use std::path::Path;

use crate::engine::Forward;
use crate::error::{Error, Result};
use crate::model::Model;

/// The 16-bit log-probabilities of one scored position in a base file.
struct BaseRow<'a>(&'a [u16]);

impl BaseRow<'_> {
    fn scale_min(&self) -> (f32, f32) {
        let f = |i: usize| f32::from_bits(self.0[i] as u32 | (self.0[i + 1] as u32) << 16);
        (f(0), f(2))
    }

    fn log_prob(&self, tok: usize) -> f32 {
        let (scale, min) = self.scale_min();
        scale * self.0[4 + tok] as f32 + min
    }
}

/// A `--kl-divergence-base` file of llama.cpp's: `_logits_`, ctx, vocabulary, chunks (i32 each),
/// the chunks' tokens, then per chunk `ctx - 1 - ctx/2` rows of `2·⌈vocab/2⌉ + 4` u16s.
pub struct KlBase {
    pub ctx: usize,
    pub vocab: usize,
    pub tokens: Vec<u32>,
    rows: Vec<u16>,
}

impl KlBase {
    pub fn read(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::InvalidRequest(format!("KL-divergence base {}: {reason}", path.display()));
        let mut f = std::io::BufReader::new(std::fs::File::open(path).map_err(|source| Error::Io { path: path.into(), source })?);
        let mut magic = [0u8; 8];
        f.read_exact(&mut magic).map_err(|e| bad(format!("reading its header: {e}")))?;
        if &magic != b"_logits_" {
            return Err(bad("does not start with `_logits_` (not a llama-perplexity --kl-divergence-base file)".into()));
        }
        let mut int = |what: &str| -> Result<usize> {
            let mut b = [0u8; 4];
            f.read_exact(&mut b).map_err(|e| bad(format!("reading {what}: {e}")))?;
            let v = i32::from_le_bytes(b);
            if v <= 0 || v > 1 << 24 {
                return Err(bad(format!("{what} is {v}, outside 1..={}", 1 << 24)));
            }
            Ok(v as usize)
        };
        let (ctx, vocab, chunks) = (int("the context")?, int("the vocabulary size")?, int("the chunk count")?);
        if ctx < 4 {
            return Err(bad(format!("context {ctx} is below 4")));
        }
        let n_tokens = ctx.checked_mul(chunks).filter(|&n| n <= 1 << 28).ok_or_else(|| bad(format!("{chunks} chunks of {ctx} is too many tokens")))?;
        let nv = 2 * vocab.div_ceil(2) + 4;
        let n_rows = (ctx - 1 - ctx / 2) * chunks;
        let n_u16 = n_rows.checked_mul(nv).ok_or_else(|| bad("its size overflows".into()))?;
        let expected = 20 + 4 * n_tokens as u64 + 2 * n_u16 as u64;
        let actual = std::fs::metadata(path).map_err(|source| Error::Io { path: path.into(), source })?.len();
        if actual != expected {
            return Err(bad(format!("is {actual} bytes, but {chunks} chunks of {ctx} over a vocabulary of {vocab} make {expected}")));
        }
        let mut buf = vec![0u8; 4 * n_tokens];
        f.read_exact(&mut buf).map_err(|e| bad(format!("reading the tokens: {e}")))?;
        let tokens = buf.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        let mut buf = vec![0u8; 2 * n_u16];
        f.read_exact(&mut buf).map_err(|e| bad(format!("reading the log-probabilities: {e}")))?;
        let rows = buf.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        Ok(Self { ctx, vocab, tokens, rows })
    }

    fn row(&self, chunk: usize, i: usize) -> BaseRow<'_> {
        let nv = 2 * self.vocab.div_ceil(2) + 4;
        let per_chunk = self.ctx - 1 - self.ctx / 2;
        let at = (chunk * per_chunk + i) * nv;
        BaseRow(&self.rows[at..at + nv])
    }

    pub fn chunks(&self) -> usize {
        self.tokens.len() / self.ctx
    }
}

/// What one run measured; `kld` when a base was given.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PerplexityReport {
    pub ctx: usize,
    pub chunks: usize,
    pub scored: usize,
    pub ppl: f64,
    /// llama.cpp's uncertainty of the PPL (its `±`).
    pub ppl_sd: f64,
    pub kld: Option<KldReport>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct KldReport {
    pub ppl_base: f64,
    pub mean_kld: f64,
    pub max_kld: f64,
    pub median_kld: f64,
    pub p95_kld: f64,
    pub p99_kld: f64,
    /// Fraction of positions whose most likely token is the base's.
    pub same_top: f64,
    /// Root mean square of the difference in the right token's probability.
    pub rms_dp: f64,
}

fn mean_sd(sum: f64, sum2: f64, n: usize) -> (f64, f64) {
    let f = sum / n as f64;
    let v = sum2 / n as f64 - f * f;
    (f, if v > 0.0 && n > 10 { (v / (n - 1) as f64).sqrt() } else { 0.0 })
}

/// Perplexity of `model` on `text` in chunks of `ctx` tokens (at most `max_chunks`), or on the
/// base file's chunks when `base` is given (then `text` is not used). `progress(chunk, ppl)`
/// follows each chunk.
pub fn perplexity(
    model: &Model,
    text: Option<&str>,
    ctx: usize,
    max_chunks: Option<usize>,
    base: Option<&KlBase>,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<PerplexityReport> {
    let vocab = model.cfg().vocab_size;
    let (tokens, ctx) = match (base, text) {
        (Some(b), _) => {
            if b.vocab != vocab {
                return Err(Error::InvalidRequest(format!("the KL-divergence base has a vocabulary of {}, the model {vocab}", b.vocab)));
            }
            if let Some(&t) = b.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::InvalidRequest(format!("the KL-divergence base holds token {t}, outside the vocabulary of {vocab}")));
            }
            (b.tokens.clone(), b.ctx)
        }
        (None, Some(t)) => (model.tokenizer.encode(t, true)?, ctx),
        (None, None) => return Err(Error::InvalidRequest("perplexity needs a text or a KL-divergence base".into())),
    };
    if ctx < 4 || ctx > model.cfg().context_length {
        return Err(Error::InvalidRequest(format!("context {ctx} is outside 4..={} (the model's context)", model.cfg().context_length)));
    }
    if tokens.len() < 2 * ctx && base.is_none() {
        return Err(Error::InvalidRequest(format!(
            "the text is {} tokens; perplexity with a context of {ctx} needs at least {} (llama-perplexity's rule)",
            tokens.len(),
            2 * ctx
        )));
    }
    let chunks = (tokens.len() / ctx).min(max_chunks.unwrap_or(usize::MAX));
    let bos = model.tokenizer.adds_bos().then(|| model.tokenizer.bos_id()).flatten();
    let first = ctx / 2;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut k = KldSums::default();
    let mut kld_values = Vec::new();
    for c in 0..chunks {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let mut cache = model.transformer.new_cache(ctx)?;
        // The first half feeds the cache only; positions `first .. ctx - 1` come back with every
        // row's logits, in pieces so that at most PIECE × vocabulary logits are held at once.
        const PIECE: usize = 64;
        model.transformer.forward_rows(&mut [(&chunk[..first], &mut cache)], &[0])?;
        let mut at = first;
        while at < ctx - 1 {
            let end = (at + PIECE).min(ctx - 1);
            let rows = model.transformer.forward_rows(&mut [(&chunk[at..end], &mut cache)], &[end - at])?.remove(0);
            for (j, logits) in rows.iter().enumerate() {
                let pos = at + j;
                let next = tokens[c * ctx + pos + 1] as usize;
                let (max, imax) = logits.iter().enumerate().fold((f32::NEG_INFINITY, 0), |m, (i, &x)| if x > m.0 { (x, i) } else { m });
                let sum_exp: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
                let lse = max + (sum_exp.ln() as f32);
                let v = (lse - logits[next]) as f64;
                nll += v;
                nll2 += v * v;
                count += 1;
                if let Some(b) = base {
                    kld_values.push(k.add(&b.row(c, pos - first), logits, lse, imax, next, v as f32) as f32);
                }
            }
            at = end;
        }
        progress(c + 1, chunks, (nll / count as f64).exp());
    }
    let (m, sd) = mean_sd(nll, nll2, count);
    let ppl = m.exp();
    let kld = base.map(|_| k.report(count, &mut kld_values));
    Ok(PerplexityReport { ctx, chunks, scored: count, ppl, ppl_sd: ppl * sd, kld })
}

#[derive(Default)]
struct KldSums {
    nll_base: f64,
    kld: f64,
    kld2: f64,
    dp2: f64,
    same_top: usize,
}

impl KldSums {
    /// One position, as llama.cpp's `log_softmax` against the base: KL(base ‖ ours) over the
    /// tokens whose base log-probability is above -16, and the right token's probability change.
    fn add(&mut self, base: &BaseRow<'_>, logits: &[f32], lse: f32, imax: usize, tok: usize, nll: f32) -> f64 {
        let nll_base = -base.log_prob(tok);
        self.nll_base += nll_base as f64;
        let (mut sum, mut best, mut ibest) = (0f64, f32::NEG_INFINITY, 0);
        for (i, &x) in logits.iter().enumerate() {
            let lb = base.log_prob(i);
            if lb > best {
                best = lb;
                ibest = i;
            }
            if lb > -16.0 {
                sum += (lb.exp() * (lb - x + lse)) as f64;
            }
        }
        self.kld += sum;
        self.kld2 += sum * sum;
        self.same_top += usize::from(ibest == imax);
        let dp = (-nll).exp() - (-nll_base).exp();
        self.dp2 += (dp * dp) as f64;
        sum
    }

    /// `kld`: every position's divergence (at least one).
    fn report(&self, n: usize, kld: &mut [f32]) -> KldReport {
        kld.sort_by(f32::total_cmp);
        let pct = |f: f64| {
            let p = f * (kld.len() - 1) as f64;
            let i = p as usize;
            let r = p - i as f64;
            ((1.0 - r) * kld[i] as f64 + r * kld[(i + 1).min(kld.len() - 1)] as f64) as f32
        };
        KldReport {
            ppl_base: (self.nll_base / n as f64).exp(),
            mean_kld: self.kld / n as f64,
            max_kld: *kld.last().unwrap_or(&0.0) as f64,
            median_kld: pct(0.5) as f64,
            p95_kld: pct(0.95) as f64,
            p99_kld: pct(0.99) as f64,
            same_top: self.same_top as f64 / n as f64,
            rms_dp: (self.dp2 / n as f64).sqrt(),
        }
    }
}
