//! `vssl runs`: every run directory found under some folders, one row each (id,
//! method, architecture, data, step/total, state, age, headline metrics), read from
//! the directories alone: the resolved recipe, `state.json` (whose pid and host tell
//! a live run from an interrupted one), `metrics.jsonl` and `eval/*.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::runs::{default_metrics, RunData};
use crate::run_dir::RunDir;
use crate::telemetry::state::{host, now};
use crate::telemetry::{Phase, RunState};
use crate::{Error, Result};

/// Folders this deep below a named one are searched (`weights/sweeps/<name>/<point>`).
const MAX_DEPTH: usize = 3;

/// One run, as `vssl runs` lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunRow {
    /// The directory relative to the folder it was found under.
    pub id: String,
    pub dir: PathBuf,
    pub method: String,
    pub arch: String,
    pub data: String,
    /// Steps done (from `state.json`, else the last `metrics.jsonl` line).
    pub step: u64,
    /// Steps of the whole run, when `state.json` says.
    pub total: Option<u64>,
    pub state: Phase,
    /// What is running when the pretraining has finished: a fine-tuning sub-run
    /// (`eval/finetune 30/60`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Seconds since the run last wrote its state (or its metrics).
    pub age_secs: Option<u64>,
    /// The headline metrics present (`linear.top1`, `knn.recall@1`, ...), or the
    /// final pretraining loss when there are none.
    pub metrics: BTreeMap<String, f64>,
    /// A failed run's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Run directories at or below `root` (not inside another run), sorted.
fn find(root: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if RunDir::is_run(root) {
        out.push(root.to_path_buf());
        return;
    }
    if depth == 0 {
        return;
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for d in dirs {
        find(&d, depth - 1, out);
    }
}

fn key(recipe: &toml::Table, section: &str, field: &str) -> String {
    recipe
        .get(section)
        .and_then(|s| s.get(field))
        .and_then(|v| v.as_str())
        .unwrap_or("-")
        .to_string()
}

fn mtime_age(path: &Path, now: u64) -> Option<u64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    let secs = m.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(now.saturating_sub(secs))
}

/// Reads one run directory.
pub fn row(dir: &Path, id: String) -> Result<RunRow> {
    let data = RunData::load(dir)?;
    let run = RunDir::new(dir);
    let state = RunState::read(&run)?;
    let t = now();
    let here = host();
    let (phase, step, total, age, error) = match &state {
        Some(s) => (
            s.observed(&here, t),
            s.step,
            Some(s.total),
            Some(t.saturating_sub(s.updated)),
            s.error.clone(),
        ),
        // Written before runs had a state file: the files on disk tell what they can.
        None => (
            if data.trained {
                Phase::Finished
            } else {
                Phase::Interrupted
            },
            data.losses.last().map_or(0, |l| l.0),
            None,
            mtime_age(&run.metrics(), t).or_else(|| mtime_age(&run.recipe(), t)),
            None,
        ),
    };
    let mut stage = None;
    let mut age = age;
    let mut phase = phase;
    if phase == Phase::Finished {
        if let Some((name, s)) = running_finetune(&run, &here, t)? {
            stage = Some(format!("eval/{name} {}/{}", s.step, s.total));
            age = Some(t.saturating_sub(s.updated));
            phase = Phase::Running;
        }
    }
    let headline = default_metrics(std::slice::from_ref(&data));
    let metrics = data
        .metrics
        .iter()
        .filter(|(k, _)| headline.contains(k))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    Ok(RunRow {
        id,
        dir: dir.to_path_buf(),
        method: key(&data.recipe, "method", "kind"),
        arch: key(&data.recipe, "backbone", "arch"),
        data: key(&data.recipe, "data", "kind"),
        step,
        total,
        state: phase,
        stage,
        age_secs: age,
        metrics,
        error,
    })
}

/// A fine-tuning sub-run (`eval/<stem>/`) whose process is running, if there is one.
fn running_finetune(run: &RunDir, here: &str, now: u64) -> Result<Option<(String, RunState)>> {
    let mut subs: Vec<PathBuf> = std::fs::read_dir(run.eval_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subs.sort();
    for sub in subs {
        if let Some(s) = RunState::read(&RunDir::new(&sub))? {
            if s.observed(here, now) == Phase::Running {
                let name = sub
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into());
                return Ok(Some((name, s)));
            }
        }
    }
    Ok(None)
}

/// Every run under `roots` (each a run directory or a folder of them).
pub fn list(roots: &[PathBuf]) -> Result<Vec<RunRow>> {
    let mut rows = Vec::new();
    for root in roots {
        if !root.is_dir() {
            return Err(Error::BadInput(format!(
                "{}: no such directory",
                root.display()
            )));
        }
        let mut dirs = Vec::new();
        find(root, MAX_DEPTH, &mut dirs);
        for d in dirs {
            let id = match d.strip_prefix(root) {
                Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
                _ => d
                    .file_name()
                    .map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into()),
            };
            rows.push(row(&d, id)?);
        }
    }
    Ok(rows)
}

/// `3m`, `2h`, `5d`: how long ago, coarsely.
fn age(secs: Option<u64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 60 => format!("{s}s"),
        Some(s) if s < 3600 => format!("{}m", s / 60),
        Some(s) if s < 86_400 => format!("{}h", s / 3600),
        Some(s) => format!("{}d", s / 86_400),
    }
}

/// The rows as an aligned text table.
pub fn table(rows: &[RunRow]) -> String {
    let head = [
        "id", "method", "arch", "data", "step", "state", "age", "metrics",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let metrics: Vec<String> = r
                .metrics
                .iter()
                .map(|(k, v)| format!("{k}={v:.3}"))
                .collect();
            [
                r.id.clone(),
                r.method.clone(),
                r.arch.clone(),
                r.data.clone(),
                match r.total {
                    Some(t) => format!("{}/{t}", r.step),
                    None => format!("{}/?", r.step),
                },
                match &r.stage {
                    Some(stage) => format!("{} ({stage})", r.state.name()),
                    None => r.state.name().to_string(),
                },
                age(r.age_secs),
                metrics.join(" "),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: &[String]| {
        let parts: Vec<String> = c
            .iter()
            .zip(width)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        parts.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(&head.map(String::from));
    for c in &cells {
        out.push_str(&line(c));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_coarse() {
        assert_eq!(age(None), "-");
        assert_eq!(age(Some(59)), "59s");
        assert_eq!(age(Some(3599)), "59m");
        assert_eq!(age(Some(7200)), "2h");
        assert_eq!(age(Some(3 * 86_400)), "3d");
    }
}
