//! Full fine-tuning: the (pretrained or random-init) backbone plus a new linear
//! classifier `fc`, trained on labelled clips (random start and crop), with separate
//! learning rates for the backbone and the head (two parameter groups sharing one
//! schedule). Every `test_every` epochs the test split is scored at video level
//! (softmax averaged over `test_clips` clips); the best and the last weights are kept.
//! Fine-tuning is an [`Objective`] of the one training loop
//! ([`engine::run`]): the loop checkpoints at each epoch (a fine-tuning run resumes
//! bit for bit); this module keeps only the loss and its test-every-N-epochs hook.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::features::{map_split, pool};
use super::metrics::{top_k, video_probs};
use super::{EvalSetup, Pooling};
use crate::backbone::Backbone;
use crate::data::clip::ClipPlanner;
use crate::data::datasets::VideoDataset;
use crate::data::loader::HostBatch;
use crate::data::sampler::StridedPlanner;
use crate::data::Split;
use crate::io::write_safetensors_atomic;
use crate::loss::cross_entropy;
use crate::nn::{dropout, Linear, VarStore};
use crate::pretext::StepOutput;
use crate::run_dir::RunDir;
use crate::seed::{hash_str, mix};
use crate::train::engine::{self, LoaderConfig, LoopConfig, Objective, ParamGroup};
use crate::train::optim::{Optimizer, OptimizerConfig};
use crate::train::schedule::Schedule;
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
    setup: &EvalSetup,
    device: &Device,
    epoch: u64,
) -> Result<TestScores> {
    let mut skipped = Vec::new();
    let (logits, labels) = map_split(ds, Split::Test, setup, device, &mut skipped, |x| {
        head.forward(&pool(&net.forward_t(x, false)?, Pooling::Pooled)?)
    })?;
    if epoch <= setup.eval.test_every {
        for s in &skipped {
            tracing::warn!("skipping video in testing: {s}");
        }
    }
    let k = setup.eval.test_clips;
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

fn optimizer(setup: &EvalSetup, params: Vec<(String, candle_core::Var)>) -> Result<Optimizer> {
    let e = setup.eval;
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

/// The backbone plus its new classifier, as the loop's objective.
struct Finetuner<'a> {
    net: &'a dyn Backbone,
    head: Linear,
    head_vs: VarStore,
    freeze: bool,
    ds: Arc<dyn VideoDataset>,
    setup: &'a EvalSetup<'a>,
    device: Device,
    steps_per_epoch: u64,
    total: u64,
    run: &'a RunDir,
    history: Vec<TestScores>,
}

impl Finetuner<'_> {
    fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = self.net.vars().named_tensors("");
        out.extend(self.head_vs.named_tensors(""));
        out
    }
}

impl Objective for Finetuner<'_> {
    fn planner(&self) -> Arc<dyn ClipPlanner> {
        let s = self.setup.eval.train_stride;
        Arc::new(StridedPlanner::new(1, self.setup.frames(), (s, s)))
    }

    fn loss(&mut self, hb: HostBatch, device: &Device) -> Result<StepOutput> {
        let labels: Vec<u32> = hb
            .labels
            .iter()
            .map(|l| l.ok_or_else(|| Error::BadInput("fine-tuning needs labelled videos".into())))
            .collect::<Result<_>>()?;
        let x = Tensor::from_vec(hb.data, hb.shape.to_vec(), device)?;
        let y = Tensor::from_vec(labels, hb.videos, device)?;
        let f = pool(&self.net.forward_t(&x, !self.freeze)?, Pooling::Pooled)?;
        // A frozen backbone gets no gradient: cut the graph there.
        let f = if self.freeze { f.detach() } else { f };
        let f = dropout(&f, self.setup.eval.dropout, true, hb.seed)?;
        let loss = cross_entropy(&self.head.forward(&f)?, &y)?;
        Ok(StepOutput {
            loss,
            scalars: Vec::new(),
        })
    }

    /// At the end of every `test_every`-th epoch (and of the run): test, and keep
    /// the best weights.
    fn after_update(&mut self, done: u64, loss: f64) -> Result<Vec<(String, f64)>> {
        if !(done.is_multiple_of(self.steps_per_epoch) || done == self.total) {
            return Ok(Vec::new());
        }
        let epoch = done.div_ceil(self.steps_per_epoch);
        if !(epoch.is_multiple_of(self.setup.eval.test_every) || done == self.total) {
            return Ok(Vec::new());
        }
        let scores = test(
            self.net,
            &self.head,
            self.ds.as_ref(),
            self.setup,
            &self.device,
            epoch,
        )?;
        tracing::info!(
            "epoch {epoch}: loss {loss:.4}, video top-1 {:.4}",
            scores.top1
        );
        let best = self
            .history
            .iter()
            .map(|h| h.top1)
            .fold(f64::NEG_INFINITY, f64::max);
        if scores.top1 > best {
            let meta = HashMap::from([
                ("format".to_string(), "pt".to_string()),
                ("epoch".to_string(), epoch.to_string()),
            ]);
            write_safetensors_atomic(&self.run.best(), &self.tensors(), &meta)?;
        }
        let measured = vec![
            ("top1".to_string(), scores.top1),
            ("top5".to_string(), scores.top5),
            ("clip_top1".to_string(), scores.clip_top1),
            ("clip_top5".to_string(), scores.clip_top5),
        ];
        self.history.push(scores);
        Ok(measured)
    }

    fn model_tensors(&self) -> Vec<(String, Tensor)> {
        self.tensors()
    }

    fn load_model(&mut self, tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
        let (nb, nh): (BTreeMap<_, _>, BTreeMap<_, _>) = tensors
            .clone()
            .into_iter()
            .partition(|(k, _)| !k.starts_with("fc."));
        self.net
            .vars()
            .load(&nb)
            .map_err(|err| Error::checkpoint(path, err.to_string()))?;
        self.head_vs
            .load(&nh)
            .map_err(|err| Error::checkpoint(path, err.to_string()))?;
        Ok(())
    }

    fn metadata(&self) -> Result<Vec<(String, String)>> {
        Ok(vec![(
            "history".to_string(),
            serde_json::to_string(&self.history).map_err(|err| Error::Internal(err.to_string()))?,
        )])
    }

    fn load_metadata(&mut self, meta: &HashMap<String, String>, path: &Path) -> Result<()> {
        self.history = meta
            .get("history")
            .map(|h| serde_json::from_str(h))
            .transpose()
            .map_err(|err| Error::checkpoint(path, format!("bad history metadata: {err}")))?
            .unwrap_or_default();
        Ok(())
    }
}

