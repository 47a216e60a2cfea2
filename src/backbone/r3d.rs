//! R3D (3D ResNet with basic blocks) exactly as torchvision's `r3d_18` builds it:
//! stem `Conv3d(3, 64, (3,7,7), stride (1,2,2), pad (1,3,3))` + BN + ReLU, four
//! stages of basic blocks (stride 2 in all three dims from stage 2 on, 1x1x1
//! downsample), global average pool. Names: `stem.0.weight`, `stem.1.running_mean`,
//! `layer2.0.conv1.0.weight`, `layer2.0.downsample.1.bias`, ... The small variant
//! keeps the topology with narrower, shallower stages for CPU quick recipes.

use candle_core::Tensor;

use super::Backbone;
use crate::nn::VarStore;
use crate::ops::batch_norm3d::BatchNorm3d;
use crate::ops::conv3d::{Conv3d, Conv3dConfig};
use crate::Result;

/// Stage widths and depths.
#[derive(Debug, Clone, PartialEq)]
pub struct R3dConfig {
    pub stem_width: usize,
    pub widths: [usize; 4],
    pub layers: [usize; 4],
}

impl R3dConfig {
    pub fn r3d_18() -> Self {
        Self {
            stem_width: 64,
            widths: [64, 128, 256, 512],
            layers: [2, 2, 2, 2],
        }
    }
}

fn cfg(stride: usize, pad: usize) -> Conv3dConfig {
    Conv3dConfig {
        stride: [stride; 3],
        padding: [pad; 3],
        dilation: [1; 3],
    }
}

struct ConvBn {
    conv: Conv3d,
    bn: BatchNorm3d,
}

impl ConvBn {
    /// torchvision's `Sequential(Conv3d, BatchNorm3d[, ReLU])`: names `0.*` and `1.*`.
    fn new(vs: &VarStore, cin: usize, cout: usize, k: [usize; 3], c: Conv3dConfig) -> Result<Self> {
        Ok(Self {
            conv: Conv3d::new(&vs.pp("0"), cin, cout, k, c, false)?,
            bn: BatchNorm3d::new(&vs.pp("1"), cout)?,
        })
    }
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn.forward_t(&self.conv.forward(x)?, train)
    }
}

struct BasicBlock {
    conv1: ConvBn,
    conv2: ConvBn,
    downsample: Option<ConvBn>,
}

impl BasicBlock {
    fn new(vs: &VarStore, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        let downsample = if stride != 1 || cin != cout {
            Some(ConvBn::new(
                &vs.pp("downsample"),
                cin,
                cout,
                [1; 3],
                cfg(stride, 0),
            )?)
        } else {
            None
        };
        Ok(Self {
            conv1: ConvBn::new(&vs.pp("conv1"), cin, cout, [3; 3], cfg(stride, 1))?,
            conv2: ConvBn::new(&vs.pp("conv2"), cout, cout, [3; 3], cfg(1, 1))?,
            downsample,
        })
    }
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.conv1.forward_t(x, train)?.relu()?;
        let y = self.conv2.forward_t(&y, train)?;
        let skip = match &self.downsample {
            Some(d) => d.forward_t(x, train)?,
            None => x.clone(),
        };
        Ok((y + skip)?.relu()?)
    }
}

/// The R3D network (without the classifier `fc`).
pub struct R3d {
    stem: ConvBn,
    stages: Vec<Vec<BasicBlock>>,
    out_channels: usize,
    vs: VarStore,
}

impl R3d {
    pub fn new(c: &R3dConfig, vs: &VarStore) -> Result<Self> {
        let stem_cfg = Conv3dConfig {
            stride: [1, 2, 2],
            padding: [1, 3, 3],
            dilation: [1; 3],
        };
        let stem = ConvBn::new(&vs.pp("stem"), 3, c.stem_width, [3, 7, 7], stem_cfg)?;
        let mut cin = c.stem_width;
        let mut stages = Vec::new();
        for (i, (&w, &n)) in c.widths.iter().zip(c.layers.iter()).enumerate() {
            let svs = vs.pp(format!("layer{}", i + 1));
            let mut blocks = Vec::new();
            for j in 0..n {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(&svs.pp(j.to_string()), cin, w, stride)?);
                cin = w;
            }
            stages.push(blocks);
        }
        Ok(Self {
            stem,
            stages,
            out_channels: cin,
            vs: vs.clone(),
        })
    }
}

impl Backbone for R3d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.stem.forward_t(x, train)?.relu()?;
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
}
