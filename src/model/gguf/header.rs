//! The GGUF header parser: magic, version, metadata and tensor table, read with every size that
//! comes from the file checked before it is used. Counts and lengths are bounded by the bytes left
//! in the file, the metadata's memory by a budget tied to the file's size, a tensor's element and
//! byte counts by checked products, and its data must lie aligned inside the file. A crafted file
//! ends in an error that names the key or tensor, the value found and the limit; nothing is
//! allocated for a size that has not passed those checks.
//!
//! The result is candle's `gguf_file::Content`, so the rest of the crate (and candle's own
//! readers, used on GPUs) see the same structure they always did.

use std::collections::HashMap;
use std::io::Read;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;

/// Longest tensor name llama.cpp accepts (`GGML_MAX_NAME` − 1).
const MAX_TENSOR_NAME: u64 = 63;
/// Dimensions of a tensor (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Nested arrays deeper than this are refused (no real file nests at all).
const MAX_DEPTH: usize = 4;
/// Metadata memory allowed beyond the file's size (a value in memory can be larger than on disk:
/// a one-byte `u8` array element is a 32-byte `Value`).
const METADATA_SLACK: u64 = 64 << 20;
/// Memory counted for each metadata entry or tensor-table entry beyond its strings and values:
/// the map's slot, the `TensorInfo` and its shape (a few dozen bytes each; counted generously).
const ENTRY_BYTES: u64 = 128;
/// Default `general.alignment`.
const DEFAULT_ALIGNMENT: u64 = 32;

