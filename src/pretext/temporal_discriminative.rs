//! The temporal-discriminative family: VTDL (METHODS.md section 4; reconstruction
//! after the authors' public code, none of it copied). The family trait
//! [`TemporalDiscriminative`] holds what varies: the triplet rule (where the
//! three clips start) and the anchor's temporal augmentation; the adapter
//! [`TemporalDiscriminativeMethod`] plans the clips from the rule and runs the encoders,
//! memory bank and losses once for every variant. The shipped variant is [`Vtdl`].
//! Each video gives a temporal triplet ([`triplet_starts`]), in batch order
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
use std::sync::Arc;

use candle_core::{DType, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use super::momentum::copy_store;
pub use super::momentum::{ema, ema_update, enqueue, random_unit_rows};
use super::{Pretext, StepOutput};
use crate::backbone::Backbone;
use crate::data::clip::{Batch, BatchSlice, ClipMeta, ClipPlanner, PlannedClip};
use crate::data::sampler::clip_indices;
use crate::error::{check, Invalid};
use crate::loss::{info_nce_queue, l2_normalize, triplet_margin};
use crate::nn::{Linear, VarStore};
use crate::seed::mix;
use crate::{Error, Result};

/// `[method] kind = "temporal_discriminative"`: VTDL, temporal triplets contrasted
/// against a momentum encoder's memory bank (METHODS.md section 4). `stride`,
/// `min_gap` and `tca*` are [`Vtdl`]'s; the rest the adapter's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemporalDiscriminativeConfig {
    /// Present so the section can be read as one table; always "temporal_discriminative".
    #[serde(skip_serializing)]
    pub kind: Option<String>,
    /// Frame stride of all three clips.
    pub stride: usize,
    /// Least (circular) distance in frames between the anchor's and the negative's start.
    pub min_gap: usize,
    /// Temporal Consistent Augmentation on the anchor.
    pub tca: bool,
    /// TCA mixing weight `l` is drawn from `U(0, tca_max)`.
    pub tca_max: f64,
    /// EMA momentum of the key encoder (0 copies the query encoder, 1 freezes it).
    pub momentum: f64,
    /// Keys kept in the FIFO memory bank.
    pub queue_size: usize,
    /// InfoNCE temperature.
    pub temperature: f64,
    /// Weight of the margin triplet loss (the public code computes it but adds 0).
    pub triplet_weight: f64,
    /// Margin of the triplet loss.
    pub margin: f64,
}

impl Default for TemporalDiscriminativeConfig {
    fn default() -> Self {
        Self {
            kind: None,
            stride: 4,
            min_gap: 8,
            tca: true,
            tca_max: 0.1,
            momentum: 0.999,
            queue_size: 16384,
            temperature: 0.07,
            triplet_weight: 0.0,
            margin: 1.0,
        }
    }
}

impl TemporalDiscriminativeConfig {
    /// Range checks; keys relative to the `[method]` table.
    pub fn validate(&self) -> std::result::Result<(), Invalid> {
        let m = self;
        check(m.stride >= 1, "stride", || "must be at least 1".into())?;
        check(m.min_gap >= 1, "min_gap", || "must be at least 1".into())?;
        check((0.0..1.0).contains(&m.tca_max), "tca_max", || {
            format!("must be in [0, 1), got {}", m.tca_max)
        })?;
        check((0.0..=1.0).contains(&m.momentum), "momentum", || {
            format!("must be in [0, 1], got {}", m.momentum)
        })?;
        check(m.queue_size >= 1, "queue_size", || {
            "must be at least 1".into()
        })?;
        check(
            m.temperature.is_finite() && m.temperature > 0.0,
            "temperature",
            || format!("must be > 0, got {}", m.temperature),
        )?;
        check(m.triplet_weight >= 0.0, "triplet_weight", || {
            format!("must be >= 0, got {}", m.triplet_weight)
        })?;
        check(m.margin >= 0.0, "margin", || {
            format!("must be >= 0, got {}", m.margin)
        })?;
        Ok(())
    }

    /// VTDL on `backbone` (clips of `frames` frames). `key_backbone` is a second
    /// backbone of the same architecture (its values are overwritten by a copy of
    /// `backbone`'s); heads on `head_vars`, the memory bank drawn from `queue_seed`.
    pub fn init(
        &self,
        frames: usize,
        backbone: Box<dyn Backbone>,
        key_backbone: Box<dyn Backbone>,
        head_vars: VarStore,
        queue_seed: u64,
    ) -> Result<TemporalDiscriminativeMethod<Vtdl>> {
        let method = Vtdl {
            stride: self.stride,
            min_gap: self.min_gap,
            tca: self.tca,
            tca_max: self.tca_max,
        };
        TemporalDiscriminativeMethod::new(
            method,
            self,
            frames,
            backbone,
            key_backbone,
            head_vars,
            queue_seed,
        )
    }
}

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
                                       // Built in f64 and cast to the clips' dtype (the same f32 values as before for f32
                                       // clips; exact weights for f64 ones).
    let lw = Tensor::from_vec(l.to_vec(), (n, 1, 1, 1, 1), x.device())?.to_dtype(x.dtype())?;
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

