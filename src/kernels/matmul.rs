//! `qmatmul`: `out[m, n] = x[m, k] · W[n, k]ᵀ` for a quantized weight held as raw GGUF blocks.
//!
//! Activations are quantized once per call into a thread-local buffer (no allocation once it
//! has grown). Decode (`m == 1`) splits the output rows across the pool in contiguous chunks
//! (each thread streams its own part of the weight). Prefill (`m > 1`) splits by chunks of
//! weight rows small enough to stay in L1/L2 while every group of 4 activation rows passes over
//! them, so each weight block row is read from memory once per call and unpacked once per group.
//! Several weights of one type over the same input ([`qmatmul_many`]) share one quantization and
//! one pool job. Candle tensors come in through `kernels::tensor`.

use std::cell::RefCell;
use std::sync::OnceLock;

use candle_core::quantized::GgmlDType;

use super::blocks::{tile_scalar, QType};
use super::pool::{pool, SyncPtr};
use super::quantize::Acts;

/// A `[n, k]` quantized weight: borrowed raw GGUF block bytes, row-major, or (`packed`) Q4_K /
/// Q6_K rows interleaved by 16 ([`super::packed`]).
#[derive(Clone, Copy, Debug)]
pub struct QWeight<'a> {
    pub ty: QType,
    pub n: usize,
    pub k: usize,
    pub data: &'a [u8],
    pub packed: bool,
}

impl<'a> QWeight<'a> {
    /// Checks that `data` holds exactly `n` rows of `k` elements of `ty`.
    pub fn new(ty: QType, n: usize, k: usize, data: &'a [u8]) -> Result<Self, String> {
        if k == 0 || !k.is_multiple_of(ty.block_elems()) {
            return Err(format!("{ty:?}: k = {k} is not a positive multiple of {}", ty.block_elems()));
        }
        // Checked: the kernels read `n × row bytes` through raw pointers, so a product that
        // wrapped round to the buffer's length would send them past its end.
        let want = n.checked_mul(k / ty.block_elems()).and_then(|b| b.checked_mul(ty.block_bytes()));
        if want != Some(data.len()) {
            return Err(format!("{ty:?} [{n}, {k}]: {} bytes, expected {want:?}", data.len()));
        }
        Ok(Self { ty, n, k, data, packed: false })
    }

    /// A packed weight's bytes (runs on [`Isa::Avx512Vnni`] only).
    pub fn packed(p: &'a super::packed::Packed) -> Self {
        Self { ty: p.ty, n: p.n, k: p.k, data: p.bytes(), packed: true }
    }

    /// Bytes from one row to the next (packed: a chunk of 16 rows is 16 times this).
    pub fn row_bytes(&self) -> usize {
        if self.packed {
            return super::packed::stride(self.ty, self.k);
        }
        self.k / self.ty.block_elems() * self.ty.block_bytes()
    }
}

/// An instruction set the kernels have a path for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    /// AVX-512 F/BW/VL/VNNI: the 512-bit column kernels for K-quant prefill (`avx512_cols`),
    /// VNNI (256-bit) in the Q4_0/Q5_0 prefill kernel, the AVX2 kernels for the rest; Q5_K and
    /// Q6_K sum each block to one exact integer (not llama.cpp's 8 lanes) in every kernel.
    Avx512Vnni,
}

impl Isa {
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512Vnni => false,
        }
    }

    /// Whether this path runs the AVX2 kernels (every x86 SIMD path does).
    pub fn avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512Vnni)
    }

    /// Every path this machine can run, best last.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni].into_iter().filter(|i| i.supported()).collect()
    }

    /// The best path here (`MOA_KERNEL_ISA=scalar` or `=avx2` caps it).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let cap = std::env::var("MOA_KERNEL_ISA").unwrap_or_default().to_ascii_lowercase();
            let avail = Isa::available();
            match cap.as_str() {
                "scalar" => Isa::Scalar,
                "avx2" if avail.contains(&Isa::Avx2) => Isa::Avx2,
                _ => *avail.last().unwrap(),
            }
        })
    }
}

