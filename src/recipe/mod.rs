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

/// Pretext method families (`[method] kind = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    Geometric,
    SpeedSort,
    TemporalContrast,
    TemporalDiscriminative,
}

/// `[method]`: one variant per method family, each with its own keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MethodCfg {
    Geometric(GeometricCfg),
    SpeedSort(SpeedSortCfg),
    TemporalContrast(TemporalContrastCfg),
    TemporalDiscriminative(TemporalDiscriminativeCfg),
}

impl MethodCfg {
    pub fn kind(&self) -> MethodKind {
        match self {
            MethodCfg::Geometric(_) => MethodKind::Geometric,
            MethodCfg::SpeedSort(_) => MethodKind::SpeedSort,
            MethodCfg::TemporalContrast(_) => MethodKind::TemporalContrast,
            MethodCfg::TemporalDiscriminative(_) => MethodKind::TemporalDiscriminative,
        }
    }
}

/// How rotations are drawn for rotation prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationsPerClip {
    /// One random rotation per clip (the public 3DRotNet re-implementation).
    One,
    /// All four rotated copies of every clip in the batch (image RotNet). Default.
    All,
}

/// `[method] kind = "geometric"`: 3DRotNet rotation prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeometricCfg {
    /// Present so the section can be read as one table; always "geometric".
    #[serde(skip_serializing)]
    pub kind: Option<MethodKind>,
    pub rotations_per_clip: RotationsPerClip,
    /// Clip stride is drawn uniformly from `stride_min..=stride_max`.
    pub stride_min: usize,
    pub stride_max: usize,
    /// Dropout before the rotation classifier.
    pub dropout: f64,
}

impl Default for GeometricCfg {
    fn default() -> Self {
        Self {
            kind: None,
            rotations_per_clip: RotationsPerClip::All,
            stride_min: 1,
            stride_max: 5,
            dropout: 0.5,
        }
    }
}

/// What speed sorting predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpeedLabel {
    /// One class per video: the permutation that sorts its shuffled clips by signed
    /// speed (`n_clips!` classes). Default.
    Sort,
    /// One class per clip: its own (speed, direction).
    PerClip,
}

/// `[method] kind = "speed_sort"`: sort clips of one video by playback speed
/// (SpeedSortPretext; see METHODS.md section 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeedSortCfg {
    /// Present so the section can be read as one table; always "speed_sort".
    #[serde(skip_serializing)]
    pub kind: Option<MethodKind>,
    /// Clips per video, each at a distinct speed.
    pub n_clips: usize,
    /// Playback speeds (frame strides) to draw from; distinct, each >= 1.
    pub speeds: Vec<usize>,
    /// Allow backward playback (each clip reversed with probability 0.5).
    pub reverse: bool,
    pub label: SpeedLabel,
    /// Width of the shared pair layer of the `"sort"` head.
    pub pair_hidden: usize,
    /// Dropout before the final classifier.
    pub dropout: f64,
}

impl Default for SpeedSortCfg {
    fn default() -> Self {
        Self {
            kind: None,
            n_clips: 3,
            speeds: vec![1, 2, 4, 8],
            reverse: true,
            label: SpeedLabel::Sort,
            pair_hidden: 512,
            dropout: 0.5,
        }
    }
}

/// How the local-local loss is reduced over the videos of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlReduction {
    /// Mean over videos (default; the three losses on one scale).
    Mean,
    /// Sum over videos, as TCLR's public code does: LL weighted by the batch size.
    Sum,
}

