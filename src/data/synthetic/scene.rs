//! The scene behind one synthetic video and its renderer: what is drawn from a video's
//! seed (object, motion, background, drift, distractors, lighting, noise) and how a
//! frame is rasterised. Split from [`super`] (the dataset's public face: config,
//! classes, splits, labels) to keep each file readable.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Pattern, Shape, SyntheticConfig};
use crate::seed::mix;

/// Foreground motion, in forward time (the even class of the pair).
#[derive(Debug, Clone, Copy)]
enum Motion {
    /// Centre `(x0, y0) + t * (vx, vy)`, fixed angle and radius.
    Translate {
        x0: f32,
        y0: f32,
        vx: f32,
        vy: f32,
        angle: f32,
        r: f32,
    },
    /// Fixed centre and radius; angle `a0 + w * t` (increasing angle is clockwise on screen).
    Rotate {
        cx: f32,
        cy: f32,
        a0: f32,
        w: f32,
        r: f32,
    },
    /// Fixed centre and angle; radius `r0 + k * t`.
    Grow {
        cx: f32,
        cy: f32,
        angle: f32,
        r0: f32,
        k: f32,
    },
}

#[derive(Debug, Clone)]
struct Distractor {
    shape: Shape,
    r: f32,
    color: [f32; 3],
    p0: (f32, f32),
    v: (f32, f32),
    /// Falls (wrapping from the bottom edge to the top) instead of bouncing vertically.
    falls: bool,
}

impl Distractor {
    /// Centre at playback time `t`.
    fn position(&self, t: f32, size: f32) -> (f32, f32) {
        let x = bounce(self.p0.0 + self.v.0 * t, self.r, size - self.r);
        let y = if self.falls {
            // Enter fully above the top edge, leave fully below the bottom one.
            let span = size + 2.0 * self.r;
            (self.p0.1 + self.v.1 * t + self.r).rem_euclid(span) - self.r
        } else {
            bounce(self.p0.1 + self.v.1 * t, self.r, size - self.r)
        };
        (x, y)
    }
}

/// Everything needed to render one video, drawn from its seed.
pub(super) struct Scene {
    size: usize,
    /// Periodic background texture `[size, size, 3]`.
    texture: Vec<f32>,
    drift0: (f32, f32),
    drift_v: (f32, f32),
    gain: f32,
    flicker_amp: f32,
    flicker_freq: f32,
    flicker_phase: f32,
    distractors: Vec<Distractor>,
    shape: Shape,
    color: [f32; 3],
    motion: Motion,
    noise: f32,
    noise_seed: u64,
    /// Foreground sink speed (pixels/frame) and the middle frame it is centred on.
    sink: f32,
    mid: f32,
}

/// Brightness multiplier of the orientation band on the foreground object.
const BAND_GAIN: f32 = 0.45;
/// Band boundary in the object's local frame (radius units).
const BAND_EDGE: f32 = 0.3;

fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

fn l1(a: [f32; 3], b: [f32; 3]) -> f32 {
    (a[0] - b[0]).abs() + (a[1] - b[1]).abs() + (a[2] - b[2]).abs()
}

fn random_color(rng: &mut ChaCha8Rng) -> [f32; 3] {
    [
        uniform(rng, 0.0, 255.0),
        uniform(rng, 0.0, 255.0),
        uniform(rng, 0.0, 255.0),
    ]
}

