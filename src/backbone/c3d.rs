//! C3D with batch norm, as in VCOP's self-supervised code (Xu et al., CVPR 2019,
//! `models/c3d.py`; also used by PRP and other follow-ups).
//!
//! Eight 3x3x3 convolutions (padding 1, stride 1, *with* bias), each followed by a
//! batch norm and ReLU, with max-pools in between:
//!
//! | layer              | channels  | after it                    |
//! |--------------------|-----------|-----------------------------|
//! | `conv1`, `bn1`     | 3 → 64    | `pool1` max (1,2,2) s (1,2,2) |
//! | `conv2`, `bn2`     | 64 → 128  | `pool2` max (2,2,2) s 2     |
//! | `conv3a/b`, `bn3a/b` | → 256   | `pool3` max (2,2,2) s 2     |
//! | `conv4a/b`, `bn4a/b` | → 512   | `pool4` max (2,2,2) s 2     |
//! | `conv5a/b`, `bn5a/b` | → 512   | —                           |
//!
//! State-dict names are VCOP's: `conv1.weight`, `conv1.bias`, `bn1.running_mean`, ...,
//! `conv3a.weight`, `bn5b.num_batches_tracked` (VCOP calls the first two convolutions
//! `conv1`/`conv2`, not `conv1a`/`conv2a`). VCOP replaces the original C3D's `pool5`
//! (max (2,2,2), padding (0,1,1)) and fc6/fc7 with `AdaptiveAvgPool3d(1)`:
//! [`C3d::forward_t`] returns the feature map after `relu5b` (before pool5),
//! `[B, 512, T/8, H/16, W/16]`, and the trait's `pooled` is VCOP's pool5 → `[B, 512]`.
//! With `num_classes` the classifier is VCOP's `linear` = `Linear(512, num_classes)`.
//! Needs at least 8 frames and 16 pixels. TGN slots: 0 = conv1, 1 = conv2, 2 = conv3a/b,
//! 3 = conv4a/b, 4 = conv5a/b. Initialisation is Kaiming-normal (fan-out) for
//! convolutions (VCOP keeps PyTorch's default); it does not affect names or shapes.

use candle_core::Tensor;

use super::norm::{out_len, Norm, NormSpec};
use super::Backbone;
use crate::nn::{Init, Linear, VarStore};
use crate::ops::conv3d::{Conv3d, Conv3dConfig};
use crate::ops::pool3d::max_pool3d;
use crate::Result;

/// One layer: (name suffix, input channels, output channels, TGN slot, max-pool after it).
type LayerSpec = (&'static str, usize, usize, usize, Option<[usize; 3]>);

const LAYERS: [LayerSpec; 8] = [
    ("1", 3, 64, 0, Some([1, 2, 2])),
    ("2", 64, 128, 1, Some([2, 2, 2])),
    ("3a", 128, 256, 2, None),
    ("3b", 256, 256, 2, Some([2, 2, 2])),
    ("4a", 256, 512, 3, None),
    ("4b", 512, 512, 3, Some([2, 2, 2])),
    ("5a", 512, 512, 4, None),
    ("5b", 512, 512, 4, None),
];

/// VCOP's C3D (see the module docs).
pub struct C3d {
    layers: Vec<(Conv3d, Norm, Option<[usize; 3]>)>,
    linear: Option<Linear>,
    vs: VarStore,
}

impl C3d {
    /// Builds with fresh parameters in `vs`; `frames` only matters for TGN clamping.
    pub fn new(
        vs: &VarStore,
        norm: &NormSpec,
        num_classes: Option<usize>,
        frames: usize,
    ) -> Result<Self> {
        let cfg = Conv3dConfig {
            stride: [1; 3],
            padding: [1; 3],
            dilation: [1; 3],
        };
        let mut t = frames;
        let mut layers = Vec::new();
        for (name, cin, cout, slot, pool) in LAYERS {
            let conv = Conv3d::new(&vs.pp(format!("conv{name}")), cin, cout, [3; 3], cfg, true)?;
            let bn = norm.build(&vs.pp(format!("bn{name}")), cout, slot, t)?;
            if let Some(k) = pool {
                t = out_len(t, k[0], k[0], 0, 1);
            }
            layers.push((conv, bn, pool));
        }
        let linear = match num_classes {
            Some(n) => Some(Linear::with_init(
                &vs.pp("linear"),
                512,
                n,
                Init::LinearDefault,
                Init::Const(0.0),
            )?),
            None => None,
        };
        Ok(Self {
            layers,
            linear,
            vs: vs.clone(),
        })
    }
}

impl Backbone for C3d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for (conv, bn, pool) in &self.layers {
            y = bn.forward_relu(&conv.forward(&y)?, train)?;
            if let Some(k) = pool {
                y = max_pool3d(&y, *k, *k, [0; 3])?;
            }
        }
        Ok(y)
    }
    fn out_channels(&self) -> usize {
        512
    }
    fn vars(&self) -> &VarStore {
        &self.vs
    }
    fn classify(&self, pooled: &Tensor) -> Option<Result<Tensor>> {
        self.linear.as_ref().map(|l| l.forward(pooled))
    }
}
