//! Clip sampling: which frame indices make a clip. Clips are placed inside the video
//! when they fit; indices wrap around only for videos shorter than the clip, so short
//! videos still give full-length clips. Speed sorting draws all clips of a video
//! together ([`speed_sort_plan`]): their speeds must differ.

use rand::seq::SliceRandom;
use rand::Rng;

use crate::pretext::{ClipMeta, ClipSpec, Sampling, SpeedSpec};
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

/// One clip of a speed-sort sample: how it plays and which frames it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedClip {
    pub meta: ClipMeta,
    /// Start frame of the forward clip.
    pub start: usize,
    /// Frame indices in playback order (descending in time when `meta.reverse`).
    pub indices: Vec<usize>,
}

/// The clips of one video of `len` frames for a speed-sort spec, in the (shuffled)
/// order they go into the batch. Draws, in this order: `n_clips` distinct speeds, then
/// per clip a direction (backward with probability 0.5 when `spec.reverse`) and a
/// start (inside the video when the span `(frames - 1) * speed + 1` fits, else
/// anywhere with wrap-around), then the shuffle.
pub fn speed_sort_plan<R: Rng + ?Sized>(
    len: usize,
    frames: usize,
    spec: &SpeedSpec,
    rng: &mut R,
) -> Vec<PlannedClip> {
    let mut speeds = spec.speeds.clone();
    let n = spec.n_clips.min(speeds.len());
    let (chosen, _) = speeds.partial_shuffle(rng, n);
    let mut clips: Vec<PlannedClip> = chosen
        .iter()
        .map(|&speed| {
            let reverse = spec.reverse && rng.random_bool(0.5);
            let span = (frames - 1) * speed + 1;
            let start = if span <= len {
                rng.random_range(0..=len - span)
            } else {
                rng.random_range(0..len.max(1))
            };
            let mut indices = clip_indices(len, frames, speed, start);
            if reverse {
                indices.reverse();
            }
            PlannedClip {
                meta: ClipMeta { speed, reverse },
                start,
                indices,
            }
        })
        .collect();
    clips.shuffle(rng);
    clips
}

/// The clips of one video of `len` frames for any [`ClipSpec`], in batch order:
/// the single entry point the loader uses, dispatching on [`Sampling`].
pub fn plan_clips<R: Rng + ?Sized>(
    spec: &ClipSpec,
    len: usize,
    rng: &mut R,
) -> Result<Vec<PlannedClip>> {
    let t = spec.frames;
    let clips = match &spec.sampling {
        Sampling::Strided { stride } => (0..spec.clips_per_video)
            .map(|_| {
                let stride = rng.random_range(stride.0..=stride.1);
                // A clip lies inside the video when it fits; only longer clips wrap
                // around (a wrap is a jump cut, which would teach motion models the
                // wrong thing).
                let span = (t - 1) * stride + 1;
                let start = if span <= len {
                    rng.random_range(0..=len - span)
                } else {
                    rng.random_range(0..len.max(1))
                };
                PlannedClip {
                    meta: ClipMeta {
                        speed: stride,
                        reverse: false,
                    },
                    start,
                    indices: clip_indices(len, t, stride, start),
                }
            })
            .collect(),
        Sampling::SpeedSort(sp) => {
            if sp.n_clips != spec.clips_per_video
                || sp.n_clips > sp.speeds.len()
                || sp.speeds.contains(&0)
            {
                return Err(Error::Internal(format!(
                    "inconsistent speed-sort spec: {} clips per video, {sp:?}",
                    spec.clips_per_video
                )));
            }
            speed_sort_plan(len, t, sp, rng)
        }
    };
    if clips.len() != spec.clips_per_video {
        return Err(Error::Internal(format!(
            "sampling {:?} planned {} clips, spec says {}",
            spec.sampling,
            clips.len(),
            spec.clips_per_video
        )));
    }
    Ok(clips)
}
