//! What an evaluation compares: a *system* is one model alone, a MoA recipe, or Self-MoA (one
//! model sampled n times and aggregated by itself). Parsed from the `--systems` specs:
//!
//! - `NAME` or `path.gguf` — the model alone;
//! - `moa:A+B+C>AGG:L` — proposers A, B, C; aggregator AGG (default: the first proposer); L total
//!   layers (default 2; the paper's 3-layer form repeats the proposer layer);
//! - `self-moa:MODEL:N` — MODEL sampled N times (different seeds) and aggregated by itself;
//! - `recipe.toml` or `recipe.toml#NAME` — a recipe file (its top level, or `[recipes.NAME]`);
//! - any of these prefixed `LABEL=` to name it in tables and output folders.
//!
//! Every system answers with the same sampling settings (`Settings`), which override what a
//! recipe file says.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::catalog::DEFAULT_MODELS;
use crate::moa::{Overrides, Recipe, RecipeFile};

/// Sampling settings shared by every system of an evaluation (recorded with each answer).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub temperature: f32,
    pub max_tokens: usize,
    /// Question `i` is answered with seed `seed + i` (MoA agents derive theirs from it).
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Single { model: String },
    Moa { recipe: Recipe },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct System {
    /// Label in tables and the output folder's name.
    pub name: String,
    /// The spec it was parsed from.
    pub spec: String,
    pub kind: Kind,
}

impl System {
    /// Every model the system runs, in first-use order.
    pub fn models(&self) -> Vec<String> {
        match &self.kind {
            Kind::Single { model } => vec![model.clone()],
            Kind::Moa { recipe } => recipe.model_names(),
        }
    }

    pub fn is_single(&self) -> bool {
        matches!(self.kind, Kind::Single { .. })
    }
}

/// A name safe as a folder and a file name: `[A-Za-z0-9._-]`, others become `_`.
pub fn file_safe(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if s.is_empty() || s.starts_with('.') { format!("_{s}") } else { s }
}

fn bad(spec: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidRequest(format!("system `{spec}`: {why}"))
}

fn overrides(s: &Settings) -> Overrides {
    Overrides { temperature: Some(s.temperature), max_tokens: Some(s.max_tokens), ..Default::default() }
}

/// Parse one `--systems` entry.
pub fn parse(spec: &str, settings: &Settings) -> Result<System> {
    let spec = spec.trim();
    let (label, body) = match spec.split_once('=') {
        Some((l, b)) if !l.contains(':') && !l.contains('/') && !l.is_empty() => (Some(l.trim()), b.trim()),
        _ => (None, spec),
    };
    if body.is_empty() {
        return Err(bad(spec, "empty"));
    }
    let kind = if let Some(rest) = body.strip_prefix("moa:") {
        moa_spec(spec, rest, settings)?
    } else if let Some(rest) = body.strip_prefix("self-moa:") {
        let (model, n) = rest.rsplit_once(':').ok_or_else(|| bad(spec, "expected self-moa:MODEL:N"))?;
        let n: usize = n.parse().map_err(|_| bad(spec, format!("`{n}` is not a number of samples")))?;
        if !(2..=16).contains(&n) || model.is_empty() {
            return Err(bad(spec, "expected self-moa:MODEL:N with 2 ≤ N ≤ 16"));
        }
        let o = Overrides { models: Some(vec![model.to_string(); n]), aggregator: Some(model.to_string()), ..overrides(settings) };
        Kind::Moa { recipe: Recipe::build(None, &o, DEFAULT_MODELS)? }
    } else if let Some((file, name)) = recipe_file(body) {
        let f = RecipeFile::read(Path::new(file))?;
        let f = match name {
            None => f,
            Some(n) => f.recipes.get(n).cloned().ok_or_else(|| {
                bad(spec, format!("{file} has no [recipes.{n}] (it has {:?})", f.recipes.keys().collect::<Vec<_>>()))
            })?,
        };
        Kind::Moa { recipe: Recipe::build(Some(&f), &overrides(settings), DEFAULT_MODELS)? }
    } else {
        if body.contains(['+', '>', ',']) {
            return Err(bad(spec, "a model name cannot hold `+`, `>` or `,` (did you mean moa:A+B>AGG?)"));
        }
        Kind::Single { model: body.to_string() }
    };
    let name = file_safe(label.unwrap_or(body));
    Ok(System { name, spec: spec.to_string(), kind })
}

