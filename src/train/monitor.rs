//! What the training loop reports while it runs, in one place: a `metrics.jsonl`
//! line and TensorBoard scalars at every log step (each loss term, the total, the
//! learning rate of each parameter group, the gradient norm, clips/s and the share
//! of time spent waiting for data), the resolved recipe as TensorBoard text,
//! progress on stderr, and the run-state file. Nothing here feeds back into
//! training: the numbers are read after they are computed.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::engine::LoopConfig;
use crate::run_dir::RunDir;
use crate::telemetry::{EventWriter, Phase, Progress, StateFile};
use crate::{Error, Result};

/// TensorBoard tag of the resolved recipe.
pub const RECIPE_TAG: &str = "hparams/recipe";

/// What one logged step measured.
pub struct StepLog<'a> {
    /// Steps done (1-based).
    pub step: u64,
    pub loss: f64,
    /// The schedule's rate; group `g` trains at `lr * g.1`.
    pub lr: f64,
    pub grad_norm: Option<f64>,
    /// The objective's extra scalars (loss terms, accuracies).
    pub scalars: &'a [(&'static str, f64)],
    pub skipped_videos: usize,
}

/// Throughput since the last log step.
struct Window {
    began: Instant,
    clips: usize,
    waited: Duration,
}

impl Window {
    fn new() -> Self {
        Self {
            began: Instant::now(),
            clips: 0,
            waited: Duration::ZERO,
        }
    }
}

/// The loop's reporter.
pub struct Monitor {
    metrics: File,
    metrics_path: PathBuf,
    tb: EventWriter,
    progress: Progress,
    state: StateFile,
    /// (state prefix, lr factor) of each parameter group.
    groups: Vec<(String, f64)>,
    window: Window,
    msg: String,
}

impl Monitor {
    /// Starts reporting for a loop that begins after step `start`; events of later
    /// steps left by an earlier process (and its recipe text) are dropped.
    pub fn open(
        run: &RunDir,
        cfg: &LoopConfig,
        start: u64,
        groups: Vec<(String, f64)>,
    ) -> Result<Self> {
        let metrics_path = run.metrics();
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| Error::io(&metrics_path, e))?;
        let mut tb = EventWriter::create(run, &|e| {
            e.step as u64 > start || e.tag() == Some(RECIPE_TAG)
        })?;
        if let Some(text) = &cfg.recipe {
            tb.text(0, RECIPE_TAG, &format!("```toml\n{text}\n```"))?;
        }
        Ok(Self {
            metrics,
            metrics_path,
            tb,
            progress: Progress::new(&cfg.name, "steps", cfg.total, start),
            state: StateFile::start(run, start, cfg.total)?,
            groups,
            window: Window::new(),
            msg: String::new(),
        })
    }

    /// The loop waited `d` for its next batch of `clips` clips.
    pub fn batch(&mut self, d: Duration, clips: usize) {
        self.window.waited += d;
        self.window.clips += clips;
    }

    /// A logged step: the metrics line, the scalars, the progress message.
    pub fn log(&mut self, s: &StepLog) -> Result<()> {
        let secs = self.window.began.elapsed().as_secs_f64().max(1e-9);
        let clips_per_s = self.window.clips as f64 / secs;
        let wait = (self.window.waited.as_secs_f64() / secs).min(1.0);
        let mut line = serde_json::json!({
            "step": s.step, "loss": s.loss, "lr": s.lr, "clips_per_s": clips_per_s,
            "data_wait": wait,
        });
        if let Some(g) = s.grad_norm {
            line["grad_norm"] = g.into();
        }
        for (k, v) in s.scalars {
            line[*k] = (*v).into();
        }
        if s.skipped_videos > 0 {
            line["skipped_videos"] = s.skipped_videos.into();
        }
        writeln!(self.metrics, "{line}").map_err(|e| Error::io(&self.metrics_path, e))?;

        let step = s.step;
        self.tb.scalar(step, "train/loss", s.loss)?;
        for (k, v) in s.scalars {
            self.tb.scalar(step, &format!("train/{k}"), *v)?;
        }
        if let Some(g) = s.grad_norm {
            self.tb.scalar(step, "train/grad_norm", g)?;
        }
        for (prefix, factor) in &self.groups {
            self.tb
                .scalar(step, &format!("lr/{prefix}"), s.lr * factor)?;
        }
        self.tb.scalar(step, "perf/clips_per_s", clips_per_s)?;
        self.tb.scalar(step, "perf/data_wait", wait)?;

        // The first group's rate (fine-tuning's schedule is a factor of each group's).
        let lr = s.lr * self.groups.first().map_or(1.0, |g| g.1);
        self.msg = format!(
            "loss {:.4} lr {lr:.2e} {clips_per_s:.0} clips/s data-wait {:.0}%",
            s.loss,
            100.0 * wait
        );
        self.progress.update(step, &self.msg);
        self.window = Window::new();
        Ok(())
    }

    /// Scalars the objective measured at `step` (fine-tuning's test scores), as
    /// `<prefix>/<name>`.
    pub fn measured(&mut self, step: u64, prefix: &str, scalars: &[(String, f64)]) -> Result<()> {
        for (k, v) in scalars {
            self.tb.scalar(step, &format!("{prefix}/{k}"), *v)?;
        }
        Ok(())
    }

    /// Step `step` is done (logged or not): the heartbeat.
    pub fn tick(&mut self, step: u64) -> Result<()> {
        self.state.heartbeat(step)
    }

    /// The loop ended at `step` of `total`, or failed with `err`.
    pub fn finish(self, step: u64, total: u64, err: Option<&Error>) -> Result<()> {
        self.progress.finish();
        let phase = match err {
            Some(_) => Phase::Failed,
            None if step >= total => Phase::Finished,
            None => Phase::Interrupted,
        };
        self.state.finish(phase, step, err.map(|e| e.to_string()))
    }
}
