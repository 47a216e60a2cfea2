//! Learning-rate schedules as pure functions of the step index.
//!
//! The trainer asks for the rate of every update by its absolute 0-based index
//! instead of advancing a stateful scheduler, so a run resumed from a checkpoint
//! gets exactly the rates the uninterrupted run would have used, with no
//! scheduler state to save. Every schedule starts with an optional linear
//! warm-up, then follows a constant, cosine or step-decay curve.

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
}

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
    /// - Step: `base_lr * gamma^k`, `k` the number of milestones `<= step`.
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
        }
    }
}
