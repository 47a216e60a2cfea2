//! Reading run directories for comparison: downstream metrics from `eval/*.json`,
//! the training loss curve from `metrics.jsonl`, sweep information from
//! `point.toml`, and grouping runs into rows with mean and std over their seeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::eval::metrics::mean_std;
use crate::eval::numeric_leaves;
use crate::run_dir::PointInfo;
use crate::run_dir::{self, RunDir};
use crate::{Error, Result};

/// What one run directory holds.
#[derive(Debug, Clone)]
pub struct RunData {
    pub dir: PathBuf,
    /// Sweep label, or the directory name.
    pub label: String,
    /// Sweep group (label without the seed), or the directory name.
    pub group: String,
    /// Position in its sweep (orders rows), if it came from one.
    pub index: Option<usize>,
    /// The resolved recipe as a TOML table (for `--group-by KEY`).
    pub recipe: toml::Table,
    /// `linear.top1`, `knn.recall@1`, `finetune.best.top1`, `pretrain.final_loss`, ...
    pub metrics: BTreeMap<String, f64>,
    /// (step, loss) from `metrics.jsonl`.
    pub losses: Vec<(u64, f64)>,
    /// Pretraining finished (`model.safetensors` exists).
    pub trained: bool,
}

fn is_run_dir(p: &Path) -> bool {
    RunDir::is_run(p)
}

impl RunData {
    /// Reads a run directory (it must hold `recipe.resolved.toml`).
    pub fn load(dir: &Path) -> Result<Self> {
        let run = RunDir::new(dir);
        let recipe_path = run.recipe();
        let text = std::fs::read_to_string(&recipe_path).map_err(|e| Error::io(&recipe_path, e))?;
        let recipe: toml::Table = toml::from_str(&text)
            .map_err(|e| Error::BadInput(format!("{}: {}", recipe_path.display(), e.message())))?;
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| dir.display().to_string());
        let point: Option<PointInfo> = std::fs::read_to_string(run.point())
            .ok()
            .and_then(|t| toml::from_str(&t).ok());
        // A random-init point's results are its `-random` files; name them as the
        // pretrained ones so both land in the same column.
        let trained = run.model().is_file();
        let untrained = point.as_ref().is_some_and(|p| !p.pretrain) || !trained;
        let mut metrics = BTreeMap::new();
        for f in run.eval_files() {
            let stem = f
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            if stem.contains("-split") {
                continue; // per-split files; their summary has mean and std
            }
            let stem = match (untrained, stem.strip_suffix("-random")) {
                (true, Some(s)) => s.to_string(),
                _ => stem,
            };
            let text = std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::BadInput(format!("{}: {e}", f.display())))?;
            let body = json.get("metrics").or_else(|| json.get("mean"));
            if let Some(b) = body {
                numeric_leaves(b, &stem, &mut metrics);
            }
        }
        let losses = series(&run).remove("loss").unwrap_or_default();
        if let Some(&(_, l)) = losses.last() {
            metrics.insert("pretrain.final_loss".into(), l);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            label: point.as_ref().map_or(name.clone(), |p| p.label.clone()),
            group: point.as_ref().map_or(name, |p| p.group.clone()),
            index: point.as_ref().map(|p| p.index),
            recipe,
            metrics,
            losses,
            trained,
        })
    }
}

/// Logged quantities by name: (step, value) pairs.
pub type Series = BTreeMap<String, Vec<(u64, f64)>>;

/// Every numeric field of `metrics.jsonl` (except `step`) as (step, value) pairs
/// in file order; lines that are not JSON objects with a step are skipped (a line
/// torn by a kill).
pub fn series(run: &RunDir) -> Series {
    let mut out = Series::new();
    let text = std::fs::read_to_string(run.metrics()).unwrap_or_default();
    for line in text.lines() {
        let Ok(serde_json::Value::Object(v)) = serde_json::from_str(line) else {
            continue;
        };
        let Some(step) = v.get("step").and_then(|x| x.as_u64()) else {
            continue;
        };
        for (k, x) in &v {
            if let (false, Some(x)) = (k == "step", x.as_f64()) {
                out.entry(k.clone()).or_default().push((step, x));
            }
        }
    }
    out
}

