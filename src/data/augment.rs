//! Spatial and colour augmentation and normalisation of clips. A [`ClipAug`] is
//! drawn once per clip from `[data.augment]` and the clip's rng and applied to all of
//! its frames (temporally consistent); different clips and views draw from the rng
//! in turn, so they are independent. Output layout is `[3, T, S, S]` f32.
//!
//! Order of operations: crop window / scale / rotation / flip are fused into one
//! resampling of the source frame ([`resample`]); then colour jitter and grayscale
//! per pixel ([`color`]); then normalisation; then channel drop and erasing, which
//! write 0 (the dataset mean) so they are independent of the normalisation.

pub mod cfg;
pub mod color;
pub mod resample;

use rand::Rng;

pub use cfg::{AugmentConfig, CropMode};
use color::{gray, Jitter};
pub use resample::Window;

use crate::data::Video;

/// torchvision video models' normalisation (Kinetics-400 statistics).
pub const MEAN: [f32; 3] = [0.432_16, 0.394_666, 0.376_45];
pub const STD: [f32; 3] = [0.228_03, 0.221_45, 0.216_989];

/// Per-channel normalisation `(x - mean) / std` of values in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    /// Kinetics-400 statistics (torchvision's video models; the default).
    pub const KINETICS: Normalize = Normalize {
        mean: MEAN,
        std: STD,
    };

    /// The `mean`/`std` keys of `[data.augment]`.
    pub fn from_cfg(cfg: &AugmentConfig) -> Self {
        Self {
            mean: cfg.mean.map(|m| m as f32),
            std: cfg.std.map(|s| s as f32),
        }
    }
}

/// Everything drawn for one clip; applied identically to each of its frames.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipAug {
    /// Source rectangle resampled to the output size.
    pub window: Window,
    pub hflip: bool,
    /// Rotation in radians, counter-clockwise on screen, about the window centre.
    pub angle: f64,
    pub jitter: Option<Jitter>,
    pub grayscale: bool,
    /// Channel set to 0 after normalisation.
    pub drop_channel: Option<usize>,
    /// Output rectangle `[y, x, h, w]` set to 0 after normalisation.
    pub erase: Option<[usize; 4]>,
}

fn lerp(r: [f64; 2], u: f64) -> f64 {
    r[0] + (r[1] - r[0]) * u
}

impl ClipAug {
    /// A plain crop of `window`, nothing else.
    pub fn crop(window: Window) -> Self {
        Self {
            window,
            hflip: false,
            angle: 0.0,
            jitter: None,
            grayscale: false,
            drop_channel: None,
            erase: None,
        }
    }

    /// The centred `size` crop of an `h` x `w` frame (evaluation).
    pub fn centre(h: usize, w: usize, size: usize) -> Self {
        Self::crop(Window {
            y: (h.saturating_sub(size) / 2) as f64,
            x: (w.saturating_sub(size) / 2) as f64,
            h: size as f64,
            w: size as f64,
        })
    }

