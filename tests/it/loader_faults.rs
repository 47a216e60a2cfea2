//! The loader under faults: every video bad, a decoder that panics inside a worker,
//! a worker failing outside any video, the consumer stopping mid-epoch, a dataset
//! directory that disappears mid-run, and 50 mutated videos (truncated, bit-flipped,
//! misnamed, empty) in one training set. Each case must end in a clear error or a
//! skipped-and-listed video, never a hang: every wait is bounded and a timeout fails
//! the test.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vssl::data::clip::{ClipPlanner, PlannedClip};
use vssl::data::datasets::{self, VideoDataset};
use vssl::data::loader::{BatchPlan, HostBatch, Loader};
use vssl::data::sampler::StridedPlanner;
use vssl::data::{Split, Video};
use vssl::recipe::{DataConfig, DataKind};
use vssl::{Error, Result};

use super::common::{stderr, tiny_recipe, train};
use super::datasets::make_video;

/// Runs `f` on a thread and fails the test if it does not return within `secs`.
fn bounded<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("no answer within {secs} s: the loader hangs"))
}

/// `vssl train` with two loader workers, failing the test if it runs past `secs`.
fn train_bounded(recipe: &Path, out: &Path, secs: u64) -> std::process::Output {
    let (recipe, out) = (recipe.to_path_buf(), out.to_path_buf());
    bounded(secs, move || {
        train(&recipe, &out, &["--set", "data.workers=2"])
    })
}

/// In-memory videos; `bad` ones fail to read, `panics` ones panic in `video()`.
struct Faulty {
    n: usize,
    bad: BTreeSet<usize>,
    panics: BTreeSet<usize>,
    reads: AtomicUsize,
}

impl Faulty {
    fn new(n: usize, bad: &[usize], panics: &[usize]) -> Self {
        Self {
            n,
            bad: bad.iter().copied().collect(),
            panics: panics.iter().copied().collect(),
            reads: AtomicUsize::new(0),
        }
    }
}

impl VideoDataset for Faulty {
    fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.n,
            Split::Test => 0,
        }
    }
    fn label(&self, _: Split, i: usize) -> Option<u32> {
        Some(i as u32 % 2)
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn video(&self, _: Split, i: usize) -> Result<Video> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if self.panics.contains(&i) {
            panic!("malformed bitstream in video {i}");
        }
        if self.bad.contains(&i) {
            return Err(Error::BadInput(format!("video {i} is corrupt")));
        }
        let (frames, h, w) = (12, 20, 20);
        Ok(Video {
            frames,
            height: h,
            width: w,
            data: vec![(i * 7) as u8; frames * h * w * 3],
        })
    }
    fn describe(&self) -> String {
        format!("{} in-memory videos", self.n)
    }
}

fn plan(planner: Arc<dyn ClipPlanner>) -> BatchPlan {
    BatchPlan {
        planner,
        size: 16,
        batch_size: 3,
        seed: 5,
        augment: Default::default(),
    }
}

fn strided() -> Arc<dyn ClipPlanner> {
    Arc::new(StridedPlanner::new(1, 4, (1, 2)))
}

#[test]
fn every_video_bad_is_a_clear_error_not_a_hang() {
    let results: Vec<std::result::Result<HostBatch, String>> = bounded(60, || {
        let ds: Arc<dyn VideoDataset> = Arc::new(Faulty::new(6, &[0, 1, 2, 3, 4, 5], &[]));
        Loader::spawn(ds, plan(strided()), 0, 20, 3)
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    });
    let err = results[0].as_ref().expect_err("the first batch must fail");
    assert!(
        err.contains("none of the 6 videos of the Train split could be read")
            && err.contains("6 in-memory videos")
            && err.contains("is corrupt"),
        "{err}"
    );
    assert!(results.iter().all(|r| r.is_err()));
}

