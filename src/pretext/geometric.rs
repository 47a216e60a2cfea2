//! The geometric family: every clip is transformed by one of a fixed set of
//! transforms and the network names which. The family trait
//! [`GeometricPretext`] holds only the transform set (its size is the class count,
//! transform `k` is label `k`); the adapter [`GeometricMethod`] does the rest once for
//! every variant: strided clips, `rotations_per_clip = "all"` (every transformed copy
//! of each clip in the batch, image RotNet) or `"one"` (one transform drawn per clip),
//! a pooled-feature classifier with dropout. The shipped variant is
//! [`Rotation3d`] (3DRotNet): every frame rotated by `k * 90` degrees. Rotations are
//! exact pixel permutations (transpose + flip), so square crops are required.

use std::sync::Arc;

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{Pretext, StepOutput};
use crate::backbone::Backbone;
use crate::data::clip::{Batch, ClipPlanner};
use crate::data::sampler::StridedPlanner;
use crate::error::{check, Invalid};
use crate::nn::{dropout_rows, Linear, VarStore};
use crate::seed::mix;
use crate::{Error, Result};

/// How rotations are drawn for rotation prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationsPerClip {
    /// One random rotation per clip (the public 3DRotNet re-implementation).
    One,
    /// All four rotated copies of every clip in the batch (image RotNet). Default.
    All,
}

/// `[method] kind = "geometric"`: the geometric adapter's settings (3DRotNet rotation
/// prediction with the shipped transforms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeometricConfig {
    /// Present so the section can be read as one table; always "geometric".
    #[serde(skip_serializing)]
    pub kind: Option<String>,
    /// Every transform of each clip (`all`) or one drawn per clip (`one`).
    pub rotations_per_clip: RotationsPerClip,
    /// Clip stride is drawn uniformly from `stride_min..=stride_max`.
    pub stride_min: usize,
    pub stride_max: usize,
    /// Dropout before the rotation classifier.
    pub dropout: f64,
}

impl Default for GeometricConfig {
    fn default() -> Self {
        Self {
            kind: None,
            rotations_per_clip: RotationsPerClip::All,
            stride_min: 1,
            stride_max: 5,
            dropout: 0.5,
        }
    }
}

impl GeometricConfig {
    /// Range checks; keys relative to the `[method]` table.
    pub fn validate(&self) -> std::result::Result<(), Invalid> {
        check(self.stride_min >= 1, "stride_min", || {
            "must be at least 1".into()
        })?;
        check(self.stride_max >= self.stride_min, "stride_max", || {
            format!("must be >= method.stride_min ({})", self.stride_min)
        })?;
        check((0.0..1.0).contains(&self.dropout), "dropout", || {
            format!("must be in [0, 1), got {}", self.dropout)
        })?;
        Ok(())
    }

    /// Rotation prediction (the shipped geometric variant) on `backbone`, heads on
    /// `head_vars`, clips of `frames` frames.
    pub fn init(
        &self,
        frames: usize,
        backbone: Box<dyn Backbone>,
        head_vars: VarStore,
    ) -> Result<GeometricMethod<Rotation3d>> {
        GeometricMethod::new(Rotation3d, self, frames, backbone, head_vars)
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

/// The geometric family: a fixed set of transforms to recognise. Transform `k`
/// (`0..classes()`) is class `k`.
pub trait GeometricPretext: Send {
    /// Number of transforms (= classes of the head).
    fn classes(&self) -> usize;
    /// Transform `k` applied to clips `[N, C, T, H, W]`.
    fn apply(&self, k: usize, clips: &Tensor) -> Result<Tensor>;
}

/// 3DRotNet's transform set: every frame rotated by `k * 90` degrees
/// counter-clockwise (as `torch.rot90`), `k = 0..4`. Needs square clips.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotation3d;

impl GeometricPretext for Rotation3d {
    fn classes(&self) -> usize {
        4
    }

    fn apply(&self, k: usize, clips: &Tensor) -> Result<Tensor> {
        let (h, w) = clips.dims5().map(|(_, _, _, h, w)| (h, w))?;
        if h != w {
            return Err(Error::BadInput(format!(
                "rotation prediction needs square clips, got {h}x{w}"
            )));
        }
        rot90(clips, k)
    }
}

/// Any [`GeometricPretext`] as a [`Pretext`]: strided clips, transformed inputs and
/// labels, a pooled-feature classifier `pretext.fc` with dropout.
pub struct GeometricMethod<T: GeometricPretext> {
    method: T,
    cfg: GeometricConfig,
    planner: Arc<StridedPlanner>,
    backbone: Box<dyn Backbone>,
    head: Linear,
    head_vars: VarStore,
}

impl<T: GeometricPretext> GeometricMethod<T> {
    /// `method`'s transforms learned on `backbone` (clips of `frames` frames), settings
    /// from `cfg`, the head on `head_vars`.
    pub fn new(
        method: T,
        cfg: &GeometricConfig,
        frames: usize,
        backbone: Box<dyn Backbone>,
        head_vars: VarStore,
    ) -> Result<Self> {
        if method.classes() == 0 {
            return Err(Error::BadInput(
                "a geometric method needs transforms".into(),
            ));
        }
        let head = Linear::new(
            &head_vars.pp("fc"),
            backbone.out_channels(),
            method.classes(),
        )?;
        let planner = StridedPlanner::new(1, frames, (cfg.stride_min, cfg.stride_max));
        Ok(Self {
            method,
            cfg: cfg.clone(),
            planner: Arc::new(planner),
            backbone,
            head,
            head_vars,
        })
    }

    /// The family implementor.
    pub fn method(&self) -> &T {
        &self.method
    }

    /// Transform index for each of `n` clips when one transform is drawn per clip.
    pub fn draw(&self, n: usize, seed: u64) -> Vec<u32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| rng.random_range(0..self.method.classes() as u32))
            .collect()
    }

