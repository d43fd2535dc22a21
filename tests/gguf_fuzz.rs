//! Deterministic mutation fuzzing of the loader on the three test models: boundary values written
//! into the header's numeric fields (counts, lengths, value and array types, scalar values, tensor
//! dimensions, types and offsets), random byte flips in the header, truncations at random
//! offsets and corrupt weight bytes. Every case must end in a result (load plus one generated
//! token) or a clean error that names the file in a message of reasonable length: no panic, no signal, and no allocation beyond the
//! file's size plus the KV cache (a counting allocator measures the peak of each case).
//!
//! Each model's campaign runs in a child process (this test binary again, `fuzz_worker`), so a
//! signal — a segfault, an abort on a failed allocation — fails the test with the case that
//! caused it instead of killing the test run. `MOA_FUZZ_CASES=N` runs N cases per model
//! (default below) and `MOA_FUZZ_SEED` another seed, for longer campaigns by hand.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use candle_core::Device;
use moa_local::engine::sampler::argmax;
use moa_local::engine::Forward;
use moa_local::model::Model;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            PEAK.fetch_max(LIVE.fetch_add(l.size(), Relaxed) + l.size(), Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            PEAK.fetch_max(LIVE.fetch_add(l.size(), Relaxed) + l.size(), Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let q = System.realloc(p, l, n);
        if !q.is_null() {
            let live = LIVE.fetch_add(n, Relaxed) + n;
            PEAK.fetch_max(live, Relaxed);
            LIVE.fetch_sub(l.size(), Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Cases per model in CI: 660 in all, weighted towards the smaller files.
/// The test models, and synthetic files (`synthetic:ARCH:SIZE:QUANT`, seed 1) for the loader paths
/// no bundled model has: Phi-3's fused Q/K/V and gate/up matrices read by row groups and its
/// LongRoPE factor tensors; Llama 3's `rope_freqs`; Phi-2 and GLM-4, whose loaders are
/// candle-transformers' (given the tensors our checked parser found and their shapes checked
/// against the metadata, the context it sizes tables by capped, its panics caught).
const CASES: [(&str, usize); 7] = [
    (common::SMOL, 150),
    (common::GEMMA, 100),
    (common::QWEN, 60),
    ("synthetic:phi3:tiny:q4_k_m", 150),
    ("synthetic:llama:tiny:q8_0", 60),
    ("synthetic:phi2:tiny:q4_k_m", 80),
    ("synthetic:glm4:tiny:q4_k_m", 60),
];
/// What a case may allocate beyond the file and its KV cache: the header parser's metadata
/// allowance (64 MiB past the file's size, for a header that is nearly all vocabulary), the tokenizer's tables, the
/// activations of a few-token forward pass, the allocator's rounding.
const SLACK: usize = 96 << 20;
const CONTEXT: usize = 16;

#[test]
fn crafted_gguf_files_end_in_a_result_or_a_clean_error() {
    let exe = std::env::current_exe().unwrap();
    let mut failures = Vec::new();
    for (key, cases) in CASES {
        let cases = std::env::var("MOA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
        let out = Command::new(&exe)
            .args(["--ignored", "--exact", "fuzz_worker", "--nocapture", "--test-threads=1"])
            .env("MOA_FUZZ_MODEL", key)
            .env("MOA_FUZZ_CASES", cases.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let summary = stdout.lines().rfind(|l| l.starts_with("fuzz ") && l.contains("cases")).unwrap_or("(no summary)").to_string();
        println!("{key}: {summary}");
        if !out.status.success() || !stdout.contains("fuzz done") {
            let last_case = stdout.lines().rfind(|l| l.starts_with("case ")).unwrap_or("(none)");
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            failures.push(format!(
                "{key}: worker {} (last case started: {last_case})\n{}\n{}",
                out.status,
                stdout.lines().filter(|l| l.starts_with("FAIL")).collect::<Vec<_>>().join("\n"),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
#[ignore = "one model's campaign, run by crafted_gguf_files_end_in_a_result_or_a_clean_error in a child process"]
fn fuzz_worker() {
    let key = std::env::var("MOA_FUZZ_MODEL").expect("MOA_FUZZ_MODEL names the test model");
    let cases: usize = std::env::var("MOA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let seed: u64 = std::env::var("MOA_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    let synth_dir = tempfile::tempdir().unwrap();
    let original = match key.strip_prefix("synthetic:") {
        Some(spec) => {
            use moa_local::model::synthetic::{write_synthetic, SyntheticSpec};
            let path = synth_dir.path().join(format!("{}.gguf", spec.replace(':', "-")));
            write_synthetic(&SyntheticSpec::parse(spec).unwrap(), &path, 1).unwrap();
            path
        }
        None => common::model_path(&key),
    };
    let file_len = std::fs::metadata(&original).unwrap().len();
    let bytes = read_prefix(&original, header_probe_len(&original));
    let layout = HeaderMap::of(&bytes);
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join(original.file_name().unwrap());
    std::fs::copy(&original, &work).unwrap();
    std::panic::set_hook(Box::new(|info| println!("PANIC {info}")));

    let mut rng = Rng(seed ^ (key.len() as u64 * 0x9e37_79b9_7f4a_7c15));
    let (mut ok, mut clean, mut failed) = (0, 0, 0);
    for i in 0..cases {
        let m = Mutation::pick(&mut rng, &layout, file_len, i);
        println!("case {i}: {m:?}");
        let saved = m.apply(&work, &original);
        let base = LIVE.load(Relaxed);
        PEAK.store(base, Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| load_and_step(&work)));
        let used = PEAK.load(Relaxed).saturating_sub(base);
        m.restore(&work, &original, saved);
        let kv = outcome.as_ref().ok().and_then(|r| r.as_ref().ok()).copied().unwrap_or(0);
        let allowed = file_len as usize + kv + SLACK;
        match outcome {
            Err(_) => {
                failed += 1;
                println!("FAIL case {i} {m:?}: panicked");
            }
            Ok(Err(e)) if !e.contains(work.file_stem().unwrap().to_str().unwrap()) => {
                failed += 1;
                println!("FAIL case {i} {m:?}: the error does not name the file: {e}");
            }
            Ok(Err(e)) if e.len() > 2048 => {
                failed += 1;
                println!("FAIL case {i} {m:?}: an error message of {} bytes: {}…", e.len(), &e[..e.floor_char_boundary(200)]);
            }
            Ok(Err(e)) => {
                clean += 1;
                println!("   error: {}", e.lines().next().unwrap_or(""));
            }
            Ok(Ok(_)) => ok += 1,
        }
        if used > allowed {
            failed += 1;
            println!("FAIL case {i} {m:?}: allocated {used} bytes at peak, over the file's {file_len} + KV {kv} + slack");
        }
    }
    println!("fuzz {cases} cases: {ok} loaded and generated, {clean} clean errors, {failed} failures");
    assert_eq!(failed, 0);
    println!("fuzz done");
}

/// Load the (mutated) file and generate one token; `Ok` carries the KV cache's bytes, `Err` the
/// error's text (a load error must name the file; a generation error comes from a model that
/// loaded, and is prefixed with the file's name here).
fn load_and_step(path: &Path) -> Result<usize, String> {
    let model = Model::load_uncached(path, &Device::Cpu).map_err(|e| e.to_string())?;
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let after_load = |e: moa_local::Error| format!("{name} (loaded): {e}");
    let ids = model.tokenizer.encode("Hello, world", true).map_err(after_load)?;
    let ids: Vec<u32> = ids.into_iter().take(CONTEXT - 1).collect();
    if ids.is_empty() {
        return Err(format!("{name} (loaded): the prompt encodes to no tokens"));
    }
    let mut cache = model.transformer.new_cache(CONTEXT).map_err(after_load)?;
    let logits = model.transformer.forward(&ids, &mut cache).map_err(after_load)?;
    let next = argmax(&logits);
    let _ = model.tokenizer.decode(&[next]);
    Ok(model.cfg().kv_bytes_per_token(2) as usize * CONTEXT)
}

/// Where the header ends, found by the layout walk on a generous prefix of the file.
fn header_probe_len(path: &Path) -> u64 {
    let len = std::fs::metadata(path).unwrap().len();
    len.min(64 << 20)
}

fn read_prefix(path: &Path, n: u64) -> Vec<u8> {
    let mut v = vec![0u8; n as usize];
    File::open(path).unwrap().read_exact(&mut v).unwrap();
    v
}

/// The header's numeric fields (offset and width) and where the tensor data starts, walked
/// independently of the library's parser.
struct HeaderMap {
    fields: Vec<(usize, usize)>,
    /// `fields[..kv_end]` are the header's counts and the metadata's; the rest the tensor table's.
    kv_end: usize,
    header_end: usize,
    data_start: usize,
}

impl HeaderMap {
    fn of(b: &[u8]) -> Self {
        let mut w = Walk { b, pos: 8, fields: Vec::new() };
        w.fields.push((4, 4)); // version
        let nt = w.num(8);
        let nkv = w.num(8);
        let mut alignment = 32;
        for _ in 0..nkv {
            let key = w.string(true);
            let ty = w.num(4) as u32;
            let v = w.value(ty, true);
            if key == "general.alignment" {
                alignment = v as usize;
            }
        }
        let kv_end = w.fields.len();
        for _ in 0..nt {
            w.string(true);
            let nd = w.num(4);
            for _ in 0..nd {
                w.num(8);
            }
            w.num(4);
            w.num(8);
        }
        let header_end = w.pos;
        HeaderMap { fields: w.fields, kv_end, header_end, data_start: header_end.div_ceil(alignment) * alignment }
    }
}

struct Walk<'a> {
    b: &'a [u8],
    pos: usize,
    fields: Vec<(usize, usize)>,
}

impl Walk<'_> {
    fn raw(&mut self, n: usize) -> u64 {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&self.b[self.pos..self.pos + n]);
        self.pos += n;
        u64::from_le_bytes(v)
    }
    /// A numeric field, recorded as a target.
    fn num(&mut self, n: usize) -> u64 {
        self.fields.push((self.pos, n));
        self.raw(n)
    }
    fn string(&mut self, record: bool) -> String {
        let n = if record { self.num(8) } else { self.raw(8) } as usize;
        let s = String::from_utf8_lossy(&self.b[self.pos..self.pos + n]).into_owned();
        self.pos += n;
        s
    }
    /// A value of type `ty`; array elements past the first two are skipped over, not recorded.
    fn value(&mut self, ty: u32, record: bool) -> u64 {
        let width = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                self.string(record);
                return 0;
            }
            9 => {
                let ety = self.num(4) as u32;
                let n = self.num(8);
                for i in 0..n {
                    self.value(ety, record && i < 2);
                }
                return 0;
            }
            t => panic!("unknown GGUF value type {t} in an unmutated test model"),
        };
        if record { self.num(width) } else { self.raw(width) }
    }
}

#[derive(Debug)]
enum Mutation {
    /// Write `value` (truncated to the field's width) at a numeric field.
    Field { at: usize, width: usize, value: u64 },
    /// XOR bytes of the header.
    Flip { at: Vec<(usize, u8)> },
    Truncate { len: u64 },
    /// Overwrite `len` bytes of the tensor data from `start` with `fill`.
    Weights { start: u64, len: u64, fill: u8 },
}

const BOUNDARIES: [u64; 16] = [
    0, 1, 2, 3, 7, 0x7f, 0xff, 0x7fff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 1 << 32, 1 << 40, 1 << 62, 1 << 63, u64::MAX,
];

impl Mutation {
    fn pick(rng: &mut Rng, l: &HeaderMap, file_len: u64, i: usize) -> Self {
        match i % 10 {
            0..=4 => {
                // Half on the metadata (fewer fields than the tensor table, each read differently).
                let (lo, hi) = if i.is_multiple_of(2) { (0, l.kv_end) } else { (l.kv_end, l.fields.len()) };
                let (at, width) = l.fields[lo + rng.below((hi - lo) as u64) as usize];
                let value = if rng.below(4) == 0 { rng.next() } else { BOUNDARIES[rng.below(16) as usize] };
                Mutation::Field { at, width, value }
            }
            5 | 6 => {
                let n = 1 + rng.below(4) as usize;
                Mutation::Flip { at: (0..n).map(|_| (rng.below(l.header_end as u64) as usize, 1 + rng.below(255) as u8)).collect() }
            }
            7 => {
                let len = if rng.below(2) == 0 { rng.below(l.header_end as u64) } else { l.data_start as u64 + rng.below(file_len - l.data_start as u64) };
                Mutation::Truncate { len }
            }
            _ => {
                let span = file_len - l.data_start as u64;
                let start = l.data_start as u64 + rng.below(span);
                let len = (1 + rng.below(64)).min(file_len - start);
                let fill = if rng.below(2) == 0 { 0xff } else { rng.next() as u8 };
                Mutation::Weights { start, len, fill }
            }
        }
    }

    /// Apply to `work` (a copy of `original`); returns the bytes overwritten.
    fn apply(&self, work: &Path, _original: &Path) -> Vec<(u64, Vec<u8>)> {
        let f = OpenOptions::new().read(true).write(true).open(work).unwrap();
        let mut saved = Vec::new();
        let mut put = |at: u64, new: &[u8]| {
            let mut old = vec![0u8; new.len()];
            f.read_exact_at(&mut old, at).unwrap();
            f.write_all_at(new, at).unwrap();
            saved.push((at, old));
        };
        match self {
            Mutation::Field { at, width, value } => put(*at as u64, &value.to_le_bytes()[..*width]),
            Mutation::Flip { at } => {
                for &(o, x) in at {
                    let mut b = [0u8];
                    f.read_exact_at(&mut b, o as u64).unwrap();
                    put(o as u64, &[b[0] ^ x]);
                }
            }
            Mutation::Truncate { len } => f.set_len(*len).unwrap(),
            Mutation::Weights { start, len, fill } => put(*start, &vec![*fill; *len as usize]),
        }
        saved
    }

    fn restore(&self, work: &Path, original: &Path, saved: Vec<(u64, Vec<u8>)>) {
        let mut f = OpenOptions::new().read(true).write(true).open(work).unwrap();
        if let Mutation::Truncate { len } = self {
            let mut src = File::open(original).unwrap();
            src.seek(SeekFrom::Start(*len)).unwrap();
            f.seek(SeekFrom::Start(*len)).unwrap();
            std::io::copy(&mut src, &mut f).unwrap();
        }
        for (at, old) in saved.into_iter().rev() {
            f.write_all_at(&old, at).unwrap();
        }
        f.flush().unwrap();
    }
}

/// splitmix64: the same cases on every machine and every `rand` version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
