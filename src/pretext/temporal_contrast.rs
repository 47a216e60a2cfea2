//! The temporal-contrast family: TCLR (METHODS.md section 3). Every video gives one
//! sparse clip and `dense` dense clips aligned with its parts, in augmented views
//! (layout and batch order: [`SparseDenseSpec`]). The family trait
//! [`TemporalContrast`] holds what varies: the clip layout and the weighted loss
//! terms over the embeddings; the adapter [`TemporalContrastMethod`] plans the clips, runs
//! one shared projection MLP over pooled features (unit embeddings) and sums the terms.
//! The shipped variant [`Tclr`] uses three losses from [`crate::loss`]: instance (IC,
//! across videos), local-local (LL, among the dense clips of one video) and
//! global-local (GL, the sparse clip's time slices against the dense clips).
//!
//! Memory: by default all clips of the batch (sparse and dense, all views) go through
//! the backbone as one batch `[B * views * (1 + dense), 3, T, H, W]`, so activations are
//! held once and batch norm sees every clip; `bn_batches = "per_clip_type"` runs one
//! pass per clip type and view instead, as the public code does (its batch-norm
//! statistics are those of one clip type). The projection MLP always runs once over
//! all rows (the code also projects each sparse time slice on its own; not offered).
//!
//! Loss parity with the public code (restated in `tools/loss_parity.py`, checked by
//! `tests/it/loss_parity.rs`): IC's sparse term, the `"pairwise"` dense term and LL
//! with `ll_reduction = "sum"` equal the code's; GL is the code's divided by 16.

use std::sync::Arc;

use candle_core::{Tensor, D};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use super::{Pretext, StepOutput};
use crate::backbone::Backbone;
use crate::data::clip::{Batch, ClipMeta, ClipPlanner, PlannedClip};
use crate::data::sampler::{clip_indices, random_start};
use crate::error::{check, Invalid};
use crate::loss::{global_local, l2_normalize, nt_xent_masked, nt_xent_pair, PairMasks};
use crate::nn::{Linear, VarStore};
use crate::ops::batch_norm3d::BatchNorm3d;
use crate::{Error, Result};

/// Augmented views of every clip (TCLR uses two).
pub const VIEWS: usize = 2;

/// How the local-local loss is reduced over the videos of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlReduction {
    /// Mean over videos (default; the three losses on one scale).
    Mean,
    /// Sum over videos, as TCLR's public code does: LL weighted by the batch size.
    Sum,
}

/// Which dense-clip instance term IC adds to the sparse one (METHODS.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IcDense {
    /// The public code's form: one NT-Xent between every ordered pair of distinct
    /// (view, part) slots of the dense clips, each with only its two slots' `2(B-1)`
    /// negatives; the 56 terms (2 views x 4 parts) summed and divided by 4.
    Pairwise,
    /// One multi-positive NT-Xent over all dense rows: the other dense clips of the same
    /// video are positives, every other video's dense clips negatives (default; the
    /// recipe value `true` of earlier versions).
    MultiPositive,
    /// No dense term: IC over the sparse clips only (the recipe value `false`).
    Off,
}

/// `ic_dense` accepts the names above and, for recipes written before it was a choice,
/// `true` (= `"multi_positive"`) and `false` (= `"off"`).
impl<'de> Deserialize<'de> for IcDense {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Self::MultiPositive),
            Raw::Bool(false) => Ok(Self::Off),
            Raw::Name(n) => match n.as_str() {
                "pairwise" => Ok(Self::Pairwise),
                "multi_positive" => Ok(Self::MultiPositive),
                "off" => Ok(Self::Off),
                other => Err(serde::de::Error::unknown_variant(
                    other,
                    &["pairwise", "multi_positive", "off"],
                )),
            },
        }
    }
}

/// How the clips of a batch are grouped into backbone passes (and so batch-norm batches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BnBatches {
    /// One backbone pass over all clips of the batch (default; batch norm sees every clip).
    Joint,
    /// One backbone pass per clip type and view (sparse, dense 0..n, for each view: 10
    /// passes for TCLR's layout), as the public code runs them.
    PerClipType,
}

