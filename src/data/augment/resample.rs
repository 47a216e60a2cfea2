//! Bilinear resampling of a (rotated, flipped) window of a frame onto a square output
//! grid. The source position of every output pixel is computed once per clip as up to
//! four taps, then the same taps are applied to every frame (temporally consistent).
//!
//! Geometry follows torchvision's `resize` (`align_corners = False`): output pixel
//! `(i, j)` of an `s`-pixel grid over a window `(y, x, h, w)` samples the source at
//! `y + (i + 0.5) * h / s - 0.5`, `x + (j + 0.5) * w / s - 0.5`, rotated about the
//! window centre. Positions inside the frame's area are clamped to the edge pixels;
//! positions outside it (only reachable by rotation) are black, as torchvision's
//! `rotate` fills with 0. No antialiasing when shrinking (as in most video pipelines).

/// A source rectangle in pixels (may be fractional).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub y: f64,
    pub x: f64,
    pub h: f64,
    pub w: f64,
}

/// Where one output pixel reads: byte offsets of up to 4 source pixels (channel 0)
/// within a frame, and their weights (all 0 outside the frame: black).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Taps {
    pub off: [usize; 4],
    pub w: [f32; 4],
}

/// Source position (row, column) of output pixel `(i, j)` of an `s`-pixel grid over
/// `win`, rotated by `angle` radians (counter-clockwise on screen) about the window's
/// centre, mirrored horizontally when `hflip`.
pub fn source_pos(
    win: Window,
    s: usize,
    angle: f64,
    hflip: bool,
    i: usize,
    j: usize,
) -> (f64, f64) {
    let j = if hflip { s - 1 - j } else { j };
    // Offsets from the window centre, in source pixels.
    let u = (j as f64 + 0.5) * win.w / s as f64 - win.w / 2.0;
    let v = (i as f64 + 0.5) * win.h / s as f64 - win.h / 2.0;
    let (cy, cx) = (win.y + win.h / 2.0 - 0.5, win.x + win.w / 2.0 - 0.5);
    if angle == 0.0 {
        return (cy + v, cx + u);
    }
    let (sin, cos) = angle.sin_cos();
    // Rows grow downwards: turning the picture counter-clockwise on screen brings the
    // source's right edge to the top, so output offset (u, v) reads source offset
    // (x: cos u - sin v, y: sin u + cos v).
    (cy + sin * u + cos * v, cx + cos * u - sin * v)
}

/// Bilinear taps of source position `(y, x)` in an `h` x `w` RGB frame.
pub fn taps_at(h: usize, w: usize, y: f64, x: f64) -> Taps {
    let inside = |p: f64, n: usize| p >= -0.5 && p <= n as f64 - 0.5;
    if !inside(y, h) || !inside(x, w) {
        return Taps {
            off: [0; 4],
            w: [0.0; 4],
        };
    }
    let y = y.clamp(0.0, (h - 1) as f64);
    let x = x.clamp(0.0, (w - 1) as f64);
    let (y0, x0) = (y.floor() as usize, x.floor() as usize);
    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
    let (fy, fx) = ((y - y0 as f64) as f32, (x - x0 as f64) as f32);
    let at = |yy: usize, xx: usize| (yy * w + xx) * 3;
    Taps {
        off: [at(y0, x0), at(y0, x1), at(y1, x0), at(y1, x1)],
        w: [
            (1.0 - fy) * (1.0 - fx),
            (1.0 - fy) * fx,
            fy * (1.0 - fx),
            fy * fx,
        ],
    }
}

/// Taps of every output pixel (row-major, `s * s`).
pub fn plan(h: usize, w: usize, win: Window, s: usize, angle: f64, hflip: bool) -> Vec<Taps> {
    let mut out = Vec::with_capacity(s * s);
    for i in 0..s {
        for j in 0..s {
            let (y, x) = source_pos(win, s, angle, hflip, i, j);
            out.push(taps_at(h, w, y, x));
        }
    }
    out
}

/// Channel `c` of one output pixel in [0, 1].
#[inline]
pub fn sample(frame: &[u8], t: &Taps, c: usize) -> f32 {
    let mut acc = 0f32;
    for k in 0..4 {
        acc += t.w[k] * frame[t.off[k] + c] as f32;
    }
    acc / 255.0
}
