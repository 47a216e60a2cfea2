//! The one training loop, shared by pretraining and fine-tuning: batches from the
//! loader, the loss from an [`Objective`], backward, gradient clipping, the
//! optimiser step under a schedule, `metrics.jsonl` logging, checkpoints with
//! pruning, and exact resume. [`update`] is the only place in the crate that runs
//! backward and an optimiser step; the linear probe and the bench call it too.
//!
//! All randomness is counter-based on (seed, step), so a checkpoint needs only the
//! step (and the objective's own state) to continue exactly.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use super::optim::{clip_grad_norm, Optimizer};
use super::schedule::Schedule;
use crate::data::augment::AugmentConfig;
use crate::data::bad_videos::BadVideos;
use crate::data::clip::ClipPlanner;
use crate::data::datasets::VideoDataset;
use crate::data::loader::{BatchPlan, HostBatch, Loader};
use crate::data::DataConfig;
use crate::io::{read_safetensors, write_safetensors_atomic};
use crate::pretext::StepOutput;
use crate::run_dir::{temp_sibling, RunDir};
use crate::{Error, Result};

/// What the loop trains: the loss of a batch, and the state a checkpoint keeps.
pub trait Objective {
    /// How the loader samples clips from each video.
    fn planner(&self) -> Arc<dyn ClipPlanner>;
    /// Loss (and extra logged scalars) of one training batch.
    fn loss(&mut self, batch: HostBatch, device: &Device) -> Result<StepOutput>;
    /// Runs after each optimiser step (e.g. a momentum-encoder update).
    fn after_step(&mut self) -> Result<()> {
        Ok(())
    }
    /// Runs after step `done` (1-based, loss `loss`) and before its checkpoint:
    /// fine-tuning tests here every N epochs.
    fn after_update(&mut self, _done: u64, _loss: f64) -> Result<()> {
        Ok(())
    }
    /// The model's tensors (`model.*` in a checkpoint).
    fn model_tensors(&self) -> Vec<(String, Tensor)>;
    /// Loads tensors named as [`model_tensors`](Self::model_tensors) names them.
    fn load_model(&mut self, tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()>;
    /// Extra resumable state (`method.*` in a checkpoint).
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
    fn load_state(&mut self, _state: &BTreeMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
    /// Extra checkpoint metadata (fine-tuning's test history).
    fn metadata(&self) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }
    fn load_metadata(&mut self, _meta: &HashMap<String, String>, _path: &Path) -> Result<()> {
        Ok(())
    }
}

/// One optimiser over a group of parameters; its learning rate at a step is
/// `lr_factor * schedule(step)`. Its state is saved as `<prefix>.*`.
pub struct ParamGroup {
    pub prefix: String,
    pub optimizer: Optimizer,
    pub lr_factor: f64,
}

impl ParamGroup {
    /// A group with the schedule's learning rate, state saved as `optim.*`.
    pub fn single(optimizer: Optimizer) -> Self {
        Self {
            prefix: "optim".into(),
            optimizer,
            lr_factor: 1.0,
        }
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let p = format!("{}.", self.prefix);
        Ok(self
            .optimizer
            .state()?
            .into_iter()
            .map(|(k, v)| (k.replacen("optim.", &p, 1), v))
            .collect())
    }

    fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let p = format!("{}.", self.prefix);
        let own: BTreeMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, v)| Some((format!("optim.{}", k.strip_prefix(&p)?), v.clone())))
            .collect();
        self.optimizer.load_state(&own)
    }
}

/// The single backward + optimiser step: gradients of `loss`, their global norm
/// clipped to `clip` over every group's parameters (0 disables; returns the
/// pre-clip norm when clipping), then each `(optimizer, lr)` steps.
pub fn update(
    loss: &Tensor,
    groups: &mut [(&mut Optimizer, f64)],
    clip: f64,
) -> Result<Option<f64>> {
    let mut grads = loss.backward()?;
    let norm = if clip > 0.0 {
        let norm = match groups {
            [(opt, _)] => clip_grad_norm(&mut grads, opt.params(), clip)?,
            _ => {
                let all: Vec<_> = groups
                    .iter()
                    .flat_map(|(o, _)| o.params().iter().cloned())
                    .collect();
                clip_grad_norm(&mut grads, &all, clip)?
            }
        };
        Some(norm)
    } else {
        None
    };
    for (opt, lr) in groups.iter_mut() {
        opt.step(&grads, *lr)?;
    }
    Ok(norm)
}

