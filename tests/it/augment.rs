//! Clip augmentation: each op against hand-computed pixels, the bilinear resampler
//! against a naive reference, temporal consistency, independence across clips,
//! determinism, and the default config reproducing the original crop-only pipeline.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use vssl::data::augment::color::{hsv_to_rgb, rgb_to_hsv, shift_hue, Jitter};
use vssl::data::augment::{
    resample, write_clip, AugmentConfig, ClipAug, CropMode, Normalize, Window, MEAN, STD,
};
use vssl::data::datasets::VideoDataset;
use vssl::data::loader::{make_batch, video_for, BatchPlan, Loader};
use vssl::data::sampler::StridedPlanner;
use vssl::data::synthetic::{Synthetic, SyntheticConfig};
use vssl::data::{Split, Video};
use vssl::seed::mix;

const ID: Normalize = Normalize {
    mean: [0.0; 3],
    std: [1.0; 3],
};

/// A video of pseudo-random bytes.
fn noise_video(frames: usize, h: usize, w: usize, seed: u64) -> Video {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Video {
        frames,
        height: h,
        width: w,
        data: (0..frames * h * w * 3).map(|_| rng.random()).collect(),
    }
}

/// A video whose frames are all the same (so a consistent op gives equal frames).
fn still_video(frames: usize, h: usize, w: usize) -> Video {
    let one = noise_video(1, h, w, 5);
    Video {
        frames,
        height: h,
        width: w,
        data: one.data.repeat(frames),
    }
}

fn clip(video: &Video, aug: &ClipAug, norm: &Normalize, s: usize) -> Vec<f32> {
    let idx: Vec<usize> = (0..video.frames).collect();
    let mut out = vec![0f32; 3 * idx.len() * s * s];
    write_clip(video, &idx, aug, norm, s, &mut out);
    out
}

/// Value of channel `c`, time `t`, pixel `(y, x)` in a `[3, T, S, S]` clip.
fn at(out: &[f32], t_n: usize, s: usize, c: usize, t: usize, y: usize, x: usize) -> f32 {
    out[((c * t_n + t) * s + y) * s + x]
}

fn px(v: &Video, t: usize, y: usize, x: usize, c: usize) -> f32 {
    v.data[v.offset(t, y, x) + c] as f32 / 255.0
}

fn win(y: f64, x: f64, h: f64, w: f64) -> Window {
    Window { y, x, h, w }
}

/// A single-frame video of given RGB pixels (row-major `h` x `w`).
fn pixels(h: usize, w: usize, rgb: &[[u8; 3]]) -> Video {
    Video {
        frames: 1,
        height: h,
        width: w,
        data: rgb.iter().flatten().copied().collect(),
    }
}

#[test]
fn pixel_crop_and_normalisation_by_hand() {
    let v = noise_video(2, 6, 7, 1);
    let aug = ClipAug::crop(win(2.0, 3.0, 4.0, 4.0));
    let out = clip(&v, &aug, &Normalize::KINETICS, 4);
    for (c, t, y, x) in [(0, 0, 0, 0), (1, 1, 3, 2), (2, 0, 1, 3)] {
        let want = (px(&v, t, 2 + y, 3 + x, c) - MEAN[c]) / STD[c];
        assert_eq!(at(&out, 2, 4, c, t, y, x), want);
    }
}

#[test]
fn resampler_with_a_pixel_window_is_the_crop() {
    // Force the general path: the taps of an integer window at angle 0 hit one pixel.
    let v = noise_video(1, 9, 8, 2);
    let taps = resample::plan(9, 8, win(3.0, 1.0, 5.0, 5.0), 5, 0.0, false);
    for i in 0..5 {
        for j in 0..5 {
            for c in 0..3 {
                let got = resample::sample(v.frame(0), &taps[i * 5 + j], c);
                assert_eq!(got, px(&v, 0, 3 + i, 1 + j, c), "({i},{j}) c{c}");
            }
        }
    }
}

