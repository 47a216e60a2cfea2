//! Backbones: 3D CNNs mapping clips `[B, 3, T, H, W]` to feature maps
//! `[B, C, T', H', W']`. Module structure and state-dict names follow torchvision's
//! video models (and VCOP's C3D) exactly, so weights move between vssl and PyTorch.
//!
//! - [`video_resnet`]: torchvision's `VideoResNet`: `r3d_18`, `mc3_18`, `r2plus1d_18`,
//!   and `r3d_small` (R3D topology with a recipe's widths and depths).
//! - [`c3d`]: C3D with batch norm as in VCOP.
//! - [`norm`]: BatchNorm3d or Temporal Group Normalization in every normalisation slot.
//!
//! The entry point is [`build`]. A backbone's feature map excludes global pooling and
//! the classifier; [`Backbone::pooled`] adds the global average pool and
//! [`Backbone::classify`] the optional classifier (`backbone.num_classes`).

pub mod arch;
pub mod c3d;
pub mod config;
pub mod norm;
pub mod video_resnet;

use candle_core::Tensor;

use crate::nn::VarStore;
use crate::Result;

pub use c3d::C3d;
pub use config::{Arch, BackboneConfig, NormKind};
pub use norm::NormSpec;
pub use video_resnet::{ConvBuilder, StemKind, VideoResNet, VideoResNetConfig};

/// A video encoder being learned.
pub trait Backbone: Send + Sync {
    /// Feature map `[B, C, T', H', W']` of a clip batch `[B, 3, T, H, W]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    /// Channels `C` of the feature map.
    fn out_channels(&self) -> usize;
    /// The parameters and buffers of this backbone.
    fn vars(&self) -> &VarStore;

    /// Globally average-pooled features `[B, C]`.
    /// Half-precision activations (mixed precision) leave as f32 features, so heads
    /// and losses run in f32.
    fn pooled(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let f = self.forward_t(x, train)?;
        let p = crate::ops::pool3d::global_avg_pool3d(&f)?;
        Ok(match p.dtype() {
            candle_core::DType::BF16 | candle_core::DType::F16 => {
                p.to_dtype(candle_core::DType::F32)?
            }
            _ => p,
        })
    }

    /// Class logits `[B, num_classes]` of pooled features `[B, C]`, or `None` when the
    /// backbone was built without a classifier (`num_classes` unset, the default).
    fn classify(&self, _pooled: &Tensor) -> Option<Result<Tensor>> {
        None
    }

    /// Number of trainable scalars (buffers such as running statistics excluded),
    /// including the classifier when one was built.
    fn param_count(&self) -> usize {
        self.vars()
            .trainable()
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum()
    }
}

/// Builds the backbone a recipe names, with fresh parameters in `vs`, for clips of
/// `frames` frames (`data.frames`; only TGN uses it, to clamp each layer's group count
/// to the time steps that layer sees).
pub fn build(cfg: &BackboneConfig, vs: &VarStore, frames: usize) -> Result<Box<dyn Backbone>> {
    let norm = match cfg.norm {
        NormKind::Bn => NormSpec::bn(),
        NormKind::Tgn => NormSpec::tgn(cfg.tgn_groups),
    };
    let resnet = |base: VideoResNetConfig| VideoResNetConfig {
        num_classes: cfg.num_classes,
        temporal_dilation_last_stage: cfg.temporal_dilation_last_stage,
        norm,
        ..base
    };
    let c = match cfg.arch {
        Arch::R3d18 => resnet(VideoResNetConfig::r3d_18()),
        Arch::Mc318 => resnet(VideoResNetConfig::mc3_18()),
        Arch::R2plus1d18 => resnet(VideoResNetConfig::r2plus1d_18()),
        Arch::R3dSmall => resnet(VideoResNetConfig::r3d_small(cfg.widths, cfg.layers)),
        Arch::C3d => return Ok(Box::new(C3d::new(vs, &norm, cfg.num_classes, frames)?)),
    };
    Ok(Box::new(VideoResNet::new(&c, vs, frames)?))
}