/// Parse a GGUF header from `r`, a reader at the file's first byte; `file_size` bounds every
/// length read. `Err` is the reason, without the path (the caller adds it).
pub fn parse(r: impl Read, file_size: u64) -> Result<Content, String> {
    let mut p = Parser { r, pos: 0, file_size, wide: true, budget: file_size.saturating_add(METADATA_SLACK) };
    let mut magic = [0u8; 4];
    p.bytes(&mut magic, "magic")?;
    if &magic != b"GGUF" {
        return Err(format!("missing GGUF magic (the file starts with {magic:02x?}, not \"GGUF\")"));
    }
    let version = p.u32("version")?;
    let magic = match version {
        1 => VersionedMagic::GgufV1,
        2 => VersionedMagic::GgufV2,
        3 => VersionedMagic::GgufV3,
        v => return Err(format!("GGUF version {v} is not supported (1, 2 and 3 are)")),
    };
    p.wide = version > 1;
    let tensor_count = p.len("tensor count")?;
    let kv_count = p.len("metadata key count")?;
    // Each key/value takes at least a length, a type and one byte; each tensor entry a name
    // length, its dimension count, type and offset.
    let (kv_min, t_min) = (p.len_size() + 4 + 1, p.len_size() + 4 + 4 + 8);
    let need = kv_count.checked_mul(kv_min).zip(tensor_count.checked_mul(t_min)).and_then(|(a, b)| a.checked_add(b));
    if need.is_none_or(|n| n > p.left()) {
        return Err(format!(
            "truncated or corrupt: the header declares {tensor_count} tensors and {kv_count} metadata keys, more than the {} bytes left in the file can hold",
            p.left()
        ));
    }

    let mut metadata = HashMap::new();
    for i in 0..kv_count {
        let key = p.string(&format!("metadata key #{i}"))?;
        // Messages quote at most the key's first 64 characters: a corrupt length can make a
        // "key" of the whole rest of the file.
        let label = shown(&key);
        p.spend(ENTRY_BYTES, &label)?;
        let ty = p.u32(&format!("type of `{label}`"))?;
        let value = p.value(ty, &label, 0)?;
        if metadata.contains_key(&key) {
            return Err(format!("metadata key `{label}` appears twice"));
        }
        metadata.insert(key, value);
    }

    let mut infos = Vec::new();
    let mut tensor_infos = HashMap::new();
    for i in 0..tensor_count {
        let name = p.string(&format!("name of tensor #{i}"))?;
        if name.len() as u64 > MAX_TENSOR_NAME {
            return Err(format!("tensor #{i}: name of {} bytes exceeds the limit of {MAX_TENSOR_NAME}", name.len()));
        }
        p.spend(ENTRY_BYTES, &name)?;
        let n_dims = p.u32(&format!("tensor `{name}`: dimension count"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!("tensor `{name}`: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(p.len(&format!("tensor `{name}`: dimension {d}"))?);
        }
        let ty = p.u32(&format!("tensor `{name}`: type"))?;
        let offset = p.u64(&format!("tensor `{name}`: offset"))?;
        let dtype = dtype_of(ty).map_err(|e| format!("tensor `{name}`: {e}"))?;
        let bytes = tensor_size(dtype, &dims).map_err(|e| format!("tensor `{name}`: {e}"))?;
        // GGUF stores ne0 (the row length) first; candle's shape is row-major, so reversed.
        let shape: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
        infos.push((name.clone(), offset, bytes));
        let info = TensorInfo { ggml_dtype: dtype, shape: shape.into(), offset };
        if tensor_infos.insert(name.clone(), info).is_some() {
            return Err(format!("tensor `{name}` appears twice in the tensor table"));
        }
    }

    let alignment = alignment(&metadata)?;
    // (A file without tensors, such as llama.cpp's vocabulary files, may end right after the
    // header, unpadded; every tensor's own end is checked against the file below.)
    let data_offset = p.pos.div_ceil(alignment).checked_mul(alignment).ok_or_else(|| {
        format!("tensor data would start past byte {} (aligned to {alignment}), beyond any file", p.pos)
    })?;
    for (name, offset, bytes) in infos {
        if offset % alignment != 0 {
            return Err(format!("tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"));
        }
        let end = data_offset.checked_add(offset).and_then(|s| s.checked_add(bytes));
        match end {
            Some(end) if end <= file_size => {}
            _ => {
                return Err(format!(
                    "truncated: tensor `{name}` ({bytes} bytes at data offset {offset}) ends past the file's {file_size} bytes"
                ))
            }
        }
    }
    Ok(Content { magic, metadata, tensor_infos, tensor_data_offset: data_offset })
}

/// Bytes of a tensor of GGUF dimensions `dims` (ne0 first): the element count is a checked
/// product, the row length a whole number of blocks, and the total at most `i64::MAX` bytes
/// (llama.cpp's limit).
fn tensor_size(dtype: GgmlDType, dims: &[u64]) -> Result<u64, String> {
    if let Some(d) = dims.iter().position(|&d| d == 0) {
        return Err(format!("dimension {d} is 0"));
    }
    let elems = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    let elems = elems.filter(|&e| e <= i64::MAX as u64).ok_or_else(|| format!("dimensions {dims:?} overflow the element count"))?;
    let block = dtype.block_size() as u64;
    if !dims[0].is_multiple_of(block) {
        return Err(format!("row length {} is not a multiple of the {dtype:?} block size {block}", dims[0]));
    }
    (elems / block)
        .checked_mul(dtype.type_size() as u64)
        .filter(|&b| b <= i64::MAX as u64)
        .ok_or_else(|| format!("dimensions {dims:?} of {dtype:?} overflow the byte count"))
}

/// GGML type ids (ggml.h's `ggml_type`) that candle represents; the others are named in the error.
fn dtype_of(id: u32) -> Result<GgmlDType, String> {
    Ok(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => {
            const NAMES: [(u32, &str); 14] = [
                (16, "IQ2_XXS"), (17, "IQ2_XS"), (18, "IQ3_XXS"), (19, "IQ1_S"), (20, "IQ4_NL"), (21, "IQ3_S"),
                (22, "IQ2_S"), (23, "IQ4_XS"), (24, "I8"), (25, "I16"), (26, "I32"), (27, "I64"), (28, "F64"),
                (29, "IQ1_M"),
            ];
            return Err(match NAMES.iter().find(|(i, _)| *i == id) {
                Some((_, n)) => format!("weight type {n} (GGML type {id}) is not supported"),
                None => format!("unknown GGML type {id}"),
            });
        }
    })
}

/// `s` as quoted in an error: its first 64 characters, then `…` if it is longer.
fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

fn alignment(metadata: &HashMap<String, Value>) -> Result<u64, String> {
    let a = match metadata.get("general.alignment") {
        None => return Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) => *a as u64,
        Some(v) => return Err(format!("metadata field `general.alignment` should be a u32, found {v:?}")),
    };
    if !a.is_power_of_two() {
        return Err(format!("metadata field `general.alignment` is {a}, not a power of two"));
    }
    Ok(a)
}

struct Parser<R> {
    r: R,
    pos: u64,
    file_size: u64,
    /// Lengths are u64 (GGUF v2+) rather than u32 (v1).
    wide: bool,
    /// Bytes of metadata memory still allowed.
    budget: u64,
}

impl<R: Read> Parser<R> {
    fn left(&self) -> u64 {
        self.file_size.saturating_sub(self.pos)
    }

