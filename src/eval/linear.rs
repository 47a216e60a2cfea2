//! Linear probe: a softmax classifier trained on frozen, cached features (the
//! backbone never sees a gradient). Features are standardised with the train
//! split's statistics; the classifier trains full-batch with AdamW.

use candle_core::Tensor;
use serde::Serialize;

use super::Features;
use crate::loss::cross_entropy;
use crate::nn::{Init, VarStore};
use crate::recipe::EvalCfg;
use crate::train::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use crate::Result;

/// Linear-probe accuracies.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinearResult {
    pub top1: f64,
    pub top5: f64,
    pub train_top1: f64,
}

/// Share of rows whose target is among the `k` highest logits.
pub fn top_k(logits: &Tensor, targets: &[u32], k: usize) -> Result<f64> {
    let rows = logits.to_vec2::<f32>()?;
    let hits = rows
        .iter()
        .zip(targets)
        .filter(|(row, &t)| {
            let v = row[t as usize];
            // rank = other logits at least as high (ties count against the target,
            // so an untrained all-zero classifier scores 0, not 1)
            row.iter()
                .enumerate()
                .filter(|&(j, &x)| j != t as usize && x >= v)
                .count()
                < k
        })
        .count();
    Ok(hits as f64 / targets.len().max(1) as f64)
}

/// Trains and tests a linear classifier on `f`.
pub fn probe(f: &Features, classes: usize, cfg: &EvalCfg, seed: u64) -> Result<LinearResult> {
    let dev = f.train.device();
    let mean = f.train.mean_keepdim(0)?;
    let std = f
        .train
        .broadcast_sub(&mean)?
        .sqr()?
        .mean_keepdim(0)?
        .sqrt()?
        .clamp(1e-6, f64::INFINITY)?;
    let norm = |x: &Tensor| -> Result<Tensor> { Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?) };
    let (xtr, xte) = (norm(&f.train)?, norm(&f.test)?);
    let ytr = Tensor::from_vec(f.train_labels.clone(), f.train_labels.len(), dev)?;
    let c = xtr.dim(1)?;
    let vs = VarStore::new(dev, seed);
    let w = vs.var("weight", (classes, c), Init::Const(0.0))?;
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
    for _ in 0..cfg.linear_epochs {
        let loss = cross_entropy(&forward(&xtr)?, &ytr)?;
        let grads = loss.backward()?;
        opt.step(&grads, cfg.linear_lr)?;
    }
    let test_logits = forward(&xte)?.detach();
    let train_logits = forward(&xtr)?.detach();
    Ok(LinearResult {
        top1: top_k(&test_logits, &f.test_labels, 1)?,
        top5: top_k(&test_logits, &f.test_labels, 5.min(classes))?,
        train_top1: top_k(&train_logits, &f.train_labels, 1)?,
    })
}
