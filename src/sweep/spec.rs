//! The sweep file as written: parsed and checked for its own structure (types,
//! empty grids, zip lengths, duplicate names) before any recipe is resolved. Errors
//! name the sweep file and the key, like recipe errors.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::eval::Protocol;
use crate::{Error, Result};

/// `[slurm]`: resources of the job-array script.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    /// GPUs per array task (`--gpus`); with `nodes`, per node. More than one GPU per
    /// task trains data-parallel: one rank per GPU (`srun vssl train --ranks slurm`).
    pub gpus: Option<u32>,
    /// Nodes per array task (`--nodes`): more than one trains data-parallel across
    /// them, `gpus` ranks on each (one rank per node without `gpus`).
    pub nodes: Option<u32>,
    /// CPUs per array task (`--cpus-per-task`).
    pub cpus: Option<u32>,
    /// Wall time per array task, e.g. "04:00:00".
    pub time: Option<String>,
    /// Memory per array task, e.g. "32G".
    pub mem: Option<String>,
    /// Shell lines run before each task (e.g. `module load cuda`).
    #[serde(default)]
    pub setup: Vec<String>,
}

/// One `[[runs]]` entry: an explicit point.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// Names the point (unique in the sweep).
    pub name: String,
    /// Its own base recipe (default: the sweep's `base`).
    pub base: PathBuf,
    /// Overrides as (dotted key, TOML value), sorted by key.
    pub set: Vec<(String, toml::Value)>,
    /// False: no pretraining; the point evaluates the untrained backbone (`--random-init`).
    pub pretrain: bool,
}

/// A parsed, structurally valid sweep file.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSpec {
    /// The sweep file itself.
    pub file: PathBuf,
    /// `name` (default: the file's stem); the output folder `weights/sweeps/<name>`.
    pub name: String,
    /// `base`: the recipe grid/zip points start from, resolved to a path.
    pub base: Option<PathBuf>,
    /// `[grid]` axes (dotted key, values), keys in alphabetical order.
    pub grid: Vec<(String, Vec<toml::Value>)>,
    /// `[zip]` lists varied together (all the same length), keys in alphabetical order.
    pub zip: Vec<(String, Vec<toml::Value>)>,
    /// `seeds` (each point runs once per seed as `train.seed`); None: the recipe's seed.
    pub seeds: Option<Vec<u64>>,
    /// `[set]`: overrides applied to every point, under the point's own (dotted key,
    /// TOML value, sorted by key); common to all points, so not part of run names.
    pub set: Vec<(String, toml::Value)>,
    pub runs: Vec<RunSpec>,
    /// Protocols evaluated after each pretraining.
    pub eval: Vec<Protocol>,
    pub slurm: SlurmConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    name: Option<String>,
    base: Option<String>,
    grid: Option<toml::Table>,
    zip: Option<toml::Table>,
    seeds: Option<Vec<u64>>,
    #[serde(default)]
    set: toml::Table,
    #[serde(default)]
    runs: Vec<RawRun>,
    #[serde(default)]
    eval: Vec<String>,
    #[serde(default)]
    slurm: SlurmConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    name: Option<String>,
    base: Option<String>,
    #[serde(default)]
    set: toml::Table,
    #[serde(default = "yes")]
    pretrain: bool,
}

fn yes() -> bool {
    true
}

fn err(file: &Path, key: &str, message: impl Into<String>) -> Error {
    Error::Recipe {
        layer: format!("sweep {}", file.display()),
        key: key.to_string(),
        message: message.into(),
    }
}

/// Flattens nested tables to dotted keys, stopping at non-table values (so both
/// `"train.lr" = [..]` and `train.lr = [..]` give `train.lr`).
fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) if !inner.is_empty() => flatten(&key, inner, out),
            _ => out.push((key, v.clone())),
        }
    }
}

/// A table's leaves as (dotted key, value), sorted by key.
fn flat_sorted(t: &toml::Table) -> Vec<(String, toml::Value)> {
    let mut flat = Vec::new();
    flatten("", t, &mut flat);
    flat.sort_by(|a, b| a.0.cmp(&b.0));
    flat
}

/// `[grid]` or `[zip]` as (key, values); every value must be a non-empty list.
fn axes(file: &Path, section: &str, t: &toml::Table) -> Result<Vec<(String, Vec<toml::Value>)>> {
    if t.is_empty() {
        return Err(err(
            file,
            section,
            "is empty: list at least one dotted key with its values, or remove the table",
        ));
    }
    flat_sorted(t)
        .into_iter()
        .map(|(k, v)| match v {
            toml::Value::Array(vs) if !vs.is_empty() => Ok((k, vs)),
            toml::Value::Array(_) => Err(err(
                file,
                &format!("{section}.{k}"),
                "has no values (an empty list would make an empty sweep)",
            )),
            _ => Err(err(
                file,
                &format!("{section}.{k}"),
                "must be a list of values, e.g. [0.1, 0.2]",
            )),
        })
        .collect()
}

