//! Pretraining: any [`Pretext`] the caller built, run by the one loop
//! ([`super::engine::run`]) as its objective, into a [`RunDir`].
//! Resuming reproduces the uninterrupted run bit for bit on CPU.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::config::TrainConfig;
use super::engine::{self, LoaderConfig, LoopConfig, Objective, ParamGroup};
use super::optim::{Optimizer, OptimizerConfig};
use super::schedule::{PlateauConfig, PlateauState, Schedule, ScheduleKind};
use crate::data::clip::{Batch, ClipPlanner};
use crate::data::datasets::VideoDataset;
use crate::data::loader::HostBatch;
use crate::data::Split;
use crate::io::write_safetensors_atomic;
use crate::pretext::{Pretext, StepOutput};
use crate::run_dir::RunDir;
use crate::{Error, Result};

/// How to run [`fit`], beyond the `[train]` table.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// The data geometry of training batches.
    pub loader: LoaderConfig,
    /// Continue from the latest checkpoint in the run directory.
    pub resume: bool,
    /// Stop after this many steps (as if interrupted): used to test resume.
    pub stop_after: Option<u64>,
    /// The resolved recipe text: written to `recipe.resolved.toml` and into the
    /// metadata of checkpoints and the model (when given).
    pub recipe: Option<String>,
    /// What to call the run in logs.
    pub name: String,
    /// Resume even when the recipe changes the run (see [`super::resume`]).
    pub force: bool,
    /// Run as one rank of a data-parallel run (every rank calls [`fit`] with the
    /// same arguments and its own handle; rank 0 writes the run directory).
    pub parallel: Option<super::parallel::Parallel>,
}

/// What a finished (or stopped) run did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub steps_done: u64,
    pub total_steps: u64,
    pub last_loss: f64,
    pub seconds: f64,
    /// Distinct videos skipped as unreadable (listed in `<run>/bad_videos.txt`).
    pub bad_videos: usize,
}

/// Total optimiser steps a `[train]` table asks for.
pub fn total_steps(t: &TrainConfig, train_videos: usize) -> u64 {
    match t.epochs {
        Some(e) => e * (train_videos as u64).div_ceil(t.batch_size as u64),
        None => t.steps,
    }
}

/// The learning-rate schedule of a `[train]` table for a run of `total` steps over
/// `train_videos` videos (an epoch is `ceil(train_videos / batch_size)` steps).
pub fn schedule(t: &TrainConfig, total: u64, train_videos: usize) -> Schedule {
    let plateau = (t.schedule == ScheduleKind::Plateau).then(|| {
        let cfg = PlateauConfig {
            steps_per_epoch: (train_videos as u64).div_ceil(t.batch_size as u64).max(1),
            patience: t.patience,
            factor: t.factor,
            warmup: t.warmup_multipliers.clone(),
        };
        (cfg, PlateauState::default())
    });
    Schedule {
        plateau,
        kind: t.schedule,
        base_lr: t.lr,
        warmup_steps: t.warmup_steps,
        total_steps: total,
        milestones: t
            .milestones
            .iter()
            .map(|f| (f * total as f64).round() as u64)
            .collect(),
        gamma: t.gamma,
        min_lr: t.min_lr,
    }
}

/// Every tensor of the model (backbone under torchvision names, heads under `pretext.`).
pub fn model_tensors(p: &dyn Pretext) -> Vec<(String, Tensor)> {
    let mut out = p.backbone().vars().named_tensors("");
    out.extend(p.head_vars().named_tensors("pretext."));
    out
}

fn trainable(p: &dyn Pretext) -> Vec<(String, candle_core::Var)> {
    let mut out = p.backbone().vars().trainable();
    out.extend(
        p.head_vars()
            .trainable()
            .into_iter()
            .map(|(k, v)| (format!("pretext.{k}"), v)),
    );
    out
}

