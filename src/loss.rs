//! Pure loss functions on tensors. No state, no parameters: each takes logits or
//! features and returns a scalar tensor, so each can be tested against
//! hand-computed values.

use candle_core::{DType, Tensor, D};

use crate::Result;

/// Mean cross-entropy of `logits` `[N, K]` against class indices `targets` `[N]` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// Share of rows whose arg-max equals the target.
pub fn accuracy(logits: &Tensor, targets: &Tensor) -> Result<f64> {
    let pred = logits.argmax(D::Minus1)?.to_dtype(DType::U32)?;
    let hits = pred
        .eq(&targets.to_dtype(DType::U32)?)?
        .to_dtype(DType::F32)?
        .mean_all()?;
    Ok(hits.to_scalar::<f32>()? as f64)
}

/// Logits of InfoNCE with a memory bank, `[B, 1 + K (+ 1)]`: per row, the query's
/// similarity to its positive key, to every queued key, then (when given) to its own
/// hard negative, all divided by `temperature`. `q`, `k`, `hard` are `[B, D]`, `queue`
/// is `[K, D]`; features are expected L2-normalised. The target is column 0.
pub fn info_nce_queue_logits(
    q: &Tensor,
    k: &Tensor,
    queue: &Tensor,
    hard: Option<&Tensor>,
    temperature: f64,
) -> Result<Tensor> {
    let pos = (q * k)?.sum_keepdim(1)?;
    let neg = q.matmul(&queue.t()?)?;
    let mut cols = vec![pos, neg];
    if let Some(n) = hard {
        cols.push((q * n)?.sum_keepdim(1)?);
    }
    Ok((Tensor::cat(&cols, 1)? / temperature)?)
}

/// InfoNCE (MoCo's softmax cross-entropy) over [`info_nce_queue_logits`] with the
/// positive as the target: `mean_i -log softmax(logits_i)[0]`. Returns the loss and
/// the logits (for logging how often the positive wins).
pub fn info_nce_queue(
    q: &Tensor,
    k: &Tensor,
    queue: &Tensor,
    hard: Option<&Tensor>,
    temperature: f64,
) -> Result<(Tensor, Tensor)> {
    let logits = info_nce_queue_logits(q, k, queue, hard, temperature)?;
    let targets = Tensor::zeros(logits.dim(0)?, DType::U32, logits.device())?;
    Ok((cross_entropy(&logits, &targets)?, logits))
}

/// Margin triplet loss as PyTorch's `TripletMarginLoss(margin, p = 2)`:
/// `mean_i max(0, d(a_i, p_i) - d(a_i, n_i) + margin)` with
/// `d(x, y) = ||x - y + 1e-6||_2` (the epsilon keeps the gradient finite at 0).
pub fn triplet_margin(a: &Tensor, p: &Tensor, n: &Tensor, margin: f64) -> Result<Tensor> {
    let dist = |x: &Tensor, y: &Tensor| -> Result<Tensor> {
        Ok(((x - y)? + 1e-6)?.sqr()?.sum(1)?.sqrt()?)
    };
    let gap = ((dist(a, p)? - dist(a, n)?)? + margin)?;
    Ok(gap.relu()?.mean_all()?)
}