/// How the loader builds batches (the data geometry).
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Crop size in pixels.
    pub size: usize,
    pub augment: AugmentConfig,
    /// Decoding threads.
    pub workers: usize,
}

impl From<&DataConfig> for LoaderConfig {
    /// The geometry a `[data]` table gives its batches.
    fn from(d: &DataConfig) -> Self {
        Self {
            size: d.size,
            augment: d.augment.clone(),
            workers: d.workers,
        }
    }
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    pub loader: LoaderConfig,
    /// Videos per batch.
    pub batch_size: usize,
    /// Seed of the loader's and the objective's counter-based randomness.
    pub seed: u64,
    /// Steps of the whole run (the schedule's length).
    pub total: u64,
    /// Stop after this step (`total` unless interrupted on purpose).
    pub end: u64,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// Write a metrics line every this many steps (and at the last one).
    pub log_every: u64,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk.
    pub keep_checkpoints: usize,
    /// Continue from the newest readable checkpoint, if there is one.
    pub resume: bool,
    /// Metadata of every checkpoint (the loop adds `step`, `seed` and `rng`).
    pub metadata: HashMap<String, String>,
}

/// What a loop did.
#[derive(Debug, Clone)]
pub struct LoopSummary {
    pub steps_done: u64,
    pub last_loss: f64,
    pub seconds: f64,
    /// Distinct videos skipped as unreadable.
    pub bad_videos: usize,
}

/// Checkpoint metadata of a step.
pub fn step_metadata(cfg: &LoopConfig, step: u64) -> HashMap<String, String> {
    let mut meta = cfg.metadata.clone();
    meta.insert("step".into(), step.to_string());
    meta.insert("seed".into(), cfg.seed.to_string());
    meta.insert(
        "rng".into(),
        format!("counter-based: seed={}, next_step={step}", cfg.seed),
    );
    meta
}

