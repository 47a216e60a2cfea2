//! Clip sampling: which frame indices make a clip. Clips are placed inside the video
//! when they fit; indices wrap around only for videos shorter than the clip, so short
//! videos still give full-length clips.

/// Frame indices of a clip of `frames` frames at `stride` starting at `start`,
/// wrapping around a video of `len` frames.
pub fn clip_indices(len: usize, frames: usize, stride: usize, start: usize) -> Vec<usize> {
    (0..frames)
        .map(|i| (start + i * stride) % len.max(1))
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
