//! Property tests: invariants checked over many random cases drawn from fixed seeds
//! (so a failure reproduces; the message names the case). Clip sampling of every
//! shipped method's planner, augmentation windows, and the resolved recipe's round
//! trip. (conv3d on random geometries against the naive reference is in `ops`.)

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use candle_core::Device;
use vssl::data::augment::{AugmentConfig, ClipAug, CropMode};
use vssl::data::clip::ClipPlanner;
use vssl::data::sampler::{clip_indices, random_start, uniform_starts, StridedPlanner};
use vssl::recipe::{self, RecipeSource};

use super::common::repo;

const QUICK: [&str; 4] = [
    "experiments/quickstart.toml",
    "experiments/speed_sort_quick.toml",
    "experiments/temporal_contrast_quick.toml",
    "experiments/temporal_discriminative_quick.toml",
];

/// Every clip of every shipped planner: the promised number of clips and frames,
/// indices inside the video, and, when the video is long enough not to wrap, evenly
/// spaced frames at the clip's recorded speed and direction.
#[test]
fn every_planner_plans_clips_inside_the_video() {
    let mut planners: Vec<(String, std::sync::Arc<dyn ClipPlanner>)> = Vec::new();
    for f in QUICK.iter().chain(&[
        "experiments/tclr_r3d18_16x4_ucf101.toml",
        "experiments/vtdl_r3d18_16x4_ucf101.toml",
    ]) {
        let r = recipe::load(&RecipeSource {
            file: repo().join(f),
            sets: vec![
                "backbone.widths=[2,2,2,2]".into(),
                "backbone.arch=\"r3d_small\"".into(),
            ],
            ..Default::default()
        })
        .unwrap();
        let p = vssl::registry::pretext(&r.method, &r.backbone, r.data.frames, 0, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        planners.push((f.to_string(), p.planner()));
    }
    planners.push((
        "strided 2x5 @1-4".into(),
        std::sync::Arc::new(StridedPlanner::new(2, 5, (1, 4))),
    ));
    let mut rng = ChaCha8Rng::seed_from_u64(81);
    for (name, planner) in &planners {
        for case in 0..300 {
            let len = if case % 3 == 0 {
                2000
            } else {
                rng.random_range(1..=120)
            };
            let mut draw = ChaCha8Rng::seed_from_u64(rng.random());
            let Ok(clips) = planner.plan(len, &mut draw) else {
                // Planners may refuse videos too short for their clips, never long ones.
                assert!(len < 2000, "{name}: refused a {len}-frame video");
                continue;
            };
            assert_eq!(clips.len(), planner.clips_per_video(), "{name} len {len}");
            for c in &clips {
                assert_eq!(c.indices.len(), planner.frames(), "{name} len {len}: {c:?}");
                assert!(
                    c.indices.iter().all(|&i| i < len),
                    "{name} len {len}: {c:?}"
                );
                if len == 2000 && c.indices.len() > 1 {
                    let step = c.indices[1] as i64 - c.indices[0] as i64;
                    let want = if c.meta.reverse {
                        -(c.meta.speed as i64)
                    } else {
                        c.meta.speed as i64
                    };
                    assert!(
                        c.indices
                            .windows(2)
                            .all(|w| w[1] as i64 - w[0] as i64 == step),
                        "{name}: unevenly spaced {c:?}"
                    );
                    assert_eq!(
                        step, want,
                        "{name}: spacing differs from the recorded speed: {c:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn sampler_helpers_keep_clips_inside_the_video() {
    let mut rng = ChaCha8Rng::seed_from_u64(82);
    for case in 0..2000 {
        let len = rng.random_range(1..=200);
        let frames = rng.random_range(1..=32);
        let stride = rng.random_range(1..=8);
        let span = (frames - 1) * stride + 1;
        let start = random_start(len, span, &mut rng);
        let idx = clip_indices(len, frames, stride, start);
        assert!(idx.iter().all(|&i| i < len), "case {case}");
        if span <= len {
            // Fits: no wrap, a contiguous strided run.
            assert!(
                start + span <= len,
                "case {case}: start {start} span {span} len {len}"
            );
            assert_eq!(
                idx,
                (0..frames).map(|i| start + i * stride).collect::<Vec<_>>()
            );
        }
        let n = rng.random_range(1..=10);
        let starts = uniform_starts(len, frames, stride, n);
        assert_eq!(starts.len(), n);
        assert!(
            starts.windows(2).all(|w| w[0] <= w[1]),
            "case {case}: {starts:?}"
        );
        if span <= len {
            assert!(
                starts.iter().all(|&s| s + span <= len),
                "case {case}: {starts:?}"
            );
        }
    }
}

/// A random but valid `[data.augment]`.
fn random_augment(rng: &mut ChaCha8Rng) -> AugmentConfig {
    let mut c = AugmentConfig {
        crop: [CropMode::Random, CropMode::Resized, CropMode::Centre][rng.random_range(0..3)],
        hflip: rng.random(),
        grayscale: rng.random::<f64>() * 0.5,
        channel_drop: rng.random::<f64>() * 0.5,
        erase: rng.random::<f64>() * 0.5,
        color_jitter: rng.random(),
        ..Default::default()
    };
    if rng.random_bool(0.5) {
        let lo = 0.5 + rng.random::<f64>();
        c.scale_jitter = [lo, lo + rng.random::<f64>()];
    }
    if rng.random_bool(0.5) {
        let lo = 0.05 + rng.random::<f64>() * 0.9;
        c.crop_area = [lo, lo + (1.0 - lo) * rng.random::<f64>()];
    }
    c
}

#[test]
fn augmentation_windows_stay_inside_the_frame() {
    let mut rng = ChaCha8Rng::seed_from_u64(83);
    let eps = 1e-9;
    for case in 0..5000 {
        let cfg = random_augment(&mut rng);
        let size = rng.random_range(1..=64);
        // Random and centre crops cut `size` pixels: frames at least that big.
        let min = if cfg.crop == CropMode::Resized {
            1
        } else {
            size
        };
        let (h, w) = (
            rng.random_range(min..=min + 80),
            rng.random_range(min..=min + 80),
        );
        let a = ClipAug::draw(&cfg, h, w, size, &mut rng);
        let win = a.window;
        let what = || format!("case {case}: {h}x{w} -> {size}, {cfg:?}: {win:?}");
        assert!(win.h > 0.0 && win.w > 0.0, "{}", what());
        assert!(win.y >= -eps && win.x >= -eps, "{}", what());
        assert!(win.y + win.h <= h as f64 + eps, "{}", what());
        assert!(win.x + win.w <= w as f64 + eps, "{}", what());
        if let Some(c) = a.drop_channel {
            assert!(c < 3, "{}", what());
        }
        if let Some([y, x, eh, ew]) = a.erase {
            assert!(
                eh > 0 && ew > 0 && y + eh <= size && x + ew <= size,
                "{}: erase {:?}",
                what(),
                a.erase
            );
        }
    }
}

#[test]
fn resolved_recipes_round_trip_under_random_overrides() {
    let pool = [
        "train.lr=0.05",
        "train.seed=7",
        "train.steps=9",
        "train.batch_size=4",
        "train.log_every=3",
        "train.on_nonfinite=\"skip_step\"",
        "train.grad_clip=1.5",
        "data.size=48",
        "data.workers=3",
        "data.augment.hflip=0.5",
        "data.augment.grayscale=0.2",
        "data.augment.crop=\"resized\"",
        "backbone.norm=\"tgn\"",
        "backbone.widths=[8,8,16,16]",
        "eval.test_clips=2",
        "eval.batch_size=7",
        "name=\"renamed\"",
    ];
    let d = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(84);
    let mut resolved = 0;
    for case in 0..120 {
        let f = QUICK[rng.random_range(0..QUICK.len())];
        let sets: Vec<String> = (0..rng.random_range(0..6))
            .map(|_| pool[rng.random_range(0..pool.len())].to_string())
            .collect();
        let Ok(r) = recipe::load(&RecipeSource {
            file: repo().join(f),
            sets: sets.clone(),
            ..Default::default()
        }) else {
            continue; // an invalid combination: refused, which is fine
        };
        resolved += 1;
        let text = r.to_toml();
        let p = d.path().join(format!("case{case}.toml"));
        std::fs::write(&p, &text).unwrap();
        let again = recipe::load(&RecipeSource {
            file: p,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("case {case} ({f} {sets:?}): {e}\n{text}"));
        assert_eq!(again.to_toml(), text, "case {case} ({f} {sets:?})");
        // The overrides took effect.
        for s in &sets {
            let (k, v) = s.split_once('=').unwrap();
            let leaf = k.rsplit('.').next().unwrap();
            assert!(
                text.lines()
                    .any(|l| l.replace(' ', "").starts_with(&format!("{leaf}="))
                        && l.replace(' ', "").ends_with(&v.replace(' ', ""))),
                "case {case}: {s} missing from\n{text}"
            );
        }
    }
    assert!(
        resolved >= 60,
        "only {resolved} of 120 combinations resolved"
    );
}
