//! SpeedSortPretext: variable playback speed (METHODS.md section 2; no public code,
//! this is the reconstruction). Each video gives `n_clips` clips at distinct speeds
//! (speed s = frame stride s), each possibly played backwards, at random independent
//! starts, in shuffled order (the loader draws them: [`crate::data::sampler::speed_sort_plan`]).
//! With `label = "sort"` the network names the permutation that sorts the clips by
//! signed speed (backward = negative), one of `n_clips!` classes, from a pairwise
//! head; with `"per_clip"` it classifies every clip's own (speed, direction).
//! The label functions are pure and public so they can be tested by hand.

use candle_core::Tensor;

use super::{Batch, ClipMeta, ClipSpec, Pretext, Sampling, SpeedSpec, StepOutput};
use crate::backbone::Backbone;
use crate::nn::{dropout, Linear, VarStore};
use crate::seed::mix;
use crate::recipe::{SpeedLabel, SpeedSortCfg};
use crate::{Error, Result};

/// A playback speed with its direction: a clip's stride and whether it runs backwards.
/// The same record the loader writes for every clip.
pub type PlaybackSpeed = ClipMeta;

/// `n!`.
pub fn factorial(n: usize) -> usize {
    (1..=n).product()
}

/// Index of a permutation of `0..n` among all `n!` (Lehmer code, lexicographic
/// order: the identity is 0, the reversal `n! - 1`). `order` must be a permutation.
pub fn permutation_index(order: &[usize]) -> u32 {
    let n = order.len();
    debug_assert!(
        {
            let mut s = order.to_vec();
            s.sort_unstable();
            s.iter().enumerate().all(|(i, &v)| i == v)
        },
        "not a permutation: {order:?}"
    );
    let mut idx = 0u64;
    for i in 0..n {
        let smaller = order[i + 1..].iter().filter(|&&v| v < order[i]).count();
        idx = idx * (n - i) as u64 + smaller as u64;
    }
    idx as u32
}

/// The permutation of `0..n` whose [`permutation_index`] is `idx` (`idx < n!`).
pub fn permutation_from_index(n: usize, idx: u32) -> Vec<usize> {
    let mut left: Vec<usize> = (0..n).collect();
    let mut rest = idx as usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let f = factorial(n - 1 - i);
        out.push(left.remove((rest / f).min(left.len() - 1)));
        rest %= f;
    }
    out
}

/// The order that sorts clips by signed speed ascending: `order[k]` is the position
/// (in `metas`) of the k-th slowest clip, backward clips first (fastest backward
/// first). Speeds are distinct, so signed speeds are too.
pub fn sorting_order(metas: &[ClipMeta]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..metas.len()).collect();
    order.sort_by_key(|&i| metas[i].signed_speed());
    order
}

/// `label = "sort"` class of one video whose clips are `metas` (batch order): the
/// index of the permutation that sorts them by signed speed.
pub fn sort_label(metas: &[ClipMeta]) -> u32 {
    permutation_index(&sorting_order(metas))
}

/// Number of `label = "per_clip"` classes: each speed, times two directions when
/// backward play is allowed.
pub fn per_clip_classes(speeds: &[usize], reverse: bool) -> usize {
    speeds.len() * if reverse { 2 } else { 1 }
}

/// `label = "per_clip"` class of one clip: `2 * k + backward` with `k` the index of its
/// speed in `speeds` when `reverse`, else `k`.
pub fn per_clip_label(meta: &ClipMeta, speeds: &[usize], reverse: bool) -> Result<u32> {
    let k = speeds
        .iter()
        .position(|&s| s == meta.speed)
        .ok_or_else(|| {
            Error::BadInput(format!(
                "clip at speed {} is not one of the method's speeds {speeds:?}",
                meta.speed
            ))
        })?;
    match (reverse, meta.reverse) {
        (true, r) => Ok((2 * k + r as usize) as u32),
        (false, false) => Ok(k as u32),
        (false, true) => Err(Error::BadInput(
            "a backward clip but method.reverse = false".into(),
        )),
    }
}

/// The speed-sort family: which playbacks clips can have, and how a clip order
/// becomes a class.
pub trait SpeedSortPretext {
    /// Every playback a clip can have, in `per_clip` class order (each speed forward,
    /// then backward when allowed).
    fn speeds(&self) -> &[PlaybackSpeed];
    /// Class of the order that sorts a video's clips (`order[k]` = batch position of
    /// the k-th slowest clip); the default numbers all `n!` orders (Lehmer code).
    fn label(&self, order: &[usize]) -> u32 {
        permutation_index(order)
    }
}

/// The `"sort"` head: a shared pair layer over every unordered pair of clip features.
struct SortHead {
    pair: Linear,
    fc: Linear,
    /// Pairs `(i, j)`, `i < j`, in lexicographic order.
    pairs: Vec<(usize, usize)>,
    hidden: usize,
}

/// Speed sorting with a pairwise (`"sort"`) or per-clip (`"per_clip"`) classifier.
pub struct SpeedSort {
    cfg: SpeedSortCfg,
    frames: usize,
    playbacks: Vec<PlaybackSpeed>,
    backbone: Box<dyn Backbone>,
    sort_head: Option<SortHead>,
    fc: Option<Linear>,
    head_vars: VarStore,
}

