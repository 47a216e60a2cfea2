//! The normalisation layer a backbone uses after each convolution: `BatchNorm3d`
//! (`norm = "bn"`) or Temporal Group Normalization (`norm = "tgn"`, [`crate::ops::tgn`]).
//!
//! Both keep torchvision's batch-norm names (`weight`, `bias`, `running_mean`,
//! `running_var`, `num_batches_tracked`). With TGN the group count of a layer is
//! `tgn_groups[slot]` for the part of the network it is in (slot 0: stem, or C3D's
//! conv1; slots 1-4: stages layer1..layer4, or C3D's conv2..conv5), clamped to
//! `1..=T` where `T` is the number of time steps the layer sees when the network is
//! built for `frames` input frames. The clamped count fixes the shape of the layer's
//! parameters (`[G, C]`, or `[C]` for one group), so a checkpoint is tied to the
//! frames it was built for; fed a different clip length later, a layer splits the time
//! axis into as-equal-as-possible groups and needs `T >= G`.

use candle_core::Tensor;

use super::NormKind;
use crate::nn::VarStore;
use crate::ops::batch_norm3d::BatchNorm3d;
use crate::ops::tgn::TemporalGroupNorm;
use crate::Result;

/// Which normalisation to build, and TGN's group counts per slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormSpec {
    pub kind: NormKind,
    /// Groups per slot (stem, stage 1..4); ignored for `NormKind::Bn`.
    pub tgn_groups: [usize; 5],
}

impl NormSpec {
    /// Plain batch norm everywhere.
    pub fn bn() -> Self {
        Self {
            kind: NormKind::Bn,
            tgn_groups: [1; 5],
        }
    }

    /// TGN with these group counts per slot.
    pub fn tgn(tgn_groups: [usize; 5]) -> Self {
        Self {
            kind: NormKind::Tgn,
            tgn_groups,
        }
    }

    /// The groups a TGN layer in `slot` that sees `t` time steps gets:
    /// `tgn_groups[slot]` clamped to `1..=t`.
    pub fn groups_for(&self, slot: usize, t: usize) -> usize {
        self.tgn_groups[slot].clamp(1, t.max(1))
    }

    /// A normalisation layer over `channels` under `vs`, in `slot`, seeing `t` steps.
    pub fn build(&self, vs: &VarStore, channels: usize, slot: usize, t: usize) -> Result<Norm> {
        Ok(match self.kind {
            NormKind::Bn => Norm::Bn(BatchNorm3d::new(vs, channels)?),
            NormKind::Tgn => Norm::Tgn(TemporalGroupNorm::new(
                vs,
                channels,
                self.groups_for(slot, t),
            )?),
        })
    }
}

/// A built normalisation layer.
pub enum Norm {
    Bn(BatchNorm3d),
    Tgn(TemporalGroupNorm),
}

impl Norm {
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Norm::Bn(n) => n.forward_t(x, train),
            Norm::Tgn(n) => n.forward_t(x, train),
        }
    }

    /// `forward_t` then ReLU (one fused pass for batch norm on CPU).
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Norm::Bn(n) => n.forward_act(x, train, true),
            Norm::Tgn(n) => Ok(n.forward_t(x, train)?.relu()?),
        }
    }
}

/// Output length of a convolution or pooling window along one axis (PyTorch's
/// formula, floor mode); 0 when the input is too short.
pub(crate) fn out_len(len: usize, k: usize, s: usize, p: usize, d: usize) -> usize {
    let span = d * (k - 1) + 1;
    let padded = len + 2 * p;
    if padded < span {
        0
    } else {
        (padded - span) / s + 1
    }
}