/// `[method] kind = "temporal_contrast"`: TCLR (METHODS.md section 3). Total loss
/// `w_ic * IC + w_ll * LL + w_gl * GL`; a weight of 0 switches its loss off. The
/// projection (`proj_*`) is the adapter's, the rest [`Tclr`]'s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemporalContrastConfig {
    /// Present so the section can be read as one table; always "temporal_contrast".
    #[serde(skip_serializing)]
    pub kind: Option<String>,
    /// Frame stride of the sparse clip; `data.frames * sparse_stride` frames are split
    /// into `dense_clips` parts, one dense clip each.
    pub sparse_stride: usize,
    /// Dense clips per video (paper: 4).
    pub dense_clips: usize,
    /// Softmax temperature of all three losses.
    pub temperature: f64,
    /// Weight of the instance loss (IC; the code's is 1).
    pub w_ic: f64,
    /// Weight of the dense term inside IC (the code's is 1 with `ic_dense = "pairwise"`).
    pub w_ic_dense: f64,
    /// Weight of the local-local loss (LL; the code's is 1 with `ll_reduction = "sum"`,
    /// i.e. `B` in row-mean units).
    pub w_ll: f64,
    /// Weight of the global-local loss (GL, a row mean; the code's is 16: it sums over
    /// the 4 time slices and the 4 view pairs).
    pub w_gl: f64,
    /// The dense instance term added to IC ([`IcDense`]).
    pub ic_dense: IcDense,
    pub ll_reduction: LlReduction,
    /// Backbone passes per step ([`BnBatches`]).
    pub bn_batches: BnBatches,
    /// Projection MLP: C -> proj_hidden, BN, ReLU -> proj_dim, BN, L2 normalise.
    pub proj_hidden: usize,
    pub proj_dim: usize,
}

impl Default for TemporalContrastConfig {
    fn default() -> Self {
        Self {
            kind: None,
            sparse_stride: 4,
            dense_clips: 4,
            temperature: 0.1,
            w_ic: 1.0,
            w_ic_dense: 1.0,
            w_ll: 1.0,
            w_gl: 1.0,
            ic_dense: IcDense::MultiPositive,
            ll_reduction: LlReduction::Mean,
            bn_batches: BnBatches::Joint,
            proj_hidden: 512,
            proj_dim: 128,
        }
    }
}

impl TemporalContrastConfig {
    /// Range checks for clips of `frames` frames (`data.frames`); keys relative to the
    /// `[method]` table.
    pub fn validate(&self, frames: usize) -> std::result::Result<(), Invalid> {
        let m = self;
        check(m.sparse_stride >= 1, "sparse_stride", || {
            "must be at least 1".into()
        })?;
        check(m.dense_clips >= 1, "dense_clips", || {
            "must be at least 1".into()
        })?;
        check(
            (frames * m.sparse_stride).is_multiple_of(m.dense_clips),
            "dense_clips",
            || {
                format!(
                    "must divide the sparse span data.frames * method.sparse_stride = {}",
                    frames * m.sparse_stride
                )
            },
        )?;
        check(
            m.temperature.is_finite() && m.temperature > 0.0,
            "temperature",
            || format!("must be > 0, got {}", m.temperature),
        )?;
        for (key, w) in [
            ("w_ic", m.w_ic),
            ("w_ic_dense", m.w_ic_dense),
            ("w_ll", m.w_ll),
            ("w_gl", m.w_gl),
        ] {
            check(w.is_finite() && w >= 0.0, key, || {
                format!("must be >= 0 (0 switches the loss off), got {w}")
            })?;
        }
        check(m.w_ic + m.w_ll + m.w_gl > 0.0, "w_ic", || {
            "w_ic, w_ll and w_gl are all 0: nothing to learn".into()
        })?;
        check(m.w_ll == 0.0 || m.dense_clips >= 2, "w_ll", || {
            "the local-local loss needs method.dense_clips >= 2 (or w_ll = 0)".into()
        })?;
        check(m.proj_hidden >= 1, "proj_hidden", || {
            "must be at least 1".into()
        })?;
        check(m.proj_dim >= 1, "proj_dim", || "must be at least 1".into())?;
        Ok(())
    }

    /// TCLR on `backbone` (clips of `frames` frames), the projection on `head_vars`.
    pub fn init(
        &self,
        frames: usize,
        backbone: Box<dyn Backbone>,
        head_vars: VarStore,
    ) -> Result<TemporalContrastMethod<Tclr>> {
        let (hidden, dim) = (self.proj_hidden, self.proj_dim);
        TemporalContrastMethod::new(Tclr::new(self), frames, hidden, dim, backbone, head_vars)
    }
}

