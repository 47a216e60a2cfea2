//! The speed-sort family: variable playback speed (METHODS.md section 2; no public
//! code, this is the reconstruction). Each video gives `n_clips` clips at distinct
//! signed speeds (speed s = frame stride s, backwards negative; by default 1x and -1x
//! may meet, as the authors' figure 1 shows; `distinct = "magnitude"` keeps the speed
//! magnitudes distinct instead), at random independent starts, in shuffled order
//! ([`speed_sort_plan`]). The family trait
//! [`SpeedSortPretext`] holds what varies: the speed set, the direction rule and the
//! label rule (one class per video from a pairwise head, or one per clip); the adapter
//! [`SpeedSortMethod`] plans the clips from them and runs the head and loss once for every
//! variant. The shipped variant [`VariableSpeed`]: with `label = "sort"` the network
//! names the permutation that sorts the clips by signed speed (backward = negative),
//! one of `n_clips!` classes; with `"per_clip"` it classifies every clip's own (speed,
//! direction). The label functions are pure and public so they can be tested by hand.

use std::sync::Arc;

use candle_core::Tensor;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use super::{Pretext, StepOutput};
use crate::backbone::Backbone;
use crate::data::clip::{Batch, BatchSlice, ClipMeta, ClipPlanner, PlannedClip};
use crate::data::sampler::{clip_indices, random_start};
use crate::error::{check, Invalid};
use crate::nn::{dropout_rows, Linear, VarStore};
use crate::seed::mix;
use crate::{Error, Result};

/// What speed sorting predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpeedLabel {
    /// One class per video: the permutation that sorts its shuffled clips by signed
    /// speed (`n_clips!` classes). Default.
    Sort,
    /// One class per clip: its own (speed, direction).
    PerClip,
}

/// Which playbacks the clips of one video must not share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpeedDraw {
    /// Distinct *signed* speeds drawn from `speeds x {forward, reverse}`, so one video
    /// can hold 1x and -1x, as the authors' figure 1 shows (default).
    Signed,
    /// Distinct speed magnitudes, then a direction per clip (earlier versions): a
    /// speed never meets its own reverse.
    Magnitude,
}

/// `[method] kind = "speed_sort"`: sort clips of one video by playback speed
/// ([`VariableSpeed`] in the [`SpeedSortMethod`] adapter; see METHODS.md section 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeedSortConfig {
    /// Present so the section can be read as one table; always "speed_sort".
    #[serde(skip_serializing)]
    pub kind: Option<String>,
    /// Clips per video, each at a distinct speed.
    pub n_clips: usize,
    /// Playback speeds (frame strides) to draw from; distinct, each >= 1.
    pub speeds: Vec<usize>,
    /// Allow backward playback (each clip reversed with probability 0.5).
    pub reverse: bool,
    /// What must be distinct among a video's clips ([`SpeedDraw`]).
    pub distinct: SpeedDraw,
    pub label: SpeedLabel,
    /// Width of the shared pair layer of the `"sort"` head.
    pub pair_hidden: usize,
    /// Dropout before the final classifier.
    pub dropout: f64,
    /// With `label = "sort"`: weight of an auxiliary per-clip (speed, direction)
    /// cross-entropy on the pooled clip features (`pretext.aux`), added to the sort
    /// loss; 0 (default) is the paper's sort loss alone.
    pub aux_per_clip: f64,
}

impl Default for SpeedSortConfig {
    fn default() -> Self {
        Self {
            kind: None,
            n_clips: 3,
            speeds: vec![1, 2, 4, 8],
            reverse: true,
            distinct: SpeedDraw::Signed,
            label: SpeedLabel::Sort,
            pair_hidden: 512,
            dropout: 0.5,
            aux_per_clip: 0.0,
        }
    }
}

