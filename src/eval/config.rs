//! The `[eval]` recipe section: downstream protocols (linear probe, retrieval,
//! fine-tuning) and the optional `[eval.data]` dataset. It lives beside the protocols
//! it configures so `eval` needs nothing from the recipe layer.

use serde::{Deserialize, Serialize};

use crate::data::DataConfig;
use crate::error::{check, Invalid};
use crate::train::optim::OptimizerKind;
use crate::train::schedule::ScheduleKind;

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
pub struct EvalConfig {
    /// Evaluate on this dataset instead of the pretraining one (`[eval.data]`, any labelled kind).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<DataConfig>,
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
    /// Linear probe: epochs over cached clip features.
    pub linear_epochs: usize,
    pub linear_lr: f64,
    pub linear_weight_decay: f64,
    /// Linear probe: clips per AdamW step, in a seeded per-epoch order (0 = full batch,
    /// one step per epoch over all train clips). Written to resolved recipes only when
    /// non-zero, so recipes that leave it at the default resolve to the same text.
    #[serde(skip_serializing_if = "is_zero")]
    pub linear_batch_size: usize,
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

impl Default for EvalConfig {
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
            linear_batch_size: 0,
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

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl EvalConfig {
    /// The dataset the downstream protocols use: `[eval.data]`, else the pretraining `data`.
    pub fn resolved_data<'a>(&'a self, data: &'a DataConfig) -> &'a DataConfig {
        self.data.as_ref().unwrap_or(data)
    }

    /// Frames per evaluation clip: `eval.frames`, else the evaluation dataset's `frames`
    /// (`data` is the pretraining dataset, as for [`Self::resolved_data`]).
    pub fn resolved_frames(&self, data: &DataConfig) -> usize {
        self.frames.unwrap_or(self.resolved_data(data).frames)
    }

    /// Range checks of `[eval]` (and `[eval.data]`); on failure returns
    /// `(key, message)` with the key relative to the table (`lr`, `data.frames`).
    pub fn validate(&self) -> std::result::Result<(), Invalid> {
        let e = self;
        if let Some(d) = &e.data {
            d.validate().map_err(|(k, m)| (format!("data.{k}"), m))?;
        }
        if let Some(f) = e.frames {
            check(f >= 1, "frames", || "must be at least 1".into())?;
        }
        check(e.train_stride >= 1, "train_stride", || {
            "must be at least 1".into()
        })?;
        check(e.schedule != ScheduleKind::Plateau, "schedule", || {
            "\"plateau\" is a pretraining schedule (train.schedule); use constant, cosine or step"
                .into()
        })?;
        check(e.finetune_epochs >= 1, "finetune_epochs", || {
            "must be at least 1".into()
        })?;
        check(e.finetune_batch_size >= 1, "finetune_batch_size", || {
            "must be at least 1".into()
        })?;
        check(e.lr > 0.0, "lr", || format!("must be > 0, got {}", e.lr))?;
        check(e.backbone_lr >= 0.0, "backbone_lr", || {
            format!("must be >= 0 (0 freezes), got {}", e.backbone_lr)
        })?;
        check((0.0..1.0).contains(&e.momentum), "momentum", || {
            "must be in [0, 1)".into()
        })?;
        check(e.weight_decay >= 0.0, "weight_decay", || {
            "must be >= 0".into()
        })?;
        check((0.0..1.0).contains(&e.dropout), "dropout", || {
            "must be in [0, 1)".into()
        })?;
        check(e.test_every >= 1, "test_every", || {
            "must be at least 1".into()
        })?;
        check(e.test_clips >= 1, "test_clips", || {
            "must be at least 1".into()
        })?;
        check(e.stride >= 1, "stride", || "must be at least 1".into())?;
        check(e.linear_lr > 0.0, "linear_lr", || "must be > 0".into())?;
        // A one-clip batch is refused (a judgement call, not a math limit): it makes every
        // epoch one AdamW step per train clip on single-sample gradients, and is the
        // likely slip for 0, the full batch.
        check(e.linear_batch_size != 1, "linear_batch_size", || {
            "must be 0 (full batch) or at least 2, got 1".into()
        })?;
        check(e.batch_size >= 1, "batch_size", || {
            "must be at least 1".into()
        })?;
        check(!e.k.is_empty() && e.k.iter().all(|&k| k >= 1), "k", || {
            "must list values >= 1".into()
        })?;
        Ok(())
    }
}
