//! Clip sampling helpers any method can plan with: which frame indices make a clip,
//! where a random clip starts, how far apart two starts are, and the plain strided
//! planner ([`StridedPlanner`]). Clips are placed inside the video when they fit;
//! indices wrap around only for videos shorter than the clip, so short videos still
//! give full-length clips. Family-specific plans (speed sorting, sparse-dense clips,
//! temporal triplets) live with their families under `pretext/`.

use rand::{Rng, RngCore};

use crate::data::clip::{ClipMeta, ClipPlanner, PlannedClip};
use crate::{Error, Result};

/// Frame indices of a clip of `frames` frames at `stride` starting at `start`,
/// wrapping around a video of `len` frames.
pub fn clip_indices(len: usize, frames: usize, stride: usize, start: usize) -> Vec<usize> {
    (0..frames)
        .map(|i| (start + i * stride) % len.max(1))
        .collect()
}

/// As [`clip_indices`], but clamped at the end instead of wrapping: frames past the
/// last one repeat the last frame (no jump cut back to the start).
pub fn clip_indices_clamped(len: usize, frames: usize, stride: usize, start: usize) -> Vec<usize> {
    let last = len.saturating_sub(1);
    (0..frames)
        .map(|i| (start + i * stride).min(last))
        .collect()
}

/// Start frames of `n` clips spread uniformly over a video (evaluation clips): the
/// clip span `(frames - 1) * stride + 1` is fitted inside the video when it can be.
pub fn uniform_starts(len: usize, frames: usize, stride: usize, n: usize) -> Vec<usize> {
    let span = (frames - 1) * stride + 1;
    let room = len.saturating_sub(span);
    if n <= 1 {
        return vec![room / 2];
    }
    (0..n).map(|i| (i * room) / (n - 1)).collect()
}

/// A random start for something `span` frames long in a video of `len` frames: inside
/// the video when it fits, else anywhere (the caller's indices wrap around). A wrap is
/// a jump cut, which would teach motion models the wrong thing, so only clips longer
/// than the video wrap. One draw from `rng`.
pub fn random_start<R: Rng + ?Sized>(len: usize, span: usize, rng: &mut R) -> usize {
    if span <= len {
        rng.random_range(0..=len - span)
    } else {
        rng.random_range(0..len.max(1))
    }
}

/// Distance between frames `a` and `b` of a video of `len` frames read as a loop.
pub fn circular_distance(a: usize, b: usize, len: usize) -> usize {
    let len = len.max(1);
    let d = (a % len).abs_diff(b % len);
    d.min(len - d)
}

/// Independent clips, each with its own start and a frame stride drawn uniformly from
/// `stride.0..=stride.1` (per clip: the stride, then the start). Clips record
/// `speed = stride`, forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StridedPlanner {
    clips: usize,
    frames: usize,
    stride: (usize, usize),
}

impl StridedPlanner {
    /// `clips` clips of `frames` frames per video (planning errors unless
    /// `1 <= stride.0 <= stride.1` and `frames >= 1`).
    pub fn new(clips: usize, frames: usize, stride: (usize, usize)) -> Self {
        Self {
            clips,
            frames,
            stride,
        }
    }
}

impl ClipPlanner for StridedPlanner {
    fn clips_per_video(&self) -> usize {
        self.clips
    }

    fn frames(&self) -> usize {
        self.frames
    }

    fn plan(&self, len: usize, rng: &mut dyn RngCore) -> Result<Vec<PlannedClip>> {
        let t = self.frames;
        if t == 0 || self.stride.0 == 0 || self.stride.0 > self.stride.1 {
            return Err(Error::Internal(format!(
                "inconsistent strided planner: {self:?}"
            )));
        }
        Ok((0..self.clips)
            .map(|_| {
                let stride = rng.random_range(self.stride.0..=self.stride.1);
                let start = random_start(len, (t - 1) * stride + 1, rng);
                PlannedClip {
                    meta: ClipMeta::forward(stride),
                    start,
                    indices: clip_indices(len, t, stride, start),
                }
            })
            .collect())
    }
}
