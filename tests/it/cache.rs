//! Frame cache: round trip, identical training batches through it, staleness by
//! size/mtime and by config, unreadable videos, and interrupted builds never reading
//! as valid (a panic mid-build, a damaged frame file, and a SIGKILLed `vssl data cache`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vssl::app::cache::{build, refresh, Refresh};
use vssl::data::augment::{AugmentConfig, CropMode};
use vssl::data::cache::{self, CachedDataset, Status};
use vssl::data::datasets::{self, VideoDataset};
use vssl::data::loader::{make_batch, BatchPlan};
use vssl::data::sampler::StridedPlanner;
use vssl::data::synthetic::SyntheticConfig;
use vssl::data::{Split, Video};
use vssl::recipe::DataConfig;
use vssl::{Error, Result};

use super::common::{assert_bit_identical, run, stderr, stdout, tensors, tiny_recipe, train, vssl};

fn synthetic_cfg(seed: u64) -> DataConfig {
    DataConfig {
        synthetic: SyntheticConfig {
            seed,
            train_videos: 16,
            test_videos: 8,
            video_frames: 16,
            size: 16,
            ..SyntheticConfig::default()
        },
        ..DataConfig::default()
    }
}

fn quiet(_: usize, _: usize) {}

/// Videos stored as raw `[4, 8, 8, 3]` byte files, one per video, with a source path.
struct RawFiles {
    dir: PathBuf,
    n: usize,
    /// Panics when asked for this train video (an interrupted build).
    panic_at: Option<usize>,
}

const RAW: (usize, usize, usize) = (4, 8, 8);

impl RawFiles {
    fn create(dir: &Path, n: usize) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ds = Self {
            dir: dir.to_path_buf(),
            n,
            panic_at: None,
        };
        for split in [Split::Train, Split::Test] {
            for i in 0..n {
                ds.write(split, i, (i * 7 + split as usize) as u8);
            }
        }
        ds
    }

    fn path(&self, split: Split, i: usize) -> PathBuf {
        self.dir.join(format!("{split:?}_{i}.raw"))
    }

    fn write(&self, split: Split, i: usize, fill: u8) {
        let (t, h, w) = RAW;
        let bytes: Vec<u8> = (0..t * h * w * 3)
            .map(|k| fill.wrapping_add(k as u8))
            .collect();
        std::fs::write(self.path(split, i), bytes).unwrap();
    }

    fn cfg(&self) -> DataConfig {
        DataConfig {
            root: Some(self.dir.clone()),
            ..DataConfig::default()
        }
    }
}

impl VideoDataset for RawFiles {
    fn len(&self, _: Split) -> usize {
        self.n
    }
    fn label(&self, _: Split, index: usize) -> Option<u32> {
        Some(index as u32 % 2)
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn video(&self, split: Split, index: usize) -> Result<Video> {
        if split == Split::Train && Some(index) == self.panic_at {
            panic!("simulated crash while caching");
        }
        let p = self.path(split, index);
        let data = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let (frames, height, width) = RAW;
        if data.len() != frames * height * width * 3 {
            return Err(Error::Video {
                path: p,
                message: format!("{} bytes", data.len()),
            });
        }
        Ok(Video {
            frames,
            height,
            width,
            data,
        })
    }
    fn describe(&self) -> String {
        "raw files".into()
    }
    fn source_path(&self, split: Split, index: usize) -> Option<PathBuf> {
        Some(self.path(split, index))
    }
}

#[test]
fn round_trip_equals_the_source() {
    let d = tempfile::tempdir().unwrap();
    let cfg = synthetic_cfg(0);
    let src: Arc<dyn VideoDataset> = Arc::from(datasets::build(&cfg).unwrap());
    let dir = d.path().join("c");
    assert_eq!(cache::check(&dir, src.as_ref(), &cfg), Status::Missing);
    let s = build(&dir, src.as_ref(), &cfg, &quiet).unwrap();
    assert_eq!((s.videos, s.unreadable), (24, 0));
    assert_eq!(s.bytes, 24 * 16 * 16 * 16 * 3);
    assert_eq!(cache::check(&dir, src.as_ref(), &cfg), Status::Fresh);
    let c = CachedDataset::open(&dir, src.clone(), &cfg).unwrap();
    for split in [Split::Train, Split::Test] {
        assert_eq!(c.len(split), src.len(split));
        for i in 0..src.len(split) {
            assert_eq!(c.video(split, i).unwrap(), src.video(split, i).unwrap());
            assert_eq!(c.label(split, i), src.label(split, i));
        }
    }
    assert_eq!(c.num_classes(), src.num_classes());
    // Up to date: refresh does nothing unless forced.
    assert_eq!(
        refresh(&dir, src.as_ref(), &cfg, false, &quiet).unwrap(),
        Refresh::UpToDate
    );
    assert!(matches!(
        refresh(&dir, src.as_ref(), &cfg, true, &quiet).unwrap(),
        Refresh::Built { .. }
    ));
    // Leaves nothing but the cache behind.
    let names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, vec!["c".to_string()]);
}

