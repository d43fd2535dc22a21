//! Opening a GGUF file: header + metadata + tensor table, parsed and validated up front by
//! [`header`] (every size checked, every tensor inside the file) so a truncated, foreign or crafted
//! file fails with an error naming the file before any weight is read. Typed metadata accessors
//! report the missing or mistyped field by name.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use super::cpu_tensor;

mod header;
use crate::error::{Error, Result};

/// A parsed GGUF header with the path it came from.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    pub file_size: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile").field("path", &self.path).field("file_size", &self.file_size).finish()
    }
}

impl GgufFile {
    /// Parse the header and check that every tensor's bytes lie inside the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(Error::MissingFile { path });
        }
        let file = File::open(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let file_size = file.metadata().map_err(|source| Error::Io { path: path.clone(), source })?.len();
        let content = header::parse(BufReader::new(file), file_size)
            .map_err(|reason| Error::BadGguf { path: path.clone(), reason })?;
        Ok(Self { path, content, file_size })
    }

    /// Drop the vocabulary arrays (`tokenizer.ggml.tokens`, `merges`, `scores`, `token_type`)
    /// once the tokenizer has been built from them. As parsed, each entry is a metadata value plus
    /// its own string allocation (about 7 MiB for SmolLM2's 49k tokens, 25 MiB for Qwen's 151k):
    /// kept until the end of the load they would add to its peak beside every weight.
    pub fn drop_vocabulary(&mut self) {
        for key in ["tokens", "merges", "scores", "token_type"] {
            self.content.metadata.remove(&format!("tokenizer.ggml.{key}"));
        }
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn architecture(&self) -> Result<String> {
        Ok(self.str("general.architecture")?.to_string())
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| self.field_err(key, "is missing"))
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    pub fn field_err(&self, key: &str, problem: &str) -> Error {
        Error::Metadata { path: self.path.clone(), field: key.to_string(), problem: problem.to_string() }
    }

    pub fn u32(&self, key: &str) -> Result<u32> {
        let v = self.get(key)?;
        let n = match v {
            Value::U8(x) => Some(*x as u64),
            Value::U16(x) => Some(*x as u64),
            Value::U32(x) => Some(*x as u64),
            Value::U64(x) => Some(*x),
            Value::I8(x) if *x >= 0 => Some(*x as u64),
            Value::I16(x) if *x >= 0 => Some(*x as u64),
            Value::I32(x) if *x >= 0 => Some(*x as u64),
            Value::I64(x) if *x >= 0 => Some(*x as u64),
            _ => None,
        };
        n.and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.field_err(key, &format!("should be a non-negative integer, found {v:?}")))
    }

    pub fn u32_or(&self, key: &str, default: u32) -> Result<u32> {
        if self.has(key) { self.u32(key) } else { Ok(default) }
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        match self.get(key)? {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            v => Err(self.field_err(key, &format!("should be a float, found {v:?}"))),
        }
    }

    pub fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        if self.has(key) { self.f32(key) } else { Ok(default) }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.content.metadata.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.field_err(key, &format!("should be a bool, found {v:?}"))),
        }
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            _ => Err(self.field_err(key, "should be a string")),
        }
    }

    pub fn opt_str(&self, key: &str) -> Option<&str> {
        match self.content.metadata.get(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    fn array(&self, key: &str) -> Result<&Vec<Value>> {
        match self.get(key)? {
            Value::Array(a) => Ok(a),
            _ => Err(self.field_err(key, "should be an array")),
        }
    }

    pub fn str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(self.field_err(key, "should be an array of strings")),
            })
            .collect()
    }

    pub fn f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                _ => Err(self.field_err(key, "should be an array of floats")),
            })
            .collect()
    }

    pub fn i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::I32(x) => Ok(*x),
                Value::U32(x) => Ok(*x as i32),
                Value::I8(x) => Ok(*x as i32),
                Value::U8(x) => Ok(*x as i32),
                _ => Err(self.field_err(key, "should be an array of integers")),
            })
            .collect()
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Shape (in GGUF's reversed order: rows, cols) and type of a tensor.
    pub fn tensor_info(&self, name: &str) -> Option<(Vec<usize>, GgmlDType)> {
        self.content.tensor_infos.get(name).map(|i| (i.shape.dims().to_vec(), i.ggml_dtype))
    }

    /// Bytes of all tensor data, as stored.
    pub fn tensor_data_bytes(&self) -> u64 {
        self.content.tensor_infos.values().map(|i| tensor_bytes(i.ggml_dtype, i.shape.elem_count())).sum()
    }

    /// Open a reader for loading tensors.
    pub fn reader(&self) -> Result<BufReader<File>> {
        let f = File::open(&self.path).map_err(|source| Error::Io { path: self.path.clone(), source })?;
        Ok(BufReader::new(f))
    }

    /// Read one tensor onto `device` (on the CPU with a single copy, see [`cpu_tensor`]).
    pub fn tensor<R: Read + Seek>(&self, reader: &mut R, name: &str, device: &Device) -> Result<QTensor> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Err(Error::BadGguf { path: self.path.clone(), reason: format!("tensor `{name}` is missing") });
        };
        let bad = |e: String| Error::BadGguf { path: self.path.clone(), reason: format!("tensor `{name}`: {e}") };
        if !device.is_cpu() {
            return self.content.tensor(reader, name, device).map_err(|e| bad(crate::error::candle_message(&e)));
        }
        reader
            .seek(SeekFrom::Start(self.content.tensor_data_offset + info.offset))
            .map_err(|e| bad(format!("seeking to its data: {e}")))?;
        cpu_tensor::read(reader, info.ggml_dtype, info.shape.clone()).map_err(bad)
    }
}

