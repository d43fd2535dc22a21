//! A MoA recipe: proposer layers, the aggregator, per-agent sampling and system prompts, and the
//! aggregate-and-synthesize instruction. Read from TOML (`--config moa.toml`) and overridden by
//! command-line flags; validated before any model is loaded.
//!
//! ```toml
//! layers = 2                      # proposer layers + the aggregator (default 2)
//! temperature = 0.7               # defaults for every agent
//! max_tokens = 512
//! aggregator = "qwen"             # default: the first proposer of the last layer
//! instruction = "..."             # replaces the paper's aggregate-and-synthesize prompt
//!
//! [[layer]]                       # one table per proposer layer (the last repeats if fewer)
//! models = ["qwen", "mistral"]
//!
//! [[layer]]
//! models = ["qwen", { model = "mistral", temperature = 0.3, system = "Be concise." }]
//!
//! [aggregator_options]            # optional per-aggregator settings
//! temperature = 0.2
//!
//! [endpoints.big]                 # a remote OpenAI-compatible endpoint, used as "remote:big"
//! url = "http://10.0.0.5:8000/v1"
//! model = "Qwen2.5-72B-Instruct"  # default: the endpoint's only model
//! api_key_env = "VLLM_KEY"        # default: MOA_REMOTE_API_KEY
//! max_concurrency = 4             # requests in flight (default 4)
//! timeout_secs = 120              # per answer, retries included (default 600)
//! read_timeout_secs = 60          # silence before an attempt counts as stalled (default 120)
//! attempts = 4                    # 1 = no retry (default 4)
//! context_length = 32768          # when GET /models does not report it
//! tokenizer = "qwen-coder"        # a local copy's tokenizer: exact prompt counts
//! ```
//!
//! An agent may also name an endpoint inline: `{ endpoint = "http://…/v1", model = "…", … }`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::moa::prompt::AGGREGATE_AND_SYNTHESIZE;
use crate::runtime::remote::EndpointSettings;

/// One agent: a model and how it samples.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Agent {
    pub model: String,
    pub temperature: f32,
    pub max_tokens: usize,
    pub system: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Recipe {
    /// Proposer layers, in order (at least one).
    pub layers: Vec<Vec<Agent>>,
    pub aggregator: Agent,
    pub instruction: String,
    /// Settings of the remote endpoints the recipe's URL agents use, by API base.
    pub endpoints: BTreeMap<String, EndpointSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointToml {
    url: String,
    model: Option<String>,
    #[serde(flatten)]
    settings: EndpointSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum AgentToml {
    Name(String),
    Full {
        model: String,
        temperature: Option<f32>,
        max_tokens: Option<usize>,
        system: Option<String>,
        /// A remote endpoint serving `model`.
        endpoint: Option<String>,
        api_key_env: Option<String>,
        max_concurrency: Option<usize>,
        timeout_secs: Option<u64>,
        read_timeout_secs: Option<u64>,
        attempts: Option<usize>,
        context_length: Option<usize>,
        tokenizer: Option<String>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerToml {
    models: Vec<AgentToml>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AggOptions {
    temperature: Option<f32>,
    max_tokens: Option<usize>,
    system: Option<String>,
}

/// The TOML file's shape; every field optional so flags can fill the gaps.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    layers: Option<usize>,
    temperature: Option<f32>,
    max_tokens: Option<usize>,
    aggregator: Option<String>,
    instruction: Option<String>,
    system: Option<String>,
    #[serde(default)]
    layer: Vec<LayerToml>,
    #[serde(default)]
    aggregator_options: AggOptions,
    /// Named recipes (used by the server's `model` field).
    #[serde(default)]
    pub recipes: std::collections::BTreeMap<String, RecipeFile>,
    /// Remote endpoints, named by agents as `remote:NAME`.
    #[serde(default)]
    endpoints: BTreeMap<String, EndpointToml>,
}

impl RecipeFile {
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(format!("{origin}: {e}")))
    }

    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Self::parse(&text, &path.display().to_string())
    }
}

/// Command-line values that override the file (None: not given).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub models: Option<Vec<String>>,
    pub aggregator: Option<String>,
    pub layers: Option<usize>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<usize>,
    pub system: Option<String>,
    pub instruction: Option<String>,
}

pub const DEFAULT_TEMPERATURE: f32 = 0.7;
pub const DEFAULT_MAX_TOKENS: usize = 512;
pub const DEFAULT_LAYERS: usize = 2;