impl SpeedSortConfig {
    /// Range checks; keys relative to the `[method]` table.
    pub fn validate(&self) -> std::result::Result<(), Invalid> {
        let m = self;
        for (i, s) in m.speeds.iter().enumerate() {
            check(*s >= 1, "speeds", || {
                format!("entry {i} must be at least 1, got {s}")
            })?;
            check(!m.speeds[..i].contains(s), "speeds", || {
                format!("speeds must be distinct; {s} appears twice")
            })?;
        }
        check(m.n_clips >= 2, "n_clips", || {
            format!("must be at least 2, got {}", m.n_clips)
        })?;
        let signed = m.distinct == SpeedDraw::Signed && m.reverse;
        let available = m.speeds.len() * if signed { 2 } else { 1 };
        check(m.n_clips <= available, "n_clips", || {
            format!(
                "{} clips need as many distinct {}; method.speeds gives {available}",
                m.n_clips,
                if signed { "signed speeds" } else { "speeds" },
            )
        })?;
        if m.label == SpeedLabel::Sort {
            check(m.n_clips <= 5, "n_clips", || {
                format!(
                    "at most 5 with label = \"sort\" (n_clips! classes), got {}",
                    m.n_clips
                )
            })?;
        }
        check(m.pair_hidden >= 1, "pair_hidden", || {
            "must be at least 1".into()
        })?;
        check((0.0..1.0).contains(&m.dropout), "dropout", || {
            format!("must be in [0, 1), got {}", m.dropout)
        })?;
        check(
            m.aux_per_clip.is_finite() && m.aux_per_clip >= 0.0,
            "aux_per_clip",
            || format!("must be >= 0, got {}", m.aux_per_clip),
        )?;
        check(
            m.aux_per_clip == 0.0 || m.label == SpeedLabel::Sort,
            "aux_per_clip",
            || "only with method.label = \"sort\" (per_clip is already per clip)".into(),
        )?;
        Ok(())
    }

    /// The shipped speed-sort method on `backbone` (clips of `frames` frames), heads on
    /// `head_vars`.
    pub fn init(
        &self,
        frames: usize,
        backbone: Box<dyn Backbone>,
        head_vars: VarStore,
    ) -> Result<SpeedSortMethod<VariableSpeed>> {
        let method = VariableSpeed {
            n_clips: self.n_clips,
            speeds: self.speeds.clone(),
            reverse: self.reverse,
            distinct: self.distinct,
            label: self.label,
        };
        let m = SpeedSortMethod::new(
            method,
            frames,
            self.pair_hidden,
            self.dropout,
            backbone,
            head_vars,
        )?;
        if self.aux_per_clip > 0.0 {
            m.with_aux_per_clip(self.aux_per_clip)
        } else {
            Ok(m)
        }
    }
}

/// A playback speed with its direction: a clip's stride and whether it runs backwards.
/// The same record the loader writes for every clip.
pub type PlaybackSpeed = ClipMeta;

/// `n!`.
pub fn factorial(n: usize) -> usize {
    (1..=n).product()
}

/// Index of a permutation of `0..n` among all `n!` (Lehmer code, lexicographic
/// order: the identity is 0, the reversal `n! - 1`). `order` must be a permutation.
pub fn permutation_index(order: &[usize]) -> u32 {
    let n = order.len();
    debug_assert!(
        {
            let mut s = order.to_vec();
            s.sort_unstable();
            s.iter().enumerate().all(|(i, &v)| i == v)
        },
        "not a permutation: {order:?}"
    );
    let mut idx = 0u64;
    for i in 0..n {
        let smaller = order[i + 1..].iter().filter(|&&v| v < order[i]).count();
        idx = idx * (n - i) as u64 + smaller as u64;
    }
    idx as u32
}

/// The permutation of `0..n` whose [`permutation_index`] is `idx` (`idx < n!`).
pub fn permutation_from_index(n: usize, idx: u32) -> Vec<usize> {
    let mut left: Vec<usize> = (0..n).collect();
    let mut rest = idx as usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let f = factorial(n - 1 - i);
        out.push(left.remove((rest / f).min(left.len() - 1)));
        rest %= f;
    }
    out
}

/// The order that sorts clips by signed speed ascending: `order[k]` is the position
/// (in `metas`) of the k-th slowest clip, backward clips first (fastest backward
/// first). Signed speeds are distinct within a video, so the order is unique.
pub fn sorting_order(metas: &[ClipMeta]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..metas.len()).collect();
    order.sort_by_key(|&i| metas[i].signed_speed());
    order
}

/// `label = "sort"` class of one video whose clips are `metas` (batch order): the
/// index of the permutation that sorts them by signed speed.
pub fn sort_label(metas: &[ClipMeta]) -> u32 {
    permutation_index(&sorting_order(metas))
}