    /// Draws one clip's augmentation for `h` x `w` frames and `size` output. Ops that
    /// are off (probability or strength 0) take nothing from `rng`, so the default
    /// config draws exactly the two numbers of the original random crop.
    pub fn draw<R: Rng + ?Sized>(
        cfg: &AugmentConfig,
        h: usize,
        w: usize,
        size: usize,
        rng: &mut R,
    ) -> Self {
        let (hf, wf, s) = (h as f64, w as f64, size as f64);
        let window = match cfg.crop {
            CropMode::Random => {
                let (u, v): (f64, f64) = (rng.random(), rng.random());
                if cfg.scale_jitter == [1.0, 1.0] {
                    // Integer crop: the original pipeline's draw.
                    let (my, mx) = (h.saturating_sub(size), w.saturating_sub(size));
                    let y = (((my + 1) as f64 * u) as usize).min(my);
                    let x = (((mx + 1) as f64 * v) as usize).min(mx);
                    Window {
                        y: y as f64,
                        x: x as f64,
                        h: s,
                        w: s,
                    }
                } else {
                    let side = (s * lerp(cfg.scale_jitter, rng.random())).min(hf).min(wf);
                    Window {
                        y: (hf - side) * u,
                        x: (wf - side) * v,
                        h: side,
                        w: side,
                    }
                }
            }
            CropMode::Resized => resized_window(cfg, hf, wf, rng),
            CropMode::Centre => Self::centre(h, w, size).window,
        };
        let mut aug = Self::crop(window);
        if cfg.hflip > 0.0 {
            aug.hflip = rng.random::<f64>() < cfg.hflip;
        }
        if cfg.rotation > 0.0 {
            aug.angle = (rng.random::<f64>() * 2.0 - 1.0) * cfg.rotation.to_radians();
        }
        if cfg.jitters() && cfg.color_jitter > 0.0 && rng.random::<f64>() < cfg.color_jitter {
            let mut factor = |b: f64| {
                if b > 0.0 {
                    lerp([(1.0 - b).max(0.0), 1.0 + b], rng.random()) as f32
                } else {
                    1.0
                }
            };
            let (brightness, contrast, saturation) = (
                factor(cfg.brightness),
                factor(cfg.contrast),
                factor(cfg.saturation),
            );
            let hue = if cfg.hue > 0.0 {
                lerp([-cfg.hue, cfg.hue], rng.random()) as f32
            } else {
                0.0
            };
            let mut jitter = Jitter {
                brightness,
                contrast,
                saturation,
                hue,
            };
            // Per-op probabilities draw only when below 1, after the factors, so the
            // default draw sequence is unchanged.
            let mut skip = |p: f64| p < 1.0 && rng.random::<f64>() >= p;
            if skip(cfg.brightness_p) {
                jitter.brightness = 1.0;
            }
            if skip(cfg.contrast_p) {
                jitter.contrast = 1.0;
            }
            if skip(cfg.saturation_p) {
                jitter.saturation = 1.0;
            }
            if skip(cfg.hue_p) {
                jitter.hue = 0.0;
            }
            aug.jitter = Some(jitter);
        }
        if cfg.grayscale > 0.0 {
            aug.grayscale = rng.random::<f64>() < cfg.grayscale;
        }
        if cfg.channel_drop > 0.0 && rng.random::<f64>() < cfg.channel_drop {
            aug.drop_channel = Some(rng.random_range(0..3));
        }
        if cfg.erase > 0.0 && rng.random::<f64>() < cfg.erase {
            let area = s * s * lerp(cfg.erase_area, rng.random());
            let ratio = lerp(cfg.erase_ratio.map(f64::ln), rng.random()).exp();
            let side = |x: f64| (x.round() as usize).clamp(1, size);
            let (eh, ew) = (side((area * ratio).sqrt()), side((area / ratio).sqrt()));
            let ey = rng.random_range(0..=size - eh);
            let ex = rng.random_range(0..=size - ew);
            aug.erase = Some([ey, ex, eh, ew]);
        }
        aug
    }

    /// The integer origin when this is a plain `size` pixel crop (no resampling).
    fn pixel_crop(&self, size: usize) -> Option<(usize, usize)> {
        let w = &self.window;
        let whole = |v: f64| v >= 0.0 && v.fract() == 0.0;
        (self.angle == 0.0 && w.h == size as f64 && w.w == size as f64 && whole(w.y) && whole(w.x))
            .then_some((w.y as usize, w.x as usize))
    }
}

/// torchvision's `RandomResizedCrop.get_params` with fractional windows: up to 10
/// tries of (area, log-uniform ratio) that fit, else the largest centred window with
/// the ratio clamped to `crop_ratio`.
fn resized_window<R: Rng + ?Sized>(cfg: &AugmentConfig, h: f64, w: f64, rng: &mut R) -> Window {
    let log_ratio = cfg.crop_ratio.map(f64::ln);
    for _ in 0..10 {
        let target = h * w * lerp(cfg.crop_area, rng.random());
        let ratio = lerp(log_ratio, rng.random()).exp();
        let (cw, ch) = ((target * ratio).sqrt(), (target / ratio).sqrt());
        if cw <= w && ch <= h {
            let (u, v): (f64, f64) = (rng.random(), rng.random());
            return Window {
                y: (h - ch) * u,
                x: (w - cw) * v,
                h: ch,
                w: cw,
            };
        }
    }
    let [r0, r1] = cfg.crop_ratio;
    let (cw, ch) = if w / h < r0 {
        (w, w / r0)
    } else if w / h > r1 {
        (h * r1, h)
    } else {
        (w, h)
    };
    Window {
        y: (h - ch) / 2.0,
        x: (w - cw) / 2.0,
        h: ch,
        w: cw,
    }
}

