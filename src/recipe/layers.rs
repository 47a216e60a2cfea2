//! Figment layering for recipes, lowest to highest: the `base` files an experiment
//! lists (recursively, in order), the experiment file, a sweep point, `VSSL_`
//! environment variables (`__` nests: `VSSL_TRAIN__LR`), and `--set key.path=value`.
//! Each section is extracted on its own (`focus`) so that an error carries the full
//! dotted key and the layer that supplied the offending value.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};

use super::{MethodConfig, MethodKind, Recipe};
use crate::{Error, Result};

/// Sections a recipe may have at top level (plus `base` and `name`).
const SECTIONS: [&str; 5] = ["data", "backbone", "method", "train", "eval"];

/// Everything that goes into one resolved recipe.
#[derive(Debug, Clone, Default)]
pub struct RecipeSource {
    /// The experiment file.
    pub file: PathBuf,
    /// Sweep point overrides as `key.path=value` (layer 3).
    pub sweep_point: Vec<String>,
    /// Read `VSSL_*` environment variables (layer 4).
    pub env: bool,
    /// `--set key.path=value` overrides (layer 5).
    pub sets: Vec<String>,
}

impl RecipeSource {
    /// An experiment file with environment overrides on and nothing else.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            file: path.into(),
            env: true,
            ..Default::default()
        }
    }

    /// An experiment file with environment overrides and `--set` arguments (the CLI's layers).
    pub fn with_sets(path: impl Into<PathBuf>, sets: Vec<String>) -> Self {
        Self {
            sets,
            ..Self::file(path)
        }
    }
}

/// Resolves and validates a recipe.
pub fn load(src: &RecipeSource) -> Result<Recipe> {
    let figment = compose(src)?;
    extract(&figment, &src.file)
}

/// Builds the layered figment (no extraction yet).
pub fn compose(src: &RecipeSource) -> Result<Figment> {
    let file = &src.file;
    if !file.is_file() {
        return Err(Error::Recipe {
            layer: file.display().to_string(),
            key: "(file)".into(),
            message: "recipe file not found".into(),
        });
    }
    let mut files = Vec::new();
    collect_bases(file, &mut Vec::new(), &mut files)?;
    let mut fig = Figment::new();
    for f in &files {
        fig = fig.merge(Toml::file_exact(f));
    }
    for (i, kv) in src.sweep_point.iter().enumerate() {
        fig = fig.merge(SetLayer::parse(
            kv,
            format!("sweep point override #{}", i + 1),
        )?);
    }
    if src.env {
        // Only keys that start with a recipe section, so unrelated VSSL_* variables
        // (VSSL_LOG, ...) do not turn into unknown-key errors.
        let env = Env::prefixed("VSSL_").split("__").filter(|k| {
            let k = k.as_str().to_ascii_lowercase();
            SECTIONS.iter().any(|s| {
                k == *s || k.starts_with(&format!("{s}.")) || k.starts_with(&format!("{s}__"))
            }) || k == "name"
        });
        fig = fig.merge(env);
    }
    for kv in &src.sets {
        fig = fig.merge(SetLayer::parse(kv, format!("--set {kv}"))?);
    }
    Ok(fig)
}

/// Depth-first: a file's own bases come before it, in the order listed.
fn collect_bases(file: &Path, stack: &mut Vec<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
    let canon = file.canonicalize().map_err(|e| Error::io(file, e))?;
    if stack.contains(&canon) {
        return Err(Error::Recipe {
            layer: file.display().to_string(),
            key: "base".into(),
            message: "base files include each other in a cycle".into(),
        });
    }
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| Error::Recipe {
        layer: file.display().to_string(),
        key: "(syntax)".into(),
        message: e.to_string().trim().replace('\n', " "),
    })?;
    let bases: Vec<String> = match table.get("base") {
        None => vec![],
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Recipe {
                layer: file.display().to_string(),
                key: "base".into(),
                message: "must be a list of file paths (strings)".into(),
            })?,
        Some(_) => {
            return Err(Error::Recipe {
                layer: file.display().to_string(),
                key: "base".into(),
                message: "must be a file path or a list of file paths".into(),
            })
        }
    };
    stack.push(canon);
    for b in bases {
        let path = resolve_base(file, &b).ok_or_else(|| Error::Recipe {
            layer: file.display().to_string(),
            key: "base".into(),
            message: format!(
                "base file `{b}` not found (looked beside the file and in its parent folders)"
            ),
        })?;
        collect_bases(&path, stack, out)?;
    }
    stack.pop();
    out.push(file.to_path_buf());
    Ok(())
}