#[test]
fn every_video_bad_in_training_exits_2_naming_the_data() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("videos");
    std::fs::create_dir_all(&root).unwrap();
    for i in 0..4 {
        std::fs::write(root.join(format!("v{i}.avi")), b"").unwrap();
    }
    let recipe = tiny_recipe(
        d.path(),
        &format!(
            "[data]\nkind = \"folder\"\nroot = \"{}\"\n[train]\nsteps = 3\nbatch_size = 2\n",
            root.display()
        ),
    );
    let o = train_bounded(&recipe, &d.path().join("run"), 120);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("none of the 4 videos") && err.contains(".avi"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_decoder_panic_in_a_worker_skips_that_video_and_names_it() {
    let (batches, reads) = bounded(60, || {
        let ds = Arc::new(Faulty::new(5, &[], &[2]));
        let dyn_ds: Arc<dyn VideoDataset> = ds.clone();
        let b: Vec<HostBatch> = Loader::spawn(dyn_ds, plan(strided()), 0, 5, 2)
            .map(|r| r.unwrap())
            .collect();
        (b, ds.reads.load(Ordering::Relaxed))
    });
    assert_eq!(batches.len(), 5);
    // 15 videos drawn, three epochs of 5: video 2 is drawn (and skipped) three times.
    assert_eq!(reads, 15 + 3);
    let skipped: Vec<&String> = batches.iter().flat_map(|b| &b.skipped).collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    for s in skipped {
        assert!(
            s.contains("Train video 2: the decoder failed (malformed bitstream in video 2)"),
            "{s}"
        );
    }
}

/// Plans like [`StridedPlanner`] but panics on videos of `panic_len` frames.
struct PanickyPlanner;

impl ClipPlanner for PanickyPlanner {
    fn clips_per_video(&self) -> usize {
        1
    }
    fn frames(&self) -> usize {
        4
    }
    fn plan(&self, _len: usize, rng: &mut dyn rand::RngCore) -> Result<Vec<PlannedClip>> {
        if rng.next_u32().is_multiple_of(4) {
            panic!("planner bug");
        }
        StridedPlanner::new(1, 4, (1, 1)).plan(12, rng)
    }
}

#[test]
fn a_worker_failing_outside_any_video_reaches_the_consumer() {
    let results: Vec<std::result::Result<u64, String>> = bounded(60, || {
        let ds: Arc<dyn VideoDataset> = Arc::new(Faulty::new(4, &[], &[]));
        Loader::spawn(ds, plan(Arc::new(PanickyPlanner)), 0, 40, 2)
            .map(|r| r.map(|b| b.step).map_err(|e| e.to_string()))
            .collect()
    });
    assert_eq!(results.len(), 40, "the iterator still ends");
    let first = results
        .iter()
        .position(|r| r.is_err())
        .expect("some step panics");
    let err = results[first].as_ref().unwrap_err();
    assert!(
        err.contains(&format!(
            "the batch worker failed building step {first}: planner bug"
        )),
        "{err}"
    );
    // Steps before the failure came through in order.
    for (i, r) in results[..first].iter().enumerate() {
        assert_eq!(r.as_ref().unwrap(), &(i as u64));
    }
}

#[test]
fn the_consumer_stopping_mid_epoch_ends_every_worker() {
    let ds = Arc::new(Faulty::new(8, &[], &[]));
    let remaining = bounded(60, {
        let ds = ds.clone();
        move || {
            let dyn_ds: Arc<dyn VideoDataset> = ds.clone();
            let mut loader = Loader::spawn(dyn_ds, plan(strided()), 0, 100_000, 4);
            for _ in 0..3 {
                loader.next().unwrap().unwrap();
            }
            drop(loader); // joins the workers
            Arc::strong_count(&ds)
        }
    });
    // Only this test and the thread's clone (dropped with the closure) remain: no
    // worker still holds the dataset.
    assert!(remaining <= 2, "{remaining} holders left");
    assert_eq!(Arc::strong_count(&ds), 1);
    // Workers ran at most a bounded distance ahead of the consumer (2 slots each).
    assert!(
        ds.reads.load(Ordering::Relaxed) <= 3 * (3 + 4 * 3),
        "workers ran ahead"
    );
}

fn folder_cfg(root: &Path) -> DataConfig {
    DataConfig {
        kind: DataKind::Folder,
        root: Some(root.into()),
        frames: 4,
        size: 16,
        ..DataConfig::default()
    }
}

#[test]
fn a_dataset_directory_that_disappears_mid_run_is_an_error_naming_a_file() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("videos");
    std::fs::create_dir_all(&root).unwrap();
    make_video(&root.join("a.avi"), "xvid", 12, 32, 24);
    for i in 1..4 {
        std::fs::copy(root.join("a.avi"), root.join(format!("v{i}.avi"))).unwrap();
    }
    let ds: Arc<dyn VideoDataset> = Arc::from(datasets::build(&folder_cfg(&root)).unwrap());
    let results: Vec<std::result::Result<u64, String>> = bounded(60, {
        let root = root.clone();
        move || {
            let mut loader = Loader::spawn(ds, plan(strided()), 0, 30, 1);
            let first = loader
                .next()
                .unwrap()
                .map(|b| b.step)
                .map_err(|e| e.to_string());
            std::fs::remove_dir_all(&root).unwrap();
            std::iter::once(first)
                .chain(loader.map(|r| r.map(|b| b.step).map_err(|e| e.to_string())))
                .collect()
        }
    });
    assert_eq!(results.len(), 30);
    assert_eq!(results[0], Ok(0));
    // Batches already prepared may still arrive; then every read fails.
    let err = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("reads after the directory vanished must fail");
    assert!(
        err.contains("none of the 4 videos") && err.contains(&root.display().to_string()),
        "{err}"
    );
}