/// Loads model tensors (names as [`model_tensors`]) into a pretext's stores; every
/// tensor must be present.
fn load_model(p: &dyn Pretext, tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let (mut backbone, mut heads) = (BTreeMap::new(), BTreeMap::new());
    for (k, v) in tensors {
        match k.strip_prefix("pretext.") {
            Some(h) => heads.insert(h.to_string(), v.clone()),
            None => backbone.insert(k.clone(), v.clone()),
        };
    }
    for (report, what) in [
        (p.backbone().vars().load(&backbone), "backbone"),
        (p.head_vars().load(&heads), "heads"),
    ] {
        let report = report.map_err(|e| Error::checkpoint(path, e.to_string()))?;
        if !report.missing.is_empty() {
            return Err(Error::checkpoint(
                path,
                format!("{what} tensors missing: {}", report.missing.join(", ")),
            ));
        }
    }
    Ok(())
}

/// A pretext method as the loop's objective, its clips in the backbone's precision.
struct PretextObjective<'a>(&'a mut dyn Pretext, candle_core::DType);

impl Objective for PretextObjective<'_> {
    fn planner(&self) -> Arc<dyn ClipPlanner> {
        self.0.planner()
    }

    fn loss(&mut self, hb: HostBatch, device: &Device) -> Result<StepOutput> {
        let clips = Tensor::from_vec(hb.data, hb.shape.to_vec(), device)?.to_dtype(self.1)?;
        let batch = Batch {
            clips,
            videos: hb.videos,
            clip_meta: hb.clip_meta,
            seed: hb.seed,
            slice: hb.slice,
        };
        self.0.step(&batch, true)
    }

    fn after_step(&mut self) -> Result<()> {
        self.0.after_step()
    }

    fn model_tensors(&self) -> Vec<(String, Tensor)> {
        model_tensors(&*self.0)
    }

    fn model_vars(&self) -> Result<Vec<(String, candle_core::Var)>> {
        let mut out = self.0.backbone().vars().all();
        out.extend(
            self.0
                .head_vars()
                .all()
                .into_iter()
                .map(|(k, v)| (format!("pretext.{k}"), v)),
        );
        Ok(out)
    }

    fn load_model(&mut self, tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
        load_model(&*self.0, tensors, path)
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.0.state()
    }

    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        self.0.load_state(state)
    }
}

/// `--resume` into a directory that does not exist is a mistake (a typo in `--out`),
/// not a run to start: an error naming it.
pub fn check_resume_dir(run: &RunDir, resume: bool) -> Result<()> {
    if resume && !run.path().is_dir() {
        return Err(Error::BadInput(format!(
            "--resume: {} does not exist (drop --resume to start a run there)",
            run.path().display()
        )));
    }
    Ok(())
}

