//! Momentum-contrast building blocks shared by methods with a key encoder: the FIFO
//! memory bank, the EMA update and the exact copy of one parameter store into another.
//! Kept apart from the temporal-discriminative family so a second momentum method can
//! reuse them.

use candle_core::{Device, Tensor};
use rand::SeedableRng;

use crate::loss::l2_normalize;
use crate::nn::VarStore;
use crate::seed::normal;
use crate::{Error, Result};

/// Pushes `keys` `[B, D]` into the FIFO memory bank `queue` `[K, D]` at row `ptr`,
/// wrapping around; returns the new queue and pointer. When `B > K` only the last `K`
/// keys remain.
pub fn enqueue(queue: &Tensor, ptr: usize, keys: &Tensor) -> Result<(Tensor, usize)> {
    let (k, _d) = queue.dims2()?;
    let b = keys.dim(0)?;
    let mut idx: Vec<u32> = (0..k as u32).collect();
    for i in 0..b {
        idx[(ptr + i) % k] = (k + i) as u32;
    }
    let all = Tensor::cat(&[queue, &keys.detach().to_dtype(queue.dtype())?], 0)?;
    let idx = Tensor::from_vec(idx, k, queue.device())?;
    Ok((all.index_select(&idx, 0)?, (ptr + b) % k))
}

/// `target <- m * target + (1 - m) * source` for every trainable parameter (matched by
/// name; both stores must hold the same names). `m = 0` copies, `m = 1` freezes.
pub fn ema_update(target: &VarStore, source: &VarStore, m: f64) -> Result<()> {
    let (t, s) = (target.trainable(), source.trainable());
    if t.len() != s.len() || t.iter().zip(&s).any(|((a, _), (b, _))| a != b) {
        return Err(Error::Internal(
            "EMA between stores with different parameters".into(),
        ));
    }
    for ((_, tv), (_, sv)) in t.iter().zip(&s) {
        tv.set(&ema(tv.as_tensor(), sv.as_tensor(), m)?)?;
    }
    Ok(())
}

/// One EMA step on a tensor of any float dtype: `m * target + (1 - m) * source`.
pub fn ema(target: &Tensor, source: &Tensor, m: f64) -> Result<Tensor> {
    Ok((target.affine(m, 0.0)? + source.affine(1.0 - m, 0.0)?)?)
}

/// Copies every tensor (parameters and buffers) of `source` into `target`.
pub(crate) fn copy_store(target: &VarStore, source: &VarStore) -> Result<()> {
    let r = target.load(&source.named_tensors("").into_iter().collect())?;
    if !r.missing.is_empty() || !r.unused.is_empty() {
        return Err(Error::Internal(format!(
            "key encoder copy: missing {:?}, unused {:?}",
            r.missing, r.unused
        )));
    }
    Ok(())
}

/// `n` seeded random unit vectors of width `d` (the memory bank's initial keys).
pub fn random_unit_rows(n: usize, d: usize, seed: u64, device: &Device) -> Result<Tensor> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n * d)
        // Gaussian rows are uniformly distributed directions.
        .map(|_| normal(&mut rng) as f32)
        .collect();
    l2_normalize(&Tensor::from_vec(v, (n, d), device)?)
}