/// Fine-tunes `net` on the train split of `ds` (the eval dataset); writes into the
/// sub-run `run` (`<run>/eval/<stem>`).
pub fn finetune(
    setup: &EvalSetup,
    net: &dyn Backbone,
    ds: Arc<dyn VideoDataset>,
    run: &RunDir,
    resume: bool,
    device: &Device,
) -> Result<FinetuneResult> {
    let e = setup.eval;
    let classes = ds.num_classes();
    if classes == 0 {
        return Err(Error::BadInput(
            "fine-tuning needs a labelled dataset".into(),
        ));
    }
    let seed = mix(setup.seed ^ hash_str("finetune"));
    let head_vs = VarStore::new(device, seed);
    let head = Linear::new(&head_vs.pp("fc"), net.out_channels(), classes)?;
    let freeze = e.backbone_lr == 0.0;
    let mut groups = Vec::new();
    if !freeze {
        groups.push(ParamGroup {
            prefix: "optim_backbone".into(),
            optimizer: optimizer(setup, net.vars().trainable())?,
            lr_factor: e.backbone_lr,
        });
    }
    groups.push(ParamGroup {
        prefix: "optim_head".into(),
        optimizer: optimizer(setup, head_vs.trainable())?,
        lr_factor: e.lr,
    });

    let n = ds.len(Split::Train);
    if n == 0 || e.finetune_batch_size == 0 {
        return Err(Error::BadInput(format!(
            "fine-tuning needs training videos ({n}) and eval.finetune_batch_size >= 1 ({})",
            e.finetune_batch_size
        )));
    }
    let steps_per_epoch = (n as u64).div_ceil(e.finetune_batch_size as u64);
    let total = e.finetune_epochs * steps_per_epoch;
    // Base rate 1: each group's rate is its own lr times this factor.
    let mut sched = Schedule {
        plateau: None,
        kind: e.schedule,
        base_lr: 1.0,
        warmup_steps: e.warmup_steps,
        total_steps: total,
        milestones: vec![total / 2, total * 3 / 4],
        gamma: 0.1,
        min_lr: 0.0,
    };
    if !resume && !run.checkpoints().is_empty() {
        return Err(Error::BadInput(format!(
            "{} already holds a fine-tuning run; pass --resume to continue it",
            run.path().display()
        )));
    }
    tracing::info!(
        "fine-tuning {} steps ({} epochs), backbone lr {} head lr {}",
        total,
        e.finetune_epochs,
        e.backbone_lr,
        e.lr
    );
    let cfg = LoopConfig {
        loader: LoaderConfig::from(setup.data),
        batch_size: e.finetune_batch_size,
        seed,
        total,
        end: total,
        grad_clip: 0.0,
        log_every: steps_per_epoch,
        checkpoint_every: steps_per_epoch,
        keep_checkpoints: 1,
        resume,
        metadata: HashMap::new(),
        name: format!("fine-tune {}", run.path().display()),
        recipe: Some(setup.recipe.to_string()),
        on_nonfinite: crate::train::config::OnNonFinite::Stop,
        inject_nonfinite_at: None,
        parallel: None,
    };
    let mut obj = Finetuner {
        net,
        head,
        head_vs,
        freeze,
        ds: ds.clone(),
        setup,
        device: device.clone(),
        steps_per_epoch,
        total,
        run,
        history: Vec::new(),
    };
    engine::run(&mut obj, &mut groups, &mut sched, ds, &cfg, run, device)?;
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("recipe".to_string(), setup.recipe.to_string()),
    ]);
    write_safetensors_atomic(&run.last(), &obj.tensors(), &meta)?;
    let history = obj.history;
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
        dir: run.path().to_path_buf(),
    })
}
