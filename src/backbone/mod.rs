//! Backbones: 3D CNNs mapping clips `[B, 3, T, H, W]` to feature maps
//! `[B, C, T', H', W']`. Parameter names follow torchvision's video models so that
//! weights move between vssl and PyTorch.

pub mod r3d;

use candle_core::Tensor;

use crate::nn::VarStore;
use crate::recipe::{Arch, BackboneCfg};
use crate::Result;

/// A video encoder being learned.
pub trait Backbone: Send + Sync {
    /// Feature map `[B, C, T', H', W']` of a clip batch `[B, 3, T, H, W]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    /// Channels `C` of the feature map.
    fn out_channels(&self) -> usize;
    /// The parameters and buffers of this backbone.
    fn vars(&self) -> &VarStore;

    /// Globally average-pooled features `[B, C]`.
    fn pooled(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let f = self.forward_t(x, train)?;
        crate::ops::pool3d::global_avg_pool3d(&f)
    }
}

/// Builds the backbone a recipe names, with fresh parameters in `vs`.
pub fn build(cfg: &BackboneCfg, vs: &VarStore) -> Result<Box<dyn Backbone>> {
    let net = match cfg.arch {
        Arch::R3d18 => r3d::R3d::new(&r3d::R3dConfig::r3d_18(), vs)?,
        Arch::R3dSmall => r3d::R3d::new(
            &r3d::R3dConfig {
                widths: cfg.widths,
                layers: cfg.layers,
                stem_width: cfg.widths[0],
            },
            vs,
        )?,
    };
    Ok(Box::new(net))
}