impl Scene {
    /// Draws the scene for `seed`. Each part uses its own random stream so that, for a given
    /// seed, the nuisances are identical whatever the class family.
    pub(super) fn draw(cfg: &SyntheticConfig, seed: u64, family: u32) -> Scene {
        let s = cfg.size;
        let sf = s as f32;
        let t_n = cfg.video_frames;
        let span = (t_n - 1) as f32;
        // Speeds are specified for 32-pixel frames and scale with the frame size.
        let px = sf / 32.0;
        let stream = |k: u64| ChaCha8Rng::seed_from_u64(mix(seed ^ mix(k)));

        // Background colours and texture.
        let mut rng = stream(1);
        let base = [
            uniform(&mut rng, 60.0, 180.0),
            uniform(&mut rng, 60.0, 180.0),
            uniform(&mut rng, 60.0, 180.0),
        ];
        let mut texture = vec![0f32; s * s * 3];
        if cfg.texture {
            let amp: [f32; 3] = std::array::from_fn(|_| {
                let a = uniform(&mut rng, 35.0, 60.0);
                if rng.random::<bool>() {
                    a
                } else {
                    -a
                }
            });
            let noise = match cfg.pattern {
                Pattern::Noise => value_noise(&mut rng, s),
                Pattern::Stripes | Pattern::Checks => {
                    grating(&mut rng, s, cfg.pattern == Pattern::Checks)
                }
            };
            for (i, &v) in noise.iter().enumerate() {
                for c in 0..3 {
                    texture[i * 3 + c] = base[c] + amp[c] * 2.0 * (v - 0.5);
                }
            }
        } else {
            for px3 in texture.chunks_exact_mut(3) {
                px3.copy_from_slice(&base);
            }
        }

        // Camera drift: the background scrolls down the screen (a camera rising, or a
        // world that flows downwards), with a small sideways component. Like the falling
        // distractors it is rendered in playback time in every class.
        let mut rng = stream(2);
        let (drift0, drift_v) = {
            let o = (uniform(&mut rng, 0.0, sf), uniform(&mut rng, 0.0, sf));
            let side = uniform(&mut rng, -0.1, 0.1) * px;
            let speed = uniform(&mut rng, 0.5, 1.0) * px;
            if cfg.drift {
                // Sampling the texture at y + oy with oy decreasing moves content down.
                (o, (side, -speed))
            } else {
                (o, (0.0, 0.0))
            }
        };

        // Lighting: per-video gain and a slow flicker with a uniform phase.
        let mut rng = stream(3);
        let gain = uniform(&mut rng, 0.85, 1.15);
        let flicker_amp = uniform(&mut rng, 0.0, 0.07);
        let flicker_freq = uniform(&mut rng, 0.01, 0.05) * std::f32::consts::TAU;
        let flicker_phase = uniform(&mut rng, 0.0, std::f32::consts::TAU);

        // Distractors: falling (random speed around `fall`, slight sideways drift) or, with
        // `fall = 0`, straight lines in random directions bouncing off the borders.
        let mut rng = stream(4);
        let count = if cfg.distractors == 0 {
            0
        } else {
            rng.random_range(1..=cfg.distractors)
        };
        let distractors = (0..count)
            .map(|_| {
                let r = (uniform(&mut rng, 0.05, 0.09) * sf).max(1.0);
                let dir = uniform(&mut rng, 0.0, std::f32::consts::TAU);
                let speed = uniform(&mut rng, 0.1, 0.5) * px;
                // `random::<bool>()` first, as the built-in world (disc or square) always drew.
                let shape = if rng.random::<bool>() {
                    cfg.shapes[0]
                } else {
                    cfg.shapes[1 % cfg.shapes.len()]
                };
                let color = random_color(&mut rng);
                let p0 = (uniform(&mut rng, r, sf - r), uniform(&mut rng, r, sf - r));
                let fall = cfg.fall * px * uniform(&mut rng, 0.7, 1.3);
                let side = uniform(&mut rng, -0.1, 0.1) * px;
                let falls = cfg.fall > 0.0;
                Distractor {
                    shape,
                    r,
                    color,
                    p0,
                    v: if falls {
                        (side, fall)
                    } else {
                        (speed * dir.cos(), speed * dir.sin())
                    },
                    falls,
                }
            })
            .collect();

        // Foreground object. Its colour keeps a clear contrast with the background colour,
        // both on the lit part and on the dark orientation band.
        let mut rng = stream(5);
        let shape = cfg.shapes[rng.random_range(0..cfg.shapes.len())];
        let mut color = [0.0; 3];
        let mut best = f32::MIN;
        for _ in 0..64 {
            let c = random_color(&mut rng);
            let contrast = l1(c, base).min(l1(c.map(|v| v * BAND_GAIN), base));
            if contrast > best {
                (best, color) = (contrast, c);
            }
            if contrast >= 120.0 {
                break;
            }
        }

        // Motion of the even (forward) class of the family. All candidate parameters are drawn
        // in a fixed order whatever the family.
        let mut rng = stream(6);
        let margin = 2.0;
        let angle = uniform(&mut rng, 0.0, std::f32::consts::TAU);
        let (size_k, speed_k) = (cfg.object_scale, cfg.motion_scale);
        let r = uniform(&mut rng, 0.14, 0.2) * sf * size_k;
        let speed = uniform(&mut rng, 0.25, 0.55) * px * speed_k;
        let w = uniform(&mut rng, 0.06, 0.14) * speed_k;
        let r0 = uniform(&mut rng, 0.07, 0.11) * sf * size_k;
        let k = uniform(&mut rng, 0.12, 0.25) * px * speed_k;
        let (u1, u2) = (rng.random::<f32>(), rng.random::<f32>());
        // The sink moves the object by `sink_travel` over the video, centred on the middle
        // frame: keep that much room above and below the class motion.
        let sink = cfg.sink * px;
        let half_sink = 0.5 * sink * span;
        let motion = match family {
            // Translations: forward is left (family 0) or up (family 1).
            0 | 1 => {
                let (lo, hi) = (r + margin, sf - r - margin);
                let (ylo, yhi) = (lo + half_sink, hi - half_sink);
                let (lo_m, hi_m) = if family == 0 { (lo, hi) } else { (ylo, yhi) };
                let travel = (speed * span).min(hi_m - lo_m);
                let start = lo_m + travel + u1 * (hi_m - lo_m - travel);
                let across = if family == 0 {
                    ylo + u2 * (yhi - ylo)
                } else {
                    lo + u2 * (hi - lo)
                };
                let v = travel / span;
                if family == 0 {
                    Motion::Translate {
                        x0: start,
                        y0: across,
                        vx: -v,
                        vy: 0.0,
                        angle,
                        r,
                    }
                } else {
                    Motion::Translate {
                        x0: across,
                        y0: start,
                        vx: 0.0,
                        vy: -v,
                        angle,
                        r,
                    }
                }
            }
            2 => {
                let (lo, hi) = (r + margin, sf - r - margin);
                Motion::Rotate {
                    cx: lo + u1 * (hi - lo),
                    cy: lo + half_sink + u2 * (hi - lo - 2.0 * half_sink),
                    a0: angle,
                    w,
                    r,
                }
            }
            _ => {
                let r_max = 0.32 * sf * size_k;
                let k = k.min((r_max - r0) / span);
                let r1 = r0 + k * span;
                let (lo, hi) = (r1 + margin, sf - r1 - margin);
                Motion::Grow {
                    cx: lo + u1 * (hi - lo),
                    cy: lo + half_sink + u2 * (hi - lo - 2.0 * half_sink).max(0.0),
                    angle,
                    r0,
                    k,
                }
            }
        };

        Scene {
            size: s,
            texture,
            drift0,
            drift_v,
            gain,
            flicker_amp,
            flicker_freq,
            flicker_phase,
            distractors,
            shape,
            color,
            motion,
            noise: cfg.noise,
            noise_seed: mix(seed ^ mix(7)),
            sink,
            mid: 0.5 * span,
        }
    }