#[test]
fn batches_through_the_cache_equal_batches_without_it() {
    let d = tempfile::tempdir().unwrap();
    let cfg = synthetic_cfg(1);
    let src: Arc<dyn VideoDataset> = Arc::from(datasets::build(&cfg).unwrap());
    build(&d.path().join("c"), src.as_ref(), &cfg, &quiet).unwrap();
    let c = CachedDataset::open(&d.path().join("c"), src.clone(), &cfg).unwrap();
    let plan = BatchPlan {
        planner: Arc::new(StridedPlanner::new(2, 4, (1, 3))),
        size: 12,
        batch_size: 4,
        seed: 5,
        augment: AugmentConfig {
            crop: CropMode::Resized,
            brightness: 0.3,
            erase: 0.5,
            ..AugmentConfig::default()
        },
    };
    for step in 0..4 {
        let (a, b) = (
            make_batch(src.as_ref(), &plan, step).unwrap(),
            make_batch(&c, &plan, step).unwrap(),
        );
        assert_eq!(a.data, b.data);
        assert_eq!(a.labels, b.labels);
    }
}

#[test]
fn training_with_data_cache_is_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(d.path(), "");
    let dir = d.path().join("frames");
    let set = format!("data.cache=\"{}\"", dir.display());
    // Training before the cache exists is refused with the command to run.
    let o = train(&recipe, &d.path().join("r0"), &["--set", &set]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("vssl data cache"), "{}", stderr(&o));
    let o = run(&mut vssl(&[
        "data",
        "cache",
        recipe.to_str().unwrap(),
        "--set",
        &set,
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), dir.display().to_string());
    assert!(dir.join(cache::INDEX).is_file());
    let (a, b) = (d.path().join("plain"), d.path().join("cached"));
    let o = train(&recipe, &a, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train(&recipe, &b, &["--set", &set]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_bit_identical(
        &tensors(&a.join("model.safetensors")),
        &tensors(&b.join("model.safetensors")),
    );
    // A changed synthetic world is refused (config hash), naming the cache and the fix.
    let o = train(
        &recipe,
        &d.path().join("r1"),
        &["--set", &set, "--set", "data.synthetic.seed=9"],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("frames") && err.contains("out of date") && err.contains("vssl data cache"),
        "{err}"
    );
    // Without data.cache, `vssl data cache` says which key to set.
    let o = run(&mut vssl(&["data", "cache", recipe.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("data.cache"), "{}", stderr(&o));
}

#[test]
fn changed_source_files_are_detected_and_rebuilt() {
    let d = tempfile::tempdir().unwrap();
    let src = Arc::new(RawFiles::create(&d.path().join("videos"), 5));
    let cfg = src.cfg();
    let dir = d.path().join("c");
    build(&dir, src.as_ref(), &cfg, &quiet).unwrap();
    assert!(CachedDataset::open(&dir, src.clone(), &cfg).is_ok());

    // Same size, new modification time.
    let f = src.path(Split::Test, 3);
    let file = std::fs::File::options().write(true).open(&f).unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(file);
    let err = CachedDataset::open(&dir, src.clone(), &cfg)
        .err()
        .expect("stale")
        .to_string();
    assert!(
        err.contains(&f.display().to_string()) && err.contains("vssl data cache"),
        "{err}"
    );
    assert!(matches!(
        cache::check(&dir, src.as_ref(), &cfg),
        Status::Stale(_)
    ));

    // New content and size: refresh rebuilds and the cache serves the new frames.
    src.write(Split::Train, 1, 200);
    std::fs::write(src.path(Split::Train, 2), b"short").unwrap();
    match refresh(&dir, src.as_ref(), &cfg, false, &quiet).unwrap() {
        Refresh::Built { reason, summary } => {
            // Train videos are checked first.
            assert!(reason.contains("Train_1.raw changed"), "{reason}");
            assert_eq!(summary.unreadable, 1);
        }
        other => panic!("expected a rebuild, got {other:?}"),
    }
    let c = CachedDataset::open(&dir, src.clone(), &cfg).unwrap();
    assert_eq!(
        c.video(Split::Train, 1).unwrap(),
        src.video(Split::Train, 1).unwrap()
    );
    // The unreadable video reads as unreadable, with the source's message.
    let (a, b) = (
        c.video(Split::Train, 2).unwrap_err(),
        src.video(Split::Train, 2).unwrap_err(),
    );
    assert_eq!(a.to_string(), b.to_string());
    assert!(a.is_bad_input());
    // A deleted source is stale too.
    std::fs::remove_file(src.path(Split::Train, 0)).unwrap();
    let err = CachedDataset::open(&dir, src.clone(), &cfg)
        .err()
        .expect("stale")
        .to_string();
    assert!(
        err.contains("Train_0.raw") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn an_interrupted_build_never_reads_as_valid() {
    let d = tempfile::tempdir().unwrap();
    let videos = d.path().join("videos");
    let dir = d.path().join("c");
    let n = 40;
    RawFiles::create(&videos, n);
    // A crash half-way through a build (the build thread panics).
    let crashed = std::thread::spawn({
        let (videos, dir) = (videos.clone(), dir.clone());
        move || {
            let src = RawFiles {
                dir: videos,
                n,
                panic_at: Some(30),
            };
            let _ = build(&dir, &src, &src.cfg(), &quiet);
        }
    })
    .join();
    assert!(crashed.is_err(), "the build should have crashed");
    let src = Arc::new(RawFiles {
        dir: videos.clone(),
        n,
        panic_at: None,
    });
    let cfg = src.cfg();
    assert!(!dir.exists());
    assert_eq!(cache::check(&dir, src.as_ref(), &cfg), Status::Missing);
    let err = CachedDataset::open(&dir, src.clone(), &cfg)
        .err()
        .expect("no cache")
        .to_string();
    assert!(err.contains("vssl data cache"), "{err}");
    // The partial directory it left is not a cache either.
    let partial: Vec<PathBuf> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".partial-"))
        .collect();
    assert_eq!(partial.len(), 1);
    assert!(CachedDataset::open(&partial[0], src.clone(), &cfg).is_err());
    // The next build succeeds and clears the leftover.
    build(&dir, src.as_ref(), &cfg, &quiet).unwrap();
    assert!(!partial[0].exists());
    assert!(CachedDataset::open(&dir, src.clone(), &cfg).is_ok());
    // A frame file cut short (e.g. a copy that stopped) is refused.
    let frames = dir.join(cache::FRAMES);
    let len = std::fs::metadata(&frames).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&frames)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let err = CachedDataset::open(&dir, src.clone(), &cfg)
        .err()
        .expect("truncated")
        .to_string();
    assert!(
        err.contains("incomplete") && err.contains("vssl data cache"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn a_killed_cache_command_leaves_no_valid_cache() {
    let d = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(
        d.path(),
        "[data.synthetic]\ntrain_videos = 24\ntest_videos = 8\nvideo_frames = 16\nsize = 32\n",
    );
    let dir = d.path().join("frames");
    let set = format!("data.cache=\"{}\"", dir.display());
    // SIGKILL once the 10th video reached the partial frame file (crash-hook
    // feature): the kill always lands inside the build.
    let o = vssl(&["data", "cache", recipe.to_str().unwrap(), "--set", &set])
        .env("VSSL_CRASH_AT_CACHE_VIDEO", "10")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), None, "not killed: {}", stderr(&o));
    let partial: Vec<PathBuf> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".partial-"))
        .collect();
    assert_eq!(partial.len(), 1, "the build was interrupted inside");
    assert!(!dir.exists());
    let o = train(&recipe, &d.path().join("run"), &["--set", &set]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("vssl data cache"));
    // Running the command again completes the cache.
    let o = run(&mut vssl(&[
        "data",
        "cache",
        recipe.to_str().unwrap(),
        "--set",
        &set,
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join(cache::INDEX).is_file());
}

/// Synthetic videos written to disk as H.264 `.avi` and decoded on every read.
#[cfg(feature = "video")]
struct Decoded {
    paths: [Vec<PathBuf>; 2],
    labels: [Vec<u32>; 2],
}

#[cfg(feature = "video")]
impl VideoDataset for Decoded {
    fn len(&self, split: Split) -> usize {
        self.paths[split as usize].len()
    }
    fn label(&self, split: Split, index: usize) -> Option<u32> {
        Some(self.labels[split as usize][index])
    }
    fn num_classes(&self) -> usize {
        8
    }
    fn video(&self, split: Split, index: usize) -> Result<Video> {
        vssl::data::decode::decode_video(&self.paths[split as usize][index], None)
    }
    fn describe(&self) -> String {
        "decoded synthetic".into()
    }
    fn source_path(&self, split: Split, index: usize) -> Option<PathBuf> {
        Some(self.paths[split as usize][index].clone())
    }
}

/// Training clips/s decoding the synthetic set from disk vs reading the frame cache
/// (one thread, medians of 3). Not a test: run with
/// `cargo test --release --test it cache::bench -- --ignored --nocapture`.
#[cfg(feature = "video")]
#[test]
#[ignore]
fn bench_cache_vs_decoding() {
    let d = tempfile::tempdir().unwrap();
    let synth = vssl::data::synthetic::Synthetic::new(SyntheticConfig {
        train_videos: 128,
        test_videos: 16,
        ..SyntheticConfig::default()
    })
    .unwrap();
    let mut ds = Decoded {
        paths: [vec![], vec![]],
        labels: [vec![], vec![]],
    };
    for split in [Split::Train, Split::Test] {
        for i in 0..synth.len(split) {
            let p = d.path().join(format!("{split:?}_{i}.avi"));
            vssl::data::encode::write_video(&p, &synth.video(split, i).unwrap(), 25).unwrap();
            ds.paths[split as usize].push(p);
            ds.labels[split as usize].push(synth.label(split, i).unwrap());
        }
    }
    let ds: Arc<dyn VideoDataset> = Arc::new(ds);
    let cfg = DataConfig {
        root: Some(d.path().to_path_buf()),
        ..DataConfig::default()
    };
    let dir = d.path().join("cache");
    let t = std::time::Instant::now();
    build(&dir, ds.as_ref(), &cfg, &quiet).unwrap();
    println!(
        "cache build: {:.2}s for 144 videos",
        t.elapsed().as_secs_f64()
    );
    let cached = CachedDataset::open(&dir, ds.clone(), &cfg).unwrap();
    // The quick start's geometry: 8-frame clips of 32 pixels, batches of 16.
    let plan = BatchPlan {
        planner: Arc::new(StridedPlanner::new(1, 8, (1, 3))),
        size: 32,
        batch_size: 16,
        seed: 0,
        augment: AugmentConfig::default(),
    };
    let clips_per_s = |src: &dyn VideoDataset, steps: u64| {
        let mut runs: Vec<f64> = (0..3)
            .map(|_| {
                let t = std::time::Instant::now();
                for step in 0..steps {
                    make_batch(src, &plan, step).unwrap();
                }
                (steps * 16) as f64 / t.elapsed().as_secs_f64()
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        println!("  runs {runs:.1?}");
        runs[1]
    };
    let fly = clips_per_s(ds.as_ref(), 8);
    let hit = clips_per_s(&cached, 64);
    println!(
        "on the fly: {fly:.1} clips/s; cache: {hit:.1} clips/s; ratio {:.1}x",
        hit / fly
    );
    assert!(hit >= 10.0 * fly);
}

/// Mean absolute difference of two equally sized byte buffers, in levels.
fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| x.abs_diff(y) as f64)
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn a_jpeg_cache_is_smaller_close_to_the_source_and_reads_single_frames() {
    let d = tempfile::tempdir().unwrap();
    let cfg = DataConfig {
        // Without the i.i.d. pixel noise (sd 6: JPEG would remove it, a 4.8-level
        // difference by itself), as camera footage is smooth at this scale.
        synthetic: SyntheticConfig {
            size: 64,
            noise: 0.0,
            ..synthetic_cfg(3).synthetic
        },
        cache_format: cache::CacheFormat::Jpeg,
        ..synthetic_cfg(3)
    };
    let src: Arc<dyn VideoDataset> = Arc::from(datasets::build(&cfg).unwrap());
    let dir = d.path().join("c");
    let s = build(&dir, src.as_ref(), &cfg, &quiet).unwrap();
    let raw = 24 * 16 * 64 * 64 * 3;
    assert!(s.bytes * 4 < raw, "jpeg cache {} bytes, raw {raw}", s.bytes);
    assert_eq!(cache::check(&dir, src.as_ref(), &cfg), Status::Fresh);
    // A raw cache is another cache: the format is part of the key, the quality too.
    let raw_cfg = DataConfig {
        cache_format: cache::CacheFormat::Raw,
        ..cfg.clone()
    };
    assert!(matches!(
        cache::check(&dir, src.as_ref(), &raw_cfg),
        Status::Stale(_)
    ));
    let q = DataConfig {
        cache_quality: 50,
        ..cfg.clone()
    };
    assert!(matches!(
        cache::check(&dir, src.as_ref(), &q),
        Status::Stale(_)
    ));
    let c = CachedDataset::open(&dir, src.clone(), &cfg).unwrap();
    for i in 0..src.len(Split::Train) {
        let (a, b) = (
            src.video(Split::Train, i).unwrap(),
            c.video(Split::Train, i).unwrap(),
        );
        assert_eq!((a.frames, a.height, a.width), (b.frames, b.height, b.width));
        // Lossy, but close: quality 90 with 4:2:0 chroma stays within 4 levels on
        // average (3.3 measured; the saturated edges of this world lose most to the
        // halved chroma: 1.4 at 4:4:4).
        let mad = mean_abs_diff(&a.data, &b.data);
        assert!(mad < 4.0, "video {i}: mean abs diff {mad}");
    }
    // The loader's partial reads give exactly the frames a whole read gives.
    let plan = BatchPlan {
        planner: Arc::new(StridedPlanner::new(2, 4, (1, 3))),
        size: 32,
        batch_size: 4,
        seed: 2,
        augment: AugmentConfig::default(),
    };
    struct Whole(Arc<CachedDataset>);
    impl VideoDataset for Whole {
        fn len(&self, s: Split) -> usize {
            self.0.len(s)
        }
        fn label(&self, s: Split, i: usize) -> Option<u32> {
            self.0.label(s, i)
        }
        fn num_classes(&self) -> usize {
            self.0.num_classes()
        }
        fn video(&self, s: Split, i: usize) -> Result<Video> {
            self.0.video(s, i)
        }
        fn describe(&self) -> String {
            "whole reads".into()
        }
    }
    let c = Arc::new(c);
    let whole = Whole(c.clone());
    for step in 0..3 {
        let (a, b) = (
            make_batch(c.as_ref(), &plan, step).unwrap(),
            make_batch(&whole, &plan, step).unwrap(),
        );
        assert_eq!(a.data, b.data, "step {step}");
    }
    // A damaged frame is a clear error naming the frame file, not a panic.
    let frames = dir.join(cache::FRAMES);
    let mut bytes = std::fs::read(&frames).unwrap();
    let n = bytes.len();
    for b in &mut bytes[200..n / 24] {
        *b = 0x55;
    }
    std::fs::write(&frames, bytes).unwrap();
    let err = c
        .video(Split::Train, 0)
        .expect_err("a damaged JPEG frame is an error");
    assert!(err.to_string().contains("frames.bin"), "{err}");
    assert!(err.to_string().contains("damaged"), "{err}");
}
