//! Full fine-tuning: the (pretrained or random-init) backbone plus a new linear
//! classifier `fc`, trained on labelled clips (random start and crop), with separate
//! learning rates for the backbone and the head (two parameter groups sharing one
//! schedule). Every `test_every` epochs the test split is scored at video level
//! (softmax averaged over `test_clips` clips); the best and the last weights are kept.
//! Checkpoints at each epoch make a fine-tuning run resumable bit for bit.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::features::{map_split, pool};
use super::metrics::{top_k, video_probs};
use crate::backbone::Backbone;
use crate::data::datasets::VideoDataset;
use crate::data::loader::{BatchPlan, Loader};
use crate::data::Split;
use crate::loss::cross_entropy;
use crate::nn::{hash_str, mix, VarStore};
use crate::pretext::heads::{dropout, Linear};
use crate::data::sampler::StridedPlanner;
use crate::recipe::{Pooling, Recipe};
use crate::train::checkpoint::{read_safetensors, write_safetensors_atomic};
use crate::train::optim::{Optimizer, OptimizerConfig};
use crate::train::schedule::Schedule;
use crate::train::trainer::{checkpoint_name, list_checkpoints};
use crate::{Error, Result};

/// Video- and clip-level test accuracies at one point of fine-tuning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TestScores {
    pub epoch: u64,
    pub top1: f64,
    pub top5: f64,
    pub clip_top1: f64,
    pub clip_top5: f64,
}

/// What a fine-tuning run reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FinetuneResult {
    /// Scores of the last epoch (video level `top1`/`top5`, clip level `clip_*`).
    pub last: TestScores,
    /// Scores of the best tested epoch (by video top-1).
    pub best: TestScores,
    /// Every test, in order.
    pub history: Vec<TestScores>,
    pub steps: u64,
    /// Where `best.safetensors` and `last.safetensors` are.
    pub dir: PathBuf,
}

/// Scores the test split at video level with the backbone and head in eval mode.
pub fn test(
    net: &dyn Backbone,
    head: &Linear,
    ds: &dyn VideoDataset,
    recipe: &Recipe,
    device: &Device,
    epoch: u64,
) -> Result<TestScores> {
    let mut skipped = Vec::new();
    let (logits, labels) = map_split(ds, Split::Test, recipe, device, &mut skipped, |x| {
        head.forward(&pool(&net.forward_t(x, false)?, Pooling::Pooled)?)
    })?;
    if epoch <= recipe.eval.test_every {
        for s in &skipped {
            tracing::warn!("skipping video in testing: {s}");
        }
    }
    let k = recipe.eval.test_clips;
    let classes = logits.dim(1)?;
    let clip_labels: Vec<u32> = labels
        .iter()
        .flat_map(|&l| std::iter::repeat_n(l, k))
        .collect();
    let video = video_probs(&logits.reshape((labels.len(), k, classes))?)?;
    let k5 = 5.min(classes);
    Ok(TestScores {
        epoch,
        top1: top_k(&video, &labels, 1)?,
        top5: top_k(&video, &labels, k5)?,
        clip_top1: top_k(&logits, &clip_labels, 1)?,
        clip_top5: top_k(&logits, &clip_labels, k5)?,
    })
}

fn optimizer(recipe: &Recipe, params: Vec<(String, candle_core::Var)>) -> Result<Optimizer> {
    let e = &recipe.eval;
    Optimizer::new(
        OptimizerConfig {
            kind: e.optimizer,
            momentum: e.momentum,
            nesterov: false,
            weight_decay: e.weight_decay,
            betas: [0.9, 0.999],
            eps: 1e-8,
        },
        params,
    )
}

/// Renames `optim.*` state to `<prefix>.*` (two optimisers share a checkpoint).
fn prefixed(state: Vec<(String, Tensor)>, prefix: &str) -> Vec<(String, Tensor)> {
    state
        .into_iter()
        .map(|(k, v)| (k.replacen("optim.", &format!("{prefix}."), 1), v))
        .collect()
}

