//! Batches prepared ahead of the model by worker threads. Everything random is
//! derived from (run seed, step), never from shared RNG state, so batch `i` is the
//! same whichever worker builds it and a resumed run sees the same data. Each
//! worker owns every `workers`-th step and a 2-slot channel, and the consumer reads
//! the channels round-robin: order is fixed and memory bounded.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::augment::{write_clip, AugmentConfig, ClipAug, CropMode, Normalize};
use crate::data::clip::{BatchSlice, ClipMeta, ClipPlanner};
use crate::data::datasets::VideoDataset;
use crate::data::sampler::{clip_indices, uniform_starts};
use crate::data::{Split, Video};
use crate::seed::mix;
use crate::{Error, Result};

/// One batch on the host, ready to become a tensor `[B * clips, 3, T, S, S]`.
#[derive(Debug, Clone)]
pub struct HostBatch {
    pub step: u64,
    pub data: Vec<f32>,
    pub shape: [usize; 5],
    pub videos: usize,
    /// Seed for the method's own randomness in this step.
    pub seed: u64,
    /// Videos that failed to load and were replaced by the next one.
    pub skipped: Vec<String>,
    /// Label of each video (None for unlabelled datasets).
    pub labels: Vec<Option<u32>>,
    /// How each clip was sampled (speed = stride, direction), in batch order.
    pub clip_meta: Vec<ClipMeta>,
    /// Where these videos sit in the step's whole batch (a data-parallel rank's share).
    pub slice: BatchSlice,
}

/// Which part of every batch a data-parallel rank builds: rank `rank` of `world`
/// takes the contiguous `batch_size / world` videos at `rank * batch_size / world`
/// of the whole batch, built exactly as the whole batch builds them (same videos,
/// clips and augmentation), so the ranks together see each sample once per epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// One process building whole batches.
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// This rank's videos of a whole batch of `batch_size`; `world` must divide it
    /// (an uneven split would weigh the ranks' gradients unequally).
    pub fn slice(&self, batch_size: usize) -> Result<BatchSlice> {
        if self.world == 0 || self.rank >= self.world {
            return Err(Error::Internal(format!(
                "shard rank {} of world {}",
                self.rank, self.world
            )));
        }
        if !batch_size.is_multiple_of(self.world) {
            return Err(Error::BadInput(format!(
                "train.batch_size = {batch_size} does not split evenly over {} ranks \
                 (each rank takes batch_size / ranks videos)",
                self.world
            )));
        }
        let per = batch_size / self.world;
        Ok(BatchSlice {
            first: self.rank * per,
            total: batch_size,
        })
    }
}

/// Geometry of training batches.
#[derive(Clone)]
pub struct BatchPlan {
    /// The method's clips of one video.
    pub planner: Arc<dyn ClipPlanner>,
    pub size: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// Training augmentation and normalisation (`[data.augment]`).
    pub augment: AugmentConfig,
}

/// The dataset index of the `j`-th video of step `step`: epochs are independent
/// permutations of the train split, concatenated.
pub fn video_for(n: usize, plan: &BatchPlan, step: u64, j: usize) -> usize {
    let pos = step * plan.batch_size as u64 + j as u64;
    let epoch = pos / n as u64;
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
        plan.seed ^ mix(epoch ^ 0xe90c)
    )));
    perm[(pos % n as u64) as usize]
}

/// Builds batch `step` (pure in its arguments).
pub fn make_batch(ds: &dyn VideoDataset, plan: &BatchPlan, step: u64) -> Result<HostBatch> {
    make_shard(ds, plan, step, Shard::WHOLE)
}

