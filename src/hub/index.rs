//! `registry/index.toml`: weights published on the Hub, by name.
//!
//! ```toml
//! [[weights]]
//! name = "tclr-r3d18-ucf101"              # what `vssl pull` / `eval` / `extract` accept
//! recipe = "experiments/tclr_r3d18_16x4_ucf101.toml"
//! repo = "ORG/NAME"
//! revision = "<40-hex commit>"            # pin a commit, so the sha256 stays true
//! file = "model.safetensors"
//! sha256 = "<64 hex>"
//! metrics = { linear_top1 = 0.0 }         # optional, as measured
//! ```
//!
//! The index used is `VSSL_INDEX` when set, else the first `registry/index.toml` found
//! from the current directory upwards, else the copy built into the binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::id::{self, HubRef};
use crate::{Error, Result};

const BUILT_IN: &str = include_str!("../../registry/index.toml");

/// One published weights file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    pub name: String,
    /// The recipe (path in this repository) the weights were trained with.
    #[serde(default)]
    pub recipe: String,
    /// `ORG/NAME`.
    pub repo: String,
    #[serde(default = "default_revision")]
    pub revision: String,
    #[serde(default = "default_file")]
    pub file: String,
    /// The file's sha256, checked after every fetch.
    pub sha256: String,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

fn default_revision() -> String {
    id::DEFAULT_REVISION.into()
}

fn default_file() -> String {
    id::DEFAULT_FILE.into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    #[serde(default)]
    weights: Vec<IndexEntry>,
}

/// The parsed index and where it came from.
#[derive(Debug, Clone)]
pub struct Index {
    entries: Vec<IndexEntry>,
    source: String,
}

impl IndexEntry {
    /// The Hub reference of the file (checked like any user input).
    pub fn hub_ref(&self) -> Result<HubRef> {
        HubRef::new(&self.repo, Some(&self.revision), Some(&self.file))
    }

    /// Fails unless `path` hashes to the listed sha256.
    pub fn check_sha256(&self, path: &Path) -> Result<()> {
        let got = super::download::sha256_file(path)?;
        if got != self.sha256.to_ascii_lowercase() {
            return Err(Error::Hub(format!(
                "{}: registry entry `{}` lists sha256 {}, the fetched file has {got}",
                path.display(),
                self.name,
                self.sha256
            )));
        }
        Ok(())
    }
}

impl Index {
    /// Parses index text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let f: IndexFile = toml::from_str(text).map_err(|e| Error::Recipe {
            layer: source.to_string(),
            key: "weights".into(),
            message: e.to_string().trim().to_string(),
        })?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, e) in f.weights.iter().enumerate() {
            let key = format!("weights[{i}]");
            let bad = |k: &str, m: String| Error::Recipe {
                layer: source.to_string(),
                key: format!("{key}.{k}"),
                message: m,
            };
            if !seen.insert(e.name.clone()) {
                return Err(bad("name", format!("`{}` is listed twice", e.name)));
            }
            if e.name.is_empty() || e.name.contains(['/', '\\', ':']) {
                return Err(bad(
                    "name",
                    "must be non-empty, without `/`, `\\` or `:`".into(),
                ));
            }
            e.hub_ref().map_err(|err| bad("repo", err.to_string()))?;
            if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("sha256", "must be 64 hex digits".into()));
            }
        }
        Ok(Self {
            entries: f.weights,
            source: source.to_string(),
        })
    }

    /// The index in use (see the module docs).
    pub fn load_default() -> Result<Self> {
        if let Ok(p) = std::env::var("VSSL_INDEX") {
            return Self::load(Path::new(&p));
        }
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        match cwd
            .ancestors()
            .map(|a| a.join("registry/index.toml"))
            .find(|p| p.is_file())
        {
            Some(p) => Self::load(&p),
            None => Self::parse(BUILT_IN, "the built-in registry/index.toml"),
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn get(&self, name: &str) -> Option<&IndexEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The names, comma-separated, or `none`.
    pub fn names_or_none(&self) -> String {
        if self.entries.is_empty() {
            "none".into()
        } else {
            self.entries
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_index_parses() {
        Index::parse(BUILT_IN, "built-in").unwrap();
    }

    #[test]
    fn bad_entries_name_the_key() {
        let e = Index::parse(
            "[[weights]]\nname = \"a\"\nrepo = \"org/../x\"\nsha256 = \"00\"\n",
            "idx.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("idx.toml") && e.contains("weights[0].repo"),
            "{e}"
        );
        let ok = format!(
            "[[weights]]\nname = \"a\"\nrepo = \"org/x\"\nsha256 = \"{}\"\n",
            "a".repeat(64)
        );
        let e = Index::parse(&format!("{ok}{ok}"), "idx.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("weights[1].name"), "{e}");
    }
}