/// `[method] kind = "temporal_contrast"`: TCLR (METHODS.md section 3). Total loss
/// `w_ic * IC + w_ll * LL + w_gl * GL`; a weight of 0 switches its loss off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemporalContrastCfg {
    /// Present so the section can be read as one table; always "temporal_contrast".
    #[serde(skip_serializing)]
    pub kind: Option<MethodKind>,
    /// Frame stride of the sparse clip; `data.frames * sparse_stride` frames are split
    /// into `dense_clips` parts, one dense clip each.
    pub sparse_stride: usize,
    /// Dense clips per video (paper: 4).
    pub dense_clips: usize,
    /// Softmax temperature of all three losses.
    pub temperature: f64,
    /// Weight of the instance loss (IC).
    pub w_ic: f64,
    /// Weight of the local-local loss (LL).
    pub w_ll: f64,
    /// Weight of the global-local loss (GL).
    pub w_gl: f64,
    /// Add the dense instance term to IC (all dense clips of a video positive to each
    /// other, other videos' dense clips negative), as the public code does.
    pub ic_dense: bool,
    pub ll_reduction: LlReduction,
    /// Projection MLP: C -> proj_hidden, BN, ReLU -> proj_dim, BN, L2 normalise.
    pub proj_hidden: usize,
    pub proj_dim: usize,
}

impl Default for TemporalContrastCfg {
    fn default() -> Self {
        Self {
            kind: None,
            sparse_stride: 4,
            dense_clips: 4,
            temperature: 0.1,
            w_ic: 1.0,
            w_ll: 1.0,
            w_gl: 1.0,
            ic_dense: true,
            ll_reduction: LlReduction::Mean,
            proj_hidden: 512,
            proj_dim: 128,
        }
    }
}

/// `[method] kind = "temporal_discriminative"`: VTDL, temporal triplets contrasted
/// against a momentum encoder's memory bank (METHODS.md section 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemporalDiscriminativeCfg {
    /// Present so the section can be read as one table; always "temporal_discriminative".
    #[serde(skip_serializing)]
    pub kind: Option<MethodKind>,
    /// Frame stride of all three clips.
    pub stride: usize,
    /// Least (circular) distance in frames between the anchor's and the negative's start.
    pub min_gap: usize,
    /// Temporal Consistent Augmentation on the anchor.
    pub tca: bool,
    /// TCA mixing weight `l` is drawn from `U(0, tca_max)`.
    pub tca_max: f64,
    /// EMA momentum of the key encoder (0 copies the query encoder, 1 freezes it).
    pub momentum: f64,
    /// Keys kept in the FIFO memory bank.
    pub queue_size: usize,
    /// InfoNCE temperature.
    pub temperature: f64,
    /// Weight of the margin triplet loss (the public code computes it but adds 0).
    pub triplet_weight: f64,
    /// Margin of the triplet loss.
    pub margin: f64,
}

