//! Frame cache: every video of a dataset decoded once into one file (`frames.bin`, one
//! contiguous chunk per video: raw RGB `[T, H, W, 3]` at the decoded size, or JPEG
//! frames behind a length table, see `codec`) plus `index.json` (per video: offset,
//! frame count, height, width, label, and the key of its source). Training then reads
//! the frames its clips show with one positioned read per run of consecutive frames
//! instead of decoding, which is what makes real-video training I/O-cheap.
//!
//! Staleness: each video's source file is keyed by its size and modification time; the
//! dataset as a whole by a hash of its `[data]` table (without the keys that do not
//! change frames: `frames`, `size`, `workers`, `augment`, `cache`), which is all a
//! file-less dataset like the synthetic one has. Opening a cache whose keys no longer
//! match is an error telling the user to run `vssl data cache` again.
//!
//! Atomicity: a build writes into a sibling `<dir>.partial-<pid>` directory, syncs the
//! frames, then writes the index (last), syncs it and renames the directory into place.
//! An interrupted build leaves only the partial directory, which is never opened (it
//! has no index or a frames file shorter than the index says); the next build removes it.

mod build;
mod codec;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

pub use build::{BuildSummary, Writer};
pub use codec::{encode, CacheFormat, Chunk};

use crate::data::clip::{frames_needed, index_into, PlanFn, PlannedClip};
use crate::data::datasets::VideoDataset;
use crate::data::{DataConfig, Split, Video};
use crate::seed::hash_str;
use crate::{Error, Result};

/// Name of the index inside a cache directory.
pub const INDEX: &str = "index.json";
/// Name of the frame store inside a cache directory.
pub const FRAMES: &str = "frames.bin";
/// Bumped when the on-disk layout changes (older caches are then rebuilt).
const FORMAT: u32 = 1;

/// What a video was read from: its file's size and modification time (`size =
/// u64::MAX` marks a file that could not be found, so a still-missing file is not
/// "changed").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceKey {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_s: u64,
    pub mtime_ns: u32,
}

impl SourceKey {
    /// The key of `path` as it is now.
    pub fn of(path: &Path) -> Self {
        let meta = fs::metadata(path).ok();
        let t = meta
            .as_ref()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        Self {
            path: path.to_path_buf(),
            size: meta.map_or(u64::MAX, |m| m.len()),
            mtime_s: t.as_secs(),
            mtime_ns: t.subsec_nanos(),
        }
    }

    fn describe(&self) -> String {
        if self.size == u64::MAX {
            "missing".into()
        } else {
            format!(
                "{} bytes, modified {}.{:09}",
                self.size, self.mtime_s, self.mtime_ns
            )
        }
    }
}

/// One cached video.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    offset: u64,
    frames: usize,
    height: usize,
    width: usize,
    label: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<SourceKey>,
    /// Why the source could not be read at build time (the video is skipped, as it
    /// would be without the cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Bytes of the stored chunk when it is not raw RGB (JPEG frames and their table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    len: Option<u64>,
}

impl Entry {
    /// Bytes one decoded frame takes.
    fn frame_bytes(&self) -> usize {
        self.height * self.width * 3
    }

    /// Bytes the video takes in the frame file.
    fn bytes(&self) -> u64 {
        self.len
            .unwrap_or((self.frames * self.frame_bytes()) as u64)
    }

    /// [`Entry::bytes`] without overflow (`None` when it would).
    fn checked_bytes(&self) -> Option<u64> {
        let raw = [self.height, self.width, 3]
            .iter()
            .try_fold(self.frames as u64, |n, &d| n.checked_mul(d as u64));
        match self.len {
            // A JPEG chunk holds at least its frame table; decoded frames must still fit
            // in memory-sized buffers.
            Some(len) => raw.and_then(|_| (len >= 4 * self.frames as u64).then_some(len)),
            None => raw,
        }
    }
}

/// `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Index {
    format: u32,
    /// [`config_hash`] of the `[data]` table the cache was built from, in hex.
    config: String,
    /// The source dataset's description, for humans.
    dataset: String,
    /// Length `frames.bin` must have.
    bytes: u64,
    /// How frames are stored (older caches: raw).
    #[serde(default, skip_serializing_if = "CacheFormat::is_raw")]
    frame_format: CacheFormat,
    train: Vec<Entry>,
    test: Vec<Entry>,
}

impl Index {
    fn entries(&self, split: Split) -> &[Entry] {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        }
    }
}

/// Hash of the keys of a `[data]` table that decide which frames its videos have.
pub fn config_hash(cfg: &DataConfig) -> String {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        for k in [
            "frames",
            "size",
            "workers",
            "augment",
            "cache",
            "clip_only",
            "skip_unused",
        ] {
            m.remove(k);
        }
        // The quality matters only to a JPEG cache (a raw one serialises no format).
        if !m.contains_key("cache_format") {
            m.remove("cache_quality");
        }
    }
    // serde_json objects are sorted maps, so the text is canonical.
    format!("{:016x}", hash_str(&v.to_string()))
}