/// TCLR's clips of one video. The sparse clip has `frames` frames at stride `stride`
/// from a random start `s`; it spans `frames * stride` frames, split into `dense`
/// equal parts of `q = frames * stride / dense` frames. Dense clip `i` is `frames`
/// consecutive frames from `s + i * q`, so it lines up with part `i` of the sparse
/// clip (paper: 16 frames, stride 4, 4 dense clips at offsets 0/16/32/48, each
/// exactly one quarter). Batch order per video is view-major:
/// `[sparse, dense_0, .., dense_{dense-1}]` for view 0, then the same for view 1, and
/// so on; all views show the same frames (the loader crops each clip on its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseDenseSpec {
    /// Frame stride of the sparse clip (>= 1).
    pub stride: usize,
    /// Dense clips (>= 1); `frames * stride` must be a multiple.
    pub dense: usize,
    /// Augmented views of every clip (>= 1).
    pub views: usize,
}

impl SparseDenseSpec {
    /// Clips per video: `views * (1 + dense)`.
    pub fn clips(&self) -> usize {
        self.views * (1 + self.dense)
    }

    /// Batch position (within its video) of clip `k` of view `view`: `k = 0` is the
    /// sparse clip, `k = 1 + i` dense clip `i`.
    pub fn position(&self, view: usize, k: usize) -> usize {
        view * (1 + self.dense) + k
    }
}

/// The clips of one video of `len` frames for temporal contrast (see
/// [`SparseDenseSpec`] for the layout and batch order). Draws one start: inside the
/// video when the whole footprint (the sparse span and the last dense clip) fits,
/// else anywhere with wrap-around. Sparse clips record `speed = stride`, dense clips
/// `speed = 1`.
pub fn sparse_dense_plan<R: Rng + ?Sized>(
    len: usize,
    frames: usize,
    spec: &SparseDenseSpec,
    rng: &mut R,
) -> Vec<PlannedClip> {
    let q = frames * spec.stride / spec.dense.max(1);
    let sparse_span = (frames - 1) * spec.stride + 1;
    let dense_end = (spec.dense.max(1) - 1) * q + frames;
    let start = random_start(len, sparse_span.max(dense_end), rng);
    let clip = |speed: usize, from: usize| PlannedClip {
        meta: ClipMeta::forward(speed),
        start: from % len.max(1),
        indices: clip_indices(len, frames, speed, from),
    };
    let mut one_view = vec![clip(spec.stride, start)];
    one_view.extend((0..spec.dense).map(|i| clip(1, start + i * q)));
    (0..spec.views).flat_map(|_| one_view.clone()).collect()
}

/// The loader's view of a temporal-contrast method: [`sparse_dense_plan`] for every
/// video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseDensePlanner {
    pub spec: SparseDenseSpec,
    pub frames: usize,
}

impl ClipPlanner for SparseDensePlanner {
    fn clips_per_video(&self) -> usize {
        self.spec.clips()
    }

    fn frames(&self) -> usize {
        self.frames
    }

    fn plan(&self, len: usize, rng: &mut dyn RngCore) -> Result<Vec<PlannedClip>> {
        let (sd, t) = (&self.spec, self.frames);
        if t == 0
            || sd.stride == 0
            || sd.dense == 0
            || sd.views == 0
            || !(t * sd.stride).is_multiple_of(sd.dense)
        {
            return Err(Error::Internal(format!(
                "inconsistent sparse-dense spec for clips of {t} frames: {sd:?}"
            )));
        }
        Ok(sparse_dense_plan(len, t, sd, rng))
    }
}

/// Number of time slices GL compares for a feature map with `t_out` time steps and
/// `dense` dense clips: `min(t_out, dense)`, and the larger must be a multiple of it
/// (paper: T' = 4 = dense, one slice per dense clip). When `t_out > dense`, adjacent
/// time steps are averaged; when `dense > t_out`, adjacent dense clips are averaged, so
/// slice `i` always covers the same frames as the dense group `i`.
pub fn gl_slices(t_out: usize, dense: usize) -> Result<usize> {
    let (lo, hi) = (t_out.min(dense), t_out.max(dense));
    if lo == 0 || !hi.is_multiple_of(lo) {
        return Err(Error::BadInput(format!(
            "global-local loss: the backbone keeps T' = {t_out} time steps, which cannot be \
             aligned with method.dense_clips = {dense} (one must be a multiple of the other; \
             change data.frames, backbone.temporal_dilation_last_stage or set method.w_gl = 0)"
        )));
    }
    Ok(lo)
}

