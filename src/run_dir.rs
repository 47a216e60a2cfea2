//! The run directory's layout, spelled once.
//!
//! Training, evaluation, sweeps and reports all read and write the same files
//! (`weights/<run>/recipe.resolved.toml`, `model.safetensors`, `metrics.jsonl`,
//! `checkpoints/step-NNNNNNNN.safetensors`, `eval/<stem>.json`, ...). Every file
//! name lives here so that a module never spells one itself and a later file (a
//! Hub card, telemetry) is added in one place.

use std::path::{Path, PathBuf};

/// What a sweep writes as `point.toml` in each run directory (read back by `vssl
/// compare`): the run's place in its sweep. Here, with the layout, so the reports
/// that read it need not depend on the sweep that wrote it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct PointInfo {
    pub sweep: String,
    pub index: usize,
    pub label: String,
    pub group: String,
    pub base: String,
    pub pretrain: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub eval: Vec<String>,
    pub hash: String,
    pub overrides: toml::Table,
}

/// The fully resolved recipe a run was trained from.
pub const RECIPE_FILE: &str = "recipe.resolved.toml";
/// The trained model (backbone + method heads).
pub const MODEL_FILE: &str = "model.safetensors";
/// One JSON line per logged step.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Resumable checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Downstream results.
pub const EVAL_DIR: &str = "eval";
/// A sweep point's description.
pub const POINT_FILE: &str = "point.toml";
/// Videos the loader had to skip.
pub const BAD_VIDEOS_FILE: &str = "bad_videos.txt";
/// Held by the process writing into the directory (see `crate::lock`).
pub const LOCK_FILE: &str = "lock";
/// A sweep's log of a point's `vssl train` child.
pub const TRAIN_LOG: &str = "train.log";
/// A sweep's log of a point's `vssl eval` child.
pub const EVAL_LOG: &str = "eval.log";
/// Fine-tuning: the best tested weights.
pub const BEST_FILE: &str = "best.safetensors";
/// Fine-tuning: the weights after the last epoch.
pub const LAST_FILE: &str = "last.safetensors";
/// The training process's state and heartbeat (running, finished, failed, ...).
pub const STATE_FILE: &str = "state.json";
/// TensorBoard event files.
pub const TB_DIR: &str = "tb";
/// How TensorBoard names its event files: `events.out.tfevents.<time>.<host>...`.
pub const TB_EVENTS_PREFIX: &str = "events.out.tfevents.";

const CHECKPOINT_PREFIX: &str = "step-";
const CHECKPOINT_SUFFIX: &str = ".safetensors";