#[test]
fn bilinear_upsampling_by_hand() {
    // Columns 0 and 255 upsampled 2 -> 4 (align_corners = False): 0, 1/4, 3/4, 1.
    let v = pixels(2, 2, &[[0; 3], [255; 3], [0; 3], [255; 3]]);
    let out = clip(&v, &ClipAug::crop(win(0.0, 0.0, 2.0, 2.0)), &ID, 4);
    for y in 0..4 {
        let row: Vec<f32> = (0..4).map(|x| at(&out, 1, 4, 1, 0, y, x)).collect();
        assert_eq!(row, vec![0.0, 0.25, 0.75, 1.0]);
    }
}

/// Bilinear sample at (y, x) written from the definition (edge clamped, black outside).
fn naive_bilinear(v: &Video, y: f64, x: f64, c: usize) -> f64 {
    let (h, w) = (v.height as f64, v.width as f64);
    if y < -0.5 || y > h - 0.5 || x < -0.5 || x > w - 0.5 {
        return 0.0;
    }
    let (y, x) = (y.clamp(0.0, h - 1.0), x.clamp(0.0, w - 1.0));
    let get = |yy: f64, xx: f64| {
        let (yy, xx) = (yy.min(h - 1.0) as usize, xx.min(w - 1.0) as usize);
        px(v, 0, yy, xx, c) as f64
    };
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    get(y0, x0) * (1.0 - fy) * (1.0 - fx)
        + get(y0, x0 + 1.0) * (1.0 - fy) * fx
        + get(y0 + 1.0, x0) * fy * (1.0 - fx)
        + get(y0 + 1.0, x0 + 1.0) * fy * fx
}

