//! TemporalDiscriminative: VTDL (METHODS.md section 4; reconstruction after the
//! authors' public code, none of it copied). Each video gives a temporal triplet
//! (the loader draws it: [`crate::data::sampler::triplet_starts`]), in batch order
//! anchor, positive, negative: anchor and positive share their frames (each clip has
//! its own random crop), the negative comes from another time of the same video.
//! Temporal Consistent Augmentation ([`tca`]) mixes one frame into every frame of the
//! anchor. The query encoder embeds anchor and negative, a momentum (EMA) copy of it,
//! the key encoder, embeds the positive; InfoNCE pulls the anchor to its positive
//! against a FIFO memory bank of past keys plus the hard temporal negative.
//!
//! Decisions:
//! - The key encoder runs in train mode (batch statistics, as MoCo and the public code:
//!   `model_ema.eval()` with BatchNorm layers set back to train). Its BN running
//!   statistics are its own (updated by its forwards); EMA covers trainable parameters
//!   only. Its output is detached and it is never given to the optimizer.
//! - Anchor and negative go through the query encoder in two forwards, so their batch
//!   statistics stay apart (as the public code does). No ShuffleBN: one device, and the
//!   key encoder's batch holds positives only.
//! - The key encoder is initialised as an exact copy of the query encoder; the queue as
//!   seeded random unit vectors. EMA and enqueueing happen in `after_step`, so the step's
//!   loss uses the queue as it was before the step. Both, and the queue pointer, are
//!   method state: saved in checkpoints and restored on resume.
//! - TCA draws its weight `l ~ U(0, tca_max)` and reference frame per clip (the public
//!   code draws one `l` per batch and a frame per clip).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, RngCore, SeedableRng};

use super::{Batch, ClipSpec, Pretext, Sampling, StepOutput};
use crate::backbone::{self, Backbone};
use crate::data::sampler::triplet_starts;
use crate::loss::{info_nce_queue, l2_normalize, triplet_margin};
use crate::nn::{Linear, VarStore};
use crate::seed::{mix, normal};
use crate::recipe::{BackboneCfg, TemporalDiscriminativeCfg};
use crate::{Error, Result};

/// Width of the projection head and of the memory bank's keys.
pub const FEATURE_DIM: usize = 128;

/// Start frames of one temporal triplet (anchor and positive are equal in VTDL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Triplet {
    pub anchor: usize,
    pub positive: usize,
    pub negative: usize,
}

/// Temporal Consistent Augmentation of clips `x` `[N, C, T, H, W]`: clip `i` becomes
/// `x_t <- (1 - l[i]) x_t + l[i] x_{r[i]}` for every frame `t`. The added image is the
/// same for all frames, so every time difference is the original's times `1 - l[i]`.
pub fn tca(x: &Tensor, l: &[f64], r: &[usize]) -> Result<Tensor> {
    let (n, _c, t, _h, _w) = x.dims5()?;
    if l.len() != n || r.len() != n || r.iter().any(|&f| f >= t) {
        return Err(Error::Internal(format!(
            "tca: {n} clips of {t} frames, {} weights, reference frames {r:?}",
            l.len()
        )));
    }
    let refs = (0..n)
        .map(|i| Ok(x.narrow(0, i, 1)?.narrow(2, r[i], 1)?))
        .collect::<Result<Vec<_>>>()?;
    let refs = Tensor::cat(&refs, 0)?; // [N, C, 1, H, W]
    let lw: Vec<f32> = l.iter().map(|&v| v as f32).collect();
    let lw = Tensor::from_vec(lw, (n, 1, 1, 1, 1), x.device())?.to_dtype(x.dtype())?;
    let keep = lw.affine(-1.0, 1.0)?;
    Ok(x.broadcast_mul(&keep)?
        .broadcast_add(&refs.broadcast_mul(&lw)?)?)
}

/// TCA parameters for `n` clips of `t` frames: weights from `U(0, max)` and reference
/// frames, drawn from `seed`.
pub fn tca_draw(n: usize, t: usize, max: f64, seed: u64) -> (Vec<f64>, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (rng.random::<f64>() * max, rng.random_range(0..t.max(1))))
        .unzip()
}

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
        let next = (tv.as_tensor().affine(m, 0.0)? + sv.as_tensor().affine(1.0 - m, 0.0)?)?;
        tv.set(&next)?;
    }
    Ok(())
}