/// Run directories named directly, or every run directory inside a named folder
/// (a sweep), in sweep order.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<RunData>> {
    let mut out = Vec::new();
    for p in paths {
        if is_run_dir(p) {
            out.push(RunData::load(p)?);
            continue;
        }
        if !p.is_dir() {
            return Err(Error::BadInput(format!(
                "{}: no such run or sweep directory",
                p.display()
            )));
        }
        let mut inside = Vec::new();
        for e in std::fs::read_dir(p).map_err(|e| Error::io(p, e))?.flatten() {
            if is_run_dir(&e.path()) {
                inside.push(RunData::load(&e.path())?);
            }
        }
        if inside.is_empty() {
            return Err(Error::BadInput(format!(
                "{}: neither a run directory ({}) nor a folder of runs",
                p.display(),
                run_dir::RECIPE_FILE
            )));
        }
        inside.sort_by(|a, b| (a.index, &a.label).cmp(&(b.index, &b.label)));
        out.extend(inside);
    }
    Ok(out)
}

/// How runs become rows.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupBy {
    /// The sweep group (label without the seed): seeds of one point form a row.
    Group,
    /// Every run its own row.
    Run,
    /// Runs with equal values of these dotted recipe keys (e.g. `method.kind`).
    Keys(Vec<String>),
}

impl std::str::FromStr for GroupBy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "group" => GroupBy::Group,
            "run" => GroupBy::Run,
            keys => GroupBy::Keys(keys.split(',').map(|k| k.trim().to_string()).collect()),
        })
    }
}

/// A row: runs (indices into the run list) sharing a group name.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub runs: Vec<usize>,
}

fn lookup<'a>(t: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut v = t.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

/// Groups runs, in order of first appearance.
pub fn group(runs: &[RunData], by: &GroupBy) -> Result<Vec<Group>> {
    let mut out: Vec<Group> = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let name = match by {
            GroupBy::Group => r.group.clone(),
            GroupBy::Run => r.label.clone(),
            GroupBy::Keys(keys) => keys
                .iter()
                .map(|k| {
                    let v = lookup(&r.recipe, k).ok_or_else(|| {
                        Error::BadInput(format!(
                            "--group-by {k}: no such key in {}",
                            RunDir::new(&r.dir).recipe().display()
                        ))
                    })?;
                    let v = match v {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    Ok(format!("{k}={v}"))
                })
                .collect::<Result<Vec<_>>>()?
                .join(","),
        };
        match out.iter_mut().find(|g| g.name == name) {
            Some(g) => g.runs.push(i),
            None => out.push(Group {
                name,
                runs: vec![i],
            }),
        }
    }
    Ok(out)
}

/// Mean and (population) standard deviation of one metric over a group's runs
/// that have it: the same statistic `vssl eval --splits` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub values: Vec<f64>,
}

pub fn stat(runs: &[RunData], g: &Group, metric: &str) -> Option<Stat> {
    let values: Vec<f64> = g
        .runs
        .iter()
        .filter_map(|&i| runs[i].metrics.get(metric).copied())
        .collect();
    if values.is_empty() {
        return None;
    }
    let (mean, std) = mean_std(&values);
    Some(Stat { mean, std, values })
}

/// Metrics any run has.
pub fn available(runs: &[RunData]) -> Vec<String> {
    let mut all: Vec<String> = runs
        .iter()
        .flat_map(|r| r.metrics.keys().cloned())
        .collect();
    all.sort();
    all.dedup();
    all
}

/// The headline metric of each protocol that any run has: linear probe video top-1,
/// retrieval recall@1, fine-tuning best top-1; all metrics if none of those exist.
pub fn default_metrics(runs: &[RunData]) -> Vec<String> {
    let all = available(runs);
    let picked: Vec<String> = ["linear.top1", "knn.recall@1", "finetune.best.top1"]
        .iter()
        .filter(|m| all.iter().any(|a| a == *m))
        .map(|m| m.to_string())
        .collect();
    if picked.is_empty() {
        all
    } else {
        picked
    }
}