/// A run directory: a pretraining run (`weights/<run>`) or a fine-tuning sub-run
/// (`<run>/eval/finetune`), which has the same checkpoint layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Whether `path` looks like a run directory (it holds a resolved recipe).
    pub fn is_run(path: &Path) -> bool {
        path.join(RECIPE_FILE).is_file()
    }

    pub fn recipe(&self) -> PathBuf {
        self.root.join(RECIPE_FILE)
    }

    /// The resolved recipe's path, or an error saying the directory is not a run.
    pub fn existing_recipe(&self) -> crate::Result<PathBuf> {
        let f = self.recipe();
        if f.is_file() {
            return Ok(f);
        }
        Err(crate::Error::BadInput(format!(
            "{}: missing; is {} a vssl run directory?",
            f.display(),
            self.root.display()
        )))
    }

    pub fn model(&self) -> PathBuf {
        self.root.join(MODEL_FILE)
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join(METRICS_FILE)
    }

    pub fn point(&self) -> PathBuf {
        self.root.join(POINT_FILE)
    }

    pub fn bad_videos(&self) -> PathBuf {
        self.root.join(BAD_VIDEOS_FILE)
    }

    /// A sweep's log of the point's `vssl train` child.
    pub fn train_log(&self) -> PathBuf {
        self.root.join(TRAIN_LOG)
    }

    /// A sweep's log of the point's `vssl eval` child.
    pub fn eval_log(&self) -> PathBuf {
        self.root.join(EVAL_LOG)
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join(CHECKPOINTS_DIR)
    }

    /// Where the processes of a data-parallel run meet (rank 0's address file).
    pub fn ranks_dir(&self) -> PathBuf {
        self.root.join(".ranks")
    }

    /// The checkpoint file of a step: `checkpoints/step-NNNNNNNN.safetensors`.
    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints_dir().join(checkpoint_name(step))
    }

    /// Checkpoints on disk, oldest first (files not named as [`checkpoint`](Self::checkpoint)
    /// names them are ignored).
    pub fn checkpoints(&self) -> Vec<(u64, PathBuf)> {
        let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(self.checkpoints_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((checkpoint_step(&e.file_name().to_string_lossy())?, e.path())))
            .collect();
        out.sort();
        out
    }

    pub fn eval_dir(&self) -> PathBuf {
        self.root.join(EVAL_DIR)
    }

    /// A protocol's result file: `eval/<stem>.json`.
    pub fn eval_file(&self, stem: &str) -> PathBuf {
        self.eval_dir().join(format!("{stem}.json"))
    }

    /// Result files under `eval/`, sorted by name.
    pub fn eval_files(&self) -> Vec<PathBuf> {
        files_in(&self.eval_dir(), |name| name.ends_with(".json"))
    }

    /// The fine-tuning sub-run of a protocol stem: `eval/<stem>/`.
    pub fn finetune(&self, stem: &str) -> RunDir {
        RunDir::new(self.eval_dir().join(stem))
    }

    /// Fine-tuning sub-run: the best tested weights.
    pub fn best(&self) -> PathBuf {
        self.root.join(BEST_FILE)
    }

    /// Fine-tuning sub-run: the last weights.
    pub fn last(&self) -> PathBuf {
        self.root.join(LAST_FILE)
    }

    /// The training process's state file.
    pub fn state(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    /// TensorBoard's log directory of the run.
    pub fn tb_dir(&self) -> PathBuf {
        self.root.join(TB_DIR)
    }

    /// An event file: `tb/events.out.tfevents.<unique>`.
    pub fn tb_event_file(&self, unique: &str) -> PathBuf {
        self.tb_dir().join(format!("{TB_EVENTS_PREFIX}{unique}"))
    }

    /// Event files under `tb/`, sorted by name (temporary files left out).
    pub fn tb_event_files(&self) -> Vec<PathBuf> {
        files_in(&self.tb_dir(), |name| {
            name.starts_with(TB_EVENTS_PREFIX) && !is_temp_name(name)
        })
    }

    /// Removes temporary files in the checkpoints directory: a process killed inside
    /// an atomic write leaves one behind, and the checkpoint it was writing never got
    /// its final name, so the file is garbage.
    pub fn remove_stale_temp_files(&self) {
        let dir = self.checkpoints_dir();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if is_temp_name(&e.file_name().to_string_lossy()) {
                tracing::info!("removing interrupted write {}", e.path().display());
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Entries of `dir` whose names `keep` accepts, sorted (none if `dir` is missing).
fn files_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| keep(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Checkpoint file name of a step.
pub fn checkpoint_name(step: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{step:08}{CHECKPOINT_SUFFIX}")
}

/// The step of a checkpoint file name, if it is one.
pub fn checkpoint_step(name: &str) -> Option<u64> {
    name.strip_prefix(CHECKPOINT_PREFIX)?
        .strip_suffix(CHECKPOINT_SUFFIX)?
        .parse()
        .ok()
}

/// Temporary siblings of atomically written files (`<name>.tmp-<pid>`, `<name>.tmp`).
pub fn is_temp_name(name: &str) -> bool {
    name.contains(".tmp")
}

/// The temporary sibling a whole-file rewrite of `path` goes through
/// (`metrics.jsonl` -> `metrics.jsonl.tmp`).
pub fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `bytes` through its [`temp_sibling`] and a rename, so a
/// reader sees the old file or the new one, never half of one.
pub fn replace_file(path: &Path, bytes: &[u8]) -> crate::Result<()> {
    let tmp = temp_sibling(path);
    std::fs::write(&tmp, bytes).map_err(|e| crate::Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| crate::Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let r = RunDir::new("/w/run");
        assert_eq!(r.recipe(), Path::new("/w/run/recipe.resolved.toml"));
        assert_eq!(r.model(), Path::new("/w/run/model.safetensors"));
        assert_eq!(r.metrics(), Path::new("/w/run/metrics.jsonl"));
        assert_eq!(r.point(), Path::new("/w/run/point.toml"));
        assert_eq!(r.bad_videos(), Path::new("/w/run/bad_videos.txt"));
        assert_eq!(r.state(), Path::new("/w/run/state.json"));
        assert_eq!(
            r.tb_event_file("1.h.2.0"),
            Path::new("/w/run/tb/events.out.tfevents.1.h.2.0")
        );
        assert_eq!(
            r.checkpoint(12),
            Path::new("/w/run/checkpoints/step-00000012.safetensors")
        );
        assert_eq!(
            r.eval_file("knn-random"),
            Path::new("/w/run/eval/knn-random.json")
        );
        let ft = r.finetune("finetune");
        assert_eq!(ft.path(), Path::new("/w/run/eval/finetune"));
        assert_eq!(
            ft.best(),
            Path::new("/w/run/eval/finetune/best.safetensors")
        );
        assert_eq!(
            ft.last(),
            Path::new("/w/run/eval/finetune/last.safetensors")
        );
        assert_eq!(
            temp_sibling(&r.metrics()),
            Path::new("/w/run/metrics.jsonl.tmp")
        );
    }

    #[test]
    fn checkpoint_names_round_trip() {
        assert_eq!(checkpoint_name(7), "step-00000007.safetensors");
        assert_eq!(checkpoint_step(&checkpoint_name(123_456)), Some(123_456));
        assert_eq!(checkpoint_step("step-x.safetensors"), None);
        assert_eq!(checkpoint_step("step-00000001.safetensors.tmp-9"), None);
        assert!(is_temp_name("step-00000001.safetensors.tmp-9"));
    }

    #[test]
    fn lists_checkpoints_oldest_first_and_removes_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let r = RunDir::new(d.path());
        assert!(r.checkpoints().is_empty());
        std::fs::create_dir_all(r.checkpoints_dir()).unwrap();
        for s in [20, 3, 100] {
            std::fs::write(r.checkpoint(s), b"x").unwrap();
        }
        let tmp = r.checkpoints_dir().join("step-00000200.safetensors.tmp-1");
        std::fs::write(&tmp, b"x").unwrap();
        std::fs::write(r.checkpoints_dir().join("notes.txt"), b"x").unwrap();
        let steps: Vec<u64> = r.checkpoints().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![3, 20, 100]);
        r.remove_stale_temp_files();
        assert!(!tmp.exists());
        assert!(!RunDir::is_run(d.path()));
        std::fs::write(r.recipe(), "").unwrap();
        assert!(RunDir::is_run(d.path()));
    }
}