/// Copies every tensor (parameters and buffers) of `source` into `target`.
fn copy_store(target: &VarStore, source: &VarStore) -> Result<()> {
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

/// The temporal-discriminative family: how triplets are placed and how the anchor is
/// augmented in time.
pub trait TemporalDiscriminative {
    /// Starts of a triplet in a video of `len` frames.
    fn triplet(&self, len: usize, rng: &mut dyn RngCore) -> Result<Triplet>;
    /// Temporal augmentation of anchor clips `[B, C, T, H, W]` with randomness from `seed`.
    fn augment_anchor(&self, anchor: &Tensor, seed: u64) -> Result<Tensor>;
}

/// VTDL: query encoder (the backbone being learned + projection head), momentum key
/// encoder, FIFO memory bank.
pub struct Vtdl {
    cfg: TemporalDiscriminativeCfg,
    frames: usize,
    backbone: Box<dyn Backbone>,
    head: Linear,
    head_vars: VarStore,
    key_backbone: Box<dyn Backbone>,
    key_head: Linear,
    key_head_vars: VarStore,
    /// `[queue_size, FEATURE_DIM]`, row `ptr` is the next one overwritten.
    queue: Tensor,
    ptr: usize,
    /// Keys of the last training step, enqueued in `after_step`.
    pending: Option<Tensor>,
}

impl Vtdl {
    /// Builds the head on `head_vars`, the key encoder as a copy of `backbone` + head
    /// (same `backbone_cfg`), and the queue from `queue_seed`.
    pub fn new(
        cfg: &TemporalDiscriminativeCfg,
        backbone_cfg: &BackboneCfg,
        frames: usize,
        backbone: Box<dyn Backbone>,
        head_vars: VarStore,
        queue_seed: u64,
    ) -> Result<Self> {
        let dev = backbone.vars().device().clone();
        let c = backbone.out_channels();
        let head = Linear::new(&head_vars.pp("fc"), c, FEATURE_DIM)?;
        let key_vars = VarStore::new(&dev, 0);
        let key_backbone = backbone::build(backbone_cfg, &key_vars, frames)?;
        let key_head_vars = VarStore::new(&dev, 0);
        let key_head = Linear::new(&key_head_vars.pp("fc"), c, FEATURE_DIM)?;
        copy_store(key_backbone.vars(), backbone.vars())?;
        copy_store(&key_head_vars, &head_vars)?;
        let queue = random_unit_rows(cfg.queue_size, FEATURE_DIM, queue_seed, &dev)?;
        Ok(Self {
            cfg: cfg.clone(),
            frames,
            backbone,
            head,
            head_vars,
            key_backbone,
            key_head,
            key_head_vars,
            queue,
            ptr: 0,
            pending: None,
        })
    }

    /// The memory bank `[queue_size, FEATURE_DIM]` and its write pointer.
    pub fn queue(&self) -> (&Tensor, usize) {
        (&self.queue, self.ptr)
    }

    /// The key encoder's backbone.
    pub fn key_backbone(&self) -> &dyn Backbone {
        self.key_backbone.as_ref()
    }

    /// L2-normalised query embeddings `[B, FEATURE_DIM]` of clips.
    pub fn embed_query(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        l2_normalize(&self.head.forward(&self.backbone.pooled(x, train)?)?)
    }

    /// L2-normalised key embeddings (detached) of clips.
    pub fn embed_key(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let f = self.key_backbone.pooled(x, train)?;
        Ok(l2_normalize(&self.key_head.forward(&f)?)?.detach())
    }
}

impl TemporalDiscriminative for Vtdl {
    fn triplet(&self, len: usize, rng: &mut dyn RngCore) -> Result<Triplet> {
        let (a, n) = triplet_starts(len, self.frames, self.cfg.stride, self.cfg.min_gap, rng)?;
        Ok(Triplet {
            anchor: a,
            positive: a,
            negative: n,
        })
    }

    fn augment_anchor(&self, anchor: &Tensor, seed: u64) -> Result<Tensor> {
        if !self.cfg.tca {
            return Ok(anchor.clone());
        }
        let (b, _, t, _, _) = anchor.dims5()?;
        let (l, r) = tca_draw(b, t, self.cfg.tca_max, seed);
        tca(anchor, &l, &r)
    }
}

/// Rows `offset, offset + 3, ...` of a video-major triplet batch.
fn every_third(x: &Tensor, videos: usize, offset: usize) -> Result<Tensor> {
    let idx: Vec<u32> = (0..videos).map(|i| (3 * i + offset) as u32).collect();
    let idx = Tensor::from_vec(idx, videos, x.device())?;
    Ok(x.index_select(&idx, 0)?)
}

impl Pretext for Vtdl {
    fn clip_spec(&self) -> ClipSpec {
        ClipSpec {
            clips_per_video: 3,
            frames: self.frames,
            sampling: Sampling::TemporalTriplet {
                stride: self.cfg.stride,
                min_gap: self.cfg.min_gap,
            },
        }
    }

    fn step(&mut self, batch: &Batch, train: bool) -> Result<StepOutput> {
        let b = batch.videos;
        if batch.clips.dim(0)? != 3 * b {
            return Err(Error::BadInput(format!(
                "temporal discriminative expects 3 clips per video (anchor, positive, \
                 negative): {b} videos, {} clips",
                batch.clips.dim(0)?
            )));
        }
        let anchor = every_third(&batch.clips, b, 0)?;
        let anchor = self.augment_anchor(&anchor, mix(batch.seed ^ 0x7ca0))?;
        let q = self.embed_query(&anchor, train)?;
        let n = self.embed_query(&every_third(&batch.clips, b, 2)?, train)?;
        let k = self.embed_key(&every_third(&batch.clips, b, 1)?, train)?;
        let (mut loss, logits) =
            info_nce_queue(&q, &k, &self.queue, Some(&n), self.cfg.temperature)?;
        let logits = logits.detach();
        let hard_col = logits.dim(1)? - 1;
        let mean = |t: Tensor| -> Result<f64> {
            Ok(t.mean_all()?.to_scalar::<f32>()? as f64 * self.cfg.temperature)
        };
        let mut scalars = vec![
            (
                "acc",
                crate::loss::accuracy(&logits, &Tensor::zeros(b, DType::U32, q.device())?)?,
            ),
            ("sim_pos", mean(logits.narrow(1, 0, 1)?)?),
            ("sim_hard_neg", mean(logits.narrow(1, hard_col, 1)?)?),
        ];
        if self.cfg.triplet_weight > 0.0 {
            let t = triplet_margin(&q, &k, &n, self.cfg.margin)?;
            scalars.push(("triplet", t.to_scalar::<f32>()? as f64));
            loss = (loss + (t * self.cfg.triplet_weight)?)?;
        }
        if train {
            self.pending = Some(k);
        }
        Ok(StepOutput { loss, scalars })
    }

    fn after_step(&mut self) -> Result<()> {
        let m = self.cfg.momentum;
        ema_update(self.key_backbone.vars(), self.backbone.vars(), m)?;
        ema_update(&self.key_head_vars, &self.head_vars, m)?;
        if let Some(k) = self.pending.take() {
            (self.queue, self.ptr) = enqueue(&self.queue, self.ptr, &k)?;
        }
        Ok(())
    }

    fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }

    fn head_vars(&self) -> &VarStore {
        &self.head_vars
    }

    /// `queue`, `queue_ptr` (u32 `[1]`), the key encoder under `key.backbone.` and
    /// `key.head.`.
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![
            ("queue".to_string(), self.queue.clone()),
            (
                "queue_ptr".to_string(),
                Tensor::new(&[self.ptr as u32], self.queue.device())?,
            ),
        ];
        out.extend(self.key_backbone.vars().named_tensors("key.backbone."));
        out.extend(self.key_head_vars.named_tensors("key.head."));
        Ok(out)
    }

    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let bad = |m: String| Error::BadInput(format!("checkpoint method state: {m}"));
        let queue = state
            .get("queue")
            .ok_or_else(|| bad("no `method.queue` (not a temporal_discriminative run?)".into()))?;
        let want = [self.cfg.queue_size, FEATURE_DIM];
        if queue.dims() != want {
            return Err(bad(format!(
                "`method.queue` has shape {:?}, method.queue_size = {} needs {want:?}",
                queue.dims(),
                self.cfg.queue_size
            )));
        }
        let ptr = state
            .get("queue_ptr")
            .ok_or_else(|| bad("no `method.queue_ptr`".into()))?
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        let ptr = match ptr.as_slice() {
            [p] if (*p as usize) < self.cfg.queue_size => *p as usize,
            other => {
                return Err(bad(format!(
                    "`method.queue_ptr` = {other:?} is out of range"
                )))
            }
        };
        for (prefix, store) in [
            ("key.backbone.", self.key_backbone.vars()),
            ("key.head.", &self.key_head_vars),
        ] {
            let part: BTreeMap<String, Tensor> = state
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
                .collect();
            let r = store.load(&part).map_err(|e| bad(e.to_string()))?;
            if !r.missing.is_empty() {
                return Err(bad(format!(
                    "key encoder tensors missing: {}",
                    r.missing
                        .iter()
                        .map(|m| format!("method.{prefix}{m}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        self.queue = queue.to_dtype(DType::F32)?.to_device(self.queue.device())?;
        self.ptr = ptr;
        self.pending = None;
        Ok(())
    }
}
