//! The `[data]` recipe section: which dataset, and the clip geometry fed to the model.
//! It lives beside the datasets it configures so `data` needs nothing from the recipe
//! layer; `recipe` aggregates it and reports its errors with the layer and dotted key.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::augment::AugmentConfig;
use crate::data::cache::CacheFormat;
use crate::data::synthetic::SyntheticConfig;
use crate::error::{check, Invalid};

/// Where videos come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataKind {
    /// Built-in procedural videos; nothing to download.
    Synthetic,
    Ucf101,
    Hmdb51,
    Csv,
    Folder,
}

/// `[data]`: the dataset and the clip geometry fed to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub kind: DataKind,
    /// Folder of videos (ucf101, hmdb51, folder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Folder of split files (ucf101, hmdb51).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub splits: Option<PathBuf>,
    /// Official split number, 1..=3 (synthetic: 2 and 3 are independent draws of the world).
    pub split: u8,
    /// `path,label` list (csv): the train split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<PathBuf>,
    /// `path,label` list of the test split (csv; optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_list: Option<PathBuf>,
    /// Decoded frames are resized so their shorter side has this many pixels (aspect
    /// kept); default `data.size`. Bounds the memory a decoded video takes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_side: Option<usize>,
    /// Decode at most this many frames of each video (the first ones): caps the memory
    /// a long video takes in a loader worker. Default: every frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frames: Option<usize>,
    /// Decode a training video only up to the last frame its clips need, starting at
    /// the key frame before the first one where that is exact, and convert only those
    /// frames (the frames are bit-identical to a full decode's). `false` decodes every
    /// frame first, as earlier versions did (A/B timing in `vssl bench data`).
    pub clip_only: bool,
    /// With `clip_only`: leave undecoded the non-reference frames (B-frames, mostly) no
    /// clip shows, where pts ranks identify every frame. Nothing references them, so the
    /// frames delivered stay bit-identical. `false` decodes every frame up to the last
    /// one needed.
    pub skip_unused: bool,
    /// Decode at reduced resolution (ffmpeg's `lowres`: MPEG-4 part 2, H.263, MJPEG and
    /// others; not H.264) when the reduced frame's shorter side is still at least 90% of
    /// `short_side`, then resize to the usual output size. UCF101's 320x240 XviD decodes
    /// at 160x120 for shorter sides up to 133. Frames stay close to the full-resolution
    /// path's (README) but are not identical; `false` always decodes at full size.
    pub decode_lowres: bool,
    /// Frames per clip fed to the model.
    pub frames: usize,
    /// Spatial size (square crop) fed to the model.
    pub size: usize,
    /// Worker threads preparing batches ahead of the model.
    pub workers: usize,
    /// Generator settings for `kind = "synthetic"`.
    pub synthetic: SyntheticConfig,
    /// Training augmentation and the normalisation (`[data.augment]`).
    pub augment: AugmentConfig,
    /// Frame cache directory written by `vssl data cache`; read instead of decoding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<PathBuf>,
    /// How the frame cache stores frames: `"raw"` RGB (default) or `"jpeg"` (about 10x
    /// smaller, decoded on read; lossy at `cache_quality`).
    #[serde(skip_serializing_if = "CacheFormat::is_raw")]
    pub cache_format: CacheFormat,
    /// JPEG quality of a `"jpeg"` cache, 1..=100.
    pub cache_quality: u8,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            kind: DataKind::Synthetic,
            root: None,
            splits: None,
            split: 1,
            list: None,
            test_list: None,
            short_side: None,
            max_frames: None,
            clip_only: true,
            skip_unused: true,
            decode_lowres: true,
            frames: 8,
            size: 32,
            workers: 2,
            synthetic: SyntheticConfig::default(),
            augment: AugmentConfig::default(),
            cache: None,
            cache_format: CacheFormat::Raw,
            cache_quality: 90,
        }
    }
}

impl DataConfig {
    /// Range checks of one `[data]` table (also used for `[eval.data]`). On failure
    /// returns `(key, message)` with the key relative to the table (`frames`,
    /// `augment.hflip`); messages name other keys by their `data.` path.
    pub fn validate(&self) -> std::result::Result<(), Invalid> {
        let d = self;
        check(d.frames >= 1, "frames", || "must be at least 1".into())?;
        check(d.size >= 8, "size", || {
            format!("must be at least 8, got {}", d.size)
        })?;
        check((1..=3).contains(&d.split), "split", || {
            format!("must be 1, 2 or 3, got {}", d.split)
        })?;
        if let Some(m) = d.max_frames {
            check(m >= d.frames, "max_frames", || {
                format!("must be at least data.frames = {}, got {m}", d.frames)
            })?;
        }
        check(
            (1..=100).contains(&d.cache_quality),
            "cache_quality",
            || format!("must be 1..=100, got {}", d.cache_quality),
        )?;
        if let Some(s) = d.short_side {
            check(s >= d.size, "short_side", || {
                format!("must be at least data.size = {}, got {s}", d.size)
            })?;
        }
        d.augment
            .validate()
            .map_err(|(k, m)| (format!("augment.{k}"), m))?;
        match d.kind {
            DataKind::Synthetic => {
                d.synthetic
                    .validate()
                    .map_err(|(k, m)| (format!("synthetic.{k}"), m))?;
                let sf = d.synthetic.video_frames;
                check(d.frames <= sf, "frames", || {
                    format!(
                        "{} frames per clip exceed data.synthetic.video_frames = {sf}",
                        d.frames
                    )
                })?;
                let ss = d.synthetic.size;
                check(d.size <= ss, "size", || {
                    format!("{} exceeds data.synthetic.size = {ss}", d.size)
                })?;
            }
            DataKind::Ucf101 | DataKind::Hmdb51 => {
                check(d.root.is_some(), "root", || {
                    "required for this data.kind".into()
                })?;
                check(d.splits.is_some(), "splits", || {
                    "required for this data.kind".into()
                })?;
            }
            DataKind::Csv => check(d.list.is_some(), "list", || {
                "required for data.kind = \"csv\"".into()
            })?,
            DataKind::Folder => check(d.root.is_some(), "root", || {
                "required for data.kind = \"folder\"".into()
            })?,
        }
        Ok(())
    }
}