/// Number of `label = "per_clip"` classes: each speed, times two directions when
/// backward play is allowed.
pub fn per_clip_classes(speeds: &[usize], reverse: bool) -> usize {
    speeds.len() * if reverse { 2 } else { 1 }
}

/// `label = "per_clip"` class of one clip: `2 * k + backward` with `k` the index of its
/// speed in `speeds` when `reverse`, else `k`.
pub fn per_clip_label(meta: &ClipMeta, speeds: &[usize], reverse: bool) -> Result<u32> {
    let k = speeds
        .iter()
        .position(|&s| s == meta.speed)
        .ok_or_else(|| {
            Error::BadInput(format!(
                "clip at speed {} is not one of the method's speeds {speeds:?}",
                meta.speed
            ))
        })?;
    match (reverse, meta.reverse) {
        (true, r) => Ok((2 * k + r as usize) as u32),
        (false, false) => Ok(k as u32),
        (false, true) => Err(Error::BadInput(
            "a backward clip but method.reverse = false".into(),
        )),
    }
}

/// What a speed-sort label is given to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeedTarget {
    /// One label per video, predicted by a shared pair layer over every unordered pair
    /// of its clips' features.
    PerVideo,
    /// One label per clip, predicted from that clip's features.
    PerClip,
}

/// The speed-sort family: which speeds clips play at, which play backwards, and how
/// a video's clips become classes. The adapter [`SpeedSortMethod`] draws each video's clips
/// from these ([`speed_sort_plan`]) and trains the head.
pub trait SpeedSortPretext: Send + Sync + 'static {
    /// Clips per video, each at a distinct speed (`2..=speeds().len()`).
    fn n_clips(&self) -> usize;
    /// The speed set (frame strides, distinct, each >= 1).
    fn speeds(&self) -> &[usize];
    /// Direction rule: whether one clip plays backwards, drawn from the video's plan
    /// `rng` (called once per clip, after the speeds are drawn).
    fn backward(&self, rng: &mut dyn RngCore) -> bool;
    /// The playbacks a video draws its `n_clips` distinct ones from, when clips must
    /// differ in signed speed; `None` (default) draws distinct speeds, then a direction
    /// per clip with [`SpeedSortPretext::backward`].
    fn signed_playbacks(&self) -> Option<Vec<PlaybackSpeed>> {
        None
    }
    /// Number of per-clip classes for an auxiliary per-clip loss beside a per-video
    /// label ([`SpeedSortPretext::clip_labels`]); `None` (default) offers none.
    fn clip_classes(&self) -> Option<usize> {
        None
    }
    /// Each clip's own class for the auxiliary loss.
    fn clip_labels(&self, _metas: &[ClipMeta]) -> Result<Vec<u32>> {
        Err(Error::Internal(
            "this speed-sort method has no per-clip classes".into(),
        ))
    }
    /// Whether labels are per video or per clip.
    fn target(&self) -> SpeedTarget;
    /// Number of classes.
    fn classes(&self) -> usize;
    /// Label rule: the classes of one video whose clips (batch order) are `metas`: one
    /// entry for [`SpeedTarget::PerVideo`], one per clip for [`SpeedTarget::PerClip`].
    fn labels(&self, metas: &[ClipMeta]) -> Result<Vec<u32>>;
}

/// The shipped speed-sort variant: `n_clips` of `speeds`, each backwards with
/// probability 0.5 when `reverse`, labelled by [`sort_label`] (`label = "sort"`) or
/// [`per_clip_label`] (`"per_clip"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableSpeed {
    pub n_clips: usize,
    pub speeds: Vec<usize>,
    pub reverse: bool,
    pub distinct: SpeedDraw,
    pub label: SpeedLabel,
}

impl VariableSpeed {
    /// Every playback a clip can have, in `per_clip` class order (each speed forward,
    /// then backward when allowed).
    pub fn playbacks(&self) -> Vec<PlaybackSpeed> {
        let dirs: &[bool] = if self.reverse {
            &[false, true]
        } else {
            &[false]
        };
        self.speeds
            .iter()
            .flat_map(|&speed| dirs.iter().map(move |&reverse| ClipMeta { speed, reverse }))
            .collect()
    }
}