/// `out[r * ldo + j]` for weight rows `j < nw` (from `w`, `row_bytes` apart) and activation rows
/// `r0..r0 + nr`.
type TileFn = unsafe fn(QType, *const u8, usize, usize, &Acts, usize, usize, *mut f32, usize);

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx2_tile<K: super::avx2::Kern, const ROWS: usize>(
    _: QType,
    w: *const u8,
    row_bytes: usize,
    nw: usize,
    a: &Acts,
    r0: usize,
    nr: usize,
    out: *mut f32,
    ldo: usize,
) {
    super::avx2::drive::<K, ROWS>(w, row_bytes, nw, a, r0, nr, out, ldo)
}

/// Whether `t` has a prefill kernel reading [`Acts::prepare_unsigned`]'s buffers on `isa`.
fn unsigned_prefill(t: QType, isa: Isa) -> bool {
    cfg!(target_arch = "x86_64") && isa.avx2() && matches!(t, QType::Q4_0 | QType::Q5_0)
}

/// Activation rows from which a K-quant matmul takes a column kernel (unpacking a chunk of
/// weight rows costs about what 1–2 rows of products do; below this, decode and batched decode
/// read each weight once in place).
#[cfg(target_arch = "x86_64")]
const COLUMN_MIN_ROWS: usize = 16;

/// Whether `t` over `m` activation rows runs a column kernel on `isa` (AVX-512 VNNI: 16 weight
/// rows per register; AVX2: 8), and how many weight rows its chunks hold.
fn column_prefill(t: QType, isa: Isa, m: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if m < COLUMN_MIN_ROWS {
            return None;
        }
        match isa {
            Isa::Avx512Vnni if super::avx512_cols::supports(t) => Some(super::avx512_cols::COLS),
            Isa::Avx2 if super::avx2_cols::supports(t) => Some(super::avx2_cols::COLS),
            _ => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (t, isa, m);
        None
    }
}

