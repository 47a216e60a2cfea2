//! Datasets of video files (UCF101, HMDB51, CSV lists, folders): one struct over a
//! [`Listing`] that [`crate::data::splits`] checked eagerly. Videos decode lazily, one
//! at a time, when the loader asks for them; frames are resized on decode so the
//! shorter side is `data.short_side` (default `data.size`), which bounds the memory
//! a decoded video takes. An unreadable, empty or too-short video is an
//! [`Error::Video`] the loader skips and the trainer lists in `bad_videos.txt`.

use std::path::PathBuf;

use crate::data::clip::{PlanFn, PlannedClip};
use crate::data::datasets::{plan_whole, VideoDataset};
use crate::data::splits::{self, Listing};
use crate::data::{DataConfig, DataKind, Split, Video};
use crate::{Error, Result};

/// A dataset of video files on disk.
#[derive(Debug, Clone)]
pub struct FileDataset {
    kind: DataKind,
    listing: Listing,
    short_side: usize,
    max_frames: Option<usize>,
    /// Videos with fewer decoded frames than this are bad input (a clip needs them).
    min_frames: usize,
    /// Decode training videos only up to the last frame their clips need
    /// (`data.clip_only`).
    clip_only: bool,
    /// Leave unneeded non-reference frames undecoded (`data.skip_unused`).
    #[cfg_attr(not(feature = "video"), allow(dead_code))]
    skip_unused: bool,
    /// Decode at reduced resolution where the codec and sizes allow (`data.decode_lowres`).
    lowres: bool,
    /// The packet scans clip-only decoding plans on, one per file for the run (shared
    /// by clones, so by every loader worker).
    #[cfg(feature = "video")]
    scans: std::sync::Arc<crate::data::scan_memo::ScanMemo>,
}

impl FileDataset {
    /// Parses and checks the split files or lists a `[data]` section names.
    pub fn from_cfg(cfg: &DataConfig) -> Result<Self> {
        let need = |p: &Option<PathBuf>, key: &str| {
            p.clone().ok_or_else(|| {
                Error::BadInput(format!(
                    "data.{key} is required for data.kind = {:?}",
                    cfg.kind
                ))
            })
        };
        let listing = match cfg.kind {
            DataKind::Ucf101 => splits::ucf101(
                &need(&cfg.root, "root")?,
                &need(&cfg.splits, "splits")?,
                cfg.split,
            )?,
            DataKind::Hmdb51 => splits::hmdb51(
                &need(&cfg.root, "root")?,
                &need(&cfg.splits, "splits")?,
                cfg.split,
            )?,
            DataKind::Csv => splits::csv(&need(&cfg.list, "list")?, cfg.test_list.as_deref())?,
            DataKind::Folder => splits::folder(&need(&cfg.root, "root")?)?,
            DataKind::Synthetic => {
                return Err(Error::Internal("synthetic data is not file-backed".into()))
            }
        };
        Ok(Self {
            kind: cfg.kind,
            listing,
            short_side: cfg.short_side.unwrap_or(cfg.size),
            max_frames: cfg.max_frames,
            min_frames: cfg.frames,
            clip_only: cfg.clip_only,
            skip_unused: cfg.skip_unused,
            lowres: cfg.decode_lowres,
            #[cfg(feature = "video")]
            scans: std::sync::Arc::new(crate::data::scan_memo::ScanMemo::new(
                crate::data::scan_memo::DEFAULT_BUDGET,
            )),
        })
    }

    /// The class names (index = label).
    pub fn classes(&self) -> &[String] {
        &self.listing.classes
    }

    fn entry(&self, split: Split, index: usize) -> Result<&splits::Entry> {
        self.entries(split)
            .get(index)
            .ok_or_else(|| Error::Internal(format!("{split:?} video {index} out of range")))
    }

    fn long_enough(&self, entry: &splits::Entry, frames: usize) -> Result<()> {
        if frames < self.min_frames {
            return Err(Error::Video {
                path: entry.path.clone(),
                message: format!(
                    "too short: {frames} decoded frames, a clip needs data.frames = {}",
                    self.min_frames
                ),
            });
        }
        Ok(())
    }