/// Pretrains `pretext` on the train split of `dataset` into `run`, as `[train]` says.
pub fn fit(
    pretext: &mut dyn Pretext,
    dataset: Arc<dyn VideoDataset>,
    t: &TrainConfig,
    opts: &FitOptions,
    run: &RunDir,
    device: &Device,
) -> Result<TrainSummary> {
    if t.batch_size == 0 {
        return Err(Error::BadInput("train.batch_size must be >= 1".into()));
    }
    let existing = run.checkpoints();
    if !opts.resume && (run.model().exists() || !existing.is_empty()) {
        return Err(Error::BadInput(format!(
            "{} already holds a run; pass --resume to continue it or --out to start another",
            run.path().display()
        )));
    }
    let resume = opts.resume;
    let lead = crate::train::parallel::is_lead(opts.parallel.as_ref());
    if resume && existing.is_empty() {
        check_resume_dir(run, resume)?;
        if run.model().exists() {
            return Err(Error::BadInput(format!(
                "--resume: {} holds a finished run ({}) and no checkpoint to continue from",
                run.path().display(),
                run.model().display()
            )));
        }
        // Killed before its first checkpoint (a requeued job, a rerun sweep point):
        // nothing was finished, so the run starts over.
        tracing::warn!(
            "--resume: no checkpoint in {} yet; starting from step 0",
            run.checkpoints_dir().display()
        );
    }
    std::fs::create_dir_all(run.checkpoints_dir()).map_err(|e| Error::io(run.path(), e))?;
    let mut metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "vssl_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]);
    if let Some(text) = &opts.recipe {
        let recipe_path = run.recipe();
        // Only a run that finished steps (it has a checkpoint) can be changed by its
        // recipe; one killed before its first checkpoint starts over anyway.
        if resume && !existing.is_empty() {
            if let Ok(old) = std::fs::read_to_string(&recipe_path) {
                let (changes, harmless) = super::resume::recipe_changes(&old, text);
                if !changes.is_empty() && !opts.force {
                    return Err(Error::BadInput(format!(
                        "--resume: the recipe changes the run recorded in {}: {} (pass --force \
                         to resume anyway; the result is then not the run that would have \
                         happened)",
                        recipe_path.display(),
                        changes.join(", ")
                    )));
                }
                if !changes.is_empty() {
                    tracing::warn!(
                        "--resume --force: continuing with changed keys {}",
                        changes.join(", ")
                    );
                }
                if !harmless.is_empty() {
                    tracing::info!(
                        "resuming with changed keys {} (harmless)",
                        harmless.join(", ")
                    );
                }
            }
        }
        if lead {
            std::fs::write(&recipe_path, text).map_err(|e| Error::io(&recipe_path, e))?;
        }
        metadata.insert("recipe".to_string(), text.clone());
    }

    let params = trainable(pretext);
    let optimizer = Optimizer::new(
        OptimizerConfig {
            kind: t.optimizer,
            momentum: t.momentum,
            nesterov: t.nesterov,
            weight_decay: t.weight_decay,
            betas: t.betas,
            eps: t.eps,
        },
        params.clone(),
    )?;
    let total = total_steps(t, dataset.len(Split::Train));
    let mut sched = schedule(t, total, dataset.len(Split::Train));
    tracing::info!(
        "training {} on {}: {total} steps, {} parameters",
        opts.name,
        dataset.describe(),
        params.iter().map(|(_, v)| v.elem_count()).sum::<usize>()
    );
    let cfg = LoopConfig {
        loader: opts.loader.clone(),
        batch_size: t.batch_size,
        seed: t.seed,
        total,
        end: opts.stop_after.map_or(total, |s| s.min(total)),
        grad_clip: t.grad_clip,
        log_every: t.log_every,
        checkpoint_every: t.checkpoint_every,
        keep_checkpoints: t.keep_checkpoints,
        resume,
        metadata,
        name: format!("train {}", opts.name),
        recipe: opts.recipe.clone(),
        on_nonfinite: t.on_nonfinite,
        inject_nonfinite_at: t.inject_nonfinite_at,
        parallel: opts.parallel.clone(),
    };
    let mut groups = [ParamGroup::single(optimizer)];
    if t.precision == super::config::Precision::Bf16 && device.is_cpu() {
        tracing::warn!(
            "train.precision = \"bf16\" on the CPU runs the generic kernels (the CPU's own \
             conv3d and batch-norm kernels are f32), several times slower than f32: it is \
             there to test the mixed-precision path; GPUs are where bf16 pays"
        );
    }
    let mut obj = PretextObjective(pretext, t.precision.dtype());
    let s = engine::run(
        &mut obj,
        &mut groups,
        &mut sched,
        dataset,
        &cfg,
        run,
        device,
    )?;
    if s.steps_done == total && lead {
        let path = run.model();
        write_safetensors_atomic(
            &path,
            &obj.model_tensors(),
            &engine::step_metadata(&cfg, total),
        )?;
        tracing::info!("wrote {}", path.display());
    }
    Ok(TrainSummary {
        run_dir: run.path().to_path_buf(),
        steps_done: s.steps_done,
        total_steps: total,
        last_loss: s.last_loss,
        seconds: s.seconds,
        bad_videos: s.bad_videos,
    })
}