/// Starts of a temporal triplet (anchor and negative; the positive shares the
/// anchor's start) for clips of `frames` frames at `stride` in a video of `len` frames.
/// The negative is always at [`circular_distance`] `>= min_gap` from the anchor.
///
/// When both clips can lie inside the video with that gap (the span
/// `(frames - 1) * stride + 1` leaves `room >= min_gap` free starts), both do: the
/// anchor is drawn among starts that have a partner, then the negative among its
/// partners (a jump cut in one clip only would be a shortcut for telling them apart).
/// Otherwise the video is read as a loop (indices wrap): anchor anywhere, negative at
/// an offset drawn from `min_gap..=len - min_gap`. A video shorter than `2 * min_gap`
/// has no valid negative and is an error naming `method.min_gap`.
///
/// [`circular_distance`]: crate::data::sampler::circular_distance
pub fn triplet_starts<R: Rng + ?Sized>(
    len: usize,
    frames: usize,
    stride: usize,
    min_gap: usize,
    rng: &mut R,
) -> Result<(usize, usize)> {
    let span = (frames.max(1) - 1) * stride + 1;
    if span <= len && len - span >= min_gap {
        let room = len - span;
        // Start `s` in 0..=room has a partner iff s >= min_gap or s + min_gap <= room.
        let anchors: Vec<usize> = (0..=room)
            .filter(|&s| s >= min_gap || s + min_gap <= room)
            .collect();
        let s = anchors[rng.random_range(0..anchors.len())];
        let partners: Vec<usize> = (0..=room).filter(|&n| n.abs_diff(s) >= min_gap).collect();
        return Ok((s, partners[rng.random_range(0..partners.len())]));
    }
    if len == 0 || len < 2 * min_gap {
        return Err(Error::BadInput(format!(
            "temporal triplet: a video of {len} frames has no negative start at least \
             method.min_gap = {min_gap} frames from the anchor (needs at least {} frames); \
             lower method.min_gap",
            (2 * min_gap).max(1)
        )));
    }
    let s = rng.random_range(0..len);
    let d = rng.random_range(min_gap..=len - min_gap);
    Ok((s, (s + d) % len))
}

/// The temporal-discriminative family: how a triplet is placed in a video and how the
/// anchor is augmented in time.
pub trait TemporalDiscriminative: Send + Sync + 'static {
    /// Frame stride of all three clips (>= 1).
    fn stride(&self) -> usize;
    /// Triplet rule: the starts of a triplet of clips of `frames` frames in a video of
    /// `len` frames, drawn from the video's plan `rng`.
    fn triplet(&self, len: usize, frames: usize, rng: &mut dyn RngCore) -> Result<Triplet>;
    /// Temporal augmentation of anchor clips `[B, C, T, H, W]` with randomness from
    /// `seed`; the anchors are `slice` of the step's batch (draw for `slice.total`
    /// anchors and keep this slice's, so a data-parallel rank draws what one process
    /// on the whole batch would).
    fn augment_anchor(&self, anchor: &Tensor, seed: u64, slice: BatchSlice) -> Result<Tensor>;
}

/// VTDL's rules: anchor and positive share a start, the negative is at least
/// `min_gap` frames away ([`triplet_starts`]); TCA on the anchor when `tca`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vtdl {
    pub stride: usize,
    pub min_gap: usize,
    pub tca: bool,
    pub tca_max: f64,
}

impl TemporalDiscriminative for Vtdl {
    fn stride(&self) -> usize {
        self.stride
    }

    fn triplet(&self, len: usize, frames: usize, rng: &mut dyn RngCore) -> Result<Triplet> {
        let (a, n) = triplet_starts(len, frames, self.stride, self.min_gap, rng)?;
        Ok(Triplet {
            anchor: a,
            positive: a,
            negative: n,
        })
    }

    fn augment_anchor(&self, anchor: &Tensor, seed: u64, slice: BatchSlice) -> Result<Tensor> {
        if !self.tca {
            return Ok(anchor.clone());
        }
        let (b, _, t, _, _) = anchor.dims5()?;
        let (l, r) = tca_draw(slice.total, t, self.tca_max, seed);
        let rows = slice.rows(b, 1);
        tca(anchor, &l[rows.clone()], &r[rows])
    }
}