impl SpeedSortPretext for VariableSpeed {
    fn n_clips(&self) -> usize {
        self.n_clips
    }

    fn speeds(&self) -> &[usize] {
        &self.speeds
    }

    fn backward(&self, rng: &mut dyn RngCore) -> bool {
        self.reverse && rng.random_bool(0.5)
    }

    fn signed_playbacks(&self) -> Option<Vec<PlaybackSpeed>> {
        (self.distinct == SpeedDraw::Signed).then(|| self.playbacks())
    }

    fn clip_classes(&self) -> Option<usize> {
        Some(per_clip_classes(&self.speeds, self.reverse))
    }

    fn clip_labels(&self, metas: &[ClipMeta]) -> Result<Vec<u32>> {
        metas
            .iter()
            .map(|m| per_clip_label(m, &self.speeds, self.reverse))
            .collect()
    }

    fn target(&self) -> SpeedTarget {
        match self.label {
            SpeedLabel::Sort => SpeedTarget::PerVideo,
            SpeedLabel::PerClip => SpeedTarget::PerClip,
        }
    }

    fn classes(&self) -> usize {
        match self.label {
            SpeedLabel::Sort => factorial(self.n_clips),
            SpeedLabel::PerClip => per_clip_classes(&self.speeds, self.reverse),
        }
    }

    fn labels(&self, metas: &[ClipMeta]) -> Result<Vec<u32>> {
        match self.label {
            SpeedLabel::Sort => Ok(vec![sort_label(metas)]),
            SpeedLabel::PerClip => metas
                .iter()
                .map(|m| per_clip_label(m, &self.speeds, self.reverse))
                .collect(),
        }
    }
}

/// The clips of one video of `len` frames for a speed-sort method, in the (shuffled)
/// order they go into the batch. Draws, in this order: `n_clips` distinct signed
/// playbacks ([`SpeedSortPretext::signed_playbacks`]) and per clip a start, or, when
/// the method gives none, `n_clips` distinct speeds and per clip a direction
/// ([`SpeedSortPretext::backward`]) and a start; then the shuffle. A start lies inside
/// the video when the span `(frames - 1) * speed + 1` fits, else anywhere with
/// wrap-around. With `reverse = false` both draws are the same.
pub fn speed_sort_plan<M: SpeedSortPretext + ?Sized>(
    len: usize,
    frames: usize,
    method: &M,
    rng: &mut dyn RngCore,
) -> Vec<PlannedClip> {
    let clip = |meta: ClipMeta, rng: &mut dyn RngCore| {
        let start = random_start(len, (frames - 1) * meta.speed + 1, rng);
        let mut indices = clip_indices(len, frames, meta.speed, start);
        if meta.reverse {
            indices.reverse();
        }
        PlannedClip {
            meta,
            start,
            indices,
        }
    };
    let mut clips: Vec<PlannedClip> = match method.signed_playbacks() {
        Some(mut all) => {
            let n = method.n_clips().min(all.len());
            let (chosen, _) = all.partial_shuffle(rng, n);
            chosen.iter().map(|&meta| clip(meta, rng)).collect()
        }
        None => {
            let mut speeds = method.speeds().to_vec();
            let n = method.n_clips().min(speeds.len());
            let (chosen, _) = speeds.partial_shuffle(rng, n);
            chosen
                .iter()
                .map(|&speed| {
                    let reverse = method.backward(rng);
                    clip(ClipMeta { speed, reverse }, rng)
                })
                .collect()
        }
    };
    clips.shuffle(rng);
    clips
}

/// The loader's view of a speed-sort method: [`speed_sort_plan`] for every video.
pub struct SpeedSortPlanner<T: SpeedSortPretext> {
    method: Arc<T>,
    frames: usize,
}

impl<T: SpeedSortPretext> SpeedSortPlanner<T> {
    /// `method`'s clips of `frames` frames.
    pub fn new(method: T, frames: usize) -> Self {
        Self {
            method: Arc::new(method),
            frames,
        }
    }
}

impl<T: SpeedSortPretext> ClipPlanner for SpeedSortPlanner<T> {
    fn clips_per_video(&self) -> usize {
        self.method.n_clips()
    }

