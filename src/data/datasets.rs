//! Datasets as one trait: a list of videos per split, labels where known, and a
//! way to get a video's frames. Real-video kinds (UCF101, HMDB51, CSV lists,
//! folders) are [`FileDataset`]s (`data::files`); the built-in synthetic set lives
//! here so every recipe runs with nothing downloaded.

use crate::data::clip::{PlanFn, PlannedClip};
use crate::data::files::FileDataset;
use crate::data::synthetic::Synthetic;
use crate::data::{DataConfig, DataKind, Split, Video};
use crate::Result;

/// A labelled (or unlabelled) collection of videos with train/test splits.
pub trait VideoDataset: Send + Sync {
    /// Videos in a split.
    fn len(&self, split: Split) -> usize;
    /// True when a split has no videos.
    fn is_empty(&self, split: Split) -> bool {
        self.len(split) == 0
    }
    /// Class of a video, if the dataset is labelled.
    fn label(&self, split: Split, index: usize) -> Option<u32>;
    /// Number of classes (0 if unlabelled).
    fn num_classes(&self) -> usize;
    /// Frames of a video. An unreadable video is an error the caller may skip.
    fn video(&self, split: Split, index: usize) -> Result<Video>;
    /// The frames one training sample needs: `plan` maps the video's frame count to its
    /// clips, and the result is a video holding (at least) the frames those clips show,
    /// with the clips' indices pointing into it. Datasets that can read part of a video
    /// (files decoded up to the last needed frame, the frame cache) override this; the
    /// batch must be the same as planning on [`VideoDataset::video`]'s frames.
    fn planned_video(
        &self,
        split: Split,
        index: usize,
        plan: &mut PlanFn<'_>,
    ) -> Result<(Video, Vec<PlannedClip>)> {
        plan_whole(self.video(split, index)?, plan)
    }
    /// A short description for logs.
    fn describe(&self) -> String;
    /// The file a video is decoded from, if it comes from one (used to key caches).
    fn source_path(&self, _split: Split, _index: usize) -> Option<std::path::PathBuf> {
        None
    }
}

impl VideoDataset for Synthetic {
    fn len(&self, split: Split) -> usize {
        Synthetic::len(self, split)
    }
    fn label(&self, split: Split, index: usize) -> Option<u32> {
        Synthetic::label(self, split, index).ok()
    }
    fn num_classes(&self) -> usize {
        Synthetic::num_classes(self)
    }
    fn video(&self, split: Split, index: usize) -> Result<Video> {
        Synthetic::video(self, split, index)
    }
    fn describe(&self) -> String {
        format!(
            "synthetic ({} train / {} test videos, {} classes)",
            Synthetic::len(self, Split::Train),
            Synthetic::len(self, Split::Test),
            Synthetic::num_classes(self)
        )
    }
}

/// A whole video with the clips `plan` draws on its frame count: what
/// [`VideoDataset::planned_video`] gives when only whole videos can be read.
pub fn plan_whole(video: Video, plan: &mut PlanFn<'_>) -> Result<(Video, Vec<PlannedClip>)> {
    let clips = plan(video.frames)?;
    Ok((video, clips))
}

/// Builds the dataset a recipe's `[data]` section names.
pub fn build(cfg: &DataConfig) -> Result<Box<dyn VideoDataset>> {
    match cfg.kind {
        DataKind::Synthetic => {
            // Synthetic "splits" 2 and 3 are independent draws of the same world (split 1
            // is `data.synthetic.seed` itself), so `--splits 1,2,3` works as for UCF101.
            let mut c = cfg.synthetic.clone();
            if cfg.split > 1 {
                c.seed = crate::seed::mix(c.seed ^ (cfg.split as u64).wrapping_mul(0x9e37_79b9));
            }
            Ok(Box::new(Synthetic::new(c)?))
        }
        DataKind::Ucf101 | DataKind::Hmdb51 | DataKind::Csv | DataKind::Folder => {
            Ok(Box::new(FileDataset::from_cfg(cfg)?))
        }
    }
}
