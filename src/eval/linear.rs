//! Linear probe: a softmax classifier trained on frozen, cached clip features (the
//! backbone never sees a gradient and runs in eval mode). Each train clip is a
//! sample; test clips are scored one by one (clip level) and their softmax averaged
//! per video (video level). Features are standardised with the train statistics;
//! the classifier trains with AdamW, deterministically: full batch by default, or in
//! mini-batches of `eval.linear_batch_size` clips drawn by `candle_datasets::Batcher`
//! from a seeded per-epoch permutation of the train clips.

use candle_core::Tensor;
use candle_datasets::Batcher;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::metrics::{top_k, video_probs};
use super::{EvalConfig, Features};
use crate::loss::cross_entropy;
use crate::nn::{Init, VarStore};
use crate::seed::mix;
use crate::train::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use crate::train::update;
use crate::Result;

/// Linear-probe accuracies.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinearResult {
    /// Video level (softmax averaged over the test clips).
    pub top1: f64,
    pub top5: f64,
    pub clip_top1: f64,
    pub clip_top5: f64,
    /// Clip-level accuracy on the training features (to see over-fitting).
    pub train_clip_top1: f64,
    /// Video-level confusion matrix: `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u32>>,
}

fn repeat_labels(labels: &[u32], k: usize) -> Vec<u32> {
    labels
        .iter()
        .flat_map(|&l| std::iter::repeat_n(l, k))
        .collect()
}

/// Trains and tests a linear classifier on `f`.
pub fn probe(f: &Features, classes: usize, cfg: &EvalConfig, seed: u64) -> Result<LinearResult> {
    let (vtr, k, d) = f.train.clips.dims3()?;
    let (vte, kte, _) = f.test.clips.dims3()?;
    let xtr = f.train.clips.reshape((vtr * k, d))?;
    let xte = f.test.clips.reshape((vte * kte, d))?;
    let dev = xtr.device().clone();
    let mean = xtr.mean_keepdim(0)?;
    let std = xtr
        .broadcast_sub(&mean)?
        .sqr()?
        .mean_keepdim(0)?
        .sqrt()?
        .clamp(1e-6, f64::INFINITY)?;
    let norm = |x: &Tensor| -> Result<Tensor> { Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?) };
    let (xtr, xte) = (norm(&xtr)?, norm(&xte)?);
    let ytr_v = repeat_labels(&f.train.labels, k);
    let yte_v = repeat_labels(&f.test.labels, kte);
    let ytr = Tensor::from_vec(ytr_v.clone(), ytr_v.len(), &dev)?;
    let vs = VarStore::new(&dev, seed);
    let w = vs.var("weight", (classes, d), Init::Const(0.0))?;
    let b = vs.var("bias", classes, Init::Const(0.0))?;
    let mut opt = Optimizer::new(
        OptimizerConfig {
            kind: OptimizerKind::Adamw,
            momentum: 0.0,
            nesterov: false,
            weight_decay: cfg.linear_weight_decay,
            betas: [0.9, 0.999],
            eps: 1e-8,
        },
        vs.trainable(),
    )?;
    let forward = |x: &Tensor| -> Result<Tensor> { Ok(x.matmul(&w.t()?)?.broadcast_add(&b)?) };
    let mut step = |x: &Tensor, y: &Tensor| -> Result<()> {
        let loss = cross_entropy(&forward(x)?, y)?;
        update(&loss, &mut [(&mut opt, cfg.linear_lr)], 0.0).map(drop)
    };
    let bs = cfg.linear_batch_size;
    for epoch in 0..cfg.linear_epochs {
        if bs == 0 {
            step(&xtr, &ytr)?;
            continue;
        }
        let mut order: Vec<usize> = (0..xtr.dim(0)?).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
            seed ^ mix(epoch as u64 ^ 0x11ea)
        )));
        // (feature row, label) pairs in this epoch's order; the last batch may be short.
        let pairs = order.into_iter().map(|i| Ok((xtr.get(i)?, ytr.get(i)?)));
        for batch in Batcher::new_r2(pairs)
            .batch_size(bs)
            .return_last_incomplete_batch(true)
        {
            let (x, y) = batch?;
            step(&x, &y)?;
        }
    }
    let test_logits = forward(&xte)?.detach();
    let train_logits = forward(&xtr)?.detach();
    let video = video_probs(&test_logits.reshape((vte, kte, classes))?)?;
    let k5 = 5.min(classes);
    let mut confusion = vec![vec![0u32; classes]; classes];
    let predicted = video.argmax(1)?.to_vec1::<u32>()?;
    for (&t, &p) in f.test.labels.iter().zip(&predicted) {
        confusion[t as usize][p as usize] += 1;
    }
    Ok(LinearResult {
        confusion,
        top1: top_k(&video, &f.test.labels, 1)?,
        top5: top_k(&video, &f.test.labels, k5)?,
        clip_top1: top_k(&test_logits, &yte_v, 1)?,
        clip_top5: top_k(&test_logits, &yte_v, k5)?,
        train_clip_top1: top_k(&train_logits, &ytr_v, 1)?,
    })
}
