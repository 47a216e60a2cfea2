//! Real video datasets: decoding real files (XviD AVI, H.264 MP4/MKV, VP8 WebM) made
//! with the ffmpeg CLI, UCF101/HMDB51/CSV/folder layouts and their split files, loader
//! determinism across worker counts, and bad videos skipped and listed during training
//! and evaluation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vssl::data::datasets::{self, VideoDataset};
use vssl::data::decode::{decode_video, decode_video_limited};
use vssl::data::loader::{BatchPlan, HostBatch, Loader};
use vssl::data::sampler::StridedPlanner;
use vssl::data::Split;
use vssl::recipe::{DataConfig, DataKind};

use crate::common::{ffmpeg_lavfi, run, stderr, stdout, tiny_recipe, train, vssl};

/// Writes a `w`x`h` test-pattern video of `frames` frames with the ffmpeg CLI.
pub(crate) fn make_video(path: &Path, codec: &str, frames: usize, w: usize, h: usize) {
    let codec_args: &[&str] = match codec {
        "xvid" => &["-c:v", "mpeg4", "-vtag", "xvid", "-q:v", "5"],
        // With B-frames, as many UCF101 files: decode order differs from display order.
        "xvid-b" => &["-c:v", "mpeg4", "-vtag", "xvid", "-q:v", "5", "-bf", "2"],
        "h264" => &[
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-preset",
            "ultrafast",
        ],
        "vp8" => &["-c:v", "libvpx", "-b:v", "200k"],
        other => panic!("unknown codec {other}"),
    };
    let size = format!("testsrc=size={w}x{h}:rate=25");
    ffmpeg_lavfi(path, &size, frames, codec_args);
}

const CLASSES: [&str; 3] = ["Alpha", "Beta", "Gamma"];

/// UCF101 layout under `dir`: `videos/<Class>/v_<Class>_gGG_cCC.avi` copies of one
/// 20-frame XviD file, 2 train + 1 test video per class, CRLF split files for split 1.
fn ucf101_layout(dir: &Path) -> (PathBuf, PathBuf) {
    let (videos, splits) = (dir.join("videos"), dir.join("splits"));
    std::fs::create_dir_all(&splits).unwrap();
    let template = dir.join("template.avi");
    make_video(&template, "xvid", 20, 32, 24);
    let (mut train, mut test, mut ind) = (String::new(), String::new(), String::new());
    for (i, c) in CLASSES.iter().enumerate() {
        std::fs::create_dir_all(videos.join(c)).unwrap();
        ind.push_str(&format!("{} {c}\r\n", i + 1));
        for g in 1..=3 {
            let name = format!("{c}/v_{c}_g{g:02}_c01.avi");
            std::fs::copy(&template, videos.join(&name)).unwrap();
            if g < 3 {
                train.push_str(&format!("{name} {}\r\n", i + 1));
            } else {
                test.push_str(&format!("{name}\r\n"));
            }
        }
    }
    std::fs::write(splits.join("classInd.txt"), ind).unwrap();
    std::fs::write(splits.join("trainlist01.txt"), train).unwrap();
    std::fs::write(splits.join("testlist01.txt"), test).unwrap();
    (videos, splits)
}

fn cfg(kind: DataKind) -> DataConfig {
    DataConfig {
        kind,
        frames: 4,
        size: 16,
        ..DataConfig::default()
    }
}

fn ucf_cfg(videos: &Path, splits: &Path) -> DataConfig {
    DataConfig {
        root: Some(videos.into()),
        splits: Some(splits.into()),
        ..cfg(DataKind::Ucf101)
    }
}