    fn frames(&self) -> usize {
        self.frames
    }

    fn plan(&self, len: usize, rng: &mut dyn RngCore) -> Result<Vec<PlannedClip>> {
        let m = self.method.as_ref();
        let available = m.signed_playbacks().map_or(m.speeds().len(), |p| p.len());
        if m.n_clips() > available || m.speeds().contains(&0) || self.frames == 0 {
            return Err(Error::Internal(format!(
                "inconsistent speed-sort method: {} clips of {} frames, speeds {:?}",
                m.n_clips(),
                self.frames,
                m.speeds()
            )));
        }
        Ok(speed_sort_plan(len, self.frames, m, rng))
    }
}

/// The `"sort"` head: a shared pair layer over every unordered pair of clip features.
struct SortHead {
    pair: Linear,
    fc: Linear,
    /// Pairs `(i, j)`, `i < j`, in lexicographic order.
    pairs: Vec<(usize, usize)>,
    hidden: usize,
}

/// Any [`SpeedSortPretext`] as a [`Pretext`]: a pairwise head (`pretext.pair`,
/// `pretext.fc`) for per-video labels or a per-clip classifier (`pretext.fc`).
pub struct SpeedSortMethod<T: SpeedSortPretext> {
    method: Arc<T>,
    planner: Arc<SpeedSortPlanner<T>>,
    dropout: f64,
    backbone: Box<dyn Backbone>,
    sort_head: Option<SortHead>,
    fc: Option<Linear>,
    /// Auxiliary per-clip classifier and its weight (per-video targets only).
    aux: Option<(Linear, f64)>,
    head_vars: VarStore,
}

impl<T: SpeedSortPretext> SpeedSortMethod<T> {
    /// `method` learned on `backbone` (clips of `frames` frames); the pair layer of a
    /// per-video head is `pair_hidden` wide; `dropout` before the final classifier.
    pub fn new(
        method: T,
        frames: usize,
        pair_hidden: usize,
        dropout: f64,
        backbone: Box<dyn Backbone>,
        head_vars: VarStore,
    ) -> Result<Self> {
        let n = method.n_clips();
        let available = method
            .signed_playbacks()
            .map_or(method.speeds().len(), |p| p.len());
        if n < 2 || n > available {
            return Err(Error::BadInput(format!(
                "speed sort needs 2 <= n_clips <= {available} distinct playbacks, got {n}"
            )));
        }
        let c = backbone.out_channels();
        let classes = method.classes();
        let (sort_head, fc) = match method.target() {
            SpeedTarget::PerVideo => {
                let pairs: Vec<(usize, usize)> = (0..n)
                    .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                    .collect();
                let pair = Linear::new(&head_vars.pp("pair"), 2 * c, pair_hidden)?;
                let fc = Linear::new(&head_vars.pp("fc"), pairs.len() * pair_hidden, classes)?;
                let head = SortHead {
                    pair,
                    fc,
                    pairs,
                    hidden: pair_hidden,
                };
                (Some(head), None)
            }
            SpeedTarget::PerClip => (None, Some(Linear::new(&head_vars.pp("fc"), c, classes)?)),
        };
        let method = Arc::new(method);
        let planner = Arc::new(SpeedSortPlanner {
            method: method.clone(),
            frames,
        });
        Ok(Self {
            method,
            planner,
            dropout,
            backbone,
            sort_head,
            fc,
            aux: None,
            head_vars,
        })
    }

    /// Adds an auxiliary per-clip classifier (`pretext.aux`, the method's
    /// [`SpeedSortPretext::clip_classes`]) whose cross-entropy, times `weight`, joins the
    /// per-video loss.
    pub fn with_aux_per_clip(mut self, weight: f64) -> Result<Self> {
        let classes = match (self.method.target(), self.method.clip_classes()) {
            (SpeedTarget::PerVideo, Some(k)) => k,
            _ => {
                return Err(Error::BadInput(
                    "an auxiliary per-clip loss needs per-video labels and per-clip classes".into(),
                ))
            }
        };
        let c = self.backbone.out_channels();
        self.aux = Some((Linear::new(&self.head_vars.pp("aux"), c, classes)?, weight));
        Ok(self)
    }