fn unprefixed(tensors: &BTreeMap<String, Tensor>, prefix: &str) -> BTreeMap<String, Tensor> {
    let p = format!("{prefix}.");
    tensors
        .iter()
        .filter_map(|(k, v)| Some((format!("optim.{}", k.strip_prefix(&p)?), v.clone())))
        .collect()
}

fn model_tensors(net: &dyn Backbone, head_vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut out = net.vars().named_tensors("");
    out.extend(head_vs.named_tensors(""));
    out
}

/// Fine-tunes `net` on the eval dataset's train split; writes into `dir`.
pub fn finetune(
    recipe: &Recipe,
    net: &dyn Backbone,
    ds: Arc<dyn VideoDataset>,
    dir: &Path,
    resume: bool,
    device: &Device,
) -> Result<FinetuneResult> {
    let e = &recipe.eval;
    let classes = ds.num_classes();
    if classes == 0 {
        return Err(Error::BadInput(
            "fine-tuning needs a labelled dataset".into(),
        ));
    }
    let seed = mix(recipe.train.seed ^ hash_str("finetune"));
    let head_vs = VarStore::new(device, seed);
    let head = Linear::new(&head_vs.pp("fc"), net.out_channels(), classes)?;
    let freeze = e.backbone_lr == 0.0;
    let mut opt_backbone = if freeze {
        None
    } else {
        Some(optimizer(recipe, net.vars().trainable())?)
    };
    let mut opt_head = optimizer(recipe, head_vs.trainable())?;

    let n = ds.len(Split::Train);
    let steps_per_epoch = (n as u64).div_ceil(e.finetune_batch_size as u64);
    let total = e.finetune_epochs * steps_per_epoch;
    let sched = Schedule {
        kind: e.schedule,
        base_lr: 1.0,
        warmup_steps: e.warmup_steps,
        total_steps: total,
        milestones: vec![total / 2, total * 3 / 4],
        gamma: 0.1,
        min_lr: 0.0,
    };

    std::fs::create_dir_all(dir.join("checkpoints")).map_err(|err| Error::io(dir, err))?;
    let existing = list_checkpoints(dir);
    if !resume && !existing.is_empty() {
        return Err(Error::BadInput(format!(
            "{} already holds a fine-tuning run; pass --resume to continue it",
            dir.display()
        )));
    }
    let mut start = 0;
    let mut history: Vec<TestScores> = Vec::new();
    if resume {
        if let Some((step, path)) = existing.last() {
            let (t, meta) = read_safetensors(path, device)?;
            let model: BTreeMap<String, Tensor> = t
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("model.")?.to_string(), v.clone())))
                .collect();
            let (nb, nh): (BTreeMap<_, _>, BTreeMap<_, _>) =
                model.into_iter().partition(|(k, _)| !k.starts_with("fc."));
            net.vars()
                .load(&nb)
                .map_err(|err| Error::checkpoint(path, err.to_string()))?;
            head_vs
                .load(&nh)
                .map_err(|err| Error::checkpoint(path, err.to_string()))?;
            if let Some(o) = opt_backbone.as_mut() {
                o.load_state(&unprefixed(&t, "optim_backbone"))
                    .map_err(|err| Error::checkpoint(path, err.to_string()))?;
            }
            opt_head
                .load_state(&unprefixed(&t, "optim_head"))
                .map_err(|err| Error::checkpoint(path, err.to_string()))?;
            history = meta
                .get("history")
                .map(|h| serde_json::from_str(h))
                .transpose()
                .map_err(|err| Error::checkpoint(path, format!("bad history metadata: {err}")))?
                .unwrap_or_default();
            start = *step;
            tracing::info!("fine-tuning resumed from {} (step {step})", path.display());
        }
    }

    let plan = BatchPlan {
        planner: Arc::new(StridedPlanner::new(
            1,
            recipe.eval_frames(),
            (e.train_stride, e.train_stride),
        )),
        size: recipe.eval_data().size,
        batch_size: e.finetune_batch_size,
        seed,
        augment: recipe.eval_data().augment.clone(),
    };
    tracing::info!(
        "fine-tuning {} steps ({} epochs), backbone lr {} head lr {}",
        total,
        e.finetune_epochs,
        e.backbone_lr,
        e.lr
    );
    let loader = Loader::spawn(ds.clone(), plan, start, total, recipe.eval_data().workers);
    for hb in loader {
        let hb = hb?;
        let step = hb.step;
        let labels: Vec<u32> = hb
            .labels
            .iter()
            .map(|l| l.ok_or_else(|| Error::BadInput("fine-tuning needs labelled videos".into())))
            .collect::<Result<_>>()?;
        let x = Tensor::from_vec(hb.data, hb.shape.to_vec(), device)?;
        let y = Tensor::from_vec(labels, hb.videos, device)?;
        let f = pool(&net.forward_t(&x, !freeze)?, Pooling::Pooled)?;
        // A frozen backbone gets no gradient: cut the graph there.
        let f = if freeze { f.detach() } else { f };
        let f = dropout(&f, e.dropout, true, hb.seed)?;
        let loss = cross_entropy(&head.forward(&f)?, &y)?;
        let grads = loss.backward()?;
        let scale = sched.lr_at(step);
        if let Some(o) = opt_backbone.as_mut() {
            o.step(&grads, e.backbone_lr * scale)?;
        }
        opt_head.step(&grads, e.lr * scale)?;
        let done = step + 1;
        if done % steps_per_epoch == 0 || done == total {
            let epoch = done.div_ceil(steps_per_epoch);
            if epoch % e.test_every == 0 || done == total {
                let scores = test(net, &head, ds.as_ref(), recipe, device, epoch)?;
                tracing::info!(
                    "epoch {epoch}: loss {:.4}, video top-1 {:.4}",
                    loss.to_scalar::<f32>()?,
                    scores.top1
                );
                let best = history
                    .iter()
                    .map(|h| h.top1)
                    .fold(f64::NEG_INFINITY, f64::max);
                if scores.top1 > best {
                    let meta = HashMap::from([
                        ("format".to_string(), "pt".to_string()),
                        ("epoch".to_string(), epoch.to_string()),
                    ]);
                    write_safetensors_atomic(
                        &dir.join("best.safetensors"),
                        &model_tensors(net, &head_vs),
                        &meta,
                    )?;
                }
                history.push(scores);
            }
            let mut tensors: Vec<(String, Tensor)> = model_tensors(net, &head_vs)
                .into_iter()
                .map(|(k, v)| (format!("model.{k}"), v))
                .collect();
            if let Some(o) = opt_backbone.as_ref() {
                tensors.extend(prefixed(o.state()?, "optim_backbone"));
            }
            tensors.extend(prefixed(opt_head.state()?, "optim_head"));
            let meta = HashMap::from([
                ("step".to_string(), done.to_string()),
                (
                    "history".to_string(),
                    serde_json::to_string(&history)
                        .map_err(|err| Error::Internal(err.to_string()))?,
                ),
            ]);
            write_safetensors_atomic(
                &dir.join("checkpoints").join(checkpoint_name(done)),
                &tensors,
                &meta,
            )?;
            let all = list_checkpoints(dir);
            for (_, old) in all.iter().take(all.len().saturating_sub(1)) {
                let _ = std::fs::remove_file(old);
            }
        }
    }
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("recipe".to_string(), recipe.to_toml()),
    ]);
    write_safetensors_atomic(
        &dir.join("last.safetensors"),
        &model_tensors(net, &head_vs),
        &meta,
    )?;
    let last = history
        .last()
        .cloned()
        .ok_or_else(|| Error::Internal("fine-tuning ran no test".into()))?;
    // The first epoch reaching the highest video top-1 (what best.safetensors holds).
    let best = history
        .iter()
        .cloned()
        .reduce(|a, b| if b.top1 > a.top1 { b } else { a })
        .unwrap_or(last.clone());
    Ok(FinetuneResult {
        last,
        best,
        history,
        steps: total,
        dir: dir.to_path_buf(),
    })
}