fn build_err(c: &DataConfig) -> String {
    match datasets::build(c) {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            assert!(e.is_bad_input(), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn decodes_every_frame_of_xvid_h264_and_vp8_files() {
    let dir = tempfile::tempdir().unwrap();
    for (name, codec, frames) in [
        ("a.avi", "xvid", 20),
        ("b.avi", "xvid-b", 20),
        ("b.mp4", "h264", 13),
        ("c.mkv", "h264", 11),
        ("d.webm", "vp8", 9),
    ] {
        let p = dir.path().join(name);
        make_video(&p, codec, frames, 32, 24);
        let v = decode_video(&p, None).unwrap();
        assert_eq!((v.frames, v.width, v.height), (frames, 32, 24), "{name}");
        assert_eq!(v.data.len(), frames * 32 * 24 * 3);
        // Same frames, in the same order, as the ffmpeg CLI's RGB output.
        let cli = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(&p)
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            .output()
            .unwrap()
            .stdout;
        assert_eq!(cli.len(), v.data.len(), "{name}");
        let mad = cli
            .iter()
            .zip(&v.data)
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .sum::<f64>()
            / cli.len() as f64;
        assert!(
            mad < 1.0,
            "{name}: mean abs difference {mad} from ffmpeg's frames"
        );
        // Shorter side 16: 32x24 -> round(32 * 16 / 24) = 21 x 16.
        let r = decode_video(&p, Some(16)).unwrap();
        assert_eq!((r.frames, r.width, r.height), (frames, 21, 16), "{name}");
        // Resizing keeps the picture: per-channel means of a frame agree with the
        // full-size frame's (a channel swap or a garbled layout would not).
        let mean = |f: &[u8], c: usize| {
            f.iter().skip(c).step_by(3).map(|&x| x as f64).sum::<f64>() / (f.len() / 3) as f64
        };
        for c in 0..3 {
            let (a, b) = (mean(v.frame(3), c), mean(r.frame(3), c));
            assert!((a - b).abs() < 8.0, "{name} channel {c}: {a} vs {b}");
        }
    }
    // testsrc draws a moving pattern: consecutive frames differ, so frames are not repeats.
    let v = decode_video(&dir.path().join("a.avi"), None).unwrap();
    assert_ne!(v.frame(0), v.frame(10));
    // A frame cap keeps exactly the first frames.
    let capped = decode_video_limited(&dir.path().join("a.avi"), None, Some(7), false).unwrap();
    assert_eq!(capped.frames, 7);
    assert_eq!(capped.data[..], v.data[..7 * 32 * 24 * 3]);
}

#[test]
fn ucf101_splits_counts_labels_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (videos, splits) = ucf101_layout(dir.path());
    let ds = datasets::build(&ucf_cfg(&videos, &splits)).unwrap();
    assert_eq!((ds.len(Split::Train), ds.len(Split::Test)), (6, 3));
    assert_eq!(ds.num_classes(), 3);
    let train: Vec<_> = (0..6).map(|i| ds.label(Split::Train, i).unwrap()).collect();
    assert_eq!(train, [0, 0, 1, 1, 2, 2]);
    // Test lists carry no label: it comes from the class folder.
    let test: Vec<_> = (0..3).map(|i| ds.label(Split::Test, i).unwrap()).collect();
    assert_eq!(test, [0, 1, 2]);
    assert_eq!(
        ds.source_path(Split::Test, 1).unwrap(),
        videos.join("Beta/v_Beta_g03_c01.avi")
    );
    let v = ds.video(Split::Train, 3).unwrap();
    assert_eq!((v.frames, v.width, v.height), (20, 21, 16));
    // Fewer frames than data.frames = 4: a bad video, named, with the reason.
    make_video(&videos.join("Gamma/v_Gamma_g01_c01.avi"), "xvid", 3, 32, 24);
    let e = ds.video(Split::Train, 4).unwrap_err().to_string();
    assert!(
        e.contains("v_Gamma_g01_c01.avi") && e.contains("too short: 3 decoded frames"),
        "{e}"
    );
}

#[test]
fn ucf101_bad_split_files_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (videos, splits) = ucf101_layout(dir.path());
    let mut c = ucf_cfg(&videos, &splits);
    c.split = 2;
    let e = build_err(&c);
    assert!(
        e.contains("trainlist02.txt") && e.contains("not found"),
        "{e}"
    );

    let list = splits.join("trainlist01.txt");
    let good = std::fs::read_to_string(&list).unwrap();
    let c = ucf_cfg(&videos, &splits);
    std::fs::write(&list, format!("{good}Delta/v_Delta_g01_c01.avi 4\n")).unwrap();
    let e = build_err(&c);
    assert!(e.contains("trainlist01.txt") && e.contains("line 7"), "{e}");
    assert!(e.contains("Delta") && e.contains("classInd.txt"), "{e}");

    std::fs::write(&list, format!("{good}Beta/v_Beta_g09_c01.avi 2\n")).unwrap();
    let e = build_err(&c);
    assert!(e.contains("line 7") && e.contains("does not exist"), "{e}");

    std::fs::write(&list, format!("{good}Beta/v_Beta_g01_c01.avi 3\n")).unwrap();
    let e = build_err(&c);
    assert!(e.contains("line 7") && e.contains("disagrees"), "{e}");

    // Through the CLI: exit code 2 before training starts, file and line named.
    std::fs::write(&list, format!("{good}Delta/v_Delta_g01_c01.avi 4\n")).unwrap();
    let recipe = tiny_recipe(
        dir.path(),
        &format!(
            "[data]\nkind = \"ucf101\"\nroot = \"{}\"\nsplits = \"{}\"\n",
            videos.display(),
            splits.display()
        ),
    );
    let out = train(&recipe, &dir.path().join("run"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("trainlist01.txt: line 7"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("run/metrics.jsonl").exists());
}

#[test]
fn hmdb51_splits_train_test_unused() {
    let dir = tempfile::tempdir().unwrap();
    let (root, splits) = (dir.path().join("videos"), dir.path().join("splits"));
    std::fs::create_dir_all(&splits).unwrap();
    let template = dir.path().join("t.avi");
    make_video(&template, "xvid", 10, 32, 24);
    // Class names with underscores, as in HMDB51; sorted order gives the labels.
    for (class, codes) in [("ride_bike", "1 2 0 1"), ("brush_hair", "2 1 1")] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        let mut text = String::new();
        for (i, code) in codes.split(' ').enumerate() {
            let name = format!("{class}_{i}.avi");
            std::fs::copy(&template, root.join(class).join(&name)).unwrap();
            text.push_str(&format!("{name} {code} \n"));
        }
        std::fs::write(splits.join(format!("{class}_test_split1.txt")), text).unwrap();
    }
    let c = DataConfig {
        root: Some(root.clone()),
        splits: Some(splits.clone()),
        ..cfg(DataKind::Hmdb51)
    };
    let ds = datasets::build(&c).unwrap();
    assert_eq!((ds.len(Split::Train), ds.len(Split::Test)), (4, 2));
    assert_eq!(ds.num_classes(), 2);
    let labels = |s, n| (0..n).map(|i| ds.label(s, i).unwrap()).collect::<Vec<_>>();
    // brush_hair = 0 (train: videos 1, 2; test: 0), ride_bike = 1 (train 0, 3; test 1).
    assert_eq!(labels(Split::Train, 4), [0, 0, 1, 1]);
    assert_eq!(labels(Split::Test, 2), [0, 1]);
    assert_eq!(
        ds.source_path(Split::Train, 2).unwrap(),
        root.join("ride_bike/ride_bike_0.avi")
    );
    assert_eq!(ds.video(Split::Test, 1).unwrap().frames, 10);

    let mut c2 = c.clone();
    c2.split = 3;
    assert!(build_err(&c2).contains("_test_split3.txt"));
    std::fs::write(
        splits.join("ride_bike_test_split1.txt"),
        "ride_bike_0.avi 1\nride_bike_1.avi 5\n",
    )
    .unwrap();
    let e = build_err(&c);
    assert!(
        e.contains("ride_bike_test_split1.txt") && e.contains("line 2"),
        "{e}"
    );
}

#[test]
fn csv_lists_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("clips/deep");
    std::fs::create_dir_all(&sub).unwrap();
    make_video(&dir.path().join("clips/a.avi"), "xvid", 6, 32, 24);
    make_video(&sub.join("b.mp4"), "h264", 7, 32, 24);
    std::fs::write(dir.path().join("clips/notes.txt"), "not a video").unwrap();

    // Class names as labels (Kinetics style), a header, paths relative to the list.
    let list = dir.path().join("train.csv");
    std::fs::write(
        &list,
        "path,label\nclips/a.avi,walking\nclips/deep/b.mp4,abseiling\nclips/a.avi,\n",
    )
    .unwrap();
    let c = DataConfig {
        list: Some(list.clone()),
        ..cfg(DataKind::Csv)
    };
    let ds = datasets::build(&c).unwrap();
    assert_eq!((ds.len(Split::Train), ds.len(Split::Test)), (3, 0));
    assert_eq!(ds.num_classes(), 2);
    assert_eq!(ds.label(Split::Train, 0), Some(1));
    assert_eq!(ds.label(Split::Train, 1), Some(0));
    assert_eq!(ds.label(Split::Train, 2), None);
    assert_eq!(ds.video(Split::Train, 1).unwrap().frames, 7);

    // Integer labels are class indices; a test list is optional.
    std::fs::write(&list, "clips/a.avi,03\n").unwrap();
    let test = dir.path().join("test.csv");
    std::fs::write(&test, "clips/deep/b.mp4,0\n").unwrap();
    let c = DataConfig {
        test_list: Some(test.clone()),
        ..c
    };
    let ds = datasets::build(&c).unwrap();
    assert_eq!(ds.num_classes(), 4);
    assert_eq!(
        (ds.label(Split::Train, 0), ds.label(Split::Test, 0)),
        (Some(3), Some(0))
    );

    std::fs::write(&test, "clips/deep/b.mp4,0\nclips/missing.avi,1\n").unwrap();
    let e = build_err(&c);
    assert!(
        e.contains("test.csv") && e.contains("line 2") && e.contains("missing.avi"),
        "{e}"
    );

    // Folder: every video under root, recursively, sorted, unlabelled.
    let f = DataConfig {
        root: Some(dir.path().join("clips")),
        ..cfg(DataKind::Folder)
    };
    let ds = datasets::build(&f).unwrap();
    assert_eq!((ds.len(Split::Train), ds.len(Split::Test)), (2, 0));
    assert_eq!(ds.label(Split::Train, 0), None);
    assert_eq!(
        ds.source_path(Split::Train, 0).unwrap(),
        dir.path().join("clips/a.avi")
    );
    assert_eq!(ds.source_path(Split::Train, 1).unwrap(), sub.join("b.mp4"));
}

#[test]
fn loader_batches_identical_for_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let (videos, splits) = ucf101_layout(dir.path());
    // Two distinct videos so the batches depend on which one is drawn.
    make_video(&videos.join("Beta/v_Beta_g01_c01.avi"), "xvid", 30, 40, 24);
    let ds: Arc<dyn VideoDataset> = Arc::from(datasets::build(&ucf_cfg(&videos, &splits)).unwrap());
    let plan = BatchPlan {
        planner: Arc::new(StridedPlanner::new(2, 4, (1, 3))),
        size: 16,
        batch_size: 3,
        seed: 11,
        augment: Default::default(),
    };
    let collect = |w| -> Vec<HostBatch> {
        Loader::spawn(ds.clone(), plan.clone(), 0, 5, w)
            .map(|b| b.unwrap())
            .collect()
    };
    let one = collect(1);
    assert_eq!(one.len(), 5);
    for w in [2, 3] {
        let many = collect(w);
        for (a, b) in one.iter().zip(&many) {
            assert_eq!(a.step, b.step);
            assert_eq!(a.labels, b.labels);
            assert_eq!(a.clip_meta, b.clip_meta);
            assert!(a
                .data
                .iter()
                .zip(&b.data)
                .all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
    // Different steps see different data (the comparison above can fail).
    assert_ne!(one[0].data, one[1].data);
}

#[test]
fn truncated_and_empty_videos_are_skipped_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let (videos, splits) = ucf101_layout(dir.path());
    let truncated = videos.join("Alpha/v_Alpha_g01_c01.avi");
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len().min(400)]).unwrap();
    let empty = videos.join("Gamma/v_Gamma_g02_c01.avi");
    std::fs::write(&empty, b"").unwrap();
    let recipe = tiny_recipe(
        dir.path(),
        &format!(
            "[data]\nkind = \"ucf101\"\nroot = \"{}\"\nsplits = \"{}\"\n[train]\nbatch_size = 3\nsteps = 4\n",
            videos.display(),
            splits.display()
        ),
    );
    let run_dir = dir.path().join("run");
    let out = train(&recipe, &run_dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(run_dir.join("model.safetensors").is_file());
    let listed = std::fs::read_to_string(run_dir.join("bad_videos.txt")).unwrap();
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines.iter().any(|l| l.contains("v_Alpha_g01_c01.avi")),
        "{listed}"
    );
    assert!(
        lines.iter().any(|l| l.contains("v_Gamma_g02_c01.avi")),
        "{listed}"
    );
    // One warning per distinct bad video, however often it is drawn.
    let err = stderr(&out);
    assert_eq!(err.matches("skipping bad video").count(), 2, "{err}");

    // Evaluation skips them too, counts them, and does not list them twice.
    let out = run(&mut vssl(&[
        "eval",
        run_dir.to_str().unwrap(),
        "--protocol",
        "knn",
        "--device",
        "cpu",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let j: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        (j["skipped"].as_u64(), j["train_videos"].as_u64()),
        (Some(2), Some(4))
    );
    let again = std::fs::read_to_string(run_dir.join("bad_videos.txt")).unwrap();
    assert_eq!(again, listed);
}

#[test]
fn pretrain_and_evaluate_on_synth_written_as_ucf101() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), "");
    let set = dir.path().join("set");
    let out = run(&mut vssl(&[
        "data",
        "synth",
        "--out",
        set.to_str().unwrap(),
        "--recipe",
        recipe.to_str().unwrap(),
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let recipe = tiny_recipe(
        dir.path(),
        &format!(
            "[data]\nkind = \"ucf101\"\nroot = \"{}\"\nsplits = \"{}\"\n",
            set.join("videos").display(),
            set.join("splits").display()
        ),
    );
    let run_dir = dir.path().join("run");
    let out = train(&recipe, &run_dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!run_dir.join("bad_videos.txt").exists());
    let out = run(&mut vssl(&[
        "eval",
        run_dir.to_str().unwrap(),
        "--protocol",
        "linear,knn",
        "--device",
        "cpu",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for j in &lines {
        assert!(j["dataset"].as_str().unwrap().starts_with("ucf101"), "{j}");
        // The tiny synthetic set has 16 train and 8 test videos.
        assert_eq!(
            (j["train_videos"].as_u64(), j["test_videos"].as_u64()),
            (Some(16), Some(8))
        );
        assert_eq!(j["skipped"].as_u64(), Some(0));
    }
    assert!(lines[0]["metrics"]["top1"].as_f64().is_some());
}

#[test]
fn bench_data_compares_with_the_ffmpeg_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (videos, splits) = ucf101_layout(dir.path());
    let recipe = tiny_recipe(
        dir.path(),
        &format!(
            "[data]\nkind = \"ucf101\"\nroot = \"{}\"\nsplits = \"{}\"\n",
            videos.display(),
            splits.display()
        ),
    );
    let r = recipe.to_str().unwrap();
    let out = run(&mut vssl(&[
        "bench", "data", r, "--repeat", "1", "--steps", "2",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let j: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    // Six 20-frame training videos, decoded by both.
    assert_eq!(
        (j["videos"].as_u64(), j["frames"].as_u64()),
        (Some(6), Some(120))
    );
    let (v, f) = (
        j["vssl_frames_per_s"].as_f64().unwrap(),
        j["ffmpeg_frames_per_s"].as_f64().unwrap(),
    );
    assert!(v > 0.0 && f > 0.0);
    assert!((j["decode_ratio"].as_f64().unwrap() - v / f).abs() < 1e-9 * (v / f));
    assert!(text.contains("ratio vssl/ffmpeg"), "{text}");
    assert!(j["on_the_fly_clips_per_s"].as_f64().unwrap() > 0.0);
    // The full-decode loader and the worker counts 1..=2 are measured beside it.
    assert!(j["full_decode_clips_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["clip_only_ratio"].as_f64().unwrap() > 0.0);
    let scaling = j["scaling"].as_array().unwrap();
    let counts: Vec<u64> = scaling
        .iter()
        .map(|f| f["workers"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 2]);
    assert_eq!(scaling[0]["speedup"].as_f64(), Some(1.0));
    assert!(text.contains("loader with 2 worker(s)"), "{text}");
    assert!(
        j["caches"].as_array().unwrap().is_empty(),
        "caches only with --caches"
    );
    // --caches builds a raw and a JPEG cache of the set, times them, and removes them.
    let out = run(&mut vssl(&[
        "bench", "data", r, "--repeat", "1", "--steps", "2", "--caches",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let j: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let caches = j["caches"].as_array().unwrap();
    let formats: Vec<&str> = caches
        .iter()
        .map(|c| c["format"].as_str().unwrap())
        .collect();
    assert_eq!(formats, ["raw", "jpeg"]);
    // Nine 20-frame videos of 32x24 (shorter side 16: 21x16) in the raw cache.
    assert_eq!(caches[0]["bytes"].as_u64(), Some(9 * 20 * 21 * 16 * 3));
    assert!(
        caches[1]["smaller_than_raw"].as_f64().unwrap() > 1.0,
        "{text}"
    );
    for c in caches {
        assert!(c["clips_per_s"].as_f64().unwrap() > 0.0);
        assert!(c["read_vs_on_the_fly"].as_f64().unwrap() > 0.0);
    }
    assert!(text.contains("jpeg cache:"), "{text}");

    // The in-memory synthetic set has no files to benchmark: bad input.
    let synth = tiny_recipe(dir.path(), "");
    let out = run(&mut vssl(&["bench", "data", synth.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("vssl data synth"), "{}", stderr(&out));
}
