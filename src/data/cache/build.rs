//! Building a frame cache: decode in parallel chunks, append in order, write the index
//! last, then rename the partial directory into place (see the parent module).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{check, config_hash, Entry, Index, SourceKey, Status, CHUNK, FORMAT, FRAMES, INDEX};
use crate::data::datasets::VideoDataset;
use crate::data::{DataCfg, Split, Video};
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

/// Decodes every video of `source` (both splits) into a cache at `dir`, replacing any
/// cache there only once the new one is complete. `progress(done, total)` is called
/// after each video.
pub fn build(
    dir: &Path,
    source: &dyn VideoDataset,
    cfg: &DataCfg,
    progress: &dyn Fn(usize, usize),
) -> Result<BuildSummary> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    remove_leftovers(dir);
    let tmp = sibling(dir, &format!(".partial-{}", std::process::id()));
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let frames_path = tmp.join(FRAMES);
    let file = File::create(&frames_path).map_err(|e| Error::io(&frames_path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let total = source.len(Split::Train) + source.len(Split::Test);
    let (mut offset, mut done, mut unreadable) = (0u64, 0usize, 0usize);
    let mut lists = (Vec::new(), Vec::new());
    for split in [Split::Train, Split::Test] {
        let n = source.len(split);
        for start in (0..n).step_by(CHUNK) {
            // Key the source before reading it: a file changed mid-build then shows
            // up as stale on the next open instead of being trusted.
            let read: Vec<(Option<SourceKey>, Result<Video>)> = (start..(start + CHUNK).min(n))
                .into_par_iter()
                .map(|i| {
                    let key = source.source_path(split, i).map(|p| SourceKey::of(&p));
                    (key, source.video(split, i))
                })
                .collect();
            for (k, (key, video)) in read.into_iter().enumerate() {
                let i = start + k;
                let label = source.label(split, i);
                let entry = match video {
                    Ok(v) => {
                        out.write_all(&v.data)
                            .map_err(|e| Error::io(&frames_path, e))?;
                        let e = Entry {
                            offset,
                            frames: v.frames,
                            height: v.height,
                            width: v.width,
                            label,
                            source: key,
                            error: None,
                        };
                        offset += e.bytes();
                        e
                    }
                    Err(err) => {
                        tracing::warn!("caching: unreadable video recorded as such: {err}");
                        unreadable += 1;
                        Entry {
                            offset,
                            frames: 0,
                            height: 0,
                            width: 0,
                            label,
                            source: key,
                            error: Some(err.to_string()),
                        }
                    }
                };
                match split {
                    Split::Train => lists.0.push(entry),
                    Split::Test => lists.1.push(entry),
                }
                done += 1;
                progress(done, total);
            }
        }
    }
    let file = out
        .into_inner()
        .map_err(|e| Error::io(&frames_path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(&frames_path, e))?;
    drop(file);
    let index = Index {
        format: FORMAT,
        config: config_hash(cfg),
        dataset: source.describe(),
        bytes: offset,
        train: lists.0,
        test: lists.1,
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
        videos: total,
        unreadable,
        bytes: offset,
    })
}

/// What [`refresh`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// The cache was already up to date.
    UpToDate,
    /// The cache was (re)built; `reason` says why (missing, stale: what changed, forced).
    Built {
        reason: String,
        summary: BuildSummary,
    },
}

/// Builds the cache at `dir` unless it is already fresh (or `force`).
pub fn refresh(
    dir: &Path,
    source: &dyn VideoDataset,
    cfg: &DataCfg,
    force: bool,
    progress: &dyn Fn(usize, usize),
) -> Result<Refresh> {
    let reason = match check(dir, source, cfg) {
        Status::Fresh if !force => return Ok(Refresh::UpToDate),
        Status::Fresh => "rebuild forced".to_string(),
        Status::Missing => "no cache yet".to_string(),
        Status::Stale(why) => why,
    };
    let summary = build(dir, source, cfg, progress)?;
    Ok(Refresh::Built { reason, summary })
}