/// Averages `[N, C, T]` over `groups` equal runs of consecutive time steps:
/// `[N, groups, C]`, entry `i` the mean of steps `i*T/groups .. (i+1)*T/groups`.
pub fn time_groups(x: &Tensor, groups: usize) -> Result<Tensor> {
    let (n, c, t) = x.dims3()?;
    if groups == 0 || !t.is_multiple_of(groups) {
        return Err(Error::Internal(format!(
            "time_groups: {t} steps into {groups} groups"
        )));
    }
    Ok(x.reshape((n, c, groups, t / groups))?
        .mean(3)?
        .transpose(1, 2)?
        .contiguous()?)
}

/// TCLR's projection head: `C -> hidden`, BN, ReLU, `-> out`, BN, L2 normalise.
/// Batch norm is [`BatchNorm3d`] on `[N, C, 1, 1, 1]`, i.e. BatchNorm1d.
pub struct ProjectionMlp {
    fc1: Linear,
    bn1: BatchNorm3d,
    fc2: Linear,
    bn2: BatchNorm3d,
}

impl ProjectionMlp {
    pub fn new(vs: &VarStore, input: usize, hidden: usize, out: usize) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(&vs.pp("fc1"), input, hidden)?,
            bn1: BatchNorm3d::new(&vs.pp("bn1"), hidden)?,
            fc2: Linear::new(&vs.pp("fc2"), hidden, out)?,
            bn2: BatchNorm3d::new(&vs.pp("bn2"), out)?,
        })
    }

    /// Unit embeddings `[N, out]` of features `[N, C]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let bn1d = |bn: &BatchNorm3d, x: &Tensor| -> Result<Tensor> {
            let (n, c) = x.dims2()?;
            Ok(bn
                .forward_t(&x.reshape((n, c, 1, 1, 1))?, train)?
                .reshape((n, c))?)
        };
        let h = bn1d(&self.bn1, &self.fc1.forward(x)?)?.relu()?;
        let z = bn1d(&self.bn2, &self.fc2.forward(&h)?)?;
        l2_normalize(&z)
    }
}

/// The three TCLR losses of one batch; `None` where the weight is 0 (not computed).
#[derive(Debug, Clone, Default)]
pub struct TclrLosses {
    pub ic: Option<Tensor>,
    pub ll: Option<Tensor>,
    pub gl: Option<Tensor>,
}

/// Unit embeddings of one batch of `B` videos.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// Sparse clips, `[B * views, D]`, rows ordered (video, view).
    pub sparse: Tensor,
    /// Dense clips, `[B * views * dense, D]`, rows ordered (video, view, clip).
    pub dense: Tensor,
    /// GL pairs (only when GL is on): sparse time slices and the dense embeddings they
    /// must match, both `[B * views, S, D]` (rows ordered (video, view)), slice `i` <->
    /// entry `i`. GL pairs every view of the slices with every view of the dense clips.
    pub gl: Option<(Tensor, Tensor)>,
}

/// One weighted loss term: `weight * value` goes into the total, `value` is logged
/// under `name`.
#[derive(Debug, Clone)]
pub struct LossTerm {
    pub name: &'static str,
    pub weight: f64,
    pub value: Tensor,
}

/// `sum weight * value` over `terms`, in order.
pub fn weighted_sum(terms: &[LossTerm]) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for t in terms {
        let term = (&t.value * t.weight)?;
        total = Some(match total {
            Some(a) => (a + term)?,
            None => term,
        });
    }
    total.ok_or_else(|| Error::Internal("temporal contrast without loss terms".into()))
}

