//! torchvision's `VideoResNet` (`torchvision/models/video/resnet.py`) with its exact
//! module structure, so state dicts move between vssl and PyTorch unchanged.
//!
//! - Stems: [`StemKind::Basic`] = `Conv3d(3, 64, (3,7,7), s (1,2,2), p (1,3,3))`, BN,
//!   ReLU (`stem.0`, `stem.1`); [`StemKind::R2Plus1d`] = `Conv3d(3, 45, (1,7,7),
//!   s (1,2,2), p (0,3,3))`, BN(45), ReLU, `Conv3d(45, 64, (3,1,1), p (1,0,0))`, BN(64),
//!   ReLU (`stem.0`, `stem.1`, `stem.3`, `stem.4`). No convolution has a bias.
//! - Convolution builders ([`ConvBuilder`]): `Conv3DSimple` (3x3x3, stride `s`, pad 1),
//!   `Conv3DNoTemporal` (1x3x3, stride `(1,s,s)`, pad `(0,1,1)`) and `Conv2Plus1D`
//!   (`Sequential(Conv3d(in, mid, (1,3,3), (1,s,s), (0,1,1)), BN(mid), ReLU,
//!   Conv3d(mid, out, (3,1,1), (s,1,1), (1,0,0)))`, one more nesting level in names).
//!   As in torchvision, a block computes `mid = in·out·27 / (in·9 + 3·out)` once from
//!   its `(inplanes, planes)` and both its convolutions use it.
//! - Basic blocks: `conv1 = Sequential(builder, BN, ReLU)`, `conv2 = Sequential(builder,
//!   BN)`, optional `downsample = Sequential(Conv3d 1x1x1 with the builder's
//!   downsample stride, BN)`: names `layer2.0.conv1.0.weight`, `layer2.0.conv1.1.*`,
//!   `layer2.0.downsample.0.weight`, and with `Conv2Plus1D` `layer1.0.conv1.0.0.weight`,
//!   `layer1.0.conv1.0.1.*`, `layer1.0.conv1.0.3.weight`.
//! - Four stages of basic blocks, stride 1 then 2, 2, 2; optional classifier `fc` =
//!   `Linear(512, num_classes)` (weights N(0, 0.01), bias 0, as torchvision).
//!
//! [`VideoResNet::forward_t`] returns the feature map after `layer4` (torchvision's
//! input to `avgpool`); the trait's `pooled` is `avgpool` + flatten and `classify` is
//! `fc`. Batch-norm layers may be TGN instead ([`super::norm`]); TGN slots are 0 for
//! the stem and 1-4 for `layer1..layer4` (every norm inside a stage, including the
//! downsample's and `Conv2Plus1D`'s middle one, uses its stage's entry).
//!
//! **`temporal_dilation_last_stage`** (TCLR's modification of R3D-18): the first block
//! of `layer4` gets temporal stride 1 instead of 2: its `conv1` temporal kernel gets
//! dilation 2 and padding 2 (same receptive field growth, same parameters) and its
//! downsample stride `(1,2,2)`. For `Conv3DSimple` this is exactly TCLR's
//! `Conv3d(256, 512, 3, stride (1,2,2), padding (2,1,1), dilation (2,1,1))`; for
//! `Conv2Plus1D` it applies to the `(3,1,1)` temporal convolution; `Conv3DNoTemporal`
//! has no temporal stride to remove, so MC3-18 is unchanged. 16 frames then give
//! `T' = 4` at the output of R3D-18 / R(2+1)D-18 instead of 2.

use candle_core::Tensor;

use super::norm::{out_len, Norm, NormSpec};
use super::Backbone;
use crate::nn::{Init, Linear, VarStore};
use crate::ops::conv3d::{Conv3d, Conv3dConfig};
use crate::Result;

/// The stem of a [`VideoResNet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StemKind {
    /// torchvision's `BasicStem` (R3D, MC3).
    Basic,
    /// torchvision's `R2Plus1dStem` (45 middle channels).
    R2Plus1d,
}

/// torchvision's convolution builders for the basic blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvBuilder {
    /// 3x3x3.
    Conv3DSimple,
    /// 1x3x3: no temporal extent and no temporal stride.
    Conv3DNoTemporal,
    /// 1x3x3 then 3x1x1 with a BN and ReLU in between.
    Conv2Plus1D,
}

