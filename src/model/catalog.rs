//! Model names → GGUF files. A name is a path to a `.gguf` file, or an alias from
//! `models/catalog.toml` (compiled in; `$MOA_CATALOG` may point at another file): a bundled
//! test model found under the models folder, or a hub file resolved through hf-hub's cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const BUILTIN: &str = include_str!("../../models/catalog.toml");

/// The test models `moa-local` uses when no `--models` is given.
pub const DEFAULT_MODELS: &[&str] = &["qwen-coder", "smollm2"];

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Entry {
    pub repo: Option<String>,
    pub file: String,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub entries: BTreeMap<String, Entry>,
}

impl Catalog {
    pub fn load() -> Result<Self> {
        match std::env::var_os("MOA_CATALOG") {
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|source| Error::Io { path: PathBuf::from(&p), source })?;
                Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", PathBuf::from(p).display())))
            }
            None => Self::parse(BUILTIN),
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        let entries: BTreeMap<String, Entry> =
            toml::from_str(text).map_err(|e| Error::Config(format!("model catalog: {e}")))?;
        Ok(Self { entries })
    }

    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// Resolve a model name or path to a local file (downloading hub files when online).
    pub fn resolve(&self, name: &str) -> Result<PathBuf> {
        let name = name.trim();
        if name.is_empty() {
            return Err(Error::InvalidRequest("empty model name".into()));
        }
        let as_path = Path::new(name);
        if as_path.exists() {
            return Ok(as_path.to_path_buf());
        }
        let Some(entry) = self.entries.get(name) else {
            if name.ends_with(".gguf") || name.contains('/') {
                return Err(Error::MissingFile { path: as_path.to_path_buf() });
            }
            return Err(Error::UnknownModel {
                name: name.to_string(),
                hint: format!("not a file and not in the catalog (known: {})", self.names().join(", ")),
            });
        };
        match &entry.repo {
            None => find_local(&entry.file).ok_or_else(|| Error::UnknownModel {
                name: name.to_string(),
                hint: format!(
                    "bundled test model {} not found in {}; run `bash models/fetch.sh` to fetch it",
                    entry.file,
                    model_dirs().iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
                ),
            }),
            Some(repo) => resolve_hub(name, repo, &entry.file),
        }
    }
}

/// Folders searched for bundled test models, in order.
pub fn model_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("MOA_MODELS_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("models"));
    dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    dirs
}

fn find_local(file: &str) -> Option<PathBuf> {
    model_dirs().into_iter().map(|d| d.join(file)).find(|p| p.exists())
}

fn resolve_hub(name: &str, repo: &str, file: &str) -> Result<PathBuf> {
    let cache = hf_hub::Cache::from_env();
    if let Some(p) = cache.model(repo.to_string()).get(file) {
        return Ok(p);
    }
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
    let where_to = format!(
        "download {file} from the Hugging Face repo {repo} and pass its path instead of `{name}`, or place it in the hf-hub cache under {}",
        cache.path().display()
    );
    if offline {
        return Err(Error::UnknownModel { name: name.to_string(), hint: format!("offline (HF_HUB_OFFLINE) and not cached; {where_to}") });
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env().with_progress(true).build().map_err(|e| Error::UnknownModel {
        name: name.to_string(),
        hint: format!("cannot start the hub client ({e}); {where_to}"),
    })?;
    api.model(repo.to_string()).get(file).map_err(|e| Error::UnknownModel {
        name: name.to_string(),
        hint: format!("not cached and the download failed ({e}); {where_to}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_and_names_the_test_models() {
        let c = Catalog::parse(BUILTIN).unwrap();
        for n in ["qwen", "mistral", "qwen-coder", "smollm2", "gemma3", "qwen-coder-1.5b"] {
            assert!(c.entries.contains_key(n), "{n} missing");
        }
    }

    #[test]
    fn unknown_names_and_missing_paths_are_clear_errors() {
        let c = Catalog::parse(BUILTIN).unwrap();
        let e = c.resolve("no-such-model").unwrap_err().to_string();
        assert!(e.contains("no-such-model") && e.contains("known:"), "{e}");
        let e = c.resolve("/nope/x.gguf").unwrap_err().to_string();
        assert!(e.contains("/nope/x.gguf"), "{e}");
    }
}