/// `shard`'s part of batch `step`: the rows of [`make_batch`]'s batch it takes,
/// bit for bit (pure in its arguments).
pub fn make_shard(
    ds: &dyn VideoDataset,
    plan: &BatchPlan,
    step: u64,
    shard: Shard,
) -> Result<HostBatch> {
    let slice = shard.slice(plan.batch_size)?;
    let videos = plan.batch_size / shard.world;
    let n = ds.len(Split::Train);
    if n == 0 {
        return Err(Error::BadInput("the training split has no videos".into()));
    }
    let planner = plan.planner.as_ref();
    let (s, t, per_video) = (plan.size, planner.frames(), planner.clips_per_video());
    let clip_len = 3 * t * s * s;
    let clips = videos * per_video;
    let mut data = vec![0f32; clips * clip_len];
    let mut skipped = Vec::new();
    let mut labels = Vec::with_capacity(videos);
    let mut clip_meta = Vec::with_capacity(clips);
    let norm = Normalize::from_cfg(&plan.augment);
    // `j` is the position in the whole batch (what every draw is keyed on), `local`
    // the row in this shard's.
    for (local, j) in (slice.first..slice.first + videos).enumerate() {
        let mut idx = video_for(n, plan, step, j);
        let seed = mix(plan.seed ^ mix(step ^ mix(j as u64 ^ 0xc11b)));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Every planning attempt starts from the same seed, so a re-plan (or a skipped
        // video) draws as if it were the first; `rng` then goes on to the augmentation.
        // A planner that fails or panics is a bug, not a bad video: it is kept aside,
        // ends the skip loop, and is raised here (a panic reaches the worker's guard).
        let failure = std::cell::RefCell::new(None);
        let mut plan_fn = |len: usize| {
            rng = ChaCha8Rng::seed_from_u64(seed);
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                planner.plan(len, &mut rng)
            })) {
                Ok(Ok(clips)) => Ok(clips),
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    *failure.borrow_mut() = Some(PlannerFailure::Error(e));
                    Err(Error::Internal(msg))
                }
                Err(p) => {
                    *failure.borrow_mut() = Some(PlannerFailure::Panic(p));
                    Err(Error::Internal("the clip planner panicked".into()))
                }
            }
        };
        let read = load_or_skip_with(ds, Split::Train, &mut idx, &mut skipped, |i| {
            let r = guarded(ds, Split::Train, i, || {
                ds.planned_video(Split::Train, i, &mut plan_fn)
            });
            match failure.borrow_mut().take() {
                Some(f) => Err(f),
                None => Ok(r),
            }
        });
        let (video, planned) = match read {
            Ok(v) => v?,
            Err(PlannerFailure::Panic(p)) => std::panic::resume_unwind(p),
            Err(PlannerFailure::Error(e)) => return Err(e),
        };
        labels.push(ds.label(Split::Train, idx));
        // A resized crop resamples any window to `s`; the others cut `s` pixels.
        if plan.augment.crop != CropMode::Resized && (video.height < s || video.width < s) {
            return Err(Error::BadInput(format!(
                "video {idx} is {}x{}, smaller than data.size = {s}",
                video.height, video.width
            )));
        }
        let base = local * per_video;
        if planned.len() != per_video || planned.iter().any(|pc| pc.indices.len() != t) {
            return Err(Error::Internal(format!(
                "the clip planner promised {per_video} clips of {t} frames, planned {:?}",
                planned
                    .iter()
                    .map(|pc| pc.indices.len())
                    .collect::<Vec<_>>()
            )));
        }
        for (c, pc) in planned.into_iter().enumerate() {
            let aug = ClipAug::draw(&plan.augment, video.height, video.width, s, &mut rng);
            let k = base + c;
            write_clip(
                &video,
                &pc.indices,
                &aug,
                &norm,
                s,
                &mut data[k * clip_len..(k + 1) * clip_len],
            );
            clip_meta.push(pc.meta);
        }
        video.recycle();
    }
    Ok(HostBatch {
        step,
        data,
        shape: [clips, 3, t, s, s],
        videos,
        seed: mix(plan.seed ^ mix(step ^ 0xba7c)),
        skipped,
        labels,
        clip_meta,
        slice,
    })
}