impl ConvBuilder {
    /// torchvision's `get_downsample_stride`: the 1x1x1 shortcut's stride.
    pub fn downsample_stride(self, s: usize) -> [usize; 3] {
        match self {
            ConvBuilder::Conv3DSimple | ConvBuilder::Conv2Plus1D => [s, s, s],
            ConvBuilder::Conv3DNoTemporal => [1, s, s],
        }
    }
}

/// The structure of a [`VideoResNet`].
#[derive(Debug, Clone, PartialEq)]
pub struct VideoResNetConfig {
    pub stem: StemKind,
    /// Output channels of the stem (64 in torchvision).
    pub stem_width: usize,
    /// Convolution builder of each stage.
    pub conv_makers: [ConvBuilder; 4],
    /// Channels of each stage.
    pub widths: [usize; 4],
    /// Basic blocks per stage.
    pub layers: [usize; 4],
    /// Build `fc` with this many classes.
    pub num_classes: Option<usize>,
    /// TCLR's stage 4 without temporal stride (see the module docs).
    pub temporal_dilation_last_stage: bool,
    pub norm: NormSpec,
}

impl VideoResNetConfig {
    fn resnet18(stem: StemKind, conv_makers: [ConvBuilder; 4]) -> Self {
        Self {
            stem,
            stem_width: 64,
            conv_makers,
            widths: [64, 128, 256, 512],
            layers: [2, 2, 2, 2],
            num_classes: None,
            temporal_dilation_last_stage: false,
            norm: NormSpec::bn(),
        }
    }

    /// torchvision's `r3d_18` (without `fc` unless `num_classes` is set).
    pub fn r3d_18() -> Self {
        Self::resnet18(StemKind::Basic, [ConvBuilder::Conv3DSimple; 4])
    }

    /// torchvision's `mc3_18`.
    pub fn mc3_18() -> Self {
        use ConvBuilder::*;
        Self::resnet18(
            StemKind::Basic,
            [
                Conv3DSimple,
                Conv3DNoTemporal,
                Conv3DNoTemporal,
                Conv3DNoTemporal,
            ],
        )
    }

    /// torchvision's `r2plus1d_18`.
    pub fn r2plus1d_18() -> Self {
        Self::resnet18(StemKind::R2Plus1d, [ConvBuilder::Conv2Plus1D; 4])
    }

    /// R3D topology with custom widths and depths (stem width = `widths[0]`).
    pub fn r3d_small(widths: [usize; 4], layers: [usize; 4]) -> Self {
        Self {
            stem_width: widths[0],
            widths,
            layers,
            ..Self::r3d_18()
        }
    }
}

fn conv_cfg(stride: [usize; 3], padding: [usize; 3], dilation: [usize; 3]) -> Conv3dConfig {
    Conv3dConfig {
        stride,
        padding,
        dilation,
    }
}

/// A convolution followed by its geometry bookkeeping: the T it produces from `t`.
fn conv(
    vs: &VarStore,
    cin: usize,
    cout: usize,
    k: [usize; 3],
    c: Conv3dConfig,
    t: usize,
) -> Result<(Conv3d, usize)> {
    let t_out = out_len(t, k[0], c.stride[0], c.padding[0], c.dilation[0]);
    Ok((Conv3d::new(vs, cin, cout, k, c, false)?, t_out))
}

/// What a [`ConvBuilder`] built.
enum BuiltConv {
    /// `Conv3DSimple` / `Conv3DNoTemporal`: a single `Conv3d` (names `weight`).
    Single(Conv3d),
    /// `Conv2Plus1D`: `0` spatial conv, `1` norm, (`2` ReLU), `3` temporal conv.
    TwoPlusOne {
        spatial: Conv3d,
        norm: Norm,
        temporal: Conv3d,
    },
}