    /// Renders forward-time frame `t` into `buf` (`[S, S, 3]` floats, before gain and noise);
    /// the distractors are drawn at playback time `slot`.
    pub(super) fn render_frame(
        &self,
        t: usize,
        slot: usize,
        buf: &mut [f32],
        cols: &mut [(usize, usize)],
    ) {
        let td = slot as f32;
        let s = self.size;
        let tf = t as f32;

        // Background: the texture is periodic, and the sub-pixel part of the camera offset is
        // the same for every pixel, so the bilinear weights are computed once per frame.
        let ox = self.drift0.0 + self.drift_v.0 * td;
        let oy = self.drift0.1 + self.drift_v.1 * td;
        let (fx, fy) = (ox - ox.floor(), oy - oy.floor());
        let (ix, iy) = (ox.floor() as i64, oy.floor() as i64);
        let wrap = |v: i64| v.rem_euclid(s as i64) as usize;
        for (x, c) in cols.iter_mut().enumerate() {
            let x0 = wrap(x as i64 + ix);
            *c = (x0 * 3, ((x0 + 1) % s) * 3);
        }
        let (w00, w01, w10, w11) = (
            (1.0 - fx) * (1.0 - fy),
            fx * (1.0 - fy),
            (1.0 - fx) * fy,
            fx * fy,
        );
        let row_len = s * 3;
        for y in 0..s {
            let y0 = wrap(y as i64 + iy);
            let r0 = &self.texture[y0 * row_len..(y0 + 1) * row_len];
            let r1 = &self.texture[((y0 + 1) % s) * row_len..((y0 + 1) % s + 1) * row_len];
            let out = &mut buf[y * row_len..(y + 1) * row_len];
            for (x, &(a, b)) in cols.iter().enumerate() {
                for c in 0..3 {
                    let v = w00 * r0[a + c] + w01 * r0[b + c] + w10 * r1[a + c] + w11 * r1[b + c];
                    out[x * 3 + c] = v;
                }
            }
        }

        // Distractors (behind the foreground object).
        let sf = s as f32;
        for d in &self.distractors {
            let (x, y) = d.position(td, sf);
            draw_shape(buf, s, d.shape, x, y, 0.0, d.r, d.color, false);
        }

        let (cx, cy, angle, r) = match self.motion {
            Motion::Translate {
                x0,
                y0,
                vx,
                vy,
                angle,
                r,
            } => (x0 + vx * tf, y0 + vy * tf, angle, r),
            Motion::Rotate { cx, cy, a0, w, r } => (cx, cy, a0 + w * tf, r),
            Motion::Grow {
                cx,
                cy,
                angle,
                r0,
                k,
            } => (cx, cy, angle, r0 + k * tf),
        };
        // The sink follows playback time, like the falling distractors.
        let cy = cy + self.sink * (td - self.mid);
        draw_shape(buf, s, self.shape, cx, cy, angle, r, self.color, true);
    }