#[test]
fn resampler_matches_naive_reference() {
    let v = noise_video(1, 13, 17, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let s = 6;
    for case in 0..20 {
        let (h, w) = (rng.random_range(2.0..13.0), rng.random_range(2.0..17.0));
        let wn = win(
            rng.random_range(0.0..13.0 - h),
            rng.random_range(0.0..17.0 - w),
            h,
            w,
        );
        let angle: f64 = if case % 2 == 0 {
            0.0
        } else {
            rng.random_range(-0.6..0.6)
        };
        let hflip = case % 3 == 0;
        let aug = ClipAug {
            angle,
            hflip,
            ..ClipAug::crop(wn)
        };
        let out = clip(&v, &aug, &ID, s);
        let (cy, cx) = (wn.y + h / 2.0 - 0.5, wn.x + w / 2.0 - 0.5);
        for i in 0..s {
            for j in 0..s {
                // Output offset from the centre, mirrored, then turned counter-clockwise.
                let jj = if hflip { s - 1 - j } else { j };
                let u = (jj as f64 + 0.5) / s as f64 * w - w / 2.0;
                let q = (i as f64 + 0.5) / s as f64 * h - h / 2.0;
                let (sy, sx) = (
                    cy + u * angle.sin() + q * angle.cos(),
                    cx + u * angle.cos() - q * angle.sin(),
                );
                for c in 0..3 {
                    let want = naive_bilinear(&v, sy, sx, c);
                    let got = at(&out, 1, s, c, 0, i, j) as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "case {case} ({i},{j}) c{c}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn rotation_by_zero_is_identity_and_by_90_turns_the_picture() {
    let v = noise_video(1, 4, 4, 4);
    let w = win(0.0, 0.0, 4.0, 4.0);
    let plain = clip(&v, &ClipAug::crop(w), &ID, 4);
    // Through the general resampler at angle 0.
    let taps = resample::plan(4, 4, w, 4, 0.0, false);
    for (k, t) in taps.iter().enumerate() {
        assert_eq!(resample::sample(v.frame(0), t, 0), plain[k]);
    }
    // Counter-clockwise quarter turn: the top-right corner comes to the top-left,
    // out[i][j] = in[j][3 - i].
    let turned = clip(
        &v,
        &ClipAug {
            angle: std::f64::consts::FRAC_PI_2,
            ..ClipAug::crop(w)
        },
        &ID,
        4,
    );
    for i in 0..4 {
        for j in 0..4 {
            for c in 0..3 {
                let got = at(&turned, 1, 4, c, 0, i, j);
                assert!((got - px(&v, 0, j, 3 - i, c)).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn hflip_mirrors_each_row() {
    let v = noise_video(3, 8, 9, 6);
    for w in [win(1.0, 2.0, 5.0, 5.0), win(0.5, 0.25, 6.5, 7.0)] {
        let plain = clip(&v, &ClipAug::crop(w), &ID, 5);
        let flipped = clip(
            &v,
            &ClipAug {
                hflip: true,
                ..ClipAug::crop(w)
            },
            &ID,
            5,
        );
        for (c, t, y, x) in [(0, 0, 0, 0), (1, 2, 4, 1), (2, 1, 2, 4)] {
            let (a, b) = (
                at(&flipped, 3, 5, c, t, y, x),
                at(&plain, 3, 5, c, t, y, 4 - x),
            );
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
    }
}

fn jitter(brightness: f32, contrast: f32, saturation: f32, hue: f32) -> ClipAug {
    ClipAug {
        jitter: Some(Jitter {
            brightness,
            contrast,
            saturation,
            hue,
        }),
        ..ClipAug::crop(win(0.0, 0.0, 2.0, 2.0))
    }
}

#[test]
fn colour_ops_by_hand() {
    // One 2x2 frame, cropped whole (no resampling), values in [0, 1] (no normalisation).
    let v = pixels(
        2,
        2,
        &[[200, 100, 50], [255, 0, 0], [0, 0, 0], [10, 20, 30]],
    );
    let w = win(0.0, 0.0, 2.0, 2.0);
    let get = |aug: &ClipAug, c, y, x| at(&clip(&v, aug, &ID, 2), 1, 2, c, 0, y, x);
    // Brightness 0.5 halves; 1.5 saturates at 1.
    let b = jitter(0.5, 1.0, 1.0, 0.0);
    assert!((get(&b, 0, 0, 0) - 100.0 / 255.0).abs() < 1e-6);
    let b = jitter(1.5, 1.0, 1.0, 0.0);
    assert_eq!(get(&b, 0, 0, 1), 1.0);
    assert!((get(&b, 1, 0, 0) - 150.0 / 255.0).abs() < 1e-6);
    // Contrast 0 gives the clip's mean luma everywhere.
    let luma = |p: [f32; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let mean = (luma([200.0, 100.0, 50.0]) + luma([255.0, 0.0, 0.0]) + luma([10.0, 20.0, 30.0]))
        / 4.0
        / 255.0;
    let c0 = jitter(1.0, 0.0, 1.0, 0.0);
    for (c, y, x) in [(0, 0, 0), (2, 1, 0), (1, 1, 1)] {
        assert!((get(&c0, c, y, x) - mean).abs() < 1e-6);
    }
    // Contrast 2: 2 v - mean, clamped.
    let c2 = jitter(1.0, 2.0, 1.0, 0.0);
    assert!((get(&c2, 1, 0, 0) - (2.0 * 100.0 / 255.0 - mean)).abs() < 1e-6);
    assert_eq!(get(&c2, 0, 1, 0), 0.0);
    // Saturation 0 is each pixel's luma.
    let s0 = jitter(1.0, 1.0, 0.0, 0.0);
    assert!((get(&s0, 2, 0, 0) - luma([200.0, 100.0, 50.0]) / 255.0).abs() < 1e-6);
    // Grayscale: ITU-R 601 weights, the same value in every channel.
    let g = ClipAug {
        grayscale: true,
        ..ClipAug::crop(w)
    };
    for c in 0..3 {
        assert!((get(&g, c, 0, 1) - 0.299).abs() < 1e-6);
    }
    // Hue: red turned by a third is green, by two thirds blue, by a sixth yellow.
    let h = jitter(1.0, 1.0, 1.0, 1.0 / 3.0);
    let red: Vec<f32> = (0..3).map(|c| get(&h, c, 0, 1)).collect();
    assert!(
        red.iter()
            .zip([0.0, 1.0, 0.0])
            .all(|(a, b)| (a - b).abs() < 1e-5),
        "{red:?}"
    );
    for (shift, want) in [
        (2.0 / 3.0, [0.0, 0.0, 1.0]),
        (1.0 / 6.0, [1.0, 1.0, 0.0]),
        (-1.0 / 3.0, [0.0, 0.0, 1.0]),
    ] {
        let got = shift_hue([1.0, 0.0, 0.0], shift);
        assert!(
            got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5),
            "{shift}: {got:?}"
        );
    }
    // HSV round trip, and a gray pixel has no hue to turn.
    let p = [0.8, 0.4, 0.2];
    let (hh, ss, vv) = rgb_to_hsv(p);
    assert!((hh - 20.0 / 360.0).abs() < 1e-6 && (ss - 0.75).abs() < 1e-6 && vv == 0.8);
    assert!(hsv_to_rgb(hh, ss, vv)
        .iter()
        .zip(p)
        .all(|(a, b)| (a - b).abs() < 1e-6));
    assert_eq!(shift_hue([0.3; 3], 0.25), [0.3; 3]);
}

#[test]
fn channel_drop_and_erase_write_zero_after_normalisation() {
    let v = noise_video(2, 6, 6, 7);
    let w = win(0.0, 0.0, 6.0, 6.0);
    let plain = clip(&v, &ClipAug::crop(w), &Normalize::KINETICS, 6);
    let dropped = clip(
        &v,
        &ClipAug {
            drop_channel: Some(1),
            ..ClipAug::crop(w)
        },
        &Normalize::KINETICS,
        6,
    );
    let n = 2 * 36;
    assert!(dropped[n..2 * n].iter().all(|&x| x == 0.0));
    assert_eq!(dropped[..n], plain[..n]);
    assert_eq!(dropped[2 * n..], plain[2 * n..]);
    let erased = clip(
        &v,
        &ClipAug {
            erase: Some([1, 2, 3, 2]),
            ..ClipAug::crop(w)
        },
        &Normalize::KINETICS,
        6,
    );
    for c in 0..3 {
        for t in 0..2 {
            for y in 0..6 {
                for x in 0..6 {
                    let inside = (1..4).contains(&y) && (2..4).contains(&x);
                    let want = if inside {
                        0.0
                    } else {
                        at(&plain, 2, 6, c, t, y, x)
                    };
                    assert_eq!(at(&erased, 2, 6, c, t, y, x), want, "c{c} t{t} ({y},{x})");
                }
            }
        }
    }
}

/// Every op on, with high probabilities.
fn full_cfg() -> AugmentConfig {
    AugmentConfig {
        crop: CropMode::Resized,
        hflip: 0.5,
        rotation: 10.0,
        brightness: 0.4,
        contrast: 0.4,
        saturation: 0.4,
        hue: 0.1,
        grayscale: 0.3,
        channel_drop: 0.3,
        erase: 0.5,
        ..AugmentConfig::default()
    }
}

#[test]
fn one_draw_per_clip_applies_to_every_frame() {
    let v = still_video(5, 20, 24);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut cfgs = vec![full_cfg()];
    cfgs.push(AugmentConfig {
        crop: CropMode::Random,
        scale_jitter: [0.7, 1.3],
        ..full_cfg()
    });
    for cfg in cfgs {
        for _ in 0..30 {
            let aug = ClipAug::draw(&cfg, 20, 24, 12, &mut rng);
            let out = clip(&v, &aug, &Normalize::KINETICS, 12);
            let plane = 144;
            for c in 0..3 {
                let first = &out[c * 5 * plane..(c * 5 + 1) * plane];
                for t in 1..5 {
                    let other = &out[(c * 5 + t) * plane..(c * 5 + t + 1) * plane];
                    assert_eq!(first, other, "frame {t} differs: {aug:?}");
                }
            }
        }
    }
}

#[test]
fn draws_are_independent_across_clips_and_follow_their_probabilities() {
    let cfg = full_cfg();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let n = 2000;
    let draws: Vec<ClipAug> = (0..n)
        .map(|_| ClipAug::draw(&cfg, 40, 50, 16, &mut rng))
        .collect();
    let rate =
        |f: &dyn Fn(&ClipAug) -> bool| draws.iter().filter(|a| f(a)).count() as f64 / n as f64;
    // Binomial sd at n = 2000 is about 0.011; allow 4 sd.
    assert!((rate(&|a| a.hflip) - 0.5).abs() < 0.045);
    assert!((rate(&|a| a.grayscale) - 0.3).abs() < 0.045);
    assert!((rate(&|a| a.drop_channel.is_some()) - 0.3).abs() < 0.045);
    assert!((rate(&|a| a.erase.is_some()) - 0.5).abs() < 0.045);
    // Consecutive clips (as the clips of one video are drawn) are independent.
    let both = draws
        .windows(2)
        .filter(|p| p[0].hflip && p[1].hflip)
        .count() as f64
        / (n - 1) as f64;
    assert!((both - 0.25).abs() < 0.04, "P(flip, flip) = {both}");
    // Continuous draws stay in their ranges.
    for a in &draws {
        let w = a.window;
        let area = w.h * w.w / (40.0 * 50.0);
        assert!((0.25 - 1e-9..=1.0 + 1e-9).contains(&area), "{w:?}");
        assert!(w.y >= 0.0 && w.x >= 0.0 && w.y + w.h <= 40.0 + 1e-9 && w.x + w.w <= 50.0 + 1e-9);
        assert!(a.angle.abs() <= 10f64.to_radians());
        let j = a.jitter.expect("color_jitter = 1 with strengths > 0");
        assert!((0.6..=1.4).contains(&j.brightness) && j.hue.abs() <= 0.1);
        if let Some([y, x, h, w]) = a.erase {
            assert!(y + h <= 16 && x + w <= 16 && h >= 1 && w >= 1);
        }
    }
    let ratios: Vec<f64> = draws.iter().map(|a| a.window.w / a.window.h).collect();
    assert!(ratios
        .iter()
        .all(|r| (0.75 - 1e-9..=4.0 / 3.0 + 1e-9).contains(r)));
    // Scale jitter: square windows of data.size * s.
    let cfg = AugmentConfig {
        scale_jitter: [0.5, 1.5],
        ..AugmentConfig::default()
    };
    for _ in 0..200 {
        let w = ClipAug::draw(&cfg, 40, 50, 16, &mut rng).window;
        assert!(w.h == w.w && (8.0..=24.0).contains(&w.h));
    }
}

fn tiny_synthetic() -> Synthetic {
    Synthetic::new(SyntheticConfig {
        train_videos: 16,
        test_videos: 8,
        video_frames: 16,
        size: 24,
        ..SyntheticConfig::default()
    })
    .unwrap()
}

fn plan(augment: AugmentConfig, seed: u64) -> BatchPlan {
    BatchPlan {
        planner: std::sync::Arc::new(StridedPlanner::new(2, 4, (1, 2))),
        size: 16,
        batch_size: 3,
        seed,
        augment,
    }
}

#[test]
fn batches_are_deterministic_and_independent_of_workers() {
    let ds: std::sync::Arc<dyn VideoDataset> = std::sync::Arc::new(tiny_synthetic());
    let p = plan(full_cfg(), 11);
    let one: Vec<Vec<f32>> = Loader::spawn(ds.clone(), p.clone(), 0, 4, 1)
        .map(|b| b.unwrap().data)
        .collect();
    let three: Vec<Vec<f32>> = Loader::spawn(ds.clone(), p.clone(), 0, 4, 3)
        .map(|b| b.unwrap().data)
        .collect();
    assert_eq!(one, three);
    let other = make_batch(ds.as_ref(), &plan(full_cfg(), 12), 0).unwrap();
    assert_ne!(other.data, one[0]);
    // The two clips of a video get different augmentations.
    let b = make_batch(ds.as_ref(), &p, 1).unwrap();
    let clip_len = 3 * 4 * 16 * 16;
    assert_ne!(b.data[..clip_len], b.data[clip_len..2 * clip_len]);
}

#[test]
fn default_config_reproduces_the_crop_only_pipeline() {
    let ds = tiny_synthetic();
    let p = plan(AugmentConfig::default(), 3);
    assert_eq!(Normalize::from_cfg(&p.augment), Normalize::KINETICS);
    let (s, t) = (16, 4);
    let clip_len = 3 * t * s * s;
    for step in 0..3 {
        let got = make_batch(&ds, &p, step).unwrap();
        // The original loader, written out: the same rng, then two uniforms per clip
        // for the crop origin, then a plain crop normalised with the Kinetics stats.
        let mut want = vec![0f32; got.data.len()];
        for j in 0..p.batch_size {
            let idx = video_for(ds.len(Split::Train), &p, step, j);
            let v = VideoDataset::video(&ds, Split::Train, idx).unwrap();
            let mut rng =
                ChaCha8Rng::seed_from_u64(mix(p.seed ^ mix(step ^ mix(j as u64 ^ 0xc11b))));
            for (c, pc) in p
                .planner
                .plan(v.frames, &mut rng)
                .unwrap()
                .into_iter()
                .enumerate()
            {
                let (u, w): (f64, f64) = (rng.random(), rng.random());
                let y0 = (((v.height - s + 1) as f64 * u) as usize).min(v.height - s);
                let x0 = (((v.width - s + 1) as f64 * w) as usize).min(v.width - s);
                let k = j * 2 + c;
                for (ti, &fi) in pc.indices.iter().enumerate() {
                    for y in 0..s {
                        for x in 0..s {
                            for ch in 0..3 {
                                want[k * clip_len + ((ch * t + ti) * s + y) * s + x] =
                                    (px(&v, fi, y0 + y, x0 + x, ch) - MEAN[ch]) / STD[ch];
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(got.data, want, "step {step}");
    }
}

#[test]
fn bad_augment_keys_name_the_key() {
    let d = tempfile::tempdir().unwrap();
    let f = super::common::tiny_recipe(d.path(), "");
    let load = |sets: &[&str]| {
        vssl::recipe::load(&vssl::recipe::RecipeSource::with_sets(
            f.clone(),
            sets.iter().map(|s| s.to_string()).collect(),
        ))
    };
    for (set, key) in [
        ("data.augment.hflip=1.5", "data.augment.hflip"),
        ("data.augment.hue=0.7", "data.augment.hue"),
        ("data.augment.std=[0.2,0.0,0.2]", "data.augment.std"),
        ("data.augment.crop_area=[0.5,0.2]", "data.augment.crop_area"),
        ("data.augment.flip=0.5", "flip"),
        ("data.augment.crop=\"corner\"", "data.augment.crop"),
    ] {
        let e = load(&[set]).expect_err(set).to_string();
        assert!(e.contains(key), "{set}: {e}");
    }
    let r = load(&["data.augment.hflip=0.5", "data.augment.crop=\"resized\""]).unwrap();
    assert_eq!(r.data.augment.hflip, 0.5);
    assert_eq!(r.data.augment.crop, CropMode::Resized);
    // The resolved recipe round-trips the new table.
    assert!(r.to_toml().contains("[data.augment]"));
}

/// Per-op colour probabilities (TCLR's): each op is applied to its share of the clips,
/// independently; at 1 (default) nothing extra is drawn, so the draws of a config that
/// does not set them are those of earlier versions.
#[test]
fn per_op_colour_probabilities() {
    let cfg = AugmentConfig {
        brightness: 0.25,
        contrast: 0.25,
        saturation: 0.25,
        hue: 0.1,
        brightness_p: 0.3,
        contrast_p: 0.25,
        saturation_p: 0.3,
        hue_p: 0.3,
        ..AugmentConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let n = 2000;
    let js: Vec<Jitter> = (0..n)
        .map(|_| ClipAug::draw(&cfg, 40, 50, 16, &mut rng).jitter.unwrap())
        .collect();
    let rate = |f: &dyn Fn(&Jitter) -> bool| js.iter().filter(|j| f(j)).count() as f64 / n as f64;
    assert!((rate(&|j| j.brightness != 1.0) - 0.3).abs() < 0.045);
    assert!((rate(&|j| j.contrast != 1.0) - 0.25).abs() < 0.045);
    assert!((rate(&|j| j.saturation != 1.0) - 0.3).abs() < 0.045);
    assert!((rate(&|j| j.hue != 0.0) - 0.3).abs() < 0.045);
    let both = rate(&|j| j.brightness != 1.0 && j.hue != 0.0);
    assert!((both - 0.09).abs() < 0.03, "P(brightness, hue) = {both}");
    // Probabilities of 1 change nothing: the same draws as without the keys.
    let plain = full_cfg();
    let explicit = AugmentConfig {
        brightness_p: 1.0,
        hue_p: 1.0,
        ..full_cfg()
    };
    let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(3), ChaCha8Rng::seed_from_u64(3));
    for _ in 0..50 {
        let x = ClipAug::draw(&plain, 40, 50, 16, &mut a);
        assert_eq!(x, ClipAug::draw(&explicit, 40, 50, 16, &mut b));
    }
    let bad = AugmentConfig {
        hue_p: 1.5,
        ..AugmentConfig::default()
    };
    assert_eq!(bad.validate().unwrap_err().0, "hue_p");
}
