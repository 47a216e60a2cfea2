//! Recipes: the typed, validated description of one run. A recipe is layered with
//! figment from base files, the experiment file, a sweep point, `VSSL_` environment
//! variables and `--set` arguments (see [`layers`]); this module holds the schema
//! and the range checks. Every section denies unknown keys, and every error names
//! the layer (file, env, `--set`) and the dotted key.

pub mod layers;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::data::augment::{AugmentCfg, CropMode};
use crate::data::synthetic::SyntheticConfig;
pub use crate::registry::{MethodCfg, MethodKind};
use crate::train::optim::OptimizerKind;
use crate::train::schedule::ScheduleKind;

pub use layers::{load, RecipeSource};

/// A fully resolved recipe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    /// Run name (defaults to the experiment file's stem).
    pub name: String,
    pub data: DataCfg,
    pub backbone: BackboneCfg,
    pub method: MethodCfg,
    pub train: TrainCfg,
    pub eval: EvalCfg,
}

impl Recipe {
    /// The recipe as TOML, as written to `recipe.resolved.toml` and into weights metadata.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# could not serialise recipe: {e}\n"))
    }
}

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
pub struct DataCfg {
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
    /// Frames per clip fed to the model.
    pub frames: usize,
    /// Spatial size (square crop) fed to the model.
    pub size: usize,
    /// Worker threads preparing batches ahead of the model.
    pub workers: usize,
    /// Generator settings for `kind = "synthetic"`.
    pub synthetic: SyntheticConfig,
    /// Training augmentation and the normalisation (`[data.augment]`).
    pub augment: AugmentCfg,
    /// Frame cache directory written by `vssl data cache`; read instead of decoding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<PathBuf>,
}

impl Default for DataCfg {
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
            frames: 8,
            size: 32,
            workers: 2,
            synthetic: SyntheticConfig::default(),
            augment: AugmentCfg::default(),
            cache: None,
        }
    }
}

/// Backbone architectures (see `backbone` for the exact structures and names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// torchvision's R3D-18: 3x3x3 convolutions everywhere (widths 64..512, two basic
    /// blocks per stage).
    #[serde(rename = "r3d_18")]
    R3d18,
    /// torchvision's MC3-18: R3D-18 with 3D convolutions in stage 1 only and 1x3x3
    /// (no temporal) convolutions in stages 2-4.
    #[serde(rename = "mc3_18")]
    Mc318,
    /// torchvision's R(2+1)D-18: every 3D convolution factorised into 1x3x3 then 3x1x1.
    #[serde(rename = "r2plus1d_18")]
    R2plus1d18,
    /// A CPU-friendly R3D (widths and depths from `widths`/`layers`), for quick recipes.
    R3dSmall,
    /// C3D with batch norm as in VCOP's self-supervised code (8 conv layers).
    C3d,
}

/// Normalisation layers inside the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// BatchNorm3d.
    Bn,
    /// Temporal Group Normalization (`ops::tgn`) with `tgn_groups` groups.
    Tgn,
}

/// `[backbone]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackboneCfg {
    pub arch: Arch,
    pub norm: NormKind,
    /// Channels of the four stages (r3d_small only; the 18-layer nets use 64,128,256,512).
    pub widths: [usize; 4],
    /// Basic blocks per stage (r3d_small only; the 18-layer nets use 2,2,2,2).
    pub layers: [usize; 4],
    /// Temporal groups per part of the network when `norm = "tgn"`: entry 0 is the stem
    /// (C3D: conv1), entries 1-4 are stages layer1..layer4 (C3D: conv2, conv3, conv4,
    /// conv5). Each layer clamps its entry to the time steps it sees for `data.frames`.
    pub tgn_groups: [usize; 5],
    /// Stage 4 without temporal stride: its first convolution gets temporal stride 1,
    /// dilation 2 and padding 2 and its downsample temporal stride 1 (TCLR), so 16
    /// frames give T' = 4 instead of 2 (ResNets only; no extra parameters).
    pub temporal_dilation_last_stage: bool,
    /// Build the classifier (`fc`, C3D: `linear`) with this many classes. Not used by
    /// the backbone's feature map; absent by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
}

