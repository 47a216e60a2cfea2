//! Ablation sweeps: one TOML file expands into many runs (grid, zip, explicit runs,
//! seeds), every recipe resolved and validated before anything starts, each run in
//! its own directory under `weights/sweeps/<name>/`. Executors: [`local`] (child
//! processes on this machine, N at a time, skipping finished runs) and [`slurm`]
//! (one recipe per point and an sbatch job-array script).
//!
//! Sweep file:
//! ```toml
//! name = "lr_norm"                        # default: the file's stem
//! base = "experiments/quickstart.toml"    # where [grid]/[zip] points start
//! seeds = [0, 1, 2]                       # every point once per seed (train.seed)
//! eval = ["linear", "knn"]                # after each pretraining
//! [grid]                                  # cartesian product (keys alphabetical, last fastest)
//! "train.lr" = [0.001, 0.003]
//! [zip]                                   # varied together, same length
//! "train.steps" = [100, 300]
//! "train.warmup_steps" = [10, 30]
//! [[runs]]                                # explicit points, own base allowed
//! name = "random_init"
//! pretrain = false                        # evaluate the untrained backbone
//! set = { "backbone.norm" = "bn" }
//! [slurm]
//! partition = "gpu"
//! gpus = 1
//! ```
//! Points: grid x zip points from `base` (or `base` alone when there are neither
//! axes nor runs), then the `[[runs]]`; the whole list once per seed, seeds outermost.

pub mod expand;
pub mod local;
pub mod slurm;
pub mod spec;

use std::path::{Path, PathBuf};

pub use crate::run_dir::PointInfo;
pub use expand::Point;
pub use spec::{SlurmConfig, SweepSpec};

use crate::eval::Protocol;
use crate::run_dir::RunDir;
use crate::{Error, Result};

/// A sweep file expanded into resolved points.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub spec: SweepSpec,
    /// `weights/sweeps/<name>` unless given.
    pub dir: PathBuf,
    pub points: Vec<Point>,
}

/// Loads a sweep file: parse, expand, resolve and validate every point's recipe.
/// `sets` are `--set` overrides for all points; `out` replaces `weights/sweeps/<name>`.
pub fn load(file: &Path, sets: &[String], out: Option<&Path>) -> Result<Sweep> {
    let spec = spec::parse(file)?;
    let dir = match out {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("weights").join("sweeps").join(&spec.name),
    };
    let points = expand::expand(&spec, sets, &dir)?;
    Ok(Sweep { spec, dir, points })
}

/// How far a point's run directory has got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Model (when pretraining) and every requested evaluation exist.
    Finished,
    /// Pretraining is done (or not wanted); these evaluations are missing.
    Evaluate(Vec<Protocol>),
    /// Pretraining stopped after a checkpoint: continue it with `--resume`.
    Resume,
    /// Nothing usable yet.
    Fresh,
}

impl RunState {
    pub fn describe(&self) -> &'static str {
        match self {
            RunState::Finished => "finished",
            RunState::Evaluate(_) => "needs eval",
            RunState::Resume => "partial (resumes)",
            RunState::Fresh => "new",
        }
    }
}

/// `<run>/eval/<protocol>[-random].json`, as `vssl eval` writes it.
pub fn eval_file(dir: &Path, p: Protocol, pretrain: bool) -> PathBuf {
    RunDir::new(dir).eval_file(&crate::eval::file_stem(p, !pretrain, None))
}

impl Sweep {
    /// The state of a point's run directory.
    pub fn state(&self, p: &Point) -> RunState {
        let missing = || -> Vec<Protocol> {
            self.spec
                .eval
                .iter()
                .copied()
                .filter(|&e| !eval_file(&p.dir, e, p.pretrain).is_file())
                .collect()
        };
        let run = RunDir::new(&p.dir);
        if p.pretrain && !run.model().is_file() {
            let ckpt = !run.checkpoints().is_empty();
            return if ckpt {
                RunState::Resume
            } else {
                RunState::Fresh
            };
        }
        let m = missing();
        if m.is_empty() {
            RunState::Finished
        } else {
            RunState::Evaluate(m)
        }
    }

    /// Creates a point's run directory with its resolved recipe and `point.toml`
    /// (files are only rewritten when their content changed).
    pub fn prepare(&self, p: &Point) -> Result<()> {
        std::fs::create_dir_all(&p.dir).map_err(|e| Error::io(&p.dir, e))?;
        let info = toml::to_string(&p.info(&self.spec.name, &self.spec.eval))
            .map_err(|e| Error::Internal(e.to_string()))?;
        let run = RunDir::new(&p.dir);
        write_if_changed(&run.point(), &info)?;
        write_if_changed(&run.recipe(), &p.recipe.to_toml())?;
        if self.state(p) == RunState::Fresh {
            // A run killed before its first checkpoint: start over cleanly.
            let m = run.metrics();
            if m.exists() {
                std::fs::remove_file(&m).map_err(|e| Error::io(&m, e))?;
            }
        }
        Ok(())
    }
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// A path as shown to people: relative to the working directory when inside it.
pub fn shown(p: &Path) -> String {
    std::env::current_dir()
        .and_then(|d| d.canonicalize())
        .ok()
        .and_then(|d| p.strip_prefix(d).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| p.to_path_buf())
        .display()
        .to_string()
}

/// The overrides of a point as `key=value` text (for listings and scripts).
pub fn overrides_text(p: &Point) -> String {
    let s: Vec<String> = p
        .overrides
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if s.is_empty() {
        "(none)".into()
    } else {
        s.join(" ")
    }
}

/// A plain-text listing of the points and their states (`--dry-run`).
pub fn plan_table(sweep: &Sweep) -> String {
    let mut out = format!(
        "sweep `{}`: {} points -> {}\n",
        sweep.spec.name,
        sweep.points.len(),
        sweep.dir.display()
    );
    out.push_str("| # | run | state | base | overrides |\n| --- | --- | --- | --- | --- |\n");
    for p in &sweep.points {
        let base = if p.pretrain {
            shown(&p.base)
        } else {
            format!("{} (random init)", shown(&p.base))
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            p.index,
            p.dir
                .file_name()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default(),
            sweep.state(p).describe(),
            base,
            overrides_text(p)
        ));
    }
    out
}
