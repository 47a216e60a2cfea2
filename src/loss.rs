//! Pure loss functions on tensors. No state, no parameters: each takes logits or
//! features and returns a scalar tensor, so each can be tested against
//! hand-computed values.

use candle_core::{DType, Device, Tensor, D};

use crate::{Error, Result};

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

/// Positive and negative pair masks `[N, N]` (1 marks a pair) for [`nt_xent_masked`].
/// Row `a` lists the partners of anchor `a`; the diagonal is never set.
#[derive(Debug, Clone)]
pub struct PairMasks {
    pub pos: Tensor,
    pub neg: Tensor,
}

impl PairMasks {
    /// Masks from a pair rule: `rule(a, b)` is `Some(true)` for a positive,
    /// `Some(false)` for a negative, `None` to ignore the pair (self pairs are always
    /// ignored).
    pub fn from_rule(
        n: usize,
        device: &Device,
        rule: impl Fn(usize, usize) -> Option<bool>,
    ) -> Result<Self> {
        let mut pos = vec![0f32; n * n];
        let mut neg = vec![0f32; n * n];
        for a in 0..n {
            for b in 0..n {
                match (a == b, rule(a, b)) {
                    (false, Some(true)) => pos[a * n + b] = 1.0,
                    (false, Some(false)) => neg[a * n + b] = 1.0,
                    _ => {}
                }
            }
        }
        Ok(Self {
            pos: Tensor::from_vec(pos, (n, n), device)?,
            neg: Tensor::from_vec(neg, (n, n), device)?,
        })
    }

    /// Instance discrimination: rows with the same `group` (video) are positives,
    /// every other row is a negative.
    pub fn instance(groups: &[usize], device: &Device) -> Result<Self> {
        Self::from_rule(groups.len(), device, |a, b| Some(groups[a] == groups[b]))
    }

    /// Local-local: within one `group` (video), rows with the same `part` (dense clip
    /// position) are positives and rows with another part are negatives; rows of other
    /// groups are ignored (no cross-video negatives).
    pub fn within_group(groups: &[usize], parts: &[usize], device: &Device) -> Result<Self> {
        Self::from_rule(groups.len(), device, |a, b| {
            (groups[a] == groups[b]).then_some(parts[a] == parts[b])
        })
    }
}

/// NT-Xent (InfoNCE) with explicit pair masks, per anchor: for unit features `z`
/// `[N, D]` and logits `s = z z^T / temperature`, anchor `a` with positives `P(a)` and
/// negatives `N(a)` costs
/// `mean_{p in P(a)} [ -s_ap + log(exp(s_ap) + sum_{n in N(a)} exp(s_an)) ]`
/// (each positive contrasted with the negatives on its own, as SimCLR with one
/// positive). Returns `[N]`; rows without positives are 0. Pairs in neither mask do
/// not enter the row. `z` is used as given (normalise it first for cosine logits).
pub fn nt_xent_rows(z: &Tensor, masks: &PairMasks, temperature: f64) -> Result<Tensor> {
    let (n, _) = z.dims2()?;
    if masks.pos.dims() != [n, n] || masks.neg.dims() != [n, n] {
        return Err(Error::Internal(format!(
            "nt_xent: masks {:?}/{:?} do not match {n} rows",
            masks.pos.dims(),
            masks.neg.dims()
        )));
    }
    let dt = z.dtype();
    let (pos, neg) = (masks.pos.to_dtype(dt)?, masks.neg.to_dtype(dt)?);
    let s = (z.matmul(&z.t()?)? / temperature)?;
    // Shift each row by its (constant) maximum so exp cannot overflow.
    let s = s.broadcast_sub(&s.detach().max_keepdim(1)?)?;
    let e = s.exp()?;
    let neg_sum = e.mul(&neg)?.sum_keepdim(1)?;
    // Entries outside `pos` become 1 before the log so they stay finite (then masked).
    let e_pos = (e.mul(&pos)? + pos.affine(-1.0, 1.0)?)?;
    let term = (e_pos.broadcast_add(&neg_sum)?.log()? - s)?.mul(&pos)?;
    let count = pos.sum(1)?.clamp(1.0, f64::MAX)?;
    Ok(term.sum(1)?.div(&count)?)
}

/// Mean of [`nt_xent_rows`] over the anchors that have at least one positive.
pub fn nt_xent_masked(z: &Tensor, masks: &PairMasks, temperature: f64) -> Result<Tensor> {
    let rows = nt_xent_rows(z, masks, temperature)?;
    let has_pos = masks.pos.sum(1)?.gt(0f64)?.to_dtype(DType::F64)?;
    let anchors = has_pos.sum_all()?.to_scalar::<f64>()?;
    if anchors == 0.0 {
        return Err(Error::Internal("nt_xent: no anchor has a positive".into()));
    }
    Ok((rows.sum_all()? / anchors)?)
}

/// SimCLR's NT-Xent between two aligned batches `x1`, `x2` `[B, D]`: row `i` of one is
/// the positive of row `i` of the other, and each of the `2B` anchors has the other
/// `2B - 2` rows as negatives; mean over the `2B` anchors. TCLR's public code calls this
/// on every pair of (view, part) slots of the dense clips. Symmetric in `x1`, `x2`.
pub fn nt_xent_pair(x1: &Tensor, x2: &Tensor, temperature: f64) -> Result<Tensor> {
    let b = x1.dim(0)?;
    if x2.dims() != x1.dims() {
        return Err(Error::Internal(format!(
            "nt_xent_pair: {:?} vs {:?}",
            x1.dims(),
            x2.dims()
        )));
    }
    let ids: Vec<usize> = (0..2 * b).map(|r| r % b).collect();
    let masks = PairMasks::instance(&ids, x1.device())?;
    nt_xent_masked(&Tensor::cat(&[x1, x2], 0)?, &masks, temperature)
}

/// Global-local loss (TCLR): for each sample `b`, the similarity matrix
/// `s_ij = <slices[b, i], locals[b, j]> / temperature` of its `S` global time slices
/// `[B, S, D]` against its `S` local clips `[B, S, D]`, with cross-entropy towards the
/// matching index (slice i <-> clip i) along rows and along columns; the result is the
/// mean of the two directions over all `B * S` rows.
pub fn global_local(slices: &Tensor, locals: &Tensor, temperature: f64) -> Result<Tensor> {
    let (b, s, _) = slices.dims3()?;
    if locals.dims3()? != slices.dims3()? {
        return Err(Error::Internal(format!(
            "global_local: slices {:?} vs locals {:?}",
            slices.dims(),
            locals.dims()
        )));
    }
    let sim = (slices.matmul(&locals.transpose(1, 2)?.contiguous()?)? / temperature)?;
    let eye = Tensor::eye(s, sim.dtype(), sim.device())?.unsqueeze(0)?;
    let dir = |m: &Tensor| -> Result<Tensor> {
        let logp = candle_nn::ops::log_softmax(m, D::Minus1)?;
        Ok((logp.broadcast_mul(&eye)?.sum_all()? / (b * s) as f64)?.neg()?)
    };
    let rows = dir(&sim)?;
    let cols = dir(&sim.transpose(1, 2)?.contiguous()?)?;
    Ok(((rows + cols)? * 0.5)?)
}

/// Rows of `x` `[N, D]` scaled to unit L2 norm (norms below 1e-12 are clamped, as
/// `F.normalize`).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norm)?)
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
