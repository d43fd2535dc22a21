//! A loaded model: transformer weights + tokenizer + chat template of one GGUF file on one
//! device. Loading goes through a process-wide registry so that opening the same file twice on
//! the same device shares the weights (each sequence still gets its own KV cache).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use candle_core::Device;

use crate::error::Result;
use crate::model::arch::Config;
use crate::model::gguf::{sha256_file, GgufFile};
use crate::model::template::ChatTemplate;
use crate::model::tokenizer::GgufTokenizer;
use crate::model::network::Network;

pub struct Model {
    /// Display name (file stem unless the caller gave an alias).
    pub name: String,
    pub path: PathBuf,
    /// The forward pass (native, or candle-transformers' for the architectures it alone has).
    pub transformer: Network,
    pub tokenizer: GgufTokenizer,
    pub template: ChatTemplate,
    pub file_size: u64,
    pub load_secs: f64,
    sha256: OnceLock<String>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("name", &self.name).field("path", &self.path).finish()
    }
}

type Key = (PathBuf, String);

fn registry() -> &'static Mutex<HashMap<Key, Weak<Model>>> {
    static R: OnceLock<Mutex<HashMap<Key, Weak<Model>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

fn device_key(d: &Device) -> String {
    format!("{:?}", d.location())
}

impl Model {
    /// Load `path` onto `device`, or return the copy already loaded in this process.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Arc<Model>> {
        let path = path.as_ref();
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let key = (canon, device_key(device));
        // Holding the lock while loading makes a concurrent second open wait and then share.
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = reg.get(&key).and_then(Weak::upgrade) {
            return Ok(m);
        }
        let m = Arc::new(Self::load_uncached(path, device)?);
        reg.retain(|_, w| w.strong_count() > 0);
        reg.insert(key, Arc::downgrade(&m));
        Ok(m)
    }

    /// Load without consulting the registry (always reads the file).
    pub fn load_uncached(path: &Path, device: &Device) -> Result<Model> {
        weights_in_own_mappings(true);
        let m = Self::read(path, device);
        weights_in_own_mappings(false);
        m
    }

    fn read(path: &Path, device: &Device) -> Result<Model> {
        let start = Instant::now();
        let mut g = GgufFile::open(path)?;
        let file_size = g.file_size;
        let cfg = Config::from_gguf(&g)?;
        let tokenizer = GgufTokenizer::from_gguf(&g)?;
        let template = ChatTemplate::from_gguf(&g, &tokenizer)?;
        // The vocabulary arrays are the bulk of the header; their pages go back before the
        // weights load, so they never add to the load's peak.
        g.drop_vocabulary();
        release_freed_memory();
        let transformer = Network::load(&g, cfg, device)?;
        drop(g);

        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Model {
            name,
            path: path.to_path_buf(),
            transformer,
            tokenizer,
            template,
            file_size,
            load_secs: start.elapsed().as_secs_f64(),
            sha256: OnceLock::new(),
        })
    }

    /// Number of distinct models currently loaded in this process.
    pub fn loaded_count() -> usize {
        registry().lock().map(|r| r.values().filter(|w| w.strong_count() > 0).count()).unwrap_or(0)
    }

    pub fn cfg(&self) -> &Config {
        &self.transformer.cfg
    }

    pub fn context_length(&self) -> usize {
        self.cfg().context_length
    }

    /// sha256 of the GGUF file (computed once, on first use).
    pub fn sha256(&self) -> Result<String> {
        if let Some(s) = self.sha256.get() {
            return Ok(s.clone());
        }
        let s = sha256_file(&self.path)?;
        Ok(self.sha256.get_or_init(|| s).clone())
    }
}

/// Hand freed heap memory (the header's metadata arrays, tokenizer build temporaries: many
/// small blocks) back to the OS, so resident memory reflects what the model keeps.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Weights are large allocations freed when a model is evicted. glibc raises its mmap threshold
/// after the first large free and then serves later tensors from heaps it never returns, so an
/// evicted model would keep its memory. While a model loads (loads are serialised by the
/// registry lock) the threshold is 1 MiB, so every tensor gets its own mapping, returned to the OS
/// when freed; afterwards it is 32 MiB (glibc's ceiling), so the megabyte-sized activations of a
/// forward pass are reused from the heap instead of being mapped, faulted in and unmapped per op.
/// For the same reason freed heap tops up to 64 MiB are kept after a load (glibc's default trims
/// anything over 128 KiB, so every prefill op faulted its output in afresh: 200k page faults, ~4%
/// of a Qwen pp128); unloading a model still trims the heap explicitly.
fn weights_in_own_mappings(on: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, if on { 1 << 20 } else { 32 << 20 });
        libc::mallopt(libc::M_TRIM_THRESHOLD, if on { 128 << 10 } else { 64 << 20 });
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = on;
}
