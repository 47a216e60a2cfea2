//! The method boundary. The trainer runs one object-safe trait, [`Pretext`]; each
//! method family (geometric, speed sort, temporal contrast, temporal discriminative)
//! is a trait of its own with its extension points, implemented by a shipped struct
//! and adapted to `Pretext`. A new variant plugs in by implementing a family trait
//! and adding one arm to [`crate::registry`].

pub mod geometric;
pub mod heads;
pub mod speed_sort;
pub mod temporal_contrast;
pub mod temporal_discriminative;

use candle_core::Tensor;

use crate::backbone::Backbone;
use crate::nn::VarStore;
use crate::Result;

pub use geometric::{GeometricPretext, GeometricTransform, RotationPrediction};
pub use speed_sort::{SpeedSort, SpeedSortPretext};
pub use temporal_contrast::{Tclr, TemporalContrast};
pub use temporal_discriminative::{TemporalDiscriminative, Vtdl};

/// What clips one training sample (one video) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipSpec {
    /// Clips drawn from each video (all of `frames` frames), in the order the
    /// sampling puts them into the batch.
    pub clips_per_video: usize,
    /// Frames per clip.
    pub frames: usize,
    /// How the clips of one video are placed in time and relate to each other.
    pub sampling: Sampling,
}

impl ClipSpec {
    /// `clips` independent clips with a frame stride drawn from `stride.0..=stride.1`.
    pub fn strided(clips: usize, frames: usize, stride: (usize, usize)) -> Self {
        Self {
            clips_per_video: clips,
            frames,
            sampling: Sampling::Strided { stride },
        }
    }
}

/// Clip placement families. Each variant is planned by
/// [`crate::data::sampler::plan_clips`]; a method with new multi-clip relations
/// adds a variant and an arm there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sampling {
    /// Independent clips, each with its own start and a frame stride drawn uniformly
    /// from `stride.0..=stride.1`.
    Strided { stride: (usize, usize) },
    /// Speed sorting: distinct playback speeds per clip (see [`SpeedSpec`]);
    /// `clips_per_video` must equal `n_clips`.
    SpeedSort(SpeedSpec),
    /// Temporal triplet (VTDL): `clips_per_video` must be 3, in batch order anchor,
    /// positive, negative. Anchor and positive share one start; the negative starts at
    /// a circular distance of at least `min_gap` frames from it. All three at frame
    /// `stride`; see [`crate::data::sampler::triplet_starts`].
    TemporalTriplet { stride: usize, min_gap: usize },
    /// Temporal contrast (TCLR): one sparse clip and `dense` consecutive-frame clips
    /// aligned with its parts, each repeated for `views` augmented views (see
    /// [`SparseDenseSpec`]); `clips_per_video` must equal `views * (1 + dense)`.
    SparseDense(SparseDenseSpec),
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

/// How the clips of one video are drawn for speed sorting: `n_clips` distinct speeds
/// out of `speeds` (speed s = frame stride s), each clip played backwards with
/// probability 0.5 when `reverse`, random independent starts, random clip order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeedSpec {
    /// Playback speeds to choose from (distinct, each >= 1).
    pub speeds: Vec<usize>,
    /// Clips per video (at most `speeds.len()`).
    pub n_clips: usize,
    /// Allow backward playback (frames in descending order).
    pub reverse: bool,
}

/// How one clip of a batch was sampled: its frame stride (playback speed) and whether
/// its frames run backwards. Independent (strided) clips record their stride and
/// `reverse = false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClipMeta {
    pub speed: usize,
    pub reverse: bool,
}

impl ClipMeta {
    /// The speed with the direction as its sign (backward play is negative).
    pub fn signed_speed(&self) -> i64 {
        if self.reverse {
            -(self.speed as i64)
        } else {
            self.speed as i64
        }
    }
}

/// One batch as a method sees it.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Clips `[B * clips_per_video, 3, T, H, W]`, video-major.
    pub clips: Tensor,
    /// Videos in the batch (`B`).
    pub videos: usize,
    /// How each clip was sampled, in batch order (`B * clips_per_video` entries).
    pub clip_meta: Vec<ClipMeta>,
    /// Seed for any randomness the method draws in this step (rotations, dropout):
    /// derived from the run seed and the step, so a resumed run draws the same.
    pub seed: u64,
}

/// Loss for one batch plus named scalars to log.
#[derive(Debug, Clone)]
pub struct StepOutput {
    pub loss: Tensor,
    pub scalars: Vec<(&'static str, f64)>,
}

impl StepOutput {
    /// Cross-entropy of `logits` against `labels`, logging accuracy as `acc`: the
    /// output of every classification pretext.
    pub fn classification(logits: &Tensor, labels: &Tensor) -> Result<Self> {
        let loss = crate::loss::cross_entropy(logits, labels)?;
        let acc = crate::loss::accuracy(&logits.detach(), labels)?;
        Ok(Self {
            loss,
            scalars: vec![("acc", acc)],
        })
    }
}

/// What the trainer runs.
pub trait Pretext: Send {
    /// What clips one training sample needs.
    fn clip_spec(&self) -> ClipSpec;
    /// Loss for one batch (with autograd graph when `train`), plus scalars to log.
    fn step(&mut self, batch: &Batch, train: bool) -> Result<StepOutput>;
    /// After the optimizer step: EMA encoders, memory-bank updates.
    fn after_step(&mut self) -> Result<()> {
        Ok(())
    }
    /// The backbone being learned (what is exported and evaluated).
    fn backbone(&self) -> &dyn Backbone;
    /// Parameters owned by the method itself (heads, projectors); saved under `pretext.`.
    fn head_vars(&self) -> &VarStore;
    /// Extra state that must survive a resume (queues, EMA weights).
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![])
    }
    /// Restores what [`Pretext::state`] returned.
    fn load_state(&mut self, _state: &std::collections::BTreeMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}