/// Whether a cache directory can serve a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// No cache at this path.
    Missing,
    /// Up to date with its sources.
    Fresh,
    /// Present but not usable; the reason names the file or key that changed.
    Stale(String),
}

fn stale_message(dir: &Path, why: &str) -> Error {
    Error::Dataset {
        path: dir.to_path_buf(),
        message: format!(
            "frame cache is out of date: {why}; run `vssl data cache <recipe>` again to rebuild it"
        ),
    }
}

fn read_index(dir: &Path) -> std::result::Result<Option<Index>, String> {
    let path = dir.join(INDEX);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let index: Index = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a valid cache index ({e})", path.display()))?;
    if index.format != FORMAT {
        return Err(format!(
            "{} has format {}, this vssl writes format {FORMAT}",
            path.display(),
            index.format
        ));
    }
    Ok(Some(index))
}

/// Every readable entry must be a non-empty video lying inside the frame file (a
/// damaged or hand-edited index must not make a read overflow or allocate wildly).
fn check_extents(dir: &Path, index: &Index) -> std::result::Result<(), String> {
    for split in [Split::Train, Split::Test] {
        for (i, e) in index.entries(split).iter().enumerate() {
            if e.error.is_some() {
                continue;
            }
            let end = e
                .checked_bytes()
                .filter(|&n| n > 0)
                .and_then(|n| e.offset.checked_add(n));
            if end.is_none_or(|end| end > index.bytes) {
                return Err(format!(
                    "{} is damaged: {split:?} video {i} ({} frames of {}x{} at byte {}) does \
                     not lie inside the {} bytes of {FRAMES}",
                    dir.join(INDEX).display(),
                    e.frames,
                    e.height,
                    e.width,
                    e.offset,
                    index.bytes
                ));
            }
        }
    }
    Ok(())
}

/// Checks the index against the source dataset and the frame file; `Ok(None)` when
/// there is no index, `Err(why)` when it cannot be used.
fn validate(
    dir: &Path,
    source: &dyn VideoDataset,
    cfg: &DataConfig,
) -> std::result::Result<Option<Index>, String> {
    let index = match read_index(dir) {
        Ok(Some(i)) => i,
        Ok(None) => return Ok(None),
        Err(why) => return Err(why),
    };
    let want = config_hash(cfg);
    if index.config != want {
        return Err(format!(
            "it was built from a different [data] table (config hash {} in the cache, {want} now; \
                 kind, root, splits, split, list and the synthetic settings count)",
            index.config
        ));
    }
    for split in [Split::Train, Split::Test] {
        let entries = index.entries(split);
        if entries.len() != source.len(split) {
            return Err(format!(
                "the {split:?} split has {} videos, the cache {}",
                source.len(split),
                entries.len()
            ));
        }
        for (i, e) in entries.iter().enumerate() {
            let now = source.source_path(split, i);
            match (&e.source, now) {
                (None, None) => {}
                (Some(k), Some(p)) if k.path == p => {
                    let n = SourceKey::of(&p);
                    if n != *k {
                        return Err(format!(
                            "{} changed since the cache was built ({} then, {} now)",
                            p.display(),
                            k.describe(),
                            n.describe()
                        ));
                    }
                }
                (k, p) => {
                    let show = |p: Option<&Path>| {
                        p.map_or("no file".to_string(), |p| p.display().to_string())
                    };
                    return Err(format!(
                        "{split:?} video {i} now comes from {}, the cache has {}",
                        show(p.as_deref()),
                        show(k.as_ref().map(|k| k.path.as_path()))
                    ));
                }
            }
        }
    }
    check_extents(dir, &index)?;
    let frames = dir.join(FRAMES);
    let len = fs::metadata(&frames).map(|m| m.len()).unwrap_or(0);
    if len != index.bytes {
        return Err(format!(
            "{} holds {len} bytes, the index expects {} (incomplete or damaged)",
            frames.display(),
            index.bytes
        ));
    }
    Ok(Some(index))
}

/// Whether the cache at `dir` is missing, fresh, or stale for `source` built from `cfg`.
pub fn check(dir: &Path, source: &dyn VideoDataset, cfg: &DataConfig) -> Status {
    match validate(dir, source, cfg) {
        Ok(None) => Status::Missing,
        Ok(Some(_)) => Status::Fresh,
        Err(why) => Status::Stale(why),
    }
}

/// A dataset whose frames come from a cache; lengths, labels and classes still come
/// from the source dataset (which is cheap to build: it only lists videos).
pub struct CachedDataset {
    dir: PathBuf,
    source: Arc<dyn VideoDataset>,
    file: File,
    index: Index,
}