/// The temporal-contrast family: the clip layout and the weighted loss terms over the
/// embeddings the adapter [`TemporalContrastMethod`] computes.
pub trait TemporalContrast: Send + Sync + 'static {
    /// Clip layout of one video.
    fn layout(&self) -> SparseDenseSpec;
    /// Whether the loss terms need the sparse clips' time slices ([`Embeddings::gl`]).
    fn needs_slices(&self) -> bool;
    /// How the clips are grouped into backbone passes; one joint pass unless overridden.
    fn bn_batches(&self) -> BnBatches {
        BnBatches::Joint
    }
    /// The loss terms of the embeddings of `videos` videos, in logging order (each a
    /// scalar tensor with autograd graph).
    fn terms(&self, e: &Embeddings, videos: usize) -> Result<Vec<LossTerm>>;
}

/// TCLR's losses and layout ([`TemporalContrastConfig`] without the projection keys).
#[derive(Debug, Clone, PartialEq)]
pub struct Tclr {
    cfg: TemporalContrastConfig,
}

impl Tclr {
    pub fn new(cfg: &TemporalContrastConfig) -> Self {
        Self { cfg: cfg.clone() }
    }

    pub fn cfg(&self) -> &TemporalContrastConfig {
        &self.cfg
    }

    /// IC, LL and GL of the embeddings of `videos` videos.
    pub fn losses(&self, e: &Embeddings, videos: usize) -> Result<TclrLosses> {
        let cfg = &self.cfg;
        let (n, v, tau) = (cfg.dense_clips, VIEWS, cfg.temperature);
        let dev = e.sparse.device();
        // Row -> video and row -> dense position, for rows ordered (video, view, clip).
        let dense_video: Vec<usize> = (0..videos * v * n).map(|r| r / (v * n)).collect();
        let dense_part: Vec<usize> = (0..videos * v * n).map(|r| r % n).collect();
        let mut out = TclrLosses::default();
        if cfg.w_ic > 0.0 {
            let ids: Vec<usize> = (0..videos * v).map(|r| r / v).collect();
            let ic = nt_xent_masked(&e.sparse, &PairMasks::instance(&ids, dev)?, tau)?;
            let dense = match cfg.ic_dense {
                IcDense::Off => None,
                IcDense::MultiPositive => {
                    let m = PairMasks::instance(&dense_video, dev)?;
                    Some(nt_xent_masked(&e.dense, &m, tau)?)
                }
                IcDense::Pairwise => Some(pairwise_dense(&e.dense, videos, v * n, tau)?),
            };
            out.ic = Some(match dense {
                None => ic,
                // A weight of 1 adds the term as it is (bit-identical to earlier versions).
                Some(d) if cfg.w_ic_dense == 1.0 => (ic + d)?,
                Some(d) => (ic + (d * cfg.w_ic_dense)?)?,
            });
        }
        if cfg.w_ll > 0.0 {
            let m = PairMasks::within_group(&dense_video, &dense_part, dev)?;
            let ll = nt_xent_masked(&e.dense, &m, tau)?;
            // Every video has the same number of anchors: the row mean is the video mean.
            out.ll = Some(match cfg.ll_reduction {
                LlReduction::Mean => ll,
                LlReduction::Sum => (ll * videos as f64)?,
            });
        }
        if cfg.w_gl > 0.0 {
            let (slices, locals) = e
                .gl
                .as_ref()
                .ok_or_else(|| Error::Internal("GL is on but no slices were embedded".into()))?;
            // Every view of the slices against every view of the dense clips, as the
            // public code does (the crops differ, so no pixel shortcut), averaged.
            let (_, s, d) = slices.dims3()?;
            let slices = slices.reshape((videos, v, s, d))?;
            let locals = locals.reshape((videos, v, s, d))?;
            let mut gl: Option<Tensor> = None;
            for a in 0..v {
                for b in 0..v {
                    let term = global_local(
                        &slices.narrow(1, a, 1)?.squeeze(1)?,
                        &locals.narrow(1, b, 1)?.squeeze(1)?,
                        tau,
                    )?;
                    gl = Some(match gl {
                        Some(g) => (g + term)?,
                        None => term,
                    });
                }
            }
            let gl = gl.ok_or_else(|| Error::Internal("GL without views".into()))?;
            out.gl = Some((gl / (v * v) as f64)?);
        }
        Ok(out)
    }
}

