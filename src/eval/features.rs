//! Shared multi-clip feature extraction: `test_clips` uniformly spaced,
//! centre-cropped clips per video, the backbone in eval mode, each clip's feature
//! map pooled as `eval.pooling` says. Features are kept per clip (`[V, K, D]`):
//! the linear probe trains on clips, retrieval averages them per video.

use candle_core::{Device, Tensor};

use super::{EvalSetup, Pooling};
use crate::backbone::Backbone;
use crate::data::augment::Normalize;
use crate::data::datasets::VideoDataset;
use crate::data::loader::{eval_clips, read_video};
use crate::data::Split;
use crate::{Error, Result};

/// Clip features of one split.
#[derive(Debug, Clone)]
pub struct SplitFeatures {
    /// `[V, K, D]`: video, clip, feature.
    pub clips: Tensor,
    pub labels: Vec<u32>,
}

impl SplitFeatures {
    /// Per-video features `[V, D]`: the mean over clips.
    pub fn videos(&self) -> Result<Tensor> {
        Ok(self.clips.mean(1)?)
    }
}

/// Features of both splits.
#[derive(Debug, Clone)]
pub struct Features {
    pub train: SplitFeatures,
    pub test: SplitFeatures,
    /// Videos that could not be read (reported, not fatal).
    pub skipped: Vec<String>,
}

/// Pools a feature map `[B, C, T, H, W]` into `[B, D]`.
pub fn pool(map: &Tensor, pooling: Pooling) -> Result<Tensor> {
    Ok(match pooling {
        Pooling::Pooled => map.mean((2, 3, 4))?,
        Pooling::Temporal => map.mean((3, 4))?.flatten_from(1)?,
    })
}

/// Centre-cropped test clips of one video as a host buffer `[K, 3, T, S, S]`.
pub fn video_clips(v: &crate::data::Video, setup: &EvalSetup) -> Vec<f32> {
    let e = setup.eval;
    eval_clips(
        v,
        setup.frames(),
        e.stride,
        e.test_clips,
        setup.data.size,
        &Normalize::from_cfg(&setup.data.augment),
    )
}

/// Runs `f` on batches of test clips of every labelled video of a split; returns the
/// per-batch outputs `[n_videos * K, ..]` concatenated, the labels, and skipped videos.
pub fn map_split(
    ds: &dyn VideoDataset,
    split: Split,
    setup: &EvalSetup,
    device: &Device,
    skipped: &mut Vec<String>,
    mut f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<(Tensor, Vec<u32>)> {
    let e = setup.eval;
    let (frames, size, k) = (setup.frames(), setup.data.size, e.test_clips);
    let per_batch = (e.batch_size / k).max(1);
    let (mut outs, mut labels, mut pending, mut pending_videos) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    let n = ds.len(split);
    for i in 0..n {
        if let Some(label) = ds.label(split, i) {
            match read_video(ds, split, i) {
                Ok(v) => {
                    pending.extend(video_clips(&v, setup));
                    labels.push(label);
                    pending_videos += 1;
                }
                Err(err) => {
                    // Callers warn once per video (bad_videos.txt, fine-tuning's first test).
                    tracing::debug!("skipping video in evaluation: {err}");
                    skipped.push(err.to_string());
                }
            }
        }
        if pending_videos > 0 && (pending_videos == per_batch || i + 1 == n) {
            let x = Tensor::from_vec(
                std::mem::take(&mut pending),
                (pending_videos * k, 3, frames, size, size),
                device,
            )?;
            outs.push(f(&x)?.detach());
            pending_videos = 0;
        }
    }
    if outs.is_empty() {
        return Err(Error::BadInput(format!(
            "no labelled {split:?} videos to evaluate on"
        )));
    }
    Ok((Tensor::cat(&outs, 0)?, labels))
}

fn split_features(
    net: &dyn Backbone,
    ds: &dyn VideoDataset,
    split: Split,
    setup: &EvalSetup,
    device: &Device,
    skipped: &mut Vec<String>,
) -> Result<SplitFeatures> {
    let pooling = setup.eval.pooling;
    let (flat, labels) = map_split(ds, split, setup, device, skipped, |x| {
        pool(&net.forward_t(x, false)?, pooling)
    })?;
    let d = flat.dim(1)?;
    let clips = flat.reshape((labels.len(), setup.eval.test_clips, d))?;
    Ok(SplitFeatures { clips, labels })
}

/// Extracts clip features of both splits with the backbone in eval mode.
pub fn extract(
    net: &dyn Backbone,
    ds: &dyn VideoDataset,
    setup: &EvalSetup,
    device: &Device,
) -> Result<Features> {
    let mut skipped = Vec::new();
    let train = split_features(net, ds, Split::Train, setup, device, &mut skipped)?;
    let test = split_features(net, ds, Split::Test, setup, device, &mut skipped)?;
    Ok(Features {
        train,
        test,
        skipped,
    })
}