/// Resolves a recipe path named in a sweep file: beside the sweep file, then in its
/// parent folders (as recipe `base` paths), so `experiments/...` works from
/// `experiments/sweeps/`.
fn recipe_path(file: &Path, key: &str, p: &str) -> Result<PathBuf> {
    crate::recipe::layers::resolve_base(file, p).ok_or_else(|| {
        err(
            file,
            key,
            format!(
                "recipe `{p}` not found (looked beside the sweep file and in its parent folders)"
            ),
        )
    })
}

/// Reads and checks a sweep file.
pub fn parse(file: &Path) -> Result<SweepSpec> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let raw: RawSweep = toml::from_str(&text)
        .map_err(|e| err(file, "(file)", e.to_string().trim().replace('\n', " ")))?;
    let name = match raw.name {
        Some(n) => {
            let ok = !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !ok {
                return Err(err(
                    file,
                    "name",
                    "must be a folder name (letters, digits, `.`, `_`, `-`)",
                ));
            }
            n
        }
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "sweep".into()),
    };
    let base = raw
        .base
        .as_deref()
        .map(|b| recipe_path(file, "base", b))
        .transpose()?;
    let grid = raw
        .grid
        .as_ref()
        .map(|t| axes(file, "grid", t))
        .transpose()?
        .unwrap_or_default();
    let zip = raw
        .zip
        .as_ref()
        .map(|t| axes(file, "zip", t))
        .transpose()?
        .unwrap_or_default();
    if let Some((k0, v0)) = zip.first() {
        if let Some((k, v)) = zip.iter().find(|(_, v)| v.len() != v0.len()) {
            return Err(err(
                file,
                "zip",
                format!(
                    "lists must have the same length: `{k0}` has {}, `{k}` has {}",
                    v0.len(),
                    v.len()
                ),
            ));
        }
    }
    for (k, _) in &grid {
        if zip.iter().any(|(z, _)| z == k) {
            return Err(err(
                file,
                &format!("zip.{k}"),
                "also in [grid]: vary a key in one place",
            ));
        }
    }
    if let Some(seeds) = &raw.seeds {
        if seeds.is_empty() {
            return Err(err(file, "seeds", "is empty: list at least one seed"));
        }
        if let Some((i, s)) = seeds
            .iter()
            .enumerate()
            .find(|(i, s)| seeds[..*i].contains(s))
        {
            return Err(err(
                file,
                "seeds",
                format!("seed {s} appears twice (entry {i})"),
            ));
        }
        if grid.iter().chain(&zip).any(|(k, _)| k == "train.seed") {
            return Err(err(
                file,
                "seeds",
                "train.seed is also varied in [grid] or [zip]: use one of them",
            ));
        }
    }
    let common = flat_sorted(&raw.set);
    let seeded = raw.seeds.is_some();
    if let Some((k, _)) = common.iter().find(|(k, _)| {
        (seeded && k == "train.seed") || grid.iter().chain(&zip).any(|(g, _)| g == k)
    }) {
        return Err(err(
            file,
            &format!("set.{k}"),
            "is also varied (in [grid], [zip] or `seeds`): a key in [set] is the same for every point",
        ));
    }
    let mut runs = Vec::new();
    for (i, r) in raw.runs.into_iter().enumerate() {
        let key = format!("runs[{i}]");
        let base_path = match (&r.base, &base) {
            (Some(b), _) => recipe_path(file, &format!("{key}.base"), b)?,
            (None, Some(b)) => b.clone(),
            (None, None) => {
                return Err(err(
                    file,
                    &format!("{key}.base"),
                    "missing: give the run a base recipe or the sweep a top-level `base`",
                ))
            }
        };
        let name = r.name.unwrap_or_else(|| format!("run{i}"));
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            return Err(err(
                file,
                &format!("{key}.name"),
                "must be letters, digits, `.`, `_` or `-`",
            ));
        }
        if runs.iter().any(|x: &RunSpec| x.name == name) {
            return Err(err(
                file,
                &format!("{key}.name"),
                format!("`{name}` names two runs"),
            ));
        }
        runs.push(RunSpec {
            name,
            base: base_path,
            set: flat_sorted(&r.set),
            pretrain: r.pretrain,
        });
    }
    if base.is_none() && runs.is_empty() {
        return Err(err(
            file,
            "base",
            "missing: a sweep needs a `base` recipe or `[[runs]]` that name their own",
        ));
    }
    if (!grid.is_empty() || !zip.is_empty()) && base.is_none() {
        return Err(err(
            file,
            "base",
            "missing: [grid] and [zip] points start from the top-level `base` recipe",
        ));
    }
    let eval = raw
        .eval
        .iter()
        .map(|p| {
            p.parse::<Protocol>()
                .map_err(|e| err(file, "eval", e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    if runs.iter().any(|r| !r.pretrain) && eval.is_empty() {
        return Err(err(
            file,
            "eval",
            "runs with `pretrain = false` only evaluate: list protocols in `eval`",
        ));
    }
    Ok(SweepSpec {
        file: file.to_path_buf(),
        name,
        base,
        grid,
        zip,
        seeds: raw.seeds,
        set: common,
        runs,
        eval,
        slurm: raw.slurm,
    })
}