fn recipe_file(body: &str) -> Option<(&str, Option<&str>)> {
    let (file, name) = match body.split_once('#') {
        Some((f, n)) => (f, Some(n)),
        None => (body, None),
    };
    file.ends_with(".toml").then_some((file, name))
}

fn moa_spec(spec: &str, rest: &str, settings: &Settings) -> Result<Kind> {
    let (rest, layers) = match rest.rsplit_once(':') {
        Some((r, l)) => (r, Some(l.parse::<usize>().map_err(|_| bad(spec, format!("`{l}` is not a number of layers")))?)),
        None => (rest, None),
    };
    let (proposers, aggregator) = match rest.split_once('>') {
        Some((p, a)) => (p, Some(a.trim().to_string())),
        None => (rest, None),
    };
    let models: Vec<String> = proposers.split('+').map(|m| m.trim().to_string()).collect();
    if models.iter().any(String::is_empty) || aggregator.as_deref() == Some("") {
        return Err(bad(spec, "expected moa:A+B+…[>AGGREGATOR][:LAYERS]"));
    }
    let o = Overrides { models: Some(models), aggregator, layers, ..overrides(settings) };
    Ok(Kind::Moa { recipe: Recipe::build(None, &o, DEFAULT_MODELS)? })
}

/// Parse every entry; labels must be distinct (they name output folders).
pub fn parse_all(specs: &[String], settings: &Settings) -> Result<Vec<System>> {
    let systems: Vec<System> = specs.iter().map(|s| parse(s, settings)).collect::<Result<_>>()?;
    for (i, s) in systems.iter().enumerate() {
        if systems[..i].iter().any(|t| t.name == s.name) {
            return Err(Error::InvalidRequest(format!("two systems are named `{}`: give one a label (LABEL=spec)", s.name)));
        }
    }
    if systems.is_empty() {
        return Err(Error::InvalidRequest("--systems names no system".into()));
    }
    Ok(systems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Settings = Settings { temperature: 0.5, max_tokens: 64, seed: 1 };

    #[test]
    fn specs_parse_into_the_systems_they_name() {
        let s = parse("qwen-coder", &S).unwrap();
        assert_eq!(s.kind, Kind::Single { model: "qwen-coder".into() });
        let m = parse("mix=moa:qwen-coder+smollm2>gemma3:3", &S).unwrap();
        assert_eq!(m.name, "mix");
        let Kind::Moa { recipe } = &m.kind else { panic!("not a recipe") };
        assert_eq!(recipe.layers.len(), 2);
        assert_eq!(recipe.layers[1].iter().map(|a| a.model.as_str()).collect::<Vec<_>>(), ["qwen-coder", "smollm2"]);
        assert_eq!(recipe.aggregator.model, "gemma3");
        assert!(recipe.layers.iter().flatten().chain([&recipe.aggregator]).all(|a| a.temperature == 0.5 && a.max_tokens == 64));
        let s = parse("self-moa:smollm2:3", &S).unwrap();
        let Kind::Moa { recipe } = &s.kind else { panic!("not a recipe") };
        assert_eq!(recipe.layers, vec![vec![recipe.aggregator.clone(); 3]]);
        assert_eq!(s.name, "self-moa_smollm2_3");
    }

    #[test]
    fn bad_specs_name_the_problem() {
        for (spec, needle) in [
            ("self-moa:smollm2:1", "2 ≤ N"),
            ("self-moa:smollm2:x", "number of samples"),
            ("moa:a++b", "expected moa:"),
            ("moa:a+b:two", "number of layers"),
            ("a+b", "did you mean"),
            ("missing.toml", "missing.toml"),
        ] {
            let e = parse(spec, &S).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
        let e = parse_all(&["qwen".into(), "qwen".into()], &S).unwrap_err().to_string();
        assert!(e.contains("two systems are named `qwen`"), "{e}");
    }
}
