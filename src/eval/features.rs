//! Shared multi-clip feature extraction for every protocol.

use candle_core::{Device, Tensor};

use crate::backbone::Backbone;
use crate::data::datasets::VideoDataset;
use crate::data::loader::eval_clips;
use crate::data::Split;
use crate::recipe::Recipe;
use crate::Result;

/// Per-video features `[N, C]` of both splits, with labels.
#[derive(Debug, Clone)]
pub struct Features {
    pub train: Tensor,
    pub train_labels: Vec<u32>,
    pub test: Tensor,
    pub test_labels: Vec<u32>,
    /// Videos that could not be read (reported, not fatal).
    pub skipped: Vec<String>,
}

/// Extracts clip-averaged pooled features of every labelled video.
pub fn extract(
    net: &dyn Backbone,
    ds: &dyn VideoDataset,
    recipe: &Recipe,
    device: &Device,
) -> Result<Features> {
    let mut skipped = Vec::new();
    let (train, train_labels) =
        split_features(net, ds, Split::Train, recipe, device, &mut skipped)?;
    let (test, test_labels) = split_features(net, ds, Split::Test, recipe, device, &mut skipped)?;
    Ok(Features {
        train,
        train_labels,
        test,
        test_labels,
        skipped,
    })
}

fn split_features(
    net: &dyn Backbone,
    ds: &dyn VideoDataset,
    split: Split,
    recipe: &Recipe,
    device: &Device,
    skipped: &mut Vec<String>,
) -> Result<(Tensor, Vec<u32>)> {
    let e = &recipe.eval;
    let (frames, size, n_clips) = (recipe.data.frames, recipe.data.size, e.test_clips);
    let per_batch = (e.batch_size / n_clips).max(1);
    let mut feats = Vec::new();
    let mut labels = Vec::new();
    let mut pending: Vec<f32> = Vec::new();
    let mut pending_videos = 0;
    let n = ds.len(split);
    for i in 0..n {
        let Some(label) = ds.label(split, i) else {
            continue;
        };
        match ds.video(split, i) {
            Ok(v) => {
                pending.extend(eval_clips(&v, frames, e.stride, n_clips, size));
                labels.push(label);
                pending_videos += 1;
            }
            Err(err) => {
                tracing::warn!("skipping video in evaluation: {err}");
                skipped.push(err.to_string());
            }
        }
        if pending_videos == per_batch || (i + 1 == n && pending_videos > 0) {
            let x = Tensor::from_vec(
                std::mem::take(&mut pending),
                (pending_videos * n_clips, 3, frames, size, size),
                device,
            )?;
            let f = net.pooled(&x, false)?.detach();
            let c = f.dim(1)?;
            feats.push(f.reshape((pending_videos, n_clips, c))?.mean(1)?);
            pending_videos = 0;
        }
    }
    if feats.is_empty() {
        return Err(crate::Error::BadInput(format!(
            "no labelled {split:?} videos to evaluate on"
        )));
    }
    Ok((Tensor::cat(&feats, 0)?, labels))
}