/// Loads video `idx`, moving on to the next one (and recording the failure) when
/// it cannot be read. Errors only if no video of the split can be read.
pub fn load_or_skip(
    ds: &dyn VideoDataset,
    split: Split,
    idx: &mut usize,
    skipped: &mut Vec<String>,
) -> Result<Video> {
    match load_or_skip_with(ds, split, idx, skipped, |i| {
        Ok::<_, std::convert::Infallible>(read_video(ds, split, i))
    }) {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Why planning a video's clips failed: the planner's own error, or its panic.
enum PlannerFailure {
    Error(Error),
    Panic(Box<dyn std::any::Any + Send>),
}

/// [`load_or_skip`] with any way of reading video `i`: `read` gives `Err(F)` to stop
/// at once (handed back as the outer error), `Ok(Err(_))` for a video to skip.
fn load_or_skip_with<T, F>(
    ds: &dyn VideoDataset,
    split: Split,
    idx: &mut usize,
    skipped: &mut Vec<String>,
    mut read: impl FnMut(usize) -> std::result::Result<Result<T>, F>,
) -> std::result::Result<Result<T>, F> {
    let n = ds.len(split);
    let mut last = String::new();
    for _ in 0..n {
        match read(*idx)? {
            Ok(v) => return Ok(Ok(v)),
            Err(e) => {
                // The trainer warns once per distinct video (bad_videos.txt).
                tracing::debug!("skipping unreadable video: {e}");
                last = e.to_string();
                skipped.push(last.clone());
                *idx = (*idx + 1) % n;
            }
        }
    }
    Ok(Err(Error::BadInput(format!(
        "none of the {n} videos of the {split:?} split could be read ({}); the last error: {last}",
        ds.describe()
    ))))
}

/// One video; a decoder that panics on a malformed file makes that video bad input
/// (skipped and listed like any unreadable video) instead of killing the worker.
pub fn read_video(ds: &dyn VideoDataset, split: Split, idx: usize) -> Result<Video> {
    guarded(ds, split, idx, || ds.video(split, idx))
}

/// Runs `read` (a read of video `idx`), turning a panic into bad input naming the video.
fn guarded<T>(
    ds: &dyn VideoDataset,
    split: Split,
    idx: usize,
    read: impl FnOnce() -> Result<T>,
) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|p| {
        let what = ds.source_path(split, idx).map_or_else(
            || format!("{split:?} video {idx}"),
            |p| p.display().to_string(),
        );
        Err(Error::BadInput(format!(
            "{what}: the decoder failed ({})",
            panic_message(p.as_ref())
        )))
    })
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// `n` uniformly spaced, centre-cropped evaluation clips of one video, `[n, 3, T, S, S]`,
/// normalised by `norm`.
pub fn eval_clips(
    video: &Video,
    frames: usize,
    stride: usize,
    n: usize,
    size: usize,
    norm: &Normalize,
) -> Vec<f32> {
    let clip_len = 3 * frames * size * size;
    let mut out = vec![0f32; n * clip_len];
    let crop = ClipAug::centre(video.height, video.width, size);
    for (k, start) in uniform_starts(video.frames, frames, stride, n)
        .into_iter()
        .enumerate()
    {
        let idxs = clip_indices(video.frames, frames, stride, start);
        write_clip(
            video,
            &idxs,
            &crop,
            norm,
            size,
            &mut out[k * clip_len..(k + 1) * clip_len],
        );
    }
    out
}

/// Prefetching iterator over training batches `start..end`.
pub struct Loader {
    receivers: Vec<Receiver<Result<HostBatch>>>,
    handles: Vec<JoinHandle<()>>,
    start: u64,
    next: u64,
    end: u64,
}

impl Loader {
    pub fn spawn(
        ds: Arc<dyn VideoDataset>,
        plan: BatchPlan,
        start: u64,
        end: u64,
        workers: usize,
    ) -> Self {
        Self::spawn_shard(ds, plan, start, end, workers, Shard::WHOLE)
    }

    /// [`Loader::spawn`] for a data-parallel rank: `shard`'s part of each batch.
    pub fn spawn_shard(
        ds: Arc<dyn VideoDataset>,
        plan: BatchPlan,
        start: u64,
        end: u64,
        workers: usize,
        shard: Shard,
    ) -> Self {
        let workers = workers.max(1);
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for w in 0..workers as u64 {
            let (tx, rx) = sync_channel(2);
            let (ds, plan) = (ds.clone(), plan.clone());
            handles.push(std::thread::spawn(move || {
                let mut step = start + w;
                while step < end {
                    // A panic outside a video read (augmentation, planning) ends this
                    // worker with an error the consumer sees, never a silent hang.
                    let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        make_shard(ds.as_ref(), &plan, step, shard)
                    }))
                    .unwrap_or_else(|p| {
                        Err(Error::Internal(format!(
                            "the batch worker failed building step {step}: {}",
                            panic_message(p.as_ref())
                        )))
                    });
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return; // consumer gone, or this worker's error delivered
                    }
                    step += workers as u64;
                }
            }));
            receivers.push(rx);
        }
        Self {
            receivers,
            handles,
            start,
            next: start,
            end,
        }
    }
}

impl Iterator for Loader {
    type Item = Result<HostBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        // Worker `w` owns steps `start + w + k * workers`.
        let w = ((self.next - self.start) as usize) % self.receivers.len();
        let out = self.receivers[w]
            .recv()
            .unwrap_or_else(|_| Err(Error::Internal("batch worker stopped".into())));
        self.next += 1;
        Some(out)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
