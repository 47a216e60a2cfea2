//! Pure metric functions shared by the protocols: top-k accuracy, video-level
//! scores from clip scores, mean and standard deviation over splits.

use candle_core::{Tensor, D};

use crate::Result;

/// Share of rows whose target is among the `k` highest scores. Ties count against the
/// target, so an untrained all-equal classifier scores 0, not 1.
pub fn top_k(scores: &Tensor, targets: &[u32], k: usize) -> Result<f64> {
    let rows = scores.to_vec2::<f32>()?;
    let hits = rows
        .iter()
        .zip(targets)
        .filter(|(row, &t)| {
            let v = row[t as usize];
            row.iter()
                .enumerate()
                .filter(|&(j, &x)| j != t as usize && x >= v)
                .count()
                < k
        })
        .count();
    Ok(hits as f64 / targets.len().max(1) as f64)
}

/// Video-level class probabilities: the softmax of each clip's logits `[V, K, C]`,
/// averaged over the `K` clips of a video, `[V, C]`.
pub fn video_probs(clip_logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(clip_logits, D::Minus1)?.mean(1)?)
}

/// Mean and (population) standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
    (m, v.sqrt())
}