    fn bytes(&mut self, buf: &mut [u8], what: &str) -> Result<(), String> {
        self.r.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => format!("truncated: the file ends inside the header ({what}, byte {})", self.pos),
            _ => format!("reading the header ({what}, byte {}): {e}", self.pos),
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.bytes(&mut b, what)?;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn len_size(&self) -> u64 {
        if self.wide { 8 } else { 4 }
    }

    /// A count or length (u64 in v2+, u32 in v1).
    fn len(&mut self, what: &str) -> Result<u64, String> {
        if self.wide { self.u64(what) } else { self.u32(what).map(u64::from) }
    }

    /// Take `bytes` of metadata memory from the budget.
    fn spend(&mut self, bytes: u64, what: &str) -> Result<(), String> {
        self.budget = self.budget.checked_sub(bytes).ok_or_else(|| {
            format!("metadata ({what}) would take more memory than the file's size plus {} MiB (a corrupt or crafted length)", METADATA_SLACK >> 20)
        })?;
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.len(what)?;
        if n > self.left() {
            return Err(format!("{what}: string of {n} bytes, but only {} bytes are left in the file", self.left()));
        }
        self.spend(n, what)?;
        let mut v = vec![0u8; n as usize];
        self.bytes(&mut v, what)?;
        // Strings are not NUL-terminated by the spec, but some writers add one.
        while v.last() == Some(&0) {
            v.pop();
        }
        match String::from_utf8(v) {
            Ok(s) => Ok(s),
            Err(e) => {
                // Lossy conversion writes up to three bytes per invalid byte, beside the original.
                // (Each invalid sequence becomes U+FFFD, as `from_utf8_lossy` does; the string is
                // sized exactly, so the budget spent is what is allocated.)
                let chunks = || e.as_bytes().utf8_chunks();
                let lossy: usize = chunks().map(|c| c.valid().len() + if c.invalid().is_empty() { 0 } else { 3 }).sum();
                self.spend(lossy as u64, what)?;
                let mut s = String::with_capacity(lossy);
                for c in chunks() {
                    s.push_str(c.valid());
                    if !c.invalid().is_empty() {
                        s.push(char::REPLACEMENT_CHARACTER);
                    }
                }
                self.budget += n;
                Ok(s)
            }
        }
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("metadata field `{key}`: bool byte is {b}, not 0 or 1")),
            },
            8 => Value::String(self.string(&format!("value of `{key}`"))?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("metadata field `{key}`: arrays nested deeper than {MAX_DEPTH}"));
                }
                let ety = self.u32(key)?;
                let n = self.len(key)?;
                let min = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    10..=12 => 8,
                    8 => self.len_size(),
                    9 => 4 + self.len_size(),
                    t => return Err(format!("metadata field `{key}`: unknown array element type {t}")),
                };
                if n.checked_mul(min).is_none_or(|b| b > self.left()) {
                    return Err(format!(
                        "metadata field `{key}`: array of {n} elements, but only {} bytes are left in the file",
                        self.left()
                    ));
                }
                self.spend(n * std::mem::size_of::<Value>() as u64, key)?;
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            t => return Err(format!("metadata field `{key}`: unknown value type {t}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 with `kv` (key, type, value bytes) and one F32 tensor of GGUF dims `dims` at
    /// data offset 0, its data zero-filled to `data` bytes.
    fn file(kv: &[(&str, u32, Vec<u8>)], dims: &[u64], data: usize) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend((kv.len() as u64).to_le_bytes());
        let s = |b: &mut Vec<u8>, t: &str| {
            b.extend((t.len() as u64).to_le_bytes());
            b.extend(t.as_bytes());
        };
        for (k, ty, v) in kv {
            s(&mut b, k);
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        s(&mut b, "w");
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(0u64.to_le_bytes());
        b.resize(b.len().div_ceil(32) * 32 + data, 0);
        b
    }

    fn parse_bytes(b: &[u8]) -> Result<Content, String> {
        parse(b, b.len() as u64)
    }

    #[test]
    fn a_well_formed_file_parses() {
        let c = parse_bytes(&file(&[("general.alignment", 4, 32u32.to_le_bytes().to_vec())], &[4, 2], 32)).unwrap();
        assert_eq!(c.tensor_infos["w"].shape.dims(), &[2, 4]);
        assert_eq!(c.tensor_data_offset % 32, 0);
    }

    #[test]
    fn crafted_sizes_are_errors_naming_the_field() {
        let align = |a: u32| vec![("general.alignment", 4, a.to_le_bytes().to_vec())];
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (file(&align(0), &[4], 16), "not a power of two"),
            (file(&align(24), &[4], 16), "not a power of two"),
            (file(&[], &[1 << 62, 4], 64), "overflow the element count"),
            (file(&[], &[1 << 40, 1 << 30], 64), "overflow"),
            (file(&[], &[4, 0], 64), "dimension 1 is 0"),
            (file(&[], &[1 << 20], 64), "ends past the file"),
            (file(&[("k", 9, [8u32.to_le_bytes().as_slice(), &u64::MAX.to_le_bytes()].concat())], &[4], 16), "array of"),
            (file(&[("k", 8, u64::MAX.to_le_bytes().to_vec())], &[4], 16), "only"),
            (file(&[("k", 4, vec![1, 0, 0, 0]), ("k", 4, vec![2, 0, 0, 0])], &[4], 16), "appears twice"),
            (file(&[("k", 13, vec![])], &[4], 16), "unknown value type 13"),
        ];
        for (i, (b, want)) in cases.iter().enumerate() {
            let e = parse_bytes(b).map(|_| ()).unwrap_err();
            assert!(e.contains(want), "case {i}: expected {want:?} in {e:?}");
        }
        // Every truncation of a good file is an error, never a panic.
        let good = file(&[("general.name", 8, [4u64.to_le_bytes().as_slice(), b"test"].concat())], &[8], 32);
        for n in 0..good.len() - 1 {
            assert!(parse_bytes(&good[..n]).is_err(), "truncated at {n}");
        }
    }
}