/// The public code's dense instance term over `dense` `[B * slots, D]` (rows ordered
/// (video, slot)): [`nt_xent_pair`] between every ordered pair of distinct slots,
/// summed and divided by 4 (`slots = 8`: 56 terms). NT-Xent is symmetric in its two
/// batches, so each unordered pair is computed once and counted twice.
pub fn pairwise_dense(dense: &Tensor, videos: usize, slots: usize, tau: f64) -> Result<Tensor> {
    let d = dense.dim(1)?;
    let per_slot = dense.reshape((videos, slots, d))?;
    let slot = |s: usize| -> Result<Tensor> { Ok(per_slot.narrow(1, s, 1)?.squeeze(1)?) };
    let mut sum: Option<Tensor> = None;
    for a in 0..slots {
        for b in a + 1..slots {
            let term = nt_xent_pair(&slot(a)?, &slot(b)?, tau)?;
            sum = Some(match sum {
                Some(s) => (s + term)?,
                None => term,
            });
        }
    }
    match sum {
        Some(s) => Ok((s * (2.0 / 4.0))?),
        // One slot has no pair: the term is 0 (kept in the graph).
        None => Ok(dense.sum_all()?.affine(0.0, 0.0)?),
    }
}

impl TemporalContrast for Tclr {
    fn layout(&self) -> SparseDenseSpec {
        SparseDenseSpec {
            stride: self.cfg.sparse_stride,
            dense: self.cfg.dense_clips,
            views: VIEWS,
        }
    }

    fn needs_slices(&self) -> bool {
        self.cfg.w_gl > 0.0
    }

    fn bn_batches(&self) -> BnBatches {
        self.cfg.bn_batches
    }

    fn terms(&self, e: &Embeddings, videos: usize) -> Result<Vec<LossTerm>> {
        let l = self.losses(e, videos)?;
        let c = &self.cfg;
        Ok([
            ("ic", c.w_ic, l.ic),
            ("ll", c.w_ll, l.ll),
            ("gl", c.w_gl, l.gl),
        ]
        .into_iter()
        .filter_map(|(name, weight, value)| {
            Some(LossTerm {
                name,
                weight,
                value: value?,
            })
        })
        .collect())
    }
}

/// Any [`TemporalContrast`] as a [`Pretext`], with a shared projection MLP
/// (`pretext.proj.*`).
pub struct TemporalContrastMethod<T: TemporalContrast> {
    method: T,
    planner: Arc<SparseDensePlanner>,
    backbone: Box<dyn Backbone>,
    proj: ProjectionMlp,
    head_vars: VarStore,
}

impl<T: TemporalContrast> TemporalContrastMethod<T> {
    /// `method` learned on `backbone` (clips of `frames` frames) through a projection
    /// `C -> proj_hidden -> proj_dim` on `head_vars`.
    pub fn new(
        method: T,
        frames: usize,
        proj_hidden: usize,
        proj_dim: usize,
        backbone: Box<dyn Backbone>,
        head_vars: VarStore,
    ) -> Result<Self> {
        let proj = ProjectionMlp::new(
            &head_vars.pp("proj"),
            backbone.out_channels(),
            proj_hidden,
            proj_dim,
        )?;
        let planner = Arc::new(SparseDensePlanner {
            spec: method.layout(),
            frames,
        });
        Ok(Self {
            method,
            planner,
            backbone,
            proj,
            head_vars,
        })
    }

    /// The family implementor.
    pub fn method(&self) -> &T {
        &self.method
    }

    /// Backbone feature maps of `clips` (`k` clips per video, in batch order): one pass
    /// over all of them, or with [`BnBatches::PerClipType`] one pass per clip slot (the
    /// `videos` clips of one type and view), put back in batch order.
    fn backbone_passes(
        &self,
        clips: &Tensor,
        videos: usize,
        k: usize,
        train: bool,
    ) -> Result<Tensor> {
        if self.method.bn_batches() == BnBatches::Joint {
            return self.backbone.forward_t(clips, train);
        }
        let dev = clips.device();
        let mut per_slot = Vec::with_capacity(k);
        for slot in 0..k {
            let rows: Vec<u32> = (0..videos).map(|b| (b * k + slot) as u32).collect();
            let idx = Tensor::from_vec(rows, videos, dev)?;
            per_slot.push(
                self.backbone
                    .forward_t(&clips.index_select(&idx, 0)?, train)?,
            );
        }
        // [B, K, C, T', H', W'] is batch order (row b * K + slot).
        let stacked = Tensor::stack(&per_slot, 1)?;
        let dims = stacked.dims().to_vec();
        let mut shape = vec![videos * k];
        shape.extend_from_slice(&dims[2..]);
        Ok(stacked.reshape(shape)?)
    }

