//! Entry points for the `cargo fuzz` targets under `fuzz/`, kept in the library so
//! the fuzzers and the stable-Rust replay test (`tests/it/fuzz_replay.rs`) run the
//! very same code: each function takes arbitrary bytes, feeds them to one parser the
//! way a user's file would reach it, and must return without panicking, aborting or
//! hanging, whatever the bytes. A parser's `Err` is the expected answer to garbage;
//! where it succeeds, the functions also check the invariants that must then hold
//! (a resolved recipe survives its own round trip, a cached video is as big as its
//! index says).
//!
//! The parsers read files, so each input is written into a scratch directory first
//! (one per process and thread, reused between inputs). Inputs that hold several
//! files separate them with NUL bytes, which none of the text formats may contain.
//! Each function returns whether the parser accepted the input, so the replay test
//! can check that the committed seeds reach past the first error.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use candle_core::Device;

use crate::backbone::{self, Backbone, BackboneConfig};
use crate::data::cache::{self, CachedDataset};
use crate::data::datasets::VideoDataset;
use crate::data::{splits, DataConfig, Split, Video};
use crate::nn::VarStore;
use crate::recipe::layers::{load, RecipeSource};
use crate::Result;

/// A harness: arbitrary bytes in, whether the parser accepted them out.
pub type Harness = fn(&[u8]) -> bool;

/// The fuzz targets, by the name `fuzz/fuzz_targets/<name>.rs` and
/// `fuzz/corpus/<name>/` use.
pub const TARGETS: &[(&str, Harness)] = &[
    ("recipe", recipe),
    ("sweep", sweep),
    ("checkpoint", checkpoint),
    ("splits", splits),
    ("cache_index", cache_index),
    ("pth", pth),
];

/// This thread's scratch directory (created on first use); targets overwrite the
/// files they use, so it stays small.
fn scratch() -> PathBuf {
    thread_local! {
        static DIR: PathBuf = {
            let base = std::env::temp_dir().join(format!(
                "vssl-fuzz-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let d = base.to_string_lossy().replace(['(', ')'], "");
            let d = PathBuf::from(d);
            std::fs::create_dir_all(&d).expect("cannot create the fuzz scratch directory");
            d
        };
    }
    DIR.with(|d| d.clone())
}

/// Removes this thread's scratch directory (the replay test calls it when done; a
/// fuzzer never does).
pub fn remove_scratch() {
    let _ = std::fs::remove_dir_all(scratch());
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("scratch directory");
    }
    std::fs::write(path, bytes).expect("cannot write a fuzz input to the scratch directory");
}

/// Splits `data` at NUL bytes into at most `n` parts (the last keeps any further NULs).
fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |&b| b == 0).collect()
}

/// A small valid recipe, written beside fuzzed recipes and sweeps so they can name it
/// as their `base`.
const BASE_RECIPE: &str = "name = \"fuzz_base\"\n[data]\nframes = 4\nsize = 16\n\
[data.synthetic]\ntrain_videos = 8\ntest_videos = 8\nvideo_frames = 8\nsize = 20\n\
[backbone]\nwidths = [4, 4, 4, 4]\n[method]\nkind = \"geometric\"\n[train]\nsteps = 2\nbatch_size = 2\n";

/// Writes the input's first part as `dir/name` (with [`BASE_RECIPE`] beside it as
/// `base.toml`); the next `max_sets` parts are `--set` overrides.
fn file_and_sets(dir: &Path, name: &str, data: &[u8], max_sets: usize) -> (PathBuf, Vec<String>) {
    let p = parts(data, max_sets + 1);
    let file = dir.join(name);
    write(&file, p[0]);
    write(&dir.join("base.toml"), BASE_RECIPE.as_bytes());
    let sets = p[1..]
        .iter()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    (file, sets)
}