/// Runs `obj` from its last checkpoint (with `cfg.resume`) or from step 0 up to
/// `cfg.end`, writing metrics, checkpoints and the bad-video list into `run`.
pub fn run(
    obj: &mut dyn Objective,
    groups: &mut [ParamGroup],
    sched: &mut Schedule,
    dataset: Arc<dyn VideoDataset>,
    cfg: &LoopConfig,
    run: &RunDir,
    device: &Device,
) -> Result<LoopSummary> {
    if cfg.batch_size == 0 || cfg.log_every == 0 {
        return Err(Error::BadInput(format!(
            "training loop: batch_size ({}) and log_every ({}) must be >= 1",
            cfg.batch_size, cfg.log_every
        )));
    }
    std::fs::create_dir_all(run.checkpoints_dir()).map_err(|e| Error::io(run.path(), e))?;
    run.remove_stale_temp_files();
    let mut start = 0u64;
    if cfg.resume && !run.checkpoints().is_empty() {
        start = resume_from(run, obj, groups, sched, device)?;
        truncate_metrics(&run.metrics(), start)?;
    }
    let plan = BatchPlan {
        planner: obj.planner(),
        size: cfg.loader.size,
        batch_size: cfg.batch_size,
        seed: cfg.seed,
        augment: cfg.loader.augment.clone(),
    };
    let metrics_path = run.metrics();
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let bar = ProgressBar::new(cfg.total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(start);

    let began = Instant::now();
    let mut last_loss = f64::NAN;
    let mut window = (Instant::now(), 0usize);
    let loader = Loader::spawn(dataset, plan, start, cfg.end, cfg.loader.workers);
    let mut bad = BadVideos::open(run);
    for hb in loader {
        let hb = hb?;
        bad.record(&hb.skipped)?;
        let (step, clips, skipped) = (hb.step, hb.shape[0], hb.skipped.len());
        let out = obj.loss(hb, device)?;
        let loss = out.loss.to_scalar::<f32>()? as f64;
        if !loss.is_finite() {
            return Err(Error::Internal(format!(
                "loss became {loss} at step {step}; lower train.lr?"
            )));
        }
        let lr = sched.lr_at(step);
        let mut steps: Vec<(&mut Optimizer, f64)> = groups
            .iter_mut()
            .map(|g| (&mut g.optimizer, g.lr_factor * lr))
            .collect();
        let grad_norm = update(&out.loss, &mut steps, cfg.grad_clip)?;
        sched.observe(step, loss);
        obj.after_step()?;
        last_loss = loss;
        window.1 += clips;
        let done = step + 1;
        if done % cfg.log_every == 0 || done == cfg.total {
            let secs = window.0.elapsed().as_secs_f64().max(1e-9);
            let mut line = serde_json::json!({
                "step": done, "loss": loss, "lr": lr, "clips_per_s": window.1 as f64 / secs,
            });
            if let Some(g) = grad_norm {
                line["grad_norm"] = g.into();
            }
            for (k, v) in &out.scalars {
                line[*k] = (*v).into();
            }
            if skipped > 0 {
                line["skipped_videos"] = skipped.into();
            }
            writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
            bar.set_message(format!(
                "loss {loss:.4} lr {lr:.2e} {:.0} clips/s",
                window.1 as f64 / secs
            ));
            window = (Instant::now(), 0);
        }
        bar.set_position(done);
        obj.after_update(done, loss)?;
        let ckpt_due = cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0;
        if ckpt_due || done == cfg.end {
            save_checkpoint(run, cfg, obj, groups, sched, done)?;
        }
    }
    bar.finish_and_clear();
    Ok(LoopSummary {
        steps_done: cfg.end,
        last_loss,
        seconds: began.elapsed().as_secs_f64(),
        bad_videos: bad.count(),
    })
}

fn save_checkpoint(
    run: &RunDir,
    cfg: &LoopConfig,
    obj: &dyn Objective,
    groups: &[ParamGroup],
    sched: &Schedule,
    step: u64,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = obj
        .model_tensors()
        .into_iter()
        .map(|(k, v)| (format!("model.{k}"), v))
        .collect();
    for g in groups {
        tensors.extend(g.state()?);
    }
    tensors.extend(
        sched
            .state()?
            .into_iter()
            .map(|(k, v)| (format!("schedule.{k}"), v)),
    );
    tensors.extend(
        obj.state()?
            .into_iter()
            .map(|(k, v)| (format!("method.{k}"), v)),
    );
    let mut meta = step_metadata(cfg, step);
    meta.extend(obj.metadata()?);
    write_safetensors_atomic(&run.checkpoint(step), &tensors, &meta)?;
    let all = run.checkpoints();
    for (_, old) in all
        .iter()
        .take(all.len().saturating_sub(cfg.keep_checkpoints))
    {
        let _ = std::fs::remove_file(old);
    }
    Ok(())
}

/// Restores the newest readable checkpoint; returns its step. A checkpoint that
/// cannot be read is reported and the previous one is tried.
fn resume_from(
    run: &RunDir,
    obj: &mut dyn Objective,
    groups: &mut [ParamGroup],
    sched: &mut Schedule,
    device: &Device,
) -> Result<u64> {
    let mut last_err = None;
    for (step, path) in run.checkpoints().iter().rev() {
        match read_safetensors(path, device) {
            Ok((tensors, meta)) => {
                let part = |prefix: &str| -> BTreeMap<String, Tensor> {
                    tensors
                        .iter()
                        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
                        .collect()
                };
                obj.load_model(&part("model."), path)?;
                for g in groups.iter_mut() {
                    g.load_state(&tensors)
                        .map_err(|e| Error::checkpoint(path, e.to_string()))?;
                }
                obj.load_state(&part("method."))?;
                sched
                    .load_state(&part("schedule."))
                    .map_err(|e| Error::checkpoint(path, e.to_string()))?;
                obj.load_metadata(&meta, path)?;
                let meta_step: Option<u64> = meta.get("step").and_then(|s| s.parse().ok());
                if meta_step != Some(*step) {
                    return Err(Error::checkpoint(
                        path,
                        "step in metadata does not match the file name",
                    ));
                }
                tracing::info!("resumed from {} (step {step})", path.display());
                return Ok(*step);
            }
            Err(e) => {
                tracing::warn!("cannot read checkpoint, trying an older one: {e}");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| Error::Internal("no checkpoint".into())))
}

/// Keeps metrics lines of steps `<= step` (a resumed run rewrites the rest).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let tmp = temp_sibling(path);
    std::fs::write(&tmp, kept).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