    /// Applies the frame's brightness, adds noise and rounds to bytes.
    pub(super) fn quantize(&self, t: usize, buf: &[f32], out: &mut [u8]) {
        let gain = self.gain
            * (1.0 + self.flicker_amp * (self.flicker_freq * t as f32 + self.flicker_phase).sin());
        if self.noise <= 0.0 {
            for (o, &v) in out.iter_mut().zip(buf) {
                *o = (v * gain + 0.5).clamp(0.0, 255.0) as u8;
            }
            return;
        }
        // Noise depends on the forward time index, so reversal permutes whole frames.
        let mut state = mix(self.noise_seed ^ (t as u64));
        // Irwin-Hall: the sum of four random bytes has mean 510 and std ~147.8.
        let scale = self.noise / 147.80;
        let mut o_it = out.chunks_mut(2);
        let mut b_it = buf.chunks(2);
        while let (Some(o), Some(b)) = (o_it.next(), b_it.next()) {
            let z = wyrand(&mut state);
            let n0 = ((z & 0xff) + ((z >> 8) & 0xff) + ((z >> 16) & 0xff) + ((z >> 24) & 0xff))
                as f32
                - 510.0;
            let n1 = (((z >> 32) & 0xff) + ((z >> 40) & 0xff) + ((z >> 48) & 0xff) + (z >> 56))
                as f32
                - 510.0;
            o[0] = (b[0] * gain + n0 * scale + 0.5).clamp(0.0, 255.0) as u8;
            if o.len() > 1 {
                o[1] = (b[1] * gain + n1 * scale + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
}

#[inline]
fn wyrand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0xa076_1d64_78bd_642f);
    let t = (*state as u128).wrapping_mul((*state ^ 0xe703_7ed1_a0b4_28db) as u128);
    ((t >> 64) as u64) ^ (t as u64)
}

/// Reflects `v` into `[lo, hi]` (straight-line motion bouncing off the borders).
fn bounce(v: f32, lo: f32, hi: f32) -> f32 {
    let len = hi - lo;
    if len <= 0.0 {
        return lo;
    }
    let m = (v - lo).rem_euclid(2.0 * len);
    lo + if m > len { 2.0 * len - m } else { m }
}

/// Periodic two-octave value noise in `[0, 1]`, `[s, s]`.
fn value_noise(rng: &mut ChaCha8Rng, s: usize) -> Vec<f32> {
    let mut out = vec![0f32; s * s];
    for (g, amp) in [(4usize, 0.4), (8usize, 0.6)] {
        let lattice: Vec<f32> = (0..g * g).map(|_| rng.random::<f32>()).collect();
        let coord = |p: usize| {
            let u = p as f32 * g as f32 / s as f32;
            let i = u.floor();
            let f = u - i;
            let i = i as usize % g;
            (i, (i + 1) % g, f * f * (3.0 - 2.0 * f))
        };
        let xs: Vec<_> = (0..s).map(coord).collect();
        for y in 0..s {
            let (y0, y1, fy) = coord(y);
            for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
                let a = lattice[y0 * g + x0] + fx * (lattice[y0 * g + x1] - lattice[y0 * g + x0]);
                let b = lattice[y1 * g + x0] + fx * (lattice[y1 * g + x1] - lattice[y1 * g + x0]);
                out[y * s + x] += amp * (a + fy * (b - a));
            }
        }
    }
    out
}

/// A periodic grating in `[0, 1]`, `[s, s]`: `0.5 + 0.5 sin` along a wave vector of whole
/// periods per frame side (1..=3 on each axis, random signs), or with `checks` the product
/// of two such gratings along the axes.
fn grating(rng: &mut ChaCha8Rng, s: usize, checks: bool) -> Vec<f32> {
    let mut periods = || {
        let n = rng.random_range(1..=3) as f32;
        if rng.random::<bool>() {
            n
        } else {
            -n
        }
    };
    let (kx, ky) = (periods(), periods());
    let phase = uniform(rng, 0.0, std::f32::consts::TAU);
    let w = std::f32::consts::TAU / s as f32;
    let mut out = vec![0f32; s * s];
    for y in 0..s {
        for x in 0..s {
            let (xf, yf) = (x as f32 * w, y as f32 * w);
            let v = if checks {
                (kx.abs() * xf + phase).sin() * (ky.abs() * yf).sin()
            } else {
                (kx * xf + ky * yf + phase).sin()
            };
            out[y * s + x] = 0.5 + 0.5 * v;
        }
    }
    out
}

/// Signed distance (radius units, negative inside) of a unit-radius shape in its own frame.
#[inline]
fn sdf(shape: Shape, x: f32, y: f32) -> f32 {
    fn sd_box(x: f32, y: f32, bx: f32, by: f32) -> f32 {
        let (qx, qy) = (x.abs() - bx, y.abs() - by);
        let (ox, oy) = (qx.max(0.0), qy.max(0.0));
        (ox * ox + oy * oy).sqrt() + qx.max(qy).min(0.0)
    }
    match shape {
        Shape::Disc => (x * x + y * y).sqrt() - 1.0,
        // Corners at distance <= 1 from the centre, so every shape fits the unit disc.
        Shape::Square => sd_box(x, y, 0.7, 0.7),
        Shape::Bar => sd_box(x, y, 0.95, 0.3),
        Shape::Triangle => {
            // Equilateral triangle with circumradius 1, centred on its centroid (after
            // Inigo Quilez's exact 2D SDF).
            const K: f32 = 1.732_050_8;
            const R: f32 = 0.866_025_4; // half side
            let (mut px, mut py) = (x.abs() - R, y + R / K);
            if px + K * py > 0.0 {
                (px, py) = ((px - K * py) * 0.5, (-K * px - py) * 0.5);
            }
            px -= px.clamp(-2.0 * R, 0.0);
            let d = (px * px + py * py).sqrt();
            if py > 0.0 {
                -d
            } else {
                d
            }
        }
        Shape::Ring => ((x * x + y * y).sqrt() - 0.72).abs() - 0.28,
        Shape::Cross => sd_box(x, y, 0.95, 0.28).min(sd_box(x, y, 0.28, 0.95)),
        // |x| + |y| <= 1, a square standing on a corner: distance to the edge x + y = 1.
        Shape::Diamond => (x.abs() + y.abs() - 1.0) * std::f32::consts::FRAC_1_SQRT_2,
        // Semi-axes 1 and 0.55: the disc's distance in the stretched frame, scaled by
        // the short semi-axis (a bound, exact on the minor axis; fine for a 1-pixel ramp).
        Shape::Ellipse => {
            let (ex, ey) = (x, y / 0.55);
            ((ex * ex + ey * ey).sqrt() - 1.0) * 0.55
        }
    }
}

/// Composites an anti-aliased shape of radius `r` pixels centred at `(cx, cy)` and rotated
/// by `angle` (clockwise on screen) into `buf`, flat-coloured (no shading, so nothing static
/// tells up from down). With `band`, one side of the shape (in its own frame) is darkened
/// so its orientation shows.
#[allow(clippy::too_many_arguments)]
fn draw_shape(
    buf: &mut [f32],
    s: usize,
    shape: Shape,
    cx: f32,
    cy: f32,
    angle: f32,
    r: f32,
    color: [f32; 3],
    band: bool,
) {
    let ext = r + 1.0;
    let clip = |v: f32| (v.max(0.0) as usize).min(s);
    let (x0, x1) = (clip((cx - ext).floor()), clip((cx + ext).ceil()));
    let (y0, y1) = (clip((cy - ext).floor()), clip((cy + ext).ceil()));
    let (sn, cs) = angle.sin_cos();
    let inv_r = 1.0 / r;
    for y in y0..y1 {
        let py = y as f32 + 0.5 - cy;
        let row = &mut buf[y * s * 3..(y + 1) * s * 3];
        for x in x0..x1 {
            let px = x as f32 + 0.5 - cx;
            // Screen -> object frame: rotate by -angle, scale to unit radius.
            let lx = (cs * px + sn * py) * inv_r;
            let ly = (cs * py - sn * px) * inv_r;
            // One-pixel linear ramp across the edge: coverage of the pixel.
            let a = (0.5 - sdf(shape, lx, ly) * r).clamp(0.0, 1.0);
            if a <= 0.0 {
                continue;
            }
            let mut k = 1.0;
            if band {
                let m = (0.5 + (lx - BAND_EDGE) * r).clamp(0.0, 1.0);
                k *= 1.0 - (1.0 - BAND_GAIN) * m;
            }
            let p = &mut row[x * 3..x * 3 + 3];
            for c in 0..3 {
                p[c] += a * (color[c] * k - p[c]);
            }
        }
    }
}