/// The kernel for `t` on `isa` over `m` rows; `prepared` when the activations hold the unsigned copy.
fn tile_fn(t: QType, isa: Isa, prepared: bool, m: usize, packed: bool) -> TileFn {
    #[cfg(target_arch = "x86_64")]
    if packed {
        use super::packed::{cols_tile, gemv_tile, Q4};
        use super::packed6::Q6;
        return match (t == QType::Q6K, m >= COLUMN_MIN_ROWS) {
            (false, true) => cols_tile::<Q4>,
            (false, false) => gemv_tile::<Q4>,
            (true, true) => cols_tile::<Q6>,
            (true, false) => gemv_tile::<Q6>,
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = packed;
    #[cfg(target_arch = "x86_64")]
    if column_prefill(t, isa, m).is_some() {
        return if isa == Isa::Avx512Vnni { super::avx512_cols::tile } else { super::avx2_cols::tile };
    }
    #[cfg(target_arch = "x86_64")]
    if prepared && unsigned_prefill(t, isa) {
        use super::avx2::{Q4_0, Q5_0};
        use super::avx2_prefill::{tile, Madd, Vnni};
        return match (t == QType::Q4_0, isa == Isa::Avx512Vnni) {
            (true, false) => tile::<Q4_0, Madd>,
            (false, false) => tile::<Q5_0, Madd>,
            (true, true) => tile::<Q4_0, Vnni>,
            (false, true) => tile::<Q5_0, Vnni>,
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (t, prepared, m);
    match isa {
        Isa::Scalar => tile_scalar,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => {
            use super::avx2::{SmallKern, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
            use super::avx2_k::{Q45K, Q6K};
            use super::avx512_k::{tile as tile512, Q45K512, Q6K512};
            let avx512 = isa == Isa::Avx512Vnni;
            match t {
                QType::Q4K if avx512 => tile512::<Q45K512<false>, 6>,
                QType::Q5K if avx512 => tile512::<Q45K512<true>, 6>,
                QType::Q6K if avx512 => tile512::<Q6K512, 6>,
                QType::Q4_0 => avx2_tile::<SmallKern<Q4_0>, 8>,
                QType::Q4_1 => avx2_tile::<SmallKern<Q4_1>, 8>,
                QType::Q5_0 => avx2_tile::<SmallKern<Q5_0>, 8>,
                QType::Q5_1 => avx2_tile::<SmallKern<Q5_1>, 8>,
                QType::Q8_0 => avx2_tile::<SmallKern<Q8_0>, 8>,
                QType::Q4K => avx2_tile::<Q45K<false>, 6>,
                QType::Q5K => avx2_tile::<Q45K<true>, 6>,
                QType::Q6K => avx2_tile::<Q6K, 6>,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512Vnni => unreachable!("AVX2 on a non-x86 target"),
    }
}

thread_local! {
    static ACTS: RefCell<Acts> = RefCell::new(Acts::default());
}

/// `out[m, n] = x[m, k] · Wᵀ` with the best kernels for this machine.
pub fn qmatmul(w: &QWeight, x: &[f32], out: &mut [f32]) {
    qmatmul_with(Isa::best(), w, x, out)
}

/// [`qmatmul`] on a chosen instruction set (which must be supported; activations are quantized
/// with the best one, which gives identical results).
pub fn qmatmul_with(isa: Isa, w: &QWeight, x: &[f32], out: &mut [f32]) {
    qmatmul_many_with(isa, std::slice::from_ref(w), x, &mut [out])
}

/// Several weights of one type and width against the same `x`: the activations are quantized
/// once and every weight's row chunks go to the pool as one job (q/k/v, gate/up), so a decode
/// step pays one quantization and one fork/join instead of one per weight.
pub fn qmatmul_many(ws: &[QWeight], x: &[f32], outs: &mut [&mut [f32]]) {
    qmatmul_many_with(Isa::best(), ws, x, outs)
}

/// [`qmatmul_many`] on a chosen instruction set.
pub fn qmatmul_many_with(isa: Isa, ws: &[QWeight], x: &[f32], outs: &mut [&mut [f32]]) {
    assert!(isa.supported(), "{isa:?} is not supported on this CPU");
    let Some(w) = ws.first() else { return };
    assert!(ws.iter().all(|v| v.ty == w.ty && v.k == w.k), "fused weights must share type and k");
    assert_eq!(ws.len(), outs.len(), "one output per weight");
    assert!(isa == Isa::Avx512Vnni || ws.iter().all(|v| !v.packed), "packed weights run on AVX-512 VNNI only, not {isa:?}");
    assert!(x.len().is_multiple_of(w.k), "x has {} values, not a multiple of k = {}", x.len(), w.k);
    let m = x.len() / w.k;
    for (v, o) in ws.iter().zip(outs.iter()) {
        assert_eq!(o.len(), m * v.n, "out must be [m = {m}, n = {}]", v.n);
    }
    if m == 0 {
        return;
    }
    ACTS.with(|acts| {
        let mut acts = acts.borrow_mut();
        if m > 1 && pool().threads() > 1 {
            acts.quantize_par(w.ty.act(), x, w.k);
        } else {
            acts.quantize(w.ty.act(), x, w.k);
        }
        // From two tiles of rows on, unpacking once per call pays for the scratch round trip
        // (batched decode of 4 sequences was 20% slower through it).
        if m >= 16 && unsigned_prefill(w.ty, isa) {
            acts.prepare_unsigned();
        } else if isa.avx2() && matches!(w.ty, QType::Q4_0 | QType::Q5_0) {
            acts.prepare_offset(if w.ty == QType::Q4_0 { 8 } else { 16 });
        }
        run_many(isa, ws, &acts, m, outs);
    });
}

/// How one weight is cut into pool tasks.
struct Split {
    f: TileFn,
    rows: usize,
    tasks: usize,
}

fn split(isa: Isa, w: &QWeight, acts: &Acts, m: usize, threads: usize) -> Split {
    assert!(acts.kind == w.ty.act() && acts.m >= m && acts.nb * acts.kind.block_elems() == w.k);
    let prepared = acts.d_stride >= m + 8;
    let f = tile_fn(w.ty, isa, prepared, m, w.packed);
    if let Some(cols) = column_prefill(w.ty, isa, m) {
        // One chunk per task: its scratch (~1.2× (AVX-512) or 2.4× (AVX2) the chunk's weights as
        // bytes) stays in L1/L2 while every activation row passes over it.
        return Split { f, rows: cols, tasks: w.n.div_ceil(cols) };
    }
    let (n, rb) = (w.n, w.row_bytes());
    // The unpacking prefill kernel keeps its chunk of weight rows in a scratch of this size.
    #[cfg(target_arch = "x86_64")]
    let chunk_bytes = if prepared && unsigned_prefill(w.ty, isa) { w.k / 32 * super::avx2_prefill::SCRATCH_PER_BLOCK } else { rb };
    #[cfg(not(target_arch = "x86_64"))]
    let chunk_bytes = rb;
    // Rows per task: decode (one sequence, or up to 8 decoded together, where each weight row meets
    // every activation row in one or two tiles) splits into contiguous chunks; prefill keeps a chunk
    // of weight rows within ~16 KiB so it stays cached across the activation row groups. (Batched
    // decode was slower in 16 KiB tasks, thousands per output projection: 4 sequences of Qwen-0.5B
    // gained 1.65-1.79x over one, 1.89-1.98x in contiguous chunks, three alternating rounds.)
    let work = m * n * w.k;
    let rows = if chunk_bytes != rb {
        // (however many threads: the scratch holds one chunk)
        (16384 / chunk_bytes).clamp(1, n.div_ceil(threads * 4).max(1))
    } else if threads == 1 || work < 1 << 16 {
        n
    } else if m <= 8 {
        // Contiguous chunks of at most ~256 KiB of weights: a few per thread for small matrices,
        // hundreds for the output projection, so no thread is left finishing a 20 MB chunk alone.
        n.div_ceil(threads * 4).min((262144 / rb).max(2)).next_multiple_of(2)
    } else {
        (16384 / chunk_bytes).clamp(1, n.div_ceil(threads * 4).max(1))
    }
    .max(1);
    // Packed weights are cut at whole chunks of 16 rows.
    let rows = if w.packed { rows.next_multiple_of(super::packed::LANES) } else { rows };
    Split { f, rows, tasks: n.div_ceil(rows) }
}

/// Several weights over the same quantized activations (`acts` holds `m` rows of their
/// `ty.act()`), as one pool job.
fn run_many(isa: Isa, ws: &[QWeight], acts: &Acts, m: usize, outs: &mut [&mut [f32]]) {
    let pool = pool();
    let splits: Vec<Split> = ws.iter().map(|w| split(isa, w, acts, m, pool.threads())).collect();
    let mut first = Vec::with_capacity(ws.len() + 1);
    first.push(0);
    for s in &splits {
        first.push(first.last().unwrap() + s.tasks);
    }
    let total = *first.last().unwrap();
    let outs: Vec<SyncPtr> = outs.iter_mut().map(|o| SyncPtr::new(o.as_mut_ptr())).collect();
    let task = |t: usize| {
        let i = first.partition_point(|&f| f <= t) - 1;
        let (w, s, o) = (&ws[i], &splits[i], outs[i]);
        let (rb, j0) = (w.row_bytes(), (t - first[i]) * s.rows);
        let nw = s.rows.min(w.n - j0);
        // SAFETY: `w.data` holds n rows; this task writes columns j0..j0+nw of every output row
        // of weight i's output, which no other task touches.
        unsafe { (s.f)(w.ty, w.data.as_ptr().add(j0 * rb), rb, nw, acts, 0, m, o.get().add(j0), w.n) }
    };
    match total {
        0 => {}
        1 => task(0),
        _ => pool.run(total, &task),
    }
}

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
