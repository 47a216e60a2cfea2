//! Clip sampling: which frame indices make a clip. Clips are placed inside the video
//! when they fit; indices wrap around only for videos shorter than the clip, so short
//! videos still give full-length clips. Speed sorting draws all clips of a video
//! together ([`speed_sort_plan`]): their speeds must differ. A temporal triplet
//! ([`triplet_starts`]) puts a negative clip at least `min_gap` frames from the anchor.

use rand::seq::SliceRandom;
use rand::Rng;

use crate::pretext::{ClipMeta, ClipSpec, Sampling, SparseDenseSpec, SpeedSpec};
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
    let footprint = sparse_span.max(dense_end);
    let start = if footprint <= len {
        rng.random_range(0..=len - footprint)
    } else {
        rng.random_range(0..len.max(1))
    };
    let clip = |speed: usize, from: usize| PlannedClip {
        meta: ClipMeta {
            speed,
            reverse: false,
        },
        start: from % len.max(1),
        indices: clip_indices(len, frames, speed, from),
    };
    let mut one_view = vec![clip(spec.stride, start)];
    one_view.extend((0..spec.dense).map(|i| clip(1, start + i * q)));
    (0..spec.views).flat_map(|_| one_view.clone()).collect()
}

/// Distance between frames `a` and `b` of a video of `len` frames read as a loop.
pub fn circular_distance(a: usize, b: usize, len: usize) -> usize {
    let len = len.max(1);
    let d = (a % len).abs_diff(b % len);
    d.min(len - d)
}

/// Start frames `(anchor, negative)` of a temporal triplet (the positive shares the
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
        Sampling::SparseDense(sd) => {
            if sd.clips() != spec.clips_per_video
                || sd.stride == 0
                || sd.dense == 0
                || sd.views == 0
                || !(t * sd.stride).is_multiple_of(sd.dense)
            {
                return Err(Error::Internal(format!(
                    "inconsistent sparse-dense spec: {} clips per video of {t} frames, {sd:?}",
                    spec.clips_per_video
                )));
            }
            sparse_dense_plan(len, t, sd, rng)
        }
        &Sampling::TemporalTriplet { stride, min_gap } => {
            if spec.clips_per_video != 3 || stride == 0 {
                return Err(Error::Internal(format!(
                    "inconsistent temporal-triplet spec: {} clips per video, stride {stride}",
                    spec.clips_per_video
                )));
            }
            let (anchor, negative) = triplet_starts(len, t, stride, min_gap, rng)?;
            let meta = ClipMeta {
                speed: stride,
                reverse: false,
            };
            // Batch order per video: anchor, positive, negative.
            [anchor, anchor, negative]
                .into_iter()
                .map(|start| PlannedClip {
                    meta,
                    start,
                    indices: clip_indices(len, t, stride, start),
                })
                .collect()
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