impl Recipe {
    /// Build a recipe from an optional file plus flags; `default_models` apply when neither names
    /// any proposer.
    pub fn build(file: Option<&RecipeFile>, o: &Overrides, default_models: &[&str]) -> Result<Self> {
        let empty = RecipeFile::default();
        let f = file.unwrap_or(&empty);
        let temperature = o.temperature.or(f.temperature).unwrap_or(DEFAULT_TEMPERATURE);
        let max_tokens = o.max_tokens.or(f.max_tokens).unwrap_or(DEFAULT_MAX_TOKENS);
        let system = o.system.clone().or(f.system.clone());
        let layers_total = o.layers.or(f.layers).unwrap_or(if f.layer.is_empty() { DEFAULT_LAYERS } else { f.layer.len() + 1 });
        if layers_total < 2 {
            return Err(Error::InvalidRequest(format!(
                "--layers must be at least 2 (one proposer layer + the aggregator), got {layers_total}"
            )));
        }
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(Error::InvalidRequest(format!("--temperature must be ≥ 0, got {temperature}")));
        }
        if max_tokens == 0 {
            return Err(Error::InvalidRequest("--max-tokens must be at least 1".into()));
        }
        // Remote endpoints: `remote:NAME` and inline `endpoint = …` become URL specs.
        let mut endpoints: BTreeMap<String, EndpointSettings> = BTreeMap::new();
        let spec_of = |url: &str, model: Option<&str>| format!("{}{}", url.trim_end_matches('/'), model.map(|m| format!("#{m}")).unwrap_or_default());
        let mut named: BTreeMap<String, String> = BTreeMap::new();
        for (name, e) in &f.endpoints {
            named.insert(name.clone(), spec_of(&e.url, e.model.as_deref()));
            endpoints.insert(e.url.trim_end_matches('/').to_string(), e.settings.clone());
        }
        let resolve = |m: &str| -> Result<String> {
            match m.strip_prefix("remote:") {
                Some(n) => named.get(n).cloned().ok_or_else(|| {
                    Error::InvalidRequest(format!("`{m}`: no [endpoints.{n}] table (endpoints: {:?})", named.keys().collect::<Vec<_>>()))
                }),
                None => Ok(m.to_string()),
            }
        };
        let plain = |m: &str| -> Result<Agent> { Ok(Agent { model: resolve(m)?, temperature, max_tokens, system: system.clone() }) };
        let mut inline: Vec<(String, EndpointSettings)> = Vec::new();
        let mut from_toml = |a: &AgentToml| -> Result<Agent> {
            match a {
                AgentToml::Name(m) => plain(m),
                AgentToml::Full {
                    model,
                    temperature: t,
                    max_tokens: n,
                    system: s,
                    endpoint,
                    api_key_env,
                    max_concurrency,
                    timeout_secs,
                    read_timeout_secs,
                    attempts,
                    context_length,
                    tokenizer,
                } => {
                    let model = match endpoint {
                        Some(url) => {
                            let settings = EndpointSettings {
                                api_key_env: api_key_env.clone(),
                                max_concurrency: *max_concurrency,
                                timeout_secs: *timeout_secs,
                                read_timeout_secs: *read_timeout_secs,
                                attempts: *attempts,
                                context_length: *context_length,
                                tokenizer: tokenizer.clone(),
                            };
                            inline.push((url.trim_end_matches('/').to_string(), settings));
                            spec_of(url, Some(model))
                        }
                        None => resolve(model)?,
                    };
                    Ok(Agent {
                        model,
                        temperature: o.temperature.or(*t).unwrap_or(temperature),
                        max_tokens: o.max_tokens.or(*n).unwrap_or(max_tokens),
                        system: o.system.clone().or(s.clone()).or(system.clone()),
                    })
                }
            }
        };
        let file_layers: Vec<Vec<Agent>> =
            f.layer.iter().map(|l| l.models.iter().map(&mut from_toml).collect::<Result<Vec<_>>>()).collect::<Result<_>>()?;
        endpoints.extend(inline);
        let flag_layer: Option<Vec<Agent>> = o.models.as_ref().map(|ms| ms.iter().map(|m| plain(m)).collect::<Result<_>>()).transpose()?;
        let n = layers_total - 1;
        let layers: Vec<Vec<Agent>> = match (flag_layer, file_layers.is_empty()) {
            (Some(l), _) => vec![l; n],
            (None, false) => (0..n).map(|i| file_layers[i.min(file_layers.len() - 1)].clone()).collect(),
            (None, true) => vec![default_models.iter().map(|m| plain(m)).collect::<Result<_>>()?; n],
        };
        for (i, l) in layers.iter().enumerate() {
            if l.is_empty() {
                return Err(Error::InvalidRequest(format!("layer {} has no proposer models", i + 1)));
            }
            if let Some(a) = l.iter().find(|a| a.model.trim().is_empty()) {
                return Err(Error::InvalidRequest(format!("layer {} names an empty model ({:?})", i + 1, a.model)));
            }
        }
        let agg_name = match o.aggregator.clone().or(f.aggregator.clone()) {
            Some(a) => resolve(&a)?,
            None => layers[n - 1][0].model.clone(),
        };
        if agg_name.trim().is_empty() {
            return Err(Error::InvalidRequest("--aggregator names an empty model".into()));
        }
        let ao = &f.aggregator_options;
        let aggregator = Agent {
            model: agg_name,
            temperature: o.temperature.or(ao.temperature).unwrap_or(temperature),
            max_tokens: o.max_tokens.or(ao.max_tokens).unwrap_or(max_tokens),
            system: o.system.clone().or(ao.system.clone()).or(system.clone()),
        };
        let instruction = o.instruction.clone().or(f.instruction.clone()).unwrap_or_else(|| AGGREGATE_AND_SYNTHESIZE.to_string());
        Ok(Recipe { layers, aggregator, instruction, endpoints })
    }

    /// Every distinct model name the recipe uses, in first-use order.
    pub fn model_names(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for a in self.layers.iter().flatten().chain(std::iter::once(&self.aggregator)) {
            if !v.contains(&a.model) {
                v.push(a.model.clone());
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(models: &[&str]) -> Overrides {
        Overrides { models: Some(models.iter().map(|s| s.to_string()).collect()), ..Default::default() }
    }

    #[test]
    fn flags_build_layers_and_default_aggregator() {
        let r = Recipe::build(None, &Overrides { layers: Some(3), ..flags(&["a", "b", "a"]) }, &[]).unwrap();
        assert_eq!(r.layers.len(), 2);
        assert_eq!(r.layers[0].len(), 3);
        assert_eq!(r.aggregator.model, "a");
        assert_eq!(r.model_names(), vec!["a", "b"]);
        assert_eq!(r.instruction, AGGREGATE_AND_SYNTHESIZE);
    }

    #[test]
    fn file_layers_and_flag_overrides() {
        let f = RecipeFile::parse(
            r#"
            temperature = 0.5
            aggregator = "c"
            [[layer]]
            models = ["a", { model = "b", temperature = 0.1, system = "S" }]
            [aggregator_options]
            max_tokens = 99
            "#,
            "test",
        )
        .unwrap();
        let r = Recipe::build(Some(&f), &Overrides::default(), &[]).unwrap();
        assert_eq!(r.layers.len(), 1);
        assert_eq!(r.layers[0][1], Agent { model: "b".into(), temperature: 0.1, max_tokens: 512, system: Some("S".into()) });
        assert_eq!(r.aggregator.max_tokens, 99);
        assert_eq!(r.layers[0][0].temperature, 0.5);
        let r = Recipe::build(Some(&f), &Overrides { temperature: Some(0.9), ..Default::default() }, &[]).unwrap();
        assert!(r.layers[0].iter().all(|a| a.temperature == 0.9));
    }

    #[test]
    fn endpoints_become_url_agents_with_their_settings() {
        let f = RecipeFile::parse(
            r#"
            aggregator = "remote:big"
            [endpoints.big]
            url = "http://10.0.0.5:8000/v1/"
            model = "Qwen2.5-72B-Instruct"
            api_key_env = "VLLM_KEY"
            max_concurrency = 2
            context_length = 32768
            [[layer]]
            models = ["a", "remote:big", { endpoint = "http://h:1/v1", model = "m", timeout_secs = 9, read_timeout_secs = 3, attempts = 1, tokenizer = "a" }]
            "#,
            "test",
        )
        .unwrap();
        let r = Recipe::build(Some(&f), &Overrides::default(), &[]).unwrap();
        let names: Vec<&str> = r.layers[0].iter().map(|a| a.model.as_str()).collect();
        assert_eq!(names, ["a", "http://10.0.0.5:8000/v1#Qwen2.5-72B-Instruct", "http://h:1/v1#m"]);
        assert_eq!(r.aggregator.model, "http://10.0.0.5:8000/v1#Qwen2.5-72B-Instruct");
        assert_eq!(r.endpoints["http://10.0.0.5:8000/v1"].api_key_env.as_deref(), Some("VLLM_KEY"));
        assert_eq!(r.endpoints["http://10.0.0.5:8000/v1"].context_length, Some(32768));
        let inline = &r.endpoints["http://h:1/v1"];
        assert_eq!((inline.timeout_secs, inline.read_timeout_secs, inline.attempts, inline.tokenizer.as_deref()), (Some(9), Some(3), Some(1), Some("a")));
        let bad = RecipeFile::parse("[endpoints.x]\nurl = \"http://h/v1\"\nretries = 3\n", "test").unwrap_err().to_string();
        assert!(bad.contains("retries"), "an unknown endpoint setting is named: {bad}");
        let e = Recipe::build(None, &flags(&["remote:nope"]), &[]).unwrap_err().to_string();
        assert!(e.contains("[endpoints.nope]"), "{e}");
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let e = Recipe::build(None, &Overrides { layers: Some(1), ..flags(&["a"]) }, &[]).unwrap_err();
        assert!(e.to_string().contains("--layers"), "{e}");
        let e = Recipe::build(None, &flags(&[]), &[]).unwrap_err();
        assert!(e.to_string().contains("no proposer"), "{e}");
        let e = Recipe::build(None, &flags(&["a", ""]), &[]).unwrap_err();
        assert!(e.to_string().contains("empty model"), "{e}");
        let e = Recipe::build(None, &Overrides { max_tokens: Some(0), ..flags(&["a"]) }, &[]).unwrap_err();
        assert!(e.to_string().contains("--max-tokens"), "{e}");
        assert!(RecipeFile::parse("bogus = 1", "x.toml").unwrap_err().to_string().contains("x.toml"));
    }
}