impl SpeedSort {
    pub fn new(
        cfg: &SpeedSortCfg,
        frames: usize,
        backbone: Box<dyn Backbone>,
        head_vars: VarStore,
    ) -> Result<Self> {
        let n = cfg.n_clips;
        if n < 2 || n > cfg.speeds.len() {
            return Err(Error::BadInput(format!(
                "speed sort needs 2 <= n_clips <= speeds ({}), got {n}",
                cfg.speeds.len()
            )));
        }
        let playbacks = cfg
            .speeds
            .iter()
            .flat_map(|&speed| {
                let dirs: &[bool] = if cfg.reverse {
                    &[false, true]
                } else {
                    &[false]
                };
                dirs.iter().map(move |&reverse| ClipMeta { speed, reverse })
            })
            .collect();
        let c = backbone.out_channels();
        let (sort_head, fc) = match cfg.label {
            SpeedLabel::Sort => {
                let pairs: Vec<(usize, usize)> = (0..n)
                    .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                    .collect();
                let pair = Linear::new(&head_vars.pp("pair"), 2 * c, cfg.pair_hidden)?;
                let fc = Linear::new(
                    &head_vars.pp("fc"),
                    pairs.len() * cfg.pair_hidden,
                    factorial(n),
                )?;
                let head = SortHead {
                    pair,
                    fc,
                    pairs,
                    hidden: cfg.pair_hidden,
                };
                (Some(head), None)
            }
            SpeedLabel::PerClip => {
                let classes = per_clip_classes(&cfg.speeds, cfg.reverse);
                (None, Some(Linear::new(&head_vars.pp("fc"), c, classes)?))
            }
        };
        Ok(Self {
            cfg: cfg.clone(),
            frames,
            playbacks,
            backbone,
            sort_head,
            fc,
            head_vars,
        })
    }

    /// Number of classes the head predicts.
    pub fn classes(&self) -> usize {
        match self.cfg.label {
            SpeedLabel::Sort => factorial(self.cfg.n_clips),
            SpeedLabel::PerClip => self.playbacks.len(),
        }
    }

    /// Targets of a batch from its clip metadata: one per video (`"sort"`) or one per
    /// clip (`"per_clip"`).
    pub fn targets(&self, metas: &[ClipMeta]) -> Result<Vec<u32>> {
        match self.cfg.label {
            SpeedLabel::Sort => Ok(metas
                .chunks(self.cfg.n_clips)
                .map(|m| self.label(&sorting_order(m)))
                .collect()),
            SpeedLabel::PerClip => metas
                .iter()
                .map(|m| per_clip_label(m, &self.cfg.speeds, self.cfg.reverse))
                .collect(),
        }
    }

    /// Logits of pooled clip features `[videos * n_clips, C]` (video-major).
    pub fn logits(&self, feats: &Tensor, videos: usize, train: bool, seed: u64) -> Result<Tensor> {
        let p = self.cfg.dropout;
        if let Some(h) = &self.sort_head {
            let (_, c) = feats.dims2()?;
            let f = feats.reshape((videos, self.cfg.n_clips, c))?;
            let pairs = h
                .pairs
                .iter()
                .map(|&(i, j)| Ok(Tensor::cat(&[f.get_on_dim(1, i)?, f.get_on_dim(1, j)?], 1)?))
                .collect::<Result<Vec<_>>>()?;
            // [B, P, 2C] -> one shared pair layer -> [B, P * hidden]
            let x = Tensor::stack(&pairs, 1)?.reshape((videos * h.pairs.len(), 2 * c))?;
            let x = h.pair.forward(&x)?.relu()?;
            let x = x.reshape((videos, h.pairs.len() * h.hidden))?;
            let x = dropout(&x, p, train, seed)?;
            h.fc.forward(&x)
        } else if let Some(fc) = &self.fc {
            fc.forward(&dropout(feats, p, train, seed)?)
        } else {
            Err(Error::Internal("speed sort without a head".into()))
        }
    }
}

impl SpeedSortPretext for SpeedSort {
    fn speeds(&self) -> &[PlaybackSpeed] {
        &self.playbacks
    }
}

impl Pretext for SpeedSort {
    fn clip_spec(&self) -> ClipSpec {
        ClipSpec {
            clips_per_video: self.cfg.n_clips,
            frames: self.frames,
            sampling: Sampling::SpeedSort(SpeedSpec {
                speeds: self.cfg.speeds.clone(),
                n_clips: self.cfg.n_clips,
                reverse: self.cfg.reverse,
            }),
        }
    }

    fn step(&mut self, batch: &Batch, train: bool) -> Result<StepOutput> {
        let clips = batch.clips.dim(0)?;
        let n = self.cfg.n_clips;
        if clips != batch.videos * n || batch.clip_meta.len() != clips {
            return Err(Error::BadInput(format!(
                "speed sort expects {n} clips per video with metadata: {} videos, {clips} clips, \
                 {} clip records",
                batch.videos,
                batch.clip_meta.len()
            )));
        }
        let targets = self.targets(&batch.clip_meta)?;
        let labels = Tensor::from_vec(targets.clone(), targets.len(), batch.clips.device())?;
        let f = self.backbone.pooled(&batch.clips, train)?;
        let logits = self.logits(&f, batch.videos, train, mix(batch.seed ^ 0x5bd5))?;
        StepOutput::classification(&logits, &labels)
    }

    fn backbone(&self) -> &dyn Backbone {
        self.backbone.as_ref()
    }

    fn head_vars(&self) -> &VarStore {
        &self.head_vars
    }
}