/// A relative base path is looked up beside the including file, then in each parent
/// folder, so `base = ["registry/..."]` works from `experiments/` and from sweeps.
pub(crate) fn resolve_base(including: &Path, base: &str) -> Option<PathBuf> {
    let p = Path::new(base);
    if p.is_absolute() {
        return p.is_file().then(|| p.to_path_buf());
    }
    let dir = including
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let start = dir.canonicalize().unwrap_or(dir);
    start.ancestors().map(|a| a.join(p)).find(|c| c.is_file())
}

/// One `key.path=value` override as a figment provider named after itself.
struct SetLayer {
    name: String,
    data: Dict,
}

impl SetLayer {
    fn parse(kv: &str, name: String) -> Result<Self> {
        let bad = |m: &str| Error::Recipe {
            layer: name.clone(),
            key: kv.to_string(),
            message: m.to_string(),
        };
        let (key, raw) = kv
            .split_once('=')
            .ok_or_else(|| bad("expected key.path=value"))?;
        let key = key.trim();
        let valid = !key.is_empty()
            && key
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !valid {
            return Err(bad("key must be dotted words like train.lr"));
        }
        // The value is TOML (0.5, true, [1, 2], "text"); anything else is taken as a string.
        let raw = raw.trim();
        let toml_text = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(_) => format!("{key} = {raw}"),
            Err(_) => format!("{key} = {}", toml::Value::String(raw.to_string())),
        };
        let data = Toml::string(&toml_text)
            .data()
            .map_err(|e| bad(&e.to_string()))?;
        let data = data.get(&Profile::Default).cloned().unwrap_or_default();
        Ok(Self { name, data })
    }
}

impl Provider for SetLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }
    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

/// Names the layer that supplied `key` (or the error's own metadata).
fn layer_name(fig: &Figment, key: &str, md: Option<&Metadata>) -> String {
    let md = fig.find_metadata(key).or(md);
    match md {
        Some(m) => match &m.source {
            Some(figment::Source::File(p)) => p.display().to_string(),
            _ => m.name.to_string(),
        },
        None => "recipe".to_string(),
    }
}

fn recipe_error(fig: &Figment, section: &str, e: figment::Error) -> Error {
    let mut path: Vec<String> = vec![section.to_string()];
    path.extend(e.path.iter().cloned());
    if let figment::error::Kind::UnknownField(f, _) = &e.kind {
        if path.last() != Some(f) {
            path.push(f.clone());
        }
    }
    if let figment::error::Kind::MissingField(f) = &e.kind {
        path.push(f.to_string());
    }
    let key = path.join(".");
    let layer = layer_name(fig, &key, e.metadata.as_ref());
    Error::Recipe {
        layer,
        key,
        message: e.kind.to_string(),
    }
}

fn section<T: serde::de::DeserializeOwned>(fig: &Figment, name: &str) -> Result<T> {
    fig.focus(name)
        .extract::<T>()
        .map_err(|e| recipe_error(fig, name, e))
}

/// Extracts every section, checks top-level keys, then validates ranges.
pub fn extract(fig: &Figment, file: &Path) -> Result<Recipe> {
    // Errors while reading the files themselves (syntax) surface here.
    let data = fig.data().map_err(|e| {
        let layer = e
            .metadata
            .as_ref()
            .map(|m| m.name.to_string())
            .unwrap_or_else(|| file.display().to_string());
        Error::Recipe {
            layer,
            key: "(syntax)".into(),
            message: e.to_string(),
        }
    })?;
    let top = data.get(&Profile::Default).cloned().unwrap_or_default();
    let known: BTreeSet<&str> = SECTIONS.iter().copied().chain(["base", "name"]).collect();
    for key in top.keys() {
        if !known.contains(key.as_str()) {
            return Err(Error::Recipe {
                layer: layer_name(fig, key, None),
                key: key.clone(),
                message: format!(
                    "unknown top-level key; expected one of: {}",
                    known.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    let name = match fig.find_value("name") {
        Ok(_) => fig
            .extract_inner::<String>("name")
            .map_err(|e| recipe_error(fig, "name", e))?,
        Err(_) => file
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "run".into()),
    };
    let kind: MethodKind = match fig.find_value("method.kind") {
        Ok(_) => fig
            .focus("method")
            .extract_inner("kind")
            .map_err(|e| recipe_error(fig, "method", e))?,
        Err(_) => {
            return Err(Error::Recipe {
                layer: file.display().to_string(),
                key: "method.kind".into(),
                message: "missing: every recipe names its pretext method".into(),
            })
        }
    };
    let method = MethodConfig::extract(kind, &fig.focus("method"))
        .map_err(|e| recipe_error(fig, "method", *e))?;
    let recipe = Recipe {
        name,
        data: section(fig, "data")?,
        backbone: section(fig, "backbone")?,
        method,
        train: section(fig, "train")?,
        eval: section(fig, "eval")?,
    };
    recipe.validate().map_err(|(key, message)| Error::Recipe {
        layer: layer_name(fig, &key, None),
        key,
        message,
    })?;
    Ok(recipe)
}