    /// Transformed clips and their labels for one batch (the whole step's).
    pub fn make_inputs(&self, clips: &Tensor, seed: u64) -> Result<(Tensor, Tensor)> {
        let b = clips.dim(0)?;
        self.make_inputs_of(clips, seed, 0..b, b)
    }

    /// [`Self::make_inputs`] for the clips `rows` of a step whose whole batch has
    /// `total` clips: the transforms are drawn for the whole batch, these rows kept.
    fn make_inputs_of(
        &self,
        clips: &Tensor,
        seed: u64,
        rows: std::ops::Range<usize>,
        total: usize,
    ) -> Result<(Tensor, Tensor)> {
        let b = clips.dim(0)?;
        let dev = clips.device();
        let classes = self.method.classes();
        match self.cfg.rotations_per_clip {
            RotationsPerClip::All => {
                let xs = (0..classes)
                    .map(|k| self.method.apply(k, clips))
                    .collect::<Result<Vec<_>>>()?;
                let labels: Vec<u32> = (0..classes as u32)
                    .flat_map(|k| std::iter::repeat_n(k, b))
                    .collect();
                Ok((
                    Tensor::cat(&xs, 0)?,
                    Tensor::from_vec(labels.clone(), labels.len(), dev)?,
                ))
            }
            RotationsPerClip::One => {
                let ks = self.draw(total, seed)[rows].to_vec();
                let parts = (0..b)
                    .map(|i| self.method.apply(ks[i] as usize, &clips.narrow(0, i, 1)?))
                    .collect::<Result<Vec<_>>>()?;
                Ok((Tensor::cat(&parts, 0)?, Tensor::from_vec(ks, b, dev)?))
            }
        }
    }
}

impl<T: GeometricPretext> Pretext for GeometricMethod<T> {
    fn planner(&self) -> Arc<dyn ClipPlanner> {
        self.planner.clone()
    }

    fn step(&mut self, batch: &Batch, train: bool) -> Result<StepOutput> {
        let b = batch.clips.dim(0)?;
        let per_video = b / batch.videos.max(1);
        let rows = batch.slice.rows(batch.videos, per_video);
        let total = batch.slice.total * per_video;
        let (x, labels) =
            self.make_inputs_of(&batch.clips, mix(batch.seed ^ 0x5157), rows.clone(), total)?;
        let f = self.backbone.pooled(&x, train)?;
        // The rows of `x` are clip-major for one transform per clip, transform-major
        // (`classes` blocks of the batch) for all of them.
        let blocks = f.dim(0)? / b;
        let kept: Vec<usize> = (0..blocks)
            .flat_map(|k| rows.clone().map(move |r| k * total + r))
            .collect();
        let f = dropout_rows(
            &f,
            self.cfg.dropout,
            train,
            mix(batch.seed ^ 0xd20f),
            &kept,
            blocks * total,
        )?;
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