/// Recipe resolution: the recipe file, then `--set` overrides (the rest of the input,
/// one per NUL-separated part). A recipe that resolves must resolve again, to the
/// same text, from the `recipe.resolved.toml` it writes.
pub fn recipe(data: &[u8]) -> bool {
    let dir = scratch().join("recipe");
    let (file, sets) = file_and_sets(&dir, "recipe.toml", data, 8);
    let src = RecipeSource {
        file: file.clone(),
        sets,
        ..Default::default()
    };
    let Ok(r) = load(&src) else { return false };
    let text = r.to_toml();
    let resolved = dir.join("recipe.resolved.toml");
    write(&resolved, text.as_bytes());
    let again = load(&RecipeSource {
        file: resolved.clone(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("a resolved recipe does not load again: {e}\n{text}"));
    assert_eq!(
        again.to_toml(),
        text,
        "the resolved recipe changed on its round trip"
    );
    true
}

/// Sweep files: parse, expand every point and resolve its recipe (`base.toml` is a
/// valid recipe beside the sweep file); the rest of the input is `--set` overrides.
pub fn sweep(data: &[u8]) -> bool {
    let dir = scratch().join("sweep");
    let (file, sets) = file_and_sets(&dir, "sweep.toml", data, 4);
    let Ok(s) = crate::sweep::load(&file, &sets, Some(&dir.join("out"))) else {
        return false;
    };
    let _ = crate::sweep::plan_table(&s);
    for pt in &s.points {
        let _ = crate::sweep::overrides_text(pt);
    }
    true
}

/// The tiny backbone checkpoints are loaded into (built once per thread).
fn tiny_backbone() -> &'static (Box<dyn Backbone>, Device) {
    static NET: OnceLock<(Box<dyn Backbone>, Device)> = OnceLock::new();
    NET.get_or_init(|| {
        let device = Device::Cpu;
        let cfg = BackboneConfig {
            widths: [2, 2, 2, 2],
            ..Default::default()
        };
        let vs = VarStore::new(&device, 0);
        let net = backbone::build(&cfg, &vs, 4).expect("tiny backbone");
        (net, device)
    })
}

/// Safetensors checkpoints: the header alone (what `vssl runs` and resume read
/// first), every tensor, the checksum a checkpoint carries, and loading the tensors
/// into a backbone as `vssl eval` does.
pub fn checkpoint(data: &[u8]) -> bool {
    let file = scratch().join("checkpoint").join("model.safetensors");
    write(&file, data);
    let _ = crate::io::read_safetensors_metadata(&file);
    let (net, device) = tiny_backbone();
    if let Ok((tensors, meta)) = crate::io::read_safetensors(&file, device) {
        if meta.contains_key(crate::io::CHECKSUM_KEY) {
            let _ = crate::io::tensors_checksum(tensors.iter().map(|(k, t)| (k.as_str(), t)));
        }
    }
    crate::eval::load_weights(net.as_ref(), &file, device).is_ok()
}

/// Split lists. The first byte picks the format (UCF101, HMDB51, CSV); the rest is up
/// to three NUL-separated files. The video root holds `A/a.avi`, `B/b.avi` and
/// `c.avi`, so lists can name files that exist.
pub fn splits(data: &[u8]) -> bool {
    let Some((&kind, rest)) = data.split_first() else {
        return false;
    };
    let dir = scratch().join("splits");
    let root = dir.join("videos");
    for v in ["A/a.avi", "B/b.avi", "c.avi"] {
        let p = root.join(v);
        if !p.is_file() {
            write(&p, b"");
        }
    }
    let lists = dir.join(format!("lists{}", kind % 3));
    let _ = std::fs::remove_dir_all(&lists);
    std::fs::create_dir_all(&lists).expect("scratch directory");
    let p = parts(rest, 3);
    let file = |i: usize| p.get(i).copied().unwrap_or_default();
    let listing = match kind % 3 {
        0 => {
            write(&lists.join("classInd.txt"), file(0));
            write(&lists.join("trainlist01.txt"), file(1));
            write(&lists.join("testlist01.txt"), file(2));
            splits::ucf101(&root, &lists, 1)
        }
        1 => {
            write(&lists.join("A_test_split1.txt"), file(0));
            write(&lists.join("B_test_split1.txt"), file(1));
            splits::hmdb51(&root, &lists, 1)
        }
        _ => {
            write(&lists.join("train.csv"), file(0));
            write(&lists.join("test.csv"), file(1));
            splits::csv(&lists.join("train.csv"), Some(&lists.join("test.csv")))
        }
    };
    listing.is_ok()
}

/// A file-less dataset of two training and one test video, the source a fuzzed
/// cache index is checked against.
struct Source;

impl VideoDataset for Source {
    fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => 2,
            Split::Test => 1,
        }
    }
    fn label(&self, _: Split, index: usize) -> Option<u32> {
        Some(index as u32)
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn video(&self, _: Split, _: usize) -> Result<Video> {
        Err(crate::Error::Internal(
            "the fuzz source has no frames".into(),
        ))
    }
    fn describe(&self) -> String {
        "fuzz source".into()
    }
}

/// Bytes of the frame file next to a fuzzed index.
pub const CACHE_FRAME_BYTES: usize = 4096;

/// The frame-cache index (`index.json`), next to a frame file of
/// [`CACHE_FRAME_BYTES`] bytes. `@CONFIG@` in the input stands for the hash of the
/// `[data]` table the cache is opened with, so mutations can get past that check.
/// A cache that opens must serve every video it lists with exactly the bytes its
/// index gives, or an error.
pub fn cache_index(data: &[u8]) -> bool {
    let dir = scratch().join("cache");
    let cfg = DataConfig::default();
    let text = String::from_utf8_lossy(data).replace("@CONFIG@", &cache::config_hash(&cfg));
    write(&dir.join(cache::INDEX), text.as_bytes());
    let frames = dir.join(cache::FRAMES);
    if std::fs::metadata(&frames).map(|m| m.len()).ok() != Some(CACHE_FRAME_BYTES as u64) {
        write(&frames, &[7u8; CACHE_FRAME_BYTES]);
    }
    let _ = cache::check(&dir, &Source, &cfg);
    let Ok(ds) = CachedDataset::open(&dir, Arc::new(Source), &cfg) else {
        return false;
    };
    for split in [Split::Train, Split::Test] {
        for i in 0..ds.len(split) {
            if let Ok(v) = ds.video(split, i) {
                assert_eq!(v.data.len(), v.frames * v.height * v.width * 3);
            }
        }
    }
    true
}

/// PyTorch `.pth` files, through the importer's reader.
pub fn pth(data: &[u8]) -> bool {
    let file = scratch().join("pth").join("weights.pth");
    write(&file, data);
    crate::app::import::read_pth(&file).is_ok()
}
