//! GeometricPretext: rotation prediction (3DRotNet). Every frame of a clip is
//! rotated by k*90 degrees and the network predicts k. Rotations are exact pixel
//! permutations (transpose + flip), so square crops are required.
//! `rotations_per_clip = "all"` puts the four rotated copies of each clip in the
//! batch (image RotNet); `"one"` draws one k per clip (the public re-implementation).

use candle_core::Tensor;
use rand::{Rng, SeedableRng};

use super::{Batch, ClipSpec, Pretext, StepOutput};
use crate::backbone::Backbone;
use crate::nn::{dropout, Linear, VarStore};
use crate::seed::mix;
use crate::recipe::{GeometricCfg, RotationsPerClip};
use crate::{Error, Result};

/// A geometric transformation whose index is the pretext label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeometricTransform {
    /// Rotate every frame by `quarter_turns * 90` degrees counter-clockwise (as `torch.rot90`).
    Rotate { quarter_turns: u8 },
}

impl GeometricTransform {
    /// Applies the transform to clips `[..., H, W]` (the last two dims are rotated).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match *self {
            GeometricTransform::Rotate { quarter_turns } => rot90(x, quarter_turns as usize),
        }
    }
}

/// Reverses `x` along `dim`.
pub fn flip(x: &Tensor, dim: usize) -> Result<Tensor> {
    let n = x.dim(dim)?;
    let idx: Vec<u32> = (0..n as u32).rev().collect();
    let idx = Tensor::from_vec(idx, n, x.device())?;
    Ok(x.index_select(&idx, dim)?)
}

/// `torch.rot90(x, k, dims=(-2, -1))`: counter-clockwise quarter turns of the last two dims.
pub fn rot90(x: &Tensor, k: usize) -> Result<Tensor> {
    let r = x.rank();
    if r < 2 {
        return Err(Error::Internal("rot90 needs at least 2 dims".into()));
    }
    let (h, w) = (r - 2, r - 1);
    Ok(match k % 4 {
        0 => x.clone(),
        1 => flip(x, w)?.transpose(h, w)?.contiguous()?,
        2 => flip(&flip(x, w)?, h)?,
        _ => flip(&x.transpose(h, w)?.contiguous()?, w)?,
    })
}

/// The geometric family: a fixed set of transforms to recognise.
pub trait GeometricPretext {
    fn transforms(&self) -> &[GeometricTransform];
    /// Transform index for each of `n` clips when one transform is drawn per clip.
    fn draw(&self, n: usize, seed: u64) -> Vec<u32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| rng.random_range(0..self.transforms().len() as u32))
            .collect()
    }
}

/// Rotation prediction with a pooled-feature classifier head.
pub struct RotationPrediction {
    cfg: GeometricCfg,
    frames: usize,
    transforms: Vec<GeometricTransform>,
    backbone: Box<dyn Backbone>,
    head: Linear,
    head_vars: VarStore,
}

impl RotationPrediction {
    pub fn new(
        cfg: &GeometricCfg,
        frames: usize,
        backbone: Box<dyn Backbone>,
        head_vars: VarStore,
    ) -> Result<Self> {
        let transforms = (0..4)
            .map(|q| GeometricTransform::Rotate { quarter_turns: q })
            .collect::<Vec<_>>();
        let head = Linear::new(
            &head_vars.pp("fc"),
            backbone.out_channels(),
            transforms.len(),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            frames,
            transforms,
            backbone,
            head,
            head_vars,
        })
    }

    /// Transformed clips and their labels for one batch.
    pub fn make_inputs(&self, clips: &Tensor, seed: u64) -> Result<(Tensor, Tensor)> {
        let (b, _c, _t, h, w) = clips.dims5()?;
        if h != w {
            return Err(Error::BadInput(format!(
                "rotation prediction needs square clips, got {h}x{w}"
            )));
        }
        let dev = clips.device();
        match self.cfg.rotations_per_clip {
            RotationsPerClip::All => {
                let xs = self
                    .transforms
                    .iter()
                    .map(|t| t.apply(clips))
                    .collect::<Result<Vec<_>>>()?;
                let labels: Vec<u32> = (0..self.transforms.len() as u32)
                    .flat_map(|k| std::iter::repeat_n(k, b))
                    .collect();
                Ok((
                    Tensor::cat(&xs, 0)?,
                    Tensor::from_vec(labels.clone(), labels.len(), dev)?,
                ))
            }
            RotationsPerClip::One => {
                let ks = self.draw(b, seed);
                let parts = (0..b)
                    .map(|i| self.transforms[ks[i] as usize].apply(&clips.narrow(0, i, 1)?))
                    .collect::<Result<Vec<_>>>()?;
                Ok((Tensor::cat(&parts, 0)?, Tensor::from_vec(ks, b, dev)?))
            }
        }
    }
}

impl GeometricPretext for RotationPrediction {
    fn transforms(&self) -> &[GeometricTransform] {
        &self.transforms
    }
}

impl Pretext for RotationPrediction {
    fn clip_spec(&self) -> ClipSpec {
        ClipSpec::strided(1, self.frames, (self.cfg.stride_min, self.cfg.stride_max))
    }

    fn step(&mut self, batch: &Batch, train: bool) -> Result<StepOutput> {
        let (x, labels) = self.make_inputs(&batch.clips, mix(batch.seed ^ 0x5157))?;
        let f = self.backbone.pooled(&x, train)?;
        let f = dropout(&f, self.cfg.dropout, train, mix(batch.seed ^ 0xd20f))?;
        let logits = self.head.forward(&f)?;
        StepOutput::classification(&logits, &labels)
    }

    fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }

    fn head_vars(&self) -> &VarStore {
        &self.head_vars
    }
}
