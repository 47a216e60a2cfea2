//! `[data.augment]`: which training augmentations run and how strongly. Lives beside
//! the code that applies it (like `SyntheticConfig`); the recipe embeds it in `DataConfig`.
//! Defaults reproduce the original pipeline: a random `data.size` crop, no flip, no
//! colour change, Kinetics-400 normalisation.

use serde::{Deserialize, Serialize};

/// How the crop window of a training clip is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CropMode {
    /// A square window of `data.size * s` pixels (`s` from `scale_jitter`) at a random
    /// position, resampled to `data.size`. With `scale_jitter = [1, 1]` (default) it is a
    /// plain pixel crop, no resampling.
    Random,
    /// Random resized crop (Inception/torchvision): a window covering `crop_area` of the
    /// frame with aspect ratio in `crop_ratio`, resampled to `data.size` squared.
    Resized,
    /// The centred `data.size` crop that evaluation uses.
    Centre,
}

/// `[data.augment]`. Probabilities are in [0, 1]; a strength of 0 disables its op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    pub crop: CropMode,
    /// `crop = "random"`: window side is `data.size * s`, `s` uniform in this range
    /// (clamped to the frame); values below 1 zoom in, above 1 zoom out.
    pub scale_jitter: [f64; 2],
    /// `crop = "resized"`: fraction of the frame's area the window covers.
    pub crop_area: [f64; 2],
    /// `crop = "resized"`: window aspect ratio (width / height), drawn log-uniformly.
    pub crop_ratio: [f64; 2],
    /// Probability of a horizontal flip. 0 by default: flipping swaps the synthetic
    /// dataset's left/right motion classes, so it would mislabel them.
    pub hflip: f64,
    /// Maximum rotation in degrees; the angle is uniform in `[-rotation, rotation]`.
    pub rotation: f64,
    /// Probability that colour jitter is applied to a clip (when a strength is > 0).
    pub color_jitter: f64,
    /// Brightness factor uniform in `[max(0, 1 - b), 1 + b]`.
    pub brightness: f64,
    /// Contrast factor uniform in `[max(0, 1 - c), 1 + c]` (blend with the clip's mean gray).
    pub contrast: f64,
    /// Saturation factor uniform in `[max(0, 1 - s), 1 + s]` (blend with each pixel's gray).
    pub saturation: f64,
    /// Hue shift uniform in `[-h, h]` turns of the colour wheel, `h <= 0.5`.
    pub hue: f64,
    /// Probability of each colour op within a jittered clip (TCLR draws each op on its
    /// own: brightness .3, contrast .25, saturation .3, hue .3). 1 (default) applies every
    /// op whose strength is above 0 and draws nothing extra.
    pub brightness_p: f64,
    pub contrast_p: f64,
    pub saturation_p: f64,
    pub hue_p: f64,
    /// Probability of turning the clip gray (ITU-R 601 luma in all three channels).
    pub grayscale: f64,
    /// Probability of dropping one random channel (set to the dataset mean, 0 after normalisation).
    pub channel_drop: f64,
    /// Probability of erasing one rectangle (0 after normalisation) on every frame.
    pub erase: f64,
    /// Erased fraction of the clip's area.
    pub erase_area: [f64; 2],
    /// Erased rectangle's aspect ratio, drawn log-uniformly.
    pub erase_ratio: [f64; 2],
    /// Per-channel (RGB) mean subtracted after scaling pixels to [0, 1] (training and evaluation).
    pub mean: [f64; 3],
    /// Per-channel (RGB) standard deviation divided by after subtracting `mean`.
    pub std: [f64; 3],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop: CropMode::Random,
            scale_jitter: [1.0, 1.0],
            crop_area: [0.25, 1.0],
            crop_ratio: [0.75, 4.0 / 3.0],
            hflip: 0.0,
            rotation: 0.0,
            color_jitter: 1.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
            brightness_p: 1.0,
            contrast_p: 1.0,
            saturation_p: 1.0,
            hue_p: 1.0,
            grayscale: 0.0,
            channel_drop: 0.0,
            erase: 0.0,
            erase_area: [0.02, 0.33],
            erase_ratio: [0.3, 3.3],
            // Kinetics-400 statistics, as torchvision's video models expect.
            mean: [0.432_16, 0.394_666, 0.376_45],
            std: [0.228_03, 0.221_45, 0.216_989],
        }
    }
}

impl AugmentConfig {
    /// True when colour jitter can change a clip (some strength is above 0).
    pub fn jitters(&self) -> bool {
        self.brightness > 0.0 || self.contrast > 0.0 || self.saturation > 0.0 || self.hue > 0.0
    }

    /// Checks the ranges; on failure returns `(key, message)` with the key relative to
    /// `[data.augment]`.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        for (k, p) in [
            ("hflip", self.hflip),
            ("color_jitter", self.color_jitter),
            ("brightness_p", self.brightness_p),
            ("contrast_p", self.contrast_p),
            ("saturation_p", self.saturation_p),
            ("hue_p", self.hue_p),
            ("grayscale", self.grayscale),
            ("channel_drop", self.channel_drop),
            ("erase", self.erase),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return err(k, format!("a probability in [0, 1], got {p}"));
            }
        }
        for (k, s) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(s.is_finite() && s >= 0.0) {
                return err(k, format!("must be >= 0, got {s}"));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return err("hue", format!("must be in [0, 0.5], got {}", self.hue));
        }
        if !(0.0..=180.0).contains(&self.rotation) {
            return err(
                "rotation",
                format!("degrees in [0, 180], got {}", self.rotation),
            );
        }
        let range = |k: &str, r: [f64; 2], lo: f64, hi: f64| {
            if r[0].is_finite() && r[1].is_finite() && lo < r[0] && r[0] <= r[1] && r[1] <= hi {
                Ok(())
            } else {
                Err((
                    k.to_string(),
                    format!(
                        "[min, max] with {lo} < min <= max <= {hi}, got [{}, {}]",
                        r[0], r[1]
                    ),
                ))
            }
        };
        range("scale_jitter", self.scale_jitter, 0.0, 16.0)?;
        range("crop_area", self.crop_area, 0.0, 1.0)?;
        range("crop_ratio", self.crop_ratio, 0.0, 100.0)?;
        range("erase_area", self.erase_area, 0.0, 1.0)?;
        range("erase_ratio", self.erase_ratio, 0.0, 100.0)?;
        for (i, s) in self.std.iter().enumerate() {
            if !(s.is_finite() && *s > 0.0) {
                return err("std", format!("entry {i} must be > 0, got {s}"));
            }
        }
        for (i, m) in self.mean.iter().enumerate() {
            if !m.is_finite() {
                return err("mean", format!("entry {i} must be finite, got {m}"));
            }
        }
        Ok(())
    }
}
