//! Building frame caches (`vssl data cache`): walks a dataset, decoding its videos in
//! parallel chunks, and appends them in order through the cache format's
//! [`crate::data::cache::Writer`], reporting progress. The format itself
//! (layout, staleness keys, reading) lives in [`crate::data::cache`].

use std::path::Path;

use rayon::prelude::*;

use crate::data::cache::{check, encode, BuildSummary, Chunk, SourceKey, Status, Writer};
use crate::data::datasets::VideoDataset;
use crate::data::Split;
use crate::recipe::{DataConfig, Recipe};
use crate::{Error, Result};

/// Videos decoded in parallel before being appended in order.
const CHUNK: usize = 16;

/// Decodes every video of `source` (both splits) into a cache at `dir`, replacing any
/// cache there only once the new one is complete. `progress(done, total)` is called
/// after each video.
pub fn build(
    dir: &Path,
    source: &dyn VideoDataset,
    cfg: &DataConfig,
    progress: &dyn Fn(usize, usize),
) -> Result<BuildSummary> {
    let mut writer = Writer::create(dir, cfg.cache_format)?;
    let total = source.len(Split::Train) + source.len(Split::Test);
    let mut done = 0usize;
    for split in [Split::Train, Split::Test] {
        let n = source.len(split);
        for start in (0..n).step_by(CHUNK) {
            // Key the source before reading it: a file changed mid-build then shows
            // up as stale on the next open instead of being trusted.
            // Frames are encoded (JPEG) in the same parallel pass.
            let read: Vec<(Option<SourceKey>, Result<Chunk>)> = (start..(start + CHUNK).min(n))
                .into_par_iter()
                .map(|i| {
                    let key = source.source_path(split, i).map(|p| SourceKey::of(&p));
                    let chunk = source
                        .video(split, i)
                        .and_then(|v| encode(v, cfg.cache_format, cfg.cache_quality));
                    (key, chunk)
                })
                .collect();
            for (k, (key, video)) in read.into_iter().enumerate() {
                if let Err(err) = &video {
                    tracing::warn!("caching: unreadable video recorded as such: {err}");
                }
                writer.push(split, source.label(split, start + k), key, video)?;
                done += 1;
                progress(done, total);
            }
        }
    }
    writer.finish(cfg, source.describe())
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
    cfg: &DataConfig,
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

/// `vssl data cache`: builds (or confirms) the recipe's frame caches, `data.cache` and
/// then `eval.data.cache`, with a progress bar, logging what was done; `ready(dir)` is
/// called as each one is up to date. A recipe that sets neither is bad input.
pub fn refresh_recipe(r: &Recipe, force: bool, ready: &mut dyn FnMut(&Path)) -> Result<()> {
    let tables =
        std::iter::once(("data", &r.data)).chain(r.eval.data.iter().map(|d| ("eval.data", d)));
    let mut any = false;
    for (name, cfg) in tables {
        let Some(dir) = &cfg.cache else { continue };
        any = true;
        let source = crate::data::datasets::build(cfg)?;
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} videos {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let progress = |done: usize, total: usize| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        };
        match refresh(dir, source.as_ref(), cfg, force, &progress)? {
            Refresh::UpToDate => tracing::info!("{name}.cache {} is up to date", dir.display()),
            Refresh::Built { reason, summary } => {
                bar.finish_and_clear();
                tracing::info!(
                    "{name}.cache {}: cached {} videos ({} unreadable), {:.1} MB ({reason})",
                    dir.display(),
                    summary.videos,
                    summary.unreadable,
                    summary.bytes as f64 / 1e6
                );
            }
        }
        ready(dir);
    }
    if !any {
        return Err(Error::BadInput(
            "the recipe sets no data.cache: add `cache = \"DIR\"` to [data] or pass --set data.cache=\"DIR\"".into(),
        ));
    }
    Ok(())
}
