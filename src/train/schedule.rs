//! Learning-rate schedules.
//!
//! The trainer asks for the rate of every update by its absolute 0-based index, so
//! the constant, cosine and step-decay curves are pure functions of it: a run resumed
//! from a checkpoint gets exactly the rates the uninterrupted run would have used,
//! with no scheduler state to save. Every schedule starts with an optional linear
//! warm-up. The one exception is [`ScheduleKind::Plateau`] (TCLR's drop-on-plateau),
//! which depends on the losses seen: it learns from [`Schedule::observe`] and its
//! [`PlateauState`] goes into checkpoints ([`Schedule::state`]), so resume stays exact.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// The curve followed after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// `base_lr` throughout.
    Constant,
    /// Half-cosine from `base_lr` down to `min_lr` at `total_steps`.
    Cosine,
    /// `base_lr` multiplied by `gamma` at each milestone.
    Step,
    /// TCLR's schedule: per-epoch warm-up multipliers, then `base_lr` times `factor`
    /// each time the epoch's mean loss has not improved for `patience` epochs.
    Plateau,
}

/// Parameters of [`ScheduleKind::Plateau`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlateauConfig {
    /// Optimiser steps per epoch (the unit of warm-up and patience).
    pub steps_per_epoch: u64,
    /// Epochs whose mean loss is above the best so far before the rate drops.
    pub patience: u64,
    /// Multiplier of each drop (TCLR: 0.1).
    pub factor: f64,
    /// Rate multiplier of epoch `e` while `e < len` (TCLR: [0.01, 0.05, 0.1, 0.5, 1]).
    pub warmup: Vec<f64>,
}

/// What [`ScheduleKind::Plateau`] has learned from the losses so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlateauState {
    /// Sum and count of the losses of the epoch under way.
    pub epoch_sum: f64,
    pub epoch_steps: u64,
    /// Best epoch mean so far (infinite before the first epoch ends).
    pub best: f64,
    /// Epochs since the best whose mean was above it (equal means do not count).
    pub bad_epochs: u64,
    /// Product of the drops so far.
    pub scale: f64,
}

impl Default for PlateauState {
    fn default() -> Self {
        Self {
            epoch_sum: 0.0,
            epoch_steps: 0,
            best: f64::INFINITY,
            bad_epochs: 0,
            scale: 1.0,
        }
    }
}

/// Name of the plateau state in a checkpoint (under the `schedule.` prefix).
const PLATEAU_KEY: &str = "plateau";

/// A learning-rate schedule; see [`Schedule::lr_at`].
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// Peak rate, reached at the end of warm-up.
    pub base_lr: f64,
    /// Number of linear warm-up updates (0 for none).
    pub warmup_steps: u64,
    /// Total number of updates in the run (cosine reaches `min_lr` here).
    pub total_steps: u64,
    /// Absolute step indices where [`ScheduleKind::Step`] multiplies the rate by `gamma`.
    pub milestones: Vec<u64>,
    /// Decay factor for [`ScheduleKind::Step`].
    pub gamma: f64,
    /// Floor of [`ScheduleKind::Cosine`].
    pub min_lr: f64,
    /// [`ScheduleKind::Plateau`]'s parameters and state (`None` for the other kinds).
    pub plateau: Option<(PlateauConfig, PlateauState)>,
}

impl Schedule {
    /// The learning rate for update `step` (0-based index of the update about to happen).
    ///
    /// During warm-up (`step < warmup_steps`): `base_lr * (step + 1) / warmup_steps`.
    /// Afterwards:
    /// - Constant: `base_lr`;
    /// - Cosine: `min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi * p))` with
    ///   `p = (step - warmup_steps) / (total_steps - warmup_steps)` clamped to `[0, 1]`
    ///   (`p = 1` when `total_steps <= warmup_steps`);
    /// - Step: `base_lr * gamma^k`, `k` the number of milestones `<= step`;
    /// - Plateau: `base_lr * scale`, times `warmup[e]` in epoch `e < warmup.len()`,
    ///   `scale` the product of the drops [`Schedule::observe`] has made so far.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps);
                let p = if span == 0 {
                    1.0
                } else {
                    ((step - self.warmup_steps) as f64 / span as f64).clamp(0.0, 1.0)
                };
                self.min_lr
                    + (self.base_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            ScheduleKind::Step => {
                let k = self.milestones.iter().filter(|&&m| m <= step).count();
                self.base_lr * self.gamma.powi(i32::try_from(k).unwrap_or(i32::MAX))
            }
            ScheduleKind::Plateau => match &self.plateau {
                Some((cfg, state)) => {
                    let epoch = step / cfg.steps_per_epoch.max(1);
                    let warm = usize::try_from(epoch)
                        .ok()
                        .and_then(|e| cfg.warmup.get(e))
                        .copied()
                        .unwrap_or(1.0);
                    self.base_lr * warm * state.scale
                }
                None => self.base_lr,
            },
        }
    }

    /// Records the loss of update `step` (0-based). At the end of an epoch the plateau
    /// schedule compares the epoch's mean loss with the best so far, as TCLR's code: a
    /// lower mean becomes the best and resets the count, a higher one counts one bad
    /// epoch, and when `patience` bad epochs are counted the rate is multiplied by
    /// `factor` from the next update on and the count restarts. Other kinds ignore it.
    pub fn observe(&mut self, step: u64, loss: f64) {
        let Some((cfg, st)) = self.plateau.as_mut() else {
            return;
        };
        st.epoch_sum += loss;
        st.epoch_steps += 1;
        if !(step + 1).is_multiple_of(cfg.steps_per_epoch.max(1)) {
            return;
        }
        let mean = st.epoch_sum / st.epoch_steps as f64;
        (st.epoch_sum, st.epoch_steps) = (0.0, 0);
        if mean < st.best {
            (st.best, st.bad_epochs) = (mean, 0);
        } else if mean > st.best {
            st.bad_epochs += 1;
        }
        if cfg.patience > 0 && st.bad_epochs >= cfg.patience {
            st.scale *= cfg.factor;
            st.bad_epochs = 0;
        }
    }

    /// The schedule's state for a checkpoint (names without the `schedule.` prefix);
    /// empty for the stateless kinds.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let Some((_, st)) = &self.plateau else {
            return Ok(vec![]);
        };
        let v = vec![
            st.epoch_sum,
            st.epoch_steps as f64,
            st.best,
            st.bad_epochs as f64,
            st.scale,
        ];
        Ok(vec![(
            PLATEAU_KEY.to_string(),
            Tensor::from_vec(v, 5, &Device::Cpu)?,
        )])
    }

    /// Restores [`Schedule::state`]; a plateau schedule without its state is an error.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let Some((_, st)) = self.plateau.as_mut() else {
            return Ok(());
        };
        let t = state.get(PLATEAU_KEY).ok_or_else(|| {
            Error::BadInput(format!(
                "the checkpoint has no schedule.{PLATEAU_KEY}: it was not written by a \
                 train.schedule = \"plateau\" run"
            ))
        })?;
        let v: Vec<f64> = t.to_dtype(DType::F64)?.to_vec1()?;
        let [epoch_sum, steps, best, bad, scale] = v[..] else {
            return Err(Error::BadInput(format!(
                "schedule.{PLATEAU_KEY} holds {} values, expected 5",
                v.len()
            )));
        };
        *st = PlateauState {
            epoch_sum,
            epoch_steps: steps as u64,
            best,
            bad_epochs: bad as u64,
            scale,
        };
        Ok(())
    }
}
