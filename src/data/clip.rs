//! The loader's vocabulary, shared by the loader and every method: how one clip was
//! sampled ([`ClipMeta`]), which frames it shows ([`PlannedClip`]), the batch a method
//! sees ([`Batch`]), and the one hook through which a method decides its clips
//! ([`ClipPlanner`]). It lives in `data` so methods depend on data, never the reverse.

use candle_core::Tensor;

use crate::Result;

/// How one clip of a batch was sampled: its frame stride (playback speed) and whether
/// its frames run backwards. Independent (strided) clips record their stride and
/// `reverse = false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClipMeta {
    pub speed: usize,
    pub reverse: bool,
}

impl ClipMeta {
    /// A forward clip at frame stride `speed`.
    pub fn forward(speed: usize) -> Self {
        Self {
            speed,
            reverse: false,
        }
    }

    /// The speed with the direction as its sign (backward play is negative).
    pub fn signed_speed(&self) -> i64 {
        if self.reverse {
            -(self.speed as i64)
        } else {
            self.speed as i64
        }
    }
}

/// One planned clip: how it plays and which frames it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedClip {
    pub meta: ClipMeta,
    /// Start frame of the forward clip.
    pub start: usize,
    /// Frame indices in playback order (descending in time when `meta.reverse`).
    pub indices: Vec<usize>,
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
    /// Where these videos sit in the step's whole batch: a data-parallel rank holds
    /// a slice of it, and draws from `seed` as for the whole batch, keeping its rows.
    pub slice: BatchSlice,
}

/// The videos `first..first + videos` of a step's whole batch of `total` videos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSlice {
    pub first: usize,
    pub total: usize,
}

impl BatchSlice {
    /// A batch that is the whole step.
    pub fn whole(videos: usize) -> Self {
        Self {
            first: 0,
            total: videos,
        }
    }

    /// The whole batch's rows this slice of `videos` videos holds, for a tensor with
    /// `per_video` rows per video (video-major): `first * per_video ..`.
    pub fn rows(&self, videos: usize, per_video: usize) -> std::ops::Range<usize> {
        self.first * per_video..(self.first + videos) * per_video
    }
}

/// What clips one training sample (one video) needs: the loader calls this for every
/// video of every batch, from worker threads, with an rng seeded from (run seed, step,
/// position), so a plan must draw only from `rng` to stay reproducible.
pub trait ClipPlanner: Send + Sync {
    /// Clips drawn from each video, in the order [`ClipPlanner::plan`] returns them.
    fn clips_per_video(&self) -> usize;
    /// Frames per clip.
    fn frames(&self) -> usize;
    /// The clips of one video of `len` decoded frames, in batch order
    /// (`clips_per_video` of them, `frames` indices each).
    fn plan(&self, len: usize, rng: &mut dyn rand::RngCore) -> Result<Vec<PlannedClip>>;
}

/// The frames a set of clips shows: sorted, each once.
pub fn frames_needed(clips: &[PlannedClip]) -> Vec<usize> {
    let mut f: Vec<usize> = clips
        .iter()
        .flat_map(|c| c.indices.iter().copied())
        .collect();
    f.sort_unstable();
    f.dedup();
    f
}

/// Rewrites each clip's frame indices as positions in `frames` (from
/// [`frames_needed`] of the same clips): for a video holding only those frames.
pub fn index_into(clips: &mut [PlannedClip], frames: &[usize]) {
    for c in clips {
        for i in &mut c.indices {
            *i = frames.binary_search(i).expect("frame of a planned clip");
        }
    }
}

/// The planning hook a dataset calls with a video's frame count (possibly twice, when
/// the count it first planned on turns out wrong).
pub type PlanFn<'a> = dyn FnMut(usize) -> Result<Vec<PlannedClip>> + 'a;