/// Writes the clip made of frames `indices` of `video`, augmented by `aug` and
/// normalised by `norm`, into `out` as `[3, T, size, size]` f32.
pub fn write_clip(
    video: &Video,
    indices: &[usize],
    aug: &ClipAug,
    norm: &Normalize,
    size: usize,
    out: &mut [f32],
) {
    let (s, t_n) = (size, indices.len());
    let plane = s * s;
    debug_assert_eq!(out.len(), 3 * t_n * plane);
    // Without colour ops the geometric pass normalises directly (one pass).
    let colour = aug.jitter.is_some() || aug.grayscale;
    let (mean, std) = (norm.mean, norm.std);
    let store = |v: f32, c: usize| if colour { v } else { (v - mean[c]) / std[c] };
    if let Some((y0, x0)) = aug.pixel_crop(s) {
        for (t, &fi) in indices.iter().enumerate() {
            for yy in 0..s {
                let row = video.offset(fi, y0 + yy, x0);
                for xx in 0..s {
                    let sx = if aug.hflip { s - 1 - xx } else { xx };
                    let p = row + sx * 3;
                    for c in 0..3 {
                        let v = video.data[p + c] as f32 / 255.0;
                        out[(c * t_n + t) * plane + yy * s + xx] = store(v, c);
                    }
                }
            }
        }
    } else {
        let taps = resample::plan(
            video.height,
            video.width,
            aug.window,
            s,
            aug.angle,
            aug.hflip,
        );
        for (t, &fi) in indices.iter().enumerate() {
            let frame = video.frame(fi);
            for (i, tp) in taps.iter().enumerate() {
                for c in 0..3 {
                    out[(c * t_n + t) * plane + i] = store(resample::sample(frame, tp, c), c);
                }
            }
        }
    }
    if colour {
        colour_and_normalise(aug, norm, t_n * plane, out);
    }
    if let Some(c) = aug.drop_channel {
        out[c * t_n * plane..(c + 1) * t_n * plane].fill(0.0);
    }
    if let Some([ey, ex, eh, ew]) = aug.erase {
        for ct in 0..3 * t_n {
            for yy in ey..ey + eh {
                let row = ct * plane + yy * s;
                out[row + ex..row + ex + ew].fill(0.0);
            }
        }
    }
}

/// Colour jitter, grayscale and normalisation of `[3, n]` values in [0, 1], in place.
fn colour_and_normalise(aug: &ClipAug, norm: &Normalize, n: usize, out: &mut [f32]) {
    let px = |out: &[f32], i: usize| [out[i], out[n + i], out[2 * n + i]];
    if let Some(j) = aug.jitter {
        // Contrast blends towards the clip's mean luma after brightness.
        let mean_gray = if j.contrast != 1.0 {
            let sum: f64 = (0..n)
                .map(|i| gray(px(out, i).map(|v| (v * j.brightness).clamp(0.0, 1.0))) as f64)
                .sum();
            (sum / n as f64) as f32
        } else {
            0.0
        };
        for i in 0..n {
            let p = j.apply(px(out, i), mean_gray);
            for (c, v) in p.into_iter().enumerate() {
                out[c * n + i] = v;
            }
        }
    }
    if aug.grayscale {
        for i in 0..n {
            let g = gray(px(out, i));
            for c in 0..3 {
                out[c * n + i] = g;
            }
        }
    }
    for c in 0..3 {
        for v in &mut out[c * n..(c + 1) * n] {
            *v = (*v - norm.mean[c]) / norm.std[c];
        }
    }
}