impl GgufFile {
    /// Read a 3-D tensor `[n, rows, cols]` (a layer's experts) as `n` separate `[rows, cols]`
    /// tensors: each expert's blocks are contiguous in the file, so expert `i` is the `i`-th
    /// slice of the data, read on its own (the kernels then run only the experts a token picks).
    pub fn tensor_experts<R: Read + Seek>(&self, reader: &mut R, name: &str, device: &Device) -> Result<Vec<QTensor>> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Err(Error::BadGguf { path: self.path.clone(), reason: format!("tensor `{name}` is missing") });
        };
        let bad = |e: String| Error::BadGguf { path: self.path.clone(), reason: format!("tensor `{name}`: {e}") };
        let &[n, rows, cols] = info.shape.dims() else {
            return Err(bad(format!("has shape {:?}, expected 3 dimensions (experts, rows, columns)", info.shape.dims())));
        };
        let slice = self.row_bytes(name, info.ggml_dtype, cols)?.checked_mul(rows as u64).ok_or_else(|| bad("an expert's size overflows".into()))?;
        (0..n as u64).map(|i| self.read_rows(reader, name, i.checked_mul(slice), rows, cols, device)).collect()
    }

    /// Read a matrix `[rows, cols]` as consecutive row groups of `parts` rows each (a fused
    /// Q/K/V or gate/up projection as its separate matrices): rows are whole blocks in the file,
    /// so each group is a byte range of the data, read as it is.
    pub fn tensor_row_groups<R: Read + Seek>(&self, reader: &mut R, name: &str, parts: &[usize], device: &Device) -> Result<Vec<QTensor>> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Err(Error::BadGguf { path: self.path.clone(), reason: format!("tensor `{name}` is missing") });
        };
        let bad = |e: String| Error::BadGguf { path: self.path.clone(), reason: format!("tensor `{name}`: {e}") };
        let &[rows, cols] = info.shape.dims() else {
            return Err(bad(format!("has shape {:?}, expected a matrix", info.shape.dims())));
        };
        if parts.iter().try_fold(0usize, |a, &p| a.checked_add(p)) != Some(rows) {
            return Err(bad(format!("has {rows} rows, not the {parts:?} its parts need")));
        }
        let row = self.row_bytes(name, info.ggml_dtype, cols)?;
        let mut first = 0u64;
        let mut out = Vec::with_capacity(parts.len());
        for &p in parts {
            out.push(self.read_rows(reader, name, first.checked_mul(row), p, cols, device)?);
            first += p as u64;
        }
        Ok(out)
    }

    /// Bytes of one row of `cols` elements of `dtype` (a whole number of blocks, or an error).
    fn row_bytes(&self, name: &str, dtype: GgmlDType, cols: usize) -> Result<u64> {
        if !cols.is_multiple_of(dtype.block_size()) {
            return Err(Error::BadGguf {
                path: self.path.clone(),
                reason: format!("tensor `{name}`: rows of {cols} are not a whole number of {dtype:?} blocks"),
            });
        }
        Ok((cols / dtype.block_size() * dtype.type_size()) as u64)
    }

    /// `rows × cols` of tensor `name` starting `at` bytes into its data (`None`: the offset
    /// overflowed), as a tensor of its own.
    fn read_rows<R: Read + Seek>(&self, reader: &mut R, name: &str, at: Option<u64>, rows: usize, cols: usize, device: &Device) -> Result<QTensor> {
        let info = &self.content.tensor_infos[name];
        let bad = |e: String| Error::BadGguf { path: self.path.clone(), reason: format!("tensor `{name}`: {e}") };
        let dtype = info.ggml_dtype;
        let start = at
            .and_then(|o| o.checked_add(info.offset))
            .and_then(|o| o.checked_add(self.content.tensor_data_offset))
            .ok_or_else(|| bad("a slice's offset overflows".into()))?;
        reader.seek(SeekFrom::Start(start)).map_err(|e| bad(format!("seeking to byte {start}: {e}")))?;
        let shape = candle_core::Shape::from((rows, cols));
        if device.is_cpu() {
            return cpu_tensor::read(reader, dtype, shape).map_err(|e| bad(format!("rows at byte {start}: {e}")));
        }
        let len = self.row_bytes(name, dtype, cols)?.checked_mul(rows as u64).ok_or_else(|| bad("a slice's size overflows".into()))?;
        let mut raw = vec![0u8; usize::try_from(len).map_err(|_| bad("a slice's size overflows".into()))?];
        reader.read_exact(&mut raw).map_err(|e| bad(format!("reading {len} bytes at {start}: {e}")))?;
        candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, &raw, vec![rows, cols], device)
            .map_err(|e| bad(crate::error::candle_message(&e)))
    }
}

/// Bytes occupied by `elems` elements of `dtype`.
pub fn tensor_bytes(dtype: GgmlDType, elems: usize) -> u64 {
    (elems / dtype.block_size() * dtype.type_size()) as u64
}

/// sha256 of a file, hex encoded (streamed; used for run reports).
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}
