//! The runtime's model pool: resolves names through the catalog, loads each file once per
//! device (every role a model plays shares one copy), and runs generations on blocking worker
//! threads so async callers (MoA, the server) can run several at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::Device;

use crate::engine::Control;
use crate::error::{Error, Result};
use crate::model::catalog::Catalog;
use crate::model::{GenerateRequest, Generation, Model};
use crate::runtime::device::DeviceSpec;

/// What a run report records about one loaded model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadedInfo {
    pub name: String,
    pub path: PathBuf,
    pub arch: String,
    pub file_bytes: u64,
    pub load_secs: f64,
    pub device: String,
}

pub struct Runtime {
    catalog: Catalog,
    spec: DeviceSpec,
    device: Device,
    /// Loaded models by resolved path; names map onto them.
    models: Mutex<HashMap<PathBuf, Arc<Model>>>,
    names: Mutex<HashMap<String, PathBuf>>,
}

impl Runtime {
    pub fn new(spec: DeviceSpec) -> Result<Self> {
        Ok(Self {
            catalog: Catalog::load()?,
            device: spec.open()?,
            spec,
            models: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
        })
    }

    pub fn device_spec(&self) -> DeviceSpec {
        self.spec
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The file a model name refers to.
    pub fn resolve(&self, name: &str) -> Result<PathBuf> {
        if let Some(p) = self.names.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(p.clone());
        }
        let p = self.catalog.resolve(name)?;
        let p = std::fs::canonicalize(&p).unwrap_or(p);
        self.names.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), p.clone());
        Ok(p)
    }

    /// Load (or reuse) the model `name` on this runtime's device. Blocking.
    pub fn load_blocking(&self, name: &str) -> Result<Arc<Model>> {
        let path = self.resolve(name)?;
        if let Some(m) = self.models.lock().unwrap_or_else(|p| p.into_inner()).get(&path) {
            return Ok(m.clone());
        }
        let m = Model::load(&path, &self.device)?;
        self.models.lock().unwrap_or_else(|p| p.into_inner()).insert(path, m.clone());
        Ok(m)
    }

    /// Load on a blocking thread.
    pub async fn load(self: &Arc<Self>, name: &str) -> Result<Arc<Model>> {
        let this = self.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || this.load_blocking(&name))
            .await
            .map_err(|e| Error::Other(format!("model loading thread failed: {e}")))?
    }

    /// Drop the runtime's reference to a model (it is freed once no generation uses it).
    pub fn unload(&self, name: &str) -> bool {
        let Ok(path) = self.resolve(name) else { return false };
        self.models.lock().unwrap_or_else(|p| p.into_inner()).remove(&path).is_some()
    }

    /// Models currently held, as report entries.
    pub fn loaded(&self) -> Vec<LoadedInfo> {
        let models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<LoadedInfo> = models.values().map(|m| self.info(m)).collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    pub fn info(&self, m: &Model) -> LoadedInfo {
        LoadedInfo {
            name: m.name.clone(),
            path: m.path.clone(),
            arch: format!("{:?}", m.cfg().arch).to_lowercase(),
            file_bytes: m.file_size,
            load_secs: m.load_secs,
            device: self.spec.to_string(),
        }
    }

    /// Run one generation on a blocking worker thread; `on_text` receives the streamed pieces.
    pub async fn generate(
        model: Arc<Model>,
        req: GenerateRequest,
        mut on_text: impl FnMut(&str) -> Control + Send + 'static,
    ) -> Result<Generation> {
        tokio::task::spawn_blocking(move || model.generate(&req, &mut on_text))
            .await
            .map_err(|e| Error::Other(format!("generation thread failed: {e}")))?
    }
}