impl Default for TemporalDiscriminativeCfg {
    fn default() -> Self {
        Self {
            kind: None,
            stride: 4,
            min_gap: 8,
            tca: true,
            tca_max: 0.1,
            momentum: 0.999,
            queue_size: 16384,
            temperature: 0.07,
            triplet_weight: 0.0,
            margin: 1.0,
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
        match &self.method {
            MethodCfg::Geometric(g) => {
                check(g.stride_min >= 1, "method.stride_min", || {
                    "must be at least 1".into()
                })?;
                check(g.stride_max >= g.stride_min, "method.stride_max", || {
                    format!("must be >= method.stride_min ({})", g.stride_min)
                })?;
                check((0.0..1.0).contains(&g.dropout), "method.dropout", || {
                    format!("must be in [0, 1), got {}", g.dropout)
                })?;
            }
            MethodCfg::SpeedSort(m) => validate_speed_sort(m)?,
            MethodCfg::TemporalContrast(m) => validate_temporal_contrast(m, self.data.frames)?,
            MethodCfg::TemporalDiscriminative(m) => validate_temporal_discriminative(m)?,
        }
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

/// Checks of `[method] kind = "speed_sort"`.
fn validate_speed_sort(m: &SpeedSortCfg) -> std::result::Result<(), Invalid> {
    for (i, s) in m.speeds.iter().enumerate() {
        check(*s >= 1, "method.speeds", || {
            format!("entry {i} must be at least 1, got {s}")
        })?;
        check(!m.speeds[..i].contains(s), "method.speeds", || {
            format!("speeds must be distinct; {s} appears twice")
        })?;
    }
    check(m.n_clips >= 2, "method.n_clips", || {
        format!("must be at least 2, got {}", m.n_clips)
    })?;
    check(m.n_clips <= m.speeds.len(), "method.n_clips", || {
        format!(
            "{} clips need as many distinct speeds; method.speeds has {}",
            m.n_clips,
            m.speeds.len()
        )
    })?;
    if m.label == SpeedLabel::Sort {
        check(m.n_clips <= 5, "method.n_clips", || {
            format!(
                "at most 5 with label = \"sort\" (n_clips! classes), got {}",
                m.n_clips
            )
        })?;
    }
    check(m.pair_hidden >= 1, "method.pair_hidden", || {
        "must be at least 1".into()
    })?;
    check((0.0..1.0).contains(&m.dropout), "method.dropout", || {
        format!("must be in [0, 1), got {}", m.dropout)
    })?;
    Ok(())
}

/// Checks of `[method] kind = "temporal_contrast"` (clips of `frames` frames).
fn validate_temporal_contrast(
    m: &TemporalContrastCfg,
    frames: usize,
) -> std::result::Result<(), Invalid> {
    check(m.sparse_stride >= 1, "method.sparse_stride", || {
        "must be at least 1".into()
    })?;
    check(m.dense_clips >= 1, "method.dense_clips", || {
        "must be at least 1".into()
    })?;
    check(
        (frames * m.sparse_stride).is_multiple_of(m.dense_clips),
        "method.dense_clips",
        || {
            format!(
                "must divide the sparse span data.frames * method.sparse_stride = {}",
                frames * m.sparse_stride
            )
        },
    )?;
    check(
        m.temperature.is_finite() && m.temperature > 0.0,
        "method.temperature",
        || format!("must be > 0, got {}", m.temperature),
    )?;
    for (key, w) in [
        ("method.w_ic", m.w_ic),
        ("method.w_ll", m.w_ll),
        ("method.w_gl", m.w_gl),
    ] {
        check(w.is_finite() && w >= 0.0, key, || {
            format!("must be >= 0 (0 switches the loss off), got {w}")
        })?;
    }
    check(m.w_ic + m.w_ll + m.w_gl > 0.0, "method.w_ic", || {
        "w_ic, w_ll and w_gl are all 0: nothing to learn".into()
    })?;
    check(m.w_ll == 0.0 || m.dense_clips >= 2, "method.w_ll", || {
        "the local-local loss needs method.dense_clips >= 2 (or w_ll = 0)".into()
    })?;
    check(m.proj_hidden >= 1, "method.proj_hidden", || {
        "must be at least 1".into()
    })?;
    check(m.proj_dim >= 1, "method.proj_dim", || {
        "must be at least 1".into()
    })?;
    Ok(())
}

/// Checks of `[method] kind = "temporal_discriminative"`.
fn validate_temporal_discriminative(
    m: &TemporalDiscriminativeCfg,
) -> std::result::Result<(), Invalid> {
    check(m.stride >= 1, "method.stride", || {
        "must be at least 1".into()
    })?;
    check(m.min_gap >= 1, "method.min_gap", || {
        "must be at least 1".into()
    })?;
    check((0.0..1.0).contains(&m.tca_max), "method.tca_max", || {
        format!("must be in [0, 1), got {}", m.tca_max)
    })?;
    check((0.0..=1.0).contains(&m.momentum), "method.momentum", || {
        format!("must be in [0, 1], got {}", m.momentum)
    })?;
    check(m.queue_size >= 1, "method.queue_size", || {
        "must be at least 1".into()
    })?;
    check(
        m.temperature.is_finite() && m.temperature > 0.0,
        "method.temperature",
        || format!("must be > 0, got {}", m.temperature),
    )?;
    check(m.triplet_weight >= 0.0, "method.triplet_weight", || {
        format!("must be >= 0, got {}", m.triplet_weight)
    })?;
    check(m.margin >= 0.0, "method.margin", || {
        format!("must be >= 0, got {}", m.margin)
    })?;
    Ok(())
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
