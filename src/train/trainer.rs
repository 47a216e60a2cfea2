//! The one trainer: runs any [`Pretext`] on any device, logs, checkpoints and
//! resumes. All randomness is counter-based on (seed, step), so a checkpoint needs
//! only the step to continue exactly: resuming reproduces the uninterrupted run
//! bit for bit on CPU.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::{read_safetensors, write_safetensors_atomic};
use super::optim::{clip_grad_norm, Optimizer, OptimizerConfig};
use super::schedule::Schedule;
use crate::data::bad_videos::BadVideos;
use crate::data::loader::{BatchPlan, Loader};
use crate::data::Split;
use crate::data::clip::Batch;
use crate::pretext::Pretext;
use crate::recipe::Recipe;
use crate::{registry, Error, Result};

/// How to run the trainer.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Run directory (`weights/<run>` by default).
    pub out: PathBuf,
    /// Continue from the latest checkpoint in `out`.
    pub resume: bool,
    /// Stop after this many steps (as if interrupted): used to test resume.
    pub stop_after: Option<u64>,
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

/// Total optimiser steps a recipe asks for.
pub fn total_steps(recipe: &Recipe, train_videos: usize) -> u64 {
    match recipe.train.epochs {
        Some(e) => e * (train_videos as u64).div_ceil(recipe.train.batch_size as u64),
        None => recipe.train.steps,
    }
}

/// The learning-rate schedule of a recipe.
pub fn schedule(recipe: &Recipe, total: u64) -> Schedule {
    let t = &recipe.train;
    Schedule {
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

/// Checkpoint file name of a step.
pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:08}.safetensors")
}

