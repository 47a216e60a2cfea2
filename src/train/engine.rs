//! The one training loop, shared by pretraining and fine-tuning: batches from the
//! loader, the loss from an [`Objective`], backward, gradient clipping, the
//! optimiser step under a schedule, `metrics.jsonl` logging, checkpoints with
//! pruning, and exact resume. [`update`] is the only place in the crate that runs
//! backward and an optimiser step; the linear probe and the bench call it too.
//!
//! All randomness is counter-based on (seed, step), so a checkpoint needs only the
//! step (and the objective's own state) to continue exactly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};

use super::config::OnNonFinite;
use super::monitor::{Monitor, StepLog};
use super::optim::{clip_grad_norm, Optimizer};
use super::parallel::{self, Parallel};
use super::schedule::Schedule;
use crate::data::augment::AugmentConfig;
use crate::data::bad_videos::BadVideos;
use crate::data::clip::ClipPlanner;
use crate::data::datasets::VideoDataset;
use crate::data::loader::{BatchPlan, HostBatch, Loader, Shard};
use crate::data::DataConfig;
use crate::io::read_safetensors;
use crate::pretext::StepOutput;
use crate::run_dir::{replace_file, RunDir};
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
    /// fine-tuning tests here every N epochs. Returns what it measured, logged to
    /// TensorBoard as `test/<name>` at that step.
    fn after_update(&mut self, _done: u64, _loss: f64) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
    /// The model's tensors (`model.*` in a checkpoint).
    fn model_tensors(&self) -> Vec<(String, Tensor)>;
    /// The model's variables (parameters and buffers), named as
    /// [`model_tensors`](Self::model_tensors): what data parallelism keeps equal
    /// between ranks. An objective without them cannot run data-parallel.
    fn model_vars(&self) -> Result<Vec<(String, Var)>> {
        Err(Error::BadInput(
            "this objective cannot be trained data-parallel (it does not expose its variables)"
                .into(),
        ))
    }
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
    /// The group's name in logs: the prefix without `optim_` (`backbone`, `head`),
    /// `model` for the single group of pretraining.
    pub fn name(&self) -> &str {
        match self.prefix.as_str() {
            "optim" => "model",
            p => p.strip_prefix("optim_").unwrap_or(p),
        }
    }

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
    update_ranks(loss, groups, clip, None)
}

/// [`update`] on one rank of a data-parallel run: the gradients are averaged over
/// the ranks of `group` before clipping and the step.
pub fn update_ranks(
    loss: &Tensor,
    groups: &mut [(&mut Optimizer, f64)],
    clip: f64,
    group: Option<&dyn crate::ops::collective::Collective>,
) -> Result<Option<f64>> {
    let mut grads = crate::ops::grad_sink::backward(loss)?;
    if let Some(g) = group {
        let all: Vec<Var> = groups
            .iter()
            .flat_map(|(o, _)| o.params().iter().map(|(_, v)| v.clone()))
            .collect();
        parallel::all_reduce_grads(&mut grads, &all, g)?;
    }
    // The global norm is always measured (a NaN/Inf gradient must never reach the
    // weights); gradients are scaled only when `clip > 0`.
    let max_norm = if clip > 0.0 { clip } else { f64::INFINITY };
    let norm = match groups {
        [(opt, _)] => clip_grad_norm(&mut grads, opt.params(), max_norm)?,
        _ => {
            let all: Vec<_> = groups
                .iter()
                .flat_map(|(o, _)| o.params().iter().cloned())
                .collect();
            clip_grad_norm(&mut grads, &all, max_norm)?
        }
    };
    if !norm.is_finite() {
        return Err(Error::NonFinite(format!("the gradient norm is {norm}")));
    }
    for (opt, lr) in groups.iter_mut() {
        opt.step(&grads, *lr)?;
    }
    Ok((clip > 0.0).then_some(norm))
}

