//! Per-pixel colour ops on RGB values in [0, 1], with torchvision's semantics
//! (`adjust_brightness`, `adjust_contrast`, `adjust_saturation`, `adjust_hue`,
//! `rgb_to_grayscale`): every op clamps its result to [0, 1].

/// ITU-R 601-2 luma weights (torchvision's `rgb_to_grayscale`).
pub const GRAY: [f32; 3] = [0.299, 0.587, 0.114];

/// Luma of one pixel.
#[inline]
pub fn gray(p: [f32; 3]) -> f32 {
    GRAY[0] * p[0] + GRAY[1] * p[1] + GRAY[2] * p[2]
}

/// `factor * a + (1 - factor) * b`, clamped to [0, 1].
#[inline]
pub fn blend(a: f32, b: f32, factor: f32) -> f32 {
    (factor * a + (1.0 - factor) * b).clamp(0.0, 1.0)
}

/// Colour jitter factors drawn for one clip (identity: 1, 1, 1, 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    /// Hue shift in turns of the colour wheel.
    pub hue: f32,
}

impl Jitter {
    /// Brightness then contrast (around `mean_gray`, the clip's mean luma after
    /// brightness) then saturation then hue, in that fixed order.
    #[inline]
    pub fn apply(&self, p: [f32; 3], mean_gray: f32) -> [f32; 3] {
        let mut p = p.map(|v| (v * self.brightness).clamp(0.0, 1.0));
        if self.contrast != 1.0 {
            p = p.map(|v| blend(v, mean_gray, self.contrast));
        }
        if self.saturation != 1.0 {
            let g = gray(p);
            p = p.map(|v| blend(v, g, self.saturation));
        }
        if self.hue != 0.0 {
            p = shift_hue(p, self.hue);
        }
        p
    }
}

/// Rotates the hue of an RGB pixel by `shift` turns (HSV round trip).
pub fn shift_hue(p: [f32; 3], shift: f32) -> [f32; 3] {
    let (h, s, v) = rgb_to_hsv(p);
    hsv_to_rgb((h + shift).rem_euclid(1.0), s, v)
}

/// RGB in [0, 1] to (hue in [0, 1), saturation, value).
pub fn rgb_to_hsv([r, g, b]: [f32; 3]) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    if d <= 0.0 {
        return (0.0, 0.0, max);
    }
    let h = if max == r {
        ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        (b - r) / d + 2.0
    } else {
        (r - g) / d + 4.0
    };
    ((h / 6.0).rem_euclid(1.0), d / max, max)
}

/// (hue in [0, 1), saturation, value) to RGB.
pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = h * 6.0;
    let sector = (h6.floor() as i32).rem_euclid(6);
    let f = h6 - h6.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match sector {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}
