//! The method boundary. The trainer runs one object-safe trait, [`Pretext`]: the
//! clips it wants ([`Pretext::planner`], a [`ClipPlanner`] the loader calls for every
//! video), the loss of a batch, and the state to save.
//!
//! Methods come in four families. Each family is a trait that holds only what varies
//! inside the family, and one generic adapter per family turns any implementor into a
//! `Pretext`, so the family's clip planning, heads and batch logic are written once:
//!
//! | family trait | what a variant decides | adapter | shipped variant |
//! |---|---|---|---|
//! | [`GeometricPretext`] | the transform set (transform `k` = class `k`) | [`GeometricMethod<T>`] | [`Rotation3d`] (3DRotNet) |
//! | [`SpeedSortPretext`] | the speed set, direction rule, label rule | [`SpeedSortMethod<T>`] | [`VariableSpeed`] |
//! | [`TemporalContrast`] | the sparse/dense clip layout, the weighted loss terms | [`TemporalContrastMethod<T>`] | [`Tclr`] (TCLR) |
//! | [`TemporalDiscriminative`] | the triplet rule, the anchor's temporal augmentation | [`TemporalDiscriminativeMethod<T>`] | [`Vtdl`] (VTDL) |
//!
//! The shipped methods run as `GeometricMethod<Rotation3d>`, `SpeedSortMethod<VariableSpeed>`,
//! `TemporalContrastMethod<Tclr>` and `TemporalDiscriminativeMethod<Vtdl>`. Each family's file also
//! holds its `[method]` config (`GeometricConfig`, ...), its range checks (`validate`) and
//! its construction (`init`: config -> method).
//!
//! **A new variant of an existing family** touches no file here: implement the family
//! trait (in this crate or outside it) and build the adapter with its public
//! constructor, e.g. `GeometricMethod::new(MyTransforms, &GeometricConfig::default(), frames,
//! backbone, head_vars)`, then hand it to the trainer. To make it reachable from a
//! recipe, add a `[method] kind` in [`crate::registry`].
//!
//! **A new family** is a file here (family trait, adapter implementing `Pretext`,
//! a planner implementing [`ClipPlanner`] when the clips of one video relate to each
//! other — the generic [`crate::data::sampler::StridedPlanner`] otherwise —, its
//! config with `validate` and `init`), plus one arm in [`crate::registry`]'s method
//! table.

pub mod external;
pub mod geometric;
pub mod momentum;
pub mod speed_sort;
pub mod temporal_contrast;
pub mod temporal_discriminative;

use std::sync::Arc;

use candle_core::Tensor;

use crate::backbone::Backbone;
use crate::data::clip::{Batch, ClipPlanner};
use crate::nn::VarStore;
use crate::Result;

pub use external::ExternalConfig;
pub use geometric::{
    GeometricConfig, GeometricMethod, GeometricPretext, Rotation3d, RotationsPerClip,
};
pub use speed_sort::{
    SpeedDraw, SpeedLabel, SpeedSortConfig, SpeedSortMethod, SpeedSortPretext, VariableSpeed,
};
pub use temporal_contrast::{
    BnBatches, IcDense, LlReduction, Tclr, TemporalContrast, TemporalContrastConfig,
    TemporalContrastMethod,
};
pub use temporal_discriminative::{
    TemporalDiscriminative, TemporalDiscriminativeConfig, TemporalDiscriminativeMethod, Vtdl,
};

/// Loss for one batch plus named scalars to log.
#[derive(Debug, Clone)]
pub struct StepOutput {
    pub loss: Tensor,
    pub scalars: Vec<(&'static str, f64)>,
}

impl StepOutput {
    /// Cross-entropy of `logits` against `labels`, logging accuracy as `acc`: the
    /// output of every classification pretext.
    pub fn classification(logits: &Tensor, labels: &Tensor) -> Result<Self> {
        let loss = crate::loss::cross_entropy(logits, labels)?;
        let acc = crate::loss::accuracy(&logits.detach(), labels)?;
        Ok(Self {
            loss,
            scalars: vec![("acc", acc)],
        })
    }
}

/// What the trainer runs.
pub trait Pretext: Send {
    /// How the loader draws the clips of one video for this method (called once per
    /// run; the planner is shared with the loader's worker threads).
    fn planner(&self) -> Arc<dyn ClipPlanner>;
    /// Loss for one batch (with autograd graph when `train`), plus scalars to log.
    fn step(&mut self, batch: &Batch, train: bool) -> Result<StepOutput>;
    /// After the optimizer step: EMA encoders, memory-bank updates.
    fn after_step(&mut self) -> Result<()> {
        Ok(())
    }
    /// The backbone being learned (what is exported and evaluated).
    fn backbone(&self) -> &dyn Backbone;
    /// Parameters owned by the method itself (heads, projectors); saved under `pretext.`.
    fn head_vars(&self) -> &VarStore;
    /// Extra state that must survive a resume (queues, EMA weights).
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![])
    }
    /// Restores what [`Pretext::state`] returned.
    fn load_state(&mut self, _state: &std::collections::BTreeMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}
