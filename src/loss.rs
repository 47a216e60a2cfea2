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