    /// Embeddings of a batch of `videos` videos in the [`SparseDenseSpec`] order.
    pub fn embed(&self, clips: &Tensor, videos: usize, train: bool) -> Result<Embeddings> {
        let sd = self.method.layout();
        let (n, v, k) = (sd.dense, sd.views, sd.clips());
        if clips.dim(0)? != videos * k {
            return Err(Error::BadInput(format!(
                "temporal contrast expects {k} clips per video: {videos} videos, {} clips",
                clips.dim(0)?
            )));
        }
        let fmap = self.backbone_passes(clips, videos, k, train)?;
        // Pool space only: [B*K, C, T'].
        let (_, c, tp, _, _) = fmap.dims5()?;
        let st = fmap.mean(4)?.mean(3)?.reshape((videos, v, 1 + n, c, tp))?;
        let sparse_t = st.narrow(2, 0, 1)?.squeeze(2)?; // [B, V, C, T']
        let dense = st.narrow(2, 1, n)?.mean(D::Minus1)?; // [B, V, n, C]
        let mut rows = vec![
            sparse_t.mean(D::Minus1)?.reshape((videos * v, c))?,
            dense.reshape((videos * v * n, c))?,
        ];
        let s = if self.method.needs_slices() {
            let s = gl_slices(tp, n)?;
            let slices = time_groups(&sparse_t.reshape((videos * v, c, tp))?, s)?;
            rows.push(slices.reshape((videos * v * s, c))?);
            if s < n {
                // Several dense clips per slice: average their features.
                let groups = dense.reshape((videos, v, s, n / s, c))?.mean(3)?;
                rows.push(groups.reshape((videos * v * s, c))?);
            }
            Some(s)
        } else {
            None
        };
        // Data parallel: every rank's rows, in batch order (each block gathered on its
        // own), so the loss has the whole batch's negatives, as one process would.
        let group = crate::ops::collective::rank_group();
        let (rows, videos) = match &group {
            Some(g) => (
                rows.iter()
                    .map(|r| crate::ops::collective::all_gather_rows(r, g))
                    .collect::<Result<Vec<_>>>()?,
                videos * g.world(),
            ),
            None => (rows, videos),
        };
        // One projection call: the head's batch norm sees every row (of every rank,
        // so it keeps to these rows' own statistics).
        let z = {
            let _local = group
                .as_ref()
                .map(|_| crate::ops::collective::ParallelScope::local_batch_norm());
            self.proj.forward_t(&Tensor::cat(&rows, 0)?, train)?
        };
        let d = z.dim(1)?;
        let (ns, nd) = (videos * v, videos * v * n);
        let sparse = z.narrow(0, 0, ns)?;
        let dense_z = z.narrow(0, ns, nd)?;
        let gl = match s {
            Some(s) => {
                let m = videos * v * s;
                let slices = z.narrow(0, ns + nd, m)?.reshape((videos * v, s, d))?;
                let locals = if s < n {
                    z.narrow(0, ns + nd + m, m)?
                } else {
                    dense_z.clone()
                };
                Some((slices, locals.reshape((videos * v, s, d))?))
            }
            None => None,
        };
        Ok(Embeddings {
            sparse,
            dense: dense_z,
            gl,
        })
    }
}

impl<T: TemporalContrast> Pretext for TemporalContrastMethod<T> {
    fn planner(&self) -> Arc<dyn ClipPlanner> {
        self.planner.clone()
    }

    fn step(&mut self, batch: &Batch, train: bool) -> Result<StepOutput> {
        let e = self.embed(&batch.clips, batch.videos, train)?;
        // The embeddings hold every rank's videos under data parallelism.
        let world = crate::ops::collective::rank_group().map_or(1, |g| g.world());
        let terms = self.method.terms(&e, batch.videos * world)?;
        let loss = weighted_sum(&terms)?;
        let mut scalars = Vec::new();
        for t in &terms {
            let v = t
                .value
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            scalars.push((t.name, v));
        }
        Ok(StepOutput { loss, scalars })
    }

    fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }

    fn head_vars(&self) -> &VarStore {
        &self.head_vars
    }
}