    /// Clip-only decoding: plan on the packet count, decode up to the last frame the
    /// clips need (from the key frame before the first, where that is exact), and
    /// plan again on the true count if the decode ran out first (a stream whose packet
    /// count is not its frame count), so the clips are those a full decode gives.
    #[cfg(feature = "video")]
    fn clip_frames(
        &self,
        entry: &splits::Entry,
        plan: &mut PlanFn<'_>,
    ) -> Result<(Video, Vec<PlannedClip>)> {
        use crate::data::clip::{frames_needed, index_into};
        use crate::data::decode::decode_selected;
        let cap = |n: usize| self.max_frames.map_or(n, |m| n.min(m));
        let scan = self.scans.scan(&entry.path)?;
        let mut len = cap(scan.packets);
        if len < self.min_frames || !scan.clean {
            // Too short by its packets, or damaged: a full decode decides the count.
            return plan_whole(self.video_of(entry)?, plan);
        }
        for _ in 0..2 {
            let mut clips = plan(len)?;
            let wanted = frames_needed(&clips);
            let sel = decode_selected(
                &entry.path,
                Some(self.short_side),
                &wanted,
                &scan,
                self.skip_unused,
                self.lowres,
            )?;
            match sel.total.map(cap) {
                Some(total) if total != len => {
                    tracing::debug!(
                        "{}: {} packets but {total} frames; clips planned again",
                        entry.path.display(),
                        scan.packets
                    );
                    self.long_enough(entry, total)?;
                    len = total;
                }
                _ if sel.video.frames == wanted.len() => {
                    index_into(&mut clips, &wanted);
                    return Ok((sel.video, clips));
                }
                _ => break,
            }
        }
        Err(Error::Video {
            path: entry.path.clone(),
            message: "the frames planned on the decoded frame count were not all decoded".into(),
        })
    }

    #[cfg(not(feature = "video"))]
    fn clip_frames(
        &self,
        entry: &splits::Entry,
        plan: &mut PlanFn<'_>,
    ) -> Result<(Video, Vec<PlannedClip>)> {
        plan_whole(self.video_of(entry)?, plan)
    }

    fn video_of(&self, entry: &splits::Entry) -> Result<Video> {
        let v = decode(&entry.path, self.short_side, self.max_frames, self.lowres)?;
        self.long_enough(entry, v.frames)?;
        Ok(v)
    }

    fn entries(&self, split: Split) -> &[splits::Entry] {
        match split {
            Split::Train => &self.listing.train,
            Split::Test => &self.listing.test,
        }
    }
}

impl VideoDataset for FileDataset {
    fn len(&self, split: Split) -> usize {
        self.entries(split).len()
    }
    fn label(&self, split: Split, index: usize) -> Option<u32> {
        self.entries(split).get(index)?.label
    }
    fn num_classes(&self) -> usize {
        self.listing.classes.len()
    }
    fn video(&self, split: Split, index: usize) -> Result<Video> {
        self.video_of(self.entry(split, index)?)
    }
    fn planned_video(
        &self,
        split: Split,
        index: usize,
        plan: &mut PlanFn<'_>,
    ) -> Result<(Video, Vec<PlannedClip>)> {
        let entry = self.entry(split, index)?;
        if !self.clip_only {
            return plan_whole(self.video_of(entry)?, plan);
        }
        self.clip_frames(entry, plan)
    }
    fn source_path(&self, split: Split, index: usize) -> Option<PathBuf> {
        Some(self.entries(split).get(index)?.path.clone())
    }
    fn describe(&self) -> String {
        format!(
            "{:?} ({} train / {} test videos, {} classes, shorter side {})",
            self.kind,
            self.len(Split::Train),
            self.len(Split::Test),
            self.num_classes(),
            self.short_side
        )
        .to_lowercase()
    }
}

#[cfg(feature = "video")]
fn decode(
    path: &std::path::Path,
    short_side: usize,
    max_frames: Option<usize>,
    lowres: bool,
) -> Result<Video> {
    crate::data::decode::decode_video_limited(path, Some(short_side), max_frames, lowres)
}

#[cfg(not(feature = "video"))]
fn decode(path: &std::path::Path, _: usize, _: Option<usize>, _: bool) -> Result<Video> {
    Err(Error::BadInput(format!(
        "{}: decoding video files needs vssl built with the `video` feature (ffmpeg)",
        path.display()
    )))
}