impl Default for BackboneCfg {
    fn default() -> Self {
        Self {
            arch: Arch::R3dSmall,
            norm: NormKind::Bn,
            widths: [16, 32, 64, 128],
            layers: [1, 1, 1, 1],
            tgn_groups: [4, 4, 2, 2, 1],
            temporal_dilation_last_stage: false,
            num_classes: None,
        }
    }
}

/// `[train]`: optimiser, schedule, length, checkpoints, seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainCfg {
    pub seed: u64,
    /// Videos per batch (methods may turn one video into several clips).
    pub batch_size: usize,
    /// Optimiser steps; if `epochs` is set, steps = epochs * ceil(videos / batch_size).
    pub steps: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u64>,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: u64,
    /// Step schedule: decay points as fractions of the run (e.g. [0.5, 0.75]).
    pub milestones: Vec<f64>,
    pub gamma: f64,
    pub min_lr: f64,
    /// Global gradient-norm clip; 0 disables.
    pub grad_clip: f64,
    /// Save a resumable checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk (oldest deleted first).
    pub keep_checkpoints: usize,
    /// Write a metrics.jsonl line every this many steps.
    pub log_every: u64,
}

impl Default for TrainCfg {
    fn default() -> Self {
        Self {
            seed: 0,
            batch_size: 16,
            steps: 200,
            epochs: None,
            optimizer: OptimizerKind::Sgd,
            lr: 0.01,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 0,
            milestones: vec![0.5, 0.75],
            gamma: 0.1,
            min_lr: 0.0,
            grad_clip: 40.0,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            log_every: 10,
        }
    }
}

/// How a backbone feature map becomes one feature vector per clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Global average over time and space: `[C]`.
    Pooled,
    /// Average over space only, time kept and flattened: `[C * T']` (TCLR's retrieval).
    Temporal,
}

/// `[eval]`: downstream protocols (linear probe, retrieval, fine-tuning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalCfg {
    /// Evaluate on this dataset instead of the pretraining one (`[eval.data]`, any labelled kind).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<DataCfg>,
    /// Frames per evaluation clip (default: `data.frames`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames: Option<usize>,
    /// Test clips per video, uniformly spaced, centre-cropped; their scores/features are averaged.
    pub test_clips: usize,
    /// Frame stride of test clips.
    pub stride: usize,
    /// Frame stride of fine-tuning training clips (random start, random crop).
    pub train_stride: usize,
    /// Feature map pooling for linear probe and retrieval.
    pub pooling: Pooling,
    /// Linear probe: full-batch epochs over cached clip features.
    pub linear_epochs: usize,
    pub linear_lr: f64,
    pub linear_weight_decay: f64,
    /// Retrieval recall@k for these k.
    pub k: Vec<usize>,
    /// Clips per forward pass during feature extraction and testing.
    pub batch_size: usize,
    /// Fine-tuning: epochs over the train split, videos per batch.
    pub finetune_epochs: u64,
    pub finetune_batch_size: usize,
    pub optimizer: OptimizerKind,
    /// Learning rate of the new classifier head.
    pub lr: f64,
    /// Learning rate of the pretrained backbone (its own parameter group; 0 freezes it).
    pub backbone_lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: u64,
    /// Dropout before the classifier during fine-tuning.
    pub dropout: f64,
    /// Test (video level) every this many fine-tuning epochs; the best is kept.
    pub test_every: u64,
}

impl Default for EvalCfg {
    fn default() -> Self {
        Self {
            data: None,
            frames: None,
            test_clips: 10,
            stride: 2,
            train_stride: 2,
            pooling: Pooling::Pooled,
            linear_epochs: 300,
            linear_lr: 0.05,
            linear_weight_decay: 1e-3,
            k: vec![1, 5, 10, 20, 50],
            batch_size: 32,
            finetune_epochs: 10,
            finetune_batch_size: 16,
            optimizer: OptimizerKind::Adamw,
            lr: 1e-3,
            backbone_lr: 1e-4,
            momentum: 0.9,
            weight_decay: 0.05,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 0,
            dropout: 0.5,
            test_every: 1,
        }
    }
}