impl CachedDataset {
    /// Opens the cache at `dir` for `source` built from `cfg`. Errors (naming the cache
    /// and what changed) when it is missing, incomplete, or stale.
    pub fn open(dir: &Path, source: Arc<dyn VideoDataset>, cfg: &DataConfig) -> Result<Self> {
        let index = validate(dir, source.as_ref(), cfg)
            .map_err(|why| stale_message(dir, &why))?
            .ok_or_else(|| Error::Dataset {
                path: dir.to_path_buf(),
                message: "no frame cache here (data.cache is set); build it with \
                      `vssl data cache <recipe>`"
                    .into(),
            })?;
        let frames = dir.join(FRAMES);
        let file = File::open(&frames).map_err(|e| Error::io(&frames, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            source,
            file,
            index,
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Frames `wanted` (sorted, distinct) of the video `e`, in that order; each run of
    /// consecutive frames is one positioned read.
    fn read_frames(&self, e: &Entry, wanted: &[usize]) -> Result<Video> {
        let path = self.dir.join(FRAMES);
        let io = |err| Error::io(&path, err);
        let frame = e.frame_bytes();
        let mut data = vec![0u8; wanted.len() * frame];
        let runs = runs(wanted);
        match self.index.frame_format {
            CacheFormat::Raw => {
                for (k, run) in runs {
                    let at = e.offset + (wanted[k] * frame) as u64;
                    read_exact_at(&self.file, &mut data[k * frame..(k + run) * frame], at)
                        .map_err(io)?;
                }
            }
            CacheFormat::Jpeg => {
                let damaged = |what: String| Error::Dataset {
                    path: path.clone(),
                    message: format!("damaged frame cache at byte {}: {what}", e.offset),
                };
                let mut table = vec![0u8; 4 * e.frames];
                read_exact_at(&self.file, &mut table, e.offset).map_err(io)?;
                let ranges = codec::frame_ranges(&table, e.bytes())
                    .ok_or_else(|| damaged("its frame table overruns the video".into()))?;
                let mut buf = Vec::new();
                for (k, run) in runs {
                    let (lo, hi) = (ranges[wanted[k]].0, ranges[wanted[k] + run - 1].1);
                    buf.resize((hi - lo) as usize, 0);
                    read_exact_at(&self.file, &mut buf, e.offset + lo).map_err(io)?;
                    for j in 0..run {
                        let (a, b) = ranges[wanted[k] + j];
                        let out = &mut data[(k + j) * frame..(k + j + 1) * frame];
                        codec::decode_jpeg(
                            &buf[(a - lo) as usize..(b - lo) as usize],
                            e.width,
                            e.height,
                            out,
                        )
                        .map_err(|err| damaged(format!("frame {}: {err}", wanted[k] + j)))?;
                    }
                }
            }
        }
        Ok(Video {
            frames: wanted.len(),
            height: e.height,
            width: e.width,
            data,
        })
    }

    /// The index entry of a readable video (an unreadable one errors as its source did).
    fn entry(&self, split: Split, index: usize) -> Result<&Entry> {
        let e = self.index.entries(split).get(index).ok_or_else(|| {
            Error::Internal(format!("{split:?} video {index} is not in the cache"))
        })?;
        if let Some(msg) = &e.error {
            // The same message as reading the source gave, so skips read the same.
            return Err(Error::BadInput(msg.clone()));
        }
        Ok(e)
    }
}

/// Runs of consecutive values in sorted `v`, as (start position, length).
fn runs(v: &[usize]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut k = 0;
    while k < v.len() {
        let mut run = 1;
        while k + run < v.len() && v[k + run] == v[k] + run {
            run += 1;
        }
        out.push((k, run));
        k += run;
    }
    out
}

#[cfg(unix)]
fn read_exact_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(f: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match f.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

impl VideoDataset for CachedDataset {
    fn len(&self, split: Split) -> usize {
        self.source.len(split)
    }
    fn label(&self, split: Split, index: usize) -> Option<u32> {
        self.source.label(split, index)
    }
    fn num_classes(&self) -> usize {
        self.source.num_classes()
    }
    fn video(&self, split: Split, index: usize) -> Result<Video> {
        let e = self.entry(split, index)?;
        let all: Vec<usize> = (0..e.frames).collect();
        self.read_frames(e, &all)
    }
    /// Reads only the frames the clips show (one read per run of consecutive frames).
    fn planned_video(
        &self,
        split: Split,
        index: usize,
        plan: &mut PlanFn<'_>,
    ) -> Result<(Video, Vec<PlannedClip>)> {
        let e = self.entry(split, index)?;
        let mut clips = plan(e.frames)?;
        let wanted = frames_needed(&clips);
        let video = self.read_frames(e, &wanted)?;
        index_into(&mut clips, &wanted);
        Ok((video, clips))
    }
    fn describe(&self) -> String {
        format!(
            "{} (frames from cache {})",
            self.source.describe(),
            self.dir.display()
        )
    }
    fn source_path(&self, split: Split, index: usize) -> Option<PathBuf> {
        self.source.source_path(split, index)
    }
}
