//! Spatial augmentation and normalisation of clips. One draw per clip is applied
//! to all of its frames (temporally consistent); different clips get independent
//! draws. Output layout is `[3, T, H, W]`, normalised with the Kinetics mean/std
//! that torchvision's video models use.

use crate::data::Video;

/// torchvision video models' normalisation (Kinetics-400 statistics).
pub const MEAN: [f32; 3] = [0.432_16, 0.394_666, 0.376_45];
pub const STD: [f32; 3] = [0.228_03, 0.221_45, 0.216_989];

/// Where a square crop of `size` sits in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    pub y: usize,
    pub x: usize,
    pub size: usize,
    pub hflip: bool,
}

impl Crop {
    /// The centred crop (evaluation).
    pub fn centre(video: &Video, size: usize) -> Self {
        Self {
            y: (video.height - size) / 2,
            x: (video.width - size) / 2,
            size,
            hflip: false,
        }
    }

    /// A random crop (training); `u`, `v` in [0, 1).
    pub fn random(video: &Video, size: usize, u: f64, v: f64, hflip: bool) -> Self {
        let y = ((video.height - size + 1) as f64 * u) as usize;
        let x = ((video.width - size + 1) as f64 * v) as usize;
        Self {
            y: y.min(video.height - size),
            x: x.min(video.width - size),
            size,
            hflip,
        }
    }
}

/// Writes the clip made of frames `indices` of `video`, cropped and normalised,
/// into `out` as `[3, T, size, size]` f32.
pub fn write_clip(video: &Video, indices: &[usize], crop: Crop, out: &mut [f32]) {
    let (s, t_n) = (crop.size, indices.len());
    debug_assert_eq!(out.len(), 3 * t_n * s * s);
    for (t, &fi) in indices.iter().enumerate() {
        for yy in 0..s {
            let row = video.offset(fi, crop.y + yy, crop.x);
            for xx in 0..s {
                let sx = if crop.hflip { s - 1 - xx } else { xx };
                let p = row + sx * 3;
                for c in 0..3 {
                    let v = video.data[p + c] as f32 / 255.0;
                    out[((c * t_n + t) * s + yy) * s + xx] = (v - MEAN[c]) / STD[c];
                }
            }
        }
    }
}
