//! Writing a frame cache (the on-disk format; see the parent module): videos are
//! appended in order to a partial directory, the index is written last, and the
//! directory is then renamed into place. Walking a dataset to fill one (parallel
//! decoding, progress, the up-to-date check) is the application's job:
//! `vssl::app::cache`.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{config_hash, CacheFormat, Chunk, Entry, Index, SourceKey, FORMAT, FRAMES, INDEX};
use crate::data::{DataConfig, Split};
use crate::{Error, Result};

/// What a build wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSummary {
    pub videos: usize,
    /// Videos that could not be read (recorded and skipped at training time).
    pub unreadable: usize,
    pub bytes: u64,
}

/// `<dir>` with `suffix` appended to its last component.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Removes partial directories left by interrupted builds of `dir`.
fn remove_leftovers(dir: &Path) {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let prefix = format!("{}.partial-", name.to_string_lossy());
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let Ok(listing) = fs::read_dir(parent) else {
        return;
    };
    for e in listing.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            tracing::info!(
                "removing {} (left by an interrupted cache build)",
                e.path().display()
            );
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn sync_dir(dir: &Path) {
    // Makes renames durable on POSIX; not supported (and not needed) everywhere.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A cache being written: videos go in with [`Writer::push`] in dataset order (train
/// split first, then test), and [`Writer::finish`] makes it the cache at `dir`,
/// replacing any cache there only once the new one is complete. A writer dropped
/// unfinished leaves a partial directory that the next build removes.
pub struct Writer {
    dir: PathBuf,
    tmp: PathBuf,
    frames_path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    unreadable: usize,
    train: Vec<Entry>,
    test: Vec<Entry>,
    format: CacheFormat,
}

impl Writer {
    /// Starts a cache for `dir` whose videos come as chunks in `format` (removing
    /// partial directories of interrupted builds).
    pub fn create(dir: &Path, format: CacheFormat) -> Result<Self> {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        remove_leftovers(dir);
        let tmp = sibling(dir, &format!(".partial-{}", std::process::id()));
        fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let frames_path = tmp.join(FRAMES);
        let file = File::create(&frames_path).map_err(|e| Error::io(&frames_path, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tmp,
            frames_path,
            out: BufWriter::with_capacity(1 << 20, file),
            offset: 0,
            unreadable: 0,
            train: Vec::new(),
            test: Vec::new(),
            format,
        })
    }

    /// Appends the next video of `split`: its frames, or (when it could not be read)
    /// an entry recording why, which training then skips. `source` is the key of the
    /// file it was read from, taken before reading it.
    pub fn push(
        &mut self,
        split: Split,
        label: Option<u32>,
        source: Option<SourceKey>,
        video: Result<Chunk>,
    ) -> Result<()> {
        let entry = match video {
            Ok(v) => {
                self.out
                    .write_all(&v.bytes)
                    .map_err(|e| Error::io(&self.frames_path, e))?;
                let e = Entry {
                    offset: self.offset,
                    frames: v.frames,
                    height: v.height,
                    width: v.width,
                    label,
                    source,
                    error: None,
                    len: (!self.format.is_raw()).then_some(v.bytes.len() as u64),
                };
                self.offset += e.bytes();
                let pushed = (self.train.len() + self.test.len() + 1) as u64;
                crate::io::crash_point("VSSL_CRASH_AT_CACHE_VIDEO", pushed);
                e
            }
            Err(err) => {
                self.unreadable += 1;
                Entry {
                    offset: self.offset,
                    frames: 0,
                    height: 0,
                    width: 0,
                    label,
                    source,
                    error: Some(err.to_string()),
                    len: None,
                }
            }
        };
        match split {
            Split::Train => self.train.push(entry),
            Split::Test => self.test.push(entry),
        }
        Ok(())
    }

    /// Syncs the frames, writes the index (keyed by `cfg` and describing the source as
    /// `dataset`) and swaps the cache into place.
    pub fn finish(self, cfg: &DataConfig, dataset: String) -> Result<BuildSummary> {
        let Self {
            dir,
            tmp,
            frames_path,
            out,
            offset,
            unreadable,
            train,
            test,
            format,
        } = self;
        let dir = dir.as_path();
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&frames_path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&frames_path, e))?;
        drop(file);
        let videos = train.len() + test.len();
        let index = Index {
            format: FORMAT,
            config: config_hash(cfg),
            dataset,
            bytes: offset,
            frame_format: format,
            train,
            test,
        };
        let index_path = tmp.join(INDEX);
        let text = serde_json::to_string(&index)
            .map_err(|e| Error::Internal(format!("cache index serialisation: {e}")))?;
        let mut f = File::create(&index_path).map_err(|e| Error::io(&index_path, e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&index_path, e))?;
        sync_dir(&tmp);
        // Swap in: the old cache (if any) moves aside first, as a directory cannot be
        // renamed over a non-empty one. Readers in between see "no cache", never a torn one.
        let old = sibling(dir, &format!(".old-{}", std::process::id()));
        let had_old = dir.exists();
        if had_old {
            fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        }
        fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent);
        }
        if had_old {
            let _ = fs::remove_dir_all(&old);
        }
        Ok(BuildSummary {
            videos,
            unreadable,
            bytes: offset,
        })
    }
}