/// The first non-finite value among a step's loss and its scalars, named.
fn nonfinite_term(loss: f64, scalars: &[(&'static str, f64)]) -> Option<String> {
    let term = scalars.iter().find(|(_, v)| !v.is_finite());
    match (loss.is_finite(), term) {
        (_, Some((k, v))) => Some(format!("loss term `{k}` is {v}")),
        (false, None) => Some(format!("the loss is {loss}")),
        (true, None) => None,
    }
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
    /// What progress lines call the run.
    pub name: String,
    /// The resolved recipe, logged to TensorBoard as text.
    pub recipe: Option<String>,
    /// What a non-finite loss term or gradient does.
    pub on_nonfinite: OnNonFinite,
    /// Tests only: the (1-based) step whose loss is made infinite.
    pub inject_nonfinite_at: Option<u64>,
    /// This process is one rank of a data-parallel run: it trains on its shard of
    /// each batch, and only rank 0 writes checkpoints, metrics and TensorBoard.
    pub parallel: Option<Parallel>,
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
    if let Some(p) = &cfg.parallel {
        meta.insert(RANKS_KEY.into(), p.group.world().to_string());
    }
    meta
}

/// Checkpoint metadata: the ranks of a data-parallel run (absent: one process).
const RANKS_KEY: &str = "ranks";

/// Runs `obj` from its last checkpoint (with `cfg.resume`) or from step 0 up to
/// `cfg.end`, writing metrics, TensorBoard events, the run state, checkpoints and the
/// bad-video list into `run` ([`Monitor`] does the reporting).
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
    let shard = cfg.parallel.as_ref().map_or(Shard::WHOLE, |p| Shard {
        rank: p.group.rank(),
        world: p.group.world(),
    });
    shard.slice(cfg.batch_size)?;
    let lead = parallel::is_lead(cfg.parallel.as_ref());
    std::fs::create_dir_all(run.checkpoints_dir()).map_err(|e| Error::io(run.path(), e))?;
    if lead {
        run.remove_stale_temp_files();
    }
    let mut start = 0u64;
    let mut skipped_at_start = 0u64;
    if cfg.resume {
        // No checkpoint yet (killed before the first): start over at step 0, dropping
        // what the killed attempt logged.
        if !run.checkpoints().is_empty() {
            let world = cfg.parallel.as_ref().map_or(1, |p| p.group.world());
            (start, skipped_at_start) = resume_from(run, obj, groups, sched, device, world)?;
        }
        if lead {
            truncate_metrics(&run.metrics(), start)?;
        }
    }
    // Every rank starts from rank 0's model and method state (fresh or resumed),
    // whatever its own initialisation drew. `buffers`: what is taken from rank 0
    // again after each step when batch norm runs per rank.
    let buffers = match &cfg.parallel {
        Some(p) => {
            let vars = obj.model_vars()?;
            parallel::sync_model(&vars, p.group.as_ref())?;
            let state = obj.state()?;
            if !state.is_empty() {
                obj.load_state(&parallel::broadcast_tensors(state, p.group.as_ref())?)?;
            }
            let params: Vec<Var> = groups
                .iter()
                .flat_map(|g| g.optimizer.params().iter().map(|(_, v)| v.clone()))
                .collect();
            parallel::buffers(&vars, &params)
        }
        None => Vec::new(),
    };
    let plan = BatchPlan {
        planner: obj.planner(),
        size: cfg.loader.size,
        batch_size: cfg.batch_size,
        seed: cfg.seed,
        augment: cfg.loader.augment.clone(),
    };
    let names = groups.iter().map(|g| (g.name().to_string(), g.lr_factor));
    let mut mon = match lead {
        true => Some(Monitor::open(run, cfg, start, names.collect())?),
        false => None,
    };
    let began = Instant::now();
    let mut done = start;
    let mut last_loss = f64::NAN;
    let mut skipped_steps: u64 = skipped_at_start;
    let mut bad = BadVideos::open(run);
    let mut loader = Loader::spawn_shard(dataset, plan, start, cfg.end, cfg.loader.workers, shard);
    let mut train = || -> Result<()> {
        loop {
            let waiting = Instant::now();
            let Some(hb) = loader.next() else {
                return Ok(());
            };
            let hb = hb?;
            if let Some(m) = mon.as_mut() {
                m.batch(waiting.elapsed(), hb.shape[0]);
            }
            // Every rank appends the bad videos of its own shard to the one list.
            bad.record(&hb.skipped)?;
            let (step, skipped) = (hb.step, hb.skipped.len());
            let mut out = {
                let _rank = cfg.parallel.as_ref().map(|p| {
                    crate::ops::collective::ParallelScope::enter(p.group.clone(), p.sync_bn)
                });
                obj.loss(hb, device)?
            };
            if cfg.inject_nonfinite_at == Some(step + 1) {
                out.loss = out.loss.affine(f64::INFINITY, 0.0)?;
            }
            let mut loss = out.loss.to_scalar::<f32>()? as f64;
            if let Some(p) = &cfg.parallel {
                let mut vals: Vec<f64> = std::iter::once(loss)
                    .chain(out.scalars.iter().map(|(_, v)| *v))
                    .collect();
                parallel::mean_over_ranks(&mut vals, p.group.as_ref())?;
                loss = vals[0];
                for ((_, v), m) in out.scalars.iter_mut().zip(&vals[1..]) {
                    *v = *m;
                }
            }
            let lr = sched.lr_at(step);
            let bad = match nonfinite_term(loss, &out.scalars) {
                Some(why) => Err(Error::NonFinite(why)),
                None => {
                    let mut steps: Vec<(&mut Optimizer, f64)> = groups
                        .iter_mut()
                        .map(|g| (&mut g.optimizer, g.lr_factor * lr))
                        .collect();
                    let group = cfg.parallel.as_ref().map(|p| p.group.as_ref());
                    update_ranks(&out.loss, &mut steps, cfg.grad_clip, group)
                }
            };
            if let Some(p) = cfg.parallel.as_ref().filter(|p| !p.sync_bn) {
                parallel::sync_model(&buffers, p.group.as_ref())?;
            }
            let grad_norm = match bad {
                Ok(norm) => {
                    sched.observe(step, loss);
                    obj.after_step()?;
                    last_loss = loss;
                    norm
                }
                Err(Error::NonFinite(why)) => {
                    let at = step + 1;
                    if cfg.on_nonfinite == OnNonFinite::Stop {
                        return Err(Error::NonFinite(format!(
                            "{why} at step {at}; the run stops here and its last good \
                             checkpoint is kept (lower train.lr, or set \
                             train.on_nonfinite = \"skip_step\")"
                        )));
                    }
                    skipped_steps += 1;
                    tracing::warn!("{why} at step {at}: update skipped ({skipped_steps} so far)");
                    None
                }
                Err(e) => return Err(e),
            };
            if skipped_steps > 0 {
                out.scalars.push(("skipped_steps", skipped_steps as f64));
            }
            done = step + 1;
            crate::io::crash_point("VSSL_CRASH_AT_STEP", done);
            if let Some(mon) = mon
                .as_mut()
                .filter(|_| done.is_multiple_of(cfg.log_every) || done == cfg.total)
            {
                mon.log(&StepLog {
                    step: done,
                    loss,
                    lr,
                    grad_norm,
                    scalars: &out.scalars,
                    skipped_videos: skipped,
                })?;
            }
            let measured = obj.after_update(done, loss)?;
            let ckpt_due = cfg.checkpoint_every > 0 && done.is_multiple_of(cfg.checkpoint_every);
            if let Some(mon) = mon.as_mut() {
                mon.measured(done, "test", &measured)?;
                if ckpt_due || done == cfg.end {
                    save_checkpoint(run, cfg, obj, groups, sched, done, skipped_steps)?;
                }
                mon.tick(done)?;
            }
        }
    };
    let res = train();
    let ended = match mon {
        Some(m) => m.finish(done, cfg.total, res.as_ref().err()),
        None => Ok(()),
    };
    res.and(ended)?;
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
    skipped_steps: u64,
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
    if skipped_steps > 0 {
        meta.insert(SKIPPED_KEY.into(), skipped_steps.to_string());
    }
    crate::io::write_checkpoint_atomic(&run.checkpoint(step), &tensors, &meta)?;
    let all = run.checkpoints();
    for (_, old) in all
        .iter()
        .take(all.len().saturating_sub(cfg.keep_checkpoints))
    {
        let _ = std::fs::remove_file(old);
    }
    Ok(())
}

/// Checkpoint metadata: updates skipped so far for non-finite values.
const SKIPPED_KEY: &str = "skipped_steps";

/// Restores the newest readable checkpoint; returns its step and the updates
/// skipped up to it. A checkpoint that cannot be read is reported and the previous
/// one is tried.
fn resume_from(
    run: &RunDir,
    obj: &mut dyn Objective,
    groups: &mut [ParamGroup],
    sched: &mut Schedule,
    device: &Device,
    world: usize,
) -> Result<(u64, u64)> {
    let mut last_err = None;
    let mut unusable: Vec<String> = Vec::new();
    for (step, path) in run.checkpoints().iter().rev() {
        let read = read_safetensors(path, device).and_then(|(tensors, meta)| {
            // Checkpoints written before checksums were added have none.
            if let Some(want) = meta.get(crate::io::CHECKSUM_KEY) {
                let got = crate::io::tensors_checksum(tensors.iter().map(|(k, t)| (k.as_str(), t)))?;
                if &got != want {
                    return Err(Error::checkpoint(
                        path,
                        "its tensors do not match the checksum written with them (the file is corrupt)",
                    ));
                }
            }
            Ok((tensors, meta))
        });
        match read {
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
                if unusable.is_empty() {
                    tracing::info!("resumed from {} (step {step})", path.display());
                } else {
                    tracing::warn!(
                        "resumed from {} (step {step}) instead of the newer {}, which cannot be used",
                        path.display(),
                        unusable.join(", ")
                    );
                }
                let ranks: usize = meta
                    .get(RANKS_KEY)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1);
                if ranks != world {
                    tracing::warn!(
                        "{} was written by a run on {ranks} rank(s), resuming on {world}: the \
                         steps still train on the same whole batches (each rank takes rows of \
                         them), but batch-norm statistics per rank come from shards of another \
                         size and the gradients add up in another order, so the result is not \
                         bit for bit the run that kept {ranks}",
                        path.display()
                    );
                }
                let skipped = meta
                    .get(SKIPPED_KEY)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return Ok((*step, skipped));
            }
            Err(e) => {
                tracing::warn!("cannot use checkpoint, trying an older one: {e}");
                unusable.push(path.display().to_string());
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
    replace_file(path, kept.as_bytes())
}