impl Recipe {
    /// The dataset the downstream protocols use.
    pub fn eval_data(&self) -> &DataCfg {
        self.eval.data.as_ref().unwrap_or(&self.data)
    }

    /// Frames per evaluation clip.
    pub fn eval_frames(&self) -> usize {
        self.eval.frames.unwrap_or(self.eval_data().frames)
    }
}

/// One out-of-range value: (dotted key, message).
pub type Invalid = (String, String);

fn check(ok: bool, key: &str, msg: impl FnOnce() -> String) -> std::result::Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err((key.to_string(), msg()))
    }
}

impl Recipe {
    /// Range and consistency checks that types alone cannot express.
    pub fn validate(&self) -> std::result::Result<(), Invalid> {
        validate_data(&self.data)?;
        let b = &self.backbone;
        for (i, w) in b.widths.iter().enumerate() {
            check(*w >= 1, "backbone.widths", || {
                format!("entry {i} must be at least 1")
            })?;
        }
        for (i, l) in b.layers.iter().enumerate() {
            check(*l >= 1, "backbone.layers", || {
                format!("entry {i} must be at least 1")
            })?;
        }
        for (i, g) in b.tgn_groups.iter().enumerate() {
            check(*g >= 1, "backbone.tgn_groups", || {
                format!("entry {i} must be at least 1")
            })?;
        }
        if let Some(n) = b.num_classes {
            check(n >= 1, "backbone.num_classes", || {
                "must be at least 1".into()
            })?;
        }
        if b.arch == Arch::C3d {
            check(
                !b.temporal_dilation_last_stage,
                "backbone.temporal_dilation_last_stage",
                || "only applies to the ResNet archs, not c3d".into(),
            )?;
            // Four max-pools halve T three times and H, W four times.
            let d = &self.data;
            check(d.frames >= 8, "data.frames", || {
                format!("c3d needs at least 8 frames, got {}", d.frames)
            })?;
            check(d.size >= 16, "data.size", || {
                format!("c3d needs at least 16 pixels, got {}", d.size)
            })?;
        }
        self.method
            .validate(self.data.frames)
            .map_err(|(k, m)| (format!("method.{k}"), m))?;
        let t = &self.train;
        check(t.batch_size >= 1, "train.batch_size", || {
            "must be at least 1, got 0".into()
        })?;
        check(t.lr.is_finite() && t.lr > 0.0, "train.lr", || {
            format!("must be > 0, got {}", t.lr)
        })?;
        check(t.steps >= 1 || t.epochs.is_some(), "train.steps", || {
            "must be at least 1".into()
        })?;
        if let Some(e) = t.epochs {
            check(e >= 1, "train.epochs", || "must be at least 1".into())?;
        }
        check((0.0..1.0).contains(&t.momentum), "train.momentum", || {
            format!("must be in [0, 1), got {}", t.momentum)
        })?;
        check(!t.nesterov || t.momentum > 0.0, "train.nesterov", || {
            "needs train.momentum > 0".into()
        })?;
        check(t.weight_decay >= 0.0, "train.weight_decay", || {
            format!("must be >= 0, got {}", t.weight_decay)
        })?;
        for (i, b) in t.betas.iter().enumerate() {
            check((0.0..1.0).contains(b), "train.betas", || {
                format!("entry {i} must be in [0, 1), got {b}")
            })?;
        }
        check(t.eps > 0.0, "train.eps", || "must be > 0".into())?;
        check(t.gamma > 0.0, "train.gamma", || "must be > 0".into())?;
        check(t.min_lr >= 0.0 && t.min_lr <= t.lr, "train.min_lr", || {
            "must be in [0, train.lr]".into()
        })?;
        for m in &t.milestones {
            check((0.0..=1.0).contains(m), "train.milestones", || {
                format!("fractions in [0, 1], got {m}")
            })?;
        }
        check(t.grad_clip >= 0.0, "train.grad_clip", || {
            "must be >= 0 (0 disables)".into()
        })?;
        check(t.log_every >= 1, "train.log_every", || {
            "must be at least 1".into()
        })?;
        check(t.keep_checkpoints >= 1, "train.keep_checkpoints", || {
            "must be at least 1".into()
        })?;
        let e = &self.eval;
        if let Some(d) = &e.data {
            validate_data(d).map_err(|(k, m)| (k.replacen("data.", "eval.data.", 1), m))?;
        }
        if let Some(f) = e.frames {
            check(f >= 1, "eval.frames", || "must be at least 1".into())?;
        }
        check(e.train_stride >= 1, "eval.train_stride", || {
            "must be at least 1".into()
        })?;
        check(e.finetune_epochs >= 1, "eval.finetune_epochs", || {
            "must be at least 1".into()
        })?;
        check(
            e.finetune_batch_size >= 1,
            "eval.finetune_batch_size",
            || "must be at least 1".into(),
        )?;
        check(e.lr > 0.0, "eval.lr", || {
            format!("must be > 0, got {}", e.lr)
        })?;
        check(e.backbone_lr >= 0.0, "eval.backbone_lr", || {
            format!("must be >= 0 (0 freezes), got {}", e.backbone_lr)
        })?;
        check((0.0..1.0).contains(&e.momentum), "eval.momentum", || {
            "must be in [0, 1)".into()
        })?;
        check(e.weight_decay >= 0.0, "eval.weight_decay", || {
            "must be >= 0".into()
        })?;
        check((0.0..1.0).contains(&e.dropout), "eval.dropout", || {
            "must be in [0, 1)".into()
        })?;
        check(e.test_every >= 1, "eval.test_every", || {
            "must be at least 1".into()
        })?;
        check(e.test_clips >= 1, "eval.test_clips", || {
            "must be at least 1".into()
        })?;
        check(e.stride >= 1, "eval.stride", || "must be at least 1".into())?;
        check(e.linear_lr > 0.0, "eval.linear_lr", || "must be > 0".into())?;
        check(e.batch_size >= 1, "eval.batch_size", || {
            "must be at least 1".into()
        })?;
        check(
            !e.k.is_empty() && e.k.iter().all(|&k| k >= 1),
            "eval.k",
            || "must list values >= 1".into(),
        )?;
        Ok(())
    }
}

