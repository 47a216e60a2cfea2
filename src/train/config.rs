//! The `[train]` recipe section: optimiser, schedule, length, checkpoints, seed. It
//! lives beside the trainer it configures (with the optimiser and schedule kinds it
//! names) so `train` needs nothing from the recipe layer.

use serde::{Deserialize, Serialize};

use crate::error::{check, Invalid};
use crate::train::optim::OptimizerKind;
use crate::train::schedule::ScheduleKind;

/// `[train]`: optimiser, schedule, length, checkpoints, seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
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
    /// Plateau schedule: epochs without a lower mean loss before the rate drops.
    pub patience: u64,
    /// Plateau schedule: multiplier of each drop.
    pub factor: f64,
    /// Plateau schedule: rate multipliers of the first epochs (TCLR:
    /// [0.01, 0.05, 0.1, 0.5, 1]); empty for none.
    pub warmup_multipliers: Vec<f64>,
    /// Global gradient-norm clip; 0 disables.
    pub grad_clip: f64,
    /// Save a resumable checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk (oldest deleted first).
    pub keep_checkpoints: usize,
    /// Write a metrics.jsonl line every this many steps.
    pub log_every: u64,
    /// What a NaN/Inf loss term or gradient does: stop the run (keeping the last good
    /// checkpoint), or skip that step's update and count it (`skipped_steps`).
    #[serde(skip_serializing_if = "OnNonFinite::is_stop")]
    pub on_nonfinite: OnNonFinite,
    /// Tests only: make the loss of this (1-based) step infinite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inject_nonfinite_at: Option<u64>,
    /// Where the run computes: `"auto"` (CUDA if built with it and present, else the
    /// CPU), `"cpu"` or `"cuda:N"`. Unset means `auto`. An explicit `--device cpu` or
    /// `--device cuda:N` on the command line wins over it; `--device auto` (the
    /// default) leaves the choice to the recipe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The backbone's arithmetic: `"f32"`, or `"bf16"` (mixed precision: bf16
    /// activations and convolutions, f32 master weights and optimiser, batch-norm
    /// statistics, heads and losses in f32).
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// Data-parallel runs (`vssl train --ranks N`): batch norm with statistics over
    /// every rank's share of the batch, as the papers' multi-GPU runs; otherwise each
    /// rank normalises with its own share's (PyTorch DDP's default).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sync_bn: bool,
}

/// `train.precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// The dtype of the backbone's activations.
    pub fn dtype(&self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// Whether `spec` is a device the command line and `train.device` accept: `auto`,
/// `cpu`, `cuda` or `cuda:N`.
pub fn valid_device(spec: &str) -> bool {
    match spec {
        "auto" | "cpu" | "cuda" => true,
        s => s
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok()),
    }
}

/// `train.on_nonfinite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNonFinite {
    #[default]
    Stop,
    SkipStep,
}

impl OnNonFinite {
    fn is_stop(&self) -> bool {
        *self == OnNonFinite::Stop
    }
}

impl Default for TrainConfig {
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
            patience: 9,
            factor: 0.1,
            warmup_multipliers: vec![],
            grad_clip: 40.0,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            log_every: 10,
            on_nonfinite: OnNonFinite::Stop,
            inject_nonfinite_at: None,
            device: None,
            precision: Precision::F32,
            sync_bn: false,
        }
    }
}

impl TrainConfig {
    /// Range checks of `[train]`; on failure returns `(key, message)` with the key
    /// relative to the table (`lr`); messages name other keys by their `train.` path.
    pub fn validate(&self) -> std::result::Result<(), Invalid> {
        let t = self;
        if let Some(d) = &t.device {
            check(valid_device(d), "device", || {
                format!("must be \"auto\", \"cpu\" or \"cuda:N\", got {d:?}")
            })?;
        }
        check(t.batch_size >= 1, "batch_size", || {
            "must be at least 1, got 0".into()
        })?;
        check(t.lr.is_finite() && t.lr > 0.0, "lr", || {
            format!("must be > 0, got {}", t.lr)
        })?;
        check(t.steps >= 1 || t.epochs.is_some(), "steps", || {
            "must be at least 1".into()
        })?;
        if let Some(e) = t.epochs {
            check(e >= 1, "epochs", || "must be at least 1".into())?;
        }
        check((0.0..1.0).contains(&t.momentum), "momentum", || {
            format!("must be in [0, 1), got {}", t.momentum)
        })?;
        check(!t.nesterov || t.momentum > 0.0, "nesterov", || {
            "needs train.momentum > 0".into()
        })?;
        check(t.weight_decay >= 0.0, "weight_decay", || {
            format!("must be >= 0, got {}", t.weight_decay)
        })?;
        for (i, b) in t.betas.iter().enumerate() {
            check((0.0..1.0).contains(b), "betas", || {
                format!("entry {i} must be in [0, 1), got {b}")
            })?;
        }
        check(t.eps > 0.0, "eps", || "must be > 0".into())?;
        check(t.gamma > 0.0, "gamma", || "must be > 0".into())?;
        check(t.min_lr >= 0.0 && t.min_lr <= t.lr, "min_lr", || {
            "must be in [0, train.lr]".into()
        })?;
        for m in &t.milestones {
            check((0.0..=1.0).contains(m), "milestones", || {
                format!("fractions in [0, 1], got {m}")
            })?;
        }
        check(t.patience >= 1, "patience", || "must be at least 1".into())?;
        check(t.factor > 0.0 && t.factor <= 1.0, "factor", || {
            format!("must be in (0, 1], got {}", t.factor)
        })?;
        for m in &t.warmup_multipliers {
            check(m.is_finite() && *m > 0.0, "warmup_multipliers", || {
                format!("multipliers must be > 0, got {m}")
            })?;
        }
        check(
            t.warmup_multipliers.is_empty() || t.schedule == ScheduleKind::Plateau,
            "warmup_multipliers",
            || "only used by train.schedule = \"plateau\" (use train.warmup_steps)".into(),
        )?;
        check(t.grad_clip >= 0.0, "grad_clip", || {
            "must be >= 0 (0 disables)".into()
        })?;
        check(t.log_every >= 1, "log_every", || {
            "must be at least 1".into()
        })?;
        check(t.keep_checkpoints >= 1, "keep_checkpoints", || {
            "must be at least 1".into()
        })?;
        Ok(())
    }
}