/// The loader's view of a temporal-discriminative method: three clips per video in
/// batch order anchor, positive, negative, all at the method's stride.
pub struct TripletPlanner<T: TemporalDiscriminative> {
    method: Arc<T>,
    frames: usize,
}

impl<T: TemporalDiscriminative> TripletPlanner<T> {
    /// `method`'s triplets of clips of `frames` frames.
    pub fn new(method: T, frames: usize) -> Self {
        Self {
            method: Arc::new(method),
            frames,
        }
    }
}

impl<T: TemporalDiscriminative> ClipPlanner for TripletPlanner<T> {
    fn clips_per_video(&self) -> usize {
        3
    }

    fn frames(&self) -> usize {
        self.frames
    }

    fn plan(&self, len: usize, rng: &mut dyn RngCore) -> Result<Vec<PlannedClip>> {
        let (t, stride) = (self.frames, self.method.stride());
        if stride == 0 || t == 0 {
            return Err(Error::Internal(format!(
                "inconsistent temporal triplet: {t} frames at stride {stride}"
            )));
        }
        let tr = self.method.triplet(len, t, rng)?;
        Ok([tr.anchor, tr.positive, tr.negative]
            .into_iter()
            .map(|start| PlannedClip {
                meta: ClipMeta::forward(stride),
                start,
                indices: clip_indices(len, t, stride, start),
            })
            .collect())
    }
}

/// Any [`TemporalDiscriminative`] as a [`Pretext`]: query encoder (the backbone
/// being learned + projection head `pretext.fc`), momentum key encoder, FIFO memory
/// bank. Reads `momentum`, `queue_size`, `temperature`, `triplet_weight` and `margin`
/// of its [`TemporalDiscriminativeConfig`].
pub struct TemporalDiscriminativeMethod<T: TemporalDiscriminative> {
    method: Arc<T>,
    planner: Arc<TripletPlanner<T>>,
    cfg: TemporalDiscriminativeConfig,
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

impl<T: TemporalDiscriminative> TemporalDiscriminativeMethod<T> {
    /// Builds the head on `head_vars`, the key encoder as a copy of `backbone` (into
    /// `key_backbone`, which must have the same parameters) + head, and the queue from
    /// `queue_seed`.
    pub fn new(
        method: T,
        cfg: &TemporalDiscriminativeConfig,
        frames: usize,
        backbone: Box<dyn Backbone>,
        key_backbone: Box<dyn Backbone>,
        head_vars: VarStore,
        queue_seed: u64,
    ) -> Result<Self> {
        let dev = backbone.vars().device().clone();
        let c = backbone.out_channels();
        let head = Linear::new(&head_vars.pp("fc"), c, FEATURE_DIM)?;
        let key_head_vars = VarStore::new(&dev, 0);
        let key_head = Linear::new(&key_head_vars.pp("fc"), c, FEATURE_DIM)?;
        copy_store(key_backbone.vars(), backbone.vars())?;
        copy_store(&key_head_vars, &head_vars)?;
        let queue = random_unit_rows(cfg.queue_size, FEATURE_DIM, queue_seed, &dev)?;
        let method = Arc::new(method);
        let planner = Arc::new(TripletPlanner {
            method: method.clone(),
            frames,
        });
        Ok(Self {
            method,
            planner,
            cfg: cfg.clone(),
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

    /// The family implementor.
    pub fn method(&self) -> &T {
        &self.method
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

/// Rows `offset, offset + 3, ...` of a video-major triplet batch.
fn every_third(x: &Tensor, videos: usize, offset: usize) -> Result<Tensor> {
    let idx: Vec<u32> = (0..videos).map(|i| (3 * i + offset) as u32).collect();
    let idx = Tensor::from_vec(idx, videos, x.device())?;
    Ok(x.index_select(&idx, 0)?)
}

impl<T: TemporalDiscriminative> Pretext for TemporalDiscriminativeMethod<T> {
    fn planner(&self) -> Arc<dyn ClipPlanner> {
        self.planner.clone()
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
        let anchor = self
            .method
            .augment_anchor(&anchor, mix(batch.seed ^ 0x7ca0), batch.slice)?;
        let q = self.embed_query(&anchor, train)?;
        let n = self.embed_query(&every_third(&batch.clips, b, 2)?, train)?;
        let k = self.embed_key(&every_third(&batch.clips, b, 1)?, train)?;
        // Data parallel: the loss and the queue take every rank's embeddings (the
        // heads are linear, so gathering after them is gathering before them).
        let (q, n, k, b) = match crate::ops::collective::rank_group() {
            Some(g) => {
                let all = |t: &Tensor| crate::ops::collective::all_gather_rows(t, &g);
                (all(&q)?, all(&n)?, all(&k)?, b * g.world())
            }
            None => (q, n, k, b),
        };
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