/// A copy of `src` damaged as case `i` of the 50 mutations.
fn mutate(src: &[u8], i: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    match i % 5 {
        // Truncated at a random offset.
        0 | 1 => src[..rng.random_range(0..src.len())].to_vec(),
        // Random bytes flipped (1 to 64 of them), anywhere.
        2 | 3 => {
            let mut b = src.to_vec();
            for _ in 0..rng.random_range(1..=64) {
                let at = rng.random_range(0..b.len());
                b[at] ^= 1 << rng.random_range(0..8);
            }
            b
        }
        // Zero-length every tenth, otherwise a good file under a wrong extension
        // (the mutated name is chosen by the caller).
        _ if i % 10 == 4 => Vec::new(),
        _ => src.to_vec(),
    }
}

#[test]
fn fifty_mutated_videos_train_to_completion_each_decoded_or_listed() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("videos");
    std::fs::create_dir_all(&root).unwrap();
    let codecs = [
        ("xvid", "avi"),
        ("xvid-b", "avi"),
        ("h264", "mp4"),
        ("vp8", "webm"),
    ];
    let mut sources = Vec::new();
    for (codec, ext) in codecs {
        let p = d.path().join(format!("src-{codec}.{ext}"));
        make_video(&p, codec, 16, 32, 24);
        sources.push((std::fs::read(&p).unwrap(), ext));
    }
    // Three good copies of each codec, then the 50 mutants.
    for (k, (bytes, ext)) in sources.iter().enumerate() {
        for c in 0..3 {
            std::fs::write(root.join(format!("good-{k}-{c}.{ext}")), bytes).unwrap();
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(50);
    let wrong = ["mkv", "avi", "webm", "mp4"];
    for i in 0..50 {
        let (bytes, ext) = &sources[i % sources.len()];
        let ext = if i % 5 == 4 && i % 10 != 4 {
            wrong[(i / 5) % wrong.len()]
        } else {
            ext
        };
        let b = mutate(bytes, i, &mut rng);
        std::fs::write(root.join(format!("mut-{i:02}.{ext}")), b).unwrap();
    }
    // Which of them the dataset itself can read (the same code path as training).
    let ds = datasets::build(&folder_cfg(&root)).unwrap();
    let n = ds.len(Split::Train);
    assert_eq!(n, 62);
    let mut unreadable = BTreeSet::new();
    for i in 0..n {
        if ds.video(Split::Train, i).is_err() {
            unreadable.insert(ds.source_path(Split::Train, i).unwrap());
        }
    }
    assert!(unreadable.len() >= 20, "{} unreadable", unreadable.len());
    assert!(unreadable.iter().all(|p| p
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("mut-")));

    // One epoch covers every video: 16 steps of 4.
    let recipe = tiny_recipe(
        d.path(),
        &format!(
            "[data]\nkind = \"folder\"\nroot = \"{}\"\n[train]\nsteps = 16\nbatch_size = 4\n",
            root.display()
        ),
    );
    let out = d.path().join("run");
    let o = train_bounded(&recipe, &out, 600);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("model.safetensors").is_file());
    let listed = std::fs::read_to_string(out.join("bad_videos.txt")).unwrap();
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), unreadable.len(), "{listed}");
    for p in &unreadable {
        let shown = p.display().to_string();
        let line = lines
            .iter()
            .find(|l| l.contains(&shown))
            .unwrap_or_else(|| panic!("{shown} is unreadable but not listed:\n{listed}"));
        // The reason follows the file name.
        assert!(line.len() > shown.len() + 5, "no reason in `{line}`");
    }
    assert!(!stderr(&o).contains("panicked"));
}
