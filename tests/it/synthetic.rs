//! The synthetic dataset: determinism, splits, label balance, the time-reverse semantics of
//! the classes (measured from the pixels), and the UCF101-layout export.

use std::collections::{BTreeSet, HashSet};

use vssl::data::synthetic::{
    reverse_pairs, Pattern, Shape, Synthetic, SyntheticConfig, CLASS_NAMES,
};
use vssl::data::{Split, Video};

fn synth(cfg: SyntheticConfig) -> Synthetic {
    Synthetic::new(cfg).expect("valid config")
}

/// No nuisance: flat background, no drift, no distractors, no sink, no noise, so the
/// foreground object can be segmented against the background of its row.
fn clean_cfg() -> SyntheticConfig {
    SyntheticConfig {
        train_videos: 64,
        test_videos: 16,
        video_frames: 16,
        distractors: 0,
        drift: false,
        texture: false,
        noise: 0.0,
        sink: 0.0,
        ..SyntheticConfig::default()
    }
}

fn reversed(v: &Video) -> Video {
    let mut data = Vec::with_capacity(v.data.len());
    for t in (0..v.frames).rev() {
        data.extend_from_slice(v.frame(t));
    }
    Video { data, ..v.clone() }
}

#[test]
fn config_defaults_validation_and_serde() {
    let d = SyntheticConfig::default();
    assert_eq!(
        (
            d.seed,
            d.train_videos,
            d.test_videos,
            d.video_frames,
            d.size
        ),
        (0, 480, 240, 32, 32)
    );
    assert_eq!(
        (d.distractors, d.drift, d.texture, d.noise),
        (2, true, true, 6.0)
    );
    assert!(d.validate().is_ok());

    let bad = [
        (
            "size",
            SyntheticConfig {
                size: 8,
                ..d.clone()
            },
        ),
        (
            "video_frames",
            SyntheticConfig {
                video_frames: 4,
                ..d.clone()
            },
        ),
        (
            "train_videos",
            SyntheticConfig {
                train_videos: 7,
                ..d.clone()
            },
        ),
        (
            "test_videos",
            SyntheticConfig {
                test_videos: 0,
                ..d.clone()
            },
        ),
        (
            "noise",
            SyntheticConfig {
                noise: f32::NAN,
                ..d.clone()
            },
        ),
        (
            "noise",
            SyntheticConfig {
                noise: -1.0,
                ..d.clone()
            },
        ),
        (
            "shapes",
            SyntheticConfig {
                shapes: vec![],
                ..d.clone()
            },
        ),
        (
            "object_scale",
            SyntheticConfig {
                object_scale: 2.0,
                ..d.clone()
            },
        ),
        (
            "motion_scale",
            SyntheticConfig {
                motion_scale: f32::INFINITY,
                ..d.clone()
            },
        ),
    ];
    for (key, cfg) in bad {
        let (k, msg) = cfg.validate().expect_err(key);
        assert_eq!(k, key, "{msg}");
        let err = Synthetic::new(cfg).expect_err("new must reject");
        assert!(err.is_bad_input() && err.to_string().contains(key), "{err}");
    }

    let cfg: SyntheticConfig = serde_json::from_str(r#"{"seed": 3, "drift": false}"#).unwrap();
    assert_eq!(
        cfg,
        SyntheticConfig {
            seed: 3,
            drift: false,
            ..SyntheticConfig::default()
        }
    );
    assert!(serde_json::from_str::<SyntheticConfig>(r#"{"sede": 3}"#).is_err());
    let cfg: SyntheticConfig =
        serde_json::from_str(r#"{"shapes": ["ring", "cross"], "pattern": "checks"}"#).unwrap();
    assert_eq!(
        (cfg.shapes, cfg.pattern),
        (vec![Shape::Ring, Shape::Cross], Pattern::Checks)
    );
    assert!(serde_json::from_str::<SyntheticConfig>(r#"{"shapes": ["blob"]}"#).is_err());
    let json = serde_json::to_string(&d).unwrap();
    assert_eq!(serde_json::from_str::<SyntheticConfig>(&json).unwrap(), d);
}

#[test]
fn classes_come_in_reverse_pairs() {
    assert_eq!(reverse_pairs(), vec![(0, 1), (2, 3), (4, 5), (6, 7)]);
    assert_eq!(CLASS_NAMES.len(), 8);
    let s = synth(SyntheticConfig::default());
    assert_eq!(s.num_classes(), CLASS_NAMES.len());
    for name in CLASS_NAMES {
        assert!(
            name.chars().next().unwrap().is_ascii_uppercase()
                && name.chars().all(|c| c.is_ascii_alphanumeric())
        );
    }
}

#[test]
fn out_of_range_index_or_class_is_an_error_not_a_panic() {
    let s = synth(clean_cfg());
    for (split, len) in [(Split::Train, 64), (Split::Test, 16)] {
        let e = s.video(split, len).unwrap_err();
        assert!(
            e.is_bad_input() && e.to_string().contains("out of range"),
            "{e}"
        );
        assert!(s.label(split, len).unwrap_err().is_bad_input());
        assert!(s.video(split, len - 1).is_ok());
    }
    let e = s.render(0, CLASS_NAMES.len() as u32).unwrap_err();
    assert!(e.is_bad_input() && e.to_string().contains("class 8"), "{e}");
}

#[test]
fn video_shape_and_content() {
    let s = synth(SyntheticConfig::default());
    let v = s.video(Split::Train, 3).unwrap();
    assert_eq!((v.frames, v.height, v.width), (32, 32, 32));
    assert_eq!(v.data.len(), 32 * 32 * 32 * 3);
    // Not degenerate: the pixel values spread and consecutive frames differ.
    let mean = v.data.iter().map(|&b| b as f64).sum::<f64>() / v.data.len() as f64;
    let var = v
        .data
        .iter()
        .map(|&b| (b as f64 - mean).powi(2))
        .sum::<f64>()
        / v.data.len() as f64;
    assert!(var.sqrt() > 10.0, "std {}", var.sqrt());
    assert_ne!(v.frame(0), v.frame(1));

    let s = synth(SyntheticConfig {
        size: 48,
        video_frames: 9,
        ..SyntheticConfig::default()
    });
    let v = s.video(Split::Test, 0).unwrap();
    assert_eq!(
        (v.frames, v.height, v.width, v.data.len()),
        (9, 48, 48, 9 * 48 * 48 * 3)
    );
}

#[test]
fn deterministic_and_seed_dependent() {
    let cfg = SyntheticConfig {
        train_videos: 16,
        test_videos: 16,
        ..SyntheticConfig::default()
    };
    let (a, b) = (synth(cfg.clone()), synth(cfg.clone()));
    for i in [0, 5, 15] {
        assert_eq!(
            a.video(Split::Train, i).unwrap(),
            b.video(Split::Train, i).unwrap()
        );
        assert_eq!(
            a.video(Split::Test, i).unwrap(),
            b.video(Split::Test, i).unwrap()
        );
        // Repeated calls on one instance agree too (no hidden state).
        assert_eq!(
            a.video(Split::Train, i).unwrap(),
            a.video(Split::Train, i).unwrap()
        );
    }
    let other = synth(SyntheticConfig { seed: 1, ..cfg });
    for i in [0, 5, 15] {
        assert_ne!(
            a.video(Split::Train, i).unwrap(),
            other.video(Split::Train, i).unwrap()
        );
    }
}

#[test]
fn train_and_test_differ() {
    let s = synth(SyntheticConfig {
        train_videos: 32,
        test_videos: 32,
        ..SyntheticConfig::default()
    });
    let mut seen = HashSet::new();
    for split in [Split::Train, Split::Test] {
        for i in 0..32 {
            assert!(
                seen.insert(s.video_seed(split, i)),
                "seed reused at {split:?} {i}"
            );
        }
    }
    let train: HashSet<Vec<u8>> = (0..32)
        .map(|i| s.video(Split::Train, i).unwrap().data)
        .collect();
    assert_eq!(train.len(), 32);
    for i in 0..32 {
        assert!(
            !train.contains(&s.video(Split::Test, i).unwrap().data),
            "test video {i} also in train"
        );
    }
}

#[test]
fn labels_are_balanced() {
    let s = synth(SyntheticConfig::default());
    assert_eq!((s.len(Split::Train), s.len(Split::Test)), (480, 240));
    for (split, per_class) in [(Split::Train, 60), (Split::Test, 30)] {
        let mut counts = [0usize; 8];
        for i in 0..s.len(split) {
            counts[s.label(split, i).unwrap() as usize] += 1;
        }
        assert_eq!(counts, [per_class; 8], "{split:?}");
    }
    // Not a multiple of the class count: counts differ by at most one.
    let s = synth(SyntheticConfig {
        train_videos: 21,
        ..SyntheticConfig::default()
    });
    let mut counts = [0usize; 8];
    for i in 0..21 {
        counts[s.label(Split::Train, i).unwrap() as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c == 2 || c == 3), "{counts:?}");
}

/// With all nuisances on, the odd class of each pair is literally the even class played
/// backwards, for the same scene seed.
#[test]
fn odd_class_is_even_class_reversed() {
    // Every nuisance but the downward flow (drift and falling distractors keep playback
    // time in every class).
    let s = synth(SyntheticConfig {
        distractors: 0,
        drift: false,
        sink: 0.0,
        ..SyntheticConfig::default()
    });
    for seed in [0u64, 17, 123_456_789] {
        for (fwd, back) in reverse_pairs() {
            let f = s.render(seed, fwd).unwrap();
            let b = s.render(seed, back).unwrap();
            assert_ne!(f, b);
            assert_eq!(reversed(&f), b, "seed {seed}, classes {fwd}/{back}");
        }
    }
}

/// Motion of the foreground object measured from the pixels of a clean video.
#[derive(Debug)]
struct Measured {
    /// Centroid velocity, pixels per frame (y down).
    vx: f64,
    vy: f64,
    /// Area change, pixels per frame.
    area: f64,
    /// Angular velocity, radians per frame, positive = clockwise on screen.
    omega: f64,
}

fn slope(ys: &[f64]) -> f64 {
    let n = ys.len() as f64;
    let tm = (n - 1.0) / 2.0;
    let ym = ys.iter().sum::<f64>() / n;
    let num: f64 = ys
        .iter()
        .enumerate()
        .map(|(t, y)| (t as f64 - tm) * (y - ym))
        .sum();
    let den: f64 = (0..ys.len()).map(|t| (t as f64 - tm).powi(2)).sum();
    num / den
}

fn measure(v: &Video) -> Measured {
    let (s, t_n) = (v.width, v.frames);
    let px = |t: usize, y: usize, x: usize| {
        let o = v.offset(t, y, x);
        [v.data[o] as f64, v.data[o + 1] as f64, v.data[o + 2] as f64]
    };
    let lum = |t: usize, y: usize, x: usize| px(t, y, x).iter().sum::<f64>() / 3.0;
    // Foreground mask: the background is flat along each row, and column 0 is background.
    let (mut cxs, mut cys, mut areas) = (vec![], vec![], vec![]);
    for t in 0..t_n {
        let (mut n, mut sx, mut sy) = (0.0, 0.0, 0.0);
        for y in 0..s {
            let bg = px(t, y, 0);
            for x in 0..s {
                let p = px(t, y, x);
                if (0..3).map(|c| (p[c] - bg[c]).abs()).sum::<f64>() > 40.0 {
                    n += 1.0;
                    sx += x as f64 + 0.5;
                    sy += y as f64 + 0.5;
                }
            }
        }
        assert!(n > 4.0, "foreground object not found in frame {t}");
        cxs.push(sx / n);
        cys.push(sy / n);
        areas.push(n);
    }
    // Rotation: least squares for brightness constancy I_t = -omega * grad(I) . u with the
    // rotational field u = (-(y - cy), x - cx) around the centroid, near the object.
    let (mut num, mut den) = (0.0, 0.0);
    for t in 0..t_n - 1 {
        let (cx, cy) = ((cxs[t] + cxs[t + 1]) / 2.0, (cys[t] + cys[t + 1]) / 2.0);
        let radius = (areas[t].max(areas[t + 1]) / std::f64::consts::PI).sqrt() * 1.3 + 1.0;
        for y in 1..s - 1 {
            for x in 1..s - 1 {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                if dx * dx + dy * dy > radius * radius {
                    continue;
                }
                let g = |dt: usize| {
                    let gx = (lum(t + dt, y, x + 1) - lum(t + dt, y, x - 1)) / 2.0;
                    let gy = (lum(t + dt, y + 1, x) - lum(t + dt, y - 1, x)) / 2.0;
                    (gx, gy)
                };
                let ((gx0, gy0), (gx1, gy1)) = (g(0), g(1));
                let (gx, gy) = ((gx0 + gx1) / 2.0, (gy0 + gy1) / 2.0);
                let it = lum(t + 1, y, x) - lum(t, y, x);
                let gu = gx * -dy + gy * dx;
                num += it * gu;
                den += gu * gu;
            }
        }
    }
    Measured {
        vx: slope(&cxs),
        vy: slope(&cys),
        area: slope(&areas),
        omega: -num / den.max(1e-9),
    }
}

/// Whether the measured motion is the motion class `label` names.
fn check(label: u32, m: &Measured) -> Result<(), String> {
    let still = |v: f64| v.abs() < 0.05;
    let ok = match label {
        0 => m.vx < -0.15 && still(m.vy),
        1 => m.vx > 0.15 && still(m.vy),
        2 => m.vy < -0.15 && still(m.vx),
        3 => m.vy > 0.15 && still(m.vx),
        4 => m.omega > 0.01 && still(m.vx) && still(m.vy) && m.area.abs() < 0.5,
        5 => m.omega < -0.01 && still(m.vx) && still(m.vy) && m.area.abs() < 0.5,
        6 => m.area > 0.5 && still(m.vx) && still(m.vy),
        7 => m.area < -0.5 && still(m.vx) && still(m.vy),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "measured {m:?} does not match class {}",
            CLASS_NAMES[label as usize]
        ))
    }
}

/// The label names the foreground motion measured from the frames, for every video; and a
/// video of class 2k played backwards measures as class 2k+1. Mislabelled or un-reversed
/// classes fail here.
#[test]
fn labels_match_measured_motion_and_reverse() {
    assert_labels_match_motion(&synth(clean_cfg()));
}

/// Every video of both splits measures as its label, and played backwards as the
/// reverse class.
fn assert_labels_match_motion(s: &Synthetic) {
    let mut failures = vec![];
    for split in [Split::Train, Split::Test] {
        for i in 0..s.len(split) {
            let label = s.label(split, i).unwrap();
            let v = s.video(split, i).unwrap();
            if let Err(e) = check(label, &measure(&v)) {
                failures.push(format!("{split:?} {i}: {e}"));
            }
            if let Err(e) = check(label ^ 1, &measure(&reversed(&v))) {
                failures.push(format!("{split:?} {i} reversed: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The other world's knobs keep the labels honest: other shapes (ring, cross, diamond,
/// ellipse), smaller objects, faster motions and a larger frame still measure as their
/// class, and reversed as the reverse class.
#[test]
fn other_shapes_sizes_and_speeds_keep_labels_matching_motion() {
    assert_labels_match_motion(&synth(SyntheticConfig {
        size: 40,
        shapes: vec![Shape::Ring, Shape::Cross, Shape::Diamond, Shape::Ellipse],
        object_scale: 0.8,
        motion_scale: 1.5,
        ..clean_cfg()
    }));
}

/// Each shape draws a distinct silhouette, and the three background patterns give
/// different textures whose mean colour is the same kind of thing (no pattern is blank).
#[test]
fn shapes_and_patterns_render_differently() {
    let area = |shape: Shape| {
        let s = synth(SyntheticConfig {
            shapes: vec![shape],
            ..clean_cfg()
        });
        // Class 4 (rotation) keeps the object whole inside the frame.
        let v = s.render(7, 4).unwrap();
        let bg = &v.data[v.offset(0, 0, 0)..v.offset(0, 0, 0) + 3];
        (0..v.height * v.width)
            .filter(|&p| {
                let o = p * 3;
                (0..3)
                    .map(|c| (v.data[o + c] as i32 - bg[c] as i32).abs())
                    .sum::<i32>()
                    > 40
            })
            .count()
    };
    let shapes = [
        Shape::Disc,
        Shape::Square,
        Shape::Triangle,
        Shape::Bar,
        Shape::Ring,
        Shape::Cross,
        Shape::Diamond,
        Shape::Ellipse,
    ];
    let areas: Vec<usize> = shapes.iter().map(|&sh| area(sh)).collect();
    for (i, a) in areas.iter().enumerate() {
        assert!(*a > 10, "{:?} covers {a} pixels", shapes[i]);
    }
    let distinct: BTreeSet<usize> = areas.iter().copied().collect();
    assert!(distinct.len() >= 6, "areas {areas:?}");
    // The ring has a hole: it covers less than the disc of the same radius.
    assert!(areas[4] < areas[0], "{areas:?}");

    let first_frame = |pattern: Pattern| {
        let s = synth(SyntheticConfig {
            pattern,
            distractors: 0,
            noise: 0.0,
            ..SyntheticConfig::default()
        });
        s.render(3, 4).unwrap().frame(0).to_vec()
    };
    let frames = [Pattern::Noise, Pattern::Stripes, Pattern::Checks].map(first_frame);
    assert_ne!(frames[0], frames[1]);
    assert_ne!(frames[1], frames[2]);
    for f in &frames {
        let mean = f.iter().map(|&b| b as f64).sum::<f64>() / f.len() as f64;
        let std =
            (f.iter().map(|&b| (b as f64 - mean).powi(2)).sum::<f64>() / f.len() as f64).sqrt();
        assert!(std > 10.0, "a flat texture: std {std}");
    }
}

#[cfg(feature = "video")]
mod export {
    use super::*;
    use std::path::Path;
    use std::process::Command;
    use vssl::data::encode::{write_ucf101_layout, write_video, Summary};

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `(class, group)` of `Class/v_Class_gXX_cYY.avi`, checking the name's shape.
    fn parse_entry(entry: &str) -> (String, usize) {
        let (class, file) = entry.split_once('/').expect(entry);
        let rest = file.strip_prefix(&format!("v_{class}_g")).expect(entry);
        let (group, rest) = rest.split_once("_c").expect(entry);
        assert!(rest.ends_with(".avi") && rest.len() == 6, "{entry}");
        assert_eq!(group.len(), 2, "{entry}");
        (class.to_string(), group.parse().expect(entry))
    }

    #[test]
    fn writes_ucf101_layout() {
        let cfg = SyntheticConfig {
            train_videos: 16,
            test_videos: 8,
            video_frames: 16,
            ..SyntheticConfig::default()
        };
        let s = synth(cfg);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let summary = write_ucf101_layout(&s, out, 25).unwrap();
        assert_eq!(
            summary,
            Summary {
                videos: 24,
                classes: 8
            }
        );

        let class_ind = lines(&out.join("splits/classInd.txt"));
        let expected: Vec<String> = CLASS_NAMES
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} {c}", i + 1))
            .collect();
        assert_eq!(class_ind, expected);

        let train = lines(&out.join("splits/trainlist01.txt"));
        let test = lines(&out.join("splits/testlist01.txt"));
        assert_eq!((train.len(), test.len()), (16, 8));
        let (mut train_groups, mut test_groups) = (BTreeSet::new(), BTreeSet::new());
        for (i, line) in train.iter().enumerate() {
            let (entry, label) = line.split_once(' ').expect(line);
            let (class, group) = parse_entry(entry);
            let label: usize = label.parse().expect(line);
            assert_eq!(CLASS_NAMES[label - 1], class, "{line}");
            assert_eq!(
                label - 1,
                s.label(Split::Train, i).unwrap() as usize,
                "{line}"
            );
            train_groups.insert(group);
        }
        for (i, entry) in test.iter().enumerate() {
            assert!(!entry.contains(' '), "test list has no labels: {entry}");
            let (class, group) = parse_entry(entry);
            assert_eq!(
                class,
                CLASS_NAMES[s.label(Split::Test, i).unwrap() as usize]
            );
            test_groups.insert(group);
        }
        assert_eq!(train_groups.first(), Some(&1));
        assert!(
            train_groups.last() < test_groups.first(),
            "{train_groups:?} vs {test_groups:?}"
        );

        // Every listed file exists, nothing else (no temporary files left behind).
        let mut listed: BTreeSet<String> = train
            .iter()
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect();
        listed.extend(test.iter().cloned());
        let mut on_disk = BTreeSet::new();
        for class in std::fs::read_dir(out.join("videos")).unwrap() {
            let class = class.unwrap();
            for f in std::fs::read_dir(class.path()).unwrap() {
                let f = f.unwrap();
                assert!(f.metadata().unwrap().len() > 0);
                on_disk.insert(format!(
                    "{}/{}",
                    class.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                ));
            }
        }
        assert_eq!(listed, on_disk);
        let split_files: BTreeSet<String> = std::fs::read_dir(out.join("splits"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            split_files,
            ["classInd.txt", "testlist01.txt", "trainlist01.txt"]
                .map(String::from)
                .into()
        );

        // The container really holds 16 frames of 32x32 at 25 fps.
        let file = out.join("videos").join(train[0].split(' ').next().unwrap());
        let probe = Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args([
                "-show_entries",
                "stream=nb_read_frames,width,height,avg_frame_rate",
                "-of",
                "csv=p=0",
            ])
            .arg(&file)
            .output();
        match probe {
            Err(e) => println!("NOTICE: ffprobe not runnable ({e}); skipping the container check"),
            Ok(o) => {
                assert!(
                    o.status.success(),
                    "ffprobe failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
                // csv order follows the stream section: width, height, avg_frame_rate, nb_read_frames.
                assert_eq!(text, "32,32,25/1,16", "ffprobe of {}", file.display());
            }
        }
    }

    #[test]
    fn write_video_rejects_odd_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let v = Video {
            frames: 2,
            height: 15,
            width: 16,
            data: vec![0; 2 * 15 * 16 * 3],
        };
        let path = dir.path().join("odd.avi");
        let err = write_video(&path, &v, 25).unwrap_err();
        assert!(
            err.is_bad_input() && err.to_string().contains("even"),
            "{err}"
        );
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