/// Checks of one `[data]` table (also used for `[eval.data]`, with keys renamed).
fn validate_data(d: &DataCfg) -> std::result::Result<(), Invalid> {
    check(d.frames >= 1, "data.frames", || "must be at least 1".into())?;
    check(d.size >= 8, "data.size", || {
        format!("must be at least 8, got {}", d.size)
    })?;
    check((1..=3).contains(&d.split), "data.split", || {
        format!("must be 1, 2 or 3, got {}", d.split)
    })?;
    if let Some(m) = d.max_frames {
        check(m >= d.frames, "data.max_frames", || {
            format!("must be at least data.frames = {}, got {m}", d.frames)
        })?;
    }
    if let Some(s) = d.short_side {
        check(s >= d.size, "data.short_side", || {
            format!("must be at least data.size = {}, got {s}", d.size)
        })?;
    }
    d.augment
        .validate()
        .map_err(|(k, m)| (format!("data.augment.{k}"), m))?;
    match d.kind {
        DataKind::Synthetic => {
            d.synthetic
                .validate()
                .map_err(|(k, m)| (format!("data.synthetic.{k}"), m))?;
            let sf = d.synthetic.video_frames;
            check(d.frames <= sf, "data.frames", || {
                format!(
                    "{} frames per clip exceed data.synthetic.video_frames = {sf}",
                    d.frames
                )
            })?;
            let ss = d.synthetic.size;
            check(d.size <= ss, "data.size", || {
                format!("{} exceeds data.synthetic.size = {ss}", d.size)
            })?;
        }
        DataKind::Ucf101 | DataKind::Hmdb51 => {
            check(d.root.is_some(), "data.root", || {
                "required for this data.kind".into()
            })?;
            check(d.splits.is_some(), "data.splits", || {
                "required for this data.kind".into()
            })?;
        }
        DataKind::Csv => check(d.list.is_some(), "data.list", || {
            "required for data.kind = \"csv\"".into()
        })?,
        DataKind::Folder => check(d.root.is_some(), "data.root", || {
            "required for data.kind = \"folder\"".into()
        })?,
    }
    Ok(())
}