    /// The family implementor.
    pub fn method(&self) -> &T {
        &self.method
    }

    /// Number of classes the head predicts.
    pub fn classes(&self) -> usize {
        self.method.classes()
    }

    /// Targets of a batch from its clip metadata (video-major): one per video
    /// ([`SpeedTarget::PerVideo`]) or one per clip ([`SpeedTarget::PerClip`]).
    pub fn targets(&self, metas: &[ClipMeta]) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(metas.len());
        for video in metas.chunks(self.method.n_clips()) {
            out.extend(self.method.labels(video)?);
        }
        Ok(out)
    }

    /// Logits of pooled clip features `[videos * n_clips, C]` (video-major).
    pub fn logits(&self, feats: &Tensor, videos: usize, train: bool, seed: u64) -> Result<Tensor> {
        self.logits_of(feats, videos, train, seed, BatchSlice::whole(videos))
    }

    /// [`Self::logits`] for the slice `slice` of a step's batch: dropout drawn for the
    /// whole batch, these rows kept.
    fn logits_of(
        &self,
        feats: &Tensor,
        videos: usize,
        train: bool,
        seed: u64,
        slice: BatchSlice,
    ) -> Result<Tensor> {
        let p = self.dropout;
        let drop = |x: &Tensor| -> Result<Tensor> {
            let per_video = x.dim(0)? / videos.max(1);
            let rows: Vec<usize> = slice.rows(videos, per_video).collect();
            dropout_rows(x, p, train, seed, &rows, slice.total * per_video)
        };
        if let Some(h) = &self.sort_head {
            let (_, c) = feats.dims2()?;
            let f = feats.reshape((videos, self.method.n_clips(), c))?;
            let pairs = h
                .pairs
                .iter()
                .map(|&(i, j)| Ok(Tensor::cat(&[f.get_on_dim(1, i)?, f.get_on_dim(1, j)?], 1)?))
                .collect::<Result<Vec<_>>>()?;
            // [B, P, 2C] -> one shared pair layer -> [B, P * hidden]
            let x = Tensor::stack(&pairs, 1)?.reshape((videos * h.pairs.len(), 2 * c))?;
            let x = h.pair.forward(&x)?.relu()?;
            let x = x.reshape((videos, h.pairs.len() * h.hidden))?;
            h.fc.forward(&drop(&x)?)
        } else if let Some(fc) = &self.fc {
            fc.forward(&drop(feats)?)
        } else {
            Err(Error::Internal("speed sort without a head".into()))
        }
    }
}

impl<T: SpeedSortPretext> Pretext for SpeedSortMethod<T> {
    fn planner(&self) -> Arc<dyn ClipPlanner> {
        self.planner.clone()
    }

    fn step(&mut self, batch: &Batch, train: bool) -> Result<StepOutput> {
        let clips = batch.clips.dim(0)?;
        let n = self.method.n_clips();
        if clips != batch.videos * n || batch.clip_meta.len() != clips {
            return Err(Error::BadInput(format!(
                "speed sort expects {n} clips per video with metadata: {} videos, {clips} clips, \
                 {} clip records",
                batch.videos,
                batch.clip_meta.len()
            )));
        }
        let targets = self.targets(&batch.clip_meta)?;
        let labels = Tensor::from_vec(targets.clone(), targets.len(), batch.clips.device())?;
        let f = self.backbone.pooled(&batch.clips, train)?;
        let logits = self.logits_of(
            &f,
            batch.videos,
            train,
            mix(batch.seed ^ 0x5bd5),
            batch.slice,
        )?;
        let mut out = StepOutput::classification(&logits, &labels)?;
        if let Some((fc, w)) = &self.aux {
            let t = self.method.clip_labels(&batch.clip_meta)?;
            let t = Tensor::from_vec(t.clone(), t.len(), batch.clips.device())?;
            let aux = StepOutput::classification(&fc.forward(&f)?, &t)?;
            out.loss = (out.loss + (aux.loss * *w)?)?;
            out.scalars.extend(
                aux.scalars
                    .into_iter()
                    .map(|(k, v)| (if k == "acc" { "aux_acc" } else { k }, v)),
            );
        }
        Ok(out)
    }

    fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }

    fn head_vars(&self) -> &VarStore {
        &self.head_vars
    }
}