impl BuiltConv {
    /// Builds under `vs` (e.g. `layer1.0.conv1.0`); returns the layer and its output T.
    #[allow(clippy::too_many_arguments)]
    fn new(
        vs: &VarStore,
        kind: ConvBuilder,
        cin: usize,
        cout: usize,
        mid: usize,
        stride: usize,
        dilate_t: bool,
        norm: &NormSpec,
        slot: usize,
        t: usize,
    ) -> Result<(Self, usize)> {
        let s = stride;
        Ok(match kind {
            ConvBuilder::Conv3DSimple => {
                let c = if dilate_t {
                    conv_cfg([1, s, s], [2, 1, 1], [2, 1, 1])
                } else {
                    conv_cfg([s; 3], [1; 3], [1; 3])
                };
                let (cv, t) = conv(vs, cin, cout, [3; 3], c, t)?;
                (BuiltConv::Single(cv), t)
            }
            ConvBuilder::Conv3DNoTemporal => {
                let c = conv_cfg([1, s, s], [0, 1, 1], [1; 3]);
                let (cv, t) = conv(vs, cin, cout, [1, 3, 3], c, t)?;
                (BuiltConv::Single(cv), t)
            }
            ConvBuilder::Conv2Plus1D => {
                let c = conv_cfg([1, s, s], [0, 1, 1], [1; 3]);
                let (spatial, t_mid) = conv(&vs.pp("0"), cin, mid, [1, 3, 3], c, t)?;
                let norm = norm.build(&vs.pp("1"), mid, slot, t_mid)?;
                let c = if dilate_t {
                    conv_cfg([1; 3], [2, 0, 0], [2, 1, 1])
                } else {
                    conv_cfg([s, 1, 1], [1, 0, 0], [1; 3])
                };
                let (temporal, t_out) = conv(&vs.pp("3"), mid, cout, [3, 1, 1], c, t_mid)?;
                (
                    BuiltConv::TwoPlusOne {
                        spatial,
                        norm,
                        temporal,
                    },
                    t_out,
                )
            }
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            BuiltConv::Single(c) => c.forward(x),
            BuiltConv::TwoPlusOne {
                spatial,
                norm,
                temporal,
            } => {
                let y = norm.forward_relu(&spatial.forward(x)?, train)?;
                temporal.forward(&y)
            }
        }
    }
}

/// torchvision's `BasicBlock` (expansion 1).
struct BasicBlock {
    conv1: (BuiltConv, Norm),
    conv2: (BuiltConv, Norm),
    downsample: Option<(Conv3d, Norm)>,
}

impl BasicBlock {
    /// Builds under `vs` (e.g. `layer2.0`) for input T `t`; returns the block and its
    /// output T.
    #[allow(clippy::too_many_arguments)]
    fn new(
        vs: &VarStore,
        kind: ConvBuilder,
        cin: usize,
        planes: usize,
        stride: usize,
        dilate_t: bool,
        norm: &NormSpec,
        slot: usize,
        t: usize,
    ) -> Result<(Self, usize)> {
        // torchvision: computed once per block from (inplanes, planes), used by both convs.
        let mid = (cin * planes * 27) / (cin * 9 + 3 * planes);
        let c1 = vs.pp("conv1");
        let (b1, t1) = BuiltConv::new(
            &c1.pp("0"),
            kind,
            cin,
            planes,
            mid,
            stride,
            dilate_t,
            norm,
            slot,
            t,
        )?;
        let n1 = norm.build(&c1.pp("1"), planes, slot, t1)?;
        let c2 = vs.pp("conv2");
        let (b2, t2) = BuiltConv::new(
            &c2.pp("0"),
            kind,
            planes,
            planes,
            mid,
            1,
            false,
            norm,
            slot,
            t1,
        )?;
        let n2 = norm.build(&c2.pp("1"), planes, slot, t2)?;
        let downsample = if stride != 1 || cin != planes {
            let mut ds = kind.downsample_stride(stride);
            if dilate_t {
                ds[0] = 1;
            }
            let dvs = vs.pp("downsample");
            let (cv, td) = conv(
                &dvs.pp("0"),
                cin,
                planes,
                [1; 3],
                conv_cfg(ds, [0; 3], [1; 3]),
                t,
            )?;
            Some((cv, norm.build(&dvs.pp("1"), planes, slot, td)?))
        } else {
            None
        };
        Ok((
            Self {
                conv1: (b1, n1),
                conv2: (b2, n2),
                downsample,
            },
            t2,
        ))
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if let (
            true,
            None,
            (BuiltConv::Single(conv1), Norm::Bn(bn1)),
            (BuiltConv::Single(conv2), Norm::Bn(bn2)),
        ) = (train, &self.downsample, &self.conv1, &self.conv2)
        {
            let layers = crate::ops::block::ResidualBlock {
                conv1,
                bn1,
                conv2,
                bn2,
            };
            if let Some(y) = crate::ops::block::residual_block_train(x, &layers)? {
                return Ok(y);
            }
        }
        let y = self.conv1.0.forward_t(x, train)?;
        let y = self.conv1.1.forward_relu(&y, train)?;
        let y = self.conv2.0.forward_t(&y, train)?;
        let y = self.conv2.1.forward_t(&y, train)?;
        let skip = match &self.downsample {
            Some((c, n)) => n.forward_t(&c.forward(x)?, train)?,
            None => x.clone(),
        };
        crate::ops::fused::add_relu(&y, &skip)
    }
}

/// The stem's layers in order: (conv, norm) pairs, each followed by ReLU.
struct Stem {
    layers: Vec<(Conv3d, Norm)>,
}

impl Stem {
    fn new(
        vs: &VarStore,
        kind: StemKind,
        width: usize,
        norm: &NormSpec,
        t: usize,
    ) -> Result<(Self, usize)> {
        let mut layers = Vec::new();
        let t = match kind {
            StemKind::Basic => {
                let c = conv_cfg([1, 2, 2], [1, 3, 3], [1; 3]);
                let (cv, t) = conv(&vs.pp("0"), 3, width, [3, 7, 7], c, t)?;
                layers.push((cv, norm.build(&vs.pp("1"), width, 0, t)?));
                t
            }
            StemKind::R2Plus1d => {
                let c = conv_cfg([1, 2, 2], [0, 3, 3], [1; 3]);
                let (cv, t) = conv(&vs.pp("0"), 3, 45, [1, 7, 7], c, t)?;
                layers.push((cv, norm.build(&vs.pp("1"), 45, 0, t)?));
                let c = conv_cfg([1; 3], [1, 0, 0], [1; 3]);
                let (cv, t) = conv(&vs.pp("3"), 45, width, [3, 1, 1], c, t)?;
                layers.push((cv, norm.build(&vs.pp("4"), width, 0, t)?));
                t
            }
        };
        Ok((Self { layers }, t))
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for (c, n) in &self.layers {
            y = n.forward_relu(&c.forward(&y)?, train)?;
        }
        Ok(y)
    }
}

/// torchvision's `VideoResNet` (see the module docs).
pub struct VideoResNet {
    stem: Stem,
    stages: Vec<Vec<BasicBlock>>,
    fc: Option<Linear>,
    out_channels: usize,
    vs: VarStore,
}

impl VideoResNet {
    /// Builds the network with fresh parameters in `vs`; `frames` is the clip length it
    /// is built for (it only matters for TGN group clamping).
    pub fn new(c: &VideoResNetConfig, vs: &VarStore, frames: usize) -> Result<Self> {
        let (stem, mut t) = Stem::new(&vs.pp("stem"), c.stem, c.stem_width, &c.norm, frames)?;
        let mut cin = c.stem_width;
        let mut stages = Vec::new();
        for i in 0..4 {
            let svs = vs.pp(format!("layer{}", i + 1));
            let mut blocks = Vec::new();
            for j in 0..c.layers[i] {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let dilate_t = c.temporal_dilation_last_stage && i == 3 && j == 0;
                let (block, t_out) = BasicBlock::new(
                    &svs.pp(j.to_string()),
                    c.conv_makers[i],
                    cin,
                    c.widths[i],
                    stride,
                    dilate_t,
                    &c.norm,
                    i + 1,
                    t,
                )?;
                blocks.push(block);
                cin = c.widths[i];
                t = t_out;
            }
            stages.push(blocks);
        }
        let fc = match c.num_classes {
            Some(n) => Some(Linear::with_init(
                &vs.pp("fc"),
                cin,
                n,
                Init::Normal(0.01),
                Init::Const(0.0),
            )?),
            None => None,
        };
        Ok(Self {
            stem,
            stages,
            fc,
            out_channels: cin,
            vs: vs.clone(),
        })
    }
}

impl Backbone for VideoResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.stem.forward_t(x, train)?;
        for stage in &self.stages {
            for block in stage {
                y = block.forward_t(&y, train)?;
            }
        }
        Ok(y)
    }
    fn out_channels(&self) -> usize {
        self.out_channels
    }
    fn vars(&self) -> &VarStore {
        &self.vs
    }
    fn classify(&self, pooled: &Tensor) -> Option<Result<Tensor>> {
        self.fc.as_ref().map(|fc| fc.forward(pooled))
    }
}