/// Checkpoints in a run directory, oldest first.
pub fn list_checkpoints(run: &Path) -> Vec<(u64, PathBuf)> {
    let dir = run.join("checkpoints");
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name
                .strip_prefix("step-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// A process killed inside an atomic write leaves its temporary file behind; the
/// checkpoint it was writing never got its final name, so the file is garbage.
fn remove_stale_temp_files(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().contains(".tmp") {
            tracing::info!("removing interrupted write {}", e.path().display());
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn metadata(recipe: &Recipe, step: u64) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("recipe".to_string(), recipe.to_toml()),
        ("step".to_string(), step.to_string()),
        ("seed".to_string(), recipe.train.seed.to_string()),
        (
            "rng".to_string(),
            format!(
                "counter-based: seed={}, next_step={step}",
                recipe.train.seed
            ),
        ),
        (
            "vssl_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ])
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
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, kept).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Trains the recipe's method into `opts.out`.
pub fn train(recipe: &Recipe, opts: &TrainOptions, device: &Device) -> Result<TrainSummary> {
    let run = &opts.out;
    let existing = list_checkpoints(run);
    if !opts.resume && (run.join("model.safetensors").exists() || !existing.is_empty()) {
        return Err(Error::BadInput(format!(
            "{} already holds a run; pass --resume to continue it or --out to start another",
            run.display()
        )));
    }
    std::fs::create_dir_all(run.join("checkpoints")).map_err(|e| Error::io(run, e))?;
    remove_stale_temp_files(&run.join("checkpoints"));
    let recipe_path = run.join("recipe.resolved.toml");
    let recipe_text = recipe.to_toml();
    if opts.resume {
        if let Ok(old) = std::fs::read_to_string(&recipe_path) {
            if old != recipe_text {
                tracing::warn!(
                    "resuming with a recipe that differs from {}",
                    recipe_path.display()
                );
            }
        }
    }
    std::fs::write(&recipe_path, &recipe_text).map_err(|e| Error::io(&recipe_path, e))?;

    let dataset = registry::dataset(&recipe.data)?;
    let (r, frames) = (recipe, recipe.data.frames);
    let mut pretext = registry::pretext(&r.method, &r.backbone, frames, r.train.seed, device)?;
    let params = trainable(pretext.as_ref());
    let t = &recipe.train;
    let mut optimizer = Optimizer::new(
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
    let total = total_steps(recipe, dataset.len(Split::Train));
    let sched = schedule(recipe, total);

    let mut start = 0u64;
    if opts.resume {
        start = resume_from(run, pretext.as_mut(), &mut optimizer)?;
        truncate_metrics(&run.join("metrics.jsonl"), start)?;
    }
    tracing::info!(
        "training {} ({:?}) on {}: steps {start}..{total}, {} parameters",
        recipe.name,
        recipe.method.kind(),
        dataset.describe(),
        params.iter().map(|(_, v)| v.elem_count()).sum::<usize>()
    );
    let end = opts.stop_after.map_or(total, |s| s.min(total));
    let plan = BatchPlan {
        planner: pretext.planner(),
        size: recipe.data.size,
        batch_size: t.batch_size,
        seed: recipe.train.seed,
        augment: recipe.data.augment.clone(),
    };
    let metrics_path = run.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(start);

    let began = Instant::now();
    let mut last_loss = f64::NAN;
    let mut window = (Instant::now(), 0usize);
    let loader = Loader::spawn(dataset.clone(), plan, start, end, recipe.data.workers);
    let mut bad = BadVideos::open(run);
    for hb in loader {
        let hb = hb?;
        bad.record(&hb.skipped)?;
        let step = hb.step;
        let clips = Tensor::from_vec(hb.data, hb.shape.to_vec(), device)?;
        let batch = Batch {
            clips,
            videos: hb.videos,
            clip_meta: hb.clip_meta,
            seed: hb.seed,
        };
        let out = pretext.step(&batch, true)?;
        let loss = out.loss.to_scalar::<f32>()? as f64;
        if !loss.is_finite() {
            return Err(Error::Internal(format!(
                "loss became {loss} at step {step}; lower train.lr?"
            )));
        }
        let mut grads = out.loss.backward()?;
        let grad_norm = if t.grad_clip > 0.0 {
            Some(clip_grad_norm(&mut grads, &params, t.grad_clip)?)
        } else {
            None
        };
        let lr = sched.lr_at(step);
        optimizer.step(&grads, lr)?;
        pretext.after_step()?;
        last_loss = loss;
        window.1 += hb.shape[0];
        let done = step + 1;
        if done % t.log_every == 0 || done == total {
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
            if !hb.skipped.is_empty() {
                line["skipped_videos"] = hb.skipped.len().into();
            }
            writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
            bar.set_message(format!(
                "loss {loss:.4} lr {lr:.2e} {:.0} clips/s",
                window.1 as f64 / secs
            ));
            window = (Instant::now(), 0);
        }
        bar.set_position(done);
        let ckpt_due = t.checkpoint_every > 0 && done % t.checkpoint_every == 0;
        if ckpt_due || done == end {
            save_checkpoint(
                run,
                recipe,
                pretext.as_ref(),
                &optimizer,
                done,
                t.keep_checkpoints,
            )?;
        }
    }
    bar.finish_and_clear();
    let steps_done = end;
    if steps_done == total {
        let path = run.join("model.safetensors");
        write_safetensors_atomic(
            &path,
            &model_tensors(pretext.as_ref()),
            &metadata(recipe, total),
        )?;
        tracing::info!("wrote {}", path.display());
    }
    Ok(TrainSummary {
        run_dir: run.clone(),
        steps_done,
        total_steps: total,
        last_loss,
        seconds: began.elapsed().as_secs_f64(),
        bad_videos: bad.count(),
    })
}

fn save_checkpoint(
    run: &Path,
    recipe: &Recipe,
    p: &dyn Pretext,
    opt: &Optimizer,
    step: u64,
    keep: usize,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = model_tensors(p)
        .into_iter()
        .map(|(k, v)| (format!("model.{k}"), v))
        .collect();
    tensors.extend(opt.state()?);
    tensors.extend(
        p.state()?
            .into_iter()
            .map(|(k, v)| (format!("method.{k}"), v)),
    );
    let path = run.join("checkpoints").join(checkpoint_name(step));
    write_safetensors_atomic(&path, &tensors, &metadata(recipe, step))?;
    let all = list_checkpoints(run);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        let _ = std::fs::remove_file(old);
    }
    Ok(())
}

/// Restores the newest readable checkpoint; returns its step. A checkpoint that
/// cannot be read is reported and the previous one is tried.
fn resume_from(run: &Path, p: &mut dyn Pretext, opt: &mut Optimizer) -> Result<u64> {
    let all = list_checkpoints(run);
    if all.is_empty() {
        return Err(Error::BadInput(format!(
            "--resume: no checkpoint in {}",
            run.join("checkpoints").display()
        )));
    }
    let device = p.backbone().vars().device().clone();
    let mut last_err = None;
    for (step, path) in all.iter().rev() {
        match read_safetensors(path, &device) {
            Ok((tensors, meta)) => {
                let model: BTreeMap<String, Tensor> = tensors
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix("model.")?.to_string(), v.clone())))
                    .collect();
                let method: BTreeMap<String, Tensor> = tensors
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix("method.")?.to_string(), v.clone())))
                    .collect();
                load_model(p, &model, path)?;
                opt.load_state(&tensors)?;
                p.load_state(&method)?;
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
